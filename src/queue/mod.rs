//! The delivery scheduler: due deliveries held in memory, one lane per agent (its own backlog,
//! concurrency limit and pacing), larger priority first, retries on timers, outcomes written
//! back to the store in batches.
//!
//! One dispatcher task owns all scheduling state, so no locks are shared between lanes: ingest
//! hands it committed deliveries through a channel (no polling), attempt tasks report back
//! through the same channel. An agent that is slow or down only fills its own lane.

pub mod breaker;
pub mod policy;
pub mod pull;

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering as AtomicOrdering};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::analytics::Analytics;
use crate::clock::now_ms;
use crate::deliver::{self, AgentTarget, AttemptRequest, AttemptResult, BreakerPolicy};
use crate::store::{
    AttemptUpdate, DeliveryStatus, KeyClaim, PendingDelivery, Sequencing, Store, SupersededInfo,
    Supersession,
};
use crate::telemetry::trace;
use breaker::{Admission, Breaker, Transition};
use policy::RetryPolicy;
pub use pull::{ConsumerInfo, Leased, Settle, Settled};

/// An agent's health as `GET /admin/agents/{id}` shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentHealth {
    pub state: breaker::State,
    pub since: i64,
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
    pub next_probe_at: Option<i64>,
}

impl AgentHealth {
    /// A healthy agent that nothing has happened to.
    pub fn closed(since: i64) -> AgentHealth {
        AgentHealth {
            state: breaker::State::Closed,
            since,
            consecutive_failures: 0,
            last_error: None,
            next_probe_at: None,
        }
    }

    fn of(b: &Breaker) -> AgentHealth {
        AgentHealth {
            state: b.state,
            since: b.since,
            consecutive_failures: b.consecutive_failures,
            last_error: b.last_error.clone(),
            next_probe_at: b.next_probe_at,
        }
    }
}

/// What the scheduler tells the rest of the server about agents and deliveries (turned into
/// `router` events, and the auto-disable, by the server).
#[derive(Debug, Clone)]
pub enum Signal {
    CircuitOpened {
        agent: Arc<str>,
        health: AgentHealth,
    },
    Recovered {
        agent: Arc<str>,
        /// How long it was open (ms).
        down_ms: i64,
    },
    /// Failing without a success for its `disableAfterMs`: disable it.
    Disable {
        agent: Arc<str>,
        failing_since: i64,
        last_error: Option<String>,
    },
    DeadLettered {
        agent: Arc<str>,
        event_id: Uuid,
        delivery_id: Uuid,
        source: Arc<str>,
        event_type: Arc<str>,
        attempts: u32,
        error: Option<String>,
    },
}

/// One delivery as the scheduler holds it.
#[derive(Debug, Clone)]
pub struct Job {
    pub delivery_id: Uuid,
    pub event_id: Uuid,
    pub agent_id: Arc<str>,
    pub route_id: Arc<str>,
    pub priority: i64,
    /// Attempts made so far (all time).
    pub attempts: u32,
    /// Attempts spent before the last dead-letter retry.
    pub retry_base: u32,
    pub policy: Arc<RetryPolicy>,
    pub source: Arc<str>,
    pub event_type: Arc<str>,
    /// What to send; `None` while the job waits without it (past the scheduler's body budget),
    /// to be read from the store when its attempt starts.
    pub body: Option<Bytes>,
    pub due_at: i64,
    /// When the delivery was created (ms), for age and end-to-end latency.
    pub created_at: i64,
    /// The webhook's W3C trace context, which its attempts' spans continue (`None` while
    /// tracing is off).
    pub trace_context: Option<Arc<str>>,
    /// Its ordering and coalescing keys, if its route has them.
    pub keys: Option<Arc<Keys>>,
    /// What it superseded, when it carries a burst.
    pub superseded: Option<Box<Carried>>,
}

/// A delivery's ordering and coalescing keys (docs/delivery.md, "Ordered and coalesced
/// delivery").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    /// Deliveries to one agent with the same value go one at a time, in event-id order.
    pub ordering: Option<Arc<str>>,
    /// A dead letter holds the ordering key.
    pub hold: bool,
    /// A newer event with the same value supersedes the delivery while it waits: the value, the
    /// window and the longest wait (ms).
    pub coalesce: Option<(Arc<str>, u64, u64)>,
}

impl Keys {
    /// The keys of a stored delivery; `None` when it has neither.
    pub fn of(s: &Sequencing) -> Option<Arc<Keys>> {
        if s.ordering_key.is_none() && s.coalesce_key.is_none() {
            return None;
        }
        Some(Arc::new(Keys {
            ordering: s.ordering_key.as_deref().map(Arc::from),
            hold: s.ordering_hold,
            coalesce: s
                .coalesce_key
                .as_deref()
                .map(|k| (Arc::from(k), s.coalesce_window_ms, s.coalesce_max_wait_ms)),
        }))
    }
}

/// The most superseded event ids a delivery lists (`x-event-superseded-ids`).
pub const MAX_SUPERSEDED_IDS: usize = 100;

/// What a delivery superseded: how many, the most recent event ids, and when the first of them
/// was created (ms).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Carried {
    pub count: u32,
    pub event_ids: std::collections::VecDeque<Uuid>,
    pub since: i64,
}

impl Carried {
    fn from_info(info: &SupersededInfo) -> Carried {
        Carried {
            count: info.count,
            event_ids: info
                .event_ids
                .split(',')
                .filter_map(|s| Uuid::parse_str(s.trim()).ok())
                .collect(),
            since: info.since,
        }
    }

    /// The ids as the header and the store have them: comma-separated.
    pub fn ids_text(&self) -> String {
        let mut out = String::with_capacity(self.event_ids.len() * 37);
        for (i, id) in self.event_ids.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&id.hyphenated().to_string());
        }
        out
    }

    fn info(&self) -> SupersededInfo {
        SupersededInfo {
            count: self.count,
            event_ids: self.ids_text(),
            since: self.since,
        }
    }
}

impl Job {
    /// A job from a stored delivery; `default_policy` applies when the route had none.
    pub fn from_pending(p: PendingDelivery, default_policy: &Arc<RetryPolicy>) -> Job {
        let policy = p
            .retry_policy
            .as_deref()
            .and_then(|s| serde_json::from_str::<RetryPolicy>(s).ok())
            .map(Arc::new)
            .unwrap_or_else(|| default_policy.clone());
        Job {
            delivery_id: p.id,
            event_id: p.event_id,
            agent_id: p.agent_id.into(),
            route_id: p.route_id.into(),
            priority: p.priority,
            attempts: p.attempts,
            retry_base: p.retry_base,
            policy,
            source: p.source.into(),
            event_type: p.event_type.into(),
            body: p.body.map(Bytes::from),
            due_at: p.next_attempt_at,
            created_at: p.created_at,
            trace_context: p.trace_context.map(Arc::from),
            keys: Keys::of(&p.sequencing),
            superseded: p
                .superseded
                .as_ref()
                .map(|i| Box::new(Carried::from_info(i))),
        }
    }
}

/// The agents the scheduler can deliver to, swapped whenever the rules change.
pub type Targets = HashMap<Arc<str>, Arc<AgentTarget>>;

/// Figures for `/queue/stats`.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueSnapshot {
    pub pending: u64,
    pub in_flight: u64,
    pub scheduled: u64,
    /// Pull agents' deliveries leased to consumers.
    #[serde(default)]
    pub leased: u64,
    /// Pull agents' deliveries acknowledged since the node started.
    #[serde(default)]
    pub acked: u64,
    pub oldest_pending_age_ms: u64,
    pub by_priority: BTreeMap<String, u64>,
    pub by_agent: BTreeMap<String, AgentQueue>,
}

#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentQueue {
    pub pending: u64,
    pub in_flight: u64,
    pub scheduled: u64,
    #[serde(default)]
    pub leased: u64,
}

impl QueueSnapshot {
    /// Adds another node's figures (cluster-wide `/queue/stats`).
    pub fn add(&mut self, other: &QueueSnapshot) {
        self.pending += other.pending;
        self.in_flight += other.in_flight;
        self.scheduled += other.scheduled;
        self.leased += other.leased;
        self.acked += other.acked;
        self.oldest_pending_age_ms = self.oldest_pending_age_ms.max(other.oldest_pending_age_ms);
        for (p, n) in &other.by_priority {
            *self.by_priority.entry(p.clone()).or_default() += n;
        }
        for (a, q) in &other.by_agent {
            let mine = self.by_agent.entry(a.clone()).or_default();
            mine.pending += q.pending;
            mine.in_flight += q.in_flight;
            mine.scheduled += q.scheduled;
            mine.leased += q.leased;
        }
    }
}

enum Msg {
    Enqueue(Vec<Job>),
    Done {
        job: Box<Job>,
        result: AttemptResult,
        /// Random number in [0, 1) for jitter, drawn in the attempt task.
        unit: f64,
    },
    TargetsChanged,
    Snapshot(oneshot::Sender<QueueSnapshot>),
    /// Jobs whose bodies the store could not give: no attempt was made; they wait and are read
    /// again.
    Requeue(Vec<Job>),
    /// These events were erased: their deliveries leave the queue (the store already ended them
    /// `cancelled`), and an attempt under way is not followed by another. Answered once done.
    Cancel(Vec<Uuid>, oneshot::Sender<()>),
    /// Close an agent's circuit breaker (`POST /admin/agents/{id}/health/reset`).
    ResetHealth(Arc<str>, oneshot::Sender<()>),
    /// Another node's breaker for the agent opened until then, or closed (`None`).
    RemoteBreaker(Arc<str>, Option<i64>),
    /// The outcomes that end these ordered deliveries are committed: their keys move on.
    Released(Vec<KeyRelease>),
    /// Claims on ordering keys came back (several nodes): each job with what became of it.
    Claimed(Vec<(Job, Claim)>),
    /// A dead letter was deleted: the key it held (if it did) moves on.
    DeadRemoved(Uuid),
    /// The dead letters that still hold their keys (after a retention purge): keys held by
    /// any other move on.
    HeldNow(std::collections::HashSet<Uuid>),
    /// A consumer of a pull agent polls.
    Poll(Arc<str>, pull::Waiter),
    /// The lease writer's answer to a grant.
    Granted(Box<pull::Grant>),
    /// A consumer settles leases.
    Settle(Arc<str>, Vec<Uuid>, Settle, oneshot::Sender<Settled>),
    Consumers(Arc<str>, oneshot::Sender<Vec<ConsumerInfo>>),
    /// Another node took these pull deliveries.
    Taken(Vec<Uuid>),
    /// Another node acked these pull deliveries leased here.
    AckedElsewhere(Vec<Uuid>),
    /// This node acked `n` of the agent's deliveries leased by other nodes.
    CountAcked(Arc<str>, usize),
}

