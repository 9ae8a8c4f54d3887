//! One HTTP attempt to push an event to an agent (API.md section 7), signed the Standard
//! Webhooks way, over a shared keep-alive connection pool.
//!
//! The client is hyper's own pooled client (`hyper_util`'s legacy `Client`) behind rustls: an
//! attempt is a POST and nothing else (no redirects, no retries of its own), so the general
//! purpose layers of a higher-level client only cost time on a path that runs for every
//! delivery. What can be prepared once per agent (its `Uri`, its fixed headers) is prepared
//! when the rules change; an attempt adds only the headers that vary.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Body as _;
use hyper_util::client::legacy::Client as PooledClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::clock::now_ms;
use crate::providers::standard::StandardSigner;

/// How much of an agent's answer is kept in the attempt log.
pub const RESPONSE_PREFIX: usize = 4096;

/// At most this many headers of a request or an answer are kept in the attempt log, each value
/// cut to `HEADER_VALUE_KEPT` bytes: an agent cannot make the log grow without bound.
const HEADERS_KEPT: usize = 64;
const HEADER_VALUE_KEPT: usize = 512;

/// The request headers the router sets itself, kept in the attempt log as sent. Any other (the
/// agent's own `headers`, the `authorization` of credentials in its URL) may carry a credential,
/// so the log keeps its name with the value `[redacted]`.
const LOGGED_REQUEST_HEADERS: &[&str] = &[
    "content-type",
    "user-agent",
    "accept",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "x-event-source",
    "x-event-type",
    "x-delivery-attempt",
];

/// How much of an answer is read at most, so a connection with a small answer can be reused;
/// past this the connection is dropped rather than drained.
const DRAIN_LIMIT: usize = 64 * 1024;

/// An agent as the delivery path uses it: everything parsed once when the rules change.
pub struct AgentTarget {
    pub id: Arc<str>,
    pub uri: Uri,
    pub signer: StandardSigner,
    /// Every header that is the same on each attempt: the agent's own `headers`, then
    /// `content-type`, and the client's `user-agent` and `accept` unless the agent sets them
    /// (see `header_template`).
    pub headers: HeaderMap,
    pub timeout: Duration,
    pub max_concurrency: usize,
    /// At most `limit` attempts per `window`; excess waits, nothing is dropped.
    pub pacing: Option<Pacing>,
    pub enabled: bool,
    /// The agent's circuit breaker, its settings over the server's defaults.
    pub breaker: BreakerPolicy,
    /// A pull agent: its deliveries are leased to consumers that poll (`uri`, `signer` and
    /// `headers` are unused).
    pub pull: bool,
}

/// An agent's circuit breaker settings, every one resolved (see `rules::model::CircuitBreaker`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerPolicy {
    pub failure_threshold: u32,
    pub failure_ratio: Option<f64>,
    pub window_ms: u64,
    pub cooldown_ms: u64,
    pub max_cooldown_ms: u64,
    /// `None`: never disabled.
    pub disable_after_ms: Option<u64>,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        BreakerPolicy {
            failure_threshold: 10,
            failure_ratio: None,
            window_ms: 60_000,
            cooldown_ms: 5_000,
            max_cooldown_ms: 300_000,
            disable_after_ms: Some(72 * 3_600_000),
        }
    }
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
    /// The attempt's W3C trace context (`traceparent`, `tracestate`), sent so that the
    /// agent's spans join the webhook's trace; `None` while tracing is off.
    pub trace: Option<(&'a str, Option<&'a str>)>,
    /// A coalesced burst: how many deliveries this one superseded, and their event ids
    /// (comma-separated, at most 100).
    pub superseded: Option<(u32, &'a str)>,
}

/// What happened.
#[derive(Debug, Clone)]
pub struct AttemptResult {
    pub delivered: bool,
    pub started_at: i64,
    pub duration_ms: u64,
    /// The same duration, exact (for the response-time figures).
    pub took: Duration,
    pub status_code: Option<u16>,
    pub error: Option<String>,
    pub response_prefix: Option<String>,
    /// `Retry-After` of a 429 or 503 answer.
    pub retry_after: Option<Duration>,
    /// The headers sent and those answered, as JSON (`exchange_detail`); `None` when no request
    /// was made.
    pub detail: Option<String>,
}

