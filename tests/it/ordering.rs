//! Ordered and coalesced delivery per key (docs/delivery.md, "Ordered and coalesced delivery"):
//! a route's `ordering` key makes an agent see each key's events one at a time in event-id
//! order, through random delays and failures, a SIGKILL, and two nodes on PostgreSQL; its
//! `coalesce` key makes a burst one delivery of the newest event; `onDead: "hold"` holds a key
//! behind its dead letter until it is retried or deleted.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::delivery::*;
use crate::signed::*;
use crate::support::*;

/// One request the agent got.
#[derive(Debug, Clone)]
struct Arrival {
    key: String,
    event: String,
    ok: bool,
    superseded: Option<String>,
    superseded_ids: Option<String>,
}

#[derive(Default)]
struct AgentLog {
    arrivals: Mutex<Vec<Arrival>>,
    /// Requests under way per key, and the most ever seen at once for any key.
    busy: Mutex<HashMap<String, usize>>,
    overlaps: AtomicUsize,
}

/// An agent that answers after a random 0–4 ms, failing `fail_percent` of requests with 500,
/// recording per key (`payload.k`) what arrived and whether two requests of one key overlapped.
#[derive(Clone)]
struct KeyedAgent {
    url: String,
    log: Arc<AgentLog>,
}

struct Busy {
    log: Arc<AgentLog>,
    key: String,
}

impl Drop for Busy {
    fn drop(&mut self) {
        if let Some(n) = self.log.busy.lock().unwrap().get_mut(&self.key) {
            *n -= 1;
        }
    }
}

