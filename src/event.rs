//! The normalized event of API.md section 4, and how each provider's request becomes one.

use std::fmt::Write as _;

use http::HeaderMap;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::config::Scheme;

/// Why a request body could not become an event (answered `400 invalid_body`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BodyError(pub String);

fn bad(msg: impl Into<String>) -> BodyError {
    BodyError(msg.into())
}

/// The provider body as decoded from JSON or form encoding.
#[derive(Debug)]
pub struct Decoded {
    pub payload: Value,
    /// The raw JSON text of the payload when the body was JSON, so the archive can store the
    /// provider's bytes as they came instead of serializing the parsed tree again.
    pub raw_json: bool,
}

/// Which encoding a request body claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Json,
    Form,
}

/// Reads the content type; a missing one is treated as JSON (internal clients often omit it).
pub fn body_kind(headers: &HeaderMap) -> Result<BodyKind, BodyError> {
    let Some(ct) = headers.get(http::header::CONTENT_TYPE) else {
        return Ok(BodyKind::Json);
    };
    let ct = ct
        .to_str()
        .map_err(|_| bad("Content-Type is not valid text"))?;
    let essence = ct.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/json")
        || (essence.len() > 5
            && essence[..essence.len() - 5].contains('/')
            && essence[essence.len() - 5..].eq_ignore_ascii_case("+json"))
    {
        Ok(BodyKind::Json)
    } else if essence.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        Ok(BodyKind::Form)
    } else {
        Err(bad(format!(
            "unsupported Content-Type \"{essence}\" (expected application/json or application/x-www-form-urlencoded)"
        )))
    }
}

/// The deepest nesting of objects and arrays the contract accepts.
pub const MAX_DEPTH: usize = 128;

/// Parses a body that must be a JSON object nested at most `MAX_DEPTH` containers deep.
///
/// serde_json's own recursion guard stops one level short of the contract's 128, so on that
/// (rare) error the depth is measured exactly and, when within the limit, the body is parsed
/// again without the guard — safe, because the depth is then known to be bounded.
pub fn parse_json_object(bytes: &[u8]) -> Result<Value, BodyError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(bad("the body is empty"));
    }
    let parsed = match serde_json::from_slice::<Value>(bytes) {
        Err(e) if e.to_string().starts_with("recursion limit exceeded") => {
            if max_depth(bytes) > MAX_DEPTH {
                return Err(bad("the body is nested deeper than 128 levels"));
            }
            let mut de = serde_json::Deserializer::from_slice(bytes);
            de.disable_recursion_limit();
            serde::Deserialize::deserialize(&mut de).and_then(|v| de.end().map(|()| v))
        }
        other => other,
    };
    match parsed {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(bad("the body must be a JSON object")),
        Err(e) => Err(bad(format!("the body is not valid JSON: {e}"))),
    }
}

