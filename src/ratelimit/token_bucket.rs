//! Token bucket as GCRA: capacity `burst`, refilled continuously at `limit` tokens per `window`.
//!
//! Instead of a token count and a refill timestamp (which loses the fraction
//! of a token on every refill unless handled with care), GCRA keeps one
//! number, the *theoretical arrival time* (TAT): the instant at which the
//! bucket would be full again. Each allowed request pushes it one emission
//! interval `T = window / limit` later; a request is allowed if that leaves
//! the TAT no further than `burst × T` ahead of now. Tokens available at `t`
//! are `burst − (TAT − t) / T`.
//!
//! Time is measured in units of `1 / limit` ms so that `T` is exactly
//! `window` units and nothing is ever rounded: the refill is exact to the
//! millisecond however `limit` and `window` relate. The TAT is stored as whole
//! ms plus a remainder in those units, two `u64`s a row can hold.

use super::{Decision, Quota, div_ceil, div_floor, div_rem};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct State {
    /// Whole epoch ms of the theoretical arrival time.
    pub tat_ms: u64,
    /// Its fraction, in units of `1 / limit` ms (`< limit`).
    pub tat_frac: u64,
}

impl State {
    fn scaled(&self, limit: u128) -> u128 {
        u128::from(self.tat_ms) * limit + u128::from(self.tat_frac)
    }

    fn set_scaled(&mut self, tat: u128, limit: u128) {
        let (ms, frac) = div_rem(tat, limit);
        self.tat_ms = saturate(ms);
        self.tat_frac = saturate(frac);
    }
}

pub fn check(state: &mut State, quota: &Quota, now_ms: u64) -> Decision {
    let limit = u128::from(quota.limit);
    let interval = u128::from(quota.window_ms);
    let tolerance = u128::from(quota.burst) * interval;
    let now = u128::from(now_ms) * limit;

    // A TAT in the past means a full bucket; tokens beyond `burst` don't accrue.
    let tat = state.scaled(limit).max(now);
    let next_tat = tat + interval;
    let allowed = next_tat - now <= tolerance;
    let tat = if allowed {
        state.set_scaled(next_tat, limit);
        next_tat
    } else {
        tat
    };
    let debt = tat - now;

    Decision {
        allowed,
        limit: quota.burst,
        remaining: saturate(div_floor(tolerance.saturating_sub(debt), interval)),
        reset_at_ms: saturate(div_ceil(tat, limit)),
        retry_after_ms: if allowed {
            0
        } else {
            // One token is back once next_tat − t <= tolerance.
            saturate(div_ceil(next_tat - tolerance, limit)).saturating_sub(now_ms)
        },
    }
}

/// A full bucket is what a new key gets, so the state matters until the TAT.
pub fn expires_at_ms(state: &State, quota: &Quota) -> u64 {
    let limit = u128::from(quota.limit);
    saturate(div_ceil(state.scaled(limit), limit))
}

