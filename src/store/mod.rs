//! The store is the truth: events, deliveries and rules live here, behind small per-concern
//! traits combined into one `Store` used as `Arc<dyn Store>` (SQLite embedded; PostgreSQL shared
//! by several nodes). `open` opens the store the configuration names.

#[cfg(test)]
mod conformance;
pub mod encrypted;
pub mod packed;
pub mod postgres;
pub mod sqlite;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use async_trait::async_trait;
use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use self::encrypted::EncryptedStore;
use self::postgres::{PgOptions, PgStore, redact_url};
use self::sqlite::{SqliteOptions, SqliteStore};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(String),
    #[error("the store is shutting down")]
    Closed,
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The store cannot write now (disk full, read-only, I/O error, database unreachable or
    /// starting up): nothing was stored, and the same request may succeed later. Answered
    /// `503 storage_unavailable` with `Retry-After`, never as an internal error.
    #[error("the store cannot write: {0}")]
    Unavailable(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What a delivery is doing (API.md section 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    Pending,
    InFlight,
    Scheduled,
    Delivered,
    Dead,
    /// Ended without being delivered because its event was erased (final, never retried).
    Cancelled,
    /// Ended without an attempt: a newer event with the same coalescing key took its place
    /// (final, not a failure, never dead-lettered).
    Superseded,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::InFlight => "in_flight",
            DeliveryStatus::Scheduled => "scheduled",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Dead => "dead",
            DeliveryStatus::Cancelled => "cancelled",
            DeliveryStatus::Superseded => "superseded",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => DeliveryStatus::Pending,
            "in_flight" => DeliveryStatus::InFlight,
            "scheduled" => DeliveryStatus::Scheduled,
            "delivered" => DeliveryStatus::Delivered,
            "dead" => DeliveryStatus::Dead,
            "cancelled" => DeliveryStatus::Cancelled,
            "superseded" => DeliveryStatus::Superseded,
            _ => return None,
        })
    }
}

/// A delivery to create together with its event.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub id: Uuid,
    pub agent_id: String,
    pub route_id: String,
    pub priority: i64,
    pub status: DeliveryStatus,
    /// The transformed event, when the route changed it; `None` = the event's own body.
    pub body: Option<Bytes>,
    /// The route's retry policy as JSON; `None` = server defaults.
    pub retry_policy: Option<String>,
    pub next_attempt_at: i64,
    pub last_error: Option<String>,
    /// The W3C trace context of the webhook that created it (`telemetry::TraceContext`), kept
    /// so that its attempts join that trace whenever and wherever they run; `None` while
    /// tracing is off.
    pub trace_context: Option<Arc<str>>,
    pub sequencing: Sequencing,
}

/// A delivery's ordering and coalescing, from its route (docs/delivery.md, "Ordered and
/// coalesced delivery"): the key values its event has.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sequencing {
    /// Deliveries of one agent with the same value go one at a time, in event-id order.
    pub ordering_key: Option<String>,
    /// A dead letter holds the key until it is retried and delivered, or deleted.
    pub ordering_hold: bool,
    /// A newer event with the same value supersedes this delivery while it waits.
    pub coalesce_key: Option<String>,
    pub coalesce_window_ms: u64,
    pub coalesce_max_wait_ms: u64,
}

/// What a delivery that carries a burst superseded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SupersededInfo {
    pub count: u32,
    /// The superseded deliveries' event ids, comma-separated, the most recent 100 at most.
    pub event_ids: String,
    /// When the first superseded delivery was created (ms): the burst's wait is bounded from it.
    pub since: i64,
}

/// One coalescing step, written back with attempt outcomes: `old` ends `superseded` by `by`
/// (if it is still pending), and `by` now carries the burst and waits until `due`.
#[derive(Debug, Clone)]
pub struct Supersession {
    pub old: Uuid,
    pub by: Uuid,
    pub carried: SupersededInfo,
    pub due: i64,
}

/// A dead letter that holds its ordering key (read at start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldKey {
    pub delivery_id: Uuid,
    pub event_id: Uuid,
    pub agent_id: String,
    pub key: String,
}

/// A node's claim on an ordering key for the delivery at the key's head (several nodes).
#[derive(Debug, Clone)]
pub struct KeyClaim {
    pub delivery_id: Uuid,
    pub event_id: Uuid,
    pub agent_id: String,
    pub key: String,
}

/// What `claim_keys` decided: the deliveries granted their key, and those this node no longer
/// owns unfinished (the rest wait and claim again).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyClaims {
    pub granted: Vec<Uuid>,
    pub gone: Vec<Uuid>,
}

