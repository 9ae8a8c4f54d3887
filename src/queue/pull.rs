//! Pull agents (docs/consumers.md): their deliveries are scheduled exactly like push deliveries
//! (priority, retry policy, dead letters, ordering and coalescing keys), but an "attempt" is a
//! lease to a consumer that polls, and its outcome is the consumer's ack or nack, or the lease
//! running out.
//!
//! A consumer's poll waits in its agent's lane (`Waiter`) until deliveries are ready. The
//! dispatcher takes them off the lane as it would start attempts, and the lease writer
//! (`lease_loop`) makes the leases durable, for everything that queued up meanwhile in one
//! transaction, before the consumer gets them: a restart or SIGKILL finds each lease in the
//! store and leases the delivery again only once it has run out. Acks and nacks are outcomes
//! like an attempt's, answered once the recorder has committed them.

use std::collections::{HashMap, HashSet, VecDeque};

use super::*;
use crate::store::LeaseWrite;

/// The most deliveries one poll may lease.
pub const MAX_LEASE_BATCH: usize = 500;
/// The longest lease (15 minutes), and the default (30 s).
pub const MAX_LEASE_MS: u64 = 900_000;
pub const DEFAULT_LEASE_MS: u64 = 30_000;
/// The shortest lease.
pub const MIN_LEASE_MS: u64 = 1_000;
/// Consumers remembered per agent before those quiet for `CONSUMER_QUIET_MS` (and holding no
/// lease) are forgotten.
const MAX_CONSUMERS_KEPT: usize = 256;
const CONSUMER_QUIET_MS: i64 = 600_000;

/// A delivery leased to a consumer, as the consumer gets it.
#[derive(Debug, Clone)]
pub struct Leased {
    pub delivery_id: Uuid,
    pub event_id: Uuid,
    /// The routed event: exactly what a push agent would be sent.
    pub body: Bytes,
    /// The attempt this lease is (1 for the first).
    pub attempt: u32,
    pub lease_expires_at: i64,
    /// The webhook's W3C trace context (`traceparent`, then `tracestate` on a second line),
    /// with tracing on.
    pub trace_context: Option<Arc<str>>,
}

/// What a consumer does with deliveries leased to it.
#[derive(Debug, Clone)]
pub enum Settle {
    /// Handled: the delivery is delivered.
    Ack,
    /// Failed: the retry policy decides the next attempt, or `delay_ms` (capped at the policy's
    /// `maxDelay`), and the delivery is dead-lettered once its attempts are spent.
    Nack {
        error: String,
        delay_ms: Option<u64>,
    },
    /// The lease runs `lease_ms` from now.
    Extend { lease_ms: u64 },
    /// Handed back unhandled (a consume socket closed): leased again at once, without spending
    /// an attempt. Only leases the same socket (`holder`) holds.
    Return { holder: u64 },
}

/// The answer to a `Settle`.
#[derive(Debug)]
pub struct Settled {
    /// The ids it applied to.
    pub done: Vec<Uuid>,
    /// The ids whose lease had run out, or that this node does not hold leased.
    pub expired: Vec<Uuid>,
    /// The new expiry (`Extend`).
    pub lease_expires_at: Option<i64>,
    /// Resolves once what was done is durable (`Err`: the store could not write it).
    pub durable: oneshot::Receiver<Result<(), String>>,
}

/// A consumer as `GET /admin/agents/{id}` shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerInfo {
    pub name: String,
    /// Deliveries leased to it now.
    pub leases: usize,
    pub last_poll_at: i64,
}

/// A consumer's poll waiting for deliveries.
pub(super) struct Waiter {
    pub consumer: Arc<str>,
    pub max: usize,
    pub lease_ms: u64,
    /// When it stops waiting and gets an empty answer (ms).
    pub deadline: i64,
    /// The consume socket asking (0: an HTTP poll).
    pub holder: u64,
    pub reply: oneshot::Sender<Vec<Leased>>,
}

/// A delivery leased to a consumer.
pub(super) struct Lease {
    job: Job,
    consumer: Arc<str>,
    holder: u64,
    expires_at: i64,
    started_at: i64,
}

