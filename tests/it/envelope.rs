//! Every refusal of every endpoint is the contract's envelope `{"success": false, "error",
//! "code"}` (issue #32): a table of bad requests over every route of the router (no key, a wrong
//! or malformed key, the wrong method, an unknown path, bad JSON, bodies of the wrong shape or
//! type, bad query parameters, bad ids, oversize bodies, odd content types), then random
//! requests built from the same pieces (proptest). Each answer of 400 or more must be JSON with
//! `success: false`, a sentence in `error`, and a `code` that docs/api.md lists for that status.
//!
//! Requests go over raw TCP, so that any method, path and header bytes can be sent. Refusals
//! the connection layer writes for a header block that is too large (431) or a body that is too
//! slow (408) are tested where those limits are.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use proptest::prelude::*;
use proptest::strategy::ValueTree as _;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use event_router::providers::{github, linear, slack};

use crate::rules::create;
use crate::support::*;

/// The `(status, code)` pairs of docs/api.md's error-code table: the codes a user is told about.
fn documented_codes() -> BTreeSet<(u16, String)> {
    let text = include_str!("../../docs/api.md");
    let table = text
        .split("## Error codes")
        .nth(1)
        .expect("docs/api.md has an Error codes section");
    let mut codes = BTreeSet::new();
    for line in table.lines().skip_while(|l| !l.starts_with('|')) {
        if !line.starts_with('|') {
            break;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (Some(status), Some(code)) = (cells.get(1), cells.get(2)) else {
            continue;
        };
        if let (Ok(status), Some(code)) = (
            status.parse::<u16>(),
            code.strip_prefix('`').and_then(|c| c.strip_suffix('`')),
        ) {
            codes.insert((status, code.to_string()));
        }
    }
    assert!(codes.len() >= 15, "too few codes read: {codes:?}");
    codes
}

/// One request, as bytes on the wire.
#[derive(Debug, Clone)]
struct Req {
    method: String,
    path: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    /// The body is already chunked (`transfer-encoding: chunked`): no `content-length`.
    chunked: bool,
}

impl Req {
    fn new(method: &str, path: impl Into<Vec<u8>>) -> Req {
        Req {
            method: method.into(),
            path: path.into(),
            headers: Vec::new(),
            body: Vec::new(),
            chunked: false,
        }
    }

    fn header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Req {
        self.headers.push((name.into(), value.into()));
        self
    }

    fn admin(self) -> Req {
        self.header("authorization", format!("Bearer {ADMIN_KEY}"))
    }

    fn body(mut self, content_type: Option<&str>, body: impl Into<Vec<u8>>) -> Req {
        if let Some(ct) = content_type {
            self = self.header("content-type", ct);
        }
        self.body = body.into();
        self
    }

    fn shown(&self) -> String {
        let head: String = String::from_utf8_lossy(&self.body)
            .chars()
            .take(80)
            .collect();
        format!(
            "{} {} {:?} body {head:?} ({} bytes)",
            self.method,
            String::from_utf8_lossy(&self.path),
            self.headers
                .iter()
                .map(|(k, v)| format!("{k}: {}", String::from_utf8_lossy(v)))
                .collect::<Vec<_>>(),
            self.body.len()
        )
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.body.len() + 256);
        out.extend_from_slice(self.method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(&self.path);
        out.extend_from_slice(b" HTTP/1.1\r\nhost: localhost\r\n");
        if !self.headers.iter().any(|(k, _)| k == "connection") {
            out.extend_from_slice(b"connection: close\r\n");
        }
        for (k, v) in &self.headers {
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v);
            out.extend_from_slice(b"\r\n");
        }
        if self.chunked {
            out.extend_from_slice(b"\r\n");
        } else {
            out.extend_from_slice(
                format!("content-length: {}\r\n\r\n", self.body.len()).as_bytes(),
            );
        }
        out.extend_from_slice(&self.body);
        out
    }
}

