//! The cluster's shared state in Redis 7 or Valkey (`cluster.redis`), through redis-rs's
//! connection manager (one multiplexed connection, reconnected on failure):
//!
//! - **membership**: each node announces its peer address every `HEARTBEAT_EVERY` in a
//!   sorted set scored by time; the members heard from within `MEMBER_TTL` join the static
//!   peers on the ring (`cluster::Members`), so a node joins or leaves without editing the
//!   others' config;
//! - **tag pointers**: where a tag pointed when some node last asked the upstream, so one
//!   node's refresh is fresh for all (one upstream HEAD per tag per `cache.tag_ttl`);
//! - **public verdicts**: a repository found public by one node is public for all, for the
//!   verdict's life (grants of credentials are never shared: they stay in each node's memory);
//! - **totals**: cluster-wide request and byte counters, for `/stats`.
//!
//! Every value is sealed with the cluster secret (`Signer::seal`): write access to Redis
//! alone cannot add a member, point a tag elsewhere or make a private repository public.
//!
//! Redis is never in the way. A request waits at most `WAIT` for it; when a call fails the
//! store is marked down (logged once, `pullthrough_redis_up` 0) and requests stop asking it
//! until the next heartbeat gets an answer. Down, the nodes keep serving from their static
//! peers and local state.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use log::{info, warn};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::Signer;
use crate::cache::pointer::TagPointer;
use crate::metrics::METRICS;

/// How often a node announces itself and reads the members and totals.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// A member not heard from for this long is no longer announced.
pub const MEMBER_TTL: Duration = Duration::from_secs(5);
/// The longest a request waits on Redis before going on without it.
pub const WAIT: Duration = Duration::from_millis(250);

const MEMBERS: &str = "pullthrough:members";
const TOTALS: &str = "pullthrough:totals";

/// The shared state and whether it answers now.
pub struct Store {
    client: redis::Client,
    /// Set by the heartbeat when it starts (the manager lives on its runtime).
    conn: OnceLock<ConnectionManager>,
    up: AtomicBool,
    signer: Signer,
    node: SocketAddr,
    /// This node's entry in the member set, sealed once.
    announcement: String,
    /// Members heard from within `MEMBER_TTL`, as of the last heartbeat.
    announced: Mutex<BTreeSet<SocketAddr>>,
    /// Cluster-wide totals as of the last heartbeat.
    totals: Mutex<BTreeMap<String, u64>>,
    /// This node's totals as last added to the cluster's.
    reported: Mutex<HashMap<&'static str, u64>>,
}

impl Store {
    /// A store at `url` (not connected until its heartbeat runs). Errors on a malformed URL.
    pub fn new(url: &str, secret: Vec<u8>, node: SocketAddr) -> redis::RedisResult<Store> {
        let signer = Signer::new(secret);
        let announcement = signer.seal(MEMBERS, &node.to_string());
        Ok(Store {
            client: redis::Client::open(url)?,
            conn: OnceLock::new(),
            up: AtomicBool::new(false),
            signer,
            node,
            announcement,
            announced: Mutex::default(),
            totals: Mutex::default(),
            reported: Mutex::default(),
        })
    }

    /// Whether the last call to Redis got an answer.
    pub fn is_up(&self) -> bool {
        self.up.load(Relaxed)
    }

    /// Members heard from within `MEMBER_TTL` as of the last heartbeat (the last known ones
    /// while Redis is down: the health checks judge them meanwhile).
    pub fn announced(&self) -> BTreeSet<SocketAddr> {
        lock(&self.announced).clone()
    }

    /// The cluster-wide totals as of the last heartbeat.
    pub fn totals(&self) -> BTreeMap<String, u64> {
        lock(&self.totals).clone()
    }

    /// The connection, when Redis answered lately.
    fn conn(&self) -> Option<ConnectionManager> {
        self.conn.get().filter(|_| self.is_up()).cloned()
    }

    /// One command within `WAIT`, noting a failure.
    async fn ask<T: redis::FromRedisValue>(
        &self,
        what: &str,
        mut conn: ConnectionManager,
        command: &redis::Cmd,
    ) -> Option<T> {
        self.within(what, WAIT, command.query_async(&mut conn))
            .await
    }

