//! Prefetch: the daemon warms its cache with whole images by pulling them through its own
//! public listener, exactly as a client would (routing, token relay, verification and cluster
//! ownership all apply). `POST /prefetch` streams its events as NDJSON to
//! `pullthrough prefetch`; `prefetch:` in the config runs it at start and on a schedule.
//!
//! Per image: the manifest (by tag or digest), an index's platform manifests (all, or those
//! `platforms` names), then every blob, `concurrency` at a time. Each object is reported
//! `queued`, then `cached` (the mirror answered from its cache, and the transfer is cut) or
//! `fetching` (with bytes so far) and `done`, or `failed` with the reason.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use http::header;
use log::{debug, info, warn};
use pingora::cache::key::CacheHashKey;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::cache::key::MANIFEST_ACCEPT;
use crate::metrics::METRICS;
use crate::proxy::Shared;
use crate::registry::image::{ImageRef, Platform};
use crate::registry::manifest::{Descriptor, ManifestRefs, MANIFEST_MAX_BYTES};
use crate::registry::Challenge;

/// What `POST /prefetch` takes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefetchRequest {
    pub images: Vec<String>,
    #[serde(default)]
    pub platforms: Vec<String>,
    /// Blobs fetched at once (default `DEFAULT_CONCURRENCY`, at most `MAX_CONCURRENCY`).
    pub concurrency: Option<usize>,
}

pub const DEFAULT_CONCURRENCY: usize = 4;
pub const MAX_CONCURRENCY: usize = 64;
/// Most images one request may name.
pub const MAX_IMAGES: usize = 10_000;

/// What an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Image,
    Index,
    Manifest,
    Blob,
}

/// Where an object or image stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Queued,
    Cached,
    Fetching,
    Done,
    Failed,
}

/// One line of the NDJSON stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    /// The image as asked for.
    pub image: String,
    pub kind: Kind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    pub state: State,
    /// Bytes received so far (for an image: body bytes brought from upstream).
    #[serde(default)]
    pub bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Progress lines for one blob come at most this often.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// A request to the mirror that has not answered (or sent a body chunk) in this long fails.
const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// Pulls images through the mirror's own listener.
pub struct Prefetcher {
    client: reqwest::Client,
    /// `http://ip:port` of the listener pulled through.
    base: String,
    shared: Arc<Shared>,
}

/// Why one image failed, as the operator reads it.
type Failure = String;

/// Where a manifest or blob answer came from.
struct Fetched {
    cached: bool,
    bytes: u64,
}

