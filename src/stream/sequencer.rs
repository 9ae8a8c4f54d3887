//! Publishes committed events to streams in event-id order.
//!
//! Resume works by id ("everything after the last id I saw"), so a stream must never show a
//! larger id before a smaller one: concurrent webhooks commit and finish in any order, yet an
//! event is published only once every smaller id has been resolved (published, or refused and
//! never stored). Ids are generated and registered under one lock, so no smaller id can appear
//! after a larger one was published.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::{Hub, Message, Registration, StreamItem, Subscriber, publish_event};
use crate::rules::Subscription;

/// What a committed event publishes.
pub struct Publication {
    pub event_view: Value,
    /// Set when `event_view`'s payload was left unparsed at ingest (no stream was open then):
    /// the payload's JSON text, parsed into the view only if someone listens by now.
    pub deferred_payload: Option<Bytes>,
    pub firehose_body: Option<Bytes>,
    pub items: Vec<StreamItem>,
    /// The W3C trace context the messages carry (`telemetry::trace`; `None` while tracing is off).
    pub trace_context: Option<Arc<str>>,
}

#[derive(Default)]
struct Inner {
    /// Ids handed out and not yet resolved.
    outstanding: BTreeSet<Uuid>,
    /// Resolved events waiting for a smaller outstanding id.
    ready: BTreeMap<Uuid, Publication>,
}

pub struct Sequencer {
    hub: Arc<Hub>,
    // A std Mutex: every critical section is short and never awaits.
    inner: Mutex<Inner>,
}

/// An id in flight; resolving it (or dropping the guard) lets later events through.
pub struct Pending {
    seq: Arc<Sequencer>,
    id: Uuid,
    resolved: bool,
}

impl Pending {
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// The event was committed: publish it (in order).
    pub fn publish(mut self, publication: Publication) {
        self.resolved = true;
        self.seq.resolve(self.id, Some(publication));
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.resolved {
            self.seq.resolve(self.id, None);
        }
    }
}

impl Sequencer {
    pub fn new(hub: Arc<Hub>) -> Arc<Sequencer> {
        Arc::new(Sequencer {
            hub,
            inner: Mutex::new(Inner::default()),
        })
    }

    /// A new event id (UUID v7) and its millisecond timestamp, registered as outstanding.
    pub fn next_id(self: &Arc<Self>) -> (Pending, i64) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (id, ts) = crate::event::new_event_id();
        inner.outstanding.insert(id);
        drop(inner);
        (
            Pending {
                seq: self.clone(),
                id,
                resolved: false,
            },
            ts,
        )
    }

    /// An id such that every smaller id handed out so far is resolved: the smallest outstanding
    /// one, or a fresh id when none is (see `queue::QueueConfig::floor`).
    pub fn floor(&self) -> Uuid {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner
            .outstanding
            .first()
            .copied()
            .unwrap_or_else(|| crate::event::new_event_id().0)
    }

    fn resolve(&self, id: Uuid, publication: Option<Publication>) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.outstanding.remove(&id);
        if let Some(p) = publication {
            inner.ready.insert(id, p);
        }
        // Publishing under the lock keeps the order across threads; it never blocks (bounded
        // buffers are offered with try_send).
        let floor = inner.outstanding.first().copied();
        while let Some(entry) = inner.ready.first_entry() {
            if floor.is_some_and(|f| *entry.key() > f) {
                break;
            }
            let (id, p) = entry.remove_entry();
            publish_event(
                &self.hub,
                id,
                p.event_view,
                p.deferred_payload,
                p.firehose_body,
                p.items,
                p.trace_context.as_deref(),
            );
        }
    }

    /// Replaces a subscriber's filter between two publications, so an event is never matched
    /// against a view prepared for the previous filter (one without the payload, say).
    pub fn refilter(&self, agent: &str, sub: &Subscriber, filter: Subscription) {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        self.hub.refilter(agent, sub, filter);
        drop(inner);
    }

    /// Subscribes and returns the bound between replay and live: every event with a smaller id
    /// was already published (so comes from the store), every event from it on will arrive
    /// live, in order.
    pub fn subscribe(
        &self,
        agent: &str,
        filter: Subscription,
    ) -> (Registration, mpsc::Receiver<Arc<Message>>, Uuid) {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let bound = inner
            .outstanding
            .first()
            .copied()
            .unwrap_or_else(|| crate::event::new_event_id().0);
        let (reg, rx) = self.hub.subscribe(agent, filter);
        drop(inner);
        (reg, rx, bound)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn publishes_in_id_order_whatever_the_commit_order() {
        let hub = Arc::new(Hub::new(64));
        let seq = Sequencer::new(hub.clone());
        let (_reg, mut rx, _) = seq.subscribe(super::super::FIREHOSE, Subscription::all());
        let (a, _) = seq.next_id();
        let (b, _) = seq.next_id();
        let (c, _) = seq.next_id();
        let (ia, ib, ic) = (a.id(), b.id(), c.id());
        let publication = || Publication {
            event_view: serde_json::json!({}),
            deferred_payload: None,
            firehose_body: Some(Bytes::from_static(b"{}")),
            items: Vec::new(),
            trace_context: None,
        };
        c.publish(publication());
        assert!(rx.try_recv().is_err(), "c waits for a and b");
        drop(b); // refused: never stored
        assert!(rx.try_recv().is_err(), "c still waits for a");
        a.publish(publication());
        assert_eq!(rx.recv().await.unwrap().event_id, ia);
        assert_eq!(rx.recv().await.unwrap().event_id, ic);
        assert!(rx.try_recv().is_err());
        let _ = ib;
        // With nothing outstanding, the bound is above every id handed out.
        let (_r, _rx, bound) = seq.subscribe("x", Subscription::all());
        assert!(bound > ic);
    }
}
