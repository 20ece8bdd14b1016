//! Prometheus metrics, `pullthrough_*`, in the default registry that the admin listener's
//! `/metrics` serves (pingora-prometheus).

use once_cell::sync::Lazy;
use prometheus::{
    register_histogram_vec, register_int_counter, register_int_counter_vec, register_int_gauge,
    register_int_gauge_vec, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
};

use crate::cache::Cache;

/// Every series the mirror exports.
pub struct Metrics {
    /// Requests by route, status class and cache result.
    pub requests: IntCounterVec,
    /// Response body bytes by where they came from: `cache`, `upstream` or `peer` (an owner).
    pub bytes_served: IntCounterVec,
    /// Time from the first upstream attempt to the final upstream response header, by route.
    pub upstream_seconds: HistogramVec,
    pub fills_in_flight: IntGauge,
    pub cache_size: IntGauge,
    pub cache_items: IntGauge,
    pub cache_evictions: IntCounter,
    pub digest_mismatches: IntCounter,
    pub rate_limited: IntCounter,
    /// Downstream connections open now, and refused over `limits.max_connections`.
    pub connections_open: IntGauge,
    pub connections_refused: IntCounter,
    /// Request heads refused before parsing, by reason: `too_large` (431), `timeout` (408).
    pub request_heads_refused: IntCounterVec,
    /// Responses cut because the client read too slowly (`limits.send_timeout`,
    /// `limits.min_send_rate`).
    pub send_timeouts: IntCounter,
    /// Connections refused to internal addresses an upstream named (redirects, realms).
    pub egress_refused: IntCounter,
    pub cache_write_failures: IntCounter,
    /// Cold fills not started, by reason: `max_fills` or `disk_space` (served uncached).
    pub fills_refused: IntCounterVec,
    /// Bytes reserved on the cache's disk by running fills.
    pub fills_reserved_bytes: IntGauge,
    /// Requests between cluster nodes, by direction (`in`: a peer asked us, `out`: we asked
    /// an owner) and outcome (`accepted`, `refused`, `unreachable`, or the status class).
    pub peer_requests: IntCounterVec,
    /// Response body bytes between cluster nodes, by direction.
    pub peer_bytes: IntCounterVec,
    /// Cluster members by state: `live` (passing health checks) or `down`.
    pub cluster_members: IntGaugeVec,
    /// 1 while the cluster's Redis answers, 0 while this node runs without it (degraded).
    pub redis_up: IntGauge,
    /// Calls to Redis that failed or timed out.
    pub redis_errors: IntCounter,
    /// Shared-state lookups and publications in Redis, by kind (`tag`, `verdict`) and outcome
    /// (`hit`, `miss`, `published`).
    pub shared_state: IntCounterVec,
    /// Images prefetched (`pullthrough prefetch`, `prefetch:` in the config), by outcome:
    /// `fetched` (something came from upstream), `cached` (all was here) or `failed`.
    pub prefetch_images: IntCounterVec,
    /// Body bytes prefetch brought into the cache.
    pub prefetch_bytes: IntCounter,
    /// Scheduled warming runs (`prefetch.every`), by outcome: `ok` or `failed` (an image
    /// failed).
    pub prefetch_runs: IntCounterVec,
}

