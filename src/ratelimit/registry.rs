//! The in-process `RateLimiter`: config lookup, sharded per-key state, purging of idle keys.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use arc_swap::ArcSwap;

use super::{Clock, Decision, KeyState, Quota, RateLimitConfig, Strategy, ValidationError};

/// Number of independently locked parts of the key map. 64 keeps the chance
/// that two of a few dozen request handlers meet on one lock small, while a
/// purge pass only ever holds 1/64 of the keys.
const SHARDS: usize = 64;

/// Slack before an expired key is dropped, so a purge racing a request at the
/// exact expiry instant (or a clock that stepped back a little) never drops
/// state that is still in use.
pub const PURGE_MARGIN_MS: u64 = 1_000;

/// Default cap on stored keys. A key costs 57 bytes in the table, 65–130
/// with the table's spare capacity, so the cap bounds the limiter at about
/// 0.5 GB even under a flood with 30-day windows.
/// Past it new keys are still decided, as a new key, but not remembered until
/// a purge makes room; see `RateLimiter::with_max_keys`.
pub const DEFAULT_MAX_KEYS: usize = 4_000_000;

/// Separates source from identifier in the digested key. 0xFF never occurs
/// in UTF-8, so `("ab", "c")` and `("a", "bc")` can't collide.
const SEPARATOR: u8 = 0xFF;

/// Shared by every request handler (`Send + Sync`); see `docs/rate-limits.md`.
pub struct RateLimiter {
    rules: ArcSwap<RuleSet>,
    /// Serialises config changes so read-modify-write updates and the
    /// hand-out of quota ids don't interleave. Never taken by `check`.
    writer: Mutex<u32>,
    shards: Box<[Shard]>,
    /// Two independently keyed (random per process) hashers, whose outputs
    /// together make a key's 128-bit digest; see `Key`.
    key_hashers: [RandomState; 2],
    clock: Arc<dyn Clock>,
    max_keys_per_shard: usize,
    untracked: AtomicU64,
}

/// A std `Mutex`, not tokio's: a critical section is one hash lookup and a
/// few integer operations and never spans an `.await`, so blocking is cheaper
/// than an async lock's bookkeeping; an uncontended std (futex) lock is two
/// atomic operations. Not an `RwLock`: every check writes.
/// Cache-line aligned so neighbouring shards' locks don't false-share.
#[repr(align(64))]
struct Shard {
    map: Mutex<KeyMap>,
}

type KeyMap = HashMap<Key, Slot, BuildHasherDefault<KeyHasher>>;

impl Shard {
    fn lock(&self) -> MutexGuard<'_, KeyMap> {
        // A panic elsewhere while holding the lock can't leave a slot in a
        // state worse than "some counts slightly off", and the limiter must
        // keep answering, so poisoning is ignored.
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A (source, identifier) pair as stored: a 128-bit keyed digest, 16 bytes
/// whatever the identifier's length, with no allocation per key.
///
/// Identifiers are partly attacker-chosen, so storing them verbatim would
/// cost a heap block each (48 bytes for a GitHub login) and need a length
/// cap. Two SipHash outputs under random per-process keys behave as a random
/// 128-bit function nobody outside the process can evaluate: the chance that
/// any two of a billion keys share a digest is about 10⁻²¹, and crafting a
/// collision would need the keys. The price is that keys can't be listed,
/// which nothing needs (a store-backed limiter keys its rows by the text).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Key {
    /// Chooses the shard.
    shard_bits: u64,
    /// Hashes within the shard's map.
    map_bits: u64,
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Already uniformly random and independent of `shard_bits`: no need
        // to hash it again (equality still compares all 128 bits).
        state.write_u64(self.map_bits);
    }
}

/// Passes a `Key`'s `map_bits` through as the hash.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Only reached if something other than `Key` is hashed with it.
        for byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*byte);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Per-key memory: 40 bytes here and the 16-byte `Key`, plus the map's
/// control byte and spare capacity (about 120 bytes a key in all).
struct Slot {
    state: KeyState,
    /// Which quota produced `state`; a different one means the key's limit
    /// changed and the state restarts.
    quota_id: u32,
    /// `KeyState::expires_at_ms` in whole seconds, rounded up (u32 seconds
    /// last until 2106 and keep the slot at 40 bytes).
    expires_s: u32,
}

