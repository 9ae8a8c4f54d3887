//! Paddle Billing: `Paddle-Signature: ts=<unix seconds>;h1=<hex HMAC-SHA256(secret, ts + ":" +
//! body)>`, any number of `h1` entries (any may match; other keys are ignored), the secret key
//! of the notification destination (`pdl_ntfset_…`) used as written. The window is 5 s either
//! way, Paddle's SDK default (`Verifier(maximum_variance=5)`): Paddle signs each delivery
//! attempt afresh, so a retry is never stale, and its docs recommend refusing anything older.
//! A server whose clock drifts needs NTP.
//!
//! The event type is the body's `event_type` (`transaction.completed`), the action the part
//! after its last dot; the delivery id is `event_id` (`evt_…`). The default identifier is the
//! customer, `data.customer_id`.

use http::HeaderMap;
use serde_json::Value;

use super::signature::{
    SHA256_LEN, VerifyError, ct_eq, decode_hex_mac, format_i64, hex_signature, parse_timestamp,
    within_window,
};
use super::stripe::{items, last_segment, new_id, stamp_body};
use super::{
    Builtin, Outgoing, Provider, Request, SecretSet, Secrets, SendOptions, SignError, hmac_keys,
};
use crate::event::{BodyError, Classified, Field, Fields, Probe};

/// Replay window of Paddle webhooks, in seconds (inclusive): Paddle's SDK default.
pub const WINDOW_SECS: u64 = 5;

pub struct Paddle;

const EVENT_TYPE: Field = Field::new(0);
const EVENT_ID: Field = Field::new(1);
const SIGNATURE: &str = "paddle-signature";

impl Provider for Paddle {
    fn name(&self) -> &'static str {
        "paddle"
    }

    fn builtin(&self) -> Option<Builtin> {
        Some(Builtin {
            source: "paddle",
            secret_env: &["PADDLE_WEBHOOK_SECRET"],
            identifier: Some("payload.data.customer_id"),
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
        &[(&["event_type"], EVENT_TYPE), (&["event_id"], EVENT_ID)]
    }

    fn classify(&self, _: &HeaderMap, fields: &Fields<'_>) -> Result<Classified, BodyError> {
        let event_type = fields
            .str(EVENT_TYPE)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                BodyError("a Paddle notification needs a string \"event_type\" field".into())
            })?;
        Ok(Classified {
            event_type: event_type.to_string(),
            action: last_segment(event_type, '.'),
            delivery_id: fields.str(EVENT_ID).map(str::to_string),
        })
    }

    /// Fresh `evt_…` and `ntf_…` ids, and `--event` as the body's `event_type`.
    fn compose(&self, out: &mut Outgoing, opts: &SendOptions<'_>) -> Result<(), SignError> {
        out.header("user-agent", "Paddle");
        let mut edits = vec![
            (&["event_id"][..], Value::from(new_id("evt_"))),
            (&["notification_id"][..], Value::from(new_id("ntf_"))),
        ];
        if let Some(t) = opts.event {
            edits.push((&["event_type"][..], Value::from(t)));
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
        include_str!("../../examples/paddle-transaction.completed.json")
    }
}

/// `Paddle-Signature: ts=<ts>;h1=<hex>[;h1=<hex>…]`: some `h1` is some key's HMAC of
/// `ts + ":" + body`, then `ts` within 5 s of `now_secs`. The timestamp is the first `ts`.
pub fn verify(
    secrets: &SecretSet,
    header: Option<&[u8]>,
    body: &[u8],
    now_secs: i64,
) -> Result<(), VerifyError> {
    let header = header.ok_or(VerifyError::InvalidSignature)?;
    let ts = items(header, b';')
        .find_map(|(k, v)| (k == b"ts").then_some(v))
        .and_then(parse_timestamp)
        .ok_or(VerifyError::InvalidSignature)?;
    // Paddle's SDKs sign the timestamp as parsed (`f"{timestamp}:{raw_body}"` of an int).
    let mut ts_buf = [0u8; 20];
    let ts_text = format_i64(ts, &mut ts_buf);
    let matched = secrets.any_mac(&[ts_text, b":", body], |tag| {
        h1_entries(header).any(|mac| ct_eq(tag, &mac))
    });
    if !matched {
        return Err(VerifyError::InvalidSignature);
    }
    within_window(ts, now_secs, WINDOW_SECS)
}

fn h1_entries(header: &[u8]) -> impl Iterator<Item = [u8; SHA256_LEN]> + '_ {
    items(header, b';')
        .filter(|(k, _)| *k == b"h1")
        .filter_map(|(_, v)| decode_hex_mac(v).ok())
}

