//! Calendly: `Calendly-Webhook-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(signing key,
//! t + "." + body)>`, with `t` within 180 s of now (Calendly's own example refuses a signature
//! more than three minutes old); the body's `event` (`invitee.created`, `invitee.canceled`,
//! `invitee_no_show.created`, `routing_form_submission.created`, …) as the event type.
//!
//! Calendly sends no delivery id. The delivery id is made of what identifies one event:
//! `<event> <created_at> <payload.uri>` (the event, when it happened, and the resource it
//! happened to), present only when all three are; a retry carries the same body, so it is
//! deduplicated, while two events about one resource (an event type updated twice) differ by
//! `created_at`. Several `v1` entries are accepted (any may match); entries of other versions
//! are ignored.

use http::HeaderMap;

use super::signature::{
    VerifyError, ct_eq, decode_hex_mac, format_i64, hex_signature, parse_timestamp, within_window,
};
use super::{
    Builtin, Outgoing, Provider, Request, SecretSet, Secrets, SendOptions, SignError, hmac_keys,
};
use crate::event::{BodyError, Classified, Field, Fields, Probe};

/// Replay window of Calendly webhooks, in seconds (inclusive).
pub const WINDOW_SECS: u64 = 180;
/// More `v1` entries than this in one header are not looked at.
const MAX_SIGNATURES: usize = 8;

pub struct Calendly;

const EVENT: Field = Field::new(0);
const CREATED_AT: Field = Field::new(1);
const URI: Field = Field::new(2);
const SIGNATURE: &str = "calendly-webhook-signature";

impl Provider for Calendly {
    fn name(&self) -> &'static str {
        "calendly"
    }

    fn builtin(&self) -> Option<Builtin> {
        Some(Builtin {
            source: "calendly",
            secret_env: &["CALENDLY_WEBHOOK_SECRET"],
            identifier: Some("payload.created_by"),
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
        &[
            (&["event"], EVENT),
            (&["created_at"], CREATED_AT),
            (&["payload", "uri"], URI),
        ]
    }

    fn classify(&self, _: &HeaderMap, fields: &Fields<'_>) -> Result<Classified, BodyError> {
        let event = fields
            .str(EVENT)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| BodyError("a Calendly webhook needs a string \"event\" field".into()))?;
        let delivery_id = match (fields.str(CREATED_AT), fields.str(URI)) {
            (Some(at), Some(uri)) if !at.is_empty() && !uri.is_empty() => {
                Some(format!("{event} {at} {uri}"))
            }
            _ => None,
        };
        Ok(Classified {
            event_type: event.to_string(),
            action: None,
            delivery_id,
        })
    }

    fn compose(&self, out: &mut Outgoing, opts: &SendOptions<'_>) -> Result<(), SignError> {
        if let Some(event) = opts.event {
            out.set_json_str(&["event"], event)?;
        }
        Ok(())
    }

    fn sign(&self, out: &mut Outgoing, opts: &SendOptions<'_>) -> Result<(), SignError> {
        let header = sign(opts.secret()?.as_bytes(), opts.now_ms / 1000, &out.body);
        out.header(SIGNATURE, header);
        Ok(())
    }

    fn sample(&self) -> &'static str {
        include_str!("../../examples/calendly-invitee.json")
    }
}

