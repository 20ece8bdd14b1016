//! The config file's surface: what operators write, as serde sees it. Nothing here is
//! validated beyond its YAML type; `super::Config::from_file` turns it into runtime values.

use std::collections::BTreeMap;

use pingora::server::configuration::ServerConf;
use serde::Deserialize;

/// The whole file. Unknown keys are reported by `super::load` (including under `pingora:`,
/// whose own type would silently ignore them).
#[derive(Debug, Default, Deserialize)]
pub struct FileConfig {
    /// Pingora's own settings: threads, pid_file, upgrade_sock, grace periods, ...
    #[serde(default)]
    pub pingora: ServerConf,
    /// Plain HTTP listeners, `ip:port`.
    pub listen: Option<Vec<String>>,
    /// Builds the standard host routes `docker.<domain>`, `quay.<domain>`, ...
    pub domain: Option<String>,
    /// The route for a Host that matches nothing.
    pub default_route: Option<String>,
    /// Added or overridden routes, by name.
    #[serde(default)]
    pub routes: BTreeMap<String, RouteFile>,
    /// Pinned addresses: host name -> `ip` or `ip:port`.
    #[serde(default)]
    pub resolve: BTreeMap<String, String>,
    #[serde(default)]
    pub redirects: RedirectsFile,
    #[serde(default)]
    pub upstream: UpstreamFile,
    #[serde(default)]
    pub cache: CacheFile,
    /// The admin listener: /metrics, /healthz, /stats.
    pub admin: Option<AdminFile>,
    /// Per-client limits.
    #[serde(default)]
    pub limits: LimitsFile,
    /// Repository allow and block lists.
    #[serde(default)]
    pub repositories: RepositoriesFile,
    /// Networks whose X-Forwarded-For / X-Forwarded-Proto are believed.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// HTTPS listeners.
    pub tls: Option<TlsFile>,
    /// `http` or `https`: the scheme clients use to reach the mirror, for auth realms
    /// (needed behind a TLS-terminating load balancer).
    pub public_scheme: Option<String>,
    /// Several nodes acting as one cache.
    pub cluster: Option<ClusterFile>,
    /// Images warmed at start and on a schedule.
    pub prefetch: Option<PrefetchFile>,
}

#[derive(Debug, Default, Deserialize)]
pub struct PrefetchFile {
    /// `REGISTRY/REPOSITORY[:TAG|@DIGEST]`, Docker Hub short names allowed.
    #[serde(default)]
    pub images: Vec<String>,
    /// `os/arch[/variant]`; every platform when empty.
    #[serde(default)]
    pub platforms: Vec<String>,
    /// Warm again this often (tags re-resolved); only at start when absent.
    pub every: Option<String>,
    /// Blobs fetched at once.
    pub concurrency: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
pub struct ClusterFile {
    /// This node's peer address (`ip:port`): its peer listener, as the others reach it.
    pub node: Option<String>,
    /// Every member's peer address, this node's included.
    #[serde(default)]
    pub peers: Vec<String>,
    /// A file holding the secret peer requests are signed with (the same on every node).
    pub secret_file: Option<String>,
    /// Keep a local copy of what came through an owner (default true).
    pub keep_local: Option<bool>,
    /// Redis 7 or Valkey holding the shared state (`redis://host:port/db`).
    pub redis: Option<String>,
    /// How long a forwarded request waits on a member per read (default 15s).
    pub peer_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RouteFile {
    pub upstream: Option<String>,
    /// One host name that selects this route.
    pub host: Option<String>,
    /// More host names that select this route.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// The registry name for `?ns=` and path prefixes (default: the upstream's host).
    pub registry: Option<String>,
    /// Docker Hub naming rules (`library/`); default true for registry `docker.io`.
    pub docker_hub: Option<bool>,
    /// Credentials for the upstream, used when a client brings none.
    pub credentials: Option<CredentialsFile>,
    /// Content fetched through this route is public: cached entries are served to anyone.
    pub public: Option<bool>,
}

/// Upstream credentials: a username with a password, or a bearer token; each secret given
/// inline, by environment variable, or by file (exactly one way).
#[derive(Debug, Default, Deserialize)]
pub struct CredentialsFile {
    pub username: Option<String>,
    pub password: Option<String>,
    pub password_env: Option<String>,
    pub password_file: Option<String>,
    pub token: Option<String>,
    pub token_env: Option<String>,
    pub token_file: Option<String>,
    /// Repositories (globs) these credentials publish to every client of the mirror.
    #[serde(default)]
    pub share: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RedirectsFile {
    pub follow: Option<Vec<String>>,
    pub to_client: Option<Vec<String>>,
    pub other: Option<String>,
    pub max_hops: Option<u8>,
}

#[derive(Debug, Default, Deserialize)]
pub struct UpstreamFile {
    pub connect_timeout: Option<String>,
    pub read_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub dns_ttl: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct CacheFile {
    pub dir: Option<String>,
    pub max_size: Option<String>,
    pub tag_ttl: Option<String>,
    /// How long past `tag_ttl` a tag is still served while the upstream is unavailable.
    pub stale_for: Option<String>,
    /// Larger objects are streamed to the client and not kept.
    pub max_object_size: Option<String>,
    /// Most cold fills writing to disk at once.
    pub max_fills: Option<usize>,
    /// How long a repository's public/private verdict is trusted.
    pub verdict_ttl: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct AdminFile {
    pub listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct LimitsFile {
    pub requests_per_second: Option<u32>,
    pub blob_downloads_per_client: Option<u32>,
    /// Open downstream connections per process (0 = off).
    pub max_connections: Option<usize>,
    /// Largest request head, a size.
    pub request_head_max: Option<String>,
    /// Deadline for a whole request head, a duration.
    pub request_head_timeout: Option<String>,
    /// A stalled write to a client ends the response after this (a duration; 0s = off).
    pub send_timeout: Option<String>,
    /// Bytes per second each write must at least reach (a size; 0 = off).
    pub min_send_rate: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RepositoriesFile {
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub block: Vec<String>,
}

/// One value or a list of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct TlsFile {
    pub listen: OneOrMany,
    /// Certificate and key pairs; the first also answers names no certificate covers.
    pub certificates: Vec<CertificateFile>,
    /// Offer HTTP/2 by ALPN (default true).
    pub http2: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub struct CertificateFile {
    pub cert: String,
    pub key: String,
}
