//! pullthrough: a pull-through mirror for container registries, built on Pingora.
//!
//! - [`config`]: the YAML file, validated into a runtime `Config`.
//! - [`routes`]: which upstream registry a request is for.
//! - [`registry`]: the registry protocol's vocabulary (paths, names, digests, auth).
//! - [`redirect`]: which upstream redirects the mirror follows itself.
//! - [`upstream`]: upstream origins and name resolution.
//! - [`proxy`]: the Pingora `ProxyHttp` implementation.
//! - [`server`]: the Pingora server built from a config; [`stop`]: how it ends.
//! - [`admin`]: the admin listener: status page, metrics, the operators' API (prefetch,
//!   cache listing and purge); [`cli`]: the commands that call it.

pub mod activity;
pub mod admin;
pub mod cache;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod guard;
pub mod healthcheck;
pub mod logging;
pub mod metrics;
pub mod placement;
pub mod proxy;
pub mod redirect;
pub mod registry;
pub mod routes;
pub mod server;
pub mod stop;
pub mod tls;
pub mod upstream;
