//! A fill: the body streamed into its part file as the upstream sends it (queued behind one
//! write on the blocking pool), checked against its digest, then committed; or, when the disk
//! refuses a write, handed on to the filling request's own reader.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use log::{debug, warn};
use pingora::cache::eviction::CacheEntryId;
use pingora::cache::key::{CacheHashKey, CompactCacheKey, HashBinary};
use pingora::cache::storage::{HandleMiss, MissFinishType};
use pingora::cache::{CacheKey, CacheMeta};
use pingora::prelude::*;
use tokio::sync::watch;

use super::super::hot::{HotEntry, HOT_BODY_MAX};
use super::super::sidecar::Sidecar;
use super::super::verify::{ContentCheck, Verifier};
use super::{blocking, internal, DiskStorage, Fill, FillAbout, Handoff, Progress};

/// Most bytes a hand-off holds for a client slower than the upstream. Pingora reads the
/// upstream and feeds the client in one task, so the writer cannot wait for the reader; a
/// client further behind than this is cut.
const HANDOFF_MAX_BYTES: usize = 64 << 20;

/// Body bytes a fill keeps queued in memory behind its write on the blocking pool before
/// `write_body` waits for that write. Below it the filling request's task never waits on the
/// disk: Pingora's proxy loop polls the upstream channel before the cache reader 7 times in 8
/// when both are ready, so waiting for a write per upstream chunk, which lets the upstream
/// refill the channel meanwhile, kept a cold client's first byte behind a burst for tens of
/// milliseconds.
const QUEUED_MAX: u64 = 512 * 1024;

/// A fill: streams the body into a part file, then commits it.
pub struct DiskMiss {
    storage: &'static DiskStorage,
    /// The entry's key; its hex form names the files.
    bin: HashBinary,
    id: u64,
    id_bytes: [u8; 8],
    part_path: PathBuf,
    /// Taken while a blocking write runs (they travel with it, `Written`).
    file: Option<File>,
    verifier: Option<Verifier>,
    /// Bytes the part file holds (or, once abandoned, handed off).
    written: u64,
    /// The write running on the blocking pool, at `written`.
    in_flight: Option<tokio::task::JoinHandle<Written>>,
    /// Pieces that arrived while a write was in flight, written next (`QUEUED_MAX`).
    queued: Vec<Bytes>,
    queued_len: u64,
    key: CompactCacheKey,
    meta: (Vec<u8>, Vec<u8>),
    /// A copy of the body while it is small enough for the hot set.
    small: Option<Vec<u8>>,
    /// Shared with the write in flight, which tells readers of its bytes as soon as they
    /// are in the file.
    progress: Arc<watch::Sender<Progress>>,
    committed: bool,
    /// The disk refused a write: the rest of the body passes to the client uncached.
    abandoned: bool,
    /// Where the body goes once abandoned: the filling request's own reader.
    handoff: Option<(tokio::sync::mpsc::UnboundedSender<Handoff>, Arc<AtomicU64>)>,
}

/// A write of queued body pieces on the blocking pool; the file and the verifier travel with
/// it and come back.
struct Written {
    file: File,
    verifier: Verifier,
    pieces: Vec<Bytes>,
    result: std::io::Result<()>,
}

