//! One HTTP attempt to push an event to an agent (API.md section 7), signed the Standard
//! Webhooks way, over a shared keep-alive connection pool.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use crate::ingest::now_ms;
use crate::ingest::verify::StandardSigner;
use crate::queue::policy::parse_retry_after;

/// How much of an agent's answer is kept in the attempt log.
pub const RESPONSE_PREFIX: usize = 1024;

/// An agent as the delivery path uses it: everything parsed once when the rules change.
pub struct AgentTarget {
    pub id: Arc<str>,
    pub url: reqwest::Url,
    pub signer: StandardSigner,
    pub headers: HeaderMap,
    pub timeout: Duration,
    pub max_concurrency: usize,
    /// At most `limit` attempts per `window`; excess waits, nothing is dropped.
    pub pacing: Option<Pacing>,
    pub enabled: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pacing {
    pub limit: u32,
    pub window_ms: u64,
}

/// What the attempt needs to know about the delivery.
pub struct AttemptRequest<'a> {
    pub event_id: &'a str,
    pub source: &'a str,
    pub event_type: &'a str,
    pub attempt: u32,
    pub body: &'a Bytes,
}

/// What happened.
#[derive(Debug, Clone)]
pub struct AttemptResult {
    pub delivered: bool,
    pub started_at: i64,
    pub duration_ms: u64,
    pub status_code: Option<u16>,
    pub error: Option<String>,
    pub response_prefix: Option<String>,
    /// `Retry-After` of a 429 or 503 answer.
    pub retry_after: Option<Duration>,
}

/// The shared outbound client: connection pooling and keep-alive to every agent. `extra_ca`
/// holds PEM CA certificates trusted for `https://` agents besides the built-in roots.
pub fn client(extra_ca: Option<&[u8]>) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .pool_idle_timeout(Duration::from_secs(90))
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("event-router/", env!("CARGO_PKG_VERSION")));
    if let Some(pem) = extra_ca {
        let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| e.to_string())?;
        if certs.is_empty() {
            return Err("no PEM certificate found".into());
        }
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().map_err(|e| e.to_string())
}

static WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
static WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
static WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");
static X_EVENT_SOURCE: HeaderName = HeaderName::from_static("x-event-source");
static X_EVENT_TYPE: HeaderName = HeaderName::from_static("x-event-type");
static X_DELIVERY_ATTEMPT: HeaderName = HeaderName::from_static("x-delivery-attempt");

fn value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// Makes one attempt. Never panics; every failure becomes an `AttemptResult` with an error.
pub async fn attempt(
    client: &reqwest::Client,
    target: &AgentTarget,
    req: AttemptRequest<'_>,
) -> AttemptResult {
    let started_at = now_ms();
    let clock = Instant::now();
    let ts = started_at / 1000;
    let mut headers = target.headers.clone();
    headers.insert(
        reqwest::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(WEBHOOK_ID.clone(), value(req.event_id));
    headers.insert(WEBHOOK_TIMESTAMP.clone(), value(&ts.to_string()));
    headers.insert(
        WEBHOOK_SIGNATURE.clone(),
        value(&target.signer.sign(req.event_id, ts, req.body)),
    );
    headers.insert(X_EVENT_SOURCE.clone(), value(req.source));
    headers.insert(X_EVENT_TYPE.clone(), value(req.event_type));
    headers.insert(X_DELIVERY_ATTEMPT.clone(), value(&req.attempt.to_string()));
    let sent = client
        .post(target.url.clone())
        .headers(headers)
        .timeout(target.timeout)
        .body(req.body.clone())
        .send()
        .await;
    let mut result = AttemptResult {
        delivered: false,
        started_at,
        duration_ms: 0,
        status_code: None,
        error: None,
        response_prefix: None,
        retry_after: None,
    };
    match sent {
        Ok(resp) => {
            let status = resp.status();
            result.status_code = Some(status.as_u16());
            result.delivered = status.is_success();
            if status.as_u16() == 429 || status.as_u16() == 503 {
                result.retry_after = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, SystemTime::now()));
            }
            let prefix = read_prefix(resp, target.timeout.saturating_sub(clock.elapsed())).await;
            if !result.delivered {
                result.error = Some(format!("agent answered {status}"));
            }
            result.response_prefix = prefix;
        }
        Err(e) => result.error = Some(describe(&e, target.timeout)),
    }
    result.duration_ms = clock.elapsed().as_millis() as u64;
    result
}

/// Reads at most a bounded amount of the answer (so the connection can be reused for small
/// answers) and keeps its first `RESPONSE_PREFIX` bytes.
async fn read_prefix(mut resp: reqwest::Response, budget: Duration) -> Option<String> {
    let mut kept: Vec<u8> = Vec::new();
    let mut read = 0usize;
    let reading = async {
        while let Ok(Some(chunk)) = resp.chunk().await {
            read += chunk.len();
            if kept.len() < RESPONSE_PREFIX {
                let take = (RESPONSE_PREFIX - kept.len()).min(chunk.len());
                kept.extend_from_slice(&chunk[..take]);
            }
            if read > 64 * 1024 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(budget.max(Duration::from_millis(100)), reading).await;
    if kept.is_empty() {
        None
    } else {
        Some(String::from_utf8_lossy(&kept).into_owned())
    }
}

/// A clear sentence for a failed request, including certificate problems and timeouts.
fn describe(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return format!("timed out after {} ms", timeout.as_millis());
    }
    let mut msg = if e.is_connect() {
        "connection failed".to_string()
    } else {
        "request failed".to_string()
    };
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refused_connection_is_a_clear_failure() {
        // Bind then drop to get a port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let target = AgentTarget {
            id: "a".into(),
            url: format!("http://127.0.0.1:{port}/hook").parse().unwrap(),
            signer: StandardSigner::from_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap(),
            headers: HeaderMap::new(),
            timeout: Duration::from_secs(2),
            max_concurrency: 1,
            pacing: None,
            enabled: true,
        };
        let body = Bytes::from_static(b"{}");
        let r = attempt(
            &client(None).unwrap(),
            &target,
            AttemptRequest {
                event_id: "e",
                source: "s",
                event_type: "t",
                attempt: 1,
                body: &body,
            },
        )
        .await;
        assert!(!r.delivered);
        assert_eq!(r.status_code, None);
        assert!(r.error.unwrap().starts_with("connection failed"));
    }
}
