//! Mailgun: the signature is inside the body, not in a header. A JSON webhook carries
//! `"signature": {"timestamp": "…", "token": "…", "signature": "<hex HMAC-SHA256(signing key,
//! timestamp + token)>"}` beside its `event-data`; a legacy form post carries `timestamp`,
//! `token` and `signature` as form fields. The key is the domain's HTTP webhook signing key
//! (Sending > Webhooks). A subaccount's events also carry `parent-signature`, the same MAC
//! under the primary account's key: either one verifies.
//!
//! What Mailgun signs is the timestamp and the token only, never the event: a changed
//! `event-data` does not change the signature. Two things stand in for that, both as Mailgun's
//! "Securing webhooks" advises: the timestamp must be within 900 s of now (the default of
//! Mailgun's own Python SDK, `SecurityGuard.verify_webhook`; Mailgun warns that its own delays
//! make a tight window refuse genuine webhooks), and the token is the delivery id, so a second
//! request with a token already seen is a duplicate, never a new event ("cache the token …
//! this will prevent replay attacks"). `event-data.id` stays in the payload.
//!
//! The signature fields need the body, so `verify` reads them itself, from the raw bytes,
//! through the same depth-limited probe ingest uses (`event::probe_json_object`), or the form
//! fields; whatever is wrong yields `InvalidSignature`. `send` signs by writing a `signature`
//! object into the body (a fresh 50-character token, the current timestamp): it is the only
//! provider whose `sign` changes the body.
//!
//! The event type is `event-data.event` (`delivered`, `failed`, `opened`, `clicked`,
//! `unsubscribed`, `complained`, …), or the legacy form's `event`; the action is
//! `event-data.severity` (`permanent`, `temporary`) where there is one.

use std::sync::OnceLock;

use http::HeaderMap;
use serde_json::{Value, json};

use super::signature::{
    VerifyError, ct_eq, decode_hex_mac, format_i64, hex_signature, parse_timestamp, within_window,
};
use super::{
    Builtin, Outgoing, Provider, Request, SecretSet, Secrets, SendOptions, SignError, hmac_keys,
};
use crate::event::{self, BodyError, BodyKind, Classified, Field, Fields, Leaf, Probe, ProbeSpec};

/// Replay window of Mailgun webhooks, in seconds (inclusive).
pub const WINDOW_SECS: u64 = 900;
/// Mailgun's tokens are 50 characters; anything past this is not one.
const MAX_TOKEN_LEN: usize = 256;

pub struct Mailgun;

const EVENT: Field = Field::new(0);
const SEVERITY: Field = Field::new(1);
const TOKEN: Field = Field::new(2);
const FORM_EVENT: Field = Field::new(3);
const FORM_TOKEN: Field = Field::new(4);

// The signature block, probed by `verify` on its own.
const SIG_TIMESTAMP: Field = Field::new(0);
const SIG_TOKEN: Field = Field::new(1);
const SIG_SIGNATURE: Field = Field::new(2);
const SIG_PARENT: Field = Field::new(3);

