//! The disk cache against the fake Docker Hub, proven by its request counters and by what is
//! on disk: second pulls ask nothing, tags cost one HEAD after `tag_ttl`, stale tags are
//! served when the upstream fails, concurrent cold requests cause one fetch and stream to
//! everyone (also when they keep arriving as the fill starts), poisoned bytes are never kept, restarts keep the cache, `max_size` evicts the
//! least recently used, and a SIGKILL mid-fill leaves nothing that is ever served.

mod common;

use std::path::Path;
use std::time::Duration;

use common::hub::{self, Hub, CDN, REGISTRY, STORAGE};
use common::registry::noise;
use common::Mirror;

const MIB: usize = 1 << 20;

/// A mirror whose docker route is the hub, following storage redirects so blobs are cached.
fn config(hub: &Hub, extra: &str) -> String {
    format!(
        "default_route: docker\nredirects: {{ follow: [\".docker.com\", \".cloudflarestorage.com\"], to_client: [] }}\n{extra}{}",
        hub.mirror_config()
    )
}

async fn get(c: &reqwest::Client, url: String, tok: &str) -> reqwest::Response {
    c.get(url).bearer_auth(tok).send().await.unwrap()
}

fn status_of(r: &reqwest::Response) -> String {
    r.headers()
        .get("x-cache-status")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// Files of the content entries under the cache's committed objects (a sidecar `H.meta`
/// and its bodies `H.*.body`); the mirror's records (tag pointers, access verdicts) left out.
/// A body whose sidecar is not there yet is a commit in progress (a record is committed
/// like content: body first, then sidecar): the listing is taken again, for up to 2 s,
/// until none is in progress, so a record is never taken for content; a body that stays
/// without its sidecar is listed.
fn committed(cache: &Path) -> Vec<String> {
    let mut listing = committed_once(cache);
    for _ in 0..100 {
        if !listing.1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
        listing = committed_once(cache);
    }
    listing.0
}

/// One listing for `committed`, and whether a body in it had no sidecar.
fn committed_once(cache: &Path) -> (Vec<String>, bool) {
    let mut out = Vec::new();
    let mut in_progress = false;
    let objects = cache.join("v1/objects");
    for shard in std::fs::read_dir(&objects).into_iter().flatten().flatten() {
        let files: Vec<_> = std::fs::read_dir(shard.path()).unwrap().flatten().collect();
        let sidecar = |hash: &str| std::fs::read(shard.path().join(format!("{hash}.meta"))).ok();
        for f in files {
            let name = f.file_name().to_string_lossy().into_owned();
            let hash = name.split('.').next().unwrap_or_default();
            let Some(meta) = sidecar(hash) else {
                in_progress = true;
                out.push(name);
                continue;
            };
            let record = [&b"x-pullthrough-verdict"[..], b"x-pullthrough-pointer"]
                .iter()
                .any(|mark| meta.windows(mark.len()).any(|w| w == *mark));
            if !record {
                out.push(name);
            }
        }
    }
    (out, in_progress)
}

#[tokio::test(flavor = "multi_thread")]
async fn second_pull_asks_nothing_and_tags_cost_one_head() {
    let hub = Hub::start().await;
    let blob = hub.add_blob(noise(3 * MIB, 7));
    let manifest = hub.add_manifest("library/app", "latest", &blob);
    let mirror = Mirror::start(&config(&hub, "cache: { tag_ttl: 1s }\n"));
    let c = common::client(&[], mirror.addr());
    let tok = hub::pull_token(&c, &mirror, "library/app", None).await;
    let urls = [
        mirror.url("/v2/app/manifests/latest"),
        mirror.url(&format!("/v2/app/manifests/{}", manifest.digest)),
        mirror.url(&format!("/v2/library/app/blobs/{blob}")),
    ];
    // The tag is a pointer to its digest: the manifest is fetched once, by digest.
    for (url, want) in urls.iter().zip(["miss", "hit", "miss"]) {
        let r = get(&c, url.clone(), &tok).await;
        assert_eq!(
            (r.status().as_u16(), status_of(&r)),
            (200, want.into()),
            "{url}"
        );
        r.bytes().await.unwrap();
    }
    assert_eq!(hub.count_method(REGISTRY, "GET", "/manifests/"), 1);
    // Filled with a token: the mirror asks once, in the background, whether anyone may read
    // library/app (an anonymous token and a HEAD). After that, hits ask nothing.
    hub.wait_for_probe("library/app").await;
    let before = (hub.count(REGISTRY), hub.count(CDN), hub.count(STORAGE));
    for url in &urls {
        let r = get(&c, url.clone(), &tok).await;
        assert_eq!(
            (r.status().as_u16(), status_of(&r)),
            (200, "hit".into()),
            "{url}"
        );
        if url.contains("/blobs/") {
            assert_eq!(common::sha256(&r.bytes().await.unwrap()), blob);
        } else {
            assert_eq!(
                r.headers()["docker-content-digest"],
                manifest.digest.as_str()
            );
            assert_eq!(r.bytes().await.unwrap(), manifest.body);
        }
    }
    // nginx and library/nginx are one entry.
    let r = get(&c, mirror.url("/v2/library/app/manifests/latest"), &tok).await;
    assert_eq!(status_of(&r), "hit");
    assert_eq!(
        (hub.count(REGISTRY), hub.count(CDN), hub.count(STORAGE)),
        before,
        "a hit asked upstream"
    );

    // After tag_ttl: one HEAD, no GET, and the cached manifest is still served.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = get(&c, urls[0].clone(), &tok).await;
    assert_eq!(
        (r.status().as_u16(), status_of(&r)),
        (200, "revalidated".into())
    );
    assert_eq!(r.bytes().await.unwrap(), manifest.body);
    let asked: Vec<_> = hub.seen_by(REGISTRY).into_iter().skip(before.0).collect();
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert_eq!(
        (asked[0].method.as_str(), asked[0].path_and_query.as_str()),
        ("HEAD", "/v2/library/app/manifests/latest")
    );
    // Digests never revalidate.
    let r = get(&c, urls[2].clone(), &tok).await;
    assert_eq!(status_of(&r), "hit");
    // Every decision is in the log under pullthrough::cache.
    let log = mirror.log();
    for line in [
        "pullthrough::cache] route docker: /v2/library/app/manifests/latest points to sha256:",
        "pointer revalidated by HEAD",
        "cached for",
    ] {
        assert!(log.contains(line), "no {line:?} in the log:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn changed_tag_is_fetched_and_stale_tag_served_when_upstream_fails() {
    let hub = Hub::start().await;
    let blob = hub.add_blob(b"cfg".to_vec());
    let first = hub.add_manifest("library/app", "v", &blob);
    let mirror = Mirror::start(&config(&hub, "cache: { tag_ttl: 1s }\n"));
    let c = common::client(&[], mirror.addr());
    let tok = hub::pull_token(&c, &mirror, "library/app", None).await;
    let url = mirror.url("/v2/app/manifests/v");
    assert_eq!(
        get(&c, url.clone(), &tok).await.bytes().await.unwrap(),
        first.body
    );

    // The tag moves: HEAD sees a new digest, then one GET.
    let other = hub.add_blob(b"other cfg".to_vec());
    let second = hub.add_manifest("library/app", "v", &other);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before = hub.count(REGISTRY);
    let r = get(&c, url.clone(), &tok).await;
    assert_eq!(r.headers()["docker-content-digest"], second.digest.as_str());
    assert_eq!(r.bytes().await.unwrap(), second.body);
    let asked: Vec<_> = hub
        .seen_by(REGISTRY)
        .into_iter()
        .skip(before)
        .map(|s| s.method)
        .collect();
    assert_eq!(asked, ["HEAD", "GET"]);

    // Upstream down: the last good manifest, marked stale.
    hub.set_down(true);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = get(&c, url.clone(), &tok).await;
    assert_eq!((r.status().as_u16(), status_of(&r)), (200, "stale".into()));
    assert!(r.headers().contains_key("warning"));
    assert_eq!(r.bytes().await.unwrap(), second.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_cold_requests_one_fetch_streamed_to_all() {
    let hub = Hub::start().await;
    let data = noise(64 * MIB, 3);
    let blob = hub.add_blob(data);
    let gate = hub.gate(&blob);
    let mirror = Mirror::start(&config(&hub, ""));
    let c = common::client(&[], mirror.addr());
    let tok = hub::pull_token(&c, &mirror, "library/big", None).await;
    let url = mirror.url(&format!("/v2/library/big/blobs/{blob}"));

    // Each client reports its first bytes; the upstream is held at half the blob meanwhile.
    let (first_bytes, mut firsts) = tokio::sync::mpsc::channel::<()>(20);
    let mut clients = Vec::new();
    for _ in 0..20 {
        let (c, url, tok, first_bytes) = (c.clone(), url.clone(), tok.clone(), first_bytes.clone());
        clients.push(tokio::spawn(async move {
            use futures::StreamExt;
            let r = get(&c, url, &tok).await;
            assert_eq!(r.status(), 200);
            let mut body = r.bytes_stream();
            let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
            let mut reported = false;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.unwrap();
                sha2::Digest::update(&mut hasher, &chunk);
                if !reported && !chunk.is_empty() {
                    reported = true;
                    first_bytes.send(()).await.unwrap();
                }
            }
            format!("sha256:{}", hex::encode(sha2::Digest::finalize(hasher)))
        }));
    }
    // All 20 have bytes while the upstream has not finished: they are fed from the fill as it
    // arrives, not after it ends. (Bounded wait; a mirror that buffers never gets here.)
    for i in 0..20 {
        let got = tokio::time::timeout(Duration::from_secs(60), firsts.recv()).await;
        assert!(
            matches!(got, Ok(Some(()))),
            "client {i} got no bytes before the fill finished"
        );
    }
    assert_eq!(
        hub.count(STORAGE),
        1,
        "more than one upstream fetch:\n{}",
        mirror.log()
    );
    gate.add_permits(100);
    for task in clients {
        assert_eq!(task.await.unwrap(), blob);
    }
    assert_eq!(hub.count(STORAGE), 1, "more than one upstream fetch");
    assert_eq!(hub.count_method(REGISTRY, "GET", "/blobs/"), 1);
}

/// Clients that keep arriving while a fill starts (the lock is taken, then handed over to the
/// partial entry as the upstream's headers come) all join that one fill: none of them may find
/// neither the lock nor the partial entry and start a second fetch.
#[tokio::test(flavor = "multi_thread")]
async fn a_crowd_arriving_while_the_fill_starts_fetches_once() {
    let hub = Hub::start().await;
    let blobs: Vec<(String, Vec<u8>)> = (0..8)
        .map(|i| {
            let data = noise(4 * MIB, 40 + i);
            (hub.add_blob(data.clone()), data)
        })
        .collect();
    let mirror = Mirror::start(&config(&hub, ""));
    let c = common::client(&[], mirror.addr());
    let tok = hub::pull_token(&c, &mirror, "library/crowd", None).await;
    for (blob, data) in &blobs {
        let url = mirror.url(&format!("/v2/library/crowd/blobs/{blob}"));
        // 50 clients spread over about 25 ms, across the fill's first response headers.
        let clients: Vec<_> = (0..50u64)
            .map(|i| {
                let (c, url, tok) = (c.clone(), url.clone(), tok.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_micros(500 * i)).await;
                    let r = get(&c, url, &tok).await;
                    assert_eq!(r.status(), 200);
                    r.bytes().await.unwrap()
                })
            })
            .collect();
        for task in clients {
            assert!(task.await.unwrap() == data[..], "a client got other bytes");
        }
        assert_eq!(
            hub.count_path(STORAGE, &blob["sha256:".len()..]),
            1,
            "{blob} was fetched more than once"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn poisoned_upstream_leaves_nothing() {
    let hub = Hub::start().await;
    let blob = hub.add_blob(noise(2 * MIB, 11));
    hub.poison(&blob, noise(2 * MIB, 12));
    let mirror = Mirror::start(&config(&hub, ""));
    let c = common::client(&[], mirror.addr());
    let tok = hub::pull_token(&c, &mirror, "library/p", None).await;
    let url = mirror.url(&format!("/v2/library/p/blobs/{blob}"));
    let r = get(&c, url.clone(), &tok).await;
    // An error before the body, or a body cut before its last byte: the client never
    // completes a 200, even one of the right length.
    let ok = r.status() == 200;
    let outcome = r.bytes().await;
    assert!(
        !ok || outcome.is_err(),
        "the client completed a 200 of wrong bytes"
    );
    let cache = mirror.dir.path().join("cache");
    assert!(committed(&cache).is_empty(), "{:?}", committed(&cache));
    // Not cached: the next request goes upstream again.
    let _ = get(&c, url, &tok).await.bytes().await;
    assert_eq!(hub.count(STORAGE), 2);
    assert!(
        mirror.log().contains("content is sha256:"),
        "{}",
        mirror.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn readers_caught_up_with_a_poisoned_fill_never_complete() {
    let hub = Hub::start().await;
    let blob = hub.add_blob(noise(2 * MIB, 13));
    hub.poison(&blob, noise(2 * MIB, 14));
    let gate = hub.gate(&blob);
    let mirror = Mirror::start(&config(&hub, ""));
    let c = common::client(&[], mirror.addr());
    let tok = hub::pull_token(&c, &mirror, "library/p", None).await;
    let url = mirror.url(&format!("/v2/library/p/blobs/{blob}"));
    // One filling client and three that join and catch up with the first half.
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (c, url, tok) = (c.clone(), url.clone(), tok.clone());
            tokio::spawn(async move {
                let r = get(&c, url, &tok).await;
                let ok = r.status() == 200;
                // A completed 200 is the failure; an error status or a cut body is not.
                r.bytes()
                    .await
                    .map(|b| b.len())
                    .map_err(|_| ())
                    .and_then(|n| if ok { Ok(n) } else { Err(()) })
            })
        })
        .collect();
    for _ in 0..250 {
        if hub.count(STORAGE) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    gate.add_permits(10);
    for r in readers {
        let outcome = r.await.unwrap();
        assert!(
            outcome.is_err(),
            "a reader completed {outcome:?} wrong bytes"
        );
    }
    assert_eq!(hub.count(STORAGE), 1, "the readers did not share the fill");
}

#[tokio::test(flavor = "multi_thread")]
async fn head_and_ranges_from_cache() {
    let hub = Hub::start().await;
    let data = noise(MIB, 5);
    let blob = hub.add_blob(data.clone());
    let mirror = Mirror::start(&config(&hub, ""));
    let c = common::client(&[], mirror.addr());
    let tok = hub::pull_token(&c, &mirror, "library/r", None).await;
    let url = mirror.url(&format!("/v2/library/r/blobs/{blob}"));

    // A Range request on a miss gets its range and fills the whole blob once. (Its own
    // connection: pingora may close it after the fill, which continues past the response.)
    let once = common::client(&[], mirror.addr());
    let r = once
        .get(&url)
        .bearer_auth(&tok)
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap(), &data[10..20]);
    assert_eq!(hub.count(STORAGE), 1);

    let r = c.head(&url).bearer_auth(&tok).send().await.unwrap();
    assert_eq!((r.status().as_u16(), status_of(&r)), (200, "hit".into()));
    assert_eq!(r.headers()["content-length"], MIB.to_string().as_str());
    assert_eq!(r.headers()["docker-content-digest"], blob.as_str());
    assert!(r.bytes().await.unwrap().is_empty());

    let r = c
        .get(&url)
        .bearer_auth(&tok)
        .header("range", "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap(), &data[100..200]);
    let r = c
        .get(&url)
        .bearer_auth(&tok)
        .header("range", "bytes=0-9,20-29")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    let body = r.bytes().await.unwrap();
    assert!(body.windows(10).any(|w| w == &data[20..30]));
    assert_eq!(hub.count(STORAGE), 1, "a hit asked upstream");
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_keeps_entries_and_max_size_evicts_lru() {
    let hub = Hub::start().await;
    let cache = tempfile::tempdir().unwrap();
    let cache_cfg = format!(
        "cache: {{ dir: \"{}\", max_size: 5MiB }}\n",
        cache.path().display()
    );
    let blobs: Vec<String> = (0..4)
        .map(|i| hub.add_blob(noise(2 * MIB, 100 + i)))
        .collect();
    let url = |m: &Mirror, b: &str| m.url(&format!("/v2/library/lru/blobs/{b}"));

    let mirror = Mirror::start(&config(&hub, &cache_cfg));
    let c = common::client(&[], mirror.addr());
    let tok = hub::pull_token(&c, &mirror, "library/lru", None).await;
    for b in &blobs[..2] {
        get(&c, url(&mirror, b), &tok).await.bytes().await.unwrap();
    }
    drop(mirror);

    // A new process finds both entries.
    let mirror = Mirror::start(&config(&hub, &cache_cfg));
    let c = common::client(&[], mirror.addr());
    let fetched = hub.count(STORAGE);
    for b in &blobs[..2] {
        let r = get(&c, url(&mirror, b), &tok).await;
        assert_eq!(status_of(&r), "hit");
        assert_eq!(common::sha256(&r.bytes().await.unwrap()), *b);
    }
    assert_eq!(hub.count(STORAGE), fetched);

    // 4 x 2 MiB into 5 MiB: blob 0 was used before blob 1, so it goes first.
    get(&c, url(&mirror, &blobs[1]), &tok)
        .await
        .bytes()
        .await
        .unwrap();
    for b in &blobs[2..] {
        get(&c, url(&mirror, b), &tok).await.bytes().await.unwrap();
    }
    // Eviction purges asynchronously: wait (bounded) until blob 0's files are gone.
    for _ in 0..100 {
        if committed(cache.path()).len() <= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = get(&c, url(&mirror, &blobs[3]), &tok).await;
    assert_eq!(status_of(&r), "hit");
    let r = get(&c, url(&mirror, &blobs[0]), &tok).await;
    assert_eq!(
        status_of(&r),
        "miss",
        "the least recently used entry was kept"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_mid_fill_leaves_nothing_served() {
    let hub = Hub::start().await;
    let cache = tempfile::tempdir().unwrap();
    let cache_cfg = format!("cache: {{ dir: \"{}\" }}\n", cache.path().display());
    let data = noise(8 * MIB, 21);
    let blob = hub.add_blob(data);
    let gate = hub.gate(&blob);

    let mut mirror = Mirror::start(&config(&hub, &cache_cfg));
    let c = common::client(&[], mirror.addr());
    let tok = hub::pull_token(&c, &mirror, "library/k", None).await;
    let url = mirror.url(&format!("/v2/library/k/blobs/{blob}"));
    let pending = tokio::spawn({
        let (c, url, tok) = (c.clone(), url.clone(), tok.clone());
        async move {
            c.get(url)
                .bearer_auth(tok)
                .send()
                .await
                .map(|r| r.bytes_stream())
        }
    });
    // Wait (bounded) until the fill has a part file on disk, then kill the process.
    let part_dir = cache.path().join("v1/tmp");
    for _ in 0..200 {
        if std::fs::read_dir(&part_dir).map(|d| d.count()).unwrap_or(0) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        std::fs::read_dir(&part_dir).unwrap().count() > 0,
        "no fill in progress"
    );
    mirror.kill();
    let _ = pending.await;
    gate.add_permits(100);
    assert!(
        committed(cache.path()).is_empty(),
        "{:?}",
        committed(cache.path())
    );

    // The next process removes the dead fill and fetches afresh, correctly.
    let mirror = Mirror::start(&config(&hub, &cache_cfg));
    assert_eq!(std::fs::read_dir(&part_dir).unwrap().count(), 0);
    let c = common::client(&[], mirror.addr());
    let r = get(&c, mirror.url(&format!("/v2/library/k/blobs/{blob}")), &tok).await;
    assert_eq!(status_of(&r), "miss");
    assert_eq!(common::sha256(&r.bytes().await.unwrap()), blob);
    assert_eq!(hub.count(STORAGE), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn client_that_disconnects_does_not_abort_the_fill() {
    let hub = Hub::start().await;
    let blob = hub.add_blob(noise(8 * MIB, 31));
    let gate = hub.gate(&blob);
    let mirror = Mirror::start(&config(&hub, ""));
    let c = common::client(&[], mirror.addr());
    let tok = hub::pull_token(&c, &mirror, "library/d", None).await;
    let url = mirror.url(&format!("/v2/library/d/blobs/{blob}"));

    // The only client reads its first bytes, then goes away while the upstream is held.
    {
        use futures::StreamExt;
        let once = common::client(&[], mirror.addr());
        let r = get(&once, url.clone(), &tok).await;
        let mut body = r.bytes_stream();
        let first = tokio::time::timeout(Duration::from_secs(30), body.next()).await;
        assert!(matches!(first, Ok(Some(Ok(_)))));
    }
    gate.add_permits(100);
    // The fill completes on its own: wait (bounded) for the committed entry.
    let cache = mirror.dir.path().join("cache");
    for _ in 0..250 {
        if committed(&cache).len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = get(&c, url, &tok).await;
    assert_eq!(status_of(&r), "hit");
    assert_eq!(common::sha256(&r.bytes().await.unwrap()), blob);
    assert_eq!(hub.count(STORAGE), 1);
}

/// Headers that differ between two answers of one entry by design: when, and how old.
const TIMELY: [&str; 2] = ["date", "age"];

fn lasting_headers(r: &reqwest::Response) -> Vec<(String, String)> {
    let mut headers: Vec<(String, String)> = r
        .headers()
        .iter()
        .filter(|(name, _)| !TIMELY.contains(&name.as_str()))
        .map(|(name, value)| (name.to_string(), value.to_str().unwrap().to_owned()))
        .collect();
    headers.sort();
    headers
}

/// An image whose parts the hot set holds: a manifest, a 2 KB config (`seed`) and a
/// 100 KB layer (`seed + 1`) in `repo`, and the mirror paths of the three in that order.
struct HotImage {
    manifest: hub::Manifest,
    config_blob: String,
    paths: [String; 3],
}

fn hot_image(hub: &Hub, repo: &str, seed: u64) -> HotImage {
    let config_blob = hub.add_blob(noise(2_000, seed));
    let layer = hub.add_blob(noise(100_000, seed + 1));
    let manifest = hub.add_image(repo, "v1", &[config_blob.clone(), layer.clone()]);
    let paths = [
        format!("/v2/{repo}/manifests/{}", manifest.digest),
        format!("/v2/{repo}/blobs/{config_blob}"),
        format!("/v2/{repo}/blobs/{layer}"),
    ];
    HotImage {
        manifest,
        config_blob,
        paths,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_from_memory_equal_answers_from_disk() {
    let hub = Hub::start().await;
    let HotImage { paths, .. } = hot_image(&hub, "library/hot", 11);
    let cache = tempfile::tempdir().unwrap();
    let cfg = config(
        &hub,
        &format!("cache: {{ dir: \"{}\" }}\n", cache.path().display()),
    );
    let mirror = Mirror::start(&cfg);
    let c = common::client(&[], mirror.addr());
    let tok = hub::pull_token(&c, &mirror, "library/hot", None).await;
    for p in &paths {
        get(&c, mirror.url(p), &tok).await.bytes().await.unwrap();
    }
    // Filled with a token: readers are admitted once the background probe finds the
    // repository public, on both paths.
    hub.wait_for_probe("library/hot").await;
    drop(mirror);

    // A new process: each entry's first read comes from disk through pingora-cache (and puts
    // it in memory; the process asks once whether the repository is public, and checks the
    // token), the next ones from memory, which ask nothing.
    let mirror = Mirror::start(&cfg);
    let c = common::client(&[], mirror.addr());
    let mut from_disk = Vec::new();
    for p in &paths {
        let r = get(&c, mirror.url(p), &tok).await;
        assert_eq!(r.status(), 200, "{p}");
        from_disk.push((lasting_headers(&r), r.bytes().await.unwrap()));
    }
    let upstream = || (hub.count(REGISTRY), hub.count(CDN), hub.count(STORAGE));
    let before = upstream();
    let answered = || mirror.log().matches("answered from memory").count();
    assert_eq!(answered(), 0);
    for (p, (headers, body)) in paths.iter().zip(&from_disk) {
        let url = mirror.url(p);
        let before_memory = answered();
        let r = get(&c, url.clone(), &tok).await;
        assert_eq!(
            answered(),
            before_memory + 1,
            "{p}: not answered from memory"
        );
        assert_eq!(r.status(), 200, "{p}");
        assert_eq!(&lasting_headers(&r), headers, "{p}");
        assert!(r.headers().contains_key("age"), "{p}");
        assert_eq!(&r.bytes().await.unwrap(), body, "{p}");
        // A HEAD from memory: the same head, no body.
        let head = c.head(&url).bearer_auth(&tok).send().await.unwrap();
        assert_eq!(
            answered(),
            before_memory + 2,
            "{p}: HEAD not answered from memory"
        );
        assert_eq!(head.status(), 200, "{p}");
        assert_eq!(&lasting_headers(&head), headers, "{p}");
        assert!(head.bytes().await.unwrap().is_empty(), "{p}");
    }
    assert_eq!(upstream(), before, "an answer from memory asked upstream");
    assert!(
        common::loud_lines(&mirror.log()).is_empty(),
        "{}",
        mirror.log()
    );
}

/// Every response on a raw connection until `n` have arrived (each read by its
/// Content-Length; `heads` marks the ones answering a HEAD): status line, headers, body.
async fn read_responses(
    s: &mut tokio::net::TcpStream,
    heads: &[bool],
) -> Vec<(String, Vec<(String, String)>, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut out = Vec::new();
    for head_only in heads {
        let end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let mut chunk = [0u8; 65536];
            let n = tokio::time::timeout(Duration::from_secs(30), s.read(&mut chunk))
                .await
                .expect("an answer in 30 s")
                .unwrap();
            assert!(n > 0, "closed after {} answers", out.len());
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8(buf[..end].to_vec()).unwrap();
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap().to_owned();
        let mut headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (k, v) = l.split_once(':').unwrap();
                (k.trim().to_ascii_lowercase(), v.trim().to_owned())
            })
            .collect();
        let length: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .map_or(0, |(_, v)| v.parse().unwrap());
        let length = if *head_only { 0 } else { length };
        while buf.len() < end + length {
            let mut chunk = [0u8; 65536];
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed inside a body");
            buf.extend_from_slice(&chunk[..n]);
        }
        let body = buf[end..end + length].to_vec();
        buf.drain(..end + length);
        headers.retain(|(k, _)| !TIMELY.contains(&k.as_str()));
        headers.sort();
        out.push((status, headers, body));
    }
    out
}

/// The express lane (`proxy::express`) answers keep-alive GETs and HEADs of hot entries
/// itself; a request it does not take (`Connection: close`, a range) goes to Pingora, with
/// the lane's decision when it made one. Both answer with the same head and bytes, pipelined
/// requests are answered in order, and a request handed over is admitted once: with one blob
/// download per client, a range the lane admitted is not refused by a second admission.
#[tokio::test(flavor = "multi_thread")]
async fn the_express_lane_answers_as_pingora_does() {
    use tokio::io::AsyncWriteExt;
    let hub = Hub::start().await;
    let HotImage {
        manifest,
        config_blob,
        paths,
        ..
    } = hot_image(&hub, "library/lane", 21);
    let admin = common::free_port();
    let mirror = Mirror::start(&config(
        &hub,
        &format!(
            "limits: {{ blob_downloads_per_client: 1 }}\nadmin: {{ listen: \"127.0.0.1:{admin}\" }}\n"
        ),
    ));
    let c = common::client(&[], mirror.addr());
    let tok = hub::pull_token(&c, &mirror, "library/lane", None).await;
    for p in &paths {
        get(&c, mirror.url(p), &tok).await.bytes().await.unwrap();
    }
    hub.wait_for_probe("library/lane").await;
    for p in &paths {
        get(&c, mirror.url(p), &tok).await.bytes().await.unwrap();
    }
    let before = (hub.count(REGISTRY), hub.count(CDN), hub.count(STORAGE));
    let express = || {
        mirror
            .log()
            .matches("answered from memory (express lane)")
            .count()
    };
    let from_memory = || mirror.log().matches("answered from memory").count();
    let metrics = || async {
        let m = common::get_text(&c, format!("http://127.0.0.1:{admin}/metrics")).await;
        m.lines()
            .filter(|l| l.starts_with("pullthrough_requests_total{") && l.contains("cache=\"hit\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum::<u64>()
    };
    let hits_before = metrics().await;
    for p in &paths {
        let url = mirror.url(p);
        for method in [reqwest::Method::GET, reqwest::Method::HEAD] {
            let (lane, memory) = (express(), from_memory());
            let r = c
                .request(method.clone(), &url)
                .bearer_auth(&tok)
                .send()
                .await
                .unwrap();
            assert_eq!(
                express(),
                lane + 1,
                "{method} {p}: not answered by the lane"
            );
            let by_lane = (r.status(), lasting_headers(&r), r.bytes().await.unwrap());
            let r = c
                .request(method.clone(), &url)
                .bearer_auth(&tok)
                .header("connection", "close")
                .send()
                .await
                .unwrap();
            assert_eq!(
                express(),
                lane + 1,
                "{method} {p}: a closing request took the lane"
            );
            assert_eq!(
                from_memory(),
                memory + 2,
                "{method} {p}: not answered from memory"
            );
            let mut by_pingora = (r.status(), lasting_headers(&r), r.bytes().await.unwrap());
            // Only the connection's fate differs.
            by_pingora.1.retain(|(k, _)| k != "connection");
            let mut by_lane = by_lane;
            by_lane.1.retain(|(k, _)| k != "connection");
            assert_eq!(by_lane, by_pingora, "{method} {p}");
            assert_eq!(by_lane.0, 200, "{method} {p}");
        }
    }
    // A request's hit is counted in its logging hook, which may run after the client has
    // its bytes: wait (bounded) for the last one, then make sure nothing counts twice late.
    let mut hits = metrics().await;
    for _ in 0..250 {
        if hits >= hits_before + 12 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        hits = metrics().await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(hits, hits_before + 12, "hits counted once each");
    assert_eq!(metrics().await, hits, "no hit counted twice, late");

    // Pipelined on one connection: two hot GETs, a ranged GET of the layer (the lane
    // decides, Pingora answers), a HEAD from memory again, and a hot GET with more headers
    // than the lane parses (Pingora answers it from memory).
    let mut s = tokio::net::TcpStream::connect(mirror.addr()).await.unwrap();
    let req = |method: &str, path: &str, extra: &str| {
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {tok}\r\nAccept: {}\r\n{extra}\r\n", common::CLIENT_ACCEPT)
    };
    let many: String = (0..40).map(|i| format!("X-Extra-{i}: {i}\r\n")).collect();
    let all = [
        req("GET", &paths[0], ""),
        req("GET", &paths[1], ""),
        req("GET", &paths[2], "Range: bytes=10-19\r\n"),
        req("HEAD", &paths[0], ""),
        req("GET", &paths[0], &many),
    ]
    .concat();
    let lane = express();
    // The decision's debug line (`proxy::decide`): one per request decided.
    let decided = || {
        mirror
            .log()
            .matches(&format!("GET {}: route ", paths[2]))
            .count()
    };
    let decided_before = decided();
    let memory = from_memory();
    s.write_all(all.as_bytes()).await.unwrap();
    let answers = read_responses(&mut s, &[false, false, false, true, false]).await;
    let statuses: Vec<&str> = answers.iter().map(|a| a.0.as_str()).collect();
    assert_eq!(
        statuses,
        [
            "HTTP/1.1 200 OK",
            "HTTP/1.1 200 OK",
            "HTTP/1.1 206 Partial Content",
            "HTTP/1.1 200 OK",
            "HTTP/1.1 200 OK"
        ],
        "{}",
        mirror.log()
    );
    assert_eq!(answers[0].2, manifest.body);
    assert_eq!(common::sha256(&answers[1].2), config_blob);
    assert_eq!(answers[2].2, noise(100_000, 22)[10..20]);
    assert!(answers[3].2.is_empty());
    assert_eq!(answers[4].2, manifest.body);
    assert_eq!(express(), lane + 3, "the lane answered the hot three");
    assert_eq!(
        from_memory(),
        memory + 4,
        "the many-headed GET from memory too"
    );
    assert_eq!(
        decided(),
        decided_before + 1,
        "the ranged GET was decided twice"
    );
    assert_eq!(
        (hub.count(REGISTRY), hub.count(CDN), hub.count(STORAGE)),
        before,
        "an answer from memory asked upstream"
    );
    assert!(
        common::loud_lines(&mirror.log()).is_empty(),
        "{}",
        mirror.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_from_memory_keep_entries_in_the_lru() {
    let hub = Hub::start().await;
    // Five blobs small enough to be held in memory; four fit in 1 MiB.
    let blobs: Vec<String> = (0..5)
        .map(|i| hub.add_blob(noise(240_000, 200 + i)))
        .collect();
    let mirror = Mirror::start(&config(&hub, "cache: { max_size: 1MiB }\n"));
    let c = common::client(&[], mirror.addr());
    let tok = hub::pull_token(&c, &mirror, "library/lru", None).await;
    let url = |b: &str| mirror.url(&format!("/v2/library/lru/blobs/{b}"));
    for b in &blobs[..4] {
        get(&c, url(b), &tok).await.bytes().await.unwrap();
    }
    // A client has every byte once they are checked, before the fill's commit (sync,
    // renames) ends; a read during a commit joins the fill and says `miss`. Wait (bounded)
    // for the four commits: a sidecar and a body each.
    let cache = mirror.dir.path().join("cache");
    for _ in 0..250 {
        if committed(&cache).len() == 8 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(committed(&cache).len(), 8, "{:?}", committed(&cache));
    hub.wait_for_probe("library/lru").await;
    // Blob 0, the oldest, is read again from memory: blob 1 is now the least recently used.
    let r = get(&c, url(&blobs[0]), &tok).await;
    assert_eq!(status_of(&r), "hit");
    r.bytes().await.unwrap();
    assert!(mirror.log().contains("answered from memory"));
    get(&c, url(&blobs[4]), &tok).await.bytes().await.unwrap();
    let fetched = hub.count(STORAGE);
    // Eviction purges asynchronously: wait (bounded) until blob 1 is answered as a miss.
    let mut evicted = String::new();
    for _ in 0..100 {
        let r = get(&c, url(&blobs[1]), &tok).await;
        evicted = status_of(&r);
        r.bytes().await.unwrap();
        if evicted == "miss" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(evicted, "miss", "the least recently used entry was kept");
    let r = get(&c, url(&blobs[0]), &tok).await;
    assert_eq!(
        status_of(&r),
        "hit",
        "the entry read from memory was evicted"
    );
    assert_eq!(common::sha256(&r.bytes().await.unwrap()), blobs[0]);
    assert_eq!(hub.count(STORAGE), fetched + 1, "only blob 1 came again");
}
