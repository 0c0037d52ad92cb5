//! Strait's ADS server: Envoy's Aggregated Discovery Service over gRPC, both state of the world
//! (`StreamAggregatedResources`) and incremental (`DeltaAggregatedResources`).
//!
//! Each stream is one task: it reads the proxy from the first request's node, generates the
//! proxy's resources (on a blocking thread, through the [`Generator`]), answers subscriptions,
//! tracks ACKs and NACKs per type, and on every debounced config change regenerates once and
//! pushes only the types (SotW) or resources (Delta) whose content changed, CDS before EDS and
//! LDS before RDS. A NACKed config is not sent again until the config changes; the proxy keeps
//! its last good one.

#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

mod delta;
mod generated;
mod metrics;
mod service;
mod sotw;
mod state;
mod stream;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak, mpsc as std_mpsc};
use std::time::{Duration, Instant, SystemTime};

use envoy_types::pb::envoy::config::core::v3::ControlPlane;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryService;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

pub use generated::Encoded;
pub use service::AdsService;

use strait_xds_core::{Proxy, TypeUrl, XdsResources};

/// Computes a proxy's resources from the current config (the translator, in the control plane).
pub trait Generator: Send + Sync + 'static {
    fn generate(&self, proxy: &Proxy) -> XdsResources;

    /// The current inputs, for generation shared between proxies of one shape and for
    /// endpoint-only updates. `None` (the default): every stream generates its own config with
    /// [`Generator::generate`].
    fn inputs(&self) -> Option<Arc<dyn Inputs>> {
        None
    }
}

/// The generator's inputs at one revision. The server generates once per revision and proxy
/// *shape*, and shares the encoded result (read-only, behind an `Arc`) between the streams of
/// that shape.
pub trait Inputs: Send + Sync {
    /// The store revision these inputs reflect.
    fn revision(&self) -> u64;

    /// Proxies with equal shapes get identical resources from these inputs (the shape names
    /// everything about the proxy that the translation reads).
    fn shape(&self, proxy: &Proxy) -> String;

    /// Everything `proxy` should get.
    fn generate(&self, proxy: &Proxy) -> XdsResources;

    /// The hosts whose endpoints changed after `revision`, when nothing but endpoints changed
    /// since (an endpoint-only change); `None` when something else changed, or it is not known.
    fn endpoint_changes_since(&self, revision: u64) -> Option<BTreeSet<String>>;

    /// The clusters and ClusterLoadAssignments `proxy` gets for these hosts only (every cluster
    /// of a host named `outbound|PORT|SUBSET|HOST`), or `None` if the change of these hosts
    /// needs a full generation for this proxy (its own workload's endpoints changed).
    fn generate_hosts(&self, proxy: &Proxy, hosts: &BTreeSet<String>) -> Option<XdsResources>;
}

/// Decides whether the peer of a stream may have a proxy's config. The control plane's answers
/// on its TLS port: the proxy's certificate must name the identity its node claims.
pub trait Authorize: Send + Sync + 'static {
    /// `extensions` are the stream's request extensions (a TLS listener puts the peer's
    /// identity there). An error is sent to the proxy as `PermissionDenied` and logged.
    fn authorize(
        &self,
        proxy: &Proxy,
        extensions: &tonic::codegen::http::Extensions,
    ) -> Result<Peer, String>;
}

/// What the authorizer established about a stream's peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// The peer proved the identity its node claims (namespace and service account, by its
    /// certificate): it may have the Secrets of its namespace that its config names.
    Verified,
    /// The peer is not authenticated (the plaintext port, or a server without an authorizer):
    /// it gets config but no Secrets, as istiod serves `credentialName` only to authenticated
    /// proxies.
    Anonymous,
}

/// How the server batches config changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdsOptions {
    /// Changes closer together than this make one push.
    pub debounce: Duration,
    /// A stream of changes is pushed at least this often.
    pub max_debounce: Duration,
    /// The debounce of endpoint-only changes ([`AdsServer::notify_endpoints`]), while no config
    /// change is waiting: they go out after this much quiet (at most `max_debounce`), as Istio
    /// pushes EDS-only updates on its fast path. A config change that arrives meanwhile makes
    /// the whole batch wait `debounce`.
    pub eds_debounce: Duration,
}

