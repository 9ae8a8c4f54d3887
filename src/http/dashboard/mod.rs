//! The web dashboard (API.md section 10): the page and its assets, embedded in the binary at
//! compile time, and the sign-in session endpoints. The page itself only calls the admin API
//! and the SSE stream, authenticated by the session cookie.
//!
//! - `GET /` — the page; `GET /dashboard/{file}` — its CSS, JavaScript modules and icon.
//! - `GET /dashboard/session` — `{"signedIn", "expiresAt"}` for the cookie sent, if any.
//! - `POST /dashboard/session` `{"adminKey": "…"}` — signs in: sets the session cookie.
//! - `DELETE /dashboard/session` — signs out: the session ends and the cookie is cleared.

pub mod assets;
pub mod session;

use std::net::SocketAddr;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::json;

use crate::http::AppState;
use crate::http::error::{ApiError, ApiResult};
pub use session::Sessions;

/// The page may load only its own scripts, styles and images, connect only to this origin, and
/// never be framed. No inline script or style is allowed, so an injected string cannot run.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; \
                   form-action 'self'; frame-ancestors 'none'";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route(
            "/dashboard/session",
            get(session_status).post(sign_in).delete(sign_out),
        )
        .route("/dashboard/{*file}", get(asset))
}

/// Headers every dashboard answer carries.
fn harden(mut resp: Response, cache: &'static str) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    resp
}

async fn index(headers: HeaderMap) -> Response {
    serve(&assets::INDEX, &headers)
}

async fn asset(Path(file): Path<String>, headers: HeaderMap) -> Response {
    match assets::find(&file) {
        Some(a) => serve(a, &headers),
        None => harden(
            ApiError::not_found("No such dashboard file").into_response(),
            "no-store",
        ),
    }
}

/// An embedded file. The names carry no version, so the browser revalidates each time
/// (`no-cache`) and gets a `304` while the binary is the same: a new build is never shadowed by
/// a stale cached module.
fn serve(a: &'static assets::Asset, headers: &HeaderMap) -> Response {
    let etag = a.etag();
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut resp = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, a.content_type)], a.body).into_response()
    };
    if let Ok(v) = HeaderValue::from_str(etag) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    harden(resp, "no-cache")
}

async fn session_status(State(app): State<AppState>, headers: HeaderMap) -> Response {
    let body = match app.sessions.from_headers(&headers).await {
        Some((_, expires)) => json!({"signedIn": true, "expiresAt": expires}),
        None => json!({"signedIn": false, "expiresAt": null}),
    };
    harden(axum::Json(body).into_response(), "no-store")
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SignIn {
    admin_key: String,
}

fn parse_sign_in(body: &[u8]) -> ApiResult<SignIn> {
    crate::http::error::json_syntax(body)?;
    let de = &mut serde_json::Deserializer::from_slice(body);
    let parsed: SignIn = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.inner().to_string();
        if inner.starts_with("missing field") {
            ApiError::validation("adminKey", "is required")
        } else if path == "." {
            ApiError::validation("body", "expected {\"adminKey\": \"…\"}")
        } else {
            ApiError::json(&path, e.inner())
        }
    })?;
    if parsed.admin_key.is_empty() {
        return Err(ApiError::validation("adminKey", "is required"));
    }
    Ok(parsed)
}

/// Signs in with the admin key. A wrong key counts toward the authentication throttle exactly
/// as a wrong `Authorization` header does; a right one is always accepted.
async fn sign_in(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = parse_sign_in(&body).and_then(|s| {
        if crate::http::auth::admin_key_matches(&app, s.admin_key.as_bytes()) {
            Ok(())
        } else {
            Err(app.auth_throttle.refuse(peer.ip()))
        }
    });
    if let Err(e) = result {
        return harden(e.into_response(), "no-store");
    }
    // A sign-in replaces the session the browser had, if any.
    if let Some(old) = session::cookie_token(&headers)
        && let Err(e) = app.sessions.end(&old).await
    {
        tracing::warn!(error = %e, "cannot end the session a sign-in replaces");
    }
    let new = match app.sessions.create().await {
        Ok(new) => new,
        Err(e) => return harden(ApiError::from(e).into_response(), "no-store"),
    };
    let secure = session::over_tls(app.config.tls_cert.is_some(), &headers);
    tracing::info!(target: "audit", client_ip = %peer.ip(), "dashboard sign-in");
    let mut resp =
        axum::Json(json!({"signedIn": true, "expiresAt": new.expires_at_ms})).into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        session::set_cookie(&new.token, app.sessions.ttl(), secure),
    );
    harden(resp, "no-store")
}

/// Signs out: the session ends at once, so the same cookie is refused from now on.
async fn sign_out(State(app): State<AppState>, headers: HeaderMap) -> Response {
    if let Some((token, _)) = app.sessions.from_headers(&headers).await {
        if !session::csrf_header_ok(&headers) {
            return harden(csrf_refused().into_response(), "no-store");
        }
        if let Err(e) = app.sessions.end(&token).await {
            return harden(ApiError::from(e).into_response(), "no-store");
        }
        tracing::info!(target: "audit", "dashboard sign-out");
    }
    let secure = session::over_tls(app.config.tls_cert.is_some(), &headers);
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut()
        .insert(header::SET_COOKIE, session::clear_cookie(secure));
    harden(resp, "no-store")
}

/// 403 for a change made with the session cookie but without the dashboard's header.
pub fn csrf_refused() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "csrf_check_failed",
        format!(
            "A change made with the dashboard session cookie needs the header {}: {}",
            "X-Requested-With",
            session::CSRF_VALUE
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_in_bodies() {
        assert_eq!(
            parse_sign_in(br#"{"adminKey":"k"}"#).unwrap().admin_key,
            "k"
        );
        for (body, field) in [
            (&br#"{}"#[..], "adminKey"),
            (br#"{"adminKey":""}"#, "adminKey"),
            (br#"[]"#, "body"),
            (b"not json", "body"),
            (br#"{"adminKey":1}"#, "adminKey"),
            (br#"{"adminKey":"k","x":1}"#, "x"),
        ] {
            let e = parse_sign_in(body).err().unwrap();
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert_eq!(
                e.field.as_deref(),
                Some(field),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
