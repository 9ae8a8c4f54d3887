//! What several nodes on one PostgreSQL database share: node leases (heartbeats), delivery
//! ownership and takeover (`FOR UPDATE SKIP LOCKED`), notices (LISTEN/NOTIFY), the stream view
//! of another node's events, rate-limit leases (the functions in `migrations/0004_…`), dashboard
//! sessions, and each node's claim on its identity.
//!
//! Times here are the database's clock (`db_now_ms()`), so nodes whose clocks disagree still
//! agree on whose lease ran out.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use futures_util::future::poll_fn;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Client, Connection, Notification, Socket};
use uuid::Uuid;

use super::deliveries::{pending_row, pending_select};
use super::{PgStore, UNFINISHED};
use crate::store::{
    ClusterStore, KeyClaim, KeyClaims, LeaseGrant, LeaseRequest, LeaseReturn, NodeInfo, Notice,
    PendingDelivery, RemoteEvent, Result, StoreError,
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

/// Who a node is across restarts: `NODE_ID`, else the id generated on its first start and kept
/// in its data dir, so that a restarted node owns again what it owned before (its unfinished
/// deliveries) instead of waiting for its old lease to lapse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    /// As the operator wrote it (`NODE_ID`, or the file's content): for logs and messages.
    pub name: String,
    /// The id the database knows the node by: the name itself when it is a UUID, else a UUID
    /// derived from it (v8, from its SHA-256), the same on every start.
    pub id: Uuid,
}

/// The file in the data dir that keeps a node's generated id.
pub const NODE_ID_FILE: &str = "node-id";

/// A node name: 1 to 64 characters of `a-z A-Z 0-9 . _ -` (a UUID is one).
pub fn check_node_name(s: &str) -> std::result::Result<&str, String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(s)
    } else {
        Err(format!(
            "expected a node name such as \"web-1\" (1 to 64 of a-z A-Z 0-9 . _ -), got {s:?}"
        ))
    }
}

impl NodeIdentity {
    pub fn from_name(name: &str) -> std::result::Result<NodeIdentity, String> {
        let name = check_node_name(name.trim())?;
        let id = Uuid::try_parse(name).unwrap_or_else(|_| {
            let digest = ring::digest::digest(
                &ring::digest::SHA256,
                format!("event-router node\0{name}").as_bytes(),
            );
            let mut bytes = [0u8; 16];
            bytes.copy_from_slice(&digest.as_ref()[..16]);
            uuid::Builder::from_custom_bytes(bytes).into_uuid()
        });
        Ok(NodeIdentity {
            name: name.to_string(),
            id,
        })
    }
}

/// This node's identity: `configured` (`NODE_ID`), else `DATA_DIR/node-id`, written with a fresh
/// v7 id on the first start.
pub fn node_identity(configured: Option<&str>, data_dir: &Path) -> anyhow::Result<NodeIdentity> {
    if let Some(name) = configured {
        return NodeIdentity::from_name(name).map_err(|e| anyhow::anyhow!("NODE_ID: {e}"));
    }
    let path = data_dir.join(NODE_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => NodeIdentity::from_name(text.trim())
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = Uuid::now_v7();
            crate::crypto::write_private(&path, &format!("{id}\n"))
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
            tracing::info!(node = %id, file = %path.display(), "generated this node's id");
            Ok(NodeIdentity {
                name: id.to_string(),
                id,
            })
        }
        Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
    }
}

/// How long a starting node waits for its id's lock: a process that was just killed holds it
/// until PostgreSQL notices its connection closed, which takes milliseconds.
const IDENTITY_WAIT: Duration = Duration::from_secs(3);

/// The advisory lock (two-key form, which never meets the one-key migration lock) that one
/// live process per node id holds for as long as it runs.
fn identity_lock(node: Uuid) -> (i32, i32) {
    let d = ring::digest::digest(&ring::digest::SHA256, node.as_bytes());
    let d = d.as_ref();
    let key = |b: &[u8]| i32::from_be_bytes([b[0] & 0x7f, b[1], b[2], b[3]]);
    (key(&d[..4]), key(&d[4..8]))
}

type Driver = JoinHandle<std::result::Result<(), tokio_postgres::Error>>;

