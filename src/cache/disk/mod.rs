//! `DiskStorage`: pingora-cache `Storage` on a local directory, crash-safe and streamed.
//!
//! Layout under `cache.dir` (one version directory, so a future format can sit beside it):
//!
//! ```text
//! v1/objects/<2 hex>/<key hash>.meta         sidecar: header + CacheMeta (the commit point)
//! v1/objects/<2 hex>/<key hash>.<gen>.body   the body, named by a generation number
//! v1/tmp/<key hash>.<pid>.<writer>.part      a fill in progress (process-unique)
//! ```
//!
//! A fill streams into its `.part` file, hashing as bytes arrive. `finish` checks the digest
//! the response promised, `sync_data`s, renames the body into place under a new generation,
//! then writes and renames the sidecar that names that generation, and fsyncs the directory.
//! Until the sidecar lands nothing new is visible; a crash leaves at worst an orphan body or
//! part file, which `scan` removes. A sidecar whose body is missing or of the wrong length is a
//! miss, and both files are deleted.
//!
//! While a fill runs, lookups get a hit that tails the part file (streaming partial writes,
//! DESIGN.md section 3): every waiting client receives bytes as they arrive. A fill that is
//! dropped unfinished or fails its digest check deletes its part file and cuts its readers.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use log::{debug, warn};
use pingora::cache::eviction::{CacheEntryId, CacheEntryKey, CacheEntryKeyRef, EvictionManager};
use pingora::cache::key::{str2hex, CacheHashKey, CompactCacheKey, HashBinary};
use pingora::cache::storage::{HitHandler, MissHandler, PurgeOutcome, PurgeTarget, PurgeType};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{CacheKey, CacheMeta, Storage};
use pingora::prelude::*;
use tokio::sync::watch;

use super::hot::{Decoded, HotEntry, HotSet, HOT_BODY_MAX};
use super::sidecar::Sidecar;
use fill::DiskMiss;
use hit::{DiskHit, HandoffReader};

/// Bytes read from disk per body chunk. Each client holds one while the socket takes it, so
/// this is the memory a client costs: at 512 KiB, 50 clients on one cold blob raised the peak
/// RSS by 25 MiB; at 128 KiB by about 6, with no loss in blob-hit throughput (benches/load.sh
/// (a), (d)).
const CHUNK: usize = 128 * 1024;

/// Counters the storage keeps (read by metrics and tests).
#[derive(Debug, Default)]
pub struct StorageStats {
    pub digest_mismatches: AtomicU64,
    pub corrupt_entries: AtomicU64,
    pub fills_in_flight: AtomicU64,
    /// Fills given up because the disk refused a write (ENOSPC, EIO): served, not kept.
    pub write_failures: AtomicU64,
}

/// Progress of a fill, watched by the hits that tail it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    Writing(u64),
    /// Every byte is written and checked against its digest, so readers may finish; the
    /// commit (sync, renames) may still be under way.
    Done(u64),
    Failed,
    /// The disk refused a write after this many bytes: the file holds them, the rest goes
    /// to the filling request's own reader through its hand-off (`Handoff`).
    Abandoned(u64),
}

/// Body bytes a fill that the disk refused passes to its own request's reader, so that
/// client still gets its download; `End` comes once the whole body was checked.
enum Handoff {
    Data(Bytes),
    End,
}

/// The last bytes of a fill are held back from every reader until the body is checked
/// against its digest, so a client never sees a complete body of wrong bytes: a mismatch
/// cuts it before the end.
const HELD_BACK: u64 = 1;

/// A body no sidecar names is removed by the start-up scan only once it is this old: a live
/// upgrade peer renames a body into place just before it writes the sidecar naming it.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(600);

/// The eviction manager the storage tells when an entry turns out damaged.
pub type Eviction = &'static (dyn EvictionManager + Sync + Send);

