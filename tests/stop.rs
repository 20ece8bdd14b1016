//! A graceful stop (SIGTERM) ends when the mirror is quiet, not after the whole grace
//! period: idle keep-alive connections are closed at once, a download in flight is served
//! to its end, then the process exits, with the index saved after the last commit so the
//! next start trusts it and holds what was filled during the stop. SIGINT ends the process
//! at once, every time.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::hub::{self, Hub, STORAGE};
use common::registry::noise;
use common::Mirror;

/// A grace period no test waits out: a mirror that sleeps through it fails the bounds below.
const LONG_GRACE: &str = "grace_period_seconds: 120";

const REPO: &str = "library/stopping";

fn config(hub: &Hub, cache: &std::path::Path, admin: u16) -> String {
    format!(
        "default_route: docker\nadmin: {{ listen: \"127.0.0.1:{admin}\" }}\ncache: {{ dir: \"{}\" }}\n\
         redirects: {{ follow: [\".docker.com\", \".cloudflarestorage.com\"], to_client: [] }}\n{}",
        cache.display(),
        hub.mirror_config()
    )
}

async fn stats(c: &reqwest::Client, admin: u16) -> serde_json::Value {
    common::get_json(c, format!("http://127.0.0.1:{admin}/stats")).await
}

/// The mirror exits within `limit` of its stop, having found itself quiet, and leaves the
/// mark that lets the next start trust its index.
fn stopped_quietly(mirror: &mut Mirror, limit: Duration, cache: &std::path::Path, after: &str) {
    assert!(
        mirror.wait_exit_within(limit),
        "the mirror did not stop within {limit:?} of {after}:\n{}",
        mirror.log()
    );
    assert!(
        mirror
            .log()
            .contains("stopped: no connection open, no fill in flight"),
        "{}",
        mirror.log()
    );
    assert!(cache.join("v1/index/clean").exists());
}

/// A raw keep-alive connection that has had one answer and now idles.
fn idle_connection(mirror: &Mirror) -> std::net::TcpStream {
    let mut idle = std::net::TcpStream::connect(mirror.addr()).unwrap();
    idle.write_all(b"GET /v2/ HTTP/1.1\r\nHost: mirror\r\n\r\n")
        .unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = [0u8; 4096];
    let n = idle.read(&mut answer).unwrap();
    assert!(
        answer[..n].starts_with(b"HTTP/1.1 "),
        "no answer on the idle connection"
    );
    idle
}

