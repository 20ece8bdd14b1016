//! Upstream answers: redirects followed or handed to the client, challenges relayed with
//! the mirror's realm, realms learned, digests named for the cache.

use super::*;

impl Mirror {
    /// The realm clients are sent to: this mirror's `/v2/auth`, on the name they used.
    pub(super) fn mirror_realm(&self, req: &RequestHeader, tls: bool, ctx: &RequestCtx) -> String {
        let forwarded_https = ctx.client.and_then(|c| c.forwarded_https);
        let scheme = self
            .shared
            .public_scheme
            .unwrap_or(match (forwarded_https, tls) {
                (Some(true), _) | (None, true) => Scheme::Https,
                _ => Scheme::Http,
            });
        let host = client_host(req).unwrap_or("localhost");
        format!("{}://{host}/v2/auth", scheme.as_str())
    }

    /// A paginated answer's `Link`, rewritten for a client that came by path prefix or
    /// `?ns=` (see `registry::link`).
    fn relay_link(&self, resp: &mut ResponseHeader, ctx: &RequestCtx) {
        let prefix = ctx.target.as_ref().and_then(|t| t.client_prefix());
        let ns = match (ctx.via, ctx.route.as_ref()) {
            (Some(crate::routes::Via::Namespace), Some(route)) => Some(route.registry.as_str()),
            _ => None,
        };
        if prefix.is_none() && ns.is_none() {
            return;
        }
        let Some(link) = resp
            .headers
            .get(header::LINK)
            .and_then(|v| v.to_str().ok())
            .and_then(|l| crate::registry::link::client_link(l, prefix, ns))
        else {
            return;
        };
        debug!("route {}: Link rewritten to {link}", ctx.route_name());
        if let Err(e) = resp.insert_header(header::LINK, link) {
            warn!("cannot set Link header: {e}");
        }
    }

    /// Replaces an upstream's challenge with the mirror's own, learning the realm on the way
    /// (from the registry itself: an owner's challenge names that node's realm, which is
    /// replaced by this one's without being learned).
    fn relay_challenge(
        &self,
        session: &Session,
        resp: &mut ResponseHeader,
        ctx: &RequestCtx,
        learn: bool,
    ) {
        let Some(upstream) = Challenge::from_headers(&resp.headers) else {
            return;
        };
        let realm = UpstreamRealm::from_challenge(&upstream).filter(|_| learn);
        if let (Some(route), Some(realm)) = (&ctx.route, realm) {
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
            &self.mirror_realm(session.req_header(), over_tls(session), ctx),
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

    /// Acts on an upstream response header: follows redirects, relays challenges, learns
    /// realms, names digests.
    pub(super) async fn on_upstream_response(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let status = resp.status.as_u16();
        let Some(hop) = ctx.hop.as_ref() else {
            return Ok(());
        };
        if matches!(
            hop.kind,
            HopKind::Registry | HopKind::Realm | HopKind::RealmDiscovery
        ) {
            let outages = &self.shared.outages;
            if !offline::unavailable(status) {
                outages.mark_up(ctx.route_name());
            } else {
                outages.mark_down(ctx.route_name(), &format!("answered {status}"));
                // `/v2/` and tokens: the mirror answers them itself (`fail_to_proxy`).
                if self
                    .offline_answer(session.req_header(), over_tls(session), ctx)
                    .is_some()
                {
                    return Err(Error::explain(
                        HTTPStatus(status),
                        format!("upstream answered {status}"),
                    )
                    .into_up());
                }
            }
        }
        if hop.kind == HopKind::Registry {
            self.relay_link(resp, ctx);
        }
        if hop.kind == HopKind::Peer {
            METRICS
                .peer_requests
                .with_label_values(&["out", crate::metrics::status_class(status)])
                .inc();
        }
        if status == 200
            && matches!(
                hop.kind,
                HopKind::Registry | HopKind::Redirect | HopKind::Peer
            )
        {
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
            HopKind::Registry | HopKind::Peer if status == 401 => {
                self.relay_challenge(session, resp, ctx, hop.kind == HopKind::Registry);
                Ok(())
            }
            HopKind::RealmDiscovery => {
                let challenge = Challenge::from_headers(&resp.headers);
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
}