/// A fill in progress, as lookups see it.
struct Fill {
    id: u64,
    meta: (Vec<u8>, Vec<u8>),
    /// What the status page says of it.
    about: FillAbout,
    part: Arc<File>,
    progress: watch::Receiver<Progress>,
    /// Taken by the filling request's own reader (`lookup_streaming_write`).
    handoff: Mutex<Option<HandoffRx>>,
}

/// A fill as the status page shows it: what it is and how far it got.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FillProgress {
    /// The entry's `x-pullthrough-source` (`blob library/nginx`), when it has one.
    pub source: Option<String>,
    pub digest: Option<String>,
    /// The length the upstream announced, when it did.
    pub size: Option<u64>,
    pub bytes: u64,
}

/// What a fill is, read once from its response header.
#[derive(Debug, Clone)]
struct FillAbout {
    source: Option<String>,
    digest: Option<String>,
    size: Option<u64>,
}

impl FillAbout {
    fn of(meta: &CacheMeta) -> FillAbout {
        let headers = meta.headers();
        let text = |name: &str| Some(headers.get(name)?.to_str().ok()?.to_owned());
        FillAbout {
            source: text(super::inventory::SOURCE_HEADER),
            digest: text(super::verify::DIGEST_HEADER),
            size: text("content-length").and_then(|l| l.parse().ok()),
        }
    }
}

/// Committed entries whose last read is remembered (`DiskStorage::last_read`): beyond it
/// the rarely read are forgotten first and show no last read.
const READS_REMEMBERED: usize = 1 << 16;

/// One committed entry as `DiskStorage::committed` finds it on disk.
pub struct Committed {
    pub key: CompactCacheKey,
    pub generation: u64,
    pub size: u64,
    pub meta: CacheMeta,
}

type HandoffRx = (
    tokio::sync::mpsc::UnboundedReceiver<Handoff>,
    Arc<AtomicU64>,
);

/// The disk cache storage.
pub struct DiskStorage {
    objects: PathBuf,
    tmp: PathBuf,
    /// Fills in progress and (in `hot`) small entries, by binary key: a hit never formats the
    /// hex name, which only files need.
    fills: Mutex<HashMap<HashBinary, Fill>>,
    next_id: AtomicU64,
    /// Bumped by every commit, between the entry becoming readable and its fill vanishing.
    commits: AtomicU64,
    hot: Mutex<HotSet>,
    /// Held (on the blocking pool only) while a sidecar is replaced or removed, so a purge of
    /// one generation never removes the sidecar a commit just put in its place.
    sidecars: Mutex<()>,
    eviction: once_cell::sync::OnceCell<Eviction>,
    /// When each recently read committed entry was last read from disk (unix seconds), by
    /// binary key (the hot set's entries keep their own).
    reads: quick_cache::sync::Cache<HashBinary, u32>,
    pub stats: StorageStats,
}

/// One committed entry found by `scan`.
pub struct ScannedEntry {
    pub key: CompactCacheKey,
    pub generation: u64,
    pub size: usize,
}

impl ScannedEntry {
    /// Its identity for the eviction manager.
    pub fn entry_key(&self) -> CacheEntryKey {
        CacheEntryKey::identified(self.key.clone(), CacheEntryId::new(self.generation))
    }
}

/// What a scan leaves for later.
#[derive(Default)]
pub struct Scan {
    /// Bodies no sidecar names, too young to remove yet (`ORPHAN_GRACE`): see
    /// `remove_orphans`.
    pub young_orphans: Vec<PathBuf>,
}

fn internal(context: &'static str, e: impl std::fmt::Display) -> Box<Error> {
    Error::explain(InternalError, format!("{context}: {e}"))
}

/// Seconds since the epoch, as the read book keeps them.
fn unix_now() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
}

/// Runs blocking file work on tokio's blocking pool, never on a worker thread.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| internal("disk task failed", e))
}

