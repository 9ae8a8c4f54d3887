//! The archive for operators: `GET /admin/events` and `GET /admin/events/{id}`, replay, and
//! erasure (`DELETE /admin/events/{id}`, `POST /admin/erasures`).

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::error::{ApiError, ApiResult};
use super::query::{decode_cursor, encode_cursor, parse_int, query_pairs};
use crate::clock::now_ms;
use crate::event::EventHeader;
use crate::http::AppState;
use crate::rules::condition::json_eq;
use crate::rules::path::FieldPath;
use crate::store::{DeliveryTally, EventQuery, EventRecord, EventStatus};

const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 500;

/// How many archived events one search (`q`, `outcome`) examines at most, newest first within
/// the indexed narrowing (`source`, `type`, `since`, `until`, `status`). A search is a scan of
/// the events' text, so it is bounded per request rather than indexed: one request costs the
/// same on a thousand events as on a million, and `nextCursor` continues from where it stopped.
const SEARCH_SCAN: usize = 5_000;

/// How far a search may be given: longer text is refused rather than scanned for.
const MAX_SEARCH_LEN: usize = 200;

/// What happened to an event's deliveries, as the lists show it (`outcome`).
const OUTCOMES: &[&str] = &[
    "delivered",
    "pending",
    "retrying",
    "dead",
    "filtered",
    "unrouted",
    "streamed",
    "superseded",
    "cancelled",
];

/// `GET /admin/events`' parameters beyond the store's own narrowing.
#[derive(Default)]
struct Search {
    /// Case-insensitive text looked for in the event as stored (its id, source, type, action,
    /// payload and metadata as JSON text).
    text: Option<regex::Regex>,
    /// Outcomes wanted; empty = any.
    outcomes: Vec<&'static str>,
}

impl Search {
    fn is_set(&self) -> bool {
        self.text.is_some() || !self.outcomes.is_empty()
    }
}

fn parse_search(raw: &Option<String>) -> ApiResult<Search> {
    let mut search = Search::default();
    for (k, v) in query_pairs(raw) {
        match k.as_str() {
            "q" => {
                let text = v.trim();
                if text.chars().count() > MAX_SEARCH_LEN {
                    return Err(ApiError::bad_request(format!(
                        "q must be at most {MAX_SEARCH_LEN} characters"
                    )));
                }
                if !text.is_empty() {
                    let re = regex::RegexBuilder::new(&regex::escape(text))
                        .case_insensitive(true)
                        .build()
                        .map_err(|e| ApiError::bad_request(format!("q: {e}")))?;
                    search.text = Some(re);
                }
            }
            "outcome" => {
                for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                    let Some(known) = OUTCOMES.iter().find(|o| **o == part) else {
                        return Err(ApiError::bad_request(format!(
                            "outcome must be one or more (comma-separated) of: {}",
                            OUTCOMES.join(", ")
                        )));
                    };
                    search.outcomes.push(known);
                }
            }
            _ => {}
        }
    }
    Ok(search)
}

/// An event's outcome from its filtering and how its deliveries stand: the worst first (a dead
/// delivery outweighs delivered ones).
fn outcome(rec: &EventRecord, tally: Option<&DeliveryTally>) -> &'static str {
    if rec.filtered {
        return "filtered";
    }
    let Some(t) = tally else { return "unrouted" };
    if t.dead > 0 {
        "dead"
    } else if t.retrying > 0 {
        "retrying"
    } else if t.pending > 0 {
        "pending"
    } else if t.delivered > 0 {
        "delivered"
    } else if t.superseded > 0 {
        "superseded"
    } else if t.streamed > 0 {
        "streamed"
    } else if t.cancelled > 0 {
        "cancelled"
    } else {
        "unrouted"
    }
}

fn parse_query(raw: &Option<String>) -> ApiResult<EventQuery> {
    let mut q = EventQuery {
        limit: DEFAULT_LIMIT,
        ..Default::default()
    };
    for (k, v) in query_pairs(raw) {
        match k.as_str() {
            // Read by `parse_search`.
            "q" | "outcome" => {}
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
                    "unknown query parameter \"{}\" (known: source, type, since, until, status, q, outcome, limit, cursor)",
                    other.chars().take(64).collect::<String>()
                )));
            }
        }
    }
    Ok(q)
}

/// How many filters and routes a list row's `explanation` names at most (`omitted` counts the
/// rest); the event's own page names them all.
const LIST_EXPLAIN_NAMES: usize = 10;

