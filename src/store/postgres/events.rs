//! `EventStore` on PostgreSQL: event commits (through the writer) and the archive's reads.

use async_trait::async_trait;
use tokio::sync::oneshot;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::deliveries::{DELIVERY_COLUMNS, delivery_row, fill_attempts};
use super::writer::CommitJob;
use super::{PgStore, UNFINISHED, limit_of};
use crate::store::{
    BacklogItem, CommitOutcome, DeliveryRecord, DeliveryTally, EventQuery, EventRecord,
    EventStatus, EventStore, NewEvent, Result, StoreError, id_floor, tombstone,
};

fn event_row(r: &Row) -> EventRecord {
    EventRecord {
        id: r.get(0),
        source: r.get(1),
        event_type: r.get(2),
        timestamp: r.get(3),
        filtered: r.get(4),
        body: r.get(5),
        erased_at: r.get(6),
    }
}

const EVENT_COLUMNS: &str = "id, source, type, timestamp, filtered, body, erased_at FROM events";

#[async_trait]
impl EventStore for PgStore {
    async fn commit_event(&self, event: NewEvent) -> Result<CommitOutcome> {
        let (reply, rx) = oneshot::channel();
        self.sender()?
            .send(CommitJob {
                event,
                reply,
                spend: None,
            })
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn get_event(&self, id: Uuid) -> Result<Option<EventRecord>> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(&format!("SELECT {EVENT_COLUMNS} WHERE id = $1"))
            .await?;
        Ok(c.query_opt(&stmt, &[&id]).await?.as_ref().map(event_row))
    }

    async fn list_events(&self, q: EventQuery) -> Result<Vec<EventRecord>> {
        // Ids are time-ordered, so time bounds and the cursor are all bounds on `id`.
        let mut sql = format!("SELECT {EVENT_COLUMNS} WHERE true");
        let mut args: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
        let mut bind = |sql: &mut String, clause: &str, v: Box<dyn ToSql + Sync + Send>| {
            args.push(v);
            sql.push_str(&clause.replace('?', &format!("${}", args.len())));
        };
        if let Some(s) = q.source {
            bind(&mut sql, " AND source = ?", Box::new(s));
        }
        if let Some(t) = q.event_type {
            bind(&mut sql, " AND type = ?", Box::new(t));
        }
        if let Some(since) = q.since {
            bind(
                &mut sql,
                " AND id >= ?",
                Box::new(Uuid::from_bytes(id_floor(since))),
            );
        }
        if let Some(until) = q.until {
            bind(
                &mut sql,
                " AND id < ?",
                Box::new(Uuid::from_bytes(id_floor(until))),
            );
        }
        if let Some(before) = q.before {
            bind(&mut sql, " AND id < ?", Box::new(before));
        }
        match q.status {
            Some(EventStatus::Filtered) => sql.push_str(" AND filtered"),
            Some(EventStatus::Processed) => sql.push_str(" AND NOT filtered"),
            None => {}
        }
        bind(
            &mut sql,
            " ORDER BY id DESC LIMIT ?",
            Box::new(limit_of(q.limit)),
        );
        let c = self.client().await?;
        let stmt = c.prepare_cached(&sql).await?;
        let refs: Vec<&(dyn ToSql + Sync)> = args
            .iter()
            .map(|a| a.as_ref() as &(dyn ToSql + Sync))
            .collect();
        Ok(c.query(&stmt, &refs).await?.iter().map(event_row).collect())
    }