/// A pull agent's lane: polls waiting, leases held, and when each consumer last polled.
#[derive(Default)]
pub(super) struct PullLane {
    waiters: VecDeque<Waiter>,
    leases: HashMap<Uuid, Lease>,
    consumers: HashMap<Arc<str>, i64>,
}

/// What the lease writer does.
pub(super) enum LeaseTask {
    /// Lease these jobs to a waiting consumer.
    Grant {
        agent: Arc<str>,
        waiter: Waiter,
        jobs: Vec<Job>,
        expires_at: i64,
    },
    /// Write extended leases.
    Write {
        writes: Vec<LeaseWrite>,
        done: oneshot::Sender<Result<(), String>>,
    },
}

/// What became of a grant.
pub(super) struct Grant {
    pub agent: Arc<str>,
    pub waiter: Waiter,
    pub expires_at: i64,
    /// Leased, with their bodies.
    pub granted: Vec<Job>,
    /// Leased, but their body could not be read: a failed attempt.
    pub unreadable: Vec<Job>,
    /// No longer this node's to lease (ended, or taken by another node).
    pub gone: Vec<Job>,
    /// Not written (the store failed): they wait and are leased again.
    pub failed: Vec<Job>,
}

/// Makes leases durable in batches: every grant and extension that queued up during the last
/// write at once, then the bodies of the granted jobs held without theirs.
pub(super) async fn lease_loop(
    store: Arc<dyn Store>,
    mut rx: mpsc::UnboundedReceiver<LeaseTask>,
    dispatcher: mpsc::UnboundedSender<Msg>,
) {
    let mut batch = Vec::with_capacity(64);
    while rx.recv_many(&mut batch, 256).await > 0 {
        let mut writes = Vec::new();
        for task in &batch {
            match task {
                LeaseTask::Grant {
                    waiter,
                    jobs,
                    expires_at,
                    ..
                } => writes.extend(jobs.iter().map(|j| LeaseWrite {
                    delivery_id: j.delivery_id,
                    attempt: j.attempts,
                    expires_at: *expires_at,
                    consumer: waiter.consumer.to_string(),
                })),
                LeaseTask::Write { writes: w, .. } => writes.extend(w.iter().cloned()),
            }
        }
        let leased: Result<HashSet<Uuid>, String> = store
            .lease_deliveries(writes)
            .await
            .map(|ids| ids.into_iter().collect())
            .map_err(|e| e.to_string());
        if let Err(e) = &leased {
            tracing::warn!(error = %e, "writing leases failed; the deliveries wait and are leased again shortly");
        }
        // Bodies of leased jobs held without theirs, in one read.
        let need: Vec<Uuid> = match &leased {
            Ok(ids) => batch
                .iter()
                .filter_map(|t| match t {
                    LeaseTask::Grant { jobs, .. } => Some(jobs),
                    LeaseTask::Write { .. } => None,
                })
                .flatten()
                .filter(|j| j.body.is_none() && ids.contains(&j.delivery_id))
                .map(|j| j.delivery_id)
                .collect(),
            Err(_) => Vec::new(),
        };
        let mut bodies: HashMap<Uuid, String> = HashMap::new();
        if !need.is_empty() {
            Analytics::bodies_read(need.len());
            match store.delivery_bodies(need).await {
                Ok(found) => bodies = found.into_iter().collect(),
                Err(e) => {
                    tracing::warn!(error = %e, "reading leased deliveries' bodies failed")
                }
            }
        }
        for task in batch.drain(..) {
            match task {
                LeaseTask::Write { done, .. } => {
                    let _ = done.send(leased.as_ref().map(|_| ()).map_err(Clone::clone));
                }
                LeaseTask::Grant {
                    agent,
                    waiter,
                    jobs,
                    expires_at,
                } => {
                    let mut grant = Grant {
                        agent,
                        waiter,
                        expires_at,
                        granted: Vec::new(),
                        unreadable: Vec::new(),
                        gone: Vec::new(),
                        failed: Vec::new(),
                    };
                    for mut job in jobs {
                        match &leased {
                            Err(_) => grant.failed.push(job),
                            Ok(ids) if !ids.contains(&job.delivery_id) => grant.gone.push(job),
                            Ok(_) => {
                                if job.body.is_none() {
                                    job.body = bodies.remove(&job.delivery_id).map(Bytes::from);
                                }
                                if job.body.is_some() {
                                    grant.granted.push(job);
                                } else {
                                    grant.unreadable.push(job);
                                }
                            }
                        }
                    }
                    let _ = dispatcher.send(Msg::Granted(Box::new(grant)));
                }
            }
        }
    }
}

