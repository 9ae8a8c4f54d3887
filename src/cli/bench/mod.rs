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
//! With `--deliver pull` one invocation makes two measured runs of the same load: push
//! deliveries first, then `--consumers` consumers leasing a pull agent's deliveries, each run on
//! a router of its own (in process), and reports both.
//!
//! `args.rs` is the command line; `payload.rs` makes the webhooks, `load.rs` sends them,
//! `receiver.rs` catches the deliveries (`pull.rs` pulls them); `baseline.rs` and `measure.rs`
//! are the two phases, and `report.rs` what they found; `system.rs` reads the CPU and memory
//! figures from `/proc`.

mod args;
mod baseline;
mod load;
mod measure;
mod payload;
mod pull;
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
pub use self::report::{
    Backlog, EndToEnd, Latency, Machine, Phase, Pull, PushRun, Report, Rss, Settings, render,
};
use self::system::{load_average, machine, rss_bytes};
use crate::config::{Config, Secret};

/// `event-router bench`: runs and prints; exit 1 if an acknowledged event was lost (in either
/// run of `--deliver pull`).
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
            let push_lost = report.push.as_ref().map_or(0, |p| p.end_to_end.lost);
            if report.end_to_end.lost > 0 || push_lost > 0 {
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

    let keys = Keys {
        github_secret: &github_secret,
        admin_key: &admin_key,
    };
    // `--deliver pull`: the same load over push deliveries first, on a router of its own.
    let push = if args.deliver == DeliverVia::Pull {
        say("push deliveries first (the same load), then the pull consumers".into());
        let push_args = BenchArgs {
            deliver: DeliverVia::Http,
            ..args.clone()
        };
        let (m, rss) = run_phase(
            &push_args,
            Some("push"),
            &pool,
            &plan,
            events,
            keys,
            progress,
        )
        .await
        .context("the push run")?;
        say(format!(
            "push: {:.0} delivered/s, end to end p50 {:.2} ms, p99 {:.2} ms",
            m.end_to_end.per_second, m.end_to_end.latency_ms.p50, m.end_to_end.latency_ms.p99
        ));
        Some(PushRun {
            ratio_to_baseline: ratio(&baseline, &m.ingest),
            ingest: m.ingest,
            end_to_end: m.end_to_end,
            rss,
        })
    } else {
        None
    };
    let label = (args.deliver == DeliverVia::Pull).then_some("pull");
    let pool = match push {
        Some(_) => Arc::new(pool.with_fresh_ids()),
        None => pool,
    };
    let (measured, rss) = run_phase(args, label, &pool, &plan, events, keys, progress).await?;
    let Measured {
        ingest,
        end_to_end,
        backlog,
        pull,
        ..
    } = measured;
    let ratio_to_baseline = ratio(&baseline, &ingest);
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
        pull,
        push,
    })
}

/// Router ingest ÷ the baseline's answers per second.
fn ratio(baseline: &Option<Phase>, ingest: &Phase) -> Option<f64> {
    baseline
        .as_ref()
        .filter(|b| b.per_second > 0.0)
        .map(|b| ingest.per_second / b.per_second)
}

/// The secrets the tool signs and administers with.
#[derive(Clone, Copy)]
struct Keys<'a> {
    github_secret: &'a str,
    admin_key: &'a str,
}

/// One measured run: the receiver, the router (started here unless `--router`), the load and
/// the drain. `label` names the run when one invocation makes two (`--deliver pull`): an
/// in-process router then gets a data dir of its own per run (`--data-dir`/`label`).
async fn run_phase(
    args: &BenchArgs,
    label: Option<&str>,
    pool: &Arc<PayloadPool>,
    plan: &LoadPlan,
    events: Option<u64>,
    keys: Keys<'_>,
    progress: bool,
) -> anyhow::Result<(Measured, Option<Rss>)> {
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
            let (data_dir, remove_dir) = match (&args.data_dir, label) {
                (Some(d), None) => (d.clone(), false),
                (Some(d), Some(label)) => (d.join(label), false),
                (None, _) => (
                    std::env::temp_dir().join(format!(
                        "event-router-bench-{}{}",
                        Uuid::new_v4().simple(),
                        label.map(|l| format!("-{l}")).unwrap_or_default()
                    )),
                    true,
                ),
            };
            let mut cfg = Config {
                data_dir: data_dir.clone(),
                listen: "127.0.0.1:0".parse().expect("a valid address"),
                admin_api_key: Some(Secret(keys.admin_key.to_string())),
                // The senders are spread over `identifiers` anyway; keep the inbound limit from
                // refusing a long run (the limiter is still consulted on every webhook).
                default_rate_limit: 1_000_000_000,
                ..Config::default()
            };
            if let Some(github) = cfg.sources.get_mut("github") {
                github.secret = Some(Secret(keys.github_secret.to_string()));
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
        keys.admin_key,
        pool,
        plan,
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
    let measured = outcome?;
    let rss = match (rss_before, measured.peak_rss) {
        (Some(before), Some(peak)) if args.router.is_none() => {
            let mb = |b: u64| b as f64 / (1024.0 * 1024.0);
            Some(Rss {
                peak_mb: mb(peak),
                before_router_mb: mb(before),
                tool_records_mb: mb(measured.records),
                router_estimate_mb: mb(peak
                    .saturating_sub(before)
                    .saturating_sub(measured.records)),
            })
        }
        _ => None,
    };
    Ok((measured, rss))
}
