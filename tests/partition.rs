//! A partition, made with a network namespace (loopback ports cannot be cut): node C runs in
//! a namespace of its own, joined to the host by three veth pairs: its main link (clients,
//! the upstream, node A), a link to Redis and a link to node B. Taking the host end of a pair
//! down cuts exactly that path the way a partition does: packets vanish and connections
//! time out; nothing is refused. Cut off from Redis and from B, C keeps serving correct
//! bytes, each object still fetched once; healed, it rejoins.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::hub::{self, Hub};
use common::redis::Redis;
use common::registry::noise;
use common::{free_port, skip, Mirror};
use pullthrough::cluster::{Cluster, ClusterConfig, Owner};

const NS: &str = "ptpart";
const SECRET: &str = "a cluster secret of enough bytes";

/// One veth pair between the host and the namespace, on its own /30.
struct Link {
    host: &'static str,
    inner: &'static str,
    host_ip: [u8; 4],
    inner_ip: [u8; 4],
}

const MAIN: Link = Link {
    host: "ptp-main-h",
    inner: "ptp-main-c",
    host_ip: [10, 231, 1, 1],
    inner_ip: [10, 231, 1, 2],
};
const TO_REDIS: Link = Link {
    host: "ptp-redis-h",
    inner: "ptp-redis-c",
    host_ip: [10, 231, 2, 1],
    inner_ip: [10, 231, 2, 2],
};
const TO_B: Link = Link {
    host: "ptp-b-h",
    inner: "ptp-b-c",
    host_ip: [10, 231, 3, 1],
    inner_ip: [10, 231, 3, 2],
};

