use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};

use hyper::body::Incoming;
use hyper::header::HOST;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::*;
use crate::balance::hash;
use crate::balance::outlier::Observed;
use crate::body::RequestBody;
use crate::config::{Discovery, LbPolicy, UpstreamProtocol};

fn cluster(lb: LbPolicy, n: u16) -> Cluster {
    endpoints_cluster(lb, (0..n).map(|i| ("127.0.0.1".to_string(), 8000 + i)))
}

fn endpoints_cluster(lb: LbPolicy, endpoints: impl Iterator<Item = (String, u16)>) -> Cluster {
    Cluster {
        name: "c".into(),
        tls: Default::default(),
        auto_sni: false,
        auto_san_validation: false,
        discovery: Discovery::Static,
        lb,
        connect_timeout: Duration::from_secs(1),
        protocol: UpstreamProtocol::Http1,
        endpoints: endpoints
            .map(|(host, port)| Endpoint::new(host, port))
            .collect(),
        circuit_breakers: Default::default(),
        outlier_detection: None,
        healthy_panic_threshold: 50.0,
        original_dst_header: None,
        source_address: None,
        service: None,
        balancer: Default::default(),
    }
}

/// A proxy's upstream side as `Shared::publish` drives it: publish configs, get balancers.
#[derive(Default)]
struct Proxy {
    up: Upstreams,
    stats: Stats,
    config: Arc<Config>,
}

impl Proxy {
    /// Publishes `clusters` as the whole config; returns the balancer of the first.
    fn publish(&mut self, clusters: &[&Cluster]) -> Arc<Balancer> {
        let mut config = Config::default();
        for c in clusters {
            config
                .clusters
                .insert(c.name.clone(), Arc::new((*c).clone()));
        }
        let changed = self.up.prepare(&mut config, &self.config, &self.stats);
        self.config = Arc::new(config);
        self.up.prune(&self.config, &changed, &self.stats);
        self.balancer(&clusters[0].name)
    }

    fn balancer(&self, name: &str) -> Arc<Balancer> {
        balancer(&self.config.clusters[name]).unwrap().clone()
    }
}

fn lb(c: &Cluster) -> Arc<Balancer> {
    Proxy::default().publish(&[c])
}

fn host(authority: &str) -> Host {
    Host::new(authority.to_string(), None, None)
}

fn report(lb: &Balancer, endpoint: &str, observed: Observed) {
    let h = lb
        .hosts()
        .iter()
        .find(|h| &*h.authority == endpoint)
        .unwrap();
    let picked = Picked::new(h.clone());
    lb.report(&picked, observed);
}

#[test]
fn round_robin_visits_every_endpoint_in_turn() {
    let lb = lb(&cluster(LbPolicy::RoundRobin, 3));
    let picks: Vec<String> = (0..6)
        .map(|_| lb.pick(None, "", None).unwrap().authority().to_string())
        .collect();
    assert_eq!(picks[..3], picks[3..]);
    let mut first = picks[..3].to_vec();
    first.sort();
    first.dedup();
    assert_eq!(first.len(), 3);
}

#[test]
fn retries_avoid_the_previous_endpoint_and_empty_clusters_have_none() {
    let random = lb(&cluster(LbPolicy::Random, 2));
    let previous = host("127.0.0.1:8000");
    for _ in 0..20 {
        assert_eq!(
            random.pick(Some(&previous), "", None).unwrap().authority(),
            "127.0.0.1:8001"
        );
    }
    for policy in [LbPolicy::RoundRobin, LbPolicy::LeastRequest] {
        let lb = lb(&cluster(policy, 2));
        for _ in 0..20 {
            assert_eq!(
                lb.pick(Some(&previous), "", None).unwrap().authority(),
                "127.0.0.1:8001"
            );
        }
    }
    assert!(
        lb(&cluster(LbPolicy::RoundRobin, 0))
            .pick(None, "", None)
            .is_none()
    );
}

