//! Rate limits shared by the nodes of a cluster (API.md section 9): the cluster as a whole
//! never admits more than a key's limit, whichever nodes the requests reach.
//!
//! Each key has one set of counters in the shared store, kept with the single node's arithmetic
//! (`fixed_window`, `sliding_window`, `token_bucket`) over units *leased* rather than requests
//! seen. A node leases a share of what a key has left in one atomic statement
//! (`Store::acquire_rate_leases`) and spends it in memory: a request that finds a lease with
//! units left costs a lock and an increment, no database round trip. A request that finds none
//! waits for one statement; concurrent ones for the same key wait for the same lease, which asks
//! for all of them (and for more the faster the node spends), and the leases of all the keys
//! waiting at once go in one statement (`acquirer`, batched like the group commit). For a busy
//! key the next lease is asked for ahead of need and takes over when the one in use runs out,
//! so its webhooks do not wait for renewals. A lease is given back, with what was spent of it,
//! when the next one takes over, when the node stops using the key, and at shutdown; the store
//! then returns the unspent part to the key.
//!
//! Why it never overshoots: a unit is leased only if a request at that instant would be allowed
//! by the counters, which count every unit leased by any node; spending it later stays within
//! the strategy's bound (a fixed or sliding window lease is spent only inside its window, where
//! the previous window's weight only falls; leased tokens hold the bucket's capacity down until
//! settled, and the tokens spent are charged when settled, never earlier). It may admit less:
//! units leased by one node are refused to the others until spent or given back.
//!
//! A node that dies holding a lease: every webhook admitted under a lease is recorded against
//! it in the transaction that stores the webhook (`Store::commit_event_spending`), and no 2xx
//! is sent before that commit, so when the lease expires (`rate_lease_ms`) the store knows
//! exactly what it admitted and gives the rest back. A node uses a lease for at most half its
//! life, so its last commits land well before it expires.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use uuid::Uuid;

use super::{
    Decision, KeyState, Quota, RateLimiter, Strategy, div_rem, fixed_window, sliding_window,
    token_bucket,
};
use crate::store::{LeaseGrant, LeaseRequest, LeaseReturn, Store, StoreError};

/// How long a lease lives in the store by default (`rate_lease_ms`): a killed node's unspent
/// share comes back within this, as its deliveries move within `node_lease_ms` (also 10 s).
/// Nodes use a lease for half of it, so a key busy on a node costs that node one store round
/// trip per 5 s at least (the lease runs out of units first when the key is busier).
pub const DEFAULT_LEASE_MS: u64 = 10_000;

/// A lease's share of a key's capacity is at most 1/8 of it, so one busy node cannot hold the
/// whole quota while another goes without (units leased are refused to the others).
const MAX_SHARE_DIVISOR: u64 = 8;

/// Rounds of waiting for an acquisition a request goes through before it is refused: under
/// heavy contention on a nearly exhausted key, refusing (admitting less) beats waiting on.
const MAX_ROUNDS: usize = 8;

const SHARDS: usize = 16;

/// Most keys leased in one statement.
const ACQUIRE_BATCH: usize = 512;
/// Lease statements in flight at once: while both wait, new requests gather into the next.
const ACQUIRE_LANES: usize = 2;

/// A lease request on its way to the store, and where its answer goes.
type AcquireJob = (LeaseRequest, oneshot::Sender<Result<LeaseGrant, String>>);

/// What admission decided, and the lease that paid for an allowed request (the commit records
/// the spend against it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    pub decision: Decision,
    pub lease: Option<Uuid>,
}

/// The shared limiter of one node; see the module's documentation.
pub struct SharedLimiter {
    /// The configured limits (lookup by source and identifier); its own counters are unused.
    limits: Arc<RateLimiter>,
    store: Arc<dyn Store>,
    /// To the task that batches lease requests (`acquirer`).
    acquire: mpsc::Sender<AcquireJob>,
    lease_ms: u64,
    shards: Box<[Mutex<HashMap<String, Slot>>]>,
    hasher: RandomState,
    /// Leases to give back that no acquisition has carried yet.
    returns: Mutex<Vec<LeaseReturn>>,
    /// A monotonic clock in epoch-like ms: lease lifetimes must not move with the wall clock.
    epoch: Instant,
    epoch_ms: u64,
}

