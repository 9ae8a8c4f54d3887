//! `/admin/filters`, `/admin/routes`, `/admin/agents`: list, get, create (409 on a taken id),
//! create-or-replace with PUT, delete. Every change is validated, written to the store, and
//! the compiled rule set is rebuilt and swapped before the answer, so it applies to the very
//! next event.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};

use super::error::{ApiError, ApiResult};
use crate::http::AppState;
use crate::rules::model::{Agent, EventFilter, EventRoute};
use crate::rules::stored::{API_KEY_HASH, parse_stored, prepare_agent};
use crate::rules::{self, ValidationError};
use crate::store::{PutMode, PutOutcome, RuleKind, StoredRule};

fn validation(e: ValidationError) -> ApiError {
    ApiError::validation_at(e.field, e.message, e.position)
}

/// Every problem at once: the first as `field` and `error`, all of them as `errors`.
fn validations(problems: Vec<ValidationError>) -> ApiError {
    ApiError::validations(
        problems
            .into_iter()
            .map(|e| (e.field, e.message, e.position)),
    )
    .unwrap_or_else(|| ApiError::validation("body", "is not valid"))
}

fn to_json<T: Serialize>(v: &T) -> ApiResult<String> {
    serde_json::to_string(v).map_err(|e| ApiError::internal("serialize rule", e))
}

fn kind_name(kind: RuleKind) -> &'static str {
    match kind {
        RuleKind::Filter => "filter",
        RuleKind::Route => "route",
        RuleKind::Agent => "agent",
        RuleKind::RateLimit => "rate limit",
        RuleKind::Meta => "setting",
    }
}

async fn list_kind(app: &AppState, kind: RuleKind) -> ApiResult<Json<Value>> {
    let stored = app.store.list_rules(kind).await?;
    let mut items = Vec::with_capacity(stored.len());
    for r in stored {
        let mut v: Value = serde_json::from_str(&r.body)
            .map_err(|e| ApiError::internal("stored rule is not JSON", e))?;
        if let Value::Object(m) = &mut v {
            m.remove(API_KEY_HASH);
        }
        if kind == RuleKind::Agent {
            add_health(app, &mut v);
            add_consumers(app, &mut v).await;
        }
        items.push(v);
    }
    Ok(Json(json!({ "items": items, "nextCursor": null })))
}

async fn get_kind(app: &AppState, kind: RuleKind, id: String) -> ApiResult<Json<Value>> {
    let found = app
        .store
        .list_rules(kind)
        .await?
        .into_iter()
        .find(|r| r.id == id)
        .ok_or_else(|| ApiError::not_found(format!("No {} with id \"{id}\"", kind_name(kind))))?;
    let mut v: Value =
        serde_json::from_str(&found.body).map_err(|e| ApiError::internal("stored rule", e))?;
    if let Value::Object(m) = &mut v {
        m.remove(API_KEY_HASH);
    }
    if kind == RuleKind::Agent {
        add_health(app, &mut v);
        add_consumers(app, &mut v).await;
    }
    Ok(Json(v))
}

/// A push agent's circuit breaker, as this node's scheduler has it (closed since the server
/// started when nothing went wrong).
fn add_health(app: &AppState, agent: &mut Value) {
    let Value::Object(m) = agent else { return };
    if !m.get("url").is_some_and(Value::is_string) {
        return;
    }
    let id = m.get("id").and_then(Value::as_str).unwrap_or_default();
    let health = app.queue.health_or_closed(id);
    m.insert(
        "health".into(),
        serde_json::to_value(health).unwrap_or(Value::Null),
    );
}

/// A pull agent's consumers as this node's scheduler knows them: name, leases held, last poll.
async fn add_consumers(app: &AppState, agent: &mut Value) {
    let Value::Object(m) = agent else { return };
    if m.get("mode").and_then(Value::as_str) != Some("pull") {
        return;
    }
    let id = m.get("id").and_then(Value::as_str).unwrap_or_default();
    let consumers = app.queue.consumers(id).await;
    m.insert(
        "consumers".into(),
        serde_json::to_value(consumers).unwrap_or(Value::Null),
    );
}

