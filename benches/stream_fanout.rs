//! Streaming at scale (API.md section 7 "Streaming"), end to end over real sockets.
//!
//! 1. Fan-out: the server in process, 1,000 WebSocket subscribers on one stream-only agent.
//!    Events carry their send time; every receipt is timed against it (ingest to receipt).
//!    Paced runs (50, then the target 100 events/s = 100,000 messages/s offered), then a burst
//!    posted as fast as the server answers. Targets: ≥ 100,000 messages/s, p99 < 100 ms. Run
//!    twice: the server in process (sharing the 2 cores' worker threads with the clients), and
//!    the release binary as a child process, whose own CPU time per message is reported.
//! 2. Idle connections: the release binary as a child process, 10,000 idle streams (WebSocket,
//!    then SSE, each on a fresh server, after a baseline of plain keep-alive HTTP connections);
//!    the growth of the server's resident memory (VmRSS of /proc/<pid>/status) from before the
//!    first connection to when every stream has proved live by receiving an event.
//!    Target: < 300 MB for 10,000.
//!
//! `cargo bench --bench stream_fanout`. Sizes: FANOUT_SUBSCRIBERS (1000), FANOUT_RATES ("50,100,120"
//! events/s), FANOUT_SECONDS (4 per rate), FANOUT_BURST (300 events), IDLE_CONNECTIONS (10000);
//! STREAM_BENCH_ONLY=fanout or =idle runs one part.
//! 10,000 connections need that many file descriptors on each side: the soft RLIMIT_NOFILE is
//! raised to the hard limit, and the sizes are cut (with a warning) when that is not enough.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use event_router::config::{Config, Secret};
use futures_util::StreamExt as _;
use serde_json::json;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

const AGENT_KEY: &str = "bench-agent-key";
const ADMIN_KEY: &str = "bench-admin-key";
const AGENT: &str = "bench";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let nofile = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
    println!("file descriptor limit: {nofile}");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    rt.block_on(async {
        let rates: Vec<usize> = std::env::var("FANOUT_RATES")
            .unwrap_or_else(|_| "50,100,120".into())
            .split(',')
            .filter_map(|r| r.trim().parse().ok())
            .collect();
        let subscribers = env_usize("FANOUT_SUBSCRIBERS", 1000);
        let seconds = env_usize("FANOUT_SECONDS", 4) as f64;
        let burst = env_usize("FANOUT_BURST", 300);
        let only = std::env::var("STREAM_BENCH_ONLY").unwrap_or_default();
        if only != "idle" {
            for mode in [Mode::InProcess, Mode::Child] {
                fanout(mode, subscribers, &rates, seconds, burst).await;
            }
        }
        if only == "fanout" {
            return;
        }
        let wanted = env_usize("IDLE_CONNECTIONS", 10_000);
        // Each stream costs a descriptor here and one in the server; keep a margin for both.
        let idle = wanted.min((nofile as usize).saturating_sub(200));
        if idle < wanted {
            println!(
                "WARNING: RLIMIT_NOFILE {nofile} allows only {idle} idle connections \
                 (raise it with `ulimit -n {}`)",
                wanted + 200
            );
        }
        for kind in [Kind::KeepAlive, Kind::Ws, Kind::Sse] {
            idle_connections(kind, idle).await;
        }
    });
}

/// An admin API call that must succeed.
async fn admin(client: &reqwest::Client, base: &str, path: &str, body: serde_json::Value) {
    let r = client
        .post(format!("{base}{path}"))
        .bearer_auth(ADMIN_KEY)
        .json(&body)
        .send()
        .await
        .expect("the admin API answers");
    assert!(r.status().is_success(), "POST {path}: {}", r.status());
}

/// A stream-only agent and a route of every processed event to it.
async fn setup_agent(client: &reqwest::Client, base: &str) {
    admin(
        client,
        base,
        "/admin/agents",
        json!({"id": AGENT, "name": "bench", "enabled": true}),
    )
    .await;
    admin(
        client,
        base,
        "/admin/routes",
        json!({"id": "to-bench", "name": "to bench", "sourceFilters": [],
               "targetAgents": [AGENT], "priority": 0, "enabled": true}),
    )
    .await;
}

/// Posts one `internal` event (agent key auth) carrying `seq` and its send time.
async fn post_event(client: &reqwest::Client, base: &str, seq: usize, sent_ns: u64) {
    let body = json!({"type": "bench", "seq": seq, "sentAtNs": sent_ns, "note": "x".repeat(200)});
    let r = client
        .post(format!("{base}/webhook/internal"))
        .bearer_auth(AGENT_KEY)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("ingest answers");
    assert_eq!(r.status().as_u16(), 200, "ingest refused an event");
}