#[test]
fn least_request_prefers_the_idle_endpoint() {
    let lb = lb(&cluster(LbPolicy::LeastRequest, 2));
    // Keep 8000 busy: every pick that compares the two must choose 8001.
    let avoid = host("127.0.0.1:8001");
    let busy: Vec<Picked> = (0..50)
        .filter_map(|_| lb.pick(Some(&avoid), "", None))
        .collect();
    assert!(busy.iter().all(|p| p.authority() == "127.0.0.1:8000"));
    let picks: Vec<String> = (0..200)
        .map(|_| lb.pick(None, "", None).unwrap().authority().to_string())
        .collect();
    let idle = picks.iter().filter(|a| *a == "127.0.0.1:8001").count();
    // P(both samples hit 8000) = 1/4 per pick: about 150 of 200 go to the idle one.
    assert!(idle > 120, "{idle} of 200 picks went to the idle endpoint");
}

#[test]
fn ejected_endpoints_are_skipped_until_the_panic_threshold() {
    use crate::config::OutlierDetection;
    use std::collections::BTreeSet;
    let mut proxy = Proxy::default();
    let mut c = cluster(LbPolicy::RoundRobin, 3);
    c.outlier_detection = Some(OutlierDetection {
        consecutive_5xx: 1,
        max_ejection_percent: 100,
        ..Default::default()
    });
    let lb = proxy.publish(&[&c]);
    let picks = |lb: &Balancer| -> BTreeSet<String> {
        (0..30)
            .filter_map(|_| lb.pick(None, "", None).map(|p| p.authority().to_string()))
            .collect()
    };
    report(&lb, "127.0.0.1:8000", Observed::Status(503));
    assert_eq!(
        picks(&lb),
        BTreeSet::from(["127.0.0.1:8001".into(), "127.0.0.1:8002".into()])
    );
    assert!(
        proxy
            .up
            .clusters_text(&proxy.config)
            .contains("c::127.0.0.1:8000::health_flags::/failed_outlier_check\n")
    );
    // Two of three out: 33% healthy is below the 50% panic threshold, all three serve.
    report(&lb, "127.0.0.1:8001", Observed::LocalFailure);
    assert_eq!(picks(&lb).len(), 3);
    // A threshold of 0 (Istio's default with outlier detection) never panics.
    c.healthy_panic_threshold = 0.0;
    let lb = proxy.publish(&[&c]);
    assert_eq!(picks(&lb), BTreeSet::from(["127.0.0.1:8002".into()]));
    report(&lb, "127.0.0.1:8002", Observed::Status(500));
    assert!(lb.pick(None, "", None).is_none());
}

#[test]
fn consistent_hash_keeps_each_key_on_one_endpoint_and_spreads_keys() {
    use std::collections::BTreeSet;
    for lb_policy in [
        LbPolicy::RingHash {
            minimum_ring_size: 1024,
        },
        LbPolicy::Maglev { table_size: 65537 },
    ] {
        let lb = lb(&cluster(lb_policy, 3));
        let mut used = BTreeSet::new();
        for k in 0..60 {
            let h = hash::hash(format!("user-{k}").as_bytes());
            let first = lb.pick(None, "", Some(h)).unwrap();
            for _ in 0..5 {
                assert_eq!(
                    lb.pick(None, "", Some(h)).unwrap().authority(),
                    first.authority()
                );
            }
            // A retry goes to another endpoint, the same one each time.
            let retry = lb
                .pick(Some(first.host()), "", Some(h))
                .unwrap()
                .authority()
                .to_string();
            assert_ne!(retry, first.authority());
            assert_eq!(
                lb.pick(Some(first.host()), "", Some(h))
                    .unwrap()
                    .authority(),
                retry
            );
            used.insert(first.authority().to_string());
        }
        assert_eq!(used.len(), 3, "{lb_policy:?}: {used:?}");
    }
}

