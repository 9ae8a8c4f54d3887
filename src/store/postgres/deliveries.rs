//! `DeliveryStore` on PostgreSQL: attempts written back, unfinished deliveries loaded, dead
//! letters.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::{PgStore, UNFINISHED, cluster, limit_of, u32_of, utf8};
use crate::store::{
    AttemptRecord, AttemptUpdate, DeadFilter, DeliveryRecord, DeliveryStatus, DeliveryStore,
    FinishedCounts, FirstSuccess, HeldKey, LeaseWrite, NewDelivery, PendingDelivery, Result,
    Sequencing, SupersededInfo, Supersession, parse_detail,
};

/// What a `PendingDelivery` needs, over `deliveries d JOIN events e`. With a `budget` (an
/// `int8` parameter such as `$2`; NULL = no limit), the body only while the bodies so far, in
/// id order, add up to at most it.
pub(super) fn pending_select(budget: Option<&str>) -> String {
    let body = match budget {
        None => "COALESCE(d.body, e.body)".to_string(),
        Some(b) => format!(
            "CASE WHEN {b}::int8 IS NULL
                       OR sum(octet_length(COALESCE(d.body, e.body)))
                              OVER (ORDER BY d.id ROWS UNBOUNDED PRECEDING) <= {b}::int8
                  THEN COALESCE(d.body, e.body) END"
        ),
    };
    format!(
        "d.id, d.event_id, d.agent_id, d.route_id, d.priority, d.attempts, d.retry_base,
         d.next_attempt_at, d.retry_policy, e.source, e.type, {body}, d.created_at,
         d.ordering_key, d.ordering_hold, d.coalesce_key, d.coalesce_window_ms,
         d.coalesce_max_wait_ms, d.superseded_count, d.superseded_ids, d.coalesce_since, d.trace_context,
         d.lease_consumer"
    )
}

pub(super) fn pending_row(r: &Row) -> Result<PendingDelivery> {
    Ok(PendingDelivery {
        id: r.get(0),
        event_id: r.get(1),
        agent_id: r.get(2),
        route_id: r.get(3),
        priority: r.get(4),
        attempts: u32_of(r.get(5), "attempts")?,
        retry_base: u32_of(r.get(6), "retry_base")?,
        next_attempt_at: r.get::<_, Option<i64>>(7).unwrap_or(0),
        retry_policy: r.get(8),
        source: r.get(9),
        event_type: r.get(10),
        body: r.get(11),
        created_at: r.get(12),
        trace_context: r.get(21),
        lease_consumer: r.get(22),
        sequencing: Sequencing {
            ordering_key: r.get(13),
            ordering_hold: r.get(14),
            coalesce_key: r.get(15),
            coalesce_window_ms: r.get::<_, Option<i64>>(16).unwrap_or(0).max(0) as u64,
            coalesce_max_wait_ms: r.get::<_, Option<i64>>(17).unwrap_or(0).max(0) as u64,
        },
        superseded: match u32_of(r.get(18), "superseded_count")? {
            0 => None,
            count => Some(SupersededInfo {
                count,
                event_ids: r.get::<_, Option<String>>(19).unwrap_or_default(),
                since: r.get::<_, Option<i64>>(20).unwrap_or(0),
            }),
        },
    })
}

pub(super) const DELIVERY_COLUMNS: &str =
    "id, event_id, agent_id, route_id, priority, status, attempts,
     next_attempt_at, last_error, first_started_at, first_duration_ms, first_status_code,
     ordering_key, coalesce_key, superseded_by, superseded_count,
     first_detail, first_response_body, origin
     FROM deliveries";

pub(super) fn delivery_row(r: &Row) -> Result<DeliveryRecord> {
    let status: String = r.get(5);
    Ok(DeliveryRecord {
        id: r.get(0),
        event_id: r.get(1),
        agent_id: r.get(2),
        route_id: r.get(3),
        priority: r.get(4),
        status: DeliveryStatus::parse(&status).unwrap_or(DeliveryStatus::Pending),
        attempts: u32_of(r.get(6), "attempts")?,
        next_attempt_at: r.get(7),
        last_error: r.get(8),
        // A first-attempt success is kept in the row (see `record_attempts`); every other
        // attempt is an `attempts` row, added by `fill_attempts`.
        attempt_log: AttemptRecord::first_success_log(FirstSuccess {
            started_at: r.get(9),
            duration_ms: r.get(10),
            status_code: r
                .get::<_, Option<i32>>(11)
                .and_then(|c| u16::try_from(c).ok()),
            detail: r.get(16),
            response_body: r.get(17),
            replayed: r.get::<_, Option<&str>>(18) == Some("replay"),
        }),
        ordering_key: r.get(12),
        coalesce_key: r.get(13),
        superseded_by: r.get(14),
        superseded_count: u32_of(r.get(15), "superseded_count")?,
    })
}

