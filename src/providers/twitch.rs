//! Twitch EventSub (webhook transport): `Twitch-Eventsub-Message-Signature: sha256=<hex
//! HMAC-SHA256(secret, message id + timestamp + body)>` with `Twitch-Eventsub-Message-Id` and
//! `Twitch-Eventsub-Message-Timestamp` (RFC 3339, e.g. `2019-11-16T10:11:12.634234626Z`) within
//! 10 minutes, as Twitch documents
//! (<https://dev.twitch.tv/docs/eventsub/handling-webhook-events/>).
//!
//! `Twitch-Eventsub-Message-Type` says what a request is: `webhook_callback_verification` is
//! answered with the body's `challenge` as `text/plain` and not stored (the handshake; it is
//! signed like any other message); `notification` is an event whose type is the subscription
//! type (`Twitch-Eventsub-Subscription-Type`, else `subscription.type` in the body);
//! `revocation` is stored as an event of type `revocation` (action: the subscription type) so
//! that rules can alert on a subscription Twitch dropped. The delivery id is the message id,
//! which Twitch keeps on redeliveries. The secret is the one given when the subscription was
//! created (10 to 100 ASCII characters).

use http::HeaderMap;

use super::signature::{VerifyError, ct_eq, decode_hex_mac, hex_signature, within_window};
use super::{
    Builtin, Decoded, Handshake, Outgoing, Provider, Request, SecretSet, Secrets, SendOptions,
    SignError, header_str, hmac_keys,
};
use crate::event::{BodyError, Classified, Field, Fields, Probe};

/// Replay window of Twitch messages, in seconds (inclusive): "older than 10 minutes".
pub const WINDOW_SECS: u64 = 600;

pub struct Twitch;

const CHALLENGE: Field = Field::new(0);
const SUBSCRIPTION_TYPE: Field = Field::new(1);
const SIGNATURE: &str = "twitch-eventsub-message-signature";
const MESSAGE_ID: &str = "twitch-eventsub-message-id";
const TIMESTAMP: &str = "twitch-eventsub-message-timestamp";
const MESSAGE_TYPE: &str = "twitch-eventsub-message-type";
const SUB_TYPE: &str = "twitch-eventsub-subscription-type";

