//! Dashboard sign-in sessions: a random 256-bit token in an HttpOnly, SameSite=Strict cookie,
//! known to the server only by its SHA-256.
//!
//! Why random tokens kept server-side rather than a signed (stateless) token: sign-out must end
//! a session for good, which a signed token cannot do without a revocation list kept anyway;
//! and keeping only the hash means a leak of the table (memory, logs, a database dump) reveals
//! no cookie that works.
//!
//! Where the table lives: on one node (SQLite), in the process's memory, so a restart signs
//! everyone out. On several nodes (PostgreSQL), in the shared store, so a user signed in on one
//! node is signed in on every node behind the load balancer, and sign-out on one ends the
//! session on all of them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue, header};

use crate::clock::now_ms;
use crate::store::{Store, StoreError};

/// The cookie's name.
pub const COOKIE: &str = "er_session";
/// The header a cookie-authenticated change must carry (with this value): a page on another
/// origin cannot send a custom header without a CORS preflight, which this server never grants.
pub const CSRF_HEADER: &str = "x-requested-with";
pub const CSRF_VALUE: &str = "event-router-dashboard";
/// Sessions kept at most; past it the one closest to expiry is dropped. Only holders of the
/// admin key can create sessions, so this bounds memory against a script signing in in a loop.
const MAX_SESSIONS: usize = 10_000;

/// The live sessions, by the SHA-256 of their token.
pub struct Sessions {
    ttl: Duration,
    max: usize,
    // A std Mutex: the critical sections are hash-map operations, never held across an await.
    live: Mutex<HashMap<[u8; 32], Session>>,
    /// The store that keeps the sessions when the nodes share one (`Store::keeps_sessions`);
    /// `None`: `live`, this process's memory.
    shared: Option<Arc<dyn Store>>,
}

#[derive(Debug, Clone, Copy)]
struct Session {
    expires: Instant,
    /// Wall-clock expiry (ms), for the page to show.
    expires_at_ms: i64,
}

/// A session that was just created: the token goes into the cookie and nowhere else.
pub struct NewSession {
    pub token: String,
    pub expires_at_ms: i64,
}

