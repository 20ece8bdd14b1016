//! Abuse control: per-client request rate (429 with Retry-After and the registry error),
//! concurrent blob downloads per client, repository allow and block lists (403 DENIED), and
//! X-Forwarded-For / X-Forwarded-Proto believed only from trusted proxies.

mod common;

use std::time::Duration;

use common::hub::{self, Hub, STORAGE};
use common::registry::noise;
use common::{free_port, Mirror};

async fn error_code(r: reqwest::Response) -> String {
    let body: serde_json::Value = r.json().await.unwrap();
    body["errors"][0]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn request_rate_per_client_and_trusted_proxies() {
    let hub = Hub::start().await;
    let admin = free_port();
    let mirror = Mirror::start(&format!(
        "default_route: docker\nlimits: {{ requests_per_second: 5 }}\ntrusted_proxies: [\"127.0.0.1\"]\nadmin: {{ listen: \"127.0.0.1:{admin}\" }}\n{}",
        hub.mirror_config()
    ));
    let c = common::client(&[], mirror.addr());
    // 20 requests in well under a second from one client (named by a trusted proxy): at most
    // 5 per one-second window pass, so some are refused.
    let mut refused = 0;
    for _ in 0..20 {
        let r = c
            .get(mirror.url("/v2/"))
            .header("x-forwarded-for", "203.0.113.7")
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            refused += 1;
            assert_eq!(r.headers()["retry-after"], "1");
            assert_eq!(error_code(r).await, "TOOMANYREQUESTS");
        }
    }
    assert!((5..=15).contains(&refused), "{refused} of 20 refused");
    // Another client behind the same proxy is not affected; /healthz is never limited.
    let other = c
        .get(mirror.url("/v2/"))
        .header("x-forwarded-for", "203.0.113.8")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 401);
    for _ in 0..10 {
        let h = c
            .get(mirror.url("/healthz"))
            .header("x-forwarded-for", "203.0.113.7")
            .send()
            .await
            .unwrap();
        assert_eq!(h.status(), 200);
    }
    let metrics = common::get_text(&c, format!("http://127.0.0.1:{admin}/metrics")).await;
    assert!(
        metrics.contains(&format!("pullthrough_rate_limited_total {refused}")),
        "{metrics}"
    );

    // A trusted proxy's X-Forwarded-Proto sets the realm's scheme.
    let r = c
        .get(mirror.url("/v2/"))
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    assert!(r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("realm=\"https://"));
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarded_headers_from_untrusted_peers_are_ignored() {
    let hub = Hub::start().await;
    let mirror = Mirror::start(&format!(
        "default_route: docker\nlimits: {{ requests_per_second: 3 }}\n{}",
        hub.mirror_config()
    ));
    let c = common::client(&[], mirror.addr());
    // Every request claims a new address; without trust they all count as 127.0.0.1.
    let mut refused = 0;
    for i in 0..20 {
        let r = c
            .get(mirror.url("/v2/"))
            .header("x-forwarded-for", format!("198.51.100.{i}"))
            .header("x-forwarded-proto", "https")
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            429 => refused += 1,
            401 => assert!(r.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .contains("realm=\"http://")),
            other => panic!("unexpected {other}"),
        }
    }
    assert!(
        refused >= 10,
        "{refused} of 20 refused: X-Forwarded-For was believed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_blob_downloads_per_client() {
    let hub = Hub::start().await;
    let blob = hub.add_blob(noise(4 << 20, 9));
    let gate = hub.gate(&blob);
    let mirror = Mirror::start(&format!(
        "default_route: docker\nlimits: {{ blob_downloads_per_client: 1 }}\nredirects: {{ follow: [\".docker.com\", \".cloudflarestorage.com\"], to_client: [] }}\n{}",
        hub.mirror_config()
    ));
    let c = common::client(&[], mirror.addr());
    let tok = hub::pull_token(&c, &mirror, "library/b", None).await;
    let url = mirror.url(&format!("/v2/library/b/blobs/{blob}"));
    let first = {
        let (c, url, tok) = (c.clone(), url.clone(), tok.clone());
        tokio::spawn(async move {
            c.get(url)
                .bearer_auth(tok)
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()
        })
    };
    // Wait (bounded) until the first download is running upstream.
    for _ in 0..250 {
        if hub.count(STORAGE) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let second = c.get(&url).bearer_auth(&tok).send().await.unwrap();
    assert_eq!(second.status(), 429);
    // Manifests and the like are not downloads.
    assert_eq!(
        c.get(mirror.url("/v2/")).send().await.unwrap().status(),
        401
    );
    gate.add_permits(10);
    assert_eq!(common::sha256(&first.await.unwrap()), blob);
    // The slot is free again.
    let third = c.get(&url).bearer_auth(&tok).send().await.unwrap();
    assert_eq!(third.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn repository_allow_and_block_lists() {
    let hub = Hub::start().await;
    let mirror = Mirror::start(&format!(
        "default_route: docker\nrepositories: {{ allow: [\"docker.io/library/*\", \"docker.io/acme/**\"], block: [\"docker.io/library/forbidden*\"] }}\n{}",
        hub.mirror_config()
    ));
    let c = common::client(&[], mirror.addr());
    let status = |path: &str| {
        let (c, url) = (c.clone(), mirror.url(path));
        async move { c.get(url).send().await.unwrap() }
    };
    // Allowed ones reach the upstream (its 401); the rest are refused by the mirror.
    assert_eq!(status("/v2/nginx/manifests/1").await.status(), 401);
    assert_eq!(status("/v2/acme/team/app/manifests/1").await.status(), 401);
    let before = hub.seen().len();
    for path in [
        "/v2/forbidden-fruit/manifests/1",
        "/v2/someone/else/manifests/1",
        "/v2/library/a/b/manifests/1",
    ] {
        let r = status(path).await;
        assert_eq!(r.status(), 403, "{path}");
        assert_eq!(error_code(r).await, "DENIED", "{path}");
    }
    assert_eq!(
        hub.seen().len(),
        before,
        "a refused request reached the upstream"
    );
}
