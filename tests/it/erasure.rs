//! Erasure and retention per source (docs/operations.md "Erasing an event", "Retention"):
//! `DELETE /admin/events/{id}` and `POST /admin/erasures` leave a tombstone that still answers
//! dedupe, end unfinished deliveries as `cancelled`, keep erased events out of stream replay,
//! and leave none of the payload's bytes in the store (the SQLite files, or PostgreSQL's rows);
//! `[sources.NAME] retention_days` and `dlq_retention_days` purge on their own schedule.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::archive::event_id_at;
use crate::delivery::*;
use crate::receiver::*;
use crate::signed::Webhook;
use crate::stream_client::*;
use crate::support::*;

/// Every byte the store keeps at rest: the SQLite files of `dir` (database, WAL), or every row
/// of the run's PostgreSQL database.
fn stored_bytes(dir: &std::path::Path) -> Vec<u8> {
    if let Some(url) = database_for(dir) {
        return postgres_dump(&url);
    }
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with("event-router.db") {
            all.extend(std::fs::read(&path).unwrap());
        }
    }
    all
}

/// A marker to find in the stored bytes: 32 random capital letters. The store compresses event
/// bodies (the envelope around even a small payload is past the size where it starts), and
/// Snappy keeps a run of text as it is unless four of its bytes appeared earlier in the body, so
/// a marker that shares no four bytes with the rest of the envelope is stored whole. (A hex id
/// did not: one run in eight had a run of it copied from another id and read as absent.)
fn new_marker() -> String {
    let bytes = [Uuid::new_v4().into_bytes(), Uuid::new_v4().into_bytes()].concat();
    bytes.iter().map(|b| char::from(b'A' + b % 26)).collect()
}

/// Whether some `len` consecutive bytes of `marker` appear in `haystack`.
fn holds_piece(haystack: &[u8], marker: &str, len: usize) -> bool {
    marker
        .as_bytes()
        .windows(len)
        .any(|piece| haystack.windows(len).any(|w| w == piece))
}

/// A small GitHub `issues` payload whose sender is `login`, carrying `marker`.
fn issue_body(login: &str, marker: &str) -> Vec<u8> {
    json!({"action": "opened", "issue": {"number": 7, "title": marker},
           "sender": {"login": login}})
    .to_string()
    .into_bytes()
}

async fn audit_actions(app: &TestApp) -> Vec<(String, Option<String>)> {
    let (_, audit) = app.admin_get("/admin/audit").await;
    audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["action"].as_str().unwrap().to_string(),
                a["targetId"].as_str().map(str::to_string),
            )
        })
        .collect()
}

