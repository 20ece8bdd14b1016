//! A cluster of three mirror nodes in front of one upstream: each object is fetched from the
//! upstream once whichever node its clients reach, a node that goes away costs no pulls, and
//! a peer cannot be impersonated.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::hub::{self, Hub, REGISTRY, STORAGE};
use common::redis::Redis;
use common::registry::noise;
use common::{cache_status, free_port, Mirror};
use pullthrough::cluster::{Cluster, ClusterConfig, Owner, Signer, PEER_HEADER};

const SECRET: &str = "a cluster secret of enough bytes";

/// Three nodes sharing one hub: each has a public listener, a peer listener and an admin one.
struct Nodes {
    nodes: Vec<Mirror>,
    peers: Vec<SocketAddr>,
    admins: Vec<u16>,
    _secret: tempfile::TempDir,
}

impl Nodes {
    /// Starts `n` nodes and waits until each sees every member pass its health check (a
    /// member not yet listening when the first checks ran counts as down until the next).
    async fn start(hub: &Hub, n: usize, extra: &str) -> Nodes {
        Self::start_with(hub, n, extra, None).await
    }

    /// As `start`; with `redis`, the nodes share it and each lists only itself in
    /// `cluster.peers`: they find each other through Redis. `{cache}` in `extra` is each
    /// node's own cache directory.
    async fn start_with(hub: &Hub, n: usize, extra: &str, redis: Option<&Redis>) -> Nodes {
        let nodes = Self::launch(hub, n, extra, redis);
        for i in 0..n {
            nodes.wait_live(i, n).await;
        }
        nodes
    }

