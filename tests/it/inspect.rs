//! Finding out why (issue 30), through the admin API: every attempt keeps what was sent and what
//! the agent answered, and why it was made; the archive shows each event's outcome, says why an
//! event went nowhere, and is searched by text and outcome.

use serde_json::{Value, json};
use uuid::Uuid;

use crate::delivery::*;
use crate::receiver::*;
use crate::signed::*;
use crate::support::*;

fn attempts(d: &Value) -> Vec<Value> {
    d["attemptLog"]
        .as_array()
        .unwrap_or_else(|| panic!("attemptLog: {d}"))
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_attempt_keeps_the_request_the_answer_and_why_it_was_made() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let admin = Admin::of(&app);
    let failure = Reply::Answer(
        500,
        ("x-agent-error", "db down"),
        r#"{"error":"database unavailable: connection refused"}"#.into(),
    );
    rx.script("/d", [failure.clone(), failure]);
    rx.set_default(
        "/d",
        Reply::Answer(200, ("x-handled-by", "worker-7"), "thanks".into()),
    );
    admin
        .create_agent(agent(
            "d",
            &rx.url("/d"),
            json!({ "headers": { "Authorization": "Bearer agent-token", "X-Team": "infra" } }),
        ))
        .await;
    admin
        .create_route(route("r", &["d"], policy(2, "fixed", 50, 50), json!({})))
        .await;
    let id = post_routed(&app, "push", 1).await;
    let dead = admin.wait_status(id, "dead").await;
    assert!(
        dead["requestBody"].is_null(),
        "the event itself was sent: {dead}"
    );
    let log = attempts(&dead);
    assert_eq!(log.len(), 2, "{dead}");
    for (i, a) in log.iter().enumerate() {
        assert_eq!(a["statusCode"], 500, "{a}");
        assert_eq!(
            a["responseBody"], r#"{"error":"database unavailable: connection refused"}"#,
            "the agent's own words: {a}"
        );
        assert_eq!(a["responseHeaders"]["x-agent-error"], "db down", "{a}");
        let sent = &a["requestHeaders"];
        assert_eq!(sent["webhook-id"], id.to_string(), "{a}");
        assert_eq!(sent["x-delivery-attempt"], (i + 1).to_string(), "{a}");
        assert_eq!(sent["content-type"], "application/json", "{a}");
        assert!(
            sent["webhook-signature"]
                .as_str()
                .is_some_and(|s| s.starts_with("v1,")),
            "{a}"
        );
        // The agent's own headers may be credentials: named, not shown.
        assert_eq!(sent["authorization"], "[redacted]", "{a}");
        assert_eq!(sent["x-team"], "[redacted]", "{a}");
        assert!(a["durationMs"].is_u64(), "{a}");
    }
    assert_eq!(log[0]["trigger"], "initial");
    assert_eq!(log[1]["trigger"], "scheduled");
    // The dead-letter list shows the same.
    let (items, _) = admin.dlq("").await;
    assert_eq!(
        items[0]["attemptLog"][1]["responseHeaders"]["x-agent-error"],
        "db down"
    );

    // A retry from the dead-letter queue: the next attempt says so.
    let dead_id = dead["id"].as_str().unwrap().to_string();
    let (status, v) = admin
        .post(&format!("/admin/dlq/{dead_id}/retry"), json!({}))
        .await;
    assert_eq!(status, 200, "{v}");
    let done = admin.wait_status(id, "delivered").await;
    let log = attempts(&done);
    assert_eq!(log.len(), 3, "{done}");
    assert_eq!(log[2]["trigger"], "manual_retry", "{done}");
    assert_eq!(log[2]["responseBody"], "thanks", "{done}");
    assert_eq!(log[2]["responseHeaders"]["x-handled-by"], "worker-7");

    // A replay: a fresh delivery whose first attempt (a success, kept in the delivery's row)
    // says it came from a replay, with the same detail as any attempt.
    let (status, v) = admin
        .post(&format!("/admin/events/{id}/replay"), json!({}))
        .await;
    assert_eq!(status, 200, "{v}");
    let replayed = v["deliveries"][0]["id"].as_str().unwrap().to_string();
    let d = poll(
        std::time::Duration::from_secs(15),
        "the replayed delivery",
        || async {
            let list = admin.deliveries(id).await;
            match list.iter().find(|d| d["id"] == replayed.as_str()) {
                Some(d) if d["status"] == "delivered" => Ok(d.clone()),
                _ => Err(Value::from(list)),
            }
        },
    )
    .await;
    let log = attempts(&d);
    assert_eq!(log.len(), 1, "{d}");
    assert_eq!(log[0]["trigger"], "replay", "{d}");
    assert_eq!(log[0]["statusCode"], 200, "{d}");
    assert_eq!(log[0]["responseBody"], "thanks", "{d}");
    assert_eq!(log[0]["requestHeaders"]["x-delivery-attempt"], "1", "{d}");

    // The agent at a glance: when it last succeeded and last failed.
    let (status, v) = app.admin_get("/admin/agent-activity").await;
    assert_eq!(status, 200, "{v}");
    let d = &v["agents"]["d"];
    let (ok, failed) = (
        d["lastSuccessAt"].as_i64().expect("a success"),
        d["lastFailureAt"].as_i64().expect("a failure"),
    );
    assert!(failed <= ok && ok <= now_ms(), "{v}");
}

