//! The caps on open client connections, in total (`max_connections`) and per client address
//! (`max_connections_per_ip`), so that a crowd of idle or slow clients cannot use up the file
//! descriptors. A connection past either cap is refused at once: on plain HTTP it is answered
//! `503 too_many_connections` in the envelope and closed; on HTTPS it is closed before the TLS
//! handshake (nothing can be said to a client before it). Connections count until they close,
//! WebSocket and SSE streams included.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::{HeaderValue, header};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::analytics::Analytics;
use crate::config::ConnectionLimits;
use crate::http::error::ApiError;

/// Counts open connections and hands out a `Permit` to each one the caps admit.
#[derive(Debug)]
pub struct Admission {
    max_total: usize,
    /// 0: no per-address cap.
    max_per_address: usize,
    open: Mutex<Open>,
    gauge: metrics::Gauge,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    /// Only addresses with an open connection, and only when there is a per-address cap.
    by_address: HashMap<IpAddr, usize>,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Total,
    PerAddress,
}

impl Refused {
    fn label(self) -> &'static str {
        match self {
            Refused::Total => "total",
            Refused::PerAddress => "per_address",
        }
    }

    /// The answer a plain HTTP client gets.
    fn answer(self) -> ApiError {
        let message = match self {
            Refused::Total => "Too many open connections; retry later",
            Refused::PerAddress => "Too many open connections from this address; retry later",
        };
        ApiError::unavailable("too_many_connections", message)
            .with_header(header::RETRY_AFTER, HeaderValue::from_static("1"))
    }
}

impl Admission {
    pub fn new(limits: &ConnectionLimits) -> Arc<Admission> {
        Arc::new(Admission {
            max_total: limits.max_connections,
            max_per_address: limits.max_connections_per_ip,
            open: Mutex::new(Open::default()),
            gauge: Analytics::connections_open(),
        })
    }

    /// A permit for one more connection from `ip`, or which cap refuses it.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, Refused> {
        // An IPv4 client on a dual-stack socket arrives as ::ffff:a.b.c.d: the same address.
        let ip = ip.to_canonical();
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if open.total >= self.max_total {
            return Err(Refused::Total);
        }
        if self.max_per_address > 0 {
            let n = open.by_address.entry(ip).or_insert(0);
            if *n >= self.max_per_address {
                return Err(Refused::PerAddress);
            }
            *n += 1;
        }
        open.total += 1;
        drop(open);
        self.gauge.increment(1.0);
        Ok(Permit {
            admission: self.clone(),
            ip,
        })
    }

    /// Open connections now.
    pub fn open(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .total
    }
}

/// Errors of one connection that the listener itself survives.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// One admitted connection's place under the caps, given back when it drops.
#[derive(Debug)]
pub struct Permit {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let a = &self.admission;
        let mut open = a.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.total = open.total.saturating_sub(1);
        if a.max_per_address > 0
            && let Some(n) = open.by_address.get_mut(&self.ip)
        {
            *n -= 1;
            if *n == 0 {
                open.by_address.remove(&self.ip);
            }
        }
        drop(open);
        a.gauge.decrement(1.0);
    }
}

/// A connection that holds its permit for as long as it lives: through an upgrade too, since
/// hyper hands the connection itself to the WebSocket session.
#[derive(Debug)]
pub struct Admitted<IO> {
    io: IO,
    _permit: Permit,
}

impl<IO> Admitted<IO> {
    pub fn new(io: IO, permit: Permit) -> Admitted<IO> {
        Admitted {
            io,
            _permit: permit,
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Admitted<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Admitted<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The server's listener: the connections the caps admit, with `TCP_NODELAY` (webhook answers
/// and stream messages are small writes: send each at once). Each connection refused on the
/// way is closed at once; on plain HTTP after a `503` written without waiting.
pub struct AdmittingListener {
    tcp: TcpListener,
    admission: Arc<Admission>,
    /// Plain HTTP: a refused client can read an answer (a TLS client cannot, before its
    /// handshake).
    answer: bool,
}

impl AdmittingListener {
    pub fn plain(tcp: TcpListener, admission: Arc<Admission>) -> AdmittingListener {
        AdmittingListener {
            tcp,
            admission,
            answer: true,
        }
    }

    /// For `TlsListener::over`: refused connections are closed before any handshake.
    pub fn before_tls(tcp: TcpListener, admission: Arc<Admission>) -> AdmittingListener {
        AdmittingListener {
            tcp,
            admission,
            answer: false,
        }
    }
}

impl axum::serve::Listener for AdmittingListener {
    type Io = Admitted<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, peer) = match self.tcp.accept().await {
                Ok(accepted) => accepted,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            match self.admission.admit(peer.ip()) {
                Ok(permit) => {
                    let _ = stream.set_nodelay(true);
                    return (Admitted::new(stream, permit), peer);
                }
                Err(refused) => {
                    Analytics::connection_refused(refused.label());
                    tracing::debug!(%peer, cap = refused.label(), "connection refused");
                    if self.answer {
                        // A fresh socket's send buffer takes the whole answer; if it does not,
                        // the client gets the close alone.
                        let _ = stream.try_write(&refused.answer().to_http1());
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(total: usize, per_address: usize) -> Arc<Admission> {
        Admission::new(&ConnectionLimits {
            max_connections: total,
            max_connections_per_ip: per_address,
            ..ConnectionLimits::default()
        })
    }

    #[test]
    fn a_cap_refuses_until_a_permit_is_given_back() {
        let a = caps(3, 2);
        let one: IpAddr = "10.0.0.1".parse().unwrap();
        let two: IpAddr = "10.0.0.2".parse().unwrap();
        let p1 = a.admit(one).unwrap();
        let _p2 = a.admit(one).unwrap();
        assert_eq!(a.admit(one).unwrap_err(), Refused::PerAddress);
        // The same client through a dual-stack socket is the same address.
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(a.admit(mapped).unwrap_err(), Refused::PerAddress);
        let _p3 = a.admit(two).unwrap();
        assert_eq!(a.admit(two).unwrap_err(), Refused::Total);
        assert_eq!(a.open(), 3);
        drop(p1);
        assert_eq!(a.open(), 2);
        let _p4 = a.admit(one).unwrap();
        assert_eq!(
            a.admit("10.0.0.3".parse().unwrap()).unwrap_err(),
            Refused::Total
        );
    }

    #[test]
    fn no_per_address_cap_keeps_no_addresses() {
        let a = caps(10, 0);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let permits: Vec<_> = (0..10).map(|_| a.admit(ip).unwrap()).collect();
        assert!(a.open.lock().unwrap().by_address.is_empty());
        assert_eq!(a.admit(ip).unwrap_err(), Refused::Total);
        drop(permits);
        assert_eq!(a.open(), 0);
    }
}