impl Provider for Twitch {
    fn name(&self) -> &'static str {
        "twitch"
    }

    fn builtin(&self) -> Option<Builtin> {
        Some(Builtin {
            source: "twitch",
            secret_env: &["TWITCH_WEBHOOK_SECRET"],
            identifier: Some("payload.subscription.condition.broadcaster_user_id"),
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
            req.header(MESSAGE_ID),
            req.header(TIMESTAMP),
            req.header(SIGNATURE),
            req.body,
            req.now_ms,
        )
    }

    fn probes(&self) -> &'static [Probe] {
        &[
            (&["challenge"], CHALLENGE),
            (&["subscription", "type"], SUBSCRIPTION_TYPE),
        ]
    }

    /// `webhook_callback_verification`: the challenge, as text.
    fn handshake(&self, body: &Decoded<'_>) -> Result<Option<Handshake>, BodyError> {
        if header_str(body.headers, MESSAGE_TYPE) != Some("webhook_callback_verification") {
            return Ok(None);
        }
        let challenge = body.fields.str(CHALLENGE).ok_or_else(|| {
            BodyError("a Twitch webhook_callback_verification needs a string \"challenge\"".into())
        })?;
        Ok(Some(Handshake::Text(challenge.to_string())))
    }

    fn classify(&self, headers: &HeaderMap, fields: &Fields<'_>) -> Result<Classified, BodyError> {
        let sub_type = header_str(headers, SUB_TYPE).or_else(|| fields.str(SUBSCRIPTION_TYPE));
        let delivery_id = header_str(headers, MESSAGE_ID).map(str::to_string);
        let (event_type, action) = match header_str(headers, MESSAGE_TYPE) {
            Some("notification") | None => (
                sub_type.ok_or_else(|| {
                    BodyError("a Twitch notification needs a subscription type".into())
                })?,
                None,
            ),
            Some("revocation") => ("revocation", sub_type),
            Some(other) => {
                return Err(BodyError(format!(
                    "unknown Twitch-Eventsub-Message-Type \"{}\"",
                    other.chars().take(64).collect::<String>()
                )));
            }
        };
        Ok(Classified {
            event_type: event_type.to_string(),
            action: action.map(str::to_string),
            delivery_id,
        })
    }

    fn compose(&self, out: &mut Outgoing, opts: &SendOptions<'_>) -> Result<(), SignError> {
        out.header(MESSAGE_ID, uuid::Uuid::new_v4().to_string());
        out.header("twitch-eventsub-message-retry", "0");
        out.header(MESSAGE_TYPE, "notification");
        // The subscription's type and version, as the body names them.
        let body = serde_json::from_slice::<serde_json::Value>(&out.body).ok();
        let sub = |key: &str| {
            body.as_ref()
                .and_then(|v| v["subscription"][key].as_str())
                .map(str::to_string)
        };
        let sub_type = opts
            .event
            .map(str::to_string)
            .or_else(|| sub("type"))
            .unwrap_or_else(|| "channel.follow".into());
        out.header(SUB_TYPE, sub_type);
        let version = sub("version").unwrap_or_else(|| "1".into());
        out.header("twitch-eventsub-subscription-version", version);
        Ok(())
    }

    fn sign(&self, out: &mut Outgoing, opts: &SendOptions<'_>) -> Result<(), SignError> {
        let secret = opts.secret()?;
        // The message id is signed: the one composed, or a new one.
        let id = match out.get(MESSAGE_ID) {
            Some(id) => id.to_string(),
            None => {
                let id = uuid::Uuid::new_v4().to_string();
                out.header(MESSAGE_ID, id.clone());
                id
            }
        };
        let ts = format_rfc3339_ms(opts.now_ms);
        out.header(TIMESTAMP, ts.clone());
        out.header(SIGNATURE, sign(secret.as_bytes(), &id, &ts, &out.body));
        Ok(())
    }

    fn sample(&self) -> &'static str {
        include_str!("../../examples/twitch-channel.follow.json")
    }
}

/// The three headers and the body as Twitch signs them; the RFC 3339 timestamp within 10
/// minutes of `now_ms`, checked after the signature.
pub fn verify(
    secrets: &SecretSet,
    id: Option<&[u8]>,
    timestamp: Option<&[u8]>,
    signature: Option<&[u8]>,
    body: &[u8],
    now_ms: i64,
) -> Result<(), VerifyError> {
    let hex = signature
        .map(<[u8]>::trim_ascii)
        .and_then(|s| s.strip_prefix(b"sha256="))
        .ok_or(VerifyError::InvalidSignature)?;
    let mac = decode_hex_mac(hex)?;
    let id = id
        .map(<[u8]>::trim_ascii)
        .filter(|id| !id.is_empty())
        .ok_or(VerifyError::InvalidSignature)?;
    let ts_raw = timestamp
        .map(<[u8]>::trim_ascii)
        .ok_or(VerifyError::InvalidSignature)?;
    let ts_ms = parse_rfc3339_ms(ts_raw).ok_or(VerifyError::InvalidSignature)?;
    if !secrets.any_mac(&[id, ts_raw, body], |tag| ct_eq(tag, &mac)) {
        return Err(VerifyError::InvalidSignature);
    }
    within_window(ts_ms, now_ms, WINDOW_SECS * 1000)
}

/// `sha256=<hex>`, the value of `Twitch-Eventsub-Message-Signature`.
pub fn sign(secret: &[u8], id: &str, timestamp: &str, body: &[u8]) -> String {
    hex_signature(
        "sha256=",
        secret,
        &[id.as_bytes(), timestamp.as_bytes(), body],
    )
}

