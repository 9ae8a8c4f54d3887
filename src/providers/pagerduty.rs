//! PagerDuty (v3 webhooks): `X-PagerDuty-Signature: v1=<hex HMAC-SHA256(secret, body)>`, several
//! comma-separated entries during a secret rotation on PagerDuty's side (any may match; other
//! versions are ignored). PagerDuty signs no timestamp, so there is no replay window.
//!
//! The event is the body's `event` object: `event.event_type` (`incident.triggered`) is the
//! event type, the part after its last dot the action, and `event.id` the delivery id. The
//! default identifier is the service, `event.data.service.id` (incident events).

use http::HeaderMap;
use serde_json::Value;

use super::signature::{SHA256_LEN, VerifyError, ct_eq, decode_hex_mac, hex_signature};
use super::stripe::{last_segment, stamp_body};
use super::{
    Builtin, Outgoing, Provider, Request, SecretSet, Secrets, SendOptions, SignError, hmac_keys,
};
use crate::event::{BodyError, Classified, Field, Fields, Probe};

pub struct PagerDuty;

const EVENT_TYPE: Field = Field::new(0);
const EVENT_ID: Field = Field::new(1);
const SIGNATURE: &str = "x-pagerduty-signature";

impl Provider for PagerDuty {
    fn name(&self) -> &'static str {
        "pagerduty"
    }

    fn builtin(&self) -> Option<Builtin> {
        Some(Builtin {
            source: "pagerduty",
            secret_env: &["PAGERDUTY_WEBHOOK_SECRET"],
            identifier: Some("payload.event.data.service.id"),
        })
    }

    fn signature_headers(&self) -> &'static [&'static str] {
        &[SIGNATURE]
    }

    fn verify(&self, req: &Request<'_>, secrets: Option<&Secrets>) -> Result<(), VerifyError> {
        verify(hmac_keys(secrets)?, req.header(SIGNATURE), req.body)
    }

    fn probes(&self) -> &'static [Probe] {
        &[
            (&["event", "event_type"], EVENT_TYPE),
            (&["event", "id"], EVENT_ID),
        ]
    }

    fn classify(&self, _: &HeaderMap, fields: &Fields<'_>) -> Result<Classified, BodyError> {
        let event_type = fields
            .str(EVENT_TYPE)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                BodyError("a PagerDuty webhook needs a string \"event.event_type\"".into())
            })?;
        Ok(Classified {
            event_type: event_type.to_string(),
            action: last_segment(event_type, '.'),
            delivery_id: fields.str(EVENT_ID).map(str::to_string),
        })
    }

    /// A fresh `event.id`, and `--event` as `event.event_type`.
    fn compose(&self, out: &mut Outgoing, opts: &SendOptions<'_>) -> Result<(), SignError> {
        out.header("user-agent", "PagerDuty-Webhook/V3.0");
        out.header("x-webhook-id", uuid::Uuid::new_v4().to_string());
        out.header("x-webhook-subscription", "PSO8PY0");
        let id = uuid::Uuid::new_v4().simple().to_string().to_uppercase();
        let mut edits = vec![(&["event", "id"][..], Value::from(&id[..26]))];
        if let Some(t) = opts.event {
            edits.push((&["event", "event_type"][..], Value::from(t)));
        }
        stamp_body(out, &edits)
    }

    fn sign(&self, out: &mut Outgoing, opts: &SendOptions<'_>) -> Result<(), SignError> {
        let secret = opts.secret()?;
        out.header(SIGNATURE, sign(secret.as_bytes(), &out.body));
        Ok(())
    }

    fn sample(&self) -> &'static str {
        include_str!("../../examples/pagerduty-incident.triggered.json")
    }
}

/// `X-PagerDuty-Signature: v1=<hex>[,v1=<hex>…]`: some `v1` entry is some key's HMAC of the body.
pub fn verify(secrets: &SecretSet, header: Option<&[u8]>, body: &[u8]) -> Result<(), VerifyError> {
    let header = header.ok_or(VerifyError::InvalidSignature)?;
    if secrets.any_mac(&[body], |tag| {
        v1_entries(header).any(|mac| ct_eq(tag, &mac))
    }) {
        Ok(())
    } else {
        Err(VerifyError::InvalidSignature)
    }
}

fn v1_entries(header: &[u8]) -> impl Iterator<Item = [u8; SHA256_LEN]> + '_ {
    header
        .split(|b| *b == b',')
        .filter_map(|entry| entry.trim_ascii().strip_prefix(b"v1="))
        .filter_map(|hex| decode_hex_mac(hex).ok())
}

