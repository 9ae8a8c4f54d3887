//! `GET /stream/ws` and `GET /stream/sse`: authenticate, resolve the agent and filters (all
//! before any upgrade), replay what a reconnecting client missed, then stream live.

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::AppState;
use super::auth::{admin_key_matches, bearer};
use crate::clock::now_ms;
use crate::http::error::{ApiError, ApiResult};
use crate::http::query::query_pairs;
use crate::rules::Subscription;
use crate::stream::{FIREHOSE, Message, Registration, sse_frame};

/// Backlog rows read per query while replaying.
const REPLAY_BATCH: usize = 500;

/// Most WebSocket messages written before a flush.
const WS_BATCH: usize = 64;

/// A stream request that passed every check.
struct Opened {
    /// The agent id, or `*`.
    agent: Arc<str>,
    filter: Subscription,
    last_event_id: Option<Uuid>,
    /// The dashboard session's token, when the session cookie opened the stream: the stream
    /// ends when that session does (sign-out or expiry), checked at each heartbeat.
    session: Option<String>,
}

pub(super) fn param<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Auth (401), agent (404), filters and resume id (400) — in that order, before any upgrade.
async fn open(
    app: &AppState,
    peer: SocketAddr,
    raw: &Option<String>,
    headers: &HeaderMap,
    sse: bool,
) -> ApiResult<Opened> {
    let pairs = query_pairs(raw);
    let key: Option<Vec<u8>> = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| bearer(v.as_bytes()).map(<[u8]>::to_vec))
        .or_else(|| param(&pairs, "apiKey").map(|k| k.as_bytes().to_vec()));
    // Without a key, a dashboard session cookie stands for the admin key (so the key never has
    // to be put in a URL). A WebSocket handshake is not covered by CORS, and a page on another
    // origin of the same site (another port) would send the SameSite cookie with it, so a
    // cookie opens a stream only for requests from this origin: a WebSocket handshake always
    // names its origin; a same-origin EventSource sends none, a cross-origin one always does.
    let origin_ok = match headers.get(header::ORIGIN) {
        None => sse,
        Some(_) => same_origin(headers),
    };
    let session = if key.is_none() && origin_ok {
        app.sessions
            .from_headers(headers)
            .await
            .map(|(token, _)| token)
    } else {
        None
    };
    let via_session = session.is_some();
    if key.is_none() && !via_session {
        return Err(app.auth_throttle.refuse(peer.ip()));
    }
    let agent = param(&pairs, "agentId")
        .filter(|a| !a.is_empty())
        .ok_or_else(|| {
            ApiError::bad_request("agentId is required (an agent id, or * with the admin key)")
        })?;
    let is_admin = via_session || key.as_deref().is_some_and(|k| admin_key_matches(app, k));
    if agent == FIREHOSE {
        if !is_admin {
            return Err(app.auth_throttle.refuse(peer.ip()));
        }
    } else {
        // API.md section 7: an agent's stream opens with AGENT_API_KEY or the agent's own key
        // (the admin key, and so a dashboard session, opens the `*` firehose).
        let allowed = match key.as_deref().and_then(|k| app.rules.agent_for_key(k)) {
            Some(None) => true,
            Some(Some(own)) => &*own == agent,
            None => false,
        };
        if !allowed {
            return Err(app.auth_throttle.refuse(peer.ip()));
        }
        if app.rules.current().rules.agent(agent).is_none() {
            return Err(ApiError::not_found(format!(
                "No agent with id \"{}\"",
                agent.chars().take(128).collect::<String>()
            )));
        }
    }
    let filter = match param(&pairs, "filters") {
        Some(f) if !f.trim().is_empty() => Subscription::parse(f).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_filters",
                format!("Invalid filters: {e}"),
            )
        })?,
        _ => Subscription::all(),
    };
    let last = if sse {
        headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| param(&pairs, "lastEventId").map(str::to_string))
    } else {
        param(&pairs, "lastEventId").map(str::to_string)
    };
    let last_event_id = match last.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        Some(s) => Some(Uuid::parse_str(s).map_err(|_| not_issued())?),
        None => None,
    };
    Ok(Opened {
        agent: Arc::from(agent),
        filter,
        last_event_id,
        session,
    })
}

fn not_issued() -> ApiError {
    ApiError::bad_request("lastEventId / Last-Event-ID must be an event id this server issued")
}

/// How far ahead of this node's clock another node's event id may be, ms (clock differences
/// between nodes).
const CLOCK_SKEW_MS: i64 = 5_000;

