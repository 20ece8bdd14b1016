//! Bounded disk use: an object over `cache.max_object_size` is served and not kept, and a
//! full disk (a small tmpfs as the cache directory, a blob larger than it) stops caching that
//! object, never the client's download; nothing is left over and smaller objects are still
//! cached.

mod common;

use std::path::Path;
use std::process::Command;

use common::hub::{self, Hub, STORAGE};
use common::registry::noise;
use common::{free_port, Mirror};

fn config(hub: &Hub, cache: &str, admin: u16) -> String {
    format!(
        "default_route: docker\n{cache}admin: {{ listen: \"127.0.0.1:{admin}\" }}\nredirects: {{ follow: [\".docker.com\", \".cloudflarestorage.com\"], to_client: [] }}\n{}",
        hub.mirror_config()
    )
}

/// Files under `dir`, recursively (the cache's bodies, sidecars and part files).
fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files(&p));
            } else {
                out.push(p.display().to_string());
            }
        }
    }
    out
}

async fn get_blob(c: &reqwest::Client, mirror: &Mirror, tok: &str, blob: &str) -> String {
    let r = c
        .get(mirror.url(&format!("/v2/library/big/blobs/{blob}")))
        .bearer_auth(tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let status = r.headers()["x-cache-status"].to_str().unwrap().to_owned();
    let body = match r.bytes().await {
        Ok(b) => b,
        Err(e) => panic!("{e}\n{}", mirror.log()),
    };
    assert_eq!(
        common::sha256(&body),
        blob,
        "the client got wrong or short bytes"
    );
    status
}

#[tokio::test(flavor = "multi_thread")]
async fn an_object_over_max_object_size_is_served_and_not_kept() {
    let hub = Hub::start().await;
    let big = hub.add_blob(noise(2 << 20, 21));
    let small = hub.add_blob(noise(100 << 10, 22));
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let mirror = Mirror::start(&config(
        &hub,
        &format!(
            "cache: {{ dir: \"{}\", max_object_size: 1MiB }}\n",
            cache.display()
        ),
        free_port(),
    ));
    let c = common::client(&[], mirror.addr());
    let tok = hub::pull_token(&c, &mirror, "library/big", None).await;
    // Too large to keep: passed through, the cache bypassed.
    assert_eq!(get_blob(&c, &mirror, &tok, &big).await, "bypass");
    assert_eq!(get_blob(&c, &mirror, &tok, &big).await, "bypass");
    assert_eq!(
        hub.count(STORAGE),
        2,
        "the large object was not fetched twice"
    );
    assert_eq!(get_blob(&c, &mirror, &tok, &small).await, "miss");
    assert_eq!(get_blob(&c, &mirror, &tok, &small).await, "hit");
    assert!(
        !files(&cache).iter().any(|f| f.contains(&big[7..])),
        "the large object is on disk"
    );
}

/// Starts a GET of `blob` in the background and returns once its fill has a part file on
/// disk (the upstream is expected to be held by a gate); yields the cache status and body.
async fn held_pull(
    c: &reqwest::Client,
    mirror: &Mirror,
    tok: &str,
    blob: &str,
    cache: &Path,
) -> tokio::task::JoinHandle<(String, reqwest::Result<bytes::Bytes>)> {
    let (c, url, tok) = (
        c.clone(),
        mirror.url(&format!("/v2/library/big/blobs/{blob}")),
        tok.to_owned(),
    );
    let pull = tokio::spawn(async move {
        let r = c.get(url).bearer_auth(&tok).send().await.unwrap();
        let status = r.headers()["x-cache-status"].to_str().unwrap().to_owned();
        (status, r.bytes().await)
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !files(cache).iter().any(|f| f.ends_with(".part")) {
        assert!(
            std::time::Instant::now() < deadline,
            "the fill never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    pull
}

/// Mounts a tmpfs of `mib` MiB at `dir`; false when this machine does not allow it.
fn mount_tmpfs(dir: &Path, mib: usize) -> bool {
    Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
        .arg(dir)
        .status()
        .is_ok_and(|s| s.success())
}

struct Unmount<'a>(&'a Path);

impl Drop for Unmount<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_never_cuts_a_download() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    if !mount_tmpfs(&cache, 8) {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN)");
        return;
    }
    let _unmount = Unmount(&cache);
    let hub = Hub::start().await;
    let huge = hub.add_blob(noise(12 << 20, 31));
    let squeezed = hub.add_blob(noise(6 << 20, 33));
    let small = hub.add_blob(noise(256 << 10, 32));
    let admin = free_port();
    let mirror = Mirror::start(&config(
        &hub,
        &format!("cache: {{ dir: \"{}\" }}\n", cache.display()),
        admin,
    ));
    let c = common::client(&[], mirror.addr());
    let tok = hub::pull_token(&c, &mirror, "library/big", None).await;
    let leftovers = |blob: &str| -> Vec<String> {
        files(&cache)
            .into_iter()
            .filter(|f| f.ends_with(".part") || f.contains(&blob[7..]))
            .collect()
    };
    // Declared larger than the disk: no fill starts (no room to reserve), every byte
    // reaches the client, nothing stays behind.
    assert_eq!(get_blob(&c, &mirror, &tok, &huge).await, "bypass");
    assert!(
        leftovers(&huge).is_empty(),
        "left over: {:?}",
        leftovers(&huge)
    );
    // Room when the fill starts, none halfway (something else fills the disk): the fill is
    // given up, the download completes.
    let gate = hub.gate(&squeezed);
    let pull = held_pull(&c, &mirror, &tok, &squeezed, &cache).await;
    let filler = cache.join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 5 << 20]);
    gate.add_permits(100);
    let (status, body) = pull.await.unwrap();
    let body = body.unwrap_or_else(|e| panic!("download cut: {e}\n{}", mirror.log()));
    assert_eq!(status, "miss");
    assert_eq!(
        common::sha256(&body),
        squeezed,
        "the client got wrong or short bytes"
    );
    std::fs::remove_file(&filler).unwrap();
    assert!(
        leftovers(&squeezed).is_empty(),
        "left over: {:?}",
        leftovers(&squeezed)
    );
    assert!(pullthrough::healthcheck::check(&mirror.url("/healthz")).is_ok());
    // Smaller objects are still cached.
    assert_eq!(get_blob(&c, &mirror, &tok, &small).await, "miss");
    assert_eq!(get_blob(&c, &mirror, &tok, &small).await, "hit");
    let metrics = common::get_text(&c, format!("http://127.0.0.1:{admin}/metrics")).await;
    for line in [
        "pullthrough_cache_fills_refused_total{reason=\"disk_space\"} 1",
        "pullthrough_cache_write_failures_total 1",
        "pullthrough_cache_fills_reserved_bytes 0",
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
    assert!(mirror.log().contains("the download goes on uncached"));
    assert!(mirror
        .log()
        .contains("served uncached: no room on the cache's disk"));
}

#[tokio::test(flavor = "multi_thread")]
async fn fills_beyond_max_fills_stream_uncached() {
    let hub = Hub::start().await;
    let first = hub.add_blob(noise(1 << 20, 41));
    let second = hub.add_blob(noise(1 << 20, 42));
    let dir = tempfile::tempdir().unwrap();
    let admin = free_port();
    let mirror = Mirror::start(&config(
        &hub,
        &format!(
            "cache: {{ dir: \"{}\", max_fills: 1 }}\n",
            dir.path().display()
        ),
        admin,
    ));
    let c = common::client(&[], mirror.addr());
    let tok = hub::pull_token(&c, &mirror, "library/big", None).await;
    // One fill holds the only place while its upstream waits.
    let gate = hub.gate(&first);
    let pull = held_pull(&c, &mirror, &tok, &first, dir.path()).await;
    // Another cold object meanwhile: served, not kept.
    assert_eq!(get_blob(&c, &mirror, &tok, &second).await, "bypass");
    gate.add_permits(100);
    let (status, body) = pull.await.unwrap();
    let body = body.unwrap();
    assert_eq!(
        (status.as_str(), common::sha256(&body)),
        ("miss", first.clone())
    );
    // The place is free again: the second object is cached now.
    assert_eq!(get_blob(&c, &mirror, &tok, &second).await, "miss");
    assert_eq!(get_blob(&c, &mirror, &tok, &second).await, "hit");
    assert_eq!(hub.count_path(STORAGE, &second[7..]), 2);
    let metrics = common::get_text(&c, format!("http://127.0.0.1:{admin}/metrics")).await;
    assert!(
        metrics.contains("pullthrough_cache_fills_refused_total{reason=\"max_fills\"} 1"),
        "{metrics}"
    );
}