fn saturate(v: u128) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::Strategy;
    use proptest::prelude::*;

    fn quota(limit: u64, window_ms: u64, burst: Option<u64>) -> Quota {
        Quota::new(Strategy::TokenBucket, limit, window_ms, burst)
    }

    fn drain(s: &mut State, q: &Quota, t: u64) -> u64 {
        let mut n = 0;
        while check(s, q, t).allowed {
            n += 1;
        }
        n
    }

    #[test]
    fn full_bucket_then_refusal() {
        let q = quota(10, 1000, None);
        let mut s = State::default();
        let t = 50_000;
        let first = check(&mut s, &q, t);
        assert!(first.allowed);
        assert_eq!(
            (first.limit, first.remaining, first.reset_at_ms),
            (10, 9, 50_100)
        );
        for remaining in (0..9).rev() {
            let d = check(&mut s, &q, t);
            assert!(d.allowed);
            assert_eq!(d.remaining, remaining);
        }
        let refused = check(&mut s, &q, t);
        assert!(!refused.allowed);
        assert_eq!(refused.remaining, 0);
        // One token every 100 ms; full again after the whole window.
        assert_eq!((refused.retry_after_ms, refused.reset_at_ms), (100, 51_000));
        // The last refused and the first allowed millisecond.
        assert!(!check(&mut s, &q, t + 99).allowed);
        assert!(check(&mut s, &q, t + 100).allowed);
    }

    #[test]
    fn burst_is_the_capacity_and_limit_the_rate() {
        let q = quota(2, 1000, Some(5));
        let mut s = State::default();
        assert_eq!(drain(&mut s, &q, 0), 5);
        assert_eq!(check(&mut s, &q, 0).limit, 5);
        // 2 tokens per second: one after 500 ms.
        assert_eq!(check(&mut s, &q, 0).retry_after_ms, 500);
        assert_eq!(drain(&mut s, &q, 499), 0);
        assert_eq!(drain(&mut s, &q, 500), 1);
        assert_eq!(
            drain(&mut s, &q, 3_000),
            5,
            "refills up to burst, no further"
        );
        assert_eq!(drain(&mut s, &q, 100_000), 5);
    }

    #[test]
    fn half_a_window_refills_half_the_tokens() {
        let q = quota(10, 1000, None);
        let mut s = State::default();
        assert_eq!(drain(&mut s, &q, 7_000), 10);
        assert_eq!(drain(&mut s, &q, 7_500), 5);
        assert_eq!(drain(&mut s, &q, 7_750), 2);
        // 2.5 tokens had refilled; the half token left over is kept, not lost.
        assert_eq!(drain(&mut s, &q, 7_800), 1);
    }

    #[test]
    fn fractional_refill_is_not_lost_on_frequent_checks() {
        // 1 token per 3 s, checked every ms: a naive refill that floors and
        // moves the refill stamp would never give a token back.
        let q = quota(1, 3_000, None);
        let mut s = State::default();
        assert!(check(&mut s, &q, 0).allowed);
        let mut allowed_at = None;
        for t in 1..=3_000 {
            if check(&mut s, &q, t).allowed {
                allowed_at = Some(t);
                break;
            }
        }
        assert_eq!(allowed_at, Some(3_000));
    }

    #[test]
    fn uneven_rate_refills_exactly() {
        // 3 tokens per 1000 ms: one every 333⅓ ms.
        let q = quota(3, 1000, Some(2));
        let mut s = State::default();
        assert_eq!(drain(&mut s, &q, 0), 2);
        assert_eq!(check(&mut s, &q, 0).retry_after_ms, 334);
        assert!(check(&mut s, &q, 334).allowed);
        // Tokens are owed until 1000 ms, so the next is back at 666⅔ → 667.
        // Rounding the interval to 334 ms would have said 668 (drift).
        assert_eq!(check(&mut s, &q, 334).retry_after_ms, 667 - 334);
        assert!(!check(&mut s, &q, 666).allowed);
        assert!(check(&mut s, &q, 667).allowed);
    }

    #[test]
    fn expiry_is_when_the_bucket_is_full() {
        let q = quota(4, 1000, None);
        let mut s = State::default();
        check(&mut s, &q, 10_000);
        check(&mut s, &q, 10_000);
        assert_eq!(expires_at_ms(&s, &q), 10_500);
    }

    #[test]
    fn huge_numbers_do_not_overflow() {
        let q = quota(u64::MAX, crate::ratelimit::MAX_WINDOW_MS, Some(u64::MAX));
        let mut s = State::default();
        assert!(check(&mut s, &q, u64::MAX).allowed);
        let q = quota(1, crate::ratelimit::MAX_WINDOW_MS, Some(1));
        let mut s = State::default();
        assert!(check(&mut s, &q, u64::MAX - 1).allowed);
        let d = check(&mut s, &q, u64::MAX - 1);
        assert!(!d.allowed);
        assert_eq!(d.reset_at_ms, u64::MAX);
    }

    proptest! {
        /// Over any interval [a, b] between allowed requests, at most
        /// burst + limit × (b − a) / window pass; the retry time is exact; and
        /// a refusal changes nothing.
        #[test]
        fn never_more_than_burst_plus_refill(
            limit in 1u64..10,
            window in 1u64..5_000,
            burst in proptest::option::of(1u64..12),
            gaps in proptest::collection::vec(0u64..1_500, 1..250),
        ) {
            let q = quota(limit, window, burst);
            let burst = q.burst;
            let mut s = State::default();
            let mut now = 1_700_000_000_000u64;
            let mut allowed_at: Vec<u64> = Vec::new();
            for gap in gaps {
                now += gap;
                let before = s;
                let d = check(&mut s, &q, now);
                prop_assert!(d.remaining <= burst);
                if d.allowed {
                    allowed_at.push(now);
                } else {
                    prop_assert_eq!(s, before);
                    prop_assert!(d.retry_after_ms >= 1);
                    let at = now + d.retry_after_ms;
                    prop_assert!(!check(&mut s.clone(), &q, at - 1).allowed);
                    prop_assert!(check(&mut s.clone(), &q, at).allowed);
                }
            }
            for (i, &a) in allowed_at.iter().enumerate() {
                for (j, &b) in allowed_at[i..].iter().enumerate() {
                    let count = u128::from(j as u64 + 1);
                    let bound = u128::from(burst) * u128::from(window)
                        + u128::from(limit) * u128::from(b - a);
                    prop_assert!(count * u128::from(window) <= bound,
                        "{} allowed in [{}, {}]", count, a, b);
                }
            }
        }
    }
}
