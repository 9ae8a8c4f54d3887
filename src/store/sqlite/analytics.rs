//! `AnalyticsStore` on SQLite: per-minute rollup counters.

use async_trait::async_trait;
use rusqlite::params;

use super::SqliteStore;
use crate::store::{AnalyticsStore, Result, RollupDelta, StoreError, id_floor};

#[async_trait]
impl AnalyticsStore for SqliteStore {
    async fn add_rollups(&self, deltas: Vec<RollupDelta>) -> Result<()> {
        self.write(move |c| {
            let mut stmt = c.prepare_cached(
                "INSERT INTO rollups (minute, dim, metric, value) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (minute, dim, metric) DO UPDATE SET value = value + excluded.value",
            )?;
            for d in &deltas {
                stmt.execute(params![d.minute, d.dim, d.metric, d.value])?;
            }
            Ok(())
        })
        .await
    }

    async fn rollup_totals(&self, since: i64) -> Result<Vec<(String, String, i64)>> {
        self.read(move |c| {
            c.prepare_cached(
                "SELECT dim, metric, SUM(value) FROM rollups WHERE minute >= ?1 GROUP BY dim, metric",
            )?
            .query_map([since], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect()
        })
        .await
    }

    async fn rollup_timeline(
        &self,
        since: i64,
        bucket_ms: i64,
        metrics: Vec<String>,
    ) -> Result<Vec<(i64, String, i64)>> {
        // One pass over the window for every metric asked (a query per metric would scan the
        // window's rows once each: the dashboard asks for about thirty).
        let wanted = serde_json::to_string(&metrics)
            .map_err(|e| StoreError::Database(format!("metric names: {e}")))?;
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT ?2 + ((minute - ?2) / ?3) * ?3 AS b, metric, SUM(value) FROM rollups
                 WHERE minute >= ?2 AND dim = ''
                   AND metric IN (SELECT value FROM json_each(?1))
                 GROUP BY b, metric ORDER BY b",
            )?;
            stmt.query_map(params![wanted, since, bucket_ms.max(60_000)], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        })
        .await
    }

    async fn unsettled_events(&self, since: i64) -> Result<(u64, u64)> {
        self.read(move |c| {
            let floor = id_floor(since).to_vec();
            c.query_row(
                "SELECT COUNT(DISTINCT event_id),
                        COUNT(DISTINCT CASE WHEN status = 'dead' THEN event_id END)
                 FROM deliveries
                 WHERE event_id >= ?1 AND status IN ('pending', 'in_flight', 'scheduled', 'dead')",
                [floor],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
            )
        })
        .await
    }
}
