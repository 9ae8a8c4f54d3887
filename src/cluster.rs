//! Several nodes on one PostgreSQL database (API.md section 9): what a node runs besides
//! serving. Its lease heartbeat (which also shares its queue figures), the takeover of dead
//! nodes' deliveries, the notices from the other nodes (rule changes, events for streams,
//! wake-ups), and the cluster-wide rate-limit counts. On SQLite none of this starts: the store
//! reports no node id.
//!
//! Who delivers what: the node that commits a delivery owns it and delivers it from its own
//! in-memory scheduler, exactly as a single node does, so the hot path never asks the database
//! for work. A node whose lease lapsed (killed, partitioned) loses its unfinished deliveries to
//! whichever live node claims them first (`FOR UPDATE SKIP LOCKED`); a node that stops cleanly
//! hands them back at once and wakes the others.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;

use tokio_util::sync::CancellationToken;

use crate::queue::{Queue, QueueSnapshot};
use crate::ratelimit::RateLimiter;
use crate::routing::Rules;
use crate::store::{Notice, RateDelta, RemoteEvent, Store};
use crate::stream::{Hub, StreamItem, publish_event};

/// How often a node renews its lease and looks for orphaned deliveries. The lease
/// (`node_lease_ms`, PostgreSQL store option) must be several of these long.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// How often rate-limit hits are exchanged.
pub const RATE_SYNC: Duration = Duration::from_millis(250);

/// A key's totals are returned while anyone touched it this recently (ms); a key idle longer
/// everywhere starts from a fresh baseline.
const RATE_RECENT_MS: i64 = 2_000;

/// Most deliveries claimed per takeover query.
const TAKEOVER_BATCH: usize = 1_000;

/// Rate-limit hits this node allowed since the last exchange, and the cluster totals it saw.
#[derive(Default)]
pub struct ClusterHits {
    /// source → identifier → hits (nested so that recording a known key allocates nothing).
    pending: Mutex<HashMap<String, HashMap<String, u64>>>,
    /// `source:identifier` → the cluster-wide running total at the last exchange.
    seen: Mutex<HashMap<String, u64>>,
}

impl ClusterHits {
    /// Counts one request the local limiter allowed.
    pub fn record(&self, source: &str, identifier: &str) {
        self.add(source, identifier, 1);
    }

    fn add(&self, source: &str, identifier: &str, hits: u64) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let ids = match pending.get_mut(source) {
            Some(ids) => ids,
            None => pending.entry(source.to_string()).or_default(),
        };
        match ids.get_mut(identifier) {
            Some(n) => *n += hits,
            None => {
                ids.insert(identifier.to_string(), hits);
            }
        }
    }

    fn drain(&self) -> Vec<RateDelta> {
        let pending =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
        pending
            .into_iter()
            .flat_map(|(source, ids)| {
                ids.into_iter().map(move |(id, hits)| RateDelta {
                    key: format!("{source}:{id}"),
                    hits,
                })
            })
            .collect()
    }

    /// From the totals after an exchange, the hits other nodes added to each key since the
    /// previous one (`own`: what this node added in this exchange). A key seen for the first
    /// time only sets the baseline.
    fn remote_hits(&self, own: &[RateDelta], totals: Vec<(String, u64)>) -> Vec<(String, u64)> {
        let own: HashMap<&str, u64> = own.iter().map(|d| (d.key.as_str(), d.hits)).collect();
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let mut next = HashMap::with_capacity(totals.len());
        let mut remote = Vec::new();
        for (key, total) in totals {
            if let Some(&last) = seen.get(&key) {
                let mine = own.get(key.as_str()).copied().unwrap_or(0);
                let theirs = total.saturating_sub(last.saturating_add(mine));
                if theirs > 0 {
                    remote.push((key.clone(), theirs));
                }
            }
            next.insert(key, total);
        }
        // Keys nobody touched lately drop out, so their next activity starts a fresh baseline.
        *seen = next;
        remote
    }
}