#[test]
fn consistent_hash_skips_ejected_endpoints_and_keeps_the_other_keys() {
    use crate::config::OutlierDetection;
    let mut c = cluster(LbPolicy::Maglev { table_size: 65537 }, 4);
    c.outlier_detection = Some(OutlierDetection {
        consecutive_5xx: 1,
        max_ejection_percent: 100,
        ..Default::default()
    });
    let lb = lb(&c);
    let keys: Vec<u64> = (0..200)
        .map(|k| hash::hash(format!("k{k}").as_bytes()))
        .collect();
    let before: Vec<String> = keys
        .iter()
        .map(|h| lb.pick(None, "", Some(*h)).unwrap().authority().to_string())
        .collect();
    report(&lb, "127.0.0.1:8000", Observed::Status(500));
    for h in &keys {
        let now = lb.pick(None, "", Some(*h)).unwrap();
        assert_ne!(now.authority(), "127.0.0.1:8000");
    }
    // Maglev moves few of the other keys: most stay where they were.
    let stayed = keys
        .iter()
        .zip(&before)
        .filter(|(h, was)| {
            *was != "127.0.0.1:8000"
                && lb.pick(None, "", Some(**h)).unwrap().authority() == was.as_str()
        })
        .count();
    let others = before.iter().filter(|w| *w != "127.0.0.1:8000").count();
    assert!(stayed * 10 >= others * 8, "{stayed} of {others} stayed");
}

#[test]
fn an_unchanged_cluster_keeps_its_balancer_and_endpoints_keep_their_state() {
    let mut proxy = Proxy::default();
    let a = cluster(LbPolicy::RoundRobin, 2);
    let first = proxy.publish(&[&a]);
    assert!(Arc::ptr_eq(&first, &proxy.publish(&[&a])));
    // A new endpoint: a new balancer, the old endpoints' state the same.
    let b = cluster(LbPolicy::RoundRobin, 3);
    let second = proxy.publish(&[&b]);
    assert!(!Arc::ptr_eq(&first, &second));
    for (x, y) in first.hosts().iter().zip(second.hosts()) {
        assert!(Arc::ptr_eq(x, y));
    }
    // The breakers stay while the thresholds do; new thresholds make new ones.
    assert!(Arc::ptr_eq(first.circuit(), second.circuit()));
    let mut c = b.clone();
    c.circuit_breakers.max_requests = 7;
    assert!(!Arc::ptr_eq(
        second.circuit(),
        proxy.publish(&[&c]).circuit()
    ));
}

#[test]
fn endpoints_and_clusters_that_leave_are_forgotten_with_their_stats() {
    let mut proxy = Proxy::default();
    let mut other = cluster(LbPolicy::RoundRobin, 1);
    other.name = "other".into();
    // 1000 generations of one cluster, each with 3 new endpoints.
    for g in 0..1000u32 {
        let c = endpoints_cluster(
            LbPolicy::RoundRobin,
            (0..3).map(|i| (format!("10.{}.{}.{i}", g / 256, g % 256), 80)),
        );
        let lb = proxy.publish(&[&c, &other]);
        lb.stats().attempt(false);
        drop(lb.pick(None, "", None));
    }
    let states = locked(&proxy.up.clusters);
    assert_eq!(states.len(), 2);
    assert_eq!(locked(&states["c"].hosts).len(), 3);
    drop(states);
    let text = proxy.stats.prometheus();
    assert!(
        text.contains("envoy_cluster_upstream_rq_total{envoy_cluster_name=\"c\"} 1000"),
        "{text}"
    );
    // The cluster goes: its state and its series go with it.
    proxy.publish(&[&other]);
    assert_eq!(locked(&proxy.up.clusters).len(), 1);
    let text = proxy.stats.prometheus();
    assert!(!text.contains("envoy_cluster_name=\"c\""), "{text}");
    assert!(text.contains("envoy_cluster_name=\"other\""), "{text}");
}

