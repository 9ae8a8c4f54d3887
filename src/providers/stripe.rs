//! Stripe: `Stripe-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, t + "." + body)>`,
//! with any number of `v1` entries (any may match; `v0` test-mode entries and unknown schemes are
//! ignored), within 300 s of now (Stripe's SDK default tolerance). The `whsec_…` endpoint secret
//! is the HMAC key as it is written, prefix included (as Stripe's SDKs use it: it is not base64).
//!
//! The event is the body: `type` (`customer.subscription.updated`) is the event type, the part
//! after its last dot (`updated`) the action, and `id` (`evt_…`, the same on every retry of an
//! event to an endpoint) the delivery id. The default identifier is the connected account
//! (`account`, on Connect events), else the client address.
//!
//! Stripe's SDKs refuse a timestamp older than the tolerance only; the router also refuses one
//! further than 300 s ahead of its clock, like every other window here.

use http::HeaderMap;
use serde_json::{Map, Value};

use super::signature::{
    SHA256_LEN, VerifyError, ct_eq, decode_hex_mac, format_i64, hex_signature, parse_timestamp,
    within_window,
};
use super::{
    Builtin, Outgoing, Provider, Request, SecretSet, Secrets, SendOptions, SignError, hmac_keys,
};
use crate::event::{BodyError, Classified, Field, Fields, Probe};

/// Replay window of Stripe webhooks, in seconds (inclusive): Stripe's default tolerance.
pub const WINDOW_SECS: u64 = 300;

pub struct Stripe;

const TYPE: Field = Field::new(0);
const ID: Field = Field::new(1);
const SIGNATURE: &str = "stripe-signature";

impl Provider for Stripe {
    fn name(&self) -> &'static str {
        "stripe"
    }

    fn builtin(&self) -> Option<Builtin> {
        Some(Builtin {
            source: "stripe",
            secret_env: &["STRIPE_WEBHOOK_SECRET"],
            identifier: Some("payload.account"),
        })
    }

    fn signature_headers(&self) -> &'static [&'static str] {
        &[SIGNATURE]
    }

    fn replay_window(&self) -> Option<std::time::Duration> {
        Some(std::time::Duration::from_secs(WINDOW_SECS))
    }

    fn verify(&self, req: &Request<'_>, secrets: Option<&Secrets>) -> Result<(), VerifyError> {
        verify(
            hmac_keys(secrets)?,
            req.header(SIGNATURE),
            req.body,
            req.now_ms / 1000,
        )
    }

    fn probes(&self) -> &'static [Probe] {
        &[(&["type"], TYPE), (&["id"], ID)]
    }

    fn classify(&self, _: &HeaderMap, fields: &Fields<'_>) -> Result<Classified, BodyError> {
        let event_type = fields
            .str(TYPE)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| BodyError("a Stripe event needs a string \"type\" field".into()))?;
        Ok(Classified {
            event_type: event_type.to_string(),
            action: last_segment(event_type, '.'),
            delivery_id: fields.str(ID).map(str::to_string),
        })
    }

    /// A fresh `evt_…` id, and `--event` as the body's `type`.
    fn compose(&self, out: &mut Outgoing, opts: &SendOptions<'_>) -> Result<(), SignError> {
        out.header(
            "user-agent",
            "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
        );
        let mut edits = vec![(&["id"][..], Value::from(new_id("evt_")))];
        if let Some(t) = opts.event {
            edits.push((&["type"][..], Value::from(t)));
        }
        stamp_body(out, &edits)
    }

    fn sign(&self, out: &mut Outgoing, opts: &SendOptions<'_>) -> Result<(), SignError> {
        let secret = opts.secret()?;
        out.header(
            SIGNATURE,
            sign(secret.as_bytes(), opts.now_ms / 1000, &out.body),
        );
        Ok(())
    }

    fn sample(&self) -> &'static str {
        include_str!("../../examples/stripe-customer.created.json")
    }
}

