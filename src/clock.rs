//! Time: `now_ms()` for stamping events and deadlines, and the `Clock` trait for code that must be
//! driven by hand in tests (the rate limiter): the wall clock in production, `ManualClock` there.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, as a signed number (the stores' and the API's timestamps).
/// A clock set before 1970 reads as 0 rather than failing a request.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Milliseconds since the Unix epoch.
///
/// Epoch time rather than a monotonic `Instant` because windows are aligned to
/// the epoch and the PostgreSQL-backed limiter compares instants taken on
/// different nodes. The strategies tolerate a clock that steps backwards (they
/// treat it as "no time passed"), so NTP corrections cannot cause a panic or a
/// refund of quota.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> u64;
}

/// The system's real-time clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        // A clock set before 1970 is a broken host, not a reason to fail a
        // request: time 0 makes every key look fresh, which errs on the side
        // of admitting.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// A clock that only moves when told to, so tests are deterministic.
///
/// Share it as `Arc<ManualClock>`: the same `Arc` coerces to `Arc<dyn Clock>`
/// for the limiter while the test keeps a handle to move time.
#[derive(Debug, Default)]
pub struct ManualClock {
    now_ms: AtomicU64,
}

impl ManualClock {
    pub fn new(now_ms: u64) -> Self {
        Self {
            now_ms: AtomicU64::new(now_ms),
        }
    }

    pub fn set(&self, now_ms: u64) {
        self.now_ms.store(now_ms, Ordering::SeqCst);
    }

    pub fn advance(&self, ms: u64) {
        // fetch_update rather than fetch_add so that advancing past u64::MAX
        // saturates instead of wrapping back to 1970.
        let _ = self
            .now_ms
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| {
                Some(t.saturating_add(ms))
            });
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.now_ms.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_sets_and_advances() {
        let clock = ManualClock::new(1_000);
        assert_eq!(clock.now_ms(), 1_000);
        clock.advance(500);
        assert_eq!(clock.now_ms(), 1_500);
        clock.set(10);
        assert_eq!(clock.now_ms(), 10);
        clock.set(u64::MAX - 1);
        clock.advance(10);
        assert_eq!(clock.now_ms(), u64::MAX);
    }

    #[test]
    fn system_clock_is_after_2020() {
        // 2020-01-01T00:00:00Z; catches a unit mistake (seconds vs ms).
        assert!(SystemClock.now_ms() > 1_577_836_800_000);
    }
}
