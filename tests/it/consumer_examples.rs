//! The pull consumers of docs/consumers.md, run as they are shipped: `examples/consumers/
//! consumer.py` (python3, standard library) and `consumer.js` (node, built-in fetch) share one
//! pull agent's deliveries against the real server, and every event is handled and acked once.
//! The guide shows both programs verbatim; a test keeps them in sync.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, BufReader};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::delivery::*;
use crate::support::*;

/// The pull agent's own key (write-only `apiKey`, at least 16 characters).
const PULL_KEY: &str = "pull-agent-key-for-consumer-examples";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn example(name: &str) -> PathBuf {
    repo().join("examples/consumers").join(name)
}

/// The interpreter's `--version`, or a failure that says what is missing: these examples are
/// part of the guide, so a machine without the tool fails the test instead of skipping it.
fn require(tool: &str, why: &str) -> String {
    let out = std::process::Command::new(tool).arg("--version").output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        Ok(o) => panic!(
            "`{tool} --version` failed ({}): {why}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!("{tool} is not installed ({e}): {why}"),
    }
}

fn require_interpreters() {
    require(
        "python3",
        "tests/it/consumer_examples.rs runs examples/consumers/consumer.py with it \
         (apt-get install python3; .ci/run installs it)",
    );
    let node = require(
        "node",
        "tests/it/consumer_examples.rs runs examples/consumers/consumer.js with it \
         (Node 18 or newer; .ci/run installs it)",
    );
    let major: u32 = node
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    assert!(
        major >= 18,
        "examples/consumers/consumer.js needs Node 18 or newer (built-in fetch), found {node}"
    );
}

/// A server with pull agent `puller` (its own key `PULL_KEY`) and a route of every event to it.
async fn pull_setup() -> (TestApp, Admin) {
    let app = TestApp::spawn().await;
    let admin = Admin::of(&app);
    let (status, v) = admin
        .call(
            reqwest::Method::PUT,
            "/admin/agents/puller",
            Some(
                json!({"id": "puller", "name": "pull consumers", "mode": "pull",
                        "apiKey": PULL_KEY}),
            ),
        )
        .await;
    assert!(
        status == 200 || status == 201,
        "PUT /admin/agents/puller: {status} {v}"
    );
    admin
        .create_route(route(
            "all-to-puller",
            &["puller"],
            policy(5, "fixed", 200, 200),
            json!({}),
        ))
        .await;
    (app, admin)
}

/// One example program running against `base` as consumer `name`.
struct Consumer {
    name: &'static str,
    child: tokio::process::Child,
    stderr: tokio::task::JoinHandle<String>,
}

fn start(
    program: &str,
    name: &'static str,
    base: &str,
    key: &str,
    max_events: Option<usize>,
    lines: mpsc::UnboundedSender<(&'static str, String)>,
) -> Consumer {
    let (interpreter, file) = match program {
        "py" => ("python3", example("consumer.py")),
        _ => ("node", example("consumer.js")),
    };
    let mut cmd = tokio::process::Command::new(interpreter);
    cmd.arg(&file)
        .current_dir(repo())
        .env("ROUTER_URL", base)
        .env("AGENT_ID", "puller")
        .env("AGENT_KEY", key)
        .env("CONSUMER", name)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(n) = max_events {
        cmd.env("MAX_EVENTS", n.to_string());
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {interpreter} {}: {e}", file.display()));
    let stdout = child.stdout.take().unwrap();
    tokio::spawn(async move {
        let mut reader = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            let _ = lines.send((name, line));
        }
    });
    let mut stderr = child.stderr.take().unwrap();
    let stderr = tokio::spawn(async move {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s).await;
        s
    });
    Consumer {
        name,
        child,
        stderr,
    }
}

impl Consumer {
    /// Kills the program (a consumer runs until stopped) and hands back what it logged.
    async fn kill(mut self) -> String {
        let _ = self.child.kill().await;
        let log = self.stderr.await.unwrap_or_default();
        format!("--- {} stderr ---\n{log}", self.name)
    }

