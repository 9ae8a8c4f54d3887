//! Jira Cloud (admin webhooks registered with a secret, in Jira's System settings or through
//! the REST API): `X-Hub-Signature: sha256=<hex HMAC-SHA256(secret, body)>`, the event type in
//! the body's `webhookEvent` (`jira:issue_updated`, `comment_created`, `sprint_started`, …), the
//! issue event's `issue_event_type_name` (`issue_generic`, `issue_assigned`, …) as its action,
//! the delivery id in `X-Atlassian-Webhook-Identifier` (unique per site, the same on retries).
//! No timestamp is signed: no replay window. Webhooks of Connect and OAuth 2.0 apps are signed
//! with a JWT instead and are not accepted here.

use http::HeaderMap;

use super::signature::VerifyError;
use super::{
    Builtin, Outgoing, Provider, Request, SecretSet, Secrets, SendOptions, SignError, github,
    header_str, hmac_keys,
};
use crate::event::{BodyError, Classified, Field, Fields, Probe};

pub struct Jira;

const WEBHOOK_EVENT: Field = Field::new(0);
const ISSUE_EVENT_TYPE: Field = Field::new(1);
const SIGNATURE: &str = "x-hub-signature";
const IDENTIFIER: &str = "x-atlassian-webhook-identifier";

impl Provider for Jira {
    fn name(&self) -> &'static str {
        "jira"
    }

    fn builtin(&self) -> Option<Builtin> {
        Some(Builtin {
            source: "jira",
            secret_env: &["JIRA_WEBHOOK_SECRET"],
            identifier: Some("payload.user.accountId"),
        })
    }

    fn signature_headers(&self) -> &'static [&'static str] {
        &[SIGNATURE]
    }

    fn verify(&self, req: &Request<'_>, secrets: Option<&Secrets>) -> Result<(), VerifyError> {
        verify(hmac_keys(secrets)?, req.header(SIGNATURE), req.body)
    }

    fn probes(&self) -> &'static [Probe] {
        &[
            (&["webhookEvent"], WEBHOOK_EVENT),
            (&["issue_event_type_name"], ISSUE_EVENT_TYPE),
        ]
    }

    fn classify(&self, headers: &HeaderMap, fields: &Fields<'_>) -> Result<Classified, BodyError> {
        let event = fields
            .str(WEBHOOK_EVENT)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                BodyError("a Jira webhook needs a string \"webhookEvent\" field".into())
            })?;
        Ok(Classified {
            event_type: event.to_string(),
            action: fields.str(ISSUE_EVENT_TYPE).map(str::to_string),
            delivery_id: header_str(headers, IDENTIFIER).map(str::to_string),
        })
    }

    fn compose(&self, out: &mut Outgoing, opts: &SendOptions<'_>) -> Result<(), SignError> {
        if let Some(event) = opts.event {
            out.set_json_str(&["webhookEvent"], event)?;
        }
        out.header(IDENTIFIER, uuid::Uuid::new_v4().to_string());
        out.header("x-atlassian-webhook-flow", "Primary");
        Ok(())
    }

    fn sign(&self, out: &mut Outgoing, opts: &SendOptions<'_>) -> Result<(), SignError> {
        let signature = sign(opts.secret()?.as_bytes(), &out.body);
        out.header(SIGNATURE, signature);
        Ok(())
    }

    fn sample(&self) -> &'static str {
        include_str!("../../examples/jira-issue_updated.json")
    }
}

/// `X-Hub-Signature: sha256=<hex HMAC-SHA256(secret, body)>` (WebSub's `method=signature`).
pub fn verify(
    secrets: &SecretSet,
    signature: Option<&[u8]>,
    body: &[u8],
) -> Result<(), VerifyError> {
    github::verify(secrets, signature, body)
}

