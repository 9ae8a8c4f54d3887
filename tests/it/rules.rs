//! Helpers shared by the rules tests (`rules_admin`, `rules_routing`): the admin API for filters,
//! routes and agents, rule bodies in the wire shape of API.md section 5, and the example
//! payloads with variations.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::receiver::{Received, TestReceiver};
use crate::signed::*;
use crate::support::*;

pub const GITHUB_PR: &[u8] = include_bytes!("../../examples/github-pull_request.json");
pub const LINEAR_ISSUE: &[u8] = include_bytes!("../../examples/linear-issue.json");

/// How long a test waits for something that should happen within milliseconds.
pub const SOON: Duration = Duration::from_secs(10);

/// A request to the admin API with `key` (none = no `Authorization`), answered whole.
pub async fn admin_with(
    app: &TestApp,
    method: Method,
    path: &str,
    key: Option<&str>,
    body: Option<Vec<u8>>,
) -> Answer {
    let mut req = app.client.request(method, app.url(path));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b);
    }
    Answer::read(req.send().await.unwrap()).await
}

/// A request to the admin API as the admin; the status and the JSON body (`Null` when empty).
pub async fn admin(
    app: &TestApp,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let a = admin_with(
        app,
        method,
        path,
        Some(ADMIN_KEY),
        body.map(|b| serde_json::to_vec(b).unwrap()),
    )
    .await;
    (a.status, a.json_opt().unwrap_or(Value::Null))
}

/// `POST /admin/{kind}`, asserting `201`; the stored object.
pub async fn create(app: &TestApp, kind: &str, body: Value) -> Value {
    let (status, v) = admin(app, Method::POST, &format!("/admin/{kind}"), Some(&body)).await;
    assert_eq!(status, 201, "POST /admin/{kind} {body}: {v}");
    v
}

/// `PUT /admin/{kind}/{id}` with `body`; the status and answer.
pub async fn put(app: &TestApp, kind: &str, id: &str, body: &Value) -> (u16, Value) {
    admin(app, Method::PUT, &format!("/admin/{kind}/{id}"), Some(body)).await
}

/// `PUT /admin/{kind}/{id}`, asserting `200` or `201`.
pub async fn put_ok(app: &TestApp, kind: &str, id: &str, body: &Value) -> Value {
    let (status, v) = put(app, kind, id, body).await;
    assert!(
        status == 200 || status == 201,
        "PUT /admin/{kind}/{id} {body}: {status} {v}"
    );
    v
}

/// `DELETE /admin/{kind}/{id}`; the status.
pub async fn delete(app: &TestApp, kind: &str, id: &str) -> u16 {
    admin(app, Method::DELETE, &format!("/admin/{kind}/{id}"), None)
        .await
        .0
}

pub fn cond(field: &str, operator: &str, value: Value) -> Value {
    json!({"field": field, "operator": operator, "value": value})
}

/// A global filter scoped to `source`/`eventType` (`None` = any).
pub fn filter(
    id: &str,
    action: &str,
    scope: (Option<&str>, Option<&str>),
    conditions: Value,
) -> Value {
    let mut f = json!({
        "id": id, "name": format!("filter {id}"), "conditions": conditions,
        "action": action, "priority": 0, "enabled": true
    });
    if let Some(s) = scope.0 {
        f["source"] = json!(s);
    }
    if let Some(t) = scope.1 {
        f["eventType"] = json!(t);
    }
    f
}

/// A route with no source filters (every processed event) to `targets`.
pub fn route(id: &str, targets: &[&str]) -> Value {
    json!({
        "id": id, "name": format!("route {id}"), "sourceFilters": [],
        "targetAgents": targets, "priority": 0, "enabled": true
    })
}

/// A route that takes only events matching `conditions` (one include source filter).
pub fn route_when(id: &str, targets: &[&str], conditions: Value) -> Value {
    let mut r = route(id, targets);
    r["sourceFilters"] = json!([{
        "id": format!("{id}-when"), "name": "when", "conditions": conditions,
        "action": "include", "priority": 0, "enabled": true
    }]);
    r
}

pub fn jq(expression: &str) -> Value {
    json!({"type": "jq", "expression": expression})
}

/// A push agent delivering to `rx` at `path`.
pub fn agent(id: &str, rx: &TestReceiver, path: &str) -> Value {
    json!({"id": id, "name": format!("agent {id}"), "url": rx.url(path), "enabled": true})
}

/// The example pull_request payload with `change` applied.
pub fn pr_with(change: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(GITHUB_PR).unwrap();
    change(&mut v);
    serde_json::to_vec(&v).unwrap()
}

/// The example Linear issue payload with `change` applied.
pub fn linear_with(change: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(LINEAR_ISSUE).unwrap();
    change(&mut v);
    serde_json::to_vec(&v).unwrap()
}

pub async fn send_pr(app: &TestApp, change: impl FnOnce(&mut Value)) -> Accepted {
    Webhook::github("pull_request", pr_with(change))
        .send(app)
        .await
        .accepted()
}

