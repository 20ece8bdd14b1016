//! The readers of the disk cache: a committed body (from memory or the file), or a fill in
//! progress that is tailed, with the last byte held back until the body is checked and the
//! filling request's own hand-off when the disk refused a write.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::cache::eviction::CacheEntryId;
use pingora::cache::storage::HandleHit;
use pingora::cache::trace::SpanHandle;
use pingora::cache::{CacheKey, Storage};
use pingora::prelude::*;
use tokio::sync::watch;

use super::{blocking, internal, Handoff, Progress, CHUNK, HELD_BACK};

/// A cache hit: a committed body, or a fill in progress that is tailed. Each knows its
/// body generation, the entry's identity for the eviction manager.
pub(super) enum DiskHit {
    /// A small entry served from memory.
    Memory {
        body: Bytes,
        pos: usize,
        end: usize,
        generation: u64,
    },
    Complete {
        file: Arc<File>,
        len: u64,
        pos: u64,
        end: u64,
        generation: u64,
    },
    Partial {
        file: Arc<File>,
        progress: watch::Receiver<Progress>,
        pos: u64,
        /// Where a range ends (exclusive); `None` reads to the end of the fill.
        end: Option<u64>,
        /// The filling request's own reader: where the body continues if the disk refuses.
        handoff: Option<HandoffReader>,
        /// The fill's id, its generation once committed.
        generation: u64,
    },
}

/// The reading end of a hand-off.
pub(super) struct HandoffReader {
    pub(super) rx: tokio::sync::mpsc::UnboundedReceiver<Handoff>,
    /// Bytes sent and not yet received (bounded by `HANDOFF_MAX_BYTES`).
    pub(super) queued: Arc<AtomicU64>,
    /// Body offset of the next chunk to arrive.
    pub(super) at: u64,
    /// The held-back tail, released with the next chunk or at the end.
    pub(super) held: Option<Bytes>,
    /// The file's bytes are read: everything else comes from here.
    pub(super) started: bool,
}

impl HandoffReader {
    /// The next bytes at or after `pos` (below `end`), the last byte held back until the
    /// body is checked; `None` at the end.
    async fn read(&mut self, pos: &mut u64, end: Option<u64>) -> Result<Option<Bytes>> {
        loop {
            if end.is_some_and(|e| *pos >= e) {
                return Ok(None);
            }
            match self.rx.recv().await {
                Some(Handoff::Data(chunk)) => {
                    self.queued.fetch_sub(chunk.len() as u64, Ordering::Relaxed);
                    let start = self.at;
                    self.at += chunk.len() as u64;
                    let from = (*pos).max(start);
                    let to = end.map_or(self.at, |e| e.min(self.at));
                    if from >= to {
                        continue;
                    }
                    let piece = chunk.slice((from - start) as usize..(to - start) as usize);
                    *pos = to;
                    // Release what was held, hold this piece's last byte.
                    let keep = piece.len() - HELD_BACK as usize;
                    let out = match self.held.replace(piece.slice(keep..)) {
                        Some(held) if keep > 0 => {
                            let mut joined = Vec::with_capacity(held.len() + keep);
                            joined.extend_from_slice(&held);
                            joined.extend_from_slice(&piece[..keep]);
                            Bytes::from(joined)
                        }
                        Some(held) => held,
                        None if keep > 0 => piece.slice(..keep),
                        None => continue,
                    };
                    return Ok(Some(out));
                }
                Some(Handoff::End) => return Ok(self.held.take()),
                None => {
                    return Error::e_explain(
                        InternalError,
                        "cache fill given up and the body did not complete",
                    )
                }
            }
        }
    }
}

/// Reads at `pos` between 1 and `len` bytes (fewer than `len` when only part of them was in the
/// page cache; callers advance by what they got). Bytes in the page cache are copied on the
/// calling thread: `preadv2` with `RWF_NOWAIT` returns what it can without waiting for the
/// disk, and anything else (EAGAIN, a kernel without it) goes to the blocking pool, so a hit
/// costs no thread hand-off per chunk and a worker never waits on disk.
pub(super) async fn read_chunk(file: &Arc<File>, pos: u64, len: usize) -> Result<Bytes> {
    if let Some(chunk) = read_cached(file, pos, len) {
        return Ok(chunk);
    }
    let file = file.clone();
    blocking(move || {
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, pos).map(|_| Bytes::from(buf))
    })
    .await?
    .map_err(|e| internal("cache read failed", e))
}