/// An event to archive, with its deliveries, in one transaction.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub id: Uuid,
    pub source: String,
    pub event_type: String,
    pub action: Option<String>,
    pub delivery_id: Option<String>,
    pub timestamp: i64,
    pub filtered: bool,
    /// The whole section 4 event object, serialized (UTF-8 JSON).
    pub body: Bytes,
    pub deliveries: Vec<NewDelivery>,
    /// Stream-only agents the event was routed to, with their transformed body if any (kept so
    /// a reconnecting stream can replay what it missed).
    pub streamed: Vec<(String, Option<Bytes>)>,
}

/// One event of a stream's backlog: its id and the body the agent receives.
#[derive(Debug, Clone)]
pub struct BacklogItem {
    pub event_id: Uuid,
    pub body: String,
}

/// How a commit ended for one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitOutcome {
    Stored,
    /// The provider delivery id was seen before: nothing new was stored.
    Duplicate {
        event_id: Uuid,
        filtered: bool,
        routed: bool,
    },
}

/// An archived event as read back.
#[derive(Debug, Clone)]
pub struct EventRecord {
    pub id: Uuid,
    pub source: String,
    pub event_type: String,
    pub timestamp: i64,
    pub filtered: bool,
    /// The event object, or for an erased event its tombstone (see `tombstone`).
    pub body: String,
    /// When the event was erased (ms); `None` while it is whole.
    pub erased_at: Option<i64>,
}

/// What an erased event's row keeps in place of its body: the event's id, source, type and
/// timestamp, and when it was erased. Its provider delivery id stays in its own column, so a
/// redelivery of the same webhook is still answered as a duplicate.
pub fn tombstone(
    id: Uuid,
    source: &str,
    event_type: &str,
    timestamp: i64,
    erased_at: i64,
) -> String {
    serde_json::json!({
        "id": id,
        "source": source,
        "type": event_type,
        "timestamp": timestamp,
        "erasedAt": erased_at,
    })
    .to_string()
}

impl EventRecord {
    /// The stored event object; a row that does not parse is reported rather than hidden.
    pub fn event_json(&self) -> Result<Value> {
        parse_stored(&self.body)
    }
}

/// Parses JSON this server stored itself. Payloads may be nested up to the contract's 128
/// levels, and the event object wraps them once more, so serde_json's 128-level guard would
/// refuse them; ingest already bounded the depth.
pub fn parse_stored(text: &str) -> Result<Value> {
    let mut de = serde_json::Deserializer::from_str(text);
    de.disable_recursion_limit();
    serde::Deserialize::deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v))
        .map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// The smallest v7 id at or after `ms` (ids embed their millisecond in the top 48 bits), so
/// time bounds on the archive are bounds on its key.
pub(crate) fn id_floor(ms: i64) -> [u8; 16] {
    let ms = ms.clamp(0, (1 << 48) - 1) as u64;
    let mut b = [0u8; 16];
    b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    b
}

/// `processed` (passed the filters) or `filtered`, as the archive can be narrowed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventStatus {
    Processed,
    Filtered,
}

#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    pub source: Option<String>,
    pub event_type: Option<String>,
    /// Inclusive lower bound, ms.
    pub since: Option<i64>,
    /// Exclusive upper bound, ms.
    pub until: Option<i64>,
    pub status: Option<EventStatus>,
    pub limit: usize,
    /// Return events strictly older than this id (newest first).
    pub before: Option<Uuid>,
}

/// One attempt to deliver, as recorded.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AttemptRecord {
    pub attempt: u32,
    pub started_at: i64,
    pub duration_ms: u64,
    pub status_code: Option<u16>,
    pub error: Option<String>,
    /// Why it was made: `initial` (a delivery's first attempt), `scheduled` (a retry by its
    /// policy), `manual_retry` (the first after a retry from the dead-letter queue) or `replay`
    /// (the first of a delivery made by replaying its event). `None` for attempts recorded
    /// before this was kept.
    pub trigger: Option<String>,
    /// The request's headers as sent (credentials `[redacted]`), when a request was made.
    pub request_headers: Option<Value>,
    /// The agent's answer: its headers, and the first `deliver::RESPONSE_PREFIX` bytes of its
    /// body (as text).
    pub response_headers: Option<Value>,
    pub response_body: Option<String>,
}

/// Why an attempt was made, from its number and what its delivery's row says (`origin`, and
/// `retry_base`: the attempts spent before the last retry from the dead-letter queue). The stores
/// decide it when the attempt is recorded (the same rule in SQL).
pub fn attempt_trigger(attempt: u32, replayed: bool, retry_base: u32) -> &'static str {
    if attempt <= 1 {
        if replayed { "replay" } else { "initial" }
    } else if retry_base > 0 && attempt == retry_base + 1 {
        "manual_retry"
    } else {
        "scheduled"
    }
}

/// The headers of an exchange as the stores keep them (`deliver::exchange_detail`'s JSON):
/// (request headers, response headers). Text that does not parse (it never should) is dropped.
pub fn parse_detail(detail: Option<&str>) -> (Option<Value>, Option<Value>) {
    let Some(mut v) = detail.and_then(|d| serde_json::from_str::<Value>(d).ok()) else {
        return (None, None);
    };
    let take = |v: &mut Value, k: &str| v.get_mut(k).map(Value::take).filter(|v| !v.is_null());
    (
        take(&mut v, "requestHeaders"),
        take(&mut v, "responseHeaders"),
    )
}

