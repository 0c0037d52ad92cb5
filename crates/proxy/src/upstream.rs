//! Upstream connections and load balancing: for HTTP/1.1 a hyper client (its pool keeps idle
//! connections per endpoint) per connect timeout; for HTTP/2 one multiplexed connection per
//! endpoint, whose requests carry their own `:authority` (the pooled client would take it from
//! the endpoint's address); round robin / least request (power of two
//! choices) / random / ring hash / Maglev over a cluster's endpoints less those outlier
//! detection ejected (all of them below the panic threshold), in-flight counts per endpoint,
//! and the clusters' circuit breakers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper::header::HOST;
use hyper::{Request, Response, Uri, Version};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::balance::circuit::{Circuit, Circuits};
use crate::balance::hash::{self, Table};
use crate::balance::outlier::{Observed, Outliers};
use crate::config::{Cluster, Config, Discovery, Endpoint, LbPolicy, UpstreamProtocol};
use crate::http::RequestBody;

pub(crate) type HttpClient = Client<HttpConnector, RequestBody>;

/// Idle upstream connections are closed after this long.
const POOL_IDLE: Duration = Duration::from_secs(60);

/// Why an upstream request got no response.
#[derive(Debug)]
pub(crate) enum SendError {
    /// No connection to the endpoint (refused, timed out, the HTTP/2 handshake failed).
    Connect(String),
    /// The connection or stream failed after the request was sent, or while sending it.
    Reset(String),
    /// The HTTP/2 upstream refused the stream (`RST_STREAM` with `REFUSED_STREAM`): it did not
    /// process the request (the `refused-stream` retry condition).
    Refused(String),
}

type H2Connections = Arc<Mutex<HashMap<String, http2::SendRequest<RequestBody>>>>;

#[derive(Default)]
pub(crate) struct Upstreams {
    /// HTTP/1.1 clients by connect timeout.
    clients: Mutex<HashMap<Duration, HttpClient>>,
    /// The HTTP/2 connection to each endpoint (`host:port`), until it closes.
    h2: H2Connections,
    /// Round-robin positions, by cluster.
    cursors: RwLock<HashMap<String, Arc<AtomicUsize>>>,
    /// Requests in flight, by endpoint (`host:port`).
    active: RwLock<HashMap<String, Arc<AtomicUsize>>>,
    outliers: Outliers,
    circuits: Circuits,
    /// Consistent-hash tables by cluster, with the endpoints and policy they were built for.
    tables: RwLock<HashMap<String, Arc<HashTable>>>,
}

struct HashTable {
    endpoints: Vec<String>,
    lb: LbPolicy,
    table: Table,
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
    /// The HTTP/1.1 client for a connect timeout (made once, then shared).
    fn client(&self, connect_timeout: Duration) -> HttpClient {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients
            .entry(connect_timeout)
            .or_insert_with(|| {
                let mut connector = HttpConnector::new();
                connector.set_connect_timeout(Some(connect_timeout));
                connector.set_nodelay(true);
                let mut builder = Client::builder(TokioExecutor::new());
                builder.pool_idle_timeout(POOL_IDLE);
                builder.build(connector)
            })
            .clone()
    }

