//! GitLab, two ways, both checked against the one secret list (`GITLAB_WEBHOOK_SECRET`, a
//! rotation as usual):
//!
//! - the **secret token**: `X-Gitlab-Token` equal to one of the secrets, compared in constant
//!   time. It signs nothing, so it has no replay window and any body passes with it;
//! - the **signing token** (GitLab's newer HMAC signing, `whsec_<base64 of 32 bytes>`): Standard
//!   Webhooks, `webhook-signature: v1,<base64 HMAC-SHA256(key, webhook-id + "." +
//!   webhook-timestamp + "." + body)>`, where `webhook-id` is the delivery's `Idempotency-Key`,
//!   verified by `standard::verify` (300 s window). A `whsec_…` entry of the list is a signing
//!   token, any other a secret token.
//!
//! A request with `webhook-signature` is judged by it first: a genuine but stale one is
//! `stale_timestamp`; one that matches no signing token falls back to `X-Gitlab-Token` (GitLab
//! sends both when a hook has both, and the list may hold only the secret token). Each way only
//! passes with a configured secret, so the fallback weakens nothing. [`Provider::replay_window`]
//! is `None`: only the signing token has a window, and `send` signs with whichever the secret is.
//!
//! The event type is the body's `object_kind` (`merge_request`, `push`, `pipeline`, …), else
//! `event_name` (system hooks), else the `X-Gitlab-Event` header (`Merge Request Hook`); the
//! action is `object_attributes.action` (`open`, `merge`, …). The delivery id is
//! `Idempotency-Key` (GitLab 17.4 and later: the same on every retry of one delivery), else
//! `webhook-id` (the same value), else `X-Gitlab-Event-UUID` (per event; recursive webhooks
//! share it). `X-Gitlab-Webhook-UUID` names the webhook, not the delivery, and is not used. The
//! default identifier is the project (`project.path_with_namespace`).
//!
//! The token comparison: each secret token is kept as the HMAC-SHA256 key SHA-256(token) (so the
//! set stays one [`SecretSet`]); the received token is hashed the same way, both keys MAC a
//! fixed message, and the tags are compared with `ct_eq`. Neither the token's content nor its
//! length leaks through timing, and since both keys are 32-byte digests, the tags are equal
//! exactly when the digests are, that is when the token is the secret. A signing key could only
//! pass as a token through a SHA-256 preimage, and a token's digest only sign with its token.

use http::HeaderMap;
use ring::{digest, hmac};

use super::signature::{SecretError, VerifyError, ct_eq, mac_of};
use super::standard::{self, StandardSigner};
use super::{
    Builtin, Outgoing, Provider, Request, SecretSet, Secrets, SendOptions, SignError, header_str,
    hmac_keys,
};
use crate::event::{BodyError, Classified, Field, Fields, Probe};

pub struct GitLab;

const OBJECT_KIND: Field = Field::new(0);
const EVENT_NAME: Field = Field::new(1);
const ACTION: Field = Field::new(2);
const TOKEN: &str = "x-gitlab-token";
const EVENT: &str = "x-gitlab-event";
const EVENT_UUID: &str = "x-gitlab-event-uuid";
const IDEMPOTENCY_KEY: &str = "idempotency-key";
const SIGNATURE: &str = "webhook-signature";
const WEBHOOK_ID: &str = "webhook-id";
const WEBHOOK_TIMESTAMP: &str = "webhook-timestamp";
const SIGNING_PREFIX: &str = "whsec_";

/// What both the secret and the token MAC, to compare them.
const PROBE: &[u8] = b"event-router gitlab token comparison";

