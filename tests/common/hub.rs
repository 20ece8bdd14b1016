//! A fake Docker Hub as strict as the real one, on loopback ports:
//! - registry: every `/v2/*` needs a Bearer token from the auth host, blob GETs answer 307 to
//!   the CDN host, manifests carry digests and rate-limit headers;
//! - auth: the token realm on another port, private repositories need Basic credentials;
//! - cdn: answers 307 to the storage host (with a presigned-looking query);
//! - storage: rejects any request carrying `Authorization` with 400
//!   `Missing x-amz-content-sha256`, as S3 and R2 do.
//!
//! Every request is recorded per host, so tests can count what reached the upstream.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::Engine;
use futures::StreamExt;

pub const REGISTRY: &str = "registry-1.docker.io";
pub const AUTH: &str = "auth.docker.io";
pub const CDN: &str = "production.cloudflare.docker.com";
pub const STORAGE: &str = "docker-images-prod.abc123.r2.cloudflarestorage.com";
pub const PRIVATE_REPO: &str = "acme/secret";
/// The manifest type `add_manifest` stores; asked for without it, a manifest is a 404.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const USER: &str = "alice";
pub const PASSWORD: &str = "s3cret-pa55";

/// One request a fake host saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub host: &'static str,
    pub method: String,
    pub path_and_query: String,
    pub authorization: Option<String>,
    pub user_agent: Option<String>,
}

/// How a 401 offers a Basic challenge before the Bearer one.
#[derive(Debug, Clone, Copy)]
pub enum BasicFirst {
    SameHeader,
    OwnHeader,
}

#[derive(Default)]
struct Inner {
    seen: Vec<Seen>,
    blobs: HashMap<String, Vec<u8>>,
    /// By (repository, tag or digest): digest, media type, body.
    manifests: HashMap<(String, String), (String, &'static str, Vec<u8>)>,
    ports: HashMap<&'static str, u16>,
    /// Where the four hosts listen (loopback unless `start_on` said otherwise).
    ip: Option<std::net::IpAddr>,
    /// The registry answers 503 to everything.
    down: bool,
    /// The token realm answers 503 to everything.
    auth_down: bool,
    /// Blobs redirected somewhere else than the CDN (a hostile or misconfigured upstream).
    redirects: HashMap<String, String>,
    /// A realm announced instead of the auth host's.
    realm: Option<String>,
    /// Wrong bytes served for a digest (a poisoned upstream).
    poisoned: HashMap<String, Vec<u8>>,
    /// Blobs that exist in one repository only (`add_blob_in`).
    only_in: HashMap<String, String>,
    /// 401s offer Basic before Bearer (`set_basic_first`).
    basic_first: Option<BasicFirst>,
    /// The registry takes requests and never answers (`set_hanging`).
    hanging: bool,
    /// Repositories made private besides `PRIVATE_REPO` (`set_private`).
    private: std::collections::HashSet<String>,
    /// Blobs whose second half waits for the gate to open.
    gated: HashMap<String, Arc<tokio::sync::Semaphore>>,
    /// Tokens issued so far: each token is new, as Docker Hub's JWTs are.
    tokens_issued: u64,
}

/// The fake hub; cheap to clone, shared by its four servers.
#[derive(Clone, Default)]
pub struct Hub {
    inner: Arc<Mutex<Inner>>,
}

/// A stored manifest: media type and body.
pub struct Manifest {
    pub digest: String,
    pub body: Vec<u8>,
}

impl Hub {
    /// Starts the four hosts on free loopback ports.
    pub async fn start() -> Hub {
        Self::start_on([127, 0, 0, 1].into()).await
    }

    /// Starts the four hosts on free ports of `ip` (an address of this machine).
    pub async fn start_on(ip: std::net::IpAddr) -> Hub {
        let hub = Hub::default();
        hub.lock().ip = Some(ip);
        for (name, app) in [
            (REGISTRY, Router::new().fallback(registry)),
            (AUTH, Router::new().fallback(auth)),
            (CDN, Router::new().fallback(cdn)),
            (STORAGE, Router::new().fallback(storage)),
        ] {
            let listener = tokio::net::TcpListener::bind((ip, 0)).await.expect("bind");
            let port = listener.local_addr().expect("addr").port();
            hub.lock().ports.insert(name, port);
            let app = app.with_state(hub.clone());
            tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
        }
        hub
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("hub lock")
    }

