//! Tag checks: a stale cached tag is checked with one HEAD before it is served again, however
//! many requests for it arrive together (`TagChecks`), and served stale while the upstream
//! cannot answer, for up to `cache.stale_for`.

use std::collections::HashMap;
use std::sync::Mutex;

use pingora::cache::key::CacheHashKey;

use super::*;
use crate::routes::Route;

/// What one tag check found; every request that waited on it acts on the same answer.
#[derive(Debug, Clone)]
enum TagCheck {
    /// Same digest upstream: the entry was refreshed.
    Unchanged,
    /// Another digest (or none): fetch the tag again.
    Changed,
    /// The upstream could not answer: serve the cached tag if not too stale.
    Unavailable(String),
}

/// Tag checks in flight, by cache key: the first request for a stale tag asks, the others
/// wait for its answer. Bounded by the stale tags being requested at this moment; an entry
/// leaves when its check ends.
#[derive(Default)]
pub struct TagChecks {
    in_flight: Mutex<HashMap<[u8; 16], Arc<tokio::sync::OnceCell<TagCheck>>>>,
}

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
        let (Some(route), Some(hop)) = (route, ctx.next_hop().cloned()) else {
            return ForcedFreshness::ForceExpired;
        };
        if self.shared.outages.is_down(&route.name) {
            return self.serve_stale(meta, ctx, "the upstream is down");
        }
        let key = session.cache.cache_key().combined_bin();
        let checks = &self.shared.tag_checks;
        let cell = checks
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key)
            .or_default()
            .clone();
        let outcome = cell
            .get_or_init(|| self.ask_tag(session, meta, &route, &hop.path_and_query))
            .await
            .clone();
        {
            let mut in_flight = checks.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            if in_flight.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                in_flight.remove(&key);
            }
        }
        match outcome {
            TagCheck::Unchanged => {
                ctx.cache_note = Some("revalidated");
                ForcedFreshness::ForceFresh
            }
            TagCheck::Changed => ForcedFreshness::ForceExpired,
            TagCheck::Unavailable(why) => self.serve_stale(meta, ctx, &why),
        }
    }

    /// The one HEAD of a tag check, and the meta refresh when the digest is unchanged.
    async fn ask_tag(
        &self,
        session: &Session,
        meta: &CacheMeta,
        route: &Route,
        path_and_query: &str,
    ) -> TagCheck {
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
                path_and_query,
                &headers,
            )
            .await;
        let digest_of = |h: &ResponseHeader| {
            h.headers
                .get(DIGEST_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let resp = match s
            .outages
            .answered(&route.name, "tag check", answer, |r| r.status.as_u16())
        {
            Ok(resp) => resp,
            Err(why) => return TagCheck::Unavailable(why),
        };
        s.outages.mark_up(&route.name);
        if resp.status != 200
            || digest_of(&resp).is_none()
            || digest_of(&resp) != digest_of(meta.response_header())
        {
            debug!(target: CACHE_LOG,
                "route {}: tag check answered {} with another digest: fetching",
                route.name, resp.status
            );
            return TagCheck::Changed;
        }
        debug!(target: CACHE_LOG,
            "route {}: tag unchanged upstream: revalidated by HEAD",
            route.name
        );
        let now = std::time::SystemTime::now();
        let refreshed = CacheMeta::new(
            now + s.cache.ttl.tag_ttl,
            now,
            0,
            s.cache.ttl.stale_for.as_secs() as u32,
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
        TagCheck::Unchanged
    }

    /// Serves a stale tag while the upstream cannot be asked, for up to `cache.stale_for`
    /// past its freshness; after that the client gets the upstream's failure.
    fn serve_stale(&self, meta: &CacheMeta, ctx: &mut RequestCtx, why: &str) -> ForcedFreshness {
        let stale_for = self.shared.cache.ttl.stale_for;
        let past = std::time::SystemTime::now()
            .duration_since(meta.fresh_until())
            .unwrap_or_default();
        if past > stale_for {
            warn!(target: CACHE_LOG,
                "route {}: {why}; the cached tag is {past:?} stale, past cache.stale_for ({stale_for:?}): not served",
                ctx.route_name()
            );
            return ForcedFreshness::ForceExpired;
        }
        warn!(target: CACHE_LOG,
            "route {}: {why}: serving the cached tag ({past:?} stale)",
            ctx.route_name()
        );
        ctx.cache_note = Some("stale");
        ForcedFreshness::ForceFresh
    }
}
