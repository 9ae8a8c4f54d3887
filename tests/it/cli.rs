//! The binary's other commands: `check-config`, `send`, and `serve` refusing a bad config
//! (API.md sections 1 and 8).

use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_router::providers::slack;
use serde_json::Value;
use tokio::io::AsyncReadExt as _;

use crate::signed::*;
use crate::support::*;

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");

/// Runs the binary with a clean environment, failing if it takes more than 20 s.
async fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = tokio::process::Command::new(binary());
    cmd.args(args).env_clear().kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    tokio::time::timeout(Duration::from_secs(20), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("event-router {args:?} did not finish"))
        .unwrap()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn check_config_accepts_a_good_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "good.toml",
        r#"listen = "127.0.0.1:9000"
data_dir = "/var/lib/event-router"
max_event_size = 2097152
default_retry_attempts = 3
default_retry_delay = 500
max_queue_size = 5000
rate_limit_window = 60000
default_rate_limit = 100
retention_days = 7
log_level = "debug"

[sources.ci]
scheme = "standard"
secret_env = "CI_WEBHOOK_SECRET"
identifier_field = "payload.repository"

[sources.github]
identifier_field = "payload.repository.owner.login"
"#,
    );
    let out = run(&["check-config", &path], &[]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn check_config_lists_every_error_with_its_location() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "bad.toml",
        r#"listen = "not an address"
max_event_size = -5
retention_days = "thirty"
colour = "blue"

[sources.ci]
scheme = "carrier-pigeon"
"#,
    );
    let out = run(&["check-config", &path], &[]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    let expected = [
        (1, "listen"),
        (2, "max_event_size"),
        (3, "retention_days"),
        (4, "colour"),
        (7, "sources.ci.scheme"),
    ];
    for (line, key) in expected {
        let prefix = format!("{path}:{line}:");
        let found = stderr.lines().any(|l| {
            l.strip_prefix(&prefix)
                .and_then(|rest| rest.split_once(": "))
                .is_some_and(|(col, rest)| {
                    col.parse::<u32>().is_ok_and(|c| c >= 1)
                        && rest
                            .strip_prefix(&format!("{key}: "))
                            .is_some_and(|msg| !msg.trim().is_empty())
                })
        });
        assert!(
            found,
            "no `{path}:{line}:COL: {key}: message` line in:\n{stderr}"
        );
    }
}

/// Settings, sources and every kind of declared object wrong at once: one run lists every
/// error, each at the line and column of the offending key or value (issue #32).
#[tokio::test]
async fn check_config_lists_every_error_of_every_table_at_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let text = r#"listen = "not an address"
retention_days = 0

[sources.ci]
scheme = "standard"
identifier_field = ""

[[agents]]
id = "reviewer"
name = "Reviewer"
url = "ftp://example.com/hook"
timeout_ms = 0

[[agents]]
id = "has space"
name = ""

[[filters]]
id = "drafts"
name = "Drafts"
action = "include"
conditions = [
  { field = "payload.a", operator = "equals", value = 1 },
  { field = "payload.b", operator = "startsWith", value = "x" },
  { field = "payload.c", operator = "regex", value = "(" },
]

[[filters]]
id = "f2"
name = "F2"
action = "explode"

[[routes]]
id = "r1"
name = "R1"
target_agents = ["reviewer", "ghost"]
retry_policy = { max_attempts = 0, backoff_strategy = "linear", base_delay = 1, max_delay = 2 }

[[routes]]
id = "r2"
name = "R2"
target_agents = ["has space"]
source_filters = [ { action = "include", conditions = [ { field = "x", operator = "bad", value = 1 } ] } ]

