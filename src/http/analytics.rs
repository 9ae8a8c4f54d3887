//! `GET /analytics/metrics?hours=N` (from the stored rollups) and `GET /metrics` (Prometheus).

use std::collections::{BTreeMap, HashMap};

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::analytics::{ALL, Analytics, BUCKETS_MS, m};
use crate::clock::now_ms;
use crate::http::AppState;
use crate::http::error::{ApiError, ApiResult};
use crate::http::query::{parse_int, query_pairs};

/// Sums of one dimension's metrics.
#[derive(Default)]
struct Sums(HashMap<String, i64>);

impl Sums {
    fn get(&self, metric: &str) -> i64 {
        self.0.get(metric).copied().unwrap_or(0)
    }

    fn avg(&self, sum: &str, count: &str, scale: f64) -> f64 {
        let n = self.get(count);
        if n == 0 {
            0.0
        } else {
            round2(self.get(sum) as f64 / n as f64 / scale)
        }
    }

    /// The upper bound (ms) of the bucket holding the q-quantile of processing times.
    fn processing_quantile(&self, q: f64) -> f64 {
        let counts: Vec<i64> = (0..BUCKETS_MS.len())
            .map(|i| self.get(&format!("{}{i}", m::PROCESSING_BUCKET)))
            .collect();
        quantile(&counts, q)
    }

    /// The upper bound (ms) of the bucket holding the q-quantile of attempt durations.
    fn response_quantile(&self, q: f64) -> f64 {
        let counts: Vec<i64> = (0..BUCKETS_MS.len())
            .map(|i| self.get(&format!("{}{i}", m::RESPONSE_BUCKET)))
            .collect();
        quantile(&counts, q)
    }

    fn delivery_figures(&self) -> Value {
        let attempted = self.get(m::ATTEMPTS);
        let success_rate = if attempted == 0 {
            Value::Null
        } else {
            json!(round4(self.get(m::DELIVERED) as f64 / attempted as f64))
        };
        json!({
            "successRate": success_rate,
            "averageResponseTime": self.avg(m::RESPONSE_SUM_US, m::ATTEMPTS, 1000.0),
            "p95ResponseTime": self.response_quantile(0.95),
            "attempted": self.get(m::ATTEMPTS),
            "succeeded": self.get(m::DELIVERED),
            "failed": self.get(m::ATTEMPTS_FAILED),
            "retried": self.get(m::RETRIES),
            "deadLettered": self.get(m::DEAD),
            "averageLatency": self.avg(m::LATENCY_SUM_MS, m::LATENCY_COUNT, 1.0),
            "leased": self.get(m::LEASED),
            "acked": self.get(m::ACKED),
        })
    }

    fn event_figures(&self) -> Value {
        let total = self.get(m::EVENTS);
        let filtered = self.get(m::FILTERED);
        json!({
            "totalEvents": total,
            "processedEvents": total - filtered,
            "filteredEvents": filtered,
            "duplicateEvents": self.get(m::DUPLICATES),
            "rejectedRequests": self.get(m::REJECTED),
            "averageProcessingTime": self.avg(m::PROCESSING_SUM_US, m::PROCESSING_COUNT, 1000.0),
            "p95ProcessingTime": self.processing_quantile(0.95),
            "p99ProcessingTime": self.processing_quantile(0.99),
        })
    }
}

fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