/// Takes the id's lock on a connection of its own; `None` while another session holds it.
async fn lock_identity(
    config: &tokio_postgres::Config,
    tls: &super::tls::Tls,
    (k1, k2): (i32, i32),
) -> Result<Option<(Client, Driver)>> {
    let (client, conn) = config.connect(tls.clone()).await?;
    let driver = tokio::spawn(conn);
    let held: bool = client
        .query_one("SELECT pg_try_advisory_lock($1, $2)", &[&k1, &k2])
        .await?
        .get(0);
    // Dropping the client closes the connection (and ends the driver).
    Ok(held.then_some((client, driver)))
}

/// Claims the node id for this process, or refuses the start with a message naming the id when
/// another live process runs as this node. Returns the task that holds the claim (the lock
/// lives as long as its connection: a killed process loses it at once, a stopped one on close).
///
/// A holder whose node has stopped heartbeating for longer than its lease is a dead machine's
/// connection that PostgreSQL has not noticed yet: its session is ended and the claim retried.
pub(super) async fn claim_identity(
    pool: &deadpool_postgres::Pool,
    config: &tokio_postgres::Config,
    tls: &super::tls::Tls,
    node: Uuid,
    name: &str,
) -> Result<JoinHandle<()>> {
    let keys = identity_lock(node);
    let started = Instant::now();
    let mut ended_stale = false;
    loop {
        if let Some(held) = lock_identity(config, tls, keys).await? {
            return Ok(tokio::spawn(hold_identity(
                config.clone(),
                tls.clone(),
                keys,
                name.to_string(),
                held,
            )));
        }
        if started.elapsed() < IDENTITY_WAIT {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let c = pool.get().await?;
        let heartbeat: Option<i64> = c
            .query_opt(
                "SELECT db_now_ms() - last_seen FROM nodes
                 WHERE id = $1 AND lease_until > db_now_ms()",
                &[&node],
            )
            .await?
            .map(|r| r.get(0));
        let in_use = |detail: String| {
            StoreError::Database(format!(
                "node id {name} is in use by another running event-router process ({detail}); \
                 each node needs its own NODE_ID (or data dir)"
            ))
        };
        if let Some(ago) = heartbeat {
            return Err(in_use(format!("its last heartbeat was {ago} ms ago")));
        }
        if ended_stale {
            return Err(in_use("its database session holds the node's lock".into()));
        }
        ended_stale = true;
        let ended = c
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_locks
                 WHERE locktype = 'advisory' AND classid = $1::int8::oid
                   AND objid = $2::int8::oid AND objsubid = 2 AND granted",
                &[&i64::from(keys.0), &i64::from(keys.1)],
            )
            .await;
        match ended {
            Ok(n) => tracing::warn!(
                node = %name,
                sessions = n,
                "ended the database session of a previous process of this node that no longer heartbeats"
            ),
            Err(e) => {
                return Err(in_use(format!(
                    "its stale database session could not be ended: {}",
                    super::pg_message(&e)
                )));
            }
        }
    }
}

/// Keeps the claim for as long as the process runs: when the connection drops (a database
/// restart, a network fault), takes the lock again on a new one.
async fn hold_identity(
    config: tokio_postgres::Config,
    tls: super::tls::Tls,
    keys: (i32, i32),
    name: String,
    held: (Client, Driver),
) {
    let (mut client, mut driver) = held;
    loop {
        let _ = (&mut driver).await;
        drop(client);
        tracing::warn!(node = %name, "the connection holding this node's id dropped; claiming it again");
        let mut backoff = Duration::from_millis(100);
        loop {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
            match lock_identity(&config, &tls, keys).await {
                Ok(Some(h)) => {
                    (client, driver) = h;
                    break;
                }
                Ok(None) => tracing::error!(
                    node = %name,
                    "another process holds this node's id: two processes are running as one node; stop one"
                ),
                Err(e) => {
                    tracing::warn!(node = %name, error = %e, "cannot claim this node's id again yet")
                }
            }
        }
    }
}

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

/// One or more payloads carrying `ids` (already in id order): what the group commit's statement
/// builds in SQL (`writer::INSERT_BATCH`), kept here to test it against.
#[cfg(test)]
pub(super) fn events_payloads(node: Uuid, ids: &[Uuid]) -> Vec<String> {
    ids_payloads('e', node, ids)
}

