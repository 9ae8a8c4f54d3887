//! Webhook providers: one file per provider, each implementing [`Provider`], and the one list
//! of them, [`PROVIDERS`].
//!
//! A provider owns everything about the requests it sends: its name and secret variables, how
//! its secrets parse, how a request's signature and replay window are checked on the raw bytes,
//! how its form bodies decode, its handshakes, which payload fields it reads and how they give
//! the event's type, action and delivery id, its default identifier path, how `send` signs a
//! test webhook, and its sample body. Everything else (configuration, ingest, `send`,
//! `check-config`, the docs' provider table and the fuzz targets) reads the list.
//!
//! Adding a provider is one new file here and one line in [`PROVIDERS`]; see
//! docs/architecture.md, "How to add a provider".

pub mod asana;
pub mod bitbucket;
pub mod calendly;
pub mod discord;
pub mod github;
pub mod gitlab;
pub mod hubspot;
pub mod intercom;
pub mod jira;
pub mod linear;
pub mod mailgun;
pub mod meta;
pub mod notion;
pub mod paddle;
pub mod pagerduty;
pub mod recipe;
pub mod sendgrid;
pub mod sentry;
pub mod shopify;
pub mod signature;
pub mod signed_url;
pub mod slack;
pub mod square;
pub mod standard;
pub mod stripe;
pub mod svix;
pub mod twilio;
pub mod twitch;
pub mod typeform;
pub mod vercel;
pub mod zendesk;
pub mod zoom;

use std::fmt;
use std::sync::OnceLock;

use http::HeaderMap;
use serde_json::Value;

use crate::event::{BodyError, Classified, Fields, FormBody, JsonBody, Probe};
pub use signature::{SecretError, SecretSet, VerifyError};

/// Every provider, in the order they are listed to users.
pub static PROVIDERS: &[&dyn Provider] = &[
    &github::GitHub,
    &linear::Linear,
    &slack::Slack,
    &standard::Standard,
    &stripe::Stripe,
    &gitlab::GitLab,
    &shopify::Shopify,
    &svix::Svix,
    &paddle::Paddle,
    &pagerduty::PagerDuty,
    &zendesk::Zendesk,
    &twitch::Twitch,
    &zoom::Zoom,
    &discord::Discord,
    &sendgrid::SendGrid,
    &asana::Asana,
    &sentry::Sentry,
    &bitbucket::Bitbucket,
    &jira::Jira,
    &intercom::Intercom,
    &typeform::Typeform,
    &vercel::Vercel,
    &calendly::Calendly,
    &notion::Notion,
    &mailgun::Mailgun,
    &hubspot::HubSpot,
    &square::Square,
    &twilio::Twilio,
    &meta::Meta,
];