#[test]
fn original_dst_goes_where_the_request_says_and_unused_destinations_are_forgotten() {
    let mut c = cluster(LbPolicy::RoundRobin, 0);
    c.discovery = Discovery::OriginalDst;
    let mut proxy = Proxy::default();
    let lb = proxy.publish(&[&c]);
    assert_eq!(
        lb.pick(None, "10.0.0.1:80", None).unwrap().authority(),
        "10.0.0.1:80"
    );
    assert!(lb.pick(None, "httpbin.org", None).is_none());
    let busy = lb.pick(None, "10.0.0.2:80", None).unwrap();
    let destinations = |p: &Proxy| locked(&locked(&p.up.clusters)["c"].destinations).len();
    assert_eq!(destinations(&proxy), 2);
    proxy.up.sweep(Instant::now() + ORIGINAL_DST_CLEANUP);
    // The one with a request in flight stays.
    assert_eq!(destinations(&proxy), 1);
    drop(busy);
    proxy.up.sweep(Instant::now() + ORIGINAL_DST_CLEANUP);
    assert_eq!(destinations(&proxy), 0);
}

/// An HTTP/1.1 and h2c server on loopback that counts its open connections and answers each
/// request after `delay`.
struct Server {
    addr: SocketAddr,
    open: Arc<AtomicUsize>,
    seen: tokio::sync::mpsc::UnboundedReceiver<String>,
    close: tokio::sync::broadcast::Sender<()>,
}

