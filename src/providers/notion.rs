//! Notion: `X-Notion-Signature: sha256=<hex HMAC-SHA256(verification_token, body)>`, the body's
//! `type` (`page.created`, `page.content_updated`, `comment.created`, …) as the event type, its
//! `id` as the delivery id. No timestamp is signed: no replay window.
//!
//! The secret is the subscription's `verification_token`, which Notion sends only once, in the
//! first request to a new subscription: `{"verification_token": "secret_…"}`, unsigned (nothing
//! can sign it before the token is known). The operator needs that token twice: to paste into
//! Notion's "Verify subscription" dialog, and as `NOTION_WEBHOOK_SECRET`. So that request is
//! accepted without a signature and stored as an event of type `verification` (no delivery
//! id), where the operator reads the token from the archive
//! (`GET /admin/events?source=notion&type=verification`); the router logs nothing of it. Only
//! that exact shape is accepted unsigned: a JSON object whose one key is `verification_token`,
//! a string of at most 256 visible ASCII characters, and no `X-Notion-Signature` header;
//! anything else needs a valid signature. The source must be enabled to receive it: before the
//! token is known, `NOTION_WEBHOOK_SECRET` holds any placeholder (docs/providers.md).

use http::HeaderMap;
use serde::Deserialize;

use super::signature::VerifyError;
use super::{
    Builtin, Outgoing, Provider, Request, SecretSet, Secrets, SendOptions, SignError, github,
    hmac_keys,
};
use crate::event::{BodyError, Classified, Field, Fields, Probe};

pub struct Notion;

/// The event type of the unsigned verification request.
pub const VERIFICATION: &str = "verification";
/// The longest verification token accepted unsigned.
const MAX_TOKEN_LEN: usize = 256;

const TYPE: Field = Field::new(0);
const ID: Field = Field::new(1);
const TOKEN: Field = Field::new(2);
const SIGNATURE: &str = "x-notion-signature";

impl Provider for Notion {
    fn name(&self) -> &'static str {
        "notion"
    }

    fn builtin(&self) -> Option<Builtin> {
        Some(Builtin {
            source: "notion",
            secret_env: &["NOTION_WEBHOOK_SECRET"],
            identifier: Some("payload.workspace_id"),
        })
    }

    fn signature_headers(&self) -> &'static [&'static str] {
        &[SIGNATURE]
    }

    fn verify(&self, req: &Request<'_>, secrets: Option<&Secrets>) -> Result<(), VerifyError> {
        let keys = hmac_keys(secrets)?;
        match req.header(SIGNATURE) {
            None if is_verification(req.body) => Ok(()),
            signature => verify(keys, signature, req.body),
        }
    }

    fn probes(&self) -> &'static [Probe] {
        &[
            (&["type"], TYPE),
            (&["id"], ID),
            (&["verification_token"], TOKEN),
        ]
    }

    fn classify(&self, _: &HeaderMap, fields: &Fields<'_>) -> Result<Classified, BodyError> {
        if let Some(t) = fields.str(TYPE).filter(|t| !t.is_empty()) {
            return Ok(Classified {
                event_type: t.to_string(),
                action: None,
                delivery_id: fields.str(ID).map(str::to_string),
            });
        }
        if fields.str(TOKEN).is_some() {
            return Ok(Classified {
                event_type: VERIFICATION.into(),
                action: None,
                delivery_id: None,
            });
        }
        Err(BodyError(
            "a Notion webhook needs a string \"type\" (or \"verification_token\")".into(),
        ))
    }

    fn compose(&self, out: &mut Outgoing, opts: &SendOptions<'_>) -> Result<(), SignError> {
        if let Some(event) = opts.event {
            out.set_json_str(&["type"], event)?;
        }
        Ok(())
    }

    fn sign(&self, out: &mut Outgoing, opts: &SendOptions<'_>) -> Result<(), SignError> {
        let signature = sign(opts.secret()?.as_bytes(), &out.body);
        out.header(SIGNATURE, signature);
        Ok(())
    }

    fn sample(&self) -> &'static str {
        include_str!("../../examples/notion-page.json")
    }
}