/// Everything the router knows about one provider.
///
/// Header names given to the router (`signature_headers`) are lowercase. Methods with a default
/// are what most providers do; a provider overrides them when it differs.
pub trait Provider: Send + Sync + 'static {
    /// The scheme's name: `scheme = "…"` of a config-declared source and `send --scheme`.
    fn name(&self) -> &'static str;

    /// The source the router comes with for this provider, if any.
    fn builtin(&self) -> Option<Builtin>;

    /// A second payload path of the rate-limit identifier, read when the built-in one
    /// (`Builtin::identifier`) has nothing: a provider whose payloads carry it in two places
    /// (Slack: `team_id`, but `team.id` in interactivity payloads). Only a source that keeps
    /// the built-in path uses it.
    fn identifier_alternate(&self) -> Option<&'static str> {
        None
    }

    /// Headers that carry a signature or secret: never archived or forwarded, whichever
    /// source they arrive on.
    fn signature_headers(&self) -> &'static [&'static str];

    /// Parses a secret variable's value: comma-separated secrets (several during a rotation).
    /// By default each secret's UTF-8 bytes are an HMAC key.
    fn parse_secrets(&self, list: &str) -> Result<Secrets, SecretError> {
        SecretSet::hmac_from_list(list).map(Secrets::Hmac)
    }

    /// Checks the request's signature, and the replay window when the signature covers a
    /// timestamp in the headers, on the raw bytes and in constant time. `secrets` is `None`
    /// when the source has none configured.
    fn verify(&self, req: &Request<'_>, secrets: Option<&Secrets>) -> Result<(), VerifyError>;

    /// How far a signed timestamp may be from now, when the provider signs one (`None`: it
    /// signs no timestamp, so there is no replay window). A request signed further away is
    /// `stale_timestamp`; the docs and the black-box tests read this.
    fn replay_window(&self) -> Option<std::time::Duration> {
        None
    }

    /// What this provider's `application/x-www-form-urlencoded` bodies hold.
    fn form_body(&self) -> FormBody {
        FormBody::PayloadOrFields
    }

    /// What this provider's JSON bodies may be: an object (the default), or also an array
    /// (HubSpot sends a batch of events as one array, stored as it came).
    fn json_body(&self) -> JsonBody {
        JsonBody::Object
    }

    /// The environment variable holding the token the operator gave the provider for its
    /// `GET` check of the endpoint (Meta: `META_VERIFY_TOKEN` for the `meta` source), for a
    /// source named `source`; `None`: the provider sends no such check.
    fn verify_token_env(&self, _source: &str) -> Option<String> {
        None
    }

    /// A `GET /webhook/{source}` the provider sends to check the endpoint before it sends
    /// events (Meta's `hub.challenge`): the `text/plain` body to answer `200` with, or why it
    /// is refused. `query` is the raw query string, `token` the source's verify token (from
    /// `verify_token_env`), compared in constant time. `None`: the provider sends no such
    /// request, and a `GET` is `405` as on any other source.
    fn verify_get(&self, _query: &str, _token: Option<&str>) -> Option<Result<String, GetRefusal>> {
        None
    }

    /// The payload fields `verify_payload`, `handshake` and `classify` read (at most
    /// [`crate::event::Field::PROVIDER_SLOTS`] slots).
    fn probes(&self) -> &'static [Probe];

    /// Checks that need the decoded body (Linear's replay window may come from the payload).
    /// Runs after `handshake`.
    fn verify_payload(&self, _req: &Request<'_>, _fields: &Fields<'_>) -> Result<(), VerifyError> {
        Ok(())
    }

    /// A request to answer at once instead of storing (Slack's `url_verification`).
    fn handshake(&self, _body: &Decoded<'_>) -> Result<Option<Handshake>, BodyError> {
        Ok(None)
    }

    /// `handshake` for providers whose answer needs the source's secrets (Zoom's
    /// `encryptedToken` is an HMAC of the challenge); ingest calls this one. By default, the
    /// secrets are not needed: `handshake`.
    fn keyed_handshake(
        &self,
        body: &Decoded<'_>,
        _secrets: Option<&Secrets>,
    ) -> Result<Option<Handshake>, BodyError> {
        self.handshake(body)
    }

    /// A handshake answered from the headers alone, BEFORE the source's secret is looked at:
    /// for providers whose handshake cannot be signed because it is how the secret is handed
    /// over (Asana's `X-Hook-Secret`). It must store nothing and reveal nothing the request
    /// did not carry. Runs on any known source, with or without a secret. None by default.
    fn unsigned_handshake(&self, _headers: &HeaderMap) -> Option<Handshake> {
        None
    }

    /// The body to answer a stored (or duplicate) event with instead of the router's own
    /// `{"success": true, …}`, for providers that read the answer (Discord wants an
    /// interaction response such as `{"type": 5}`). The rate-limit headers are kept. None by
    /// default.
    fn accepted_answer(&self, _head: &crate::event::EventHeader) -> Option<Value> {
        None
    }

    /// The event's type, action and delivery id.
    fn classify(&self, headers: &HeaderMap, fields: &Fields<'_>) -> Result<Classified, BodyError>;

    /// Shapes a test webhook as the provider would send it (`event-router send`), before it is
    /// signed: the headers naming its type and delivery, and what the provider stamps into its
    /// bodies (Linear's `webhookTimestamp`).
    fn compose(&self, _out: &mut Outgoing, _opts: &SendOptions<'_>) -> Result<(), SignError> {
        Ok(())
    }

    /// Signs `out.body` as it is, as the provider does: adds the signature headers, and the
    /// timestamp header a signature covers.
    fn sign(&self, out: &mut Outgoing, opts: &SendOptions<'_>) -> Result<(), SignError>;

    /// A realistic body (`examples/`), sent by `send` when given no other.
    fn sample(&self) -> &'static str;
}

impl fmt::Debug for dyn Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Provider({})", self.name())
    }
}

