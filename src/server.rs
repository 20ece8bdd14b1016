//! `build`: a Pingora `Server` from a validated `Config`: the proxy service on its listeners.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use log::info;
use pingora::server::configuration::ServerConf;
use pingora::server::{ExecutionPhase, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use tokio::sync::broadcast;

use pingora::prelude::*;
use pingora::protocols::http::v2::server::default_h2_options;
use pingora::proxy::http_proxy;

use crate::admin::prefetch::{Prefetcher, Warmer};
use crate::admin::AdminApp;
use crate::cache::Cache;
use crate::config::Config;
use crate::guard::GuardedApp;
use crate::placement::Seats;
use crate::proxy::express::Express;
use crate::proxy::realms::RealmBook;
use crate::proxy::{Mirror, Shared};
use crate::stop::QuietStop;
use crate::tls::SniRecorder;
use crate::upstream::Resolver;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{L4BufferSettings, ListenerConfig};

/// Pingora's grace period when `pingora.grace_period_seconds` is not set (its `EXIT_TIMEOUT`).
const PINGORA_GRACE_PERIOD: u64 = 300;

/// Why the server cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot open cache directory {0}: {1}")]
    Cache(String, std::io::Error),
    #[error("{0} {1:?} cannot be written, so the daemon (-d) would not start: {2}")]
    DaemonFile(&'static str, String, std::io::Error),
    #[error("cannot set up the SIGINT handler: {0}")]
    Signal(std::io::Error),
}

/// Builds the server; `opt` carries Pingora's command-line flags (`-d`, `-u`, `-t`).
pub fn build(config: Config, opt: Option<Opt>) -> Result<Server, BuildError> {
    let Config {
        server: server_conf,
        listen,
        routes,
        resolve,
        redirects,
        upstream,
        cache: cache_config,
        public_scheme,
        admin_listen,
        limits,
        repositories,
        trusted_proxies,
        tls,
        cluster: cluster_config,
        prefetch,
    } = config;
    let cache = Cache::open(&cache_config)
        .map_err(|e| BuildError::Cache(cache_config.dir.display().to_string(), e))?;
    let mut server = Server::new_with_opt_and_conf(opt, server_conf);
    check_daemon_files(&server.configuration)?;
    crate::stop::exit_at_once_on_sigint().map_err(BuildError::Signal)?;
    server.bootstrap();

    let draining = Arc::new(AtomicBool::new(false));
    let handing_over = Arc::new(AtomicBool::new(false));
    server.add_service(background_service(
        "drain watch",
        DrainWatch {
            phases: std::sync::Mutex::new(Some(server.watch_execution_phase())),
            draining: draining.clone(),
            handing_over: handing_over.clone(),
        },
    ));
    let keeper = cache.keeper(handing_over);
    server.add_service(background_service("cache keeper", keeper.clone()));
    let farewells = crate::stop::Farewells::default();
    let connection_limits = limits.connections;
    let peer_listener = cluster_config.as_ref().map(|c| c.node);
    let cluster = cluster_config.map(|c| {
        let store = c.redis.as_deref().map(|url| {
            let store = crate::cluster::Store::new(url, c.secret.clone(), c.node)
                .expect("cluster.redis is checked when the config is read");
            Arc::new(store)
        });
        if let Some(store) = &store {
            server.add_service(background_service(
                "cluster shared state",
                crate::cluster::store::Heartbeat {
                    store: store.clone(),
                    farewells: farewells.clone(),
                },
            ));
        }
        let ring = background_service(
            "cluster ring",
            crate::cluster::ring(&c.peers, store.clone()),
        );
        let cluster = crate::cluster::Cluster::new(c, ring.task(), store);
        server.add_service(ring);
        info!(
            "cluster node {}: members {:?}",
            cluster.node,
            cluster.members().iter().map(|m| m.addr).collect::<Vec<_>>()
        );
        cluster
    });
    let activity = crate::activity::Activity::new(routes.routes().iter().map(|r| r.name.as_str()));
    let shared = Arc::new(Shared {
        activity,
        draining,
        guard: crate::guard::Guard::new(limits),
        repositories,
        trusted_proxies,
        resolver: Resolver::new(resolve, upstream.dns_ttl),
        realms: RealmBook::new(&routes),
        routes,
        redirects,
        upstream,
        public_scheme,
        cache,
        side: crate::upstream::SideClient::new(),
        outages: Default::default(),
        tag_checks: Default::default(),
        cluster,
    });
    // Prefetch pulls through the first plain listener, as a client would.
    let prefetcher = listen
        .first()
        .map(|addr| Arc::new(Prefetcher::new(*addr, shared.clone())));
    if let Some(schedule) = prefetch {
        if let Some(first) = listen.first() {
            let warmer = Warmer {
                prefetcher: Prefetcher::new(*first, shared.clone()),
                schedule,
            };
            server.add_service(background_service("prefetch", warmer));
        }
    }
    let seats = Arc::new(Seats::new(
        server.configuration.threads,
        server.configuration.work_stealing,
    ));
    if let Some(addr) = admin_listen {
        let app = AdminApp::new(shared.clone(), prefetcher, seats.clone());
        let mut admin = pingora::services::listening::Service::new("pullthrough admin".into(), app);
        admin.add_tcp(&addr.to_string());
        server.add_service(admin);
    }
    let fills = &shared.cache.storage.stats.fills_in_flight;
    let express = Express::new(shared.clone(), connection_limits);
    let mut proxy = http_proxy(&server.configuration, Mirror::new(shared));
    // HTTP/2 heads get the same size bound (the guard reads HTTP/1 only).
    let mut h2 = default_h2_options();
    h2.max_header_list_size(u32::try_from(connection_limits.request_head_max).unwrap_or(u32::MAX));
    proxy.h2_options = Some(h2);
    let app = GuardedApp::new(proxy, connection_limits)
        .with_express(express)
        .with_seats(seats);
    server.add_service(background_service(
        "quiet stop",
        QuietStop {
            connections: app.open_connections(),
            fills,
            farewells,
            keeper,
            grace: Duration::from_secs(
                server
                    .configuration
                    .grace_period_seconds
                    .unwrap_or(PINGORA_GRACE_PERIOD),
            ),
        },
    ));
    let mut service = pingora::services::listening::Service::new("pullthrough".into(), app);
    // No L4 read buffer: Pingora's default is 64 KiB per connection, filled by the first
    // bytes a client sends and kept by the allocator after the connection ends (200
    // connections sending large heads held ~13 MiB that way). Request heads are read
    // straight into the parser's own bounded buffer instead.
    let l4_buffer = L4BufferSettings::default().read(0);
    for addr in &listen {
        service.add_listener(ListenerConfig::tcp(addr.to_string()).l4_buffer(l4_buffer));
    }
    // Requests from the other members; only signed ones pass (`proxy::cluster`).
    if let Some(addr) = peer_listener {
        service.add_listener(ListenerConfig::tcp(addr.to_string()).l4_buffer(l4_buffer));
    }
    if let Some(tls) = tls {
        for addr in &tls.listen {
            let mut settings = TlsSettings::with_callbacks(Box::new(SniRecorder))
                .expect("TLS settings with callbacks are always built");
            settings.set_cert_resolver(tls.certificates.clone());
            if tls.http2 {
                settings.enable_h2();
            }
            service.add_listener(
                ListenerConfig::tcp(addr.to_string())
                    .tls(settings)
                    .l4_buffer(l4_buffer),
            );
        }
    }
    server.add_service(service);
    Ok(server)
}

/// Sets `draining` once the server starts handing its listeners over (SIGQUIT) or stopping
/// (SIGTERM). From then on every response closes its connection, so keep-alive clients move
/// to the new process on their next request instead of meeting a connection Pingora drops
/// when its shutdown begins.
///
/// A background service, not a thread: services start after Pingora daemonizes (`-d`), and a
/// thread waiting on the phase channel across that fork leaves the child a dangling waiter
/// (tokio's broadcast then panics in `Server::run`). The receiver itself is only subscribed
/// here, before the fork; nothing waits on it until the service runs.
struct DrainWatch {
    phases: std::sync::Mutex<Option<broadcast::Receiver<ExecutionPhase>>>,
    draining: Arc<AtomicBool>,
    /// Set when the listeners go to a new process (SIGQUIT), not at a plain stop.
    handing_over: Arc<AtomicBool>,
}

#[async_trait]
impl BackgroundService for DrainWatch {
    async fn start(&self, _shutdown: ShutdownWatch) {
        let Some(mut phases) = self.phases.lock().ok().and_then(|mut p| p.take()) else {
            return;
        };
        loop {
            let phase = match phases.recv().await {
                Ok(phase) => phase,
                // Phases sent before the service started (bootstrap) may have been dropped.
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            };
            if matches!(
                phase,
                ExecutionPhase::GracefulUpgradeTransferringFds
                    | ExecutionPhase::GracefulUpgradeCloseTimeout
                    | ExecutionPhase::GracefulTerminate
                    | ExecutionPhase::ShutdownStarted
            ) {
                if matches!(phase, ExecutionPhase::GracefulUpgradeTransferringFds) {
                    self.handing_over.store(true, Ordering::Release);
                }
                info!("draining: responses now close their connections ({phase:?})");
                self.draining.store(true, Ordering::Release);
                return;
            }
        }
    }
}

/// With `-d`, a pid file or error log that cannot be written would make Pingora's daemonize
/// panic after the fork (or leave a daemon nobody can signal): refuse before that.
fn check_daemon_files(conf: &ServerConf) -> Result<(), BuildError> {
    if !conf.daemon {
        return Ok(());
    }
    let pid_file = Path::new(&conf.pid_file);
    let dir = match pid_file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    // Daemonize renames the old pid file aside and creates a new one: the directory must
    // take a new file.
    let probe = dir.join(format!(".pullthrough-check.{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .and_then(|_| std::fs::remove_file(&probe))
        .map_err(|e| BuildError::DaemonFile("pingora.pid_file", conf.pid_file.clone(), e))?;
    if let Some(log) = &conf.error_log {
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(log)
            .map_err(|e| BuildError::DaemonFile("pingora.error_log", log.clone(), e))?;
    }
    Ok(())
}
