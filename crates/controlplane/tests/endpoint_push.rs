//! An endpoint-only change (a WorkloadEntry's address) reaches a connected proxy as EDS only:
//! the store, the mesh state following it, the ADS server and a Delta client playing Envoy, in
//! process over loopback gRPC. Clusters whose content did not change are not sent again: their
//! metadata maps encode the same bytes every time they are built.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use serde_json::{Value, json};
use strait_ads::{AdsOptions, AdsServer, Generator};
use strait_controlplane::{Mesh, follow};
use strait_store::{Key, MemoryStore, Precondition, Store};
use strait_translate::MeshConfig;
use strait_xds_core::{ProxyRole, TypeUrl};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::Streaming;

const WE: &str = "workloadentry.networking.istio.io";

fn put(store: &MemoryStore, kind: &str, name: &str, value: Value) {
    store
        .put(&Key::new(kind, "default", name), value, Precondition::None)
        .unwrap();
}

fn service(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": name, "namespace": "default"},
           "spec": {"selector": {"app": name},
                    "ports": [{"name": "http", "port": 9080}, {"name": "grpc", "port": 7070}]}})
}

fn workload(name: &str, app: &str, address: &str) -> Value {
    json!({"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry",
           "metadata": {"name": name, "namespace": "default"},
           "spec": {"address": address, "labels": {"app": app, "version": "v1"}}})
}

fn rule(host: &str) -> Value {
    json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
           "metadata": {"name": host, "namespace": "default"},
           "spec": {"host": host, "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                                              {"name": "v2", "labels": {"version": "v2"}}]}})
}

struct Delta {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: Streaming<DeltaDiscoveryResponse>,
}

impl Delta {
    async fn recv(&mut self) -> DeltaDiscoveryResponse {
        timeout(Duration::from_secs(10), self.rx.message())
            .await
            .expect("a response within 10 s")
            .unwrap()
            .expect("the stream stays open")
    }

    async fn send(&self, req: DeltaDiscoveryRequest) {
        self.tx.send(req).await.unwrap();
    }

    async fn ack(&self, r: &DeltaDiscoveryResponse) {
        self.send(DeltaDiscoveryRequest {
            type_url: r.type_url.clone(),
            response_nonce: r.nonce.clone(),
            ..Default::default()
        })
        .await;
    }

    /// Every response for `within`, each ACKed.
    async fn collect(&mut self, within: Duration) -> Vec<DeltaDiscoveryResponse> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + within;
        while let Ok(Some(Ok(r))) = tokio::time::timeout_at(deadline, self.rx.message())
            .await
            .map(Result::transpose)
        {
            self.ack(&r).await;
            out.push(r);
        }
        out
    }
}

async fn open(addr: SocketAddr, id: &str) -> Delta {
    let (tx, rx) = mpsc::channel(16);
    let client = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    tx.send(DeltaDiscoveryRequest {
        node: Some(Node {
            id: id.into(),
            ..Default::default()
        }),
        type_url: TypeUrl::Cluster.as_str().into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let rx = client
        .clone()
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    Delta { tx, rx }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_only_change_pushes_only_eds() {
    let store = Arc::new(MemoryStore::new());
    for name in ["reviews", "ratings", "details"] {
        put(&store, "service", name, service(name));
        put(
            &store,
            "destinationrule.networking.istio.io",
            name,
            rule(name),
        );
    }
    put(
        &store,
        WE,
        "reviews-1",
        workload("reviews-1", "reviews", "10.0.0.1"),
    );
    put(
        &store,
        WE,
        "ratings-1",
        workload("ratings-1", "ratings", "10.0.0.2"),
    );
    put(
        &store,
        WE,
        "details-1",
        workload("details-1", "details", "10.0.0.3"),
    );
    let dyn_store: Arc<dyn Store> = store.clone();
    let mesh =
        Arc::new(Mesh::load(dyn_store.clone(), MeshConfig::default(), "240.240.0.0/16").unwrap());
    let ads = AdsServer::new(
        mesh.clone() as Arc<dyn Generator>,
        AdsOptions {
            debounce: Duration::from_millis(20),
            ..AdsOptions::default()
        },
    );
    tokio::spawn(follow(mesh.clone(), dyn_store, ads.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = ads.service();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
            .unwrap();
    });

    // A client proxy elsewhere, with clusters, endpoints and listeners, all ACKed.
    let id = strait_xds_core::Proxy::node_id(
        ProxyRole::Sidecar,
        "10.0.0.9".parse().unwrap(),
        "client",
        "default",
    );
    let mut d = open(addr, &id).await;
    let cds = d.recv().await;
    assert_eq!(cds.type_url, TypeUrl::Cluster.as_str());
    let eds_names: Vec<String> = cds
        .resources
        .iter()
        .map(|r| r.name.clone())
        .filter(|n| n.starts_with("outbound|") && n.contains("reviews"))
        .collect();
    assert!(eds_names.len() >= 4, "{eds_names:?}");
    d.ack(&cds).await;
    d.send(DeltaDiscoveryRequest {
        type_url: TypeUrl::Listener.as_str().into(),
        ..Default::default()
    })
    .await;
    let all_eds: Vec<String> = cds
        .resources
        .iter()
        .map(|r| r.name.clone())
        .filter(|n| n.starts_with("outbound|"))
        .collect();
    d.send(DeltaDiscoveryRequest {
        type_url: TypeUrl::Endpoint.as_str().into(),
        resource_names_subscribe: all_eds,
        ..Default::default()
    })
    .await;
    // Settle: whatever the first requests bring.
    let first = d.collect(Duration::from_millis(1500)).await;
    assert!(
        first
            .iter()
            .any(|r| r.type_url == TypeUrl::Endpoint.as_str()),
        "no EDS at first"
    );

    for (round, address) in ["10.0.0.5", "10.0.0.6", "10.0.0.1"].iter().enumerate() {
        put(
            &store,
            WE,
            "reviews-1",
            workload("reviews-1", "reviews", address),
        );
        let pushed = d.collect(Duration::from_millis(1500)).await;
        let types: Vec<&str> = pushed.iter().map(|r| r.type_url.as_str()).collect();
        assert!(
            !pushed.is_empty(),
            "round {round}: the address change to {address} was not pushed"
        );
        assert!(
            types.iter().all(|t| *t == TypeUrl::Endpoint.as_str()),
            "round {round}: an endpoint-only change pushed {types:?}: {:?}",
            pushed
                .iter()
                .map(|r| (
                    r.type_url.as_str(),
                    r.resources
                        .iter()
                        .map(|x| x.name.as_str())
                        .collect::<Vec<_>>()
                ))
                .collect::<Vec<_>>()
        );
        let names: Vec<&str> = pushed
            .iter()
            .flat_map(|r| r.resources.iter().map(|x| x.name.as_str()))
            .collect();
        assert!(
            names
                .iter()
                .all(|n| n.ends_with("reviews.default.svc.cluster.local")),
            "round {round}: {names:?}"
        );
    }
}
