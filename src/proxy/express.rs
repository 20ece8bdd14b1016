//! The express lane: the mirror reads each HTTP/1 request head itself and answers hot hits
//! (`proxy::hot`) straight from memory, without Pingora's per-request session, cache state
//! machine and hooks, which cost more than the whole answer. Everything else goes to
//! Pingora unchanged: the head bytes already read are handed over as the start of the next
//! request (`set_pipelined_prefix`), and a request the lane decided about carries its
//! context and decision along (`on_connection_reuse`), so nothing is admitted, counted or
//! looked up twice.
//!
//! The lane answers only what it fully understands: a GET or HEAD over HTTP/1.1 without a
//! body, `Expect`, `Upgrade` or `Connection: close`, while the process is not draining. The
//! answer is what the cache's path writes (`tests/cache.rs` compares them): the entry's
//! head, `Age`, `Accept-Ranges`, `X-Cache-Status: hit`, with `Date` and `Connection` as
//! Pingora adds them. Each answer is counted and logged as Pingora's are (`Mirror::finished`).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::FutureExt;
use http::{header, HeaderName, HeaderValue, Method};
use log::debug;
use pingora::apps::HttpServerApp;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::protocols::http::ServerSession;
use pingora::protocols::tls::SslDigest;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{hot, Arrival, Decision, Mirror, RequestCtx, Shared};
use crate::cache::HotHit;
use crate::guard::ConnectionLimits;
use crate::tls::SniName;

/// How long a kept-alive connection may wait for its next request (Pingora's default).
const KEEPALIVE: Duration = Duration::from_secs(60);

/// How soon a connection idle between requests notices the process stopping and closes.
pub const IDLE_CHECK: Duration = Duration::from_secs(1);

/// Headers a request head in the lane may have. Clients send about ten; a head with more
/// goes to Pingora, whose bound is 256. Every parse starts by clearing this many slots.
const MAX_HEADERS: usize = 32;

/// Bytes a connection's head buffer reserves per read.
const READ_CHUNK: usize = 4096;

/// Request headers that make the lane hand a request over unread: a body, an interim answer
/// or a protocol switch is Pingora's to handle.
const NOT_EXPRESS: [HeaderName; 3] = [header::TRANSFER_ENCODING, header::EXPECT, header::UPGRADE];

/// The express lane of one proxy service.
pub struct Express {
    mirror: Mirror,
    limits: ConnectionLimits,
}

/// What the lane knows of a connection, once.
struct Connection {
    peer: Option<IpAddr>,
    local: Option<SocketAddr>,
    ssl: Option<Arc<SslDigest>>,
}

impl Connection {
    fn of(stream: &Stream) -> Connection {
        let socket = stream.get_socket_digest();
        let inet = |a: Option<&pingora::protocols::l4::socket::SocketAddr>| {
            a.and_then(|a| a.as_inet()).copied()
        };
        Connection {
            peer: inet(socket.as_ref().and_then(|s| s.peer_addr())).map(|a| a.ip()),
            local: inet(socket.as_ref().and_then(|s| s.local_addr())),
            ssl: stream.get_ssl_digest(),
        }
    }

    fn arrival(&self) -> Arrival<'_> {
        Arrival {
            peer: self.peer,
            local: self.local,
            tls: self.ssl.is_some(),
            sni: self
                .ssl
                .as_ref()
                .and_then(|t| t.extension.get::<SniName>())
                .map(|n| n.0.as_str()),
        }
    }
}

/// What reading the next request head gave. Returned once per request and matched at once:
/// boxing the header would cost an allocation per request for nothing.
#[allow(clippy::large_enum_variant)]
enum Next {
    /// A head the lane may answer, `len` bytes long.
    Express { req: RequestHeader, len: usize },
    /// Bytes for Pingora to read as they are (another kind of request, or one the parser
    /// refuses: Pingora answers it as it always does).
    HandOver,
    /// The connection ended, failed, or idled out between requests.
    Closed,
}

impl Express {
    pub fn new(shared: Arc<Shared>, limits: ConnectionLimits) -> Express {
        Express {
            mirror: Mirror::new(shared),
            limits,
        }
    }