/// What a node's cluster work acts on.
#[derive(Clone)]
pub struct Node {
    pub store: Arc<dyn Store>,
    pub queue: Queue,
    pub hub: Arc<Hub>,
    pub rules: Arc<Rules>,
    pub limiter: Arc<RateLimiter>,
    /// Allowed hits to share with the other nodes (`None` on a single node).
    pub hits: Option<Arc<ClusterHits>>,
    pub shutdown: CancellationToken,
}

/// Starts the node's cluster work if the store is shared; returns at once.
pub async fn start(state: &Node) -> anyhow::Result<()> {
    let Some(node) = state.store.node_id() else {
        return Ok(());
    };
    let notices = state.store.listen().await?;
    let wake = Arc::new(Notify::new());
    tracing::info!(%node, "cluster node started");

    let s = state.clone();
    let w = wake.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(HEARTBEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = s.shutdown.cancelled() => break,
                _ = tick.tick() => {
                    heartbeat(&s).await;
                    take_over(&s).await;
                }
                _ = w.notified() => take_over(&s).await,
            }
        }
    });

    if let Some(mut rx) = notices {
        let s = state.clone();
        tokio::spawn(async move {
            loop {
                let notice = tokio::select! {
                    _ = s.shutdown.cancelled() => break,
                    n = rx.recv() => match n {
                        Some(n) => n,
                        None => break,
                    },
                };
                match notice {
                    Notice::RulesChanged => reload(&s).await,
                    Notice::Events { ids, .. } => publish_remote(&s, ids).await,
                    Notice::Wake => wake.notify_one(),
                    Notice::Erased { ids } => s.queue.cancel_events(ids).await,
                    Notice::Breaker { agent, open_until } => {
                        s.queue.remote_breaker(&agent, open_until)
                    }
                }
            }
        });
    }

    if let Some(hits) = state.hits.clone() {
        let s = state.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RATE_SYNC);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = s.shutdown.cancelled() => break,
                    _ = tick.tick() => sync_rate_hits(&s, &hits).await,
                }
            }
        });
    }
    Ok(())
}

async fn heartbeat(state: &Node) {
    let snapshot = state.queue.snapshot().await;
    let json = serde_json::to_string(&snapshot).unwrap_or_default();
    if let Err(e) = state.store.heartbeat(json).await {
        tracing::error!(error = %e, "cluster heartbeat failed; this node's lease may lapse");
    }
}

/// Claims what dead nodes left unfinished and schedules it here.
async fn take_over(state: &Node) {
    loop {
        match state.store.take_over(TAKEOVER_BATCH).await {
            Ok(list) if list.is_empty() => return,
            Ok(list) => {
                let n = list.len();
                tracing::info!(
                    deliveries = n,
                    "took over deliveries from a node that stopped"
                );
                state.queue.requeue(list, state.rules.default_policy());
                if n < TAKEOVER_BATCH {
                    return;
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "taking over orphaned deliveries failed");
                return;
            }
        }
    }
}

/// Another node changed rules, agents or rate limits: rebuild from the store.
async fn reload(state: &Node) {
    let _guard = state.rules.lock_changes().await;
    if let Err(e) = state.rules.reload().await {
        tracing::error!(error = %e, "reloading rules after a change on another node failed");
    }
    if let Err(e) = crate::ratelimit::reload(&state.limiter, state.store.as_ref()).await {
        tracing::error!(error = %e, "reloading rate limits after a change on another node failed");
    }
}

/// Publishes to this node's streams the events another node committed.
async fn publish_remote(state: &Node, ids: Vec<uuid::Uuid>) {
    if !state.hub.has_subscribers() {
        return;
    }
    match state.store.remote_events(ids).await {
        Ok(events) => {
            for e in events {
                publish_one(state, e);
            }
        }
        Err(e) => tracing::error!(error = %e, "reading another node's events for streams failed"),
    }
}