/// What a claim on an ordering key gave (several nodes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Claim {
    Granted,
    /// The key is busy elsewhere, or an earlier delivery of it is unfinished: claim again soon.
    Refused,
    /// This node no longer owns the delivery unfinished (another node took it over while this
    /// one had lost its lease, or it ended): it leaves this node's queue.
    Gone,
}

/// What the recorder writes.
enum Record {
    /// An attempt's outcome; the key to release once it is committed, if it ends an ordered
    /// delivery.
    Attempt(AttemptUpdate, Option<KeyRelease>),
    Supersede(Supersession),
    /// Answered once everything recorded before it is committed.
    Notify(oneshot::Sender<Result<(), String>>),
}

/// An ordered delivery that ended (delivered, dead): its key moves on once that is committed.
#[derive(Debug, Clone)]
pub struct KeyRelease {
    agent: Arc<str>,
    key: Arc<str>,
    delivery_id: Uuid,
    event_id: Uuid,
    /// It was dead-lettered and its key holds until the dead letter is retried or deleted.
    held: bool,
}

/// How long a key whose head could not be claimed (another node holds it) waits before trying
/// again, and how long a key waits for ingest to resolve smaller event ids.
const CLAIM_RETRY_MS: i64 = 100;
const FLOOR_RETRY_MS: i64 = 2;

/// When to look at an ordering key again: (when, agent, key).
type KeyWakeup = (i64, Arc<str>, Arc<str>);

/// One ordering key of a lane: the delivery at its head (attempted, waiting to be retried, or
/// ended and being recorded), the dead letter that holds it, and the rest in event-id order.
#[derive(Default)]
struct KeyQueue {
    head: Option<Uuid>,
    /// The head was sent to be claimed (several nodes) and has not come back.
    claiming: bool,
    /// (delivery, event) of the dead letter holding the key.
    held: Option<(Uuid, Uuid)>,
    waiting: BTreeMap<(Uuid, Uuid), Job>,
}

/// The newest not yet attempted delivery of a coalescing key.
struct CoalesceSlot {
    delivery_id: Uuid,
    event_id: Uuid,
    created_at: i64,
    carried: Option<Box<Carried>>,
    /// Where it waits behind its ordering key, if it does.
    ordering: Option<Arc<str>>,
}

/// How long the dispatcher remembers an erased event, for attempts that were under way when it
/// was erased (longer than any attempt's timeout).
const CANCELLED_MEMORY_MS: i64 = 3_600_000;

/// How long jobs wait after the store failed to give their bodies.
const BODY_RETRY_MS: i64 = 1000;

/// The handle the rest of the server holds.
#[derive(Clone)]
pub struct Queue {
    tx: mpsc::UnboundedSender<Msg>,
    /// Deliveries accepted and not yet delivered or dead (the `max_queue_size` budget).
    unfinished: Arc<AtomicI64>,
    max: i64,
    /// Agents whose breaker is not closed or that failed since their last success (the
    /// dispatcher writes, admin reads and /metrics read).
    health: Arc<std::sync::Mutex<HashMap<Arc<str>, AgentHealth>>>,
    /// When the scheduler started (ms): a healthy agent's breaker has been closed since then.
    started_ms: i64,
}

/// Refusal of new work: the queue holds `max_queue_size` unfinished deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull;

impl Queue {
    /// Reserves room for `n` deliveries before they are committed (released if they are not).
    pub fn reserve(&self, n: usize) -> Result<Reservation, QueueFull> {
        let n = n as i64;
        if n == 0 {
            return Ok(Reservation {
                unfinished: self.unfinished.clone(),
                n: 0,
            });
        }
        let prev = self.unfinished.fetch_add(n, AtomicOrdering::AcqRel);
        if prev + n > self.max {
            self.unfinished.fetch_sub(n, AtomicOrdering::AcqRel);
            return Err(QueueFull);
        }
        Ok(Reservation {
            unfinished: self.unfinished.clone(),
            n,
        })
    }

    /// Hands committed deliveries to the scheduler.
    pub fn enqueue(&self, jobs: Vec<Job>, reservation: Reservation) {
        reservation.keep();
        if !jobs.is_empty() {
            let _ = self.tx.send(Msg::Enqueue(jobs));
        }
    }

    /// Puts deliveries that come back from the store (dead-letter retries, a dead node's work)
    /// into the scheduler.
    pub fn requeue(&self, pending: Vec<PendingDelivery>, default_policy: &Arc<RetryPolicy>) {
        let jobs = pending
            .into_iter()
            .map(|p| Job::from_pending(p, default_policy))
            .collect();
        self.enqueue_unreserved(jobs);
    }

    /// Deliveries that come back (dead-letter retries, replays) outside the ingest budget.
    pub fn enqueue_unreserved(&self, jobs: Vec<Job>) {
        self.unfinished
            .fetch_add(jobs.len() as i64, AtomicOrdering::AcqRel);
        if !jobs.is_empty() {
            let _ = self.tx.send(Msg::Enqueue(jobs));
        }
    }

    pub fn targets_changed(&self) {
        let _ = self.tx.send(Msg::TargetsChanged);
    }

    /// The agent's breaker, or `None` when nothing has gone wrong with it (closed, no failure
    /// since its last success).
    pub fn health(&self, agent: &str) -> Option<AgentHealth> {
        self.health.lock().ok()?.get(agent).cloned()
    }

    /// The agent's breaker, closed since the scheduler started when nothing went wrong.
    pub fn health_or_closed(&self, agent: &str) -> AgentHealth {
        self.health(agent)
            .unwrap_or_else(|| AgentHealth::closed(self.started_ms))
    }

    /// Closes the agent's breaker; returns once the scheduler has.
    pub async fn reset_health(&self, agent: &str) {
        let (done, wait) = oneshot::channel();
        if self
            .tx
            .send(Msg::ResetHealth(Arc::from(agent), done))
            .is_ok()
        {
            let _ = wait.await;
        }
    }

    /// Follows another node's breaker for `agent` (see `Notice::Breaker`).
    pub fn remote_breaker(&self, agent: &str, open_until: Option<i64>) {
        let _ = self
            .tx
            .send(Msg::RemoteBreaker(Arc::from(agent), open_until));
    }

    /// A dead letter was deleted: an ordering key it held moves on.
    pub fn dead_removed(&self, delivery_id: Uuid) {
        let _ = self.tx.send(Msg::DeadRemoved(delivery_id));
    }

    /// The dead letters that hold their keys now (`Store::held_keys`, after a purge): keys held
    /// by dead letters no longer stored move on.
    pub fn held_keys_now(&self, held: std::collections::HashSet<Uuid>) {
        let _ = self.tx.send(Msg::HeldNow(held));
    }

    /// Drops the deliveries of erased events (see `Msg::Cancel`); returns once the scheduler
    /// has, so no attempt of them starts after this.
    pub async fn cancel_events(&self, event_ids: Vec<Uuid>) {
        if event_ids.is_empty() {
            return;
        }
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Cancel(event_ids, done)).is_ok() {
            let _ = wait.await;
        }
    }

    /// `max_queue_size`.
    pub fn capacity(&self) -> u64 {
        self.max.max(0) as u64
    }

    pub fn unfinished(&self) -> u64 {
        self.unfinished.load(AtomicOrdering::Acquire).max(0) as u64
    }

    pub async fn snapshot(&self) -> QueueSnapshot {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Snapshot(tx)).is_err() {
            return QueueSnapshot::default();
        }
        rx.await.unwrap_or_default()
    }
}

/// Room reserved in the queue; dropping it without `keep` gives the room back.
pub struct Reservation {
    unfinished: Arc<AtomicI64>,
    n: i64,
}

impl Reservation {
    fn keep(mut self) {
        self.n = 0;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.n > 0 {
            self.unfinished.fetch_sub(self.n, AtomicOrdering::AcqRel);
        }
    }
}

/// Ready jobs: larger priority first, then first come first served.
struct Ready {
    priority: i64,
    seq: u64,
    job: Job,
}