/// Why an event went nowhere, under the rules as they are now, as the API shows it. `cap`
/// bounds how many include filters and routes are named (`None`: all of them).
fn explanation_json(rules: &crate::rules::RuleSet, event: &Value, cap: Option<usize>) -> Value {
    let mut why = rules.explain(event);
    if cap.is_some() {
        // The matching routes first, so that a cut list still names them.
        why.routes.sort_by_key(|(_, matched)| !*matched);
    }
    let cap = cap.unwrap_or(usize::MAX);
    let omitted =
        why.unmatched_includes.len().saturating_sub(cap) + why.routes.len().saturating_sub(cap);
    let mut v = json!({
        "excludedBy": why.excluded_by.as_deref(),
        "unmatchedIncludes": why.unmatched_includes.iter().take(cap).map(|f| &**f).collect::<Vec<_>>(),
        "routesChecked": why.routes.iter()
            .take(cap)
            .map(|(id, matched)| json!({"id": &**id, "matched": matched}))
            .collect::<Vec<_>>(),
    });
    if cap != usize::MAX {
        v["omitted"] = omitted.into();
    }
    v
}

/// The stored event object, with `filtered`, `outcome` and, for an event that went nowhere
/// (`filtered` or `unrouted`), the `explanation` of its page (naming at most
/// `LIST_EXPLAIN_NAMES` filters and routes) added, so a list shows what happened to each.
fn item(rec: &EventRecord, outcome: &str, rules: &crate::rules::RuleSet) -> ApiResult<Value> {
    let mut ev = rec.event_json()?;
    let explanation = if rec.erased_at.is_none() && matches!(outcome, "filtered" | "unrouted") {
        explanation_json(rules, &ev, Some(LIST_EXPLAIN_NAMES))
    } else {
        Value::Null
    };
    if let Value::Object(m) = &mut ev {
        m.insert("filtered".into(), Value::Bool(rec.filtered));
        m.insert("outcome".into(), Value::String(outcome.into()));
        m.insert("explanation".into(), explanation);
    }
    Ok(ev)
}

/// The outcome of each event of a page.
async fn outcomes(app: &AppState, rows: &[EventRecord]) -> ApiResult<Vec<&'static str>> {
    let routed: Vec<Uuid> = rows.iter().filter(|r| !r.filtered).map(|r| r.id).collect();
    let tallies: std::collections::HashMap<Uuid, DeliveryTally> = if routed.is_empty() {
        Default::default()
    } else {
        app.store
            .delivery_tallies(routed)
            .await?
            .into_iter()
            .collect()
    };
    Ok(rows
        .iter()
        .map(|r| outcome(r, tallies.get(&r.id)))
        .collect())
}

pub async fn list(State(app): State<AppState>, RawQuery(raw): RawQuery) -> ApiResult<Json<Value>> {
    let mut q = parse_query(&raw)?;
    let search = parse_search(&raw)?;
    let limit = q.limit;
    if search.is_set() {
        return search_list(&app, q, &search).await;
    }
    // One extra row tells whether there is a next page.
    q.limit = limit + 1;
    let mut rows = app.store.list_events(q).await?;
    let next = if rows.len() > limit {
        rows.truncate(limit);
        rows.last().map(|r| encode_cursor(r.id))
    } else {
        None
    };
    let outcomes = outcomes(&app, &rows).await?;
    let compiled = app.rules.current();
    let items = rows
        .iter()
        .zip(outcomes)
        .map(|(r, o)| item(r, o, &compiled.rules))
        .collect::<ApiResult<Vec<_>>>()?;
    Ok(Json(json!({ "items": items, "nextCursor": next })))
}