/// Whether `body` is exactly Notion's verification request: a JSON object whose one key is
/// `verification_token`, a non-empty string of at most 256 visible ASCII characters. Unknown
/// keys are refused before their values are read, and the value is a string, so no nesting is
/// ever parsed.
pub fn is_verification(body: &[u8]) -> bool {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Verification {
        verification_token: String,
    }
    // serde would also take `["…"]` for the struct: only an object is the request.
    if body.trim_ascii_start().first() != Some(&b'{') {
        return false;
    }
    serde_json::from_slice::<Verification>(body).is_ok_and(|v| {
        !v.verification_token.is_empty()
            && v.verification_token.len() <= MAX_TOKEN_LEN
            && v.verification_token.bytes().all(|b| b.is_ascii_graphic())
    })
}

/// `X-Notion-Signature: sha256=<hex HMAC-SHA256(verification_token, body)>`.
pub fn verify(
    secrets: &SecretSet,
    signature: Option<&[u8]>,
    body: &[u8],
) -> Result<(), VerifyError> {
    github::verify(secrets, signature, body)
}

/// `sha256=<hex>`, the value of `X-Notion-Signature`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    github::sign(secret, body)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::event::ProbeSpec;

    // tests/vectors/notion.py (hex HMAC-SHA256 under the verification token, as Notion's docs).
    const NOTION_TOKEN: &str = "secret_tMrlL1qK5vuQAh1b6cZGhFChZTSYJlce98V0pYn7yBl";
    const NOTION_BODY: &[u8] = br#"{"id":"367cba44-b6f3-4c92-81e7-6a2e9659efd4","timestamp":"2024-12-05T23:55:34.285Z","workspace_id":"13950b26-c203-4f3b-b97d-93ec06319565","type":"page.content_updated","entity":{"id":"153104cd-477e-809d-8dc4-ff2d96ae3090","type":"page"}}"#;
    const NOTION_SIG: &str =
        "sha256=25e808f2ccc0b604f0d529fbced4d9b58912797f233e830dd45e7141f92d0fcb";
    const INVALID: Result<(), VerifyError> = Err(VerifyError::InvalidSignature);
    const VERIFY_BODY: &[u8] =
        br#"{"verification_token":"secret_tMrlL1qK5vuQAh1b6cZGhFChZTSYJlce98V0pYn7yBl"}"#;

    fn set(list: &str) -> SecretSet {
        SecretSet::hmac_from_list(list).unwrap()
    }

    fn check(
        headers: &[(&'static str, &str)],
        body: &[u8],
        secrets: Option<&Secrets>,
    ) -> Result<(), VerifyError> {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.insert(*k, http::HeaderValue::from_str(v).unwrap());
        }
        Notion.verify(
            &Request {
                source: "notion",
                line: super::super::RequestLine::post("/webhook/notion"),
                public_url: None,
                headers: &h,
                body,
                now_ms: 0,
                agent_key: &|_| false,
            },
            secrets,
        )
    }

    #[test]
    fn notion_vector() {
        assert_eq!(sign(NOTION_TOKEN.as_bytes(), NOTION_BODY), NOTION_SIG);
        let secrets = Notion.parse_secrets(NOTION_TOKEN).unwrap();
        assert_eq!(
            check(&[(SIGNATURE, NOTION_SIG)], NOTION_BODY, Some(&secrets)),
            Ok(())
        );
        assert_eq!(Notion.replay_window(), None);
    }

    #[test]
    fn notion_refuses_changed_wrong_missing_malformed_and_rotates() {
        let secrets = Notion.parse_secrets(NOTION_TOKEN).unwrap();
        let mut body = NOTION_BODY.to_vec();
        body[8] ^= 1;
        assert_eq!(
            check(&[(SIGNATURE, NOTION_SIG)], &body, Some(&secrets)),
            INVALID
        );
        let other = Notion.parse_secrets("secret_other").unwrap();
        assert_eq!(
            check(&[(SIGNATURE, NOTION_SIG)], NOTION_BODY, Some(&other)),
            INVALID
        );
        assert_eq!(check(&[], NOTION_BODY, Some(&secrets)), INVALID);
        for bad in ["", &NOTION_SIG[7..], "sha1=25e808f2", "sha256=xyz"] {
            assert_eq!(
                check(&[(SIGNATURE, bad)], NOTION_BODY, Some(&secrets)),
                INVALID,
                "{bad}"
            );
        }
        let both = set(&format!("secret_placeholder,{NOTION_TOKEN}"));
        assert_eq!(
            verify(&both, Some(NOTION_SIG.as_bytes()), NOTION_BODY),
            Ok(())
        );
        let by_other = sign(b"secret_placeholder", NOTION_BODY);
        assert_eq!(
            verify(&both, Some(by_other.as_bytes()), NOTION_BODY),
            Ok(())
        );
    }

    #[test]
    fn only_the_exact_verification_request_passes_unsigned() {
        let secrets = Notion.parse_secrets("placeholder").unwrap();
        assert!(is_verification(VERIFY_BODY));
        assert_eq!(check(&[], VERIFY_BODY, Some(&secrets)), Ok(()));
        assert_eq!(
            check(
                &[("content-type", "application/json")],
                b" {\"verification_token\" : \"t\"} ",
                Some(&secrets)
            ),
            Ok(())
        );
        // Never without a configured secret (the source is disabled then anyway).
        assert_eq!(check(&[], VERIFY_BODY, None), INVALID);
        // With a signature header, the signature decides.
        assert_eq!(
            check(&[(SIGNATURE, NOTION_SIG)], VERIFY_BODY, Some(&secrets)),
            INVALID
        );
        let long = format!(r#"{{"verification_token":"{}"}}"#, "a".repeat(257));
        for bad in [
            br#"{"verification_token":"t","type":"page.created"}"#.as_slice(),
            br#"{"type":"page.created","verification_token":"t"}"#,
            br#"{"verification_token":""}"#,
            br#"{"verification_token":"has space"}"#,
            br#"{"verification_token":{"nested":[[[[1]]]]}}"#,
            br#"{"verification_token":7}"#,
            br#"{"verification_token":"t"}x"#,
            br#"["verification_token"]"#,
            b"{}",
            b"",
            long.as_bytes(),
        ] {
            assert!(!is_verification(bad), "{}", String::from_utf8_lossy(bad));
            assert_eq!(check(&[], bad, Some(&secrets)), INVALID);
        }
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(!is_verification(deep.as_bytes()));
    }

    #[test]
    fn classify_reads_type_and_id_and_the_verification() {
        let spec = ProbeSpec::new(Notion.probes(), None);
        let fields = crate::event::probe_json_object(Notion.sample().as_bytes(), &spec)
            .unwrap()
            .fields;
        let c = Notion.classify(&HeaderMap::new(), &fields).unwrap();
        assert_eq!(c.event_type, "page.content_updated");
        assert_eq!(
            c.delivery_id.as_deref(),
            Some("367cba44-b6f3-4c92-81e7-6a2e9659efd4")
        );
        let v = crate::event::probe_json_object(VERIFY_BODY, &spec)
            .unwrap()
            .fields;
        let c = Notion.classify(&HeaderMap::new(), &v).unwrap();
        assert_eq!((c.event_type.as_str(), c.delivery_id), (VERIFICATION, None));
        assert!(
            Notion
                .classify(&HeaderMap::new(), &spec.read_value(&json!({"id": "x"})))
                .is_err()
        );
    }
}