impl Slot {
    fn new(rule: &Rule) -> Self {
        Self {
            state: KeyState::new(rule.quota.strategy),
            quota_id: rule.id,
            expires_s: 0,
        }
    }

    fn check(&mut self, rule: &Rule, now_ms: u64) -> Decision {
        if self.quota_id != rule.id {
            *self = Self::new(rule);
        }
        let decision = self.state.check(&rule.quota, now_ms);
        let expires_ms = self.state.expires_at_ms(&rule.quota);
        self.expires_s = u32::try_from(expires_ms.div_ceil(1000)).unwrap_or(u32::MAX);
        decision
    }

    fn is_idle(&self, now_ms: u64) -> bool {
        (u64::from(self.expires_s) * 1000).saturating_add(PURGE_MARGIN_MS) <= now_ms
    }
}

#[derive(Clone, Copy, Debug)]
struct Rule {
    quota: Quota,
    id: u32,
}

/// The compiled config set, swapped whole on every change so a check sees
/// either the old set or the new one, never a mix.
struct RuleSet {
    /// As given (deduplicated), for `configs()`.
    configs: Vec<RateLimitConfig>,
    by_source: NameMap<SourceRules>,
    default: Rule,
    /// Ids of every quota in this set; a quota still present in the next set
    /// keeps its id, so keys whose limit did not change keep their state.
    ids: HashMap<Quota, u32>,
}

#[derive(Default)]
struct SourceRules {
    exact: NameMap<Rule>,
    any: Option<Rule>,
}

/// The config maps hash with FNV-1a rather than SipHash: their entries are
/// written by the operator, not by requests, so there is nothing to flood (a
/// request's identifier only probes them), and on short names SipHash would
/// cost as much as the rest of the lookup.
type NameMap<V> = HashMap<String, V, BuildHasherDefault<NameHasher>>;

struct NameHasher(u64);

impl Default for NameHasher {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for NameHasher {
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl RuleSet {
    fn build(
        configs: Vec<RateLimitConfig>,
        default: Quota,
        previous_ids: &HashMap<Quota, u32>,
        next_id: &mut u32,
    ) -> Self {
        let mut ids = HashMap::new();
        let mut rule_for = |quota: Quota| {
            let id = *ids.entry(quota).or_insert_with(|| {
                previous_ids.get(&quota).copied().unwrap_or_else(|| {
                    *next_id = next_id.wrapping_add(1);
                    *next_id
                })
            });
            Rule { quota, id }
        };
        let default = rule_for(default);

        // Last entry for a (source, identifier) wins, at the first one's place.
        let mut deduped: Vec<RateLimitConfig> = Vec::with_capacity(configs.len());
        let mut position: HashMap<(String, String), usize> = HashMap::new();
        for config in configs {
            let key = (config.source.clone(), config.identifier.clone());
            match position.get(&key) {
                Some(&i) => deduped[i] = config,
                None => {
                    position.insert(key, deduped.len());
                    deduped.push(config);
                }
            }
        }

        let mut by_source: NameMap<SourceRules> = NameMap::default();
        for config in &deduped {
            let rule = rule_for(Quota::from_config(config));
            let rules = by_source.entry(config.source.clone()).or_default();
            if config.identifier == "*" {
                rules.any = Some(rule);
            } else {
                rules.exact.insert(config.identifier.clone(), rule);
            }
        }
        Self {
            configs: deduped,
            by_source,
            default,
            ids,
        }
    }

    fn lookup(&self, source: &str, identifier: &str) -> &Rule {
        self.by_source
            .get(source)
            .and_then(|rules| rules.exact.get(identifier).or(rules.any.as_ref()))
            .unwrap_or(&self.default)
    }
}

impl RateLimiter {
    /// `default_limit` requests per `default_window_ms`, sliding window, for
    /// every key without a config. Out-of-range defaults are clamped
    /// (limit >= 1, 1 ms <= window <= 30 days) rather than refused: they come
    /// from the server's own validated config.
    pub fn new(default_limit: u64, default_window_ms: u64, clock: Arc<dyn Clock>) -> Self {
        let mut next_id = 0;
        let default = Quota::new(
            Strategy::SlidingWindow,
            default_limit,
            default_window_ms,
            None,
        );
        let rules = RuleSet::build(Vec::new(), default, &HashMap::new(), &mut next_id);
        Self {
            rules: ArcSwap::from_pointee(rules),
            writer: Mutex::new(next_id),
            shards: (0..SHARDS)
                .map(|_| Shard {
                    map: Mutex::new(KeyMap::default()),
                })
                .collect(),
            key_hashers: [RandomState::new(), RandomState::new()],
            clock,
            max_keys_per_shard: DEFAULT_MAX_KEYS.div_ceil(SHARDS),
            untracked: AtomicU64::new(0),
        }
    }