pub async fn send_linear(app: &TestApp, change: impl FnOnce(&mut Value)) -> Accepted {
    Webhook::linear(linear_with(change), Some(now_ms()))
        .send(app)
        .await
        .accepted()
}

/// An `internal` event (Standard Webhooks signed) whose body is `body`.
pub async fn send_internal(app: &TestApp, body: Value) -> Accepted {
    Webhook::standard(&Uuid::new_v4().to_string(), body.to_string())
        .send(app)
        .await
        .accepted()
}

/// Waits until `rx` has received the event `id` on `path`; that request.
pub async fn received_event(rx: &TestReceiver, path: &str, id: Uuid) -> Received {
    let id = id.to_string();
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        let got = rx.received(path);
        if let Some(r) = got.iter().find(|r| r.json()["id"] == id.as_str()) {
            return r.clone();
        }
        if tokio::time::Instant::now() >= deadline {
            let bodies: Vec<String> = got
                .iter()
                .map(|r| String::from_utf8_lossy(&r.body).chars().take(300).collect())
                .collect();
            panic!("{path} did not receive event {id} within {SOON:?}; it received {bodies:#?}");
        }
        // Woken by the next request or the deadline, whichever comes first.
        let _ = tokio::time::timeout_at(deadline, rx.wait_for(path, got.len() + 1, SOON)).await;
    }
}

/// How many requests `rx` received on `path` carrying the event `id`.
pub fn count_event(rx: &TestReceiver, path: &str, id: Uuid) -> usize {
    let id = id.to_string();
    rx.received(path)
        .iter()
        .filter(|r| r.json()["id"] == id.as_str())
        .count()
}

/// `GET /admin/events/{id}`: the whole answer (`event`, `filtered`, `deliveries`).
pub async fn event_record(app: &TestApp, id: Uuid) -> Value {
    let (status, v) = app.admin_get(&format!("/admin/events/{id}")).await;
    assert_eq!(status, 200, "GET /admin/events/{id}: {v}");
    v
}

/// Waits until every delivery of event `id` has settled (`delivered` or `dead`); the deliveries.
pub async fn settled_deliveries(app: &TestApp, id: Uuid) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        let v = event_record(app, id).await;
        let ds = v["deliveries"].as_array().cloned().unwrap_or_default();
        if ds
            .iter()
            .all(|d| d["status"] == "delivered" || d["status"] == "dead")
        {
            return ds;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "deliveries of {id} not settled within {SOON:?}: {ds:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Asserts a validation error: `400`, the error form plus `field`, code `validation_error`.
/// Returns (field, message).
pub fn validation_error(status: u16, v: &Value) -> (String, String) {
    assert_eq!(
        status, 400,
        "expected 400 validation_error, got {status}: {v}"
    );
    let keys: BTreeSet<&str> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect();
    // `line` and `column` come with an error at a place in the JSON body.
    let positioned = keys.contains("line");
    let mut expected: BTreeSet<&str> = ["code", "error", "errors", "field", "success"].into();
    if positioned {
        expected.extend(["line", "column"]);
        for k in ["line", "column"] {
            assert!(v[k].as_u64().is_some_and(|n| n >= 1), "{k}: {v}");
        }
    }
    assert_eq!(keys, expected, "{v}");
    assert_eq!(v["success"], false, "{v}");
    assert_eq!(v["code"], "validation_error", "{v}");
    let field = v["field"]
        .as_str()
        .unwrap_or_else(|| panic!("field is not a string: {v}"));
    let error = v["error"]
        .as_str()
        .filter(|e| !e.trim().is_empty())
        .unwrap_or_else(|| panic!("error is not a sentence: {v}"));
    // Every problem, the first being the answer's own.
    let errors = v["errors"]
        .as_array()
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| panic!("errors is not a list of problems: {v}"));
    assert_eq!(errors[0]["field"], field, "{v}");
    let first = errors[0]["error"].as_str().unwrap_or_else(|| panic!("{v}"));
    assert_eq!(error, format!("{field}: {first}"), "{v}");
    (field.to_string(), error.to_string())
}

/// Asserts that every key of `expected` is in `actual` with an equal value (recursively for
/// objects; arrays element by element): the server may add defaults but must keep what was sent.
pub fn assert_subset(expected: &Value, actual: &Value, at: &str) {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (k, ev) in e {
                let av = a
                    .get(k)
                    .unwrap_or_else(|| panic!("{at}.{k} is missing from {actual}"));
                assert_subset(ev, av, &format!("{at}.{k}"));
            }
        }
        (Value::Array(e), Value::Array(a)) => {
            assert_eq!(e.len(), a.len(), "{at}: {expected} vs {actual}");
            for (i, (ev, av)) in e.iter().zip(a).enumerate() {
                assert_subset(ev, av, &format!("{at}[{i}]"));
            }
        }
        _ => assert_eq!(expected, actual, "{at}"),
    }
}
