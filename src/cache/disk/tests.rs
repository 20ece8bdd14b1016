//! Storage unit tests: fills, hits, seeks, purges, damage, tailing readers, the hot set.

use std::time::Duration;

use pingora::cache::storage::MissFinishType;
use pingora::http::ResponseHeader;
use sha2::Digest as _;

use super::super::sidecar::Sidecar;
use super::hit::read_chunk;
use super::*;

fn storage() -> (&'static DiskStorage, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    (
        Box::leak(Box::new(DiskStorage::open(dir.path()).unwrap())),
        dir,
    )
}

fn meta(digest: Option<&str>) -> CacheMeta {
    let mut h = ResponseHeader::build(200, None).unwrap();
    if let Some(d) = digest {
        h.insert_header(super::super::verify::DIGEST_HEADER, d)
            .unwrap();
    }
    let now = SystemTime::now();
    CacheMeta::new(now + Duration::from_secs(60), now, 0, 0, h)
}

fn sha(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

async fn read_all(hit: &mut HitHandler) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(b) = hit.read_body().await.unwrap() {
        out.extend_from_slice(&b);
    }
    out
}

fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in walk(dir) {
        out.push(e.strip_prefix(dir).unwrap().display().to_string());
    }
    out.sort();
    out
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn span() -> SpanHandle {
    pingora::cache::trace::Span::inactive().handle()
}

#[tokio::test]
async fn write_finish_lookup_read_seek_purge() {
    let (s, dir) = storage();
    let key = CacheKey::new("blob-a", "docker");
    let data: Vec<u8> = (0..2_000_000u32).map(|i| i as u8).collect();
    assert!(s.lookup(&key, &span()).await.unwrap().is_none());
    let mut miss = s
        .get_miss_handler(&key, &meta(Some(&sha(&data))), &span())
        .await
        .unwrap();
    for part in data.chunks(300_000) {
        miss.write_body(Bytes::copy_from_slice(part), false)
            .await
            .unwrap();
    }
    assert!(matches!(
        miss.finish().await.unwrap(),
        MissFinishType::Created(2_000_000)
    ));

    let (m, mut hit) = s.lookup(&key, &span()).await.unwrap().unwrap();
    assert_eq!(m.response_header().status, 200);
    assert_eq!(read_all(&mut hit).await, data);
    assert!(hit.can_seek());
    hit.seek(1_000_000, Some(1_000_010)).unwrap();
    assert_eq!(read_all(&mut hit).await, data[1_000_000..1_000_010]);
    assert!(hit.seek(2_000_000, None).is_err());

    // Rewriting the entry replaces the body generation; the old body file goes.
    let mut again = s
        .get_miss_handler(&key, &meta(None), &span())
        .await
        .unwrap();
    again
        .write_body(Bytes::from_static(b"v2"), true)
        .await
        .unwrap();
    again.finish().await.unwrap();
    let (_, mut hit) = s.lookup(&key, &span()).await.unwrap().unwrap();
    assert_eq!(read_all(&mut hit).await, b"v2");
    assert_eq!(
        files(dir.path())
            .iter()
            .filter(|f| f.ends_with(".body"))
            .count(),
        1
    );

    let target = key.to_compact();
    let current = generation_of(s, &key).await;
    assert_eq!(
        s.purge(
            PurgeTarget::Active(&target),
            PurgeType::Invalidation,
            &span()
        )
        .await
        .unwrap(),
        PurgeOutcome::Purged(Some(current))
    );
    assert!(s.lookup(&key, &span()).await.unwrap().is_none());
    assert!(files(dir.path()).is_empty(), "{:?}", files(dir.path()));
}

/// Fills `key` with `body` and returns the generation (entry id) committed.
async fn fill(s: &'static DiskStorage, key: &CacheKey, body: &'static [u8]) -> CacheEntryId {
    let mut miss = s.get_miss_handler(key, &meta(None), &span()).await.unwrap();
    let id = miss.entry_id().unwrap();
    miss.write_body(Bytes::from_static(body), true)
        .await
        .unwrap();
    miss.finish().await.unwrap();
    id
}

/// The generation a hit on `key` reports.
async fn generation_of(s: &'static DiskStorage, key: &CacheKey) -> CacheEntryId {
    let (_, hit) = s.lookup(key, &span()).await.unwrap().unwrap();
    hit.entry_id().unwrap()
}

