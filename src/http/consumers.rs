//! Pull consumers (docs/consumers.md): `GET /agents/{id}/deliveries` leases a pull agent's
//! deliveries to the caller, `POST /agents/{id}/deliveries/{ack,nack,extend}` settle them, and
//! `/stream/ws?mode=consume` does both over one socket.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::AppState;
use super::auth::{admin_key_matches, bearer};
use crate::http::error::{ApiError, ApiResult};
use crate::http::query::{parse_int, query_pairs};
use crate::queue::pull::{DEFAULT_LEASE_MS, MAX_LEASE_BATCH, MAX_LEASE_MS, MIN_LEASE_MS};
use crate::queue::{Leased, Settle, Settled};

/// The longest a poll waits (ms).
pub const MAX_WAIT_MS: u64 = 30_000;
/// Most ids one ack, nack or extend may name.
pub const MAX_IDS: usize = 1_000;
/// The longest consumer name.
const MAX_CONSUMER_LEN: usize = 128;
/// Several nodes: how often a waiting poll looks for deliveries waiting on other nodes.
const TAKE_EVERY_MS: u64 = 200;
/// What an empty answer suggests before the next poll when it did not wait.
const IDLE_POLL_MS: u64 = 1_000;

/// Each consume socket's token: its leases are returned only by it.
static HOLDERS: AtomicU64 = AtomicU64::new(1);

/// The key of a request: `Authorization: Bearer`, else `apiKey` in the query.
fn key_of(headers: &HeaderMap, query_key: Option<&str>) -> Option<Vec<u8>> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| bearer(v.as_bytes()).map(<[u8]>::to_vec))
        .or_else(|| query_key.map(|k| k.as_bytes().to_vec()))
}

/// Auth (401), the agent (404), its mode (409): the agent's own key, `AGENT_API_KEY`, or the
/// admin key.
fn authorize(
    app: &AppState,
    peer: SocketAddr,
    key: Option<&[u8]>,
    agent: &str,
) -> ApiResult<Arc<str>> {
    let Some(key) = key else {
        return Err(app.auth_throttle.refuse(peer.ip()));
    };
    let allowed = admin_key_matches(app, key)
        || match app.rules.agent_for_key(key) {
            Some(None) => true,
            Some(Some(own)) => &*own == agent,
            None => false,
        };
    if !allowed {
        return Err(app.auth_throttle.refuse(peer.ip()));
    }
    let compiled = app.rules.current();
    let Some(a) = compiled.rules.agent(agent) else {
        return Err(ApiError::not_found(format!(
            "No agent with id \"{}\"",
            agent.chars().take(128).collect::<String>()
        )));
    };
    if !a.is_pull() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_pull_agent",
            "The agent is not a pull agent (\"mode\": \"pull\"): its deliveries are pushed or streamed",
        ));
    }
    Ok(Arc::from(agent))
}

/// A poll's parameters.
struct PollParams {
    max: usize,
    wait_ms: u64,
    lease_ms: u64,
    consumer: Arc<str>,
}

fn bounded(name: &str, v: &str, min: i64, max: i64) -> ApiResult<i64> {
    let n = parse_int(name, v)?;
    if !(min..=max).contains(&n) {
        return Err(ApiError::bad_request(format!(
            "{name} must be from {min} to {max}"
        )));
    }
    Ok(n)
}

/// `max`, `waitMs`, `leaseMs`, `consumer` (and, for the socket, `prefetch`); `extra` names the
/// other parameters allowed.
fn poll_params(pairs: &[(String, String)], extra: &[&str]) -> ApiResult<PollParams> {
    let mut p = PollParams {
        max: 10,
        wait_ms: 0,
        lease_ms: DEFAULT_LEASE_MS,
        consumer: Arc::from("default"),
    };
    for (k, v) in pairs {
        match k.as_str() {
            "max" | "prefetch" => {
                p.max = bounded(k, v, 1, MAX_LEASE_BATCH as i64)? as usize;
            }
            "waitMs" => p.wait_ms = bounded(k, v, 0, MAX_WAIT_MS as i64)? as u64,
            "leaseMs" => {
                p.lease_ms = bounded(k, v, MIN_LEASE_MS as i64, MAX_LEASE_MS as i64)? as u64
            }
            "consumer" => {
                let name = v.trim();
                if name.is_empty()
                    || name.chars().count() > MAX_CONSUMER_LEN
                    || name.chars().any(char::is_control)
                {
                    return Err(ApiError::bad_request(format!(
                        "consumer must be 1 to {MAX_CONSUMER_LEN} characters, without control characters"
                    )));
                }
                p.consumer = Arc::from(name);
            }
            other if extra.contains(&other) => {}
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {:?} (known: max, waitMs, leaseMs, consumer{})",
                    other.chars().take(64).collect::<String>(),
                    extra.iter().map(|e| format!(", {e}")).collect::<String>()
                )));
            }
        }
    }
    Ok(p)
}