impl DiskStorage {
    /// Opens (creating) the cache directory. Blocking: call at start, before serving.
    pub fn open(dir: &Path) -> std::io::Result<DiskStorage> {
        let root = dir.join("v1");
        let objects = root.join("objects");
        let tmp = root.join("tmp");
        std::fs::create_dir_all(&objects)?;
        std::fs::create_dir_all(&tmp)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Ok(DiskStorage {
            objects,
            tmp,
            fills: Mutex::new(HashMap::new()),
            hot: Mutex::new(HotSet::default()),
            // Generations must not repeat across restarts: start from the clock.
            next_id: AtomicU64::new(now.as_nanos() as u64),
            commits: AtomicU64::new(0),
            sidecars: Mutex::new(()),
            eviction: once_cell::sync::OnceCell::new(),
            reads: quick_cache::sync::Cache::new(READS_REMEMBERED),
            stats: StorageStats::default(),
        })
    }

    /// The eviction manager to tell when an entry turns out damaged (set once, at start).
    pub fn set_eviction(&self, eviction: Eviction) {
        let _ = self.eviction.set(eviction);
    }

    fn lock_sidecars(&self) -> std::sync::MutexGuard<'_, ()> {
        self.sidecars.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_hot(&self) -> std::sync::MutexGuard<'_, HotSet> {
        self.hot.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_fills(&self) -> std::sync::MutexGuard<'_, HashMap<HashBinary, Fill>> {
        self.fills.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn dir_for(&self, hash: &str) -> PathBuf {
        self.objects.join(&hash[..2])
    }

    fn meta_path(&self, hash: &str) -> PathBuf {
        self.dir_for(hash).join(format!("{hash}.meta"))
    }

    fn body_path(&self, hash: &str, generation: u64) -> PathBuf {
        self.dir_for(hash)
            .join(format!("{hash}.{generation:016x}.body"))
    }

    /// The sidecar in `hash`'s place, when one is there and readable.
    fn current_sidecar(&self, hash: &str) -> Option<Sidecar> {
        std::fs::read(self.meta_path(hash))
            .ok()
            .and_then(|b| Sidecar::decode(&b))
    }

    /// `sidecar` written and synced to a new file beside the part files, to be renamed into
    /// `hash`'s place.
    fn staged_sidecar(&self, hash: &str, sidecar: &Sidecar) -> std::io::Result<PathBuf> {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .tmp
            .join(format!("{hash}.{}.{n:016x}.meta", std::process::id()));
        let mut f = File::create(&tmp)?;
        f.write_all(&sidecar.encode())?;
        f.sync_data()?;
        Ok(tmp)
    }

    /// Reads a committed entry; a damaged one is deleted (and leaves the LRU) and reported
    /// as absent. Blocking.
    fn read_committed(&self, hash: &str) -> Option<(Sidecar, File)> {
        let meta_path = self.meta_path(hash);
        let buf = std::fs::read(&meta_path).ok()?;
        let why = match Sidecar::decode(&buf) {
            None => "unreadable sidecar",
            Some(sidecar) => match File::open(self.body_path(hash, sidecar.generation)) {
                Err(_) => "body missing",
                Ok(body) => match body.metadata() {
                    Ok(m) if m.len() == sidecar.body_len => return Some((sidecar, body)),
                    _ => "body length differs",
                },
            },
        };
        let _sidecars = self.lock_sidecars();
        // A commit (this process's or an upgrade peer's) may have replaced the sidecar and
        // removed the body the old one named: only the sidecar that was read is damaged.
        if std::fs::read(&meta_path).ok().as_deref() != Some(&buf[..]) {
            return None;
        }
        warn!("cache entry {hash} is damaged ({why}): deleted");
        self.stats.corrupt_entries.fetch_add(1, Ordering::Relaxed);
        let _ = std::fs::remove_file(&meta_path);
        self.remove_bodies(hash);
        if let Some(bin) = str2hex(hash) {
            self.lock_hot().remove(&bin);
        }
        if let (Some(sidecar), Some(eviction)) = (Sidecar::decode(&buf), self.eviction.get()) {
            let id = CacheEntryId::new(sidecar.generation);
            eviction.remove(CacheEntryKeyRef::from_entry_id(&sidecar.key, Some(id)));
        }
        None
    }