/// A search: the archive read newest first, page by page, keeping the events that match, until
/// `limit` matched or `SEARCH_SCAN` events were examined. `nextCursor` continues after the last
/// event examined (so a page may hold fewer than `limit` and still have a next one), and
/// `scanned` says how many were examined.
async fn search_list(app: &AppState, mut q: EventQuery, search: &Search) -> ApiResult<Json<Value>> {
    let limit = q.limit;
    let mut items = Vec::new();
    let mut scanned = 0usize;
    let mut last_examined: Option<Uuid> = None;
    let mut exhausted = false;
    let compiled = app.rules.current_full();
    'pages: while items.len() < limit && scanned < SEARCH_SCAN {
        q.limit = MAX_LIMIT.min(SEARCH_SCAN - scanned);
        q.before = last_examined.or(q.before);
        let rows = app.store.list_events(q.clone()).await?;
        if rows.len() < q.limit {
            exhausted = true;
        }
        let candidates: Vec<EventRecord> = rows
            .iter()
            .filter(|r| search.text.as_ref().is_none_or(|re| re.is_match(&r.body)))
            .cloned()
            .collect();
        let found = outcomes(app, &candidates).await?;
        let mut matched: std::collections::HashMap<Uuid, (&EventRecord, &'static str)> = candidates
            .iter()
            .zip(found)
            .filter(|(_, o)| search.outcomes.is_empty() || search.outcomes.contains(o))
            .map(|(r, o)| (r.id, (r, o)))
            .collect();
        for r in &rows {
            scanned += 1;
            last_examined = Some(r.id);
            if let Some((m, o)) = matched.remove(&r.id) {
                items.push(item(m, o, &compiled.rules)?);
                if items.len() == limit {
                    // The rest of this page is not examined: the cursor resumes after `r`.
                    exhausted = false;
                    break 'pages;
                }
            }
        }
        if exhausted {
            break;
        }
    }
    let next = if exhausted {
        None
    } else {
        last_examined.map(encode_cursor)
    };
    Ok(Json(
        json!({ "items": items, "nextCursor": next, "scanned": scanned }),
    ))
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
    let event = rec.event_json()?;
    // Why it went nowhere, when it did: under the rules as they are now.
    let explanation = if rec.erased_at.is_none() && (rec.filtered || deliveries.is_empty()) {
        explanation_json(&app.rules.current().rules, &event, None)
    } else {
        Value::Null
    };
    // What each delivery sends, when a route's transformation made it differ from the event.
    // Read apart from the deliveries and best-effort: the event and its attempt log are what an
    // operator needs first, and they are shown even when the bodies cannot be read.
    let ids = deliveries.iter().map(|d| d.id).collect::<Vec<_>>();
    let bodies: std::collections::HashMap<Uuid, String> = if ids.is_empty() {
        Default::default()
    } else {
        match app.store.delivery_bodies(ids).await {
            Ok(found) => found.into_iter().collect(),
            Err(e) => {
                tracing::warn!(event_id = %id, error = %e, "reading the bodies of an event's deliveries failed");
                Default::default()
            }
        }
    };
    let deliveries = deliveries
        .iter()
        .map(|d| {
            let mut v = serde_json::to_value(d).map_err(|e| ApiError::internal("a delivery", e))?;
            let sent = bodies.get(&d.id).filter(|b| **b != rec.body);
            v["requestBody"] = json!(sent);
            Ok(v)
        })
        .collect::<ApiResult<Vec<_>>>()?;
    let mut answer = json!({
        "event": event,
        "filtered": rec.filtered,
        "deliveries": deliveries,
        "explanation": explanation,
    });
    if let Some(at) = rec.erased_at {
        answer["erasedAt"] = json!(at);
    }
    Ok(Json(answer))
}

