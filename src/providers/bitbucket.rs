//! Bitbucket Cloud: `X-Hub-Signature: sha256=<hex HMAC-SHA256(secret, body)>` (a webhook with a
//! secret; one without sends no signature and is refused), the event key in `X-Event-Key`, the
//! delivery id in `X-Request-UUID`.
//!
//! The event key is `resource:action` (`repo:push`, `pullrequest:created`,
//! `pullrequest:comment_created`, `issue:updated`): it is split at its first colon into the
//! event's `type` (`repo`, `pullrequest`, `issue`, `project`) and `action` (`push`, `created`, …),
//! as GitHub's `pull_request` + `opened`; a key without a colon is the type alone. The whole key
//! stays in `metadata.headers` (`x-event-key`). Bitbucket Data Center signs the same way and
//! names its delivery `X-Request-Id`, which is read when `X-Request-UUID` is absent. No
//! timestamp is signed: no replay window.

use http::HeaderMap;

use super::signature::VerifyError;
use super::{
    Builtin, Outgoing, Provider, Request, SecretSet, Secrets, SendOptions, SignError, github,
    header_str, hmac_keys,
};
use crate::event::{BodyError, Classified, Fields, Probe};

pub struct Bitbucket;

const SIGNATURE: &str = "x-hub-signature";
const EVENT_KEY: &str = "x-event-key";
const REQUEST_UUID: &str = "x-request-uuid";

impl Provider for Bitbucket {
    fn name(&self) -> &'static str {
        "bitbucket"
    }

    fn builtin(&self) -> Option<Builtin> {
        Some(Builtin {
            source: "bitbucket",
            secret_env: &["BITBUCKET_WEBHOOK_SECRET"],
            identifier: Some("payload.repository.full_name"),
        })
    }

    fn signature_headers(&self) -> &'static [&'static str] {
        &[SIGNATURE]
    }

    fn verify(&self, req: &Request<'_>, secrets: Option<&Secrets>) -> Result<(), VerifyError> {
        verify(hmac_keys(secrets)?, req.header(SIGNATURE), req.body)
    }

    fn probes(&self) -> &'static [Probe] {
        &[]
    }

    fn classify(&self, headers: &HeaderMap, _: &Fields<'_>) -> Result<Classified, BodyError> {
        let key = header_str(headers, EVENT_KEY)
            .ok_or_else(|| BodyError("missing X-Event-Key header".into()))?;
        let (event_type, action) = split_event_key(key);
        Ok(Classified {
            event_type: event_type.to_string(),
            action: action.map(str::to_string),
            delivery_id: header_str(headers, REQUEST_UUID)
                .or_else(|| header_str(headers, "x-request-id"))
                .map(str::to_string),
        })
    }

    fn compose(&self, out: &mut Outgoing, opts: &SendOptions<'_>) -> Result<(), SignError> {
        out.header("user-agent", "Bitbucket-Webhooks/2.0");
        out.header(EVENT_KEY, opts.event.unwrap_or("repo:push"));
        out.header(REQUEST_UUID, uuid::Uuid::new_v4().to_string());
        out.header("x-hook-uuid", uuid::Uuid::new_v4().to_string());
        out.header("x-attempt-number", "1");
        Ok(())
    }

    fn sign(&self, out: &mut Outgoing, opts: &SendOptions<'_>) -> Result<(), SignError> {
        let signature = sign(opts.secret()?.as_bytes(), &out.body);
        out.header(SIGNATURE, signature);
        Ok(())
    }

    fn sample(&self) -> &'static str {
        include_str!("../../examples/bitbucket-repo_push.json")
    }
}

/// `repo:push` → (`repo`, `push`); `pr:reviewer:approved` → (`pr`, `reviewer:approved`); a key
/// without a colon, or with nothing on one side of it, is the type alone.
pub fn split_event_key(key: &str) -> (&str, Option<&str>) {
    match key.split_once(':') {
        Some((resource, action)) if !resource.is_empty() && !action.is_empty() => {
            (resource, Some(action))
        }
        _ => (key, None),
    }
}

