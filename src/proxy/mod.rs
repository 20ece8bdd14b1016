//! The Pingora `ProxyHttp` implementation. Each hook reads the request context, calls one
//! pure decision (`plan`, `hops`, `registry::auth`) and acts on the answer.

mod access;
mod admission;
mod cluster;
pub mod ctx;
mod decide;
pub mod express;
pub mod hops;
mod hot;
pub mod offline;
pub mod plan;
pub mod realms;
pub mod responses;
pub mod tags;
pub mod token;
mod upstream;

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
use crate::cache::inventory::{Label, SOURCE_HEADER};
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

use access::learned_privately;
pub use ctx::RequestCtx;
pub use decide::{Arrival, Decision};
use hops::{HopKind, RedirectOutcome};
use plan::{Canned, Incoming, Plan};
use realms::RealmBook;
use token::UpstreamRealm;

/// The cache key of a registry request on a route: its path and the media types it accepts.
fn request_cache_key(req: &RequestHeader, ctx: &RequestCtx) -> Option<CacheKey> {
    let (route, path) = (ctx.route.as_deref()?, ctx.registry_path()?);
    let accept: Vec<&str> = req
        .headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    key::cache_key(route, path, &accept)
}

/// Log target of every cache decision: `RUST_LOG=pullthrough::cache=debug` explains them.
const CACHE_LOG: &str = "pullthrough::cache";

/// The error type of a deliberate re-dispatch (a followed redirect, a learned realm): Pingora
/// retries it with the same context, and nothing has reached the client yet.
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
    /// Routes whose upstream failed recently.
    pub outages: offline::Outages,
    /// Stale tag checks in flight (one HEAD per tag however many wait).
    pub tag_checks: tags::TagChecks,
    /// The cluster this node is a member of, if any.
    pub cluster: Option<crate::cluster::Cluster>,
    /// What the status page shows beyond the counters.
    pub activity: crate::activity::Activity,
}

impl Shared {
    /// The cluster's shared state, when there is one.
    pub fn store(&self) -> Option<&crate::cluster::Store> {
        self.cluster.as_ref()?.store.as_deref()
    }

    /// Whether the mirror may connect to `ip` for `host`, a target an upstream named (a
    /// redirect, a realm): a public address, or one the operator named (the route's own
    /// upstream, a `resolve:` pin, an exact `redirects.follow` entry). See `upstream::egress`.
    pub fn may_connect(
        &self,
        route: Option<&crate::routes::Route>,
        host: &str,
        ip: IpAddr,
    ) -> bool {
        let allowed = !crate::upstream::egress::is_internal(ip)
            || route.is_some_and(|r| r.upstream.host.eq_ignore_ascii_case(host))
            || self.resolver.is_pinned(host)
            || self.redirects.names_exactly(host);
        if !allowed {
            METRICS.egress_refused.inc();
            warn!(
                "route {}: refused to connect to {host} ({ip}), an internal address an upstream named; list it in redirects.follow to allow it",
                route.map_or("-", |r| r.name.as_str())
            );
        }
        allowed
    }
}

/// The mirror's proxy logic.
pub struct Mirror {
    shared: Arc<Shared>,
}

impl Mirror {
    pub fn new(shared: Arc<Shared>) -> Mirror {
        Mirror { shared }
    }
}

/// The Host the client used (HTTP/1 Host header, HTTP/2 :authority).
fn client_host(req: &RequestHeader) -> Option<&str> {
    req.headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
}