/// What a delivery row keeps of a first attempt that succeeded (its `first_*` columns).
#[derive(Debug, Clone, Default)]
pub struct FirstSuccess {
    pub started_at: Option<i64>,
    pub duration_ms: Option<i64>,
    pub status_code: Option<u16>,
    pub detail: Option<String>,
    pub response_body: Option<String>,
    /// The delivery was made by a replay (its `origin`).
    pub replayed: bool,
}

impl AttemptRecord {
    /// The attempt log a delivery row's `first_*` columns hold: the first-attempt success, if
    /// it was one (see `AttemptUpdate::is_first_success`); `attempts` rows follow it.
    pub fn first_success_log(first: FirstSuccess) -> Vec<AttemptRecord> {
        match first.started_at {
            Some(started_at) => {
                let (request_headers, response_headers) = parse_detail(first.detail.as_deref());
                vec![AttemptRecord {
                    attempt: 1,
                    started_at,
                    duration_ms: first.duration_ms.unwrap_or(0).max(0) as u64,
                    status_code: first.status_code,
                    error: None,
                    trigger: Some(attempt_trigger(1, first.replayed, 0).to_string()),
                    request_headers,
                    response_headers,
                    response_body: first.response_body,
                }]
            }
            None => Vec::new(),
        }
    }
}

/// A delivery as the admin API shows it (API.md section 7).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryRecord {
    pub id: Uuid,
    pub event_id: Uuid,
    pub agent_id: String,
    pub route_id: String,
    pub priority: i64,
    pub status: DeliveryStatus,
    pub attempts: u32,
    pub next_attempt_at: Option<i64>,
    pub last_error: Option<String>,
    pub attempt_log: Vec<AttemptRecord>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ordering_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coalesce_key: Option<String>,
    /// The delivery that took this one's place (status `superseded`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub superseded_by: Option<Uuid>,
    /// How many deliveries this one superseded.
    #[serde(skip_serializing_if = "is_zero")]
    pub superseded_count: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// How an event's deliveries stand, for the archive's lists (`outcome`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryTally {
    pub delivered: u32,
    /// Unfinished, not attempted yet.
    pub pending: u32,
    /// Unfinished after at least one attempt.
    pub retrying: u32,
    pub dead: u32,
    pub cancelled: u32,
    /// Replaced by a newer event's delivery with the same coalescing key (final, no failure).
    pub superseded: u32,
    /// Stream-only agents it was routed to.
    pub streamed: u32,
}

impl DeliveryTally {
    /// Adds `n` deliveries in `status` (with or without an attempt made).
    pub fn add(&mut self, status: &str, attempted: bool, n: u32) {
        let slot = match DeliveryStatus::parse(status) {
            Some(DeliveryStatus::Delivered) => &mut self.delivered,
            Some(DeliveryStatus::Dead) => &mut self.dead,
            Some(DeliveryStatus::Cancelled) => &mut self.cancelled,
            Some(DeliveryStatus::Superseded) => &mut self.superseded,
            _ if attempted => &mut self.retrying,
            _ => &mut self.pending,
        };
        *slot += n;
    }
}

#[async_trait]
pub trait EventStore: Send + Sync {
    /// Archives an event and its deliveries durably. Concurrent calls share one transaction and
    /// one fsync (group commit); the future resolves only after the commit.
    async fn commit_event(&self, event: NewEvent) -> Result<CommitOutcome>;
    async fn get_event(&self, id: Uuid) -> Result<Option<EventRecord>>;
    /// Newest first.
    async fn list_events(&self, query: EventQuery) -> Result<Vec<EventRecord>>;
    async fn event_deliveries(&self, id: Uuid) -> Result<Vec<DeliveryRecord>>;
    /// How each event's deliveries stand (one index lookup per event); events without any
    /// delivery or stream copy are left out.
    async fn delivery_tallies(&self, ids: Vec<Uuid>) -> Result<Vec<(Uuid, DeliveryTally)>>;
    /// What a stream missed: events routed to `agent` (or, for `None`, every processed event)
    /// with ids after `after`, oldest first.
    async fn stream_backlog(
        &self,
        agent: Option<String>,
        after: Uuid,
        limit: usize,
    ) -> Result<Vec<BacklogItem>>;
    /// Erases events, in one transaction: each row's body becomes its `tombstone`, every
    /// delivery body, stored agent response and stream copy of it goes, and its deliveries that
    /// are not delivered (unfinished or dead) end `cancelled`. On SQLite freed content is
    /// overwritten (`secure_delete`) and the WAL is truncated afterwards; on PostgreSQL the other
    /// nodes are told (`Notice::Erased`) so they drop the deliveries they hold. Returns the ids
    /// erased now: unknown ids and events erased before are left out.
    async fn erase_events(&self, ids: Vec<Uuid>, erased_at: i64) -> Result<Vec<Uuid>>;
}

