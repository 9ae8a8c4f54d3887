//! Several nodes on one PostgreSQL database (API.md section 9): what a node runs besides
//! serving. Its lease heartbeat (which also shares its queue figures), the takeover of dead
//! nodes' deliveries, the notices from the other nodes (rule changes, events for streams,
//! wake-ups), and the upkeep of the shared rate limits (leases given back, expired ones settled;
//! see `ratelimit::shared`). On SQLite none of this starts: the store reports no node id.
//!
//! Who delivers what: the node that commits a delivery owns it and delivers it from its own
//! in-memory scheduler, exactly as a single node does, so the hot path never asks the database
//! for work. A node whose lease lapsed (killed, partitioned) loses its unfinished deliveries to
//! whichever live node claims them first (`FOR UPDATE SKIP LOCKED`); a node that stops cleanly
//! hands them back at once and wakes the others.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;

use tokio_util::sync::CancellationToken;

use crate::queue::{Queue, QueueSnapshot};
use crate::ratelimit::RateLimiter;
use crate::ratelimit::shared::SharedLimiter;
use crate::routing::Rules;
use crate::store::{Notice, RemoteEvent, Store};
use crate::stream::{Hub, StreamItem, publish_event};

/// How often a node renews its lease and looks for orphaned deliveries. The lease
/// (`node_lease_ms`, PostgreSQL store option) must be several of these long.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// How often a node settles rate-limit leases that their nodes never gave back and forgets idle
/// keys' counters (one node at a time does the work).
const RATE_UPKEEP: Duration = Duration::from_secs(30);

/// Most deliveries claimed per takeover query.
const TAKEOVER_BATCH: usize = 1_000;

/// What a node's cluster work acts on.
#[derive(Clone)]
pub struct Node {
    pub store: Arc<dyn Store>,
    pub queue: Queue,
    pub hub: Arc<Hub>,
    pub rules: Arc<Rules>,
    pub limiter: Arc<RateLimiter>,
    /// The rate limits shared with the other nodes (`None` on a single node).
    pub shared_limits: Option<Arc<SharedLimiter>>,
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
        let mut upkeep = tokio::time::interval(RATE_UPKEEP);
        upkeep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = s.shutdown.cancelled() => break,
                _ = tick.tick() => {
                    heartbeat(&s).await;
                    take_over(&s).await;
                }
                _ = upkeep.tick() => {
                    if let Err(e) = s.store.rate_limit_upkeep().await {
                        tracing::warn!(error = %e, "rate-limit upkeep failed");
                    }
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
                    Notice::Taken { ids } => s.queue.taken(ids),
                    Notice::Acked { ids } => s.queue.acked_elsewhere(ids),
                    Notice::Breaker { agent, open_until } => {
                        s.queue.remote_breaker(&agent, open_until)
                    }
                }
            }
        });
    }

    if let Some(limits) = state.shared_limits.clone() {
        let token = state.shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(limits.sweep_interval());
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tick.tick() => limits.run_upkeep().await,
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
        return;
    }
    match state.store.live_nodes().await {
        Ok(nodes) => crate::analytics::Analytics::cluster_nodes(nodes.len()),
        Err(e) => tracing::warn!(error = %e, "reading the live nodes failed"),
    }
}

/// Claims what dead nodes left unfinished and schedules it here.
async fn take_over(state: &Node) {
    loop {
        match state.store.take_over(TAKEOVER_BATCH).await {
            Ok(list) if list.is_empty() => return,
            Ok(list) => {
                let n = list.len();
                crate::analytics::Analytics::taken_over(n);
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
    publish_event(&state.hub, e.id, view, None, firehose, items, None);
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
