//! The disk cache: pingora-cache storage on local disk (`disk`), body verification
//! (`verify`), keys (`key`), lifetimes (`policy`), and `Cache`, the pieces pingora-cache
//! wants as `'static`, built once at start.

pub mod access;
pub mod admission;
pub mod disk;
mod hot;
pub mod inventory;
pub mod key;
pub mod pointer;
pub mod policy;
mod record;
mod sidecar;
pub mod synthetic;
pub mod verify;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use log::{info, warn};
use pingora::cache::eviction::lru::Manager;
use pingora::cache::eviction::{CacheEntryId, CacheEntryKey, EvictionManager};
use pingora::cache::key::CacheHashKey;
use pingora::cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora::cache::CacheKey;
use pingora::http::ResponseHeader;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::config::CacheConfig;
use access::PRIVATE_MARK;
pub use disk::{DiskStorage, ScannedEntry};

pub use policy::TtlPolicy;

/// LRU shards. pingora evicts from a randomly chosen shard, which is only roughly LRU with
/// few entries per shard; one shard keeps eviction exactly least-recently-used.
const EVICTION_SHARDS: usize = 1;
/// How long a waiting request trusts a fill's lock before fetching itself. With streaming
/// partial writes the lock is released when the fill's headers arrive.
const LOCK_AGE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the LRU order is saved while running (it is saved at shutdown too), so a crash
/// loses at most this much of it.
const INDEX_SAVE_EVERY: Duration = Duration::from_secs(600);

/// The cache's long-lived parts.
pub struct Cache {
    pub storage: &'static DiskStorage,
    pub eviction: &'static Manager<EVICTION_SHARDS>,
    pub lock: &'static CacheKeyLockImpl,
    pub ttl: TtlPolicy,
    /// Larger objects are served uncached (`cache.max_object_size`).
    pub max_object_size: usize,
    /// What the cache may hold on disk (`cache.max_size`).
    pub max_size: u64,
    /// Who may read content filled with credentials.
    pub access: access::AccessBook,
    /// Tag pointers read or written by this process, in front of their records on disk.
    pointers: pointer::PointerMemo,
    /// Which cold fills may start (`cache.max_fills`, room on the disk).
    pub fills: std::sync::Arc<admission::FillGate>,
    /// Where the eviction manager's state is saved (`cache.dir/v1/index`).
    index_dir: PathBuf,
    /// The background scan that reconciles the LRU with the disk, and how far it got.
    pub scan: std::sync::Arc<ScanProgress>,
}

/// A fresh entry held in memory, answered without pingora-cache's lookup (`Cache::hot_hit`,
/// `proxy::hot`, which decides who may read one filled with credentials).
pub struct HotHit {
    entry: std::sync::Arc<hot::HotEntry>,
    /// When it was made (a plain meta was never revalidated, so its age counts from here).
    created: SystemTime,
}

impl HotHit {
    /// The stored response as pingora-cache answers a whole hit with it: HTTP/1.1, with its
    /// `Age` and, for a 200 of known length, `Accept-Ranges: bytes` (its range filter's
    /// answer to a request without `Range`). The mirror's internal headers are still in it,
    /// for the proxy to strip as on every hit.
    pub fn response_header(&self) -> ResponseHeader {
        let mut header = self.entry.header().clone();
        // Inserting a number or a static word into a header never fails.
        let _ = header.insert_header(http::header::AGE, self.age());
        if header.status == http::StatusCode::OK
            && header.headers.contains_key(http::header::CONTENT_LENGTH)
        {
            let _ = header.insert_header(http::header::ACCEPT_RANGES, "bytes");
        }
        header.set_version(http::Version::HTTP_11);
        header
    }

    /// The entry's `Age` now, seconds.
    pub fn age(&self) -> u64 {
        SystemTime::now()
            .duration_since(self.created)
            .unwrap_or_default()
            .as_secs()
    }

    /// The lasting part of the entry's answer on the wire (everything but what changes from
    /// one hit to the next), made by `make` on the first hit of this copy and kept with it.
    pub fn wire_head(&self, make: impl FnOnce(&HotHit) -> bytes::Bytes) -> bytes::Bytes {
        self.entry.wire_head(|| make(self))
    }