/// The shared outbound client: one pool of keep-alive connections per agent (scheme, host and
/// port), HTTP/1.1, or HTTP/2 where an `https://` agent offers it. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    http: Pooled,
}

/// The pooled HTTP(S) client type behind [`Client`], also the load tool's.
pub type Pooled = PooledClient<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Builds the outbound client. `extra_ca` holds PEM CA certificates trusted for `https://`
/// agents besides the system's roots (see `system_roots`).
pub fn client(extra_ca: Option<&[u8]>) -> Result<Client, String> {
    Ok(Client {
        http: pooled(extra_ca, 256)?,
    })
}

/// The roots `https://` agents are verified against (API.md section 11: `extra_ca_certs` is
/// trusted "in addition to the system roots"): the system's, found the way OpenSSL finds them
/// (`SSL_CERT_FILE`, `SSL_CERT_DIR`, then the distribution's bundle), so a CA an operator adds to
/// the system store is trusted as by every other program there. A system without any (a bare
/// container image without `ca-certificates`) gets the webpki bundle built in, with a warning,
/// rather than no roots at all. Read once per process.
fn system_roots() -> &'static rustls::RootCertStore {
    static ROOTS: std::sync::OnceLock<rustls::RootCertStore> = std::sync::OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::warn!(error = %e, "a system root certificate could not be read");
        }
        let mut roots = rustls::RootCertStore::empty();
        let (added, unusable) = roots.add_parsable_certificates(found.certs);
        if unusable > 0 {
            tracing::debug!(unusable, "system root certificates skipped");
        }
        if added == 0 {
            tracing::warn!(
                "no system root certificates found (install ca-certificates, or set \
                 SSL_CERT_FILE): deliveries to https:// agents trust the built-in webpki roots"
            );
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        roots
    })
}

/// A pooled client keeping up to `max_idle` idle keep-alive connections per host.
pub fn pooled(extra_ca: Option<&[u8]>, max_idle: usize) -> Result<Pooled, String> {
    let mut roots = system_roots().clone();
    if let Some(pem) = extra_ca {
        crate::tls::add_pem_roots(&mut roots, pem)?;
    }
    let tls = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(Some(Duration::from_secs(5)));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(tcp);
    Ok(PooledClient::builder(TokioExecutor::new())
        .pool_max_idle_per_host(max_idle)
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_timer(TokioTimer::new())
        .build(connector))
}

/// Where an agent's requests go, from its parsed `url`, and the `authorization` its userinfo
/// stands for: credentials in the URL (`https://user:pass@host/hook`) are sent as HTTP Basic
/// auth, as HTTP clients do, and never in the request line or `Host`.
pub fn request_target(url: &reqwest::Url) -> Result<(Uri, Option<HeaderValue>), String> {
    use base64::Engine as _;
    let mut url = url.clone();
    let mut basic = None;
    if !url.username().is_empty() || url.password().is_some() {
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        let credentials = format!(
            "{}:{}",
            decode(url.username()),
            url.password().map(decode).unwrap_or_default()
        );
        let encoded = base64::engine::general_purpose::STANDARD.encode(credentials);
        let mut value =
            HeaderValue::try_from(format!("Basic {encoded}")).map_err(|e| e.to_string())?;
        value.set_sensitive(true);
        basic = Some(value);
        // Only fails for URLs that cannot have credentials, which these had.
        let _ = url.set_username("");
        let _ = url.set_password(None);
    }
    let uri = url
        .as_str()
        .parse::<Uri>()
        .map_err(|e| format!("url: {e}"))?;
    Ok((uri, basic))
}

