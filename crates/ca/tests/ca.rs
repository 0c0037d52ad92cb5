//! The mesh CA end to end: its gRPC service over TLS on loopback, workloads that obtain and renew
//! certificates through it, and mutual TLS between them, with the peers a workload must refuse.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use strait_ca::{Binding, BootstrapTokens, CaOptions, CaService, MeshCa};
use strait_identity::manager::{CaTarget, CertManager, ManagerOptions};
use strait_identity::tls::{ClientAuth, ExpectedPeer, client_config, server_config};
use strait_identity::{Credentials, Identity};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

struct Ca {
    ca: Arc<MeshCa>,
    tokens: Arc<BootstrapTokens>,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

async fn start_ca() -> Ca {
    let dir = tempfile::tempdir().unwrap();
    let ca =
        Arc::new(MeshCa::load_or_create(&CaOptions::new("cluster.local", dir.path())).unwrap());
    let tokens = Arc::new(BootstrapTokens::default());
    let server_id = strait_ca::control_plane_identity("cluster.local");
    let creds = ca
        .issue_server(
            &server_id,
            &[strait_ca::CONTROL_PLANE_SERVER_NAME.to_string()],
            &["127.0.0.1".parse().unwrap()],
            Duration::from_secs(3600),
        )
        .unwrap();
    let config = server_config(&creds, ClientAuth::Optional, &[b"h2"]).unwrap();
    let (_tx, configs) = tokio::sync::watch::channel(config);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = CaService::new(ca.clone(), vec![tokens.clone()]);
    tokio::spawn(async move {
        let _keep = _tx;
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(strait_identity::peer::incoming(listener, configs))
            .await
            .unwrap();
    });
    Ca {
        ca,
        tokens,
        addr,
        _dir: dir,
    }
}

impl Ca {
    fn target(&self) -> CaTarget {
        CaTarget {
            addr: self.addr,
            roots_pem: self.ca.roots_pem(),
            identity: strait_ca::control_plane_identity("cluster.local").uri(),
            server_name: strait_ca::CONTROL_PLANE_SERVER_NAME.to_string(),
        }
    }

    fn options(&self, ns: &str, sa: &str, token: Option<String>, ttl: Duration) -> ManagerOptions {
        ManagerOptions {
            identity: Identity::new("cluster.local", ns, sa),
            ca: self.target(),
            bootstrap_token: token,
            ttl,
        }
    }

    fn token(&self, ns: &str, sa: &str) -> String {
        self.tokens.issue(
            Binding {
                namespace: ns.into(),
                service_account: sa.into(),
            },
            Duration::from_secs(60),
        )
    }
}

#[tokio::test]
async fn a_workload_obtains_its_identity_with_a_bootstrap_credential_once() {
    let ca = start_ca().await;
    let token = ca.token("foo", "sleep");
    let mgr = CertManager::start(ca.options(
        "foo",
        "sleep",
        Some(token.clone()),
        Duration::from_secs(3600),
    ))
    .await
    .unwrap();
    let creds = mgr.current();
    assert_eq!(
        creds.leaf.uris,
        vec!["spiffe://cluster.local/ns/foo/sa/sleep"]
    );
    assert!(creds.leaf.subject.is_empty(), "{}", creds.leaf.subject);
    let life = creds.leaf.lifetime();
    assert!(
        life >= Duration::from_secs(3600) && life <= Duration::from_secs(3600 + 180),
        "{life:?}"
    );
    // The chain is served without the root; the root is the trust bundle.
    assert_eq!(creds.chain.len(), 1);
    assert_eq!(creds.roots_pem(), ca.ca.roots_pem());

    // The credential was single-use.
    let again =
        CertManager::start(ca.options("foo", "sleep", Some(token), Duration::from_secs(3600)))
            .await
            .err()
            .expect("a used credential is refused")
            .to_string();
    assert!(
        again.contains("used already") && again.contains("Unauthenticated"),
        "{again}"
    );
}

#[tokio::test]
async fn the_ca_refuses_an_identity_the_caller_did_not_prove() {
    let ca = start_ca().await;
    // A credential for foo/sleep, used to ask for foo/httpbin.
    let token = ca.token("foo", "sleep");
    let err =
        CertManager::start(ca.options("foo", "httpbin", Some(token), Duration::from_secs(3600)))
            .await
            .err()
            .expect("refused")
            .to_string();
    assert!(
        err.contains("the CSR asks for spiffe://cluster.local/ns/foo/sa/httpbin, but the caller proved spiffe://cluster.local/ns/foo/sa/sleep"),
        "{err}"
    );
    assert!(err.contains("PermissionDenied"), "{err}");
    // No credential at all.
    let err =
        CertManager::start(ca.options("foo", "x", Some("made-up".into()), Duration::from_secs(60)))
            .await
            .err()
            .unwrap()
            .to_string();
    assert!(err.contains("not one this control plane issued"), "{err}");
    // Longer than 90 days.
    let token = ca.token("foo", "sleep");
    let err = CertManager::start(ca.options(
        "foo",
        "sleep",
        Some(token),
        Duration::from_secs(91 * 86400),
    ))
    .await
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("longer than"), "{err}");
}

