//! A cluster of mirrors acting as one cache (`cluster:` in the config). Each object by digest
//! has an owner node, chosen by consistent hashing (pingora-load-balancing's Ketama) over the
//! members that pass their health checks. A node that misses forwards the request to the
//! owner, signed (`signing`), so only the owner asks the upstream and its single-flight fill
//! serves the whole cluster; the forwarding node streams the owner's bytes to its client as
//! they arrive, and keeps a copy when `keep_local` is on. A signed request is never forwarded
//! again (no loops). When the owner cannot be reached the request goes to the next member on
//! the ring, and past that to the upstream itself.

pub mod signing;
pub mod store;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::health_check::TcpHealthCheck;
use pingora::lb::selection::consistent::KetamaHashing;
use pingora::lb::{Backend, Backends, LoadBalancer};

pub use signing::{BadSignature, Signer, PEER_HEADER};
pub use store::Store;

/// How often each member's peer listener is checked (a TCP connect).
pub const HEALTH_CHECK_EVERY: Duration = Duration::from_secs(1);
/// How long a connection to a member may take, in a health check or a forwarded request,
/// before it counts as down.
pub const PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Ring positions tried before giving up on finding a live owner.
const MAX_RING_STEPS: usize = 256;

/// The validated `cluster:` section.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// This node's peer address: where the others reach it, and its peer listener.
    pub node: SocketAddr,
    /// Every member, this node included.
    pub peers: Vec<SocketAddr>,
    /// The shared secret requests between nodes are signed with.
    pub secret: Vec<u8>,
    /// Whether a node keeps its own copy of what it fetched through an owner.
    pub keep_local: bool,
    /// The shared state's URL (`redis://host:port/db`), if any.
    pub redis: Option<String>,
    /// How long a forwarded request waits on a member for each read before the member is
    /// passed over (while nothing of its answer has arrived) or the transfer fails.
    pub peer_timeout: Duration,
}

/// `cluster.peer_timeout` unless the config says otherwise.
pub const DEFAULT_PEER_TIMEOUT: Duration = Duration::from_secs(15);

/// Who owns an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// This node: it asks the upstream itself.
    Me,
    Peer(SocketAddr),
}

/// The ring and this node's place in it.
pub struct Cluster {
    pub node: SocketAddr,
    /// `node` as signatures name it, formatted once.
    pub node_name: String,
    pub keep_local: bool,
    pub peer_timeout: Duration,
    pub signer: Signer,
    /// The shared state, when `cluster.redis` is set.
    pub store: Option<Arc<Store>>,
    ring: Arc<LoadBalancer<KetamaHashing>>,
}

/// The members a ring is built over: the static peers, and those announced in the shared
/// state (refreshed by its heartbeat).
pub struct Members {
    peers: BTreeSet<Backend>,
    store: Option<Arc<Store>>,
}

#[async_trait]
impl ServiceDiscovery for Members {
    async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        let mut members = self.peers.clone();
        if let Some(store) = &self.store {
            members.extend(store.announced().into_iter().map(backend));
        }
        Ok((members, HashMap::new()))
    }
}

fn backend(addr: SocketAddr) -> Backend {
    Backend {
        addr: pingora::protocols::l4::socket::SocketAddr::Inet(addr),
        weight: 1,
        ext: Default::default(),
    }
}

/// The ring over `peers` and the members `store` announces, health-checked every
/// `HEALTH_CHECK_EVERY` and its members refreshed as often, once it runs as a background
/// service.
pub fn ring(peers: &[SocketAddr], store: Option<Arc<Store>>) -> LoadBalancer<KetamaHashing> {
    let members = Members {
        peers: peers.iter().copied().map(backend).collect(),
        store,
    };
    let mut ring = LoadBalancer::<KetamaHashing>::from_backends(Backends::new(Box::new(members)));
    let mut check = TcpHealthCheck::new();
    check.peer_template.options.connection_timeout = Some(PEER_CONNECT_TIMEOUT);
    ring.set_health_check(check);
    ring.health_check_frequency = Some(HEALTH_CHECK_EVERY);
    ring.update_frequency = Some(HEALTH_CHECK_EVERY);
    ring.parallel_health_check = true;
    // The first members now, not at the first update: discovery never waits.
    ring.update()
        .now_or_never()
        .expect("discovery reads memory only")
        .expect("discovery never fails");
    ring
}

impl Cluster {
    /// Whether a request that came in on `local` came in on this node's peer listener.
    pub fn is_peer_listener(&self, local: Option<SocketAddr>) -> bool {
        local == Some(self.node)
    }

