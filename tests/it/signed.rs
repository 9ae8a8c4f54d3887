//! Webhooks signed the way each provider signs them, raw HTTP for requests a client library
//! refuses to send, and readers for the contract's success, error and archive shapes.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use event_router::providers::standard::StandardSigner;
use event_router::providers::{github, linear, slack};
use reqwest::header::{HeaderName, HeaderValue};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use uuid::Uuid;

use crate::support::*;

/// One webhook request: a source path, headers (values as raw bytes) and a body.
#[derive(Clone, Debug)]
pub struct Webhook {
    pub source: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Webhook {
    /// A request to `/webhook/{source}` with no headers at all.
    pub fn bare(source: &str, body: impl Into<Vec<u8>>) -> Webhook {
        Webhook {
            source: source.into(),
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// GitHub, JSON, signed with the test secret and a fresh delivery id.
    pub fn github(event: &str, body: impl Into<Vec<u8>>) -> Webhook {
        Self::github_with(GITHUB_SECRET, event, body)
    }

    pub fn github_with(secret: &str, event: &str, body: impl Into<Vec<u8>>) -> Webhook {
        let body = body.into();
        Webhook::bare("github", body.clone())
            .header("content-type", "application/json")
            .header("x-github-event", event)
            .header("x-github-delivery", Uuid::new_v4().to_string())
            .header(
                "x-hub-signature-256",
                github::sign(secret.as_bytes(), &body),
            )
    }

    /// Linear, JSON, signed; `timestamp_ms` goes into `Linear-Timestamp` when given.
    pub fn linear(body: impl Into<Vec<u8>>, timestamp_ms: Option<i64>) -> Webhook {
        let body = body.into();
        let mut w = Webhook::bare("linear", body.clone())
            .header("content-type", "application/json")
            .header("linear-delivery", Uuid::new_v4().to_string())
            .header(
                "linear-signature",
                linear::sign(LINEAR_SECRET.as_bytes(), &body),
            );
        if let Some(ts) = timestamp_ms {
            w = w.header("linear-timestamp", ts.to_string());
        }
        w
    }

    /// Slack, signed at `timestamp_s` with the given content type.
    pub fn slack_at(body: impl Into<Vec<u8>>, content_type: &str, timestamp_s: i64) -> Webhook {
        let body = body.into();
        Webhook::bare("slack", body.clone())
            .header("content-type", content_type)
            .header("x-slack-request-timestamp", timestamp_s.to_string())
            .header(
                "x-slack-signature",
                slack::sign(SLACK_SECRET.as_bytes(), timestamp_s, &body),
            )
    }

    pub fn slack(body: impl Into<Vec<u8>>, content_type: &str) -> Webhook {
        Self::slack_at(body, content_type, now_ms() / 1000)
    }

    /// `internal`, Standard Webhooks signature at `timestamp_s`.
    pub fn standard_at(msg_id: &str, timestamp_s: i64, body: impl Into<Vec<u8>>) -> Webhook {
        Self::standard_with(INTERNAL_SECRET, msg_id, timestamp_s, body)
    }

    pub fn standard_with(
        secret: &str,
        msg_id: &str,
        timestamp_s: i64,
        body: impl Into<Vec<u8>>,
    ) -> Webhook {
        let body = body.into();
        let sig = StandardSigner::from_secret(secret)
            .unwrap()
            .sign(msg_id, timestamp_s, &body);
        Webhook::bare("internal", body)
            .header("content-type", "application/json")
            .header("webhook-id", msg_id)
            .header("webhook-timestamp", timestamp_s.to_string())
            .header("webhook-signature", sig)
    }

    pub fn standard(msg_id: &str, body: impl Into<Vec<u8>>) -> Webhook {
        Self::standard_at(msg_id, now_ms() / 1000, body)
    }

    /// `internal` authenticated with `Authorization: Bearer <key>`.
    pub fn bearer(key: &str, body: impl Into<Vec<u8>>) -> Webhook {
        Webhook::bare("internal", body)
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {key}"))
    }

    /// Sets a header, replacing any value it had.
    pub fn header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Webhook {
        let name = name.to_ascii_lowercase();
        self.headers.retain(|(n, _)| *n != name);
        self.headers.push((name, value.into()));
        self
    }

    pub fn without(mut self, name: &str) -> Webhook {
        let name = name.to_ascii_lowercase();
        self.headers.retain(|(n, _)| *n != name);
        self
    }

    pub fn to(mut self, source: &str) -> Webhook {
        self.source = source.into();
        self
    }

    pub fn header_str(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    /// Sends it with reqwest.
    pub async fn send(&self, app: &TestApp) -> Answer {
        self.send_to(&app.client, &app.base).await
    }

    pub async fn send_to(&self, client: &reqwest::Client, base: &str) -> Answer {
        self.try_send_to(client, base)
            .await
            .expect("the server answers")
    }

    /// Sends it, handing back a transport error instead of failing (e.g. the server was killed).
    pub async fn try_send_to(
        &self,
        client: &reqwest::Client,
        base: &str,
    ) -> Result<Answer, reqwest::Error> {
        let mut req = client.post(format!("{base}/webhook/{}", self.source));
        for (name, value) in &self.headers {
            req = req.header(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(value).unwrap(),
            );
        }
        let r = req.body(self.body.clone()).send().await?;
        Answer::try_read(r).await
    }

    /// Sends it byte for byte over a plain TCP connection (any header bytes, any path).
    pub async fn send_raw(&self, addr: SocketAddr, path: &[u8]) -> Answer {
        let mut req = Vec::new();
        req.extend_from_slice(b"POST ");
        req.extend_from_slice(path);
        req.extend_from_slice(b" HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n");
        for (name, value) in &self.headers {
            req.extend_from_slice(name.as_bytes());
            req.extend_from_slice(b": ");
            req.extend_from_slice(value);
            req.extend_from_slice(b"\r\n");
        }
        req.extend_from_slice(format!("content-length: {}\r\n\r\n", self.body.len()).as_bytes());
        req.extend_from_slice(&self.body);
        raw_http(addr, &req).await
    }
}

/// A response, read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub bytes: Vec<u8>,
}

impl Answer {
    pub async fn read(r: reqwest::Response) -> Answer {
        Self::try_read(r).await.expect("the body arrives")
    }

    pub async fn try_read(r: reqwest::Response) -> Result<Answer, reqwest::Error> {
        let status = r.status().as_u16();
        let headers = r
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let bytes = r.bytes().await?.to_vec();
        Ok(Answer {
            status,
            headers,
            bytes,
        })
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes).unwrap_or_else(|e| {
            panic!(
                "status {}: body is not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.bytes)
            )
        })
    }

    pub fn json_opt(&self) -> Option<Value> {
        serde_json::from_slice(&self.bytes).ok()
    }

    /// Asserts the contract's success shape (exactly these keys) and returns the event id.
    pub fn accepted(&self) -> Accepted {
        assert_eq!(
            self.status,
            200,
            "expected 200, got {} {}",
            self.status,
            String::from_utf8_lossy(&self.bytes)
        );
        assert_success_shape(&self.json(), false)
    }

    /// Asserts the duplicate answer: the success shape plus `"duplicate": true`.
    pub fn duplicate(&self) -> Accepted {
        assert_eq!(self.status, 200, "{}", String::from_utf8_lossy(&self.bytes));
        assert_success_shape(&self.json(), true)
    }

    /// Asserts the contract's error form with this status and code; returns the message.
    pub fn refused(&self, status: u16, code: &str) -> String {
        assert_eq!(
            self.status,
            status,
            "expected {status} {code}, got {} {}",
            self.status,
            String::from_utf8_lossy(&self.bytes)
        );
        let v = self.json();
        assert_error_form(&v);
        assert_eq!(v["code"], code, "{v}");
        assert!(
            self.header("content-type")
                .is_some_and(|c| c.starts_with("application/json")),
            "content-type {:?}",
            self.header("content-type")
        );
        v["error"].as_str().unwrap().to_string()
    }

    /// The error form with this status (and code, when given), without panicking.
    pub fn check_refused(&self, status: u16, code: Option<&str>) -> Result<(), String> {
        if self.status != status {
            return Err(format!("expected status {status}"));
        }
        let v = self.json_opt().ok_or("the body is not JSON")?;
        error_form_problem(&v).map_or(Ok(()), Err)?;
        match code {
            Some(code) if v["code"] != code => Err(format!("expected code {code}")),
            _ => Ok(()),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The useful parts of a 200 answer.
#[derive(Debug, Clone, Copy)]
pub struct Accepted {
    pub id: Uuid,
    pub timestamp: i64,
    pub processed: bool,
    pub routed: bool,
}

fn keys(v: &Value) -> BTreeSet<&str> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect()
}

pub fn assert_success_shape(v: &Value, duplicate: bool) -> Accepted {
    let mut expected: BTreeSet<&str> = ["success", "eventId", "processed", "routed", "timestamp"]
        .into_iter()
        .collect();
    if duplicate {
        expected.insert("duplicate");
        assert_eq!(v["duplicate"], true, "{v}");
    }
    assert_eq!(keys(v), expected, "{v}");
    assert_eq!(v["success"], true, "{v}");
    let id = uuid_v7(&v["eventId"]);
    let timestamp = v["timestamp"]
        .as_i64()
        .unwrap_or_else(|| panic!("timestamp is not an integer: {v}"));
    assert!(
        (now_ms() - timestamp).abs() < 60_000,
        "timestamp {timestamp} is not in ms near now: {v}"
    );
    Accepted {
        id,
        timestamp,
        processed: v["processed"].as_bool().expect("processed is a bool"),
        routed: v["routed"].as_bool().expect("routed is a bool"),
    }
}

/// Parses a UUID and checks it is version 7.
pub fn uuid_v7(v: &Value) -> Uuid {
    let s = v.as_str().unwrap_or_else(|| panic!("not a string id: {v}"));
    let id = Uuid::parse_str(s).unwrap_or_else(|e| panic!("{s:?} is not a UUID: {e}"));
    assert_eq!(id.get_version_num(), 7, "{s} is not a UUID v7");
    assert_eq!(id.hyphenated().to_string(), s, "not the canonical form");
    id
}

/// `{"success": false, "error": "<sentence>", "code": "<code>"}` and nothing else.
pub fn assert_error_form(v: &Value) {
    if let Some(problem) = error_form_problem(v) {
        panic!("{problem}: {v}");
    }
}

pub fn error_form_problem(v: &Value) -> Option<String> {
    let Some(obj) = v.as_object() else {
        return Some("not a JSON object".into());
    };
    let mut keys: BTreeSet<&str> = obj.keys().map(String::as_str).collect();
    // A validation error also lists every problem, each a field and a sentence.
    if v["code"] == "validation_error" {
        let well_formed = v["errors"].as_array().is_some_and(|a| {
            !a.is_empty()
                && a.iter().all(|e| {
                    e["field"].as_str().is_some_and(|f| !f.is_empty())
                        && e["error"].as_str().is_some_and(|s| !s.trim().is_empty())
                })
        });
        if !well_formed {
            return Some("errors is not a list of {field, error}".into());
        }
        keys.remove("errors");
    }
    if keys != ["code", "error", "success"].into_iter().collect() {
        return Some(format!(
            "keys {keys:?} are not exactly code, error, success"
        ));
    }
    if v["success"] != false {
        return Some("success is not false".into());
    }
    if v["error"].as_str().is_none_or(|s| s.trim().is_empty()) {
        return Some("error is not a non-empty string".into());
    }
    if v["code"].as_str().is_none_or(str::is_empty) {
        return Some("code is not a non-empty string".into());
    }
    None
}

/// Writes `request` to a fresh connection and reads the response to the end.
pub async fn raw_http(addr: SocketAddr, request: &[u8]) -> Answer {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        // The server may answer (and close) before it has read everything; keep what it sent.
        let _ = s.write_all(request).await;
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf).await;
        buf
    };
    let buf = tokio::time::timeout(Duration::from_secs(20), exchange)
        .await
        .expect("the server answers a raw request");
    parse_response(&buf)
}

fn parse_response(buf: &[u8]) -> Answer {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| {
            panic!(
                "no HTTP response head in {:?}",
                String::from_utf8_lossy(buf)
            )
        });
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = &buf[end + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let bytes = if chunked {
        dechunk(rest)
    } else {
        let len = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse::<usize>().ok())
            .unwrap_or(rest.len());
        rest[..len.min(rest.len())].to_vec()
    };
    Answer {
        status,
        headers,
        bytes,
    }
}

fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&rest[..eol])
                .split(';')
                .next()
                .unwrap()
                .trim(),
            16,
        )
        .unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = eol + 2;
        out.extend_from_slice(&rest[start..(start + size).min(rest.len())]);
        rest = &rest[(start + size + 2).min(rest.len())..];
    }
    out
}