/// Leases up to `max`, waiting up to `wait_ms`. On several nodes, deliveries waiting on other
/// nodes are taken to this one while the poll waits.
async fn lease(app: &AppState, agent: &Arc<str>, p: &PollParams, holder: u64) -> Vec<Leased> {
    let lease = |wait: u64| {
        app.queue.lease(
            agent.clone(),
            p.consumer.clone(),
            p.max,
            p.lease_ms,
            Duration::from_millis(wait),
            holder,
        )
    };
    if app.store.node_id().is_none() {
        return lease(p.wait_ms).await;
    }
    let until = tokio::time::Instant::now() + Duration::from_millis(p.wait_ms);
    loop {
        let items = lease(0).await;
        if !items.is_empty() {
            return items;
        }
        match app.store.take_pull(agent, p.max).await {
            Ok(taken) if !taken.is_empty() => {
                app.queue.requeue(taken, app.rules.default_policy());
                let items = lease(0).await;
                if !items.is_empty() {
                    return items;
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, agent = %agent, "taking pull deliveries from other nodes failed")
            }
        }
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Vec::new();
        }
        let items = lease(left.min(Duration::from_millis(TAKE_EVERY_MS)).as_millis() as u64).await;
        if !items.is_empty() {
            return items;
        }
        if tokio::time::Instant::now() >= until {
            return Vec::new();
        }
    }
}

/// One leased delivery as JSON text; `event` is the stored body as it is (it is JSON).
fn item_json(out: &mut String, l: &Leased, frame: bool) {
    out.push('{');
    if frame {
        out.push_str("\"type\":\"delivery\",");
    }
    out.push_str("\"id\":\"");
    out.push_str(&l.delivery_id.hyphenated().to_string());
    out.push_str("\",\"eventId\":\"");
    out.push_str(&l.event_id.hyphenated().to_string());
    out.push_str("\",\"event\":");
    match std::str::from_utf8(&l.body) {
        Ok(text) if !text.trim().is_empty() => out.push_str(text),
        _ => out.push_str("null"),
    }
    out.push_str(",\"attempt\":");
    out.push_str(&l.attempt.to_string());
    out.push_str(",\"leaseExpiresAt\":");
    out.push_str(&l.lease_expires_at.to_string());
    if let Some(ctx) = &l.trace_context {
        // The webhook's trace, for the consumer to continue (as a push agent's `traceparent`).
        let (parent, state) = crate::telemetry::trace::split(ctx);
        for (name, v) in [("traceparent", Some(parent)), ("tracestate", state)] {
            if let Some(v) = v.filter(|v| !v.is_empty()) {
                out.push_str(",\"");
                out.push_str(name);
                out.push_str("\":");
                out.push_str(&Value::String(v.to_string()).to_string());
            }
        }
    }
    out.push('}');
}

/// `GET /agents/{agentId}/deliveries`.
pub async fn poll(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(agent): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let agent = authorize(&app, peer, key_of(&headers, None).as_deref(), &agent)?;
    let p = poll_params(&query_pairs(&raw), &[])?;
    let items = lease(&app, &agent, &p, 0).await;
    let mut out =
        String::with_capacity(64 + items.iter().map(|i| i.body.len() + 160).sum::<usize>());
    out.push_str("{\"items\":[");
    for (i, l) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        item_json(&mut out, l, false);
    }
    out.push(']');
    if items.is_empty() {
        let next = if p.wait_ms == 0 { IDLE_POLL_MS } else { 0 };
        out.push_str(",\"nextPollMs\":");
        out.push_str(&next.to_string());
    }
    out.push('}');
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        Bytes::from(out),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SettleBody {
    #[serde(default)]
    ids: Option<Vec<String>>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    delay_ms: Option<u64>,
    #[serde(default)]
    lease_ms: Option<u64>,
    /// The socket's message type (ignored over HTTP, where the path says it).
    #[serde(default, rename = "type")]
    _kind: Option<String>,
}

