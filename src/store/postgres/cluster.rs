//! What several nodes on one PostgreSQL database share: node leases (heartbeats), delivery
//! ownership and takeover (`FOR UPDATE SKIP LOCKED`), notices (LISTEN/NOTIFY), the stream view
//! of another node's events, and cluster-wide rate-limit counters.
//!
//! Times here are the database's clock (`db_now_ms()`), so nodes whose clocks disagree still
//! agree on whose lease ran out.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use futures_util::future::poll_fn;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, Connection, Notification, Socket};
use uuid::Uuid;

use super::deliveries::{pending_row, pending_select};
use super::{PgStore, UNFINISHED};
use crate::store::{
    ClusterStore, NodeInfo, Notice, PendingDelivery, RateDelta, RemoteEvent, Result, StoreError,
};

/// The one NOTIFY channel; the payload's first character says what it is:
/// `r<node>` rules changed, `w<node>` wake, `e<node><id><id>…` events (32 hex digits each),
/// `x<node><id><id>…` events erased, `b<node><open-until ms, or -><space><agent id>` an
/// agent's circuit breaker.
pub(super) const CHANNEL: &str = "event_router";

/// NOTIFY payloads must be shorter than 8000 bytes: 1 + 32 + 240 × 32 = 7713.
const IDS_PER_NOTICE: usize = 240;

/// Node rows whose lease ran out this long ago are removed (their deliveries stay claimable:
/// a delivery is free whenever its owner is not a live node, row or no row).
const FORGET_NODES_AFTER_MS: i64 = 3_600_000;

/// Bounds the notices waiting for the listener to take them; the LISTEN connection waits
/// (and PostgreSQL queues) when it is full.
const NOTICE_BUFFER: usize = 1024;

pub(super) fn rules_payload(node: Uuid) -> String {
    format!("r{}", node.simple())
}

fn wake_payload(node: Uuid) -> String {
    format!("w{}", node.simple())
}

/// The payload of a breaker notice (agent ids are at most 128 characters: it fits).
pub(super) fn breaker_payload(node: Uuid, agent: &str, open_until: Option<i64>) -> String {
    let until = open_until.map_or_else(|| "-".to_string(), |t| t.to_string());
    format!("b{}{until} {agent}", node.simple())
}

/// One or more payloads carrying `ids` (already in id order).
pub(super) fn events_payloads(node: Uuid, ids: &[Uuid]) -> Vec<String> {
    ids_payloads('e', node, ids)
}

/// One or more payloads saying that `ids` were erased.
pub(super) fn erased_payloads(node: Uuid, ids: &[Uuid]) -> Vec<String> {
    ids_payloads('x', node, ids)
}

fn ids_payloads(kind: char, node: Uuid, ids: &[Uuid]) -> Vec<String> {
    ids.chunks(IDS_PER_NOTICE)
        .map(|chunk| {
            let mut p = String::with_capacity(33 + 32 * chunk.len());
            p.push(kind);
            p.push_str(&node.simple().to_string());
            for id in chunk {
                p.push_str(&id.simple().to_string());
            }
            p
        })
        .collect()
}

/// The notice a payload carries, unless it is this node's own (or not one of ours).
fn decode(payload: &str, me: Uuid) -> Option<Notice> {
    let kind = payload.get(..1)?;
    let node = Uuid::try_parse(payload.get(1..33)?).ok()?;
    if node == me {
        return None;
    }
    match kind {
        "r" => Some(Notice::RulesChanged),
        "w" => Some(Notice::Wake),
        "b" => {
            let (until, agent) = payload.get(33..)?.split_once(' ')?;
            let open_until = match until {
                "-" => None,
                t => Some(t.parse().ok()?),
            };
            (!agent.is_empty()).then(|| Notice::Breaker {
                agent: agent.to_string(),
                open_until,
            })
        }
        "e" | "x" => {
            let rest = payload.get(33..)?;
            if rest.len() % 32 != 0 {
                return None;
            }
            let ids = (0..rest.len() / 32)
                .map(|i| {
                    rest.get(i * 32..i * 32 + 32)
                        .and_then(|s| Uuid::try_parse(s).ok())
                })
                .collect::<Option<Vec<_>>>()?;
            Some(if kind == "e" {
                Notice::Events { node, ids }
            } else {
                Notice::Erased { ids }
            })
        }
        _ => None,
    }
}

