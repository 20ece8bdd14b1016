//! One copy per digest: a layer shared by two repositories is fetched and stored once, and
//! content cached through a private repository is never served through another
//! repository's name unless the upstream would serve it there.

mod common;

use common::hub::{self, Hub, PASSWORD, PRIVATE_REPO, REGISTRY, STORAGE, USER};
use common::registry::noise;
use common::{cache_status, Mirror};

/// Bodies in the cache directory exactly `len` bytes long.
fn bodies_of_len(dir: &std::path::Path, len: u64) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        if p.is_dir() {
            n += bodies_of_len(&p, len);
        } else if p.to_string_lossy().ends_with(".body")
            && p.metadata().is_ok_and(|m| m.len() == len)
        {
            n += 1;
        }
    }
    n
}

async fn get(c: &reqwest::Client, url: String, tok: &str) -> (u16, String, Vec<u8>) {
    let r = c.get(url).bearer_auth(tok).send().await.unwrap();
    let status = (r.status().as_u16(), cache_status(&r));
    (status.0, status.1, r.bytes().await.unwrap().to_vec())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_layer_shared_by_two_repositories_is_fetched_and_stored_once() {
    let hub = Hub::start().await;
    let layer = noise(1 << 20, 51);
    let blob = hub.add_blob(layer.clone());
    for repo in ["library/a", "library/b"] {
        hub.add_manifest(repo, "v1", &blob);
    }
    let dir = tempfile::tempdir().unwrap();
    let mirror = Mirror::start(&format!(
        "cache: {{ dir: \"{}\" }}\ndefault_route: docker\nredirects: {{ follow: [\".docker.com\", \".cloudflarestorage.com\"], to_client: [] }}\n{}",
        dir.path().display(),
        hub.mirror_config()
    ));
    let c = common::client(&[], mirror.addr());
    let tok_a = hub::pull_token(&c, &mirror, "library/a", None).await;
    let (status, cache, body) = get(
        &c,
        mirror.url(&format!("/v2/library/a/blobs/{blob}")),
        &tok_a,
    )
    .await;
    assert_eq!((status, cache.as_str(), body == layer), (200, "miss", true));
    // Another repository, another token: the same copy.
    let tok_b = hub::pull_token(&c, &mirror, "library/b", None).await;
    for _ in 0..2 {
        let (status, cache, body) = get(
            &c,
            mirror.url(&format!("/v2/library/b/blobs/{blob}")),
            &tok_b,
        )
        .await;
        assert_eq!((status, cache.as_str(), body == layer), (200, "hit", true));
    }
    assert_eq!(
        hub.count_path(STORAGE, &blob[7..]),
        1,
        "the shared layer was fetched twice"
    );
    assert_eq!(
        bodies_of_len(dir.path(), layer.len() as u64),
        1,
        "stored twice"
    );
    // The check that library/b holds it was a HEAD (no bytes), asked once.
    let heads = hub.count_method(REGISTRY, "HEAD", &format!("/v2/library/b/blobs/{blob}"));
    assert_eq!(heads, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_private_blob_is_not_served_through_a_public_repositorys_name() {
    let hub = Hub::start().await;
    let secret = noise(64 << 10, 52);
    let blob = hub.add_blob_in(PRIVATE_REPO, secret.clone());
    let public_cfg = hub.add_blob(b"public cfg".to_vec());
    hub.add_manifest("library/pub", "v1", &public_cfg);
    let mirror = Mirror::start(&format!(
        "default_route: docker\nredirects: {{ follow: [\".docker.com\", \".cloudflarestorage.com\"], to_client: [] }}\n{}",
        hub.mirror_config()
    ));
    let c = common::client(&[], mirror.addr());
    // The account pulls its private blob: cached, private.
    let owner = hub::pull_token(&c, &mirror, PRIVATE_REPO, Some((USER, PASSWORD))).await;
    let private_url = mirror.url(&format!("/v2/{PRIVATE_REPO}/blobs/{blob}"));
    let (status, cache, body) = get(&c, private_url.clone(), &owner).await;
    assert_eq!(
        (status, cache.as_str(), body == secret),
        (200, "miss", true)
    );
    // Anyone, through a public repository's name: the upstream's answer (it has no such
    // blob there), never the cached bytes.
    let anyone = hub::pull_token(&c, &mirror, "library/pub", None).await;
    // library/pub is known public (its manifest pulled, the verdict probed): that alone
    // must not open another repository's blob through its name.
    let (status, _, _) = get(&c, mirror.url("/v2/library/pub/manifests/v1"), &anyone).await;
    assert_eq!(status, 200);
    hub.wait_for_probe("library/pub").await;
    let through_public = mirror.url(&format!("/v2/library/pub/blobs/{blob}"));
    for _ in 0..2 {
        let (status, _, body) = get(&c, through_public.clone(), &anyone).await;
        assert_eq!(status, 404, "served through library/pub");
        assert_ne!(body, secret);
    }
    // Without any token either.
    let r = c.get(&through_public).send().await.unwrap();
    assert_ne!(r.status(), 200);
    // The owner still reads it from cache.
    let (status, cache, body) = get(&c, private_url, &owner).await;
    assert_eq!((status, cache.as_str(), body == secret), (200, "hit", true));
}