    /// Serves an HTTP/1 connection until it ends: hot hits here, the rest through `app`.
    pub async fn serve<A>(&self, app: &Arc<A>, mut stream: Stream, shutdown: &ShutdownWatch)
    where
        A: HttpServerApp + Send + Sync + 'static,
    {
        let conn = Connection::of(&stream);
        let mut buf = BytesMut::new();
        let mut out = BytesMut::new();
        let mut first = true;
        loop {
            let idle = (!first).then_some(KEEPALIVE);
            first = false;
            let next = self.next_head(&mut stream, &mut buf, idle, shutdown).await;
            let mut ctx = RequestCtx::new();
            // What Pingora reads before the stream: all that is here, or only the head of a
            // request without a body (requests pipelined after it stay with the lane).
            let handed = match next {
                Next::Closed => return,
                Next::HandOver => buf.split(),
                Next::Express { mut req, len } => {
                    self.mirror.sanitize(&mut req, conn.local);
                    match self.mirror.decide(&req, &conn.arrival(), &mut ctx).await {
                        Decision::Hot(hit) => {
                            buf.advance(len);
                            if !self
                                .answer(&mut stream, &mut out, &req, hit, &mut ctx)
                                .await
                            {
                                return;
                            }
                            continue;
                        }
                        decision => ctx.decided = Some(decision),
                    }
                    buf.split_to(len)
                }
            };
            // Pingora reads the request again from the bytes already here.
            let mut session = ServerSession::new_http1(stream);
            let keepalive = (!*shutdown.borrow()).then_some(KEEPALIVE.as_secs());
            session.set_keepalive(keepalive);
            if !handed.is_empty() {
                session.set_pipelined_prefix(handed);
            }
            if ctx.decided.is_some() {
                session.set_connection_user_context(Some(Box::new(ctx)));
            }
            match app.process_new_http(session, shutdown).await {
                Some(reused) => stream = reused.consume().0,
                None => return,
            }
        }
    }

    /// Reads until `buf` holds a whole request head (or the connection ends), waiting at
    /// most `idle` for its first byte.
    async fn next_head(
        &self,
        stream: &mut Stream,
        buf: &mut BytesMut,
        idle: Option<Duration>,
        shutdown: &ShutdownWatch,
    ) -> Next {
        loop {
            // Draining or stopping: Pingora reads the request and answers it with
            // `Connection: close`, so a client never meets a connection closed under a
            // request it has sent.
            if *shutdown.borrow() || self.draining() {
                return Next::HandOver;
            }
            if !buf.is_empty() {
                match self.parse(buf) {
                    Some(next) => return next,
                    None if buf.len() > self.limits.request_head_max => return Next::HandOver,
                    None => {}
                }
            }
            buf.reserve(READ_CHUNK);
            let read = if buf.is_empty() {
                Self::between_requests(stream, buf, idle, shutdown).await
            } else {
                stream.read_buf(buf).await
            };
            match read {
                Ok(0) | Err(_) => return Next::Closed,
                Ok(_) => {}
            }
        }
    }

    /// Waits for a request's first bytes, at most `idle` when given; `Ok(0)` when the
    /// connection should close instead: idle too long, or idle when the process stops
    /// (`IDLE_CHECK`), as Pingora drops its own idle connections then. Watching the shutdown
    /// signal itself on every wait would cost a lock all connections share, for a signal
    /// that comes once.
    async fn between_requests(
        stream: &mut Stream,
        buf: &mut BytesMut,
        idle: Option<Duration>,
        shutdown: &ShutdownWatch,
    ) -> std::io::Result<usize> {
        let started = tokio::time::Instant::now();
        loop {
            let mut wait = IDLE_CHECK;
            if let Some(limit) = idle {
                match limit.checked_sub(started.elapsed()) {
                    Some(left) if !left.is_zero() => wait = wait.min(left),
                    _ => return Ok(0),
                }
            }
            // Cancelling a read that has not completed loses no bytes.
            if let Ok(read) = tokio::time::timeout(wait, stream.read_buf(buf)).await {
                return read;
            }
            if *shutdown.borrow() {
                return Ok(0);
            }
        }
    }

