//! The embedded store: one SQLite file in WAL mode, one writer thread doing group commit, and a
//! small pool of reader connections.
//!
//! Why a dedicated OS thread for writes: SQLite allows one writer at a time, rusqlite is
//! synchronous, and batching every waiting write into one transaction turns N fsyncs into one.
//! Handlers hand the writer a job through a bounded channel and await its reply; once a job is in
//! the channel it is committed whether or not the handler is still there to hear about it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::{
    AnalyticsStore, AttemptRecord, AttemptUpdate, AuditRecord, AuditStore, BacklogItem,
    BodyRewrite, CommitOutcome, DeadFilter, DeliveryRecord, DeliveryStatus, DeliveryStore,
    EventQuery, EventRecord, EventStatus, EventStore, NewDelivery, NewEvent, PendingDelivery,
    PutMode, PutOutcome, Result, RollupDelta, RuleKind, RuleStore, Store, StoreError, StoredRule,
    id_floor,
    packed::{Packed, Unpacked, unpacked_len},
};

/// Schema migrations, applied in order at start; the index + 1 is the schema version.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE events (
    seq         INTEGER PRIMARY KEY,
    id          BLOB NOT NULL UNIQUE,
    source      TEXT NOT NULL,
    type        TEXT NOT NULL,
    action      TEXT,
    delivery_id TEXT,
    timestamp   INTEGER NOT NULL,
    filtered    INTEGER NOT NULL,
    body        TEXT NOT NULL
);
CREATE UNIQUE INDEX events_dedupe ON events(source, delivery_id) WHERE delivery_id IS NOT NULL;
CREATE INDEX events_by_source ON events(source, id);
CREATE INDEX events_by_type ON events(type, id);

CREATE TABLE deliveries (
    id              BLOB PRIMARY KEY,
    event_id        BLOB NOT NULL,
    agent_id        TEXT NOT NULL,
    route_id        TEXT NOT NULL,
    priority        INTEGER NOT NULL,
    status          TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    retry_base      INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER,
    last_error      TEXT,
    body            TEXT,
    retry_policy    TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
CREATE INDEX deliveries_by_event ON deliveries(event_id);
CREATE INDEX deliveries_unfinished ON deliveries(status, next_attempt_at)
    WHERE status IN ('pending', 'in_flight', 'scheduled');
CREATE INDEX deliveries_by_agent ON deliveries(agent_id, status);
CREATE INDEX deliveries_dead ON deliveries(id) WHERE status = 'dead';

CREATE TABLE attempts (
    delivery_id   BLOB NOT NULL,
    attempt       INTEGER NOT NULL,
    started_at    INTEGER NOT NULL,
    duration_ms   INTEGER NOT NULL,
    status_code   INTEGER,
    error         TEXT,
    response_body TEXT,
    PRIMARY KEY (delivery_id, attempt)
);

-- Stream-only agents' routed events (push agents' are their deliveries), for stream resume.
CREATE TABLE streamed (
    agent_id TEXT NOT NULL,
    event_id BLOB NOT NULL,
    body     TEXT,
    PRIMARY KEY (agent_id, event_id)
) WITHOUT ROWID;
CREATE INDEX streamed_by_event ON streamed(event_id);
CREATE INDEX deliveries_by_agent_event ON deliveries(agent_id, event_id);

CREATE TABLE rollups (
    minute INTEGER NOT NULL,
    dim    TEXT NOT NULL,
    metric TEXT NOT NULL,
    value  INTEGER NOT NULL,
    PRIMARY KEY (minute, dim, metric)
) WITHOUT ROWID;

CREATE TABLE audit (
    id        INTEGER PRIMARY KEY,
    at        INTEGER NOT NULL,
    client_ip TEXT NOT NULL,
    method    TEXT NOT NULL,
    path      TEXT NOT NULL,
    status    INTEGER NOT NULL,
    action    TEXT NOT NULL,
    target_id TEXT
);

CREATE TABLE rules (
    kind       TEXT NOT NULL,
    id         TEXT NOT NULL,
    body       TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (kind, id)
);
"#,
    r#"
-- A first attempt that succeeds (most deliveries) is kept in its delivery's row rather than
-- as an `attempts` row: one UPDATE instead of an INSERT and an UPDATE on the writer.
ALTER TABLE deliveries ADD COLUMN first_started_at INTEGER;
ALTER TABLE deliveries ADD COLUMN first_duration_ms INTEGER;
ALTER TABLE deliveries ADD COLUMN first_status_code INTEGER;
"#,
    r#"
-- The same rows as before (status is one of five values), with a predicate SQLite evaluates by
-- comparisons: an `IN` list of three or more constants builds a temporary b-tree each time it
-- is evaluated, i.e. for every INSERT into and every status UPDATE of `deliveries` (twice for an
-- UPDATE: old and new row). That was a quarter of the router's CPU while draining deliveries.
DROP INDEX deliveries_unfinished;
CREATE INDEX deliveries_unfinished ON deliveries(status, next_attempt_at)
    WHERE status NOT IN ('delivered', 'dead');
"#,
];

/// A unit of work for the writer thread. `apply` runs inside the shared transaction (under its
/// own savepoint, so one failing job does not sink the batch); `finish` runs after the commit.
trait WriteJob: Send {
    fn apply(&mut self, conn: &Connection) -> rusqlite::Result<()>;
    /// Whether `apply` may run again after its effects were rolled back (so the batch can try
    /// it without a savepoint of its own first).
    fn repeatable(&self) -> bool {
        false
    }
    fn finish(self: Box<Self>, result: Result<()>);
}

struct CommitEventJob {
    event: NewEvent,
    /// The event's bodies, packed before the job reaches the writer (see `packed`).
    bodies: PackedBodies,
    outcome: Option<CommitOutcome>,
    reply: oneshot::Sender<Result<CommitOutcome>>,
}

impl WriteJob for CommitEventJob {
    fn repeatable(&self) -> bool {
        true
    }

    fn apply(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        let e = &self.event;
        let inserted = conn
            .prepare_cached(
                "INSERT INTO events (id, source, type, action, delivery_id, timestamp, filtered, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT DO NOTHING",
            )?
            .execute(params![
                e.id.as_bytes().as_slice(),
                e.source,
                e.event_type,
                e.action,
                e.delivery_id,
                e.timestamp,
                e.filtered,
                &self.bodies.event
            ])?;
        if inserted == 0 {
            // The dedupe index refused it: answer with the original event.
            let original = conn
                .prepare_cached(
                    "SELECT id, filtered,
                            EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = events.id)
                     FROM events WHERE source = ?1 AND delivery_id = ?2",
                )?
                .query_row(params![e.source, e.delivery_id], |r| {
                    Ok((
                        r.get::<_, Vec<u8>>(0)?,
                        r.get::<_, bool>(1)?,
                        r.get::<_, bool>(2)?,
                    ))
                })
                .optional()?;
            self.outcome = Some(match original {
                Some((id, filtered, routed)) => CommitOutcome::Duplicate {
                    event_id: Uuid::from_slice(&id).unwrap_or_default(),
                    filtered,
                    routed,
                },
                // Only possible on an id collision, which v7 ids make practically impossible.
                None => return Err(rusqlite::Error::QueryReturnedNoRows),
            });
            return Ok(());
        }
        insert_deliveries(
            conn,
            e.id,
            e.timestamp,
            &e.deliveries,
            &self.bodies.deliveries,
        )?;
        if !e.streamed.is_empty() {
            let mut stmt = conn.prepare_cached(
                "INSERT OR IGNORE INTO streamed (agent_id, event_id, body) VALUES (?1, ?2, ?3)",
            )?;
            for ((agent, _), body) in e.streamed.iter().zip(&self.bodies.streamed) {
                stmt.execute(params![agent, e.id.as_bytes().as_slice(), body])?;
            }
        }
        self.outcome = Some(CommitOutcome::Stored);
        Ok(())
    }

    fn finish(self: Box<Self>, result: Result<()>) {
        let CommitEventJob { outcome, reply, .. } = *self;
        let result = result.and_then(|()| {
            outcome.ok_or_else(|| StoreError::Database("commit produced no outcome".into()))
        });
        // The requester may have gone away (client disconnected); the event is stored anyway.
        let _ = reply.send(result);
    }
}

