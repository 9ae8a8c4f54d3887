//! Inbound rate limiting per `source:identifier` (API.md section 6).
//!
//! Layout: each strategy (`fixed_window`, `sliding_window`, `token_bucket`)
//! is a pure function `check(&mut State, &Quota, now_ms) -> Decision` over a
//! few integers of per-key state. `registry::RateLimiter` is the in-process owner of that
//! state: a sharded map, the config lookup, and idle-key purging. `shared::SharedLimiter` is
//! the limiter several nodes share: the same arithmetic over counters in the shared store
//! (PostgreSQL), written in SQL in the function that leases them out
//! (`store/postgres/migrations/0004_…`), which each node leases shares of; it computes its
//! headers with these functions.
//!
//! `governor` was considered for the token bucket and not taken: its quota is
//! fixed per limiter (ours differs per key and changes at run time), its
//! per-key state lives inside its own store where a PostgreSQL row cannot
//! reuse it, and it reports neither `remaining` nor a "bucket full again" time
//! in the form the headers need. GCRA itself is a dozen lines (`token_bucket`).

#![forbid(unsafe_code)]

mod config;
mod decision;
pub mod fixed_window;
mod registry;
pub mod shared;
pub mod sliding_window;
pub mod token_bucket;

pub use crate::clock::{Clock, ManualClock, SystemClock};
pub use config::{
    MAX_NAME_BYTES, MAX_WINDOW_MS, RateLimitConfig, Strategy, ValidationError, config_from_value,
    parse_config,
};
pub use decision::Decision;
pub use registry::{DEFAULT_MAX_KEYS, PURGE_MARGIN_MS, RateLimiter};

/// The numbers a strategy needs, already normalised: every field is in range
/// so the arithmetic cannot divide by zero, whatever config produced it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Quota {
    pub strategy: Strategy,
    /// Requests per window (for a token bucket: tokens refilled per window).
    pub limit: u64,
    pub window_ms: u64,
    /// Token bucket capacity; equal to `limit` for the window strategies so
    /// that two quotas that behave the same compare equal.
    pub burst: u64,
}

impl Quota {
    /// Clamps instead of failing: configs are validated at the edges
    /// (`RateLimitConfig::validate`), and an unvalidated one that slips through
    /// must not be able to panic the request path.
    pub fn new(strategy: Strategy, limit: u64, window_ms: u64, burst: Option<u64>) -> Self {
        let limit = limit.max(1);
        let burst = match strategy {
            Strategy::TokenBucket => burst.unwrap_or(limit).max(1),
            Strategy::FixedWindow | Strategy::SlidingWindow => limit,
        };
        Self {
            strategy,
            limit,
            window_ms: window_ms.clamp(1, MAX_WINDOW_MS),
            burst,
        }
    }

    pub fn from_config(config: &RateLimitConfig) -> Self {
        Self::new(
            config.effective_strategy(),
            config.limit,
            config.window,
            config.burst,
        )
    }
}

/// One key's state under whichever strategy its quota uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyState {
    FixedWindow(fixed_window::State),
    SlidingWindow(sliding_window::State),
    TokenBucket(token_bucket::State),
}

impl KeyState {
    /// The state of a key never seen before.
    pub fn new(strategy: Strategy) -> Self {
        match strategy {
            Strategy::FixedWindow => Self::FixedWindow(Default::default()),
            Strategy::SlidingWindow => Self::SlidingWindow(Default::default()),
            Strategy::TokenBucket => Self::TokenBucket(Default::default()),
        }
    }

    /// Runs the quota's strategy, starting afresh if the state was kept by
    /// another strategy (its numbers would mean something else).
    pub fn check(&mut self, quota: &Quota, now_ms: u64) -> Decision {
        if self.strategy() != quota.strategy {
            *self = Self::new(quota.strategy);
        }
        match self {
            Self::FixedWindow(s) => fixed_window::check(s, quota, now_ms),
            Self::SlidingWindow(s) => sliding_window::check(s, quota, now_ms),
            Self::TokenBucket(s) => token_bucket::check(s, quota, now_ms),
        }
    }

    /// Epoch ms from which this state decides exactly like a fresh one, so
    /// forgetting it changes no answer. The purge uses it as "idle".
    pub fn expires_at_ms(&self, quota: &Quota) -> u64 {
        match self {
            Self::FixedWindow(s) => fixed_window::expires_at_ms(s, quota),
            Self::SlidingWindow(s) => sliding_window::expires_at_ms(s, quota),
            Self::TokenBucket(s) => token_bucket::expires_at_ms(s, quota),
        }
    }

