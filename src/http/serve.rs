//! The HTTP/1.1 accept loop: each connection served by hyper's HTTP/1 connection builder, with
//! upgrades (WebSocket), the peer address as axum's `ConnectInfo`, the connection deadlines of
//! `deadlines`, and graceful shutdown. (The connection caps are the listener's: `admission`.)
//!
//! Hand-written rather than `axum::serve` for memory: `axum::serve` serves every connection
//! through hyper-util's auto (HTTP/1 + HTTP/2) builder, whose per-connection state measured
//! about 12 KiB more per idle connection than hyper's HTTP/1 builder (31 against 19 KiB per
//! idle keep-alive connection over 10,000 connections). Streaming subscribers hold thousands
//! of connections open, and the server speaks only HTTP/1.1 anyway (TLS offers only
//! `http/1.1` in ALPN), so the HTTP/2 half was dead weight.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use axum::serve::Listener;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

use crate::config::ConnectionLimits;
use crate::http::deadlines::{self, ConnState, Guarded, TimedBody, TrackedBody};

/// Serves `router` on every connection `listener` yields until `shutdown`; then stops
/// accepting, asks each open connection to finish its request in flight and close, and returns
/// when all have. (Upgraded WebSocket connections are no longer HTTP connections: their
/// sessions end on `shutdown` themselves.)
pub async fn serve<L>(
    mut listener: L,
    router: Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) where
    L: Listener<Addr = SocketAddr>,
{
    let limits = Arc::new(limits);
    let mut http1 = hyper::server::conn::http1::Builder::new();
    // A request head over it is refused by hyper (`431`, rewritten into the envelope by
    // `Guarded`); it also caps what each connection's read buffer may grow to.
    http1.max_buf_size(limits.max_header_size);
    let connections = TaskTracker::new();
    loop {
        let (io, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let conn = Arc::new(ConnState::default());
        let io = Guarded::new(io, conn.clone(), limits.clone());
        let service = hyper::service::service_fn({
            let router = router.clone();
            let body_timeout = limits.body_read_timeout;
            move |req: Request<Incoming>| {
                conn.request_started();
                let mut req = req.map(|body| TimedBody::new(body, body_timeout, conn.clone()));
                req.extensions_mut().insert(ConnectInfo(peer));
                let conn = conn.clone();
                let router = router.clone();
                async move {
                    let resp = router.oneshot(req).await?;
                    let resp = if conn.body_timed_out() {
                        deadlines::body_timeout_answer(body_timeout)
                    } else {
                        resp
                    };
                    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                        conn.upgraded();
                    }
                    Ok::<_, Infallible>(resp.map(|body| TrackedBody::new(body, conn)))
                }
            }
        });
        let shutdown = shutdown.clone();
        let http1 = http1.clone();
        connections.spawn(async move {
            let conn = http1
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades();
            let mut conn = pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::trace!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}
