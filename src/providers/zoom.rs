//! Zoom: `x-zm-signature: v0=<hex HMAC-SHA256(secret token, "v0:" + ts + ":" + body)>` with
//! `x-zm-request-timestamp` (seconds), as Zoom documents
//! (<https://developers.zoom.us/docs/api/webhooks/#verify-webhook-events>): the very scheme
//! Slack uses, so it is verified by [`super::slack::verify`], with the same 300 s window (Zoom
//! names none; `x-zm-request-timestamp` is the request's own time, and its retries, 5, 20 and
//! 60 minutes later, are requests of their own).
//!
//! The handshake: `endpoint.url_validation` (sent when the endpoint is saved, then every 72
//! hours, and signed like any event) is answered `{"plainToken": p, "encryptedToken": hex
//! HMAC-SHA256(secret token, p)}` and not stored; the token is keyed with the secret that
//! verified the request (rotation). Events: `type` is the body's `event` (`meeting.started`).
//! Zoom sends no delivery id that is documented to survive a retry, so the dedupe key is made
//! of what a retry repeats: `event`, `event_ts` (the event's time, ms) and the object's uuid
//! (else id), and a participant's id where there is one.

use http::HeaderMap;
use serde_json::json;

use super::signature::{VerifyError, ct_eq, decode_hex_mac, mac_of};
use super::{
    Builtin, Decoded, Handshake, Outgoing, Provider, Request, Secrets, SendOptions, SignError,
    header_str, hmac_keys, slack,
};
use crate::event::{BodyError, Classified, Field, Fields, Leaf, Probe};

/// Replay window of Zoom requests, in seconds (inclusive): Slack's, whose verifier this is.
pub const WINDOW_SECS: u64 = slack::WINDOW_SECS;

pub struct Zoom;

const EVENT: Field = Field::new(0);
const EVENT_TS: Field = Field::new(1);
const PLAIN_TOKEN: Field = Field::new(2);
const OBJECT_UUID: Field = Field::new(3);
const OBJECT_ID: Field = Field::new(4);
const PARTICIPANT: Field = Field::new(5);
const SIGNATURE: &str = "x-zm-signature";
const TIMESTAMP: &str = "x-zm-request-timestamp";
const VALIDATION: &str = "endpoint.url_validation";

impl Provider for Zoom {
    fn name(&self) -> &'static str {
        "zoom"
    }

    fn builtin(&self) -> Option<Builtin> {
        Some(Builtin {
            source: "zoom",
            secret_env: &["ZOOM_WEBHOOK_SECRET"],
            identifier: Some("payload.payload.account_id"),
        })
    }

    fn signature_headers(&self) -> &'static [&'static str] {
        &[SIGNATURE]
    }

    fn replay_window(&self) -> Option<std::time::Duration> {
        Some(std::time::Duration::from_secs(WINDOW_SECS))
    }

    fn verify(&self, req: &Request<'_>, secrets: Option<&Secrets>) -> Result<(), VerifyError> {
        slack::verify(
            hmac_keys(secrets)?,
            req.header(SIGNATURE),
            req.header(TIMESTAMP),
            req.body,
            req.now_ms / 1000,
        )
    }

    fn probes(&self) -> &'static [Probe] {
        &[
            (&["event"], EVENT),
            (&["event_ts"], EVENT_TS),
            (&["payload", "plainToken"], PLAIN_TOKEN),
            (&["payload", "object", "uuid"], OBJECT_UUID),
            (&["payload", "object", "id"], OBJECT_ID),
            (
                &["payload", "object", "participant", "user_id"],
                PARTICIPANT,
            ),
        ]
    }

    fn keyed_handshake(
        &self,
        body: &Decoded<'_>,
        secrets: Option<&Secrets>,
    ) -> Result<Option<Handshake>, BodyError> {
        if body.fields.str(EVENT) != Some(VALIDATION) {
            return Ok(None);
        }
        let plain = body.fields.str(PLAIN_TOKEN).ok_or_else(|| {
            BodyError("a Zoom endpoint.url_validation needs a string payload.plainToken".into())
        })?;
        let Ok(set) = hmac_keys(secrets) else {
            // Unreachable: the request was verified with these secrets.
            return Err(BodyError(
                "no secret to answer the URL validation with".into(),
            ));
        };
        // The key that signed the request answers it (several during a rotation).
        let keys = set.keys();
        let signed = signing_key(body, keys).or(keys.first());
        let Some(key) = signed else {
            return Err(BodyError(
                "no secret to answer the URL validation with".into(),
            ));
        };
        let token = hex::encode(mac_of(key, &[plain.as_bytes()]).as_ref());
        Ok(Some(Handshake::Json(
            json!({ "plainToken": plain, "encryptedToken": token }),
        )))
    }

    fn classify(&self, _: &HeaderMap, fields: &Fields<'_>) -> Result<Classified, BodyError> {
        let event = fields
            .str(EVENT)
            .filter(|e| !e.is_empty())
            .ok_or_else(|| BodyError("a Zoom webhook needs a string \"event\"".into()))?;
        let leaf = |f| match fields.get(f) {
            Some(Leaf::Str(s)) => Some(s.to_string()),
            Some(Leaf::Num(n)) => Some(n.to_string()),
            None => None,
        };
        let delivery_id = leaf(EVENT_TS).map(|ts| {
            let object = leaf(OBJECT_UUID)
                .or_else(|| leaf(OBJECT_ID))
                .unwrap_or_default();
            let mut id = format!("{event}:{ts}:{object}");
            if let Some(p) = leaf(PARTICIPANT) {
                id.push(':');
                id.push_str(&p);
            }
            id
        });
        Ok(Classified {
            event_type: event.to_string(),
            action: None,
            delivery_id,
        })
    }

    fn compose(&self, out: &mut Outgoing, _: &SendOptions<'_>) -> Result<(), SignError> {
        out.header("user-agent", "Zoom Marketplace/1.0a");
        out.header("x-zm-trackingid", format!("v=2.0,{}", uuid::Uuid::new_v4()));
        Ok(())
    }

    fn sign(&self, out: &mut Outgoing, opts: &SendOptions<'_>) -> Result<(), SignError> {
        let secret = opts.secret()?;
        let ts = opts.now_ms / 1000;
        out.header(TIMESTAMP, ts.to_string());
        out.header(SIGNATURE, slack::sign(secret.as_bytes(), ts, &out.body));
        Ok(())
    }

    fn sample(&self) -> &'static str {
        include_str!("../../examples/zoom-meeting.started.json")
    }
}

