//! JSON log lines that name their trace: `trace_id` and `span_id` of the innermost span of
//! `super::trace` around the event, first in the line, so a log search can jump to the trace.

use std::fmt;

use opentelemetry::trace::{SpanId, TraceId};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::{LookupSpan, SpanData as _};

/// The OpenTelemetry ids of a span of ours, kept with the span in the registry (the OpenTelemetry
/// layer keeps its own data private).
#[derive(Clone, Copy)]
pub(super) struct TraceIds {
    pub trace_id: TraceId,
    pub span_id: SpanId,
}

/// Keeps `ids` with `span`, for the log lines written inside it.
pub(super) fn remember(span: &tracing::Span, ids: TraceIds) {
    span.with_subscriber(|(id, dispatch)| {
        if let Some(registry) = dispatch.downcast_ref::<tracing_subscriber::Registry>()
            && let Some(data) = registry.span_data(id)
        {
            let mut ext = data.extensions_mut();
            if ext.get_mut::<TraceIds>().is_none() {
                ext.insert(ids);
            }
        }
    });
}

/// A JSON event format (`F`) with the ids of the trace the event happened in.
pub(super) struct WithTraceIds<F>(pub F);

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let ids = ctx.event_scope().and_then(|mut scope| {
            scope.find_map(|span| span.extensions().get::<TraceIds>().copied())
        });
        let Some(ids) = ids else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::with_capacity(256);
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            Some(rest) => write!(
                writer,
                "{{\"trace_id\":\"{}\",\"span_id\":\"{}\",{rest}",
                ids.trace_id, ids.span_id
            ),
            None => writer.write_str(&line),
        }
    }
}