impl Default for AdsOptions {
    fn default() -> Self {
        AdsOptions {
            debounce: Duration::from_millis(100),
            max_debounce: Duration::from_secs(1),
            eds_debounce: Duration::from_millis(5),
        }
    }
}

/// The protocol variant of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKind {
    /// State of the world: `StreamAggregatedResources`.
    Sotw,
    /// Incremental: `DeltaAggregatedResources`.
    Delta,
}

/// Whether a proxy has what the server sent it, for one type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncState {
    /// The latest response is ACKed.
    Synced,
    /// The latest response is not answered yet.
    Stale,
    /// The latest response was rejected; the proxy keeps its last ACKed config.
    Nack { reason: String },
    /// Subscribed, nothing sent yet.
    NotSent,
}

/// One type's sync state on one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeStatus {
    pub state: SyncState,
    /// The version of the latest response (SotW `version_info`, Delta `system_version_info`).
    pub sent_version: String,
    /// The version of the latest ACKed response; empty if none.
    pub acked_version: String,
    /// How many resources of this type the proxy has (was last sent).
    pub resources: usize,
}

/// A connected proxy's sync state.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyStatus {
    /// The node id.
    pub id: String,
    pub proxy: Proxy,
    pub connected_at: SystemTime,
    pub stream: StreamKind,
    /// The types the proxy subscribed to.
    pub types: BTreeMap<TypeUrl, TypeStatus>,
}

impl ProxyStatus {
    /// The proxy subscribed to something and ACKed the latest response of every type.
    pub fn is_synced(&self) -> bool {
        !self.types.is_empty() && self.types.values().all(|t| t.state == SyncState::Synced)
    }
}

/// What the server last sent a proxy, per type (for `strait proxy-config`).
#[derive(Debug, Clone, PartialEq)]
pub struct SentConfig {
    pub stream: StreamKind,
    pub types: BTreeMap<TypeUrl, SentType>,
}

/// What the server last sent a proxy of one type.
#[derive(Debug, Clone, PartialEq)]
pub struct SentType {
    pub version: String,
    pub acked_version: String,
    /// By name, packed, with each resource's version.
    pub resources: BTreeMap<String, Arc<Encoded>>,
}

/// The ADS server. Cheap to clone; every clone is the same server.
#[derive(Clone)]
pub struct AdsServer {
    inner: Arc<Inner>,
}

/// A config change: inputs at store revision `revision`, written at `written_at`.
#[derive(Debug, Clone, Copy)]
struct Change {
    revision: u64,
    written_at: SystemTime,
    /// Only endpoints changed.
    endpoints_only: bool,
}

/// The latest generation of one proxy shape.
#[derive(Default)]
struct Shared {
    revision: u64,
    generated: Option<Arc<generated::Generated>>,
}

struct Inner {
    generator: Arc<dyn Generator>,
    authorizer: Option<Arc<dyn Authorize>>,
    conns: Mutex<BTreeMap<u64, Arc<dyn stream::View>>>,
    /// To the debouncer.
    changes: std_mpsc::Sender<Change>,
    /// The latest debounced change (revision 0 before any); every stream watches it.
    revisions: watch::Sender<u64>,
    metrics: metrics::Metrics,
    next_conn: AtomicU64,
    next_nonce: AtomicU64,
    /// The latest generation per proxy shape; a stream of that shape waits on its lock while
    /// another generates.
    shapes: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Shared>>>>,
    /// Bounds concurrent generations to the number of cores.
    generating: tokio::sync::Semaphore,
}

impl AdsServer {
    /// A server generating with `generator`. Starts the debouncer (a small thread, ending with
    /// the server).
    pub fn new(generator: Arc<dyn Generator>, options: AdsOptions) -> Self {
        Self::with_authorizer(generator, options, None)
    }

