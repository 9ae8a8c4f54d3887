//! The free-space floor (`min_free_disk_mb`): below it the store refuses new events, while it
//! still writes delivery outcomes, so that deliveries in flight finish and are recorded before
//! the disk is really full (docs/operations.md, "Storage faults").

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long one reading of the free space stands: a `statvfs` per webhook would be a system
/// call on the hot path, and space does not run out in a quarter of a second.
const SAMPLE_FOR: Duration = Duration::from_millis(250);

/// Free bytes on the filesystem holding `dir`, if it can be read.
pub(super) fn free_bytes(dir: &Path) -> Option<u64> {
    let vfs = rustix::fs::statvfs(dir).ok()?;
    Some(vfs.f_bavail.saturating_mul(vfs.f_frsize))
}

pub(super) struct DiskFloor {
    dir: PathBuf,
    /// 0: no floor.
    min_free: u64,
    /// The clock `sampled_at` counts from.
    started: Instant,
    /// When the free space was last read: ms since `started`, plus one (0: never).
    sampled_at: AtomicU64,
    /// Free bytes at that reading.
    free: AtomicU64,
    /// Taken by the one caller that reads the free space again; the others use the last
    /// reading meanwhile. Atomics rather than a lock: this is checked for every webhook.
    resampling: AtomicBool,
}

impl DiskFloor {
    pub(super) fn new(dir: PathBuf, min_free: u64) -> DiskFloor {
        DiskFloor {
            dir,
            min_free,
            started: Instant::now(),
            sampled_at: AtomicU64::new(0),
            free: AtomicU64::new(u64::MAX),
            resampling: AtomicBool::new(false),
        }
    }

    /// Why new events are refused: the free space is under the floor. `None` when it is not,
    /// when there is no floor, or when the free space cannot be read (the writes themselves
    /// then say whether there is room).
    pub(super) fn refusal(&self) -> Option<String> {
        if self.min_free == 0 {
            return None;
        }
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1;
        let at = self.sampled_at.load(Ordering::Acquire);
        let stale = at == 0 || now.saturating_sub(at) >= SAMPLE_FOR.as_millis() as u64;
        if stale
            && self
                .resampling
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        {
            if let Some(free) = free_bytes(&self.dir) {
                let before = self.free.swap(free, Ordering::AcqRel);
                self.crossed(at != 0 && before < self.min_free, free);
            }
            self.sampled_at.store(now, Ordering::Release);
            self.resampling.store(false, Ordering::Release);
        }
        let free = self.free.load(Ordering::Acquire);
        (free < self.min_free).then(|| {
            format!(
                "{} MiB free on the database's filesystem, below min_free_disk_mb ({} MiB)",
                free >> 20,
                self.min_free >> 20
            )
        })
    }

    /// Logs the floor being crossed, either way, once.
    fn crossed(&self, was_below: bool, free: u64) {
        let below = free < self.min_free;
        if below && !was_below {
            tracing::warn!(
                free_mb = free >> 20,
                min_free_disk_mb = self.min_free >> 20,
                dir = %self.dir.display(),
                "free disk space is below min_free_disk_mb: new webhooks are refused \
                 (503 storage_unavailable) until space is freed"
            );
        } else if was_below && !below {
            tracing::info!(
                free_mb = free >> 20,
                "free disk space is above min_free_disk_mb again: webhooks are accepted"
            );
        }
    }
}
