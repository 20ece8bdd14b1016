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
//!
//! `Seats` chooses that thread. Pingora picks one at random, so how connections fall on
//! threads is a matter of chance: four connections from a two-thread client on two server
//! threads ran at 53-130k manifest hits a second from one run to the next on the same
//! binary. A plain TCP connection is served instead by the thread that stands for the CPU
//! its packets arrive on (`SO_INCOMING_CPU`): a NIC's receive queues spread connections over
//! CPUs by flow, and over loopback the CPU is the client's, so the connections of one
//! client thread share a server thread and their wake-ups stay between two threads. A
//! thread takes a connection this way only while it serves at most a quarter (and two) more
//! than the least busy thread; past that, the least busy takes it, so one receive queue or
//! one client cannot load one thread with everything.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::thread::ThreadId;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures::FutureExt;
use log::{debug, warn};
use pingora::protocols::l4::stream::Stream as AcceptedStream;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter, ReadBuf};
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::OnceCell;

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

/// The threads of the service's runtime, each with the connections it serves (see the
/// module). Found on the first connection: Pingora's runtime hands out its threads' handles
/// only at random, so probes spawned through it collect them.
pub struct Seats {
    threads: usize,
    cpus: usize,
    found: OnceCell<Option<Box<[Seat]>>>,
}

/// One thread of the runtime.
struct Seat {
    handle: Handle,
    thread: ThreadId,
    open: Arc<AtomicUsize>,
}

/// Where a new connection is served; it counts on its thread's seat for as long as it lives
/// (taken when the seat is chosen, so a burst of new connections sees the ones before it).
pub struct Seating {
    /// The thread's runtime, when it is not the current thread.
    pub elsewhere: Option<Handle>,
    open: Option<Arc<AtomicUsize>>,
}

impl Seating {
    fn on(seat: Option<&Seat>, elsewhere: bool) -> Seating {
        let open = seat.map(|s| s.open.clone());
        if let Some(open) = &open {
            open.fetch_add(1, Ordering::Relaxed);
        }
        Seating {
            elsewhere: seat.filter(|_| elsewhere).map(|s| s.handle.clone()),
            open,
        }
    }
}

