//! The writer thread and its group commit: every write is a job handed to one thread, which
//! runs whatever is waiting in one transaction and then answers each job.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::deliveries::insert_deliveries;
use crate::store::packed::Packed;
use crate::store::{CommitOutcome, NewDelivery, NewEvent, Result, StoreError};

/// A unit of work for the writer thread. `apply` runs inside the shared transaction (under its
/// own savepoint, so one failing job does not sink the batch); `finish` runs after the commit.
pub(super) trait WriteJob: Send {
    fn apply(&mut self, conn: &Connection) -> rusqlite::Result<()>;
    /// Whether `apply` may run again after its effects were rolled back (so the batch can try
    /// it without a savepoint of its own first).
    fn repeatable(&self) -> bool {
        false
    }
    fn finish(self: Box<Self>, result: Result<()>);
}

pub(super) struct CommitEventJob {
    pub(super) event: NewEvent,
    /// The event's bodies, packed before the job reaches the writer (see `packed`).
    pub(super) bodies: PackedBodies,
    pub(super) outcome: Option<CommitOutcome>,
    pub(super) reply: oneshot::Sender<Result<CommitOutcome>>,
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
pub(super) struct PackedBodies {
    event: Packed,
    deliveries: Vec<Option<Packed>>,
    streamed: Vec<Option<Packed>>,
}

impl PackedBodies {
    pub(super) fn new(e: &NewEvent) -> PackedBodies {
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

pub(super) fn pack_deliveries(deliveries: &[NewDelivery]) -> Vec<Option<Packed>> {
    deliveries
        .iter()
        .map(|d| d.body.as_ref().map(Packed::new))
        .collect()
}

/// Any other write: a closure run inside the shared transaction.
pub(super) struct FnJob<T, F> {
    pub(super) f: Option<F>,
    pub(super) out: Option<T>,
    pub(super) reply: oneshot::Sender<Result<T>>,
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

/// Why the writer's last group commit failed for the storage's sake (disk full, I/O error…),
/// `None` once one succeeded again; shared with the store, for `/health`.
#[derive(Clone, Default)]
pub(super) struct Fault(Arc<Mutex<Option<String>>>);

impl Fault {
    pub(super) fn get(&self) -> Option<String> {
        self.0.lock().ok().and_then(|f| f.clone())
    }

    fn set(&self, fault: Option<String>) {
        if let Ok(mut f) = self.0.lock() {
            *f = fault;
        }
    }
}

/// The writer connection's own settings (on top of `schema::open`'s).
pub(super) fn prepare(conn: &Connection) -> rusqlite::Result<()> {
    // The checkpointer thread checkpoints (see `checkpoint_loop`), never a commit.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    // When the log starts over, a file left longer by a burst is cut back to 64 MiB.
    conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
    Ok(())
}

/// Opens the writer's connection again and checks that it reads the file.
fn reopen(path: &Path) -> rusqlite::Result<Connection> {
    let conn = super::schema::open(path)?;
    prepare(&conn)?;
    conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
        r.get::<_, i64>(0)
    })?;
    Ok(conn)
}

/// The writer thread. It never stops on a failed commit: a full disk, an I/O error or a
/// read-only file fails that batch (every job in it is answered `StoreError::Unavailable`, so
/// nothing that was not committed is acknowledged), is remembered in `fault` until a commit
/// succeeds again, and the next batch simply tries again, so the store recovers by itself
/// once space is freed. Only the end of the job channel (`close`) ends the thread.
pub(super) fn writer_loop(
    conn: Connection,
    path: &Path,
    mut rx: mpsc::Receiver<Box<dyn WriteJob>>,
    batch_max: usize,
    restart: Arc<std::sync::atomic::AtomicBool>,
    fault: Fault,
) {
    let mut conn = Some(conn);
    fault.set(None);
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
        if conn.is_none() {
            match reopen(path) {
                Ok(c) => {
                    tracing::info!("the database was opened again after an I/O error");
                    conn = Some(c);
                }
                Err(e) => tracing::warn!(error = %e, "cannot open the database again"),
            }
        }
        let started = Instant::now();
        let (results, failed) = match conn.as_mut() {
            Some(c) => commit_batch(c, &mut batch),
            None => {
                let msg = format!("cannot open {}", path.display());
                let results = batch
                    .iter()
                    .map(|_| Err(StoreError::Unavailable(msg.clone())))
                    .collect();
                (results, Some((msg, true)))
            }
        };
        crate::analytics::Analytics::commit(batch.len(), started.elapsed());
        tracing::trace!(
            batch = batch.len(),
            micros = started.elapsed().as_micros() as u64,
            "group commit"
        );
        // The fault is known before anyone hears of the failure (so `/health` agrees).
        match failed {
            None => {
                if fault.get().is_some() {
                    tracing::info!("the store can write again");
                    fault.set(None);
                }
            }
            Some((reason, reopen)) => {
                if fault.get().is_none() {
                    tracing::error!(error = %reason, "the store cannot write");
                }
                fault.set(Some(reason));
                if reopen {
                    // After an I/O error (a failed fsync above all) the connection's page
                    // cache may no longer match what is on disk: Linux may have dropped the
                    // dirty pages it failed to write and report the next fsync as a success.
                    // Retrying on the same connection could then build on pages that were
                    // never stored. So the connection is closed here and a fresh one, which
                    // reads the file (and the WAL) from disk, is opened before the next write.
                    conn = None;
                }
            }
        }
        for (job, result) in batch.drain(..).zip(results) {
            job.finish(result);
        }
        // After answering the batch: the log is long, start it over (see `checkpoint_loop`).
        if let Some(conn) = conn.as_ref()
            && restart.swap(false, std::sync::atomic::Ordering::Relaxed)
        {
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
#[cfg(test)]
pub(super) fn run_batch(conn: &mut Connection, batch: &mut [Box<dyn WriteJob>]) -> Vec<Result<()>> {
    commit_batch(conn, batch).0
}

/// `run_batch`, and the storage fault that failed the whole batch, if one did (its message,
/// and whether the connection must be opened again, see `super::fault`).
///
/// A storage fault (disk full, I/O error…) in any job fails the whole batch, never just the
/// job: SQLite may have rolled the whole transaction back on its own (it does on a full disk
/// or an I/O error), and the jobs after it would then run, and be answered as stored, outside
/// it. For the same reason a batch whose transaction is found gone is failed whole.
fn commit_batch(
    conn: &mut Connection,
    batch: &mut [Box<dyn WriteJob>],
) -> (Vec<Result<()>>, Option<(String, bool)>) {
    let fail_all = |conn: &Connection, batch: &[Box<dyn WriteJob>], e: rusqlite::Error| {
        if !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        let msg = e.to_string();
        let fault = super::fault(&e);
        tracing::warn!(error = %msg, "group commit failed");
        let results = batch
            .iter()
            .map(|_| {
                Err(match fault {
                    Some(_) => StoreError::Unavailable(msg.clone()),
                    None => StoreError::Database(msg.clone()),
                })
            })
            .collect::<Vec<_>>();
        (results, fault.map(|reopen| (msg, reopen)))
    };
    let mut results: Vec<Option<Result<()>>> = (0..batch.len()).map(|_| None).collect();
    if let Err(e) = conn.execute_batch("BEGIN") {
        return fail_all(conn, batch, e);
    }
    let grouped = batch
        .iter_mut()
        .filter(|j| j.repeatable())
        .try_for_each(|job| job.apply(conn));
    if let Err(e) = grouped {
        if super::fault(&e).is_some() || conn.is_autocommit() {
            return fail_all(conn, batch, e);
        }
        tracing::warn!(error = %e, "an event commit failed; retrying the batch's events one by one");
        if let Err(e) = conn.execute_batch("ROLLBACK; BEGIN") {
            return fail_all(conn, batch, e);
        }
        for (i, job) in batch.iter_mut().enumerate() {
            if job.repeatable() {
                match apply_alone(conn, job) {
                    Err(e) if super::fault(&e).is_some() || conn.is_autocommit() => {
                        return fail_all(conn, batch, e);
                    }
                    r => results[i] = Some(r.map_err(StoreError::from)),
                }
            }
        }
    }
    for i in 0..batch.len() {
        if !batch[i].repeatable() {
            match apply_alone(conn, &mut batch[i]) {
                Err(e) if super::fault(&e).is_some() || conn.is_autocommit() => {
                    return fail_all(conn, batch, e);
                }
                r => results[i] = Some(r.map_err(StoreError::from)),
            }
        }
    }
    if let Err(e) = conn.execute_batch("COMMIT") {
        return fail_all(conn, batch, e);
    }
    let results = results.into_iter().map(|r| r.unwrap_or(Ok(()))).collect();
    (results, None)
}

/// Runs one job under its own savepoint inside the open transaction.
fn apply_alone(conn: &Connection, job: &mut Box<dyn WriteJob>) -> rusqlite::Result<()> {
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
            Err(e)
        }
    }
}