/// One key as this node knows it.
struct Slot {
    quota: Quota,
    lease: Option<Lease>,
    /// The lease asked for in advance, while `lease` still had units (see `Lease::prefetch`):
    /// it takes over when `lease` runs out, so a busy key's webhooks do not wait for renewals.
    next: Option<Lease>,
    /// Leases taken out while the slot was locked, to give back once it no longer is.
    retired: Vec<LeaseReturn>,
    /// The acquisition in flight; its value becomes `Some(outcome)` when it is done.
    acquiring: Option<watch::Receiver<Option<Result<(), String>>>>,
    /// Requests waiting for a lease right now (sizes the next acquisition).
    waiting: u64,
    /// Units the next lease asks for at least: doubles while leases run out, falls back to what
    /// was used when one is given back unspent.
    want: u64,
    /// Refused by the last acquisition: later requests are refused without asking again until
    /// this (local ms), for a short while only, since other nodes may give units back.
    denied_until: u64,
    /// The shared counters as the last acquisition saw them, for the headers.
    view: Option<View>,
    last_used: u64,
}

struct Lease {
    id: Uuid,
    granted: u64,
    spent: u64,
    /// Local ms after which this node spends no more of it.
    usable_until: u64,
    /// When to ask for the next lease in advance: once this many units are spent, or from this
    /// local time (`u64::MAX`: never, as for a lease that ends with its window, whose successor
    /// can only be counted in the next window). Once per lease.
    prefetch_units: u64,
    prefetch_at: u64,
    prefetched: bool,
}

impl Lease {
    fn usable(&self, now: u64) -> bool {
        now < self.usable_until && self.spent < self.granted
    }
}

/// Why a lease is asked for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ask {
    /// No lease has units: webhooks are waiting.
    Now,
    /// The lease in use is running out: ask before it does.
    Ahead,
}

#[derive(Clone, Copy)]
struct View {
    grant: LeaseGrant,
    /// The store's clock minus ours, as an upper bound (measured from before the request was
    /// sent), so that "now" on the store's clock is never underestimated.
    offset: i64,
}

type Outcome = Option<Result<(), String>>;

