//! Linear: `Linear-Signature: <hex HMAC-SHA256(secret, body)>`, a replay window of 60 s on the
//! `Linear-Timestamp` header or else the body's `webhookTimestamp` (ms), the event type from the
//! body's `type` in snake_case, the delivery id in `Linear-Delivery`.

use http::HeaderMap;
use serde_json::Value;

use super::signature::{
    VerifyError, decode_hex_mac, hex_signature, parse_timestamp, within_window,
};
use super::{
    Builtin, Outgoing, Provider, Request, SecretSet, Secrets, SendOptions, SignError, header_str,
    hmac_keys,
};
use crate::event::{BodyError, Classified, Field, Fields, Probe, snake_case};

/// Replay window of Linear webhooks, in milliseconds (inclusive).
pub const WINDOW_MS: u64 = 60_000;

pub struct Linear;

const TYPE: Field = Field::new(0);
const ACTION: Field = Field::new(1);
const WEBHOOK_TIMESTAMP: Field = Field::new(2);
const SIGNATURE: &str = "linear-signature";

impl Provider for Linear {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn builtin(&self) -> Option<Builtin> {
        Some(Builtin {
            source: "linear",
            secret_env: &["LINEAR_WEBHOOK_SECRET"],
            identifier: Some("payload.organizationId"),
        })
    }

    fn signature_headers(&self) -> &'static [&'static str] {
        &[SIGNATURE]
    }

    fn replay_window(&self) -> Option<std::time::Duration> {
        Some(std::time::Duration::from_millis(WINDOW_MS))
    }

    fn verify(&self, req: &Request<'_>, secrets: Option<&Secrets>) -> Result<(), VerifyError> {
        verify(hmac_keys(secrets)?, req.header(SIGNATURE), req.body)
    }

    fn probes(&self) -> &'static [Probe] {
        &[
            (&["type"], TYPE),
            (&["action"], ACTION),
            (&["webhookTimestamp"], WEBHOOK_TIMESTAMP),
        ]
    }

    /// The replay window: its fallback timestamp lives in the body.
    fn verify_payload(&self, req: &Request<'_>, fields: &Fields<'_>) -> Result<(), VerifyError> {
        check_timestamp(
            req.header("linear-timestamp"),
            fields.i64(WEBHOOK_TIMESTAMP),
            req.now_ms,
        )
    }

    fn classify(&self, headers: &HeaderMap, fields: &Fields<'_>) -> Result<Classified, BodyError> {
        let t = fields
            .str(TYPE)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| BodyError("a Linear webhook needs a string \"type\" field".into()))?;
        Ok(Classified {
            event_type: snake_case(t),
            action: fields.str(ACTION).map(str::to_string),
            delivery_id: header_str(headers, "linear-delivery").map(str::to_string),
        })
    }

    fn compose(&self, out: &mut Outgoing, opts: &SendOptions<'_>) -> Result<(), SignError> {
        // Without a secret there is nothing to send: say so before judging the body.
        opts.secret()?;
        // Linear stamps each send with webhookTimestamp in the body.
        const NOT_OBJECT: &str = "a Linear body must be a JSON object";
        let mut v: Value = serde_json::from_slice(&out.body)
            .map_err(|e| SignError(format!("{NOT_OBJECT}: {e}")))?;
        let Value::Object(m) = &mut v else {
            return Err(SignError(NOT_OBJECT.into()));
        };
        if let Some(t) = opts.event {
            m.insert("type".into(), Value::String(t.into()));
        }
        m.insert("webhookTimestamp".into(), Value::from(opts.now_ms));
        out.body = serde_json::to_vec(&v).map_err(|e| SignError(e.to_string()))?;
        let event_type = v.get("type").and_then(Value::as_str).unwrap_or_default();
        out.header("linear-event", event_type);
        out.header("linear-delivery", uuid::Uuid::new_v4().to_string());
        Ok(())
    }

    fn sign(&self, out: &mut Outgoing, opts: &SendOptions<'_>) -> Result<(), SignError> {
        let signature = sign(opts.secret()?.as_bytes(), &out.body);
        out.header(SIGNATURE, signature);
        Ok(())
    }

    fn sample(&self) -> &'static str {
        include_str!("../../examples/linear-issue.json")
    }
}