/// Whether the request came in over TLS.
fn over_tls(session: &Session) -> bool {
    session.digest().is_some_and(|d| d.ssl_digest.is_some())
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
        } else if ctx.owner.is_some() {
            "peer"
        } else {
            "upstream"
        };
        m.bytes_served
            .with_label_values(&[source])
            .inc_by(bytes as u64);
        if source == "peer" {
            m.peer_bytes
                .with_label_values(&["out"])
                .inc_by(bytes as u64);
        }
    }
    if ctx.from_peer {
        m.peer_bytes.with_label_values(&["in"]).inc_by(bytes as u64);
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
        self.shared
            .guard
            .connections()
            .apply_send_limits(session.as_downstream_mut());
        let local = Arrival::of(session).local;
        self.sanitize(session.req_header_mut(), local);
        // Decided already when the express lane read the request and handed it over.
        let decision = match ctx.decided.take() {
            Some(decision) => decision,
            None => {
                let arrival = Arrival::of(session);
                self.decide(session.req_header(), &arrival, ctx).await
            }
        };
        self.act(session, ctx, decision).await
    }

    /// A request the express lane read comes with its context and decision (`proxy::express`).
    fn on_connection_reuse(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
        prev_ctx: Box<dyn std::any::Any + Send + Sync>,
    ) {
        if let Ok(decided) = prev_ctx.downcast::<RequestCtx>() {
            *ctx = *decided;
        }
    }

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        let cacheable = ctx.registry_path().is_some_and(|p| {
            matches!(
                p,
                crate::registry::V2Path::Manifest { .. } | crate::registry::V2Path::Blob { .. }
            )
        });
        // Through an owner, a copy is kept here only with `cluster.keep_local`.
        let kept_here =
            ctx.owner.is_none() || self.shared.cluster.as_ref().is_some_and(|c| c.keep_local);
        if cacheable && kept_here {
            let c = &self.shared.cache;
            session
                .cache
                .enable(c.storage, Some(c.eviction), None, Some(c.lock), None);
            session.cache.set_max_file_size_bytes(c.max_object_size);
        }
        Ok(())
    }

    fn cache_key_callback(&self, session: &Session, ctx: &mut RequestCtx) -> Result<CacheKey> {
        ctx.cache_key
            .take()
            .or_else(|| request_cache_key(session.req_header(), ctx))
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
        let cache = &self.shared.cache;
        let length = resp
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        // Over max_object_size pingora bypasses the fill itself; nothing to reserve.
        let mut permit = None;
        if length.is_none_or(|l| l <= cache.max_object_size as u64) {
            match cache.fills.admit(length) {
                Ok(p) => permit = Some(p),
                Err(refusal) => {
                    METRICS
                        .fills_refused
                        .with_label_values(&[refusal.as_str()])
                        .inc();
                    warn!(
                        "route {}: {path} served uncached: {refusal}",
                        ctx.route_name()
                    );
                    return Ok(RespCacheable::Uncacheable(NoCacheReason::StorageError));
                }
            }
        }
        let ttl = &cache.ttl;
        let now = std::time::SystemTime::now();
        let stale_if_error = ttl.stale_if_error(path).as_secs() as u32;
        let mut stored = resp.clone();
        if learned_privately(session.req_header(), ctx) {
            // The mark names the repository it was filled through (one copy per digest:
            // another repository's readers are checked for that repository).
            stored.insert_header(PRIVATE_MARK, path.name().map_or("", |n| n.as_str()))?;
            self.probe_in_background(ctx);
        }
        if let Some(label) = Label::of_content(path) {
            stored.insert_header(SOURCE_HEADER, label.to_string())?;
        }
        let meta = CacheMeta::new(now + ttl.fresh_for(path), now, 0, stale_if_error, stored);
        debug!(target: CACHE_LOG,
            "route {}: {path} cached for {:?}",
            ctx.route_name(),
            ttl.fresh_for(path)
        );
        ctx.fill_permit = permit;
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
        // A HeaderValue clone shares its bytes: no copy per private hit.
        if let Some(via) = meta.headers().get(PRIVATE_MARK).cloned() {
            // Refused on the hot path already: one upstream check per request. (Only ever a
            // miss forced on a stale refusal: the upstream then answers the credentials.)
            if ctx.private_refused
                || !self
                    .may_read_private(session.req_header(), ctx, via.as_bytes())
                    .await
            {
                // The upstream decides: with the client's own (missing or refused) credentials
                // the answer is its 401, relayed as the mirror's challenge.
                return Ok(Some(ForcedFreshness::ForceMiss));
            }
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
        responses::strip_internal(resp);
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
        let route = ctx.route.clone();
        let Some(hop) = ctx.next_hop() else {
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
                self.shared.outages.mark_down(ctx.route_name(), &msg);
                return Err(fail(ctx, RegistryError::bad_gateway(msg)));
            }
        };
        if matches!(hop.kind, HopKind::Redirect | HopKind::Realm)
            && !self
                .shared
                .may_connect(route.as_deref(), &origin.host, addr.ip())
        {
            let msg = format!("refused to connect to {origin}: an internal address");
            return Err(fail(ctx, RegistryError::bad_gateway(msg)));
        }
        let mut peer = HttpPeer::new(addr, origin.tls, origin.sni().to_owned());
        let u = &self.shared.upstream;
        // A member is next door: one that does not take the connection within the health
        // check's own bound (`fail_to_connect`), or sends nothing of its answer within
        // `cluster.peer_timeout` (`error_while_proxy`: a pooled connection into a
        // partition), is passed over for the next one on the ring.
        let (connect_timeout, read_timeout) = match (hop.kind, self.shared.cluster.as_ref()) {
            (HopKind::Peer, Some(cluster)) => (
                u.connect_timeout.min(crate::cluster::PEER_CONNECT_TIMEOUT),
                cluster.peer_timeout,
            ),
            _ => (u.connect_timeout, u.read_timeout),
        };
        peer.options.connection_timeout = Some(connect_timeout);
        peer.options.total_connection_timeout = Some(connect_timeout);
        peer.options.read_timeout = Some(read_timeout);
        peer.options.write_timeout = Some(read_timeout);
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
        if hop.kind == HopKind::Peer {
            // The owner gets the client's Host and credentials with the upstream path
            // (`route_to_owner`), signed so its peer listener takes it.
            if let Some(cluster) = self.shared.cluster.as_ref() {
                let signed = cluster.signer.sign(
                    upstream_request.method.as_str(),
                    &hop.path_and_query,
                    &cluster.node_name,
                    std::time::SystemTime::now(),
                );
                upstream_request.insert_header(crate::cluster::PEER_HEADER, signed)?;
            }
            return Ok(());
        }
        upstream_request.insert_header(header::HOST, hop.origin.authority())?;
        if !hop.send_authorization {
            upstream_request.remove_header(&header::AUTHORIZATION);
        } else if ctx.route_credentials
            && !upstream_request.headers.contains_key(header::AUTHORIZATION)
        {
            // The client brought none and the repositories allow it: the route's own
            // credentials, where they belong (Basic to the realm, a token to the registry).
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
        ctx: &RequestCtx,
        error: &Error,
        context: ProxyWarnLogContext,
    ) -> bool {
        // A re-dispatch is the plan working, not a failure (logged at debug where decided);
        // so is the retry past an unreachable owner (logged in `pass_over_owner`).
        *error.etype() == REDISPATCH
            || (matches!(context, ProxyWarnLogContext::UpstreamRetry)
                && !ctx.failed_owners.is_empty())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // An owner that cannot be reached: the next member on the ring, or the upstream.
        if self.pass_over_owner(ctx) {
            e.set_retry(true);
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        // Pingora's own policy, and one case more: an owner that failed before anything of
        // its answer arrived is passed over for the next member (nothing reached the client).
        let mut e = e.more_context(format!("Peer: {peer}"));
        let replayable = session.req_header().method.is_idempotent()
            && !session.as_ref().retry_buffer_truncated();
        if !replayable {
            e.set_retry(false);
        } else if ctx.upstream_answered.is_none() && self.pass_over_owner(ctx) {
            e.set_retry(true);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let why = e.etype().as_str();
        // A peer that failed says nothing about the upstream registry.
        let from_registry = !ctx.hop.as_ref().is_some_and(|h| h.kind == HopKind::Peer);
        if matches!(e.esource(), ErrorSource::Upstream) && ctx.route.is_some() && from_registry {
            self.shared.outages.mark_down(ctx.route_name(), why);
        }
        if ctx.route.is_some() && self.shared.outages.is_down(ctx.route_name()) {
            let offline = self.offline_answer(session.req_header(), over_tls(session), ctx);
            if let Some(canned) = offline {
                debug!(
                    "route {}: upstream failed ({why}): answered by the mirror: {canned:?}",
                    ctx.route_name()
                );
                // Pingora closes the connection after a failed proxy attempt: say so, so the
                // client sends its next request (the token, the content) on a new one.
                session.set_keepalive(None);
                let code = match responses::send(session, &canned).await {
                    Ok(code) => code,
                    Err(we) => {
                        debug!("cannot send the offline answer: {we}");
                        0
                    }
                };
                return FailToProxy {
                    error_code: code,
                    can_reuse_downstream: false,
                };
            }
        }
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
                // The connection is not reused after a failure: say so, or a keep-alive
                // client sends its next request into a connection being closed.
                session.set_keepalive(None);
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
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let sent = session.body_bytes_sent();
        self.finished(session.req_header(), status, sent, e, ctx);
    }
}

impl Mirror {
    /// Counts and logs a finished request (`status` 0: no response was written), whoever
    /// answered it: Pingora (`logging`) or the express lane.
    pub fn finished(
        &self,
        req: &RequestHeader,
        status: u16,
        body_bytes_sent: usize,
        e: Option<&Error>,
        ctx: &RequestCtx,
    ) {
        let failure = match (e, &ctx.failure) {
            (_, Some(f)) => Some(f.message.as_str()),
            (Some(e), None) => Some(e.etype().as_str()),
            _ => None,
        };
        record_metrics(ctx, status, body_bytes_sent);
        self.shared.activity.record(&crate::activity::Finished {
            route: ctx.route_name(),
            repository: ctx
                .registry_path()
                .and_then(|p| p.name())
                .map(|n| n.as_str()),
            path: req.uri.path(),
            status,
            upstream_answered: ctx.upstream_answered.is_some(),
            from_cache: matches!(ctx.cache_status, Some("hit" | "stale" | "revalidated")),
            bytes: body_bytes_sent as u64,
            failure,
        });
        if e.is_some_and(|e| e.etype() == &ErrorType::WriteTimedout) {
            METRICS.send_timeouts.inc();
        }
        info!(
            target: "pullthrough::access",
            "{} {} route={} via={} status={status} bytes={body_bytes_sent} redirects={} ms={}{}",
            req.method,
            req.uri.path(),
            ctx.route_name(),
            ctx.via.map_or("-".to_owned(), |v| v.to_string()),
            ctx.redirects_followed,
            ctx.started.elapsed().as_millis(),
            failure.map_or(String::new(), |f| format!(" error={f:?}")),
        );
    }
}
