//! Push delivery (API.md section 7): the exact HTTP attempt, retry schedules per policy
//! (section 5 `RetryPolicy`), and what counts as a failed attempt. Shared helpers for the other
//! delivery test files live here too.

use std::future::Future;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::receiver::*;
use crate::signed::*;
use crate::support::*;

/// A Standard Webhooks secret chosen by the admin (base64 of 24 bytes).
pub const CHOSEN_SECRET: &str = "whsec_ZGVsaXZlcnktdGVzdHMtc2VjcmV0LTI0";

/// The admin API of a running server (in process or a child), for setting up agents and routes
/// and reading deliveries back.
#[derive(Clone)]
pub struct Admin {
    pub client: reqwest::Client,
    pub base: String,
}

impl Admin {
    pub fn of(app: &TestApp) -> Admin {
        Admin::at(&app.base)
    }

    pub fn at(base: &str) -> Admin {
        Admin {
            client: reqwest::Client::new(),
            base: base.to_string(),
        }
    }

    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .client
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(ADMIN_KEY);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let bytes = r.bytes().await.unwrap_or_default();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.call(Method::DELETE, path, None).await
    }

    /// `POST /admin/agents`, asserting 201; the stored agent.
    pub async fn create_agent(&self, agent: Value) -> Value {
        let (status, v) = self.post("/admin/agents", agent.clone()).await;
        assert_eq!(status, 201, "POST /admin/agents {agent}: {v}");
        v
    }

    /// Agent `agent_id` at `url` and route `route_id` to it alone with `retry`, both plain.
    pub async fn agent_with_route(&self, agent_id: &str, url: &str, route_id: &str, retry: Value) {
        self.create_agent(agent(agent_id, url, json!({}))).await;
        self.create_route(route(route_id, &[agent_id], retry, json!({})))
            .await;
    }

    /// `POST /admin/routes`, asserting 201; the stored route.
    pub async fn create_route(&self, route: Value) -> Value {
        let (status, v) = self.post("/admin/routes", route.clone()).await;
        assert_eq!(status, 201, "POST /admin/routes {route}: {v}");
        v
    }

    /// The agent's signing secret, as the admin API hands it out.
    pub async fn agent_secret(&self, id: &str) -> String {
        let (status, v) = self.get(&format!("/admin/agents/{id}")).await;
        assert_eq!(status, 200, "GET /admin/agents/{id}: {v}");
        v["secret"]
            .as_str()
            .unwrap_or_else(|| panic!("the admin API returns no secret for agent {id}: {v}"))
            .to_string()
    }

    /// `GET /admin/events/{id}`, asserting 200: `{"event", "filtered", "deliveries"}`.
    pub async fn event(&self, id: Uuid) -> Value {
        let (status, v) = self.get(&format!("/admin/events/{id}")).await;
        assert_eq!(status, 200, "GET /admin/events/{id}: {v}");
        v
    }

    pub async fn deliveries(&self, id: Uuid) -> Vec<Value> {
        let v = self.event(id).await;
        v["deliveries"]
            .as_array()
            .unwrap_or_else(|| panic!("deliveries is not an array: {v}"))
            .clone()
    }

    /// Waits until the event's only delivery has `status`; that delivery.
    pub async fn wait_status(&self, id: Uuid, status: &str) -> Value {
        poll(
            Duration::from_secs(15),
            &format!("event {id} delivery {status}"),
            || async {
                let d = self.deliveries(id).await;
                match d.as_slice() {
                    [one] if one["status"] == status => Ok(one.clone()),
                    _ => Err(Value::from(d)),
                }
            },
        )
        .await
    }

    /// Waits until every delivery of the event has `status` (and there are `n` of them).
    pub async fn wait_all_status(&self, id: Uuid, n: usize, status: &str) -> Vec<Value> {
        poll(
            Duration::from_secs(15),
            &format!("event {id}: {n} deliveries {status}"),
            || async {
                let d = self.deliveries(id).await;
                if d.len() == n && d.iter().all(|x| x["status"] == status) {
                    Ok(d)
                } else {
                    Err(Value::from(d))
                }
            },
        )
        .await
    }

    /// `GET /admin/dlq?{query}`: the items and the next cursor, asserting the list shape.
    pub async fn dlq(&self, query: &str) -> (Vec<Value>, Option<String>) {
        let (status, v) = self.get(&format!("/admin/dlq?{query}")).await;
        assert_eq!(status, 200, "GET /admin/dlq?{query}: {v}");
        assert_eq!(keys(&v), ["items", "nextCursor"], "{v}");
        let next = match &v["nextCursor"] {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            other => panic!("nextCursor must be a string or null, got {other}"),
        };
        (v["items"].as_array().expect("items").clone(), next)
    }

    /// `GET /queue/stats`, asserting 200.
    pub async fn stats(&self) -> Value {
        let (status, v) = self.get("/queue/stats").await;
        assert_eq!(status, 200, "GET /queue/stats: {v}");
        v
    }
}

