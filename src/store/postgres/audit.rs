//! `AuditStore` on PostgreSQL: the admin audit log, and the retention purge.

use async_trait::async_trait;
use uuid::Uuid;

use super::{PgStore, UNFINISHED, corrupt, limit_of};
use crate::store::{AuditRecord, AuditStore, PurgeScope, Result, id_floor};

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

    async fn purge_events(&self, scope: PurgeScope, batch: usize) -> Result<usize> {
        let floor = Uuid::from_bytes(id_floor(scope.cutoff));
        let dlq_floor = Uuid::from_bytes(id_floor(scope.dlq_cutoff));
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        // Events still being delivered stay until their deliveries finish, and events with a
        // dead letter younger than the DLQ's retention stay with it. SKIP LOCKED: nodes purging
        // at the same time take different events.
        let keep = format!(
            "NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = events.id
                AND (d.status IN {UNFINISHED} OR (d.status = 'dead' AND d.event_id >= $2)))"
        );
        let rows = match &scope.source {
            Some(source) => {
                tx.query(
                    &format!(
                        "SELECT id FROM events WHERE source = $4 AND id < $1 AND {keep}
                         ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED"
                    ),
                    &[&floor, &dlq_floor, &limit_of(batch), source],
                )
                .await?
            }
            None => {
                tx.query(
                    &format!(
                        "SELECT id FROM events WHERE id < $1 AND {keep}
                            AND NOT (source = ANY($4))
                         ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED"
                    ),
                    &[&floor, &dlq_floor, &limit_of(batch), &scope.except],
                )
                .await?
            }
        };
        let ids: Vec<Uuid> = rows.iter().map(|r| r.get(0)).collect();
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
        if ids.len() < batch && scope.source.is_none() {
            let cutoff = scope.cutoff;
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

    async fn purge_dead(&self, cutoff: i64, batch: usize) -> Result<usize> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let ids: Vec<Uuid> = tx
            .query(
                "SELECT id FROM deliveries WHERE status = 'dead' AND event_id < $1
                 ORDER BY event_id LIMIT $2 FOR UPDATE SKIP LOCKED",
                &[&Uuid::from_bytes(id_floor(cutoff)), &limit_of(batch)],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if !ids.is_empty() {
            tx.execute("DELETE FROM attempts WHERE delivery_id = ANY($1)", &[&ids])
                .await?;
            tx.execute("DELETE FROM deliveries WHERE id = ANY($1)", &[&ids])
                .await?;
        }
        tx.commit().await?;
        Ok(ids.len())
    }
}