/// What came back: the status, the content type, and the body of a refusal (an answer below 400
/// is not read further, so that an opened stream does not hold the test).
struct Reply {
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

async fn send(addr: SocketAddr, req: &Req) -> Reply {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        // The server may answer (and close) before it has read everything.
        let _ = s.write_all(&req.bytes()).await;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        let head_end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p;
            }
            let n = s.read(&mut chunk).await.unwrap_or(0);
            assert!(n > 0, "no answer head to {}", req.shown());
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line in {head:?}"));
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let get = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let content_type = get("content-type").unwrap_or_default();
        if status < 400 || req.method == "HEAD" {
            return Reply {
                status,
                content_type,
                body: Vec::new(),
            };
        }
        // Read to the end of the body: its length, the last chunk, or the end of the
        // connection (a WebSocket handshake's connection stays open).
        let mut rest = buf[head_end + 4..].to_vec();
        let chunked = get("transfer-encoding").is_some_and(|v| v.contains("chunked"));
        let len: Option<usize> = get("content-length").and_then(|v| v.parse().ok());
        loop {
            let done = match (chunked, len) {
                (true, _) => rest.windows(5).any(|w| w == b"0\r\n\r\n"),
                (false, Some(n)) => rest.len() >= n,
                (false, None) => false,
            };
            if done {
                break;
            }
            match s.read(&mut chunk).await {
                Ok(n) if n > 0 => rest.extend_from_slice(&chunk[..n]),
                _ => break,
            }
        }
        let body = if chunked {
            dechunk(&rest)
        } else {
            rest.truncate(len.unwrap_or(rest.len()));
            rest
        };
        Reply {
            status,
            content_type,
            body,
        }
    };
    tokio::time::timeout(Duration::from_secs(20), exchange)
        .await
        .unwrap_or_else(|_| panic!("no answer in 20 s to {}", req.shown()))
}

fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&rest[..eol])
                .split(';')
                .next()
                .unwrap_or("")
                .trim(),
            16,
        )
        .unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = eol + 2;
        let end = (start + size).min(rest.len());
        out.extend_from_slice(&rest[start..end]);
        rest = &rest[(end + 2).min(rest.len())..];
    }
    out
}

/// Why an answer of 400 or more is not the envelope, if it is not.
fn envelope_problem(reply: &Reply, codes: &BTreeSet<(u16, String)>) -> Option<String> {
    if !reply.content_type.starts_with("application/json") {
        return Some(format!("content-type {:?}", reply.content_type));
    }
    let Ok(v) = serde_json::from_slice::<Value>(&reply.body) else {
        return Some(format!(
            "body is not JSON: {:?}",
            String::from_utf8_lossy(&reply.body)
        ));
    };
    let Some(obj) = v.as_object() else {
        return Some(format!("body is not an object: {v}"));
    };
    // Validation errors add `field`, `errors` (every problem, the first being `field`'s), and
    // `line` and `column` at a place in a JSON body.
    let validation = v["code"] == "validation_error";
    let extra: Vec<&String> = obj
        .keys()
        .filter(|k| !["success", "error", "code", "field", "line", "column"].contains(&k.as_str()))
        .filter(|k| !(validation && k.as_str() == "errors"))
        .collect();
    if !extra.is_empty() {
        return Some(format!("unexpected members {extra:?}: {v}"));
    }
    if validation
        && !v["errors"]
            .as_array()
            .is_some_and(|a| !a.is_empty() && a[0]["field"] == v["field"])
    {
        return Some(format!("errors does not list the problem: {v}"));
    }
    if v["success"] != false {
        return Some(format!("success is not false: {v}"));
    }
    if v["error"].as_str().is_none_or(|e| e.trim().is_empty()) {
        return Some(format!("error is not a sentence: {v}"));
    }
    let Some(code) = v["code"].as_str() else {
        return Some(format!("code is not a string: {v}"));
    };
    if !codes.contains(&(reply.status, code.to_string())) {
        return Some(format!(
            "{} {code} is not in docs/api.md's error codes: {v}",
            reply.status
        ));
    }
    None
}

/// Sends each request; collects every refusal that is not the envelope. Returns how many
/// refusals were checked.
async fn check_all(
    addr: SocketAddr,
    reqs: &[Req],
    codes: &BTreeSet<(u16, String)>,
    failures: &mut Vec<String>,
) -> usize {
    let mut refusals = 0;
    for req in reqs {
        let reply = send(addr, req).await;
        if reply.status < 400 || req.method == "HEAD" {
            continue;
        }
        refusals += 1;
        if let Some(problem) = envelope_problem(&reply, codes) {
            failures.push(format!("{} -> {}: {problem}", req.shown(), reply.status));
        }
    }
    refusals
}

const EVENT: &str = "0193a1c4-0000-7000-8000-000000000000";

