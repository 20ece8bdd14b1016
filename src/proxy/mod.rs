//! The Pingora `ProxyHttp` implementation. Each hook reads the request context, calls one
//! pure decision (`plan`, `hops`, `registry::auth`) and acts on the answer.

mod access;
pub mod ctx;
pub mod hops;
pub mod plan;
pub mod realms;
pub mod responses;
pub mod token;

use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;
use http::header;
use log::{debug, info, warn};
use pingora::cache::{
    CacheKey, CacheMeta, CachePhase, ForcedFreshness, HitHandler, NoCacheReason, RespCacheable,
    Storage,
};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, ProxyWarnLogContext, Session};

use crate::cache::access::PRIVATE_MARK;
use crate::cache::verify::DIGEST_HEADER;
use crate::cache::{key, policy, Cache};
use crate::config::{Scheme, UpstreamConfig};
use crate::guard::{ClientInfo, DownloadSlot, Verdict};
use crate::metrics::{status_class, METRICS};
use crate::redirect::{is_redirect, RedirectPolicy};
use crate::registry::auth::rewrite_challenge;
use crate::registry::{Challenge, RegistryError};
use crate::routes::RouteTable;
use crate::tls::SniName;
use crate::upstream::{Credentials, Resolver};

pub use ctx::RequestCtx;
use hops::{HopKind, RedirectOutcome};
use plan::{Canned, Incoming, Plan};
use realms::RealmBook;
use token::UpstreamRealm;

/// The error type of a deliberate re-dispatch (a followed redirect, a learned realm): Pingora
/// retries it with the same context, and nothing has reached the client yet.
/// Log target of every cache decision: `RUST_LOG=pullthrough::cache=debug` explains them.
const CACHE_LOG: &str = "pullthrough::cache";

const REDISPATCH: ErrorType = ErrorType::Custom("pullthrough-redispatch");

/// What every request shares, built once at start.
pub struct Shared {
    pub routes: RouteTable,
    pub redirects: RedirectPolicy,
    pub resolver: Resolver,
    pub realms: RealmBook,
    pub upstream: UpstreamConfig,
    pub public_scheme: Option<Scheme>,
    pub cache: Cache,
    pub side: crate::upstream::SideClient,
    /// Set when the process hands its listeners over or stops: responses close connections.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
    pub guard: crate::guard::Guard,
    pub repositories: crate::guard::RepoFilter,
    pub trusted_proxies: crate::guard::TrustedProxies,
}

/// The mirror's proxy logic.
pub struct Mirror {
    shared: Arc<Shared>,
}

impl Mirror {
    pub fn new(shared: Arc<Shared>) -> Mirror {
        Mirror { shared }
    }

