//! `TestReceiver`: a tiny HTTP server playing the agent. It records every request and answers
//! from a per-path script (default 200), so tests can make an agent fail, throttle or hang.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::sync::Notify;

/// What the receiver answers.
#[derive(Clone, Debug)]
pub enum Reply {
    Status(u16),
    /// 429 or 503 with a `Retry-After` in seconds.
    RetryAfter(u16, u64),
    /// Wait this long before answering 200 (to exceed an agent's timeout).
    Hang(Duration),
    /// Hold the request until the gate opens, then answer 200.
    Held(Gate),
    /// This status, with a header `(name, value)` and a body.
    Answer(u16, (&'static str, &'static str), String),
}

/// Holds requests answered with `Reply::Held` until the test opens it (a hang that ends on a
/// condition rather than after a time).
#[derive(Clone, Debug)]
pub struct Gate(Arc<tokio::sync::watch::Sender<bool>>);

impl Default for Gate {
    fn default() -> Self {
        Gate(Arc::new(tokio::sync::watch::channel(false).0))
    }
}

impl Gate {
    /// Lets every held request (and every later one) through.
    pub fn open(&self) {
        self.0.send_replace(true);
    }

    async fn passed(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|open| *open).await;
    }
}

#[derive(Clone, Debug)]
pub struct Received {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: tokio::time::Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

#[derive(Default)]
struct Inner {
    log: Mutex<Vec<Received>>,
    scripts: Mutex<HashMap<String, VecDeque<Reply>>>,
    defaults: Mutex<HashMap<String, Reply>>,
    notify: Notify,
}

#[derive(Clone)]
pub struct TestReceiver {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
}

impl TestReceiver {
    pub async fn start() -> TestReceiver {
        let inner = Arc::new(Inner::default());
        let app = Router::new().fallback(handle).with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        TestReceiver { addr, inner }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The next answers on `path`, in order; after them, the default.
    pub fn script(&self, path: &str, replies: impl IntoIterator<Item = Reply>) {
        self.inner
            .scripts
            .lock()
            .unwrap()
            .entry(path.to_string())
            .or_default()
            .extend(replies);
    }

    /// The answer on `path` once its script is used up.
    pub fn set_default(&self, path: &str, reply: Reply) {
        self.inner
            .defaults
            .lock()
            .unwrap()
            .insert(path.to_string(), reply);
    }

    pub fn received(&self, path: &str) -> Vec<Received> {
        self.inner
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// Waits until `path` has received at least `n` requests.
    pub async fn wait_for(&self, path: &str, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.inner.notify.notified();
            let got = self.received(path);
            if got.len() >= n {
                return got;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let got = self.received(path);
                assert!(
                    got.len() >= n,
                    "{path}: expected {n} requests within {timeout:?}, got {}",
                    got.len()
                );
                return got;
            }
        }
    }
}

async fn handle(State(inner): State<Arc<Inner>>, req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let headers = req.headers().clone();
    let body = axum::body::to_bytes(req.into_body(), 16 << 20)
        .await
        .unwrap_or_default();
    let reply = {
        let mut scripts = inner.scripts.lock().unwrap();
        scripts.get_mut(&path).and_then(|q| q.pop_front())
    }
    .or_else(|| inner.defaults.lock().unwrap().get(&path).cloned())
    .unwrap_or(Reply::Status(200));
    // Recorded on arrival, so a request the client gives up on is still seen.
    inner.log.lock().unwrap().push(Received {
        method,
        path,
        headers,
        body,
        at: tokio::time::Instant::now(),
    });
    inner.notify.notify_waiters();
    match &reply {
        Reply::Hang(d) => tokio::time::sleep(*d).await,
        Reply::Held(gate) => gate.passed().await,
        _ => {}
    }
    match reply {
        Reply::Status(s) => StatusCode::from_u16(s).unwrap().into_response(),
        Reply::RetryAfter(s, secs) => (
            StatusCode::from_u16(s).unwrap(),
            [("retry-after", secs.to_string())],
        )
            .into_response(),
        Reply::Hang(_) | Reply::Held(_) => StatusCode::OK.into_response(),
        Reply::Answer(s, header, body) => {
            (StatusCode::from_u16(s).unwrap(), [header], body).into_response()
        }
    }
}