/// Reads until the mirror closes `conn` (bounded by its 10 s read timeout); whether it did.
fn closed_by_mirror(conn: &mut std::net::TcpStream) -> bool {
    let mut rest = [0u8; 4096];
    loop {
        match conn.read(&mut rest) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_mirror_stops_at_once_on_sigterm() {
    let hub = Hub::start().await;
    let cache = tempfile::tempdir().unwrap();
    let admin = common::free_port();
    let mut mirror = Mirror::start_tuned(LONG_GRACE, &config(&hub, cache.path(), admin));
    let mut idle = idle_connection(&mirror);
    mirror.terminate();
    assert!(
        closed_by_mirror(&mut idle),
        "the idle keep-alive connection was not closed"
    );
    stopped_quietly(
        &mut mirror,
        Duration::from_secs(10),
        cache.path(),
        "SIGTERM",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_serves_the_download_in_flight_then_stops_with_its_entry_indexed() {
    let hub = Hub::start().await;
    let data = noise(4 << 20, 11);
    let blob = hub.add_blob_in(REPO, data);
    let gate = hub.gate(&blob);
    let cache = tempfile::tempdir().unwrap();
    let admin = common::free_port();
    let yaml = config(&hub, cache.path(), admin);
    let mut mirror = Mirror::start_tuned(LONG_GRACE, &yaml);
    let c = common::client(&[], mirror.addr());
    let tok = hub::pull_token(&c, &mirror, REPO, None).await;
    // A first blob makes the mirror probe the repository: its verdict record joins too.
    let first = hub.add_blob_in(REPO, noise(1000, 12));
    let r = c
        .get(mirror.url(&format!("/v2/{REPO}/blobs/{first}")))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(common::sha256(&r.bytes().await.unwrap()), first);
    hub.wait_for_probe(REPO).await;
    // The cache now holds that blob and the repository's verdict record (the probe's);
    // wait (bounded) for both, as the record lands just after the probe's answer.
    let mut before = serde_json::Value::Null;
    for _ in 0..400 {
        before = stats(&c, admin).await["cache"]["items"].clone();
        if before == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(before, 2, "the first blob and the verdict record");

    // A download held at half its bytes by the upstream.
    let (first_bytes, got_first) = tokio::sync::oneshot::channel();
    let download = tokio::spawn({
        let (c, url) = (c.clone(), mirror.url(&format!("/v2/{REPO}/blobs/{blob}")));
        async move {
            use futures::StreamExt;
            let r = c.get(url).bearer_auth(tok).send().await.unwrap();
            assert_eq!(r.status(), 200);
            let mut body = r.bytes_stream();
            let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
            let mut first_bytes = Some(first_bytes);
            while let Some(chunk) = body.next().await {
                sha2::Digest::update(&mut hasher, chunk.unwrap());
                if let Some(tx) = first_bytes.take() {
                    let _ = tx.send(());
                }
            }
            format!("sha256:{}", hex::encode(sha2::Digest::finalize(hasher)))
        }
    });
    tokio::time::timeout(Duration::from_secs(30), got_first)
        .await
        .expect("no bytes of the download")
        .unwrap();
    let mut idle = idle_connection(&mirror);

    mirror.terminate();
    assert!(
        closed_by_mirror(&mut idle),
        "the idle keep-alive connection was not closed"
    );
    assert!(
        !mirror.wait_exit_within(Duration::from_secs(2)),
        "the mirror stopped under a download in flight:\n{}",
        mirror.log()
    );
    gate.add_permits(100);
    assert_eq!(download.await.unwrap(), blob, "the download's bytes");
    stopped_quietly(
        &mut mirror,
        Duration::from_secs(15),
        cache.path(),
        "its last download",
    );

    // The next start trusts the index, and the index holds the blob filled during the stop.
    let mirror = Mirror::start(&yaml);
    let mut s = stats(&c, admin).await;
    for _ in 0..400 {
        if s["cache"]["scan"]["state"] != "loading" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
        s = stats(&c, admin).await;
    }
    assert_eq!(s["cache"]["scan"]["state"], "skipped", "{s}");
    assert_eq!(s["cache"]["items"], 3, "{s}");
    let tok = hub::pull_token(&c, &mirror, REPO, None).await;
    let r = c
        .get(mirror.url(&format!("/v2/{REPO}/blobs/{blob}")))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(common::cache_status(&r), "hit");
    assert_eq!(common::sha256(&r.bytes().await.unwrap()), blob);
    assert_eq!(
        hub.count_path(STORAGE, &blob["sha256:".len()..]),
        1,
        "the blob was fetched once"
    );
}

/// Pingora's own fast shutdown stops its runtimes one by one, and an accept loop whose
/// listener's runtime stopped first spun on "Accept() failed" forever, logging gigabytes,
/// and the process never exited (it depends on which runtime stops first: hence the rounds).
#[tokio::test(flavor = "multi_thread")]
async fn sigint_ends_the_mirror_at_once() {
    let hub = Hub::start().await;
    for round in 0..8 {
        let cache = tempfile::tempdir().unwrap();
        let admin = common::free_port();
        let mut mirror = Mirror::start_tuned(LONG_GRACE, &config(&hub, cache.path(), admin));
        // Connections on the listener and on the admin listener, one of them kept open.
        let _idle = idle_connection(&mirror);
        let c = common::client(&[], mirror.addr());
        stats(&c, admin).await;
        mirror.interrupt();
        let exited = mirror.wait_exit_within(Duration::from_secs(10));
        if !exited {
            mirror.kill();
        }
        // The log's size, not its text: the spinning loop wrote tens of MB a second.
        let logged = std::fs::metadata(mirror.dir.path().join("mirror.log"))
            .map(|m| m.len())
            .unwrap_or(0);
        assert!(
            exited,
            "round {round}: the mirror did not exit within 10 s of SIGINT ({logged} bytes logged)"
        );
        assert!(logged < 1 << 20, "round {round}: {logged} bytes logged");
        assert!(
            !mirror.log().contains("Accept() failed"),
            "round {round}: the accept loop failed at the stop"
        );
    }
}
