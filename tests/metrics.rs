//! Metrics and status on the admin listener: after a known sequence of requests the scraped
//! `pullthrough_*` counters equal what was sent, and `/stats` and `/healthz` answer.

mod common;

use std::collections::BTreeMap;

use common::hub::{self, Hub};
use common::{free_port, Mirror};

/// The value of the series `name` whose labels include all of `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let found: BTreeMap<&str, &str> = label_text
                .split(',')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k, v.trim_matches('"')))
                .collect();
            labels
                .iter()
                .all(|(k, v)| found.get(k) == Some(v))
                .then(|| value.parse().ok())?
        })
}

#[tokio::test(flavor = "multi_thread")]
async fn counters_equal_what_was_sent() {
    let hub = Hub::start().await;
    let blob = hub.add_blob(b"cfg".to_vec());
    let manifest = hub.add_manifest("library/m", "v1", &blob);
    let admin = free_port();
    let mirror = Mirror::start(&format!(
        "default_route: docker\nadmin: {{ listen: \"127.0.0.1:{admin}\" }}\n{}",
        hub.mirror_config()
    ));
    let c = common::client(&[], mirror.addr());
    let admin_url = |p: &str| format!("http://127.0.0.1:{admin}{p}");

    assert_eq!(
        c.get(mirror.url("/healthz")).send().await.unwrap().status(),
        200
    );
    let r = hub::token_via(
        &c,
        &mirror.url("/v2/auth"),
        "repository:library/m:pull",
        None,
    )
    .await;
    let token_body = r.bytes().await.unwrap();
    let tok: serde_json::Value = serde_json::from_slice(&token_body).unwrap();
    let tok = tok["token"].as_str().unwrap().to_owned();
    let get = |path: &str| c.get(mirror.url(path)).bearer_auth(&tok).send();
    let miss = get("/v2/m/manifests/v1").await.unwrap();
    assert_eq!(miss.headers()["x-cache-status"], "miss");
    let miss_len = miss.bytes().await.unwrap().len();
    let mut hit_bytes = 0;
    for _ in 0..2 {
        let hit = get("/v2/m/manifests/v1").await.unwrap();
        assert_eq!(hit.headers()["x-cache-status"], "hit");
        hit_bytes += hit.bytes().await.unwrap().len();
    }
    let missing = get("/v2/m/manifests/nope").await.unwrap();
    assert_eq!(missing.status(), 404);
    let missing_cache = missing.headers()["x-cache-status"]
        .to_str()
        .unwrap()
        .to_owned();
    let missing_len = missing.bytes().await.unwrap().len();

    // Filled with a token: the background probe finds library/m public and keeps that
    // verdict on disk, a third entry beside the manifest and the tag's pointer.
    hub.wait_for_probe("library/m").await;
    let mut text = String::new();
    for _ in 0..100 {
        text = common::get_text(&c, admin_url("/metrics")).await;
        if sample(&text, "pullthrough_cache_items", &[]) == Some(3.0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let req = |route, status, cache| {
        sample(
            &text,
            "pullthrough_requests_total",
            &[("route", route), ("status", status), ("cache", cache)],
        )
    };
    assert_eq!(req("-", "2xx", "bypass"), Some(1.0), "{text}");
    assert_eq!(req("docker", "2xx", "bypass"), Some(1.0), "{text}");
    assert_eq!(req("docker", "2xx", "miss"), Some(1.0), "{text}");
    assert_eq!(req("docker", "2xx", "hit"), Some(2.0), "{text}");
    assert_eq!(req("docker", "4xx", &missing_cache), Some(1.0), "{text}");
    assert_eq!(
        sample(
            &text,
            "pullthrough_bytes_served_total",
            &[("source", "cache")]
        ),
        Some(hit_bytes as f64)
    );
    assert_eq!(hit_bytes, 2 * manifest.body.len());
    assert_eq!(
        sample(
            &text,
            "pullthrough_bytes_served_total",
            &[("source", "upstream")]
        ),
        Some((token_body.len() + miss_len + missing_len) as f64)
    );
    // Three requests went upstream: the token, the miss, the 404.
    assert_eq!(
        sample(
            &text,
            "pullthrough_upstream_response_seconds_count",
            &[("route", "docker")]
        ),
        Some(3.0),
        "{text}"
    );
    // The manifest, the tag's pointer to it (its body: the digest) and the verdict.
    assert_eq!(sample(&text, "pullthrough_cache_items", &[]), Some(3.0));
    assert_eq!(
        sample(&text, "pullthrough_cache_size_bytes", &[]),
        Some((manifest.body.len() + manifest.digest.len() + "public".len()) as f64)
    );
    assert_eq!(
        sample(&text, "pullthrough_digest_mismatches_total", &[]),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, "pullthrough_cache_fills_in_flight", &[]),
        Some(0.0)
    );
    // Credentials never show up in metrics.
    assert!(!text.contains(&tok));

    let stats: serde_json::Value = c
        .get(admin_url("/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["pid"], mirror.pid());
    assert_eq!(stats["cache"]["items"], 3);
    assert_eq!(
        c.get(admin_url("/healthz")).send().await.unwrap().status(),
        200
    );
}
