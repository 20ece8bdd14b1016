//! The big-cache case: a cache of ENTRIES (default 1,000,000) synthetic entries in the real
//! on-disk format (`cache::synthetic`), and the release daemon in front of it.
//!
//! Measured: time from process start to the first hit served, with the index a clean stop
//! saved and without its mark (a crash: the disk is then scanned in the background), how long
//! that scan takes, the daemon's memory per entry (RSS with the big cache less RSS with 1,000
//! entries), hit latency with the big cache against 1,000 entries, and an upgrade under load
//! (a new process with `-u`, SIGQUIT to the old) with the big cache: failed requests and the
//! longest pause any client saw. Prints a Markdown section (and writes it to
//! `target/BIGCACHE.md`).
//!
//!   cargo bench --bench bigcache                   # 1,000,000 entries (~10 GB of small files)
//!   cargo bench --bench bigcache -- --entries 20000 # smaller, as CI's smoke run

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pullthrough::cache::synthetic;

const REPO: &str = "library/big";
/// Hits timed per connection (after as many untimed).
const LATENCY_SAMPLES: usize = 1000;

/// Rounds of latency samples per site, each on its own connection.
const LATENCY_ROUNDS: usize = 6;
/// Clients and seconds of the upgrade-under-load case.
const UPGRADE_CLIENTS: usize = 8;
const UPGRADE_SECS: u64 = 8;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// One cache directory and the config in front of it.
struct Site {
    dir: PathBuf,
    conf: PathBuf,
    port: u16,
    admin: u16,
}

