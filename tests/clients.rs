//! Real clients pulling through the mirror: podman with the mirror as a `registries.conf`
//! mirror (path-prefix form), and containerd's `ctr` with a `hosts.toml` (routed by `?ns=`).
//! Each test skips, saying so, when its tool is missing; under `scripts/test`, which installs
//! them, a missing tool fails the test.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::registry::{Layout, Registry};
use common::{Mirror, GUARD};

fn find(name: &str) -> Option<PathBuf> {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// A registry holding `library/img:v1`, and a mirror whose docker route points at it.
fn rig(work: &Path) -> (Registry, Mirror) {
    let layout = Layout::write(&work.join("oci"), &[1 << 20, 4096]);
    let reg = Registry::start(None);
    layout.push(&reg.addr(), "library/img", None);
    let mirror = Mirror::start(&format!(
        "routes:\n  docker: {{ upstream: \"http://{}\" }}\n",
        reg.addr()
    ));
    (reg, mirror)
}

fn guarded(cmd: &mut Command) -> &mut Command {
    for (k, v) in GUARD {
        cmd.env(k, v);
    }
    cmd
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run client");
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn podman_pulls_through_a_registries_conf_mirror() {
    let Some(podman) = find("podman") else {
        common::skip("podman is not installed (Debian package podman; scripts/test installs it)");
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let (_reg, mirror) = rig(work.path());
    let conf = work.path().join("registries.conf");
    std::fs::write(
        &conf,
        format!(
            "unqualified-search-registries = []\n[[registry]]\nprefix = \"docker.io\"\nlocation = \"registry-1.docker.io\"\n[[registry.mirror]]\nlocation = \"127.0.0.1:{}/docker.io\"\ninsecure = true\n",
            mirror.port
        ),
    )
    .unwrap();
    let store = work.path().join("storage");
    run(guarded(
        Command::new(podman)
            .env("CONTAINERS_REGISTRIES_CONF", &conf)
            .args([
                "--root",
                &store.join("root").display().to_string(),
                "--runroot",
                &store.join("run").display().to_string(),
                "--storage-driver",
                "vfs",
                "--events-backend",
                "file",
                "pull",
                "docker.io/library/img:v1",
            ]),
    ));
    let log = mirror.log();
    assert!(
        log.contains("GET /v2/docker.io/library/img/manifests/v1: route docker by path prefix"),
        "{log}"
    );
}

/// containerd, on its own socket and directories.
struct Containerd {
    child: Child,
    socket: PathBuf,
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_containerd(bin: &Path, dir: &Path) -> Containerd {
    std::fs::create_dir_all(dir).unwrap();
    let socket = dir.join("containerd.sock");
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{1}\"\n",
            dir.display(),
            socket.display()
        ),
    )
    .unwrap();
    let child = Command::new(bin)
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("containerd.log")).unwrap())
        .spawn()
        .expect("start containerd");
    for _ in 0..200 {
        if socket.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    assert!(socket.exists(), "containerd did not start");
    Containerd { child, socket }
}

#[test]
fn ctr_pulls_through_hosts_toml() {
    let (Some(ctr), Some(containerd)) = (find("ctr"), find("containerd")) else {
        common::skip(
            "ctr/containerd are not installed (Debian package containerd; scripts/test installs it)",
        );
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let (_reg, mirror) = rig(work.path());
    let daemon = start_containerd(&containerd, &work.path().join("containerd"));
    let hosts = work.path().join("certs.d/docker.io");
    std::fs::create_dir_all(&hosts).unwrap();
    std::fs::write(
        hosts.join("hosts.toml"),
        format!(
            "server = \"https://registry-1.docker.io\"\n[host.\"http://127.0.0.1:{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            mirror.port
        ),
    )
    .unwrap();
    run(guarded(Command::new(ctr).args([
        "-a",
        &daemon.socket.display().to_string(),
        "images",
        "pull",
        "--hosts-dir",
        &work.path().join("certs.d").display().to_string(),
        "docker.io/library/img:v1",
    ])));
    let log = mirror.log();
    // Routing decisions are logged before each answer is sent.
    assert!(
        log.contains("/v2/library/img/manifests/v1: route docker by ?ns="),
        "{log}"
    );
    assert!(
        log.contains("/blobs/sha256:") && log.contains(": route docker by ?ns="),
        "{log}"
    );
}