async fn ws_connect(addr: SocketAddr) -> WebSocketStream<TcpStream> {
    let url = format!("ws://{addr}/stream/ws?agentId={AGENT}&apiKey={AGENT_KEY}");
    let request = url.into_client_request().unwrap();
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let config = WebSocketConfig::default().read_buffer_size(16 * 1024);
    let (ws, _) = tokio_tungstenite::client_async_with_config(request, tcp, Some(config))
        .await
        .expect("the WebSocket handshake succeeds");
    ws
}

/// The unsigned integer after `"key":` in `text`.
fn number_after(text: &str, key: &str) -> Option<u128> {
    let at = text.find(key)? + key.len();
    let digits: String = text[at..]
        .chars()
        .skip_while(|c| *c == ' ')
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// One receipt: the event's sequence number, when it was sent and when it arrived (ns since the
/// bench's epoch).
#[derive(Clone, Copy)]
struct Receipt {
    seq: u32,
    sent: u64,
    received: u64,
}

/// The sequence number of warm-up events (not measured).
const WARM_UP: usize = 999_999_999;

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// CPU time (user + system) a process has used, in seconds (at the usual 100 ticks/s).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc stat");
    // Fields after the `(comm)`, which may hold spaces: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

/// Where the fan-out server runs.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    /// In the bench's own runtime, sharing its threads with the 1,000 clients.
    InProcess,
    /// The release binary, a process of its own (its CPU time is measured on its own).
    Child,
}

struct Phase {
    name: String,
    seqs: std::ops::Range<usize>,
    cpu: f64,
}

/// Delivered messages per second, latency percentiles and CPU per message of one phase.
fn report(
    mode: Mode,
    phase: &Phase,
    receipts: &[Receipt],
    answered: &[(usize, u64)],
    subscribers: usize,
) {
    let mut ingest: Vec<u64> = answered
        .iter()
        .filter(|(s, _)| phase.seqs.contains(s))
        .map(|(_, t)| *t)
        .collect();
    ingest.sort_unstable();
    let mine: Vec<&Receipt> = receipts
        .iter()
        .filter(|r| phase.seqs.contains(&(r.seq as usize)))
        .collect();
    let expected = phase.seqs.len() * subscribers;
    let first_sent = mine.iter().map(|r| r.sent).min().unwrap_or(0);
    let last_received = mine.iter().map(|r| r.received).max().unwrap_or(0);
    let span = last_received.saturating_sub(first_sent).max(1);
    let mut lat: Vec<u64> = mine.iter().map(|r| r.received - r.sent).collect();
    lat.sort_unstable();
    let whose = match mode {
        Mode::InProcess => "server + clients",
        Mode::Child => "server",
    };
    println!(
        "  {}: {} of {expected} messages in {:.2} s = {:.0} messages/s; ingest-to-receipt p50 \
         {:.1} ms, p99 {:.1} ms, max {:.1} ms (POST answered p50 {:.1} ms, p99 {:.1} ms); \
         {whose} CPU {:.2} s = {:.2} µs/message",
        phase.name,
        mine.len(),
        span as f64 / 1e9,
        mine.len() as f64 / (span as f64 / 1e9),
        ms(percentile(&lat, 0.50)),
        ms(percentile(&lat, 0.99)),
        ms(lat.last().copied().unwrap_or(0)),
        ms(percentile(&ingest, 0.50)),
        ms(percentile(&ingest, 0.99)),
        phase.cpu,
        phase.cpu * 1e6 / mine.len().max(1) as f64,
    );
}