/// `ts=<ts>;h1=<hex>`, the value of `Paddle-Signature`.
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut ts_buf = [0u8; 20];
    let ts = format_i64(timestamp, &mut ts_buf);
    let mac = hex_signature("", secret, &[ts, b":", body]);
    format!("ts={timestamp};h1={mac}")
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::event::ProbeSpec;

    // tests/vectors/paddle.py (Paddle's Python SDK, PaddleSignature).
    const SECRET: &str = "pdl_ntfset_01gkpjp8bkm3tm53kdgkx6sms7_6h3qd3uFSi9YCD3OLYAShQI90XTI5vEI";
    const OTHER: &str = "pdl_ntfset_01hv8wptq8987qeep44cyrewp9_rotatedSecretForTheRotationTest";
    const TS: i64 = 1733580000;
    const BODY: &[u8] = br#"{"event_id":"evt_01hv8x2acma2gz7he6kn5ps0zy","event_type":"transaction.completed","occurred_at":"2024-12-07T14:00:00.000000Z","notification_id":"ntf_01hv8x2af7kd6kbf2qhmzt1pvr","data":{"id":"txn_01hv8wptq8987qeep44cyrewp9","customer_id":"ctm_01hv8wt8nffez4p2t6typn4a5j"}}"#;
    const HEADER: &str =
        "ts=1733580000;h1=31f6bc3e7bfb85f67a6feb60afbc8c3c36cfa9c4b33f9ce98cc586f8e541b08f";
    const BOTH: &str = "ts=1733580000;h1=33cb32c49d198b01744c6ac4159939226091ae129e4d5033b65df59792c2cbd3;h1=31f6bc3e7bfb85f67a6feb60afbc8c3c36cfa9c4b33f9ce98cc586f8e541b08f";

    const INVALID: Result<(), VerifyError> = Err(VerifyError::InvalidSignature);
    const STALE: Result<(), VerifyError> = Err(VerifyError::StaleTimestamp);

    fn set(list: &str) -> SecretSet {
        SecretSet::hmac_from_list(list).unwrap()
    }

    fn v(set: &SecretSet, header: &str, now: i64) -> Result<(), VerifyError> {
        verify(set, Some(header.as_bytes()), BODY, now)
    }

    #[test]
    fn paddle_sdk_vectors() {
        assert_eq!(sign(SECRET.as_bytes(), TS, BODY), HEADER);
        assert_eq!(v(&set(SECRET), HEADER, TS), Ok(()));
        assert_eq!(v(&set(SECRET), BOTH, TS), Ok(()));
        assert_eq!(v(&set(OTHER), BOTH, TS), Ok(()));
        assert_eq!(v(&set(OTHER), HEADER, TS), INVALID);
        let reordered = format!("h1={}; ts={TS}", &HEADER[17..]);
        assert_eq!(v(&set(SECRET), &reordered, TS), Ok(()));
    }

    #[test]
    fn paddle_rejects_missing_malformed_and_wrong() {
        let s = set(SECRET);
        assert_eq!(verify(&s, None, BODY, TS), INVALID);
        let mut body = BODY.to_vec();
        body[10] ^= 1;
        assert_eq!(verify(&s, Some(HEADER.as_bytes()), &body, TS), INVALID);
        assert_eq!(v(&set("pdl_ntfset_other"), HEADER, TS), INVALID);
        for bad in [
            "",
            "ts=1733580000",
            &HEADER[14..],
            &HEADER.replace("h1=", "h2="),
            &HEADER.replace(';', ","),
            &HEADER.replace("ts=1733580000", "ts=-1"),
            &HEADER.replace("ts=1733580000", "ts=1733580001"),
            &HEADER[..HEADER.len() - 1],
            &HEADER.replace("31f", "31x"),
        ] {
            assert_eq!(v(&s, bad, TS), INVALID, "{bad}");
        }
        assert_eq!(verify(&s, Some(b"ts=1;h1=\xff"), BODY, TS), INVALID);
    }

    #[test]
    fn paddle_rotation() {
        assert_eq!(v(&set(&format!("{OTHER},{SECRET}")), HEADER, TS), Ok(()));
        let by_other = sign(OTHER.as_bytes(), TS, BODY);
        assert_eq!(v(&set(&format!("{SECRET},{OTHER}")), &by_other, TS), Ok(()));
        assert_eq!(v(&set("a,b"), HEADER, TS), INVALID);
    }

    #[test]
    fn paddle_window_is_five_seconds_either_way() {
        let s = set(SECRET);
        assert_eq!(v(&s, HEADER, TS + 5), Ok(()));
        assert_eq!(v(&s, HEADER, TS - 5), Ok(()));
        assert_eq!(v(&s, HEADER, TS + 6), STALE);
        assert_eq!(v(&s, HEADER, TS - 6), STALE);
        assert_eq!(v(&set("guess"), HEADER, TS + 600), INVALID);
    }

    #[test]
    fn classify_reads_event_type_and_id() {
        let spec = ProbeSpec::new(Paddle.probes(), None);
        let sample: serde_json::Value = serde_json::from_str(Paddle.sample()).unwrap();
        let c = Paddle
            .classify(&HeaderMap::new(), &spec.read_value(&sample))
            .unwrap();
        assert_eq!(c.event_type, "transaction.completed");
        assert_eq!(c.action.as_deref(), Some("completed"));
        assert_eq!(
            c.delivery_id.as_deref(),
            Some("evt_01hv8x2acma2gz7he6kn5ps0zy")
        );
        assert!(
            Paddle
                .classify(
                    &HeaderMap::new(),
                    &spec.read_value(&json!({"event_id": "evt_1"}))
                )
                .is_err()
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn prop_paddle(
            secret in "[A-Za-z0-9_]{1,64}",
            body in proptest::collection::vec(any::<u8>(), 0..256),
            ts in 0i64..10_000_000_000,
            skew in -5i64..=5,
        ) {
            let s = set(&secret);
            let header = sign(secret.as_bytes(), ts, &body);
            prop_assert_eq!(verify(&s, Some(header.as_bytes()), &body, ts + skew), Ok(()));
            prop_assert_eq!(
                verify(&s, Some(header.as_bytes()), &body, ts + 6),
                Err(VerifyError::StaleTimestamp)
            );
        }
    }
}
