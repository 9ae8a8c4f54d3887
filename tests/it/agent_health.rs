//! Agent health (docs/delivery.md "Agent health", docs/operations.md "Operational events"): a
//! circuit breaker per push agent, auto-disable, and the router's own `router` events routed
//! like any other source.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::delivery::*;
use crate::receiver::*;
use crate::signed::Webhook;
use crate::stream_client::*;
use crate::support::*;

/// `sourceFilters` selecting one source.
fn only_source(source: &str) -> Value {
    json!({ "sourceFilters": [{
        "id": format!("source-{source}"), "name": format!("source is {source}"),
        "source": source, "conditions": [], "action": "include", "priority": 0,
        "enabled": true,
    }]})
}

/// The `router` events an agent received: (type, payload).
fn router_events(rx: &TestReceiver, path: &str) -> Vec<(String, Value)> {
    rx.received(path)
        .iter()
        .filter(|r| r.header("x-event-source") == Some("router"))
        .map(|r| {
            let v = r.json();
            (
                v["type"].as_str().unwrap().to_string(),
                v["payload"].clone(),
            )
        })
        .collect()
}

async fn wait_router_event(rx: &TestReceiver, path: &str, kind: &str) -> Value {
    wait_for(Duration::from_secs(20), || async {
        router_events(rx, path)
            .into_iter()
            .find(|(t, _)| t == kind)
            .map(|(_, p)| p)
    })
    .await
}

async fn health(admin: &Admin, agent: &str) -> Value {
    let (status, v) = admin.get(&format!("/admin/agents/{agent}")).await;
    assert_eq!(status, 200, "{v}");
    v["health"].clone()
}

/// A notifier push agent and a stream-only watcher, and a route of every `router` event to
/// them and to `also` (which must never get an event about itself).
async fn alert_route(admin: &Admin, rx: &TestReceiver, also: &[&str]) {
    admin
        .create_agent(agent("notifier", &rx.url("/notify"), json!({})))
        .await;
    admin
        .create_agent(json!({"id": "watcher", "name": "watcher", "enabled": true}))
        .await;
    let mut targets = vec!["notifier", "watcher"];
    targets.extend_from_slice(also);
    admin
        .create_route(route(
            "alerts",
            &targets,
            policy(3, "fixed", 100, 100),
            only_source("router"),
        ))
        .await;
}

/// A stream-only agent that every `router` event is routed to, and a stream of it.
async fn router_watcher(app: &TestApp, admin: &Admin) -> StreamClient {
    admin
        .create_agent(json!({"id": "watcher", "name": "watcher", "enabled": true}))
        .await;
    admin
        .create_route(route(
            "alerts",
            &["watcher"],
            policy(3, "fixed", 100, 100),
            only_source("router"),
        ))
        .await;
    open_ok(
        app,
        Transport::Sse,
        &StreamRequest::new("watcher", AGENT_KEY),
    )
    .await
}

