//! `pullthrough prefetch` and `prefetch:` in the config: images warmed through the mirror's
//! own listener, so a following pull costs the upstream nothing. Counted at the upstream:
//! the fake hub's request log, and docker-registry's access log with skopeo as the client.

mod common;

use std::time::Duration;

use common::hub::{self, Hub, REGISTRY};
use common::ops::{admin_section, admin_url, get_manifest, json_lines, run, run_ok};
use common::registry::{pulled, Layout, Registry};
use common::{client, Mirror};

/// A hub with `library/app:1`: config and two layers.
fn hub_image(hub: &Hub) -> Vec<String> {
    let blobs: Vec<String> = (0..3u8)
        .map(|i| hub.add_blob(vec![i; 100_000 + usize::from(i)]))
        .collect();
    hub.add_image("library/app", "1", &blobs);
    blobs
}

/// A mirror of the hub that keeps its blobs (storage redirects followed, not handed back).
fn mirror_for(hub: &Hub, extra: &str) -> Mirror {
    let (admin, _) = admin_section();
    Mirror::start(&format!(
        "{admin}default_route: docker\nredirects: {{ follow: [\".docker.com\", \".cloudflarestorage.com\"], to_client: [] }}\n{extra}{}",
        hub.mirror_config()
    ))
}