#[tokio::test]
async fn certificates_rotate_with_the_current_one_as_proof() {
    let ca = start_ca().await;
    let token = ca.token("foo", "sleep");
    let mgr = CertManager::start(ca.options("foo", "sleep", Some(token), Duration::from_secs(10)))
        .await
        .unwrap();
    let mut updates = mgr.subscribe();
    let first = mgr.current().leaf.serial.clone();
    // Renewed at about half of 10 s, without a bootstrap credential.
    tokio::time::timeout(Duration::from_secs(9), updates.changed())
        .await
        .expect("renewed within 9 s")
        .unwrap();
    let second = mgr.current().leaf.serial.clone();
    assert_ne!(first, second);
    assert_eq!(mgr.status().issued, 2);
    assert_eq!(mgr.status().last_error, None);
}

/// A TLS server on loopback that presents `creds` with mutual TLS required and answers each
/// connection with the client's identity.
async fn mtls_server(creds: &Credentials) -> SocketAddr {
    let config = server_config(creds, ClientAuth::Required, &[b"istio"]).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let peer = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| {
                            strait_identity::cert::CertInfo::parse(c[0].as_ref(), "x").ok()
                        })
                        .map(|i| i.uris.join(","))
                        .unwrap_or_default();
                    let _ = tls.write_all(peer.as_bytes()).await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    addr
}

async fn connect(
    addr: SocketAddr,
    creds: Option<&Credentials>,
    roots: Arc<rustls::RootCertStore>,
    expected: ExpectedPeer,
) -> Result<String, String> {
    let config = client_config(creds, roots, expected, &[b"istio"]).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name =
        rustls::pki_types::ServerName::try_from("outbound_.8000_._.httpbin.foo.svc.cluster.local")
            .unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| strait_identity::tls::explain(&e))?;
    let mut out = String::new();
    tls.read_to_string(&mut out)
        .await
        .map_err(|e| e.to_string())?;
    Ok(out)
}

#[tokio::test]
async fn mutual_tls_checks_identities_and_refuses_foreign_or_expired_peers() {
    let ca = start_ca().await;
    let server = CertManager::start(ca.options(
        "foo",
        "httpbin",
        Some(ca.token("foo", "httpbin")),
        Duration::from_secs(3600),
    ))
    .await
    .unwrap()
    .current();
    let client = CertManager::start(ca.options(
        "foo",
        "sleep",
        Some(ca.token("foo", "sleep")),
        Duration::from_secs(3600),
    ))
    .await
    .unwrap()
    .current();
    let addr = mtls_server(&server).await;
    let httpbin = ExpectedPeer::OneOf(vec!["spiffe://cluster.local/ns/foo/sa/httpbin".into()]);

    // The right peer: the server sees the client's identity.
    let seen = connect(addr, Some(&client), client.root_store(), httpbin.clone())
        .await
        .unwrap();
    assert_eq!(seen, "spiffe://cluster.local/ns/foo/sa/sleep");

    // The wrong identity: refused, saying what was presented and what was expected.
    let err = connect(
        addr,
        Some(&client),
        client.root_store(),
        ExpectedPeer::OneOf(vec!["spiffe://cluster.local/ns/foo/sa/y".into()]),
    )
    .await
    .unwrap_err();
    assert!(
        err.contains("the peer presented spiffe://cluster.local/ns/foo/sa/httpbin where spiffe://cluster.local/ns/foo/sa/y was expected"),
        "{err}"
    );

    // A server from another root: refused by the chain check.
    let other = start_ca().await;
    let foreign = CertManager::start(other.options(
        "foo",
        "httpbin",
        Some(other.token("foo", "httpbin")),
        Duration::from_secs(3600),
    ))
    .await
    .unwrap()
    .current();
    let foreign_addr = mtls_server(&foreign).await;
    let err = connect(
        foreign_addr,
        Some(&client),
        client.root_store(),
        httpbin.clone(),
    )
    .await
    .unwrap_err();
    assert!(
        err.contains("does not chain to this mesh's trust bundle"),
        "{err}"
    );

    // A client without a certificate: the mTLS server refuses it.
    let err = connect(addr, None, client.root_store(), httpbin.clone())
        .await
        .unwrap_err();
    assert!(!err.is_empty());

    // A client from another root: refused by the server.
    let err = connect(addr, Some(&foreign), client.root_store(), httpbin.clone()).await;
    assert!(err.is_err(), "{err:?}");

    // An expired server certificate: refused.
    let expired = expired_credentials(&ca);
    let expired_addr = mtls_server(&expired).await;
    let err = connect(expired_addr, Some(&client), client.root_store(), httpbin)
        .await
        .unwrap_err();
    assert!(err.contains("the peer's certificate has expired"), "{err}");
}

/// Credentials for foo/httpbin whose certificate expired an hour ago, signed with the mesh
/// CA's own key (read from its data directory, as only a test may).
fn expired_credentials(ca: &Ca) -> Credentials {
    let id = Identity::new("cluster.local", "foo", "httpbin");
    let made = strait_identity::cert::new_key_and_csr(&id).unwrap();
    let dir = ca._dir.path().join("ca");
    let root_pem = std::fs::read_to_string(dir.join("root-cert.pem")).unwrap();
    let key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(dir.join("root-key.pem")).unwrap())
        .unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&root_pem, key).unwrap();
    let csr = rcgen::CertificateSigningRequestParams::from_pem(&made.csr_pem).unwrap();
    let mut params = csr.params.clone();
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - Duration::from_secs(7200);
    params.not_after = now - Duration::from_secs(3600);
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = rcgen::CertificateSigningRequestParams {
        params,
        public_key: csr.public_key,
    }
    .signed_by(&issuer)
    .unwrap();
    Credentials::from_pem(id, &cert.pem(), &made.key_pem, &ca.ca.roots_pem()).unwrap()
}