    /// Redis's answer if it comes within `bound`; else the store is marked down.
    async fn within<T>(
        &self,
        what: &str,
        bound: Duration,
        answer: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Option<T> {
        match tokio::time::timeout(bound, answer).await {
            Ok(Ok(value)) => Some(value),
            Ok(Err(e)) => {
                self.mark_down(&format!("{what}: {e}"));
                None
            }
            Err(_) => {
                self.mark_down(&format!("{what}: no answer within {bound:?}"));
                None
            }
        }
    }

    fn mark_down(&self, why: &str) {
        METRICS.redis_errors.inc();
        if self.up.swap(false, Relaxed) {
            warn!("redis unreachable ({why}): serving from static peers and local state until it answers");
        }
        METRICS.redis_up.set(0);
    }

    fn mark_up(&self) {
        if !self.up.swap(true, Relaxed) {
            info!("redis answers: shared tag pointers, verdicts and membership resume");
        }
        METRICS.redis_up.set(1);
    }

    /// The value some node sealed under `key`: `None` when Redis did not answer, `Some(None)`
    /// when nothing well sealed is there. Counted as a hit or miss of `kind`.
    async fn read_sealed(&self, kind: &'static str, key: &str) -> Option<Option<String>> {
        let conn = self.conn()?;
        let sealed: Option<String> = self.ask(kind, conn, redis::cmd("GET").arg(key)).await?;
        let value = sealed
            .as_deref()
            .and_then(|s| self.signer.unseal(key, s))
            .map(str::to_owned);
        let outcome = if value.is_some() { "hit" } else { "miss" };
        METRICS
            .shared_state
            .with_label_values(&[kind, outcome])
            .inc();
        Some(value)
    }

    /// Seals `value` under `key` for `life`, counted as a publication of `kind`.
    async fn write_sealed(&self, kind: &'static str, key: &str, value: &str, life: Duration) {
        let Some(conn) = self.conn() else { return };
        let sealed = self.signer.seal(key, value);
        let ms = millis(life).max(1);
        let set = redis::cmd("SET")
            .arg(key)
            .arg(sealed)
            .arg("PX")
            .arg(ms)
            .clone();
        let stored: Option<()> = self.ask(kind, conn, &set).await;
        if stored.is_some() {
            METRICS
                .shared_state
                .with_label_values(&[kind, "published"])
                .inc();
        }
    }

    /// The pointer some node stored for the tag pointer key `bin`, if any and well sealed.
    pub async fn tag(&self, bin: &[u8; 16]) -> Option<TagPointer> {
        let value = self.read_sealed("tag", &tag_key(bin)).await??;
        decode_pointer(&value)
    }

    /// Shares a pointer just learned from the upstream, kept `keep` (the longest a node may
    /// still follow it).
    pub async fn publish_tag(&self, bin: &[u8; 16], pointer: &TagPointer, keep: Duration) {
        self.write_sealed("tag", &tag_key(bin), &encode_pointer(pointer), keep)
            .await;
    }

    /// A repository's public verdict as some node decided it, if current.
    pub async fn verdict(&self, route: &str, repo: &str) -> Option<bool> {
        match self
            .read_sealed("verdict", &verdict_key(route, repo))
            .await??
            .as_str()
        {
            "public" => Some(true),
            "private" => Some(false),
            _ => None,
        }
    }

    /// Shares a verdict this node decided, for `life`.
    pub async fn publish_verdict(&self, route: &str, repo: &str, public: bool, life: Duration) {
        let value = if public { "public" } else { "private" };
        self.write_sealed("verdict", &verdict_key(route, repo), value, life)
            .await;
    }

    /// One heartbeat: announces this node, drops members long gone, reads the live ones,
    /// adds this node's new counts to the totals and reads them back. Marks the store up or
    /// down by the answer.
    pub async fn beat(&self) {
        let Some(mut conn) = self.conn.get().cloned() else {
            return;
        };
        let now = millis(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
        );
        let counts = METRICS.totals();
        let deltas: Vec<(&'static str, u64)> = {
            let reported = lock(&self.reported);
            counts
                .iter()
                .map(|(name, n)| (*name, n.saturating_sub(*reported.get(name).unwrap_or(&0))))
                .filter(|(_, d)| *d > 0)
                .collect()
        };
        let mut pipe = redis::pipe();
        pipe.cmd("ZADD")
            .arg(MEMBERS)
            .arg(now)
            .arg(&self.announcement)
            .ignore();
        pipe.cmd("ZREMRANGEBYSCORE")
            .arg(MEMBERS)
            .arg("-inf")
            .arg(now.saturating_sub(millis(MEMBER_TTL) * 10))
            .ignore();
        pipe.cmd("ZRANGEBYSCORE")
            .arg(MEMBERS)
            .arg(now.saturating_sub(millis(MEMBER_TTL)))
            .arg("+inf");
        for (name, delta) in &deltas {
            pipe.cmd("HINCRBY")
                .arg(TOTALS)
                .arg(*name)
                .arg(*delta)
                .ignore();
        }
        pipe.cmd("HGETALL").arg(TOTALS);
        let answer: Option<(Vec<String>, HashMap<String, u64>)> = self
            .within(
                "heartbeat",
                WAIT.max(HEARTBEAT_EVERY / 2),
                pipe.query_async(&mut conn),
            )
            .await;
        let Some((members, totals)) = answer else {
            return;
        };
        self.mark_up();
        let members = members
            .iter()
            .filter_map(|m| self.signer.unseal(MEMBERS, m)?.parse().ok())
            .collect();
        *lock(&self.announced) = members;
        *lock(&self.totals) = totals.into_iter().collect();
        let mut reported = lock(&self.reported);
        for (name, n) in counts {
            reported.insert(name, n);
        }
    }

    /// Leaves the member set (at shutdown), so the others drop this node without waiting
    /// for `MEMBER_TTL`.
    async fn leave(&self) {
        let Some(conn) = self.conn() else { return };
        let _: Option<()> = self
            .ask(
                "leave",
                conn,
                redis::cmd("ZREM").arg(MEMBERS).arg(&self.announcement),
            )
            .await;
        info!("cluster node {}: left the announced members", self.node);
    }
}

/// Runs a store's heartbeat (a background service). At a stop the node leaves the shared
/// set before the process ends (its farewell).
pub struct Heartbeat {
    pub store: Arc<Store>,
    pub farewells: crate::stop::Farewells,
}

#[async_trait]
impl BackgroundService for Heartbeat {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let store = &self.store;
        let _leave_before_the_end = self.farewells.expect();
        // Reconnection is the manager's: it retries a lost connection on the next call.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(WAIT))
            .set_response_timeout(Some(WAIT))
            .set_number_of_retries(1)
            .set_max_delay(HEARTBEAT_EVERY);
        match store.client.get_connection_manager_lazy(config) {
            Ok(conn) => {
                let _ = store.conn.set(conn);
            }
            Err(e) => {
                warn!("redis: cannot set up a connection: {e}; running without shared state");
                return;
            }
        }
        METRICS.redis_up.set(0);
        let mut beats = tokio::time::interval(HEARTBEAT_EVERY);
        beats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = beats.tick() => store.beat().await,
                _ = shutdown.changed() => {
                    store.leave().await;
                    return;
                }
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn tag_key(bin: &[u8; 16]) -> String {
    format!("pullthrough:tag:{}", hex::encode(bin))
}

fn verdict_key(route: &str, repo: &str) -> String {
    format!("pullthrough:verdict:{route}:{repo}")
}

/// `<learned, unix ms> <private 0|1> <length or -> <digest> <media type or ->`.
fn encode_pointer(p: &TagPointer) -> String {
    let learned = millis(p.learned.duration_since(UNIX_EPOCH).unwrap_or_default());
    let length = p.length.map_or("-".to_string(), |l| l.to_string());
    let media_type = p
        .media_type
        .as_ref()
        .and_then(|t| t.to_str().ok())
        .unwrap_or("-");
    format!(
        "{learned} {} {length} {} {media_type}",
        u8::from(p.private),
        p.digest
    )
}

fn decode_pointer(s: &str) -> Option<TagPointer> {
    let mut parts = s.split(' ');
    let learned = UNIX_EPOCH + Duration::from_millis(parts.next()?.parse().ok()?);
    let private = match parts.next()? {
        "0" => false,
        "1" => true,
        _ => return None,
    };
    let length = match parts.next()? {
        "-" => None,
        l => Some(l.parse().ok()?),
    };
    let digest = parts.next()?.parse().ok()?;
    let media_type = match parts.next()? {
        "-" => None,
        t => Some(http::HeaderValue::from_str(t).ok()?),
    };
    if parts.next().is_some() {
        return None;
    }
    Some(TagPointer {
        digest,
        media_type,
        length,
        learned,
        private,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_survive_the_round_trip_and_junk_is_refused() {
        let digest = format!("sha256:{}", "a".repeat(64));
        let p = TagPointer {
            digest: digest.parse().unwrap(),
            media_type: Some(http::HeaderValue::from_static(
                "application/vnd.oci.image.index.v1+json",
            )),
            length: Some(1234),
            learned: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            private: true,
        };
        assert_eq!(decode_pointer(&encode_pointer(&p)), Some(p.clone()));
        let bare = TagPointer {
            media_type: None,
            length: None,
            private: false,
            ..p
        };
        assert_eq!(decode_pointer(&encode_pointer(&bare)), Some(bare));
        for junk in [
            "",
            "1 0 - sha256:zz -",
            "x 0 - {digest} -",
            "1 2 - {digest} -",
            "1 0 - {digest} - extra",
        ] {
            let junk = junk.replace("{digest}", &digest);
            assert_eq!(decode_pointer(&junk), None, "{junk:?}");
        }
    }
}
