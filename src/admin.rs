//! The admin listener (`admin.listen`): the status page at `/`, Prometheus `/metrics`,
//! `/healthz`, and `/stats` as JSON. Kept off the public listeners so scrapes and health
//! checks never mix with pulls.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora_prometheus::PrometheusHttpApp;

use crate::metrics::METRICS;
use crate::proxy::Shared;

/// The status page: one self-contained document (no external assets) whose script polls
/// `/stats` and renders it.
const STATUS_PAGE: &str = include_str!("status.html");

/// Serves the admin endpoints.
pub struct AdminApp {
    shared: Arc<Shared>,
    started: Instant,
}

impl AdminApp {
    pub fn new(shared: Arc<Shared>) -> AdminApp {
        AdminApp {
            shared,
            started: Instant::now(),
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

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        match session.req_header().uri.path() {
            "/metrics" => {
                METRICS.refresh_cache(&self.shared.cache);
                if let Some(cluster) = &self.shared.cluster {
                    METRICS.refresh_cluster(&cluster.members());
                }
                PrometheusHttpApp.response(session).await
            }
            "/" => respond(
                200,
                "text/html; charset=utf-8",
                STATUS_PAGE.as_bytes().to_vec(),
            ),
            "/healthz" => respond(200, "text/plain", b"ok\n".to_vec()),
            "/stats" => {
                let body = serde_json::to_vec_pretty(&self.stats()).unwrap_or_default();
                respond(200, "application/json", body)
            }
            _ => respond(
                404,
                "text/plain",
                b"admin endpoints: / (status page) /metrics /healthz /stats\n".to_vec(),
            ),
        }
    }
}