impl PartialEq for Ready {
    fn eq(&self, o: &Self) -> bool {
        self.priority == o.priority && self.seq == o.seq
    }
}
impl Eq for Ready {}
impl PartialOrd for Ready {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Ready {
    fn cmp(&self, o: &Self) -> Ordering {
        self.priority
            .cmp(&o.priority)
            .then_with(|| o.seq.cmp(&self.seq))
    }
}

/// A retry waiting for its time.
struct Timed {
    due: i64,
    seq: u64,
    job: Job,
}
impl PartialEq for Timed {
    fn eq(&self, o: &Self) -> bool {
        self.due == o.due && self.seq == o.seq
    }
}
impl Eq for Timed {}
impl PartialOrd for Timed {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Timed {
    fn cmp(&self, o: &Self) -> Ordering {
        (self.due, self.seq).cmp(&(o.due, o.seq))
    }
}

#[derive(Default)]
struct Lane {
    ready: BinaryHeap<Ready>,
    /// Ordering keys with a delivery at their head or waiting.
    keys: HashMap<Arc<str>, KeyQueue>,
    /// Coalescing keys with a delivery not yet attempted.
    coalescing: HashMap<Arc<str>, CoalesceSlot>,
    in_flight: usize,
    scheduled: usize,
    /// Start times of the most recent attempts (at most the pacing limit), for pacing.
    sent: std::collections::VecDeque<i64>,
    /// A pacing or cooldown wake-up is already set for this lane.
    waiting: bool,
    breaker: Option<Breaker>,
    /// The delivery of the probe attempt under way (half-open).
    probe: Option<Uuid>,
    /// The agent was disabled when last pumped (re-enabling closes the breaker).
    held_disabled: bool,
    /// `Signal::Disable` was sent for the current failure streak.
    disable_sent: bool,
    /// A pull agent's polls and leases.
    pull: pull::PullLane,
}

struct Dispatcher {
    rx: mpsc::UnboundedReceiver<Msg>,
    lanes: HashMap<Arc<str>, Lane>,
    timers: BinaryHeap<Reverse<Timed>>,
    wakeups: BinaryHeap<Reverse<(i64, Arc<str>)>>,
    targets: Arc<ArcSwap<Targets>>,
    recorder: mpsc::UnboundedSender<Record>,
    unfinished: Arc<AtomicI64>,
    /// Deliveries superseded while queued (in `ready` or `timers`): dropped when they come out.
    superseded: std::collections::HashSet<Uuid>,
    /// Ordering keys to look at again at a time: (when, agent, key).
    key_wakeups: BinaryHeap<Reverse<KeyWakeup>>,
    /// Ingest's event-id floor as last read with the channel drained after it: every event with
    /// a smaller id that will ever reach the scheduler from ingest has reached it.
    safe_floor: Uuid,
    floor: Floor,
    /// Keys waiting for the floor to pass their first delivery.
    floor_blocked: Vec<(Arc<str>, Arc<str>)>,
    /// Some delivery had an ordering key (until then the floor is not read).
    ordering_seen: bool,
    /// Sends heads of ordering keys to be claimed (several nodes); `None` on one node.
    claimer: Option<mpsc::UnboundedSender<Job>>,
    analytics: Arc<Analytics>,
    seq: u64,
    stopping: bool,
    /// What attempt tasks need: the client, the way back here, and the tracker that shutdown
    /// waits on.
    ctx: AttemptCtx,
    /// Jobs held without their body, on their way to an attempt through `load_loop`; `None`
    /// once stopping.
    loader: Option<mpsc::UnboundedSender<(Job, Arc<AgentTarget>)>>,
    /// Bytes of body held by queued (ready and scheduled) jobs, and the most it may be.
    resident: usize,
    body_budget: usize,
    /// Erased events (id → when), for the attempts that were under way then.
    cancelled: HashMap<Uuid, i64>,
    health: Arc<std::sync::Mutex<HashMap<Arc<str>, AgentHealth>>>,
    signals: mpsc::UnboundedSender<Signal>,
    /// Makes pull agents' leases durable; `None` once stopping.
    leaser: Option<mpsc::UnboundedSender<pull::LeaseTask>>,
    /// When leases run out: (when, delivery, agent); stale entries are skipped.
    lease_timers: BinaryHeap<Reverse<(i64, Uuid, Arc<str>)>>,
    /// When waiting polls end: (when, agent).
    poll_timers: BinaryHeap<Reverse<(i64, Arc<str>)>>,
    /// Acks since start (`/queue/stats`).
    acked: u64,
}

/// Everything `start` needs.
pub struct QueueConfig {
    pub max_queue_size: u64,
    pub default_policy: Arc<RetryPolicy>,
    pub analytics: Arc<Analytics>,
    /// The shared outbound client (`deliver::client`).
    pub client: deliver::Client,
    /// Bytes of delivery body that queued jobs may hold in memory (`delivery_memory_mb`); jobs
    /// queued past it wait without their body and read it from the store when attempted, so a
    /// deep backlog costs memory for its ids, not its payloads.
    pub body_budget: usize,
    /// Ingest's event-id floor: an id such that every smaller id that ingest handed out is
    /// resolved (committed and handed to the scheduler, or refused). Ordered deliveries start
    /// in event-id order only up to it, so a smaller id still committing cannot come too late.
    pub floor: Floor,
}

/// See `QueueConfig::floor`.
pub type Floor = Arc<dyn Fn() -> Uuid + Send + Sync>;

/// The running scheduler: the handle, and what shutdown waits on.
pub struct Running {
    pub queue: Queue,
    /// What the scheduler has to say about agents (take it once).
    pub signals: Option<mpsc::UnboundedReceiver<Signal>>,
    dispatcher: tokio::task::JoinHandle<()>,
    recorder: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops dispatching, lets in-flight attempts finish (bounded by `deadline`), and flushes
    /// their outcomes to the store. What was not attempted stays pending in the store.
    pub async fn shutdown(self, deadline: Duration) {
        // The dispatcher watches the cancellation token; once it exits, attempts drain. An
        // attempt still hanging at the deadline is abandoned: its delivery stays pending in the
        // store and is made again after restart (at-least-once).
        let mut dispatcher = self.dispatcher;
        if tokio::time::timeout(deadline, &mut dispatcher)
            .await
            .is_err()
        {
            tracing::warn!(
                "delivery attempts still running at the shutdown deadline; handed back as pending"
            );
            dispatcher.abort();
            let _ = dispatcher.await;
        }
        // The dispatcher held the recorder's only sender: the recorder now flushes and ends.
        let _ = tokio::time::timeout(Duration::from_secs(1), self.recorder).await;
    }
}

/// Starts the scheduler and reloads unfinished deliveries from the store.
pub async fn start(
    store: Arc<dyn Store>,
    targets: Arc<ArcSwap<Targets>>,
    cfg: QueueConfig,
    shutdown: CancellationToken,
) -> crate::store::Result<Running> {
    let (tx, rx) = mpsc::unbounded_channel();
    let (rec_tx, rec_rx) = mpsc::unbounded_channel();
    let unfinished = Arc::new(AtomicI64::new(0));
    let pending = store.unfinished_deliveries(cfg.body_budget).await?;
    // Pull agents' deliveries the store has leased keep their leases until they run out.
    let mut leases = Vec::new();
    let reloaded: Vec<Job> = {
        let pulls = targets.load();
        pending
            .into_iter()
            .filter_map(|mut p| {
                let consumer = p.lease_consumer.take();
                let job = Job::from_pending(p, &cfg.default_policy);
                match consumer {
                    Some(c) if pulls.get(&job.agent_id).is_some_and(|t| t.pull) => {
                        leases.push((job, c));
                        None
                    }
                    _ => Some(job),
                }
            })
            .collect()
    };
    if !reloaded.is_empty() {
        tracing::info!(count = reloaded.len(), "reloaded unfinished deliveries");
    }
    unfinished.store(
        (reloaded.len() + leases.len()) as i64,
        AtomicOrdering::Release,
    );
    let health = Arc::new(std::sync::Mutex::new(HashMap::new()));
    let (signals, signals_rx) = mpsc::unbounded_channel();
    let queue = Queue {
        tx: tx.clone(),
        unfinished: unfinished.clone(),
        max: cfg.max_queue_size.min(i64::MAX as u64) as i64,
        health: health.clone(),
        started_ms: now_ms(),
    };
    let recorder = tokio::spawn(record_loop(store.clone(), rec_rx, tx.clone()));
    // A dead letter that holds its key holds it across restarts. Several nodes decide that in
    // the store when they claim keys.
    let cluster = store.node_id().is_some();
    let held = if cluster {
        Vec::new()
    } else {
        store.held_keys().await?
    };
    let claimer = cluster.then(|| {
        let (claim_tx, claim_rx) = mpsc::unbounded_channel();
        tokio::spawn(claim_loop(store.clone(), claim_rx, tx.clone()));
        claim_tx
    });
    let ctx = AttemptCtx {
        client: cfg.client,
        tx: tx.clone(),
        attempts: TaskTracker::new(),
    };
    let (load_tx, load_rx) = mpsc::unbounded_channel();
    ctx.attempts
        .spawn(load_loop(store.clone(), ctx.clone(), load_rx));
    let (lease_tx, lease_rx) = mpsc::unbounded_channel();
    tokio::spawn(pull::lease_loop(store.clone(), lease_rx, tx.clone()));
    let mut d = Dispatcher {
        rx,
        lanes: HashMap::new(),
        timers: BinaryHeap::new(),
        wakeups: BinaryHeap::new(),
        targets,
        recorder: rec_tx,
        unfinished,
        analytics: cfg.analytics,
        seq: 0,
        stopping: false,
        ctx,
        loader: Some(load_tx),
        resident: 0,
        body_budget: cfg.body_budget,
        cancelled: HashMap::new(),
        health,
        signals,
        superseded: Default::default(),
        key_wakeups: BinaryHeap::new(),
        safe_floor: (cfg.floor)(),
        floor: cfg.floor,
        floor_blocked: Vec::new(),
        ordering_seen: false,
        claimer,
        leaser: Some(lease_tx),
        lease_timers: BinaryHeap::new(),
        poll_timers: BinaryHeap::new(),
        acked: 0,
    };
    for h in held {
        let lane = d.lanes.entry(Arc::from(h.agent_id)).or_default();
        lane.keys.entry(Arc::from(h.key)).or_default().held = Some((h.delivery_id, h.event_id));
    }
    for (job, consumer) in leases {
        d.restore_lease(job, consumer);
    }
    d.add(reloaded);
    let dispatcher = tokio::spawn(async move { d.run(shutdown).await });
    Ok(Running {
        queue,
        signals: Some(signals_rx),
        dispatcher,
        recorder,
    })
}

/// Writes attempt outcomes in batches: whatever arrived while the last write was committing.
///
/// Outcomes the store could not write because it cannot write at all (disk full, database
/// unreachable) are kept and written, oldest first, with those that came meanwhile, once it
/// can again. Should the store still refuse them when the server stops, they are dropped
/// with an error in the log: those deliveries are still pending in the store and are made
/// again at the next start (at-least-once).
async fn record_loop(
    store: Arc<dyn Store>,
    mut rx: mpsc::UnboundedReceiver<Record>,
    dispatcher: mpsc::UnboundedSender<Msg>,
) {
    const FIRST_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);
    const LONGEST_PAUSE: std::time::Duration = std::time::Duration::from_secs(2);
    let mut batch = Vec::with_capacity(1024);
    let mut kept: Vec<Record> = Vec::new();
    let mut pause = FIRST_PAUSE;
    let mut open = true;
    loop {
        if kept.is_empty() {
            if rx.recv_many(&mut batch, 4096).await == 0 {
                break;
            }
        } else {
            loop {
                match rx.try_recv() {
                    Ok(u) => batch.push(u),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
        }
        let mut records = std::mem::take(&mut kept);
        records.append(&mut batch);
        let mut updates = Vec::with_capacity(records.len());
        let mut steps = Vec::new();
        let mut releases = Vec::new();
        let mut notify = 0;
        for r in &records {
            match r {
                Record::Attempt(u, release) => {
                    updates.push(u.clone());
                    releases.extend(release.iter().cloned());
                }
                Record::Supersede(step) => steps.push(step.clone()),
                Record::Notify(_) => notify += 1,
            }
        }
        // Those waiting for the batch's commit: told once it is (or why not).
        let tell = |records: &mut Vec<Record>, outcome: Result<(), String>| {
            if notify == 0 {
                return;
            }
            for r in records.drain(..) {
                if let Record::Notify(tx) = r {
                    let _ = tx.send(outcome.clone());
                }
            }
        };
        // Supersessions first: a burst's carrier is never recorded delivered while what it
        // superseded still reads pending.
        let written = match store.supersede(steps).await {
            Ok(()) if updates.is_empty() => Ok(()),
            Ok(()) => store.record_attempts(updates).await,
            Err(e) => Err(e),
        };
        match written {
            Ok(()) => {
                pause = FIRST_PAUSE;
                if !releases.is_empty() {
                    let _ = dispatcher.send(Msg::Released(releases));
                }
                tell(&mut records, Ok(()));
            }
            Err(crate::store::StoreError::Unavailable(e)) if open => {
                tracing::warn!(
                    error = %e,
                    outcomes = records.len(),
                    "delivery outcomes kept until the store can write again"
                );
                kept = records;
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(LONGEST_PAUSE);
            }
            Err(e) => {
                tracing::error!(error = %e, outcomes = records.len(), "recording delivery outcomes failed");
                tell(&mut records, Err(e.to_string()));
                // The keys move on all the same: they would otherwise stay stuck until restart.
                if !releases.is_empty() {
                    let _ = dispatcher.send(Msg::Released(releases));
                }
                if !open {
                    break;
                }
            }
        }
    }
}

/// Claims ordering keys in the store for the heads the dispatcher picked (several nodes), for
/// everything that queued up during the last claim at once.
async fn claim_loop(
    store: Arc<dyn Store>,
    mut rx: mpsc::UnboundedReceiver<Job>,
    dispatcher: mpsc::UnboundedSender<Msg>,
) {
    let mut batch = Vec::with_capacity(256);
    while rx.recv_many(&mut batch, 1024).await > 0 {
        let claims = batch
            .iter()
            .filter_map(|j: &Job| {
                let key = j.keys.as_ref()?.ordering.as_ref()?;
                Some(KeyClaim {
                    delivery_id: j.delivery_id,
                    event_id: j.event_id,
                    agent_id: j.agent_id.to_string(),
                    key: key.to_string(),
                })
            })
            .collect();
        let claimed = match store.claim_keys(claims).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, keys = batch.len(), "claiming ordering keys failed; trying again shortly");
                Default::default()
            }
        };
        let out = batch
            .drain(..)
            .map(|j| {
                let claim = if claimed.granted.contains(&j.delivery_id) {
                    Claim::Granted
                } else if claimed.gone.contains(&j.delivery_id) {
                    Claim::Gone
                } else {
                    Claim::Refused
                };
                (j, claim)
            })
            .collect();
        let _ = dispatcher.send(Msg::Claimed(out));
    }
}

