//! The receiver agent: records when each acknowledged event arrives, over HTTP push deliveries,
//! one SSE stream, or pull consumers (`pull.rs`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The agent: records each delivery's `webhook-id` and arrival time, answers 200. With a hold
/// (`--backlog`), it answers nothing until released; an arrival is then the time of the answer.
/// With `--deliver sse` it has no HTTP server (`addr` is `None`): `subscribe_sse` records into
/// the same arrivals.
pub(super) struct Receiver {
    pub(super) addr: Option<SocketAddr>,
    pub(super) state: Arc<Arrivals>,
    pub(super) unique: Arc<AtomicU64>,
    pub(super) duplicates: Arc<AtomicU64>,
    pub(super) stop: CancellationToken,
}

/// Arrival times (µs since the epoch) by event id, sharded so deliveries rarely contend.
pub(super) struct Arrivals {
    pub(super) epoch: Instant,
    shards: Vec<Mutex<HashMap<[u8; 16], u64>>>,
    unique: Arc<AtomicU64>,
    duplicates: Arc<AtomicU64>,
    /// Cancelled = released; `None`: answers at once.
    hold: Option<CancellationToken>,
    /// Deliveries waiting on the hold.
    held: AtomicU64,
}

const SHARDS: usize = 64;

impl Receiver {
    pub(super) async fn start(
        listen: Option<SocketAddr>,
        epoch: Instant,
        expected: u64,
        hold: bool,
    ) -> anyhow::Result<Receiver> {
        let unique = Arc::new(AtomicU64::new(0));
        let duplicates = Arc::new(AtomicU64::new(0));
        let per_shard = (expected as usize / SHARDS) + 16;
        let state = Arc::new(Arrivals {
            epoch,
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::with_capacity(per_shard)))
                .collect(),
            unique: unique.clone(),
            duplicates: duplicates.clone(),
            hold: hold.then(CancellationToken::new),
            held: AtomicU64::new(0),
        });
        let stop = CancellationToken::new();
        let addr = match listen {
            Some(listen) => {
                let listener = TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("the receiver cannot listen on {listen}"))?;
                let addr = listener.local_addr()?;
                let app = Router::new().fallback(receive).with_state(state.clone());
                let token = stop.clone();
                tokio::spawn(async move {
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(async move { token.cancelled().await })
                        .await;
                });
                Some(addr)
            }
            None => None,
        };
        Ok(Receiver {
            addr,
            state,
            unique,
            duplicates,
            stop,
        })
    }

    pub(super) fn stop(&self) {
        self.release();
        self.stop.cancel();
    }

    /// Answers the held deliveries and every later one at once.
    pub(super) fn release(&self) {
        if let Some(hold) = &self.state.hold {
            hold.cancel();
        }
    }

    /// Deliveries currently held unanswered.
    pub(super) fn held(&self) -> u64 {
        self.state.held.load(Ordering::Acquire)
    }

    /// How many of `acked` have not arrived.
    pub(super) fn missing(&self, acked: &HashMap<[u8; 16], u64>) -> u64 {
        acked
            .keys()
            .filter(|id| {
                let shard = &self.state.shards[shard_of(id)];
                !shard.lock().map(|m| m.contains_key(*id)).unwrap_or(false)
            })
            .count() as u64
    }

    /// Entries the receiver's maps have room for.
    pub(super) fn capacity(&self) -> usize {
        self.state
            .shards
            .iter()
            .map(|m| m.lock().map_or(0, |m| m.capacity()))
            .sum()
    }

    pub(super) fn snapshot(&self) -> HashMap<[u8; 16], u64> {
        let mut all = HashMap::with_capacity(self.unique.load(Ordering::Acquire) as usize);
        for shard in &self.state.shards {
            if let Ok(m) = shard.lock() {
                all.extend(m.iter().map(|(k, v)| (*k, *v)));
            }
        }
        all
    }
}

fn shard_of(id: &[u8; 16]) -> usize {
    // The last byte of a v7 id is random.
    id[15] as usize % SHARDS
}

async fn receive(
    State(arrivals): State<Arc<Arrivals>>,
    headers: HeaderMap,
    _body: Bytes,
) -> StatusCode {
    if let Some(hold) = arrivals.hold.as_ref().filter(|h| !h.is_cancelled()) {
        arrivals.held.fetch_add(1, Ordering::AcqRel);
        hold.cancelled().await;
        arrivals.held.fetch_sub(1, Ordering::AcqRel);
    }
    let at = arrivals.epoch.elapsed().as_micros() as u64;
    let Some(id) = headers
        .get("webhook-id")
        .and_then(|v| Uuid::try_parse_ascii(v.as_bytes()).ok())
    else {
        return StatusCode::BAD_REQUEST;
    };
    if arrivals.record(id.into_bytes(), at) {
        StatusCode::OK
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    }
}

impl Arrivals {
    /// Notes that event `id` arrived at `at` (µs since the epoch), or counts a duplicate.
    /// `false` if the shard's lock was poisoned.
    pub(super) fn record(&self, id: [u8; 16], at: u64) -> bool {
        let fresh = match self.shards[shard_of(&id)].lock() {
            Ok(mut m) => match m.entry(id) {
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(at);
                    true
                }
                std::collections::hash_map::Entry::Occupied(_) => false,
            },
            Err(_) => return false,
        };
        if fresh {
            self.unique.fetch_add(1, Ordering::Release);
        } else {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
        }
        true
    }
}

