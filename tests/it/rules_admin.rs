//! The rules admin API (`/admin/filters`, `/admin/routes`, `/admin/agents`; API.md sections 5
//! and 7): create, read, replace, delete, the agent's secret and API key, validation errors that
//! name the field, and the `[[agents]]`/`[[filters]]`/`[[routes]]` of the config file (section 8).

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use reqwest::Method;
use serde_json::{Value, json};

use crate::receiver::TestReceiver;
use crate::rules::*;
use crate::signed::*;
use crate::support::*;

/// Every admin endpoint of `kind` refuses a request without the admin key.
async fn assert_admin_only(app: &TestApp, kind: &str, body: &Value) {
    let bytes = serde_json::to_vec(body).unwrap();
    let one = format!("/admin/{kind}/x1");
    let list = format!("/admin/{kind}");
    let calls = [
        (Method::GET, list.as_str(), None),
        (Method::POST, list.as_str(), Some(bytes.clone())),
        (Method::GET, one.as_str(), None),
        (Method::PUT, one.as_str(), Some(bytes.clone())),
        (Method::DELETE, one.as_str(), None),
    ];
    for (method, path, body) in calls {
        for key in [None, Some("wrong-key"), Some(AGENT_KEY)] {
            let a = admin_with(app, method.clone(), path, key, body.clone()).await;
            assert_eq!(a.status, 401, "{method} {path} with key {key:?}");
            assert_error_form(&a.json());
        }
    }
    let (_, v) = app.admin_get(&list).await;
    assert_eq!(v["items"], json!([]), "an unauthorized call changed {kind}");
}

/// The CRUD contract of one kind: `first` and `second` share the id `x1` and differ otherwise.
async fn crud_roundtrip(app: &TestApp, kind: &str, first: Value, second: Value) {
    assert_admin_only(app, kind, &first).await;
    let list = format!("/admin/{kind}");
    let one = format!("/admin/{kind}/x1");

    let created = create(app, kind, first.clone()).await;
    assert_subset(&first, &created, kind);

    let (status, v) = admin(app, Method::POST, &list, Some(&second)).await;
    assert_eq!(status, 409, "POST of a taken id: {v}");
    assert_error_form(&v);

    let (status, v) = app.admin_get(&list).await;
    assert_eq!(status, 200);
    assert_eq!(v, json!({"items": [created.clone()], "nextCursor": null}));
    assert_eq!(app.admin_get(&one).await, (200, created.clone()));

    let (status, v) = app.admin_get(&format!("/admin/{kind}/nope")).await;
    assert_eq!(status, 404, "{v}");
    assert_error_form(&v);

    // PUT replaces (200) an existing id...
    let (status, replaced) = put(app, kind, "x1", &second).await;
    assert_eq!(status, 200, "PUT replacing: {replaced}");
    assert_subset(&second, &replaced, kind);
    assert_eq!(app.admin_get(&one).await, (200, replaced.clone()));

    // ...and creates a new one, answering 200 like every PUT (API.md section 7).
    let mut third = first.clone();
    third["id"] = json!("x2");
    let (status, made) = put(app, kind, "x2", &third).await;
    assert_eq!(status, 200, "PUT creating: {made}");
    assert_subset(&third, &made, kind);
    let (_, v) = app.admin_get(&list).await;
    assert_eq!(v["items"].as_array().unwrap().len(), 2, "{v}");

    // The id in the body must be the id in the path; a refused PUT changes nothing.
    let (status, v) = put(app, kind, "x1", &third).await;
    assert_eq!(status, 400, "PUT with another id in the body: {v}");
    assert_error_form_with_field(&v);
    assert_eq!(app.admin_get(&one).await, (200, replaced));
    assert_eq!(
        app.admin_get(&format!("/admin/{kind}/x2")).await,
        (200, made.clone())
    );

    let a = admin_with(app, Method::DELETE, &one, Some(ADMIN_KEY), None).await;
    assert_eq!(a.status, 204);
    assert!(a.bytes.is_empty(), "204 with a body");
    assert_eq!(app.admin_get(&one).await.0, 404);
    let (status, v) = admin(app, Method::DELETE, &one, None).await;
    assert_eq!(status, 404, "second DELETE: {v}");
    assert_error_form(&v);
    let (_, v) = app.admin_get(&list).await;
    assert_eq!(v, json!({"items": [made], "nextCursor": null}));
}

/// The error form, allowing a `field` key (validation errors name the field).
fn assert_error_form_with_field(v: &Value) {
    let mut v = v.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("field");
    }
    assert_error_form(&v);
}

#[tokio::test]
async fn filters_crud() {
    let app = TestApp::spawn().await;
    let first = json!({
        "id": "x1", "name": "Exclude Draft PRs", "description": "no drafts",
        "source": "github", "eventType": "pull_request",
        "conditions": [{"field": "payload.pull_request.draft", "operator": "equals", "value": true}],
        "action": "exclude", "priority": 10, "enabled": true
    });
    let second = json!({
        "id": "x1", "name": "Only bugs",
        "conditions": [{"field": "payload.labels.name", "operator": "in", "value": ["bug", "p1"],
                        "caseSensitive": false, "negate": true}],
        "action": "include", "priority": -3, "enabled": false
    });
    crud_roundtrip(&app, "filters", first, second).await;
}

