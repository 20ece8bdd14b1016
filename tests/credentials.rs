//! Upstream credentials per route: used when the client brings none, and then only for
//! repositories anyone may read or that `credentials.share` publishes (never to open the
//! operator's private repositories to anonymous clients); never when the client brings its
//! own; never in logs or metrics. Shared content is served from cache to anyone.

mod common;

use common::hub::{self, Hub, PASSWORD, PRIVATE_REPO, USER};
use common::{free_port, Mirror};

fn config(hub: &Hub, password_file: &std::path::Path, extra: &str, admin: u16) -> String {
    format!(
        "default_route: docker\nadmin: {{ listen: \"127.0.0.1:{admin}\" }}\nroutes:\n  docker: {{ upstream: \"{}\", {extra} credentials: {{ username: {USER}, password_file: \"{}\" }} }}\n{}",
        hub.url(hub::REGISTRY),
        password_file.display(),
        hub.resolve_line(),
    )
}

fn password_file(dir: &tempfile::TempDir) -> std::path::PathBuf {
    let pw = dir.path().join("password");
    std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    pw
}

/// The realm's last request for `repo`: whether it carried the route's Basic credentials.
fn realm_saw_basic(hub: &Hub, repo: &str) -> bool {
    let asked = hub.seen_by(hub::AUTH);
    let last = asked
        .iter()
        .rfind(|s| s.path_and_query.contains(&repo.replace('/', "%2F")))
        .unwrap_or_else(|| panic!("no token request for {repo}: {asked:?}"));
    last.authorization
        .as_deref()
        .is_some_and(|a| a.starts_with("Basic "))
}

#[tokio::test(flavor = "multi_thread")]
async fn route_credentials_reach_only_what_anyone_may_read() {
    let hub = Hub::start().await;
    let blob = hub.add_blob(b"private cfg".to_vec());
    hub.add_manifest(PRIVATE_REPO, "v1", &blob);
    let public = hub.add_manifest("library/pub", "latest", &blob);
    let dir = tempfile::tempdir().unwrap();
    let admin = free_port();
    let mirror = Mirror::start(&config(&hub, &password_file(&dir), "", admin));
    let c = common::client(&[], mirror.addr());

    // An anonymous client asking for the operator's private repository gets what the
    // upstream gives anyone: a token without it. The route's credentials stayed out.
    let scope = format!("repository:{PRIVATE_REPO}:pull");
    let r = hub::token_via(&c, &mirror.url("/v2/auth"), &scope, None).await;
    let tok: serde_json::Value = r.json().await.unwrap();
    let tok = tok["token"].as_str().unwrap().to_owned();
    assert_eq!(hub::grants(&tok), "tok:");
    assert!(!realm_saw_basic(&hub, PRIVATE_REPO));
    let url = mirror.url(&format!("/v2/{PRIVATE_REPO}/manifests/v1"));
    let r = c.get(&url).bearer_auth(&tok).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);

    // A public repository: the route's credentials lift the anonymous rate limits.
    let r = hub::token_via(
        &c,
        &mirror.url("/v2/auth"),
        "repository:library/pub:pull",
        None,
    )
    .await;
    let tok: serde_json::Value = r.json().await.unwrap();
    let tok = tok["token"].as_str().unwrap().to_owned();
    assert!(realm_saw_basic(&hub, "library/pub"));
    let r = c
        .get(mirror.url("/v2/library/pub/manifests/latest"))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), public.body);

    // A client's own credentials win, even wrong ones.
    let r = hub::token_via(
        &c,
        &mirror.url("/v2/auth"),
        &scope,
        Some(("mallory", "guess")),
    )
    .await;
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
async fn share_publishes_the_repositories_it_names() {
    let hub = Hub::start().await;
    let blob = hub.add_blob(b"private cfg".to_vec());
    let manifest = hub.add_manifest(PRIVATE_REPO, "v1", &blob);
    let dir = tempfile::tempdir().unwrap();
    let mirror = Mirror::start(
        &config(&hub, &password_file(&dir), "", free_port())
            .replace("password_file:", "share: [\"acme/*\"], password_file:"),
    );
    let c = common::client(&[], mirror.addr());
    let scope = format!("repository:{PRIVATE_REPO}:pull");
    let r = hub::token_via(&c, &mirror.url("/v2/auth"), &scope, None).await;
    let tok: serde_json::Value = r.json().await.unwrap();
    let tok = tok["token"].as_str().unwrap().to_owned();
    assert_eq!(hub::grants(&tok), format!("tok:{PRIVATE_REPO}"));
    assert!(realm_saw_basic(&hub, PRIVATE_REPO));
    let url = mirror.url(&format!("/v2/{PRIVATE_REPO}/manifests/v1"));
    let r = c.get(&url).bearer_auth(&tok).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), manifest.body);
    // Published on purpose: served from the cache to a client with no credentials at all.
    let asked = hub.seen().len();
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(
        (
            r.status().as_u16(),
            r.headers()["x-cache-status"].to_str().unwrap()
        ),
        (200, "hit")
    );
    assert_eq!(hub.seen().len(), asked);
}

