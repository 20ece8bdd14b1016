//! Synthetic caches in the real on-disk format, for start-up tests and the big-cache
//! benchmark: `count` blob entries of one route, each a small body of its own, with or
//! without the index a clean stop saves. Not used when serving.

use std::path::Path;
use std::time::{Duration, SystemTime};

use pingora::cache::eviction::lru::Manager;
use pingora::cache::eviction::{CacheEntryId, CacheEntryKey, EvictionManager};
use pingora::cache::CacheMeta;
use pingora::http::ResponseHeader;
use sha2::Digest as _;

use super::disk::DiskStorage;
use super::inventory::{Label, SOURCE_HEADER};
use crate::registry::V2Path;
use crate::routes::Route;

/// The body of synthetic entry `i`: 64 bytes of its own.
pub fn body(i: u64) -> Vec<u8> {
    let mut body = Vec::with_capacity(64);
    for round in 0..8u64 {
        body.extend_from_slice(&(i ^ round.wrapping_mul(0x9e37_79b9_7f4a_7c15)).to_le_bytes());
    }
    body
}

/// The digest of synthetic entry `i` (`sha256:<hex>`).
pub fn digest(i: u64) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(body(i))))
}

/// What `write` made.
pub struct Written {
    pub entries: u64,
    pub bytes: u64,
}

/// Writes blob entries `0..count` of `repository` through `route` into the cache directory
/// `dir`, as `/v2/<repository>/blobs/<digest(i)>` would have filled them; with `index`, also
/// the LRU index and mark a clean stop leaves. Blocking; `progress` is told every 10,000.
pub fn write(
    dir: &Path,
    route: &Route,
    repository: &str,
    count: u64,
    index: bool,
    progress: &dyn Fn(u64),
) -> std::io::Result<Written> {
    let storage = DiskStorage::open(dir)?;
    let lru = Manager::<1>::with_capacity(usize::MAX, count as usize);
    let label = Label::of_content(
        &format!("/v2/{repository}/blobs/{}", digest(0))
            .parse::<V2Path>()
            .map_err(std::io::Error::other)?,
    )
    .map(|l| l.to_string())
    .unwrap_or_default();
    let now = SystemTime::now();
    let mut bytes = 0;
    for i in 0..count {
        let body = body(i);
        let digest = digest(i);
        let path: V2Path = format!("/v2/{repository}/blobs/{digest}")
            .parse()
            .map_err(std::io::Error::other)?;
        let key = super::key::cache_key(route, &path, &[])
            .ok_or_else(|| std::io::Error::other("a blob path has a key"))?;
        let mut header = ResponseHeader::build(200, Some(4)).map_err(std::io::Error::other)?;
        for (name, value) in [
            ("content-length", body.len().to_string()),
            ("content-type", "application/octet-stream".to_owned()),
            (super::verify::DIGEST_HEADER, digest),
            (SOURCE_HEADER, label.clone()),
        ] {
            header
                .insert_header(name, value)
                .map_err(std::io::Error::other)?;
        }
        let year = Duration::from_secs(365 * 86400);
        let meta = CacheMeta::new(now + year, now, 0, 0, header);
        let generation = storage.write_unsynced(&key, &meta, &body)?;
        bytes += body.len() as u64;
        if index {
            let entry = CacheEntryKey::identified(key.to_compact(), CacheEntryId::new(generation));
            lru.admit(entry, body.len(), now);
        }
        if (i + 1) % 10_000 == 0 {
            progress(i + 1);
        }
    }
    if index {
        let index_dir = dir.join("v1").join("index");
        let target = index_dir
            .to_str()
            .ok_or_else(|| std::io::Error::other("index path is not UTF-8"))?
            .to_owned();
        // Pingora's saver runs on a tokio blocking pool: a runtime of its own, on a thread
        // of its own (the caller may be inside a runtime).
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?
                        .block_on(lru.save(&target))
                        .map_err(std::io::Error::other)
                })
                .join()
                .map_err(|_| std::io::Error::other("index writer panicked"))?
        })?;
        std::fs::write(
            index_dir.join(super::CLEAN_MARK),
            b"saved at a clean stop\n",
        )?;
    }
    Ok(Written {
        entries: count,
        bytes,
    })
}