/// The fixed part of every attempt's headers for an agent with these `headers` (and the
/// `authorization` of its URL's credentials). The agent's own `authorization`, `user-agent` and
/// `accept` win; `content-type` and the webhook headers are ours.
pub fn header_template(mut headers: HeaderMap, authorization: Option<HeaderValue>) -> HeaderMap {
    if let Some(auth) = authorization {
        headers.entry(header::AUTHORIZATION).or_insert(auth);
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers
        .entry(header::USER_AGENT)
        .or_insert(HeaderValue::from_static(concat!(
            "event-router/",
            env!("CARGO_PKG_VERSION")
        )));
    headers
        .entry(header::ACCEPT)
        .or_insert(HeaderValue::from_static("*/*"));
    headers
}

static WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
static WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
static WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");
static X_EVENT_SOURCE: HeaderName = HeaderName::from_static("x-event-source");
static X_EVENT_TYPE: HeaderName = HeaderName::from_static("x-event-type");
static X_DELIVERY_ATTEMPT: HeaderName = HeaderName::from_static("x-delivery-attempt");
static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
static X_EVENT_SUPERSEDED: HeaderName = HeaderName::from_static("x-event-superseded");
static X_EVENT_SUPERSEDED_IDS: HeaderName = HeaderName::from_static("x-event-superseded-ids");

fn value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// The request of one attempt: the agent's template plus the per-attempt headers.
fn request(target: &AgentTarget, req: &AttemptRequest<'_>, ts: i64) -> Request<Full<Bytes>> {
    let mut request = Request::new(Full::new(req.body.clone()));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = target.uri.clone();
    // Sized for the template and the six headers below, so nothing grows while filling it.
    let mut headers = HeaderMap::with_capacity(target.headers.len() + 6);
    for (name, v) in &target.headers {
        headers.append(name.clone(), v.clone());
    }
    headers.insert(WEBHOOK_ID.clone(), value(req.event_id));
    headers.insert(WEBHOOK_TIMESTAMP.clone(), HeaderValue::from(ts));
    let signature = target.signer.sign(req.event_id, ts, req.body);
    headers.insert(
        WEBHOOK_SIGNATURE.clone(),
        HeaderValue::try_from(signature).unwrap_or_else(|_| HeaderValue::from_static("invalid")),
    );
    headers.insert(X_EVENT_SOURCE.clone(), value(req.source));
    headers.insert(X_EVENT_TYPE.clone(), value(req.event_type));
    headers.insert(X_DELIVERY_ATTEMPT.clone(), HeaderValue::from(req.attempt));
    if let Some((parent, state)) = req.trace {
        headers.insert(TRACEPARENT.clone(), value(parent));
        if let Some(state) = state {
            headers.insert(TRACESTATE.clone(), value(state));
        }
    }
    if let Some((count, ids)) = req.superseded {
        headers.insert(X_EVENT_SUPERSEDED.clone(), HeaderValue::from(count));
        headers.insert(X_EVENT_SUPERSEDED_IDS.clone(), value(ids));
    }
    *request.headers_mut() = headers;
    request
}

/// Makes one attempt. Never panics; every failure becomes an `AttemptResult` with an error.
pub async fn attempt(
    client: &Client,
    target: &AgentTarget,
    req: AttemptRequest<'_>,
) -> AttemptResult {
    let started_at = now_ms();
    let clock = Instant::now();
    let deadline = tokio::time::Instant::from_std(clock + target.timeout);
    let request = request(target, &req, started_at / 1000);
    let sent_headers = request.headers().clone();
    let sent = tokio::time::timeout_at(deadline, client.http.request(request)).await;
    let mut answered_headers = None;
    let mut result = AttemptResult {
        delivered: false,
        started_at,
        duration_ms: 0,
        took: Duration::ZERO,
        status_code: None,
        error: None,
        response_prefix: None,
        retry_after: None,
        detail: None,
    };
    match sent {
        Ok(Ok(resp)) => {
            let status = resp.status();
            result.status_code = Some(status.as_u16());
            result.delivered = status.is_success();
            if status.as_u16() == 429 || status.as_u16() == 503 {
                result.retry_after = resp
                    .headers()
                    .get(header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, SystemTime::now()));
            }
            if !result.delivered {
                result.error = Some(format!("agent answered {status}"));
            }
            answered_headers = Some(resp.headers().clone());
            // Most agents answer a delivery with an empty body: then there is nothing to read
            // (hyper hands the connection back to the pool by itself).
            if !resp.body().is_end_stream() {
                let budget = deadline
                    .saturating_duration_since(tokio::time::Instant::now())
                    .max(Duration::from_millis(100));
                result.response_prefix = read_prefix(resp.into_body(), budget).await;
            }
        }
        Ok(Err(e)) => result.error = Some(describe(&e)),
        Err(_) => result.error = Some(format!("timed out after {} ms", target.timeout.as_millis())),
    }
    result.took = clock.elapsed();
    result.duration_ms = result.took.as_millis() as u64;
    result.detail = Some(exchange_detail(&sent_headers, answered_headers.as_ref()));
    result
}

