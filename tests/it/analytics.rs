//! Analytics, queue figures, Prometheus metrics and the audit log through the real server.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::receiver::{Reply, TestReceiver};
use crate::rules::{admin, agent, cond, create, filter, route_when};
use crate::signed::*;
use crate::support::*;

fn push_body(n: usize) -> Vec<u8> {
    json!({"ref": "refs/heads/main", "n": n, "sender": {"login": format!("user{n}")}})
        .to_string()
        .into_bytes()
}

/// A scripted mix: accepted+delivered, duplicate, filtered, rejected, retried, dead-lettered.
async fn scripted_mix(app: &TestApp, rx: &TestReceiver, ok: &str, bad: &str) {
    create(app, "agents", agent(ok, rx, "/ok")).await;
    create(app, "agents", agent(bad, rx, "/bad")).await;
    rx.set_default("/bad", Reply::Status(500));
    let mut r = route_when(
        "to-ok",
        &[ok],
        json!([cond("type", "equals", json!("push"))]),
    );
    r["priority"] = json!(1);
    create(app, "routes", r).await;
    let mut r = route_when(
        "to-bad",
        &[bad],
        json!([cond("type", "equals", json!("issues"))]),
    );
    r["retryPolicy"] =
        json!({"maxAttempts": 2, "backoffStrategy": "fixed", "baseDelay": 50, "maxDelay": 50});
    create(app, "routes", r).await;
    create(
        app,
        "filters",
        filter(
            "no-watch",
            "exclude",
            (Some("github"), Some("watch")),
            json!([]),
        ),
    )
    .await;

    let first = Webhook::github("push", push_body(1));
    first.send(app).await.accepted();
    first.send(app).await.duplicate();
    Webhook::github("push", push_body(2))
        .send(app)
        .await
        .accepted();
    Webhook::github("push", push_body(3))
        .send(app)
        .await
        .accepted();
    for n in 4..6 {
        let a = Webhook::github("watch", push_body(n))
            .send(app)
            .await
            .accepted();
        assert!(!a.processed);
    }
    Webhook::github_with("wrong", "push", push_body(9))
        .send(app)
        .await
        .refused(401, "invalid_signature");
    Webhook::github("issues", push_body(6))
        .send(app)
        .await
        .accepted();
    rx.wait_for("/ok", 3, Duration::from_secs(10)).await;
    // Wait until the failing delivery is dead-lettered (2 attempts).
    wait_for(Duration::from_secs(10), || async {
        let (_, s) = app.admin_get("/queue/stats").await;
        (s["deadLettered"] == 1 && s["pending"] == 0 && s["scheduled"] == 0 && s["inFlight"] == 0)
            .then_some(())
    })
    .await;
}

