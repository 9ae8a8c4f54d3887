//! Slack: `X-Slack-Signature: v0=<hex HMAC-SHA256(secret, "v0:" + ts + ":" + body)>` with
//! `X-Slack-Request-Timestamp` within 300 s; the `url_verification` handshake; Events API
//! envelopes, interactivity payloads (a form's `payload` field) and slash commands (plain form
//! fields).

use http::HeaderMap;
use serde_json::{Value, json};

use super::signature::{
    VerifyError, ct_eq, decode_hex_mac, format_i64, hex_signature, parse_timestamp, within_window,
};
use super::{
    Builtin, Decoded, Handshake, Outgoing, Provider, Request, SecretSet, Secrets, SendOptions,
    SignError, hmac_keys,
};
use crate::event::{BodyError, Classified, Field, Fields, Probe, parse_json_object};

/// Replay window of Slack requests, in seconds (inclusive).
pub const WINDOW_SECS: u64 = 300;

pub struct Slack;

const TYPE: Field = Field::new(0);
const EVENT_ID: Field = Field::new(1);
const COMMAND: Field = Field::new(2);
const EVENT_TYPE: Field = Field::new(3);
const EVENT_SUBTYPE: Field = Field::new(4);
const SIGNATURE: &str = "x-slack-signature";
const TIMESTAMP: &str = "x-slack-request-timestamp";

impl Provider for Slack {
    fn name(&self) -> &'static str {
        "slack"
    }

    fn builtin(&self) -> Option<Builtin> {
        Some(Builtin {
            source: "slack",
            // Slack calls it the signing secret.
            secret_env: &["SLACK_WEBHOOK_SECRET", "SLACK_SIGNING_SECRET"],
            identifier: Some("payload.team_id"),
        })
    }

    /// Interactivity payloads (`payload=<json>`) have no `team_id`, only `team.id`.
    fn identifier_alternate(&self) -> Option<&'static str> {
        Some("payload.team.id")
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
        &[
            (&["type"], TYPE),
            (&["event_id"], EVENT_ID),
            (&["command"], COMMAND),
            (&["event", "type"], EVENT_TYPE),
            (&["event", "subtype"], EVENT_SUBTYPE),
        ]
    }

    /// `url_verification`: answer `{"challenge": …}` and store nothing.
    fn handshake(&self, body: &Decoded<'_>) -> Result<Option<Handshake>, BodyError> {
        if body.fields.str(TYPE) != Some("url_verification") {
            return Ok(None);
        }
        // Rare, and the challenge may be any JSON: parse the whole payload for it.
        let parsed;
        let payload = match body.payload {
            Some(p) => p,
            None => {
                parsed = parse_json_object(body.bytes)?;
                &parsed
            }
        };
        let challenge = payload.get("challenge").cloned().unwrap_or(Value::Null);
        Ok(Some(Handshake::Json(json!({ "challenge": challenge }))))
    }

    fn classify(&self, _: &HeaderMap, fields: &Fields<'_>) -> Result<Classified, BodyError> {
        let delivery_id = fields.str(EVENT_ID).map(str::to_string);
        if let Some(cmd) = fields.str(COMMAND) {
            // Slash commands arrive as plain form fields.
            return Ok(Classified {
                event_type: "slash_command".into(),
                action: Some(cmd.to_string()),
                delivery_id,
            });
        }
        let outer = fields.str(TYPE).unwrap_or("");
        let (event_type, action) = if outer == "event_callback" {
            let t = fields
                .str(EVENT_TYPE)
                .ok_or_else(|| BodyError("a Slack event_callback needs event.type".into()))?;
            (t, fields.str(EVENT_SUBTYPE))
        } else if !outer.is_empty() {
            // Interactivity payloads (block_actions, view_submission, …) and other envelopes.
            (outer, None)
        } else {
            return Err(BodyError(
                "a Slack webhook needs a \"type\" or a \"command\"".into(),
            ));
        };
        Ok(Classified {
            event_type: event_type.to_string(),
            action: action.map(str::to_string),
            delivery_id,
        })
    }

    fn sign(&self, out: &mut Outgoing, opts: &SendOptions<'_>) -> Result<(), SignError> {
        let secret = opts.secret()?;
        let ts = opts.now_ms / 1000;
        out.header(TIMESTAMP, ts.to_string());
        out.header(SIGNATURE, sign(secret.as_bytes(), ts, &out.body));
        Ok(())
    }

    fn sample(&self) -> &'static str {
        include_str!("../../examples/slack-message.json")
    }
}