/// `sha256=<hex>`, the value of `X-Hub-Signature`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    github::sign(secret, body)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::event::ProbeSpec;

    // tests/vectors/atlassian.py: the worked example of Jira's "Secure admin webhooks".
    const ATLASSIAN_SECRET: &str = "It's a Secret to Everybody";
    const ATLASSIAN_BODY: &[u8] = b"Hello World!";
    const ATLASSIAN_SIG: &str =
        "sha256=a4771c39fbe90f317c7824e83ddef3caae9cb3d976c214ace1f2937e133263c9";
    const INVALID: Result<(), VerifyError> = Err(VerifyError::InvalidSignature);

    fn set(list: &str) -> SecretSet {
        SecretSet::hmac_from_list(list).unwrap()
    }

    #[test]
    fn jira_documented_vector() {
        assert_eq!(
            sign(ATLASSIAN_SECRET.as_bytes(), ATLASSIAN_BODY),
            ATLASSIAN_SIG
        );
        let secrets = Jira.parse_secrets(ATLASSIAN_SECRET).unwrap();
        let mut h = HeaderMap::new();
        h.insert(SIGNATURE, http::HeaderValue::from_static(ATLASSIAN_SIG));
        let req = Request {
            source: "jira",
            line: super::super::RequestLine::post("/webhook/jira"),
            public_url: None,
            headers: &h,
            body: ATLASSIAN_BODY,
            now_ms: 0,
            agent_key: &|_| false,
        };
        assert_eq!(Jira.verify(&req, Some(&secrets)), Ok(()));
        assert_eq!(Jira.replay_window(), None);
    }

    #[test]
    fn jira_refuses_changed_wrong_missing_and_malformed_and_rotates() {
        let s = set(ATLASSIAN_SECRET);
        let sig = Some(ATLASSIAN_SIG.as_bytes());
        assert_eq!(verify(&s, sig, b"Hello World!\n"), INVALID);
        assert_eq!(
            verify(&set("It's a secret to everybody"), sig, ATLASSIAN_BODY),
            INVALID
        );
        assert_eq!(verify(&s, None, ATLASSIAN_BODY), INVALID);
        for bad in [
            b"".as_slice(),
            b"sha256",
            b"SHA256=a4771c39fbe90f317c7824e83ddef3caae9cb3d976c214ace1f2937e133263c9",
            b"sha256=a4771c39fbe90f317c7824e83ddef3caae9cb3d976c214ace1f2937e133263c",
        ] {
            assert_eq!(verify(&s, Some(bad), ATLASSIAN_BODY), INVALID, "{bad:?}");
        }
        let both = set(&format!("new-secret,{ATLASSIAN_SECRET}"));
        assert_eq!(verify(&both, sig, ATLASSIAN_BODY), Ok(()));
        let by_new = sign(b"new-secret", ATLASSIAN_BODY);
        assert_eq!(
            verify(&both, Some(by_new.as_bytes()), ATLASSIAN_BODY),
            Ok(())
        );
    }

    #[test]
    fn classify_reads_webhook_event_and_issue_event_type() {
        let spec = ProbeSpec::new(Jira.probes(), None);
        let fields = crate::event::probe_json_object(Jira.sample().as_bytes(), &spec)
            .unwrap()
            .fields;
        let mut h = HeaderMap::new();
        h.insert(IDENTIFIER, http::HeaderValue::from_static("1791ec6d-3d4d"));
        let c = Jira.classify(&h, &fields).unwrap();
        assert_eq!(c.event_type, "jira:issue_updated");
        assert_eq!(c.action.as_deref(), Some("issue_generic"));
        assert_eq!(c.delivery_id.as_deref(), Some("1791ec6d-3d4d"));
        // A sprint event: no issue event type, no identifier header.
        let sprint = spec.read_value(&json!({"webhookEvent": "sprint_started", "sprint": {}}));
        let c = Jira.classify(&HeaderMap::new(), &sprint).unwrap();
        assert_eq!(
            (c.event_type.as_str(), c.action, c.delivery_id),
            ("sprint_started", None, None)
        );
        for bad in [
            json!({}),
            json!({"webhookEvent": ""}),
            json!({"webhookEvent": 3}),
        ] {
            assert!(Jira.classify(&h, &spec.read_value(&bad)).is_err(), "{bad}");
        }
    }
}
