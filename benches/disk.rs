//! Disk storage throughput: a 64 MiB cache hit read back through `HandleHit::read_body`, and
//! a 64 MiB fill written through `HandleMiss` (sha256 verification and fsync included).
//! `cargo bench --bench disk`.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pingora::cache::trace::Span;
use pingora::cache::{CacheKey, CacheMeta, Storage};
use pingora::http::ResponseHeader;
use pullthrough::cache::DiskStorage;

const SIZE: usize = 64 << 20;
const WRITE_CHUNK: usize = 64 << 10;

fn meta(digest: &str) -> CacheMeta {
    let now = SystemTime::now();
    let mut header = ResponseHeader::build(200, None).expect("header");
    header
        .insert_header("docker-content-digest", digest)
        .expect("digest header");
    CacheMeta::new(now + Duration::from_secs(3600), now, 0, 0, header)
}

fn disk(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let storage: &'static DiskStorage =
        Box::leak(Box::new(DiskStorage::open(dir.path()).expect("open")));
    let data = Bytes::from(vec![7u8; SIZE]);
    let digest = {
        use sha2::Digest;
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(&data)))
    };
    let span = Span::inactive().handle();
    let key = CacheKey::new("bench-blob", "bench");
    rt.block_on(async {
        let mut miss = storage
            .get_miss_handler(&key, &meta(&digest), &span)
            .await
            .expect("miss");
        miss.write_body(data.clone(), true).await.expect("write");
        miss.finish().await.expect("finish");
    });

    let mut group = c.benchmark_group("disk");
    group.throughput(Throughput::Bytes(SIZE as u64));
    group.sample_size(20);
    group.bench_function("hit_read_64MiB", |b| {
        b.iter(|| {
            rt.block_on(async {
                let (_, mut hit) = storage
                    .lookup(&key, &span)
                    .await
                    .expect("lookup")
                    .expect("hit");
                let mut n = 0;
                while let Some(chunk) = hit.read_body().await.expect("read") {
                    n += chunk.len();
                }
                assert_eq!(n, SIZE);
            })
        })
    });
    group.bench_function("fill_64MiB", |b| {
        let key = CacheKey::new("bench-fill", "bench");
        b.iter(|| {
            rt.block_on(async {
                let mut miss = storage
                    .get_miss_handler(&key, &meta(&digest), &span)
                    .await
                    .expect("miss");
                for start in (0..SIZE).step_by(WRITE_CHUNK) {
                    miss.write_body(data.slice(start..start + WRITE_CHUNK), false)
                        .await
                        .expect("write");
                }
                miss.finish().await.expect("finish");
            })
        })
    });
    group.finish();
}

criterion_group!(benches, disk);
criterion_main!(benches);