/// `Linear-Signature: <hex HMAC-SHA256(secret, body)>`. The replay window is checked separately
/// by [`check_timestamp`], because its fallback timestamp lives in the JSON body that only the
/// caller parses.
pub fn verify(
    secrets: &SecretSet,
    signature: Option<&[u8]>,
    body: &[u8],
) -> Result<(), VerifyError> {
    let hex = signature
        .map(<[u8]>::trim_ascii)
        .ok_or(VerifyError::InvalidSignature)?;
    let mac = decode_hex_mac(hex)?;
    secrets.verify_body(body, &mac)
}

/// The replay window: the `Linear-Timestamp` header (ms since epoch) if present, else the
/// body's `webhookTimestamp` (ms); within 60 s of `now_ms` (inclusive). A header that is present
/// but unparsable does not fall back to the body: the sender said something we cannot trust.
/// Neither at all is not a replay but a request Linear did not send: `MissingTimestamp`.
pub fn check_timestamp(
    header: Option<&[u8]>,
    body_ts_ms: Option<i64>,
    now_ms: i64,
) -> Result<(), VerifyError> {
    let ts = match (header, body_ts_ms) {
        (Some(h), _) => parse_timestamp(h),
        (None, Some(ts)) => Some(ts).filter(|ts| *ts >= 0),
        (None, None) => return Err(VerifyError::MissingTimestamp(MISSING)),
    }
    .ok_or(VerifyError::StaleTimestamp)?;
    within_window(ts, now_ms, WINDOW_MS)
}

/// Where a Linear timestamp is expected, for the error that says it is missing.
pub const MISSING: &str = "send the Linear-Timestamp header or webhookTimestamp in the body";