/// The key whose signature the request carries.
fn signing_key<'k>(body: &Decoded<'_>, keys: &'k [ring::hmac::Key]) -> Option<&'k ring::hmac::Key> {
    let sig = header_str(body.headers, SIGNATURE)?.strip_prefix("v0=")?;
    let mac = decode_hex_mac(sig.as_bytes()).ok()?;
    let ts = header_str(body.headers, TIMESTAMP)?;
    keys.iter().find(|k| {
        let tag = mac_of(k, &[b"v0:", ts.as_bytes(), b":", body.bytes]);
        ct_eq(tag.as_ref(), &mac)
    })
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::event::ProbeSpec;
    use crate::providers::{RequestLine, SecretSet};

    // tests/vectors/zoom.py
    const SECRET: &str = "nMZ1v3cRp0kRzYxBdL7q0A";
    const TS: i64 = 1626230691;
    const BODY: &[u8] = br#"{"event":"meeting.started","event_ts":1626230691572,"payload":{"account_id":"AAAAAABBBB","object":{"id":"1234567890","uuid":"4444AAAiAAAAAiAiAiiAii=="}}}"#;
    const SIG: &str = "v0=5b3ffef0d0b4ca3618a921079c5a11358e8fab68f97492a20a3f87b3f0738b8f";
    const PLAIN: &str = "qgg8vlvZRS6UYooatFL8Aw";
    const ENCRYPTED: &str = "1df923cddbdcc7ff48b8b959751e5269e4743fa1cb710840b0c25694bd15c403";
    const INVALID: Result<(), VerifyError> = Err(VerifyError::InvalidSignature);

    fn secrets(list: &str) -> Secrets {
        Secrets::Hmac(SecretSet::hmac_from_list(list).unwrap())
    }

    fn headers(sig: Option<&str>, ts: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(s) = sig {
            h.insert(SIGNATURE, s.parse().unwrap());
        }
        if let Some(t) = ts {
            h.insert(TIMESTAMP, t.parse().unwrap());
        }
        h
    }

    fn v(h: &HeaderMap, body: &[u8], secrets: &Secrets, now_secs: i64) -> Result<(), VerifyError> {
        Zoom.verify(
            &Request {
                source: "zoom",
                line: RequestLine::post("/webhook/zoom"),
                public_url: None,
                headers: h,
                body,
                now_ms: now_secs * 1000 + 999,
                agent_key: &|_| false,
            },
            Some(secrets),
        )
    }

    #[test]
    fn zoom_documented_algorithm_vector() {
        assert_eq!(slack::sign(SECRET.as_bytes(), TS, BODY), SIG);
        let h = headers(Some(SIG), Some("1626230691"));
        assert_eq!(v(&h, BODY, &secrets(SECRET), TS), Ok(()));
    }

    #[test]
    fn zoom_refusals_rotation_and_window() {
        let s = secrets(SECRET);
        let h = headers(Some(SIG), Some("1626230691"));
        let mut changed = BODY.to_vec();
        changed[3] ^= 1;
        assert_eq!(v(&h, &changed, &s, TS), INVALID);
        assert_eq!(v(&h, BODY, &secrets("wrong"), TS), INVALID);
        assert_eq!(v(&headers(None, Some("1626230691")), BODY, &s, TS), INVALID);
        assert_eq!(v(&headers(Some(SIG), None), BODY, &s, TS), INVALID);
        assert_eq!(
            v(&headers(Some(&SIG[3..]), Some("1626230691")), BODY, &s, TS),
            INVALID
        );
        assert_eq!(
            v(&headers(Some("v0=xyz"), Some("1626230691")), BODY, &s, TS),
            INVALID
        );
        assert_eq!(
            v(&headers(Some(SIG), Some("1626230692")), BODY, &s, TS),
            INVALID
        );
        assert_eq!(v(&h, BODY, &secrets(&format!("old,{SECRET}")), TS), Ok(()));
        let w = WINDOW_SECS as i64;
        assert_eq!(v(&h, BODY, &s, TS + w), Ok(()));
        assert_eq!(v(&h, BODY, &s, TS - w), Ok(()));
        assert_eq!(
            v(&h, BODY, &s, TS + w + 1),
            Err(VerifyError::StaleTimestamp)
        );
        assert_eq!(
            v(&h, BODY, &s, TS - w - 1),
            Err(VerifyError::StaleTimestamp)
        );
        assert_eq!(v(&h, BODY, &secrets("wrong"), TS + 10 * w), INVALID);
    }

    fn fields(body: &Value) -> Fields<'static> {
        ProbeSpec::new(Zoom.probes(), None).read_value(body)
    }

    #[test]
    fn classify_reads_the_event_and_builds_a_retry_stable_key() {
        let c = Zoom
            .classify(
                &HeaderMap::new(),
                &fields(&serde_json::from_slice(BODY).unwrap()),
            )
            .unwrap();
        assert_eq!(
            c,
            Classified {
                event_type: "meeting.started".into(),
                action: None,
                delivery_id: Some("meeting.started:1626230691572:4444AAAiAAAAAiAiAiiAii==".into()),
            }
        );
        let joined = json!({"event": "meeting.participant_joined", "event_ts": 5,
            "payload": {"object": {"id": 42, "participant": {"user_id": "16778240"}}}});
        assert_eq!(
            Zoom.classify(&HeaderMap::new(), &fields(&joined))
                .unwrap()
                .delivery_id
                .as_deref(),
            Some("meeting.participant_joined:5:42:16778240")
        );
        let no_ts = json!({"event": "user.created"});
        assert_eq!(
            Zoom.classify(&HeaderMap::new(), &fields(&no_ts))
                .unwrap()
                .delivery_id,
            None
        );
        assert!(
            Zoom.classify(&HeaderMap::new(), &fields(&json!({"x": 1})))
                .is_err()
        );
    }

    #[test]
    fn url_validation_is_answered_with_the_encrypted_token() {
        let body = format!(
            r#"{{"payload":{{"plainToken":"{PLAIN}"}},"event_ts":1654503849680,"event":"endpoint.url_validation"}}"#
        );
        let sig = slack::sign(SECRET.as_bytes(), TS, body.as_bytes());
        let h = headers(Some(&sig), Some("1626230691"));
        let parsed: Value = serde_json::from_str(&body).unwrap();
        let f = fields(&parsed);
        let hs = |secrets: &Secrets| {
            Zoom.keyed_handshake(
                &Decoded {
                    headers: &h,
                    bytes: body.as_bytes(),
                    fields: &f,
                    payload: None,
                },
                Some(secrets),
            )
            .unwrap()
        };
        let expected = Some(Handshake::Json(
            json!({"plainToken": PLAIN, "encryptedToken": ENCRYPTED}),
        ));
        assert_eq!(hs(&secrets(SECRET)), expected);
        // During a rotation, the key that signed the request answers it.
        assert_eq!(hs(&secrets(&format!("newer-secret,{SECRET}"))), expected);
        // Other events are not handshakes; a validation without its token is a bad body.
        let ev = fields(&serde_json::from_slice(BODY).unwrap());
        let d = Decoded {
            headers: &h,
            bytes: BODY,
            fields: &ev,
            payload: None,
        };
        assert_eq!(
            Zoom.keyed_handshake(&d, Some(&secrets(SECRET))).unwrap(),
            None
        );
        let bad = fields(&json!({"event": "endpoint.url_validation"}));
        let d = Decoded {
            headers: &h,
            bytes: b"{}",
            fields: &bad,
            payload: None,
        };
        assert!(Zoom.keyed_handshake(&d, Some(&secrets(SECRET))).is_err());
    }
}
