//! Real-time streaming (API.md section 7 "Streaming"), with real WebSocket and SSE clients: who
//! may open which stream, the message envelopes, transformations and filters, `subscribe`,
//! heartbeats, resume across the replay/live seam, slow consumers, vanished clients, shutdown.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use uuid::Uuid;

use crate::receiver::TestReceiver;
use crate::rules::{
    GITHUB_PR, agent as push_agent, cond, count_event, create, delete, filter, jq, put_ok,
    received_event, route, route_when, send_linear, send_pr, settled_deliveries,
};
use crate::signed::*;
use crate::stream_client::*;
use crate::support::*;

/// Agents' own keys (`apiKey`; at least 16 characters).
const KEY_A: &str = "own-key-of-agent-a";
const KEY_A2: &str = "own-key-of-agent-a-rotated";
const KEY_B: &str = "own-key-of-agent-b";
const KEY_BOT: &str = "own-key-of-agent-bot";

/// A stream-only agent (no `url`).
fn stream_agent(id: &str) -> Value {
    json!({"id": id, "name": format!("agent {id}"), "enabled": true})
}

/// A stream-only agent `id` and a route of every processed event to it.
async fn agent_with_route(app: &TestApp, id: &str) {
    create(app, "agents", stream_agent(id)).await;
    create(app, "routes", route(&format!("to-{id}"), &[id])).await;
}

fn push_body(n: usize) -> String {
    json!({"ref": "refs/heads/main", "n": n, "sender": {"login": "octocat"}}).to_string()
}

/// A GitHub `push` event with a marker `n`; its id.
async fn post_push(app: &TestApp, n: usize) -> Uuid {
    Webhook::github("push", push_body(n))
        .send(app)
        .await
        .accepted()
        .id
}

fn open_count(app: &TestApp) -> u64 {
    app.state().hub.stats.open.load(Ordering::Relaxed)
}

async fn wait_open_count(app: &TestApp, n: u64) {
    wait_for(SOON, || async { (open_count(app) == n).then_some(()) }).await;
}

/// A refused stream request: this status, and the contract's error form where the client could
/// read a body (the WebSocket handshake keeps only what arrived with the response head).
fn assert_refused(r: &Refused, status: u16, t: Transport, what: &str) {
    let body = String::from_utf8_lossy(&r.body);
    assert_eq!(r.status, status, "{t:?} {what}: {body}");
    match r.json() {
        Some(v) => assert_error_form(&v),
        None if t == Transport::Sse => {
            panic!("{t:?} {what}: the body is not the error form: {body:?}")
        }
        None => {}
    }
}

async fn expect_refused(app: &TestApp, t: Transport, req: &StreamRequest, status: u16) {
    let r = open_refused(app, t, req).await;
    let what = format!("{:?} bearer {:?}", req.query_string(), req.bearer);
    assert_refused(&r, status, t, &what);
}

/// `got` is exactly `want`, in order; on failure, says what is missing, doubled or out of place.
fn assert_sequence(got: &[Uuid], want: &[Uuid], what: &str) {
    if got == want {
        return;
    }
    let mut count: HashMap<Uuid, usize> = HashMap::new();
    for id in got {
        *count.entry(*id).or_default() += 1;
    }
    let missing: Vec<usize> = (0..want.len())
        .filter(|&i| !count.contains_key(&want[i]))
        .collect();
    let doubled: Vec<&Uuid> = count
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| id)
        .collect();
    let unexpected = got.iter().filter(|id| !want.contains(id)).count();
    let first_diff = got.iter().zip(want).position(|(a, b)| a != b);
    panic!(
        "{what}: got {} events, want {}; missing positions {missing:?}, duplicated {doubled:?}, \
         {unexpected} unexpected, first difference at {first_diff:?}",
        got.len(),
        want.len()
    );
}

#[tokio::test]
async fn a_key_in_the_authorization_header_or_in_the_query_opens_a_stream() {
    let app = TestApp::spawn().await;
    agent_with_route(&app, "bot").await;
    for t in BOTH {
        expect_refused(&app, t, &StreamRequest::keyless("bot"), 401).await;
        expect_refused(&app, t, &StreamRequest::new("bot", "wrong-key"), 401).await;
        expect_refused(
            &app,
            t,
            &StreamRequest::keyless("bot").bearer("wrong-key"),
            401,
        )
        .await;
        expect_refused(&app, t, &StreamRequest::new("bot", ""), 401).await;
    }
    let mut clients = Vec::new();
    for t in BOTH {
        clients.push(open_ok(&app, t, &StreamRequest::new("bot", AGENT_KEY)).await);
        clients.push(open_ok(&app, t, &StreamRequest::keyless("bot").bearer(AGENT_KEY)).await);
    }
    let id = post_push(&app, 1).await;
    for c in &mut clients {
        assert_eq!(c.next_event_id().await, id, "{:?}", c.transport());
    }
}

#[tokio::test]
async fn an_agents_own_key_opens_only_that_agent_and_the_agent_key_opens_any() {
    let app = TestApp::spawn().await;
    let mut a = stream_agent("a");
    a["apiKey"] = json!(KEY_A);
    create(&app, "agents", a.clone()).await;
    let mut b = stream_agent("b");
    b["apiKey"] = json!(KEY_B);
    create(&app, "agents", b).await;
    create(&app, "agents", stream_agent("c")).await;
    create(&app, "routes", route("to-all", &["a", "b", "c"])).await;

    let mut clients = Vec::new();
    for t in BOTH {
        clients.push(open_ok(&app, t, &StreamRequest::new("a", KEY_A)).await);
        clients.push(open_ok(&app, t, &StreamRequest::keyless("a").bearer(KEY_A)).await);
        for other in ["b", "c", "*"] {
            expect_refused(&app, t, &StreamRequest::new(other, KEY_A), 401).await;
            let by_header = StreamRequest::keyless(other).bearer(KEY_A);
            expect_refused(&app, t, &by_header, 401).await;
        }
        expect_refused(&app, t, &StreamRequest::new("a", KEY_B), 401).await;
        for any in ["a", "b", "c"] {
            clients.push(open_ok(&app, t, &StreamRequest::new(any, AGENT_KEY)).await);
        }
    }
    let id = post_push(&app, 1).await;
    for c in &mut clients {
        assert_eq!(c.next_event_id().await, id, "{:?}", c.transport());
    }

    // Replacing the agent with a new key: the old key no longer opens it, the new one does.
    a["apiKey"] = json!(KEY_A2);
    put_ok(&app, "agents", "a", &a).await;
    for t in BOTH {
        expect_refused(&app, t, &StreamRequest::new("a", KEY_A), 401).await;
        open_ok(&app, t, &StreamRequest::new("a", KEY_A2)).await;
    }
}

