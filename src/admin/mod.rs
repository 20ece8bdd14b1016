//! The admin listener (`admin.listen`): the status page at `/`, Prometheus `/metrics`,
//! `/healthz`, `/stats` as JSON, and the operators' API: `POST /prefetch` (NDJSON events),
//! `GET /cache/entries` (NDJSON), `GET /cache/usage`, `POST /cache/purge`. Kept off the
//! public listeners so scrapes, health checks and operators never mix with pulls.

mod operations;
pub mod prefetch;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use http::Response;
use log::{debug, warn};
use pingora::apps::http_app::ServeHttp;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use pingora_prometheus::PrometheusHttpApp;

use crate::metrics::METRICS;
use crate::placement::Seats;
use crate::proxy::Shared;
use prefetch::Prefetcher;

/// The status page: one self-contained document (no external assets) whose script polls
/// `/stats` and renders it.
const STATUS_PAGE: &str = include_str!("status.html");

/// Serves the admin endpoints.
pub struct AdminApp {
    shared: Arc<Shared>,
    started: Instant,
    /// Pulls through the first plain listener; `None` when there is none.
    prefetcher: Option<Arc<Prefetcher>>,
    /// The proxy's threads and the connections each serves.
    seats: Arc<Seats>,
}

impl AdminApp {
    pub fn new(
        shared: Arc<Shared>,
        prefetcher: Option<Arc<Prefetcher>>,
        seats: Arc<Seats>,
    ) -> AdminApp {
        AdminApp {
            shared,
            started: Instant::now(),
            prefetcher,
            seats,
        }
    }

    fn stats(&self) -> serde_json::Value {
        use pingora::cache::eviction::EvictionManager;
        let cache = &self.shared.cache;
        let s = &cache.storage.stats;
        let bytes = |source: &str| METRICS.bytes_served.with_label_values(&[source]).get();
        serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "pid": std::process::id(),
            "uptime_seconds": self.started.elapsed().as_secs(),
            "draining": self.shared.draining.load(Ordering::Acquire),
            "connections": {
                "open": METRICS.connections_open.get(),
                "by_thread": self.seats.loads(),
            },
            "bytes_served": {
                "cache": bytes("cache"),
                "upstream": bytes("upstream"),
                "peer": bytes("peer"),
            },
            "traffic": METRICS.traffic_by_route(),
            "activity": self.activity(),
            "cache": {
                "size_bytes": cache.eviction.total_size(),
                "max_size_bytes": cache.max_size,
                "items": cache.eviction.total_items(),
                "evicted_items": cache.eviction.evicted_items(),
                "fills_in_flight": s.fills_in_flight.load(Ordering::Relaxed),
                "fills": cache.storage.fills_in_progress(),
                "scan": {
                    "state": cache.scan.state(),
                    "scanned": cache.scan.scanned.load(Ordering::Relaxed),
                    "admitted": cache.scan.admitted.load(Ordering::Relaxed),
                },
                "digest_mismatches": s.digest_mismatches.load(Ordering::Relaxed),
                "corrupt_entries": s.corrupt_entries.load(Ordering::Relaxed),
            },
            "routes": self.shared.routes.routes().iter().map(|r| r.as_ref()).collect::<Vec<_>>(),
            "cluster": self.shared.cluster.as_ref().map(|c| serde_json::json!({
                "node": c.node,
                "keep_local": c.keep_local,
                "members": c.members(),
                "redis": c.store.as_ref().map(|store| serde_json::json!({
                    "up": store.is_up(),
                    "totals": store.totals(),
                })),
            })),
        })
    }
}

impl AdminApp {
    fn activity(&self) -> serde_json::Value {
        let a = &self.shared.activity;
        let routes: serde_json::Map<String, serde_json::Value> = self
            .shared
            .routes
            .routes()
            .iter()
            .filter_map(|r| {
                Some((
                    r.name.clone(),
                    serde_json::to_value(a.route(&r.name)?).ok()?,
                ))
            })
            .collect();
        let (by_requests, by_bytes_saved) = a.top_repositories();
        serde_json::json!({
            "routes": routes,
            "recent_errors": a.recent_errors(),
            "top_by_requests": by_requests,
            "top_by_bytes_saved": by_bytes_saved,
        })
    }
}

fn respond(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(body)
        .unwrap_or_default()
}

/// A JSON answer.
fn json(status: u16, value: &impl serde::Serialize) -> Response<Vec<u8>> {
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
    body.push(b'\n');
    respond(status, "application/json", body)
}

/// A JSON error answer: `{"error": "..."}`.
fn failure(status: u16, message: impl std::fmt::Display) -> Response<Vec<u8>> {
    json(status, &serde_json::json!({ "error": message.to_string() }))
}

const ENDPOINTS: &[u8] = b"admin endpoints: / (status page) /metrics /healthz /stats \
POST /prefetch, GET /cache/entries?repository=GLOB, GET /cache/usage, POST /cache/purge\n";

impl AdminApp {
    /// The endpoints answered in one piece.
    async fn answer(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_owned();
        match (method.as_str(), path.as_str()) {
            (_, "/metrics") => {
                METRICS.refresh_cache(&self.shared.cache);
                if let Some(cluster) = &self.shared.cluster {
                    METRICS.refresh_cluster(&cluster.members());
                }
                PrometheusHttpApp.response(session).await
            }
            (_, "/") => respond(
                200,
                "text/html; charset=utf-8",
                STATUS_PAGE.as_bytes().to_vec(),
            ),
            (_, "/healthz") => respond(200, "text/plain", b"ok\n".to_vec()),
            (_, "/stats") => json(200, &self.stats()),
            ("GET", "/cache/usage") => operations::usage(&self.shared).await,
            ("POST", "/cache/purge") => match read_body(session).await {
                Ok(body) => operations::purge(&self.shared, &body).await,
                Err(e) => e,
            },
            (_, "/prefetch" | "/cache/purge" | "/cache/entries" | "/cache/usage") => {
                failure(405, format!("{method} is not allowed on {path}"))
            }
            _ => respond(404, "text/plain", ENDPOINTS.to_vec()),
        }
    }
}