/// An unfinished delivery loaded back into the scheduler (at start, or from the DLQ).
#[derive(Debug, Clone)]
pub struct PendingDelivery {
    pub id: Uuid,
    pub event_id: Uuid,
    pub agent_id: String,
    pub route_id: String,
    pub priority: i64,
    pub attempts: u32,
    /// Attempts spent before the last retry from the dead-letter queue (a retried delivery gets
    /// a fresh `maxAttempts` budget; attempt numbers keep counting).
    pub retry_base: u32,
    pub next_attempt_at: i64,
    pub retry_policy: Option<String>,
    pub source: String,
    pub event_type: String,
    /// What to POST: the route's transformed event, or the event itself. `None` from
    /// `unfinished_deliveries` past its body budget: read it with `delivery_bodies` when needed.
    pub body: Option<String>,
    pub created_at: i64,
    /// The webhook's trace context, as `NewDelivery::trace_context`.
    pub trace_context: Option<String>,
    pub sequencing: Sequencing,
    /// What it superseded, if it carries a burst.
    pub superseded: Option<SupersededInfo>,
    /// The consumer holding its lease (a pull agent's delivery `in_flight`; the lease runs
    /// until `next_attempt_at`).
    pub lease_consumer: Option<String>,
}

/// A lease of a pull agent's delivery to a consumer, written before the consumer gets it (and
/// again when it is extended).
#[derive(Debug, Clone)]
pub struct LeaseWrite {
    pub delivery_id: Uuid,
    /// The attempt the lease is.
    pub attempt: u32,
    /// When the lease runs out (ms).
    pub expires_at: i64,
    pub consumer: String,
}

/// The outcome of one attempt, written back in batches.
#[derive(Debug, Clone)]
pub struct AttemptUpdate {
    pub delivery_id: Uuid,
    pub attempt: u32,
    pub started_at: i64,
    pub duration_ms: u64,
    pub status_code: Option<u16>,
    pub error: Option<String>,
    pub response_prefix: Option<String>,
    /// The headers sent and answered, as `deliver::exchange_detail` wrote them (JSON).
    pub detail: Option<String>,
    /// `Delivered`, `Scheduled` (with `next_attempt_at`) or `Dead`.
    pub status: DeliveryStatus,
    pub next_attempt_at: Option<i64>,
}

impl AttemptUpdate {
    /// A first attempt that succeeded (most deliveries): both stores keep it in the delivery's
    /// row (`first_started_at`, `first_duration_ms`, `first_status_code`) rather than as an
    /// `attempts` row.
    pub fn is_first_success(&self) -> bool {
        self.attempt == 1 && self.status == DeliveryStatus::Delivered && self.error.is_none()
    }
}

/// Figures for `/queue/stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FinishedCounts {
    pub dead: u64,
    pub delivered: u64,
    pub superseded: u64,
}

/// Which dead letters a bulk retry takes.
#[derive(Debug, Clone, Default)]
pub struct DeadFilter {
    pub agent_id: Option<String>,
    pub source: Option<String>,
    /// Only deliveries that died at or after this time (ms).
    pub since: Option<i64>,
}

#[async_trait]
pub trait DeliveryStore: Send + Sync {
    /// Writes attempt outcomes (one transaction for the batch).
    async fn record_attempts(&self, updates: Vec<AttemptUpdate>) -> Result<()>;
    /// Everything pending, in flight or scheduled, in id order, with the body to send while the
    /// bodies so far add up to at most `body_budget` bytes; the rest come without theirs, so a
    /// restart under a deep backlog does not hold it all in memory at once.
    async fn unfinished_deliveries(&self, body_budget: usize) -> Result<Vec<PendingDelivery>>;
    /// What each delivery sends (its route's transformed event, or the event itself), for
    /// attempts on deliveries the scheduler holds without their body. Ids no longer stored, and
    /// bodies that cannot be opened (logged), are left out.
    async fn delivery_bodies(&self, ids: Vec<Uuid>) -> Result<Vec<(Uuid, String)>>;
    /// Dead letters, newest first.
    async fn dead_letters(
        &self,
        agent_id: Option<String>,
        source: Option<String>,
        limit: usize,
        before: Option<Uuid>,
    ) -> Result<Vec<DeliveryRecord>>;
    /// Moves one dead delivery back to pending; `None` if it is not dead.
    async fn retry_dead(&self, id: Uuid) -> Result<Option<PendingDelivery>>;
    /// Moves every matching dead delivery back to pending.
    async fn retry_dead_matching(&self, filter: DeadFilter) -> Result<Vec<PendingDelivery>>;
    /// Removes a dead delivery and its attempts; `false` if it is not dead.
    async fn delete_dead(&self, id: Uuid) -> Result<bool>;
    /// Fresh deliveries for an archived event (replay).
    async fn add_deliveries(&self, event_id: Uuid, deliveries: Vec<NewDelivery>) -> Result<()>;
    /// Counts of dead, delivered and superseded deliveries.
    async fn finished_counts(&self) -> Result<FinishedCounts>;
    /// Coalescing steps (see `Supersession`), in one transaction.
    async fn supersede(&self, steps: Vec<Supersession>) -> Result<()>;
    /// Dead letters that hold their ordering key.
    async fn held_keys(&self) -> Result<Vec<HeldKey>>;
    /// Leases (or extends the leases of) pull agents' deliveries, in one transaction: each
    /// becomes `in_flight` with the lease's expiry as `next_attempt_at` and the consumer's
    /// name, if it is still unfinished and (several nodes) still this node's. Returns the ids
    /// leased; the others ended or went to another node meanwhile. An outcome recorded later
    /// (`record_attempts`) ends the lease.
    async fn lease_deliveries(&self, leases: Vec<LeaseWrite>) -> Result<Vec<Uuid>>;
}

