//! Shopify: `X-Shopify-Hmac-Sha256: <base64 HMAC-SHA256(client secret, body)>`; no timestamp
//! is signed, so there is no replay window. The topic (`orders/create`) in `X-Shopify-Topic` is
//! the event type and the part after its last `/` (`create`) the action; `X-Shopify-Event-Id`
//! (the same on every delivery of one event, which Shopify's docs say to dedupe on) is the
//! delivery id, else `X-Shopify-Webhook-Id`.
//!
//! Shopify's newer Events deliveries send the same headers without the `X-` prefix
//! (`Shopify-Hmac-Sha256`, `Shopify-Topic`, …): both spellings are read, the `X-` one first.
//!
//! The shop (`X-Shopify-Shop-Domain`) is a header, and payloads carry no shop id, so the
//! default rate-limit identifier is the client address; set `identifier_field` to a payload
//! path if your topics carry one.

use http::HeaderMap;

use super::signature::{VerifyError, decode_b64_mac, mac_of};
use super::{
    Builtin, Outgoing, Provider, Request, SecretSet, Secrets, SendOptions, SignError, header_str,
    hmac_keys,
};
use crate::event::{BodyError, Classified, Fields, Probe};

pub struct Shopify;

const HMAC: &str = "x-shopify-hmac-sha256";
const HMAC_EVENTS: &str = "shopify-hmac-sha256";
const TOPIC: [&str; 2] = ["x-shopify-topic", "shopify-topic"];
const EVENT_ID: [&str; 2] = ["x-shopify-event-id", "shopify-event-id"];
const WEBHOOK_ID: [&str; 2] = ["x-shopify-webhook-id", "shopify-webhook-id"];

impl Provider for Shopify {
    fn name(&self) -> &'static str {
        "shopify"
    }

    fn builtin(&self) -> Option<Builtin> {
        Some(Builtin {
            source: "shopify",
            secret_env: &["SHOPIFY_WEBHOOK_SECRET"],
            identifier: None,
        })
    }

    fn signature_headers(&self) -> &'static [&'static str] {
        &[HMAC, HMAC_EVENTS]
    }

    fn verify(&self, req: &Request<'_>, secrets: Option<&Secrets>) -> Result<(), VerifyError> {
        let header = req.header(HMAC).or_else(|| req.header(HMAC_EVENTS));
        verify(hmac_keys(secrets)?, header, req.body)
    }

    fn probes(&self) -> &'static [Probe] {
        &[]
    }

    fn classify(&self, headers: &HeaderMap, _: &Fields<'_>) -> Result<Classified, BodyError> {
        let first = |names: [&str; 2]| names.iter().find_map(|n| header_str(headers, n));
        let topic =
            first(TOPIC).ok_or_else(|| BodyError("missing X-Shopify-Topic header".into()))?;
        let delivery_id = first(EVENT_ID).or_else(|| first(WEBHOOK_ID));
        Ok(Classified {
            event_type: topic.to_string(),
            action: super::stripe::last_segment(topic, '/'),
            delivery_id: delivery_id.map(str::to_string),
        })
    }

    fn compose(&self, out: &mut Outgoing, opts: &SendOptions<'_>) -> Result<(), SignError> {
        out.header("user-agent", "Shopify-Captain-Hook");
        out.header(TOPIC[0], opts.event.unwrap_or("orders/create"));
        out.header("x-shopify-shop-domain", "example.myshopify.com");
        out.header("x-shopify-api-version", "2024-10");
        out.header(WEBHOOK_ID[0], uuid::Uuid::new_v4().to_string());
        out.header(EVENT_ID[0], uuid::Uuid::new_v4().to_string());
        out.header(
            "x-shopify-triggered-at",
            httpdate::fmt_http_date(std::time::SystemTime::now()),
        );
        Ok(())
    }

    fn sign(&self, out: &mut Outgoing, opts: &SendOptions<'_>) -> Result<(), SignError> {
        let secret = opts.secret()?;
        out.header(HMAC, sign(secret.as_bytes(), &out.body));
        Ok(())
    }

    fn sample(&self) -> &'static str {
        include_str!("../../examples/shopify-orders.create.json")
    }
}

/// `X-Shopify-Hmac-Sha256`: base64 (padding optional) of some key's HMAC-SHA256 of the body.
pub fn verify(secrets: &SecretSet, header: Option<&[u8]>, body: &[u8]) -> Result<(), VerifyError> {
    let mac = header
        .map(<[u8]>::trim_ascii)
        .and_then(decode_b64_mac)
        .ok_or(VerifyError::InvalidSignature)?;
    secrets.verify_body(body, &mac)
}

