//! `GET|PUT|DELETE /admin/rate-limits`: inbound limits per `source:identifier`, kept in the store
//! and applied to the very next request.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::error::{ApiError, ApiResult};
use super::query::query_pairs;
use crate::http::AppState;
use crate::ratelimit::{self, RateLimitConfig};
use crate::store::{PutMode, RuleKind, StoredRule};

pub async fn list(State(app): State<AppState>) -> Json<Value> {
    Json(json!({ "items": app.limiter.configs(), "nextCursor": null }))
}

/// `GET /admin/rate-limits/usage`: how often each `source:identifier` was admitted and refused
/// lately, on this node (see `analytics::recent`).
pub async fn usage(State(app): State<AppState>) -> Json<Value> {
    Json(json!({ "items": app.analytics.recent.keys(), "nextCursor": null }))
}

pub async fn put(State(app): State<AppState>, body: Bytes) -> ApiResult<Json<RateLimitConfig>> {
    super::error::json_syntax(&body)?;
    let config = ratelimit::parse_config(&body)
        .map_err(|e| ApiError::validation_at(e.field, e.message, e.position))?;
    // A limit for a source webhooks cannot arrive on would never apply: most likely a typo.
    if !app.config.sources.contains_key(&config.source) {
        return Err(ApiError::validation(
            "source",
            format!(
                "is not a source of this router (\"{}\"; see GET /admin/sources)",
                config.source.chars().take(64).collect::<String>()
            ),
        ));
    }
    let _guard = app.rules.lock_changes().await;
    app.store
        .put_rule(
            RuleKind::RateLimit,
            StoredRule {
                id: crate::ratelimit::rule_id(&config.source, &config.identifier),
                body: serde_json::to_string(&config)
                    .map_err(|e| ApiError::internal("serialize rate limit", e))?,
            },
            PutMode::Upsert,
        )
        .await?;
    crate::ratelimit::reload(&app.limiter, app.store.as_ref()).await?;
    Ok(Json(config))
}

pub async fn delete(State(app): State<AppState>, RawQuery(raw): RawQuery) -> ApiResult<Response> {
    let (mut source, mut identifier) = (None, None);
    for (k, v) in query_pairs(&raw) {
        match k.as_str() {
            "source" => source = Some(v),
            "identifier" => identifier = Some(v),
            _ => {
                return Err(ApiError::bad_request(
                    "unknown query parameter (known: source, identifier)",
                ));
            }
        }
    }
    let (Some(source), Some(identifier)) = (source, identifier) else {
        return Err(ApiError::bad_request(
            "DELETE /admin/rate-limits needs ?source=…&identifier=… (identifier may be *)",
        ));
    };
    let _guard = app.rules.lock_changes().await;
    let existed = app
        .store
        .delete_rule(
            RuleKind::RateLimit,
            crate::ratelimit::rule_id(&source, &identifier),
        )
        .await?;
    if !existed {
        return Err(ApiError::not_found(
            "No rate limit for that source and identifier",
        ));
    }
    crate::ratelimit::reload(&app.limiter, app.store.as_ref()).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
