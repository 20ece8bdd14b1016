//! Upstream credentials per route: used for token requests when the client brings none,
//! never when it brings its own, never in logs or metrics; content fetched with them stays
//! private unless the route is marked public.

mod common;

use common::hub::{self, Hub, PASSWORD, PRIVATE_REPO, USER};
use common::{free_port, Mirror};

fn config(hub: &Hub, password_file: &std::path::Path, public: bool, admin: u16) -> String {
    format!(
        "default_route: docker\nadmin: {{ listen: \"127.0.0.1:{admin}\" }}\nroutes:\n  docker: {{ upstream: \"{}\", public: {public}, credentials: {{ username: {USER}, password_file: \"{}\" }} }}\n{}",
        hub.url(hub::REGISTRY),
        password_file.display(),
        hub.resolve_line()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn configured_credentials_fetch_tokens_for_clients_without_any() {
    let hub = Hub::start().await;
    let blob = hub.add_blob(b"private cfg".to_vec());
    let manifest = hub.add_manifest(PRIVATE_REPO, "v1", &blob);
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("password");
    std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    let admin = free_port();
    let mirror = Mirror::start(&config(&hub, &pw, false, admin));
    let c = common::client(&[], mirror.addr());
    let scope = format!("repository:{PRIVATE_REPO}:pull");

    // No credentials from the client: the mirror's own reach the realm.
    let r = hub::token_via(&c, &mirror.url("/v2/auth"), &scope, None).await;
    let tok: serde_json::Value = r.json().await.unwrap();
    let tok = tok["token"].as_str().unwrap().to_owned();
    assert_eq!(hub::grants(&tok), format!("tok:{PRIVATE_REPO}"));
    let asked = hub.seen_by(hub::AUTH);
    assert!(asked
        .last()
        .unwrap()
        .authorization
        .as_deref()
        .is_some_and(|a| a.starts_with("Basic ")));
    let r = c
        .get(mirror.url(&format!("/v2/{PRIVATE_REPO}/manifests/v1")))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), manifest.body);

    // A client's own credentials win, even wrong ones.
    let r = hub::token_via(
        &c,
        &mirror.url("/v2/auth"),
        &scope,
        Some(("mallory", "guess")),
    )
    .await;
    assert_eq!(r.status(), 401);

    // Fetched with credentials, not public: an anonymous client is refused from cache.
    let r = c
        .get(mirror.url(&format!("/v2/{PRIVATE_REPO}/manifests/v1")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let metrics = common::get_text(&c, format!("http://127.0.0.1:{admin}/metrics")).await;
    let stats = common::get_text(&c, format!("http://127.0.0.1:{admin}/stats")).await;
    let basic = "YWxpY2U6czNjcmV0LXBhNTU"; // base64 of alice:s3cret-pa55, without padding
    for (what, text) in [
        ("log", mirror.log()),
        ("metrics", metrics),
        ("stats", stats),
    ] {
        assert!(
            !text.contains(PASSWORD) && !text.contains(basic),
            "{what} leaks the password"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn public_route_serves_cached_content_to_anyone() {
    let hub = Hub::start().await;
    let blob = hub.add_blob(b"cfg".to_vec());
    let manifest = hub.add_manifest(PRIVATE_REPO, "v1", &blob);
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("password");
    std::fs::write(&pw, PASSWORD).unwrap();
    let mirror = Mirror::start(&config(&hub, &pw, true, free_port()));
    let c = common::client(&[], mirror.addr());
    let r = hub::token_via(
        &c,
        &mirror.url("/v2/auth"),
        &format!("repository:{PRIVATE_REPO}:pull"),
        None,
    )
    .await;
    let tok: serde_json::Value = r.json().await.unwrap();
    let url = mirror.url(&format!("/v2/{PRIVATE_REPO}/manifests/v1"));
    let r = c
        .get(&url)
        .bearer_auth(tok["token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-cache-status"], "miss");
    let asked = hub.seen().len();
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(
        (
            r.status().as_u16(),
            r.headers()["x-cache-status"].to_str().unwrap()
        ),
        (200, "hit")
    );
    assert_eq!(r.bytes().await.unwrap(), manifest.body);
    assert_eq!(
        hub.seen().len(),
        asked,
        "a public route's hit asked the upstream"
    );
}