/// The upper bound (ms) of the histogram bucket holding the q-quantile; 0 with no samples.
fn quantile(counts: &[i64], q: f64) -> f64 {
    let total: i64 = counts.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let rank = (q * total as f64).ceil().max(1.0) as i64;
    let mut seen = 0;
    for (i, c) in counts.iter().enumerate() {
        seen += c;
        if seen >= rank {
            return BUCKETS_MS[i.min(BUCKETS_MS.len() - 1)];
        }
    }
    BUCKETS_MS[BUCKETS_MS.len() - 1]
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Timeline bucket width for a window of `hours`.
fn bucket_ms(hours: i64) -> i64 {
    let minutes = match hours {
        ..=1 => 1,
        2..=6 => 5,
        7..=24 => 15,
        25..=168 => 60,
        _ => 360,
    };
    minutes * 60_000
}

pub async fn analytics(
    State(app): State<AppState>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    let mut hours = 24;
    for (k, v) in query_pairs(&raw) {
        match k.as_str() {
            "hours" => {
                hours = parse_int("hours", &v)?;
                if !(1..=720).contains(&hours) {
                    return Err(ApiError::bad_request("hours must be from 1 to 720"));
                }
            }
            _ => {
                return Err(ApiError::bad_request(
                    "unknown query parameter (known: hours)",
                ));
            }
        }
    }
    // Make the figures include everything up to now, not only what the last flush wrote.
    crate::store::flush_analytics(app.store.as_ref(), &app.analytics).await;
    let now = now_ms();
    let bucket = bucket_ms(hours);
    // Whole buckets, aligned, covering the last `hours`.
    let since = (now - hours * 3_600_000).div_euclid(60_000) * 60_000;
    let rows = app.store.rollup_totals(since).await?;
    let mut dims: BTreeMap<String, Sums> = BTreeMap::new();
    for (dim, metric, value) in rows {
        dims.entry(dim).or_default().0.insert(metric, value);
    }
    let all = dims.remove(ALL).unwrap_or_default();
    let (unsettled, with_dead) = app.store.unsettled_events(since).await?;
    let processed = all.get(m::EVENTS) - all.get(m::FILTERED);
    let mut metrics = all.event_figures();
    metrics["successfulEvents"] = json!((processed - unsettled as i64).max(0));
    metrics["failedEvents"] = json!(with_dead);
    metrics["deliveries"] = all.delivery_figures();
    let mut by_source = serde_json::Map::new();
    let mut by_agent = serde_json::Map::new();
    for (dim, sums) in &dims {
        if let Some(s) = dim.strip_prefix("s:") {
            by_source.insert(s.to_string(), sums.event_figures());
        } else if let Some(a) = dim.strip_prefix("a:") {
            by_agent.insert(a.to_string(), sums.delivery_figures());
        }
    }
    // Per bucket: events, successful and failed attempts, the processing-time histogram (for
    // the bucket's p95) and the queue-depth samples (for its average depth).
    const EVENTS: usize = 0;
    const DELIVERED: usize = 1;
    const FAILED: usize = 2;
    const DEPTH_SUM: usize = 3;
    const DEPTH_SAMPLES: usize = 4;
    const HISTOGRAM: usize = 5;
    let mut names: Vec<String> = vec![
        m::EVENTS.into(),
        m::DELIVERED.into(),
        m::ATTEMPTS_FAILED.into(),
        m::QUEUE_DEPTH_SUM.into(),
        m::QUEUE_DEPTH_SAMPLES.into(),
    ];
    names.extend((0..BUCKETS_MS.len()).map(|i| format!("{}{i}", m::PROCESSING_BUCKET)));
    let slots = names.len();
    let series = app
        .store
        .rollup_timeline(since, bucket, names.clone())
        .await?;
    let mut points: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    let mut start = since;
    while start <= now {
        points.insert(start, vec![0; slots]);
        start += bucket;
    }
    for (b, metric, v) in series {
        if let Some(slot) = names.iter().position(|n| *n == metric) {
            points.entry(b).or_insert_with(|| vec![0; slots])[slot] += v;
        }
    }
    let timeline: Vec<Value> = points
        .into_iter()
        .map(|(start, p)| {
            let depth = if p[DEPTH_SAMPLES] > 0 {
                round2(p[DEPTH_SUM] as f64 / p[DEPTH_SAMPLES] as f64)
            } else {
                0.0
            };
            json!({
                "start": start,
                "events": p[EVENTS],
                "delivered": p[DELIVERED],
                "failed": p[FAILED],
                "p95ProcessingTime": quantile(&p[HISTOGRAM..], 0.95),
                "queueDepth": depth,
            })
        })
        .collect();
    Ok(Json(json!({
        "hours": hours,
        "metrics": metrics,
        "bySource": by_source,
        "byAgent": by_agent,
        "timeline": timeline,
    })))
}

pub async fn prometheus(State(app): State<AppState>) -> Response {
    let stats = &app.hub.stats;
    let relaxed = std::sync::atomic::Ordering::Relaxed;
    Analytics::sampled(
        app.queue.unfinished(),
        stats.open.load(relaxed),
        stats.messages_sent.load(relaxed),
        stats.overflows.load(relaxed),
    );
    // Sampled here, from this server's store (the recorder is shared by the process).
    Analytics::storage_writable(app.store.write_fault().is_none());
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.analytics.render_prometheus(),
    )
        .into_response()
}

/// `GET /admin/agent-activity`: when each agent last had a delivery succeed and fail, on this
/// node since it started (`{"agentId": {"lastSuccessAt", "lastFailureAt"}}`).
pub async fn agent_activity(State(app): State<AppState>) -> Json<Value> {
    Json(json!({ "agents": app.analytics.recent.agents() }))
}

/// `GET /admin/rejections`: the webhooks refused lately on this node (signature failures, rate
/// limits, bodies too large, unknown sources…), newest first, at most 200.
pub async fn rejections(State(app): State<AppState>) -> Json<Value> {
    Json(json!({ "items": app.analytics.recent.refusals(), "nextCursor": null }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_bucket_bounds() {
        let mut counts = vec![0; BUCKETS_MS.len()];
        assert_eq!(quantile(&counts, 0.95), 0.0);
        counts[3] = 95;
        counts[10] = 5;
        assert_eq!(quantile(&counts, 0.95), BUCKETS_MS[3]);
        assert_eq!(quantile(&counts, 0.99), BUCKETS_MS[10]);
    }
}
