//! Test helpers: `TestApp` runs the real server in process; `ChildServer` runs the real binary.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use event_router::config::{Config, Secret};
use event_router::providers::github;
// What `pg_testing` reaches through `super::`.
use event_router::store::postgres::{pg_message, redact_url, tls};
use serde_json::Value;

/// Fresh PostgreSQL databases: the library's own test helper, the one copy of it, which the
/// library does not ship.
#[path = "../../src/store/postgres/testing.rs"]
pub mod pg_testing;

pub const GITHUB_SECRET: &str = "gh-secret";
pub const LINEAR_SECRET: &str = "lin-secret";
pub const SLACK_SECRET: &str = "slack-secret";
/// A Standard Webhooks secret (base64 of 24 bytes).
pub const INTERNAL_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
pub const AGENT_KEY: &str = "agent-key-for-tests";
pub const ADMIN_KEY: &str = "admin-key-for-tests";

pub fn now_ms() -> i64 {
    event_router::clock::now_ms()
}

/// With `EVENT_ROUTER_TEST_DATABASE_URL` set to a PostgreSQL server URL, the servers these
/// tests start store in PostgreSQL: each data dir gets a fresh database of its own (the same one
/// again when a test restarts on that dir), so the whole suite can be run against PostgreSQL:
///
/// `EVENT_ROUTER_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres cargo test --test it`
///
/// The databases (`er_test_…`) outlive the run; drop them afterwards. Unset (as in CI), the
/// servers use SQLite in their data dir.
pub fn database_for(dir: &Path) -> Option<String> {
    type Databases = HashMap<PathBuf, (String, pg_testing::DatabaseGuard)>;
    static DATABASES: OnceLock<Mutex<Databases>> = OnceLock::new();
    let server = std::env::var("EVENT_ROUTER_TEST_DATABASE_URL")
        .ok()
        .filter(|s| !s.trim().is_empty())?;
    let mut map = DATABASES.get_or_init(Default::default).lock().unwrap();
    if let Some((url, _)) = map.get(dir) {
        return Some(url.clone());
    }
    // Called from sync code inside a runtime: create it on a thread with a runtime of its own.
    let (url, guard) = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(pg_testing::fresh_database_on(&server))
    })
    .join()
    .unwrap()
    .expect("a fresh PostgreSQL database");
    map.insert(dir.to_path_buf(), (url.clone(), guard));
    Some(url)
}

/// The storage backend the servers of this run use (`/health` reports it).
pub fn backend() -> &'static str {
    if std::env::var("EVENT_ROUTER_TEST_DATABASE_URL").is_ok_and(|s| !s.trim().is_empty()) {
        "postgres"
    } else {
        "sqlite"
    }
}

/// Every row of every table of a PostgreSQL database, as text (what is "at rest" there).
pub fn postgres_dump(url: &str) -> Vec<u8> {
    let url = url.to_string();
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                let (client, conn) = pg_testing::connect(&url).await.unwrap();
                tokio::spawn(conn);
                let tables: Vec<String> = client
                    .query(
                        "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public'",
                        &[],
                    )
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                let mut all = Vec::new();
                for t in tables {
                    for r in client
                        .query(&format!("SELECT t::text FROM {t} t"), &[])
                        .await
                        .unwrap()
                    {
                        all.extend(r.get::<_, String>(0).into_bytes());
                    }
                }
                all
            })
    })
    .join()
    .unwrap()
}