/// `POST /admin/agents/{id}/health/reset`: closes the agent's circuit breaker (its waiting
/// deliveries go at once) and answers the agent with its health.
pub async fn reset_agent_health(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let exists = app
        .store
        .list_rules(RuleKind::Agent)
        .await?
        .iter()
        .any(|r| r.id == id);
    if !exists {
        return Err(ApiError::not_found(format!("No agent with id \"{id}\"")));
    }
    app.queue.reset_health(&id).await;
    if let Err(e) = app.store.announce_breaker(&id, None).await {
        tracing::warn!(agent = %id, error = %e, "telling the other nodes about a breaker reset failed");
    }
    get_kind(&app, RuleKind::Agent, id).await
}

/// The id in a PUT body must match the path (or be absent, then the path's is used). The body
/// is handed on as sent, so that the line and column of a later error are the client's.
fn take_path_id(body: &Bytes, path_id: &str) -> ApiResult<Vec<u8>> {
    super::error::json_syntax(body)?;
    let v: Value = serde_json::from_slice(body).map_err(|e| ApiError::json("", &e))?;
    let Value::Object(m) = &v else {
        return Err(ApiError::validation("body", "must be a JSON object"));
    };
    match m.get("id") {
        Some(Value::String(s)) if s == path_id => Ok(body.to_vec()),
        Some(_) => Err(ApiError::validation(
            "id",
            format!("must match the id in the path (\"{path_id}\")"),
        )),
        None => {
            // Added last, before the closing brace, so that nothing the client sent moves.
            let end = body
                .iter()
                .rposition(|&b| b == b'}')
                .ok_or_else(|| ApiError::validation("body", "must be a JSON object"))?;
            let id = serde_json::to_string(path_id)
                .map_err(|e| ApiError::internal("encode path id", e))?;
            let comma = if m.is_empty() { "" } else { "," };
            let mut out = Vec::with_capacity(body.len() + id.len() + 8);
            out.extend_from_slice(&body[..end]);
            out.extend_from_slice(format!("{comma}\"id\":{id}").as_bytes());
            out.extend_from_slice(&body[end..]);
            Ok(out)
        }
    }
}

/// Writes one rule and swaps in the rebuilt rule set; answers 201 to a create (POST) and 200 to
/// every PUT, whether it created or replaced (API.md section 7).
async fn save(
    app: &AppState,
    kind: RuleKind,
    id: String,
    stored_json: String,
    answer: Value,
    mode: PutMode,
) -> ApiResult<Response> {
    let outcome = app
        .store
        .put_rule(
            kind,
            StoredRule {
                id: id.clone(),
                body: stored_json,
            },
            mode,
        )
        .await?;
    if outcome == PutOutcome::Exists {
        return Err(ApiError::conflict(format!(
            "A {} with id \"{id}\" already exists (use PUT to replace it)",
            kind_name(kind)
        )));
    }
    app.rules.reload().await?;
    let status = match mode {
        PutMode::Create => StatusCode::CREATED,
        PutMode::Upsert => StatusCode::OK,
    };
    Ok((status, Json(answer)).into_response())
}

// ---- filters ----

pub async fn list_filters(State(app): State<AppState>) -> ApiResult<Json<Value>> {
    list_kind(&app, RuleKind::Filter).await
}

pub async fn get_filter(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    get_kind(&app, RuleKind::Filter, id).await
}

async fn save_filter(app: &AppState, body: &[u8], mode: PutMode) -> ApiResult<Response> {
    super::error::json_syntax(body)?;
    let filter: EventFilter = rules::parse_filter_all(body).map_err(validations)?;
    let json = to_json(&filter)?;
    let _guard = app.rules.lock_changes().await;
    let answer = serde_json::to_value(&filter).map_err(|e| ApiError::internal("filter", e))?;
    save(app, RuleKind::Filter, filter.id.clone(), json, answer, mode).await
}

pub async fn create_filter(State(app): State<AppState>, body: Bytes) -> ApiResult<Response> {
    save_filter(&app, &body, PutMode::Create).await
}

pub async fn put_filter(
    State(app): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let body = take_path_id(&body, &id)?;
    save_filter(&app, &body, PutMode::Upsert).await
}

pub async fn delete_filter(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    delete_kind(&app, RuleKind::Filter, id).await
}

// ---- routes ----

pub async fn list_routes(State(app): State<AppState>) -> ApiResult<Json<Value>> {
    list_kind(&app, RuleKind::Route).await
}

