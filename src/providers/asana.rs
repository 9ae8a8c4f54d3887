//! Asana: `X-Hook-Signature: <hex HMAC-SHA256(secret, body)>` (Linear's scheme, verified by
//! [`super::linear::verify`]), the secret being the one Asana handed over in the webhook's
//! handshake, as Asana documents
//! (<https://developers.asana.com/docs/webhooks-guide>, "Security";
//! <https://developers.asana.com/reference/createwebhook>).
//!
//! The handshake: when a webhook is created (`POST /api/1.0/webhooks` with this source's URL as
//! its `target`), Asana posts to the target a request carrying `X-Hook-Secret` and expects it
//! echoed in the answer's `X-Hook-Secret`. That request cannot be signed (it is how the secret
//! is handed over), so it is answered from the headers alone, before the source's secret is
//! looked at (`Provider::unsigned_handshake`), whether or not `ASANA_WEBHOOK_SECRET` is set yet:
//! it stores nothing, and its answer tells the sender only what it sent. The router logs that a
//! handshake came, never the value. The operator then sets `ASANA_WEBHOOK_SECRET` to that value
//! (each webhook has its own secret: several webhooks to one source are a comma-separated list,
//! all tried as during a rotation).
//!
//! Events come in batches, `{"events": [...]}`: the type is `events` whatever the batch holds
//! (it mixes resources and actions); the action is the event's `action` (`added`, `changed` …)
//! when the batch holds one. An empty batch is Asana's heartbeat: answered `200` and not stored.
//! Asana sends no delivery id; a retried batch (Asana retries for 24 hours) repeats its events,
//! so the dedupe key is made of the first event's `created_at`, user, resource, action and
//! changed field. No timestamp is signed, so there is no replay window.

use http::HeaderMap;

use super::signature::VerifyError;
use super::{
    Builtin, Decoded, Handshake, Outgoing, Provider, Request, SecretSet, Secrets, SendOptions,
    SignError, header_str, hmac_keys, linear,
};
use crate::event::{BodyError, Classified, Field, Fields, Probe};

pub struct Asana;

const ACTION: Field = Field::new(0);
const CREATED_AT: Field = Field::new(1);
const USER: Field = Field::new(2);
const RESOURCE: Field = Field::new(3);
const CHANGED_FIELD: Field = Field::new(4);
const SECOND_ACTION: Field = Field::new(5);
const SIGNATURE: &str = "x-hook-signature";
const HOOK_SECRET: &str = "x-hook-secret";
/// Asana's secrets are 64 hex digits; anything much longer is not a handshake.
const MAX_HOOK_SECRET: usize = 256;

impl Provider for Asana {
    fn name(&self) -> &'static str {
        "asana"
    }

    fn builtin(&self) -> Option<Builtin> {
        Some(Builtin {
            source: "asana",
            secret_env: &["ASANA_WEBHOOK_SECRET"],
            // Events name no workspace: the acting user.
            identifier: Some("payload.events.0.user.gid"),
        })
    }

    fn signature_headers(&self) -> &'static [&'static str] {
        &[SIGNATURE, HOOK_SECRET]
    }

    fn verify(&self, req: &Request<'_>, secrets: Option<&Secrets>) -> Result<(), VerifyError> {
        verify(hmac_keys(secrets)?, req.header(SIGNATURE), req.body)
    }

    fn probes(&self) -> &'static [Probe] {
        &[
            (&["events", "0", "action"], ACTION),
            (&["events", "0", "created_at"], CREATED_AT),
            (&["events", "0", "user", "gid"], USER),
            (&["events", "0", "resource", "gid"], RESOURCE),
            (&["events", "0", "change", "field"], CHANGED_FIELD),
            (&["events", "1", "action"], SECOND_ACTION),
        ]
    }

    /// `X-Hook-Secret`: echoed, before any secret is checked.
    fn unsigned_handshake(&self, headers: &HeaderMap) -> Option<Handshake> {
        let secret = header_str(headers, HOOK_SECRET).filter(|s| s.len() <= MAX_HOOK_SECRET)?;
        Some(Handshake::Headers(vec![(HOOK_SECRET, secret.to_string())]))
    }

    /// A signed batch without events: the heartbeat, answered and not stored.
    fn handshake(&self, body: &Decoded<'_>) -> Result<Option<Handshake>, BodyError> {
        let empty = body.fields.get(ACTION).is_none() && body.fields.get(CREATED_AT).is_none();
        Ok(empty.then(|| Handshake::Headers(Vec::new())))
    }

    fn classify(&self, _: &HeaderMap, fields: &Fields<'_>) -> Result<Classified, BodyError> {
        let single = fields.get(SECOND_ACTION).is_none();
        let delivery_id = fields.str(CREATED_AT).map(|at| {
            let part = |f| fields.str(f).unwrap_or("");
            format!(
                "{at}:{}:{}:{}:{}",
                part(USER),
                part(RESOURCE),
                part(ACTION),
                part(CHANGED_FIELD)
            )
        });
        Ok(Classified {
            event_type: "events".into(),
            action: fields.str(ACTION).filter(|_| single).map(str::to_string),
            delivery_id,
        })
    }

    fn compose(&self, out: &mut Outgoing, _: &SendOptions<'_>) -> Result<(), SignError> {
        out.header("user-agent", "Asana");
        Ok(())
    }

    fn sign(&self, out: &mut Outgoing, opts: &SendOptions<'_>) -> Result<(), SignError> {
        let signature = sign(opts.secret()?.as_bytes(), &out.body);
        out.header(SIGNATURE, signature);
        Ok(())
    }

    fn sample(&self) -> &'static str {
        include_str!("../../examples/asana-task.json")
    }
}