/// `--deliver sse`: reads the agent's SSE stream until `stop`, recording each event when its
/// frame is complete. A stream that ends (the router cut off a slow consumer, or the connection
/// failed) is reopened with `Last-Event-ID` = the last event recorded, so the router replays
/// what was missed from its store. `opened` gets the outcome of the first request.
pub(super) async fn subscribe_sse(
    arrivals: Arc<Arrivals>,
    url: String,
    key: String,
    stop: CancellationToken,
    reconnects: Arc<AtomicU64>,
    opened: tokio::sync::oneshot::Sender<anyhow::Result<()>>,
) {
    use futures_util::StreamExt as _;
    let client = match reqwest::Client::builder().tcp_nodelay(true).build() {
        Ok(c) => c,
        Err(e) => {
            let _ = opened.send(Err(e.into()));
            return;
        }
    };
    let mut opened = Some(opened);
    let mut frames = SseFrames::default();
    loop {
        let mut request = client.get(&url).bearer_auth(&key);
        if let Some(last) = frames.last_id {
            request = request.header("last-event-id", last.to_string());
        }
        let answer = tokio::select! {
            _ = stop.cancelled() => return,
            a = request.send() => a,
        };
        let response = match answer {
            Ok(r) if r.status() == StatusCode::OK => Ok(r),
            Ok(r) => {
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                Err(anyhow::anyhow!("{status}: {text}"))
            }
            Err(e) => Err(e.into()),
        };
        let response = match response {
            Ok(r) => r,
            // The first request's failure ends the run; a reopening is tried again.
            Err(e) => match opened.take() {
                Some(tx) => {
                    let _ = tx.send(Err(e));
                    return;
                }
                None => {
                    tracing::warn!(error = %e, "bench: reopening the SSE stream failed");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    }
                }
            },
        };
        if let Some(tx) = opened.take() {
            let _ = tx.send(Ok(()));
        }
        frames.pending.clear();
        frames.id = None;
        let mut body = response.bytes_stream();
        loop {
            let chunk = tokio::select! {
                _ = stop.cancelled() => return,
                c = body.next() => c,
            };
            let Some(Ok(chunk)) = chunk else { break };
            let at = arrivals.epoch.elapsed().as_micros() as u64;
            frames.feed(&chunk, |id| {
                arrivals.record(id.into_bytes(), at);
            });
        }
        reconnects.fetch_add(1, Ordering::Relaxed);
        // The router ended the stream (a slow consumer is cut off): reopen it, but not in a
        // tight loop should it keep ending it at once.
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
}

/// Splits an SSE byte stream into frames and hands over the `id` of each complete one.
#[derive(Default)]
struct SseFrames {
    /// The start of a line not yet complete: at most `LINE_KEEP` bytes, enough to tell an `id:`
    /// line or a blank one (a `data:` line is several KB, and its text is not needed).
    pending: Vec<u8>,
    /// The `id:` of the frame being read.
    id: Option<Uuid>,
    /// The id of the last complete frame: where a reopened stream resumes.
    last_id: Option<Uuid>,
}

impl SseFrames {
    fn feed(&mut self, chunk: &[u8], mut on_event: impl FnMut(Uuid)) {
        let mut rest = chunk;
        while let Some(end) = memchr::memchr(b'\n', rest) {
            if self.pending.is_empty() {
                self.line(&rest[..end], &mut on_event);
            } else {
                self.keep(&rest[..end]);
                let line = std::mem::take(&mut self.pending);
                self.line(&line, &mut on_event);
                self.pending = line;
                self.pending.clear();
            }
            rest = &rest[end + 1..];
        }
        self.keep(rest);
    }

    fn keep(&mut self, part: &[u8]) {
        let room = LINE_KEEP.saturating_sub(self.pending.len());
        self.pending
            .extend_from_slice(&part[..part.len().min(room)]);
    }

    fn line(&mut self, line: &[u8], on_event: &mut impl FnMut(Uuid)) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            // The blank line ends a frame; one with an id is an event.
            if let Some(id) = self.id.take() {
                self.last_id = Some(id);
                on_event(id);
            }
        } else if let Some(value) = line.strip_prefix(b"id:") {
            let value = value.strip_prefix(b" ").unwrap_or(value);
            self.id = Uuid::try_parse_ascii(value).ok();
        }
    }
}

/// Bytes of an unfinished line `SseFrames` keeps (an `id:` line is 40).
const LINE_KEEP: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_frames_give_each_event_id_once_its_frame_is_complete() {
        let a = Uuid::now_v7();
        let b = Uuid::now_v7();
        let long = "y".repeat(300);
        let stream = format!(
            "id: {a}\ndata: {{\"type\":\"event\",\"v\":\"{long}\"}}\n\ndata: {{\"type\":\"heartbeat\"}}\n\nid:{b}\r\ndata: {long}\r\n\r\n"
        );
        // Every split point: the ids come out in order, each once, at the frame's blank line.
        for cut in 0..stream.len() {
            let mut frames = SseFrames::default();
            let mut seen = Vec::new();
            frames.feed(&stream.as_bytes()[..cut], |id| seen.push(id));
            frames.feed(&stream.as_bytes()[cut..], |id| seen.push(id));
            assert_eq!(seen, vec![a, b], "cut at {cut}");
            assert_eq!(frames.last_id, Some(b));
            assert!(frames.pending.is_empty());
        }
        // A frame cut off before its blank line is not an event yet.
        let mut frames = SseFrames::default();
        let mut seen = Vec::new();
        frames.feed(format!("id: {a}\ndata: {{}}\n").as_bytes(), |id| {
            seen.push(id)
        });
        assert!(seen.is_empty());
        assert_eq!(frames.last_id, None);
    }
}