/// `GET /admin/events?{query}` as the admin; the items, and the next cursor.
pub async fn list_events(app: &TestApp, query: &str) -> (Vec<Value>, Option<String>) {
    let (status, v) = app.admin_get(&format!("/admin/events?{query}")).await;
    assert_eq!(status, 200, "GET /admin/events?{query}: {v}");
    assert_eq!(
        keys(&v),
        ["items", "nextCursor"].into_iter().collect(),
        "{v}"
    );
    let items = v["items"].as_array().expect("items is an array").clone();
    let next = match &v["nextCursor"] {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => panic!("nextCursor must be a string or null, got {other}"),
    };
    (items, next)
}

/// Ids of the events a list holds, in order.
pub fn ids(items: &[Value]) -> Vec<Uuid> {
    items.iter().map(|e| uuid_v7(&e["id"])).collect()
}

/// Every archived event id, newest first (up to 500).
pub async fn archived_ids(app: &TestApp) -> Vec<Uuid> {
    ids(&list_events(app, "limit=500").await.0)
}

pub async fn assert_archive_empty(app: &TestApp) {
    let (items, _) = list_events(app, "limit=500").await;
    assert!(
        items.is_empty(),
        "a refused request stored something: {items:?}"
    );
}

/// `GET /admin/events/{id}` → the stored event object (section 4), asserting 200.
pub async fn archived_event(app: &TestApp, id: Uuid) -> Value {
    let (status, v) = app.admin_get(&format!("/admin/events/{id}")).await;
    assert_eq!(status, 200, "GET /admin/events/{id}: {v}");
    assert_eq!(
        keys(&v),
        ["deliveries", "event", "explanation", "filtered"]
            .into_iter()
            .collect(),
        "{v}"
    );
    assert!(v["filtered"].is_boolean(), "{v}");
    assert!(v["deliveries"].is_array(), "{v}");
    v["event"].clone()
}

