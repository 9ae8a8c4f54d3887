//! `POST /webhook/{source}`: the ingest stages in order, and the answer. Each stage is a function
//! in `crate::ingest`; this handler only calls them and turns the outcome into HTTP.

use std::cell::Cell;
use std::net::SocketAddr;
use std::time::Instant;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, OriginalUri, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tracing::Instrument as _;

use super::AppState;
use super::auth::is_agent_key;
use super::error::ApiError;
use crate::ingest::commit::{Committed, commit};
use crate::ingest::dedupe::{self, Original};
use crate::ingest::{IngestError, Prepared, admit, read, route};
use crate::providers::{GetRefusal, Handshake, RequestLine};
use crate::ratelimit::Decision;
use crate::store::CommitOutcome;
use crate::telemetry::trace;

pub async fn webhook(
    State(app): State<AppState>,
    source: Result<Path<String>, PathRejection>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let received = Instant::now();
    // A name that does not even decode (invalid UTF-8) is no source we know.
    let source = source.map(|Path(s)| s).unwrap_or_default();
    let line = RequestLine {
        method: method.as_str(),
        path_and_query: uri.path_and_query().map_or("/", |p| p.as_str()),
    };
    match receive(&app, &source, peer, line, &headers, body, received).await {
        Ok(resp) => resp,
        Err(e) => {
            tracing::debug!(source = %source, code = e.code, "webhook refused");
            let known = app.ingest.knows(&source).then_some(source.as_str());
            app.analytics.rejected(known, e.status.as_u16(), e.code);
            app.analytics.recent.refused(
                &source,
                e.status.as_u16(),
                e.code,
                &e.message,
                &peer.ip().to_string(),
            );
            e.into_response()
        }
    }
}

/// `GET /webhook/{source}`: the provider's check of the endpoint before it sends events (Meta's
/// `hub.challenge`), answered with the challenge as `text/plain` and stored nowhere. A source
/// whose provider sends no such check answers `405`, as before there was this route.
/// `HEAD /webhook/{source}`: `200` with no body for a known source, configured or not, so that
/// providers that check an endpoint is reachable before saving it (Intercom) can; `404` for any
/// other name. Nothing is read or stored.
pub async fn reachable(
    State(app): State<AppState>,
    source: Result<Path<String>, PathRejection>,
) -> StatusCode {
    let name = source.map(|Path(s)| s).unwrap_or_default();
    if app.ingest.knows(&name) {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    }
}

pub async fn verify_get(
    State(app): State<AppState>,
    source: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Response {
    let name = source.map(|Path(s)| s).unwrap_or_default();
    let source = match app.ingest.source(&name) {
        Ok(s) => s,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let token = source.verify_token.as_deref();
    match source
        .provider
        .verify_get(query.as_deref().unwrap_or(""), token)
    {
        None => ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "Method not allowed on this endpoint",
        )
        .into_response(),
        Some(Ok(challenge)) => (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            challenge,
        )
            .into_response(),
        Some(Err(GetRefusal::BadRequest(message))) => {
            ApiError::bad_request(message).into_response()
        }
        Some(Err(GetRefusal::Forbidden)) => ApiError::new(
            StatusCode::FORBIDDEN,
            "invalid_verify_token",
            "The verify token is not this source's",
        )
        .into_response(),
    }
}

async fn receive(
    app: &AppState,
    name: &str,
    peer: SocketAddr,
    line: RequestLine<'_>,
    headers: &HeaderMap,
    body: Body,
    received: Instant,
) -> Result<Response, ApiError> {
    let ingest = &app.ingest;
    if let Some(answer) = ingest.unsigned_handshake(name, headers) {
        keep_handed_over_secret(app, name, &answer).await;
        return Ok(handshake(answer));
    }
    let source = ingest.source(name)?;
    let bytes = read::read_body(body, headers, app.config.max_event_size).await?;
    let client_ip = peer.ip().to_string();
    // A wrong `Authorization: Bearer` key on `internal` is a failed agent authentication, and
    // counts toward the per-address throttle.
    let (prepared, pending) = {
        let wrong_bearer = Cell::new(false);
        let agent_key = |auth: &[u8]| {
            let ok = is_agent_key(app, auth);
            wrong_bearer.set(!ok);
            ok
        };
        let _verify = trace::stage("verify").entered();
        match ingest.prepare(&source, line, headers, &bytes, &client_ip, &agent_key) {
            Err(e) if wrong_bearer.get() => {
                return Err(match app.auth_throttle.failed(peer.ip()) {
                    Ok(()) => e.into(),
                    Err(retry_after) => super::throttle::too_many_failures(retry_after),
                });
            }
            other => other?,
        }
    };
    let (head, event, raw_json, payload_deferred) = match prepared {
        Prepared::Handshake(answer) => return Ok(handshake(answer)),
        Prepared::Event {
            head,
            event,
            raw_json,
            payload_deferred,
        } => (head, event, raw_json, payload_deferred),
    };
    tracing::Span::current().record("event_id", tracing::field::display(head.id));
    trace::event(&head.id, &head.source, &head.event_type, &client_ip);
    // The body the provider expects instead of ours (Discord's deferred interaction response).
    let provider_answer = source.provider.accepted_answer(&head);
    if let Some(original) = dedupe::dedupe(&ingest.dedupe, &head) {
        app.analytics.duplicate(&source.name);
        return Ok(match provider_answer {
            Some(body) => axum::Json(body).into_response(),
            None => duplicate(original, head.timestamp),
        });
    }
    let admission = admit::admit(
        &ingest.limiter,
        ingest.shared_limits.as_ref(),
        &source.name,
        &event,
        &client_ip,
    )
    .await;
    match &admission {
        Ok(_) | Err(IngestError::RateLimited { .. }) => app.analytics.recent.rate_checked(
            &source.name,
            admit::identifier(&event, &client_ip),
            admission.is_ok(),
        ),
        Err(_) => {}
    }
    let admission = admission?;
    let routed = route::route(
        &ingest.rules,
        &ingest.hub,
        &head,
        event,
        bytes,
        raw_json,
        payload_deferred,
    )
    .instrument(trace::stage("route"))
    .await?;
    let committed = commit(ingest, head, routed, pending, admission.lease).await?;
    match committed.outcome {
        CommitOutcome::Stored => app.analytics.event_accepted(
            &source.name,
            !committed.processed,
            committed.routed,
            received.elapsed(),
        ),
        CommitOutcome::Duplicate { .. } => app.analytics.duplicate(&source.name),
    }
    Ok(answer(committed, &admission.decision, provider_answer))
}

/// A 2xx answer to a webhook (API.md section 3). Typed rather than built with `json!`: that
/// makes a map, its keys and an id string for every webhook before serializing them.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Accepted {
    success: bool,
    event_id: uuid::Uuid,
    processed: bool,
    routed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    duplicate: Option<bool>,
    timestamp: i64,
}

