//! Stage: publish a committed event to live streams, in id order (through the sequencer that
//! gave the event its id).

use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;

use crate::stream::StreamItem;
use crate::stream::sequencer::{Pending, Publication};

/// Publishes the event `pending` stands for; dropping `pending` instead (an event not stored)
/// releases its place in the order. `trace_context`: the publishing span's, which the messages
/// carry (while tracing is on).
pub fn publish(
    pending: Pending,
    event_view: Value,
    deferred_payload: Option<Bytes>,
    firehose_body: Option<Bytes>,
    items: Vec<StreamItem>,
    trace_context: Option<Arc<str>>,
) {
    pending.publish(Publication {
        event_view,
        deferred_payload,
        firehose_body,
        items,
        trace_context,
    });
}