#[tokio::test]
async fn routes_crud() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    create(&app, "agents", agent("reviewer", &rx, "/r")).await;
    create(&app, "agents", agent("ctx", &rx, "/c")).await;
    let first = json!({
        "id": "x1", "name": "PRs to the reviewer", "description": "code review",
        "sourceFilters": [{
            "id": "prs", "name": "PRs", "source": "github", "eventType": "pull_request",
            "conditions": [], "action": "include", "priority": 0, "enabled": true
        }],
        "targetAgents": ["reviewer"],
        "transformation": {"type": "jq", "expression": "{title: .payload.pull_request.title}"},
        "priority": 5,
        "retryPolicy": {"maxAttempts": 3, "backoffStrategy": "exponential",
                        "baseDelay": 100, "maxDelay": 2000, "jitter": true},
        "enabled": true
    });
    let second = json!({
        "id": "x1", "name": "Everything to both", "sourceFilters": [],
        "targetAgents": ["reviewer", "ctx"], "priority": 1, "enabled": false
    });
    crud_roundtrip(&app, "routes", first, second).await;
}

#[tokio::test]
async fn agents_crud() {
    let app = TestApp::spawn().await;
    let first = json!({
        "id": "x1", "name": "Reviewer", "description": "reviews PRs",
        "url": "http://127.0.0.1:9/hook",
        "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "headers": {"x-team": "core"}, "timeoutMs": 2500, "maxConcurrency": 4,
        "rateLimit": {"limit": 10, "window": 1000}, "enabled": true
    });
    let second = json!({
        "id": "x1", "name": "Stream-only reviewer", "enabled": false,
        "secret": "whsec_c2Vjb25kLXNlY3JldC1vZi10aGUtYWdlbnQ="
    });
    crud_roundtrip(&app, "agents", first, second).await;
}

fn assert_no_api_key(v: &Value, key: &str) {
    assert!(v.get("apiKey").is_none(), "apiKey returned: {v}");
    assert!(
        !v.to_string().contains(key),
        "the API key appears in an answer: {v}"
    );
}

/// The agent's own key posts internal events; any other key is refused.
async fn own_key_posts(app: &TestApp, key: &str) -> bool {
    let a = Webhook::bearer(key, json!({"type": "agent.note", "n": 1}).to_string())
        .send(app)
        .await;
    match a.status {
        200 => true,
        _ => {
            a.refused(401, "invalid_signature");
            false
        }
    }
}

#[tokio::test]
async fn agent_secret_is_generated_and_api_key_is_never_returned() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let key = "own-key-of-the-reviewer-7f3a";
    let mut body = agent("reviewer", &rx, "/hook");
    body["apiKey"] = json!(key);
    let created = create(&app, "agents", body).await;
    assert_no_api_key(&created, key);
    let secret = created["secret"]
        .as_str()
        .unwrap_or_else(|| panic!("no generated secret: {created}"))
        .to_string();
    let raw = secret
        .strip_prefix("whsec_")
        .unwrap_or_else(|| panic!("not a Standard Webhooks secret: {secret}"));
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(raw)
        .unwrap_or_else(|e| panic!("{secret}: not base64: {e}"));
    assert!(
        bytes.len() >= 16,
        "a {}-byte secret is too weak",
        bytes.len()
    );

    let (_, got) = app.admin_get("/admin/agents/reviewer").await;
    assert_eq!(got["secret"], secret.as_str(), "{got}");
    assert_no_api_key(&got, key);
    let (_, list) = app.admin_get("/admin/agents").await;
    assert_no_api_key(&list["items"][0], key);

    // Each agent gets its own secret.
    let other = create(&app, "agents", agent("other", &rx, "/other")).await;
    assert_ne!(other["secret"], secret.as_str());

    // Deliveries are signed with the secret the admin was given.
    create(&app, "routes", route("all", &["reviewer"])).await;
    let ev = send_internal(&app, json!({"type": "build.completed", "ok": true})).await;
    let got = received_event(&rx, "/hook", ev.id).await;
    standardwebhooks::Webhook::new(&secret)
        .unwrap()
        .verify(&got.body, &got.headers)
        .expect("the delivery is signed with the agent's secret");

    // Replacing without secret or apiKey keeps the secret.
    let mut renamed = agent("reviewer", &rx, "/hook");
    renamed["name"] = json!("Renamed reviewer");
    let (status, v) = put(&app, "agents", "reviewer", &renamed).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["secret"], secret.as_str(), "{v}");
    assert_no_api_key(&v, key);
    let (_, got) = app.admin_get("/admin/agents/reviewer").await;
    assert_eq!(got["name"], "Renamed reviewer");
    assert_eq!(got["secret"], secret.as_str());
    let ev = send_internal(&app, json!({"type": "build.completed", "ok": false})).await;
    let got = received_event(&rx, "/hook", ev.id).await;
    standardwebhooks::Webhook::new(&secret)
        .unwrap()
        .verify(&got.body, &got.headers)
        .expect("still signed with the same secret after the PUT");
}