[[rate_limits]]
source = "github"
identifier = "*"
limit = 0
window = 1000
"#;
    let path = write(dir.path(), "every.toml", text);
    let out = run(&["check-config", &path], &[]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    // (line, the text the column must point at, key)
    let expected = [
        (1, "\"not an address\"", "listen"),
        (2, "0", "retention_days"),
        (6, "\"\"", "sources.ci.identifier_field"),
        (11, "url", "agents[0].url"),
        (12, "timeout_ms", "agents[0].timeoutMs"),
        (15, "id", "agents[1].id"),
        (16, "name", "agents[1].name"),
        (24, "operator", "filters[0].conditions[1].operator"),
        (25, "value", "filters[0].conditions[2].value"),
        (31, "action", "filters[1].action"),
        (36, "\"ghost\"", "routes[0].targetAgents[1]"),
        (37, "max_attempts", "routes[0].retryPolicy.maxAttempts"),
        (
            43,
            "operator",
            "routes[1].source_filters[0].conditions[0].operator",
        ),
        (48, "limit", "rate_limits[0].limit"),
    ];
    let lines: Vec<&str> = text.lines().collect();
    for (line, at, key) in expected {
        let prefix = format!("{path}:{line}:");
        let found = stderr.lines().find_map(|l| {
            let (col, rest) = l.strip_prefix(&prefix)?.split_once(": ")?;
            let msg = rest.strip_prefix(&format!("{key}: "))?;
            Some((col.parse::<usize>().ok()?, msg.to_string()))
        });
        let Some((col, msg)) = found else {
            panic!("no `{path}:{line}:COL: {key}: message` line in:\n{stderr}");
        };
        assert!(!msg.trim().is_empty(), "{stderr}");
        assert!(
            lines[line - 1][col - 1..].starts_with(at),
            "{key}: column {col} of line {line} is not at {at}:\n{stderr}"
        );
    }
    // Nothing else: a route naming an agent whose declaration is wrong is not itself wrong,
    // and no error is a consequence of another.
    assert_eq!(
        stderr.lines().count(),
        expected.len(),
        "unexpected lines in:\n{stderr}"
    );
    // In the order of the file.
    let reported: Vec<usize> = stderr
        .lines()
        .filter_map(|l| {
            l.strip_prefix(&format!("{path}:"))?
                .split(':')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert!(reported.is_sorted(), "{stderr}");

    // `serve` refuses the same file with the same list (but for route targets: those it checks
    // against the store's agents too, once the file's are applied).
    let data = dir.path().join("data");
    let serve = run(
        &[
            "serve",
            "--config",
            &path,
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    let serve_err = String::from_utf8_lossy(&serve.stderr);
    assert_eq!(serve.status.code(), Some(2), "stderr: {serve_err}");
    for (line, _, key) in expected {
        if key == "routes[0].targetAgents[1]" {
            continue;
        }
        assert!(
            serve_err.contains(&format!("{path}:{line}:")) && serve_err.contains(key),
            "serve did not report {key}:\n{serve_err}"
        );
    }
}

#[tokio::test]
async fn check_config_refuses_bad_database_tls_options_without_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing-ca.pem");
    let cases = [
        ("sslmode=verify".to_string(), "invalid sslmode"),
        (
            format!("sslmode=verify-full&sslrootcert={}", missing.display()),
            "cannot read sslrootcert",
        ),
    ];
    for (query, message) in cases {
        let path = write(
            dir.path(),
            "db.toml",
            &format!("database_url = \"postgres://u:s3cret@db.internal/er?{query}\"\n"),
        );
        let out = run(&["check-config", &path], &[]).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
        assert!(
            stderr.contains(&format!("{path}:1:")) && stderr.contains(message),
            "{query}: {stderr}"
        );
        assert!(!stderr.contains("s3cret"), "{stderr}");
    }
}

#[tokio::test]
async fn serve_with_an_invalid_config_exits_with_the_location() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "bad.toml",
        "log_level = \"info\"\nmax_event_size = \"big\"\n",
    );
    let data = dir.path().join("data");
    let out = run(
        &[
            "serve",
            "--config",
            &path,
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[("GITHUB_WEBHOOK_SECRET", GITHUB_SECRET)],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "served with a bad config: {stderr}");
    assert!(
        stderr.contains(&format!("{path}:2:")) && stderr.contains("max_event_size"),
        "the error does not say where: {stderr}"
    );
}

#[tokio::test]
async fn send_posts_signed_webhooks_that_are_archived() {
    let app = TestApp::spawn().await;
    let file = |name: &str| format!("{EXAMPLES}/{name}");
    let cases: [(&str, &str, &str, &str, &str); 4] = [
        (
            "github",
            GITHUB_SECRET,
            "pull_request",
            "github-pull_request.json",
            "pull_request",
        ),
        (
            "linear",
            LINEAR_SECRET,
            "Issue",
            "linear-issue.json",
            "issue",
        ),
        (
            "slack",
            SLACK_SECRET,
            "message",
            "slack-message.json",
            "message",
        ),
        (
            "internal",
            INTERNAL_SECRET,
            "build.completed",
            "internal-build.json",
            "build.completed",
        ),
    ];
    for (source, secret, event, name, expected_type) in cases {
        let path = file(name);
        let out = run(
            &[
                "send", source, "--url", &app.base, "--secret", secret, "--event", event, "--file",
                &path,
            ],
            &[],
        )
        .await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "send {source}: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (items, _) = list_events(&app, &format!("source={source}")).await;
        assert_eq!(items.len(), 1, "send {source}: {stdout}");
        let ev = &items[0];
        assert_eq!(ev["type"], expected_type);
        let sent: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let (k, v) = sent.as_object().unwrap().iter().next().unwrap();
        assert_eq!(&ev["payload"][k], v, "send {source}: payload");
    }
    // A wrong secret makes the command fail.
    let out = run(
        &[
            "send",
            "github",
            "--url",
            &app.base,
            "--secret",
            "wrong",
            "--event",
            "push",
            "--file",
            &file("github-pull_request.json"),
        ],
        &[],
    )
    .await;
    assert_ne!(out.status.code(), Some(0));
    assert_eq!(list_events(&app, "").await.0.len(), 4);
    app.stop().await;
}

/// `event-router serve` with exactly `env` (nothing inherited), stderr collected as it comes.
struct Served {
    server: ChildServer,
    stderr: Arc<Mutex<Vec<u8>>>,
    drain: tokio::task::JoinHandle<()>,
    /// What the server wrote to stdout (logs go to stderr; nothing should come here).
    stdout: Arc<Mutex<Vec<u8>>>,
    drain_stdout: tokio::task::JoinHandle<()>,
}

/// Collects everything `pipe` yields into `sink`, from the start, so a chatty server never
/// blocks on a full pipe.
fn collect(
    mut pipe: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    sink: Arc<Mutex<Vec<u8>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = [0u8; 8192];
        while let Ok(n) = pipe.read(&mut buf).await {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    })
}

impl Served {
    async fn start(data_dir: &Path, env: &[(&str, &str)]) -> Served {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut cmd = tokio::process::Command::new(binary());
        cmd.arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(data_dir)
            .env_clear()
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().unwrap();
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let drain = collect(child.stderr.take().unwrap(), stderr.clone());
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let drain_stdout = collect(child.stdout.take().unwrap(), stdout.clone());
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        // Polls like `wait_for`, but also notices a server that exited instead of starting.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = client.get(format!("{base}/health")).send().await
                && r.status().is_success()
            {
                break;
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "the server exited with {status}: {}",
                    String::from_utf8_lossy(&stderr.lock().unwrap())
                );
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the server did not start"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Served {
            server: ChildServer { child, base },
            stderr,
            drain,
            stdout,
            drain_stdout,
        }
    }

    fn base(&self) -> &str {
        &self.server.base
    }

    fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Everything written to stderr and to stdout, once the server has exited.
    async fn output_after_exit(self) -> (String, String) {
        self.drain.await.unwrap();
        self.drain_stdout.await.unwrap();
        let text =
            |b: &Arc<Mutex<Vec<u8>>>| String::from_utf8_lossy(&b.lock().unwrap()).into_owned();
        (text(&self.stderr), text(&self.stdout))
    }

    /// SIGTERM, then the exit status and everything the server wrote to stderr.
    async fn terminate(self) -> (std::process::ExitStatus, String) {
        let (status, stderr, _) = self.terminate_with_stdout().await;
        (status, stderr)
    }

    /// SIGTERM, then the exit status and everything the server wrote to stderr and to stdout.
    async fn terminate_with_stdout(mut self) -> (std::process::ExitStatus, String, String) {
        let pid = self.server.child.id().unwrap();
        let kill = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        let status = tokio::time::timeout(Duration::from_secs(10), self.server.child.wait())
            .await
            .expect("exits within 10 s of SIGTERM")
            .unwrap();
        let (stderr, stdout) = self.output_after_exit().await;
        (status, stderr, stdout)
    }
}

