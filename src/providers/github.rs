//! GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>`, the event type in
//! `X-GitHub-Event`, the delivery id in `X-GitHub-Delivery`; JSON bodies, or form bodies whose
//! `payload` field holds the JSON.

use http::HeaderMap;

use super::signature::{VerifyError, decode_hex_mac, hex_signature};
use super::{
    Builtin, Outgoing, Provider, Request, SecretSet, Secrets, SendOptions, SignError, header_str,
    hmac_keys,
};
use crate::event::{BodyError, Classified, Field, Fields, FormBody, Probe};

pub struct GitHub;

const ACTION: Field = Field::new(0);
const SIGNATURE: &str = "x-hub-signature-256";

impl Provider for GitHub {
    fn name(&self) -> &'static str {
        "github"
    }

    fn builtin(&self) -> Option<Builtin> {
        Some(Builtin {
            source: "github",
            secret_env: &["GITHUB_WEBHOOK_SECRET"],
            identifier: Some("payload.sender.login"),
        })
    }

    fn signature_headers(&self) -> &'static [&'static str] {
        // The SHA-1 signature GitHub still sends beside the SHA-256 one.
        &["x-hub-signature", SIGNATURE]
    }

    fn verify(&self, req: &Request<'_>, secrets: Option<&Secrets>) -> Result<(), VerifyError> {
        verify(hmac_keys(secrets)?, req.header(SIGNATURE), req.body)
    }

    fn form_body(&self) -> FormBody {
        FormBody::Payload
    }

    fn probes(&self) -> &'static [Probe] {
        &[(&["action"], ACTION)]
    }

    fn classify(&self, headers: &HeaderMap, fields: &Fields<'_>) -> Result<Classified, BodyError> {
        let event_type = header_str(headers, "x-github-event")
            .ok_or_else(|| BodyError("missing X-GitHub-Event header".into()))?;
        Ok(Classified {
            event_type: event_type.to_string(),
            action: fields.str(ACTION).map(str::to_string),
            delivery_id: header_str(headers, "x-github-delivery").map(str::to_string),
        })
    }

    fn compose(&self, out: &mut Outgoing, opts: &SendOptions<'_>) -> Result<(), SignError> {
        out.header("user-agent", "GitHub-Hookshot/event-router-send");
        out.header("x-github-event", opts.event.unwrap_or("ping"));
        out.header("x-github-delivery", uuid::Uuid::new_v4().to_string());
        Ok(())
    }

    fn sign(&self, out: &mut Outgoing, opts: &SendOptions<'_>) -> Result<(), SignError> {
        let signature = sign(opts.secret()?.as_bytes(), &out.body);
        out.header(SIGNATURE, signature);
        Ok(())
    }

    fn sample(&self) -> &'static str {
        include_str!("../../examples/github-pull_request.json")
    }
}

/// `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>`.
pub fn verify(
    secrets: &SecretSet,
    signature: Option<&[u8]>,
    body: &[u8],
) -> Result<(), VerifyError> {
    let hex = signature
        .map(<[u8]>::trim_ascii)
        .and_then(|s| s.strip_prefix(b"sha256="))
        .ok_or(VerifyError::InvalidSignature)?;
    let mac = decode_hex_mac(hex)?;
    secrets.verify_body(body, &mac)
}

