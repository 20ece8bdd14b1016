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

/// One pull as docker makes it: HEAD by tag, GET the manifest by the digest the HEAD named,
/// each child manifest of an index by digest, then the blobs; every request with `tok`.
async fn docker_pull(
    c: &reqwest::Client,
    mirror: &Mirror,
    repo: &str,
    tag: &str,
    tok: &str,
) -> Vec<String> {
    let manifest = |reference: &str| mirror.url(&format!("/v2/{repo}/manifests/{reference}"));
    let head = c.head(manifest(tag)).bearer_auth(tok).send().await.unwrap();
    assert_eq!(head.status(), 200, "HEAD {repo}:{tag}");
    let digest = head.headers()["docker-content-digest"]
        .to_str()
        .unwrap()
        .to_owned();
    let mut statuses = vec![cache_status(&head)];
    let mut pending = vec![digest];
    while let Some(digest) = pending.pop() {
        let r = c
            .get(manifest(&digest))
            .bearer_auth(tok)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "GET {repo}@{digest}");
        statuses.push(cache_status(&r));
        let body = r.bytes().await.unwrap();
        assert_eq!(common::sha256(&body), digest);
        let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
        for child in doc["manifests"].as_array().into_iter().flatten() {
            pending.push(child["digest"].as_str().unwrap().to_owned());
        }
        if let Some(config) = doc["config"]["digest"].as_str() {
            let r = c
                .get(mirror.url(&format!("/v2/{repo}/blobs/{config}")))
                .bearer_auth(tok)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "GET {repo} blob {config}");
            statuses.push(cache_status(&r));
            assert_eq!(common::sha256(&r.bytes().await.unwrap()), config);
        }
    }
    statuses
}

#[tokio::test(flavor = "multi_thread")]
async fn new_tokens_pull_an_oci_image_an_oci_index_and_a_docker_image_with_one_get_per_manifest() {
    let hub = Hub::start().await;
    let oci = hub.add_manifest("library/oci", "v1", &hub.add_blob(noise(4096, 1)));
    let (index, children) = hub.add_index(
        "library/multi",
        "v1",
        &[
            ("linux/amd64", &hub.add_blob(noise(4096, 2))),
            ("linux/arm64", &hub.add_blob(noise(4096, 3))),
        ],
    );
    let docker = hub.add_docker_manifest("library/dock", "v1", &hub.add_blob(noise(4096, 4)));
    let manifests = 1 + 1 + children.len() + 1;
    let mirror = Mirror::start(&config(&hub));
    let c = common::client(&[], mirror.addr());
    let images = ["library/oci", "library/multi", "library/dock"];
    let mut after_first = 0;
    for pull in 0..4 {
        for repo in images {
            // A new token each pull, as Docker Hub issues.
            let tok = hub::pull_token(&c, &mirror, repo, None).await;
            let statuses = docker_pull(&c, &mirror, repo, "v1", &tok).await;
            if pull > 0 {
                assert!(
                    statuses.iter().all(|s| s == "hit"),
                    "pull {pull} of {repo}: {statuses:?}"
                );
            }
        }
        if pull == 0 {
            for repo in images {
                hub.wait_for_probe(repo).await;
            }
            after_first = hub.count(REGISTRY);
        }
    }
    let seen: Vec<_> = hub
        .seen_by(REGISTRY)
        .iter()
        .map(|s| format!("{} {}", s.method, s.path_and_query))
        .collect();
    assert_eq!(
        hub.count_method(REGISTRY, "GET", "/manifests/"),
        manifests,
        "one GET per manifest ({}, {}, {}): {seen:#?}",
        oci.digest,
        index.digest,
        docker.digest
    );
    // Each HEAD by tag after the first pull, with its new token, was answered by the pointer.
    assert_eq!(
        hub.count(REGISTRY),
        after_first,
        "later pulls asked the registry: {seen:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_first_docker_pull_asks_the_registry_what_a_direct_pull_asks() {
    let hub = Hub::start().await;
    let blob = hub.add_blob(noise(4096, 6));
    let manifest = hub.add_manifest("library/first", "v1", &blob);
    let mirror = Mirror::start(&config(&hub));
    let c = common::client(&[], mirror.addr());
    let tok = hub::pull_token(&c, &mirror, "library/first", None).await;
    let statuses = docker_pull(&c, &mirror, "library/first", "v1", &tok).await;
    assert_eq!(statuses, ["miss", "miss", "miss"]);
    // What the client's own token asked (the mirror's background access probe, with an
    // anonymous token of its own, is not the client's doing).
    let asked: Vec<_> = hub
        .seen_by(REGISTRY)
        .into_iter()
        .filter(|s| s.authorization.as_deref() == Some(format!("Bearer {tok}").as_str()))
        .map(|s| format!("{} {}", s.method, s.path_and_query))
        .collect();
    assert_eq!(
        asked,
        [
            "HEAD /v2/library/first/manifests/v1".to_owned(),
            format!("GET /v2/library/first/manifests/{}", manifest.digest),
            format!("GET /v2/library/first/blobs/{blob}"),
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_requests_on_a_stale_tag_send_one_head() {
    let hub = Hub::start().await;
    let manifest = hub.add_manifest("library/app", "v1", &hub.add_blob(noise(1024, 5)));
    let mirror = Mirror::start(&format!("cache: {{ tag_ttl: 1s }}\n{}", config(&hub)));
    let c = common::client(&[], mirror.addr());
    let tag = mirror.url("/v2/library/app/manifests/v1");
    let tok = hub::pull_token(&c, &mirror, "library/app", None).await;
    let r = c.get(&tag).bearer_auth(&tok).send().await.unwrap();
    assert_eq!(r.bytes().await.unwrap(), manifest.body);
    hub.wait_for_probe("library/app").await;
    let mut tokens = Vec::new();
    for _ in 0..50 {
        tokens.push(hub::pull_token(&c, &mirror, "library/app", None).await);
    }
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let before = hub.count(REGISTRY);
    let pulls = tokens.iter().map(|tok| {
        let (c, tag) = (c.clone(), tag.clone());
        async move {
            let r = c.get(&tag).bearer_auth(tok).send().await.unwrap();
            (r.status(), cache_status(&r), r.bytes().await.unwrap())
        }
    });
    for (status, cache, body) in futures::future::join_all(pulls).await {
        assert_eq!(status, 200);
        assert!(cache == "revalidated" || cache == "hit", "{cache}");
        assert_eq!(body, manifest.body);
    }
    let asked: Vec<_> = hub
        .seen_by(REGISTRY)
        .into_iter()
        .skip(before)
        .map(|s| format!("{} {}", s.method, s.path_and_query))
        .collect();
    assert_eq!(asked, ["HEAD /v2/library/app/manifests/v1"]);
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
