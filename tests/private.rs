//! Private content stays private: what the upstream served only with credentials is served
//! from cache only to clients whose own credentials the upstream accepts for that
//! repository; public content is served to anyone.

mod common;

use common::hub::{self, Hub, PASSWORD, PRIVATE_REPO, REGISTRY, STORAGE, USER};
use common::registry::noise;
use common::Mirror;

fn config(hub: &Hub) -> String {
    format!(
        "default_route: docker\nredirects: {{ follow: [\".docker.com\", \".cloudflarestorage.com\"], to_client: [] }}\n{}",
        hub.mirror_config()
    )
}

fn cache_status(r: &reqwest::Response) -> &str {
    r.headers()
        .get("x-cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// A private blob of `data`, filled through a mirror by Alice (a miss with her token), its
/// repository's publicity probed.
struct FilledPrivately {
    hub: Hub,
    mirror: Mirror,
    c: reqwest::Client,
    blob: String,
    url: String,
    alice: String,
}

async fn filled_privately(data: Vec<u8>) -> FilledPrivately {
    let hub = Hub::start().await;
    let blob = hub.add_blob(data);
    let mirror = Mirror::start(&config(&hub));
    let c = common::client(&[], mirror.addr());
    let url = mirror.url(&format!("/v2/{PRIVATE_REPO}/blobs/{blob}"));
    let alice = hub::pull_token(&c, &mirror, PRIVATE_REPO, Some((USER, PASSWORD))).await;
    let r = c.get(&url).bearer_auth(&alice).send().await.unwrap();
    assert_eq!((r.status().as_u16(), cache_status(&r)), (200, "miss"));
    assert_eq!(common::sha256(&r.bytes().await.unwrap()), blob);
    hub.wait_for_probe(PRIVATE_REPO).await;
    FilledPrivately {
        hub,
        mirror,
        c,
        blob,
        url,
        alice,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn private_blob_needs_accepted_credentials() {
    let FilledPrivately {
        hub,
        mirror,
        c,
        blob,
        url,
        alice,
    } = filled_privately(noise(1 << 20, 77)).await;
    let fetched = hub.count(STORAGE);

    // No credentials at all: the upstream's 401, as the mirror's challenge.
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("/v2/auth"));
    // An anonymous token, which the upstream refuses for this repository: 401 as well.
    let anon = hub::pull_token(&c, &mirror, PRIVATE_REPO, None).await;
    let r = c.get(&url).bearer_auth(&anon).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        hub.count(STORAGE),
        fetched,
        "the private blob was fetched again"
    );

    // Alice's token: served from cache after one HEAD with her token, then no more HEADs.
    let heads = hub.count_method(REGISTRY, "HEAD", "/blobs/");
    for _ in 0..2 {
        let r = c.get(&url).bearer_auth(&alice).send().await.unwrap();
        assert_eq!((r.status().as_u16(), cache_status(&r)), (200, "hit"));
        assert_eq!(common::sha256(&r.bytes().await.unwrap()), blob);
    }
    assert_eq!(hub.count_method(REGISTRY, "HEAD", "/blobs/"), heads + 1);
    assert_eq!(hub.count(STORAGE), fetched);
    // The internal marker never reaches clients.
    let r = c.get(&url).bearer_auth(&alice).send().await.unwrap();
    assert!(!r.headers().contains_key("x-pullthrough-private"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_reader_costs_one_upstream_check_per_request() {
    // Small enough to be held in memory: the hot path checks the reader before the cache's.
    let FilledPrivately {
        hub,
        mirror,
        c,
        blob,
        url,
        alice,
    } = filled_privately(noise(64 << 10, 78)).await;
    // Alice reads it from memory (a read during the fill's commit would join the fill).
    let mut status = String::new();
    for _ in 0..50 {
        let r = c.get(&url).bearer_auth(&alice).send().await.unwrap();
        status = cache_status(&r).to_owned();
        assert_eq!(common::sha256(&r.bytes().await.unwrap()), blob);
        if status == "hit" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(status, "hit");
    let fetched = hub.count(STORAGE);

    // A token the upstream refuses: each request asks the upstream once about it (HEAD), then
    // relays the upstream's own answer to it. Before, the cache's path asked a second time.
    let anon = hub::pull_token(&c, &mirror, PRIVATE_REPO, None).await;
    let heads = hub.count_method(REGISTRY, "HEAD", "/blobs/");
    for _ in 0..3 {
        let r = c.get(&url).bearer_auth(&anon).send().await.unwrap();
        assert_eq!(r.status(), 401);
    }
    assert_eq!(
        hub.count_method(REGISTRY, "HEAD", "/blobs/"),
        heads + 3,
        "one check per refused request\n{}",
        mirror.log()
    );
    assert_eq!(
        hub.count(STORAGE),
        fetched,
        "the private blob was fetched again"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn public_blob_is_served_to_anyone() {
    let hub = Hub::start().await;
    let blob = hub.add_blob(noise(1 << 20, 78));
    let mirror = Mirror::start(&config(&hub));
    let c = common::client(&[], mirror.addr());
    let url = mirror.url(&format!("/v2/library/pub/blobs/{blob}"));
    let tok = hub::pull_token(&c, &mirror, "library/pub", None).await;
    c.get(&url)
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    hub.wait_for_probe("library/pub").await;
    let asked = hub.seen().len();

    let r = c.get(&url).send().await.unwrap();
    assert_eq!((r.status().as_u16(), cache_status(&r)), (200, "hit"));
    assert_eq!(common::sha256(&r.bytes().await.unwrap()), blob);
    assert_eq!(hub.seen().len(), asked, "a public hit asked the upstream");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_private_tag_points_only_for_accepted_credentials() {
    let hub = Hub::start().await;
    let manifest = hub.add_manifest(PRIVATE_REPO, "v1", &hub.add_blob(noise(1024, 79)));
    let mirror = Mirror::start(&config(&hub));
    let c = common::client(&[], mirror.addr());
    let tag = mirror.url(&format!("/v2/{PRIVATE_REPO}/manifests/v1"));
    let head = |tok: Option<String>| {
        let mut r = c.head(&tag);
        if let Some(tok) = tok {
            r = r.bearer_auth(tok);
        }
        r.send()
    };

    let alice = hub::pull_token(&c, &mirror, PRIVATE_REPO, Some((USER, PASSWORD))).await;
    let r = head(Some(alice.clone())).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["docker-content-digest"],
        manifest.digest.as_str()
    );
    let r = c.get(&tag).bearer_auth(&alice).send().await.unwrap();
    assert_eq!(r.bytes().await.unwrap(), manifest.body);
    hub.wait_for_probe(PRIVATE_REPO).await;

    // Neither no token nor an anonymous one learns where the private tag points.
    // The pointer is not followed for them at all: nothing is asked by digest.
    let anon = hub::pull_token(&c, &mirror, PRIVATE_REPO, None).await;
    let by_digest = hub.count_path(REGISTRY, "/manifests/sha256:");
    for tok in [None, Some(anon)] {
        let r = head(tok.clone()).await.unwrap();
        assert_eq!(r.status(), 401, "token {tok:?}");
        assert!(!r.headers().contains_key("docker-content-digest"));
    }
    assert_eq!(hub.count_path(REGISTRY, "/manifests/sha256:"), by_digest);
    // Alice's own token follows the pointer from the cache: the registry is not asked.
    let before = hub.count(REGISTRY);
    let r = head(Some(alice)).await.unwrap();
    assert_eq!((r.status().as_u16(), cache_status(&r)), (200, "hit"));
    assert_eq!(hub.count(REGISTRY), before);
    assert!(!r.headers().contains_key("x-pullthrough-pointer-private"));
}
