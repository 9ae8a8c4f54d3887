//! `EventStore` on SQLite: event commits (through the writer) and the archive's reads.

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};
use tokio::sync::oneshot;
use uuid::Uuid;

use super::deliveries::{DELIVERY_COLUMNS, delivery_row, fill_attempts};
use super::writer::{CommitEventJob, PackedBodies};
use super::{SqliteStore, uuid_col};
use crate::store::packed::Unpacked;
use crate::store::{
    BacklogItem, CommitOutcome, DeliveryRecord, DeliveryTally, EventQuery, EventRecord,
    EventStatus, EventStore, NewEvent, Result, StoreError, id_floor, tombstone,
};

fn event_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<EventRecord> {
    Ok(EventRecord {
        id: uuid_col(r, 0)?,
        source: r.get(1)?,
        event_type: r.get(2)?,
        timestamp: r.get(3)?,
        filtered: r.get(4)?,
        body: r.get::<_, Unpacked>(5)?.0,
        erased_at: r.get(6)?,
    })
}

/// The columns `event_row` reads.
const EVENT_COLUMNS: &str = "id, source, type, timestamp, filtered, body, erased_at FROM events";

#[async_trait]
impl EventStore for SqliteStore {
    async fn commit_event(&self, event: NewEvent) -> Result<CommitOutcome> {
        if let Some(reason) = self.floor.refusal() {
            return Err(StoreError::Unavailable(reason));
        }
        let (reply, rx) = oneshot::channel();
        // Compressed here, on the request's task, so the writer thread only copies.
        let bodies = PackedBodies::new(&event);
        self.sender()?
            .send(Box::new(CommitEventJob {
                event,
                bodies,
                outcome: None,
                reply,
            }))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn get_event(&self, id: Uuid) -> Result<Option<EventRecord>> {
        self.read(move |c| {
            c.prepare_cached(&format!("SELECT {EVENT_COLUMNS} WHERE id = ?1"))?
                .query_row([id.as_bytes().as_slice()], event_row)
                .optional()
        })
        .await
    }

    async fn list_events(&self, q: EventQuery) -> Result<Vec<EventRecord>> {
        self.read(move |c| {
            // Ids are time-ordered, so time bounds and the cursor are all bounds on `id`.
            let mut sql = format!("SELECT {EVENT_COLUMNS} WHERE 1=1");
            let mut args: Vec<Box<dyn rusqlite::ToSql>> = Vec::new();
            if let Some(s) = q.source {
                sql.push_str(" AND source = ?");
                args.push(Box::new(s));
            }
            if let Some(t) = q.event_type {
                sql.push_str(" AND type = ?");
                args.push(Box::new(t));
            }
            if let Some(since) = q.since {
                sql.push_str(" AND id >= ?");
                args.push(Box::new(id_floor(since).to_vec()));
            }
            if let Some(until) = q.until {
                sql.push_str(" AND id < ?");
                args.push(Box::new(id_floor(until).to_vec()));
            }
            if let Some(before) = q.before {
                sql.push_str(" AND id < ?");
                args.push(Box::new(before.as_bytes().to_vec()));
            }
            match q.status {
                Some(EventStatus::Filtered) => sql.push_str(" AND filtered = 1"),
                Some(EventStatus::Processed) => sql.push_str(" AND filtered = 0"),
                None => {}
            }
            sql.push_str(" ORDER BY id DESC LIMIT ?");
            args.push(Box::new(q.limit as i64));
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query_map(
                rusqlite::params_from_iter(args.iter().map(|a| a.as_ref())),
                event_row,
            )?;
            rows.collect()
        })
        .await
    }

    async fn event_deliveries(&self, id: Uuid) -> Result<Vec<DeliveryRecord>> {
        self.read(move |c| {
            let mut out: Vec<DeliveryRecord> = c
                .prepare_cached(&format!(
                    "SELECT {DELIVERY_COLUMNS} WHERE event_id = ?1 ORDER BY priority DESC, agent_id"
                ))?
                .query_map([id.as_bytes().as_slice()], delivery_row)?
                .collect::<rusqlite::Result<_>>()?;
            fill_attempts(c, &mut out)?;
            Ok(out)
        })
        .await
    }

    async fn delivery_tallies(&self, ids: Vec<Uuid>) -> Result<Vec<(Uuid, DeliveryTally)>> {
        self.read(move |c| {
            let mut deliveries = c.prepare_cached(
                "SELECT status, attempts > 0, count(*) FROM deliveries WHERE event_id = ?1
                 GROUP BY 1, 2",
            )?;
            let mut streamed =
                c.prepare_cached("SELECT count(*) FROM streamed WHERE event_id = ?1")?;
            let mut out = Vec::new();
            for id in ids {
                let key = id.as_bytes().as_slice();
                let mut tally = DeliveryTally::default();
                let mut rows = deliveries.query([key])?;
                while let Some(r) = rows.next()? {
                    let status: String = r.get(0)?;
                    tally.add(&status, r.get(1)?, r.get(2)?);
                }
                tally.streamed = streamed.query_row([key], |r| r.get(0))?;
                if tally != DeliveryTally::default() {
                    out.push((id, tally));
                }
            }
            Ok(out)
        })
        .await
    }

    async fn stream_backlog(
        &self,
        agent: Option<String>,
        after: Uuid,
        limit: usize,
    ) -> Result<Vec<BacklogItem>> {
        self.read(move |c| {
            let after = after.as_bytes().to_vec();
            let row = |r: &rusqlite::Row<'_>| {
                Ok(BacklogItem {
                    event_id: uuid_col(r, 0)?,
                    body: r.get::<_, Unpacked>(1)?.0,
                })
            };
            match agent {
                None => c
                    .prepare_cached(
                        "SELECT id, body FROM events
                          WHERE id > ?1 AND filtered = 0 AND erased_at IS NULL
                         ORDER BY id LIMIT ?2",
                    )?
                    .query_map(params![after, limit as i64], row)?
                    .collect(),
                Some(agent) => c
                    .prepare_cached(
                        // A delivery whose route transformation failed has no body to send:
                        // it was not streamed live, so it is not replayed (`COALESCE` would
                        // give the event as archived). `last_error` is NULL on most rows: compared
                        // as '' so that `NOT (…)` is true for them, not NULL.
                        "SELECT x.event_id, COALESCE(x.body, e.body) FROM (
                             SELECT event_id, MIN(body) AS body FROM deliveries
                              WHERE agent_id = ?1 AND event_id > ?2
                                AND NOT (attempts = 0 AND body IS NULL
                                         AND COALESCE(last_error, '') LIKE 'transformation failed:%')
                              GROUP BY event_id
                             UNION ALL
                             SELECT event_id, body FROM streamed
                              WHERE agent_id = ?1 AND event_id > ?2
                         ) x JOIN events e ON e.id = x.event_id
                         WHERE e.erased_at IS NULL
                         ORDER BY x.event_id LIMIT ?3",
                    )?
                    .query_map(params![agent, after, limit as i64], row)?
                    .collect(),
            }
        })
        .await
    }

    async fn erase_events(&self, ids: Vec<Uuid>, erased_at: i64) -> Result<Vec<Uuid>> {
        let erased = self
            .write(move |c| {
                let mut find = c.prepare_cached(
                    "SELECT source, type, timestamp FROM events WHERE id = ?1 AND erased_at IS NULL",
                )?;
                let mut event = c
                    .prepare_cached("UPDATE events SET body = ?2, erased_at = ?3 WHERE id = ?1")?;
                let mut cancel = c.prepare_cached(
                    "UPDATE deliveries SET status = 'cancelled', next_attempt_at = NULL,
                            last_error = 'cancelled: the event was erased', updated_at = ?2
                     WHERE event_id = ?1 AND (status BETWEEN 'in_flight' AND 'scheduled' OR status = 'dead')",
                )?;
                let mut bodies = c.prepare_cached(
                    "UPDATE deliveries SET body = NULL, first_response_body = NULL
                     WHERE event_id = ?1",
                )?;
                let mut answers = c.prepare_cached(
                    "UPDATE attempts SET response_body = NULL
                     WHERE delivery_id IN (SELECT id FROM deliveries WHERE event_id = ?1)",
                )?;
                let mut streamed = c.prepare_cached("DELETE FROM streamed WHERE event_id = ?1")?;
                let mut out = Vec::with_capacity(ids.len());
                for id in ids {
                    let key = id.as_bytes().as_slice();
                    let Some((source, event_type, timestamp)) = find
                        .query_row([key], |r| {
                            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get(2)?))
                        })
                        .optional()?
                    else {
                        continue;
                    };
                    let stone = tombstone(id, &source, &event_type, timestamp, erased_at);
                    event.execute(params![key, stone, erased_at])?;
                    cancel.execute(params![key, erased_at])?;
                    bodies.execute([key])?;
                    answers.execute([key])?;
                    streamed.execute([key])?;
                    out.push(id);
                }
                Ok(out)
            })
            .await?;
        if !erased.is_empty() {
            self.truncate_wal().await;
        }
        Ok(erased)
    }
}