#[tokio::test]
async fn an_agents_own_key_posts_internal_events() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let key = "own-key-of-the-reviewer-7f3a";
    let mut body = agent("reviewer", &rx, "/hook");
    body["apiKey"] = json!(key);
    let created = create(&app, "agents", body).await;
    let secret = created["secret"].as_str().unwrap().to_string();

    assert!(
        own_key_posts(&app, key).await,
        "the agent's own key is refused"
    );
    assert!(!own_key_posts(&app, "own-key-of-the-reviewer-7f3b").await);
    assert!(
        !own_key_posts(&app, &secret).await,
        "the secret is not a key"
    );

    // Replacing without apiKey keeps the key; a new key replaces the old one.
    let mut renamed = agent("reviewer", &rx, "/hook");
    renamed["name"] = json!("Renamed reviewer");
    put_ok(&app, "agents", "reviewer", &renamed).await;
    assert!(
        own_key_posts(&app, key).await,
        "the key did not survive the PUT"
    );
    renamed["apiKey"] = json!("second-key-of-the-reviewer-91");
    put_ok(&app, "agents", "reviewer", &renamed).await;
    assert!(!own_key_posts(&app, key).await, "the old key still works");
    assert!(own_key_posts(&app, "second-key-of-the-reviewer-91").await);

    assert_eq!(delete(&app, "agents", "reviewer").await, 204);
    assert!(
        !own_key_posts(&app, "second-key-of-the-reviewer-91").await,
        "a deleted agent's key still posts"
    );

    // With neither INTERNAL_WEBHOOK_SECRET nor AGENT_API_KEY, an agent's key enables `internal`.
    let app = TestApp::spawn_with(|cfg| {
        cfg.agent_api_key = None;
        cfg.sources.get_mut("internal").unwrap().secret = None;
    })
    .await;
    let mut body = agent("solo", &rx, "/solo");
    body["apiKey"] = json!(key);
    create(&app, "agents", body).await;
    assert!(
        own_key_posts(&app, key).await,
        "internal refused the only agent's key"
    );
}

#[tokio::test]
async fn agent_given_secret_is_kept_and_a_targeted_agent_cannot_be_deleted() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let mut body = agent("ctx", &rx, "/ctx");
    body["secret"] = json!(INTERNAL_SECRET);
    let created = create(&app, "agents", body).await;
    assert_eq!(created["secret"], INTERNAL_SECRET);

    create(&app, "routes", route("to-ctx", &["ctx"])).await;
    let (status, v) = admin(&app, Method::DELETE, "/admin/agents/ctx", None).await;
    assert_eq!(status, 409, "deleted an agent a route targets: {v}");
    assert_error_form(&v);
    assert_eq!(app.admin_get("/admin/agents/ctx").await.0, 200);

    assert_eq!(delete(&app, "routes", "to-ctx").await, 204);
    assert_eq!(delete(&app, "agents", "ctx").await, 204);
    assert_eq!(app.admin_get("/admin/agents/ctx").await.0, 404);
}

/// One invalid body: where it goes, what the `field` must say, words the message must hold.
struct Bad {
    what: &'static str,
    kind: &'static str,
    body: Value,
    field: fn(&str) -> bool,
    message: &'static [&'static str],
}

fn good_filter() -> Value {
    filter(
        "f-ok",
        "exclude",
        (Some("github"), None),
        json!([cond("payload.action", "equals", json!("closed"))]),
    )
}

fn good_route() -> Value {
    route_when(
        "r-ok",
        &["a1"],
        json!([cond("payload.action", "equals", json!("opened"))]),
    )
}

fn good_agent() -> Value {
    json!({"id": "a1", "name": "A1", "url": "http://127.0.0.1:9/a1", "enabled": true})
}

fn with(mut base: Value, change: impl FnOnce(&mut Value)) -> Value {
    change(&mut base);
    base
}