fn assert_figures(v: &Value, ok: &str, bad: &str) {
    assert_eq!(v["hours"], 24);
    let m = &v["metrics"];
    assert_eq!(m["totalEvents"], 6, "{v:#}");
    assert_eq!(m["processedEvents"], 4);
    assert_eq!(m["filteredEvents"], 2);
    assert_eq!(m["duplicateEvents"], 1);
    assert_eq!(m["rejectedRequests"], 1);
    assert_eq!(m["successfulEvents"], 3);
    assert_eq!(m["failedEvents"], 1);
    for k in [
        "averageProcessingTime",
        "p95ProcessingTime",
        "p99ProcessingTime",
    ] {
        let t = m[k].as_f64().unwrap();
        assert!(t > 0.0 && t < 5000.0, "{k} = {t}");
    }
    assert!(m["p99ProcessingTime"].as_f64() >= m["p95ProcessingTime"].as_f64());
    let d = &m["deliveries"];
    assert_eq!(d["attempted"], 5, "{d}");
    assert_eq!(d["succeeded"], 3);
    assert_eq!(d["failed"], 2);
    assert_eq!(d["retried"], 1);
    assert_eq!(d["deadLettered"], 1);
    assert!(d["averageLatency"].as_f64().unwrap() >= 0.0);
    let gh = &v["bySource"]["github"];
    assert_eq!(gh["totalEvents"], 6);
    assert_eq!(gh["filteredEvents"], 2);
    assert_eq!(gh["duplicateEvents"], 1);
    assert_eq!(gh["rejectedRequests"], 1);
    assert_eq!(v["byAgent"][ok]["succeeded"], 3);
    assert_eq!(v["byAgent"][ok]["attempted"], 3);
    assert_eq!(v["byAgent"][bad]["attempted"], 2);
    assert_eq!(v["byAgent"][bad]["failed"], 2);
    assert_eq!(v["byAgent"][bad]["retried"], 1);
    assert_eq!(v["byAgent"][bad]["deadLettered"], 1);
    // The agent figures the design asks for: success rate and the agent's own answer time.
    assert_eq!(v["byAgent"][ok]["successRate"], 1.0);
    assert_eq!(v["byAgent"][bad]["successRate"], 0.0);
    assert_eq!(d["successRate"], 0.6, "{d}");
    for a in [ok, bad] {
        let avg = v["byAgent"][a]["averageResponseTime"].as_f64().unwrap();
        let p95 = v["byAgent"][a]["p95ResponseTime"].as_f64().unwrap();
        assert!(avg > 0.0 && avg < 5000.0, "{a}: {avg}");
        assert!(
            p95 >= avg && p95 <= 5000.0,
            "{a}: p95 {p95} vs average {avg}"
        );
    }
    let timeline = v["timeline"].as_array().unwrap();
    assert!(!timeline.is_empty());
    let sum = |k: &str| timeline.iter().map(|p| p[k].as_i64().unwrap()).sum::<i64>();
    assert_eq!(sum("events"), 6);
    assert_eq!(sum("delivered"), 3);
    assert_eq!(sum("failed"), 2);
    let starts: Vec<i64> = timeline
        .iter()
        .map(|p| p["start"].as_i64().unwrap())
        .collect();
    assert!(starts.windows(2).all(|w| w[0] < w[1]));
}

