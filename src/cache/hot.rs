//! The hot set: small committed entries (manifests, configs) held in memory as well as on
//! disk, so their hits never wait on the blocking pool (a thread hand-off per file operation
//! dominated the manifest hit path when measured). The disk stays the record.

use std::collections::HashMap;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use once_cell::sync::{Lazy, OnceCell};
use pingora::cache::key::HashBinary;
use pingora::cache::CacheMeta;
use pingora::http::ResponseHeader;
use pingora::prelude::*;

/// Entries with bodies up to this size are kept in memory.
pub(super) const HOT_BODY_MAX: usize = 256 * 1024;
/// Memory the hot set may hold, bodies and metadata.
const HOT_BUDGET: usize = 64 * 1024 * 1024;

/// A small committed entry held in memory as well as on disk.
pub struct HotEntry {
    /// The serialized meta, as on disk.
    meta: (Vec<u8>, Vec<u8>),
    /// Its response header, decoded once: decoding the stored (zstd-compressed) header took a
    /// tenth of a manifest hit's CPU when it was done on every hit.
    header: ResponseHeader,
    /// Its times, when `CacheMeta::new` rebuilds the meta exactly (see `PlainMeta`).
    plain: Option<PlainMeta>,
    pub body: Bytes,
    /// The body generation this copy is of (the eviction manager's entry id).
    pub generation: u64,
    /// When it was last read (unix seconds; 0: not since it came in): an atomic store per
    /// hit, where a map of last reads would take a lock.
    pub last_read: AtomicU32,
    /// The lasting part of its answer on the wire, serialized by the express lane on first
    /// use (`HotHit::wire_head`).
    wire_head: OnceCell<Bytes>,
}

/// The stored form of a header-less 200, decoded beside the real internal meta on a hit
/// (pingora decodes both halves together) before the kept header replaces it.
static BARE_HEADER: Lazy<Option<Vec<u8>>> = Lazy::new(|| {
    let header = ResponseHeader::build(200, Some(0)).ok()?;
    let meta = CacheMeta::new(std::time::UNIX_EPOCH, std::time::UNIX_EPOCH, 0, 0, header);
    meta.serialize().ok().map(|(_, header)| header)
});

/// The times of a meta that `CacheMeta::new` makes again field for field: never revalidated
/// (`updated == created`), no variance, no epoch override. Every fill's meta is one; a tag
/// revalidated in place is not and is decoded from its stored form instead. Rebuilding skips
/// decoding the stored times and a stand-in header on every hit (a sixteenth of a manifest
/// hit's CPU).
#[derive(Debug, Clone, Copy)]
pub struct PlainMeta {
    pub fresh_until: SystemTime,
    pub created: SystemTime,
    stale_while_revalidate_sec: u32,
    stale_if_error_sec: u32,
}

impl PlainMeta {
    pub fn of(meta: &CacheMeta) -> Option<PlainMeta> {
        let plain = meta.updated() == meta.created()
            && meta.provenance() == meta.created()
            && meta.variance().is_none()
            && meta.epoch_override().is_none();
        plain.then(|| PlainMeta {
            fresh_until: meta.fresh_until(),
            created: meta.created(),
            stale_while_revalidate_sec: meta.stale_while_revalidate_sec(),
            stale_if_error_sec: meta.stale_if_error_sec(),
        })
    }

    fn rebuild(&self, header: ResponseHeader) -> CacheMeta {
        CacheMeta::new(
            self.fresh_until,
            self.created,
            self.stale_while_revalidate_sec,
            self.stale_if_error_sec,
            header,
        )
    }
}

/// What a hot entry keeps of its decoded meta.
pub struct Decoded {
    header: ResponseHeader,
    plain: Option<PlainMeta>,
}

impl Decoded {
    pub fn of(meta: &CacheMeta) -> Decoded {
        Decoded {
            header: meta.response_header_copy(),
            plain: PlainMeta::of(meta),
        }
    }
}

impl HotEntry {
    /// An entry from its stored meta, decoding it once.
    pub fn new(meta: (Vec<u8>, Vec<u8>), body: Bytes, generation: u64) -> Result<HotEntry> {
        let decoded = Decoded::of(&CacheMeta::deserialize(&meta.0, &meta.1)?);
        Ok(HotEntry::decoded(meta, decoded, body, generation))
    }

    /// An entry whose meta is at hand decoded as well as stored.
    pub fn decoded(
        meta: (Vec<u8>, Vec<u8>),
        decoded: Decoded,
        body: Bytes,
        generation: u64,
    ) -> Self {
        HotEntry {
            meta,
            header: decoded.header,
            plain: decoded.plain,
            body,
            generation,
            last_read: AtomicU32::new(0),
            wire_head: OnceCell::new(),
        }
    }