impl Dispatcher {
    async fn run(&mut self, shutdown: CancellationToken) {
        loop {
            let next = self.next_wake();
            tokio::select! {
                biased;
                _ = shutdown.cancelled(), if !self.stopping => {
                    self.stopping = true;
                    break;
                }
                msg = self.rx.recv() => match msg {
                    Some(m) => {
                        self.handle(m);
                        if self.ordering_seen {
                            self.refresh_floor();
                        }
                    }
                    None => break,
                },
                _ = sleep_until_ms(next), if next.is_some() => {}
            }
            self.fire_due();
        }
        // Hand back: whatever is queued stays pending in the store; in-flight attempts finish
        // (the loader too, once it has started the attempts it was handed).
        self.loader = None;
        self.leaser = None;
        self.ctx.attempts.close();
        let drain = async {
            loop {
                tokio::select! {
                    _ = self.ctx.attempts.wait() => break,
                    msg = self.rx.recv() => match msg {
                        Some(Msg::Done { job, result, unit }) => self.finish(*job, result, unit),
                        Some(Msg::Snapshot(tx)) => { let _ = tx.send(self.snapshot()); }
                        Some(_) => {}
                        None => break,
                    }
                }
            }
            // Outcomes that raced the tracker's completion.
            while let Ok(msg) = self.rx.try_recv() {
                if let Msg::Done { job, result, unit } = msg {
                    self.finish(*job, result, unit);
                }
            }
        };
        drain.await;
    }

    fn next_wake(&self) -> Option<i64> {
        let t = self.timers.peek().map(|Reverse(t)| t.due);
        let w = self.wakeups.peek().map(|Reverse((at, _))| *at);
        let k = self.key_wakeups.peek().map(|Reverse((at, _, _))| *at);
        let l = self.lease_timers.peek().map(|Reverse((at, _, _))| *at);
        let p = self.poll_timers.peek().map(|Reverse((at, _))| *at);
        [t, w, k, l, p].into_iter().flatten().min()
    }

