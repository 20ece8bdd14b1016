//! Warm pulls survive an upstream outage: with the registry answering 503 (and then its token
//! realm too), a client's whole pull flow (`/v2/`, token, tag, digest, blob) is served by the
//! mirror; a stale tag is served with `X-Cache-Status: stale` for up to `cache.stale_for`, 50
//! concurrent requests on it send one HEAD, and the outage costs one upstream attempt, not one
//! per request. Against a real registry and token server: `e2e_skopeo.rs`.

mod common;

use std::time::Duration;

use common::hub::{self, Hub, AUTH, REGISTRY};
use common::registry::noise;
use common::{cache_status, Mirror};

struct Warm {
    hub: Hub,
    mirror: Mirror,
    c: reqwest::Client,
    paths: [String; 3],
}

/// A mirror that has pulled `library/app:v1` (manifest by tag and digest, one blob) once.
async fn warm(extra: &str) -> Warm {
    let hub = Hub::start().await;
    let blob = hub.add_blob(noise(256 << 10, 4));
    let manifest = hub.add_manifest("library/app", "v1", &blob);
    let mirror = Mirror::start(&format!(
        "default_route: docker\n{extra}redirects: {{ follow: [\".docker.com\", \".cloudflarestorage.com\"], to_client: [] }}\n{}",
        hub.mirror_config()
    ));
    let c = common::client(&[], mirror.addr());
    let paths = [
        "/v2/library/app/manifests/v1".to_owned(),
        format!("/v2/library/app/manifests/{}", manifest.digest),
        format!("/v2/library/app/blobs/{blob}"),
    ];
    assert_eq!(
        c.get(mirror.url("/v2/")).send().await.unwrap().status(),
        401
    );
    let tok = hub::pull_token(&c, &mirror, "library/app", None).await;
    for p in &paths {
        let r = c.get(mirror.url(p)).bearer_auth(&tok).send().await.unwrap();
        assert_eq!(r.status(), 200, "{p}");
        r.bytes().await.unwrap();
    }
    hub.wait_for_probe("library/app").await;
    Warm {
        hub,
        mirror,
        c,
        paths,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tags_point_the_way_after_a_restart_with_the_registry_down() {
    let cache = tempfile::tempdir().unwrap();
    let extra = format!(
        "cache: {{ dir: \"{}\", tag_ttl: 1s }}\n",
        cache.path().display()
    );
    let mut w = warm(&extra).await;
    // A clean stop; the registry goes down; a new process starts on the same cache.
    w.mirror.stop();
    w.hub.set_down(true);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    w.mirror = Mirror::start(&format!(
        "default_route: docker\n{extra}{}",
        w.hub.mirror_config()
    ));
    w.c = common::client(&[], w.mirror.addr());
    let r = w.c.get(w.mirror.url("/v2/")).send().await.unwrap();
    // A new process knows no realm yet: /v2/ unchallenged, the content as anyone may read it.
    assert_eq!(r.status(), 200, "/v2/ while the upstream is down");
    let before = w.hub.count(REGISTRY);
    for _ in 0..2 {
        let statuses = pull_without_token(&w).await;
        assert_eq!(statuses, ["stale", "hit", "hit"]);
    }
    assert_eq!(
        w.hub.count(REGISTRY) - before,
        0,
        "the outage was learned by /v2/"
    );
    assert!(w.mirror.log().contains("following the tag's last pointer"));
}

/// Every path, without a token (a client that found `/v2/` unchallenged).
async fn pull_without_token(w: &Warm) -> Vec<String> {
    let mut statuses = Vec::new();
    for p in &w.paths {
        let r = w.c.get(w.mirror.url(p)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{p}");
        statuses.push(cache_status(&r));
        r.bytes().await.unwrap();
    }
    statuses
}

/// A client's pull as docker and skopeo do it: `/v2/`, a token from the realm the challenge
/// names, then every path; returns each answer's cache status.
async fn pull(w: &Warm) -> Vec<String> {
    let r = w.c.get(w.mirror.url("/v2/")).send().await.unwrap();
    assert_eq!(r.status(), 401, "/v2/ while the upstream is down");
    let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert!(challenge.contains(&w.mirror.url("/v2/auth")), "{challenge}");
    let tok = hub::pull_token(&w.c, &w.mirror, "library/app", None).await;
    let mut statuses = Vec::new();
    for p in &w.paths {
        let r =
            w.c.get(w.mirror.url(p))
                .bearer_auth(&tok)
                .send()
                .await
                .unwrap();
        assert_eq!(r.status(), 200, "{p}");
        statuses.push(cache_status(&r));
        r.bytes().await.unwrap();
    }
    statuses
}

#[tokio::test(flavor = "multi_thread")]
async fn a_warm_pull_goes_on_while_the_registry_and_then_its_realm_are_down() {
    let w = warm("").await;
    w.hub.set_down(true);
    let before = w.hub.count(REGISTRY);
    for _ in 0..3 {
        assert_eq!(pull(&w).await, ["hit", "hit", "hit"]);
    }
    // One attempt (the first /v2/) learned the outage; the rest were answered without asking.
    assert_eq!(
        w.hub.count(REGISTRY) - before,
        1,
        "{:?}",
        w.hub.seen_by(REGISTRY)
    );

    // The token realm goes down too: the mirror hands out its own token, which grants
    // nothing beyond what anyone may read: the public repository's cached content.
    w.hub.set_auth_down(true);
    let auth_before = w.hub.count(AUTH);
    for _ in 0..2 {
        assert_eq!(pull(&w).await, ["hit", "hit", "hit"]);
    }
    assert!(w.hub.count(AUTH) - auth_before <= 1);
    assert!(w.mirror.log().contains("upstream unavailable"));

    // Back up: the mirror asks again once the outage memory (10 s) has passed.
    w.hub.set_down(false);
    w.hub.set_auth_down(false);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hanging_upstream_costs_one_timeout_for_a_stale_tag() {
    let w =
        warm("cache: { tag_ttl: 1s }\nupstream: { connect_timeout: 1s, read_timeout: 1s }\n").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let tok = hub::pull_token(&w.c, &w.mirror, "library/app", None).await;
    // The registry now takes connections and never answers.
    w.hub.set_hanging(true);
    let heads_before = w.hub.count_method(REGISTRY, "HEAD", "/manifests/");
    let started = std::time::Instant::now();
    let read_all = |n: usize| {
        let readers: Vec<_> = (0..n)
            .map(|_| {
                let (c, url, tok) = (w.c.clone(), w.mirror.url(&w.paths[0]), tok.clone());
                tokio::spawn(async move {
                    let r = c.get(url).bearer_auth(tok).send().await.unwrap();
                    (r.status().as_u16(), cache_status(&r))
                })
            })
            .collect::<Vec<_>>();
        async move {
            for r in readers {
                assert_eq!(r.await.unwrap(), (200, "stale".to_owned()));
            }
        }
    };
    // 20 readers together: one HEAD waits out the deadline, all are served stale.
    read_all(20).await;
    let first = started.elapsed();
    // 20 more: the outage is remembered, nobody waits and nothing more is sent.
    let again = std::time::Instant::now();
    read_all(20).await;
    eprintln!(
        "stale answers: first 20 readers {first:?} (one side-request deadline), next 20 {:?}",
        again.elapsed()
    );
    assert_eq!(
        w.hub.count_method(REGISTRY, "HEAD", "/manifests/") - heads_before,
        1,
        "40 readers of a stale tag with a hanging upstream sent more than one HEAD"
    );
    w.hub.set_hanging(false);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_tag_is_served_while_down_checked_once_and_not_past_stale_for() {
    // stale_for leaves the 50 readers below seconds of slack on a loaded machine.
    let w = warm("cache: { tag_ttl: 1s, stale_for: 6s }\n").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    w.hub.set_down(true);
    let tok = hub::pull_token(&w.c, &w.mirror, "library/app", None).await;
    let heads_before = w.hub.count_method(REGISTRY, "HEAD", "/manifests/");
    // 50 readers of the stale tag at once: one HEAD, every one served stale.
    let readers: Vec<_> = (0..50)
        .map(|_| {
            let (c, url, tok) = (w.c.clone(), w.mirror.url(&w.paths[0]), tok.clone());
            tokio::spawn(async move {
                let r = c.get(url).bearer_auth(tok).send().await.unwrap();
                (r.status().as_u16(), cache_status(&r))
            })
        })
        .collect();
    for r in readers {
        assert_eq!(r.await.unwrap(), (200, "stale".to_owned()));
    }
    assert_eq!(
        w.hub.count_method(REGISTRY, "HEAD", "/manifests/") - heads_before,
        1,
        "50 readers of a stale tag sent more than one HEAD"
    );
    let r =
        w.c.get(w.mirror.url(&w.paths[0]))
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap();
    assert!(r.headers()["warning"].to_str().unwrap().contains("Stale"));

    // Past tag_ttl + stale_for the tag is no longer served; content by digest still is.
    tokio::time::sleep(Duration::from_millis(6200)).await;
    let r =
        w.c.get(w.mirror.url(&w.paths[0]))
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap();
    assert!(r.status().is_server_error(), "{}", r.status());
    let r =
        w.c.get(w.mirror.url(&w.paths[1]))
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap();
    assert_eq!(
        (r.status().as_u16(), cache_status(&r).as_str()),
        (200, "hit")
    );
}
