//! Bounds on downstream connections that hold before Pingora parses a request: how many
//! connections a process keeps open, how large an HTTP/1 request head may grow and how long
//! it may take to arrive (nginx's `large_client_header_buffers` and `client_header_timeout`).
//! Pingora 0.9.1 reads request heads of up to 1 MiB with a per-read timeout only, so a client
//! that trickles a byte a minute, or sends 1 MiB and stops, holds its buffer for as long as it
//! likes; `GuardedApp` wraps the proxy's `ServerApp` and each connection's stream to stop both.
//!
//! Slow readers are bounded per response by the write timeout and minimum send rate that the
//! proxy sets on each downstream session (`ConnectionLimits::apply_send_limits`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use log::warn;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream, UniqueID,
    UniqueIDType, ALPN,
};
use pingora::protocols::{SocketDigest, TimingDigest};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::metrics::METRICS;
use crate::placement::Seats;
use crate::proxy::express::Express;

/// `limits:` keys that bound connections (all per process).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Open downstream connections; a new one over this is answered 503 and closed. 0 = off.
    pub max_connections: usize,
    /// Largest HTTP/1 request head (request line, headers and the blank line), bytes;
    /// larger gets 431.
    pub request_head_max: usize,
    /// A request head must arrive whole within this, counted from the connection's start
    /// for its first request and from the first byte for later ones; else 408 and closed.
    pub request_head_timeout: Duration,
    /// A write to a client that makes no progress for this long ends the response.
    pub send_timeout: Option<Duration>,
    /// Bytes per second; when set, each write must finish within its size / this rate
    /// (at least 1 s) instead of `send_timeout`. HTTP/1 only (Pingora's limitation).
    pub min_send_rate: Option<usize>,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 10_000,
            request_head_max: 32 << 10,
            request_head_timeout: Duration::from_secs(60),
            send_timeout: Some(Duration::from_secs(60)),
            min_send_rate: None,
        }
    }
}

impl ConnectionLimits {
    /// How long writing `bytes` to a client may take: as Pingora bounds each write, by the
    /// minimum send rate when one is set, else by `send_timeout`.
    pub fn send_deadline(&self, bytes: usize) -> Option<Duration> {
        match self.min_send_rate {
            Some(rate) if rate > 0 => Some(
                Duration::from_secs_f64(bytes as f64 / rate as f64).max(Duration::from_secs(1)),
            ),
            _ => self.send_timeout,
        }
    }

    /// Sets the slow-reader bounds on a downstream session (each request: Pingora makes a new
    /// session per request on a keep-alive connection).
    pub fn apply_send_limits(&self, session: &mut pingora::protocols::http::ServerSession) {
        session.set_write_timeout(self.send_timeout);
        session.set_min_send_rate(self.min_send_rate);
    }
}

