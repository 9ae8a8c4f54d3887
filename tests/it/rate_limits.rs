//! Inbound rate limits through the real server (API.md section 6 and the 429 row of section 3).

use serde_json::{Value, json};

use crate::signed::*;
use crate::support::*;

/// A GitHub push from `login` (the default identifier path is payload.sender.login).
fn push_from(login: &str) -> Webhook {
    Webhook::github(
        "push",
        json!({"ref": "refs/heads/main", "sender": {"login": login}}).to_string(),
    )
}

async fn put_limit(app: &TestApp, body: Value) -> (u16, Value) {
    let r = app
        .client
        .put(app.url("/admin/rate-limits"))
        .bearer_auth(ADMIN_KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn default_limit_refuses_with_429_and_headers_and_stores_nothing() {
    let app = TestApp::spawn_with(|c| {
        c.default_rate_limit = 3;
        c.rate_limit_window_ms = 60_000;
    })
    .await;
    for expect_remaining in ["2", "1", "0"] {
        let a = push_from("octocat").send(&app).await;
        a.accepted();
        assert_eq!(a.header("x-ratelimit-limit"), Some("3"));
        assert_eq!(a.header("x-ratelimit-remaining"), Some(expect_remaining));
        let reset: i64 = a.header("x-ratelimit-reset").unwrap().parse().unwrap();
        assert!(
            reset * 1000 >= now_ms() && reset * 1000 <= now_ms() + 61_000,
            "{reset}"
        );
    }
    let before = archived_ids(&app).await.len();
    let refused = push_from("octocat").send(&app).await;
    let msg = refused.refused(429, "rate_limited");
    assert_eq!(msg, "Rate limit exceeded for github:octocat");
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(refused.header("x-ratelimit-limit"), Some("3"));
    assert_eq!(refused.header("x-ratelimit-remaining"), Some("0"));
    assert!(refused.header("x-ratelimit-reset").is_some());
    assert_eq!(
        archived_ids(&app).await.len(),
        before,
        "a refused webhook stores nothing"
    );
    // Another identifier has its own budget.
    push_from("hubot").send(&app).await.accepted();
    app.stop().await;
}

#[tokio::test]
async fn identifier_falls_back_to_client_ip() {
    let app = TestApp::spawn_with(|c| c.default_rate_limit = 1).await;
    let body = json!({"ref": "x"}).to_string();
    Webhook::github("push", body.clone())
        .send(&app)
        .await
        .accepted();
    let msg = Webhook::github("push", body)
        .send(&app)
        .await
        .refused(429, "rate_limited");
    assert_eq!(msg, "Rate limit exceeded for github:127.0.0.1");
    app.stop().await;
}

#[tokio::test]
async fn lookup_order_exact_then_wildcard_then_default() {
    let app = TestApp::spawn_with(|c| c.default_rate_limit = 100).await;
    let (s, v) = put_limit(
        &app,
        json!({"source": "github", "identifier": "*", "limit": 2, "window": 60000}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["limit"], 2);
    let (s, _) = put_limit(
        &app,
        json!({"source": "github", "identifier": "vip", "limit": 5, "window": 60000, "strategy": "fixed_window"}),
    )
    .await;
    assert_eq!(s, 200);
    // vip: exact limit of 5.
    for _ in 0..5 {
        push_from("vip").send(&app).await.accepted();
    }
    push_from("vip")
        .send(&app)
        .await
        .refused(429, "rate_limited");
    // anyone else on github: the wildcard's 2.
    let a = push_from("someone").send(&app).await;
    assert_eq!(a.header("x-ratelimit-limit"), Some("2"));
    push_from("someone").send(&app).await.accepted();
    push_from("someone")
        .send(&app)
        .await
        .refused(429, "rate_limited");
    // linear: the default's 100.
    let lin = json!({"type": "Issue", "action": "create", "organizationId": "org1", "data": {}});
    let a = Webhook::linear(lin.to_string(), Some(now_ms()))
        .send(&app)
        .await;
    a.accepted();
    assert_eq!(a.header("x-ratelimit-limit"), Some("100"));

    let (s, list) = app.admin_get("/admin/rate-limits").await;
    assert_eq!(s, 200);
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    assert!(list["nextCursor"].is_null());

    // Deleting the wildcard applies to the next request: back to the default.
    let r = app
        .client
        .delete(app.url("/admin/rate-limits?source=github&identifier=*"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let a = push_from("someone").send(&app).await;
    a.accepted();
    assert_eq!(a.header("x-ratelimit-limit"), Some("100"));
    let r = app
        .client
        .delete(app.url("/admin/rate-limits?source=github&identifier=*"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    app.stop().await;
}

#[tokio::test]
async fn token_bucket_burst_and_validation_errors() {
    let app = TestApp::spawn().await;
    let (s, _) = put_limit(
        &app,
        json!({"source": "github", "identifier": "bot", "limit": 1, "window": 3600000, "burst": 3, "strategy": "token_bucket"}),
    )
    .await;
    assert_eq!(s, 200);
    for _ in 0..3 {
        push_from("bot").send(&app).await.accepted();
    }
    push_from("bot")
        .send(&app)
        .await
        .refused(429, "rate_limited");

    for (body, field) in [
        (
            json!({"source": "github", "identifier": "x", "limit": 0, "window": 1000}),
            "limit",
        ),
        (
            json!({"source": "github", "identifier": "x", "limit": 1}),
            "window",
        ),
        (
            json!({"source": "github", "identifier": "x", "limit": 1, "window": 1000, "strategy": "leaky"}),
            "strategy",
        ),
        (
            json!({"source": "github", "identifier": "x", "limit": 1, "window": 1000, "bogus": 1}),
            "bogus",
        ),
    ] {
        let (s, v) = put_limit(&app, body.clone()).await;
        assert_eq!(s, 400, "{body} -> {v}");
        assert_eq!(v["success"], false);
        assert_eq!(v["code"], "validation_error");
        assert!(v["error"].as_str().unwrap().contains(field), "{v}");
    }
    let r = app
        .client
        .put(app.url("/admin/rate-limits"))
        .json(&json!({"source": "github", "identifier": "x", "limit": 1, "window": 1000}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    app.stop().await;
}

#[tokio::test]
async fn config_file_limits_apply_at_start_and_survive_restart() {
    let app = TestApp::spawn_with(|c| {
        c.rate_limits.push(event_router::config::Declared {
            value: json!({"source": "github", "identifier": "*", "limit": 1, "window": 60000}),
            location: "test".into(),
            key_locations: Default::default(),
        });
    })
    .await;
    push_from("a").send(&app).await.accepted();
    push_from("a").send(&app).await.refused(429, "rate_limited");
    let dir = app.stop().await;
    // Stored: a restart without the declaration keeps the limit (admin changes persist).
    let app = TestApp::spawn_in(dir, |_| {}).await;
    let (_, list) = app.admin_get("/admin/rate-limits").await;
    assert_eq!(list["items"][0]["limit"], 1);
    // And enforced, not just listed: an identifier new to this process gets one request (the
    // server default, 1000, would take many).
    let a = push_from("b").send(&app).await;
    a.accepted();
    assert_eq!(
        a.header("x-ratelimit-limit"),
        Some("1"),
        "after the restart"
    );
    assert_eq!(a.header("x-ratelimit-remaining"), Some("0"));
    let msg = push_from("b").send(&app).await.refused(429, "rate_limited");
    assert_eq!(msg, "Rate limit exceeded for github:b");
    app.stop().await;
}

/// A signed Slack interactivity request (`payload=<json>`) from `team`: it has no `team_id`,
/// only `team.id`.
fn slack_interaction(team: &str) -> Webhook {
    let payload = json!({"type": "block_actions", "team": {"id": team, "domain": "acme"},
                         "user": {"id": "U1"}, "actions": []});
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", &payload.to_string())
        .finish();
    Webhook::slack(body, "application/x-www-form-urlencoded")
}

/// Slack's identifier is `payload.team_id`, else `payload.team.id` (interactivity payloads):
/// each team has its own budget, though every request comes from the same address (issue #32).
#[tokio::test]
async fn slack_interactivity_is_limited_by_its_team_not_the_client_ip() {
    let app = TestApp::spawn_with(|c| c.default_rate_limit = 1).await;
    let first = slack_interaction("T9").send(&app).await.accepted();
    let (_, v) = app.admin_get(&format!("/admin/events/{}", first.id)).await;
    assert_eq!(v["event"]["metadata"]["identifier"], "T9", "{v}");
    let msg = slack_interaction("T9")
        .send(&app)
        .await
        .refused(429, "rate_limited");
    assert_eq!(msg, "Rate limit exceeded for slack:T9");
    // Another team, same address: its own budget.
    slack_interaction("T8").send(&app).await.accepted();
    // Events API bodies still count by their `team_id`.
    let callback = |team: &str| {
        json!({"type": "event_callback", "team_id": team, "event_id": format!("Ev-{team}"),
               "event": {"type": "message"}})
        .to_string()
    };
    let a = Webhook::slack(callback("T7"), "application/json")
        .send(&app)
        .await
        .accepted();
    let (_, v) = app.admin_get(&format!("/admin/events/{}", a.id)).await;
    assert_eq!(v["event"]["metadata"]["identifier"], "T7", "{v}");
    let msg = Webhook::slack(callback("T9"), "application/json")
        .send(&app)
        .await
        .refused(429, "rate_limited");
    assert_eq!(msg, "Rate limit exceeded for slack:T9");
    app.stop().await;
}