/// What a settle body asks, checked.
fn settle_of(kind: &str, body: SettleBody) -> ApiResult<(Vec<Uuid>, Settle)> {
    let Some(given) = &body.ids else {
        return Err(ApiError::validation("ids", "is required"));
    };
    if given.len() > MAX_IDS {
        return Err(ApiError::validation(
            "ids",
            format!("at most {MAX_IDS} ids at once"),
        ));
    }
    let mut ids = Vec::with_capacity(given.len());
    for (i, s) in given.iter().enumerate() {
        let id = Uuid::try_parse(s.trim())
            .map_err(|_| ApiError::validation(format!("ids[{i}]"), "not a delivery id"))?;
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    let no = |field: &str| {
        Err(ApiError::validation(
            field,
            format!("not allowed with {kind}"),
        ))
    };
    let op = match kind {
        "ack" => {
            if body.error.is_some() {
                return no("error");
            }
            if body.delay_ms.is_some() {
                return no("delayMs");
            }
            if body.lease_ms.is_some() {
                return no("leaseMs");
            }
            Settle::Ack
        }
        "nack" => {
            if body.lease_ms.is_some() {
                return no("leaseMs");
            }
            let error = body
                .error
                .map(|e| e.chars().take(1_000).collect::<String>())
                .filter(|e| !e.trim().is_empty())
                .unwrap_or_else(|| "nacked by the consumer".into());
            if body.delay_ms.is_some_and(|d| d > MAX_LEASE_MS * 96) {
                return Err(ApiError::validation(
                    "delayMs",
                    "must be at most 86400000 (a day)",
                ));
            }
            Settle::Nack {
                error,
                delay_ms: body.delay_ms,
            }
        }
        _ => {
            if body.error.is_some() {
                return no("error");
            }
            if body.delay_ms.is_some() {
                return no("delayMs");
            }
            let Some(lease_ms) = body.lease_ms else {
                return Err(ApiError::validation("leaseMs", "is required"));
            };
            if !(MIN_LEASE_MS..=MAX_LEASE_MS).contains(&lease_ms) {
                return Err(ApiError::validation(
                    "leaseMs",
                    format!("must be from {MIN_LEASE_MS} to {MAX_LEASE_MS}"),
                ));
            }
            Settle::Extend { lease_ms }
        }
    };
    Ok((ids, op))
}

/// Settles and waits until it is durable; the answer's fields by kind.
async fn settle(app: &AppState, agent: Arc<str>, ids: Vec<Uuid>, op: Settle) -> ApiResult<Settled> {
    let settled = app
        .queue
        .settle(agent, ids, op)
        .await
        .ok_or_else(|| ApiError::unavailable("shutting_down", "The server is shutting down"))?;
    Ok(settled)
}

/// Several nodes: acks of leases this node does not hold go to the store, for the node that
/// granted them (a consumer behind a load balancer may ack on any node).
async fn ack_elsewhere(
    app: &AppState,
    agent: &Arc<str>,
    kind: &str,
    s: &mut Settled,
) -> ApiResult<()> {
    if kind != "ack" || s.expired.is_empty() || app.store.node_id().is_none() {
        return Ok(());
    }
    let acked = app.store.ack_elsewhere(agent, s.expired.clone()).await?;
    if !acked.is_empty() {
        app.queue.count_acked_elsewhere(agent, acked.len());
        s.expired.retain(|id| !acked.contains(id));
        s.done.extend(acked);
    }
    Ok(())
}

/// Waits until what a settle did is durable: `503 storage_unavailable` when the store cannot
/// write it (or not within `DURABLE_WAIT`; it is written once the store can again).
async fn durable(settled: &mut Settled) -> ApiResult<()> {
    match tokio::time::timeout(DURABLE_WAIT, &mut settled.durable).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(e))) => Err(crate::store::StoreError::Unavailable(e).into()),
        Ok(Err(_)) => Err(ApiError::unavailable(
            "shutting_down",
            "The server is shutting down",
        )),
        Err(_) => Err(crate::store::StoreError::Unavailable(
            "the outcome was not written in time".into(),
        )
        .into()),
    }
}