/// Polls `check` until it answers `Ok`; on timeout fails showing the last thing it saw.
pub async fn poll<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Value>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(last) => assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not reached within {timeout:?}; last seen: {last}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An object's keys, sorted.
pub fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect();
    k.sort();
    k
}

/// An agent pushing to `url`, with `extra` fields merged in.
pub fn agent(id: &str, url: &str, extra: Value) -> Value {
    let mut a = json!({ "id": id, "name": format!("agent {id}"), "url": url });
    merge(&mut a, extra);
    a
}

/// A route to `agents` with this retry policy, with `extra` fields merged in.
pub fn route(id: &str, agents: &[&str], retry: Value, extra: Value) -> Value {
    let mut r = json!({
        "id": id, "name": format!("route {id}"), "targetAgents": agents, "priority": 0,
        "retryPolicy": retry, "enabled": true,
    });
    merge(&mut r, extra);
    r
}

/// A `RetryPolicy` without jitter.
pub fn policy(max_attempts: u32, strategy: &str, base_ms: u64, max_ms: u64) -> Value {
    json!({ "maxAttempts": max_attempts, "backoffStrategy": strategy, "baseDelay": base_ms,
            "maxDelay": max_ms, "jitter": false })
}

/// `sourceFilters` selecting events of one type.
pub fn only_type(event_type: &str) -> Value {
    json!({ "sourceFilters": [{
        "id": format!("type-{event_type}"), "name": format!("type is {event_type}"),
        "eventType": event_type, "conditions": [], "action": "include", "priority": 0,
        "enabled": true,
    }]})
}

fn merge(into: &mut Value, extra: Value) {
    if let (Value::Object(a), Value::Object(b)) = (into, extra) {
        a.extend(b);
    }
}

/// A GitHub body (`n` makes bodies distinct).
pub fn gh_body(n: usize) -> Vec<u8> {
    json!({ "action": "opened", "number": n, "sender": { "login": "octocat" } })
        .to_string()
        .into_bytes()
}

/// Posts a GitHub event of `event_type` that some route takes; its event id.
pub async fn post_routed(app: &TestApp, event_type: &str, n: usize) -> Uuid {
    post_routed_to(&app.client, &app.base, event_type, n).await
}

pub async fn post_routed_to(
    client: &reqwest::Client,
    base: &str,
    event_type: &str,
    n: usize,
) -> Uuid {
    let a = Webhook::github(event_type, gh_body(n))
        .send_to(client, base)
        .await
        .accepted();
    assert!(a.processed && a.routed, "the event is not routed: {a:?}");
    a.id
}

/// Time between consecutive requests.
pub fn gaps(got: &[Received]) -> Vec<Duration> {
    got.windows(2).map(|w| w[1].at - w[0].at).collect()
}

/// A port nobody listens on (bound, then released).
pub fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

// ---- the HTTP attempt ----