fn bad_bodies() -> Vec<Bad> {
    let retry = |p: Value| with(good_route(), |r| r["retryPolicy"] = p);
    vec![
        Bad {
            what: "unknown operator",
            kind: "filters",
            body: with(good_filter(), |f| {
                f["conditions"] = json!([cond("payload.action", "startsWith", json!("o"))])
            }),
            field: |f| f.contains("conditions") && f.ends_with("operator"),
            message: &["startsWith"],
        },
        Bad {
            what: "bad regex",
            kind: "filters",
            body: with(good_filter(), |f| {
                f["conditions"] =
                    json!([cond("payload.pull_request.title", "regex", json!("fix(("))])
            }),
            field: |f| f.contains("conditions"),
            message: &["regex"],
        },
        Bad {
            what: "in without an array",
            kind: "filters",
            body: with(good_filter(), |f| {
                f["conditions"] = json!([cond("payload.action", "in", json!("opened"))])
            }),
            field: |f| f.contains("conditions"),
            message: &["array"],
        },
        Bad {
            what: "transform filter without transformation",
            kind: "filters",
            body: with(good_filter(), |f| f["action"] = json!("transform")),
            field: |f| f == "transformation",
            message: &["transform"],
        },
        Bad {
            what: "jq compile error",
            kind: "filters",
            body: with(good_filter(), |f| {
                f["action"] = json!("transform");
                f["transformation"] = jq(". as $e\n| nosuchfn($e)");
            }),
            field: |f| f.starts_with("transformation"),
            message: &["line 2", "column", "nosuchfn"],
        },
        Bad {
            what: "jq syntax error",
            kind: "routes",
            body: with(good_route(), |r| {
                r["transformation"] = jq("{title: .payload.title")
            }),
            field: |f| f.starts_with("transformation"),
            message: &["line 1", "column"],
        },
        Bad {
            what: "unknown operator in a route's source filter",
            kind: "routes",
            body: with(good_route(), |r| {
                r["sourceFilters"][0]["conditions"][0]["operator"] = json!("like")
            }),
            field: |f| f.starts_with("sourceFilters") && f.ends_with("operator"),
            message: &["like"],
        },
        Bad {
            what: "route naming an unknown agent",
            kind: "routes",
            body: with(good_route(), |r| r["targetAgents"] = json!(["a1", "ghost"])),
            field: |f| f.starts_with("targetAgents"),
            message: &["ghost"],
        },
        Bad {
            what: "maxAttempts 0",
            kind: "routes",
            body: retry(json!({"maxAttempts": 0, "backoffStrategy": "fixed",
                               "baseDelay": 10, "maxDelay": 10, "jitter": false})),
            field: |f| f.contains("retryPolicy") && f.contains("maxAttempts"),
            message: &[],
        },
        Bad {
            what: "baseDelay > maxDelay",
            kind: "routes",
            body: retry(json!({"maxAttempts": 3, "backoffStrategy": "linear",
                               "baseDelay": 5000, "maxDelay": 100, "jitter": false})),
            field: |f| f.contains("retryPolicy") && f.contains("Delay"),
            message: &["maxDelay"],
        },
        Bad {
            what: "unknown backoffStrategy",
            kind: "routes",
            body: retry(json!({"maxAttempts": 3, "backoffStrategy": "random",
                               "baseDelay": 10, "maxDelay": 100, "jitter": false})),
            field: |f| f.contains("retryPolicy") && f.contains("backoffStrategy"),
            message: &["random"],
        },
        Bad {
            what: "agent with a non-http url",
            kind: "agents",
            body: with(good_agent(), |a| a["url"] = json!("ftp://127.0.0.1/hook")),
            field: |f| f == "url",
            message: &["http"],
        },
        Bad {
            what: "agent url that is not a URL",
            kind: "agents",
            body: with(good_agent(), |a| a["url"] = json!("reviewer.internal")),
            field: |f| f == "url",
            message: &[],
        },
        Bad {
            what: "unknown field (typo)",
            kind: "filters",
            body: with(good_filter(), |f| {
                f.as_object_mut().unwrap().remove("priority");
                f["priorty"] = json!(3);
            }),
            field: |f| f.contains("priorty"),
            message: &["unknown"],
        },
        Bad {
            what: "unknown field in a condition",
            kind: "filters",
            body: with(good_filter(), |f| {
                f["conditions"][0]["caseSensitve"] = json!(false)
            }),
            field: |f| f.contains("caseSensitve"),
            message: &["unknown"],
        },
        Bad {
            what: "unknown field of an agent",
            kind: "agents",
            body: with(good_agent(), |a| a["timeout"] = json!(500)),
            field: |f| f == "timeout",
            message: &["unknown"],
        },
        Bad {
            what: "bad id characters",
            kind: "filters",
            body: with(good_filter(), |f| f["id"] = json!("no spaces/here")),
            field: |f| f == "id",
            message: &[],
        },
        Bad {
            what: "bad agent id characters",
            kind: "agents",
            body: with(good_agent(), |a| a["id"] = json!("a1?x=1")),
            field: |f| f == "id",
            message: &[],
        },
    ]
}

/// What is wrong with the answer to a bad body, if anything.
fn check_refusal(bad: &Bad, status: u16, v: &Value) -> Result<(), String> {
    if status != 400 || v["code"] != "validation_error" {
        return Err("not 400 validation_error".into());
    }
    let mut form = v.clone();
    let field = form
        .as_object_mut()
        .and_then(|m| m.remove("field"))
        .ok_or("no field")?;
    // A problem the parser met at a place in the body also says where.
    if let Some(m) = form.as_object_mut()
        && let Some(line) = m.remove("line")
    {
        let column = m.remove("column").ok_or("a line without a column")?;
        if !(line.as_u64().is_some_and(|n| n >= 1) && column.as_u64().is_some_and(|n| n >= 1)) {
            return Err("line and column are not positions".into());
        }
    }
    if let Some(p) = error_form_problem(&form) {
        return Err(p);
    }
    let field = field.as_str().ok_or("field is not a string")?;
    if v["errors"][0]["field"] != field {
        return Err("the first of errors is not the answer's field".into());
    }
    if !(bad.field)(field) {
        return Err(format!("field {field:?} does not name the problem"));
    }
    let message = v["error"].as_str().unwrap_or_default();
    match bad.message.iter().find(|w| !message.contains(*w)) {
        Some(w) => Err(format!("the message lacks {w:?}")),
        None => Ok(()),
    }
}