/// The base64 HMAC, the value of `X-Shopify-Hmac-Sha256`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    use base64::Engine as _;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    base64::engine::general_purpose::STANDARD.encode(mac_of(&key, &[body]))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    // tests/vectors/shopify.py (Shopify's documented recipe).
    const SECRET: &str = "hush_3c1f0e9d8b7a6f5e4d3c2b1a0f9e8d7c";
    const BODY: &[u8] =
        br#"{"id":820982911946154508,"email":"jon@example.com","total_price":"403.00"}"#;
    const HMAC_B64: &str = "jXFMScuBHiJB/IwzkMB3JLK0JgCjkkLBGsONWJ72CAk=";
    const INVALID: Result<(), VerifyError> = Err(VerifyError::InvalidSignature);

    fn set(list: &str) -> SecretSet {
        SecretSet::hmac_from_list(list).unwrap()
    }

    fn v(set: &SecretSet, sig: &[u8]) -> Result<(), VerifyError> {
        verify(set, Some(sig), BODY)
    }

    #[test]
    fn shopify_documented_vector() {
        assert_eq!(sign(SECRET.as_bytes(), BODY), HMAC_B64);
        assert_eq!(v(&set(SECRET), HMAC_B64.as_bytes()), Ok(()));
        assert_eq!(
            v(&set(SECRET), HMAC_B64.trim_end_matches('=').as_bytes()),
            Ok(())
        );
    }

    #[test]
    fn shopify_rejects_missing_malformed_and_wrong() {
        let s = set(SECRET);
        assert_eq!(verify(&s, None, BODY), INVALID);
        assert_eq!(v(&s, b""), INVALID);
        assert_eq!(v(&s, b"not base64!"), INVALID);
        assert_eq!(v(&s, &HMAC_B64.as_bytes()[..20]), INVALID);
        assert_eq!(v(&s, format!("{HMAC_B64}AAAA").as_bytes()), INVALID);
        assert_eq!(v(&s, b"\xff\xfe"), INVALID);
        // A hex MAC is not what Shopify sends.
        let hex = hex::encode(decode_b64_mac(HMAC_B64.as_bytes()).unwrap());
        assert_eq!(v(&s, hex.as_bytes()), INVALID);
        let mut body = BODY.to_vec();
        body[5] ^= 1;
        assert_eq!(verify(&s, Some(HMAC_B64.as_bytes()), &body), INVALID);
        assert_eq!(v(&set("another"), HMAC_B64.as_bytes()), INVALID);
    }

    #[test]
    fn shopify_rotation() {
        assert_eq!(
            v(&set(&format!("old,{SECRET}")), HMAC_B64.as_bytes()),
            Ok(())
        );
        assert_eq!(
            v(&set(&format!("{SECRET},new")), HMAC_B64.as_bytes()),
            Ok(())
        );
        assert_eq!(v(&set("old,new"), HMAC_B64.as_bytes()), INVALID);
    }

    #[test]
    fn shopify_reads_the_unprefixed_events_header_too() {
        let mut h = HeaderMap::new();
        h.insert(HMAC_EVENTS, http::HeaderValue::from_static(HMAC_B64));
        let secrets = Secrets::Hmac(set(SECRET));
        let req = Request {
            source: "shopify",
            line: super::super::RequestLine::post("/webhook/shopify"),
            public_url: None,
            headers: &h,
            body: BODY,
            now_ms: 0,
            agent_key: &|_| false,
        };
        assert_eq!(Shopify.verify(&req, Some(&secrets)), Ok(()));
    }

    fn hdrs(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, http::HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn classify_reads_the_topic_and_ids() {
        let c = Shopify
            .classify(
                &hdrs(&[
                    ("x-shopify-topic", "orders/create"),
                    ("x-shopify-webhook-id", "w-1"),
                    ("x-shopify-event-id", "e-1"),
                ]),
                &Fields::default(),
            )
            .unwrap();
        assert_eq!(c.event_type, "orders/create");
        assert_eq!(c.action.as_deref(), Some("create"));
        assert_eq!(c.delivery_id.as_deref(), Some("e-1"));
        let c = Shopify
            .classify(
                &hdrs(&[
                    ("shopify-topic", "app/uninstalled"),
                    ("x-shopify-webhook-id", "w-2"),
                ]),
                &Fields::default(),
            )
            .unwrap();
        assert_eq!(c.event_type, "app/uninstalled");
        assert_eq!(c.action.as_deref(), Some("uninstalled"));
        assert_eq!(c.delivery_id.as_deref(), Some("w-2"));
        let c = Shopify
            .classify(&hdrs(&[("x-shopify-topic", "shop")]), &Fields::default())
            .unwrap();
        assert_eq!((c.action, c.delivery_id), (None, None));
        assert!(Shopify.classify(&hdrs(&[]), &Fields::default()).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn prop_shopify(
            secret in "[A-Za-z0-9_]{1,48}",
            body in proptest::collection::vec(any::<u8>(), 0..256),
            flip in any::<prop::sample::Index>(),
        ) {
            let s = set(&secret);
            let sig = sign(secret.as_bytes(), &body);
            prop_assert_eq!(verify(&s, Some(sig.as_bytes()), &body), Ok(()));
            if !body.is_empty() {
                let mut other = body.clone();
                other[flip.index(body.len())] ^= 0x20;
                prop_assert_eq!(verify(&s, Some(sig.as_bytes()), &other), INVALID);
            }
        }
    }
}
