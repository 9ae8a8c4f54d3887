//! Zendesk: `X-Zendesk-Webhook-Signature: <base64 HMAC-SHA256(secret, timestamp + body)>` with
//! the timestamp as sent in `X-Zendesk-Webhook-Signature-Timestamp` (RFC 3339,
//! `2024-12-07T14:00:00Z`), the webhook's signing secret used as written. Zendesk publishes no
//! tolerance; the router takes 300 s either way, as for Stripe and Slack.
//!
//! Event-subscription webhooks carry `type` (`zen:event-type:ticket.created`), the event type,
//! whose part after the last dot is the action, and `id`, the delivery id. Trigger and
//! automation webhooks carry the body you wrote: their type is that body's `type` if it has one,
//! else `trigger`, and their delivery id `X-Zendesk-Webhook-Invocation-Id`. The default
//! identifier is the account, `account_id`.
//!
//! Zendesk's current verification page signs `TIMESTAMP + BODY`; an older copy of it wrote
//! `(BODY)(TIMESTAMP)` and its worked example signs body + timestamp. We follow the current
//! page (and what Zendesk sends, as integrations in use verify it); see tests/vectors/zendesk.py.

use base64::Engine as _;
use http::HeaderMap;
use serde_json::Value;

use super::signature::{VerifyError, ct_eq, decode_b64_mac, mac_of, within_window};
use super::stripe::{last_segment, stamp_body};
use super::{
    Builtin, Outgoing, Provider, Request, SecretSet, Secrets, SendOptions, SignError, header_str,
    hmac_keys,
};
use crate::event::{BodyError, Classified, Field, Fields, Probe};

/// Replay window of Zendesk webhooks, in seconds (inclusive): our choice, Zendesk names none.
pub const WINDOW_SECS: u64 = 300;

pub struct Zendesk;

const TYPE: Field = Field::new(0);
const ID: Field = Field::new(1);
const SIGNATURE: &str = "x-zendesk-webhook-signature";
const TIMESTAMP: &str = "x-zendesk-webhook-signature-timestamp";
const INVOCATION_ID: &str = "x-zendesk-webhook-invocation-id";

impl Provider for Zendesk {
    fn name(&self) -> &'static str {
        "zendesk"
    }

    fn builtin(&self) -> Option<Builtin> {
        Some(Builtin {
            source: "zendesk",
            secret_env: &["ZENDESK_WEBHOOK_SECRET"],
            identifier: Some("payload.account_id"),
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
            req.header(TIMESTAMP),
            req.body,
            req.now_ms / 1000,
        )
    }

    fn probes(&self) -> &'static [Probe] {
        &[(&["type"], TYPE), (&["id"], ID)]
    }

    fn classify(&self, headers: &HeaderMap, fields: &Fields<'_>) -> Result<Classified, BodyError> {
        let (event_type, action, delivery_id) = match fields.str(TYPE).filter(|t| !t.is_empty()) {
            Some(t) => (
                t,
                last_segment(t, '.'),
                fields
                    .str(ID)
                    .or_else(|| header_str(headers, INVOCATION_ID)),
            ),
            None => ("trigger", None, header_str(headers, INVOCATION_ID)),
        };
        Ok(Classified {
            event_type: event_type.to_string(),
            action,
            delivery_id: delivery_id.map(str::to_string),
        })
    }

    /// A fresh body `id`, and `--event` as the body's `type`.
    fn compose(&self, out: &mut Outgoing, opts: &SendOptions<'_>) -> Result<(), SignError> {
        out.header("user-agent", "Zendesk Webhook");
        out.header("x-zendesk-account-id", "10001");
        out.header("x-zendesk-webhook-id", "01JEFH5XW8Y9T7B6V4N2M0K8J6");
        out.header(INVOCATION_ID, uuid::Uuid::new_v4().to_string());
        let mut edits = vec![(&["id"][..], Value::from(uuid::Uuid::new_v4().to_string()))];
        if let Some(t) = opts.event {
            edits.push((&["type"][..], Value::from(t)));
        }
        stamp_body(out, &edits)
    }

    fn sign(&self, out: &mut Outgoing, opts: &SendOptions<'_>) -> Result<(), SignError> {
        let secret = opts.secret()?;
        let ts = format_rfc3339(opts.now_ms / 1000)
            .ok_or_else(|| SignError("the clock is out of range".into()))?;
        out.header(SIGNATURE, sign(secret.as_bytes(), &ts, &out.body));
        out.header(TIMESTAMP, ts);
        Ok(())
    }

    fn sample(&self) -> &'static str {
        include_str!("../../examples/zendesk-user.created.json")
    }
}