impl KeyedAgent {
    async fn start(fail_percent: u32) -> KeyedAgent {
        let log = Arc::new(AgentLog::default());
        let state = (log.clone(), fail_percent);
        let app = Router::new()
            .fallback(
                |State((log, fail)): State<(Arc<AgentLog>, u32)>,
                 headers: HeaderMap,
                 body: Bytes| async move {
                    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let key = match &v["payload"]["k"] {
                        Value::String(s) => s.clone(),
                        Value::Null => String::new(),
                        other => other.to_string(),
                    };
                    let header = |n: &str| {
                        headers
                            .get(n)
                            .and_then(|h| h.to_str().ok())
                            .map(str::to_string)
                    };
                    {
                        let mut busy = log.busy.lock().unwrap();
                        let n = busy.entry(key.clone()).or_default();
                        *n += 1;
                        if *n > 1 {
                            log.overlaps.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    let _busy = Busy {
                        log: log.clone(),
                        key: key.clone(),
                    };
                    let (delay, fails) = {
                        let r: u64 = rand::random();
                        (r % 5, ((r >> 8) % 100) < u64::from(fail))
                    };
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    log.arrivals.lock().unwrap().push(Arrival {
                        key,
                        event: header("webhook-id").unwrap_or_default(),
                        ok: !fails,
                        superseded: header("x-event-superseded"),
                        superseded_ids: header("x-event-superseded-ids"),
                    });
                    if fails {
                        StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        StatusCode::OK
                    }
                },
            )
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        KeyedAgent {
            url: format!("http://{addr}/agent"),
            log,
        }
    }

    fn arrivals(&self) -> Vec<Arrival> {
        self.log.arrivals.lock().unwrap().clone()
    }

    /// The events delivered (answered 200), each once.
    fn delivered(&self) -> BTreeSet<String> {
        self.arrivals()
            .into_iter()
            .filter(|a| a.ok)
            .map(|a| a.event)
            .collect()
    }

    async fn wait_delivered(&self, events: &BTreeSet<String>, timeout: Duration) {
        poll(timeout, "every event delivered", || async {
            let got = self.delivered();
            let missing = events.difference(&got).count();
            if missing == 0 {
                Ok(())
            } else {
                Err(json!({ "missing": missing }))
            }
        })
        .await
    }

    /// Per key, the events in the order they arrived must never go back (an event id smaller
    /// than one already seen for the key), and no two requests of a key overlapped. A repeat
    /// of the same event (a retry, or the attempt in flight at a kill done again) is allowed.
    fn assert_ordered(&self) {
        assert_eq!(
            self.log.overlaps.load(Ordering::SeqCst),
            0,
            "two requests of one key were in flight at once"
        );
        let mut last: HashMap<String, String> = HashMap::new();
        for (i, a) in self.arrivals().iter().enumerate() {
            if let Some(prev) = last.get(&a.key) {
                assert!(
                    a.event >= *prev,
                    "arrival {i}: key {:?} got event {} after {prev}; the key's arrivals: {:#?}",
                    a.key,
                    a.event,
                    self.arrivals()
                        .iter()
                        .filter(|b| b.key == a.key)
                        .map(|b| (b.event.clone(), b.ok))
                        .collect::<Vec<_>>()
                );
            }
            last.insert(a.key.clone(), a.event.clone());
        }
    }
}

/// A GitHub push whose payload's `k` is the ordering key.
fn keyed(key: &str, n: usize) -> Webhook {
    Webhook::github(
        "push",
        json!({ "ref": "refs/heads/main", "k": key, "n": n })
            .to_string()
            .into_bytes(),
    )
}

/// The agent and a route to it ordered by `payload.k` (with `extra` merged into the route).
async fn ordered_route(base: &str, url: &str, retry: Value, extra: Value) {
    let admin = Admin::at(base);
    admin
        .create_agent(agent(
            "a",
            url,
            json!({ "maxConcurrency": 16, "timeoutMs": 5000 }),
        ))
        .await;
    let mut r = route("r", &["a"], retry, json!({}));
    if let (Value::Object(r), Value::Object(extra)) = (&mut r, extra) {
        r.extend(extra);
    }
    admin.create_route(r).await;
}

/// Sends `total` events over `keys` keys from 16 concurrent senders, round-robin over `bases`;
/// the ids acknowledged.
async fn send_keyed(bases: &[String], total: usize, keys: usize) -> BTreeSet<String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let workers: Vec<_> = (0..16)
        .map(|w| {
            let (client, next, acked) = (client.clone(), next.clone(), acked.clone());
            let bases = bases.to_vec();
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    if n >= total {
                        break;
                    }
                    let base = &bases[(n + w) % bases.len()];
                    let key = format!("key-{}", n % keys);
                    if let Ok(a) = keyed(&key, n).try_send_to(&client, base).await
                        && a.status == 200
                    {
                        acked.lock().unwrap().insert(a.accepted().id.to_string());
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    acked.lock().unwrap().clone()
}

/// Sends `per_key` events on each of `keys` keys, one sender per key, each key's next event only
/// once its previous one was answered and a millisecond later, alternating over `bases`; the ids
/// acknowledged. (Webhooks of one key that two nodes receive at the same instant have no order
/// between them: docs/delivery.md.)
async fn send_keyed_in_turn(bases: &[String], per_key: usize, keys: usize) -> BTreeSet<String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let senders: Vec<_> = (0..keys)
        .map(|k| {
            let (client, acked) = (client.clone(), acked.clone());
            let bases = bases.to_vec();
            tokio::spawn(async move {
                for n in 0..per_key {
                    let base = &bases[(n + k) % bases.len()];
                    let a = keyed(&format!("key-{k}"), n)
                        .send_to(&client, base)
                        .await
                        .accepted();
                    acked.lock().unwrap().insert(a.id.to_string());
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        })
        .collect();
    for s in senders {
        s.await.unwrap();
    }
    acked.lock().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_key_arrives_in_event_id_order_through_delays_and_failures() {
    let agent = KeyedAgent::start(20).await;
    let app = TestApp::spawn_with(|c| c.default_rate_limit = 1_000_000).await;
    ordered_route(
        &app.base,
        &agent.url,
        policy(12, "fixed", 10, 10),
        json!({ "ordering": { "key": "payload.k" } }),
    )
    .await;
    let acked = send_keyed(std::slice::from_ref(&app.base), 2000, 40).await;
    assert_eq!(acked.len(), 2000, "every webhook is acknowledged");
    agent.wait_delivered(&acked, Duration::from_secs(120)).await;
    agent.assert_ordered();
    // Exactly once each on one node without a crash, and failures were retried in place.
    let arrivals = agent.arrivals();
    assert_eq!(arrivals.iter().filter(|a| a.ok).count(), 2000);
    assert!(
        arrivals.iter().any(|a| !a.ok),
        "the agent failed some attempts"
    );
    // Admin delivery objects show the key.
    let id: Uuid = acked.iter().next().unwrap().parse().unwrap();
    let d = Admin::of(&app).deliveries(id).await;
    assert!(
        d[0]["orderingKey"]
            .as_str()
            .is_some_and(|k| k.starts_with("key-")),
        "{d:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_keep_their_order_across_a_sigkill() {
    const TOTAL: usize = 1200;
    let agent = KeyedAgent::start(20).await;
    let dir = tempfile::tempdir().unwrap();
    let mut server = ChildServer::start(dir.path(), &[]).await;
    ordered_route(
        &server.base,
        &agent.url,
        policy(12, "fixed", 10, 10),
        json!({ "ordering": { "key": "payload.k" } }),
    )
    .await;
    let acked = send_keyed(std::slice::from_ref(&server.base), TOTAL, 40).await;
    assert_eq!(acked.len(), TOTAL);
    // Kill while deliveries are under way.
    poll(Duration::from_secs(60), "a third delivered", || async {
        let n = agent.delivered().len();
        if n >= TOTAL / 3 {
            Ok(())
        } else {
            Err(json!(n))
        }
    })
    .await;
    server.child.start_kill().unwrap();
    let _ = server.child.wait().await;
    let delivered_at_kill = agent.delivered().len();
    assert!(
        delivered_at_kill < TOTAL,
        "the kill came after everything was delivered"
    );
    let _server = ChildServer::start(dir.path(), &[]).await;
    agent.wait_delivered(&acked, Duration::from_secs(120)).await;
    agent.assert_ordered();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_postgresql_never_overlap_a_key_and_keep_its_order() {
    let Some((url, _db)) = crate::support::pg_testing::fresh_database_or_skip().await else {
        return;
    };
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("NODE_LEASE_MS", "3000"),
        // The same key on both nodes: each seals agent secrets with it.
        (
            "ENCRYPTION_KEY",
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
        ),
    ];
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let a = ChildServer::start(dirs[0].path(), &env).await;
    let b = ChildServer::start(dirs[1].path(), &env).await;
    let agent = KeyedAgent::start(20).await;
    ordered_route(
        &a.base,
        &agent.url,
        policy(12, "fixed", 10, 10),
        json!({ "ordering": { "key": "payload.k" } }),
    )
    .await;
    // The route reaches node b by notice: wait until b routes too.
    poll(
        Duration::from_secs(10),
        "node b knows the route",
        || async {
            let (s, v) = Admin::at(&b.base).get("/admin/routes/r").await;
            if s == 200 { Ok(()) } else { Err(v) }
        },
    )
    .await;
    let acked = send_keyed_in_turn(&[a.base.clone(), b.base.clone()], 25, 40).await;
    assert_eq!(acked.len(), 1000);
    agent.wait_delivered(&acked, Duration::from_secs(180)).await;
    agent.assert_ordered();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_per_key_is_one_delivery_of_its_newest_event() {
    let agent = KeyedAgent::start(0).await;
    let app = TestApp::spawn().await;
    ordered_route(
        &app.base,
        &agent.url,
        policy(3, "fixed", 10, 10),
        json!({ "coalesce": { "key": "payload.k", "windowMs": 1500, "maxWaitMs": 10000 } }),
    )
    .await;
    // Ten events on each of five keys, each key's in order.
    let mut sent: BTreeMap<String, Vec<Uuid>> = BTreeMap::new();
    for n in 0..10 {
        for k in 0..5 {
            let key = format!("pr-{k}");
            let id = post_keyed(&app, &key, n).await;
            sent.entry(key).or_default().push(id);
        }
    }
    let all: BTreeSet<String> = sent
        .values()
        .map(|ids| ids.last().unwrap().to_string())
        .collect();
    agent.wait_delivered(&all, Duration::from_secs(30)).await;
    // Nothing else comes after the window.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let arrivals = agent.arrivals();
    assert_eq!(arrivals.len(), 5, "{arrivals:?}");
    for a in &arrivals {
        let ids = &sent[&a.key];
        assert_eq!(a.event, ids[9].to_string(), "the newest event of {}", a.key);
        assert_eq!(a.superseded.as_deref(), Some("9"));
        let listed: Vec<String> = ids[..9].iter().map(Uuid::to_string).collect();
        assert_eq!(a.superseded_ids.as_deref(), Some(listed.join(",").as_str()));
    }
    // The superseded deliveries end `superseded`, naming their successor.
    let admin = Admin::of(&app);
    let first = sent["pr-0"][0];
    let d = admin.wait_status(first, "superseded").await;
    assert!(d["supersededBy"].is_string(), "{d}");
    let newest = admin.wait_status(sent["pr-0"][9], "delivered").await;
    assert_eq!(newest["supersededCount"], 9, "{newest}");
    let stats = admin.stats().await;
    assert_eq!(stats["superseded"], 45, "{stats}");
    assert_eq!(stats["deadLettered"], 0, "{stats}");
    // Never in the dead-letter queue.
    let (dead, _) = admin.dlq("").await;
    assert!(dead.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_wait_bounds_the_delay_under_a_never_ending_burst() {
    let agent = KeyedAgent::start(0).await;
    let app = TestApp::spawn().await;
    ordered_route(
        &app.base,
        &agent.url,
        policy(3, "fixed", 10, 10),
        json!({ "coalesce": { "key": "payload.k", "windowMs": 400, "maxWaitMs": 1000 } }),
    )
    .await;
    // An event every 100 ms for 4 s: each one arrives inside the window of the one before, so
    // only maxWaitMs lets anything through before the burst ends.
    let started = tokio::time::Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_secs(4) {
        keyed("hot", n)
            .send_to(&app.client, &app.base)
            .await
            .accepted();
        n += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let during = agent.arrivals().len();
    assert!(
        during >= 2,
        "maxWaitMs let {during} deliveries through during a 4 s burst"
    );
    let total_superseded: u32 = {
        poll(
            Duration::from_secs(10),
            "the burst's tail delivered",
            || async {
                let got = agent.arrivals();
                let s: u32 = got
                    .iter()
                    .map(|a| {
                        a.superseded
                            .as_deref()
                            .unwrap_or("0")
                            .parse::<u32>()
                            .unwrap()
                    })
                    .sum();
                if s as usize + got.len() == n {
                    Ok(s)
                } else {
                    Err(json!({"arrivals": got.len(), "superseded": s, "sent": n}))
                }
            },
        )
        .await
    };
    assert!(total_superseded > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_blocks_a_key_behind_its_dead_letter_until_retried_or_deleted() {
    let agent = KeyedAgent::start(0).await;
    let app = TestApp::spawn().await;
    // The agent refuses everything at first: event 1 dies after its only attempt.
    let failing = KeyedAgent::start(100).await;
    let admin = Admin::of(&app);
    admin.create_agent(agent_json("a", &failing.url)).await;
    admin
        .create_route(route(
            "r",
            &["a"],
            policy(1, "fixed", 10, 10),
            json!({ "ordering": { "key": "payload.k", "onDead": "hold" } }),
        ))
        .await;
    let first = post_keyed(&app, "k1", 1).await;
    admin.wait_status(first, "dead").await;
    // The agent recovers; later events of k1 wait behind the dead letter, k2 is free.
    point_agent_at(&admin, &agent.url).await;
    let second = post_keyed(&app, "k1", 2).await;
    let third = post_keyed(&app, "k1", 3).await;
    let other = post_keyed(&app, "k2", 4).await;
    admin.wait_status(other, "delivered").await;
    // Held across a restart too.
    let dir = app.stop().await;
    let app = TestApp::spawn_in(dir, |_| {}).await;
    let admin = Admin::of(&app);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        agent.arrivals().iter().filter(|a| a.key == "k1").count(),
        0,
        "k1 is held behind its dead letter"
    );
    for id in [second, third] {
        let d = admin.deliveries(id).await;
        assert_eq!(d[0]["status"], "pending", "{d:?}");
    }
    // Retrying the dead letter releases the key: 1, 2, 3 in order.
    let dead = admin.deliveries(first).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, v) = admin
        .post(&format!("/admin/dlq/{dead}/retry"), json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    let want: BTreeSet<String> = [first, second, third].iter().map(Uuid::to_string).collect();
    agent.wait_delivered(&want, Duration::from_secs(15)).await;
    let k1: Vec<String> = agent
        .arrivals()
        .into_iter()
        .filter(|a| a.key == "k1")
        .map(|a| a.event)
        .collect();
    assert_eq!(k1, [first, second, third].map(|u| u.to_string()));

    // Deleting a dead letter releases its key as well.
    point_agent_at(&admin, &failing.url).await;
    let fourth = post_keyed(&app, "k3", 5).await;
    admin.wait_status(fourth, "dead").await;
    point_agent_at(&admin, &agent.url).await;
    let fifth = post_keyed(&app, "k3", 6).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(admin.deliveries(fifth).await[0]["status"], "pending");
    let dead = admin.deliveries(fourth).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, _) = admin.delete(&format!("/admin/dlq/{dead}")).await;
    assert_eq!(s, 204);
    admin.wait_status(fifth, "delivered").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_moves_a_key_on_after_a_dead_letter() {
    let agent = KeyedAgent::start(0).await;
    let failing = KeyedAgent::start(100).await;
    let app = TestApp::spawn().await;
    let admin = Admin::of(&app);
    admin.create_agent(agent_json("a", &failing.url)).await;
    admin
        .create_route(route(
            "r",
            &["a"],
            policy(1, "fixed", 10, 10),
            json!({ "ordering": { "key": "payload.k", "onDead": "skip" } }),
        ))
        .await;
    let first = post_keyed(&app, "k", 1).await;
    admin.wait_status(first, "dead").await;
    point_agent_at(&admin, &agent.url).await;
    let second = post_keyed(&app, "k", 2).await;
    admin.wait_status(second, "delivered").await;
}

#[tokio::test]
async fn bad_ordering_and_coalescing_settings_are_refused_with_their_fields() {
    let app = TestApp::spawn().await;
    let admin = Admin::of(&app);
    admin
        .create_agent(agent_json("a", "http://127.0.0.1:9/"))
        .await;
    for (extra, field) in [
        (json!({ "ordering": { "key": "" } }), "ordering.key"),
        (
            json!({ "ordering": { "key": "payload..x" } }),
            "ordering.key",
        ),
        (
            json!({ "ordering": { "key": "payload.x", "onDead": "later" } }),
            "ordering.onDead",
        ),
        (
            json!({ "coalesce": { "key": "payload.x", "windowMs": 0, "maxWaitMs": 10 } }),
            "coalesce.windowMs",
        ),
        (
            json!({ "coalesce": { "key": "payload.x", "windowMs": 100, "maxWaitMs": 10 } }),
            "coalesce.maxWaitMs",
        ),
    ] {
        let (s, v) = admin
            .post(
                "/admin/routes",
                route("r", &["a"], policy(3, "fixed", 10, 10), extra.clone()),
            )
            .await;
        assert_eq!(s, 400, "{extra}: {v}");
        assert_eq!(v["code"], "validation_error", "{v}");
        assert!(
            v.to_string().contains(field),
            "{extra}: the error names {field}: {v}"
        );
    }
    let (s, _) = admin.get("/admin/routes/r").await;
    assert_eq!(s, 404, "nothing was stored");
}

/// Posts one keyed webhook to `app`; its event id.
async fn post_keyed(app: &TestApp, key: &str, n: usize) -> Uuid {
    keyed(key, n)
        .send_to(&app.client, &app.base)
        .await
        .accepted()
        .id
}

/// Points agent `a` at `url` (`PUT /admin/agents/a`).
async fn point_agent_at(admin: &Admin, url: &str) {
    let (s, v) = admin
        .call(
            reqwest::Method::PUT,
            "/admin/agents/a",
            Some(agent_json("a", url)),
        )
        .await;
    assert_eq!(s, 200, "{v}");
}

fn agent_json(id: &str, url: &str) -> Value {
    agent(id, url, json!({ "maxConcurrency": 4 }))
}