#[tokio::test]
async fn a_late_purge_of_an_old_generation_leaves_the_new_one() {
    let (s, dir) = storage();
    let key = CacheKey::new("blob-g", "docker");
    let old = fill(s, &key, b"old").await;
    // Evicted (pingora decided to purge `old`) while a re-fill committed a new generation.
    let new = fill(s, &key, b"new").await;
    assert_ne!(old, new);
    assert_eq!(
        generation_of(s, &key).await,
        new,
        "hits name their generation"
    );
    let stale = CacheEntryKey::identified(key.to_compact(), old);
    let outcome = s
        .purge(PurgeTarget::Exact(&stale), PurgeType::Eviction, &span())
        .await
        .unwrap();
    assert_eq!(outcome, PurgeOutcome::NotFound);
    let (_, mut hit) = s.lookup(&key, &span()).await.unwrap().unwrap();
    assert_eq!(
        read_all(&mut hit).await,
        b"new",
        "the new generation was purged"
    );
    // Read from disk too, not only the hot set.
    let restarted: &'static DiskStorage =
        Box::leak(Box::new(DiskStorage::open(dir.path()).unwrap()));
    let (_, mut hit) = restarted.lookup(&key, &span()).await.unwrap().unwrap();
    assert_eq!(read_all(&mut hit).await, b"new");
    // The current generation, named exactly, goes.
    let current = CacheEntryKey::identified(key.to_compact(), new);
    let outcome = s
        .purge(PurgeTarget::Exact(&current), PurgeType::Eviction, &span())
        .await
        .unwrap();
    assert_eq!(outcome, PurgeOutcome::Purged(Some(new)));
    assert!(s.lookup(&key, &span()).await.unwrap().is_none());
    assert!(files(dir.path()).is_empty(), "{:?}", files(dir.path()));
}

#[tokio::test]
async fn a_damaged_entry_leaves_the_lru() {
    use pingora::cache::eviction::lru::Manager;
    let (s, dir) = storage();
    let lru: &'static Manager<1> = Box::leak(Box::new(Manager::with_capacity(1 << 20, 16)));
    s.set_eviction(lru);
    let key = CacheKey::new("blob-h", "docker");
    let id = fill(s, &key, b"hello").await;
    let entry = CacheEntryKey::identified(key.to_compact(), id);
    lru.admit(entry.clone(), 5, SystemTime::now());
    assert!(lru.peek(&entry));
    let body = walk(dir.path())
        .into_iter()
        .find(|p| p.to_string_lossy().ends_with(".body"))
        .unwrap();
    std::fs::write(&body, b"junk, longer").unwrap();
    s.lock_hot().remove(&key.combined_bin());
    assert!(s.lookup(&key, &span()).await.unwrap().is_none());
    assert!(!lru.peek(&entry), "the damaged entry is still in the LRU");
    assert_eq!((lru.total_items(), lru.total_size()), (0, 0));
}

#[tokio::test]
async fn dropped_or_poisoned_fills_leave_nothing() {
    let (s, dir) = storage();
    let key = CacheKey::new("blob-b", "docker");
    let mut miss = s
        .get_miss_handler(&key, &meta(None), &span())
        .await
        .unwrap();
    miss.write_body(Bytes::from_static(b"partial"), false)
        .await
        .unwrap();
    assert_eq!(
        files(dir.path()).len(),
        1,
        "the part file exists while filling"
    );
    drop(miss);
    assert!(files(dir.path()).is_empty(), "{:?}", files(dir.path()));
    assert!(s.lookup(&key, &span()).await.unwrap().is_none());

    let mut poisoned = s
        .get_miss_handler(&key, &meta(Some(&sha(b"good"))), &span())
        .await
        .unwrap();
    poisoned
        .write_body(Bytes::from_static(b"evil"), true)
        .await
        .unwrap();
    assert!(poisoned.finish().await.is_err());
    assert_eq!(s.stats.digest_mismatches.load(Ordering::Relaxed), 1);
    assert!(files(dir.path()).is_empty(), "{:?}", files(dir.path()));
    assert!(s.lookup(&key, &span()).await.unwrap().is_none());
}