    /// Where the hosts listen.
    pub fn ip(&self) -> std::net::IpAddr {
        self.lock().ip.unwrap_or([127, 0, 0, 1].into())
    }

    pub fn port(&self, host: &str) -> u16 {
        self.lock().ports[host]
    }

    pub fn url(&self, host: &str) -> String {
        format!("http://{host}:{}", self.port(host))
    }

    /// Mirror config pointing the docker route at this hub (names pinned to loopback).
    pub fn mirror_config(&self) -> String {
        self.mirror_config_with_routes("")
    }

    /// The `resolve:` line pinning the hub's names to loopback.
    pub fn resolve_line(&self) -> String {
        let ip = self.ip();
        format!("resolve: {{ \"{REGISTRY}\": {ip}, \"{AUTH}\": {ip}, \"{CDN}\": {ip}, \"{STORAGE}\": {ip} }}\n")
    }

    /// As `mirror_config`, with more route lines (indented two spaces) under `routes:`.
    pub fn mirror_config_with_routes(&self, routes: &str) -> String {
        format!(
            "routes:\n  docker: {{ upstream: \"{}\" }}\n{routes}{}",
            self.url(REGISTRY),
            self.resolve_line()
        )
    }

    /// A blob that exists in `repo` only: asked for through any other repository, the
    /// registry answers 404 `BLOB_UNKNOWN`, as distribution does.
    pub fn add_blob_in(&self, repo: &str, data: Vec<u8>) -> String {
        let digest = self.add_blob(data);
        self.lock().only_in.insert(digest.clone(), repo.to_owned());
        digest
    }

    pub fn add_blob(&self, data: Vec<u8>) -> String {
        let digest = super::sha256(&data);
        self.lock().blobs.insert(digest.clone(), data);
        digest
    }

    /// Stores an OCI manifest for `repo:tag` (and by digest) referring to `blob`.
    pub fn add_manifest(&self, repo: &str, tag: &str, blob: &str) -> Manifest {
        let size = self.blob_size(blob);
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{blob}","size":{size}}},"layers":[]}}"#
        );
        self.add_manifest_typed(repo, tag, OCI_MANIFEST, body.into_bytes())
    }

    /// The length of a stored blob (0 when it is not stored: a manifest may name anything).
    fn blob_size(&self, digest: &str) -> usize {
        self.lock().blobs.get(digest).map_or(0, |b| b.len())
    }