    /// Reads ingest's floor, then handles everything already sent: whatever ingest handed over
    /// for an id below the floor was sent before the floor passed it, so it has now been seen.
    fn refresh_floor(&mut self) {
        let floor = (self.floor)();
        while let Ok(m) = self.rx.try_recv() {
            self.handle(m);
        }
        self.safe_floor = floor;
        let blocked = std::mem::take(&mut self.floor_blocked);
        let mut agents: Vec<Arc<str>> = Vec::new();
        for (agent, key) in blocked {
            self.advance(&agent, &key);
            if !agents.contains(&agent) {
                agents.push(agent);
            }
        }
        for a in agents {
            self.pump(&a);
        }
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Enqueue(jobs) => self.add(jobs),
            Msg::Done { job, result, unit } => {
                let agent = job.agent_id.clone();
                self.finish(*job, result, unit);
                self.pump(&agent);
            }
            Msg::TargetsChanged => {
                self.release_timers_of_gone_agents();
                let agents: Vec<Arc<str>> = self.lanes.keys().cloned().collect();
                for a in agents {
                    self.pump(&a);
                }
            }
            Msg::Snapshot(tx) => {
                let _ = tx.send(self.snapshot());
            }
            Msg::Cancel(ids, done) => {
                self.cancel(ids);
                let _ = done.send(());
            }
            Msg::RemoteBreaker(agent, open_until) => {
                let now = now_ms();
                let policy = self.policy_of(&agent);
                let lane = self.lanes.entry(agent.clone()).or_default();
                let b = lane
                    .breaker
                    .get_or_insert_with(|| Breaker::new(now, &policy));
                match open_until {
                    Some(until) => b.opened_elsewhere(now, until),
                    None => {
                        b.closed_elsewhere(now, &policy);
                        lane.probe = None;
                    }
                }
                self.publish_health(&agent);
                self.pump(&agent);
            }
            Msg::ResetHealth(agent, done) => {
                let now = now_ms();
                let policy = self.policy_of(&agent);
                if let Some(lane) = self.lanes.get_mut(&agent) {
                    if let Some(b) = &mut lane.breaker {
                        b.reset(now, &policy);
                    }
                    lane.probe = None;
                    lane.disable_sent = false;
                }
                self.publish_health(&agent);
                self.pump(&agent);
                let _ = done.send(());
            }
            Msg::Released(releases) => {
                let mut agents: Vec<Arc<str>> = Vec::new();
                for r in releases {
                    let Some(lane) = self.lanes.get_mut(&r.agent) else {
                        continue;
                    };
                    if let Some(kq) = lane.keys.get_mut(&r.key)
                        && kq.head == Some(r.delivery_id)
                    {
                        kq.head = None;
                        if r.held && self.claimer.is_none() {
                            kq.held = Some((r.delivery_id, r.event_id));
                        }
                    }
                    self.advance(&r.agent, &r.key);
                    if !agents.contains(&r.agent) {
                        agents.push(r.agent);
                    }
                }
                for a in agents {
                    self.pump(&a);
                }
            }
            Msg::Claimed(results) => {
                let now = now_ms();
                let mut agents: Vec<Arc<str>> = Vec::new();
                for (job, claim) in results {
                    let agent = job.agent_id.clone();
                    let Some(key) = job.keys.as_ref().and_then(|k| k.ordering.clone()) else {
                        continue;
                    };
                    let lane = self.lanes.entry(agent.clone()).or_default();
                    let kq = lane.keys.entry(key.clone()).or_default();
                    kq.claiming = false;
                    if claim == Claim::Gone {
                        tracing::info!(delivery_id = %job.delivery_id, agent = %agent, "an ordered delivery was taken over by another node; dropped here");
                        self.unhold(&job);
                        self.unfinished.fetch_sub(1, AtomicOrdering::AcqRel);
                        self.free_key(&job);
                    } else if claim == Claim::Granted && kq.head == Some(job.delivery_id) {
                        self.place(job, now);
                    } else {
                        // Another node holds the key, or an earlier delivery of it is elsewhere:
                        // back in line, and the key is looked at again shortly.
                        if kq.head == Some(job.delivery_id) {
                            kq.head = None;
                        }
                        kq.waiting.insert((job.event_id, job.delivery_id), job);
                        self.key_wakeups
                            .push(Reverse((now + CLAIM_RETRY_MS, agent.clone(), key)));
                    }
                    if !agents.contains(&agent) {
                        agents.push(agent);
                    }
                }
                for a in agents {
                    self.pump(&a);
                }
            }
            Msg::Poll(agent, waiter) => self.on_poll(agent, waiter),
            Msg::Granted(grant) => self.on_granted(*grant),
            Msg::Settle(agent, ids, op, reply) => self.on_settle(agent, ids, op, reply),
            Msg::Consumers(agent, reply) => {
                let _ = reply.send(self.consumers(&agent));
            }
            Msg::Taken(ids) => self.taken(ids),
            Msg::AckedElsewhere(ids) => self.acked_elsewhere(ids),
            Msg::CountAcked(agent, n) => {
                self.acked += n as u64;
                for _ in 0..n {
                    self.analytics.acked(&agent);
                    self.analytics
                        .attempt(&agent, 1, "delivered", Duration::ZERO, None);
                }
            }
            Msg::DeadRemoved(id) => self.unhold_keys(|d| d == id),
            Msg::HeldNow(held) => self.unhold_keys(|d| !held.contains(&d)),
            Msg::Requeue(mut jobs) => {
                // Out of flight, and queued again for a moment from now.
                let due = now_ms() + BODY_RETRY_MS;
                let mut freed: Vec<Arc<str>> = Vec::new();
                for job in &mut jobs {
                    if let Some(lane) = self.lanes.get_mut(&job.agent_id) {
                        lane.in_flight = lane.in_flight.saturating_sub(1);
                    }
                    if !freed.contains(&job.agent_id) {
                        freed.push(job.agent_id.clone());
                    }
                    job.due_at = due;
                }
                self.add(jobs);
                for agent in freed {
                    self.pump(&agent);
                }
            }
        }
    }

    /// Keys held by a dead letter that `gone` says is no longer stored move on.
    fn unhold_keys(&mut self, gone: impl Fn(Uuid) -> bool) {
        let mut freed: Vec<(Arc<str>, Arc<str>)> = Vec::new();
        for (agent, lane) in &mut self.lanes {
            for (key, kq) in &mut lane.keys {
                if kq.held.is_some_and(|(d, _)| gone(d)) {
                    kq.held = None;
                    freed.push((agent.clone(), key.clone()));
                }
            }
        }
        for (agent, key) in freed {
            self.advance(&agent, &key);
            self.pump(&agent);
        }
    }

    /// Takes the deliveries of erased events out of the lanes and timers, and remembers the
    /// events for attempts under way (and jobs on their way back from the body loader).
    fn cancel(&mut self, ids: Vec<Uuid>) {
        let now = now_ms();
        self.cancelled
            .retain(|_, at| now - *at < CANCELLED_MEMORY_MS);
        for id in &ids {
            self.cancelled.insert(*id, now);
        }
        let gone = |job: &Job| ids.contains(&job.event_id);
        let mut dropped: Vec<Job> = Vec::new();
        for lane in self.lanes.values_mut() {
            if !lane.ready.iter().any(|r| gone(&r.job)) {
                continue;
            }
            let (out, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut lane.ready)
                .into_iter()
                .partition(|r| gone(&r.job));
            lane.ready = kept.into_iter().collect();
            dropped.extend(out.into_iter().map(|r| r.job));
        }
        if self.timers.iter().any(|Reverse(t)| gone(&t.job)) {
            let (out, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.timers)
                .into_iter()
                .partition(|Reverse(t)| gone(&t.job));
            self.timers = kept.into_iter().collect();
            for Reverse(t) in out {
                if let Some(lane) = self.lanes.get_mut(&t.job.agent_id) {
                    lane.scheduled = lane.scheduled.saturating_sub(1);
                }
                dropped.push(t.job);
            }
        }
        // Ordering keys: waiting deliveries of erased events leave, a head that left frees its
        // key, and so does a dead letter that held it. Coalescing slots of them are forgotten.
        let mut keys: Vec<(Arc<str>, Arc<str>)> = Vec::new();
        for (agent, lane) in self.lanes.iter_mut() {
            lane.coalescing
                .retain(|_, slot| !ids.contains(&slot.event_id));
            for (key, kq) in lane.keys.iter_mut() {
                let before = kq.waiting.len();
                kq.waiting.retain(|(event, _), job| {
                    if ids.contains(event) {
                        dropped.push(job.clone());
                        false
                    } else {
                        true
                    }
                });
                let head_gone = kq.head.is_some_and(|h| {
                    dropped
                        .iter()
                        .any(|j| j.delivery_id == h && j.agent_id == *agent)
                });
                if head_gone {
                    kq.head = None;
                }
                if kq.held.is_some_and(|(_, e)| ids.contains(&e)) {
                    kq.held = None;
                }
                if head_gone || kq.waiting.len() != before || kq.held.is_none() {
                    keys.push((agent.clone(), key.clone()));
                }
            }
        }
        for job in &dropped {
            self.unhold(job);
            self.superseded.remove(&job.delivery_id);
        }
        self.cancel_leases(&ids);
        for (agent, key) in keys {
            self.advance(&agent, &key);
            self.pump(&agent);
        }
        if !dropped.is_empty() {
            self.unfinished
                .fetch_sub(dropped.len() as i64, AtomicOrdering::AcqRel);
            tracing::info!(
                deliveries = dropped.len(),
                "deliveries of erased events cancelled"
            );
        }
    }

    fn add(&mut self, jobs: Vec<Job>) {
        let now = now_ms();
        let mut touched: Vec<Arc<str>> = Vec::new();
        let mut keys: Vec<(Arc<str>, Arc<str>)> = Vec::new();
        for mut job in jobs {
            if self.cancelled.contains_key(&job.event_id) {
                self.unfinished.fetch_sub(1, AtomicOrdering::AcqRel);
                continue;
            }
            self.hold(&mut job);
            if job.keys.as_ref().is_some_and(|k| k.coalesce.is_some()) {
                self.coalesce(&mut job);
            }
            if let Some(key) = job.keys.as_ref().and_then(|k| k.ordering.clone()) {
                self.ordering_seen = true;
                let lane = self.lanes.entry(job.agent_id.clone()).or_default();
                let kq = lane.keys.entry(key.clone()).or_default();
                if kq.head == Some(job.delivery_id) {
                    // The head coming back (its body could not be read): it keeps the key.
                } else if kq.held.is_some_and(|(d, _)| d == job.delivery_id) {
                    // The dead letter that held the key, retried: it goes first.
                    kq.held = None;
                    kq.head = Some(job.delivery_id);
                } else {
                    let agent = job.agent_id.clone();
                    kq.waiting.insert((job.event_id, job.delivery_id), job);
                    if !keys.iter().any(|(a, k)| *k == key && *a == agent) {
                        keys.push((agent, key));
                    }
                    continue;
                }
            }
            if !touched.contains(&job.agent_id) {
                touched.push(job.agent_id.clone());
            }
            self.place(job, now);
        }
        // Heads are picked once the whole batch is in: the smallest event id of each key.
        for (agent, key) in keys {
            self.advance(&agent, &key);
            if !touched.contains(&agent) {
                touched.push(agent);
            }
        }
        for agent in touched {
            self.pump(&agent);
        }
    }

    /// Puts a job where it waits for its time or its turn in its lane.
    fn place(&mut self, job: Job, now: i64) {
        self.seq += 1;
        let lane = self.lanes.entry(job.agent_id.clone()).or_default();
        if job.due_at > now {
            lane.scheduled += 1;
            self.timers.push(Reverse(Timed {
                due: job.due_at,
                seq: self.seq,
                job,
            }));
        } else {
            lane.ready.push(Ready {
                priority: job.priority,
                seq: self.seq,
                job,
            });
        }
    }

    /// A new delivery of a coalescing key: the key's delivery still waiting for its attempt, if
    /// older, is superseded by this one, which takes over what it carried and waits its window
    /// again (never past `maxWaitMs` from the first superseded delivery).
    fn coalesce(&mut self, job: &mut Job) {
        let Some((key, _window, max_wait)) = job.keys.as_ref().and_then(|k| k.coalesce.clone())
        else {
            return;
        };
        if job.attempts > 0 {
            return;
        }
        let lane = self.lanes.entry(job.agent_id.clone()).or_default();
        let newer = |slot: &CoalesceSlot| slot.event_id < job.event_id;
        let Some(slot) = lane.coalescing.get(&key) else {
            lane.coalescing.insert(key, slot_of(job));
            return;
        };
        if !newer(slot) {
            return;
        }
        let Some(slot) = lane.coalescing.remove(&key) else {
            return;
        };
        // Take the superseded delivery out of line: from its ordering key's waiting list, or
        // (when it is in `ready` or `timers`) when it comes out.
        let mut taken = None;
        if let Some(okey) = &slot.ordering
            && let Some(kq) = lane.keys.get_mut(okey)
        {
            taken = kq.waiting.remove(&(slot.event_id, slot.delivery_id));
        }
        match taken {
            Some(old) => {
                self.unhold(&old);
                self.unfinished.fetch_sub(1, AtomicOrdering::AcqRel);
            }
            None => {
                self.superseded.insert(slot.delivery_id);
            }
        }
        let mut carried = slot.carried.map(|c| *c).unwrap_or(Carried {
            count: 0,
            event_ids: Default::default(),
            since: slot.created_at,
        });
        carried.count += 1;
        carried.event_ids.push_back(slot.event_id);
        while carried.event_ids.len() > MAX_SUPERSEDED_IDS {
            carried.event_ids.pop_front();
        }
        if let Some(mine) = job.superseded.take() {
            // Reloaded after a restart with what it carried already recorded.
            carried.count = carried.count.max(mine.count);
        }
        job.due_at = job
            .due_at
            .min(carried.since.saturating_add(max_wait as i64));
        let _ = self.recorder.send(Record::Supersede(Supersession {
            old: slot.delivery_id,
            by: job.delivery_id,
            carried: carried.info(),
            due: job.due_at,
        }));
        job.superseded = Some(Box::new(carried));
        let lane = self.lanes.entry(job.agent_id.clone()).or_default();
        lane.coalescing.insert(key, slot_of(job));
    }

    /// Picks the next delivery of an ordering key when the key is free: the smallest event id
    /// waiting, once ingest can no longer hand over a smaller one. On several nodes the head
    /// is claimed in the store first.
    fn advance(&mut self, agent: &Arc<str>, key: &Arc<str>) {
        let now = now_ms();
        loop {
            let Some(lane) = self.lanes.get_mut(agent) else {
                return;
            };
            let Some(kq) = lane.keys.get_mut(key) else {
                return;
            };
            if kq.head.is_some() || kq.claiming || kq.held.is_some() {
                return;
            }
            let Some((&(event_id, delivery_id), _)) = kq.waiting.first_key_value() else {
                lane.keys.remove(key);
                return;
            };
            if self.superseded.remove(&delivery_id) {
                if let Some(job) = kq.waiting.remove(&(event_id, delivery_id)) {
                    self.unhold(&job);
                    self.unfinished.fetch_sub(1, AtomicOrdering::AcqRel);
                }
                continue;
            }
            if event_id >= self.safe_floor {
                // A smaller id may still be committing: look again once the floor is read
                // again, and in a moment at the latest.
                self.floor_blocked.push((agent.clone(), key.clone()));
                self.key_wakeups
                    .push(Reverse((now + FLOOR_RETRY_MS, agent.clone(), key.clone())));
                return;
            }
            let Some(job) = kq.waiting.remove(&(event_id, delivery_id)) else {
                return;
            };
            kq.head = Some(delivery_id);
            if let Some(claimer) = &self.claimer {
                kq.claiming = true;
                if let Err(e) = claimer.send(job) {
                    // Only when stopping: the key stays as it is.
                    kq.claiming = false;
                    kq.head = None;
                    let job = e.0;
                    kq.waiting.insert((job.event_id, job.delivery_id), job);
                }
                return;
            }
            self.place(job, now);
            return;
        }
    }

    /// A delivery of an ordering key left without an attempt or its outcome to record
    /// (superseded, cancelled): the key moves on at once.
    fn free_key(&mut self, job: &Job) {
        let Some(key) = job.keys.as_ref().and_then(|k| k.ordering.clone()) else {
            return;
        };
        if let Some(kq) = self
            .lanes
            .get_mut(&job.agent_id)
            .and_then(|l| l.keys.get_mut(&key))
            && kq.head == Some(job.delivery_id)
        {
            kq.head = None;
        }
        self.advance(&job.agent_id.clone(), &key);
    }

    /// The key to release once an outcome that ends `job` is committed.
    fn release_of(&self, job: &Job, status: DeliveryStatus) -> Option<KeyRelease> {
        let keys = job.keys.as_ref()?;
        let key = keys.ordering.clone()?;
        Some(KeyRelease {
            agent: job.agent_id.clone(),
            key,
            delivery_id: job.delivery_id,
            event_id: job.event_id,
            held: keys.hold && status == DeliveryStatus::Dead,
        })
    }

    /// A superseded job comes out of `ready` or `timers`: it ends there (the store has it
    /// `superseded`), and its ordering key, if it was the head, moves on.
    fn drop_superseded(&mut self, job: Job) {
        self.unhold(&job);
        self.unfinished.fetch_sub(1, AtomicOrdering::AcqRel);
        self.free_key(&job);
    }

    /// Counts a job's body as queued, or lets go of it when the budget is spent.
    fn hold(&mut self, job: &mut Job) {
        if let Some(b) = &job.body {
            if self.resident + b.len() > self.body_budget {
                job.body = None;
            } else {
                self.resident += b.len();
            }
        }
    }

    /// A job leaves the queue (for an attempt, or dead without one).
    fn unhold(&mut self, job: &Job) {
        if let Some(b) = &job.body {
            self.resident = self.resident.saturating_sub(b.len());
        }
    }

    /// Retries waiting for their time whose agent was deleted (or lost its url) go to their
    /// lanes now, where `pump` dead-letters them with the lane's ready ones, instead of staying
    /// scheduled (and counted against `max_queue_size`) until a retry time that may be days away.
    fn release_timers_of_gone_agents(&mut self) {
        let targets = self.targets.load();
        let gone = |t: &Timed| !targets.contains_key(&t.job.agent_id);
        if !self.timers.iter().any(|Reverse(t)| gone(t)) {
            return;
        }
        let (released, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.timers)
            .into_iter()
            .partition(|Reverse(t)| gone(t));
        self.timers = kept.into_iter().collect();
        for Reverse(t) in released {
            let lane = self.lanes.entry(t.job.agent_id.clone()).or_default();
            lane.scheduled = lane.scheduled.saturating_sub(1);
            lane.ready.push(Ready {
                priority: t.job.priority,
                seq: t.seq,
                job: t.job,
            });
        }
    }

    /// Moves due retries into their lanes and pumps lanes whose pacing allows again.
    fn fire_due(&mut self) {
        let now = now_ms();
        let mut touched: Vec<Arc<str>> = Vec::new();
        while self.timers.peek().is_some_and(|Reverse(t)| t.due <= now) {
            let Some(Reverse(t)) = self.timers.pop() else {
                break;
            };
            let lane = self.lanes.entry(t.job.agent_id.clone()).or_default();
            lane.scheduled = lane.scheduled.saturating_sub(1);
            if !touched.contains(&t.job.agent_id) {
                touched.push(t.job.agent_id.clone());
            }
            if self.superseded.remove(&t.job.delivery_id) {
                self.drop_superseded(t.job);
                continue;
            }
            // Several nodes: an ordered delivery claims its key again before each attempt, so
            // a node that lost its lease meanwhile (and its delivery to another node) stops.
            if let (Some(claimer), Some(key)) = (
                &self.claimer,
                t.job.keys.as_ref().and_then(|k| k.ordering.as_ref()),
            ) && let Some(kq) = lane.keys.get_mut(key)
                && kq.head == Some(t.job.delivery_id)
            {
                kq.claiming = true;
                if let Err(e) = claimer.send(t.job) {
                    kq.claiming = false;
                    let job = e.0;
                    lane.ready.push(Ready {
                        priority: job.priority,
                        seq: t.seq,
                        job,
                    });
                }
                continue;
            }
            lane.ready.push(Ready {
                priority: t.job.priority,
                seq: t.seq,
                job: t.job,
            });
        }
        self.expire_leases(now, &mut touched);
        while self
            .key_wakeups
            .peek()
            .is_some_and(|Reverse((at, _, _))| *at <= now)
        {
            let Some(Reverse((_, agent, key))) = self.key_wakeups.pop() else {
                break;
            };
            self.advance(&agent, &key);
            if !touched.contains(&agent) {
                touched.push(agent);
            }
        }
        while self
            .wakeups
            .peek()
            .is_some_and(|Reverse((at, _))| *at <= now)
        {
            let Some(Reverse((_, agent))) = self.wakeups.pop() else {
                break;
            };
            if let Some(lane) = self.lanes.get_mut(&agent) {
                lane.waiting = false;
            }
            if !touched.contains(&agent) {
                touched.push(agent);
            }
        }
        for agent in touched {
            self.pump(&agent);
        }
    }

    /// Starts as many attempts for this agent as its concurrency and pacing allow.
    fn pump(&mut self, agent: &Arc<str>) {
        if self.stopping {
            return;
        }
        let targets = self.targets.load();
        let target = targets.get(agent).cloned();
        let Some(lane) = self.lanes.get_mut(agent) else {
            return;
        };
        let Some(target) = target else {
            // The agent was deleted (or lost its url): its deliveries cannot be made.
            let (gone, dead): (Vec<Job>, Vec<Job>) = lane
                .ready
                .drain()
                .map(|r| r.job)
                .partition(|j| self.superseded.contains(&j.delivery_id));
            lane.coalescing.clear();
            for job in gone {
                self.superseded.remove(&job.delivery_id);
                self.drop_superseded(job);
            }
            for job in dead {
                self.unhold(&job);
                let result = AttemptResult {
                    delivered: false,
                    started_at: now_ms(),
                    duration_ms: 0,
                    took: Duration::ZERO,
                    status_code: None,
                    error: Some("the agent no longer exists or has no url".into()),
                    response_prefix: None,
                    retry_after: None,
                    detail: None,
                };
                self.dead_now(job, result);
            }
            return;
        };
        if !target.enabled {
            // Held, not dropped: a disabled agent's deliveries wait until it is enabled again.
            lane.held_disabled = true;
            return;
        }
        if target.pull {
            // Consumers pull at their own pace: no breaker, concurrency or pacing applies.
            lane.held_disabled = false;
            self.serve(agent);
            return;
        }
        let now = now_ms();
        let breaker = lane
            .breaker
            .get_or_insert_with(|| Breaker::new(now, &target.breaker));
        if std::mem::take(&mut lane.held_disabled) {
            // Enabled again: it starts with a closed breaker.
            breaker.reset(now, &target.breaker);
            lane.disable_sent = false;
            lane.probe = None;
            if let Ok(mut map) = self.health.lock() {
                map.remove(agent);
            }
            metrics::gauge!("agent_circuit_state", "agent" => agent.to_string()).set(0.0);
        }
        // Superseded jobs at the top of the heap end here rather than being attempted.
        let mut gone = Vec::new();
        match breaker.admission(now) {
            Admission::Any => {}
            Admission::Probing => return,
            Admission::WaitUntil(at) => {
                if !lane.waiting {
                    lane.waiting = true;
                    self.wakeups.push(Reverse((at, agent.clone())));
                }
                return;
            }
            Admission::Probe => {
                // One attempt decides, once the attempts under way have ended.
                if lane.in_flight > 0 {
                    return;
                }
                skip_superseded(&mut lane.ready, &mut self.superseded, &mut gone);
                let Some(Ready { job, .. }) = lane.ready.pop() else {
                    for job in gone {
                        self.drop_superseded(job);
                    }
                    return;
                };
                started(&mut lane.coalescing, &job);
                breaker.probe_started(now);
                lane.probe = Some(job.delivery_id);
                lane.in_flight += 1;
                lane.sent.push_back(now);
                self.unhold(&job);
                self.publish_health(agent);
                self.spawn_attempts(vec![job], target);
                for job in gone {
                    self.drop_superseded(job);
                }
                return;
            }
        }
        let mut start = Vec::new();
        while lane.in_flight < target.max_concurrency.max(1) {
            if !self.superseded.is_empty() {
                skip_superseded(&mut lane.ready, &mut self.superseded, &mut gone);
            }
            if lane.ready.is_empty() {
                break;
            }
            if let Some(p) = target.pacing {
                // A sliding log of the last `limit` starts: never more than `limit` attempts in
                // any window of `window` ms; the next one waits until the oldest leaves it.
                let limit = p.limit.max(1) as usize;
                let window = p.window_ms as i64;
                while lane.sent.len() > limit {
                    lane.sent.pop_front();
                }
                if lane.sent.len() == limit {
                    let oldest = lane.sent.front().copied().unwrap_or(now);
                    if now - oldest < window {
                        if !lane.waiting {
                            lane.waiting = true;
                            self.wakeups.push(Reverse((oldest + window, agent.clone())));
                        }
                        break;
                    }
                    lane.sent.pop_front();
                }
                lane.sent.push_back(now);
            }
            let Some(Ready { job, .. }) = lane.ready.pop() else {
                break;
            };
            started(&mut lane.coalescing, &job);
            lane.in_flight += 1;
            start.push(job);
        }
        for job in &start {
            self.unhold(job);
        }
        if !start.is_empty() {
            self.spawn_attempts(start, target);
        }
        for job in gone {
            self.drop_superseded(job);
        }
    }

    /// Starts attempts for jobs popped from one lane. Jobs held without their body go to the
    /// loader first.
    fn spawn_attempts(&self, jobs: Vec<Job>, target: Arc<AgentTarget>) {
        for mut job in jobs {
            if let Some(body) = job.body.take() {
                self.ctx.spawn(job, target.clone(), Ok(body));
                continue;
            }
            let handed = match &self.loader {
                Some(loader) => loader.send((job, target.clone())).map_err(|e| e.0),
                None => Err((job, target.clone())),
            };
            if let Err((job, target)) = handed {
                self.ctx.spawn(job, target, Err(LOADER_GONE.into()));
            }
        }
    }

    /// Records an attempt's outcome and decides what comes next.
    fn finish(&mut self, job: Job, result: AttemptResult, unit: f64) {
        if let Some(lane) = self.lanes.get_mut(&job.agent_id) {
            lane.in_flight = lane.in_flight.saturating_sub(1);
        }
        // The agent's answer counts for its breaker whatever becomes of the delivery (a probe
        // whose event was erased meanwhile still decides the breaker).
        let probe = !self.is_pull(&job.agent_id) && self.breaker_outcome(&job, &result);
        if self.cancelled.contains_key(&job.event_id) {
            // Its event was erased while the attempt ran: the outcome goes in the attempt log
            // (the store keeps the delivery `cancelled`), and nothing follows it.
            let _ = self.recorder.send(Record::Attempt(
                attempt_update(&job, result, false, DeliveryStatus::Cancelled, None),
                None,
            ));
            self.unfinished.fetch_sub(1, AtomicOrdering::AcqRel);
            self.free_key(&job);
            return;
        }
        if probe && !result.delivered {
            // A failed probe found the agent still down: the delivery does not spend its
            // budget on it, and waits in its lane for the next probe.
            self.analytics.attempt(
                &job.agent_id,
                job.attempts,
                "retry_scheduled",
                result.took,
                None,
            );
            let mut job = job;
            job.retry_base = job.retry_base.saturating_add(1);
            let next = self
                .lanes
                .get(&job.agent_id)
                .and_then(|l| l.breaker.as_ref())
                .and_then(|b| b.next_probe_at);
            let _ = self.recorder.send(Record::Attempt(
                attempt_update(&job, result, true, DeliveryStatus::Scheduled, next),
                None,
            ));
            self.hold(&mut job);
            self.seq += 1;
            let lane = self.lanes.entry(job.agent_id.clone()).or_default();
            lane.ready.push(Ready {
                priority: job.priority,
                seq: self.seq,
                job,
            });
            return;
        }
        let used = job.attempts.saturating_sub(job.retry_base);
        let (status, next) = if result.delivered {
            (DeliveryStatus::Delivered, None)
        } else if used >= job.policy.max_attempts {
            (DeliveryStatus::Dead, None)
        } else {
            let delay = job.policy.next_delay(used, result.retry_after, unit);
            (DeliveryStatus::Scheduled, Some(now_ms() + delay as i64))
        };
        let outcome = match status {
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Dead => "dead",
            _ => "retry_scheduled",
        };
        self.analytics.attempt(
            &job.agent_id,
            job.attempts,
            outcome,
            result.took,
            result.delivered.then(|| now_ms() - job.created_at),
        );
        if status == DeliveryStatus::Dead {
            tracing::warn!(event_id = %job.event_id, agent = %job.agent_id, attempts = job.attempts, "delivery dead-lettered");
            let _ = self.signals.send(Signal::DeadLettered {
                agent: job.agent_id.clone(),
                event_id: job.event_id,
                delivery_id: job.delivery_id,
                source: job.source.clone(),
                event_type: job.event_type.clone(),
                attempts: job.attempts,
                error: result.error.clone(),
            });
        }
        let release = match status {
            DeliveryStatus::Delivered | DeliveryStatus::Dead => self.release_of(&job, status),
            _ => None,
        };
        let _ = self.recorder.send(Record::Attempt(
            attempt_update(&job, result, true, status, next),
            release,
        ));
        match next {
            Some(due) => {
                let mut job = job;
                self.hold(&mut job);
                self.seq += 1;
                let lane = self.lanes.entry(job.agent_id.clone()).or_default();
                lane.scheduled += 1;
                self.timers.push(Reverse(Timed {
                    due,
                    seq: self.seq,
                    job,
                }));
            }
            None => {
                self.unfinished.fetch_sub(1, AtomicOrdering::AcqRel);
            }
        }
    }

    /// The breaker policy of `agent` as the rules have it now.
    fn policy_of(&self, agent: &str) -> BreakerPolicy {
        self.targets
            .load()
            .get(agent)
            .map(|t| t.breaker)
            .unwrap_or_default()
    }

    /// Counts an attempt's outcome in its agent's breaker, tells what changed, and says whether
    /// the attempt was the half-open probe.
    fn breaker_outcome(&mut self, job: &Job, result: &AttemptResult) -> bool {
        let now = now_ms();
        let policy = self.policy_of(&job.agent_id);
        let Some(lane) = self.lanes.get_mut(&job.agent_id) else {
            return false;
        };
        let probe = lane.probe == Some(job.delivery_id);
        if probe {
            lane.probe = None;
        }
        let breaker = lane
            .breaker
            .get_or_insert_with(|| Breaker::new(now, &policy));
        let (was_failing, opened_at) = (breaker.consecutive_failures > 0, breaker.since);
        let transition = if result.delivered {
            breaker.succeeded(now, &policy)
        } else {
            let retry_after = result.retry_after.map(|d| d.as_millis() as u64);
            let error = result.error.as_deref().unwrap_or("attempt failed");
            breaker.failed(now, error, retry_after, probe, &policy)
        };
        let disable =
            !result.delivered && !lane.disable_sent && breaker.should_disable(now, &policy);
        let failing_since = breaker.failing_since;
        let health = AgentHealth::of(breaker);
        if disable {
            lane.disable_sent = true;
        }
        if result.delivered {
            lane.disable_sent = false;
        }
        let agent = job.agent_id.clone();
        match transition {
            Some(Transition::Opened) => {
                tracing::warn!(agent = %agent, failures = health.consecutive_failures, "circuit opened: no attempts until the next probe");
                let _ = self.signals.send(Signal::CircuitOpened {
                    agent: agent.clone(),
                    health: health.clone(),
                });
            }
            Some(Transition::Recovered) => {
                tracing::info!(agent = %agent, "circuit closed: the agent recovered");
                let _ = self.signals.send(Signal::Recovered {
                    agent: agent.clone(),
                    down_ms: now - opened_at,
                });
            }
            Some(Transition::Reopened) | None => {}
        }
        if disable {
            tracing::warn!(agent = %agent, "agent failing without a success for its disableAfterMs: disabling it");
            let _ = self.signals.send(Signal::Disable {
                agent: agent.clone(),
                failing_since: failing_since.unwrap_or(now),
                last_error: health.last_error.clone(),
            });
        }
        if transition.is_some() || !result.delivered || was_failing {
            self.publish_health(&agent);
        }
        probe
    }

    /// Writes the agent's breaker where admin and metrics read it: absent while all is well.
    fn publish_health(&self, agent: &Arc<str>) {
        let view = self
            .lanes
            .get(agent)
            .and_then(|l| l.breaker.as_ref())
            .filter(|b| b.state != breaker::State::Closed || b.consecutive_failures > 0)
            .map(AgentHealth::of);
        let state = view.as_ref().map_or(0.0, |h| h.state.gauge());
        metrics::gauge!("agent_circuit_state", "agent" => agent.to_string()).set(state);
        if let Ok(mut map) = self.health.lock() {
            match view {
                Some(h) => {
                    map.insert(agent.clone(), h);
                }
                None => {
                    map.remove(agent);
                }
            }
        }
    }

    /// Dead-letters a job without an attempt (its agent is gone).
    fn dead_now(&mut self, job: Job, result: AttemptResult) {
        self.analytics.dead_without_attempt(&job.agent_id);
        let release = self.release_of(&job, DeliveryStatus::Dead);
        let update = AttemptUpdate {
            delivery_id: job.delivery_id,
            attempt: job.attempts + 1,
            started_at: result.started_at,
            duration_ms: 0,
            status_code: None,
            error: result.error,
            response_prefix: None,
            detail: None,
            status: DeliveryStatus::Dead,
            next_attempt_at: None,
        };
        let _ = self.recorder.send(Record::Attempt(update, release));
        self.unfinished.fetch_sub(1, AtomicOrdering::AcqRel);
    }

    fn snapshot(&self) -> QueueSnapshot {
        let now = now_ms();
        let mut s = QueueSnapshot::default();
        let mut oldest = i64::MAX;
        for (agent, lane) in &self.lanes {
            let waiting: usize = lane.keys.values().map(|k| k.waiting.len()).sum();
            let a = AgentQueue {
                pending: (lane.ready.len() + waiting) as u64,
                in_flight: lane.in_flight as u64,
                scheduled: lane.scheduled as u64,
                leased: Dispatcher::leased(lane) as u64,
            };
            s.pending += a.pending;
            s.in_flight += a.in_flight;
            s.scheduled += a.scheduled;
            s.leased += a.leased;
            for r in lane.ready.iter() {
                oldest = oldest.min(r.job.created_at);
                *s.by_priority.entry(r.priority.to_string()).or_default() += 1;
            }
            if a.pending + a.in_flight + a.scheduled + a.leased > 0 {
                s.by_agent.insert(agent.to_string(), a);
            }
        }
        for Reverse(t) in self.timers.iter() {
            *s.by_priority.entry(t.job.priority.to_string()).or_default() += 1;
        }
        s.acked = self.acked;
        if oldest != i64::MAX {
            s.oldest_pending_age_ms = (now - oldest).max(0) as u64;
        }
        s
    }
}

