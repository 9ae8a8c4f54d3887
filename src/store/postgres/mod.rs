//! The shared store: PostgreSQL, for several `event-router serve` nodes on one database
//! (API.md section 9). Same semantics as the SQLite store, method for method; on top of it the
//! cluster part (node leases, delivery ownership, LISTEN/NOTIFY, shared rate-limit counters) lives
//! in `cluster.rs`.
//!
//! Why tokio-postgres + deadpool-postgres rather than sqlx: the store is a fixed set of
//! hand-written statements (UNNEST batches, `FOR UPDATE SKIP LOCKED` claims, `pg_notify`), which
//! sqlx would not check at compile time here anyway without a live database; tokio-postgres
//! gives direct access to the raw connection that LISTEN needs (`poll_message`), caches prepared
//! statements per pooled connection, and brings far fewer dependencies.
//!
//! Group commit: `commit_event` hands its event to one writer task, which takes whatever is
//! waiting (up to `batch_max`), stores the whole batch with one multi-row statement in one
//! transaction, NOTIFYs the other nodes inside it, commits once and then answers everyone.
//!
//! Laid out as `sqlite/` is: `schema.rs` (migrations), `writer.rs` (the group commit), one file
//! per store trait (`events.rs`, `deliveries.rs`, `analytics.rs`, `audit.rs`, `rules.rs`,
//! `cluster.rs`), and here the `Store` itself; `tls.rs` reads the connection string.

mod analytics;
mod audit;
mod cluster;
mod deliveries;
mod events;
mod rules;
mod schema;
#[cfg(test)]
pub(crate) mod testing;
pub mod tls;
mod writer;

pub use cluster::{NODE_ID_FILE, NodeIdentity, check_node_name, node_identity};

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use uuid::Uuid;

use self::writer::{CommitJob, writer_loop};
use super::{BodyRewrite, Result, Store, StoreError};

/// Tuning and identity of one node's store.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// Pooled connections (the LISTEN connection is extra). Eight keep two cores busy: the
    /// writer, the delivery batches and the API share them, and PostgreSQL itself runs on the
    /// same cores in small deployments.
    pub pool_size: usize,
    /// Most events in one group-commit transaction.
    pub batch_max: usize,
    /// Group-commit transactions in flight at once (each on its own connection). One: since a
    /// batch is one round trip, a second lane only splits the waiting events into smaller
    /// batches that contend for the same index pages (`ratio.py` on PostgreSQL, 2026-12-07:
    /// 17,800 and 16,931/s with one lane, 14,759 and 15,357/s with two, 13,655 and 14,229/s
    /// with three).
    pub commit_lanes: usize,
    /// This node's id; `None` = a fresh v7 id.
    pub node_id: Option<Uuid>,
    /// How the operator names this node (`NODE_ID`), for messages; `None` = its id.
    pub node_name: Option<String>,
    /// How long a heartbeat keeps this node's deliveries its own (ms).
    pub lease_ms: i64,
}

pub const DEFAULT_POOL_SIZE: usize = 8;
pub const DEFAULT_LEASE_MS: i64 = 10_000;

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            pool_size: DEFAULT_POOL_SIZE,
            batch_max: 1024,
            commit_lanes: 1,
            node_id: None,
            node_name: None,
            lease_ms: DEFAULT_LEASE_MS,
        }
    }
}

pub struct PgStore {
    pool: Pool,
    /// For the LISTEN connection, which is not pooled.
    pg_config: tokio_postgres::Config,
    tls: tls::Tls,
    node: Uuid,
    lease_ms: i64,
    jobs: Mutex<Option<mpsc::Sender<CommitJob>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    listeners: Mutex<Vec<JoinHandle<()>>>,
    /// Holds this process's claim on the node id (`cluster::claim_identity`).
    identity: Mutex<Option<JoinHandle<()>>>,
    closed: AtomicBool,
    /// Why the last group commit could not write, if it could not (see `writer::WriteFault`).
    write_fault: writer::WriteFault,
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        if unavailable(&e) {
            StoreError::Unavailable(pg_message(&e))
        } else {
            StoreError::Database(pg_message(&e))
        }
    }
}

/// Whether `e` means the database cannot take writes now rather than that the data or the
/// statement is wrong: the connection refused, lost or timed out, the server shutting down or
/// starting up (57P01, 57P02, 57P03), out of disk, memory or connections (class 53), an I/O
/// error (58030), a read-only server (25006: a standby, or a primary turned read-only).
pub(super) fn unavailable(e: &tokio_postgres::Error) -> bool {
    if let Some(code) = e.code() {
        let code = code.code();
        return code.starts_with("08")
            || code.starts_with("53")
            || matches!(code, "57P01" | "57P02" | "57P03" | "58030" | "25006");
    }
    if e.is_closed() {
        return true;
    }
    // Not the server's answer: an I/O error or timeout on the way there is the connection's.
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        if c.is::<std::io::Error>() {
            return true;
        }
        cause = c.source();
    }
    let text = e.to_string();
    text.starts_with("error connecting") || text.starts_with("timeout")
}