/// Every route of the router (`src/http/mod.rs` and the dashboard's), with the methods it
/// answers; `{id}` stands for an id.
fn routes() -> Vec<(&'static [&'static str], String)> {
    let mut r: Vec<(&'static [&'static str], String)> = vec![
        (&["GET"], "/health".into()),
        (&["GET"], "/metrics".into()),
        (&["GET"], "/stream/ws?agentId=bot".into()),
        (&["GET"], "/stream/sse?agentId=bot".into()),
        (&["GET"], "/admin/events".into()),
        (&["GET", "DELETE"], format!("/admin/events/{EVENT}")),
        (&["POST"], "/admin/erasures".into()),
        (&["POST"], "/admin/agents/x1/health/reset".into()),
        (&["POST"], format!("/admin/events/{EVENT}/replay")),
        (&["GET"], "/admin/dlq".into()),
        (&["POST"], "/admin/dlq/retry".into()),
        (&["POST"], format!("/admin/dlq/{EVENT}/retry")),
        (&["DELETE"], format!("/admin/dlq/{EVENT}")),
        (&["GET"], "/queue/stats".into()),
        (&["GET"], "/analytics/metrics".into()),
        (&["GET"], "/admin/audit".into()),
        (&["GET", "PUT", "DELETE"], "/admin/rate-limits".into()),
        (&["GET"], "/".into()),
        (&["GET"], "/dashboard/app.js".into()),
        (&["GET", "POST", "DELETE"], "/dashboard/session".into()),
    ];
    for kind in ["filters", "routes", "agents"] {
        r.push((&["GET", "POST"], format!("/admin/{kind}")));
        r.push((&["GET", "PUT", "DELETE"], format!("/admin/{kind}/x1")));
    }
    for source in ["github", "linear", "slack", "internal", "unset", "nope"] {
        r.push((&["POST", "GET", "HEAD"], format!("/webhook/{source}")));
    }
    r
}

/// Bodies that are not what any endpoint takes.
fn bad_bodies() -> Vec<(Option<&'static str>, Vec<u8>)> {
    let json = Some("application/json");
    vec![
        (json, b"".to_vec()),
        (json, b"{".to_vec()),
        (json, b"{\"id\": \"x1\",}".to_vec()),
        (json, b"[1, 2]".to_vec()),
        (json, b"\"text\"".to_vec()),
        (json, b"null".to_vec()),
        (
            json,
            b"{\"id\": 5, \"name\": [], \"enabled\": \"yes\"}".to_vec(),
        ),
        (json, b"{\"id\": \"x1\"} trailing".to_vec()),
        (json, b"\xff\xfe{}".to_vec()),
        (json, "[".repeat(300).into_bytes()),
        (json, b"{\"id\": \"x1\", \"id\": \"x2\"}".to_vec()),
        (Some("text/plain"), b"hello".to_vec()),
        (
            Some("application/x-www-form-urlencoded"),
            b"a=1&b=2".to_vec(),
        ),
        (
            Some("application/x-www-form-urlencoded"),
            b"payload=%7Bnot".to_vec(),
        ),
        (Some("application/json; charset=utf-16"), b"{}".to_vec()),
        (Some("multipart/form-data; boundary=x"), b"--x--".to_vec()),
        (None, b"{}".to_vec()),
    ]
}