impl Provider for GitLab {
    fn name(&self) -> &'static str {
        "gitlab"
    }

    fn builtin(&self) -> Option<Builtin> {
        Some(Builtin {
            source: "gitlab",
            secret_env: &["GITLAB_WEBHOOK_SECRET"],
            identifier: Some("payload.project.path_with_namespace"),
        })
    }

    fn signature_headers(&self) -> &'static [&'static str] {
        &[TOKEN, SIGNATURE]
    }

    fn parse_secrets(&self, list: &str) -> Result<Secrets, SecretError> {
        secrets_from_list(list).map(Secrets::Hmac)
    }

    fn verify(&self, req: &Request<'_>, secrets: Option<&Secrets>) -> Result<(), VerifyError> {
        let set = hmac_keys(secrets)?;
        if let Some(signature) = req.header(SIGNATURE) {
            match standard::verify(
                set,
                req.header(WEBHOOK_ID),
                req.header(WEBHOOK_TIMESTAMP),
                Some(signature),
                req.body,
                req.now_ms / 1000,
            ) {
                Err(VerifyError::InvalidSignature) => {}
                judged => return judged,
            }
        }
        verify(set, req.header(TOKEN))
    }

    fn probes(&self) -> &'static [Probe] {
        &[
            (&["object_kind"], OBJECT_KIND),
            (&["event_name"], EVENT_NAME),
            (&["object_attributes", "action"], ACTION),
        ]
    }

    fn classify(&self, headers: &HeaderMap, fields: &Fields<'_>) -> Result<Classified, BodyError> {
        let event_type = fields
            .str(OBJECT_KIND)
            .filter(|t| !t.is_empty())
            .or_else(|| fields.str(EVENT_NAME).filter(|t| !t.is_empty()))
            .or_else(|| header_str(headers, EVENT))
            .ok_or_else(|| {
                BodyError(
                    "a GitLab webhook needs \"object_kind\", \"event_name\" or X-Gitlab-Event"
                        .into(),
                )
            })?;
        let delivery_id = header_str(headers, IDEMPOTENCY_KEY)
            .or_else(|| header_str(headers, WEBHOOK_ID))
            .or_else(|| header_str(headers, EVENT_UUID));
        Ok(Classified {
            event_type: event_type.to_string(),
            action: fields.str(ACTION).map(str::to_string),
            delivery_id: delivery_id.map(str::to_string),
        })
    }

    fn compose(&self, out: &mut Outgoing, opts: &SendOptions<'_>) -> Result<(), SignError> {
        out.header("user-agent", "GitLab/17.6.0");
        out.header(EVENT, opts.event.unwrap_or("Merge Request Hook"));
        out.header("x-gitlab-instance", "https://gitlab.example.com");
        out.header("x-gitlab-webhook-uuid", uuid::Uuid::new_v4().to_string());
        out.header(EVENT_UUID, uuid::Uuid::new_v4().to_string());
        out.header(IDEMPOTENCY_KEY, uuid::Uuid::new_v4().to_string());
        Ok(())
    }

    /// A `whsec_…` secret signs (Standard Webhooks, `webhook-id` = the `Idempotency-Key`), any
    /// other is sent as `X-Gitlab-Token`.
    fn sign(&self, out: &mut Outgoing, opts: &SendOptions<'_>) -> Result<(), SignError> {
        let secret = opts.secret()?.trim();
        if signing_key(secret).is_some() {
            let signer = StandardSigner::from_secret(secret)
                .map_err(|e| SignError(format!("the signing token is not usable: {e}")))?;
            let id = match out.get(IDEMPOTENCY_KEY) {
                Some(id) => id.to_string(),
                None => {
                    let id = uuid::Uuid::new_v4().to_string();
                    out.header(IDEMPOTENCY_KEY, id.clone());
                    id
                }
            };
            let ts = opts.now_ms / 1000;
            let signature = signer.sign(&id, ts, &out.body);
            out.header(WEBHOOK_ID, id);
            out.header(WEBHOOK_TIMESTAMP, ts.to_string());
            out.header(SIGNATURE, signature);
            return Ok(());
        }
        // The token travels as it is: it must be a header value.
        if http::HeaderValue::from_str(secret).is_err() {
            return Err(SignError(
                "a GitLab secret token must be printable ASCII to be sent in X-Gitlab-Token".into(),
            ));
        }
        out.header(TOKEN, secret);
        Ok(())
    }

    fn sample(&self) -> &'static str {
        include_str!("../../examples/gitlab-merge_request.json")
    }
}

/// Comma-separated secrets: a signing token (`whsec_` and base64) is kept as its decoded key,
/// a secret token as the key SHA-256(token) (see the module's notes).
pub fn secrets_from_list(list: &str) -> Result<SecretSet, SecretError> {
    SecretSet::from_list(list, |_, secret| {
        Ok(signing_key(secret).unwrap_or_else(|| token_key(secret.as_bytes())))
    })
}

/// The key of a signing token: `whsec_` and base64 (padding optional) of a key that is not
/// empty.
fn signing_key(secret: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let b64 = secret.strip_prefix(SIGNING_PREFIX)?;
    base64::engine::general_purpose::STANDARD_PAD_INDIFFERENT
        .decode(b64)
        .ok()
        .filter(|key| !key.is_empty())
}