/// An event's bodies as they will be stored: its own, then its deliveries' and its streamed
/// agents' transformed ones (`None`: the event's own), in the event's order.
struct PackedBodies {
    event: Packed,
    deliveries: Vec<Option<Packed>>,
    streamed: Vec<Option<Packed>>,
}

impl PackedBodies {
    fn new(e: &NewEvent) -> PackedBodies {
        PackedBodies {
            event: Packed::new(&e.body),
            deliveries: pack_deliveries(&e.deliveries),
            streamed: e
                .streamed
                .iter()
                .map(|(_, b)| b.as_ref().map(Packed::new))
                .collect(),
        }
    }
}

fn pack_deliveries(deliveries: &[NewDelivery]) -> Vec<Option<Packed>> {
    deliveries
        .iter()
        .map(|d| d.body.as_ref().map(Packed::new))
        .collect()
}

/// Any other write: a closure run inside the shared transaction.
struct FnJob<T, F> {
    f: Option<F>,
    out: Option<T>,
    reply: oneshot::Sender<Result<T>>,
}

impl<T, F> WriteJob for FnJob<T, F>
where
    T: Send,
    F: FnOnce(&Connection) -> rusqlite::Result<T> + Send,
{
    fn apply(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        if let Some(f) = self.f.take() {
            self.out = Some(f(conn)?);
        }
        Ok(())
    }

    fn finish(self: Box<Self>, result: Result<()>) {
        let FnJob { out, reply, .. } = *self;
        let result = result.and_then(|()| {
            out.ok_or_else(|| StoreError::Database("write produced no result".into()))
        });
        let _ = reply.send(result);
    }
}

/// Tuning of the writer.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// Most jobs in one transaction.
    pub batch_max: usize,
    /// Reader connections kept open.
    pub readers: usize,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            batch_max: 1024,
            readers: 4,
        }
    }
}

pub struct SqliteStore {
    path: PathBuf,
    jobs: Mutex<Option<mpsc::Sender<Box<dyn WriteJob>>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    readers: Arc<Mutex<Vec<Connection>>>,
    max_readers: usize,
    /// Dropping the sender stops the checkpointer.
    checkpointer: Mutex<Option<(std::sync::mpsc::Sender<()>, JoinHandle<()>)>>,
}

/// How often the checkpointer copies committed WAL frames into the database file.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// WAL length (in frames, one page each) past which the log is started over.
const RESTART_AFTER_FRAMES: i64 = 1024;

/// Frames a RESTART may be left to copy: the checkpointer makes more PASSIVE passes until the
/// writer appended fewer than this during the last one (at most `CATCH_UP_PASSES`).
const RESTART_LEFT_FRAMES: i64 = 64;
const CATCH_UP_PASSES: usize = 4;

/// Checkpoints run on their own thread and connection: inside the writer's `COMMIT` (SQLite's
/// auto-checkpoint) they stalled every group commit behind them for 2–13 ms. PASSIVE never
/// waits for readers or the writer, but under steady writes it never finishes either: by the
/// time it has copied the log the writer has appended more, so the log is never started over
/// and the WAL file grew by every frame written (1.4 GB after 20 s at 3,000/s, the disk
/// extending the file all the while). So once the log passes `RESTART_AFTER_FRAMES` (4 MiB of
/// 4 KiB pages), this thread raises `restart`, and the writer, between two transactions, runs
/// a RESTART checkpoint itself, and the next transaction writes the log from its beginning
/// again. (A RESTART from this thread would have to win the write lock from a writer that
/// takes it back within microseconds.)
///
/// Every ack waits while the writer runs that RESTART, and it costs about what copying the
/// frames the last PASSIVE pass left costs (a frame is a read and a write): with one pass of
/// about 10 ms at 12,000 webhooks/s that was 300–500 frames, 12–21 ms (7 ms with a 1,024-frame
/// threshold), the largest part of the ack p99. So before raising `restart` this thread
/// catches up with what the writer appended during its pass, in shorter and shorter passes,
/// until the RESTART is left a few dozen frames.
fn checkpoint_loop(
    conn: Connection,
    stop: std::sync::mpsc::Receiver<()>,
    restart: Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::mpsc::RecvTimeoutError;
    // Returns the frames in the log (the pragma's row is: busy, frames in the log, copied).
    let passive = || conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(1));
    while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_EVERY) {
        let started = Instant::now();
        let (mut log, mut passes) = match passive() {
            Ok(log) => (log, 1),
            Err(e) => {
                tracing::warn!(error = %e, "WAL checkpoint failed");
                continue;
            }
        };
        if log < RESTART_AFTER_FRAMES {
            continue;
        }
        while passes < CATCH_UP_PASSES {
            match passive() {
                Ok(now) => {
                    let appended = now - log;
                    log = now;
                    passes += 1;
                    if appended < RESTART_LEFT_FRAMES {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        tracing::trace!(
            micros = started.elapsed().as_micros() as u64,
            log,
            passes,
            "WAL caught up"
        );
        restart.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    // A last full pass so a clean stop leaves the WAL empty.
    let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
}

fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    // WAL: readers never block the writer. synchronous=FULL: a commit is on disk before the
    // webhook is answered (NORMAL could lose the last commits on power loss).
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA busy_timeout = 10000;
         PRAGMA foreign_keys = ON;",
    )?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and runs the migrations.
    pub fn open(path: &Path, opts: SqliteOptions) -> Result<SqliteStore> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Database(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let mut conn = open(path)?;
        migrate(&mut conn)?;
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        // When the log starts over, a file left longer by a burst is cut back to 64 MiB.
        conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
        let checkpoint_conn = open(path)?;
        let (stop_tx, stop_rx) = std::sync::mpsc::channel();
        let restart = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let restart_wanted = restart.clone();
        let checkpointer = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || checkpoint_loop(checkpoint_conn, stop_rx, restart_wanted))
            .map_err(|e| StoreError::Database(format!("cannot start checkpointer: {e}")))?;
        let (tx, rx) = mpsc::channel::<Box<dyn WriteJob>>(opts.batch_max.max(1) * 4);
        let batch_max = opts.batch_max.max(1);
        let writer = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer_loop(conn, rx, batch_max, restart))
            .map_err(|e| StoreError::Database(format!("cannot start writer: {e}")))?;
        Ok(SqliteStore {
            path: path.to_path_buf(),
            jobs: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            readers: Arc::new(Mutex::new(Vec::new())),
            max_readers: opts.readers.max(1),
            checkpointer: Mutex::new(Some((stop_tx, checkpointer))),
        })
    }

    fn sender(&self) -> Result<mpsc::Sender<Box<dyn WriteJob>>> {
        self.jobs
            .lock()
            .map_err(|_| StoreError::Closed)?
            .clone()
            .ok_or(StoreError::Closed)
    }

    /// Runs a write on the writer thread, in the next group-committed transaction.
    async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        self.sender()?
            .send(Box::new(FnJob {
                f: Some(f),
                out: None,
                reply,
            }))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs a read on a pooled connection off the async runtime.
    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let pool = self.readers.clone();
        let path = self.path.clone();
        let max = self.max_readers;
        tokio::task::spawn_blocking(move || {
            let conn = pool.lock().ok().and_then(|mut p| p.pop());
            let conn = match conn {
                Some(c) => c,
                None => open(&path)?,
            };
            let out = f(&conn);
            if let Ok(mut p) = pool.lock()
                && p.len() < max
            {
                p.push(conn);
            }
            Ok(out?)
        })
        .await
        .map_err(|e| StoreError::Database(format!("reader task failed: {e}")))?
    }
}