/// A job leaves the queue for an attempt: it is no longer its coalescing key's waiting one.
fn started(coalescing: &mut HashMap<Arc<str>, CoalesceSlot>, job: &Job) {
    if let Some((key, ..)) = job.keys.as_ref().and_then(|k| k.coalesce.as_ref())
        && coalescing
            .get(key)
            .is_some_and(|s| s.delivery_id == job.delivery_id)
    {
        coalescing.remove(key);
    }
}

/// Takes superseded jobs off the top of a lane's heap (into `gone`).
fn skip_superseded(
    ready: &mut BinaryHeap<Ready>,
    superseded: &mut std::collections::HashSet<Uuid>,
    gone: &mut Vec<Job>,
) {
    while ready
        .peek()
        .is_some_and(|r| superseded.contains(&r.job.delivery_id))
    {
        if let Some(r) = ready.pop() {
            superseded.remove(&r.job.delivery_id);
            gone.push(r.job);
        }
    }
}

/// A coalescing slot for `job`, the newest delivery of its key.
fn slot_of(job: &Job) -> CoalesceSlot {
    CoalesceSlot {
        delivery_id: job.delivery_id,
        event_id: job.event_id,
        created_at: job.created_at,
        carried: job.superseded.clone(),
        ordering: job.keys.as_ref().and_then(|k| k.ordering.clone()),
    }
}

