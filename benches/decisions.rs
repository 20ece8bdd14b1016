//! Micro benchmarks of the per-request decisions: path parsing, routing, cache keys,
//! challenge rewriting, redirect classification. `cargo bench --bench decisions`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use http::Method;
use pullthrough::cache::key::cache_key;
use pullthrough::config;
use pullthrough::proxy::plan::{plan, Incoming};
use pullthrough::redirect::RedirectPolicy;
use pullthrough::registry::auth::rewrite_challenge;
use pullthrough::registry::{Challenge, V2Path};

const BLOB: &str = "/v2/library/nginx/blobs/sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

fn decisions(c: &mut Criterion) {
    let routes = config::parse("domain: example.com\ndefault_route: docker")
        .expect("bench config")
        .routes;
    c.bench_function("v2path_parse_blob", |b| {
        b.iter(|| black_box(BLOB).parse::<V2Path>())
    });
    c.bench_function("plan_manifest_by_host", |b| {
        b.iter(|| {
            plan(
                &routes,
                Incoming {
                    method: &Method::GET,
                    path: black_box("/v2/nginx/manifests/latest"),
                    query: None,
                    host: Some("docker.example.com:443"),
                    sni: None,
                },
            )
        })
    });
    c.bench_function("plan_blob_by_prefix_ns", |b| {
        b.iter(|| {
            plan(
                &routes,
                Incoming {
                    method: &Method::GET,
                    path: black_box("/v2/quay.io/coreos/etcd/manifests/v3"),
                    query: Some("ns=quay.io"),
                    host: Some("mirror.local"),
                    sni: None,
                },
            )
        })
    });
    let docker = routes.by_name("docker").expect("docker route").clone();
    let tag: V2Path = "/v2/library/nginx/manifests/latest"
        .parse()
        .expect("tag path");
    let accept = [
        "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
    ];
    c.bench_function("cache_key_tag_with_accept", |b| {
        b.iter(|| cache_key(&docker, black_box(&tag), black_box(&accept)))
    });
    let blob: V2Path = BLOB.parse().expect("blob path");
    c.bench_function("cache_key_blob", |b| {
        b.iter(|| cache_key(&docker, black_box(&blob), &[]))
    });
    let upstream = Challenge::parse(
        r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#,
    )
    .expect("challenge");
    c.bench_function("challenge_parse_and_rewrite", |b| {
        b.iter(|| {
            let parsed = Challenge::parse(black_box(&upstream.to_string())).expect("parse");
            rewrite_challenge(&parsed, "https://docker.example.com/v2/auth", |s| s.clone())
                .to_string()
        })
    });
    let policy = RedirectPolicy::default();
    c.bench_function("redirect_classify", |b| {
        b.iter(|| {
            policy.classify(black_box(
                "docker-images-prod.6aa30f8b08e16409b46e0173d6de2f56.r2.cloudflarestorage.com",
            ))
        })
    });
}

criterion_group!(benches, decisions);
criterion_main!(benches);