fn writer_loop(
    mut conn: Connection,
    mut rx: mpsc::Receiver<Box<dyn WriteJob>>,
    batch_max: usize,
    restart: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut batch: Vec<Box<dyn WriteJob>> = Vec::with_capacity(batch_max);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        // Whatever queued up while the last commit was syncing shares this transaction.
        while batch.len() < batch_max {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let started = Instant::now();
        let results = run_batch(&mut conn, &mut batch);
        crate::analytics::Analytics::commit(batch.len(), started.elapsed());
        tracing::trace!(
            batch = batch.len(),
            micros = started.elapsed().as_micros() as u64,
            "group commit"
        );
        for (job, result) in batch.drain(..).zip(results) {
            job.finish(result);
        }
        // After answering the batch: the log is long, start it over (see `checkpoint_loop`).
        if restart.swap(false, std::sync::atomic::Ordering::Relaxed) {
            let started = Instant::now();
            match conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            }) {
                Err(e) => tracing::warn!(error = %e, "WAL checkpoint (restart) failed"),
                Ok((busy, log, copied)) => tracing::trace!(
                    micros = started.elapsed().as_micros() as u64,
                    busy,
                    log,
                    copied,
                    "WAL restart"
                ),
            }
        }
    }
}

/// One transaction for the whole batch. Event commits (repeatable) run first, without
/// savepoints: a savepoint per job costs sub-journal writes for every page it touches, and event
/// commits practically never fail on their own (duplicates are answered, not refused). Should
/// one fail, the transaction is rolled back and begun again with each event commit under its
/// own savepoint, so one failing job never sinks the others. Other jobs always get their own
/// savepoint (they cannot run twice).
fn run_batch(conn: &mut Connection, batch: &mut [Box<dyn WriteJob>]) -> Vec<Result<()>> {
    let fail_all = |batch: &[Box<dyn WriteJob>], e: rusqlite::Error| {
        let msg = e.to_string();
        tracing::error!(error = %msg, "group commit failed");
        batch
            .iter()
            .map(|_| Err(StoreError::Database(msg.clone())))
            .collect::<Vec<_>>()
    };
    let mut results: Vec<Option<Result<()>>> = (0..batch.len()).map(|_| None).collect();
    if let Err(e) = conn.execute_batch("BEGIN") {
        return fail_all(batch, e);
    }
    let grouped = batch
        .iter_mut()
        .filter(|j| j.repeatable())
        .try_for_each(|job| job.apply(conn));
    if let Err(e) = grouped {
        tracing::warn!(error = %e, "an event commit failed; retrying the batch's events one by one");
        if let Err(e) = conn.execute_batch("ROLLBACK; BEGIN") {
            return fail_all(batch, e);
        }
        for (i, job) in batch.iter_mut().enumerate() {
            if job.repeatable() {
                results[i] = Some(apply_alone(conn, job));
            }
        }
    }
    for (i, job) in batch.iter_mut().enumerate() {
        if !job.repeatable() {
            results[i] = Some(apply_alone(conn, job));
        }
    }
    if let Err(e) = conn.execute_batch("COMMIT") {
        let _ = conn.execute_batch("ROLLBACK");
        return fail_all(batch, e);
    }
    results.into_iter().map(|r| r.unwrap_or(Ok(()))).collect()
}

/// Runs one job under its own savepoint inside the open transaction.
fn apply_alone(conn: &Connection, job: &mut Box<dyn WriteJob>) -> Result<()> {
    let r = conn
        .execute_batch("SAVEPOINT job")
        .and_then(|()| job.apply(conn));
    match r {
        Ok(()) => {
            let _ = conn.execute_batch("RELEASE job");
            Ok(())
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK TO job; RELEASE job");
            Err(StoreError::from(e))
        }
    }
}

fn uuid_col(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Uuid> {
    let b: Vec<u8> = r.get(i)?;
    Uuid::from_slice(&b).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Blob, Box::new(e))
    })
}

fn event_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<EventRecord> {
    Ok(EventRecord {
        id: uuid_col(r, 0)?,
        source: r.get(1)?,
        event_type: r.get(2)?,
        timestamp: r.get(3)?,
        filtered: r.get(4)?,
        body: r.get::<_, Unpacked>(5)?.0,
    })
}

#[async_trait]
impl EventStore for SqliteStore {
    async fn commit_event(&self, event: NewEvent) -> Result<CommitOutcome> {
        let (reply, rx) = oneshot::channel();
        // Compressed here, on the request's task, so the writer thread only copies.
        let bodies = PackedBodies::new(&event);
        self.sender()?
            .send(Box::new(CommitEventJob {
                event,
                bodies,
                outcome: None,
                reply,
            }))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn get_event(&self, id: Uuid) -> Result<Option<EventRecord>> {
        self.read(move |c| {
            c.prepare_cached(
                "SELECT id, source, type, timestamp, filtered, body FROM events WHERE id = ?1",
            )?
            .query_row([id.as_bytes().as_slice()], event_row)
            .optional()
        })
        .await
    }

    async fn list_events(&self, q: EventQuery) -> Result<Vec<EventRecord>> {
        self.read(move |c| {
            // Ids are time-ordered, so time bounds and the cursor are all bounds on `id`.
            let mut sql = String::from(
                "SELECT id, source, type, timestamp, filtered, body FROM events WHERE 1=1",
            );
            let mut args: Vec<Box<dyn rusqlite::ToSql>> = Vec::new();
            if let Some(s) = q.source {
                sql.push_str(" AND source = ?");
                args.push(Box::new(s));
            }
            if let Some(t) = q.event_type {
                sql.push_str(" AND type = ?");
                args.push(Box::new(t));
            }
            if let Some(since) = q.since {
                sql.push_str(" AND id >= ?");
                args.push(Box::new(id_floor(since).to_vec()));
            }
            if let Some(until) = q.until {
                sql.push_str(" AND id < ?");
                args.push(Box::new(id_floor(until).to_vec()));
            }
            if let Some(before) = q.before {
                sql.push_str(" AND id < ?");
                args.push(Box::new(before.as_bytes().to_vec()));
            }
            match q.status {
                Some(EventStatus::Filtered) => sql.push_str(" AND filtered = 1"),
                Some(EventStatus::Processed) => sql.push_str(" AND filtered = 0"),
                None => {}
            }
            sql.push_str(" ORDER BY id DESC LIMIT ?");
            args.push(Box::new(q.limit as i64));
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query_map(
                rusqlite::params_from_iter(args.iter().map(|a| a.as_ref())),
                event_row,
            )?;
            rows.collect()
        })
        .await
    }

    async fn event_deliveries(&self, id: Uuid) -> Result<Vec<DeliveryRecord>> {
        self.read(move |c| {
            let mut out: Vec<DeliveryRecord> = c
                .prepare_cached(&format!(
                    "SELECT {DELIVERY_COLUMNS} WHERE event_id = ?1 ORDER BY priority DESC, agent_id"
                ))?
                .query_map([id.as_bytes().as_slice()], delivery_row)?
                .collect::<rusqlite::Result<_>>()?;
            fill_attempts(c, &mut out)?;
            Ok(out)
        })
        .await
    }

    async fn stream_backlog(
        &self,
        agent: Option<String>,
        after: Uuid,
        limit: usize,
    ) -> Result<Vec<BacklogItem>> {
        self.read(move |c| {
            let after = after.as_bytes().to_vec();
            let row = |r: &rusqlite::Row<'_>| {
                Ok(BacklogItem {
                    event_id: uuid_col(r, 0)?,
                    body: r.get::<_, Unpacked>(1)?.0,
                })
            };
            match agent {
                None => c
                    .prepare_cached(
                        "SELECT id, body FROM events WHERE id > ?1 AND filtered = 0
                         ORDER BY id LIMIT ?2",
                    )?
                    .query_map(params![after, limit as i64], row)?
                    .collect(),
                Some(agent) => c
                    .prepare_cached(
                        "SELECT x.event_id, COALESCE(x.body, e.body) FROM (
                             SELECT event_id, MIN(body) AS body FROM deliveries
                              WHERE agent_id = ?1 AND event_id > ?2 GROUP BY event_id
                             UNION ALL
                             SELECT event_id, body FROM streamed
                              WHERE agent_id = ?1 AND event_id > ?2
                         ) x JOIN events e ON e.id = x.event_id
                         ORDER BY x.event_id LIMIT ?3",
                    )?
                    .query_map(params![agent, after, limit as i64], row)?
                    .collect(),
            }
        })
        .await
    }
}