impl Provider for Mailgun {
    fn name(&self) -> &'static str {
        "mailgun"
    }

    fn builtin(&self) -> Option<Builtin> {
        Some(Builtin {
            source: "mailgun",
            secret_env: &["MAILGUN_WEBHOOK_SECRET"],
            // Nothing in the payload names the account: the client address.
            identifier: None,
        })
    }

    fn signature_headers(&self) -> &'static [&'static str] {
        &[]
    }

    fn replay_window(&self) -> Option<std::time::Duration> {
        Some(std::time::Duration::from_secs(WINDOW_SECS))
    }

    fn verify(&self, req: &Request<'_>, secrets: Option<&Secrets>) -> Result<(), VerifyError> {
        let keys = hmac_keys(secrets)?;
        let parts =
            SignatureParts::read(req.headers, req.body).ok_or(VerifyError::InvalidSignature)?;
        verify(keys, &parts, req.now_ms / 1000)
    }

    fn probes(&self) -> &'static [Probe] {
        &[
            (&["event-data", "event"], EVENT),
            (&["event-data", "severity"], SEVERITY),
            (&["signature", "token"], TOKEN),
            (&["event"], FORM_EVENT),
            (&["token"], FORM_TOKEN),
        ]
    }

    fn classify(&self, _: &HeaderMap, fields: &Fields<'_>) -> Result<Classified, BodyError> {
        let event = [EVENT, FORM_EVENT]
            .into_iter()
            .find_map(|f| fields.str(f).filter(|e| !e.is_empty()))
            .ok_or_else(|| {
                BodyError("a Mailgun webhook needs a string \"event-data\".\"event\"".into())
            })?;
        Ok(Classified {
            event_type: event.to_string(),
            action: fields.str(SEVERITY).map(str::to_string),
            delivery_id: [TOKEN, FORM_TOKEN]
                .into_iter()
                .find_map(|f| fields.str(f))
                .map(str::to_string),
        })
    }

    fn compose(&self, out: &mut Outgoing, opts: &SendOptions<'_>) -> Result<(), SignError> {
        if let Some(event) = opts.event {
            out.set_json_str(&["event-data", "event"], event)?;
        }
        Ok(())
    }

    fn sign(&self, out: &mut Outgoing, opts: &SendOptions<'_>) -> Result<(), SignError> {
        let secret = opts.secret()?;
        out.body = sign_body(
            secret.as_bytes(),
            opts.now_ms / 1000,
            &new_token(),
            &out.body,
        )?;
        Ok(())
    }

    fn sample(&self) -> &'static str {
        include_str!("../../examples/mailgun-delivered.json")
    }
}

/// The signed fields of a request, as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureParts {
    pub timestamp: String,
    pub token: String,
    pub signature: String,
    pub parent_signature: Option<String>,
}

impl SignatureParts {
    /// The body's `signature` object (JSON), or its `timestamp`, `token` and `signature` fields
    /// (a form); `None` when the body is neither or lacks one of them.
    pub fn read(headers: &HeaderMap, body: &[u8]) -> Option<SignatureParts> {
        match event::body_kind(headers).ok()? {
            BodyKind::Json => {
                let fields = event::probe_json_object(body, signature_spec())
                    .ok()?
                    .fields;
                let text = |f: Field| match fields.get(f)? {
                    Leaf::Str(s) => Some(s.to_string()),
                    // Documented as an int, sent as a string: take either.
                    Leaf::Num(n) => n.as_u64().map(|n| n.to_string()),
                };
                Some(SignatureParts {
                    timestamp: text(SIG_TIMESTAMP)?,
                    token: text(SIG_TOKEN)?,
                    signature: text(SIG_SIGNATURE)?,
                    parent_signature: text(SIG_PARENT),
                })
            }
            BodyKind::Form => {
                let (mut timestamp, mut token, mut signature) = (None, None, None);
                for (k, v) in form_urlencoded::parse(body) {
                    let slot = match k.as_ref() {
                        "timestamp" => &mut timestamp,
                        "token" => &mut token,
                        "signature" => &mut signature,
                        _ => continue,
                    };
                    slot.get_or_insert_with(|| v.into_owned());
                }
                Some(SignatureParts {
                    timestamp: timestamp?,
                    token: token?,
                    signature: signature?,
                    parent_signature: None,
                })
            }
        }
    }
}

fn signature_spec() -> &'static ProbeSpec {
    static SPEC: OnceLock<ProbeSpec> = OnceLock::new();
    SPEC.get_or_init(|| {
        ProbeSpec::new(
            &[
                (&["signature", "timestamp"], SIG_TIMESTAMP),
                (&["signature", "token"], SIG_TOKEN),
                (&["signature", "signature"], SIG_SIGNATURE),
                (&["signature", "parent-signature"], SIG_PARENT),
            ],
            None,
        )
    })
}

/// `signature` (or `parent-signature`) = hex HMAC-SHA256(key, timestamp + token) under one of
/// the keys, with `timestamp` (seconds) within 900 s of `now_secs`, checked after the MAC.
pub fn verify(
    secrets: &SecretSet,
    parts: &SignatureParts,
    now_secs: i64,
) -> Result<(), VerifyError> {
    let invalid = Err(VerifyError::InvalidSignature);
    let ts_raw = parts.timestamp.trim().as_bytes();
    let Some(ts) = parse_timestamp(ts_raw) else {
        return invalid;
    };
    let token = parts.token.as_bytes();
    if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        return invalid;
    }
    let mac = decode_hex_mac(parts.signature.trim().as_bytes())?;
    let parent = parts
        .parent_signature
        .as_deref()
        .and_then(|p| decode_hex_mac(p.trim().as_bytes()).ok());
    let signed = secrets.any_mac(&[ts_raw, token], |tag| {
        ct_eq(tag, &mac) || parent.is_some_and(|p| ct_eq(tag, &p))
    });
    if !signed {
        return invalid;
    }
    within_window(ts, now_secs, WINDOW_SECS)
}

