//! Tags as pointers: a request by tag (GET or HEAD) is answered from its digest's entry
//! through the tag's pointer (`cache::pointer`) while the pointer is fresh (`cache.tag_ttl`).
//! A missing or stale pointer is learned with one upstream HEAD (no Docker Hub pull quota),
//! however many requests for the tag arrive together; while the upstream cannot answer, the
//! last pointer is followed for up to `cache.stale_for`. An upstream that names no digest in
//! its answer leaves the tag to the older path: cached under its own key, and a stale entry
//! checked with one HEAD (`TagChecks`) before it is served again.

use std::collections::HashMap;
use std::sync::Mutex;

use pingora::cache::key::CacheHashKey;

use http::HeaderValue;

use super::*;
use crate::cache::pointer::{TagHead, TagPointer};
use crate::proxy::plan::Canned;
use crate::registry::{Reference, V2Path};
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
    /// Pointer lookups in flight, by pointer key.
    pointers: Mutex<HashMap<[u8; 16], Arc<tokio::sync::OnceCell<PointerCheck>>>>,
}

/// What one upstream HEAD of a tag found.
#[derive(Debug, Clone)]
enum PointerCheck {
    Found(TagPointer),
    /// The upstream answered without a digest to follow (401, 404, no header): the request
    /// goes its own way.
    NotFound,
    Unavailable(String),
}

/// Takes the single-flight cell for `key` in `map` (a new one if none is in flight).
fn in_flight_cell<T>(
    map: &Mutex<HashMap<[u8; 16], Arc<tokio::sync::OnceCell<T>>>>,
    key: [u8; 16],
) -> Arc<tokio::sync::OnceCell<T>> {
    map.lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(key)
        .or_default()
        .clone()
}

/// Lets the cell go once its answer is read (unless a newer one took its place).
fn settle<T>(
    map: &Mutex<HashMap<[u8; 16], Arc<tokio::sync::OnceCell<T>>>>,
    key: [u8; 16],
    cell: &Arc<tokio::sync::OnceCell<T>>,
) {
    let mut in_flight = map.lock().unwrap_or_else(|p| p.into_inner());
    if in_flight.get(&key).is_some_and(|c| Arc::ptr_eq(c, cell)) {
        in_flight.remove(&key);
    }
}