    /// The client: its address and forwarded scheme, believed only from trusted proxies.
    fn client_info(&self, session: &Session) -> ClientInfo {
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map_or(IpAddr::from([0, 0, 0, 0]), |a| a.ip());
        let headers = &session.req_header().headers;
        let forwarded_for = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok());
        let forwarded_proto = headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok());
        self.shared
            .trusted_proxies
            .client(peer, forwarded_for, forwarded_proto)
    }

    /// Applies the per-client limits and the repository lists to a plan: the plan to carry
    /// out (with a blob download slot to hold), or the refusal to send.
    fn admit(
        &self,
        client: ClientInfo,
        method: &http::Method,
        plan: Plan,
    ) -> std::result::Result<(Plan, Option<DownloadSlot>), Canned> {
        let s = &self.shared;
        if matches!(plan, Plan::Respond(Canned::Healthy)) {
            return Ok((plan, None));
        }
        if let Verdict::TooMany(after) = s.guard.admit_request(client.ip) {
            METRICS.rate_limited.inc();
            debug!("{}: over the request rate limit", client.ip);
            return Err(Canned::TooMany(after));
        }
        let Plan::Forward {
            route,
            target: plan::Target::Registry { path, .. },
            ..
        } = &plan
        else {
            return Ok((plan, None));
        };
        if let Some(name) = path.name() {
            if !s.repositories.permits(&route.registry, name.as_str()) {
                debug!("{}/{name}: refused by the repository lists", route.registry);
                let msg = format!("{}/{name} is not served by this mirror", route.registry);
                let denied = RegistryError::new(403, crate::registry::ErrorCode::Denied, msg);
                return Err(Canned::Error(denied));
            }
        }
        if matches!(path, crate::registry::V2Path::Blob { .. }) && *method == http::Method::GET {
            return match s.guard.admit_download(client.ip) {
                Ok(slot) => Ok((plan, slot)),
                Err(after) => {
                    METRICS.rate_limited.inc();
                    debug!("{}: over the concurrent blob download limit", client.ip);
                    Err(Canned::TooMany(after))
                }
            };
        }
        Ok((plan, None))
    }

    /// The realm clients are sent to: this mirror's `/v2/auth`, on the name they used.
    fn mirror_realm(&self, session: &Session, ctx: &RequestCtx) -> String {
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        let forwarded_https = ctx.client.and_then(|c| c.forwarded_https);
        let scheme = self
            .shared
            .public_scheme
            .unwrap_or(match (forwarded_https, tls) {
                (Some(true), _) | (None, true) => Scheme::Https,
                _ => Scheme::Http,
            });
        let host = client_host(session.req_header()).unwrap_or("localhost");
        format!("{}://{host}/v2/auth", scheme.as_str())
    }

    /// Replaces an upstream's challenge with the mirror's own, learning the realm on the way.
    fn relay_challenge(&self, session: &Session, resp: &mut ResponseHeader, ctx: &RequestCtx) {
        let Some(upstream) = resp
            .headers
            .get(header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| Challenge::parse(v).ok())
        else {
            return;
        };
        if let (Some(route), Some(realm)) = (&ctx.route, UpstreamRealm::from_challenge(&upstream)) {
            if self.shared.realms.learn(&route.name, realm) {
                info!(
                    "route {}: upstream token realm is {:?}",
                    route.name,
                    upstream.realm()
                );
            }
        }
        let prefix = ctx.target.as_ref().and_then(|t| t.client_prefix());
        let ours = rewrite_challenge(
            &upstream,
            &self.mirror_realm(session, ctx),
            |s| match prefix {
                Some(p) if s.is_repository() => s.with_name(format!("{p}/{}", s.name)),
                _ => s.clone(),
            },
        );
        let ours = ours.to_string();
        debug!("route {}: challenge rewritten to {ours}", ctx.route_name());
        if let Err(e) = resp.insert_header(header::WWW_AUTHENTICATE, ours) {
            warn!("cannot set challenge header: {e}");
        }
    }
}

