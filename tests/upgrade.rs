//! Zero-downtime upgrade in the foreground: while a bounded load loop (at least 2,000
//! requests, at most 20,000 or 60 s: manifests by digest and 1 MiB blob downloads over
//! keep-alive connections) runs against the mirror, a second process takes the listeners
//! over with `-u` and SIGQUIT. No request fails, both processes served some, and the two
//! share the cache directory. Daemon mode (`-d`, as the systemd unit runs it): `daemon.rs`.

mod common;

use std::time::Duration;

use common::hub::{self, Hub};
use common::load::LoadLoop;
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
    let urls = vec![
        old.url(&format!("/v2/library/up/manifests/{}", manifest.digest)),
        old.url(&format!("/v2/library/up/blobs/{blob}")),
    ];
    let load = LoadLoop::start(&c, urls, &tok, &blob, WORKERS, (MIN_REQUESTS, MAX_REQUESTS));
    // Upgrade once some load has run; keep the load going until the old process has exited
    // and the new one has served a while (bounded by MAX_REQUESTS and 60 s).
    load.wait_for(MIN_REQUESTS / 4).await;
    let new = tokio::task::block_in_place(|| old.take_over());
    let old_exited = tokio::task::block_in_place(|| old.wait_exit());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while access_lines(&new.log()) < 200 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (total, failures) = load.finish().await;
    eprintln!("{total} requests, {failures} failed");
    assert!(total >= MIN_REQUESTS);
    assert_eq!(failures, 0, "requests failed during the upgrade");
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
