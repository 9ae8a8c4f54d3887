//! Analytics and metrics, in one place: every counter, histogram and log event the router
//! emits is a typed function here (not strings scattered through the code). Each one feeds
//! both the Prometheus exporter (`/metrics`) and the per-minute rollups kept in the store
//! (`/analytics/metrics`, which therefore survives restarts).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::clock::now_ms;

/// One increment of a per-minute rollup counter (kept by the store's `AnalyticsStore`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollupDelta {
    /// Start of the minute (ms).
    pub minute: i64,
    /// `""` (whole router), `s:<source>` or `a:<agent>`.
    pub dim: String,
    pub metric: String,
    pub value: i64,
}

/// Buckets (ms) of the processing-time and latency histograms, for both the Prometheus
/// histograms and the stored rollups (percentiles are read from them).
pub const BUCKETS_MS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 50.0, 75.0, 100.0, 150.0,
    250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0, 60000.0,
];

/// The rollup dimension of the whole router.
pub const ALL: &str = "";

pub fn source_dim(source: &str) -> String {
    format!("s:{source}")
}

pub fn agent_dim(agent: &str) -> String {
    format!("a:{agent}")
}

/// Names of the stored rollup metrics.
pub mod recent;

pub mod m {
    pub const EVENTS: &str = "events";
    pub const FILTERED: &str = "filtered";
    pub const DUPLICATES: &str = "duplicates";
    pub const REJECTED: &str = "rejected";
    pub const PROCESSING_SUM_US: &str = "pt_sum_us";
    pub const PROCESSING_COUNT: &str = "pt_count";
    /// Followed by the bucket index: `pt_b:7`.
    pub const PROCESSING_BUCKET: &str = "pt_b:";
    pub const ATTEMPTS: &str = "attempts";
    pub const ATTEMPTS_FAILED: &str = "attempts_failed";
    pub const RETRIES: &str = "retries";
    pub const DELIVERED: &str = "delivered";
    pub const DEAD: &str = "dead";
    /// Pull agents' deliveries leased to a consumer, and those acknowledged.
    pub const LEASED: &str = "leased";
    pub const ACKED: &str = "acked";
    pub const LATENCY_SUM_MS: &str = "latency_sum_ms";
    pub const LATENCY_COUNT: &str = "latency_count";
    /// Attempt durations (request sent → answer read, or the failure), in µs, summed…
    pub const RESPONSE_SUM_US: &str = "rt_sum_us";
    /// …and by histogram bucket, followed by the bucket index: `rt_b:7` (the count is
    /// `ATTEMPTS`).
    pub const RESPONSE_BUCKET: &str = "rt_b:";
    /// Unfinished deliveries, summed over the once-a-second samples of a minute…
    pub const QUEUE_DEPTH_SUM: &str = "queue_depth_sum";
    /// …and how many samples were taken: their ratio is the minute's average queue depth.
    pub const QUEUE_DEPTH_SAMPLES: &str = "queue_depth_samples";
}

/// Index of the first bucket whose bound is >= `ms` (the last bucket catches the rest).
pub fn bucket_of(ms: f64) -> usize {
    BUCKETS_MS
        .iter()
        .position(|b| ms <= *b)
        .unwrap_or(BUCKETS_MS.len() - 1)
}

/// Rollup deltas by dimension, metric and minute. Nested rather than keyed by a tuple so that
/// adding to a counter that already exists (nearly always) looks it up by `&str` and
/// allocates nothing: it runs several times for every webhook and every delivery attempt.
type Pending = HashMap<String, HashMap<String, HashMap<i64, i64>>>;

/// The entry for `key`, created empty if missing (the key is copied only then).
fn slot<'a, V: Default>(map: &'a mut HashMap<String, V>, key: &str) -> &'a mut V {
    slot_with(map, key, |_| V::default())
}

/// Like `slot`, for values that need the key to be made.
fn slot_with<'a, V>(map: &'a mut HashMap<String, V>, key: &str, make: fn(&str) -> V) -> &'a mut V {
    if !map.contains_key(key) {
        map.insert(key.to_string(), make(key));
    }
    map.get_mut(key).expect("present or just inserted")
}

/// A source's Prometheus handles for accepted webhooks, registered once instead of looked up
/// by labels (two label allocations and two registry lookups) for every webhook.
struct SourceMetrics {
    /// `webhooks_total{status="200"}` for the outcomes `filtered`, `routed`, `unrouted`.
    accepted: [metrics::Counter; 3],
    processing_seconds: metrics::Histogram,
}

