//! Auth relay against the fake Docker Hub: every upstream 401 becomes the mirror's own
//! challenge, `/v2/auth` relays to the upstream realm with every scope and the client's
//! Basic credentials, and no credential ever reaches the log.

mod common;

use common::hub::{self, Hub, AUTH, PASSWORD, PRIVATE_REPO, REGISTRY, USER};
use common::Mirror;

const HOST: &str = "docker.mirror.test";

fn www_authenticate(r: &reqwest::Response) -> String {
    r.headers()["www-authenticate"].to_str().unwrap().to_owned()
}

async fn token(r: reqwest::Response) -> String {
    let body: serde_json::Value = r.json().await.unwrap();
    body["token"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn challenge_relay_and_pull() {
    let hub = Hub::start().await;
    let blob = hub.add_blob(b"config".to_vec());
    let manifest = hub.add_manifest("library/hello", "latest", &blob);
    let mirror = Mirror::start(&format!("domain: mirror.test\n{}", hub.mirror_config()));
    let c = common::client(&[HOST], mirror.addr());
    let base = format!("http://{HOST}:{}", mirror.port);

    // The version check: the upstream's challenge, with the mirror's realm on the name and
    // port the client used.
    let r = c.get(format!("{base}/v2/")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        www_authenticate(&r),
        format!(
            r#"Bearer realm="http://{HOST}:{}/v2/auth",service="registry.docker.io""#,
            mirror.port
        )
    );

    // A manifest without a token: the challenge keeps the upstream's scope.
    let r = c
        .get(format!("{base}/v2/hello/manifests/latest"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        www_authenticate(&r).ends_with(r#"scope="repository:library/hello:pull""#),
        "{}",
        www_authenticate(&r)
    );

    // The token request relays to the realm on the other host with library/ added.
    let realm = format!("{base}/v2/auth");
    let r = hub::token_via(&c, &realm, "repository:hello:pull", None).await;
    assert_eq!(r.status(), 200);
    let tok = token(r).await;
    let asked = hub.seen_by(AUTH);
    assert_eq!(asked.len(), 1);
    assert!(
        asked[0]
            .path_and_query
            .contains("scope=repository%3Alibrary%2Fhello%3Apull"),
        "{asked:?}"
    );
    assert!(asked[0]
        .path_and_query
        .contains("service=registry.docker.io"));

    // With the token: the manifest, its digest and Docker Hub's rate-limit headers.
    let r = c
        .get(format!("{base}/v2/hello/manifests/latest"))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["docker-content-digest"],
        manifest.digest.as_str()
    );
    assert_eq!(r.headers()["ratelimit-remaining"], "99;w=21600");
    assert_eq!(r.bytes().await.unwrap(), manifest.body);
    // The tag was looked up by HEAD and the manifest fetched by its digest, both with the
    // client's token (the mirror's anonymous access probe, a HEAD, may come after them).
    let seen = hub.seen_by(REGISTRY);
    let with = |method: &str, path: &str| {
        seen.iter()
            .find(|s| s.method == method && s.path_and_query == path)
            .unwrap_or_else(|| panic!("no {method} {path}: {seen:?}"))
            .authorization
            .clone()
    };
    let bearer = Some(format!("Bearer {tok}"));
    assert_eq!(with("HEAD", "/v2/library/hello/manifests/latest"), bearer);
    let by_digest = format!("/v2/library/hello/manifests/{}", manifest.digest);
    assert_eq!(with("GET", &by_digest), bearer);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_scope_and_private_credentials() {
    let hub = Hub::start().await;
    let blob = hub.add_blob(b"private config".to_vec());
    let manifest = hub.add_manifest(PRIVATE_REPO, "v1", &blob);
    let mirror = Mirror::start(&format!("default_route: docker\n{}", hub.mirror_config()));
    let c = common::client(&[], mirror.addr());

    // No realm learned yet: the relay asks the registry's /v2/ first, anonymously.
    let r = c
        .get(mirror.url("/v2/auth"))
        .query(&[
            ("service", "registry.docker.io"),
            ("scope", "repository:busybox:pull"),
            ("scope", &format!("repository:{PRIVATE_REPO}:pull")),
        ])
        .basic_auth(USER, Some(PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let tok = token(r).await;
    assert_eq!(
        hub::grants(&tok),
        format!("tok:library/busybox,{PRIVATE_REPO}")
    );
    let discovery = hub.seen_by(REGISTRY);
    assert_eq!(discovery.len(), 1);
    assert_eq!(discovery[0].path_and_query, "/v2/");
    assert_eq!(discovery[0].authorization, None);
    let asked = hub.seen_by(AUTH);
    assert!(asked[0]
        .authorization
        .as_deref()
        .is_some_and(|a| a.starts_with("Basic ")));

    // Anonymous: the private repository stays closed.
    let anon = token(
        hub::token_via(
            &c,
            &mirror.url("/v2/auth"),
            &format!("repository:{PRIVATE_REPO}:pull"),
            None,
        )
        .await,
    )
    .await;
    let r = c
        .get(mirror.url(&format!("/v2/{PRIVATE_REPO}/manifests/v1")))
        .bearer_auth(&anon)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let r = c
        .get(mirror.url(&format!("/v2/{PRIVATE_REPO}/manifests/v1")))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), manifest.body);
    // The realm was learned once: the second token request did not ask /v2/ again.
    assert_eq!(
        hub.seen_by(REGISTRY)
            .iter()
            .filter(|s| s.path_and_query == "/v2/")
            .count(),
        1
    );

    // Wrong password: the realm's refusal reaches the client.
    let r = hub::token_via(
        &c,
        &mirror.url("/v2/auth"),
        "repository:x:pull",
        Some((USER, "wrong")),
    )
    .await;
    assert_eq!(r.status(), 401);

    // Credentials and tokens never reach the log, even at debug level.
    let log = mirror.log();
    assert!(log.contains("route=docker"), "no access lines:\n{log}");
    for secret in [PASSWORD, &tok, "YWxpY2U6czNjcmV0LXBhNTU"] {
        assert!(!log.contains(secret), "log leaks {secret:?}:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn path_prefix_scopes_round_trip() {
    let hub = Hub::start().await;
    let blob = hub.add_blob(b"cfg".to_vec());
    hub.add_manifest("library/hello", "1", &blob);
    let mirror = Mirror::start(&hub.mirror_config());
    let c = common::client(&[], mirror.addr());

    // Through the path prefix the client names the repository docker.io/hello: the challenge
    // scope is in its names, and the token request is translated back.
    let r = c
        .get(mirror.url("/v2/docker.io/hello/manifests/1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let challenge = www_authenticate(&r);
    assert!(
        challenge.contains(r#"scope="repository:docker.io/library/hello:pull""#),
        "{challenge}"
    );
    let tok = token(
        hub::token_via(
            &c,
            &mirror.url("/v2/auth"),
            "repository:docker.io/hello:pull",
            None,
        )
        .await,
    )
    .await;
    assert_eq!(hub::grants(&tok), "tok:library/hello");
    let r = c
        .get(mirror.url("/v2/docker.io/hello/manifests/1"))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn several_challenges_are_answered_with_the_bearer_one() {
    let hub = Hub::start().await;
    let blob = hub.add_blob(b"config".to_vec());
    let mirror = Mirror::start(&format!("domain: mirror.test\n{}", hub.mirror_config()));
    let c = common::client(&[HOST], mirror.addr());
    let base = format!("http://{HOST}:{}", mirror.port);
    // Each style on a repository of its own (the first one's manifest is cached after it).
    for (style, name) in [
        (hub::BasicFirst::SameHeader, "one"),
        (hub::BasicFirst::OwnHeader, "two"),
    ] {
        let manifest = hub.add_manifest(&format!("library/{name}"), "latest", &blob);
        hub.set_basic_first(Some(style));
        let r = c
            .get(format!("{base}/v2/{name}/manifests/latest"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let offered: Vec<_> = r
            .headers()
            .get_all("www-authenticate")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            offered,
            [format!(
                r#"Bearer realm="http://{HOST}:{}/v2/auth",service="registry.docker.io",scope="repository:library/{name}:pull""#,
                mirror.port
            )],
            "{style:?}"
        );
        let tok = token(
            hub::token_via(
                &c,
                &format!("{base}/v2/auth"),
                &format!("repository:{name}:pull"),
                None,
            )
            .await,
        )
        .await;
        let r = c
            .get(format!("{base}/v2/{name}/manifests/latest"))
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{style:?}");
        assert_eq!(r.bytes().await.unwrap(), manifest.body);
    }
}