#[tokio::test]
async fn a_down_agent_opens_its_circuit_spends_no_attempts_and_gets_everything_after() {
    let rx = TestReceiver::start().await;
    rx.set_default("/down", Reply::Status(500));
    let app = TestApp::spawn().await;
    let admin = Admin::of(&app);
    admin
        .create_agent(agent(
            "flaky",
            &rx.url("/down"),
            json!({"maxConcurrency": 2,
                   "circuitBreaker": {"failureThreshold": 3, "cooldownMs": 300, "maxCooldownMs": 600}}),
        ))
        .await;
    admin
        .create_agent(agent("steady", &rx.url("/steady"), json!({})))
        .await;
    // Three attempts each: without the breaker, every delivery would be dead within a second.
    admin
        .create_route(route(
            "pushes",
            &["flaky", "steady"],
            policy(3, "fixed", 100, 100),
            only_type("push"),
        ))
        .await;
    alert_route(&admin, &rx, &["flaky"]).await;
    let mut watch = open_ok(
        &app,
        Transport::Sse,
        &StreamRequest::new("watcher", AGENT_KEY),
    )
    .await;

    const N: usize = 60;
    let mut ids = BTreeSet::new();
    for n in 0..N {
        ids.insert(post_routed(&app, "push", n).await);
    }
    // The healthy agent is not held up.
    rx.wait_for("/steady", N, Duration::from_secs(20)).await;
    // The circuit opens; it shows in the admin API, the gauge and as a `router` event at the
    // notifier and on the stream.
    let opened = wait_router_event(&rx, "/notify", "agent.circuit_opened").await;
    assert_eq!(opened["agentId"], "flaky", "{opened}");
    assert!(
        opened["consecutiveFailures"].as_u64().unwrap() >= 3,
        "{opened}"
    );
    assert!(
        opened["lastError"].as_str().unwrap().contains("500"),
        "{opened}"
    );
    let h = health(&admin, "flaky").await;
    assert!(h["state"] == "open" || h["state"] == "half_open", "{h}");
    assert!(h["consecutiveFailures"].as_u64().unwrap() >= 3, "{h}");
    let ev = watch.next_event().await;
    assert_eq!(
        (ev["source"].as_str(), ev["type"].as_str()),
        (Some("router"), Some("agent.circuit_opened")),
        "{ev}"
    );
    let scrape = app.metrics().await;
    let gauge = scrape
        .samples
        .iter()
        .find(|s| s.metric == "agent_circuit_state" && s.labels.get("agent") == Some("flaky"))
        .map(|s| match s.value {
            prometheus_parse::Value::Gauge(v) => v,
            _ => -1.0,
        });
    assert!(
        matches!(gauge, Some(v) if v == 1.0 || v == 2.0),
        "{gauge:?}"
    );

    // Three seconds of outage: only probes go out.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = rx.received("/down").len();
    assert!(
        during <= 3 + 2 + 12,
        "{during} attempts during the outage: the breaker should hold them back"
    );
    let (dead, _) = admin.dlq("").await;
    assert!(dead.is_empty(), "dead letters during the outage: {dead:?}");

    // It comes back: the next probe closes the circuit and every event arrives, none dead.
    rx.set_default("/down", Reply::Status(200));
    let got = wait_for(Duration::from_secs(30), || async {
        let delivered: BTreeSet<uuid::Uuid> = rx
            .received("/down")
            .iter()
            .filter(|r| r.header("x-event-source") == Some("github"))
            .map(|r| r.header("webhook-id").unwrap().parse().unwrap())
            .collect();
        (delivered.len() == N).then_some(delivered)
    })
    .await;
    assert_eq!(got, ids);
    let recovered = wait_router_event(&rx, "/notify", "agent.recovered").await;
    assert_eq!(recovered["agentId"], "flaky", "{recovered}");
    assert!(recovered["downMs"].as_i64().unwrap() > 0, "{recovered}");
    assert_eq!(health(&admin, "flaky").await["state"], "closed");
    for id in &ids {
        wait_for(Duration::from_secs(10), || async {
            let d = admin.deliveries(*id).await;
            d.iter().all(|d| d["status"] == "delivered").then_some(())
        })
        .await;
    }
    let (dead, _) = admin.dlq("").await;
    assert!(dead.is_empty(), "{dead:?}");
    // Events about flaky never went to flaky.
    assert!(router_events(&rx, "/down").is_empty());
}

