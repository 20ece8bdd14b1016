//! The operators' commands (`pullthrough prefetch`, `pullthrough cache ...`) run as a user
//! would: the binary, against a running mirror's admin listener.

use std::process::{Command, Output, Stdio};

use super::{Mirror, GUARD};

/// What skopeo (containers/image) accepts for a manifest: every type. A tag's pointer is
/// kept per set of accepted types, so tests that count upstream requests after a prefetch
/// ask as skopeo does.
pub const SKOPEO_ACCEPT: &[&str] = pullthrough::cache::key::MANIFEST_TYPES;

/// `http://<the mirror's admin.listen><path>`, from its config file.
pub fn admin_url(mirror: &Mirror, path: &str) -> String {
    let conf = std::fs::read_to_string(mirror.config_path()).expect("the mirror's config");
    let listen = conf
        .split("admin: { listen: \"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("admin.listen in the mirror's config");
    format!("http://{listen}{path}")
}

/// A mirror config's admin section on a free port, and that port.
pub fn admin_section() -> (String, u16) {
    let port = super::free_port();
    (format!("admin: {{ listen: \"127.0.0.1:{port}\" }}\n"), port)
}

/// Runs `pullthrough ARGS -c <mirror's config>` to completion (the command's own bound: the
/// mirror's read timeouts; every test pulls small images).
pub fn run(mirror: &Mirror, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pullthrough"));
    cmd.args(args)
        .arg("-c")
        .arg(mirror.config_path())
        .stdin(Stdio::null());
    for (k, v) in GUARD {
        cmd.env(k, v);
    }
    cmd.output().expect("run pullthrough")
}

/// Runs a command that must succeed; returns its standard output.
pub fn run_ok(mirror: &Mirror, args: &[&str]) -> String {
    let out = run(mirror, args);
    assert!(
        out.status.success(),
        "pullthrough {args:?} failed ({}):\n{}{}\nmirror log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        mirror.log()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Each line of `--json` output, parsed (a line that is not JSON fails the test).
pub fn json_lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

/// The cache entries `cache ls --json [GLOB]` lists.
pub fn entries(mirror: &Mirror, glob: Option<&str>) -> Vec<serde_json::Value> {
    let mut args = vec!["cache", "ls", "--json"];
    args.extend(glob);
    json_lines(&run_ok(mirror, &args))
}

/// Committed entries on disk: sidecar files under the mirror's cache directory.
pub fn sidecars_on_disk(mirror: &Mirror) -> usize {
    let objects = mirror.dir.path().join("cache/v1/objects");
    let Ok(shards) = std::fs::read_dir(objects) else {
        return 0;
    };
    shards
        .flatten()
        .flat_map(|s| std::fs::read_dir(s.path()).into_iter().flatten().flatten())
        .filter(|f| f.path().extension().is_some_and(|e| e == "meta"))
        .count()
}

/// `GET /v2/<repo>/manifests/<tag>` through the mirror as skopeo asks it, with `tok`.
pub async fn get_manifest(
    c: &reqwest::Client,
    mirror: &Mirror,
    repo: &str,
    tag: &str,
    tok: &str,
) -> reqwest::Response {
    c.get(mirror.url(&format!("/v2/{repo}/manifests/{tag}")))
        .header("accept", SKOPEO_ACCEPT.join(", "))
        .bearer_auth(tok)
        .send()
        .await
        .expect("manifest request")
}

/// A GET of `url` with `tok` in a task of its own (a download the upstream holds back);
/// its body once it completes.
pub fn spawn_get(
    c: &reqwest::Client,
    url: String,
    tok: &str,
) -> tokio::task::JoinHandle<bytes::Bytes> {
    let (c, tok) = (c.clone(), tok.to_owned());
    tokio::spawn(async move {
        let r = c.get(url).bearer_auth(tok).send().await.expect("request");
        r.bytes().await.expect("the whole body")
    })
}