#[tokio::test]
async fn the_firehose_needs_the_admin_key_and_carries_every_processed_event() {
    let app = TestApp::spawn().await;
    let mut bot = stream_agent("bot");
    bot["apiKey"] = json!(KEY_BOT);
    create(&app, "agents", bot).await;
    let only_linear = json!([cond("source", "equals", json!("linear"))]);
    create(
        &app,
        "routes",
        route_when("linear-only", &["bot"], only_linear),
    )
    .await;
    let no_push = json!([cond("type", "equals", json!("push"))]);
    create(
        &app,
        "filters",
        filter("no-push", "exclude", (None, None), no_push),
    )
    .await;

    for t in BOTH {
        for key in [AGENT_KEY, KEY_BOT, "wrong-key"] {
            expect_refused(&app, t, &StreamRequest::new("*", key), 401).await;
            expect_refused(&app, t, &StreamRequest::keyless("*").bearer(key), 401).await;
        }
    }
    let mut clients = Vec::new();
    for t in BOTH {
        clients.push(open_ok(&app, t, &StreamRequest::new("*", ADMIN_KEY)).await);
        clients.push(open_ok(&app, t, &StreamRequest::keyless("*").bearer(ADMIN_KEY)).await);
    }

    let unrouted = send_pr(&app, |_| {}).await;
    assert!(unrouted.processed && !unrouted.routed, "{unrouted:?}");
    let filtered = Webhook::github("push", push_body(1))
        .send(&app)
        .await
        .accepted();
    assert!(
        !filtered.processed,
        "the exclude filter did not apply: {filtered:?}"
    );
    let routed = send_linear(&app, |_| {}).await;
    assert!(routed.routed, "{routed:?}");
    let last = send_pr(&app, |v| v["action"] = json!("closed")).await;

    let archived = archived_event(&app, unrouted.id).await;
    for c in &mut clients {
        let t = c.transport();
        assert_eq!(
            c.next_event().await,
            archived,
            "{t:?}: the firehose carries the event"
        );
        let rest = c.event_ids_through(last.id).await;
        assert_sequence(
            &rest,
            &[routed.id, last.id],
            &format!("{t:?} firehose after the first event (the filtered one is left out)"),
        );
    }
}

#[tokio::test]
async fn an_agent_id_that_is_not_a_configured_agent_is_404() {
    let app = TestApp::spawn().await;
    create(&app, "agents", stream_agent("gone")).await;
    assert_eq!(delete(&app, "agents", "gone").await, 204);
    for t in BOTH {
        for agent in ["nobody", "gone"] {
            expect_refused(&app, t, &StreamRequest::new(agent, AGENT_KEY), 404).await;
            let by_header = StreamRequest::keyless(agent).bearer(AGENT_KEY);
            expect_refused(&app, t, &by_header, 404).await;
        }
    }
}

#[tokio::test]
async fn invalid_filters_are_400_before_any_upgrade() {
    let app = TestApp::spawn().await;
    agent_with_route(&app, "bot").await;
    let bad = [
        "not json",
        "42",
        r#""github""#,
        r#"{"source": 5}"#,
        r#"[{"field":"payload.action","operator":"like","value":"x"}]"#,
        r#"[{"field":"payload.action","operator":"regex","value":"("}]"#,
        r#"[{"operator":"equals","value":"x"}]"#,
        r#"{"conditions":[{"field":"payload.action","operator":"in","value":"opened"}]}"#,
        r#"[{"field":"payload.action","operator":"exists","value":"yes"}]"#,
    ];
    for t in BOTH {
        for f in bad {
            let req = StreamRequest::new("bot", AGENT_KEY).param("filters", f);
            // On the WebSocket this is the handshake's answer: a 400, never a 101.
            expect_refused(&app, t, &req, 400).await;
        }
    }
    let stats = &app.state().hub.stats;
    assert_eq!(
        stats.opened_total.load(Ordering::Relaxed),
        0,
        "a refused request opened a subscription"
    );
    // The same request with valid filters is accepted (so the 400s were about the filters).
    for t in BOTH {
        let req = StreamRequest::new("bot", AGENT_KEY).param("filters", r#"{"source":"github"}"#);
        open_ok(&app, t, &req).await;
    }
}

#[tokio::test]
async fn events_arrive_in_the_contract_envelope_with_or_without_a_push_url() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    create(&app, "agents", stream_agent("bot")).await;
    create(&app, "agents", push_agent("pusher", &rx, "/hook")).await;
    create(&app, "routes", route("both", &["bot", "pusher"])).await;
    let mut clients = Vec::new();
    for agent in ["bot", "pusher"] {
        for t in BOTH {
            clients.push((
                agent,
                open_ok(&app, t, &StreamRequest::new(agent, AGENT_KEY)).await,
            ));
        }
    }
    for (_, c) in &clients {
        if let StreamClient::Sse(sse) = c {
            let ct = sse.headers.get("content-type").map(|v| v.to_str().unwrap());
            assert!(
                ct.is_some_and(|c| c.starts_with("text/event-stream")),
                "SSE content-type {ct:?}"
            );
        }
    }
    let sent = send_pr(&app, |_| {}).await;
    let archived = archived_event(&app, sent.id).await;
    for (agent, c) in &mut clients {
        let t = c.transport();
        // `next_event` checks the envelope and, on SSE, `id:` = the event id.
        assert_eq!(c.next_event().await, archived, "{agent} over {t:?}");
    }
}