/// hex HMAC-SHA256(key, timestamp + token), the `signature` field.
pub fn sign(secret: &[u8], timestamp: i64, token: &str) -> String {
    let mut ts_buf = [0u8; 20];
    let ts = format_i64(timestamp, &mut ts_buf);
    hex_signature("", secret, &[ts, token.as_bytes()])
}

/// `body` (a JSON object) with its `signature` object set as Mailgun sends it.
pub fn sign_body(
    secret: &[u8],
    timestamp: i64,
    token: &str,
    body: &[u8],
) -> Result<Vec<u8>, SignError> {
    const NOT_OBJECT: &str = "a Mailgun body must be a JSON object (its signature goes inside)";
    let mut v: Value =
        serde_json::from_slice(body).map_err(|e| SignError(format!("{NOT_OBJECT}: {e}")))?;
    let Value::Object(m) = &mut v else {
        return Err(SignError(NOT_OBJECT.into()));
    };
    m.insert(
        "signature".into(),
        json!({
            "timestamp": timestamp.to_string(),
            "token": token,
            "signature": sign(secret, timestamp, token),
        }),
    );
    serde_json::to_vec(&v).map_err(|e| SignError(e.to_string()))
}

/// A random 50-character token, as Mailgun's.
fn new_token() -> String {
    let mut t = uuid::Uuid::new_v4().simple().to_string();
    t.push_str(&uuid::Uuid::new_v4().simple().to_string());
    t.truncate(50);
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    // tests/vectors/mailgun.py, checked there with Mailgun's SDK (SecurityGuard.verify_webhook).
    const MAILGUN_KEY: &str = "key-7d1a2b3c4d5e6f708192a3b4c5d6e7f8";
    const MAILGUN_TS: &str = "1764170000";
    const MAILGUN_TOKEN: &str = "a8ce0edb2dd8301dee6c2405235584e45aa91d1e9f979f3de0";
    const MAILGUN_SIG: &str = "e3178562b2fcc74a1ca9326b8de036b55a06ab6f755934ce9f36c5a00d1d65e2";
    const NOW: i64 = 1_764_170_000;
    const INVALID: Result<(), VerifyError> = Err(VerifyError::InvalidSignature);
    const STALE: Result<(), VerifyError> = Err(VerifyError::StaleTimestamp);

    fn json_body(signature: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "signature": signature,
            "event-data": {"event": "delivered", "id": "CPgfbmQMTCKtHW6uIWtuVe"}
        }))
        .unwrap()
    }

    fn vector_body() -> Vec<u8> {
        json_body(
            json!({"timestamp": MAILGUN_TS, "token": MAILGUN_TOKEN, "signature": MAILGUN_SIG}),
        )
    }

    fn check(
        content_type: Option<&str>,
        body: &[u8],
        list: &str,
        now: i64,
    ) -> Result<(), VerifyError> {
        let mut h = HeaderMap::new();
        if let Some(ct) = content_type {
            h.insert("content-type", http::HeaderValue::from_str(ct).unwrap());
        }
        let secrets = Mailgun.parse_secrets(list).unwrap();
        Mailgun.verify(
            &Request {
                source: "mailgun",
                line: super::super::RequestLine::post("/webhook/mailgun"),
                public_url: None,
                headers: &h,
                body,
                now_ms: now * 1000,
                agent_key: &|_| false,
            },
            Some(&secrets),
        )
    }

    #[test]
    fn mailgun_vector_checked_by_its_sdk() {
        assert_eq!(
            sign(MAILGUN_KEY.as_bytes(), NOW, MAILGUN_TOKEN),
            MAILGUN_SIG
        );
        let body = vector_body();
        assert_eq!(check(None, &body, MAILGUN_KEY, NOW), Ok(()));
        assert_eq!(
            check(Some("application/json"), &body, MAILGUN_KEY, NOW),
            Ok(())
        );
        // A timestamp sent as a JSON number.
        let numeric =
            json_body(json!({"timestamp": NOW, "token": MAILGUN_TOKEN, "signature": MAILGUN_SIG}));
        assert_eq!(check(None, &numeric, MAILGUN_KEY, NOW), Ok(()));
        // A legacy form post.
        let form = format!(
            "event=delivered&timestamp={MAILGUN_TS}&token={MAILGUN_TOKEN}&signature={MAILGUN_SIG}&recipient=jane%40example.com"
        );
        assert_eq!(
            check(
                Some("application/x-www-form-urlencoded"),
                form.as_bytes(),
                MAILGUN_KEY,
                NOW
            ),
            Ok(())
        );
    }

    #[test]
    fn mailgun_window_is_inclusive_and_checked_after_the_signature() {
        let body = vector_body();
        assert_eq!(check(None, &body, MAILGUN_KEY, NOW + 900), Ok(()));
        assert_eq!(check(None, &body, MAILGUN_KEY, NOW - 900), Ok(()));
        assert_eq!(check(None, &body, MAILGUN_KEY, NOW + 901), STALE);
        assert_eq!(check(None, &body, MAILGUN_KEY, NOW - 901), STALE);
        assert_eq!(check(None, &body, "guess", NOW + 5000), INVALID);
    }

    #[test]
    fn mailgun_refuses_changed_wrong_missing_and_malformed() {
        assert_eq!(check(None, &vector_body(), "key-other", NOW), INVALID);
        let with = |ts: Value, token: Value, sig: Value| {
            check(
                None,
                &json_body(json!({"timestamp": ts, "token": token, "signature": sig})),
                MAILGUN_KEY,
                NOW,
            )
        };
        // A changed signed field.
        assert_eq!(
            with(
                json!("1764170001"),
                json!(MAILGUN_TOKEN),
                json!(MAILGUN_SIG)
            ),
            INVALID
        );
        assert_eq!(
            with(
                json!(MAILGUN_TS),
                json!(MAILGUN_TOKEN.replace('a', "b")),
                json!(MAILGUN_SIG)
            ),
            INVALID
        );
        // Malformed ones.
        for (ts, token, sig) in [
            (json!(""), json!(MAILGUN_TOKEN), json!(MAILGUN_SIG)),
            (
                json!("-1764170000"),
                json!(MAILGUN_TOKEN),
                json!(MAILGUN_SIG),
            ),
            (
                json!(1764170000.5),
                json!(MAILGUN_TOKEN),
                json!(MAILGUN_SIG),
            ),
            (json!(MAILGUN_TS), json!(""), json!(MAILGUN_SIG)),
            (
                json!(MAILGUN_TS),
                json!("x".repeat(300)),
                json!(MAILGUN_SIG),
            ),
            (json!(MAILGUN_TS), json!(7), json!(MAILGUN_SIG)),
            (json!(MAILGUN_TS), json!(MAILGUN_TOKEN), json!("")),
            (
                json!(MAILGUN_TS),
                json!(MAILGUN_TOKEN),
                json!(&MAILGUN_SIG[1..]),
            ),
            (
                json!(MAILGUN_TS),
                json!(MAILGUN_TOKEN),
                json!(format!("sha256={MAILGUN_SIG}")),
            ),
            (
                json!(MAILGUN_TS),
                json!(MAILGUN_TOKEN),
                json!({"nested": MAILGUN_SIG}),
            ),
        ] {
            assert_eq!(
                with(ts.clone(), token.clone(), sig.clone()),
                INVALID,
                "{ts} {token} {sig}"
            );
        }
        // Missing pieces: no signature object, a field missing, not JSON, not an object,
        // an unsupported content type, a form without its fields.
        for body in [
            br#"{"event-data":{"event":"delivered"}}"#.as_slice(),
            br#"{"signature":{"timestamp":"1764170000","token":"t"}}"#,
            b"not json",
            b"[]",
            b"",
        ] {
            assert_eq!(check(None, body, MAILGUN_KEY, NOW), INVALID);
        }
        assert_eq!(
            check(Some("text/plain"), &vector_body(), MAILGUN_KEY, NOW),
            INVALID
        );
        assert_eq!(
            check(
                Some("application/x-www-form-urlencoded"),
                b"event=delivered&token=x",
                MAILGUN_KEY,
                NOW
            ),
            INVALID
        );
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(check(None, deep.as_bytes(), MAILGUN_KEY, NOW), INVALID);
    }

    #[test]
    fn mailgun_does_not_sign_the_event_data() {
        // Documented behaviour, not a wish: the event is outside the MAC, so a changed event
        // with the same signature block verifies; the token (the delivery id) is what catches
        // its reuse.
        let body = serde_json::to_vec(&json!({
            "signature": {"timestamp": MAILGUN_TS, "token": MAILGUN_TOKEN, "signature": MAILGUN_SIG},
            "event-data": {"event": "failed", "id": "other"}
        }))
        .unwrap();
        assert_eq!(check(None, &body, MAILGUN_KEY, NOW), Ok(()));
    }

    #[test]
    fn mailgun_rotation_and_parent_signature() {
        let body = vector_body();
        assert_eq!(
            check(None, &body, &format!("key-old,{MAILGUN_KEY}"), NOW),
            Ok(())
        );
        let parent = sign(b"key-primary", NOW, MAILGUN_TOKEN);
        let sub = sign(b"key-subaccount", NOW, MAILGUN_TOKEN);
        let both = json_body(json!({
            "timestamp": MAILGUN_TS, "token": MAILGUN_TOKEN,
            "signature": sub, "parent-signature": parent,
        }));
        assert_eq!(check(None, &both, "key-primary", NOW), Ok(()));
        assert_eq!(check(None, &both, "key-subaccount", NOW), Ok(()));
        assert_eq!(check(None, &both, "key-third", NOW), INVALID);
    }

    #[test]
    fn send_writes_the_signature_into_the_body() {
        let signed = sign_body(
            MAILGUN_KEY.as_bytes(),
            NOW,
            MAILGUN_TOKEN,
            Mailgun.sample().as_bytes(),
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&signed).unwrap();
        assert_eq!(v["signature"]["signature"], MAILGUN_SIG);
        assert_eq!(v["signature"]["timestamp"], MAILGUN_TS);
        assert_eq!(v["event-data"]["event"], "delivered");
        assert_eq!(check(None, &signed, MAILGUN_KEY, NOW), Ok(()));
        assert!(sign_body(b"k", NOW, "t", b"[1]").is_err());
        assert!(sign_body(b"k", NOW, "t", b"nope").is_err());
        let t = new_token();
        assert_eq!(t.len(), 50);
        assert_ne!(t, new_token());
    }

    #[test]
    fn classify_reads_event_severity_and_token() {
        let spec = ProbeSpec::new(Mailgun.probes(), None);
        let body = sign_body(
            MAILGUN_KEY.as_bytes(),
            NOW,
            MAILGUN_TOKEN,
            Mailgun.sample().as_bytes(),
        )
        .unwrap();
        let fields = event::probe_json_object(&body, &spec).unwrap().fields;
        let c = Mailgun.classify(&HeaderMap::new(), &fields).unwrap();
        assert_eq!(c.event_type, "delivered");
        assert_eq!(c.action, None);
        assert_eq!(c.delivery_id.as_deref(), Some(MAILGUN_TOKEN));
        let failed = spec.read_value(&json!({
            "signature": {"token": "tok"},
            "event-data": {"event": "failed", "severity": "permanent"}
        }));
        let c = Mailgun.classify(&HeaderMap::new(), &failed).unwrap();
        assert_eq!(
            (c.event_type.as_str(), c.action.as_deref()),
            ("failed", Some("permanent"))
        );
        // A legacy form post, decoded as plain fields.
        let form = spec.read_value(&json!({"event": "opened", "token": "tok2", "timestamp": "1"}));
        let c = Mailgun.classify(&HeaderMap::new(), &form).unwrap();
        assert_eq!(
            (c.event_type.as_str(), c.delivery_id.as_deref()),
            ("opened", Some("tok2"))
        );
        assert!(
            Mailgun
                .classify(&HeaderMap::new(), &Fields::default())
                .is_err()
        );
    }
}