impl Prefetcher {
    /// A prefetcher pulling through `listener` (an unspecified address means loopback).
    pub fn new(listener: SocketAddr, shared: Arc<Shared>) -> Prefetcher {
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .read_timeout(READ_TIMEOUT)
            .user_agent(concat!("pullthrough-prefetch/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("a plain HTTP client always builds");
        Prefetcher {
            client,
            base: format!("http://{}", super::reachable(listener)),
            shared,
        }
    }

    /// Runs a request, sending every event to `events` (a receiver that went away stops
    /// nothing: the warming goes on). Returns how many images failed.
    pub async fn run(&self, request: &PrefetchRequest, events: &mpsc::Sender<Event>) -> usize {
        let platforms: Result<Vec<Platform>, _> =
            request.platforms.iter().map(|p| p.parse()).collect();
        let concurrency = request
            .concurrency
            .unwrap_or(DEFAULT_CONCURRENCY)
            .clamp(1, MAX_CONCURRENCY);
        let mut failed = 0;
        for image in &request.images {
            let outcome = match &platforms {
                Ok(platforms) => self.warm(image, platforms, concurrency, events).await,
                Err(e) => Err(e.to_string()),
            };
            let (state, bytes, error, metric) = match outcome {
                Ok((true, bytes)) => (State::Done, bytes, None, "fetched"),
                Ok((false, _)) => (State::Cached, 0, None, "cached"),
                Err(why) => {
                    failed += 1;
                    warn!("prefetch {image}: {why}");
                    (State::Failed, 0, Some(why), "failed")
                }
            };
            METRICS.prefetch_images.with_label_values(&[metric]).inc();
            emit(events, image, Kind::Image, None, None, state, bytes, error).await;
        }
        failed
    }

    /// Warms one image; returns whether anything came from upstream, and how many bytes.
    async fn warm(
        &self,
        text: &str,
        platforms: &[Platform],
        concurrency: usize,
        events: &mpsc::Sender<Event>,
    ) -> Result<(bool, u64), Failure> {
        let image = ImageRef::parse(text, |r| self.shared.routes.by_registry(r).is_some())
            .map_err(|e| format!("invalid image reference: {e}"))?;
        if self.shared.routes.by_registry(&image.registry).is_none() {
            let known: Vec<&str> = self
                .shared
                .routes
                .routes()
                .iter()
                .map(|r| r.registry.as_str())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            return Err(format!(
                "unknown registry {:?} (this mirror has: {})",
                image.registry,
                known.join(", ")
            ));
        }
        emit(
            events,
            text,
            Kind::Image,
            None,
            None,
            State::Queued,
            0,
            None,
        )
        .await;
        let session = Pull {
            prefetcher: self,
            image: &image,
            text,
            events,
            token: tokio::sync::RwLock::new(None),
        };
        let (top, body) = session.manifest(&image.reference.to_string()).await?;
        let mut fetched = !top.cached;
        let mut blobs: Vec<Descriptor> = Vec::new();
        match ManifestRefs::parse(&body).map_err(|e| format!("{}: {e}", image))? {
            ManifestRefs::Image(list) => blobs = list,
            ManifestRefs::Index(children) => {
                let chosen: Vec<Descriptor> = children
                    .into_iter()
                    .filter(|c| c.is_for(platforms))
                    .collect();
                if chosen.is_empty() {
                    let names: Vec<String> = platforms.iter().map(|p| p.to_string()).collect();
                    return Err(format!("{image}: no manifest for {}", names.join(", ")));
                }
                for child in chosen {
                    let (answer, body) = session.manifest(&child.digest.to_string()).await?;
                    fetched |= !answer.cached;
                    match ManifestRefs::parse(&body)
                        .map_err(|e| format!("{}: {e}", child.digest))?
                    {
                        ManifestRefs::Image(list) => {
                            for blob in list {
                                if !blobs.iter().any(|b| b.digest == blob.digest) {
                                    blobs.push(blob);
                                }
                            }
                        }
                        // Nested indexes are not something registries serve for pulls.
                        ManifestRefs::Index(_) => {
                            return Err(format!("{}: an index inside an index", child.digest))
                        }
                    }
                }
            }
        }
        for blob in &blobs {
            session.emit(Kind::Blob, blob, State::Queued, 0, None).await;
        }
        let session = &session;
        let results: Vec<Result<Fetched, Failure>> = futures::stream::iter(blobs)
            .map(|blob| async move { session.blob(&blob).await })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        let mut bytes = 0;
        for result in results {
            let answer = result?;
            fetched |= !answer.cached;
            if !answer.cached {
                bytes += answer.bytes;
            }
        }
        METRICS.prefetch_bytes.inc_by(bytes);
        Ok((fetched, bytes))
    }
}

/// One image's pull: its events and the token the mirror's realm gave for it.
struct Pull<'a> {
    prefetcher: &'a Prefetcher,
    image: &'a ImageRef,
    text: &'a str,
    events: &'a mpsc::Sender<Event>,
    token: tokio::sync::RwLock<Option<String>>,
}

impl Pull<'_> {
    fn url(&self, kind: &str, reference: &str) -> String {
        format!(
            "{}/v2/{}/{kind}/{reference}?ns={}",
            self.prefetcher.base, self.image.repository, self.image.registry
        )
    }

    async fn emit(
        &self,
        kind: Kind,
        d: &Descriptor,
        state: State,
        bytes: u64,
        error: Option<String>,
    ) {
        emit(
            self.events,
            self.text,
            kind,
            Some(d.digest.to_string()),
            d.size,
            state,
            bytes,
            error,
        )
        .await;
    }

    /// `GET url`, answering the mirror's challenge once with a token from its realm.
    async fn get(
        &self,
        url: &str,
        accept: Option<&http::HeaderValue>,
    ) -> Result<reqwest::Response, Failure> {
        let send = |token: Option<String>| {
            let mut request = self.prefetcher.client.get(url);
            if let Some(accept) = accept {
                request = request.header(header::ACCEPT, accept.clone());
            }
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            request.send()
        };
        let unreachable = |e: reqwest::Error| format!("the mirror did not answer: {e}");
        let token = self.token.read().await.clone();
        let response = send(token.clone()).await.map_err(unreachable)?;
        if response.status() != reqwest::StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        let Some(challenge) = Challenge::from_headers(response.headers()) else {
            return Ok(response);
        };
        let fresh = self.fetch_token(&challenge).await?;
        *self.token.write().await = Some(fresh.clone());
        send(Some(fresh)).await.map_err(unreachable)
    }