    /// Removes a committed entry (blocking; start-up eviction).
    pub fn remove_entry(&self, key: &CompactCacheKey) {
        let bin = key.combined_bin();
        let hash = hex::encode(bin);
        let _ = std::fs::remove_file(self.meta_path(&hash));
        self.remove_bodies(&hash);
        self.lock_hot().remove(&bin);
    }

    /// Removes every body generation of an entry whose sidecar is gone or unreadable.
    fn remove_bodies(&self, hash: &str) {
        let Ok(entries) = std::fs::read_dir(self.dir_for(hash)) else {
            return;
        };
        let prefix = format!("{hash}.");
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(&prefix) && name.ends_with(".body") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// Removes the part files of fills whose process is gone (a crash), and of this pid (a
    /// dead process's pid reused): call once at start, before serving. A running upgrade
    /// peer's part files are kept. The directory holds only fills in flight: this is quick.
    pub fn clear_abandoned_parts(&self) -> std::io::Result<()> {
        for entry in std::fs::read_dir(&self.tmp)? {
            let path = entry?.path();
            let pid = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.split('.').nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            let alive = pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
            if !alive || pid == Some(std::process::id()) {
                debug!("removing abandoned part file {}", path.display());
                let _ = std::fs::remove_file(&path);
            }
        }
        Ok(())
    }

    /// Every committed entry, for the eviction manager; safe beside serving (it runs in the
    /// background after a crash). Removes damaged entries and bodies no sidecar names, never
    /// what a live process (this one, an upgrade peer) is committing: an unnamed body younger
    /// than `ORPHAN_GRACE` is only listed, for `remove_orphans` to look at later.
    /// Each entry found goes to `found` as the walk meets it (nothing is collected: a cache
    /// holds millions).
    pub fn scan(&self, found: &mut dyn FnMut(ScannedEntry)) -> std::io::Result<Scan> {
        let mut young_orphans = Vec::new();
        for shard in std::fs::read_dir(&self.objects)? {
            let shard = shard?.path();
            let mut named = HashMap::new();
            let mut bodies = Vec::new();
            for entry in std::fs::read_dir(&shard)? {
                let path = entry?.path();
                let name = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default()
                    .to_owned();
                if let Some(hash) = name.strip_suffix(".meta") {
                    if let Some((sidecar, _)) = self.read_committed(hash) {
                        named.insert(self.body_path(hash, sidecar.generation), ());
                        found(ScannedEntry {
                            key: sidecar.key,
                            generation: sidecar.generation,
                            size: sidecar.body_len as usize,
                        });
                    }
                } else if name.ends_with(".body") {
                    bodies.push(path);
                }
            }
            for body in bodies {
                if named.contains_key(&body) {
                    continue;
                }
                let age = std::fs::metadata(&body)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok());
                if age.is_some_and(|a| a >= ORPHAN_GRACE) {
                    debug!("removing orphan body {}", body.display());
                    let _ = std::fs::remove_file(&body);
                } else {
                    young_orphans.push(body);
                }
            }
        }
        Ok(Scan { young_orphans })
    }