/// `pending_row`'s columns, of `deliveries d` joined to `events e`; the body column's
/// expression can be given.
macro_rules! pending_columns {
    () => {
        pending_columns!("COALESCE(d.body, e.body)")
    };
    ($body:literal) => {
        concat!(
            "d.id, d.event_id, d.agent_id, d.route_id, d.priority, d.attempts, d.retry_base,
             d.next_attempt_at, d.retry_policy, e.source, e.type, ",
            $body,
            ", d.created_at"
        )
    };
}
const PENDING_COLUMNS: &str = concat!(
    pending_columns!(),
    " FROM deliveries d JOIN events e ON e.id = d.event_id"
);

fn pending_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<PendingDelivery> {
    let mut p = pending_row_without_body(r)?;
    p.body = r.get::<_, Option<Unpacked>>(11)?.map(|b| b.0);
    Ok(p)
}

fn pending_row_without_body(r: &rusqlite::Row<'_>) -> rusqlite::Result<PendingDelivery> {
    Ok(PendingDelivery {
        id: uuid_col(r, 0)?,
        event_id: uuid_col(r, 1)?,
        agent_id: r.get(2)?,
        route_id: r.get(3)?,
        priority: r.get(4)?,
        attempts: r.get(5)?,
        retry_base: r.get(6)?,
        next_attempt_at: r.get::<_, Option<i64>>(7)?.unwrap_or(0),
        retry_policy: r.get(8)?,
        source: r.get(9)?,
        event_type: r.get(10)?,
        body: None,
        created_at: r.get(12)?,
    })
}

fn delivery_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeliveryRecord> {
    let status: String = r.get(5)?;
    Ok(DeliveryRecord {
        id: uuid_col(r, 0)?,
        event_id: uuid_col(r, 1)?,
        agent_id: r.get(2)?,
        route_id: r.get(3)?,
        priority: r.get(4)?,
        status: DeliveryStatus::parse(&status).unwrap_or(DeliveryStatus::Pending),
        attempts: r.get(6)?,
        next_attempt_at: r.get(7)?,
        last_error: r.get(8)?,
        attempt_log: AttemptRecord::first_success_log(r.get(9)?, r.get(10)?, r.get(11)?),
    })
}

const DELIVERY_COLUMNS: &str = "id, event_id, agent_id, route_id, priority, status, attempts,
     next_attempt_at, last_error, first_started_at, first_duration_ms, first_status_code
     FROM deliveries";

