//! The load tool (`event-router bench`) end to end on a tiny run: its own router in process, its
//! own receiver, and a report that accounts for every acknowledged event.

use std::time::Duration;

use clap::Parser as _;
use event_router::bench::{self, BenchArgs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_run_loses_nothing_and_reports_every_figure() {
    let dir = tempfile::tempdir().unwrap();
    let args = BenchArgs::try_parse_from([
        "bench",
        "-n",
        "200",
        "--concurrency",
        "8",
        "--no-baseline",
        "--identifiers",
        "50",
        "--drain-timeout",
        "10",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ])
    .unwrap();
    let report = tokio::time::timeout(Duration::from_secs(30), bench::run(&args, false))
        .await
        .expect("the bench run finished in time")
        .expect("the bench run succeeded");
    let v = serde_json::to_value(&report).unwrap();

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