    /// Removes the bodies among `candidates` that no sidecar names now (blocking; run once
    /// `ORPHAN_GRACE` has passed since the scan that listed them). Returns how many went.
    pub fn remove_orphans(&self, candidates: &[PathBuf]) -> usize {
        let mut removed = 0;
        for body in candidates {
            let Some(hash) = body
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.split('.').next())
            else {
                continue;
            };
            let _sidecars = self.lock_sidecars();
            let named = self
                .current_sidecar(hash)
                .is_some_and(|s| self.body_path(hash, s.generation) == *body);
            if !named && std::fs::remove_file(body).is_ok() {
                debug!("removed orphan body {}", body.display());
                removed += 1;
            }
        }
        removed
    }

    /// A reader of the fill in progress for `bin`, if there is one.
    fn fill_hit(&self, bin: &HashBinary) -> Result<Option<(CacheMeta, HitHandler)>> {
        match self.lock_fills().get(bin) {
            Some(fill) => Self::partial_hit(fill, false).map(Some),
            None => Ok(None),
        }
    }

    /// The in-memory copy of the committed entry for `bin`, when it is in the hot set and no
    /// fill of it is in progress (a lookup answers from the fill then).
    pub(crate) fn hot_entry(&self, bin: &HashBinary) -> Option<Arc<HotEntry>> {
        if self.lock_fills().contains_key(bin) {
            return None;
        }
        let entry = self.lock_hot().entries.get(bin).cloned()?;
        entry.last_read.store(unix_now(), Ordering::Relaxed);
        Some(entry)
    }

    /// A reader of the committed entry for `bin`: from the hot set, else from disk (which
    /// puts a small body into the hot set).
    async fn committed_hit(
        &'static self,
        bin: HashBinary,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let (hot, seen) = {
            let set = self.lock_hot();
            (set.entries.get(&bin).cloned(), set.changes)
        };
        if let Some(entry) = hot {
            entry.last_read.store(unix_now(), Ordering::Relaxed);
            let meta = entry.meta()?;
            let end = entry.body.len();
            let hit = DiskHit::Memory {
                body: entry.body.clone(),
                pos: 0,
                end,
                generation: entry.generation,
            };
            return Ok(Some((meta, Box::new(hit))));
        }
        let hash = hex::encode(bin);
        let found = blocking(move || {
            let (sidecar, file) = self.read_committed(&hash)?;
            // A small body comes in whole, for the hot set.
            let body = if sidecar.body_len as usize <= HOT_BODY_MAX {
                let mut buf = vec![0u8; sidecar.body_len as usize];
                file.read_exact_at(&mut buf, 0)
                    .ok()
                    .map(|_| Bytes::from(buf))
            } else {
                None
            };
            Some((hash, sidecar, file, body))
        })
        .await?;
        let Some((hash, sidecar, file, body)) = found else {
            return Ok(None);
        };
        self.reads.insert(bin, unix_now());
        let meta = match CacheMeta::deserialize(&sidecar.meta.0, &sidecar.meta.1) {
            Ok(m) => m,
            Err(e) => {
                warn!("cache entry {hash} has unreadable meta: {e}");
                return Ok(None);
            }
        };
        if let Some(body) = body {
            let end = body.len();
            let generation = sidecar.generation;
            let entry =
                HotEntry::decoded(sidecar.meta, Decoded::of(&meta), body.clone(), generation);
            self.lock_hot().fill(bin, entry, seen);
            let hit = DiskHit::Memory {
                body,
                pos: 0,
                end,
                generation,
            };
            return Ok(Some((meta, Box::new(hit))));
        }
        let len = sidecar.body_len;
        let hit = DiskHit::Complete {
            file: Arc::new(file),
            len,
            pos: 0,
            end: len,
            generation: sidecar.generation,
        };
        Ok(Some((meta, Box::new(hit))))
    }

    fn partial_hit(fill: &Fill, own: bool) -> Result<(CacheMeta, HitHandler)> {
        let meta = CacheMeta::deserialize(&fill.meta.0, &fill.meta.1)?;
        let handoff = own
            .then(|| {
                fill.handoff
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take()
            })
            .flatten()
            .map(|(rx, queued)| HandoffReader {
                rx,
                queued,
                at: 0,
                held: None,
                started: false,
            });
        let hit = DiskHit::Partial {
            file: fill.part.clone(),
            progress: fill.progress.clone(),
            pos: 0,
            end: None,
            handoff,
            generation: fill.id,
        };
        Ok((meta, Box::new(hit)))
    }
}

