//! The audit log of admin changes: every successful POST/PUT/DELETE under the admin API is
//! recorded (what, which id, when, from which address — never a body, so never a secret),
//! written to the log, and readable at `GET /admin/audit`.

use std::net::SocketAddr;

use axum::Json;
use axum::extract::{ConnectInfo, RawQuery, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::error::{ApiError, ApiResult};
use super::query::{parse_int, query_pairs};
use crate::clock::now_ms;
use crate::http::AppState;
use crate::store::AuditRecord;

/// The action and target of a change, from its method and path.
fn describe(method: &Method, path: &str) -> (String, Option<String>) {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let verb = match *method {
        Method::POST => "create",
        Method::PUT => "replace",
        Method::DELETE => "delete",
        _ => "change",
    };
    match parts.as_slice() {
        // Never the value matched: it is the personal data being erased.
        ["admin", "erasures"] => ("erase matching events".into(), None),
        ["admin", kind] => (format!("{verb} {}", singular(kind)), None),
        ["admin", "dlq", "retry"] => ("retry dead letters".into(), None),
        ["admin", "dlq", id, "retry"] => ("retry dead letter".into(), Some(id.to_string())),
        ["admin", "events", id, "replay"] => ("replay event".into(), Some(id.to_string())),
        ["admin", "events", id] if method == Method::DELETE => {
            ("erase event".into(), Some(id.to_string()))
        }
        ["admin", "dlq", id] => ("delete dead letter".into(), Some(id.to_string())),
        ["admin", "agents", id, "health", "reset"] => {
            ("reset agent health".into(), Some(id.to_string()))
        }
        ["admin", kind, id] => (format!("{verb} {}", singular(kind)), Some(id.to_string())),
        _ => (format!("{verb} {path}"), None),
    }
}

fn singular(kind: &str) -> &str {
    match kind {
        "filters" => "filter",
        "routes" => "route",
        "agents" => "agent",
        "rate-limits" => "rate limit",
        other => other,
    }
}

/// Middleware on the admin routes: records each successful change after it is answered.
pub async fn record(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    if method == Method::GET || method == Method::HEAD {
        return next.run(req).await;
    }
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let client_ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_default();
    let resp = next.run(req).await;
    let status = resp.status();
    if !status.is_success() {
        return resp;
    }
    // A created object's id is in the answer; read it back without keeping the body around.
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let (action, mut target) = describe(&method, &path);
    if target.is_none() {
        let answer = serde_json::from_slice::<Value>(&bytes).ok();
        let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        target = answer
            .as_ref()
            .and_then(|v| {
                text(v, "id").or_else(|| {
                    // PUT /admin/rate-limits answers the config: its key is source:identifier.
                    Some(format!("{}:{}", text(v, "source")?, text(v, "identifier")?))
                })
            })
            .or_else(|| {
                // DELETE /admin/rate-limits?source=&identifier=
                query.as_ref().map(|q| {
                    let pairs = query_pairs(&Some(q.clone()));
                    let get = |k: &str| {
                        pairs
                            .iter()
                            .find(|(n, _)| n == k)
                            .map(|(_, v)| v.clone())
                            .unwrap_or_default()
                    };
                    format!("{}:{}", get("source"), get("identifier"))
                })
            });
    }
    tracing::info!(
        target: "audit",
        action = %action,
        target_id = target.as_deref().unwrap_or(""),
        client_ip = %client_ip,
        status = status.as_u16(),
        "admin change"
    );
    let record = AuditRecord {
        id: 0,
        at: now_ms(),
        client_ip,
        method: method.to_string(),
        path,
        status: status.as_u16(),
        action,
        target_id: target,
    };
    if let Err(e) = app.store.add_audit(record).await {
        tracing::error!(error = %e, "writing the audit log failed");
    }
    Response::from_parts(parts, axum::body::Body::from(bytes))
}

pub async fn list(State(app): State<AppState>, RawQuery(raw): RawQuery) -> ApiResult<Response> {
    let (mut limit, mut before) = (50usize, None);
    for (k, v) in query_pairs(&raw) {
        match k.as_str() {
            "limit" => {
                let n = parse_int("limit", &v)?;
                if !(1..=500).contains(&n) {
                    return Err(ApiError::bad_request("limit must be from 1 to 500"));
                }
                limit = n as usize;
            }
            "cursor" => before = Some(parse_int("cursor", &v)?),
            _ => {
                return Err(ApiError::bad_request(
                    "unknown query parameter (known: limit, cursor)",
                ));
            }
        }
    }
    let mut items = app.store.list_audit(limit + 1, before).await?;
    let next = if items.len() > limit {
        items.truncate(limit);
        items.last().map(|a| a.id.to_string())
    } else {
        None
    };
    Ok(Json(json!({ "items": items, "nextCursor": next })).into_response())
}
