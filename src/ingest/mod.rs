//! `POST /webhook/{source}`: limit, verify, decode, normalize, dedupe, rate limit, filter,
//! route, commit, answer — each a stage of its own; this handler only wires them together.

pub mod dedupe;
pub mod verify;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};

use crate::api::error::ApiError;
use crate::app::AppState;
use crate::clock::now_ms;
use crate::config::{Scheme, SourceConfig};
use crate::event::{self, EventHeader, EventInput, Field, Probed};
use crate::store::{CommitOutcome, NewEvent};
use crate::stream::sequencer::Publication;
use dedupe::Original;
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

fn signature_error(e: VerifyError) -> ApiError {
    match e {
        VerifyError::InvalidSignature => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_signature",
            "Invalid webhook signature",
        ),
        VerifyError::StaleTimestamp => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "stale_timestamp",
            "Webhook timestamp is outside the allowed window",
        ),
    }
}

pub async fn webhook(
    State(app): State<AppState>,
    source: Result<Path<String>, axum::extract::rejection::PathRejection>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let received = Instant::now();
    // A name that does not even decode (invalid UTF-8) is no source we know.
    let source = source.map(|Path(s)| s).unwrap_or_default();
    match ingest(&app, &source, peer, &headers, body, received).await {
        Ok(resp) => resp,
        Err(e) => {
            tracing::debug!(source = %source, code = e.code, "webhook refused");
            let known = app.sources.contains_key(&source).then_some(source.as_str());
            app.analytics.rejected(known, e.status.as_u16(), e.code);
            e.into_response()
        }
    }
}

