//! Stream clients for the tests: a Server-Sent Events parser over reqwest's byte stream (the
//! wire format as a browser reads it) and a WebSocket client (tokio-tungstenite), behind one
//! `StreamClient` that yields the contract's messages of API.md section 7 "Streaming".

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt as _, Stream, StreamExt as _};
use reqwest::header::{AUTHORIZATION, HeaderMap};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use uuid::Uuid;

use crate::support::*;

/// How long a test waits for a message that should come within milliseconds.
pub const SOON: Duration = Duration::from_secs(10);

/// One dispatched SSE message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseMessage {
    /// The `id:` field this message carried, if any (the sticky last event id is on the parser).
    pub id: Option<String>,
    /// The `event:` field; `None` for an unnamed event (`message` in a browser).
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

/// The SSE wire format (HTML Living Standard, "Parsing an event stream"), fed in arbitrary chunks.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    /// The previous line ended in CR: a LF right after it belongs to the same line break.
    after_cr: bool,
    started: bool,
    data: String,
    event: Option<String>,
    id: Option<String>,
    /// The last `id:` the stream set, kept across messages as a browser keeps it.
    pub last_event_id: Option<String>,
    ready: VecDeque<SseMessage>,
}

impl SseParser {
    pub fn push(&mut self, mut bytes: &[u8]) {
        if self.after_cr && !bytes.is_empty() {
            if bytes[0] == b'\n' {
                bytes = &bytes[1..];
            }
            self.after_cr = false;
        }
        self.buf.extend_from_slice(bytes);
        while let Some(end) = self.buf.iter().position(|&b| b == b'\n' || b == b'\r') {
            let mut skip = 1;
            if self.buf[end] == b'\r' {
                match self.buf.get(end + 1) {
                    Some(b'\n') => skip = 2,
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            let line: Vec<u8> = self.buf.drain(..end + skip).take(end).collect();
            let mut line = String::from_utf8_lossy(&line).into_owned();
            if !self.started {
                self.started = true;
                if let Some(rest) = line.strip_prefix('\u{feff}') {
                    line = rest.to_string();
                }
            }
            self.line(&line);
        }
    }

    fn line(&mut self, line: &str) {
        if line.is_empty() {
            return self.dispatch();
        }
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
            }
            "event" => self.event = Some(value.to_string()),
            "id" if !value.contains('\0') => {
                self.id = Some(value.to_string());
                self.last_event_id = Some(value.to_string());
            }
            _ => {}
        }
    }

    fn dispatch(&mut self) {
        let id = self.id.take();
        let event = self.event.take();
        if self.data.is_empty() {
            return;
        }
        let mut data = std::mem::take(&mut self.data);
        data.pop();
        self.ready.push_back(SseMessage { id, event, data });
    }

    pub fn pop(&mut self) -> Option<SseMessage> {
        self.ready.pop_front()
    }
}

/// An open `/stream/sse` response read message by message.
pub struct SseClient {
    pub headers: HeaderMap,
    body: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    pub parser: SseParser,
}

