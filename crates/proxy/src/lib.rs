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
mod body;
pub mod config;
#[cfg(any(fuzzing, test))]
pub mod fuzzing;
mod http;
mod io;
mod listeners;
mod metrics;
mod original_dst;
mod otlp_export;
pub mod routing;
mod stats;
mod tcp;
#[doc(hidden)]
pub mod testing;
mod tls;
mod upstream;
pub mod xds;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use envoy_types::pb::envoy::config::core::v3::Node;
use tokio::sync::{Notify, watch};

pub use access_log::{AccessLog, AccessLogTarget};
pub use config::Config;
pub use http::HttpLimits;
pub use http::h1_check::HeadLimits;
pub use xds::Api as XdsApi;

/// The chain of an error's messages, outermost first.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// What the proxy needs to start.
#[derive(Debug, Clone)]
pub struct Options {
    /// The node it presents to the control plane (id and metadata as Istio has them).
    pub node: Node,
    /// The control plane's xDS (ADS) addresses: one, or the replicas of a control plane on a
    /// shared store, tried in turn when the connected one fails (at least one).
    pub xds: Vec<SocketAddr>,
    /// The admin interface's address.
    pub admin: SocketAddr,
    /// Where `/stats/prometheus` is served besides the admin interface (Istio's
    /// `POD_IP:15090`; `None`: only on the admin interface).
    pub prometheus: Option<SocketAddr>,
    /// Delta ADS (falling back to state of the world) or state of the world only.
    pub api: XdsApi,
    /// Limits and timeouts of downstream HTTP connections.
    pub limits: HttpLimits,
    /// Where access log lines go (`None`: no access log).
    pub access_log: Option<AccessLogTarget>,
    /// How long a shutdown (see [`run_until`]) waits for open connections to finish after the
    /// listeners close.
    pub drain_time: Duration,
    /// The workload identity to obtain from the mesh CA and keep renewed (`None`: the proxy
    /// has none, and its traffic is plaintext).
    pub identity: Option<strait_identity::manager::ManagerOptions>,
}

/// Why the proxy could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on the admin address {addr}: {source} (pick another with --admin)")]
    AdminBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "cannot listen on the Prometheus address {addr}: {source} (pick another with --prometheus)"
    )]
    PrometheusBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot open the access log {target:?}: {source} (pick another with --access-log)")]
    AccessLog {
        target: AccessLogTarget,
        source: std::io::Error,
    },
    #[error("cannot start the control thread (xDS client and admin): {0}")]
    ControlRuntime(std::io::Error),
    #[error("cannot obtain the workload certificate of {identity} from the mesh CA: {source}")]
    Identity {
        identity: String,
        source: strait_identity::manager::ManagerError,
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
    /// Istio's standard metrics.
    telemetry: metrics::Telemetry,
    upstreams: upstream::Upstreams,
    quit: Notify,
    /// Set by `/drain_listeners`: every listening socket closes, and open HTTP connections close
    /// once their requests in flight are answered.
    drain: watch::Sender<bool>,
    limits: HttpLimits,
    access_log: Option<AccessLog>,
    /// Downstream connections open now.
    open: AtomicUsize,
    /// The certificates TLS contexts are built from.
    tls: Arc<tls::Secrets>,
    /// When the proxy started (`/server_info`'s uptime).
    started: std::time::Instant,
    /// Finished spans on their way to the collector.
    spans: otlp_export::Spans,
}

