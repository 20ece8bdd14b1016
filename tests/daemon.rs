//! Daemon mode (`-d`), as `conf/pullthrough.service` runs it: twenty starts that each serve
//! and stop on SIGTERM with draining switched on; an unwritable pid file refused before the
//! fork; and the unit's upgrade sequence (`-u -d`, then SIGQUIT to the old daemon) under the
//! same load loop as the foreground upgrade test, with no failed request.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::hub::{self, Hub};
use common::load::LoadLoop;
use common::registry::noise;

/// The tests here time starts and run load: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A daemon's directory: two configs that differ only in their error log, so the old and
/// the new process of an upgrade can be told apart.
struct Daemon {
    dir: tempfile::TempDir,
    port: u16,
}

impl Daemon {
    fn new(yaml: &str) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let port = common::free_port();
        let d = dir.path().display();
        for (name, log) in [("a.yaml", "a.log"), ("b.yaml", "b.log")] {
            std::fs::write(
                dir.path().join(name),
                format!(
                    "pingora: {{ threads: 2, pid_file: \"{d}/pullthrough.pid\", error_log: \"{d}/{log}\", upgrade_sock: \"{d}/up.sock\", grace_period_seconds: 1, graceful_shutdown_timeout_seconds: 1 }}\nlisten: [\"127.0.0.1:{port}\"]\ncache: {{ dir: \"{d}/cache\" }}\n{yaml}"
                ),
            )
            .unwrap();
        }
        Daemon { dir, port }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `pullthrough <flags> -c <conf>` in the background (the parent of `-d` exits once it
    /// has forked).
    fn spawn(&self, flags: &[&str], conf: &str) -> Child {
        Command::new(env!("CARGO_BIN_EXE_pullthrough"))
            .args(flags)
            .arg("-c")
            .arg(self.path(conf))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.path(&format!("{conf}.stderr"))).unwrap())
            .spawn()
            .unwrap()
    }

    fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.path("pullthrough.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Waits (bounded: 10 s) for the pid file to name a process other than `not`.
    fn wait_pid(&self, not: Option<u32>) -> u32 {
        for _ in 0..1000 {
            if let Some(pid) = self.pid().filter(|p| Some(*p) != not) {
                return pid;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("no new pid in {}", self.path("pullthrough.pid").display());
    }

    fn healthy(&self) -> bool {
        pullthrough::healthcheck::check(&format!("http://127.0.0.1:{}/healthz", self.port)).is_ok()
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }
}

/// A daemon a failed test left running is stopped with its directory (the pid file names
/// it; its command line, which names a config in this directory, proves it is ours).
impl Drop for Daemon {
    fn drop(&mut self) {
        let Some(pid) = self.pid() else {
            return;
        };
        let ours = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| String::from_utf8_lossy(&c).contains(&*self.dir.path().to_string_lossy()))
            .unwrap_or(false);
        if ours {
            let _ = Command::new("kill")
                .args(["-s", "KILL", &pid.to_string()])
                .status();
        }
    }
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args(["-s", sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{sig} {pid}");
}

/// Waits (bounded: 30 s) for a process to be gone; true when it is.
fn wait_gone(pid: u32) -> bool {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    for _ in 0..600 {
        // A zombie of ours would linger in /proc; daemons are reparented, so gone is gone.
        let state = std::fs::read_to_string(proc_dir.join("stat")).unwrap_or_default();
        if !Path::new(&proc_dir).exists() || state.contains(") Z ") {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// The answer to a one-shot `GET path` (status line first).
fn get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer
}

fn access_lines(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("pullthrough::access"))
        .count()
}

#[test]
fn twenty_daemon_starts_each_serve_and_stop_on_sigterm() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut slowest = Duration::ZERO;
    for i in 0..20 {
        let daemon = Daemon::new("");
        let status = daemon.spawn(&["-d"], "a.yaml").wait().unwrap();
        assert!(
            status.success(),
            "start {i}: {}",
            daemon.log("a.yaml.stderr")
        );
        let forked = Instant::now();
        while !daemon.healthy() && forked.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let took = forked.elapsed();
        assert!(
            daemon.healthy(),
            "start {i}: not serving:\n{}",
            daemon.log("a.log")
        );
        slowest = slowest.max(took);
        let pid = daemon.wait_pid(None);
        // The proxy itself answers, not only the health check.
        assert!(
            get(daemon.port, "/v2/").starts_with("HTTP/1.1 200"),
            "start {i}"
        );
        signal(pid, "TERM");
        assert!(
            wait_gone(pid),
            "start {i}: the daemon did not stop on SIGTERM"
        );
        assert!(!daemon.healthy());
        let log = daemon.log("a.log");
        assert!(!log.contains("panicked"), "start {i}:\n{log}");
        assert!(log.contains("SIGTERM received"), "start {i}:\n{log}");
        // The drain watch runs in the daemon (it used to be a thread lost in the fork).
        assert!(
            log.contains("draining: responses now close"),
            "start {i}:\n{log}"
        );
    }
    eprintln!("slowest start to serving: {slowest:?}");
    assert!(
        slowest < Duration::from_secs(1),
        "a daemon took {slowest:?} to serve"
    );
}

#[test]
fn daemon_with_an_unwritable_pid_file_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let d = dir.path().display();
    let conf = dir.path().join("c.yaml");
    std::fs::write(
        &conf,
        format!(
            "pingora: {{ pid_file: \"{d}/missing/dir/pullthrough.pid\", upgrade_sock: \"{d}/up.sock\" }}\nlisten: [\"127.0.0.1:{port}\"]\ncache: {{ dir: \"{d}/cache\" }}\n"
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pullthrough"))
        .args(["-d", "-c"])
        .arg(&conf)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("pingora.pid_file") && stderr.contains("missing/dir/pullthrough.pid"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[test]
fn daemon_upgrade_as_the_systemd_unit_runs_it_drops_no_request() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(upgrade_under_load());
}

async fn upgrade_under_load() {
    let hub = Hub::start().await;
    let blob = hub.add_blob(noise(1 << 20, 5));
    let manifest = hub.add_manifest("library/up", "v1", &blob);
    let daemon = Daemon::new(&format!(
        "default_route: docker\nredirects: {{ follow: [\".docker.com\", \".cloudflarestorage.com\"], to_client: [] }}\n{}",
        hub.mirror_config()
    ));
    // ExecStart: pullthrough -d
    let status = daemon.spawn(&["-d"], "a.yaml").wait().unwrap();
    assert!(status.success(), "{}", daemon.log("a.yaml.stderr"));
    let old = daemon.wait_pid(None);
    for _ in 0..500 {
        if daemon.healthy() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let addr = hub::addr(daemon.port);
    let c = common::client(&[], addr);
    let base = format!("http://{addr}");
    let realm = format!("{base}/v2/auth");
    let r = hub::token_via(&c, &realm, "repository:library/up:pull", None).await;
    let tok = r.json::<serde_json::Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let urls = vec![
        format!("{base}/v2/library/up/manifests/{}", manifest.digest),
        format!("{base}/v2/library/up/blobs/{blob}"),
    ];
    let load = LoadLoop::start(&c, urls, &tok, &blob, 4, (2_000, 20_000));
    load.wait_for(500).await;

    // ExecReload: pullthrough -u -d & sleep; kill -QUIT $MAINPID
    let sock = daemon.path("up.sock");
    let _ = std::fs::remove_file(&sock);
    let mut upgrader = daemon.spawn(&["-u", "-d"], "b.yaml");
    for _ in 0..500 {
        if sock.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(sock.exists(), "{}", daemon.log("b.yaml.stderr"));
    signal(old, "QUIT");
    let status = tokio::task::block_in_place(|| upgrader.wait()).unwrap();
    assert!(status.success(), "{}", daemon.log("b.yaml.stderr"));
    let new = tokio::task::block_in_place(|| daemon.wait_pid(Some(old)));
    let old_gone = tokio::task::block_in_place(|| wait_gone(old));
    let deadline = Instant::now() + Duration::from_secs(60);
    while access_lines(&daemon.log("b.log")) < 200 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (total, failures) = load.finish().await;
    let (served_old, served_new) = (
        access_lines(&daemon.log("a.log")),
        access_lines(&daemon.log("b.log")),
    );
    eprintln!("{total} requests, {failures} failed; old served {served_old}, new {served_new}");
    assert!(total >= 2_000);
    assert_eq!(failures, 0, "requests failed during the daemon upgrade");
    assert!(old_gone, "the old daemon did not exit");
    assert!(
        served_old > 0 && served_new >= 200,
        "old {served_old}, new {served_new}"
    );
    assert!(daemon.healthy());
    for log in [daemon.log("a.log"), daemon.log("b.log")] {
        assert!(!log.contains("panicked"), "{log}");
    }
    assert!(daemon
        .log("a.log")
        .contains("draining: responses now close"));
    assert_eq!(hub.count(hub::STORAGE), 1, "the blob was fetched twice");
    signal(new, "TERM");
    assert!(tokio::task::block_in_place(|| wait_gone(new)));
}
