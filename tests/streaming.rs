//! Streaming: a 1 GiB blob passes through the mirror with flat memory. The mirror's peak RSS
//! (VmHWM) is read from /proc after the transfer and reported; the bound is on memory, not
//! on time.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::body::Body;
use futures::StreamExt;
use sha2::Digest;

use common::registry::noise;
use common::Mirror;

const BLOCK: usize = 1 << 20;
const BLOCKS: usize = 1024;

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

#[tokio::test(flavor = "multi_thread")]
async fn one_gib_blob_streams_with_flat_memory() {
    let block = bytes::Bytes::from(noise(BLOCK, 42));
    let mut expected = sha2::Sha256::new();
    for _ in 0..BLOCKS {
        expected.update(&block);
    }
    let digest = format!("sha256:{}", hex::encode(expected.finalize()));

    // An upstream that generates the blob as it sends it: nothing buffered on either side.
    let served = Arc::new(AtomicUsize::new(0));
    let app = {
        let (block, served) = (block.clone(), served.clone());
        axum::Router::new().fallback(move || {
            let block = block.clone();
            served.fetch_add(1, Ordering::SeqCst);
            async move {
                let stream = futures::stream::iter(
                    (0..BLOCKS).map(move |_| Ok::<_, std::io::Error>(block.clone())),
                );
                axum::response::Response::builder()
                    .header("content-length", (BLOCK * BLOCKS).to_string())
                    .body(Body::from_stream(stream))
                    .expect("response")
            }
        })
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let mirror = Mirror::start(&format!(
        "default_route: bulk\nroutes:\n  bulk: {{ upstream: \"http://{upstream}\" }}\n"
    ));
    let baseline = peak_rss_kib(mirror.pid());
    let c = common::client(&[], mirror.addr());
    let resp = c
        .get(mirror.url(&format!("/v2/big/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let mut hasher = sha2::Sha256::new();
    let mut received = 0usize;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.unwrap();
        received += chunk.len();
        hasher.update(&chunk);
    }
    assert_eq!(received, BLOCK * BLOCKS);
    assert_eq!(format!("sha256:{}", hex::encode(hasher.finalize())), digest);
    assert_eq!(served.load(Ordering::SeqCst), 1);

    let peak = peak_rss_kib(mirror.pid());
    eprintln!(
        "mirror peak RSS: {:.1} MiB before, {:.1} MiB after streaming 1 GiB",
        baseline as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    assert!(
        peak < 96 * 1024,
        "peak RSS {peak} KiB: the body is being buffered"
    );
}