/// What of `len` bytes at `pos` the page cache holds, read without waiting for the disk, into a
/// buffer that is not zeroed first (zeroing it cost 5% of the CPU of serving blobs).
fn read_cached(file: &File, pos: u64, len: usize) -> Option<Bytes> {
    let mut buf = Vec::<u8>::with_capacity(len);
    let iov = libc::iovec {
        iov_base: buf.spare_capacity_mut().as_mut_ptr().cast(),
        iov_len: len,
    };
    let offset = libc::off_t::try_from(pos).ok()?;
    // SAFETY: the one iovec covers `len` bytes of `buf`'s allocation, which outlives the call;
    // the kernel only writes into it, and `set_len` covers no more than the `n` bytes it wrote.
    let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, offset, libc::RWF_NOWAIT) };
    let n = usize::try_from(n).ok().filter(|&n| n > 0 && n <= len)?;
    // SAFETY: the kernel initialized the first `n` bytes (checked `<= len` above).
    unsafe { buf.set_len(n) };
    Some(Bytes::from(buf))
}

#[async_trait]
impl HandleHit for DiskHit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        match self {
            DiskHit::Memory { body, pos, end, .. } => {
                if *pos >= *end {
                    return Ok(None);
                }
                let chunk = body.slice(*pos..*end);
                *pos = *end;
                Ok(Some(chunk))
            }
            DiskHit::Complete { file, pos, end, .. } => {
                if *pos >= *end {
                    return Ok(None);
                }
                let n = CHUNK.min((*end - *pos) as usize);
                let chunk = read_chunk(file, *pos, n).await?;
                *pos += chunk.len() as u64;
                Ok(Some(chunk))
            }
            DiskHit::Partial {
                file,
                progress,
                pos,
                end,
                handoff,
                ..
            } => loop {
                if let Some(h) = handoff.as_mut().filter(|h| h.started) {
                    return h.read(pos, *end).await;
                }
                let state = *progress.borrow_and_update();
                let stop = |n: u64| end.map_or(n, |e| e.min(n));
                let available = match state {
                    Progress::Failed => {
                        return Error::e_explain(InternalError, "cache fill failed")
                    }
                    Progress::Done(n) if *pos >= stop(n) => return Ok(None),
                    Progress::Done(n) => stop(n),
                    Progress::Writing(n) => stop(n.saturating_sub(HELD_BACK)),
                    Progress::Abandoned(n) if *pos < stop(n) => stop(n),
                    Progress::Abandoned(n) => match handoff {
                        Some(h) => {
                            h.started = true;
                            h.at = n;
                            return h.read(pos, *end).await;
                        }
                        None => {
                            return Error::e_explain(
                                InternalError,
                                "cache fill given up (the disk refused a write)",
                            )
                        }
                    },
                };
                if end.is_some_and(|e| *pos >= e) {
                    return Ok(None);
                }
                if available > *pos {
                    let n = CHUNK.min((available - *pos) as usize);
                    let chunk = read_chunk(file, *pos, n).await?;
                    *pos += chunk.len() as u64;
                    return Ok(Some(chunk));
                }
                if progress.changed().await.is_err()
                    && !matches!(*progress.borrow(), Progress::Done(_))
                {
                    return Error::e_explain(InternalError, "cache fill abandoned");
                }
            },
        }
    }

    async fn finish(
        self: Box<Self>,
        _: &'static (dyn Storage + Sync),
        _: &CacheKey,
        _: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        // A fill in progress seeks too: reads wait for the range's bytes to arrive.
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        match self {
            DiskHit::Memory {
                body,
                pos,
                end: stop,
                ..
            } => {
                if start >= body.len() {
                    return Error::e_explain(
                        InternalError,
                        format!("seek {start} past the end {}", body.len()),
                    );
                }
                *pos = start;
                *stop = end.map_or(body.len(), |e| e.min(body.len()));
                Ok(())
            }
            DiskHit::Complete {
                len,
                pos,
                end: stop,
                ..
            } => {
                if start as u64 >= *len {
                    return Error::e_explain(
                        InternalError,
                        format!("seek {start} past the end {len}"),
                    );
                }
                *pos = start as u64;
                *stop = end.map_or(*len, |e| (e as u64).min(*len));
                Ok(())
            }
            DiskHit::Partial { pos, end: stop, .. } => {
                *pos = start as u64;
                *stop = end.map(|e| e as u64);
                Ok(())
            }
        }
    }

    fn should_count_access(&self) -> bool {
        !matches!(self, DiskHit::Partial { .. })
    }

    fn get_eviction_weight(&self) -> usize {
        match self {
            DiskHit::Memory { body, .. } => body.len(),
            DiskHit::Complete { len, .. } => *len as usize,
            DiskHit::Partial { .. } => 0,
        }
    }

    fn entry_id(&self) -> Option<CacheEntryId> {
        let (DiskHit::Memory { generation, .. }
        | DiskHit::Complete { generation, .. }
        | DiskHit::Partial { generation, .. }) = self;
        Some(CacheEntryId::new(*generation))
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn std::any::Any + Send + Sync) {
        self
    }
}
