//! Configuration: one YAML file, Pingora's `ServerConf` under `pingora:` and ours beside it.
//!
//! `load` reads the file into the surface types of `file`, refusing unknown keys by their
//! path, and `Config::from_file` validates every value into the runtime `Config`. Every
//! error names the key path and the bad value.

pub mod file;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pingora::server::configuration::ServerConf;

use crate::guard::{ConnectionLimits, Limits, RepoFilter, TrustedProxies};
use crate::redirect::{HostPattern, RedirectAction, RedirectPolicy, DEFAULT_MAX_HOPS};
use crate::routes::{Route, RouteTable, STANDARD_ROUTES};
use crate::tls::SniCertResolver;
use crate::upstream::{Credentials, Origin, Pin};
use file::FileConfig;

/// A config that cannot be used, with the key it is about.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config error at {path}: {message}")]
    Invalid { path: String, message: String },
    #[error("unknown config key {0} (check its spelling and indentation)")]
    UnknownKey(String),
}

fn invalid(path: impl Into<String>, message: impl std::fmt::Display) -> ConfigError {
    ConfigError::Invalid {
        path: path.into(),
        message: message.to_string(),
    }
}

/// The scheme clients use to reach the mirror.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// Upstream connection settings.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub connect_timeout: Duration,
    /// Longest wait for any single read from an upstream.
    pub read_timeout: Duration,
    /// How long an idle pooled connection is kept.
    pub idle_timeout: Duration,
    /// How long a resolved address is used.
    pub dns_ttl: Duration,
}

/// Re-dispatches a request may take besides its redirect hops (realm discovery, the token
/// hop, a connection retry).
const REDISPATCHES_BESIDE_HOPS: usize = 4;

/// Disk cache settings.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub dir: PathBuf,
    pub max_size: u64,
    pub tag_ttl: Duration,
    /// Longest a tag is served past `tag_ttl` while the upstream is unavailable.
    pub stale_for: Duration,
    /// Larger objects pass to the client uncached (at most `max_size`).
    pub max_object_size: u64,
    /// Most cold fills writing to disk at once; more pass to their clients uncached.
    pub max_fills: usize,
    /// How long a repository's public/private verdict is trusted.
    pub verdict_ttl: Duration,
}

/// The validated runtime configuration.
#[derive(Debug)]
pub struct Config {
    pub server: ServerConf,
    pub listen: Vec<SocketAddr>,
    pub routes: RouteTable,
    pub resolve: HashMap<String, Pin>,
    pub redirects: RedirectPolicy,
    pub upstream: UpstreamConfig,
    pub cache: CacheConfig,
    pub public_scheme: Option<Scheme>,
    /// The admin listener, if any.
    pub admin_listen: Option<SocketAddr>,
    pub limits: Limits,
    pub repositories: RepoFilter,
    pub trusted_proxies: TrustedProxies,
    pub tls: Option<TlsConfig>,
    pub cluster: Option<crate::cluster::ClusterConfig>,
    /// Images warmed at start and on a schedule (`prefetch:`).
    pub prefetch: Option<crate::admin::prefetch::Schedule>,
}

/// HTTPS listeners with their certificates, loaded and checked.
#[derive(Debug)]
pub struct TlsConfig {
    pub listen: Vec<SocketAddr>,
    pub certificates: std::sync::Arc<SniCertResolver>,
    pub http2: bool,
}

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text)
}

/// Parses and validates config text.
pub fn parse(text: &str) -> Result<Config, ConfigError> {
    let mut unknown = Vec::new();
    let de = serde_yaml::Deserializer::from_str(text);
    // serde_ignored writes an optional section's step as `?` (`prefetch.?.often`): the
    // operator wrote `prefetch.often`.
    let mut note_unknown =
        |path: serde_ignored::Path<'_>| unknown.push(path.to_string().replace(".?", ""));
    let ignoring = serde_ignored::Deserializer::new(de, &mut note_unknown);
    let file: FileConfig = match serde_path_to_error::deserialize(ignoring) {
        Ok(file) => file,
        Err(e) => {
            let path = match e.path().to_string() {
                p if p == "?" || p == "." => "(file)".to_owned(),
                p => p,
            };
            return Err(invalid(path, e.into_inner()));
        }
    };
    if let Some(key) = unknown.into_iter().next() {
        return Err(ConfigError::UnknownKey(key));
    }
    let mut file = file;
    if !pingora_sets(text, "work_stealing") {
        file.pingora.work_stealing = PINGORA_WORK_STEALING;
    }
    Config::from_file(file)
}

