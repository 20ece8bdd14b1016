//! The status page at `/` on the admin listener, in a real browser: Debian's chromium,
//! headless, reading the DOM once the page's script has polled `/stats` a few times. The page
//! renders, its numbers equal `/stats` after a known sequence of requests (one of them failing),
//! and it updates without a reload. A screenshot lands in `target/status-page.png` (the README's).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::hub::{self, Hub};
use common::registry::noise;
use common::{free_port, skip, Mirror};

fn chromium() -> Option<PathBuf> {
    let found = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| Path::new(d).join("chromium"))
        .find(|p| p.is_file());
    if found.is_none() {
        skip("chromium is not installed (Debian package chromium)");
    }
    found
}

/// Runs headless chromium on `url` with the client guard: every name but loopback resolves
/// to nothing and any proxied request goes to a dead port.
fn chromium_run(program: &Path, profile: &Path, args: &[&str], url: &str) -> String {
    let out = Command::new(program)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--proxy-server=http://127.0.0.1:9",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .env("HTTP_PROXY", "http://127.0.0.1:9")
        .env("HTTPS_PROXY", "http://127.0.0.1:9")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .output()
        .expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The text of the element carrying `attr` (e.g. `data-stat="requests"`).
fn text_of<'a>(dom: &'a str, attr: &str) -> &'a str {
    let at = dom
        .find(attr)
        .unwrap_or_else(|| panic!("{attr} not in the page:\n{dom}"));
    let rest = &dom[at..];
    let start = rest.find('>').unwrap() + 1;
    let end = rest[start..].find('<').unwrap();
    &rest[start..start + end]
}