/// For `send`, with providers whose event type and id are in the body: `edits` (a path and a
/// value each; objects on the way made as needed) made to a JSON object body, so that each test
/// webhook is a new event (a fresh id) of the type `--event` names. A body that is not a JSON
/// object is sent as it is.
pub(crate) fn stamp_body(out: &mut Outgoing, edits: &[(&[&str], Value)]) -> Result<(), SignError> {
    let Ok(mut body @ Value::Object(_)) = serde_json::from_slice::<Value>(&out.body) else {
        return Ok(());
    };
    for (path, value) in edits {
        let Some((last, parents)) = path.split_last() else {
            continue;
        };
        let mut node = &mut body;
        for key in parents {
            let Value::Object(m) = node else {
                break;
            };
            node = m
                .entry(key.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
        }
        if let Value::Object(m) = node {
            m.insert(last.to_string(), value.clone());
        }
    }
    out.body = serde_json::to_vec(&body).map_err(|e| SignError(e.to_string()))?;
    Ok(())
}

/// A new random id: `prefix` and 24 lowercase hex digits.
pub(crate) fn new_id(prefix: &str) -> String {
    let hex = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}{}", &hex[..24])
}

/// The part of `s` after the last `sep`, when there is one and it is not empty.
pub(crate) fn last_segment(s: &str, sep: char) -> Option<String> {
    s.rsplit_once(sep)
        .map(|(_, last)| last)
        .filter(|last| !last.is_empty())
        .map(str::to_string)
}

/// `Stripe-Signature: t=<ts>,v1=<hex>[,v1=<hex>…]`: some `v1` entry is some key's HMAC of
/// `ts + "." + body`, then `ts` within 300 s of `now_secs`. The timestamp is the first `t`;
/// a missing or malformed one, or no well-formed `v1`, is `InvalidSignature`.
pub fn verify(
    secrets: &SecretSet,
    header: Option<&[u8]>,
    body: &[u8],
    now_secs: i64,
) -> Result<(), VerifyError> {
    let header = header.ok_or(VerifyError::InvalidSignature)?;
    let ts = items(header, b',')
        .find_map(|(k, v)| (k == b"t").then_some(v))
        .and_then(parse_timestamp)
        .ok_or(VerifyError::InvalidSignature)?;
    // Stripe's SDKs sign the timestamp as a number (`"%d.%s"`): its digits, re-formatted.
    let mut ts_buf = [0u8; 20];
    let ts_text = format_i64(ts, &mut ts_buf);
    let matched = secrets.any_mac(&[ts_text, b".", body], |tag| {
        v1_entries(header).any(|mac| ct_eq(tag, &mac))
    });
    if !matched {
        return Err(VerifyError::InvalidSignature);
    }
    within_window(ts, now_secs, WINDOW_SECS)
}

/// The `key=value` items of a header split on `sep`, whitespace around each trimmed; items
/// without `=` are skipped.
pub(crate) fn items(header: &[u8], sep: u8) -> impl Iterator<Item = (&[u8], &[u8])> {
    header.split(move |b| *b == sep).filter_map(|item| {
        let item = item.trim_ascii();
        let at = item.iter().position(|b| *b == b'=')?;
        Some((&item[..at], &item[at + 1..]))
    })
}

fn v1_entries(header: &[u8]) -> impl Iterator<Item = [u8; SHA256_LEN]> + '_ {
    items(header, b',')
        .filter(|(k, _)| *k == b"v1")
        .filter_map(|(_, v)| decode_hex_mac(v).ok())
}