    /// This node's view of the cluster over `ring` (see `ring`).
    pub fn new(
        config: ClusterConfig,
        ring: Arc<LoadBalancer<KetamaHashing>>,
        store: Option<Arc<Store>>,
    ) -> Cluster {
        Cluster {
            store,
            node: config.node,
            node_name: config.node.to_string(),
            keep_local: config.keep_local,
            peer_timeout: config.peer_timeout,
            signer: Signer::new(config.secret),
            ring,
        }
    }

    /// The owner of `key` among the live members, passing over `failed` ones. No live
    /// member: this node.
    pub fn owner(&self, key: &[u8], failed: &[SocketAddr]) -> Owner {
        let chosen = self.ring.select_with(key, MAX_RING_STEPS, |b, healthy| {
            let addr = b.addr.as_inet();
            addr == Some(&self.node) || (healthy && !addr.is_some_and(|a| failed.contains(a)))
        });
        match chosen.as_ref().and_then(|b| b.addr.as_inet()) {
            Some(addr) if *addr != self.node => Owner::Peer(*addr),
            _ => Owner::Me,
        }
    }

    /// The members, whether each passes its health check, and the share of keys each owns
    /// now (estimated over `SHARE_SAMPLES` keys spread like digests).
    pub fn members(&self) -> Vec<Member> {
        let backends = self.ring.backends();
        let mut members: Vec<Member> = backends
            .get_backend()
            .iter()
            .filter_map(|b| {
                Some(Member {
                    addr: *b.addr.as_inet()?,
                    live: backends.ready(b) || b.addr.as_inet() == Some(&self.node),
                    share: 0.0,
                })
            })
            .collect();
        for i in 0..SHARE_SAMPLES {
            let owner = match self.owner(format!("sha256:{i:064x}").as_bytes(), &[]) {
                Owner::Me => self.node,
                Owner::Peer(addr) => addr,
            };
            if let Some(m) = members.iter_mut().find(|m| m.addr == owner) {
                m.share += 1.0 / SHARE_SAMPLES as f64;
            }
        }
        members
    }
}

/// Keys sampled to estimate each member's share of the ring.
const SHARE_SAMPLES: usize = 4096;

/// One member as this node sees it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Member {
    pub addr: SocketAddr,
    pub live: bool,
    /// The fraction of objects it owns, 0 to 1.
    pub share: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(node: usize, peers: &[SocketAddr]) -> Cluster {
        let config = ClusterConfig {
            node: peers[node],
            peers: peers.to_vec(),
            secret: b"0123456789abcdef".to_vec(),
            keep_local: true,
            redis: None,
            peer_timeout: DEFAULT_PEER_TIMEOUT,
        };
        Cluster::new(config, Arc::new(ring(peers, None)), None)
    }

    fn owner_addr(c: &Cluster, key: &str, failed: &[SocketAddr]) -> SocketAddr {
        match c.owner(key.as_bytes(), failed) {
            Owner::Me => c.node,
            Owner::Peer(addr) => addr,
        }
    }

    fn peers(n: u16) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| SocketAddr::from(([10, 0, 0, 1 + i as u8], 9000)))
            .collect()
    }

    #[test]
    fn every_node_names_the_same_owner() {
        let peers = peers(3);
        let nodes: Vec<Cluster> = (0..3).map(|i| cluster(i, &peers)).collect();
        for k in 0..1000 {
            let key = format!("sha256:{k:064x}");
            let owners: Vec<SocketAddr> = nodes.iter().map(|c| owner_addr(c, &key, &[])).collect();
            assert!(owners.iter().all(|o| *o == owners[0]), "{key}: {owners:?}");
        }
    }

    #[test]
    fn a_leaving_node_moves_only_its_own_keys_about_one_in_n() {
        let peers = peers(4);
        let c = cluster(0, &peers);
        let gone = peers[3];
        let keys = 10_000;
        let mut moved = 0;
        for k in 0..keys {
            let key = format!("sha256:{k:064x}");
            let before = owner_addr(&c, &key, &[]);
            let after = owner_addr(&c, &key, &[gone]);
            if before != after {
                assert_eq!(before, gone, "{key} moved off a node that stayed");
                assert_ne!(after, gone);
                moved += 1;
            }
        }
        let share = moved as f64 / keys as f64;
        assert!((0.15..0.35).contains(&share), "{share} of the keys moved");
    }

    #[test]
    fn shares_add_up_and_a_failed_member_owns_nothing() {
        let peers = peers(3);
        let c = cluster(0, &peers);
        let members = c.members();
        assert_eq!(members.len(), 3);
        let total: f64 = members.iter().map(|m| m.share).sum();
        assert!((total - 1.0).abs() < 1e-9);
        assert!(
            members.iter().all(|m| m.live && m.share > 0.15),
            "{members:?}"
        );
    }
}