    /// A token from the realm the mirror named (its own `/v2/auth`, which relays to the
    /// upstream's token service).
    async fn fetch_token(&self, challenge: &Challenge) -> Result<String, Failure> {
        let realm = challenge
            .realm()
            .filter(|_| challenge.is_bearer())
            .ok_or_else(|| "the registry asks for credentials the mirror has not got".to_owned())?;
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(service) = challenge.service() {
            query.push(("service", service.to_owned()));
        }
        let scope = challenge
            .scope()
            .map(str::to_owned)
            .unwrap_or_else(|| format!("repository:{}:pull", self.image.repository));
        query.push(("scope", scope));
        // The mirror's own realm routes like every request here: by `?ns=`.
        if realm.starts_with(&self.prefetcher.base) {
            query.push(("ns", self.image.registry.clone()));
        }
        let response = self
            .prefetcher
            .client
            .get(realm)
            .query(&query)
            .send()
            .await
            .map_err(|e| format!("token service did not answer: {e}"))?;
        if !response.status().is_success() {
            return Err(format!(
                "token refused ({}): the credential is refused or the repository is private",
                response.status()
            ));
        }
        #[derive(Deserialize)]
        struct TokenBody {
            token: Option<String>,
            access_token: Option<String>,
        }
        let body: TokenBody = response
            .json()
            .await
            .map_err(|e| format!("unreadable token answer: {e}"))?;
        body.token
            .or(body.access_token)
            .ok_or_else(|| "the token answer holds no token".to_owned())
    }

    /// Fetches a manifest by tag or digest and reports it; returns it with its body.
    async fn manifest(&self, reference: &str) -> Result<(Fetched, Vec<u8>), Failure> {
        let response = self
            .get(&self.url("manifests", reference), Some(&MANIFEST_ACCEPT))
            .await?;
        let status = response.status();
        let name = format!(
            "{}/{}{}{reference}",
            self.image.registry,
            self.image.repository,
            if reference.contains(':') { "@" } else { ":" }
        );
        if !status.is_success() {
            return Err(explain_status(&name, status, response).await);
        }
        let cached = is_cached(&response);
        let digest = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let kind = match response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
        {
            Some(t) if t.contains("index") || t.contains("manifest.list") => Kind::Index,
            _ => Kind::Manifest,
        };
        let mut body = Vec::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| format!("{name}: transfer cut: {e}"))?;
            if body.len() + chunk.len() > MANIFEST_MAX_BYTES {
                return Err(format!("{name}: manifest over {MANIFEST_MAX_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        let state = if cached { State::Cached } else { State::Done };
        emit(
            self.events,
            self.text,
            kind,
            digest,
            Some(body.len() as u64),
            state,
            body.len() as u64,
            None,
        )
        .await;
        debug!("prefetch {}: {name} {state:?}", self.text);
        Ok((
            Fetched {
                cached,
                bytes: body.len() as u64,
            },
            body,
        ))
    }

    /// Fetches a blob through the mirror, reading (and dropping) its body so the mirror's
    /// fill completes; a cached blob is reported and its transfer cut.
    async fn blob(&self, blob: &Descriptor) -> Result<Fetched, Failure> {
        let digest = blob.digest.to_string();
        let result = self.fetch_blob(blob, &digest).await;
        match &result {
            Ok(f) if f.cached => self.emit(Kind::Blob, blob, State::Cached, 0, None).await,
            Ok(f) => {
                self.emit(Kind::Blob, blob, State::Done, f.bytes, None)
                    .await
            }
            Err(why) => {
                self.emit(Kind::Blob, blob, State::Failed, 0, Some(why.clone()))
                    .await
            }
        }
        result
    }

    async fn fetch_blob(&self, blob: &Descriptor, digest: &str) -> Result<Fetched, Failure> {
        // Kept here already: nothing to transfer. (Held by a cluster owner instead, it is
        // read through the owner and reported cached from the answer.)
        if self.held_here(digest).await {
            return Ok(Fetched {
                cached: true,
                bytes: 0,
            });
        }
        let response = self.get(&self.url("blobs", digest), None).await?;
        let status = response.status();
        if status.is_redirection() {
            return Err(format!(
                "blob {digest}: the registry hands it to clients by redirect ({status}), so the \
                 mirror does not keep it (see redirects.to_client)"
            ));
        }
        if !status.is_success() {
            return Err(explain_status(&format!("blob {digest}"), status, response).await);
        }
        let cached = is_cached(&response);
        let mut bytes = 0u64;
        let mut last = Instant::now();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk
                .map_err(|e| format!("blob {digest}: transfer cut after {bytes} bytes: {e}"))?;
            bytes += chunk.len() as u64;
            if !cached && last.elapsed() >= PROGRESS_EVERY {
                last = Instant::now();
                self.emit(Kind::Blob, blob, State::Fetching, bytes, None)
                    .await;
            }
        }
        if blob.size.is_some_and(|size| size != bytes) {
            return Err(format!(
                "blob {digest}: {bytes} bytes received, the manifest says {}",
                blob.size.unwrap_or_default()
            ));
        }
        Ok(Fetched { cached, bytes })
    }

    /// Whether this node's cache has the blob committed.
    async fn held_here(&self, digest: &str) -> bool {
        let shared = &self.prefetcher.shared;
        let Some(route) = shared.routes.by_registry(&self.image.registry) else {
            return false;
        };
        let path = format!("/v2/{}/blobs/{digest}", self.image.repository);
        let Some(key) = path
            .parse()
            .ok()
            .and_then(|p| crate::cache::key::cache_key(route, &p, &[]))
        else {
            return false;
        };
        shared.cache.storage.holds(key.combined_bin()).await
    }
}

/// Whether the mirror answered from its cache.
fn is_cached(response: &reqwest::Response) -> bool {
    response
        .headers()
        .get("x-cache-status")
        .is_some_and(|v| matches!(v.as_bytes(), b"hit" | b"stale" | b"revalidated"))
}

/// An operator's reason for a refused request: the status, and the registry error's message.
async fn explain_status(
    what: &str,
    status: reqwest::StatusCode,
    response: reqwest::Response,
) -> Failure {
    let body = response.text().await.unwrap_or_default();
    let detail = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| {
            let e = v.get("errors")?.get(0)?;
            Some(format!(
                "{}: {}",
                e.get("code")?.as_str()?,
                e.get("message").and_then(|m| m.as_str()).unwrap_or("")
            ))
        });
    let why = match status.as_u16() {
        404 => "not found",
        401 | 403 => "credential refused or repository private",
        429 => "rate limited",
        _ => "refused",
    };
    match detail {
        Some(d) => format!("{what}: {why} ({status}, {d})"),
        None => format!("{what}: {why} ({status})"),
    }
}