    /// Caps the number of stored keys (spread over the shards, so a shard is
    /// full at `max_keys / 64`). A request for a new key while its shard is
    /// full is decided as a new key — which is what every first request gets
    /// anyway — but not remembered, and counted in `untracked_checks`. Keys
    /// already stored keep being limited exactly. This bounds memory even
    /// with long windows, where purging alone would keep a flood for weeks.
    pub fn with_max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys_per_shard = max_keys.div_ceil(SHARDS).max(1);
        self
    }

    /// Replaces the whole config set; the next `check` uses it. Keys whose
    /// quota (strategy, limit, window, burst) changed start afresh; the others
    /// keep their state. Expects validated configs (`try_set_configs`
    /// validates); out-of-range numbers are clamped so they cannot panic.
    pub fn set_configs(&self, configs: Vec<RateLimitConfig>) {
        self.update(|_| configs);
    }

    /// `set_configs` after validating every entry; on error nothing changes
    /// and the field is prefixed with the entry's index (`[3].window`).
    pub fn try_set_configs(&self, configs: Vec<RateLimitConfig>) -> Result<(), ValidationError> {
        for (i, config) in configs.iter().enumerate() {
            config.validate().map_err(|e| e.at_index(i))?;
        }
        self.set_configs(configs);
        Ok(())
    }

    /// Adds or replaces the config for its (source, identifier) — the admin
    /// `PUT /admin/rate-limits` on a single node.
    pub fn upsert(&self, config: RateLimitConfig) -> Result<(), ValidationError> {
        config.validate()?;
        self.update(|mut configs| {
            configs.push(config);
            configs
        });
        Ok(())
    }

    /// Removes the config for exactly (source, identifier); `"*"` removes the
    /// source's wildcard. Returns whether there was one.
    pub fn remove(&self, source: &str, identifier: &str) -> bool {
        let mut removed = false;
        self.update(|mut configs| {
            let before = configs.len();
            configs.retain(|c| !(c.source == source && c.identifier == identifier));
            removed = configs.len() != before;
            configs
        });
        removed
    }

    fn update(&self, change: impl FnOnce(Vec<RateLimitConfig>) -> Vec<RateLimitConfig>) {
        let mut next_id = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.rules.load();
        let configs = change(current.configs.clone());
        let rules = RuleSet::build(configs, current.default.quota, &current.ids, &mut next_id);
        self.rules.store(Arc::new(rules));
    }

    pub fn configs(&self) -> Vec<RateLimitConfig> {
        self.rules.load().configs.clone()
    }

    /// Lookup order: exact (source, identifier), then (source, "*"), then the
    /// default. Consumes one unit if allowed.
    pub fn check(&self, source: &str, identifier: &str) -> Decision {
        let now_ms = self.clock.now_ms();
        let rules = self.rules.load();
        let rule = rules.lookup(source, identifier);
        let key = self.key(source, identifier);
        let shard = &self.shards[key.shard_bits as usize % SHARDS];

        let mut map = shard.lock();
        if let Some(slot) = map.get_mut(&key) {
            return slot.check(rule, now_ms);
        }
        let mut slot = Slot::new(rule);
        let decision = slot.check(rule, now_ms);
        if map.len() < self.max_keys_per_shard {
            map.insert(key, slot);
        } else {
            self.untracked.fetch_add(1, Ordering::Relaxed);
        }
        decision
    }