pub async fn get_route(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    get_kind(&app, RuleKind::Route, id).await
}

async fn save_route(app: &AppState, body: &[u8], mode: PutMode) -> ApiResult<Response> {
    super::error::json_syntax(body)?;
    let _guard = app.rules.lock_changes().await;
    let agents = app.rules.agent_ids().await?;
    let route: EventRoute = rules::parse_route_all(body, &agents).map_err(validations)?;
    let json = to_json(&route)?;
    let answer = serde_json::to_value(&route).map_err(|e| ApiError::internal("route", e))?;
    save(app, RuleKind::Route, route.id.clone(), json, answer, mode).await
}

pub async fn create_route(State(app): State<AppState>, body: Bytes) -> ApiResult<Response> {
    save_route(&app, &body, PutMode::Create).await
}

pub async fn put_route(
    State(app): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let body = take_path_id(&body, &id)?;
    save_route(&app, &body, PutMode::Upsert).await
}

pub async fn delete_route(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    delete_kind(&app, RuleKind::Route, id).await
}

// ---- agents ----

pub async fn list_agents(State(app): State<AppState>) -> ApiResult<Json<Value>> {
    list_kind(&app, RuleKind::Agent).await
}

pub async fn get_agent(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    get_kind(&app, RuleKind::Agent, id).await
}

async fn save_agent(app: &AppState, body: &[u8], mode: PutMode) -> ApiResult<Response> {
    super::error::json_syntax(body)?;
    // `health` is what the server reports about the agent, not a setting: an agent read back
    // and sent again as it was is accepted. (Such a body is re-encoded, so the line and column
    // of a later error are of the re-encoded text.)
    let stripped = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(mut m)) if m.contains_key("health") || m.contains_key("consumers") => {
            m.remove("health");
            m.remove("consumers");
            Some(Value::Object(m).to_string().into_bytes())
        }
        _ => None,
    };
    let body = stripped.as_deref().unwrap_or(body);
    let agent: Agent = rules::parse_agent_all(body).map_err(validations)?;
    let _guard = app.rules.lock_changes().await;
    let existing = app
        .store
        .list_rules(RuleKind::Agent)
        .await?
        .into_iter()
        .find(|r| r.id == agent.id);
    if existing.is_some() && mode == PutMode::Create {
        return Err(ApiError::conflict(format!(
            "An agent with id \"{}\" already exists (use PUT to replace it)",
            agent.id
        )));
    }
    let (agent, stored) =
        prepare_agent(agent, existing.as_ref().map(|r| r.body.as_str())).map_err(validation)?;
    let mut answer = serde_json::to_value(&agent).map_err(|e| ApiError::internal("agent", e))?;
    // As `GET` shows it, so that what was sent, what came back and what is read agree.
    add_health(app, &mut answer);
    save(app, RuleKind::Agent, agent.id.clone(), stored, answer, mode).await
}

pub async fn create_agent(State(app): State<AppState>, body: Bytes) -> ApiResult<Response> {
    save_agent(&app, &body, PutMode::Create).await
}

pub async fn put_agent(
    State(app): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let body = take_path_id(&body, &id)?;
    save_agent(&app, &body, PutMode::Upsert).await
}

pub async fn delete_agent(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let _guard = app.rules.lock_changes().await;
    // A route naming the agent would stop compiling: refuse rather than break routing.
    for r in app.store.list_rules(RuleKind::Route).await? {
        if let Ok(route) = parse_stored::<EventRoute>(&r.body)
            && route.target_agents.iter().any(|a| a == &id)
        {
            return Err(ApiError::conflict(format!(
                "Agent \"{id}\" is a target of route \"{}\"; change or delete the route first",
                route.id
            )));
        }
    }
    delete_locked(&app, RuleKind::Agent, id).await
}

async fn delete_kind(app: &AppState, kind: RuleKind, id: String) -> ApiResult<Response> {
    let _guard = app.rules.lock_changes().await;
    delete_locked(app, kind, id).await
}

/// Deletes with `rules_lock` already held by the caller.
async fn delete_locked(app: &AppState, kind: RuleKind, id: String) -> ApiResult<Response> {
    if !app.store.delete_rule(kind, id.clone()).await? {
        return Err(ApiError::not_found(format!(
            "No {} with id \"{id}\"",
            kind_name(kind)
        )));
    }
    app.rules.reload().await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
