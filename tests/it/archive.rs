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

// ---- retention ----

const DAY_MS: i64 = 86_400_000;

/// A UUID v7 event id of time `ms`, as the router makes them.
pub(crate) fn event_id_at(ms: i64) -> Uuid {
    let ts = uuid::Timestamp::from_unix(
        uuid::NoContext,
        (ms / 1000) as u64,
        ((ms % 1000) * 1_000_000) as u32,
    );
    Uuid::new_v7(ts)
}

/// A GitHub `push` event of time `ms` as the store keeps it, with one delivery to `agent` in
/// `status`.
fn stored_event(
    ms: i64,
    delivery_id: &str,
    agent: &str,
    status: event_router::store::DeliveryStatus,
) -> event_router::store::NewEvent {
    let id = event_id_at(ms);
    let body = json!({
        "id": id, "source": "github", "type": "push", "action": null,
        "deliveryId": delivery_id, "timestamp": ms,
        "payload": {"ref": "refs/heads/main", "sender": {"login": "octocat"}},
        "metadata": {"identifier": "octocat", "clientIp": "127.0.0.1", "receivedBytes": 60,
                     "headers": {"x-github-event": "push"}}
    });
    event_router::store::NewEvent {
        id,
        source: "github".into(),
        event_type: "push".into(),
        action: None,
        delivery_id: Some(delivery_id.into()),
        timestamp: ms,
        filtered: false,
        body: body.to_string().into(),
        deliveries: vec![event_router::store::NewDelivery {
            id: event_id_at(ms + 1),
            agent_id: agent.into(),
            route_id: format!("to-{agent}"),
            priority: 0,
            status,
            body: None,
            retry_policy: None,
            next_attempt_at: 0,
            last_error: (status == event_router::store::DeliveryStatus::Dead)
                .then(|| "agent answered 500 Internal Server Error".into()),
            trace_context: None,
            sequencing: Default::default(),
        }],
        streamed: vec![],
    }
}