#[tokio::test]
async fn the_cooldown_respects_retry_after_and_reset_closes_the_breaker() {
    let rx = TestReceiver::start().await;
    rx.set_default("/busy", Reply::RetryAfter(503, 2));
    let app = TestApp::spawn().await;
    let admin = Admin::of(&app);
    admin
        .create_agent(agent(
            "busy",
            &rx.url("/busy"),
            json!({"circuitBreaker": {"failureThreshold": 1, "cooldownMs": 100}}),
        ))
        .await;
    admin
        .create_route(route(
            "pushes",
            &["busy"],
            policy(10, "fixed", 50, 50),
            only_type("push"),
        ))
        .await;
    post_routed(&app, "push", 1).await;
    let first = rx.wait_for("/busy", 2, Duration::from_secs(20)).await;
    let gap = first[1].at - first[0].at;
    assert!(
        gap >= Duration::from_millis(1900),
        "the probe came {gap:?} after a Retry-After of 2 s"
    );
    let h = health(&admin, "busy").await;
    assert_ne!(h["state"], "closed", "{h}");
    assert!(h["nextProbeAt"].as_i64().is_some(), "{h}");

    // An operator closes it: the waiting delivery goes at once.
    rx.set_default("/busy", Reply::Status(200));
    let before = rx.received("/busy").len();
    let (status, v) = admin
        .post("/admin/agents/busy/health/reset", json!({}))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["health"]["state"], "closed", "{v}");
    assert_eq!(v["health"]["consecutiveFailures"], 0, "{v}");
    rx.wait_for("/busy", before + 1, Duration::from_secs(1))
        .await;
    let (status, v) = admin
        .post("/admin/agents/nobody/health/reset", json!({}))
        .await;
    assert_eq!((status, v["code"].as_str()), (404, Some("not_found")));
    // A stream-only agent has no breaker to show; an agent read back can be sent back.
    let (_, a) = admin.get("/admin/agents/busy").await;
    let (status, v) = admin
        .call(Method::PUT, "/admin/agents/busy", Some(a.clone()))
        .await;
    assert_eq!(status, 200, "{v}");
}

#[tokio::test]
async fn an_agent_failing_past_disable_after_is_disabled_and_says_so() {
    let rx = TestReceiver::start().await;
    rx.set_default("/dead", Reply::Status(500));
    let app = TestApp::spawn().await;
    let admin = Admin::of(&app);
    admin
        .create_agent(agent(
            "doomed",
            &rx.url("/dead"),
            json!({"circuitBreaker": {"failureThreshold": 1, "cooldownMs": 100,
                                      "maxCooldownMs": 100, "disableAfterMs": 600}}),
        ))
        .await;
    admin
        .create_route(route(
            "pushes",
            &["doomed"],
            policy(50, "fixed", 50, 50),
            only_type("push"),
        ))
        .await;
    alert_route(&admin, &rx, &[]).await;
    let id = post_routed(&app, "push", 1).await;
    let disabled = wait_router_event(&rx, "/notify", "agent.disabled").await;
    assert_eq!(disabled["agentId"], "doomed", "{disabled}");
    assert!(disabled["lastError"].as_str().unwrap().contains("500"));
    let (_, a) = admin.get("/admin/agents/doomed").await;
    assert_eq!(a["enabled"], false, "{a}");
    // Held, as for any disabled agent: no more attempts, the delivery waits.
    let n = rx.received("/dead").len();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(rx.received("/dead").len(), n);
    assert_ne!(admin.deliveries(id).await[0]["status"], "dead");
    // Re-enabled (and fixed), it starts with a closed breaker and delivers.
    rx.set_default("/dead", Reply::Status(200));
    let mut a = a;
    a["enabled"] = json!(true);
    let (status, v) = admin
        .call(Method::PUT, "/admin/agents/doomed", Some(a))
        .await;
    assert_eq!(status, 200, "{v}");
    admin.wait_status(id, "delivered").await;
    assert_eq!(health(&admin, "doomed").await["state"], "closed");
}