/// The archive's list: each event's outcome; filtered by outcome and searched by text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_list_shows_outcomes_and_finds_events_by_text() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let admin = Admin::of(&app);
    rx.set_default("/bad", Reply::Status(500));
    admin
        .create_agent(agent("ok", &rx.url("/ok"), json!({})))
        .await;
    admin
        .create_agent(agent("bad", &rx.url("/bad"), json!({})))
        .await;
    admin
        .create_route(route(
            "to-ok",
            &["ok"],
            policy(1, "fixed", 10, 10),
            only_type("push"),
        ))
        .await;
    admin
        .create_route(route(
            "to-bad",
            &["bad"],
            policy(1, "fixed", 10, 10),
            only_type("issues"),
        ))
        .await;
    let (status, v) = admin
        .post(
            "/admin/filters",
            json!({ "id": "no-pings", "name": "drop pings", "eventType": "ping",
                    "conditions": [], "action": "exclude", "priority": 1, "enabled": true }),
        )
        .await;
    assert_eq!(status, 201, "{v}");

    let delivered = post_routed(&app, "push", 1).await;
    let dead = post_routed(&app, "issues", 2).await;
    let body = json!({ "zen": "Needle In The Haystack", "sender": { "login": "octocat" } });
    let filtered = Webhook::github("ping", body.to_string().into_bytes())
        .send(&app)
        .await
        .accepted();
    assert!(!filtered.processed, "{filtered:?}");
    let unrouted = Webhook::github("star", gh_body(4))
        .send(&app)
        .await
        .accepted();
    assert!(unrouted.processed && !unrouted.routed, "{unrouted:?}");
    admin.wait_status(delivered, "delivered").await;
    admin.wait_status(dead, "dead").await;

    let (status, v) = app.admin_get("/admin/events").await;
    assert_eq!(status, 200, "{v}");
    let outcome_of = |v: &Value, id: Uuid| -> String {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == id.to_string())
            .map(|e| e["outcome"].as_str().unwrap().to_string())
            .unwrap_or_else(|| panic!("{id} not listed: {v}"))
    };
    assert_eq!(outcome_of(&v, delivered), "delivered");
    assert_eq!(outcome_of(&v, dead), "dead");
    assert_eq!(outcome_of(&v, filtered.id), "filtered");
    assert_eq!(outcome_of(&v, unrouted.id), "unrouted");

    let ids = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap_or_else(|| panic!("items: {v}"))
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_string())
            .collect()
    };
    let (_, v) = app
        .admin_get("/admin/events?source=github&outcome=dead")
        .await;
    assert_eq!(ids(&v), [dead.to_string()], "{v}");
    let (_, v) = app
        .admin_get("/admin/events?source=github&outcome=filtered,unrouted")
        .await;
    assert_eq!(
        ids(&v),
        [unrouted.id.to_string(), filtered.id.to_string()],
        "{v}"
    );
    assert_eq!(v["scanned"], 4, "{v}");
    // Text in the payload, in any case; a part of an id; a type. (The router's own event about
    // the dead letter, source `router`, names the dead event too.)
    let (_, v) = app
        .admin_get("/admin/events?source=github&q=needle%20in%20THE")
        .await;
    assert_eq!(ids(&v), [filtered.id.to_string()], "{v}");
    let part = &dead.to_string()[24..];
    let (_, v) = app
        .admin_get(&format!("/admin/events?source=github&q={part}"))
        .await;
    assert_eq!(ids(&v), [dead.to_string()], "{v}");
    let (_, v) = app.admin_get("/admin/events?source=github&q=ISSUES").await;
    assert_eq!(ids(&v), [dead.to_string()], "{v}");
    // Paging through a search: one match per page, the cursor continuing after the last event
    // examined.
    let (_, v) = app
        .admin_get("/admin/events?source=github&q=octocat&limit=1")
        .await;
    assert_eq!(ids(&v), [unrouted.id.to_string()], "{v}");
    let next = v["nextCursor"].as_str().expect("a next page").to_string();
    let (_, v) = app
        .admin_get(&format!(
            "/admin/events?source=github&q=octocat&limit=1&cursor={next}"
        ))
        .await;
    assert_eq!(ids(&v), [filtered.id.to_string()], "{v}");

    let long = format!("q={}", "x".repeat(201));
    for bad in ["outcome=lost", long.as_str()] {
        let (status, v) = app.admin_get(&format!("/admin/events?{bad}")).await;
        assert_eq!(status, 400, "{bad}: {v}");
        assert_eq!(v["success"], false, "{v}");
        assert!(v["error"].is_string(), "{v}");
    }

    // Why an event went nowhere: the filter that dropped it; the routes checked.
    let v = admin.event(filtered.id).await;
    assert_eq!(v["explanation"]["excludedBy"], "no-pings", "{v}");
    let v = admin.event(unrouted.id).await;
    let checked = v["explanation"]["routesChecked"].as_array().unwrap();
    let mut names: Vec<_> = checked
        .iter()
        .map(|r| (r["id"].as_str().unwrap(), r["matched"].as_bool().unwrap()))
        .collect();
    names.sort();
    assert_eq!(names, [("to-bad", false), ("to-ok", false)], "{v}");
    assert!(admin.event(delivered).await["explanation"].is_null());

    // The list says the same of its rows that went nowhere, and nothing of the others, in a
    // plain listing and in a search.
    for q in [
        "/admin/events?source=github",
        "/admin/events?source=github&outcome=filtered,unrouted,delivered,dead",
    ] {
        let (status, v) = app.admin_get(q).await;
        assert_eq!(status, 200, "{v}");
        let row = |id: String| {
            v["items"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["id"] == id.as_str())
                .unwrap_or_else(|| panic!("{id} not listed: {v}"))
                .clone()
        };
        let f = row(filtered.id.to_string());
        assert_eq!(f["explanation"]["excludedBy"], "no-pings", "{f}");
        assert_eq!(f["explanation"]["omitted"], 0, "{f}");
        let u = row(unrouted.id.to_string());
        assert_eq!(u["outcome"], "unrouted", "{u}");
        let mut names: Vec<_> = u["explanation"]["routesChecked"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect();
        names.sort();
        assert_eq!(names, ["to-bad", "to-ok"], "{u}");
        assert!(u["explanation"]["excludedBy"].is_null(), "{u}");
        assert!(row(delivered.to_string())["explanation"].is_null(), "{v}");
        assert!(row(dead.to_string())["explanation"].is_null(), "{v}");
    }
}

