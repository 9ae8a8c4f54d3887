//! Fixed window: at most `limit` requests per window, windows aligned to multiples of `window` since the epoch.
//!
//! Cheapest and easiest to explain, but a client can spend a full window at
//! the end of one window and another at the start of the next: up to
//! `2 × limit` within a span of one window around a boundary.

use super::{Decision, Quota};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct State {
    /// Start (epoch ms) of the window `count` belongs to.
    pub window_start: u64,
    /// Requests allowed in that window.
    pub count: u64,
}

pub fn check(state: &mut State, quota: &Quota, now_ms: u64) -> Decision {
    let window = quota.window_ms;
    // A clock that stepped back stays in the window already counted rather
    // than reopening an older one.
    let now = now_ms.max(state.window_start);
    let start = now - now % window;
    if start != state.window_start {
        *state = State {
            window_start: start,
            count: 0,
        };
    }
    let reset_at_ms = start.saturating_add(window);
    let allowed = state.count < quota.limit;
    if allowed {
        state.count += 1;
    }
    Decision {
        allowed,
        limit: quota.limit,
        remaining: quota.limit.saturating_sub(state.count),
        reset_at_ms,
        retry_after_ms: if allowed { 0 } else { reset_at_ms - now },
    }
}

/// The count is irrelevant once its window has ended.
pub fn expires_at_ms(state: &State, quota: &Quota) -> u64 {
    state.window_start.saturating_add(quota.window_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::Strategy;
    use proptest::prelude::*;

    fn quota(limit: u64, window_ms: u64) -> Quota {
        Quota::new(Strategy::FixedWindow, limit, window_ms, None)
    }

    #[test]
    fn last_allowed_and_first_refused() {
        let q = quota(3, 1000);
        let mut s = State::default();
        // Mid-window start: windows are aligned to the epoch, not to the first request.
        let t = 10_400;
        let d = check(&mut s, &q, t);
        assert!(d.allowed);
        assert_eq!(
            (d.limit, d.remaining, d.reset_at_ms, d.retry_after_ms),
            (3, 2, 11_000, 0)
        );
        assert_eq!(check(&mut s, &q, t + 1).remaining, 1);
        let last = check(&mut s, &q, t + 2);
        assert!(last.allowed);
        assert_eq!(last.remaining, 0);
        let refused = check(&mut s, &q, t + 100);
        assert!(!refused.allowed);
        assert_eq!(refused.remaining, 0);
        assert_eq!(refused.reset_at_ms, 11_000);
        assert_eq!(refused.retry_after_ms, 500);
        // A refusal consumes nothing.
        assert_eq!(s.count, 3);
        // Last millisecond of the window is still refused, the next is a new window.
        assert!(!check(&mut s, &q, 10_999).allowed);
        let rolled = check(&mut s, &q, 11_000);
        assert!(rolled.allowed);
        assert_eq!((rolled.remaining, rolled.reset_at_ms), (2, 12_000));
    }

    #[test]
    fn skipped_windows_start_from_zero() {
        let q = quota(1, 1000);
        let mut s = State::default();
        assert!(check(&mut s, &q, 5_000).allowed);
        assert!(!check(&mut s, &q, 5_999).allowed);
        assert!(check(&mut s, &q, 9_123).allowed);
        assert_eq!(s.window_start, 9_000);
    }

    #[test]
    fn clock_stepping_back_stays_in_the_counted_window() {
        let q = quota(1, 1000);
        let mut s = State::default();
        assert!(check(&mut s, &q, 5_000).allowed);
        let d = check(&mut s, &q, 4_500);
        assert!(!d.allowed);
        assert_eq!(d.retry_after_ms, 1_000);
    }

    #[test]
    fn expiry_is_the_window_end() {
        let q = quota(2, 1000);
        let mut s = State::default();
        check(&mut s, &q, 5_250);
        assert_eq!(expires_at_ms(&s, &q), 6_000);
    }

    #[test]
    fn extreme_times_do_not_overflow() {
        let q = quota(1, crate::ratelimit::MAX_WINDOW_MS);
        let mut s = State::default();
        let d = check(&mut s, &q, u64::MAX);
        assert!(d.allowed);
        let d = check(&mut s, &q, u64::MAX);
        assert!(!d.allowed);
    }

    proptest! {
        /// Within each aligned window exactly the first `limit` requests pass:
        /// never more (the contract) and never fewer (no spurious refusals).
        #[test]
        fn exactly_limit_per_aligned_window(
            limit in 1u64..8,
            window in 1u64..5_000,
            gaps in proptest::collection::vec(0u64..2_000, 1..300),
        ) {
            let q = quota(limit, window);
            let mut s = State::default();
            let mut now = 1_700_000_000_000u64;
            let mut seen: std::collections::HashMap<u64, (u64, u64)> = Default::default();
            for gap in gaps {
                now += gap;
                let d = check(&mut s, &q, now);
                let entry = seen.entry(now / window).or_default();
                entry.0 += 1;
                if d.allowed {
                    entry.1 += 1;
                    prop_assert_eq!(d.retry_after_ms, 0);
                } else {
                    prop_assert!(d.retry_after_ms >= 1);
                    prop_assert_eq!(now + d.retry_after_ms, (now / window + 1) * window);
                }
                prop_assert!(entry.1 <= limit);
                prop_assert_eq!(entry.1, entry.0.min(limit));
            }
        }
    }
}
