//! Deadlines on a client connection, so that a slow client cannot hold one open:
//!
//! - a request head must be complete within `header_read_timeout`, counted from the
//!   connection's opening, or from the first byte of a later request; past it the connection
//!   is closed;
//! - a keep-alive connection waits `keep_alive_timeout` for its next request, then is closed;
//! - a request body must be complete within `body_read_timeout` of when its handler started
//!   waiting for it; past it the request is answered `408 request_timeout`.
//!
//! A response in progress (an SSE stream) and an upgraded connection (a WebSocket) have none of
//! these: how long a stream lives is the stream's business.
//!
//! Written here rather than taken from hyper's `header_read_timeout`, because hyper starts that
//! clock when a connection goes idle: it would also close every keep-alive connection after the
//! header deadline, while a keep-alive connection should outwait the load balancer in front.
//!
//! Also here: hyper answers a request head it cannot parse (over `max_header_size`, more than
//! 100 header fields, malformed) itself, with an empty body. Those answers are rewritten into
//! the contract's envelope on their way out.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse as _, Response};
use bytes::Bytes;
use futures_util::task::AtomicWaker;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::analytics::Analytics;
use crate::config::ConnectionLimits;
use crate::http::error::ApiError;

/// Between requests: the head deadline or the keep-alive deadline runs.
const WAITING: u8 = 0;
/// A request is being served (its body read, its response written): no connection deadline.
const BUSY: u8 = 1;
/// Switched protocols (WebSocket): not HTTP any more.
const UPGRADED: u8 = 2;

/// Where a connection is between its requests, shared by its socket (`Guarded`), its requests
/// (`TimedBody`) and its responses (`TrackedBody`). HTTP/1 serves one request at a time, so one
/// of each is live at once.
#[derive(Debug, Default)]
pub struct ConnState {
    phase: AtomicU8,
    /// Requests started, so that the socket can tell a new wait from the one it is timing.
    requests: AtomicU32,
    body_timed_out: AtomicBool,
    /// The socket's read waiting while busy: woken when the response ends, so that the
    /// keep-alive deadline starts then even if hyper is not reading again by itself.
    reader: AtomicWaker,
}

impl ConnState {
    /// hyper has parsed a request head and calls the service.
    pub fn request_started(&self) {
        self.body_timed_out.store(false, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.phase.store(BUSY, Ordering::Relaxed);
    }

    /// Whether the current request's body ran past its deadline.
    pub fn body_timed_out(&self) -> bool {
        self.body_timed_out.load(Ordering::Relaxed)
    }

    /// The response is a `101`: the connection is handed to the WebSocket session.
    pub fn upgraded(&self) {
        self.phase.store(UPGRADED, Ordering::Relaxed);
    }

    fn response_ended(&self) {
        if self
            .phase
            .compare_exchange(BUSY, WAITING, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.reader.wake();
        }
    }
}

/// A client connection's socket under the head and keep-alive deadlines, with hyper's own
/// refusals rewritten into the envelope.
pub struct Guarded<IO> {
    io: IO,
    conn: Arc<ConnState>,
    limits: Arc<ConnectionLimits>,
    /// `conn.requests` when the wait being timed began.
    wait_of: u32,
    /// Bytes of a request head have arrived in this wait: the head deadline runs, not the
    /// keep-alive one.
    head_started: bool,
    deadline: Instant,
    /// Made on the first wait, then moved to each new deadline.
    timer: Option<Pin<Box<Sleep>>>,
    /// `conn.requests` when a response was last written: the answer to the current request,
    /// if it equals `conn.requests`, has started.
    written_for: u32,
    /// hyper's refusal of an unparsable head, replaced by this answer.
    rewrite: Option<Rewrite>,
}

struct Rewrite {
    answer: Vec<u8>,
    written: usize,
}

impl<IO> Guarded<IO> {
    /// A connection just accepted: the head deadline runs from now.
    pub fn new(io: IO, conn: Arc<ConnState>, limits: Arc<ConnectionLimits>) -> Guarded<IO> {
        let deadline = Instant::now() + limits.header_read_timeout;
        Guarded {
            io,
            conn,
            limits,
            wait_of: 0,
            head_started: true,
            deadline,
            timer: None,
            written_for: 0,
            rewrite: None,
        }
    }

