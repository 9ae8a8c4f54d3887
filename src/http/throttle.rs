//! Throttling of failed admin and agent authentication per client address (API.md section 11):
//! past `limit` failures in a window, further wrong keys get 429 until the window ends. A
//! correct key is always accepted, so the throttle can never lock out the real operator.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderValue, StatusCode, header};

use super::error::ApiError;

/// Failures allowed per window before wrong keys are refused with 429.
pub const FAILURE_LIMIT: u32 = 100;
/// The window: one minute from an address's first failure.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Addresses tracked at most. Past this (after dropping expired windows), new addresses go
/// untracked rather than let a spread-out attack grow memory without bound.
const MAX_TRACKED: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    failures: u32,
}

/// Per-address failure counters with expiry.
pub struct AuthThrottle {
    limit: u32,
    window: Duration,
    max_tracked: usize,
    // A std Mutex: the critical section is a hash lookup, never held across an await.
    windows: Mutex<HashMap<IpAddr, Window>>,
}

impl Default for AuthThrottle {
    fn default() -> Self {
        Self::new(FAILURE_LIMIT, WINDOW, MAX_TRACKED)
    }
}

impl AuthThrottle {
    pub fn new(limit: u32, window: Duration, max_tracked: usize) -> Self {
        AuthThrottle {
            limit,
            window,
            max_tracked,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Records one failed authentication from `ip`. `Err(retry_after)` when the address is past
    /// its limit: the caller answers 429 instead of 401.
    pub fn failed(&self, ip: IpAddr) -> Result<(), Duration> {
        self.failed_at(ip, Instant::now())
    }

    fn failed_at(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if !windows.contains_key(&ip) && windows.len() >= self.max_tracked {
            let window = self.window;
            windows.retain(|_, w| now.saturating_duration_since(w.started) < window);
            if windows.len() >= self.max_tracked {
                return Ok(());
            }
        }
        let w = windows.entry(ip).or_insert(Window {
            started: now,
            failures: 0,
        });
        let age = now.saturating_duration_since(w.started);
        if age >= self.window {
            *w = Window {
                started: now,
                failures: 0,
            };
        }
        if w.failures >= self.limit {
            return Err(self.window.saturating_sub(age));
        }
        w.failures += 1;
        Ok(())
    }

    /// Forgets windows that have ended (housekeeping).
    pub fn purge_expired(&self) {
        let now = Instant::now();
        let window = self.window;
        self.windows
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, w| now.saturating_duration_since(w.started) < window);
    }

    pub fn tracked(&self) -> usize {
        self.windows.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The answer to a failed authentication: 401, or 429 once the address is throttled.
    pub fn refuse(&self, ip: IpAddr) -> ApiError {
        match self.failed(ip) {
            Ok(()) => ApiError::unauthorized(),
            Err(retry_after) => too_many_failures(retry_after),
        }
    }
}

/// 429 `too_many_failures` with `Retry-After` in whole seconds (at least 1).
pub fn too_many_failures(retry_after: Duration) -> ApiError {
    let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_failures",
        "Too many failed authentication attempts from this address; retry later",
    )
    .with_header(header::RETRY_AFTER, HeaderValue::from(secs.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    #[test]
    fn past_the_limit_until_the_window_ends() {
        let t = AuthThrottle::new(3, Duration::from_secs(60), 10);
        let start = Instant::now();
        for _ in 0..3 {
            assert!(t.failed_at(ip(1), start).is_ok());
        }
        let wait = t
            .failed_at(ip(1), start + Duration::from_secs(20))
            .unwrap_err();
        assert_eq!(wait, Duration::from_secs(40));
        // Another address is not affected.
        assert!(t.failed_at(ip(2), start).is_ok());
        // A new window starts once the minute is over.
        assert!(t.failed_at(ip(1), start + Duration::from_secs(60)).is_ok());
    }

    #[test]
    fn memory_stays_bounded() {
        let t = AuthThrottle::new(3, Duration::from_secs(60), 4);
        let start = Instant::now();
        for n in 0..10 {
            let _ = t.failed_at(ip(n), start);
        }
        assert_eq!(t.tracked(), 4);
        // Expired windows make room.
        assert!(t.failed_at(ip(50), start + Duration::from_secs(61)).is_ok());
        assert_eq!(t.tracked(), 1);
    }

    #[test]
    fn retry_after_is_whole_seconds() {
        let e = too_many_failures(Duration::from_millis(1500));
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.headers[0].1, HeaderValue::from(2u64));
    }
}
