//! Square: `x-square-hmacsha256-signature: <base64 HMAC-SHA256(signature key, notification URL +
//! body)>`. The notification URL is the one the subscription was given (`public_url`, else
//! rebuilt from `Host`: see `signed_url`). Square signs no timestamp, so there is no replay
//! window; its older `x-square-signature` (HMAC-SHA1, deprecated) is not checked, only kept out
//! of the archive. Type from the body's `type` (`payment.updated`), delivery id its `event_id`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::HeaderMap;
use ring::hmac;

use super::signature::{VerifyError, ct_eq, decode_b64_mac, mac_of};
use super::signed_url::{called_urls, signing_url};
use super::{
    Builtin, Outgoing, Provider, Request, SecretSet, Secrets, SendOptions, SignError, hmac_keys,
};
use crate::event::{BodyError, Classified, Field, Fields, Probe};

pub struct Square;

const TYPE: Field = Field::new(0);
const EVENT_ID: Field = Field::new(1);
const SIGNATURE: &str = "x-square-hmacsha256-signature";

impl Provider for Square {
    fn name(&self) -> &'static str {
        "square"
    }

    fn builtin(&self) -> Option<Builtin> {
        Some(Builtin {
            source: "square",
            secret_env: &["SQUARE_WEBHOOK_SECRET"],
            identifier: Some("payload.merchant_id"),
        })
    }

    fn signature_headers(&self) -> &'static [&'static str] {
        // The deprecated HMAC-SHA1 signature Square may still send beside the SHA-256 one.
        &["x-square-signature", SIGNATURE]
    }

    fn verify(&self, req: &Request<'_>, secrets: Option<&Secrets>) -> Result<(), VerifyError> {
        verify(
            hmac_keys(secrets)?,
            req.header(SIGNATURE),
            &called_urls(req),
            req.body,
        )
    }

    fn probes(&self) -> &'static [Probe] {
        &[(&["type"], TYPE), (&["event_id"], EVENT_ID)]
    }

    fn classify(&self, _: &HeaderMap, fields: &Fields<'_>) -> Result<Classified, BodyError> {
        let event_type = fields
            .str(TYPE)
            .ok_or_else(|| BodyError("a Square webhook needs a \"type\"".into()))?;
        Ok(Classified {
            event_type: event_type.to_string(),
            action: None,
            delivery_id: fields.str(EVENT_ID).map(str::to_string),
        })
    }

    fn compose(&self, out: &mut Outgoing, _opts: &SendOptions<'_>) -> Result<(), SignError> {
        out.header("user-agent", "Square Connect v2");
        out.header("square-environment", "Sandbox");
        out.header("square-retry-number", "0");
        Ok(())
    }

    fn sign(&self, out: &mut Outgoing, opts: &SendOptions<'_>) -> Result<(), SignError> {
        let secret = opts.secret()?;
        let url = signing_url(out.url.as_deref(), "square")?;
        let signature = sign(secret.as_bytes(), url, &out.body);
        out.header(SIGNATURE, signature);
        Ok(())
    }

    fn sample(&self) -> &'static str {
        include_str!("../../examples/square-payment_updated.json")
    }
}

/// `x-square-hmacsha256-signature` of a request sent to one of `urls`.
pub fn verify(
    secrets: &SecretSet,
    signature: Option<&[u8]>,
    urls: &[String],
    body: &[u8],
) -> Result<(), VerifyError> {
    let mac = signature
        .map(<[u8]>::trim_ascii)
        .and_then(decode_b64_mac)
        .ok_or(VerifyError::InvalidSignature)?;
    let signed = urls
        .iter()
        .any(|url| secrets.any_mac(&[url.as_bytes(), body], |tag| ct_eq(tag, &mac)));
    if signed {
        Ok(())
    } else {
        Err(VerifyError::InvalidSignature)
    }
}