pub(super) async fn fill_attempts<C: GenericClient>(
    c: &C,
    list: &mut [DeliveryRecord],
) -> Result<()> {
    if list.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = list.iter().map(|d| d.id).collect();
    let rows = c
        .query(
            "SELECT delivery_id, attempt, started_at, duration_ms, status_code, error, cause,
                    detail, response_body
             FROM attempts WHERE delivery_id = ANY($1) ORDER BY delivery_id, attempt",
            &[&ids],
        )
        .await?;
    let mut by_delivery: HashMap<Uuid, Vec<AttemptRecord>> = HashMap::new();
    for r in rows {
        let code: Option<i32> = r.get(4);
        let (request_headers, response_headers) = parse_detail(r.get(7));
        by_delivery
            .entry(r.get(0))
            .or_default()
            .push(AttemptRecord {
                attempt: u32_of(r.get(1), "attempt")?,
                started_at: r.get(2),
                duration_ms: r.get::<_, i64>(3).max(0) as u64,
                status_code: code.and_then(|c| u16::try_from(c).ok()),
                error: r.get(5),
                trigger: r.get(6),
                request_headers,
                response_headers,
                response_body: r.get(8),
            });
    }
    for d in list {
        if let Some(mut logged) = by_delivery.remove(&d.id) {
            d.attempt_log.append(&mut logged);
        }
    }
    Ok(())
}

/// Moves dead deliveries matching `where_sql` (over `deliveries d JOIN events e`, parameters
/// from `$3`) back to pending, owned by `node`, and returns them.
async fn requeue<C: GenericClient>(
    c: &C,
    node: Uuid,
    where_sql: &str,
    args: &[&(dyn ToSql + Sync)],
) -> Result<Vec<PendingDelivery>> {
    let now = crate::clock::now_ms();
    let sql = format!(
        // A delivery whose route transformation failed has nothing to send: it is fixed by
        // correcting the route and replaying the event, not by a retry.
        "WITH picked AS (
             SELECT d.id FROM deliveries d JOIN events e ON e.id = d.event_id
             WHERE d.status = 'dead' AND NOT (d.attempts = 0 AND d.body IS NULL
                   AND COALESCE(d.last_error, '') LIKE 'transformation failed:%')
               AND {where_sql}
             FOR UPDATE OF d
         ), upd AS (
             UPDATE deliveries d SET status = 'pending', retry_base = d.attempts,
                    next_attempt_at = $1, updated_at = $1, owner = $2
             FROM picked WHERE d.id = picked.id
             RETURNING d.*
         )
         SELECT {} FROM upd d JOIN events e ON e.id = d.event_id ORDER BY d.id",
        pending_select(None)
    );
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&now, &node];
    params.extend_from_slice(args);
    let stmt = c.prepare_cached(&sql).await?;
    c.query(&stmt, &params)
        .await?
        .iter()
        .map(pending_row)
        .collect()
}