#[tokio::test]
async fn a_routes_transformation_is_what_its_streams_carry_live_and_on_resume() {
    let app = TestApp::spawn().await;
    create(&app, "agents", stream_agent("shaped")).await;
    create(&app, "agents", stream_agent("raw")).await;
    let mut shaping = route("shape", &["shaped"]);
    shaping["transformation"] =
        jq(r#"{id, source, type, title: .payload.pull_request.title, via: "stream"}"#);
    create(&app, "routes", shaping).await;
    create(&app, "routes", route("as-is", &["raw"])).await;
    let mut shaped = Vec::new();
    let mut raw = Vec::new();
    for t in BOTH {
        shaped.push(open_ok(&app, t, &StreamRequest::new("shaped", AGENT_KEY)).await);
        raw.push(open_ok(&app, t, &StreamRequest::new("raw", AGENT_KEY)).await);
    }
    let title: Value =
        serde_json::from_slice::<Value>(GITHUB_PR).unwrap()["pull_request"]["title"].clone();

    let first = send_pr(&app, |_| {}).await;
    let second = send_pr(&app, |v| v["action"] = json!("closed")).await;
    let mut live_second = None;
    for c in &mut shaped {
        let t = c.transport();
        for sent in [first, second] {
            let ev = c.next_event().await;
            assert_eq!(ev["id"], sent.id.to_string(), "{t:?}: {ev}");
            assert_eq!(
                ev["title"], title,
                "{t:?}: the route's jq did not apply: {ev}"
            );
            assert_eq!(ev["via"], "stream", "{t:?}: {ev}");
            assert_eq!(ev["source"], "github", "{t:?}: {ev}");
            assert!(ev.get("payload").is_none(), "{t:?}: {ev}");
            assert!(ev.get("metadata").is_none(), "{t:?}: {ev}");
            if sent.id == second.id {
                live_second = Some(ev);
            }
        }
    }
    for c in &mut raw {
        let t = c.transport();
        assert_eq!(
            c.next_event().await,
            archived_event(&app, first.id).await,
            "{t:?}"
        );
    }
    // A resumed stream replays the transformed copy, the same as was sent live.
    let live_second = live_second.unwrap();
    for t in BOTH {
        let req =
            StreamRequest::new("shaped", AGENT_KEY).param("lastEventId", &first.id.to_string());
        let mut c = open_ok(&app, t, &req).await;
        assert_eq!(c.next_event().await, live_second, "{t:?} replay");
    }
}

/// A push agent's delivery whose route transformation failed has nothing to send: it is not
/// streamed live, and a resumed stream does not replay it either (it used to replay the event
/// as archived, which the live stream never carried).
#[tokio::test]
async fn a_failed_route_transformation_is_neither_streamed_nor_replayed() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    create(
        &app,
        "agents",
        json!({"id": "pushed", "name": "pushed", "url": rx.url("/in"), "enabled": true}),
    )
    .await;
    let mut fragile = route("fragile", &["pushed"]);
    fragile["transformation"] =
        jq(r#"if .payload.n == 2 then error("no two") else {id, source, type, n: .payload.n} end"#);
    create(&app, "routes", fragile).await;
    let mut live = Vec::new();
    for t in BOTH {
        live.push(open_ok(&app, t, &StreamRequest::new("pushed", AGENT_KEY)).await);
    }
    let mut ids = Vec::new();
    for n in 1..=3 {
        ids.push(post_push(&app, n).await);
    }
    for c in &mut live {
        let t = c.transport();
        for (n, id) in [(1, ids[0]), (3, ids[2])] {
            let ev = c.next_event().await;
            assert_eq!(ev["id"], id.to_string(), "{t:?} live: {ev}");
            assert_eq!(ev["n"], n, "{t:?} live: {ev}");
        }
    }
    for t in BOTH {
        let req = StreamRequest::new("pushed", AGENT_KEY).param("lastEventId", &ids[0].to_string());
        let mut c = open_ok(&app, t, &req).await;
        let ev = c.next_event().await;
        assert_eq!(ev["id"], ids[2].to_string(), "{t:?} replay: {ev}");
        assert_eq!(ev["n"], 3, "{t:?} replay: {ev}");
    }
}

#[tokio::test]
async fn filters_in_either_form_narrow_the_stream_live_and_on_resume() {
    let app = TestApp::spawn().await;
    agent_with_route(&app, "bot").await;
    let opened_any_case = json!([
        {"field": "payload.action", "operator": "equals", "value": "OPENED", "caseSensitive": false}
    ]);
    let prs_not_closed = json!({
        "source": "github", "eventType": "pull_request",
        "conditions": [{"field": "payload.action", "operator": "equals", "value": "closed", "negate": true}]
    });
    let linear_only = json!({"source": "linear"});
    let filters = [&opened_any_case, &prs_not_closed, &linear_only];
    let mut clients = Vec::new();
    for (i, f) in filters.iter().enumerate() {
        for t in BOTH {
            let req = StreamRequest::new("bot", AGENT_KEY).param("filters", &f.to_string());
            clients.push((i, open_ok(&app, t, &req).await));
        }
    }

    let opened = send_pr(&app, |_| {}).await.id;
    let closed = send_pr(&app, |v| v["action"] = json!("closed")).await.id;
    let issue = send_linear(&app, |_| {}).await.id;
    let _push = post_push(&app, 1).await;
    let reopened = send_pr(&app, |v| v["action"] = json!("reopened")).await.id;
    let last_pr = send_pr(&app, |_| {}).await.id;
    let last_issue = send_linear(&app, |_| {}).await.id;
    let _ = closed;

    let want = [
        vec![opened, last_pr],
        vec![opened, reopened, last_pr],
        vec![issue, last_issue],
    ];
    for (i, c) in &mut clients {
        let t = c.transport();
        let got = c.event_ids_through(*want[*i].last().unwrap()).await;
        assert_sequence(
            &got,
            &want[*i],
            &format!("{t:?} with filters {}", filters[*i]),
        );
    }
    // The replay of a resumed stream is narrowed the same way.
    for t in BOTH {
        let req = StreamRequest::new("bot", AGENT_KEY)
            .param("filters", &prs_not_closed.to_string())
            .param("lastEventId", &opened.to_string());
        let mut c = open_ok(&app, t, &req).await;
        let got = c.event_ids_through(last_pr).await;
        assert_sequence(
            &got,
            &[reopened, last_pr],
            &format!("{t:?} resumed with filters"),
        );
    }
}

/// The filters a `subscription_update` echoes, after checking its envelope.
fn subscription_update(v: &Value) -> Value {
    assert_eq!(v["type"], "subscription_update", "{v}");
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["data", "type"], "{v}");
    assert!(
        v["data"].get("filters").is_some(),
        "data.filters is missing: {v}"
    );
    v["data"]["filters"].clone()
}

