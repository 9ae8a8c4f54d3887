//! Slow and numerous clients cannot hold the door open (issue #32): the request-head deadline,
//! the body deadline (`408` in the envelope), the keep-alive idle timeout, the connection caps
//! (total and per client address, plain HTTP and HTTPS), hyper's own refusals in the envelope,
//! and streams that outlive every one of those deadlines. Real TCP clients on loopback, with
//! short deadlines so that each test takes about a second.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

use crate::signed::*;
use crate::stream_client::*;
use crate::support::*;

/// The deadline the tests configure.
const SHORT: Duration = Duration::from_millis(500);
/// Far beyond any deadline configured here: what "at once" and "soon" must beat.
const LONG: Duration = Duration::from_secs(10);

/// An HTTP/1.1 answer read off a raw connection.
#[derive(Debug)]
struct RawAnswer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl RawAnswer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// An error in the contract's envelope with this status and code.
    fn assert_refusal(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{self:?}"
        );
        let v = self.json();
        assert_error_form(&v);
        assert_eq!(v["code"], code, "{v}");
    }
}

/// Reads one answer (its head, then `content-length` bytes of body), within `LONG`.
async fn read_answer<S: AsyncRead + Unpin>(s: &mut S) -> RawAnswer {
    tokio::time::timeout(LONG, async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = s.read(&mut chunk).await.expect("the answer is readable");
            assert!(
                n > 0,
                "closed before a whole head: {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let status = head
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP answer: {head:?}"));
        let mut answer = RawAnswer {
            status,
            head,
            body: buf[head_end..].to_vec(),
        };
        let len: usize = answer
            .header("content-length")
            .map(|v| v.parse().unwrap())
            .unwrap_or(0);
        while answer.body.len() < len {
            let n = s.read(&mut chunk).await.expect("the body is readable");
            assert!(n > 0, "closed inside the body: {answer:?}");
            answer.body.extend_from_slice(&chunk[..n]);
        }
        answer
    })
    .await
    .expect("an answer within 10 s")
}

/// Waits until the server closes `s` (end of file or reset), reading and dropping whatever
/// comes first; how long it took. Panics if it stays open for `LONG`.
async fn closed_after<S: AsyncRead + Unpin>(s: &mut S) -> Duration {
    let started = Instant::now();
    tokio::time::timeout(LONG, async {
        let mut chunk = [0u8; 1024];
        while let Ok(n) = s.read(&mut chunk).await
            && n > 0
        {}
    })
    .await
    .expect("the server closed the connection within 10 s");
    started.elapsed()
}

/// Whether `s` is still open: nothing to read, no end of file, for a moment.
async fn still_open<S: AsyncRead + Unpin>(s: &mut S) -> bool {
    let mut chunk = [0u8; 64];
    tokio::time::timeout(Duration::from_millis(50), s.read(&mut chunk))
        .await
        .is_err()
}

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(app.addr).await.unwrap()
}

/// A connection from another loopback address (Linux routes all of 127/8 to loopback).
async fn connect_from(app: &TestApp, from: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(from.parse::<IpAddr>().unwrap(), 0))
        .unwrap();
    socket.connect(app.addr).await.unwrap()
}

