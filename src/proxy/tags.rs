//! Tag checks: a stale cached tag is checked with a HEAD before it is served again.

use super::*;

impl Mirror {
    /// Checks a stale tag with a HEAD carrying the client's credentials and `Accept` (no
    /// Docker Hub pull quota): the same digest refreshes the entry, a new digest fetches it
    /// (GET), and an upstream that fails or limits us leaves the stale manifest served.
    pub(super) async fn check_tag(
        &self,
        session: &Session,
        meta: &CacheMeta,
        ctx: &mut RequestCtx,
    ) -> ForcedFreshness {
        let route = ctx.route.clone();
        let (Some(route), Some(hop)) = (route, ctx.next_hop()) else {
            return ForcedFreshness::ForceExpired;
        };
        let req = session.req_header();
        let mut headers = Vec::new();
        for name in [header::AUTHORIZATION, header::ACCEPT] {
            for value in req.headers.get_all(&name) {
                headers.push((name.clone(), value));
            }
        }
        // A client that named no type: ask for the one cached, or the answer means nothing
        // (distribution: 404 for an OCI manifest asked for without an OCI Accept).
        let cached_type = meta.response_header().headers.get(header::CONTENT_TYPE);
        if !req.headers.contains_key(header::ACCEPT) {
            if let Some(media_type) = cached_type {
                headers.push((header::ACCEPT, media_type));
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