/// What the attempt log keeps of an exchange besides the status and the answer's body:
/// `{"requestHeaders": {...}, "responseHeaders": {...}|null}`, names in lower case, repeated
/// headers joined with ", ", bounded by `HEADERS_KEPT` and `HEADER_VALUE_KEPT`. Request headers
/// the router does not set itself are kept as `[redacted]`, and so is an answer's `set-cookie`.
pub fn exchange_detail(sent: &HeaderMap, answered: Option<&HeaderMap>) -> String {
    let sent = header_object(sent, |name| LOGGED_REQUEST_HEADERS.contains(&name.as_str()));
    let answered = answered.map(|h| header_object(h, |name| name != header::SET_COOKIE));
    serde_json::json!({ "requestHeaders": sent, "responseHeaders": answered }).to_string()
}

fn header_object(
    headers: &HeaderMap,
    shown: impl Fn(&HeaderName) -> bool,
) -> serde_json::Map<String, serde_json::Value> {
    let mut out = serde_json::Map::new();
    for (name, value) in headers {
        let value = if shown(name) && !value.is_sensitive() {
            let text = String::from_utf8_lossy(value.as_bytes());
            let mut end = text.len().min(HEADER_VALUE_KEPT);
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text[..end].to_string()
        } else {
            "[redacted]".to_string()
        };
        let full = out.len() >= HEADERS_KEPT;
        match out.get_mut(name.as_str()) {
            Some(serde_json::Value::String(kept)) => {
                if kept.len() < HEADER_VALUE_KEPT {
                    kept.push_str(", ");
                    kept.push_str(&value);
                }
            }
            _ if full => {}
            _ => {
                out.insert(name.as_str().to_string(), serde_json::Value::String(value));
            }
        }
    }
    out
}

