//! A real browser's own `EventSource` (headless Chromium) reading `/stream/sse`. The key goes in
//! the query, as EventSource cannot set headers, and the page comes from another origin (a
//! helper server on its own port), as a user's own page would: the page posts every message it
//! gets back to the helper, and the test compares them with the events it sent, before and after
//! the server restarts (the browser reconnects by itself with `Last-Event-ID`).

use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::response::Html;
use axum::routing::{get, post};
use serde_json::Value;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::rules::{create, route};
use crate::signed::*;
use crate::stream_client::StreamRequest;
use crate::support::*;

const CHROMIUM: &str = "/usr/bin/chromium";

/// How long a cold headless Chromium may take to load the page and connect.
const BROWSER_START: Duration = Duration::from_secs(45);

/// Opens the stream and reports `open`, each message (data and lastEventId) and each error.
const PAGE: &str = r#"<!doctype html>
<html><head><title>stream</title></head><body><script>
// Reports go one after another, so they reach the test in the order the page saw them.
let chain = Promise.resolve();
const report = (r) => { chain = chain.then(() => fetch("/report", {method: "POST", body: JSON.stringify(r)})).catch(() => {}); };
const source = new EventSource(STREAM_URL);
source.onopen = () => report({kind: "open"});
source.onmessage = (m) => report({kind: "message", lastEventId: m.lastEventId, data: m.data});
source.onerror = () => report({kind: "error", readyState: source.readyState});
</script></body></html>
"#;

/// Headless Chromium showing one page; the whole process group is killed on drop.
struct Browser {
    child: Child,
}

impl Browser {
    fn launch(url: &str, profile: &Path) -> Browser {
        let child = Command::new(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--mute-audio",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own group, so that its helper processes end with it.
            .process_group(0)
            .spawn()
            .expect("start chromium");
        Browser { child }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Serves the page at `/` and forwards what it posts to `/report`; the page's URL.
async fn serve_page(page: String, reports: mpsc::UnboundedSender<Value>) -> String {
    let helper = Router::new()
        .route("/", get(move || async move { Html(page) }))
        .route(
            "/report",
            post(
                |State(tx): State<mpsc::UnboundedSender<Value>>, body: String| async move {
                    let _ = tx.send(serde_json::from_str(&body).unwrap_or(Value::String(body)));
                },
            ),
        )
        .with_state(reports);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, helper).await });
    url
}

/// The next report from the page within `timeout`.
async fn next_report(reports: &mut mpsc::UnboundedReceiver<Value>, timeout: Duration) -> Value {
    tokio::time::timeout(timeout, reports.recv())
        .await
        .unwrap_or_else(|_| panic!("the page reported nothing within {timeout:?}"))
        .expect("the helper server is up")
}

#[tokio::test]
async fn a_browsers_event_source_on_another_origin_receives_events_and_resumes() {
    if !Path::new(CHROMIUM).exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{CHROMIUM} is missing in CI: .ci/run must install chromium"
        );
        eprintln!(
            "SKIPPED a_browsers_event_source_on_another_origin_receives_events_and_resumes: \
             {CHROMIUM} is not installed (apt-get install chromium); CI runs it"
        );
        return;
    }
    let app = TestApp::spawn().await;
    create(
        &app,
        "agents",
        serde_json::json!({"id": "bot", "name": "bot", "enabled": true}),
    )
    .await;
    create(&app, "routes", route("to-bot", &["bot"])).await;

    let stream_url = format!(
        "{}/stream/sse?{}",
        app.base,
        StreamRequest::new("bot", AGENT_KEY).query_string()
    );
    let page = PAGE.replace("STREAM_URL", &Value::String(stream_url).to_string());
    let (tx, mut reports) = mpsc::unbounded_channel();
    let page_url = serve_page(page, tx).await;
    let profile = tempfile::tempdir().unwrap();
    let _browser = Browser::launch(&page_url, profile.path());

    let first = next_report(&mut reports, BROWSER_START).await;
    assert_eq!(
        first["kind"], "open",
        "the page's EventSource did not open (a cross-origin read needs \
         Access-Control-Allow-Origin on /stream/sse): {first}"
    );
    let sent = post_events(&app, 0..3).await;
    let got = browser_events(&mut reports, sent.len()).await;
    assert_eq!(
        got, sent,
        "the browser received other events than were sent"
    );

    // The server restarts on the same port: the stream ends with the close message, and the
    // browser reconnects by itself, sending `Last-Event-ID`; what was posted once the server was
    // back arrives exactly once, whether the reconnect replays it or gets it live.
    let addr = app.addr;
    let dir = app.stop().await;
    let app = TestApp::spawn_at(addr, dir, |_| {}).await;
    let after = post_events(&app, 3..5).await;
    let got = browser_events(&mut reports, after.len()).await;
    assert_eq!(
        got, after,
        "after the restart, the browser received other events than were sent"
    );
}

async fn post_events(app: &TestApp, ns: std::ops::Range<usize>) -> Vec<Uuid> {
    let mut ids = Vec::new();
    for n in ns {
        let body = serde_json::json!({"n": n, "sender": {"login": "octocat"}}).to_string();
        ids.push(Webhook::github("push", body).send(app).await.accepted().id);
    }
    ids
}

/// The ids of the next `n` events the page received, skipping its reconnects, the server's close
/// message and heartbeats.
async fn browser_events(reports: &mut mpsc::UnboundedReceiver<Value>, n: usize) -> Vec<Uuid> {
    let mut got = Vec::new();
    while got.len() < n {
        // Chromium waits about 3 s before it reconnects.
        let r = next_report(reports, Duration::from_secs(15)).await;
        match r["kind"].as_str() {
            Some("open") => continue,
            Some("error") => {
                // 0: reconnecting; 2: the browser gave up on the stream.
                assert_eq!(r["readyState"], 0, "the EventSource failed for good: {r}");
                continue;
            }
            _ => {}
        }
        assert_eq!(r["kind"], "message", "{r}");
        let data: Value = serde_json::from_str(r["data"].as_str().unwrap()).unwrap();
        if data["type"] == "close" || data["type"] == "heartbeat" {
            continue;
        }
        assert_eq!(data["type"], "event", "{data}");
        assert_eq!(
            r["lastEventId"], data["data"]["id"],
            "the browser's lastEventId is the event id"
        );
        got.push(Uuid::parse_str(data["data"]["id"].as_str().unwrap()).unwrap());
    }
    got
}