/// A resume id is one this server issued: a UUID v7 (the only ids it makes), not from the
/// future, and an archived event (or an erased one's tombstone) — unless it is older than the
/// shortest retention, when it may have been purged since (the replay then starts at the
/// oldest event kept). Anything else would
/// resume from a point the client never saw: refused, before any upgrade.
async fn check_resume(app: &AppState, opened: &Opened) -> ApiResult<()> {
    let Some(id) = opened.last_event_id else {
        return Ok(());
    };
    if id.get_version_num() != 7 {
        return Err(not_issued());
    }
    let at = uuid_ms(&id);
    let now = now_ms();
    if at > now + CLOCK_SKEW_MS {
        return Err(not_issued());
    }
    // The shortest retention any event may have (a source's own, the dead letters'): an id
    // older than that may have been purged, so only a younger one must still be there (an
    // erased event's tombstone is).
    let cfg = &app.config;
    let shortest = cfg
        .sources
        .values()
        .filter_map(|s| s.retention_days)
        .chain(cfg.dlq_retention_days)
        .fold(cfg.retention_days, u32::min);
    let retained_from = now - i64::from(shortest) * 86_400_000;
    if at >= retained_from && app.store.get_event(id).await?.is_none() {
        return Err(not_issued());
    }
    Ok(())
}

/// Whether the request's `Origin` is this server (its `Host`, or the `X-Forwarded-Host` a proxy
/// passed on). A browser always sends `Origin` with a WebSocket handshake, and a page cannot
/// forge either header there.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Some((_, authority)) = origin.split_once("://") else {
        return false;
    };
    [header::HOST.as_str(), "x-forwarded-host"]
        .iter()
        .filter_map(|h| headers.get(*h).and_then(|v| v.to_str().ok()))
        .any(|host| host.eq_ignore_ascii_case(authority))
}

/// What a session sends, transport-neutral.
enum Out {
    Event(Arc<Message>),
    Text(String),
    /// The stream ends; the reason is shown to the client.
    Close {
        code: u16,
        reason: String,
    },
}

fn heartbeat() -> String {
    json!({"type": "heartbeat", "timestamp": now_ms()}).to_string()
}

/// Replays the backlog after `last` up to `bound`, then forwards live messages and heartbeats,
/// until the client goes, the buffer overflows, or shutdown. Streams carry events in id order
/// (see `sequencer`): every event below `bound` was published before the subscription, so it
/// comes from the store; every event from `bound` on arrives live. No gap, no duplicate.
async fn feed(
    app: AppState,
    opened: Opened,
    sub: (Registration, mpsc::Receiver<Arc<Message>>, Uuid),
    out: mpsc::Sender<Out>,
) {
    let (reg, mut live, bound) = sub;
    let hub_stats = &app.hub.stats;
    // On several nodes, other nodes' events reach this node's streams after their commit and
    // not in id order, so the seam is kept differently: the replay runs past `bound` to a
    // ceiling a little after now (every event with a larger id commits after this
    // subscription, so arrives live), and live messages the replay already sent are skipped.
    // A node alone on PostgreSQL streams exactly as one on SQLite: its own events reach its
    // streams in id order (the sequencer), and no other node's can arrive.
    let clustered = match app.store.node_id() {
        Some(_) => app
            .store
            .live_nodes()
            .await
            .map_or(true, |nodes| nodes.len() > 1),
        None => false,
    };
    let bound = if clustered {
        bound.max(id_floor(crate::clock::now_ms() + CLUSTER_CEILING_MS))
    } else {
        bound
    };
    let mut replayed: HashSet<Uuid> = HashSet::new();
    let recent_floor = id_floor(uuid_ms(&bound) - CLUSTER_SEAM_MS);
    // On several nodes events reach streams out of id order (another node's event arrives
    // when its notice does, after this node's later ones): a client may have seen an id before
    // a smaller one from elsewhere, so "after the last id it saw" can skip an event. A resume there starts
    // `CLUSTER_REWIND_MS` before that id instead: the client may see some events again
    // (at-least-once, as docs/streaming.md says) and misses none.
    let resume_from = opened.last_event_id.map(|last| {
        if clustered {
            id_floor(uuid_ms(&last) - CLUSTER_REWIND_MS).min(last)
        } else {
            last
        }
    });
    if let Some(mut after) = resume_from {
        let agent = (&*opened.agent != FIREHOSE).then(|| opened.agent.to_string());
        loop {
            let batch = match app
                .store
                .stream_backlog(agent.clone(), after, REPLAY_BATCH)
                .await
            {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "stream replay failed");
                    let _ = out
                        .send(Out::Close {
                            code: 1011,
                            reason: "replay failed; reconnect to retry".into(),
                        })
                        .await;
                    return;
                }
            };
            let n = batch.len();
            let mut reached_bound = false;
            for item in batch {
                if item.event_id >= bound {
                    reached_bound = true;
                    break;
                }
                after = item.event_id;
                if clustered && item.event_id >= recent_floor {
                    replayed.insert(item.event_id);
                }
                // Parsed for the filter only: a filter that passes everything needs no tree.
                let filter = reg.subscriber.filter();
                let view = if filter.passes_everything() {
                    Value::Null
                } else {
                    serde_json::from_str(&item.body).unwrap_or(Value::Null)
                };
                if !filter.matches(&view) {
                    continue;
                }
                let msg = Arc::new(Message::new(
                    item.event_id,
                    item.body.as_bytes(),
                    Arc::new(view),
                ));
                if out.send(Out::Event(msg)).await.is_err() {
                    return;
                }
                hub_stats.messages_sent.fetch_add(1, Ordering::Relaxed);
            }
            if n < REPLAY_BATCH || reached_bound {
                break;
            }
        }
    }
    let mut beat = tokio::time::interval(app.config.stream_heartbeat);
    beat.tick().await;
    let shutdown = app.shutdown.clone();
    loop {
        tokio::select! {
            msg = live.recv() => match msg {
                Some(m) => {
                    if !replayed.is_empty() && replayed.remove(&m.event_id) {
                        continue;
                    }
                    if out.send(Out::Event(m)).await.is_err() {
                        return;
                    }
                    hub_stats.messages_sent.fetch_add(1, Ordering::Relaxed);
                }
                None => {
                    let reason = if reg.subscriber.overflowed.load(Ordering::Acquire) {
                        "slow consumer: the stream buffer overflowed; reconnect with lastEventId to resume"
                    } else {
                        "stream closed by the server"
                    };
                    let _ = out.send(Out::Close { code: 1013, reason: reason.into() }).await;
                    return;
                }
            },
            _ = beat.tick() => {
                if let Some(token) = &opened.session
                    && !app.sessions.still_live(token).await
                {
                    let reason = "the dashboard session ended; sign in again";
                    let _ = out.send(Out::Close { code: 1008, reason: reason.into() }).await;
                    return;
                }
                if out.send(Out::Text(heartbeat())).await.is_err() {
                    return;
                }
            }
            _ = shutdown.cancelled() => {
                let _ = out.send(Out::Close { code: 1001, reason: "server shutting down".into() }).await;
                return;
            }
            _ = out.closed() => return,
        }
    }
}