/// The conditions of filters in either form.
fn conditions_of(filters: &Value) -> Value {
    match filters {
        Value::Array(_) => filters.clone(),
        _ => filters.get("conditions").cloned().unwrap_or(json!([])),
    }
}

#[tokio::test]
async fn a_websocket_subscribe_replaces_the_filters_and_is_answered() {
    let app = TestApp::spawn().await;
    agent_with_route(&app, "bot").await;
    let mut ws = open_ok(&app, Transport::Ws, &StreamRequest::new("bot", AGENT_KEY)).await;

    ws.send(&json!({"type": "subscribe", "filters": {"source": "linear"}}))
        .await;
    let echoed = subscription_update(&ws.next_message().await.1);
    assert_eq!(echoed["source"], "linear", "{echoed}");
    let _pr = send_pr(&app, |_| {}).await;
    let issue = send_linear(&app, |_| {}).await;
    assert_eq!(
        ws.next_event_id().await,
        issue.id,
        "the new filters did not apply"
    );

    // The array form replaces the previous filters (it is not added to them).
    let closed = json!([cond("payload.action", "equals", json!("closed"))]);
    ws.send(&json!({"type": "subscribe", "filters": closed}))
        .await;
    let echoed = subscription_update(&ws.next_message().await.1);
    crate::rules::assert_subset(&closed, &conditions_of(&echoed), "filters");
    let _issue = send_linear(&app, |_| {}).await;
    let closed_pr = send_pr(&app, |v| v["action"] = json!("closed")).await;
    assert_eq!(ws.next_event_id().await, closed_pr.id);

    // `{}`: everything again.
    ws.send(&json!({"type": "subscribe", "filters": {}})).await;
    subscription_update(&ws.next_message().await.1);
    let issue = send_linear(&app, |_| {}).await;
    assert_eq!(ws.next_event_id().await, issue.id);
}

#[tokio::test]
async fn heartbeats_arrive_at_the_configured_interval() {
    let app = TestApp::spawn_with(|c| c.stream_heartbeat = Duration::from_millis(200)).await;
    agent_with_route(&app, "bot").await;
    for t in BOTH {
        let start = Instant::now();
        let mut c = open_ok(&app, t, &StreamRequest::new("bot", AGENT_KEY)).await;
        let mut at = Vec::new();
        let mut last_ts = 0;
        while at.len() < 4 {
            match c.recv().await {
                Got::Message { id, json } => {
                    assert_eq!(json["type"], "heartbeat", "{t:?}: {json}");
                    assert_heartbeat(&json);
                    assert_eq!(id, None, "{t:?}: a heartbeat carries no event id");
                    let ts = json["timestamp"].as_i64().unwrap();
                    assert!(ts >= last_ts, "{t:?}: heartbeat timestamps go back");
                    last_ts = ts;
                    at.push(start.elapsed());
                }
                other => panic!("{t:?}: {other:?}"),
            }
        }
        // Four beats about 200 ms apart: not a burst (lower bounds), and not the 15 s default
        // (an upper bound generous for a loaded machine).
        assert!(
            at[0] >= Duration::from_millis(100),
            "{t:?}: first beat at {at:?}"
        );
        let span = at[3] - at[0];
        assert!(
            span >= Duration::from_millis(300) && span <= Duration::from_secs(7),
            "{t:?}: three intervals took {span:?} ({at:?})"
        );
    }
}

/// A UUID v7 of millisecond `ms` (random otherwise): the shape of this server's ids.
fn v7_at(ms: i64) -> Uuid {
    let mut b = *Uuid::new_v4().as_bytes();
    b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    b[6] = 0x70 | (b[6] & 0x0f);
    b[8] = 0x80 | (b[8] & 0x3f);
    let id = Uuid::from_bytes(b);
    assert_eq!(id.get_version_num(), 7);
    id
}

/// A resume id this server never issued is refused as docs/streaming.md says — `400
/// bad_request`, before any upgrade, on both transports and both ways of passing it — while
/// one it issued, and one older than the retention (purged since, perhaps), resume (issue #32).
#[tokio::test]
async fn a_resume_id_this_server_never_issued_is_refused_before_any_upgrade() {
    let app = TestApp::spawn().await;
    agent_with_route(&app, "bot").await;
    let a = post_push(&app, 1).await;
    let b = post_push(&app, 2).await;
    let now = now_ms();
    let never = [
        ("not a UUID", "not-an-id".to_string()),
        ("a UUID v4", Uuid::new_v4().to_string()),
        ("the nil UUID", Uuid::nil().to_string()),
        ("a v7 of the next hour", v7_at(now + 3_600_000).to_string()),
        ("a v7 of now, never archived", v7_at(now).to_string()),
        (
            "a v7 of a's millisecond",
            v7_at(
                a.as_bytes()[..6]
                    .iter()
                    .fold(0i64, |m, b| m << 8 | i64::from(*b)),
            )
            .to_string(),
        ),
    ];
    for t in BOTH {
        for (what, id) in &never {
            let mut ways = vec![StreamRequest::new("bot", AGENT_KEY).param("lastEventId", id)];
            if t == Transport::Sse {
                ways.push(StreamRequest::new("bot", AGENT_KEY).header("last-event-id", id));
            }
            for req in ways {
                let r = open_refused(&app, t, &req).await;
                assert_refused(&r, 400, t, what);
                if let Some(v) = r.json() {
                    assert_eq!(v["code"], "bad_request", "{t:?} {what}: {v}");
                    assert!(
                        v["error"]
                            .as_str()
                            .is_some_and(|e| e.contains("this server issued")),
                        "{t:?} {what}: {v}"
                    );
                }
            }
        }
    }
    assert_eq!(
        app.state().hub.stats.opened_total.load(Ordering::Relaxed),
        0,
        "a refused request opened a subscription"
    );
    // An id it issued resumes after it; one older than the retention replays all that is kept.
    let ancient = v7_at(now - 31 * 86_400_000).to_string();
    for t in BOTH {
        let mut c = open_ok(
            &app,
            t,
            &StreamRequest::new("bot", AGENT_KEY).param("lastEventId", &a.to_string()),
        )
        .await;
        assert_sequence(
            &c.event_ids_through(b).await,
            &[b],
            &format!("{t:?} from a"),
        );
        let mut c = open_ok(
            &app,
            t,
            &StreamRequest::new("bot", AGENT_KEY).param("lastEventId", &ancient),
        )
        .await;
        assert_sequence(
            &c.event_ids_through(b).await,
            &[a, b],
            &format!("{t:?} from long ago"),
        );
    }
    // An erased event's id was issued too: its tombstone answers for it.
    let r = app
        .client
        .delete(app.url(&format!("/admin/events/{a}")))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    for t in BOTH {
        let req = StreamRequest::new("bot", AGENT_KEY).param("lastEventId", &a.to_string());
        let mut c = open_ok(&app, t, &req).await;
        assert_sequence(
            &c.event_ids_through(b).await,
            &[b],
            &format!("{t:?} from erased a"),
        );
    }
}

