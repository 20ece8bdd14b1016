//! The cluster's hooks (policy in `crate::cluster`): the peer listener's signature gate, the
//! owner a miss is forwarded to, and the next member when that owner cannot be reached.

use std::net::SocketAddr;

use super::*;
use crate::cluster::{Cluster, Owner, PEER_HEADER};
use crate::proxy::hops::Hop;
use crate::registry::V2Path;
use crate::routes::Route;
use crate::upstream::Origin;

impl Mirror {
    /// On the peer listener, only requests a member signed pass (403 otherwise); they are
    /// marked as from a peer and never forwarded again. (On the public listeners a peer
    /// header means nothing: `sanitize` drops it.)
    pub(super) fn peer_gate(
        &self,
        req: &RequestHeader,
        cluster: &Cluster,
        ctx: &mut RequestCtx,
    ) -> std::result::Result<(), RegistryError> {
        let path = req.uri.path_and_query().map_or("/", |p| p.as_str());
        let signed = req.headers.get(PEER_HEADER).and_then(|v| v.to_str().ok());
        let verdict = cluster.signer.verify(
            req.method.as_str(),
            path,
            signed,
            std::time::SystemTime::now(),
        );
        let outcome = if verdict.is_ok() {
            "accepted"
        } else {
            "refused"
        };
        METRICS
            .peer_requests
            .with_label_values(&["in", outcome])
            .inc();
        match verdict {
            Ok(node) => {
                debug!("{} {path}: from peer {node}", req.method);
                ctx.from_peer = true;
                Ok(())
            }
            Err(why) => {
                warn!("{} {path} on the peer listener refused: {why}", req.method);
                Err(RegistryError::new(
                    403,
                    crate::registry::ErrorCode::Denied,
                    format!("peer listener: {why}"),
                ))
            }
        }
    }

    /// Sends a request for content by digest to its owner, when that is another member and
    /// the request did not come from one. The owner is asked in the upstream's names, routed
    /// by `?ns=` (so it reaches the same route whatever Host, prefix or `ns` the client used),
    /// with the client's Host (its challenges name the realm the client knows) and
    /// credentials.
    pub(super) fn route_to_owner(&self, ctx: &mut RequestCtx) {
        let Some(cluster) = self.shared.cluster.as_ref().filter(|_| !ctx.from_peer) else {
            return;
        };
        let (Some(route), Some(target)) = (ctx.route.as_ref(), ctx.target.as_ref()) else {
            return;
        };
        let Some(key) = owner_key(ctx.registry_path()).filter(|_| self.reachable_by_ns(route))
        else {
            return;
        };
        if let Owner::Peer(owner) = cluster.owner(key.as_bytes(), &ctx.failed_owners) {
            let path = owner_path(&target.registry_path_and_query(), &route.registry);
            ctx.hop = Some(peer_hop(owner, path));
            ctx.owner = Some(owner);
        }
    }

    /// `?ns=` names a registry: a request reaches this route on its owner only if the route
    /// is the first for its registry (a second route to the same registry is served here).
    fn reachable_by_ns(&self, route: &Route) -> bool {
        self.shared
            .routes
            .by_registry(&route.registry)
            .is_some_and(|r| r.name == route.name)
    }

    /// The owner of a tag's pointer (registry, repository and tag), when that is another
    /// member and the request did not come from one: it learns the tag for the cluster.
    pub(super) fn tag_owner(&self, ctx: &RequestCtx) -> Option<SocketAddr> {
        let cluster = self.shared.cluster.as_ref().filter(|_| !ctx.from_peer)?;
        let route = ctx.route.as_deref().filter(|r| self.reachable_by_ns(r))?;
        let V2Path::Manifest { name, reference } = ctx.registry_path()? else {
            return None;
        };
        if reference.is_digest() {
            return None;
        }
        let key = format!("{}/{name}:{reference}", route.registry);
        match cluster.owner(key.as_bytes(), &[]) {
            Owner::Peer(owner) => Some(owner),
            Owner::Me => None,
        }
    }

    /// The owner could not be reached: the next member on the ring, or past them all the
    /// upstream itself. True when there is somewhere to retry.
    pub(super) fn pass_over_owner(&self, ctx: &mut RequestCtx) -> bool {
        let Some(failed) = ctx.owner.take() else {
            return false;
        };
        METRICS
            .peer_requests
            .with_label_values(&["out", "unreachable"])
            .inc();
        warn!("peer {failed} unreachable: asking the next member");
        ctx.failed_owners.push(failed);
        ctx.hop = None;
        self.route_to_owner(ctx);
        true
    }
}

/// What places an object on the ring: its digest (blobs and manifests by digest alone).
fn owner_key(path: Option<&V2Path>) -> Option<String> {
    match path? {
        V2Path::Blob { digest, .. } => Some(digest.to_string()),
        V2Path::Manifest { reference, .. } if reference.is_digest() => Some(reference.to_string()),
        _ => None,
    }
}

/// A request's path as its owner is asked it: in the upstream's names, the route named by
/// `?ns=` (so it reaches the same route whatever Host, prefix or `ns` the client used).
pub(super) fn owner_path(path_and_query: &str, registry: &str) -> String {
    let sep = if path_and_query.contains('?') {
        '&'
    } else {
        '?'
    };
    format!("{path_and_query}{sep}ns={registry}")
}

/// A member's peer listener.
pub(super) fn peer_origin(owner: SocketAddr) -> Origin {
    Origin {
        tls: false,
        host: owner.ip().to_string(),
        port: owner.port(),
    }
}

/// A request to the owner's peer listener (the client's Host and credentials go with it).
fn peer_hop(owner: SocketAddr, path_and_query: String) -> Hop {
    Hop {
        origin: peer_origin(owner),
        path_and_query,
        send_authorization: true,
        kind: HopKind::Peer,
    }
}