impl Mirror {
    /// Acts on an upstream response header: follows redirects, relays challenges, learns
    /// realms, names digests.
    async fn on_upstream_response(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let status = resp.status.as_u16();
        let Some(hop) = ctx.hop.as_ref() else {
            return Ok(());
        };
        if status == 200 && matches!(hop.kind, HopKind::Registry | HopKind::Redirect) {
            // Content named by digest is stored under that digest, and checked against it.
            let digest = match ctx.registry_path() {
                Some(crate::registry::V2Path::Blob { digest, .. }) => Some(digest.to_string()),
                Some(crate::registry::V2Path::Manifest { reference, .. })
                    if reference.is_digest() =>
                {
                    Some(reference.to_string())
                }
                _ => None,
            };
            if let Some(d) = digest {
                resp.insert_header(DIGEST_HEADER, d)?;
            }
        }
        match hop.kind {
            HopKind::Registry | HopKind::Redirect if is_redirect(status) => {
                let Some(location) = resp
                    .headers
                    .get(header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                else {
                    return Ok(());
                };
                match hops::on_redirect(
                    &self.shared.redirects,
                    hop,
                    location,
                    ctx.redirects_followed,
                ) {
                    RedirectOutcome::Follow(next, reason) => {
                        debug!(
                            "route {}: {status} to {} followed ({reason})",
                            ctx.route_name(),
                            next.origin
                        );
                        ctx.redirects_followed += 1;
                        ctx.hop = Some(next);
                        Err(redispatch(format!("following {status}")))
                    }
                    RedirectOutcome::ToClient(absolute, reason) => {
                        debug!(
                            "route {}: {status} handed to the client ({reason})",
                            ctx.route_name()
                        );
                        if absolute != location {
                            resp.insert_header(header::LOCATION, absolute)?;
                        }
                        Ok(())
                    }
                    RedirectOutcome::TooMany(max) => {
                        let msg = format!("upstream redirected more than {max} times");
                        Err(fail(ctx, RegistryError::bad_gateway(msg)))
                    }
                    RedirectOutcome::Invalid(why) => Err(fail(
                        ctx,
                        RegistryError::bad_gateway(format!("bad upstream redirect: {why}")),
                    )),
                }
            }
            HopKind::Registry if status == 401 => {
                self.relay_challenge(session, resp, ctx);
                Ok(())
            }
            HopKind::RealmDiscovery => {
                let challenge = resp
                    .headers
                    .get(header::WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| Challenge::parse(v).ok());
                let realm = challenge.as_ref().and_then(UpstreamRealm::from_challenge);
                let (Some(route), Some(realm), Some(plan::Target::Token { request, .. })) =
                    (ctx.route.clone(), realm, ctx.target.as_ref())
                else {
                    let msg = format!("upstream answered /v2/ with {status} and no token realm");
                    return Err(fail(
                        ctx,
                        RegistryError::new(404, crate::registry::ErrorCode::Unsupported, msg),
                    ));
                };
                let next = hops::realm_hop(request, &realm).map_err(|e| {
                    fail(
                        ctx,
                        RegistryError::bad_gateway(format!("bad upstream realm: {e}")),
                    )
                })?;
                info!(
                    "route {}: upstream token realm is {}",
                    route.name, realm.realm
                );
                self.shared.realms.learn(&route.name, realm);
                ctx.hop = Some(next);
                Err(redispatch("token realm learned".into()))
            }
            _ => Ok(()),
        }
    }

    /// Checks a stale tag with a HEAD carrying the client's credentials and `Accept` (no
    /// Docker Hub pull quota): the same digest refreshes the entry, a new digest fetches it
    /// (GET), and an upstream that fails or limits us leaves the stale manifest served.
    async fn check_tag(
        &self,
        session: &Session,
        meta: &CacheMeta,
        ctx: &mut RequestCtx,
    ) -> ForcedFreshness {
        let (Some(route), Some(hop)) = (ctx.route.clone(), ctx.hop.as_ref()) else {
            return ForcedFreshness::ForceExpired;
        };
        let req = session.req_header();
        let mut headers = Vec::new();
        for name in [header::AUTHORIZATION, header::ACCEPT] {
            for value in req.headers.get_all(&name) {
                headers.push((name.clone(), value));
            }
        }
        let s = &self.shared;
        let answer = s
            .side
            .head(
                &s.resolver,
                &s.upstream,
                &route.upstream,
                &hop.path_and_query,
                &headers,
            )
            .await;
        let digest_of = |h: &ResponseHeader| {
            h.headers
                .get(DIGEST_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let status = answer.as_ref().map(|r| r.status.as_u16());
        match answer {
            Ok(resp)
                if resp.status == 200
                    && digest_of(&resp).is_some()
                    && digest_of(&resp) == digest_of(meta.response_header()) =>
            {
                debug!(target: CACHE_LOG,
                    "route {}: tag unchanged upstream: revalidated by HEAD",
                    route.name
                );
                let now = std::time::SystemTime::now();
                let fresh = now + s.cache.ttl.tag_ttl;
                let refreshed = CacheMeta::new(
                    fresh,
                    now,
                    0,
                    policy::STALE_IF_ERROR.as_secs() as u32,
                    meta.response_header().clone(),
                );
                if let Err(e) = s
                    .cache
                    .storage
                    .update_meta(
                        session.cache.cache_key(),
                        &refreshed,
                        &pingora::cache::trace::Span::inactive().handle(),
                    )
                    .await
                {
                    warn!(target: CACHE_LOG, "route {}: cannot refresh cached tag: {e}", route.name);
                }
                ctx.cache_note = Some("revalidated");
                ForcedFreshness::ForceFresh
            }
            Ok(resp) if resp.status == 429 || resp.status.is_server_error() => {
                warn!(target: CACHE_LOG,
                    "route {}: tag check answered {}: serving the cached manifest",
                    route.name, resp.status
                );
                ctx.cache_note = Some("stale");
                ForcedFreshness::ForceFresh
            }
            Err(e) => {
                warn!(target: CACHE_LOG,
                    "route {}: tag check failed ({e}): serving the cached manifest",
                    route.name
                );
                ctx.cache_note = Some("stale");
                ForcedFreshness::ForceFresh
            }
            Ok(_) => {
                debug!(target: CACHE_LOG,
                    "route {}: tag check answered {status:?} with another digest: fetching",
                    route.name
                );
                ForcedFreshness::ForceExpired
            }
        }
    }
}

/// The Host the client used (HTTP/1 Host header, HTTP/2 :authority).
fn client_host(req: &RequestHeader) -> Option<&str> {
    req.headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
}

/// Records why the request fails and returns the error that stops proxying.
fn fail(ctx: &mut RequestCtx, e: RegistryError) -> Box<Error> {
    let err = Error::explain(HTTPStatus(e.status), e.message.clone());
    ctx.failure = Some(e);
    err
}

/// What `X-Cache-Status` says for a cache phase.
fn cache_status(phase: CachePhase) -> &'static str {
    match phase {
        CachePhase::Hit => "hit",
        CachePhase::Miss | CachePhase::Expired => "miss",
        CachePhase::Stale | CachePhase::StaleUpdating => "stale",
        CachePhase::Revalidated => "revalidated",
        CachePhase::RevalidatedNoCache(_) => "revalidated-nocache",
        CachePhase::Disabled(_)
        | CachePhase::Uninit
        | CachePhase::Bypass
        | CachePhase::CacheKey => "bypass",
    }
}

/// Counts a finished request in the `pullthrough_*` series.
fn record_metrics(ctx: &RequestCtx, status: u16, bytes: usize) {
    let cache = ctx.cache_status.unwrap_or("bypass");
    let m = &METRICS;
    m.requests
        .with_label_values(&[ctx.route_name(), status_class(status), cache])
        .inc();
    if ctx.route.is_some() {
        let source = if matches!(cache, "hit" | "stale" | "revalidated") {
            "cache"
        } else {
            "upstream"
        };
        m.bytes_served
            .with_label_values(&[source])
            .inc_by(bytes as u64);
    }
    if let (Some(start), Some(end)) = (ctx.upstream_started, ctx.upstream_answered) {
        m.upstream_seconds
            .with_label_values(&[ctx.route_name()])
            .observe(end.saturating_duration_since(start).as_secs_f64());
    }
}

/// Whether this attempt refreshes an entry the cache already holds.
fn revalidating(session: &Session) -> bool {
    session.cache.enabled()
        && matches!(
            session.cache.phase(),
            CachePhase::Stale | CachePhase::StaleUpdating | CachePhase::Expired
        )
        && session.cache.maybe_cache_meta().is_some()
}

fn redispatch(why: String) -> Box<Error> {
    let mut e = Error::explain(REDISPATCH, why);
    e.set_retry(true);
    e
}

#[async_trait]
impl ProxyHttp for Mirror {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        if self
            .shared
            .draining
            .load(std::sync::atomic::Ordering::Acquire)
        {
            session.set_keepalive(None);
        }
        let client = self.client_info(session);
        ctx.client = Some(client);
        let sni = session
            .digest()
            .and_then(|d| d.ssl_digest.as_ref())
            .and_then(|t| t.extension.get::<SniName>())
            .map(|n| n.0.as_str());
        let req = session.req_header();
        let incoming = Incoming {
            method: &req.method,
            path: req.uri.path(),
            query: req.uri.query(),
            host: client_host(req),
            sni,
        };
        let plan = match self.admit(
            client,
            &req.method,
            plan::plan(&self.shared.routes, incoming),
        ) {
            Ok((plan, slot)) => {
                ctx.download_slot = slot;
                plan
            }
            Err(refusal) => Plan::Respond(refusal),
        };
        match plan {
            Plan::Respond(canned) => {
                debug!(
                    "{} {}: answered by the mirror: {canned:?}",
                    req.method,
                    req.uri.path()
                );
                responses::send(session, &canned).await?;
                Ok(true)
            }
            Plan::Forward { route, via, target } => {
                let realm = self.shared.realms.get(&route.name);
                let hop = hops::first_hop(&route, &target, realm.as_deref()).map_err(|e| {
                    fail(
                        ctx,
                        RegistryError::bad_gateway(format!("bad upstream realm: {e}")),
                    )
                })?;
                debug!(
                    "{} {}: route {} by {via}, upstream {}{} ({:?})",
                    req.method,
                    req.uri.path(),
                    route.name,
                    hop.origin,
                    hop.path_and_query,
                    hop.kind
                );
                ctx.hop = Some(hop);
                ctx.route = Some(route);
                ctx.via = Some(via);
                ctx.target = Some(target);
                Ok(false)
            }
        }
    }

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        let cacheable = ctx.registry_path().is_some_and(|p| {
            matches!(
                p,
                crate::registry::V2Path::Manifest { .. } | crate::registry::V2Path::Blob { .. }
            )
        });
        if cacheable {
            let c = &self.shared.cache;
            session
                .cache
                .enable(c.storage, Some(c.eviction), None, Some(c.lock), None);
        }
        Ok(())
    }