impl Dispatcher {
    /// Whether `agent` is a pull agent now.
    pub(super) fn is_pull(&self, agent: &str) -> bool {
        self.targets.load().get(agent).is_some_and(|t| t.pull)
    }

    /// A consumer polls.
    pub(super) fn on_poll(&mut self, agent: Arc<str>, waiter: Waiter) {
        let now = now_ms();
        let lane = self.lanes.entry(agent.clone()).or_default();
        if lane.pull.consumers.len() >= MAX_CONSUMERS_KEPT
            && !lane.pull.consumers.contains_key(&waiter.consumer)
        {
            // Names are the consumers' own: forget the quiet ones rather than grow.
            let held: HashSet<&str> = lane.pull.leases.values().map(|l| &*l.consumer).collect();
            lane.pull
                .consumers
                .retain(|name, last| now - *last < CONSUMER_QUIET_MS || held.contains(&**name));
        }
        lane.pull.consumers.insert(waiter.consumer.clone(), now);
        self.poll_timers
            .push(Reverse((waiter.deadline, agent.clone())));
        lane.pull.waiters.push_back(waiter);
        self.pump(&agent);
    }

    /// Polls whose wait is over get an empty answer.
    pub(super) fn end_polls(&mut self, agent: &Arc<str>, now: i64) {
        if let Some(lane) = self.lanes.get_mut(agent) {
            lane.pull.waiters.retain(|w| !w.reply.is_closed());
            while let Some(i) = lane.pull.waiters.iter().position(|w| w.deadline <= now) {
                if let Some(w) = lane.pull.waiters.remove(i) {
                    let _ = w.reply.send(Vec::new());
                }
            }
        }
    }

    /// Hands a pull agent's ready deliveries to its waiting polls, as many as each asked for,
    /// through the lease writer.
    pub(super) fn serve(&mut self, agent: &Arc<str>) {
        let Some(leaser) = self.leaser.clone() else {
            return;
        };
        let Some(lane) = self.lanes.get_mut(agent) else {
            return;
        };
        let mut gone = Vec::new();
        let mut grants = Vec::new();
        loop {
            lane.pull.waiters.retain(|w| !w.reply.is_closed());
            if lane.pull.waiters.is_empty() {
                break;
            }
            skip_superseded(&mut lane.ready, &mut self.superseded, &mut gone);
            if lane.ready.is_empty() {
                break;
            }
            let Some(waiter) = lane.pull.waiters.pop_front() else {
                break;
            };
            let mut jobs = Vec::with_capacity(waiter.max.min(lane.ready.len()));
            while jobs.len() < waiter.max {
                if !self.superseded.is_empty() {
                    skip_superseded(&mut lane.ready, &mut self.superseded, &mut gone);
                }
                let Some(Ready { mut job, .. }) = lane.ready.pop() else {
                    break;
                };
                started(&mut lane.coalescing, &job);
                job.attempts += 1;
                jobs.push(job);
            }
            lane.in_flight += jobs.len();
            grants.push((waiter, jobs));
        }
        let now = now_ms();
        for (waiter, jobs) in grants {
            for job in &jobs {
                self.unhold(job);
            }
            let expires_at = now + waiter.lease_ms as i64;
            let task = LeaseTask::Grant {
                agent: agent.clone(),
                waiter,
                jobs,
                expires_at,
            };
            if let Err(mpsc::error::SendError(task)) = leaser.send(task)
                && let LeaseTask::Grant { jobs, .. } = task
            {
                // Only when stopping: they stay leasable in the store.
                if let Some(lane) = self.lanes.get_mut(agent) {
                    lane.in_flight = lane.in_flight.saturating_sub(jobs.len());
                }
            }
        }
        for job in gone {
            self.drop_superseded(job);
        }
    }

