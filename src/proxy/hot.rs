//! Hot hits: a fresh entry the cache holds in memory (its hot set: manifests, configs,
//! small blobs) is answered as soon as the request is decided (`decide`), without
//! pingora-cache's lookup, hit handler, hit header and range filter: by the express lane
//! on HTTP/1 (`proxy::express`), from `request_filter` otherwise. An entry filled with credentials
//! goes to the readers `may_read_private` admits, as on the cache's path. Everything else
//! takes the cache's path: a range or conditional request, a refused reader, a stale entry,
//! an entry being filled, a request another member owns, a tag whose pointer had news
//! (`cache_note`), an entry on disk only (its first read puts it in memory). Both paths
//! answer the same status, headers and bytes (tests/cache.rs), and `Mirror::finished`
//! counts and logs all of them.

use http::{header, Method};
use log::debug;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::Session;

use super::{responses, Mirror, RequestCtx};
use crate::cache::HotHit;
use crate::registry::reference::Reference;
use crate::registry::V2Path;

/// Request headers that ask for part of a response or a conditional answer: pingora-cache
/// answers those.
const PARTIAL_OR_CONDITIONAL: [header::HeaderName; 6] = [
    header::RANGE,
    header::IF_RANGE,
    header::IF_MATCH,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_UNMODIFIED_SINCE,
];

/// The response head of a hot hit, as the cache's path writes it (before Pingora adds
/// `Date` and `Connection`).
pub fn response_header(hit: &HotHit) -> ResponseHeader {
    let mut header = hit.response_header();
    responses::strip_internal(&mut header);
    // A static word into a header never fails.
    let _ = header.insert_header("X-Cache-Status", "hit");
    header
}

impl Mirror {
    /// Answers a request Pingora read with a hot hit (`decide` found it).
    pub(super) async fn answer_hot(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        hit: HotHit,
    ) -> Result<()> {
        // A body left unread would be drained after the answer, where the head guard counts
        // it as the next head: close instead, as for the mirror's own answers.
        if !session.as_downstream_mut().is_body_empty() {
            session.set_keepalive(None);
        }
        let head_only = session.req_header().method == Method::HEAD;
        let header = response_header(&hit);
        ctx.cache_status = Some("hit");
        debug!(target: super::CACHE_LOG, "route {}: answered from memory", ctx.route_name());
        session
            .write_response_header(Box::new(header), head_only)
            .await?;
        if !head_only {
            session.write_response_body(Some(hit.body()), true).await?;
        }
        Ok(())
    }

    /// The hot entry for the request, if it may be answered from memory (see the module). A
    /// key computed for an entry that is not there is kept for the cache's path
    /// (`cache_key_callback`).
    pub(super) async fn hot_hit(
        &self,
        req: &RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Option<HotHit> {
        if !(req.method == Method::GET || req.method == Method::HEAD)
            || ctx.owner.is_some()
            || ctx.cache_note.is_some()
            || PARTIAL_OR_CONDITIONAL
                .iter()
                .any(|h| req.headers.contains_key(h))
        {
            return None;
        }
        // Content named by its digest: a tag has been turned into its digest by now when its
        // pointer is known.
        match ctx.registry_path()? {
            V2Path::Manifest {
                reference: Reference::Digest(_),
                ..
            }
            | V2Path::Blob { .. } => {}
            _ => return None,
        }
        let key = super::request_cache_key(req, ctx)?;
        let Some(hit) = self.shared.cache.hot_hit(&key) else {
            ctx.cache_key = Some(key);
            return None;
        };
        // Filled with credentials: the same decision as `cache_hit_filter`'s (a reader it
        // refuses takes the cache's path, which asks the upstream with its credentials).
        if let Some(via) = hit.private_mark() {
            if !self.may_read_private(req, ctx, via.as_bytes()).await {
                ctx.cache_key = Some(key);
                ctx.private_refused = true;
                return None;
            }
        }
        Some(hit)
    }
}