/// The answer to a committed webhook, with the rate limit's headers: the provider's own body
/// when it expects one (`Provider::accepted_answer`), stored or duplicate alike.
fn answer(committed: Committed, limit: &Decision, provider_answer: Option<Value>) -> Response {
    let Committed {
        head,
        outcome,
        processed,
        routed,
    } = committed;
    let mut resp = match (outcome, provider_answer) {
        (_, Some(body)) => axum::Json(body).into_response(),
        (outcome, None) => match outcome {
            CommitOutcome::Stored => axum::Json(Accepted {
                success: true,
                event_id: head.id,
                processed,
                routed,
                duplicate: None,
                timestamp: head.timestamp,
            })
            .into_response(),
            CommitOutcome::Duplicate {
                event_id,
                filtered,
                routed,
            } => duplicate(
                Original {
                    event_id,
                    processed: !filtered,
                    routed,
                },
                head.timestamp,
            ),
        },
    };
    for (k, v) in limit.headers() {
        if let Ok(v) = HeaderValue::from_str(&v) {
            resp.headers_mut().insert(HeaderName::from_static(k), v);
        }
    }
    resp
}

/// The secret an unsigned handshake hands over (Asana's `X-Hook-Secret`, which its API never
/// shows again) is written, with the time, to `DATA_DIR/handshake-secrets/<source>` (owner-only,
/// replaced by the next handshake), for the operator to put in the source's secret variable.
/// It is never logged. Anyone who can reach the endpoint can send a handshake, so the file
/// says which one came last, and when: read it right after creating the webhook.
async fn keep_handed_over_secret(app: &AppState, source: &str, answer: &Handshake) {
    let Handshake::Headers(headers) = answer else {
        return;
    };
    let Some((name, secret)) = headers.first() else {
        return;
    };
    let path = app.config.data_dir.join("handshake-secrets").join(source);
    let text = format!(
        "# {name} of the last handshake on /webhook/{source}, received at {} (ms since the epoch)\n{secret}\n",
        crate::clock::now_ms()
    );
    let written = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
                use std::os::unix::fs::PermissionsExt as _;
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
            }
            crate::crypto::write_private(&path, &text)
        })
        .await
    };
    match written {
        Ok(Ok(())) => tracing::info!(
            source,
            file = %path.display(),
            "the secret this handshake handed over was written to a file (not logged)"
        ),
        Ok(Err(e)) => tracing::warn!(source, error = %e, "cannot keep a handshake's secret"),
        Err(e) => tracing::warn!(source, error = %e, "cannot keep a handshake's secret"),
    }
}

/// A provider's handshake, answered `200` and not stored.
fn handshake(answer: Handshake) -> Response {
    match answer {
        Handshake::Json(v) => axum::Json(v).into_response(),
        Handshake::Text(t) => {
            ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], t).into_response()
        }
        Handshake::Headers(headers) => {
            let mut resp = axum::http::StatusCode::OK.into_response();
            for (name, value) in headers {
                if let Ok(v) = HeaderValue::from_str(&value) {
                    resp.headers_mut().insert(HeaderName::from_static(name), v);
                }
            }
            resp
        }
    }
}

fn duplicate(original: Original, timestamp: i64) -> Response {
    axum::Json(Accepted {
        success: true,
        event_id: original.event_id,
        processed: original.processed,
        routed: original.routed,
        duplicate: Some(true),
        timestamp,
    })
    .into_response()
}
