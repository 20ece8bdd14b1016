//! No server-side request forgery: a redirect or a token realm that an upstream names on an
//! internal address (here 127.0.0.2, loopback, which the config does not name) is refused
//! with a 502 registry error, and a canary listening there counts no connection; listing the
//! address in `redirects.follow` lets it through.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::hub::{self, Hub};
use common::registry::noise;
use common::{free_port, Mirror};

/// A listener on 127.0.0.2 that counts connections (and answers nothing useful).
async fn canary() -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            use tokio::io::AsyncWriteExt;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\ncanary")
                .await;
        }
    });
    (port, count)
}

fn config(hub: &Hub, follow: &str, admin: u16) -> String {
    format!(
        "default_route: docker\nadmin: {{ listen: \"127.0.0.1:{admin}\" }}\nredirects: {{ follow: [\".docker.com\", \".cloudflarestorage.com\"{follow}], to_client: [] }}\n{}",
        hub.mirror_config()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn redirects_and_realms_to_internal_addresses_are_refused() {
    let hub = Hub::start().await;
    let (port, canary_hits) = canary().await;
    let blob = hub.add_blob(noise(4096, 8));
    hub.redirect_blob(&blob, &format!("http://127.0.0.2:{port}/latest/meta-data/"));
    let admin = free_port();
    let mirror = Mirror::start(&config(&hub, "", admin));
    let c = common::client(&[], mirror.addr());

    let tok = hub::pull_token(&c, &mirror, "library/x", None).await;
    let r = c
        .get(mirror.url(&format!("/v2/library/x/blobs/{blob}")))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("internal address"));

    // A realm on the internal address: the token relay does not go there either.
    hub.set_realm(&format!("http://127.0.0.2:{port}/token"));
    let fresh = Mirror::start(&config(&hub, "", free_port()));
    let fc = common::client(&[], fresh.addr());
    let r = fc.get(fresh.url("/v2/")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = hub::token_via(
        &fc,
        &fresh.url("/v2/auth"),
        "repository:library/x:pull",
        None,
    )
    .await;
    assert_eq!(r.status(), 502);

    assert_eq!(
        canary_hits.load(Ordering::SeqCst),
        0,
        "the mirror connected to 127.0.0.2"
    );
    let metrics = common::get_text(&c, format!("http://127.0.0.1:{admin}/metrics")).await;
    assert!(
        metrics.contains("pullthrough_egress_refused_total 1"),
        "{metrics}"
    );
    assert!(mirror.log().contains("refused to connect to 127.0.0.2"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_internal_address_named_in_redirects_follow_is_followed() {
    let hub = Hub::start().await;
    let (port, canary_hits) = canary().await;
    let blob = hub.add_blob(noise(4096, 9));
    hub.redirect_blob(&blob, &format!("http://127.0.0.2:{port}/blob"));
    let mirror = Mirror::start(&config(&hub, ", \"127.0.0.2\"", free_port()));
    let c = common::client(&[], mirror.addr());
    let tok = hub::pull_token(&c, &mirror, "library/x", None).await;
    let r = c
        .get(mirror.url(&format!("/v2/library/x/blobs/{blob}")))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    // The canary's bytes are not the blob: the digest check refuses them, but the mirror
    // did go there.
    let _ = r.bytes().await;
    assert_eq!(canary_hits.load(Ordering::SeqCst), 1);
}
