//! The dead-letter queue and queue figures: `/admin/dlq…` and `GET /queue/stats`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::error::{ApiError, ApiResult};
use super::query::{decode_cursor, encode_cursor, parse_int, query_pairs};
use crate::http::AppState;
use crate::store::DeadFilter;

const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 500;

pub async fn dlq_list(
    State(app): State<AppState>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    let (mut agent, mut source, mut limit, mut before) = (None, None, DEFAULT_LIMIT, None);
    for (k, v) in query_pairs(&raw) {
        match k.as_str() {
            "agentId" => agent = Some(v),
            "source" => source = Some(v),
            "limit" => {
                let n = parse_int("limit", &v)?;
                if !(1..=MAX_LIMIT as i64).contains(&n) {
                    return Err(ApiError::bad_request(format!(
                        "limit must be from 1 to {MAX_LIMIT}"
                    )));
                }
                limit = n as usize;
            }
            "cursor" => before = Some(decode_cursor(&v)?),
            _ => {
                return Err(ApiError::bad_request(
                    "unknown query parameter (known: agentId, source, limit, cursor)",
                ));
            }
        }
    }
    let mut items = app
        .store
        .dead_letters(agent, source, limit + 1, before)
        .await?;
    let next = if items.len() > limit {
        items.truncate(limit);
        items.last().map(|d| encode_cursor(d.id))
    } else {
        None
    };
    Ok(Json(json!({ "items": items, "nextCursor": next })))
}

fn delivery_id(id: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(id).map_err(|_| ApiError::not_found("No dead-lettered delivery with that id"))
}

pub async fn dlq_retry_one(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let id = delivery_id(&id)?;
    let Some(pending) = app.store.retry_dead(id).await? else {
        return Err(ApiError::not_found(
            "No retryable dead-lettered delivery with that id (a delivery whose transformation \
             failed cannot be retried: fix the route, then replay the event)",
        ));
    };
    app.queue.requeue(vec![pending], app.rules.default_policy());
    Ok(Json(json!({ "retried": 1 })))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct BulkRetry {
    agent_id: Option<String>,
    source: Option<String>,
    since: Option<i64>,
}

pub async fn dlq_retry_bulk(State(app): State<AppState>, body: Bytes) -> ApiResult<Json<Value>> {
    let filter: BulkRetry = if body.iter().all(u8::is_ascii_whitespace) {
        BulkRetry::default()
    } else {
        super::error::json_syntax(&body)?;
        let de = &mut serde_json::Deserializer::from_slice(&body);
        serde_path_to_error::deserialize(de)
            .map_err(|e| ApiError::json(&e.path().to_string(), e.inner()))?
    };
    let pending = app
        .store
        .retry_dead_matching(DeadFilter {
            agent_id: filter.agent_id,
            source: filter.source,
            since: filter.since,
        })
        .await?;
    let n = pending.len();
    app.queue.requeue(pending, app.rules.default_policy());
    Ok(Json(json!({ "retried": n })))
}

pub async fn dlq_delete(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let id = delivery_id(&id)?;
    if app.store.delete_dead(id).await? {
        // An ordering key the dead letter held moves on.
        app.queue.dead_removed(id);
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::not_found(
            "No dead-lettered delivery with that id",
        ))
    }
}

pub async fn stats(State(app): State<AppState>) -> ApiResult<Json<Value>> {
    let snap = crate::cluster::queue_snapshot(&app.queue, app.store.as_ref()).await;
    let finished = app.store.finished_counts().await?;
    Ok(Json(json!({
        "pending": snap.pending,
        "inFlight": snap.in_flight,
        "scheduled": snap.scheduled,
        "leased": snap.leased,
        "acked": snap.acked,
        "deadLettered": finished.dead,
        "delivered": finished.delivered,
        "superseded": finished.superseded,
        "oldestPendingAgeMs": snap.oldest_pending_age_ms,
        "byPriority": snap.by_priority,
        "byAgent": snap.by_agent,
    })))
}
