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

mod cluster;
#[doc(hidden)]
pub mod testing;
pub mod tls;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use deadpool_postgres::{
    GenericClient, Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime,
};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::task::JoinSet;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::{
    AnalyticsStore, AttemptRecord, AttemptUpdate, AuditRecord, AuditStore, BacklogItem,
    BodyRewrite, CommitOutcome, DeadFilter, DeliveryRecord, DeliveryStatus, DeliveryStore,
    EventQuery, EventRecord, EventStatus, EventStore, NewDelivery, NewEvent, PendingDelivery,
    PutMode, PutOutcome, Result, RollupDelta, RuleKind, RuleStore, Store, StoreError, StoredRule,
    id_floor,
};

/// Schema migrations, applied in order at start; the index + 1 is the schema version.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_init.sql"),
    include_str!("migrations/0002_first_attempt.sql"),
];

/// The advisory lock key under which nodes starting together migrate one at a time.
const MIGRATION_LOCK: i64 = 0x6576_656e_7472_7472; // "eventrtr"

/// Tuning and identity of one node's store.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// Pooled connections (the LISTEN connection is extra). Eight keep two cores busy: the
    /// writer, the delivery batches and the API share them, and PostgreSQL itself runs on the
    /// same cores in small deployments.
    pub pool_size: usize,
    /// Most events in one group-commit transaction.
    pub batch_max: usize,
    /// Group-commit transactions in flight at once (each on its own connection).
    pub commit_lanes: usize,
    /// This node's id; `None` = a fresh v7 id.
    pub node_id: Option<Uuid>,
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
            commit_lanes: 2,
            node_id: None,
            lease_ms: DEFAULT_LEASE_MS,
        }
    }
}

struct CommitJob {
    event: NewEvent,
    reply: oneshot::Sender<Result<CommitOutcome>>,
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
    closed: AtomicBool,
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        StoreError::Database(pg_message(&e))
    }
}

impl From<PoolError> for StoreError {
    fn from(e: PoolError) -> Self {
        match e {
            PoolError::Closed => StoreError::Closed,
            PoolError::Backend(e) => e.into(),
            other => StoreError::Database(format!("no database connection: {other}")),
        }
    }
}

