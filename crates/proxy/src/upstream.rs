//! Upstream connections and load balancing: a hyper client (its pool keeps idle connections per
//! endpoint) per protocol and connect timeout, round robin / least request (power of two
//! choices) / random over a cluster's endpoints, and in-flight counts per endpoint.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::config::{Cluster, Discovery, Endpoint, LbPolicy, UpstreamProtocol};

pub(crate) type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Idle upstream connections are closed after this long.
const POOL_IDLE: Duration = Duration::from_secs(60);

#[derive(Default)]
pub(crate) struct Upstreams {
    clients: Mutex<HashMap<(UpstreamProtocol, Duration), HttpClient>>,
    /// Round-robin positions, by cluster.
    cursors: RwLock<HashMap<String, Arc<AtomicUsize>>>,
    /// Requests in flight, by endpoint (`host:port`).
    active: RwLock<HashMap<String, Arc<AtomicUsize>>>,
}

/// An endpoint picked for one attempt; counts as in flight until dropped.
pub(crate) struct Picked {
    pub(crate) authority: String,
    active: Arc<AtomicUsize>,
}

impl Drop for Picked {
    fn drop(&mut self) {
        self.active.fetch_sub(1, Ordering::Relaxed);
    }
}

fn authority(e: &Endpoint) -> String {
    match e.host.parse::<std::net::IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, e.port).to_string(),
        Err(_) => format!("{}:{}", e.host, e.port),
    }
}

impl Upstreams {
    /// The client for a cluster's protocol and connect timeout (made once, then shared).
    pub(crate) fn client(&self, cluster: &Cluster) -> HttpClient {
        let key = (cluster.protocol, cluster.connect_timeout);
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients
            .entry(key)
            .or_insert_with(|| {
                let mut connector = HttpConnector::new();
                connector.set_connect_timeout(Some(cluster.connect_timeout));
                connector.set_nodelay(true);
                let mut builder = Client::builder(TokioExecutor::new());
                builder.pool_idle_timeout(POOL_IDLE);
                if cluster.protocol == UpstreamProtocol::Http2 {
                    builder.http2_only(true);
                }
                builder.build(connector)
            })
            .clone()
    }

    fn active(&self, authority: &str) -> Arc<AtomicUsize> {
        if let Some(a) = self
            .active
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(authority)
        {
            return a.clone();
        }
        self.active
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(authority.to_string())
            .or_default()
            .clone()
    }

    fn cursor(&self, cluster: &str) -> Arc<AtomicUsize> {
        if let Some(c) = self
            .cursors
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(cluster)
        {
            return c.clone();
        }
        self.cursors
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(cluster.to_string())
            .or_default()
            .clone()
    }

    /// Picks an endpoint of `cluster`, avoiding `avoid` (the previous attempt's) when there is
    /// another. `original` is the request's authority, for ORIGINAL_DST clusters.
    pub(crate) fn pick(
        &self,
        cluster: &Cluster,
        avoid: Option<&str>,
        original: &str,
    ) -> Option<Picked> {
        let chosen = if cluster.discovery == Discovery::OriginalDst {
            // Only an explicit IP:port authority names a destination.
            original.parse::<SocketAddr>().ok()?.to_string()
        } else {
            let eps: Vec<String> = cluster.endpoints.iter().map(authority).collect();
            let candidates: Vec<&String> = if eps.len() > 1 {
                eps.iter().filter(|e| Some(e.as_str()) != avoid).collect()
            } else {
                eps.iter().collect()
            };
            if candidates.is_empty() {
                return None;
            }
            let n = candidates.len();
            let i = match cluster.lb {
                LbPolicy::RoundRobin => {
                    self.cursor(&cluster.name).fetch_add(1, Ordering::Relaxed) % n
                }
                LbPolicy::Random => fastrand::usize(0..n),
                LbPolicy::LeastRequest => {
                    let (a, b) = (fastrand::usize(0..n), fastrand::usize(0..n));
                    let load = |i: usize| self.active(candidates[i]).load(Ordering::Relaxed);
                    if load(b) < load(a) { b } else { a }
                }
            };
            candidates[i].clone()
        };
        let active = self.active(&chosen);
        active.fetch_add(1, Ordering::Relaxed);
        Some(Picked {
            authority: chosen,
            active,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(lb: LbPolicy, n: u16) -> Cluster {
        Cluster {
            name: "c".into(),
            discovery: Discovery::Static,
            lb,
            connect_timeout: Duration::from_secs(1),
            protocol: UpstreamProtocol::Http1,
            endpoints: (0..n)
                .map(|i| Endpoint {
                    host: "127.0.0.1".into(),
                    port: 8000 + i,
                })
                .collect(),
        }
    }

    #[test]
    fn round_robin_visits_every_endpoint_in_turn() {
        let up = Upstreams::default();
        let c = cluster(LbPolicy::RoundRobin, 3);
        let picks: Vec<String> = (0..6)
            .map(|_| up.pick(&c, None, "").unwrap().authority.clone())
            .collect();
        assert_eq!(picks[..3], picks[3..]);
        let mut first = picks[..3].to_vec();
        first.sort();
        first.dedup();
        assert_eq!(first.len(), 3);
    }

    #[test]
    fn retries_avoid_the_previous_endpoint_and_empty_clusters_have_none() {
        let up = Upstreams::default();
        let c = cluster(LbPolicy::Random, 2);
        for _ in 0..20 {
            assert_eq!(
                up.pick(&c, Some("127.0.0.1:8000"), "").unwrap().authority,
                "127.0.0.1:8001"
            );
        }
        assert!(
            up.pick(&cluster(LbPolicy::RoundRobin, 0), None, "")
                .is_none()
        );
    }

    #[test]
    fn least_request_prefers_the_idle_endpoint() {
        let up = Upstreams::default();
        let c = cluster(LbPolicy::LeastRequest, 2);
        // Keep 8000 busy: every pick that compares the two must choose 8001.
        let busy: Vec<Picked> = (0..50)
            .filter_map(|_| up.pick(&c, Some("127.0.0.1:8001"), ""))
            .collect();
        assert!(busy.iter().all(|p| p.authority == "127.0.0.1:8000"));
        let picks: Vec<String> = (0..200)
            .map(|_| up.pick(&c, None, "").unwrap().authority.clone())
            .collect();
        let idle = picks.iter().filter(|a| *a == "127.0.0.1:8001").count();
        // P(both samples hit 8000) = 1/4 per pick: about 150 of 200 go to the idle one.
        assert!(idle > 120, "{idle} of 200 picks went to the idle endpoint");
    }

    #[test]
    fn original_dst_goes_where_the_request_says() {
        let up = Upstreams::default();
        let mut c = cluster(LbPolicy::RoundRobin, 0);
        c.discovery = Discovery::OriginalDst;
        assert_eq!(
            up.pick(&c, None, "10.0.0.1:80").unwrap().authority,
            "10.0.0.1:80"
        );
        assert!(up.pick(&c, None, "httpbin.org").is_none());
    }
}