/// The hub's blob GETs for each digest.
fn blob_gets(hub: &Hub, blobs: &[String]) -> Vec<usize> {
    blobs
        .iter()
        .map(|d| hub.count_method(REGISTRY, "GET", &format!("/blobs/{d}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn prefetch_warms_an_image_and_a_pull_then_costs_nothing() {
    let hub = Hub::start().await;
    let blobs = hub_image(&hub);
    let mirror = mirror_for(&hub, "");
    let out = tokio::task::block_in_place(|| {
        run_ok(&mirror, &["prefetch", "--json", "docker.io/library/app:1"])
    });
    let events = json_lines(&out);
    let last = events.last().expect("events");
    assert_eq!(last["kind"], "image");
    assert_eq!(last["state"], "done", "{out}");
    for digest in &blobs {
        let done = events
            .iter()
            .any(|e| e["kind"] == "blob" && e["digest"] == *digest && e["state"] == "done");
        assert!(done, "no done event for {digest}:\n{out}");
    }
    assert_eq!(blob_gets(&hub, &blobs), vec![1, 1, 1]);

    // A client's pull with a token of its own: nothing reaches the registry.
    let before = hub.count(REGISTRY);
    let c = client(&[], mirror.addr());
    let tok = hub::pull_token(&c, &mirror, "library/app", None).await;
    let m = get_manifest(&c, &mirror, "library/app", "1", &tok).await;
    assert_eq!(m.status(), 200);
    assert_eq!(common::cache_status(&m), "hit");
    for digest in &blobs {
        let r = c
            .get(mirror.url(&format!("/v2/library/app/blobs/{digest}")))
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap();
        assert_eq!(common::cache_status(&r), "hit", "{digest}");
        assert_eq!(common::sha256(&r.bytes().await.unwrap()), *digest);
    }
    assert_eq!(hub.count(REGISTRY), before, "{:#?}", hub.seen_by(REGISTRY));

    // Again: everything is reported cached and nothing is fetched.
    let out = tokio::task::block_in_place(|| run_ok(&mirror, &["prefetch", "--json", "app:1"]));
    let events = json_lines(&out);
    assert_eq!(events.last().unwrap()["state"], "cached", "{out}");
    assert!(events
        .iter()
        .filter(|e| e["kind"] == "blob" && e["state"] != "queued")
        .all(|e| e["state"] == "cached"));
    assert_eq!(blob_gets(&hub, &blobs), vec![1, 1, 1]);
    let metrics = common::get_text(&c, admin_url(&mirror, "/metrics")).await;
    assert!(
        metrics.contains("pullthrough_prefetch_images_total{outcome=\"cached\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn platform_filter_fetches_nothing_of_the_other_platforms() {
    let hub = Hub::start().await;
    let amd = hub.add_blob(vec![1; 50_000]);
    let arm = hub.add_blob(vec![2; 50_000]);
    let (index, children) = hub.add_index(
        "library/multi",
        "1",
        &[("linux/amd64", &amd), ("linux/arm64", &arm)],
    );
    let mirror = mirror_for(&hub, "");
    let out = tokio::task::block_in_place(|| {
        run_ok(
            &mirror,
            &["prefetch", "--platform", "linux/amd64", "multi:1"],
        )
    });
    assert!(
        out.contains("docker.io/library/multi:1") || out.contains("multi:1"),
        "{out}"
    );
    assert_eq!(blob_gets(&hub, &[amd.clone(), arm.clone()]), vec![1, 0]);
    let manifest_gets = |d: &str| hub.count_method(REGISTRY, "GET", &format!("/manifests/{d}"));
    assert_eq!(manifest_gets(&children[0].digest), 1, "amd64 manifest");
    assert_eq!(manifest_gets(&children[1].digest), 0, "arm64 manifest");
    // The index itself is kept: a pull by tag is answered from the cache.
    let c = client(&[], mirror.addr());
    let tok = hub::pull_token(&c, &mirror, "library/multi", None).await;
    let before = hub.count(REGISTRY);
    let r = get_manifest(&c, &mirror, "library/multi", "1", &tok).await;
    assert_eq!(r.bytes().await.unwrap(), index.body);
    assert_eq!(hub.count(REGISTRY), before);
    // A platform the index lacks is a failure that names it.
    let failed = tokio::task::block_in_place(|| {
        run(
            &mirror,
            &["prefetch", "--platform", "windows/amd64", "multi:1"],
        )
    });
    assert!(!failed.status.success());
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(stderr.contains("windows/amd64"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_name_the_image_and_the_reason() {
    let hub = Hub::start().await;
    hub_image(&hub);
    let mirror = mirror_for(&hub, "");
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("images.txt");
    std::fs::write(
        &list,
        "# warm these\napp:1   # the app\n\ndocker.io/library/nope:2\n",
    )
    .unwrap();
    let out = tokio::task::block_in_place(|| {
        run(
            &mirror,
            &[
                "prefetch",
                "--json",
                "--file",
                list.to_str().unwrap(),
                "nosuch.example/team/x:1",
                "Bad Name",
                &format!("{}:1", hub::PRIVATE_REPO),
            ],
        )
    });
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stderr.contains("docker.io/library/nope:2") && stderr.contains("not found"),
        "{stderr}"
    );
    assert!(
        stderr.contains("unknown registry \"nosuch.example\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("Bad Name: invalid image reference"),
        "{stderr}"
    );
    // A private repository without credentials: the refusal is named.
    let private = format!("docker.io/{}:1: credential refused", hub::PRIVATE_REPO);
    assert!(stderr.contains(&private), "{stderr}");
    // The good image in the list was warmed all the same, and reported so.
    let images: Vec<_> = json_lines(&stdout)
        .into_iter()
        .filter(|e| e["kind"] == "image" && e["state"] != "queued")
        .collect();
    assert_eq!(images.len(), 5, "{stdout}");
    let app = images
        .iter()
        .find(|e| e["image"] == "app:1")
        .expect("app:1");
    assert_eq!(app["state"], "done", "{stdout}");
    // Nothing to ask: a daemon that is not running is named.
    let mut stopped = mirror;
    stopped.stop();
    let out = tokio::task::block_in_place(|| run(&stopped, &["prefetch", "app:1"]));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("admin listener"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn configured_images_are_warmed_at_start() {
    let hub = Hub::start().await;
    let blobs = hub_image(&hub);
    let mirror = mirror_for(
        &hub,
        "prefetch: { images: [\"docker.io/library/app:1\"], every: 1h }\n",
    );
    let c = client(&[], mirror.addr());
    let url = admin_url(&mirror, "/metrics");
    let mut warmed = false;
    for _ in 0..200 {
        let metrics = common::get_text(&c, &url).await;
        if metrics.contains("pullthrough_prefetch_runs_total{outcome=\"ok\"} 1") {
            warmed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(warmed, "no warming run in 10 s:\n{}", mirror.log());
    assert_eq!(blob_gets(&hub, &blobs), vec![1, 1, 1]);
    assert!(mirror
        .log()
        .contains("prefetch: 1 of 1 configured images warmed"));
    let tok = hub::pull_token(&c, &mirror, "library/app", None).await;
    let before = hub.count(REGISTRY);
    for digest in &blobs {
        let r = c
            .get(mirror.url(&format!("/v2/library/app/blobs/{digest}")))
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap();
        assert_eq!(common::cache_status(&r), "hit");
    }
    assert_eq!(hub.count(REGISTRY), before);
}

/// The real parts: docker-registry upstream, skopeo pulling after a prefetch of both tags
/// (a plain image and a two-platform index): the registry logs no request for either pull.
#[test]
fn skopeo_pull_after_prefetch_asks_the_registry_nothing() {
    let work = tempfile::tempdir().unwrap();
    let layout = Layout::write(&work.path().join("oci"), &[3 << 20, 10_000]);
    let reg = Registry::start(None);
    layout.push(&reg.addr(), "library/img", None);
    let (admin, _) = admin_section();
    let mirror = Mirror::start(&format!(
        "{admin}routes:\n  local: {{ upstream: \"http://{}\", registry: local.test }}\n",
        reg.addr()
    ));
    let out = run_ok(
        &mirror,
        &[
            "prefetch",
            "local.test/library/img:v1",
            "local.test/library/img:multi",
        ],
    );
    assert!(!out.is_empty());
    let served = |method: &str| reg.requests(method, "/v2/library/img/");
    let (gets, heads) = (served("GET"), served("HEAD"));
    assert!(gets >= 5, "prefetch fetched {gets}");
    let registry = format!("127.0.0.1:{}", mirror.port);
    let v1 = pulled(
        &registry,
        "local.test/library/img:v1",
        false,
        &work.path().join("v1"),
    );
    let multi = pulled(
        &registry,
        "local.test/library/img:multi",
        true,
        &work.path().join("multi"),
    );
    assert!(v1.len() >= 4 && multi.len() >= 6, "{v1:?} {multi:?}");
    assert_eq!((served("GET"), served("HEAD")), (gets, heads));
    let direct = pulled(
        &reg.addr(),
        "library/img:multi",
        true,
        &work.path().join("d"),
    );
    assert_eq!(multi, direct);
    let log = mirror.log();
    let loud = common::loud_lines(&log);
    assert!(loud.is_empty(), "{loud:#?}");
}