    async fn event_deliveries(&self, id: Uuid) -> Result<Vec<DeliveryRecord>> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(&format!(
                "SELECT {DELIVERY_COLUMNS} WHERE event_id = $1 ORDER BY priority DESC, agent_id"
            ))
            .await?;
        let mut out = c
            .query(&stmt, &[&id])
            .await?
            .iter()
            .map(delivery_row)
            .collect::<Result<Vec<_>>>()?;
        fill_attempts(&c, &mut out).await?;
        Ok(out)
    }

    async fn delivery_tallies(&self, ids: Vec<Uuid>) -> Result<Vec<(Uuid, DeliveryTally)>> {
        let c = self.client().await?;
        let deliveries = c
            .prepare_cached(
                "SELECT event_id, status, attempts > 0, count(*) FROM deliveries
                 WHERE event_id = ANY($1) GROUP BY 1, 2, 3",
            )
            .await?;
        let streamed = c
            .prepare_cached(
                "SELECT event_id, count(*) FROM streamed WHERE event_id = ANY($1) GROUP BY 1",
            )
            .await?;
        let mut tallies: std::collections::BTreeMap<Uuid, DeliveryTally> = Default::default();
        for r in c.query(&deliveries, &[&ids]).await? {
            let n = u32::try_from(r.get::<_, i64>(3)).unwrap_or(u32::MAX);
            tallies
                .entry(r.get(0))
                .or_default()
                .add(r.get(1), r.get(2), n);
        }
        for r in c.query(&streamed, &[&ids]).await? {
            tallies.entry(r.get(0)).or_default().streamed =
                u32::try_from(r.get::<_, i64>(1)).unwrap_or(u32::MAX);
        }
        Ok(tallies.into_iter().collect())
    }

    async fn stream_backlog(
        &self,
        agent: Option<String>,
        after: Uuid,
        limit: usize,
    ) -> Result<Vec<BacklogItem>> {
        let c = self.client().await?;
        let rows = match agent {
            None => {
                let stmt = c
                    .prepare_cached(
                        "SELECT id, body FROM events
                          WHERE id > $1 AND NOT filtered AND erased_at IS NULL
                         ORDER BY id LIMIT $2",
                    )
                    .await?;
                c.query(&stmt, &[&after, &limit_of(limit)]).await?
            }
            Some(agent) => {
                // Several routes to one agent: one item, the same body SQLite's MIN picks
                // (byte order, a transformed body before none). A delivery whose route
                // transformation failed has no body to send and is not replayed, as in SQLite.
                let stmt = c
                    .prepare_cached(
                        "SELECT x.event_id, COALESCE(x.body, e.body) FROM (
                             SELECT event_id, MIN(body COLLATE \"C\") AS body FROM deliveries
                              WHERE agent_id = $1 AND event_id > $2
                                AND NOT (attempts = 0 AND body IS NULL
                                         AND COALESCE(last_error, '') LIKE 'transformation failed:%')
                              GROUP BY event_id
                             UNION ALL
                             SELECT event_id, body FROM streamed
                              WHERE agent_id = $1 AND event_id > $2
                         ) x JOIN events e ON e.id = x.event_id
                         WHERE e.erased_at IS NULL
                         ORDER BY x.event_id LIMIT $3",
                    )
                    .await?;
                c.query(&stmt, &[&agent, &after, &limit_of(limit)]).await?
            }
        };
        Ok(rows
            .iter()
            .map(|r| BacklogItem {
                event_id: r.get(0),
                body: r.get(1),
            })
            .collect())
    }

    async fn erase_events(&self, mut ids: Vec<Uuid>, erased_at: i64) -> Result<Vec<Uuid>> {
        ids.sort_unstable();
        ids.dedup();
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        // Locked in id order, so two erasures of overlapping sets cannot deadlock.
        let found = tx
            .query(
                "SELECT id, source, type, timestamp FROM events
                 WHERE id = ANY($1) AND erased_at IS NULL ORDER BY id FOR UPDATE",
                &[&ids],
            )
            .await?;
        if found.is_empty() {
            return Ok(Vec::new());
        }
        let mut erased = Vec::with_capacity(found.len());
        let mut stones = Vec::with_capacity(found.len());
        for r in &found {
            let id: Uuid = r.get(0);
            let (source, event_type): (String, String) = (r.get(1), r.get(2));
            stones.push(tombstone(id, &source, &event_type, r.get(3), erased_at));
            erased.push(id);
        }
        tx.execute(
            "UPDATE events e SET body = u.body, erased_at = $3
             FROM UNNEST($1::uuid[], $2::text[]) AS u(id, body) WHERE e.id = u.id",
            &[&erased, &stones, &erased_at],
        )
        .await?;
        tx.execute(
            &format!(
                "UPDATE deliveries SET status = 'cancelled', next_attempt_at = NULL,
                        last_error = 'cancelled: the event was erased', updated_at = $2
                 WHERE event_id = ANY($1) AND (status IN {UNFINISHED} OR status = 'dead')"
            ),
            &[&erased, &erased_at],
        )
        .await?;
        tx.execute(
            "UPDATE deliveries SET body = NULL, first_response_body = NULL
             WHERE event_id = ANY($1) AND (body IS NOT NULL OR first_response_body IS NOT NULL)",
            &[&erased],
        )
        .await?;
        tx.execute(
            "UPDATE attempts SET response_body = NULL
             WHERE delivery_id IN (SELECT id FROM deliveries WHERE event_id = ANY($1))
               AND response_body IS NOT NULL",
            &[&erased],
        )
        .await?;
        tx.execute("DELETE FROM streamed WHERE event_id = ANY($1)", &[&erased])
            .await?;
        for p in super::cluster::erased_payloads(self.node, &erased) {
            tx.execute("SELECT pg_notify($1, $2)", &[&super::cluster::CHANNEL, &p])
                .await?;
        }
        tx.commit().await?;
        Ok(erased)
    }
}
