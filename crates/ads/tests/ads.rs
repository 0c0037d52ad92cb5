//! The ADS server over real gRPC on loopback, with a tonic client playing Envoy.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::rpc;
use strait_ads::{AdsOptions, AdsServer, Generator, StreamKind, SyncState};
use strait_xds_core::{Proxy, TypeUrl, XdsResources};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::Streaming;
use tonic::transport::Channel;

const NODE_A: &str = "sidecar~127.0.0.1~a.default~default.svc.cluster.local";
const NODE_B: &str = "sidecar~127.0.0.2~b.default~default.svc.cluster.local";
const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";

/// A generator whose output the test sets, per workload, counting its calls.
#[derive(Default)]
struct FakeGenerator {
    /// Clusters by name, with a tag that changes their content: per workload.
    clusters: Mutex<std::collections::BTreeMap<String, Vec<(String, String)>>>,
    calls: AtomicUsize,
}

impl FakeGenerator {
    fn set(&self, workload: &str, clusters: &[(&str, &str)]) {
        self.clusters.lock().unwrap().insert(
            workload.to_string(),
            clusters
                .iter()
                .map(|(n, t)| (n.to_string(), t.to_string()))
                .collect(),
        );
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Generator for FakeGenerator {
    fn generate(&self, proxy: &Proxy) -> XdsResources {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mut res = XdsResources::default();
        let clusters = self.clusters.lock().unwrap();
        for (name, tag) in clusters.get(&proxy.workload).into_iter().flatten() {
            res.clusters.insert(
                name.clone(),
                Cluster {
                    name: name.clone(),
                    alt_stat_name: tag.clone(),
                    ..Default::default()
                },
            );
        }
        res
    }
}

async fn start(debounce_ms: u64) -> (AdsServer, Arc<FakeGenerator>, SocketAddr) {
    let generator = Arc::new(FakeGenerator::default());
    let server = AdsServer::new(
        generator.clone(),
        AdsOptions {
            debounce: Duration::from_millis(debounce_ms),
            max_debounce: Duration::from_secs(1),
            ..AdsOptions::default()
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = server.service();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    (server, generator, addr)
}

async fn client(addr: SocketAddr) -> AggregatedDiscoveryServiceClient<Channel> {
    AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

fn node(id: &str) -> Option<Node> {
    Some(Node {
        id: id.into(),
        ..Default::default()
    })
}

/// A SotW stream from the client's side.
struct Sotw {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: Streaming<DiscoveryResponse>,
}

impl Sotw {
    async fn open(addr: SocketAddr, id: &str) -> Sotw {
        let (tx, rx) = mpsc::channel(16);
        tx.send(DiscoveryRequest {
            node: node(id),
            type_url: CDS.into(),
            ..Default::default()
        })
        .await
        .unwrap();
        let rx = client(addr)
            .await
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        Sotw { tx, rx }
    }

    async fn recv(&mut self) -> DiscoveryResponse {
        timeout(Duration::from_secs(5), self.rx.message())
            .await
            .expect("a response within 5 s")
            .unwrap()
            .expect("the stream to stay open")
    }

    /// Nothing arrives for a while.
    async fn quiet(&mut self, ms: u64) {
        if let Ok(m) = timeout(Duration::from_millis(ms), self.rx.message()).await {
            panic!("expected no response, got {m:?}");
        }
    }

    async fn answer(&self, r: &DiscoveryResponse, error: Option<&str>) {
        self.tx
            .send(DiscoveryRequest {
                type_url: r.type_url.clone(),
                version_info: r.version_info.clone(),
                response_nonce: r.nonce.clone(),
                error_detail: error.map(|m| rpc::Status {
                    code: 3,
                    message: m.into(),
                    details: vec![],
                }),
                ..Default::default()
            })
            .await
            .unwrap();
    }
}

fn names(r: &DiscoveryResponse) -> Vec<String> {
    r.resources
        .iter()
        .map(|a| {
            <Cluster as prost::Message>::decode(a.value.as_slice())
                .unwrap()
                .name
        })
        .collect()
}

/// Waits until `check` holds, for at most 5 s.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..500 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting until {what}");
}

fn cds_state(server: &AdsServer) -> SyncState {
    server.status()[0].types[&TypeUrl::Cluster].state.clone()
}

#[tokio::test]
async fn sotw_subscribe_ack_push_and_nack() {
    let (server, generator, addr) = start(20).await;
    generator.set("a", &[("a", "1"), ("b", "1")]);
    let mut s = Sotw::open(addr, NODE_A).await;
    let first = s.recv().await;
    assert_eq!(first.type_url, CDS);
    assert_eq!(names(&first), ["a", "b"]);
    assert!(!first.version_info.is_empty() && !first.nonce.is_empty());
    eventually("status lists the proxy", || server.status().len() == 1).await;
    assert_eq!(cds_state(&server), SyncState::Stale);
    s.answer(&first, None).await;
    eventually("CDS is synced", || cds_state(&server) == SyncState::Synced).await;
    let status = &server.status()[0];
    assert_eq!(status.id, NODE_A);
    assert_eq!(status.proxy.workload, "a");
    assert_eq!(status.stream, StreamKind::Sotw);
    assert_eq!(
        status.types[&TypeUrl::Cluster].acked_version,
        first.version_info
    );
    assert_eq!(status.types[&TypeUrl::Cluster].resources, 2);
    assert!(status.is_synced());

    // A change: a push with the full set and a new version and nonce; its ACK is timed.
    generator.set("a", &[("a", "2"), ("b", "1")]);
    server.notify(1, SystemTime::now());
    let second = s.recv().await;
    assert_eq!(names(&second), ["a", "b"]);
    assert_ne!(second.version_info, first.version_info);
    assert_ne!(second.nonce, first.nonce);
    s.answer(&second, None).await;
    eventually("the push latency is recorded", || {
        server
            .metrics_text()
            .contains("strait_xds_push_latency_seconds_count 1")
    })
    .await;

    // A rejected push: NACK with the reason in status; the acked version stays.
    generator.set("a", &[("a", "3")]);
    server.notify(2, SystemTime::now());
    let third = s.recv().await;
    assert_eq!(names(&third), ["a"]);
    s.answer(&third, Some("cluster a: bad")).await;
    eventually("CDS is NACKed", || {
        cds_state(&server)
            == SyncState::Nack {
                reason: "cluster a: bad".into(),
            }
    })
    .await;
    let cds = server.status()[0].types[&TypeUrl::Cluster].clone();
    assert_eq!(cds.acked_version, second.version_info);
    assert_eq!(cds.sent_version, third.version_info);
    let metrics = server.metrics_text();
    assert!(
        metrics.contains("strait_xds_nacks_total{type=\"cds\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("strait_xds_pushes_total{type=\"cds\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("strait_xds_connected_proxies 1"),
        "{metrics}"
    );

    // The same (rejected) content again: regenerated, not resent.
    let calls = generator.calls();
    server.notify(3, SystemTime::now());
    eventually("the proxy is regenerated", || generator.calls() > calls).await;
    s.quiet(300).await;

    // What was sent, for proxy-config.
    let sent = server.sent(NODE_A).expect("sent config of the proxy");
    assert_eq!(sent.stream, StreamKind::Sotw);
    let cds = &sent.types[&TypeUrl::Cluster];
    assert_eq!(cds.version, third.version_info);
    assert_eq!(cds.resources.keys().collect::<Vec<_>>(), ["a"]);
    assert!(
        server
            .sent("sidecar~127.0.0.9~x.y~y.svc.cluster.local")
            .is_none()
    );

    drop(s);
    eventually("the proxy is gone", || server.status().is_empty()).await;
    assert!(
        server
            .metrics_text()
            .contains("strait_xds_connected_proxies 0")
    );
}

#[tokio::test]
async fn a_stale_nonce_is_ignored() {
    let (server, generator, addr) = start(10).await;
    generator.set("a", &[("a", "1")]);
    let mut s = Sotw::open(addr, NODE_A).await;
    let first = s.recv().await;
    generator.set("a", &[("a", "2")]);
    server.notify(1, SystemTime::now());
    let second = s.recv().await;
    // The NACK of the first response comes after the second was sent: stale.
    s.answer(&first, Some("old news")).await;
    s.answer(&second, None).await;
    eventually("CDS is synced", || {
        !server.status().is_empty() && cds_state(&server) == SyncState::Synced
    })
    .await;
    assert!(
        server
            .metrics_text()
            .contains("strait_xds_nacks_total{type=\"cds\"} 0")
    );
}

#[tokio::test]
async fn a_bad_node_is_refused_with_the_reason() {
    let (server, _generator, addr) = start(10).await;
    let mut s = Sotw::open(addr, "not-an-istio-node").await;
    let error = timeout(Duration::from_secs(5), s.rx.message())
        .await
        .unwrap()
        .expect_err("the stream fails");
    assert_eq!(error.code(), tonic::Code::InvalidArgument);
    assert!(
        error.message().contains("sidecar~IP~POD"),
        "{}",
        error.message()
    );
    assert!(server.status().is_empty());
}

#[tokio::test]
async fn debounced_changes_make_one_generation_and_one_push_to_changed_proxies_only() {
    let (server, generator, addr) = start(100).await;
    generator.set("a", &[("a", "1")]);
    generator.set("b", &[("b", "1")]);
    let mut a = Sotw::open(addr, NODE_A).await;
    let mut b = Sotw::open(addr, NODE_B).await;
    let (ra, rb) = (a.recv().await, b.recv().await);
    a.answer(&ra, None).await;
    b.answer(&rb, None).await;
    eventually("both are synced", || {
        let s = server.status();
        s.len() == 2 && s.iter().all(|p| p.is_synced())
    })
    .await;
    let calls = generator.calls();
    assert_eq!(calls, 2);

    // Only a's resources change; ten notifies within 50 ms.
    generator.set("a", &[("a", "2")]);
    for revision in 1..=10 {
        server.notify(revision, SystemTime::now());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let push = a.recv().await;
    assert_eq!(names(&push), ["a"]);
    a.answer(&push, None).await;
    a.quiet(300).await;
    b.quiet(1).await;
    assert_eq!(generator.calls(), calls + 2, "one generation per proxy");
    eventually("the push latency is recorded", || {
        server
            .metrics_text()
            .contains("strait_xds_push_latency_seconds_count 1")
    })
    .await;
    assert!(
        server
            .metrics_text()
            .contains("strait_xds_pushes_total{type=\"cds\"} 3")
    );
}

/// A Delta stream from the client's side.
struct Delta {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: Streaming<DeltaDiscoveryResponse>,
}

impl Delta {
    async fn open(addr: SocketAddr, initial: std::collections::HashMap<String, String>) -> Delta {
        let (tx, rx) = mpsc::channel(16);
        tx.send(DeltaDiscoveryRequest {
            node: node(NODE_A),
            type_url: CDS.into(),
            initial_resource_versions: initial,
            ..Default::default()
        })
        .await
        .unwrap();
        let rx = client(addr)
            .await
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        Delta { tx, rx }
    }

    async fn recv(&mut self) -> DeltaDiscoveryResponse {
        timeout(Duration::from_secs(5), self.rx.message())
            .await
            .expect("a response within 5 s")
            .unwrap()
            .expect("the stream to stay open")
    }

    async fn ack(&self, r: &DeltaDiscoveryResponse) {
        self.tx
            .send(DeltaDiscoveryRequest {
                type_url: r.type_url.clone(),
                response_nonce: r.nonce.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
}

fn delta_names(r: &DeltaDiscoveryResponse) -> Vec<&str> {
    r.resources.iter().map(|r| r.name.as_str()).collect()
}

#[tokio::test]
async fn delta_sends_changes_removals_and_nothing_twice() {
    let (server, generator, addr) = start(10).await;
    generator.set("a", &[("a", "1"), ("b", "1"), ("c", "1")]);
    let mut d = Delta::open(addr, Default::default()).await;
    let first = d.recv().await;
    assert_eq!(delta_names(&first), ["a", "b", "c"]);
    assert!(first.removed_resources.is_empty());
    d.ack(&first).await;
    eventually("CDS is synced", || {
        !server.status().is_empty() && server.status()[0].is_synced()
    })
    .await;
    assert_eq!(server.status()[0].stream, StreamKind::Delta);

    // One cluster changes: only it is sent.
    generator.set("a", &[("a", "1"), ("b", "2"), ("c", "1")]);
    server.notify(1, SystemTime::now());
    let changed = d.recv().await;
    assert_eq!(delta_names(&changed), ["b"]);
    assert!(changed.removed_resources.is_empty());
    assert_ne!(changed.resources[0].version, first.resources[1].version);
    d.ack(&changed).await;

    // One is removed.
    generator.set("a", &[("a", "1"), ("b", "2")]);
    server.notify(2, SystemTime::now());
    let removed = d.recv().await;
    assert!(removed.resources.is_empty());
    assert_eq!(removed.removed_resources, ["c"]);
    d.ack(&removed).await;
    eventually("CDS is synced", || server.status()[0].is_synced()).await;
    let sent = server.sent(NODE_A).unwrap();
    let versions: std::collections::HashMap<String, String> = sent.types[&TypeUrl::Cluster]
        .resources
        .iter()
        .map(|(n, r)| (n.clone(), r.version.clone()))
        .collect();
    assert_eq!(versions.len(), 2);
    assert_eq!(versions["b"], changed.resources[0].version);

    // Reconnect with what it has: nothing is resent.
    drop(d);
    eventually("the old stream is gone", || server.status().is_empty()).await;
    let mut again = Delta::open(addr, versions).await;
    let answer = again.recv().await;
    assert!(answer.resources.is_empty(), "{answer:?}");
    assert!(answer.removed_resources.is_empty(), "{answer:?}");
    again.ack(&answer).await;
    eventually("CDS is synced", || {
        !server.status().is_empty() && server.status()[0].is_synced()
    })
    .await;
    assert_eq!(server.status()[0].types[&TypeUrl::Cluster].resources, 2);
    if let Ok(m) = timeout(Duration::from_millis(200), again.rx.message()).await {
        panic!("expected nothing more, got {m:?}");
    }

    // Unsubscribing from a cluster: changes to it are no longer sent.
    again
        .tx
        .send(DeltaDiscoveryRequest {
            type_url: CDS.into(),
            resource_names_unsubscribe: vec!["*".into()],
            resource_names_subscribe: vec!["a".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let resubscribed = again.recv().await;
    assert_eq!(
        delta_names(&resubscribed),
        ["a"],
        "a subscribed name is always sent"
    );
    assert_eq!(resubscribed.removed_resources, ["b"]);
    again.ack(&resubscribed).await;
    generator.set("a", &[("a", "1"), ("b", "3")]);
    server.notify(3, SystemTime::now());
    if let Ok(m) = timeout(Duration::from_millis(300), again.rx.message()).await {
        panic!("expected nothing for an unsubscribed cluster, got {m:?}");
    }
}