impl SourceMetrics {
    fn new(source: &str) -> SourceMetrics {
        let accepted = |outcome: &'static str| metrics::counter!("webhooks_total", "source" => source.to_string(), "status" => "200", "outcome" => outcome);
        SourceMetrics {
            accepted: [
                accepted("filtered"),
                accepted("routed"),
                accepted("unrouted"),
            ],
            processing_seconds: metrics::histogram!("webhook_processing_seconds", "source" => source.to_string()),
        }
    }
}

/// The rollup metric of each processing-time bucket (`pt_b:<index>`), made once.
static PROCESSING_BUCKETS: std::sync::LazyLock<Box<[String]>> = std::sync::LazyLock::new(|| {
    (0..BUCKETS_MS.len())
        .map(|b| format!("{}{b}", m::PROCESSING_BUCKET))
        .collect()
});

static RESPONSE_BUCKETS: std::sync::LazyLock<Box<[String]>> = std::sync::LazyLock::new(|| {
    (0..BUCKETS_MS.len())
        .map(|b| format!("{}{b}", m::RESPONSE_BUCKET))
        .collect()
});

/// An agent's Prometheus handles, registered once instead of looked up by labels per attempt.
struct AgentMetrics {
    /// `deliveries_total` by outcome (`delivered`, `dead`, `retry_scheduled`).
    outcomes: Vec<(&'static str, metrics::Counter)>,
    attempt_seconds: metrics::Histogram,
}

impl AgentMetrics {
    fn new(agent: &str) -> AgentMetrics {
        AgentMetrics {
            outcomes: Vec::new(),
            attempt_seconds: metrics::histogram!("delivery_attempt_seconds", "agent" => agent.to_string()),
        }
    }

