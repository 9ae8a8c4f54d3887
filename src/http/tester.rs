//! `POST /admin/rules/test`: runs a filter or a jq transformation, as written in a form and not
//! saved, against an archived event, so an operator sees what it does before saving it.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use serde_json::{Value, json};
use uuid::Uuid;

use super::error::{ApiError, ApiResult};
use crate::http::AppState;
use crate::rules::ruleset::{RuleOptions, RuleSet};
use crate::rules::transform::{TransformPool, compile};
use crate::rules::validate::parse_filter;

/// How long a tested program may run (a saved one gets the server's budget when it runs).
const TEST_BUDGET: Duration = Duration::from_millis(200);

pub async fn test(State(app): State<AppState>, body: Bytes) -> ApiResult<Json<Value>> {
    super::error::json_syntax(&body)?;
    let req: Value = serde_json::from_slice(&body).map_err(|e| ApiError::json("", &e))?;
    let Some(obj) = req.as_object() else {
        return Err(ApiError::validation("body", "must be a JSON object"));
    };
    for key in obj.keys() {
        if !matches!(key.as_str(), "eventId" | "filter" | "transformation") {
            return Err(ApiError::validation(
                key.as_str(),
                "unknown field (expected one of eventId, filter, transformation)",
            ));
        }
    }
    let missing = || ApiError::validation("eventId", "is not an archived event's id");
    let id = obj
        .get("eventId")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::validation("eventId", "is required"))
        .and_then(|s| Uuid::parse_str(s).map_err(|_| missing()))?;
    let rec = app.store.get_event(id).await?.ok_or_else(missing)?;
    if rec.erased_at.is_some() {
        return Err(ApiError::validation("eventId", "names an erased event"));
    }
    let event = rec.event_json()?;
    match (obj.get("filter"), obj.get("transformation")) {
        (Some(filter), None) => test_filter(filter, event).await,
        (None, Some(t)) => test_transformation(t, event).await,
        _ => Err(ApiError::validation(
            "body",
            "give either filter or transformation (one of them)",
        )),
    }
}

/// The filter alone, enabled, as the global filters would apply it: whether the event is kept,
/// and (a transform filter) what it becomes.
async fn test_filter(filter: &Value, mut event: Value) -> ApiResult<Json<Value>> {
    let bytes = serde_json::to_vec(filter).map_err(|e| ApiError::internal("a filter", e))?;
    let mut filter = parse_filter(&bytes).map_err(|e| {
        let field = if e.field.is_empty() {
            "filter".to_string()
        } else {
            format!("filter.{}", e.field)
        };
        ApiError::validation(field, e.message)
    })?;
    filter.enabled = true;
    let options = RuleOptions {
        transform_budget: TEST_BUDGET,
        transform_workers: 1,
        ..RuleOptions::default()
    };
    let rules = RuleSet::build(&[filter], &[], &[], options)
        .map_err(|e| ApiError::validation(format!("filter.{}", e.field), e.message))?;
    // A transformation blocks its caller while a worker runs it.
    let outcome = tokio::task::spawn_blocking(move || {
        let eval = rules.evaluate(&mut event);
        (eval, event)
    })
    .await
    .map_err(|e| ApiError::internal("testing a filter", e))?;
    let (eval, event) = outcome;
    let error = eval.filter_errors.first().map(|e| e.error.to_string());
    Ok(Json(json!({
        "kept": eval.processed,
        "changed": eval.globally_transformed,
        "event": if eval.processed { event } else { Value::Null },
        "error": error,
    })))
}

/// A jq program run on the event, as a route's transformation would be.
async fn test_transformation(t: &Value, event: Value) -> ApiResult<Json<Value>> {
    let expression = t
        .get("expression")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::validation("transformation.expression", "is required"))?;
    let program = compile(expression).map_err(|e| {
        ApiError::validation_at(
            "transformation.expression",
            e.to_string(),
            Some((e.line, e.column)),
        )
    })?;
    let program = Arc::new(program);
    let result = tokio::task::spawn_blocking(move || {
        let pool = TransformPool::new(1, TEST_BUDGET, Duration::from_secs(1));
        pool.run(&program, Arc::new(event))
    })
    .await
    .map_err(|e| ApiError::internal("testing a transformation", e))?;
    Ok(Json(match result {
        Ok(v) => json!({ "event": v, "error": null }),
        Err(e) => json!({ "event": null, "error": e.to_string() }),
    }))
}