/// Answers written by the guard itself, before Pingora has a request to answer.
const HEAD_TOO_LARGE: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: application/json\r\nContent-Length: 97\r\nConnection: close\r\n\r\n{\"errors\":[{\"code\":\"UNSUPPORTED\",\"message\":\"request header fields too large\",\"detail\":null}]}\n";
const HEAD_TIMEOUT: &[u8] = b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\nContent-Length: 88\r\nConnection: close\r\n\r\n{\"errors\":[{\"code\":\"UNSUPPORTED\",\"message\":\"request header timed out\",\"detail\":null}]}\n";
const TOO_MANY_CONNECTIONS: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: 98\r\nRetry-After: 1\r\nConnection: close\r\n\r\n{\"errors\":[{\"code\":\"UNAVAILABLE\",\"message\":\"too many connections, retry later\",\"detail\":null}]}\n";

/// An HTTP server app (the proxy) behind the connection bounds, its HTTP/1 connections
/// served through the express lane when it has one (`proxy::express`).
pub struct GuardedApp<A> {
    inner: Arc<A>,
    express: Option<Express>,
    limits: ConnectionLimits,
    /// Open connections of this process (bounded by `limits.max_connections`).
    open: Arc<AtomicUsize>,
    /// When the connection cap was last logged (seconds since `started`): one line a second.
    cap_logged: AtomicU64,
    started: Instant,
    /// Which thread serves each plain TCP connection (`placement`).
    seats: Arc<Seats>,
}

impl<A> GuardedApp<A> {
    pub fn new(inner: A, limits: ConnectionLimits) -> GuardedApp<A> {
        GuardedApp {
            inner: Arc::new(inner),
            express: None,
            limits,
            open: Arc::new(AtomicUsize::new(0)),
            cap_logged: AtomicU64::new(u64::MAX),
            started: Instant::now(),
            seats: Arc::new(Seats::new(1, false)),
        }
    }

    /// Seats each plain TCP connection on the thread for its incoming CPU (`placement`).
    pub fn with_seats(mut self, seats: Arc<Seats>) -> GuardedApp<A> {
        self.seats = seats;
        self
    }

    /// The count of this app's open connections, for whoever must know when none is left.
    pub fn open_connections(&self) -> Arc<AtomicUsize> {
        self.open.clone()
    }

    /// Serves HTTP/1 connections through `express`.
    pub fn with_express(mut self, express: Express) -> GuardedApp<A> {
        self.express = Some(express);
        self
    }

    /// Counts a new connection in, or refuses it over the cap.
    fn admit(&self) -> Option<OpenConnection> {
        let open = self.open.fetch_add(1, Ordering::AcqRel) + 1;
        if self.limits.max_connections != 0 && open > self.limits.max_connections {
            self.open.fetch_sub(1, Ordering::AcqRel);
            METRICS.connections_refused.inc();
            let now = self.started.elapsed().as_secs();
            if self.cap_logged.swap(now, Ordering::AcqRel) != now {
                warn!(
                    "connection limit reached: {} open (limits.max_connections); new connections get 503 until some close",
                    self.limits.max_connections
                );
            }
            return None;
        }
        METRICS.connections_open.inc();
        Some(OpenConnection(self.open.clone()))
    }
}

/// One open connection; leaves the count when dropped (also when its task is cancelled).
struct OpenConnection(Arc<AtomicUsize>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
        METRICS.connections_open.dec();
    }
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> ServerApp for GuardedApp<A> {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let Some(ticket) = self.admit() else {
            // Best effort: the client learns why; a peer that does not read is not waited for.
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                stream.write_all(TOO_MANY_CONNECTIONS).await?;
                stream.flush().await
            })
            .await;
            Shutdown::shutdown(&mut *stream).await;
            return None;
        };
        let mut seating = self.seats.place(&stream).await;
        let reusable = match seating.elsewhere.take() {
            None => self.serve(stream, shutdown).await,
            Some(thread) => {
                let app = self.clone();
                let shutdown = shutdown.clone();
                let served = async move {
                    let reusable = app.serve(stream, &shutdown).await;
                    drop(seating);
                    reusable
                };
                // The seat's thread serves the whole connection; this task only waits.
                thread.spawn(served).await.unwrap_or(None)
            }
        };
        drop(ticket);
        reusable
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}

impl<A: HttpServerApp + Send + Sync + 'static> GuardedApp<A> {
    /// Serves an admitted connection on the current thread.
    async fn serve(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let stream = crate::placement::serve_here(stream);
        // HTTP/2 frames its own headers (the h2 crate bounds them); the guard reads HTTP/1.
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            return self.inner.process_new(stream, shutdown).await;
        }
        let stream: Stream = Box::new(HeadGuard::new(stream, &self.limits));
        match &self.express {
            Some(express) => {
                express.serve(&self.inner, stream, shutdown).await;
                None
            }
            None => self.inner.process_new(stream, shutdown).await,
        }
    }
}

/// Where a connection is between requests, as the guard sees its bytes.
#[derive(Debug)]
enum Phase {
    /// Reading a request head: `read` bytes so far, `since` when the deadline started (None
    /// until the first byte of a head after the first).
    Head {
        read: usize,
        since: Option<Instant>,
        scan: HeadEnd,
    },
    /// The head has arrived: body bytes and the response pass unbounded, until the next
    /// response write begins a new head.
    Request,
    /// The guard answered (431, 408) and the connection is done.
    Refused(io::ErrorKind),
}

