//! `DeliveryStore` on SQLite: attempts written back, unfinished deliveries loaded, dead letters.

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use uuid::Uuid;

use super::writer::pack_deliveries;
use super::{SqliteStore, uuid_col};
use crate::store::packed::{Packed, Unpacked, unpacked_len};
use crate::store::{
    AttemptRecord, AttemptUpdate, DeadFilter, DeliveryRecord, DeliveryStatus, DeliveryStore,
    FinishedCounts, FirstSuccess, HeldKey, LeaseWrite, NewDelivery, PendingDelivery, Result,
    Sequencing, SupersededInfo, Supersession, parse_detail,
};

/// `pending_row`'s columns, of `deliveries d` joined to `events e`; the body column's
/// expression can be given.
macro_rules! pending_columns {
    () => {
        pending_columns!("COALESCE(d.body, e.body)")
    };
    ($body:literal) => {
        concat!(
            "d.id, d.event_id, d.agent_id, d.route_id, d.priority, d.attempts, d.retry_base,
             d.next_attempt_at, d.retry_policy, e.source, e.type, ",
            $body,
            ", d.created_at, d.ordering_key, d.ordering_hold, d.coalesce_key, d.coalesce_window_ms,
             d.coalesce_max_wait_ms, d.superseded_count, d.superseded_ids, d.coalesce_since, d.trace_context,
             d.lease_consumer"
        )
    };
}
const PENDING_COLUMNS: &str = concat!(
    pending_columns!(),
    " FROM deliveries d JOIN events e ON e.id = d.event_id"
);

fn pending_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<PendingDelivery> {
    let mut p = pending_row_without_body(r)?;
    p.body = r.get::<_, Option<Unpacked>>(11)?.map(|b| b.0);
    Ok(p)
}

fn pending_row_without_body(r: &rusqlite::Row<'_>) -> rusqlite::Result<PendingDelivery> {
    Ok(PendingDelivery {
        id: uuid_col(r, 0)?,
        event_id: uuid_col(r, 1)?,
        agent_id: r.get(2)?,
        route_id: r.get(3)?,
        priority: r.get(4)?,
        attempts: r.get(5)?,
        retry_base: r.get(6)?,
        next_attempt_at: r.get::<_, Option<i64>>(7)?.unwrap_or(0),
        retry_policy: r.get(8)?,
        source: r.get(9)?,
        event_type: r.get(10)?,
        body: None,
        created_at: r.get(12)?,
        trace_context: r.get(21)?,
        lease_consumer: r.get(22)?,
        sequencing: Sequencing {
            ordering_key: r.get(13)?,
            ordering_hold: r.get(14)?,
            coalesce_key: r.get(15)?,
            coalesce_window_ms: r.get::<_, Option<i64>>(16)?.unwrap_or(0).max(0) as u64,
            coalesce_max_wait_ms: r.get::<_, Option<i64>>(17)?.unwrap_or(0).max(0) as u64,
        },
        superseded: match r.get::<_, u32>(18)? {
            0 => None,
            count => Some(SupersededInfo {
                count,
                event_ids: r.get::<_, Option<String>>(19)?.unwrap_or_default(),
                since: r.get::<_, Option<i64>>(20)?.unwrap_or(0),
            }),
        },
    })
}

pub(super) fn delivery_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeliveryRecord> {
    let status: String = r.get(5)?;
    Ok(DeliveryRecord {
        id: uuid_col(r, 0)?,
        event_id: uuid_col(r, 1)?,
        agent_id: r.get(2)?,
        route_id: r.get(3)?,
        priority: r.get(4)?,
        status: DeliveryStatus::parse(&status).unwrap_or(DeliveryStatus::Pending),
        attempts: r.get(6)?,
        next_attempt_at: r.get(7)?,
        last_error: r.get(8)?,
        attempt_log: AttemptRecord::first_success_log(FirstSuccess {
            started_at: r.get(9)?,
            duration_ms: r.get(10)?,
            status_code: r.get(11)?,
            detail: r.get(16)?,
            response_body: r.get(17)?,
            replayed: r.get::<_, Option<String>>(18)?.as_deref() == Some("replay"),
        }),
        ordering_key: r.get(12)?,
        coalesce_key: r.get(13)?,
        superseded_by: r
            .get::<_, Option<Vec<u8>>>(14)?
            .and_then(|b| Uuid::from_slice(&b).ok()),
        superseded_count: r.get(15)?,
    })
}

