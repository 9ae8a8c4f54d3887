//! Logging and tracing set-up: human-readable or JSON lines on stderr, filtered by `LOG_LEVEL`,
//! and, when the standard `OTEL_*` variables ask for it, OpenTelemetry traces exported over OTLP
//! (`trace` holds the spans; `export` builds the exporter).

mod export;
mod json;
pub mod trace;

use std::io::IsTerminal as _;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::{FilterExt as _, filter_fn};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::config::LogFormat;

/// What `init` installed that must be flushed before the process exits.
#[must_use = "dropping the guard does not flush the traces: call `shutdown`"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered and stops the exporter. Call it outside the runtime's
    /// worker threads (the exporter's task runs on them) while the runtime is still alive.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            eprintln!("event-router: flushing traces failed: {e}");
        }
    }
}

/// The layer that exports: it sees the spans of `trace` (and warnings and errors inside them, as
/// span events), never the per-request logging spans.
fn exported<S>(tracer: opentelemetry_sdk::trace::SdkTracer) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_target(false)
        .with_level(false)
        .with_filter(filter_fn(|m| {
            if m.is_span() {
                m.target() == trace::TARGET
            } else {
                *m.level() <= tracing::Level::WARN
            }
        }))
}

/// Installs the global subscriber once; later calls (tests) are ignored. Tracing is set up only
/// when the `OTEL_*` variables ask for an OTLP exporter (see `export::from_env`); then this must
/// run inside a tokio runtime, which the exporter's batch task runs on.
pub fn init(level: &str, format: LogFormat) -> Telemetry {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour codes only for a person at a terminal: a file, a pipe or a log shipper gets
    // plain text.
    let ansi = std::io::stderr().is_terminal();
    let provider = match export::from_env() {
        Ok(provider) => provider,
        Err(e) => {
            eprintln!("event-router: traces are not exported: {e}");
            None
        }
    };
    let Some(provider) = provider else {
        // No tracing: the subscriber exactly as without OpenTelemetry, so nothing on the hot
        // path changes (the spans of `trace` are not even created; see `trace::enabled`).
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(ansi)
            .with_writer(std::io::stderr);
        let _ = match format {
            LogFormat::Json => builder.json().flatten_event(true).try_init(),
            LogFormat::Text => builder.try_init(),
        };
        return Telemetry { provider: None };
    };
    let tracer = provider.tracer("event-router");
    // The log sees our spans at any `LOG_LEVEL`, so that a JSON line can name its trace.
    let log_filter = filter.or(filter_fn(|m| m.is_span() && m.target() == trace::TARGET));
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Json => tracing_subscriber::registry()
            .with(
                fmt.json()
                    .flatten_event(true)
                    .event_format(json::WithTraceIds(
                        tracing_subscriber::fmt::format().json().flatten_event(true),
                    ))
                    .with_filter(log_filter),
            )
            .with(exported(tracer))
            .try_init(),
        LogFormat::Text => tracing_subscriber::registry()
            .with(fmt.with_filter(log_filter))
            .with(exported(tracer))
            .try_init(),
    };
    if installed.is_err() {
        // Another subscriber was installed first (tests): its spans would not reach ours.
        let _ = provider.shutdown();
        return Telemetry { provider: None };
    }
    trace::enable();
    tracing::info!(
        exporter = %export::describe(),
        "exporting traces over OTLP"
    );
    Telemetry {
        provider: Some(provider),
    }
}
