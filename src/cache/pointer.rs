//! Tag pointers: what a tag named when the upstream was last asked (digest, media type,
//! length), kept as tiny entries of the disk cache under a key of their own, so they survive
//! restarts, are evicted like the rest and cost a memory lookup (the hot set) when read. A
//! request by tag is answered from the digest's entry through its pointer: the manifest body
//! is stored once, under its digest.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::HeaderValue;
use pingora::cache::key::CacheHashKey;
use pingora::cache::{CacheKey, CacheMeta};
use pingora::http::ResponseHeader;

use super::Cache;
use crate::registry::Digest;

/// Headers of a pointer entry. Not the registry's own names: the storage checks a body
/// against `Docker-Content-Digest` and `Content-Length`, and a pointer has no body.
const DIGEST: &str = "x-pullthrough-pointer-digest";
const MEDIA_TYPE: &str = "x-pullthrough-pointer-type";
const LENGTH: &str = "x-pullthrough-pointer-length";
/// Present when the pointer was learned with credentials (`cache::access`).
const PRIVATE: &str = "x-pullthrough-pointer-private";

/// Where a tag pointed when the upstream was last asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagPointer {
    pub digest: Digest,
    pub media_type: Option<HeaderValue>,
    pub length: Option<u64>,
    /// When the upstream said so.
    pub learned: SystemTime,
    /// Learned with credentials: followed for a reader only under the access rules of
    /// private content (`cache::access`), like an entry filled with credentials.
    pub private: bool,
}

impl TagPointer {
    /// The pointer a tag's upstream answer (HEAD or GET, 200) carries, if it names a digest.
    pub fn from_answer(resp: &ResponseHeader) -> Option<TagPointer> {
        let headers = &resp.headers;
        let digest = headers
            .get(super::verify::DIGEST_HEADER)?
            .to_str()
            .ok()?
            .parse()
            .ok()?;
        Some(TagPointer {
            digest,
            media_type: headers.get(http::header::CONTENT_TYPE).cloned(),
            length: headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse().ok()),
            learned: SystemTime::now(),
            private: false,
        })
    }

    /// How long ago the upstream was asked.
    pub fn age(&self) -> Duration {
        self.learned.elapsed().unwrap_or_default()
    }

    fn meta(&self, fresh_for: Duration, label: &str) -> Option<CacheMeta> {
        let mut header = ResponseHeader::build(200, Some(4)).ok()?;
        header
            .insert_header(super::inventory::SOURCE_HEADER, label)
            .ok()?;
        header.insert_header(DIGEST, self.digest.to_string()).ok()?;
        if let Some(t) = &self.media_type {
            header.insert_header(MEDIA_TYPE, t.clone()).ok()?;
        }
        if let Some(len) = self.length {
            header.insert_header(LENGTH, len).ok()?;
        }
        if self.private {
            header.insert_header(PRIVATE, "1").ok()?;
        }
        Some(CacheMeta::new(
            self.learned + fresh_for,
            self.learned,
            0,
            0,
            header,
        ))
    }

    pub(super) fn from_meta(meta: &CacheMeta) -> Option<TagPointer> {
        let headers = meta.headers();
        Some(TagPointer {
            digest: headers.get(DIGEST)?.to_str().ok()?.parse().ok()?,
            media_type: headers.get(MEDIA_TYPE).cloned(),
            length: headers
                .get(LENGTH)
                .and_then(|v| v.to_str().ok()?.parse().ok()),
            learned: meta.created(),
            private: headers.contains_key(PRIVATE),
        })
    }
}

/// A HEAD by tag answered from its pointer: what the upstream's own HEAD said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagHead {
    pub digest: Digest,
    pub media_type: HeaderValue,
    pub length: u64,
    /// `X-Cache-Status`.
    pub served: &'static str,
}

impl TagHead {
    /// The answer, when the pointer knows all a HEAD must say.
    pub fn of(pointer: &TagPointer, served: &'static str) -> Option<TagHead> {
        Some(TagHead {
            digest: pointer.digest.clone(),
            media_type: pointer.media_type.clone()?,
            length: pointer.length?,
            served,
        })
    }
}

/// Pointers this process knows, by key: a tag hit costs a memory lookup, not a storage
/// lookup. Bounded (quick_cache's S3-FIFO: rarely used ones leave first; the disk still has
/// them). Shared, so a hit copies nothing. moka here cost a tag hit about a tenth of its
/// CPU (each read is recorded for its policy).
pub struct PointerMemo(quick_cache::sync::Cache<[u8; 16], Arc<TagPointer>>);

/// Pointers the memo holds at most.
const MEMO_CAPACITY: usize = 100_000;

impl PointerMemo {
    /// Forgets every pointer (a purge): the next lookup reads the disk's record, if any.
    pub fn forget_all(&self) {
        self.0.clear();
    }
}

impl Default for PointerMemo {
    fn default() -> Self {
        PointerMemo(quick_cache::sync::Cache::new(MEMO_CAPACITY))
    }
}

impl Cache {
    /// The pointer stored under `key` (its `combined_bin` is `bin`), if any (however old).
    pub async fn read_pointer(&self, key: &CacheKey, bin: [u8; 16]) -> Option<Arc<TagPointer>> {
        if let Some(pointer) = self.pointers.0.get(&bin) {
            return Some(pointer);
        }
        let pointer = Arc::new(TagPointer::from_meta(&self.read_record(key).await?)?);
        self.pointers.0.insert(bin, pointer.clone());
        Some(pointer)
    }

    /// Stores a pointer under `key` (replacing the one there), labelled as `label` (the
    /// tag's `Label::of_pointer`). Its body repeats the digest, never read: the headers say
    /// it all.
    pub async fn write_pointer(&self, key: &CacheKey, pointer: &TagPointer, label: &str) {
        let Some(meta) = pointer.meta(self.ttl.tag_ttl, label) else {
            return;
        };
        let body = Bytes::from(pointer.digest.to_string());
        self.write_record(key, &meta, body).await;
        self.pointers
            .0
            .insert(key.combined_bin(), Arc::new(pointer.clone()));
    }
}
