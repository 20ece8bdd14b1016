//! Routing through the running mirror: Host (standard names under `domain:` and custom
//! hosts), `?ns=`, path prefix and the default route; what the mirror answers itself; what
//! an unreachable upstream gives; and `pullthrough -t`.

mod common;

use std::process::Command;

use common::hub::{Hub, REGISTRY};
use common::Mirror;

#[tokio::test(flavor = "multi_thread")]
async fn four_ways_in() {
    let hub = Hub::start().await;
    // quay is pointed at the same fake, so every way in can be seen arriving.
    let config = format!(
        "domain: mirror.test\n{}",
        hub.mirror_config_with_routes(&format!(
            "  quay: {{ upstream: \"{0}\" }}\n  corp: {{ host: corp.test, upstream: \"{0}\", registry: corp.io }}\n",
            hub.url(REGISTRY)
        ))
    );
    let mirror = Mirror::start(&config);
    let names = [
        "docker.mirror.test",
        "quay.mirror.test",
        "corp.test",
        "other.test",
    ];
    let c = common::client(&names, mirror.addr());
    let get = |host: &str, path: &str| {
        let url = format!("http://{host}:{}{path}", mirror.port);
        let c = c.clone();
        async move { c.get(url).send().await.unwrap() }
    };

    let cases = [
        // (host, path as sent, path the upstream must see)
        (
            "docker.mirror.test",
            "/v2/nginx/manifests/latest",
            "/v2/library/nginx/manifests/latest",
        ),
        (
            "DOCKER.mirror.test",
            "/v2/bitnami/redis/manifests/7",
            "/v2/bitnami/redis/manifests/7",
        ),
        (
            "quay.mirror.test",
            "/v2/coreos/etcd/manifests/v3",
            "/v2/coreos/etcd/manifests/v3",
        ),
        (
            "corp.test",
            "/v2/team/app/manifests/1",
            "/v2/team/app/manifests/1",
        ),
        (
            "other.test",
            "/v2/alpine/manifests/3?ns=docker.io",
            "/v2/library/alpine/manifests/3",
        ),
        (
            "other.test",
            "/v2/a/b/manifests/1?ns=quay.io",
            "/v2/a/b/manifests/1",
        ),
        (
            "other.test",
            "/v2/quay.io/coreos/etcd/manifests/v3",
            "/v2/coreos/etcd/manifests/v3",
        ),
        (
            "other.test",
            "/v2/corp.io/team/app/tags/list?n=5",
            "/v2/team/app/tags/list?n=5",
        ),
        (
            "other.test",
            "/v2/docker.io/busybox/manifests/1",
            "/v2/library/busybox/manifests/1",
        ),
    ];
    for (host, path, upstream_path) in cases {
        let before = hub.count(REGISTRY);
        let r = get(host, path).await;
        // The fake wants a token: the challenge proves the request reached it.
        assert_eq!(r.status(), 401, "{host}{path}");
        // The request itself, and before it at most the tag's pointer lookup (a HEAD, on a
        // route whose upstream has not challenged the mirror yet).
        let seen = hub.seen_by(REGISTRY);
        let new: Vec<_> = seen[before..]
            .iter()
            .map(|s| (s.method.as_str(), s.path_and_query.as_str()))
            .collect();
        let want: &[_] = if new.len() == 2 {
            &[("HEAD", upstream_path), ("GET", upstream_path)]
        } else {
            &[("GET", upstream_path)]
        };
        assert_eq!(new, want, "{host}{path}");
    }

    // No default route: an unknown Host gets 404 and the list of routes, upstream untouched.
    let before = hub.count(REGISTRY);
    let r = get("other.test", "/v2/nginx/manifests/latest").await;
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "NAME_UNKNOWN");
    let routes = body["errors"][0]["detail"]["routes"].as_array().unwrap();
    assert!(
        routes
            .iter()
            .any(|r| r["name"] == "quay" && r["hosts"][0] == "quay.mirror.test"),
        "{body}"
    );
    // How to reach a route, not where it goes.
    assert!(!body.to_string().contains("://"), "{body}");
    assert_eq!(hub.count(REGISTRY), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_of_its_own() {
    let hub = Hub::start().await;
    let mirror = Mirror::start(&format!("default_route: docker\n{}", hub.mirror_config()));
    let c = common::client(&[], mirror.addr());

    let r = c.get(mirror.url("/")).send().await.unwrap();
    assert_eq!(
        (
            r.status().as_u16(),
            r.headers()["location"].to_str().unwrap()
        ),
        (301, "/v2/")
    );
    let r = c.get(mirror.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .put(mirror.url("/v2/nginx/manifests/latest"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    let r = c
        .get(mirror.url("/v2/Bad/manifests/latest"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "NAME_INVALID");
    let r = c
        .get(mirror.url("/v2/a/blobs/sha256:short"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // None of that asked the upstream.
    assert_eq!(hub.count(REGISTRY), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_upstreams_are_502() {
    let closed = common::free_port();
    let config = format!(
        "routes:\n  gone: {{ host: gone.test, upstream: \"http://no-such-registry.invalid\" }}\n  refused: {{ host: refused.test, upstream: \"http://127.0.0.1:{closed}\" }}\n"
    );
    let mirror = Mirror::start(&config);
    let c = common::client(&["gone.test", "refused.test"], mirror.addr());
    for host in ["gone.test", "refused.test"] {
        let r = c
            .get(format!("http://{host}:{}/v2/a/manifests/1", mirror.port))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 502, "{host}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert!(body["errors"][0]["message"].is_string(), "{host}: {body}");
    }
    // Still serving after both.
    assert_eq!(
        c.get(mirror.url("/healthz")).send().await.unwrap().status(),
        200
    );
}

#[test]
fn test_flag_validates_config() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, "listen: [\"127.0.0.1:0\"]\n").unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "listen: [\"127.0.0.1:0\"]\nredirects: { max_hop: 3 }\n",
    )
    .unwrap();
    let run = |conf: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_pullthrough"))
            .arg("-t")
            .arg("-c")
            .arg(conf)
            .output()
            .unwrap()
    };
    assert!(run(&good).status.success());
    let out = run(&bad);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("redirects.max_hop"), "{err}");
    for shipped in [
        "conf/pullthrough.yaml",
        "conf/minimal.yaml",
        "conf/container.yaml",
    ] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(shipped);
        assert!(run(&path).status.success(), "{shipped}");
    }
}

#[test]
fn healthcheck_subcommand() {
    let mirror = Mirror::start("");
    let run = |url: &str| {
        Command::new(env!("CARGO_BIN_EXE_pullthrough"))
            .args(["healthcheck", url])
            .output()
            .unwrap()
    };
    assert!(run(&mirror.url("/healthz")).status.success());
    assert!(!run(&mirror.url("/nope")).status.success());
    let closed = format!("http://127.0.0.1:{}/healthz", common::free_port());
    assert!(!run(&closed).status.success());
    assert!(!run("https://127.0.0.1/healthz").status.success());
}
