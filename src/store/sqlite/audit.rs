//! `AuditStore` on SQLite: the admin audit log, and the retention purge.

use async_trait::async_trait;
use rusqlite::params;

use super::SqliteStore;
use crate::store::{AuditRecord, AuditStore, Result, id_floor};

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

    async fn purge_before(&self, cutoff: i64, batch: usize) -> Result<usize> {
        self.write(move |c| {
            let floor = id_floor(cutoff).to_vec();
            let ids: Vec<Vec<u8>> = c
                // Events still being delivered stay until their deliveries finish.
                .prepare_cached(
                    "SELECT id FROM events WHERE id < ?1 AND NOT EXISTS (
                         SELECT 1 FROM deliveries d WHERE d.event_id = events.id
                            AND d.status IN ('pending', 'in_flight', 'scheduled'))
                     ORDER BY id LIMIT ?2",
                )?
                .query_map(params![floor, batch as i64], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
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
            if ids.len() < batch {
                c.prepare_cached("DELETE FROM rollups WHERE minute < ?1")?.execute([cutoff])?;
                c.prepare_cached("DELETE FROM audit WHERE at < ?1")?.execute([cutoff])?;
            }
            Ok(ids.len())
        })
        .await
    }
}
