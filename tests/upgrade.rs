//! Zero-downtime upgrade: while a bounded load loop (at least 2,000 requests, at most 20,000
//! or 60 s: manifests by digest and 1 MiB blob downloads over keep-alive connections) runs
//! against the mirror, a second process takes the listeners over with `-u` and SIGQUIT. No
//! request fails, both processes served some, and the two share the cache directory.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::hub::{self, Hub};
use common::registry::noise;
use common::Mirror;

const WORKERS: usize = 4;
const MIN_REQUESTS: usize = 2_000;
const MAX_REQUESTS: usize = 20_000;

fn access_lines(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("pullthrough::access"))
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn upgrade_hands_over_without_dropping_requests() {
    let hub = Hub::start().await;
    let blob = hub.add_blob(noise(1 << 20, 5));
    let manifest = hub.add_manifest("library/up", "v1", &blob);
    let config = format!(
        "default_route: docker\nredirects: {{ follow: [\".docker.com\", \".cloudflarestorage.com\"], to_client: [] }}\n{}",
        hub.mirror_config()
    );
    let mut old = Mirror::start(&config);
    let c = common::client(&[], old.addr());
    let tok = hub::pull_token(&c, &old, "library/up", None).await;
    let urls = Arc::new([
        old.url(&format!("/v2/library/up/manifests/{}", manifest.digest)),
        old.url(&format!("/v2/library/up/blobs/{blob}")),
    ]);

    let done = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let (c, urls, tok, done, failures, blob, stop) = (
            c.clone(),
            urls.clone(),
            tok.clone(),
            done.clone(),
            failures.clone(),
            blob.clone(),
            stop.clone(),
        );
        workers.push(tokio::spawn(async move {
            for i in 0..MAX_REQUESTS / WORKERS {
                if stop.load(Ordering::SeqCst) && done.load(Ordering::SeqCst) >= MIN_REQUESTS {
                    break;
                }
                let url = &urls[(i + w) % 2];
                let ok = match c.get(url).bearer_auth(&tok).send().await {
                    Ok(r) if r.status() == 200 => match r.bytes().await {
                        Ok(b) => !url.contains("/blobs/") || common::sha256(&b) == blob,
                        Err(_) => false,
                    },
                    _ => false,
                };
                if !ok {
                    failures.fetch_add(1, Ordering::SeqCst);
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    // Upgrade once some load has run; keep the load going until the old process has exited
    // and the new one has served a while (bounded by MAX_REQUESTS and 60 s).
    while done.load(Ordering::SeqCst) < MIN_REQUESTS / 4 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let new = tokio::task::block_in_place(|| old.take_over());
    let old_exited = tokio::task::block_in_place(|| old.wait_exit());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while access_lines(&new.log()) < 200 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    let total = done.load(Ordering::SeqCst);
    eprintln!(
        "{total} requests, {} failed",
        failures.load(Ordering::SeqCst)
    );
    assert!(total >= MIN_REQUESTS);
    assert_eq!(
        failures.load(Ordering::SeqCst),
        0,
        "requests failed during the upgrade"
    );
    assert!(old_exited, "the old process did not exit");
    let (served_old, served_new) = (access_lines(&old.log()), access_lines(&new.log()));
    eprintln!("served by the old process: {served_old}, by the new one: {served_new}");
    assert!(
        served_old > 0 && served_new > 0,
        "old {served_old}, new {served_new}"
    );
    // The new process serves from the cache the old one filled.
    assert!(new.log().contains("status=200"));
    assert_eq!(
        hub.count(hub::STORAGE),
        1,
        "the blob was fetched again after the upgrade"
    );
}

#[test]
fn daemon_writes_pid_file_and_error_log_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let port = common::free_port();
    let conf = dir.path().join("pullthrough.yaml");
    std::fs::write(
        &conf,
        format!(
            "pingora: {{ threads: 1, pid_file: \"{d}/pullthrough.pid\", error_log: \"{d}/error.log\", upgrade_sock: \"{d}/up.sock\", grace_period_seconds: 1, graceful_shutdown_timeout_seconds: 1 }}\nlisten: [\"127.0.0.1:{port}\"]\ncache: {{ dir: \"{d}/cache\" }}\n"
        ),
    )
    .unwrap();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_pullthrough"))
        .args(["-d", "-c"])
        .arg(&conf)
        .env("RUST_LOG", "info")
        .status()
        .unwrap();
    assert!(status.success());
    let pid_file = dir.path().join("pullthrough.pid");
    let mut pid = None;
    for _ in 0..200 {
        if let Ok(text) = std::fs::read_to_string(&pid_file) {
            if let Ok(p) = text.trim().parse::<u32>() {
                pid = Some(p);
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let pid = pid.expect("no pid file");
    let url = format!("http://127.0.0.1:{port}/healthz");
    let mut healthy = false;
    for _ in 0..200 {
        if pullthrough::healthcheck::check(&url).is_ok() {
            healthy = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    assert!(healthy, "the daemon does not answer");
    let term = std::process::Command::new("kill")
        .args(["-s", "TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let proc_dir = std::path::PathBuf::from(format!("/proc/{pid}"));
    for _ in 0..600 {
        if !proc_dir.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!proc_dir.exists(), "the daemon did not stop on SIGTERM");
    assert!(pullthrough::healthcheck::check(&url).is_err());
    let log = std::fs::read_to_string(dir.path().join("error.log")).unwrap();
    assert!(log.contains("SIGTERM received"), "{log}");
}
