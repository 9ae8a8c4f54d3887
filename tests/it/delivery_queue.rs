//! The delivery queue (API.md sections 3, 5 and 7): route priority, one agent never holding up
//! another, `maxConcurrency`, agent `rateLimit` pacing, `GET /queue/stats`, and `queue_full`.

use std::collections::BTreeSet;
use std::time::Duration;

use futures_util::future::join_all;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::time::Instant;
use uuid::Uuid;

use crate::delivery::*;
use crate::receiver::*;
use crate::signed::*;
use crate::support::*;

fn webhook_ids(got: &[Received]) -> Vec<String> {
    got.iter()
        .map(|r| r.header("webhook-id").unwrap_or_default().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_is_delivered_larger_priority_first() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let admin = Admin::of(&app);
    // The blocker is held until the whole backlog is queued behind it, however long posting
    // takes.
    let gate = Gate::default();
    rx.script("/p", [Reply::Held(gate.clone())]);
    admin
        .create_agent(agent(
            "p",
            &rx.url("/p"),
            json!({ "maxConcurrency": 1, "timeoutMs": 300_000 }),
        ))
        .await;
    let retry = policy(1, "fixed", 100, 100);
    let mut low = only_type("low");
    low["priority"] = json!(1);
    let mut high = only_type("high");
    high["priority"] = json!(10);
    admin
        .create_route(route("low", &["p"], retry.clone(), low))
        .await;
    admin.create_route(route("high", &["p"], retry, high)).await;

    // The first delivery occupies the agent's only slot; the rest queue behind it.
    let blocker = post_routed(&app, "low", 0).await;
    let first = rx.wait_for("/p", 1, Duration::from_secs(10)).await;
    let mut lows = Vec::new();
    let mut highs = Vec::new();
    for n in 1..=4 {
        lows.push(post_routed(&app, "low", n).await.to_string());
        highs.push(post_routed(&app, "high", n).await.to_string());
    }
    assert_eq!(first.len(), 1);
    assert_eq!(
        rx.received("/p").len(),
        1,
        "a delivery went past the blocker while it held the agent's only slot"
    );
    gate.open();
    let got = rx.wait_for("/p", 9, Duration::from_secs(30)).await;
    let order = webhook_ids(&got);
    assert_eq!(order[0], blocker.to_string());
    let (h, l) = order[1..].split_at(4);
    let mut seen_high = h.to_vec();
    seen_high.sort();
    highs.sort();
    assert_eq!(
        seen_high, highs,
        "after the blocker, every priority-10 delivery comes before any priority-1 one"
    );
    let mut seen_low = l.to_vec();
    seen_low.sort();
    lows.sort();
    assert_eq!(seen_low, lows);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_agent_does_not_hold_up_another() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let admin = Admin::of(&app);
    // Held until the end: nothing the stuck agent was sent is answered while the other agent
    // receives everything.
    let gate = Gate::default();
    rx.set_default("/stuck", Reply::Held(gate.clone()));
    admin
        .create_agent(agent(
            "stuck",
            &rx.url("/stuck"),
            json!({ "timeoutMs": 300_000 }),
        ))
        .await;
    admin
        .create_agent(agent("fine", &rx.url("/fine"), json!({})))
        .await;
    admin
        .create_route(route(
            "both",
            &["stuck", "fine"],
            policy(2, "fixed", 100, 100),
            json!({}),
        ))
        .await;
    let mut posted = BTreeSet::new();
    for n in 0..24 {
        posted.insert(post_routed(&app, "push", n).await.to_string());
    }
    // The stuck agent has its default concurrency (16) in flight, none of it answered.
    let stuck = rx.wait_for("/stuck", 16, Duration::from_secs(30)).await;
    let got = rx.wait_for("/fine", 24, Duration::from_secs(30)).await;
    let fine: BTreeSet<String> = got
        .iter()
        .map(|r| r.header("webhook-id").unwrap().to_string())
        .collect();
    assert_eq!(fine, posted, "the healthy agent got every event once");
    assert_eq!(got.len(), 24);
    assert_eq!(
        (stuck.len(), rx.received("/stuck").len()),
        (16, 16),
        "the stuck agent has more than its maxConcurrency (16) in flight"
    );
    let stats = admin.stats().await;
    assert_eq!(
        stats["byAgent"]["stuck"]["inFlight"], 16,
        "the stuck agent's attempts are still in flight: {stats}"
    );
    gate.open();
    let stuck_ids: Vec<Uuid> = posted.iter().map(|i| i.parse().unwrap()).collect();
    for id in stuck_ids {
        admin.wait_all_status(id, 2, "delivered").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrency_bounds_the_requests_in_flight() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let admin = Admin::of(&app);
    let hang = Duration::from_millis(300);
    rx.set_default("/c", Reply::Hang(hang));
    admin
        .create_agent(agent("c", &rx.url("/c"), json!({ "maxConcurrency": 2 })))
        .await;
    admin
        .create_route(route("r", &["c"], policy(1, "fixed", 100, 100), json!({})))
        .await;
    let ids = join_all((0..6).map(|n| post_routed(&app, "push", n))).await;
    let got = rx.wait_for("/c", 6, Duration::from_secs(10)).await;
    // Each request is in flight for at least `hang` after it arrives.
    let window = hang - Duration::from_millis(50);
    for r in &got {
        let overlapping = got
            .iter()
            .filter(|o| o.at <= r.at && r.at - o.at < window)
            .count();
        assert!(
            overlapping <= 2,
            "{overlapping} requests in flight at once with maxConcurrency 2 (arrivals {:?})",
            arrivals(&got)
        );
    }
    let span = got.last().unwrap().at - got[0].at;
    assert!(
        span >= 2 * window,
        "6 requests of 300 ms, 2 at a time, in {span:?}"
    );
    for id in ids {
        admin.wait_status(id, "delivered").await;
    }
}

/// Arrival times in ms from the first.
fn arrivals(got: &[Received]) -> Vec<u128> {
    got.iter().map(|r| (r.at - got[0].at).as_millis()).collect()
}

/// An agent limited to 2 deliveries per second, six events at once; the arrivals.
async fn paced_six() -> (TestApp, Vec<Received>, Vec<Uuid>) {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let admin = Admin::of(&app);
    admin
        .create_agent(agent(
            "paced",
            &rx.url("/r"),
            json!({ "rateLimit": { "limit": 2, "window": 1000 } }),
        ))
        .await;
    admin
        .create_route(route(
            "r",
            &["paced"],
            policy(1, "fixed", 100, 100),
            json!({}),
        ))
        .await;
    let ids = join_all((0..6).map(|n| post_routed(&app, "push", n))).await;
    let got = rx.wait_for("/r", 6, Duration::from_secs(10)).await;
    (app, got, ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_rate_limit_paces_and_drops_nothing() {
    let (app, got, ids) = paced_six().await;
    let at = arrivals(&got);
    // 2 per 1000 ms: the k-th delivery (0-based) no sooner than (k - 1) × 500 ms after the first.
    for (k, t) in at.iter().enumerate().skip(2) {
        let earliest = (k as u128 - 1) * 500;
        assert!(
            *t + 20 >= earliest,
            "arrivals {at:?} ms: #{k} before {earliest} ms"
        );
    }
    assert!(at[5] >= 1950, "6 deliveries at 2/s took only {} ms", at[5]);
    assert!(at[5] <= 5000, "pacing is far too slow: {at:?}");
    let admin = Admin::of(&app);
    for id in ids {
        admin.wait_status(id, "delivered").await;
    }
    let mut seen = webhook_ids(&got);
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 6, "each delivery exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_rate_limit_never_exceeds_limit_within_a_window() {
    let (_app, got, _) = paced_six().await;
    let at = arrivals(&got);
    // Any span shorter than the window (100 ms of slack) holds at most `limit` deliveries.
    for (i, t) in at.iter().enumerate() {
        let within = at[i..].iter().filter(|u| **u < t + 900).count();
        assert!(
            within <= 2,
            "{within} deliveries within 900 ms from #{i} with limit 2 per 1000 ms: arrivals {at:?} ms"
        );
    }
}

const STATS_KEYS: [&str; 11] = [
    "acked",
    "byAgent",
    "byPriority",
    "deadLettered",
    "delivered",
    "inFlight",
    "leased",
    "oldestPendingAgeMs",
    "pending",
    "scheduled",
    "superseded",
];

#[tokio::test]
async fn queue_stats_of_an_idle_server() {
    let app = TestApp::spawn().await;
    let v = Admin::of(&app).stats().await;
    assert_eq!(keys(&v), STATS_KEYS, "{v}");
    for k in [
        "pending",
        "inFlight",
        "scheduled",
        "deadLettered",
        "delivered",
        "leased",
        "acked",
    ] {
        assert_eq!(v[k], 0, "{k}: {v}");
    }
    assert!(
        v["oldestPendingAgeMs"] == 0 || v["oldestPendingAgeMs"].is_null(),
        "{v}"
    );
    assert_eq!(v["byPriority"], json!({}), "{v}");
    assert_eq!(v["byAgent"], json!({}), "{v}");
    let r = app
        .client
        .get(app.url("/queue/stats"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "the queue figures need the admin key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_stats_count_each_state() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let admin = Admin::of(&app);
    rx.set_default("/flaky", Reply::Status(500));
    rx.set_default("/slow", Reply::Hang(Duration::from_secs(5)));
    let closed = format!("http://127.0.0.1:{}/x", closed_port());
    admin
        .create_agent(agent("ok", &rx.url("/ok"), json!({})))
        .await;
    admin
        .create_agent(agent("flaky", &rx.url("/flaky"), json!({})))
        .await;
    admin.create_agent(agent("gone", &closed, json!({}))).await;
    admin
        .create_agent(agent(
            "slow",
            &rx.url("/slow"),
            json!({ "maxConcurrency": 1 }),
        ))
        .await;
    let with_priority = |t: &str, p: i64| {
        let mut x = only_type(t);
        x["priority"] = json!(p);
        x
    };
    let quick = policy(1, "fixed", 100, 100);
    admin
        .create_route(route(
            "r-ok",
            &["ok"],
            quick.clone(),
            with_priority("ok", 0),
        ))
        .await;
    admin
        .create_route(route(
            "r-flaky",
            &["flaky"],
            policy(3, "fixed", 60_000, 60_000),
            with_priority("flaky", 5),
        ))
        .await;
    admin
        .create_route(route(
            "r-gone",
            &["gone"],
            quick.clone(),
            with_priority("gone", 3),
        ))
        .await;
    admin
        .create_route(route("r-slow", &["slow"], quick, with_priority("slow", 7)))
        .await;

    let started = Instant::now();
    for n in 0..3 {
        post_routed(&app, "slow", n).await;
    }
    let slow_posted = Instant::now();
    let ok: Vec<Uuid> = vec![
        post_routed(&app, "ok", 0).await,
        post_routed(&app, "ok", 1).await,
    ];
    let flaky = post_routed(&app, "flaky", 0).await;
    let gone = post_routed(&app, "gone", 0).await;
    for id in &ok {
        admin.wait_status(*id, "delivered").await;
    }
    admin.wait_status(flaky, "scheduled").await;
    admin.wait_status(gone, "dead").await;

    // Expected: slow 1 in flight + 2 pending, flaky 1 scheduled, gone 1 dead, ok 2 delivered.
    let (v, youngest, oldest) = poll(Duration::from_secs(10), "queue stats", || async {
        // The pending deliveries were created between `started` and `slow_posted`.
        let youngest = slow_posted.elapsed().as_millis() as u64;
        let v = admin.stats().await;
        let oldest = started.elapsed().as_millis() as u64;
        let settled = v["pending"] == 2
            && v["inFlight"] == 1
            && v["scheduled"] == 1
            && v["deadLettered"] == 1
            && v["delivered"] == 2
            && v["oldestPendingAgeMs"].as_u64().is_some_and(|a| a >= 300);
        if settled {
            Ok((v, youngest, oldest))
        } else {
            Err(v)
        }
    })
    .await;
    assert_eq!(keys(&v), STATS_KEYS, "{v}");
    let age = v["oldestPendingAgeMs"].as_u64().unwrap();
    assert!(
        age + 5 >= youngest && age <= oldest + 5,
        "oldestPendingAgeMs {age}, but the oldest pending delivery is {youngest}..{oldest} ms old"
    );
    // Only deliveries still queued count by priority: 7 (slow) and 5 (flaky), not the
    // delivered (0) or dead (3) ones.
    let by_p = v["byPriority"]
        .as_object()
        .expect("byPriority is an object");
    let mut ps: Vec<&str> = by_p.keys().map(String::as_str).collect();
    ps.sort();
    assert_eq!(ps, ["5", "7"], "{v}");
    assert_eq!(by_p["5"], 1, "{v}");
    assert!(
        by_p["7"] == 2 || by_p["7"] == 3,
        "priority 7 holds 2 pending (+1 in flight): {v}"
    );
    let by_a = v["byAgent"].as_object().expect("byAgent is an object");
    let mut agents: Vec<&str> = by_a.keys().map(String::as_str).collect();
    agents.sort();
    assert_eq!(agents, ["flaky", "slow"], "{v}");
    let expect = |a: &str, pending: u64, in_flight: u64, scheduled: u64| match &by_a[a] {
        Value::Number(n) => assert_eq!(n.as_u64(), Some(pending + in_flight + scheduled), "{v}"),
        o => {
            assert_eq!(o["pending"], pending, "{a}: {v}");
            assert_eq!(o["inFlight"], in_flight, "{a}: {v}");
            assert_eq!(o["scheduled"], scheduled, "{a}: {v}");
        }
    };
    expect("slow", 2, 1, 0);
    expect("flaky", 0, 0, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_with_503_and_stores_nothing() {
    let app = TestApp::spawn_with(|c| c.max_queue_size = 3).await;
    let rx = TestReceiver::start().await;
    let admin = Admin::of(&app);
    // Long enough that nothing finishes while the four webhooks are posted.
    rx.set_default("/h", Reply::Hang(Duration::from_millis(2500)));
    admin
        .create_agent(agent("h", &rx.url("/h"), json!({})))
        .await;
    admin
        .create_route(route("r", &["h"], policy(1, "fixed", 100, 100), json!({})))
        .await;
    let mut accepted = Vec::new();
    for n in 0..3 {
        accepted.push(post_routed(&app, "push", n).await);
    }
    let refused = Webhook::github("push", gh_body(3));
    let a = refused.send(&app).await;
    a.refused(503, "queue_full");
    let retry_after = a.header("retry-after").unwrap_or_default();
    assert!(
        retry_after.trim().parse::<u64>().is_ok() || httpdate_like(retry_after),
        "Retry-After {retry_after:?}"
    );
    let (items, _) = list_events(&app, "limit=500").await;
    let mut archived = ids(&items);
    archived.sort();
    accepted.sort();
    assert_eq!(archived, accepted, "the refused event was archived");

    // Once the queue drains, the same webhook (same delivery id) is new to the server.
    for id in &accepted {
        admin.wait_status(*id, "delivered").await;
    }
    let later = refused.send(&app).await.accepted();
    assert!(later.routed);
    assert!(!accepted.contains(&later.id));
}

fn httpdate_like(v: &str) -> bool {
    v.ends_with(" GMT")
}

/// The value of a counter on `/metrics` (summed over its series).
async fn metric(app: &TestApp, name: &str) -> f64 {
    counter(&app.metrics().await, name, &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_deliveries_past_the_memory_budget_read_their_body_from_the_store() {
    // No memory at all for queued bodies: every queued delivery reads its body back from the
    // (encrypted) store when its attempt starts. Plain and transformed bodies, and a retry,
    // arrive signed and exactly as they would from memory.
    let app = TestApp::spawn_with(|c| {
        c.delivery_memory = 0;
        c.encrypt_payloads = true;
    })
    .await;
    let rx = TestReceiver::start().await;
    let admin = Admin::of(&app);
    let secret = json!({ "secret": CHOSEN_SECRET });
    admin
        .create_agent(agent("plain", &rx.url("/plain"), secret.clone()))
        .await;
    admin
        .create_agent(agent("shaped", &rx.url("/shaped"), secret))
        .await;
    let retry = policy(3, "fixed", 100, 100);
    admin
        .create_route(route("r-plain", &["plain"], retry.clone(), json!({})))
        .await;
    admin
        .create_route(route(
            "r-shaped",
            &["shaped"],
            retry,
            json!({ "transformation": { "type": "jq",
                    "expression": ".payload = {number: .payload.number}" } }),
        ))
        .await;
    let read_before = metric(&app, "delivery_bodies_read_total").await;
    // The first plain attempt fails: its retry is queued again, and read again.
    rx.script("/plain", [Reply::Status(500)]);
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(post_routed(&app, "pull_request", n).await);
    }
    let plain = rx.wait_for("/plain", 6, Duration::from_secs(20)).await;
    let shaped = rx.wait_for("/shaped", 5, Duration::from_secs(20)).await;
    let verifier = standardwebhooks::Webhook::new(CHOSEN_SECRET).unwrap();
    for (n, id) in ids.iter().enumerate() {
        let id = id.to_string();
        let mine = |got: &[Received]| -> Vec<Received> {
            got.iter()
                .filter(|r| r.header("webhook-id") == Some(id.as_str()))
                .cloned()
                .collect()
        };
        let p = mine(&plain);
        assert!(!p.is_empty(), "no plain delivery of event {n}");
        for r in &p {
            verifier.verify(&r.body, &r.headers).expect("signed");
            let ev = r.json();
            assert_eq!(ev["id"], id.as_str());
            assert_eq!(ev["payload"]["number"], n, "{ev}");
            assert_eq!(ev["payload"]["sender"]["login"], "octocat");
        }
        // A retry sends the same bytes as the first attempt.
        assert!(p.windows(2).all(|w| w[0].body == w[1].body));
        let s = mine(&shaped);
        assert_eq!(s.len(), 1, "event {n}");
        verifier.verify(&s[0].body, &s[0].headers).expect("signed");
        assert_eq!(s[0].json()["payload"], json!({ "number": n }));
        assert_eq!(s[0].json()["id"], id.as_str());
    }
    assert_eq!(plain.len(), 6, "one retry");
    admin.wait_all_status(ids[0], 2, "delivered").await;
    let read = metric(&app, "delivery_bodies_read_total").await - read_before;
    assert!(
        read >= 11.0,
        "{read} bodies read back from the store, 11 expected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_reloaded_past_the_memory_budget_after_a_restart_are_made_intact() {
    // Retries waiting for their time survive a restart; with no memory for queued bodies they
    // are reloaded without them and read back from the store when they fall due.
    let budget_zero = |c: &mut event_router::Config| c.delivery_memory = 0;
    let app = TestApp::spawn_with(budget_zero).await;
    let rx = TestReceiver::start().await;
    let admin = Admin::of(&app);
    admin
        .agent_with_route("a", &rx.url("/a"), "r", policy(3, "fixed", 1500, 1500))
        .await;
    rx.script(
        "/a",
        [Reply::Status(500), Reply::Status(500), Reply::Status(500)],
    );
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(post_routed(&app, "pull_request", n).await);
    }
    for id in &ids {
        admin.wait_status(*id, "scheduled").await;
    }
    // The counter is the process's: read before the restart, so that reads made as soon as
    // the reloaded retries fall due are counted.
    let read_before = metric(&app, "delivery_bodies_read_total").await;
    let dir = app.stop().await;
    let app = TestApp::spawn_in(dir, budget_zero).await;
    let got = rx.wait_for("/a", 6, Duration::from_secs(20)).await;
    for (n, id) in ids.iter().enumerate() {
        let mine: Vec<&Received> = got
            .iter()
            .filter(|r| r.header("webhook-id") == Some(id.to_string().as_str()))
            .collect();
        assert_eq!(
            mine.len(),
            2,
            "event {n}: one failed attempt, one after the restart"
        );
        assert_eq!(
            mine[0].body, mine[1].body,
            "the same bytes after the restart"
        );
        let ev = mine[1].json();
        assert_eq!(ev["id"], id.to_string());
        assert_eq!(ev["payload"]["number"], n, "{ev}");
    }
    let read = metric(&app, "delivery_bodies_read_total").await - read_before;
    assert!(
        read >= 3.0,
        "{read} bodies read back from the store, 3 expected"
    );
}

/// Runs `sql` on the store of `app` from a connection of its own (SQLite file or PostgreSQL
/// database, whichever this run's servers use).
async fn exec_on_store(app: &TestApp, sql: &str) {
    match database_for(app.dir.path()) {
        Some(url) => {
            let (client, conn) = crate::support::pg_testing::connect(&url).await.unwrap();
            tokio::spawn(conn);
            client.batch_execute(sql).await.unwrap();
        }
        None => {
            let conn = rusqlite::Connection::open(app.dir.path().join("event-router.db")).unwrap();
            conn.busy_timeout(Duration::from_secs(10)).unwrap();
            conn.execute_batch(sql).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_cannot_give_bodies_for_a_while_costs_no_attempt() {
    // No memory for queued bodies, so a retry reads its body from the store when it falls due.
    // The store cannot give it for a while (the column is renamed under the router, from a
    // connection of the test's own): the retry waits and is read again, and the failed read
    // is not an attempt. With two attempts allowed, counting it would have dead-lettered it.
    let app = TestApp::spawn_with(|c| c.delivery_memory = 0).await;
    let rx = TestReceiver::start().await;
    let admin = Admin::of(&app);
    admin
        .agent_with_route("a", &rx.url("/a"), "r", policy(2, "fixed", 1500, 1500))
        .await;
    rx.script("/a", [Reply::Status(500)]);
    let id = post_routed(&app, "pull_request", 1).await;
    rx.wait_for("/a", 1, Duration::from_secs(10)).await;
    exec_on_store(
        &app,
        "ALTER TABLE deliveries RENAME COLUMN body TO body_hidden",
    )
    .await;
    // Well past the retry's time (1.5 s after the failure): nothing sent, nothing given up.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(rx.received("/a").len(), 1, "sent without its body");
    let d = admin.deliveries(id).await;
    assert_eq!(d.len(), 1, "{d:?}");
    assert_ne!(d[0]["status"], "dead", "{d:?}");
    assert_eq!(
        d[0]["attempts"], 1,
        "a failed read counted as an attempt: {d:?}"
    );

    exec_on_store(
        &app,
        "ALTER TABLE deliveries RENAME COLUMN body_hidden TO body",
    )
    .await;
    let got = rx.wait_for("/a", 2, Duration::from_secs(10)).await;
    assert_eq!(got[1].header("webhook-id"), Some(id.to_string().as_str()));
    assert_eq!(got[1].json()["payload"]["number"], 1, "{}", got[1].json());
    let d = admin.wait_all_status(id, 1, "delivered").await;
    assert_eq!(d[0]["attempts"], 2, "{d:?}");
}

/// The reason a queued delivery of a deleted agent (or one whose `url` was removed) is
/// dead-lettered with (docs/delivery.md "Concurrency, pacing, priority, isolation").
const NO_AGENT: &str = "the agent no longer exists or has no url";

/// One attempt start per hour: after the first delivery, the others wait in the agent's lane.
fn one_per_hour() -> Value {
    json!({ "rateLimit": { "limit": 1, "window": 3_600_000 } })
}

/// Waits until `/queue/stats` shows exactly these pending counts per agent.
async fn wait_pending(admin: &Admin, want: &[(&str, u64)]) {
    poll(Duration::from_secs(20), "pending deliveries", || async {
        let v = admin.stats().await;
        let ok = want
            .iter()
            .all(|(agent, n)| v["byAgent"][agent]["pending"].as_u64().unwrap_or(0) == *n);
        if ok { Ok(()) } else { Err(v) }
    })
    .await;
}

/// The deliveries of event `id` to `agent`.
async fn deliveries_to(admin: &Admin, id: Uuid, agent: &str) -> Vec<Value> {
    admin
        .deliveries(id)
        .await
        .into_iter()
        .filter(|d| d["agentId"] == agent)
        .collect()
}

/// docs/delivery.md: a disabled agent "gets no new deliveries, and its queued ones are held
/// (shown as `pending`) until it is enabled again".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_agent_holds_its_deliveries_until_it_is_enabled_again() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let admin = Admin::of(&app);
    let url = rx.url("/held");
    admin
        .create_agent(agent("held", &url, one_per_hour()))
        .await;
    admin
        .create_route(route(
            "r",
            &["held"],
            policy(3, "fixed", 100, 100),
            json!({}),
        ))
        .await;
    // Another agent, never disabled, that gets every event too: its deliveries show the
    // scheduler at work while the first one is disabled.
    admin
        .agent_with_route(
            "other",
            &rx.url("/other"),
            "r-other",
            policy(3, "fixed", 100, 100),
        )
        .await;
    let mut ids = Vec::new();
    for n in 0..4 {
        ids.push(post_routed(&app, "push", n).await);
    }
    let first = rx.wait_for("/held", 1, Duration::from_secs(20)).await;
    wait_pending(&admin, &[("held", 3)]).await;

    // Disabled, and without the pacing: from now on only `enabled: false` holds them.
    let (status, v) = admin
        .call(
            Method::PUT,
            "/admin/agents/held",
            Some(agent("held", &url, json!({ "enabled": false }))),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["enabled"], false, "{v}");
    // An event posted while it is disabled is not routed to it at all.
    let while_disabled = post_routed(&app, "push", 4).await;
    assert!(
        deliveries_to(&admin, while_disabled, "held")
            .await
            .is_empty()
    );
    rx.wait_for("/other", 5, Duration::from_secs(20)).await;
    // Not attempted: give the scheduler time it would have needed many times over.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        rx.received("/held").len(),
        1,
        "a disabled agent's held delivery was attempted"
    );
    wait_pending(&admin, &[("held", 3)]).await;
    let held: Vec<Uuid> = ids
        .iter()
        .copied()
        .filter(|id| first[0].header("webhook-id") != Some(id.to_string().as_str()))
        .collect();
    assert_eq!(held.len(), 3);
    for id in &held {
        let d = deliveries_to(&admin, *id, "held").await;
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(
            d[0]["status"], "pending",
            "a held delivery shows as pending: {}",
            d[0]
        );
        assert_eq!(d[0]["attempts"], 0, "{}", d[0]);
    }

    // Enabled again: the held deliveries go, and only they.
    let (status, v) = admin
        .call(
            Method::PUT,
            "/admin/agents/held",
            Some(agent("held", &url, json!({ "enabled": true }))),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let got = rx.wait_for("/held", 4, Duration::from_secs(20)).await;
    let mut sent = webhook_ids(&got[1..]);
    sent.sort();
    let mut want: Vec<String> = held.iter().map(Uuid::to_string).collect();
    want.sort();
    assert_eq!(sent, want, "the held deliveries, each once");
    for id in &held {
        poll(
            Duration::from_secs(20),
            "held delivery delivered",
            || async {
                let d = deliveries_to(&admin, *id, "held").await;
                if d.len() == 1 && d[0]["status"] == "delivered" && d[0]["attempts"] == 1 {
                    Ok(())
                } else {
                    Err(Value::from(d))
                }
            },
        )
        .await;
    }
    wait_pending(&admin, &[("held", 0)]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rx.received("/held").len(), 4, "nothing more, nothing again");
    app.stop().await;
}

/// docs/delivery.md: when an agent is deleted, or its `url` removed, "its queued deliveries are
/// dead-lettered with the error `the agent no longer exists or has no url`", and an agent
/// cannot be deleted while a route targets it. docs/api.md: `deliveries.deadLettered` counts
/// those too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_agents_queued_deliveries_are_dead_lettered_with_the_reason() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let admin = Admin::of(&app);
    for id in ["gone", "bare"] {
        admin
            .create_agent(agent(id, &rx.url(&format!("/{id}")), one_per_hour()))
            .await;
        admin
            .create_route(route(
                &format!("to-{id}"),
                &[id],
                policy(3, "fixed", 100, 100),
                json!({}),
            ))
            .await;
    }
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(post_routed(&app, "push", n).await);
    }
    let first_gone = rx.wait_for("/gone", 1, Duration::from_secs(20)).await;
    let first_bare = rx.wait_for("/bare", 1, Duration::from_secs(20)).await;
    wait_pending(&admin, &[("gone", 2), ("bare", 2)]).await;

    let (status, v) = admin.delete("/admin/agents/gone").await;
    assert_eq!(status, 409, "deleted while a route targets it: {v}");
    assert_eq!(v["code"], "conflict", "{v}");
    assert_eq!(admin.delete("/admin/routes/to-gone").await.0, 204);
    assert_eq!(admin.delete("/admin/agents/gone").await.0, 204);
    // `bare` stays, as a stream-only agent.
    let (status, v) = admin
        .call(
            Method::PUT,
            "/admin/agents/bare",
            Some(json!({ "id": "bare", "name": "agent bare" })),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert!(v.get("url").is_none_or(Value::is_null), "{v}");

    for (agent_id, first) in [("gone", &first_gone), ("bare", &first_bare)] {
        let dead = poll(
            Duration::from_secs(20),
            &format!("{agent_id}: two dead letters"),
            || async {
                let (items, _) = admin.dlq(&format!("agentId={agent_id}")).await;
                if items.len() == 2 {
                    Ok(items)
                } else {
                    Err(Value::from(items))
                }
            },
        )
        .await;
        let delivered = first[0].header("webhook-id").unwrap().to_string();
        let mut dead_events: Vec<String> = dead
            .iter()
            .map(|d| d["eventId"].as_str().unwrap().to_string())
            .collect();
        dead_events.sort();
        let mut want: Vec<String> = ids
            .iter()
            .map(Uuid::to_string)
            .filter(|id| *id != delivered)
            .collect();
        want.sort();
        assert_eq!(
            dead_events, want,
            "{agent_id}: the two queued ones are dead"
        );
        for d in &dead {
            assert_eq!(d["status"], "dead", "{d}");
            assert_eq!(d["agentId"], agent_id, "{d}");
            assert_eq!(d["lastError"], NO_AGENT, "{d}");
            let log = d["attemptLog"].as_array().unwrap();
            let last = log
                .last()
                .unwrap_or_else(|| panic!("no attempt log entry: {d}"));
            assert_eq!(last["error"], NO_AGENT, "{d}");
            assert_eq!(last["statusCode"], Value::Null, "no request was made: {d}");
        }
        assert_eq!(
            rx.received(&format!("/{agent_id}")).len(),
            1,
            "{agent_id}: only the first delivery reached the agent"
        );
    }
    let stats = admin.stats().await;
    assert_eq!(stats["pending"], 0, "{stats}");
    assert_eq!(stats["deadLettered"], 4, "{stats}");
    poll(Duration::from_secs(20), "deadLettered counted", || async {
        let (_, v) = admin.get("/analytics/metrics?hours=1").await;
        if v["metrics"]["deliveries"]["deadLettered"] == 4 {
            Ok(())
        } else {
            Err(v["metrics"]["deliveries"].clone())
        }
    })
    .await;
    app.stop().await;
}

/// A delivery waiting for its retry time is queued too: when its agent is deleted it is
/// dead-lettered then, with the same reason, not left scheduled (and counted against
/// `max_queue_size`) until a retry time that may be days away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_agents_scheduled_retries_are_dead_lettered_at_once() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let admin = Admin::of(&app);
    rx.set_default("/later", Reply::Status(500));
    admin
        .agent_with_route(
            "later",
            &rx.url("/later"),
            "to-later",
            policy(5, "fixed", 3_600_000, 3_600_000),
        )
        .await;
    let id = post_routed(&app, "push", 0).await;
    let d = admin.wait_status(id, "scheduled").await;
    assert_eq!(d["attempts"], 1, "{d}");
    poll(Duration::from_secs(20), "one scheduled", || async {
        let v = admin.stats().await;
        if v["scheduled"] == 1 { Ok(()) } else { Err(v) }
    })
    .await;

    assert_eq!(admin.delete("/admin/routes/to-later").await.0, 204);
    assert_eq!(admin.delete("/admin/agents/later").await.0, 204);
    let d = admin.wait_status(id, "dead").await;
    assert_eq!(d["lastError"], NO_AGENT, "{d}");
    assert_eq!(d["nextAttemptAt"], Value::Null, "{d}");
    let stats = admin.stats().await;
    assert_eq!(stats["scheduled"], 0, "{stats}");
    assert_eq!(stats["byAgent"], json!({}), "{stats}");
    assert_eq!(stats["deadLettered"], 1, "{stats}");
    assert_eq!(rx.received("/later").len(), 1);
    app.stop().await;
}
