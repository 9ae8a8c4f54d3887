//! The HTTP/1.1 accept loop: each connection served by hyper's HTTP/1 connection builder, with
//! upgrades (WebSocket), the peer address as axum's `ConnectInfo`, and graceful shutdown.
//!
//! Hand-written rather than `axum::serve` for memory: `axum::serve` serves every connection
//! through hyper-util's auto (HTTP/1 + HTTP/2) builder, whose per-connection state measured
//! about 12 KiB more per idle connection than hyper's HTTP/1 builder (31 against 19 KiB per
//! idle keep-alive connection over 10,000 connections). Streaming subscribers hold thousands
//! of connections open, and the server speaks only HTTP/1.1 anyway (TLS offers only
//! `http/1.1` in ALPN), so the HTTP/2 half was dead weight.

use std::net::SocketAddr;
use std::pin::pin;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::serve::Listener;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

/// Serves `router` on every connection `listener` yields until `shutdown`; then stops
/// accepting, asks each open connection to finish its request in flight and close, and returns
/// when all have. (Upgraded WebSocket connections are no longer HTTP connections: their
/// sessions end on `shutdown` themselves.)
pub async fn serve<L>(mut listener: L, router: Router, shutdown: CancellationToken)
where
    L: Listener<Addr = SocketAddr>,
{
    let connections = TaskTracker::new();
    loop {
        let (io, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let service = TowerToHyperService::new(router.clone().map_request(
            move |req: axum::http::Request<Incoming>| {
                let mut req = req.map(Body::new);
                req.extensions_mut().insert(ConnectInfo(peer));
                req
            },
        ));
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
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