/// What a tag lookup sends: the client's credentials and `Accept` (the pointer's known type
/// when the client names none).
fn lookup_headers<'a>(
    req: &'a RequestHeader,
    known_type: Option<&'a HeaderValue>,
) -> Vec<(http::HeaderName, &'a HeaderValue)> {
    let mut headers = Vec::new();
    for name in [header::AUTHORIZATION, header::ACCEPT] {
        for value in req.headers.get_all(&name) {
            headers.push((name.clone(), value));
        }
    }
    if !req.headers.contains_key(header::ACCEPT) {
        if let Some(media_type) = known_type {
            headers.push((header::ACCEPT, media_type));
        }
    }
    headers
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
        let cell = in_flight_cell(&checks.in_flight, key);
        let outcome = cell
            .get_or_init(|| self.ask_tag(session, meta, &route, &hop.path_and_query))
            .await
            .clone();
        settle(&checks.in_flight, key, &cell);
        match outcome {
            TagCheck::Unchanged => {
                ctx.cache_note = Some("revalidated");
                ForcedFreshness::ForceFresh
            }
            TagCheck::Changed => ForcedFreshness::ForceExpired,
            TagCheck::Unavailable(why) => self.serve_stale(meta, ctx, &why),
        }
    }

    /// Follows a tag's pointer: answers a HEAD by tag from the pointer itself, and rewrites
    /// a GET by tag into one by the digest it points to, learning or refreshing the pointer
    /// first with one coalesced upstream HEAD when it is missing or stale. Leaves the request
    /// as it is when the upstream names no digest for the tag, or cannot answer and no
    /// pointer recent enough stands in.
    pub(super) async fn follow_tag_pointer(
        &self,
        req: &RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Option<Canned> {
        let route = ctx.route.clone()?;
        let accept: Vec<&str> = req
            .headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let key = key::pointer_key(&route, ctx.registry_path()?, &accept)?;
        let s = &self.shared;
        let ttl = &s.cache.ttl;
        let bin = key.combined_bin();
        let known = s.cache.read_pointer(&key, bin).await;
        if let Some(pointer) = known.as_ref().filter(|p| p.age() < ttl.tag_ttl) {
            if !self.may_follow(req, ctx, pointer).await {
                return None;
            }
            return self.point_to(req, ctx, pointer, "hit");
        }
        let path = ctx.registry_path().cloned()?;
        let label = Label::of_pointer(&path)?.to_string();
        // A client without a token on a registry that wants one gets its challenge from the
        // request itself; a HEAD first would only double the 401 (containerd asks so first).
        if !req.headers.contains_key(header::AUTHORIZATION)
            && !ctx.route_credentials
            && s.realms.get(&route.name).is_some()
            && !s.outages.is_down(&route.name)
        {
            return None;
        }
        let cell = in_flight_cell(&s.tag_checks.pointers, bin);
        let target_path = ctx
            .target
            .as_ref()
            .map(|t| t.registry_path_and_query())
            .unwrap_or_default();
        // Set when this request's own HEAD (with its own credentials) learned the pointer.
        let mut asked = false;
        let outcome = cell
            .get_or_init(|| async {
                if let Some(pointer) = self.shared_pointer(&bin, known.as_deref()).await {
                    s.cache.write_pointer(&key, &pointer, &label).await;
                    return PointerCheck::Found(pointer);
                }
                asked = true;
                let known_type = known.as_deref().and_then(|p| p.media_type.as_ref());
                // In a cluster the tag's owner learns it, once for every node.
                let from_owner = match self.tag_owner(ctx) {
                    Some(owner) => {
                        self.ask_owner(req, &route, owner, &target_path, known_type)
                            .await
                    }
                    None => None,
                };
                let asked_upstream = from_owner.is_none();
                let mut check = match from_owner {
                    Some(check) => check,
                    None => {
                        self.ask_pointer(req, &route, &target_path, known_type)
                            .await
                    }
                };
                if let PointerCheck::Found(pointer) = &mut check {
                    pointer.private = learned_privately(req, ctx);
                    // Granted before anyone waiting on this lookup follows the pointer, so
                    // a waiter with the same credentials needs no access check of its own.
                    self.granted_by_answer(req, ctx, pointer);
                    s.cache.write_pointer(&key, pointer, &label).await;
                    if let Some(store) = s.store().filter(|_| asked_upstream) {
                        store
                            .publish_tag(&bin, pointer, ttl.tag_ttl + ttl.stale_for)
                            .await;
                    }
                }
                check
            })
            .await
            .clone();
        settle(&s.tag_checks.pointers, bin, &cell);
        let (pointer, served) = match (outcome, known) {
            (PointerCheck::Found(pointer), known) => {
                if !asked && !self.may_follow(req, ctx, &pointer).await {
                    return None;
                }
                // A pointer asked again: what the cache serves for it was revalidated.
                let served = match known {
                    Some(_) => {
                        debug!(target: CACHE_LOG,
                            "route {}: {path}: pointer revalidated by HEAD",
                            route.name
                        );
                        "revalidated"
                    }
                    None => "miss",
                };
                (pointer, served)
            }
            (PointerCheck::Unavailable(why), Some(last)) => {
                let past = last.age().saturating_sub(ttl.tag_ttl);
                if past > ttl.stale_for {
                    warn!(target: CACHE_LOG,
                        "route {}: {why}; the tag's pointer is {past:?} stale, past cache.stale_for ({:?}): not followed",
                        route.name, ttl.stale_for
                    );
                    return None;
                }
                if !self.may_follow(req, ctx, &last).await {
                    return None;
                }
                warn!(target: CACHE_LOG,
                    "route {}: {why}: following the tag's last pointer ({past:?} stale)",
                    route.name
                );
                (Arc::unwrap_or_clone(last), "stale")
            }
            (PointerCheck::Unavailable(_) | PointerCheck::NotFound, _) => return None,
        };
        self.point_to(req, ctx, &pointer, served)
    }

    /// A pointer another node learned from the upstream within `cache.tag_ttl` and shared
    /// (`cluster::store`), when it is newer than the one this node knows: followed like one
    /// this node learned, so one node's refresh serves the cluster.
    async fn shared_pointer(
        &self,
        bin: &[u8; 16],
        known: Option<&TagPointer>,
    ) -> Option<TagPointer> {
        let shared = self.shared.store()?.tag(bin).await?;
        let newer = known.is_none_or(|k| shared.learned > k.learned);
        (newer && shared.age() < self.shared.cache.ttl.tag_ttl).then_some(shared)
    }

    /// Whether this reader may follow a pointer: always when anyone could have learned it,
    /// else under the access rules of private content (grant, public verdict, or one HEAD
    /// with the reader's credentials). Not followed, the request goes upstream as it came.
    async fn may_follow(
        &self,
        req: &RequestHeader,
        ctx: &RequestCtx,
        pointer: &TagPointer,
    ) -> bool {
        if !pointer.private {
            return true;
        }
        let repo = ctx.registry_path().and_then(|p| p.name());
        let via = repo.map_or("", |r| r.as_str());
        self.may_read_private(req, ctx, via.as_bytes()).await
    }

    /// The upstream just answered this reader's own credentials for the tag: remember the
    /// grant, so the digest it points to (filled with credentials) needs no second HEAD.
    fn granted_by_answer(&self, req: &RequestHeader, ctx: &RequestCtx, pointer: &TagPointer) {
        let (true, Some(route), Some(repo), Some(credential)) = (
            pointer.private,
            ctx.route.as_deref(),
            ctx.registry_path().and_then(|p| p.name()),
            req.headers.get(header::AUTHORIZATION),
        ) else {
            return;
        };
        self.shared
            .cache
            .access
            .grant(&route.name, repo.as_str(), credential.as_bytes());
    }

    /// Follows the pointer for this request: a HEAD is answered from the pointer itself
    /// (`served` is what `X-Cache-Status` says), a GET is rewritten into the request by the
    /// pointer's digest (served from its entry: `served` stands when that is a hit).
    fn point_to(
        &self,
        req: &RequestHeader,
        ctx: &mut RequestCtx,
        pointer: &TagPointer,
        served: &'static str,
    ) -> Option<Canned> {
        debug!(target: CACHE_LOG,
            "route {}: {} points to {}",
            ctx.route_name(),
            ctx.registry_path().map(|p| p.to_string()).unwrap_or_default(),
            pointer.digest
        );
        if req.method == http::Method::HEAD {
            if let Some(head) = TagHead::of(pointer, served) {
                ctx.cache_status = Some(served);
                return Some(Canned::TagHead(head));
            }
        }
        let Some(plan::Target::Registry {
            path: V2Path::Manifest { reference, .. },
            ..
        }) = ctx.target.as_mut()
        else {
            return None;
        };
        *reference = Reference::Digest(pointer.digest.clone());
        // The hop is built from the target on first use.
        ctx.hop = None;
        // "hit" and "miss" are the cache's to say; the others only the pointer knows.
        ctx.cache_note = Some(served).filter(|s| !matches!(*s, "hit" | "miss"));
        None
    }

    /// Asks the tag's owner where it points: a signed HEAD to its peer listener, answered
    /// from the owner's pointer or by the owner's one upstream HEAD (coalesced there for the
    /// whole cluster), under the owner's access rules for these credentials. `None` when the
    /// owner cannot be reached: this node asks the upstream itself.
    async fn ask_owner(
        &self,
        req: &RequestHeader,
        route: &Route,
        owner: std::net::SocketAddr,
        path_and_query: &str,
        known_type: Option<&HeaderValue>,
    ) -> Option<PointerCheck> {
        let s = &self.shared;
        let cluster = s.cluster.as_ref()?;
        let path = super::cluster::owner_path(path_and_query, &route.registry);
        let signed = cluster.signer.sign(
            "HEAD",
            &path,
            &cluster.node_name,
            std::time::SystemTime::now(),
        );
        let signed = HeaderValue::from_str(&signed).ok()?;
        let mut headers = lookup_headers(req, known_type);
        headers.push((
            http::HeaderName::from_static(crate::cluster::PEER_HEADER),
            &signed,
        ));
        let mut timeouts = s.upstream.clone();
        timeouts.connect_timeout = timeouts
            .connect_timeout
            .min(crate::cluster::PEER_CONNECT_TIMEOUT);
        timeouts.read_timeout = cluster.peer_timeout;
        let origin = super::cluster::peer_origin(owner);
        let answer = s
            .side
            .head(&s.resolver, &timeouts, &origin, &path, &headers)
            .await;
        let peer_requests = &METRICS.peer_requests;
        let resp = match answer {
            Ok(resp) => resp,
            Err(e) => {
                peer_requests
                    .with_label_values(&["out", "unreachable"])
                    .inc();
                warn!("peer {owner} unreachable for a tag lookup ({e}): asking the upstream");
                return None;
            }
        };
        let status = resp.status.as_u16();
        peer_requests
            .with_label_values(&["out", crate::metrics::status_class(status)])
            .inc();
        Some(
            match TagPointer::from_answer(&resp).filter(|_| status == 200) {
                Some(pointer) => PointerCheck::Found(pointer),
                None if status >= 500 || status == 429 => {
                    PointerCheck::Unavailable(format!("the tag's owner {owner} answered {status}"))
                }
                None => PointerCheck::NotFound,
            },
        )
    }

    /// The one upstream HEAD that learns where a tag points, with the client's credentials
    /// and `Accept` (the pointer's type when the client names none).
    async fn ask_pointer(
        &self,
        req: &RequestHeader,
        route: &Route,
        path_and_query: &str,
        known_type: Option<&HeaderValue>,
    ) -> PointerCheck {
        let headers = lookup_headers(req, known_type);
        let s = &self.shared;
        if s.outages.is_down(&route.name) {
            return PointerCheck::Unavailable("the upstream is down".into());
        }
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
        let resp = match s
            .outages
            .answered(&route.name, "tag lookup", answer, |r| r.status.as_u16())
        {
            Ok(resp) => resp,
            Err(why) => return PointerCheck::Unavailable(why),
        };
        s.outages.mark_up(&route.name);
        // A challenge teaches the route's realm: the next client without a token is sent
        // straight on (`follow_tag_pointer`).
        if resp.status == 401 {
            let realm = Challenge::from_headers(&resp.headers)
                .as_ref()
                .and_then(UpstreamRealm::from_challenge);
            if let Some(realm) = realm {
                s.realms.learn(&route.name, realm);
            }
        }
        match TagPointer::from_answer(&resp).filter(|_| resp.status == 200) {
            Some(pointer) => PointerCheck::Found(pointer),
            None => {
                debug!(target: CACHE_LOG,
                    "route {}: tag lookup answered {} without a digest to follow",
                    route.name, resp.status
                );
                PointerCheck::NotFound
            }
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