impl Site {
    fn new(root: &Path, name: &str) -> Site {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).expect("site dir");
        let (port, admin) = (free_port(), free_port());
        let d = dir.display();
        // The upstream is a dead port: every answer must come from the cache.
        let yaml = format!(
            "pingora: {{ threads: 2, pid_file: \"{d}/pid\", upgrade_sock: \"{d}/upgrade.sock\", grace_period_seconds: 2, graceful_shutdown_timeout_seconds: 1 }}\n\
             listen: [\"127.0.0.1:{port}\"]\nadmin: {{ listen: \"127.0.0.1:{admin}\" }}\n\
             default_route: local\nroutes: {{ local: {{ upstream: \"http://127.0.0.1:9\", registry: local.test }} }}\n\
             cache: {{ dir: \"{d}/cache\", max_size: 1TiB }}\n"
        );
        let conf = dir.join("pullthrough.yaml");
        std::fs::write(&conf, &yaml).expect("write config");
        Site {
            dir,
            conf,
            port,
            admin,
        }
    }

    fn fill(&self, entries: u64) -> Duration {
        let text = std::fs::read_to_string(&self.conf).expect("config");
        let config = pullthrough::config::parse(&text).expect("config parses");
        let route = config.routes.by_name("local").expect("route").clone();
        let started = Instant::now();
        synthetic::write(&self.dir.join("cache"), &route, REPO, entries, true, &|n| {
            if n % 100_000 == 0 {
                eprintln!("  {n} entries written");
            }
        })
        .expect("write the cache");
        started.elapsed()
    }

    fn start(&self, flags: &[&str]) -> Child {
        Command::new(env!("CARGO_BIN_EXE_pullthrough"))
            .args(flags)
            .arg("-c")
            .arg(&self.conf)
            .env("RUST_LOG", "warn,pullthrough::cache=info")
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.dir.join("mirror.log"))
                    .expect("log"),
            )
            .spawn()
            .expect("start pullthrough")
    }

    fn url(&self, i: u64) -> String {
        format!(
            "http://127.0.0.1:{}/v2/{REPO}/blobs/{}",
            self.port,
            synthetic::digest(i)
        )
    }

    async fn scan_state(&self, c: &reqwest::Client) -> Option<String> {
        let stats: serde_json::Value = c
            .get(format!("http://127.0.0.1:{}/stats", self.admin))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        stats["cache"]["scan"]["state"].as_str().map(str::to_owned)
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn signal(child: &Child, sig: &str) {
    let _ = Command::new("kill")
        .args(["-s", sig, &child.id().to_string()])
        .status();
}

fn stop(mut child: Child) {
    signal(&child, "TERM");
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Drops the page cache so the start reads from the disk (root only; says whether it did).
fn drop_page_cache() -> bool {
    let _ = Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3\n").is_ok()
}

/// Time from `started` until entry `i` is served as a hit (bounded: 120 s).
async fn first_hit(c: &reqwest::Client, site: &Site, i: u64, started: Instant) -> Duration {
    let deadline = started + Duration::from_secs(120);
    while Instant::now() < deadline {
        if let Ok(r) = c.get(site.url(i)).send().await {
            let hit = r
                .headers()
                .get("x-cache-status")
                .is_some_and(|v| v == "hit");
            if r.status() == 200
                && hit
                && r.bytes().await.ok().as_deref() == Some(&synthetic::body(i)[..])
            {
                return started.elapsed();
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!(
        "no hit within 120 s; see {}",
        site.dir.join("mirror.log").display()
    );
}

/// Sequential hits over `entries` on one new connection (ms each), after one pass over the
/// same entries (what is measured is the hit path, not the first read of a file).
async fn hit_times(site: &Site, entries: u64) -> Vec<f64> {
    let c = client();
    let mut times = Vec::with_capacity(LATENCY_SAMPLES);
    for n in 0..2 * LATENCY_SAMPLES as u64 {
        let n = n % LATENCY_SAMPLES as u64;
        let i = n.wrapping_mul(104_729) % entries;
        let started = Instant::now();
        let r = c.get(site.url(i)).send().await.expect("hit");
        assert_eq!(r.status(), 200);
        r.bytes().await.expect("body");
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.split_off(LATENCY_SAMPLES)
}

/// Median and 99th percentile of `times` (ms).
fn p50_p99(mut times: Vec<f64>) -> (f64, f64) {
    times.sort_by(|a, b| a.total_cmp(b));
    (times[times.len() / 2], times[times.len() * 99 / 100])
}

/// Hit latency of `small` and of `big`, both serving: `LATENCY_ROUNDS` rounds, the two sites
/// in turn (each round starting with the other), each on a new connection. One connection's
/// latency depends on where the client and the thread serving it run (0.08-0.14 ms at the
/// median from one run to the next on the same cache), so one connection per site would
/// compare two draws, not two caches.
async fn compared_latency(small: &Site, big: &Site, entries: u64) -> [(f64, f64); 2] {
    let mut times = [Vec::new(), Vec::new()];
    for round in 0..LATENCY_ROUNDS {
        for k in [round % 2, 1 - round % 2] {
            let (site, n) = if k == 0 {
                (small, 1000)
            } else {
                (big, entries)
            };
            times[k].extend(hit_times(site, n).await);
        }
    }
    let [small_times, big_times] = times;
    [p50_p99(small_times), p50_p99(big_times)]
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// A process serving `site` with its first hit timed from spawn.
async fn timed_start(c: &reqwest::Client, site: &Site, entries: u64) -> (Child, Duration) {
    let started = Instant::now();
    let child = site.start(&[]);
    let took = first_hit(c, site, entries / 2, started).await;
    (child, took)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let entries: u64 = args
        .iter()
        .position(|a| a == "--entries")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(1_000_000);
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bigcache");
    let _ = std::fs::remove_dir_all(&root);
    let c = client();

    eprintln!("bigcache: writing {entries} entries");
    let big = Site::new(&root, "big");
    let wrote = big.fill(entries);
    let small = Site::new(&root, "small");
    small.fill(1000);

    // 1,000 entries: the baseline for memory and latency.
    let (child, _) = timed_start(&c, &small, 1000).await;
    let small_rss = rss_kib(child.id());
    stop(child);

    // Clean stop: the index is trusted.
    let dropped = drop_page_cache();
    let started = Instant::now();
    let (child, clean_first) = timed_start(&c, &big, entries).await;
    let mut clean_state = String::new();
    while started.elapsed() < Duration::from_secs(300) {
        clean_state = big.scan_state(&c).await.unwrap_or_default();
        if clean_state != "loading" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let clean_loaded = started.elapsed();
    let big_rss = rss_kib(child.id());
    let small_child = small.start(&[]);
    first_hit(&c, &small, 500, Instant::now()).await;
    let [(small_p50, small_p99), (big_p50, big_p99)] =
        compared_latency(&small, &big, entries).await;
    stop(small_child);
    stop(child);

    // A crash: the mark gone, the disk is scanned in the background.
    let _ = std::fs::remove_file(big.dir.join("cache/v1/index/clean"));
    drop_page_cache();
    let started = Instant::now();
    let (child, crash_first) = timed_start(&c, &big, entries).await;
    let mut scan_took = None;
    while started.elapsed() < Duration::from_secs(1800) {
        if big.scan_state(&c).await.as_deref() == Some("done") {
            scan_took = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let scanned_rss = rss_kib(child.id());
    stop(child);

    // An upgrade under load with the big cache.
    let old = big.start(&[]);
    first_hit(&c, &big, 0, Instant::now()).await;
    let failed = Arc::new(AtomicU64::new(0));
    let served = Arc::new(AtomicU64::new(0));
    let longest_gap_ms = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(UPGRADE_SECS);
    let mut clients = Vec::new();
    for k in 0..UPGRADE_CLIENTS as u64 {
        let (c, failed, served, gap) = (
            c.clone(),
            failed.clone(),
            served.clone(),
            longest_gap_ms.clone(),
        );
        let urls: Vec<String> = (0..64).map(|n| big.url((n * 7919 + k) % entries)).collect();
        clients.push(tokio::spawn(async move {
            let mut last = Instant::now();
            let mut n = 0;
            while Instant::now() < until {
                let ok = match c.get(&urls[n % urls.len()]).send().await {
                    Ok(r) if r.status() == 200 => r.bytes().await.is_ok(),
                    _ => false,
                };
                n += 1;
                if ok {
                    served.fetch_add(1, Ordering::Relaxed);
                    gap.fetch_max(last.elapsed().as_millis() as u64, Ordering::Relaxed);
                    last = Instant::now();
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sock = big.dir.join("upgrade.sock");
    let _ = std::fs::remove_file(&sock);
    let new = big.start(&["-u"]);
    for _ in 0..400 {
        if sock.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    signal(&old, "QUIT");
    for client in clients {
        let _ = client.await;
    }
    let mut old = old;
    let _ = old.wait();
    stop(new);

    let per_entry = (big_rss.saturating_sub(small_rss) * 1024) as f64
        / entries.saturating_sub(1000).max(1) as f64;
    let report = format!(
        "(f) A cache of {entries} entries (`cargo bench --bench bigcache`; written in {:.0} s by \
         `cache::synthetic`; page cache {}dropped before each start):\n\n\
         | case | figure |\n|---|---|\n\
         | start to first hit, index saved at a clean stop | {:.3} s |\n\
         | start to the index loaded in the background (scan then: {clean_state}) | {:.3} s |\n\
         | start to first hit, after a crash (no mark) | {:.3} s |\n\
         | background scan after a crash, start to done | {} |\n\
         | RSS with {entries} entries / with 1,000 | {:.1} MiB / {:.1} MiB |\n\
         | memory per entry (index loaded) | {per_entry:.0} bytes |\n\
         | RSS after the crash scan | {:.1} MiB |\n\
         | hit latency p50 / p99, {entries} entries ({LATENCY_ROUNDS} connections, interleaved with the 1,000) | {big_p50:.3} / {big_p99:.3} ms |\n\
         | hit latency p50 / p99, 1,000 entries | {small_p50:.3} / {small_p99:.3} ms |\n\
         | upgrade under load ({UPGRADE_CLIENTS} clients, {UPGRADE_SECS} s): served / failed | {} / {} |\n\
         | upgrade under load: longest pause a client saw | {} ms |\n",
        wrote.as_secs_f64(),
        if dropped { "" } else { "not " },
        clean_first.as_secs_f64(),
        clean_loaded.as_secs_f64(),
        crash_first.as_secs_f64(),
        scan_took.map_or("not done in 30 min".to_owned(), |d| format!("{:.1} s", d.as_secs_f64())),
        big_rss as f64 / 1024.0,
        small_rss as f64 / 1024.0,
        scanned_rss as f64 / 1024.0,
        served.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        longest_gap_ms.load(Ordering::Relaxed),
    );
    println!("{report}");
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/BIGCACHE.md");
    let _ = std::fs::write(out, &report);
    let _ = std::fs::remove_dir_all(&root);
}
