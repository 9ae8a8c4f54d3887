//! The spans of one webhook's trace, for OpenTelemetry (docs/operations.md, "Tracing"):
//!
//! ```text
//! POST /webhook/{source}          server; continues the caller's `traceparent`
//! ├── verify                      signature, decode, classify
//! ├── route                       filters and routes
//! ├── commit                      the event and its deliveries stored
//! ├── publish                     producer: handed to the live streams
//! └── POST                        client: one per delivery attempt, whenever it runs
//! ```
//!
//! Nothing here costs anything while tracing is off: every function checks `enabled` (one
//! relaxed load of a flag set once at start) before it creates a span or formats an id.
//!
//! A trace context travels as W3C Trace Context: `traceparent` and `tracestate` headers to
//! agents, the same two as fields of a stream message, and, stored with a delivery, the
//! `traceparent` followed by a newline and the `tracestate` when there is one.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::{HeaderMap, Uri};
use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::json::{TraceIds, remember};

/// The target of every span exported (the other spans are the log's alone).
pub const TARGET: &str = "event_router::trace";

static ENABLED: AtomicBool = AtomicBool::new(false);

pub(super) fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// Whether spans are exported (set once at start by `telemetry::init`).
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// A trace context as stored: (`traceparent`, `tracestate`).
pub fn split(stored: &str) -> (&str, Option<&str>) {
    match stored.split_once('\n') {
        Some((parent, state)) => (parent, Some(state)),
        None => (stored, None),
    }
}

/// The trace context of `span`, as stored; `None` for a span not exported.
pub fn context_of(span: &Span) -> Option<Arc<str>> {
    if !enabled() {
        return None;
    }
    let mut fields = HashMap::with_capacity(2);
    TraceContextPropagator::new().inject_context(&span.context(), &mut fields);
    let parent = fields.remove("traceparent")?;
    Some(
        match fields.remove("tracestate").filter(|s| !s.is_empty()) {
            Some(state) => format!("{parent}\n{state}").into(),
            None => parent.into(),
        },
    )
}

/// A stored trace context, read as the propagator reads headers.
struct Stored<'a>(&'a str, Option<&'a str>);

impl Extractor for Stored<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => Some(self.0),
            "tracestate" => self.1,
            _ => None,
        }
    }
    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

/// Starts `span`'s OpenTelemetry span and keeps its ids for the JSON log lines inside it.
fn started(span: Span) -> Span {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if sc.is_valid() {
        remember(
            &span,
            TraceIds {
                trace_id: sc.trace_id(),
                span_id: sc.span_id(),
            },
        );
    }
    span
}

/// The server span of a `POST /webhook/{source}` request, continuing the caller's trace when
/// its headers carry a valid `traceparent`. `None` while tracing is off, or for another request.
pub fn webhook(method: &http::Method, uri: &Uri, headers: &HeaderMap) -> Option<Span> {
    if !enabled() || method != http::Method::POST || !uri.path().starts_with("/webhook/") {
        return None;
    }
    let user_agent = headers
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok());
    let span = tracing::info_span!(
        target: TARGET,
        "request",
        otel.name = "POST /webhook/{source}",
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = "POST",
        http.route = "/webhook/{source}",
        url.path = uri.path(),
        user_agent.original = user_agent,
        http.response.status_code = Empty,
        client.address = Empty,
        event.id = Empty,
        event.source = Empty,
        event.type = Empty,
        // The log's name for the event id (`http::router` records it on the request span).
        event_id = Empty,
    );
    let parent =
        TraceContextPropagator::new().extract(&opentelemetry_http::HeaderExtractor(headers));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
    Some(started(span))
}

/// Records the answer on a webhook's span: its status, an error for a 5xx (a refusal is the
/// client's, not ours, as the HTTP conventions have it).
pub fn answered(span: &Span, status: u16) {
    if !enabled() {
        return;
    }
    span.record("http.response.status_code", status);
    if status >= 500 {
        span.record("otel.status_code", "ERROR");
    }
}

/// Records the event a webhook became on its span (the current one).
pub fn event(id: &uuid::Uuid, source: &str, event_type: &str, client: &str) {
    if !enabled() {
        return;
    }
    let span = Span::current();
    span.record("event.id", tracing::field::display(id));
    span.record("event.source", source);
    span.record("event.type", event_type);
    span.record("client.address", client);
}

/// A stage of ingest (`verify`, `route`, `commit`), inside the current span. A disabled span
/// while tracing is off.
pub fn stage(name: &'static str) -> Span {
    if !enabled() {
        return Span::none();
    }
    started(tracing::info_span!(target: TARGET, "stage", otel.name = name))
}

/// The producer span of handing a committed event to the live streams, inside `webhook`.
pub fn publish(webhook: &Span, event_id: &uuid::Uuid, agents: usize) -> Span {
    if !enabled() {
        return Span::none();
    }
    started(tracing::info_span!(
        target: TARGET,
        parent: webhook,
        "publish",
        otel.name = "publish streams",
        otel.kind = "producer",
        messaging.system = "event-router",
        messaging.operation.type = "send",
        messaging.operation.name = "publish",
        messaging.destination.name = "streams",
        messaging.message.id = %event_id,
        messaging.batch.message_count = agents,
    ))
}