/// A built-in source: `POST /webhook/{source}` with no configuration but its secret.
#[derive(Debug, Clone, Copy)]
pub struct Builtin {
    pub source: &'static str,
    /// Environment variables the secret list is read from, first set wins.
    pub secret_env: &'static [&'static str],
    /// Default dot path of the rate-limit identifier (`None`: the client IP).
    pub identifier: Option<&'static str>,
}

/// A source's secrets, parsed once at start.
#[derive(Debug, Clone)]
pub enum Secrets {
    /// Shared HMAC keys.
    Hmac(SecretSet),
    /// Public keys the provider signs against (Ed25519, ECDSA P-256), as bytes: for
    /// public-key schemes, whose variable holds the key.
    PublicKeys(Vec<Vec<u8>>),
    /// Shared tokens sent as they are (a header equal to the secret, Basic credentials).
    Tokens(Vec<Vec<u8>>),
}

impl Secrets {
    /// How many secrets (keys) there are.
    pub fn len(&self) -> usize {
        match self {
            Secrets::Hmac(set) => set.len(),
            Secrets::PublicKeys(keys) | Secrets::Tokens(keys) => keys.len(),
        }
    }

    /// Always false: secrets are only parsed from a list with at least one.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The HMAC keys of an HMAC provider: none configured, or keys of another kind, verify nothing.
pub fn hmac_keys(secrets: Option<&Secrets>) -> Result<&SecretSet, VerifyError> {
    match secrets {
        Some(Secrets::Hmac(set)) => Ok(set),
        _ => Err(VerifyError::InvalidSignature),
    }
}

/// The request line as received, for providers that sign the method or the URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLine<'a> {
    /// `POST`, …
    pub method: &'a str,
    /// The path and query as the client sent them (`/webhook/hubspot?x=1`).
    pub path_and_query: &'a str,
}

impl<'a> RequestLine<'a> {
    /// `POST path_and_query`.
    pub const fn post(path_and_query: &'a str) -> RequestLine<'a> {
        RequestLine {
            method: "POST",
            path_and_query,
        }
    }
}

/// A webhook request as a provider verifies it: the raw bytes, before anything is decoded.
pub struct Request<'a> {
    /// The source's name (one provider may serve several sources).
    pub source: &'a str,
    pub line: RequestLine<'a>,
    /// The source's `public_url`: the URL the provider was given, for providers that sign it
    /// (the router may sit behind a proxy that changes scheme, host or path).
    pub public_url: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
    /// Now, in ms since the epoch.
    pub now_ms: i64,
    /// Whether an `Authorization` header value holds an agent key (`internal` accepts one in
    /// place of a signature). The caller knows the keys; providers only ask.
    pub agent_key: &'a dyn Fn(&[u8]) -> bool,
}

impl<'a> Request<'a> {
    /// A header's raw value.
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers.get(name).map(http::HeaderValue::as_bytes)
    }
}

/// A verified request with its body decoded, for a handshake.
pub struct Decoded<'a> {
    pub headers: &'a HeaderMap,
    pub bytes: &'a [u8],
    pub fields: &'a Fields<'a>,
    /// The parsed payload, when decoding had to parse it.
    pub payload: Option<&'a Value>,
}

