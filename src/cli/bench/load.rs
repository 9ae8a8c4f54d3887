//! The load: workers sending the plan's webhooks over one pool of keep-alive connections, each
//! keeping its own records, sharing only two counters and a few histogram shards.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{HeaderName, HeaderValue, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;
use uuid::Uuid;

use super::payload::PayloadPool;
use super::report::{Latency, Phase};

static X_GITHUB_EVENT: HeaderName = HeaderName::from_static("x-github-event");
static X_GITHUB_DELIVERY: HeaderName = HeaderName::from_static("x-github-delivery");
static X_HUB_SIGNATURE_256: HeaderName = HeaderName::from_static("x-hub-signature-256");

/// How much to send, and how.
pub(super) struct LoadPlan {
    pub(super) total: Option<u64>,
    pub(super) duration: Option<Duration>,
    pub(super) rate: Option<f64>,
    pub(super) concurrency: usize,
}

/// A phase's figures plus, for the router, every acknowledged event id and its send time.
pub(super) struct Load {
    pub(super) phase: Phase,
    pub(super) acks: Vec<([u8; 16], u64)>,
    pub(super) first_send_us: u64,
}

/// What one worker measured.
struct WorkerLog {
    acks: Vec<([u8; 16], u64)>,
    errors: BTreeMap<String, u64>,
    sent: u64,
    accepted: u64,
    duplicates: u64,
}

#[derive(Deserialize)]
struct Ack {
    #[serde(rename = "eventId")]
    event_id: Uuid,
    #[serde(default)]
    duplicate: bool,
}

