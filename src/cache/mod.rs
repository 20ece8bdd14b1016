//! The disk cache: pingora-cache storage on local disk (`disk`), body verification
//! (`verify`), keys (`key`), lifetimes (`policy`), and `Cache`, the pieces pingora-cache
//! wants as `'static`, built once at start.

pub mod access;
pub mod disk;
mod hot;
pub mod key;
pub mod policy;
mod sidecar;
pub mod verify;

use std::time::{Duration, SystemTime};

use log::info;
use pingora::cache::eviction::lru::Manager;
use pingora::cache::eviction::{CacheEntryKey, EvictionManager};
use pingora::cache::lock::{CacheKeyLockImpl, CacheLock};

use crate::config::CacheConfig;
pub use disk::DiskStorage;
pub use policy::TtlPolicy;

/// LRU shards. pingora evicts from a randomly chosen shard, which is only roughly LRU with
/// few entries per shard; one shard keeps eviction exactly least-recently-used.
const EVICTION_SHARDS: usize = 1;
/// How long a waiting request trusts a fill's lock before fetching itself. With streaming
/// partial writes the lock is released when the fill's headers arrive.
const LOCK_AGE_TIMEOUT: Duration = Duration::from_secs(30);

/// The cache's long-lived parts.
pub struct Cache {
    pub storage: &'static DiskStorage,
    pub eviction: &'static Manager<EVICTION_SHARDS>,
    pub lock: &'static CacheKeyLockImpl,
    pub ttl: TtlPolicy,
    /// Larger objects are served uncached (`cache.max_object_size`).
    pub max_object_size: usize,
    /// Who may read content filled with credentials.
    pub access: access::AccessBook,
}

impl Cache {
    /// Opens the directory, and admits what is already there to the LRU (evicting down to
    /// `max_size` if it shrank). Blocking: call once at start.
    pub fn open(config: &CacheConfig) -> std::io::Result<Cache> {
        let storage: &'static DiskStorage = Box::leak(Box::new(DiskStorage::open(&config.dir)?));
        let limit = usize::try_from(config.max_size).unwrap_or(usize::MAX);
        let eviction: &'static Manager<EVICTION_SHARDS> =
            Box::leak(Box::new(Manager::with_capacity(limit, 1 << 16)));
        let entries = storage.scan()?;
        let (count, bytes) = (entries.len(), entries.iter().map(|e| e.size).sum::<usize>());
        let mut evicted = 0;
        for entry in entries {
            let victims = eviction.admit(
                CacheEntryKey::key_only(entry.key),
                entry.size,
                SystemTime::now(),
            );
            for victim in victims {
                storage.remove_entry(victim.key());
                evicted += 1;
            }
        }
        info!(
            "cache {}: {count} entries, {bytes} bytes found; {evicted} evicted to fit {} bytes",
            config.dir.display(),
            config.max_size
        );
        let lock: &'static CacheKeyLockImpl = Box::leak(CacheLock::new_boxed(LOCK_AGE_TIMEOUT));
        Ok(Cache {
            storage,
            eviction,
            lock,
            max_object_size: usize::try_from(config.max_object_size).unwrap_or(usize::MAX),
            ttl: TtlPolicy {
                tag_ttl: config.tag_ttl,
                stale_for: config.stale_for,
            },
            access: access::AccessBook::default(),
        })
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
        }
    }

    #[tokio::test]
    async fn restart_admits_what_is_on_disk_and_evicts_to_fit() {
        let dir = tempfile::tempdir().unwrap();
        let first = Cache::open(&config(dir.path(), 1 << 20)).unwrap();
        let span = Span::inactive().handle();
        let now = std::time::SystemTime::now();
        for i in 0..3 {
            let meta = CacheMeta::new(now, now, 0, 0, ResponseHeader::build(200, None).unwrap());
            let key = CacheKey::new(format!("k{i}"), "t");
            let mut miss = first
                .storage
                .get_miss_handler(&key, &meta, &span)
                .await
                .unwrap();
            miss.write_body(Bytes::from(vec![i as u8; 1000]), true)
                .await
                .unwrap();
            miss.finish().await.unwrap();
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
