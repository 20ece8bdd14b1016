//! Redirect chasing against the fake Docker Hub: the CDN hop is followed inside the mirror
//! without the client's token, object storage goes back to the client untouched (or is
//! followed when configured), relative Locations resolve, and loops end at `max_hops`.

mod common;

use common::hub::{self, Hub, CDN, REGISTRY, STORAGE};
use common::Mirror;

#[tokio::test(flavor = "multi_thread")]
async fn cdn_followed_storage_to_client() {
    let hub = Hub::start().await;
    let digest = hub.add_blob(vec![7u8; 100_000]);
    let mirror = Mirror::start(&format!("default_route: docker\n{}", hub.mirror_config()));
    let c = common::client(&[], mirror.addr());
    let tok = hub::pull_token(&c, &mirror, "library/data", None).await;

    let r = c
        .get(mirror.url(&format!("/v2/data/blobs/{digest}")))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 307);
    let location = r.headers()["location"].to_str().unwrap();
    let hex = digest.trim_start_matches("sha256:");
    assert_eq!(
        location,
        format!(
            "{}/{hex}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=abc",
            hub.url(STORAGE)
        )
    );
    // The registry saw the token; the CDN got the request, without it; storage got nothing.
    let reg = hub.seen_by(REGISTRY).pop().unwrap();
    assert!(reg.authorization.is_some());
    let cdn = hub.seen_by(CDN);
    assert_eq!(cdn.len(), 1);
    assert_eq!(cdn[0].authorization, None);
    assert_eq!(hub.count(STORAGE), 0);

    // What the client then does itself: storage serves it when no Authorization comes along.
    let storage_client = common::client(&[STORAGE], hub::addr(hub.port(STORAGE)));
    let direct = storage_client.get(location).send().await.unwrap();
    assert_eq!(direct.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn storage_followed_when_configured() {
    let hub = Hub::start().await;
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let digest = hub.add_blob(data.clone());
    let config = format!(
        "default_route: docker\nredirects: {{ follow: [\".docker.com\", \".cloudflarestorage.com\"], to_client: [] }}\n{}",
        hub.mirror_config()
    );
    let mirror = Mirror::start(&config);
    let c = common::client(&[], mirror.addr());
    let tok = hub::pull_token(&c, &mirror, "library/data", None).await;

    let r = c
        .get(mirror.url(&format!("/v2/library/data/blobs/{digest}")))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = r.bytes().await.unwrap();
    assert_eq!(common::sha256(&body), digest);
    let storage = hub.seen_by(STORAGE);
    assert_eq!(storage.len(), 1);
    assert_eq!(
        storage[0].authorization, None,
        "Authorization crossed hosts"
    );
    assert_eq!(hub.count(CDN), 1);
    // Both hops were followed inside the mirror (decided, and logged, before the answer).
    let log = mirror.log();
    assert_eq!(log.matches(" followed (").count(), 2, "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn relative_location_and_loops() {
    let hub = Hub::start().await;
    let digest = hub.add_blob(b"relative".to_vec());
    let config = format!(
        "default_route: docker\nredirects: {{ max_hops: 3 }}\n{}",
        hub.mirror_config()
    );
    let mirror = Mirror::start(&config);
    let c = common::client(&[], mirror.addr());

    // Relative Location: resolved against the registry's URL and followed there.
    let tok = hub::pull_token(&c, &mirror, "library/data", None).await;
    let r = c
        .get(mirror.url(&format!("/v2/data/blobs/{digest}?relative=1")))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), &b"relative"[..]);
    assert!(hub
        .seen_by(REGISTRY)
        .iter()
        .any(|s| s.path_and_query == format!("/direct/{}", &digest[7..])));

    // A loop: 1 hop to the CDN, then the CDN redirects to itself until max_hops.
    let tok = hub::pull_token(&c, &mirror, "library/loop", None).await;
    let zero = format!("sha256:{}", "0".repeat(64));
    let r = c
        .get(mirror.url(&format!("/v2/loop/blobs/{zero}")))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "UNKNOWN");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("more than 3"),
        "{body}"
    );
    assert_eq!(hub.count(CDN), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn max_hops_above_pingoras_retries_is_honoured() {
    let hub = Hub::start().await;
    // Pingora's retry budget is smaller than the hop limit: the limit still decides.
    let config = format!(
        "default_route: docker\nredirects: {{ max_hops: 20 }}\n{}",
        hub.mirror_config()
    );
    let mirror = Mirror::start_tuned("max_retries: 2", &config);
    let c = common::client(&[], mirror.addr());
    let tok = hub::pull_token(&c, &mirror, "library/loop", None).await;
    let zero = format!("sha256:{}", "0".repeat(64));
    let r = c
        .get(mirror.url(&format!("/v2/loop/blobs/{zero}")))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("more than 20"),
        "{body}"
    );
    assert_eq!(hub.count(CDN), 20);
}