fn fill_attempts(c: &Connection, list: &mut [DeliveryRecord]) -> rusqlite::Result<()> {
    let mut attempts = c.prepare_cached(
        "SELECT attempt, started_at, duration_ms, status_code, error
         FROM attempts WHERE delivery_id = ?1 ORDER BY attempt",
    )?;
    for d in list {
        let logged: Vec<AttemptRecord> = attempts
            .query_map([d.id.as_bytes().as_slice()], |r| {
                Ok(AttemptRecord {
                    attempt: r.get(0)?,
                    started_at: r.get(1)?,
                    duration_ms: r.get::<_, i64>(2)?.max(0) as u64,
                    status_code: r.get(3)?,
                    error: r.get(4)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        d.attempt_log.extend(logged);
    }
    Ok(())
}

/// Moves dead deliveries matching `where_sql` back to pending and returns them.
fn requeue(
    c: &Connection,
    where_sql: &str,
    args: &[&dyn rusqlite::ToSql],
) -> rusqlite::Result<Vec<PendingDelivery>> {
    let now = crate::clock::now_ms();
    let ids: Vec<Vec<u8>> = c
        .prepare(&format!(
            // A delivery whose route transformation failed has nothing to send: it is fixed by
            // correcting the route and replaying the event, not by a retry.
            "SELECT d.id FROM deliveries d JOIN events e ON e.id = d.event_id
             WHERE d.status = 'dead' AND NOT (d.attempts = 0 AND d.body IS NULL
                   AND d.last_error LIKE 'transformation failed:%')
               AND {where_sql}"
        ))?
        .query_map(args, |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut update = c.prepare_cached(
        "UPDATE deliveries SET status = 'pending', retry_base = attempts, next_attempt_at = ?2,
                updated_at = ?2
         WHERE id = ?1",
    )?;
    let mut select = c.prepare_cached(&format!("SELECT {PENDING_COLUMNS} WHERE d.id = ?1"))?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        update.execute(params![id, now])?;
        out.push(select.query_row([&id], pending_row)?);
    }
    Ok(out)
}

fn insert_deliveries(
    c: &Connection,
    event_id: Uuid,
    created_at: i64,
    deliveries: &[NewDelivery],
    bodies: &[Option<Packed>],
) -> rusqlite::Result<()> {
    let mut stmt = c.prepare_cached(
        "INSERT INTO deliveries (id, event_id, agent_id, route_id, priority, status, attempts,
                                 next_attempt_at, last_error, body, retry_policy, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?7, ?8, ?9, ?10, ?11, ?11)",
    )?;
    for (d, body) in deliveries.iter().zip(bodies) {
        stmt.execute(params![
            d.id.as_bytes().as_slice(),
            event_id.as_bytes().as_slice(),
            d.agent_id,
            d.route_id,
            d.priority,
            d.status.as_str(),
            d.next_attempt_at,
            d.last_error,
            body,
            d.retry_policy,
            created_at,
        ])?;
    }
    Ok(())
}

#[async_trait]
impl DeliveryStore for SqliteStore {
    async fn record_attempts(&self, updates: Vec<AttemptUpdate>) -> Result<()> {
        self.write(move |c| {
            let mut attempt = c.prepare_cached(
                "INSERT OR REPLACE INTO attempts
                    (delivery_id, attempt, started_at, duration_ms, status_code, error, response_body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            let mut delivery = c.prepare_cached(
                "UPDATE deliveries SET status = ?2, attempts = MAX(attempts, ?3), next_attempt_at = ?4,
                        last_error = ?5, updated_at = ?6
                 WHERE id = ?1",
            )?;
            let mut first_success = c.prepare_cached(
                "UPDATE deliveries SET status = 'delivered', attempts = MAX(attempts, 1),
                        next_attempt_at = NULL, last_error = NULL, updated_at = ?2,
                        first_started_at = ?3, first_duration_ms = ?4, first_status_code = ?5
                 WHERE id = ?1",
            )?;
            let now = crate::clock::now_ms();
            for u in &updates {
                let id = u.delivery_id.as_bytes().as_slice();
                if u.is_first_success() {
                    first_success.execute(params![
                        id,
                        now,
                        u.started_at,
                        u.duration_ms as i64,
                        u.status_code
                    ])?;
                    continue;
                }
                attempt.execute(params![
                    id,
                    u.attempt,
                    u.started_at,
                    u.duration_ms as i64,
                    u.status_code,
                    u.error,
                    u.response_prefix
                ])?;
                delivery.execute(params![
                    id,
                    u.status.as_str(),
                    u.attempt,
                    u.next_attempt_at,
                    u.error,
                    now
                ])?;
            }
            Ok(())
        })
        .await
    }

    async fn unfinished_deliveries(&self, body_budget: usize) -> Result<Vec<PendingDelivery>> {
        self.read(move |c| {
            // Without statistics the planner would rather walk every delivery in id order than
            // sort the few unfinished ones; the partial index holds exactly those.
            let mut stmt = c.prepare(concat!(
                "SELECT ",
                pending_columns!(),
                " FROM deliveries d INDEXED BY deliveries_unfinished
                     JOIN events e ON e.id = d.event_id
                 WHERE d.status NOT IN ('delivered', 'dead') ORDER BY d.id"
            ))?;
            // The body only while the bodies so far, in id order, add up to at most the budget
            // (their length as text: what they will take in memory, packed or not).
            let mut used = 0usize;
            let mut rows = stmt.query([])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                used = used.saturating_add(unpacked_len(r.get_ref(11)?));
                let mut p = pending_row_without_body(r)?;
                if used <= body_budget {
                    p.body = r.get::<_, Option<Unpacked>>(11)?.map(|b| b.0);
                }
                out.push(p);
            }
            Ok(out)
        })
        .await
    }

    async fn delivery_bodies(&self, ids: Vec<Uuid>) -> Result<Vec<(Uuid, String)>> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT COALESCE(d.body, e.body) FROM deliveries d
                 JOIN events e ON e.id = d.event_id WHERE d.id = ?1",
            )?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(body) = stmt
                    .query_row([id.as_bytes().as_slice()], |r| r.get::<_, Unpacked>(0))
                    .optional()?
                {
                    out.push((id, body.0));
                }
            }
            Ok(out)
        })
        .await
    }

    async fn dead_letters(
        &self,
        agent_id: Option<String>,
        limit: usize,
        before: Option<Uuid>,
    ) -> Result<Vec<DeliveryRecord>> {
        self.read(move |c| {
            let before = before
                .map(|b| b.as_bytes().to_vec())
                .unwrap_or_else(|| vec![0xff; 17]);
            let mut list: Vec<DeliveryRecord> = c
                .prepare_cached(&format!(
                    "SELECT {DELIVERY_COLUMNS}
                     WHERE status = 'dead' AND id < ?1 AND (?2 IS NULL OR agent_id = ?2)
                     ORDER BY id DESC LIMIT ?3"
                ))?
                .query_map(params![before, agent_id, limit as i64], delivery_row)?
                .collect::<rusqlite::Result<_>>()?;
            fill_attempts(c, &mut list)?;
            Ok(list)
        })
        .await
    }

    async fn retry_dead(&self, id: Uuid) -> Result<Option<PendingDelivery>> {
        self.write(move |c| {
            let id = id.as_bytes().to_vec();
            Ok(requeue(c, "d.id = ?1", &[&id])?.pop())
        })
        .await
    }

    async fn retry_dead_matching(&self, f: DeadFilter) -> Result<Vec<PendingDelivery>> {
        self.write(move |c| {
            requeue(
                c,
                "(?1 IS NULL OR d.agent_id = ?1) AND (?2 IS NULL OR e.source = ?2)
                 AND (?3 IS NULL OR d.updated_at >= ?3)",
                &[&f.agent_id, &f.source, &f.since],
            )
        })
        .await
    }

    async fn delete_dead(&self, id: Uuid) -> Result<bool> {
        self.write(move |c| {
            let id = id.as_bytes().as_slice();
            let n = c
                .prepare_cached("DELETE FROM deliveries WHERE id = ?1 AND status = 'dead'")?
                .execute([id])?;
            if n > 0 {
                c.prepare_cached("DELETE FROM attempts WHERE delivery_id = ?1")?
                    .execute([id])?;
            }
            Ok(n > 0)
        })
        .await
    }

    async fn add_deliveries(&self, event_id: Uuid, deliveries: Vec<NewDelivery>) -> Result<()> {
        let bodies = pack_deliveries(&deliveries);
        self.write(move |c| {
            insert_deliveries(c, event_id, crate::clock::now_ms(), &deliveries, &bodies)
        })
        .await
    }

    async fn finished_counts(&self) -> Result<(u64, u64)> {
        self.read(|c| {
            c.query_row(
                "SELECT COALESCE(SUM(status = 'dead'), 0), COALESCE(SUM(status = 'delivered'), 0)
                 FROM deliveries",
                [],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
            )
        })
        .await
    }
}

#[async_trait]
impl AnalyticsStore for SqliteStore {
    async fn add_rollups(&self, deltas: Vec<RollupDelta>) -> Result<()> {
        self.write(move |c| {
            let mut stmt = c.prepare_cached(
                "INSERT INTO rollups (minute, dim, metric, value) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (minute, dim, metric) DO UPDATE SET value = value + excluded.value",
            )?;
            for d in &deltas {
                stmt.execute(params![d.minute, d.dim, d.metric, d.value])?;
            }
            Ok(())
        })
        .await
    }

    async fn rollup_totals(&self, since: i64) -> Result<Vec<(String, String, i64)>> {
        self.read(move |c| {
            c.prepare_cached(
                "SELECT dim, metric, SUM(value) FROM rollups WHERE minute >= ?1 GROUP BY dim, metric",
            )?
            .query_map([since], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect()
        })
        .await
    }

    async fn rollup_timeline(
        &self,
        since: i64,
        bucket_ms: i64,
        metrics: Vec<String>,
    ) -> Result<Vec<(i64, String, i64)>> {
        // One pass over the window for every metric asked (a query per metric would scan the
        // window's rows once each: the dashboard asks for about thirty).
        let wanted = serde_json::to_string(&metrics)
            .map_err(|e| StoreError::Database(format!("metric names: {e}")))?;
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT ?2 + ((minute - ?2) / ?3) * ?3 AS b, metric, SUM(value) FROM rollups
                 WHERE minute >= ?2 AND dim = ''
                   AND metric IN (SELECT value FROM json_each(?1))
                 GROUP BY b, metric ORDER BY b",
            )?;
            stmt.query_map(params![wanted, since, bucket_ms.max(60_000)], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        })
        .await
    }

    async fn unsettled_events(&self, since: i64) -> Result<(u64, u64)> {
        self.read(move |c| {
            let floor = id_floor(since).to_vec();
            c.query_row(
                "SELECT COUNT(DISTINCT event_id),
                        COUNT(DISTINCT CASE WHEN status = 'dead' THEN event_id END)
                 FROM deliveries
                 WHERE event_id >= ?1 AND status IN ('pending', 'in_flight', 'scheduled', 'dead')",
                [floor],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
            )
        })
        .await
    }
}