    /// A server whose streams `authorizer` checks before any config is sent.
    pub fn with_authorizer(
        generator: Arc<dyn Generator>,
        options: AdsOptions,
        authorizer: Option<Arc<dyn Authorize>>,
    ) -> Self {
        let (changes, rx) = std_mpsc::channel();
        let inner = Arc::new(Inner {
            generator,
            authorizer,
            conns: Mutex::default(),
            changes,
            revisions: watch::Sender::new(0),
            metrics: metrics::Metrics::default(),
            next_conn: AtomicU64::new(1),
            next_nonce: AtomicU64::new(1),
            shapes: Mutex::default(),
            generating: tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            ),
        });
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("strait-ads-debounce".into())
            .spawn(move || debounce(rx, weak, options))
            .expect("spawning the ADS debounce thread");
        AdsServer { inner }
    }

    /// Inputs changed at store revision `revision`, written at `written_at` (for the
    /// push-latency metric). Debounced: changes within `debounce` of each other make one push
    /// (bounded by `max_debounce`).
    pub fn notify(&self, revision: u64, written_at: SystemTime) {
        // Fails only if the debouncer is gone, which it is not while `self` lives.
        let _ = self.inner.changes.send(Change {
            revision,
            written_at,
            endpoints_only: false,
        });
    }

    /// Like [`AdsServer::notify`], for a change of endpoints only: debounced with
    /// `eds_debounce` while no other change waits.
    pub fn notify_endpoints(&self, revision: u64, written_at: SystemTime) {
        let _ = self.inner.changes.send(Change {
            revision,
            written_at,
            endpoints_only: true,
        });
    }

    /// The tonic service to add to a tonic Server.
    pub fn service(&self) -> AdsService {
        AdsService::new(self.inner.clone())
    }

    /// Every connected proxy's sync state, in connection order.
    pub fn status(&self) -> Vec<ProxyStatus> {
        self.views().iter().map(|v| v.status()).collect()
    }

    /// Prometheus text of the control plane's xDS metrics: `strait_xds_push_latency_seconds`
    /// (store write → last ACK of that revision by every proxy it was pushed to),
    /// `strait_xds_pushes_total` and `strait_xds_nacks_total` by type,
    /// `strait_xds_generations_total` and the `strait_xds_connected_proxies` gauge.
    pub fn metrics_text(&self) -> String {
        self.inner.metrics.text()
    }

    /// What the server last sent a proxy (the latest of its streams), by node id.
    pub fn sent(&self, proxy_id: &str) -> Option<SentConfig> {
        self.views()
            .iter()
            .rev()
            .find(|v| v.proxy_id() == proxy_id)
            .map(|v| v.sent())
    }

    fn views(&self) -> Vec<Arc<dyn stream::View>> {
        let conns = self.inner.conns.lock().expect("ADS lock");
        conns.values().cloned().collect()
    }
}

impl std::fmt::Debug for AdsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdsServer")
            .field("revision", &*self.inner.revisions.borrow())
            .field("connections", &self.views().len())
            .finish()
    }
}

impl Inner {
    /// Publishes a debounced change to every stream.
    fn publish(&self, change: Change) {
        let conns: HashSet<u64> = self
            .conns
            .lock()
            .expect("ADS lock")
            .keys()
            .copied()
            .collect();
        tracing::debug!(
            revision = change.revision,
            proxies = conns.len(),
            "pushing a config change"
        );
        self.metrics
            .start_round(change.revision, change.written_at, conns);
        self.revisions.send_replace(change.revision);
    }

    fn nonce(&self) -> String {
        self.next_nonce.fetch_add(1, Ordering::Relaxed).to_string()
    }
}

