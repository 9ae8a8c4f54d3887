//! The group commit: one writer task takes whatever events are waiting, stores each batch with
//! one multi-row statement in one transaction, and answers every event once it is committed.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use deadpool_postgres::{Pool, PoolError};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::{cluster, utf8};
use crate::store::{CommitOutcome, NewEvent, Result, StoreError};

pub(super) struct CommitJob {
    pub(super) event: NewEvent,
    pub(super) reply: oneshot::Sender<Result<CommitOutcome>>,
    /// The rate-limit lease the event was admitted under: its spend is recorded with the event.
    pub(super) spend: Option<Uuid>,
}

/// Why a group commit failed, and whether committing its events one by one may help.
struct BatchFailure {
    error: StoreError,
    /// The server refused something in the data (a constraint, a value): the other events of
    /// the batch deserve their own try.
    data: bool,
    /// A deadlock or serialization failure with another node's transaction: try again.
    transient: bool,
}

impl From<tokio_postgres::Error> for BatchFailure {
    fn from(e: tokio_postgres::Error) -> Self {
        let class = e.code().map(|c| c.code()[..2].to_string());
        BatchFailure {
            data: matches!(class.as_deref(), Some("22") | Some("23")),
            transient: class.as_deref() == Some("40"),
            error: e.into(),
        }
    }
}

impl From<StoreError> for BatchFailure {
    fn from(error: StoreError) -> Self {
        BatchFailure {
            error,
            data: false,
            transient: false,
        }
    }
}

impl From<PoolError> for BatchFailure {
    fn from(e: PoolError) -> Self {
        StoreError::from(e).into()
    }
}

/// Why the last group commit failed because the database could not take writes (see
/// `super::unavailable`), `None` once one succeeded; for `/health`, whose ping only reads.
pub(super) type WriteFault = Arc<std::sync::Mutex<Option<String>>>;

