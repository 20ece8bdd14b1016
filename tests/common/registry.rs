//! Real parts for end-to-end tests: Debian's `docker-registry` (distribution 2.8) on loopback,
//! optionally behind a token server that signs real JWTs, images written as OCI layouts and
//! pushed and pulled with `skopeo`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use base64::Engine;

use super::{free_port, require_program, sha256, GUARD};

/// A `docker-registry` process with filesystem storage in its own directory.
pub struct Registry {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Child,
}

/// Token auth settings for a registry: its realm and the certificate that signs tokens.
pub struct TokenAuth {
    pub realm: String,
    pub service: String,
    pub issuer: String,
    pub root_cert_pem: String,
}

impl Registry {
    pub fn start(auth: Option<&TokenAuth>) -> Registry {
        let bin = require_program("docker-registry", "docker-registry");
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let mut config = format!(
            "version: 0.1\nlog: {{ level: info, formatter: text }}\nstorage: {{ filesystem: {{ rootdirectory: {} }} }}\nhttp: {{ addr: 127.0.0.1:{port} }}\n",
            dir.path().join("data").display()
        );
        if let Some(a) = auth {
            let bundle = dir.path().join("token-root.pem");
            std::fs::write(&bundle, &a.root_cert_pem).expect("write cert");
            config.push_str(&format!(
                "auth: {{ token: {{ realm: \"{}\", service: {}, issuer: {}, rootcertbundle: {} }} }}\n",
                a.realm,
                a.service,
                a.issuer,
                bundle.display()
            ));
        }
        let conf = dir.path().join("config.yml");
        std::fs::write(&conf, config).expect("write registry config");
        let child = Command::new(bin)
            .arg("serve")
            .arg(&conf)
            // The machine's AWS_CA_BUNDLE breaks distribution's start (DESIGN.md section 5).
            .env_remove("AWS_CA_BUNDLE")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("registry.log")).expect("log"))
            .spawn()
            .expect("start docker-registry");
        let reg = Registry { port, dir, child };
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return reg;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("docker-registry did not listen on {port}");
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stops the registry: its port then refuses connections.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// How many completed requests distribution logged with this method and a URI containing
    /// `part` (its access lines: `http.request.method=GET ... http.request.uri=...`).
    pub fn requests(&self, method: &str, part: &str) -> usize {
        let log = std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default();
        log.lines()
            .filter(|l| l.contains("response completed"))
            .filter(|l| l.contains(&format!("http.request.method={method} ")))
            .filter(|l| {
                l.split("http.request.uri=")
                    .nth(1)
                    .is_some_and(|u| u.split(' ').next().unwrap_or("").contains(part))
            })
            .count()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs skopeo with the proxy guard; panics with its output when it fails.
pub fn skopeo(args: &[&str]) -> Output {
    let bin = require_program("skopeo", "skopeo");
    let mut cmd = Command::new(bin);
    cmd.args(["--command-timeout", "300s"]).args(args);
    for (k, v) in GUARD {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run skopeo");
    assert!(
        out.status.success(),
        "skopeo {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A deterministic pseudo-random byte stream (xorshift), so layers do not compress.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// An OCI image layout on disk: `v1` (amd64, the given layer sizes) and `multi` (an index of
/// an amd64 and an arm64 image).
pub struct Layout {
    pub dir: PathBuf,
}

struct Desc {
    media_type: &'static str,
    digest: String,
    size: usize,
}

impl Layout {
    pub fn write(dir: &Path, layer_sizes: &[usize]) -> Layout {
        std::fs::create_dir_all(dir.join("blobs/sha256")).expect("mkdir");
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).expect("write");
        let layout = Layout {
            dir: dir.to_owned(),
        };
        let amd64 = layout.image("amd64", layer_sizes, 1);
        let arm64 = layout.image("arm64", &[4096], 1000);
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {"mediaType": amd64.media_type, "digest": amd64.digest, "size": amd64.size, "platform": {"architecture": "amd64", "os": "linux"}},
                {"mediaType": arm64.media_type, "digest": arm64.digest, "size": arm64.size, "platform": {"architecture": "arm64", "os": "linux"}},
            ]
        });
        let index = layout.blob(
            serde_json::to_vec(&index).expect("json"),
            "application/vnd.oci.image.index.v1+json",
        );
        let top = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [
                {"mediaType": amd64.media_type, "digest": amd64.digest, "size": amd64.size, "annotations": {"org.opencontainers.image.ref.name": "v1"}},
                {"mediaType": index.media_type, "digest": index.digest, "size": index.size, "annotations": {"org.opencontainers.image.ref.name": "multi"}},
            ]
        });
        std::fs::write(
            dir.join("index.json"),
            serde_json::to_vec(&top).expect("json"),
        )
        .expect("write");
        layout
    }

    fn blob(&self, data: Vec<u8>, media_type: &'static str) -> Desc {
        let digest = sha256(&data);
        let path = self.dir.join("blobs/sha256").join(&digest[7..]);
        std::fs::write(path, &data).expect("write blob");
        Desc {
            media_type,
            digest,
            size: data.len(),
        }
    }

    fn image(&self, arch: &str, layer_sizes: &[usize], seed: u64) -> Desc {
        let mut layers = Vec::new();
        let mut diff_ids = Vec::new();
        for (i, size) in layer_sizes.iter().enumerate() {
            let mut tar = tar::Builder::new(Vec::new());
            let data = noise(*size, seed + i as u64);
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            tar.append_data(&mut header, format!("layer{i}.bin"), data.as_slice())
                .expect("tar");
            let tar = tar.into_inner().expect("tar");
            diff_ids.push(sha256(&tar));
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::none());
            gz.write_all(&tar).expect("gzip");
            layers.push(self.blob(
                gz.finish().expect("gzip"),
                "application/vnd.oci.image.layer.v1.tar+gzip",
            ));
        }
        let config = serde_json::json!({
            "architecture": arch, "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "config": {}
        });
        let config = self.blob(
            serde_json::to_vec(&config).expect("json"),
            "application/vnd.oci.image.config.v1+json",
        );
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": config.media_type, "digest": config.digest, "size": config.size},
            "layers": layers.iter().map(|l| serde_json::json!({"mediaType": l.media_type, "digest": l.digest, "size": l.size})).collect::<Vec<_>>(),
        });
        self.blob(
            serde_json::to_vec(&manifest).expect("json"),
            "application/vnd.oci.image.manifest.v1+json",
        )
    }

    /// Pushes `v1` and `multi` to `registry/repo`.
    pub fn push(&self, registry: &str, repo: &str, creds: Option<&str>) {
        let src = |tag: &str| format!("oci:{}:{tag}", self.dir.display());
        for tag in ["v1", "multi"] {
            let dest = format!("docker://{registry}/{repo}:{tag}");
            let mut args = vec!["copy", "--all", "--dest-tls-verify=false"];
            if let Some(c) = creds {
                args.extend(["--dest-creds", c]);
            }
            let s = src(tag);
            args.extend([s.as_str(), dest.as_str()]);
            skopeo(&args);
        }
    }
}