pub(super) const DELIVERY_COLUMNS: &str =
    "id, event_id, agent_id, route_id, priority, status, attempts,
     next_attempt_at, last_error, first_started_at, first_duration_ms, first_status_code,
     ordering_key, coalesce_key, superseded_by, superseded_count,
     first_detail, first_response_body, origin
     FROM deliveries";

pub(super) fn fill_attempts(c: &Connection, list: &mut [DeliveryRecord]) -> rusqlite::Result<()> {
    let mut attempts = c.prepare_cached(
        "SELECT attempt, started_at, duration_ms, status_code, error, cause, detail, response_body
         FROM attempts WHERE delivery_id = ?1 ORDER BY attempt",
    )?;
    for d in list {
        let logged: Vec<AttemptRecord> = attempts
            .query_map([d.id.as_bytes().as_slice()], |r| {
                let (request_headers, response_headers) =
                    parse_detail(r.get::<_, Option<String>>(6)?.as_deref());
                Ok(AttemptRecord {
                    attempt: r.get(0)?,
                    started_at: r.get(1)?,
                    duration_ms: r.get::<_, i64>(2)?.max(0) as u64,
                    status_code: r.get(3)?,
                    error: r.get(4)?,
                    trigger: r.get(5)?,
                    request_headers,
                    response_headers,
                    response_body: r.get(7)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        d.attempt_log.extend(logged);
    }
    Ok(())
}

/// Moves dead deliveries matching `where_sql` back to pending and returns them.
fn requeue(
    c: &Connection,
    where_sql: &str,
    args: &[&dyn rusqlite::ToSql],
) -> rusqlite::Result<Vec<PendingDelivery>> {
    let now = crate::clock::now_ms();
    let ids: Vec<Vec<u8>> = c
        .prepare(&format!(
            // A delivery whose route transformation failed has nothing to send: it is fixed by
            // correcting the route and replaying the event, not by a retry.
            "SELECT d.id FROM deliveries d JOIN events e ON e.id = d.event_id
             WHERE d.status = 'dead' AND NOT (d.attempts = 0 AND d.body IS NULL
                   AND COALESCE(d.last_error, '') LIKE 'transformation failed:%')
               AND {where_sql}"
        ))?
        .query_map(args, |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut update = c.prepare_cached(
        "UPDATE deliveries SET status = 'pending', retry_base = attempts, next_attempt_at = ?2,
                updated_at = ?2
         WHERE id = ?1",
    )?;
    let mut select = c.prepare_cached(&format!("SELECT {PENDING_COLUMNS} WHERE d.id = ?1"))?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        update.execute(params![id, now])?;
        out.push(select.query_row([&id], pending_row)?);
    }
    Ok(out)
}

pub(super) fn insert_deliveries(
    c: &Connection,
    event_id: Uuid,
    created_at: i64,
    deliveries: &[NewDelivery],
    bodies: &[Option<Packed>],
) -> rusqlite::Result<()> {
    let mut stmt = c.prepare_cached(
        "INSERT INTO deliveries (id, event_id, agent_id, route_id, priority, status, attempts,
                                 next_attempt_at, last_error, body, retry_policy, created_at, updated_at,
                                 trace_context)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?7, ?8, ?9, ?10, ?11, ?11, ?12)",
    )?;
    for (d, body) in deliveries.iter().zip(bodies) {
        if d.sequencing != Sequencing::default() {
            insert_sequenced(c, event_id, created_at, d, body)?;
            continue;
        }
        stmt.execute(params![
            d.id.as_bytes().as_slice(),
            event_id.as_bytes().as_slice(),
            d.agent_id,
            d.route_id,
            d.priority,
            d.status.as_str(),
            d.next_attempt_at,
            d.last_error,
            body,
            d.retry_policy,
            created_at,
            d.trace_context.as_deref(),
        ])?;
    }
    Ok(())
}

/// A delivery with ordering or coalescing: the other statement, so that the common one stays as
/// short as it was.
fn insert_sequenced(
    c: &Connection,
    event_id: Uuid,
    created_at: i64,
    d: &NewDelivery,
    body: &Option<Packed>,
) -> rusqlite::Result<()> {
    let q = &d.sequencing;
    c.prepare_cached(
        "INSERT INTO deliveries (id, event_id, agent_id, route_id, priority, status, attempts,
                                 next_attempt_at, last_error, body, retry_policy, created_at, updated_at,
                                 ordering_key, ordering_hold, coalesce_key, coalesce_window_ms,
                                 coalesce_max_wait_ms, trace_context)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?7, ?8, ?9, ?10, ?11, ?11, ?12, ?13, ?14, ?15, ?16,
                 ?17)",
    )?
    .execute(params![
        d.id.as_bytes().as_slice(),
        event_id.as_bytes().as_slice(),
        d.agent_id,
        d.route_id,
        d.priority,
        d.status.as_str(),
        d.next_attempt_at,
        d.last_error,
        body,
        d.retry_policy,
        created_at,
        q.ordering_key,
        q.ordering_hold,
        q.coalesce_key,
        q.coalesce_key.as_ref().map(|_| q.coalesce_window_ms as i64),
        q.coalesce_key.as_ref().map(|_| q.coalesce_max_wait_ms as i64),
        d.trace_context.as_deref(),
    ])?;
    Ok(())
}