pub use crate::analytics::RollupDelta;

/// Writes the analytics accumulated since the last flush (every second, before an analytics
/// query, and at shutdown).
pub async fn flush_analytics(store: &dyn Store, analytics: &crate::analytics::Analytics) {
    let deltas = analytics.drain();
    if deltas.is_empty() {
        return;
    }
    match store.add_rollups(deltas.clone()).await {
        Ok(()) => {}
        // Kept for the next flush (the writer logs the fault once, not every second).
        Err(StoreError::Unavailable(e)) => {
            tracing::debug!(error = %e, "analytics rollups kept for later: the store cannot write");
            analytics.restore(deltas);
        }
        Err(e) => tracing::error!(error = %e, "writing analytics rollups failed"),
    }
}

#[async_trait]
pub trait AnalyticsStore: Send + Sync {
    async fn add_rollups(&self, deltas: Vec<RollupDelta>) -> Result<()>;
    /// Sums per (dim, metric) over minutes at or after `since`.
    async fn rollup_totals(&self, since: i64) -> Result<Vec<(String, String, i64)>>;
    /// Sums of the whole router's `metrics` per bucket of `bucket_ms`, from `since`.
    async fn rollup_timeline(
        &self,
        since: i64,
        bucket_ms: i64,
        metrics: Vec<String>,
    ) -> Result<Vec<(i64, String, i64)>>;
    /// Among events received since `since`: how many have a delivery not (yet) delivered, and
    /// how many have a dead-lettered one.
    async fn unsettled_events(&self, since: i64) -> Result<(u64, u64)>;
}

/// One admin change, as the audit log keeps it (never a secret: no bodies are recorded).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    pub id: i64,
    pub at: i64,
    pub client_ip: String,
    pub method: String,
    pub path: String,
    pub status: u16,
    pub action: String,
    pub target_id: Option<String>,
}

#[async_trait]
pub trait AuditStore: Send + Sync {
    async fn add_audit(&self, record: AuditRecord) -> Result<()>;
    /// Newest first, ids below `before`.
    async fn list_audit(&self, limit: usize, before: Option<i64>) -> Result<Vec<AuditRecord>>;
    /// Deletes up to `batch` events of `scope` with their deliveries, attempts and stream
    /// copies; returns how many events went. A pass over every source (`scope.source` unset)
    /// that finds fewer than `batch` also deletes the rollups and audit records older than its
    /// cutoff.
    async fn purge_events(&self, scope: PurgeScope, batch: usize) -> Result<usize>;
    /// Deletes up to `batch` dead letters of events received before `cutoff` (ms), with their
    /// attempts; returns how many went.
    async fn purge_dead(&self, cutoff: i64, batch: usize) -> Result<usize>;
}

/// The events one retention pass removes: those received before `cutoff` (ms) — of `source`
/// when it is set, else of every source but those in `except` (which have their own
/// `retention_days`) — except an event that still has an unfinished delivery, or that has a
/// dead letter and was received at or after `dlq_cutoff` (a dead letter can be retried only
/// while its event is kept).
#[derive(Debug, Clone, Default)]
pub struct PurgeScope {
    pub cutoff: i64,
    pub source: Option<String>,
    pub except: Vec<String>,
    pub dlq_cutoff: i64,
}

/// The kinds of rule objects kept by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RuleKind {
    Filter,
    Route,
    Agent,
    RateLimit,
    /// Server bookkeeping kept by id (the encryption key check value); never served.
    Meta,
}

impl RuleKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RuleKind::Filter => "filter",
            RuleKind::Route => "route",
            RuleKind::Agent => "agent",
            RuleKind::RateLimit => "rate_limit",
            RuleKind::Meta => "meta",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode {
    /// Fails with `Exists` when the id is taken (POST).
    Create,
    /// Creates or replaces (PUT, config file).
    Upsert,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    Created,
    Replaced,
    Exists,
}