/// Sends the plan's webhooks to `url` with `plan.concurrency` workers sharing one pool of
/// keep-alive connections. Times are microseconds since `epoch`.
pub(super) async fn drive(
    urls: &[reqwest::Url],
    pool: &Arc<PayloadPool>,
    plan: &LoadPlan,
    epoch: Instant,
    track: bool,
    progress: Option<&str>,
) -> anyhow::Result<Load> {
    // hyper's pooled client, as the router's deliveries use, rather than reqwest: reqwest parsed
    // the URL again, ran its redirect and retry layers and cloned its default headers on every
    // request, 15-20 % of the tool's CPU, which the router shares on one machine.
    let client = crate::deliver::pooled(None, plan.concurrency).map_err(anyhow::Error::msg)?;
    let uris = urls
        .iter()
        .map(|u| u.as_str().parse::<http::Uri>())
        .collect::<Result<Vec<_>, _>>()?;
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = plan.duration.map(|d| start + d);
    let per_worker = plan
        .total
        .map_or(1024, |t| (t as usize / plan.concurrency) + 16);

    let bar = progress.map(|label| {
        let (len, style) = match plan.total {
            Some(t) => (t, bar_style(label)),
            None => (
                plan.duration.map_or(0, |d| d.as_millis() as u64),
                timed_style(label),
            ),
        };
        let pb = ProgressBar::new(len);
        pb.set_style(style);
        pb
    });
    let ticking = Arc::new(AtomicBool::new(true));
    let ticker = bar.clone().map(|pb| {
        let done = done.clone();
        let ticking = ticking.clone();
        let counted = plan.total.is_some();
        tokio::spawn(async move {
            while ticking.load(Ordering::Acquire) {
                let n = done.load(Ordering::Relaxed);
                if counted {
                    pb.set_position(n);
                } else {
                    pb.set_position(start.elapsed().as_millis() as u64);
                    pb.set_message(format!("{n} sent"));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    });

    let hists: Arc<Vec<Mutex<Histogram<u64>>>> = Arc::new(
        (0..HIST_SHARDS)
            .map(|_| Mutex::new(new_histogram()))
            .collect(),
    );
    let mut workers = Vec::with_capacity(plan.concurrency);
    for w in 0..plan.concurrency {
        let hists = hists.clone();
        let client = client.clone();
        let uris = uris.clone();
        let pool = pool.clone();
        let next = next.clone();
        let done = done.clone();
        let total = plan.total;
        let rate = plan.rate;
        workers.push(tokio::spawn(async move {
            let mut log = WorkerLog {
                acks: Vec::with_capacity(if track { per_worker } else { 0 }),
                errors: BTreeMap::new(),
                sent: 0,
                accepted: 0,
                duplicates: 0,
            };
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if total.is_some_and(|t| i >= t) {
                    break;
                }
                let t0 = match rate {
                    Some(r) => {
                        let at = start + Duration::from_secs_f64(i as f64 / r);
                        // A request whose slot is past the end, or that the client could only
                        // send after the end (it fell behind), is not sent: the run stays bounded.
                        if deadline.is_some_and(|d| at >= d || Instant::now() >= d) {
                            break;
                        }
                        tokio::time::sleep_until(at.into()).await;
                        at
                    }
                    None => {
                        let now = Instant::now();
                        if deadline.is_some_and(|d| now >= d) {
                            break;
                        }
                        now
                    }
                };
                let p = &pool.items[(i % pool.items.len() as u64) as usize];
                let request = http::Request::post(uris[(i % uris.len() as u64) as usize].clone())
                    .header(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    )
                    .header(X_GITHUB_EVENT.clone(), p.event.clone())
                    .header(X_GITHUB_DELIVERY.clone(), pool.delivery_id(i))
                    .header(X_HUB_SIGNATURE_256.clone(), p.signature.clone())
                    .body(Full::new(p.body.clone()));
                log.sent += 1;
                let answered = match request {
                    Ok(request) => exchange(&client, request).await,
                    Err(_) => Err("request"),
                };
                match answered {
                    Ok((status, answer)) if status.is_success() => {
                        let took = t0.elapsed().as_micros() as u64;
                        // Untracked (the baseline), any 2xx counts; tracked, it must be an ack.
                        let ack = match track {
                            true => serde_json::from_slice::<Ack>(&answer).map(Some),
                            false => Ok(None),
                        };
                        match ack {
                            Ok(ack) => {
                                log.accepted += 1;
                                record(&hists[w % HIST_SHARDS], took);
                                match ack {
                                    Some(ack) if ack.duplicate => log.duplicates += 1,
                                    Some(ack) => {
                                        let at = t0.duration_since(epoch).as_micros();
                                        log.acks.push((ack.event_id.into_bytes(), at as u64));
                                    }
                                    None => {}
                                }
                            }
                            Err(_) => count(&mut log.errors, "bad_answer"),
                        }
                    }
                    Ok((status, _)) => count(&mut log.errors, &format!("http_{}", status.as_u16())),
                    Err(kind) => count(&mut log.errors, kind),
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            log
        }));
    }

    let mut acks = Vec::new();
    let mut errors = BTreeMap::new();
    let (mut sent, mut accepted, mut duplicates) = (0, 0, 0);
    for w in workers {
        let log = w.await.context("a load worker failed")?;
        if acks.is_empty() {
            acks = log.acks;
        } else {
            acks.extend_from_slice(&log.acks);
        }
        for (k, v) in log.errors {
            *errors.entry(k).or_insert(0) += v;
        }
        sent += log.sent;
        accepted += log.accepted;
        duplicates += log.duplicates;
    }
    let elapsed = start.elapsed().as_secs_f64();
    // Every worker has finished: the shards are complete.
    let mut hist = new_histogram();
    for shard in hists.iter() {
        if let Ok(h) = shard.lock() {
            let _ = hist.add(&*h);
        }
    }
    ticking.store(false, Ordering::Release);
    if let Some(t) = ticker {
        let _ = t.await;
    }
    if let Some(pb) = bar {
        pb.finish_and_clear();
    }
    Ok(Load {
        phase: Phase {
            planned: plan.total,
            sent,
            accepted,
            duplicates,
            elapsed_secs: elapsed,
            per_second: accepted as f64 / elapsed.max(1e-9),
            offered_per_second: sent as f64 / elapsed.max(1e-9),
            ack_latency_ms: latency(&hist),
            errors,
            process_cpu_secs: None,
            writer_cpu_secs: None,
        },
        acks,
        first_send_us: start.duration_since(epoch).as_micros() as u64,
    })
}

fn count(errors: &mut BTreeMap<String, u64>, kind: &str) {
    match errors.get_mut(kind) {
        Some(n) => *n += 1,
        None => {
            errors.insert(kind.to_string(), 1);
        }
    }
}

/// How long one webhook may take, connection included, before it counts as a `timeout`.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends one request and reads the whole answer; an error is its kind in the report.
async fn exchange(
    client: &crate::deliver::Pooled,
    request: http::Request<Full<Bytes>>,
) -> Result<(StatusCode, Bytes), &'static str> {
    let answered = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| if e.is_connect() { "connect" } else { "request" })?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|_| "body")?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(REQUEST_TIMEOUT, answered)
        .await
        .unwrap_or(Err("timeout"))
}

/// Histogram shards the workers share (worker `w` uses shard `w % HIST_SHARDS`).
const HIST_SHARDS: usize = 8;

fn record(shard: &Mutex<Histogram<u64>>, micros: u64) {
    if let Ok(mut h) = shard.lock() {
        h.saturating_record(micros.max(1));
    }
}

pub(super) fn new_histogram() -> Histogram<u64> {
    // Microseconds, 1 µs to 10 min, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("static histogram bounds are valid")
}

pub(super) fn latency(h: &Histogram<u64>) -> Latency {
    if h.is_empty() {
        return Latency::default();
    }
    let ms = |us: u64| us as f64 / 1000.0;
    Latency {
        p50: ms(h.value_at_quantile(0.50)),
        p95: ms(h.value_at_quantile(0.95)),
        p99: ms(h.value_at_quantile(0.99)),
        max: ms(h.max()),
        mean: h.mean() / 1000.0,
    }
}

pub(super) fn bar_style(label: &str) -> ProgressStyle {
    ProgressStyle::with_template(&format!(
        "{label:>8} [{{bar:40}}] {{pos}}/{{len}} {{per_sec}} {{elapsed}}"
    ))
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ")
}

fn timed_style(label: &str) -> ProgressStyle {
    ProgressStyle::with_template(&format!("{label:>8} [{{bar:40}}] {{elapsed}} {{msg}}"))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}
