//! Admission: who the client is (trusted proxies), and whether its request passes the
//! per-client limits and the repository lists.

use super::*;

impl Mirror {
    /// The client: its address and forwarded scheme, believed only from trusted proxies.
    pub(super) fn client_info(&self, peer: Option<IpAddr>, req: &RequestHeader) -> ClientInfo {
        let peer = peer.unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let headers = &req.headers;
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
    pub(super) fn admit(
        &self,
        client: ClientInfo,
        method: &http::Method,
        plan: Plan,
        from_peer: bool,
    ) -> std::result::Result<(Plan, Option<DownloadSlot>), Canned> {
        let s = &self.shared;
        // A peer's request passed the limits on the node the client reached; counting the
        // peer here as one client would throttle the whole cluster's traffic through it.
        if matches!(plan, Plan::Respond(Canned::Healthy)) || from_peer {
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
}