    /// Sends `req` (its URI: the path and query) to `endpoint` of `cluster` in the cluster's
    /// protocol. Over HTTP/2 the request's `Host` becomes its `:authority`.
    pub(crate) async fn send(
        &self,
        cluster: &Cluster,
        endpoint: &str,
        mut req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, SendError> {
        let path = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let uri = |authority: &str| format!("http://{authority}{path}").parse::<Uri>();
        match cluster.protocol {
            UpstreamProtocol::Http1 => {
                *req.uri_mut() = uri(endpoint)
                    .map_err(|e| SendError::Reset(format!("bad upstream URI: {e}")))?;
                *req.version_mut() = Version::HTTP_11;
                self.client(cluster.connect_timeout)
                    .request(req)
                    .await
                    .map_err(|e| {
                        let chain = crate::http::error_chain(&e);
                        if e.is_connect() {
                            SendError::Connect(chain)
                        } else {
                            SendError::Reset(chain)
                        }
                    })
            }
            UpstreamProtocol::Http2 => {
                let host = req.headers_mut().remove(HOST);
                *req.uri_mut() = host
                    .as_ref()
                    .and_then(|h| h.to_str().ok())
                    .and_then(|h| uri(h).ok())
                    .map_or_else(|| uri(endpoint), Ok)
                    .map_err(|e| SendError::Reset(format!("bad upstream URI: {e}")))?;
                *req.version_mut() = Version::HTTP_2;
                let mut sender = self
                    .h2_connection(endpoint, cluster.connect_timeout)
                    .await?;
                if sender.ready().await.is_err() {
                    // The connection went away since its last request (GOAWAY, closed while
                    // idle): a new one, once.
                    self.h2
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(endpoint);
                    sender = self
                        .h2_connection(endpoint, cluster.connect_timeout)
                        .await?;
                    sender
                        .ready()
                        .await
                        .map_err(|e| SendError::Reset(crate::http::error_chain(&e)))?;
                }
                sender.send_request(req).await.map_err(|e| {
                    let chain = crate::http::error_chain(&e);
                    if refused_stream(&e) {
                        SendError::Refused(chain)
                    } else {
                        SendError::Reset(chain)
                    }
                })
            }
        }
    }

    /// The open HTTP/2 connection to `endpoint`, or a new one.
    async fn h2_connection(
        &self,
        endpoint: &str,
        connect_timeout: Duration,
    ) -> Result<http2::SendRequest<RequestBody>, SendError> {
        {
            let conns = self.h2.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(c) = conns.get(endpoint)
                && !c.is_closed()
            {
                return Ok(c.clone());
            }
        }
        let stream =
            tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(endpoint))
                .await
                .map_err(|_| SendError::Connect(format!("connect timeout ({connect_timeout:?})")))?
                .map_err(|e| SendError::Connect(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| {
                SendError::Connect(format!(
                    "HTTP/2 handshake: {}",
                    crate::http::error_chain(&e)
                ))
            })?;
        let conns = self.h2.clone();
        let key = endpoint.to_string();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(endpoint = %key, error = %e, "upstream HTTP/2 connection failed");
            }
            let mut conns = conns.lock().unwrap_or_else(|e| e.into_inner());
            if conns.get(&key).is_some_and(|c| c.is_closed()) {
                conns.remove(&key);
            }
        });
        self.h2
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(endpoint.to_string(), sender.clone());
        Ok(sender)
    }

    fn active(&self, authority: &str) -> Arc<AtomicUsize> {
        crate::shared_entry(&self.active, authority)
    }

    fn cursor(&self, cluster: &str) -> Arc<AtomicUsize> {
        crate::shared_entry(&self.cursors, cluster)
    }

    /// Picks an endpoint of `cluster`, avoiding `avoid` (the previous attempt's) when there is
    /// another. `original` is the request's authority, for ORIGINAL_DST clusters; `hash` the
    /// request's hash, for consistent-hash clusters.
    pub(crate) fn pick(
        &self,
        cluster: &Cluster,
        avoid: Option<&str>,
        original: &str,
        hash: Option<u64>,
    ) -> Option<Picked> {
        let chosen = if cluster.discovery == Discovery::OriginalDst {
            // Only an explicit IP:port authority names a destination.
            original.parse::<SocketAddr>().ok()?.to_string()
        } else {
            let eps = self.healthy(cluster);
            if eps.is_empty() {
                return None;
            }
            if let LbPolicy::RingHash { .. } | LbPolicy::Maglev { .. } = cluster.lb {
                self.pick_hashed(
                    cluster,
                    eps,
                    avoid,
                    hash.unwrap_or_else(|| fastrand::u64(..)),
                )
            } else {
                let candidates: Vec<&String> = if eps.len() > 1 {
                    eps.iter().filter(|e| Some(e.as_str()) != avoid).collect()
                } else {
                    eps.iter().collect()
                };
                let n = candidates.len();
                let i = match cluster.lb {
                    LbPolicy::RoundRobin => {
                        self.cursor(&cluster.name).fetch_add(1, Ordering::Relaxed) % n
                    }
                    LbPolicy::LeastRequest => {
                        let (a, b) = (fastrand::usize(0..n), fastrand::usize(0..n));
                        let load = |i: usize| self.active(candidates[i]).load(Ordering::Relaxed);
                        if load(b) < load(a) { b } else { a }
                    }
                    _ => fastrand::usize(0..n),
                };
                candidates[i].clone()
            }
        };
        let active = self.active(&chosen);
        active.fetch_add(1, Ordering::Relaxed);
        Some(Picked {
            authority: chosen,
            active,
        })
    }

    /// The endpoints to balance over: those outlier detection has not ejected, or all of them
    /// when fewer than the panic threshold are left (none, with a threshold of 0, when all are
    /// ejected).
    fn healthy(&self, cluster: &Cluster) -> Vec<String> {
        let all: Vec<String> = cluster.endpoints.iter().map(authority).collect();
        let Some(od) = &cluster.outlier_detection else {
            return all;
        };
        let ejected = self
            .outliers
            .cluster(&cluster.name)
            .ejected(od, &all, Instant::now());
        if ejected.is_empty() {
            return all;
        }
        let healthy: Vec<String> = all
            .iter()
            .filter(|e| !ejected.contains(*e))
            .cloned()
            .collect();
        if (100 * healthy.len()) as f64 / (all.len() as f64) < cluster.healthy_panic_threshold {
            all
        } else {
            healthy
        }
    }

    fn pick_hashed(
        &self,
        cluster: &Cluster,
        eps: Vec<String>,
        avoid: Option<&str>,
        h: u64,
    ) -> String {
        let cached = self
            .tables
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&cluster.name)
            .filter(|t| t.endpoints == eps && t.lb == cluster.lb)
            .cloned();
        let t = cached.unwrap_or_else(|| {
            let table = match cluster.lb {
                LbPolicy::Maglev { table_size } => Table::maglev(&eps, table_size),
                LbPolicy::RingHash { minimum_ring_size } => Table::ring(&eps, minimum_ring_size),
                _ => Table::ring(&eps, 1),
            };
            let t = Arc::new(HashTable {
                endpoints: eps,
                lb: cluster.lb,
                table,
            });
            self.tables
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(cluster.name.clone(), t.clone());
            t
        });
        let at = |h: u64| &t.endpoints[t.table.lookup(h).unwrap_or(0)];
        let first = at(h);
        if t.endpoints.len() < 2 || Some(first.as_str()) != avoid {
            return first.clone();
        }
        // A retry: another endpoint, the same for the same key.
        (1..=8u64)
            .map(|k| at(hash::mix(h ^ k)))
            .chain(t.endpoints.iter())
            .find(|e| Some(e.as_str()) != avoid)
            .unwrap_or(first)
            .clone()
    }

    /// Tells outlier detection how an attempt on `endpoint` ended.
    pub(crate) fn report(&self, cluster: &Cluster, endpoint: &str, observed: Observed) {
        let Some(od) = &cluster.outlier_detection else {
            return;
        };
        if cluster.discovery == Discovery::OriginalDst {
            return;
        }
        let ejected = self.outliers.cluster(&cluster.name).report(
            od,
            endpoint,
            cluster.endpoints.len(),
            observed,
            Instant::now(),
        );
        if let Some(detector) = ejected {
            tracing::info!(cluster = %cluster.name, %endpoint, ?detector, "outlier detection: ejected");
        }
    }

    /// The cluster's circuit breakers.
    pub(crate) fn circuit(&self, cluster: &Cluster) -> Arc<Circuit> {
        self.circuits
            .cluster(&cluster.name, cluster.circuit_breakers)
    }

    /// Envoy's admin `/clusters` text: per cluster its thresholds, and per endpoint its
    /// requests in flight and health flags (`/failed_outlier_check` when ejected).
    pub(crate) fn clusters_text(&self, config: &Config) -> String {
        use std::fmt::Write;
        let mut out = String::new();
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
            if let Some(circuit) = self.circuits.get(name) {
                let (rq, cx) = circuit.active();
                let _ = writeln!(out, "{name}::rq_active::{rq}");
                let _ = writeln!(out, "{name}::cx_active::{cx}");
            }
            let _ = writeln!(out, "{name}::added_via_api::true");
            let all: Vec<String> = c.endpoints.iter().map(authority).collect();
            let ejected = match &c.outlier_detection {
                Some(od) => self
                    .outliers
                    .cluster(name)
                    .ejected(od, &all, Instant::now()),
                None => Default::default(),
            };
            for ep in &all {
                let rq = self
                    .active
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(ep)
                    .map_or(0, |a| a.load(Ordering::Relaxed));
                let flags = if ejected.contains(ep) {
                    "/failed_outlier_check"
                } else {
                    "healthy"
                };
                let _ = writeln!(out, "{name}::{ep}::rq_active::{rq}");
                let _ = writeln!(out, "{name}::{ep}::hostname::");
                let _ = writeln!(out, "{name}::{ep}::health_flags::{flags}");
                let _ = writeln!(out, "{name}::{ep}::weight::1");
            }
        }
        out
    }
}