/// `v1=<hex>`, the value of `X-PagerDuty-Signature`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    hex_signature("v1=", secret, &[body])
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::event::ProbeSpec;

    // tests/vectors/pagerduty.py (PagerDuty's documented recipe).
    const SECRET: &str = "Wj8cGvmXzJ8kDpUq3c0mMUvRgBtOr9rBuqOCm8g1Hy4Yh9gXbVkeyv5f0Tcx6Wbq";
    const OTHER: &str = "oldSecretBeingRotatedOut";
    const BODY: &[u8] = br#"{"event":{"id":"01DEN0KTVA9F8JYV9J1R7Y3XQK","event_type":"incident.triggered","resource_type":"incident"}}"#;
    const SIG: &str = "v1=55cc1727e8515d790ead826f49c5326202ed47a9e20af0bea8cbce955b2f174c";
    const BOTH: &str = "v1=0cfdbf8cee9c291557dd8aeede2fedf8550790dc48569ebf8a1019f93a4dcc5e,v1=55cc1727e8515d790ead826f49c5326202ed47a9e20af0bea8cbce955b2f174c";
    const INVALID: Result<(), VerifyError> = Err(VerifyError::InvalidSignature);

    fn set(list: &str) -> SecretSet {
        SecretSet::hmac_from_list(list).unwrap()
    }

    fn v(set: &SecretSet, sig: &str) -> Result<(), VerifyError> {
        verify(set, Some(sig.as_bytes()), BODY)
    }

    #[test]
    fn pagerduty_documented_vectors() {
        assert_eq!(sign(SECRET.as_bytes(), BODY), SIG);
        assert_eq!(v(&set(SECRET), SIG), Ok(()));
        assert_eq!(v(&set(SECRET), BOTH), Ok(()));
        assert_eq!(v(&set(OTHER), BOTH), Ok(()));
        assert_eq!(v(&set(SECRET), &BOTH.replace(',', ", ")), Ok(()));
        assert_eq!(v(&set(OTHER), SIG), INVALID);
    }

    #[test]
    fn pagerduty_rejects_missing_malformed_and_wrong() {
        let s = set(SECRET);
        assert_eq!(verify(&s, None, BODY), INVALID);
        for bad in [
            "",
            "v1=",
            &SIG[3..],
            &SIG.replace("v1=", "v2="),
            &SIG[..SIG.len() - 1],
            &SIG.replace("55c", "55z"),
            &BOTH.replace(',', ";"),
        ] {
            assert_eq!(v(&s, bad), INVALID, "{bad}");
        }
        assert_eq!(verify(&s, Some(b"v1=\xff"), BODY), INVALID);
        assert_eq!(verify(&s, Some(SIG.as_bytes()), b"{}"), INVALID);
        assert_eq!(v(&set("wrong"), SIG), INVALID);
    }

    #[test]
    fn pagerduty_rotation() {
        assert_eq!(v(&set(&format!("{OTHER},{SECRET}")), SIG), Ok(()));
        assert_eq!(v(&set("a,b"), SIG), INVALID);
    }

    #[test]
    fn classify_reads_the_event_object() {
        let spec = ProbeSpec::new(PagerDuty.probes(), None);
        let sample: serde_json::Value = serde_json::from_str(PagerDuty.sample()).unwrap();
        let c = PagerDuty
            .classify(&HeaderMap::new(), &spec.read_value(&sample))
            .unwrap();
        assert_eq!(c.event_type, "incident.triggered");
        assert_eq!(c.action.as_deref(), Some("triggered"));
        assert_eq!(c.delivery_id.as_deref(), Some("01DEN0KTVA9F8JYV9J1R7Y3XQK"));
        let ping = PagerDuty
            .classify(
                &HeaderMap::new(),
                &spec.read_value(&json!({"event": {"event_type": "pagey.ping", "id": "p1"}})),
            )
            .unwrap();
        assert_eq!(ping.event_type, "pagey.ping");
        assert!(
            PagerDuty
                .classify(
                    &HeaderMap::new(),
                    &spec.read_value(&json!({"event_type": "x"}))
                )
                .is_err()
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn prop_pagerduty(
            secret in "[A-Za-z0-9_]{1,64}",
            body in proptest::collection::vec(any::<u8>(), 0..256),
            decoys in proptest::collection::vec("[ -~]{0,70}", 0..3),
        ) {
            let s = set(&secret);
            let sig = sign(secret.as_bytes(), &body);
            let mut entries = decoys.clone();
            entries.push(sig);
            let header = entries.join(",");
            prop_assert_eq!(verify(&s, Some(header.as_bytes()), &body), Ok(()));
        }
    }
}