/// What the payloads of `events_payloads` start with: the ids follow (the group commit builds
/// them in SQL, see `writer::INSERT_BATCH`).
pub(super) fn events_notice_prefix(node: Uuid) -> String {
    format!("e{}", node.simple())
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
        "e" | "x" | "t" | "a" => {
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
            Some(match kind {
                "e" => Notice::Events { node, ids },
                "t" => Notice::Taken { ids },
                "a" => Notice::Acked { ids },
                _ => Notice::Erased { ids },
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

/// Lease requests as the columns `rate_acquire` is called with.
#[derive(Default)]
struct LeaseColumns<'a> {
    keys: Vec<&'a str>,
    strategies: Vec<&'static str>,
    limits: Vec<i64>,
    windows: Vec<i64>,
    bursts: Vec<i64>,
    wants: Vec<i64>,
    leases: Vec<Uuid>,
    lives: Vec<i64>,
    backs: Vec<Option<Uuid>>,
    back_spent: Vec<i64>,
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

    async fn claim_keys(&self, claims: Vec<KeyClaim>) -> Result<KeyClaims> {
        if claims.is_empty() {
            return Ok(KeyClaims::default());
        }
        // One claim per key in a statement (an upsert may not touch a row twice): the earliest.
        let mut first: BTreeMap<(&str, &str), &KeyClaim> = BTreeMap::new();
        for k in &claims {
            let e = first.entry((&k.agent_id, &k.key)).or_insert(k);
            if (k.event_id, k.delivery_id) < (e.event_id, e.delivery_id) {
                *e = k;
            }
        }
        let (mut id, mut event, mut agent, mut key) = (vec![], vec![], vec![], vec![]);
        for k in first.values() {
            id.push(k.delivery_id);
            event.push(k.event_id);
            agent.push(k.agent_id.as_str());
            key.push(k.key.as_str());
        }
        let c = self.client().await?;
        // A delivery this node still owns unfinished gets its key when no earlier unfinished
        // delivery of it exists and no dead letter holds it, and when the key's lock is free:
        // held by this node for the same delivery (a restart, a retry), by a node that is not
        // live, or by a delivery that is no longer unfinished.
        let stmt = c
            .prepare_cached(&format!(
                "WITH c AS (
                     SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[])
                         AS c(id, event_id, agent_id, okey)
                 ), mine AS (
                     SELECT c.* FROM c JOIN deliveries d ON d.id = c.id
                     WHERE d.status IN {UNFINISHED} AND d.owner = $5
                 ), ok AS (
                     SELECT c.* FROM mine c WHERE NOT EXISTS (
                         SELECT 1 FROM deliveries d
                         WHERE d.agent_id = c.agent_id AND d.ordering_key = c.okey
                           AND d.id <> c.id
                           AND ((d.status IN {UNFINISHED}
                                 AND (d.event_id, d.id) < (c.event_id, c.id))
                                OR (d.status = 'dead' AND d.ordering_hold)))
                 ), ins AS (
                     INSERT INTO ordering_locks AS l (agent_id, ordering_key, delivery_id, node)
                     SELECT agent_id, okey, id, $5 FROM ok
                     ON CONFLICT (agent_id, ordering_key) DO UPDATE
                         SET delivery_id = excluded.delivery_id, node = excluded.node
                         WHERE (l.delivery_id = excluded.delivery_id AND l.node = excluded.node)
                            OR l.node NOT IN (SELECT n.id FROM nodes n
                                              WHERE n.lease_until > db_now_ms())
                            OR NOT EXISTS (SELECT 1 FROM deliveries d
                                           WHERE d.id = l.delivery_id
                                             AND d.status IN {UNFINISHED})
                     RETURNING delivery_id
                 )
                 SELECT c.id, c.id IN (SELECT delivery_id FROM ins), c.id IN (SELECT id FROM mine)
                 FROM c"
            ))
            .await?;
        let mut out = KeyClaims::default();
        for r in c
            .query(&stmt, &[&id, &event, &agent, &key, &self.node])
            .await?
        {
            let (id, granted, mine): (Uuid, bool, bool) = (r.get(0), r.get(1), r.get(2));
            if granted {
                out.granted.push(id);
            } else if !mine {
                out.gone.push(id);
            }
        }
        Ok(out)
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

    async fn take_pull(&self, agent: &str, limit: usize) -> Result<Vec<PendingDelivery>> {
        match self.take_pull_once(agent, limit).await {
            Ok(taken) => Ok(taken),
            // Taken by another node meanwhile: nothing this time (the poll looks again).
            Err(TakeError::Raced) => Ok(Vec::new()),
            Err(TakeError::Store(e)) => Err(e),
        }
    }

    async fn ack_elsewhere(&self, agent: &str, ids: Vec<Uuid>) -> Result<Vec<Uuid>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let now = crate::clock::now_ms();
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        // A first attempt that succeeded is kept in the row, a later one in the log, as
        // `record_attempts` keeps them. Its duration is not known here: 0.
        let stmt = tx
            .prepare_cached(
                "WITH upd AS (
                     UPDATE deliveries d SET status = 'delivered', next_attempt_at = NULL,
                            last_error = NULL, lease_consumer = NULL, updated_at = $3,
                            first_started_at = CASE WHEN d.attempts = 1 THEN $3
                                                    ELSE d.first_started_at END,
                            first_duration_ms = CASE WHEN d.attempts = 1 THEN 0
                                                     ELSE d.first_duration_ms END
                     WHERE d.id = ANY($1) AND d.agent_id = $2 AND d.status = 'in_flight'
                       AND d.lease_consumer IS NOT NULL AND d.next_attempt_at > $3
                     RETURNING d.id, d.attempts
                 ), logged AS (
                     INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, cause)
                     SELECT id, attempts, $3, 0, 'scheduled' FROM upd WHERE attempts > 1
                     ON CONFLICT (delivery_id, attempt) DO UPDATE SET
                         started_at = excluded.started_at, duration_ms = 0,
                         status_code = NULL, error = NULL, response_body = NULL, detail = NULL
                 )
                 SELECT id FROM upd",
            )
            .await?;
        let acked: Vec<Uuid> = tx
            .query(&stmt, &[&ids, &agent, &now])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        for p in ids_payloads('a', self.node, &acked) {
            tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &p])
                .await?;
        }
        tx.commit().await?;
        Ok(acked)
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

    fn keeps_sessions(&self) -> bool {
        true
    }

    async fn create_session(&self, hash: [u8; 32], ttl_ms: i64, max: usize) -> Result<i64> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let expires: i64 = tx
            .query_one(
                "INSERT INTO dashboard_sessions (hash, expires_at)
                 VALUES ($1, db_now_ms() + $2) RETURNING expires_at",
                &[&hash.as_slice(), &ttl_ms.max(1)],
            )
            .await?
            .get(0);
        // Only holders of the admin key create sessions; this bounds the table against a script
        // signing in in a loop, as the memory table is bounded on one node.
        tx.execute(
            "DELETE FROM dashboard_sessions WHERE hash IN (
                 SELECT hash FROM dashboard_sessions
                 ORDER BY expires_at DESC, hash OFFSET $1)",
            &[&super::limit_of(max.max(1))],
        )
        .await?;
        tx.commit().await?;
        Ok(expires)
    }

    async fn session_expiry(&self, hash: [u8; 32]) -> Result<Option<i64>> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(
                "SELECT expires_at FROM dashboard_sessions
                 WHERE hash = $1 AND expires_at > db_now_ms()",
            )
            .await?;
        Ok(c.query_opt(&stmt, &[&hash.as_slice()])
            .await?
            .map(|r| r.get(0)))
    }

    async fn end_session(&self, hash: [u8; 32]) -> Result<bool> {
        let c = self.client().await?;
        let n = c
            .execute(
                "DELETE FROM dashboard_sessions WHERE hash = $1",
                &[&hash.as_slice()],
            )
            .await?;
        Ok(n > 0)
    }

    async fn purge_sessions(&self) -> Result<u64> {
        let c = self.client().await?;
        Ok(c.execute(
            "DELETE FROM dashboard_sessions WHERE expires_at <= db_now_ms()",
            &[],
        )
        .await?)
    }

    async fn acquire_rate_leases(&self, requests: Vec<LeaseRequest>) -> Result<Vec<LeaseGrant>> {
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        // Locked in key order, whatever order the requests came in.
        let mut order: Vec<usize> = (0..requests.len()).collect();
        order.sort_by(|&a, &b| requests[a].key.cmp(&requests[b].key));
        let big = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let mut cols = LeaseColumns::default();
        for &i in &order {
            let r = &requests[i];
            cols.keys.push(r.key.as_str());
            cols.strategies.push(r.strategy);
            cols.limits.push(big(r.limit.max(1)));
            cols.windows.push(big(r.window_ms.max(1)));
            cols.bursts.push(big(r.burst.max(1)));
            cols.wants.push(big(r.want));
            cols.leases.push(r.lease);
            cols.lives.push(big(r.lease_ms));
            cols.backs.push(r.give_back.map(|b| b.id));
            cols.back_spent
                .push(r.give_back.map(|b| big(b.spent)).unwrap_or(0));
        }
        let c = self.client().await?;
        // A nested loop over the requests in their (key) order, one `rate_acquire` each.
        let stmt = c
            .prepare_cached(
                "SELECT a.granted, a.now_ms, a.window_start, a.prev, a.curr, a.tat_ms,
                        a.tat_frac, a.outstanding
                 FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[], $5::int8[],
                             $6::int8[], $7::uuid[], $8::int8[], $9::uuid[], $10::int8[])
                      WITH ORDINALITY AS r(key, strategy, lim, win, burst, want, lease, life,
                                           back, back_spent, ord)
                 CROSS JOIN LATERAL rate_acquire(r.key, r.strategy, r.lim, r.win, r.burst,
                     r.want, r.lease, $11, r.life, r.back, r.back_spent) a
                 ORDER BY r.ord",
            )
            .await?;
        let rows = c
            .query(
                &stmt,
                &[
                    &cols.keys,
                    &cols.strategies,
                    &cols.limits,
                    &cols.windows,
                    &cols.bursts,
                    &cols.wants,
                    &cols.leases,
                    &cols.lives,
                    &cols.backs,
                    &cols.back_spent,
                    &self.node,
                ],
            )
            .await?;
        if rows.len() != requests.len() {
            return Err(StoreError::Database(format!(
                "{} lease grants for {} requests",
                rows.len(),
                requests.len()
            )));
        }
        let mut grants = vec![LeaseGrant::default(); requests.len()];
        for (row, &i) in rows.iter().zip(&order) {
            let u = |c: usize| row.get::<_, i64>(c).max(0) as u64;
            grants[i] = LeaseGrant {
                granted: u(0),
                now_ms: u(1),
                window_start: u(2),
                prev: u(3),
                curr: u(4),
                tat_ms: u(5),
                tat_frac: u(6),
                outstanding: u(7),
            };
        }
        Ok(grants)
    }

    async fn release_rate_leases(&self, leases: Vec<LeaseReturn>) -> Result<()> {
        if leases.is_empty() {
            return Ok(());
        }
        let (ids, spent): (Vec<Uuid>, Vec<i64>) = leases
            .iter()
            .map(|l| (l.id, i64::try_from(l.spent).unwrap_or(i64::MAX)))
            .unzip();
        let c = self.client().await?;
        c.execute("SELECT rate_release($1, $2)", &[&ids, &spent])
            .await?;
        Ok(())
    }

    async fn rate_limit_upkeep(&self) -> Result<()> {
        let c = self.client().await?;
        c.execute("SELECT rate_upkeep()", &[]).await?;
        Ok(())
    }
}