/// Everything a `skopeo copy ... dir:OUT` produced, as (file name, sha256) pairs, sorted.
pub fn pulled(registry: &str, image: &str, all: bool, out: &Path) -> Vec<(String, String)> {
    let src = format!("docker://{registry}/{image}");
    let dest = format!("dir:{}", out.display());
    let mut args = vec!["copy", "--src-tls-verify=false"];
    if all {
        args.push("--all");
    }
    args.extend([src.as_str(), dest.as_str()]);
    skopeo(&args);
    let mut files: Vec<(String, String)> = std::fs::read_dir(out)
        .expect("read pulled dir")
        .map(|e| {
            let e = e.expect("entry");
            let data = std::fs::read(e.path()).expect("read");
            (e.file_name().to_string_lossy().into_owned(), sha256(&data))
        })
        .collect();
    files.sort();
    files
}

/// A token server for `docker-registry`'s token auth: ES256 JWTs with the signing
/// certificate in `x5c`, granting every requested action; Basic credentials, when sent, must
/// be `user:pass`. Counts requests.
pub struct TokenServer {
    pub auth: TokenAuth,
    pub requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    server: tokio::task::JoinHandle<()>,
    /// Cleared by `stop`: connections still open (pooled by a client) get 503.
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl TokenServer {
    /// Stops serving: its port then refuses connections.
    pub fn stop(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        self.server.abort();
    }

    pub async fn start() -> TokenServer {
        use axum::extract::{Query, State};
        use axum::http::{HeaderMap, StatusCode};
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;

        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["token-issuer".into()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let x5c = base64::engine::general_purpose::STANDARD.encode(cert.der());
        let encoding =
            jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).expect("ec key");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        let requests = Arc::new(AtomicUsize::new(0));

        #[derive(Clone)]
        struct St {
            encoding: jsonwebtoken::EncodingKey,
            x5c: String,
            requests: Arc<AtomicUsize>,
            up: Arc<std::sync::atomic::AtomicBool>,
        }
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let state = St {
            encoding,
            x5c,
            requests: requests.clone(),
            up: up.clone(),
        };
        async fn token(
            State(st): State<St>,
            headers: HeaderMap,
            Query(params): Query<Vec<(String, String)>>,
        ) -> Result<axum::Json<serde_json::Value>, StatusCode> {
            st.requests.fetch_add(1, Ordering::SeqCst);
            if !st.up.load(Ordering::SeqCst) {
                return Err(StatusCode::SERVICE_UNAVAILABLE);
            }
            if let Some(auth) = headers.get("authorization").and_then(|v| v.to_str().ok()) {
                let b64 = auth
                    .strip_prefix("Basic ")
                    .ok_or(StatusCode::UNAUTHORIZED)?;
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|_| StatusCode::UNAUTHORIZED)?;
                if decoded != b"user:pass" {
                    return Err(StatusCode::UNAUTHORIZED);
                }
            }
            let access: Vec<serde_json::Value> = params
                .iter()
                .filter(|(k, _)| k == "scope")
                .flat_map(|(_, v)| v.split(' ').map(str::to_owned).collect::<Vec<_>>())
                .filter_map(|s| {
                    let (kind, rest) = s.split_once(':')?;
                    let (name, actions) = rest.rsplit_once(':')?;
                    Some(serde_json::json!({"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
                })
                .collect();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_secs();
            let claims = serde_json::json!({
                "iss": "test-issuer", "sub": "user", "aud": "test-registry",
                "exp": now + 300, "nbf": now - 10, "iat": now, "jti": format!("{now}-{}", st.requests.load(Ordering::SeqCst)),
                "access": access,
            });
            let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
            header.x5c = Some(vec![st.x5c.clone()]);
            let jwt = jsonwebtoken::encode(&header, &claims, &st.encoding)
                .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
            Ok(axum::Json(
                serde_json::json!({"token": jwt, "access_token": jwt, "expires_in": 300}),
            ))
        }
        let app = axum::Router::new()
            .route("/token", axum::routing::get(token))
            .with_state(state);
        let server = tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
        TokenServer {
            server,
            up,
            auth: TokenAuth {
                realm: format!("http://{addr}/token"),
                service: "test-registry".into(),
                issuer: "test-issuer".into(),
                root_cert_pem: cert.pem(),
            },
            requests,
        }
    }
}
