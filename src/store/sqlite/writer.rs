//! The writer thread and its group commit: every write is a job handed to one thread, which
//! runs whatever is waiting in one transaction and then answers each job.

use std::sync::Arc;
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

pub(super) fn writer_loop(
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
pub(super) fn run_batch(conn: &mut Connection, batch: &mut [Box<dyn WriteJob>]) -> Vec<Result<()>> {
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