#[tokio::test]
async fn invalid_rules_name_the_field_and_change_nothing() {
    let app = TestApp::spawn().await;
    create(&app, "agents", good_agent()).await;
    create(&app, "filters", good_filter()).await;
    create(&app, "routes", good_route()).await;
    let before = [
        app.admin_get("/admin/filters").await,
        app.admin_get("/admin/routes").await,
        app.admin_get("/admin/agents").await,
    ];
    let mut failures = Vec::new();
    for bad in bad_bodies() {
        // As a new object (POST), and as a replacement of the good one (PUT), when the id is good.
        let id = bad.body["id"].as_str().unwrap().to_string();
        let existing = match bad.kind {
            "filters" => "f-ok",
            "routes" => "r-ok",
            _ => "a1",
        };
        let mut attempts = vec![(
            Method::POST,
            format!("/admin/{}", bad.kind),
            with(bad.body.clone(), |b| {
                if b["id"] == existing {
                    b["id"] = json!(format!("{existing}-new"));
                }
            }),
        )];
        if id == existing {
            attempts.push((
                Method::PUT,
                format!("/admin/{}/{existing}", bad.kind),
                bad.body.clone(),
            ));
        }
        for (method, path, body) in attempts {
            let (status, v) = admin(&app, method.clone(), &path, Some(&body)).await;
            if let Err(problem) = check_refusal(&bad, status, &v) {
                failures.push(format!(
                    "{} ({method} {path}): {problem}: {status} {v}",
                    bad.what
                ));
            }
        }
    }
    let after = [
        app.admin_get("/admin/filters").await,
        app.admin_get("/admin/routes").await,
        app.admin_get("/admin/agents").await,
    ];
    assert_eq!(before, after, "a refused change changed something");
    assert!(
        failures.is_empty(),
        "{} bodies not refused as the contract says:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn invalid_json_bodies_are_validation_errors() {
    let app = TestApp::spawn().await;
    create(&app, "filters", good_filter()).await;
    let before = app.admin_get("/admin/filters/f-ok").await;
    for kind in ["filters", "routes", "agents"] {
        for (method, path) in [
            (Method::POST, format!("/admin/{kind}")),
            (Method::PUT, format!("/admin/{kind}/f-ok")),
        ] {
            for body in [
                &b"{\"id\": \"f-ok\", \"name\": "[..],
                b"not json",
                b"[1, 2]",
            ] {
                let a = admin_with(
                    &app,
                    method.clone(),
                    &path,
                    Some(ADMIN_KEY),
                    Some(body.to_vec()),
                )
                .await;
                let v = a.json();
                validation_error(a.status, &v);
            }
        }
    }
    assert_eq!(app.admin_get("/admin/filters/f-ok").await, before);
    let (_, v) = app.admin_get("/admin/routes").await;
    assert_eq!(v["items"], json!([]));
}

/// Malformed JSON is reported where it is: a syntax error as the body's, a value of the wrong
/// type as its field's, each with `line` and `column` (in the answer and in the sentence), on
/// every admin endpoint that reads a JSON body (issue #32: not `"field": ""` or `"?"`).
#[tokio::test]
async fn malformed_admin_json_names_the_line_and_column() {
    let app = TestApp::spawn().await;
    create(&app, "filters", good_filter()).await;
    // (body, field, line, column)
    let cases: [(&[u8], &str, u64, u64); 4] = [
        (b"{\n  \"name\": \"n\",\n  \"id\": ", "body", 3, 8),
        (b"{\"name\": \"n\"} trailing", "body", 1, 15),
        (b"{\n  \"name\": \"n\",,\n}", "body", 2, 15),
        (b"{\n  \"name\":\n    5\n}", "name", 3, 5),
    ];
    let mut endpoints: Vec<(Method, String)> = Vec::new();
    for kind in ["filters", "routes", "agents"] {
        endpoints.push((Method::POST, format!("/admin/{kind}")));
        endpoints.push((Method::PUT, format!("/admin/{kind}/f-ok")));
    }
    for (method, path) in &endpoints {
        for (body, field, line, column) in cases {
            let a = admin_with(
                &app,
                method.clone(),
                path,
                Some(ADMIN_KEY),
                Some(body.to_vec()),
            )
            .await;
            let v = a.json();
            let shown = String::from_utf8_lossy(body);
            let (f, error) = validation_error(a.status, &v);
            assert_eq!(f, field, "{method} {path} {shown:?}: {v}");
            assert_eq!(
                (v["line"].as_u64(), v["column"].as_u64()),
                (Some(line), Some(column)),
                "{method} {path} {shown:?}: {v}"
            );
            assert!(
                error.starts_with(&format!("{field}: "))
                    && error.ends_with(&format!(" at line {line}, column {column}")),
                "{method} {path} {shown:?}: {v}"
            );
        }
    }
    // A nested value of the wrong type names its path.
    let nested = |body: &str| body.replace('\'', "\"").into_bytes();
    for (method, path, body, field, column) in [
        (
            Method::POST,
            "/admin/filters",
            nested(
                "{'id': 'f2', 'name': 'n', 'action': 'include',\n 'conditions': [{'field': 'a', 'operator': 'equals', 'value': 1, 'negate': 'yes'}]}",
            ),
            "conditions[0].negate",
            80,
        ),
        (
            Method::PUT,
            "/admin/routes/r2",
            nested(
                "{'name': 'n', 'targetAgents': ['a'],\n 'sourceFilters': [{'action': 'include', 'priority': 'high'}]}",
            ),
            "sourceFilters[0].priority",
            59,
        ),
    ] {
        let a = admin_with(&app, method.clone(), path, Some(ADMIN_KEY), Some(body)).await;
        let v = a.json();
        let (f, _) = validation_error(a.status, &v);
        assert_eq!(f, field, "{method} {path}: {v}");
        assert_eq!(
            (v["line"].as_u64(), v["column"].as_u64()),
            (Some(2), Some(column)),
            "{method} {path}: {v}"
        );
    }
    // The other bodies: rate limits, the bulk retry, the dashboard's sign-in.
    // (method, path, body, field, line, column)
    type Case<'a> = (Method, &'a str, &'a [u8], &'a str, u64, u64);
    let others: [Case; 8] = [
        (
            Method::PUT,
            "/admin/rate-limits",
            b"{\"source\": \"github\",\n",
            "body",
            2,
            1,
        ),
        (
            Method::PUT,
            "/admin/rate-limits",
            b"{\"source\": \"github\",\n \"limit\": \"ten\"}",
            "limit",
            2,
            15,
        ),
        (
            Method::POST,
            "/admin/dlq/retry",
            b"{\"since\": 1,}",
            "body",
            1,
            13,
        ),
        (
            Method::POST,
            "/admin/dlq/retry",
            b"{\"since\": \"yesterday\"}",
            "since",
            1,
            21,
        ),
        (
            Method::POST,
            "/admin/erasures",
            b"{\"field\": \"metadata.identifier\",\n \"equals\": ",
            "body",
            2,
            11,
        ),
        (
            Method::POST,
            "/admin/erasures",
            b"{\"field\": 5, \"equals\": \"x\"}",
            "field",
            1,
            11,
        ),
        (
            Method::POST,
            "/dashboard/session",
            b"{\"adminKey\": ",
            "body",
            1,
            13,
        ),
        (
            Method::POST,
            "/dashboard/session",
            b"{\"adminKey\": 5}",
            "adminKey",
            1,
            14,
        ),
    ];
    for (method, path, body, field, line, column) in others {
        let a = admin_with(
            &app,
            method.clone(),
            path,
            Some(ADMIN_KEY),
            Some(body.to_vec()),
        )
        .await;
        let v = a.json();
        let (f, _) = validation_error(a.status, &v);
        let shown = String::from_utf8_lossy(body);
        assert_eq!(f, field, "{method} {path} {shown:?}: {v}");
        assert_eq!(
            (v["line"].as_u64(), v["column"].as_u64()),
            (Some(line), Some(column)),
            "{method} {path} {shown:?}: {v}"
        );
    }
    // Nothing changed.
    let (_, v) = app.admin_get("/admin/filters").await;
    assert_eq!(v["items"].as_array().map(Vec::len), Some(1), "{v}");
}