/// A downstream stream whose request heads are bounded in size and time. It tells heads
/// apart by their blank line and by the response writes between requests; a request body
/// read after its response has started (Pingora draining an unread body) counts as head
/// bytes, so answers to requests with bodies close the connection instead (see the proxy).
#[derive(Debug)]
pub struct HeadGuard {
    inner: Stream,
    phase: Phase,
    head_max: usize,
    head_timeout: Duration,
    /// The head deadline's timer, made on the first head that has to wait for bytes.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl HeadGuard {
    pub fn new(inner: Stream, limits: &ConnectionLimits) -> HeadGuard {
        HeadGuard {
            inner,
            phase: Phase::Head {
                read: 0,
                since: Some(Instant::now()),
                scan: HeadEnd::default(),
            },
            head_max: limits.request_head_max,
            head_timeout: limits.request_head_timeout,
            timer: None,
        }
    }

    /// Ends the connection with `answer` (one best-effort write: the head's peer is waiting
    /// for an answer, so its socket buffer has room).
    fn refuse(
        &mut self,
        cx: &mut Context<'_>,
        answer: &'static [u8],
        kind: io::ErrorKind,
    ) -> Poll<io::Result<()>> {
        let inner = Pin::new(&mut self.inner);
        let _ = inner.poll_write(cx, answer);
        let _ = Pin::new(&mut self.inner).poll_flush(cx);
        self.phase = Phase::Refused(kind);
        Poll::Ready(Err(refusal(kind)))
    }

    /// A response is going out: what the client sends next is a new head, timed from its
    /// first byte (the idle wait before it is Pingora's keep-alive timeout).
    fn response_starts(&mut self) {
        if matches!(self.phase, Phase::Request) {
            self.phase = Phase::Head {
                read: 0,
                since: None,
                scan: HeadEnd::default(),
            };
        }
    }
}

/// Whether `deadline` has passed; registers `timer` (made on first use, then reset) to wake
/// the task at it.
fn deadline_passed(
    timer: &mut Option<Pin<Box<tokio::time::Sleep>>>,
    cx: &mut Context<'_>,
    deadline: Instant,
) -> bool {
    let deadline = tokio::time::Instant::from_std(deadline);
    let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
    if timer.deadline() != deadline {
        timer.as_mut().reset(deadline);
    }
    timer.as_mut().poll(cx).is_ready()
}

/// `poll_read` into at most `limit` bytes of `buf`.
fn read_at_most(
    inner: Pin<&mut Stream>,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
    limit: usize,
) -> Poll<io::Result<()>> {
    let mut part = ReadBuf::new(buf.initialize_unfilled_to(limit));
    let polled = inner.poll_read(cx, &mut part);
    let n = part.filled().len();
    buf.advance(n);
    polled
}

fn refusal(kind: io::ErrorKind) -> io::Error {
    let why = match kind {
        io::ErrorKind::TimedOut => "request head not received in time",
        _ => "request head too large",
    };
    io::Error::new(kind, why)
}