/// Refused webhooks are listed with their reason, source and time, newest first; the rate-limit
/// keys with how often each was admitted and refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_webhooks_and_rate_limit_keys_are_listed() {
    let app = TestApp::spawn_with(|c| c.max_event_size = 2048).await;
    let admin = Admin::of(&app);
    let (status, v) = admin
        .call(
            reqwest::Method::PUT,
            "/admin/rate-limits",
            Some(json!({ "source": "github", "identifier": "octocat", "limit": 1, "window": 60_000 })),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    Webhook::github_with("not-the-secret", "push", gh_body(1))
        .send(&app)
        .await
        .refused(401, "invalid_signature");
    Webhook::github("push", gh_body(2))
        .send(&app)
        .await
        .accepted();
    Webhook::github("push", gh_body(3))
        .send(&app)
        .await
        .refused(429, "rate_limited");
    let big = json!({ "sender": { "login": "hubot" }, "text": "x".repeat(4096) });
    Webhook::github("push", big.to_string().into_bytes())
        .send(&app)
        .await
        .refused(413, "payload_too_large");

    let (status, v) = app.admin_get("/admin/rejections").await;
    assert_eq!(status, 200, "{v}");
    let items = v["items"].as_array().unwrap();
    let codes: Vec<_> = items.iter().map(|r| r["code"].as_str().unwrap()).collect();
    assert_eq!(
        codes,
        ["payload_too_large", "rate_limited", "invalid_signature"],
        "{v}"
    );
    let limited = &items[1];
    assert_eq!(limited["source"], "github", "{v}");
    assert_eq!(limited["status"], 429, "{v}");
    assert!(
        limited["reason"]
            .as_str()
            .is_some_and(|r| r.contains("github:octocat")),
        "{v}"
    );
    assert_eq!(limited["clientIp"], "127.0.0.1", "{v}");
    assert!(limited["at"].as_i64().is_some_and(|t| t <= now_ms()), "{v}");

    let (status, v) = app.admin_get("/admin/rate-limits/usage").await;
    assert_eq!(status, 200, "{v}");
    let first = &v["items"][0];
    assert_eq!(first["source"], "github", "{v}");
    assert_eq!(first["identifier"], "octocat", "{v}");
    assert_eq!(first["allowed"], 1, "{v}");
    assert_eq!(first["limited"], 1, "{v}");

    for path in ["/admin/rejections", "/admin/rate-limits/usage"] {
        let r = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path} needs the admin key");
    }
}