impl DiskMiss {
    /// Starts a fill of `key`: its part file, and its place among the fills lookups see.
    pub(super) async fn start(
        storage: &'static DiskStorage,
        key: &CacheKey,
        meta: &CacheMeta,
    ) -> Result<DiskMiss> {
        let bin = key.combined_bin();
        let hash = hex::encode(bin);
        let id = storage.next_id.fetch_add(1, Ordering::Relaxed);
        let part_path = storage
            .tmp
            .join(format!("{hash}.{}.{id:016x}.part", std::process::id()));
        let verifier = Verifier::for_meta(meta);
        let serialized = meta.serialize()?;
        let open_path = part_path.clone();
        let (writer, reader) = blocking(move || -> std::io::Result<(File, File)> {
            let w = File::options()
                .write(true)
                .create_new(true)
                .open(&open_path)?;
            let r = File::open(&open_path)?;
            Ok((w, r))
        })
        .await?
        .map_err(|e| internal("cannot create cache part file", e))?;
        let (tx, rx) = watch::channel(Progress::Writing(0));
        let (handoff_tx, handoff_rx) = tokio::sync::mpsc::unbounded_channel();
        let queued = Arc::new(AtomicU64::new(0));
        storage.lock_fills().insert(
            bin,
            Fill {
                id,
                meta: serialized.clone(),
                about: FillAbout::of(meta),
                part: Arc::new(reader),
                progress: rx,
                handoff: Mutex::new(Some((handoff_rx, queued.clone()))),
            },
        );
        storage
            .stats
            .fills_in_flight
            .fetch_add(1, Ordering::Relaxed);
        Ok(DiskMiss {
            storage,
            bin,
            id,
            id_bytes: id.to_le_bytes(),
            part_path,
            file: Some(writer),
            verifier: Some(verifier),
            written: 0,
            in_flight: None,
            queued: Vec::new(),
            queued_len: 0,
            key: key.to_compact(),
            meta: serialized,
            small: Some(Vec::new()),
            progress: Arc::new(tx),
            committed: false,
            abandoned: false,
            handoff: Some((handoff_tx, queued)),
        })
    }

    /// Starts writing the queued pieces at `written`, hashing them as they go; the bytes are
    /// announced to readers from the blocking pool the moment they are in the file.
    fn launch(&mut self) -> Result<()> {
        let (Some(file), Some(mut verifier)) = (self.file.take(), self.verifier.take()) else {
            return Error::e_explain(InternalError, "cache fill already failed");
        };
        let pieces = std::mem::take(&mut self.queued);
        self.queued_len = 0;
        let mut at = self.written;
        let progress = self.progress.clone();
        self.in_flight = Some(tokio::task::spawn_blocking(move || {
            let mut result = Ok(());
            for piece in &pieces {
                // Every piece is hashed, written or not: a refused write hands them all on.
                verifier.update(piece);
                if result.is_ok() {
                    result = file.write_all_at(piece, at);
                    at += piece.len() as u64;
                }
            }
            if result.is_ok() {
                // A fill already given up or failed stays so.
                progress.send_if_modified(|p| match p {
                    Progress::Writing(n) => {
                        *n = at;
                        true
                    }
                    _ => false,
                });
            }
            Written {
                file,
                verifier,
                pieces,
                result,
            }
        }));
        Ok(())
    }

    /// Waits for the write in flight, if any, and takes its outcome.
    async fn settle(&mut self) -> Result<()> {
        let Some(job) = self.in_flight.take() else {
            return Ok(());
        };
        let done = job.await.map_err(|e| internal("disk task failed", e))?;
        self.file = Some(done.file);
        self.verifier = Some(done.verifier);
        match done.result {
            Ok(()) => {
                self.written += done.pieces.iter().map(|p| p.len() as u64).sum::<u64>();
                Ok(())
            }
            Err(e) => self.give_up(e, done.pieces).await,
        }
    }

    /// A full or failing disk stops caching this object, never the client's download (an
    /// error here would cut it): the part file goes at once to give the space back, readers
    /// tailing the fill are cut (their next request fetches anew), and the filling request's
    /// own reader gets the rest through the hand-off, checked. `pieces` are the refused
    /// write's, already hashed.
    async fn give_up(&mut self, e: std::io::Error, pieces: Vec<Bytes>) -> Result<()> {
        warn!(
            "cache fill {} given up after {} bytes: {e}; the download goes on uncached",
            hex::encode(self.bin),
            self.written
        );
        self.storage
            .stats
            .write_failures
            .fetch_add(1, Ordering::Relaxed);
        self.abandoned = true;
        self.fail();
        self.progress
            .send_replace(Progress::Abandoned(self.written));
        let _ = std::fs::remove_file(&self.part_path);
        for piece in pieces {
            self.written += piece.len() as u64;
            self.send_handoff(Handoff::Data(piece)).await?;
        }
        Ok(())
    }