/// The table: every route, refused every way that applies to it.
fn table() -> Vec<Req> {
    let mut reqs = Vec::new();
    let methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"];
    for (allowed, path) in routes() {
        let p = path.as_str();
        // Without a key, with a wrong one, with a malformed one.
        for m in allowed.iter() {
            reqs.push(Req::new(m, p));
            reqs.push(Req::new(m, p).header("authorization", "Bearer wrong-key"));
            reqs.push(Req::new(m, p).header("authorization", "Basic Zm9vOmJhcg=="));
            reqs.push(Req::new(m, p).header("authorization", "Bearer"));
            reqs.push(Req::new(m, p).header("authorization", &b"Bearer \xff\xfe"[..]));
            reqs.push(Req::new(m, p).header("authorization", format!("Bearer {AGENT_KEY}")));
        }
        // The methods it does not answer.
        for m in methods.iter().filter(|m| !allowed.contains(m)) {
            reqs.push(Req::new(m, p).admin());
        }
        // Bad bodies where it takes one.
        for m in allowed.iter().filter(|m| ["POST", "PUT"].contains(m)) {
            for (ct, body) in bad_bodies() {
                reqs.push(Req::new(m, p).admin().body(ct, body));
            }
            // Over every limit: the admin API's 2 MiB, the webhook's `max_event_size`.
            let big = format!("{{\"id\": \"x1\", \"name\": \"{}\"}}", "x".repeat(2 << 20));
            reqs.push(Req::new(m, p).admin().body(Some("application/json"), big));
        }
        // Bad query parameters and ids.
        let sep = if p.contains('?') { '&' } else { '?' };
        for q in [
            "limit=abc",
            "limit=-1",
            "limit=99999999999999999999999",
            "cursor=%%%",
            "cursor=AAAA",
            "bogus=1",
            "hours=0",
            "hours=abc",
            "hours=100000",
            "status=weird",
            "since=yesterday",
            "until=-",
            "source=%FF%FE",
            "type=",
            "agentId=",
            "agentId=*",
            "filters=%5B%7B",
            "lastEventId=nope",
            "lastEventId=00000000-0000-4000-8000-000000000000",
            "identifier=*",
            "apiKey=wrong",
        ] {
            for m in allowed.iter().filter(|m| **m != "HEAD") {
                reqs.push(Req::new(m, format!("{p}{sep}{q}")).admin());
            }
        }
    }
    // Signed webhooks whose bodies are wrong, too large, or whose timestamps are stale or
    // missing: past the signature, into the provider's own rules.
    let now_s = now_ms() / 1000;
    let big = vec![b' '; 65 * 1024];
    let mut bodies = bad_bodies();
    bodies.push((Some("application/json"), big));
    for (ct, body) in bodies {
        let gh = github::sign(GITHUB_SECRET.as_bytes(), &body);
        reqs.push(
            Req::new("POST", "/webhook/github")
                .header("x-github-event", "push")
                .header("x-hub-signature-256", gh.clone())
                .body(ct, body.clone()),
        );
        // Signed, but no event type.
        reqs.push(
            Req::new("POST", "/webhook/github")
                .header("x-hub-signature-256", gh)
                .body(ct, body.clone()),
        );
        for ts in [Some(now_ms()), Some(0), None] {
            let mut r = Req::new("POST", "/webhook/linear").header(
                "linear-signature",
                linear::sign(LINEAR_SECRET.as_bytes(), &body),
            );
            if let Some(ts) = ts {
                r = r.header("linear-timestamp", ts.to_string());
            }
            reqs.push(r.body(ct, body.clone()));
        }
        for ts in [now_s, now_s - 3600] {
            reqs.push(
                Req::new("POST", "/webhook/slack")
                    .header("x-slack-request-timestamp", ts.to_string())
                    .header(
                        "x-slack-signature",
                        slack::sign(SLACK_SECRET.as_bytes(), ts, &body),
                    )
                    .body(ct, body.clone()),
            );
        }
        reqs.push(
            Req::new("POST", "/webhook/internal")
                .header("authorization", format!("Bearer {AGENT_KEY}"))
                .body(ct, body.clone()),
        );
    }
    // A body over the admin limit sent in chunks, without a length announced.
    for p in ["/admin/filters", "/admin/rate-limits", "/dashboard/session"] {
        let mut body = Vec::new();
        for _ in 0..40 {
            body.extend_from_slice(format!("{:x}\r\n", 64 * 1024).as_bytes());
            body.extend(std::iter::repeat_n(b' ', 64 * 1024));
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"0\r\n\r\n");
        let m = if p == "/admin/rate-limits" {
            "PUT"
        } else {
            "POST"
        };
        let mut r = Req::new(m, p)
            .admin()
            .header("transfer-encoding", "chunked")
            .header("content-type", "application/json");
        r.body = body;
        r.chunked = true;
        reqs.push(r);
    }
    // WebSocket handshakes refused before the upgrade.
    for q in [
        "agentId=bot",
        format!("agentId=nobody&apiKey={AGENT_KEY}").as_str(),
        format!("agentId=bot&apiKey={AGENT_KEY}&filters=%5B1%5D").as_str(),
        format!(
            "agentId=bot&apiKey={AGENT_KEY}&lastEventId={}",
            uuid::Uuid::new_v4()
        )
        .as_str(),
        format!("apiKey={AGENT_KEY}").as_str(),
    ] {
        reqs.push(
            Req::new("GET", format!("/stream/ws?{q}"))
                .header("connection", "Upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-version", "13")
                .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        );
    }
    // Bad ids, in every place an id goes.
    for id in [
        "not-a-uuid",
        "%FF%FE",
        "..%2F..%2Fetc",
        "00000000-0000-4000-8000-000000000000",
        &"x".repeat(400),
        "a%20b",
    ] {
        for (m, p) in [
            ("GET", format!("/admin/events/{id}")),
            ("POST", format!("/admin/events/{id}/replay")),
            ("POST", format!("/admin/dlq/{id}/retry")),
            ("DELETE", format!("/admin/dlq/{id}")),
            ("GET", format!("/admin/filters/{id}")),
            ("DELETE", format!("/admin/routes/{id}")),
            ("PUT", format!("/admin/agents/{id}")),
            ("GET", format!("/dashboard/{id}")),
            ("POST", format!("/webhook/{id}")),
        ] {
            let body = json!({"id": "x1", "name": "n"}).to_string();
            reqs.push(Req::new(m, p).admin().body(Some("application/json"), body));
        }
    }
    // Paths that are not routes.
    for p in [
        "/nope",
        "/admin",
        "/admin/",
        "/admin/filters/a/b",
        "/admin/events/x/replay/again",
        "/webhook",
        "/webhook/",
        "/webhook/github/extra",
        "/stream",
        "/stream/ws/x",
        "/dashboard",
        "/dashboard/",
        "/dashboard/nope.js",
        "/%FF",
        "//admin/filters",
        "/health/",
        "/analytics",
        "/queue",
    ] {
        for m in ["GET", "POST", "DELETE"] {
            reqs.push(Req::new(m, p).admin());
        }
    }
    reqs
}