/// The sources an operator points providers at: enabled or not (no secret), where the secret is
/// read from, and the path to give the provider.
#[tokio::test]
async fn the_sources_are_listed_with_their_path_and_whether_they_are_enabled() {
    let app = TestApp::spawn().await;
    let (status, v) = app.admin_get("/admin/sources").await;
    assert_eq!(status, 200, "{v}");
    let items = v["items"].as_array().unwrap();
    let find = |name: &str| {
        items
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("{name}: {v}"))
            .clone()
    };
    let github = find("github");
    assert_eq!(github["enabled"], true, "{github}");
    assert_eq!(github["scheme"], "github", "{github}");
    assert_eq!(github["webhookPath"], "/webhook/github", "{github}");
    assert_eq!(github["secretEnv"][0], "GITHUB_WEBHOOK_SECRET", "{github}");
    // A built-in provider without its secret in the test's environment is disabled.
    let stripe = find("stripe");
    assert_eq!(stripe["enabled"], false, "{stripe}");
    let r = app
        .client
        .get(app.url("/admin/sources"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

/// Validation errors are plain words, at their field: never the parser's own terms.
#[tokio::test]
async fn validation_errors_are_plain_words() {
    let app = TestApp::spawn().await;
    let admin = Admin::of(&app);
    let put = |body: Value| {
        let admin = &admin;
        async move {
            admin
                .call(reqwest::Method::PUT, "/admin/rate-limits", Some(body))
                .await
        }
    };
    let (status, v) = put(json!({"source": "github", "identifier": "x", "window": 1000})).await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["field"], "limit", "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .starts_with("limit: is required"),
        "{v}"
    );
    let (status, v) =
        put(json!({"source": "github", "identifier": "x", "window": 1000, "limit": "ten"})).await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["field"], "limit", "{v}");
    let error = v["error"].as_str().unwrap();
    assert!(
        error.contains("must be a whole number") && error.contains("\"ten\""),
        "{v}"
    );
    assert!(
        !error.contains("expected u64") && !error.contains("invalid type"),
        "{v}"
    );
    let (status, v) =
        put(json!({"source": "githbu", "identifier": "x", "window": 1000, "limit": 1})).await;
    assert_eq!(status, 400, "a limit for an unknown source is refused: {v}");
    assert_eq!(v["field"], "source", "{v}");
    let (status, v) =
        put(json!({"source": "githbu", "identifier": "x", "window": 1000, "limit": 1})).await;
    assert_eq!(status, 400, "a limit for an unknown source is refused: {v}");
    assert_eq!(v["field"], "source", "{v}");
    let (status, v) = admin
        .post(
            "/admin/filters",
            json!({"id": "f", "name": "f", "action": "exclude", "priority": "high", "conditions": []}),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["field"], "priority", "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("must be a whole number (got the text \"high\")"),
        "{v}"
    );
}