/// The outcome of an attempt as the store records it.
fn attempt_update(
    job: &Job,
    result: AttemptResult,
    response_prefix: bool,
    status: DeliveryStatus,
    next_attempt_at: Option<i64>,
) -> AttemptUpdate {
    AttemptUpdate {
        delivery_id: job.delivery_id,
        attempt: job.attempts,
        started_at: result.started_at,
        duration_ms: result.duration_ms,
        status_code: result.status_code,
        error: result.error,
        response_prefix: if response_prefix {
            result.response_prefix
        } else {
            None
        },
        detail: result.detail,
        status,
        next_attempt_at,
    }
}

/// The failure of a bodiless job that reaches `spawn_attempts` after the loader stopped (which
/// only happens when stopping, when `pump` starts nothing).
const LOADER_GONE: &str = "the delivery body loader has stopped";

/// Reads the bodies of jobs held without one, for everything that queued up during the last
/// read at once (as the writer batches commits), and starts their attempts. One read at a time:
/// a backlog of bodiless jobs costs one store round trip per batch, not one per attempt.
async fn load_loop(
    store: Arc<dyn Store>,
    ctx: AttemptCtx,
    mut rx: mpsc::UnboundedReceiver<(Job, Arc<AgentTarget>)>,
) {
    let mut batch = Vec::with_capacity(256);
    while rx.recv_many(&mut batch, 1024).await > 0 {
        Analytics::bodies_read(batch.len());
        let ids = batch.iter().map(|(j, _)| j.delivery_id).collect();
        let mut found = match store.delivery_bodies(ids).await {
            Ok(found) => found.into_iter().collect::<HashMap<Uuid, String>>(),
            Err(e) => {
                // The store failing is no failure of the deliveries: they use up no attempt,
                // and wait to be read again.
                tracing::warn!(error = %e, deliveries = batch.len(), "reading delivery bodies failed; trying again shortly");
                let jobs = batch.drain(..).map(|(job, _)| job).collect();
                let _ = ctx.tx.send(Msg::Requeue(jobs));
                continue;
            }
        };
        for (job, target) in batch.drain(..) {
            // A body the store no longer has (or cannot open) fails this attempt, which is
            // retried and dead-lettered as any failed attempt is.
            let body = found
                .remove(&job.delivery_id)
                .map(Bytes::from)
                .ok_or_else(|| {
                    "the delivery's body is no longer in the store or does not open".to_string()
                });
            ctx.spawn(job, target, body);
        }
    }
}