    /// Waits for the program to exit on its own (`MAX_EVENTS`); its exit status and its log.
    async fn exit(mut self) -> (std::process::ExitStatus, String) {
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not exit within 60 s", self.name))
            .unwrap();
        let log = self.stderr.await.unwrap_or_default();
        (status, format!("--- {} stderr ---\n{log}", self.name))
    }
}

/// A handled line, `acked <delivery id> <event id>`: the event id.
fn handled_event(who: &str, line: &str) -> Uuid {
    let parts: Vec<&str> = line.split_whitespace().collect();
    match parts.as_slice() {
        ["acked", delivery, event] if !delivery.is_empty() => Uuid::parse_str(event)
            .unwrap_or_else(|e| panic!("{who}: not an event id in {line:?}: {e}")),
        _ => panic!("{who}: unexpected line on stdout: {line:?}"),
    }
}

/// Reads handled lines until `n` have come, or fails after `limit` showing the logs.
async fn collect(
    rx: &mut mpsc::UnboundedReceiver<(&'static str, String)>,
    n: usize,
    limit: Duration,
) -> Result<Vec<(&'static str, Uuid)>, Vec<(&'static str, Uuid)>> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    while got.len() < n {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((who, line))) => got.push((who, handled_event(who, &line))),
            Ok(None) | Err(_) => return Err(got),
        }
    }
    Ok(got)
}

/// Every one of `sent` handled exactly once, nothing else; how many each consumer handled.
fn assert_each_once(
    got: &[(&'static str, Uuid)],
    sent: &BTreeSet<Uuid>,
    logs: &str,
) -> BTreeMap<&'static str, usize> {
    let mut seen = BTreeMap::<Uuid, Vec<&str>>::new();
    let mut split = BTreeMap::new();
    for (who, id) in got {
        seen.entry(*id).or_default().push(who);
        *split.entry(*who).or_insert(0) += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, w)| w.len() > 1).collect();
    assert!(
        twice.is_empty(),
        "handled more than once: {twice:?}\n{logs}"
    );
    let handled: BTreeSet<Uuid> = seen.keys().copied().collect();
    assert_eq!(&handled, sent, "handled ≠ sent\n{logs}");
    split
}