/// Claims up to `limit` (`None`: all) unfinished deliveries that no live node owns for `node`,
/// oldest first. `SKIP LOCKED`: a row another node is claiming right now is left to it, and a
/// row it claimed meanwhile fails the recheck of the owner, so each is claimed exactly once.
pub(super) async fn claim<C: GenericClient>(
    c: &C,
    node: Uuid,
    limit: Option<i64>,
    body_budget: Option<i64>,
) -> Result<Vec<PendingDelivery>> {
    let stmt = c
        .prepare_cached(&format!(
            "WITH picked AS (
                 SELECT d.id FROM deliveries d
                 WHERE d.status IN {UNFINISHED}
                   AND (d.owner IS NULL
                        OR (d.owner <> $1 AND d.owner NOT IN
                            (SELECT id FROM nodes WHERE lease_until > db_now_ms())))
                 ORDER BY d.id LIMIT $2
                 FOR UPDATE SKIP LOCKED
             ), upd AS (
                 UPDATE deliveries d SET owner = $1 FROM picked WHERE d.id = picked.id
                 RETURNING d.*
             )
             SELECT {} FROM upd d JOIN events e ON e.id = d.event_id
             ORDER BY d.id",
            pending_select(Some("$3"))
        ))
        .await?;
    c.query(&stmt, &[&node, &limit, &body_budget])
        .await?
        .iter()
        .map(pending_row)
        .collect()
}

type PgConnection = Connection<Socket, super::tls::Stream>;

/// Opens the LISTEN connection. Notifications that arrive while LISTEN is being confirmed are
/// returned with it rather than lost.
async fn connect_listener(
    config: &tokio_postgres::Config,
    tls: &super::tls::Tls,
) -> Result<(Client, PgConnection, Vec<Notification>)> {
    let (client, mut conn) = config.connect(tls.clone()).await?;
    let mut early = Vec::new();
    {
        let sql = format!("LISTEN {CHANNEL}");
        let listen = client.batch_execute(&sql);
        tokio::pin!(listen);
        loop {
            tokio::select! {
                r = &mut listen => { r?; break; }
                m = poll_fn(|cx| conn.poll_message(cx)) => match m {
                    Some(Ok(AsyncMessage::Notification(n))) => early.push(n),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e.into()),
                    None => return Err(StoreError::Database("the LISTEN connection closed".into())),
                },
            }
        }
    }
    Ok((client, conn, early))
}

/// Forwards notices until the receiver is dropped; reconnects with backoff when the connection
/// drops, then tells the listener to reload rules and claim what has no owner, since notices
/// sent meanwhile are lost.
async fn listen_loop(
    config: tokio_postgres::Config,
    tls: super::tls::Tls,
    me: Uuid,
    first: (Client, PgConnection, Vec<Notification>),
    tx: mpsc::Sender<Notice>,
) {
    let mut current = Some(first);
    loop {
        let (client, mut conn, early) = match current.take() {
            Some(c) => c,
            None => {
                let mut backoff = Duration::from_millis(100);
                let c = loop {
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = tx.closed() => return,
                    }
                    match connect_listener(&config, &tls).await {
                        Ok(c) => break c,
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot reconnect the LISTEN connection");
                            backoff = (backoff * 2).min(Duration::from_secs(5));
                        }
                    }
                };
                tracing::info!("LISTEN connection re-established");
                for n in [Notice::RulesChanged, Notice::Wake] {
                    if tx.send(n).await.is_err() {
                        return;
                    }
                }
                c
            }
        };
        for n in early {
            if let Some(notice) = decode(n.payload(), me)
                && tx.send(notice).await.is_err()
            {
                return;
            }
        }
        loop {
            let m = tokio::select! {
                m = poll_fn(|cx| conn.poll_message(cx)) => m,
                () = tx.closed() => return,
            };
            match m {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if let Some(notice) = decode(n.payload(), me)
                        && tx.send(notice).await.is_err()
                    {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "the LISTEN connection failed; reconnecting");
                    break;
                }
                None => {
                    tracing::warn!("the LISTEN connection closed; reconnecting");
                    break;
                }
            }
        }
        drop(client);
    }
}