/// `Calendly-Webhook-Signature: t=<ts>,v1=<hex>[,v1=<hex>…]` with `t` within 180 s of
/// `now_secs`; the window is checked after the signature, so only a genuine request learns it
/// was stale. Whitespace around entries is ignored; a header without `t` or without a `v1`, or
/// with a malformed one, is invalid.
pub fn verify(
    secrets: &SecretSet,
    header: Option<&[u8]>,
    body: &[u8],
    now_secs: i64,
) -> Result<(), VerifyError> {
    let header = header.ok_or(VerifyError::InvalidSignature)?;
    let mut ts_raw: Option<&[u8]> = None;
    let mut macs = Vec::new();
    for entry in header.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
        if let Some(t) = entry.strip_prefix(b"t=") {
            if ts_raw.is_some() {
                return Err(VerifyError::InvalidSignature);
            }
            ts_raw = Some(t);
        } else if let Some(hex) = entry.strip_prefix(b"v1=")
            && macs.len() < MAX_SIGNATURES
        {
            macs.push(decode_hex_mac(hex)?);
        }
    }
    let ts_raw = ts_raw.ok_or(VerifyError::InvalidSignature)?;
    let ts = parse_timestamp(ts_raw).ok_or(VerifyError::InvalidSignature)?;
    if macs.is_empty() {
        return Err(VerifyError::InvalidSignature);
    }
    // The digits as sent are what Calendly signed.
    let signed = secrets.any_mac(&[ts_raw, b".", body], |tag| {
        macs.iter().any(|mac| ct_eq(tag, mac))
    });
    if !signed {
        return Err(VerifyError::InvalidSignature);
    }
    within_window(ts, now_secs, WINDOW_SECS)
}