    fn outcome(&mut self, agent: &str, outcome: &'static str) -> &metrics::Counter {
        let i = match self.outcomes.iter().position(|(o, _)| *o == outcome) {
            Some(i) => i,
            None => {
                let c = metrics::counter!("deliveries_total", "agent" => agent.to_string(), "outcome" => outcome);
                self.outcomes.push((outcome, c));
                self.outcomes.len() - 1
            }
        };
        &self.outcomes[i].1
    }
}

/// Accumulates rollup deltas in memory; a background task writes them every second.
pub struct Analytics {
    pending: Mutex<Pending>,
    /// Prometheus handles by agent id.
    agents: Mutex<HashMap<String, AgentMetrics>>,
    /// Prometheus handles by source name.
    sources: Mutex<HashMap<String, SourceMetrics>>,
    /// Queue-depth samples of the current minute: (minute, sum, samples). Handed to `pending`
    /// when the minute is over, so an idle router writes once a minute, not every second.
    queue_depth: Mutex<(i64, i64, i64)>,
    prometheus: PrometheusHandle,
    /// What the operational alerts watch, per minute (see `Watch`).
    pub watch: Watch,
    /// The webhooks refused lately and the rate-limit keys seen (see `recent`).
    pub recent: recent::Recent,
}

/// The current minute's figures for the `ingest.*` operational events: processing times by
/// histogram bucket (one atomic add per webhook) and failed signatures by source.
#[derive(Default)]
pub struct Watch {
    processing: [std::sync::atomic::AtomicU64; 24],
    signature_failures: Mutex<HashMap<String, u64>>,
}

/// One minute of `Watch`.
pub struct WatchMinute {
    /// Webhooks stored in the minute.
    pub events: u64,
    /// The upper bound (ms) of the bucket holding their 95th percentile processing time.
    pub p95_ms: f64,
    /// Failed signatures (and stale timestamps) by source.
    pub signature_failures: HashMap<String, u64>,
}

impl Watch {
    fn processed(&self, bucket: usize) {
        if let Some(b) = self.processing.get(bucket) {
            b.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn signature_failed(&self, source: &str) {
        let mut m = self
            .signature_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *slot(&mut m, source) += 1;
    }

    /// Takes what the minute gathered and starts the next.
    pub fn take(&self) -> WatchMinute {
        let counts: Vec<u64> = self
            .processing
            .iter()
            .map(|b| b.swap(0, std::sync::atomic::Ordering::Relaxed))
            .collect();
        let events: u64 = counts.iter().sum();
        let mut p95_ms = 0.0;
        if events > 0 {
            let rank = (events as f64 * 0.95).ceil() as u64;
            let mut seen = 0;
            for (i, n) in counts.iter().enumerate() {
                seen += n;
                if seen >= rank {
                    p95_ms = BUCKETS_MS[i.min(BUCKETS_MS.len() - 1)];
                    break;
                }
            }
        }
        let signature_failures = std::mem::take(
            &mut *self
                .signature_failures
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        WatchMinute {
            events,
            p95_ms,
            signature_failures,
        }
    }
}

fn minute(ms: i64) -> i64 {
    ms.div_euclid(60_000) * 60_000
}

impl Analytics {
    pub fn new() -> Arc<Analytics> {
        Arc::new(Analytics {
            pending: Mutex::new(HashMap::new()),
            agents: Mutex::new(HashMap::new()),
            sources: Mutex::new(HashMap::new()),
            queue_depth: Mutex::new((0, 0, 0)),
            prometheus: install_prometheus(),
            watch: Watch::default(),
            recent: recent::Recent::default(),
        })
    }

    fn add(&self, dims: &[&str], metric: &str, value: i64) {
        self.add_all(dims, &[(metric, value)]);
    }

    /// Adds each `(metric, value)` to each dimension of the current minute, under one lock.
    fn add_all(&self, dims: &[&str], values: &[(&str, i64)]) {
        self.add_at(minute(now_ms()), dims, values);
    }

    fn add_at(&self, at: i64, dims: &[&str], values: &[(&str, i64)]) {
        let Ok(mut p) = self.pending.lock() else {
            return;
        };
        for d in dims {
            let by_metric = slot(&mut p, d);
            for (metric, value) in values {
                *slot(by_metric, metric).entry(at).or_insert(0) += value;
            }
        }
    }

    /// Takes what accumulated since the last flush.
    pub fn drain(&self) -> Vec<RollupDelta> {
        let taken = match self.pending.lock() {
            Ok(mut p) => std::mem::take(&mut *p),
            Err(_) => return Vec::new(),
        };
        let mut out = Vec::new();
        for (dim, by_metric) in taken {
            for (metric, by_minute) in by_metric {
                for (minute, value) in by_minute {
                    out.push(RollupDelta {
                        minute,
                        dim: dim.clone(),
                        metric: metric.clone(),
                        value,
                    });
                }
            }
        }
        out
    }

    /// Puts back deltas that could not be written (the store could not write), to go with
    /// the next flush.
    pub fn restore(&self, deltas: Vec<RollupDelta>) {
        let Ok(mut p) = self.pending.lock() else {
            return;
        };
        for d in deltas {
            *slot(slot(&mut p, &d.dim), &d.metric)
                .entry(d.minute)
                .or_insert(0) += d.value;
        }
    }

    pub fn render_prometheus(&self) -> String {
        self.prometheus.render()
    }

    // ---- the typed events ----

    /// A webhook was stored (answered 2xx): counts, and request-received → 2xx time.
    pub fn event_accepted(&self, source: &str, filtered: bool, routed: bool, took: Duration) {
        let s = source_dim(source);
        let dims = [ALL, s.as_str()];
        let us = took.as_micros() as i64;
        let bucket_index = bucket_of(us as f64 / 1000.0);
        self.watch.processed(bucket_index);
        let bucket = PROCESSING_BUCKETS[bucket_index].as_str();
        let values = [
            (m::EVENTS, 1),
            (m::PROCESSING_SUM_US, us),
            (m::PROCESSING_COUNT, 1),
            (bucket, 1),
            (m::FILTERED, 1),
        ];
        // Under one lock; `filtered` only counts filtered events.
        self.add_all(&dims, &values[..if filtered { 5 } else { 4 }]);
        let outcome = if filtered {
            0
        } else if routed {
            1
        } else {
            2
        };
        if let Ok(mut sources) = self.sources.lock() {
            let handles = slot_with(&mut sources, source, SourceMetrics::new);
            handles.accepted[outcome].increment(1);
            handles.processing_seconds.record(took.as_secs_f64());
        }
    }

    /// A webhook was answered as a duplicate of an earlier delivery.
    pub fn duplicate(&self, source: &str) {
        let s = source_dim(source);
        self.add(&[ALL, s.as_str()], m::DUPLICATES, 1);
        metrics::counter!("webhooks_total", "source" => source.to_string(), "status" => "200", "outcome" => "duplicate")
            .increment(1);
    }

    /// A webhook was refused with an error status (`source` only when it is a known one).
    pub fn rejected(&self, source: Option<&str>, status: u16, code: &'static str) {
        let label = source.unwrap_or("unknown").to_string();
        match source {
            Some(s) => {
                let d = source_dim(s);
                self.add(&[ALL, d.as_str()], m::REJECTED, 1);
            }
            None => self.add(&[ALL], m::REJECTED, 1),
        }
        metrics::counter!("webhooks_total", "source" => label.clone(), "status" => status.to_string(), "outcome" => code)
            .increment(1);
        if let (Some(s), "invalid_signature" | "stale_timestamp") = (source, code) {
            self.watch.signature_failed(s);
        }
        match code {
            "invalid_signature" | "stale_timestamp" => {
                metrics::counter!("webhook_verification_failures_total", "source" => label, "reason" => code)
                    .increment(1)
            }
            "rate_limited" => {
                metrics::counter!("webhook_rate_limited_total", "source" => label).increment(1)
            }
            _ => {}
        }
    }

    /// One delivery attempt finished. `latency` is event receipt → delivered, when delivered.
    pub fn attempt(
        &self,
        agent: &str,
        attempt: u32,
        outcome: &'static str,
        took: Duration,
        latency_ms: Option<i64>,
    ) {
        self.recent.agent_attempted(agent, outcome == "delivered");
        let a = agent_dim(agent);
        let dims = [ALL, a.as_str()];
        // At most eight metrics per attempt: collected first, added under one lock.
        let mut values: [(&str, i64); 8] = [("", 0); 8];
        let mut n = 0;
        let mut push = |metric: &'static str, value: i64| {
            values[n] = (metric, value);
            n += 1;
        };
        push(m::ATTEMPTS, 1);
        let us = took.as_micros() as i64;
        push(m::RESPONSE_SUM_US, us);
        push(RESPONSE_BUCKETS[bucket_of(us as f64 / 1000.0)].as_str(), 1);
        if attempt > 1 {
            push(m::RETRIES, 1);
        }
        match outcome {
            "delivered" => push(m::DELIVERED, 1),
            "dead" => {
                push(m::ATTEMPTS_FAILED, 1);
                push(m::DEAD, 1);
            }
            _ => push(m::ATTEMPTS_FAILED, 1),
        }
        if let Some(l) = latency_ms {
            push(m::LATENCY_SUM_MS, l.max(0));
            push(m::LATENCY_COUNT, 1);
        }
        self.add_all(&dims, &values[..n]);
        if let Ok(mut agents) = self.agents.lock() {
            let handles = slot_with(&mut agents, agent, AgentMetrics::new);
            handles.outcome(agent, outcome).increment(1);
            handles.attempt_seconds.record(took.as_secs_f64());
        }
    }

    /// A pull agent's consumer leased `n` deliveries.
    pub fn leased(&self, agent: &str, n: usize) {
        let a = agent_dim(agent);
        self.add(&[ALL, a.as_str()], m::LEASED, n as i64);
        metrics::counter!("deliveries_leased_total", "agent" => agent.to_string())
            .increment(n as u64);
    }

    /// A pull agent's consumer acknowledged a delivery (also counted as a delivered attempt).
    pub fn acked(&self, agent: &str) {
        let a = agent_dim(agent);
        self.add(&[ALL, a.as_str()], m::ACKED, 1);
    }

    /// A delivery was dead-lettered without an attempt (its agent is gone).
    pub fn dead_without_attempt(&self, agent: &str) {
        let a = agent_dim(agent);
        self.add(&[ALL, a.as_str()], m::DEAD, 1);
        metrics::counter!("deliveries_total", "agent" => agent.to_string(), "outcome" => "dead")
            .increment(1);
    }

    /// One sample of the queue depth (unfinished deliveries), taken once a second.
    pub fn queue_sampled(&self, depth: u64) {
        self.queue_sampled_at(now_ms(), depth);
    }

    fn queue_sampled_at(&self, at_ms: i64, depth: u64) {
        let now = minute(at_ms);
        let finished = {
            let Ok(mut q) = self.queue_depth.lock() else {
                return;
            };
            let finished = (q.0 != now && q.2 > 0).then_some(*q);
            if q.0 != now {
                *q = (now, 0, 0);
            }
            q.1 += depth as i64;
            q.2 += 1;
            finished
        };
        if let Some((at, sum, samples)) = finished {
            self.add_at(
                at,
                &[ALL],
                &[(m::QUEUE_DEPTH_SUM, sum), (m::QUEUE_DEPTH_SAMPLES, samples)],
            );
        }
    }

    /// Queued deliveries whose body was read back from the store (the queue held more than
    /// `delivery_memory_mb` of bodies when they were queued).
    pub fn bodies_read(n: usize) {
        metrics::counter!("delivery_bodies_read_total").increment(n as u64);
    }

    /// A node asked the shared store for rate-limit quota (several nodes): `Some(true)` units
    /// were granted, `Some(false)` the key had none left, `None` the store could not answer.
    pub fn rate_lease(granted: Option<bool>, took: Duration) {
        let outcome = match granted {
            Some(true) => "granted",
            Some(false) => "exhausted",
            None => "failed",
        };
        metrics::counter!("rate_limit_leases_total", "outcome" => outcome).increment(1);
        metrics::histogram!("rate_limit_lease_seconds").record(took.as_secs_f64());
    }

    /// The nodes of the cluster whose lease is live, this one included, as of its last
    /// heartbeat (several nodes).
    pub fn cluster_nodes(live: usize) {
        metrics::gauge!("cluster_nodes_live").set(live as f64);
    }

    /// Unfinished deliveries this node claimed from nodes whose lease lapsed.
    pub fn taken_over(deliveries: usize) {
        metrics::counter!("cluster_deliveries_taken_over_total").increment(deliveries as u64);
    }

    /// A group commit finished.
    pub fn commit(batch: usize, took: Duration) {
        metrics::histogram!("store_commit_seconds").record(took.as_secs_f64());
        metrics::histogram!("store_commit_batch_size").record(batch as f64);
    }

    /// Whether the store's last write succeeded (`storage_writable` 1) or failed for the
    /// storage's sake, disk full or database unreachable (0).
    pub fn storage_writable(writable: bool) {
        metrics::gauge!("storage_writable").set(if writable { 1.0 } else { 0.0 });
    }

    /// The gauge of open client connections (`connections_open`), moved as they open and close.
    pub fn connections_open() -> metrics::Gauge {
        metrics::gauge!("connections_open")
    }

    /// A connection refused at once for being past a cap: `cap` = `total`
    /// (`max_connections`) or `per_address` (`max_connections_per_ip`).
    pub fn connection_refused(cap: &'static str) {
        metrics::counter!("connections_refused_total", "cap" => cap).increment(1);
    }

    /// A client ran past a deadline: `deadline` = `header` (the connection was closed),
    /// `body` (the request was answered `408`) or `idle` (a keep-alive connection was closed).
    pub fn connection_deadline(deadline: &'static str) {
        metrics::counter!("connection_deadlines_total", "deadline" => deadline).increment(1);
    }

    /// Values sampled when /metrics is scraped (the stream counters live in the hub).
    pub fn sampled(queue_unfinished: u64, streams_open: u64, stream_messages: u64, overflows: u64) {
        metrics::gauge!("queue_unfinished_deliveries").set(queue_unfinished as f64);
        metrics::gauge!("streams_open").set(streams_open as f64);
        metrics::counter!("stream_messages_sent_total").absolute(stream_messages);
        metrics::counter!("stream_overflows_total").absolute(overflows);
    }
}

/// The exporter's recorder is global; it is installed once per process (tests start many
/// servers in one process and share it).
fn install_prometheus() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let seconds: Vec<f64> = BUCKETS_MS.iter().map(|b| b / 1000.0).collect();
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &seconds)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("store_commit_batch_size".into()),
                        &[
                            1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
                        ],
                    )
                })
                .map(|b| b.build_recorder());
            match recorder {
                Ok(r) => {
                    let handle = r.handle();
                    // Another recorder may already be installed (an embedding application):
                    // then this handle renders only what it saw, which is nothing.
                    let _ = metrics::set_global_recorder(r);
                    handle
                }
                Err(e) => {
                    tracing::error!(error = %e, "prometheus exporter set-up failed");
                    PrometheusBuilder::new().build_recorder().handle()
                }
            }
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_depth_is_written_once_a_minute() {
        let a = Analytics::new();
        let t = 1_764_170_000_000 / 60_000 * 60_000;
        a.queue_sampled_at(t, 4);
        a.queue_sampled_at(t + 1_000, 6);
        assert!(a.drain().is_empty(), "nothing until the minute is over");
        a.queue_sampled_at(t + 60_000, 1);
        let mut got: Vec<(i64, String, i64)> = a
            .drain()
            .into_iter()
            .map(|d| (d.minute, d.metric, d.value))
            .collect();
        got.sort();
        assert_eq!(
            got,
            [
                (t, m::QUEUE_DEPTH_SAMPLES.to_string(), 2),
                (t, m::QUEUE_DEPTH_SUM.to_string(), 10),
            ]
        );
    }

    #[test]
    fn buckets() {
        assert_eq!(bucket_of(0.0), 0);
        assert_eq!(bucket_of(0.1), 0);
        assert_eq!(bucket_of(0.11), 1);
        assert_eq!(bucket_of(20.0), 10);
        assert_eq!(bucket_of(1e9), BUCKETS_MS.len() - 1);
    }
}
