//! The stream hub: live subscribers per agent (and the admin firehose `*`), each with a bounded
//! buffer. Each event is serialized once per distinct body and shared by every subscriber; a
//! subscriber whose buffer is full is cut off (it resumes with its last event id), so a slow
//! consumer never slows ingest or the others.

pub mod sequencer;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use arc_swap::ArcSwap;
use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use serde_json::Value;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::rules::Subscription;

/// The firehose pseudo-agent (every processed event; admin key only).
pub const FIREHOSE: &str = "*";

/// One event as a stream sends it.
#[derive(Debug)]
pub struct Message {
    pub event_id: Uuid,
    /// The whole `{"type":"event","data":…}` envelope, serialized once; clones share it.
    pub text: Utf8Bytes,
    /// The body as JSON, for subscribers' `filters`.
    pub view: Arc<Value>,
    /// The SSE frame (`id:` and `data:` lines), built by the first SSE subscriber and shared by
    /// the rest: each sends the same bytes, with no copy per subscriber.
    sse: OnceLock<Bytes>,
}

impl Message {
    pub fn new(event_id: Uuid, body: &[u8], view: Arc<Value>) -> Message {
        Message::traced(event_id, body, view, None)
    }

    /// A message that carries the W3C trace context of its publication (as stored by
    /// `telemetry::trace`): `traceparent` and `tracestate` fields beside `data`, so that a
    /// consumer's spans can join the webhook's trace.
    pub fn traced(
        event_id: Uuid,
        body: &[u8],
        view: Arc<Value>,
        trace_context: Option<&str>,
    ) -> Message {
        // Bodies are text this server serialized: the strict check passes (and is much faster
        // than the lossy conversion, which walks the text in chunks).
        let body = match std::str::from_utf8(body) {
            Ok(s) => std::borrow::Cow::Borrowed(s),
            Err(_) => String::from_utf8_lossy(body),
        };
        let mut text = String::with_capacity(body.len() + 24);
        text.push_str(r#"{"type":"event","data":"#);
        text.push_str(&body);
        if let Some(context) = trace_context {
            let (parent, state) = crate::telemetry::trace::split(context);
            // JSON strings: a `tracestate` value may hold quotes or backslashes.
            let quoted = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
            text.push_str(r#","traceparent":"#);
            text.push_str(&quoted(parent));
            if let Some(state) = state {
                text.push_str(r#","tracestate":"#);
                text.push_str(&quoted(state));
            }
        }
        text.push('}');
        Message {
            event_id,
            text: Utf8Bytes::from(text),
            view,
            sse: OnceLock::new(),
        }
    }

    /// This message as an SSE event frame.
    pub fn sse_frame(&self) -> Bytes {
        self.sse
            .get_or_init(|| sse_frame(Some(&self.event_id.to_string()), self.text.as_str()))
            .clone()
    }
}

/// One SSE event: an optional `id:` line, then `data:` lines (each line of `data` its own,
/// as the format requires; a client joins them back with `\n`), then the blank line.
pub fn sse_frame(id: Option<&str>, data: &str) -> Bytes {
    let mut frame = Vec::with_capacity(data.len() + 64);
    if let Some(id) = id {
        frame.extend_from_slice(b"id: ");
        frame.extend_from_slice(id.as_bytes());
        frame.push(b'\n');
    }
    // SSE ends a line at CRLF, CR or LF. (`memchr2`: `str::find` with a set of chars tests
    // one char at a time, and this runs over every byte of every event sent over SSE.)
    let mut rest = data.as_bytes();
    loop {
        frame.extend_from_slice(b"data: ");
        match memchr::memchr2(b'\r', b'\n', rest) {
            Some(i) => {
                frame.extend_from_slice(&rest[..i]);
                frame.push(b'\n');
                let skip = if rest[i..].starts_with(b"\r\n") { 2 } else { 1 };
                rest = &rest[i + skip..];
            }
            None => {
                frame.extend_from_slice(rest);
                frame.extend_from_slice(b"\n\n");
                return Bytes::from(frame);
            }
        }
    }
}

/// A subscriber's state shared with its connection.
pub struct Subscriber {
    id: u64,
    /// Changed only by `Hub::refilter`, which keeps the hub's payload-reader count.
    filter: ArcSwap<Subscription>,
    /// Set when the buffer overflowed and the hub let go of this subscriber.
    pub overflowed: AtomicBool,
}

impl Subscriber {
    /// The current filter.
    pub fn filter(&self) -> arc_swap::Guard<Arc<Subscription>> {
        self.filter.load()
    }
}

/// The hub's side of a subscriber: the only sender, so removing it ends the stream.
struct Entry {
    sub: Arc<Subscriber>,
    tx: mpsc::Sender<Arc<Message>>,
}

/// Counters exported as metrics.
#[derive(Default)]
pub struct StreamStats {
    pub open: AtomicU64,
    pub opened_total: AtomicU64,
    pub messages_sent: AtomicU64,
    pub overflows: AtomicU64,
}

pub struct Hub {
    // A std RwLock: publishing only reads; (un)subscribing is rare and brief.
    by_agent: RwLock<HashMap<Arc<str>, Vec<Entry>>>,
    /// Subscribers whose filter reads the payload (changed under `by_agent`'s write lock).
    /// While there are none, an event's payload is never parsed for streams.
    payload_readers: AtomicUsize,
    next_id: AtomicU64,
    buffer: usize,
    pub stats: StreamStats,
}

/// Removes its subscriber from the hub when dropped (the connection ended).
pub struct Registration {
    hub: Arc<Hub>,
    agent: Arc<str>,
    pub subscriber: Arc<Subscriber>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.remove(&self.agent, self.subscriber.id);
        self.hub.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Hub {
    pub fn new(buffer: usize) -> Hub {
        Hub {
            by_agent: RwLock::new(HashMap::new()),
            payload_readers: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            buffer: buffer.max(1),
            stats: StreamStats::default(),
        }
    }

    /// Registers a subscriber; live messages start buffering at once.
    pub fn subscribe(
        self: &Arc<Self>,
        agent: &str,
        filter: Subscription,
    ) -> (Registration, mpsc::Receiver<Arc<Message>>) {
        let (tx, rx) = mpsc::channel(self.buffer);
        let reads_payload = filter.reads_payload();
        let sub = Arc::new(Subscriber {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            filter: ArcSwap::from_pointee(filter),
            overflowed: AtomicBool::new(false),
        });
        let agent: Arc<str> = Arc::from(agent);
        if let Ok(mut map) = self.by_agent.write() {
            map.entry(agent.clone()).or_default().push(Entry {
                sub: sub.clone(),
                tx,
            });
            if reads_payload {
                self.payload_readers.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.stats.open.fetch_add(1, Ordering::Relaxed);
        self.stats.opened_total.fetch_add(1, Ordering::Relaxed);
        (
            Registration {
                hub: self.clone(),
                agent,
                subscriber: sub,
            },
            rx,
        )
    }

    fn remove(&self, agent: &str, id: u64) {
        if let Ok(mut map) = self.by_agent.write()
            && let Some(list) = map.get_mut(agent)
        {
            list.retain(|e| {
                let keep = e.sub.id != id;
                if !keep && e.sub.filter.load().reads_payload() {
                    self.payload_readers.fetch_sub(1, Ordering::Relaxed);
                }
                keep
            });
            if list.is_empty() {
                map.remove(agent);
            }
        }
    }

    /// Replaces `sub`'s filter (a WebSocket `subscribe`), keeping the payload-reader count.
    /// Call it through `Sequencer::refilter`, so no event is published half-way through.
    fn refilter(&self, agent: &str, sub: &Subscriber, filter: Subscription) {
        // A poisoned lock still holds a consistent map (every change to it is a single
        // push, retain or remove), and the client is told the new filter applies.
        let map = self.by_agent.write().unwrap_or_else(|p| p.into_inner());
        let registered = map
            .get(agent)
            .is_some_and(|list| list.iter().any(|e| e.sub.id == sub.id));
        if registered {
            match (sub.filter.load().reads_payload(), filter.reads_payload()) {
                (false, true) => self.payload_readers.fetch_add(1, Ordering::Relaxed),
                (true, false) => self.payload_readers.fetch_sub(1, Ordering::Relaxed),
                _ => 0,
            };
        }
        sub.filter.store(Arc::new(filter));
        drop(map);
    }

    /// Whether any stream is open on this node.
    pub fn has_subscribers(&self) -> bool {
        self.by_agent.read().map(|m| !m.is_empty()).unwrap_or(false)
    }

    /// Whether some open stream's filter reads the payload: only then do events need their
    /// payload parsed for streams (see `publish_event`).
    pub fn needs_payload(&self) -> bool {
        self.payload_readers.load(Ordering::Relaxed) > 0
    }

    /// Whether anyone listens to `agent` (publishing is skipped entirely when not).
    pub fn listening(&self, agent: &str) -> bool {
        self.by_agent
            .read()
            .map(|m| m.contains_key(agent))
            .unwrap_or(false)
    }

    /// Offers a message to every subscriber of `agent` whose filter matches.
    pub fn publish(&self, agent: &str, msg: &Arc<Message>) {
        let mut overflowed = Vec::new();
        if let Ok(map) = self.by_agent.read()
            && let Some(list) = map.get(agent)
        {
            for e in list {
                if !e.sub.filter.load().matches(&msg.view) {
                    continue;
                }
                match e.tx.try_send(msg.clone()) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        e.sub.overflowed.store(true, Ordering::Release);
                        overflowed.push(e.sub.id);
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {}
                }
            }
        }
        for id in overflowed {
            // Dropping the hub's sender ends the subscriber's stream; it sees `overflowed`.
            self.stats.overflows.fetch_add(1, Ordering::Relaxed);
            self.remove(agent, id);
        }
    }
}

/// What an event's streams receive, decided at routing time and published after the commit.
pub struct StreamItem {
    pub agent_id: Arc<str>,
    pub body: Bytes,
    /// `None`: the (globally transformed) event itself; `Some`: the route's transformed copy.
    pub view: Option<Arc<Value>>,
}

/// Publishes one committed event: to each routed agent's streams and to the firehose.
pub fn publish_event(
    hub: &Hub,
    event_id: Uuid,
    mut event_view: Value,
    deferred_payload: Option<Bytes>,
    firehose_body: Option<Bytes>,
    items: Vec<StreamItem>,
    trace_context: Option<&str>,
) {
    let listened = items.iter().any(|i| hub.listening(&i.agent_id))
        || (firehose_body.is_some() && hub.listening(FIREHOSE));
    if !listened {
        return;
    }
    // The message text is the stored body either way; the tree is for filters alone. Ingest
    // parses the payload when a filter reads it; this covers one opened since (publication and
    // subscription are serialized by the sequencer).
    if let Some(raw) = deferred_payload
        && hub.needs_payload()
    {
        crate::event::materialize_payload(&mut event_view, &raw);
    }
    let event_view = Arc::new(event_view);
    // Agents that get the event as is share one serialized message.
    let mut shared: Option<Arc<Message>> = None;
    for item in items {
        if !hub.listening(&item.agent_id) {
            continue;
        }
        let msg = match item.view {
            None => shared
                .get_or_insert_with(|| {
                    Arc::new(Message::traced(
                        event_id,
                        &item.body,
                        event_view.clone(),
                        trace_context,
                    ))
                })
                .clone(),
            Some(view) => Arc::new(Message::traced(event_id, &item.body, view, trace_context)),
        };
        hub.publish(&item.agent_id, &msg);
    }
    if let Some(body) = firehose_body
        && hub.listening(FIREHOSE)
    {
        let msg = Arc::new(Message::traced(event_id, &body, event_view, trace_context));
        hub.publish(FIREHOSE, &msg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(n: u128, v: Value) -> Arc<Message> {
        Arc::new(Message::new(
            Uuid::from_u128(n),
            v.to_string().as_bytes(),
            Arc::new(v),
        ))
    }

    #[test]
    fn a_traced_message_carries_its_context_beside_the_event() {
        let body = br#"{"id":"x"}"#;
        let plain = Message::new(Uuid::from_u128(1), body, Arc::new(Value::Null));
        assert_eq!(plain.text.as_str(), r#"{"type":"event","data":{"id":"x"}}"#);
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        // A `tracestate` value may hold characters JSON escapes.
        let context = format!("{parent}\na=\"q\\b\"");
        let traced = Message::traced(
            Uuid::from_u128(1),
            body,
            Arc::new(Value::Null),
            Some(&context),
        );
        let v: Value = serde_json::from_str(traced.text.as_str()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "event", "data": {"id": "x"},
                               "traceparent": parent, "tracestate": "a=\"q\\b\""})
        );
        let without_state = Message::traced(
            Uuid::from_u128(1),
            body,
            Arc::new(Value::Null),
            Some(parent),
        );
        let v: Value = serde_json::from_str(without_state.text.as_str()).unwrap();
        assert_eq!(v["traceparent"], parent);
        assert!(v.get("tracestate").is_none());
    }

    #[tokio::test]
    async fn filters_buffers_and_overflow() {
        let hub = Arc::new(Hub::new(2));
        let filtered = Subscription::parse(r#"{"source":"github"}"#).unwrap();
        let (a, mut rx_a) = hub.subscribe("bot", Subscription::all());
        let (b, mut rx_b) = hub.subscribe("bot", filtered);
        assert_eq!(hub.stats.open.load(Ordering::Relaxed), 2);
        hub.publish("bot", &msg(1, serde_json::json!({"source": "github"})));
        hub.publish("bot", &msg(2, serde_json::json!({"source": "linear"})));
        assert_eq!(rx_b.recv().await.unwrap().event_id, Uuid::from_u128(1));
        assert_eq!(rx_a.recv().await.unwrap().event_id, Uuid::from_u128(1));
        assert!(
            rx_a.recv()
                .await
                .unwrap()
                .text
                .starts_with(r#"{"type":"event","data":{"#)
        );
        // a's buffer (2) overflows on the third undrained message: it is cut off.
        for n in 3..6 {
            hub.publish("bot", &msg(n, serde_json::json!({"source": "x"})));
        }
        assert!(a.subscriber.overflowed.load(Ordering::Acquire));
        let mut got = 0;
        while rx_a.recv().await.is_some() {
            got += 1;
        }
        assert_eq!(got, 2, "buffered messages drain, then the stream ends");
        assert!(!b.subscriber.overflowed.load(Ordering::Acquire));
        drop(b);
        drop(a);
        assert_eq!(hub.stats.open.load(Ordering::Relaxed), 0);
        assert!(!hub.listening("bot"));
    }

    #[test]
    fn sse_frames_put_each_line_in_its_own_data_field() {
        assert_eq!(
            &sse_frame(Some("7"), r#"{"a":1}"#)[..],
            b"id: 7\ndata: {\"a\":1}\n\n"
        );
        assert_eq!(
            &sse_frame(None, "{\r\n \"a\":\r1\n}")[..],
            b"data: {\ndata:  \"a\":\ndata: 1\ndata: }\n\n"
        );
        assert_eq!(&sse_frame(None, "")[..], b"data: \n\n");
        let m = msg(9, serde_json::json!({"x": "y"}));
        let frame = m.sse_frame();
        assert!(frame.starts_with(
            format!("id: {}\ndata: {{\"type\":\"event\"", Uuid::from_u128(9)).as_bytes()
        ));
        assert_eq!(
            frame.as_ptr(),
            m.sse_frame().as_ptr(),
            "built once, then shared"
        );
    }

    #[tokio::test]
    async fn a_deferred_payload_is_parsed_for_listeners_only() {
        let hub = Arc::new(Hub::new(4));
        let raw = Bytes::from_static(br#"{"n": 2, "s": "x"}"#);
        let view = serde_json::json!({"source": "github", "payload": null});
        let body = Bytes::from_static(br#"{"source":"github","payload":{"n": 2, "s": "x"}}"#);
        // Nobody listens: nothing to do.
        publish_event(
            &hub,
            Uuid::from_u128(1),
            view.clone(),
            Some(raw.clone()),
            Some(body.clone()),
            Vec::new(),
            None,
        );
        // A stream whose filter does not read the payload gets the text, and no tree is built.
        let (everything, mut rx_all) = hub.subscribe(FIREHOSE, Subscription::all());
        assert!(!hub.needs_payload());
        publish_event(
            &hub,
            Uuid::from_u128(3),
            view.clone(),
            Some(raw.clone()),
            Some(body.clone()),
            Vec::new(),
            None,
        );
        let msg = rx_all.recv().await.unwrap();
        assert_eq!(msg.view["payload"], Value::Null);
        assert!(
            msg.text
                .as_str()
                .contains(r#""payload":{"n": 2, "s": "x"}"#)
        );
        drop(everything);
        // A stream opened after ingest left the payload unparsed: its filter sees the payload.
        let filter =
            Subscription::parse(r#"[{"field":"payload.n","operator":"equals","value":2}]"#)
                .unwrap();
        let (_reg, mut rx) = hub.subscribe(FIREHOSE, filter);
        publish_event(
            &hub,
            Uuid::from_u128(2),
            view,
            Some(raw),
            Some(body),
            Vec::new(),
            None,
        );
        let msg = rx.recv().await.unwrap();
        assert_eq!(msg.event_id, Uuid::from_u128(2));
        assert_eq!(msg.view["payload"], serde_json::json!({"n": 2, "s": "x"}));
    }

    #[tokio::test]
    async fn payload_readers_follow_subscriptions_filter_changes_and_removals() {
        let hub = Arc::new(Hub::new(1));
        let seq = sequencer::Sequencer::new(hub.clone());
        let on_payload = || {
            Subscription::parse(r#"[{"field":"payload.n","operator":"exists","value":true}]"#)
                .unwrap()
        };
        let on_action = || {
            Subscription::parse(r#"[{"field":"action","operator":"exists","value":true}]"#).unwrap()
        };
        assert!(on_payload().reads_payload() && !on_action().reads_payload());
        assert!(
            !Subscription::parse(r#"[{"field":"payloadish","operator":"exists","value":true}]"#)
                .unwrap()
                .reads_payload()
        );
        assert!(Subscription::all().passes_everything() && !on_action().passes_everything());

        let (a, _rx_a) = hub.subscribe("bot", Subscription::all());
        assert!(!hub.needs_payload());
        seq.refilter("bot", &a.subscriber, on_payload());
        assert!(hub.needs_payload());
        seq.refilter("bot", &a.subscriber, on_payload());
        seq.refilter("bot", &a.subscriber, on_action());
        assert!(!hub.needs_payload(), "counted once, and no longer");
        seq.refilter("bot", &a.subscriber, on_payload());
        let (b, _rx_b) = hub.subscribe("other", on_payload());
        assert_eq!(hub.payload_readers.load(Ordering::Relaxed), 2);
        drop(a);
        assert_eq!(hub.payload_readers.load(Ordering::Relaxed), 1);
        // Cut off as a slow consumer (a buffer of one), then its connection ends: counted once.
        hub.publish("other", &msg(1, serde_json::json!({"payload": {"n": 1}})));
        hub.publish("other", &msg(2, serde_json::json!({"payload": {"n": 2}})));
        assert!(b.subscriber.overflowed.load(Ordering::Acquire));
        assert!(!hub.needs_payload());
        // A late filter change on a removed subscriber counts nothing.
        seq.refilter("other", &b.subscriber, on_action());
        seq.refilter("other", &b.subscriber, on_payload());
        drop(b);
        assert_eq!(hub.payload_readers.load(Ordering::Relaxed), 0);
    }
}