/// Where a local client reaches a listener: its own address, or loopback for a listener on
/// every address (`0.0.0.0`, `[::]`).
pub fn reachable(listener: std::net::SocketAddr) -> std::net::SocketAddr {
    let ip = match listener.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => std::net::Ipv4Addr::LOCALHOST.into(),
        ip if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    std::net::SocketAddr::new(ip, listener.port())
}

/// Most bytes a request body to the admin API may hold.
const BODY_MAX: usize = 1 << 20;

/// The request body, bounded by `BODY_MAX`.
async fn read_body(session: &mut ServerSession) -> Result<Vec<u8>, Response<Vec<u8>>> {
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > BODY_MAX {
                    return Err(failure(413, format!("request body over {BODY_MAX} bytes")));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => return Err(failure(400, format!("request body unreadable: {e}"))),
        }
    }
}

/// Writes a whole response.
async fn send(session: &mut ServerSession, response: Response<Vec<u8>>) -> bool {
    let (parts, body) = response.into_parts();
    let header: ResponseHeader = parts.into();
    if let Err(e) = session.write_response_header(Box::new(header)).await {
        debug!("admin: response not sent: {e}");
        return false;
    }
    if !body.is_empty() {
        if let Err(e) = session.write_response_body(body.into(), true).await {
            debug!("admin: response body not sent: {e}");
            return false;
        }
    }
    true
}

/// Streams NDJSON lines from `lines` as a chunked response; false when the client left.
async fn stream_lines(
    session: &mut ServerSession,
    mut lines: tokio::sync::mpsc::Receiver<Vec<u8>>,
) -> bool {
    let Ok(mut header) = ResponseHeader::build(200, Some(2)) else {
        return false;
    };
    if header
        .insert_header(http::header::CONTENT_TYPE, "application/x-ndjson")
        .and_then(|_| header.insert_header(http::header::TRANSFER_ENCODING, "chunked"))
        .is_err()
    {
        return false;
    }
    if session
        .write_response_header(Box::new(header))
        .await
        .is_err()
    {
        return false;
    }
    let mut open = true;
    while let Some(first) = lines.recv().await {
        // Whatever else is queued goes in the same chunk.
        let mut chunk = first;
        while let Ok(more) = lines.try_recv() {
            chunk.extend_from_slice(&more);
        }
        if open
            && session
                .write_response_body(chunk.into(), false)
                .await
                .is_err()
        {
            // Keep draining: the work behind the lines goes on without its listener.
            open = false;
        }
    }
    open && session.finish_body().await.is_ok()
}

#[async_trait]
impl HttpServerApp for AdminApp {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        match session.read_request().await {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                debug!("admin: unreadable request: {e}");
                return None;
            }
        }
        session.set_keepalive(if *shutdown.borrow() { None } else { Some(60) });
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_owned();
        let complete = match (method.as_str(), path.as_str()) {
            ("POST", "/prefetch") => self.prefetch(&mut session).await,
            ("GET", "/cache/entries") => {
                let query = session.req_header().uri.query().unwrap_or("").to_owned();
                match operations::entries(&self.shared, &query) {
                    Ok(lines) => stream_lines(&mut session, lines).await,
                    Err(e) => send(&mut session, failure(400, e)).await,
                }
            }
            _ => {
                let response = self.answer(&mut session).await;
                send(&mut session, response).await
            }
        };
        if !complete {
            return None;
        }
        let settings = HttpPersistentSettings::for_session(&session);
        match session.finish().await {
            Ok(stream) => stream.map(|s| ReusedHttpStream::from_reusable_stream(s, settings)),
            Err(e) => {
                debug!("admin: {e}");
                None
            }
        }
    }
}

impl AdminApp {
    /// `POST /prefetch`: runs the request in its own task (it finishes even if the client
    /// leaves) and streams its events.
    async fn prefetch(&self, session: &mut ServerSession) -> bool {
        let body = match read_body(session).await {
            Ok(b) => b,
            Err(e) => return send(session, e).await,
        };
        let request: prefetch::PrefetchRequest = match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return send(session, failure(400, format!("bad prefetch request: {e}"))).await
            }
        };
        if request.images.is_empty() || request.images.len() > prefetch::MAX_IMAGES {
            let why = format!("name 1 to {} images", prefetch::MAX_IMAGES);
            return send(session, failure(400, why)).await;
        }
        let Some(prefetcher) = self.prefetcher.clone() else {
            let why = "prefetch pulls through a plain `listen:` address, and this mirror has none";
            return send(session, failure(503, why)).await;
        };
        let (events_tx, mut events) = tokio::sync::mpsc::channel(1024);
        let (lines_tx, lines) = tokio::sync::mpsc::channel(1024);
        tokio::spawn(async move { prefetcher.run(&request, &events_tx).await });
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                let mut line = serde_json::to_vec(&event).unwrap_or_default();
                line.push(b'\n');
                if lines_tx.send(line).await.is_err() {
                    warn!("prefetch: its client left; the warming goes on");
                    // Drain the rest so the run is never held up by a full channel.
                    while events.recv().await.is_some() {}
                    return;
                }
            }
        });
        stream_lines(session, lines).await
    }
}