/// A route with three problems answers all three at once, each at its field, the first also as
/// the contract's `field` and `error`.
#[tokio::test]
async fn every_validation_error_is_answered_at_once() {
    let app = TestApp::spawn().await;
    let admin = Admin::of(&app);
    let (status, v) = admin
        .post(
            "/admin/routes",
            json!({"id": "bad id!", "name": "r", "targetAgents": ["nobody"],
                   "sourceFilters": [{"action": "include", "priority": 1,
                       "conditions": [{"field": "payload.x", "operator": "regex", "value": "("}]}]}),
        )
        .await;
    let (field, error) = crate::rules::validation_error(status, &v);
    let errors = v["errors"].as_array().unwrap();
    let fields: Vec<&str> = errors
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        [
            "id",
            "sourceFilters[0].conditions[0].value",
            "targetAgents[0]"
        ],
        "{v}"
    );
    assert_eq!(field, "id", "{v}");
    assert!(error.starts_with("id: "), "{v}");
    for e in errors {
        let text = e["error"].as_str().unwrap();
        assert!(
            !text.trim().is_empty() && !text.starts_with(e["field"].as_str().unwrap()),
            "{v}"
        );
    }
    assert!(
        errors[2]["error"]
            .as_str()
            .unwrap()
            .contains("unknown agent \"nobody\""),
        "{v}"
    );
    // Nothing was stored.
    let (status, _) = admin
        .call(reqwest::Method::GET, "/admin/routes/bad%20id!", None)
        .await;
    assert_eq!(status, 404);
    // One problem is one item; a body that cannot be read is one problem at its place.
    let (status, v) = admin
        .post(
            "/admin/filters",
            json!({"id": "f", "name": "f", "action": "exclude",
                                       "priority": "high", "conditions": []}),
        )
        .await;
    crate::rules::validation_error(status, &v);
    assert_eq!(v["errors"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["errors"][0]["line"], v["line"], "{v}");
}

