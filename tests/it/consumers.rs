//! Pull consumers (docs/consumers.md): a pull agent's deliveries leased to consumers that poll
//! (`GET /agents/{id}/deliveries`), settled by ack, nack and extend, shared by the agent's
//! consumers, through lease expiry, a SIGKILL, the WebSocket consume mode and two nodes on
//! PostgreSQL.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use crate::delivery::*;
use crate::signed::*;
use crate::support::*;

/// The pull agent's own key.
const PULL_KEY: &str = "pull-agent-key-0123456789";

/// A pull agent `p` (with `extra` merged in) and a route `r` to it with this retry policy
/// (and `route_extra`).
async fn pull_route(base: &str, retry: Value, route_extra: Value) {
    let admin = Admin::at(base);
    admin
        .create_agent(json!({
            "id": "p", "name": "puller", "mode": "pull", "apiKey": PULL_KEY,
        }))
        .await;
    admin
        .create_route(route("r", &["p"], retry, route_extra))
        .await;
}

/// A consumer of agent `p` at `base`.
#[derive(Clone)]
struct Consumer {
    client: reqwest::Client,
    base: String,
    name: String,
}

/// One leased delivery.
#[derive(Debug, Clone)]
struct Item {
    id: String,
    event_id: String,
    event: Value,
    attempt: u64,
    lease_expires_at: i64,
}