#[tokio::test]
async fn an_erased_event_leaves_a_tombstone_that_still_answers_dedupe_and_no_payload_bytes() {
    let rx = TestReceiver::start().await;
    rx.set_default("/failing", Reply::Status(500));
    let app = TestApp::spawn().await;
    let admin = Admin::of(&app);
    // A push agent that keeps failing (so its delivery is unfinished when the event goes), a
    // stream-only agent, and a route of `issues` events to both.
    admin
        .create_agent(agent("failing", &rx.url("/failing"), json!({})))
        .await;
    admin
        .create_agent(json!({"id": "watcher", "name": "watcher", "enabled": true}))
        .await;
    admin
        .create_route(route(
            "issues",
            &["failing", "watcher"],
            policy(50, "fixed", 300, 300),
            json!({}),
        ))
        .await;

    let marker = new_marker();
    let before = Webhook::github("issues", issue_body("someone", "before"))
        .send(&app)
        .await
        .accepted()
        .id;
    let erased = Webhook::github("issues", issue_body("alice", &marker))
        .header("x-github-delivery", "delivery-to-erase")
        .send(&app)
        .await
        .accepted()
        .id;
    let after = Webhook::github("issues", issue_body("someone", "after"))
        .send(&app)
        .await
        .accepted()
        .id;
    // The failing agent has been tried (and its answer stored) before the erasure.
    rx.wait_for("/failing", 4, Duration::from_secs(10)).await;
    let d = admin.deliveries(erased).await;
    assert!(
        d.iter()
            .any(|d| d["status"] == "scheduled" || d["status"] == "in_flight"),
        "{d:?}"
    );
    // The payload is at rest somewhere in the store (the test would prove nothing otherwise).
    assert!(
        holds_piece(&stored_bytes(app.dir.path()), &marker, 24),
        "the marker should be stored before the erasure"
    );

    let (status, body) = admin
        .call(Method::DELETE, &format!("/admin/events/{erased}"), None)
        .await;
    assert_eq!(status, 204, "{body}");

    // GET answers with the tombstone.
    let (status, v) = app.admin_get(&format!("/admin/events/{erased}")).await;
    assert_eq!(status, 200, "{v}");
    let erased_at = v["erasedAt"].as_i64().expect("erasedAt");
    assert!((now_ms() - erased_at).abs() < 60_000, "{v}");
    assert_eq!(
        v["event"],
        json!({"id": erased, "source": "github", "type": "issues", "timestamp": v["event"]["timestamp"],
               "erasedAt": erased_at}),
        "{v}"
    );
    assert!(v["event"]["timestamp"].as_i64().unwrap() > 0);
    // Its unfinished delivery ended as cancelled, and no attempt follows.
    let deliveries = v["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 1, "{v}");
    assert_eq!(deliveries[0]["status"], "cancelled", "{v}");
    assert_eq!(deliveries[0]["nextAttemptAt"], Value::Null, "{v}");
    // An attempt already under way when it was erased may still arrive; none starts after.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let tried = rx
        .received("/failing")
        .iter()
        .filter(|r| r.header("webhook-id") == Some(erased.to_string().as_str()))
        .count();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let tried_later = rx
        .received("/failing")
        .iter()
        .filter(|r| r.header("webhook-id") == Some(erased.to_string().as_str()))
        .count();
    assert_eq!(tried, tried_later, "attempts continued after the erasure");
    assert_eq!(admin.deliveries(erased).await[0]["status"], "cancelled");
    // The other events' deliveries go on.
    assert_eq!(admin.deliveries(before).await[0]["status"], "scheduled");

    // None of the payload's bytes remain: not in the database file, not in the WAL (or not in
    // any PostgreSQL row).
    assert!(
        !holds_piece(&stored_bytes(app.dir.path()), &marker, 8),
        "the erased payload is still in the store"
    );
    // The same webhook again is still a duplicate of the erased event.
    let again = Webhook::github("issues", issue_body("alice", &marker))
        .header("x-github-delivery", "delivery-to-erase")
        .send(&app)
        .await
        .duplicate();
    assert_eq!(again.id, erased);
    // Listed as the tombstone; replay refuses; erasing again changes nothing.
    let (_, list) = app.admin_get("/admin/events?type=issues").await;
    let listed = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == erased.to_string())
        .unwrap()
        .clone();
    assert_eq!(listed["erasedAt"], erased_at, "{list}");
    assert!(listed.get("payload").is_none(), "{listed}");
    let (status, v) = admin
        .post(&format!("/admin/events/{erased}/replay"), json!({}))
        .await;
    assert_eq!(status, 409, "{v}");
    assert_eq!(v["code"], "conflict", "{v}");
    let (status, _) = admin
        .call(Method::DELETE, &format!("/admin/events/{erased}"), None)
        .await;
    assert_eq!(status, 204);
    let (status, v) = admin
        .call(
            Method::DELETE,
            &format!("/admin/events/{}", Uuid::now_v7()),
            None,
        )
        .await;
    assert_eq!(status, 404, "{v}");
    assert_eq!(v["code"], "not_found", "{v}");
    // Who erased what, and when, is in the audit log.
    assert!(
        audit_actions(&app)
            .await
            .contains(&("erase event".to_string(), Some(erased.to_string()))),
        "{:?}",
        audit_actions(&app).await
    );

    // A stream resumed from before it replays the events around it, never the erased one.
    for t in BOTH {
        let req =
            StreamRequest::new("watcher", AGENT_KEY).param("lastEventId", &before.to_string());
        let mut c = open_ok(&app, t, &req).await;
        assert_eq!(c.next_event_id().await, after, "{t:?}");
    }

    // After a restart (the store reopened), still erased, still no bytes.
    let dir = app.stop().await;
    assert!(!holds_piece(&stored_bytes(dir.path()), &marker, 8));
    let app = TestApp::spawn_in(dir, |_| {}).await;
    let (_, v) = app.admin_get(&format!("/admin/events/{erased}")).await;
    assert_eq!(v["erasedAt"], erased_at, "{v}");
    assert_eq!(v["deliveries"][0]["status"], "cancelled", "{v}");
}

