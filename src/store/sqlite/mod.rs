//! The embedded store: one SQLite file in WAL mode, one writer thread doing group commit, and a
//! small pool of reader connections.
//!
//! Why a dedicated OS thread for writes: SQLite allows one writer at a time, rusqlite is
//! synchronous, and batching every waiting write into one transaction turns N fsyncs into one.
//! Handlers hand the writer a job through a bounded channel and await its reply; once a job is in
//! the channel it is committed whether or not the handler is still there to hear about it.
//!
//! Laid out as `postgres/` is: `schema.rs` (migrations, opening a connection), `writer.rs` (the
//! group commit; `checkpoint.rs` keeps its log short), one file per store trait (`events.rs`,
//! `deliveries.rs`, `analytics.rs`, `audit.rs`, `rules.rs`), and here the `Store` itself.

mod analytics;
mod audit;
mod checkpoint;
mod deliveries;
mod disk;
mod events;
mod rules;
mod schema;
#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod tmpfs;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use async_trait::async_trait;
use rusqlite::{Connection, params};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use self::checkpoint::checkpoint_loop;
use self::writer::{FnJob, WriteJob, writer_loop};
use super::packed::{Packed, Unpacked};
use super::{BodyRewrite, ClusterStore, Result, Store, StoreError};

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match fault(&e) {
            Some(_) => StoreError::Unavailable(e.to_string()),
            None => StoreError::Database(e.to_string()),
        }
    }
}

/// What keeps the file from being written, when `e` is the storage's fault rather than the
/// data's: disk full, an I/O error, a read-only or unopenable file, a corrupt page, the file
/// locked past the busy timeout. `Some(true)` when the connection's view of the file may be
/// wrong (an I/O or corruption error, see `writer_loop`) and it must be opened again.
pub(super) fn fault(e: &rusqlite::Error) -> Option<bool> {
    use rusqlite::ErrorCode as C;
    match e.sqlite_error_code()? {
        C::SystemIoFailure | C::DatabaseCorrupt | C::NotADatabase => Some(true),
        C::DiskFull
        | C::ReadOnly
        | C::CannotOpen
        | C::PermissionDenied
        | C::DatabaseBusy
        | C::DatabaseLocked
        | C::OutOfMemory
        | C::FileLockingProtocolFailed => Some(false),
        _ => None,
    }
}

/// Tuning of the writer.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// Most jobs in one transaction.
    pub batch_max: usize,
    /// Reader connections kept open.
    pub readers: usize,
    /// Free bytes below which new events are refused (`min_free_disk_mb`); 0: no floor.
    pub min_free_bytes: u64,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            batch_max: 1024,
            readers: 4,
            min_free_bytes: 0,
        }
    }
}

/// Free space below which a store that failed to write is not tried again by the health probe.
const PROBE_MIN_FREE_BYTES: u64 = 1 << 20;