#[tokio::test]
async fn corrupt_entries_are_misses_and_deleted() {
    let (s, dir) = storage();
    for (i, damage) in ["meta", "body"].into_iter().enumerate() {
        let key = CacheKey::new(format!("k{i}"), "t");
        let mut miss = s
            .get_miss_handler(&key, &meta(None), &span())
            .await
            .unwrap();
        miss.write_body(Bytes::from_static(b"hello"), true)
            .await
            .unwrap();
        miss.finish().await.unwrap();
        let target = walk(dir.path())
            .into_iter()
            .find(|p| p.to_string_lossy().ends_with(damage))
            .unwrap();
        std::fs::write(&target, b"junk").unwrap();
        // Damage is found when the disk is read: after a restart (this process still
        // holds the small entry in memory).
        let restarted: &'static DiskStorage =
            Box::leak(Box::new(DiskStorage::open(dir.path()).unwrap()));
        assert!(
            restarted.lookup(&key, &span()).await.unwrap().is_none(),
            "{damage}"
        );
        assert!(
            files(dir.path()).is_empty(),
            "{damage}: {:?}",
            files(dir.path())
        );
        assert_eq!(restarted.stats.corrupt_entries.load(Ordering::Relaxed), 1);
    }
}

#[tokio::test]
async fn readers_tail_a_fill_in_progress() {
    let (s, _dir) = storage();
    let key = CacheKey::new("blob-c", "docker");
    let mut miss = s
        .get_miss_handler(&key, &meta(None), &span())
        .await
        .unwrap();
    miss.write_body(Bytes::from_static(b"first "), false)
        .await
        .unwrap();
    let (_, mut ranged) = s.lookup(&key, &span()).await.unwrap().unwrap();
    ranged.seek(3, Some(9)).unwrap();
    let (_, mut early) = s.lookup(&key, &span()).await.unwrap().unwrap();
    // The last byte written so far waits for the digest check.
    assert_eq!(early.read_body().await.unwrap().unwrap(), &b"first"[..]);
    let tag = miss.streaming_write_tag().unwrap().to_vec();
    let (_, mut own) = s
        .lookup_streaming_write(&key, Some(&tag), &span())
        .await
        .unwrap()
        .unwrap();
    let reader = tokio::spawn(async move { read_all(&mut early).await });
    miss.write_body(Bytes::from_static(b"second"), true)
        .await
        .unwrap();
    miss.finish().await.unwrap();
    assert_eq!(reader.await.unwrap(), b" second");
    assert_eq!(read_all(&mut own).await, b"first second");
    assert_eq!(read_all(&mut ranged).await, b"st sec");

    // A failed fill cuts its readers with an error.
    let key = CacheKey::new("blob-d", "docker");
    let mut miss = s
        .get_miss_handler(&key, &meta(None), &span())
        .await
        .unwrap();
    let (_, mut reader) = s.lookup(&key, &span()).await.unwrap().unwrap();
    miss.write_body(Bytes::from_static(b"xy"), false)
        .await
        .unwrap();
    assert_eq!(reader.read_body().await.unwrap().unwrap(), &b"x"[..]);
    let waiting = tokio::spawn(async move { reader.read_body().await });
    drop(miss);
    assert!(waiting.await.unwrap().is_err());
}

#[tokio::test]
async fn small_entries_are_served_from_memory() {
    let (s, dir) = storage();
    let key = CacheKey::new("manifest", "docker");
    let mut miss = s
        .get_miss_handler(&key, &meta(None), &span())
        .await
        .unwrap();
    miss.write_body(Bytes::from_static(b"{\"schemaVersion\":2}"), true)
        .await
        .unwrap();
    miss.finish().await.unwrap();
    // The files are gone, the hit still comes: from memory, without the blocking pool.
    for f in walk(dir.path()) {
        std::fs::remove_file(f).unwrap();
    }
    let (_, mut hit) = s.lookup(&key, &span()).await.unwrap().unwrap();
    hit.seek(1, Some(5)).unwrap();
    assert_eq!(read_all(&mut hit).await, b"\"sch");
    // A purge drops the memory copy too.
    let compact = key.to_compact();
    s.purge(
        PurgeTarget::Active(&compact),
        PurgeType::Invalidation,
        &span(),
    )
    .await
    .unwrap();
    assert!(s.lookup(&key, &span()).await.unwrap().is_none());
}

