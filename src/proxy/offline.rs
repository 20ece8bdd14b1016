//! Offline: what the mirror answers itself when a route's upstream, or its token realm, is
//! unreachable, times out, or answers 5xx or 429, so warm pulls go on from the cache.
//!
//! - `/v2/`: the mirror's own challenge when the route's realm is known (clients then ask the
//!   mirror for a token as usual), else an unchallenged 200.
//! - `/v2/auth`: when the realm cannot answer, a mirror token (`OFFLINE_TOKEN`) that stands
//!   for no credential at all: the mirror strips it from every request, so it reads exactly
//!   what an anonymous client may read (content known public; private content only through a
//!   grant still in memory).
//! - Tags are served from the last cached answer for up to `cache.stale_for`, digests from
//!   disk (`tags.rs`, the cache).
//!
//! `Outages` remembers a failed upstream for `OUTAGE_MEMORY`, so an unreachable upstream costs
//! one timeout and not one per request: while it is remembered, `/v2/`, tokens and tag checks
//! are answered without asking.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use log::warn;
use pingora::http::RequestHeader;

use super::plan::{Canned, Target};
use super::{Mirror, RequestCtx};
use crate::registry::V2Path;
use crate::upstream::SideError;

/// How long a failed upstream is believed down before it is asked again.
pub const OUTAGE_MEMORY: Duration = Duration::from_secs(10);

/// The token the mirror hands out when a realm cannot: it grants nothing.
pub const OFFLINE_TOKEN: &str = "pullthrough-offline";

/// Whether an `Authorization` value is the mirror's own offline token.
pub fn is_offline_token(value: &http::HeaderValue) -> bool {
    value
        .as_bytes()
        .strip_prefix(b"Bearer ")
        .is_some_and(|t| t == OFFLINE_TOKEN.as_bytes())
}

/// Whether an upstream answer means "not available now" (as opposed to "refused").
pub fn unavailable(status: u16) -> bool {
    status == 429 || status >= 500
}

/// Routes whose upstream failed recently, by route name. Bounded by the route table: only
/// routes' names are keys.
#[derive(Debug, Default)]
pub struct Outages {
    down_until: Mutex<HashMap<String, Instant>>,
    /// Some route was marked down and not yet seen up: checked first, so the usual case (no
    /// outage) costs every request one atomic load, not a lock.
    any: AtomicBool,
}

impl Outages {
    /// Remembers that `route`'s upstream just failed (logged once per outage).
    pub fn mark_down(&self, route: &str, why: &str) {
        let mut down = self.down_until.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let was_down = down.get(route).is_some_and(|until| *until > now);
        down.insert(route.to_owned(), now + OUTAGE_MEMORY);
        self.any.store(true, Ordering::Release);
        if !was_down {
            warn!(
                "route {route}: upstream unavailable ({why}); answering from the cache for {OUTAGE_MEMORY:?} before asking again"
            );
        }
    }

    /// The upstream answered: it is not down.
    pub fn mark_up(&self, route: &str) {
        if !self.any.load(Ordering::Acquire) {
            return;
        }
        let mut down = self.down_until.lock().unwrap_or_else(|p| p.into_inner());
        if down.remove(route).is_some() {
            log::info!("route {route}: upstream answers again");
        }
        if down.is_empty() {
            self.any.store(false, Ordering::Release);
        }
    }

    /// A side request's answer when the upstream gave one; no answer, a 5xx or a 429 marks
    /// `route` down and comes back as why (`what` names the request in the log).
    pub fn answered<T>(
        &self,
        route: &str,
        what: &str,
        answer: Result<T, SideError>,
        status: impl Fn(&T) -> u16,
    ) -> Result<T, String> {
        let why = match answer {
            Ok(a) if !unavailable(status(&a)) => return Ok(a),
            Ok(a) => format!("{what} answered {}", status(&a)),
            Err(e) => format!("{what} failed: {e}"),
        };
        self.mark_down(route, &why);
        Err(why)
    }

    pub fn is_down(&self, route: &str) -> bool {
        if !self.any.load(Ordering::Acquire) {
            return false;
        }
        let down = self.down_until.lock().unwrap_or_else(|p| p.into_inner());
        down.get(route).is_some_and(|until| *until > Instant::now())
    }
}

impl Mirror {
    /// The mirror's own answer to a request the upstream cannot answer now, when it has one
    /// (`/v2/` and token requests; content comes from the cache or not at all).
    pub(super) fn offline_answer(
        &self,
        req: &RequestHeader,
        tls: bool,
        ctx: &RequestCtx,
    ) -> Option<Canned> {
        match ctx.target.as_ref()? {
            Target::Registry {
                path: V2Path::Ping, ..
            } => {
                let route = ctx.route.as_ref()?;
                Some(match self.shared.realms.get(&route.name) {
                    Some(realm) => Canned::Challenge {
                        realm: self.mirror_realm(req, tls, ctx),
                        service: realm.service.clone(),
                    },
                    None => Canned::ApiVersion,
                })
            }
            Target::Token { .. } => Some(Canned::OfflineToken),
            Target::Registry { .. } => None,
        }
    }
}