#[async_trait]
impl AuditStore for SqliteStore {
    async fn add_audit(&self, a: AuditRecord) -> Result<()> {
        self.write(move |c| {
            c.prepare_cached(
                "INSERT INTO audit (at, client_ip, method, path, status, action, target_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                a.at,
                a.client_ip,
                a.method,
                a.path,
                a.status,
                a.action,
                a.target_id
            ])?;
            Ok(())
        })
        .await
    }

    async fn list_audit(&self, limit: usize, before: Option<i64>) -> Result<Vec<AuditRecord>> {
        self.read(move |c| {
            c.prepare_cached(
                "SELECT id, at, client_ip, method, path, status, action, target_id FROM audit
                 WHERE id < ?1 ORDER BY id DESC LIMIT ?2",
            )?
            .query_map(params![before.unwrap_or(i64::MAX), limit as i64], |r| {
                Ok(AuditRecord {
                    id: r.get(0)?,
                    at: r.get(1)?,
                    client_ip: r.get(2)?,
                    method: r.get(3)?,
                    path: r.get(4)?,
                    status: r.get(5)?,
                    action: r.get(6)?,
                    target_id: r.get(7)?,
                })
            })?
            .collect()
        })
        .await
    }

    async fn purge_before(&self, cutoff: i64, batch: usize) -> Result<usize> {
        self.write(move |c| {
            let floor = id_floor(cutoff).to_vec();
            let ids: Vec<Vec<u8>> = c
                // Events still being delivered stay until their deliveries finish.
                .prepare_cached(
                    "SELECT id FROM events WHERE id < ?1 AND NOT EXISTS (
                         SELECT 1 FROM deliveries d WHERE d.event_id = events.id
                            AND d.status IN ('pending', 'in_flight', 'scheduled'))
                     ORDER BY id LIMIT ?2",
                )?
                .query_map(params![floor, batch as i64], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            let mut del_attempts = c.prepare_cached(
                "DELETE FROM attempts WHERE delivery_id IN (SELECT id FROM deliveries WHERE event_id = ?1)",
            )?;
            let mut del_deliveries = c.prepare_cached("DELETE FROM deliveries WHERE event_id = ?1")?;
            let mut del_streamed = c.prepare_cached("DELETE FROM streamed WHERE event_id = ?1")?;
            let mut del_event = c.prepare_cached("DELETE FROM events WHERE id = ?1")?;
            for id in &ids {
                del_attempts.execute([id])?;
                del_deliveries.execute([id])?;
                del_streamed.execute([id])?;
                del_event.execute([id])?;
            }
            if ids.len() < batch {
                c.prepare_cached("DELETE FROM rollups WHERE minute < ?1")?.execute([cutoff])?;
                c.prepare_cached("DELETE FROM audit WHERE at < ?1")?.execute([cutoff])?;
            }
            Ok(ids.len())
        })
        .await
    }
}

#[async_trait]
impl RuleStore for SqliteStore {
    async fn list_rules(&self, kind: RuleKind) -> Result<Vec<StoredRule>> {
        self.read(move |c| {
            c.prepare_cached("SELECT id, body FROM rules WHERE kind = ?1 ORDER BY id")?
                .query_map([kind.as_str()], |r| {
                    Ok(StoredRule {
                        id: r.get(0)?,
                        body: r.get(1)?,
                    })
                })?
                .collect()
        })
        .await
    }

    async fn put_rule(
        &self,
        kind: RuleKind,
        rule: StoredRule,
        mode: PutMode,
    ) -> Result<PutOutcome> {
        self.write(move |c| {
            let exists = c
                .prepare_cached("SELECT 1 FROM rules WHERE kind = ?1 AND id = ?2")?
                .exists(params![kind.as_str(), rule.id])?;
            if exists && mode == PutMode::Create {
                return Ok(PutOutcome::Exists);
            }
            c.prepare_cached(
                "INSERT INTO rules (kind, id, body, updated_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (kind, id) DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at",
            )?
            .execute(params![kind.as_str(), rule.id, rule.body, crate::clock::now_ms()])?;
            Ok(if exists {
                PutOutcome::Replaced
            } else {
                PutOutcome::Created
            })
        })
        .await
    }

    async fn delete_rule(&self, kind: RuleKind, id: String) -> Result<bool> {
        self.write(move |c| {
            Ok(
                c.prepare_cached("DELETE FROM rules WHERE kind = ?1 AND id = ?2")?
                    .execute(params![kind.as_str(), id])?
                    > 0,
            )
        })
        .await
    }
}

/// A rewrite that failed, carried out of rusqlite's error type.
fn rewrite_failed(message: String) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(message.into())
}