#[async_trait]
impl DeliveryStore for SqliteStore {
    async fn record_attempts(&self, updates: Vec<AttemptUpdate>) -> Result<()> {
        self.write(move |c| {
            // An attempt that was under way when its event was erased: its outcome is kept in
            // the log, without the agent's answer, and the delivery stays `cancelled`.
            // Why the attempt was made is decided from its delivery's row as it is now (see
            // `store::attempt_trigger`): a later retry from the dead-letter queue moves
            // `retry_base`.
            let mut attempt = c.prepare_cached(
                "INSERT OR REPLACE INTO attempts
                    (delivery_id, attempt, started_at, duration_ms, status_code, error, response_body,
                     detail, cause)
                 SELECT ?1, ?2, ?3, ?4, ?5, ?6,
                        CASE WHEN d.status = 'cancelled' THEN NULL ELSE ?7 END, ?8,
                        CASE WHEN ?2 <= 1 THEN
                                 CASE WHEN d.origin = 'replay' THEN 'replay' ELSE 'initial' END
                             WHEN d.retry_base > 0 AND ?2 = d.retry_base + 1 THEN 'manual_retry'
                             ELSE 'scheduled' END
                 FROM (SELECT 1) LEFT JOIN deliveries d ON d.id = ?1",
            )?;
            let mut delivery = c.prepare_cached(
                "UPDATE deliveries SET status = ?2, attempts = MAX(attempts, ?3), next_attempt_at = ?4,
                        last_error = ?5, updated_at = ?6, lease_consumer = NULL
                 WHERE id = ?1 AND status != 'cancelled'",
            )?;
            let mut first_success = c.prepare_cached(
                "UPDATE deliveries SET status = 'delivered', attempts = MAX(attempts, 1),
                        next_attempt_at = NULL, last_error = NULL, updated_at = ?2,
                        first_started_at = ?3, first_duration_ms = ?4, first_status_code = ?5,
                        first_detail = ?6, first_response_body = ?7, lease_consumer = NULL
                 WHERE id = ?1 AND status != 'cancelled'",
            )?;
            let now = crate::clock::now_ms();
            for u in &updates {
                let id = u.delivery_id.as_bytes().as_slice();
                if u.is_first_success() {
                    first_success.execute(params![
                        id,
                        now,
                        u.started_at,
                        u.duration_ms as i64,
                        u.status_code,
                        u.detail,
                        u.response_prefix
                    ])?;
                    continue;
                }
                attempt.execute(params![
                    id,
                    u.attempt,
                    u.started_at,
                    u.duration_ms as i64,
                    u.status_code,
                    u.error,
                    u.response_prefix,
                    u.detail
                ])?;
                delivery.execute(params![
                    id,
                    u.status.as_str(),
                    u.attempt,
                    u.next_attempt_at,
                    u.error,
                    now
                ])?;
            }
            Ok(())
        })
        .await
    }

