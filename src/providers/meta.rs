//! Meta (WhatsApp Business, Messenger, Instagram and other Graph API webhooks):
//! `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(app secret, body)>`, GitHub's scheme (its
//! verifier is reused); no timestamp, so no replay window. Before it sends events Meta checks the
//! endpoint with `GET ?hub.mode=subscribe&hub.verify_token=T&hub.challenge=C`, answered `200 C`
//! when `T` is the source's verify token (`META_VERIFY_TOKEN` for the `meta` source,
//! `<SOURCE>_VERIFY_TOKEN` for a declared one).
//!
//! Type: the body's `object` (`whatsapp_business_account`, `page`, `instagram`, …); action: the
//! first change's `field` (`messages`, `feed`, …), or `messaging` for Messenger's
//! `entry[].messaging` batches. Meta sends no delivery id, and one POST may batch many updates
//! (regrouped on retries), so nothing is deduped: agents dedupe on the message ids inside
//! (`wamid…`, `mid`).

use http::HeaderMap;

use super::signature::{VerifyError, ct_eq};
use super::{
    Builtin, GetRefusal, Outgoing, Provider, Request, Secrets, SendOptions, SignError, github,
    hmac_keys,
};
use crate::event::{BodyError, Classified, Field, Fields, Probe};

pub struct Meta;

const OBJECT: Field = Field::new(0);
const CHANGE_FIELD: Field = Field::new(1);
const MESSAGING_TIME: Field = Field::new(2);
const SIGNATURE: &str = "x-hub-signature-256";

impl Provider for Meta {
    fn name(&self) -> &'static str {
        "meta"
    }

    fn builtin(&self) -> Option<Builtin> {
        Some(Builtin {
            source: "meta",
            secret_env: &["META_WEBHOOK_SECRET"],
            // The WhatsApp Business Account, Page or Instagram account of the first entry.
            identifier: Some("payload.entry.0.id"),
        })
    }

    fn signature_headers(&self) -> &'static [&'static str] {
        // Meta still sends the SHA-1 `X-Hub-Signature` beside the SHA-256 one.
        &["x-hub-signature", SIGNATURE]
    }

    fn verify(&self, req: &Request<'_>, secrets: Option<&Secrets>) -> Result<(), VerifyError> {
        github::verify(hmac_keys(secrets)?, req.header(SIGNATURE), req.body)
    }

    fn verify_token_env(&self, source: &str) -> Option<String> {
        Some(format!(
            "{}_VERIFY_TOKEN",
            source.to_ascii_uppercase().replace('-', "_")
        ))
    }

    fn verify_get(&self, query: &str, token: Option<&str>) -> Option<Result<String, GetRefusal>> {
        Some(verify_get(query, token))
    }

    fn probes(&self) -> &'static [Probe] {
        &[
            (&["object"], OBJECT),
            (&["entry", "0", "changes", "0", "field"], CHANGE_FIELD),
            (
                &["entry", "0", "messaging", "0", "timestamp"],
                MESSAGING_TIME,
            ),
        ]
    }

    fn classify(&self, _: &HeaderMap, fields: &Fields<'_>) -> Result<Classified, BodyError> {
        let object = fields
            .str(OBJECT)
            .ok_or_else(|| BodyError("a Meta webhook needs an \"object\"".into()))?;
        let action = match fields.str(CHANGE_FIELD) {
            Some(f) => Some(f.to_string()),
            None => fields.get(MESSAGING_TIME).map(|_| "messaging".to_string()),
        };
        Ok(Classified {
            event_type: object.to_string(),
            action,
            delivery_id: None,
        })
    }

    fn compose(&self, out: &mut Outgoing, _opts: &SendOptions<'_>) -> Result<(), SignError> {
        out.header("user-agent", "facebookexternalua");
        Ok(())
    }

    fn sign(&self, out: &mut Outgoing, opts: &SendOptions<'_>) -> Result<(), SignError> {
        let signature = github::sign(opts.secret()?.as_bytes(), &out.body);
        out.header(SIGNATURE, signature);
        Ok(())
    }

    fn sample(&self) -> &'static str {
        include_str!("../../examples/meta-whatsapp_messages.json")
    }
}