#[async_trait]
impl super::ClusterStore for SqliteStore {}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn ping(&self) -> Result<()> {
        if self.sender().is_err() {
            return Err(StoreError::Closed);
        }
        self.read(|c| {
            c.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
                r.get::<_, i64>(0)
            })
        })
        .await
        .map(|_| ())
    }

    async fn rewrite_bodies(&self, rewrite: BodyRewrite) -> Result<u64> {
        /// Rows per write transaction: keeps each one short.
        const BATCH: i64 = 500;
        let mut changed = 0u64;
        // (select a page after a rowid, update by rowid); `streamed` is WITHOUT ROWID, so it
        // pages by its key instead.
        for table in ["events", "deliveries"] {
            let mut after = i64::MIN;
            loop {
                let f = rewrite.clone();
                let (last, n) = self
                    .write(move |c| {
                        let rows: Vec<(i64, Option<Unpacked>)> = c
                            .prepare(&format!(
                                "SELECT rowid, body FROM {table} WHERE rowid > ?1 ORDER BY rowid LIMIT ?2"
                            ))?
                            .query_map(params![after, BATCH], |r| Ok((r.get(0)?, r.get(1)?)))?
                            .collect::<rusqlite::Result<_>>()?;
                        let mut update =
                            c.prepare(&format!("UPDATE {table} SET body = ?1 WHERE rowid = ?2"))?;
                        let mut n = 0u64;
                        for (rowid, body) in &rows {
                            let Some(Unpacked(body)) = body else { continue };
                            if let Some(new) = f(body).map_err(rewrite_failed)? {
                                update.execute(params![Packed::new(&new.into()), rowid])?;
                                n += 1;
                            }
                        }
                        Ok((rows.last().map(|r| r.0), n))
                    })
                    .await?;
                changed += n;
                match last {
                    Some(l) => after = l,
                    None => break,
                }
            }
        }
        let mut after: (String, Vec<u8>) = (String::new(), Vec::new());
        loop {
            let f = rewrite.clone();
            let (a, e) = after.clone();
            let (last, n) = self
                .write(move |c| {
                    let rows: Vec<(String, Vec<u8>, Option<Unpacked>)> = c
                        .prepare(
                            "SELECT agent_id, event_id, body FROM streamed
                              WHERE (agent_id, event_id) > (?1, ?2)
                              ORDER BY agent_id, event_id LIMIT ?3",
                        )?
                        .query_map(params![a, e, BATCH], |r| {
                            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                        })?
                        .collect::<rusqlite::Result<_>>()?;
                    let mut update = c.prepare(
                        "UPDATE streamed SET body = ?1 WHERE agent_id = ?2 AND event_id = ?3",
                    )?;
                    let mut n = 0u64;
                    for (agent, event, body) in &rows {
                        let Some(Unpacked(body)) = body else { continue };
                        if let Some(new) = f(body).map_err(rewrite_failed)? {
                            update.execute(params![Packed::new(&new.into()), agent, event])?;
                            n += 1;
                        }
                    }
                    Ok((rows.last().map(|r| (r.0.clone(), r.1.clone())), n))
                })
                .await?;
            changed += n;
            match last {
                Some(l) => after = l,
                None => break,
            }
        }
        Ok(changed)
    }

    async fn close(&self) {
        // Dropping the last sender lets the writer drain what is queued, then exit.
        let sender = self.jobs.lock().ok().and_then(|mut j| j.take());
        drop(sender);
        let handle = self.writer.lock().ok().and_then(|mut w| w.take());
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
        if let Ok(mut p) = self.readers.lock() {
            p.clear();
        }
        let checkpointer = self.checkpointer.lock().ok().and_then(|mut c| c.take());
        if let Some((stop, h)) = checkpointer {
            drop(stop);
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    // The behaviour every backend shares is tested once for all in `store::conformance`.
    use super::*;
    use crate::store::conformance::{delivered, delivery as new_delivery, ev};
    use crate::store::{DeliveryStatus, NewDelivery};

    /// A pending delivery to agent `a` with this id.
    fn delivery(id: Uuid) -> NewDelivery {
        NewDelivery {
            id,
            ..new_delivery("a", DeliveryStatus::Pending)
        }
    }

    /// A store in a fresh temp dir (kept alive by the returned guard).
    fn temp_store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("t.db"), SqliteOptions::default()).unwrap();
        (dir, store)
    }

    /// SQLite evaluates an `IN` list of three or more constants with a temporary b-tree, built
    /// afresh each time: a partial index with such a predicate made every write of a
    /// delivery's status open (and fault in) one or two of them.
    #[test]
    fn writing_a_delivery_status_builds_no_temporary_table() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = open(&dir.path().join("t.db")).unwrap();
        migrate(&mut conn).unwrap();
        for sql in [
            "UPDATE deliveries SET status = ?2 WHERE id = ?1",
            "INSERT INTO deliveries (id, event_id, agent_id, route_id, priority, status,
                 created_at, updated_at) VALUES (?1, ?1, 'a', 'r', 0, ?2, 0, 0)",
        ] {
            let ops: Vec<String> = conn
                .prepare(&format!("EXPLAIN {sql}"))
                .unwrap()
                .query_map(params![b"id".as_slice(), "pending"], |r| r.get(1))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap();
            assert!(
                !ops.iter().any(|op| op == "OpenEphemeral"),
                "{sql}: {ops:?}"
            );
        }
    }

    /// Under steady writes a PASSIVE checkpoint never catches up, so without the RESTART the
    /// WAL grew by every frame written (here about 100 MB for 12,000 events of 4 KB).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_stays_bounded_under_steady_writes() {
        use futures_util::StreamExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let store = Arc::new(SqliteStore::open(&path, SqliteOptions::default()).unwrap());
        let wal = dir.path().join("t.db-wal");
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sampler = {
            let (wal, done) = (wal.clone(), done.clone());
            tokio::spawn(async move {
                let mut largest = 0;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    largest = largest.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                largest
            })
        };
        // Incompressible, so every body is written at its full size.
        let pad = crate::store::packed::incompressible(4000);
        futures_util::stream::iter(0..12_000)
            .map(|_| {
                let store = store.clone();
                let mut e = ev("github", None);
                e.body = format!("{{\"id\":\"{}\",\"pad\":\"{pad}\"}}", e.id).into();
                async move { store.commit_event(e).await.unwrap() }
            })
            .buffer_unordered(64)
            .for_each(|_| async {})
            .await;
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let largest = sampler.await.unwrap();
        assert!(
            largest < 40 * 1024 * 1024,
            "the WAL reached {} MB while 48 MB of bodies were written",
            largest / 1_000_000
        );
    }

    #[tokio::test]
    async fn unfinished_deliveries_are_read_through_their_partial_index() {
        let (_dir, store) = temp_store();
        let mut e = ev("github", Some("d1"));
        let (pending, done) = (Uuid::now_v7(), Uuid::now_v7());
        e.deliveries = vec![delivery(pending), delivery(done)];
        store.commit_event(e).await.unwrap();
        store.record_attempts(vec![delivered(done)]).await.unwrap();
        // `INDEXED BY` makes the query fail outright if the index cannot serve it.
        let left: Vec<Uuid> = store
            .unfinished_deliveries(usize::MAX)
            .await
            .unwrap()
            .into_iter()
            .map(|p| p.id)
            .collect();
        assert_eq!(left, [pending]);
    }

    #[test]
    fn a_failing_event_commit_does_not_sink_its_batch() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = open(&dir.path().join("t.db")).unwrap();
        migrate(&mut conn).unwrap();
        let good = ev("github", Some("d1"));
        // Two deliveries with one id: the second INSERT fails.
        let mut bad = ev("github", Some("d2"));
        let same = Uuid::now_v7();
        bad.deliveries = vec![delivery(same), delivery(same)];
        let also_good = ev("linear", None);
        let ids = [good.id, bad.id, also_good.id];
        let mut replies = Vec::new();
        let mut batch: Vec<Box<dyn WriteJob>> = Vec::new();
        for event in [good, bad, also_good] {
            let (reply, rx) = oneshot::channel();
            replies.push(rx);
            batch.push(Box::new(CommitEventJob {
                bodies: PackedBodies::new(&event),
                event,
                outcome: None,
                reply,
            }));
        }
        let results = run_batch(&mut conn, &mut batch);
        assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
        assert!(results[1].is_err());
        let stored = |id: Uuid| -> i64 {
            conn.query_row(
                "SELECT COUNT(*) FROM events WHERE id = ?1",
                [id.as_bytes().as_slice()],
                |r| r.get(0),
            )
            .unwrap()
        };
        assert_eq!(
            (stored(ids[0]), stored(ids[1]), stored(ids[2])),
            (1, 0, 1),
            "the failing event left nothing behind; the others are committed"
        );
        let deliveries: i64 = conn
            .query_row("SELECT COUNT(*) FROM deliveries", [], |r| r.get(0))
            .unwrap();
        assert_eq!(deliveries, 0);
    }

    #[tokio::test]
    async fn a_body_is_stored_as_given_and_checked_when_read() {
        // The writer binds bodies without checking their UTF-8 (they are serialized JSON); a
        // body that was not would come back as an error, never as text.
        let (_dir, store) = temp_store();
        let good = ev("s", Some("good"));
        let text = good.body.clone();
        let mut bad = ev("s", Some("bad"));
        bad.body = bytes::Bytes::from_static(b"{\"x\":\"\xff\xfe\"}");
        let (good_id, bad_id) = (good.id, bad.id);
        for e in [good, bad] {
            assert!(matches!(
                store.commit_event(e).await.unwrap(),
                CommitOutcome::Stored
            ));
        }
        let read = store.get_event(good_id).await.unwrap().unwrap();
        assert_eq!(read.body.as_bytes(), &text[..]);
        assert!(store.get_event(bad_id).await.is_err());
        store.close().await;
    }

    /// An event with a GitHub-like body of about 6 KB.
    fn big_event(delivery: &str) -> NewEvent {
        let mut e = ev("github", Some(delivery));
        e.body = webhook_body(e.id);
        e
    }

    /// A GitHub-like body of about 6 KB: JSON with repeated keys and URLs, as webhooks are.
    fn webhook_body(id: Uuid) -> bytes::Bytes {
        let repo = serde_json::json!({
            "id": 1296269, "name": "widgets", "full_name": "acme/widgets",
            "url": "https://api.github.com/repos/acme/widgets",
            "html_url": "https://github.com/acme/widgets",
            "issues_url": "https://api.github.com/repos/acme/widgets/issues{/number}",
            "pulls_url": "https://api.github.com/repos/acme/widgets/pulls{/number}",
        });
        let commits: Vec<_> = (0..24)
            .map(|i| serde_json::json!({"sha": format!("{i:040x}"), "repository": repo}))
            .collect();
        serde_json::to_vec(&serde_json::json!({"id": id, "commits": commits}))
            .unwrap()
            .into()
    }

    #[tokio::test]
    async fn bodies_are_kept_compressed_and_read_back_whole() {
        let (_dir, store) = temp_store();
        let mut e = big_event("big");
        let transformed = webhook_body(Uuid::now_v7());
        let (plain, changed) = (Uuid::now_v7(), Uuid::now_v7());
        e.deliveries = vec![
            delivery(plain),
            NewDelivery {
                body: Some(transformed.clone()),
                ..delivery(changed)
            },
        ];
        e.streamed = vec![("s".into(), Some(transformed.clone()))];
        let (id, body) = (e.id, e.body.clone());
        store.commit_event(e).await.unwrap();
        let (kinds, stored) = store
            .read(move |c| {
                let kinds = c
                    .prepare(
                        "SELECT typeof(body) FROM events UNION ALL
                         SELECT typeof(body) FROM deliveries WHERE body IS NOT NULL UNION ALL
                         SELECT typeof(body) FROM streamed",
                    )?
                    .query_map([], |r| r.get::<_, String>(0))?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                let stored: i64 =
                    c.query_row("SELECT length(body) FROM events", [], |r| r.get(0))?;
                Ok((kinds, stored))
            })
            .await
            .unwrap();
        assert_eq!(kinds, ["blob", "blob", "blob"]);
        assert!(
            (stored as usize) < body.len() / 2,
            "{stored} bytes stored for {}",
            body.len()
        );
        let read = store.get_event(id).await.unwrap().unwrap();
        assert_eq!(read.body.as_bytes(), &body[..]);
        let listed = store.list_events(EventQuery {
            limit: 5,
            ..Default::default()
        });
        assert_eq!(listed.await.unwrap()[0].body.as_bytes(), &body[..]);
        let bodies = store.delivery_bodies(vec![plain, changed]).await.unwrap();
        assert_eq!(bodies[0].1.as_bytes(), &body[..]);
        assert_eq!(bodies[1].1.as_bytes(), &transformed[..]);
        let backlog = store.stream_backlog(Some("s".into()), Uuid::nil(), 10);
        assert_eq!(backlog.await.unwrap()[0].body.as_bytes(), &transformed[..]);
        let pending = store.unfinished_deliveries(usize::MAX).await.unwrap();
        let pending: Vec<_> = pending.iter().map(|p| p.body.as_deref().unwrap()).collect();
        assert_eq!(
            pending,
            [&body[..], &transformed[..]].map(|b| std::str::from_utf8(b).unwrap())
        );
        store.close().await;
    }

    #[tokio::test]
    async fn text_bodies_from_before_compression_still_read() {
        let (_dir, store) = temp_store();
        let mut e = big_event("old");
        let d = Uuid::now_v7();
        e.deliveries = vec![delivery(d)];
        let (id, body) = (e.id, e.body.clone());
        store.commit_event(e).await.unwrap();
        // As a store written by an earlier version holds it: the JSON as TEXT.
        let text = String::from_utf8(body.to_vec()).unwrap();
        store
            .write(move |c| c.execute("UPDATE events SET body = ?1", [text]))
            .await
            .unwrap();
        assert_eq!(
            store.get_event(id).await.unwrap().unwrap().body.as_bytes(),
            &body[..]
        );
        let bodies = store.delivery_bodies(vec![d]).await.unwrap();
        assert_eq!(bodies[0].1.as_bytes(), &body[..]);
        store.close().await;
    }

    #[tokio::test]
    async fn the_body_budget_counts_bodies_at_their_full_length() {
        // Packed, the three bodies take a fraction of what they take in memory; the budget is
        // about memory, so it must count them whole.
        let (_dir, store) = temp_store();
        let mut len = 0;
        for i in 0..3 {
            let mut e = big_event(&format!("d{i}"));
            len = e.body.len();
            e.deliveries = vec![delivery(Uuid::now_v7())];
            store.commit_event(e).await.unwrap();
        }
        let with_body =
            |p: Vec<PendingDelivery>| -> Vec<bool> { p.iter().map(|p| p.body.is_some()).collect() };
        let all = store.unfinished_deliveries(3 * len).await.unwrap();
        assert_eq!(with_body(all), [true, true, true]);
        let two = store.unfinished_deliveries(3 * len - 1).await.unwrap();
        assert_eq!(with_body(two), [true, true, false]);
        let none = store.unfinished_deliveries(len - 1).await.unwrap();
        assert_eq!(with_body(none), [false, false, false]);
        store.close().await;
    }

    #[tokio::test]
    async fn first_attempt_success_is_kept_in_the_delivery_row() {
        // The attempt logs are checked on both stores by the conformance suite; here, where
        // they come from.
        let (_dir, store) = temp_store();
        let ((ok, _), retried, failed) =
            crate::store::conformance::first_success_rows(&store).await;
        let (rows, first) = store
            .read(move |c| {
                let rows = c
                    .prepare("SELECT delivery_id, attempt FROM attempts")?
                    .query_map([], |r| Ok((uuid_col(r, 0)?, r.get::<_, i64>(1)?)))?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                let first = c.query_row(
                    "SELECT first_started_at, first_duration_ms, first_status_code
                     FROM deliveries WHERE id = ?1",
                    [ok.as_bytes().as_slice()],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )?;
                Ok((rows, first))
            })
            .await
            .unwrap();
        let mut rows = rows;
        rows.sort();
        let mut want = vec![(retried, 1), (retried, 2), (failed, 1)];
        want.sort();
        assert_eq!(rows, want, "no row for {ok}");
        let first: (Option<i64>, Option<i64>, Option<i64>) = first;
        assert_eq!(first, (Some(1000), Some(7), Some(200)));
        store.close().await;
    }

    #[test]
    fn id_floor_orders_with_v7_ids() {
        let (id, ts) = crate::event::new_event_id();
        assert!(id_floor(ts).as_slice() <= id.as_bytes().as_slice());
        assert!(id_floor(ts + 1).as_slice() > id.as_bytes().as_slice());
    }
}