impl Consumer {
    fn new(base: &str, name: &str) -> Consumer {
        Consumer {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(40))
                .build()
                .unwrap(),
            base: base.to_string(),
            name: name.to_string(),
        }
    }

    async fn poll_raw(&self, query: &str) -> (u16, Value) {
        let r = self
            .client
            .get(format!(
                "{}/agents/p/deliveries?consumer={}&{query}",
                self.base, self.name
            ))
            .bearer_auth(PULL_KEY)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn poll(&self, max: usize, wait_ms: u64, lease_ms: u64) -> Vec<Item> {
        let (s, v) = self
            .poll_raw(&format!("max={max}&waitMs={wait_ms}&leaseMs={lease_ms}"))
            .await;
        assert_eq!(s, 200, "{v}");
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| Item {
                id: i["id"].as_str().unwrap().to_string(),
                event_id: i["eventId"].as_str().unwrap().to_string(),
                event: i["event"].clone(),
                attempt: i["attempt"].as_u64().unwrap(),
                lease_expires_at: i["leaseExpiresAt"].as_i64().unwrap(),
            })
            .collect()
    }

    async fn settle(&self, kind: &str, body: Value) -> (u16, Value) {
        let r = self
            .client
            .post(format!("{}/agents/p/deliveries/{kind}", self.base))
            .bearer_auth(PULL_KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn ack(&self, ids: &[String]) -> (Vec<String>, Vec<String>) {
        let (s, v) = self.settle("ack", json!({ "ids": ids })).await;
        assert_eq!(s, 200, "{v}");
        (strings(&v["acked"]), strings(&v["expired"]))
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Sends `total` GitHub pushes (payload `k` = key `n % keys`) from 8 concurrent senders; the
/// event ids acknowledged.
async fn send_events(base: &str, total: usize, keys: usize) -> BTreeSet<String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (client, next, acked) = (client.clone(), next.clone(), acked.clone());
            let base = base.to_string();
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    if n >= total {
                        break;
                    }
                    let body = json!({ "ref": "refs/heads/main", "k": format!("key-{}", n % keys), "n": n });
                    let a = Webhook::github("push", body.to_string().into_bytes())
                        .send_to(&client, &base)
                        .await
                        .accepted();
                    acked.lock().unwrap().insert(a.id.to_string());
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert_eq!(acked.len(), total, "every webhook is acknowledged");
    acked
}

/// What consumers acked: event ids, and every delivery id each time it was acked.
#[derive(Default)]
struct Ledger {
    events: Mutex<BTreeSet<String>>,
    acked_deliveries: Mutex<Vec<String>>,
}

/// A consumer loop: polls, acks everything, until `want` events are acked (or `stop`).
async fn consume_until(c: Consumer, ledger: Arc<Ledger>, want: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while ledger.events.lock().unwrap().len() < want {
        assert!(std::time::Instant::now() < deadline, "consumers stalled");
        let items = c.poll(100, 500, 30_000).await;
        if items.is_empty() {
            continue;
        }
        let ids: Vec<String> = items.iter().map(|i| i.id.clone()).collect();
        let (acked, expired) = c.ack(&ids).await;
        assert!(expired.is_empty(), "a fresh lease expired: {expired:?}");
        let mut events = ledger.events.lock().unwrap();
        for i in &items {
            if acked.contains(&i.id) {
                events.insert(i.event_id.clone());
            }
        }
        ledger.acked_deliveries.lock().unwrap().extend(acked);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_consumers_share_the_work_and_a_vanished_ones_leases_go_to_the_others() {
    const TOTAL: usize = 3000;
    let app = TestApp::spawn_with(|c| c.default_rate_limit = 1_000_000).await;
    pull_route(&app.base, policy(5, "fixed", 50, 50), json!({})).await;
    let sent = send_events(&app.base, TOTAL, 100).await;
    // The fourth consumer takes 50 leases of 2 s and vanishes.
    let vanished = Consumer::new(&app.base, "vanished");
    let held = vanished.poll(50, 5_000, 2_000).await;
    assert_eq!(held.len(), 50);
    assert!(held.iter().all(|i| i.attempt == 1));
    let held_ids: HashSet<String> = held.iter().map(|i| i.id.clone()).collect();
    // Its consumers, as the admin API shows them.
    let (_, agent) = Admin::of(&app).get("/admin/agents/p").await;
    let consumers = agent["consumers"].as_array().unwrap();
    let v = consumers.iter().find(|c| c["name"] == "vanished").unwrap();
    assert_eq!(v["leases"], 50, "{agent}");
    assert!(v["lastPollAt"].as_i64().unwrap() > 0);
    let (_, stats) = Admin::of(&app).get("/queue/stats").await;
    assert_eq!(stats["leased"], 50, "{stats}");

    let ledger = Arc::new(Ledger::default());
    let workers: Vec<_> = (0..3)
        .map(|n| {
            tokio::spawn(consume_until(
                Consumer::new(&app.base, &format!("worker-{n}")),
                ledger.clone(),
                TOTAL,
            ))
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(*ledger.events.lock().unwrap(), sent, "every event acked");
    let acked = ledger.acked_deliveries.lock().unwrap().clone();
    let unique: HashSet<&String> = acked.iter().collect();
    assert_eq!(unique.len(), acked.len(), "no delivery acked twice");
    assert_eq!(acked.len(), TOTAL);
    assert!(
        held_ids.iter().all(|id| unique.contains(id)),
        "the vanished consumer's leases were acked by the others"
    );
    // Its late ack finds them expired (and acked by others).
    let late: Vec<String> = held_ids.iter().take(5).cloned().collect();
    let (acked_late, expired) = vanished.ack(&late).await;
    assert!(acked_late.is_empty());
    assert_eq!(expired.len(), 5);
    // The vanished consumer's deliveries show the expired lease as their first attempt.
    let some = held.first().unwrap();
    let d = Admin::of(&app)
        .deliveries(some.event_id.parse().unwrap())
        .await;
    assert_eq!(d[0]["status"], "delivered", "{d:?}");
    assert_eq!(d[0]["attempts"], 2, "{d:?}");
    let log = d[0]["attemptLog"].as_array().unwrap();
    assert_eq!(log[0]["error"], "lease expired", "{log:?}");
    let (_, stats) = Admin::of(&app).get("/queue/stats").await;
    assert_eq!(stats["leased"], 0, "{stats}");
    assert_eq!(stats["pending"], 0, "{stats}");
    let (_, analytics) = Admin::of(&app).get("/analytics/metrics").await;
    assert_eq!(
        analytics["metrics"]["deliveries"]["acked"], TOTAL as u64,
        "{analytics}"
    );
    assert_eq!(
        analytics["metrics"]["deliveries"]["leased"],
        (TOTAL + 50) as u64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_follows_the_retry_policy_and_dead_letters() {
    let app = TestApp::spawn().await;
    pull_route(&app.base, policy(3, "fixed", 300, 300), json!({})).await;
    let id = post_routed(&app, "push", 1).await;
    let c = Consumer::new(&app.base, "c");
    let mut attempts = Vec::new();
    let mut delivery = String::new();
    for n in 1..=3 {
        let items = c.poll(10, 5_000, 30_000).await;
        assert_eq!(items.len(), 1, "attempt {n}");
        let item = &items[0];
        assert_eq!(item.event_id, id.to_string());
        // The event as a push agent would get it.
        assert_eq!(item.event["id"], id.to_string());
        assert_eq!(item.event["source"], "github");
        assert_eq!(item.event["payload"]["number"], 1);
        attempts.push(item.attempt);
        delivery = item.id.clone();
        let started = std::time::Instant::now();
        let (s, v) = c
            .settle(
                "nack",
                json!({ "ids": [item.id], "error": format!("boom {n}") }),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(strings(&v["nacked"]), vec![item.id.clone()]);
        if n < 3 {
            // Not leased again before the policy's 300 ms.
            let again = c.poll(10, 0, 30_000).await;
            assert!(
                again.is_empty() || started.elapsed() >= Duration::from_millis(300),
                "leased again before its backoff"
            );
        }
    }
    assert_eq!(attempts, vec![1, 2, 3]);
    let dead = Admin::of(&app).wait_status(id, "dead").await;
    assert_eq!(dead["lastError"], "boom 3", "{dead}");
    let (dlq, _) = Admin::of(&app).dlq("agentId=p").await;
    assert_eq!(dlq.len(), 1);
    assert!(
        c.poll(10, 300, 30_000).await.is_empty(),
        "a dead letter is not leased"
    );
    // A retry from the DLQ is leased again; a nack with delayMs 0 is leased again at once.
    let (s, _) = Admin::of(&app)
        .post(&format!("/admin/dlq/{delivery}/retry"), json!({}))
        .await;
    assert_eq!(s, 200);
    let items = c.poll(10, 5_000, 30_000).await;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].attempt, 4);
    let (s, _) = c
        .settle(
            "nack",
            json!({ "ids": [items[0].id], "error": "again", "delayMs": 0 }),
        )
        .await;
    assert_eq!(s, 200);
    let items = c.poll(10, 2_000, 30_000).await;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].attempt, 5);
    let (acked, _) = c.ack(&[items[0].id.clone()]).await;
    assert_eq!(acked.len(), 1);
    Admin::of(&app).wait_status(id, "delivered").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extend_keeps_a_lease_past_its_first_expiry() {
    let app = TestApp::spawn().await;
    pull_route(&app.base, policy(3, "fixed", 10, 10), json!({})).await;
    let id = post_routed(&app, "push", 1).await;
    let c = Consumer::new(&app.base, "slow");
    let other = Consumer::new(&app.base, "other");
    let items = c.poll(1, 5_000, 1_000).await;
    assert_eq!(items.len(), 1);
    let first_expiry = items[0].lease_expires_at;
    let (s, v) = c
        .settle("extend", json!({ "ids": [items[0].id], "leaseMs": 4_000 }))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(strings(&v["extended"]), vec![items[0].id.clone()]);
    assert!(v["leaseExpiresAt"].as_i64().unwrap() > first_expiry + 2_000);
    // Past the first expiry, nobody else gets it.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(now_ms() > first_expiry);
    assert!(other.poll(10, 200, 30_000).await.is_empty());
    let (acked, expired) = c.ack(&[items[0].id.clone()]).await;
    assert_eq!(acked, vec![items[0].id.clone()]);
    assert!(expired.is_empty());
    let d = Admin::of(&app).wait_status(id, "delivered").await;
    assert_eq!(d["attempts"], 1, "{d}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordering_keys_hold_with_several_consumers() {
    const KEYS: usize = 20;
    const PER_KEY: usize = 15;
    let app = TestApp::spawn_with(|c| c.default_rate_limit = 1_000_000).await;
    pull_route(
        &app.base,
        policy(10, "fixed", 20, 20),
        json!({ "ordering": { "key": "payload.k" } }),
    )
    .await;
    let sent = send_events(&app.base, KEYS * PER_KEY, KEYS).await;
    // Per key: the leases outstanding, the events in the order they were leased.
    let outstanding: Arc<Mutex<HashMap<String, usize>>> = Default::default();
    let order: Arc<Mutex<HashMap<String, Vec<String>>>> = Default::default();
    let overlaps = Arc::new(AtomicUsize::new(0));
    let done: Arc<Mutex<BTreeSet<String>>> = Default::default();
    let workers: Vec<_> = (0..4)
        .map(|n| {
            let c = Consumer::new(&app.base, &format!("c{n}"));
            let (outstanding, order, overlaps, done) = (
                outstanding.clone(),
                order.clone(),
                overlaps.clone(),
                done.clone(),
            );
            tokio::spawn(async move {
                let deadline = std::time::Instant::now() + Duration::from_secs(120);
                while done.lock().unwrap().len() < KEYS * PER_KEY {
                    assert!(std::time::Instant::now() < deadline, "stalled");
                    let items = c.poll(10, 300, 30_000).await;
                    for i in &items {
                        let key = i.event["payload"]["k"].as_str().unwrap().to_string();
                        let mut o = outstanding.lock().unwrap();
                        let n = o.entry(key.clone()).or_default();
                        *n += 1;
                        if *n > 1 {
                            overlaps.fetch_add(1, Ordering::SeqCst);
                        }
                        order
                            .lock()
                            .unwrap()
                            .entry(key)
                            .or_default()
                            .push(i.event_id.clone());
                    }
                    // Some work takes a moment; one in ten fails once.
                    tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % 5)).await;
                    for i in items {
                        let key = i.event["payload"]["k"].as_str().unwrap().to_string();
                        if let Some(n) = outstanding.lock().unwrap().get_mut(&key) {
                            *n -= 1;
                        }
                        if rand::random::<u8>().is_multiple_of(10) {
                            let (s, _) = c
                                .settle("nack", json!({ "ids": [i.id], "error": "flaky" }))
                                .await;
                            assert_eq!(s, 200);
                        } else {
                            let (acked, _) = c.ack(std::slice::from_ref(&i.id)).await;
                            if !acked.is_empty() {
                                done.lock().unwrap().insert(i.event_id);
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(*done.lock().unwrap(), sent);
    assert_eq!(
        overlaps.load(Ordering::SeqCst),
        0,
        "two leases of one key at once"
    );
    for (key, events) in order.lock().unwrap().iter() {
        for w in events.windows(2) {
            assert!(w[0] <= w[1], "key {key} leased out of order: {events:?}");
        }
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A consume socket of agent `p` with these extra query parameters.
async fn consume_socket(app: &TestApp, query: &str) -> Socket {
    let url = format!(
        "{}/stream/ws?agentId=p&mode=consume&{query}&apiKey={PULL_KEY}",
        app.base.replace("http://", "ws://")
    );
    tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap()
        .0
}

/// The next text frame of a socket, as JSON (within 10 s).
async fn next_frame(socket: &mut Socket) -> Value {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a frame")
            .unwrap()
            .unwrap();
        if let Message::Text(t) = m {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_consume_mode_keeps_prefetch_and_returns_leases_on_close() {
    let app = TestApp::spawn().await;
    pull_route(&app.base, policy(3, "fixed", 10, 10), json!({})).await;
    for n in 0..12 {
        post_routed(&app, "push", n).await;
    }
    let mut socket = consume_socket(&app, "prefetch=5&leaseMs=30000&consumer=sock").await;
    let mut held = Vec::new();
    for _ in 0..5 {
        let f = next_frame(&mut socket).await;
        assert_eq!(f["type"], "delivery", "{f}");
        assert_eq!(f["event"]["source"], "github");
        assert_eq!(f["attempt"], 1);
        held.push(f["id"].as_str().unwrap().to_string());
    }
    // No sixth while five are unacknowledged.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), socket.next())
            .await
            .is_err(),
        "more than prefetch frames"
    );
    socket
        .send(Message::Text(
            json!({ "type": "ack", "ids": [held[0], held[1]] })
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
    let mut acked = None;
    let mut more = Vec::new();
    while acked.is_none() || more.len() < 2 {
        let f = next_frame(&mut socket).await;
        match f["type"].as_str() {
            Some("acked") => acked = Some(f),
            Some("delivery") => more.push(f["id"].as_str().unwrap().to_string()),
            _ => panic!("unexpected {f}"),
        }
    }
    assert_eq!(strings(&acked.unwrap()["ids"]).len(), 2);
    // A bad message gets an error frame, and the socket stays.
    socket
        .send(Message::Text("{\"type\":\"hello\"}".into()))
        .await
        .unwrap();
    let f = next_frame(&mut socket).await;
    assert_eq!(f["type"], "error", "{f}");
    // Closing returns the five leases held at once: an HTTP poll gets them, still attempt 1's
    // budget (the returned lease is not counted against it).
    let still: BTreeSet<String> = held[2..].iter().chain(&more).cloned().collect();
    socket.close(None).await.unwrap();
    drop(socket);
    let c = Consumer::new(&app.base, "http");
    let mut got = BTreeSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !still.is_subset(&got) {
        assert!(
            std::time::Instant::now() < deadline,
            "returned leases leased again: got {got:?}, want {still:?}"
        );
        for i in c.poll(50, 500, 30_000).await {
            got.insert(i.id);
        }
    }
    // Refusals before the upgrade.
    let r = app
        .client
        .get(format!(
            "{}/stream/ws?agentId=p&mode=consume&prefetch=0&apiKey={PULL_KEY}",
            app.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_survive_a_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ChildServer::start(dir.path(), &[]).await;
    pull_route(&server.base, policy(5, "fixed", 10, 10), json!({})).await;
    let sent = send_events(&server.base, 20, 20).await;
    let c = Consumer::new(&server.base, "c");
    let leased = c.poll(10, 5_000, 4_000).await;
    assert_eq!(leased.len(), 10);
    let ids: Vec<String> = leased.iter().map(|i| i.id.clone()).collect();
    // One acked before the kill stays acked.
    let (acked, _) = c.ack(&ids[..1]).await;
    assert_eq!(acked.len(), 1);
    server.child.start_kill().unwrap();
    let _ = server.child.wait().await;
    let server = ChildServer::start(dir.path(), &[]).await;
    let c = Consumer::new(&server.base, "c");
    // The other ten are leased at once; the nine leased before the kill are not, until their
    // lease runs out.
    let fresh = c.poll(50, 1_000, 30_000).await;
    let fresh_ids: BTreeSet<String> = fresh.iter().map(|i| i.id.clone()).collect();
    assert_eq!(fresh.len(), 10, "{fresh:?}");
    assert!(ids.iter().all(|id| !fresh_ids.contains(id)));
    // The lease restored at start still takes its consumer's ack.
    let (acked, expired) = c.ack(&ids[1..2]).await;
    assert_eq!(acked.len(), 1, "expired: {expired:?}");
    let (acked, _) = c.ack(&fresh_ids.iter().cloned().collect::<Vec<_>>()).await;
    assert_eq!(acked.len(), 10);
    // The remaining eight come back after their lease.
    let mut again = BTreeSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while again.len() < 8 {
        assert!(
            std::time::Instant::now() < deadline,
            "expired leases leased again: {again:?}"
        );
        for i in c.poll(50, 1_000, 30_000).await {
            assert_eq!(i.attempt, 2, "a lease that ran out was an attempt");
            let (a, _) = c.ack(std::slice::from_ref(&i.id)).await;
            assert_eq!(a.len(), 1);
            again.insert(i.id);
        }
    }
    let expected: BTreeSet<String> = ids[2..].iter().cloned().collect();
    assert_eq!(again, expected);
    let (_, stats) = Admin::at(&server.base).get("/queue/stats").await;
    assert_eq!(stats["pending"], 0, "{stats}");
    assert_eq!(stats["leased"], 0, "{stats}");
    let admin = Admin::at(&server.base);
    for id in &sent {
        let d = admin.deliveries(id.parse::<Uuid>().unwrap()).await;
        assert_eq!(d[0]["status"], "delivered", "{d:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_postgresql_share_one_agents_deliveries() {
    let Some((url, _db)) = crate::support::pg_testing::fresh_database_or_skip().await else {
        return;
    };
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("NODE_LEASE_MS", "3000"),
        (
            "ENCRYPTION_KEY",
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
        ),
    ];
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let a = ChildServer::start(dirs[0].path(), &env).await;
    let b = ChildServer::start(dirs[1].path(), &env).await;
    pull_route(&a.base, policy(5, "fixed", 10, 10), json!({})).await;
    poll(
        Duration::from_secs(10),
        "node b knows the agent",
        || async {
            let (s, v) = Admin::at(&b.base).get("/admin/agents/p").await;
            if s == 200 { Ok(()) } else { Err(v) }
        },
    )
    .await;
    // A consumer of node b waits first; events come in through node a only.
    let cb = Consumer::new(&b.base, "on-b");
    let waiting = tokio::spawn({
        let cb = cb.clone();
        async move { cb.poll(100, 10_000, 30_000).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = send_events(&a.base, 400, 400).await;
    let first = waiting.await.unwrap();
    assert!(
        !first.is_empty(),
        "a poll on node b woke for deliveries committed on node a"
    );
    let ledger = Arc::new(Ledger::default());
    {
        // Acked through the other node (a consumer behind a load balancer): it counts, and the
        // node that granted the leases lets them go.
        let ids: Vec<String> = first.iter().map(|i| i.id.clone()).collect();
        let (acked, expired) = Consumer::new(&a.base, "on-b").ack(&ids).await;
        assert!(expired.is_empty(), "{expired:?}");
        assert_eq!(acked.len(), ids.len());
        ledger.acked_deliveries.lock().unwrap().extend(acked);
        ledger
            .events
            .lock()
            .unwrap()
            .extend(first.iter().map(|i| i.event_id.clone()));
    }
    let workers: Vec<_> = [
        Consumer::new(&a.base, "on-a"),
        cb.clone(),
        Consumer::new(&b.base, "on-b-2"),
    ]
    .into_iter()
    .map(|c| tokio::spawn(consume_until(c, ledger.clone(), sent.len())))
    .collect();
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(*ledger.events.lock().unwrap(), sent);
    let acked = ledger.acked_deliveries.lock().unwrap().clone();
    let unique: HashSet<&String> = acked.iter().collect();
    assert_eq!(
        unique.len(),
        acked.len(),
        "no delivery leased to two consumers"
    );
    assert_eq!(acked.len(), sent.len());
}

#[tokio::test]
async fn refusals_follow_the_contract() {
    let app = TestApp::spawn().await;
    pull_route(&app.base, policy(3, "fixed", 10, 10), json!({})).await;
    Admin::of(&app)
        .create_agent(agent("pusher", "http://127.0.0.1:9/x", json!({})))
        .await;
    let get = |path: &str, key: Option<&str>| {
        let mut r = app.client.get(format!("{}{path}", app.base));
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        async move {
            let r = r.send().await.unwrap();
            let s = r.status().as_u16();
            (s, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    assert_eq!(get("/agents/p/deliveries", None).await.0, 401);
    assert_eq!(get("/agents/p/deliveries", Some("wrong")).await.0, 401);
    // The agent's own key, the shared agent key and the admin key all poll.
    for key in [PULL_KEY, AGENT_KEY, ADMIN_KEY] {
        let (s, v) = get("/agents/p/deliveries", Some(key)).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["items"], json!([]));
        assert_eq!(v["nextPollMs"], 1000);
    }
    assert_eq!(get("/agents/nope/deliveries", Some(AGENT_KEY)).await.0, 404);
    let (s, v) = get("/agents/pusher/deliveries", Some(ADMIN_KEY)).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (409, Some("not_pull_agent")),
        "{v}"
    );
    for q in [
        "max=0",
        "max=501",
        "waitMs=30001",
        "leaseMs=10",
        "leaseMs=900001",
        "max=x",
        "consumer=",
        "other=1",
    ] {
        let (s, v) = get(&format!("/agents/p/deliveries?{q}"), Some(PULL_KEY)).await;
        assert_eq!(s, 400, "{q}: {v}");
        assert!(v["error"].is_string());
    }
    let c = Consumer::new(&app.base, "c");
    for (kind, body, field) in [
        ("ack", json!({ "ids": ["nope"] }), "ids[0]"),
        ("ack", json!({}), "ids"),
        ("ack", json!({ "ids": [], "extra": 1 }), ""),
        ("extend", json!({ "ids": [] }), "leaseMs"),
        ("extend", json!({ "ids": [], "leaseMs": 5 }), "leaseMs"),
        ("nack", json!({ "ids": [], "leaseMs": 5000 }), "leaseMs"),
    ] {
        let (s, v) = c.settle(kind, body.clone()).await;
        assert_eq!(s, 400, "{kind} {body}: {v}");
        assert_eq!(v["code"], "validation_error", "{v}");
        if !field.is_empty() {
            assert_eq!(v["field"], field, "{v}");
        }
    }
    // Unknown ids are expired, not errors.
    let id = Uuid::now_v7().to_string();
    let (acked, expired) = c.ack(std::slice::from_ref(&id)).await;
    assert!(acked.is_empty());
    assert_eq!(expired, vec![id]);
    // A pull agent has no url; a push agent needs one.
    let (s, v) = Admin::of(&app)
        .call(
            reqwest::Method::PUT,
            "/admin/agents/bad",
            Some(
                json!({ "id": "bad", "name": "bad", "mode": "pull", "url": "http://127.0.0.1:9/" }),
            ),
        )
        .await;
    assert_eq!((s, v["field"].as_str()), (400, Some("mode")), "{v}");
    let (s, v) = Admin::of(&app)
        .call(
            reqwest::Method::PUT,
            "/admin/agents/bad",
            Some(json!({ "id": "bad", "name": "bad", "mode": "push" })),
        )
        .await;
    assert_eq!((s, v["field"].as_str()), (400, Some("url")), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_never_polls_fills_only_its_own_backlog() {
    let app = TestApp::spawn_with(|c| c.max_queue_size = 6).await;
    let rx = crate::receiver::TestReceiver::start().await;
    let admin = Admin::of(&app);
    pull_route(&app.base, policy(3, "fixed", 10, 10), only_type("push")).await;
    admin
        .create_agent(agent("h", &rx.url("/h"), json!({})))
        .await;
    admin
        .create_route(route(
            "to-h",
            &["h"],
            policy(3, "fixed", 10, 10),
            only_type("issues"),
        ))
        .await;
    // The pull agent's backlog grows while the push agent keeps getting its events.
    for n in 0..5 {
        post_routed(&app, "push", n).await;
        let id = post_routed(&app, "issues", n).await;
        admin.wait_status(id, "delivered").await;
    }
    let (_, stats) = admin.get("/queue/stats").await;
    assert_eq!(stats["byAgent"]["p"]["pending"], 5, "{stats}");
    // The queue's bound holds for it as for a push agent that is down.
    post_routed(&app, "push", 5).await;
    Webhook::github("push", gh_body(6))
        .send(&app)
        .await
        .refused(503, "queue_full");
    // A consumer drains it, and the queue takes webhooks again.
    let c = Consumer::new(&app.base, "late");
    let items = c.poll(100, 1_000, 30_000).await;
    assert_eq!(items.len(), 6);
    let ids: Vec<String> = items.iter().map(|i| i.id.clone()).collect();
    assert_eq!(c.ack(&ids).await.0.len(), 6);
    post_routed(&app, "push", 7).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consume_socket_gets_more_once_its_unsettled_leases_run_out() {
    let app = TestApp::spawn().await;
    pull_route(&app.base, policy(5, "fixed", 10, 10), json!({})).await;
    for n in 0..2 {
        post_routed(&app, "push", n).await;
    }
    let mut socket = consume_socket(&app, "prefetch=2&leaseMs=1000").await;
    let mut attempts = Vec::new();
    while attempts.len() < 4 {
        let f = next_frame(&mut socket).await;
        assert_eq!(f["type"], "delivery", "{f}");
        attempts.push(f["attempt"].as_u64().unwrap());
    }
    // The two leases ran out unsettled and came back to the same socket as second attempts.
    assert_eq!(attempts, vec![1, 1, 2, 2]);
}