    /// The quota that applies to `source:identifier` (the lookup order of `check`), for a
    /// limiter that keeps the counts elsewhere (`shared::SharedLimiter`).
    pub fn quota(&self, source: &str, identifier: &str) -> Quota {
        self.rules.load().lookup(source, identifier).quota
    }

    /// Drops the keys whose state has become indistinguishable from a new
    /// key's (fixed window: its window ended; sliding window: both counted
    /// windows passed; token bucket: refilled to full) for at least
    /// `PURGE_MARGIN_MS`, so dropping them changes no future answer.
    /// Locks one shard at a time: concurrent checks wait at most for one
    /// shard's pass. Returns how many keys were dropped.
    pub fn purge_idle(&self) -> usize {
        let now_ms = self.clock.now_ms();
        let mut dropped = 0;
        for shard in self.shards.iter() {
            let mut map = shard.lock();
            let before = map.len();
            map.retain(|_, slot| !slot.is_idle(now_ms));
            dropped += before - map.len();
            // The table keeps its peak size after a flood unless told
            // otherwise; give the memory back once it is mostly empty.
            if map.capacity() > 128 && map.len() < map.capacity() / 4 {
                let keep = map.len() * 2;
                map.shrink_to(keep);
            }
        }
        dropped
    }

    pub fn key_count(&self) -> usize {
        self.shards.iter().map(|shard| shard.lock().len()).sum()
    }

    /// Checks of new keys that could not be stored because the key cap was
    /// reached (see `with_max_keys`); worth exporting as a metric.
    pub fn untracked_checks(&self) -> u64 {
        self.untracked.load(Ordering::Relaxed)
    }

    fn key(&self, source: &str, identifier: &str) -> Key {
        let digest = |hasher: &RandomState| {
            let mut h = hasher.build_hasher();
            h.write(source.as_bytes());
            h.write_u8(SEPARATOR);
            h.write(identifier.as_bytes());
            h.finish()
        };
        Key {
            shard_bits: digest(&self.key_hashers[0]),
            map_bits: digest(&self.key_hashers[1]),
        }
    }
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rules = self.rules.load();
        f.debug_struct("RateLimiter")
            .field("default", &rules.default.quota)
            .field("configs", &rules.configs.len())
            .field("max_keys_per_shard", &self.max_keys_per_shard)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::ManualClock;

    const T0: u64 = 1_764_170_000_000;

    fn limiter(default_limit: u64, window: u64) -> (RateLimiter, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new(T0));
        (
            RateLimiter::new(default_limit, window, clock.clone()),
            clock,
        )
    }

    fn config(
        source: &str,
        identifier: &str,
        limit: u64,
        window: u64,
        strategy: Option<Strategy>,
    ) -> RateLimitConfig {
        RateLimitConfig {
            source: source.into(),
            identifier: identifier.into(),
            limit,
            window,
            burst: None,
            strategy,
        }
    }

    fn allowed_in_a_row(rl: &RateLimiter, source: &str, identifier: &str) -> u64 {
        let mut n = 0;
        while rl.check(source, identifier).allowed {
            n += 1;
            assert!(n < 10_000, "no limit applied");
        }
        n
    }