#[tokio::test]
async fn dead_letters_are_announced_and_a_flapping_agent_does_not_storm() {
    let rx = TestReceiver::start().await;
    rx.set_default("/gone", Reply::Status(500));
    // Opens after each failure, recovers on each success: it flaps.
    rx.set_default("/flap", Reply::Status(200));
    let app = TestApp::spawn().await;
    let admin = Admin::of(&app);
    admin
        .create_agent(agent("gone", &rx.url("/gone"), json!({})))
        .await;
    admin
        .create_agent(agent(
            "flapper",
            &rx.url("/flap"),
            json!({"circuitBreaker": {"failureThreshold": 1, "cooldownMs": 50, "maxCooldownMs": 50}}),
        ))
        .await;
    admin
        .create_route(route(
            "to-gone",
            &["gone"],
            policy(1, "fixed", 10, 10),
            only_type("push"),
        ))
        .await;
    admin
        .create_route(route(
            "to-flapper",
            &["flapper"],
            policy(20, "fixed", 10, 10),
            only_type("issues"),
        ))
        .await;
    alert_route(&admin, &rx, &[]).await;

    let id = post_routed(&app, "push", 1).await;
    let dead = wait_router_event(&rx, "/notify", "delivery.dead_lettered").await;
    assert_eq!(dead["agentId"], "gone", "{dead}");
    assert_eq!(dead["eventId"], id.to_string(), "{dead}");
    assert_eq!(dead["source"], "github", "{dead}");
    assert_eq!(dead["type"], "push", "{dead}");
    assert_eq!(dead["attempts"], 1, "{dead}");

    // Five outages in a row: the first opening and the first recovery are announced, the rest
    // (within the interval) are held back.
    for i in 0..5 {
        rx.script("/flap", [Reply::Status(500)]);
        let before = rx.received("/flap").len();
        Webhook::github("issues", gh_body(i))
            .send(&app)
            .await
            .accepted();
        rx.wait_for("/flap", before + 2, Duration::from_secs(10))
            .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let kinds: Vec<String> = router_events(&rx, "/notify")
        .into_iter()
        .map(|(t, _)| t)
        .filter(|t| t.starts_with("agent."))
        .collect();
    assert_eq!(
        kinds,
        ["agent.circuit_opened", "agent.recovered"],
        "{kinds:?}"
    );
}

#[tokio::test]
async fn a_filling_queue_is_announced_on_a_stream() {
    let app = TestApp::spawn_with(|c| c.max_queue_size = 10).await;
    let admin = Admin::of(&app);
    // An agent nobody answers for, with retries a minute apart: the queue fills.
    admin
        .create_agent(agent(
            "asleep",
            "http://127.0.0.1:9/never",
            json!({"circuitBreaker": {"failureThreshold": 1000}}),
        ))
        .await;
    admin
        .create_route(route(
            "pushes",
            &["asleep"],
            policy(3, "fixed", 60_000, 60_000),
            only_type("push"),
        ))
        .await;
    let mut watch = router_watcher(&app, &admin).await;
    for n in 0..8 {
        post_routed(&app, "push", n).await;
    }
    let ev = watch.next_event().await;
    assert_eq!(ev["type"], "queue.filling", "{ev}");
    assert_eq!(ev["payload"]["unfinished"], 8, "{ev}");
    assert_eq!(ev["payload"]["maxQueueSize"], 10, "{ev}");
    assert_eq!(ev["metadata"]["identifier"], "queue", "{ev}");
    // `router` is not a webhook source.
    let r = Webhook::bare("router", &b"{}"[..])
        .header("content-type", "application/json")
        .send(&app)
        .await;
    r.refused(404, "unknown_source");
}

#[tokio::test]
async fn failed_signatures_and_slow_ingest_are_announced() {
    let app = TestApp::spawn_with(|c| {
        c.alert_window_ms = 300;
        c.signature_failure_alert = 3;
        // Any window with webhooks is "slow": five in a row send `ingest.slow`.
        c.slow_ingest_alert_ms = 0;
    })
    .await;
    let admin = Admin::of(&app);
    let mut watch = router_watcher(&app, &admin).await;
    for n in 0..3 {
        Webhook::github_with("not-the-secret", "push", gh_body(n))
            .send(&app)
            .await
            .refused(401, "invalid_signature");
    }
    // Webhooks through six windows.
    let sender = {
        let (client, base) = (app.client.clone(), app.base.clone());
        tokio::spawn(async move {
            for n in 0..60 {
                Webhook::github("push", gh_body(n))
                    .send_to(&client, &base)
                    .await
                    .accepted();
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        })
    };
    let mut seen = BTreeSet::new();
    while seen.len() < 2 {
        let ev = tokio::time::timeout(Duration::from_secs(20), watch.next_event())
            .await
            .expect("the ingest alerts within 20 s");
        assert_eq!(ev["source"], "router", "{ev}");
        let kind = ev["type"].as_str().unwrap().to_string();
        match kind.as_str() {
            "ingest.signature_failures" => {
                assert_eq!(ev["payload"]["source"], "github", "{ev}");
                assert_eq!(ev["payload"]["failures"], 3, "{ev}");
                assert_eq!(ev["payload"]["threshold"], 3, "{ev}");
            }
            "ingest.slow" => {
                assert!(ev["payload"]["windows"].as_u64().unwrap() >= 5, "{ev}");
                assert!(
                    ev["payload"]["p95ProcessingTime"].as_f64().unwrap() > 0.0,
                    "{ev}"
                );
            }
            other => panic!("unexpected {other}: {ev}"),
        }
        seen.insert(kind);
    }
    sender.await.unwrap();
}

/// Two nodes on one PostgreSQL database: one node's failures open the agent's breaker on the
/// other too (which then makes no attempt either), and a reset on either closes both.
#[tokio::test]
async fn nodes_on_postgresql_share_an_agents_breaker() {
    let Some((url, _db)) = crate::support::pg_testing::fresh_database_or_skip().await else {
        return;
    };
    let rx = TestReceiver::start().await;
    rx.set_default("/down", Reply::Status(500));
    let node = |url: String| {
        move |c: &mut event_router::Config| {
            c.database_url = Some(url);
            c.encryption_key = Some(event_router::config::Secret(
                "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=".into(),
            ));
        }
    };
    let a = TestApp::spawn_with(node(url.clone())).await;
    let b = TestApp::spawn_with(node(url.clone())).await;
    let (admin_a, admin_b) = (Admin::of(&a), Admin::of(&b));
    admin_a
        .create_agent(agent(
            "shared",
            &rx.url("/down"),
            json!({"circuitBreaker": {"failureThreshold": 2, "cooldownMs": 600_000,
                                      "maxCooldownMs": 600_000}}),
        ))
        .await;
    admin_a
        .create_route(route(
            "pushes",
            &["shared"],
            policy(10, "fixed", 50, 50),
            only_type("push"),
        ))
        .await;
    // Node A's deliveries fail: its breaker opens, and B's follows.
    post_routed(&a, "push", 1).await;
    post_routed(&a, "push", 2).await;
    wait_for(Duration::from_secs(20), || async {
        (health(&admin_a, "shared").await["state"] == "open").then_some(())
    })
    .await;
    let on_b = wait_for(Duration::from_secs(20), || async {
        let h = health(&admin_b, "shared").await;
        (h["state"] == "open").then_some(h)
    })
    .await;
    assert!(
        on_b["nextProbeAt"].as_i64().unwrap() > now_ms() + 60_000,
        "{on_b}"
    );
    // B makes no attempt for its own delivery while open.
    let before = rx.received("/down").len();
    let id = post_routed(&b, "push", 3).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        rx.received("/down").len(),
        before,
        "B attempted through an open breaker"
    );
    // A reset on B closes both; B's delivery goes.
    rx.set_default("/down", Reply::Status(200));
    let (status, v) = admin_b
        .post("/admin/agents/shared/health/reset", json!({}))
        .await;
    assert_eq!(status, 200, "{v}");
    wait_for(Duration::from_secs(20), || async {
        (health(&admin_a, "shared").await["state"] == "closed").then_some(())
    })
    .await;
    admin_b.wait_status(id, "delivered").await;
}
