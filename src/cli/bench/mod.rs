//! `event-router bench`: the load tool. It offers signed GitHub webhooks to a router (its own,
//! started in process, or one named by `--router`), catches the deliveries with a receiver agent
//! of its own, and reports ingest throughput, ack and end-to-end latency, errors and lost events,
//! next to a bare-HTTP baseline measured by the same client on the same machine in the same run.
//!
//! The client is built to measure the router and not itself: bodies and signatures are made
//! before the clock starts (a pool of one body per sender, reused round robin; only the
//! `X-GitHub-Delivery` header changes per request), each worker keeps its own records, and
//! workers share only two counters and a few histogram shards (a histogram with microsecond
//! resolution up to ten minutes is ~170 KB, too big to keep one per worker at 1,000 workers).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use axum::Router;
use axum::extract::State;
use axum::response::IntoResponse;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::{Config, Secret};
use crate::ingest::verify::sign_github;

/// The payload every generated webhook is derived from.
const PULL_REQUEST_EXAMPLE: &str = include_str!("../../../examples/github-pull_request.json");

/// What the bare baseline endpoint answers: about the size of the router's own 200.
const BARE_ANSWER: &str = r#"{"success":true,"eventId":"00000000-0000-7000-8000-000000000000","processed":true,"routed":true,"timestamp":1764170000123}"#;

static X_GITHUB_EVENT: HeaderName = HeaderName::from_static("x-github-event");
static X_GITHUB_DELIVERY: HeaderName = HeaderName::from_static("x-github-delivery");
static X_HUB_SIGNATURE_256: HeaderName = HeaderName::from_static("x-hub-signature-256");

/// Options of `event-router bench`.
#[derive(clap::Parser, Debug, Clone)]
#[command(name = "bench")]
pub struct BenchArgs {
    /// Webhooks to send [default: 10000, unless --duration is given].
    #[arg(short = 'n', long = "events", conflicts_with = "duration")]
    pub events: Option<u64>,
    /// Send for this many seconds instead of a fixed number.
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Requests in flight (closed loop). With --rate: the most in flight, i.e. the pool size.
    #[arg(short = 'c', long, default_value_t = 128)]
    pub concurrency: usize,
    /// Offer this many webhooks per second (open loop) instead of sending as answers come back.
    /// Latency is then measured from each request's scheduled time, so a client that falls
    /// behind shows as latency, not as a lower rate.
    #[arg(long, value_name = "PER_SEC")]
    pub rate: Option<f64>,
    /// Measure the bare-HTTP ceiling first (the default).
    #[arg(long, overrides_with = "no_baseline")]
    pub baseline: bool,
    /// Skip the bare-HTTP baseline.
    #[arg(long, overrides_with = "baseline")]
    pub no_baseline: bool,
    /// How long the baseline runs (closed loop at --concurrency).
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    pub baseline_secs: f64,
    /// Print the results as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Target an existing router at this base URL instead of starting one in process. Several
    /// nodes of one cluster: comma-separated URLs; webhooks go round-robin to each, the agent
    /// and route are created on the first.
    #[arg(long, value_name = "URL[,URL…]")]
    pub router: Option<String>,
    /// The router's admin key (with --router).
    #[arg(long, env = "ADMIN_API_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,
    /// The router's GitHub webhook secret (with --router).
    #[arg(long, env = "GITHUB_WEBHOOK_SECRET", hide_env_values = true)]
    pub github_secret: Option<String>,
    /// Distinct `sender.login` values, i.e. rate-limit identifiers (and distinct bodies).
    #[arg(long, default_value_t = 1000)]
    pub identifiers: usize,
    /// Approximate size of each webhook body.
    #[arg(long, value_name = "BYTES", default_value_t = 6144)]
    pub payload_bytes: usize,
    /// `maxConcurrency` of the receiver agent.
    #[arg(long, default_value_t = 256)]
    pub agent_concurrency: u32,
    /// How long to wait after sending for acknowledged events still to be delivered.
    #[arg(long, value_name = "SECS", default_value_t = 60.0)]
    pub drain_timeout: f64,
    /// Data dir of the in-process router [default: a fresh temporary dir, removed afterwards].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Where the receiver agent listens (the router must be able to reach it).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub receiver_listen: SocketAddr,
    /// Measure the delivery engine alone: the receiver holds every delivery unanswered while
    /// the webhooks are sent (the agent's `maxConcurrency` attempts in flight, the rest queued in
    /// the router), then answers them all at once and times the drain of the backlog.
    #[arg(long)]
    pub backlog: bool,
    /// How the receiver gets its events: `http` push deliveries to a receiver agent with a
    /// `url`, or `sse`, one live Server-Sent Events stream of a stream-only agent (resumed with
    /// `Last-Event-ID` if the router cuts it off as a slow consumer).
    #[arg(long, value_enum, default_value_t = DeliverVia::Http, conflicts_with = "backlog")]
    pub deliver: DeliverVia,
}

/// `--deliver`: how the events reach the tool.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliverVia {
    /// Push deliveries (signed HTTP POSTs) to the tool's receiver agent.
    Http,
    /// One SSE stream (`GET /stream/sse`) of a stream-only agent.
    Sse,
}

impl BenchArgs {
    fn baseline_enabled(&self) -> bool {
        !self.no_baseline
    }
}

/// Everything measured, as `--json` prints it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// `in-process` or the router's URL.
    pub router: String,
    pub machine: Machine,
    pub settings: Settings,
    /// The same client and payloads against an endpoint that only reads the body.
    pub baseline: Option<Phase>,
    pub ingest: Phase,
    /// Router acks per second ÷ baseline answers per second.
    pub ratio_to_baseline: Option<f64>,
    pub end_to_end: EndToEnd,
    /// The drain of a held backlog (`--backlog` only).
    pub backlog: Option<Backlog>,
    /// Resident memory (in-process router only).
    pub rss: Option<Rss>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_mb: u64,
    /// 1-minute load average when the run started and when it ended: above `cpus`, other work
    /// competed for the CPU and the figures are pessimistic.
    pub load_average: [f64; 2],
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Settings {
    pub events: Option<u64>,
    pub duration_secs: Option<f64>,
    pub concurrency: usize,
    pub rate: Option<f64>,
    pub identifiers: usize,
    pub payload_bytes_mean: usize,
    pub agent_concurrency: u32,
    /// `--backlog`: deliveries were held until every webhook was sent.
    pub backlog: bool,
    /// `http` (push deliveries) or `sse` (one live stream).
    pub deliver: DeliverVia,
}

