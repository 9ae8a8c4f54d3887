//! `--deliver pull`: consumers of a pull agent (docs/consumers.md). Each long-polls
//! `GET /agents/{id}/deliveries?max=--pull-batch&waitMs=1000`, and acks the whole batch in one
//! `POST …/deliveries/ack`. An event is recorded in the receiver's arrivals once the router has
//! confirmed its ack, with the time its poll answer was read: so `endToEnd.delivered` counts
//! events acked (a second confirmed ack of one event is a duplicate), and its latency runs from
//! the webhook's send to the consumer having the delivery.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use http::StatusCode;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::load::{latency, new_histogram};
use super::receiver::Arrivals;
use super::report::Pull;

/// `waitMs` of each poll.
pub(super) const WAIT_MS: u64 = 1_000;

/// What the consumers did, shared by all of them.
pub(super) struct PullCounters {
    polls: AtomicU64,
    empty_polls: AtomicU64,
    poll_errors: AtomicU64,
    leased: AtomicU64,
    acked: AtomicU64,
    ack_expired: AtomicU64,
    ack_errors: AtomicU64,
    /// µs since the epoch of the last ack answer that confirmed something.
    last_ack_us: AtomicU64,
    ack_latency: Mutex<Histogram<u64>>,
}

#[derive(Deserialize)]
struct Polled {
    items: Vec<Item>,
    #[serde(rename = "nextPollMs", default)]
    next_poll_ms: Option<u64>,
}

/// The parts of a leased delivery the tool needs (`event` is read and not kept).
#[derive(Deserialize)]
struct Item {
    id: String,
    #[serde(rename = "eventId")]
    event_id: Uuid,
}

#[derive(Deserialize)]
struct Acked {
    acked: Vec<String>,
    #[serde(default)]
    expired: Vec<String>,
}

/// The consumer group: `consumers` tasks polling agent `agent_id` with `key` until `stop`,
/// consumer `n` on node `n % nodes.len()`.
pub(super) struct Consumers {
    pub(super) counters: Arc<PullCounters>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    stop: CancellationToken,
    consumers: u32,
    batch: u32,
}

impl Consumers {
    pub(super) fn start(
        consumers: u32,
        batch: u32,
        nodes: &[String],
        agent_id: &str,
        key: &str,
        arrivals: Arc<Arrivals>,
        stop: CancellationToken,
    ) -> anyhow::Result<Consumers> {
        let counters = Arc::new(PullCounters {
            polls: AtomicU64::new(0),
            empty_polls: AtomicU64::new(0),
            poll_errors: AtomicU64::new(0),
            leased: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            ack_expired: AtomicU64::new(0),
            ack_errors: AtomicU64::new(0),
            last_ack_us: AtomicU64::new(0),
            ack_latency: Mutex::new(new_histogram()),
        });
        // One pool: each consumer keeps its own keep-alive connection (a poll and its ack are
        // sequential), as separate processes would.
        let client = reqwest::Client::builder()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(consumers as usize)
            .build()?;
        anyhow::ensure!(!nodes.is_empty(), "no router to poll");
        let tasks = (0..consumers)
            .map(|n| {
                let base = nodes[n as usize % nodes.len()].trim_end_matches('/');
                let deliveries = format!("{base}/agents/{agent_id}/deliveries");
                tokio::spawn(consume(Consumer {
                    client: client.clone(),
                    poll_url: format!(
                        "{deliveries}?max={batch}&waitMs={WAIT_MS}&consumer=bench-{n}"
                    ),
                    ack_url: format!("{deliveries}/ack"),
                    key: key.to_string(),
                    arrivals: arrivals.clone(),
                    counters: counters.clone(),
                    stop: stop.clone(),
                }))
            })
            .collect();
        Ok(Consumers {
            counters,
            tasks,
            stop,
            consumers,
            batch,
        })
    }

    /// Stops the consumers (a poll under way is abandoned: its leases run out in the router)
    /// and sums up; `first_send_us`: when the load began.
    pub(super) async fn finish(self, first_send_us: u64) -> Pull {
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Acquire);
        let polls = get(&c.polls);
        let empty = get(&c.empty_polls);
        let leased = get(&c.leased);
        let acked = get(&c.acked);
        let span = get(&c.last_ack_us).saturating_sub(first_send_us) as f64 / 1e6;
        Pull {
            consumers: self.consumers,
            batch: self.batch,
            wait_ms: WAIT_MS,
            polls,
            empty_polls: empty,
            poll_errors: get(&c.poll_errors),
            leased,
            mean_batch: if polls > empty {
                leased as f64 / (polls - empty) as f64
            } else {
                0.0
            },
            acked,
            ack_expired: get(&c.ack_expired),
            ack_errors: get(&c.ack_errors),
            acked_per_second: if span > 0.0 { acked as f64 / span } else { 0.0 },
            ack_latency_ms: c
                .ack_latency
                .lock()
                .map(|h| latency(&h))
                .unwrap_or_default(),
        }
    }
}