fn ip(cmd: &[&str]) -> bool {
    Command::new("ip")
        .args(cmd)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn must(cmd: &[&str]) {
    assert!(ip(cmd), "ip {}", cmd.join(" "));
}

fn dotted(a: [u8; 4]) -> String {
    IpAddr::from(a).to_string()
}

/// The namespace and its links; removed when dropped (and before, if a run left them).
struct Net;

impl Net {
    fn create() -> Option<Net> {
        common::require_program("ip", "iproute2");
        Net::remove();
        if !ip(&["netns", "add", NS]) {
            skip("cannot create a network namespace here (needs root or CAP_SYS_ADMIN)");
            return None;
        }
        let net = Net;
        for link in [&MAIN, &TO_REDIS, &TO_B] {
            must(&[
                "link", "add", link.host, "type", "veth", "peer", "name", link.inner,
            ]);
            must(&["link", "set", link.inner, "netns", NS]);
            let host_ip = format!("{}/30", dotted(link.host_ip));
            must(&["addr", "add", &host_ip, "dev", link.host]);
            must(&["link", "set", link.host, "up"]);
            let inner_ip = format!("{}/30", dotted(link.inner_ip));
            must(&[
                "netns", "exec", NS, "ip", "addr", "add", &inner_ip, "dev", link.inner,
            ]);
            must(&["netns", "exec", NS, "ip", "link", "set", link.inner, "up"]);
        }
        must(&["netns", "exec", NS, "ip", "link", "set", "lo", "up"]);
        Some(net)
    }

    fn cut(&self, link: &Link) {
        must(&["link", "set", link.host, "down"]);
    }

    fn heal(&self, link: &Link) {
        must(&["link", "set", link.host, "up"]);
    }

    fn remove() {
        ip(&["netns", "del", NS]);
        for link in [&MAIN, &TO_REDIS, &TO_B] {
            ip(&["link", "del", link.host]);
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        Net::remove();
    }
}

struct Node {
    mirror: Mirror,
    admin: SocketAddr,
}

impl Node {
    async fn stats(&self) -> serde_json::Value {
        let c = common::client(&[], self.admin);
        common::get_json(&c, format!("http://{}/stats", self.admin)).await
    }

    /// Waits (bounded: 15 s) until this node sees `live` live members and Redis `redis_up`.
    async fn wait_for(&self, name: &str, live: usize, redis_up: bool) {
        let mut stats = serde_json::Value::Null;
        for _ in 0..300 {
            stats = self.stats().await;
            let members = stats["cluster"]["members"].as_array().unwrap();
            let seen = members.iter().filter(|m| m["live"] == true).count();
            if seen == live && stats["cluster"]["redis"]["up"] == redis_up {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("node {name} never saw {live} live members and redis up {redis_up}: {stats}");
    }

    async fn accepted_from_peers(&self) -> u64 {
        let c = common::client(&[], self.admin);
        let metrics = c
            .get(format!("http://{}/metrics", self.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix(
                    "pullthrough_peer_requests_total{direction=\"in\",outcome=\"accepted\"} ",
                )
            })
            .map_or(0, |n| n.parse().unwrap())
    }
}

/// Blobs added to the hub until `owned` of them are owned by `by` and `owned` by others.
fn blobs(hub: &Hub, ring: &Cluster, by: SocketAddr, owned: usize, seed: u64) -> Vec<hub::Blob> {
    let (mut mine, mut others) = (Vec::new(), Vec::new());
    for i in 0..500 {
        if mine.len() == owned && others.len() == owned {
            break;
        }
        let data = noise(96 << 10, seed + i);
        let digest = common::sha256(&data);
        let list = match ring.owner(digest.as_bytes(), &[]) {
            Owner::Peer(addr) if addr == by => &mut mine,
            _ => &mut others,
        };
        if list.len() < owned {
            hub.add_blob(data.clone());
            list.push((digest, data));
        }
    }
    mine.into_iter().chain(others).collect()
}

async fn pull_all(node: &Mirror, blobs: &[hub::Blob]) {
    let c = common::client(&[], node.addr());
    let tok = hub::pull_token(&c, node, "library/app", None).await;
    hub::pull_blobs(&c, node, &tok, blobs, "node c").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_cut_off_from_redis_and_one_peer_keeps_serving_and_rejoins() {
    let Some(net) = Net::create() else { return };
    let hub = Hub::start_on(MAIN.host_ip.into()).await;
    let Some(redis) = Redis::start_on(TO_REDIS.host_ip.into()) else {
        return;
    };
    let redis_url = redis.url();
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, SECRET).unwrap();
    // A and B in the host's namespace, their peer listeners where C reaches them: A over the
    // main link, B over its own. C's listeners are on its side of the main link.
    let a_peer = SocketAddr::new(MAIN.host_ip.into(), free_port());
    let b_peer = SocketAddr::new(TO_B.host_ip.into(), free_port());
    let c_ip: IpAddr = MAIN.inner_ip.into();
    let c_peer = SocketAddr::new(c_ip, free_port());
    let peers = [a_peer, b_peer, c_peer];
    let list = peers.map(|p| format!("\"{p}\"")).join(", ");
    let config = |listen: SocketAddr, admin: SocketAddr, peer: SocketAddr, cache: &str| {
        format!(
            "listen: [\"{listen}\"]\ndefault_route: docker\nadmin: {{ listen: \"{admin}\" }}\n\
             redirects: {{ follow: [\".docker.com\", \".cloudflarestorage.com\"], to_client: [] }}\n\
             cache: {{ dir: \"{}/{cache}\" }}\n\
             cluster: {{ node: \"{peer}\", peers: [{list}], secret_file: \"{}\", redis: \"{redis_url}\", peer_timeout: 3s }}\n{}",
            dir.path().display(),
            secret_file.display(),
            hub.mirror_config()
        )
    };
    let local = |port| SocketAddr::from(([127, 0, 0, 1], port));
    let mut nodes = Vec::new();
    for (name, peer) in [("a", a_peer), ("b", b_peer)] {
        let (port, admin) = (free_port(), local(free_port()));
        let mirror = Mirror::start_on(port, &config(local(port), admin, peer, name));
        nodes.push(Node { mirror, admin });
    }
    let (c_port, c_admin) = (free_port(), SocketAddr::new(c_ip, free_port()));
    let c_listen = SocketAddr::new(c_ip, c_port);
    let mirror = Mirror::start_netns(NS, c_ip, c_port, &config(c_listen, c_admin, c_peer, "c"));
    nodes.push(Node {
        mirror,
        admin: c_admin,
    });
    for (node, name) in nodes.iter().zip(["a", "b", "c"]) {
        node.wait_for(name, 3, true).await;
    }
    let c = &nodes[2];
    let ring = Cluster::new(
        ClusterConfig {
            node: c_peer,
            peers: peers.to_vec(),
            secret: SECRET.as_bytes().to_vec(),
            keep_local: true,
            redis: None,
            peer_timeout: pullthrough::cluster::DEFAULT_PEER_TIMEOUT,
        },
        Arc::new(pullthrough::cluster::ring(&peers, None)),
        None,
    );
    hub.add_manifest("library/app", "v1", &hub.add_blob(noise(1024, 1)));
    let before = blobs(&hub, &ring, b_peer, 3, 1000);
    pull_all(&c.mirror, &before).await;

    net.cut(&TO_REDIS);
    net.cut(&TO_B);
    // At once, before C's checks notice: B's objects wait out the peer connect bound, then
    // go to the next member. Every body is right and every object is fetched once.
    let during = blobs(&hub, &ring, b_peer, 3, 2000);
    pull_all(&c.mirror, &during).await;
    pull_all(&c.mirror, &before).await;
    c.wait_for("c", 2, false).await;
    let stats = c.stats().await;
    let members = stats["cluster"]["members"].as_array().unwrap();
    let b = members
        .iter()
        .find(|m| m["addr"] == b_peer.to_string())
        .unwrap();
    assert_eq!(
        (b["live"].clone(), b["share"].as_f64()),
        (false.into(), Some(0.0))
    );
    // The others see nothing wrong.
    nodes[0].wait_for("a", 3, true).await;
    let later = blobs(&hub, &ring, b_peer, 3, 3000);
    pull_all(&c.mirror, &later).await;
    for set in [&before, &during, &later] {
        hub::fetched_once(&hub, set);
    }

    net.heal(&TO_REDIS);
    net.heal(&TO_B);
    c.wait_for("c", 3, true).await;
    // Rejoined: C forwards B's objects to B again.
    let accepted = nodes[1].accepted_from_peers().await;
    let after = blobs(&hub, &ring, b_peer, 3, 4000);
    pull_all(&c.mirror, &after).await;
    hub::fetched_once(&hub, &after);
    assert_eq!(nodes[1].accepted_from_peers().await, accepted + 3);
    let log = c.mirror.log();
    assert!(log.contains("redis unreachable"), "{log}");
    // B's first object went out on a pooled connection that led nowhere: passed over.
    assert!(
        log.contains(&format!(
            "peer {b_peer} unreachable: asking the next member"
        )),
        "{log}"
    );
    assert!(log.contains("redis answers"), "{log}");
}