/// One load phase (the baseline, or ingest into the router).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Phase {
    /// Requests the plan called for (`None`: as many as fit in the duration).
    pub planned: Option<u64>,
    /// Requests that got an answer or failed.
    pub sent: u64,
    /// 2xx answers.
    pub accepted: u64,
    /// 2xx answers marked `duplicate` (none expected: delivery ids are unique).
    pub duplicates: u64,
    pub elapsed_secs: f64,
    /// Accepted per second over the phase.
    pub per_second: f64,
    /// Requests per second offered.
    pub offered_per_second: f64,
    /// Of accepted requests, from (scheduled) send to the whole answer read.
    pub ack_latency_ms: Latency,
    /// By kind: `http_<status>`, `connect`, `timeout`, `request`, `body`, `bad_answer`.
    pub errors: BTreeMap<String, u64>,
    /// CPU time of the whole process over the phase (client, servers, router).
    pub process_cpu_secs: Option<f64>,
    /// CPU time of the SQLite writer thread (in-process router).
    pub writer_cpu_secs: Option<f64>,
}

#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct Latency {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndToEnd {
    /// Acknowledged events that reached the receiver.
    pub delivered: u64,
    /// Acknowledged events that did not reach it within the drain timeout.
    pub lost: u64,
    /// Deliveries of an event already received (at-least-once redeliveries).
    pub duplicates: u64,
    /// Deliveries of events this run never saw acknowledged (e.g. its request failed late).
    pub unacknowledged: u64,
    /// Delivered ÷ (last delivery − first send).
    pub per_second: f64,
    /// Delivered before the last webhook was answered.
    pub delivered_during_send: u64,
    /// From the end of sending until the last acknowledged event arrived (or the timeout).
    pub drain_secs: f64,
    /// From send (scheduled) to arrival at the receiver.
    pub latency_ms: Latency,
    /// `--deliver sse`: times the stream ended early (e.g. cut off as a slow consumer) and was
    /// resumed from the last event received.
    pub stream_reconnects: Option<u64>,
}

/// `--backlog`: how fast the router empties a queue of deliveries to one agent.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Backlog {
    /// Deliveries waiting in the router when the receiver was released (acknowledged events).
    pub queued: u64,
    /// Of those, attempts the receiver was holding open at the release.
    pub held_in_flight: u64,
    /// Delivered from the release until the last acknowledged event arrived.
    pub delivered: u64,
    /// From the release to the last arrival (or the drain timeout).
    pub drain_secs: f64,
    /// `delivered ÷ drain_secs`: the delivery engine's throughput to one local agent.
    pub drain_per_second: f64,
    /// CPU time of this whole process over the drain (the in-process router and the receiver;
    /// with `--router`, the tool alone).
    pub process_cpu_secs: Option<f64>,
    /// CPU time of the SQLite writer thread over the drain (in-process router).
    pub writer_cpu_secs: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rss {
    /// Highest process RSS sampled (every 100 ms) from router start to the end of the drain.
    pub peak_mb: f64,
    /// Process RSS just before the router started: the tool, its payloads and receiver.
    pub before_router_mb: f64,
    /// What the tool's own per-event records occupy by the end (ack and arrival logs).
    pub tool_records_mb: f64,
    /// `peak − before − records`: the router's share, roughly.
    pub router_estimate_mb: f64,
}