/// "Send test event": one delivery of a small `router` event straight to the agent, outside the
/// routes, its outcome recorded as any delivery's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_event_is_delivered_to_one_agent_outside_the_routes() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let admin = Admin::of(&app);
    admin
        .create_agent(agent("t", &rx.url("/t"), json!({})))
        .await;
    let (status, v) = admin.post("/admin/agents/t/test", json!({})).await;
    assert_eq!(status, 200, "{v}");
    let id = Uuid::parse_str(v["eventId"].as_str().unwrap()).unwrap();
    let got = rx
        .wait_for("/t", 1, std::time::Duration::from_secs(10))
        .await;
    assert_eq!(got[0].json()["type"], "agent.test");
    assert_eq!(got[0].json()["source"], "router");
    let d = admin.wait_status(id, "delivered").await;
    assert_eq!(d["id"], v["deliveryId"], "{d}");
    assert_eq!(d["routeId"], "dashboard-test", "{d}");
    assert_eq!(d["attemptLog"][0]["trigger"], "initial", "{d}");

    let (status, v) = admin.post("/admin/agents/nobody/test", json!({})).await;
    assert_eq!(status, 404, "{v}");
    assert_eq!(v["success"], false, "{v}");
    let (status, v) = admin
        .post(
            "/admin/agents",
            json!({"id": "s", "name": "stream only", "enabled": true}),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let (status, v) = admin.post("/admin/agents/s/test", json!({})).await;
    assert_eq!(status, 409, "{v}");
}

/// The tester: a filter or a jq program, not saved, run against an archived event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_or_a_transformation_is_tried_on_a_recent_event_before_saving() {
    let app = TestApp::spawn().await;
    let admin = Admin::of(&app);
    let a = Webhook::github("push", gh_body(7))
        .send(&app)
        .await
        .accepted();
    let filter = |action: &str, login: &str| {
        json!({"id": "t", "name": "t", "action": action, "priority": 0, "conditions": [
            {"field": "payload.sender.login", "operator": "equals", "value": login}]})
    };
    let test = |body: Value| {
        let admin = &admin;
        async move { admin.post("/admin/rules/test", body).await }
    };
    let (status, v) = test(json!({"eventId": a.id, "filter": filter("exclude", "octocat")})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["kept"], false,
        "an exclude filter that matches drops it: {v}"
    );
    let (_, v) = test(json!({"eventId": a.id, "filter": filter("exclude", "hubot")})).await;
    assert_eq!(v["kept"], true, "{v}");
    let (_, v) = test(json!({"eventId": a.id, "filter": {
        "id": "t", "name": "t", "action": "transform", "priority": 0, "conditions": [],
        "transformation": {"type": "jq", "expression": ".payload.number += 1"}}}))
    .await;
    assert_eq!(v["changed"], true, "{v}");
    assert_eq!(v["event"]["payload"]["number"], 8, "{v}");
    let (status, v) = test(json!({"eventId": a.id,
        "transformation": {"type": "jq", "expression": "{n: .payload.number}"}}))
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["event"], json!({"n": 7}), "{v}");
    let (status, v) = test(json!({"eventId": a.id,
        "transformation": {"type": "jq", "expression": "error(\"boom\")"}}))
    .await;
    assert_eq!(status, 200, "{v}");
    assert!(
        v["error"].as_str().is_some_and(|e| e.contains("boom")),
        "{v}"
    );

    // Bad input: the contract's error, at its field.
    let (status, v) = test(json!({"eventId": a.id,
        "transformation": {"type": "jq", "expression": ".payload |"}}))
    .await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["field"], "transformation.expression", "{v}");
    let (status, v) = test(json!({"eventId": a.id, "filter": {"id": "t", "name": "t",
        "action": "drop", "priority": 0, "conditions": []}}))
    .await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["field"], "filter.action", "{v}");
    let (status, v) =
        test(json!({"eventId": Uuid::now_v7(), "filter": filter("exclude", "x")})).await;
    assert_eq!((status, v["field"].as_str()), (400, Some("eventId")), "{v}");
    let (status, v) = test(json!({"eventId": a.id})).await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["success"], false, "{v}");
}