/// `DELETE /admin/events/{id}`: erases the event (see `EventStore::erase_events`) and drops its
/// deliveries from the scheduler. Erasing an erased event again changes nothing.
pub async fn erase(State(app): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    let rec = find_event(&app, &id).await?;
    let erased = app.store.erase_events(vec![rec.id], now_ms()).await?;
    app.queue.cancel_events(erased).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ErasureRequest {
    source: Option<String>,
    field: String,
    equals: Value,
}

/// Events read per page while looking for matches, and erased per transaction.
const ERASE_PAGE: usize = 500;

/// `POST /admin/erasures {"source"?, "field", "equals"}`: erases every event where `field` (a
/// dot path into the event, as in filter conditions; any element of an array it crosses)
/// equals `equals`, page by page from the newest, and answers `{"erased": n}`. A string
/// `equals` also matches a number or boolean written the same way (`"1234"` matches `1234`).
pub async fn erase_matching(State(app): State<AppState>, body: Bytes) -> ApiResult<Json<Value>> {
    super::error::json_syntax(&body)?;
    let de = &mut serde_json::Deserializer::from_slice(&body);
    let req: ErasureRequest = serde_path_to_error::deserialize(de)
        .map_err(|e| ApiError::json(&e.path().to_string(), e.inner()))?;
    let path = FieldPath::parse(&req.field).map_err(|m| ApiError::validation("field", m))?;
    match &req.equals {
        Value::String(_) | Value::Number(_) | Value::Bool(_) => {}
        _ => {
            return Err(ApiError::validation(
                "equals",
                "must be a string, a number or a boolean",
            ));
        }
    }
    if let Some(source) = &req.source
        && source.is_empty()
    {
        return Err(ApiError::validation("source", "must not be empty"));
    }
    let now = now_ms();
    let mut erased = 0usize;
    let mut before = None;
    loop {
        let page = app
            .store
            .list_events(EventQuery {
                source: req.source.clone(),
                limit: ERASE_PAGE,
                before,
                ..Default::default()
            })
            .await?;
        let Some(last) = page.last() else { break };
        before = Some(last.id);
        let full = page.len() == ERASE_PAGE;
        let mut hits = Vec::new();
        for rec in page.iter().filter(|r| r.erased_at.is_none()) {
            let event = rec.event_json()?;
            if path.any(&event, &mut |v| {
                v.is_some_and(|v| erasure_match(v, &req.equals))
            }) {
                hits.push(rec.id);
            }
        }
        if !hits.is_empty() {
            let done = app.store.erase_events(hits, now).await?;
            erased += done.len();
            app.queue.cancel_events(done).await;
        }
        if !full {
            break;
        }
    }
    Ok(Json(json!({ "erased": erased })))
}

/// A filter condition's `equals` (`json_eq`), and a string also matching a number or boolean
/// written the same way.
fn erasure_match(v: &Value, equals: &Value) -> bool {
    match (v, equals) {
        (Value::Number(a), Value::String(b)) => a.to_string() == *b,
        (Value::Bool(a), Value::String(b)) => a.to_string() == *b,
        _ => json_eq(v, equals, false),
    }
}

/// `POST /admin/events/{id}/replay`: routes an archived event again under the current rules and
/// creates fresh deliveries for it.
pub async fn replay(State(app): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let rec = find_event(&app, &id).await?;
    if rec.erased_at.is_some() {
        return Err(ApiError::conflict(
            "The event was erased: there is nothing to replay",
        ));
    }
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

/// The route id a test delivery carries (it was made by no route).
pub const TEST_ROUTE: &str = "dashboard-test";

/// `POST /admin/agents/{id}/test`: archives a small event (source `router`, type `agent.test`)
/// with one delivery to this push (or pull) agent, made at once and attempted once (no retries), outside
/// the routes. Answers `200 {"eventId", "deliveryId"}`; its outcome is that event's delivery.
pub async fn test_agent(
    State(app): State<AppState>,
    Path(agent_id): Path<String>,
) -> ApiResult<Json<Value>> {
    let agent = app
        .rules
        .current()
        .rules
        .agent(&agent_id)
        .cloned()
        .ok_or_else(|| ApiError::not_found("No agent with that id"))?;
    if agent.url.is_none() && !agent.is_pull() {
        return Err(ApiError::conflict(
            "The agent has no url: it receives events by streaming, and a test event is pushed \
             (or leased, to a pull agent)",
        ));
    }
    let (id, timestamp) = crate::event::new_event_id();
    let body = json!({
        "id": id,
        "source": crate::ingest::operational::ROUTER,
        "type": "agent.test",
        "action": null,
        "deliveryId": null,
        "timestamp": timestamp,
        "payload": {
            "agentId": agent_id,
            "message": "A test event sent by an operator: answer 2xx to acknowledge it.",
        },
        "metadata": {"identifier": "dashboard", "clientIp": "", "receivedBytes": 0, "headers": {}},
    })
    .to_string();
    let delivery_id = Uuid::now_v7();
    let once = r#"{"maxAttempts":1,"backoffStrategy":"fixed","baseDelay":1000,"maxDelay":1000,"jitter":false}"#;
    let delivery = crate::store::NewDelivery {
        id: delivery_id,
        agent_id: agent_id.clone(),
        route_id: TEST_ROUTE.into(),
        priority: 0,
        status: crate::store::DeliveryStatus::Pending,
        body: None,
        retry_policy: Some(once.into()),
        next_attempt_at: timestamp,
        last_error: None,
        sequencing: Default::default(),
        trace_context: None,
    };
    app.store
        .commit_event(crate::store::NewEvent {
            id,
            source: crate::ingest::operational::ROUTER.into(),
            event_type: "agent.test".into(),
            action: None,
            delivery_id: None,
            timestamp,
            filtered: false,
            body: Bytes::from(body.clone()),
            deliveries: vec![delivery],
            streamed: vec![],
        })
        .await?;
    app.queue.requeue(
        vec![crate::store::PendingDelivery {
            id: delivery_id,
            event_id: id,
            agent_id,
            route_id: TEST_ROUTE.into(),
            priority: 0,
            attempts: 0,
            retry_base: 0,
            next_attempt_at: timestamp,
            retry_policy: Some(once.into()),
            source: crate::ingest::operational::ROUTER.into(),
            event_type: "agent.test".into(),
            body: Some(body),
            created_at: timestamp,
            sequencing: Default::default(),
            superseded: Default::default(),
            trace_context: None,
            lease_consumer: None,
        }],
        app.rules.default_policy(),
    );
    Ok(Json(json!({ "eventId": id, "deliveryId": delivery_id })))
}