    /// Stores an OCI image manifest for `repo:tag` (and by digest): config `blobs[0]`,
    /// layers the rest, sizes from the stored blobs.
    pub fn add_image(&self, repo: &str, tag: &str, blobs: &[String]) -> Manifest {
        let desc = |media: &str, digest: &String| {
            let size = self.blob_size(digest);
            format!(r#"{{"mediaType":"{media}","digest":"{digest}","size":{size}}}"#)
        };
        let config = desc("application/vnd.oci.image.config.v1+json", &blobs[0]);
        let layers: Vec<String> = blobs[1..]
            .iter()
            .map(|d| desc("application/vnd.oci.image.layer.v1.tar+gzip", d))
            .collect();
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{config},"layers":[{}]}}"#,
            layers.join(",")
        );
        self.add_manifest_typed(repo, tag, OCI_MANIFEST, body.into_bytes())
    }

    /// Stores a Docker v2 (schema 2) manifest for `repo:tag` referring to `blob`.
    pub fn add_docker_manifest(&self, repo: &str, tag: &str, blob: &str) -> Manifest {
        let size = self.blob_size(blob);
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"{blob}","size":{size}}},"layers":[]}}"#
        );
        self.add_manifest_typed(repo, tag, DOCKER_MANIFEST, body.into_bytes())
    }

    /// Stores an OCI index for `repo:tag` over one OCI manifest per platform (`os/arch`),
    /// each referring to its own blob; returns the index and the manifests in that order.
    pub fn add_index(
        &self,
        repo: &str,
        tag: &str,
        platforms: &[(&str, &str)],
    ) -> (Manifest, Vec<Manifest>) {
        let mut children = Vec::new();
        let mut entries = Vec::new();
        for (platform, blob) in platforms {
            let (os, arch) = platform.split_once('/').expect("os/arch");
            let child = self.add_manifest(repo, &format!("{tag}-{os}-{arch}"), blob);
            entries.push(format!(
                r#"{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":{},"platform":{{"os":"{os}","architecture":"{arch}"}}}}"#,
                child.digest,
                child.body.len()
            ));
            children.push(child);
        }
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{}]}}"#,
            entries.join(",")
        );
        (
            self.add_manifest_typed(repo, tag, OCI_INDEX, body.into_bytes()),
            children,
        )
    }

    fn add_manifest_typed(
        &self,
        repo: &str,
        tag: &str,
        media_type: &'static str,
        body: Vec<u8>,
    ) -> Manifest {
        let digest = super::sha256(&body);
        let mut inner = self.lock();
        for reference in [tag, &digest] {
            inner.manifests.insert(
                (repo.to_owned(), reference.to_owned()),
                (digest.clone(), media_type, body.clone()),
            );
        }
        Manifest { digest, body }
    }

    /// Makes the registry answer 503 (or recover).
    pub fn set_down(&self, down: bool) {
        self.lock().down = down;
    }

    /// Makes the registry's 401s offer a Basic challenge before the Bearer one: in the same
    /// header (`Basic realm="hub", Bearer ...`) or as a header of its own before it.
    pub fn set_basic_first(&self, style: Option<BasicFirst>) {
        self.lock().basic_first = style;
    }

    /// Makes the registry take requests and never answer them (or answer again).
    pub fn set_hanging(&self, hanging: bool) {
        self.lock().hanging = hanging;
    }

    /// Redirects the blob `digest` to `location` instead of the CDN.
    pub fn redirect_blob(&self, digest: &str, location: &str) {
        self.lock()
            .redirects
            .insert(digest.to_owned(), location.to_owned());
    }

    /// Announces `realm` in challenges instead of the auth host's.
    pub fn set_realm(&self, realm: &str) {
        self.lock().realm = Some(realm.to_owned());
    }

    /// Makes the token realm answer 503 (or recover).
    pub fn set_auth_down(&self, down: bool) {
        self.lock().auth_down = down;
    }

    /// Serves `wrong` where the blob `digest` should be.
    /// Makes `repo` readable only with the account's credentials (or anyone's again).
    pub fn set_private(&self, repo: &str, private: bool) {
        let mut inner = self.lock();
        if private {
            inner.private.insert(repo.to_owned());
        } else {
            inner.private.remove(repo);
        }
    }

    pub fn poison(&self, digest: &str, wrong: Vec<u8>) {
        self.lock().poisoned.insert(digest.to_owned(), wrong);
    }

    /// Storage sends the first half of `digest`, then waits until the returned gate gets a
    /// permit.
    pub fn gate(&self, digest: &str) -> Arc<tokio::sync::Semaphore> {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        self.lock().gated.insert(digest.to_owned(), gate.clone());
        gate
    }

    /// Requests a host saw with this method and a path containing `part`.
    pub fn count_method(&self, host: &str, method: &str, part: &str) -> usize {
        self.seen_by(host)
            .iter()
            .filter(|s| s.method == method && s.path_and_query.contains(part))
            .count()
    }

    /// Waits (bounded: 5 s) until the mirror's background anonymous probe for `repo` has
    /// been answered: the anonymous token request and the HEAD it then makes.
    pub async fn wait_for_probe(&self, repo: &str) {
        for _ in 0..250 {
            let token = self.seen_by(AUTH).iter().any(|s| {
                s.authorization.is_none() && s.path_and_query.contains(&repo.replace('/', "%2F"))
            });
            let head = self.count_method(REGISTRY, "HEAD", &format!("/v2/{repo}/")) > 0;
            if token && head {
                // Every upstream request of the probe is made; readers that arrive before its
                // answer lands await the same verdict instead of probing again.
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("the mirror never probed {repo} anonymously");
    }

    /// Requests a host saw whose path contains `part`.
    pub fn count_path(&self, host: &str, part: &str) -> usize {
        self.seen_by(host)
            .iter()
            .filter(|s| s.path_and_query.contains(part))
            .count()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.lock().seen.clone()
    }

    pub fn seen_by(&self, host: &str) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.host == host).collect()
    }

    pub fn count(&self, host: &str) -> usize {
        self.seen_by(host).len()
    }

    fn record(&self, host: &'static str, req: &Request) {
        let seen = Seen {
            host,
            method: req.method().to_string(),
            path_and_query: req
                .uri()
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default(),
            authorization: header(req.headers(), "authorization"),
            user_agent: header(req.headers(), "user-agent"),
        };
        self.lock().seen.push(seen);
    }
}

