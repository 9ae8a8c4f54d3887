//! `AuditStore` on SQLite: the admin audit log, and the retention purge.

use async_trait::async_trait;
use rusqlite::params;

use super::SqliteStore;
use crate::store::{AuditRecord, AuditStore, PurgeScope, Result, id_floor};

#[async_trait]
impl AuditStore for SqliteStore {
    async fn add_audit(&self, a: AuditRecord) -> Result<()> {
        self.write(move |c| {
            c.prepare_cached(
                "INSERT INTO audit (at, client_ip, method, path, status, action, target_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                a.at,
                a.client_ip,
                a.method,
                a.path,
                a.status,
                a.action,
                a.target_id
            ])?;
            Ok(())
        })
        .await
    }

    async fn list_audit(&self, limit: usize, before: Option<i64>) -> Result<Vec<AuditRecord>> {
        self.read(move |c| {
            c.prepare_cached(
                "SELECT id, at, client_ip, method, path, status, action, target_id FROM audit
                 WHERE id < ?1 ORDER BY id DESC LIMIT ?2",
            )?
            .query_map(params![before.unwrap_or(i64::MAX), limit as i64], |r| {
                Ok(AuditRecord {
                    id: r.get(0)?,
                    at: r.get(1)?,
                    client_ip: r.get(2)?,
                    method: r.get(3)?,
                    path: r.get(4)?,
                    status: r.get(5)?,
                    action: r.get(6)?,
                    target_id: r.get(7)?,
                })
            })?
            .collect()
        })
        .await
    }

    async fn purge_events(&self, scope: PurgeScope, batch: usize) -> Result<usize> {
        self.write(move |c| {
            let floor = id_floor(scope.cutoff).to_vec();
            let dlq_floor = id_floor(scope.dlq_cutoff).to_vec();
            // Events still being delivered stay until their deliveries finish, and events with
            // a dead letter younger than the DLQ's retention stay with it.
            let keep = "NOT EXISTS (
                SELECT 1 FROM deliveries d WHERE d.event_id = events.id
                   AND (d.status BETWEEN 'in_flight' AND 'scheduled' OR (d.status = 'dead' AND d.event_id >= ?2)))";
            let ids: Vec<Vec<u8>> = match &scope.source {
                Some(source) => c
                    .prepare_cached(&format!(
                        "SELECT id FROM events WHERE source = ?4 AND id < ?1 AND {keep}
                         ORDER BY id LIMIT ?3"
                    ))?
                    .query_map(
                        params![floor, dlq_floor, batch as i64, source],
                        |r| r.get(0),
                    )?
                    .collect::<rusqlite::Result<_>>()?,
                None => {
                    // The sources with their own retention, as a JSON array bound once.
                    let except = serde_json::to_string(&scope.except).unwrap_or_default();
                    c.prepare_cached(&format!(
                        "SELECT id FROM events WHERE id < ?1 AND {keep}
                            AND source NOT IN (SELECT value FROM json_each(?4))
                         ORDER BY id LIMIT ?3"
                    ))?
                    .query_map(
                        params![floor, dlq_floor, batch as i64, except],
                        |r| r.get(0),
                    )?
                    .collect::<rusqlite::Result<_>>()?
                }
            };
            let mut del_attempts = c.prepare_cached(
                "DELETE FROM attempts WHERE delivery_id IN (SELECT id FROM deliveries WHERE event_id = ?1)",
            )?;
            let mut del_deliveries = c.prepare_cached("DELETE FROM deliveries WHERE event_id = ?1")?;
            let mut del_streamed = c.prepare_cached("DELETE FROM streamed WHERE event_id = ?1")?;
            let mut del_event = c.prepare_cached("DELETE FROM events WHERE id = ?1")?;
            for id in &ids {
                del_attempts.execute([id])?;
                del_deliveries.execute([id])?;
                del_streamed.execute([id])?;
                del_event.execute([id])?;
            }
            if ids.len() < batch && scope.source.is_none() {
                c.prepare_cached("DELETE FROM rollups WHERE minute < ?1")?
                    .execute([scope.cutoff])?;
                c.prepare_cached("DELETE FROM audit WHERE at < ?1")?
                    .execute([scope.cutoff])?;
            }
            Ok(ids.len())
        })
        .await
    }

    async fn purge_dead(&self, cutoff: i64, batch: usize) -> Result<usize> {
        self.write(move |c| {
            let ids: Vec<Vec<u8>> = c
                .prepare_cached(
                    "SELECT id FROM deliveries INDEXED BY deliveries_dead_by_event
                     WHERE status = 'dead' AND event_id < ?1 ORDER BY event_id LIMIT ?2",
                )?
                .query_map(params![id_floor(cutoff).to_vec(), batch as i64], |r| {
                    r.get(0)
                })?
                .collect::<rusqlite::Result<_>>()?;
            let mut del_attempts =
                c.prepare_cached("DELETE FROM attempts WHERE delivery_id = ?1")?;
            let mut del = c.prepare_cached("DELETE FROM deliveries WHERE id = ?1")?;
            for id in &ids {
                del_attempts.execute([id])?;
                del.execute([id])?;
            }
            Ok(ids.len())
        })
        .await
    }
}