#[tokio::test]
async fn resume_replays_what_came_after_the_last_id_in_order_then_goes_on_live() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    create(&app, "agents", stream_agent("bot")).await;
    create(&app, "agents", push_agent("pusher", &rx, "/hook")).await;
    let github_only = json!([cond("source", "equals", json!("github"))]);
    create(
        &app,
        "routes",
        route_when("gh", &["bot", "pusher"], github_only),
    )
    .await;

    let a = post_push(&app, 1).await;
    let b = post_push(&app, 2).await;
    let not_theirs = send_linear(&app, |_| {}).await;
    assert!(!not_theirs.routed);
    let c = post_push(&app, 3).await;

    let mut clients = Vec::new();
    for agent in ["bot", "pusher"] {
        let base = StreamRequest::new(agent, AGENT_KEY);
        let a = a.to_string();
        for (how, t, req) in [
            (
                "ws lastEventId",
                Transport::Ws,
                base.clone().param("lastEventId", &a),
            ),
            (
                "sse lastEventId",
                Transport::Sse,
                base.clone().param("lastEventId", &a),
            ),
            (
                "sse Last-Event-ID",
                Transport::Sse,
                base.clone().header("last-event-id", &a),
            ),
        ] {
            clients.push((format!("{agent} {how}"), open_ok(&app, t, &req).await));
        }
    }
    for (what, s) in &mut clients {
        let replayed = [s.next_event_id().await, s.next_event_id().await];
        assert_sequence(&replayed, &[b, c], &format!("{what}: replay"));
    }
    let d = post_push(&app, 4).await;
    let e = post_push(&app, 5).await;
    for (what, s) in &mut clients {
        let live = [s.next_event_id().await, s.next_event_id().await];
        assert_sequence(&live, &[d, e], &format!("{what}: live after the replay"));
    }
}

#[tokio::test]
async fn resume_during_concurrent_ingest_has_no_gap_and_no_duplicate() {
    const TOTAL: usize = 200;
    let app = TestApp::spawn().await;
    agent_with_route(&app, "bot").await;
    let (tx, mut posted) = tokio::sync::watch::channel(Vec::<Uuid>::new());
    let poster = {
        let client = app.client.clone();
        let base = app.base.clone();
        tokio::spawn(async move {
            for n in 0..TOTAL {
                let answer = Webhook::github("push", push_body(n))
                    .send_to(&client, &base)
                    .await;
                let id = answer.accepted().id;
                tx.send_modify(|ids| ids.push(id));
            }
        })
    };
    // Clients join at three points while the events keep coming, each resuming a little behind
    // the newest acknowledged event so that its replay and the live events overlap.
    let mut clients = Vec::new();
    for at in [40, 100, 160] {
        let ids = tokio::time::timeout(SOON, posted.wait_for(|ids| ids.len() >= at))
            .await
            .expect("ingest goes on")
            .unwrap()
            .clone();
        let k = ids.len() - 10;
        for t in BOTH {
            let req =
                StreamRequest::new("bot", AGENT_KEY).param("lastEventId", &ids[k].to_string());
            clients.push((k, open_ok(&app, t, &req).await));
        }
    }
    tokio::time::timeout(Duration::from_secs(30), poster)
        .await
        .expect("ingest finishes")
        .unwrap();
    let all = posted.borrow().clone();
    assert_eq!(all.len(), TOTAL);
    for (k, mut c) in clients {
        let t = c.transport();
        let got = c.event_ids_through(all[TOTAL - 1]).await;
        assert_sequence(
            &got,
            &all[k + 1..],
            &format!("{t:?} resumed after event #{k}"),
        );
    }
}

/// Resuming with the last id a client got hands it exactly what it has not got yet, wherever in
/// the stream it left. Under concurrent ingest (16 posters, on a multi-threaded runtime as the
/// server runs in production) one reader per transport records the whole stream; then clients
/// resume with the id found at cut points along that stream (after ingest, so all comes from the
/// replay) and must receive exactly the events that came after the cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resuming_anywhere_in_a_concurrently_fed_stream_misses_nothing() {
    const POSTERS: usize = 16;
    const PER_POSTER: usize = 25;
    let app = Arc::new(TestApp::spawn().await);
    agent_with_route(&app, "bot").await;
    let req = StreamRequest::new("bot", AGENT_KEY);
    let mut whole = Vec::new();
    for t in BOTH {
        whole.push(open_ok(&app, t, &req).await);
    }
    wait_open_count(&app, 2).await;
    let mut posters = Vec::new();
    for p in 0..POSTERS {
        let app = app.clone();
        posters.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for n in 0..PER_POSTER {
                let w = Webhook::github("push", push_body(p * 1000 + n));
                ids.push(w.send(&app).await.accepted().id);
            }
            ids
        }));
    }
    let mut all = Vec::new();
    for p in posters {
        all.extend(p.await.unwrap());
    }
    all.sort();
    let total = all.len();
    // Posted after each resume, so that a resumed client knows when its replay is over.
    let mut sentinels: Vec<Uuid> = Vec::new();
    for mut c in whole {
        let t = c.transport();
        let mut order = Vec::with_capacity(total);
        while order.len() < total {
            order.push(c.next_event_id().await);
        }
        let mut sorted = order.clone();
        sorted.sort();
        assert_sequence(&sorted, &all, &format!("{t:?}: the live stream (as a set)"));
        // Cuts where a later event of the stream has a smaller id (the places a resume by id
        // could get wrong), and every 50th position.
        let mut cuts: Vec<usize> = (0..total - 1)
            .filter(|&k| order[k + 1..].iter().any(|id| *id < order[k]))
            .take(5)
            .collect();
        cuts.extend((0..total - 1).step_by(50));
        for k in cuts {
            let last = order[k].to_string();
            let mut again = open_ok(&app, t, &req.clone().param("lastEventId", &last)).await;
            let sentinel = post_push(&app, 1_000_000 + k).await;
            sentinels.push(sentinel);
            let mut got = again.event_ids_through(sentinel).await;
            got.sort();
            let mut want: Vec<Uuid> = order[k + 1..].to_vec();
            want.extend(&sentinels);
            want.sort();
            assert_sequence(
                &got,
                &want,
                &format!(
                    "{t:?}: resumed with the id at position {k} of the stream it had been \
                     reading (events reach the stream out of id order: {} of {total} come after \
                     a larger id)",
                    order.windows(2).filter(|w| w[1] < w[0]).count()
                ),
            );
        }
    }
}

