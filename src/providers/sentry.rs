//! Sentry (integration platform webhooks of an internal or public integration):
//! `Sentry-Hook-Signature: <hex HMAC-SHA256(client secret, body)>`, the resource in
//! `Sentry-Hook-Resource` as the event type (`issue`, `error`, `event_alert`, `metric_alert`,
//! `comment`, `installation`, …), the body's `action` as its action, `Request-ID` as the delivery
//! id.
//!
//! Sentry also sends `Sentry-Hook-Timestamp`, but does not sign it (its `build_signature` MACs
//! the body alone), so it proves nothing and there is no replay window: a replayed request is
//! caught by its `Request-ID` instead.

use http::HeaderMap;

use super::signature::VerifyError;
use super::{
    Builtin, Outgoing, Provider, Request, SecretSet, Secrets, SendOptions, SignError, header_str,
    hmac_keys, linear,
};
use crate::event::{BodyError, Classified, Field, Fields, Probe};

pub struct Sentry;

const ACTION: Field = Field::new(0);
const SIGNATURE: &str = "sentry-hook-signature";
const RESOURCE: &str = "sentry-hook-resource";
const REQUEST_ID: &str = "request-id";

impl Provider for Sentry {
    fn name(&self) -> &'static str {
        "sentry"
    }

    fn builtin(&self) -> Option<Builtin> {
        Some(Builtin {
            source: "sentry",
            secret_env: &["SENTRY_WEBHOOK_SECRET"],
            identifier: Some("payload.installation.uuid"),
        })
    }

    fn signature_headers(&self) -> &'static [&'static str] {
        &[SIGNATURE]
    }

    fn verify(&self, req: &Request<'_>, secrets: Option<&Secrets>) -> Result<(), VerifyError> {
        verify(hmac_keys(secrets)?, req.header(SIGNATURE), req.body)
    }

    fn probes(&self) -> &'static [Probe] {
        &[(&["action"], ACTION)]
    }

    fn classify(&self, headers: &HeaderMap, fields: &Fields<'_>) -> Result<Classified, BodyError> {
        let resource = header_str(headers, RESOURCE)
            .ok_or_else(|| BodyError("missing Sentry-Hook-Resource header".into()))?;
        Ok(Classified {
            event_type: resource.to_string(),
            action: fields.str(ACTION).map(str::to_string),
            delivery_id: header_str(headers, REQUEST_ID).map(str::to_string),
        })
    }

    fn compose(&self, out: &mut Outgoing, opts: &SendOptions<'_>) -> Result<(), SignError> {
        out.header(RESOURCE, opts.event.unwrap_or("issue"));
        out.header(REQUEST_ID, uuid::Uuid::new_v4().simple().to_string());
        // Sent by Sentry, signed by nothing.
        out.header("sentry-hook-timestamp", (opts.now_ms / 1000).to_string());
        Ok(())
    }

    fn sign(&self, out: &mut Outgoing, opts: &SendOptions<'_>) -> Result<(), SignError> {
        let signature = sign(opts.secret()?.as_bytes(), &out.body);
        out.header(SIGNATURE, signature);
        Ok(())
    }

    fn sample(&self) -> &'static str {
        include_str!("../../examples/sentry-issue.json")
    }
}

/// `Sentry-Hook-Signature: <hex HMAC-SHA256(client secret, body)>`, without a prefix: Linear's
/// scheme under another header.
pub fn verify(
    secrets: &SecretSet,
    signature: Option<&[u8]>,
    body: &[u8],
) -> Result<(), VerifyError> {
    linear::verify(secrets, signature, body)
}

