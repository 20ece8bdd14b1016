//! The disk cache: pingora-cache storage on local disk (`disk`), body verification
//! (`verify`), keys (`key`), lifetimes (`policy`), and `Cache`, the pieces pingora-cache
//! wants as `'static`, built once at start.

pub mod access;
pub mod disk;
pub mod key;
pub mod policy;
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
            ttl: TtlPolicy {
                tag_ttl: config.tag_ttl,
            },
            access: access::AccessBook::default(),
        })
    }
}
