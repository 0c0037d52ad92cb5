//! A cluster's balancer for one config generation: its endpoints (addresses parsed once, each
//! with the state that outlives generations), its circuit breakers and counters, and the
//! policy's own state (the round-robin cursor, the ring or Maglev table), all built when the
//! config is published (off the data path) and published in the same swap, inside the
//! cluster. A pick costs the same for one endpoint or thousands and allocates nothing; only
//! while outlier detection has endpoints out does it use a list of the healthy ones, rebuilt
//! when that set changes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use hyper::Response;
use hyper::body::Incoming;

use super::ClusterState;
use super::host::{Host, SendError};
use crate::balance::circuit::Circuit;
use crate::balance::hash::{self, Table};
use crate::balance::outlier::Observed;
use crate::body::RequestBody;
use crate::config::{Cluster, Discovery, LbPolicy, OutlierDetection, UpstreamProtocol};
use crate::stats::ClusterStats;

/// Where a published cluster keeps its balancer. Not config: it takes no part in `==` (an
/// unchanged cluster keeps its balancer) nor in the config dump.
#[derive(Clone, Default)]
pub(crate) struct Slot(pub(crate) Option<Arc<Balancer>>);

impl PartialEq for Slot {
    fn eq(&self, _: &Slot) -> bool {
        true
    }
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(b) => write!(f, "Balancer({} endpoints)", b.hosts.len()),
            None => f.write_str("Unpublished"),
        }
    }
}

pub(crate) struct Balancer {
    state: Arc<ClusterState>,
    /// The cluster's endpoints, in the config's order.
    pub(super) hosts: Box<[Arc<Host>]>,
    circuit: Arc<Circuit>,
    policy: Policy,
    lb: LbPolicy,
    od: Option<OutlierDetection>,
    panic_threshold: f64,
    protocol: UpstreamProtocol,
    connect_timeout: Duration,
    original_dst: bool,
    /// The cluster's `upstream_bind_config.source_address`.
    source: Option<SocketAddr>,
    /// The endpoints outlier detection left in, while it has any out.
    healthy: ArcSwapOption<Healthy>,
}

enum Policy {
    RoundRobin(AtomicUsize),
    /// Power of two choices over the requests in flight.
    LeastRequest,
    Random,
    /// Ring hash or Maglev over all the endpoints.
    Hash(Table),
}

/// The endpoints in use while some are ejected, for one outlier epoch.
struct Healthy {
    epoch: u64,
    /// Every endpoint serves (none is out, or too few are left: the panic threshold).
    all: bool,
    /// Indices into `Balancer::hosts`.
    ids: Box<[u32]>,
    /// For ring hash and Maglev: the table over `ids`.
    table: Option<Table>,
}

/// The endpoints a pick chooses among.
#[derive(Clone, Copy)]
enum View<'a> {
    All(usize),
    Some(&'a [u32]),
}

impl View<'_> {
    fn len(self) -> usize {
        match self {
            View::All(n) => n,
            View::Some(ids) => ids.len(),
        }
    }

    fn get(self, i: usize) -> usize {
        match self {
            View::All(_) => i,
            View::Some(ids) => ids[i] as usize,
        }
    }
}

/// An endpoint picked for one attempt; counts as in flight until dropped.
pub(crate) struct Picked {
    host: Arc<Host>,
}

impl Picked {
    pub(super) fn new(host: Arc<Host>) -> Picked {
        host.start_request();
        Picked { host }
    }

    pub(crate) fn host(&self) -> &Arc<Host> {
        &self.host
    }

    pub(crate) fn authority(&self) -> &str {
        &self.host.authority
    }
}

impl Drop for Picked {
    fn drop(&mut self) {
        self.host.end_request();
    }
}

fn same(a: &Host, b: &Host) -> bool {
    std::ptr::eq(a, b) || a.authority == b.authority
}

fn table(lb: LbPolicy, keys: &[&str]) -> Option<Table> {
    match lb {
        LbPolicy::RingHash { minimum_ring_size } => Some(Table::ring(keys, minimum_ring_size)),
        LbPolicy::Maglev { table_size } => Some(Table::maglev(keys, table_size)),
        LbPolicy::RoundRobin | LbPolicy::LeastRequest | LbPolicy::Random => None,
    }
}

impl Balancer {
    /// The balancer of `cluster`, whose lasting state is `state`; `hosts` are its endpoints'.
    pub(super) fn new(cluster: &Cluster, state: Arc<ClusterState>, hosts: Vec<Arc<Host>>) -> Self {
        let keys: Vec<&str> = hosts.iter().map(|h| &*h.authority).collect();
        let policy = match cluster.lb {
            LbPolicy::RoundRobin => {
                // From a random place, so that proxies given the same list spread their load.
                Policy::RoundRobin(AtomicUsize::new(fastrand::usize(..)))
            }
            LbPolicy::LeastRequest => Policy::LeastRequest,
            LbPolicy::Random => Policy::Random,
            lb => Policy::Hash(table(lb, &keys).expect("a hash policy has a table")),
        };
        Balancer {
            circuit: state.circuit(cluster.circuit_breakers),
            state,
            hosts: hosts.into_boxed_slice(),
            policy,
            lb: cluster.lb,
            od: cluster.outlier_detection.clone(),
            panic_threshold: cluster.healthy_panic_threshold,
            protocol: cluster.protocol,
            connect_timeout: cluster.connect_timeout,
            original_dst: cluster.discovery == Discovery::OriginalDst,
            source: cluster.source_address,
            healthy: ArcSwapOption::empty(),
        }
    }

