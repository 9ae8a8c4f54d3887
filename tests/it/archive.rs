//! The event archive of the admin API (`GET /admin/events`, `/admin/events/{id}`) and
//! `GET /health` (API.md section 7).

use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

use crate::signed::*;
use crate::support::*;

const GITHUB_PR: &[u8] = include_bytes!("../../examples/github-pull_request.json");
const LINEAR_ISSUE: &[u8] = include_bytes!("../../examples/linear-issue.json");
const SLACK_MESSAGE: &[u8] = include_bytes!("../../examples/slack-message.json");

/// Sends `w` once the clock has moved at least 3 ms past `after`, so that events sent one after
/// another have distinct, ordered timestamps and time bounds between them are unambiguous.
async fn send_after(app: &TestApp, after: i64, w: Webhook) -> Accepted {
    wait_for(Duration::from_secs(2), || async {
        (now_ms() >= after + 3).then_some(())
    })
    .await;
    w.send(app).await.accepted()
}

async fn get_status(app: &TestApp, path: &str, key: Option<&str>) -> (u16, Value) {
    let mut req = app.client.get(app.url(path));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn admin_archive_requires_the_admin_key() {
    let app = TestApp::spawn().await;
    let ok = Webhook::github("push", GITHUB_PR)
        .send(&app)
        .await
        .accepted();
    for path in [
        "/admin/events".to_string(),
        format!("/admin/events/{}", ok.id),
    ] {
        for key in [None, Some("wrong-key"), Some(AGENT_KEY), Some("")] {
            let (status, v) = get_status(&app, &path, key).await;
            assert_eq!(status, 401, "{path} with {key:?}: {v}");
            assert_error_form(&v);
        }
        // Not a bearer token.
        let r = app
            .client
            .get(app.url(&path))
            .header("authorization", ADMIN_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        assert_error_form(&r.json().await.unwrap());
        let (status, _) = get_status(&app, &path, Some(ADMIN_KEY)).await;
        assert_eq!(status, 200, "{path}");
    }
    app.stop().await;
}

#[tokio::test]
async fn archive_is_newest_first_and_filters_by_source_type_time_and_status() {
    let app = TestApp::spawn().await;
    let e1 = send_after(&app, 0, Webhook::github("push", GITHUB_PR)).await;
    let e2 = send_after(
        &app,
        e1.timestamp,
        Webhook::linear(LINEAR_ISSUE, Some(now_ms())),
    )
    .await;
    let e3 = send_after(
        &app,
        e2.timestamp,
        Webhook::github("pull_request", GITHUB_PR),
    )
    .await;
    let e4 = send_after(
        &app,
        e3.timestamp,
        Webhook::slack(SLACK_MESSAGE, "application/json"),
    )
    .await;

    let (items, next) = list_events(&app, "").await;
    assert_eq!(ids(&items), vec![e4.id, e3.id, e2.id, e1.id]);
    assert_eq!(next, None);
    let expected_types = ["message", "pull_request", "issue", "push"];
    let expected_sources = ["slack", "github", "linear", "github"];
    for (i, item) in items.iter().enumerate() {
        assert_eq!(item["type"], expected_types[i], "{item}");
        assert_eq!(item["source"], expected_sources[i], "{item}");
        assert!(item["payload"].is_object(), "{item}");
        assert!(item["metadata"].is_object(), "{item}");
    }

    let q = |query: String| {
        let app = &app;
        async move { ids(&list_events(app, &query).await.0) }
    };
    assert_eq!(q("source=github".into()).await, vec![e3.id, e1.id]);
    assert_eq!(q("source=linear".into()).await, vec![e2.id]);
    assert_eq!(q("source=nope".into()).await, Vec::<Uuid>::new());
    assert_eq!(q("type=pull_request".into()).await, vec![e3.id]);
    assert_eq!(q("type=issue".into()).await, vec![e2.id]);
    assert_eq!(q("source=github&type=push".into()).await, vec![e1.id]);
    assert_eq!(
        q("source=linear&type=push".into()).await,
        Vec::<Uuid>::new()
    );
    let (t2, t3) = (e2.timestamp, e3.timestamp);
    assert_eq!(
        q(format!("since={}", t2 - 1)).await,
        vec![e4.id, e3.id, e2.id]
    );
    assert_eq!(q(format!("until={}", t2 + 1)).await, vec![e2.id, e1.id]);
    assert_eq!(
        q(format!("since={}&until={}", t2 - 1, t3 + 1)).await,
        vec![e3.id, e2.id]
    );
    assert_eq!(
        q(format!("since={}&source=github", t2 - 1)).await,
        vec![e3.id]
    );
    assert_eq!(
        q(format!("since={}", now_ms() + 60_000)).await,
        Vec::<Uuid>::new()
    );
    assert_eq!(
        q("status=processed".into()).await,
        vec![e4.id, e3.id, e2.id, e1.id],
        "with no filters configured every event is processed"
    );
    assert_eq!(q("status=filtered".into()).await, Vec::<Uuid>::new());
    app.stop().await;
}

#[tokio::test]
async fn archive_paginates_with_a_cursor() {
    let app = TestApp::spawn().await;
    let mut sent = Vec::new();
    for i in 0..7 {
        let mut body: Value = serde_json::from_slice(GITHUB_PR).unwrap();
        body["number"] = json!(i);
        let ok = Webhook::github("pull_request", serde_json::to_vec(&body).unwrap())
            .send(&app)
            .await
            .accepted();
        sent.push(ok.id);
    }
    let newest_first: Vec<Uuid> = sent.iter().rev().copied().collect();

    let mut seen = Vec::new();
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let query = match &cursor {
            None => "limit=3".to_string(),
            Some(c) => format!("limit=3&cursor={}", urlencode(c)),
        };
        let (items, next) = list_events(&app, &query).await;
        pages.push(items.len());
        seen.extend(ids(&items));
        assert!(pages.len() <= 3, "more pages than needed: {pages:?}");
        match next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(pages, vec![3, 3, 1]);
    assert_eq!(seen, newest_first, "every event once, newest first");

    // A page that ends exactly at the last event has no next cursor.
    let (items, next) = list_events(&app, "limit=7").await;
    assert_eq!(ids(&items), newest_first);
    assert_eq!(next, None);
    // The default page holds all seven.
    let (items, next) = list_events(&app, "").await;
    assert_eq!(items.len(), 7);
    assert_eq!(next, None);
    // Cursors combine with filters.
    let (first, next) = list_events(&app, "source=github&limit=4").await;
    let (rest, last) = list_events(
        &app,
        &format!("source=github&limit=4&cursor={}", urlencode(&next.unwrap())),
    )
    .await;
    assert_eq!(last, None);
    assert_eq!([ids(&first), ids(&rest)].concat(), newest_first);
    app.stop().await;
}

fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test]
async fn archive_rejects_bad_parameters() {
    let app = TestApp::spawn().await;
    Webhook::github("push", GITHUB_PR)
        .send(&app)
        .await
        .accepted();
    for query in [
        "limit=0",
        "limit=-3",
        "limit=abc",
        "since=yesterday",
        "until=1.5",
        "since=99999999999999999999999",
        "status=bogus",
        "cursor=not-a-cursor",
        "cursor=%FF%FE",
    ] {
        let (status, v) = app.admin_get(&format!("/admin/events?{query}")).await;
        assert_eq!(status, 400, "{query}: {v}");
        assert_error_form(&v);
    }
    app.stop().await;
}

#[tokio::test]
async fn unknown_event_id_is_404() {
    let app = TestApp::spawn().await;
    let ok = Webhook::github("push", GITHUB_PR)
        .send(&app)
        .await
        .accepted();
    for id in [Uuid::now_v7(), Uuid::nil(), Uuid::new_v4()] {
        assert_ne!(id, ok.id);
        let (status, v) = app.admin_get(&format!("/admin/events/{id}")).await;
        assert_eq!(status, 404, "{id}: {v}");
        assert_error_form(&v);
    }
    let (status, v) = app.admin_get("/admin/events/not-an-id").await;
    assert!(
        status == 404 || status == 400,
        "a malformed id: {status} {v}"
    );
    assert_error_form(&v);
    app.stop().await;
}

#[tokio::test]
async fn health_reports_ok_version_uptime_and_storage() {
    let app = TestApp::spawn().await;
    let r = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let v: Value = r.json().await.unwrap();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    let mut keys = keys;
    keys.sort();
    assert_eq!(
        keys,
        ["status", "storage", "uptimeSeconds", "version"],
        "{v}"
    );
    assert_eq!(v["status"], "ok");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    let uptime = v["uptimeSeconds"].as_u64().expect("uptimeSeconds integer");
    assert!(uptime < 60, "{v}");
    assert_eq!(
        v["storage"],
        json!({"backend": crate::support::backend(), "ok": true})
    );
    app.stop().await;
}