/// `t=<timestamp>,v1=<hex>`, the value of `Calendly-Webhook-Signature`.
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

    // tests/vectors/calendly.py (HMAC-SHA256 of "t.body", as Calendly documents it).
    const CALENDLY_KEY: &str = "calendly-signing-key-5f4e3d2c1b0a";
    const CALENDLY_TS: i64 = 1764170000;
    const CALENDLY_BODY: &[u8] = br#"{"event":"invitee.created","created_at":"2025-11-26T15:13:20.000000Z","created_by":"https://api.calendly.com/users/AAAAAAAAAAAAAAAA","payload":{"uri":"https://api.calendly.com/scheduled_events/GBGBDCAADAEDCRZ2/invitees/AAAAAAAAAAAAAAAA"}}"#;
    const CALENDLY_HEADER: &str =
        "t=1764170000,v1=bd26cca0a5d2b72140db21c187c31cccbe5807396ef805c9bf19c30bcff2ae05";
    const INVALID: Result<(), VerifyError> = Err(VerifyError::InvalidSignature);
    const STALE: Result<(), VerifyError> = Err(VerifyError::StaleTimestamp);

    fn set(list: &str) -> SecretSet {
        SecretSet::hmac_from_list(list).unwrap()
    }

    fn at(set: &SecretSet, header: &str, now: i64) -> Result<(), VerifyError> {
        verify(set, Some(header.as_bytes()), CALENDLY_BODY, now)
    }

    #[test]
    fn calendly_vector() {
        assert_eq!(
            sign(CALENDLY_KEY.as_bytes(), CALENDLY_TS, CALENDLY_BODY),
            CALENDLY_HEADER
        );
        assert_eq!(at(&set(CALENDLY_KEY), CALENDLY_HEADER, CALENDLY_TS), Ok(()));
        assert_eq!(
            Calendly.replay_window(),
            Some(std::time::Duration::from_secs(180))
        );
    }

    #[test]
    fn calendly_window_is_inclusive_and_checked_after_the_signature() {
        let s = set(CALENDLY_KEY);
        assert_eq!(at(&s, CALENDLY_HEADER, CALENDLY_TS + 180), Ok(()));
        assert_eq!(at(&s, CALENDLY_HEADER, CALENDLY_TS - 180), Ok(()));
        assert_eq!(at(&s, CALENDLY_HEADER, CALENDLY_TS + 181), STALE);
        assert_eq!(at(&s, CALENDLY_HEADER, CALENDLY_TS - 181), STALE);
        assert_eq!(
            at(&set("forger"), CALENDLY_HEADER, CALENDLY_TS + 1000),
            INVALID
        );
    }

    #[test]
    fn calendly_refuses_changed_wrong_missing_and_malformed() {
        let s = set(CALENDLY_KEY);
        let sig = &CALENDLY_HEADER["t=1764170000,".len()..];
        let mut body = CALENDLY_BODY.to_vec();
        body[5] ^= 1;
        assert_eq!(
            verify(&s, Some(CALENDLY_HEADER.as_bytes()), &body, CALENDLY_TS),
            INVALID
        );
        assert_eq!(at(&set("other-key"), CALENDLY_HEADER, CALENDLY_TS), INVALID);
        assert_eq!(verify(&s, None, CALENDLY_BODY, CALENDLY_TS), INVALID);
        for bad in [
            String::new(),
            sig.to_string(),
            "t=1764170000".to_string(),
            format!("t=1764170001,{sig}"),
            format!("t=,{sig}"),
            format!("t=-1764170000,{sig}"),
            format!("t=1764170000,t=1764170000,{sig}"),
            format!("t=1764170000,{}", &sig[..sig.len() - 1]),
            format!("t=1764170000,v1=zz{}", &sig[5..]),
            format!("t=1764170000,v0={}", &sig[3..]),
            format!("ts=1764170000,{sig}"),
        ] {
            assert_eq!(at(&s, &bad, CALENDLY_TS), INVALID, "{bad}");
        }
    }

    #[test]
    fn calendly_takes_several_v1_and_spaces_and_rotation() {
        let s = set(CALENDLY_KEY);
        let sig = &CALENDLY_HEADER["t=1764170000,".len()..];
        let decoy = format!("v1={}", "0".repeat(64));
        assert_eq!(
            at(
                &s,
                &format!("t=1764170000, {decoy}, {sig}, v2=xyz"),
                CALENDLY_TS
            ),
            Ok(())
        );
        assert_eq!(at(&s, &format!("{sig},t=1764170000"), CALENDLY_TS), Ok(()));
        let both = set(&format!("older,{CALENDLY_KEY}"));
        assert_eq!(at(&both, CALENDLY_HEADER, CALENDLY_TS), Ok(()));
        let by_older = sign(b"older", CALENDLY_TS, CALENDLY_BODY);
        assert_eq!(at(&both, &by_older, CALENDLY_TS), Ok(()));
        assert_eq!(at(&s, &by_older, CALENDLY_TS), INVALID);
    }

    #[test]
    fn classify_reads_event_and_builds_the_delivery_id() {
        let spec = ProbeSpec::new(Calendly.probes(), None);
        let fields = crate::event::probe_json_object(Calendly.sample().as_bytes(), &spec)
            .unwrap()
            .fields;
        let c = Calendly.classify(&HeaderMap::new(), &fields).unwrap();
        assert_eq!(c.event_type, "invitee.created");
        assert_eq!(c.action, None);
        assert_eq!(
            c.delivery_id.as_deref(),
            Some(
                "invitee.created 2025-11-26T14:58:20.000000Z https://api.calendly.com/scheduled_events/GBGBDCAADAEDCRZ2/invitees/AAAAAAAAAAAAAAAA"
            )
        );
        let no_uri = spec.read_value(&json!({"event": "invitee.canceled", "created_at": "x"}));
        let c = Calendly.classify(&HeaderMap::new(), &no_uri).unwrap();
        assert_eq!(
            (c.event_type.as_str(), c.delivery_id),
            ("invitee.canceled", None)
        );
        assert!(
            Calendly
                .classify(&HeaderMap::new(), &Fields::default())
                .is_err()
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn prop_calendly(
            key in "[A-Za-z0-9_-]{1,40}",
            body in proptest::collection::vec(any::<u8>(), 0..256),
            ts in 0i64..10_000_000_000,
            skew in -180i64..=180,
            beyond in 181i64..100_000,
        ) {
            let s = set(&key);
            let header = sign(key.as_bytes(), ts, &body);
            prop_assert_eq!(verify(&s, Some(header.as_bytes()), &body, ts + skew), Ok(()));
            prop_assert_eq!(verify(&s, Some(header.as_bytes()), &body, ts + beyond), STALE);
            let mut other = body.clone();
            other.push(b'x');
            prop_assert_eq!(verify(&s, Some(header.as_bytes()), &other, ts), INVALID);
        }
    }
}
