//! The dead-letter queue and replay (API.md section 7): a delivery out of attempts is `dead`
//! with its attempt log; `/admin/dlq` lists, retries and deletes; replay routes an event again.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

use crate::delivery::*;
use crate::receiver::*;
use crate::support::*;

const DELIVERY_KEYS: [&str; 10] = [
    "agentId",
    "attemptLog",
    "attempts",
    "eventId",
    "id",
    "lastError",
    "nextAttemptAt",
    "priority",
    "routeId",
    "status",
];
const ATTEMPT_KEYS: [&str; 9] = [
    "attempt",
    "durationMs",
    "error",
    "requestHeaders",
    "responseBody",
    "responseHeaders",
    "startedAt",
    "statusCode",
    "trigger",
];

fn id_of(d: &Value) -> Uuid {
    Uuid::parse_str(
        d["id"]
            .as_str()
            .unwrap_or_else(|| panic!("delivery id: {d}")),
    )
    .unwrap_or_else(|e| panic!("delivery id is not a UUID ({e}): {d}"))
}

fn ids(items: &[Value]) -> BTreeSet<Uuid> {
    items.iter().map(id_of).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_attempts_a_delivery_is_dead_with_its_attempt_log() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let admin = Admin::of(&app);
    rx.set_default("/d", Reply::Status(500));
    admin
        .create_agent(agent("d", &rx.url("/d"), json!({})))
        .await;
    admin
        .create_route(route(
            "r",
            &["d"],
            policy(3, "fixed", 150, 150),
            json!({ "priority": 4 }),
        ))
        .await;
    let before = now_ms();
    let id = post_routed(&app, "push", 0).await;
    let d = admin.wait_status(id, "dead").await;
    let after = now_ms();
    // The event's view adds what the delivery sends (`null`: the event itself).
    let mut event_keys = DELIVERY_KEYS.to_vec();
    event_keys.push("requestBody");
    event_keys.sort();
    assert_eq!(keys(&d), event_keys, "{d}");
    assert!(d["requestBody"].is_null(), "{d}");
    id_of(&d);
    assert_eq!(d["eventId"], id.to_string(), "{d}");
    assert_eq!(d["agentId"], "d", "{d}");
    assert_eq!(d["routeId"], "r", "{d}");
    assert_eq!(d["priority"], 4, "{d}");
    assert_eq!(d["attempts"], 3, "{d}");
    assert!(
        d["nextAttemptAt"].is_null(),
        "a dead delivery has no next attempt: {d}"
    );
    assert!(
        d["lastError"].as_str().is_some_and(|e| e.contains("500")),
        "lastError names what went wrong: {d}"
    );
    let log = d["attemptLog"].as_array().expect("attemptLog");
    assert_eq!(log.len(), 3, "{d}");
    let mut last_start = before - 1;
    for (i, a) in log.iter().enumerate() {
        assert_eq!(keys(a), ATTEMPT_KEYS, "{a}");
        assert_eq!(a["attempt"], i + 1, "{d}");
        assert_eq!(a["statusCode"], 500, "{d}");
        assert!(a["error"].is_null() || a["error"].is_string(), "{a}");
        let started = a["startedAt"].as_i64().expect("startedAt in ms");
        assert!(
            started >= last_start && started <= after,
            "startedAt {started} out of order or outside [{before}, {after}]: {d}"
        );
        if i > 0 {
            assert!(
                started - last_start >= 140,
                "attempts {}ms apart with a 150 ms fixed delay: {d}",
                started - last_start
            );
        }
        last_start = started;
        assert!(
            a["durationMs"].as_u64().is_some_and(|ms| ms < 5000),
            "durationMs: {a}"
        );
    }
    assert_eq!(rx.received("/d").len(), 3);
    // And it is listed in the dead-letter queue, in the same shape (without the body it sends,
    // which only the event's view adds).
    let (items, next) = admin.dlq("").await;
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(next, None);
    let mut d = d;
    d.as_object_mut().unwrap().remove("requestBody");
    assert_eq!(items[0], d);
}

