//! Operational events: what the router says about itself (an agent's circuit opened, a
//! delivery went to the dead-letter queue, the queue is filling…), as events of source
//! `router` that go through the same stages as a webhook — route, commit, publish — so filters,
//! routes, push agents and streams apply to them as to any source (docs/operations.md,
//! "Operational events").
//!
//! Two rules keep them from feeding on themselves: an event about an agent is never routed to
//! that agent, and each kind is sent at most once per interval per subject (`Limiter`), the
//! next one carrying how many were held back.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::IngestError;
use super::commit::commit;
use super::pipeline::Ingest;
use super::route::route;
use crate::event::EventHeader;

/// The source of operational events. Not a webhook source: `POST /webhook/router` is refused.
pub const ROUTER: &str = "router";

/// What one operational event is about.
pub struct Operational {
    /// The event type, such as `agent.circuit_opened`.
    pub kind: &'static str,
    /// What the event is about (an agent id, a source, `queue`): the rate-limit key, and the
    /// event's `metadata.identifier`.
    pub subject: String,
    /// The agent the event is about, which never receives it.
    pub about_agent: Option<String>,
    pub payload: Map<String, Value>,
}

/// (kind, subject) → (last sent at, held back since).
type Sent = HashMap<(&'static str, String), (i64, u64)>;

/// At most one event per kind and subject per interval.
pub struct Limiter {
    interval_ms: i64,
    last: Mutex<Sent>,
}

impl Limiter {
    pub fn new(interval_ms: u64) -> Limiter {
        Limiter {
            interval_ms: interval_ms as i64,
            last: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(held back since the last one)` if an event of `kind` about `subject` may go now.
    pub fn admit(&self, kind: &'static str, subject: &str, now: i64) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        // Forget what is long past, so the map stays as small as the set of live subjects.
        if last.len() > 10_000 {
            let horizon = now - self.interval_ms;
            last.retain(|_, (at, _)| *at >= horizon);
        }
        match last.get_mut(&(kind, subject.to_string())) {
            Some((at, held)) if now - *at < self.interval_ms => {
                *held += 1;
                None
            }
            Some((at, held)) => {
                *at = now;
                Some(std::mem::take(held))
            }
            None => {
                last.insert((kind, subject.to_string()), (now, 0));
                Some(0)
            }
        }
    }
}

/// Publishes one operational event (unless the limiter holds it back); returns its id.
pub async fn emit(
    ingest: &Ingest,
    limiter: &Limiter,
    op: Operational,
) -> Result<Option<uuid::Uuid>, IngestError> {
    let (pending, timestamp) = ingest.sequencer.next_id();
    let Some(held) = limiter.admit(op.kind, &op.subject, timestamp) else {
        return Ok(None);
    };
    let mut payload = op.payload;
    if held > 0 {
        payload.insert("suppressed".into(), Value::from(held));
    }
    let payload = Value::Object(payload);
    let head = EventHeader {
        id: pending.id(),
        source: ROUTER.into(),
        event_type: op.kind.into(),
        action: None,
        delivery_id: None,
        timestamp,
    };
    let text = Bytes::from(payload.to_string());
    let event = json!({
        "id": head.id,
        "source": ROUTER,
        "type": op.kind,
        "action": null,
        "deliveryId": null,
        "timestamp": timestamp,
        "payload": payload,
        "metadata": {"identifier": op.subject, "clientIp": "", "receivedBytes": 0, "headers": {}},
    });
    let mut routed = route(&ingest.rules, &ingest.hub, &head, event, text, false, false).await?;
    if let Some(agent) = &op.about_agent {
        let plan = &mut routed.plan;
        plan.deliveries.retain(|d| &d.agent_id != agent);
        plan.jobs.retain(|j| &*j.agent_id != agent.as_str());
        plan.streamed.retain(|(a, _)| a != agent);
        plan.streams.retain(|s| &*s.agent_id != agent.as_str());
        plan.routed = !plan.deliveries.is_empty() || !plan.streamed.is_empty();
    }
    let id = head.id;
    // Router events are not rate limited: no lease pays for them.
    commit(ingest, head, routed, Some(pending), None).await?;
    Ok(Some(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_event_per_kind_and_subject_per_interval_with_the_count_held_back() {
        let l = Limiter::new(1_000);
        assert_eq!(l.admit("agent.circuit_opened", "a", 0), Some(0));
        assert_eq!(l.admit("agent.circuit_opened", "a", 500), None);
        assert_eq!(l.admit("agent.circuit_opened", "a", 900), None);
        // Other subjects and kinds are independent.
        assert_eq!(l.admit("agent.circuit_opened", "b", 900), Some(0));
        assert_eq!(l.admit("agent.recovered", "a", 900), Some(0));
        assert_eq!(l.admit("agent.circuit_opened", "a", 1_000), Some(2));
        assert_eq!(l.admit("agent.circuit_opened", "a", 2_000), Some(0));
    }
}
