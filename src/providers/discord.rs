//! Discord interactions (the application's Interactions Endpoint URL): `X-Signature-Ed25519`,
//! the hex Ed25519 signature of `X-Signature-Timestamp` + body, verified with the application's
//! public key, as Discord documents
//! (<https://discord.com/developers/docs/interactions/overview#setting-up-an-endpoint>).
//!
//! Keys: `DISCORD_WEBHOOK_SECRET` holds the application's public key, 64 hex digits, as the
//! Developer Portal shows it (comma-separated for several). `send` signs, so it needs the
//! private key: `--secret` (or the sender's `DISCORD_WEBHOOK_SECRET`) is then the 128-hex-digit
//! Ed25519 secret key as libsodium and PyNaCl write it (32-byte seed, then the 32-byte public
//! key). The router accepts that form too and uses only its public half, so one value serves
//! both sides of a test; in production the router holds the public key only.
//!
//! Window: Discord names none. It sends each interaction once, at once, and wants an answer
//! within 3 s, so a genuine request is always fresh: the router allows 300 s of clock skew.
//!
//! Answers: a PING (`type` 1) is answered `{"type": 1}` and not stored (the handshake; Discord
//! sends it when the URL is saved). Every other interaction is stored and answered with a
//! deferred response (`Provider::accepted_answer`), so the agent follows up with the
//! interaction token (15 minutes): `{"type": 5}` (DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE) for
//! application commands and modal submits, `{"type": 6}` (DEFERRED_UPDATE_MESSAGE) for message
//! components. Autocomplete cannot be deferred: it is answered with no choices, `{"type": 8,
//! "data": {"choices": []}}`, and stored. The delivery id is the interaction's `id`.

use http::HeaderMap;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde_json::{Value, json};

use super::signature::{
    SecretError, VerifyError, parse_timestamp, public_keys_from_list, within_window,
};
use super::{
    Builtin, Decoded, Handshake, Outgoing, Provider, Request, Secrets, SendOptions, SignError,
};
use crate::event::{BodyError, Classified, EventHeader, Field, Fields, Probe};

/// Replay window of Discord interactions, in seconds (inclusive); see the module's comment.
pub const WINDOW_SECS: u64 = 300;

pub struct Discord;

const TYPE: Field = Field::new(0);
const ID: Field = Field::new(1);
const NAME: Field = Field::new(2);
const CUSTOM_ID: Field = Field::new(3);
const SIGNATURE: &str = "x-signature-ed25519";
const TIMESTAMP: &str = "x-signature-timestamp";

const PUBLIC_KEY_LEN: usize = 32;
const SIGNATURE_LEN: usize = 64;

/// Interaction types (Discord's `InteractionType`) as event types.
const APPLICATION_COMMAND: &str = "application_command";
const MESSAGE_COMPONENT: &str = "message_component";
const AUTOCOMPLETE: &str = "application_command_autocomplete";
const MODAL_SUBMIT: &str = "modal_submit";

