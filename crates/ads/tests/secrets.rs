//! Secrets (SDS over ADS) go only to streams whose peer the authorizer verified, only the names
//! asked for, and again when they change; over real gRPC on loopback.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{DataSource, Node, data_source};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    Secret, TlsCertificate, secret,
};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use prost::Message;
use strait_ads::{AdsOptions, AdsServer, Authorize, Generator, Peer};
use strait_xds_core::{Proxy, TypeUrl, XdsResources};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::Streaming;

const VERIFIED: &str = "router~127.0.0.1~gw.istio-system~istio-system.svc.cluster.local";
const ANONYMOUS: &str = "router~127.0.0.2~other.istio-system~istio-system.svc.cluster.local";
const CRED: &str = "kubernetes://httpbin-credential";

/// Every proxy gets one cluster and the Secret `CRED` holding `key` (the cluster's stat name
/// too, so that both change together).
struct WithSecret {
    key: Mutex<String>,
}

impl Generator for WithSecret {
    fn generate(&self, _proxy: &Proxy) -> XdsResources {
        let mut res = XdsResources::default();
        res.clusters.insert(
            "c".into(),
            Cluster {
                name: "c".into(),
                alt_stat_name: self.key.lock().unwrap().clone(),
                ..Default::default()
            },
        );
        let inline = |s: &str| {
            Some(DataSource {
                specifier: Some(data_source::Specifier::InlineBytes(s.as_bytes().to_vec())),
                ..Default::default()
            })
        };
        res.secrets.insert(
            CRED.into(),
            Secret {
                name: CRED.into(),
                r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                    certificate_chain: inline("CERT"),
                    private_key: inline(&self.key.lock().unwrap()),
                    ..Default::default()
                })),
            },
        );
        res
    }
}

/// Verifies the node `VERIFIED` only (as a certificate would).
struct ByNode;

impl Authorize for ByNode {
    fn authorize(
        &self,
        proxy: &Proxy,
        _: &tonic::codegen::http::Extensions,
    ) -> Result<Peer, String> {
        Ok(if proxy.id == VERIFIED {
            Peer::Verified
        } else {
            Peer::Anonymous
        })
    }
}

async fn start() -> (AdsServer, Arc<WithSecret>, SocketAddr) {
    let generator = Arc::new(WithSecret {
        key: Mutex::new("KEY-1".into()),
    });
    let server = AdsServer::with_authorizer(
        generator.clone(),
        AdsOptions {
            debounce: Duration::from_millis(10),
            ..AdsOptions::default()
        },
        Some(Arc::new(ByNode)),
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

struct Delta {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: Streaming<DeltaDiscoveryResponse>,
}

impl Delta {
    /// Opens a stream that first asks for the Secret, then for clusters.
    async fn open(addr: SocketAddr, id: &str) -> Delta {
        let (tx, rx) = mpsc::channel(16);
        tx.send(DeltaDiscoveryRequest {
            node: Some(Node {
                id: id.into(),
                ..Default::default()
            }),
            type_url: TypeUrl::Secret.as_str().into(),
            resource_names_subscribe: vec![CRED.into()],
            ..Default::default()
        })
        .await
        .unwrap();
        tx.send(DeltaDiscoveryRequest {
            type_url: TypeUrl::Cluster.as_str().into(),
            ..Default::default()
        })
        .await
        .unwrap();
        let rx = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap()
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

fn private_key(r: &DeltaDiscoveryResponse) -> String {
    let s = Secret::decode(r.resources[0].resource.as_ref().unwrap().value.as_slice()).unwrap();
    let Some(secret::Type::TlsCertificate(t)) = s.r#type else {
        panic!("not a certificate")
    };
    match t.private_key.unwrap().specifier.unwrap() {
        data_source::Specifier::InlineBytes(b) => String::from_utf8(b).unwrap(),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn secrets_go_to_verified_streams_only_and_follow_changes() {
    let (server, generator, addr) = start().await;

    // The server answers requests in order: the unverified stream's first answer is CDS, so
    // its Secret request was not answered (and never will be).
    let mut anonymous = Delta::open(addr, ANONYMOUS).await;
    let first = anonymous.recv().await;
    assert_eq!(first.type_url, TypeUrl::Cluster.as_str());

    let mut verified = Delta::open(addr, VERIFIED).await;
    let first = verified.recv().await;
    assert_eq!(first.type_url, TypeUrl::Secret.as_str());
    assert_eq!(first.resources[0].name, CRED);
    assert_eq!(private_key(&first), "KEY-1");
    verified.ack(&first).await;
    let cds = verified.recv().await;
    assert_eq!(cds.type_url, TypeUrl::Cluster.as_str());
    verified.ack(&cds).await;

    // A rotated Secret is pushed, after the cluster that changed with it.
    *generator.key.lock().unwrap() = "KEY-2".into();
    server.notify(2, SystemTime::now());
    let cds = verified.recv().await;
    assert_eq!(cds.type_url, TypeUrl::Cluster.as_str());
    let pushed = verified.recv().await;
    assert_eq!(pushed.type_url, TypeUrl::Secret.as_str());
    assert_eq!(private_key(&pushed), "KEY-2");
    // The unverified stream gets the cluster, and no Secret.
    anonymous.ack(&first).await;
    let cds = anonymous.recv().await;
    assert_eq!(cds.type_url, TypeUrl::Cluster.as_str());
    anonymous.ack(&cds).await;
    if let Ok(m) = timeout(Duration::from_millis(300), anonymous.rx.message()).await {
        panic!("an unverified stream got {m:?}");
    }
}