/// The server's own message when there is one, else the error with its causes
/// (tokio-postgres's `Display` says only "db error" or "error connecting to server").
pub(crate) fn pg_message(e: &tokio_postgres::Error) -> String {
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
        migrate(&pool).await.map_err(with_context)?;
        let node = opts.node_id.unwrap_or_else(Uuid::now_v7);
        let lease_ms = opts.lease_ms.max(1);
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
        let writer = tokio::spawn(writer_loop(
            pool.clone(),
            node,
            rx,
            batch_max,
            opts.commit_lanes,
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
            closed: AtomicBool::new(false),
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

/// Applies the migrations not yet applied, in one transaction holding an advisory lock, so that
/// nodes starting together neither race nor see a half-migrated schema.
async fn migrate(pool: &Pool) -> Result<()> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)")
        .await?;
    let version: i64 = match tx
        .query_opt("SELECT version::bigint FROM schema_version", &[])
        .await?
    {
        Some(row) => row.get(0),
        None => {
            tx.execute("INSERT INTO schema_version (version) VALUES (0)", &[])
                .await?;
            0
        }
    };
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StoreError::Database(format!(
            "the database schema is version {version}, newer than this build knows ({known}): \
             upgrade event-router"
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
        tx.batch_execute(sql).await?;
        tx.execute(
            "UPDATE schema_version SET version = $1",
            &[&((i + 1) as i32)],
        )
        .await?;
        tracing::info!(version = i + 1, "applied a PostgreSQL migration");
    }
    tx.commit().await?;
    Ok(())
}

/// Why a group commit failed, and whether committing its events one by one may help.
struct BatchFailure {
    error: StoreError,
    /// The server refused something in the data (a constraint, a value): the other events of
    /// the batch deserve their own try.
    data: bool,
    /// A deadlock or serialization failure with another node's transaction: try again.
    transient: bool,
}

impl From<tokio_postgres::Error> for BatchFailure {
    fn from(e: tokio_postgres::Error) -> Self {
        let class = e.code().map(|c| c.code()[..2].to_string());
        BatchFailure {
            data: matches!(class.as_deref(), Some("22") | Some("23")),
            transient: class.as_deref() == Some("40"),
            error: e.into(),
        }
    }
}

impl From<StoreError> for BatchFailure {
    fn from(error: StoreError) -> Self {
        BatchFailure {
            error,
            data: false,
            transient: false,
        }
    }
}

impl From<PoolError> for BatchFailure {
    fn from(e: PoolError) -> Self {
        StoreError::from(e).into()
    }
}

/// Takes whatever is waiting (up to `batch_max`) as one batch, and commits up to `lanes`
/// batches at once on separate connections: while one batch waits for its COMMIT to reach the
/// disk, the next is already being inserted. While every lane is busy, new events queue up and
/// so make the next batch bigger.
async fn writer_loop(
    pool: Pool,
    node: Uuid,
    mut rx: mpsc::Receiver<CommitJob>,
    batch_max: usize,
    lanes: usize,
) {
    let free = Arc::new(Semaphore::new(lanes.max(1)));
    let mut running = JoinSet::new();
    loop {
        let Ok(lane) = free.clone().acquire_owned().await else {
            break;
        };
        let Some(first) = rx.recv().await else { break };
        let mut batch: Vec<CommitJob> = Vec::with_capacity(batch_max.min(64));
        batch.push(first);
        while batch.len() < batch_max {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let pool = pool.clone();
        running.spawn(async move {
            let started = Instant::now();
            let events: Vec<&NewEvent> = batch.iter().map(|j| &j.event).collect();
            let results = commit_batch(&pool, node, &events).await;
            drop(lane);
            crate::analytics::Analytics::commit(batch.len(), started.elapsed());
            tracing::trace!(
                batch = batch.len(),
                micros = started.elapsed().as_micros() as u64,
                "group commit"
            );
            for (job, result) in batch.into_iter().zip(results) {
                // The requester may have gone away (client disconnected); the event is stored
                // anyway.
                let _ = job.reply.send(result);
            }
        });
        while running.try_join_next().is_some() {}
    }
    // Closing: every batch already taken is committed and answered.
    while running.join_next().await.is_some() {}
}

/// Commits a batch; when the server refuses something in it, commits its events one by one so
/// that one bad event does not fail the others.
async fn commit_batch(pool: &Pool, node: Uuid, events: &[&NewEvent]) -> Vec<Result<CommitOutcome>> {
    match commit_retrying(pool, node, events).await {
        Ok(outcomes) => outcomes,
        Err(f) if f.data && events.len() > 1 => {
            let mut out = Vec::with_capacity(events.len());
            for e in events {
                out.push(
                    match commit_retrying(pool, node, std::slice::from_ref(e)).await {
                        Ok(mut one) => one
                            .pop()
                            .unwrap_or_else(|| Err(StoreError::Database("no outcome".into()))),
                        Err(f) => Err(f.error),
                    },
                );
            }
            out
        }
        Err(f) => {
            tracing::error!(error = %f.error, "group commit failed");
            let msg = f.error.to_string();
            events
                .iter()
                .map(|_| match &f.error {
                    StoreError::Closed => Err(StoreError::Closed),
                    _ => Err(StoreError::Database(msg.clone())),
                })
                .collect()
        }
    }
}

async fn commit_retrying(
    pool: &Pool,
    node: Uuid,
    events: &[&NewEvent],
) -> std::result::Result<Vec<Result<CommitOutcome>>, BatchFailure> {
    let mut tries = 0;
    loop {
        match try_commit(pool, node, events).await {
            Err(f) if f.transient && tries < 3 => {
                tries += 1;
                tracing::debug!(error = %f.error, "group commit conflicted; trying again");
            }
            other => return other,
        }
    }
}

/// Inserts events, deliveries and stream rows with one statement of UNNESTed arrays; events
/// the dedupe index refuses (`ON CONFLICT DO NOTHING`) are answered with the original.
const INSERT_BATCH: &str = "
WITH ins AS (
    INSERT INTO events (id, source, type, action, delivery_id, timestamp, filtered, body)
    SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
                         $6::int8[], $7::bool[], $8::text[])
    ON CONFLICT DO NOTHING
    RETURNING id, timestamp
), dl AS (
    INSERT INTO deliveries (id, event_id, agent_id, route_id, priority, status, attempts,
                            next_attempt_at, last_error, body, retry_policy, created_at,
                            updated_at, owner)
    SELECT d.id, d.event_id, d.agent_id, d.route_id, d.priority, d.status, 0,
           d.next_attempt_at, d.last_error, d.body, d.retry_policy, ins.timestamp,
           ins.timestamp, $22
    FROM UNNEST($9::uuid[], $10::uuid[], $11::text[], $12::text[], $13::int8[], $14::text[],
                $15::int8[], $16::text[], $17::text[], $18::text[])
         AS d(id, event_id, agent_id, route_id, priority, status, next_attempt_at, last_error,
              body, retry_policy)
    JOIN ins ON ins.id = d.event_id
    RETURNING 1
), st AS (
    INSERT INTO streamed (agent_id, event_id, body)
    SELECT s.agent_id, s.event_id, s.body
    FROM UNNEST($19::text[], $20::uuid[], $21::text[]) AS s(agent_id, event_id, body)
    JOIN ins ON ins.id = s.event_id
    ON CONFLICT DO NOTHING
    RETURNING 1
)
SELECT id FROM ins";

/// The original of each refused event, with whether it has deliveries.
const RESOLVE_DUPLICATES: &str = "
SELECT x.ord, e.id, e.filtered, EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id)
FROM UNNEST($1::text[], $2::text[]) WITH ORDINALITY AS x(source, delivery_id, ord)
JOIN events e ON e.source = x.source AND e.delivery_id = x.delivery_id";

async fn try_commit(
    pool: &Pool,
    node: Uuid,
    events: &[&NewEvent],
) -> std::result::Result<Vec<Result<CommitOutcome>>, BatchFailure> {
    let mut ids = Vec::with_capacity(events.len());
    let mut sources = Vec::with_capacity(events.len());
    let mut types = Vec::with_capacity(events.len());
    let mut actions = Vec::with_capacity(events.len());
    let mut delivery_ids = Vec::with_capacity(events.len());
    let mut timestamps = Vec::with_capacity(events.len());
    let mut filtered = Vec::with_capacity(events.len());
    let mut bodies = Vec::with_capacity(events.len());
    let mut d_id = Vec::new();
    let mut d_event = Vec::new();
    let mut d_agent = Vec::new();
    let mut d_route = Vec::new();
    let mut d_priority = Vec::new();
    let mut d_status = Vec::new();
    let mut d_next = Vec::new();
    let mut d_error = Vec::new();
    let mut d_body = Vec::new();
    let mut d_policy = Vec::new();
    let mut s_agent = Vec::new();
    let mut s_event = Vec::new();
    let mut s_body = Vec::new();
    // A body that is not UTF-8 (only a programming error can make one) fails its own event.
    fn text(b: &[u8]) -> std::result::Result<&str, BatchFailure> {
        utf8(b).map_err(|error| BatchFailure {
            error,
            data: true,
            transient: false,
        })
    }
    for e in events {
        ids.push(e.id);
        sources.push(e.source.as_str());
        types.push(e.event_type.as_str());
        actions.push(e.action.as_deref());
        delivery_ids.push(e.delivery_id.as_deref());
        timestamps.push(e.timestamp);
        filtered.push(e.filtered);
        bodies.push(text(&e.body)?);
        for d in &e.deliveries {
            d_id.push(d.id);
            d_event.push(e.id);
            d_agent.push(d.agent_id.as_str());
            d_route.push(d.route_id.as_str());
            d_priority.push(d.priority);
            d_status.push(d.status.as_str());
            d_next.push(d.next_attempt_at);
            d_error.push(d.last_error.as_deref());
            d_body.push(d.body.as_deref().map(text).transpose()?);
            d_policy.push(d.retry_policy.as_deref());
        }
        for (agent, body) in &e.streamed {
            s_agent.push(agent.as_str());
            s_event.push(e.id);
            s_body.push(body.as_deref().map(text).transpose()?);
        }
    }
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let insert = tx.prepare_cached(INSERT_BATCH).await?;
    let params: [&(dyn ToSql + Sync); 22] = [
        &ids,
        &sources,
        &types,
        &actions,
        &delivery_ids,
        &timestamps,
        &filtered,
        &bodies,
        &d_id,
        &d_event,
        &d_agent,
        &d_route,
        &d_priority,
        &d_status,
        &d_next,
        &d_error,
        &d_body,
        &d_policy,
        &s_agent,
        &s_event,
        &s_body,
        &node,
    ];
    let stored: HashSet<Uuid> = tx
        .query(&insert, &params)
        .await?
        .iter()
        .map(|r| r.get::<_, Uuid>(0))
        .collect();

    let mut outcomes: Vec<Option<Result<CommitOutcome>>> = events
        .iter()
        .map(|e| stored.contains(&e.id).then_some(Ok(CommitOutcome::Stored)))
        .collect();
    // Refused events: the dedupe index (answer with the original, stored earlier or earlier in
    // this batch) or, without a provider delivery id, an id collision.
    let refused: Vec<usize> = (0..events.len())
        .filter(|&i| outcomes[i].is_none())
        .collect();
    if !refused.is_empty() {
        let src: Vec<Option<&str>> = refused
            .iter()
            .map(|&i| Some(events[i].source.as_str()))
            .collect();
        let did: Vec<Option<&str>> = refused
            .iter()
            .map(|&i| events[i].delivery_id.as_deref())
            .collect();
        let resolve = tx.prepare_cached(RESOLVE_DUPLICATES).await?;
        for row in tx.query(&resolve, &[&src, &did]).await? {
            let ord: i64 = row.get(0);
            let Some(&i) = usize::try_from(ord - 1).ok().and_then(|k| refused.get(k)) else {
                continue;
            };
            outcomes[i] = Some(Ok(CommitOutcome::Duplicate {
                event_id: row.get(1),
                filtered: row.get(2),
                routed: row.get(3),
            }));
        }
    }
    let mut notified: Vec<Uuid> = stored.into_iter().collect();
    notified.sort_unstable();
    let payloads = cluster::events_payloads(node, &notified);
    if !payloads.is_empty() {
        tx.execute(
            "SELECT pg_notify($1, p) FROM UNNEST($2::text[]) AS p",
            &[&cluster::CHANNEL, &payloads],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(outcomes
        .into_iter()
        .map(|o| {
            o.unwrap_or_else(|| {
                Err(StoreError::Database(
                    "an event with this id is already stored".into(),
                ))
            })
        })
        .collect())
}

fn event_row(r: &Row) -> EventRecord {
    EventRecord {
        id: r.get(0),
        source: r.get(1),
        event_type: r.get(2),
        timestamp: r.get(3),
        filtered: r.get(4),
        body: r.get(5),
    }
}

const EVENT_COLUMNS: &str = "id, source, type, timestamp, filtered, body FROM events";

#[async_trait]
impl EventStore for PgStore {
    async fn commit_event(&self, event: NewEvent) -> Result<CommitOutcome> {
        let (reply, rx) = oneshot::channel();
        self.sender()?
            .send(CommitJob { event, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn get_event(&self, id: Uuid) -> Result<Option<EventRecord>> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(&format!("SELECT {EVENT_COLUMNS} WHERE id = $1"))
            .await?;
        Ok(c.query_opt(&stmt, &[&id]).await?.as_ref().map(event_row))
    }

    async fn list_events(&self, q: EventQuery) -> Result<Vec<EventRecord>> {
        // Ids are time-ordered, so time bounds and the cursor are all bounds on `id`.
        let mut sql = format!("SELECT {EVENT_COLUMNS} WHERE true");
        let mut args: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
        let mut bind = |sql: &mut String, clause: &str, v: Box<dyn ToSql + Sync + Send>| {
            args.push(v);
            sql.push_str(&clause.replace('?', &format!("${}", args.len())));
        };
        if let Some(s) = q.source {
            bind(&mut sql, " AND source = ?", Box::new(s));
        }
        if let Some(t) = q.event_type {
            bind(&mut sql, " AND type = ?", Box::new(t));
        }
        if let Some(since) = q.since {
            bind(
                &mut sql,
                " AND id >= ?",
                Box::new(Uuid::from_bytes(id_floor(since))),
            );
        }
        if let Some(until) = q.until {
            bind(
                &mut sql,
                " AND id < ?",
                Box::new(Uuid::from_bytes(id_floor(until))),
            );
        }
        if let Some(before) = q.before {
            bind(&mut sql, " AND id < ?", Box::new(before));
        }
        match q.status {
            Some(EventStatus::Filtered) => sql.push_str(" AND filtered"),
            Some(EventStatus::Processed) => sql.push_str(" AND NOT filtered"),
            None => {}
        }
        bind(
            &mut sql,
            " ORDER BY id DESC LIMIT ?",
            Box::new(limit_of(q.limit)),
        );
        let c = self.client().await?;
        let stmt = c.prepare_cached(&sql).await?;
        let refs: Vec<&(dyn ToSql + Sync)> = args
            .iter()
            .map(|a| a.as_ref() as &(dyn ToSql + Sync))
            .collect();
        Ok(c.query(&stmt, &refs).await?.iter().map(event_row).collect())
    }

    async fn event_deliveries(&self, id: Uuid) -> Result<Vec<DeliveryRecord>> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(&format!(
                "SELECT {DELIVERY_COLUMNS} WHERE event_id = $1 ORDER BY priority DESC, agent_id"
            ))
            .await?;
        let mut out = c
            .query(&stmt, &[&id])
            .await?
            .iter()
            .map(delivery_row)
            .collect::<Result<Vec<_>>>()?;
        fill_attempts(&c, &mut out).await?;
        Ok(out)
    }

    async fn stream_backlog(
        &self,
        agent: Option<String>,
        after: Uuid,
        limit: usize,
    ) -> Result<Vec<BacklogItem>> {
        let c = self.client().await?;
        let rows = match agent {
            None => {
                let stmt = c
                    .prepare_cached(
                        "SELECT id, body FROM events WHERE id > $1 AND NOT filtered
                         ORDER BY id LIMIT $2",
                    )
                    .await?;
                c.query(&stmt, &[&after, &limit_of(limit)]).await?
            }
            Some(agent) => {
                // Several routes to one agent: one item, the same body SQLite's MIN picks
                // (byte order, a transformed body before none).
                let stmt = c
                    .prepare_cached(
                        "SELECT x.event_id, COALESCE(x.body, e.body) FROM (
                             SELECT event_id, MIN(body COLLATE \"C\") AS body FROM deliveries
                              WHERE agent_id = $1 AND event_id > $2 GROUP BY event_id
                             UNION ALL
                             SELECT event_id, body FROM streamed
                              WHERE agent_id = $1 AND event_id > $2
                         ) x JOIN events e ON e.id = x.event_id
                         ORDER BY x.event_id LIMIT $3",
                    )
                    .await?;
                c.query(&stmt, &[&agent, &after, &limit_of(limit)]).await?
            }
        };
        Ok(rows
            .iter()
            .map(|r| BacklogItem {
                event_id: r.get(0),
                body: r.get(1),
            })
            .collect())
    }
}

/// What a `PendingDelivery` needs, over `deliveries d JOIN events e`. With a `budget` (an
/// `int8` parameter such as `$2`; NULL = no limit), the body only while the bodies so far, in
/// id order, add up to at most it.
fn pending_select(budget: Option<&str>) -> String {
    let body = match budget {
        None => "COALESCE(d.body, e.body)".to_string(),
        Some(b) => format!(
            "CASE WHEN {b}::int8 IS NULL
                       OR sum(octet_length(COALESCE(d.body, e.body)))
                              OVER (ORDER BY d.id ROWS UNBOUNDED PRECEDING) <= {b}::int8
                  THEN COALESCE(d.body, e.body) END"
        ),
    };
    format!(
        "d.id, d.event_id, d.agent_id, d.route_id, d.priority, d.attempts, d.retry_base,
         d.next_attempt_at, d.retry_policy, e.source, e.type, {body}, d.created_at"
    )
}

fn pending_row(r: &Row) -> Result<PendingDelivery> {
    Ok(PendingDelivery {
        id: r.get(0),
        event_id: r.get(1),
        agent_id: r.get(2),
        route_id: r.get(3),
        priority: r.get(4),
        attempts: u32_of(r.get(5), "attempts")?,
        retry_base: u32_of(r.get(6), "retry_base")?,
        next_attempt_at: r.get::<_, Option<i64>>(7).unwrap_or(0),
        retry_policy: r.get(8),
        source: r.get(9),
        event_type: r.get(10),
        body: r.get(11),
        created_at: r.get(12),
    })
}

const DELIVERY_COLUMNS: &str = "id, event_id, agent_id, route_id, priority, status, attempts,
     next_attempt_at, last_error, first_started_at, first_duration_ms, first_status_code
     FROM deliveries";

fn delivery_row(r: &Row) -> Result<DeliveryRecord> {
    let status: String = r.get(5);
    Ok(DeliveryRecord {
        id: r.get(0),
        event_id: r.get(1),
        agent_id: r.get(2),
        route_id: r.get(3),
        priority: r.get(4),
        status: DeliveryStatus::parse(&status).unwrap_or(DeliveryStatus::Pending),
        attempts: u32_of(r.get(6), "attempts")?,
        next_attempt_at: r.get(7),
        last_error: r.get(8),
        // A first-attempt success is kept in the row (see `record_attempts`); every other
        // attempt is an `attempts` row, added by `fill_attempts`.
        attempt_log: AttemptRecord::first_success_log(
            r.get(9),
            r.get(10),
            r.get::<_, Option<i32>>(11)
                .and_then(|c| u16::try_from(c).ok()),
        ),
    })
}

async fn fill_attempts<C: GenericClient>(c: &C, list: &mut [DeliveryRecord]) -> Result<()> {
    if list.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = list.iter().map(|d| d.id).collect();
    let rows = c
        .query(
            "SELECT delivery_id, attempt, started_at, duration_ms, status_code, error
             FROM attempts WHERE delivery_id = ANY($1) ORDER BY delivery_id, attempt",
            &[&ids],
        )
        .await?;
    let mut by_delivery: HashMap<Uuid, Vec<AttemptRecord>> = HashMap::new();
    for r in rows {
        let code: Option<i32> = r.get(4);
        by_delivery
            .entry(r.get(0))
            .or_default()
            .push(AttemptRecord {
                attempt: u32_of(r.get(1), "attempt")?,
                started_at: r.get(2),
                duration_ms: r.get::<_, i64>(3).max(0) as u64,
                status_code: code.and_then(|c| u16::try_from(c).ok()),
                error: r.get(5),
            });
    }
    for d in list {
        if let Some(mut logged) = by_delivery.remove(&d.id) {
            d.attempt_log.append(&mut logged);
        }
    }
    Ok(())
}

/// Moves dead deliveries matching `where_sql` (over `deliveries d JOIN events e`, parameters
/// from `$3`) back to pending, owned by `node`, and returns them.
async fn requeue<C: GenericClient>(
    c: &C,
    node: Uuid,
    where_sql: &str,
    args: &[&(dyn ToSql + Sync)],
) -> Result<Vec<PendingDelivery>> {
    let now = crate::clock::now_ms();
    let sql = format!(
        // A delivery whose route transformation failed has nothing to send: it is fixed by
        // correcting the route and replaying the event, not by a retry.
        "WITH picked AS (
             SELECT d.id FROM deliveries d JOIN events e ON e.id = d.event_id
             WHERE d.status = 'dead' AND NOT (d.attempts = 0 AND d.body IS NULL
                   AND d.last_error LIKE 'transformation failed:%')
               AND {where_sql}
             FOR UPDATE OF d
         ), upd AS (
             UPDATE deliveries d SET status = 'pending', retry_base = d.attempts,
                    next_attempt_at = $1, updated_at = $1, owner = $2
             FROM picked WHERE d.id = picked.id
             RETURNING d.*
         )
         SELECT {} FROM upd d JOIN events e ON e.id = d.event_id ORDER BY d.id",
        pending_select(None)
    );
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&now, &node];
    params.extend_from_slice(args);
    let stmt = c.prepare_cached(&sql).await?;
    c.query(&stmt, &params)
        .await?
        .iter()
        .map(pending_row)
        .collect()
}

/// Inserts deliveries of one event, owned by `node`.
async fn insert_deliveries<C: GenericClient>(
    c: &C,
    node: Uuid,
    event_id: Uuid,
    created_at: i64,
    deliveries: &[NewDelivery],
) -> Result<()> {
    if deliveries.is_empty() {
        return Ok(());
    }
    let mut id = Vec::new();
    let mut agent = Vec::new();
    let mut route = Vec::new();
    let mut priority = Vec::new();
    let mut status = Vec::new();
    let mut next = Vec::new();
    let mut error = Vec::new();
    let mut body = Vec::new();
    let mut policy = Vec::new();
    for d in deliveries {
        id.push(d.id);
        agent.push(d.agent_id.as_str());
        route.push(d.route_id.as_str());
        priority.push(d.priority);
        status.push(d.status.as_str());
        next.push(d.next_attempt_at);
        error.push(d.last_error.as_deref());
        body.push(d.body.as_deref().map(utf8).transpose()?);
        policy.push(d.retry_policy.as_deref());
    }
    let stmt = c
        .prepare_cached(
            "INSERT INTO deliveries (id, event_id, agent_id, route_id, priority, status, attempts,
                                     next_attempt_at, last_error, body, retry_policy, created_at,
                                     updated_at, owner)
             SELECT d.id, $10, d.agent_id, d.route_id, d.priority, d.status, 0, d.next_attempt_at,
                    d.last_error, d.body, d.retry_policy, $11, $11, $12
             FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::int8[], $5::text[], $6::int8[],
                         $7::text[], $8::text[], $9::text[])
                  AS d(id, agent_id, route_id, priority, status, next_attempt_at, last_error,
                       body, retry_policy)",
        )
        .await?;
    c.execute(
        &stmt,
        &[
            &id,
            &agent,
            &route,
            &priority,
            &status,
            &next,
            &error,
            &body,
            &policy,
            &event_id,
            &created_at,
            &node,
        ],
    )
    .await?;
    Ok(())
}