#[tokio::test]
async fn each_attempt_is_a_signed_post_of_the_event_with_the_contract_headers() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let admin = Admin::of(&app);
    // Two failures, so that three attempts of the same delivery can be compared.
    rx.script("/hook", [Reply::Status(500), Reply::Status(503)]);
    admin
        .create_agent(agent(
            "signed",
            &rx.url("/hook"),
            json!({ "headers": { "x-tenant": "acme", "x-agent-token": "t0k3n" } }),
        ))
        .await;
    admin
        .create_route(route(
            "r",
            &["signed"],
            policy(3, "fixed", 100, 1000),
            json!({}),
        ))
        .await;
    let secret = admin.agent_secret("signed").await;

    let body = gh_body(7);
    let id = Webhook::github("pull_request", body.clone())
        .send(&app)
        .await
        .accepted()
        .id;
    let got = rx.wait_for("/hook", 3, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 3);
    let archived = archived_event(&app, id).await;
    let verifier = standardwebhooks::Webhook::new(&secret).unwrap();
    for (i, r) in got.iter().enumerate() {
        let attempt = i + 1;
        assert_eq!(r.method, Method::POST, "attempt {attempt}");
        assert_eq!(r.header("content-type"), Some("application/json"));
        let ev = r.json();
        assert_event_shape(&ev, id, "github", body.len());
        assert_eq!(ev, archived, "attempt {attempt}: the body is the event");
        assert_eq!(
            ev["payload"],
            serde_json::from_slice::<Value>(&body).unwrap()
        );
        assert_eq!(ev["type"], "pull_request");
        assert_eq!(ev["action"], "opened");
        assert_eq!(
            r.header("webhook-id"),
            Some(id.to_string().as_str()),
            "attempt {attempt}: webhook-id is the event id"
        );
        let ts: i64 = r
            .header("webhook-timestamp")
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("webhook-timestamp: {:?}", r.header("webhook-timestamp")));
        assert!(
            (ts - now_ms() / 1000).abs() <= 10,
            "webhook-timestamp {ts} is not now (s)"
        );
        let sig = r.header("webhook-signature").unwrap_or_default();
        assert!(sig.starts_with("v1,"), "webhook-signature {sig:?}");
        verifier
            .verify(&r.body, &r.headers)
            .unwrap_or_else(|e| panic!("attempt {attempt}: signature does not verify: {e:?}"));
        // The verification is real: another body under the same headers does not pass.
        assert!(verifier.verify(b"{}", &r.headers).is_err());
        assert_eq!(r.header("x-event-source"), Some("github"));
        assert_eq!(r.header("x-event-type"), Some("pull_request"));
        assert_eq!(
            r.header("x-delivery-attempt"),
            Some(attempt.to_string().as_str())
        );
        assert_eq!(r.header("x-tenant"), Some("acme"));
        assert_eq!(r.header("x-agent-token"), Some("t0k3n"));
    }
    let d = admin.wait_status(id, "delivered").await;
    assert_eq!(d["attempts"], 3, "{d}");
}

#[tokio::test]
async fn a_secret_chosen_by_the_admin_signs_the_deliveries() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let admin = Admin::of(&app);
    let stored = admin
        .create_agent(agent(
            "chosen",
            &rx.url("/c"),
            json!({ "secret": CHOSEN_SECRET }),
        ))
        .await;
    assert_eq!(stored["secret"], CHOSEN_SECRET, "{stored}");
    admin
        .create_route(route(
            "r",
            &["chosen"],
            policy(1, "fixed", 100, 100),
            json!({}),
        ))
        .await;
    post_routed(&app, "issues", 1).await;
    let got = rx.wait_for("/c", 1, Duration::from_secs(10)).await;
    standardwebhooks::Webhook::new(CHOSEN_SECRET)
        .unwrap()
        .verify(&got[0].body, &got[0].headers)
        .expect("signed with the agent's secret");
    let other = standardwebhooks::Webhook::new(INTERNAL_SECRET).unwrap();
    assert!(other.verify(&got[0].body, &got[0].headers).is_err());
}