/// A config with every built-in source enabled and known keys, storing under `dir`.
pub fn test_config(dir: &Path) -> Config {
    let mut c = Config {
        data_dir: dir.to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: database_for(dir),
        ..Config::default()
    };
    for (name, secret) in [
        ("github", GITHUB_SECRET),
        ("linear", LINEAR_SECRET),
        ("slack", SLACK_SECRET),
        ("internal", INTERNAL_SECRET),
    ] {
        c.sources.get_mut(name).unwrap().secret = Some(Secret(secret.into()));
    }
    c.agent_api_key = Some(Secret(AGENT_KEY.into()));
    c.admin_api_key = Some(Secret(ADMIN_KEY.into()));
    c
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub base: String,
    pub dir: tempfile::TempDir,
    pub client: reqwest::Client,
    server: Option<event_router::Server>,
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        Self::spawn_with(|_| {}).await
    }

    /// Starts a server whose config `adjust` may change (on top of `test_config`).
    pub async fn spawn_with(adjust: impl FnOnce(&mut Config)) -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        Self::spawn_in(dir, adjust).await
    }

    /// Starts a server on an existing data dir (e.g. to restart on the same store).
    pub async fn spawn_in(dir: tempfile::TempDir, adjust: impl FnOnce(&mut Config)) -> TestApp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::spawn_on(listener, dir, adjust).await
    }

    /// Starts a server on `addr` (e.g. where a stopped one listened, so that its clients
    /// reconnect) on an existing data dir.
    pub async fn spawn_at(
        addr: SocketAddr,
        dir: tempfile::TempDir,
        adjust: impl FnOnce(&mut Config),
    ) -> TestApp {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        Self::spawn_on(listener, dir, adjust).await
    }

    async fn spawn_on(
        listener: tokio::net::TcpListener,
        dir: tempfile::TempDir,
        adjust: impl FnOnce(&mut Config),
    ) -> TestApp {
        let mut cfg = test_config(dir.path());
        adjust(&mut cfg);
        let server = event_router::start(cfg, listener).await.unwrap();
        let addr = server.addr;
        TestApp {
            addr,
            base: format!("http://{addr}"),
            dir,
            client: reqwest::Client::new(),
            server: Some(server),
        }
    }

    /// The running server's state, for what the wire does not show (e.g. the stream hub's
    /// counters).
    pub fn state(&self) -> &event_router::http::AppState {
        &self.server().state
    }

    /// The running server (e.g. to reload its TLS certificate).
    pub fn server(&self) -> &event_router::Server {
        self.server.as_ref().expect("the server is running")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Stops the server gracefully and hands back the data dir.
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(s) = self.server.take() {
            s.shutdown(Duration::from_secs(10)).await;
        }
        self.dir
    }

    pub async fn post_github(&self, event: &str, body: &[u8]) -> reqwest::Response {
        self.client
            .post(self.url("/webhook/github"))
            .header("content-type", "application/json")
            .header("x-github-event", event)
            .header("x-github-delivery", uuid::Uuid::new_v4().to_string())
            .header(
                "x-hub-signature-256",
                github::sign(GITHUB_SECRET.as_bytes(), body),
            )
            .body(body.to_vec())
            .send()
            .await
            .unwrap()
    }

    pub async fn admin_get(&self, path: &str) -> (u16, Value) {
        let r = self
            .client
            .get(self.url(path))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        // Archived events may hold payloads nested to the contract's 128 levels inside the event
        // object, deeper than serde_json's default guard, so parse without it.
        let bytes = r.bytes().await.unwrap_or_default();
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        de.disable_recursion_limit();
        let v = serde::Deserialize::deserialize(&mut de).unwrap_or(Value::Null);
        (status, v)
    }

    /// `GET /metrics`, parsed by a real Prometheus parser.
    pub async fn metrics(&self) -> prometheus_parse::Scrape {
        let text = self
            .client
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap()
    }
}

/// The sum of a counter's samples whose labels include `labels`.
pub fn counter(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(c) | prometheus_parse::Value::Untyped(c) => c,
            _ => 0.0,
        })
        .sum()
}

/// The real binary as a child process (for crash and signal tests).
pub struct ChildServer {
    pub child: tokio::process::Child,
    pub base: String,
}

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_event-router"))
}

impl ChildServer {
    /// Starts `event-router serve` on a free port with the test secrets, waiting until /health answers.
    pub async fn start(data_dir: &Path, extra_env: &[(&str, &str)]) -> ChildServer {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut cmd = tokio::process::Command::new(binary());
        cmd.arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(data_dir)
            .env_clear()
            .env("GITHUB_WEBHOOK_SECRET", GITHUB_SECRET)
            .env("LINEAR_WEBHOOK_SECRET", LINEAR_SECRET)
            .env("SLACK_WEBHOOK_SECRET", SLACK_SECRET)
            .env("INTERNAL_WEBHOOK_SECRET", INTERNAL_SECRET)
            .env("AGENT_API_KEY", AGENT_KEY)
            .env("ADMIN_API_KEY", ADMIN_KEY)
            .env("LOG_LEVEL", "warn")
            // Bursts in these tests come from one sender; keep the inbound limit out of the way.
            .env("DEFAULT_RATE_LIMIT", "10000000")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(url) = database_for(data_dir) {
            cmd.env("DATABASE_URL", url);
        }
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        let base = format!("http://127.0.0.1:{port}");
        // Each probe bounded, so a server that accepts but never answers fails the deadline
        // below instead of hanging the test.
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = client.get(format!("{base}/health")).send().await
                && r.status().is_success()
            {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "server did not start");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        ChildServer { child, base }
    }
}

/// Polls `check` until it returns `Some`, or panics after `timeout`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met in {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