fn digest(token: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl Sessions {
    pub fn new(ttl: Duration) -> Sessions {
        Sessions {
            ttl,
            max: MAX_SESSIONS,
            live: Mutex::new(HashMap::new()),
            shared: None,
        }
    }

    /// Sessions kept in `store` when it keeps them for every node (PostgreSQL); else in memory.
    pub fn kept_in(mut self, store: Arc<dyn Store>) -> Sessions {
        if store.keeps_sessions() {
            self.shared = Some(store);
        }
        self
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Starts a session with a fresh token (never one the client offered: no fixation).
    pub async fn create(&self) -> Result<NewSession, StoreError> {
        let Some(store) = &self.shared else {
            return Ok(self.create_at(Instant::now()));
        };
        let token = crate::crypto::random_token(32);
        let ttl_ms = i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX);
        let expires_at_ms = store
            .create_session(digest(&token), ttl_ms, self.max)
            .await?;
        Ok(NewSession {
            token,
            expires_at_ms,
        })
    }

    fn create_at(&self, now: Instant) -> NewSession {
        let token = crate::crypto::random_token(32);
        let session = Session {
            expires: now + self.ttl,
            expires_at_ms: now_ms().saturating_add(self.ttl.as_millis() as i64),
        };
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if live.len() >= self.max {
            live.retain(|_, s| s.expires > now);
            if live.len() >= self.max
                && let Some(oldest) = live.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| *k)
            {
                live.remove(&oldest);
            }
        }
        live.insert(digest(&token), session);
        NewSession {
            token,
            expires_at_ms: session.expires_at_ms,
        }
    }

    /// The session's wall-clock expiry (ms) when `token` names a live one. Looked up by hash:
    /// the timing of a hash-map (or index) lookup says nothing usable about a token. A store that
    /// cannot answer is logged and counts as no session.
    pub async fn check(&self, token: &str) -> Option<i64> {
        match self.lookup(token).await {
            Ok(expiry) => expiry,
            Err(e) => {
                tracing::warn!(error = %e, "cannot look up a dashboard session");
                None
            }
        }
    }

    /// Whether an open stream's session still holds: only an answer that it ended says no (a
    /// store that cannot answer right now does not cut a live stream).
    pub async fn still_live(&self, token: &str) -> bool {
        !matches!(self.lookup(token).await, Ok(None))
    }

    async fn lookup(&self, token: &str) -> Result<Option<i64>, StoreError> {
        match &self.shared {
            Some(store) => store.session_expiry(digest(token)).await,
            None => Ok(self.check_at(token, Instant::now())),
        }
    }

    fn check_at(&self, token: &str, now: Instant) -> Option<i64> {
        let key = digest(token);
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        match live.get(&key) {
            Some(s) if s.expires > now => Some(s.expires_at_ms),
            Some(_) => {
                live.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Ends a session; `false` when there was none.
    pub async fn end(&self, token: &str) -> Result<bool, StoreError> {
        match &self.shared {
            Some(store) => store.end_session(digest(token)).await,
            None => Ok(self.end_here(token)),
        }
    }

    fn end_here(&self, token: &str) -> bool {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&digest(token))
            .is_some()
    }

    /// Forgets expired sessions (housekeeping).
    pub async fn purge_expired(&self) {
        if let Some(store) = &self.shared {
            if let Err(e) = store.purge_sessions().await {
                tracing::warn!(error = %e, "purging expired dashboard sessions failed");
            }
            return;
        }
        let now = Instant::now();
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, s| s.expires > now);
    }

    /// Sessions held in this process's memory (0 when the store keeps them).
    pub fn len(&self) -> usize {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The live session named by the request's cookie: its token and expiry.
    pub async fn from_headers(&self, headers: &HeaderMap) -> Option<(String, i64)> {
        let token = cookie_token(headers)?;
        let expires = self.check(&token).await?;
        Some((token, expires))
    }
}

/// The value of our cookie among the request's `Cookie` headers.
pub fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// Whether a cookie-authenticated request may change something: it carries the dashboard's
/// custom header (see `CSRF_HEADER`).
pub fn csrf_header_ok(headers: &HeaderMap) -> bool {
    headers
        .get(CSRF_HEADER)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(CSRF_VALUE.as_bytes()))
}

/// Whether the request came to us over TLS: served by rustls here, or by a terminating proxy
/// that says so. (A client lying in `X-Forwarded-Proto` only changes its own cookie's flags.)
pub fn over_tls(tls_served: bool, headers: &HeaderMap) -> bool {
    tls_served
        || headers
            .get("x-forwarded-proto")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"))
}

/// `Set-Cookie` for a new session.
pub fn set_cookie(token: &str, ttl: Duration, secure: bool) -> HeaderValue {
    let mut c = format!(
        "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        ttl.as_secs().max(1)
    );
    if secure {
        c.push_str("; Secure");
    }
    HeaderValue::from_str(&c).expect("a base64url token is a valid header value")
}

/// `Set-Cookie` that removes the cookie.
pub fn clear_cookie(secure: bool) -> HeaderValue {
    let mut c = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    if secure {
        c.push_str("; Secure");
    }
    HeaderValue::from_str(&c).expect("a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_lives_until_its_ttl_then_is_refused() {
        let s = Sessions::new(Duration::from_secs(60));
        let start = Instant::now();
        let new = s.create_at(start);
        assert_eq!(new.token.len(), 43, "256 bits in base64url");
        assert!(
            s.check_at(&new.token, start + Duration::from_secs(59))
                .is_some()
        );
        assert!(
            s.check_at(&new.token, start + Duration::from_secs(60))
                .is_none()
        );
        // An expired session is forgotten on sight.
        assert_eq!(s.len(), 0);
    }

    #[test]
    fn ending_a_session_refuses_its_token() {
        let s = Sessions::new(Duration::from_secs(60));
        let now = Instant::now();
        let a = s.create_at(now);
        let b = s.create_at(now);
        assert_ne!(a.token, b.token);
        assert!(s.end_here(&a.token));
        assert!(!s.end_here(&a.token));
        assert!(s.check_at(&a.token, now).is_none());
        assert!(s.check_at(&b.token, now).is_some());
        assert!(s.check_at("not-a-token", now).is_none());
    }

    #[test]
    fn the_table_stays_bounded() {
        let mut s = Sessions::new(Duration::from_secs(60));
        s.max = 3;
        let start = Instant::now();
        let first = s.create_at(start);
        for i in 1..5 {
            s.create_at(start + Duration::from_secs(i));
        }
        assert_eq!(s.len(), 3);
        assert!(s.check_at(&first.token, start).is_none(), "oldest dropped");
    }

    #[test]
    fn the_table_keeps_only_hashes() {
        let s = Sessions::new(Duration::from_secs(60));
        let new = s.create_at(Instant::now());
        let live = s.live.lock().unwrap();
        assert!(live.keys().all(|k| k != new.token.as_bytes()));
        assert!(live.contains_key(&digest(&new.token)));
    }

    #[test]
    fn cookie_parsing() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; er_session=tok; b=2"),
        );
        assert_eq!(cookie_token(&h).as_deref(), Some("tok"));
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1"));
        h.append(header::COOKIE, HeaderValue::from_static("er_session=x"));
        assert_eq!(cookie_token(&h).as_deref(), Some("x"));
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("er_session_other=1; er_session="),
        );
        assert_eq!(cookie_token(&h), None);
    }

    #[test]
    fn cookie_flags() {
        let c = set_cookie("t", Duration::from_secs(43200), true);
        let c = c.to_str().unwrap();
        for flag in [
            "HttpOnly",
            "SameSite=Strict",
            "Path=/",
            "Max-Age=43200",
            "Secure",
        ] {
            assert!(c.contains(flag), "{c}");
        }
        assert!(
            !set_cookie("t", Duration::from_secs(1), false)
                .to_str()
                .unwrap()
                .contains("Secure")
        );
        assert!(clear_cookie(false).to_str().unwrap().contains("Max-Age=0"));
    }
}