/// Inserts deliveries of one event, owned by `node`.
pub(super) async fn insert_deliveries<C: GenericClient>(
    c: &C,
    node: Uuid,
    event_id: Uuid,
    created_at: i64,
    deliveries: &[NewDelivery],
) -> Result<()> {
    if deliveries.is_empty() {
        return Ok(());
    }
    if deliveries
        .iter()
        .any(|d| d.sequencing != Sequencing::default())
    {
        return insert_sequenced(c, node, event_id, created_at, deliveries).await;
    }
    let mut id = Vec::new();
    let mut agent = Vec::new();
    let mut route = Vec::new();
    let mut priority = Vec::new();
    let mut status = Vec::new();
    let mut next = Vec::new();
    let mut error = Vec::new();
    let mut body = Vec::new();
    let mut policy = Vec::new();
    let mut trace = Vec::new();
    for d in deliveries {
        id.push(d.id);
        agent.push(d.agent_id.as_str());
        route.push(d.route_id.as_str());
        priority.push(d.priority);
        status.push(d.status.as_str());
        next.push(d.next_attempt_at);
        error.push(d.last_error.as_deref());
        body.push(d.body.as_deref().map(utf8).transpose()?);
        policy.push(d.retry_policy.as_deref());
        trace.push(d.trace_context.as_deref());
    }
    let stmt = c
        .prepare_cached(
            "INSERT INTO deliveries (id, event_id, agent_id, route_id, priority, status, attempts,
                                     next_attempt_at, last_error, body, retry_policy, created_at,
                                     updated_at, owner, trace_context)
             SELECT d.id, $10, d.agent_id, d.route_id, d.priority, d.status, 0, d.next_attempt_at,
                    d.last_error, d.body, d.retry_policy, $11, $11, $12, d.trace_context
             FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::int8[], $5::text[], $6::int8[],
                         $7::text[], $8::text[], $9::text[], $13::text[])
                  AS d(id, agent_id, route_id, priority, status, next_attempt_at, last_error,
                       body, retry_policy, trace_context)",
        )
        .await?;
    c.execute(
        &stmt,
        &[
            &id,
            &agent,
            &route,
            &priority,
            &status,
            &next,
            &error,
            &body,
            &policy,
            &event_id,
            &created_at,
            &node,
            &trace,
        ],
    )
    .await?;
    Ok(())
}

/// `insert_deliveries` when some have ordering or coalescing: the statement with those columns,
/// so that the common one stays as short as it was.
async fn insert_sequenced<C: GenericClient>(
    c: &C,
    node: Uuid,
    event_id: Uuid,
    created_at: i64,
    deliveries: &[NewDelivery],
) -> Result<()> {
    let stmt = c
        .prepare_cached(
            "INSERT INTO deliveries (id, event_id, agent_id, route_id, priority, status, attempts,
                                     next_attempt_at, last_error, body, retry_policy, created_at,
                                     updated_at, owner, ordering_key, ordering_hold, coalesce_key,
                                     coalesce_window_ms, coalesce_max_wait_ms, trace_context)
             VALUES ($1, $2, $3, $4, $5, $6, 0, $7, $8, $9, $10, $11, $11, $12, $13, $14, $15,
                     $16, $17, $18)",
        )
        .await?;
    for d in deliveries {
        let q = &d.sequencing;
        let body = d.body.as_deref().map(utf8).transpose()?;
        let window = q.coalesce_key.as_ref().map(|_| q.coalesce_window_ms as i64);
        let wait = q
            .coalesce_key
            .as_ref()
            .map(|_| q.coalesce_max_wait_ms as i64);
        c.execute(
            &stmt,
            &[
                &d.id,
                &event_id,
                &d.agent_id,
                &d.route_id,
                &d.priority,
                &d.status.as_str(),
                &d.next_attempt_at,
                &d.last_error,
                &body,
                &d.retry_policy,
                &created_at,
                &node,
                &q.ordering_key,
                &q.ordering_hold,
                &q.coalesce_key,
                &window,
                &wait,
                &d.trace_context.as_deref(),
            ],
        )
        .await?;
    }
    Ok(())
}

