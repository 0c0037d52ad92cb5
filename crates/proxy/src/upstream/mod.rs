//! Upstream state. Per cluster, what must outlive a config generation, keyed by endpoint: each
//! endpoint's requests in flight, outlier detection state and connections ([`Host`]), and the
//! cluster's circuit breakers and counters ([`ClusterState`]). Per generation, a [`Balancer`]
//! built when the config is published and kept inside the published cluster, so that the data
//! path finds everything in the one config it loaded.
//!
//! Publishing prunes: an endpoint that leaves its cluster is forgotten and its connections
//! drained (idle ones close at once, busy ones after their request), as Envoy does; a cluster
//! that leaves the config goes with its endpoints and its stats. A sweep every second closes
//! connections idle for [`POOL_IDLE`] and forgets ORIGINAL_DST destinations unused for
//! [`ORIGINAL_DST_CLEANUP`].

mod balancer;
mod host;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub(crate) use balancer::{Balancer, Picked, Slot};
pub(crate) use host::{AutoSni, Host, HostTls, SendError};

use crate::balance::circuit::Circuit;
use crate::balance::outlier::ClusterOutliers;
use crate::config::{CircuitBreakers, Cluster, Config, Endpoint, OutlierDetection};
use crate::stats::{ClusterStats, Stats};
use crate::tls::Secrets;

/// Idle upstream connections are closed after this long.
pub(crate) const POOL_IDLE: Duration = Duration::from_secs(60);
/// An ORIGINAL_DST destination with no request for this long is forgotten and its connections
/// closed (Envoy's `cleanup_interval` default).
pub(crate) const ORIGINAL_DST_CLEANUP: Duration = Duration::from_secs(5);
/// How often [`Upstreams::sweep`] runs.
pub(crate) const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The lasting state of every cluster in the config, by name.
#[derive(Default)]
pub(crate) struct Upstreams {
    clusters: Mutex<HashMap<String, Arc<ClusterState>>>,
    /// The certificates TLS to endpoints is built with.
    secrets: Arc<Secrets>,
}

/// What a cluster keeps across config generations.
pub(crate) struct ClusterState {
    name: String,
    /// The configured endpoints' state, by authority.
    hosts: Mutex<HashMap<Box<str>, Arc<Host>>>,
    /// ORIGINAL_DST destinations in use, with when each was last picked.
    destinations: Mutex<HashMap<SocketAddr, (Arc<Host>, Instant)>>,
    circuit: Mutex<Arc<Circuit>>,
    outliers: ClusterOutliers,
    stats: Arc<ClusterStats>,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An endpoint's authority (`IP:port`, `[IPv6]:port`, or `name:port` in a DNS cluster) and its
/// address when it has one.
fn authority(e: &Endpoint) -> (String, Option<SocketAddr>) {
    match e.host.parse::<std::net::IpAddr>() {
        Ok(ip) => {
            let a = SocketAddr::new(ip, e.port);
            (a.to_string(), Some(a))
        }
        Err(_) => (format!("{}:{}", e.host, e.port), None),
    }
}

/// The balancer published with `cluster` (every cluster of a published config has one).
pub(crate) fn balancer(cluster: &Cluster) -> Option<&Arc<Balancer>> {
    cluster.balancer.0.as_ref()
}

impl ClusterState {
    fn new(name: &str, stats: Arc<ClusterStats>, limits: CircuitBreakers) -> ClusterState {
        ClusterState {
            name: name.to_string(),
            hosts: Mutex::new(HashMap::new()),
            destinations: Mutex::new(HashMap::new()),
            circuit: Mutex::new(Arc::new(Circuit::new(limits))),
            outliers: ClusterOutliers::default(),
            stats,
        }
    }

    /// The breakers for `limits`: the same as before while the thresholds stay, new ones when
    /// they change (requests admitted under the old ones finish under them).
    fn circuit(&self, limits: CircuitBreakers) -> Arc<Circuit> {
        let mut c = locked(&self.circuit);
        if c.limits != limits {
            *c = Arc::new(Circuit::new(limits));
        }
        c.clone()
    }

    /// The state of ORIGINAL_DST destination `addr`, made on its first request, connected to
    /// from `source` (the cluster's `upstream_bind_config`; a change makes a new host).
    fn destination(&self, addr: SocketAddr, source: Option<SocketAddr>) -> Arc<Host> {
        let now = Instant::now();
        let mut d = locked(&self.destinations);
        let new = || Arc::new(Host::new(addr.to_string(), Some(addr), None).with_source(source));
        let (host, used) = d.entry(addr).or_insert_with(|| (new(), now));
        if host.source() != source {
            host.drain();
            *host = new();
        }
        *used = now;
        host.clone()
    }

    /// Settles outlier detection over the cluster's current endpoints (see
    /// [`ClusterOutliers::settle`]).
    fn settle(&self, od: &OutlierDetection, now: Instant, force: bool) {
        let hosts = locked(&self.hosts);
        self.outliers
            .settle(od, hosts.values().map(|h| &h.outlier), now, force);
    }

    /// The cluster left the config: every connection drains.
    fn drain(&self) {
        for h in locked(&self.hosts).drain().map(|(_, h)| h) {
            h.drain();
        }
        for (h, _) in locked(&self.destinations).drain().map(|(_, v)| v) {
            h.drain();
        }
    }
}

impl Upstreams {
    pub(crate) fn new(secrets: Arc<Secrets>) -> Upstreams {
        Upstreams {
            clusters: Mutex::default(),
            secrets,
        }
    }