#[tokio::test]
async fn a_route_transformation_is_what_is_posted_and_signed() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let admin = Admin::of(&app);
    admin
        .create_agent(agent(
            "t",
            &rx.url("/t"),
            json!({ "secret": CHOSEN_SECRET }),
        ))
        .await;
    admin
        .create_route(route(
            "r",
            &["t"],
            policy(1, "fixed", 100, 100),
            json!({ "transformation": { "type": "jq",
                    "expression": ".payload = {number: .payload.number, tag: \"slim\"}" } }),
        ))
        .await;
    let id = post_routed(&app, "pull_request", 42).await;
    let got = rx.wait_for("/t", 1, Duration::from_secs(10)).await;
    let ev = got[0].json();
    assert_eq!(
        ev["payload"],
        json!({ "number": 42, "tag": "slim" }),
        "{ev}"
    );
    assert_eq!(ev["id"], id.to_string());
    assert_eq!(ev["source"], "github");
    assert_eq!(got[0].header("webhook-id"), Some(id.to_string().as_str()));
    standardwebhooks::Webhook::new(CHOSEN_SECRET)
        .unwrap()
        .verify(&got[0].body, &got[0].headers)
        .expect("the transformed body is what is signed");
    // The archive keeps the event as received.
    let archived = archived_event(&app, id).await;
    assert_eq!(archived["payload"]["sender"]["login"], "octocat");
}

#[tokio::test]
async fn any_2xx_is_delivered_after_one_attempt() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let admin = Admin::of(&app);
    admin
        .create_agent(agent("ok", &rx.url("/ok"), json!({})))
        .await;
    admin
        .create_route(route("r", &["ok"], policy(3, "fixed", 100, 100), json!({})))
        .await;
    for (n, code) in [200u16, 201, 202, 204].into_iter().enumerate() {
        rx.script("/ok", [Reply::Status(code)]);
        let id = post_routed(&app, "push", n).await;
        let d = admin.wait_status(id, "delivered").await;
        assert_eq!(d["attempts"], 1, "{code}: {d}");
        assert_eq!(d["attemptLog"][0]["statusCode"], code, "{d}");
        assert_eq!(rx.received("/ok").len(), n + 1, "{code} was retried");
    }
}

#[tokio::test]
async fn redirects_and_client_errors_are_failed_attempts() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let admin = Admin::of(&app);
    rx.script(
        "/x",
        [Reply::Status(302), Reply::Status(404), Reply::Status(400)],
    );
    admin
        .create_agent(agent("x", &rx.url("/x"), json!({})))
        .await;
    admin
        .create_route(route("r", &["x"], policy(4, "fixed", 50, 50), json!({})))
        .await;
    let id = post_routed(&app, "push", 0).await;
    let d = admin.wait_status(id, "delivered").await;
    let codes: Vec<&Value> = d["attemptLog"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| &a["statusCode"])
        .collect();
    assert_eq!(
        codes,
        [&json!(302), &json!(404), &json!(400), &json!(200)],
        "{d}"
    );
    assert_eq!(rx.received("/x").len(), 4);
}

// ---- retry schedules ----

/// Runs one delivery that always fails against `retry`, and the gaps between its attempts.
async fn observed_gaps(retry: Value, attempts: usize) -> Vec<Duration> {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let admin = Admin::of(&app);
    rx.set_default("/f", Reply::Status(500));
    admin
        .create_agent(agent("f", &rx.url("/f"), json!({})))
        .await;
    admin
        .create_route(route("r", &["f"], retry, json!({})))
        .await;
    let id = post_routed(&app, "push", 0).await;
    let got = rx.wait_for("/f", attempts, Duration::from_secs(60)).await;
    let d = admin.wait_status(id, "dead").await;
    assert_eq!(d["attempts"], attempts, "{d}");
    assert_eq!(
        rx.received("/f").len(),
        attempts,
        "attempts beyond maxAttempts"
    );
    gaps(&got)
}

