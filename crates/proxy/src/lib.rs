//! strait-proxy, Strait's data plane: an xDS client (Delta ADS) that converts Envoy's protos into
//! the proxy's own typed [`config`], publishes it whole in one atomic swap, and a data path that
//! only loads the current config.
//!
//! It serves the listeners the translator emits for sidecars (no-capture and iptables mode) and
//! gateways: HTTP connection managers and TCP proxies in filter chains matched per connection,
//! and an admin interface; docs/xds-support.md lists what it reads, refuses (NACK) and ignores.

#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin;
mod balance;
pub mod config;
pub mod fuzzing;
mod http;
mod listeners;
mod original_dst;
pub mod routing;
mod stats;
mod tcp;
mod upstream;
pub mod xds;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use envoy_types::pb::envoy::config::core::v3::Node;
use tokio::sync::{Notify, watch};

pub use access_log::{AccessLog, AccessLogTarget};
pub use config::Config;
pub use http::HttpLimits;
pub use http::h1_check::HeadLimits;
pub use xds::Api as XdsApi;

/// The shared value for `key` in a read-mostly map, made (default) on first use: the read lock
/// on the path every request takes, the write lock only the first time.
pub(crate) fn shared_entry<T: Default>(
    map: &std::sync::RwLock<std::collections::HashMap<String, Arc<T>>>,
    key: &str,
) -> Arc<T> {
    if let Some(v) = map.read().unwrap_or_else(|e| e.into_inner()).get(key) {
        return v.clone();
    }
    map.write()
        .unwrap_or_else(|e| e.into_inner())
        .entry(key.to_string())
        .or_default()
        .clone()
}

/// What the proxy needs to start.
#[derive(Debug, Clone)]
pub struct Options {
    /// The node it presents to the control plane (id and metadata as Istio has them).
    pub node: Node,
    /// The control plane's xDS (ADS) address.
    pub xds: SocketAddr,
    /// The admin interface's address.
    pub admin: SocketAddr,
    /// Delta ADS (falling back to state of the world) or state of the world only.
    pub api: XdsApi,
    /// Limits and timeouts of downstream HTTP connections.
    pub limits: HttpLimits,
    /// Where access log lines go (`None`: no access log).
    pub access_log: Option<AccessLogTarget>,
}

/// Why the proxy could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on the admin address {addr}: {source} (pick another with --admin)")]
    AdminBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot open the access log {target:?}: {source} (pick another with --access-log)")]
    AccessLog {
        target: AccessLogTarget,
        source: std::io::Error,
    },
}

/// State shared by the xDS client, the listeners and the admin interface.
pub struct Shared {
    /// The current config: the data path loads it, the xDS client swaps it.
    config: ArcSwap<Config>,
    /// Bumped after each swap, for the tasks that act on changes (listeners).
    generation: watch::Sender<u64>,
    /// Set once the first complete config is in.
    ready: AtomicBool,
    stats: stats::Stats,
    upstreams: upstream::Upstreams,
    quit: Notify,
    /// Set by `/drain_listeners`: every listening socket closes, and open HTTP connections close
    /// once their requests in flight are answered.
    drain: watch::Sender<bool>,
    limits: HttpLimits,
    access_log: Option<AccessLog>,
}

impl Shared {
    fn new(limits: HttpLimits, access_log: Option<AccessLog>) -> Arc<Shared> {
        Arc::new(Shared {
            config: ArcSwap::from_pointee(Config::default()),
            generation: watch::channel(0).0,
            ready: AtomicBool::new(false),
            stats: stats::Stats::default(),
            upstreams: upstream::Upstreams::default(),
            quit: Notify::new(),
            drain: watch::channel(false).0,
            limits,
            access_log,
        })
    }

    /// Publishes a new config in one swap.
    fn publish(&self, config: Config, complete: bool) {
        self.config.store(Arc::new(config));
        if complete && !self.ready.swap(true, Ordering::SeqCst) {
            tracing::info!("first complete config in: ready");
        }
        self.generation.send_modify(|g| *g += 1);
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

/// Runs the proxy until `/quitquitquit` (or the future is dropped).
pub async fn run(opts: Options) -> Result<(), Error> {
    let shared = Shared::new(opts.limits, open_access_log(opts.access_log.as_ref())?);
    let admin = tokio::net::TcpListener::bind(opts.admin)
        .await
        .map_err(|source| Error::AdminBind {
            addr: opts.admin,
            source,
        })?;
    tracing::info!(admin = %opts.admin, xds = %opts.xds, node = %opts.node.id, "strait-proxy starting");
    let xds = tokio::spawn(xds::run(
        shared.clone(),
        opts.node.clone(),
        opts.xds,
        opts.api,
    ));
    let listeners = tokio::spawn(listeners::run(shared.clone()));
    let admin = tokio::spawn(admin::serve(shared.clone(), admin));
    shared.quit.notified().await;
    tracing::info!("quitquitquit: stopping");
    xds.abort();
    listeners.abort();
    admin.abort();
    Ok(())
}

fn open_access_log(target: Option<&AccessLogTarget>) -> Result<Option<AccessLog>, Error> {
    target
        .map(|t| {
            AccessLog::open(t).map_err(|source| Error::AccessLog {
                target: t.clone(),
                source,
            })
        })
        .transpose()
}

/// Serves a fixed config, without a control plane or admin interface, until the future is
/// dropped: for tests and for embedding the data plane.
pub async fn run_static(
    config: Config,
    limits: HttpLimits,
    access_log: Option<AccessLogTarget>,
) -> Result<(), Error> {
    let shared = Shared::new(limits, open_access_log(access_log.as_ref())?);
    shared.publish(config, true);
    listeners::run(shared).await;
    Ok(())
}

/// The Envoy node a proxy presents: Istio's node id and metadata.
pub fn node(proxy: &strait_xds::Proxy) -> Node {
    Node {
        id: proxy.id.clone(),
        cluster: format!("{}.{}", proxy.workload, proxy.namespace),
        metadata: Some(proxy.node_metadata()),
        user_agent_name: "strait-proxy".to_string(),
        ..Default::default()
    }
}