impl Drop for Seating {
    fn drop(&mut self) {
        if let Some(open) = &self.open {
            open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Seats {
    /// The seats of a runtime of `threads` threads. With work stealing, tokio places tasks
    /// itself and a single thread has nothing to choose from: no seats then.
    pub fn new(threads: usize, work_stealing: bool) -> Seats {
        Seats {
            threads: if work_stealing { 1 } else { threads },
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            found: OnceCell::new(),
        }
    }

    /// Where `stream`, just accepted on the current thread, is served.
    pub async fn place(&self, stream: &Stream) -> Seating {
        if self.threads < 2 {
            return Seating::on(None, false);
        }
        let Some(seats) = self
            .found
            .get_or_init(|| find_seats(self.threads))
            .await
            .as_deref()
        else {
            return Seating::on(None, false);
        };
        let here = std::thread::current().id();
        let current = seats.iter().position(|s| s.thread == here);
        let Some(cpu) = incoming_cpu(stream) else {
            return Seating::on(current.map(|i| &seats[i]), false);
        };
        let index = choose_seat(&loads_of(seats), cpu, self.cpus);
        Seating::on(Some(&seats[index]), Some(index) != current)
    }

    /// Open connections by thread; empty before the first connection or without seats.
    pub fn loads(&self) -> Vec<usize> {
        self.found
            .get()
            .and_then(|f| f.as_deref())
            .map(loads_of)
            .unwrap_or_default()
    }
}

/// Each seat's open connections.
fn loads_of(seats: &[Seat]) -> Vec<usize> {
    seats
        .iter()
        .map(|s| s.open.load(Ordering::Relaxed))
        .collect()
}

/// The seat for a connection arriving on `cpu`, given each seat's open connections and the
/// CPUs there are: the incoming CPU's seat (the least busy of them when there are more
/// threads than CPUs), unless it is more than a quarter (and two) above the least busy seat,
/// which then takes the connection.
fn choose_seat(loads: &[usize], cpu: usize, cpus: usize) -> usize {
    let groups = cpus.clamp(1, loads.len().max(1));
    let by_load = |&i: &usize| (loads[i], i);
    let Some(least) = (0..loads.len()).min_by_key(by_load) else {
        return 0;
    };
    let preferred = (0..loads.len())
        .filter(|i| i % groups == cpu % groups)
        .min_by_key(by_load)
        .unwrap_or(least);
    let slack = (loads[least] / 4).max(2);
    if loads[preferred] <= loads[least] + slack {
        preferred
    } else {
        least
    }
}

/// The threads behind `current_handle`, each found by a probe task that reports the thread
/// it ran on; `None` (logged) when not all of them turn up.
async fn find_seats(threads: usize) -> Option<Box<[Seat]>> {
    let mut seats: Vec<Seat> = Vec::with_capacity(threads);
    for _ in 0..threads * 64 {
        if seats.len() == threads {
            break;
        }
        let handle = pingora_runtime::current_handle();
        let Ok(thread) = handle.spawn(async { std::thread::current().id() }).await else {
            continue;
        };
        if !seats.iter().any(|s| s.thread == thread) {
            seats.push(Seat {
                handle,
                thread,
                open: Arc::new(AtomicUsize::new(0)),
            });
        }
    }
    if seats.len() < threads {
        warn!(
            "found {} of {threads} threads: connections stay where Pingora puts them",
            seats.len()
        );
        return None;
    }
    Some(seats.into_boxed_slice())
}

/// The CPU that processed the connection's last incoming packet, for a plain TCP stream.
fn incoming_cpu(stream: &Stream) -> Option<usize> {
    let accepted = stream.as_any().downcast_ref::<AcceptedStream>()?;
    // SAFETY: the descriptor belongs to `accepted`, borrowed (so open) for this call.
    let fd = unsafe { BorrowedFd::borrow_raw(accepted.as_raw_fd()) };
    socket2::SockRef::from(&fd).cpu_affinity().ok()
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

#[cfg(test)]
mod tests {
    use super::choose_seat;

    /// Seats `n` connections arriving on `cpu` one after another, from `loads`.
    fn seat_all(mut loads: Vec<usize>, cpu: usize, cpus: usize, n: usize) -> Vec<usize> {
        for _ in 0..n {
            let seat = choose_seat(&loads, cpu, cpus);
            loads[seat] += 1;
        }
        loads
    }

    #[test]
    fn a_connection_goes_to_the_thread_of_its_incoming_cpu() {
        assert_eq!(choose_seat(&[0, 0], 0, 2), 0);
        assert_eq!(choose_seat(&[0, 0], 1, 2), 1);
        assert_eq!(choose_seat(&[5, 4], 0, 2), 0, "within the slack");
        // More CPUs than threads: CPUs share threads by their number.
        assert_eq!(choose_seat(&[0, 0], 6, 8), 0);
        assert_eq!(choose_seat(&[0, 0], 7, 8), 1);
        // The two clients of a two-thread client on two CPUs: a thread each.
        assert_eq!(seat_all(seat_all(vec![0, 0], 0, 2, 3), 1, 2, 3), [3, 3]);
    }

    #[test]
    fn more_threads_than_cpus_spread_a_cpus_connections_over_its_threads() {
        // Threads 1 and 3 stand for CPU 1 of two.
        assert_eq!(seat_all(vec![0; 4], 1, 2, 6), [0, 3, 0, 3]);
    }

    #[test]
    fn one_cpu_cannot_load_one_thread_with_everything() {
        // A single receive queue: every connection arrives on CPU 0.
        let loads = seat_all(vec![0; 4], 0, 4, 1000);
        let (least, most) = (*loads.iter().min().unwrap(), *loads.iter().max().unwrap());
        assert!(most <= least + least / 4 + 2, "{loads:?}");
        // Few connections stay together.
        assert_eq!(seat_all(vec![0, 0], 0, 2, 3), [3, 0]);
    }

    #[test]
    fn no_threads_is_seat_zero() {
        assert_eq!(choose_seat(&[], 3, 2), 0);
    }
}