/// How late a retry may come on a loaded machine before a test calls it wrong. The schedules
/// below are long enough that a wrong strategy overshoots this on some gap (the exact delays are
/// unit tests of `RetryPolicy`; timing claims belong in benchmarks).
const LATE_MS: u128 = 1500;

/// Each gap at least its delay (a few ms of clock rounding aside), and at most `LATE_MS` more.
fn assert_schedule(gaps: &[Duration], expected_ms: &[u64]) {
    assert_eq!(gaps.len(), expected_ms.len());
    let seen: Vec<u128> = gaps.iter().map(|g| ms(*g)).collect();
    for (g, e) in seen.iter().zip(expected_ms) {
        let e = u128::from(*e);
        assert!(
            *g + 10 >= e,
            "a retry came early: gaps {seen:?} ms, expected {expected_ms:?} ms"
        );
        assert!(
            *g <= e + LATE_MS,
            "a retry came more than {LATE_MS} ms late: gaps {seen:?} ms, expected \
             {expected_ms:?} ms"
        );
    }
}

// Linear or exponential growth would overshoot the last gap by more than LATE_MS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_backoff_waits_base_delay_each_time() {
    let g = observed_gaps(policy(6, "fixed", 400, 5000), 6).await;
    assert_schedule(&g, &[400, 400, 400, 400, 400]);
}

// Fixed would come early; exponential would overshoot the last gap (3200 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linear_backoff_grows_by_base_delay() {
    let g = observed_gaps(policy(6, "linear", 200, 5000), 6).await;
    assert_schedule(&g, &[200, 400, 600, 800, 1000]);
}

// Fixed or linear would come early.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exponential_backoff_doubles() {
    let g = observed_gaps(policy(5, "exponential", 200, 5000), 5).await;
    assert_schedule(&g, &[200, 400, 800, 1600]);
}

