//! The Pingora `ProxyHttp` implementation. Each hook reads the request context, calls one
//! pure decision (`plan`, `hops`, `registry::auth`) and acts on the answer.

pub mod ctx;
pub mod hops;
pub mod plan;
pub mod realms;
pub mod responses;
pub mod token;

use std::sync::Arc;

use async_trait::async_trait;
use http::header;
use log::{debug, info, warn};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, ProxyWarnLogContext, Session};

use crate::config::{Scheme, UpstreamConfig};
use crate::redirect::{is_redirect, RedirectPolicy};
use crate::registry::auth::rewrite_challenge;
use crate::registry::{Challenge, RegistryError};
use crate::routes::RouteTable;
use crate::upstream::Resolver;

pub use ctx::RequestCtx;
use hops::{HopKind, RedirectOutcome};
use plan::{Incoming, Plan};
use realms::RealmBook;
use token::UpstreamRealm;

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
}

/// The mirror's proxy logic.
pub struct Mirror {
    shared: Arc<Shared>,
}

impl Mirror {
    pub fn new(shared: Arc<Shared>) -> Mirror {
        Mirror { shared }
    }

    /// The realm clients are sent to: this mirror's `/v2/auth`, on the name they used.
    fn mirror_realm(&self, session: &Session) -> String {
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        let scheme =
            self.shared
                .public_scheme
                .unwrap_or(if tls { Scheme::Https } else { Scheme::Http });
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
        let ours = rewrite_challenge(&upstream, &self.mirror_realm(session), |s| match prefix {
            Some(p) if s.is_repository() => s.with_name(format!("{p}/{}", s.name)),
            _ => s.clone(),
        });
        let ours = ours.to_string();
        debug!("route {}: challenge rewritten to {ours}", ctx.route_name());
        if let Err(e) = resp.insert_header(header::WWW_AUTHENTICATE, ours) {
            warn!("cannot set challenge header: {e}");
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
        let req = session.req_header();
        let incoming = Incoming {
            method: &req.method,
            path: req.uri.path(),
            query: req.uri.query(),
            host: client_host(req),
        };
        match plan::plan(&self.shared.routes, incoming) {
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

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
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
        }
        if hop.kind == HopKind::Realm || hop.kind == HopKind::RealmDiscovery {
            upstream_request.set_method(http::Method::GET);
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let status = resp.status.as_u16();
        let Some(hop) = ctx.hop.as_ref() else {
            return Ok(());
        };
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