/// `sha256=<hex>`, the value of `X-Hub-Signature-256`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    hex_signature("sha256=", secret, &[body])
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::event::ProbeSpec;

    const GH_SECRET: &str = "It's a Secret to Everybody";
    const GH_BODY: &[u8] = b"Hello, World!";
    const GH_SIG: &str = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
    const INVALID: Result<(), VerifyError> = Err(VerifyError::InvalidSignature);

    fn hmac_set(list: &str) -> SecretSet {
        SecretSet::hmac_from_list(list).unwrap()
    }

    fn gh(set: &SecretSet, sig: &[u8]) -> Result<(), VerifyError> {
        verify(set, Some(sig), GH_BODY)
    }

    #[test]
    fn github_published_vector() {
        assert_eq!(sign(GH_SECRET.as_bytes(), GH_BODY), GH_SIG);
        assert_eq!(gh(&hmac_set(GH_SECRET), GH_SIG.as_bytes()), Ok(()));
    }

    #[test]
    fn github_rejects_missing_malformed_and_wrong() {
        let set = hmac_set(GH_SECRET);
        assert_eq!(verify(&set, None, GH_BODY), INVALID);
        assert_eq!(gh(&set, b""), INVALID);
        assert_eq!(gh(&set, b"sha256="), INVALID);
        // Right hex, no or wrong prefix.
        assert_eq!(gh(&set, &GH_SIG.as_bytes()[7..]), INVALID);
        assert_eq!(
            gh(&set, GH_SIG.replace("sha256=", "sha1=").as_bytes()),
            INVALID
        );
        // Bad hex digit, odd length, too short, too long.
        assert_eq!(gh(&set, GH_SIG.replace("757", "75g").as_bytes()), INVALID);
        assert_eq!(gh(&set, &GH_SIG.as_bytes()[..GH_SIG.len() - 1]), INVALID);
        assert_eq!(gh(&set, &GH_SIG.as_bytes()[..GH_SIG.len() - 2]), INVALID);
        assert_eq!(gh(&set, format!("{GH_SIG}00").as_bytes()), INVALID);
        // Non-UTF-8 bytes and a huge value.
        assert_eq!(gh(&set, b"sha256=\xff\xfe\x80\x00"), INVALID);
        let mut non_utf8 = GH_SIG.as_bytes().to_vec();
        non_utf8[10] = 0xc3;
        assert_eq!(gh(&set, &non_utf8), INVALID);
        assert_eq!(gh(&set, &vec![b'a'; 1 << 20]), INVALID);
        // Wrong MAC, wrong body, wrong secret.
        assert_eq!(gh(&set, GH_SIG.replace("17", "18").as_bytes()), INVALID);
        assert_eq!(
            verify(&set, Some(GH_SIG.as_bytes()), b"Hello, World"),
            INVALID
        );
        assert_eq!(gh(&hmac_set("another"), GH_SIG.as_bytes()), INVALID);
    }

    #[test]
    fn github_accepts_uppercase_hex_and_surrounding_whitespace() {
        let set = hmac_set(GH_SECRET);
        let upper = format!("sha256={}", GH_SIG[7..].to_uppercase());
        assert_eq!(gh(&set, upper.as_bytes()), Ok(()));
        assert_eq!(gh(&set, format!(" {GH_SIG}\t").as_bytes()), Ok(()));
    }

    #[test]
    fn github_rotation() {
        let sig = sign(b"new", GH_BODY);
        assert_eq!(gh(&hmac_set("old,new"), sig.as_bytes()), Ok(()));
        assert_eq!(gh(&hmac_set("new,old"), sig.as_bytes()), Ok(()));
        assert_eq!(
            gh(&hmac_set("old,new"), sign(b"old", GH_BODY).as_bytes()),
            Ok(())
        );
        assert_eq!(
            gh(&hmac_set("old,new"), sign(b"other", GH_BODY).as_bytes()),
            INVALID
        );
    }

    fn hdrs(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, http::HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn classify_reads_the_event_header_and_payload_action() {
        let spec = ProbeSpec::new(GitHub.probes(), None);
        let fields = spec.read_value(&serde_json::json!({"action": "opened"}));
        let text = serde_json::json!({"action": "opened"}).to_string();
        assert_eq!(
            crate::event::probe_json_object(text.as_bytes(), &spec)
                .unwrap()
                .fields,
            fields
        );
        let gh = GitHub
            .classify(
                &hdrs(&[
                    ("x-github-event", "pull_request"),
                    ("x-github-delivery", "d1"),
                ]),
                &fields,
            )
            .unwrap();
        assert_eq!(gh.event_type, "pull_request");
        assert_eq!(gh.action.as_deref(), Some("opened"));
        assert_eq!(gh.delivery_id.as_deref(), Some("d1"));
        assert!(GitHub.classify(&hdrs(&[]), &Fields::default()).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn prop_github(
            secret in "[A-Za-z0-9_!@#$%^&*()=+./-]{1,48}",
            other in "[A-Za-z0-9_!@#$%^&*()=+./-]{1,48}",
            body in proptest::collection::vec(any::<u8>(), 0..512),
            flip in any::<prop::sample::Index>(),
            xor in 1u8..,
        ) {
            let set = hmac_set(&secret);
            let sig = sign(secret.as_bytes(), &body);
            prop_assert_eq!(verify(&set, Some(sig.as_bytes()), &body), Ok(()));
            if !body.is_empty() {
                let mut tampered = body.clone();
                tampered[flip.index(body.len())] ^= xor;
                prop_assert_eq!(verify(&set, Some(sig.as_bytes()), &tampered), INVALID);
            }
            if other != secret {
                prop_assert_eq!(verify(&hmac_set(&other), Some(sig.as_bytes()), &body), INVALID);
            }
        }
    }
}