/// `X-Zendesk-Webhook-Signature`: base64 of some key's HMAC of the timestamp header's bytes,
/// then the body; then the timestamp (RFC 3339) within 300 s of `now_secs`. A missing or
/// unreadable timestamp is `InvalidSignature`.
pub fn verify(
    secrets: &SecretSet,
    signature: Option<&[u8]>,
    timestamp: Option<&[u8]>,
    body: &[u8],
    now_secs: i64,
) -> Result<(), VerifyError> {
    let mac = signature
        .map(<[u8]>::trim_ascii)
        .and_then(decode_b64_mac)
        .ok_or(VerifyError::InvalidSignature)?;
    let ts_raw = timestamp
        .map(<[u8]>::trim_ascii)
        .ok_or(VerifyError::InvalidSignature)?;
    let ts = parse_rfc3339(ts_raw).ok_or(VerifyError::InvalidSignature)?;
    if !secrets.any_mac(&[ts_raw, body], |tag| ct_eq(tag, &mac)) {
        return Err(VerifyError::InvalidSignature);
    }
    within_window(ts, now_secs, WINDOW_SECS)
}

/// The base64 HMAC of `timestamp + body`, the value of `X-Zendesk-Webhook-Signature`.
pub fn sign(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    base64::engine::general_purpose::STANDARD.encode(mac_of(&key, &[timestamp.as_bytes(), body]))
}