    #[test]
    fn is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<RateLimiter>();
    }

    #[test]
    fn quota_follows_the_lookup_order() {
        let (rl, _) = limiter(5, 60_000);
        rl.set_configs(vec![
            config("github", "*", 2, 1000, Some(Strategy::FixedWindow)),
            config("github", "octocat", 4, 2000, None),
        ]);
        let q = rl.quota("github", "octocat");
        assert_eq!(
            (q.strategy, q.limit, q.window_ms),
            (Strategy::SlidingWindow, 4, 2000)
        );
        assert_eq!(rl.quota("github", "x").strategy, Strategy::FixedWindow);
        assert_eq!(rl.quota("linear", "x").limit, 5);
        assert_eq!(rl.key_count(), 0, "looking up counts nothing");
    }

    #[test]
    fn slot_stays_small() {
        assert!(std::mem::size_of::<Slot>() <= 40);
    }

    #[test]
    fn default_is_a_sliding_window() {
        let (rl, clock) = limiter(3, 1000);
        assert_eq!(allowed_in_a_row(&rl, "github", "octocat"), 3);
        let d = rl.check("github", "octocat");
        assert_eq!((d.limit, d.remaining), (3, 0));
        // Fixed window would allow 3 at the next window start; the weighted
        // previous window still counts fully at offset 0.
        clock.set(T0 - T0 % 1000 + 1000);
        assert!(!rl.check("github", "octocat").allowed);
        clock.advance(1);
        assert!(rl.check("github", "octocat").allowed);
    }

    #[test]
    fn lookup_order_exact_then_wildcard_then_default() {
        let (rl, _) = limiter(5, 60_000);
        rl.set_configs(vec![
            config("github", "*", 2, 60_000, None),
            config("github", "octocat", 4, 60_000, None),
        ]);
        assert_eq!(allowed_in_a_row(&rl, "github", "octocat"), 4);
        assert_eq!(allowed_in_a_row(&rl, "github", "hubot"), 2);
        assert_eq!(allowed_in_a_row(&rl, "linear", "octocat"), 5);
        // A literal "*" identifier gets the wildcard, not something else.
        assert_eq!(allowed_in_a_row(&rl, "github", "*"), 2);
    }

    #[test]
    fn keys_are_per_source_and_identifier() {
        let (rl, _) = limiter(1, 60_000);
        assert!(rl.check("github", "a").allowed);
        assert!(rl.check("linear", "a").allowed);
        assert!(rl.check("github", "b").allowed);
        // ("ab", "c") and ("a", "bc") must not share a key.
        assert!(rl.check("ab", "c").allowed);
        assert!(rl.check("a", "bc").allowed);
        assert!(!rl.check("github", "a").allowed);
        assert_eq!(rl.key_count(), 5);
    }

    #[test]
    fn each_strategy_is_reachable_through_configs() {
        let (rl, clock) = limiter(100, 1000);
        rl.set_configs(vec![
            config("s", "fixed", 2, 1000, Some(Strategy::FixedWindow)),
            RateLimitConfig {
                burst: Some(4),
                ..config("s", "bucket", 2, 1000, Some(Strategy::TokenBucket))
            },
        ]);
        clock.set(T0 - T0 % 1000 + 999);
        assert_eq!(allowed_in_a_row(&rl, "s", "fixed"), 2);
        assert_eq!(allowed_in_a_row(&rl, "s", "bucket"), 4);
        assert_eq!(rl.check("s", "bucket").limit, 4);
        clock.advance(1);
        assert_eq!(allowed_in_a_row(&rl, "s", "fixed"), 2, "new aligned window");
        assert_eq!(
            allowed_in_a_row(&rl, "s", "bucket"),
            0,
            "1 ms refills 0.002 tokens"
        );
        clock.advance(499);
        assert_eq!(allowed_in_a_row(&rl, "s", "bucket"), 1);
    }

    #[test]
    fn set_configs_takes_effect_and_restarts_changed_keys_only() {
        let (rl, _) = limiter(10, 60_000);
        rl.set_configs(vec![
            config("github", "*", 3, 60_000, None),
            config("linear", "*", 3, 60_000, None),
        ]);
        assert_eq!(allowed_in_a_row(&rl, "github", "a"), 3);
        assert_eq!(allowed_in_a_row(&rl, "linear", "a"), 3);
        assert_eq!(allowed_in_a_row(&rl, "slack", "a"), 10);

        rl.set_configs(vec![
            config("github", "*", 5, 60_000, None),
            config("linear", "*", 3, 60_000, None),
        ]);
        assert_eq!(rl.configs()[0].limit, 5);
        // github's limit changed: its keys start from zero under the new limit.
        assert_eq!(allowed_in_a_row(&rl, "github", "a"), 5);
        // linear's and the default's did not: still exhausted.
        assert_eq!(allowed_in_a_row(&rl, "linear", "a"), 0);
        assert_eq!(allowed_in_a_row(&rl, "slack", "a"), 0);

        // Back to no configs: github falls to the default (a new quota for it).
        rl.set_configs(Vec::new());
        assert_eq!(allowed_in_a_row(&rl, "github", "a"), 10);
        assert_eq!(allowed_in_a_row(&rl, "slack", "a"), 0);
    }

    #[test]
    fn a_key_moving_to_an_identical_quota_keeps_its_state() {
        let (rl, _) = limiter(10, 60_000);
        rl.set_configs(vec![config("github", "*", 3, 60_000, None)]);
        assert_eq!(allowed_in_a_row(&rl, "github", "a"), 3);
        rl.set_configs(vec![
            config("github", "*", 3, 60_000, None),
            config("github", "a", 3, 60_000, None),
        ]);
        assert_eq!(allowed_in_a_row(&rl, "github", "a"), 0);
    }

    #[test]
    fn upsert_remove_and_validation() {
        let (rl, _) = limiter(10, 60_000);
        rl.upsert(config("github", "*", 3, 60_000, None))
            .expect("valid");
        rl.upsert(config("github", "*", 4, 60_000, None))
            .expect("valid");
        assert_eq!(rl.configs().len(), 1);
        assert_eq!(rl.configs()[0].limit, 4);
        let err = rl
            .upsert(config("github", "x", 0, 60_000, None))
            .expect_err("invalid");
        assert_eq!(err.field, "limit");
        let err = rl
            .try_set_configs(vec![
                config("github", "*", 3, 60_000, None),
                config("github", "x", 3, 0, None),
            ])
            .expect_err("invalid");
        assert_eq!(err.to_string(), "[1].window: must be at least 1 ms");
        assert_eq!(rl.configs()[0].limit, 4, "a rejected set changes nothing");
        assert!(rl.remove("github", "*"));
        assert!(!rl.remove("github", "*"));
        assert!(rl.configs().is_empty());
    }

    #[test]
    fn duplicate_entries_last_one_wins() {
        let (rl, _) = limiter(10, 60_000);
        rl.set_configs(vec![
            config("github", "*", 3, 60_000, None),
            config("linear", "*", 1, 60_000, None),
            config("github", "*", 2, 60_000, None),
        ]);
        let configs = rl.configs();
        assert_eq!(configs.len(), 2);
        assert_eq!(
            (configs[0].source.as_str(), configs[0].limit),
            ("github", 2)
        );
        assert_eq!(allowed_in_a_row(&rl, "github", "a"), 2);
    }

    #[test]
    fn unvalidated_zero_values_cannot_panic() {
        let (rl, _) = limiter(0, 0);
        rl.set_configs(vec![RateLimitConfig {
            burst: Some(0),
            ..config("s", "*", 0, 0, Some(Strategy::TokenBucket))
        }]);
        assert!(rl.check("s", "x").allowed);
        assert!(rl.check("other", "x").allowed);
    }

    #[test]
    fn purge_drops_only_idle_keys() {
        let (rl, clock) = limiter(10, 1000);
        rl.set_configs(vec![
            config("fixed", "*", 10, 1000, Some(Strategy::FixedWindow)),
            config("bucket", "*", 1, 10_000, Some(Strategy::TokenBucket)),
        ]);
        let start = T0 - T0 % 1000;
        clock.set(start);
        rl.check("sliding", "old");
        rl.check("fixed", "old");
        rl.check("bucket", "old");
        clock.set(start + 1_500);
        rl.check("sliding", "new");
        rl.check("fixed", "new");
        assert_eq!(
            rl.purge_idle(),
            0,
            "nothing is past its expiry plus the margin"
        );

        // fixed/old's window ended at +1000: idle from +2000 (margin 1 s).
        clock.set(start + 2_000);
        assert_eq!(rl.purge_idle(), 1);
        assert_eq!(rl.key_count(), 4);
        // sliding/old still weighs through the next window (until +2000) and
        // fixed/new's window ended at +2000: both idle from +3000.
        clock.set(start + 2_999);
        assert_eq!(rl.purge_idle(), 0);
        clock.set(start + 3_000);
        assert_eq!(rl.purge_idle(), 2);
        // sliding/new was counted in [+1000, +2000): it weighs until +3000.
        clock.set(start + 4_000);
        assert_eq!(rl.purge_idle(), 1);
        // bucket/old refills its one token 10 s after it was taken.
        clock.set(start + 10_999);
        assert_eq!(rl.purge_idle(), 0);
        assert_eq!(rl.key_count(), 1);
        clock.set(start + 11_000);
        assert_eq!(rl.purge_idle(), 1);
        assert_eq!(rl.key_count(), 0);
    }

    #[test]
    fn purged_key_answers_like_a_kept_one() {
        let (kept, clock_a) = limiter(3, 1000);
        let (purged, clock_b) = limiter(3, 1000);
        for rl in [&kept, &purged] {
            for _ in 0..5 {
                rl.check("github", "a");
            }
        }
        for clock in [&clock_a, &clock_b] {
            clock.advance(3_000 + PURGE_MARGIN_MS);
        }
        assert_eq!(purged.purge_idle(), 1);
        assert_eq!(kept.check("github", "a"), purged.check("github", "a"));
    }

    #[test]
    fn purge_gives_memory_back_after_a_flood() {
        let (rl, clock) = limiter(1, 1000);
        for i in 0..50_000 {
            rl.check("github", &format!("user-{i}"));
        }
        clock.advance(10_000);
        assert_eq!(rl.purge_idle(), 50_000);
        let capacity: usize = rl.shards.iter().map(|s| s.lock().capacity()).sum();
        assert!(capacity < 50_000, "capacity {capacity}");
    }

    #[test]
    fn long_identifiers_cost_the_same_and_stay_distinct() {
        let (rl, _) = limiter(1, 60_000);
        let long_a = format!("{}a", "x".repeat(5_000));
        let long_b = format!("{}b", "x".repeat(5_000));
        assert!(rl.check("github", &long_a).allowed);
        assert!(
            rl.check("github", &long_b).allowed,
            "same 5000-byte prefix, other key"
        );
        assert!(!rl.check("github", &long_a).allowed);
        assert!(!rl.check("github", &long_b).allowed);
        assert!(
            rl.check("github", "").allowed,
            "an empty identifier is a key too"
        );
        assert_eq!(rl.key_count(), 3);
        assert_eq!(std::mem::size_of::<(Key, Slot)>(), 56);
    }

    #[test]
    fn key_cap_decides_new_keys_without_storing_them() {
        let (rl, _) = limiter(1, 60_000);
        let rl = rl.with_max_keys(SHARDS); // one key per shard
        for i in 0..5_000 {
            assert!(rl.check("github", &format!("u{i}")).allowed);
        }
        assert_eq!(rl.key_count(), SHARDS);
        assert_eq!(rl.untracked_checks(), 5_000 - SHARDS as u64);
        // A stored key is still limited.
        let refused = (0..5_000).any(|i| !rl.check("github", &format!("u{i}")).allowed);
        assert!(refused);
    }

    #[test]
    fn concurrent_checks_never_exceed_the_limit() {
        let (rl, _) = limiter(1_000, 60_000);
        let rl = Arc::new(rl);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let rl = Arc::clone(&rl);
                std::thread::spawn(move || {
                    (0..500)
                        .filter(|_| rl.check("github", "hot").allowed)
                        .count()
                })
            })
            .collect();
        let allowed: usize = threads.into_iter().map(|t| t.join().unwrap_or(0)).sum();
        assert_eq!(allowed, 1_000);
    }

    #[test]
    fn headers_of_a_refusal() {
        let (rl, clock) = limiter(10, 60_000);
        rl.set_configs(vec![config(
            "github",
            "*",
            1,
            60_000,
            Some(Strategy::FixedWindow),
        )]);
        clock.set(1_764_170_000_500);
        rl.check("github", "octocat");
        let d = rl.check("github", "octocat");
        let headers: Vec<_> = d.headers().collect();
        // Window [1_764_169_980_000, 1_764_170_040_000): 39.5 s left → 40.
        assert_eq!(
            headers,
            vec![
                ("x-ratelimit-limit", "1".to_string()),
                ("x-ratelimit-remaining", "0".to_string()),
                ("x-ratelimit-reset", "1764170040".to_string()),
                ("retry-after", "40".to_string()),
            ]
        );
    }
}