#[async_trait]
impl DeliveryStore for PgStore {
    async fn record_attempts(&self, updates: Vec<AttemptUpdate>) -> Result<()> {
        if updates.is_empty() {
            return Ok(());
        }
        // One row per key, as applying the updates in order would leave them: the last
        // attempt record per (delivery, attempt); per delivery the last outcome, with the
        // highest attempt number seen.
        let mut attempts: BTreeMap<(Uuid, u32), &AttemptUpdate> = BTreeMap::new();
        let mut last: BTreeMap<Uuid, (&AttemptUpdate, u32)> = BTreeMap::new();
        for u in &updates {
            attempts.insert((u.delivery_id, u.attempt), u);
            let top = last
                .get(&u.delivery_id)
                .map_or(u.attempt, |(_, a)| (*a).max(u.attempt));
            last.insert(u.delivery_id, (u, top));
        }
        let mut a_id = Vec::new();
        let mut a_no = Vec::new();
        let mut a_start = Vec::new();
        let mut a_dur = Vec::new();
        let mut a_code = Vec::new();
        let mut a_err = Vec::new();
        let mut a_resp = Vec::new();
        for ((id, no), u) in &attempts {
            // A first attempt that succeeded is kept in its delivery's row (most deliveries):
            // no `attempts` row to insert and index. `delivery_row` puts it back in the log.
            if u.is_first_success() {
                continue;
            }
            a_id.push(*id);
            a_no.push(i64::from(*no));
            a_start.push(u.started_at);
            a_dur.push(i64::try_from(u.duration_ms).unwrap_or(i64::MAX));
            a_code.push(u.status_code.map(i32::from));
            a_err.push(u.error.as_deref());
            a_resp.push(u.response_prefix.as_deref());
        }
        let mut d_id = Vec::new();
        let mut d_status = Vec::new();
        let mut d_attempt = Vec::new();
        let mut d_next = Vec::new();
        let mut d_err = Vec::new();
        let mut f_start = Vec::new();
        let mut f_dur = Vec::new();
        let mut f_code = Vec::new();
        for (id, (u, top)) in &last {
            d_id.push(*id);
            d_status.push(u.status.as_str());
            d_attempt.push(i64::from(*top));
            d_next.push(u.next_attempt_at);
            d_err.push(u.error.as_deref());
            let first = attempts.get(&(*id, 1)).filter(|f| f.is_first_success());
            f_start.push(first.map(|f| f.started_at));
            f_dur.push(first.map(|f| i64::try_from(f.duration_ms).unwrap_or(i64::MAX)));
            f_code.push(first.and_then(|f| f.status_code).map(i32::from));
        }
        let now = crate::clock::now_ms();
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        if !a_id.is_empty() {
            let ins = tx
                .prepare_cached(
                    "INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms,
                                           status_code, error, response_body)
                     SELECT * FROM UNNEST($1::uuid[], $2::int8[], $3::int8[], $4::int8[],
                                          $5::int4[], $6::text[], $7::text[])
                     ON CONFLICT (delivery_id, attempt) DO UPDATE SET
                         started_at = excluded.started_at, duration_ms = excluded.duration_ms,
                         status_code = excluded.status_code, error = excluded.error,
                         response_body = excluded.response_body",
                )
                .await?;
            tx.execute(
                &ins,
                &[&a_id, &a_no, &a_start, &a_dur, &a_code, &a_err, &a_resp],
            )
            .await?;
        }
        let upd = tx
            .prepare_cached(
                "UPDATE deliveries d SET status = u.status,
                        attempts = GREATEST(d.attempts, u.attempt),
                        next_attempt_at = u.next_attempt_at, last_error = u.error,
                        first_started_at = CASE WHEN u.first_started_at IS NULL
                            THEN d.first_started_at ELSE u.first_started_at END,
                        first_duration_ms = CASE WHEN u.first_started_at IS NULL
                            THEN d.first_duration_ms ELSE u.first_duration_ms END,
                        first_status_code = CASE WHEN u.first_started_at IS NULL
                            THEN d.first_status_code ELSE u.first_status_code END,
                        updated_at = $6
                 FROM UNNEST($1::uuid[], $2::text[], $3::int8[], $4::int8[], $5::text[],
                             $7::int8[], $8::int8[], $9::int4[])
                      AS u(id, status, attempt, next_attempt_at, error,
                           first_started_at, first_duration_ms, first_status_code)
                 WHERE d.id = u.id",
            )
            .await?;
        tx.execute(
            &upd,
            &[
                &d_id, &d_status, &d_attempt, &d_next, &d_err, &now, &f_start, &f_dur, &f_code,
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn unfinished_deliveries(&self, body_budget: usize) -> Result<Vec<PendingDelivery>> {
        // What this node owns, plus whatever no live node owns (released, or whose owner's
        // lease ran out): never a delivery another live node is working on.
        let budget = body_budget.min(i64::MAX as usize) as i64;
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let stmt = tx
            .prepare_cached(&format!(
                "SELECT {} FROM deliveries d JOIN events e ON e.id = d.event_id
                 WHERE d.status IN {UNFINISHED} AND d.owner = $1 ORDER BY d.id",
                pending_select(Some("$2"))
            ))
            .await?;
        let mut out = tx
            .query(&stmt, &[&self.node, &budget])
            .await?
            .iter()
            .map(pending_row)
            .collect::<Result<Vec<_>>>()?;
        // Deliveries claimed from no live node share what the node's own left of the budget.
        let used: usize = out
            .iter()
            .filter_map(|p| p.body.as_ref())
            .map(String::len)
            .sum();
        let left = (body_budget.saturating_sub(used)).min(i64::MAX as usize) as i64;
        out.extend(cluster::claim(&tx, self.node, None, Some(left)).await?);
        tx.commit().await?;
        out.sort_by_key(|p| p.id);
        Ok(out)
    }

    async fn delivery_bodies(&self, ids: Vec<Uuid>) -> Result<Vec<(Uuid, String)>> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(
                "SELECT d.id, COALESCE(d.body, e.body) FROM deliveries d
                 JOIN events e ON e.id = d.event_id WHERE d.id = ANY($1)",
            )
            .await?;
        Ok(c.query(&stmt, &[&ids])
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }

    async fn dead_letters(
        &self,
        agent_id: Option<String>,
        limit: usize,
        before: Option<Uuid>,
    ) -> Result<Vec<DeliveryRecord>> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(&format!(
                "SELECT {DELIVERY_COLUMNS}
                 WHERE status = 'dead' AND id < $1 AND ($2::text IS NULL OR agent_id = $2)
                 ORDER BY id DESC LIMIT $3"
            ))
            .await?;
        let before = before.unwrap_or(Uuid::max());
        let mut list = c
            .query(&stmt, &[&before, &agent_id, &limit_of(limit)])
            .await?
            .iter()
            .map(delivery_row)
            .collect::<Result<Vec<_>>>()?;
        fill_attempts(&c, &mut list).await?;
        Ok(list)
    }

    async fn retry_dead(&self, id: Uuid) -> Result<Option<PendingDelivery>> {
        let c = self.client().await?;
        Ok(requeue(&c, self.node, "d.id = $3", &[&id]).await?.pop())
    }

    async fn retry_dead_matching(&self, f: DeadFilter) -> Result<Vec<PendingDelivery>> {
        let c = self.client().await?;
        requeue(
            &c,
            self.node,
            "($3::text IS NULL OR d.agent_id = $3) AND ($4::text IS NULL OR e.source = $4)
             AND ($5::int8 IS NULL OR d.updated_at >= $5)",
            &[&f.agent_id, &f.source, &f.since],
        )
        .await
    }

    async fn delete_dead(&self, id: Uuid) -> Result<bool> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let n = tx
            .execute(
                "DELETE FROM deliveries WHERE id = $1 AND status = 'dead'",
                &[&id],
            )
            .await?;
        if n > 0 {
            tx.execute("DELETE FROM attempts WHERE delivery_id = $1", &[&id])
                .await?;
        }
        tx.commit().await?;
        Ok(n > 0)
    }