#[async_trait]
impl ClusterStore for PgStore {
    fn node_id(&self) -> Option<Uuid> {
        Some(self.node)
    }

    async fn heartbeat(&self, snapshot: String) -> Result<()> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(
                // An upsert: a node whose row was forgotten (a very long pause) registers again.
                "INSERT INTO nodes (id, last_seen, lease_until, snapshot)
                 VALUES ($1, db_now_ms(), db_now_ms() + $2, $3)
                 ON CONFLICT (id) DO UPDATE SET last_seen = excluded.last_seen,
                     lease_until = excluded.lease_until, snapshot = excluded.snapshot",
            )
            .await?;
        c.execute(&stmt, &[&self.node, &self.lease_ms, &snapshot])
            .await?;
        Ok(())
    }

    async fn live_nodes(&self) -> Result<Vec<NodeInfo>> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(
                "SELECT id, last_seen, snapshot FROM nodes WHERE lease_until > db_now_ms()
                 ORDER BY id",
            )
            .await?;
        Ok(c.query(&stmt, &[])
            .await?
            .iter()
            .map(|r| NodeInfo {
                id: r.get(0),
                last_seen: r.get(1),
                snapshot: r.get(2),
            })
            .collect())
    }

    async fn take_over(&self, limit: usize) -> Result<Vec<PendingDelivery>> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let taken = claim(&tx, self.node, Some(super::limit_of(limit)), None).await?;
        tx.execute(
            "DELETE FROM nodes WHERE lease_until < db_now_ms() - $1",
            &[&FORGET_NODES_AFTER_MS.max(self.lease_ms.saturating_mul(10))],
        )
        .await?;
        tx.commit().await?;
        if !taken.is_empty() {
            tracing::info!(
                count = taken.len(),
                "took over deliveries of a stopped node"
            );
        }
        Ok(taken)
    }

    async fn release(&self) -> Result<u64> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let n = tx
            .execute(
                &format!(
                    "UPDATE deliveries SET owner = NULL
                     WHERE owner = $1 AND status IN {UNFINISHED}"
                ),
                &[&self.node],
            )
            .await?;
        tx.execute("DELETE FROM nodes WHERE id = $1", &[&self.node])
            .await?;
        tx.execute(
            "SELECT pg_notify($1, $2)",
            &[&CHANNEL, &wake_payload(self.node)],
        )
        .await?;
        tx.commit().await?;
        Ok(n)
    }

    async fn announce_breaker(&self, agent: &str, open_until: Option<i64>) -> Result<()> {
        let c = self.client().await?;
        c.execute(
            "SELECT pg_notify($1, $2)",
            &[&CHANNEL, &breaker_payload(self.node, agent, open_until)],
        )
        .await?;
        Ok(())
    }

    async fn listen(&self) -> Result<Option<mpsc::Receiver<Notice>>> {
        if self.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        // Connected and listening before this returns: whatever commits afterwards is heard.
        let first = connect_listener(&self.pg_config, &self.tls).await?;
        let (tx, rx) = mpsc::channel(NOTICE_BUFFER);
        let task = tokio::spawn(listen_loop(
            self.pg_config.clone(),
            self.tls.clone(),
            self.node,
            first,
            tx,
        ));
        if let Ok(mut l) = self.listeners.lock() {
            l.push(task);
        }
        Ok(Some(rx))
    }

    async fn remote_events(&self, mut ids: Vec<Uuid>) -> Result<Vec<RemoteEvent>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        ids.sort_unstable();
        ids.dedup();
        let c = self.client().await?;
        let events = c
            .prepare_cached(
                "SELECT id, filtered, body FROM events
                 WHERE id = ANY($1) AND erased_at IS NULL ORDER BY id",
            )
            .await?;
        // One body per agent, as `stream_backlog` picks it; push agents first should an agent
        // be both.
        let routed = c
            .prepare_cached(
                "SELECT event_id, agent_id, body FROM (
                     SELECT event_id, agent_id, MIN(body COLLATE \"C\") AS body, 0 AS src
                     FROM deliveries WHERE event_id = ANY($1) GROUP BY event_id, agent_id
                     UNION ALL
                     SELECT event_id, agent_id, body, 1 FROM streamed WHERE event_id = ANY($1)
                 ) x ORDER BY event_id, agent_id, src",
            )
            .await?;
        let mut by_event: BTreeMap<Uuid, Vec<(String, Option<String>)>> = BTreeMap::new();
        for r in c.query(&routed, &[&ids]).await? {
            let list = by_event.entry(r.get(0)).or_default();
            let agent: String = r.get(1);
            if list.last().is_none_or(|(a, _)| *a != agent) {
                list.push((agent, r.get(2)));
            }
        }
        Ok(c.query(&events, &[&ids])
            .await?
            .iter()
            .map(|r| {
                let id: Uuid = r.get(0);
                RemoteEvent {
                    id,
                    filtered: r.get(1),
                    body: r.get(2),
                    routed: by_event.remove(&id).unwrap_or_default(),
                }
            })
            .collect())
    }

    async fn sync_rate_hits(
        &self,
        deltas: Vec<RateDelta>,
        recent_ms: i64,
    ) -> Result<Vec<(String, u64)>> {
        // One row per key, in key order: nodes adding to the same keys lock them in the same
        // order and so never deadlock.
        let mut sums: BTreeMap<String, i64> = BTreeMap::new();
        for d in deltas.into_iter().filter(|d| d.hits > 0) {
            let e = sums.entry(d.key).or_default();
            *e = e.saturating_add(i64::try_from(d.hits).unwrap_or(i64::MAX));
        }
        let c = self.client().await?;
        if !sums.is_empty() {
            let (keys, hits): (Vec<String>, Vec<i64>) = sums.into_iter().unzip();
            let stmt = c
                .prepare_cached(
                    "INSERT INTO rate_hits (key, total, updated_at)
                     SELECT k, h, db_now_ms() FROM UNNEST($1::text[], $2::int8[]) AS t(k, h)
                     ON CONFLICT (key) DO UPDATE SET total = rate_hits.total + excluded.total,
                         updated_at = excluded.updated_at",
                )
                .await?;
            c.execute(&stmt, &[&keys, &hits]).await?;
        }
        let stmt = c
            .prepare_cached(
                "SELECT key, total FROM rate_hits WHERE updated_at >= db_now_ms() - $1
                 ORDER BY key",
            )
            .await?;
        Ok(c.query(&stmt, &[&recent_ms.max(0)])
            .await?
            .iter()
            .map(|r| (r.get(0), r.get::<_, i64>(1).max(0) as u64))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_fit_a_notify() {
        let node = Uuid::now_v7();
        let ids: Vec<Uuid> = (0..1000).map(|_| Uuid::now_v7()).collect();
        let payloads = events_payloads(node, &ids);
        assert_eq!(payloads.len(), 5);
        let mut back = Vec::new();
        for p in &payloads {
            assert!(p.len() < 8000);
            match decode(p, Uuid::now_v7()) {
                Some(Notice::Events { node: n, ids }) => {
                    assert_eq!(n, node);
                    back.extend(ids);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(back, ids);
        let erased = erased_payloads(node, &ids[..3]);
        assert_eq!(
            decode(&erased[0], Uuid::now_v7()),
            Some(Notice::Erased {
                ids: ids[..3].to_vec()
            })
        );
        // A node does not hear itself.
        assert_eq!(decode(&payloads[0], node), None);
        assert_eq!(decode(&rules_payload(node), node), None);
        let other = Uuid::now_v7();
        assert_eq!(
            decode(&rules_payload(node), other),
            Some(Notice::RulesChanged)
        );
        assert_eq!(decode(&wake_payload(node), other), Some(Notice::Wake));
        for until in [Some(1_764_170_000_123), None] {
            assert_eq!(
                decode(&breaker_payload(node, "agent-1 x", until), other),
                Some(Notice::Breaker {
                    agent: "agent-1 x".into(),
                    open_until: until
                })
            );
        }
        assert_eq!(decode(&format!("b{}12", node.simple()), other), None);
        // Not ours, or damaged: ignored.
        for bad in ["", "x", "r123", "e0000", &format!("{}abc", payloads[0])] {
            assert_eq!(decode(bad, other), None, "{bad}");
        }
    }
}
