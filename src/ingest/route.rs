//! Stage: filter and route the event against the rules in force, into the text to store, the
//! delivery rows to commit and the jobs and stream items to hand on.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;

use super::IngestError;
use crate::event::{self, EventHeader};
use crate::routing::{Plan, Rules};
use crate::stream::Hub;

/// An event ready to commit.
pub struct Routed {
    /// The event as streams see it (its payload possibly still deferred).
    pub event: Value,
    /// The event's stored text.
    pub body: Bytes,
    pub plan: Plan,
    /// The payload's JSON text when `event`'s payload was never parsed (a slice of `body`).
    pub deferred_payload: Option<Bytes>,
}

/// `bytes` is the request body; `raw_json` says the payload is its JSON text verbatim, and
/// `payload_deferred` that the event's payload has not been parsed into a tree yet.
pub async fn route(
    rules: &Arc<Rules>,
    hub: &Hub,
    head: &EventHeader,
    mut event: Value,
    bytes: Bytes,
    raw_json: bool,
    mut payload_deferred: bool,
) -> Result<Routed, IngestError> {
    // The archive keeps the event as received; transformations only shape what agents get.
    let (text, payload_span) =
        event::serialize_event_spliced(&event, raw_json.then_some(&bytes[..]));
    let body = Bytes::from(text);
    // The rules that route this event: loaded once, so that the decision to run them off the
    // async workers and the evaluation see the same rule set.
    let compiled = rules.current_full();
    // The payload tree is built for live streams whose filters read it (a stream's message is
    // the stored text either way). A filter opened after this check still gets it: publishing
    // materializes a deferred payload when a filter reads it. The rules read a deferred payload
    // from its text, and parse it whole only to run a jq program on it.
    if payload_deferred && hub.needs_payload() {
        event::materialize_payload(&mut event, &bytes);
        payload_deferred = false;
    }
    // jq programs may run up to their time budget: keep them off the async workers.
    let plan = if compiled.rules.has_transforms() {
        let (rules, head, body) = (rules.clone(), head.clone(), body.clone());
        let text = payload_deferred.then(|| bytes.clone());
        let (plan, ev) = tokio::task::spawn_blocking(move || {
            let mut ev = event;
            let plan = rules.plan_with(&compiled, &head, &mut ev, &body, text.as_deref());
            (plan, ev)
        })
        .await
        .map_err(|e| IngestError::Internal {
            context: "routing task failed",
            detail: e.to_string(),
        })?;
        event = ev;
        plan
    } else {
        let text = payload_deferred.then_some(&bytes[..]);
        rules.plan_with(&compiled, head, &mut event, &body, text)
    };
    if plan.payload_parsed {
        payload_deferred = false;
    }
    // A payload still deferred is published from its text inside `body`, not from the request
    // body: that is a slice of the connection's read buffer, which would stay pinned until the
    // event is published (behind every earlier event still committing).
    let deferred_payload = payload_deferred.then(|| match payload_span {
        Some(span) => body.slice(span),
        None => bytes.clone(),
    });
    drop(bytes);
    Ok(Routed {
        event,
        body,
        plan,
        deferred_payload,
    })
}