    /// Once abandoned, the pieces still queued go the way of the rest: checked, handed off.
    async fn hand_off_queued(&mut self) -> Result<()> {
        self.queued_len = 0;
        for piece in std::mem::take(&mut self.queued) {
            self.hand_off(piece).await?;
        }
        Ok(())
    }

    /// After the disk refused: checks the bytes and passes them on to the filling request.
    async fn hand_off(&mut self, data: Bytes) -> Result<()> {
        let Some(mut verifier) = self.verifier.take() else {
            return Error::e_explain(InternalError, "cache fill already failed");
        };
        let (verifier, data) = blocking(move || {
            verifier.update(&data);
            (verifier, data)
        })
        .await?;
        self.verifier = Some(verifier);
        self.written += data.len() as u64;
        self.send_handoff(Handoff::Data(data)).await
    }

    /// Passes a chunk to the filling request's reader; a reader that went away, or fell
    /// more than `HANDOFF_MAX_BYTES` behind, ends the fill.
    async fn send_handoff(&mut self, chunk: Handoff) -> Result<()> {
        let Some((tx, queued)) = self.handoff.as_ref() else {
            return Error::e_explain(InternalError, "cache fill given up, nobody reads it");
        };
        if let Handoff::Data(d) = &chunk {
            let behind = queued.fetch_add(d.len() as u64, Ordering::Relaxed) + d.len() as u64;
            if behind > HANDOFF_MAX_BYTES as u64 {
                self.handoff = None;
                return Error::e_explain(
                    InternalError,
                    "cache fill given up and its client fell too far behind the upstream",
                );
            }
        }
        if tx.send(chunk).is_err() {
            self.handoff = None;
            return Error::e_explain(InternalError, "cache fill given up, its reader is gone");
        }
        Ok(())
    }

    /// Counts and logs a body that is not what its digest says: `what` (the fill, or the
    /// download it became) is `outcome`.
    fn mismatched(&self, what: &str, outcome: &str, expected: &str, actual: &str) {
        self.storage
            .stats
            .digest_mismatches
            .fetch_add(1, Ordering::Relaxed);
        warn!(
            "{what} {} {outcome}: content is {actual}, expected {expected}",
            hex::encode(self.bin)
        );
    }

    fn fail(&mut self) {
        // An abandoned fill's own reader goes on through the hand-off; the others were cut
        // when it was abandoned.
        if !self.abandoned {
            self.progress.send_replace(Progress::Failed);
        }
        let mut fills = self.storage.lock_fills();
        if fills.get(&self.bin).is_some_and(|f| f.id == self.id) {
            fills.remove(&self.bin);
        }
    }
}