/// The metrics, registered once on first use.
pub static METRICS: Lazy<Metrics> = Lazy::new(|| {
    Metrics {
    requests: register_int_counter_vec!(
        "pullthrough_requests_total",
        "Requests by route, HTTP status class and cache result",
        &["route", "status", "cache"]
    )
    .expect("metric registers once"),
    bytes_served: register_int_counter_vec!(
        "pullthrough_bytes_served_total",
        "Response body bytes sent, by source (cache, upstream, or peer: a cluster owner)",
        &["source"]
    )
    .expect("metric registers once"),
    upstream_seconds: register_histogram_vec!(
        "pullthrough_upstream_response_seconds",
        "Time to the final upstream response header, redirects included, by route",
        &["route"],
        vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]
    )
    .expect("metric registers once"),
    fills_in_flight: register_int_gauge!(
        "pullthrough_cache_fills_in_flight",
        "Cache fills in progress"
    )
    .expect("metric registers once"),
    cache_size: register_int_gauge!(
        "pullthrough_cache_size_bytes",
        "Bytes held in the disk cache"
    )
    .expect("metric registers once"),
    cache_items: register_int_gauge!("pullthrough_cache_items", "Entries held in the disk cache")
        .expect("metric registers once"),
    cache_evictions: register_int_counter!(
        "pullthrough_cache_evictions_total",
        "Entries evicted to fit cache.max_size"
    )
    .expect("metric registers once"),
    digest_mismatches: register_int_counter!(
        "pullthrough_digest_mismatches_total",
        "Fills refused because the content did not match its digest"
    )
    .expect("metric registers once"),
    rate_limited: register_int_counter!(
        "pullthrough_rate_limited_total",
        "Requests refused by the rate limit"
    )
    .expect("metric registers once"),
    connections_open: register_int_gauge!(
        "pullthrough_connections_open",
        "Downstream connections open"
    )
    .expect("metric registers once"),
    connections_refused: register_int_counter!(
        "pullthrough_connections_refused_total",
        "Downstream connections refused over limits.max_connections"
    )
    .expect("metric registers once"),
    request_heads_refused: register_int_counter_vec!(
        "pullthrough_request_heads_refused_total",
        "Request heads refused before parsing: too_large (431) or timeout (408)",
        &["reason"]
    )
    .expect("metric registers once"),
    cache_write_failures: register_int_counter!(
        "pullthrough_cache_write_failures_total",
        "Fills given up because the disk refused a write (the download went on uncached)"
    )
    .expect("metric registers once"),
    fills_refused: register_int_counter_vec!(
        "pullthrough_cache_fills_refused_total",
        "Cold fills not started (the response went to the client uncached), by reason",
        &["reason"]
    )
    .expect("metric registers once"),
    fills_reserved_bytes: register_int_gauge!(
        "pullthrough_cache_fills_reserved_bytes",
        "Disk space reserved by running fills for their declared lengths"
    )
    .expect("metric registers once"),
    egress_refused: register_int_counter!(
        "pullthrough_egress_refused_total",
        "Connections refused to internal addresses named by an upstream (redirects, realms)"
    )
    .expect("metric registers once"),
    peer_requests: register_int_counter_vec!(
        "pullthrough_peer_requests_total",
        "Requests between cluster nodes, by direction (in, out) and outcome",
        &["direction", "outcome"]
    )
    .expect("metric registers once"),
    peer_bytes: register_int_counter_vec!(
        "pullthrough_peer_bytes_total",
        "Response body bytes between cluster nodes: in (served to a peer), out (relayed from an owner)",
        &["direction"]
    )
    .expect("metric registers once"),
    cluster_members: register_int_gauge_vec!(
        "pullthrough_cluster_members",
        "Cluster members by state: live (passing health checks) or down",
        &["state"]
    )
    .expect("metric registers once"),
    redis_up: register_int_gauge!(
        "pullthrough_redis_up",
        "1 while the cluster's Redis answers, 0 while running without it"
    )
    .expect("metric registers once"),
    redis_errors: register_int_counter!(
        "pullthrough_redis_errors_total",
        "Calls to the cluster's Redis that failed or timed out"
    )
    .expect("metric registers once"),
    shared_state: register_int_counter_vec!(
        "pullthrough_shared_state_total",
        "Shared-state lookups and publications in Redis, by kind and outcome",
        &["kind", "outcome"]
    )
    .expect("metric registers once"),
    prefetch_images: register_int_counter_vec!(
        "pullthrough_prefetch_images_total",
        "Images prefetched, by outcome (fetched, cached, failed)",
        &["outcome"]
    )
    .expect("metric registers once"),
    prefetch_bytes: register_int_counter!(
        "pullthrough_prefetch_bytes_total",
        "Body bytes prefetch brought into the cache"
    )
    .expect("metric registers once"),
    prefetch_runs: register_int_counter_vec!(
        "pullthrough_prefetch_runs_total",
        "Scheduled warming runs, by outcome (ok, failed)",
        &["outcome"]
    )
    .expect("metric registers once"),
    send_timeouts: register_int_counter!(
        "pullthrough_send_timeouts_total",
        "Responses cut because the client did not read them fast enough"
    )
    .expect("metric registers once"),
}
});