/// `GET /health` on `s`, answered `200` (the connection is served and stays open).
async fn health_on<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) {
    s.write_all(b"GET /health HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    let a = read_answer(s).await;
    assert_eq!(a.status, 200, "{a:?}");
}

/// Whether `GET /health` on `s` is answered `200`; `false` for a refused connection, whatever
/// form the refusal takes (an answer, a close, a reset).
async fn served(s: &mut TcpStream) -> bool {
    if s.write_all(b"GET /health HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let mut status_line = [0u8; 12];
    matches!(
        tokio::time::timeout(LONG, s.read_exact(&mut status_line)).await,
        Ok(Ok(_)) if status_line == *b"HTTP/1.1 200"
    )
}

/// A head cut short, as a slow client sends it: the request line and half the headers.
const HALF_A_HEAD: &[u8] = b"POST /webhook/github HTTP/1.1\r\nhost: t\r\nx-github-event: pu";

#[tokio::test]
async fn a_head_sent_slowly_is_cut_off_at_the_header_deadline() {
    let app = TestApp::spawn_with(|c| c.connections.header_read_timeout = SHORT).await;
    // Twenty clients send half a head, then a byte every 100 ms: never idle for long, never
    // done. A client that sends nothing at all is cut off the same way.
    let mut clients = Vec::new();
    for i in 0..20 {
        // The server's clock starts at accept, which is after this.
        let started = Instant::now();
        let mut s = connect(&app).await;
        clients.push(tokio::spawn(async move {
            if i == 0 {
                closed_after(&mut s).await;
                return started.elapsed();
            }
            s.write_all(HALF_A_HEAD).await.unwrap();
            let (mut r, mut w) = s.into_split();
            let trickle = tokio::spawn(async move {
                while w.write_all(b"s").await.is_ok() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
            closed_after(&mut r).await;
            trickle.abort();
            started.elapsed()
        }));
    }
    for c in clients {
        let open_for = c.await.unwrap();
        assert!(
            open_for >= SHORT - Duration::from_millis(50),
            "{open_for:?}"
        );
    }
    // The server itself is fine, and a prompt client is served.
    let mut s = connect(&app).await;
    health_on(&mut s).await;
    app.stop().await;
}

#[tokio::test]
async fn a_body_that_stalls_is_answered_408_in_the_envelope() {
    let app = TestApp::spawn_with(|c| c.connections.body_read_timeout = SHORT).await;
    // A webhook that announces 100 KB and sends one byte.
    let mut s = connect(&app).await;
    s.write_all(
        b"POST /webhook/github HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n\
          x-github-event: push\r\nx-github-delivery: d-1\r\nx-hub-signature-256: sha256=00\r\n\
          content-length: 100000\r\n\r\n{",
    )
    .await
    .unwrap();
    let started = Instant::now();
    let a = read_answer(&mut s).await;
    assert!(started.elapsed() >= SHORT - Duration::from_millis(50));
    a.assert_refusal(408, "request_timeout");
    assert_eq!(a.header("connection"), Some("close"), "{a:?}");
    closed_after(&mut s).await;

    // An admin body that trickles a byte every 100 ms: the deadline is on the whole body, not
    // on each pause.
    let mut s = connect(&app).await;
    s.write_all(
        format!(
            "PUT /admin/agents/slow HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {ADMIN_KEY}\r\n\
             content-type: application/json\r\ncontent-length: 1000\r\n\r\n{{\"id\":"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let (mut r, mut w) = s.into_split();
    let trickle = tokio::spawn(async move {
        while w.write_all(b" ").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    read_answer(&mut r)
        .await
        .assert_refusal(408, "request_timeout");
    trickle.abort();
    let (status, _) = app.admin_get("/admin/agents/slow").await;
    assert_eq!(status, 404, "nothing was stored");

    // A body that arrives in time is not affected.
    Webhook::github("push", br#"{"sender":{"login":"octocat"}}"#.to_vec())
        .send(&app)
        .await
        .accepted();
    app.stop().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_its_own_timeout() {
    let keep_alive = Duration::from_secs(3);
    let app = TestApp::spawn_with(|c| {
        c.connections.header_read_timeout = Duration::from_millis(300);
        c.connections.keep_alive_timeout = keep_alive;
    })
    .await;
    let mut s = connect(&app).await;
    health_on(&mut s).await;
    // Idle for longer than the head deadline: the connection waits for its next request
    // as long as keep-alive allows, not only as long as a head may take.
    tokio::time::sleep(Duration::from_secs(1)).await;
    health_on(&mut s).await;
    // Then it is closed, after the keep-alive timeout (not the head deadline).
    let idle_for = closed_after(&mut s).await;
    assert!(idle_for >= keep_alive / 2, "{idle_for:?}");
    app.stop().await;
}

#[tokio::test]
async fn connections_past_the_caps_are_refused_at_once() {
    let app = TestApp::spawn_with(|c| {
        c.connections.max_connections = 5;
        c.connections.max_connections_per_ip = 2;
    })
    .await;
    // Two from one address are served and held open.
    let mut a1 = connect_from(&app, "127.0.0.1").await;
    let mut a2 = connect_from(&app, "127.0.0.1").await;
    health_on(&mut a1).await;
    health_on(&mut a2).await;
    // A third from that address is refused at once, in the envelope, and closed.
    let started = Instant::now();
    let mut a3 = connect_from(&app, "127.0.0.1").await;
    let refused = read_answer(&mut a3).await;
    refused.assert_refusal(503, "too_many_connections");
    assert_eq!(refused.header("retry-after"), Some("1"), "{refused:?}");
    closed_after(&mut a3).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    // Another address still gets in, up to the total.
    let mut others = Vec::new();
    for from in ["127.0.0.2", "127.0.0.3", "127.0.0.3"] {
        let mut s = connect_from(&app, from).await;
        health_on(&mut s).await;
        others.push(s);
    }
    // Five open: a sixth, from a fresh address, is refused for the total.
    let mut over = connect_from(&app, "127.0.0.4").await;
    read_answer(&mut over)
        .await
        .assert_refusal(503, "too_many_connections");
    // The connections already open are still served.
    health_on(&mut a1).await;
    health_on(&mut others[0]).await;
    // A closed one frees its place.
    drop(a2);
    wait_for(LONG, || async {
        let mut s = connect_from(&app, "127.0.0.1").await;
        served(&mut s).await.then_some(())
    })
    .await;
    let refused_total = counter(
        &app.metrics().await,
        "connections_refused_total",
        &[("cap", "total")],
    );
    assert!(refused_total >= 1.0, "{refused_total}");
    app.stop().await;
}

#[tokio::test]
async fn hypers_own_refusals_come_in_the_envelope() {
    let app = TestApp::spawn_with(|c| c.connections.max_header_size = 16 * 1024).await;
    // A head over max_header_size.
    let mut s = connect(&app).await;
    let big = "a".repeat(20 * 1024);
    s.write_all(format!("GET /health HTTP/1.1\r\nhost: t\r\nx-big: {big}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let a = read_answer(&mut s).await;
    a.assert_refusal(431, "headers_too_large");
    assert!(
        a.json()["error"].as_str().unwrap().contains("16384"),
        "{a:?}"
    );
    // More header fields than hyper takes.
    let mut s = connect(&app).await;
    let many: String = (0..120).map(|i| format!("x-h{i}: v\r\n")).collect();
    s.write_all(format!("GET /health HTTP/1.1\r\nhost: t\r\n{many}\r\n").as_bytes())
        .await
        .unwrap();
    read_answer(&mut s)
        .await
        .assert_refusal(431, "headers_too_large");
    // Not HTTP at all.
    let mut s = connect(&app).await;
    s.write_all(b"HELLO THERE\r\n\r\n").await.unwrap();
    read_answer(&mut s).await.assert_refusal(400, "bad_request");
    // After an answered request too, on the same connection.
    let mut s = connect(&app).await;
    health_on(&mut s).await;
    s.write_all(format!("GET /health HTTP/1.1\r\nhost: t\r\nx-big: {big}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    read_answer(&mut s)
        .await
        .assert_refusal(431, "headers_too_large");
    // An empty answer of the router's own is left alone: a `HEAD` refused `400` has no body,
    // and the connection stays usable.
    let mut s = connect(&app).await;
    s.write_all(
        format!(
            "HEAD /admin/events?limit=lots HTTP/1.1\r\nhost: t\r\n\
             authorization: Bearer {ADMIN_KEY}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        assert_eq!(s.read(&mut b).await.unwrap(), 1);
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 400 "), "{head}");
    assert!(!head.contains("connection: close"), "{head}");
    health_on(&mut s).await;
    app.stop().await;
}

#[tokio::test]
async fn streams_outlive_every_connection_deadline() {
    let short = Duration::from_millis(300);
    let app = TestApp::spawn_with(|c| {
        c.connections.header_read_timeout = short;
        c.connections.body_read_timeout = short;
        c.connections.keep_alive_timeout = short;
        // No heartbeat in the window: nothing moves on the streams while the deadlines pass.
        c.stream_heartbeat = Duration::from_secs(3600);
    })
    .await;
    let firehose = StreamRequest::new("*", ADMIN_KEY);
    let mut sse = open_ok(&app, Transport::Sse, &firehose).await;
    let mut ws = open_ok(&app, Transport::Ws, &firehose).await;
    // Four times every deadline, in silence.
    tokio::time::sleep(short * 4).await;
    let sent = Webhook::github("push", br#"{"sender":{"login":"octocat"}}"#.to_vec())
        .send(&app)
        .await
        .accepted();
    for c in [&mut sse, &mut ws] {
        let got = c.next_event().await;
        assert_eq!(got["id"], json!(sent.id.to_string()), "{got}");
    }
    app.stop().await;
}

/// HTTPS gets the same caps and deadlines: a connection past the cap is closed before its
/// handshake, and a slow head over TLS is cut off.
#[tokio::test]
async fn https_connections_have_the_same_caps_and_deadlines() {
    let certs = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (cert_path, key_path) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let app = TestApp::spawn_with(|c| {
        c.tls_cert = Some(cert_path.clone());
        c.tls_key = Some(key_path.clone());
        c.connections.max_connections = 1;
        c.connections.header_read_timeout = SHORT;
    })
    .await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(event_router::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = |tcp: TcpStream| connector.connect(name.clone(), tcp);

    let mut first = tls(connect(&app).await).await.unwrap();
    health_on(&mut first).await;
    // The cap is reached: the next connection is closed before any handshake.
    let started = Instant::now();
    assert!(tls(connect(&app).await).await.is_err());
    assert!(started.elapsed() < Duration::from_secs(5));
    health_on(&mut first).await;
    drop(first);

    // Once the place is free: a slow head is cut off at the deadline.
    let mut slow = wait_for(LONG, || async {
        let mut s = tls(connect(&app).await).await.ok()?;
        s.write_all(HALF_A_HEAD).await.ok()?;
        still_open(&mut s).await.then_some(s)
    })
    .await;
    let open_for = closed_after(&mut slow).await;
    assert!(open_for < LONG, "{open_for:?}");
    app.stop().await;
}