/// A handshake's answer (`200`), sent instead of storing an event.
#[derive(Debug, Clone, PartialEq)]
pub enum Handshake {
    /// A JSON body (Slack: `{"challenge": …}`).
    Json(Value),
    /// A `text/plain` body (Twitch: the challenge itself).
    Text(String),
    /// An empty body with these headers (Asana: `X-Hook-Secret` echoed); names lowercase.
    Headers(Vec<(&'static str, String)>),
}

/// Why a provider's `GET` check of the endpoint (`Provider::verify_get`) is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GetRefusal {
    /// A parameter is missing or malformed: `400 bad_request` with this message.
    BadRequest(String),
    /// The token is not the source's (or it has none): `403 invalid_verify_token`.
    Forbidden,
}

/// A header's value as text, trimmed; `None` when absent, empty or not visible ASCII.
pub fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// A test webhook being built by `send`.
#[derive(Debug, Clone, Default)]
pub struct Outgoing {
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The URL the provider would have been given (the source's `public_url`, else where the
    /// request is posted), for providers that sign the URL (HubSpot, Square, Twilio); `sign`
    /// may add to its query (Twilio's `bodySHA256`), which `send` then posts with.
    pub url: Option<String>,
}

impl Outgoing {
    /// Adds a header (`name` lowercase).
    pub fn header(&mut self, name: &str, value: impl Into<String>) {
        self.headers.push((name.to_string(), value.into()));
    }

    /// A header added before.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Sets the string at `path` (objects created on the way) in a JSON object body: how
    /// `send --event` names the type of a provider that carries it in the body.
    pub fn set_json_str(&mut self, path: &[&str], value: &str) -> Result<(), SignError> {
        const NOT_OBJECT: &str = "to set its event type, the body must be a JSON object";
        let mut v: Value = serde_json::from_slice(&self.body)
            .map_err(|e| SignError(format!("{NOT_OBJECT}: {e}")))?;
        let Some((last, parents)) = path.split_last() else {
            return Ok(());
        };
        let mut at = &mut v;
        for key in parents {
            let Value::Object(m) = at else {
                return Err(SignError(NOT_OBJECT.into()));
            };
            at = m
                .entry(key.to_string())
                .or_insert_with(|| Value::Object(serde_json::Map::new()));
        }
        let Value::Object(m) = at else {
            return Err(SignError(NOT_OBJECT.into()));
        };
        m.insert(last.to_string(), Value::String(value.to_string()));
        self.body = serde_json::to_vec(&v).map_err(|e| SignError(e.to_string()))?;
        Ok(())
    }
}

/// What `send` was told.
#[derive(Debug, Clone, Copy)]
pub struct SendOptions<'a> {
    /// `--event`: the event type, where the provider lets the sender choose it.
    pub event: Option<&'a str>,
    /// The secret to sign with (the first of a rotation list).
    pub secret: Option<&'a str>,
    /// `AGENT_API_KEY`, for `internal` without a secret.
    pub agent_key: Option<&'a str>,
    pub now_ms: i64,
}

impl SendOptions<'_> {
    /// The secret, or the error that says how to give one.
    pub fn secret(&self) -> Result<&str, SignError> {
        self.secret.ok_or_else(|| {
            SignError("no secret: pass --secret or set the source's secret variable".into())
        })
    }
}

/// Why `send` could not sign a test webhook.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SignError(pub String);

/// The provider of a scheme name (`scheme = "…"`, `send --scheme`).
pub fn by_name(name: &str) -> Option<&'static dyn Provider> {
    PROVIDERS.iter().copied().find(|p| p.name() == name)
}

/// The provider of a built-in source.
pub fn by_source(source: &str) -> Option<&'static dyn Provider> {
    PROVIDERS
        .iter()
        .copied()
        .find(|p| p.builtin().is_some_and(|b| b.source == source))
}