/// Meta's check of the endpoint: `hub.mode=subscribe`, `hub.verify_token` equal to `token`
/// (constant time), answered with `hub.challenge`.
pub fn verify_get(query: &str, token: Option<&str>) -> Result<String, GetRefusal> {
    let (mut mode, mut given, mut challenge) = (None, None, None);
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "hub.mode" => mode = Some(v),
            "hub.verify_token" => given = Some(v),
            "hub.challenge" => challenge = Some(v),
            _ => {}
        }
    }
    let missing = |name: &str| GetRefusal::BadRequest(format!("missing {name}"));
    let mode = mode.ok_or_else(|| missing("hub.mode"))?;
    let given = given.ok_or_else(|| missing("hub.verify_token"))?;
    let challenge = challenge.ok_or_else(|| missing("hub.challenge"))?;
    if mode != "subscribe" {
        return Err(GetRefusal::BadRequest(
            "hub.mode must be \"subscribe\"".into(),
        ));
    }
    match token {
        Some(t) if ct_eq(t.as_bytes(), given.as_bytes()) => Ok(challenge.into_owned()),
        _ => Err(GetRefusal::Forbidden),
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;
    use crate::event::ProbeSpec;
    use crate::providers::{RequestLine, SecretSet};

    // tests/vectors/meta.py (Meta's documented scheme; GitHub's vector is the same scheme).
    const SECRET: &str = "6f1c3e0d9a8b7c6d5e4f3a2b1c0d9e8f";
    const BODY: &str = r#"{"object":"whatsapp_business_account","entry":[{"id":"102290129340398","changes":[{"value":{"messaging_product":"whatsapp","statuses":[{"id":"wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBI3","status":"delivered","timestamp":"1764169990","recipient_id":"16505551234"}]},"field":"messages"}]}]}"#;
    const SIG: &str = "sha256=b3251ec7459bf65d88a0facd090dafc05eb0136ce88a81cba445b243f2989cab";
    const INVALID: Result<(), VerifyError> = Err(VerifyError::InvalidSignature);

    fn check(list: &str, headers: &[(&'static str, &str)], body: &str) -> Result<(), VerifyError> {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        let secrets = Meta.parse_secrets(list).unwrap();
        Meta.verify(
            &Request {
                source: "meta",
                line: RequestLine::post("/webhook/meta"),
                public_url: None,
                headers: &map,
                body: body.as_bytes(),
                now_ms: 0,
                agent_key: &|_| false,
            },
            Some(&secrets),
        )
    }

    #[test]
    fn meta_vectors() {
        assert_eq!(github::sign(SECRET.as_bytes(), BODY.as_bytes()), SIG);
        assert_eq!(check(SECRET, &[(SIGNATURE, SIG)], BODY), Ok(()));
        assert_eq!(
            github::sign(b"It's a Secret to Everybody", b"Hello, World!"),
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }

    #[test]
    fn meta_rejects_missing_malformed_and_wrong_and_rotates() {
        assert_eq!(check(SECRET, &[], BODY), INVALID);
        // The SHA-1 header alone is not enough.
        assert_eq!(
            check(
                SECRET,
                &[(
                    "x-hub-signature",
                    "sha1=0000000000000000000000000000000000000000"
                )],
                BODY
            ),
            INVALID
        );
        for bad in [
            "",
            "sha256=",
            &SIG[7..],
            &SIG[..SIG.len() - 1],
            "sha1=b3251ec7",
        ] {
            assert_eq!(check(SECRET, &[(SIGNATURE, bad)], BODY), INVALID, "{bad}");
        }
        assert_eq!(
            check(
                SECRET,
                &[(SIGNATURE, SIG)],
                &BODY.replace("delivered", "read")
            ),
            INVALID
        );
        assert_eq!(
            check("another-app-secret", &[(SIGNATURE, SIG)], BODY),
            INVALID
        );
        assert_eq!(
            check(&format!("old,{SECRET}"), &[(SIGNATURE, SIG)], BODY),
            Ok(())
        );
        let set = SecretSet::hmac_from_list(SECRET).unwrap();
        assert_eq!(
            github::verify(
                &set,
                Some(SIG.to_uppercase().replace("SHA256=", "sha256=").as_bytes()),
                BODY.as_bytes()
            ),
            Ok(())
        );
        let request = Request {
            source: "meta",
            line: RequestLine::post("/webhook/meta"),
            public_url: None,
            headers: &HeaderMap::new(),
            body: BODY.as_bytes(),
            now_ms: 0,
            agent_key: &|_| false,
        };
        assert_eq!(Meta.verify(&request, None), INVALID);
    }

    fn classify(v: &Value) -> Result<Classified, BodyError> {
        let spec = ProbeSpec::new(Meta.probes(), Some("payload.entry.0.id"));
        let text = v.to_string();
        let p = crate::event::probe_json_object(text.as_bytes(), &spec).unwrap();
        assert_eq!(p.fields, spec.read_value(v));
        Meta.classify(&HeaderMap::new(), &p.fields)
    }

    #[test]
    fn classify_whatsapp_messenger_and_instagram() {
        let sample: Value = serde_json::from_str(Meta.sample()).unwrap();
        assert_eq!(
            classify(&sample).unwrap(),
            Classified {
                event_type: "whatsapp_business_account".into(),
                action: Some("messages".into()),
                delivery_id: None,
            }
        );
        let messenger = json!({"object": "page", "entry": [{"id": "1", "time": 5, "messaging": [
            {"sender": {"id": "2"}, "recipient": {"id": "1"}, "timestamp": 1764169990123i64, "message": {"mid": "m_1", "text": "hi"}}
        ]}]});
        let c = classify(&messenger).unwrap();
        assert_eq!(
            (c.event_type.as_str(), c.action.as_deref()),
            ("page", Some("messaging"))
        );
        let ig = json!({"object": "instagram", "entry": [{"id": "3", "changes": [{"field": "comments", "value": {}}]}]});
        let c = classify(&ig).unwrap();
        assert_eq!(
            (c.event_type.as_str(), c.action.as_deref()),
            ("instagram", Some("comments"))
        );
        let bare = classify(&json!({"object": "user", "entry": []})).unwrap();
        assert_eq!(bare.action, None);
        assert!(classify(&json!({"entry": []})).is_err());
    }

    #[test]
    fn the_get_check_echoes_the_challenge_for_the_right_token() {
        let ok = "hub.mode=subscribe&hub.verify_token=s%20cret&hub.challenge=1158201444";
        assert_eq!(verify_get(ok, Some("s cret")), Ok("1158201444".into()));
        assert_eq!(
            Meta.verify_get(ok, Some("s cret")),
            Some(Ok("1158201444".into()))
        );
        assert_eq!(verify_get(ok, Some("s crem")), Err(GetRefusal::Forbidden));
        assert_eq!(verify_get(ok, Some("s cret2")), Err(GetRefusal::Forbidden));
        assert_eq!(verify_get(ok, None), Err(GetRefusal::Forbidden));
        for missing in [
            "hub.verify_token=t&hub.challenge=c",
            "hub.mode=subscribe&hub.challenge=c",
            "hub.mode=subscribe&hub.verify_token=t",
            "",
        ] {
            assert!(
                matches!(
                    verify_get(missing, Some("t")),
                    Err(GetRefusal::BadRequest(_))
                ),
                "{missing}"
            );
        }
        assert!(matches!(
            verify_get(
                "hub.mode=unsubscribe&hub.verify_token=t&hub.challenge=c",
                Some("t")
            ),
            Err(GetRefusal::BadRequest(_))
        ));
        assert_eq!(
            Meta.verify_token_env("meta").as_deref(),
            Some("META_VERIFY_TOKEN")
        );
        assert_eq!(
            Meta.verify_token_env("wa-eu").as_deref(),
            Some("WA_EU_VERIFY_TOKEN")
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn prop_verify_get_never_panics(query in "[ -~]{0,80}", token in proptest::option::of("[ -~]{0,10}")) {
            let _ = verify_get(&query, token.as_deref());
        }
    }
}
