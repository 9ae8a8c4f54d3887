//! Vercel: `x-vercel-signature: <hex HMAC-SHA1(secret, body)>`, the secret shown once when a
//! team's webhook is created (an integration's webhooks are signed with its client secret); the
//! body's `type` as the event type (`deployment.created`, `deployment.succeeded`,
//! `project.created`, …), its `id` as the delivery id. No timestamp is signed: no replay window.
//! Like Intercom's, its secrets are HMAC-SHA1 keys.

use http::HeaderMap;

use super::signature::{SecretError, VerifyError};
use super::{
    Builtin, Outgoing, Provider, Request, SecretSet, Secrets, SendOptions, SignError, hmac_keys,
    intercom,
};
use crate::event::{BodyError, Classified, Field, Fields, Probe};

pub struct Vercel;

const TYPE: Field = Field::new(0);
const ID: Field = Field::new(1);
const SIGNATURE: &str = "x-vercel-signature";

impl Provider for Vercel {
    fn name(&self) -> &'static str {
        "vercel"
    }

    fn builtin(&self) -> Option<Builtin> {
        Some(Builtin {
            source: "vercel",
            secret_env: &["VERCEL_WEBHOOK_SECRET"],
            identifier: Some("payload.payload.team.id"),
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
        &[(&["type"], TYPE), (&["id"], ID)]
    }

    fn classify(&self, _: &HeaderMap, fields: &Fields<'_>) -> Result<Classified, BodyError> {
        let t = fields
            .str(TYPE)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| BodyError("a Vercel webhook needs a string \"type\" field".into()))?;
        Ok(Classified {
            event_type: t.to_string(),
            action: None,
            delivery_id: fields.str(ID).map(str::to_string),
        })
    }

    fn compose(&self, out: &mut Outgoing, opts: &SendOptions<'_>) -> Result<(), SignError> {
        if let Some(event) = opts.event {
            out.set_json_str(&["type"], event)?;
        }
        Ok(())
    }

    fn sign(&self, out: &mut Outgoing, opts: &SendOptions<'_>) -> Result<(), SignError> {
        let signature = sign(opts.secret()?.as_bytes(), &out.body);
        out.header(SIGNATURE, signature);
        Ok(())
    }

    fn sample(&self) -> &'static str {
        include_str!("../../examples/vercel-deployment.json")
    }
}

/// `x-vercel-signature: <hex HMAC-SHA1(secret, body)>`, no prefix; `secrets` are SHA-1 keys.
pub fn verify(
    secrets: &SecretSet,
    signature: Option<&[u8]>,
    body: &[u8],
) -> Result<(), VerifyError> {
    let hex = signature
        .map(<[u8]>::trim_ascii)
        .ok_or(VerifyError::InvalidSignature)?;
    intercom::verify_sha1_hex(secrets, hex, body)
}

/// `<hex>`, the value of `x-vercel-signature`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    intercom::sha1_hex(secret, body)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::event::ProbeSpec;

    // tests/vectors/vercel.py (HMAC-SHA1 hex, as Vercel's docs compute it).
    const VERCEL_SECRET: &str = "vercel-webhook-secret-9a8b7c6d";
    const VERCEL_BODY: &[u8] = br#"{"id":"uev_2XqF5example","type":"deployment.created","createdAt":1698345600000,"payload":{"team":{"id":"team_Vexample"},"deployment":{"id":"dpl_FjHqKqFexample"}}}"#;
    const VERCEL_SIG: &str = "5ac7aa21d608b7473466844a603708748fb810f1";
    const INVALID: Result<(), VerifyError> = Err(VerifyError::InvalidSignature);

    fn set(list: &str) -> SecretSet {
        SecretSet::hmac_sha1_from_list(list).unwrap()
    }

    #[test]
    fn vercel_vector() {
        assert_eq!(sign(VERCEL_SECRET.as_bytes(), VERCEL_BODY), VERCEL_SIG);
        let Secrets::Hmac(s) = Vercel.parse_secrets(VERCEL_SECRET).unwrap() else {
            panic!("HMAC keys");
        };
        assert_eq!(verify(&s, Some(VERCEL_SIG.as_bytes()), VERCEL_BODY), Ok(()));
        assert_eq!(
            verify(&s, Some(format!(" {VERCEL_SIG} ").as_bytes()), VERCEL_BODY),
            Ok(())
        );
        assert_eq!(Vercel.replay_window(), None);
    }

    #[test]
    fn vercel_refuses_changed_wrong_missing_malformed_and_rotates() {
        let s = set(VERCEL_SECRET);
        let sig = Some(VERCEL_SIG.as_bytes());
        assert_eq!(verify(&s, sig, &VERCEL_BODY[1..]), INVALID);
        assert_eq!(verify(&set("wrong"), sig, VERCEL_BODY), INVALID);
        assert_eq!(verify(&s, None, VERCEL_BODY), INVALID);
        for bad in [
            b"".as_slice(),
            b"sha1=5ac7aa21d608b7473466844a603708748fb810f1",
            &VERCEL_SIG.as_bytes()[2..],
            b"5ac7aa21d608b7473466844a603708748fb810f15ac7aa21d608b7473466844a",
        ] {
            assert_eq!(verify(&s, Some(bad), VERCEL_BODY), INVALID, "{bad:?}");
        }
        let both = set(&format!("next,{VERCEL_SECRET}"));
        assert_eq!(verify(&both, sig, VERCEL_BODY), Ok(()));
        let by_next = sign(b"next", VERCEL_BODY);
        assert_eq!(verify(&both, Some(by_next.as_bytes()), VERCEL_BODY), Ok(()));
    }

    #[test]
    fn classify_reads_type_and_id() {
        let spec = ProbeSpec::new(Vercel.probes(), None);
        let fields = crate::event::probe_json_object(Vercel.sample().as_bytes(), &spec)
            .unwrap()
            .fields;
        let c = Vercel.classify(&HeaderMap::new(), &fields).unwrap();
        assert_eq!(c.event_type, "deployment.created");
        assert_eq!(
            c.delivery_id.as_deref(),
            Some("uev_2XqF5NVgdXr6L7oHrj7fhbk4")
        );
        let project = spec.read_value(&json!({"type": "project.created"}));
        let c = Vercel.classify(&HeaderMap::new(), &project).unwrap();
        assert_eq!(
            (c.event_type.as_str(), c.delivery_id),
            ("project.created", None)
        );
        assert!(
            Vercel
                .classify(&HeaderMap::new(), &spec.read_value(&json!({"type": ""})))
                .is_err()
        );
    }
}