#[tokio::test]
async fn a_slow_consumer_is_cut_off_with_a_reason_and_slows_neither_ingest_nor_others() {
    const TOTAL: usize = 200;
    let app = TestApp::spawn_with(|c| c.stream_buffer = 8).await;
    agent_with_route(&app, "bot").await;
    let req = StreamRequest::new("bot", AGENT_KEY);
    // Opened and then not read until ingest is over.
    let mut stalled = Vec::new();
    for t in BOTH {
        stalled.push(open_ok(&app, t, &req).await);
    }
    let mut readers = Vec::new();
    for t in BOTH {
        let mut c = open_ok(&app, t, &req).await;
        readers.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            while ids.len() < TOTAL {
                ids.push(c.next_event_id().await);
            }
            ids
        }));
    }
    wait_open_count(&app, 4).await;

    // Large events, so that what the stalled clients leave unread is far beyond what the
    // sockets' kernel buffers and the server's channels can hold.
    let pad = "x".repeat(100 * 1024);
    let mut ids = Vec::new();
    for n in 0..TOTAL {
        let body = json!({"n": n, "pad": pad, "sender": {"login": "octocat"}}).to_string();
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            Webhook::github("push", body).send(&app),
        )
        .await
        .unwrap_or_else(|_| panic!("ingest of event #{n} blocked behind a stalled stream"));
        ids.push(answer.accepted().id);
    }

    for r in readers {
        let got = tokio::time::timeout(SOON, r)
            .await
            .expect("the reading subscriber gets every event")
            .unwrap();
        assert_sequence(&got, &ids, "the subscriber that reads");
    }
    for mut s in stalled {
        let t = s.transport();
        let (got, end) = s.drain().await;
        // WebSocket: close code 1013 (try again later); SSE: a final close message. Both say
        // why (a slow consumer) and how to go on (resume with lastEventId).
        match &end {
            Got::Closed { code, reason } => {
                let expected_code = match t {
                    Transport::Ws => Some(1013),
                    Transport::Sse => None,
                };
                assert_eq!(*code, expected_code, "{t:?}: close code ({reason:?})");
                assert!(
                    reason.starts_with("slow consumer") && reason.contains("lastEventId"),
                    "{t:?}: the close reason does not say the consumer was too slow and how \
                     to resume: {reason:?}"
                );
            }
            other => panic!(
                "{t:?}: the stalled stream was not closed with a reason; after {} of {TOTAL} \
                 events it {other:?}",
                got.len()
            ),
        }
        if t == Transport::Sse {
            assert!(
                matches!(s.recv().await, Got::Ended),
                "the SSE body ends after the close message"
            );
        }
        assert!(got.len() < TOTAL, "{t:?}: {end:?} after every event");
        assert_sequence(
            &got,
            &ids[..got.len()],
            &format!("{t:?}: what the cut-off stream delivered"),
        );
        // It resumes with its last id and misses nothing.
        if let Some(last) = got.last() {
            let req = req.clone().param("lastEventId", &last.to_string());
            let mut again = open_ok(&app, t, &req).await;
            let rest = again.event_ids_through(ids[TOTAL - 1]).await;
            assert_sequence(
                &rest,
                &ids[got.len()..],
                &format!("{t:?} resumed after the cut"),
            );
        }
    }
}

#[tokio::test]
async fn a_client_that_goes_away_frees_its_subscription() {
    // Short heartbeats: a server learns that an idle SSE client is gone when it next writes.
    let app = TestApp::spawn_with(|c| c.stream_heartbeat = Duration::from_millis(200)).await;
    agent_with_route(&app, "bot").await;
    let req = StreamRequest::new("bot", AGENT_KEY);
    let ws = open_ok(&app, Transport::Ws, &req).await;
    let sse = open_ok(&app, Transport::Sse, &req).await;
    let mut polite = open_ok(&app, Transport::Ws, &req).await;
    wait_open_count(&app, 3).await;
    assert!(app.state().hub.listening("bot"));

    // Two vanish without a word (their sockets just close); one closes the WebSocket properly.
    drop(ws);
    drop(sse);
    if let StreamClient::Ws(ws) = &mut polite {
        ws.close(None).await.unwrap();
    }
    wait_open_count(&app, 0).await;
    assert!(!app.state().hub.listening("bot"));
    // Ingest still routes to the agent, and a new stream works.
    let mut again = open_ok(&app, Transport::Sse, &req).await;
    let id = post_push(&app, 1).await;
    assert_eq!(again.next_event_id().await, id);
}

#[tokio::test]
async fn shutdown_closes_streams_with_a_close_message() {
    let app = TestApp::spawn().await;
    agent_with_route(&app, "bot").await;
    let req = StreamRequest::new("bot", AGENT_KEY);
    let mut ws = open_ok(&app, Transport::Ws, &req).await;
    let mut sse = open_ok(&app, Transport::Sse, &req).await;
    wait_open_count(&app, 2).await;
    let stopping = tokio::spawn(async move {
        let started = Instant::now();
        app.stop().await;
        started.elapsed()
    });
    match ws.recv().await {
        Got::Closed {
            code: Some(1001),
            reason,
        } => {
            assert!(!reason.trim().is_empty(), "the close frame has no reason")
        }
        other => panic!("WebSocket: expected a close frame 1001 (going away), got {other:?}"),
    }
    match sse.recv().await {
        Got::Closed { code: None, reason } => {
            assert!(
                !reason.trim().is_empty(),
                "the SSE close message has no reason"
            )
        }
        other => panic!("SSE: expected a final close message, got {other:?}"),
    }
    assert!(
        matches!(sse.recv().await, Got::Ended),
        "the SSE body ends after the close message"
    );
    let took = tokio::time::timeout(Duration::from_secs(15), stopping)
        .await
        .expect("the server stops")
        .unwrap();
    assert!(took < Duration::from_secs(10), "shutdown took {took:?}");
}

