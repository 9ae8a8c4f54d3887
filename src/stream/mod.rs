//! The stream hub: live subscribers per agent (and the admin firehose `*`), each with a bounded
//! buffer. Each event is serialized once per distinct body and shared by every subscriber; a
//! subscriber whose buffer is full is cut off (it resumes with its last event id), so a slow
//! consumer never slows ingest or the others.

pub mod handlers;
pub mod sequencer;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
        let body = String::from_utf8_lossy(body);
        let mut text = String::with_capacity(body.len() + 24);
        text.push_str(r#"{"type":"event","data":"#);
        text.push_str(&body);
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
    // SSE ends a line at CRLF, CR or LF.
    let mut rest = data;
    loop {
        frame.extend_from_slice(b"data: ");
        match rest.find(['\r', '\n']) {
            Some(i) => {
                frame.extend_from_slice(&rest.as_bytes()[..i]);
                frame.push(b'\n');
                let skip = if rest[i..].starts_with("\r\n") { 2 } else { 1 };
                rest = &rest[i + skip..];
            }
            None => {
                frame.extend_from_slice(rest.as_bytes());
                frame.extend_from_slice(b"\n\n");
                return Bytes::from(frame);
            }
        }
    }
}

/// A subscriber's state shared with its connection.
pub struct Subscriber {
    id: u64,
    pub filter: ArcSwap<Subscription>,
    /// Set when the buffer overflowed and the hub let go of this subscriber.
    pub overflowed: AtomicBool,
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
            list.retain(|e| e.sub.id != id);
            if list.is_empty() {
                map.remove(agent);
            }
        }
    }

    /// Whether anyone listens to `agent` (publishing is skipped entirely when not).
    /// Whether any stream is open on this node.
    pub fn has_subscribers(&self) -> bool {
        self.by_agent.read().map(|m| !m.is_empty()).unwrap_or(false)
    }

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
) {
    let listened = items.iter().any(|i| hub.listening(&i.agent_id))
        || (firehose_body.is_some() && hub.listening(FIREHOSE));
    if !listened {
        return;
    }
    if let Some(raw) = deferred_payload {
        // A stream opened between ingest's check and now: subscriber filters need the payload.
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
                    Arc::new(Message::new(event_id, &item.body, event_view.clone()))
                })
                .clone(),
            Some(view) => Arc::new(Message::new(event_id, &item.body, view)),
        };
        hub.publish(&item.agent_id, &msg);
    }
    if let Some(body) = firehose_body
        && hub.listening(FIREHOSE)
    {
        let msg = Arc::new(Message::new(event_id, &body, event_view));
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
        );
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
        );
        let msg = rx.recv().await.unwrap();
        assert_eq!(msg.event_id, Uuid::from_u128(2));
        assert_eq!(msg.view["payload"], serde_json::json!({"n": 2, "s": "x"}));
    }
}
