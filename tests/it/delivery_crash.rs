//! Delivery across crashes and restarts of the real binary (API.md sections 1 and 7): kill -9
//! loses no acknowledged event's delivery, a scheduled retry keeps its time across a restart,
//! and SIGTERM with an attempt in flight exits 0 without losing it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use uuid::Uuid;

use crate::delivery::*;
use crate::receiver::*;
use crate::signed::*;
use crate::support::*;

/// Sends SIGTERM and waits (up to 20 s) for the exit; the exit code and how long it took.
async fn signal_term(server: &mut ChildServer) -> (Option<i32>, Duration) {
    let pid = server.child.id().expect("the child runs");
    let signalled = Instant::now();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = tokio::time::timeout(Duration::from_secs(20), server.child.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    (status.code(), signalled.elapsed())
}

/// Sends SIGTERM; asserts exit status 0 within 10 s.
async fn terminate(server: &mut ChildServer) {
    let (code, took) = signal_term(server).await;
    assert_eq!(code, Some(0), "exit code after SIGTERM");
    assert!(
        took < Duration::from_secs(10),
        "exited {took:?} after SIGTERM"
    );
}

/// The agent's concurrency in these tests: at most this many attempts are in flight at a kill.
const CONCURRENCY: usize = 16;

/// An agent at `url` and a route to it with `retry` on the server at `base`.
async fn agent_and_route(base: &str, url: &str, retry: serde_json::Value) {
    let admin = Admin::at(base);
    admin
        .create_agent(agent("a", url, json!({ "maxConcurrency": CONCURRENCY })))
        .await;
    admin
        .create_route(route("r", &["a"], retry, json!({})))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_burst_loses_no_acknowledged_delivery() {
    const TOTAL: usize = 500;
    let dir = tempfile::tempdir().unwrap();
    let rx = TestReceiver::start().await;
    let mut server = ChildServer::start(dir.path(), &[]).await;
    agent_and_route(&server.base, &rx.url("/a"), policy(5, "fixed", 200, 200)).await;

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    let acked = Arc::new(Mutex::new(Vec::<Uuid>::new()));
    let refused = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..32)
        .map(|_| {
            let (client, base, next) = (client.clone(), server.base.clone(), next.clone());
            let (acked, refused) = (acked.clone(), refused.clone());
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    if n >= TOTAL {
                        break;
                    }
                    let w = Webhook::github("push", gh_body(n));
                    match w.try_send_to(&client, &base).await {
                        Ok(a) if a.status == 200 => acked.lock().unwrap().push(a.accepted().id),
                        _ => {
                            refused.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            })
        })
        .collect();
    // Kill once half the burst is acknowledged and deliveries are under way.
    {
        let acked = acked.clone();
        wait_for(Duration::from_secs(30), || {
            let acked = acked.clone();
            async move { (acked.lock().unwrap().len() >= TOTAL / 2).then_some(()) }
        })
        .await;
    }
    let delivered_before_kill = rx.received("/a").len();
    server.child.start_kill().unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), server.child.wait())
        .await
        .expect("the child dies")
        .unwrap();
    assert!(!status.success(), "killed, not exited: {status:?}");
    for w in workers {
        w.await.unwrap();
    }
    let acked: BTreeSet<String> = acked.lock().unwrap().iter().map(Uuid::to_string).collect();
    let not_acked = refused.load(Ordering::SeqCst);
    assert!(
        not_acked > 0 && acked.len() < TOTAL,
        "the kill came after the burst ended"
    );
    assert!(
        delivered_before_kill > 0,
        "nothing was being delivered at the kill"
    );

    let _server = ChildServer::start(dir.path(), &[]).await;
    let got = poll(
        Duration::from_secs(30),
        "every acknowledged event reaches the agent",
        || async {
            let seen: BTreeSet<String> = rx
                .received("/a")
                .iter()
                .filter_map(|r| r.header("webhook-id").map(str::to_string))
                .collect();
            let missing = acked.difference(&seen).count();
            if missing == 0 {
                Ok(rx.received("/a"))
            } else {
                Err(json!({ "missing": missing, "acknowledged": acked.len() }))
            }
        },
    )
    .await;
    let mut times: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &got {
        *times.entry(r.header("webhook-id").unwrap()).or_default() += 1;
    }
    let duplicates: usize = times.values().map(|n| n - 1).sum();
    eprintln!(
        "kill -9: {} acknowledged, {not_acked} not, {} requests at the agent, {duplicates} duplicates",
        acked.len(),
        got.len()
    );
    // At-least-once: a repeat is allowed only for what was in flight (or its outcome not yet
    // recorded) at the kill, not for the whole backlog. Not yet recorded: the recorder's write
    // under way and what queued behind it; on PostgreSQL under a full test run a write can take
    // tens of milliseconds while the local agent answers at once (74 repeats were seen once; 16
    // to 44 when this test runs alone).
    assert!(
        duplicates <= 6 * CONCURRENCY,
        "{duplicates} deliveries repeated after a restart; only in-flight ones may be"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_retry_keeps_its_time_across_a_restart() {
    // The retry is due DELAY after the first attempt and the server restarts AWAY after it.
    // Kept, the retry comes at its time (or at once, should the restart take past it);
    // scheduled from scratch by the new process, it could come no sooner than DELAY after
    // that process started, AWAY past its time.
    const DELAY: i64 = 10_000;
    const AWAY: i64 = 5_000;
    let dir = tempfile::tempdir().unwrap();
    let rx = TestReceiver::start().await;
    rx.script("/a", [Reply::Status(500)]);
    let mut server = ChildServer::start(dir.path(), &[]).await;
    let fixed = policy(3, "fixed", DELAY as u64, DELAY as u64);
    agent_and_route(&server.base, &rx.url("/a"), fixed).await;
    let client = reqwest::Client::new();
    let id = post_routed_to(&client, &server.base, "push", 0).await;
    let d = Admin::at(&server.base).wait_status(id, "scheduled").await;
    assert_eq!(d["attempts"], 1, "{d}");
    let first = d["attemptLog"][0]["startedAt"]
        .as_i64()
        .unwrap_or_else(|| panic!("the first attempt's start: {d}"));
    let due = d["nextAttemptAt"]
        .as_i64()
        .unwrap_or_else(|| panic!("a scheduled retry has its time: {d}"));
    assert!(
        due >= first + DELAY,
        "the retry is due {} ms after the first attempt, the delay is {DELAY} ms: {d}",
        due - first
    );
    terminate(&mut server).await;
    // Down until AWAY after the first attempt (the clock is the condition).
    wait_for(Duration::from_secs(AWAY as u64 + 10), || async {
        (now_ms() >= first + AWAY).then_some(())
    })
    .await;

    let restarted = now_ms();
    let server = ChildServer::start(dir.path(), &[]).await;
    let admin = Admin::at(&server.base);
    // Until it falls due, the reloaded delivery waits for the same time.
    let d = admin.deliveries(id).await;
    assert_eq!(d.len(), 1, "{d:?}");
    if d[0]["attempts"] == 1 {
        assert_eq!(d[0]["status"], "scheduled", "{d:?}");
        assert_eq!(d[0]["nextAttemptAt"], due, "after the restart: {d:?}");
    }
    let d = poll(
        Duration::from_secs(60),
        "the retry after the restart",
        || async {
            match admin.deliveries(id).await.as_slice() {
                [one] if one["status"] == "delivered" => Ok(one.clone()),
                other => Err(Value::from(other.to_vec())),
            }
        },
    )
    .await;
    assert_eq!(d["attempts"], 2, "{d}");
    let log = d["attemptLog"].as_array().expect("attemptLog");
    assert_eq!(log.len(), 2, "{d}");
    assert_eq!(log[0]["statusCode"], 500, "{d}");
    assert_eq!(
        (&log[1]["attempt"], &log[1]["statusCode"]),
        (&json!(2), &json!(200)),
        "the attempt number continues: {d}"
    );
    let second = log[1]["startedAt"].as_i64().expect("startedAt");
    assert!(
        second >= due,
        "the retry came {} ms before its time",
        due - second
    );
    assert!(
        second < restarted + DELAY,
        "the retry came {} ms after the restart, a whole delay ({DELAY} ms): the backoff \
         restarted instead of keeping its time ({} ms after the restart)",
        second - restarted,
        due - restarted
    );
    let got = rx.received("/a");
    assert_eq!(got.len(), 2, "one failure, one retry");
    assert_eq!(got[1].header("webhook-id"), Some(id.to_string().as_str()));
    assert_eq!(got[1].header("x-delivery-attempt"), Some("2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_an_attempt_in_flight_exits_0_and_keeps_the_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let rx = TestReceiver::start().await;
    let hang = Duration::from_secs(1);
    rx.script("/a", [Reply::Hang(hang)]);
    let mut server = ChildServer::start(dir.path(), &[]).await;
    agent_and_route(&server.base, &rx.url("/a"), policy(5, "fixed", 200, 200)).await;
    let client = reqwest::Client::new();
    let id = post_routed_to(&client, &server.base, "push", 0).await;
    rx.wait_for("/a", 1, Duration::from_secs(10)).await;
    // The attempt is under way (the agent answers 200 after 1 s) when the signal comes.
    terminate(&mut server).await;

    // The drain let the attempt finish and wrote its outcome before the exit: the restarted
    // server finds the delivery delivered by that one attempt, and makes no other.
    let server = ChildServer::start(dir.path(), &[]).await;
    let d = Admin::at(&server.base).deliveries(id).await;
    assert_eq!(d.len(), 1, "{d:?}");
    let d = &d[0];
    assert_eq!(
        d["status"], "delivered",
        "the attempt in flight at SIGTERM: {d}"
    );
    assert_eq!(d["attempts"], 1, "{d}");
    let log = d["attemptLog"].as_array().expect("attemptLog");
    assert_eq!(log.len(), 1, "{d}");
    assert_eq!(log[0]["attempt"], 1, "{d}");
    assert_eq!(log[0]["statusCode"], 200, "{d}");
    assert!(
        log[0]["durationMs"]
            .as_u64()
            .is_some_and(|ms| ms + 50 >= hang.as_millis() as u64),
        "the attempt ran until the agent answered: {d}"
    );
    let got = rx.received("/a");
    assert_eq!(got.len(), 1, "the finished attempt was made again");
    assert_eq!(got[0].header("webhook-id"), Some(id.to_string().as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_an_attempt_hanging_past_the_drain_exits_in_time_and_hands_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let rx = TestReceiver::start().await;
    // The agent answers after 30 s and its timeout allows that: only the server can cut it short.
    rx.script("/a", [Reply::Hang(Duration::from_secs(30))]);
    let mut server = ChildServer::start(dir.path(), &[]).await;
    let admin = Admin::at(&server.base);
    admin
        .create_agent(agent("a", &rx.url("/a"), json!({ "timeoutMs": 30_000 })))
        .await;
    admin
        .create_route(route("r", &["a"], policy(5, "fixed", 200, 200), json!({})))
        .await;
    let client = reqwest::Client::new();
    let id = post_routed_to(&client, &server.base, "push", 0).await;
    rx.wait_for("/a", 1, Duration::from_secs(10)).await;
    let (code, took) = signal_term(&mut server).await;

    // Whatever the exit, the delivery must not be lost.
    let server = ChildServer::start(dir.path(), &[]).await;
    let d = Admin::at(&server.base).wait_status(id, "delivered").await;
    assert!(
        rx.received("/a").len() >= 2,
        "handed back and attempted again: {d}"
    );
    assert_eq!(code, Some(0), "exit code after SIGTERM");
    assert!(
        took < Duration::from_secs(10),
        "exited {took:?} after SIGTERM with an attempt in flight"
    );
}