impl Provider for Discord {
    fn name(&self) -> &'static str {
        "discord"
    }

    fn builtin(&self) -> Option<Builtin> {
        Some(Builtin {
            source: "discord",
            secret_env: &["DISCORD_WEBHOOK_SECRET"],
            identifier: Some("payload.guild_id"),
        })
    }

    fn signature_headers(&self) -> &'static [&'static str] {
        &[SIGNATURE]
    }

    fn parse_secrets(&self, list: &str) -> Result<Secrets, SecretError> {
        public_keys_from_list(list, |position, entry| {
            public_key_of(entry).ok_or(SecretError::InvalidKey {
                position,
                expected: "an Ed25519 public key (64 hex digits) or secret key (128 hex digits)",
            })
        })
        .map(Secrets::PublicKeys)
    }

    fn replay_window(&self) -> Option<std::time::Duration> {
        Some(std::time::Duration::from_secs(WINDOW_SECS))
    }

    fn verify(&self, req: &Request<'_>, secrets: Option<&Secrets>) -> Result<(), VerifyError> {
        let Some(Secrets::PublicKeys(keys)) = secrets else {
            return Err(VerifyError::InvalidSignature);
        };
        verify(
            keys,
            req.header(SIGNATURE),
            req.header(TIMESTAMP),
            req.body,
            req.now_ms / 1000,
        )
    }

    fn probes(&self) -> &'static [Probe] {
        &[
            (&["type"], TYPE),
            (&["id"], ID),
            (&["data", "name"], NAME),
            (&["data", "custom_id"], CUSTOM_ID),
        ]
    }

    /// PING: `{"type": 1}` (PONG), not stored.
    fn handshake(&self, body: &Decoded<'_>) -> Result<Option<Handshake>, BodyError> {
        Ok((body.fields.i64(TYPE) == Some(1)).then(|| Handshake::Json(json!({ "type": 1 }))))
    }

    fn classify(&self, _: &HeaderMap, fields: &Fields<'_>) -> Result<Classified, BodyError> {
        let kind = fields
            .i64(TYPE)
            .ok_or_else(|| BodyError("a Discord interaction needs a numeric \"type\"".into()))?;
        let (event_type, action) = match kind {
            2 => (APPLICATION_COMMAND.to_string(), fields.str(NAME)),
            3 => (MESSAGE_COMPONENT.to_string(), fields.str(CUSTOM_ID)),
            4 => (AUTOCOMPLETE.to_string(), fields.str(NAME)),
            5 => (MODAL_SUBMIT.to_string(), fields.str(CUSTOM_ID)),
            // A type Discord adds later: stored, answered as the router answers.
            other => (format!("interaction_{other}"), None),
        };
        Ok(Classified {
            event_type,
            action: action.map(str::to_string),
            delivery_id: fields.str(ID).map(str::to_string),
        })
    }

    fn accepted_answer(&self, head: &EventHeader) -> Option<Value> {
        match head.event_type.as_str() {
            APPLICATION_COMMAND | MODAL_SUBMIT => Some(json!({ "type": 5 })),
            MESSAGE_COMPONENT => Some(json!({ "type": 6 })),
            AUTOCOMPLETE => Some(json!({ "type": 8, "data": { "choices": [] } })),
            _ => None,
        }
    }

    fn compose(&self, out: &mut Outgoing, _: &SendOptions<'_>) -> Result<(), SignError> {
        out.header(
            "user-agent",
            "Discord-Interactions/1.0 (+https://discord.com)",
        );
        Ok(())
    }

    fn sign(&self, out: &mut Outgoing, opts: &SendOptions<'_>) -> Result<(), SignError> {
        let pair = key_pair(opts.secret()?).ok_or_else(|| {
            SignError(
                "Discord signs with the application's private key: give the Ed25519 secret key \
                 as 128 hex digits (seed, then public key, as libsodium and PyNaCl write it); \
                 the router's DISCORD_WEBHOOK_SECRET holds only the public key"
                    .into(),
            )
        })?;
        let ts = (opts.now_ms / 1000).to_string();
        out.header(TIMESTAMP, ts.clone());
        out.header(SIGNATURE, sign(&pair, &ts, &out.body));
        Ok(())
    }

    fn sample(&self) -> &'static str {
        include_str!("../../examples/discord-application_command.json")
    }
}

/// The public key of a hex entry: a public key (32 bytes), or a libsodium secret key (seed and
/// public key, 64 bytes) whose halves agree.
fn public_key_of(entry: &str) -> Option<Vec<u8>> {
    let bytes = hex::decode(entry).ok()?;
    match bytes.len() {
        PUBLIC_KEY_LEN => Some(bytes),
        64 => key_pair(entry).map(|p| p.public_key().as_ref().to_vec()),
        _ => None,
    }
}

/// The key pair of a 128-hex-digit libsodium secret key.
fn key_pair(secret: &str) -> Option<Ed25519KeyPair> {
    let bytes = hex::decode(secret.trim()).ok()?;
    let (seed, public) = bytes.split_at_checked(32)?;
    if public.len() != PUBLIC_KEY_LEN {
        return None;
    }
    Ed25519KeyPair::from_seed_and_public_key(seed, public).ok()
}

/// `X-Signature-Ed25519` (hex, 64 bytes) over `X-Signature-Timestamp` + body with any of the
/// public keys; the timestamp (seconds) within 300 s of `now_secs`, checked after the signature.
pub fn verify(
    keys: &[Vec<u8>],
    signature: Option<&[u8]>,
    timestamp: Option<&[u8]>,
    body: &[u8],
    now_secs: i64,
) -> Result<(), VerifyError> {
    let hex_sig = signature
        .map(<[u8]>::trim_ascii)
        .ok_or(VerifyError::InvalidSignature)?;
    let mut sig = [0u8; SIGNATURE_LEN];
    hex::decode_to_slice(hex_sig, &mut sig).map_err(|_| VerifyError::InvalidSignature)?;
    let ts_raw = timestamp
        .map(<[u8]>::trim_ascii)
        .ok_or(VerifyError::InvalidSignature)?;
    let ts = parse_timestamp(ts_raw).ok_or(VerifyError::InvalidSignature)?;
    // Ed25519 needs the message in one piece.
    let mut message = Vec::with_capacity(ts_raw.len() + body.len());
    message.extend_from_slice(ts_raw);
    message.extend_from_slice(body);
    let genuine = keys.iter().any(|key| {
        UnparsedPublicKey::new(&ED25519, key)
            .verify(&message, &sig)
            .is_ok()
    });
    if !genuine {
        return Err(VerifyError::InvalidSignature);
    }
    within_window(ts, now_secs, WINDOW_SECS)
}