#[tokio::test]
async fn erasures_by_field_erase_every_matching_event_and_nothing_else() {
    let app = TestApp::spawn().await;
    let admin = Admin::of(&app);
    let mut alice = Vec::new();
    let mut bob = Vec::new();
    for i in 0..3 {
        alice.push(
            Webhook::github("issues", issue_body("alice", &format!("a{i}")))
                .send(&app)
                .await
                .accepted()
                .id,
        );
        bob.push(
            Webhook::github("issues", issue_body("bob", &format!("b{i}")))
                .send(&app)
                .await
                .accepted()
                .id,
        );
    }
    // alice on another source, by a numeric field written as a string.
    let internal = Webhook::bearer(
        AGENT_KEY,
        json!({"type": "user.updated", "sender": {"login": "alice"}, "userId": 4242}).to_string(),
    )
    .send(&app)
    .await
    .accepted()
    .id;

    // Bad requests change nothing.
    for (body, field) in [
        (json!({"equals": "alice"}), "body"),
        (json!({"field": "", "equals": "alice"}), "field"),
        (json!({"field": "payload..x", "equals": "alice"}), "field"),
        (
            json!({"field": "payload.sender.login", "equals": {"a": 1}}),
            "equals",
        ),
        (
            json!({"field": "payload.sender.login", "equals": "alice", "extra": 1}),
            "body",
        ),
    ] {
        let (status, v) = admin.post("/admin/erasures", body.clone()).await;
        assert_eq!(status, 400, "{body}: {v}");
        assert_eq!(v["code"], "validation_error", "{body}: {v}");
        assert_eq!(v["success"], false, "{v}");
        if field != "body" {
            assert_eq!(v["field"], field, "{body}: {v}");
        }
    }

    // Only github's alice.
    let (status, v) = admin
        .post(
            "/admin/erasures",
            json!({"source": "github", "field": "payload.sender.login", "equals": "alice"}),
        )
        .await;
    assert_eq!((status, &v), (200, &json!({"erased": 3})));
    for id in &alice {
        assert!(admin.event(*id).await["erasedAt"].is_i64(), "{id}");
    }
    for id in bob.iter().chain([&internal]) {
        let v = admin.event(*id).await;
        assert!(v.get("erasedAt").is_none(), "{v}");
        assert!(v["event"]["payload"].is_object(), "{v}");
    }
    // Again: nothing left to erase.
    let (_, v) = admin
        .post(
            "/admin/erasures",
            json!({"source": "github", "field": "payload.sender.login", "equals": "alice"}),
        )
        .await;
    assert_eq!(v, json!({"erased": 0}));
    // Every source, matching a number by its text.
    let (_, v) = admin
        .post(
            "/admin/erasures",
            json!({"field": "payload.userId", "equals": "4242"}),
        )
        .await;
    assert_eq!(v, json!({"erased": 1}));
    assert!(admin.event(internal).await["erasedAt"].is_i64());
    // The audit log says an erasure ran, never whose data it was.
    let actions = audit_actions(&app).await;
    assert_eq!(
        actions
            .iter()
            .filter(|(a, t)| a == "erase matching events" && t.is_none())
            .count(),
        3,
        "{actions:?}"
    );
    let (_, audit) = app.admin_get("/admin/audit").await;
    assert!(!audit.to_string().contains("alice"), "{audit}");
}

// ---- retention per source, and of the dead-letter queue ----

const DAY_MS: i64 = 86_400_000;