/// The scheme names, as a sentence: `github, linear, slack or standard`.
pub fn names_text() -> String {
    list_text(PROVIDERS.iter().map(|p| p.name()), "or")
}

/// The built-in sources, as a sentence: `github, linear, slack, internal`.
pub fn builtin_sources_text() -> String {
    PROVIDERS
        .iter()
        .filter_map(|p| p.builtin())
        .map(|b| b.source)
        .collect::<Vec<_>>()
        .join(", ")
}

fn list_text<'a>(items: impl Iterator<Item = &'a str>, last: &str) -> String {
    let items: Vec<&str> = items.collect();
    match items.split_last() {
        None => String::new(),
        Some((only, [])) => (*only).to_string(),
        Some((tail, head)) => format!("{} {last} {tail}", head.join(", ")),
    }
}

/// Every provider's signature headers: never kept in an event's `metadata.headers`.
pub fn signature_headers() -> &'static [&'static str] {
    static ALL: OnceLock<Vec<&'static str>> = OnceLock::new();
    ALL.get_or_init(|| {
        let mut all: Vec<&'static str> = PROVIDERS
            .iter()
            .flat_map(|p| p.signature_headers().iter().copied())
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;
    use crate::event::Field;

    #[test]
    fn names_and_sources_are_unique_and_well_formed() {
        let mut names = BTreeSet::new();
        let mut sources = BTreeSet::new();
        for p in PROVIDERS {
            assert!(names.insert(p.name()), "two providers named {}", p.name());
            assert!(
                p.name()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{}",
                p.name()
            );
            if let Some(b) = p.builtin() {
                assert!(
                    sources.insert(b.source),
                    "two built-in sources {}",
                    b.source
                );
                assert!(!b.secret_env.is_empty(), "{}: no secret variable", p.name());
                assert!(by_source(b.source).is_some_and(|q| q.name() == p.name()));
            }
            assert!(by_name(p.name()).is_some_and(|q| q.name() == p.name()));
            for h in p.signature_headers() {
                assert_eq!(*h, h.to_ascii_lowercase(), "{}: {h}", p.name());
                assert!(signature_headers().contains(h));
            }
        }
        assert!(by_name("internal").is_none());
        assert!(by_source("standard").is_none());
        assert_eq!(
            names_text(),
            "github, linear, slack, standard, stripe, gitlab, shopify, svix, paddle, pagerduty, zendesk, twitch, zoom, discord, sendgrid, asana, sentry, bitbucket, jira, intercom, typeform, vercel, calendly, notion, mailgun, hubspot, square, twilio or meta"
        );
        assert_eq!(
            builtin_sources_text(),
            "github, linear, slack, internal, stripe, gitlab, shopify, svix, paddle, pagerduty, zendesk, twitch, zoom, discord, sendgrid, asana, sentry, bitbucket, jira, intercom, typeform, vercel, calendly, notion, mailgun, hubspot, square, twilio, meta"
        );
    }

    #[test]
    fn probes_fit_the_slots_and_samples_are_json_objects() {
        for p in PROVIDERS {
            let mut slots = BTreeSet::new();
            for (path, field) in p.probes() {
                assert!(!path.is_empty(), "{}", p.name());
                assert_ne!(*field, Field::IDENTIFIER, "{}", p.name());
                slots.insert(format!("{field:?}"));
            }
            assert!(slots.len() <= Field::PROVIDER_SLOTS, "{}", p.name());
            let sample: Value = serde_json::from_str(p.sample()).unwrap();
            // An array only for a provider that sends arrays (HubSpot's batches).
            let array_ok = p.json_body() == JsonBody::ObjectOrArray && sample.is_array();
            assert!(sample.is_object() || array_ok, "{}", p.name());
        }
    }

    #[test]
    fn a_provider_signs_what_it_verifies() {
        // Every provider, with its own sample, secret form and clock: what `sign` makes of a
        // body, composed as `send` does or not, is accepted, and the same request with another
        // body is not.
        let now_ms = 1_764_170_000_123;
        for p in PROVIDERS {
            for composed in [false, true] {
                let secret = match p.name() {
                    "standard" | "svix" => "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                    // The Ed25519 secret key (seed, then public key): `parse_secrets` keeps its
                    // public half, `sign` uses the whole.
                    // A P-256 private key (PKCS#8): likewise.
                    "sendgrid" => {
                        "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgHy49TFtqeYgBI0VniavN7w8eLTxLWml4h5altMPS4fChRANCAAT1/vsXo2JTnCd5nGMXrk/PZFCJpD+1je3GIH3Q+hMkgxUDrAAaEtWlxCiRXt+Cok6MH0y87wOclAvcm3364Vly"
                    }
                    "discord" => {
                        "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"
                    }
                    _ => "a-provider-secret",
                };
                let secrets = p.parse_secrets(secret).unwrap();
                let mut out = Outgoing {
                    headers: Vec::new(),
                    body: p.sample().as_bytes().to_vec(),
                    url: Some("https://router.example.com/webhook/any".into()),
                };
                let opts = SendOptions {
                    event: None,
                    secret: Some(secret),
                    agent_key: None,
                    now_ms,
                };
                if composed {
                    p.compose(&mut out, &opts).unwrap();
                }
                p.sign(&mut out, &opts).unwrap();
                let mut headers = HeaderMap::new();
                for (k, v) in &out.headers {
                    headers.insert(
                        http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                        http::HeaderValue::from_str(v).unwrap(),
                    );
                }
                // The query the provider put in the URL it signed (Twilio's `bodySHA256`).
                let path = match out.url.as_deref().and_then(signed_url::query_of) {
                    Some(q) => format!("/webhook/any?{q}"),
                    None => "/webhook/any".to_string(),
                };
                let req = |body| Request {
                    source: "any",
                    line: RequestLine::post(&path),
                    public_url: Some("https://router.example.com/webhook/any"),
                    headers: &headers,
                    body,
                    now_ms,
                    agent_key: &|_| false,
                };
                assert_eq!(p.verify(&req(&out.body), Some(&secrets)), Ok(()), "{p:?}");
                let mut other = out.body.clone();
                if p.name() == "mailgun" {
                    // Mailgun signs the timestamp and token inside the body, not the body
                    // itself (mailgun.rs): change what it signs, the token.
                    let mut v: Value = serde_json::from_slice(&out.body).unwrap();
                    let token = v["signature"]["token"].as_str().unwrap().to_string();
                    v["signature"]["token"] = Value::from(format!("{token}x"));
                    other = serde_json::to_vec(&v).unwrap();
                } else {
                    other.push(b' ');
                }
                // GitLab sends a shared token, not a signature of the body: another body with
                // the same token passes; a wrong token is tested in gitlab.rs.
                let body_signed = p.name() != "gitlab";
                assert_eq!(
                    p.verify(&req(&other), Some(&secrets)).is_ok(),
                    !body_signed,
                    "{p:?}"
                );
                assert_eq!(
                    p.verify(&req(&out.body), None),
                    Err(VerifyError::InvalidSignature),
                    "{p:?} without secrets"
                );
            }
        }
    }

    #[test]
    fn send_event_sets_the_body_type_of_body_typed_providers() {
        let opts = |event| SendOptions {
            event,
            secret: Some("k"),
            agent_key: None,
            now_ms: 1_764_170_000_000,
        };
        for (p, path) in [
            (&jira::Jira as &dyn Provider, &["webhookEvent"][..]),
            (&intercom::Intercom, &["topic"]),
            (&typeform::Typeform, &["event_type"]),
            (&vercel::Vercel, &["type"]),
            (&calendly::Calendly, &["event"]),
            (&notion::Notion, &["type"]),
            (&mailgun::Mailgun, &["event-data", "event"]),
        ] {
            let mut out = Outgoing {
                headers: Vec::new(),
                body: p.sample().as_bytes().to_vec(),
                url: None,
            };
            p.compose(&mut out, &opts(None)).unwrap();
            assert_eq!(
                out.body,
                p.sample().as_bytes(),
                "{p:?}: no --event, no change"
            );
            p.compose(&mut out, &opts(Some("custom.kind"))).unwrap();
            let v: Value = serde_json::from_slice(&out.body).unwrap();
            let at = path.iter().fold(&v, |v, k| &v[*k]);
            assert_eq!(at, "custom.kind", "{p:?}");
        }
        let mut out = Outgoing {
            headers: Vec::new(),
            body: b"a=b".to_vec(),
            url: None,
        };
        assert!(
            typeform::Typeform
                .compose(&mut out, &opts(Some("x")))
                .is_err()
        );
        let mut out = Outgoing {
            headers: Vec::new(),
            body: br#"{"event-data":"flat"}"#.to_vec(),
            url: None,
        };
        assert!(
            mailgun::Mailgun
                .compose(&mut out, &opts(Some("x")))
                .is_err()
        );
    }

    #[test]
    fn lists_read_as_sentences() {
        assert_eq!(list_text([].into_iter(), "or"), "");
        assert_eq!(list_text(["a"].into_iter(), "or"), "a");
        assert_eq!(list_text(["a", "b", "c"].into_iter(), "or"), "a, b or c");
    }

    /// The provider table of docs/api.md lists exactly the built-in sources, in registry order,
    /// and its lists of sources and schemes are the registry's.
    #[test]
    fn the_docs_provider_table_lists_every_provider() {
        let docs = include_str!("../../docs/api.md");
        let (_, after) = docs
            .split_once("<!-- providers")
            .expect("docs/api.md marks its provider table with <!-- providers -->");
        let listed: Vec<&str> = after
            .lines()
            .skip(1)
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split('`').next())
            .collect();
        let builtin: Vec<&str> = PROVIDERS
            .iter()
            .filter_map(|p| p.builtin())
            .map(|b| b.source)
            .collect();
        assert_eq!(listed, builtin, "docs/api.md's provider table");

        let quoted =
            |names: Vec<&str>| -> Vec<String> { names.iter().map(|n| format!("`{n}`")).collect() };
        let sources = quoted(builtin).join(", ");
        assert!(
            docs.contains(&format!("| `SOURCE` | {sources}, or")),
            "{sources}"
        );
        let schemes = quoted(PROVIDERS.iter().map(|p| p.name()).collect());
        let schemes = list_text(schemes.iter().map(String::as_str), "or");
        for row in ["| `--scheme S` | ", "| `scheme` | "] {
            assert!(docs.contains(&format!("{row}{schemes}")), "{row}{schemes}");
        }
        for b in PROVIDERS.iter().filter_map(|p| p.builtin()) {
            assert!(docs.contains(&format!("| `{}`", b.secret_env[0])), "{b:?}");
            for var in b.secret_env {
                assert!(docs.contains(&format!("`{var}`")), "{var}");
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn prop_hex_and_b64_parsing_never_panics(
            sig in proptest::collection::vec(any::<u8>(), 0..200),
            ts in proptest::collection::vec(any::<u8>(), 0..30),
        ) {
            let set = SecretSet::hmac_from_list("k").unwrap();
            let std = standard::secrets_from_list("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
            let invalid = Err(VerifyError::InvalidSignature);
            prop_assert_eq!(github::verify(&set, Some(&sig), b"x"), invalid);
            prop_assert_eq!(linear::verify(&set, Some(&sig), b"x"), invalid);
            prop_assert!(slack::verify(&set, Some(&sig), Some(&ts), b"x", 0).is_err());
            prop_assert!(standard::verify(&std, Some(b"id"), Some(&ts), Some(&sig), b"x", 0).is_err());
            let _ = linear::check_timestamp(Some(&ts), None, 0);
        }
    }
}