impl SseClient {
    /// The next message; `None` when the body ended.
    pub async fn next(&mut self) -> Option<SseMessage> {
        loop {
            if let Some(m) = self.parser.pop() {
                return Some(m);
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.parser.push(&chunk),
                _ => return None,
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Ws,
    Sse,
}

pub const BOTH: [Transport; 2] = [Transport::Ws, Transport::Sse];

/// A stream request: query parameters, optional bearer key and extra headers.
#[derive(Clone, Debug, Default)]
pub struct StreamRequest {
    pub query: Vec<(String, String)>,
    pub bearer: Option<String>,
    pub headers: Vec<(String, String)>,
}

impl StreamRequest {
    /// `agentId=agent&apiKey=key`.
    pub fn new(agent: &str, key: &str) -> StreamRequest {
        StreamRequest::keyless(agent).param("apiKey", key)
    }

    /// `agentId=agent`, no key.
    pub fn keyless(agent: &str) -> StreamRequest {
        StreamRequest::default().param("agentId", agent)
    }

    pub fn param(mut self, name: &str, value: &str) -> StreamRequest {
        self.query.push((name.into(), value.into()));
        self
    }

    pub fn bearer(mut self, key: &str) -> StreamRequest {
        self.bearer = Some(key.into());
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> StreamRequest {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn query_string(&self) -> String {
        form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&self.query)
            .finish()
    }
}

/// A stream request answered with something else than a stream (the WS handshake got no 101).
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Refused {
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// What a stream yields, on either transport.
#[derive(Debug, Clone)]
pub enum Got {
    /// A message: its JSON and (SSE) the `id:` it carried.
    Message { id: Option<String>, json: Value },
    /// The server ended the stream with a reason: a WebSocket close frame (with its code), or
    /// SSE's final `{"type":"close","reason":…}` message (no code).
    Closed { code: Option<u16>, reason: String },
    /// The connection ended without a close message.
    Ended,
}

pub enum StreamClient {
    Ws(Box<WebSocketStream<TcpStream>>),
    Sse(Box<SseClient>),
}

/// Opens a stream on `app` over `t`.
pub async fn open(
    app: &TestApp,
    t: Transport,
    req: &StreamRequest,
) -> Result<StreamClient, Refused> {
    open_at(app.addr, t, req).await
}

/// Opens a stream on the server at `addr` (in process or the real binary) over `t`.
pub async fn open_at(
    addr: std::net::SocketAddr,
    t: Transport,
    req: &StreamRequest,
) -> Result<StreamClient, Refused> {
    match t {
        Transport::Ws => open_ws(addr, req).await,
        Transport::Sse => open_sse(addr, req).await,
    }
}

/// Opens a stream, asserting it was accepted.
pub async fn open_ok(app: &TestApp, t: Transport, req: &StreamRequest) -> StreamClient {
    match open(app, t, req).await {
        Ok(s) => s,
        Err(r) => panic!(
            "{t:?} stream {:?} refused: {} {}",
            req.query_string(),
            r.status,
            String::from_utf8_lossy(&r.body)
        ),
    }
}

/// Opens a stream, asserting it was refused; the answer.
pub async fn open_refused(app: &TestApp, t: Transport, req: &StreamRequest) -> Refused {
    match open(app, t, req).await {
        Ok(_) => panic!(
            "{t:?} stream {:?} (bearer {:?}) was accepted",
            req.query_string(),
            req.bearer
        ),
        Err(r) => r,
    }
}

async fn open_sse(
    addr: std::net::SocketAddr,
    req: &StreamRequest,
) -> Result<StreamClient, Refused> {
    let mut r = reqwest::Client::new()
        .get(format!("http://{addr}/stream/sse?{}", req.query_string()))
        .header("accept", "text/event-stream");
    if let Some(k) = &req.bearer {
        r = r.bearer_auth(k);
    }
    for (k, v) in &req.headers {
        r = r.header(k, v);
    }
    let resp = tokio::time::timeout(SOON, r.send())
        .await
        .expect("the SSE response head arrives")
        .expect("the server answers");
    if resp.status().as_u16() != 200 {
        let status = resp.status().as_u16();
        let body = resp.bytes().await.unwrap_or_default().to_vec();
        return Err(Refused { status, body });
    }
    Ok(StreamClient::Sse(Box::new(SseClient {
        headers: resp.headers().clone(),
        body: Box::pin(resp.bytes_stream()),
        parser: SseParser::default(),
    })))
}

async fn open_ws(addr: std::net::SocketAddr, req: &StreamRequest) -> Result<StreamClient, Refused> {
    let url = format!("ws://{addr}/stream/ws?{}", req.query_string());
    let mut request = url.into_client_request().expect("a valid ws request");
    if let Some(k) = &req.bearer {
        request
            .headers_mut()
            .insert(AUTHORIZATION, format!("Bearer {k}").parse().unwrap());
    }
    for (k, v) in &req.headers {
        request.headers_mut().insert(
            reqwest::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let handshake = tokio::time::timeout(SOON, tokio_tungstenite::client_async(request, tcp))
        .await
        .expect("the WebSocket handshake is answered");
    match handshake {
        Ok((ws, resp)) => {
            assert_eq!(resp.status().as_u16(), 101);
            Ok(StreamClient::Ws(Box::new(ws)))
        }
        Err(tungstenite::Error::Http(resp)) => Err(Refused {
            status: resp.status().as_u16(),
            body: resp.body().clone().unwrap_or_default(),
        }),
        Err(e) => panic!("WebSocket handshake failed: {e}"),
    }
}

fn parse_json(text: &str) -> Value {
    serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("a stream message is not JSON ({e}): {text:?}"))
}

impl StreamClient {
    pub fn transport(&self) -> Transport {
        match self {
            StreamClient::Ws(_) => Transport::Ws,
            StreamClient::Sse(_) => Transport::Sse,
        }
    }

    /// The next thing the stream yields (no timeout).
    pub async fn next(&mut self) -> Got {
        match self {
            StreamClient::Ws(ws) => loop {
                match ws.next().await {
                    Some(Ok(WsMessage::Text(t))) => {
                        return Got::Message {
                            id: None,
                            json: parse_json(&t),
                        };
                    }
                    Some(Ok(WsMessage::Close(frame))) => {
                        return match frame {
                            Some(f) => Got::Closed {
                                code: Some(u16::from(f.code)),
                                reason: f.reason.to_string(),
                            },
                            None => Got::Closed {
                                code: None,
                                reason: String::new(),
                            },
                        };
                    }
                    Some(Ok(WsMessage::Binary(b))) => {
                        panic!("the stream sent a binary frame ({} bytes)", b.len())
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => return Got::Ended,
                }
            },
            StreamClient::Sse(sse) => match sse.next().await {
                Some(m) => {
                    assert_eq!(m.event, None, "SSE messages are unnamed events: {m:?}");
                    let json = parse_json(&m.data);
                    if json["type"] == "close" {
                        Got::Closed {
                            code: None,
                            reason: json["reason"].as_str().unwrap_or_default().to_string(),
                        }
                    } else {
                        Got::Message { id: m.id, json }
                    }
                }
                None => Got::Ended,
            },
        }
    }

    /// The next thing within `SOON`, else a panic.
    pub async fn recv(&mut self) -> Got {
        let t = self.transport();
        tokio::time::timeout(SOON, self.next())
            .await
            .unwrap_or_else(|_| panic!("{t:?}: nothing arrived within {SOON:?}"))
    }

    /// The next message that is not a heartbeat (checking the heartbeat's shape on the way).
    pub async fn next_message(&mut self) -> (Option<String>, Value) {
        let t = self.transport();
        loop {
            match self.recv().await {
                Got::Message { json, .. } if json["type"] == "heartbeat" => {
                    assert_heartbeat(&json);
                }
                Got::Message { id, json } => return (id, json),
                other => panic!("{t:?}: expected a message, the stream ended: {other:?}"),
            }
        }
    }

    /// The next event message, asserting its envelope: exactly `{"type":"event","data":<event>}`
    /// and, on SSE, `id:` = the event id. Returns the event (`data`).
    pub async fn next_event(&mut self) -> Value {
        let t = self.transport();
        let (id, json) = self.next_message().await;
        assert_eq!(
            json["type"], "event",
            "{t:?}: expected an event message: {json}"
        );
        let obj = json.as_object().unwrap();
        assert_eq!(
            obj.keys().map(String::as_str).collect::<Vec<_>>(),
            ["data", "type"],
            "{t:?}: the envelope is exactly {{type, data}}: {json}"
        );
        let data = json["data"].clone();
        let event_id = data["id"]
            .as_str()
            .unwrap_or_else(|| panic!("{t:?}: the event has no id: {json}"));
        if t == Transport::Sse {
            assert_eq!(
                id.as_deref(),
                Some(event_id),
                "SSE `id:` must be the event id on event messages"
            );
        }
        data
    }

    /// The next event's id.
    pub async fn next_event_id(&mut self) -> Uuid {
        let ev = self.next_event().await;
        Uuid::parse_str(ev["id"].as_str().unwrap()).unwrap()
    }

    /// Event ids in the order they arrive, up to and including `last`.
    pub async fn event_ids_through(&mut self, last: Uuid) -> Vec<Uuid> {
        let mut got = Vec::new();
        loop {
            let id = self.next_event_id().await;
            got.push(id);
            if id == last {
                return got;
            }
        }
    }

    /// Reads to the end of the stream: the event ids before the end, and how it ended.
    pub async fn drain(&mut self) -> (Vec<Uuid>, Got) {
        let mut ids = Vec::new();
        loop {
            match self.recv().await {
                Got::Message { json, id } if json["type"] == "event" => {
                    let ev_id = json["data"]["id"].as_str().unwrap().to_string();
                    if self.transport() == Transport::Sse {
                        assert_eq!(id.as_deref(), Some(ev_id.as_str()));
                    }
                    ids.push(Uuid::parse_str(&ev_id).unwrap());
                }
                Got::Message { json, .. } if json["type"] == "heartbeat" => {}
                Got::Message { json, .. } => panic!("unexpected message {json}"),
                end => return (ids, end),
            }
        }
    }

    /// Sends a JSON text frame (WebSocket only).
    pub async fn send(&mut self, v: &Value) {
        match self {
            StreamClient::Ws(ws) => ws
                .send(WsMessage::Text(v.to_string().into()))
                .await
                .expect("send a WebSocket message"),
            StreamClient::Sse(_) => panic!("SSE clients cannot send"),
        }
    }
}

/// `{"type":"heartbeat","timestamp":<ms>}`, the timestamp near now.
pub fn assert_heartbeat(v: &Value) {
    let obj = v.as_object().unwrap();
    assert_eq!(
        obj.keys().map(String::as_str).collect::<Vec<_>>(),
        ["timestamp", "type"],
        "heartbeat shape: {v}"
    );
    let ts = v["timestamp"]
        .as_i64()
        .unwrap_or_else(|| panic!("heartbeat timestamp is not ms: {v}"));
    assert!(
        (now_ms() - ts).abs() < 10_000,
        "heartbeat timestamp {ts} is not now: {v}"
    );
}

#[cfg(test)]
mod parser {
    use super::*;

    fn parse(chunks: &[&[u8]]) -> (Vec<SseMessage>, SseParser) {
        let mut p = SseParser::default();
        let mut out = Vec::new();
        for c in chunks {
            p.push(c);
            while let Some(m) = p.pop() {
                out.push(m);
            }
        }
        (out, p)
    }

    fn msg(id: Option<&str>, event: Option<&str>, data: &str) -> SseMessage {
        SseMessage {
            id: id.map(str::to_string),
            event: event.map(str::to_string),
            data: data.to_string(),
        }
    }

    #[test]
    fn fields_multiline_data_and_blank_line_dispatch() {
        let (got, p) = parse(&[b"id: 1\ndata: a\ndata:b\ndata\n\n: comment\ndata: c\n\n"]);
        assert_eq!(got, [msg(Some("1"), None, "a\nb\n"), msg(None, None, "c")]);
        assert_eq!(
            p.last_event_id.as_deref(),
            Some("1"),
            "the last id is sticky"
        );
    }

    #[test]
    fn any_line_break_and_any_chunking() {
        let wire = b"\xef\xbb\xbfevent: x\r\nid: 7\rdata: one\r\n\r\ndata: two\n\n";
        let want = [msg(Some("7"), Some("x"), "one"), msg(None, None, "two")];
        for split in 0..wire.len() {
            let (got, _) = parse(&[&wire[..split], &wire[split..]]);
            assert_eq!(got, want, "split at {split}");
        }
        let bytes: Vec<&[u8]> = wire.chunks(1).collect();
        assert_eq!(parse(&bytes).0, want);
    }

    #[test]
    fn no_dispatch_without_data_or_blank_line() {
        let (got, p) = parse(&[b"id: 9\n\nretry: 10\nevent: e\n\ndata: pending"]);
        assert!(got.is_empty(), "{got:?}");
        assert_eq!(p.last_event_id.as_deref(), Some("9"));
        let (got, _) = parse(&[b"data: x\n\n", b"data:  two spaces\n\n"]);
        assert_eq!(
            got[1].data, " two spaces",
            "only one leading space is stripped"
        );
    }
}