/// Why `take_pull_once` took nothing.
enum TakeError {
    /// Another node took a row after this transaction's snapshot.
    Raced,
    Store(StoreError),
}

impl From<StoreError> for TakeError {
    fn from(e: StoreError) -> Self {
        TakeError::Store(e)
    }
}

impl From<tokio_postgres::Error> for TakeError {
    fn from(e: tokio_postgres::Error) -> Self {
        if e.code() == Some(&tokio_postgres::error::SqlState::T_R_SERIALIZATION_FAILURE) {
            TakeError::Raced
        } else {
            TakeError::Store(e.into())
        }
    }
}

impl From<deadpool_postgres::PoolError> for TakeError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        TakeError::Store(e.into())
    }
}

impl PgStore {
    /// `take_pull` in one REPEATABLE READ transaction: `Ok(None)` when another node took one
    /// of the rows after this snapshot (a serialization failure), rather than taking it from
    /// that node again as READ COMMITTED would.
    async fn take_pull_once(
        &self,
        agent: &str,
        limit: usize,
    ) -> std::result::Result<Vec<PendingDelivery>, TakeError> {
        let mut c = self.client().await?;
        let tx = c
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .start()
            .await?;
        let stmt = tx
            .prepare_cached(&format!(
                "WITH picked AS (
                     SELECT d.id FROM deliveries d
                     WHERE d.agent_id = $2 AND d.status IN ('pending', 'scheduled')
                       AND d.owner IS DISTINCT FROM $1
                       AND COALESCE(d.next_attempt_at, 0) <= $4
                       AND d.ordering_key IS NULL AND d.coalesce_key IS NULL
                     ORDER BY d.priority DESC, d.id LIMIT $3
                     FOR UPDATE SKIP LOCKED
                 ), upd AS (
                     UPDATE deliveries d SET owner = $1 FROM picked WHERE d.id = picked.id
                     RETURNING d.*
                 )
                 SELECT {} FROM upd d JOIN events e ON e.id = d.event_id
                 ORDER BY d.id",
                pending_select(None)
            ))
            .await?;
        let now = crate::clock::now_ms();
        let taken = tx
            .query(&stmt, &[&self.node, &agent, &super::limit_of(limit), &now])
            .await?
            .iter()
            .map(pending_row)
            .collect::<Result<Vec<_>>>()?;
        if !taken.is_empty() {
            let ids: Vec<Uuid> = taken.iter().map(|p| p.id).collect();
            for p in ids_payloads('t', self.node, &ids) {
                tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &p])
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(taken)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_live_store_per_node_id() {
        let Some((url, _db)) = super::super::testing::fresh_database_or_skip().await else {
            return;
        };
        let id = Uuid::now_v7();
        let opts = || super::super::PgOptions {
            node_id: Some(id),
            node_name: Some("twin".into()),
            pool_size: 2,
            ..Default::default()
        };
        let first = PgStore::open(&url, opts()).await.expect("open");
        let Err(e) = PgStore::open(&url, opts()).await else {
            panic!("a second store ran as the same node");
        };
        assert!(e.to_string().contains("node id twin is in use"), "{e}");
        // Closed, the first gives the id up at once: a restart takes it.
        crate::store::Store::close(&first).await;
        let again = PgStore::open(&url, opts()).await.expect("reopen");
        assert_eq!(again.node_id(), Some(id));
        crate::store::Store::close(&again).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dashboard_sessions_are_shared_and_bounded() {
        let Some((url, _db)) = super::super::testing::fresh_database_or_skip().await else {
            return;
        };
        let opts = || super::super::PgOptions {
            pool_size: 2,
            ..Default::default()
        };
        let (a, b) = (
            PgStore::open(&url, opts()).await.expect("open"),
            PgStore::open(&url, opts()).await.expect("open"),
        );
        assert!(a.keeps_sessions());
        let h = |i: u8| [i; 32];
        let expires = a.create_session(h(1), 60_000, 3).await.unwrap();
        assert_eq!(b.session_expiry(h(1)).await.unwrap(), Some(expires));
        assert_eq!(b.session_expiry(h(2)).await.unwrap(), None);
        assert!(b.end_session(h(1)).await.unwrap());
        assert!(!a.end_session(h(1)).await.unwrap());
        assert_eq!(a.session_expiry(h(1)).await.unwrap(), None);
        // Expired: refused, then purged.
        a.create_session(h(3), 1, 3).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(b.session_expiry(h(3)).await.unwrap(), None);
        assert_eq!(b.purge_sessions().await.unwrap(), 1);
        // At most `max`: those closest to expiry go first.
        for (i, ttl) in [(4u8, 10_000), (5, 20_000), (6, 30_000), (7, 40_000)] {
            a.create_session(h(i), ttl, 3).await.unwrap();
        }
        assert_eq!(a.session_expiry(h(4)).await.unwrap(), None);
        for i in 5..=7 {
            assert!(b.session_expiry(h(i)).await.unwrap().is_some(), "{i}");
        }
        crate::store::Store::close(&a).await;
        crate::store::Store::close(&b).await;
    }

    #[test]
    fn a_node_keeps_its_generated_id_or_takes_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let first = node_identity(None, dir.path()).unwrap();
        assert_eq!(first.id.get_version_num(), 7);
        assert_eq!(first.name, first.id.to_string());
        assert_eq!(node_identity(None, dir.path()).unwrap(), first, "kept");
        // NODE_ID wins over the file; a name maps to the same UUID everywhere.
        let other = tempfile::tempdir().unwrap();
        let web1 = node_identity(Some("web-1"), dir.path()).unwrap();
        assert_eq!(web1, node_identity(Some("web-1"), other.path()).unwrap());
        assert_eq!(web1.name, "web-1");
        assert_ne!(
            web1.id,
            node_identity(Some("web-2"), dir.path()).unwrap().id
        );
        assert_ne!(web1.id, first.id);
        // A UUID is taken as it is.
        let id = Uuid::now_v7().to_string();
        assert_eq!(
            node_identity(Some(&id), dir.path()).unwrap().id.to_string(),
            id
        );
        assert!(node_identity(Some("two words"), dir.path()).is_err());
        // A damaged file is reported, not replaced.
        std::fs::write(dir.path().join(NODE_ID_FILE), "not/a name\n").unwrap();
        let err = node_identity(None, dir.path()).unwrap_err().to_string();
        assert!(err.contains(NODE_ID_FILE), "{err}");
        assert_ne!(identity_lock(web1.id), identity_lock(first.id));
        let (a, b) = identity_lock(first.id);
        assert!(a >= 0 && b >= 0);
    }