/// `X-Hub-Signature: sha256=<hex HMAC-SHA256(secret, body)>`: GitHub's scheme under the header
/// GitHub uses for SHA-1.
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
    use super::*;

    // tests/vectors/atlassian.py: Atlassian's documented example (Jira "Secure admin webhooks",
    // the same scheme as Bitbucket's).
    const ATLASSIAN_SECRET: &str = "It's a Secret to Everybody";
    const ATLASSIAN_BODY: &[u8] = b"Hello World!";
    const ATLASSIAN_SIG: &str =
        "sha256=a4771c39fbe90f317c7824e83ddef3caae9cb3d976c214ace1f2937e133263c9";
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

    #[test]
    fn bitbucket_atlassian_vector() {
        assert_eq!(
            sign(ATLASSIAN_SECRET.as_bytes(), ATLASSIAN_BODY),
            ATLASSIAN_SIG
        );
        let secrets = Bitbucket.parse_secrets(ATLASSIAN_SECRET).unwrap();
        let h = hdrs(&[(SIGNATURE, ATLASSIAN_SIG)]);
        let req = Request {
            source: "bitbucket",
            line: super::super::RequestLine::post("/webhook/bitbucket"),
            public_url: None,
            headers: &h,
            body: ATLASSIAN_BODY,
            now_ms: 0,
            agent_key: &|_| false,
        };
        assert_eq!(Bitbucket.verify(&req, Some(&secrets)), Ok(()));
        assert_eq!(Bitbucket.replay_window(), None);
    }

    #[test]
    fn bitbucket_refuses_changed_wrong_missing_and_malformed() {
        let s = set(ATLASSIAN_SECRET);
        let sig = Some(ATLASSIAN_SIG.as_bytes());
        assert_eq!(verify(&s, sig, b"Hello World?"), INVALID);
        assert_eq!(verify(&set("nope"), sig, ATLASSIAN_BODY), INVALID);
        assert_eq!(verify(&s, None, ATLASSIAN_BODY), INVALID);
        for bad in [
            b"".as_slice(),
            &ATLASSIAN_SIG.as_bytes()[7..],
            b"sha1=a4771c39fbe90f317c7824e83ddef3caae9cb3d9",
            b"sha256=a4771c39",
            b"sha256=\xff",
        ] {
            assert_eq!(verify(&s, Some(bad), ATLASSIAN_BODY), INVALID, "{bad:?}");
        }
    }

    #[test]
    fn bitbucket_rotation() {
        let both = set(&format!("previous,{ATLASSIAN_SECRET}"));
        assert_eq!(
            verify(&both, Some(ATLASSIAN_SIG.as_bytes()), ATLASSIAN_BODY),
            Ok(())
        );
        let by_previous = sign(b"previous", ATLASSIAN_BODY);
        assert_eq!(
            verify(&both, Some(by_previous.as_bytes()), ATLASSIAN_BODY),
            Ok(())
        );
    }

    #[test]
    fn classify_splits_the_event_key() {
        let none = Fields::default();
        let c = Bitbucket
            .classify(
                &hdrs(&[(EVENT_KEY, "pullrequest:created"), (REQUEST_UUID, "u-1")]),
                &none,
            )
            .unwrap();
        assert_eq!(c.event_type, "pullrequest");
        assert_eq!(c.action.as_deref(), Some("created"));
        assert_eq!(c.delivery_id.as_deref(), Some("u-1"));
        let c = Bitbucket
            .classify(&hdrs(&[(EVENT_KEY, "repo:push")]), &none)
            .unwrap();
        assert_eq!(
            (c.event_type.as_str(), c.action.as_deref()),
            ("repo", Some("push"))
        );
        assert_eq!(c.delivery_id, None);
        // Data Center: a longer key, and X-Request-Id.
        let c = Bitbucket
            .classify(
                &hdrs(&[
                    (EVENT_KEY, "pr:reviewer:approved"),
                    ("x-request-id", "dc-1"),
                ]),
                &none,
            )
            .unwrap();
        assert_eq!(c.event_type, "pr");
        assert_eq!(c.action.as_deref(), Some("reviewer:approved"));
        assert_eq!(c.delivery_id.as_deref(), Some("dc-1"));
        assert_eq!(
            split_event_key("diagnostics:ping"),
            ("diagnostics", Some("ping"))
        );
        assert_eq!(split_event_key("ping"), ("ping", None));
        assert_eq!(split_event_key(":x"), (":x", None));
        assert_eq!(split_event_key("x:"), ("x:", None));
        assert!(Bitbucket.classify(&hdrs(&[]), &none).is_err());
    }
}