/// An event of `source` received at `ms` as a long-running router would have stored it, with
/// one delivery in `status`.
fn old_event(
    source: &str,
    ms: i64,
    status: event_router::store::DeliveryStatus,
) -> event_router::store::NewEvent {
    let id = event_id_at(ms);
    let body = json!({"id": id, "source": source, "type": "push", "action": null,
                      "deliveryId": null, "timestamp": ms, "payload": {"n": 1},
                      "metadata": {"identifier": "x", "clientIp": "127.0.0.1",
                                   "receivedBytes": 8, "headers": {}}});
    event_router::store::NewEvent {
        id,
        source: source.into(),
        event_type: "push".into(),
        action: None,
        delivery_id: None,
        timestamp: ms,
        filtered: false,
        body: body.to_string().into(),
        deliveries: vec![event_router::store::NewDelivery {
            id: event_id_at(ms + 1),
            agent_id: "gone".into(),
            route_id: "r".into(),
            priority: 0,
            status,
            body: None,
            retry_policy: None,
            next_attempt_at: 0,
            last_error: None,
            trace_context: None,
            sequencing: Default::default(),
        }],
        streamed: vec![],
    }
}

/// `[sources.github] retention_days = 7` beside a global 30 days, and `dlq_retention_days`
/// shorter (3) than either: at start the purge removes github's 8-day-old event but keeps
/// internal's, and removes a 5-day-old dead letter while its event stays.
#[tokio::test]
async fn a_source_keeps_its_own_retention_and_dead_letters_theirs() {
    use event_router::store::DeliveryStatus::{Dead, Delivered};
    let adjust = |c: &mut event_router::Config| {
        c.retention_days = 30;
        c.dlq_retention_days = Some(3);
        c.sources.get_mut("github").unwrap().retention_days = Some(7);
    };
    // Written under the default retention (so its purge at start cannot race the writes), then
    // restarted with the settings under test.
    let app = TestApp::spawn().await;
    let now = now_ms();
    let github_old = old_event("github", now - 8 * DAY_MS, Delivered);
    let github_recent = old_event("github", now - 6 * DAY_MS, Delivered);
    let internal_old = old_event("internal", now - 8 * DAY_MS, Delivered);
    let internal_dead = old_event("internal", now - 5 * DAY_MS, Dead);
    let internal_fresh_dead = old_event("internal", now - DAY_MS, Dead);
    let store = app.state().store.clone();
    for e in [
        &github_old,
        &github_recent,
        &internal_old,
        &internal_dead,
        &internal_fresh_dead,
    ] {
        store.commit_event(e.clone()).await.unwrap();
    }
    drop(store);
    let (_, dlq) = app.admin_get("/admin/dlq").await;
    assert_eq!(dlq["items"].as_array().unwrap().len(), 2, "{dlq}");

    // The purge runs at start.
    let dir = app.stop().await;
    let app = TestApp::spawn_in(dir, adjust).await;
    let gone = format!("/admin/events/{}", github_old.id);
    wait_for(Duration::from_secs(30), || async {
        (app.admin_get(&gone).await.0 == 404).then_some(())
    })
    .await;
    let dead_gone = || async {
        let (_, dlq) = app.admin_get("/admin/dlq").await;
        let ids: Vec<String> = dlq["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["eventId"].as_str().unwrap().to_string())
            .collect();
        (ids == [internal_fresh_dead.id.to_string()]).then_some(())
    };
    wait_for(Duration::from_secs(30), dead_gone).await;
    for e in [
        &github_recent,
        &internal_old,
        &internal_dead,
        &internal_fresh_dead,
    ] {
        let (status, v) = app.admin_get(&format!("/admin/events/{}", e.id)).await;
        assert_eq!(status, 200, "{} should be kept: {v}", e.source);
    }
    // The dead letter past dlq_retention_days went; its event (within 30 days) stayed.
    let (_, v) = app
        .admin_get(&format!("/admin/events/{}", internal_dead.id))
        .await;
    assert_eq!(v["deliveries"], json!([]), "{v}");
}

/// A dead letter kept longer than its source's events (`dlq_retention_days` 60, events 7):
/// its event stays with it, so it can still be retried; an old event without one goes.
#[tokio::test]
async fn a_longer_dead_letter_retention_keeps_its_event() {
    use event_router::store::DeliveryStatus::{Dead, Delivered};
    let adjust = |c: &mut event_router::Config| {
        c.retention_days = 7;
        c.dlq_retention_days = Some(60);
    };
    let app = TestApp::spawn().await;
    let now = now_ms();
    let old = old_event("github", now - 8 * DAY_MS, Delivered);
    let old_dead = old_event("github", now - 8 * DAY_MS + 5, Dead);
    let very_old_dead = old_event("github", now - 61 * DAY_MS, Dead);
    let store = app.state().store.clone();
    for e in [&old, &old_dead, &very_old_dead] {
        store.commit_event(e.clone()).await.unwrap();
    }
    drop(store);
    let dir = app.stop().await;
    let app = TestApp::spawn_in(dir, adjust).await;
    for e in [&old, &very_old_dead] {
        let path = format!("/admin/events/{}", e.id);
        wait_for(Duration::from_secs(30), || async {
            (app.admin_get(&path).await.0 == 404).then_some(())
        })
        .await;
    }
    let (status, v) = app
        .admin_get(&format!("/admin/events/{}", old_dead.id))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["deliveries"][0]["status"], "dead", "{v}");
}