fn publish_one(state: &Node, e: RemoteEvent) {
    let Ok(view) = crate::store::parse_stored(&e.body) else {
        tracing::error!(event_id = %e.id, "another node's event does not parse; not streamed");
        return;
    };
    let body = Bytes::from(e.body);
    let items = e
        .routed
        .into_iter()
        .map(|(agent, own)| match own {
            None => StreamItem {
                agent_id: Arc::from(agent.as_str()),
                body: body.clone(),
                view: None,
            },
            Some(b) => {
                let view = crate::store::parse_stored(&b).ok().map(Arc::new);
                StreamItem {
                    agent_id: Arc::from(agent.as_str()),
                    body: Bytes::from(b),
                    view,
                }
            }
        })
        .collect();
    let firehose = (!e.filtered).then_some(body);
    publish_event(&state.hub, e.id, view, None, firehose, items);
}

async fn sync_rate_hits(state: &Node, hits: &ClusterHits) {
    let deltas = hits.drain();
    match state
        .store
        .sync_rate_hits(deltas.clone(), RATE_RECENT_MS)
        .await
    {
        Ok(totals) => {
            for (key, n) in hits.remote_hits(&deltas, totals) {
                if let Some((source, identifier)) = key.split_once(':') {
                    state.limiter.absorb(source, identifier, n);
                }
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "exchanging rate-limit counts failed");
            // Put them back so the next exchange carries them.
            for d in deltas {
                if let Some((source, identifier)) = d.key.split_once(':') {
                    hits.add(source, identifier, d.hits);
                }
            }
        }
    }
}

/// `/queue/stats` for the whole cluster: this node's live figures plus every other live
/// node's last heartbeat (at most `HEARTBEAT` old).
pub async fn queue_snapshot(queue: &Queue, store: &dyn Store) -> QueueSnapshot {
    let mut total = queue.snapshot().await;
    let Some(me) = store.node_id() else {
        return total;
    };
    let nodes = match store.live_nodes().await {
        Ok(n) => n,
        Err(e) => {
            tracing::error!(error = %e, "reading the other nodes' queue figures failed");
            return total;
        }
    };
    for node in nodes.into_iter().filter(|n| n.id != me) {
        match serde_json::from_str::<QueueSnapshot>(&node.snapshot) {
            Ok(s) => total.add(&s),
            Err(_) if node.snapshot.is_empty() => {}
            Err(e) => {
                tracing::warn!(node = %node.id, error = %e, "a node's queue figures do not parse")
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_hits_are_the_growth_others_caused() {
        let hits = ClusterHits::default();
        hits.record("github", "org");
        hits.record("github", "org");
        let own = hits.drain();
        assert_eq!(
            own,
            vec![RateDelta {
                key: "github:org".into(),
                hits: 2
            }]
        );
        // First exchange: baseline only, whatever the total.
        assert!(
            hits.remote_hits(&own, vec![("github:org".into(), 50)])
                .is_empty()
        );
        // Next: total grew by 10, 3 of them ours.
        let own = vec![RateDelta {
            key: "github:org".into(),
            hits: 3,
        }];
        assert_eq!(
            hits.remote_hits(&own, vec![("github:org".into(), 60)]),
            vec![("github:org".to_string(), 7)]
        );
        // Only ours: nothing remote.
        let own = vec![RateDelta {
            key: "github:org".into(),
            hits: 4,
        }];
        assert!(
            hits.remote_hits(&own, vec![("github:org".into(), 64)])
                .is_empty()
        );
        // Idle everywhere: dropped, so it restarts from a baseline.
        assert!(hits.remote_hits(&[], vec![]).is_empty());
        assert!(
            hits.remote_hits(&[], vec![("github:org".into(), 100)])
                .is_empty()
        );
        assert!(hits.drain().is_empty());
    }
}
