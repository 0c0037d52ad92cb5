//! The control plane as the mesh CA, through its real API and TLS port: a bootstrap credential
//! from the API (TokenRequest), the trust bundle (Istio's istio-ca-root-cert ConfigMap), a
//! certificate from `CreateCertificate`, and ADS over mutual TLS that serves a proxy only the
//! config of the identity its certificate proves.

use strait_e2e as support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use strait_identity::manager::{CaTarget, CertManager, ManagerOptions};
use strait_identity::tls::{ExpectedPeer, client_config};
use strait_identity::{Credentials, Identity};
use strait_xds_core::{CaptureMode, Proxy, ProxyRole};
use support::ControlPlane;

fn tls_addr(cp: &ControlPlane) -> SocketAddr {
    std::fs::read_to_string(cp.data_dir().join("xds-tls"))
        .expect("the control plane records its TLS address in DATA_DIR/xds-tls")
        .trim()
        .parse()
        .unwrap()
}

fn api(cp: &ControlPlane, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let (code, body) = support::http(&cp.server(), method, path, Some(&cp.token()), body);
    (
        code,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

fn roots(cp: &ControlPlane) -> String {
    let (code, cm) = api(
        cp,
        "GET",
        "/api/v1/namespaces/foo/configmaps/istio-ca-root-cert",
        None,
    );
    assert_eq!(code, 200, "{cm}");
    cm["data"]["root-cert.pem"].as_str().unwrap().to_string()
}

fn bootstrap_token(cp: &ControlPlane, ns: &str, sa: &str) -> String {
    let (code, tr) = api(
        cp,
        "POST",
        &format!("/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token"),
        Some(r#"{"spec":{"expirationSeconds":60}}"#),
    );
    assert_eq!(code, 201, "{tr}");
    assert_eq!(tr["kind"], "TokenRequest");
    tr["status"]["token"].as_str().unwrap().to_string()
}

fn target(cp: &ControlPlane) -> CaTarget {
    CaTarget {
        addr: tls_addr(cp),
        roots_pem: roots(cp),
        identity: "spiffe://cluster.local/ns/istio-system/sa/istiod".into(),
        server_name: "istiod.istio-system.svc".into(),
    }
}

async fn certificate(cp: &ControlPlane, ns: &str, sa: &str) -> CertManager {
    CertManager::start(ManagerOptions {
        identity: Identity::new("cluster.local", ns, sa),
        ca: target(cp),
        bootstrap_token: Some(bootstrap_token(cp, ns, sa)),
        ttl: Duration::from_secs(3600),
    })
    .await
    .unwrap()
}

/// Opens a Delta ADS stream on the TLS port, presenting `creds` (if any), for a proxy of
/// namespace `ns` and service account `sa`; returns the first response's type, or the error.
async fn first_response(
    cp: &ControlPlane,
    creds: Option<&Credentials>,
    ns: &str,
    sa: &str,
) -> Result<String, tonic::Status> {
    let addr = tls_addr(cp);
    let mut roots = rustls::RootCertStore::empty();
    for c in strait_identity::cert::certs_from_pem(&roots_pem(cp), "roots").unwrap() {
        roots.add(c).unwrap();
    }
    let tls = client_config(
        creds,
        Arc::new(roots),
        ExpectedPeer::OneOf(vec![
            "spiffe://cluster.local/ns/istio-system/sa/istiod".into(),
        ]),
        &[b"h2"],
    )
    .unwrap();
    let connector = tokio_rustls::TlsConnector::from(tls);
    let channel = tonic::transport::Endpoint::from_static("http://xds.invalid")
        .connect_with_connector(tower::service_fn(move |_| {
            let connector = connector.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                let name =
                    rustls::pki_types::ServerName::try_from("istiod.istio-system.svc").unwrap();
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }))
        .await
        .unwrap();
    let proxy = Proxy {
        id: Proxy::node_id(ProxyRole::Sidecar, "127.0.0.9".parse().unwrap(), "w", ns),
        role: ProxyRole::Sidecar,
        ip: "127.0.0.9".parse().unwrap(),
        workload: "w".into(),
        namespace: ns.into(),
        labels: Default::default(),
        capture: CaptureMode::None,
        service_account: sa.into(),
        app_address: None,
        mtls: false,
    };
    let request = DeltaDiscoveryRequest {
        node: Some(Node {
            id: proxy.id.clone(),
            metadata: Some(proxy.node_metadata()),
            ..Default::default()
        }),
        type_url: strait_xds_core::TypeUrl::Cluster.as_str().to_string(),
        ..Default::default()
    };
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let mut responses = client
        .delta_aggregated_resources(
            tokio_stream::iter(vec![request]).chain(tokio_stream::pending()),
        )
        .await?
        .into_inner();
    match tokio::time::timeout(Duration::from_secs(10), responses.message()).await {
        Ok(Ok(Some(r))) => Ok(r.type_url),
        Ok(Ok(None)) => Err(tonic::Status::unknown("the stream ended")),
        Ok(Err(status)) => Err(status),
        Err(_) => Err(tonic::Status::deadline_exceeded("no response within 10 s")),
    }
}

fn roots_pem(cp: &ControlPlane) -> String {
    roots(cp)
}

use tokio_stream::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_gets_only_the_config_of_the_identity_it_proves() {
    let cp = ControlPlane::start();
    let sleep = certificate(&cp, "foo", "sleep").await;
    let creds = sleep.current();
    assert_eq!(
        creds.leaf.uris,
        vec!["spiffe://cluster.local/ns/foo/sa/sleep"]
    );

    // Its own identity: config.
    let ty = first_response(&cp, Some(&creds), "foo", "sleep")
        .await
        .unwrap();
    assert_eq!(ty, strait_xds_core::TypeUrl::Cluster.as_str());

    // A node that claims another service account, or another namespace: no config.
    for (ns, sa) in [("foo", "httpbin"), ("bar", "sleep")] {
        let err = first_response(&cp, Some(&creds), ns, sa).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
        assert!(
            err.message()
                .contains("the proxy's certificate proves spiffe://cluster.local/ns/foo/sa/sleep")
                && err
                    .message()
                    .contains(&format!("claims spiffe://cluster.local/ns/{ns}/sa/{sa}")),
            "{}",
            err.message()
        );
    }

    // No certificate at all on the TLS port: no config.
    let err = first_response(&cp, None, "foo", "sleep").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains("needs a workload certificate"),
        "{}",
        err.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_signs_only_what_the_bootstrap_credential_is_bound_to() {
    let cp = ControlPlane::start();
    let token = bootstrap_token(&cp, "foo", "sleep");
    let err = CertManager::start(ManagerOptions {
        identity: Identity::new("cluster.local", "foo", "httpbin"),
        ca: target(&cp),
        bootstrap_token: Some(token),
        ttl: Duration::from_secs(3600),
    })
    .await
    .err()
    .expect("refused")
    .to_string();
    assert!(
        err.contains("the CSR asks for spiffe://cluster.local/ns/foo/sa/httpbin, but the caller proved spiffe://cluster.local/ns/foo/sa/sleep"),
        "{err}"
    );
    // The API's paths are behind its token like every other.
    let (code, body) = support::http(
        &cp.server(),
        "POST",
        "/api/v1/namespaces/foo/serviceaccounts/sleep/token",
        None,
        None,
    );
    assert_eq!(code, 401, "{body}");
    // The root the API publishes is the one in the data directory (self-signed, key 0600).
    let key = cp.data_dir().join("ca/root-key.pem");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        std::fs::read_to_string(cp.data_dir().join("ca/root-cert.pem")).unwrap(),
        roots(&cp)
    );
}
