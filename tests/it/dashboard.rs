//! The dashboard (API.md section 10): the embedded page and its headers, sign-in sessions in a
//! cookie (throttling, flags, CSRF, sign-out, expiry), the cookie on the admin API and the
//! streams, and the end-to-end test in headless Chromium (tests/dashboard/e2e.mjs).

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, COOKIE, ETAG, IF_NONE_MATCH, ORIGIN,
    SET_COOKIE,
};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

use crate::receiver::{Reply, TestReceiver};
use crate::rules::{agent, create};
use crate::support::*;

const CSRF: (&str, &str) = ("x-requested-with", "event-router-dashboard");

/// Signs in; the `Set-Cookie` header and the cookie pair (`er_session=…`) to send back.
async fn sign_in(app: &TestApp) -> (String, String) {
    let r = app
        .client
        .post(app.url("/dashboard/session"))
        .json(&json!({"adminKey": ADMIN_KEY}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let set = r.headers()[SET_COOKIE].to_str().unwrap().to_string();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["signedIn"], true);
    assert!(body["expiresAt"].as_i64().unwrap() > now_ms());
    let pair = set.split(';').next().unwrap().to_string();
    (set, pair)
}

async fn get_with_cookie(app: &TestApp, path: &str, cookie: &str) -> u16 {
    app.client
        .get(app.url(path))
        .header(COOKIE, cookie)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn the_page_and_its_files_are_served_from_the_binary_with_strict_headers() {
    let app = TestApp::spawn().await;
    let r = app.client.get(app.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert_eq!(h[CONTENT_TYPE], "text/html; charset=utf-8");
    let csp = h[CONTENT_SECURITY_POLICY].to_str().unwrap();
    for part in [
        "default-src 'self'",
        "script-src 'self'",
        "frame-ancestors 'none'",
        "object-src 'none'",
    ] {
        assert!(csp.contains(part), "{csp}");
    }
    assert!(
        !csp.contains("unsafe"),
        "no unsafe-inline or unsafe-eval: {csp}"
    );
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h[CACHE_CONTROL], "no-cache");
    let html = r.text().await.unwrap();
    assert!(
        html.contains(r#"type="password""#),
        "a password field for the key"
    );
    assert!(html.contains("/dashboard/app.js"));

    // A revalidation of an unchanged file is a 304.
    let etag = h[ETAG].clone();
    let again = app
        .client
        .get(app.url("/"))
        .header(IF_NONE_MATCH, etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);

    for (file, kind) in [
        ("app.js", "text/javascript; charset=utf-8"),
        ("live.js", "text/javascript; charset=utf-8"),
        ("app.css", "text/css; charset=utf-8"),
        ("icon.svg", "image/svg+xml"),
    ] {
        let r = app
            .client
            .get(app.url(&format!("/dashboard/{file}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{file}");
        assert_eq!(r.headers()[CONTENT_TYPE], kind, "{file}");
        assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    }
    let missing = app
        .client
        .get(app.url("/dashboard/nope.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["code"], "not_found");
    app.stop().await;
}

#[tokio::test]
async fn signing_in_sets_an_httponly_strict_cookie_that_is_not_the_key() {
    let app = TestApp::spawn().await;
    let (set, pair) = sign_in(&app).await;
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
        assert!(set.contains(flag), "{set}");
    }
    assert!(!set.contains("Secure"), "plain HTTP: no Secure flag: {set}");
    let token = pair.strip_prefix("er_session=").unwrap();
    assert_eq!(token.len(), 43, "a 256-bit token");
    assert!(!set.contains(ADMIN_KEY));

    // Behind a TLS-terminating proxy the cookie is Secure.
    let r = app
        .client
        .post(app.url("/dashboard/session"))
        .header("x-forwarded-proto", "https")
        .json(&json!({"adminKey": ADMIN_KEY}))
        .send()
        .await
        .unwrap();
    assert!(
        r.headers()[SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("; Secure")
    );

    let status: Value = app
        .client
        .get(app.url("/dashboard/session"))
        .header(COOKIE, &pair)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["signedIn"], true);
    let status: Value = app
        .client
        .get(app.url("/dashboard/session"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status, json!({"signedIn": false, "expiresAt": null}));
    app.stop().await;
}

#[tokio::test]
async fn a_wrong_key_is_refused_and_counts_toward_the_auth_throttle() {
    let app = TestApp::spawn().await;
    let attempt = |key: &'static str| {
        let client = app.client.clone();
        let url = app.url("/dashboard/session");
        async move {
            let r = client
                .post(url)
                .json(&json!({"adminKey": key}))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let set_cookie = r.headers().contains_key(SET_COOKIE);
            let body: Value = r.json().await.unwrap();
            (status, set_cookie, body)
        }
    };
    let (status, cookie, body) = attempt("wrong-key").await;
    assert_eq!((status, cookie), (401, false), "{body}");
    assert_eq!(body["code"], "unauthorized");
    // Wrong keys on the admin API and at sign-in share one throttle.
    for _ in 0..50 {
        let r = app
            .client
            .get(app.url("/admin/agents"))
            .bearer_auth("wrong-key")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
    for _ in 0..49 {
        assert_eq!(attempt("wrong-key").await.0, 401);
    }
    let (status, cookie, body) = attempt("wrong-key").await;
    assert_eq!((status, cookie), (429, false), "{body}");
    assert_eq!(body["code"], "too_many_failures");
    // The right key is always accepted.
    let (status, cookie, _) = attempt(ADMIN_KEY).await;
    assert_eq!((status, cookie), (200, true));
    app.stop().await;
}

#[tokio::test]
async fn a_malformed_sign_in_is_a_json_error_naming_the_field() {
    let app = TestApp::spawn().await;
    for (body, field) in [
        ("{}", "adminKey"),
        (r#"{"adminKey": ""}"#, "adminKey"),
        ("not json", "body"),
    ] {
        let r = app
            .client
            .post(app.url("/dashboard/session"))
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{body}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["success"], false);
        assert_eq!(v["code"], "validation_error");
        assert_eq!(v["field"], field, "{body}: {v}");
    }
    app.stop().await;
}

#[tokio::test]
async fn the_cookie_authorizes_admin_reads_like_the_bearer_key() {
    let app = TestApp::spawn().await;
    let (_, cookie) = sign_in(&app).await;
    for path in [
        "/admin/agents",
        "/admin/routes",
        "/admin/filters",
        "/admin/rate-limits",
        "/admin/events",
        "/admin/dlq",
        "/admin/audit",
        "/queue/stats",
        "/analytics/metrics?hours=1",
    ] {
        assert_eq!(get_with_cookie(&app, path, &cookie).await, 200, "{path}");
        assert_eq!(get_with_cookie(&app, path, "er_session=forged").await, 401);
    }
    // An Authorization header is judged on its own: a wrong key is not rescued by the cookie.
    let r = app
        .client
        .get(app.url("/admin/agents"))
        .header(COOKIE, &cookie)
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    app.stop().await;
}

#[tokio::test]
async fn cookie_changes_need_the_csrf_header_and_are_audited() {
    let app = TestApp::spawn().await;
    let (_, cookie) = sign_in(&app).await;
    let body = json!({"id": "from-ui", "name": "from the dashboard"});
    let without = app
        .client
        .post(app.url("/admin/agents"))
        .header(COOKIE, &cookie)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(without.status(), 403);
    let v: Value = without.json().await.unwrap();
    assert_eq!(v["code"], "csrf_check_failed");
    assert_eq!(app.admin_get("/admin/agents/from-ui").await.0, 404);

    let with = app
        .client
        .post(app.url("/admin/agents"))
        .header(COOKIE, &cookie)
        .header(CSRF.0, CSRF.1)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(with.status(), 201);
    let del = app
        .client
        .delete(app.url("/admin/agents/from-ui"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 403, "a DELETE needs the header too");

    // Bearer requests are unaffected.
    let bearer = app
        .client
        .post(app.url("/admin/agents"))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"id": "from-cli", "name": "cli"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), 201);

    let (_, audit) = app.admin_get("/admin/audit").await;
    let actions: Vec<(&str, &str)> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["action"].as_str().unwrap(),
                a["targetId"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert!(actions.contains(&("create agent", "from-ui")), "{audit}");
    assert!(actions.contains(&("create agent", "from-cli")), "{audit}");
    assert_eq!(actions.len(), 2, "refused changes are not audited: {audit}");
    app.stop().await;
}

#[tokio::test]
async fn signing_out_ends_the_session_for_good() {
    let app = TestApp::spawn().await;
    let (_, cookie) = sign_in(&app).await;
    let (_, other) = sign_in(&app).await;
    let no_header = app
        .client
        .delete(app.url("/dashboard/session"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(no_header.status(), 403, "sign-out is a change: CSRF header");
    assert_eq!(get_with_cookie(&app, "/admin/agents", &cookie).await, 200);

    let out = app
        .client
        .delete(app.url("/dashboard/session"))
        .header(COOKIE, &cookie)
        .header(CSRF.0, CSRF.1)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 204);
    let set = out.headers()[SET_COOKIE].to_str().unwrap();
    assert!(
        set.starts_with("er_session=;") && set.contains("Max-Age=0"),
        "{set}"
    );
    assert_eq!(get_with_cookie(&app, "/admin/agents", &cookie).await, 401);
    assert_eq!(
        get_with_cookie(&app, "/stream/sse?agentId=*", &cookie).await,
        401
    );
    // Other sessions go on.
    assert_eq!(get_with_cookie(&app, "/admin/agents", &other).await, 200);
    app.stop().await;
}

#[tokio::test]
async fn an_expired_session_is_refused() {
    let app = TestApp::spawn_with(|c| c.dashboard_session_ttl = Duration::from_secs(1)).await;
    let (set, cookie) = sign_in(&app).await;
    assert!(set.contains("Max-Age=1"), "{set}");
    assert_eq!(get_with_cookie(&app, "/admin/agents", &cookie).await, 200);
    // The session's lifetime is the thing under test: let it pass.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get_with_cookie(&app, "/admin/agents", &cookie).await, 401);
    let status: Value = app
        .client
        .get(app.url("/dashboard/session"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["signedIn"], false);
    app.stop().await;
}

#[tokio::test]
async fn the_cookie_opens_the_firehose_for_this_origin_only() {
    let app = TestApp::spawn().await;
    let (_, cookie) = sign_in(&app).await;
    let sse = app
        .client
        .get(app.url("/stream/sse?agentId=*"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    assert!(
        !sse.headers().contains_key("access-control-allow-origin"),
        "a cookie stream is not shared with other origins"
    );
    drop(sse);
    let foreign = app
        .client
        .get(app.url("/stream/sse?agentId=*"))
        .header(COOKIE, &cookie)
        .header(ORIGIN, "http://127.0.0.1:1")
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 401);
    // The cookie stands for the admin key: it opens `*`, not an agent's own stream.
    assert_eq!(
        get_with_cookie(&app, "/stream/sse?agentId=someone", &cookie).await,
        401
    );

    let ws = |origin: Option<String>| {
        let addr = app.addr;
        let cookie = cookie.clone();
        async move {
            let mut req = format!("ws://{addr}/stream/ws?agentId=*")
                .into_client_request()
                .unwrap();
            req.headers_mut().insert(COOKIE, cookie.parse().unwrap());
            if let Some(o) = origin {
                req.headers_mut().insert(ORIGIN, o.parse().unwrap());
            }
            match tokio_tungstenite::connect_async(req).await {
                Ok((_, resp)) => resp.status().as_u16(),
                Err(tungstenite::Error::Http(resp)) => resp.status().as_u16(),
                Err(e) => panic!("handshake failed: {e}"),
            }
        }
    };
    assert_eq!(ws(Some(app.base.clone())).await, 101);
    assert_eq!(ws(Some("http://evil.example".into())).await, 401);
    assert_eq!(ws(None).await, 401, "a browser always names the origin");
    app.stop().await;
}

#[tokio::test]
async fn a_stream_opened_by_the_cookie_ends_with_the_session() {
    use futures_util::StreamExt as _;
    let app = TestApp::spawn_with(|c| c.stream_heartbeat = Duration::from_millis(100)).await;
    let (_, cookie) = sign_in(&app).await;
    let sse = app
        .client
        .get(app.url("/stream/sse?agentId=*"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    let out = app
        .client
        .delete(app.url("/dashboard/session"))
        .header(COOKIE, &cookie)
        .header(CSRF.0, CSRF.1)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 204);
    let mut body = sse.bytes_stream();
    let mut text = String::new();
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(chunk) = body.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream goes on after sign-out: {text}");
    assert!(text.contains(r#""type":"close""#), "{text}");
    assert!(text.contains("session ended"), "{text}");
    app.stop().await;
}

#[tokio::test]
async fn the_overview_timeline_has_p95_and_queue_depth() {
    let app = TestApp::spawn().await;
    let body = json!({"sender": {"login": "octocat"}}).to_string();
    assert_eq!(app.post_github("push", body.as_bytes()).await.status(), 200);
    let (status, v) = app.admin_get("/analytics/metrics?hours=1").await;
    assert_eq!(status, 200);
    let timeline = v["timeline"].as_array().unwrap();
    assert!(timeline.len() >= 60, "{v}");
    for p in timeline {
        assert!(p["p95ProcessingTime"].is_number(), "{p}");
        assert!(p["queueDepth"].is_number(), "{p}");
    }
    let last = timeline.iter().rev().find(|p| p["events"] == 1).unwrap();
    assert!(last["p95ProcessingTime"].as_f64().unwrap() > 0.0, "{last}");
    app.stop().await;
}

// ---- the end-to-end test in a real browser ----

const CHROMIUM: &str = "/usr/bin/chromium";

fn e2e_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dashboard")
}

/// `target/dashboard-screenshots`, next to the test binary's own build directory.
fn screenshot_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/it-<hash>
    let target = exe
        .ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("dashboard-screenshots")
}

/// What the browser test needs, or why it cannot run.
fn missing_prerequisite() -> Option<String> {
    if !Path::new(CHROMIUM).exists() {
        return Some(format!(
            "{CHROMIUM} is not installed (apt-get install chromium)"
        ));
    }
    let node = std::process::Command::new("node").arg("--version").output();
    if !node.is_ok_and(|o| o.status.success()) {
        return Some("node is not installed".into());
    }
    if !e2e_dir().join("node_modules/playwright-core").exists() {
        return Some(
            "tests/dashboard/node_modules is missing (npm ci --prefix tests/dashboard)".into(),
        );
    }
    None
}

#[tokio::test]
async fn the_dashboard_end_to_end_in_headless_chromium() {
    if let Some(why) = missing_prerequisite() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{why}: .ci/run must install it"
        );
        eprintln!("SKIPPED the_dashboard_end_to_end_in_headless_chromium: {why}; CI runs it");
        return;
    }
    let rx = TestReceiver::start().await;
    // The flaky agent fails three times (three events go to the DLQ), saying why, then accepts.
    let failure = Reply::Answer(
        500,
        ("x-agent-error", "db down"),
        r#"{"error":"database unavailable: connection refused"}"#.into(),
    );
    rx.script("/flaky", [failure.clone(), failure.clone(), failure]);
    let app = TestApp::spawn().await;
    create(&app, "agents", agent("ok-agent", &rx, "/ok")).await;
    create(&app, "agents", agent("flaky-agent", &rx, "/flaky")).await;
    // The down agent fails once: its breaker (threshold 1, a 10-minute cooldown) opens, and
    // the page's reset lets its delivery through. The sleepy agent is disabled.
    rx.script("/down", [Reply::Status(500)]);
    let mut down = agent("down-agent", &rx, "/down");
    down["circuitBreaker"] =
        json!({"failureThreshold": 1, "cooldownMs": 600_000, "maxCooldownMs": 600_000});
    create(&app, "agents", down).await;
    let mut sleepy = agent("sleepy-agent", &rx, "/sleepy");
    sleepy["enabled"] = json!(false);
    create(&app, "agents", sleepy).await;
    create(
        &app,
        "routes",
        json!({
            "id": "deployments-to-down", "name": "Deployments", "targetAgents": ["down-agent"],
            "sourceFilters": [{"source": "github", "eventType": "deployment", "action": "include"}],
        }),
    )
    .await;
    create(
        &app,
        "routes",
        json!({
            "id": "push-to-ok", "name": "Pushes", "targetAgents": ["ok-agent"],
            "sourceFilters": [{"source": "github", "eventType": "push", "action": "include"}],
        }),
    )
    .await;
    create(
        &app,
        "routes",
        json!({
            "id": "issues-to-flaky", "name": "Issues", "targetAgents": ["flaky-agent"],
            "sourceFilters": [{"source": "github", "eventType": "issues", "action": "include"}],
            "retryPolicy": {"maxAttempts": 1, "backoffStrategy": "fixed", "baseDelay": 100, "maxDelay": 100},
        }),
    )
    .await;

    // A second router below its free-space floor (1 TiB): its /health is 503, for the banner.
    // The floor is SQLite's, also when this suite runs on PostgreSQL.
    let faulted = TestApp::spawn_with(|c| {
        c.database_url = None;
        c.min_free_disk_mb = 1 << 20;
    })
    .await;

    let shots = screenshot_dir();
    let run = tokio::process::Command::new("node")
        .arg(e2e_dir().join("e2e.mjs"))
        .current_dir(e2e_dir())
        .env("BASE_URL", &app.base)
        .env("ADMIN_KEY", ADMIN_KEY)
        .env("AGENT_KEY", AGENT_KEY)
        .env("GITHUB_SECRET", GITHUB_SECRET)
        .env("SCREENSHOT_DIR", &shots)
        .env("CHROMIUM", CHROMIUM)
        .env("FAULTED_URL", &faulted.base)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .expect("the browser test finishes within 5 minutes")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}\n{stderr}\nscreenshots: {}", shots.display());
    assert!(
        out.status.success(),
        "the browser test failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(!stdout.contains("not ok"), "{stdout}");
    assert!(stdout.contains("steps passed"), "{stdout}");
    assert!(shots.join("live-1280.png").exists() && shots.join("live-390.png").exists());
    assert!(shots.join("storage-banner-1280.png").exists());
    // The pull agent's consumers, at both widths.
    assert!(
        shots.join("agents-pull-1280.png").exists() && shots.join("agents-pull-390.png").exists()
    );
    app.stop().await;
    faulted.stop().await;
}