/// A server with two failing agents: `a` with three dead deliveries, `b` with two.
async fn five_dead(app: &TestApp, rx: &TestReceiver) -> (Vec<Uuid>, Vec<Uuid>) {
    let admin = Admin::of(app);
    rx.set_default("/a", Reply::Status(500));
    rx.set_default("/b", Reply::Status(500));
    admin
        .create_agent(agent("a", &rx.url("/a"), json!({})))
        .await;
    admin
        .create_agent(agent("b", &rx.url("/b"), json!({})))
        .await;
    let once = policy(1, "fixed", 100, 100);
    admin
        .create_route(route("ra", &["a"], once.clone(), only_type("alpha")))
        .await;
    admin
        .create_route(route("rb", &["b"], once, only_type("beta")))
        .await;
    let mut a = Vec::new();
    let mut b = Vec::new();
    for n in 0..3 {
        a.push(post_routed(app, "alpha", n).await);
    }
    for n in 0..2 {
        b.push(post_routed(app, "beta", n).await);
    }
    for id in a.iter().chain(&b) {
        admin.wait_status(*id, "dead").await;
    }
    (a, b)
}

#[tokio::test]
async fn dlq_lists_filters_by_agent_and_pages() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let admin = Admin::of(&app);
    let (a_events, _) = five_dead(&app, &rx).await;

    let (all, next) = admin.dlq("").await;
    assert_eq!(all.len(), 5, "{all:?}");
    assert_eq!(next, None);
    for d in &all {
        assert_eq!(keys(d), DELIVERY_KEYS, "{d}");
        assert_eq!(d["status"], "dead", "{d}");
    }
    let all_ids = ids(&all);
    assert_eq!(all_ids.len(), 5);

    let (only_a, next) = admin.dlq("agentId=a").await;
    assert_eq!(next, None);
    assert_eq!(only_a.len(), 3, "{only_a:?}");
    assert!(only_a.iter().all(|d| d["agentId"] == "a"), "{only_a:?}");
    let a_event_ids: BTreeSet<String> = a_events.iter().map(Uuid::to_string).collect();
    let listed: BTreeSet<String> = only_a
        .iter()
        .map(|d| d["eventId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, a_event_ids);
    assert!(admin.dlq("agentId=nobody").await.0.is_empty());

    // Pages of two: 2 + 2 + 1, the last without a cursor, together every dead letter once.
    let mut paged = Vec::new();
    let mut query = "limit=2".to_string();
    let mut pages = 0;
    loop {
        let (items, next) = admin.dlq(&query).await;
        pages += 1;
        assert!(items.len() <= 2, "page of {} with limit=2", items.len());
        paged.extend(items);
        match next {
            Some(c) => query = format!("limit=2&cursor={c}"),
            None => break,
        }
        assert!(pages < 10, "pagination does not end");
    }
    assert_eq!(pages, 3);
    assert_eq!(paged.len(), 5);
    assert_eq!(ids(&paged), all_ids);

    let (first, next) = admin.dlq("agentId=a&limit=2").await;
    assert_eq!(first.len(), 2);
    let c = next.expect("a cursor to the rest of agent a's dead letters");
    let (rest, next) = admin.dlq(&format!("agentId=a&limit=2&cursor={c}")).await;
    assert_eq!(rest.len(), 1);
    assert_eq!(next, None);
    assert!(rest.iter().all(|d| d["agentId"] == "a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_retry_delete_and_bulk_retry() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let admin = Admin::of(&app);
    let (a_events, b_events) = five_dead(&app, &rx).await;
    let (dead_a, _) = admin.dlq("agentId=a").await;
    let (dead_b, _) = admin.dlq("agentId=b").await;
    rx.set_default("/a", Reply::Status(200));

    // Retry one: the agent gets it again, the delivery ends delivered and leaves the queue.
    let one = &dead_a[0];
    let one_id = id_of(one);
    let one_event = Uuid::parse_str(one["eventId"].as_str().unwrap()).unwrap();
    let (status, v) = admin
        .post(&format!("/admin/dlq/{one_id}/retry"), json!({}))
        .await;
    assert_eq!((status, &v), (200, &json!({ "retried": 1 })), "retry one");
    let got = rx.wait_for("/a", 4, Duration::from_secs(10)).await;
    assert_eq!(
        got[3].header("webhook-id"),
        Some(one_event.to_string().as_str())
    );
    assert_eq!(
        got[3].header("x-delivery-attempt"),
        Some("2"),
        "the attempt number continues after the dead letter's"
    );
    let d = admin.wait_status(one_event, "delivered").await;
    assert_eq!(id_of(&d), one_id, "the same delivery, not a new one");
    // It keeps its attempt log; the retry's attempt numbers continue after the dead one's.
    let log = d["attemptLog"].as_array().expect("attemptLog");
    assert_eq!(log.len(), 2, "{d}");
    assert_eq!(
        (&log[0]["attempt"], &log[0]["statusCode"]),
        (&json!(1), &json!(500)),
        "{d}"
    );
    assert_eq!(
        (&log[1]["attempt"], &log[1]["statusCode"]),
        (&json!(2), &json!(200)),
        "{d}"
    );
    assert_eq!(d["attempts"], 2, "{d}");
    // A second retry of a delivery that is no longer dead is 404, and retries nothing.
    let (status, v) = admin
        .post(&format!("/admin/dlq/{one_id}/retry"), json!({}))
        .await;
    assert_eq!(status, 404, "retry of a delivered delivery: {v}");
    let (left, _) = admin.dlq("").await;
    assert_eq!(left.len(), 4, "{left:?}");
    assert!(!ids(&left).contains(&one_id));

    // Bulk by agent: exactly a's two remaining dead letters.
    let (status, v) = admin
        .post("/admin/dlq/retry", json!({ "agentId": "a" }))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v, json!({ "retried": 2 }));
    let got = rx.wait_for("/a", 6, Duration::from_secs(10)).await;
    let redelivered: BTreeSet<&str> = got[4..]
        .iter()
        .map(|r| r.header("webhook-id").unwrap())
        .collect();
    let expected: BTreeSet<String> = a_events
        .iter()
        .filter(|e| **e != one_event)
        .map(Uuid::to_string)
        .collect();
    assert_eq!(
        redelivered,
        expected.iter().map(String::as_str).collect::<BTreeSet<_>>()
    );
    for e in &a_events {
        admin.wait_status(*e, "delivered").await;
    }
    let (left, _) = admin.dlq("").await;
    assert_eq!(ids(&left), ids(&dead_b), "only b's dead letters remain");
    let (status, v) = admin
        .post("/admin/dlq/retry", json!({ "agentId": "nobody" }))
        .await;
    assert_eq!((status, v), (200, json!({ "retried": 0 })));

    // Delete: 204, gone from the queue, a second delete is 404.
    let gone = id_of(&dead_b[0]);
    let (status, v) = admin.delete(&format!("/admin/dlq/{gone}")).await;
    assert_eq!(status, 204, "{v}");
    let (left, _) = admin.dlq("").await;
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(!ids(&left).contains(&gone));
    assert_eq!(admin.delete(&format!("/admin/dlq/{gone}")).await.0, 404);
    // The event whose delivery was deleted is still archived.
    assert_eq!(b_events.len(), 2);
    for e in &b_events {
        admin.event(*e).await;
    }
}

#[tokio::test]
async fn unknown_dead_letters_are_404() {
    let app = TestApp::spawn().await;
    let admin = Admin::of(&app);
    for id in [Uuid::now_v7().to_string(), "not-a-delivery".to_string()] {
        let (status, v) = admin
            .post(&format!("/admin/dlq/{id}/retry"), json!({}))
            .await;
        assert_eq!(status, 404, "retry {id}: {v}");
        let (status, v) = admin.delete(&format!("/admin/dlq/{id}")).await;
        assert_eq!(status, 404, "delete {id}: {v}");
    }
    let (status, v) = admin
        .post(
            &format!("/admin/events/{}/replay", Uuid::now_v7()),
            json!({}),
        )
        .await;
    assert_eq!(status, 404, "replay of an unknown event: {v}");
}

#[tokio::test]
async fn replay_routes_the_event_again_under_the_current_rules() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let admin = Admin::of(&app);
    admin
        .create_agent(agent("a", &rx.url("/a"), json!({})))
        .await;
    admin
        .create_agent(agent("b", &rx.url("/b"), json!({})))
        .await;
    let retry = policy(2, "fixed", 100, 100);
    let prio = json!({ "priority": 3 });
    admin
        .create_route(route("r", &["a"], retry.clone(), prio.clone()))
        .await;
    let id = post_routed(&app, "push", 0).await;
    let first = admin.wait_status(id, "delivered").await;
    assert!(rx.received("/b").is_empty());

    // The route now reaches b as well; a replay follows the rules as they are now.
    let (status, v) = admin
        .call(
            reqwest::Method::PUT,
            "/admin/routes/r",
            Some(route("r", &["a", "b"], retry, prio)),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = admin
        .post(&format!("/admin/events/{id}/replay"), json!({}))
        .await;
    // `{"eventId", "processed", "routed", "deliveries": [{"id", "agentId", "routeId",
    // "priority", "status": "pending"}]}`: one fresh delivery per agent the rules reach now.
    assert_eq!(status, 200, "replay: {v}");
    assert_eq!(
        keys(&v),
        ["deliveries", "eventId", "processed", "routed"],
        "{v}"
    );
    assert_eq!(v["eventId"], id.to_string(), "{v}");
    assert_eq!(v["processed"], true, "{v}");
    assert_eq!(v["routed"], true, "{v}");
    let made = v["deliveries"].as_array().expect("deliveries");
    assert_eq!(made.len(), 2, "{v}");
    let mut agents = Vec::new();
    for d in made {
        assert_eq!(
            keys(d),
            ["agentId", "id", "priority", "routeId", "status"],
            "{d}"
        );
        assert_ne!(
            id_of(d),
            id_of(&first),
            "a replay makes new deliveries: {v}"
        );
        assert_eq!(d["routeId"], "r", "{d}");
        assert_eq!(d["priority"], 3, "{d}");
        assert_eq!(d["status"], "pending", "{d}");
        agents.push(d["agentId"].as_str().expect("agentId").to_string());
    }
    agents.sort();
    assert_eq!(agents, ["a", "b"], "{v}");
    let a = rx.wait_for("/a", 2, Duration::from_secs(10)).await;
    let b = rx.wait_for("/b", 1, Duration::from_secs(10)).await;
    for r in [&a[1], &b[0]] {
        assert_eq!(r.header("webhook-id"), Some(id.to_string().as_str()));
        assert_eq!(
            r.header("x-delivery-attempt"),
            Some("1"),
            "a fresh delivery"
        );
        assert_eq!(r.json()["id"], id.to_string());
    }
    let all = admin.wait_all_status(id, 3, "delivered").await;
    let distinct: BTreeSet<Uuid> = all.iter().map(id_of).collect();
    assert_eq!(distinct.len(), 3, "replay made fresh deliveries: {all:?}");
    let mut expected = ids(made);
    expected.insert(id_of(&first));
    assert_eq!(
        distinct, expected,
        "the event's deliveries are the first one and those the replay answered"
    );
    for d in &all {
        if made.iter().any(|m| id_of(m) == id_of(d)) {
            assert_eq!(d["attempts"], 1, "a fresh attempt budget: {d}");
            assert_eq!(d["priority"], 3, "{d}");
        }
    }
}

#[tokio::test]
async fn bulk_retry_narrows_by_source_and_since() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let admin = Admin::of(&app);
    rx.set_default("/a", Reply::Status(500));
    admin
        .agent_with_route("a", &rx.url("/a"), "r", policy(1, "fixed", 100, 100))
        .await;
    let github = post_routed(&app, "push", 0).await;
    let internal = crate::signed::Webhook::bearer(
        AGENT_KEY,
        json!({ "type": "build.finished", "n": 1 }).to_string(),
    )
    .send(&app)
    .await
    .accepted()
    .id;
    admin.wait_status(github, "dead").await;
    admin.wait_status(internal, "dead").await;

    let (status, v) = admin
        .post("/admin/dlq/retry", json!({ "since": now_ms() + 3_600_000 }))
        .await;
    assert_eq!(
        (status, v),
        (200, json!({ "retried": 0 })),
        "since in the future"
    );
    let (status, v) = admin
        .post("/admin/dlq/retry", json!({ "source": "internal" }))
        .await;
    assert_eq!((status, v), (200, json!({ "retried": 1 })));
    let got = rx.wait_for("/a", 3, Duration::from_secs(10)).await;
    assert_eq!(
        got[2].header("webhook-id"),
        Some(internal.to_string().as_str())
    );
    admin.wait_status(internal, "dead").await;
    let (status, v) = admin.post("/admin/dlq/retry", json!({ "since": 0 })).await;
    assert_eq!(
        (status, v),
        (200, json!({ "retried": 2 })),
        "since 0 takes every one"
    );
}

/// `GET /admin/dlq?source=`: the dead letters of one source's events, alone or with `agentId`,
/// through the cursor; an unknown source has none.
#[tokio::test]
async fn dlq_lists_filter_by_source() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let admin = Admin::of(&app);
    rx.set_default("/a", Reply::Status(500));
    admin
        .agent_with_route("a", &rx.url("/a"), "r", policy(1, "fixed", 100, 100))
        .await;
    let github = [
        post_routed(&app, "push", 0).await,
        post_routed(&app, "push", 1).await,
    ];
    let internal = crate::signed::Webhook::bearer(
        AGENT_KEY,
        json!({ "type": "build.finished", "n": 1 }).to_string(),
    )
    .send(&app)
    .await
    .accepted()
    .id;
    for id in github.iter().chain([&internal]) {
        admin.wait_status(*id, "dead").await;
    }
    let events = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["eventId"].as_str().unwrap().to_string())
            .collect()
    };
    let get = |q: &'static str| {
        let admin = &admin;
        async move { admin.call(reqwest::Method::GET, q, None).await }
    };
    let (status, v) = get("/admin/dlq?source=internal").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(events(&v), [internal.to_string()], "{v}");
    let (status, v) = get("/admin/dlq?source=github&agentId=a&limit=1").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(events(&v), [github[1].to_string()], "newest first: {v}");
    let cursor = v["nextCursor"].as_str().expect("a next page").to_string();
    let (status, v) = admin
        .call(
            reqwest::Method::GET,
            &format!("/admin/dlq?source=github&limit=1&cursor={cursor}"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(events(&v), [github[0].to_string()], "{v}");
    assert_eq!(v["nextCursor"], Value::Null, "{v}");
    let (status, v) = get("/admin/dlq?source=stripe").await;
    assert_eq!((status, v), (200, json!({"items": [], "nextCursor": null})));
    let (status, v) = get("/admin/dlq?source=internal&agentId=nobody").await;
    assert_eq!(status, 200, "{v}");
    assert!(events(&v).is_empty(), "{v}");
    let (status, v) = get("/admin/dlq?sources=github").await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["code"], "bad_request", "{v}");
    assert!(v["error"].as_str().unwrap().contains("source"), "{v}");
}
