//! Filters, routes and transformations end to end through `/webhook` (API.md section 5): which
//! events are processed, which agents receive them and in what shape, dead-lettered
//! transformations, rule changes under traffic, and `POST /admin/events/{id}/replay`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::receiver::{Reply, TestReceiver};
use crate::rules::*;
use crate::signed::*;
use crate::support::*;

/// The two example filters of the original design, verbatim.
fn exclude_draft_prs() -> Value {
    json!({
        "id": "exclude-draft-prs",
        "name": "Exclude Draft PRs",
        "source": "github",
        "eventType": "pull_request",
        "conditions": [{"field": "payload.pull_request.draft", "operator": "equals", "value": true}],
        "action": "exclude",
        "priority": 100,
        "enabled": true
    })
}

fn high_priority_issues() -> Value {
    json!({
        "id": "high-priority-issues",
        "name": "High Priority Issues",
        "source": "linear",
        "eventType": "issue",
        "conditions": [{"field": "payload.data.priority", "operator": "gt", "value": 3}],
        "action": "include",
        "priority": 50,
        "enabled": true
    })
}

fn linear_comment() -> Vec<u8> {
    serde_json::to_vec(&json!({
        "action": "create",
        "type": "Comment",
        "createdAt": "2026-11-26T09:05:00.000Z",
        "organizationId": "2a8a4b2c-8f1e-4a1b-9c3d-1f2e3d4c5b6a",
        "url": "https://linear.app/acme/issue/ENG-123#comment-1",
        "data": {
            "id": "c0a8e1f2-0000-4000-8000-000000000001",
            "body": "Reproduced on main.",
            "issueId": "9cfb482a-81e3-4154-b5b9-2c805e70a02d",
            "createdAt": "2026-11-26T09:05:00.000Z"
        },
        "webhookTimestamp": 0
    }))
    .unwrap()
}

#[tokio::test]
async fn the_example_filters_of_the_design() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    create(&app, "agents", agent("all", &rx, "/all")).await;
    create(&app, "routes", route("everything", &["all"])).await;
    create(&app, "filters", exclude_draft_prs()).await;
    create(&app, "filters", high_priority_issues()).await;

    let draft = send_pr(&app, |p| p["pull_request"]["draft"] = json!(true)).await;
    assert!(!draft.processed && !draft.routed, "draft PR: {draft:?}");
    let ready = send_pr(&app, |_| {}).await;
    assert!(ready.processed && ready.routed, "ready PR: {ready:?}");
    // The exclude filter is scoped to pull_request: an issue event with the same field passes.
    let issue_event = Webhook::github(
        "issues",
        pr_with(|p| p["pull_request"]["draft"] = json!(true)),
    )
    .send(&app)
    .await
    .accepted();
    assert!(issue_event.processed, "outside the exclude filter's scope");

    let p4 = send_linear(&app, |i| i["data"]["priority"] = json!(4)).await;
    assert!(p4.processed && p4.routed, "priority 4: {p4:?}");
    let p3 = send_linear(&app, |i| i["data"]["priority"] = json!(3)).await;
    assert!(!p3.processed && !p3.routed, "priority 3 is not > 3: {p3:?}");
    let p2 = send_linear(&app, |i| i["data"]["priority"] = json!(2)).await;
    assert!(!p2.processed && !p2.routed, "priority 2: {p2:?}");
    let comment = Webhook::linear(linear_comment(), Some(now_ms()))
        .send(&app)
        .await
        .accepted();
    assert!(
        comment.processed && comment.routed,
        "a comment is outside the include filter's scope: {comment:?}"
    );
    let rec = event_record(&app, comment.id).await;
    assert_eq!(rec["event"]["type"], "comment");

    // Filtered events are archived, marked filtered, with no deliveries.
    let filtered = [draft.id, p3.id, p2.id];
    let processed = [ready.id, issue_event.id, p4.id, comment.id];
    for id in filtered {
        let rec = event_record(&app, id).await;
        assert_eq!(rec["filtered"], true, "{rec}");
        assert_eq!(rec["deliveries"], json!([]), "{rec}");
    }
    let (items, _) = list_events(&app, "status=filtered").await;
    let mut listed = ids(&items);
    listed.sort();
    let mut expected = filtered.to_vec();
    expected.sort();
    assert_eq!(listed, expected, "GET /admin/events?status=filtered");
    let (items, _) = list_events(&app, "status=processed").await;
    let listed: HashSet<Uuid> = ids(&items).into_iter().collect();
    assert_eq!(listed, processed.into_iter().collect());

    // The agent gets exactly the processed events.
    for id in processed {
        let ds = settled_deliveries(&app, id).await;
        assert_eq!(ds.len(), 1, "{ds:?}");
        assert_eq!(ds[0]["status"], "delivered", "{ds:?}");
        assert_eq!(count_event(&rx, "/all", id), 1);
    }
    for id in filtered {
        assert_eq!(
            count_event(&rx, "/all", id),
            0,
            "a filtered event was delivered"
        );
    }
}

