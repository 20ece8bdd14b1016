//! The per-request state every hook reads and writes.

use std::sync::Arc;
use std::time::Instant;

use super::hops::Hop;
use super::plan::Target;
use crate::registry::RegistryError;
use crate::routes::{Route, Via};

/// Per-request context.
pub struct RequestCtx {
    pub started: Instant,
    pub route: Option<Arc<Route>>,
    pub via: Option<Via>,
    pub target: Option<Target>,
    /// Where the next upstream attempt goes (see `next_hop`).
    pub hop: Option<Hop>,
    /// Redirects followed so far.
    pub redirects_followed: u8,
    /// The registry error to answer with when proxying fails on purpose.
    pub failure: Option<RegistryError>,
    /// What the tag check decided, for `X-Cache-Status` (`revalidated`, `stale`).
    pub cache_note: Option<&'static str>,
    /// The `X-Cache-Status` sent, for metrics.
    pub cache_status: Option<&'static str>,
    /// When the first upstream attempt started and the final upstream header arrived.
    pub upstream_started: Option<Instant>,
    pub upstream_answered: Option<Instant>,
    /// The client, as the trusted-proxy rules see it.
    pub client: Option<crate::guard::ClientInfo>,
    /// A blob download slot held until the request ends (per-client concurrency limit).
    pub download_slot: Option<crate::guard::DownloadSlot>,
    /// The route's own credentials go with this request (see `route_credentials_allowed`).
    pub route_credentials: bool,
    /// This request's cold fill's place and disk reservation (`cache::admission`).
    pub fill_permit: Option<crate::cache::admission::FillPermit>,
    /// Signed by a cluster member: served here, never forwarded again.
    pub from_peer: bool,
    /// The member this request is forwarded to (`crate::cluster`).
    pub owner: Option<std::net::SocketAddr>,
    /// Members that could not be reached for this request.
    pub failed_owners: Vec<std::net::SocketAddr>,
    /// The cache key, when `request_filter` already computed it (`proxy::hot`).
    pub cache_key: Option<pingora::cache::CacheKey>,
    /// What the express lane decided for a request it handed to Pingora (`proxy::express`).
    pub decided: Option<super::Decision>,
    /// `may_read_private` refused this reader the hot entry (`proxy::hot`): the cache's path
    /// forces the miss without asking the upstream about the same credentials again.
    pub private_refused: bool,
}

impl RequestCtx {
    pub fn new() -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            route: None,
            via: None,
            target: None,
            hop: None,
            redirects_followed: 0,
            failure: None,
            cache_note: None,
            cache_status: None,
            upstream_started: None,
            upstream_answered: None,
            client: None,
            download_slot: None,
            route_credentials: false,
            fill_permit: None,
            from_peer: false,
            owner: None,
            failed_owners: Vec::new(),
            cache_key: None,
            decided: None,
            private_refused: false,
        }
    }

    /// The registry path, when the request is a registry API request.
    pub fn registry_path(&self) -> Option<&crate::registry::V2Path> {
        match &self.target {
            Some(Target::Registry { path, .. }) => Some(path),
            _ => None,
        }
    }

    /// Where the next upstream attempt goes. A registry request's first hop is built here on
    /// first use, so a cache hit never builds one.
    pub fn next_hop(&mut self) -> Option<&Hop> {
        if self.hop.is_none() {
            if let (Some(route), Some(target @ Target::Registry { .. })) =
                (&self.route, &self.target)
            {
                self.hop = Some(super::hops::registry_hop(route, target));
            }
        }
        self.hop.as_ref()
    }

    pub fn route_name(&self) -> &str {
        self.route.as_deref().map_or("-", |r| r.name.as_str())
    }
}

impl Default for RequestCtx {
    fn default() -> Self {
        RequestCtx::new()
    }
}