async fn server(delay: Duration) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let open = Arc::new(AtomicUsize::new(0));
    let (seen_tx, seen) = tokio::sync::mpsc::unbounded_channel::<String>();
    let (close, _) = tokio::sync::broadcast::channel::<()>(1);
    let (counting, closer) = (open.clone(), close.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = seen_tx.clone();
            let open = counting.clone();
            let mut closed = closer.subscribe();
            tokio::spawn(async move {
                open.fetch_add(1, Ordering::SeqCst);
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let authority = req.uri().authority().map(|a| a.to_string()).or_else(|| {
                        req.headers()
                            .get(HOST)
                            .map(|h| h.to_str().unwrap().to_string())
                    });
                    let seen = seen.clone();
                    async move {
                        tokio::time::sleep(delay).await;
                        let _ = seen.send(authority.unwrap_or_default());
                        Ok::<_, Infallible>(Response::new(http_body_util::Full::new(
                            bytes::Bytes::from_static(b"ok"),
                        )))
                    }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                // Dropping the connection closes it.
                tokio::select! {
                    _ = conn => {}
                    _ = closed.recv() => {}
                }
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    Server {
        addr,
        open,
        seen,
        close,
    }
}

fn request() -> Request<RequestBody> {
    let mut r = Request::new(RequestBody::complete(Vec::new(), None));
    *r.uri_mut() = "/x".parse().unwrap();
    r.headers_mut()
        .insert(HOST, "reviews.test:9080".parse().unwrap());
    r
}

fn at(addr: SocketAddr, protocol: UpstreamProtocol) -> Cluster {
    let mut c = endpoints_cluster(
        LbPolicy::RoundRobin,
        [(addr.ip().to_string(), addr.port())].into_iter(),
    );
    c.protocol = protocol;
    c
}

/// Sends one request through `lb` and reads the whole answer.
async fn get(lb: &Balancer) -> hyper::StatusCode {
    use http_body_util::BodyExt;
    let picked = lb.pick(None, "", None).unwrap();
    let resp = lb.send(&picked, request()).await.unwrap();
    let status = resp.status();
    resp.into_body().collect().await.unwrap();
    status
}

async fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(Instant::now() < deadline, "not within 5 s: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn http2_requests_carry_their_host_as_authority_and_outlive_a_closed_connection() {
    let mut s = server(Duration::ZERO).await;
    let lb = lb(&at(s.addr, UpstreamProtocol::Http2));
    assert_eq!(get(&lb).await, 200);
    assert_eq!(s.seen.recv().await.unwrap(), "reviews.test:9080");
    // The upstream closes the connection: the next request opens another.
    s.close.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(get(&lb).await, 200);
    assert_eq!(s.seen.recv().await.unwrap(), "reviews.test:9080");
}

#[tokio::test]
async fn http1_connections_are_reused_and_closed_when_idle_for_the_timeout() {
    let s = server(Duration::ZERO).await;
    let mut proxy = Proxy::default();
    let lb = proxy.publish(&[&at(s.addr, UpstreamProtocol::Http1)]);
    for _ in 0..5 {
        assert_eq!(get(&lb).await, 200);
    }
    let h = lb.hosts()[0].clone();
    eventually("the connection back in the pool", || h.kept() == 1).await;
    assert_eq!(s.open.load(Ordering::SeqCst), 1, "one connection, reused");
    proxy.up.sweep(Instant::now() + POOL_IDLE / 2);
    assert_eq!(h.kept(), 1);
    proxy.up.sweep(Instant::now() + POOL_IDLE);
    assert_eq!(h.kept(), 0);
    eventually("the idle connection closed", || {
        s.open.load(Ordering::SeqCst) == 0
    })
    .await;
}

#[tokio::test]
async fn an_idle_http2_connection_closes_after_the_timeout() {
    let s = server(Duration::ZERO).await;
    let mut proxy = Proxy::default();
    let lb = proxy.publish(&[&at(s.addr, UpstreamProtocol::Http2)]);
    assert_eq!(get(&lb).await, 200);
    assert_eq!(s.open.load(Ordering::SeqCst), 1);
    proxy.up.sweep(Instant::now() + POOL_IDLE);
    eventually("the idle HTTP/2 connection closed", || {
        s.open.load(Ordering::SeqCst) == 0
    })
    .await;
}

#[tokio::test]
async fn connections_to_an_endpoint_that_leaves_close_after_their_request() {
    for protocol in [UpstreamProtocol::Http1, UpstreamProtocol::Http2] {
        let slow = server(Duration::from_millis(300)).await;
        let stays = server(Duration::ZERO).await;
        let mut proxy = Proxy::default();
        let mut both = at(slow.addr, protocol);
        both.endpoints.push(Endpoint::new(
            stays.addr.ip().to_string(),
            stays.addr.port(),
        ));
        let lb = proxy.publish(&[&both]);
        // An idle connection to each, then one request in flight to the one that leaves.
        for _ in 0..2 {
            assert_eq!(get(&lb).await, 200);
        }
        let leaving = lb
            .hosts()
            .iter()
            .find(|h| *h.authority == *slow.addr.to_string())
            .unwrap()
            .clone();
        let in_flight = {
            let lb = lb.clone();
            let leaving = leaving.clone();
            tokio::spawn(async move {
                use http_body_util::BodyExt;
                let picked = Picked::new(leaving);
                let resp = lb.send(&picked, request()).await.unwrap();
                let status = resp.status();
                resp.into_body().collect().await.unwrap();
                status
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let open_before = slow.open.load(Ordering::SeqCst);
        assert!(open_before >= 1, "{protocol:?}");
        proxy.publish(&[&at(stays.addr, protocol)]);
        assert!(leaving.is_draining());
        // The request in flight finishes; then nothing stays open to the endpoint that left.
        assert_eq!(in_flight.await.unwrap(), 200, "{protocol:?}");
        eventually("the connections to the endpoint that left closed", || {
            slow.open.load(Ordering::SeqCst) == 0
        })
        .await;
        assert_eq!(stays.open.load(Ordering::SeqCst), 1, "{protocol:?}");
    }
}

/// `upstream_bind_config`: connections come from the cluster's source address (the inbound
/// passthrough cluster's 127.0.0.6, which the capture rules let through unredirected).
#[tokio::test]
async fn connections_come_from_the_source_address() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let host = Host::new(addr.to_string(), Some(addr), None)
        .with_source(Some("127.0.0.6:0".parse().unwrap()));
    let (up, accepted) = tokio::join!(host.connect(Duration::from_secs(2)), listener.accept());
    assert!(up.is_ok(), "connect from 127.0.0.6");
    let (_, peer) = accepted.unwrap();
    assert_eq!(peer.ip(), std::net::IpAddr::from([127, 0, 0, 6]));
}