/// `<hex>`, the value of `Linear-Signature`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    hex_signature("", secret, &[body])
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
    const STALE: Result<(), VerifyError> = Err(VerifyError::StaleTimestamp);

    fn hmac_set(list: &str) -> SecretSet {
        SecretSet::hmac_from_list(list).unwrap()
    }

    #[test]
    fn linear_signature() {
        let set = hmac_set("lin_wh_secret");
        let body = br#"{"type":"Issue","webhookTimestamp":1764170000123}"#;
        let sig = sign(b"lin_wh_secret", body);
        assert_eq!(sig.len(), 64);
        // Same MAC as GitHub's, without the prefix.
        assert_eq!(
            sign(GH_SECRET.as_bytes(), GH_BODY),
            GH_SIG["sha256=".len()..]
        );
        assert_eq!(verify(&set, Some(sig.as_bytes()), body), Ok(()));
        assert_eq!(
            verify(&set, Some(sig.to_uppercase().as_bytes()), body),
            Ok(())
        );
        assert_eq!(verify(&set, None, body), INVALID);
        assert_eq!(verify(&set, Some(b""), body), INVALID);
        assert_eq!(
            verify(&set, Some(format!("sha256={sig}").as_bytes()), body),
            INVALID
        );
        assert_eq!(verify(&set, Some(&sig.as_bytes()[1..]), body), INVALID);
        assert_eq!(verify(&set, Some(b"\xff\xff"), body), INVALID);
        assert_eq!(verify(&set, Some(sig.as_bytes()), b"{}"), INVALID);
        assert_eq!(
            verify(&hmac_set("a, lin_wh_secret"), Some(sig.as_bytes()), body),
            Ok(())
        );
        assert_eq!(
            verify(&hmac_set("a,b"), Some(sig.as_bytes()), body),
            INVALID
        );
    }

    #[test]
    fn linear_timestamp_window() {
        let now = 1_764_170_000_000;
        let h = |ts: i64| ts.to_string();
        assert_eq!(check_timestamp(Some(h(now).as_bytes()), None, now), Ok(()));
        assert_eq!(
            check_timestamp(Some(h(now - 60_000).as_bytes()), None, now),
            Ok(())
        );
        assert_eq!(
            check_timestamp(Some(h(now + 60_000).as_bytes()), None, now),
            Ok(())
        );
        assert_eq!(
            check_timestamp(Some(h(now - 60_001).as_bytes()), None, now),
            STALE
        );
        assert_eq!(
            check_timestamp(Some(h(now + 60_001).as_bytes()), None, now),
            STALE
        );
        // Body fallback, only without a header.
        assert_eq!(check_timestamp(None, Some(now - 60_000), now), Ok(()));
        assert_eq!(check_timestamp(None, Some(now + 60_001), now), STALE);
        assert_eq!(
            check_timestamp(Some(h(now).as_bytes()), Some(0), now),
            Ok(())
        );
        assert_eq!(
            check_timestamp(Some(h(0).as_bytes()), Some(now), now),
            STALE
        );
        // Nothing, unparsable, negative, absurd.
        assert_eq!(
            check_timestamp(None, None, now),
            Err(VerifyError::MissingTimestamp(MISSING))
        );
        assert_eq!(check_timestamp(Some(b""), Some(now), now), STALE);
        assert_eq!(check_timestamp(Some(b"soon"), None, now), STALE);
        assert_eq!(check_timestamp(Some(b"-1"), None, now), STALE);
        assert_eq!(check_timestamp(Some(b"+1764170000000"), None, now), STALE);
        assert_eq!(check_timestamp(Some(b"1.5e12"), None, now), STALE);
        assert_eq!(
            check_timestamp(Some(b"99999999999999999999999999"), None, now),
            STALE
        );
        assert_eq!(check_timestamp(None, Some(i64::MIN), now), STALE);
        assert_eq!(check_timestamp(None, Some(-5), 0), STALE);
        assert_eq!(check_timestamp(None, Some(i64::MAX), i64::MIN), STALE);
    }

    #[test]
    fn classify_snake_cases_the_body_type() {
        let spec = ProbeSpec::new(Linear.probes(), None);
        let payload = serde_json::json!({"type": "IssueLabel", "action": "create"});
        let fields = spec.read_value(&payload);
        let text = payload.to_string();
        assert_eq!(
            crate::event::probe_json_object(text.as_bytes(), &spec)
                .unwrap()
                .fields,
            fields
        );
        let mut headers = HeaderMap::new();
        headers.insert("linear-delivery", http::HeaderValue::from_static("L1"));
        let li = Linear.classify(&headers, &fields).unwrap();
        assert_eq!(li.event_type, "issue_label");
        assert_eq!(li.delivery_id.as_deref(), Some("L1"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn prop_linear(
            secret in "[A-Za-z0-9_!@#$%^&*()=+./-]{1,48}",
            other in "[A-Za-z0-9_!@#$%^&*()=+./-]{1,48}",
            body in proptest::collection::vec(any::<u8>(), 0..512),
            flip in any::<prop::sample::Index>(),
            xor in 1u8..,
            now in 0i64..4_000_000_000_000,
            skew in -60_000i64..=60_000,
            beyond in 60_001i64..1_000_000_000,
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
            let ts = now + skew;
            prop_assert_eq!(check_timestamp(Some(ts.to_string().as_bytes()), None, now), Ok(()));
            prop_assert_eq!(check_timestamp(None, Some(ts), now), Ok(()));
            prop_assert_eq!(check_timestamp(None, Some(now + beyond), now), STALE);
            prop_assert_eq!(check_timestamp(None, Some(now - beyond), now), STALE);
        }
    }
}
