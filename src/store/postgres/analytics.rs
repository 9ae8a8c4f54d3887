//! `AnalyticsStore` on PostgreSQL: per-minute rollup counters.

use std::collections::BTreeMap;

use async_trait::async_trait;
use uuid::Uuid;

use super::PgStore;
use crate::store::{AnalyticsStore, Result, RollupDelta, id_floor};

#[async_trait]
impl AnalyticsStore for PgStore {
    async fn add_rollups(&self, deltas: Vec<RollupDelta>) -> Result<()> {
        // One row per key (an upsert may not touch a row twice), in key order so that nodes
        // adding to the same minute lock its rows in the same order.
        let mut sums: BTreeMap<(i64, String, String), i64> = BTreeMap::new();
        for d in deltas {
            *sums.entry((d.minute, d.dim, d.metric)).or_default() += d.value;
        }
        if sums.is_empty() {
            return Ok(());
        }
        let mut minute = Vec::with_capacity(sums.len());
        let mut dim = Vec::with_capacity(sums.len());
        let mut metric = Vec::with_capacity(sums.len());
        let mut value = Vec::with_capacity(sums.len());
        for ((m, d, k), v) in sums {
            minute.push(m);
            dim.push(d);
            metric.push(k);
            value.push(v);
        }
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(
                "INSERT INTO rollups (minute, dim, metric, value)
                 SELECT * FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::int8[])
                 ON CONFLICT (minute, dim, metric) DO UPDATE
                     SET value = rollups.value + excluded.value",
            )
            .await?;
        c.execute(&stmt, &[&minute, &dim, &metric, &value]).await?;
        Ok(())
    }

    async fn rollup_totals(&self, since: i64) -> Result<Vec<(String, String, i64)>> {
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(
                "SELECT dim, metric, SUM(value)::int8 FROM rollups WHERE minute >= $1
                 GROUP BY dim, metric ORDER BY dim, metric",
            )
            .await?;
        Ok(c.query(&stmt, &[&since])
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    async fn rollup_timeline(
        &self,
        since: i64,
        bucket_ms: i64,
        metrics: Vec<String>,
    ) -> Result<Vec<(i64, String, i64)>> {
        // One pass over the window for every metric asked, in bucket order.
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(
                "SELECT $2 + ((minute - $2) / $3) * $3 AS b, metric, SUM(value)::int8
                 FROM rollups
                 WHERE minute >= $2 AND dim = '' AND metric = ANY($1)
                 GROUP BY b, metric ORDER BY b, metric",
            )
            .await?;
        let bucket = bucket_ms.max(60_000);
        Ok(c.query(&stmt, &[&metrics, &since, &bucket])
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    async fn unsettled_events(&self, since: i64) -> Result<(u64, u64)> {
        let c = self.client().await?;
        let floor = Uuid::from_bytes(id_floor(since));
        let row = c
            .query_one(
                "SELECT COUNT(DISTINCT event_id),
                        COUNT(DISTINCT event_id) FILTER (WHERE status = 'dead')
                 FROM deliveries
                 WHERE event_id >= $1 AND status IN ('pending', 'in_flight', 'scheduled', 'dead')",
                &[&floor],
            )
            .await?;
        Ok((
            row.get::<_, i64>(0).max(0) as u64,
            row.get::<_, i64>(1).max(0) as u64,
        ))
    }
}