async fn fanout(mode: Mode, subscribers: usize, rates: &[usize], seconds: f64, burst: usize) {
    println!(
        "== fan-out ({mode:?}): {subscribers} WebSocket subscribers; paced at {rates:?} events/s \
         for {seconds} s each, then a burst of {burst} events from 8 posters"
    );
    let dir = tempfile::tempdir().unwrap();
    let (addr, pid, server, _child) = match mode {
        Mode::InProcess => {
            let mut cfg = Config {
                data_dir: dir.path().to_path_buf(),
                ..Config::default()
            };
            cfg.agent_api_key = Some(Secret(AGENT_KEY.into()));
            cfg.admin_api_key = Some(Secret(ADMIN_KEY.into()));
            cfg.default_rate_limit = 1_000_000_000;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let server = event_router::start(cfg, listener)
                .await
                .expect("server starts");
            (server.addr, std::process::id(), Some(server), None)
        }
        Mode::Child => {
            let (child, addr) = child_server(dir.path()).await;
            (addr, child.id().unwrap(), None, Some(child))
        }
    };
    let base = format!("http://{addr}");
    let client = reqwest::Client::new();
    setup_agent(&client, &base).await;

    let epoch = Instant::now();
    let received = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let warmed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let gate = Arc::new(Semaphore::new(100));
    let mut readers = Vec::new();
    for _ in 0..subscribers {
        let permit = gate.clone().acquire_owned().await.unwrap();
        let mut ws = ws_connect(addr).await;
        drop(permit);
        let (received, warmed, mut stop) = (received.clone(), warmed.clone(), stop_rx.clone());
        readers.push(tokio::spawn(async move {
            let mut got = Vec::new();
            let mut warm = false;
            loop {
                let msg = tokio::select! {
                    m = ws.next() => match m {
                        Some(Ok(m)) => m,
                        _ => break,
                    },
                    _ = stop.changed() => break,
                };
                let WsMessage::Text(text) = msg else {
                    continue;
                };
                let at = epoch.elapsed().as_nanos() as u64;
                let (Some(seq), Some(sent)) = (
                    number_after(&text, "\"seq\":"),
                    number_after(&text, "\"sentAtNs\":"),
                ) else {
                    continue;
                };
                if seq as usize == WARM_UP {
                    if !warm {
                        warm = true;
                        warmed.fetch_add(1, Ordering::Relaxed);
                    }
                    continue;
                }
                got.push(Receipt {
                    seq: seq as u32,
                    sent: sent as u64,
                    received: at,
                });
                received.fetch_add(1, Ordering::Relaxed);
            }
            got
        }));
    }
    // Every subscriber is registered once it has received a warm-up event.
    while warmed.load(Ordering::Relaxed) < subscribers {
        post_event(&client, &base, WARM_UP, 0).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("  {subscribers} subscribers live");

    let wait_delivered = |n: usize| {
        let received = received.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while received.load(Ordering::Relaxed) < n && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    // How long each measured POST took to be answered (ingest, commit included).
    let answered = Arc::new(std::sync::Mutex::new(Vec::<(usize, u64)>::new()));
    let mut phases = Vec::new();
    let mut seq = 0;
    for &rate in rates {
        let count = (rate as f64 * seconds) as usize;
        let cpu0 = cpu_seconds(pid);
        // One event every 1/rate s, each on its own task: a slow answer does not delay the next.
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
        let mut posts = Vec::new();
        for s in seq..seq + count {
            tick.tick().await;
            let (client, base, answered) = (client.clone(), base.clone(), answered.clone());
            posts.push(tokio::spawn(async move {
                let sent = epoch.elapsed().as_nanos() as u64;
                post_event(&client, &base, s, sent).await;
                let took = epoch.elapsed().as_nanos() as u64 - sent;
                answered.lock().unwrap().push((s, took));
            }));
        }
        for p in posts {
            p.await.unwrap();
        }
        wait_delivered((seq + count) * subscribers).await;
        phases.push(Phase {
            name: format!("paced {rate} events/s"),
            seqs: seq..seq + count,
            cpu: cpu_seconds(pid) - cpu0,
        });
        seq += count;
    }
    let cpu0 = cpu_seconds(pid);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(seq));
    let end = seq + burst;
    let mut posts = Vec::new();
    for _ in 0..8 {
        let (client, base, next) = (client.clone(), base.clone(), next.clone());
        let answered = answered.clone();
        posts.push(tokio::spawn(async move {
            loop {
                let s = next.fetch_add(1, Ordering::Relaxed);
                if s >= end {
                    break;
                }
                let sent = epoch.elapsed().as_nanos() as u64;
                post_event(&client, &base, s, sent).await;
                let took = epoch.elapsed().as_nanos() as u64 - sent;
                answered.lock().unwrap().push((s, took));
            }
        }));
    }
    for p in posts {
        p.await.unwrap();
    }
    wait_delivered(end * subscribers).await;
    phases.push(Phase {
        name: "burst".into(),
        seqs: seq..end,
        cpu: cpu_seconds(pid) - cpu0,
    });
    stop_tx.send_replace(true);
    let mut receipts = Vec::new();
    for r in readers {
        receipts.extend(r.await.unwrap());
    }
    let answered = answered.lock().unwrap().clone();
    for p in &phases {
        report(mode, p, &receipts, &answered, subscribers);
    }
    if let Some(server) = server {
        println!(
            "  overflows (subscribers cut off): {}",
            server.state.hub.stats.overflows.load(Ordering::Relaxed)
        );
        server.shutdown(Duration::from_secs(10)).await;
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Ws,
    Sse,
    /// A plain keep-alive HTTP connection after one `GET /health`: the baseline cost of a
    /// connection, without a stream.
    KeepAlive,
}

/// Resident memory of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

/// The release binary on a free port, ready.
async fn child_server(dir: &std::path::Path) -> (tokio::process::Child, SocketAddr) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_event-router"))
        .arg("serve")
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--data-dir")
        .arg(dir)
        .env_clear()
        .env("AGENT_API_KEY", AGENT_KEY)
        .env("ADMIN_API_KEY", ADMIN_KEY)
        .env("DEFAULT_RATE_LIMIT", "1000000000")
        // Every idle connection comes from this one address, and some wait long for the rest.
        .env("MAX_CONNECTIONS", "1000000")
        .env("MAX_CONNECTIONS_PER_IP", "0")
        .env("KEEP_ALIVE_TIMEOUT_MS", "3600000")
        .env("LOG_LEVEL", "warn")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the release binary");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = client.get(format!("http://{addr}/health")).send().await
            && r.status().is_success()
        {
            return (child, addr);
        }
        assert!(Instant::now() < deadline, "the server did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An idle stream, held open.
enum Idle {
    Ws(Box<WebSocketStream<TcpStream>>),
    Sse(reqwest::Response),
    KeepAlive(#[allow(dead_code)] TcpStream),
}

impl Idle {
    /// Reads until an event message arrives (proving the stream is subscribed).
    async fn until_event(&mut self) -> bool {
        let read = async {
            match self {
                Idle::Ws(ws) => loop {
                    match ws.next().await {
                        Some(Ok(WsMessage::Text(t))) if t.contains(r#""type":"event""#) => {
                            return true;
                        }
                        Some(Ok(_)) => continue,
                        _ => return false,
                    }
                },
                Idle::KeepAlive(_) => true,
                Idle::Sse(resp) => {
                    let mut seen = String::new();
                    loop {
                        match resp.chunk().await {
                            Ok(Some(c)) => {
                                seen.push_str(&String::from_utf8_lossy(&c));
                                if seen.contains(r#""type":"event""#) {
                                    return true;
                                }
                            }
                            _ => return false,
                        }
                    }
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(60), read)
            .await
            .unwrap_or(false)
    }
}

async fn idle_connections(kind: Kind, n: usize) {
    println!("== idle connections: {n} {kind:?} streams on the release binary");
    let dir = tempfile::tempdir().unwrap();
    let (child, addr) = child_server(dir.path()).await;
    let pid = child.id().expect("the server runs");
    let base = format!("http://{addr}");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    setup_agent(&client, &base).await;
    let before = rss(pid);

    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(200));
    let mut opening = Vec::with_capacity(n);
    for _ in 0..n {
        let permit = gate.clone().acquire_owned().await.unwrap();
        let client = client.clone();
        opening.push(tokio::spawn(async move {
            let s = match kind {
                Kind::Ws => Idle::Ws(Box::new(ws_connect(addr).await)),
                Kind::Sse => {
                    let r = client
                        .get(format!(
                            "http://{addr}/stream/sse?agentId={AGENT}&apiKey={AGENT_KEY}"
                        ))
                        .send()
                        .await
                        .expect("the SSE request is answered");
                    assert_eq!(r.status().as_u16(), 200);
                    Idle::Sse(r)
                }
                Kind::KeepAlive => {
                    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
                    let mut tcp = TcpStream::connect(addr).await.expect("connect");
                    tcp.write_all(b"GET /health HTTP/1.1\r\nhost: bench\r\n\r\n")
                        .await
                        .unwrap();
                    let mut buf = [0u8; 1024];
                    let n = tcp.read(&mut buf).await.unwrap();
                    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "GET /health failed");
                    Idle::KeepAlive(tcp)
                }
            };
            drop(permit);
            s
        }));
    }
    let mut streams = Vec::with_capacity(n);
    for o in opening {
        streams.push(o.await.expect("a stream opens"));
    }
    let opened_in = started.elapsed();

    // One event: every stream must receive it, so every one is a live subscriber.
    // (Keep-alive connections have nothing to receive.)
    post_event(&client, &base, 0, 0).await;
    let mut checks = Vec::with_capacity(n);
    for mut s in streams {
        checks.push(tokio::spawn(async move { (s.until_event().await, s) }));
    }
    let mut live = 0;
    let mut streams = Vec::with_capacity(n);
    for c in checks {
        let (ok, s) = c.await.unwrap();
        live += usize::from(ok);
        streams.push(s);
    }
    let after = rss(pid);
    let growth = after.saturating_sub(before);
    println!(
        "{n} {kind:?} streams opened in {:.1} s, {live} received the event; server RSS {:.1} MB \
         -> {:.1} MB: +{:.1} MB ({:.1} KB per stream)",
        opened_in.as_secs_f64(),
        before as f64 / 1e6,
        after as f64 / 1e6,
        growth as f64 / 1e6,
        growth as f64 / 1e3 / n.max(1) as f64,
    );
    drop(streams);
    drop(child);
}
