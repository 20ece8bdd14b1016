//! `pullthrough cache ls|du|purge` against a running mirror: a listing that names what each
//! entry is and where it came from, a purge of a repository that removes exactly its entries
//! (shown on disk and by the upstream's counters), purges by image and digest, and a purge
//! racing a fill that leaves a consistent cache.

mod common;

use std::collections::BTreeSet;

use common::hub::{self, Hub, REGISTRY};
use common::ops::{
    admin_section, admin_url, entries, get_manifest, run, run_ok, sidecars_on_disk, spawn_get,
};
use common::{client, Mirror};

fn mirror_for(hub: &Hub) -> Mirror {
    let (admin, _) = admin_section();
    Mirror::start(&format!(
        "{admin}default_route: docker\nredirects: {{ follow: [\".docker.com\", \".cloudflarestorage.com\"], to_client: [] }}\n{}",
        hub.mirror_config()
    ))
}

/// An image of three blobs of its own in `repo:1`.
fn image(hub: &Hub, repo: &str, seed: u8) -> Vec<String> {
    let blobs: Vec<String> = (0..3u8)
        .map(|i| {
            hub.add_blob(vec![
                seed.wrapping_add(i);
                20_000 + usize::from(seed) + usize::from(i)
            ])
        })
        .collect();
    hub.add_image(repo, "1", &blobs);
    blobs
}

/// Pulls `repo:1` through the mirror as a client with a new token: tag, then every blob.
async fn pull(hub: &Hub, mirror: &Mirror, repo: &str, blobs: &[String]) {
    let c = client(&[], mirror.addr());
    let tok = hub::pull_token(&c, mirror, repo, None).await;
    let m = get_manifest(&c, mirror, repo, "1", &tok).await;
    assert_eq!(m.status(), 200, "{}", mirror.log());
    for digest in blobs {
        let r = c
            .get(mirror.url(&format!("/v2/{repo}/blobs/{digest}")))
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(common::sha256(&r.bytes().await.unwrap()), *digest);
    }
    let _ = hub;
}

fn blob_gets(hub: &Hub, blobs: &[String]) -> Vec<usize> {
    blobs
        .iter()
        .map(|d| hub.count_method(REGISTRY, "GET", &format!("/blobs/{d}")))
        .collect()
}

