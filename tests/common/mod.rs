//! Shared test rig: the mirror as a child process, and an in-process fake Docker Hub.
#![allow(dead_code)]

pub mod hub;
pub mod load;
pub mod ops;
pub mod redis;
pub mod registry;

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The proxy guard of DESIGN.md section 5: a client that honours proxy variables can only
/// reach loopback.
pub const GUARD: &[(&str, &str)] = &[
    ("HTTP_PROXY", "http://127.0.0.1:9"),
    ("HTTPS_PROXY", "http://127.0.0.1:9"),
    ("http_proxy", "http://127.0.0.1:9"),
    ("https_proxy", "http://127.0.0.1:9"),
    ("NO_PROXY", "127.0.0.0/8,localhost"),
    ("no_proxy", "127.0.0.0/8,localhost"),
];

/// A free loopback port (bound then released: the mirror binds it next).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a free port")
}

/// A running `pullthrough` process with its own config and directory.
pub struct Mirror {
    pub port: u16,
    /// The address its first listener is on (loopback unless `start_netns` said otherwise).
    pub host: std::net::IpAddr,
    pub dir: tempfile::TempDir,
    child: Child,
    log: PathBuf,
}

impl Mirror {
    /// Starts the mirror on a free port with `yaml` appended to a base config
    /// (listener, pid file, upgrade socket in its own directory) and waits for `/healthz`.
    pub fn start(yaml: &str) -> Mirror {
        let port = free_port();
        Self::start_on(port, &format!("listen: [\"127.0.0.1:{port}\"]\n{yaml}"))
    }

    /// Starts the mirror with exactly this listen section in `yaml`; `port` is where to wait.
    /// Without a `cache:` section in `yaml`, the cache lives in the mirror's own directory.
    pub fn start_on(port: u16, yaml: &str) -> Mirror {
        Self::launch(port, "", yaml)
    }

    /// Starts the mirror like `start`, with `pingora` (`key: value, ...`) added to the
    /// `pingora:` section (a `grace_period_seconds` there replaces the tests' 1 s).
    pub fn start_tuned(pingora: &str, yaml: &str) -> Mirror {
        let port = free_port();
        Self::launch(
            port,
            &format!(", {pingora}"),
            &format!("listen: [\"127.0.0.1:{port}\"]\n{yaml}"),
        )
    }

    /// Starts the mirror inside the network namespace `netns` (`ip netns exec`), with exactly
    /// this listen section in `yaml`; `host:port` is where to wait and what `url` names.
    pub fn start_netns(netns: &str, host: std::net::IpAddr, port: u16, yaml: &str) -> Mirror {
        Self::launch_in(Some(netns), host, port, "", yaml)
    }

    fn launch(port: u16, pingora: &str, yaml: &str) -> Mirror {
        Self::launch_in(None, [127, 0, 0, 1].into(), port, pingora, yaml)
    }

    fn launch_in(
        netns: Option<&str>,
        host: std::net::IpAddr,
        port: u16,
        pingora: &str,
        yaml: &str,
    ) -> Mirror {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().display();
        let cache = if yaml.contains("\ncache:") || yaml.starts_with("cache:") {
            String::new()
        } else {
            format!("cache: {{ dir: \"{d}/cache\" }}\n")
        };
        // A `cache:` section that names no directory gets the mirror's own too: the default
        // (`./cache`, the checkout's) would be shared by tests running side by side and kept
        // from one run to the next.
        let yaml = if yaml.contains("dir:") {
            yaml.to_owned()
        } else {
            yaml.replacen("cache: {", &format!("cache: {{ dir: \"{d}/cache\","), 1)
        };
        let grace = if pingora.contains("grace_period_seconds") {
            ""
        } else {
            ", grace_period_seconds: 1"
        };
        let config = format!(
            "pingora: {{ threads: 2, pid_file: \"{d}/pid\", upgrade_sock: \"{d}/upgrade.sock\", graceful_shutdown_timeout_seconds: 1{grace}{pingora} }}\n\
             {cache}{yaml}"
        );
        let conf = dir.path().join("pullthrough.yaml");
        std::fs::write(&conf, config).expect("write config");
        let log = dir.path().join("mirror.log");
        let child = spawn_in(netns, &[], &conf, &log);
        let mut mirror = Mirror {
            port,
            host,
            dir,
            child,
            log,
        };
        mirror.wait_healthy();
        mirror
    }