async fn ingest(
    app: &AppState,
    source_name: &str,
    peer: SocketAddr,
    headers: &HeaderMap,
    body: Body,
    received: Instant,
) -> Result<Response, ApiError> {
    let source = app.source(source_name).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_source",
            format!("Unknown source: {}", printable(source_name)),
        )
    })?;
    if !app.source_enabled(&source) {
        return Err(ApiError::unavailable(
            "source_not_configured",
            format!("Source {} has no secret configured", source.name),
        ));
    }
    let bytes = read_body(body, headers, app.config.max_event_size).await?;
    let client_ip = peer.ip().to_string();
    // The id comes from the stream sequencer, which publishes events in id order; `pending`
    // releases it however this request ends.
    let mut pending = None;
    let mut next_id = || {
        let (p, ts) = app.sequencer.next_id();
        let id = p.id();
        pending = Some(p);
        (id, ts)
    };
    // A wrong `Authorization: Bearer` key on `internal` is a failed agent authentication, and
    // counts toward the per-address throttle.
    let wrong_bearer = std::cell::Cell::new(false);
    let prepared = prepare(
        &source,
        headers,
        &bytes,
        &client_ip,
        now_ms(),
        &|auth| {
            let ok = app.is_agent_key(auth);
            wrong_bearer.set(!ok);
            ok
        },
        &mut next_id,
    );
    let prepared = match prepared {
        Err(e) if wrong_bearer.get() => {
            return Err(match app.auth_throttle.failed(peer.ip()) {
                Ok(()) => e,
                Err(retry_after) => crate::api::throttle::too_many_failures(retry_after),
            });
        }
        other => other?,
    };
    let (head, mut event, raw_json, mut payload_deferred) = match prepared {
        Prepared::Challenge(challenge) => {
            return Ok(axum::Json(json!({ "challenge": challenge })).into_response());
        }
        Prepared::Event {
            head,
            event,
            raw_json,
            payload_deferred,
        } => (head, event, raw_json, payload_deferred),
    };

    tracing::Span::current().record("event_id", tracing::field::display(head.id));
    if let Some(d) = &head.delivery_id
        && let Some(original) = app.dedupe.get(&source.name, d)
    {
        app.analytics.duplicate(&source.name);
        return Ok(duplicate_response(original, head.timestamp));
    }

    let identifier = event
        .get("metadata")
        .and_then(|m| m.get("identifier"))
        .and_then(Value::as_str)
        .unwrap_or(&client_ip);
    let limit = app.limiter.check(&source.name, identifier);
    if limit.allowed
        && let Some(hits) = &app.cluster_hits
    {
        hits.record(&source.name, identifier);
    }
    if !limit.allowed {
        let mut err = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("Rate limit exceeded for {}:{identifier}", source.name),
        );
        for (k, v) in limit.headers() {
            if let Ok(v) = HeaderValue::from_str(&v) {
                err = err.with_header(header::HeaderName::from_static(k), v);
            }
        }
        return Err(err);
    }

    // The archive keeps the event as received; transformations only shape what agents get.
    let (text, payload_span) =
        event::serialize_event_spliced(&event, raw_json.then_some(&bytes[..]));
    let body = bytes::Bytes::from(text);
    // The rules that route this event: loaded once, so that the payload decision below and the
    // evaluation see the same rule set.
    let compiled = app.compiled.load_full();
    // The payload tree is built only for rules that read it (conditions on `payload.…`, jq
    // programs) and for live streams whose filters read it (a stream's message is the stored
    // text either way). A filter opened after this check still gets it: publishing
    // materializes a deferred payload when a filter reads it.
    if payload_deferred
        && (compiled.rules.reads_payload(&head.source, &head.event_type) || app.hub.needs_payload())
    {
        event::materialize_payload(&mut event, &bytes);
        payload_deferred = false;
    }
    // jq programs may run up to their time budget: keep them off the async workers.
    let plan = if compiled.rules.has_transforms() {
        let (app3, head3, body3) = (app.clone(), head.clone(), body.clone());
        let (plan, ev) = tokio::task::spawn_blocking(move || {
            let mut ev = event;
            let plan = app3.plan_with(&compiled, &head3, &mut ev, &body3);
            (plan, ev)
        })
        .await
        .map_err(|e| ApiError::internal("routing task failed", e))?;
        event = ev;
        plan
    } else {
        app.plan_with(&compiled, &head, &mut event, &body)
    };
    let reservation = app.queue.reserve(plan.jobs.len()).map_err(|_| {
        ApiError::unavailable("queue_full", "The delivery queue is full; retry later")
            .with_header(header::RETRY_AFTER, HeaderValue::from_static("5"))
    })?;
    // A payload still deferred is published from its text inside `body`, not from the request
    // body: that is a slice of the connection's read buffer, which would stay pinned until the
    // event is published (behind every earlier event still committing).
    let deferred_payload = payload_deferred.then(|| match payload_span {
        Some(span) => body.slice(span),
        None => bytes.clone(),
    });
    drop(bytes);
    let new_event = NewEvent {
        id: head.id,
        source: head.source.clone(),
        event_type: head.event_type.clone(),
        action: head.action.clone(),
        delivery_id: head.delivery_id.clone(),
        timestamp: head.timestamp,
        filtered: !plan.processed,
        body,
        deliveries: plan.deliveries,
        streamed: plan.streamed,
    };
    let routed = plan.routed;
    let processed = plan.processed;
    let jobs = plan.jobs;
    let streams = plan.streams;
    let firehose = plan.firehose_body;
    // Past this point the event is committed even if the client goes away: the commit and the
    // hand-over to the scheduler run in their own task, which a dropped handler cannot cancel.
    let app2 = app.clone();
    let committed = app
        .tasks
        .spawn(async move {
            let outcome = app2.store.commit_event(new_event).await?;
            if outcome == CommitOutcome::Stored {
                app2.queue.enqueue(jobs, reservation);
                if let Some(p) = pending {
                    p.publish(Publication {
                        event_view: event,
                        deferred_payload,
                        firehose_body: firehose,
                        items: streams,
                    });
                }
                if let Some(d) = &head.delivery_id {
                    app2.dedupe.insert(
                        &head.source,
                        d,
                        Original {
                            event_id: head.id,
                            processed,
                            routed,
                        },
                    );
                }
            }
            Ok::<_, crate::store::StoreError>((head, outcome))
        })
        .await
        .map_err(|e| ApiError::internal("commit task failed", e))??;
    let (head, outcome) = committed;
    match outcome {
        CommitOutcome::Stored => {
            app.analytics
                .event_accepted(&source.name, !processed, routed, received.elapsed())
        }
        CommitOutcome::Duplicate { .. } => app.analytics.duplicate(&source.name),
    }
    let mut resp = match outcome {
        CommitOutcome::Stored => axum::Json(Accepted {
            success: true,
            event_id: head.id,
            processed,
            routed,
            duplicate: None,
            timestamp: head.timestamp,
        })
        .into_response(),
        CommitOutcome::Duplicate {
            event_id,
            filtered,
            routed,
        } => duplicate_response(
            Original {
                event_id,
                processed: !filtered,
                routed,
            },
            head.timestamp,
        ),
    };
    for (k, v) in limit.headers() {
        if let Ok(v) = HeaderValue::from_str(&v) {
            resp.headers_mut()
                .insert(header::HeaderName::from_static(k), v);
        }
    }
    Ok(resp)
}