#[tokio::test]
async fn serve_layers_flags_env_and_file_and_serves_declared_sources() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "router.toml",
        r#"listen = "127.0.0.1:1"
max_event_size = 100

[sources.ci]
scheme = "github"
secret_env = "CI_HOOK_SECRET"
identifier_field = "payload.repo.owner"

[sources.cd]
scheme = "standard"
secret_env = "CD_HOOK_SECRET"
"#,
    );
    let data = dir.path().join("data");
    let served = Served::start(
        &data,
        &[
            ("EVENT_ROUTER_CONFIG", &config),
            // The --listen flag beats both of these.
            ("LISTEN", "127.0.0.1:2"),
            // The environment beats the file's 100.
            ("MAX_EVENT_SIZE", "2000"),
            ("GITHUB_WEBHOOK_SECRET", "gh-old, gh-new"),
            ("SLACK_SIGNING_SECRET", "slack-alias-secret"),
            ("CI_HOOK_SECRET", "ci-secret"),
            ("ADMIN_API_KEY", ADMIN_KEY),
            ("LOG_LEVEL", "warn"),
        ],
    )
    .await;
    let client = reqwest::Client::new();
    let base = served.base().to_string();
    let padded = |len: usize| format!("{{\"pad\":\"{}\"}}", "x".repeat(len - 10)).into_bytes();

    for secret in ["gh-old", "gh-new"] {
        Webhook::github_with(secret, "push", padded(1500))
            .send_to(&client, &base)
            .await
            .accepted();
    }
    Webhook::github_with("gh-new", "push", padded(2500))
        .send_to(&client, &base)
        .await
        .refused(413, "payload_too_large");
    Webhook::github("push", padded(200))
        .send_to(&client, &base)
        .await
        .refused(401, "invalid_signature");

    // SLACK_SIGNING_SECRET is an alias of SLACK_WEBHOOK_SECRET.
    let slack_body = include_bytes!("../../examples/slack-message.json");
    let ts = now_ms() / 1000;
    Webhook::bare("slack", &slack_body[..])
        .header("content-type", "application/json")
        .header("x-slack-request-timestamp", ts.to_string())
        .header(
            "x-slack-signature",
            slack::sign(b"slack-alias-secret", ts, slack_body),
        )
        .send_to(&client, &base)
        .await
        .accepted();

    // A source declared in the file, with its own scheme, secret and identifier.
    let body = br#"{"action": "built", "repo": {"owner": "acme", "name": "api"}}"#;
    let ci = Webhook::github_with("ci-secret", "build", body.to_vec())
        .to("ci")
        .send_to(&client, &base)
        .await
        .accepted();
    Webhook::github("build", body.to_vec())
        .to("ci")
        .send_to(&client, &base)
        .await
        .refused(401, "invalid_signature");
    let r = client
        .get(format!("{base}/admin/events/{}", ci.id))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let ev: Value = r.json().await.unwrap();
    assert_eq!(ev["event"]["source"], "ci");
    assert_eq!(ev["event"]["type"], "build");
    assert_eq!(ev["event"]["action"], "built");
    assert_eq!(ev["event"]["metadata"]["identifier"], "acme");
    // Declared, but its secret variable is not set.
    Webhook::standard("msg_1", &b"{\"type\":\"x\"}"[..])
        .to("cd")
        .send_to(&client, &base)
        .await
        .refused(503, "source_not_configured");
    // Sources the environment did not enable stay disabled.
    Webhook::linear(&b"{\"type\":\"Issue\"}"[..], Some(now_ms()))
        .send_to(&client, &base)
        .await
        .refused(503, "source_not_configured");

    let (status, _) = served.terminate().await;
    assert_eq!(status.code(), Some(0));
}