/// A rule object as stored: its id and its JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRule {
    pub id: String,
    pub body: String,
}

#[async_trait]
pub trait RuleStore: Send + Sync {
    /// Every rule of a kind, ordered by id.
    async fn list_rules(&self, kind: RuleKind) -> Result<Vec<StoredRule>>;
    async fn put_rule(&self, kind: RuleKind, rule: StoredRule, mode: PutMode)
    -> Result<PutOutcome>;
    /// `true` if it existed.
    async fn delete_rule(&self, kind: RuleKind, id: String) -> Result<bool>;
}

#[async_trait]
pub trait Store:
    EventStore + RuleStore + DeliveryStore + AnalyticsStore + AuditStore + ClusterStore
{
    /// `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;
    /// A cheap round trip proving the store answers.
    async fn ping(&self) -> Result<()>;
    /// Why the store cannot write, if its last write failed for a reason of the store's own
    /// (disk full, I/O error, database unreachable); `None` once a write succeeded again. A
    /// ping only reads, so `/health` asks this too.
    fn write_fault(&self) -> Option<String> {
        None
    }
    /// Makes a small real write, so that a `write_fault` clears (or stays) even while no
    /// other write comes: `/health` calls it while there is a fault, so that a router taken
    /// out of a load balancer by its 503 sees its recovery without traffic.
    async fn probe_write(&self) -> Result<()> {
        Ok(())
    }
    /// `commit_event` for an event admitted under a rate-limit lease: the store records the
    /// spend against `lease` in the same transaction (so that a lease whose node dies is known
    /// to have been spent exactly as far as events were stored under it). Stores without
    /// leases just commit.
    async fn commit_event_spending(
        &self,
        event: NewEvent,
        _lease: Option<Uuid>,
    ) -> Result<CommitOutcome> {
        self.commit_event(event).await
    }
    /// Finishes queued writes and closes. Later calls fail with `Closed`.
    async fn close(&self);
    /// Passes every archived body (events, deliveries, stream-resume rows) through `rewrite`,
    /// storing what it returns (`None` = unchanged), in small batches; how many were changed.
    /// For re-encryption while the server is stopped (`event-router rotate-key`).
    async fn rewrite_bodies(&self, rewrite: BodyRewrite) -> Result<u64>;
}

/// A function from a stored body to its replacement (`None` = keep it).
pub type BodyRewrite =
    std::sync::Arc<dyn Fn(&str) -> std::result::Result<Option<String>, String> + Send + Sync>;

/// One node of a cluster as its last heartbeat described it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: Uuid,
    /// Time of the last heartbeat (ms).
    pub last_seen: i64,
    /// The node's queue figures (`queue::QueueSnapshot` as JSON), for cluster-wide stats.
    pub snapshot: String,
}

/// A message from one node to the others (PostgreSQL LISTEN/NOTIFY).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// Rules, agents or rate limits changed: reload them from the store.
    RulesChanged,
    /// Events another node committed (every stored event, filtered or not), in id order.
    Events { node: Uuid, ids: Vec<Uuid> },
    /// Work was handed back (a node stopped): claim what has no live owner.
    Wake,
    /// Another node erased these events: drop their deliveries held here.
    Erased { ids: Vec<Uuid> },
    /// Another node took these pull deliveries (`take_pull`): drop them here.
    Taken { ids: Vec<Uuid> },
    /// Another node acked these pull deliveries leased here (`ack_elsewhere`): they end here.
    Acked { ids: Vec<Uuid> },
    /// Another node's circuit breaker for `agent` opened until `open_until` (ms), or closed
    /// (`None`): every node's breaker follows.
    Breaker {
        agent: String,
        open_until: Option<i64>,
    },
}

/// What a stream needs to publish an event that another node committed.
#[derive(Debug, Clone)]
pub struct RemoteEvent {
    pub id: Uuid,
    pub filtered: bool,
    /// The section 4 event object (for the `*` firehose).
    pub body: String,
    /// Every agent the event was routed to (push and stream-only), with the body that agent
    /// receives (`None` = the event's own body).
    pub routed: Vec<(String, Option<String>)>,
}

/// A node's request for a share of a rate-limit key's quota (`ratelimit::shared`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRequest {
    /// `source:identifier`.
    pub key: String,
    /// The quota the node applies to the key: `fixed_window`, `sliding_window` or
    /// `token_bucket`, its limit, window (ms) and burst. A key whose quota changed starts afresh.
    pub strategy: &'static str,
    pub limit: u64,
    pub window_ms: u64,
    pub burst: u64,
    /// Units wanted; fewer (or none) may be granted.
    pub want: u64,
    /// The new lease's id (the node's choice, so it is known before the answer).
    pub lease: Uuid,
    /// How long the store keeps the lease for its node before it takes the unspent part back.
    pub lease_ms: u64,
    /// The node's previous lease of this key, settled in the same statement.
    pub give_back: Option<LeaseReturn>,
}