fn token_key(token: &[u8]) -> Vec<u8> {
    digest::digest(&digest::SHA256, token).as_ref().to_vec()
}

/// `X-Gitlab-Token` equal to one of the secrets (surrounding whitespace ignored, as in the
/// secret list); missing or empty is `InvalidSignature`.
pub fn verify(secrets: &SecretSet, token: Option<&[u8]>) -> Result<(), VerifyError> {
    let token = token
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
        .ok_or(VerifyError::InvalidSignature)?;
    let theirs = mac_of(
        &hmac::Key::new(hmac::HMAC_SHA256, &token_key(token)),
        &[PROBE],
    );
    if secrets.any_mac(&[PROBE], |ours| ct_eq(ours, theirs.as_ref())) {
        Ok(())
    } else {
        Err(VerifyError::InvalidSignature)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::event::ProbeSpec;

    const INVALID: Result<(), VerifyError> = Err(VerifyError::InvalidSignature);

    fn set(list: &str) -> SecretSet {
        secrets_from_list(list).unwrap()
    }

    #[test]
    fn gitlab_token_must_equal_a_secret() {
        let s = set("glwt-4f8a9c2e71b3d5");
        assert_eq!(verify(&s, Some(b"glwt-4f8a9c2e71b3d5")), Ok(()));
        assert_eq!(verify(&s, Some(b" glwt-4f8a9c2e71b3d5 ")), Ok(()));
        assert_eq!(verify(&s, None), INVALID);
        assert_eq!(verify(&s, Some(b"")), INVALID);
        assert_eq!(verify(&s, Some(b"glwt-4f8a9c2e71b3d")), INVALID);
        assert_eq!(verify(&s, Some(b"glwt-4f8a9c2e71b3d55")), INVALID);
        assert_eq!(verify(&s, Some(b"GLWT-4F8A9C2E71B3D5")), INVALID);
        assert_eq!(verify(&s, Some(b"\xff\xfe")), INVALID);
        assert_eq!(verify(&set("other"), Some(b"glwt-4f8a9c2e71b3d5")), INVALID);
        // Keys HMAC would treat alike (zero-padded, or a long key and its digest) are not.
        assert_eq!(verify(&s, Some(b"glwt-4f8a9c2e71b3d5\0")), INVALID);
        let long = "x".repeat(100);
        let digest = digest::digest(&digest::SHA256, long.as_bytes());
        assert_eq!(verify(&set(&long), Some(digest.as_ref())), INVALID);
        assert_eq!(verify(&set(&long), Some(long.as_bytes())), Ok(()));
    }

    #[test]
    fn gitlab_rotation() {
        let s = set("old-token,new-token");
        assert_eq!(verify(&s, Some(b"old-token")), Ok(()));
        assert_eq!(verify(&s, Some(b"new-token")), Ok(()));
        assert_eq!(verify(&s, Some(b"old-token,new-token")), INVALID);
    }

    // A signing token and a delivery signed with it by the standard-webhooks reference
    // signer (`StandardSigner`, itself checked against the Standard Webhooks vectors in
    // standard.rs): GitLab's signing tokens are Standard Webhooks secrets.
    const SIGNING: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn request(
        headers: &HeaderMap,
        body: &'static [u8],
        now_secs: i64,
        list: &str,
    ) -> Result<(), VerifyError> {
        let secrets = GitLab.parse_secrets(list).unwrap();
        GitLab.verify(
            &Request {
                source: "gitlab",
                line: super::super::RequestLine::post("/webhook/gitlab"),
                public_url: None,
                headers,
                body,
                now_ms: now_secs * 1000,
                agent_key: &|_| true,
            },
            Some(&secrets),
        )
    }

    #[test]
    fn gitlab_signing_token_and_fallback_to_the_secret_token() {
        let ts = 1_733_580_000i64;
        let body: &'static [u8] = br#"{"object_kind":"push"}"#;
        let sig = StandardSigner::from_secret(SIGNING)
            .unwrap()
            .sign("idem-1", ts, body);
        let ts_text = ts.to_string();
        let signed = hdrs(&[
            (WEBHOOK_ID, "idem-1"),
            (WEBHOOK_TIMESTAMP, &ts_text),
            (SIGNATURE, &sig),
        ]);
        assert_eq!(request(&signed, body, ts, SIGNING), Ok(()));
        assert_eq!(
            request(&signed, body, ts, &format!("tok,{SIGNING}")),
            Ok(())
        );
        assert_eq!(request(&signed, body, ts + 300, SIGNING), Ok(()));
        assert_eq!(
            request(&signed, body, ts + 301, SIGNING),
            Err(VerifyError::StaleTimestamp)
        );
        assert_eq!(
            request(&signed, br#"{"object_kind":"tag_push"}"#, ts, SIGNING),
            INVALID
        );
        assert_eq!(request(&signed, body, ts, "tok"), INVALID);
        // A signing token is no secret token, nor a secret token a signing key.
        let as_token = hdrs(&[(TOKEN, SIGNING)]);
        assert_eq!(request(&as_token, body, ts, SIGNING), INVALID);
        // Both headers, the list holding only the secret token: the token decides.
        let mut both = signed.clone();
        both.insert(TOKEN, http::HeaderValue::from_static("tok"));
        assert_eq!(request(&both, body, ts, "tok"), Ok(()));
        assert_eq!(request(&both, body, ts, "other"), INVALID);
        // A genuine signature out of its window is stale, whatever the token.
        assert_eq!(
            request(&both, body, ts + 301, &format!("tok,{SIGNING}")),
            Err(VerifyError::StaleTimestamp)
        );
    }

    #[test]
    fn gitlab_send_signs_with_whichever_the_secret_is() {
        for secret in [SIGNING, "tok"] {
            let opts = SendOptions {
                event: None,
                secret: Some(secret),
                agent_key: None,
                now_ms: 1_733_580_000_000,
            };
            let mut out = Outgoing {
                headers: Vec::new(),
                body: GitLab.sample().as_bytes().to_vec(),
                url: None,
            };
            GitLab.compose(&mut out, &opts).unwrap();
            GitLab.sign(&mut out, &opts).unwrap();
            assert_eq!(out.get(TOKEN).is_some(), secret == "tok");
            assert_eq!(out.get(SIGNATURE).is_some(), secret == SIGNING);
            if secret == SIGNING {
                assert_eq!(out.get(WEBHOOK_ID), out.get(IDEMPOTENCY_KEY));
            }
        }
    }

    fn hdrs(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, http::HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn classify_object_kind_event_name_or_header() {
        let spec = ProbeSpec::new(GitLab.probes(), None);
        let sample: serde_json::Value = serde_json::from_str(GitLab.sample()).unwrap();
        let mr = GitLab
            .classify(
                &hdrs(&[
                    (EVENT, "Merge Request Hook"),
                    (EVENT_UUID, "e-1"),
                    (IDEMPOTENCY_KEY, "k-1"),
                ]),
                &spec.read_value(&sample),
            )
            .unwrap();
        assert_eq!(mr.event_type, "merge_request");
        assert_eq!(mr.action.as_deref(), Some("open"));
        assert_eq!(mr.delivery_id.as_deref(), Some("k-1"));
        let push = GitLab
            .classify(
                &hdrs(&[(EVENT, "Push Hook"), (EVENT_UUID, "e-2")]),
                &spec.read_value(&json!({"object_kind": "push"})),
            )
            .unwrap();
        assert_eq!((push.event_type.as_str(), push.action), ("push", None));
        assert_eq!(push.delivery_id.as_deref(), Some("e-2"));
        let system = GitLab
            .classify(
                &hdrs(&[(EVENT, "System Hook")]),
                &spec.read_value(&json!({"event_name": "project_create"})),
            )
            .unwrap();
        assert_eq!(system.event_type, "project_create");
        assert_eq!(system.delivery_id, None);
        let header_only = GitLab
            .classify(
                &hdrs(&[(EVENT, "Emoji Hook")]),
                &spec.read_value(&json!({})),
            )
            .unwrap();
        assert_eq!(header_only.event_type, "Emoji Hook");
        assert!(GitLab.classify(&hdrs(&[]), &Fields::default()).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn prop_gitlab(secret in "[!-+--~]{1,80}", other in "[!-+--~]{1,80}") {
            let s = set(&secret);
            prop_assert_eq!(verify(&s, Some(secret.as_bytes())), Ok(()));
            if other != secret {
                prop_assert_eq!(verify(&s, Some(other.as_bytes())), INVALID);
            }
        }
    }
}