#[tokio::test]
async fn analytics_figures_are_exact_and_survive_a_restart() {
    let rx = TestReceiver::start().await;
    let app = TestApp::spawn().await;
    let ok = format!("ok-{}", uuid::Uuid::new_v4().simple());
    let bad = format!("bad-{}", uuid::Uuid::new_v4().simple());
    scripted_mix(&app, &rx, &ok, &bad).await;
    let (status, v) = app.admin_get("/analytics/metrics").await;
    assert_eq!(status, 200);
    assert_figures(&v, &ok, &bad);
    let (_, q) = app.admin_get("/queue/stats").await;
    assert_eq!(q["delivered"], 3);
    assert_eq!(q["deadLettered"], 1);

    // Prometheus text, parsed by a real parser; agent-labelled series are this test's own.
    let scrape = app.metrics().await;
    let counter = |name: &str, labels: &[(&str, &str)]| counter(&scrape, name, labels);
    assert_eq!(
        counter(
            "deliveries_total",
            &[("agent", &ok), ("outcome", "delivered")]
        ),
        3.0
    );
    assert_eq!(
        counter("deliveries_total", &[("agent", &bad), ("outcome", "dead")]),
        1.0
    );
    assert_eq!(
        counter(
            "deliveries_total",
            &[("agent", &bad), ("outcome", "retry_scheduled")]
        ),
        1.0
    );
    assert!(counter("webhooks_total", &[("source", "github"), ("status", "200")]) >= 6.0);
    assert!(
        counter(
            "webhook_verification_failures_total",
            &[("source", "github")]
        ) >= 1.0
    );
    for name in [
        "webhook_processing_seconds",
        "delivery_attempt_seconds",
        "store_commit_seconds",
        "store_commit_batch_size",
        "queue_unfinished_deliveries",
        "streams_open",
    ] {
        assert!(
            scrape.samples.iter().any(|s| s.metric.starts_with(name)),
            "{name} missing from /metrics"
        );
    }

    // A restart changes nothing.
    let dir = app.stop().await;
    let app = TestApp::spawn_in(dir, |_| {}).await;
    let (_, v) = app.admin_get("/analytics/metrics?hours=1").await;
    let mut v24 = v.clone();
    v24["hours"] = json!(24);
    assert_figures(&v24, &ok, &bad);
    let (status, _) = app.admin_get("/analytics/metrics?hours=721").await;
    assert_eq!(status, 400);
    let (status, v) = app.admin_get("/analytics/metrics?hours=720").await;
    assert_eq!(status, 200);
    assert_eq!(v["metrics"]["totalEvents"], 6);
    let r = app
        .client
        .get(app.url("/analytics/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    app.stop().await;
}

#[tokio::test]
async fn admin_changes_are_audited_without_secrets() {
    let rx = TestReceiver::start().await;
    let app = TestApp::spawn().await;
    let mut a = agent("audited", &rx, "/a");
    a["apiKey"] = json!("a-very-secret-agent-key-123");
    create(&app, "agents", a).await;
    let (status, _) = admin(&app, Method::DELETE, "/admin/agents/audited", None).await;
    assert_eq!(status, 204);
    // A refused change is not an audited change.
    let (status, _) = admin(&app, Method::DELETE, "/admin/agents/nope", None).await;
    assert_eq!(status, 404);
    let (status, v) = app.admin_get("/admin/audit").await;
    assert_eq!(status, 200, "{v}");
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{v:#}");
    assert_eq!(items[0]["action"], "delete agent");
    assert_eq!(items[0]["targetId"], "audited");
    assert_eq!(items[0]["method"], "DELETE");
    assert_eq!(items[1]["action"], "create agent");
    assert_eq!(items[1]["targetId"], "audited");
    assert_eq!(items[1]["clientIp"], "127.0.0.1");
    assert_eq!(items[1]["status"], 201);
    assert!(items[1]["at"].as_i64().unwrap() > 0);
    assert!(!v.to_string().contains("a-very-secret-agent-key-123"));
    app.stop().await;
}

#[tokio::test]
async fn health_turns_503_when_the_store_is_unreachable() {
    let app = TestApp::spawn().await;
    let r = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // Close the store under the running server: it can no longer be reached.
    app.state().store.close().await;
    let r = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], "unavailable");
    assert_eq!(v["storage"]["ok"], false);
    assert_eq!(v["storage"]["backend"], crate::support::backend());
    app.stop().await;
}

/// docs/api.md "Audit log" and docs/operations.md "The audit log": every successful admin
/// change is recorded with its method, path, action, target id, status, client address and
/// time — filters, routes, agents, rate limits, each dead-letter action and replay — and no body,
/// so no secret or key, is recorded.
#[tokio::test]
async fn every_kind_of_admin_change_is_audited_with_its_target() {
    const SECRET: &str = "whsec_ZGVsaXZlcnktdGVzdHMtc2VjcmV0LTI0";
    const OWN_KEY: &str = "an-agent-key-nobody-may-read";
    let rx = TestReceiver::start().await;
    rx.set_default("/fails", Reply::Status(500));
    let app = TestApp::spawn().await;
    let started = now_ms();
    // Each change, and the entry it must leave: (method, path, status, action, target id).
    let mut want: Vec<(&str, String, u16, &str, Option<String>)> = Vec::new();

    let mut a = agent("failing", &rx, "/fails");
    a["secret"] = json!(SECRET);
    a["apiKey"] = json!(OWN_KEY);
    create(&app, "agents", a.clone()).await;
    want.push((
        "POST",
        "/admin/agents".into(),
        201,
        "create agent",
        Some("failing".into()),
    ));
    a["description"] = json!("replaced");
    let (status, v) = admin(&app, Method::PUT, "/admin/agents/failing", Some(&a)).await;
    assert_eq!(status, 200, "{v}");
    want.push((
        "PUT",
        "/admin/agents/failing".into(),
        200,
        "replace agent",
        Some("failing".into()),
    ));

    let f = filter(
        "no-watch",
        "exclude",
        (Some("github"), Some("watch")),
        json!([]),
    );
    create(&app, "filters", f.clone()).await;
    want.push((
        "POST",
        "/admin/filters".into(),
        201,
        "create filter",
        Some("no-watch".into()),
    ));
    let (status, v) = admin(&app, Method::PUT, "/admin/filters/no-watch", Some(&f)).await;
    assert_eq!(status, 200, "{v}");
    want.push((
        "PUT",
        "/admin/filters/no-watch".into(),
        200,
        "replace filter",
        Some("no-watch".into()),
    ));
    let (status, _) = admin(&app, Method::DELETE, "/admin/filters/no-watch", None).await;
    assert_eq!(status, 204);
    want.push((
        "DELETE",
        "/admin/filters/no-watch".into(),
        204,
        "delete filter",
        Some("no-watch".into()),
    ));

    let mut r = route_when(
        "to-failing",
        &["failing"],
        json!([cond("type", "equals", json!("push"))]),
    );
    r["retryPolicy"] =
        json!({"maxAttempts": 1, "backoffStrategy": "fixed", "baseDelay": 50, "maxDelay": 50});
    create(&app, "routes", r.clone()).await;
    want.push((
        "POST",
        "/admin/routes".into(),
        201,
        "create route",
        Some("to-failing".into()),
    ));
    r["priority"] = json!(3);
    let (status, v) = admin(&app, Method::PUT, "/admin/routes/to-failing", Some(&r)).await;
    assert_eq!(status, 200, "{v}");
    want.push((
        "PUT",
        "/admin/routes/to-failing".into(),
        200,
        "replace route",
        Some("to-failing".into()),
    ));

    let limit = json!({"source": "github", "identifier": "octocat", "limit": 100, "window": 60000});
    let (status, v) = admin(&app, Method::PUT, "/admin/rate-limits", Some(&limit)).await;
    assert_eq!(status, 200, "{v}");
    want.push((
        "PUT",
        "/admin/rate-limits".into(),
        200,
        "replace rate limit",
        Some("github:octocat".into()),
    ));
    let (status, v) = admin(
        &app,
        Method::DELETE,
        "/admin/rate-limits?source=github&identifier=octocat",
        None,
    )
    .await;
    assert_eq!(status, 204, "{v}");
    want.push((
        "DELETE",
        "/admin/rate-limits".into(),
        204,
        "delete rate limit",
        Some("github:octocat".into()),
    ));

    // Three dead letters to act on.
    let mut events = Vec::new();
    for n in 0..3 {
        let a = Webhook::github("push", push_body(n))
            .send(&app)
            .await
            .accepted();
        assert!(a.routed);
        events.push(a.id);
    }
    let dead = wait_for(Duration::from_secs(20), || async {
        let (_, v) = app.admin_get("/admin/dlq?agentId=failing").await;
        let items = v["items"].as_array().cloned().unwrap_or_default();
        (items.len() == 3).then_some(items)
    })
    .await;
    let dead_id = |i: usize| dead[i]["id"].as_str().unwrap().to_string();

    let one = dead_id(0);
    let (status, v) = admin(&app, Method::POST, &format!("/admin/dlq/{one}/retry"), None).await;
    assert_eq!((status, v.clone()), (200, json!({"retried": 1})), "{v}");
    want.push((
        "POST",
        format!("/admin/dlq/{one}/retry"),
        200,
        "retry dead letter",
        Some(one.clone()),
    ));
    // The retried delivery fails again: all three are dead before the bulk retry.
    wait_dead_attempts(&app, &[(&one, 2), (&dead_id(1), 1), (&dead_id(2), 1)]).await;
    let (status, v) = admin(
        &app,
        Method::POST,
        "/admin/dlq/retry",
        Some(&json!({"agentId": "failing"})),
    )
    .await;
    assert_eq!((status, v.clone()), (200, json!({"retried": 3})), "{v}");
    want.push((
        "POST",
        "/admin/dlq/retry".into(),
        200,
        "retry dead letters",
        None,
    ));
    wait_dead_attempts(&app, &[(&one, 3), (&dead_id(1), 2), (&dead_id(2), 2)]).await;
    let gone = dead_id(1);
    let (status, _) = admin(&app, Method::DELETE, &format!("/admin/dlq/{gone}"), None).await;
    assert_eq!(status, 204);
    want.push((
        "DELETE",
        format!("/admin/dlq/{gone}"),
        204,
        "delete dead letter",
        Some(gone.clone()),
    ));

    let replayed = events[2].to_string();
    let (status, v) = admin(
        &app,
        Method::POST,
        &format!("/admin/events/{replayed}/replay"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    want.push((
        "POST",
        format!("/admin/events/{replayed}/replay"),
        200,
        "replay event",
        Some(replayed.clone()),
    ));

    // The route goes, then the agent.
    let (status, _) = admin(&app, Method::DELETE, "/admin/routes/to-failing", None).await;
    assert_eq!(status, 204);
    want.push((
        "DELETE",
        "/admin/routes/to-failing".into(),
        204,
        "delete route",
        Some("to-failing".into()),
    ));
    let (status, _) = admin(&app, Method::DELETE, "/admin/agents/failing", None).await;
    assert_eq!(status, 204);
    want.push((
        "DELETE",
        "/admin/agents/failing".into(),
        204,
        "delete agent",
        Some("failing".into()),
    ));
    let finished = now_ms();

    let (status, v) = app.admin_get("/admin/audit?limit=500").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["nextCursor"], Value::Null, "{v}");
    let items = v["items"].as_array().unwrap();
    assert_eq!(
        items.len(),
        want.len(),
        "one entry per change, no more: {v:#}"
    );
    // Newest first: the changes in reverse order.
    let mut last_id = i64::MAX;
    for (item, (method, path, status, action, target)) in items.iter().zip(want.iter().rev()) {
        let mut keys: Vec<&str> = item
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "action", "at", "clientIp", "id", "method", "path", "status", "targetId"
            ],
            "{item}"
        );
        assert_eq!(item["method"], *method, "{item}");
        assert_eq!(item["path"], *path, "{item}");
        assert_eq!(item["status"], *status, "{item}");
        assert_eq!(item["action"], *action, "{item}");
        assert_eq!(item["targetId"], json!(target), "{item}");
        assert_eq!(item["clientIp"], "127.0.0.1", "{item}");
        let at = item["at"].as_i64().unwrap();
        assert!((started..=finished).contains(&at), "{item}: at {at}");
        let id = item["id"].as_i64().unwrap();
        assert!(id < last_id, "ids decrease down the list: {item}");
        last_id = id;
    }
    let text = v.to_string();
    for (what, secret) in [
        (
            "the agent's signing secret",
            SECRET.trim_start_matches("whsec_"),
        ),
        ("the agent's own key", OWN_KEY),
        ("the admin key", ADMIN_KEY),
    ] {
        assert!(!text.contains(secret), "{what} is in the audit log");
    }
    app.stop().await;
}

/// Waits until the dead letters of agent `failing` are exactly these deliveries with these
/// attempt counts.
async fn wait_dead_attempts(app: &TestApp, want: &[(&str, u64)]) {
    let mut want: Vec<(String, u64)> = want.iter().map(|(id, n)| (id.to_string(), *n)).collect();
    want.sort();
    wait_for(Duration::from_secs(20), || async {
        let (_, v) = app.admin_get("/admin/dlq?agentId=failing").await;
        let mut got: Vec<(String, u64)> = v["items"]
            .as_array()?
            .iter()
            .map(|d| {
                (
                    d["id"].as_str().unwrap().to_string(),
                    d["attempts"].as_u64().unwrap(),
                )
            })
            .collect();
        got.sort();
        (got == want).then_some(())
    })
    .await;
}