#[tokio::test(flavor = "multi_thread")]
async fn the_status_page_shows_what_stats_says_and_keeps_updating() {
    let Some(program) = chromium() else { return };
    let hub = Hub::start().await;
    let layer = noise(300 << 10, 71);
    let blob = hub.add_blob(layer.clone());
    let manifest = hub.add_manifest("library/app", "v1", &blob);
    let admin = free_port();
    let mirror = Mirror::start(&format!(
        "default_route: docker\nadmin: {{ listen: \"127.0.0.1:{admin}\" }}\n\
         redirects: {{ follow: [\".docker.com\", \".cloudflarestorage.com\"], to_client: [] }}\n{}",
        hub.mirror_config()
    ));
    // A known sequence: the token, a blob twice (miss, hit), a manifest twice, a tag lookup.
    let c = common::client(&[], mirror.addr());
    let tok = hub::pull_token(&c, &mirror, "library/app", None).await;
    for path in [
        format!("/v2/library/app/blobs/{blob}"),
        format!("/v2/library/app/blobs/{blob}"),
        format!("/v2/library/app/manifests/{}", manifest.digest),
        format!("/v2/library/app/manifests/{}", manifest.digest),
        "/v2/library/app/manifests/v1".to_string(),
    ] {
        let r = c
            .get(mirror.url(&path))
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        r.bytes().await.unwrap();
    }
    // And one that fails: the registry down, a blob never cached.
    hub.set_down(true);
    let missing = hub.add_blob(noise(1024, 72));
    let failed = c
        .get(mirror.url(&format!("/v2/library/app/blobs/{missing}")))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert!(failed.status().is_server_error(), "{}", failed.status());
    hub.set_down(false);
    let admin_url = format!("http://127.0.0.1:{admin}");
    // A fill held half way by the upstream: the page shows it with its progress.
    let held = hub.add_blob(noise(2 << 20, 73));
    let gate = hub.gate(&held);
    let filling = common::ops::spawn_get(
        &c,
        mirror.url(&format!("/v2/library/app/blobs/{held}")),
        &tok,
    );
    let mut stats = serde_json::Value::Null;
    for _ in 0..200 {
        let now: serde_json::Value = reqwest::get(format!("{admin_url}/stats"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        // Held: the bytes received stop moving once the first half is in.
        let fill = |s: &serde_json::Value| s["cache"]["fills"][0]["bytes"].as_u64();
        if fill(&now).is_some_and(|b| b > 0) && fill(&now) == fill(&stats) {
            stats = now;
            break;
        }
        stats = now;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let fill = stats["cache"]["fills"][0].clone();
    assert_eq!(fill["digest"], held.as_str(), "{stats}");
    let traffic = &stats["traffic"]["docker"];
    assert!(traffic["requests"].as_u64() >= Some(7), "{stats}");
    assert!(traffic["errors"].as_u64() >= Some(1), "{stats}");
    assert!(traffic["from_cache"].as_u64() >= Some(2), "{stats}");

    let profile = tempfile::tempdir().unwrap();
    // Five seconds of the page's own time: it polls at once and every two seconds after.
    let dom = chromium_run(
        &program,
        profile.path(),
        &["--dump-dom", "--virtual-time-budget=5000"],
        &format!("{admin_url}/"),
    );
    assert_eq!(text_of(&dom, "<title"), "pullthrough");
    let n = |v: &serde_json::Value| v.as_u64().unwrap().to_string();
    for (attr, want) in [
        (
            "data-stat=\"version\"",
            stats["version"].as_str().unwrap().to_owned(),
        ),
        ("data-stat=\"pid\"", n(&stats["pid"])),
        ("data-stat=\"requests\"", n(&traffic["requests"])),
        ("data-stat=\"from_cache\"", n(&traffic["from_cache"])),
        ("data-stat=\"errors\"", n(&traffic["errors"])),
        ("data-stat=\"cache.items\"", n(&stats["cache"]["items"])),
        (
            "data-stat=\"cache.evicted_items\"",
            n(&stats["cache"]["evicted_items"]),
        ),
        (
            "data-stat=\"cache.fills_in_flight\"",
            n(&stats["cache"]["fills_in_flight"]),
        ),
    ] {
        assert_eq!(text_of(&dom, attr), want, "{attr}:\n{dom}");
    }
    // The route's row: requests, from cache, 5xx.
    let row_at = dom
        .find("data-route=\"docker\"")
        .expect("the docker route's row");
    let row = &dom[row_at..dom[row_at..].find("</tr>").unwrap() + row_at];
    let cells: Vec<&str> = row
        .split("<td")
        .skip(1)
        .map(|c| &c[c.find('>').unwrap() + 1..c.find("</td>").unwrap()])
        .collect();
    assert_eq!(cells[0], "docker");
    assert_eq!(cells[3], n(&traffic["requests"]), "{row}");
    assert_eq!(cells[4], n(&traffic["from_cache"]), "{row}");
    assert!(cells[7].ends_with(" ago"), "last upstream answer: {row}");
    let last_error = &stats["activity"]["routes"]["docker"]["last_error"];
    assert!(
        cells[8].starts_with(&last_error["status"].to_string()),
        "last error {last_error}: {row}"
    );
    // The busiest repository, and the failed request among the recent errors.
    let top = &stats["activity"]["top_by_requests"][0];
    assert_eq!(top["repository"], "library/app", "{stats}");
    let top_at = dom
        .find("data-repository=\"library/app\"")
        .expect("the busiest repository's row");
    let top_row = &dom[top_at..dom[top_at..].find("</tr>").unwrap() + top_at];
    assert!(
        top_row.contains(&format!(">{}</td>", n(&top["requests"]))),
        "{top_row}"
    );
    assert!(
        dom.contains(&format!("/v2/library/app/blobs/{missing}")),
        "{dom}"
    );
    // The fill in flight, with what it has received.
    let fill_at = dom
        .find(&format!("data-fill=\"{held}\""))
        .unwrap_or_else(|| panic!("no row for the fill in flight:\n{dom}"));
    let fill_row = &dom[fill_at..dom[fill_at..].find("</tr>").unwrap() + fill_at];
    assert!(
        fill_row.contains(&format!("data-bytes=\"{}\"", fill["bytes"])),
        "{fill_row}"
    );
    assert!(
        fill_row.contains("blob library/app") && fill_row.contains("of 2.0 MiB"),
        "{fill_row}"
    );
    // Updated without a reload: the script rendered more than once.
    let updates: u32 = text_of(&dom, "id=\"updates\"").parse().unwrap();
    assert!(updates >= 2, "the page rendered {updates} times");
    assert_eq!(text_of(&dom, "id=\"error\""), "");

    let shot = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/status-page.png");
    chromium_run(
        &program,
        profile.path(),
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,1350",
            "--virtual-time-budget=3000",
        ],
        &format!("{admin_url}/"),
    );
    assert!(shot.metadata().map(|m| m.len()).unwrap_or(0) > 0);
    gate.add_permits(1);
    assert_eq!(common::sha256(&filling.await.unwrap()), held);
}
