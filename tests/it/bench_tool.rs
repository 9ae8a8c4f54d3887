//! The load tool (`event-router bench`) end to end on a tiny run: its own router in process, its
//! own receiver, and a report that accounts for every acknowledged event.

use std::time::Duration;

use clap::Parser as _;
use event_router::cli::bench::{self, BenchArgs};

/// Runs `bench` with `args` (plus `--no-baseline` and a fresh data dir), in process, within
/// `limit`, and returns its report as JSON.
async fn run_bench(args: &[&str], limit: Duration) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let mut argv = vec![
        "bench",
        "--no-baseline",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ];
    argv.extend_from_slice(args);
    let args = BenchArgs::try_parse_from(argv).unwrap();
    let report = tokio::time::timeout(limit, bench::run(&args, false))
        .await
        .expect("the bench run finished in time")
        .expect("the bench run succeeded");
    serde_json::to_value(&report).unwrap()
}

/// `run_bench` against the router at `base`, the tool signing with `secret`.
async fn run_bench_against(
    base: &str,
    secret: &str,
    args: &[&str],
    limit: Duration,
) -> serde_json::Value {
    let mut argv = vec![
        "--router",
        base,
        "--admin-key",
        crate::support::ADMIN_KEY,
        "--github-secret",
        secret,
    ];
    argv.extend_from_slice(args);
    run_bench(&argv, limit).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_run_loses_nothing_and_reports_every_figure() {
    let v = run_bench(
        &[
            "-n",
            "200",
            "--concurrency",
            "8",
            "--identifiers",
            "50",
            "--drain-timeout",
            "10",
        ],
        Duration::from_secs(30),
    )
    .await;

    assert_eq!(v["router"], "in-process");
    assert_eq!(v["settings"]["events"], 200);
    assert_eq!(v["settings"]["concurrency"], 8);
    assert!(v["baseline"].is_null(), "{v}");
    assert!(v["ratioToBaseline"].is_null(), "{v}");

    let ingest = &v["ingest"];
    assert_eq!(ingest["sent"], 200, "{v}");
    assert_eq!(ingest["accepted"], 200, "{v}");
    assert_eq!(ingest["duplicates"], 0, "{v}");
    assert_eq!(ingest["errors"], serde_json::json!({}), "{v}");
    assert!(ingest["perSecond"].as_f64().unwrap() > 0.0, "{v}");
    for q in ["p50", "p95", "p99", "max", "mean"] {
        assert!(
            ingest["ackLatencyMs"][q].as_f64().unwrap() > 0.0,
            "{q}: {v}"
        );
    }

    let e2e = &v["endToEnd"];
    assert_eq!(e2e["delivered"], 200, "{v}");
    assert_eq!(e2e["lost"], 0, "{v}");
    assert_eq!(e2e["unacknowledged"], 0, "{v}");
    assert!(e2e["perSecond"].as_f64().unwrap() > 0.0, "{v}");
    assert!(e2e["latencyMs"]["p50"].as_f64().unwrap() > 0.0, "{v}");
    assert!(e2e["latencyMs"]["p99"].as_f64().unwrap() > 0.0, "{v}");

    let rss = &v["rss"];
    assert!(rss["peakMb"].as_f64().unwrap() > 0.0, "{v}");
    assert!(rss["routerEstimateMb"].is_number(), "{v}");
    assert!(v["machine"]["cpus"].as_u64().unwrap() >= 1, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_run_holds_then_drains_every_delivery() {
    let v = run_bench(
        &[
            "-n",
            "300",
            "--concurrency",
            "8",
            "--identifiers",
            "50",
            "--agent-concurrency",
            "16",
            "--backlog",
            "--drain-timeout",
            "20",
        ],
        Duration::from_secs(60),
    )
    .await;

    assert_eq!(v["settings"]["backlog"], true, "{v}");
    assert_eq!(v["ingest"]["accepted"], 300, "{v}");
    let e2e = &v["endToEnd"];
    assert_eq!(e2e["delivered"], 300, "{v}");
    assert_eq!(e2e["lost"], 0, "{v}");
    assert_eq!(e2e["duplicates"], 0, "{v}");
    assert_eq!(e2e["unacknowledged"], 0, "{v}");
    // Nothing was answered while sending: every delivery arrived after the release.
    assert_eq!(e2e["deliveredDuringSend"], 0, "{v}");

    let backlog = &v["backlog"];
    assert_eq!(backlog["queued"], 300, "{v}");
    // The agent's whole `maxConcurrency` was in flight, held by the receiver.
    assert_eq!(backlog["heldInFlight"], 16, "{v}");
    assert_eq!(backlog["delivered"], 300, "{v}");
    assert!(backlog["drainSecs"].as_f64().unwrap() > 0.0, "{v}");
    assert!(backlog["drainPerSecond"].as_f64().unwrap() > 0.0, "{v}");
    assert!(backlog["processCpuSecs"].is_number(), "{v}");
    assert!(backlog["writerCpuSecs"].is_number(), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_regular_run_reports_no_backlog() {
    let v = run_bench(&["-n", "20", "--concurrency", "4"], Duration::from_secs(60)).await;
    assert!(v["backlog"].is_null(), "{v}");
    assert_eq!(v["settings"]["backlog"], false, "{v}");
    assert_eq!(v["settings"]["deliver"], "http", "{v}");
    assert_eq!(
        v["endToEnd"].get("streamReconnects"),
        Some(&serde_json::Value::Null),
        "reported, and null for push deliveries: {v}"
    );
    assert_eq!(v["endToEnd"]["lost"], 0, "{v}");
    assert!(v["pull"].is_null(), "{v}");
    assert!(v["push"].is_null(), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_run_measures_push_then_pull_consumers_and_loses_nothing() {
    let v = run_bench(
        &[
            "-n",
            "300",
            "--concurrency",
            "8",
            "--identifiers",
            "50",
            "--deliver",
            "pull",
            "--consumers",
            "3",
            "--pull-batch",
            "50",
            "--drain-timeout",
            "20",
        ],
        Duration::from_secs(120),
    )
    .await;

    assert_eq!(v["settings"]["deliver"], "pull", "{v}");
    // The push run of the same load came first, and lost nothing either.
    let push = &v["push"];
    assert_eq!(push["ingest"]["accepted"], 300, "{v}");
    assert_eq!(push["endToEnd"]["delivered"], 300, "{v}");
    assert_eq!(push["endToEnd"]["lost"], 0, "{v}");
    assert!(push["endToEnd"]["perSecond"].as_f64().unwrap() > 0.0, "{v}");
    assert!(
        push["endToEnd"]["latencyMs"]["p99"].as_f64().unwrap() > 0.0,
        "{v}"
    );
    assert!(push["rss"]["peakMb"].as_f64().unwrap() > 0.0, "{v}");

    // The pull run: every accepted event acked exactly once.
    assert_eq!(v["ingest"]["accepted"], 300, "{v}");
    let e2e = &v["endToEnd"];
    assert_eq!(e2e["delivered"], 300, "{v}");
    assert_eq!(e2e["lost"], 0, "{v}");
    assert_eq!(e2e["duplicates"], 0, "{v}");
    assert_eq!(e2e["unacknowledged"], 0, "{v}");
    assert!(e2e["perSecond"].as_f64().unwrap() > 0.0, "{v}");
    assert!(e2e["latencyMs"]["p50"].as_f64().unwrap() > 0.0, "{v}");
    assert!(e2e["latencyMs"]["p99"].as_f64().unwrap() > 0.0, "{v}");
    assert_eq!(e2e["streamReconnects"], serde_json::Value::Null, "{v}");

    let pull = &v["pull"];
    assert_eq!(pull["consumers"], 3, "{v}");
    assert_eq!(pull["batch"], 50, "{v}");
    assert_eq!(pull["waitMs"], 1000, "{v}");
    assert_eq!(pull["acked"], 300, "{v}");
    assert_eq!(pull["ackExpired"], 0, "{v}");
    assert_eq!(pull["ackErrors"], 0, "{v}");
    assert_eq!(pull["pollErrors"], 0, "{v}");
    assert!(pull["leased"].as_u64().unwrap() >= 300, "{v}");
    assert!(
        pull["polls"].as_u64().unwrap() >= 6,
        "300 in batches of 50 at most: {v}"
    );
    let mean = pull["meanBatch"].as_f64().unwrap();
    assert!(mean > 0.0 && mean <= 50.0, "{v}");
    assert!(pull["ackedPerSecond"].as_f64().unwrap() > 0.0, "{v}");
    assert!(pull["ackLatencyMs"]["p99"].as_f64().unwrap() > 0.0, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_run_gets_every_event_over_one_sse_stream() {
    let v = run_bench(
        &[
            "-n",
            "300",
            "--concurrency",
            "8",
            "--identifiers",
            "50",
            "--deliver",
            "sse",
            "--drain-timeout",
            "20",
        ],
        Duration::from_secs(60),
    )
    .await;

    assert_eq!(v["settings"]["deliver"], "sse", "{v}");
    assert_eq!(v["ingest"]["accepted"], 300, "{v}");
    let e2e = &v["endToEnd"];
    assert_eq!(e2e["delivered"], 300, "{v}");
    assert_eq!(e2e["lost"], 0, "{v}");
    assert_eq!(e2e["unacknowledged"], 0, "{v}");
    assert!(e2e["latencyMs"]["p99"].as_f64().unwrap() > 0.0, "{v}");
    assert_eq!(
        e2e["streamReconnects"], 0,
        "an in-process run keeps up: {v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_off_as_a_slow_consumer_resumes_and_loses_nothing() {
    // A one-message stream buffer: two events published before the stream's task takes the
    // first overflow it (with 32 senders, practically certain), and the router closes the
    // stream. The tool reopens it with Last-Event-ID, once per overflow, and misses nothing.
    let app = crate::support::TestApp::spawn_with(|c| c.stream_buffer = 1).await;
    let v = run_bench_against(
        &app.base,
        crate::support::GITHUB_SECRET,
        &[
            "-n",
            "600",
            "--concurrency",
            "32",
            "--identifiers",
            "50",
            "--deliver",
            "sse",
            "--drain-timeout",
            "30",
        ],
        Duration::from_secs(90),
    )
    .await;

    assert_eq!(v["ingest"]["accepted"], 600, "{v}");
    let e2e = &v["endToEnd"];
    let overflows = app
        .state()
        .hub
        .stats
        .overflows
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(e2e["streamReconnects"].as_u64(), Some(overflows), "{v}");
    assert_eq!(e2e["delivered"], 600, "{v}");
    assert_eq!(e2e["lost"], 0, "{v}");
    // One node on SQLite resumes exactly where the stream ended. On PostgreSQL (the whole suite
    // with EVENT_ROUTER_TEST_DATABASE_URL) a stream's replay runs past now to cover other
    // nodes' late commits, so a resume may repeat events: at-least-once, as streaming.md says.
    if crate::support::backend() == "sqlite" {
        assert_eq!(e2e["duplicates"], 0, "{v}");
    }
    assert_eq!(e2e["unacknowledged"], 0, "{v}");
    // The tool removed its agent and route from the router it was pointed at.
    let (status, agents) = app.admin_get("/admin/agents").await;
    assert_eq!(status, 200, "{agents}");
    assert!(!agents.to_string().contains("bench-agent-"), "{agents}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_webhooks_are_counted_by_kind_and_nothing_is_lost() {
    // The router checks signatures with its own secret; the tool signs with another.
    let app = crate::support::TestApp::spawn().await;
    let v = run_bench_against(
        &app.base,
        "not-the-routers-secret",
        &[
            "-n",
            "40",
            "--concurrency",
            "4",
            "--identifiers",
            "5",
            "--drain-timeout",
            "5",
        ],
        Duration::from_secs(60),
    )
    .await;

    let ingest = &v["ingest"];
    assert_eq!(ingest["sent"], 40, "{v}");
    assert_eq!(ingest["accepted"], 0, "{v}");
    assert_eq!(ingest["errors"], serde_json::json!({"http_401": 40}), "{v}");
    let e2e = &v["endToEnd"];
    assert_eq!(e2e["delivered"], 0, "{v}");
    assert_eq!(e2e["lost"], 0, "{v}");
    assert_eq!(e2e["unacknowledged"], 0, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_run_against_one_router_sends_its_second_half_as_new_webhooks() {
    // Both halves go to the same router: the pull half's delivery ids must be new, or the
    // router would answer them as duplicates and the pull consumers would get nothing.
    let app = crate::support::TestApp::spawn().await;
    let v = run_bench_against(
        &app.base,
        crate::support::GITHUB_SECRET,
        &[
            "-n",
            "200",
            "--concurrency",
            "8",
            "--identifiers",
            "20",
            "--deliver",
            "pull",
            "--consumers",
            "2",
            "--drain-timeout",
            "20",
        ],
        Duration::from_secs(120),
    )
    .await;

    for half in [&v["push"], &v] {
        assert_eq!(half["ingest"]["accepted"], 200, "{v}");
        assert_eq!(half["ingest"]["duplicates"], 0, "{v}");
        assert_eq!(half["endToEnd"]["delivered"], 200, "{v}");
        assert_eq!(half["endToEnd"]["lost"], 0, "{v}");
    }
    assert_eq!(v["pull"]["acked"], 200, "{v}");
    // The tool removed its agents and routes from the router it was pointed at.
    let (status, agents) = app.admin_get("/admin/agents").await;
    assert_eq!(status, 200, "{agents}");
    assert!(!agents.to_string().contains("bench-agent-"), "{agents}");
}