/// pullthrough's default for `pingora.work_stealing` (Pingora's is `true`). Small cache hits
/// finish on the thread that accepted them; stealing adds a cross-thread wake-up and a
/// cross-arena free to most of them: manifest hits at 64 connections on 2 threads went from
/// about 40k to 53k requests/s without it (README, Benchmarks).
const PINGORA_WORK_STEALING: bool = false;

/// Whether the file sets `pingora.<key>` itself (the text parsed already, so this cannot fail
/// in practice; a failure reads as "not set").
fn pingora_sets(text: &str, key: &str) -> bool {
    serde_yaml::from_str::<serde_yaml::Value>(text)
        .ok()
        .and_then(|v| v.get("pingora").and_then(|p| p.get(key)).cloned())
        .is_some()
}

fn duration(
    path: &str,
    value: Option<&String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) => humantime::parse_duration(v).map_err(|e| {
            invalid(
                path,
                format!("{v:?} is not a duration like 30s or 10m: {e}"),
            )
        }),
    }
}

fn size(path: &str, value: Option<&String>, default: u64) -> Result<u64, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) => v
            .parse::<bytesize::ByteSize>()
            .map(|b| b.as_u64())
            .map_err(|e| {
                invalid(
                    path,
                    format!("{v:?} is not a size like 512MiB or 50GiB: {e}"),
                )
            }),
    }
}

/// The connection bounds of `limits:` (see `guard::connection`).
fn connection_limits(file: &file::LimitsFile) -> Result<ConnectionLimits, ConfigError> {
    let defaults = ConnectionLimits::default();
    let request_head_max = size(
        "limits.request_head_max",
        file.request_head_max.as_ref(),
        defaults.request_head_max as u64,
    )?;
    // Below 1 KiB ordinary pulls (a bearer token alone is ~1-2 KiB) would be refused.
    if !(1 << 10..=1 << 20).contains(&request_head_max) {
        return Err(invalid(
            "limits.request_head_max",
            format!("{request_head_max} bytes is outside 1KiB..1MiB"),
        ));
    }
    let request_head_timeout = duration(
        "limits.request_head_timeout",
        file.request_head_timeout.as_ref(),
        defaults.request_head_timeout,
    )?;
    if request_head_timeout.is_zero() {
        return Err(invalid("limits.request_head_timeout", "must be above 0s"));
    }
    let send_timeout = duration(
        "limits.send_timeout",
        file.send_timeout.as_ref(),
        defaults.send_timeout.unwrap_or_default(),
    )?;
    let min_send_rate = size("limits.min_send_rate", file.min_send_rate.as_ref(), 0)?;
    Ok(ConnectionLimits {
        max_connections: file.max_connections.unwrap_or(defaults.max_connections),
        request_head_max: request_head_max as usize,
        request_head_timeout,
        send_timeout: (!send_timeout.is_zero()).then_some(send_timeout),
        min_send_rate: (min_send_rate != 0).then_some(min_send_rate as usize),
    })
}

fn host_patterns(path: &str, list: &[String]) -> Result<Vec<HostPattern>, ConfigError> {
    list.iter()
        .enumerate()
        .map(|(i, p)| p.parse().map_err(|e| invalid(format!("{path}[{i}]"), e)))
        .collect()
}

/// A host name as operators write it: lowercase, no port, no scheme (IPv6 literals allowed).
fn host_name(path: &str, host: &str) -> Result<String, ConfigError> {
    let lower = host.trim().trim_end_matches('.').to_ascii_lowercase();
    let is_name = !lower.is_empty()
        && lower
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if is_name || lower.parse::<std::net::Ipv6Addr>().is_ok() {
        Ok(lower)
    } else {
        Err(invalid(
            path,
            format!("{host:?} is not a host name (no scheme, no port)"),
        ))
    }
}