    /// The cluster's circuit breakers.
    pub(crate) fn circuit(&self) -> &Arc<Circuit> {
        &self.circuit
    }

    /// The cluster's counters.
    pub(crate) fn stats(&self) -> &Arc<ClusterStats> {
        &self.state.stats
    }

    pub(crate) fn hosts(&self) -> &[Arc<Host>] {
        &self.hosts
    }

    pub(crate) fn outlier_detection(&self) -> Option<&OutlierDetection> {
        self.od.as_ref()
    }

    /// Picks an endpoint, avoiding `avoid` (the previous attempt's) when there is another.
    /// `original` is the request's destination, for ORIGINAL_DST clusters (only an explicit
    /// `IP:port` names one); `hash` the request's hash, for consistent-hash clusters (a random
    /// one when the request has none).
    pub(crate) fn pick(
        &self,
        avoid: Option<&Host>,
        original: &str,
        hash: Option<u64>,
    ) -> Option<Picked> {
        if self.original_dst {
            let addr: SocketAddr = original.parse().ok()?;
            return Some(Picked::new(self.state.destination(addr, self.source)));
        }
        let healthy = self.healthy();
        let view = match healthy.as_deref() {
            Some(h) if !h.all => View::Some(&h.ids),
            _ => View::All(self.hosts.len()),
        };
        let n = view.len();
        if n == 0 {
            return None;
        }
        let avoided = |i: usize| avoid.is_some_and(|a| same(&self.hosts[i], a));
        // Another endpoint than `i` when `i` is to be avoided: the next one in the view.
        let other = |k: usize| {
            let j = k % n;
            let i = view.get(j);
            if n > 1 && avoided(i) {
                view.get((j + 1) % n)
            } else {
                i
            }
        };
        let i = match &self.policy {
            Policy::RoundRobin(cursor) => other(cursor.fetch_add(1, Ordering::Relaxed)),
            Policy::Random => other(fastrand::usize(0..n)),
            Policy::LeastRequest => {
                let (a, b) = (other(fastrand::usize(0..n)), other(fastrand::usize(0..n)));
                if self.hosts[b].active() < self.hosts[a].active() {
                    b
                } else {
                    a
                }
            }
            Policy::Hash(all) => {
                let table = match healthy.as_deref() {
                    Some(Healthy {
                        all: false,
                        table: Some(t),
                        ..
                    }) => t,
                    _ => all,
                };
                let h = hash.unwrap_or_else(|| fastrand::u64(..));
                let at = |h: u64| view.get(table.lookup(h).unwrap_or(0));
                let first = at(h);
                if n < 2 || !avoided(first) {
                    first
                } else {
                    // A retry: another endpoint, the same for the same key.
                    (1..=8u64)
                        .map(|k| at(hash::mix(h ^ k)))
                        .chain((0..n).map(|k| view.get(k)))
                        .find(|&i| !avoided(i))
                        .unwrap_or(first)
                }
            }
        };
        Some(Picked::new(self.hosts[i].clone()))
    }

    /// The endpoints outlier detection left in, when it has some out (`None`: all of them).
    /// Below the panic threshold all of them serve; with a threshold of 0 none may be left.
    fn healthy(&self) -> Option<Arc<Healthy>> {
        let od = self.od.as_ref()?;
        let outliers = &self.state.outliers;
        if !outliers.any_ejected() {
            return None;
        }
        self.state.settle(od, Instant::now(), false);
        let epoch = outliers.epoch();
        if let Some(h) = self.healthy.load_full()
            && h.epoch == epoch
        {
            return Some(h);
        }
        let ids: Box<[u32]> = (0..self.hosts.len())
            .filter(|&i| !self.hosts[i].outlier.is_ejected())
            .map(|i| i as u32)
            .collect();
        let all = ids.len() == self.hosts.len()
            || (100 * ids.len()) as f64 / (self.hosts.len() as f64) < self.panic_threshold;
        let table = match all {
            false => {
                let keys: Vec<&str> = ids
                    .iter()
                    .map(|&i| &*self.hosts[i as usize].authority)
                    .collect();
                table(self.lb, &keys)
            }
            true => None,
        };
        let h = Arc::new(Healthy {
            epoch,
            all,
            ids,
            table,
        });
        self.healthy.store(Some(h.clone()));
        Some(h)
    }

    /// Sends `req` to the picked endpoint in the cluster's protocol.
    pub(crate) async fn send(
        &self,
        picked: &Picked,
        req: hyper::Request<RequestBody>,
    ) -> Result<Response<Incoming>, SendError> {
        picked
            .host
            .send(self.protocol, self.connect_timeout, req)
            .await
    }

    /// Tells outlier detection how an attempt on the picked endpoint ended.
    pub(crate) fn report(&self, picked: &Picked, observed: Observed) {
        let Some(od) = &self.od else {
            return;
        };
        // ORIGINAL_DST destinations are not the cluster's endpoints; one that left the
        // cluster is of no more concern.
        if self.original_dst || picked.host.is_draining() {
            return;
        }
        let ejected = self.state.outliers.report(
            od,
            &picked.host.outlier,
            self.hosts.len(),
            observed,
            Instant::now(),
        );
        if let Some(detector) = ejected {
            tracing::info!(cluster = %self.state.name, endpoint = %picked.authority(), ?detector, "outlier detection: ejected");
        }
    }
}