    async fn lease_deliveries(&self, leases: Vec<LeaseWrite>) -> Result<Vec<Uuid>> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        self.write(move |c| {
            let mut stmt = c.prepare_cached(
                "UPDATE deliveries SET status = 'in_flight', attempts = MAX(attempts, ?2),
                        next_attempt_at = ?3, lease_consumer = ?4, updated_at = ?5
                 WHERE id = ?1 AND status BETWEEN 'in_flight' AND 'scheduled'",
            )?;
            let now = crate::clock::now_ms();
            let mut leased = Vec::with_capacity(leases.len());
            for l in &leases {
                let n = stmt.execute(params![
                    l.delivery_id.as_bytes().as_slice(),
                    l.attempt,
                    l.expires_at,
                    l.consumer,
                    now
                ])?;
                if n == 1 {
                    leased.push(l.delivery_id);
                }
            }
            Ok(leased)
        })
        .await
    }

    async fn unfinished_deliveries(&self, body_budget: usize) -> Result<Vec<PendingDelivery>> {
        self.read(move |c| {
            // Without statistics the planner would rather walk every delivery in id order than
            // sort the few unfinished ones; the partial index holds exactly those.
            let mut stmt = c.prepare(concat!(
                "SELECT ",
                pending_columns!(),
                " FROM deliveries d INDEXED BY deliveries_unfinished
                     JOIN events e ON e.id = d.event_id
                 WHERE d.status BETWEEN 'in_flight' AND 'scheduled' ORDER BY d.id"
            ))?;
            // The body only while the bodies so far, in id order, add up to at most the budget
            // (their length as text: what they will take in memory, packed or not).
            let mut used = 0usize;
            let mut rows = stmt.query([])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                used = used.saturating_add(unpacked_len(r.get_ref(11)?));
                let mut p = pending_row_without_body(r)?;
                if used <= body_budget {
                    p.body = r.get::<_, Option<Unpacked>>(11)?.map(|b| b.0);
                }
                out.push(p);
            }
            Ok(out)
        })
        .await
    }

    async fn delivery_bodies(&self, ids: Vec<Uuid>) -> Result<Vec<(Uuid, String)>> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT COALESCE(d.body, e.body) FROM deliveries d
                 JOIN events e ON e.id = d.event_id WHERE d.id = ?1 AND e.erased_at IS NULL",
            )?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(body) = stmt
                    .query_row([id.as_bytes().as_slice()], |r| r.get::<_, Unpacked>(0))
                    .optional()?
                {
                    out.push((id, body.0));
                }
            }
            Ok(out)
        })
        .await
    }

    async fn dead_letters(
        &self,
        agent_id: Option<String>,
        source: Option<String>,
        limit: usize,
        before: Option<Uuid>,
    ) -> Result<Vec<DeliveryRecord>> {
        self.read(move |c| {
            let before = before
                .map(|b| b.as_bytes().to_vec())
                .unwrap_or_else(|| vec![0xff; 17]);
            let mut list: Vec<DeliveryRecord> = c
                .prepare_cached(&format!(
                    "SELECT {DELIVERY_COLUMNS}
                     WHERE status = 'dead' AND id < ?1 AND (?2 IS NULL OR agent_id = ?2)
                       AND (?4 IS NULL OR EXISTS (SELECT 1 FROM events e
                            WHERE e.id = deliveries.event_id AND e.source = ?4))
                     ORDER BY id DESC LIMIT ?3"
                ))?
                .query_map(
                    params![before, agent_id, limit as i64, source],
                    delivery_row,
                )?
                .collect::<rusqlite::Result<_>>()?;
            fill_attempts(c, &mut list)?;
            Ok(list)
        })
        .await
    }

    async fn retry_dead(&self, id: Uuid) -> Result<Option<PendingDelivery>> {
        self.write(move |c| {
            let id = id.as_bytes().to_vec();
            Ok(requeue(c, "d.id = ?1", &[&id])?.pop())
        })
        .await
    }

    async fn retry_dead_matching(&self, f: DeadFilter) -> Result<Vec<PendingDelivery>> {
        self.write(move |c| {
            requeue(
                c,
                "(?1 IS NULL OR d.agent_id = ?1) AND (?2 IS NULL OR e.source = ?2)
                 AND (?3 IS NULL OR d.updated_at >= ?3)",
                &[&f.agent_id, &f.source, &f.since],
            )
        })
        .await
    }

    async fn delete_dead(&self, id: Uuid) -> Result<bool> {
        self.write(move |c| {
            let id = id.as_bytes().as_slice();
            let n = c
                .prepare_cached("DELETE FROM deliveries WHERE id = ?1 AND status = 'dead'")?
                .execute([id])?;
            if n > 0 {
                c.prepare_cached("DELETE FROM attempts WHERE delivery_id = ?1")?
                    .execute([id])?;
            }
            Ok(n > 0)
        })
        .await
    }

    async fn add_deliveries(&self, event_id: Uuid, deliveries: Vec<NewDelivery>) -> Result<()> {
        let bodies = pack_deliveries(&deliveries);
        self.write(move |c| {
            insert_deliveries(c, event_id, crate::clock::now_ms(), &deliveries, &bodies)?;
            // Only a replay adds deliveries to an archived event: its attempts say so.
            let mut origin =
                c.prepare_cached("UPDATE deliveries SET origin = 'replay' WHERE id = ?1")?;
            for d in &deliveries {
                origin.execute([d.id.as_bytes().as_slice()])?;
            }
            Ok(())
        })
        .await
    }

    async fn finished_counts(&self) -> Result<FinishedCounts> {
        self.read(|c| {
            c.query_row(
                "SELECT COALESCE(SUM(status = 'dead'), 0), COALESCE(SUM(status = 'delivered'), 0),
                        COALESCE(SUM(status = 'superseded'), 0)
                 FROM deliveries",
                [],
                |r| {
                    Ok(FinishedCounts {
                        dead: r.get::<_, i64>(0)? as u64,
                        delivered: r.get::<_, i64>(1)? as u64,
                        superseded: r.get::<_, i64>(2)? as u64,
                    })
                },
            )
        })
        .await
    }

    async fn supersede(&self, steps: Vec<Supersession>) -> Result<()> {
        if steps.is_empty() {
            return Ok(());
        }
        self.write(move |c| {
            let mut old = c.prepare_cached(
                "UPDATE deliveries SET status = 'superseded', superseded_by = ?2,
                        next_attempt_at = NULL, updated_at = ?3
                 WHERE id = ?1 AND status = 'pending'",
            )?;
            let mut by = c.prepare_cached(
                "UPDATE deliveries SET superseded_count = ?2, superseded_ids = ?3,
                        coalesce_since = ?4, next_attempt_at = ?5, updated_at = ?6
                 WHERE id = ?1 AND status = 'pending'",
            )?;
            let now = crate::clock::now_ms();
            for s in &steps {
                old.execute(params![
                    s.old.as_bytes().as_slice(),
                    s.by.as_bytes().as_slice(),
                    now
                ])?;
                by.execute(params![
                    s.by.as_bytes().as_slice(),
                    s.carried.count,
                    s.carried.event_ids,
                    s.carried.since,
                    s.due,
                    now
                ])?;
            }
            Ok(())
        })
        .await
    }

    async fn held_keys(&self) -> Result<Vec<HeldKey>> {
        self.read(|c| {
            c.prepare(
                "SELECT id, event_id, agent_id, ordering_key FROM deliveries INDEXED BY deliveries_held
                 WHERE status = 'dead' AND ordering_hold = 1 ORDER BY id",
            )?
            .query_map([], |r| {
                Ok(HeldKey {
                    delivery_id: uuid_col(r, 0)?,
                    event_id: uuid_col(r, 1)?,
                    agent_id: r.get(2)?,
                    key: r.get(3)?,
                })
            })?
            .collect()
        })
        .await
    }
}
