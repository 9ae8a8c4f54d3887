//! Stage: commit the event and its deliveries durably (the store's group commit), then hand the
//! deliveries to the scheduler, publish the event and remember its delivery id.
//!
//! Past the reservation the work runs in its own task: a client that goes away drops the
//! handler's future at any `.await`, and an event being committed must still be queued and
//! published (ARCHITECTURE.md, "No half-done work").

use tracing::Instrument as _;

use super::dedupe::Original;
use super::pipeline::Ingest;
use super::route::Routed;
use super::{IngestError, publish};
use crate::event::EventHeader;
use crate::store::{CommitOutcome, NewEvent};
use crate::stream::sequencer::Pending;
use crate::telemetry::trace;

/// What the commit made of the event.
pub struct Committed {
    pub head: EventHeader,
    pub outcome: CommitOutcome,
    pub processed: bool,
    pub routed: bool,
}

/// `lease`: the rate-limit lease the event was admitted under (several nodes), whose spend the
/// store records in the event's transaction.
pub async fn commit(
    ingest: &Ingest,
    head: EventHeader,
    routed: Routed,
    pending: Option<Pending>,
    lease: Option<uuid::Uuid>,
) -> Result<Committed, IngestError> {
    let Routed {
        event,
        body,
        mut plan,
        deferred_payload,
    } = routed;
    // The webhook's span (while tracing is on): its context goes with every delivery, so that
    // the attempts join its trace whenever and wherever they run.
    let webhook = trace::enabled().then(tracing::Span::current);
    if let Some(context) = webhook.as_ref().and_then(trace::context_of) {
        for d in &mut plan.deliveries {
            d.trace_context = Some(context.clone());
        }
        for j in &mut plan.jobs {
            j.trace_context = Some(context.clone());
        }
    }
    let commit_span = trace::stage("commit");
    let reservation = ingest
        .queue
        .reserve(plan.jobs.len())
        .map_err(|_| IngestError::QueueFull)?;
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
    let (routed, processed) = (plan.routed, plan.processed);
    let (jobs, streams, firehose) = (plan.jobs, plan.streams, plan.firehose_body);
    let (store, queue, dedupe) = (
        ingest.store.clone(),
        ingest.queue.clone(),
        ingest.dedupe.clone(),
    );
    let (head, outcome) = ingest
        .tasks
        .spawn(async move {
            let outcome = store
                .commit_event_spending(new_event, lease)
                .instrument(commit_span)
                .await?;
            if outcome == CommitOutcome::Stored {
                queue.enqueue(jobs, reservation);
                if let Some(p) = pending {
                    let span = webhook.map(|w| trace::publish(&w, &head.id, streams.len()));
                    let _publishing = span.as_ref().map(|s| s.enter());
                    let trace_context = span.as_ref().and_then(trace::context_of);
                    publish::publish(p, event, deferred_payload, firehose, streams, trace_context);
                }
                if let Some(d) = &head.delivery_id {
                    dedupe.insert(
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
            Ok::<_, IngestError>((head, outcome))
        })
        .await
        .map_err(|e| IngestError::Internal {
            context: "commit task failed",
            detail: e.to_string(),
        })??;
    Ok(Committed {
        head,
        outcome,
        processed,
        routed,
    })
}
