//! What the mirror does with a request, decided once from its header and where it came in:
//! by `request_filter` for the requests Pingora reads, and by the express lane
//! (`proxy::express`) for the ones it reads itself. The lane answers hot hits and hands
//! everything else to Pingora with the decision already made, so no request is admitted,
//! counted or looked up twice.

use std::net::{IpAddr, SocketAddr};

use super::*;
use crate::cache::HotHit;
use crate::cluster::PEER_HEADER;

/// Where a request came in, beside its header.
#[derive(Debug, Clone, Copy, Default)]
pub struct Arrival<'a> {
    /// The connection's peer (the trusted-proxy rules may name another client).
    pub peer: Option<IpAddr>,
    /// The listener's address.
    pub local: Option<SocketAddr>,
    pub tls: bool,
    /// The TLS SNI name, for when the Host names no route.
    pub sni: Option<&'a str>,
}

impl<'a> Arrival<'a> {
    /// Where a request Pingora read came in.
    pub fn of(session: &'a Session) -> Arrival<'a> {
        let inet = |a: Option<&pingora::protocols::l4::socket::SocketAddr>| {
            a.and_then(|a| a.as_inet()).copied()
        };
        let ssl = session.digest().and_then(|d| d.ssl_digest.as_ref());
        Arrival {
            peer: inet(session.client_addr()).map(|a| a.ip()),
            local: inet(session.server_addr()),
            tls: ssl.is_some(),
            sni: ssl
                .and_then(|t| t.extension.get::<SniName>())
                .map(|n| n.0.as_str()),
        }
    }
}

/// The decision for one request.
pub enum Decision {
    /// The mirror answers itself.
    Respond(Canned),
    /// Refused on the peer listener: answered, and the connection closed.
    Refuse(RegistryError),
    /// The request fails with this error (`fail_to_proxy` answers it).
    Fail(RegistryError),
    /// Answered from the hot set (`proxy::hot`).
    Hot(HotHit),
    /// The cache, and the upstream on a miss, answer it.
    Proceed,
}

impl Mirror {
    /// Takes out what a client must not bring in: the mirror's offline token (it stands for
    /// no credential, see `offline`) and, on a public listener, a peer's signature header (a
    /// client cannot pass for a member). Both readers of a request apply it to their header.
    pub fn sanitize(&self, req: &mut RequestHeader, local: Option<SocketAddr>) {
        if req
            .headers
            .get(header::AUTHORIZATION)
            .is_some_and(offline::is_offline_token)
        {
            req.remove_header(&header::AUTHORIZATION);
        }
        if let Some(cluster) = self.shared.cluster.as_ref() {
            if !cluster.is_peer_listener(local) {
                req.remove_header(PEER_HEADER);
            }
        }
    }

    /// Decides what to do with a request whose header went through `sanitize`, filling in
    /// `ctx` (route, target, client, download slot, the owner, ...).
    pub async fn decide(
        &self,
        req: &RequestHeader,
        arrival: &Arrival<'_>,
        ctx: &mut RequestCtx,
    ) -> Decision {
        if let Some(cluster) = self.shared.cluster.as_ref() {
            if cluster.is_peer_listener(arrival.local) {
                if let Err(refused) = self.peer_gate(req, cluster, ctx) {
                    return Decision::Refuse(refused);
                }
            }
        }
        let client = self.client_info(arrival.peer, req);
        ctx.client = Some(client);
        let incoming = Incoming {
            method: &req.method,
            path: req.uri.path(),
            query: req.uri.query(),
            host: client_host(req),
            sni: arrival.sni,
        };
        let planned = plan::plan(&self.shared.routes, incoming);
        let (route, via, target) = match self.admit(client, &req.method, planned, ctx.from_peer) {
            Ok((Plan::Forward { route, via, target }, slot)) => {
                ctx.download_slot = slot;
                (route, via, target)
            }
            Ok((Plan::Respond(canned), _)) | Err(canned) => return Decision::Respond(canned),
        };
        // A token request's hop depends on the realm learned so far; a registry request's is
        // built when it goes upstream (`RequestCtx::next_hop`).
        if matches!(target, plan::Target::Token { .. }) {
            let realm = self.shared.realms.get(&route.name);
            match hops::first_hop(&route, &target, realm.as_deref()) {
                Ok(hop) => ctx.hop = Some(hop),
                Err(e) => {
                    return Decision::Fail(RegistryError::bad_gateway(format!(
                        "bad upstream realm: {e}"
                    )))
                }
            }
        }
        debug!(
            "{} {}: route {} by {via}, upstream {}",
            req.method,
            req.uri.path(),
            route.name,
            match &ctx.hop {
                Some(hop) => format!("{} ({:?})", hop.url(), hop.kind),
                None => format!(
                    "{}{} (Registry)",
                    route.upstream,
                    target.registry_path_and_query()
                ),
            },
        );
        ctx.route = Some(route);
        ctx.via = Some(via);
        ctx.target = Some(target);
        if !req.headers.contains_key(header::AUTHORIZATION) {
            self.decide_route_credentials(ctx).await;
        }
        if self.shared.outages.is_down(ctx.route_name()) {
            if let Some(canned) = self.offline_answer(req, arrival.tls, ctx) {
                debug!("route {}: upstream down", ctx.route_name());
                return Decision::Respond(canned);
            }
        }
        if (req.method == http::Method::GET || req.method == http::Method::HEAD)
            && ctx.registry_path().is_some_and(policy::is_tag)
        {
            if let Some(canned) = self.follow_tag_pointer(req, ctx).await {
                return Decision::Respond(canned);
            }
        }
        self.route_to_owner(ctx);
        match self.hot_hit(req, ctx).await {
            Some(hit) => Decision::Hot(hit),
            None => Decision::Proceed,
        }
    }

    /// Carries a decision out on a request Pingora read: `true` when answered here.
    pub(super) async fn act(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        decision: Decision,
    ) -> Result<bool> {
        match decision {
            Decision::Proceed => Ok(false),
            Decision::Hot(hit) => {
                self.answer_hot(session, ctx, hit).await?;
                Ok(true)
            }
            Decision::Fail(e) => Err(fail(ctx, e)),
            Decision::Refuse(e) => {
                session.set_keepalive(None);
                responses::send(session, &Canned::Error(e)).await?;
                Ok(true)
            }
            Decision::Respond(canned) => {
                let req = session.req_header();
                debug!(
                    "{} {}: answered by the mirror: {canned:?}",
                    req.method,
                    req.uri.path()
                );
                // A body left unread would be drained after the answer, where the head guard
                // counts it as the next head: close instead (the mirror takes no uploads).
                if !session.as_downstream_mut().is_body_empty() {
                    session.set_keepalive(None);
                }
                responses::send(session, &canned).await?;
                Ok(true)
            }
        }
    }
}
