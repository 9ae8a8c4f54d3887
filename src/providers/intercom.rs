//! Intercom: `X-Hub-Signature: sha1=<hex HMAC-SHA1(client secret, body)>`, the app's client
//! secret (Developer Hub, Basic information) as the key; the body's `topic` as the event type
//! (`conversation.user.created`, `contact.user.created`, `ping`, …), its `id` (`notif_…`) as the
//! delivery id. No timestamp is signed: no replay window.
//!
//! Intercom still signs with SHA-1, so its secrets are HMAC-SHA1 keys
//! (`SecretSet::hmac_sha1_from_list`). The `ping` topic Intercom sends when the endpoint is
//! tested is signed like any notification and stored as an event. Intercom validates a new
//! endpoint URL with a `HEAD` request first; see docs/providers.md.

use http::HeaderMap;
use ring::hmac;

use super::signature::{SecretError, VerifyError, mac_of};
use super::{
    Builtin, Outgoing, Provider, Request, SecretSet, Secrets, SendOptions, SignError, hmac_keys,
};
use crate::event::{BodyError, Classified, Field, Fields, Probe};

pub struct Intercom;

/// The length of an HMAC-SHA1 MAC.
pub const SHA1_LEN: usize = 20;

const TOPIC: Field = Field::new(0);
const ID: Field = Field::new(1);
const SIGNATURE: &str = "x-hub-signature";

impl Provider for Intercom {
    fn name(&self) -> &'static str {
        "intercom"
    }

    fn builtin(&self) -> Option<Builtin> {
        Some(Builtin {
            source: "intercom",
            secret_env: &["INTERCOM_WEBHOOK_SECRET"],
            identifier: Some("payload.app_id"),
        })
    }

    fn signature_headers(&self) -> &'static [&'static str] {
        &[SIGNATURE]
    }

    fn parse_secrets(&self, list: &str) -> Result<Secrets, SecretError> {
        SecretSet::hmac_sha1_from_list(list).map(Secrets::Hmac)
    }

    fn verify(&self, req: &Request<'_>, secrets: Option<&Secrets>) -> Result<(), VerifyError> {
        verify(hmac_keys(secrets)?, req.header(SIGNATURE), req.body)
    }

    fn probes(&self) -> &'static [Probe] {
        &[(&["topic"], TOPIC), (&["id"], ID)]
    }

    fn classify(&self, _: &HeaderMap, fields: &Fields<'_>) -> Result<Classified, BodyError> {
        let topic = fields
            .str(TOPIC)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| BodyError("an Intercom notification needs a string \"topic\"".into()))?;
        Ok(Classified {
            event_type: topic.to_string(),
            action: None,
            delivery_id: fields.str(ID).map(str::to_string),
        })
    }

    fn compose(&self, out: &mut Outgoing, opts: &SendOptions<'_>) -> Result<(), SignError> {
        if let Some(event) = opts.event {
            out.set_json_str(&["topic"], event)?;
        }
        out.header("user-agent", "intercom-parrot-service-client/1.0");
        Ok(())
    }

    fn sign(&self, out: &mut Outgoing, opts: &SendOptions<'_>) -> Result<(), SignError> {
        let signature = sign(opts.secret()?.as_bytes(), &out.body);
        out.header(SIGNATURE, signature);
        Ok(())
    }

    fn sample(&self) -> &'static str {
        include_str!("../../examples/intercom-conversation.json")
    }
}

/// `X-Hub-Signature: sha1=<hex HMAC-SHA1(client secret, body)>`; `secrets` are SHA-1 keys.
pub fn verify(
    secrets: &SecretSet,
    signature: Option<&[u8]>,
    body: &[u8],
) -> Result<(), VerifyError> {
    let hex = signature
        .map(<[u8]>::trim_ascii)
        .and_then(|s| s.strip_prefix(b"sha1="))
        .ok_or(VerifyError::InvalidSignature)?;
    verify_sha1_hex(secrets, hex, body)
}

/// Whether `hex` (either case) is some SHA-1 key's HMAC of `body` (Intercom, Vercel).
pub fn verify_sha1_hex(secrets: &SecretSet, hex: &[u8], body: &[u8]) -> Result<(), VerifyError> {
    let mut mac = [0u8; SHA1_LEN];
    hex::decode_to_slice(hex, &mut mac).map_err(|_| VerifyError::InvalidSignature)?;
    secrets.verify_body(body, &mac)
}

/// Lowercase hex HMAC-SHA1 of `body` under `secret`.
pub fn sha1_hex(secret: &[u8], body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    hex::encode(mac_of(&key, &[body]))
}