/// Counts a downstream connection as open until dropped.
pub(crate) struct OpenConnection(Arc<Shared>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Shared {
    fn new(limits: HttpLimits, access_log: Option<AccessLog>) -> Arc<Shared> {
        Shared::with_telemetry(limits, access_log, metrics::Telemetry::unknown())
    }

    fn with_telemetry(
        limits: HttpLimits,
        access_log: Option<AccessLog>,
        telemetry: metrics::Telemetry,
    ) -> Arc<Shared> {
        let tls = Arc::new(tls::Secrets::default());
        Arc::new(Shared {
            config: ArcSwap::from_pointee(Config::default()),
            generation: watch::channel(0).0,
            ready: AtomicBool::new(false),
            stats: stats::Stats::default(),
            telemetry,
            upstreams: upstream::Upstreams::new(tls.clone()),
            quit: Notify::new(),
            drain: watch::channel(false).0,
            limits,
            access_log,
            open: AtomicUsize::new(0),
            tls,
            started: std::time::Instant::now(),
            spans: otlp_export::Spans::default(),
        })
    }

    /// Counts a downstream connection as open while the guard lives.
    pub(crate) fn open_connection(self: &Arc<Self>) -> OpenConnection {
        self.open.fetch_add(1, Ordering::Relaxed);
        OpenConnection(self.clone())
    }

    /// Publishes a new config in one swap, each cluster with its balancer (built here, off the
    /// data path; an unchanged cluster keeps its own); then forgets the endpoints and clusters
    /// that left, draining their connections, and drops the stats of clusters that left.
    fn publish(&self, mut config: Config, complete: bool) {
        let previous = self.config.load_full();
        let changed = self.upstreams.prepare(&mut config, &previous, &self.stats);
        drop(previous);
        let config = Arc::new(config);
        self.config.store(config.clone());
        self.upstreams.prune(&config, &changed, &self.stats);
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
    run_until(opts, std::future::pending()).await
}

/// Runs the proxy until `/quitquitquit`, or until `shutdown` completes (a signal): then every
/// listener closes, open HTTP connections close after their requests in flight, and it returns
/// once no downstream connection is open or `drain_time` has passed.
///
/// The data path (listeners and the connections they accept) runs on the caller's runtime;
/// the control work (the xDS client, which decodes and converts whole configurations, and the
/// admin interface) runs on a current-thread runtime of its own thread, so that a large config
/// never takes a worker from the traffic.
pub async fn run_until(
    opts: Options,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    let telemetry = metrics::Telemetry::new(
        &opts.node,
        opts.identity.as_ref().map(|i| i.identity.to_string()),
    );
    let shared = Shared::with_telemetry(
        opts.limits,
        open_access_log(opts.access_log.as_ref())?,
        telemetry,
    );
    let admin = std::net::TcpListener::bind(opts.admin)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|source| Error::AdminBind {
            addr: opts.admin,
            source,
        })?;
    let prometheus = opts
        .prometheus
        .map(|addr| {
            std::net::TcpListener::bind(addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .map_err(|source| Error::PrometheusBind { addr, source })
        })
        .transpose()?;
    tracing::info!(admin = %opts.admin, xds = ?opts.xds, node = %opts.node.id, "strait-proxy starting");
    // The workload certificate first: xDS goes over mutual TLS with it.
    let _identity = match opts.identity {
        Some(identity) => Some(obtain_identity(&shared, identity).await?),
        None => None,
    };
    let control = Control::start(
        shared.clone(),
        admin,
        prometheus,
        opts.node.clone(),
        opts.xds,
        opts.api,
    )?;
    let listeners = tokio::spawn(listeners::run(shared.clone()));
    let spans = tokio::spawn(otlp_export::run(shared.clone()));
    tokio::select! {
        () = shared.quit.notified() => tracing::info!("quitquitquit: stopping"),
        () = shutdown => {
            let open = shared.open.load(Ordering::Relaxed);
            tracing::info!(open, drain_time = ?opts.drain_time, "shutting down: draining");
            shared.drain.send_replace(true);
            let deadline = tokio::time::Instant::now() + opts.drain_time;
            while shared.open.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tracing::info!(open = shared.open.load(Ordering::Relaxed), "drained: stopping");
        }
    }
    listeners.abort();
    spans.abort();
    drop(control);
    Ok(())
}

/// Obtains the workload certificate and follows its renewals into the TLS secrets, until the
/// returned guard is dropped.
async fn obtain_identity(
    shared: &Arc<Shared>,
    opts: strait_identity::manager::ManagerOptions,
) -> Result<IdentityGuard, Error> {
    let identity = opts.identity.to_string();
    let manager = strait_identity::manager::CertManager::start(opts)
        .await
        .map_err(|source| Error::Identity {
            identity: identity.clone(),
            source,
        })?;
    let mut current = manager.subscribe();
    let creds = current.borrow_and_update().clone();
    tracing::info!(%identity, serial = %creds.leaf.serial, expires = %strait_identity::cert::rfc3339(creds.leaf.not_after), "workload certificate obtained");
    shared.tls.set_workload(creds);
    let follow = {
        let shared = shared.clone();
        tokio::spawn(async move {
            while current.changed().await.is_ok() {
                let creds = current.borrow_and_update().clone();
                tracing::info!(serial = %creds.leaf.serial, expires = %strait_identity::cert::rfc3339(creds.leaf.not_after), "workload certificate renewed");
                shared.tls.set_workload(creds);
            }
        })
    };
    Ok(IdentityGuard {
        _manager: manager,
        follow,
    })
}

/// Keeps the certificate renewed while it lives.
struct IdentityGuard {
    _manager: strait_identity::manager::CertManager,
    follow: tokio::task::JoinHandle<()>,
}

impl Drop for IdentityGuard {
    fn drop(&mut self) {
        self.follow.abort();
    }
}

/// The control thread: the xDS client and the admin interface on a runtime of their own. It
/// stops when this is dropped.
struct Control {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Control {
    fn start(
        shared: Arc<Shared>,
        admin: std::net::TcpListener,
        prometheus: Option<std::net::TcpListener>,
        node: Node,
        xds: Vec<SocketAddr>,
        api: XdsApi,
    ) -> Result<Control, Error> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(Error::ControlRuntime)?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("strait-control".to_string())
            .spawn(move || {
                runtime.block_on(async move {
                    let admin = match tokio::net::TcpListener::from_std(admin) {
                        Ok(admin) => admin,
                        Err(e) => {
                            tracing::error!(error = %e, "the admin listener cannot be served");
                            return;
                        }
                    };
                    let prometheus = prometheus
                        .and_then(|l| match tokio::net::TcpListener::from_std(l) {
                            Ok(l) => Some(l),
                            Err(e) => {
                                tracing::error!(error = %e, "the Prometheus listener cannot be served");
                                None
                            }
                        })
                        .map(|l| tokio::spawn(admin::serve_prometheus(shared.clone(), l)));
                    let xds = tokio::spawn(xds::run(shared.clone(), node, xds, api));
                    let sweep = tokio::spawn(sweep(shared.clone()));
                    let admin = tokio::spawn(admin::serve(shared, admin));
                    let _ = stopped.await;
                    xds.abort();
                    admin.abort();
                    sweep.abort();
                    if let Some(p) = prometheus {
                        p.abort();
                    }
                });
            })
            .map_err(Error::ControlRuntime)?;
        Ok(Control {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // The runtime ends its tasks when the thread's block_on returns; joining waits for
        // that, which takes no longer than the tasks' next poll.
        if let Some(thread) = self.thread.take()
            && thread.thread().id() != std::thread::current().id()
        {
            let _ = thread.join();
        }
    }
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
    let sweep = tokio::spawn(sweep(shared.clone()));
    struct Abort(tokio::task::JoinHandle<()>);
    impl Drop for Abort {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _sweep = Abort(sweep);
    listeners::run(shared).await;
    Ok(())
}

/// Closes idle upstream connections and forgets unused ORIGINAL_DST destinations, every
/// [`upstream::SWEEP_EVERY`], forever.
async fn sweep(shared: Arc<Shared>) {
    let mut every = tokio::time::interval(upstream::SWEEP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        shared.upstreams.sweep(std::time::Instant::now());
    }
}

/// The Envoy node a proxy presents: Istio's node id and metadata.
pub fn node(proxy: &strait_xds_core::Proxy) -> Node {
    Node {
        id: proxy.id.clone(),
        cluster: format!("{}.{}", proxy.workload, proxy.namespace),
        metadata: Some(proxy.node_metadata()),
        user_agent_name: "strait-proxy".to_string(),
        ..Default::default()
    }
}