#[tokio::test]
async fn a_path_across_an_array_holds_if_any_element_does() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    create(&app, "agents", agent("triage", &rx, "/triage")).await;
    create(
        &app,
        "routes",
        route_when(
            "bugs",
            &["triage"],
            json!([cond(
                "payload.pull_request.labels.name",
                "equals",
                json!("bug")
            )]),
        ),
    )
    .await;
    let plain = send_pr(&app, |_| {}).await;
    assert!(plain.processed && !plain.routed, "{plain:?}");
    let none = send_pr(&app, |p| p["pull_request"]["labels"] = json!([])).await;
    assert!(!none.routed, "{none:?}");
    let bug = send_pr(&app, |p| {
        p["pull_request"]["labels"]
            .as_array_mut()
            .unwrap()
            .push(json!({"id": 9, "name": "bug", "color": "d73a4a"}))
    })
    .await;
    assert!(bug.processed && bug.routed, "{bug:?}");
    received_event(&rx, "/triage", bug.id).await;
    settled_deliveries(&app, bug.id).await;
    assert_eq!(rx.received("/triage").len(), 1, "only the bug PR");
    assert_eq!(event_record(&app, plain.id).await["deliveries"], json!([]));
}

#[tokio::test]
async fn condition_operators() {
    let app = TestApp::spawn().await;
    let scope = (Some("github"), Some("pull_request"));
    type Change = fn(&mut Value);
    let same: Change = |_| {};
    let insensitive = |mut c: Value| {
        c["caseSensitive"] = json!(false);
        c
    };
    let negated = |mut c: Value| {
        c["negate"] = json!(true);
        c
    };
    let title = "payload.pull_request.title";
    // (condition, change to the example PR, holds?)
    let cases: Vec<(Value, Change, bool)> = vec![
        (
            cond(
                title,
                "equals",
                json!("Add retry with exponential backoff to the delivery worker"),
            ),
            same,
            true,
        ),
        (
            cond(
                title,
                "equals",
                json!("add retry with exponential backoff to the delivery worker"),
            ),
            same,
            false,
        ),
        (
            insensitive(cond(
                title,
                "equals",
                json!("ADD RETRY WITH EXPONENTIAL BACKOFF TO THE DELIVERY WORKER"),
            )),
            same,
            true,
        ),
        (
            cond("payload.pull_request.draft", "equals", json!(false)),
            same,
            true,
        ),
        (cond("payload.number", "equals", json!(1347)), same, true),
        (
            negated(cond("payload.pull_request.draft", "equals", json!(true))),
            same,
            true,
        ),
        (
            negated(cond("payload.pull_request.draft", "equals", json!(true))),
            |p| p["pull_request"]["draft"] = json!(true),
            false,
        ),
        (
            negated(cond("payload.pull_request.nope", "equals", json!(1))),
            same,
            true,
        ),
        (
            cond(
                "payload.pull_request.labels.0.name",
                "equals",
                json!("enhancement"),
            ),
            same,
            true,
        ),
        (
            cond(
                "payload.pull_request.labels.1.name",
                "equals",
                json!("enhancement"),
            ),
            same,
            false,
        ),
        (
            cond(
                "payload.pull_request.labels.1.name",
                "equals",
                json!("needs-review"),
            ),
            same,
            true,
        ),
        (
            cond("payload.pull_request.labels.7.name", "exists", json!(true)),
            same,
            false,
        ),
        (
            cond("payload.installation.id", "exists", json!(true)),
            same,
            true,
        ),
        (
            cond("payload.pull_request.auto_merge", "exists", json!(true)),
            same,
            false,
        ),
        (
            cond("payload.pull_request.auto_merge", "exists", json!(false)),
            same,
            true,
        ),
        (
            cond("payload.installation.id", "exists", json!(false)),
            same,
            false,
        ),
        (
            cond("payload.action", "in", json!(["opened", "reopened"])),
            same,
            true,
        ),
        (cond("payload.action", "in", json!(["closed"])), same, false),
        (
            insensitive(cond("payload.action", "in", json!(["OPENED"]))),
            same,
            true,
        ),
        (cond("payload.number", "in", json!([1, 1347])), same, true),
        (
            cond("payload.repository.topics", "contains", json!("webhooks")),
            same,
            true,
        ),
        (
            cond("payload.repository.topics", "contains", json!("webhook")),
            same,
            false,
        ),
        (
            cond(title, "contains", json!("exponential backoff")),
            same,
            true,
        ),
        (cond(title, "contains", json!("Exponential")), same, false),
        (
            insensitive(cond(title, "contains", json!("Exponential"))),
            same,
            true,
        ),
        (cond(title, "regex", json!("^Add .* backoff")), same, true),
        (cond(title, "regex", json!("^add retry")), same, false),
        (
            insensitive(cond(title, "regex", json!("^add retry"))),
            same,
            true,
        ),
        (
            cond(
                "payload.pull_request.head.ref",
                "regex",
                json!("^retry-[a-z]+$"),
            ),
            same,
            true,
        ),
        (
            cond("payload.pull_request.additions", "gt", json!(100)),
            same,
            true,
        ),
        (
            cond("payload.pull_request.additions", "gt", json!(120)),
            same,
            false,
        ),
        (
            cond("payload.pull_request.additions", "lt", json!(120.5)),
            same,
            true,
        ),
        (
            cond("payload.pull_request.created_at", "gt", json!("2026-01-01")),
            same,
            true,
        ),
        (
            cond("payload.pull_request.created_at", "lt", json!("2026-01-01")),
            same,
            false,
        ),
        (cond("payload.number", "gt", json!("1")), same, false),
        (
            cond(
                "payload.pull_request.labels.name",
                "in",
                json!(["bug", "needs-review"]),
            ),
            same,
            true,
        ),
        (
            cond("payload.pull_request.labels.name", "regex", json!("^bug$")),
            same,
            false,
        ),
    ];
    let mut failures = Vec::new();
    for (i, (c, change, holds)) in cases.into_iter().enumerate() {
        let f = filter("only", "include", scope, json!([c.clone()]));
        put_ok(&app, "filters", "only", &f).await;
        let a = send_pr(&app, change).await;
        if a.processed != holds {
            failures.push(format!("case {i}: {c} should hold: {holds}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn routed_only_when_an_agent_will_receive_it() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    async fn pr(app: &TestApp) -> Accepted {
        send_pr(app, |_| {}).await
    }

    let a = pr(&app).await;
    assert!(a.processed && !a.routed, "no routes: {a:?}");

    let mut off = agent("off", &rx, "/off");
    off["enabled"] = json!(false);
    create(&app, "agents", off).await;
    create(&app, "agents", agent("on", &rx, "/on")).await;
    create(
        &app,
        "agents",
        json!({"id": "streamer", "name": "Stream only"}),
    )
    .await;

    create(&app, "routes", route("to-off", &["off"])).await;
    let a = pr(&app).await;
    assert!(a.processed && !a.routed, "route to a disabled agent: {a:?}");

    let mut r = route("to-on", &["on"]);
    r["enabled"] = json!(false);
    create(&app, "routes", r).await;
    let a = pr(&app).await;
    assert!(!a.routed, "disabled route: {a:?}");

    let r = route_when(
        "to-on",
        &["on"],
        json!([cond("payload.action", "equals", json!("closed"))]),
    );
    put_ok(&app, "routes", "to-on", &r).await;
    let a = pr(&app).await;
    assert!(!a.routed, "route whose source filter does not match: {a:?}");
    assert_eq!(event_record(&app, a.id).await["deliveries"], json!([]));

    // A disabled source filter is as if absent: the route takes everything.
    let mut r = r.clone();
    r["sourceFilters"][0]["enabled"] = json!(false);
    put_ok(&app, "routes", "to-on", &r).await;
    // A disabled global filter has no effect either.
    let mut f = filter("drop-all", "exclude", (None, None), json!([]));
    f["enabled"] = json!(false);
    create(&app, "filters", f).await;
    let a = pr(&app).await;
    assert!(a.processed && a.routed, "{a:?}");
    received_event(&rx, "/on", a.id).await;
    let ds = settled_deliveries(&app, a.id).await;
    let agents: Vec<&str> = ds.iter().map(|d| d["agentId"].as_str().unwrap()).collect();
    assert_eq!(agents, ["on"], "{ds:?}");
    assert!(
        rx.received("/off").is_empty(),
        "a disabled agent got a delivery"
    );

    delete(&app, "routes", "to-on").await;
    let a = pr(&app).await;
    assert!(!a.routed, "only a route to a disabled agent is left: {a:?}");
    create(&app, "routes", route("to-streamer", &["streamer"])).await;
    let a = pr(&app).await;
    assert!(
        a.routed,
        "a stream-only agent receives through its stream: {a:?}"
    );
}

#[tokio::test]
async fn one_delivery_per_agent_from_the_route_of_largest_priority() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    create(&app, "agents", agent("a", &rx, "/a")).await;
    create(&app, "agents", agent("b", &rx, "/b")).await;
    for (id, priority, targets) in [
        ("low", 1, vec!["a"]),
        ("high", 7, vec!["a", "b"]),
        ("mid", 3, vec!["b", "a"]),
    ] {
        let mut r = route(id, &targets);
        r["priority"] = json!(priority);
        r["transformation"] = jq(&format!(". + {{via: \"{id}\"}}"));
        create(&app, "routes", r).await;
    }
    let ev = send_pr(&app, |_| {}).await;
    assert!(ev.routed);
    let ds = settled_deliveries(&app, ev.id).await;
    let mut by_agent: Vec<(String, String, i64)> = ds
        .iter()
        .map(|d| {
            (
                d["agentId"].as_str().unwrap().to_string(),
                d["routeId"].as_str().unwrap().to_string(),
                d["priority"].as_i64().unwrap(),
            )
        })
        .collect();
    by_agent.sort();
    assert_eq!(
        by_agent,
        [
            ("a".to_string(), "high".to_string(), 7),
            ("b".to_string(), "high".to_string(), 7)
        ],
        "{ds:?}"
    );
    for path in ["/a", "/b"] {
        let got = received_event(&rx, path, ev.id).await;
        assert_eq!(got.json()["via"], "high", "{path}");
        // Every delivery has settled, so nothing else is on its way.
        assert_eq!(count_event(&rx, path, ev.id), 1, "{path}");
    }
}

#[tokio::test]
async fn larger_route_priority_is_delivered_first() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let mut slow = agent("slow", &rx, "/slow");
    slow["maxConcurrency"] = json!(1);
    create(&app, "agents", slow).await;
    for (id, priority) in [("low", 1), ("high", 9)] {
        let mut r = route_when(
            id,
            &["slow"],
            json!([cond("payload.kind", "equals", json!(id))]),
        );
        r["priority"] = json!(priority);
        create(&app, "routes", r).await;
    }
    // The first delivery holds the agent's only slot while the others queue up.
    rx.script("/slow", [Reply::Hang(Duration::from_secs(2))]);
    let job = |kind: &str, n: u32| json!({"type": "job.queued", "kind": kind, "n": n});
    send_internal(&app, job("low", 0)).await;
    rx.wait_for("/slow", 1, SOON).await;
    for n in 1..=3 {
        send_internal(&app, job("low", n)).await;
    }
    for n in 4..=5 {
        send_internal(&app, job("high", n)).await;
    }
    assert_eq!(
        rx.received("/slow").len(),
        1,
        "the first delivery ended before the queue was built"
    );
    let got = rx.wait_for("/slow", 6, SOON).await;
    let kinds: Vec<String> = got
        .iter()
        .map(|r| r.json()["payload"]["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        kinds,
        ["low", "high", "high", "low", "low", "low"],
        "delivery order"
    );
}

#[tokio::test]
async fn a_route_transformation_reshapes_what_its_agent_receives() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    create(&app, "agents", agent("summary", &rx, "/summary")).await;
    create(&app, "agents", agent("raw", &rx, "/raw")).await;
    let mut r = route("summarize", &["summary"]);
    r["transformation"] = jq(r#"{
        id: "forged", source: "forged", deliveryId: "forged", timestamp: 0,
        type: "pr.summary",
        title: .payload.pull_request.title,
        labels: [.payload.pull_request.labels[].name],
        author: .payload.sender.login
    }"#);
    create(&app, "routes", r).await;
    create(&app, "routes", route("as-is", &["raw"])).await;

    let ev = send_pr(&app, |p| {
        p["pull_request"]["title"] = json!("Fix the flaky test")
    })
    .await;
    let original = archived_event(&app, ev.id).await;
    let got = received_event(&rx, "/summary", ev.id).await.json();
    for field in ["id", "source", "deliveryId", "timestamp"] {
        assert_eq!(got[field], original[field], "{field} changed: {got}");
    }
    assert_eq!(got["type"], "pr.summary", "{got}");
    assert_eq!(got["title"], "Fix the flaky test", "{got}");
    assert_eq!(
        got["labels"],
        json!(["enhancement", "needs-review"]),
        "{got}"
    );
    assert_eq!(got["author"], "octocat", "{got}");
    assert!(
        got.get("payload").is_none(),
        "the program dropped payload: {got}"
    );

    // The other route's agent gets the event as it was.
    let raw = received_event(&rx, "/raw", ev.id).await.json();
    assert_eq!(raw, original, "the untransformed route");
}

#[tokio::test]
async fn global_transform_filters_apply_to_every_route_in_priority_order() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    create(&app, "agents", agent("a", &rx, "/a")).await;
    create(&app, "agents", agent("b", &rx, "/b")).await;
    create(&app, "routes", route("to-a", &["a"])).await;
    let mut r = route("to-b", &["b"]);
    r["transformation"] = jq(r#"{route: "b", stage: .payload.stage, team: .payload.team}"#);
    create(&app, "routes", r).await;
    let transform = |id: &str, priority: i64, source: &str, program: &str| {
        let mut f = filter(id, "transform", (Some(source), None), json!([]));
        f["priority"] = json!(priority);
        f["transformation"] = jq(program);
        f
    };
    // Created in the reverse of their run order: priority decides.
    create(
        &app,
        "filters",
        transform("second", 1, "github", r#".payload.stage += "-second""#),
    )
    .await;
    create(
        &app,
        "filters",
        transform(
            "first",
            10,
            "github",
            r#".payload.stage = "first" | .payload.team = "core" | .id = "x" | .source = "x" | .timestamp = 0"#,
        ),
    )
    .await;
    create(
        &app,
        "filters",
        transform("linear-only", 50, "linear", r#".payload.team = "linear""#),
    )
    .await;

    let ev = send_pr(&app, |_| {}).await;
    assert!(ev.processed && ev.routed);
    let a = received_event(&rx, "/a", ev.id).await.json();
    assert_eq!(a["payload"]["stage"], "first-second", "{a}");
    assert_eq!(a["payload"]["team"], "core", "{a}");
    assert_eq!(a["payload"]["pull_request"]["number"], 1347, "{a}");
    let original = archived_event(&app, ev.id).await;
    for field in ["id", "source", "deliveryId", "timestamp"] {
        assert_eq!(a[field], original[field], "a filter changed {field}: {a}");
    }
    let b = received_event(&rx, "/b", ev.id).await.json();
    assert_eq!(b["route"], "b", "{b}");
    assert_eq!(
        b["stage"], "first-second",
        "the route saw the transformed event: {b}"
    );
    assert_eq!(b["team"], "core", "{b}");
    assert_eq!(b["id"], ev.id.to_string(), "{b}");
}

#[tokio::test]
async fn a_failing_transformation_dead_letters_only_its_delivery() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    for id in ["boom", "slow", "scalar", "many", "fine"] {
        create(&app, "agents", agent(id, &rx, &format!("/{id}"))).await;
    }
    let mut r = route("boom", &["boom"]);
    r["transformation"] = jq(r#"if .type == "pull_request" then error("boom") else . end"#);
    create(&app, "routes", r).await;
    let mut r = route("slow", &["slow"]);
    r["transformation"] = jq("{n: ([range(1e9)] | length)}");
    create(&app, "routes", r).await;
    // Not exactly one object: a number, and two objects.
    let mut r = route("scalar", &["scalar"]);
    r["transformation"] = jq(".payload.number");
    create(&app, "routes", r).await;
    let mut r = route("many", &["many"]);
    r["transformation"] = jq(".payload, .payload");
    create(&app, "routes", r).await;
    create(&app, "routes", route("fine", &["fine"])).await;

    // Without the 50 ms jq budget the runaway program (a billion-element array) would hold the
    // webhook far longer; the bound only tells that apart, with room for a loaded machine.
    let started = Instant::now();
    let ev = send_pr(&app, |_| {}).await;
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "a runaway transformation held the webhook for {:?}",
        started.elapsed()
    );
    assert!(ev.processed && ev.routed, "{ev:?}");
    received_event(&rx, "/fine", ev.id).await;

    let ds = settled_deliveries(&app, ev.id).await;
    let status: HashMap<&str, &str> = ds
        .iter()
        .map(|d| {
            (
                d["agentId"].as_str().unwrap(),
                d["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        status,
        HashMap::from([
            ("boom", "dead"),
            ("slow", "dead"),
            ("scalar", "dead"),
            ("many", "dead"),
            ("fine", "delivered")
        ]),
        "{ds:?}"
    );
    let (code, dlq) = app.admin_get("/admin/dlq").await;
    assert_eq!(code, 200, "{dlq}");
    assert_eq!(dlq["nextCursor"], Value::Null, "{dlq}");
    let items = dlq["items"].as_array().expect("items");
    assert_eq!(items.len(), 4, "{dlq}");
    for d in items {
        assert_eq!(d["eventId"], ev.id.to_string(), "{d}");
        assert_eq!(d["status"], "dead", "{d}");
        let error = d["lastError"].as_str().unwrap_or_default().to_lowercase();
        match d["agentId"].as_str() {
            Some("boom") => assert!(error.contains("boom"), "{d}"),
            Some("slow") => assert!(
                error.contains("budget") || error.contains("time"),
                "the error does not say it ran out of time: {d}"
            ),
            Some("scalar" | "many") => assert!(!error.trim().is_empty(), "{d}"),
            _ => panic!("unexpected dead letter {d}"),
        }
    }
    for path in ["/boom", "/slow", "/scalar", "/many"] {
        assert!(
            rx.received(path).is_empty(),
            "{path} received a failed delivery"
        );
    }

    // Nothing to send, so no blind retry: neither one by one nor in bulk.
    let boom = items.iter().find(|d| d["agentId"] == "boom").unwrap();
    let (code, body) = admin(
        &app,
        Method::POST,
        &format!("/admin/dlq/{}/retry", boom["id"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!(code, 404, "{body}");
    assert!(body["error"].as_str().unwrap().contains("replay"), "{body}");
    let (code, body) = admin(&app, Method::POST, "/admin/dlq/retry", Some(&json!({}))).await;
    assert_eq!((code, &body["retried"]), (200, &json!(0)), "{body}");
    assert!(rx.received("/boom").is_empty());

    // Other events are unaffected by the failure: a Linear event passes the boom route.
    let issue = send_linear(&app, |_| {}).await;
    received_event(&rx, "/boom", issue.id).await;
}

#[tokio::test]
async fn rule_changes_apply_to_the_very_next_event() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    create(&app, "agents", agent("a", &rx, "/a")).await;
    for _ in 0..3 {
        create(&app, "filters", exclude_draft_prs()).await;
        let draft = send_pr(&app, |p| p["pull_request"]["draft"] = json!(true)).await;
        assert!(!draft.processed, "the new filter was not applied");
        assert_eq!(delete(&app, "filters", "exclude-draft-prs").await, 204);
        let draft = send_pr(&app, |p| p["pull_request"]["draft"] = json!(true)).await;
        assert!(draft.processed, "the deleted filter still applied");

        let mut f = exclude_draft_prs();
        f["enabled"] = json!(false);
        put_ok(&app, "filters", "exclude-draft-prs", &f).await;
        assert!(
            send_pr(&app, |p| p["pull_request"]["draft"] = json!(true))
                .await
                .processed
        );
        f["enabled"] = json!(true);
        put_ok(&app, "filters", "exclude-draft-prs", &f).await;
        assert!(
            !send_pr(&app, |p| p["pull_request"]["draft"] = json!(true))
                .await
                .processed
        );
        delete(&app, "filters", "exclude-draft-prs").await;

        create(&app, "routes", route("r", &["a"])).await;
        let ev = send_pr(&app, |_| {}).await;
        assert!(ev.routed, "the new route was not applied");
        assert_eq!(delete(&app, "routes", "r").await, 204);
        assert!(
            !send_pr(&app, |_| {}).await.routed,
            "the deleted route still applied"
        );
    }
}

/// The two states the concurrency test flips between, each one PUT of the route `flip`: its
/// target, its transformation and its source filter change together.
fn flip_state(to_a: bool) -> Value {
    let (target, skip) = if to_a { ("a", "odd") } else { ("b", "even") };
    let mut r = route_when(
        "flip",
        &[target],
        json!([cond("payload.parity", "equals", json!(skip))]),
    );
    r["sourceFilters"][0]["action"] = json!("exclude");
    r["transformation"] = jq(&format!(". + {{marker: \"{target}\"}}"));
    r
}

#[tokio::test]
async fn a_rule_change_under_traffic_is_all_or_nothing() {
    // Posters run as fast as the server answers, for as long as the flips take.
    let app = Arc::new(TestApp::spawn_with(|cfg| cfg.default_rate_limit = 100_000_000).await);
    let rx = TestReceiver::start().await;
    create(&app, "agents", agent("a", &rx, "/a")).await;
    create(&app, "agents", agent("b", &rx, "/b")).await;
    create(&app, "routes", flip_state(true)).await;

    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let mut posters = Vec::new();
    for task in 0..4 {
        let (app, stop, answered) = (app.clone(), stop.clone(), answered.clone());
        posters.push(tokio::spawn(async move {
            let mut out = Vec::new();
            let mut n = 0u32;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let parity = if (n + task).is_multiple_of(2) {
                    "even"
                } else {
                    "odd"
                };
                let body = json!({"type": "tick", "task": task, "n": n, "parity": parity});
                let a = send_internal(&app, body).await;
                answered.fetch_add(1, Ordering::SeqCst);
                out.push((a, parity));
            }
            out
        }));
    }
    let flipper = {
        let (app, stop, answered) = (app.clone(), stop.clone(), answered.clone());
        tokio::spawn(async move {
            for flip in 1..=12 {
                // Let a few events through under each state.
                let seen = answered.load(Ordering::SeqCst);
                wait_for(SOON, || async {
                    (answered.load(Ordering::SeqCst) >= seen + 4).then_some(())
                })
                .await;
                put_ok(&app, "routes", "flip", &flip_state(flip % 2 == 0)).await;
            }
            let seen = answered.load(Ordering::SeqCst);
            wait_for(SOON, || async {
                (answered.load(Ordering::SeqCst) >= seen + 4).then_some(())
            })
            .await;
            stop.store(true, Ordering::SeqCst);
        })
    };
    flipper.await.unwrap();
    let mut events = Vec::new();
    for p in posters {
        events.extend(p.await.unwrap());
    }

    let mut expected_at: HashMap<&str, HashSet<String>> = HashMap::new();
    let mut unrouted = Vec::new();
    for (a, parity) in &events {
        assert!(a.processed, "{a:?}");
        if a.routed {
            let path = if *parity == "even" { "/a" } else { "/b" };
            expected_at
                .entry(path)
                .or_default()
                .insert(a.id.to_string());
        } else {
            unrouted.push(a.id);
        }
    }
    for path in ["/a", "/b"] {
        let want = expected_at.get(path).cloned().unwrap_or_default();
        assert!(
            !want.is_empty(),
            "no event was routed to {path}: the flips did not interleave with traffic"
        );
        let got = rx.wait_for(path, want.len(), SOON).await;
        let marker = &path[1..];
        let parity = if marker == "a" { "even" } else { "odd" };
        let mut ids = HashSet::new();
        for r in &got {
            let body = r.json();
            assert_eq!(
                body["marker"], marker,
                "half-applied rule set at {path}: {body}"
            );
            assert_eq!(body["payload"]["parity"], parity, "{path}: {body}");
            assert!(
                ids.insert(body["id"].as_str().unwrap().to_string()),
                "twice: {body}"
            );
        }
        assert_eq!(
            ids, want,
            "{path} received other events than those answered routed"
        );
    }
    for id in unrouted {
        assert_eq!(
            event_record(&app, id).await["deliveries"],
            json!([]),
            "answered routed: false but has deliveries"
        );
    }
}

#[tokio::test]
async fn replay_routes_an_archived_event_again() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let ev = send_pr(&app, |_| {}).await;
    assert!(!ev.routed);

    create(&app, "agents", agent("late", &rx, "/late")).await;
    let mut late = route_when(
        "github-to-late",
        &["late"],
        json!([cond("source", "equals", json!("github"))]),
    );
    late["priority"] = json!(7);
    create(&app, "routes", late).await;
    let path = format!("/admin/events/{}/replay", ev.id);
    let a = admin_with(&app, Method::POST, &path, None, None).await;
    assert_eq!(a.status, 401, "replay without the admin key");
    let (status, v) = admin(&app, Method::POST, &path, None).await;
    let first = assert_replay_answer(status, &v, ev.id);
    let got = received_event(&rx, "/late", ev.id).await.json();
    assert_eq!(got, archived_event(&app, ev.id).await);
    let ds = settled_deliveries(&app, ev.id).await;
    assert_eq!(ds.len(), 1, "{ds:?}");
    assert_eq!(
        ds[0]["id"], first,
        "the delivery the replay answered: {ds:?}"
    );
    assert_eq!(ds[0]["routeId"], "github-to-late");
    assert_eq!(ds[0]["priority"], 7);
    assert_eq!(ds[0]["status"], "delivered");

    // Replaying again makes fresh deliveries again.
    let (status, v) = admin(&app, Method::POST, &path, None).await;
    let second = assert_replay_answer(status, &v, ev.id);
    assert_ne!(second, first, "a second replay makes a new delivery");
    rx.wait_for("/late", 2, SOON).await;
    let ds = settled_deliveries(&app, ev.id).await;
    let mut got: Vec<&Value> = ds.iter().map(|d| &d["id"]).collect();
    got.sort_by_key(|v| v.to_string());
    let mut want = vec![&first, &second];
    want.sort_by_key(|v| v.to_string());
    assert_eq!(got, want, "{ds:?}");
}

/// Asserts a replay answer of an event that one route (`github-to-late`, priority 7) takes to
/// agent `late`: `200 {"eventId", "processed": true, "routed": true, "deliveries": [{"id",
/// "agentId", "routeId", "priority", "status": "pending"}]}`. The new delivery's id.
fn assert_replay_answer(status: u16, v: &Value, event: Uuid) -> Value {
    assert_eq!(status, 200, "replay: {v}");
    let mut keys: Vec<&str> = v
        .as_object()
        .unwrap_or_else(|| panic!("replay answer: {v}"))
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        ["deliveries", "eventId", "processed", "routed"],
        "{v}"
    );
    assert_eq!(v["eventId"], event.to_string(), "{v}");
    assert_eq!(v["processed"], true, "{v}");
    assert_eq!(v["routed"], true, "{v}");
    let ds = v["deliveries"].as_array().expect("deliveries");
    assert_eq!(ds.len(), 1, "{v}");
    let d = &ds[0];
    let id = d["id"].as_str().unwrap_or_default();
    assert!(Uuid::parse_str(id).is_ok(), "delivery id: {v}");
    assert_eq!(
        d,
        &json!({"id": id, "agentId": "late", "routeId": "github-to-late", "priority": 7,
                "status": "pending"}),
        "{v}"
    );
    d["id"].clone()
}

#[tokio::test]
async fn replay_of_an_unknown_event_is_404() {
    let app = TestApp::spawn().await;
    for id in [Uuid::now_v7().to_string(), "not-an-event".to_string()] {
        let path = format!("/admin/events/{id}/replay");
        let (status, v) = admin(&app, Method::POST, &path, None).await;
        assert_eq!(status, 404, "{path}: {v}");
        assert_error_form(&v);
    }
}
