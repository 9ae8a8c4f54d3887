//! The checkpointer: the thread that copies committed WAL frames into the database file and
//! has the writer start the log over before it grows without bound.

use std::sync::Arc;
use std::time::Instant;

use rusqlite::Connection;

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
pub(super) fn checkpoint_loop(
    conn: Connection,
    stop: std::sync::mpsc::Receiver<()>,
    restart: Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::mpsc::RecvTimeoutError;
    // Returns the frames in the log (the pragma's row is: busy, frames in the log, copied).
    let passive = || conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(1));
    // A checkpoint that fails (a full disk, say) is tried again on the next tick and said once
    // in the log, not ten times a second; the thread keeps running and resumes on its own.
    let mut failing = false;
    while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_EVERY) {
        let started = Instant::now();
        let (mut log, mut passes) = match passive() {
            Ok(log) => {
                if std::mem::take(&mut failing) {
                    tracing::info!("WAL checkpoints succeed again");
                }
                (log, 1)
            }
            Err(e) => {
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(error = %e, "WAL checkpoint failed; trying again");
                }
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