async fn admin_call(app: &TestApp, method: reqwest::Method, path: &str, body: Value) -> u16 {
    app.client
        .request(method, app.url(path))
        .bearer_auth(ADMIN_KEY)
        .json(&body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// docs/operations.md "Retention": the first purge runs at start (then every 10 minutes) and
/// deletes events older than `retention_days` with their finished deliveries (delivered ones
/// and dead letters), and audit entries older than the cutoff; an event whose delivery is not
/// finished stays, however old, until that delivery is made. The events past retention are
/// written into the store as a long-running router would have left them (with ids and times of
/// 8 days ago); the router is then restarted with `retention_days = 7` and purges on its own.
#[tokio::test]
async fn the_retention_scheduler_purges_finished_old_events_and_keeps_pending_work() {
    use event_router::store::{AuditRecord, DeliveryStatus};
    let rx = crate::receiver::TestReceiver::start().await;
    let seven_days = |c: &mut event_router::Config| c.retention_days = 7;
    // Written under the default retention, so the purge at start cannot race the writes;
    // then restarted with seven days.
    let app = TestApp::spawn().await;
    for (id, enabled) in [("pusher", true), ("sleeper", false)] {
        let agent = json!({"id": id, "name": id, "url": rx.url(&format!("/{id}")),
                           "enabled": enabled});
        assert_eq!(
            admin_call(&app, reqwest::Method::POST, "/admin/agents", agent).await,
            201
        );
    }
    let now = now_ms();
    let eight_days_ago = now - 8 * DAY_MS;
    let old_delivered = stored_event(eight_days_ago, "old-1", "pusher", DeliveryStatus::Delivered);
    let old_dead = stored_event(eight_days_ago + 10, "old-2", "pusher", DeliveryStatus::Dead);
    // Its agent is disabled, so it is still pending when the router starts again.
    let old_pending = stored_event(
        eight_days_ago + 20,
        "old-3",
        "sleeper",
        DeliveryStatus::Pending,
    );
    let recent = stored_event(
        now - 6 * DAY_MS,
        "recent-1",
        "pusher",
        DeliveryStatus::Delivered,
    );
    let store = app.state().store.clone();
    for e in [&old_delivered, &old_dead, &old_pending, &recent] {
        store.commit_event(e.clone()).await.unwrap();
    }
    store
        .add_audit(AuditRecord {
            id: 0,
            at: eight_days_ago,
            client_ip: "10.0.0.8".into(),
            method: "DELETE".into(),
            path: "/admin/filters/old".into(),
            status: 204,
            action: "delete filter".into(),
            target_id: Some("old".into()),
        })
        .await
        .unwrap();
    drop(store);
    let fresh = Webhook::github("push", &b"{\"ref\":\"x\",\"sender\":{\"login\":\"o\"}}"[..])
        .send(&app)
        .await
        .accepted()
        .id;
    let (_, audit) = get_status(&app, "/admin/audit", Some(ADMIN_KEY)).await;
    assert_eq!(audit["items"].as_array().unwrap().len(), 3, "{audit}");
    for e in [&old_delivered, &old_dead, &old_pending, &recent] {
        let (status, v) =
            get_status(&app, &format!("/admin/events/{}", e.id), Some(ADMIN_KEY)).await;
        assert_eq!(status, 200, "written, and readable before the purge: {v}");
    }
    let (_, dlq) = get_status(&app, "/admin/dlq", Some(ADMIN_KEY)).await;
    assert_eq!(dlq["items"].as_array().unwrap().len(), 1, "{dlq}");

    // The restart: the first purge runs at start, with nobody asking for it.
    let dir = app.stop().await;
    let app = TestApp::spawn_in(dir, seven_days).await;
    for e in [&old_delivered, &old_dead] {
        let path = format!("/admin/events/{}", e.id);
        wait_for(Duration::from_secs(30), || async {
            (get_status(&app, &path, Some(ADMIN_KEY)).await.0 == 404).then_some(())
        })
        .await;
    }
    // Within retention: kept.
    for id in [recent.id, fresh] {
        let (status, v) = get_status(&app, &format!("/admin/events/{id}"), Some(ADMIN_KEY)).await;
        assert_eq!(status, 200, "{id} is within retention: {v}");
    }
    // Past retention but still to be delivered: kept, pending.
    let (status, v) = get_status(
        &app,
        &format!("/admin/events/{}", old_pending.id),
        Some(ADMIN_KEY),
    )
    .await;
    assert_eq!(
        status, 200,
        "an event with a pending delivery was purged: {v}"
    );
    assert_eq!(v["deliveries"][0]["status"], "pending", "{v}");
    // The dead letter went with its event; the old audit entry went too, the recent ones stay.
    let (_, dlq) = get_status(&app, "/admin/dlq", Some(ADMIN_KEY)).await;
    assert_eq!(dlq["items"], json!([]), "{dlq}");
    let (_, audit) = get_status(&app, "/admin/audit", Some(ADMIN_KEY)).await;
    let paths: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["/admin/agents", "/admin/agents"], "{audit}");
    let (_, list) = get_status(&app, "/admin/events?limit=500", Some(ADMIN_KEY)).await;
    let mut listed: Vec<Uuid> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| Uuid::parse_str(e["id"].as_str().unwrap()).unwrap())
        .collect();
    listed.sort();
    let mut want = vec![old_pending.id, recent.id, fresh];
    want.sort();
    assert_eq!(listed, want, "{list}");
    // Duplicates are recognised only within retention: the purged event's delivery id is new.
    let again = Webhook::github("push", &b"{\"ref\":\"y\",\"sender\":{\"login\":\"o\"}}"[..])
        .header("x-github-delivery", "old-1")
        .send(&app)
        .await
        .accepted();
    assert_ne!(again.id, old_delivered.id);
    let recent_again =
        Webhook::github("push", &b"{\"ref\":\"z\",\"sender\":{\"login\":\"o\"}}"[..])
            .header("x-github-delivery", "recent-1")
            .send(&app)
            .await
            .duplicate();
    assert_eq!(recent_again.id, recent.id);

    // The pending work was not dropped: once its agent is enabled, it is delivered.
    let agent = json!({"id": "sleeper", "name": "sleeper", "url": rx.url("/sleeper"),
                       "enabled": true});
    assert_eq!(
        admin_call(&app, reqwest::Method::PUT, "/admin/agents/sleeper", agent).await,
        200
    );
    let got = rx.wait_for("/sleeper", 1, Duration::from_secs(20)).await;
    assert_eq!(
        got[0].header("webhook-id"),
        Some(old_pending.id.to_string().as_str())
    );
    let path = format!("/admin/events/{}", old_pending.id);
    wait_for(Duration::from_secs(20), || async {
        let (_, v) = get_status(&app, &path, Some(ADMIN_KEY)).await;
        (v["deliveries"][0]["status"] == "delivered").then_some(())
    })
    .await;
    assert!(rx.received("/pusher").is_empty());
    app.stop().await;
}
