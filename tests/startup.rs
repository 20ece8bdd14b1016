//! Start-up with a big cache: the LRU comes from the index saved at the last stop, so a
//! clean restart serves at once without reading a sidecar; after a crash the disk is scanned
//! in the background while the mirror serves, and what it serves meanwhile is right.
//! The caches are written by `cache::synthetic` in the real on-disk format.

mod common;

use common::hub::{self, Hub, REGISTRY};
use common::{client, Mirror};
use pullthrough::cache::synthetic;

const REPO: &str = "library/big";

/// A hub, a cache directory holding `count` synthetic entries of its docker route, and the
/// mirror config using both.
async fn big_cache(count: u64, index: bool) -> (Hub, tempfile::TempDir, String) {
    let hub = Hub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let admin = common::free_port();
    let yaml = format!(
        "default_route: docker\nadmin: {{ listen: \"127.0.0.1:{admin}\" }}\ncache: {{ dir: \"{}\" }}\n\
         redirects: {{ follow: [\".docker.com\", \".cloudflarestorage.com\"], to_client: [] }}\n{}",
        dir.path().display(),
        hub.mirror_config()
    );
    let config = pullthrough::config::parse(&format!("listen: [\"127.0.0.1:1\"]\n{yaml}")).unwrap();
    let route = config.routes.by_name("docker").unwrap().clone();
    let path = dir.path().to_owned();
    let written = tokio::task::spawn_blocking(move || {
        synthetic::write(&path, &route, REPO, count, index, &|_| ()).unwrap()
    })
    .await
    .unwrap();
    assert_eq!(written.entries, count);
    (hub, dir, yaml)
}

async fn stats(c: &reqwest::Client, yaml: &str) -> serde_json::Value {
    let admin = yaml
        .split("admin: { listen: \"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap();
    common::get_json(c, format!("http://{admin}/stats")).await
}

/// `/stats` once the start-up work is past `loading` (and `running`, with `until_done`),
/// bounded.
async fn settled(c: &reqwest::Client, yaml: &str, until_done: bool) -> serde_json::Value {
    let mut s = stats(c, yaml).await;
    for _ in 0..800 {
        let state = s["cache"]["scan"]["state"].as_str().unwrap_or("");
        if state == "done" || state == "skipped" || (!until_done && state == "running") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        s = stats(c, yaml).await;
    }
    s
}

/// GETs synthetic entry `i` through the mirror: its exact bytes, and whether from cache.
async fn get_entry(c: &reqwest::Client, mirror: &Mirror, tok: &str, i: u64) -> String {
    let digest = synthetic::digest(i);
    let r = c
        .get(mirror.url(&format!("/v2/{REPO}/blobs/{digest}")))
        .bearer_auth(tok)
        .send()
        .await
        .unwrap();
    let status = common::cache_status(&r);
    let body = r.bytes().await.unwrap();
    assert!(
        body == synthetic::body(i),
        "entry {i}: wrong bytes ({status})"
    );
    status
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_restarted_cache_serves_correct_bytes_while_it_is_scanned() {
    const COUNT: u64 = 40_000;
    // No index and no mark: what a crash before the first index save leaves.
    let (hub, _dir, yaml) = big_cache(COUNT, false).await;
    let mirror = Mirror::start(&yaml);
    let c = client(&[], mirror.addr());
    let tok = hub::pull_token(&c, &mirror, REPO, None).await;
    let (mut during, mut requests) = (0, 0u64);
    for round in 0..20_000u64 {
        let state = stats(&c, &yaml).await["cache"]["scan"]["state"].clone();
        // Entries all over the directory: some the scan has reached, some not yet.
        let i = round.wrapping_mul(7919) % COUNT;
        assert_eq!(get_entry(&c, &mirror, &tok, i).await, "hit", "entry {i}");
        requests += 1;
        if state == "running" {
            during += 1;
        } else if state != "loading" {
            assert_eq!(state, "done");
            break;
        }
    }
    assert!(during > 0, "no request was served while the scan ran");
    let s = stats(&c, &yaml).await;
    assert_eq!(s["cache"]["scan"]["state"], "done", "{s}");
    assert_eq!(s["cache"]["scan"]["scanned"], COUNT);
    assert_eq!(s["cache"]["items"], COUNT, "the scan admitted every entry");
    // Every answer came from the cache: the registry was never asked for a blob.
    assert_eq!(hub.count_method(REGISTRY, "GET", "/blobs/"), 0);
    eprintln!("{requests} requests, {during} of them during the scan");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clean_stop_restarts_from_the_index_without_a_scan() {
    const COUNT: u64 = 5_000;
    let (hub, dir, yaml) = big_cache(COUNT, true).await;
    let mut mirror = Mirror::start(&yaml);
    let c = client(&[], mirror.addr());
    let s = settled(&c, &yaml, false).await;
    assert_eq!(s["cache"]["scan"]["state"], "skipped", "{s}");
    assert_eq!(s["cache"]["items"], COUNT, "the index holds them all");
    let tok = hub::pull_token(&c, &mirror, REPO, None).await;
    assert_eq!(get_entry(&c, &mirror, &tok, 17).await, "hit");
    // A new entry, then a clean stop: the next start trusts the index it saved.
    let fresh = hub.add_blob(vec![7; 3000]);
    let r = c
        .get(mirror.url(&format!("/v2/{REPO}/blobs/{fresh}")))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().len(), 3000);
    // The blob and the repository's verdict record (from a probe in the background) joined
    // the cache.
    let mut items = serde_json::Value::Null;
    for _ in 0..200 {
        items = stats(&c, &yaml).await["cache"]["items"].clone();
        if items == COUNT + 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(items, COUNT + 2);
    mirror.stop();
    assert!(
        dir.path().join("v1/index/clean").exists(),
        "{}",
        mirror.log()
    );
    let mut mirror = Mirror::start(&yaml);
    let s = settled(&c, &yaml, false).await;
    assert_eq!(s["cache"]["scan"]["state"], "skipped", "{s}");
    assert_eq!(s["cache"]["items"], items);
    // A crash: the mark was consumed at start, so the next start scans.
    mirror.kill();
    let mirror = Mirror::start(&yaml);
    let s = settled(&c, &yaml, true).await;
    assert_eq!(s["cache"]["scan"]["state"], "done", "{s}");
    assert_eq!(s["cache"]["items"], items, "{s}");
    assert_eq!(
        s["cache"]["scan"]["admitted"], 0,
        "the index knew every entry: {s}"
    );
    let tok = hub::pull_token(&c, &mirror, REPO, None).await;
    assert_eq!(get_entry(&c, &mirror, &tok, COUNT - 1).await, "hit");
    assert_eq!(
        hub.count_method(REGISTRY, "GET", &format!("/blobs/{fresh}")),
        1
    );
}