    /// The repository it was filled through with credentials (`PRIVATE_MARK`), if it was.
    pub fn private_mark(&self) -> Option<&http::HeaderValue> {
        self.entry.header().headers.get(PRIVATE_MARK)
    }

    pub fn body(&self) -> bytes::Bytes {
        self.entry.body.clone()
    }
}

/// The start-up work beside serving, as `/stats` shows it.
#[derive(Debug, Default)]
pub struct ScanProgress {
    /// 0: the saved index is loading, 1: no scan needed (the index was saved at a clean
    /// stop), 2: the scan is running, 3: done.
    state: std::sync::atomic::AtomicU8,
    /// Entries the scan has met so far.
    pub scanned: std::sync::atomic::AtomicU64,
    /// Entries it admitted that the loaded index did not know.
    pub admitted: std::sync::atomic::AtomicU64,
    /// The index was saved at a clean stop: no scan is needed once it is loaded.
    clean: bool,
}

impl ScanProgress {
    /// `loading` (the index), `skipped` (no scan needed), `running` or `done`.
    pub fn state(&self) -> &'static str {
        match self.state.load(Ordering::Acquire) {
            0 => "loading",
            1 => "skipped",
            2 => "running",
            _ => "done",
        }
    }
}

/// The file whose presence says the index was saved by a clean stop with no other process
/// on the directory: the next start may trust the index without scanning.
const CLEAN_MARK: &str = "clean";

impl Cache {
    /// Opens the directory: nothing is read but the part files of fills that died, so a
    /// cache of millions of entries serves at once. The keeper then fills the LRU from the
    /// index saved at the last stop and, unless that index was saved at a clean stop (a
    /// crash, an upgrade's hand-over, no index at all), scans the disk, admitting what the
    /// index missed (`Keeper`). Lookups read the disk either way, so what is served is right
    /// while the LRU catches up. Blocking: call once at start.
    pub fn open(config: &CacheConfig) -> std::io::Result<Cache> {
        let storage: &'static DiskStorage = Box::leak(Box::new(DiskStorage::open(&config.dir)?));
        let limit = usize::try_from(config.max_size).unwrap_or(usize::MAX);
        let eviction: &'static Manager<EVICTION_SHARDS> =
            Box::leak(Box::new(Manager::with_capacity(limit, 1 << 16)));
        let index_dir = config.dir.join("v1").join("index");
        storage.clear_abandoned_parts()?;
        // Consumed at once: from now on a crash must rescan.
        let clean = std::fs::remove_file(index_dir.join(CLEAN_MARK)).is_ok();
        storage.set_eviction(eviction);
        let scan = std::sync::Arc::new(ScanProgress {
            clean,
            ..Default::default()
        });
        let lock: &'static CacheKeyLockImpl = Box::leak(CacheLock::new_boxed(LOCK_AGE_TIMEOUT));
        Ok(Cache {
            storage,
            eviction,
            lock,
            max_object_size: usize::try_from(config.max_object_size).unwrap_or(usize::MAX),
            max_size: config.max_size,
            ttl: TtlPolicy {
                tag_ttl: config.tag_ttl,
                stale_for: config.stale_for,
            },
            access: access::AccessBook::with_lives(config.verdict_ttl, config.stale_for),
            pointers: pointer::PointerMemo::default(),
            fills: admission::FillGate::new(config.dir.clone(), config.max_fills),
            index_dir,
            scan,
        })
    }

    /// The background housekeeping: the reconciling scan when one is needed, the orphan
    /// sweep, the index saves (call once). `handing_over` is set when this process hands its
    /// listeners to a new one: the new process owns the index from then on.
    pub fn keeper(&self, handing_over: std::sync::Arc<AtomicBool>) -> Keeper {
        Keeper {
            storage: self.storage,
            eviction: self.eviction,
            index_dir: self.index_dir.clone(),
            scan: self.scan.clone(),
            handing_over,
            saving: Default::default(),
        }
    }