#[tokio::test(flavor = "multi_thread")]
async fn public_route_serves_cached_content_to_anyone() {
    let hub = Hub::start().await;
    let blob = hub.add_blob(b"cfg".to_vec());
    let manifest = hub.add_manifest(PRIVATE_REPO, "v1", &blob);
    let dir = tempfile::tempdir().unwrap();
    let mirror = Mirror::start(&config(
        &hub,
        &password_file(&dir),
        "public: true,",
        free_port(),
    ));
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

#[tokio::test(flavor = "multi_thread")]
async fn a_repository_that_turns_private_closes_once_its_verdict_expires() {
    let hub = Hub::start().await;
    let blob = hub.add_blob(b"turning cfg".to_vec());
    let manifest = hub.add_manifest("library/turning", "v1", &blob);
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let mirror = Mirror::start(&format!(
        "cache: {{ dir: \"{}\", verdict_ttl: 1s }}\n{}",
        cache.display(),
        config(&hub, &password_file(&dir), "", free_port())
    ));
    let c = common::client(&[], mirror.addr());
    let scope = "repository:library/turning:pull";
    let url = mirror.url("/v2/library/turning/manifests/v1");
    let anonymous_pull = || async {
        let r = hub::token_via(&c, &mirror.url("/v2/auth"), scope, None).await;
        let tok: serde_json::Value = r.json().await.unwrap();
        let tok = tok["token"].as_str().unwrap().to_owned();
        c.get(&url).bearer_auth(&tok).send().await.unwrap()
    };
    // Public: fetched with the route's credentials (so kept as private content) and served
    // from cache to the next anonymous client.
    let r = anonymous_pull().await;
    assert_eq!(
        (
            r.status().as_u16(),
            r.headers()["x-cache-status"].to_str().unwrap()
        ),
        (200, "miss")
    );
    assert!(realm_saw_basic(&hub, "library/turning"));
    let r = anonymous_pull().await;
    assert_eq!(
        (
            r.status().as_u16(),
            r.headers()["x-cache-status"].to_str().unwrap()
        ),
        (200, "hit")
    );

    hub.set_private("library/turning", true);
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    // The verdict expired: asked again, the repository is private now. The route's
    // credentials stay out and the cached copy is not served to anonymous clients.
    let r = anonymous_pull().await;
    assert!(
        !realm_saw_basic(&hub, "library/turning"),
        "route credentials used for a private repository"
    );
    assert_eq!(r.status(), 401);
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    // The account's own credentials still read it.
    let r = hub::token_via(&c, &mirror.url("/v2/auth"), scope, Some((USER, PASSWORD))).await;
    let tok: serde_json::Value = r.json().await.unwrap();
    let r = c
        .get(&url)
        .bearer_auth(tok["token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), manifest.body);
}
