//! Records: small facts the mirror keeps beside the content it caches (tag pointers,
//! repository verdicts), stored as tiny entries of the disk cache under keys no request path
//! reaches. They survive restarts and upgrades, are evicted like the rest, and cost a memory
//! lookup (the hot set) when read.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use log::warn;
use pingora::cache::eviction::{CacheEntryKey, EvictionManager};
use pingora::cache::storage::{PurgeTarget, PurgeType};
use pingora::cache::trace::Span;
use pingora::cache::{CacheKey, CacheMeta, Storage};
use pingora::http::ResponseHeader;

use super::Cache;

/// The header of a verdict record: `public` or `private`.
pub(super) const VERDICT: &str = "x-pullthrough-verdict";

impl Cache {
    /// A repository's last verdict kept on disk (`key::verdict_key`) and how old it is: the
    /// stand-in when the upstream cannot be asked and the process has none in memory (it
    /// restarted during an outage).
    pub async fn read_verdict(&self, key: &CacheKey) -> Option<(bool, Duration)> {
        let meta = self.read_record(key).await?;
        let public = meta.headers().get(VERDICT)?.as_bytes() == b"public";
        Some((public, meta.created().elapsed().unwrap_or_default()))
    }

    /// Keeps a repository's verdict on disk, replacing the last one.
    pub async fn write_verdict(&self, key: &CacheKey, repository: &str, public: bool) {
        let word = if public { "public" } else { "private" };
        let Ok(mut header) = ResponseHeader::build(200, Some(2)) else {
            return;
        };
        let label = super::inventory::Label::of_verdict(repository).to_string();
        if header.insert_header(VERDICT, word).is_err()
            || header
                .insert_header(super::inventory::SOURCE_HEADER, label)
                .is_err()
        {
            return;
        }
        let now = SystemTime::now();
        let meta = CacheMeta::new(now + self.ttl.stale_for, now, 0, 0, header);
        self.write_record(key, &meta, Bytes::from_static(word.as_bytes()))
            .await;
    }

    /// The meta of the record under `key`, if any (however old).
    pub async fn read_record(&self, key: &CacheKey) -> Option<CacheMeta> {
        let span = Span::inactive().handle();
        let (meta, _) = self.storage.lookup(key, &span).await.ok()??;
        Some(meta)
    }

    /// Stores a record under `key`, replacing the one there. It weighs in the LRU what the
    /// start-up scan will weigh it: its body's length.
    pub async fn write_record(&self, key: &CacheKey, meta: &CacheMeta, body: Bytes) {
        let span = Span::inactive().handle();
        let weight = body.len();
        let stored = async {
            let mut miss = self.storage.get_miss_handler(key, meta, &span).await?;
            let id = miss.entry_id();
            miss.write_body(body, true).await?;
            miss.finish().await?;
            Ok::<_, Box<pingora::Error>>(id)
        };
        let id = match stored.await {
            Ok(id) => id,
            Err(e) => {
                return warn!(
                    "record {} not stored: {e}",
                    key.primary_key_str().unwrap_or("")
                )
            }
        };
        let entry = CacheEntryKey::from_entry_id(key.to_compact(), id);
        for victim in self.eviction.admit(entry, weight, meta.fresh_until()) {
            let target = PurgeTarget::Exact(&victim);
            if let Err(e) = self.storage.purge(target, PurgeType::Eviction, &span).await {
                warn!("cannot evict {victim}: {e}");
            }
        }
    }
}