// ---- the config file (section 8) ----

const EXAMPLE_FILTERS_TOML: &str = r#"
[[filters]]
id = "exclude-draft-prs"
name = "Exclude Draft PRs"
source = "github"
eventType = "pull_request"
action = "exclude"
priority = 100
enabled = true
conditions = [{ field = "payload.pull_request.draft", operator = "equals", value = true }]

[[filters]]
id = "high-priority-issues"
name = "High Priority Issues"
source = "linear"
event_type = "issue"
action = "include"
priority = 50
conditions = [{ field = "payload.data.priority", operator = "gt", value = 3, case_sensitive = true }]
"#;

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

async fn run_check_config(path: &str) -> (Option<i32>, String) {
    let mut cmd = tokio::process::Command::new(binary());
    cmd.arg("check-config")
        .arg(path)
        .env_clear()
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(20), cmd.output())
        .await
        .expect("check-config finishes")
        .unwrap();
    let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stdout));
    (out.status.code(), text)
}

async fn child_admin_get(base: &str, path: &str) -> Value {
    let r = reqwest::Client::new()
        .get(format!("{base}{path}"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "GET {path}");
    r.json().await.unwrap()
}

#[tokio::test]
async fn config_file_rules_apply_at_start_in_either_spelling() {
    let rx = TestReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        r#"
[[agents]]
id = "reviewer"
name = "Reviewer"
url = "{reviewer}"
timeoutMs = 2500
maxConcurrency = 3
rateLimit = {{ limit = 50, window = 1000 }}

[[agents]]
id = "ctx"
name = "Context"
url = "{ctx}"
timeout_ms = 1500
max_concurrency = 2
rate_limit = {{ limit = 20, window = 1000 }}
api_key = "context-agent-key-from-file"
{filters}
[[routes]]
id = "prs"
name = "PRs to the reviewer"
targetAgents = ["reviewer"]
priority = 5
sourceFilters = [{{ source = "github", eventType = "pull_request", action = "include", conditions = [] }}]
retryPolicy = {{ maxAttempts = 2, backoffStrategy = "fixed", baseDelay = 10, maxDelay = 10, jitter = false }}

[[routes]]
id = "issues"
name = "Issues to the context agent"
target_agents = ["ctx"]
source_filters = [{{ source = "linear", event_type = "issue", action = "include", conditions = [] }}]
retry_policy = {{ max_attempts = 4, backoff_strategy = "linear", base_delay = 20, max_delay = 200 }}
"#,
        reviewer = rx.url("/reviewer"),
        ctx = rx.url("/ctx"),
        filters = EXAMPLE_FILTERS_TOML,
    );
    let path = write(dir.path(), "rules.toml", &toml);
    let (code, text) = run_check_config(&path).await;
    assert_eq!(code, Some(0), "check-config refused a good file: {text}");

    let data = dir.path().join("data");
    let server = ChildServer::start(&data, &[("EVENT_ROUTER_CONFIG", path.as_str())]).await;
    let base = server.base.as_str();

    let reviewer = child_admin_get(base, "/admin/agents/reviewer").await;
    let ctx = child_admin_get(base, "/admin/agents/ctx").await;
    for (a, timeout, conc, limit) in [(&reviewer, 2500, 3, 50), (&ctx, 1500, 2, 20)] {
        assert_eq!(a["timeoutMs"], timeout, "{a}");
        assert_eq!(a["maxConcurrency"], conc, "{a}");
        assert_eq!(
            a["rateLimit"],
            json!({"limit": limit, "window": 1000}),
            "{a}"
        );
        assert!(
            a["secret"]
                .as_str()
                .is_some_and(|s| s.starts_with("whsec_")),
            "{a}"
        );
        assert!(
            a.get("apiKey").is_none() && a.get("api_key").is_none(),
            "{a}"
        );
    }
    let drafts = child_admin_get(base, "/admin/filters/exclude-draft-prs").await;
    assert_eq!(drafts["eventType"], "pull_request", "{drafts}");
    assert_eq!(drafts["name"], "Exclude Draft PRs");
    let issues = child_admin_get(base, "/admin/filters/high-priority-issues").await;
    assert_eq!(issues["eventType"], "issue", "{issues}");
    assert_eq!(issues["conditions"][0]["caseSensitive"], true, "{issues}");
    let prs = child_admin_get(base, "/admin/routes/prs").await;
    assert_eq!(prs["targetAgents"], json!(["reviewer"]), "{prs}");
    assert_eq!(prs["retryPolicy"]["maxAttempts"], 2, "{prs}");
    let r = child_admin_get(base, "/admin/routes/issues").await;
    assert_eq!(r["targetAgents"], json!(["ctx"]), "{r}");
    assert_eq!(r["sourceFilters"][0]["eventType"], "issue", "{r}");
    assert_eq!(
        r["retryPolicy"]["backoffStrategy"], "linear",
        "snake_case keys: {r}"
    );
    assert_eq!(r["retryPolicy"]["maxAttempts"], 4, "{r}");
    let list = child_admin_get(base, "/admin/routes").await["items"].clone();
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");

    // And they work: a draft is filtered, a ready PR reaches the reviewer, a priority-4 issue
    // reaches the context agent, which may also post with its declared key.
    let client = reqwest::Client::new();
    let draft = Webhook::github(
        "pull_request",
        pr_with(|p| p["pull_request"]["draft"] = json!(true)),
    )
    .send_to(&client, base)
    .await
    .accepted();
    assert!(!draft.processed && !draft.routed, "{draft:?}");
    let ready = Webhook::github("pull_request", GITHUB_PR)
        .send_to(&client, base)
        .await
        .accepted();
    assert!(ready.processed && ready.routed, "{ready:?}");
    let issue = Webhook::linear(LINEAR_ISSUE, Some(now_ms()))
        .send_to(&client, base)
        .await
        .accepted();
    assert!(issue.processed && issue.routed, "{issue:?}");
    let got = rx.wait_for("/reviewer", 1, SOON).await;
    assert_eq!(got[0].json()["id"], ready.id.to_string());
    let got = rx.wait_for("/ctx", 1, SOON).await;
    assert_eq!(got[0].json()["id"], issue.id.to_string());
}