/// How long an ack, nack or extend waits for the store before it answers 503.
const DURABLE_WAIT: Duration = Duration::from_secs(10);

/// What an answer calls the ids a settle of `kind` applied to.
fn done_name(kind: &str) -> &'static str {
    match kind {
        "ack" => "acked",
        "nack" => "nacked",
        _ => "extended",
    }
}

fn answer(kind: &str, s: &Settled) -> Value {
    let mut v = json!({ done_name(kind): s.done, "expired": s.expired });
    if let Some(at) = s.lease_expires_at {
        v["leaseExpiresAt"] = json!(at);
    }
    v
}

async fn settle_http(
    app: AppState,
    peer: SocketAddr,
    agent: String,
    headers: HeaderMap,
    body: Bytes,
    kind: &'static str,
) -> ApiResult<axum::Json<Value>> {
    let agent = authorize(&app, peer, key_of(&headers, None).as_deref(), &agent)?;
    super::error::json_syntax(&body)?;
    let de = &mut serde_json::Deserializer::from_slice(&body);
    let parsed: SettleBody = serde_path_to_error::deserialize(de)
        .map_err(|e| ApiError::json(&e.path().to_string(), e.inner()))?;
    let (ids, op) = settle_of(kind, parsed)?;
    let mut s = settle(&app, agent.clone(), ids, op).await?;
    durable(&mut s).await?;
    ack_elsewhere(&app, &agent, kind, &mut s).await?;
    Ok(axum::Json(answer(kind, &s)))
}

/// `POST /agents/{agentId}/deliveries/{ack|nack|extend}`.
pub async fn settle_post(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((agent, kind)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<axum::Json<Value>> {
    let kind = match kind.as_str() {
        "ack" => "ack",
        "nack" => "nack",
        "extend" => "extend",
        _ => return Err(ApiError::not_found("No such endpoint")),
    };
    settle_http(app, peer, agent, headers, body, kind).await
}

/// `GET /stream/ws?agentId=…&mode=consume`: checks everything before the upgrade.
pub async fn ws_consume(
    app: AppState,
    peer: SocketAddr,
    raw: Option<String>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let pairs = query_pairs(&raw);
    let param = |name: &str| super::streams::param(&pairs, name);
    let key = key_of(&headers, param("apiKey"));
    let Some(agent) = param("agentId").filter(|a| !a.is_empty()) else {
        return ApiError::bad_request("agentId is required").into_response();
    };
    let agent = match authorize(&app, peer, key.as_deref(), agent) {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    let rest: Vec<(String, String)> = pairs
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "agentId" | "mode" | "apiKey"))
        .cloned()
        .collect();
    if rest.iter().any(|(k, _)| k == "max" || k == "waitMs") {
        return ApiError::bad_request("a consume socket takes prefetch, leaseMs and consumer")
            .into_response();
    }
    let p = match poll_params(&rest, &[]) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(_) => {
            return ApiError::bad_request("this endpoint needs a WebSocket upgrade request")
                .into_response();
        }
    };
    upgrade
        .max_message_size(256 * 1024)
        .on_upgrade(move |socket| consume(app, agent, p, socket))
}

/// How long one lease request of a socket waits before it asks again.
const SOCKET_WAIT_MS: u64 = 25_000;