/// `X-Hook-Signature: <hex HMAC-SHA256(secret, body)>`: Linear's signature, under another
/// header name, so Linear's verifier (and its fuzz model).
pub fn verify(
    secrets: &SecretSet,
    signature: Option<&[u8]>,
    body: &[u8],
) -> Result<(), VerifyError> {
    linear::verify(secrets, signature, body)
}

/// The hex `X-Hook-Signature` of `body`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    linear::sign(secret, body)
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::event::ProbeSpec;

    // tests/vectors/asana.py
    const SECRET: &str = "b537207f20cbfa02357cf448134da559e8bd39d61597dcd5631b8012eae53e81";
    const BODY: &[u8] = br#"{"events":[{"user":{"gid":"1201234567890123","resource_type":"user"},"created_at":"2024-05-14T13:57:04.239Z","action":"changed","resource":{"gid":"1207654321098765","resource_type":"task"},"parent":null,"change":{"field":"completed","action":"changed"}}]}"#;
    const SIG: &str = "e999269f0d1841c6fbb870906ff1a11e1154009b39b3cbbee4959919b2d45638";
    const HEARTBEAT_SIG: &str = "10468027b67df18c739cc4794c6fc2d2806dcaaf2259fc3e1ed9d26433659853";
    const INVALID: Result<(), VerifyError> = Err(VerifyError::InvalidSignature);

    fn set(list: &str) -> SecretSet {
        SecretSet::hmac_from_list(list).unwrap()
    }

    #[test]
    fn asana_documented_algorithm_vector() {
        assert_eq!(sign(SECRET.as_bytes(), BODY), SIG);
        assert_eq!(sign(SECRET.as_bytes(), br#"{"events":[]}"#), HEARTBEAT_SIG);
        assert_eq!(verify(&set(SECRET), Some(SIG.as_bytes()), BODY), Ok(()));
    }

    #[test]
    fn asana_refusals_and_rotation() {
        let s = set(SECRET);
        let mut changed = BODY.to_vec();
        changed[12] ^= 1;
        assert_eq!(verify(&s, Some(SIG.as_bytes()), &changed), INVALID);
        assert_eq!(verify(&set("other"), Some(SIG.as_bytes()), BODY), INVALID);
        assert_eq!(verify(&s, None, BODY), INVALID);
        for bad in [
            b"".as_slice(),
            b"sha256=",
            &SIG.as_bytes()[1..],
            b"zz",
            b"\xff",
        ] {
            assert_eq!(verify(&s, Some(bad), BODY), INVALID, "{bad:?}");
        }
        let prefixed = format!("sha256={SIG}");
        assert_eq!(verify(&s, Some(prefixed.as_bytes()), BODY), INVALID);
        // Two webhooks (or a rotation): either secret.
        assert_eq!(
            verify(
                &set(&format!("another-webhook,{SECRET}")),
                Some(SIG.as_bytes()),
                BODY
            ),
            Ok(())
        );
    }

    #[test]
    fn the_hook_secret_is_echoed_before_any_secret() {
        let mut h = HeaderMap::new();
        assert_eq!(Asana.unsigned_handshake(&h), None);
        h.insert(HOOK_SECRET, SECRET.parse().unwrap());
        assert_eq!(
            Asana.unsigned_handshake(&h),
            Some(Handshake::Headers(vec![(HOOK_SECRET, SECRET.to_string())]))
        );
        h.insert(HOOK_SECRET, "".parse().unwrap());
        assert_eq!(Asana.unsigned_handshake(&h), None);
        h.insert(HOOK_SECRET, "x".repeat(300).parse().unwrap());
        assert_eq!(Asana.unsigned_handshake(&h), None);
        // Never archived.
        assert!(Asana.signature_headers().contains(&HOOK_SECRET));
    }

    fn fields(body: &Value) -> Fields<'static> {
        ProbeSpec::new(Asana.probes(), None).read_value(body)
    }

    #[test]
    fn heartbeats_are_answered_and_events_are_not() {
        let hs = |body: Value| {
            let f = fields(&body);
            Asana
                .handshake(&Decoded {
                    headers: &HeaderMap::new(),
                    bytes: b"{}",
                    fields: &f,
                    payload: None,
                })
                .unwrap()
        };
        assert_eq!(hs(json!({"events": []})), Some(Handshake::Headers(vec![])));
        assert_eq!(hs(serde_json::from_slice(BODY).unwrap()), None);
    }

    #[test]
    fn classify_batches() {
        let c = Asana
            .classify(
                &HeaderMap::new(),
                &fields(&serde_json::from_slice(BODY).unwrap()),
            )
            .unwrap();
        assert_eq!(
            c,
            Classified {
                event_type: "events".into(),
                action: Some("changed".into()),
                delivery_id: Some(
                    "2024-05-14T13:57:04.239Z:1201234567890123:1207654321098765:changed:completed"
                        .into()
                ),
            }
        );
        let two = json!({"events": [
            {"action": "added", "created_at": "t", "resource": {"gid": "1"}},
            {"action": "changed", "created_at": "t"}
        ]});
        let c = Asana.classify(&HeaderMap::new(), &fields(&two)).unwrap();
        assert_eq!(c.action, None);
        assert_eq!(c.delivery_id.as_deref(), Some("t::1:added:"));
    }
}