async fn app() -> TestApp {
    let app = TestApp::spawn_with(|c| {
        c.max_event_size = 64 * 1024;
        // A source whose secret is not set: `503 source_not_configured`.
        let mut unset = c.sources["github"].clone();
        unset.secret = None;
        c.sources.insert("unset".into(), unset);
    })
    .await;
    create(
        &app,
        "agents",
        json!({"id": "bot", "name": "bot", "enabled": true}),
    )
    .await;
    app
}

#[tokio::test]
async fn every_refusal_of_every_endpoint_is_the_envelope() {
    let app = app().await;
    let codes = documented_codes();
    let reqs = table();
    let mut failures = Vec::new();
    let refusals = check_all(app.addr, &reqs, &codes, &mut failures).await;
    assert!(
        refusals > reqs.len() / 2,
        "only {refusals} of {} requests were refused",
        reqs.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {refusals} refusals are not the envelope:\n{}",
        failures.len(),
        failures.join("\n")
    );
    app.stop().await;
}

/// Random requests from the same pieces: any method, a route or a mangled one, any of the keys,
/// any content type, a body of random bytes or a random change to a good one.
fn arbitrary_request() -> impl Strategy<Value = Req> {
    let paths: Vec<String> = routes()
        .into_iter()
        .map(|(_, p)| p)
        .chain(["/nope".to_string(), "/admin/filters/a/b".to_string()])
        .collect();
    let method = prop::sample::select(vec![
        "GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE",
    ]);
    let path = (
        prop::sample::select(paths),
        prop::option::of("[a-zA-Z0-9%&=?/._*-]{0,24}"),
    )
        .prop_map(|(p, tail)| match tail {
            Some(t) => format!("{p}{t}"),
            None => p,
        });
    let auth = prop::sample::select(vec![
        None,
        Some(format!("Bearer {ADMIN_KEY}")),
        Some(format!("Bearer {AGENT_KEY}")),
        Some("Bearer nope".to_string()),
        Some("Token x".to_string()),
    ]);
    let content_type = prop::sample::select(vec![
        None,
        Some("application/json"),
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("application/json; charset=latin1"),
    ]);
    let good = json!({"id": "p1", "name": "P", "action": "include", "conditions": [],
        "targetAgents": ["bot"], "source": "github", "identifier": "*", "limit": 5,
        "window": 1000});
    let body = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        (0usize..200, any::<u8>()).prop_map(move |(at, b)| {
            let mut v = serde_json::to_vec(&good).unwrap();
            let at = at % v.len();
            v[at] = b;
            v
        }),
        "[\\[\\]{}\",:0-9a-z ]{0,64}".prop_map(String::into_bytes),
    ];
    (method, path, auth, content_type, body).prop_map(|(m, p, auth, ct, body)| {
        let mut r = Req::new(m, p).body(ct, body);
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r
    })
}

#[tokio::test]
async fn random_requests_are_refused_in_the_envelope() {
    let app = app().await;
    let codes = documented_codes();
    // Drawn up front (the runner is synchronous), then sent.
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 400,
        ..ProptestConfig::default()
    });
    let strategy = arbitrary_request();
    let reqs: Vec<Req> = (0..400)
        .map(|_| strategy.new_tree(&mut runner).unwrap().current())
        .collect();
    let mut failures = Vec::new();
    check_all(app.addr, &reqs, &codes, &mut failures).await;
    assert!(
        failures.is_empty(),
        "{} refusals are not the envelope:\n{}",
        failures.len(),
        failures.join("\n")
    );
    app.stop().await;
}