    async fn add_deliveries(&self, event_id: Uuid, deliveries: Vec<NewDelivery>) -> Result<()> {
        let c = self.client().await?;
        insert_deliveries(&c, self.node, event_id, crate::clock::now_ms(), &deliveries).await
    }

    async fn finished_counts(&self) -> Result<(u64, u64)> {
        let c = self.client().await?;
        let row = c
            .query_one(
                "SELECT count(*) FILTER (WHERE status = 'dead'),
                        count(*) FILTER (WHERE status = 'delivered')
                 FROM deliveries",
                &[],
            )
            .await?;
        Ok((
            row.get::<_, i64>(0).max(0) as u64,
            row.get::<_, i64>(1).max(0) as u64,
        ))
    }
}

#[async_trait]
impl AnalyticsStore for PgStore {
    async fn add_rollups(&self, deltas: Vec<RollupDelta>) -> Result<()> {
        // One row per key (an upsert may not touch a row twice), in key order so that nodes
        // adding to the same minute lock its rows in the same order.
        let mut sums: BTreeMap<(i64, String, String), i64> = BTreeMap::new();
        for d in deltas {
            *sums.entry((d.minute, d.dim, d.metric)).or_default() += d.value;
        }
        if sums.is_empty() {
            return Ok(());
        }
        let mut minute = Vec::with_capacity(sums.len());
        let mut dim = Vec::with_capacity(sums.len());
        let mut metric = Vec::with_capacity(sums.len());
        let mut value = Vec::with_capacity(sums.len());
        for ((m, d, k), v) in sums {
            minute.push(m);
            dim.push(d);
            metric.push(k);
            value.push(v);
        }
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(
                "INSERT INTO rollups (minute, dim, metric, value)
                 SELECT * FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::int8[])
                 ON CONFLICT (minute, dim, metric) DO UPDATE
                     SET value = rollups.value + excluded.value",
            )
            .await?;
        c.execute(&stmt, &[&minute, &dim, &metric, &value]).await?;
        Ok(())
    }

    async fn rollup_totals(&self, since: i64) -> Result<Vec<(String, String, i64)>> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(
                "SELECT dim, metric, SUM(value)::int8 FROM rollups WHERE minute >= $1
                 GROUP BY dim, metric ORDER BY dim, metric",
            )
            .await?;
        Ok(c.query(&stmt, &[&since])
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    async fn rollup_timeline(
        &self,
        since: i64,
        bucket_ms: i64,
        metrics: Vec<String>,
    ) -> Result<Vec<(i64, String, i64)>> {
        // One pass over the window for every metric asked, in bucket order.
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(
                "SELECT $2 + ((minute - $2) / $3) * $3 AS b, metric, SUM(value)::int8
                 FROM rollups
                 WHERE minute >= $2 AND dim = '' AND metric = ANY($1)
                 GROUP BY b, metric ORDER BY b, metric",
            )
            .await?;
        let bucket = bucket_ms.max(60_000);
        Ok(c.query(&stmt, &[&metrics, &since, &bucket])
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    async fn unsettled_events(&self, since: i64) -> Result<(u64, u64)> {
        let c = self.client().await?;
        let floor = Uuid::from_bytes(id_floor(since));
        let row = c
            .query_one(
                "SELECT COUNT(DISTINCT event_id),
                        COUNT(DISTINCT event_id) FILTER (WHERE status = 'dead')
                 FROM deliveries
                 WHERE event_id >= $1 AND status IN ('pending', 'in_flight', 'scheduled', 'dead')",
                &[&floor],
            )
            .await?;
        Ok((
            row.get::<_, i64>(0).max(0) as u64,
            row.get::<_, i64>(1).max(0) as u64,
        ))
    }
}

#[async_trait]
impl AuditStore for PgStore {
    async fn add_audit(&self, a: AuditRecord) -> Result<()> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(
                "INSERT INTO audit (at, client_ip, method, path, status, action, target_id)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .await?;
        c.execute(
            &stmt,
            &[
                &a.at,
                &a.client_ip,
                &a.method,
                &a.path,
                &i32::from(a.status),
                &a.action,
                &a.target_id,
            ],
        )
        .await?;
        Ok(())
    }

    async fn list_audit(&self, limit: usize, before: Option<i64>) -> Result<Vec<AuditRecord>> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(
                "SELECT id, at, client_ip, method, path, status, action, target_id FROM audit
                 WHERE id < $1 ORDER BY id DESC LIMIT $2",
            )
            .await?;
        c.query(&stmt, &[&before.unwrap_or(i64::MAX), &limit_of(limit)])
            .await?
            .iter()
            .map(|r| {
                let status: i32 = r.get(5);
                Ok(AuditRecord {
                    id: r.get(0),
                    at: r.get(1),
                    client_ip: r.get(2),
                    method: r.get(3),
                    path: r.get(4),
                    status: u16::try_from(status)
                        .map_err(|_| corrupt(&format!("audit status {status}")))?,
                    action: r.get(6),
                    target_id: r.get(7),
                })
            })
            .collect()
    }

    async fn purge_before(&self, cutoff: i64, batch: usize) -> Result<usize> {
        let floor = Uuid::from_bytes(id_floor(cutoff));
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        // Events still being delivered stay until their deliveries finish. SKIP LOCKED: nodes
        // purging at the same time take different events.
        let ids: Vec<Uuid> = tx
            .query(
                &format!(
                    "SELECT id FROM events WHERE id < $1 AND NOT EXISTS (
                         SELECT 1 FROM deliveries d WHERE d.event_id = events.id
                            AND d.status IN {UNFINISHED})
                     ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED"
                ),
                &[&floor, &limit_of(batch)],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if !ids.is_empty() {
            tx.execute(
                "DELETE FROM attempts WHERE delivery_id IN
                     (SELECT id FROM deliveries WHERE event_id = ANY($1))",
                &[&ids],
            )
            .await?;
            tx.execute("DELETE FROM deliveries WHERE event_id = ANY($1)", &[&ids])
                .await?;
            tx.execute("DELETE FROM streamed WHERE event_id = ANY($1)", &[&ids])
                .await?;
            tx.execute("DELETE FROM events WHERE id = ANY($1)", &[&ids])
                .await?;
        }
        if ids.len() < batch {
            tx.execute("DELETE FROM rollups WHERE minute < $1", &[&cutoff])
                .await?;
            tx.execute("DELETE FROM audit WHERE at < $1", &[&cutoff])
                .await?;
            // Rate-limit counters nobody touched within the retention period.
            tx.execute("DELETE FROM rate_hits WHERE updated_at < $1", &[&cutoff])
                .await?;
        }
        tx.commit().await?;
        Ok(ids.len())
    }
}

#[async_trait]
impl RuleStore for PgStore {
    async fn list_rules(&self, kind: RuleKind) -> Result<Vec<StoredRule>> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached("SELECT id, body FROM rules WHERE kind = $1 ORDER BY id")
            .await?;
        Ok(c.query(&stmt, &[&kind.as_str()])
            .await?
            .iter()
            .map(|r| StoredRule {
                id: r.get(0),
                body: r.get(1),
            })
            .collect())
    }

    async fn put_rule(
        &self,
        kind: RuleKind,
        rule: StoredRule,
        mode: PutMode,
    ) -> Result<PutOutcome> {
        let now = crate::clock::now_ms();
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let outcome = match mode {
            PutMode::Create => {
                let created = tx
                    .query_opt(
                        "INSERT INTO rules (kind, id, body, updated_at) VALUES ($1, $2, $3, $4)
                         ON CONFLICT (kind, id) DO NOTHING RETURNING 1",
                        &[&kind.as_str(), &rule.id, &rule.body, &now],
                    )
                    .await?;
                if created.is_some() {
                    PutOutcome::Created
                } else {
                    PutOutcome::Exists
                }
            }
            PutMode::Upsert => {
                // `xmax = 0`: the row is new in this transaction (inserted, not updated).
                let row = tx
                    .query_one(
                        "INSERT INTO rules (kind, id, body, updated_at) VALUES ($1, $2, $3, $4)
                         ON CONFLICT (kind, id) DO UPDATE
                             SET body = excluded.body, updated_at = excluded.updated_at
                         RETURNING (xmax = 0)",
                        &[&kind.as_str(), &rule.id, &rule.body, &now],
                    )
                    .await?;
                if row.get::<_, bool>(0) {
                    PutOutcome::Created
                } else {
                    PutOutcome::Replaced
                }
            }
        };
        // Every node reloads its rules when this commits (bookkeeping rows are never served).
        if outcome != PutOutcome::Exists && kind != RuleKind::Meta {
            Self::notify_rules(&tx, self.node).await?;
        }
        tx.commit().await?;
        Ok(outcome)
    }

    async fn delete_rule(&self, kind: RuleKind, id: String) -> Result<bool> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let n = tx
            .execute(
                "DELETE FROM rules WHERE kind = $1 AND id = $2",
                &[&kind.as_str(), &id],
            )
            .await?;
        if n > 0 && kind != RuleKind::Meta {
            Self::notify_rules(&tx, self.node).await?;
        }
        tx.commit().await?;
        Ok(n > 0)
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
        self.pool.close();
    }
}
