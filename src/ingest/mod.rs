//! The way in: `POST /webhook/{source}` as a list of stages, each a function in a file named
//! for it — read, verify, decode and classify (`prepare`), dedupe, admit (rate limit), route,
//! commit, publish. The HTTP handler (`crate::http::webhook`) calls them in order; nothing here
//! knows HTTP beyond header maps.

pub mod admit;
pub mod commit;
pub mod dedupe;
pub mod error;
pub mod pipeline;
pub mod publish;
pub mod read;
pub mod route;
pub mod verify;

use std::sync::Arc;

use http::{HeaderMap, HeaderValue, header};
use serde_json::Value;

use crate::config::{Scheme, SourceConfig};
use crate::event::{self, EventHeader, EventInput, Field, Probed};
pub use error::IngestError;
pub use pipeline::Ingest;
use verify::{SecretSet, VerifyError};

/// A source as the ingest path uses it: its scheme with secrets parsed once at start.
pub struct Source {
    pub name: String,
    pub scheme: Scheme,
    pub secrets: Option<SecretSet>,
    pub identifier_field: Option<String>,
    /// The payload fields ingest reads for this source's scheme and identifier path.
    pub probe: event::ProbeSpec,
}

impl Source {
    /// Parses the source's secret list; a list that does not parse is a startup error.
    pub fn from_config(name: &str, cfg: &SourceConfig) -> Result<Source, String> {
        let secrets = match &cfg.secret {
            None => None,
            Some(s) => Some(
                match cfg.scheme {
                    Scheme::Standard => SecretSet::standard_from_list(&s.0),
                    _ => SecretSet::hmac_from_list(&s.0),
                }
                .map_err(|e| {
                    format!(
                        "source {name}: the secret in {} is not usable: {e}",
                        cfg.secret_env.join(" / ")
                    )
                })?,
            ),
        };
        Ok(Source::new(
            name,
            cfg.scheme,
            secrets,
            cfg.identifier_field.clone(),
        ))
    }

    pub fn new(
        name: &str,
        scheme: Scheme,
        secrets: Option<SecretSet>,
        identifier_field: Option<String>,
    ) -> Source {
        Source {
            name: name.to_string(),
            scheme,
            secrets,
            probe: event::ProbeSpec::new(scheme, identifier_field.as_deref()),
            identifier_field,
        }
    }
}

fn header_bytes<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers.get(name).map(HeaderValue::as_bytes)
}

fn signature_error(e: VerifyError) -> IngestError {
    match e {
        VerifyError::InvalidSignature => IngestError::InvalidSignature,
        VerifyError::StaleTimestamp => IngestError::StaleTimestamp,
    }
}

/// What the pure part of ingest makes of a request.
pub enum Prepared {
    /// Slack `url_verification`: answer the challenge, store nothing.
    Challenge(Value),
    Event {
        head: EventHeader,
        event: Value,
        /// The payload is the body's JSON text as received (so it can be stored verbatim).
        raw_json: bool,
        /// The event's `payload` is still `null`: the body's JSON text was validated and probed
        /// but not parsed into a tree. `event::materialize_payload` fills it in when a rule or a
        /// stream needs it; `event::serialize_event` splices the text in regardless.
        payload_deferred: bool,
    },
}

/// Verify, decode and normalize: everything between reading the body and routing, with no I/O
/// (also what the ingest benchmark measures). `agent_key` checks an `Authorization` header.
pub fn prepare(
    source: &Source,
    headers: &HeaderMap,
    bytes: &[u8],
    client_ip: &str,
    now_ms: i64,
    agent_key: &dyn Fn(&[u8]) -> bool,
    next_id: &mut dyn FnMut() -> (uuid::Uuid, i64),
) -> Result<Prepared, IngestError> {
    verify_request(source, headers, bytes, now_ms, agent_key)?;
    let kind = event::body_kind(headers).map_err(|e| IngestError::InvalidBody(e.0))?;
    let Probed {
        payload,
        fields,
        raw_json,
    } = event::probe_body(kind, bytes, &source.probe).map_err(|e| IngestError::InvalidBody(e.0))?;
    if source.scheme == Scheme::Slack && fields.str(Field::Type) == Some("url_verification") {
        // Rare, and the challenge may be any JSON: parse the whole payload for it.
        let payload = match payload {
            Some(p) => p,
            None => event::parse_json_object(bytes).map_err(|e| IngestError::InvalidBody(e.0))?,
        };
        return Ok(Prepared::Challenge(
            payload.get("challenge").cloned().unwrap_or(Value::Null),
        ));
    }
    if source.scheme == Scheme::Linear {
        let body_ts = fields.i64(Field::WebhookTimestamp);
        verify::check_linear_timestamp(header_bytes(headers, "linear-timestamp"), body_ts, now_ms)
            .map_err(signature_error)?;
    }
    let classified = event::classify(source.scheme, headers, &fields)
        .map_err(|e| IngestError::InvalidBody(e.0))?;
    let payload_deferred = payload.is_none();
    let (head, event) = event::normalize(EventInput {
        id: next_id(),
        source: &source.name,
        classified,
        payload,
        fields: &fields,
        probe: &source.probe,
        headers,
        client_ip,
        received_bytes: bytes.len(),
    });
    Ok(Prepared::Event {
        head,
        event,
        raw_json,
        payload_deferred,
    })
}

/// Checks the provider's signature (or, on `internal`, an agent key) on the raw bytes.
fn verify_request(
    source: &Source,
    headers: &HeaderMap,
    body: &[u8],
    now_ms: i64,
    agent_key: &dyn Fn(&[u8]) -> bool,
) -> Result<(), IngestError> {
    let now_s = now_ms / 1000;
    let no_secret = || signature_error(VerifyError::InvalidSignature);
    match source.scheme {
        Scheme::Github => verify::verify_github(
            source.secrets.as_ref().ok_or_else(no_secret)?,
            header_bytes(headers, "x-hub-signature-256"),
            body,
        ),
        Scheme::Linear => verify::verify_linear(
            source.secrets.as_ref().ok_or_else(no_secret)?,
            header_bytes(headers, "linear-signature"),
            body,
        ),
        Scheme::Slack => verify::verify_slack(
            source.secrets.as_ref().ok_or_else(no_secret)?,
            header_bytes(headers, "x-slack-signature"),
            header_bytes(headers, "x-slack-request-timestamp"),
            body,
            now_s,
        ),
        Scheme::Standard => {
            if source.name == "internal"
                && let Some(auth) = headers.get(header::AUTHORIZATION)
            {
                return if agent_key(auth.as_bytes()) {
                    Ok(())
                } else {
                    Err(no_secret())
                };
            }
            verify::verify_standard(
                source.secrets.as_ref().ok_or_else(no_secret)?,
                header_bytes(headers, "webhook-id"),
                header_bytes(headers, "webhook-timestamp"),
                header_bytes(headers, "webhook-signature"),
                body,
                now_s,
            )
        }
    }
    .map_err(signature_error)
}

/// The sources known at start, keyed by name.
pub fn build_sources(
    sources: &std::collections::BTreeMap<String, SourceConfig>,
) -> Result<std::collections::HashMap<String, Arc<Source>>, String> {
    sources
        .iter()
        .map(|(name, cfg)| Ok((name.clone(), Arc::new(Source::from_config(name, cfg)?))))
        .collect()
}