#[async_trait]
impl HandleMiss for DiskMiss {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        if self.abandoned {
            return self.hand_off(data).await;
        }
        match &mut self.small {
            Some(copy) if copy.len() + data.len() <= HOT_BODY_MAX => copy.extend_from_slice(&data),
            _ => self.small = None,
        }
        self.queued_len += data.len() as u64;
        self.queued.push(data);
        // A finished write is taken without waiting; only a full queue waits for it.
        if self.in_flight.as_ref().is_some_and(|w| w.is_finished()) || self.queued_len >= QUEUED_MAX
        {
            self.settle().await?;
        }
        if self.abandoned {
            return self.hand_off_queued().await;
        }
        if self.in_flight.is_none() {
            self.launch()?;
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<MissFinishType> {
        // Every byte reaches the file (or the hand-off) before the body is judged.
        self.settle().await?;
        if !self.abandoned && !self.queued.is_empty() {
            self.launch()?;
            self.settle().await?;
        }
        if self.abandoned {
            self.hand_off_queued().await?;
            // Nothing is kept; the filling request gets its last byte only if the body is
            // what its digest says.
            let checked = self.verifier.take().map(|v| v.check(self.written));
            if let Some(ContentCheck::Mismatch { expected, actual }) = checked {
                self.mismatched("uncached download", "cut", &expected, &actual);
            } else {
                self.send_handoff(Handoff::End).await?;
            }
            // Not an error: pingora would abort the client's download on one. Nothing was
            // created (a weightless LRU record at most, purged as not found when evicted).
            return Ok(MissFinishType::Appended(0, None));
        }
        let (Some(file), Some(verifier)) = (self.file.take(), self.verifier.take()) else {
            self.fail();
            return Error::e_explain(InternalError, "cache fill already failed");
        };
        if let ContentCheck::Mismatch { expected, actual } = verifier.check(self.written) {
            self.mismatched("cache fill", "rejected", &expected, &actual);
            self.fail();
            return Error::e_explain(
                InternalError,
                format!("content digest mismatch: expected {expected}"),
            );
        }
        // The bytes are right: readers need not wait for the sync (a 100 MiB body takes
        // a noticeable fraction of a second to reach the disk).
        self.progress.send_replace(Progress::Done(self.written));
        let storage = self.storage;
        let (hash, part, generation) = (hex::encode(self.bin), self.part_path.clone(), self.id);
        let sidecar = Sidecar {
            generation,
            body_len: self.written,
            key: self.key.clone(),
            meta: self.meta.clone(),
        };
        let commit = blocking(move || -> std::io::Result<()> {
            file.sync_data()?;
            let dir = storage.dir_for(&hash);
            std::fs::create_dir_all(&dir)?;
            std::fs::rename(&part, storage.body_path(&hash, generation))?;
            let meta_tmp = storage.staged_sidecar(&hash, &sidecar)?;
            {
                let _sidecars = storage.lock_sidecars();
                let previous = storage.current_sidecar(&hash);
                std::fs::rename(&meta_tmp, storage.meta_path(&hash))?;
                if let Some(old) = previous.filter(|p| p.generation != generation) {
                    let _ = std::fs::remove_file(storage.body_path(&hash, old.generation));
                }
            }
            File::open(&dir)?.sync_all()?;
            Ok(())
        })
        .await?;
        if let Err(e) = commit {
            self.fail();
            return Err(internal("cache commit failed", e));
        }
        self.committed = true;
        let hot = self.small.take().and_then(|body| {
            HotEntry::new(std::mem::take(&mut self.meta), Bytes::from(body), self.id).ok()
        });
        match hot {
            Some(entry) => self.storage.lock_hot().insert(self.bin, entry),
            None => self.storage.lock_hot().remove(&self.bin),
        }
        self.storage.commits.fetch_add(1, Ordering::AcqRel);
        {
            let mut fills = self.storage.lock_fills();
            if fills.get(&self.bin).is_some_and(|f| f.id == self.id) {
                fills.remove(&self.bin);
            }
        }
        debug!(
            "cache fill {} committed ({} bytes)",
            hex::encode(self.bin),
            self.written
        );
        Ok(MissFinishType::Created(self.written as usize))
    }

    fn streaming_write_tag(&self) -> Option<&[u8]> {
        Some(&self.id_bytes)
    }

    fn entry_id(&self) -> Option<CacheEntryId> {
        // The fill's id is the generation its commit names.
        Some(CacheEntryId::new(self.id))
    }
}

impl Drop for DiskMiss {
    fn drop(&mut self) {
        self.storage
            .stats
            .fills_in_flight
            .fetch_sub(1, Ordering::Relaxed);
        if !self.committed {
            self.fail();
            // Unlinking is quick; readers that hold the file keep their bytes.
            let _ = std::fs::remove_file(&self.part_path);
            debug!(
                "cache fill {} abandoned after {} bytes",
                hex::encode(self.bin),
                self.written
            );
        }
    }
}
