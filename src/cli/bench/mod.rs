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
//!
//! `args.rs` is the command line; `payload.rs` makes the webhooks, `load.rs` sends them,
//! `receiver.rs` catches the deliveries; `baseline.rs` and `measure.rs` are the two phases, and
//! `report.rs` what they found; `system.rs` reads the CPU and memory figures from `/proc`.

mod args;
mod baseline;
mod load;
mod measure;
mod payload;
mod receiver;
mod report;
mod system;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::net::TcpListener;
use uuid::Uuid;

pub use self::args::{BenchArgs, DeliverVia};
use self::baseline::run_baseline;
use self::load::LoadPlan;
use self::measure::{Measured, measure_router};
use self::payload::PayloadPool;
use self::receiver::Receiver;
pub use self::report::{Backlog, EndToEnd, Latency, Machine, Phase, Report, Rss, Settings, render};
use self::system::{load_average, machine, rss_bytes};
use crate::config::{Config, Secret};

/// `event-router bench`: runs and prints; exit 1 if an acknowledged event was lost.
pub fn main(args: BenchArgs) -> ExitCode {
    let level = std::env::var("LOG_LEVEL").unwrap_or_else(|_| "warn".into());
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
    // The router under load traces as `serve` does when the `OTEL_*` variables ask for it.
    let telemetry = {
        let _rt = rt.enter();
        crate::telemetry::init(&level, crate::config::LogFormat::Text)
    };
    let outcome = rt.block_on(run(&args, !args.json));
    telemetry.shutdown();
    match outcome {
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
        args.ordering_keys,
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
            ordering_keys: args.ordering_keys,
            payload_condition: args.payload_condition,
            routes: args.routes,
        },
        baseline,
        ingest,
        ratio_to_baseline,
        end_to_end,
        backlog,
        rss,
    })
}