/// Takes whatever is waiting (up to `batch_max`) as one batch, and commits up to `lanes`
/// batches at once on separate connections (one by default, see `PgOptions::commit_lanes`).
/// While every lane is busy, new events queue up and so make the next batch bigger.
pub(super) async fn writer_loop(
    pool: Pool,
    node: Uuid,
    mut rx: mpsc::Receiver<CommitJob>,
    batch_max: usize,
    lanes: usize,
    fault: WriteFault,
) {
    let free = Arc::new(Semaphore::new(lanes.max(1)));
    let mut running = JoinSet::new();
    loop {
        let Ok(lane) = free.clone().acquire_owned().await else {
            break;
        };
        let Some(first) = rx.recv().await else { break };
        let mut batch: Vec<CommitJob> = Vec::with_capacity(batch_max.min(64));
        batch.push(first);
        while batch.len() < batch_max {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let pool = pool.clone();
        let fault = fault.clone();
        running.spawn(async move {
            let started = Instant::now();
            let events: Vec<&NewEvent> = batch.iter().map(|j| &j.event).collect();
            let spends: Vec<Option<Uuid>> = batch.iter().map(|j| j.spend).collect();
            let results = commit_batch(&pool, node, &events, &spends).await;
            drop(lane);
            crate::analytics::Analytics::commit(batch.len(), started.elapsed());
            tracing::trace!(
                batch = batch.len(),
                micros = started.elapsed().as_micros() as u64,
                "group commit"
            );
            // Known before anyone hears of the outcome, so `/health` agrees with the answers.
            let unavailable = results.iter().find_map(|r| match r {
                Err(StoreError::Unavailable(m)) => Some(m.clone()),
                _ => None,
            });
            if let Ok(mut f) = fault.lock() {
                // Logged as the SQLite writer does: once when the fault begins, once when it ends.
                if let Some(reason) = unavailable {
                    if f.is_none() {
                        tracing::error!(error = %reason, "the store cannot write");
                    }
                    *f = Some(reason);
                } else if results.iter().any(|r| r.is_ok()) && f.take().is_some() {
                    tracing::info!("the store can write again");
                }
            }
            for (job, result) in batch.into_iter().zip(results) {
                // The requester may have gone away (client disconnected); the event is stored
                // anyway.
                let _ = job.reply.send(result);
            }
        });
        while running.try_join_next().is_some() {}
    }
    // Closing: every batch already taken is committed and answered.
    while running.join_next().await.is_some() {}
}

/// Commits a batch; when the server refuses something in it, commits its events one by one so
/// that one bad event does not fail the others.
async fn commit_batch(
    pool: &Pool,
    node: Uuid,
    events: &[&NewEvent],
    spends: &[Option<Uuid>],
) -> Vec<Result<CommitOutcome>> {
    match commit_retrying(pool, node, events, spends).await {
        Ok(outcomes) => outcomes,
        Err(f) if f.data && events.len() > 1 => {
            let mut out = Vec::with_capacity(events.len());
            for (e, spend) in events.iter().zip(spends) {
                let one = std::slice::from_ref(e);
                out.push(
                    match commit_retrying(pool, node, one, std::slice::from_ref(spend)).await {
                        Ok(mut one) => one
                            .pop()
                            .unwrap_or_else(|| Err(StoreError::Database("no outcome".into()))),
                        Err(f) => Err(f.error),
                    },
                );
            }
            out
        }
        Err(f) => {
            tracing::warn!(error = %f.error, "group commit failed");
            let msg = f.error.to_string();
            events
                .iter()
                .map(|_| match &f.error {
                    StoreError::Closed => Err(StoreError::Closed),
                    StoreError::Unavailable(m) => Err(StoreError::Unavailable(m.clone())),
                    _ => Err(StoreError::Database(msg.clone())),
                })
                .collect()
        }
    }
}

async fn commit_retrying(
    pool: &Pool,
    node: Uuid,
    events: &[&NewEvent],
    spends: &[Option<Uuid>],
) -> std::result::Result<Vec<Result<CommitOutcome>>, BatchFailure> {
    let mut tries = 0;
    loop {
        match try_commit(pool, node, events, spends).await {
            Err(f) if f.transient && tries < 3 => {
                tries += 1;
                tracing::debug!(error = %f.error, "group commit conflicted; trying again");
            }
            other => return other,
        }
    }
}

/// Inserts events, deliveries and stream rows with one statement of UNNESTed arrays; events
/// the dedupe index refuses (`ON CONFLICT … DO NOTHING`, naming that index so that the insert
/// checks only it before writing, not the primary key too: an id is new by construction, and
/// a collision fails the batch, which is then committed event by event) are answered with the
/// original. The
/// same statement tells the other nodes which events it stored (`note`: the payloads of
/// `cluster::events_payloads`, $24 the channel and $25 the kind and node, at most 240 ids to a
/// notice), so the notices cost no statement of their own; NOTIFY is sent at COMMIT.
const INSERT_BATCH: &str = "
WITH ins AS (
    INSERT INTO events (id, source, type, action, delivery_id, timestamp, filtered, body)
    SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
                         $6::int8[], $7::bool[], $8::text[])
    ON CONFLICT (source, delivery_id) WHERE delivery_id IS NOT NULL DO NOTHING
    RETURNING id, timestamp
), dl AS (
    INSERT INTO deliveries (id, event_id, agent_id, route_id, priority, status, attempts,
                            next_attempt_at, last_error, body, retry_policy, created_at,
                            updated_at, owner, trace_context)
    SELECT d.id, d.event_id, d.agent_id, d.route_id, d.priority, d.status, 0,
           d.next_attempt_at, d.last_error, d.body, d.retry_policy, ins.timestamp,
           ins.timestamp, $22, d.trace_context
    FROM UNNEST($9::uuid[], $10::uuid[], $11::text[], $12::text[], $13::int8[], $14::text[],
                $15::int8[], $16::text[], $17::text[], $18::text[], $23::text[])
         AS d(id, event_id, agent_id, route_id, priority, status, next_attempt_at, last_error,
              body, retry_policy, trace_context)
    JOIN ins ON ins.id = d.event_id
    RETURNING 1
), st AS (
    INSERT INTO streamed (agent_id, event_id, body)
    SELECT s.agent_id, s.event_id, s.body
    FROM UNNEST($19::text[], $20::uuid[], $21::text[]) AS s(agent_id, event_id, body)
    JOIN ins ON ins.id = s.event_id
    ON CONFLICT DO NOTHING
    RETURNING 1
), note AS MATERIALIZED (
    SELECT pg_notify($24, $25 || string_agg(replace(n.id::text, '-', ''), '' ORDER BY n.id))
    FROM (SELECT id, (row_number() OVER (ORDER BY id) - 1) / 240 AS chunk FROM ins) AS n
    GROUP BY n.chunk
)
SELECT ins.id FROM ins, (SELECT count(*) FROM note) AS notified";

/// Ordering and coalescing keys of the deliveries just inserted (rows of refused events were
/// not inserted, so they match nothing).
const SET_KEYS: &str = "
UPDATE deliveries d SET ordering_key = u.okey, ordering_hold = u.hold, coalesce_key = u.ckey,
       coalesce_window_ms = u.w, coalesce_max_wait_ms = u.m