impl From<PoolError> for StoreError {
    fn from(e: PoolError) -> Self {
        match e {
            PoolError::Closed => StoreError::Closed,
            PoolError::Backend(e) => e.into(),
            PoolError::Timeout(t) => {
                StoreError::Unavailable(format!("no database connection in time ({t:?})"))
            }
            other => StoreError::Database(format!("no database connection: {other}")),
        }
    }
}

/// The server's own message when there is one, else the error with its causes
/// (tokio-postgres's `Display` says only "db error" or "error connecting to server").
pub fn pg_message(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {}", db.code().code(), db.message());
    }
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// The connection string with its password replaced, for messages and logs: the password of
/// a URL's user info or query, or of the key=value form (see `tls::redact`).
pub fn redact_url(url: &str) -> String {
    tls::redact(url)
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

fn utf8(b: &[u8]) -> Result<&str> {
    std::str::from_utf8(b).map_err(|e| StoreError::Database(format!("body is not UTF-8: {e}")))
}

fn u32_of(v: i64, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| corrupt(&format!("{what} out of range: {v}")))
}

fn limit_of(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

const UNFINISHED: &str = "('pending', 'in_flight', 'scheduled')";

impl PgStore {
    /// Connects, migrates the schema (one node at a time), registers this node and starts the
    /// group-commit writer.
    pub async fn open(url: &str, opts: PgOptions) -> Result<PgStore> {
        let safe = redact_url(url);
        let (mut pg_config, tls) = tls::connect_options(url)
            .map_err(|e| StoreError::Database(format!("invalid database URL {safe}: {e}")))?;
        if pg_config.get_application_name().is_none() {
            pg_config.application_name("event-router");
        }
        if pg_config.get_connect_timeout().is_none() {
            pg_config.connect_timeout(Duration::from_secs(10));
        }
        // A dead server or network shows up within a minute on idle connections (the LISTEN
        // connection is idle by design).
        pg_config.keepalives_idle(Duration::from_secs(15));
        pg_config.keepalives_interval(Duration::from_secs(5));
        pg_config.keepalives_retries(3);
        let manager = Manager::from_config(
            pg_config.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(opts.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(Duration::from_secs(10)))
            .wait_timeout(Some(Duration::from_secs(30)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|e| StoreError::Database(format!("cannot build the pool: {e}")))?;
        let with_context = |e: StoreError| match e {
            StoreError::Database(m) => StoreError::Database(format!("{safe}: {m}")),
            other => other,
        };
        schema::migrate(&pool).await.map_err(with_context)?;
        let node = opts.node_id.unwrap_or_else(Uuid::now_v7);
        let name = opts.node_name.unwrap_or_else(|| node.to_string());
        let lease_ms = opts.lease_ms.max(1);
        // One live process per node id: a second one is refused here, before it registers.
        let identity = cluster::claim_identity(&pool, &pg_config, &tls, node, &name).await?;
        {
            let client = pool.get().await.map_err(|e| with_context(e.into()))?;
            client
                .execute(
                    // The snapshot starts as an empty object until the first heartbeat.
                    "INSERT INTO nodes (id, last_seen, lease_until, snapshot)
                     VALUES ($1, db_now_ms(), db_now_ms() + $2, '{}')
                     ON CONFLICT (id) DO UPDATE SET last_seen = excluded.last_seen,
                         lease_until = excluded.lease_until",
                    &[&node, &lease_ms],
                )
                .await
                .map_err(|e| with_context(e.into()))?;
        }
        let batch_max = opts.batch_max.max(1);
        let (tx, rx) = mpsc::channel::<CommitJob>(batch_max * 4);
        let write_fault = writer::WriteFault::default();
        let writer = tokio::spawn(writer_loop(
            pool.clone(),
            node,
            rx,
            batch_max,
            opts.commit_lanes,
            write_fault.clone(),
        ));
        Ok(PgStore {
            pool,
            pg_config,
            tls,
            node,
            lease_ms,
            jobs: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            listeners: Mutex::new(Vec::new()),
            identity: Mutex::new(Some(identity)),
            closed: AtomicBool::new(false),
            write_fault,
        })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        Ok(self.pool.get().await?)
    }

    fn sender(&self) -> Result<mpsc::Sender<CommitJob>> {
        self.jobs
            .lock()
            .map_err(|_| StoreError::Closed)?
            .clone()
            .ok_or(StoreError::Closed)
    }

    /// Sends `Notice::RulesChanged` to the other nodes when `tx` commits.
    async fn notify_rules(tx: &deadpool_postgres::Transaction<'_>, node: Uuid) -> Result<()> {
        tx.execute(
            "SELECT pg_notify($1, $2)",
            &[&cluster::CHANNEL, &cluster::rules_payload(node)],
        )
        .await?;
        Ok(())
    }
}

/// Rows per rewrite transaction: keeps each one short.
const REWRITE_BATCH: i64 = 500;

impl PgStore {
    /// Rewrites the bodies of `table` page by page, keyed by `id`.
    async fn rewrite_table(&self, table: &str, rewrite: &BodyRewrite) -> Result<u64> {
        let mut changed = 0u64;
        let mut after = Uuid::nil();
        let mut first = true;
        loop {
            let mut c = self.client().await?;
            let tx = c.transaction().await?;
            let rows = tx
                .query(
                    &format!(
                        "SELECT id, body FROM {table} WHERE ($3 OR id > $1)
                         ORDER BY id LIMIT $2 FOR UPDATE"
                    ),
                    &[&after, &REWRITE_BATCH, &first],
                )
                .await?;
            first = false;
            let Some(last) = rows.last() else { break };
            after = last.get(0);
            let mut ids = Vec::new();
            let mut bodies = Vec::new();
            for r in &rows {
                let Some(body) = r.get::<_, Option<String>>(1) else {
                    continue;
                };
                if let Some(new) = rewrite(&body).map_err(StoreError::Database)? {
                    ids.push(r.get::<_, Uuid>(0));
                    bodies.push(new);
                }
            }
            if !ids.is_empty() {
                tx.execute(
                    &format!(
                        "UPDATE {table} t SET body = u.body
                         FROM UNNEST($1::uuid[], $2::text[]) AS u(id, body) WHERE t.id = u.id"
                    ),
                    &[&ids, &bodies],
                )
                .await?;
            }
            tx.commit().await?;
            changed += ids.len() as u64;
        }
        Ok(changed)
    }
}

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn write_fault(&self) -> Option<String> {
        self.write_fault.lock().ok().and_then(|f| f.clone())
    }

    async fn probe_write(&self) -> Result<()> {
        // `txid_current()` gives the transaction an id, so its COMMIT writes to the WAL.
        let result = async {
            let c = self.client().await?;
            c.simple_query("BEGIN; SELECT txid_current(); COMMIT")
                .await?;
            Ok(())
        }
        .await;
        if let Ok(mut f) = self.write_fault.lock() {
            match &result {
                Ok(()) => *f = None,
                Err(StoreError::Unavailable(m)) => *f = Some(m.clone()),
                Err(_) => {}
            }
        }
        result
    }

    async fn ping(&self) -> Result<()> {
        let c = self.client().await?;
        c.simple_query("SELECT 1").await?;
        Ok(())
    }

    async fn rewrite_bodies(&self, rewrite: BodyRewrite) -> Result<u64> {
        let mut changed = self.rewrite_table("events", &rewrite).await?;
        changed += self.rewrite_table("deliveries", &rewrite).await?;
        // `streamed` is keyed by (agent, event).
        let mut after: Option<(String, Uuid)> = None;
        loop {
            let mut c = self.client().await?;
            let tx = c.transaction().await?;
            let (agent, event) = after.clone().unwrap_or_default();
            let rows = tx
                .query(
                    "SELECT agent_id, event_id, body FROM streamed
                     WHERE $4 OR (agent_id, event_id) > ($1, $2)
                     ORDER BY agent_id, event_id LIMIT $3 FOR UPDATE",
                    &[&agent, &event, &REWRITE_BATCH, &after.is_none()],
                )
                .await?;
            let Some(last) = rows.last() else { break };
            after = Some((last.get(0), last.get(1)));
            let mut agents = Vec::new();
            let mut events = Vec::new();
            let mut bodies = Vec::new();
            for r in &rows {
                let Some(body) = r.get::<_, Option<String>>(2) else {
                    continue;
                };
                if let Some(new) = rewrite(&body).map_err(StoreError::Database)? {
                    agents.push(r.get::<_, String>(0));
                    events.push(r.get::<_, Uuid>(1));
                    bodies.push(new);
                }
            }
            if !agents.is_empty() {
                tx.execute(
                    "UPDATE streamed s SET body = u.body
                     FROM UNNEST($1::text[], $2::uuid[], $3::text[]) AS u(agent_id, event_id, body)
                     WHERE s.agent_id = u.agent_id AND s.event_id = u.event_id",
                    &[&agents, &events, &bodies],
                )
                .await?;
            }
            tx.commit().await?;
            changed += agents.len() as u64;
        }
        Ok(changed)
    }

    async fn commit_event_spending(
        &self,
        event: crate::store::NewEvent,
        lease: Option<Uuid>,
    ) -> Result<crate::store::CommitOutcome> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.sender()?
            .send(CommitJob {
                event,
                reply,
                spend: lease,
            })
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn close(&self) {
        // Dropping the last sender lets the writer commit what is queued, then exit.
        let sender = self.jobs.lock().ok().and_then(|mut j| j.take());
        drop(sender);
        let writer = self.writer.lock().ok().and_then(|mut w| w.take());
        if let Some(w) = writer {
            let _ = w.await;
        }
        self.closed.store(true, Ordering::Release);
        if let Ok(mut l) = self.listeners.lock() {
            for h in l.drain(..) {
                h.abort();
            }
        }
        // Gives up the node id: a restart can claim it at once.
        if let Some(h) = self.identity.lock().ok().and_then(|mut i| i.take()) {
            h.abort();
        }
        self.pool.close();
    }
}
