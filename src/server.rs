//! `build`: a Pingora `Server` from a validated `Config`: the proxy service on its listeners.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use log::info;
use pingora::server::ExecutionPhase;

use pingora::prelude::*;
use pingora::proxy::http_proxy_service;

use crate::admin::AdminApp;
use crate::cache::Cache;
use crate::config::Config;
use crate::proxy::realms::RealmBook;
use crate::proxy::{Mirror, Shared};
use crate::tls::SniRecorder;
use crate::upstream::Resolver;
use pingora::listeners::tls::TlsSettings;

/// Why the server cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot open cache directory {0}: {1}")]
    Cache(String, std::io::Error),
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
    } = config;
    let cache = Cache::open(&cache_config)
        .map_err(|e| BuildError::Cache(cache_config.dir.display().to_string(), e))?;
    let mut server = Server::new_with_opt_and_conf(opt, server_conf);
    server.bootstrap();

    let draining = Arc::new(AtomicBool::new(false));
    watch_for_drain(&server, draining.clone());
    let shared = Arc::new(Shared {
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
    });
    if let Some(addr) = admin_listen {
        let app = pingora::apps::http_app::HttpServer::new_app(AdminApp::new(shared.clone()));
        let mut admin = pingora::services::listening::Service::new("pullthrough admin".into(), app);
        admin.add_tcp(&addr.to_string());
        server.add_service(admin);
    }
    let mut service = http_proxy_service(&server.configuration, Mirror::new(shared));
    for addr in &listen {
        service.add_tcp(&addr.to_string());
    }
    if let Some(tls) = tls {
        for addr in &tls.listen {
            let mut settings = TlsSettings::with_callbacks(Box::new(SniRecorder))
                .expect("TLS settings with callbacks are always built");
            settings.set_cert_resolver(tls.certificates.clone());
            if tls.http2 {
                settings.enable_h2();
            }
            service.add_tls_with_settings(&addr.to_string(), None, settings);
        }
    }
    server.add_service(service);
    Ok(server)
}

/// Sets `draining` once the server starts handing its listeners over (SIGQUIT) or stopping
/// (SIGTERM). From then on every response closes its connection, so keep-alive clients move
/// to the new process on their next request instead of meeting a connection Pingora drops
/// when its shutdown begins.
fn watch_for_drain(server: &Server, draining: Arc<AtomicBool>) {
    let mut phases = server.watch_execution_phase();
    let spawned = std::thread::Builder::new()
        .name("pullthrough-drain".into())
        .spawn(move || {
            while let Ok(phase) = phases.blocking_recv() {
                if matches!(
                    phase,
                    ExecutionPhase::GracefulUpgradeTransferringFds
                        | ExecutionPhase::GracefulUpgradeCloseTimeout
                        | ExecutionPhase::GracefulTerminate
                        | ExecutionPhase::ShutdownStarted
                ) {
                    info!("draining: responses now close their connections ({phase:?})");
                    draining.store(true, Ordering::Release);
                    return;
                }
            }
        });
    if let Err(e) = spawned {
        log::warn!("cannot watch for upgrades, keep-alive clients may see closed connections: {e}");
    }
}