    /// The lease writer's answer: leases start, the consumer gets them.
    pub(super) fn on_granted(&mut self, g: Grant) {
        let now = now_ms();
        let Grant {
            agent,
            waiter,
            expires_at,
            granted,
            unreadable,
            gone,
            failed,
        } = g;
        let lane = self.lanes.entry(agent.clone()).or_default();
        let n = granted.len() + unreadable.len() + gone.len() + failed.len();
        lane.in_flight = lane.in_flight.saturating_sub(n);
        let mut items = Vec::with_capacity(granted.len());
        for job in granted {
            items.push(Leased {
                delivery_id: job.delivery_id,
                event_id: job.event_id,
                body: job.body.clone().unwrap_or_default(),
                attempt: job.attempts,
                lease_expires_at: expires_at,
                trace_context: job.trace_context.clone(),
            });
            self.lease_timers
                .push(Reverse((expires_at, job.delivery_id, agent.clone())));
            lane.pull.leases.insert(
                job.delivery_id,
                Lease {
                    job,
                    consumer: waiter.consumer.clone(),
                    holder: waiter.holder,
                    expires_at,
                    started_at: now,
                },
            );
        }
        if !items.is_empty() {
            self.analytics.leased(&agent, items.len());
        }
        for job in gone {
            tracing::info!(delivery_id = %job.delivery_id, agent = %agent, "a pull delivery ended or went to another node before its lease; dropped here");
            self.unfinished.fetch_sub(1, AtomicOrdering::AcqRel);
            self.free_key(&job);
        }
        if !failed.is_empty() {
            let due = now + BODY_RETRY_MS;
            let jobs = failed
                .into_iter()
                .map(|mut j| {
                    j.attempts = j.attempts.saturating_sub(1);
                    j.due_at = due;
                    j
                })
                .collect();
            self.add(jobs);
        }
        for job in unreadable {
            let result = lease_result(
                now,
                now,
                false,
                Some("the delivery's body is no longer in the store or does not open".into()),
                None,
            );
            self.settle_one(job, result);
        }
        if items.is_empty() {
            // Nothing came of it: the poll waits on (its end time was not watched meanwhile).
            if waiter.deadline <= now {
                let _ = waiter.reply.send(Vec::new());
            } else if !waiter.reply.is_closed()
                && let Some(lane) = self.lanes.get_mut(&agent)
            {
                self.poll_timers
                    .push(Reverse((waiter.deadline, agent.clone())));
                lane.pull.waiters.push_front(waiter);
            }
        } else if let Err(items) = waiter.reply.send(items) {
            // The poll gave up meanwhile: its leases go back at once.
            let ids = items.into_iter().map(|i| i.delivery_id).collect();
            self.return_leases(
                &agent,
                ids,
                waiter.holder,
                "the poll ended before its answer",
            );
        }
        self.pump(&agent);
    }