#[tokio::test]
async fn the_admin_key_opens_only_the_firehose() {
    let app = TestApp::spawn().await;
    agent_with_route(&app, "bot").await;
    let status = |path: String| {
        let client = app.client.clone();
        async move { client.get(path).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(
        status(app.url(&format!("/stream/sse?agentId=bot&apiKey={ADMIN_KEY}"))).await,
        401
    );
    assert_eq!(
        status(app.url(&format!("/stream/sse?agentId=*&apiKey={AGENT_KEY}"))).await,
        401
    );
    app.stop().await;
}

/// Ingest leaves a JSON payload unparsed unless a rule that can read it applies or a stream is
/// open. Which of the two happened must not show: routing on payload conditions, the delivered
/// and archived bodies, and what a stream with a payload filter carries are the same before,
/// while and after a stream is open.
#[tokio::test]
async fn payload_rules_bodies_and_stream_filters_with_and_without_a_stream_open() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    create(&app, "agents", push_agent("all", &rx, "/all")).await;
    create(&app, "agents", push_agent("ready", &rx, "/ready")).await;
    create(&app, "routes", route("everything", &["all"])).await;
    // Only GitHub pull_request events are read into: pushes keep their payload unparsed.
    let mut ready = route("ready-prs", &["ready"]);
    ready["sourceFilters"] = json!([{
        "id": "ready-when", "name": "ready", "source": "github", "eventType": "pull_request",
        "conditions": [cond("payload.pull_request.draft", "equals", json!(false))],
        "action": "include", "priority": 0, "enabled": true
    }]);
    create(&app, "routes", ready).await;

    // Sends a push, a ready PR and a draft PR; checks their routing and bodies; their ids.
    async fn round(app: &TestApp, rx: &TestReceiver, n: usize) -> [Uuid; 3] {
        let push = post_push(app, n).await;
        let ready = send_pr(app, |v| v["pull_request"]["draft"] = json!(false)).await;
        let draft = send_pr(app, |v| v["pull_request"]["draft"] = json!(true)).await;
        assert!(ready.routed && draft.routed);
        for id in [push, ready.id, draft.id] {
            let stored = app.state().store.get_event(id).await.unwrap().unwrap();
            let got = received_event(rx, "/all", id).await;
            assert_eq!(
                std::str::from_utf8(&got.body).unwrap(),
                stored.body,
                "the delivered body is the archived one, byte for byte"
            );
        }
        let archived = archived_event(app, push).await;
        assert_eq!(
            archived["payload"],
            serde_json::from_str::<Value>(&push_body(n)).unwrap()
        );
        assert_eq!(archived["metadata"]["identifier"], "octocat");
        received_event(rx, "/ready", ready.id).await;
        settled_deliveries(app, draft.id).await;
        assert_eq!(
            count_event(rx, "/ready", draft.id),
            0,
            "a draft is not ready"
        );
        [push, ready.id, draft.id]
    }

    round(&app, &rx, 1).await;
    // A firehose narrowed on a payload field: its filter needs every event's payload.
    let filters = json!([cond("payload.n", "equals", json!(2))]).to_string();
    let mut clients = Vec::new();
    for t in BOTH {
        let req = StreamRequest::new("*", ADMIN_KEY).param("filters", &filters);
        clients.push(open_ok(&app, t, &req).await);
    }
    let [push, ..] = round(&app, &rx, 2).await;
    let archived = archived_event(&app, push).await;
    let marker = post_push(&app, 3).await;
    let last = send_pr(&app, |v| v["n"] = json!(2)).await.id;
    for c in &mut clients {
        let t = c.transport();
        assert_eq!(c.next_event().await, archived, "{t:?}: the push with n = 2");
        let rest = c.event_ids_through(last).await;
        assert_sequence(
            &rest,
            &[last],
            &format!("{t:?}: then only the PR with n = 2"),
        );
    }
    let _ = marker;
    drop(clients);
    wait_open_count(&app, 0).await;
    round(&app, &rx, 4).await;
}

/// Resume across a restart of the router (docs/streaming.md "Resume"), with the non-browser
/// clients an agent would use: a WebSocket client resuming with `lastEventId`, SSE clients
/// resuming with the `Last-Event-ID` header or the `lastEventId` parameter. Clients that stayed
/// connected until the shutdown, and clients that left earlier, each resume with the last id
/// they got, after events were posted while they were away both before and after the restart;
/// what each receives over its two connections is every routed event exactly once, in order,
/// then the live ones.
#[tokio::test]
async fn resume_across_a_router_restart_misses_nothing_and_doubles_nothing() {
    let app = TestApp::spawn().await;
    agent_with_route(&app, "bot").await;
    let req = StreamRequest::new("bot", AGENT_KEY);
    // How each client resumes after the restart.
    type Resume = fn(StreamRequest, &str) -> StreamRequest;
    let resume_with: [(&str, Transport, Resume); 3] = [
        ("ws lastEventId", Transport::Ws, |r, id| {
            r.param("lastEventId", id)
        }),
        ("sse Last-Event-ID", Transport::Sse, |r, id| {
            r.header("last-event-id", id)
        }),
        ("sse lastEventId", Transport::Sse, |r, id| {
            r.param("lastEventId", id)
        }),
    ];
    let mut stayed = Vec::new();
    let mut left = Vec::new();
    for &(how, t, _) in &resume_with {
        stayed.push((how, open_ok(&app, t, &req).await));
        left.push((how, open_ok(&app, t, &req).await));
    }
    wait_open_count(&app, 6).await;
    let mut all = Vec::new();
    for n in 0..3 {
        all.push(post_push(&app, n).await);
    }
    // Everyone gets the first three live; then half of the clients go away.
    let mut got_stayed = Vec::new();
    for (how, c) in &mut stayed {
        let ids = c.event_ids_through(all[2]).await;
        assert_sequence(&ids, &all, &format!("{how}: live before the restart"));
        got_stayed.push(ids);
    }
    let mut got_left = Vec::new();
    for (how, mut c) in left {
        let ids = c.event_ids_through(all[2]).await;
        assert_sequence(&ids, &all, &format!("{how}: live before leaving"));
        got_left.push(ids);
    }
    // Posted while those are away, before the restart.
    for n in 3..6 {
        all.push(post_push(&app, n).await);
    }
    // The router stops; the clients still connected read to the end of their stream.
    let addr = app.addr;
    let stopping = tokio::spawn(app.stop());
    for ((how, c), ids) in stayed.iter_mut().zip(&mut got_stayed) {
        let (rest, end) = c.drain().await;
        assert!(
            matches!(end, Got::Closed { .. }),
            "{how}: the stream did not end cleanly at the shutdown: {end:?}"
        );
        ids.extend(rest);
    }
    let dir = tokio::time::timeout(Duration::from_secs(30), stopping)
        .await
        .expect("the server stops")
        .unwrap();
    let app = TestApp::spawn_at(addr, dir, |_| {}).await;
    // Posted after the restart, before anyone is back.
    for n in 6..9 {
        all.push(post_push(&app, n).await);
    }
    // Everyone resumes with the last id it got.
    let mut resumed = Vec::new();
    for (i, &(how, t, with)) in resume_with.iter().enumerate() {
        for (whose, ids) in [("stayed", &got_stayed[i]), ("left", &got_left[i])] {
            let last = ids.last().unwrap().to_string();
            let c = open_ok(&app, t, &with(req.clone(), &last)).await;
            resumed.push((
                format!("{how} ({whose} until the shutdown)"),
                ids.clone(),
                c,
            ));
        }
    }
    wait_open_count(&app, 6).await;
    // And these come live.
    for n in 9..11 {
        all.push(post_push(&app, n).await);
    }
    let newest = *all.last().unwrap();
    for (what, mut ids, mut c) in resumed {
        ids.extend(c.event_ids_through(newest).await);
        assert_sequence(&ids, &all, &format!("{what}: before and after the restart"));
    }
    app.stop().await;
}

/// The same across a crash: the real binary is killed with SIGKILL while WebSocket and SSE
/// clients are attached. Each resumes, on the restarted router, with the last id it handled:
/// events acknowledged just before the kill (committed with their stream rows before the 200)
/// are replayed, then those posted after the restart, then live ones — each once, in order.
#[tokio::test]
async fn resume_after_the_router_is_killed_replays_every_acknowledged_event_once() {
    use crate::delivery::Admin;
    let dir = tempfile::tempdir().unwrap();
    let mut server = ChildServer::start(dir.path(), &[]).await;
    let admin = Admin::at(&server.base);
    let (status, v) = admin.post("/admin/agents", stream_agent("bot")).await;
    assert_eq!(status, 201, "{v}");
    let (status, v) = admin.post("/admin/routes", route("to-bot", &["bot"])).await;
    assert_eq!(status, 201, "{v}");
    let addr = |base: &str| -> std::net::SocketAddr {
        base.trim_start_matches("http://").parse().unwrap()
    };
    let client = reqwest::Client::new();
    let post = |base: String, n: usize| {
        let client = client.clone();
        async move {
            Webhook::github("push", push_body(n))
                .send_to(&client, &base)
                .await
                .accepted()
                .id
        }
    };
    let req = StreamRequest::new("bot", AGENT_KEY);
    type Resume = fn(StreamRequest, &str) -> StreamRequest;
    let resume_with: [(&str, Transport, Resume); 3] = [
        ("ws lastEventId", Transport::Ws, |r, id| {
            r.param("lastEventId", id)
        }),
        ("sse Last-Event-ID", Transport::Sse, |r, id| {
            r.header("last-event-id", id)
        }),
        ("sse lastEventId", Transport::Sse, |r, id| {
            r.param("lastEventId", id)
        }),
    ];
    let mut clients = Vec::new();
    for &(_, t, _) in &resume_with {
        let c = open_at(addr(&server.base), t, &req).await;
        clients.push(c.unwrap_or_else(|r| panic!("{t:?} refused: {}", r.status)));
    }
    let mut all = Vec::new();
    for n in 0..3 {
        all.push(post(server.base.clone(), n).await);
    }
    // The clients handle the first three; two more are acknowledged; then the kill.
    let mut handled = Vec::new();
    for c in &mut clients {
        handled.push(c.event_ids_through(all[2]).await);
    }
    for n in 3..5 {
        all.push(post(server.base.clone(), n).await);
    }
    server.child.start_kill().unwrap();
    server.child.wait().await.unwrap();
    for c in &mut clients {
        // Whatever was still on the way is lost with the connection; the client resumes.
        let t = c.transport();
        let end = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match c.next().await {
                    Got::Message { .. } => continue,
                    end => return end,
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{t:?}: the stream did not end after the kill"));
        assert!(
            matches!(end, Got::Ended),
            "{t:?}: a killed server sent a close: {end:?}"
        );
    }
    drop(clients);

    let server = ChildServer::start(dir.path(), &[]).await;
    for n in 5..8 {
        all.push(post(server.base.clone(), n).await);
    }
    let mut resumed = Vec::new();
    for (i, &(how, t, with)) in resume_with.iter().enumerate() {
        let last = handled[i].last().unwrap().to_string();
        let c = open_at(addr(&server.base), t, &with(req.clone(), &last)).await;
        let c = c.unwrap_or_else(|r| panic!("{how} refused: {}", r.status));
        resumed.push((how, c));
    }
    // Live after the replay (the replay ends with the newest stored event, then goes on live).
    let live_from = all.len();
    for n in 8..10 {
        all.push(post(server.base.clone(), n).await);
    }
    let newest = *all.last().unwrap();
    for ((how, mut c), mut ids) in resumed.into_iter().zip(handled) {
        ids.extend(c.event_ids_through(newest).await);
        assert_sequence(
            &ids,
            &all,
            &format!("{how}: handled before the kill, then resumed (live from #{live_from})"),
        );
    }
}