// Uncapped, the last gap would be 3200 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_delay_caps_the_backoff() {
    let g = observed_gaps(policy(6, "exponential", 200, 300), 6).await;
    assert_schedule(&g, &[200, 300, 300, 300, 300]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jitter_stays_within_the_computed_delay() {
    // Full jitter: each delay uniform in [0, 400] ms. Lateness only lengthens a gap, so a gap
    // shorter than the delay shows the jitter; six gaps all within 30 ms of the full delay
    // would happen by chance far less than once in a million runs of an unloaded machine.
    let mut retry = policy(7, "fixed", 400, 400);
    retry["jitter"] = json!(true);
    let g = observed_gaps(retry, 7).await;
    let seen: Vec<u128> = g.iter().map(|d| ms(*d)).collect();
    assert!(
        seen.iter().any(|g| *g + 30 < 400),
        "no gap shorter than the 400 ms delay: no jitter? {seen:?} ms"
    );
    assert!(
        seen.iter().all(|g| *g <= 400 + LATE_MS),
        "jittered gaps {seen:?} ms, the delay is at most 400 ms"
    );
}

/// One failure answered with `reply`, then success: the gap before the second attempt.
async fn gap_after(reply: Reply, retry: Value) -> Duration {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let admin = Admin::of(&app);
    rx.script("/ra", [reply]);
    admin
        .create_agent(agent("ra", &rx.url("/ra"), json!({})))
        .await;
    admin
        .create_route(route("r", &["ra"], retry, json!({})))
        .await;
    let id = post_routed(&app, "push", 0).await;
    let got = rx.wait_for("/ra", 2, Duration::from_secs(15)).await;
    admin.wait_status(id, "delivered").await;
    got[1].at - got[0].at
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_on_429_is_honoured() {
    let g = gap_after(Reply::RetryAfter(429, 1), policy(3, "fixed", 50, 10_000)).await;
    assert!(
        ms(g) >= 990 && ms(g) <= 2500,
        "429 Retry-After: 1 then a retry after {g:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_on_503_is_honoured() {
    let g = gap_after(Reply::RetryAfter(503, 1), policy(3, "fixed", 50, 10_000)).await;
    assert!(
        ms(g) >= 990 && ms(g) <= 2500,
        "503 Retry-After: 1 then a retry after {g:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_capped_at_max_delay() {
    let g = gap_after(Reply::RetryAfter(503, 30), policy(3, "fixed", 50, 600)).await;
    assert!(
        ms(g) >= 590 && ms(g) <= 2500,
        "Retry-After: 30 with maxDelay 600 ms, then a retry after {g:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_is_a_failed_attempt() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let admin = Admin::of(&app);
    rx.script("/slow", [Reply::Hang(Duration::from_secs(30))]);
    admin
        .create_agent(agent("slow", &rx.url("/slow"), json!({ "timeoutMs": 200 })))
        .await;
    admin
        .create_route(route(
            "r",
            &["slow"],
            policy(3, "fixed", 100, 100),
            json!({}),
        ))
        .await;
    let id = post_routed(&app, "push", 0).await;
    let got = rx.wait_for("/slow", 2, Duration::from_secs(10)).await;
    let gap = got[1].at - got[0].at;
    // The 200 ms timeout plus the 100 ms delay; far less than the 30 s the agent hangs.
    assert!(
        ms(gap) >= 270 && ms(gap) < 10_000,
        "second attempt {gap:?} after a hung one"
    );
    assert_eq!(got[1].header("x-delivery-attempt"), Some("2"));
    let d = admin.wait_status(id, "delivered").await;
    assert_eq!(d["attempts"], 2, "{d}");
    let first = &d["attemptLog"][0];
    assert_eq!(first["attempt"], 1, "{d}");
    assert!(
        first["statusCode"].is_null(),
        "a timeout has no status: {d}"
    );
    assert!(
        first["error"].as_str().is_some_and(|e| !e.is_empty()),
        "a timeout is recorded with an error: {d}"
    );
    let took = first["durationMs"].as_u64().expect("durationMs");
    assert!(
        (150..10_000).contains(&took),
        "durationMs {took} of a 200 ms timeout (the agent hangs 30 s)"
    );
    assert_eq!(d["attemptLog"][1]["statusCode"], 200, "{d}");
}

#[tokio::test]
async fn a_refused_connection_is_a_failed_attempt() {
    let app = TestApp::spawn().await;
    let admin = Admin::of(&app);
    let url = format!("http://127.0.0.1:{}/hook", closed_port());
    admin.create_agent(agent("gone", &url, json!({}))).await;
    admin
        .create_route(route(
            "r",
            &["gone"],
            policy(2, "fixed", 100, 100),
            json!({}),
        ))
        .await;
    let id = post_routed(&app, "push", 0).await;
    let d = admin.wait_status(id, "dead").await;
    assert_eq!(d["attempts"], 2, "{d}");
    let log = d["attemptLog"].as_array().expect("attemptLog");
    assert_eq!(log.len(), 2, "{d}");
    for a in log {
        assert!(a["statusCode"].is_null(), "{d}");
        assert!(a["error"].as_str().is_some_and(|e| !e.is_empty()), "{d}");
    }
    assert!(
        d["lastError"].as_str().is_some_and(|e| !e.is_empty()),
        "{d}"
    );
}

// ---- signing-secret rotation ----

/// Another Standard Webhooks secret (base64 of 24 bytes), the one rotated to.
const ROTATED_SECRET: &str = "whsec_cm90YXRlZC1zaWduaW5nLXNlY3JldC0y";

/// Whether `r` verifies under `secret` (Standard Webhooks, as an agent checks it).
fn signed_by(r: &Received, secret: &str) -> bool {
    standardwebhooks::Webhook::new(secret)
        .unwrap()
        .verify(&r.body, &r.headers)
        .is_ok()
}

/// docs/security.md "Key rotation": an agent's signing secret is rotated with
/// `PUT /admin/agents/{id}` and a new `secret`. Every attempt is signed when it is made, so from
/// the answer to the PUT on, every attempt carries the new secret's signature only: new events,
/// and a retry of a delivery created before the change. A later PUT without `secret` keeps it.
#[tokio::test]
async fn a_secret_rotated_through_put_signs_every_later_attempt() {
    let app = TestApp::spawn().await;
    let rx = TestReceiver::start().await;
    let admin = Admin::of(&app);
    let url = rx.url("/rot");
    admin
        .create_agent(agent("rot", &url, json!({ "secret": CHOSEN_SECRET })))
        .await;
    admin
        .create_route(route(
            "r",
            &["rot"],
            policy(1, "fixed", 100, 100),
            json!({}),
        ))
        .await;
    // Before the change: one delivery that fails (dead after its single attempt), one delivered.
    rx.script("/rot", [Reply::Status(500)]);
    let failed = post_routed(&app, "issues", 1).await;
    let dead = admin.wait_status(failed, "dead").await;
    let before = post_routed(&app, "issues", 2).await;
    admin.wait_status(before, "delivered").await;
    let got = rx.received("/rot");
    assert_eq!(got.len(), 2);
    for r in &got {
        assert!(
            signed_by(r, CHOSEN_SECRET),
            "not signed with the first secret"
        );
        assert!(!signed_by(r, ROTATED_SECRET));
    }

    // The rotation: the whole agent again, with the new secret.
    let (status, v) = admin
        .call(
            Method::PUT,
            "/admin/agents/rot",
            Some(agent("rot", &url, json!({ "secret": ROTATED_SECRET }))),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["secret"], ROTATED_SECRET, "{v}");
    assert_eq!(admin.agent_secret("rot").await, ROTATED_SECRET);

    // A new event, and the retry of the delivery that died before the change.
    let after = post_routed(&app, "issues", 3).await;
    admin.wait_status(after, "delivered").await;
    let (status, v) = admin
        .post(
            &format!("/admin/dlq/{}/retry", dead["id"].as_str().unwrap()),
            json!({}),
        )
        .await;
    assert_eq!((status, v.clone()), (200, json!({ "retried": 1 })), "{v}");
    let retried = admin.wait_status(failed, "delivered").await;
    assert_eq!(retried["attempts"], 2, "{retried}");
    let got = rx.wait_for("/rot", 4, SOON_ENOUGH).await;
    assert_eq!(got.len(), 4);
    for r in &got[2..] {
        assert!(
            signed_by(r, ROTATED_SECRET),
            "attempt {:?} of {:?} after the rotation is not signed with the new secret",
            r.header("x-delivery-attempt"),
            r.header("webhook-id")
        );
        assert!(
            !signed_by(r, CHOSEN_SECRET),
            "an attempt after the rotation still verifies with the old secret"
        );
    }
    let ids: Vec<Option<&str>> = got[2..].iter().map(|r| r.header("webhook-id")).collect();
    assert!(ids.contains(&Some(after.to_string().as_str())), "{ids:?}");
    assert!(ids.contains(&Some(failed.to_string().as_str())), "{ids:?}");

    // An update that leaves `secret` out keeps the current one.
    let (status, v) = admin
        .call(
            Method::PUT,
            "/admin/agents/rot",
            Some(agent("rot", &url, json!({ "name": "renamed" }))),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["secret"], ROTATED_SECRET, "{v}");
    let kept = post_routed(&app, "issues", 4).await;
    admin.wait_status(kept, "delivered").await;
    let got = rx.wait_for("/rot", 5, SOON_ENOUGH).await;
    assert!(signed_by(&got[4], ROTATED_SECRET));
    app.stop().await;
}

/// Generous: for things that take milliseconds on an idle machine.
const SOON_ENOUGH: Duration = Duration::from_secs(20);