    /// Gives each cluster of `config` (about to be published) its balancer: an unchanged
    /// cluster keeps the one it had in `previous`; a new or changed one gets a new balancer
    /// over the lasting state of its endpoints. Returns the names of the clusters that changed,
    /// for [`Upstreams::prune`] once `config` is published.
    pub(crate) fn prepare(
        &self,
        config: &mut Config,
        previous: &Config,
        stats: &Stats,
    ) -> Vec<String> {
        let mut changed = Vec::new();
        let mut states = locked(&self.clusters);
        for (name, cluster) in config.clusters.iter_mut() {
            if let Some(prev) = previous.clusters.get(name)
                && prev.balancer.0.is_some()
                && **prev == **cluster
            {
                *cluster = prev.clone();
                continue;
            }
            let state = states
                .entry(name.clone())
                .or_insert_with(|| {
                    Arc::new(ClusterState::new(
                        name,
                        stats.cluster(name),
                        cluster.circuit_breakers,
                    ))
                })
                .clone();
            let auto = cluster.auto_sni.then_some(AutoSni {
                san_validation: cluster.auto_san_validation,
            });
            let hosts: Vec<Arc<Host>> = {
                let mut known = locked(&state.hosts);
                cluster
                    .endpoints
                    .iter()
                    .map(|e| {
                        let (authority, ip) = authority(e);
                        let tls = cluster.tls.for_endpoint(e);
                        match known.get(authority.as_str()) {
                            Some(h)
                                if h.uses(tls, auto)
                                    && h.workload == e.workload
                                    && h.source() == cluster.source_address =>
                            {
                                h.clone()
                            }
                            _ => {
                                // New, or its TLS changed: new connections from now on.
                                let host_tls = tls.map(|context| HostTls {
                                    context: context.clone(),
                                    secrets: self.secrets.clone(),
                                    auto,
                                });
                                let h = Arc::new(
                                    Host::new(authority.clone(), ip, host_tls)
                                        .with_workload(e.workload.clone())
                                        .with_source(cluster.source_address),
                                );
                                if let Some(old) =
                                    known.insert(authority.into_boxed_str(), h.clone())
                                {
                                    old.drain();
                                }
                                h
                            }
                        }
                    })
                    .collect()
            };
            let lb = Balancer::new(cluster, state, hosts);
            Arc::make_mut(cluster).balancer = Slot(Some(Arc::new(lb)));
            changed.push(name.clone());
        }
        changed
    }

    /// After `config` is published: forgets the endpoints that left the clusters that
    /// `changed`, and the clusters that left the config with their stats; their connections
    /// drain.
    pub(crate) fn prune(&self, config: &Config, changed: &[String], stats: &Stats) {
        let mut states = locked(&self.clusters);
        states.retain(|name, state| {
            let keep = config.clusters.contains_key(name);
            if !keep {
                state.drain();
            }
            keep
        });
        for name in changed {
            let (Some(state), Some(lb)) = (
                states.get(name),
                config.clusters.get(name).and_then(|c| balancer(c)),
            ) else {
                continue;
            };
            let current: HashSet<&str> = lb.hosts().iter().map(|h| &*h.authority).collect();
            locked(&state.hosts).retain(|authority, h| {
                let keep = current.contains(&**authority);
                if !keep {
                    h.drain();
                }
                keep
            });
            if let Some(od) = lb.outlier_detection() {
                state.settle(od, Instant::now(), true);
            }
        }
        drop(states);
        stats.retain_clusters(|name| config.clusters.contains_key(name));
    }

    /// Closes the connections idle for [`POOL_IDLE`], and forgets the ORIGINAL_DST
    /// destinations unused for [`ORIGINAL_DST_CLEANUP`] (closing theirs).
    pub(crate) fn sweep(&self, now: Instant) {
        let states: Vec<Arc<ClusterState>> = locked(&self.clusters).values().cloned().collect();
        for state in states {
            for h in locked(&state.hosts).values() {
                h.expire(now, POOL_IDLE);
            }
            locked(&state.destinations).retain(|_, (h, used)| {
                h.expire(now, POOL_IDLE);
                let keep =
                    h.active() > 0 || now.saturating_duration_since(*used) < ORIGINAL_DST_CLEANUP;
                if !keep {
                    h.drain();
                }
                keep
            });
        }
    }

    /// Envoy's admin `/clusters` text: per cluster its thresholds, and per endpoint its
    /// requests in flight and health flags (`/failed_outlier_check` when ejected).
    pub(crate) fn clusters_text(&self, config: &Config) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let now = Instant::now();
        for (name, c) in &config.clusters {
            let cb = c.circuit_breakers;
            let _ = writeln!(out, "{name}::observability_name::{name}");
            for (k, v) in [
                ("max_connections", cb.max_connections),
                ("max_pending_requests", cb.max_pending_requests),
                ("max_requests", cb.max_requests),
                ("max_retries", cb.max_retries),
            ] {
                let _ = writeln!(out, "{name}::default_priority::{k}::{v}");
            }
            let Some(lb) = balancer(c) else {
                continue;
            };
            let (rq, cx) = lb.circuit().active();
            let _ = writeln!(out, "{name}::rq_active::{rq}");
            let _ = writeln!(out, "{name}::cx_active::{cx}");
            let _ = writeln!(out, "{name}::added_via_api::true");
            for h in lb.hosts() {
                let ep = &h.authority;
                let ejected = lb
                    .outlier_detection()
                    .is_some_and(|od| h.outlier.is_ejected_at(od, now));
                let flags = if ejected {
                    "/failed_outlier_check"
                } else {
                    "healthy"
                };
                let _ = writeln!(out, "{name}::{ep}::rq_active::{}", h.active());
                let _ = writeln!(out, "{name}::{ep}::hostname::");
                let _ = writeln!(out, "{name}::{ep}::health_flags::{flags}");
                let _ = writeln!(out, "{name}::{ep}::weight::1");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