/// What an attempt task needs of the dispatcher.
#[derive(Clone)]
struct AttemptCtx {
    client: deliver::Client,
    tx: mpsc::UnboundedSender<Msg>,
    attempts: TaskTracker,
}

impl AttemptCtx {
    /// Makes one attempt (or, when its body could not be had, records that as its failure) and
    /// reports the outcome to the dispatcher.
    fn spawn(&self, mut job: Job, target: Arc<AgentTarget>, body: Result<Bytes, String>) {
        let client = self.client.clone();
        let tx = self.tx.clone();
        job.attempts += 1;
        let span = tracing::info_span!(
            "delivery",
            event_id = %job.event_id,
            delivery_id = %job.delivery_id,
            agent = %job.agent_id,
            attempt = job.attempts,
        );
        self.attempts.spawn(tracing::Instrument::instrument(
            async move {
                let event_id = job.event_id.to_string();
                let traced = trace::Attempt::start(trace::AttemptInfo {
                    event_id: &job.event_id,
                    delivery_id: &job.delivery_id,
                    agent_id: &job.agent_id,
                    source: &job.source,
                    event_type: &job.event_type,
                    attempt: job.attempts,
                    uri: &target.uri,
                    stored: job.trace_context.as_deref(),
                });
                let superseded_ids = job.superseded.as_ref().map(|c| c.ids_text());
                let result = match &body {
                    Ok(body) => {
                        deliver::attempt(
                            &client,
                            &target,
                            AttemptRequest {
                                event_id: &event_id,
                                source: &job.source,
                                event_type: &job.event_type,
                                attempt: job.attempts,
                                body,
                                trace: traced.as_ref().map(trace::Attempt::headers),
                                superseded: job
                                    .superseded
                                    .as_ref()
                                    .zip(superseded_ids.as_deref())
                                    .map(|(c, ids)| (c.count, ids)),
                            },
                        )
                        .instrument(trace::Attempt::span_of(traced.as_ref()))
                        .await
                    }
                    Err(error) => AttemptResult {
                        delivered: false,
                        started_at: now_ms(),
                        duration_ms: 0,
                        took: Duration::ZERO,
                        status_code: None,
                        error: Some(error.clone()),
                        response_prefix: None,
                        retry_after: None,
                        detail: None,
                    },
                };
                // The attempt's log line inside its span, so that it names the trace.
                let _in_span = traced.as_ref().map(|t| {
                    t.finish(
                        result.status_code,
                        result.delivered,
                        result.error.as_deref(),
                    );
                    t.span.enter()
                });
                // A retry keeps the body if the budget has room for it then.
                job.body = body.ok();
                tracing::debug!(
                    event_id = %job.event_id,
                    agent = %job.agent_id,
                    attempt = job.attempts,
                    status = ?result.status_code,
                    delivered = result.delivered,
                    "delivery attempt"
                );
                let unit: f64 = rand::random();
                let _ = tx.send(Msg::Done {
                    job: Box::new(job),
                    result,
                    unit,
                });
            },
            span,
        ));
    }
}

async fn sleep_until_ms(at: Option<i64>) {
    let Some(at) = at else {
        return std::future::pending().await;
    };
    let wait = (at - now_ms()).max(0) as u64;
    tokio::time::sleep_until(Instant::now() + Duration::from_millis(wait)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_order_is_priority_then_fifo() {
        let job = |p: i64| Job {
            delivery_id: Uuid::nil(),
            event_id: Uuid::nil(),
            agent_id: "a".into(),
            route_id: "r".into(),
            priority: p,
            attempts: 0,
            retry_base: 0,
            policy: Arc::new(RetryPolicy::server_default(3, 10)),
            source: "s".into(),
            event_type: "t".into(),
            body: Some(Bytes::new()),
            due_at: 0,
            created_at: 0,
            trace_context: None,
            keys: None,
            superseded: None,
        };
        let mut h = BinaryHeap::new();
        for (seq, p) in [(1, 0), (2, 5), (3, 0), (4, 5), (5, 10)] {
            h.push(Ready {
                priority: p,
                seq,
                job: job(p),
            });
        }
        let order: Vec<(i64, u64)> =
            std::iter::from_fn(|| h.pop().map(|r| (r.priority, r.seq))).collect();
        assert_eq!(order, [(10, 5), (5, 2), (5, 4), (0, 1), (0, 3)]);
    }

    #[test]
    fn reservations_are_released_unless_kept() {
        let (tx, _rx) = mpsc::unbounded_channel();
        let q = Queue {
            tx,
            unfinished: Arc::new(AtomicI64::new(0)),
            max: 3,
            health: Default::default(),
            started_ms: 0,
        };
        let r = q.reserve(2).unwrap();
        assert!(q.reserve(2).is_err());
        drop(r);
        assert_eq!(q.unfinished(), 0);
        let r = q.reserve(3).unwrap();
        q.enqueue(Vec::new(), r);
        assert_eq!(q.unfinished(), 3);
        assert_eq!(q.reserve(1).err(), Some(QueueFull));
    }
}