FROM UNNEST($1::uuid[], $2::text[], $3::bool[], $4::text[], $5::int8[], $6::int8[])
     AS u(id, okey, hold, ckey, w, m)
WHERE d.id = u.id";

/// Rate-limit spends: how many of the batch's events each lease admitted (see `rate_spends`).
const RECORD_SPENDS: &str =
    "INSERT INTO rate_spends (lease, spent) SELECT * FROM UNNEST($1::uuid[], $2::int8[])";

/// The original of each refused event, with whether it has deliveries.
const RESOLVE_DUPLICATES: &str = "
SELECT x.ord, e.id, e.filtered, EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id)
FROM UNNEST($1::text[], $2::text[]) WITH ORDINALITY AS x(source, delivery_id, ord)
JOIN events e ON e.source = x.source AND e.delivery_id = x.delivery_id";

/// A pooled connection running a hand-run transaction: dropped before the COMMIT answered (the
/// task cancelled between BEGIN and COMMIT), the connection is closed rather than pooled, so
/// that no later user inherits the open transaction. Once the COMMIT has answered, committed or
/// (after a failed statement) rolled back, the connection goes back to the pool as usual.
struct Pooled {
    object: Option<deadpool_postgres::Object>,
    in_transaction: bool,
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(object) = self.object.take().filter(|_| self.in_transaction) {
            drop(deadpool_postgres::Object::take(object));
        }
    }
}

