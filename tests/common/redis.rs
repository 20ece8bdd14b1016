//! Debian's redis-server on a free loopback port, for the cluster's shared state: started,
//! killed and started again on the same port by the tests.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, require_program, skip};

pub struct Redis {
    pub ip: std::net::IpAddr,
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Redis {
    /// A running server, or `None` (the test skips) when redis-server is not installed.
    pub fn start() -> Option<Redis> {
        Self::start_on([127, 0, 0, 1].into())
    }

    /// As `start`, listening on `ip` (an address of this machine).
    pub fn start_on(ip: std::net::IpAddr) -> Option<Redis> {
        if which("redis-server").is_none() {
            skip("redis-server is not installed (Debian package redis-server)");
            return None;
        }
        let mut redis = Redis {
            ip,
            port: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
        };
        redis.run();
        Some(redis)
    }

    pub fn url(&self) -> String {
        format!("redis://{}:{}/0", self.ip, self.port)
    }

    /// Starts the server (again) on its port, in memory only, and waits until it answers.
    pub fn run(&mut self) {
        let program = require_program("redis-server", "redis-server");
        let log = std::fs::File::create(self.dir.path().join("redis.log")).expect("log");
        let child = Command::new(program)
            .args([
                "--bind",
                &self.ip.to_string(),
                "--port",
                &self.port.to_string(),
            ])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        for _ in 0..200 {
            if self.ping() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("redis-server never answered on port {}", self.port);
    }

    /// Whether the server answers PING (a plain RESP exchange).
    fn ping(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect((self.ip, self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    /// Kills the server (SIGKILL: no goodbye to its clients).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| std::path::Path::new(d).join(name))
        .find(|p| p.is_file())
}