/// The router's own view: every event's one delivery is `delivered`, and the agent has no
/// unfinished work left.
async fn assert_all_delivered(admin: &Admin, sent: &BTreeSet<Uuid>) {
    for id in sent {
        admin.wait_status(*id, "delivered").await;
    }
    poll(
        Duration::from_secs(15),
        "no work left for puller",
        || async {
            let stats = admin.stats().await;
            if stats["byAgent"].get("puller").is_none() {
                Ok(())
            } else {
                Err(stats)
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_and_javascript_consumers_share_the_work_and_ack_every_event_once() {
    require_interpreters();
    let (app, admin) = pull_setup().await;

    // Both at once, sharing the agent's deliveries (one consumer group): both are waiting in a
    // long poll (the agent lists them as its consumers) before the first event comes.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let py = start("py", "python", &app.base, PULL_KEY, None, tx.clone());
    let js = start("js", "node", &app.base, PULL_KEY, None, tx.clone());
    poll(
        Duration::from_secs(30),
        "both consumers polling",
        || async {
            let (_, agent) = admin.get("/admin/agents/puller").await;
            let names: Vec<&str> = agent["consumers"]
                .as_array()
                .map(|c| c.iter().filter_map(|c| c["name"].as_str()).collect())
                .unwrap_or_default();
            if names == ["node", "python"] {
                Ok(())
            } else {
                Err(agent)
            }
        },
    )
    .await;

    let mut sent = BTreeSet::new();
    for n in 0..50 {
        sent.insert(post_routed(&app, "pull_request", n).await);
    }
    let got = collect(&mut rx, sent.len(), Duration::from_secs(90)).await;
    // Nothing more may come: a second handling of an event would show here.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut got = match got {
        Ok(g) => g,
        Err(partial) => {
            let logs = format!("{}\n{}", py.kill().await, js.kill().await);
            panic!(
                "only {} of {} events handled within 90 s: {partial:?}\n{logs}",
                partial.len(),
                sent.len()
            );
        }
    };
    while let Ok((who, line)) = rx.try_recv() {
        got.push((who, handled_event(who, &line)));
    }
    let logs = format!("{}\n{}", py.kill().await, js.kill().await);
    let split = assert_each_once(&got, &sent, &logs);
    eprintln!("handled by: {split:?}");
    // Each was waiting when the first events came, so each got some of them.
    assert_eq!(
        split.len(),
        2,
        "one consumer handled everything: {split:?}\n{logs}"
    );
    assert_all_delivered(&admin, &sent).await;
    let (_, agent) = admin.get("/admin/agents/puller").await;
    let leases: Vec<u64> = agent["consumers"]
        .as_array()
        .map(|c| c.iter().filter_map(|c| c["leases"].as_u64()).collect())
        .unwrap_or_default();
    assert_eq!(leases, [0, 0], "no lease left after every ack: {agent}");

    // MAX_EVENTS: each stops by itself once it has acked its share, leasing no more than that.
    let mut more = BTreeSet::new();
    for n in 50..56 {
        more.insert(post_routed(&app, "pull_request", n).await);
    }
    let py = start("py", "python", &app.base, PULL_KEY, Some(3), tx.clone());
    let js = start("js", "node", &app.base, PULL_KEY, Some(3), tx.clone());
    let (py_status, py_log) = py.exit().await;
    let (js_status, js_log) = js.exit().await;
    let logs = format!("{py_log}\n{js_log}");
    assert!(py_status.success(), "python: {py_status}\n{logs}");
    assert!(js_status.success(), "node: {js_status}\n{logs}");
    let got = collect(&mut rx, more.len(), Duration::from_secs(5))
        .await
        .unwrap_or_else(|partial| panic!("{partial:?}\n{logs}"));
    let split = assert_each_once(&got, &more, &logs);
    assert_eq!(split.get("python"), Some(&3), "{logs}");
    assert_eq!(split.get("node"), Some(&3), "{logs}");
    assert_all_delivered(&admin, &more).await;
    // The node's own count: every ack of this run, and nothing leased any more.
    let stats = admin.stats().await;
    assert_eq!(stats["acked"], 56, "{stats}");
    assert_eq!(stats["leased"], 0, "{stats}");
}

#[tokio::test]
async fn the_consumers_stop_with_a_clear_message_on_a_wrong_key() {
    require_interpreters();
    let (app, _admin) = pull_setup().await;
    let (tx, _rx) = mpsc::unbounded_channel();
    for (program, name) in [("py", "python"), ("js", "node")] {
        let c = start(
            program,
            name,
            &app.base,
            "not-the-key-of-this-agent",
            None,
            tx.clone(),
        );
        let (status, log) = c.exit().await;
        assert_eq!(status.code(), Some(2), "{log}");
        assert!(log.contains("refused") && log.contains("401"), "{log}");
    }
}

/// The fenced block of `doc` in `lang` that holds the example's first line.
fn doc_block<'a>(doc: &'a str, lang: &str, first_line: &str) -> &'a str {
    let fence = format!("```{lang}\n");
    doc.match_indices(&fence)
        .map(|(at, _)| &doc[at + fence.len()..])
        .find(|rest| rest.starts_with(first_line))
        .map(|rest| &rest[..rest.find("\n```").map_or(rest.len(), |e| e + 1)])
        .unwrap_or_else(|| {
            panic!("docs/consumers.md has no ```{lang} block starting {first_line:?}")
        })
}

#[test]
fn the_guide_shows_the_example_programs_verbatim() {
    let doc = std::fs::read_to_string(repo().join("docs/consumers.md")).unwrap();
    for (file, lang) in [("consumer.py", "python"), ("consumer.js", "js")] {
        let code = std::fs::read_to_string(example(file)).unwrap();
        let first = code.lines().next().unwrap();
        assert_eq!(
            doc_block(&doc, lang, first),
            code,
            "docs/consumers.md must show examples/consumers/{file} as it is: copy it over"
        );
    }
}