/// A consume socket: deliveries pushed up to `prefetch` unsettled, acks, nacks and extensions
/// taken, and its leases returned when it closes.
async fn consume(app: AppState, agent: Arc<str>, p: PollParams, socket: WebSocket) {
    let holder = HOLDERS.fetch_add(1, Ordering::Relaxed);
    let (mut sink, mut stream) = socket.split();
    // Leases this socket holds: id → expiry.
    let mut held: std::collections::HashMap<Uuid, i64> = std::collections::HashMap::new();
    let mut asking: Option<
        std::pin::Pin<Box<dyn std::future::Future<Output = Vec<Leased>> + Send>>,
    > = None;
    loop {
        let now = crate::clock::now_ms();
        held.retain(|_, until| *until > now);
        if asking.is_none() && held.len() < p.max {
            let (app, agent, consumer) = (app.clone(), agent.clone(), p.consumer.clone());
            let want = p.max - held.len();
            let lease_ms = p.lease_ms;
            asking = Some(Box::pin(async move {
                app.queue
                    .lease(
                        agent,
                        consumer,
                        want,
                        lease_ms,
                        Duration::from_millis(SOCKET_WAIT_MS),
                        holder,
                    )
                    .await
            }));
        }
        tokio::select! {
            items = async { asking.as_mut().expect("set above").await }, if asking.is_some() => {
                asking = None;
                let mut failed = false;
                for l in &items {
                    held.insert(l.delivery_id, l.lease_expires_at);
                    let mut text = String::with_capacity(l.body.len() + 200);
                    item_json(&mut text, l, true);
                    if sink.feed(WsMessage::Text(text.into())).await.is_err() {
                        failed = true;
                        break;
                    }
                }
                if failed || sink.flush().await.is_err() {
                    break;
                }
            }
            // A lease held unsettled runs out: room for another.
            _ = expiry(&held), if asking.is_none() && !held.is_empty() => {}
            msg = stream.next() => {
                let text = match msg {
                    Some(Ok(WsMessage::Text(t))) => t.to_string(),
                    Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => continue,
                };
                let reply = handle_frame(&app, &agent, &text, &mut held).await;
                if sink.send(WsMessage::Text(reply.to_string().into())).await.is_err() {
                    break;
                }
            }
        }
    }
    // A lease request still waiting ends with it (what it was being granted goes back), and
    // what the socket holds goes back at once.
    drop(asking);
    let ids: Vec<Uuid> = held.into_keys().collect();
    if !ids.is_empty() {
        let _ = app
            .queue
            .settle(agent, ids, Settle::Return { holder })
            .await;
    }
    let _ = tokio::time::timeout(Duration::from_millis(200), sink.close()).await;
}

/// Sleeps until the first of the socket's leases runs out.
async fn expiry(held: &std::collections::HashMap<Uuid, i64>) {
    let first = held.values().min().copied().unwrap_or(i64::MAX);
    let wait = (first - crate::clock::now_ms()).clamp(0, 3_600_000) as u64;
    tokio::time::sleep(Duration::from_millis(wait + 1)).await;
}

/// One client message of a consume socket, and the answer.
async fn handle_frame(
    app: &AppState,
    agent: &Arc<str>,
    text: &str,
    held: &mut std::collections::HashMap<Uuid, i64>,
) -> Value {
    let invalid = |e: String| json!({"type": "error", "code": "invalid_message", "error": e});
    let v: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return invalid(format!("invalid JSON: {e}")),
    };
    let kind = match v.get("type").and_then(Value::as_str) {
        Some(k @ ("ack" | "nack" | "extend")) => k.to_string(),
        _ => {
            return invalid(
                "expected {\"type\":\"ack\"|\"nack\"|\"extend\",\"ids\":[…]}".to_string(),
            );
        }
    };
    let body: SettleBody = match serde_json::from_value(v) {
        Ok(b) => b,
        Err(e) => return invalid(e.to_string()),
    };
    let (ids, op) = match settle_of(&kind, body) {
        Ok(x) => x,
        Err(e) => return invalid(e.message.clone()),
    };
    let mut s = match settle(app, agent.clone(), ids, op).await {
        Ok(s) => s,
        Err(e) => return json!({"type": "error", "code": "unavailable", "error": e.message}),
    };
    if let Err(e) = durable(&mut s).await {
        return json!({"type": "error", "code": "storage_unavailable", "error": e.message});
    }
    if let Err(e) = ack_elsewhere(app, agent, &kind, &mut s).await {
        return json!({"type": "error", "code": e.code, "error": e.message});
    }
    match kind.as_str() {
        "extend" => {
            if let Some(at) = s.lease_expires_at {
                for id in &s.done {
                    held.insert(*id, at);
                }
            }
        }
        _ => {
            for id in s.done.iter().chain(&s.expired) {
                held.remove(id);
            }
        }
    }
    for id in &s.expired {
        held.remove(id);
    }
    // The socket's frame: the answer's ids under `ids`, its kind in `type`.
    let mut out = json!({ "type": done_name(&kind), "ids": s.done, "expired": s.expired });
    if let Some(at) = s.lease_expires_at {
        out["leaseExpiresAt"] = json!(at);
    }
    out
}