/// `event-router bench`: runs and prints; exit 1 if an acknowledged event was lost.
pub fn main(args: BenchArgs) -> ExitCode {
    let level = std::env::var("LOG_LEVEL").unwrap_or_else(|_| "warn".into());
    crate::telemetry::init(&level, crate::config::LogFormat::Text);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("event-router: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(&args, !args.json)) {
        Ok(report) => {
            if args.json {
                match serde_json::to_string_pretty(&report) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("event-router: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                print!("{}", render(&report));
            }
            if report.end_to_end.lost > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("event-router bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The router under test: started here, or somewhere else.
enum RouterUnderTest {
    InProcess {
        server: crate::Server,
        data_dir: PathBuf,
        remove_dir: bool,
    },
    External,
}

/// Runs the whole benchmark: baseline, router setup, ingest, drain; returns the figures.
pub async fn run(args: &BenchArgs, progress: bool) -> anyhow::Result<Report> {
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    if args.identifiers == 0 {
        bail!("--identifiers must be at least 1");
    }
    if let Some(r) = args.rate
        && !(r.is_finite() && r > 0.0)
    {
        bail!("--rate must be a positive number");
    }
    if let Some(d) = args.duration
        && !(d.is_finite() && d > 0.0)
    {
        bail!("--duration must be a positive number of seconds");
    }
    let events = match (args.events, args.duration) {
        (Some(n), _) => Some(n),
        (None, Some(d)) => args.rate.map(|r| (r * d).ceil() as u64),
        (None, None) => Some(10_000),
    };
    let load_at_start = load_average();
    let say = |msg: String| {
        if progress {
            eprintln!("{msg}");
        }
    };

    let (github_secret, admin_key) = match &args.router {
        Some(_) => (
            args.github_secret
                .clone()
                .context("--router needs --github-secret (or GITHUB_WEBHOOK_SECRET)")?,
            args.admin_key
                .clone()
                .context("--router needs --admin-key (or ADMIN_API_KEY)")?,
        ),
        None => (
            format!("bench-gh-{}", crate::crypto::random_token(16)),
            format!("bench-admin-{}", crate::crypto::random_token(16)),
        ),
    };

    // Everything the clock must not see: bodies, signatures.
    let pool = Arc::new(PayloadPool::build(
        args.identifiers,
        args.payload_bytes,
        github_secret.as_bytes(),
    )?);
    let mean_bytes = pool.mean_bytes();
    let plan = LoadPlan {
        total: events,
        duration: args.duration.map(Duration::from_secs_f64),
        rate: args.rate,
        concurrency: args.concurrency,
    };
    say(format!(
        "bench: {} webhooks of ~{mean_bytes} B from {} senders, {}",
        match (events, args.duration) {
            (Some(n), _) => n.to_string(),
            (None, Some(d)) => format!("{d} s of"),
            (None, None) => unreachable!("a count or a duration is always set"),
        },
        args.identifiers,
        match args.rate {
            Some(r) => format!("offered at {r}/s (at most {} in flight)", args.concurrency),
            None => format!("concurrency {} (closed loop)", args.concurrency),
        }
    ));

    let baseline = if args.baseline_enabled() {
        let phase = run_baseline(args, &pool, &plan, progress).await?;
        say(format!(
            "baseline: {:.0} answers/s, ack p50 {:.2} ms, p99 {:.2} ms",
            phase.per_second, phase.ack_latency_ms.p50, phase.ack_latency_ms.p99
        ));
        Some(phase)
    } else {
        None
    };

    let epoch = Instant::now();
    let rss_before = rss_bytes();
    let receiver = Receiver::start(
        (args.deliver == DeliverVia::Http).then_some(args.receiver_listen),
        epoch,
        events.unwrap_or(0),
        args.backlog,
    )
    .await?;

    let (router_url, under_test) = match &args.router {
        Some(url) => (
            url.trim().trim_end_matches('/').to_string(),
            RouterUnderTest::External,
        ),
        None => {
            let (data_dir, remove_dir) = match &args.data_dir {
                Some(d) => (d.clone(), false),
                None => (
                    std::env::temp_dir()
                        .join(format!("event-router-bench-{}", Uuid::new_v4().simple())),
                    true,
                ),
            };
            let mut cfg = Config {
                data_dir: data_dir.clone(),
                listen: "127.0.0.1:0".parse().expect("a valid address"),
                admin_api_key: Some(Secret(admin_key.clone())),
                // The senders are spread over `identifiers` anyway; keep the inbound limit from
                // refusing a long run (the limiter is still consulted on every webhook).
                default_rate_limit: 1_000_000_000,
                ..Config::default()
            };
            if let Some(github) = cfg.sources.get_mut("github") {
                github.secret = Some(Secret(github_secret.clone()));
            }
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let server = crate::start(cfg, listener)
                .await
                .context("starting the router in process")?;
            (
                format!("http://{}", server.addr),
                RouterUnderTest::InProcess {
                    server,
                    data_dir,
                    remove_dir,
                },
            )
        }
    };

    let outcome = measure_router(
        args,
        &router_url,
        &admin_key,
        &pool,
        &plan,
        &receiver,
        epoch,
        matches!(under_test, RouterUnderTest::InProcess { .. }),
        progress,
    )
    .await;

    receiver.stop();
    if let RouterUnderTest::InProcess {
        server,
        data_dir,
        remove_dir,
    } = under_test
    {
        server.shutdown(Duration::from_secs(10)).await;
        if remove_dir {
            let _ = std::fs::remove_dir_all(&data_dir);
        }
    }
    let Measured {
        ingest,
        end_to_end,
        backlog,
        peak_rss,
        records,
    } = outcome?;

    let rss = match (rss_before, peak_rss) {
        (Some(before), Some(peak)) if args.router.is_none() => {
            let mb = |b: u64| b as f64 / (1024.0 * 1024.0);
            Some(Rss {
                peak_mb: mb(peak),
                before_router_mb: mb(before),
                tool_records_mb: mb(records),
                router_estimate_mb: mb(peak.saturating_sub(before).saturating_sub(records)),
            })
        }
        _ => None,
    };
    let ratio_to_baseline = baseline
        .as_ref()
        .filter(|b| b.per_second > 0.0)
        .map(|b| ingest.per_second / b.per_second);
    Ok(Report {
        router: match &args.router {
            Some(u) => u.clone(),
            None => "in-process".into(),
        },
        machine: machine(load_at_start),
        settings: Settings {
            events,
            duration_secs: args.duration,
            concurrency: args.concurrency,
            rate: args.rate,
            identifiers: args.identifiers,
            payload_bytes_mean: mean_bytes,
            agent_concurrency: args.agent_concurrency,
            backlog: args.backlog,
            deliver: args.deliver,
        },
        baseline,
        ingest,
        ratio_to_baseline,
        end_to_end,
        backlog,
        rss,
    })
}

/// The baseline: a bare endpoint in process that reads the body and answers 200.
async fn run_baseline(
    args: &BenchArgs,
    pool: &Arc<PayloadPool>,
    plan: &LoadPlan,
    progress: bool,
) -> anyhow::Result<Phase> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    let app = Router::new().fallback(bare);
    let token = stop.clone();
    let serving = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { token.cancelled().await })
            .await
    });
    // The ceiling is how fast this client and machine can exchange these requests at all: closed
    // loop for a fixed time, whatever the router run's count or rate.
    let baseline_plan = LoadPlan {
        total: None,
        duration: Some(Duration::from_secs_f64(args.baseline_secs.max(0.1))),
        rate: None,
        concurrency: plan.concurrency,
    };
    let url: reqwest::Url = format!("http://{addr}/webhook/github").parse()?;
    let load = drive(
        std::slice::from_ref(&url),
        pool,
        &baseline_plan,
        Instant::now(),
        false,
        progress.then_some("baseline"),
    )
    .await?;
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(2), serving).await;
    Ok(load.phase)
}

async fn bare(_body: Bytes) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        BARE_ANSWER,
    )
}

/// What `measure_router` found.
struct Measured {
    ingest: Phase,
    end_to_end: EndToEnd,
    backlog: Option<Backlog>,
    peak_rss: Option<u64>,
    /// Bytes of the tool's own per-event records.
    records: u64,
}

/// How long an agent may hold an attempt in `--backlog` mode: longer than any run, so no held
/// attempt times out (and is retried later) while the backlog builds.
const BACKLOG_AGENT_TIMEOUT_MS: u64 = 3_600_000;