/// `sha1=<hex>`, the value of `X-Hub-Signature`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    format!("sha1={}", sha1_hex(secret, body))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::event::ProbeSpec;

    // tests/vectors/intercom.py (HMAC-SHA1, RFC 2104, as Intercom documents it).
    const INTERCOM_SECRET: &str = "intercom-client-secret-0f1e2d3c";
    const INTERCOM_BODY: &[u8] = br#"{"type":"notification_event","app_id":"a86dr8yl","id":"notif_78c122d0-23ba-11e4-9464-79b01267cc2e","topic":"user.created","data":{"type":"notification_event_data","item":{"type":"user","id":"530370b477ad7120001d"}}}"#;
    const INTERCOM_SIG: &str = "sha1=070521ced61702153eb7daed580d5559c1a0e0b1";
    const INVALID: Result<(), VerifyError> = Err(VerifyError::InvalidSignature);

    fn set(list: &str) -> SecretSet {
        SecretSet::hmac_sha1_from_list(list).unwrap()
    }

    #[test]
    fn intercom_vector() {
        assert_eq!(
            sign(INTERCOM_SECRET.as_bytes(), INTERCOM_BODY),
            INTERCOM_SIG
        );
        let Secrets::Hmac(s) = Intercom.parse_secrets(INTERCOM_SECRET).unwrap() else {
            panic!("HMAC keys");
        };
        assert_eq!(
            verify(&s, Some(INTERCOM_SIG.as_bytes()), INTERCOM_BODY),
            Ok(())
        );
        let upper = format!("sha1={}", INTERCOM_SIG[5..].to_uppercase());
        assert_eq!(verify(&s, Some(upper.as_bytes()), INTERCOM_BODY), Ok(()));
        // The same secret as a SHA-256 key does not verify a SHA-1 signature.
        let sha256 = SecretSet::hmac_from_list(INTERCOM_SECRET).unwrap();
        assert_eq!(
            verify(&sha256, Some(INTERCOM_SIG.as_bytes()), INTERCOM_BODY),
            INVALID
        );
        assert_eq!(Intercom.replay_window(), None);
    }

    #[test]
    fn intercom_refuses_changed_wrong_missing_and_malformed() {
        let s = set(INTERCOM_SECRET);
        let sig = Some(INTERCOM_SIG.as_bytes());
        let mut body = INTERCOM_BODY.to_vec();
        body[10] ^= 0x20;
        assert_eq!(verify(&s, sig, &body), INVALID);
        assert_eq!(verify(&set("other"), sig, INTERCOM_BODY), INVALID);
        assert_eq!(verify(&s, None, INTERCOM_BODY), INVALID);
        for bad in [
            b"".as_slice(),
            &INTERCOM_SIG.as_bytes()[5..],
            b"sha256=070521ced61702153eb7daed580d5559c1a0e0b1",
            b"sha1=070521ced61702153eb7daed580d5559c1a0e0b",
            b"sha1=070521ced61702153eb7daed580d5559c1a0e0b100",
            b"sha1=g70521ced61702153eb7daed580d5559c1a0e0b1",
            b"sha1=\xff",
        ] {
            assert_eq!(verify(&s, Some(bad), INTERCOM_BODY), INVALID, "{bad:?}");
        }
    }

    #[test]
    fn intercom_rotation() {
        let both = set(&format!("rotated-out, {INTERCOM_SECRET}"));
        assert_eq!(both.len(), 2);
        assert_eq!(
            verify(&both, Some(INTERCOM_SIG.as_bytes()), INTERCOM_BODY),
            Ok(())
        );
        let old = sign(b"rotated-out", INTERCOM_BODY);
        assert_eq!(verify(&both, Some(old.as_bytes()), INTERCOM_BODY), Ok(()));
        assert_eq!(
            verify(&set("x,y"), Some(old.as_bytes()), INTERCOM_BODY),
            INVALID
        );
    }

    #[test]
    fn classify_reads_topic_and_id() {
        let spec = ProbeSpec::new(Intercom.probes(), None);
        let fields = crate::event::probe_json_object(Intercom.sample().as_bytes(), &spec)
            .unwrap()
            .fields;
        let c = Intercom.classify(&HeaderMap::new(), &fields).unwrap();
        assert_eq!(c.event_type, "conversation.user.created");
        assert_eq!(c.action, None);
        assert_eq!(
            c.delivery_id.as_deref(),
            Some("notif_4e3504a3-ba3f-46dc-ab48-8e4d5bdfdf4e")
        );
        let ping = spec
            .read_value(&json!({"type": "notification_event", "topic": "ping", "id": "notif_1"}));
        assert_eq!(
            Intercom
                .classify(&HeaderMap::new(), &ping)
                .unwrap()
                .event_type,
            "ping"
        );
        assert!(
            Intercom
                .classify(&HeaderMap::new(), &spec.read_value(&json!({"id": "x"})))
                .is_err()
        );
    }
}