/// A lease a node gives back, with how many of its units it spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseReturn {
    pub id: Uuid,
    pub spent: u64,
}

/// What a lease request got, and the key's shared counters just after (for the
/// `X-RateLimit-*` headers), on the store's clock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeaseGrant {
    pub granted: u64,
    /// The store's clock when it decided (ms).
    pub now_ms: u64,
    /// Fixed and sliding window: the aligned window, and the units leased in it and the one
    /// before.
    pub window_start: u64,
    pub prev: u64,
    pub curr: u64,
    /// Token bucket: GCRA's theoretical arrival time (ms, and the fraction in 1/limit ms), and
    /// the tokens leased and not yet settled.
    pub tat_ms: u64,
    pub tat_frac: u64,
    pub outstanding: u64,
}

/// What several nodes sharing one database need. SQLite is a single node, so the defaults
/// describe a cluster of one: no other nodes, nothing to take over, no notices.
///
/// Delivery ownership: every unfinished delivery has an owner node (the node that committed or
/// requeued it). A node keeps its lease alive by `heartbeat`; once a node's last heartbeat is
/// older than the lease, any other node may `take_over` its unfinished deliveries (claimed with
/// `FOR UPDATE SKIP LOCKED`, so each is taken by exactly one node).
#[async_trait]
pub trait ClusterStore: Send + Sync {
    /// This process's node id (`None`: not clustered).
    fn node_id(&self) -> Option<Uuid> {
        None
    }
    /// Renews this node's lease (until now + lease) and stores its queue snapshot.
    async fn heartbeat(&self, _snapshot: String) -> Result<()> {
        Ok(())
    }
    /// Nodes whose lease has not expired, this one included.
    async fn live_nodes(&self) -> Result<Vec<NodeInfo>> {
        Ok(Vec::new())
    }
    /// Claims up to `limit` unfinished deliveries whose owner's lease expired (or that were
    /// released), making this node their owner; returns them with the body to send.
    async fn take_over(&self, _limit: usize) -> Result<Vec<PendingDelivery>> {
        Ok(Vec::new())
    }
    /// Claims ordering keys for the deliveries at their keys' heads, before each attempt, so
    /// that no key is in flight on two nodes at once. A key is refused while an earlier
    /// unfinished delivery of it exists, while a dead letter holds it, or while another live
    /// node's unfinished delivery holds it. A delivery this node no longer owns unfinished
    /// (another node took it over, or it ended) is `gone`. One node has nothing to claim from.
    async fn claim_keys(&self, claims: Vec<KeyClaim>) -> Result<KeyClaims> {
        Ok(KeyClaims {
            granted: claims.into_iter().map(|c| c.delivery_id).collect(),
            gone: Vec::new(),
        })
    }
    /// Graceful stop: hands this node's unfinished deliveries back (owner cleared), removes
    /// the node and sends `Notice::Wake`; how many were released.
    async fn release(&self) -> Result<u64> {
        Ok(0)
    }
    /// Notices from the other nodes (never this node's own). Called once, at start; `None`
    /// when there is no cluster.
    async fn listen(&self) -> Result<Option<tokio::sync::mpsc::Receiver<Notice>>> {
        Ok(None)
    }
    /// The stream view of events another node committed, in id order (missing ids skipped).
    async fn remote_events(&self, _ids: Vec<Uuid>) -> Result<Vec<RemoteEvent>> {
        Ok(Vec::new())
    }
    /// Whether dashboard sessions live in this store, shared by every node (PostgreSQL), rather
    /// than in each process's memory.
    fn keeps_sessions(&self) -> bool {
        false
    }
    /// Starts a dashboard session, known only by the SHA-256 of its token, lasting `ttl_ms`;
    /// returns its expiry (ms, the store's clock). At most `max` sessions are kept: past that,
    /// those closest to expiry are dropped.
    async fn create_session(&self, _hash: [u8; 32], _ttl_ms: i64, _max: usize) -> Result<i64> {
        Err(StoreError::Database(
            "this store keeps no dashboard sessions".into(),
        ))
    }
    /// The expiry (ms) of the live session with this hash, if there is one.
    async fn session_expiry(&self, _hash: [u8; 32]) -> Result<Option<i64>> {
        Ok(None)
    }
    /// Ends a session; `false` when there was none.
    async fn end_session(&self, _hash: [u8; 32]) -> Result<bool> {
        Ok(false)
    }
    /// Forgets expired sessions; how many.
    async fn purge_sessions(&self) -> Result<u64> {
        Ok(0)
    }
    /// Leases shares of rate-limit keys' quotas for this node (see `ratelimit::shared`), one
    /// grant per request in their order, in one statement: each key's share is taken
    /// atomically, the keys in key order (so that nodes asking for the same keys never
    /// deadlock). Only a store shared by several nodes keeps leases.
    async fn acquire_rate_leases(&self, _requests: Vec<LeaseRequest>) -> Result<Vec<LeaseGrant>> {
        Err(StoreError::Database(
            "this store keeps no rate-limit leases".into(),
        ))
    }
    /// Gives leases back, each with what its node spent of it.
    async fn release_rate_leases(&self, _leases: Vec<LeaseReturn>) -> Result<()> {
        Ok(())
    }
    /// Settles leases whose node never gave them back, and forgets idle keys' counters.
    async fn rate_limit_upkeep(&self) -> Result<()> {
        Ok(())
    }
    /// Takes up to `limit` of a pull agent's deliveries that wait on other nodes (due, not
    /// leased, without ordering or coalescing keys), making this node their owner, for a
    /// consumer polling here; the nodes that held them are told (`Notice::Taken`). `FOR UPDATE
    /// SKIP LOCKED`: each is taken by one node.
    async fn take_pull(&self, _agent: &str, _limit: usize) -> Result<Vec<PendingDelivery>> {
        Ok(Vec::new())
    }
    /// Acks pull deliveries whose lease another node holds (a consumer's ack reached a node
    /// that did not grant the lease): each still leased and not run out becomes delivered, and
    /// the nodes holding them are told (`Notice::Acked`). Returns the ids acked.
    async fn ack_elsewhere(&self, _agent: &str, _ids: Vec<Uuid>) -> Result<Vec<Uuid>> {
        Ok(Vec::new())
    }
    /// Tells the other nodes that this node's breaker for `agent` opened until `open_until`
    /// (ms), or closed (`None`): `Notice::Breaker`.
    async fn announce_breaker(&self, _agent: &str, _open_until: Option<i64>) -> Result<()> {
        Ok(())
    }
}