    fn wait_healthy(&mut self) {
        for _ in 0..200 {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("mirror exited with {status}:\n{}", self.log());
            }
            if std::net::TcpStream::connect((self.host, self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("mirror did not start listening in 10 s:\n{}", self.log());
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the mirror logged so far.
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// A new process that takes this one's listeners over (Pingora's `-u` and SIGQUIT, the
    /// documented upgrade): starts it, waits (bounded) until it listens on the upgrade
    /// socket, then sends this process SIGQUIT. This process keeps serving what it has in
    /// flight and exits once it is done (or its grace period is over).
    pub fn take_over(&self) -> Mirror {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("mirror.log");
        let sock = self.dir.path().join("upgrade.sock");
        let _ = std::fs::remove_file(&sock);
        let child = spawn_in(None, &["-u"], &self.config_path(), &log);
        for _ in 0..200 {
            if sock.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        assert!(
            sock.exists(),
            "the new process never opened {}",
            sock.display()
        );
        let quit = Command::new("kill")
            .args(["-s", "QUIT", &self.child.id().to_string()])
            .status()
            .expect("kill -QUIT");
        assert!(quit.success());
        Mirror {
            port: self.port,
            host: self.host,
            dir,
            child,
            log,
        }
    }

    /// Waits (bounded: 30 s) for the process to exit; true when it did.
    pub fn wait_exit(&mut self) -> bool {
        self.wait_exit_within(Duration::from_secs(30))
    }

    /// Waits at most `limit` for the process to exit; true when it did.
    pub fn wait_exit_within(&mut self, limit: Duration) -> bool {
        let started = std::time::Instant::now();
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            if started.elapsed() >= limit {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends the process SIGTERM (a graceful stop) and returns at once.
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Sends the process SIGINT (a stop at once) and returns at once.
    pub fn interrupt(&self) {
        self.signal("INT");
    }

    fn signal(&self, name: &str) {
        let sent = Command::new("kill")
            .args(["-s", name, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(sent.success(), "kill -s {name}");
    }

    /// Stops the process cleanly (SIGTERM: graceful shutdown, the cache's LRU order saved)
    /// and waits (bounded) for it to exit.
    pub fn stop(&mut self) {
        self.terminate();
        assert!(self.wait_exit(), "the mirror did not stop on SIGTERM");
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("pullthrough.yaml")
    }
}

/// Starts `pullthrough <flags> -c <conf>`, in the network namespace `netns` if given,
/// logging to `log` (`MIRROR_LOG` sets RUST_LOG).
fn spawn_in(netns: Option<&str>, flags: &[&str], conf: &Path, log: &Path) -> Child {
    let program = env!("CARGO_BIN_EXE_pullthrough");
    let mut command = match netns {
        // `ip netns exec` execs the program: the child is the mirror itself.
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, program]);
            c
        }
        None => Command::new(program),
    };
    command
        .args(flags)
        .arg("-c")
        .arg(conf)
        .env(
            "RUST_LOG",
            std::env::var("MIRROR_LOG").unwrap_or_else(|_| "pullthrough=debug,pingora=warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log file"))
        .spawn()
        .expect("start pullthrough")
}

impl Drop for Mirror {
    /// Stops the mirror; a test whose mirror panicked anywhere (a task Pingora or tokio
    /// caught and the process survived) fails, unless it is failing already.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let log = self.log();
            assert!(!log.contains("panicked at"), "the mirror panicked:\n{log}");
        }
    }
}

/// What registry clients send as `Accept` (skopeo's list): every manifest type.
pub const CLIENT_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json, */*";

/// An HTTP client that never follows redirects and reaches `names` at `addr`; it sends a
/// registry client's `Accept` unless a request sets its own.
pub fn client(names: &[&str], addr: SocketAddr) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::ACCEPT,
        reqwest::header::HeaderValue::from_static(CLIENT_ACCEPT),
    );
    let mut b = reqwest::Client::builder()
        .default_headers(headers)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(120));
    for name in names {
        b = b.resolve(name, addr);
    }
    b.build().expect("client")
}

/// The lines of a mirror's log at ERROR or WARN.
pub fn loud_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains(" ERROR ") || l.contains(" WARN "))
        .collect()
}

/// The body of `GET url` as text (admin pages: `/metrics`, `/stats`).
pub async fn get_text(c: &reqwest::Client, url: impl reqwest::IntoUrl) -> String {
    c.get(url).send().await.unwrap().text().await.unwrap()
}

/// A JSON answer (`/stats`, the admin API).
pub async fn get_json(c: &reqwest::Client, url: impl reqwest::IntoUrl) -> serde_json::Value {
    c.get(url).send().await.unwrap().json().await.unwrap()
}

/// What `X-Cache-Status` said (empty when absent).
pub fn cache_status(r: &reqwest::Response) -> String {
    r.headers()
        .get("x-cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// sha256 of bytes as `sha256:<hex>`.
pub fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

/// A test that cannot run here says so, and returns; under `scripts/test`, which installs
/// every tool and sets `PULLTHROUGH_REQUIRE_TOOLS`, it fails instead: a test that silently
/// passes without its tool proves nothing.
pub fn skip(why: &str) {
    if std::env::var_os("PULLTHROUGH_REQUIRE_TOOLS").is_some() {
        panic!("{why} (PULLTHROUGH_REQUIRE_TOOLS is set: scripts/test should have installed it)");
    }
    eprintln!("SKIPPED: {why}");
}

/// The path of a program, or a clear failure naming the package that provides it.
pub fn require_program(name: &str, package: &str) -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("{name} is not installed: install the Debian package {package} (tests/run.sh does)");
}