/// The debouncer: waits for a change, then for `debounce` of quiet (`eds_debounce` while every
/// change is endpoint-only; at most `max_debounce` after the first), and publishes the latest.
fn debounce(rx: std_mpsc::Receiver<Change>, inner: Weak<Inner>, options: AdsOptions) {
    while let Ok(first) = rx.recv() {
        let start = Instant::now();
        let cap = start + options.max_debounce;
        let mut endpoints_only = first.endpoints_only;
        let quiet = |endpoints_only: bool| {
            if endpoints_only {
                options.eds_debounce.min(options.debounce)
            } else {
                options.debounce
            }
        };
        let mut latest = first;
        let mut quiet_until = start + quiet(endpoints_only);
        let mut closed = false;
        loop {
            let until = quiet_until.min(cap);
            let now = Instant::now();
            if now >= until {
                break;
            }
            match rx.recv_timeout(until - now) {
                Ok(change) => {
                    endpoints_only &= change.endpoints_only;
                    if change.revision >= latest.revision {
                        latest = change;
                    }
                    quiet_until = Instant::now() + quiet(endpoints_only);
                }
                Err(std_mpsc::RecvTimeoutError::Timeout) => break,
                Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        match inner.upgrade() {
            Some(inner) => inner.publish(latest),
            None => return,
        }
        if closed {
            return;
        }
    }
}

/// Responses a stream queues for its client beyond the one being written: a slow client holds
/// back its stream's task (which builds the next response only when there is room), not a pile
/// of built responses.
const RESPONSE_QUEUE: usize = 2;

fn control_plane() -> ControlPlane {
    ControlPlane {
        identifier: "strait".to_string(),
    }
}

/// The gRPC service.
struct Service {
    inner: Arc<Inner>,
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Service {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::channel(RESPONSE_QUEUE);
        let peer = request.remote_addr();
        let (_, extensions, requests) = request.into_parts();
        tokio::spawn(stream::run::<sotw::Sotw>(
            self.inner.clone(),
            StreamKind::Sotw,
            peer,
            extensions,
            requests,
            tx,
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::channel(RESPONSE_QUEUE);
        let peer = request.remote_addr();
        let (_, extensions, requests) = request.into_parts();
        tokio::spawn(stream::run::<delta::Delta>(
            self.inner.clone(),
            StreamKind::Delta,
            peer,
            extensions,
            requests,
            tx,
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Empty;

    impl Generator for Empty {
        fn generate(&self, _proxy: &Proxy) -> XdsResources {
            XdsResources::default()
        }
    }

    /// Publishes of the debouncer while `notify` is called every 10 ms for `for_ms`.
    fn publishes(debounce_ms: u64, max_ms: u64, for_ms: u64) -> (Vec<u64>, u64) {
        let server = AdsServer::new(
            Arc::new(Empty),
            AdsOptions {
                debounce: Duration::from_millis(debounce_ms),
                max_debounce: Duration::from_millis(max_ms),
                ..AdsOptions::default()
            },
        );
        let mut rx = server.inner.revisions.subscribe();
        let mut seen = Vec::new();
        let start = Instant::now();
        let mut revision = 0;
        while start.elapsed() < Duration::from_millis(for_ms) {
            revision += 1;
            server.notify(revision, SystemTime::now());
            std::thread::sleep(Duration::from_millis(10));
            if rx.has_changed().unwrap() {
                seen.push(*rx.borrow_and_update());
            }
        }
        std::thread::sleep(Duration::from_millis(debounce_ms + 50));
        if rx.has_changed().unwrap() {
            seen.push(*rx.borrow_and_update());
        }
        (seen, revision)
    }

    #[test]
    fn debounce_batches_changes_and_bounds_the_wait() {
        // Quiet gaps never come: max_debounce forces pushes, each of the latest revision then.
        let (seen, last) = publishes(60, 120, 400);
        assert!(seen.len() >= 3, "{seen:?}");
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
        assert_eq!(seen.last(), Some(&last));
        // A burst shorter than the debounce: one push, of the last revision.
        let (seen, last) = publishes(100, 1000, 50);
        assert_eq!(seen, [last]);
    }

    #[test]
    fn endpoint_only_changes_skip_the_long_debounce() {
        let server = AdsServer::new(
            Arc::new(Empty),
            AdsOptions {
                debounce: Duration::from_millis(300),
                max_debounce: Duration::from_secs(1),
                eds_debounce: Duration::from_millis(5),
            },
        );
        let mut rx = server.inner.revisions.subscribe();
        let wait_for = |rx: &mut watch::Receiver<u64>, revision: u64| {
            let start = Instant::now();
            while *rx.borrow_and_update() != revision {
                assert!(start.elapsed() < Duration::from_secs(2), "never published");
                std::thread::sleep(Duration::from_millis(2));
            }
            start.elapsed()
        };
        server.notify_endpoints(1, SystemTime::now());
        let fast = wait_for(&mut rx, 1);
        assert!(fast < Duration::from_millis(150), "{fast:?}");
        // A config change in the batch: the whole batch waits the full debounce.
        server.notify_endpoints(2, SystemTime::now());
        server.notify(3, SystemTime::now());
        let slow = wait_for(&mut rx, 3);
        assert!(slow >= Duration::from_millis(250), "{slow:?}");
    }
}