    fn cache_key_callback(&self, session: &Session, ctx: &mut RequestCtx) -> Result<CacheKey> {
        let (Some(route), Some(path)) = (ctx.route.as_deref(), ctx.registry_path()) else {
            return Err(Error::explain(
                InternalError,
                "cache key for a request without a route",
            ));
        };
        let accept: Vec<&str> = session
            .req_header()
            .headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        key::cache_key(route, path, &accept)
            .ok_or_else(|| Error::explain(InternalError, "request is not cacheable"))
    }

    async fn proxy_upstream_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<bool> {
        // A HEAD that misses stays a HEAD upstream: caching it would fetch the whole body
        // (pingora turns cached HEADs into GETs), and a manifest GET costs Docker Hub quota.
        if session.req_header().method == http::Method::HEAD
            && session.cache.enabled()
            && !revalidating(session)
        {
            debug!(target: CACHE_LOG,
                "route {}: HEAD miss goes upstream uncached",
                ctx.route_name()
            );
            session.cache.disable(NoCacheReason::Custom("HEAD miss"));
        }
        Ok(true)
    }

    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<RespCacheable> {
        let status = resp.status.as_u16();
        let Some(path) = ctx.registry_path().filter(|_| policy::admits(status)) else {
            debug!(target: CACHE_LOG, "route {}: {status} not cached", ctx.route_name());
            return Ok(RespCacheable::Uncacheable(NoCacheReason::OriginNotCache));
        };
        let ttl = &self.shared.cache.ttl;
        let now = std::time::SystemTime::now();
        let stale_if_error = ttl.stale_if_error(path).as_secs() as u32;
        let mut stored = resp.clone();
        let route_public = ctx.route.as_ref().is_some_and(|r| r.public);
        let with_credentials = session
            .req_header()
            .headers
            .contains_key(header::AUTHORIZATION);
        if with_credentials && !route_public {
            stored.insert_header(PRIVATE_MARK, "1")?;
            self.probe_in_background(ctx);
        }
        let meta = CacheMeta::new(now + ttl.fresh_for(path), now, 0, stale_if_error, stored);
        debug!(target: CACHE_LOG,
            "route {}: {path} cached for {:?}",
            ctx.route_name(),
            ttl.fresh_for(path)
        );
        Ok(RespCacheable::Cacheable(meta))
    }

