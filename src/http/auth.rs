//! Who is asking: the admin key (Bearer, or a dashboard session cookie with its CSRF header),
//! agent keys, and the peer address failed attempts are counted against.

use axum::extract::{Request, State};
use axum::http::Method;
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;

/// The key part of `Bearer <key>` (scheme case-insensitive), or `None`.
pub fn bearer(authorization: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = authorization.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let key = rest.trim_ascii();
    (!key.is_empty()).then_some(key)
}

/// A bare key against the admin key, in constant time.
pub fn admin_key_matches(app: &AppState, key: &[u8]) -> bool {
    crate::crypto::ct_eq(key, app.admin_key.0.as_bytes())
}

/// `Authorization: Bearer <key>` against the admin key, in constant time.
pub fn is_admin_key(app: &AppState, authorization: &[u8]) -> bool {
    bearer(authorization).is_some_and(|k| admin_key_matches(app, k))
}

/// `Authorization: Bearer <key>` with the agent key or any agent's own key.
pub fn is_agent_key(app: &AppState, authorization: &[u8]) -> bool {
    bearer(authorization).is_some_and(|k| app.rules.agent_for_key(k).is_some())
}

/// Admin authentication: `Authorization: Bearer <admin key>`, or (without an `Authorization`
/// header) a live dashboard session cookie. A cookie-authenticated change must also carry the
/// dashboard's CSRF header; Bearer requests are not cookie-borne, so they need none.
pub async fn require_admin(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let ok = match req.headers().get(header::AUTHORIZATION) {
        Some(v) => is_admin_key(&app, v.as_bytes()),
        None => match app.sessions.from_headers(req.headers()).await {
            Some(_) => {
                let safe = matches!(*req.method(), Method::GET | Method::HEAD);
                if !safe && !crate::http::dashboard::session::csrf_header_ok(req.headers()) {
                    return crate::http::dashboard::csrf_refused().into_response();
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

#[cfg(test)]
mod tests {
    use super::bearer;

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer "), None);
        assert_eq!(bearer(b"Bear"), None);
    }
}