    /// A consumer acks, nacks, extends or returns leases.
    pub(super) fn on_settle(
        &mut self,
        agent: Arc<str>,
        ids: Vec<Uuid>,
        op: Settle,
        reply: oneshot::Sender<Settled>,
    ) {
        let now = now_ms();
        let (durable_tx, durable) = oneshot::channel();
        let mut done = Vec::new();
        let mut expired = Vec::new();
        let mut lease_expires_at = None;
        match op {
            Settle::Ack | Settle::Nack { .. } => {
                for id in ids {
                    let alive = self
                        .lanes
                        .get(&agent)
                        .and_then(|l| l.pull.leases.get(&id))
                        .is_some_and(|l| l.expires_at > now);
                    let lease = alive
                        .then(|| {
                            self.lanes
                                .get_mut(&agent)
                                .and_then(|l| l.pull.leases.remove(&id))
                        })
                        .flatten();
                    let Some(lease) = lease else {
                        expired.push(id);
                        continue;
                    };
                    done.push(id);
                    let result = match &op {
                        Settle::Nack { error, delay_ms } => lease_result(
                            lease.started_at,
                            now,
                            false,
                            Some(error.clone()),
                            *delay_ms,
                        ),
                        _ => {
                            self.analytics.acked(&agent);
                            self.acked += 1;
                            lease_result(lease.started_at, now, true, None, None)
                        }
                    };
                    self.settle_one(lease.job, result);
                }
                // Answered once everything recorded before it is committed.
                if let Err(e) = self.recorder.send(Record::Notify(durable_tx))
                    && let Record::Notify(tx) = e.0
                {
                    let _ = tx.send(Err("the server is stopping".into()));
                }
            }
            Settle::Extend { lease_ms } => {
                let until = now + lease_ms as i64;
                let mut writes = Vec::new();
                if let Some(lane) = self.lanes.get_mut(&agent) {
                    for id in ids {
                        match lane.pull.leases.get_mut(&id) {
                            Some(l) if l.expires_at > now => {
                                l.expires_at = until;
                                writes.push(LeaseWrite {
                                    delivery_id: id,
                                    attempt: l.job.attempts,
                                    expires_at: until,
                                    consumer: l.consumer.to_string(),
                                });
                                self.lease_timers.push(Reverse((until, id, agent.clone())));
                                done.push(id);
                            }
                            _ => expired.push(id),
                        }
                    }
                } else {
                    expired = ids;
                }
                lease_expires_at = Some(until);
                let task = LeaseTask::Write {
                    writes,
                    done: durable_tx,
                };
                match &self.leaser {
                    Some(leaser) => {
                        if let Err(mpsc::error::SendError(LeaseTask::Write { done, .. })) =
                            leaser.send(task)
                        {
                            let _ = done.send(Err("the server is stopping".into()));
                        }
                    }
                    None => {
                        if let LeaseTask::Write { done, .. } = task {
                            let _ = done.send(Err("the server is stopping".into()));
                        }
                    }
                }
            }
            Settle::Return { holder } => {
                done = self.return_leases(&agent, ids, holder, "returned by its consumer");
                let _ = durable_tx.send(Ok(()));
            }
        }
        let _ = reply.send(Settled {
            done,
            expired,
            lease_expires_at,
            durable,
        });
        self.pump(&agent);
    }

    /// Leases held by `holder` go back to be leased again at once, without spending an attempt.
    fn return_leases(
        &mut self,
        agent: &Arc<str>,
        ids: Vec<Uuid>,
        holder: u64,
        why: &str,
    ) -> Vec<Uuid> {
        let now = now_ms();
        let mut returned = Vec::new();
        for id in ids {
            let Some(lane) = self.lanes.get_mut(agent) else {
                break;
            };
            if lane.pull.leases.get(&id).is_none_or(|l| l.holder != holder) {
                continue;
            }
            let Some(lease) = lane.pull.leases.remove(&id) else {
                continue;
            };
            returned.push(id);
            let mut job = lease.job;
            let update = AttemptUpdate {
                delivery_id: job.delivery_id,
                attempt: job.attempts,
                started_at: lease.started_at,
                duration_ms: (now - lease.started_at).max(0) as u64,
                status_code: None,
                error: Some(why.to_string()),
                response_prefix: None,
                detail: None,
                status: DeliveryStatus::Pending,
                next_attempt_at: Some(now),
            };
            let _ = self.recorder.send(Record::Attempt(update, None));
            job.retry_base = job.retry_base.saturating_add(1);
            job.due_at = now;
            self.add(vec![job]);
        }
        returned
    }

    /// A lease's outcome, as an attempt's (`finish` counts it out of flight).
    fn settle_one(&mut self, job: Job, result: AttemptResult) {
        if let Some(lane) = self.lanes.get_mut(&job.agent_id) {
            lane.in_flight += 1;
        }
        let unit: f64 = rand::random();
        self.finish(job, result, unit);
    }

