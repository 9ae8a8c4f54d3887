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
