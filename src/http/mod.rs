//! The HTTP edge: router assembly, every handler, authentication, query parsing, and the mapping
//! of domain errors to the contract's JSON errors. The domain below imports nothing from here.

pub mod admission;
pub mod analytics;
pub mod audit;
pub mod auth;
pub mod consumers;
pub mod dashboard;
pub mod deadlines;
pub mod error;
pub mod events;
pub mod query;
pub mod queue;
pub mod rate_limits;
pub mod rules;
pub mod serve;
pub mod sources;
pub mod state;
pub mod streams;
pub mod tester;
pub mod throttle;
pub mod webhook;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tower_http::trace::TraceLayer;

use error::ApiError;
pub use state::AppState;

pub fn router(state: AppState) -> Router {
    let admin = Router::new()
        .route("/admin/events", get(events::list))
        .route(
            "/admin/events/{id}",
            get(events::get_one).delete(events::erase),
        )
        .route("/admin/erasures", post(events::erase_matching))
        .route("/admin/events/{id}/replay", post(events::replay))
        .route(
            "/admin/filters",
            get(rules::list_filters).post(rules::create_filter),
        )
        .route(
            "/admin/filters/{id}",
            get(rules::get_filter)
                .put(rules::put_filter)
                .delete(rules::delete_filter),
        )
        .route(
            "/admin/routes",
            get(rules::list_routes).post(rules::create_route),
        )
        .route(
            "/admin/routes/{id}",
            get(rules::get_route)
                .put(rules::put_route)
                .delete(rules::delete_route),
        )
        .route(
            "/admin/agents",
            get(rules::list_agents).post(rules::create_agent),
        )
        .route(
            "/admin/agents/{id}",
            get(rules::get_agent)
                .put(rules::put_agent)
                .delete(rules::delete_agent),
        )
        .route(
            "/admin/agents/{id}/health/reset",
            post(rules::reset_agent_health),
        )
        .route("/admin/agents/{id}/test", post(events::test_agent))
        .route("/admin/dlq", get(queue::dlq_list))
        .route("/admin/dlq/retry", post(queue::dlq_retry_bulk))
        .route("/admin/dlq/{id}/retry", post(queue::dlq_retry_one))
        .route("/admin/dlq/{id}", axum::routing::delete(queue::dlq_delete))
        .route("/queue/stats", get(queue::stats))
        .route("/analytics/metrics", get(analytics::analytics))
        .route("/admin/audit", get(audit::list))
        .route("/admin/rejections", get(analytics::rejections))
        .route("/admin/sources", get(sources::list))
        .route("/admin/rules/test", post(tester::test))
        .route("/admin/agent-activity", get(analytics::agent_activity))
        .route("/admin/rate-limits/usage", get(rate_limits::usage))
        .route(
            "/admin/rate-limits",
            get(rate_limits::list)
                .put(rate_limits::put)
                .delete(rate_limits::delete),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), audit::record))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_admin,
        ));
    Router::new()
        .route(
            "/webhook/{source}",
            post(webhook::webhook)
                .get(webhook::verify_get)
                .head(webhook::reachable),
        )
        .route("/health", get(health))
        .route("/metrics", get(analytics::prometheus))
        .route("/stream/ws", get(streams::ws))
        .route("/agents/{id}/deliveries", get(consumers::poll))
        .route(
            "/agents/{id}/deliveries/{kind}",
            post(consumers::settle_post),
        )
        .route("/stream/sse", get(streams::sse))
        .merge(admin)
        .merge(dashboard::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(error::envelope))
        .layer(
            // A span per request; headers are not recorded, so no key or signature is logged.
            // With tracing on, a webhook's span is also the root of its exported trace.
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request| {
                    crate::telemetry::trace::webhook(req.method(), req.uri(), req.headers())
                        .unwrap_or_else(|| {
                            tracing::info_span!(
                                "request",
                                method = %req.method(),
                                path = %req.uri().path(),
                                event_id = tracing::field::Empty,
                            )
                        })
                })
                .on_response(
                    |resp: &Response, latency: std::time::Duration, span: &tracing::Span| {
                        crate::telemetry::trace::answered(span, resp.status().as_u16());
                        tower_http::trace::OnResponse::on_response(
                            tower_http::trace::DefaultOnResponse::default(),
                            resp,
                            latency,
                            span,
                        );
                    },
                )
                // Refusals are answers, not failures; real internal errors are logged where they
                // happen, with context.
                .on_failure(()),
        )
        .with_state(state)
}

async fn health(State(app): State<AppState>) -> Response {
    // A ping only reads: a store whose disk is full still answers it, so the writer's last
    // outcome counts too.
    let reason = match app.store.ping().await {
        Err(e) => Some(e.to_string()),
        Ok(()) => match app.store.write_fault() {
            None => None,
            // Tried again here, so that recovery shows without other writes.
            Some(_) => {
                let _ = app.store.probe_write().await;
                app.store.write_fault()
            }
        },
    };
    let ok = reason.is_none();
    let mut storage = json!({"backend": app.store.backend(), "ok": ok});
    if let Some(r) = reason {
        storage["reason"] = serde_json::Value::String(r);
    }
    let mut body = json!({
        "status": if ok { "ok" } else { "unavailable" },
        "version": env!("CARGO_PKG_VERSION"),
        "uptimeSeconds": app.started.elapsed().as_secs(),
        "storage": storage,
    });
    if let Some(e) = &app.config.environment {
        body["environment"] = serde_json::Value::String(e.clone());
    }
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

async fn not_found() -> ApiError {
    ApiError::not_found("No such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "Method not allowed on this endpoint",
    )
}