/// The first whitespace-separated word of `text` that opens the admin API at `base`.
async fn working_admin_key(client: &reqwest::Client, base: &str, text: &str) -> Option<String> {
    let words = text
        .split(|c: char| c.is_whitespace() || c == '"' || c == '\'')
        .filter(|w| w.len() >= 16 && !w.contains('/'));
    for word in words {
        let r = client
            .get(format!("{base}/admin/events"))
            .bearer_auth(word)
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            return Some(word.to_string());
        }
    }
    None
}

#[tokio::test]
async fn without_admin_api_key_one_is_generated_kept_and_printed_once() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("GITHUB_WEBHOOK_SECRET", GITHUB_SECRET),
        ("LOG_LEVEL", "info"),
    ];
    let served = Served::start(dir.path(), &env).await;
    let client = reqwest::Client::new();
    let base = served.base().to_string();
    let key = wait_for(Duration::from_secs(5), || {
        let (client, base, text) = (client.clone(), base.clone(), served.stderr_text());
        async move { working_admin_key(&client, &base, &text).await }
    })
    .await;
    let r = client
        .get(format!("{base}/admin/events"))
        .bearer_auth("not-the-key")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let (status, first_log) = served.terminate().await;
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        first_log.matches(&key).count(),
        1,
        "printed once:\n{first_log}"
    );

    // The same key after a restart, and not printed again.
    let served = Served::start(dir.path(), &env).await;
    let r = client
        .get(format!("{}/admin/events", served.base()))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, second_log) = served.terminate().await;
    assert!(
        !second_log.contains(&key),
        "the key was printed again:\n{second_log}"
    );
}