impl Config {
    /// Validates the surface config into runtime values.
    pub fn from_file(file: FileConfig) -> Result<Config, ConfigError> {
        let default_listen = vec!["0.0.0.0:8080".to_owned()];
        let listen = file
            .listen
            .as_ref()
            .unwrap_or(&default_listen)
            .iter()
            .enumerate()
            .map(|(i, a)| {
                a.parse::<SocketAddr>()
                    .map_err(|_| invalid(format!("listen[{i}]"), format!("{a:?} is not ip:port")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if listen.is_empty() {
            return Err(invalid("listen", "at least one listener is needed"));
        }
        let domain = match &file.domain {
            Some(d) => Some(host_name("domain", d)?),
            None => None,
        };
        let routes = build_routes(&file, domain.as_deref())?;

        let resolve = file
            .resolve
            .iter()
            .map(|(host, addr)| {
                let path = format!("resolve.{host}");
                let pin = addr
                    .parse::<Pin>()
                    .map_err(|_| invalid(&path, format!("{addr:?} is not an ip or ip:port")))?;
                Ok((host_name(&path, host)?, pin))
            })
            .collect::<Result<HashMap<_, _>, ConfigError>>()?;

        let r = &file.redirects;
        let mut redirects = RedirectPolicy::default();
        if let Some(list) = &r.follow {
            redirects.follow = host_patterns("redirects.follow", list)?;
        }
        if let Some(list) = &r.to_client {
            redirects.to_client = host_patterns("redirects.to_client", list)?;
        }
        if let Some(other) = &r.other {
            redirects.other = match other.as_str() {
                "follow" => RedirectAction::Follow,
                "to_client" => RedirectAction::ToClient,
                _ => {
                    return Err(invalid(
                        "redirects.other",
                        format!("{other:?} is not follow or to_client"),
                    ))
                }
            };
        }
        redirects.max_hops = r.max_hops.unwrap_or(DEFAULT_MAX_HOPS);
        if redirects.max_hops == 0 {
            return Err(invalid("redirects.max_hops", "must be at least 1"));
        }

        let u = &file.upstream;
        let upstream = UpstreamConfig {
            connect_timeout: duration(
                "upstream.connect_timeout",
                u.connect_timeout.as_ref(),
                Duration::from_secs(10),
            )?,
            read_timeout: duration(
                "upstream.read_timeout",
                u.read_timeout.as_ref(),
                Duration::from_secs(60),
            )?,
            idle_timeout: duration(
                "upstream.idle_timeout",
                u.idle_timeout.as_ref(),
                Duration::from_secs(60),
            )?,
            dns_ttl: duration(
                "upstream.dns_ttl",
                u.dns_ttl.as_ref(),
                Duration::from_secs(60),
            )?,
        };

        let c = &file.cache;
        let mut cache = CacheConfig {
            dir: PathBuf::from(c.dir.as_deref().unwrap_or("./cache")),
            max_size: size("cache.max_size", c.max_size.as_ref(), 50 << 30)?,
            tag_ttl: duration(
                "cache.tag_ttl",
                c.tag_ttl.as_ref(),
                Duration::from_secs(600),
            )?,
            stale_for: duration(
                "cache.stale_for",
                c.stale_for.as_ref(),
                crate::cache::policy::DEFAULT_STALE_FOR,
            )?,
            max_object_size: 0,
            max_fills: c.max_fills.unwrap_or(256),
            verdict_ttl: duration(
                "cache.verdict_ttl",
                c.verdict_ttl.as_ref(),
                crate::cache::access::VERDICT_TTL,
            )?,
        };
        if cache.max_fills == 0 {
            return Err(invalid("cache.max_fills", "must be larger than 0"));
        }
        // An object larger than the whole cache would be written and then evict everything,
        // itself included: never above max_size.
        let max_object_size = size(
            "cache.max_object_size",
            c.max_object_size.as_ref(),
            u64::MAX,
        )?;
        if max_object_size == 0 {
            return Err(invalid("cache.max_object_size", "must be larger than 0"));
        }
        cache.max_object_size = max_object_size.min(cache.max_size);
        if cache.max_size == 0 {
            return Err(invalid("cache.max_size", "must be larger than 0"));
        }

        let public_scheme = match file.public_scheme.as_deref() {
            None => None,
            Some("http") => Some(Scheme::Http),
            Some("https") => Some(Scheme::Https),
            Some(other) => {
                return Err(invalid(
                    "public_scheme",
                    format!("{other:?} is not http or https"),
                ))
            }
        };

        let mut server = file.pingora.validate().map_err(|e| invalid("pingora", e))?;
        if server.threads == 0 {
            return Err(invalid("pingora.threads", "must be at least 1"));
        }
        // Every followed redirect, and the token realm's discovery, is one of Pingora's
        // retries of the request: too few and a long chain ends in Pingora's error instead of
        // the mirror's "more than max_hops redirects".
        let needed = usize::from(redirects.max_hops) + REDISPATCHES_BESIDE_HOPS;
        server.max_retries = server.max_retries.max(needed);

        let admin_listen = match file.admin.as_ref().and_then(|a| a.listen.as_ref()) {
            None => None,
            Some(a) => Some(
                a.parse::<SocketAddr>()
                    .map_err(|_| invalid("admin.listen", format!("{a:?} is not ip:port")))?,
            ),
        };

        let limits = Limits {
            requests_per_second: file.limits.requests_per_second.unwrap_or(0),
            blob_downloads_per_client: file.limits.blob_downloads_per_client.unwrap_or(0),
            connections: connection_limits(&file.limits)?,
        };
        let repositories = RepoFilter::new(&file.repositories.allow, &file.repositories.block)
            .map_err(|e| invalid("repositories", e))?;
        let trusted_proxies = file
            .trusted_proxies
            .iter()
            .enumerate()
            .map(|(i, p)| {
                p.parse::<ipnet::IpNet>()
                    .or_else(|_| p.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        invalid(
                            format!("trusted_proxies[{i}]"),
                            format!("{p:?} is not an address or CIDR"),
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;

        let tls = match &file.tls {
            None => None,
            Some(t) => {
                let listen = t
                    .listen
                    .to_vec()
                    .iter()
                    .enumerate()
                    .map(|(i, a)| {
                        a.parse::<SocketAddr>().map_err(|_| {
                            invalid(format!("tls.listen[{i}]"), format!("{a:?} is not ip:port"))
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                if t.certificates.is_empty() {
                    return Err(invalid(
                        "tls.certificates",
                        "at least one certificate is needed",
                    ));
                }
                let pairs: Vec<_> = t
                    .certificates
                    .iter()
                    .map(|c| (PathBuf::from(&c.cert), PathBuf::from(&c.key)))
                    .collect();
                let resolver =
                    SniCertResolver::load(&pairs).map_err(|e| invalid("tls.certificates", e))?;
                Some(TlsConfig {
                    listen,
                    certificates: std::sync::Arc::new(resolver),
                    http2: t.http2.unwrap_or(true),
                })
            }
        };

        let cluster = file.cluster.as_ref().map(cluster_config).transpose()?;
        if let Some(c) = &cluster {
            if listen.contains(&c.node) || admin_listen == Some(c.node) {
                return Err(invalid(
                    "cluster.node",
                    "is the peer listener: it must not also be in listen or admin.listen",
                ));
            }
        }

        let prefetch = file
            .prefetch
            .as_ref()
            .map(|p| prefetch_schedule(p, &routes, &listen))
            .transpose()?;

        Ok(Config {
            prefetch,
            cluster,
            tls,
            limits,
            repositories,
            trusted_proxies: TrustedProxies::new(trusted_proxies),
            admin_listen,
            server,
            listen,
            routes,
            resolve,
            redirects,
            upstream,
            cache,
            public_scheme,
        })
    }
}

/// Shortest interval between scheduled warming runs.
const MIN_PREFETCH_EVERY: Duration = Duration::from_secs(60);

fn prefetch_schedule(
    p: &file::PrefetchFile,
    routes: &RouteTable,
    listen: &[SocketAddr],
) -> Result<crate::admin::prefetch::Schedule, ConfigError> {
    use crate::admin::prefetch::{PrefetchRequest, Schedule, MAX_CONCURRENCY};
    use crate::registry::image::{ImageRef, Platform};
    if p.images.is_empty() {
        return Err(invalid("prefetch.images", "name at least one image"));
    }
    if listen.is_empty() {
        return Err(invalid(
            "prefetch",
            "warming pulls through a plain `listen:` address, and none is configured",
        ));
    }
    for (i, image) in p.images.iter().enumerate() {
        let parsed = ImageRef::parse(image, |r| routes.by_registry(r).is_some())
            .map_err(|e| invalid(format!("prefetch.images[{i}]"), format!("{image:?}: {e}")))?;
        if routes.by_registry(&parsed.registry).is_none() {
            return Err(invalid(
                format!("prefetch.images[{i}]"),
                format!("{image:?}: no route has registry {:?}", parsed.registry),
            ));
        }
    }
    for (i, platform) in p.platforms.iter().enumerate() {
        platform
            .parse::<Platform>()
            .map_err(|e| invalid(format!("prefetch.platforms[{i}]"), e))?;
    }
    if let Some(n) = p.concurrency {
        if n == 0 || n > MAX_CONCURRENCY {
            return Err(invalid(
                "prefetch.concurrency",
                format!("{n} is not between 1 and {MAX_CONCURRENCY}"),
            ));
        }
    }
    let every = match &p.every {
        None => None,
        Some(_) => {
            let every = duration("prefetch.every", p.every.as_ref(), MIN_PREFETCH_EVERY)?;
            if every < MIN_PREFETCH_EVERY {
                return Err(invalid("prefetch.every", "must be at least 1m"));
            }
            Some(every)
        }
    };
    Ok(Schedule {
        request: PrefetchRequest {
            images: p.images.clone(),
            platforms: p.platforms.clone(),
            concurrency: p.concurrency,
        },
        every,
    })
}

/// Shortest cluster secret accepted, in bytes.
const MIN_CLUSTER_SECRET: usize = 16;

fn cluster_config(c: &file::ClusterFile) -> Result<crate::cluster::ClusterConfig, ConfigError> {
    let addr = |path: String, a: &str| {
        a.parse::<SocketAddr>()
            .map_err(|_| invalid(path, format!("{a:?} is not ip:port")))
    };
    let node = addr(
        "cluster.node".into(),
        c.node
            .as_deref()
            .ok_or_else(|| invalid("cluster.node", "is required: this node's peer ip:port"))?,
    )?;
    if node.ip().is_unspecified() {
        return Err(invalid(
            "cluster.node",
            "must be the address the other nodes reach, not 0.0.0.0",
        ));
    }
    let peers = c
        .peers
        .iter()
        .enumerate()
        .map(|(i, p)| addr(format!("cluster.peers[{i}]"), p))
        .collect::<Result<Vec<_>, _>>()?;
    if !peers.contains(&node) {
        return Err(invalid(
            "cluster.peers",
            format!("must list this node ({node}) too, so every node sees the same ring"),
        ));
    }
    let path = c.secret_file.as_deref().ok_or_else(|| {
        invalid(
            "cluster.secret_file",
            "is required: peers sign their requests",
        )
    })?;
    let secret = std::fs::read(path)
        .map_err(|e| invalid("cluster.secret_file", format!("cannot read {path}: {e}")))?;
    let secret = secret.trim_ascii().to_vec();
    if secret.len() < MIN_CLUSTER_SECRET {
        return Err(invalid(
            "cluster.secret_file",
            format!("{path} holds fewer than {MIN_CLUSTER_SECRET} bytes"),
        ));
    }
    if let Some(url) = &c.redis {
        redis::Client::open(url.as_str()).map_err(|e| {
            invalid(
                "cluster.redis",
                format!("{url:?} is not a Redis URL (redis://host:port/db): {e}"),
            )
        })?;
    }
    Ok(crate::cluster::ClusterConfig {
        node,
        peers,
        secret,
        keep_local: c.keep_local.unwrap_or(true),
        redis: c.redis.clone(),
        peer_timeout: duration(
            "cluster.peer_timeout",
            c.peer_timeout.as_ref(),
            crate::cluster::DEFAULT_PEER_TIMEOUT,
        )?,
    })
}

/// One secret, given exactly one way: inline, by environment variable, or by file.
fn secret(
    path: &str,
    name: &str,
    inline: &Option<String>,
    env: &Option<String>,
    file: &Option<String>,
) -> Result<Option<String>, ConfigError> {
    match (inline, env, file) {
        (None, None, None) => Ok(None),
        (Some(v), None, None) => Ok(Some(v.clone())),
        (None, Some(var), None) => std::env::var(var).map(Some).map_err(|_| {
            invalid(
                format!("{path}.{name}_env"),
                format!("environment variable {var:?} is not set"),
            )
        }),
        (None, None, Some(f)) => std::fs::read_to_string(f)
            .map(|s| Some(s.trim_end_matches(['\r', '\n']).to_owned()))
            .map_err(|e| {
                invalid(
                    format!("{path}.{name}_file"),
                    format!("cannot read {f:?}: {e}"),
                )
            }),
        _ => Err(invalid(
            path,
            format!("give {name} one way only: {name}, {name}_env or {name}_file"),
        )),
    }
}

/// A route's upstream credentials: username + password, or a token.
fn credentials(path: &str, c: &file::CredentialsFile) -> Result<Credentials, ConfigError> {
    let password = secret(
        path,
        "password",
        &c.password,
        &c.password_env,
        &c.password_file,
    )?;
    let token = secret(path, "token", &c.token, &c.token_env, &c.token_file)?;
    let made = match (&c.username, password, token) {
        (Some(user), Some(password), None) => Credentials::basic(user, &password),
        (None, None, Some(token)) => Credentials::bearer(&token),
        _ => {
            return Err(invalid(
                path,
                "give a username with a password, or a token (a personal access token goes in password)",
            ))
        }
    };
    made.map_err(|e| invalid(path, e))
}

/// The standard routes (hosts under `domain:`), then `routes:` overriding or adding.
fn build_routes(file: &FileConfig, domain: Option<&str>) -> Result<RouteTable, ConfigError> {
    let mut routes: Vec<Route> = STANDARD_ROUTES
        .iter()
        .map(|s| Route {
            name: s.name.to_owned(),
            registry: s.registry.to_owned(),
            hosts: domain
                .map(|d| vec![format!("{}.{d}", s.name)])
                .unwrap_or_default(),
            upstream: Origin::parse(s.upstream).expect("standard upstreams are valid"),
            docker_hub: s.registry == "docker.io",
            credentials: None,
            public: false,
            share: Default::default(),
        })
        .collect();
    for (name, spec) in &file.routes {
        let path = format!("routes.{name}");
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(invalid(&path, "route names are letters, digits, - and _"));
        }
        let existing = routes.iter().position(|r| &r.name == name);
        let upstream = match (&spec.upstream, existing) {
            (Some(u), _) => Origin::parse(u).map_err(|e| invalid(format!("{path}.upstream"), e))?,
            (None, Some(i)) => routes[i].upstream.clone(),
            (None, None) => {
                return Err(invalid(
                    format!("{path}.upstream"),
                    "a new route needs an upstream URL",
                ))
            }
        };
        let mut hosts = Vec::new();
        for (i, h) in spec.host.iter().chain(&spec.hosts).enumerate() {
            hosts.push(host_name(&format!("{path}.host[{i}]"), h)?);
        }
        let registry = match (&spec.registry, existing) {
            (Some(r), _) => host_name(&format!("{path}.registry"), r)?,
            (None, Some(i)) => routes[i].registry.clone(),
            (None, None) => upstream.host.clone(),
        };
        let credentials = match &spec.credentials {
            Some(c) => Some(credentials(&format!("{path}.credentials"), c)?),
            None => existing.and_then(|i| routes[i].credentials.clone()),
        };
        let share = match &spec.credentials {
            Some(c) => crate::guard::repos::RepoGlobs::new(&c.share)
                .map_err(|e| invalid(format!("{path}.credentials.share"), e))?,
            None => Default::default(),
        };
        let route = Route {
            name: name.clone(),
            credentials,
            share,
            public: spec.public.unwrap_or(false),
            docker_hub: spec.docker_hub.unwrap_or(registry == "docker.io"),
            registry,
            hosts,
            upstream,
        };
        match existing {
            Some(i) => {
                // An override keeps the standard host unless it names its own.
                let standard_hosts = std::mem::take(&mut routes[i].hosts);
                routes[i] = Route {
                    hosts: if route.hosts.is_empty() {
                        standard_hosts
                    } else {
                        route.hosts
                    },
                    ..route
                };
            }
            None => routes.push(route),
        }
    }
    RouteTable::new(routes, file.default_route.as_deref()).map_err(|e| match e {
        crate::routes::RouteTableError::UnknownDefault(_) => invalid("default_route", e),
        other => invalid("routes", other),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(yaml: &str) -> String {
        parse(yaml).unwrap_err().to_string()
    }

    #[test]
    fn defaults() {
        let c = parse("{}").unwrap();
        assert_eq!(c.listen, vec!["0.0.0.0:8080".parse().unwrap()]);
        assert_eq!(c.routes.routes().len(), STANDARD_ROUTES.len());
        assert!(c.routes.for_host(Some("x"), None).is_err());
        assert_eq!(c.cache.tag_ttl, Duration::from_secs(600));
        assert_eq!(c.cache.max_size, 50 << 30);
        assert_eq!(c.redirects.max_hops, 5);
        assert_eq!(c.server.max_retries, 16, "Pingora's default covers 5 hops");
        let long = parse("redirects: { max_hops: 40 }\npingora: { max_retries: 3 }\n").unwrap();
        assert_eq!(
            long.server.max_retries, 44,
            "every hop is one of Pingora's retries"
        );
        assert!(!c.server.work_stealing, "pullthrough's default");
        let c = parse("pingora: { threads: 2, work_stealing: true }").unwrap();
        assert!(c.server.work_stealing, "the file's choice");
    }

    #[test]
    fn domain_routes_and_overrides() {
        let c = parse(
            r#"
domain: Example.com
default_route: docker
routes:
  docker: { upstream: "http://127.0.0.1:5000" }
  corp: { host: reg.corp.test, upstream: "http://10.0.0.5:5000" }
resolve: { "registry-1.docker.io": "127.0.0.1:5000", "cdn.test": "127.0.0.2" }
cache: { max_size: 1GiB, tag_ttl: 30s }
"#,
        )
        .unwrap();
        let (quay, _) = c.routes.for_host(Some("quay.example.com"), None).unwrap();
        assert_eq!(quay.upstream.to_string(), "https://quay.io");
        let (docker, _) = c.routes.for_host(Some("docker.example.com"), None).unwrap();
        assert_eq!(docker.upstream.to_string(), "http://127.0.0.1:5000");
        assert!(docker.docker_hub);
        let (corp, _) = c.routes.for_host(Some("reg.corp.test:443"), None).unwrap();
        assert_eq!(
            (corp.registry.as_str(), corp.docker_hub),
            ("10.0.0.5", false)
        );
        assert_eq!(c.resolve["cdn.test"], Pin::Ip("127.0.0.2".parse().unwrap()));
        assert_eq!(c.cache.max_size, 1 << 30);
        assert_eq!(c.cache.tag_ttl, Duration::from_secs(30));
    }

    #[test]
    fn errors_name_their_key() {
        let cases = [
            ("listn: []", "listn"),
            ("pingora: { threads: 2, bogus: 1 }", "pingora.bogus"),
            (
                "routes: { corp: { upstream: 'http://x', hots: [] } }",
                "routes.corp.hots",
            ),
            ("routes: { corp: { host: x } }", "routes.corp.upstream"),
            (
                "routes: { corp: { upstream: 'ftp://x' } }",
                "routes.corp.upstream",
            ),
            ("listen: ['nope']", "listen[0]"),
            ("cache: { tag_ttl: soon }", "cache.tag_ttl"),
            ("cache: { max_size: lots }", "cache.max_size"),
            ("redirects: { follow: ['*.x'] }", "redirects.follow[0]"),
            ("redirects: { other: maybe }", "redirects.other"),
            ("redirects: { max_hops: 0 }", "redirects.max_hops"),
            ("default_route: nowhere", "default_route"),
            ("resolve: { a.test: 'x' }", "resolve.a.test"),
            ("pingora: { threads: many }", "pingora.threads"),
            ("public_scheme: ftp", "public_scheme"),
            ("domain: 'http://x'", "domain"),
            ("trusted_proxies: ['10.0.0.0/33']", "trusted_proxies[0]"),
            ("repositories: { block: ['a[b'] }", "repositories"),
            (
                "limits: { requests_per_second: -1 }",
                "limits.requests_per_second",
            ),
            ("admin: { listen: nowhere }", "admin.listen"),
            ("tls: { listen: '127.0.0.1:1', certificates: [{ cert: /nonexistent, key: /nonexistent }] }", "tls.certificates"),
            ("tls: { listen: 'x', certificates: [] }", "tls.listen[0]"),
            ("routes: { docker: { credentials: { username: a } } }", "routes.docker.credentials"),
            ("routes: { docker: { credentials: { username: a, password: b, password_env: C } } }", "routes.docker.credentials"),
            ("routes: { docker: { credentials: { username: a, password_env: PULLTHROUGH_TEST_UNSET_VAR } } }", "routes.docker.credentials.password_env"),
            ("routes: { docker: { credentials: { token_file: /nonexistent/token } } }", "routes.docker.credentials.token_file"),
        ];
        for (yaml, key) in cases {
            let e = err(yaml);
            assert!(e.contains(key), "{yaml:?} gave {e:?}, wanted key {key}");
        }
    }

    #[test]
    fn credentials_from_file_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "hunter2\n").unwrap();
        let c = parse(&format!(
            "routes: {{ docker: {{ credentials: {{ username: alice, password_file: \"{}\" }}, public: true }} }}",
            f.display()
        ))
        .unwrap();
        let docker = c.routes.by_name("docker").unwrap();
        assert_eq!(
            docker.credentials,
            Some(Credentials::basic("alice", "hunter2").unwrap())
        );
        assert!(docker.public);
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!serde_json::to_string(docker.as_ref())
            .unwrap()
            .contains("aHVudGVyMg"));
    }

    #[test]
    fn prefetch_section_checked() {
        let c = parse(
            "prefetch: { images: [\"nginx:1.27\", \"quay.io/coreos/etcd@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\"], platforms: [linux/amd64], every: 6h }",
        )
        .unwrap();
        let schedule = c.prefetch.unwrap();
        assert_eq!(schedule.request.images.len(), 2);
        assert_eq!(schedule.every, Some(Duration::from_secs(6 * 3600)));
        assert_eq!(
            parse("prefetch: { images: [nginx] }")
                .unwrap()
                .prefetch
                .unwrap()
                .every,
            None
        );
        for (yaml, key) in [
            ("prefetch: { images: [] }", "prefetch.images"),
            (
                "prefetch: { images: [nginx, \"Bad Name\"] }",
                "prefetch.images[1]",
            ),
            (
                "prefetch: { images: [\"nosuch.example/a:1\"] }",
                "prefetch.images[0]",
            ),
            (
                "prefetch: { images: [nginx], platforms: [linux] }",
                "prefetch.platforms[0]",
            ),
            (
                "prefetch: { images: [nginx], every: 10s }",
                "prefetch.every",
            ),
            (
                "prefetch: { images: [nginx], every: soon }",
                "prefetch.every",
            ),
            (
                "prefetch: { images: [nginx], concurrency: 0 }",
                "prefetch.concurrency",
            ),
            ("prefetch: { images: [nginx], often: 1h }", "prefetch.often"),
        ] {
            let e = parse(yaml).map(|_| ()).unwrap_err().to_string();
            assert!(e.contains(key), "{yaml}: {e}");
        }
    }

    #[test]
    fn cluster_section_checked() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "0123456789abcdef0123\n").unwrap();
        let short = dir.path().join("short");
        std::fs::write(&short, "too short").unwrap();
        let (s, short) = (secret.display(), short.display());
        let peers = r#"peers: ["10.0.0.1:9000", "10.0.0.2:9000"]"#;
        let c = parse(&format!(
            "cluster: {{ node: \"10.0.0.1:9000\", {peers}, secret_file: \"{s}\" }}"
        ))
        .unwrap();
        let cluster = c.cluster.unwrap();
        assert_eq!((cluster.peers.len(), cluster.keep_local), (2, true));
        assert_eq!(cluster.secret, b"0123456789abcdef0123");
        assert_eq!(cluster.redis, None);
        let with_redis = format!(
            "cluster: {{ node: \"10.0.0.1:9000\", {peers}, secret_file: \"{s}\", redis: \"redis://10.0.0.9:6379/2\" }}"
        );
        let redis = parse(&with_redis).unwrap().cluster.unwrap().redis;
        assert_eq!(redis.as_deref(), Some("redis://10.0.0.9:6379/2"));
        for (yaml, key) in [
            (format!("cluster: {{ {peers}, secret_file: \"{s}\" }}"), "cluster.node"),
            (
                format!("cluster: {{ node: \"0.0.0.0:9000\", {peers}, secret_file: \"{s}\" }}"),
                "cluster.node",
            ),
            (
                format!("cluster: {{ node: \"10.0.0.3:9000\", {peers}, secret_file: \"{s}\" }}"),
                "cluster.peers",
            ),
            (
                format!("cluster: {{ node: \"10.0.0.1:9000\", peers: [\"x\"], secret_file: \"{s}\" }}"),
                "cluster.peers[0]",
            ),
            (format!("cluster: {{ node: \"10.0.0.1:9000\", {peers} }}"), "cluster.secret_file"),
            (
                format!("cluster: {{ node: \"10.0.0.1:9000\", {peers}, secret_file: \"{short}\" }}"),
                "cluster.secret_file",
            ),
            (
                format!("listen: [\"10.0.0.1:9000\"]\ncluster: {{ node: \"10.0.0.1:9000\", {peers}, secret_file: \"{s}\" }}"),
                "cluster.node",
            ),
            (
                format!("cluster: {{ node: \"10.0.0.1:9000\", {peers}, secret_file: \"{s}\", redis: \"10.0.0.9\" }}"),
                "cluster.redis",
            ),
        ] {
            let e = parse(&yaml).map(|_| ()).unwrap_err().to_string();
            assert!(e.contains(key), "{yaml}: {e}");
        }
    }

    #[test]
    fn shipped_cluster_config_loads() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "0123456789abcdef").unwrap();
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/cluster.yaml");
        let text = std::fs::read_to_string(shipped).unwrap().replace(
            "/etc/pullthrough/cluster.secret",
            &secret.display().to_string(),
        );
        let c = parse(&text).unwrap_or_else(|e| panic!("conf/cluster.yaml: {e}"));
        assert_eq!(c.cluster.unwrap().peers.len(), 3);
    }

    #[test]
    fn shipped_configs_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf");
        for name in ["pullthrough.yaml", "minimal.yaml", "container.yaml"] {
            load(&dir.join(name)).unwrap_or_else(|e| panic!("conf/{name}: {e}"));
        }
    }
}