/// `<hex>`, the value of `Sentry-Hook-Signature`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    linear::sign(secret, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::ProbeSpec;

    // tests/vectors/sentry.py: Sentry's own SentryApp.build_signature.
    const SENTRY_SECRET: &str = "6b9d3d8a0e5c4f7a8b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a";
    const SENTRY_BODY: &[u8] = br#"{"action": "created", "installation": {"uuid": "a8e5d37a-696c-4c54-adb5-b3f28d64c7de"}, "data": {"issue": {"id": "1170820242"}}, "actor": {"type": "application", "id": "sentry", "name": "Sentry"}}"#;
    const SENTRY_SIG: &str = "422807bb11ed91ae2d14de6958d7f59255af066d581c9dab4e4125691715d7ac";
    const INVALID: Result<(), VerifyError> = Err(VerifyError::InvalidSignature);

    fn set(list: &str) -> SecretSet {
        SecretSet::hmac_from_list(list).unwrap()
    }

    fn hdrs(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, http::HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn req<'a>(headers: &'a HeaderMap, body: &'a [u8]) -> Request<'a> {
        Request {
            source: "sentry",
            line: super::super::RequestLine::post("/webhook/sentry"),
            public_url: None,
            headers,
            body,
            now_ms: 0,
            agent_key: &|_| false,
        }
    }

    #[test]
    fn sentry_vector_from_its_build_signature() {
        assert_eq!(sign(SENTRY_SECRET.as_bytes(), SENTRY_BODY), SENTRY_SIG);
        let secrets = Sentry.parse_secrets(SENTRY_SECRET).unwrap();
        let h = hdrs(&[(SIGNATURE, SENTRY_SIG)]);
        assert_eq!(Sentry.verify(&req(&h, SENTRY_BODY), Some(&secrets)), Ok(()));
        // No window: the unsigned timestamp header changes nothing, however old.
        let old = hdrs(&[(SIGNATURE, SENTRY_SIG), ("sentry-hook-timestamp", "1")]);
        assert_eq!(
            Sentry.verify(&req(&old, SENTRY_BODY), Some(&secrets)),
            Ok(())
        );
        assert_eq!(Sentry.replay_window(), None);
    }

    #[test]
    fn sentry_refuses_changed_wrong_missing_and_malformed() {
        let s = set(SENTRY_SECRET);
        let mut body = SENTRY_BODY.to_vec();
        body[3] ^= 1;
        assert_eq!(verify(&s, Some(SENTRY_SIG.as_bytes()), &body), INVALID);
        assert_eq!(
            verify(&set("other"), Some(SENTRY_SIG.as_bytes()), SENTRY_BODY),
            INVALID
        );
        assert_eq!(verify(&s, None, SENTRY_BODY), INVALID);
        for bad in [
            b"".as_slice(),
            b"sha256=422807bb11ed91ae2d14de6958d7f59255af066d581c9dab4e4125691715d7ac",
            &SENTRY_SIG.as_bytes()[1..],
            b"zz2807bb11ed91ae2d14de6958d7f59255af066d581c9dab4e4125691715d7ac",
            b"\xff\xfe",
        ] {
            assert_eq!(verify(&s, Some(bad), SENTRY_BODY), INVALID, "{bad:?}");
        }
        assert_eq!(
            Sentry.verify(&req(&hdrs(&[]), SENTRY_BODY), Some(&Secrets::Hmac(s))),
            INVALID
        );
    }

    #[test]
    fn sentry_rotation() {
        let both = set(&format!("old-secret, {SENTRY_SECRET}"));
        assert_eq!(
            verify(&both, Some(SENTRY_SIG.as_bytes()), SENTRY_BODY),
            Ok(())
        );
        let by_old = sign(b"old-secret", SENTRY_BODY);
        assert_eq!(verify(&both, Some(by_old.as_bytes()), SENTRY_BODY), Ok(()));
        assert_eq!(
            verify(&set("a,b"), Some(SENTRY_SIG.as_bytes()), SENTRY_BODY),
            INVALID
        );
    }

    #[test]
    fn classify_reads_the_resource_header_and_body_action() {
        let spec = ProbeSpec::new(Sentry.probes(), None);
        let text = Sentry.sample().as_bytes();
        let fields = crate::event::probe_json_object(text, &spec).unwrap().fields;
        let c = Sentry
            .classify(
                &hdrs(&[(RESOURCE, "issue"), (REQUEST_ID, "b1c2d3")]),
                &fields,
            )
            .unwrap();
        assert_eq!(c.event_type, "issue");
        assert_eq!(c.action.as_deref(), Some("created"));
        assert_eq!(c.delivery_id.as_deref(), Some("b1c2d3"));
        // An alert without an action, and no Request-ID.
        let c = Sentry
            .classify(&hdrs(&[(RESOURCE, "event_alert")]), &Fields::default())
            .unwrap();
        assert_eq!(
            (c.event_type.as_str(), c.action, c.delivery_id),
            ("event_alert", None, None)
        );
        assert!(Sentry.classify(&hdrs(&[]), &fields).is_err());
    }
}