/// Configures the agent and route, sends, waits for the deliveries, and compares.
#[allow(clippy::too_many_arguments)]
async fn measure_router(
    args: &BenchArgs,
    router_url: &str,
    admin_key: &str,
    pool: &Arc<PayloadPool>,
    plan: &LoadPlan,
    receiver: &Receiver,
    epoch: Instant,
    in_process: bool,
    progress: bool,
) -> anyhow::Result<Measured> {
    let admin = Admin {
        client: reqwest::Client::new(),
        base: router_url
            .split(',')
            .next()
            .unwrap_or(router_url)
            .trim()
            .trim_end_matches('/')
            .to_string(),
        key: admin_key.to_string(),
    };
    let tag = Uuid::new_v4().simple().to_string();
    let agent_id = format!("bench-agent-{}", &tag[..12]);
    let route_id = format!("bench-route-{}", &tag[..12]);
    let mut agent = json!({
        "id": agent_id,
        "name": "bench receiver",
        "maxConcurrency": args.agent_concurrency,
        "timeoutMs": if args.backlog { BACKLOG_AGENT_TIMEOUT_MS } else { 10_000 },
        "enabled": true,
    });
    if let Some(addr) = receiver.addr {
        agent["url"] = json!(format!("http://{addr}/deliveries"));
    }
    // `--deliver sse`: the agent's own key opens its stream (the admin key opens only `*`).
    let stream_key = format!("bench-stream-{}", crate::crypto::random_token(16));
    if args.deliver == DeliverVia::Sse {
        agent["apiKey"] = json!(stream_key);
    }
    admin.create("/admin/agents", agent).await?;
    admin
        .create(
            "/admin/routes",
            json!({
                "id": route_id,
                "name": "bench route",
                "sourceFilters": [],
                "targetAgents": [agent_id],
                "priority": 0,
                "enabled": true,
            }),
        )
        .await?;

    // `--deliver sse`: the stream is open (so every event from now on reaches it live) before
    // the first webhook is sent.
    let reconnects = Arc::new(AtomicU64::new(0));
    if args.deliver == DeliverVia::Sse {
        let url = format!(
            "{}/stream/sse?agentId={agent_id}",
            admin.base.trim_end_matches('/')
        );
        let (opened, is_open) = tokio::sync::oneshot::channel();
        tokio::spawn(subscribe_sse(
            receiver.state.clone(),
            url,
            stream_key,
            receiver.stop.clone(),
            reconnects.clone(),
            opened,
        ));
        let failed = match tokio::time::timeout(Duration::from_secs(10), is_open).await {
            Ok(Ok(Ok(()))) => None,
            Ok(Ok(Err(e))) => Some(format!("opening the SSE stream: {e}")),
            _ => Some("the SSE stream did not open within 10 s".to_string()),
        };
        if let Some(failed) = failed {
            if args.router.is_some() {
                admin.remove_bench(&route_id, &agent_id).await;
            }
            bail!(failed);
        }
    }

    let sampling = CancellationToken::new();
    let peak_rss = Arc::new(AtomicU64::new(rss_bytes().unwrap_or(0)));
    let sampler = tokio::spawn(sample_rss(peak_rss.clone(), sampling.clone()));

    let urls = router_url
        .split(',')
        .map(|u| format!("{}/webhook/github", u.trim().trim_end_matches('/')).parse())
        .collect::<Result<Vec<reqwest::Url>, _>>()?;
    let cpu_before = process_cpu_secs();
    let writer_before = in_process
        .then(|| thread_cpu_secs("sqlite-writer"))
        .flatten();
    let load = drive(&urls, pool, plan, epoch, true, progress.then_some("ingest")).await;
    let sent_until = epoch.elapsed();
    let mut load = match load {
        Ok(l) => l,
        Err(e) => {
            sampling.cancel();
            return Err(e);
        }
    };
    load.phase.process_cpu_secs = cpu_before.zip(process_cpu_secs()).map(|(a, b)| b - a);
    load.phase.writer_cpu_secs = writer_before
        .zip(thread_cpu_secs("sqlite-writer"))
        .map(|(a, b)| b - a);

    // Stragglers: every acknowledged event must arrive.
    let accepted_ids = load.acks.len() as u64;
    // `--backlog`: every acknowledged event is now queued in the router, and the first
    // `maxConcurrency` of them are being held by the receiver. Release them and time the drain.
    let release = if args.backlog {
        let in_flight = accepted_ids.min(u64::from(args.agent_concurrency));
        let settle = Instant::now() + Duration::from_secs(10);
        while receiver.held() < in_flight && Instant::now() < settle {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let held = receiver.held();
        let cpu = process_cpu_secs();
        let writer = in_process
            .then(|| thread_cpu_secs("sqlite-writer"))
            .flatten();
        let at = epoch.elapsed();
        receiver.release();
        Some((at, held, cpu, writer))
    } else {
        None
    };
    let drain_deadline = Instant::now() + Duration::from_secs_f64(args.drain_timeout.max(0.0));
    let spinner = progress.then(|| {
        let pb = ProgressBar::new(accepted_ids);
        pb.set_style(bar_style("drain"));
        pb
    });
    let acked: HashMap<[u8; 16], u64> = load.acks.iter().copied().collect();
    let mut missing;
    loop {
        let received = receiver.unique.load(Ordering::Acquire);
        if let Some(pb) = &spinner {
            pb.set_position(received.min(accepted_ids));
        }
        if received >= accepted_ids {
            missing = receiver.missing(&acked);
            if missing == 0 {
                break;
            }
        }
        if Instant::now() >= drain_deadline {
            missing = receiver.missing(&acked);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drained_at = epoch.elapsed();
    let drain_cpu = release.as_ref().map(|_| {
        (
            process_cpu_secs(),
            in_process
                .then(|| thread_cpu_secs("sqlite-writer"))
                .flatten(),
        )
    });
    if let Some(pb) = spinner {
        pb.finish_and_clear();
    }
    sampling.cancel();
    let _ = sampler.await;

    let arrivals = receiver.snapshot();
    let mut e2e = new_histogram();
    let mut delivered = 0u64;
    let mut during_send = 0u64;
    let mut last_arrival = 0u64;
    for (id, sent_at) in &load.acks {
        if let Some(&arrived) = arrivals.get(id) {
            delivered += 1;
            e2e.saturating_record(arrived.saturating_sub(*sent_at).max(1));
            last_arrival = last_arrival.max(arrived);
            if arrived <= sent_until.as_micros() as u64 {
                during_send += 1;
            }
        }
    }
    let unacknowledged = arrivals
        .keys()
        .filter(|id| !acked.contains_key(*id))
        .count() as u64;
    let first_send = load.first_send_us;
    let span = last_arrival.saturating_sub(first_send) as f64 / 1e6;
    let drain_secs = if missing == 0 {
        (Duration::from_micros(last_arrival).saturating_sub(sent_until)).as_secs_f64()
    } else {
        (drained_at - sent_until).as_secs_f64()
    };
    let end_to_end = EndToEnd {
        delivered,
        lost: missing,
        duplicates: receiver.duplicates.load(Ordering::Acquire),
        unacknowledged,
        per_second: if span > 0.0 {
            delivered as f64 / span
        } else {
            0.0
        },
        delivered_during_send: during_send,
        drain_secs,
        latency_ms: latency(&e2e),
        stream_reconnects: (args.deliver == DeliverVia::Sse)
            .then(|| reconnects.load(Ordering::Acquire)),
    };
    let backlog = release.map(|(at, held, cpu, writer)| {
        let (cpu_after, writer_after) = drain_cpu.unwrap_or((None, None));
        let until = if missing == 0 {
            Duration::from_micros(last_arrival)
        } else {
            drained_at
        };
        let drain_secs = until.saturating_sub(at).as_secs_f64();
        Backlog {
            queued: accepted_ids,
            held_in_flight: held,
            delivered,
            drain_secs,
            drain_per_second: if drain_secs > 0.0 {
                delivered as f64 / drain_secs
            } else {
                0.0
            },
            process_cpu_secs: cpu.zip(cpu_after).map(|(a, b)| b - a),
            writer_cpu_secs: writer.zip(writer_after).map(|(a, b)| b - a),
        }
    });
    // What the tool held while RSS was sampled: the ack log, its index, the receiver's maps.
    let entry = std::mem::size_of::<([u8; 16], u64)>();
    let records = (load.acks.capacity() * entry
        + (receiver.capacity() + acked.capacity()) * (entry + 1)) as u64;

    if args.router.is_some() {
        admin.remove_bench(&route_id, &agent_id).await;
    }
    let peak = Some(peak_rss.load(Ordering::Acquire)).filter(|&p| p > 0);
    Ok(Measured {
        ingest: load.phase,
        end_to_end,
        backlog,
        peak_rss: peak,
        records,
    })
}

/// The admin API, for setting up and removing the bench's agent and route.
struct Admin {
    client: reqwest::Client,
    base: String,
    key: String,
}

impl Admin {
    async fn create(&self, path: &str, body: Value) -> anyhow::Result<()> {
        let resp = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .json(&body)
            .send()
            .await
            .with_context(|| format!("POST {}{path}", self.base))?;
        let status = resp.status();
        if status != StatusCode::CREATED {
            let text = resp.text().await.unwrap_or_default();
            bail!("POST {path} answered {status}: {text}");
        }
        Ok(())
    }

    /// Leaves an external router as the run found it (its archive keeps the events).
    async fn remove_bench(&self, route_id: &str, agent_id: &str) {
        self.delete(&format!("/admin/routes/{route_id}")).await;
        self.delete(&format!("/admin/agents/{agent_id}")).await;
    }

    async fn delete(&self, path: &str) {
        let _ = self
            .client
            .delete(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .send()
            .await;
    }
}

/// One signed webhook body, ready to send.
struct Payload {
    body: Bytes,
    signature: HeaderValue,
    event: HeaderValue,
}

/// The bodies, one per sender, signed once.
struct PayloadPool {
    items: Vec<Payload>,
    /// Makes this run's delivery ids distinct from any earlier run's (a router dedupes them).
    nonce: u64,
}

impl PayloadPool {
    fn build(count: usize, target_bytes: usize, secret: &[u8]) -> anyhow::Result<PayloadPool> {
        const ACTIONS: [&str; 6] = [
            "opened",
            "synchronize",
            "edited",
            "reopened",
            "ready_for_review",
            "closed",
        ];
        let template: Value = serde_json::from_str(PULL_REQUEST_EXAMPLE)?;
        let mut items = Vec::with_capacity(count);
        for i in 0..count {
            let mut p = template.clone();
            let login = format!("bench-user-{i:04}");
            let number = 1000 + i as u64;
            p["action"] = json!(ACTIONS[i % ACTIONS.len()]);
            p["number"] = json!(number);
            p["sender"]["login"] = json!(login);
            p["sender"]["id"] = json!(100_000 + i as u64);
            let pr = &mut p["pull_request"];
            pr["number"] = json!(number);
            pr["id"] = json!(9_000_000 + i as u64);
            pr["title"] = json!(format!("Change {number}: {}", words(i as u64, 40)));
            pr["user"]["login"] = json!(login);
            pr["additions"] = json!((i * 7) % 500);
            pr["deletions"] = json!((i * 3) % 200);
            pr["body"] = json!("");
            let bare_len = serde_json::to_vec(&p)?.len();
            p["pull_request"]["body"] =
                Value::String(words(i as u64, target_bytes.saturating_sub(bare_len)));
            let body = serde_json::to_vec(&p)?;
            let signature = HeaderValue::from_str(&sign_github(secret, &body))?;
            items.push(Payload {
                body: Bytes::from(body),
                signature,
                event: HeaderValue::from_static("pull_request"),
            });
        }
        Ok(PayloadPool {
            items,
            nonce: rand::random(),
        })
    }

    fn mean_bytes(&self) -> usize {
        let total: usize = self.items.iter().map(|p| p.body.len()).sum();
        total / self.items.len().max(1)
    }

    /// A GitHub-style delivery id (a UUID string), unique within this run and across runs.
    fn delivery_id(&self, i: u64) -> HeaderValue {
        let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let s = Uuid::from_u64_pair(self.nonce, i)
            .hyphenated()
            .encode_lower(&mut buf);
        HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
    }
}

/// Deterministic prose of about `len` bytes (ASCII, so its JSON length is its length).
fn words(seed: u64, len: usize) -> String {
    const WORDS: [&str; 24] = [
        "retry",
        "backoff",
        "delivery",
        "worker",
        "queue",
        "agent",
        "route",
        "filter",
        "commit",
        "latency",
        "webhook",
        "payload",
        "signature",
        "cursor",
        "archive",
        "replay",
        "stream",
        "pacing",
        "jitter",
        "lease",
        "batch",
        "timeout",
        "window",
        "schema",
    ];
    let mut out = String::with_capacity(len + 16);
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    while out.len() < len {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let w = WORDS[(x >> 33) as usize % WORDS.len()];
        if !out.is_empty() {
            out.push(if (x >> 20).is_multiple_of(11) {
                '\n'
            } else {
                ' '
            });
        }
        out.push_str(w);
    }
    out.truncate(len);
    out
}

/// How much to send, and how.
struct LoadPlan {
    total: Option<u64>,
    duration: Option<Duration>,
    rate: Option<f64>,
    concurrency: usize,
}

/// A phase's figures plus, for the router, every acknowledged event id and its send time.
struct Load {
    phase: Phase,
    acks: Vec<([u8; 16], u64)>,
    first_send_us: u64,
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
async fn drive(
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

fn new_histogram() -> Histogram<u64> {
    // Microseconds, 1 µs to 10 min, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("static histogram bounds are valid")
}

fn latency(h: &Histogram<u64>) -> Latency {
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

fn bar_style(label: &str) -> ProgressStyle {
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

/// The agent: records each delivery's `webhook-id` and arrival time, answers 200. With a hold
/// (`--backlog`), it answers nothing until released; an arrival is then the time of the answer.
/// With `--deliver sse` it has no HTTP server (`addr` is `None`): `subscribe_sse` records into
/// the same arrivals.
struct Receiver {
    addr: Option<SocketAddr>,
    state: Arc<Arrivals>,
    unique: Arc<AtomicU64>,
    duplicates: Arc<AtomicU64>,
    stop: CancellationToken,
}

/// Arrival times (µs since the epoch) by event id, sharded so deliveries rarely contend.
struct Arrivals {
    epoch: Instant,
    shards: Vec<Mutex<HashMap<[u8; 16], u64>>>,
    unique: Arc<AtomicU64>,
    duplicates: Arc<AtomicU64>,
    /// Cancelled = released; `None`: answers at once.
    hold: Option<CancellationToken>,
    /// Deliveries waiting on the hold.
    held: AtomicU64,
}

const SHARDS: usize = 64;

impl Receiver {
    async fn start(
        listen: Option<SocketAddr>,
        epoch: Instant,
        expected: u64,
        hold: bool,
    ) -> anyhow::Result<Receiver> {
        let unique = Arc::new(AtomicU64::new(0));
        let duplicates = Arc::new(AtomicU64::new(0));
        let per_shard = (expected as usize / SHARDS) + 16;
        let state = Arc::new(Arrivals {
            epoch,
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::with_capacity(per_shard)))
                .collect(),
            unique: unique.clone(),
            duplicates: duplicates.clone(),
            hold: hold.then(CancellationToken::new),
            held: AtomicU64::new(0),
        });
        let stop = CancellationToken::new();
        let addr = match listen {
            Some(listen) => {
                let listener = TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("the receiver cannot listen on {listen}"))?;
                let addr = listener.local_addr()?;
                let app = Router::new().fallback(receive).with_state(state.clone());
                let token = stop.clone();
                tokio::spawn(async move {
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(async move { token.cancelled().await })
                        .await;
                });
                Some(addr)
            }
            None => None,
        };
        Ok(Receiver {
            addr,
            state,
            unique,
            duplicates,
            stop,
        })
    }

    fn stop(&self) {
        self.release();
        self.stop.cancel();
    }

    /// Answers the held deliveries and every later one at once.
    fn release(&self) {
        if let Some(hold) = &self.state.hold {
            hold.cancel();
        }
    }

    /// Deliveries currently held unanswered.
    fn held(&self) -> u64 {
        self.state.held.load(Ordering::Acquire)
    }

    /// How many of `acked` have not arrived.
    fn missing(&self, acked: &HashMap<[u8; 16], u64>) -> u64 {
        acked
            .keys()
            .filter(|id| {
                let shard = &self.state.shards[shard_of(id)];
                !shard.lock().map(|m| m.contains_key(*id)).unwrap_or(false)
            })
            .count() as u64
    }

    /// Entries the receiver's maps have room for.
    fn capacity(&self) -> usize {
        self.state
            .shards
            .iter()
            .map(|m| m.lock().map_or(0, |m| m.capacity()))
            .sum()
    }

    fn snapshot(&self) -> HashMap<[u8; 16], u64> {
        let mut all = HashMap::with_capacity(self.unique.load(Ordering::Acquire) as usize);
        for shard in &self.state.shards {
            if let Ok(m) = shard.lock() {
                all.extend(m.iter().map(|(k, v)| (*k, *v)));
            }
        }
        all
    }
}

fn shard_of(id: &[u8; 16]) -> usize {
    // The last byte of a v7 id is random.
    id[15] as usize % SHARDS
}

async fn receive(
    State(arrivals): State<Arc<Arrivals>>,
    headers: HeaderMap,
    _body: Bytes,
) -> StatusCode {
    if let Some(hold) = arrivals.hold.as_ref().filter(|h| !h.is_cancelled()) {
        arrivals.held.fetch_add(1, Ordering::AcqRel);
        hold.cancelled().await;
        arrivals.held.fetch_sub(1, Ordering::AcqRel);
    }
    let at = arrivals.epoch.elapsed().as_micros() as u64;
    let Some(id) = headers
        .get("webhook-id")
        .and_then(|v| Uuid::try_parse_ascii(v.as_bytes()).ok())
    else {
        return StatusCode::BAD_REQUEST;
    };
    if arrivals.record(id.into_bytes(), at) {
        StatusCode::OK
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    }
}

impl Arrivals {
    /// Notes that event `id` arrived at `at` (µs since the epoch), or counts a duplicate.
    /// `false` if the shard's lock was poisoned.
    fn record(&self, id: [u8; 16], at: u64) -> bool {
        let fresh = match self.shards[shard_of(&id)].lock() {
            Ok(mut m) => match m.entry(id) {
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(at);
                    true
                }
                std::collections::hash_map::Entry::Occupied(_) => false,
            },
            Err(_) => return false,
        };
        if fresh {
            self.unique.fetch_add(1, Ordering::Release);
        } else {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
        }
        true
    }
}

/// `--deliver sse`: reads the agent's SSE stream until `stop`, recording each event when its
/// frame is complete. A stream that ends (the router cut off a slow consumer, or the connection
/// failed) is reopened with `Last-Event-ID` = the last event recorded, so the router replays
/// what was missed from its store. `opened` gets the outcome of the first request.
async fn subscribe_sse(
    arrivals: Arc<Arrivals>,
    url: String,
    key: String,
    stop: CancellationToken,
    reconnects: Arc<AtomicU64>,
    opened: tokio::sync::oneshot::Sender<anyhow::Result<()>>,
) {
    use futures_util::StreamExt as _;
    let client = match reqwest::Client::builder().tcp_nodelay(true).build() {
        Ok(c) => c,
        Err(e) => {
            let _ = opened.send(Err(e.into()));
            return;
        }
    };
    let mut opened = Some(opened);
    let mut frames = SseFrames::default();
    loop {
        let mut request = client.get(&url).bearer_auth(&key);
        if let Some(last) = frames.last_id {
            request = request.header("last-event-id", last.to_string());
        }
        let answer = tokio::select! {
            _ = stop.cancelled() => return,
            a = request.send() => a,
        };
        let response = match answer {
            Ok(r) if r.status() == StatusCode::OK => Ok(r),
            Ok(r) => {
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                Err(anyhow::anyhow!("{status}: {text}"))
            }
            Err(e) => Err(e.into()),
        };
        let response = match response {
            Ok(r) => r,
            // The first request's failure ends the run; a reopening is tried again.
            Err(e) => match opened.take() {
                Some(tx) => {
                    let _ = tx.send(Err(e));
                    return;
                }
                None => {
                    tracing::warn!(error = %e, "bench: reopening the SSE stream failed");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    }
                }
            },
        };
        if let Some(tx) = opened.take() {
            let _ = tx.send(Ok(()));
        }
        frames.pending.clear();
        frames.id = None;
        let mut body = response.bytes_stream();
        loop {
            let chunk = tokio::select! {
                _ = stop.cancelled() => return,
                c = body.next() => c,
            };
            let Some(Ok(chunk)) = chunk else { break };
            let at = arrivals.epoch.elapsed().as_micros() as u64;
            frames.feed(&chunk, |id| {
                arrivals.record(id.into_bytes(), at);
            });
        }
        reconnects.fetch_add(1, Ordering::Relaxed);
        // The router ended the stream (a slow consumer is cut off): reopen it, but not in a
        // tight loop should it keep ending it at once.
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
}

/// Splits an SSE byte stream into frames and hands over the `id` of each complete one.
#[derive(Default)]
struct SseFrames {
    /// The start of a line not yet complete: at most `LINE_KEEP` bytes, enough to tell an `id:`
    /// line or a blank one (a `data:` line is several KB, and its text is not needed).
    pending: Vec<u8>,
    /// The `id:` of the frame being read.
    id: Option<Uuid>,
    /// The id of the last complete frame: where a reopened stream resumes.
    last_id: Option<Uuid>,
}

impl SseFrames {
    fn feed(&mut self, chunk: &[u8], mut on_event: impl FnMut(Uuid)) {
        let mut rest = chunk;
        while let Some(end) = memchr::memchr(b'\n', rest) {
            if self.pending.is_empty() {
                self.line(&rest[..end], &mut on_event);
            } else {
                self.keep(&rest[..end]);
                let line = std::mem::take(&mut self.pending);
                self.line(&line, &mut on_event);
                self.pending = line;
                self.pending.clear();
            }
            rest = &rest[end + 1..];
        }
        self.keep(rest);
    }

    fn keep(&mut self, part: &[u8]) {
        let room = LINE_KEEP.saturating_sub(self.pending.len());
        self.pending
            .extend_from_slice(&part[..part.len().min(room)]);
    }

    fn line(&mut self, line: &[u8], on_event: &mut impl FnMut(Uuid)) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            // The blank line ends a frame; one with an id is an event.
            if let Some(id) = self.id.take() {
                self.last_id = Some(id);
                on_event(id);
            }
        } else if let Some(value) = line.strip_prefix(b"id:") {
            let value = value.strip_prefix(b" ").unwrap_or(value);
            self.id = Uuid::try_parse_ascii(value).ok();
        }
    }
}

/// Bytes of an unfinished line `SseFrames` keeps (an `id:` line is 40).
const LINE_KEEP: usize = 64;

/// Samples the process RSS until cancelled, keeping the highest.
async fn sample_rss(peak: Arc<AtomicU64>, stop: CancellationToken) {
    loop {
        if let Some(now) = rss_bytes() {
            peak.fetch_max(now, Ordering::AcqRel);
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

/// Resident set size of this process (`/proc/self/statm`, resident pages × 4 KiB).
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// User + system CPU seconds of this process (`/proc/self/stat`, in USER_HZ = 100 ticks).
fn process_cpu_secs() -> Option<f64> {
    stat_cpu_secs(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

/// User + system CPU seconds of this process's threads named `name`.
fn thread_cpu_secs(name: &str) -> Option<f64> {
    let mut total = None;
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() == name
            && let Some(s) = std::fs::read_to_string(task.path().join("stat"))
                .ok()
                .and_then(|s| stat_cpu_secs(&s))
        {
            total = Some(total.unwrap_or(0.0) + s);
        }
    }
    total
}

fn stat_cpu_secs(stat: &str) -> Option<f64> {
    // Fields after the parenthesised command: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// The 1-minute load average (`/proc/loadavg`).
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

fn machine(load_at_start: f64) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_kb: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Machine {
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_model,
        memory_mb: memory_kb / 1024,
        load_average: [load_at_start, load_average()],
    }
}

/// The human-readable report.
/// `cpu … s for the process… (… µs per <unit>)`, with the SQLite writer's share when known;
/// seconds to `decimals` places.
fn cpu_line(
    cpu: f64,
    writer: Option<f64>,
    decimals: usize,
    during: &str,
    count: u64,
    unit: &str,
) -> String {
    format!(
        "cpu {cpu:.decimals$} s for the process{during} ({:.0} µs per {unit}){}",
        cpu * 1e6 / (count.max(1) as f64),
        writer
            .map(|w| format!(", of which SQLite writer {w:.decimals$} s"))
            .unwrap_or_default()
    )
}

pub fn render(r: &Report) -> String {
    use std::fmt::Write as _;
    let lat = |l: &Latency| {
        format!(
            "p50 {:.2} ms  p95 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
            l.p50, l.p95, l.p99, l.max
        )
    };
    let errors = |e: &BTreeMap<String, u64>| {
        if e.is_empty() {
            "none".to_string()
        } else {
            e.iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "machine:   {} × {}, {} MiB; load average {:.1} → {:.1}; router {}",
        r.machine.cpus,
        r.machine.cpu_model,
        r.machine.memory_mb,
        r.machine.load_average[0],
        r.machine.load_average[1],
        r.router
    );
    if r.machine.load_average[0] > r.machine.cpus as f64 {
        let _ = writeln!(
            out,
            "           (other work was competing for the CPU: treat the figures as pessimistic)"
        );
    }
    if let Some(b) = &r.baseline {
        let _ = writeln!(
            out,
            "baseline:  {:.0}/s bare HTTP ({} in {:.1} s); ack {}; errors {}",
            b.per_second,
            b.accepted,
            b.elapsed_secs,
            lat(&b.ack_latency_ms),
            errors(&b.errors)
        );
    }
    let i = &r.ingest;
    let _ = writeln!(
        out,
        "ingest:    {:.0}/s accepted ({} of {} in {:.1} s, offered {:.0}/s){}",
        i.per_second,
        i.accepted,
        i.sent,
        i.elapsed_secs,
        i.offered_per_second,
        r.ratio_to_baseline
            .map(|x| format!("; {:.1}% of the baseline", x * 100.0))
            .unwrap_or_default()
    );
    if let Some(p) = i.planned.filter(|&p| p > i.sent) {
        let _ = writeln!(
            out,
            "           {} of {p} planned webhooks not sent: the router fell behind the offered rate",
            p - i.sent
        );
    }
    let _ = writeln!(out, "           ack {}", lat(&i.ack_latency_ms));
    let _ = writeln!(out, "           errors {}", errors(&i.errors));
    if let Some(cpu) = i.process_cpu_secs {
        let line = cpu_line(cpu, i.writer_cpu_secs, 1, "", i.sent, "webhook");
        let _ = writeln!(out, "           {line}");
    }
    let e = &r.end_to_end;
    let _ = writeln!(
        out,
        "delivered: {:.0}/s ({} delivered, {} during sending, drained {:.2} s after); lost {}; duplicates {}; unacknowledged {}",
        e.per_second,
        e.delivered,
        e.delivered_during_send,
        e.drain_secs,
        e.lost,
        e.duplicates,
        e.unacknowledged
    );
    if let Some(n) = e.stream_reconnects {
        let _ = writeln!(
            out,
            "           over one SSE stream; reopened {n} times (resumed with Last-Event-ID)"
        );
    }
    let _ = writeln!(out, "           end to end {}", lat(&e.latency_ms));
    if let Some(b) = &r.backlog {
        let _ = writeln!(
            out,
            "backlog:   {:.0} deliveries/s draining {} queued ({} held in flight) in {:.2} s; {} delivered",
            b.drain_per_second, b.queued, b.held_in_flight, b.drain_secs, b.delivered
        );
        if let Some(cpu) = b.process_cpu_secs {
            let line = cpu_line(
                cpu,
                b.writer_cpu_secs,
                2,
                " during the drain",
                b.delivered,
                "delivery",
            );
            let _ = writeln!(out, "           {line}");
        }
    }
    if let Some(m) = &r.rss {
        let _ = writeln!(
            out,
            "rss:       peak {:.0} MiB (before the router {:.0} MiB, tool records {:.0} MiB) → router ≈ {:.0} MiB",
            m.peak_mb, m.before_router_mb, m.tool_records_mb, m.router_estimate_mb
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_signed_sized_and_spread_over_senders() {
        let pool = PayloadPool::build(10, 6144, b"s").unwrap();
        assert_eq!(pool.items.len(), 10);
        let mut logins = std::collections::HashSet::new();
        for p in &pool.items {
            assert!((6000..6300).contains(&p.body.len()), "{}", p.body.len());
            assert_eq!(
                p.signature.to_str().unwrap(),
                sign_github(b"s", &p.body).as_str()
            );
            let v: Value = serde_json::from_slice(&p.body).unwrap();
            logins.insert(v["sender"]["login"].as_str().unwrap().to_string());
        }
        assert_eq!(logins.len(), 10);
        assert_ne!(pool.delivery_id(1), pool.delivery_id(2));
    }

    #[test]
    fn sse_frames_give_each_event_id_once_its_frame_is_complete() {
        let a = Uuid::now_v7();
        let b = Uuid::now_v7();
        let long = "y".repeat(300);
        let stream = format!(
            "id: {a}\ndata: {{\"type\":\"event\",\"v\":\"{long}\"}}\n\ndata: {{\"type\":\"heartbeat\"}}\n\nid:{b}\r\ndata: {long}\r\n\r\n"
        );
        // Every split point: the ids come out in order, each once, at the frame's blank line.
        for cut in 0..stream.len() {
            let mut frames = SseFrames::default();
            let mut seen = Vec::new();
            frames.feed(&stream.as_bytes()[..cut], |id| seen.push(id));
            frames.feed(&stream.as_bytes()[cut..], |id| seen.push(id));
            assert_eq!(seen, vec![a, b], "cut at {cut}");
            assert_eq!(frames.last_id, Some(b));
            assert!(frames.pending.is_empty());
        }
        // A frame cut off before its blank line is not an event yet.
        let mut frames = SseFrames::default();
        let mut seen = Vec::new();
        frames.feed(format!("id: {a}\ndata: {{}}\n").as_bytes(), |id| {
            seen.push(id)
        });
        assert!(seen.is_empty());
        assert_eq!(frames.last_id, None);
    }

    #[test]
    fn cpu_fields_are_read_after_the_command_name() {
        let stat = "1 (a (b) c) S 0 1 2 3 4 5 6 7 8 9 250 50 0 0";
        assert_eq!(stat_cpu_secs(stat), Some(3.0));
    }
}