impl SharedLimiter {
    /// Starts its lease-batching task: call inside the runtime.
    pub fn new(limits: Arc<RateLimiter>, store: Arc<dyn Store>, lease_ms: u64) -> SharedLimiter {
        let (acquire, jobs) = mpsc::channel(ACQUIRE_BATCH * 8);
        tokio::spawn(acquirer(store.clone(), jobs));
        SharedLimiter {
            limits,
            store,
            acquire,
            lease_ms: lease_ms.max(2),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            returns: Mutex::new(Vec::new()),
            epoch: Instant::now(),
            epoch_ms: u64::try_from(crate::clock::now_ms()).unwrap_or(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch_ms
            .saturating_add(u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    fn shard(&self, key: &str) -> MutexGuard<'_, HashMap<String, Slot>> {
        let i = (self.hasher.hash_one(key) as usize) % SHARDS;
        self.shards[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// How long a refusal is reused before the store is asked again (another node may have
    /// given units back meanwhile).
    fn recheck_ms(&self) -> u64 {
        (self.lease_ms / 8).clamp(1, 250)
    }

    /// How long a node keeps a lease of a key it receives nothing for: unused units go back to
    /// the other nodes after this.
    fn idle_ms(&self) -> u64 {
        (self.lease_ms / 8).clamp(1, 1000)
    }

    /// How often `run_upkeep` should be called.
    pub fn sweep_interval(&self) -> Duration {
        Duration::from_millis(self.recheck_ms().clamp(10, 250))
    }

    /// Decides one request of `source:identifier`, consuming a unit when allowed. Waits only
    /// when this node holds no units of the key: for one statement to the store.
    pub async fn admit(
        self: &Arc<Self>,
        source: &str,
        identifier: &str,
    ) -> Result<Admission, StoreError> {
        let quota = self.limits.quota(source, identifier);
        let key = store_key(source, identifier);
        let mut waited = false;
        for _ in 0..MAX_ROUNDS {
            let mut wait = {
                let mut shard = self.shard(&key);
                let now = self.now_ms();
                if !shard.contains_key(&key) {
                    shard.insert(key.clone(), Slot::new(quota));
                }
                let Some(slot) = shard.get_mut(&key) else {
                    break;
                };
                if waited {
                    slot.waiting = slot.waiting.saturating_sub(1);
                }
                if slot.quota != quota {
                    // The limit changed: this node's leases were of the old one.
                    slot.reset(quota);
                }
                slot.last_used = now;
                if let Some(decision) = slot.spend(now) {
                    let lease = slot.lease.as_ref().map(|l| l.id);
                    if slot.acquiring.is_none() && slot.wants_next(now) {
                        let _ = self.start_acquisition(&key, slot, now, Ask::Ahead);
                    }
                    let retired = std::mem::take(&mut slot.retired);
                    drop(shard);
                    for back in retired {
                        self.give_back(back);
                    }
                    return Ok(Admission { decision, lease });
                }
                if slot.acquiring.is_none() && now < slot.denied_until {
                    return Ok(Admission {
                        decision: slot.refusal(now, self.recheck_ms()),
                        lease: None,
                    });
                }
                slot.waiting += 1;
                waited = true;
                let rx = match &slot.acquiring {
                    Some(rx) => rx.clone(),
                    None => self.start_acquisition(&key, slot, now, Ask::Now),
                };
                let retired = std::mem::take(&mut slot.retired);
                drop(shard);
                for back in retired {
                    self.give_back(back);
                }
                rx
            };
            let outcome = match wait.wait_for(Option::is_some).await {
                Ok(v) => v.clone(),
                // The acquisition ended without an answer (the runtime is going away).
                Err(_) => Some(Err("the rate-limit lease request was dropped".into())),
            };
            if let Some(Err(e)) = outcome {
                if let Some(slot) = self.shard(&key).get_mut(&key) {
                    slot.waiting = slot.waiting.saturating_sub(1);
                }
                return Err(StoreError::Unavailable(format!(
                    "cannot lease rate-limit quota: {e}"
                )));
            }
        }
        // Still nothing after several rounds: the key is contended and nearly exhausted.
        let now = self.now_ms();
        let mut shard = self.shard(&key);
        let decision = match shard.get_mut(&key) {
            Some(slot) => {
                if waited {
                    slot.waiting = slot.waiting.saturating_sub(1);
                }
                slot.refusal(now, self.recheck_ms())
            }
            None => refusal_without_view(&quota, now, self.recheck_ms()),
        };
        Ok(Admission {
            decision,
            lease: None,
        })
    }

    /// Sends one lease request for `slot` from a task of its own (a request whose client goes
    /// away must not cancel what the others wait for). Asked `Now`, it carries back the spent
    /// lease; asked `Ahead`, the lease in use goes on until the new one takes over.
    fn start_acquisition(
        self: &Arc<Self>,
        key: &str,
        slot: &mut Slot,
        now: u64,
        ask: Ask,
    ) -> watch::Receiver<Outcome> {
        let (tx, rx) = watch::channel(None);
        slot.acquiring = Some(rx.clone());
        let give_back = match ask {
            Ask::Now => {
                if let Some(next) = slot.take_next() {
                    slot.retired.push(next);
                }
                slot.take_lease()
            }
            Ask::Ahead => None,
        };
        let quota = slot.quota;
        let want = slot.want.max(slot.waiting).clamp(1, max_share(&quota));
        let request = LeaseRequest {
            key: key.to_string(),
            strategy: quota.strategy.as_str(),
            limit: quota.limit,
            window_ms: quota.window_ms,
            burst: quota.burst,
            want,
            lease: Uuid::now_v7(),
            lease_ms: self.lease_ms,
            give_back,
        };
        let me = self.clone();
        let key = key.to_string();
        tokio::spawn(async move {
            let sent = now;
            let (reply, answer) = oneshot::channel();
            let result = match me.acquire.send((request.clone(), reply)).await {
                Ok(()) => answer
                    .await
                    .unwrap_or_else(|_| Err("the lease request was dropped".into())),
                Err(_) => Err("the rate limiter is stopping".into()),
            };
            let outcome = match result {
                Ok(grant) => {
                    let now = me.now_ms();
                    let mut shard = me.shard(&key);
                    match shard.get_mut(&key) {
                        Some(slot) if slot.quota == quota => {
                            slot.install(&request, grant, sent, now, me.lease_ms);
                            slot.acquiring = None;
                            let retired = std::mem::take(&mut slot.retired);
                            drop(shard);
                            for back in retired {
                                me.give_back(back);
                            }
                        }
                        other => {
                            // The limit changed meanwhile: this lease is of the old one.
                            if let Some(slot) = other {
                                slot.acquiring = None;
                            }
                            drop(shard);
                            if grant.granted > 0 {
                                me.give_back(LeaseReturn {
                                    id: request.lease,
                                    spent: 0,
                                });
                            }
                        }
                    }
                    Ok(())
                }
                Err(e) => {
                    tracing::warn!(key = %key, error = %e, "leasing rate-limit quota failed");
                    if let Some(slot) = me.shard(&key).get_mut(&key) {
                        slot.acquiring = None;
                    }
                    // The give-back went nowhere: the sweep tries it again.
                    if let Some(back) = request.give_back {
                        me.give_back(back);
                    }
                    Err(e)
                }
            };
            tx.send_replace(Some(outcome));
        });
        rx
    }

    fn give_back(&self, back: LeaseReturn) {
        self.returns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(back);
    }

    /// Takes back the leases this node no longer uses (spent, past their use, or idle), and
    /// forgets keys nobody asked for in a while; returns what to give back to the store.
    fn sweep(&self, everything: bool) -> Vec<LeaseReturn> {
        let now = self.now_ms();
        let idle = self.idle_ms();
        let forget = self.lease_ms.max(10_000);
        let mut out =
            std::mem::take(&mut *self.returns.lock().unwrap_or_else(PoisonError::into_inner));
        for shard in self.shards.iter() {
            let mut map = shard.lock().unwrap_or_else(PoisonError::into_inner);
            map.retain(|_, slot| {
                out.append(&mut slot.retired);
                if slot.acquiring.is_some() {
                    return true;
                }
                let idle = now.saturating_sub(slot.last_used) >= idle;
                if let Some(l) = &slot.next
                    && (everything || idle || now >= l.usable_until)
                    && let Some(back) = slot.take_next()
                {
                    out.push(back);
                }
                if let Some(l) = &slot.lease
                    && (everything || idle || !l.usable(now))
                    && let Some(back) = slot.take_lease()
                {
                    out.push(back);
                }
                if slot.lease.is_none()
                    && let Some(next) = slot.next.take()
                {
                    // The lease in use ran out while the next one waited: it takes over.
                    slot.lease = Some(next);
                }
                slot.lease.is_some()
                    || slot.waiting > 0
                    || now < slot.denied_until
                    || now.saturating_sub(slot.last_used) < forget
            });
        }
        out
    }

    /// Gives back what this node no longer uses (call every `sweep_interval`).
    pub async fn run_upkeep(&self) {
        let back = self.sweep(false);
        self.send_back(back).await;
    }

    /// Gives back every lease this node holds (at shutdown): the other nodes get the unspent
    /// units at once rather than when the leases expire.
    pub async fn give_back_all(&self) {
        let back = self.sweep(true);
        self.send_back(back).await;
    }

    async fn send_back(&self, back: Vec<LeaseReturn>) {
        if back.is_empty() {
            return;
        }
        if let Err(e) = self.store.release_rate_leases(back.clone()).await {
            tracing::warn!(error = %e, leases = back.len(), "giving rate-limit leases back failed; they expire instead");
            // Leases past their expiry are settled by the store itself; keep trying the others
            // for a while (the store ignores leases it no longer has).
            let mut returns = self.returns.lock().unwrap_or_else(PoisonError::into_inner);
            if returns.len() < 100_000 {
                returns.extend(back);
            }
        }
    }

    /// Keys this node tracks (for tests and figures).
    pub fn key_count(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }
}

/// Sends the lease requests waiting, as many as there are (up to `ACQUIRE_BATCH`) in one
/// statement, on up to `ACQUIRE_LANES` statements at once: a node touching many keys at once
/// (a burst after a quiet spell, a start) costs a few statements, not one per key.
async fn acquirer(store: Arc<dyn Store>, mut jobs: mpsc::Receiver<AcquireJob>) {
    let lanes = Arc::new(Semaphore::new(ACQUIRE_LANES));
    loop {
        let Ok(lane) = lanes.clone().acquire_owned().await else {
            break;
        };
        let Some(first) = jobs.recv().await else {
            break;
        };
        let mut batch = vec![first];
        while batch.len() < ACQUIRE_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let store = store.clone();
        tokio::spawn(async move {
            let (requests, replies): (Vec<LeaseRequest>, Vec<_>) = batch.into_iter().unzip();
            let started = Instant::now();
            let mut result = store.acquire_rate_leases(requests.clone()).await;
            if let Err(StoreError::Database(m)) = &result
                && m.starts_with("40")
            {
                // A deadlock or serialization failure with another node: once more.
                result = store.acquire_rate_leases(requests).await;
            }
            drop(lane);
            let took = started.elapsed();
            match result {
                Ok(grants) => {
                    for (grant, reply) in grants.into_iter().zip(replies) {
                        crate::analytics::Analytics::rate_lease(Some(grant.granted > 0), took);
                        let _ = reply.send(Ok(grant));
                    }
                }
                Err(e) => {
                    let e = e.to_string();
                    for reply in replies {
                        crate::analytics::Analytics::rate_lease(None, took);
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        });
    }
}

/// Identifiers longer than this are kept in the store by their digest.
const MAX_STORED_IDENTIFIER: usize = 200;

/// The key's name in the shared store: `source:identifier`, or for a long identifier (it is
/// read from the payload, so its length is the sender's choice, and a database index entry has
/// a size limit) `source:sha256:<hex of its SHA-256>`.
fn store_key(source: &str, identifier: &str) -> String {
    if identifier.len() <= MAX_STORED_IDENTIFIER {
        return crate::ratelimit::rule_id(source, identifier);
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, identifier.as_bytes());
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("{source}:sha256:{hex}")
}

/// The most units one lease may hold.
fn max_share(quota: &Quota) -> u64 {
    (quota.limit.max(quota.burst) / MAX_SHARE_DIVISOR).max(1)
}

/// The units a node's first lease of a key asks for (more if more requests wait): a quarter of
/// the most, so that a key seen a few times a second costs a lease every few seconds, not one
/// per webhook or two (a lease costs the database about what storing a webhook does), while
/// what one node holds unused stays a thirty-second of the limit.
fn first_share(quota: &Quota) -> u64 {
    (max_share(quota) / 4).max(1)
}

impl Slot {
    fn new(quota: Quota) -> Slot {
        Slot {
            quota,
            lease: None,
            next: None,
            retired: Vec::new(),
            acquiring: None,
            waiting: 0,
            want: first_share(&quota),
            denied_until: 0,
            view: None,
            last_used: 0,
        }
    }

    /// Starts the key afresh under another quota; its leases are retired.
    fn reset(&mut self, quota: Quota) {
        let mut retired = std::mem::take(&mut self.retired);
        retired.extend(self.take_lease());
        retired.extend(self.take_next());
        let acquiring = self.acquiring.take();
        let waiting = self.waiting;
        *self = Slot::new(quota);
        self.acquiring = acquiring;
        self.waiting = waiting;
        self.retired = retired;
    }

    /// Takes the lease asked for in advance out (to give it back).
    fn take_next(&mut self) -> Option<LeaseReturn> {
        let l = self.next.take()?;
        Some(LeaseReturn {
            id: l.id,
            spent: l.spent,
        })
    }

    /// Whether to ask for the next lease now, ahead of need (once per lease): the one in use
    /// is three-quarters spent, or three-quarters through its use.
    fn wants_next(&mut self, now: u64) -> bool {
        if self.next.is_some() {
            return false;
        }
        let Some(l) = self.lease.as_mut() else {
            return false;
        };
        if l.prefetched || (l.spent < l.prefetch_units && now < l.prefetch_at) {
            return false;
        }
        l.prefetched = true;
        self.want = if l.spent >= l.prefetch_units {
            // Spent fast: twice as much next time.
            l.granted.saturating_mul(2)
        } else {
            // Three-quarters through its use: what a whole use would take at this pace.
            l.spent + l.spent / 3
        }
        .clamp(first_share(&self.quota), max_share(&self.quota));
        true
    }

    /// Takes the lease out (to give it back), learning from how much of it was used.
    fn take_lease(&mut self) -> Option<LeaseReturn> {
        let l = self.lease.take()?;
        if l.spent < l.granted {
            self.want = l.spent.max(first_share(&self.quota));
        }
        Some(LeaseReturn {
            id: l.id,
            spent: l.spent,
        })
    }

    /// Spends a unit of the lease if it has one and may still be used (the one asked for in
    /// advance takes over from a spent one): the decision to answer.
    fn spend(&mut self, now: u64) -> Option<Decision> {
        if !self.lease.as_ref().is_some_and(|l| l.usable(now))
            && self.next.as_ref().is_some_and(|l| l.usable(now))
        {
            let spent = self.lease.take().map(|l| LeaseReturn {
                id: l.id,
                spent: l.spent,
            });
            self.retired.extend(spent);
            self.lease = self.next.take();
        }
        let l = self.lease.as_mut()?;
        if !l.usable(now) {
            return None;
        }
        l.spent += 1;
        let left = l.granted - l.spent;
        if left == 0 {
            // Used up: the next lease asks for twice as much.
            self.want = (l.granted.saturating_mul(2)).min(max_share(&self.quota));
        }
        let Some(view) = self.view else {
            return Some(Decision {
                allowed: true,
                limit: self.quota.burst,
                remaining: left,
                reset_at_ms: now,
                retry_after_ms: 0,
            });
        };
        let (probe, room) = view.probe(&self.quota, now);
        Some(Decision {
            allowed: true,
            limit: probe.limit,
            remaining: room.saturating_add(left).min(probe.limit),
            reset_at_ms: probe.reset_at_ms,
            retry_after_ms: 0,
        })
    }

    /// The answer to a request refused without asking the store again.
    fn refusal(&self, now: u64, recheck_ms: u64) -> Decision {
        match self.view {
            Some(view) => {
                let (probe, room) = view.probe(&self.quota, now);
                let wait = if room == 0 {
                    probe.retry_after_ms.max(1)
                } else {
                    // The counters have room, leased to other nodes: ask again shortly.
                    recheck_ms
                };
                Decision {
                    allowed: false,
                    limit: probe.limit,
                    remaining: 0,
                    reset_at_ms: view.store_now(now).saturating_add(wait),
                    retry_after_ms: wait,
                }
            }
            None => refusal_without_view(&self.quota, now, recheck_ms),
        }
    }

    /// Takes in what an acquisition got.
    fn install(
        &mut self,
        request: &LeaseRequest,
        grant: LeaseGrant,
        sent: u64,
        now: u64,
        lease_ms: u64,
    ) {
        let offset = i64::try_from(grant.now_ms).unwrap_or(i64::MAX)
            - i64::try_from(sent).unwrap_or(i64::MAX);
        let view = View { grant, offset };
        self.view = Some(view);
        if grant.granted == 0 {
            let (probe, room) = view.probe(&self.quota, now);
            let wait = if room == 0 {
                probe.retry_after_ms
            } else {
                u64::MAX
            };
            self.denied_until = now.saturating_add(wait.clamp(1, (lease_ms / 8).clamp(1, 250)));
            return;
        }
        self.denied_until = 0;
        // Used for half its life at most (from before it was asked for), and for a window
        // strategy only inside the window it was counted in, by the store's clock.
        let use_ms = lease_ms / 2;
        let mut usable_until = sent.saturating_add(use_ms);
        let mut prefetch_at = sent.saturating_add(use_ms - use_ms / 4);
        if self.quota.strategy != Strategy::TokenBucket {
            let window_end = view.local(grant.window_start.saturating_add(self.quota.window_ms));
            if window_end <= usable_until {
                usable_until = window_end;
                prefetch_at = u64::MAX;
            }
        }
        let lease = Lease {
            id: request.lease,
            granted: grant.granted,
            spent: 0,
            usable_until,
            prefetch_units: grant.granted - grant.granted / 4,
            prefetch_at,
            prefetched: false,
        };
        if self.lease.as_ref().is_some_and(|l| l.usable(now)) {
            if let Some(old) = self.take_next() {
                self.retired.push(old);
            }
            self.next = Some(lease);
        } else {
            let old = self.lease.take().map(|l| LeaseReturn {
                id: l.id,
                spent: l.spent,
            });
            self.retired.extend(old);
            self.lease = Some(lease);
        }
    }
}

impl View {
    /// The store's clock at local time `now` (never behind it).
    fn store_now(&self, now: u64) -> u64 {
        u64::try_from(
            i64::try_from(now)
                .unwrap_or(i64::MAX)
                .saturating_add(self.offset),
        )
        .unwrap_or(0)
    }

    /// The local time at which the store's clock reads `store_ms` (never later than it is).
    fn local(&self, store_ms: u64) -> u64 {
        u64::try_from(
            i64::try_from(store_ms)
                .unwrap_or(i64::MAX)
                .saturating_sub(self.offset),
        )
        .unwrap_or(0)
    }

    /// What the shared counters would answer one more request at local time `now` (the
    /// headers' reset and limit), and how many requests they have room for.
    fn probe(&self, quota: &Quota, now: u64) -> (Decision, u64) {
        let at = self.store_now(now).max(self.grant.now_ms);
        let g = &self.grant;
        let mut state = match quota.strategy {
            Strategy::FixedWindow => KeyState::FixedWindow(fixed_window::State {
                window_start: g.window_start,
                count: g.curr,
            }),
            Strategy::SlidingWindow => KeyState::SlidingWindow(sliding_window::State {
                window_start: g.window_start,
                prev: g.prev,
                curr: g.curr,
            }),
            Strategy::TokenBucket => {
                // Leased tokens count as taken.
                let limit = u128::from(quota.limit);
                let tat = (u128::from(g.tat_ms) * limit + u128::from(g.tat_frac))
                    .max(u128::from(at) * limit)
                    + u128::from(g.outstanding) * u128::from(quota.window_ms);
                let (ms, frac) = div_rem(tat, limit);
                KeyState::TokenBucket(token_bucket::State {
                    tat_ms: u64::try_from(ms).unwrap_or(u64::MAX),
                    tat_frac: u64::try_from(frac).unwrap_or(u64::MAX),
                })
            }
        };
        let d = state.check(quota, at);
        let room = if d.allowed { d.remaining + 1 } else { 0 };
        (d, room)
    }
}

fn refusal_without_view(quota: &Quota, now: u64, recheck_ms: u64) -> Decision {
    Decision {
        allowed: false,
        limit: quota.burst,
        remaining: 0,
        reset_at_ms: now.saturating_add(recheck_ms),
        retry_after_ms: recheck_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(strategy: Strategy, limit: u64, window_ms: u64, burst: Option<u64>) -> Quota {
        Quota::new(strategy, limit, window_ms, burst)
    }

    #[test]
    fn a_lease_is_spent_inside_its_life_and_its_window() {
        let q = quota(Strategy::FixedWindow, 100, 1000, None);
        let mut slot = Slot::new(q);
        let request = LeaseRequest {
            key: "github:a".into(),
            strategy: "fixed_window",
            limit: 100,
            window_ms: 1000,
            burst: 100,
            want: 3,
            lease: Uuid::now_v7(),
            lease_ms: 2000,
            give_back: None,
        };
        // The store's clock is 5 ms ahead of ours; its window ends at 10_000.
        let grant = LeaseGrant {
            granted: 3,
            now_ms: 9_105,
            window_start: 9_000,
            curr: 3,
            ..Default::default()
        };
        slot.install(&request, grant, 9_100, 9_101, 2000);
        let d = slot.spend(9_101).expect("a unit");
        assert!(d.allowed);
        assert_eq!((d.limit, d.remaining, d.reset_at_ms), (100, 99, 10_000));
        assert!(slot.spend(9_102).is_some());
        // The window ends at 10_000 on the store's clock, 9_995 on ours.
        assert!(slot.spend(9_995).is_none());
        let back = slot.take_lease().expect("a lease");
        assert_eq!(back.spent, 2);
        // The next lease asks for what was used, or a first share if that is more.
        assert_eq!(first_share(&q), 3);
        assert_eq!(slot.want, 3);
    }

    #[test]
    fn a_used_up_lease_doubles_the_next_request_up_to_a_share() {
        let q = quota(Strategy::TokenBucket, 80, 1000, Some(40));
        let mut slot = Slot::new(q);
        let request = LeaseRequest {
            key: "k".into(),
            strategy: "token_bucket",
            limit: 80,
            window_ms: 1000,
            burst: 40,
            want: 4,
            lease: Uuid::now_v7(),
            lease_ms: 2000,
            give_back: None,
        };
        let grant = LeaseGrant {
            granted: 4,
            now_ms: 1_000,
            tat_ms: 0,
            outstanding: 4,
            ..Default::default()
        };
        slot.install(&request, grant, 1_000, 1_000, 2000);
        for left in (0..4).rev() {
            let d = slot.spend(1_000).expect("a unit");
            // The bucket: 40 − 4 leased = 36 in the store, plus what this lease has left.
            assert_eq!(d.remaining, (36 + left).min(40));
            assert_eq!(d.limit, 40);
        }
        assert!(slot.spend(1_000).is_none());
        assert_eq!(slot.want, max_share(&q).min(8));
        assert_eq!(max_share(&q), 10);
        // Half its life at most.
        slot.install(&request, grant, 1_000, 1_000, 2000);
        assert!(slot.spend(1_999).is_some());
        assert!(slot.spend(2_000).is_none());
    }

    #[test]
    fn the_next_lease_is_asked_for_ahead_and_takes_over() {
        let q = quota(Strategy::TokenBucket, 64, 1000, None);
        let mut slot = Slot::new(q);
        let request = |id| LeaseRequest {
            key: "k".into(),
            strategy: "token_bucket",
            limit: 64,
            window_ms: 1000,
            burst: 64,
            want: 4,
            lease: id,
            lease_ms: 2000,
            give_back: None,
        };
        let grant = LeaseGrant {
            granted: 4,
            now_ms: 1_000,
            outstanding: 4,
            ..Default::default()
        };
        let (first, second) = (Uuid::now_v7(), Uuid::now_v7());
        slot.install(&request(first), grant, 1_000, 1_000, 2000);
        for _ in 0..2 {
            slot.spend(1_000).expect("a unit");
            assert!(!slot.wants_next(1_000));
        }
        slot.spend(1_000).expect("a unit");
        assert!(slot.wants_next(1_000), "three-quarters spent");
        assert_eq!(slot.want, 8);
        assert!(!slot.wants_next(1_000), "once per lease");
        // The answer comes while the first still has a unit: it waits its turn.
        slot.install(&request(second), grant, 1_001, 1_001, 2000);
        assert_eq!(slot.lease.as_ref().map(|l| l.id), Some(first));
        slot.spend(1_002).expect("the first's last unit");
        slot.spend(1_002).expect("the second's first unit");
        assert_eq!(slot.lease.as_ref().map(|l| l.id), Some(second));
        assert_eq!(
            slot.retired,
            vec![LeaseReturn {
                id: first,
                spent: 4
            }]
        );
        // Three-quarters through its use (1 s from 1_001): asked for ahead again.
        assert!(!slot.wants_next(1_750));
        assert!(slot.wants_next(1_751));
        assert_eq!(slot.want, first_share(&q), "at one unit in 750 ms");
    }

    #[test]
    fn long_identifiers_are_stored_by_their_digest() {
        assert_eq!(store_key("github", "octocat"), "github:octocat");
        let long = "x".repeat(5_000);
        let key = store_key("github", &long);
        assert_eq!(key.len(), "github:sha256:".len() + 64);
        assert_ne!(key, store_key("github", &format!("{long}y")));
        assert_eq!(key, store_key("github", &long));
    }

    #[test]
    fn a_refusal_says_when_to_come_back() {
        let q = quota(Strategy::FixedWindow, 5, 60_000, None);
        let mut slot = Slot::new(q);
        let request = LeaseRequest {
            key: "k".into(),
            strategy: "fixed_window",
            limit: 5,
            window_ms: 60_000,
            burst: 5,
            want: 1,
            lease: Uuid::now_v7(),
            lease_ms: 2000,
            give_back: None,
        };
        let grant = LeaseGrant {
            granted: 0,
            now_ms: 30_000,
            window_start: 0,
            curr: 5,
            ..Default::default()
        };
        slot.install(&request, grant, 30_000, 30_000, 2000);
        // Asked again after 250 ms at most (another node may give units back).
        assert_eq!(slot.denied_until, 30_250);
        let d = slot.refusal(30_000, 250);
        assert!(!d.allowed);
        assert_eq!(
            (d.remaining, d.retry_after_ms, d.reset_at_ms),
            (0, 30_000, 60_000)
        );
    }
}