/// `check-config` on `text`: whether it passed, and what it printed.
fn check_config(text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new(binary())
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), printed)
}

/// The config keys, from a file: `check-config` accepts them and names a bad one's place.
#[test]
fn retention_keys_are_checked_with_their_place() {
    let (ok, text) = check_config("dlq_retention_days = 3\n[sources.github]\nretention_days = 7\n");
    assert!(ok, "{text}");
    let (ok, text) =
        check_config("dlq_retention_days = 0\n[sources.github]\nretention_days = \"week\"\n");
    assert!(!ok);
    assert!(
        text.contains(":1:") && text.contains("dlq_retention_days"),
        "{text}"
    );
    assert!(
        text.contains(":3:") && text.contains("sources.github.retention_days"),
        "{text}"
    );
}

/// A dead letter that holds its ordering key (`onDead: "hold"`) and is purged by
/// `dlq_retention_days` releases the key: the key's next event is delivered.
#[tokio::test]
async fn a_held_key_moves_on_when_its_dead_letter_is_purged() {
    let rx = TestReceiver::start().await;
    let app = TestApp::spawn().await;
    let admin = Admin::of(&app);
    admin
        .create_agent(agent("held", &rx.url("/held"), json!({})))
        .await;
    admin
        .create_route(route(
            "r",
            &["held"],
            policy(1, "fixed", 10, 10),
            json!({ "ordering": { "key": "source", "onDead": "hold" } }),
        ))
        .await;
    // A dead letter five days old for agent "held", key "github" (the event's source).
    let mut old = old_event(
        "github",
        now_ms() - 5 * DAY_MS,
        event_router::store::DeliveryStatus::Dead,
    );
    old.deliveries[0].agent_id = "held".into();
    old.deliveries[0].sequencing = event_router::store::Sequencing {
        ordering_key: Some("github".into()),
        ordering_hold: true,
        ..Default::default()
    };
    app.state().store.commit_event(old.clone()).await.unwrap();
    // Held after a restart: a new github event waits behind it.
    let dir = app.stop().await;
    let app = TestApp::spawn_in(dir, |_| {}).await;
    let admin = Admin::of(&app);
    let waiting = post_routed(&app, "push", 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(admin.deliveries(waiting).await[0]["status"], "pending");
    assert!(rx.received("/held").is_empty(), "the key is held");
    // Restarted with dlq_retention_days = 3: the purge at start removes the dead letter, and
    // the key moves on.
    let dir = app.stop().await;
    let app = TestApp::spawn_in(dir, |c| c.dlq_retention_days = Some(3)).await;
    let admin = Admin::of(&app);
    admin.wait_status(waiting, "delivered").await;
    assert_eq!(rx.received("/held").len(), 1);
}
