//! `AuditStore` on PostgreSQL: the admin audit log, and the retention purge.

use async_trait::async_trait;
use uuid::Uuid;

use super::{PgStore, UNFINISHED, corrupt, limit_of};
use crate::store::{AuditRecord, AuditStore, Result, id_floor};

#[async_trait]
impl AuditStore for PgStore {
    async fn add_audit(&self, a: AuditRecord) -> Result<()> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(
                "INSERT INTO audit (at, client_ip, method, path, status, action, target_id)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .await?;
        c.execute(
            &stmt,
            &[
                &a.at,
                &a.client_ip,
                &a.method,
                &a.path,
                &i32::from(a.status),
                &a.action,
                &a.target_id,
            ],
        )
        .await?;
        Ok(())
    }

    async fn list_audit(&self, limit: usize, before: Option<i64>) -> Result<Vec<AuditRecord>> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(
                "SELECT id, at, client_ip, method, path, status, action, target_id FROM audit
                 WHERE id < $1 ORDER BY id DESC LIMIT $2",
            )
            .await?;
        c.query(&stmt, &[&before.unwrap_or(i64::MAX), &limit_of(limit)])
            .await?
            .iter()
            .map(|r| {
                let status: i32 = r.get(5);
                Ok(AuditRecord {
                    id: r.get(0),
                    at: r.get(1),
                    client_ip: r.get(2),
                    method: r.get(3),
                    path: r.get(4),
                    status: u16::try_from(status)
                        .map_err(|_| corrupt(&format!("audit status {status}")))?,
                    action: r.get(6),
                    target_id: r.get(7),
                })
            })
            .collect()
    }

    async fn purge_before(&self, cutoff: i64, batch: usize) -> Result<usize> {
        let floor = Uuid::from_bytes(id_floor(cutoff));
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        // Events still being delivered stay until their deliveries finish. SKIP LOCKED: nodes
        // purging at the same time take different events.
        let ids: Vec<Uuid> = tx
            .query(
                &format!(
                    "SELECT id FROM events WHERE id < $1 AND NOT EXISTS (
                         SELECT 1 FROM deliveries d WHERE d.event_id = events.id
                            AND d.status IN {UNFINISHED})
                     ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED"
                ),
                &[&floor, &limit_of(batch)],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if !ids.is_empty() {
            tx.execute(
                "DELETE FROM attempts WHERE delivery_id IN
                     (SELECT id FROM deliveries WHERE event_id = ANY($1))",
                &[&ids],
            )
            .await?;
            tx.execute("DELETE FROM deliveries WHERE event_id = ANY($1)", &[&ids])
                .await?;
            tx.execute("DELETE FROM streamed WHERE event_id = ANY($1)", &[&ids])
                .await?;
            tx.execute("DELETE FROM events WHERE id = ANY($1)", &[&ids])
                .await?;
        }
        if ids.len() < batch {
            tx.execute("DELETE FROM rollups WHERE minute < $1", &[&cutoff])
                .await?;
            tx.execute("DELETE FROM audit WHERE at < $1", &[&cutoff])
                .await?;
            // Rate-limit counters nobody touched within the retention period.
            tx.execute("DELETE FROM rate_hits WHERE updated_at < $1", &[&cutoff])
                .await?;
        }
        tx.commit().await?;
        Ok(ids.len())
    }
}
