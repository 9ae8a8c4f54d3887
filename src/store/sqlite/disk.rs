//! The free-space floor (`min_free_disk_mb`): below it the store refuses new events, while it
//! still writes delivery outcomes, so that deliveries in flight finish and are recorded before
//! the disk is really full (docs/operations.md, "Storage faults").

use std::path::{Path, PathBuf};
use std::sync::Mutex;
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
    sample: Mutex<Option<Sample>>,
}

#[derive(Clone, Copy)]
struct Sample {
    at: Instant,
    free: u64,
}

impl DiskFloor {
    pub(super) fn new(dir: PathBuf, min_free: u64) -> DiskFloor {
        DiskFloor {
            dir,
            min_free,
            sample: Mutex::new(None),
        }
    }

    /// Why new events are refused: the free space is under the floor. `None` when it is not,
    /// when there is no floor, or when the free space cannot be read (the writes themselves
    /// then say whether there is room).
    pub(super) fn refusal(&self) -> Option<String> {
        if self.min_free == 0 {
            return None;
        }
        let mut sample = self.sample.lock().ok()?;
        let now = Instant::now();
        let fresh = sample.filter(|s| now.duration_since(s.at) < SAMPLE_FOR);
        let free = match fresh {
            Some(s) => s.free,
            None => {
                let free = free_bytes(&self.dir)?;
                let was_below = sample.is_some_and(|s| s.free < self.min_free);
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
                *sample = Some(Sample { at: now, free });
                free
            }
        };
        (free < self.min_free).then(|| {
            format!(
                "{} MiB free on the database's filesystem, below min_free_disk_mb ({} MiB)",
                free >> 20,
                self.min_free >> 20
            )
        })
    }
}