    /// The committed entry for `key` when it can be answered from memory as it stands: in
    /// the hot set, no fill of it in progress, fresh, its meta plain (see `hot`). Counted as
    /// a read in the LRU, as pingora-cache counts a hit (before its hit filter decides).
    pub fn hot_hit(&self, key: &CacheKey) -> Option<HotHit> {
        // The key is hashed once: the compact key carries the hash its combined form needs.
        let compact = key.to_compact();
        let entry = self.storage.hot_entry(&compact.combined_bin())?;
        let times = entry.plain()?;
        // pingora-cache's own test (`CacheMeta::is_fresh`).
        if times.fresh_until < SystemTime::now() {
            return None;
        }
        let id = CacheEntryId::new(entry.generation);
        let read = CacheEntryKey::from_entry_id(compact, Some(id));
        self.eviction
            .access(&read, entry.body.len(), times.fresh_until);
        Some(HotHit {
            entry,
            created: times.created,
        })
    }
}

/// Cache housekeeping beside serving: the reconciling scan after an unclean stop, the
/// removal of bodies that scan left for a live upgrade peer once `ORPHAN_GRACE` has passed,
/// and the LRU index saved every `INDEX_SAVE_EVERY`. The save at a stop is the stop's
/// (`stop::QuietStop`): only once nothing can commit any more does the index hold it all.
/// Clones share one save at a time.
#[derive(Clone)]
pub struct Keeper {
    storage: &'static DiskStorage,
    eviction: &'static Manager<EVICTION_SHARDS>,
    index_dir: PathBuf,
    scan: std::sync::Arc<ScanProgress>,
    handing_over: std::sync::Arc<AtomicBool>,
    /// Held for each save: two at once would write the same files.
    saving: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl Keeper {
    /// Fills the LRU from the index saved at the last stop (entries a live fill admitted
    /// meanwhile stay where they are: the loaded ones go behind them, as older), then evicts
    /// down to `max_size` if it shrank. Returns whether an index was loaded.
    async fn load_index(&self) -> bool {
        let started = std::time::Instant::now();
        let before = self.eviction.total_items();
        let loaded = match self.index_dir.to_str().filter(|_| self.index_dir.exists()) {
            Some(dir) => self.eviction.load(dir).await.is_ok(),
            None => false,
        };
        let found = self.eviction.total_items().saturating_sub(before);
        let (eviction, storage) = (self.eviction, self.storage);
        let limit = self.eviction.weight_limit();
        let evicted = tokio::task::spawn_blocking(move || {
            let mut evicted = 0;
            while eviction.total_size() > limit {
                let Some(victim) = eviction.peek_lru(0) else {
                    break;
                };
                eviction.remove((&victim).into());
                storage.remove_entry(victim.key());
                evicted += 1;
            }
            evicted
        })
        .await
        .unwrap_or(0);
        info!(
            "cache index: {found} entries loaded in {:.2}s ({}); {evicted} evicted to fit {limit} bytes",
            started.elapsed().as_secs_f64(),
            match (found > 0, self.scan.clean) {
                (true, true) => "saved at a clean stop",
                (true, false) => "not saved at a clean stop: the disk is scanned next",
                (false, _) => "none found: the disk is scanned next",
            },
        );
        loaded && found > 0
    }

    /// The start-up work beside serving: the index loaded, then the scan unless the index
    /// was saved at a clean stop. Returns the unnamed bodies the scan left for later.
    async fn settle(&self) -> Vec<PathBuf> {
        if self.scan.state() == "loading" {
            let trusted = self.load_index().await && self.scan.clean;
            self.scan
                .state
                .store(if trusted { 1 } else { 2 }, Ordering::Release);
        }
        if self.scan.state() == "running" {
            return self.reconcile().await;
        }
        Vec::new()
    }

    /// Saves the eviction manager's state (LRU order and weights) for the next start.
    pub async fn save_index(&self) -> bool {
        let Some(dir) = self.index_dir.to_str() else {
            return false;
        };
        let _one_at_a_time = self.saving.lock().await;
        match self.eviction.save(dir).await {
            Ok(()) => {
                info!(
                    "cache index saved ({} entries)",
                    self.eviction.total_items()
                );
                true
            }
            Err(e) => {
                warn!("cache index not saved to {dir}: {e}");
                false
            }
        }
    }

    /// At a stop: the index, and the mark that lets the next start trust it, unless a new
    /// process took over (it owns the index now; this one's would miss its entries). Only
    /// once nothing commits any more: an entry committed after it would be missing from an
    /// index the next start trusts.
    pub async fn save_at_stop(&self) {
        if self.handing_over.load(Ordering::Acquire) {
            info!("cache index left to the process taking over");
            return;
        }
        match self.scan.state() {
            // Half loaded: the index on disk is still the whole one.
            "loading" => return,
            // The LRU is still incomplete: the next start must scan too.
            "running" => {
                self.save_index().await;
                return;
            }
            _ => {}
        }
        if self.save_index().await {
            let mark = self.index_dir.join(CLEAN_MARK);
            if let Err(e) = std::fs::write(&mark, b"saved at a clean stop\n") {
                warn!("cache index mark {} not written: {e}", mark.display());
            }
        }
    }

    /// Walks every sidecar (on the blocking pool), admitting to the LRU what it does not
    /// hold: entries committed after the index was saved, or all of them without an index.
    /// Returns the unnamed bodies too young to remove yet.
    async fn reconcile(&self) -> Vec<PathBuf> {
        let (storage, eviction, progress) = (self.storage, self.eviction, self.scan.clone());
        let started = std::time::Instant::now();
        let scanned = tokio::task::spawn_blocking(move || {
            let now = SystemTime::now();
            storage.scan(&mut |entry| {
                progress.scanned.fetch_add(1, Ordering::Relaxed);
                let key = entry.entry_key();
                if eviction.peek(&key) {
                    return;
                }
                progress.admitted.fetch_add(1, Ordering::Relaxed);
                for victim in eviction.admit(key, entry.size, now) {
                    storage.remove_entry(victim.key());
                }
            })
        })
        .await;
        self.scan.state.store(3, Ordering::Release);
        match scanned {
            Ok(Ok(scan)) => {
                info!(
                    "cache scan done in {:.1}s: {} entries on disk, {} admitted that the index \
                     did not hold; {} entries, {} bytes",
                    started.elapsed().as_secs_f64(),
                    self.scan.scanned.load(Ordering::Relaxed),
                    self.scan.admitted.load(Ordering::Relaxed),
                    self.eviction.total_items(),
                    self.eviction.total_size()
                );
                scan.young_orphans
            }
            Ok(Err(e)) => {
                warn!("cache scan failed: {e}; entries it did not reach are read on demand");
                Vec::new()
            }
            Err(e) => {
                warn!("cache scan failed: {e}");
                Vec::new()
            }
        }
    }

    async fn sweep_orphans(&self, orphans: Vec<PathBuf>) {
        if orphans.is_empty() {
            return;
        }
        let storage = self.storage;
        if let Ok(n) = tokio::task::spawn_blocking(move || storage.remove_orphans(&orphans)).await {
            info!("cache: {n} orphan bodies removed");
        }
    }
}

#[async_trait]
impl BackgroundService for Keeper {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // At a stop the housekeeping ends; the last save is the stop's (see the type).
        let mut orphans = tokio::select! {
            found = self.settle() => found,
            _ = shutdown.changed() => return,
        };
        let sweep = tokio::time::sleep(disk::ORPHAN_GRACE);
        tokio::pin!(sweep);
        let mut swept = orphans.is_empty();
        let mut saves = tokio::time::interval(INDEX_SAVE_EVERY);
        saves.tick().await;
        loop {
            tokio::select! {
                _ = &mut sweep, if !swept => {
                    swept = true;
                    self.sweep_orphans(std::mem::take(&mut orphans)).await;
                }
                _ = saves.tick() => { self.save_index().await; }
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use pingora::cache::eviction::{CacheEntryKey, EvictionManager};
    use pingora::cache::trace::Span;
    use pingora::cache::{CacheKey, CacheMeta, Storage};
    use pingora::http::ResponseHeader;

    use super::*;

    fn config(dir: &std::path::Path, max_size: u64) -> CacheConfig {
        CacheConfig {
            dir: dir.to_owned(),
            max_size,
            tag_ttl: Duration::from_secs(60),
            stale_for: Duration::from_secs(60),
            max_object_size: max_size,
            max_fills: 16,
            verdict_ttl: Duration::from_secs(60),
        }
    }

    /// Fills entry `k<i>` with 1000 bytes; returns its identity for the LRU.
    async fn fill_1000(cache: &Cache, i: u8) -> CacheEntryKey {
        let span = Span::inactive().handle();
        let now = std::time::SystemTime::now();
        let meta = CacheMeta::new(now, now, 0, 0, ResponseHeader::build(200, None).unwrap());
        let key = CacheKey::new(format!("k{i}"), "t");
        let mut miss = cache
            .storage
            .get_miss_handler(&key, &meta, &span)
            .await
            .unwrap();
        let id = miss.entry_id();
        miss.write_body(Bytes::from(vec![i; 1000]), true)
            .await
            .unwrap();
        miss.finish().await.unwrap();
        CacheEntryKey::from_entry_id(key.to_compact(), id)
    }

    /// Opens the cache as the server does: the saved index, then the keeper's scan when the
    /// index was not saved at a clean stop.
    async fn opened(dir: &std::path::Path, max_size: u64) -> Cache {
        let cache = Cache::open(&config(dir, max_size)).unwrap();
        cache.keeper(Default::default()).settle().await;
        cache
    }

    /// Stops the cache as a clean shutdown does: the index saved, with its mark.
    async fn stopped(cache: &Cache) {
        cache.keeper(Default::default()).save_at_stop().await;
    }

    /// The LRU's keys, least recently used first (drains it).
    fn drain_order(cache: &Cache) -> Vec<CacheEntryKey> {
        let mut order = Vec::new();
        while let Some(key) = cache.eviction.peek_lru(0) {
            cache.eviction.remove((&key).into());
            order.push(key);
        }
        order
    }

    #[tokio::test]
    async fn restart_keeps_lru_order() {
        let dir = tempfile::tempdir().unwrap();
        let first = opened(dir.path(), 1 << 20).await;
        let now = std::time::SystemTime::now();
        let mut keys = Vec::new();
        for i in 0..8 {
            let entry = fill_1000(&first, i).await;
            // What pingora does after a fill.
            first.eviction.admit(entry.clone(), 1000, now);
            keys.push(entry);
        }
        // Hits reorder it: odd entries were read again, in reverse.
        for entry in keys.iter().rev().step_by(2) {
            first.eviction.access(entry, 1000, now);
        }
        let mut expected: Vec<_> = keys.iter().step_by(2).cloned().collect();
        expected.extend(keys.iter().rev().step_by(2).cloned());
        stopped(&first).await;

        let restarted = opened(dir.path(), 1 << 20).await;
        assert_eq!(
            restarted.scan.state(),
            "skipped",
            "a clean stop's index is trusted"
        );
        assert_eq!(drain_order(&restarted), expected);
        // The mark was consumed: the next start (a crash, say) scans, and keeps the order.
        let crashed = opened(dir.path(), 1 << 20).await;
        assert_eq!(crashed.scan.state(), "done");
        assert_eq!(crashed.scan.admitted.load(Ordering::Relaxed), 0);
        assert_eq!(drain_order(&crashed), expected);
        // Shrunk: the least recently used go first, not whatever the scan met first.
        let smaller = opened(dir.path(), 6000).await;
        assert_eq!(drain_order(&smaller), expected[2..]);
        // Without a saved order every entry is still admitted, by the scan.
        std::fs::remove_dir_all(dir.path().join("v1/index")).unwrap();
        let unsaved = Cache::open(&config(dir.path(), 1 << 20)).unwrap();
        assert_eq!(unsaved.eviction.total_items(), 0, "nothing is read at open");
        unsaved.keeper(Default::default()).settle().await;
        assert_eq!(unsaved.scan.state(), "done");
        assert_eq!(unsaved.eviction.total_items(), 6);
    }

    #[tokio::test]
    async fn restart_admits_what_is_on_disk_and_evicts_to_fit() {
        let dir = tempfile::tempdir().unwrap();
        let first = opened(dir.path(), 1 << 20).await;
        for i in 0..3 {
            fill_1000(&first, i).await;
        }
        let same = opened(dir.path(), 1 << 20).await;
        assert_eq!(
            (same.eviction.total_items(), same.eviction.total_size()),
            (3, 3000)
        );
        // The operator shrank max_size: the surplus goes at start.
        let smaller = opened(dir.path(), 2500).await;
        assert_eq!(
            (
                smaller.eviction.total_items(),
                smaller.eviction.total_size()
            ),
            (2, 2000)
        );
        let left = opened(dir.path(), 1 << 20).await;
        assert_eq!(
            left.eviction.total_items(),
            2,
            "evicted entries were not removed from disk"
        );
    }
}