/// `X-Slack-Signature: v0=<hex HMAC-SHA256(secret, "v0:" + ts + ":" + body)>` with
/// `X-Slack-Request-Timestamp` (seconds) within 300 s of `now_secs`. The signature is checked
/// before the window so that only a genuine (if replayed) request can learn it was stale.
pub fn verify(
    secrets: &SecretSet,
    signature: Option<&[u8]>,
    timestamp: Option<&[u8]>,
    body: &[u8],
    now_secs: i64,
) -> Result<(), VerifyError> {
    let hex = signature
        .map(<[u8]>::trim_ascii)
        .and_then(|s| s.strip_prefix(b"v0="))
        .ok_or(VerifyError::InvalidSignature)?;
    let mac = decode_hex_mac(hex)?;
    let ts_raw = timestamp
        .map(<[u8]>::trim_ascii)
        .ok_or(VerifyError::InvalidSignature)?;
    let ts = parse_timestamp(ts_raw).ok_or(VerifyError::InvalidSignature)?;

    // The raw header bytes are what Slack signed (not a re-formatted number).
    if !secrets.any_mac(&[b"v0:", ts_raw, b":", body], |tag| ct_eq(tag, &mac)) {
        return Err(VerifyError::InvalidSignature);
    }
    within_window(ts, now_secs, WINDOW_SECS)
}

