-- The W3C trace context (`traceparent`, then a newline and `tracestate` if any) of the webhook
-- that created the delivery, so that its attempts join that trace on a restart or on another
-- node too. NULL while tracing is off.
ALTER TABLE deliveries ADD COLUMN IF NOT EXISTS trace_context text;