    /// Leases that ran out: failed attempts (`lease expired`).
    pub(super) fn expire_leases(&mut self, now: i64, touched: &mut Vec<Arc<str>>) {
        while self
            .lease_timers
            .peek()
            .is_some_and(|Reverse((at, _, _))| *at <= now)
        {
            let Some(Reverse((_, id, agent))) = self.lease_timers.pop() else {
                break;
            };
            let Some(lane) = self.lanes.get_mut(&agent) else {
                continue;
            };
            if lane.pull.leases.get(&id).is_none_or(|l| l.expires_at > now) {
                continue;
            }
            let Some(lease) = lane.pull.leases.remove(&id) else {
                continue;
            };
            tracing::debug!(delivery_id = %id, agent = %agent, consumer = %lease.consumer, "lease expired");
            let result = lease_result(
                lease.started_at,
                now,
                false,
                Some("lease expired".into()),
                None,
            );
            self.settle_one(lease.job, result);
            if !touched.contains(&agent) {
                touched.push(agent);
            }
        }
        while self
            .poll_timers
            .peek()
            .is_some_and(|Reverse((at, _))| *at <= now)
        {
            let Some(Reverse((_, agent))) = self.poll_timers.pop() else {
                break;
            };
            self.end_polls(&agent, now);
        }
    }

    /// Leases the store still has from before a restart: they run until their expiry, and
    /// their consumer may still ack them.
    pub(super) fn restore_lease(&mut self, job: Job, consumer: String) {
        let now = now_ms();
        let agent = job.agent_id.clone();
        let lane = self.lanes.entry(agent.clone()).or_default();
        if let Some(key) = job.keys.as_ref().and_then(|k| k.ordering.clone()) {
            lane.keys.entry(key).or_default().head = Some(job.delivery_id);
            self.ordering_seen = true;
        }
        let expires_at = job.due_at;
        self.lease_timers
            .push(Reverse((expires_at, job.delivery_id, agent)));
        lane.pull.leases.insert(
            job.delivery_id,
            Lease {
                job,
                consumer: Arc::from(consumer),
                holder: 0,
                expires_at,
                started_at: now,
            },
        );
    }