    /// The notices of the group commit are built in its SQL: they must be exactly those of
    /// `events_payloads` for the events stored, none for a refused duplicate.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_group_commit_notices_carry_the_stored_events() {
        use crate::store::{EventStore, Store};
        let Some((url, _db)) = super::super::testing::fresh_database_or_skip().await else {
            return;
        };
        let (config, tls) = super::super::tls::connect_options(&url).unwrap();
        let (_client, mut conn, mut heard) = connect_listener(&config, &tls).await.unwrap();
        let store = PgStore::open(&url, Default::default()).await.expect("open");
        let node = store.node_id().unwrap();
        // 600 events at once (batches of up to 1,024: notices of 240 ids and the rest), and a
        // duplicate of the first, refused.
        let events: Vec<_> = (0..600)
            .map(|i| crate::store::conformance::ev("github", Some(&format!("d{i}"))))
            .collect();
        let ids: std::collections::BTreeSet<Uuid> = events.iter().map(|e| e.id).collect();
        let outcomes =
            futures_util::future::join_all(events.into_iter().map(|e| store.commit_event(e))).await;
        assert!(outcomes.iter().all(|o| o.is_ok()), "{outcomes:?}");
        let dup = crate::store::conformance::ev("github", Some("d0"));
        let dup_id = dup.id;
        assert!(matches!(
            store.commit_event(dup).await.unwrap(),
            crate::store::CommitOutcome::Duplicate { .. }
        ));
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            while let Some(n) = heard.pop() {
                match decode(n.payload(), Uuid::now_v7()) {
                    Some(Notice::Events {
                        node: from,
                        ids: these,
                    }) => {
                        assert_eq!(from, node);
                        assert!(n.payload().len() < 8000);
                        assert!(these.len() <= IDS_PER_NOTICE);
                        assert!(these.windows(2).all(|w| w[0] < w[1]), "{these:?}");
                        // The same text as the payload built in Rust.
                        assert_eq!(events_payloads(node, &these), [n.payload().to_string()]);
                        got.extend(these);
                    }
                    other => panic!("unexpected notice {other:?}"),
                }
            }
            if got.len() >= ids.len() {
                break;
            }
            let m = tokio::time::timeout_at(deadline, poll_fn(|cx| conn.poll_message(cx)))
                .await
                .unwrap_or_else(|_| panic!("{} of {} events noticed", got.len(), ids.len()));
            if let Some(Ok(AsyncMessage::Notification(n))) = m {
                heard.push(n);
            }
        }
        assert_eq!(got.len(), ids.len(), "each event noticed once");
        assert_eq!(
            got.iter()
                .copied()
                .collect::<std::collections::BTreeSet<_>>(),
            ids
        );
        assert!(!got.contains(&dup_id));
        // Nothing more: the duplicate's batch stored nothing, so it sent no notice.
        let more = tokio::time::timeout(
            Duration::from_millis(300),
            poll_fn(|cx| conn.poll_message(cx)),
        )
        .await;
        assert!(
            !matches!(more, Ok(Some(Ok(AsyncMessage::Notification(_))))),
            "{more:?}"
        );
        store.close().await;
    }

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