/// `t=<ts>,v1=<hex>`, the value of `Stripe-Signature`.
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut ts_buf = [0u8; 20];
    let ts = format_i64(timestamp, &mut ts_buf);
    let mac = hex_signature("", secret, &[ts, b".", body]);
    format!("t={timestamp},v1={mac}")
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::event::ProbeSpec;

    // tests/vectors/stripe.py (the stripe SDK's generate_signature_header / verify_header).
    const SECRET: &str = "whsec_test_5f1d9c2b7a6e4f0c8b3a1d2e";
    const OTHER: &str = "whsec_rotated_0a9b8c7d6e5f4a3b2c1d";
    const TS: i64 = 1733580000;
    const BODY: &[u8] =
        br#"{"id":"evt_1QTc2vFJ5ZhVBcWZ0ab1cDeF","object":"event","type":"customer.created"}"#;
    const HEADER: &str =
        "t=1733580000,v1=761551694d7126fcc04fe1cbf5ec08970e126b9693c815b8612f83af4f9db601";
    const OTHER_HEADER: &str =
        "t=1733580000,v1=3296f99e2f3199f6bf4cc3a85366e7323dc8cb60daed602429ef458577d71b06";
    const BOTH: &str = "t=1733580000,v1=3296f99e2f3199f6bf4cc3a85366e7323dc8cb60daed602429ef458577d71b06,v1=761551694d7126fcc04fe1cbf5ec08970e126b9693c815b8612f83af4f9db601,v0=6ffbb59b2300aae63f272406069a9788598b792a944a07aba816edb039989a39";

    const INVALID: Result<(), VerifyError> = Err(VerifyError::InvalidSignature);
    const STALE: Result<(), VerifyError> = Err(VerifyError::StaleTimestamp);

    fn set(list: &str) -> SecretSet {
        SecretSet::hmac_from_list(list).unwrap()
    }

    fn v(set: &SecretSet, header: &str, now: i64) -> Result<(), VerifyError> {
        verify(set, Some(header.as_bytes()), BODY, now)
    }

    #[test]
    fn stripe_sdk_vectors() {
        assert_eq!(sign(SECRET.as_bytes(), TS, BODY), HEADER);
        assert_eq!(sign(OTHER.as_bytes(), TS, BODY), OTHER_HEADER);
        assert_eq!(v(&set(SECRET), HEADER, TS), Ok(()));
        assert_eq!(v(&set(SECRET), BOTH, TS), Ok(()));
        assert_eq!(v(&set(OTHER), BOTH, TS), Ok(()));
        assert_eq!(v(&set(OTHER), HEADER, TS), INVALID);
        // Item order and spaces do not matter.
        let reordered = format!("v1={}, t={TS}", &HEADER[16..]);
        assert_eq!(v(&set(SECRET), &reordered, TS), Ok(()));
    }

    #[test]
    fn stripe_rejects_missing_malformed_and_wrong() {
        let s = set(SECRET);
        assert_eq!(verify(&s, None, BODY, TS), INVALID);
        let mut body = BODY.to_vec();
        body[10] ^= 1;
        assert_eq!(verify(&s, Some(HEADER.as_bytes()), &body, TS), INVALID);
        assert_eq!(v(&set("whsec_other"), HEADER, TS), INVALID);
        for bad in [
            "",
            "t=1733580000",
            &HEADER[13..],                                   // no t
            &HEADER.replace("v1=", "v0="),                   // test-mode scheme only
            &HEADER.replace("t=1733580000", "t=abc"),        // bad timestamp
            &HEADER.replace("t=1733580000", "t=1733580001"), // another timestamp
            &HEADER[..HEADER.len() - 2],                     // short MAC
            &HEADER.replace("761", "76g"),                   // bad hex
            "t=1733580000,v1=\u{7f}",
        ] {
            assert_eq!(v(&s, bad, TS), INVALID, "{bad}");
        }
        assert_eq!(
            verify(&s, Some(b"t=1733580000,v1=\xff\xfe"), BODY, TS),
            INVALID
        );
    }

    #[test]
    fn stripe_rotation() {
        assert_eq!(v(&set(&format!("{OTHER},{SECRET}")), HEADER, TS), Ok(()));
        assert_eq!(
            v(&set(&format!("{SECRET},{OTHER}")), OTHER_HEADER, TS),
            Ok(())
        );
        assert_eq!(v(&set("a,b"), HEADER, TS), INVALID);
    }

    #[test]
    fn stripe_window_is_inclusive_and_checked_after_the_signature() {
        let s = set(SECRET);
        assert_eq!(v(&s, HEADER, TS + 300), Ok(()));
        assert_eq!(v(&s, HEADER, TS - 300), Ok(()));
        assert_eq!(v(&s, HEADER, TS + 301), STALE);
        assert_eq!(v(&s, HEADER, TS - 301), STALE);
        assert_eq!(v(&set("guess"), HEADER, TS + 10_000), INVALID);
    }

    #[test]
    fn classify_reads_type_action_and_id() {
        let spec = ProbeSpec::new(Stripe.probes(), None);
        let c = Stripe
            .classify(
                &HeaderMap::new(),
                &spec.read_value(&json!({"id": "evt_1", "type": "customer.subscription.updated"})),
            )
            .unwrap();
        assert_eq!(c.event_type, "customer.subscription.updated");
        assert_eq!(c.action.as_deref(), Some("updated"));
        assert_eq!(c.delivery_id.as_deref(), Some("evt_1"));
        let plain = Stripe
            .classify(
                &HeaderMap::new(),
                &spec.read_value(&json!({"type": "ping"})),
            )
            .unwrap();
        assert_eq!((plain.action, plain.delivery_id), (None, None));
        assert!(
            Stripe
                .classify(&HeaderMap::new(), &spec.read_value(&json!({"id": "evt_1"})))
                .is_err()
        );
        let sample: serde_json::Value = serde_json::from_str(Stripe.sample()).unwrap();
        let c = Stripe
            .classify(&HeaderMap::new(), &spec.read_value(&sample))
            .unwrap();
        assert_eq!(c.event_type, "customer.created");
    }

    #[test]
    fn compose_stamps_a_fresh_id_and_the_event_type() {
        let opts = SendOptions {
            event: Some("invoice.paid"),
            secret: Some(SECRET),
            agent_key: None,
            now_ms: TS * 1000,
        };
        let mut out = Outgoing {
            headers: Vec::new(),
            body: Stripe.sample().as_bytes().to_vec(),
            url: None,
        };
        Stripe.compose(&mut out, &opts).unwrap();
        let v: Value = serde_json::from_slice(&out.body).unwrap();
        assert_eq!(v["type"], "invoice.paid");
        let id = v["id"].as_str().unwrap();
        assert!(
            id.starts_with("evt_") && id != "evt_1QTc2vFJ5ZhVBcWZ0ab1cDeF",
            "{id}"
        );
        assert_eq!(v["data"]["object"]["id"], "cus_RMcGvT9pQx2Lb8");
        // Nested paths are made; a body that is no JSON object is left alone.
        let mut nested = Outgoing {
            headers: Vec::new(),
            body: b"{}".to_vec(),
            url: None,
        };
        stamp_body(&mut nested, &[(&["event", "id"][..], Value::from("x"))]).unwrap();
        assert_eq!(nested.body, br#"{"event":{"id":"x"}}"#);
        let mut form = Outgoing {
            headers: Vec::new(),
            body: b"a=1".to_vec(),
            url: None,
        };
        stamp_body(&mut form, &[(&["id"][..], Value::from("x"))]).unwrap();
        assert_eq!(form.body, b"a=1");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn prop_stripe(
            secret in "[A-Za-z0-9_]{1,48}",
            body in proptest::collection::vec(any::<u8>(), 0..256),
            ts in 0i64..10_000_000_000,
            junk in "[ -~]{0,40}",
        ) {
            let s = set(&secret);
            let header = sign(secret.as_bytes(), ts, &body);
            prop_assert_eq!(verify(&s, Some(header.as_bytes()), &body, ts), Ok(()));
            let with_junk = format!("{junk},{header}");
            // Junk items never break a genuine signature unless they hold another `t`.
            if !junk.contains("t=") {
                prop_assert_eq!(verify(&s, Some(with_junk.as_bytes()), &body, ts), Ok(()));
            }
            let _ = verify(&s, Some(junk.as_bytes()), &body, ts);
        }
    }
}