/// Asserts the section 4 shape of an archived event: exactly its fields, the v7 id agreeing with
/// the timestamp, and no credential header kept in `metadata.headers`.
pub fn assert_event_shape(ev: &Value, id: Uuid, source: &str, received_bytes: usize) {
    assert_eq!(
        keys(ev),
        [
            "action",
            "deliveryId",
            "id",
            "metadata",
            "payload",
            "source",
            "timestamp",
            "type"
        ]
        .into_iter()
        .collect(),
        "{ev}"
    );
    assert_eq!(ev["id"], id.to_string());
    assert_eq!(ev["source"], source);
    assert!(ev["type"].is_string(), "{ev}");
    assert!(ev["action"].is_string() || ev["action"].is_null(), "{ev}");
    assert!(
        ev["deliveryId"].is_string() || ev["deliveryId"].is_null(),
        "{ev}"
    );
    let ts = ev["timestamp"].as_i64().expect("timestamp in ms");
    let (secs, nanos) = id.get_timestamp().unwrap().to_unix();
    let id_ms = secs as i64 * 1000 + i64::from(nanos / 1_000_000);
    assert!(
        (ts - id_ms).abs() <= 1000,
        "the v7 id's time ({id_ms}) and timestamp ({ts}) disagree"
    );
    assert!(ev["payload"].is_object(), "{ev}");
    let md = &ev["metadata"];
    assert_eq!(
        keys(md),
        ["clientIp", "headers", "identifier", "receivedBytes"]
            .into_iter()
            .collect(),
        "{md}"
    );
    assert_eq!(md["clientIp"], "127.0.0.1");
    assert_eq!(md["receivedBytes"], received_bytes as u64, "{md}");
    assert!(md["identifier"].as_str().is_some_and(|s| !s.is_empty()));
    let headers = md["headers"].as_object().expect("headers is an object");
    for (name, value) in headers {
        assert_eq!(
            *name,
            name.to_ascii_lowercase(),
            "header names are lowercase"
        );
        assert!(value.is_string(), "{name}: {value}");
    }
    for secret_header in [
        "authorization",
        "x-hub-signature-256",
        "x-hub-signature",
        "linear-signature",
        "x-slack-signature",
        "webhook-signature",
    ] {
        assert!(
            !headers.contains_key(secret_header),
            "metadata.headers kept {secret_header}: {md}"
        );
    }
}