#[allow(clippy::too_many_arguments)]
async fn emit(
    events: &mpsc::Sender<Event>,
    image: &str,
    kind: Kind,
    digest: Option<String>,
    size: Option<u64>,
    state: State,
    bytes: u64,
    error: Option<String>,
) {
    let event = Event {
        image: image.to_owned(),
        kind,
        digest,
        size,
        state,
        bytes,
        error,
    };
    // A listener that went away (the command was interrupted) stops nothing.
    let _ = events.send(event).await;
}

/// `prefetch:` in the config: images warmed at start and every `every`.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub request: PrefetchRequest,
    pub every: Option<Duration>,
}

/// The scheduled warming, a background service: never in the way of start-up or serving.
pub struct Warmer {
    pub prefetcher: Prefetcher,
    pub schedule: Schedule,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for Warmer {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        loop {
            let run = self.run_once();
            tokio::select! {
                _ = run => {}
                _ = shutdown.changed() => return,
            }
            let Some(every) = self.schedule.every else {
                return;
            };
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

impl Warmer {
    async fn run_once(&self) {
        // The listeners open beside this service: wait (bounded) until they take requests.
        let addr = self
            .prefetcher
            .base
            .trim_start_matches("http://")
            .to_owned();
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(&addr).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let images = self.schedule.request.images.len();
        info!("prefetch: warming {images} configured images");
        let (tx, mut rx) = mpsc::channel::<Event>(256);
        let log = async {
            while let Some(event) = rx.recv().await {
                if event.kind == Kind::Image && matches!(event.state, State::Done | State::Cached) {
                    info!(
                        "prefetch {}: {:?} ({} bytes fetched)",
                        event.image, event.state, event.bytes
                    );
                }
            }
        };
        let work = async {
            let failed = self.prefetcher.run(&self.schedule.request, &tx).await;
            drop(tx);
            failed
        };
        let (failed, ()) = tokio::join!(work, log);
        let outcome = if failed == 0 { "ok" } else { "failed" };
        METRICS.prefetch_runs.with_label_values(&[outcome]).inc();
        info!(
            "prefetch: {} of {images} configured images warmed",
            images - failed
        );
    }
}