/// (kind, repository, tag, digest) of each listed entry.
fn described(list: &[serde_json::Value]) -> BTreeSet<(String, String, String, String)> {
    list.iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or("-").to_owned();
            (s("kind"), s("repository"), s("tag"), s("digest"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn listing_and_a_repository_purge_remove_exactly_its_entries() {
    let hub = Hub::start().await;
    let app = image(&hub, "library/app", 10);
    let other = image(&hub, "acme/other", 50);
    let mirror = mirror_for(&hub);
    pull(&hub, &mirror, "library/app", &app).await;
    pull(&hub, &mirror, "acme/other", &other).await;
    // One entry read again: a hit, remembered as its last read (fills are not reads).
    let c = client(&[], mirror.addr());
    let tok = hub::pull_token(&c, &mirror, "acme/other", None).await;
    let again = c
        .get(mirror.url(&format!("/v2/acme/other/blobs/{}", other[0])))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(common::cache_status(&again), "hit");

    let all = tokio::task::block_in_place(|| entries(&mirror, None));
    let listed = described(&all);
    for digest in &app {
        let blob = (
            "blob".into(),
            "library/app".into(),
            "-".into(),
            digest.clone(),
        );
        assert!(listed.contains(&blob), "{digest} not listed: {listed:#?}");
    }
    assert!(
        listed
            .iter()
            .any(|(k, r, t, _)| k == "tag" && r == "library/app" && t == "1"),
        "{listed:#?}"
    );
    assert!(all
        .iter()
        .all(|e| e["registry"] == "docker.io" && e["size"].is_u64()));
    assert_eq!(
        all.len(),
        sidecars_on_disk(&mirror),
        "ls lists every committed entry"
    );
    // A glob lists one repository's entries only.
    let app_entries = tokio::task::block_in_place(|| entries(&mirror, Some("docker.io/library/*")));
    assert!(!app_entries.is_empty());
    assert!(
        app_entries.iter().all(|e| e["repository"] == "library/app"),
        "{app_entries:#?}"
    );
    let other_before = described(&tokio::task::block_in_place(|| {
        entries(&mirror, Some("acme/other"))
    }));
    let read: Vec<_> = all.iter().filter(|e| e["last_read"].is_u64()).collect();
    assert_eq!(read.len(), 1, "{read:#?}");
    assert_eq!(read[0]["digest"], other[0].as_str());

    let du = tokio::task::block_in_place(|| run_ok(&mirror, &["cache", "du", "--json"]));
    let du: serde_json::Value = serde_json::from_str(&du).unwrap();
    assert_eq!(du["entries"], all.len());
    let table = tokio::task::block_in_place(|| run_ok(&mirror, &["cache", "ls", "app"]));
    assert!(
        table.contains("docker.io/library/app") && table.contains("KIND"),
        "{table}"
    );

    let on_disk = sidecars_on_disk(&mirror);
    let out = tokio::task::block_in_place(|| run_ok(&mirror, &["cache", "purge", "app"]));
    assert!(
        out.contains(&format!("purged {} entries", app_entries.len())),
        "{out}"
    );
    assert_eq!(sidecars_on_disk(&mirror), on_disk - app_entries.len());
    let left = tokio::task::block_in_place(|| entries(&mirror, None));
    assert!(
        left.iter().all(|e| e["repository"] != "library/app"),
        "{left:#?}"
    );
    assert_eq!(
        described(&left),
        other_before,
        "another repository's entries changed"
    );

    // The purged repository is fetched again; the other is still served from the cache.
    pull(&hub, &mirror, "library/app", &app).await;
    pull(&hub, &mirror, "acme/other", &other).await;
    assert_eq!(blob_gets(&hub, &app), vec![2, 2, 2]);
    assert_eq!(blob_gets(&hub, &other), vec![1, 1, 1]);
}

#[tokio::test(flavor = "multi_thread")]
async fn image_and_digest_purges() {
    let hub = Hub::start().await;
    let app = image(&hub, "library/app", 10);
    let mirror = mirror_for(&hub);
    pull(&hub, &mirror, "library/app", &app).await;
    let before = tokio::task::block_in_place(|| entries(&mirror, None));

    // One digest: that blob only.
    let out = tokio::task::block_in_place(|| run_ok(&mirror, &["cache", "purge", &app[1]]));
    assert!(out.contains("purged 1 entries"), "{out}");
    let after = tokio::task::block_in_place(|| entries(&mirror, None));
    assert_eq!(after.len(), before.len() - 1);
    assert!(after.iter().all(|e| e["digest"] != app[1].as_str()));

    // The image: its tag, its manifest and its (remaining) blobs; the verdict stays.
    let out = tokio::task::block_in_place(|| run_ok(&mirror, &["cache", "purge", "app:1"]));
    let left = tokio::task::block_in_place(|| entries(&mirror, None));
    assert!(
        left.iter().all(|e| e["kind"] == "verdict"),
        "{out}\n{left:#?}"
    );
    pull(&hub, &mirror, "library/app", &app).await;
    assert_eq!(blob_gets(&hub, &app), vec![2, 2, 2]);

    // Bad targets are refused with the reason, and nothing is removed.
    let n = sidecars_on_disk(&mirror);
    for (target, why) in [
        ("sha256:12", "invalid digest"),
        ("nosuch.example/a:1", "unknown registry"),
        ("docker.io/[", "invalid repository glob"),
    ] {
        let out = tokio::task::block_in_place(|| run(&mirror, &["cache", "purge", target]));
        assert!(!out.status.success(), "{target}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(why), "{target}: {stderr}");
    }
    assert_eq!(sidecars_on_disk(&mirror), n);
}

/// A purge while a fill of the purged repository streams: the client still gets every
/// byte, the fill commits as usual, and the cache then holds exactly sidecars with bodies
/// of their stated lengths, no part file, and serves correct bytes.
#[tokio::test(flavor = "multi_thread")]
async fn purge_racing_a_fill_leaves_a_consistent_cache() {
    let hub = Hub::start().await;
    let app = image(&hub, "library/app", 10);
    let big = hub.add_blob(common::registry::noise(4 << 20, 7));
    let gate = hub.gate(&big);
    let mirror = mirror_for(&hub);
    pull(&hub, &mirror, "library/app", &app).await;

    let c = client(&[], mirror.addr());
    let tok = hub::pull_token(&c, &mirror, "library/app", None).await;
    let url = mirror.url(&format!("/v2/library/app/blobs/{big}"));
    let filling = spawn_get(&c, url, &tok);
    // The fill is under way: the status page shows it with its progress.
    let stats_url = admin_url(&mirror, "/stats");
    let mut seen = None;
    for _ in 0..200 {
        let stats: serde_json::Value = c
            .get(&stats_url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if let Some(fill) = stats["cache"]["fills"].as_array().and_then(|f| f.first()) {
            if fill["bytes"].as_u64().unwrap_or(0) > 0 {
                seen = Some(fill.clone());
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let fill = seen.expect("the fill never showed on /stats");
    assert_eq!(fill["digest"], big.as_str());
    assert_eq!(fill["size"], 4 << 20);
    assert_eq!(fill["source"], "blob library/app");

    let out = tokio::task::block_in_place(|| {
        run_ok(&mirror, &["cache", "purge", "docker.io/library/app"])
    });
    assert!(out.contains("purged"), "{out}");
    let out = tokio::task::block_in_place(|| run_ok(&mirror, &["cache", "purge", &big]));
    assert!(
        out.contains("purged 0 entries"),
        "a fill in progress is not an entry: {out}"
    );
    gate.add_permits(1);
    let body = filling.await.unwrap();
    assert_eq!(common::sha256(&body), big);

    // Consistent on disk: every sidecar's body is there at its length, no part file left.
    let listed = tokio::task::block_in_place(|| entries(&mirror, None));
    assert_eq!(listed.len(), sidecars_on_disk(&mirror));
    let blob = listed
        .iter()
        .find(|e| e["digest"] == big.as_str())
        .expect("the fill committed");
    assert_eq!(blob["size"], 4 << 20);
    let tmp = mirror.dir.path().join("cache/v1/tmp");
    assert_eq!(std::fs::read_dir(tmp).unwrap().count(), 0);
    let again = c
        .get(mirror.url(&format!("/v2/library/app/blobs/{big}")))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(common::cache_status(&again), "hit");
    assert_eq!(common::sha256(&again.bytes().await.unwrap()), big);
    assert_eq!(
        hub.count_method(REGISTRY, "GET", &format!("/blobs/{big}")),
        1
    );
    let corrupt = mirror.log().contains("is damaged");
    assert!(!corrupt, "{}", mirror.log());
}