/// Seconds since the epoch of an RFC 3339 date-time: `YYYY-MM-DDTHH:MM:SS`, an optional
/// fraction (ignored), then `Z` or `±HH:MM`. `T` and `Z` in either case. `None` for anything
/// else, an impossible date included.
pub fn parse_rfc3339(s: &[u8]) -> Option<i64> {
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let digits = s.get(range)?;
        digits.iter().try_fold(0i64, |acc, &b| {
            b.is_ascii_digit().then(|| acc * 10 + i64::from(b - b'0'))
        })
    };
    let at = |i: usize, want: &[u8]| s.get(i).is_some_and(|b| want.contains(b));
    if !(at(4, b"-") && at(7, b"-") && at(10, b"Tt") && at(13, b":") && at(16, b":")) {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut rest = s.get(19..)?;
    if let Some(frac) = rest.strip_prefix(b".") {
        let n = frac.iter().take_while(|b| b.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        rest = &frac[n..];
    }
    let offset = match rest {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let two = |a: u8, b: u8| -> Option<i64> {
                (a.is_ascii_digit() && b.is_ascii_digit())
                    .then(|| i64::from(a - b'0') * 10 + i64::from(b - b'0'))
            };
            let (h, m) = (two(*h1, *h2)?, two(*m1, *m2)?);
            if h > 23 || m > 59 {
                return None;
            }
            let off = h * 3600 + m * 60;
            if *sign == b'+' { off } else { -off }
        }
        _ => return None,
    };
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    // A leap second (60) is read as the next second's start, as most parsers do.
    if day < 1 || day > days_in_month || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DDTHH:MM:SSZ` of seconds since the epoch, for years 0 to 9999.
pub fn format_rfc3339(secs: i64) -> Option<String> {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // civil_from_days (Howard Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    if !(0..=9999).contains(&year) {
        return None;
    }
    Some(format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    ))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::event::ProbeSpec;

    // tests/vectors/zendesk.py (Zendesk's documented recipe and its test-webhook secret).
    const TEST_SECRET: &str = "dGhpc19zZWNyZXRfaXNfZm9yX3Rlc3Rpbmdfb25seQ==";
    const TS: &str = "2024-12-07T14:00:00Z";
    const TS_SECS: i64 = 1_733_580_000;
    const BODY: &[u8] = br#"{"type":"zen:event-type:user.created","account_id":10001,"id":"c2ce8e4a-5a3b-4f1a-9a67-0b3f4b0f7c11"}"#;
    const SIG: &str = "Ic0Io9G/RdHF2V5pGnp1KbeFKHC7DZZ7hJN4AgiZ6mI=";

    const INVALID: Result<(), VerifyError> = Err(VerifyError::InvalidSignature);
    const STALE: Result<(), VerifyError> = Err(VerifyError::StaleTimestamp);

    fn set(list: &str) -> SecretSet {
        SecretSet::hmac_from_list(list).unwrap()
    }

    fn v(set: &SecretSet, sig: &str, ts: &str, now: i64) -> Result<(), VerifyError> {
        verify(set, Some(sig.as_bytes()), Some(ts.as_bytes()), BODY, now)
    }

    #[test]
    fn zendesk_documented_vector() {
        assert_eq!(sign(TEST_SECRET.as_bytes(), TS, BODY), SIG);
        assert_eq!(v(&set(TEST_SECRET), SIG, TS, TS_SECS), Ok(()));
        // The older page's example signs body + timestamp: not what we verify.
        let old = set("HRkRd4BeOAoUkfZr-mhauJT64rvBASlJRoIyPsd3zeA=");
        assert_eq!(
            verify(
                &old,
                Some(b"tRDSF7URY8BLCDlaBcQ7FHu051Zk+aAB0NKMP53teMw="),
                Some(b"2021-07-25T10:00:00Z"),
                br#"{"say": "hello"}"#,
                1_627_207_200
            ),
            INVALID
        );
    }

    #[test]
    fn zendesk_rejects_missing_malformed_and_wrong() {
        let s = set(TEST_SECRET);
        assert_eq!(
            verify(&s, None, Some(TS.as_bytes()), BODY, TS_SECS),
            INVALID
        );
        assert_eq!(
            verify(&s, Some(SIG.as_bytes()), None, BODY, TS_SECS),
            INVALID
        );
        assert_eq!(v(&s, "", TS, TS_SECS), INVALID);
        assert_eq!(v(&s, "%%%", TS, TS_SECS), INVALID);
        assert_eq!(v(&s, &SIG[..20], TS, TS_SECS), INVALID);
        for bad_ts in [
            "",
            "1733580000",
            "2024-12-07 14:00:00Z",
            "2024-12-07T14:00:00",
            "2024-13-07T14:00:00Z",
        ] {
            assert_eq!(v(&s, SIG, bad_ts, TS_SECS), INVALID, "{bad_ts}");
        }
        // The same instant written otherwise is not what was signed.
        assert_eq!(v(&s, SIG, "2024-12-07T15:00:00+01:00", TS_SECS), INVALID);
        let mut body = BODY.to_vec();
        body[2] ^= 1;
        assert_eq!(
            verify(
                &s,
                Some(SIG.as_bytes()),
                Some(TS.as_bytes()),
                &body,
                TS_SECS
            ),
            INVALID
        );
        assert_eq!(v(&set("wrong"), SIG, TS, TS_SECS), INVALID);
    }

    #[test]
    fn zendesk_rotation_and_window() {
        assert_eq!(
            v(&set(&format!("old,{TEST_SECRET}")), SIG, TS, TS_SECS),
            Ok(())
        );
        let s = set(TEST_SECRET);
        assert_eq!(v(&s, SIG, TS, TS_SECS + 300), Ok(()));
        assert_eq!(v(&s, SIG, TS, TS_SECS - 300), Ok(()));
        assert_eq!(v(&s, SIG, TS, TS_SECS + 301), STALE);
        assert_eq!(v(&s, SIG, TS, TS_SECS - 301), STALE);
        assert_eq!(v(&set("guess"), SIG, TS, TS_SECS + 301), INVALID);
    }

    #[test]
    fn rfc3339_parses_and_formats() {
        assert_eq!(parse_rfc3339(b"1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339(TS.as_bytes()), Some(TS_SECS));
        assert_eq!(parse_rfc3339(b"2024-12-07t14:00:00.123456z"), Some(TS_SECS));
        assert_eq!(parse_rfc3339(b"2024-12-07T15:30:00+01:30"), Some(TS_SECS));
        assert_eq!(parse_rfc3339(b"2024-12-07T09:00:00-05:00"), Some(TS_SECS));
        assert_eq!(parse_rfc3339(b"2024-02-29T00:00:00Z"), Some(1_709_164_800));
        for bad in [
            b"2023-02-29T00:00:00Z".as_slice(),
            b"2024-12-07T24:00:00Z",
            b"2024-12-07T14:00:00.Z",
            b"2024-12-07T14:00:00+0100",
            b"2024-12-07T14:00:00+24:00",
            b"+024-12-07T14:00:00Z",
            b"2024-12-07T14:00:00Z ",
            b"\xff",
            b"",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad:?}");
        }
        assert_eq!(format_rfc3339(TS_SECS).as_deref(), Some(TS));
        assert_eq!(format_rfc3339(0).as_deref(), Some("1970-01-01T00:00:00Z"));
        assert_eq!(format_rfc3339(i64::MAX), None);
    }

    fn hdrs(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, http::HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn classify_events_and_triggers() {
        let spec = ProbeSpec::new(Zendesk.probes(), None);
        let sample: serde_json::Value = serde_json::from_str(Zendesk.sample()).unwrap();
        let inv = hdrs(&[(INVOCATION_ID, "inv-1")]);
        let c = Zendesk.classify(&inv, &spec.read_value(&sample)).unwrap();
        assert_eq!(c.event_type, "zen:event-type:user.created");
        assert_eq!(c.action.as_deref(), Some("created"));
        assert_eq!(
            c.delivery_id.as_deref(),
            Some("c2ce8e4a-5a3b-4f1a-9a67-0b3f4b0f7c11")
        );
        let trigger = Zendesk
            .classify(&inv, &spec.read_value(&json!({"ticket_id": "35436"})))
            .unwrap();
        assert_eq!(trigger.event_type, "trigger");
        assert_eq!(trigger.action, None);
        assert_eq!(trigger.delivery_id.as_deref(), Some("inv-1"));
        let custom = Zendesk
            .classify(
                &HeaderMap::new(),
                &spec.read_value(&json!({"type": "escalation"})),
            )
            .unwrap();
        assert_eq!(
            (custom.event_type.as_str(), custom.action),
            ("escalation", None)
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn prop_rfc3339_round_trips(secs in 0i64..253_402_300_799) {
            let text = format_rfc3339(secs).unwrap();
            prop_assert_eq!(parse_rfc3339(text.as_bytes()), Some(secs));
        }

        #[test]
        fn prop_rfc3339_never_panics(s in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = parse_rfc3339(&s);
        }

        #[test]
        fn prop_zendesk(
            secret in "[A-Za-z0-9_]{1,48}",
            body in proptest::collection::vec(any::<u8>(), 0..256),
            secs in 0i64..253_402_300_000,
        ) {
            let ts = format_rfc3339(secs).unwrap();
            let sig = sign(secret.as_bytes(), &ts, &body);
            let s = set(&secret);
            prop_assert_eq!(verify(&s, Some(sig.as_bytes()), Some(ts.as_bytes()), &body, secs), Ok(()));
        }
    }
}