/// Whether an HTTP/2 request failed because the upstream reset its stream with
/// `REFUSED_STREAM`.
fn refused_stream(e: &hyper::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        source = err.source();
    }
    false
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
            circuit_breakers: Default::default(),
            outlier_detection: None,
            healthy_panic_threshold: 50.0,
            original_dst_header: None,
        }
    }

    #[test]
    fn round_robin_visits_every_endpoint_in_turn() {
        let up = Upstreams::default();
        let c = cluster(LbPolicy::RoundRobin, 3);
        let picks: Vec<String> = (0..6)
            .map(|_| up.pick(&c, None, "", None).unwrap().authority.clone())
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
                up.pick(&c, Some("127.0.0.1:8000"), "", None)
                    .unwrap()
                    .authority,
                "127.0.0.1:8001"
            );
        }
        assert!(
            up.pick(&cluster(LbPolicy::RoundRobin, 0), None, "", None)
                .is_none()
        );
    }

    #[test]
    fn least_request_prefers_the_idle_endpoint() {
        let up = Upstreams::default();
        let c = cluster(LbPolicy::LeastRequest, 2);
        // Keep 8000 busy: every pick that compares the two must choose 8001.
        let busy: Vec<Picked> = (0..50)
            .filter_map(|_| up.pick(&c, Some("127.0.0.1:8001"), "", None))
            .collect();
        assert!(busy.iter().all(|p| p.authority == "127.0.0.1:8000"));
        let picks: Vec<String> = (0..200)
            .map(|_| up.pick(&c, None, "", None).unwrap().authority.clone())
            .collect();
        let idle = picks.iter().filter(|a| *a == "127.0.0.1:8001").count();
        // P(both samples hit 8000) = 1/4 per pick: about 150 of 200 go to the idle one.
        assert!(idle > 120, "{idle} of 200 picks went to the idle endpoint");
    }

    #[test]
    fn ejected_endpoints_are_skipped_until_the_panic_threshold() {
        use crate::config::OutlierDetection;
        use std::collections::BTreeSet;
        let up = Upstreams::default();
        let mut c = cluster(LbPolicy::RoundRobin, 3);
        c.outlier_detection = Some(OutlierDetection {
            consecutive_5xx: 1,
            max_ejection_percent: 100,
            ..Default::default()
        });
        let picks = |c: &Cluster| -> BTreeSet<String> {
            (0..30)
                .filter_map(|_| up.pick(c, None, "", None).map(|p| p.authority.clone()))
                .collect()
        };
        up.report(&c, "127.0.0.1:8000", Observed::Status(503));
        assert_eq!(
            picks(&c),
            BTreeSet::from(["127.0.0.1:8001".into(), "127.0.0.1:8002".into()])
        );
        assert!(
            up.clusters_text(&Config {
                clusters: [("c".to_string(), Arc::new(c.clone()))].into(),
                ..Default::default()
            })
            .contains("c::127.0.0.1:8000::health_flags::/failed_outlier_check\n")
        );
        // Two of three out: 33% healthy is below the 50% panic threshold, all three serve.
        up.report(&c, "127.0.0.1:8001", Observed::LocalFailure);
        assert_eq!(picks(&c).len(), 3);
        // A threshold of 0 (Istio's default with outlier detection) never panics.
        c.healthy_panic_threshold = 0.0;
        assert_eq!(picks(&c), BTreeSet::from(["127.0.0.1:8002".into()]));
        up.report(&c, "127.0.0.1:8002", Observed::Status(500));
        assert!(up.pick(&c, None, "", None).is_none());
    }

    #[test]
    fn consistent_hash_keeps_each_key_on_one_endpoint_and_spreads_keys() {
        use std::collections::BTreeSet;
        for lb in [
            LbPolicy::RingHash {
                minimum_ring_size: 1024,
            },
            LbPolicy::Maglev { table_size: 65537 },
        ] {
            let up = Upstreams::default();
            let c = cluster(lb, 3);
            let mut used = BTreeSet::new();
            for k in 0..60 {
                let h = hash::hash(format!("user-{k}").as_bytes());
                let first = up.pick(&c, None, "", Some(h)).unwrap().authority.clone();
                for _ in 0..5 {
                    assert_eq!(up.pick(&c, None, "", Some(h)).unwrap().authority, first);
                }
                // A retry goes to another endpoint, the same one each time.
                let retry = up
                    .pick(&c, Some(&first), "", Some(h))
                    .unwrap()
                    .authority
                    .clone();
                assert_ne!(retry, first);
                assert_eq!(
                    up.pick(&c, Some(&first), "", Some(h)).unwrap().authority,
                    retry
                );
                used.insert(first);
            }
            assert_eq!(used.len(), 3, "{lb:?}: {used:?}");
        }
    }

    #[tokio::test]
    async fn http2_requests_carry_their_host_as_authority_and_outlive_a_closed_connection() {
        use std::convert::Infallible;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = listener.local_addr().unwrap().to_string();
        let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel::<String>();
        let (close, _) = tokio::sync::broadcast::channel::<()>(1);
        let closer = close.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let seen = seen_tx.clone();
                let mut closed = closer.subscribe();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let authority = req.uri().authority().map(|a| a.to_string());
                        let seen = seen.clone();
                        async move {
                            seen.send(authority.unwrap_or_default()).unwrap();
                            Ok::<_, Infallible>(Response::new(
                                http_body_util::Empty::<bytes::Bytes>::new(),
                            ))
                        }
                    });
                    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service);
                    // Dropping the connection closes it.
                    tokio::select! {
                        _ = conn => {}
                        _ = closed.recv() => {}
                    }
                });
            }
        });
        let up = Upstreams::default();
        let mut c = cluster(LbPolicy::RoundRobin, 0);
        c.protocol = UpstreamProtocol::Http2;
        let req = || {
            let mut r = Request::new(RequestBody::complete(Vec::new(), None));
            *r.uri_mut() = "/x".parse().unwrap();
            r.headers_mut()
                .insert(HOST, "reviews.test:9080".parse().unwrap());
            r
        };
        let resp = up.send(&c, &endpoint, req()).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(seen.recv().await.unwrap(), "reviews.test:9080");
        // The upstream closes the connection: the next request opens another.
        close.send(()).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let resp = up.send(&c, &endpoint, req()).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(seen.recv().await.unwrap(), "reviews.test:9080");
    }

    #[test]
    fn original_dst_goes_where_the_request_says() {
        let up = Upstreams::default();
        let mut c = cluster(LbPolicy::RoundRobin, 0);
        c.discovery = Discovery::OriginalDst;
        assert_eq!(
            up.pick(&c, None, "10.0.0.1:80", None).unwrap().authority,
            "10.0.0.1:80"
        );
        assert!(up.pick(&c, None, "httpbin.org", None).is_none());
    }
}