#[async_trait]
impl Storage for DiskStorage {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let bin = key.combined_bin();
        // pingora takes the fill lock right after a miss, and a fill releases it as soon as its
        // part file is visible here: a miss must not be returned while a fill is visible, or
        // the request becomes a second writer. A fill may appear, or commit and vanish, while
        // the disk is read, so look at the fills again after a disk miss and read the disk
        // again if a commit landed meanwhile.
        for _ in 0..2 {
            let commits = self.commits.load(Ordering::Acquire);
            if let Some(hit) = self.fill_hit(&bin)? {
                return Ok(Some(hit));
            }
            if let Some(hit) = self.committed_hit(bin).await? {
                return Ok(Some(hit));
            }
            if let Some(hit) = self.fill_hit(&bin)? {
                return Ok(Some(hit));
            }
            if self.commits.load(Ordering::Acquire) == commits {
                break;
            }
        }
        Ok(None)
    }

    async fn lookup_streaming_write(
        &'static self,
        key: &CacheKey,
        tag: Option<&[u8]>,
        trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let Some(tag) = tag else {
            return self.lookup(key, trace).await;
        };
        let fills = self.lock_fills();
        match fills.get(&key.combined_bin()) {
            Some(fill) if fill.id.to_le_bytes() == tag => Self::partial_hit(fill, true).map(Some),
            _ => Ok(None),
        }
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _: &SpanHandle,
    ) -> Result<MissHandler> {
        Ok(Box::new(DiskMiss::start(self, key, meta).await?))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _: PurgeType,
        _: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        // An exact target names one generation (an eviction decided earlier): the entry is
        // removed only if that generation is still the one committed, never a re-fill that
        // replaced it since. Any other target removes what is committed now.
        let only = match target {
            PurgeTarget::Exact(CacheEntryKey::Identified { id, .. }) => Some(id.get()),
            _ => None,
        };
        let bin = target.key().combined_bin();
        let hash = hex::encode(bin);
        let removed = blocking(move || {
            let _sidecars = self.lock_sidecars();
            let generation = self.current_sidecar(&hash).map(|s| s.generation);
            if only.is_some_and(|id| generation != Some(id)) {
                return None;
            }
            {
                let mut hot = self.lock_hot();
                if only.is_none_or(|id| hot.entries.get(&bin).is_some_and(|e| e.generation == id)) {
                    hot.remove(&bin);
                }
            }
            let gone = std::fs::remove_file(self.meta_path(&hash)).is_ok();
            match generation {
                Some(g) => {
                    let _ = std::fs::remove_file(self.body_path(&hash, g));
                }
                None => self.remove_bodies(&hash),
            }
            gone.then_some(generation)
        })
        .await?;
        Ok(match removed {
            Some(generation) => PurgeOutcome::Purged(generation.map(CacheEntryId::new)),
            None => PurgeOutcome::NotFound,
        })
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _: &SpanHandle,
    ) -> Result<bool> {
        let bin = key.combined_bin();
        let hash = hex::encode(bin);
        let serialized = meta.serialize()?;
        let decoded = Decoded::of(meta);
        blocking(move || -> std::io::Result<bool> {
            let Some((mut sidecar, _)) = self.read_committed(&hash) else {
                return Ok(false);
            };
            sidecar.meta = serialized;
            let tmp = self.staged_sidecar(&hash, &sidecar)?;
            let _sidecars = self.lock_sidecars();
            // Only over the generation that was read: a purge or a new commit since wins.
            let current = self.current_sidecar(&hash).map(|s| s.generation);
            if current != Some(sidecar.generation) {
                let _ = std::fs::remove_file(&tmp);
                return Ok(false);
            }
            std::fs::rename(&tmp, self.meta_path(&hash))?;
            let mut hot = self.lock_hot();
            if let Some(entry) = hot.entries.get(&bin).cloned() {
                if entry.generation == sidecar.generation {
                    let refreshed = HotEntry::decoded(
                        sidecar.meta,
                        decoded,
                        entry.body.clone(),
                        sidecar.generation,
                    );
                    hot.insert(bin, refreshed);
                }
            }
            Ok(true)
        })
        .await?
        .map_err(|e| internal("cache meta update failed", e))
    }

    fn support_streaming_partial_write(&self) -> bool {
        true
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync + 'static) {
        self
    }
}

mod fill;
mod hit;
mod inventory;
#[cfg(test)]
mod tests;