    /// The read found nothing: wait on the deadline too. Past it, a partial head ends the
    /// connection with an error and an idle one with an end of file (hyper closes it quietly).
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let deadline = self.deadline;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        if self.head_started {
            Analytics::connection_deadline("header");
            Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the request head did not arrive in time",
            )))
        } else {
            Analytics::connection_deadline("idle");
            Poll::Ready(Ok(()))
        }
    }

    /// Whether hyper is writing its own refusal of a request head it could not parse: between
    /// requests, after the previous answer started, once bytes of the next head came, a write
    /// that starts as a `400`, `414` or `431` answer can only be that.
    fn refusal_of(&self, first: &[u8]) -> Option<StatusCode> {
        let requests = self.conn.requests.load(Ordering::Relaxed);
        if self.conn.phase.load(Ordering::Relaxed) != WAITING
            || self.written_for != requests
            || self.wait_of != requests
            || !self.head_started
        {
            return None;
        }
        let status = first.strip_prefix(b"HTTP/1.1 ")?.get(..3)?;
        StatusCode::from_bytes(status).ok().filter(|s| {
            [
                StatusCode::BAD_REQUEST,
                StatusCode::URI_TOO_LONG,
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ]
            .contains(s)
        })
    }

    fn start_rewrite(&mut self, status: StatusCode) {
        let (code, message) = match status {
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => (
                "headers_too_large",
                format!(
                    "The request head is over {} bytes, or has more than 100 header fields",
                    self.limits.max_header_size
                ),
            ),
            StatusCode::URI_TOO_LONG => ("uri_too_long", "The request target is too long".into()),
            _ => ("bad_request", "The request is not valid HTTP/1.1".into()),
        };
        self.rewrite = Some(Rewrite {
            answer: ApiError::new(status, code, message).to_http1(),
            written: 0,
        });
    }
}

impl<IO: AsyncWrite + Unpin> Guarded<IO> {
    /// Writes the rewritten answer; hyper's `claimed` bytes count as written once it is out.
    fn poll_rewrite(&mut self, cx: &mut Context<'_>, claimed: usize) -> Poll<io::Result<usize>> {
        let Some(rw) = self.rewrite.as_mut() else {
            return Poll::Ready(Ok(claimed));
        };
        while rw.written < rw.answer.len() {
            match Pin::new(&mut self.io).poll_write(cx, &rw.answer[rw.written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => rw.written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(claimed))
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Guarded<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.conn.phase.load(Ordering::Relaxed) {
            WAITING => {}
            BUSY => {
                this.conn.reader.register(cx.waker());
                return Pin::new(&mut this.io).poll_read(cx, buf);
            }
            _ => return Pin::new(&mut this.io).poll_read(cx, buf),
        }
        let requests = this.conn.requests.load(Ordering::Relaxed);
        if requests != this.wait_of {
            // A response has ended: wait for the next request, as long as keep-alive allows.
            this.wait_of = requests;
            this.head_started = false;
            this.deadline = Instant::now() + this.limits.keep_alive_timeout;
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Pending => this.poll_deadline(cx),
            Poll::Ready(Ok(())) => {
                if !this.head_started && buf.filled().len() > before {
                    this.head_started = true;
                    this.deadline = Instant::now() + this.limits.header_read_timeout;
                }
                Poll::Ready(Ok(()))
            }
            err => err,
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Guarded<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.rewrite.is_none()
            && let Some(status) = this.refusal_of(buf)
        {
            this.start_rewrite(status);
        }
        if this.rewrite.is_some() {
            return this.poll_rewrite(cx, buf.len());
        }
        this.written_for = this.conn.requests.load(Ordering::Relaxed);
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.rewrite.is_none()
            && let Some(first) = bufs.iter().find(|b| !b.is_empty())
            && let Some(status) = this.refusal_of(first)
        {
            this.start_rewrite(status);
        }
        if this.rewrite.is_some() {
            return this.poll_rewrite(cx, bufs.iter().map(|b| b.len()).sum());
        }
        this.written_for = this.conn.requests.load(Ordering::Relaxed);
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
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

/// The body did not arrive within `body_read_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {} ms", .0.as_millis())]
pub struct BodyTimedOut(Duration);

/// A request body under the body deadline, counted from the first time its reader has to wait
/// for it (a body that has all arrived costs no timer).
pub struct TimedBody {
    inner: Incoming,
    timeout: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    conn: Arc<ConnState>,
}

impl TimedBody {
    pub fn new(inner: Incoming, timeout: Duration, conn: Arc<ConnState>) -> TimedBody {
        TimedBody {
            inner,
            timeout,
            timer: None,
            conn,
        }
    }
}

impl Body for TimedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let timeout = this.timeout;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        if !this.conn.body_timed_out.swap(true, Ordering::Relaxed) {
            Analytics::connection_deadline("body");
        }
        Poll::Ready(Some(Err(BodyTimedOut(timeout).into())))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The answer to a request whose body ran past its deadline, whatever its handler made of the
/// failed read. The rest of the body is not read, so the connection closes.
pub fn body_timeout_answer(timeout: Duration) -> Response {
    let mut resp = ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "request_timeout",
        format!(
            "The request body did not arrive within {} ms",
            timeout.as_millis()
        ),
    )
    .into_response();
    resp.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    resp
}

/// A response body that tells the connection when the response is over (hyper drops it once
/// the last byte is handed over), so that the keep-alive deadline starts then.
pub struct TrackedBody {
    inner: axum::body::Body,
    conn: Arc<ConnState>,
}

impl TrackedBody {
    pub fn new(inner: axum::body::Body, conn: Arc<ConnState>) -> TrackedBody {
        TrackedBody { inner, conn }
    }
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        self.conn.response_ended();
    }
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