async fn try_commit(
    pool: &Pool,
    node: Uuid,
    events: &[&NewEvent],
    spends: &[Option<Uuid>],
) -> std::result::Result<Vec<Result<CommitOutcome>>, BatchFailure> {
    let mut ids = Vec::with_capacity(events.len());
    let mut sources = Vec::with_capacity(events.len());
    let mut types = Vec::with_capacity(events.len());
    let mut actions = Vec::with_capacity(events.len());
    let mut delivery_ids = Vec::with_capacity(events.len());
    let mut timestamps = Vec::with_capacity(events.len());
    let mut filtered = Vec::with_capacity(events.len());
    let mut bodies = Vec::with_capacity(events.len());
    let mut d_id = Vec::new();
    let mut d_event = Vec::new();
    let mut d_agent = Vec::new();
    let mut d_route = Vec::new();
    let mut d_priority = Vec::new();
    let mut d_status = Vec::new();
    let mut d_next = Vec::new();
    let mut d_error = Vec::new();
    let mut d_body = Vec::new();
    let mut d_policy = Vec::new();
    let mut d_trace = Vec::new();
    let mut s_agent = Vec::new();
    let mut s_event = Vec::new();
    let mut s_body = Vec::new();
    // Ordering and coalescing keys, set on the rows just inserted (few deliveries have them).
    let mut q_id = Vec::new();
    let mut q_okey = Vec::new();
    let mut q_hold = Vec::new();
    let mut q_ckey = Vec::new();
    let mut q_window = Vec::new();
    let mut q_wait = Vec::new();
    // A body that is not UTF-8 (only a programming error can make one) fails its own event.
    fn text(b: &[u8]) -> std::result::Result<&str, BatchFailure> {
        utf8(b).map_err(|error| BatchFailure {
            error,
            data: true,
            transient: false,
        })
    }
    for e in events {
        ids.push(e.id);
        sources.push(e.source.as_str());
        types.push(e.event_type.as_str());
        actions.push(e.action.as_deref());
        delivery_ids.push(e.delivery_id.as_deref());
        timestamps.push(e.timestamp);
        filtered.push(e.filtered);
        bodies.push(text(&e.body)?);
        for d in &e.deliveries {
            d_id.push(d.id);
            d_event.push(e.id);
            d_agent.push(d.agent_id.as_str());
            d_route.push(d.route_id.as_str());
            d_priority.push(d.priority);
            d_status.push(d.status.as_str());
            d_next.push(d.next_attempt_at);
            d_error.push(d.last_error.as_deref());
            d_body.push(d.body.as_deref().map(text).transpose()?);
            d_policy.push(d.retry_policy.as_deref());
            d_trace.push(d.trace_context.as_deref());
            let q = &d.sequencing;
            if q.ordering_key.is_some() || q.coalesce_key.is_some() {
                q_id.push(d.id);
                q_okey.push(q.ordering_key.as_deref());
                q_hold.push(q.ordering_hold);
                q_ckey.push(q.coalesce_key.as_deref());
                q_window.push(q.coalesce_key.as_ref().map(|_| q.coalesce_window_ms as i64));
                q_wait.push(
                    q.coalesce_key
                        .as_ref()
                        .map(|_| q.coalesce_max_wait_ms as i64),
                );
            }
        }
        for (agent, body) in &e.streamed {
            s_agent.push(agent.as_str());
            s_event.push(e.id);
            s_body.push(body.as_deref().map(text).transpose()?);
        }
    }
    let notice_prefix = cluster::events_notice_prefix(node);
    let params: [&(dyn ToSql + Sync); 25] = [
        &ids,
        &sources,
        &types,
        &actions,
        &delivery_ids,
        &timestamps,
        &filtered,
        &bodies,
        &d_id,
        &d_event,
        &d_agent,
        &d_route,
        &d_priority,
        &d_status,
        &d_next,
        &d_error,
        &d_body,
        &d_policy,
        &s_agent,
        &s_event,
        &s_body,
        &node,
        &d_trace,
        &cluster::CHANNEL,
        &notice_prefix,
    ];
    // Every event of a committed batch was answered under its lease, duplicates too (as on one
    // node, where admission counts before the commit).
    let mut by_lease: std::collections::BTreeMap<Uuid, i64> = Default::default();
    for lease in spends.iter().flatten() {
        *by_lease.entry(*lease).or_default() += 1;
    }
    let (leases, counts): (Vec<Uuid>, Vec<i64>) = by_lease.into_iter().unzip();
    let spend_params: [&(dyn ToSql + Sync); 2] = [&leases, &counts];
    let key_params: [&(dyn ToSql + Sync); 6] =
        [&q_id, &q_okey, &q_hold, &q_ckey, &q_window, &q_wait];

    let mut client = Pooled {
        object: Some(pool.get().await?),
        in_transaction: true,
    };
    let c = client.object.as_ref().expect("set above");
    let insert = c.prepare_cached(INSERT_BATCH).await?;
    let record = c.prepare_cached(RECORD_SPENDS).await?;
    let keys = c.prepare_cached(SET_KEYS).await?;
    // The whole transaction in one round trip: BEGIN, the insert, the spends, the keys and
    // COMMIT are sent together, and the server runs them in order. (Waiting for each before
    // sending the next cost five round trips a batch, two of them for the notices, each a
    // wake-up on both sides while the batch's callers wait.) When a statement fails the server
    // refuses the rest of the transaction and turns the COMMIT into a rollback; the first
    // failure in order is the batch's.
    let (begun, inserted, spent, keyed, committed) = tokio::join!(
        c.batch_execute("BEGIN"),
        c.query(&insert, &params),
        async {
            match leases.is_empty() {
                true => Ok(0),
                false => c.execute(&record, &spend_params).await,
            }
        },
        async {
            match q_id.is_empty() {
                true => Ok(0),
                false => c.execute(&keys, &key_params).await,
            }
        },
        c.batch_execute("COMMIT"),
    );
    // The COMMIT answered: the transaction is over, committed or rolled back.
    client.in_transaction = committed.is_err();
    begun?;
    let rows = inserted?;
    spent?;
    keyed?;
    committed?;
    let stored: HashSet<Uuid> = rows.iter().map(|r| r.get::<_, Uuid>(0)).collect();

    let mut outcomes: Vec<Option<Result<CommitOutcome>>> = events
        .iter()
        .map(|e| stored.contains(&e.id).then_some(Ok(CommitOutcome::Stored)))
        .collect();
    // Refused events: by the dedupe index (answered with the original, stored earlier or
    // earlier in this batch). One whose original cannot be found gets an error.
    let refused: Vec<usize> = (0..events.len())
        .filter(|&i| outcomes[i].is_none())
        .collect();
    if !refused.is_empty() {
        let src: Vec<Option<&str>> = refused
            .iter()
            .map(|&i| Some(events[i].source.as_str()))
            .collect();
        let did: Vec<Option<&str>> = refused
            .iter()
            .map(|&i| events[i].delivery_id.as_deref())
            .collect();
        // Read after the commit: the originals are committed (those of this batch too).
        let resolve = c.prepare_cached(RESOLVE_DUPLICATES).await?;
        for row in c.query(&resolve, &[&src, &did]).await? {
            let ord: i64 = row.get(0);
            let Some(&i) = usize::try_from(ord - 1).ok().and_then(|k| refused.get(k)) else {
                continue;
            };
            outcomes[i] = Some(Ok(CommitOutcome::Duplicate {
                event_id: row.get(1),
                filtered: row.get(2),
                routed: row.get(3),
            }));
        }
    }
    Ok(outcomes
        .into_iter()
        .map(|o| {
            o.unwrap_or_else(|| {
                Err(StoreError::Database(
                    "an event with this id is already stored".into(),
                ))
            })
        })
        .collect())
}