struct Consumer {
    client: reqwest::Client,
    poll_url: String,
    ack_url: String,
    key: String,
    arrivals: Arc<Arrivals>,
    counters: Arc<PullCounters>,
    stop: CancellationToken,
}

/// One consumer: poll, ack the batch, again, until stopped.
async fn consume(c: Consumer) {
    let counters = &c.counters;
    let mut ack_latency = new_histogram();
    let mut since_flush = 0u32;
    loop {
        let polled = tokio::select! {
            _ = c.stop.cancelled() => break,
            p = poll(&c) => p,
        };
        counters.polls.fetch_add(1, Ordering::Relaxed);
        let (items, at, next_poll_ms) = match polled {
            Ok(p) => p,
            Err(e) => {
                counters.poll_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "bench: a poll failed");
                tokio::select! {
                    _ = c.stop.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
                }
            }
        };
        if items.is_empty() {
            counters.empty_polls.fetch_add(1, Ordering::Relaxed);
        } else {
            counters
                .leased
                .fetch_add(items.len() as u64, Ordering::Relaxed);
            let sent = Instant::now();
            match ack(&c, &items).await {
                Ok(answer) => {
                    ack_latency.saturating_record(sent.elapsed().as_micros().max(1) as u64);
                    let confirmed: HashSet<&str> =
                        answer.acked.iter().map(String::as_str).collect();
                    for item in &items {
                        if confirmed.contains(item.id.as_str()) {
                            c.arrivals.record(item.event_id.into_bytes(), at);
                        }
                    }
                    counters
                        .acked
                        .fetch_add(answer.acked.len() as u64, Ordering::Relaxed);
                    counters
                        .ack_expired
                        .fetch_add(answer.expired.len() as u64, Ordering::Relaxed);
                    if !answer.acked.is_empty() {
                        let now = c.arrivals.epoch.elapsed().as_micros() as u64;
                        counters.last_ack_us.fetch_max(now, Ordering::AcqRel);
                    }
                }
                Err(e) => {
                    counters.ack_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "bench: an ack failed");
                }
            }
            since_flush += 1;
            if since_flush >= 64 {
                flush(counters, &mut ack_latency);
                since_flush = 0;
            }
        }
        if let Some(ms) = next_poll_ms.filter(|&ms| ms > 0) {
            tokio::select! {
                _ = c.stop.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_millis(ms)) => {}
            }
        }
    }
    flush(counters, &mut ack_latency);
}

/// Adds a consumer's ack latencies to the shared histogram.
fn flush(counters: &PullCounters, mine: &mut Histogram<u64>) {
    if let Ok(mut all) = counters.ack_latency.lock() {
        let _ = all.add(&*mine);
    }
    mine.reset();
}

/// One poll: the items, when the answer was read (µs since the epoch), and `nextPollMs`.
async fn poll(c: &Consumer) -> anyhow::Result<(Vec<Item>, u64, Option<u64>)> {
    let resp = c
        .client
        .get(&c.poll_url)
        .bearer_auth(&c.key)
        .timeout(Duration::from_millis(WAIT_MS + 30_000))
        .send()
        .await?;
    let status = resp.status();
    let body = resp.bytes().await?;
    let at = c.arrivals.epoch.elapsed().as_micros() as u64;
    if status != StatusCode::OK {
        anyhow::bail!(
            "GET {} answered {status}: {}",
            c.poll_url,
            String::from_utf8_lossy(&body[..body.len().min(300)])
        );
    }
    let polled: Polled = serde_json::from_slice(&body)?;
    Ok((polled.items, at, polled.next_poll_ms))
}

async fn ack(c: &Consumer, items: &[Item]) -> anyhow::Result<Acked> {
    let ids: Vec<&str> = items.iter().map(|i| i.id.as_str()).collect();
    let resp = c
        .client
        .post(&c.ack_url)
        .bearer_auth(&c.key)
        .json(&serde_json::json!({ "ids": ids }))
        .timeout(Duration::from_secs(30))
        .send()
        .await?;
    let status = resp.status();
    let body = resp.bytes().await?;
    if status != StatusCode::OK {
        anyhow::bail!(
            "POST {} answered {status}: {}",
            c.ack_url,
            String::from_utf8_lossy(&body[..body.len().min(300)])
        );
    }
    Ok(serde_json::from_slice(&body)?)
}