    pub fn strategy(&self) -> Strategy {
        match self {
            Self::FixedWindow(_) => Strategy::FixedWindow,
            Self::SlidingWindow(_) => Strategy::SlidingWindow,
            Self::TokenBucket(_) => Strategy::TokenBucket,
        }
    }
}

/// `a / b` and `a % b` for the strategies' exact arithmetic. Their operands
/// are 128-bit so no product can overflow, but nearly always fit in 64 bits,
/// where the division is one instruction instead of a library call several
/// times slower — it is most of the cost of a check's arithmetic.
pub(crate) fn div_rem(a: u128, b: u128) -> (u128, u128) {
    match (u64::try_from(a), u64::try_from(b)) {
        (Ok(a), Ok(b)) => (u128::from(a / b), u128::from(a % b)),
        _ => (a / b, a % b),
    }
}

pub(crate) fn div_ceil(a: u128, b: u128) -> u128 {
    let (q, r) = div_rem(a, b);
    if r == 0 { q } else { q + 1 }
}

pub(crate) fn div_floor(a: u128, b: u128) -> u128 {
    div_rem(a, b).0
}

/// The store id of a limit: source names cannot hold ':', so this is unambiguous.
pub fn rule_id(source: &str, identifier: &str) -> String {
    format!("{source}:{identifier}")
}

/// Rebuilds the inbound rate limits from the store (the truth) and swaps them in. A stored limit
/// that no longer parses is logged and skipped.
pub async fn reload(
    limiter: &RateLimiter,
    store: &dyn crate::store::Store,
) -> Result<(), crate::store::StoreError> {
    let stored = store.list_rules(crate::store::RuleKind::RateLimit).await?;
    let mut configs = Vec::with_capacity(stored.len());
    for rule in stored {
        match parse_config(rule.body.as_bytes()) {
            Ok(c) => configs.push(c),
            Err(e) => {
                tracing::error!(id = %rule.id, error = %e, "stored rate limit is invalid; skipped")
            }
        }
    }
    limiter.set_configs(configs);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn division_fast_path_agrees_with_u128() {
        let cases = [
            (0u128, 1u128),
            (7, 2),
            (u128::from(u64::MAX), 3),
            (u128::from(u64::MAX) + 1, 3),
            (u128::MAX, u128::from(u64::MAX)),
            (u128::MAX, u128::MAX),
            (10, u128::from(u64::MAX) + 5),
        ];
        for (a, b) in cases {
            assert_eq!(div_rem(a, b), (a / b, a % b), "{a} / {b}");
            assert_eq!(div_ceil(a, b), a.div_ceil(b), "{a} / {b}");
            assert_eq!(div_floor(a, b), a / b, "{a} / {b}");
        }
    }

    #[test]
    fn quota_clamps_out_of_range_numbers() {
        let q = Quota::new(Strategy::TokenBucket, 0, 0, Some(0));
        assert_eq!((q.limit, q.window_ms, q.burst), (1, 1, 1));
        let q = Quota::new(Strategy::FixedWindow, 5, u64::MAX, Some(99));
        assert_eq!((q.limit, q.window_ms, q.burst), (5, MAX_WINDOW_MS, 5));
        let q = Quota::new(Strategy::TokenBucket, 5, 1000, None);
        assert_eq!(q.burst, 5);
    }

    #[test]
    fn key_state_restarts_when_the_strategy_changes() {
        let fixed = Quota::new(Strategy::FixedWindow, 1, 1000, None);
        let bucket = Quota::new(Strategy::TokenBucket, 1, 1000, None);
        let mut s = KeyState::new(Strategy::FixedWindow);
        assert!(s.check(&fixed, 0).allowed);
        assert!(!s.check(&fixed, 1).allowed);
        assert!(s.check(&bucket, 2).allowed);
        assert_eq!(s.strategy(), Strategy::TokenBucket);
    }

    #[test]
    fn state_stays_small() {
        // The registry keeps one of these per key; 1,000,000 keys must fit in
        // well under 200 MB together with the map and the key bytes.
        assert!(std::mem::size_of::<KeyState>() <= 32);
    }
}