#[tokio::test]
async fn check_config_points_at_bad_rules() {
    let dir = tempfile::tempdir().unwrap();
    // Line numbers matter below: each bad key is on the line noted.
    let toml = r#"[[agents]]
id = "reviewer"
name = "Reviewer"
url = "ftp://reviewer.internal/hook"

[[filters]]
id = "bad-operator"
name = "Bad operator"
action = "include"
conditions = [{ field = "payload.action", operator = "startsWith", value = "op" }]

[[filters]]
id = "bad-regex"
name = "Bad regex"
action = "exclude"
conditions = [{ field = "payload.title", operator = "regex", value = "fix((" }]

[[routes]]
id = "to-ghost"
name = "To an undeclared agent"
targetAgents = ["ghost"]

[[agents]]
id = "summarizer"
name = "Summarizer"

[[routes]]
id = "bad-jq"
name = "Bad jq"
targetAgents = ["summarizer"]
transformation = { type = "jq", expression = "{a: .b" }
"#;
    let path = write(dir.path(), "bad-rules.toml", toml);
    let (code, text) = run_check_config(&path).await;
    assert_eq!(code, Some(1), "check-config accepted bad rules: {text}");
    let expected: [(u32, &str, &[&str]); 5] = [
        (4, "url", &["agents"]),
        (10, "operator", &["filters", "startsWith"]),
        (16, "conditions", &["filters", "regex"]),
        (21, "targetAgents", &["routes", "ghost"]),
        (31, "transformation", &["routes", "column"]),
    ];
    let mut missing = Vec::new();
    for (line, field, words) in expected {
        let prefix = format!("{path}:{line}:");
        let found = text.lines().any(|l| {
            l.strip_prefix(&prefix)
                .and_then(|rest| rest.split_once(": "))
                .is_some_and(|(col, rest)| {
                    col.parse::<u32>().is_ok_and(|c| c >= 1)
                        && rest.contains(field)
                        && words.iter().all(|w| rest.contains(w))
                })
        });
        if !found {
            missing.push(format!("{line} {field} {words:?}"));
        }
    }
    assert!(
        missing.is_empty(),
        "no `{path}:LINE:COL: ...` line for {missing:?} in:\n{text}"
    );
}