    /// Deliveries another node took (`Notice::Taken`) leave this node's lanes.
    pub(super) fn taken(&mut self, ids: Vec<Uuid>) {
        let ids: HashSet<Uuid> = ids.into_iter().collect();
        let mut out: Vec<Job> = Vec::new();
        for lane in self.lanes.values_mut() {
            if !lane.ready.iter().any(|r| ids.contains(&r.job.delivery_id)) {
                continue;
            }
            let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut lane.ready)
                .into_iter()
                .partition(|r| ids.contains(&r.job.delivery_id));
            lane.ready = kept.into_iter().collect();
            out.extend(gone.into_iter().map(|r| r.job));
        }
        if self
            .timers
            .iter()
            .any(|Reverse(t)| ids.contains(&t.job.delivery_id))
        {
            let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.timers)
                .into_iter()
                .partition(|Reverse(t)| ids.contains(&t.job.delivery_id));
            self.timers = kept.into_iter().collect();
            for Reverse(t) in gone {
                if let Some(lane) = self.lanes.get_mut(&t.job.agent_id) {
                    lane.scheduled = lane.scheduled.saturating_sub(1);
                }
                out.push(t.job);
            }
        }
        for job in &out {
            self.unhold(job);
        }
        if !out.is_empty() {
            self.unfinished
                .fetch_sub(out.len() as i64, AtomicOrdering::AcqRel);
            tracing::debug!(
                deliveries = out.len(),
                "pull deliveries taken by another node"
            );
        }
    }

    /// Leases another node acked (`Notice::Acked`) end here: the store has them delivered.
    pub(super) fn acked_elsewhere(&mut self, ids: Vec<Uuid>) {
        let mut ended = Vec::new();
        for lane in self.lanes.values_mut() {
            for id in &ids {
                if let Some(l) = lane.pull.leases.remove(id) {
                    ended.push(l.job);
                }
            }
        }
        for job in ended {
            self.unfinished.fetch_sub(1, AtomicOrdering::AcqRel);
            self.free_key(&job);
        }
    }

    /// Leases of erased events end (the store has them `cancelled`).
    pub(super) fn cancel_leases(&mut self, events: &[Uuid]) {
        let mut ended = Vec::new();
        for lane in self.lanes.values_mut() {
            lane.pull.leases.retain(|_, l| {
                if events.contains(&l.job.event_id) {
                    ended.push(l.job.clone());
                    false
                } else {
                    true
                }
            });
        }
        for job in ended {
            self.unfinished.fetch_sub(1, AtomicOrdering::AcqRel);
            self.free_key(&job);
        }
    }

    /// The agent's consumers: who polled, when last, and how many leases each holds.
    pub(super) fn consumers(&self, agent: &str) -> Vec<ConsumerInfo> {
        let Some(lane) = self.lanes.get(agent) else {
            return Vec::new();
        };
        let mut held: HashMap<&str, usize> = HashMap::new();
        for l in lane.pull.leases.values() {
            *held.entry(&*l.consumer).or_default() += 1;
        }
        let mut out: Vec<ConsumerInfo> = lane
            .pull
            .consumers
            .iter()
            .map(|(name, last)| ConsumerInfo {
                name: name.to_string(),
                leases: held.get(&**name).copied().unwrap_or(0),
                last_poll_at: *last,
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Leases held now in a lane (for `/queue/stats`).
    pub(super) fn leased(lane: &Lane) -> usize {
        lane.pull.leases.len()
    }
}

/// A lease's outcome as an attempt's result.
fn lease_result(
    started_at: i64,
    now: i64,
    delivered: bool,
    error: Option<String>,
    delay_ms: Option<u64>,
) -> AttemptResult {
    let ms = (now - started_at).max(0) as u64;
    AttemptResult {
        delivered,
        started_at,
        duration_ms: ms,
        took: Duration::from_millis(ms),
        status_code: None,
        error,
        response_prefix: None,
        retry_after: delay_ms.map(Duration::from_millis),
        detail: None,
    }
}

impl Queue {
    /// Leases up to `max` of a pull agent's deliveries to `consumer` for `lease_ms`, waiting up
    /// to `wait` for the first: answered as soon as any are leased (empty when none came).
    pub async fn lease(
        &self,
        agent: Arc<str>,
        consumer: Arc<str>,
        max: usize,
        lease_ms: u64,
        wait: Duration,
        holder: u64,
    ) -> Vec<Leased> {
        let (reply, rx) = oneshot::channel();
        let waiter = Waiter {
            consumer,
            max: max.clamp(1, MAX_LEASE_BATCH),
            lease_ms: lease_ms.clamp(MIN_LEASE_MS, MAX_LEASE_MS),
            deadline: now_ms() + wait.as_millis().min(i64::MAX as u128) as i64,
            holder,
            reply,
        };
        if self.tx.send(Msg::Poll(agent, waiter)).is_err() {
            return Vec::new();
        }
        // The dispatcher answers every poll (empty at its deadline); dropping the receiver
        // early (the caller went away) hands any leases back.
        rx.await.unwrap_or_default()
    }

    /// Acks, nacks, extends or returns leases; `None` when the scheduler has stopped.
    pub async fn settle(&self, agent: Arc<str>, ids: Vec<Uuid>, op: Settle) -> Option<Settled> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Msg::Settle(agent, ids, op, reply)).ok()?;
        rx.await.ok()
    }

    /// The agent's consumers.
    pub async fn consumers(&self, agent: &str) -> Vec<ConsumerInfo> {
        let (reply, rx) = oneshot::channel();
        if self
            .tx
            .send(Msg::Consumers(Arc::from(agent), reply))
            .is_err()
        {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// Another node took these pull deliveries (`Notice::Taken`).
    pub fn taken(&self, ids: Vec<Uuid>) {
        if !ids.is_empty() {
            let _ = self.tx.send(Msg::Taken(ids));
        }
    }

    /// Another node acked these pull deliveries leased here (`Notice::Acked`).
    pub fn acked_elsewhere(&self, ids: Vec<Uuid>) {
        if !ids.is_empty() {
            let _ = self.tx.send(Msg::AckedElsewhere(ids));
        }
    }

    /// Counts acks made for leases another node held, as this node's (figures only).
    pub fn count_acked_elsewhere(&self, agent: &str, n: usize) {
        let _ = self.tx.send(Msg::CountAcked(Arc::from(agent), n));
    }
}
