//! Ask upstream once, for every client: what is cached is not fetched again because a client
//! comes back with a new token (Docker Hub issues one per pull), and the mirror speaks the
//! registry's protocol where clients and the conformance suite look.

mod common;

use common::hub::{self, Hub, REGISTRY};
use common::registry::noise;
use common::{cache_status, Mirror};

fn config(hub: &Hub) -> String {
    format!(
        "default_route: docker\nredirects: {{ follow: [\".docker.com\", \".cloudflarestorage.com\"], to_client: [] }}\n{}",
        hub.mirror_config()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_token_each_pull_does_not_fetch_the_oci_manifest_again() {
    let hub = Hub::start().await;
    let blob = hub.add_blob(noise(64 << 10, 1));
    // The hub, like distribution, answers this OCI manifest only to an OCI Accept.
    let manifest = hub.add_manifest("library/oci", "v1", &blob);
    let mirror = Mirror::start(&config(&hub));
    let c = common::client(&[], mirror.addr());
    let paths = [
        "/v2/library/oci/manifests/v1".to_owned(),
        format!("/v2/library/oci/manifests/{}", manifest.digest),
        format!("/v2/library/oci/blobs/{blob}"),
    ];
    let mut after_first = None;
    for pull in 0..3 {
        // A new token each pull, as docker and skopeo get from Docker Hub.
        let tok = hub::pull_token(&c, &mirror, "library/oci", None).await;
        for path in &paths {
            let r = c
                .get(mirror.url(path))
                .bearer_auth(&tok)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "pull {pull}: {path}");
            if pull > 0 {
                assert_eq!(cache_status(&r), "hit", "pull {pull}: {path}");
            }
            let body = r.bytes().await.unwrap();
            if path.contains("/manifests/") {
                assert_eq!(body, manifest.body);
            }
        }
        // docker's check: HEAD by tag, with this pull's token.
        let r = c
            .head(mirror.url(&paths[0]))
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()["docker-content-digest"],
            manifest.digest.as_str()
        );
        if pull == 0 {
            hub.wait_for_probe("library/oci").await;
            after_first = Some(hub.count(REGISTRY));
        }
    }
    // The mirror's own requests (the access probe's HEADs) say who they are.
    let own: Vec<_> = hub
        .seen_by(REGISTRY)
        .into_iter()
        .filter(|s| s.method == "HEAD")
        .collect();
    assert!(!own.is_empty());
    for s in own {
        assert_eq!(
            s.user_agent.as_deref(),
            Some(concat!("pullthrough/", env!("CARGO_PKG_VERSION")))
        );
    }
    assert_eq!(
        hub.count_method(REGISTRY, "GET", "/manifests/"),
        1,
        "the tag is a pointer (one HEAD) to the digest, GET once, then none"
    );
    assert_eq!(
        Some(hub.count(REGISTRY)),
        after_first,
        "pulls with new tokens asked the registry again: {:?}",
        hub.seen_by(REGISTRY)
            .iter()
            .map(|s| format!("{} {}", s.method, s.path_and_query))
            .collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn protocol_answers_clients_and_the_conformance_suite_expect() {
    let hub = Hub::start().await;
    let mirror = Mirror::start(&config(&hub));
    let c = common::client(&[], mirror.addr());
    // A name that cannot be a tag is an unknown manifest (conformance: 404 MANIFEST_UNKNOWN).
    let r = c
        .get(mirror.url("/v2/library/app/manifests/.INVALID_MANIFEST_NAME"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "MANIFEST_UNKNOWN");
    // A 405 says what would work.
    let r = c
        .put(mirror.url("/v2/library/app/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET, HEAD");
    assert!(
        hub.seen().is_empty(),
        "refused requests reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tag_list_pages_are_named_the_way_the_client_came() {
    let hub = Hub::start().await;
    let blob = hub.add_blob(noise(1024, 2));
    hub.add_manifest("library/app", "v1", &blob);
    hub.add_manifest("library/app", "v2", &blob);
    let mirror = Mirror::start(&config(&hub));
    let c = common::client(&[], mirror.addr());
    let tok = hub::pull_token(&c, &mirror, "library/app", None).await;
    for (path, want) in [
        (
            "/v2/library/app/tags/list?n=1",
            "</v2/library/app/tags/list?last=v1&n=1>; rel=\"next\"",
        ),
        (
            "/v2/docker.io/library/app/tags/list?n=1",
            "</v2/docker.io/library/app/tags/list?last=v1&n=1>; rel=\"next\"",
        ),
        (
            "/v2/library/app/tags/list?n=1&ns=docker.io",
            "</v2/library/app/tags/list?last=v1&n=1&ns=docker.io>; rel=\"next\"",
        ),
    ] {
        let r = c
            .get(mirror.url(path))
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.headers()["link"], want, "{path}");
    }
}