/// `2xx`, `4xx`, ...; `none` when no response was written.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "none",
    }
}

impl Metrics {
    /// Copies the cache's own counters into the series (called before each scrape).
    pub fn refresh_cache(&self, cache: &Cache) {
        use pingora::cache::eviction::EvictionManager;
        use std::sync::atomic::Ordering::Relaxed;
        let stats = &cache.storage.stats;
        self.fills_in_flight
            .set(stats.fills_in_flight.load(Relaxed) as i64);
        self.cache_size.set(cache.eviction.total_size() as i64);
        self.fills_reserved_bytes
            .set(i64::try_from(cache.fills.reserved()).unwrap_or(i64::MAX));
        self.cache_items.set(cache.eviction.total_items() as i64);
        catch_up(&self.cache_evictions, cache.eviction.evicted_items() as u64);
        catch_up(
            &self.digest_mismatches,
            stats.digest_mismatches.load(Relaxed),
        );
        catch_up(
            &self.cache_write_failures,
            stats.write_failures.load(Relaxed),
        );
    }
}

impl Metrics {
    /// Sets the member gauges from this node's view of the ring.
    pub fn refresh_cluster(&self, members: &[crate::cluster::Member]) {
        let live = members.iter().filter(|m| m.live).count() as i64;
        self.cluster_members.with_label_values(&["live"]).set(live);
        self.cluster_members
            .with_label_values(&["down"])
            .set(members.len() as i64 - live);
    }
}

/// One route's requests as the status page shows them.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RouteTraffic {
    pub requests: u64,
    /// Answered from the cache (`hit`, `stale` or `revalidated`).
    pub from_cache: u64,
    /// Answered with a 5xx.
    pub errors: u64,
    /// Answered from a stale entry or tag pointer while the upstream could not be asked.
    pub stale: u64,
}

impl Metrics {
    /// Every series of `pullthrough_requests_total`: its route, status class and cache
    /// result labels, and its count.
    fn each_request_series(&self, mut each: impl FnMut(&str, &str, &str, u64)) {
        use prometheus::core::Collector;
        for family in self.requests.collect() {
            for m in family.get_metric() {
                let label = |name: &str| {
                    m.get_label()
                        .iter()
                        .find(|l| l.name() == name)
                        .map_or("", |l| l.value())
                };
                let n = m.get_counter().value() as u64;
                each(label("route"), label("status"), label("cache"), n);
            }
        }
    }

    /// Requests per route, from `pullthrough_requests_total`.
    pub fn traffic_by_route(&self) -> std::collections::BTreeMap<String, RouteTraffic> {
        let mut by_route = std::collections::BTreeMap::<String, RouteTraffic>::new();
        self.each_request_series(|route, status, cache, n| {
            let t = by_route.entry(route.to_owned()).or_default();
            t.requests += n;
            if matches!(cache, "hit" | "stale" | "revalidated") {
                t.from_cache += n;
            }
            if status == "5xx" {
                t.errors += n;
            }
            if cache == "stale" {
                t.stale += n;
            }
        });
        by_route
    }

    /// This node's lifetime counts added to the cluster's totals (`cluster::store`):
    /// requests, cache hits, and body bytes served by source.
    pub fn totals(&self) -> [(&'static str, u64); 5] {
        let (mut requests, mut hits) = (0, 0);
        self.each_request_series(|_, _, cache, n| {
            requests += n;
            if cache == "hit" {
                hits += n;
            }
        });
        let bytes = |source: &str| self.bytes_served.with_label_values(&[source]).get();
        [
            ("requests", requests),
            ("hits", hits),
            ("bytes_from_cache", bytes("cache")),
            ("bytes_from_upstream", bytes("upstream")),
            ("bytes_from_peers", bytes("peer")),
        ]
    }
}

/// Moves a counter up to a total kept elsewhere.
fn catch_up(counter: &IntCounter, total: u64) {
    let now = counter.get();
    if total > now {
        counter.inc_by(total - now);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn classes() {
        assert_eq!(super::status_class(204), "2xx");
        assert_eq!(super::status_class(429), "4xx");
        assert_eq!(super::status_class(0), "none");
    }
}