    /// The lasting part of its answer on the wire, made by `make` the first time.
    pub fn wire_head(&self, make: impl FnOnce() -> Bytes) -> Bytes {
        self.wire_head.get_or_init(make).clone()
    }

    /// The entry's meta for one hit.
    pub fn meta(&self) -> Result<CacheMeta> {
        if let Some(plain) = &self.plain {
            return Ok(plain.rebuild(self.header.clone()));
        }
        let Some(bare) = BARE_HEADER.as_deref() else {
            return CacheMeta::deserialize(&self.meta.0, &self.meta.1);
        };
        let mut meta = CacheMeta::deserialize(&self.meta.0, bare)?;
        *meta.response_header_mut() = self.header.clone();
        Ok(meta)
    }

    /// Its times, when its meta is rebuilt from them (see `PlainMeta`).
    pub fn plain(&self) -> Option<PlainMeta> {
        self.plain
    }

    /// The stored response header, decoded.
    pub fn header(&self) -> &ResponseHeader {
        &self.header
    }

    fn weight(&self) -> usize {
        // The decoded header weighs about what its stored form does.
        self.body.len() + self.meta.0.len() + 2 * self.meta.1.len()
    }
}

/// The in-memory copies of small entries, within `HOT_BUDGET`. It mirrors this process's
/// commits, purges and meta updates; entries on disk are read in on their first hit.
#[derive(Default)]
pub(super) struct HotSet {
    pub entries: HashMap<HashBinary, Arc<HotEntry>>,
    bytes: usize,
    /// Bumped by every commit, purge and meta update, so a lookup that read the disk before
    /// one of them does not put what it read back in.
    pub changes: u64,
}

impl HotSet {
    /// What a lookup read from disk, unless the cache changed since `seen`.
    pub fn fill(&mut self, hash: HashBinary, entry: HotEntry, seen: u64) {
        if self.changes == seen {
            self.put(hash, entry);
        }
    }

    pub fn insert(&mut self, hash: HashBinary, entry: HotEntry) {
        self.changes += 1;
        self.put(hash, entry);
    }

    pub fn remove(&mut self, hash: &HashBinary) {
        self.changes += 1;
        self.evict(hash);
    }

    fn put(&mut self, hash: HashBinary, entry: HotEntry) {
        self.evict(&hash);
        let weight = entry.weight();
        if weight > HOT_BUDGET {
            return;
        }
        while self.bytes + weight > HOT_BUDGET {
            // Any victim will do: the disk still has it.
            let Some(victim) = self.entries.keys().next().cloned() else {
                break;
            };
            self.evict(&victim);
        }
        self.bytes += weight;
        self.entries.insert(hash, Arc::new(entry));
    }

    fn evict(&mut self, hash: &HashBinary) {
        if let Some(old) = self.entries.remove(hash) {
            self.bytes -= old.weight();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;

    #[test]
    fn a_hit_meta_is_the_stored_meta() {
        let mut header = ResponseHeader::build(200, None).unwrap();
        header
            .insert_header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
            .unwrap();
        header
            .insert_header("Docker-Content-Digest", "sha256:abc")
            .unwrap();
        let created = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let stored = CacheMeta::new(created + Duration::from_secs(600), created, 5, 7, header);
        let entry = HotEntry::new(stored.serialize().unwrap(), Bytes::new(), 1).unwrap();
        assert!(BARE_HEADER.is_some(), "the stand-in header is built");
        assert!(
            entry.plain.is_some(),
            "a fill's meta is rebuilt, not decoded"
        );
        let decoded = Decoded::of(&stored);
        let by_header = HotEntry::decoded(stored.serialize().unwrap(), decoded, Bytes::new(), 1);
        assert!(by_header.plain.is_some());
        for hit in [entry.meta().unwrap(), by_header.meta().unwrap()] {
            assert_eq!(hit.fresh_until(), stored.fresh_until());
            assert_eq!(hit.created(), stored.created());
            assert_eq!(hit.updated(), stored.updated());
            assert_eq!(hit.stale_while_revalidate_sec(), 5);
            assert_eq!(hit.stale_if_error_sec(), 7);
            assert_eq!(hit.response_header().status, 200);
            assert_eq!(hit.headers(), stored.headers());
        }
    }

    #[test]
    fn a_meta_with_variance_is_decoded_whole() {
        let header = ResponseHeader::build(200, None).unwrap();
        let created = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut stored = CacheMeta::new(created + Duration::from_secs(60), created, 0, 0, header);
        stored.set_variance([7u8; 16]);
        let entry = HotEntry::new(stored.serialize().unwrap(), Bytes::new(), 1).unwrap();
        assert!(entry.plain.is_none(), "CacheMeta::new cannot make it again");
        let hit = entry.meta().unwrap();
        assert_eq!(hit.variance(), Some([7u8; 16]));
        assert_eq!(hit.fresh_until(), stored.fresh_until());
        assert_eq!(hit.created(), stored.created());
    }
}