/// What an attempt's span says about its delivery.
pub struct AttemptInfo<'a> {
    pub event_id: &'a uuid::Uuid,
    pub delivery_id: &'a uuid::Uuid,
    pub agent_id: &'a str,
    pub source: &'a str,
    pub event_type: &'a str,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// The agent's URL, without its credentials.
    pub uri: &'a Uri,
    /// The delivery's stored trace context (`None`: made while tracing was off).
    pub stored: Option<&'a str>,
}

/// One delivery attempt's client span and the trace context the agent receives.
pub struct Attempt {
    pub span: Span,
    pub traceparent: String,
    pub tracestate: Option<String>,
}

impl Attempt {
    /// The client span of an attempt, a child of the webhook's span through the stored trace
    /// context (which outlives restarts and crosses nodes); `None` while tracing is off.
    pub fn start(info: AttemptInfo<'_>) -> Option<Attempt> {
        if !enabled() {
            return None;
        }
        // The URL without its query, which may hold a token.
        let url = format!(
            "{}://{}{}",
            info.uri.scheme_str().unwrap_or("http"),
            info.uri.authority().map_or("", |a| a.as_str()),
            info.uri.path()
        );
        let port = info.uri.port_u16().unwrap_or(match info.uri.scheme_str() {
            Some("https") => 443,
            _ => 80,
        });
        let span = tracing::info_span!(
            target: TARGET,
            parent: None,
            "attempt",
            otel.name = "POST",
            otel.kind = "client",
            otel.status_code = Empty,
            http.request.method = "POST",
            url.full = url,
            server.address = info.uri.host().unwrap_or(""),
            server.port = port,
            http.request.resend_count = Empty,
            http.response.status_code = Empty,
            error.type = Empty,
            event.id = %info.event_id,
            event.source = info.source,
            event.type = info.event_type,
            delivery.id = %info.delivery_id,
            delivery.attempt = info.attempt,
            agent.id = info.agent_id,
        );
        if info.attempt > 1 {
            span.record("http.request.resend_count", info.attempt - 1);
        }
        if let Some(stored) = info.stored {
            let (parent, state) = split(stored);
            let cx = TraceContextPropagator::new().extract(&Stored(parent, state));
            if cx.span().span_context().is_valid() {
                let _ = span.set_parent(cx);
            }
        }
        let span = started(span);
        let context = context_of(&span)?;
        let (parent, state) = split(&context);
        Some(Attempt {
            traceparent: parent.to_string(),
            tracestate: state.map(str::to_string),
            span,
        })
    }

    /// The `traceparent` and `tracestate` the agent receives.
    pub fn headers(&self) -> (&str, Option<&str>) {
        (&self.traceparent, self.tracestate.as_deref())
    }

    /// The span to run the attempt in: this attempt's, or none while tracing is off.
    pub fn span_of(attempt: Option<&Attempt>) -> Span {
        attempt.map_or_else(Span::none, |a| a.span.clone())
    }

    /// Records the attempt's outcome: the agent's status, or the error.
    pub fn finish(&self, status: Option<u16>, delivered: bool, error: Option<&str>) {
        if let Some(status) = status {
            self.span.record("http.response.status_code", status);
        }
        if !delivered {
            self.span.record("otel.status_code", "ERROR");
            self.span.record(
                "error.type",
                match status {
                    Some(s) => s.to_string(),
                    None => error.map_or("_OTHER", classify).to_string(),
                },
            );
        }
    }
}

/// The `error.type` of an attempt that got no answer.
fn classify(error: &str) -> &'static str {
    if error.starts_with("timed out") {
        "timeout"
    } else if error.contains("connect") || error.contains("Connect") {
        "connection_error"
    } else {
        "_OTHER"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_context_splits_into_its_two_headers() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(split(parent), (parent, None));
        assert_eq!(
            split(&format!("{parent}\nrojo=1,congo=2")),
            (parent, Some("rojo=1,congo=2"))
        );
        // What the propagator makes of a stored context is the span context it names.
        let cx = TraceContextPropagator::new().extract(&Stored(parent, Some("rojo=1")));
        let sc = cx.span().span_context().clone();
        assert!(sc.is_valid() && sc.is_remote() && sc.is_sampled());
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert_eq!(sc.trace_state().header(), "rojo=1");
    }

    #[test]
    fn nothing_is_made_while_tracing_is_off() {
        // The flag is only ever set by `telemetry::init` with an exporter, which no unit test
        // installs.
        assert!(!enabled());
        assert!(stage("verify").is_none());
        assert!(context_of(&Span::current()).is_none());
        let uri: Uri = "http://agent.example/hook".parse().unwrap();
        let attempt = Attempt::start(AttemptInfo {
            event_id: &uuid::Uuid::nil(),
            delivery_id: &uuid::Uuid::nil(),
            agent_id: "a",
            source: "github",
            event_type: "push",
            attempt: 1,
            uri: &uri,
            stored: None,
        });
        assert!(attempt.is_none());
    }
}
