//! The archive for operators: `GET /admin/events` and `GET /admin/events/{id}`.

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use serde_json::{Value, json};
use uuid::Uuid;

use super::error::{ApiError, ApiResult};
use super::query::{decode_cursor, encode_cursor, parse_int, query_pairs};
use crate::event::EventHeader;
use crate::http::AppState;
use crate::store::{EventQuery, EventRecord, EventStatus};

const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 500;

fn parse_query(raw: &Option<String>) -> ApiResult<EventQuery> {
    let mut q = EventQuery {
        limit: DEFAULT_LIMIT,
        ..Default::default()
    };
    for (k, v) in query_pairs(raw) {
        match k.as_str() {
            "source" => q.source = Some(v),
            "type" => q.event_type = Some(v),
            "since" => q.since = Some(parse_int("since", &v)?),
            "until" => q.until = Some(parse_int("until", &v)?),
            "status" => {
                q.status = Some(match v.as_str() {
                    "processed" => EventStatus::Processed,
                    "filtered" => EventStatus::Filtered,
                    _ => {
                        return Err(ApiError::bad_request(
                            "status must be \"processed\" or \"filtered\"",
                        ));
                    }
                })
            }
            "limit" => {
                let n = parse_int("limit", &v)?;
                if !(1..=MAX_LIMIT as i64).contains(&n) {
                    return Err(ApiError::bad_request(format!(
                        "limit must be from 1 to {MAX_LIMIT}"
                    )));
                }
                q.limit = n as usize;
            }
            "cursor" => q.before = Some(decode_cursor(&v)?),
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter \"{}\" (known: source, type, since, until, status, limit, cursor)",
                    other.chars().take(64).collect::<String>()
                )));
            }
        }
    }
    Ok(q)
}

/// The stored event object, with `filtered` added so a list shows what happened to each.
fn item(rec: &EventRecord) -> ApiResult<Value> {
    let mut ev = rec.event_json()?;
    if let Value::Object(m) = &mut ev {
        m.insert("filtered".into(), Value::Bool(rec.filtered));
    }
    Ok(ev)
}

pub async fn list(State(app): State<AppState>, RawQuery(raw): RawQuery) -> ApiResult<Json<Value>> {
    let mut q = parse_query(&raw)?;
    let limit = q.limit;
    // One extra row tells whether there is a next page.
    q.limit = limit + 1;
    let mut rows = app.store.list_events(q).await?;
    let next = if rows.len() > limit {
        rows.truncate(limit);
        rows.last().map(|r| encode_cursor(r.id))
    } else {
        None
    };
    let items = rows.iter().map(item).collect::<ApiResult<Vec<_>>>()?;
    Ok(Json(json!({ "items": items, "nextCursor": next })))
}

/// The archived event with this id, or a 404.
async fn find_event(app: &AppState, id: &str) -> ApiResult<EventRecord> {
    let missing = || ApiError::not_found("No event with that id");
    let id = Uuid::parse_str(id).map_err(|_| missing())?;
    app.store.get_event(id).await?.ok_or_else(missing)
}

pub async fn get_one(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let rec = find_event(&app, &id).await?;
    let id = rec.id;
    let deliveries = app.store.event_deliveries(id).await?;
    Ok(Json(json!({
        "event": rec.event_json()?,
        "filtered": rec.filtered,
        "deliveries": deliveries,
    })))
}

/// `POST /admin/events/{id}/replay`: routes an archived event again under the current rules and
/// creates fresh deliveries for it.
pub async fn replay(State(app): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let rec = find_event(&app, &id).await?;
    let id = rec.id;
    let mut event = rec.event_json()?;
    let str_field = |k: &str| event.get(k).and_then(Value::as_str).map(str::to_string);
    let head = EventHeader {
        id: rec.id,
        source: rec.source.clone(),
        event_type: rec.event_type.clone(),
        action: str_field("action"),
        delivery_id: str_field("deliveryId"),
        timestamp: rec.timestamp,
    };
    let body = bytes::Bytes::from(rec.body.clone());
    let plan = app.rules.plan(&head, &mut event, &body);
    let deliveries: Vec<Value> = plan
        .deliveries
        .iter()
        .map(|d| {
            json!({
                "id": d.id,
                "agentId": d.agent_id,
                "routeId": d.route_id,
                "priority": d.priority,
                "status": d.status,
            })
        })
        .collect();
    if !plan.deliveries.is_empty() {
        app.store.add_deliveries(id, plan.deliveries).await?;
        app.queue.enqueue_unreserved(plan.jobs);
    }
    // Not published to live streams: they show events in id order, and a replayed event has
    // an old id (a stream client sees it by resuming from before it).
    Ok(Json(json!({
        "eventId": id,
        "processed": plan.processed,
        "routed": plan.routed,
        "deliveries": deliveries,
    })))
}
