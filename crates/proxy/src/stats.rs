//! Counters for `/stats/prometheus`: requests per cluster by response class, connections per
//! listener, and the responses the proxy produced itself, by response flag. Named after Envoy's
//! cluster and listener stats.
//!
//! A cluster's series go when the cluster leaves the config, at once (the next scrape no longer
//! has them, as Envoy drops a removed cluster's stats); the data path counts through the
//! cluster's balancer, so a request still in flight to a removed cluster cannot bring them back.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

#[derive(Default)]
pub(crate) struct Stats {
    clusters: RwLock<BTreeMap<String, Arc<ClusterStats>>>,
    /// Downstream connections by listener address.
    listeners: RwLock<BTreeMap<std::net::SocketAddr, Arc<AtomicU64>>>,
    /// TLS handshakes by listener address and outcome (`ssl_handshake`, `ssl_connection_error`).
    listener_tls: RwLock<BTreeMap<(std::net::SocketAddr, &'static str), Arc<AtomicU64>>>,
    flags: RwLock<BTreeMap<&'static str, Arc<AtomicU64>>>,
}

/// One cluster's counters.
#[derive(Default)]
pub(crate) struct ClusterStats {
    /// Upstream requests (attempts, retries included).
    rq_total: AtomicU64,
    /// Responses by class: 1xx..5xx.
    rq_class: [AtomicU64; 5],
    retries: AtomicU64,
    /// Upstream connections opened by tcp_proxy.
    cx_total: AtomicU64,
}

impl ClusterStats {
    pub(crate) fn attempt(&self, retry: bool) {
        self.rq_total.fetch_add(1, Ordering::Relaxed);
        if retry {
            self.retries.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn connection(&self) {
        self.cx_total.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn response(&self, status: u16) {
        if let Some(c) = self.rq_class.get(usize::from(status / 100).wrapping_sub(1)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Stats {
    /// The counters of cluster `name`, made on first use.
    pub(crate) fn cluster(&self, name: &str) -> Arc<ClusterStats> {
        if let Some(s) = self
            .clusters
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
        {
            return s.clone();
        }
        self.clusters
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    /// Drops the series of the clusters `keep` says no to.
    pub(crate) fn retain_clusters(&self, keep: impl Fn(&str) -> bool) {
        self.clusters
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|name, _| keep(name));
    }

    /// A connection served by the listener at `address` (after a virtualOutbound hand-off, the
    /// listener it was handed to, as in Envoy).
    pub(crate) fn listener_connection(&self, address: std::net::SocketAddr) {
        bump(&self.listeners, address);
    }

    /// A TLS handshake completed on the listener at `address`.
    pub(crate) fn tls_handshake(&self, address: std::net::SocketAddr) {
        bump(&self.listener_tls, (address, "ssl_handshake"));
    }

    /// A TLS handshake refused (or that could not start) on the listener at `address`.
    pub(crate) fn tls_handshake_failed(&self, address: std::net::SocketAddr) {
        bump(&self.listener_tls, (address, "ssl_connection_error"));
    }

    pub(crate) fn flag(&self, flag: &'static str) {
        bump(&self.flags, flag);
    }

    /// The Prometheus text format.
    pub(crate) fn prometheus(&self) -> String {
        let mut out = String::new();
        let clusters = self.clusters.read().unwrap_or_else(|e| e.into_inner());
        out.push_str("# TYPE envoy_cluster_upstream_rq_total counter\n");
        for (name, s) in clusters.iter() {
            let _ = writeln!(
                out,
                "envoy_cluster_upstream_rq_total{{envoy_cluster_name=\"{name}\"}} {}",
                s.rq_total.load(Ordering::Relaxed)
            );
        }
        out.push_str("# TYPE envoy_cluster_upstream_rq_xx counter\n");
        for (name, s) in clusters.iter() {
            for (i, c) in s.rq_class.iter().enumerate() {
                let n = c.load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "envoy_cluster_upstream_rq_xx{{envoy_response_code_class=\"{}\",envoy_cluster_name=\"{name}\"}} {n}",
                        i + 1
                    );
                }
            }
        }
        out.push_str("# TYPE envoy_cluster_upstream_rq_retry counter\n");
        for (name, s) in clusters.iter() {
            let _ = writeln!(
                out,
                "envoy_cluster_upstream_rq_retry{{envoy_cluster_name=\"{name}\"}} {}",
                s.retries.load(Ordering::Relaxed)
            );
        }
        out.push_str("# TYPE envoy_cluster_upstream_cx_total counter\n");
        for (name, s) in clusters.iter() {
            let n = s.cx_total.load(Ordering::Relaxed);
            if n > 0 {
                let _ = writeln!(
                    out,
                    "envoy_cluster_upstream_cx_total{{envoy_cluster_name=\"{name}\"}} {n}"
                );
            }
        }
        out.push_str("# TYPE envoy_listener_downstream_cx_total counter\n");
        // Labelled `0.0.0.0_8000`, as Envoy labels its listeners.
        let listeners = self.listeners.read().unwrap_or_else(|e| e.into_inner());
        for (address, n) in listeners.iter() {
            let _ = writeln!(
                out,
                "envoy_listener_downstream_cx_total{{envoy_listener_address=\"{}_{}\"}} {}",
                address.ip(),
                address.port(),
                n.load(Ordering::Relaxed)
            );
        }
        let tls = self.listener_tls.read().unwrap_or_else(|e| e.into_inner());
        for stat in ["ssl_handshake", "ssl_connection_error"] {
            let _ = writeln!(out, "# TYPE envoy_listener_{stat} counter");
            for ((address, _), n) in tls.iter().filter(|((_, s), _)| *s == stat) {
                let _ = writeln!(
                    out,
                    "envoy_listener_{stat}{{envoy_listener_address=\"{}_{}\"}} {}",
                    address.ip(),
                    address.port(),
                    n.load(Ordering::Relaxed)
                );
            }
        }
        out.push_str("# TYPE strait_proxy_local_responses_total counter\n");
        for (flag, n) in self.flags.read().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = writeln!(
                out,
                "strait_proxy_local_responses_total{{response_flag=\"{flag}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        out
    }
}

/// Adds one to the counter at `key`, made on first use (then only a read lock is taken).
fn bump<K: Ord>(counters: &RwLock<BTreeMap<K, Arc<AtomicU64>>>, key: K) {
    if let Some(c) = counters.read().unwrap_or_else(|e| e.into_inner()).get(&key) {
        c.fetch_add(1, Ordering::Relaxed);
        return;
    }
    counters
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .entry(key)
        .or_default()
        .fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_requests_by_cluster_and_class() {
        let stats = Stats::default();
        let c = stats.cluster("outbound|9080|v1|reviews.default.svc.cluster.local");
        c.attempt(false);
        c.response(200);
        c.attempt(true);
        c.response(503);
        stats.flag("UT");
        stats
            .cluster("outbound|9000||tcp-echo.default.svc.cluster.local")
            .connection();
        stats.listener_connection("0.0.0.0:8000".parse().unwrap());
        stats.listener_connection("0.0.0.0:8000".parse().unwrap());
        stats.tls_handshake("0.0.0.0:15006".parse().unwrap());
        stats.tls_handshake_failed("0.0.0.0:15006".parse().unwrap());
        let text = stats.prometheus();
        for line in [
            "envoy_listener_downstream_cx_total{envoy_listener_address=\"0.0.0.0_8000\"} 2",
            "envoy_listener_ssl_handshake{envoy_listener_address=\"0.0.0.0_15006\"} 1",
            "envoy_listener_ssl_connection_error{envoy_listener_address=\"0.0.0.0_15006\"} 1",
            "envoy_cluster_upstream_rq_total{envoy_cluster_name=\"outbound|9080|v1|reviews.default.svc.cluster.local\"} 2",
            "envoy_cluster_upstream_rq_xx{envoy_response_code_class=\"5\",envoy_cluster_name=\"outbound|9080|v1|reviews.default.svc.cluster.local\"} 1",
            "envoy_cluster_upstream_rq_retry{envoy_cluster_name=\"outbound|9080|v1|reviews.default.svc.cluster.local\"} 1",
            "strait_proxy_local_responses_total{response_flag=\"UT\"} 1",
            "envoy_cluster_upstream_cx_total{envoy_cluster_name=\"outbound|9000||tcp-echo.default.svc.cluster.local\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