/// The hex `X-Signature-Ed25519` of `timestamp` + `body`.
pub fn sign(pair: &Ed25519KeyPair, timestamp: &str, body: &[u8]) -> String {
    let mut message = timestamp.as_bytes().to_vec();
    message.extend_from_slice(body);
    hex::encode(pair.sign(&message).as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::ProbeSpec;

    // tests/vectors/discord.py (PyNaCl 1.6.2)
    pub const PUBLIC_KEY: &str = "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8";
    pub const SECRET_KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8";
    const TS: i64 = 1736900000;
    const BODY: &[u8] = br#"{"application_id":"1196823712383795210","id":"1329051734958002216","type":2,"token":"aW50ZXJhY3Rpb246MTMyOTA1","guild_id":"1131924542395437128","data":{"id":"1196824421124796426","name":"deploy","type":1}}"#;
    const SIG: &str = "f01f774bea02f3b73b19fde05f358fc23254db501e7129f7c837d474a2c6f182e635e83e21cb2c5cf2cbf1c3edb2a3eaa00d7f479fa696f6fa857d7a6d473c0d";
    const PING: &[u8] = br#"{"application_id":"1196823712383795210","id":"1329051734958002217","type":1,"token":"aW50ZXJhY3Rpb246MTMyOTA2","version":1}"#;
    const PING_SIG: &str = "49bbdbad4baee4800f49f93046dcf7d1f4ee616888b31e4b17e059761680694b5dd29dd346899585604d992bbf2dca7c2eb5bded59826589cf2f4b514c61190f";
    const INVALID: Result<(), VerifyError> = Err(VerifyError::InvalidSignature);

    fn keys(list: &str) -> Vec<Vec<u8>> {
        match Discord.parse_secrets(list).unwrap() {
            Secrets::PublicKeys(k) => k,
            Secrets::Hmac(_) | Secrets::Tokens(_) => unreachable!(),
        }
    }

    fn v(keys: &[Vec<u8>], sig: &str, body: &[u8], now: i64) -> Result<(), VerifyError> {
        verify(keys, Some(sig.as_bytes()), Some(b"1736900000"), body, now)
    }

    #[test]
    fn discord_pynacl_vectors() {
        let k = keys(PUBLIC_KEY);
        assert_eq!(v(&k, SIG, BODY, TS), Ok(()));
        assert_eq!(v(&k, PING_SIG, PING, TS), Ok(()));
        let pair = key_pair(SECRET_KEY).unwrap();
        assert_eq!(sign(&pair, "1736900000", BODY), SIG);
        // The secret-key form verifies as its public half.
        assert_eq!(keys(SECRET_KEY), k);
    }

    #[test]
    fn discord_refusals_rotation_and_window() {
        let k = keys(PUBLIC_KEY);
        let mut changed = BODY.to_vec();
        changed[5] ^= 1;
        assert_eq!(v(&k, SIG, &changed, TS), INVALID);
        // Another application's key.
        let other = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
        assert_eq!(v(&keys(other), SIG, BODY, TS), INVALID);
        assert_eq!(
            v(&keys(&format!("{other}, {PUBLIC_KEY}")), SIG, BODY, TS),
            Ok(())
        );
        assert_eq!(verify(&k, None, Some(b"1736900000"), BODY, TS), INVALID);
        assert_eq!(verify(&k, Some(SIG.as_bytes()), None, BODY, TS), INVALID);
        assert_eq!(
            verify(&k, Some(SIG.as_bytes()), Some(b"1736900001"), BODY, TS),
            INVALID
        );
        assert_eq!(
            verify(&k, Some(SIG.as_bytes()), Some(b"x"), BODY, TS),
            INVALID
        );
        for bad in ["", &SIG[2..], "zz", &format!("{SIG}00"), PING_SIG] {
            assert_eq!(v(&k, bad, BODY, TS), INVALID, "{bad}");
        }
        let w = WINDOW_SECS as i64;
        assert_eq!(v(&k, SIG, BODY, TS + w), Ok(()));
        assert_eq!(v(&k, SIG, BODY, TS - w), Ok(()));
        assert_eq!(
            v(&k, SIG, BODY, TS + w + 1),
            Err(VerifyError::StaleTimestamp)
        );
        assert_eq!(
            v(&k, SIG, BODY, TS - w - 1),
            Err(VerifyError::StaleTimestamp)
        );
        assert_eq!(v(&keys(other), SIG, BODY, TS + 10 * w), INVALID);
    }

    #[test]
    fn discord_keys_parse_strictly() {
        assert!(Discord.parse_secrets("").is_err());
        assert!(Discord.parse_secrets("abc").is_err());
        assert!(Discord.parse_secrets(&PUBLIC_KEY[2..]).is_err());
        // A secret key whose halves disagree.
        let mismatched = format!("{}{}", &SECRET_KEY[..64], "00".repeat(32));
        assert!(Discord.parse_secrets(&mismatched).is_err());
        assert_eq!(
            Discord
                .parse_secrets(&format!("{PUBLIC_KEY},zz"))
                .unwrap_err(),
            SecretError::InvalidKey {
                position: 2,
                expected: "an Ed25519 public key (64 hex digits) or secret key (128 hex digits)"
            }
        );
        // send refuses a public key: it cannot sign with one.
        let mut out = Outgoing::default();
        let opts = SendOptions {
            event: None,
            secret: Some(PUBLIC_KEY),
            agent_key: None,
            now_ms: 0,
        };
        assert!(Discord.sign(&mut out, &opts).is_err());
    }

    fn fields(body: &[u8]) -> Fields<'static> {
        ProbeSpec::new(Discord.probes(), None).read_value(&serde_json::from_slice(body).unwrap())
    }

    fn head(event_type: &str) -> EventHeader {
        EventHeader {
            id: uuid::Uuid::nil(),
            source: "discord".into(),
            event_type: event_type.into(),
            action: None,
            delivery_id: None,
            timestamp: 0,
        }
    }

    #[test]
    fn classify_and_answer_each_interaction_type() {
        let c = Discord.classify(&HeaderMap::new(), &fields(BODY)).unwrap();
        assert_eq!(
            c,
            Classified {
                event_type: APPLICATION_COMMAND.into(),
                action: Some("deploy".into()),
                delivery_id: Some("1329051734958002216".into()),
            }
        );
        let cases = [
            (
                br#"{"type":3,"id":"1","data":{"custom_id":"approve"}}"#.as_slice(),
                MESSAGE_COMPONENT,
                Some("approve"),
                json!({"type": 6}),
            ),
            (
                br#"{"type":4,"id":"2","data":{"name":"deploy"}}"#,
                AUTOCOMPLETE,
                Some("deploy"),
                json!({"type": 8, "data": {"choices": []}}),
            ),
            (
                br#"{"type":5,"id":"3","data":{"custom_id":"form"}}"#,
                MODAL_SUBMIT,
                Some("form"),
                json!({"type": 5}),
            ),
        ];
        for (body, t, action, answer) in cases {
            let c = Discord.classify(&HeaderMap::new(), &fields(body)).unwrap();
            assert_eq!((c.event_type.as_str(), c.action.as_deref()), (t, action));
            assert_eq!(Discord.accepted_answer(&head(t)), Some(answer));
        }
        assert_eq!(
            Discord.accepted_answer(&head(APPLICATION_COMMAND)),
            Some(json!({"type": 5}))
        );
        let later = Discord
            .classify(&HeaderMap::new(), &fields(br#"{"type":9}"#))
            .unwrap();
        assert_eq!(later.event_type, "interaction_9");
        assert_eq!(Discord.accepted_answer(&head("interaction_9")), None);
        assert!(
            Discord
                .classify(&HeaderMap::new(), &fields(br#"{"type":"2"}"#))
                .is_err()
        );
    }

    #[test]
    fn ping_is_answered_with_pong() {
        let hs = |body: &[u8]| {
            let f = fields(body);
            Discord
                .handshake(&Decoded {
                    headers: &HeaderMap::new(),
                    bytes: body,
                    fields: &f,
                    payload: None,
                })
                .unwrap()
        };
        assert_eq!(hs(PING), Some(Handshake::Json(json!({"type": 1}))));
        assert_eq!(hs(BODY), None);
    }
}