/// An RFC 3339 date-time (`2019-11-16T10:11:12.634234626Z`, `…+01:00`) in ms since the epoch;
/// fractions beyond ms are dropped. `None` for anything else.
pub fn parse_rfc3339_ms(raw: &[u8]) -> Option<i64> {
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let digits = raw.get(range)?;
        digits.iter().try_fold(0i64, |acc, &b| {
            b.is_ascii_digit().then(|| acc * 10 + i64::from(b - b'0'))
        })
    };
    let sep = |i: usize, c: &[u8]| raw.get(i).is_some_and(|b| c.contains(b));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut i = 19;
    let mut millis = 0i64;
    if raw.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while raw.get(i).is_some_and(u8::is_ascii_digit) {
            if i - start < 3 {
                millis = millis * 10 + i64::from(raw[i] - b'0');
            }
            i += 1;
        }
        let n = i - start;
        if n == 0 {
            return None;
        }
        for _ in n..3 {
            millis *= 10;
        }
    }
    let offset_secs = match raw.get(i..)? {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), rest @ ..] if rest.len() == 5 && rest[2] == b':' => {
            let h = num(i + 1..i + 3)?;
            let m = num(i + 4..i + 6)?;
            if h > 23 || m > 59 {
                return None;
            }
            let off = h * 3600 + m * 60;
            if *sign == b'+' { off } else { -off }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    Some(secs * 1000 + millis)
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` of ms since the epoch.
pub fn format_rfc3339_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::event::ProbeSpec;

    // tests/vectors/twitch.py
    const SECRET: &str = "s3cRe7-twitch-eventsub";
    const ID: &[u8] = b"e76c6bd4-55c9-4987-8304-da1588d8988b";
    const TS: &[u8] = b"2019-11-16T10:11:12.634234626Z";
    const TS_MS: i64 = 1_573_899_072_634;
    const BODY: &[u8] = br#"{"subscription":{"id":"f1c2a387-161a-49f9-a165-0f21d7a4e1c4","type":"channel.follow","version":"2"},"event":{"user_id":"1234"}}"#;
    const SIG: &str = "sha256=14fced8e46682de4c874fcd5567b6ce52a032416cd13df43822080269fa77b0a";
    const INVALID: Result<(), VerifyError> = Err(VerifyError::InvalidSignature);
    const STALE: Result<(), VerifyError> = Err(VerifyError::StaleTimestamp);

    fn set(list: &str) -> SecretSet {
        SecretSet::hmac_from_list(list).unwrap()
    }

    fn v(set: &SecretSet, sig: &[u8], body: &[u8], now: i64) -> Result<(), VerifyError> {
        verify(set, Some(ID), Some(TS), Some(sig), body, now)
    }

    #[test]
    fn twitch_documented_algorithm_vector() {
        let ts = std::str::from_utf8(TS).unwrap();
        let id = std::str::from_utf8(ID).unwrap();
        assert_eq!(sign(SECRET.as_bytes(), id, ts, BODY), SIG);
        assert_eq!(v(&set(SECRET), SIG.as_bytes(), BODY, TS_MS), Ok(()));
    }

    #[test]
    fn twitch_refuses_changed_wrong_missing_and_malformed() {
        let s = set(SECRET);
        let mut changed = BODY.to_vec();
        changed[10] ^= 1;
        assert_eq!(v(&s, SIG.as_bytes(), &changed, TS_MS), INVALID);
        assert_eq!(
            v(&set("another-secret"), SIG.as_bytes(), BODY, TS_MS),
            INVALID
        );
        assert_eq!(
            verify(&s, None, Some(TS), Some(SIG.as_bytes()), BODY, TS_MS),
            INVALID
        );
        assert_eq!(
            verify(&s, Some(ID), None, Some(SIG.as_bytes()), BODY, TS_MS),
            INVALID
        );
        assert_eq!(verify(&s, Some(ID), Some(TS), None, BODY, TS_MS), INVALID);
        assert_eq!(
            verify(
                &s,
                Some(b"other-id"),
                Some(TS),
                Some(SIG.as_bytes()),
                BODY,
                TS_MS
            ),
            INVALID
        );
        for bad in [
            &SIG.as_bytes()[7..],
            b"sha256=".as_slice(),
            b"sha1=14fced8e",
            b"sha256=zz",
            b"\xff\xfe",
        ] {
            assert_eq!(v(&s, bad, BODY, TS_MS), INVALID, "{bad:?}");
        }
        for bad in [
            b"".as_slice(),
            b"1573899072",
            b"2019-11-16 10:11:12",
            b"2019-11-16T10:11:12.Z",
            b"2019-13-16T10:11:12Z",
            b"2019-11-16T10:11:12+0100",
            b"\xff",
        ] {
            assert_eq!(
                verify(&s, Some(ID), Some(bad), Some(SIG.as_bytes()), BODY, TS_MS),
                INVALID,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn twitch_rotation_and_window() {
        let s = set(&format!("old-secret,{SECRET}"));
        assert_eq!(v(&s, SIG.as_bytes(), BODY, TS_MS), Ok(()));
        let w = WINDOW_SECS as i64 * 1000;
        assert_eq!(v(&s, SIG.as_bytes(), BODY, TS_MS + w), Ok(()));
        assert_eq!(v(&s, SIG.as_bytes(), BODY, TS_MS - w), Ok(()));
        assert_eq!(v(&s, SIG.as_bytes(), BODY, TS_MS + w + 1), STALE);
        assert_eq!(v(&s, SIG.as_bytes(), BODY, TS_MS - w - 1), STALE);
        // A forged request never hears that it was stale.
        assert_eq!(v(&set("x"), SIG.as_bytes(), BODY, TS_MS + 10 * w), INVALID);
    }

    #[test]
    fn rfc3339_parses_and_formats() {
        assert_eq!(parse_rfc3339_ms(TS), Some(TS_MS));
        assert_eq!(parse_rfc3339_ms(b"1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_ms(b"2019-11-16T11:11:12.6+01:00"),
            Some(TS_MS - 34)
        );
        assert_eq!(
            parse_rfc3339_ms(b"2000-02-29T00:00:00Z"),
            Some(951_782_400_000)
        );
        for ms in [0, TS_MS, 951_782_400_000, 4_102_444_800_999] {
            let text = format_rfc3339_ms(ms);
            assert_eq!(parse_rfc3339_ms(text.as_bytes()), Some(ms), "{text}");
        }
        assert_eq!(format_rfc3339_ms(TS_MS), "2019-11-16T10:11:12.634Z");
    }

    fn fields(body: &Value) -> Fields<'static> {
        ProbeSpec::new(Twitch.probes(), None).read_value(body)
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn classify_notifications_and_revocations() {
        let body = json!({"subscription": {"type": "channel.follow"}});
        let n = Twitch
            .classify(
                &headers(&[
                    (MESSAGE_TYPE, "notification"),
                    (SUB_TYPE, "channel.follow"),
                    (MESSAGE_ID, "m1"),
                ]),
                &fields(&body),
            )
            .unwrap();
        assert_eq!(
            n,
            Classified {
                event_type: "channel.follow".into(),
                action: None,
                delivery_id: Some("m1".into())
            }
        );
        let r = Twitch
            .classify(
                &headers(&[(MESSAGE_TYPE, "revocation"), (MESSAGE_ID, "m2")]),
                &fields(&body),
            )
            .unwrap();
        assert_eq!(r.event_type, "revocation");
        assert_eq!(r.action.as_deref(), Some("channel.follow"));
        assert!(
            Twitch
                .classify(&headers(&[(MESSAGE_TYPE, "other")]), &fields(&body))
                .is_err()
        );
        assert!(
            Twitch
                .classify(
                    &headers(&[(MESSAGE_TYPE, "notification")]),
                    &fields(&json!({}))
                )
                .is_err()
        );
    }

    #[test]
    fn verification_is_answered_with_the_challenge_as_text() {
        let hs = |h: &HeaderMap, body: &Value| {
            let f = fields(body);
            Twitch.handshake(&Decoded {
                headers: h,
                bytes: b"{}",
                fields: &f,
                payload: None,
            })
        };
        let verification = headers(&[(MESSAGE_TYPE, "webhook_callback_verification")]);
        assert_eq!(
            hs(
                &verification,
                &json!({"challenge": "pogchamp-kappa-360noscope-vohiyo"})
            )
            .unwrap(),
            Some(Handshake::Text("pogchamp-kappa-360noscope-vohiyo".into()))
        );
        assert!(hs(&verification, &json!({"challenge": 1})).is_err());
        assert_eq!(
            hs(
                &headers(&[(MESSAGE_TYPE, "notification")]),
                &json!({"challenge": "c"})
            )
            .unwrap(),
            None
        );
    }
}