/// How far past now a clustered replay reads (covers clock differences between nodes), ms.
const CLUSTER_CEILING_MS: i64 = 5_000;

/// How far before the client's last event id a resume replays on several nodes, ms: longer
/// than any commit takes to land behind a later id (and than the clock skew `CLUSTER_CEILING_MS`
/// allows for).
const CLUSTER_REWIND_MS: i64 = 5_000;

/// How late another node's event may reach a stream and still be recognised as already
/// replayed, ms.
const CLUSTER_SEAM_MS: i64 = 30_000;

/// The millisecond timestamp of a UUID v7 (its first 48 bits).
fn uuid_ms(id: &Uuid) -> i64 {
    let b = id.as_bytes();
    i64::from_be_bytes([0, 0, b[0], b[1], b[2], b[3], b[4], b[5]])
}

/// The smallest UUID v7 of millisecond `ms` (the archive's `store::id_floor`, as a `Uuid`).
fn id_floor(ms: i64) -> Uuid {
    Uuid::from_bytes(crate::store::id_floor(ms))
}

pub async fn sse(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    let opened = match open(&app, peer, &raw, &headers, true).await {
        Ok(o) => o,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = check_resume(&app, &opened).await {
        return e.into_response();
    }
    let via_session = opened.session.is_some();
    let sub = app
        .sequencer
        .subscribe(&opened.agent, opened.filter.clone());
    let (tx, rx) = mpsc::channel::<Out>(64);
    tokio::spawn(feed(app.clone(), opened, sub, tx));
    let stream = futures_util::stream::unfold((rx, false), |(mut rx, done)| async move {
        if done {
            return None;
        }
        let out = rx.recv().await?;
        let (frame, done) = match out {
            Out::Event(m) => (m.sse_frame(), false),
            Out::Text(t) => (sse_frame(None, &t), false),
            Out::Close { reason, .. } => (
                sse_frame(
                    None,
                    &json!({"type": "close", "reason": reason}).to_string(),
                ),
                true,
            ),
        };
        Some((Ok::<_, Infallible>(frame), (rx, done)))
    });
    // The frames are written by hand (not with axum's `Sse`) so that one event's frame is
    // built once and shared by every SSE subscriber.
    let mut resp = (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        axum::body::Body::from_stream(stream),
    )
        .into_response();
    // A browser's EventSource on a page of another origin may read the stream when the key is
    // in its URL. A stream opened by the session cookie is for the dashboard's own page only
    // (a credentialed cross-origin read would be refused by the browser anyway).
    if !via_session {
        resp.headers_mut().insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            header::HeaderValue::from_static("*"),
        );
    }
    resp
}

