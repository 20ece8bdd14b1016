//! Which thread's event loop watches a downstream connection.
//!
//! Pingora 0.9.1 with `work_stealing: false` runs one single-threaded tokio runtime per
//! thread. A listener's accept loop lives on one of them, so every accepted socket is
//! registered with *that* runtime's epoll, while the connection's task is spawned on a
//! random runtime (`pingora_runtime::current_handle`). For those connections every readiness
//! event is caught on the accepting thread and handed to the serving thread through an
//! eventfd: a second thread woken for every request (strace at 4 connections: 0.47 eventfd
//! writes per request; none with `serve_here`).
//!
//! `serve_here` moves a plain TCP connection's registration to the runtime that runs its
//! task, once, before its first request: the socket is duplicated, the duplicate registered
//! here, the original deregistered from the accepting runtime and closed. The connection
//! then lives on one thread from its first byte to its last. TLS streams (the registration
//! is inside the TLS stream) and anything that is not a plain TCP stream pass unchanged.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures::FutureExt;
use log::debug;
use pingora::protocols::l4::stream::Stream as AcceptedStream;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter, ReadBuf};
use tokio::net::TcpStream;

/// Response bytes gathered before a `send`: a small response's head and body leave in one
/// segment (Pingora's own default for accepted streams).
const WRITE_BUFFER: usize = 1460;

/// `stream`, watched by the current runtime's event loop when it is a plain TCP stream (see
/// the module). On any failure the stream is returned as it came: it still works, only with
/// the cross-thread hand-off.
pub fn serve_here(stream: Stream) -> Stream {
    if !stream.as_any().is::<AcceptedStream>() {
        return stream;
    }
    let Ok(accepted) = stream.into_any().downcast::<AcceptedStream>() else {
        unreachable!("checked to be an accepted TCP stream just above")
    };
    match Rehomed::from_accepted(&accepted) {
        Ok(rehomed) => Box::new(rehomed),
        Err(e) => {
            debug!("connection stays with the accepting thread's event loop: {e}");
            accepted
        }
    }
}

/// A downstream TCP connection registered with the runtime that serves it.
#[derive(Debug)]
pub struct Rehomed {
    io: BufWriter<TcpStream>,
    socket: Arc<SocketDigest>,
    established: SystemTime,
}

impl Rehomed {
    /// A duplicate of `accepted`'s socket registered with the current runtime, carrying its
    /// peer address and start time. Dropping `accepted` afterwards deregisters and closes the
    /// original descriptor; the socket stays open through the duplicate.
    fn from_accepted(accepted: &AcceptedStream) -> io::Result<Rehomed> {
        // SAFETY: the descriptor belongs to `accepted`, which is borrowed (so open) for as
        // long as this borrow lives; the borrow only serves to duplicate it.
        let original = unsafe { BorrowedFd::borrow_raw(accepted.as_raw_fd()) };
        let std_stream = std::net::TcpStream::from(original.try_clone_to_owned()?);
        // A property of the shared socket, so already set; tokio requires it.
        std_stream.set_nonblocking(true)?;
        let tcp = TcpStream::from_std(std_stream)?;
        let socket = SocketDigest::from_raw_fd(tcp.as_raw_fd());
        if let Some(peer) = accepted
            .get_socket_digest()
            .and_then(|d| d.peer_addr().cloned())
        {
            let _ = socket.peer_addr.set(Some(peer));
        }
        Ok(Rehomed {
            io: BufWriter::with_capacity(WRITE_BUFFER, tcp),
            socket: Arc::new(socket),
            established: accepted.established_ts,
        })
    }
}

impl AsyncRead for Rehomed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rehomed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, data)
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

impl Drop for Rehomed {
    /// As Pingora's own stream does: what is still buffered goes out if it can without
    /// waiting.
    fn drop(&mut self) {
        let _ = self.io.flush().now_or_never();
    }
}

#[async_trait]
impl Shutdown for Rehomed {
    async fn shutdown(&mut self) {
        if let Err(e) = AsyncWriteExt::shutdown(&mut self.io).await {
            debug!("failed to shut down a downstream connection: {e}");
        }
    }
}

impl UniqueID for Rehomed {
    fn id(&self) -> UniqueIDType {
        self.io.get_ref().as_raw_fd()
    }
}

impl Ssl for Rehomed {}

impl GetTimingDigest for Rehomed {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        vec![Some(TimingDigest {
            established_ts: self.established,
            ..Default::default()
        })]
    }

    fn get_read_pending_time(&self) -> Duration {
        Duration::ZERO
    }

    fn get_write_pending_time(&self) -> Duration {
        Duration::ZERO
    }
}

impl GetProxyDigest for Rehomed {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        None
    }
}

impl GetSocketDigest for Rehomed {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        Some(self.socket.clone())
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.socket = Arc::new(digest);
    }
}

#[async_trait]
impl Peek for Rehomed {
    /// Not offered: only an h2c preface check peeks, and cleartext HTTP/2 is not served.
    async fn try_peek(&mut self, _buf: &mut [u8]) -> io::Result<bool> {
        Ok(false)
    }
}