    async fn cache_hit_filter(
        &self,
        session: &mut Session,
        meta: &CacheMeta,
        _hit: &mut HitHandler,
        is_fresh: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<ForcedFreshness>> {
        if meta.headers().contains_key(PRIVATE_MARK) && !self.may_read_private(session, ctx).await {
            // The upstream decides: with the client's own (missing or refused) credentials
            // the answer is its 401, relayed as the mirror's challenge.
            return Ok(Some(ForcedFreshness::ForceMiss));
        }
        if is_fresh || !ctx.registry_path().is_some_and(policy::is_tag) {
            return Ok(None);
        }
        Ok(Some(self.check_tag(session, meta, ctx).await))
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let phase = session.cache.phase();
        let status = match (phase, ctx.cache_note) {
            (CachePhase::Hit, Some(note)) => note,
            (phase, _) => cache_status(phase),
        };
        resp.insert_header("X-Cache-Status", status)?;
        ctx.cache_status = Some(status);
        resp.remove_header(PRIVATE_MARK);
        if let Some(path) = ctx.registry_path() {
            debug!(target: CACHE_LOG, "route {}: {path}: {status}", ctx.route_name());
        }
        if status == "stale" {
            resp.insert_header("Warning", "110 - \"Response is Stale\"")?;
        }
        Ok(())
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        if ctx.upstream_started.is_none() {
            ctx.upstream_started = Some(std::time::Instant::now());
        }
        let Some(hop) = ctx.hop.as_ref() else {
            return Err(Error::explain(InternalError, "no upstream hop planned"));
        };
        let origin = &hop.origin;
        let addr = match self
            .shared
            .resolver
            .resolve(&origin.host, origin.port)
            .await
        {
            Ok(addr) => addr,
            Err(e) => {
                let msg = format!("upstream {origin} unreachable: {e}");
                return Err(fail(ctx, RegistryError::bad_gateway(msg)));
            }
        };
        let mut peer = HttpPeer::new(addr, origin.tls, origin.sni().to_owned());
        let u = &self.shared.upstream;
        peer.options.connection_timeout = Some(u.connect_timeout);
        peer.options.total_connection_timeout = Some(u.connect_timeout);
        peer.options.read_timeout = Some(u.read_timeout);
        peer.options.write_timeout = Some(u.read_timeout);
        peer.options.idle_timeout = Some(u.idle_timeout);
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some(hop) = ctx.hop.as_ref() else {
            return Err(Error::explain(InternalError, "no upstream hop planned"));
        };
        let uri = http::Uri::try_from(hop.path_and_query.as_str())
            .or_err(InternalError, "upstream path is not a URI")?;
        upstream_request.set_uri(uri);
        upstream_request.insert_header(header::HOST, hop.origin.authority())?;
        if !hop.send_authorization {
            upstream_request.remove_header(&header::AUTHORIZATION);
        } else if !upstream_request.headers.contains_key(header::AUTHORIZATION) {
            // The client brought none: the route's own credentials, where they belong
            // (Basic to the token realm, a static token to the registry).
            let configured = ctx.route.as_ref().and_then(|r| r.credentials.as_ref());
            match (hop.kind, configured) {
                (HopKind::Realm, Some(Credentials::Basic(v)))
                | (HopKind::Registry, Some(Credentials::Bearer(v))) => {
                    upstream_request.insert_header(header::AUTHORIZATION, v.clone())?;
                }
                _ => {}
            }
        }
        if hop.kind == HopKind::Realm || hop.kind == HopKind::RealmDiscovery {
            upstream_request.set_method(http::Method::GET);
        }
        if hop.kind == HopKind::Registry && ctx.registry_path().is_some_and(policy::is_tag) {
            // A tag is fetched whole: the check before already found it changed.
            upstream_request.remove_header(&header::IF_NONE_MATCH);
            upstream_request.remove_header(&header::IF_MODIFIED_SINCE);
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let outcome = self.on_upstream_response(session, resp, ctx).await;
        if outcome.is_ok() && ctx.upstream_answered.is_none() {
            ctx.upstream_answered = Some(std::time::Instant::now());
        }
        outcome
    }

    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        _ctx: &RequestCtx,
        error: &Error,
        _context: ProxyWarnLogContext,
    ) -> bool {
        // A re-dispatch is the plan working, not a failure (logged at debug where decided).
        *error.etype() == REDISPATCH
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let failure = ctx
            .failure
            .take()
            .or_else(|| match (e.etype(), e.esource()) {
                (HTTPStatus(code), _) => Some(RegistryError::new(
                    *code,
                    crate::registry::ErrorCode::Unknown,
                    e.to_string(),
                )),
                (_, ErrorSource::Upstream) => Some(RegistryError::bad_gateway(format!(
                    "upstream failed: {}",
                    e.etype().as_str()
                ))),
                (WriteError | ReadError | ConnectionClosed, ErrorSource::Downstream) => None,
                (_, ErrorSource::Downstream) => Some(RegistryError::new(
                    400,
                    crate::registry::ErrorCode::Unknown,
                    "bad request",
                )),
                _ => Some(RegistryError::new(
                    500,
                    crate::registry::ErrorCode::Unknown,
                    "internal error",
                )),
            });
        let code = match failure {
            Some(f) => {
                if let Err(we) = responses::send_error(session, &f).await {
                    debug!("cannot send error response: {we}");
                }
                ctx.failure = Some(f.clone());
                f.status
            }
            None => 0,
        };
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let req = session.req_header();
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let error = match (e, &ctx.failure) {
            (_, Some(f)) => format!(" error={:?}", f.message),
            (Some(e), None) => format!(" error={:?}", e.etype().as_str()),
            _ => String::new(),
        };
        record_metrics(ctx, status, session.body_bytes_sent());
        info!(
            target: "pullthrough::access",
            "{} {} route={} via={} status={status} bytes={} redirects={} ms={}{error}",
            req.method,
            req.uri.path(),
            ctx.route_name(),
            ctx.via.map_or("-".to_owned(), |v| v.to_string()),
            session.body_bytes_sent(),
            ctx.redirects_followed,
            ctx.started.elapsed().as_millis(),
        );
    }
}