pub async fn ws(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    match param(&query_pairs(&raw), "mode") {
        None | Some("stream") => {}
        Some("consume") => {
            return super::consumers::ws_consume(app, peer, raw, headers, upgrade).await;
        }
        Some(_) => {
            return ApiError::bad_request("mode must be stream or consume").into_response();
        }
    }
    let opened = match open(&app, peer, &raw, &headers, false).await {
        Ok(o) => o,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = check_resume(&app, &opened).await {
        return e.into_response();
    }
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(_) => {
            return ApiError::bad_request("this endpoint needs a WebSocket upgrade request")
                .into_response();
        }
    };
    upgrade
        .max_message_size(64 * 1024)
        // Clients send only small `subscribe` messages: a small read buffer keeps an idle
        // connection at a few KiB instead of tungstenite's default 128 KiB.
        .read_buffer_size(4 * 1024)
        .on_upgrade(move |socket| ws_session(app, opened, socket))
}

async fn ws_session(app: AppState, opened: Opened, socket: WebSocket) {
    let sub = app
        .sequencer
        .subscribe(&opened.agent, opened.filter.clone());
    let subscriber = sub.0.subscriber.clone();
    let (sequencer, agent) = (app.sequencer.clone(), opened.agent.clone());
    let (tx, mut rx) = mpsc::channel::<Out>(64);
    let (mut sink, mut stream) = socket.split();
    let feeding = tokio::spawn(feed(app.clone(), opened, sub, tx.clone()));
    // Client messages: `subscribe` changes the filters; answers go out through the same queue.
    let control_tx = tx;
    let reader = tokio::spawn(async move {
        while let Some(Ok(msg)) = stream.next().await {
            let text = match msg {
                WsMessage::Text(t) => t.to_string(),
                WsMessage::Close(_) => break,
                _ => continue,
            };
            let reply = match serde_json::from_str::<Value>(&text) {
                Ok(v) if v.get("type").and_then(Value::as_str) == Some("subscribe") => {
                    match Subscription::from_value(v.get("filters").cloned().unwrap_or(Value::Null))
                    {
                        Ok(sub) => {
                            let spec = serde_json::to_value(sub.spec()).unwrap_or(Value::Null);
                            sequencer.refilter(&agent, &subscriber, sub);
                            json!({"type": "subscription_update", "data": {"filters": spec}})
                        }
                        Err(e) => {
                            json!({"type": "error", "code": "invalid_filters", "error": format!("Invalid filters: {e}")})
                        }
                    }
                }
                _ => {
                    json!({"type": "error", "code": "invalid_message", "error": "expected {\"type\":\"subscribe\",\"filters\":…}"})
                }
            };
            if control_tx.send(Out::Text(reply.to_string())).await.is_err() {
                break;
            }
        }
    });
    let mut reader = reader;
    'session: loop {
        let first = tokio::select! {
            out = rx.recv() => match out {
                Some(o) => o,
                None => break,
            },
            // The client closed or vanished: free everything now.
            _ = &mut reader => break,
        };
        // Whatever else is already queued goes out in the same write: one flush (one
        // syscall) per batch rather than per message when a burst fans out.
        let mut next = Some(first);
        let mut batched = 0;
        while let Some(out) = next.take() {
            let fed = match out {
                Out::Event(m) => sink.feed(WsMessage::Text(m.text.clone())).await,
                Out::Text(t) => sink.feed(WsMessage::Text(t.into())).await,
                Out::Close { code, reason } => {
                    let _ = sink
                        .send(WsMessage::Close(Some(CloseFrame {
                            code,
                            reason: reason.into(),
                        })))
                        .await;
                    break 'session;
                }
            };
            if fed.is_err() {
                break 'session;
            }
            batched += 1;
            if batched < WS_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if sink.flush().await.is_err() {
            break;
        }
    }
    reader.abort();
    feeding.abort();
    // Give a closing handshake a moment; the client may already be gone.
    let _ = tokio::time::timeout(Duration::from_millis(200), sink.close()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_floor_and_uuid_ms_agree_with_v7_ids() {
        let (id, ms) = crate::event::new_event_id();
        assert_eq!(uuid_ms(&id), ms);
        assert!(id_floor(ms) <= id);
        assert!(id_floor(ms + 1) > id);
        assert_eq!(uuid_ms(&id_floor(ms)), ms);
        assert_eq!(id_floor(-5), Uuid::nil());
    }
}