    /// The head at the start of `buf` when it is whole: `None` while more bytes are needed.
    fn parse(&self, buf: &[u8]) -> Option<Next> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        let len = match parsed.parse(buf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return None,
            Err(_) => return Some(Next::HandOver),
        };
        Some(match express_request(&parsed) {
            Some(req) => Next::Express { req, len },
            None => Next::HandOver,
        })
    }

    fn draining(&self) -> bool {
        self.mirror
            .shared
            .draining
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Writes a hot hit, counts and logs it: `false` when the connection cannot go on.
    async fn answer(
        &self,
        stream: &mut Stream,
        out: &mut BytesMut,
        req: &RequestHeader,
        hit: HotHit,
        ctx: &mut RequestCtx,
    ) -> bool {
        let head_only = req.method == Method::HEAD;
        ctx.cache_status = Some("hit");
        debug!(target: super::CACHE_LOG,
            "route {}: answered from memory (express lane)",
            ctx.route_name()
        );
        out.clear();
        out.extend_from_slice(&hit.wire_head(lasting_head));
        write_timely(hit.age(), out);
        let body = hit.body();
        let sent = if head_only { 0 } else { body.len() };
        let deadline = self.limits.send_deadline(out.len() + sent);
        let write = async {
            stream.write_all(out).await?;
            if !head_only {
                stream.write_all(&body).await?;
            }
            stream.flush().await
        };
        tokio::pin!(write);
        // An answer the socket takes at once (nearly all: it fits the send buffer) needs no
        // timer; one that has to wait for the reader is bounded from here on.
        let result = match (&mut write).now_or_never() {
            Some(written) => written.map_err(write_failed),
            None => finish_within(write, deadline).await,
        };
        let written = if result.is_ok() { sent } else { 0 };
        let error = result.err();
        self.mirror
            .finished(req, 200, written, error.as_deref(), ctx);
        error.is_none()
    }
}

/// The rest of an answer's write, within `deadline` when one is set.
async fn finish_within(
    write: impl std::future::Future<Output = std::io::Result<()>>,
    deadline: Option<Duration>,
) -> Result<(), Box<Error>> {
    let Some(limit) = deadline else {
        return write.await.map_err(write_failed);
    };
    match tokio::time::timeout(limit, write).await {
        Ok(written) => written.map_err(write_failed),
        Err(_) => Err(Error::explain(WriteTimedout, "writing a hot answer")),
    }
}

fn write_failed(e: std::io::Error) -> Box<Error> {
    Error::because(WriteError, "writing a hot answer", e)
}

/// The request as Pingora's header type, when the lane may answer it (see the module).
fn express_request(parsed: &httparse::Request<'_, '_>) -> Option<RequestHeader> {
    let method = match parsed.method? {
        "GET" => Method::GET,
        "HEAD" => Method::HEAD,
        _ => return None,
    };
    if parsed.version != Some(1) {
        return None;
    }
    let mut req =
        RequestHeader::build_no_case(method, parsed.path?.as_bytes(), Some(parsed.headers.len()))
            .ok()?;
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let refused = NOT_EXPRESS.contains(&name)
            || (name == header::CONTENT_LENGTH && h.value != b"0")
            || (name == header::CONNECTION && !h.value.eq_ignore_ascii_case(b"keep-alive"));
        if refused {
            return None;
        }
        req.append_header(name, HeaderValue::from_bytes(h.value).ok()?)
            .ok()?;
    }
    Some(req)
}

/// The lasting part of a hot answer's head, as Pingora writes the cache path's (status line
/// and headers but for `Age`, `Date` and `Connection`, which `write_timely` adds to each).
fn lasting_head(hit: &HotHit) -> Bytes {
    let mut header = hot::response_header(hit);
    header.remove_header(&header::AGE);
    let mut out = BytesMut::with_capacity(512);
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(header.status.as_str().as_bytes());
    out.put_u8(b' ');
    if let Some(reason) = header.get_reason_phrase() {
        out.put_slice(reason.as_bytes());
    }
    out.put_slice(b"\r\n");
    header.header_to_h1_wire(&mut out);
    out.freeze()
}

/// What changes from one answer to the next, and the blank line: `Age`, and the `Date` and
/// `Connection` Pingora adds to every response.
fn write_timely(age: u64, out: &mut BytesMut) {
    out.put_slice(b"Age: ");
    out.put_slice(itoa::Buffer::new().format(age).as_bytes());
    out.put_slice(b"\r\nDate: ");
    out.put_slice(pingora::protocols::http::date::get_cached_date().as_bytes());
    out.put_slice(b"\r\nConnection: keep-alive\r\n\r\n");
}