#[tokio::test]
async fn scan_finds_entries_and_sweeps_leftovers() {
    let (s, dir) = storage();
    let key = CacheKey::new("blob-e", "docker");
    let mut miss = s
        .get_miss_handler(&key, &meta(None), &span())
        .await
        .unwrap();
    miss.write_body(Bytes::from_static(b"kept"), true)
        .await
        .unwrap();
    miss.finish().await.unwrap();
    // What a crash leaves: an orphan body and a part file of a dead process.
    let shard = walk(dir.path())
        .into_iter()
        .find(|p| p.to_string_lossy().ends_with(".meta"))
        .unwrap();
    std::fs::write(
        shard.with_file_name("ffff.0000000000000001.body"),
        b"orphan",
    )
    .unwrap();
    let hour_ago = SystemTime::now() - Duration::from_secs(3600);
    File::options()
        .write(true)
        .open(shard.with_file_name("ffff.0000000000000001.body"))
        .unwrap()
        .set_modified(hour_ago)
        .unwrap();
    std::fs::write(dir.path().join("v1/tmp/abcd.4000000000.1.part"), b"dead").unwrap();
    // A fresh unnamed body may be a live upgrade peer's commit between its body rename and
    // its sidecar: one that will stay unnamed, and one the peer's sidecar then names.
    let young = shard.with_file_name("eeee.0000000000000002.body");
    std::fs::write(&young, b"young orphan").unwrap();
    let hash = hex::encode(key.combined_bin());
    let committed = Sidecar::decode(&std::fs::read(&shard).unwrap()).unwrap();
    let peers = shard.with_file_name(format!("{hash}.{:016x}.body", committed.generation + 1));
    std::fs::write(&peers, b"fresh").unwrap();
    s.clear_abandoned_parts().unwrap();
    let mut entries = Vec::new();
    let found = s.scan(&mut |e| entries.push(e)).unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].key, key.to_compact());
    assert_eq!(entries[0].generation, committed.generation);
    assert_eq!(entries[0].size, 4);
    let mut listed = found.young_orphans.clone();
    listed.sort();
    let mut expected = vec![young.clone(), peers.clone()];
    expected.sort();
    assert_eq!(listed, expected);
    assert_eq!(files(dir.path()).len(), 4, "{:?}", files(dir.path()));
    // The peer's sidecar lands; the grace passes.
    let landed = Sidecar {
        generation: committed.generation + 1,
        body_len: 5,
        ..committed
    };
    std::fs::write(&shard, landed.encode()).unwrap();
    assert_eq!(s.remove_orphans(&found.young_orphans), 1);
    assert!(!young.exists());
    assert!(peers.exists(), "the peer's committed body was removed");
    let restarted: &'static DiskStorage =
        Box::leak(Box::new(DiskStorage::open(dir.path()).unwrap()));
    let (_, mut hit) = restarted.lookup(&key, &span()).await.unwrap().unwrap();
    assert_eq!(read_all(&mut hit).await, b"fresh");
}

#[tokio::test]
async fn chunks_read_from_page_cache_or_from_disk_alike() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("body");
    let data: Vec<u8> = (0..3 * CHUNK as u32)
        .map(|i| (i * 7 + i / 251) as u8)
        .collect();
    std::fs::write(&path, &data).unwrap();
    let file = Arc::new(File::open(&path).unwrap());
    for cold in [true, false] {
        if cold {
            // Out of the page cache: RWF_NOWAIT refuses (or reads what readahead brought in),
            // the blocking pool reads the rest.
            file.sync_all().unwrap();
            rustix::fs::fadvise(&*file, 0, None, rustix::fs::Advice::DontNeed).unwrap();
        }
        // A chunk may be shorter than asked (what the page cache held), never empty or wrong.
        let mut pos = 5;
        while pos < data.len() {
            let chunk = read_chunk(&file, pos as u64, CHUNK.min(data.len() - pos))
                .await
                .unwrap();
            assert!(!chunk.is_empty(), "empty chunk at {pos} (cold: {cold})");
            assert!(
                chunk == data[pos..pos + chunk.len()],
                "wrong bytes at {pos} (cold: {cold})"
            );
            pos += chunk.len();
        }
    }
}