impl AsyncRead for HeadGuard {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let polled = match &this.phase {
            Phase::Head { read, .. } if buf.remaining() > this.head_max - read => {
                // Near the bound: read no more than it allows, so Pingora's head buffer never
                // grows past it (its buffer doubles when full).
                read_at_most(Pin::new(&mut this.inner), cx, buf, this.head_max - read)
            }
            _ => Pin::new(&mut this.inner).poll_read(cx, buf),
        };
        let (read, since, scan) = match &mut this.phase {
            Phase::Request => return polled,
            Phase::Refused(kind) => return Poll::Ready(Err(refusal(*kind))),
            Phase::Head { read, since, scan } => (read, since, scan),
        };
        match polled {
            Poll::Ready(Ok(())) => {
                let new = &buf.filled()[before..];
                if new.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                let started = *since.get_or_insert_with(Instant::now);
                if scan.feed(new).is_some() {
                    this.phase = Phase::Request;
                    return Poll::Ready(Ok(()));
                }
                *read += new.len();
                if *read >= this.head_max {
                    METRICS
                        .request_heads_refused
                        .with_label_values(&["too_large"])
                        .inc();
                    return this.refuse(cx, HEAD_TOO_LARGE, io::ErrorKind::InvalidData);
                }
                if started.elapsed() >= this.head_timeout {
                    METRICS
                        .request_heads_refused
                        .with_label_values(&["timeout"])
                        .inc();
                    return this.refuse(cx, HEAD_TIMEOUT, io::ErrorKind::TimedOut);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match *since {
                Some(started)
                    if deadline_passed(&mut this.timer, cx, started + this.head_timeout) =>
                {
                    METRICS
                        .request_heads_refused
                        .with_label_values(&["timeout"])
                        .inc();
                    this.refuse(cx, HEAD_TIMEOUT, io::ErrorKind::TimedOut)
                }
                _ => Poll::Pending,
            },
            other => other,
        }
    }
}

impl AsyncWrite for HeadGuard {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.response_starts();
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.response_starts();
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for HeadGuard {
    async fn shutdown(&mut self) {
        Shutdown::shutdown(&mut *self.inner).await
    }
}

impl UniqueID for HeadGuard {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for HeadGuard {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for HeadGuard {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for HeadGuard {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for HeadGuard {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for HeadGuard {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

/// Finds the blank line that ends a request head (`\r\n\r\n`, or bare `\n` line ends, which
/// Pingora's parser also takes), across reads. Blank lines before the request line are
/// skipped, as RFC 9112 section 2.2 allows.
#[derive(Debug, Default)]
pub struct HeadEnd {
    /// Bytes of the current, unfinished line.
    line_len: usize,
    /// The current line so far is a lone `\r`.
    line_is_cr: bool,
    /// A non-blank line (the request line) has been seen.
    had_line: bool,
}

impl HeadEnd {
    /// Feeds the next bytes; returns the offset just past the head's end when it is in them.
    pub fn feed(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut start = 0;
        for lf in memchr::memchr_iter(b'\n', bytes) {
            let seg = &bytes[start..lf];
            let len = self.line_len + seg.len();
            let blank = len == 0
                || (len == 1
                    && if seg.len() == 1 {
                        seg[0] == b'\r'
                    } else {
                        self.line_is_cr
                    });
            if !blank {
                self.had_line = true;
            } else if self.had_line {
                return Some(lf + 1);
            }
            self.line_len = 0;
            self.line_is_cr = false;
            start = lf + 1;
        }
        let rest = &bytes[start..];
        if !rest.is_empty() {
            self.line_is_cr = self.line_len == 0 && rest == b"\r";
            self.line_len += rest.len();
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::HeadEnd;

    /// Feeds `parts` in order; the offset of the head's end in the part where it ends.
    fn end_of(parts: &[&str]) -> Option<(usize, usize)> {
        let mut scan = HeadEnd::default();
        for (i, p) in parts.iter().enumerate() {
            if let Some(at) = scan.feed(p.as_bytes()) {
                return Some((i, at));
            }
        }
        None
    }

    #[test]
    fn finds_the_blank_line_across_reads() {
        let head = "GET /v2/ HTTP/1.1\r\nHost: m\r\n\r\n";
        assert_eq!(end_of(&[head]), Some((0, head.len())));
        assert_eq!(
            end_of(&["GET / HTTP/1.1\r\nHost: m\r\n\r\nrest"]),
            Some((0, 27))
        );
        // Split at every point, including inside the CRLF CRLF.
        for cut in 1..head.len() {
            let (a, b) = head.split_at(cut);
            let got = end_of(&[a, b]);
            assert!(
                got == Some((1, b.len())) || (b.is_empty() && got == Some((0, a.len()))),
                "cut at {cut}: {got:?}"
            );
        }
        // One byte at a time.
        let bytes: Vec<String> = head.chars().map(String::from).collect();
        let parts: Vec<&str> = bytes.iter().map(String::as_str).collect();
        assert_eq!(end_of(&parts), Some((head.len() - 1, 1)));
        assert_eq!(end_of(&["GET / HTTP/1.1\nHost: m\n\n"]), Some((0, 24)));
        assert_eq!(
            end_of(&["GET / HTTP/1.1\r\nHost: m\r\n", "\r", "\n"]),
            Some((2, 1))
        );
    }

    #[test]
    fn unfinished_heads_and_leading_blank_lines() {
        assert_eq!(end_of(&["GET / HTTP/1.1\r\nHost: m\r\n"]), None);
        assert_eq!(end_of(&["GET / HTTP/1.1\r\nX: \r\r\n"]), None);
        assert_eq!(end_of(&["\r\n\r\n"]), None);
        assert_eq!(end_of(&["\r\n", "GET / HTTP/1.1\r\n\r\n"]), Some((1, 18)));
        assert_eq!(
            end_of(&["GET / HTTP/1.1\r\nX: a", "\r\n\r\n"]),
            Some((1, 4))
        );
    }
}
