//! Router assembly, admin authentication, and the small read-only endpoints.

pub mod audit;
pub mod error;
pub mod events;
pub mod queue;
pub mod rate_limits;
pub mod rules;
pub mod throttle;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tower_http::trace::TraceLayer;

use crate::app::AppState;
use error::ApiError;

pub fn router(state: AppState) -> Router {
    let admin = Router::new()
        .route("/admin/events", get(events::list))
        .route("/admin/events/{id}", get(events::get_one))
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
        .route("/admin/dlq", get(queue::dlq_list))
        .route("/admin/dlq/retry", post(queue::dlq_retry_bulk))
        .route("/admin/dlq/{id}/retry", post(queue::dlq_retry_one))
        .route("/admin/dlq/{id}", axum::routing::delete(queue::dlq_delete))
        .route("/queue/stats", get(queue::stats))
        .route("/analytics/metrics", get(crate::analytics::api::analytics))
        .route("/admin/audit", get(audit::list))
        .route(
            "/admin/rate-limits",
            get(rate_limits::list)
                .put(rate_limits::put)
                .delete(rate_limits::delete),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), audit::record))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin));
    Router::new()
        .route("/webhook/{source}", post(crate::ingest::webhook))
        .route("/health", get(health))
        .route("/metrics", get(crate::analytics::api::prometheus))
        .route("/stream/ws", get(crate::stream::handlers::ws))
        .route("/stream/sse", get(crate::stream::handlers::sse))
        .merge(admin)
        .merge(crate::dashboard::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(
            // A span per request; headers are not recorded, so no key or signature is logged.
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request| {
                    tracing::info_span!(
                        "request",
                        method = %req.method(),
                        path = %req.uri().path(),
                        event_id = tracing::field::Empty,
                    )
                })
                // Refusals are answers, not failures; real internal errors are logged where they
                // happen, with context.
                .on_failure(()),
        )
        .with_state(state)
}

/// Admin authentication: `Authorization: Bearer <admin key>`, or (without an `Authorization`
/// header) a live dashboard session cookie. A cookie-authenticated change must also carry the
/// dashboard's CSRF header; Bearer requests are not cookie-borne, so they need none.
async fn require_admin(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let ok = match req.headers().get(header::AUTHORIZATION) {
        Some(v) => app.is_admin_key(v.as_bytes()),
        None => match app.sessions.from_headers(req.headers()) {
            Some(_) => {
                let safe = matches!(*req.method(), Method::GET | Method::HEAD);
                if !safe && !crate::dashboard::session::csrf_header_ok(req.headers()) {
                    return crate::dashboard::csrf_refused().into_response();
                }
                true
            }
            None => false,
        },
    };
    if !ok {
        return match client_ip(&req) {
            Some(ip) => app.auth_throttle.refuse(ip),
            None => ApiError::unauthorized(),
        }
        .into_response();
    }
    next.run(req).await
}

/// The peer address of the connection (not `X-Forwarded-For`, which any client can write).
pub fn client_ip(req: &Request) -> Option<std::net::IpAddr> {
    req.extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
}

async fn health(State(app): State<AppState>) -> Response {
    let ok = app.store.ping().await.is_ok();
    let body = json!({
        "status": if ok { "ok" } else { "unavailable" },
        "version": env!("CARGO_PKG_VERSION"),
        "uptimeSeconds": app.started.elapsed().as_secs(),
        "storage": {"backend": app.store.backend(), "ok": ok},
    });
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
