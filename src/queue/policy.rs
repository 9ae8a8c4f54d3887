//! Retry policies (API.md section 5 `RetryPolicy`) and the delay before each retry.

use std::time::Duration;

pub use crate::rules::model::{BackoffStrategy, RetryPolicy};

/// The default ceiling on a computed delay when the configuration does not give one.
pub const DEFAULT_MAX_DELAY_MS: u64 = 300_000;

impl RetryPolicy {
    /// The server default: `default_retry_attempts` attempts, exponential from
    /// `default_retry_delay`, capped at five minutes, no jitter.
    pub fn server_default(attempts: u32, base_delay_ms: u64) -> RetryPolicy {
        RetryPolicy {
            max_attempts: attempts.max(1),
            backoff_strategy: BackoffStrategy::Exponential,
            base_delay: base_delay_ms,
            max_delay: DEFAULT_MAX_DELAY_MS.max(base_delay_ms),
            jitter: false,
        }
    }

    /// The computed delay after the `attempt`-th failed attempt (1-based), before jitter:
    /// fixed = base; linear = base × attempt; exponential = base × 2^(attempt−1); capped.
    pub fn computed_delay(&self, attempt: u32) -> u64 {
        let attempt = attempt.max(1) as u64;
        let raw = match self.backoff_strategy {
            BackoffStrategy::Fixed => self.base_delay,
            BackoffStrategy::Linear => self.base_delay.saturating_mul(attempt),
            BackoffStrategy::Exponential => {
                let shift = (attempt - 1).min(63) as u32;
                self.base_delay
                    .saturating_mul(1u64.checked_shl(shift).unwrap_or(u64::MAX))
            }
        };
        raw.min(self.max_delay)
    }

    /// The delay to wait, with full jitter when enabled: uniform in [0, computed]. `unit` is a
    /// uniform random number in [0, 1) (injected so tests are deterministic).
    pub fn delay(&self, attempt: u32, unit: f64) -> u64 {
        let d = self.computed_delay(attempt);
        if self.jitter {
            ((d as f64 + 1.0) * unit.clamp(0.0, 1.0))
                .floor()
                .min(d as f64) as u64
        } else {
            d
        }
    }

    /// The wait after a failed attempt: the server's `Retry-After` when it sent one (on 429/503),
    /// capped at maxDelay; otherwise the policy's delay.
    pub fn next_delay(&self, attempt: u32, retry_after: Option<Duration>, unit: f64) -> u64 {
        match retry_after {
            Some(d) => (d.as_millis().min(u64::MAX as u128) as u64).min(self.max_delay),
            None => self.delay(attempt, unit),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(strategy: BackoffStrategy, base: u64, max: u64, jitter: bool) -> RetryPolicy {
        RetryPolicy {
            max_attempts: 10,
            backoff_strategy: strategy,
            base_delay: base,
            max_delay: max,
            jitter,
        }
    }

    #[test]
    fn schedules_per_strategy() {
        let f = p(BackoffStrategy::Fixed, 100, 1000, false);
        let l = p(BackoffStrategy::Linear, 100, 1000, false);
        let e = p(BackoffStrategy::Exponential, 100, 1000, false);
        let sched = |x: &RetryPolicy| (1..=6).map(|a| x.delay(a, 0.5)).collect::<Vec<_>>();
        assert_eq!(sched(&f), [100, 100, 100, 100, 100, 100]);
        assert_eq!(sched(&l), [100, 200, 300, 400, 500, 600]);
        assert_eq!(sched(&e), [100, 200, 400, 800, 1000, 1000]);
        // Huge attempt numbers saturate instead of overflowing.
        assert_eq!(e.delay(200, 0.5), 1000);
        assert_eq!(l.delay(u32::MAX, 0.5), 1000);
    }

    #[test]
    fn jitter_stays_within_zero_and_computed() {
        let e = p(BackoffStrategy::Exponential, 100, 10_000, true);
        assert_eq!(e.delay(3, 0.0), 0);
        assert_eq!(e.delay(3, 0.999_999_9), 400);
        for i in 0..1000 {
            let u = i as f64 / 1000.0;
            let d = e.delay(4, u);
            assert!(d <= 800, "{d}");
        }
        // Roughly uniform: the mean of an even grid is about half the computed delay.
        let mean: f64 = (0..1000)
            .map(|i| e.delay(4, i as f64 / 1000.0) as f64)
            .sum::<f64>()
            / 1000.0;
        assert!((mean - 400.0).abs() < 5.0, "{mean}");
    }

    #[test]
    fn retry_after_is_honoured_and_capped() {
        let e = p(BackoffStrategy::Exponential, 100, 5000, false);
        assert_eq!(e.next_delay(1, Some(Duration::from_secs(2)), 0.5), 2000);
        assert_eq!(e.next_delay(1, Some(Duration::from_secs(60)), 0.5), 5000);
        assert_eq!(e.next_delay(2, None, 0.5), 200);
    }
}