pub struct SqliteStore {
    path: PathBuf,
    jobs: Mutex<Option<mpsc::Sender<Box<dyn WriteJob>>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    readers: Arc<Mutex<Vec<Connection>>>,
    max_readers: usize,
    /// Why the last group commit failed for the storage's sake, `None` after one succeeded.
    fault: writer::Fault,
    /// `min_free_disk_mb`, checked before each new event.
    floor: disk::DiskFloor,
    /// Dropping the sender stops the checkpointer.
    checkpointer: Mutex<Option<(std::sync::mpsc::Sender<()>, JoinHandle<()>)>>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and runs the migrations.
    pub fn open(path: &Path, opts: SqliteOptions) -> Result<SqliteStore> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::crypto::create_private_dir(dir).map_err(|e| {
                StoreError::Database(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        // Created owner-only before SQLite opens it: SQLite makes a new file 0644, and gives its
        // `-wal` and `-shm` files the database file's mode.
        crate::crypto::touch_private(path)
            .map_err(|e| StoreError::Database(format!("cannot create {}: {e}", path.display())))?;
        {
            use std::os::unix::fs::PermissionsExt as _;
            if let Ok(meta) = std::fs::metadata(path)
                && meta.permissions().mode() & 0o077 != 0
            {
                tracing::warn!(
                    file = %path.display(),
                    mode = format!("{:o}", meta.permissions().mode() & 0o777),
                    "the database file is open to other users: chmod 600 it (and its -wal and -shm files)"
                );
            }
        }
        let mut conn = schema::open(path)?;
        schema::migrate(&mut conn)?;
        writer::prepare(&conn)?;
        let checkpoint_conn = schema::open(path)?;
        let (stop_tx, stop_rx) = std::sync::mpsc::channel();
        let restart = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let restart_wanted = restart.clone();
        let checkpointer = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || checkpoint_loop(checkpoint_conn, stop_rx, restart_wanted))
            .map_err(|e| StoreError::Database(format!("cannot start checkpointer: {e}")))?;
        let (tx, rx) = mpsc::channel::<Box<dyn WriteJob>>(opts.batch_max.max(1) * 4);
        let batch_max = opts.batch_max.max(1);
        let fault = writer::Fault::default();
        let writer_fault = fault.clone();
        let writer_path = path.to_path_buf();
        let writer = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer_loop(conn, &writer_path, rx, batch_max, restart, writer_fault))
            .map_err(|e| StoreError::Database(format!("cannot start writer: {e}")))?;
        Ok(SqliteStore {
            path: path.to_path_buf(),
            jobs: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            readers: Arc::new(Mutex::new(Vec::new())),
            max_readers: opts.readers.max(1),
            fault,
            floor: disk::DiskFloor::new(data_dir(path).to_path_buf(), opts.min_free_bytes),
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
                None => schema::open(&path)?,
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

impl SqliteStore {
    /// Copies the WAL into the database file and truncates it to nothing, so what an erasure
    /// overwrote leaves no copy in the log either. It waits (`busy_timeout`) for the writer to
    /// be between transactions and readers to be on the newest snapshot; if it cannot finish, the
    /// old frames go with the next checkpoints that restart the log.
    async fn truncate_wal(&self) {
        for _ in 0..3 {
            match self
                .read(|c| {
                    c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                        r.get::<_, i64>(0)
                    })
                })
                .await
            {
                Ok(0) => return,
                Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
                Err(e) => {
                    tracing::warn!(error = %e, "truncating the WAL after an erasure failed");
                    return;
                }
            }
        }
        tracing::warn!(
            "the WAL could not be truncated after an erasure (busy); the next checkpoints will"
        );
    }
}

/// The directory holding the database file.
fn data_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

fn uuid_col(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Uuid> {
    let b: Vec<u8> = r.get(i)?;
    Uuid::from_slice(&b).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Blob, Box::new(e))
    })
}

/// A rewrite that failed, carried out of rusqlite's error type.
fn rewrite_failed(message: String) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(message.into())
}

#[async_trait]
impl ClusterStore for SqliteStore {}

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

    fn write_fault(&self) -> Option<String> {
        self.fault.get().or_else(|| self.floor.refusal())
    }

    async fn probe_write(&self) -> Result<()> {
        // A one-page write can succeed on a full disk (into WAL space already allocated) while
        // every event still fails: the fault stands until the filesystem has real room again.
        if let Some(free) = disk::free_bytes(data_dir(&self.path))
            && free < PROBE_MIN_FREE_BYTES
        {
            return Err(StoreError::Unavailable(format!(
                "{} KiB free on the database's filesystem",
                free / 1024
            )));
        }
        // Writing the header's user_version (unchanged) is a real transaction through the
        // writer: it clears the fault or keeps it, as any other write does.
        self.write(|c| {
            let v: i64 = c.query_row("PRAGMA user_version", [], |r| r.get(0))?;
            c.pragma_update(None, "user_version", v)
        })
        .await
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
