-- The W3C trace context (`traceparent`, then a newline and `tracestate` if any) of the webhook
-- that created the delivery, so that its attempts join that trace after a restart too. NULL
-- while tracing is off.
ALTER TABLE deliveries ADD COLUMN trace_context TEXT;