/// What opening a store needs, taken from the configuration (`Config::store_settings`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// The SQLite file, or `None` for PostgreSQL at `database_url`.
    pub sqlite_path: Option<PathBuf>,
    pub database_url: Option<String>,
    pub data_dir: PathBuf,
    /// `ENCRYPTION_KEY` (base64), else a key generated into `data_dir`.
    pub encryption_key: Option<String>,
    pub encrypt_payloads: bool,
    pub commit_batch_max: usize,
    pub db_pool_size: usize,
    pub node_lease_ms: u64,
    /// PostgreSQL: `NODE_ID`, else the id kept in `data_dir` (see `postgres::node_identity`).
    pub node_id: Option<String>,
    /// SQLite: free MiB below which new events are refused (0: none).
    pub min_free_disk_mb: u64,
}

/// Opens the backend and puts the encryption layer over it (agent secrets are always sealed;
/// payloads with `encrypt_payloads`). A key that does not match the data refuses the start.
pub async fn open(config: &Settings) -> anyhow::Result<Arc<dyn Store>> {
    let key =
        crate::crypto::load_or_generate_key(config.encryption_key.as_deref(), &config.data_dir)
            .map_err(anyhow::Error::msg)?;
    let cipher = Arc::new(crate::crypto::Cipher::new(&key));
    let backend = open_backend(config).await?;
    let store = EncryptedStore::open(backend.clone(), cipher, config.encrypt_payloads).await;
    match store {
        Ok(s) => Ok(Arc::new(s)),
        Err(e) => {
            backend.close().await;
            anyhow::bail!("{e}")
        }
    }
}

/// The store `database_url` names: SQLite (none, `sqlite://`) or PostgreSQL (`postgres://`).
pub async fn open_backend(config: &Settings) -> anyhow::Result<Arc<dyn Store>> {
    if let Some(path) = &config.sqlite_path {
        let store = SqliteStore::open(
            path,
            SqliteOptions {
                batch_max: config.commit_batch_max,
                min_free_bytes: config.min_free_disk_mb << 20,
                ..Default::default()
            },
        )
        .with_context(|| format!("cannot open the store at {}", path.display()))?;
        return Ok(Arc::new(store));
    }
    let url = config.database_url.as_deref().unwrap_or_default();
    let identity = postgres::node_identity(config.node_id.as_deref(), &config.data_dir)?;
    let store = PgStore::open(
        url,
        PgOptions {
            pool_size: config.db_pool_size,
            batch_max: config.commit_batch_max,
            lease_ms: i64::try_from(config.node_lease_ms).unwrap_or(i64::MAX),
            node_id: Some(identity.id),
            node_name: Some(identity.name.clone()),
            ..PgOptions::default()
        },
    )
    .await
    // The error names the database by its redacted URL: never the password.
    .context("cannot open the PostgreSQL store")?;
    tracing::info!(
        database = %redact_url(url),
        node = %identity.name,
        node_uuid = %identity.id,
        "PostgreSQL store open"
    );
    Ok(Arc::new(store))
}