/// `v0=<hex>`, the value of `X-Slack-Signature` for a request sent with
/// `X-Slack-Request-Timestamp: <timestamp>`.
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut ts_buf = [0u8; 20];
    let ts = format_i64(timestamp, &mut ts_buf);
    hex_signature("v0=", secret, &[b"v0:", ts, b":", body])
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::event::{BodyKind, FormBody, ProbeSpec, probe_body};

    const SLACK_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
    const SLACK_TS: i64 = 1531420618;
    const SLACK_BODY: &[u8] = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    const SLACK_SIG: &str = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";
    const INVALID: Result<(), VerifyError> = Err(VerifyError::InvalidSignature);
    const STALE: Result<(), VerifyError> = Err(VerifyError::StaleTimestamp);

    fn hmac_set(list: &str) -> SecretSet {
        SecretSet::hmac_from_list(list).unwrap()
    }

    fn slack(set: &SecretSet, sig: &[u8], ts: &[u8], now: i64) -> Result<(), VerifyError> {
        verify(set, Some(sig), Some(ts), SLACK_BODY, now)
    }

    #[test]
    fn slack_published_vector() {
        assert_eq!(
            sign(SLACK_SECRET.as_bytes(), SLACK_TS, SLACK_BODY),
            SLACK_SIG
        );
        assert_eq!(
            slack(
                &hmac_set(SLACK_SECRET),
                SLACK_SIG.as_bytes(),
                b"1531420618",
                SLACK_TS
            ),
            Ok(())
        );
    }

    #[test]
    fn slack_window_is_inclusive_and_checked_after_the_signature() {
        let set = hmac_set(SLACK_SECRET);
        let ok = |now| slack(&set, SLACK_SIG.as_bytes(), b"1531420618", now);
        assert_eq!(ok(SLACK_TS + 300), Ok(()));
        assert_eq!(ok(SLACK_TS - 300), Ok(()));
        assert_eq!(ok(SLACK_TS + 301), STALE);
        assert_eq!(ok(SLACK_TS - 301), STALE);
        // A forged request never hears that its timestamp was stale.
        let forged = sign(b"guess", SLACK_TS, SLACK_BODY);
        assert_eq!(
            slack(&set, forged.as_bytes(), b"1531420618", SLACK_TS + 10_000),
            INVALID
        );
    }

    #[test]
    fn slack_rejects_missing_malformed_and_wrong() {
        let set = hmac_set(SLACK_SECRET);
        let ts = b"1531420618".as_slice();
        assert_eq!(verify(&set, None, Some(ts), SLACK_BODY, SLACK_TS), INVALID);
        assert_eq!(
            verify(&set, Some(SLACK_SIG.as_bytes()), None, SLACK_BODY, SLACK_TS),
            INVALID
        );
        assert_eq!(slack(&set, b"", ts, SLACK_TS), INVALID);
        assert_eq!(slack(&set, b"v0=", ts, SLACK_TS), INVALID);
        assert_eq!(
            slack(&set, &SLACK_SIG.as_bytes()[3..], ts, SLACK_TS),
            INVALID
        );
        assert_eq!(
            slack(
                &set,
                SLACK_SIG.replace("v0=", "v1=").as_bytes(),
                ts,
                SLACK_TS
            ),
            INVALID
        );
        assert_eq!(
            slack(&set, &SLACK_SIG.as_bytes()[..66], ts, SLACK_TS),
            INVALID
        );
        assert_eq!(slack(&set, b"v0=\xff\xfe", ts, SLACK_TS), INVALID);
        // Timestamps: empty, non-numeric, negative, signed, overflowing, non-UTF-8.
        for bad in [
            b"".as_slice(),
            b"abc",
            b"-1531420618",
            b"+1531420618",
            b"1531420618.0",
            b"99999999999999999999",
            b"\xff1531420618",
        ] {
            assert_eq!(
                slack(&set, SLACK_SIG.as_bytes(), bad, SLACK_TS),
                INVALID,
                "{bad:?}"
            );
        }
        // Timestamp other than the signed one, body changed, wrong secret.
        assert_eq!(
            slack(&set, SLACK_SIG.as_bytes(), b"1531420619", SLACK_TS),
            INVALID
        );
        assert_eq!(
            verify(
                &set,
                Some(SLACK_SIG.as_bytes()),
                Some(ts),
                b"token=x",
                SLACK_TS
            ),
            INVALID
        );
        assert_eq!(
            slack(&hmac_set("nope"), SLACK_SIG.as_bytes(), ts, SLACK_TS),
            INVALID
        );
    }

    #[test]
    fn slack_uppercase_hex_and_rotation() {
        let upper = format!("v0={}", SLACK_SIG[3..].to_uppercase());
        let set = hmac_set(&format!("old-secret,{SLACK_SECRET}"));
        assert_eq!(
            slack(&set, upper.as_bytes(), b"1531420618", SLACK_TS),
            Ok(())
        );
        assert_eq!(
            slack(
                &hmac_set("a,b"),
                SLACK_SIG.as_bytes(),
                b"1531420618",
                SLACK_TS
            ),
            INVALID
        );
    }

    /// A payload's fields as ingest probes them (through the JSON text).
    fn probed(v: &Value) -> Fields<'static> {
        let spec = ProbeSpec::new(Slack.probes(), None);
        let text = v.to_string();
        let p = crate::event::probe_json_object(text.as_bytes(), &spec).unwrap();
        assert_eq!(p.fields, spec.read_value(v));
        spec.read_value(v)
    }

    #[test]
    fn classify_events_interactivity_and_commands() {
        let sl = Slack
            .classify(
                &HeaderMap::new(),
                &probed(&json!({"type": "event_callback", "event_id": "Ev1", "event": {"type": "message", "subtype": "bot_message"}})),
            )
            .unwrap();
        assert_eq!(
            sl,
            Classified {
                event_type: "message".into(),
                action: Some("bot_message".into()),
                delivery_id: Some("Ev1".into())
            }
        );
        let cmd = Slack
            .classify(
                &HeaderMap::new(),
                &probed(&json!({"command": "/deploy", "text": "x"})),
            )
            .unwrap();
        assert_eq!(cmd.event_type, "slash_command");
        assert_eq!(cmd.action.as_deref(), Some("/deploy"));
        let ia = Slack
            .classify(
                &HeaderMap::new(),
                &probed(&json!({"type": "block_actions"})),
            )
            .unwrap();
        assert_eq!((ia.event_type.as_str(), ia.action), ("block_actions", None));
        for bad in [json!({"type": "event_callback"}), json!({"text": "x"})] {
            assert!(Slack.classify(&HeaderMap::new(), &probed(&bad)).is_err());
        }
    }

    #[test]
    fn url_verification_is_answered_with_its_challenge() {
        let spec = ProbeSpec::new(Slack.probes(), None);
        let hs = |body: &[u8]| {
            let p = crate::event::probe_json_object(body, &spec).unwrap();
            Slack.handshake(&Decoded {
                headers: &HeaderMap::new(),
                bytes: body,
                fields: &p.fields,
                payload: p.payload.as_ref(),
            })
        };
        assert_eq!(
            hs(br#"{"type":"url_verification","challenge":{"any":[1]}}"#).unwrap(),
            Some(Handshake::Json(json!({"challenge": {"any": [1]}})))
        );
        assert_eq!(
            hs(br#"{"type":"url_verification"}"#).unwrap(),
            Some(Handshake::Json(json!({"challenge": null})))
        );
        assert_eq!(hs(br#"{"type":"event_callback"}"#).unwrap(), None);
        // From a form's payload field (already parsed).
        let form = b"payload=%7B%22type%22%3A%22url_verification%22%2C%22challenge%22%3A%22c%22%7D";
        let p = probe_body(BodyKind::Form, form, &spec, FormBody::PayloadOrFields).unwrap();
        let answer = Slack.handshake(&Decoded {
            headers: &HeaderMap::new(),
            bytes: form,
            fields: &p.fields,
            payload: p.payload.as_ref(),
        });
        assert_eq!(
            answer.unwrap(),
            Some(Handshake::Json(json!({"challenge": "c"})))
        );
    }

    fn other_timestamp(ts: i64) -> impl Strategy<Value = i64> {
        (1i64..100_000).prop_map(move |d| if ts > d { ts - d } else { ts + d })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn prop_slack(
            secret in "[A-Za-z0-9_!@#$%^&*()=+./-]{1,48}",
            other in "[A-Za-z0-9_!@#$%^&*()=+./-]{1,48}",
            body in proptest::collection::vec(any::<u8>(), 0..512),
            flip in any::<prop::sample::Index>(),
            xor in 1u8..,
            ts in 0i64..10_000_000_000,
            changed_ts in (0i64..10_000_000_000).prop_flat_map(other_timestamp),
        ) {
            let set = hmac_set(&secret);
            let sig = sign(secret.as_bytes(), ts, &body);
            let ts_h = ts.to_string();
            let v = |set: &SecretSet, ts_h: &str, body: &[u8]| {
                verify(set, Some(sig.as_bytes()), Some(ts_h.as_bytes()), body, ts)
            };
            prop_assert_eq!(v(&set, &ts_h, &body), Ok(()));
            if !body.is_empty() {
                let mut tampered = body.clone();
                tampered[flip.index(body.len())] ^= xor;
                prop_assert_eq!(v(&set, &ts_h, &tampered), INVALID);
            }
            if changed_ts != ts {
                prop_assert_eq!(v(&set, &changed_ts.to_string(), &body), INVALID);
            }
            if other != secret {
                prop_assert_eq!(v(&hmac_set(&other), &ts_h, &body), INVALID);
            }
        }
    }
}