#[async_trait]
impl DeliveryStore for PgStore {
    async fn record_attempts(&self, updates: Vec<AttemptUpdate>) -> Result<()> {
        if updates.is_empty() {
            return Ok(());
        }
        // One row per key, as applying the updates in order would leave them: the last
        // attempt record per (delivery, attempt); per delivery the last outcome, with the
        // highest attempt number seen.
        let mut attempts: BTreeMap<(Uuid, u32), &AttemptUpdate> = BTreeMap::new();
        let mut last: BTreeMap<Uuid, (&AttemptUpdate, u32)> = BTreeMap::new();
        for u in &updates {
            attempts.insert((u.delivery_id, u.attempt), u);
            let top = last
                .get(&u.delivery_id)
                .map_or(u.attempt, |(_, a)| (*a).max(u.attempt));
            last.insert(u.delivery_id, (u, top));
        }
        let mut a_id = Vec::new();
        let mut a_no = Vec::new();
        let mut a_start = Vec::new();
        let mut a_dur = Vec::new();
        let mut a_code = Vec::new();
        let mut a_err = Vec::new();
        let mut a_resp = Vec::new();
        let mut a_detail = Vec::new();
        for ((id, no), u) in &attempts {
            // A first attempt that succeeded is kept in its delivery's row (most deliveries):
            // no `attempts` row to insert and index. `delivery_row` puts it back in the log.
            if u.is_first_success() {
                continue;
            }
            a_id.push(*id);
            a_no.push(i64::from(*no));
            a_start.push(u.started_at);
            a_dur.push(i64::try_from(u.duration_ms).unwrap_or(i64::MAX));
            a_code.push(u.status_code.map(i32::from));
            a_err.push(u.error.as_deref());
            a_resp.push(u.response_prefix.as_deref());
            a_detail.push(u.detail.as_deref());
        }
        let mut d_id = Vec::new();
        let mut d_status = Vec::new();
        let mut d_attempt = Vec::new();
        let mut d_next = Vec::new();
        let mut d_err = Vec::new();
        let mut f_start = Vec::new();
        let mut f_dur = Vec::new();
        let mut f_code = Vec::new();
        let mut f_detail = Vec::new();
        let mut f_resp = Vec::new();
        for (id, (u, top)) in &last {
            d_id.push(*id);
            d_status.push(u.status.as_str());
            d_attempt.push(i64::from(*top));
            d_next.push(u.next_attempt_at);
            d_err.push(u.error.as_deref());
            let first = attempts.get(&(*id, 1)).filter(|f| f.is_first_success());
            f_start.push(first.map(|f| f.started_at));
            f_dur.push(first.map(|f| i64::try_from(f.duration_ms).unwrap_or(i64::MAX)));
            f_code.push(first.and_then(|f| f.status_code).map(i32::from));
            f_detail.push(first.and_then(|f| f.detail.as_deref()));
            f_resp.push(first.and_then(|f| f.response_prefix.as_deref()));
        }
        let now = crate::clock::now_ms();
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        if !a_id.is_empty() {
            let ins = tx
                .prepare_cached(
                    // An attempt that was under way when its event was erased keeps its
                    // outcome in the log, not the agent's answer. Why the attempt was made is
                    // decided from its delivery's row as it is now (`store::attempt_trigger`).
                    "INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms,
                                           status_code, error, response_body, detail, cause)
                     SELECT a.id, a.no, a.started, a.dur, a.code, a.err,
                            CASE WHEN d.status = 'cancelled' THEN NULL ELSE a.resp END,
                            a.detail,
                            CASE WHEN a.no <= 1 THEN
                                     CASE WHEN d.origin = 'replay' THEN 'replay' ELSE 'initial' END
                                 WHEN d.retry_base > 0 AND a.no = d.retry_base + 1
                                     THEN 'manual_retry'
                                 ELSE 'scheduled' END
                     FROM UNNEST($1::uuid[], $2::int8[], $3::int8[], $4::int8[],
                                 $5::int4[], $6::text[], $7::text[], $8::text[])
                          AS a(id, no, started, dur, code, err, resp, detail)
                     LEFT JOIN deliveries d ON d.id = a.id
                     -- A delivery another node acked (a pull lease, ack_elsewhere) keeps
                     -- that outcome: this node's later view of the lease changes nothing.
                     WHERE d.status IS DISTINCT FROM 'delivered'
                     ON CONFLICT (delivery_id, attempt) DO UPDATE SET
                         started_at = excluded.started_at, duration_ms = excluded.duration_ms,
                         status_code = excluded.status_code, error = excluded.error,
                         response_body = excluded.response_body, detail = excluded.detail,
                         cause = excluded.cause",
                )
                .await?;
            tx.execute(
                &ins,
                &[
                    &a_id, &a_no, &a_start, &a_dur, &a_code, &a_err, &a_resp, &a_detail,
                ],
            )
            .await?;
        }
        let upd = tx
            .prepare_cached(
                "UPDATE deliveries d SET status = u.status,
                        attempts = GREATEST(d.attempts, u.attempt),
                        next_attempt_at = u.next_attempt_at, last_error = u.error,
                        first_started_at = CASE WHEN u.first_started_at IS NULL
                            THEN d.first_started_at ELSE u.first_started_at END,
                        first_duration_ms = CASE WHEN u.first_started_at IS NULL
                            THEN d.first_duration_ms ELSE u.first_duration_ms END,
                        first_status_code = CASE WHEN u.first_started_at IS NULL
                            THEN d.first_status_code ELSE u.first_status_code END,
                        first_detail = CASE WHEN u.first_started_at IS NULL
                            THEN d.first_detail ELSE u.first_detail END,
                        first_response_body = CASE WHEN u.first_started_at IS NULL
                            THEN d.first_response_body ELSE u.first_response_body END,
                        updated_at = $6, lease_consumer = NULL
                 FROM UNNEST($1::uuid[], $2::text[], $3::int8[], $4::int8[], $5::text[],
                             $7::int8[], $8::int8[], $9::int4[], $10::text[], $11::text[])
                      AS u(id, status, attempt, next_attempt_at, error,
                           first_started_at, first_duration_ms, first_status_code,
                           first_detail, first_response_body)
                 WHERE d.id = u.id AND d.status NOT IN ('cancelled', 'delivered')",
            )
            .await?;
        tx.execute(
            &upd,
            &[
                &d_id, &d_status, &d_attempt, &d_next, &d_err, &now, &f_start, &f_dur, &f_code,
                &f_detail, &f_resp,
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn lease_deliveries(&self, leases: Vec<LeaseWrite>) -> Result<Vec<Uuid>> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<Uuid> = leases.iter().map(|l| l.delivery_id).collect();
        let attempts: Vec<i64> = leases.iter().map(|l| i64::from(l.attempt)).collect();
        let until: Vec<i64> = leases.iter().map(|l| l.expires_at).collect();
        let consumers: Vec<&str> = leases.iter().map(|l| l.consumer.as_str()).collect();
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(&format!(
                "UPDATE deliveries d SET status = 'in_flight',
                        attempts = GREATEST(d.attempts, u.attempt),
                        next_attempt_at = u.until, lease_consumer = u.consumer, updated_at = $5
                 FROM UNNEST($1::uuid[], $2::int8[], $3::int8[], $4::text[])
                      AS u(id, attempt, until, consumer)
                 WHERE d.id = u.id AND d.owner = $6 AND d.status IN {UNFINISHED}
                 RETURNING d.id"
            ))
            .await?;
        let now = crate::clock::now_ms();
        Ok(c.query(
            &stmt,
            &[&ids, &attempts, &until, &consumers, &now, &self.node],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
    }

    async fn unfinished_deliveries(&self, body_budget: usize) -> Result<Vec<PendingDelivery>> {
        // What this node owns, plus whatever no live node owns (released, or whose owner's
        // lease ran out): never a delivery another live node is working on.
        let budget = body_budget.min(i64::MAX as usize) as i64;
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let stmt = tx
            .prepare_cached(&format!(
                "SELECT {} FROM deliveries d JOIN events e ON e.id = d.event_id
                 WHERE d.status IN {UNFINISHED} AND d.owner = $1 ORDER BY d.id",
                pending_select(Some("$2"))
            ))
            .await?;
        let mut out = tx
            .query(&stmt, &[&self.node, &budget])
            .await?
            .iter()
            .map(pending_row)
            .collect::<Result<Vec<_>>>()?;
        // Deliveries claimed from no live node share what the node's own left of the budget.
        let used: usize = out
            .iter()
            .filter_map(|p| p.body.as_ref())
            .map(String::len)
            .sum();
        let left = (body_budget.saturating_sub(used)).min(i64::MAX as usize) as i64;
        out.extend(cluster::claim(&tx, self.node, None, Some(left)).await?);
        tx.commit().await?;
        out.sort_by_key(|p| p.id);
        Ok(out)
    }

    async fn delivery_bodies(&self, ids: Vec<Uuid>) -> Result<Vec<(Uuid, String)>> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(
                "SELECT d.id, COALESCE(d.body, e.body) FROM deliveries d
                 JOIN events e ON e.id = d.event_id
                 WHERE d.id = ANY($1) AND e.erased_at IS NULL",
            )
            .await?;
        Ok(c.query(&stmt, &[&ids])
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }

    async fn dead_letters(
        &self,
        agent_id: Option<String>,
        source: Option<String>,
        limit: usize,
        before: Option<Uuid>,
    ) -> Result<Vec<DeliveryRecord>> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(&format!(
                "SELECT {DELIVERY_COLUMNS}
                 WHERE status = 'dead' AND id < $1 AND ($2::text IS NULL OR agent_id = $2)
                   AND ($4::text IS NULL OR EXISTS (SELECT 1 FROM events e
                        WHERE e.id = deliveries.event_id AND e.source = $4))
                 ORDER BY id DESC LIMIT $3"
            ))
            .await?;
        let before = before.unwrap_or(Uuid::max());
        let mut list = c
            .query(&stmt, &[&before, &agent_id, &limit_of(limit), &source])
            .await?
            .iter()
            .map(delivery_row)
            .collect::<Result<Vec<_>>>()?;
        fill_attempts(&c, &mut list).await?;
        Ok(list)
    }

    async fn retry_dead(&self, id: Uuid) -> Result<Option<PendingDelivery>> {
        let c = self.client().await?;
        Ok(requeue(&c, self.node, "d.id = $3", &[&id]).await?.pop())
    }

    async fn retry_dead_matching(&self, f: DeadFilter) -> Result<Vec<PendingDelivery>> {
        let c = self.client().await?;
        requeue(
            &c,
            self.node,
            "($3::text IS NULL OR d.agent_id = $3) AND ($4::text IS NULL OR e.source = $4)
             AND ($5::int8 IS NULL OR d.updated_at >= $5)",
            &[&f.agent_id, &f.source, &f.since],
        )
        .await
    }

    async fn delete_dead(&self, id: Uuid) -> Result<bool> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let n = tx
            .execute(
                "DELETE FROM deliveries WHERE id = $1 AND status = 'dead'",
                &[&id],
            )
            .await?;
        if n > 0 {
            tx.execute("DELETE FROM attempts WHERE delivery_id = $1", &[&id])
                .await?;
        }
        tx.commit().await?;
        Ok(n > 0)
    }

    async fn add_deliveries(&self, event_id: Uuid, deliveries: Vec<NewDelivery>) -> Result<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        insert_deliveries(
            &tx,
            self.node,
            event_id,
            crate::clock::now_ms(),
            &deliveries,
        )
        .await?;
        // Only a replay adds deliveries to an archived event: its attempts say so.
        let ids: Vec<Uuid> = deliveries.iter().map(|d| d.id).collect();
        tx.execute(
            "UPDATE deliveries SET origin = 'replay' WHERE id = ANY($1)",
            &[&ids],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn finished_counts(&self) -> Result<FinishedCounts> {
        let c = self.client().await?;
        let row = c
            .query_one(
                "SELECT count(*) FILTER (WHERE status = 'dead'),
                        count(*) FILTER (WHERE status = 'delivered'),
                        count(*) FILTER (WHERE status = 'superseded')
                 FROM deliveries",
                &[],
            )
            .await?;
        Ok(FinishedCounts {
            dead: row.get::<_, i64>(0).max(0) as u64,
            delivered: row.get::<_, i64>(1).max(0) as u64,
            superseded: row.get::<_, i64>(2).max(0) as u64,
        })
    }

    async fn supersede(&self, steps: Vec<Supersession>) -> Result<()> {
        if steps.is_empty() {
            return Ok(());
        }
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let old = tx
            .prepare_cached(
                "UPDATE deliveries SET status = 'superseded', superseded_by = $2,
                        next_attempt_at = NULL, updated_at = $3
                 WHERE id = $1 AND status = 'pending'",
            )
            .await?;
        let by = tx
            .prepare_cached(
                "UPDATE deliveries SET superseded_count = $2, superseded_ids = $3,
                        coalesce_since = $4, next_attempt_at = $5, updated_at = $6
                 WHERE id = $1 AND status = 'pending'",
            )
            .await?;
        let now = crate::clock::now_ms();
        for s in &steps {
            tx.execute(&old, &[&s.old, &s.by, &now]).await?;
            tx.execute(
                &by,
                &[
                    &s.by,
                    &i64::from(s.carried.count),
                    &s.carried.event_ids,
                    &s.carried.since,
                    &s.due,
                    &now,
                ],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn held_keys(&self) -> Result<Vec<HeldKey>> {
        let c = self.client().await?;
        c.query(
            "SELECT id, event_id, agent_id, ordering_key FROM deliveries
             WHERE status = 'dead' AND ordering_hold ORDER BY id",
            &[],
        )
        .await?
        .iter()
        .map(|r| {
            Ok(HeldKey {
                delivery_id: r.get(0),
                event_id: r.get(1),
                agent_id: r.get(2),
                key: r.get(3),
            })
        })
        .collect()
    }
}