fn header(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

fn respond(status: StatusCode, headers: &[(&str, String)], body: impl Into<Body>) -> Response {
    let mut r = Response::builder().status(status);
    for (k, v) in headers {
        r = r.header(*k, v);
    }
    r.body(body.into()).expect("response")
}

fn registry_error(status: StatusCode, code: &str, extra: &[(&str, String)]) -> Response {
    let body = format!(r#"{{"errors":[{{"code":"{code}","message":"{code}"}}]}}"#);
    let mut headers = vec![("content-type", "application/json".to_owned())];
    headers.extend_from_slice(extra);
    respond(status, &headers, body)
}

/// The token grants: `Bearer tok:<repo>,<repo>#<serial>` (what the auth host issued).
fn granted(headers: &HeaderMap) -> Option<Vec<String>> {
    let auth = header(headers, "authorization")?;
    let token = auth.strip_prefix("Bearer tok:")?;
    let token = token.split_once('#').map_or(token, |(grants, _)| grants);
    Some(
        token
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    )
}

async fn registry(State(hub): State<Hub>, req: Request) -> Response {
    hub.record(REGISTRY, &req);
    if hub.lock().hanging {
        std::future::pending::<()>().await;
    }
    if hub.lock().down {
        return registry_error(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", &[]);
    }
    let path = req.uri().path().to_owned();
    let announced = hub.lock().realm.clone();
    let realm = announced.unwrap_or_else(|| format!("{}/token", hub.url(AUTH)));
    let basic_first = hub.lock().basic_first;
    let challenge = |scope: Option<&str>| {
        let mut c = format!(r#"Bearer realm="{realm}",service="registry.docker.io""#);
        if let Some(s) = scope {
            c.push_str(&format!(r#",scope="repository:{s}:pull""#));
        }
        let basic = r#"Basic realm="hub""#.to_owned();
        let headers = match basic_first {
            None => vec![("www-authenticate", c)],
            Some(BasicFirst::SameHeader) => vec![("www-authenticate", format!("{basic}, {c}"))],
            Some(BasicFirst::OwnHeader) => {
                vec![("www-authenticate", basic), ("www-authenticate", c)]
            }
        };
        registry_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", &headers)
    };
    // Storage-like paths on the registry host itself (a relative Location): no token needed.
    if let Some(hex) = path.strip_prefix("/direct/") {
        let data = hub.lock().blobs.get(&format!("sha256:{hex}")).cloned();
        return match data {
            Some(d) => respond(StatusCode::OK, &[], d),
            None => registry_error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN", &[]),
        };
    }
    let Some(grants) = granted(req.headers()) else {
        let repo = repo_of(&path);
        return challenge(repo.as_deref());
    };
    if path == "/v2/" {
        return respond(StatusCode::OK, &[], "{}");
    }
    // Test hooks that are not repositories: a redirect loop and a relative Location.
    if path == "/v2/library/loop/blobs/sha256:0000000000000000000000000000000000000000000000000000000000000000" {
        return respond(StatusCode::TEMPORARY_REDIRECT, &[("location", format!("{}/loop", hub.url(CDN)))], "");
    }
    let Some(repo) = repo_of(&path) else {
        return registry_error(StatusCode::NOT_FOUND, "NAME_UNKNOWN", &[]);
    };
    if !grants.contains(&repo) {
        return challenge(Some(&repo));
    }
    let reference = path.rsplit('/').next().unwrap_or_default().to_owned();
    if path.ends_with("/tags/list") {
        // One tag a page, the next page named the way distribution names it.
        let tags: Vec<String> = hub
            .lock()
            .manifests
            .keys()
            .filter(|(r, t)| *r == repo && !t.starts_with("sha256:"))
            .map(|(_, t)| t.clone())
            .collect();
        let first = tags.iter().min().cloned().unwrap_or_default();
        return respond(
            StatusCode::OK,
            &[
                ("content-type", "application/json".into()),
                (
                    "link",
                    format!("</v2/{repo}/tags/list?last={first}&n=1>; rel=\"next\""),
                ),
            ],
            format!(r#"{{"name":"{repo}","tags":["{first}"]}}"#),
        );
    }
    if path.contains("/manifests/") {
        // distribution 2.8: a manifest asked for without its type in Accept is unknown.
        let accepts = |media_type: &str| {
            req.headers()
                .get_all("accept")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| v.contains(media_type))
        };
        let found = hub
            .lock()
            .manifests
            .get(&(repo, reference))
            .cloned()
            .filter(|(_, media_type, _)| accepts(media_type));
        return match found {
            Some((digest, media_type, body)) => respond(
                StatusCode::OK,
                &[
                    ("content-type", media_type.into()),
                    ("docker-content-digest", digest),
                    ("ratelimit-limit", "100;w=21600".into()),
                    ("ratelimit-remaining", "99;w=21600".into()),
                ],
                body,
            ),
            None => registry_error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN", &[]),
        };
    }
    let hex = reference
        .strip_prefix("sha256:")
        .unwrap_or_default()
        .to_owned();
    let elsewhere = hub
        .lock()
        .only_in
        .get(&reference)
        .is_some_and(|only| *only != repo);
    if !hub.lock().blobs.contains_key(&reference) || elsewhere {
        return registry_error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN", &[]);
    }
    let redirected = hub.lock().redirects.get(&reference).cloned();
    if let Some(location) = redirected {
        return respond(
            StatusCode::TEMPORARY_REDIRECT,
            &[("location", location)],
            "",
        );
    }
    if req.uri().query() == Some("relative=1") {
        return respond(
            StatusCode::TEMPORARY_REDIRECT,
            &[("location", format!("/direct/{hex}"))],
            "",
        );
    }
    let location = format!(
        "{}/registry-v2/docker/registry/v2/blobs/sha256/{}/{hex}/data?verify=1",
        hub.url(CDN),
        &hex[..2]
    );
    respond(
        StatusCode::TEMPORARY_REDIRECT,
        &[("location", location)],
        "",
    )
}

/// `library/nginx` from `/v2/library/nginx/manifests/latest`.
fn repo_of(path: &str) -> Option<String> {
    let rest = path.strip_prefix("/v2/")?;
    let (name, _) = rest
        .rsplit_once("/manifests/")
        .or_else(|| rest.rsplit_once("/blobs/"))
        .or_else(|| rest.rsplit_once("/tags/"))?;
    Some(name.to_owned())
}

async fn auth(State(hub): State<Hub>, req: Request) -> Response {
    hub.record(AUTH, &req);
    if hub.lock().auth_down {
        return registry_error(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", &[]);
    }
    let query = req.uri().query().unwrap_or_default().to_owned();
    let basic = header(req.headers(), "authorization").and_then(|a| {
        let b64 = a.strip_prefix("Basic ")?.to_owned();
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64).ok()?).ok()
    });
    let authenticated = basic.as_deref() == Some(&format!("{USER}:{PASSWORD}"));
    if basic.is_some() && !authenticated {
        return registry_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", &[]);
    }
    let mut repos = Vec::new();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        if k != "scope" {
            continue;
        }
        for scope in v.split(' ') {
            let parts: Vec<&str> = scope.split(':').collect();
            if let [_, name, _] = parts.as_slice() {
                let private = *name == PRIVATE_REPO || hub.lock().private.contains(*name);
                if !private || authenticated {
                    repos.push(name.to_string());
                }
            }
        }
    }
    let serial = {
        let mut inner = hub.lock();
        inner.tokens_issued += 1;
        inner.tokens_issued
    };
    let token = format!("tok:{}#{serial}", repos.join(","));
    respond(
        StatusCode::OK,
        &[("content-type", "application/json".into())],
        format!(r#"{{"token":"{token}","access_token":"{token}","expires_in":300}}"#),
    )
}

async fn cdn(State(hub): State<Hub>, req: Request) -> Response {
    hub.record(CDN, &req);
    let path = req.uri().path().to_owned();
    if path == "/loop" {
        return respond(StatusCode::FOUND, &[("location", "/loop".into())], "");
    }
    let Some(hex) = path
        .strip_suffix("/data")
        .and_then(|p| p.rsplit('/').next())
    else {
        return respond(StatusCode::NOT_FOUND, &[], "");
    };
    let location = format!(
        "{}/{hex}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=abc",
        hub.url(STORAGE)
    );
    respond(
        StatusCode::TEMPORARY_REDIRECT,
        &[("location", location)],
        "",
    )
}

async fn storage(State(hub): State<Hub>, req: Request) -> Response {
    hub.record(STORAGE, &req);
    if req.headers().contains_key("authorization") {
        return respond(
            StatusCode::BAD_REQUEST,
            &[("content-type", "application/xml".into())],
            "<Error><Code>InvalidArgument</Code><Message>Missing x-amz-content-sha256</Message></Error>",
        );
    }
    let hex = req.uri().path().trim_start_matches('/').to_owned();
    let digest = format!("sha256:{hex}");
    let (data, gate) = {
        let inner = hub.lock();
        let data = inner
            .poisoned
            .get(&digest)
            .or_else(|| inner.blobs.get(&digest))
            .cloned();
        (data, inner.gated.get(&digest).cloned())
    };
    let Some(data) = data else {
        return respond(StatusCode::NOT_FOUND, &[], "").into_response();
    };
    let headers = [
        ("content-type", "application/octet-stream".to_owned()),
        ("content-length", data.len().to_string()),
    ];
    match gate {
        None => respond(StatusCode::OK, &headers, data),
        Some(gate) => {
            let data = bytes::Bytes::from(data);
            let half = data.len() / 2;
            let (first, second) = (data.slice(..half), data.slice(half..));
            let stream = futures::stream::once(async move { Ok::<_, std::io::Error>(first) })
                .chain(futures::stream::once(async move {
                    let _permit = gate.acquire().await;
                    Ok(second)
                }));
            respond(StatusCode::OK, &headers, Body::from_stream(stream))
        }
    }
}

/// The token the mirror's realm hands out for pulling `repo` (with `basic` credentials).
pub async fn pull_token(
    client: &reqwest::Client,
    mirror: &super::Mirror,
    repo: &str,
    basic: Option<(&str, &str)>,
) -> String {
    let scope = format!("repository:{repo}:pull");
    let r = token_via(client, &mirror.url("/v2/auth"), &scope, basic).await;
    let body: serde_json::Value = r.json().await.expect("token JSON");
    body["token"].as_str().expect("token").to_owned()
}

/// A mirror client's view: the token the mirror's realm hands out for `scope`.
pub async fn token_via(
    client: &reqwest::Client,
    realm: &str,
    scope: &str,
    basic: Option<(&str, &str)>,
) -> reqwest::Response {
    let mut req = client
        .get(realm)
        .query(&[("service", "registry.docker.io"), ("scope", scope)]);
    if let Some((u, p)) = basic {
        req = req.basic_auth(u, Some(p));
    }
    req.send().await.expect("token request")
}

/// What a hub token grants (`tok:<repo>,<repo>`), without its serial.
pub fn grants(token: &str) -> &str {
    token.split_once('#').map_or(token, |(grants, _)| grants)
}

pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A blob's digest and bytes.
pub type Blob = (String, Vec<u8>);

/// GETs each blob of `library/app` through `mirror` with `tok`: every answer 200 with the
/// blob's exact bytes (`node` names the mirror in a failure).
pub async fn pull_blobs(
    c: &reqwest::Client,
    mirror: &super::Mirror,
    tok: &str,
    blobs: &[Blob],
    node: &str,
) {
    for (digest, data) in blobs {
        let r = c
            .get(mirror.url(&format!("/v2/library/app/blobs/{digest}")))
            .bearer_auth(tok)
            .send()
            .await
            .unwrap();
        let status = r.status();
        assert_eq!(status, 200, "{node}, {digest}:\n{}", mirror.log());
        let body = r.bytes().await.unwrap();
        assert!(body == *data, "{node} served wrong bytes for {digest}");
    }
}

/// Asserts the registry was asked for each blob exactly once.
pub fn fetched_once(hub: &Hub, blobs: &[Blob]) {
    for (digest, _) in blobs {
        let gets = hub.count_method(REGISTRY, "GET", &format!("/blobs/{digest}"));
        assert_eq!(gets, 1, "{digest} fetched {gets} times");
    }
}