/// The value of `x-square-hmacsha256-signature` for `body` sent to `url`.
pub fn sign(secret: &[u8], url: &str, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    STANDARD.encode(mac_of(&key, &[url.as_bytes(), body]).as_ref())
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;
    use crate::event::ProbeSpec;
    use crate::providers::RequestLine;

    // tests/vectors/square.py (squareup 46.0.0.20260916, WebhooksHelper).
    const KEY: &str = "Ks2sEf3mHmTeq1ZuThJ2-w";
    const URL: &str = "https://hooks.example.com/webhook/square";
    const BODY: &str = r#"{"merchant_id":"6SSW7HV8K2ST5","type":"payment.updated","event_id":"13b867cf-db3d-4b1c-90b6-2f32a9d78124","created_at":"2026-11-26T15:13:20Z","data":{"type":"payment","id":"KkAkhdMsgzn59SM8A89WgKwekxLZY","object":{"payment":{"id":"KkAkhdMsgzn59SM8A89WgKwekxLZY","status":"COMPLETED"}}}}"#;
    const SIG: &str = "o0r0ReGb1A/3bYt+zTHo59SGAfjbAXSdUKVGn1hs+Aw=";
    const INVALID: Result<(), VerifyError> = Err(VerifyError::InvalidSignature);

    fn set(list: &str) -> SecretSet {
        SecretSet::hmac_from_list(list).unwrap()
    }

    fn check(set: &SecretSet, sig: &[u8], url: &str, body: &str) -> Result<(), VerifyError> {
        verify(set, Some(sig), &[url.to_string()], body.as_bytes())
    }

    fn through(
        public_url: Option<&str>,
        path: &str,
        headers: &[(&'static str, &str)],
        secrets: Option<&Secrets>,
    ) -> Result<(), VerifyError> {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        Square.verify(
            &Request {
                source: "square",
                line: RequestLine::post(path),
                public_url,
                headers: &map,
                body: BODY.as_bytes(),
                now_ms: 0,
                agent_key: &|_| false,
            },
            secrets,
        )
    }

    #[test]
    fn square_sdk_vector() {
        assert_eq!(sign(KEY.as_bytes(), URL, BODY.as_bytes()), SIG);
        assert_eq!(check(&set(KEY), SIG.as_bytes(), URL, BODY), Ok(()));
        let secrets = Square.parse_secrets(KEY).unwrap();
        let sig = [(SIGNATURE, SIG)];
        assert_eq!(
            through(Some(URL), "/webhook/square", &sig, Some(&secrets)),
            Ok(())
        );
        // Behind a proxy that moved it: public_url, not the path received, is signed.
        assert_eq!(through(Some(URL), "/in/sq", &sig, Some(&secrets)), Ok(()));
        // Without public_url: Host and the path, https guessed.
        let host = [(SIGNATURE, SIG), ("host", "hooks.example.com")];
        assert_eq!(
            through(None, "/webhook/square", &host, Some(&secrets)),
            Ok(())
        );
        assert_eq!(
            through(None, "/webhook/square", &sig, Some(&secrets)),
            INVALID
        );
        assert_eq!(through(Some(URL), "/webhook/square", &sig, None), INVALID);
    }

    #[test]
    fn square_rejects_missing_malformed_and_wrong() {
        let s = set(KEY);
        assert_eq!(
            verify(&s, None, &[URL.to_string()], BODY.as_bytes()),
            INVALID
        );
        assert_eq!(
            verify(&s, Some(SIG.as_bytes()), &[], BODY.as_bytes()),
            INVALID
        );
        for bad in [
            b"".as_slice(),
            b"not-base64!",
            &SIG.as_bytes()[..30],
            b"\xff\xfe",
            b"sha256=o0r0ReGb1A/3bYt+zTHo59SGAfjbAXSdUKVGn1hs+Aw=",
        ] {
            assert_eq!(check(&s, bad, URL, BODY), INVALID, "{bad:?}");
        }
        // Padding optional, whitespace around it trimmed.
        assert_eq!(
            check(&s, SIG.trim_end_matches('=').as_bytes(), URL, BODY),
            Ok(())
        );
        assert_eq!(check(&s, format!(" {SIG} ").as_bytes(), URL, BODY), Ok(()));
        assert_eq!(
            check(
                &s,
                SIG.as_bytes(),
                URL,
                &BODY.replace("COMPLETED", "FAILED")
            ),
            INVALID
        );
        assert_eq!(check(&s, SIG.as_bytes(), &format!("{URL}/"), BODY), INVALID);
        assert_eq!(
            check(&s, SIG.as_bytes(), &URL.replace("https", "http"), BODY),
            INVALID
        );
        assert_eq!(check(&set("wrong"), SIG.as_bytes(), URL, BODY), INVALID);
    }

    #[test]
    fn square_rotation() {
        assert_eq!(
            check(&set(&format!("old,{KEY}")), SIG.as_bytes(), URL, BODY),
            Ok(())
        );
        assert_eq!(
            check(&set(&format!("{KEY},new")), SIG.as_bytes(), URL, BODY),
            Ok(())
        );
    }

    fn probed(v: &Value) -> Fields<'static> {
        let spec = ProbeSpec::new(Square.probes(), None);
        let text = v.to_string();
        let p = crate::event::probe_json_object(text.as_bytes(), &spec).unwrap();
        assert_eq!(p.fields, spec.read_value(v));
        spec.read_value(v)
    }

    #[test]
    fn classify_reads_type_and_event_id() {
        let sample: Value = serde_json::from_str(Square.sample()).unwrap();
        let c = Square
            .classify(&HeaderMap::new(), &probed(&sample))
            .unwrap();
        assert_eq!(
            c,
            Classified {
                event_type: "payment.updated".into(),
                action: None,
                delivery_id: Some("9b2a6e05-6f2b-3f0c-8f49-1b8a7c7e4d21".into()),
            }
        );
        let no_id = Square
            .classify(
                &HeaderMap::new(),
                &probed(&json!({"type": "refund.created"})),
            )
            .unwrap();
        assert_eq!(no_id.delivery_id, None);
        assert!(
            Square
                .classify(&HeaderMap::new(), &probed(&json!({"event_id": "x"})))
                .is_err()
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn prop_square(
            secret in "[A-Za-z0-9_-]{1,40}",
            other in "[A-Za-z0-9_-]{1,40}",
            body in proptest::collection::vec(any::<u8>(), 0..256),
            flip in any::<prop::sample::Index>(),
        ) {
            let sig = sign(secret.as_bytes(), URL, &body);
            let v = |set: &SecretSet, body: &[u8]| {
                verify(set, Some(sig.as_bytes()), &[URL.to_string()], body)
            };
            prop_assert_eq!(v(&set(&secret), &body), Ok(()));
            if !body.is_empty() {
                let mut tampered = body.clone();
                tampered[flip.index(body.len())] ^= 1;
                prop_assert_eq!(v(&set(&secret), &tampered), INVALID);
            }
            if other != secret {
                prop_assert_eq!(v(&set(&other), &body), INVALID);
            }
        }
    }
}