/// Reads at most `DRAIN_LIMIT` of the answer (so the connection can be reused for small
/// answers) and keeps its first `RESPONSE_PREFIX` bytes.
async fn read_prefix(mut body: hyper::body::Incoming, budget: Duration) -> Option<String> {
    let mut kept: Vec<u8> = Vec::new();
    let mut read = 0usize;
    let reading = async {
        while let Some(Ok(frame)) = body.frame().await {
            let Ok(chunk) = frame.into_data() else {
                continue;
            };
            read += chunk.len();
            if kept.len() < RESPONSE_PREFIX {
                let take = (RESPONSE_PREFIX - kept.len()).min(chunk.len());
                kept.extend_from_slice(&chunk[..take]);
            }
            if read > DRAIN_LIMIT {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(budget, reading).await;
    if kept.is_empty() {
        None
    } else {
        Some(String::from_utf8_lossy(&kept).into_owned())
    }
}

/// A clear sentence for a failed request, including certificate problems: what failed, then
/// the chain of causes (the client's own "client error (Connect)" adds nothing to them).
fn describe(e: &hyper_util::client::legacy::Error) -> String {
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

/// `Retry-After`: delay-seconds or an HTTP-date; a date in the past means now.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs.min(86_400 * 365)));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_170_000);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(30))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
    }
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[test]
    fn the_attempt_log_keeps_headers_without_credentials_and_bounded() {
        let mut agent_headers = HeaderMap::new();
        agent_headers.insert("x-api-token", HeaderValue::from_static("s3cret"));
        let (_, basic) = request_target(&"http://u:p@127.0.0.1:1/hook".parse().unwrap()).unwrap();
        let body = Bytes::from_static(b"{}");
        let sent = request(
            &target("http://127.0.0.1:1/hook", agent_headers.clone()),
            &req(&body),
            1_764_170_000,
        );
        let mut with_auth = sent.headers().clone();
        with_auth.insert(header::AUTHORIZATION, basic.unwrap());
        let mut answered = HeaderMap::new();
        answered.append("x-trace", HeaderValue::from_static("a"));
        answered.append("x-trace", HeaderValue::from_static("b"));
        answered.insert(header::SET_COOKIE, HeaderValue::from_static("sid=1"));
        for i in 0..100 {
            let name = HeaderName::try_from(format!("x-many-{i}")).unwrap();
            answered.insert(name, HeaderValue::from_str(&"v".repeat(2000)).unwrap());
        }
        let detail: serde_json::Value =
            serde_json::from_str(&exchange_detail(&with_auth, Some(&answered))).unwrap();
        let request = &detail["requestHeaders"];
        assert_eq!(request["x-api-token"], "[redacted]");
        assert_eq!(request["authorization"], "[redacted]");
        assert_eq!(request["x-delivery-attempt"], "2");
        assert_eq!(request["x-event-source"], "github");
        assert!(
            request["webhook-signature"]
                .as_str()
                .unwrap()
                .starts_with("v1,")
        );
        let response = detail["responseHeaders"].as_object().unwrap();
        assert_eq!(response["x-trace"], "a, b");
        assert_eq!(response["set-cookie"], "[redacted]");
        assert_eq!(response.len(), HEADERS_KEPT);
        assert!(
            response
                .values()
                .all(|v| v.as_str().unwrap().len() <= HEADER_VALUE_KEPT)
        );
        let unanswered: serde_json::Value =
            serde_json::from_str(&exchange_detail(&with_auth, None)).unwrap();
        assert!(unanswered["responseHeaders"].is_null());
    }

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn target(uri: &str, headers: HeaderMap) -> AgentTarget {
        AgentTarget {
            id: "a".into(),
            uri: uri.parse().unwrap(),
            signer: StandardSigner::from_secret(SECRET).unwrap(),
            headers: header_template(headers, None),
            timeout: Duration::from_secs(5),
            max_concurrency: 1,
            pacing: None,
            enabled: true,
            breaker: BreakerPolicy::default(),
            pull: false,
        }
    }

    fn req(body: &Bytes) -> AttemptRequest<'_> {
        AttemptRequest {
            event_id: "0195f1a4-7c2e-7000-8000-000000000001",
            source: "github",
            event_type: "pull_request.opened",
            attempt: 2,
            body,
            trace: None,
            superseded: None,
        }
    }

    /// A bare HTTP/1.1 agent: answers every request on a connection with `answer`, counts the
    /// connections it accepted, and hands back the head of each request it read.
    async fn agent(
        answer: &'static str,
    ) -> (
        String,
        Arc<AtomicUsize>,
        tokio::sync::mpsc::UnboundedReceiver<String>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let (heads, rx) = tokio::sync::mpsc::unbounded_channel();
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let heads = heads.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        // One request: the head, then `content-length` bytes of body.
                        let head_end = loop {
                            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break i + 4;
                            }
                            let mut chunk = [0u8; 8192];
                            match sock.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        };
                        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map_or(0, |v| v.trim().parse().unwrap());
                        while buf.len() < head_end + len {
                            let mut chunk = [0u8; 8192];
                            match sock.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        buf.drain(..head_end + len);
                        let _ = heads.send(head);
                        if sock.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (format!("http://{addr}/hook"), accepted, rx)
    }

    #[tokio::test]
    async fn an_attempt_carries_the_contract_headers_and_the_agents_own() {
        let (url, _, mut heads) = agent("HTTP/1.1 204 No Content\r\n\r\n").await;
        let mut own = HeaderMap::new();
        own.insert("x-team", HeaderValue::from_static("core"));
        own.insert(header::USER_AGENT, HeaderValue::from_static("mine/1"));
        // Ours wins over the agent's for the content type and the webhook headers.
        own.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        own.insert("webhook-id", HeaderValue::from_static("forged"));
        let body = Bytes::from_static(br#"{"a":1}"#);
        let r = attempt(&client(None).unwrap(), &target(&url, own), req(&body)).await;
        assert!(r.delivered, "{r:?}");
        assert_eq!(r.status_code, Some(204));
        let head = heads.recv().await.unwrap();
        for line in [
            "post /hook http/1.1",
            "content-type: application/json",
            "webhook-id: 0195f1a4-7c2e-7000-8000-000000000001",
            "x-event-source: github",
            "x-event-type: pull_request.opened",
            "x-delivery-attempt: 2",
            "x-team: core",
            "user-agent: mine/1",
            "content-length: 7",
        ] {
            assert!(head.lines().any(|l| l == line), "{line} not in\n{head}");
        }
        let ts: i64 = head
            .lines()
            .find_map(|l| l.strip_prefix("webhook-timestamp: "))
            .unwrap()
            .parse()
            .unwrap();
        assert!((ts - r.started_at / 1000).abs() <= 1, "{ts}");
        let signature = head
            .lines()
            .find_map(|l| l.strip_prefix("webhook-signature: "))
            .unwrap();
        // Lower-cased with the rest of the head: compare likewise.
        let expected = StandardSigner::from_secret(SECRET).unwrap().sign(
            "0195f1a4-7c2e-7000-8000-000000000001",
            ts,
            &body,
        );
        assert_eq!(signature, expected.to_ascii_lowercase());
        assert_eq!(head.matches("webhook-id:").count(), 1, "{head}");
    }

    #[tokio::test]
    async fn credentials_in_the_url_are_sent_as_basic_auth() {
        let (url, _, mut heads) = agent("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await;
        let with_userinfo = url.replace("http://", "http://bot%40acme:p%3Ass@");
        let (uri, basic) = request_target(&with_userinfo.parse().unwrap()).unwrap();
        assert_eq!(uri.to_string(), url);
        let mut t = target(&url, HeaderMap::new());
        t.uri = uri;
        t.headers = header_template(HeaderMap::new(), basic.clone());
        let body = Bytes::from_static(b"{}");
        assert!(
            attempt(&client(None).unwrap(), &t, req(&body))
                .await
                .delivered
        );
        let head = heads.recv().await.unwrap();
        // base64("bot@acme:p:ss"), lower-cased with the rest of the head.
        assert!(
            head.lines()
                .any(|l| l == "authorization: basic ym90qgfjbwu6cdpzcw=="),
            "{head}"
        );
        assert!(!head.contains("bot"), "{head}");
        // The agent's own `authorization` header wins.
        let mut own = HeaderMap::new();
        own.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer t"));
        let template = header_template(own, basic);
        assert_eq!(template[header::AUTHORIZATION], "Bearer t");
        let (_, none) = request_target(&url.parse().unwrap()).unwrap();
        assert!(none.is_none());
    }

    #[tokio::test]
    async fn empty_success_answers_reuse_one_connection() {
        let (url, accepted, _heads) = agent("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await;
        let (client, target) = (client(None).unwrap(), target(&url, HeaderMap::new()));
        let body = Bytes::from_static(b"{}");
        for _ in 0..5 {
            let r = attempt(&client, &target, req(&body)).await;
            assert!(r.delivered, "{r:?}");
            assert_eq!(r.response_prefix, None);
        }
        // The pool takes a connection back a moment after its answer, so an attempt that
        // follows at once may open a second one; an unread answer would close each (five).
        assert!(accepted.load(Ordering::SeqCst) <= 2, "{accepted:?}");
    }

    #[tokio::test]
    async fn answers_with_a_body_are_drained_and_kept_on_failure() {
        let (url, accepted, _heads) = agent(
            "HTTP/1.1 503 Service Unavailable\r\nretry-after: 7\r\ncontent-length: 9\r\n\r\ntry later",
        )
        .await;
        let (client, target) = (client(None).unwrap(), target(&url, HeaderMap::new()));
        let body = Bytes::from_static(b"{}");
        for _ in 0..3 {
            let r = attempt(&client, &target, req(&body)).await;
            assert!(!r.delivered);
            assert_eq!(r.status_code, Some(503));
            assert_eq!(
                r.error.as_deref(),
                Some("agent answered 503 Service Unavailable")
            );
            assert_eq!(r.response_prefix.as_deref(), Some("try later"));
            assert_eq!(r.retry_after, Some(Duration::from_secs(7)));
        }
        // Drained, so kept alive (see above for why two).
        assert!(accepted.load(Ordering::SeqCst) <= 2, "{accepted:?}");
    }

    #[tokio::test]
    async fn an_agent_that_does_not_answer_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let (sock, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(10)).await;
            drop(sock);
        });
        let mut t = target(&format!("http://{addr}/hook"), HeaderMap::new());
        t.timeout = Duration::from_millis(200);
        let body = Bytes::from_static(b"{}");
        let r = attempt(&client(None).unwrap(), &t, req(&body)).await;
        assert!(!r.delivered);
        assert_eq!(r.error.as_deref(), Some("timed out after 200 ms"));
        held.abort();
    }

    #[tokio::test]
    async fn refused_connection_is_a_clear_failure() {
        // Bind then drop to get a port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let target = target(&format!("http://127.0.0.1:{port}/hook"), HeaderMap::new());
        let body = Bytes::from_static(b"{}");
        let r = attempt(&client(None).unwrap(), &target, req(&body)).await;
        assert!(!r.delivered);
        assert_eq!(r.status_code, None);
        let error = r.error.unwrap();
        assert!(error.starts_with("connection failed: "), "{error}");
    }
}