#[tokio::test]
async fn check_config_refuses_a_route_to_an_undeclared_agent() {
    let dir = tempfile::tempdir().unwrap();
    let good = r#"[[agents]]
id = "reviewer"
name = "Reviewer"

[[routes]]
id = "prs"
name = "PRs"
targetAgents = ["reviewer"]
"#;
    let path = write(dir.path(), "good.toml", good);
    let (code, text) = run_check_config(&path).await;
    assert_eq!(code, Some(0), "{text}");
    let bad = good.replace("[\"reviewer\"]", "[\"reviewer\", \"summarizer\"]");
    let path = write(dir.path(), "bad.toml", &bad);
    let (code, text) = run_check_config(&path).await;
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.lines().any(|l| l.starts_with(&format!("{path}:8:"))
            && l.contains("targetAgents")
            && l.contains("summarizer")),
        "no `{path}:8:COL: ... targetAgents ... summarizer` line in:\n{text}"
    );
}

#[tokio::test]
async fn declared_rules_apply_in_process() {
    use event_router::config::Declared;
    let rx = TestReceiver::start().await;
    let declared = |v: Value| Declared {
        value: v,
        location: "test:1:1".into(),
        key_locations: Default::default(),
    };
    let url = rx.url("/bugs");
    let app = TestApp::spawn_with(move |cfg| {
        cfg.agents.push(declared(
            json!({"id": "triage", "name": "Triage", "url": url, "max_concurrency": 2}),
        ));
        cfg.filters.push(declared(json!({
            "id": "no-bots", "name": "No bots", "action": "exclude",
            "conditions": [{"field": "payload.sender.type", "operator": "equals",
                            "value": "bot", "case_sensitive": false}]
        })));
        cfg.routes.push(declared(json!({
            "id": "bugs", "name": "Bugs", "target_agents": ["triage"],
            "source_filters": [{"action": "include", "conditions": [
                {"field": "payload.pull_request.labels.name", "operator": "equals", "value": "bug"}
            ]}]
        })));
    })
    .await;
    let (_, a) = app.admin_get("/admin/agents/triage").await;
    assert_eq!(a["maxConcurrency"], 2, "{a}");
    let (_, r) = app.admin_get("/admin/routes/bugs").await;
    assert_eq!(r["targetAgents"], json!(["triage"]), "{r}");
    let bot = send_pr(&app, |p| p["sender"]["type"] = json!("Bot")).await;
    assert!(!bot.processed, "{bot:?}");
    let plain = send_pr(&app, |_| {}).await;
    assert!(plain.processed && !plain.routed, "{plain:?}");
    let bug = send_pr(&app, |p| {
        p["pull_request"]["labels"] = json!([{"name": "triage"}, {"name": "bug"}])
    })
    .await;
    assert!(bug.processed && bug.routed, "{bug:?}");
    received_event(&rx, "/bugs", bug.id).await;
}