    fn launch(hub: &Hub, n: usize, extra: &str, redis: Option<&Redis>) -> Nodes {
        let secret = tempfile::tempdir().unwrap();
        let secret_file = secret.path().join("secret");
        std::fs::write(&secret_file, SECRET).unwrap();
        let peers: Vec<SocketAddr> = (0..n).map(|_| hub::addr(free_port())).collect();
        let list = peers
            .iter()
            .map(|p| format!("\"{p}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let mut nodes = Vec::new();
        let mut admins = Vec::new();
        for (i, peer) in peers.iter().enumerate() {
            let admin = free_port();
            admins.push(admin);
            let (peers, shared) = match redis {
                Some(r) => (format!("\"{peer}\""), format!(", redis: \"{}\"", r.url())),
                None => (list.clone(), String::new()),
            };
            let cache = secret.path().join(format!("cache{i}"));
            let extra = extra.replace("{cache}", &cache.display().to_string());
            nodes.push(Mirror::start(&format!(
                "default_route: docker\nadmin: {{ listen: \"127.0.0.1:{admin}\" }}\n\
                 redirects: {{ follow: [\".docker.com\", \".cloudflarestorage.com\"], to_client: [] }}\n\
                 cluster: {{ node: \"{peer}\", peers: [{peers}], secret_file: \"{}\"{shared} }}\n{extra}{}",
                secret_file.display(),
                hub.mirror_config()
            )));
        }
        Nodes {
            nodes,
            peers,
            admins,
            _secret: secret,
        }
    }

    /// The ring as the nodes build it, to tell which node owns what.
    fn ring(&self) -> Cluster {
        let config = ClusterConfig {
            node: self.peers[0],
            peers: self.peers.clone(),
            secret: SECRET.as_bytes().to_vec(),
            keep_local: true,
            redis: None,
            peer_timeout: pullthrough::cluster::DEFAULT_PEER_TIMEOUT,
        };
        let ring = pullthrough::cluster::ring(&self.peers, None);
        Cluster::new(config, Arc::new(ring), None)
    }

    /// The index of the node owning `digest` while every node is up.
    fn owner_of(&self, digest: &str) -> usize {
        match self.ring().owner(digest.as_bytes(), &[]) {
            Owner::Me => 0,
            Owner::Peer(addr) => self.peers.iter().position(|p| *p == addr).unwrap(),
        }
    }

    async fn stats(&self, i: usize) -> serde_json::Value {
        reqwest::get(format!("http://127.0.0.1:{}/stats", self.admins[i]))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Waits (bounded: 10 s) until node `i` says whether Redis answers.
    async fn wait_redis(&self, i: usize, up: bool) {
        for _ in 0..200 {
            if self.stats(i).await["cluster"]["redis"]["up"] == up {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "node {i} never saw redis {}",
            if up { "up" } else { "down" }
        );
    }

    async fn metrics(&self, i: usize) -> String {
        reqwest::get(format!("http://127.0.0.1:{}/metrics", self.admins[i]))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Waits (bounded: 10 s) until node `i` sees `live` members passing their checks.
    async fn wait_live(&self, i: usize, live: usize) {
        for _ in 0..200 {
            let stats = self.stats(i).await;
            let members = stats["cluster"]["members"].as_array().unwrap().clone();
            if members.iter().filter(|m| m["live"] == true).count() == live {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("node {i} never saw {live} live members");
    }
}

async fn get_blob(c: &reqwest::Client, node: &Mirror, digest: &str, tok: &str) -> (u16, Vec<u8>) {
    let r = c
        .get(node.url(&format!("/v2/library/app/blobs/{digest}")))
        .bearer_auth(tok)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.bytes().await.unwrap().to_vec())
}

/// Upstream fetches of a blob: the registry GETs (then followed to the CDN and storage).
fn blob_fetches(hub: &Hub, digest: &str) -> usize {
    hub.count_method(REGISTRY, "GET", &format!("/blobs/{digest}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn thirty_clients_over_three_nodes_on_one_cold_blob_cause_one_upstream_fetch() {
    thirty_clients_on_one_cold_blob(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_redis_thirty_clients_over_three_nodes_on_one_cold_blob_cause_one_upstream_fetch() {
    let Some(redis) = Redis::start() else { return };
    thirty_clients_on_one_cold_blob(Some(&redis)).await;
}

/// 30 clients spread over three nodes (static peers, or each listing only itself and
/// finding the others through `redis`) on one cold blob held back upstream until every
/// client waits on it.
async fn thirty_clients_on_one_cold_blob(redis: Option<&Redis>) {
    let hub = Hub::start().await;
    let layer = noise(8 << 20, 61);
    let blob = hub.add_blob(layer.clone());
    hub.add_manifest("library/app", "v1", &blob);
    let gate = hub.gate(&blob);
    let nodes = Nodes::start_with(&hub, 3, "", redis).await;
    let c = common::client(&[], nodes.nodes[0].addr());
    let tok = hub::pull_token(&c, &nodes.nodes[0], "library/app", None).await;
    let mut pulls = Vec::new();
    for i in 0..30 {
        let (c, tok, blob) = (c.clone(), tok.clone(), blob.clone());
        let url = nodes.nodes[i % 3].url(&format!("/v2/library/app/blobs/{blob}"));
        pulls.push(tokio::spawn(async move {
            let r = c.get(url).bearer_auth(tok).send().await.unwrap();
            (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
        }));
    }
    // Every client is waiting on the one fill the owner started before it is let go on.
    for _ in 0..200 {
        if hub.count_path(STORAGE, &blob[7..]) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    gate.add_permits(100);
    for pull in pulls {
        let (status, body) = pull.await.unwrap();
        assert_eq!(status, 200);
        assert!(body == layer, "a client got wrong bytes");
    }
    assert_eq!(
        blob_fetches(&hub, &blob),
        1,
        "fetched upstream more than once"
    );
    assert_eq!(hub.count_path(STORAGE, &blob[7..]), 1);
    // The owner's peer listener served the other nodes; nothing crossed in the other way.
    let owner = nodes.owner_of(&blob);
    let metrics = reqwest::get(format!("http://127.0.0.1:{}/metrics", nodes.admins[owner]))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("pullthrough_peer_requests_total{direction=\"in\",outcome=\"accepted\"}"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_pulled_through_each_node_in_turn_costs_one_upstream_get_per_manifest_and_blob() {
    let hub = Hub::start().await;
    let layer = noise(1 << 20, 62);
    let blob = hub.add_blob(layer.clone());
    let manifest = hub.add_manifest("library/app", "v1", &blob);
    let nodes = Nodes::start(&hub, 3, "").await;
    for (i, node) in nodes.nodes.iter().enumerate() {
        let c = common::client(&[], node.addr());
        // A new token for every pull, as docker gets one.
        let tok = hub::pull_token(&c, node, "library/app", None).await;
        let head = c
            .head(node.url("/v2/library/app/manifests/v1"))
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap();
        assert_eq!(head.status(), 200, "node {i}");
        let digest = head.headers()["docker-content-digest"]
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(digest, manifest.digest);
        let got = c
            .get(node.url(&format!("/v2/library/app/manifests/{digest}")))
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap();
        assert_eq!(got.status(), 200, "node {i}");
        assert_eq!(got.bytes().await.unwrap().to_vec(), manifest.body);
        let (status, body) = get_blob(&c, node, &blob, &tok).await;
        assert_eq!(status, 200, "node {i}");
        assert!(body == layer, "node {i} served wrong bytes");
    }
    let manifest_gets = hub.count_method(
        REGISTRY,
        "GET",
        &format!("/v2/library/app/manifests/{}", manifest.digest),
    );
    assert_eq!(manifest_gets, 1, "the manifest was fetched per node");
    assert_eq!(
        hub.count_method(REGISTRY, "GET", "/v2/library/app/manifests/v1"),
        0,
        "a GET by tag costs Docker Hub a pull"
    );
    assert_eq!(
        blob_fetches(&hub, &blob),
        1,
        "the blob was fetched per node: {:?}\n{}",
        hub.seen_by(REGISTRY),
        nodes
            .nodes
            .iter()
            .map(|n| n.log())
            .collect::<Vec<_>>()
            .join("\n----\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_nodes_share_moves_to_the_others_and_pulls_keep_working() {
    let hub = Hub::start().await;
    let mut nodes = Nodes::start(&hub, 3, "").await;
    let layers: Vec<hub::Blob> = (0..24)
        .map(|i| {
            let data = noise(64 << 10, 100 + i);
            (hub.add_blob(data.clone()), data)
        })
        .collect();
    hub.add_manifest("library/app", "v1", &layers[0].0);
    let owned_by_2 = layers
        .iter()
        .filter(|(d, _)| nodes.owner_of(d) == 2)
        .count();
    assert!(owned_by_2 > 0, "no layer is owned by the node to be killed");
    nodes.nodes[2].kill();
    let c = common::client(&[], nodes.nodes[0].addr());
    let tok = hub::pull_token(&c, &nodes.nodes[0], "library/app", None).await;
    // Pulled at once, before the health checks notice (the connection is refused), and again
    // through the other node once they have.
    for node in [0, 1] {
        if node == 1 {
            nodes.wait_live(1, 2).await;
        }
        let name = format!("node {node}");
        hub::pull_blobs(&c, &nodes.nodes[node], &tok, &layers, &name).await;
    }
    hub::fetched_once(&hub, &layers);
    let stats = nodes.stats(0).await;
    let members = stats["cluster"]["members"].as_array().unwrap();
    assert_eq!(members.len(), 3);
    let dead = &members
        .iter()
        .find(|m| m["addr"] == nodes.peers[2].to_string())
        .unwrap();
    assert_eq!(
        (dead["live"].clone(), dead["share"].as_f64()),
        (false.into(), Some(0.0))
    );
    let shares: f64 = members.iter().map(|m| m["share"].as_f64().unwrap()).sum();
    assert!((shares - 1.0).abs() < 1e-6, "{stats}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_listener_takes_only_signed_requests_and_a_client_cannot_pose_as_a_peer() {
    let hub = Hub::start().await;
    let layer = noise(64 << 10, 63);
    let blob = hub.add_blob(layer.clone());
    hub.add_manifest("library/app", "v1", &blob);
    let nodes = Nodes::start(&hub, 2, "limits: { requests_per_second: 2 }\n").await;
    let peer = nodes.peers[1];
    let c = common::client(&[], nodes.nodes[0].addr());
    let tok = hub::pull_token(&c, &nodes.nodes[0], "library/app", None).await;
    let path = format!("/v2/library/app/blobs/{blob}?ns=docker.io");
    let url = format!("http://{peer}{path}");
    let now = SystemTime::now();
    let signer = Signer::new(SECRET.as_bytes().to_vec());
    let good = signer.sign("GET", &path, &nodes.peers[0].to_string(), now);
    let forged = Signer::new(b"another secret, just as long".to_vec()).sign(
        "GET",
        &path,
        &nodes.peers[0].to_string(),
        now,
    );
    let elsewhere = signer.sign(
        "GET",
        "/v2/library/app/blobs/sha256:00",
        &nodes.peers[0].to_string(),
        now,
    );
    for (name, header) in [
        ("unsigned", None),
        ("forged", Some(&forged)),
        ("signed for another path", Some(&elsewhere)),
    ] {
        let mut req = c.get(&url).bearer_auth(&tok);
        if let Some(h) = header {
            req = req.header(PEER_HEADER, h);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 403, "{name}");
    }
    assert_eq!(blob_fetches(&hub, &blob), 0);
    let r = c
        .get(&url)
        .bearer_auth(&tok)
        .header(PEER_HEADER, &good)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.unwrap() == layer);
    // On the public listener a peer header, even a good one, is a client's: limits apply.
    let public = nodes.nodes[1].url(&path);
    let mut limited = 0;
    for _ in 0..10 {
        let r = c
            .get(&public)
            .bearer_auth(&tok)
            .header(PEER_HEADER, &good)
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            limited += 1;
        }
        assert_ne!(r.status(), 403);
        assert!(cache_status(&r) == "hit" || r.status() == 429, "{r:?}");
    }
    assert!(limited > 0, "a client passed the limits as a peer");
}

/// Upstream requests about content (manifests and blobs, by any method, probes included).
fn content_requests(hub: &Hub) -> usize {
    hub.seen_by(REGISTRY)
        .iter()
        .filter(|s| {
            s.path_and_query.contains("/manifests/") || s.path_and_query.contains("/blobs/")
        })
        .count()
}

async fn head_tag(node: &Mirror) -> (u16, String) {
    let c = common::client(&[], node.addr());
    let tok = hub::pull_token(&c, node, "library/app", None).await;
    let r = c
        .head(node.url("/v2/library/app/manifests/v1"))
        .bearer_auth(&tok)
        .header("accept", hub::OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    let digest = r
        .headers()
        .get("docker-content-digest")
        .map(|d| d.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (r.status().as_u16(), digest)
}

#[tokio::test(flavor = "multi_thread")]
async fn nodes_that_list_only_themselves_find_each_other_through_redis() {
    let Some(redis) = Redis::start() else { return };
    let hub = Hub::start().await;
    let layer = noise(256 << 10, 64);
    let blob = hub.add_blob(layer.clone());
    hub.add_manifest("library/app", "v1", &blob);
    let mut nodes = Nodes::start_with(&hub, 3, "", Some(&redis)).await;
    for i in 0..3 {
        let stats = nodes.stats(i).await;
        let members = stats["cluster"]["members"].as_array().unwrap();
        assert_eq!(members.len(), 3, "node {i}: {stats}");
    }
    let c = common::client(&[], nodes.nodes[0].addr());
    let tok = hub::pull_token(&c, &nodes.nodes[0], "library/app", None).await;
    for node in &nodes.nodes {
        let (status, body) = get_blob(&c, node, &blob, &tok).await;
        assert_eq!(status, 200);
        assert!(body == layer, "wrong bytes");
    }
    assert_eq!(blob_fetches(&hub, &blob), 1, "one ring: one upstream fetch");
    // The cluster's totals add up every node's counts (each heartbeat adds what is new).
    let served = 3 * layer.len() as u64;
    let mut totals = serde_json::Value::Null;
    for _ in 0..100 {
        totals = nodes.stats(0).await["cluster"]["redis"]["totals"].clone();
        let bytes: u64 = [
            "bytes_from_cache",
            "bytes_from_upstream",
            "bytes_from_peers",
        ]
        .iter()
        .map(|k| totals[k].as_u64().unwrap_or(0))
        .sum();
        if bytes >= served && totals["requests"].as_u64() >= Some(3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let from_upstream = totals["bytes_from_upstream"].as_u64().unwrap_or(0);
    assert!(from_upstream >= layer.len() as u64, "{totals}");
    assert!(totals["requests"].as_u64() >= Some(3), "{totals}");
    // A node that stops leaves the announced members; the others drop it.
    nodes.nodes[2].stop();
    for i in 0..2 {
        for _ in 0..200 {
            let stats = nodes.stats(i).await;
            if stats["cluster"]["members"].as_array().unwrap().len() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let stats = nodes.stats(i).await;
        assert_eq!(
            stats["cluster"]["members"].as_array().unwrap().len(),
            2,
            "{stats}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tag_refreshed_by_one_node_is_fresh_on_the_others() {
    let Some(redis) = Redis::start() else { return };
    let hub = Hub::start().await;
    let blob = hub.add_blob(noise(64 << 10, 65));
    let manifest = hub.add_manifest("library/app", "v1", &blob);
    let extra = "cache: { dir: \"{cache}\", tag_ttl: 2s }\n";
    let nodes = Nodes::start_with(&hub, 3, extra, Some(&redis)).await;
    for i in 0..3 {
        nodes.wait_redis(i, true).await;
    }
    // The tag's owner learns it for the cluster; the other two take it from Redis once one
    // of them has it: no upstream request and no peer hop.
    let owner = nodes.owner_of("docker.io/library/app:v1");
    let others: Vec<usize> = (0..3).filter(|i| *i != owner).collect();
    let (x, y) = (others[0], others[1]);
    assert_eq!(
        head_tag(&nodes.nodes[x]).await,
        (200, manifest.digest.clone())
    );
    let node = &nodes.nodes[x];
    let c = common::client(&[], node.addr());
    let tok = hub::pull_token(&c, node, "library/app", None).await;
    let got = c
        .get(node.url(&format!("/v2/library/app/manifests/{}", manifest.digest)))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(got.bytes().await.unwrap().to_vec(), manifest.body);
    hub.wait_for_probe("library/app").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    followed_as_known(&hub, &nodes, y, owner, &manifest.digest).await;
    // Stale everywhere: y refreshes it (one HEAD, by the owner), and that is fresh for x.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let tag_heads = || hub.count_method(REGISTRY, "HEAD", "/v2/library/app/manifests/v1");
    let before = tag_heads();
    assert_eq!(
        head_tag(&nodes.nodes[y]).await,
        (200, manifest.digest.clone())
    );
    assert_eq!(
        tag_heads(),
        before + 1,
        "the tag is refreshed with one HEAD"
    );
    followed_as_known(&hub, &nodes, x, owner, &manifest.digest).await;
    let metrics = nodes.metrics(x).await;
    assert!(
        metrics.contains("pullthrough_shared_state_total{kind=\"tag\",outcome=\"hit\"}"),
        "{metrics}"
    );
}

/// HEADs by tag through node `shared` (its pointer stale or missing, a fresh one in Redis)
/// and through the tag's `owner` (its own pointer fresh) answer `digest` with no upstream
/// request and no request from `shared` to a peer.
async fn followed_as_known(hub: &Hub, nodes: &Nodes, shared: usize, owner: usize, digest: &str) {
    let upstream = content_requests(hub);
    let hops = peer_requests_out(&nodes.metrics(shared).await);
    for i in [shared, owner] {
        let answer = head_tag(&nodes.nodes[i]).await;
        assert_eq!(answer, (200, digest.to_owned()), "node {i}");
    }
    let seen = hub.seen_by(REGISTRY);
    assert_eq!(content_requests(hub), upstream, "{seen:?}");
    let hops_now = peer_requests_out(&nodes.metrics(shared).await);
    assert_eq!(hops_now, hops, "node {shared} asked a peer");
}

/// Requests this node sent to peers, whatever their outcome.
fn peer_requests_out(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("pullthrough_peer_requests_total{direction=\"out\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn with_redis_killed_pulls_keep_working_and_the_nodes_recover_when_it_returns() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let hub = Hub::start().await;
    let layers: Vec<hub::Blob> = (0..6)
        .map(|i| {
            let data = noise(128 << 10, 200 + i);
            (hub.add_blob(data.clone()), data)
        })
        .collect();
    let manifest = hub.add_manifest("library/app", "v1", &layers[0].0);
    let extra = "cache: { dir: \"{cache}\" }\n";
    let nodes = Nodes::start_with(&hub, 3, extra, Some(&redis)).await;
    for i in 0..3 {
        nodes.wait_redis(i, true).await;
    }
    redis.kill();
    for i in 0..3 {
        nodes.wait_redis(i, false).await;
    }
    // Degraded: the ring stands on the members last announced, checked by the health checks.
    for (i, node) in nodes.nodes.iter().enumerate() {
        assert_eq!(
            head_tag(node).await,
            (200, manifest.digest.clone()),
            "node {i}"
        );
        let c = common::client(&[], node.addr());
        let tok = hub::pull_token(&c, node, "library/app", None).await;
        hub::pull_blobs(&c, node, &tok, &layers, &format!("node {i}")).await;
    }
    hub::fetched_once(&hub, &layers);
    let metrics = nodes.metrics(0).await;
    assert!(metrics.contains("pullthrough_redis_up 0"), "{metrics}");
    assert!(
        !metrics.contains("pullthrough_redis_errors_total 0\n"),
        "{metrics}"
    );
    redis.run();
    for i in 0..3 {
        nodes.wait_redis(i, true).await;
    }
    assert!(nodes.metrics(0).await.contains("pullthrough_redis_up 1"));
    let log = nodes.nodes[0].log();
    assert!(log.contains("redis unreachable"), "{log}");
    assert!(
        common::loud_lines(&log)
            .iter()
            .all(|l| !l.contains(" ERROR ")),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tag_is_looked_up_once_for_the_cluster_however_many_nodes_ask_at_once() {
    let hub = Hub::start().await;
    let blob = hub.add_blob(noise(64 << 10, 66));
    let manifest = hub.add_manifest("library/app", "v1", &blob);
    let extra = "cache: { dir: \"{cache}\", tag_ttl: 1s }\n";
    let nodes = Nodes::start(&hub, 3, extra).await;
    // One client's token, its requests spread over the nodes by the load balancer (other
    // tokens add their own access checks, one HEAD per credential: tests/ask_once.rs).
    let c = common::client(&[], nodes.nodes[0].addr());
    let tok = hub::pull_token(&c, &nodes.nodes[0], "library/app", None).await;
    let clients: Vec<_> = nodes
        .nodes
        .iter()
        .map(|n| {
            (
                common::client(&[], n.addr()),
                tok.clone(),
                n.url("/v2/library/app/manifests/v1"),
            )
        })
        .collect();
    let tag_heads = || hub.count_method(REGISTRY, "HEAD", "/v2/library/app/manifests/v1");
    // Cold, then stale on every node: each time one upstream HEAD for the whole cluster.
    for round in 1..=2 {
        let mut heads = Vec::new();
        for i in 0..30 {
            let (c, tok, url) = clients[i % 3].clone();
            heads.push(tokio::spawn(async move {
                let r = c
                    .head(url)
                    .bearer_auth(tok)
                    .header("accept", hub::OCI_MANIFEST)
                    .send()
                    .await
                    .unwrap();
                let digest = r.headers().get("docker-content-digest").cloned();
                (
                    r.status().as_u16(),
                    digest.map(|d| d.to_str().unwrap().to_owned()),
                )
            }));
        }
        for head in heads {
            assert_eq!(head.await.unwrap(), (200, Some(manifest.digest.clone())));
        }
        assert_eq!(
            tag_heads(),
            round,
            "round {round}: {:?}",
            hub.seen_by(REGISTRY)
                .iter()
                .filter(|s| s.method == "HEAD")
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
    assert_eq!(
        hub.count_method(REGISTRY, "GET", "/v2/library/app/manifests/v1"),
        0
    );
}