#[tokio::test]
async fn secrets_signatures_and_keys_are_never_logged() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(
        dir.path(),
        &[
            ("GITHUB_WEBHOOK_SECRET", GITHUB_SECRET),
            ("INTERNAL_WEBHOOK_SECRET", INTERNAL_SECRET),
            ("AGENT_API_KEY", AGENT_KEY),
            ("ADMIN_API_KEY", ADMIN_KEY),
            ("LOG_LEVEL", "trace"),
        ],
    )
    .await;
    let client = reqwest::Client::new();
    let base = served.base().to_string();
    let body = include_bytes!("../../examples/github-pull_request.json");
    let good = Webhook::github("pull_request", &body[..]);
    let signature = good.header_str("x-hub-signature-256").unwrap();
    good.send_to(&client, &base).await.accepted();
    let wrong = Webhook::github_with("a-guessed-secret", "push", &body[..]);
    let wrong_sig = wrong.header_str("x-hub-signature-256").unwrap();
    wrong
        .send_to(&client, &base)
        .await
        .refused(401, "invalid_signature");
    let internal = Webhook::standard("msg_log", &b"{\"type\":\"t\"}"[..]);
    let std_sig = internal.header_str("webhook-signature").unwrap();
    internal.send_to(&client, &base).await.accepted();
    Webhook::bearer(AGENT_KEY, &b"{\"type\":\"t\"}"[..])
        .send_to(&client, &base)
        .await
        .accepted();
    let r = client
        .get(format!("{base}/admin/events"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (status, log) = served.terminate().await;
    assert_eq!(status.code(), Some(0));
    assert!(!log.is_empty(), "trace logging wrote nothing");
    let b64_secret = INTERNAL_SECRET.strip_prefix("whsec_").unwrap();
    for (what, needle) in [
        ("the GitHub secret", GITHUB_SECRET),
        ("the internal secret", b64_secret),
        ("the agent key", AGENT_KEY),
        ("the admin key", ADMIN_KEY),
        ("a signature", &signature[7..]),
        ("a wrong signature", &wrong_sig[7..]),
        ("a Standard signature", &std_sig[3..]),
    ] {
        assert!(!log.contains(needle), "{what} was logged");
    }
}

/// docs/streaming.md and docs/security.md: streams take the key as `?apiKey=…` (browsers'
/// EventSource cannot set headers), and no key is ever logged. The real binary at `trace`, in
/// both log formats, logs every stream request (its path shows in the log), yet none of the
/// keys that were in a query string — accepted or refused — appear on stderr or stdout.
#[tokio::test]
async fn an_api_key_in_a_stream_query_string_never_reaches_the_log() {
    const OWN_KEY: &str = "own-key-of-the-logged-agent";
    const WRONG_KEY: &str = "a-wrong-key-in-the-query-string";
    for format in ["text", "json"] {
        let dir = tempfile::tempdir().unwrap();
        let db = database_for(dir.path());
        let mut env = vec![
            ("GITHUB_WEBHOOK_SECRET", GITHUB_SECRET),
            ("AGENT_API_KEY", AGENT_KEY),
            ("ADMIN_API_KEY", ADMIN_KEY),
            ("LOG_LEVEL", "trace"),
            ("LOG_FORMAT", format),
        ];
        if let Some(url) = db.as_deref() {
            env.push(("DATABASE_URL", url));
        }
        let served = Served::start(dir.path(), &env).await;
        let client = reqwest::Client::new();
        let base = served.base().to_string();
        let r = client
            .post(format!("{base}/admin/agents"))
            .bearer_auth(ADMIN_KEY)
            .json(&serde_json::json!({"id": "bot", "name": "bot", "apiKey": OWN_KEY}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let sse = |query: String| {
            let client = client.clone();
            let url = format!("{base}/stream/sse?{query}");
            async move {
                let r = client
                    .get(url)
                    .header("accept", "text/event-stream")
                    .send()
                    .await
                    .unwrap();
                r.status().as_u16()
            }
        };
        // Accepted: the agent key, the agent's own key (SSE), the admin key on the firehose.
        assert_eq!(sse(format!("agentId=bot&apiKey={AGENT_KEY}")).await, 200);
        assert_eq!(sse(format!("agentId=bot&apiKey={OWN_KEY}")).await, 200);
        assert_eq!(sse(format!("agentId=*&apiKey={ADMIN_KEY}")).await, 200);
        // Refused after the key was read: a wrong key, an unknown agent, bad filters.
        assert_eq!(sse(format!("agentId=bot&apiKey={WRONG_KEY}")).await, 401);
        assert_eq!(sse(format!("agentId=nobody&apiKey={AGENT_KEY}")).await, 404);
        assert_eq!(
            sse(format!("agentId=bot&filters=%5Bnot-json&apiKey={OWN_KEY}")).await,
            400
        );
        // The WebSocket handshake, with a key in the query.
        let ws = base.replacen("http://", "ws://", 1);
        let (mut socket, resp) = tokio_tungstenite::connect_async(format!(
            "{ws}/stream/ws?agentId=bot&apiKey={OWN_KEY}"
        ))
        .await
        .expect("the WebSocket opens with the agent's own key in the query");
        assert_eq!(resp.status().as_u16(), 101);
        socket.close(None).await.unwrap();
        match tokio_tungstenite::connect_async(format!(
            "{ws}/stream/ws?agentId=bot&apiKey={WRONG_KEY}"
        ))
        .await
        {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                assert_eq!(r.status().as_u16(), 401)
            }
            other => panic!(
                "a wrong key opened a WebSocket: {:?}",
                other.map(|(_, r)| r)
            ),
        }

        let (status, log, stdout) = served.terminate_with_stdout().await;
        assert_eq!(status.code(), Some(0), "{log}");
        // The requests were logged (by path), so the absence below means something.
        for path in ["/stream/sse", "/stream/ws"] {
            assert!(
                log.contains(path),
                "{format}: no log line names {path}:\n{log}"
            );
        }
        for (what, key) in [
            ("the agent key", AGENT_KEY),
            ("the agent's own key", OWN_KEY),
            ("the admin key", ADMIN_KEY),
            ("a wrong key", WRONG_KEY),
        ] {
            assert!(!log.contains(key), "{format}: {what} is on stderr");
            assert!(!stdout.contains(key), "{format}: {what} is on stdout");
        }
        assert!(
            !log.contains("apiKey="),
            "{format}: a query string was logged"
        );
    }
}

/// The data dir the server creates is the owner's only (0700), and so is every file in it
/// (0600): the database with its `-wal` and `-shm` files, the generated admin and encryption
/// keys. A data dir open to others is served, with a warning; the log has no colour codes when
/// stderr is not a terminal.
#[tokio::test]
async fn the_data_dir_and_its_files_are_private_and_a_wide_one_is_warned_about() {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("new").join("data");
    let served = Served::start(&data, &[("LOG_LEVEL", "info")]).await;
    // A webhook-free write: the database and its log exist once the server is up.
    let r = reqwest::Client::new()
        .get(format!("{}/health", served.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, log) = served.terminate().await;
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a piped log: {log}"
    );
    assert_eq!(mode(&data), 0o700);
    let mut files = 0;
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            files += 1;
            assert_eq!(mode(&path), 0o600, "{}", path.display());
        }
    }
    assert!(data.join("event-router.db").is_file());
    assert!(data.join("admin.key").is_file(), "the generated admin key");
    assert!(files >= 3, "{files} files");

    // Opened to others by hand: served, and warned about.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let served = Served::start(&data, &[("LOG_LEVEL", "info")]).await;
    let (_, log) = served.terminate().await;
    assert!(log.contains("the data dir is open to other users"), "{log}");
}