/// A 2xx answer to a webhook (API.md section 3). Typed rather than built with `json!`: that
/// makes a map, its keys and an id string for every webhook before serializing them.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Accepted {
    success: bool,
    event_id: uuid::Uuid,
    processed: bool,
    routed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    duplicate: Option<bool>,
    timestamp: i64,
}

fn duplicate_response(original: Original, timestamp: i64) -> Response {
    axum::Json(Accepted {
        success: true,
        event_id: original.event_id,
        processed: original.processed,
        routed: original.routed,
        duplicate: Some(true),
        timestamp,
    })
    .into_response()
}

/// A source name echoed in an error: cut short, with control and formatting characters escaped
/// so the message cannot be made to look like another name.
fn printable(s: &str) -> String {
    s.chars()
        .take(64)
        .flat_map(|c| {
            if c.is_control() || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') {
                c.escape_unicode().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
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
) -> Result<Prepared, ApiError> {
    verify_request(source, headers, bytes, now_ms, agent_key)?;
    let kind = event::body_kind(headers).map_err(|e| ApiError::invalid_body(e.0))?;
    let Probed {
        payload,
        fields,
        raw_json,
    } = event::probe_body(kind, bytes, &source.probe).map_err(|e| ApiError::invalid_body(e.0))?;
    if source.scheme == Scheme::Slack && fields.str(Field::Type) == Some("url_verification") {
        // Rare, and the challenge may be any JSON: parse the whole payload for it.
        let payload = match payload {
            Some(p) => p,
            None => event::parse_json_object(bytes).map_err(|e| ApiError::invalid_body(e.0))?,
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
        .map_err(|e| ApiError::invalid_body(e.0))?;
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

/// Reads the body, refusing early on a declared length over the limit and never reading more
/// than one chunk past it.
async fn read_body(body: Body, headers: &HeaderMap, max: usize) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("The body is larger than the limit of {max} bytes"),
        )
    };
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > max as u64
    {
        return Err(too_large());
    }
    match axum::body::to_bytes(body, max).await {
        Ok(b) => Ok(b),
        Err(e) => {
            // `to_bytes` reports the limit through a boxed LengthLimitError in its source chain.
            let mut src: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            while let Some(s) = src {
                if s.is::<http_body_util::LengthLimitError>() {
                    return Err(too_large());
                }
                src = s.source();
            }
            Err(ApiError::invalid_body("The request body could not be read"))
        }
    }
}

/// Checks the provider's signature (or, on `internal`, an agent key) on the raw bytes.
fn verify_request(
    source: &Source,
    headers: &HeaderMap,
    body: &[u8],
    now_ms: i64,
    agent_key: &dyn Fn(&[u8]) -> bool,
) -> Result<(), ApiError> {
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
