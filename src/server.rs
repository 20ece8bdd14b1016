//! `build`: a Pingora `Server` from a validated `Config`: the proxy service on its listeners.

use std::sync::Arc;

use pingora::prelude::*;
use pingora::proxy::http_proxy_service;

use crate::config::Config;
use crate::proxy::realms::RealmBook;
use crate::proxy::{Mirror, Shared};
use crate::upstream::Resolver;

/// Builds the server; `opt` carries Pingora's command-line flags (`-d`, `-u`, `-t`).
pub fn build(config: Config, opt: Option<Opt>) -> Server {
    let Config {
        server: server_conf,
        listen,
        routes,
        resolve,
        redirects,
        upstream,
        cache: _,
        public_scheme,
    } = config;
    let mut server = Server::new_with_opt_and_conf(opt, server_conf);
    server.bootstrap();

    let shared = Arc::new(Shared {
        resolver: Resolver::new(resolve, upstream.dns_ttl),
        realms: RealmBook::new(&routes),
        routes,
        redirects,
        upstream,
        public_scheme,
    });
    let mut service = http_proxy_service(&server.configuration, Mirror::new(shared));
    for addr in &listen {
        service.add_tcp(&addr.to_string());
    }
    server.add_service(service);
    server
}