/// A provider described in the config file (a recipe) is served, checked and sent to: the
/// real binary serves `[sources.acme]` from `EVENT_ROUTER_CONFIG`, `send acme` (with the same
/// config and secret) signs as the recipe says and is accepted and archived with the type from
/// its header, and the same request with another secret is refused.
#[tokio::test]
async fn a_recipe_source_is_served_and_send_signs_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "recipe.toml",
        r#"[sources.acme]
scheme = "hmac"
secret_env = "ACME_SECRET"
header = "X-Acme-Signature"
prefix = "sha256="
signed = "{timestamp}.{body}"
timestamp_header = "X-Acme-Timestamp"
id_header = "X-Acme-Delivery"
type_header = "X-Acme-Event"
"#,
    );
    let data = dir.path().join("data");
    let env = [
        ("EVENT_ROUTER_CONFIG", config.as_str()),
        ("ACME_SECRET", "s3cret"),
        ("ADMIN_API_KEY", ADMIN_KEY),
    ];
    let check = run(&["check-config", &config], &env).await;
    assert_eq!(check.status.code(), Some(0), "{check:?}");
    let served = Served::start(&data, &env).await;
    let base = served.base().to_string();
    let out = run(
        &["send", "acme", "--url", &base, "--event", "invoice.paid"],
        &env,
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let r = reqwest::Client::new()
        .get(format!("{base}/admin/events?source=acme"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{v}");
    assert_eq!(items[0]["type"], "invoice.paid");
    assert!(items[0]["deliveryId"].is_string(), "{v}");
    let headers = &items[0]["metadata"]["headers"];
    assert!(headers.get("x-acme-signature").is_none(), "{headers}");
    assert!(headers.get("x-acme-timestamp").is_some(), "{headers}");

    let wrong = run(&["send", "acme", "--url", &base, "--secret", "other"], &env).await;
    assert_ne!(wrong.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&wrong.stdout).contains("invalid_signature"),
        "{wrong:?}"
    );
    served.terminate().await;
}