/// The deepest container nesting in a JSON text (brackets inside strings ignored). Stops
/// counting once past the limit, so hostile input costs one linear scan at most.
fn max_depth(bytes: &[u8]) -> usize {
    let (mut depth, mut deepest, mut in_str, mut escaped) = (0usize, 0usize, false, false);
    for &b in bytes {
        if in_str {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'{' | b'[' => {
                depth += 1;
                deepest = deepest.max(depth);
                if deepest > MAX_DEPTH {
                    return deepest;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Decodes a provider body. `Form` bodies: a `payload` field holding JSON (GitHub, Slack
/// interactivity) becomes the payload; otherwise (Slack slash commands) the fields become a JSON
/// object of strings.
pub fn decode_body(kind: BodyKind, bytes: &[u8]) -> Result<Decoded, BodyError> {
    match kind {
        BodyKind::Json => Ok(Decoded {
            payload: parse_json_object(bytes)?,
            raw_json: true,
        }),
        BodyKind::Form => {
            if std::str::from_utf8(bytes).is_err() {
                return Err(bad("the form body is not valid UTF-8"));
            }
            if bytes.iter().all(u8::is_ascii_whitespace) {
                return Err(bad("the body is empty"));
            }
            let mut fields = Map::new();
            for (k, v) in form_urlencoded::parse(bytes) {
                if k == "payload" {
                    let payload = parse_json_object(v.as_bytes())
                        .map_err(|e| bad(format!("form field payload: {}", e.0)))?;
                    return Ok(Decoded {
                        payload,
                        raw_json: false,
                    });
                }
                fields.insert(k.into_owned(), Value::String(v.into_owned()));
            }
            if fields.is_empty() {
                return Err(bad("the form body has no fields"));
            }
            Ok(Decoded {
                payload: Value::Object(fields),
                raw_json: false,
            })
        }
    }
}

/// What normalization learns from the provider's request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classified {
    pub event_type: String,
    pub action: Option<String>,
    pub delivery_id: Option<String>,
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// Type, action and delivery id per provider (API.md section 3 table, section 4 `action`).
pub fn classify(
    scheme: Scheme,
    headers: &HeaderMap,
    payload: &Value,
) -> Result<Classified, BodyError> {
    let action_of = |p: &Value| str_at(p, "action").map(str::to_string);
    match scheme {
        Scheme::Github => {
            let event_type = header_str(headers, "x-github-event")
                .ok_or_else(|| bad("missing X-GitHub-Event header"))?;
            Ok(Classified {
                event_type: event_type.to_string(),
                action: action_of(payload),
                delivery_id: header_str(headers, "x-github-delivery").map(str::to_string),
            })
        }
        Scheme::Linear => {
            let t = str_at(payload, "type")
                .filter(|t| !t.is_empty())
                .ok_or_else(|| bad("a Linear webhook needs a string \"type\" field"))?;
            Ok(Classified {
                event_type: snake_case(t),
                action: action_of(payload),
                delivery_id: header_str(headers, "linear-delivery").map(str::to_string),
            })
        }
        Scheme::Slack => {
            let delivery_id = str_at(payload, "event_id").map(str::to_string);
            if let Some(cmd) = str_at(payload, "command") {
                // Slash commands arrive as plain form fields.
                return Ok(Classified {
                    event_type: "slash_command".into(),
                    action: Some(cmd.to_string()),
                    delivery_id,
                });
            }
            let outer = str_at(payload, "type").unwrap_or("");
            let (event_type, action) = if outer == "event_callback" {
                let inner = payload.get("event");
                let t = inner
                    .and_then(|e| str_at(e, "type"))
                    .ok_or_else(|| bad("a Slack event_callback needs event.type"))?;
                (t, inner.and_then(|e| str_at(e, "subtype")))
            } else if !outer.is_empty() {
                // Interactivity payloads (block_actions, view_submission, …) and other envelopes.
                (outer, None)
            } else {
                return Err(bad("a Slack webhook needs a \"type\" or a \"command\""));
            };
            Ok(Classified {
                event_type: event_type.to_string(),
                action: action.map(str::to_string),
                delivery_id,
            })
        }
        Scheme::Standard => {
            let event_type = str_at(payload, "type")
                .filter(|t| !t.is_empty())
                .or_else(|| header_str(headers, "x-event-type"))
                .ok_or_else(|| {
                    bad("an internal event needs a string \"type\" field or an X-Event-Type header")
                })?;
            Ok(Classified {
                event_type: event_type.to_string(),
                action: action_of(payload),
                delivery_id: header_str(headers, "webhook-id").map(str::to_string),
            })
        }
    }
}

/// `IssueLabel` → `issue_label`, `OAuthApp` → `o_auth_app`, `issue` → `issue`.
pub fn snake_case(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    let chars: Vec<char> = s.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if c.is_uppercase() {
            let prev = i.checked_sub(1).map(|j| chars[j]);
            let next = chars.get(i + 1);
            let boundary = match prev {
                Some(p) if p.is_lowercase() || p.is_ascii_digit() => true,
                Some(p) if p.is_uppercase() => next.is_some_and(|n| n.is_lowercase()),
                _ => false,
            };
            if boundary && !out.ends_with('_') {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        } else if c == '-' || c == ' ' {
            out.push('_');
        } else {
            out.push(c);
        }
    }
    out
}

/// Headers that carry credentials are never archived or forwarded.
fn sensitive_header(name: &str) -> bool {
    matches!(
        name,
        "authorization"
            | "proxy-authorization"
            | "cookie"
            | "x-hub-signature"
            | "x-hub-signature-256"
            | "linear-signature"
            | "x-slack-signature"
            | "webhook-signature"
    )
}

/// At most this many headers, each value at most 1 KiB, are kept in `metadata.headers`.
const MAX_KEPT_HEADERS: usize = 64;
const MAX_HEADER_VALUE: usize = 1024;

pub fn kept_headers(headers: &HeaderMap) -> Map<String, Value> {
    let mut out = Map::new();
    for (name, value) in headers {
        if out.len() >= MAX_KEPT_HEADERS {
            break;
        }
        let name = name.as_str();
        if sensitive_header(name) || out.contains_key(name) {
            continue;
        }
        let text = String::from_utf8_lossy(value.as_bytes());
        let text = if text.len() > MAX_HEADER_VALUE {
            let mut end = MAX_HEADER_VALUE;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text[..end].to_string()
        } else {
            text.into_owned()
        };
        out.insert(name.to_string(), Value::String(text));
    }
    out
}

/// Reads a dot path (`payload.sender.login`, numeric segments index arrays) from an event.
pub fn lookup<'a>(event: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = event;
    for seg in path.split('.') {
        cur = match cur {
            Value::Object(m) => m.get(seg)?,
            Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// The rate-limit identifier: the value at the source's identifier path if it is a non-empty
/// string or a number, else the client IP.
pub fn identifier(event: &Value, path: Option<&str>, client_ip: &str) -> String {
    let found = path.and_then(|p| lookup(event, p)).and_then(|v| match v {
        Value::String(s) if !s.is_empty() => Some(truncate(s, 256).to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    });
    found.unwrap_or_else(|| client_ip.to_string())
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The parts of an event that are columns in the store; the full event is a JSON object.
#[derive(Debug, Clone)]
pub struct EventHeader {
    pub id: Uuid,
    pub source: String,
    pub event_type: String,
    pub action: Option<String>,
    pub delivery_id: Option<String>,
    pub timestamp: i64,
}

/// A fresh UUID v7 and its millisecond timestamp (the same instant, so archive ranges by time are
/// ranges by id).
pub fn new_event_id() -> (Uuid, i64) {
    let id = Uuid::now_v7();
    let ts = id
        .get_timestamp()
        .map(|t| {
            let (s, n) = t.to_unix();
            s as i64 * 1000 + (n / 1_000_000) as i64
        })
        .unwrap_or(0);
    (id, ts)
}

pub struct EventInput<'a> {
    /// The event's id and receipt time (ms), from `new_event_id` or the stream sequencer.
    pub id: (Uuid, i64),
    pub source: &'a str,
    pub classified: Classified,
    pub payload: Value,
    pub headers: &'a HeaderMap,
    pub client_ip: &'a str,
    pub received_bytes: usize,
    pub identifier_field: Option<&'a str>,
}

/// Builds the section 4 event object. Returns the header columns and the JSON object.
pub fn normalize(input: EventInput<'_>) -> (EventHeader, Value) {
    let EventInput {
        id: (id, timestamp),
        source,
        classified,
        payload,
        headers,
        client_ip,
        received_bytes,
        identifier_field,
    } = input;
    let mut metadata = Map::new();
    metadata.insert("clientIp".into(), Value::String(client_ip.to_string()));
    metadata.insert("receivedBytes".into(), Value::from(received_bytes as u64));
    metadata.insert("headers".into(), Value::Object(kept_headers(headers)));
    let mut event = Map::new();
    event.insert("id".into(), Value::String(id.to_string()));
    event.insert("source".into(), Value::String(source.to_string()));
    event.insert("type".into(), Value::String(classified.event_type.clone()));
    event.insert(
        "action".into(),
        classified
            .action
            .clone()
            .map(Value::String)
            .unwrap_or(Value::Null),
    );
    event.insert(
        "deliveryId".into(),
        classified
            .delivery_id
            .clone()
            .map(Value::String)
            .unwrap_or(Value::Null),
    );
    event.insert("timestamp".into(), Value::from(timestamp));
    event.insert("payload".into(), payload);
    let mut event = Value::Object(event);
    let ident = identifier(&event, identifier_field, client_ip);
    if let Some(Value::Object(m)) = event.get_mut("metadata") {
        m.insert("identifier".into(), Value::String(ident));
    } else if let Value::Object(m) = &mut event {
        metadata.insert("identifier".into(), Value::String(ident));
        m.insert("metadata".into(), Value::Object(metadata));
    }
    let header = EventHeader {
        id,
        source: source.to_string(),
        event_type: classified.event_type,
        action: classified.action,
        delivery_id: classified.delivery_id,
        timestamp,
    };
    (header, event)
}

/// Serializes an event object, writing `raw_payload` verbatim in place of the parsed payload when
/// given (the provider's own JSON text, already validated), which saves re-serializing the
/// largest part of the event on the hot path.
pub fn serialize_event(event: &Value, raw_payload: Option<&[u8]>) -> String {
    let (Value::Object(map), Some(raw)) = (event, raw_payload) else {
        return event.to_string();
    };
    let Ok(raw) = std::str::from_utf8(raw) else {
        return event.to_string();
    };
    let mut out = String::with_capacity(raw.len() + 512);
    out.push('{');
    let mut first = true;
    for (k, v) in map {
        if !first {
            out.push(',');
        }
        first = false;
        // Keys are our own field names or come from a transformation; serde escapes them.
        let _ = write!(out, "{}:", Value::String(k.clone()));
        if k == "payload" {
            out.push_str(raw.trim());
        } else {
            out.push_str(&v.to_string());
        }
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn hdrs(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn snake_case_matches_linear_types() {
        assert_eq!(snake_case("Issue"), "issue");
        assert_eq!(snake_case("IssueLabel"), "issue_label");
        assert_eq!(snake_case("ProjectUpdate"), "project_update");
        assert_eq!(snake_case("OAuthApp"), "o_auth_app");
        assert_eq!(snake_case("already_snake"), "already_snake");
    }

    #[test]
    fn nesting_limit_is_128() {
        for inner in ["1", ""] {
            let ok = format!("{}{inner}{}", "[".repeat(127), "]".repeat(127));
            let ok = format!("{{\"a\":{ok}}}");
            assert_eq!(max_depth(ok.as_bytes()), 128);
            assert!(parse_json_object(ok.as_bytes()).is_ok(), "{inner:?}");
            let deep = format!("{}{inner}{}", "[".repeat(128), "]".repeat(128));
            let deep = format!("{{\"a\":{deep}}}");
            let err = parse_json_object(deep.as_bytes()).unwrap_err();
            assert!(err.0.contains("deeper than 128"), "{err}");
        }
        let objects = format!("{}{{}}{}", "{\"a\":".repeat(127), "}".repeat(127));
        assert!(parse_json_object(objects.as_bytes()).is_ok());
        // Brackets inside strings do not count.
        let s = format!("{{\"a\":\"{}\\\"{}\"}}", "[".repeat(500), "{".repeat(500));
        assert_eq!(max_depth(s.as_bytes()), 1);
        assert!(parse_json_object(s.as_bytes()).is_ok());
        let very_deep = "[".repeat(10_000);
        assert!(parse_json_object(very_deep.as_bytes()).is_err());
    }

    #[test]
    fn rejects_non_objects_and_garbage() {
        for body in [
            &b""[..],
            b"  ",
            b"[]",
            b"1",
            b"\"s\"",
            b"{",
            b"\xff\xfe",
            b"{\"a\":1}x",
        ] {
            assert!(parse_json_object(body).is_err(), "{body:?}");
        }
    }

    #[test]
    fn content_types() {
        assert_eq!(body_kind(&hdrs(&[])).unwrap(), BodyKind::Json);
        assert_eq!(
            body_kind(&hdrs(&[(
                "content-type",
                "application/json; charset=utf-8"
            )]))
            .unwrap(),
            BodyKind::Json
        );
        assert_eq!(
            body_kind(&hdrs(&[("content-type", "application/vnd.api+json")])).unwrap(),
            BodyKind::Json
        );
        assert_eq!(
            body_kind(&hdrs(&[(
                "content-type",
                "application/x-www-form-urlencoded"
            )]))
            .unwrap(),
            BodyKind::Form
        );
        assert!(body_kind(&hdrs(&[("content-type", "text/plain")])).is_err());
        assert!(body_kind(&hdrs(&[("content-type", "+json")])).is_err());
    }

    #[test]
    fn form_payload_and_slash_command() {
        let d = decode_body(
            BodyKind::Form,
            b"payload=%7B%22type%22%3A%22block_actions%22%7D",
        )
        .unwrap();
        assert_eq!(d.payload["type"], "block_actions");
        let d = decode_body(BodyKind::Form, b"command=%2Fdeploy&text=prod&team_id=T1").unwrap();
        assert_eq!(d.payload["command"], "/deploy");
        assert_eq!(d.payload["text"], "prod");
        assert!(decode_body(BodyKind::Form, b"payload=notjson").is_err());
        assert!(decode_body(BodyKind::Form, b"").is_err());
    }

    #[test]
    fn classify_per_provider() {
        let gh = classify(
            Scheme::Github,
            &hdrs(&[
                ("x-github-event", "pull_request"),
                ("x-github-delivery", "d1"),
            ]),
            &serde_json::json!({"action": "opened"}),
        )
        .unwrap();
        assert_eq!(gh.event_type, "pull_request");
        assert_eq!(gh.action.as_deref(), Some("opened"));
        assert_eq!(gh.delivery_id.as_deref(), Some("d1"));
        assert!(classify(Scheme::Github, &hdrs(&[]), &serde_json::json!({})).is_err());

        let li = classify(
            Scheme::Linear,
            &hdrs(&[("linear-delivery", "L1")]),
            &serde_json::json!({"type": "IssueLabel", "action": "create"}),
        )
        .unwrap();
        assert_eq!(li.event_type, "issue_label");
        assert_eq!(li.delivery_id.as_deref(), Some("L1"));

        let sl = classify(
            Scheme::Slack,
            &hdrs(&[]),
            &serde_json::json!({"type": "event_callback", "event_id": "Ev1", "event": {"type": "message", "subtype": "bot_message"}}),
        )
        .unwrap();
        assert_eq!(
            sl,
            Classified {
                event_type: "message".into(),
                action: Some("bot_message".into()),
                delivery_id: Some("Ev1".into())
            }
        );
        let cmd = classify(
            Scheme::Slack,
            &hdrs(&[]),
            &serde_json::json!({"command": "/deploy", "text": "x"}),
        )
        .unwrap();
        assert_eq!(cmd.event_type, "slash_command");
        assert_eq!(cmd.action.as_deref(), Some("/deploy"));

        let int = classify(
            Scheme::Standard,
            &hdrs(&[("x-event-type", "build.done"), ("webhook-id", "msg_1")]),
            &serde_json::json!({"x": 1}),
        )
        .unwrap();
        assert_eq!(int.event_type, "build.done");
        assert_eq!(int.delivery_id.as_deref(), Some("msg_1"));
    }

    #[test]
    fn normalize_builds_section_4_event() {
        let headers = hdrs(&[
            ("x-github-event", "pull_request"),
            ("x-hub-signature-256", "sha256=secretish"),
            ("authorization", "Bearer k"),
        ]);
        let (h, ev) = normalize(EventInput {
            id: new_event_id(),
            source: "github",
            classified: Classified {
                event_type: "pull_request".into(),
                action: Some("opened".into()),
                delivery_id: Some("d".into()),
            },
            payload: serde_json::json!({"sender": {"login": "octocat"}, "action": "opened"}),
            headers: &headers,
            client_ip: "127.0.0.1",
            received_bytes: 42,
            identifier_field: Some("payload.sender.login"),
        });
        assert_eq!(h.id.get_version_num(), 7);
        assert_eq!(ev["id"], h.id.to_string());
        assert_eq!(ev["timestamp"], h.timestamp);
        assert_eq!(ev["metadata"]["identifier"], "octocat");
        assert_eq!(ev["metadata"]["receivedBytes"], 42);
        assert_eq!(ev["metadata"]["headers"]["x-github-event"], "pull_request");
        assert!(
            ev["metadata"]["headers"]
                .get("x-hub-signature-256")
                .is_none()
        );
        assert!(ev["metadata"]["headers"].get("authorization").is_none());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        assert!((now - h.timestamp).abs() < 5_000);
    }

    #[test]
    fn identifier_falls_back_to_ip() {
        let ev = serde_json::json!({"payload": {"n": 5, "e": "", "o": {}}});
        assert_eq!(identifier(&ev, Some("payload.n"), "1.2.3.4"), "5");
        assert_eq!(identifier(&ev, Some("payload.e"), "1.2.3.4"), "1.2.3.4");
        assert_eq!(identifier(&ev, Some("payload.o"), "1.2.3.4"), "1.2.3.4");
        assert_eq!(identifier(&ev, None, "1.2.3.4"), "1.2.3.4");
    }

    #[test]
    fn serialize_splices_raw_payload() {
        let raw = br#"{ "b": 1,  "a": [1, 2] }"#;
        let mut ev = serde_json::json!({"id": "x", "type": "t", "payload": {}});
        ev["payload"] = serde_json::from_slice(raw).unwrap();
        let s = serialize_event(&ev, Some(raw));
        let back: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(back, ev);
        assert!(s.contains(r#""b": 1,  "a""#));
    }
}
