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
pub mod verify;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use log::{info, warn};
use pingora::cache::eviction::lru::Manager;
use pingora::cache::eviction::{CacheEntryKey, EvictionManager};
use pingora::cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::config::CacheConfig;
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
    /// Unnamed bodies the start-up scan found too young to remove.
    young_orphans: Mutex<Vec<PathBuf>>,
}

impl Cache {
    /// Opens the directory, and admits what is already there to the LRU in the order saved at
    /// the last shutdown (entries the saved order does not know come last, as most recent),
    /// evicting down to `max_size` if it shrank. Blocking: call once at start.
    pub fn open(config: &CacheConfig) -> std::io::Result<Cache> {
        let storage: &'static DiskStorage = Box::leak(Box::new(DiskStorage::open(&config.dir)?));
        let limit = usize::try_from(config.max_size).unwrap_or(usize::MAX);
        let eviction: &'static Manager<EVICTION_SHARDS> =
            Box::leak(Box::new(Manager::with_capacity(limit, 1 << 16)));
        let index_dir = config.dir.join("v1").join("index");
        let scan = storage.scan()?;
        let (count, bytes) = (
            scan.entries.len(),
            scan.entries.iter().map(|e| e.size).sum::<usize>(),
        );
        let mut on_disk: HashMap<CacheEntryKey, usize> = scan
            .entries
            .iter()
            .map(|e| (e.entry_key(), e.size))
            .collect();
        let saved = saved_order(&index_dir);
        let mut ordered = Vec::with_capacity(on_disk.len());
        for key in saved {
            if let Some(size) = on_disk.remove(&key) {
                ordered.push((key, size));
            }
        }
        let restored = ordered.len();
        // Entries the saved order does not know were committed after it was saved.
        ordered.extend(
            scan.entries
                .iter()
                .map(ScannedEntry::entry_key)
                .filter_map(|k| on_disk.remove(&k).map(|size| (k, size))),
        );
        let mut evicted = 0;
        for (key, size) in ordered {
            for victim in eviction.admit(key, size, SystemTime::now()) {
                storage.remove_entry(victim.key());
                evicted += 1;
            }
        }
        storage.set_eviction(eviction);
        info!(
            "cache {}: {count} entries, {bytes} bytes found ({restored} in their saved LRU \
             order); {evicted} evicted to fit {} bytes",
            config.dir.display(),
            config.max_size
        );
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
            young_orphans: Mutex::new(scan.young_orphans),
        })
    }

    /// The background housekeeping: the orphan sweep and the index saves (call once).
    pub fn keeper(&self) -> Keeper {
        let orphans =
            std::mem::take(&mut *self.young_orphans.lock().unwrap_or_else(|p| p.into_inner()));
        Keeper {
            storage: self.storage,
            eviction: self.eviction,
            index_dir: self.index_dir.clone(),
            orphans: Mutex::new(orphans),
        }
    }
}

/// The LRU order saved at the last shutdown, least recently used first (empty when none was
/// saved or it cannot be read: the scan's order then stands).
fn saved_order(dir: &Path) -> Vec<CacheEntryKey> {
    let Some(dir) = dir.to_str() else {
        return Vec::new();
    };
    let saved = Manager::<EVICTION_SHARDS>::with_capacity(usize::MAX, 1 << 16);
    // Pingora's loader reads on a tokio blocking pool; this runs before any runtime exists
    // (and, in tests, inside one), so it gets a runtime of its own on its own thread.
    let loaded = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread().build().ok()?;
                runtime.block_on(saved.load(dir)).ok()
            })
            .join()
            .ok()
            .flatten()
    });
    if loaded.is_none() {
        warn!("cache index in {dir} could not be read: entries start in scan order");
    }
    let mut order = Vec::with_capacity(saved.total_items());
    while let Some(key) = saved.peek_lru(0) {
        saved.remove((&key).into());
        order.push(key);
    }
    order
}

/// Cache housekeeping beside serving: removes the bodies the start-up scan left for a live
/// upgrade peer once `ORPHAN_GRACE` has passed, and saves the LRU order every
/// `INDEX_SAVE_EVERY` and at shutdown.
pub struct Keeper {
    storage: &'static DiskStorage,
    eviction: &'static Manager<EVICTION_SHARDS>,
    index_dir: PathBuf,
    orphans: Mutex<Vec<PathBuf>>,
}

impl Keeper {
    /// Saves the eviction manager's state (LRU order and weights) for the next start.
    pub async fn save_index(&self) {
        let Some(dir) = self.index_dir.to_str() else {
            return;
        };
        match self.eviction.save(dir).await {
            Ok(()) => info!(
                "cache index saved ({} entries)",
                self.eviction.total_items()
            ),
            Err(e) => warn!("cache index not saved to {dir}: {e}"),
        }
    }

    async fn sweep_orphans(&self) {
        let orphans = std::mem::take(&mut *self.orphans.lock().unwrap_or_else(|p| p.into_inner()));
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
        let sweep = tokio::time::sleep(disk::ORPHAN_GRACE);
        tokio::pin!(sweep);
        let mut swept = false;
        let mut saves = tokio::time::interval(INDEX_SAVE_EVERY);
        saves.tick().await;
        loop {
            tokio::select! {
                _ = &mut sweep, if !swept => {
                    swept = true;
                    self.sweep_orphans().await;
                }
                _ = saves.tick() => self.save_index().await,
                _ = shutdown.changed() => {
                    self.save_index().await;
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use pingora::cache::eviction::EvictionManager;
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
        let first = Cache::open(&config(dir.path(), 1 << 20)).unwrap();
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
        first.keeper().save_index().await;

        let restarted = Cache::open(&config(dir.path(), 1 << 20)).unwrap();
        assert_eq!(drain_order(&restarted), expected);
        // Shrunk: the least recently used go first, not whatever the scan met first.
        let smaller = Cache::open(&config(dir.path(), 6000)).unwrap();
        assert_eq!(drain_order(&smaller), expected[2..]);
        // Without a saved order every entry is still admitted.
        std::fs::remove_dir_all(dir.path().join("v1/index")).unwrap();
        let unsaved = Cache::open(&config(dir.path(), 1 << 20)).unwrap();
        assert_eq!(unsaved.eviction.total_items(), 6);
    }

    #[tokio::test]
    async fn restart_admits_what_is_on_disk_and_evicts_to_fit() {
        let dir = tempfile::tempdir().unwrap();
        let first = Cache::open(&config(dir.path(), 1 << 20)).unwrap();
        for i in 0..3 {
            fill_1000(&first, i).await;
        }
        let same = Cache::open(&config(dir.path(), 1 << 20)).unwrap();
        assert_eq!(
            (same.eviction.total_items(), same.eviction.total_size()),
            (3, 3000)
        );
        // The operator shrank max_size: the surplus goes at start.
        let smaller = Cache::open(&config(dir.path(), 2500)).unwrap();
        assert_eq!(
            (
                smaller.eviction.total_items(),
                smaller.eviction.total_size()
            ),
            (2, 2000)
        );
        let left = Cache::open(&config(dir.path(), 1 << 20)).unwrap();
        assert_eq!(
            left.eviction.total_items(),
            2,
            "evicted entries were not removed from disk"
        );
    }
}
