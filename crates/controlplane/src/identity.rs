//! The control plane as the mesh's CA, and its TLS port (Istio's 15012).
//!
//! The port serves the CA (`CreateCertificate`) and ADS over TLS with the control plane's own
//! certificate (`spiffe://TD/ns/istio-system/sa/istiod`, renewed at half its 24 h life). A
//! client certificate is optional at the handshake, because a workload's first certificate
//! request has only its bootstrap credential; an ADS stream on this port must present one, and
//! its identity must be the one the proxy's node claims (namespace and service account), or the
//! stream gets no config. The plaintext ADS port (15010) stays unauthenticated, for tools and
//! tests, on loopback by default; its streams get no Secrets (`credentialName` certificates).
//!
//! The API gains two Kubernetes-shaped paths, behind the API token: the trust bundle as Istio's
//! `istio-ca-root-cert` ConfigMap, and `TokenRequest` for a service account (a single-use
//! bootstrap credential).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rustls::ServerConfig;
use serde_json::{Value, json};
use strait_ads::{Authorize, Peer};
use strait_ca::{Binding, BootstrapTokens, CaOptions, CaService, MeshCa};
use strait_identity::peer::PeerInfo;
use strait_identity::tls::{ClientAuth, server_config};
use strait_xds_core::Proxy;
use tokio::sync::watch;

/// The name of the trust bundle's ConfigMap (Istio's).
pub const ROOT_CERT_CONFIGMAP: &str = "istio-ca-root-cert";
/// Its key (Istio's).
pub const ROOT_CERT_KEY: &str = "root-cert.pem";
/// How long a bootstrap credential is good for, unless the request asks for less.
pub const BOOTSTRAP_TTL: Duration = Duration::from_secs(600);
/// The control plane's own certificate lifetime.
const SERVER_CERT_TTL: Duration = Duration::from_secs(24 * 3600);

/// How the control plane's identity work is set up.
#[derive(Debug, Clone)]
pub struct IdentityOptions {
    pub trust_domain: String,
    /// A plug-in CA in Istio's cacerts layout.
    pub ca_dir: Option<PathBuf>,
    /// The lifetime of workload certificates when a request asks for none.
    pub workload_cert_ttl: Duration,
}

impl Default for IdentityOptions {
    fn default() -> Self {
        IdentityOptions {
            trust_domain: strait_identity::DEFAULT_TRUST_DOMAIN.to_string(),
            ca_dir: None,
            workload_cert_ttl: strait_ca::DEFAULT_WORKLOAD_TTL,
        }
    }
}

/// The CA, the outstanding bootstrap credentials, and the TLS config of the 15012 port.
pub struct MeshIdentity {
    pub ca: Arc<MeshCa>,
    pub tokens: Arc<BootstrapTokens>,
    configs: watch::Receiver<Arc<ServerConfig>>,
    renew: tokio::task::JoinHandle<()>,
}

impl Drop for MeshIdentity {
    fn drop(&mut self) {
        self.renew.abort();
    }
}

fn server_tls(ca: &MeshCa) -> Result<Arc<ServerConfig>> {
    let id = strait_ca::control_plane_identity(ca.trust_domain());
    let creds = ca
        .issue_server(
            &id,
            &[strait_ca::CONTROL_PLANE_SERVER_NAME.to_string()],
            &[],
            SERVER_CERT_TTL,
        )
        .context("issuing the control plane's own certificate")?;
    server_config(&creds, ClientAuth::Optional, &[b"h2"])
        .context("building the control plane's TLS config")
}

impl MeshIdentity {
    /// Loads or makes the CA and the control plane's certificate; renews the latter in the
    /// background.
    pub fn start(opts: &IdentityOptions, data_dir: &Path) -> Result<MeshIdentity> {
        let mut ca_opts = CaOptions::new(&opts.trust_domain, data_dir);
        ca_opts.plugin_dir = opts.ca_dir.clone();
        ca_opts.default_ttl = opts.workload_cert_ttl;
        let ca = Arc::new(MeshCa::load_or_create(&ca_opts).context("starting the mesh CA")?);
        tracing::info!(trust_domain = %opts.trust_domain, ca = %ca.source(), "mesh CA ready");
        let (tx, configs) = watch::channel(server_tls(&ca)?);
        let renew_ca = ca.clone();
        let renew = tokio::spawn(async move {
            loop {
                tokio::time::sleep(SERVER_CERT_TTL / 2).await;
                match server_tls(&renew_ca) {
                    Ok(config) => {
                        tracing::info!("the control plane's certificate was renewed");
                        let _ = tx.send(config);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot renew the control plane's certificate")
                    }
                }
            }
        });
        Ok(MeshIdentity {
            ca,
            tokens: Arc::new(BootstrapTokens::default()),
            configs,
            renew,
        })
    }

    /// The TLS configs of the 15012 port (the current one, and the next after a renewal).
    pub fn tls_configs(&self) -> watch::Receiver<Arc<ServerConfig>> {
        self.configs.clone()
    }

    /// The CA's gRPC service.
    pub fn ca_service(&self) -> CaService {
        CaService::new(self.ca.clone(), vec![self.tokens.clone()])
    }

    /// The ADS authorizer of the 15012 port.
    pub fn authorizer(&self) -> Arc<dyn Authorize> {
        Arc::new(NodeMatchesCertificate {
            trust_domain: self.ca.trust_domain().to_string(),
        })
    }

    /// The API paths: the trust bundle and bootstrap credentials.
    pub fn routes(&self) -> Router {
        Router::new()
            .route(
                "/api/v1/namespaces/{ns}/configmaps/istio-ca-root-cert",
                get(root_cert),
            )
            .route(
                "/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token",
                post(token_request),
            )
            .with_state(RouteState {
                ca: self.ca.clone(),
                tokens: self.tokens.clone(),
            })
    }
}

/// ADS on the TLS port: the proxy's certificate must prove the identity its node claims.
struct NodeMatchesCertificate {
    trust_domain: String,
}

impl Authorize for NodeMatchesCertificate {
    fn authorize(
        &self,
        proxy: &Proxy,
        extensions: &tonic::codegen::http::Extensions,
    ) -> Result<Peer, String> {
        let Some(peer) = extensions.get::<PeerInfo>() else {
            // The plaintext port: unauthenticated by design (loopback unless told otherwise);
            // such streams get no Secrets.
            return Ok(Peer::Anonymous);
        };
        let claimed = strait_identity::Identity::new(
            &self.trust_domain,
            &proxy.namespace,
            &proxy.service_account,
        );
        match &peer.identity {
            None => Err(format!(
                "xDS on the TLS port needs a workload certificate: the proxy {} presented none (it claims {claimed})",
                proxy.id
            )),
            Some(id) if *id == claimed => Ok(Peer::Verified),
            Some(id) => Err(format!(
                "the proxy's certificate proves {id}, but its node {} claims {claimed}: a proxy gets only the config of the identity it proves",
                proxy.id
            )),
        }
    }
}

#[derive(Clone)]
struct RouteState {
    ca: Arc<MeshCa>,
    tokens: Arc<BootstrapTokens>,
}

async fn root_cert(State(s): State<RouteState>, UrlPath(ns): UrlPath<String>) -> Response {
    Json(json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": ROOT_CERT_CONFIGMAP,
            "namespace": ns,
            "annotations": {"strait.io/trust-domain": s.ca.trust_domain()},
        },
        "data": {ROOT_CERT_KEY: s.ca.roots_pem()},
    }))
    .into_response()
}

async fn token_request(
    State(s): State<RouteState>,
    UrlPath((ns, sa)): UrlPath<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let requested = if body.is_empty() {
        None
    } else {
        match serde_json::from_slice::<Value>(&body) {
            Ok(v) => v["spec"]["expirationSeconds"].as_u64(),
            Err(e) => {
                return (
                    StatusCode::BAD_REQUEST,
                    format!("the TokenRequest is not JSON: {e}"),
                )
                    .into_response();
            }
        }
    };
    let ttl = requested
        .map(Duration::from_secs)
        .unwrap_or(BOOTSTRAP_TTL)
        .min(BOOTSTRAP_TTL);
    let token = s.tokens.issue(
        Binding {
            namespace: ns.clone(),
            service_account: sa.clone(),
        },
        ttl,
    );
    tracing::info!(namespace = %ns, service_account = %sa, ttl = ?ttl, "bootstrap credential issued");
    (
        StatusCode::CREATED,
        Json(json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "metadata": {"name": sa, "namespace": ns},
            "spec": {"audiences": ["istio-ca"], "expirationSeconds": ttl.as_secs()},
            "status": {
                "token": token,
                "expirationTimestamp": strait_identity::cert::rfc3339(SystemTime::now() + ttl),
            },
        })),
    )
        .into_response()
}

struct Json(Value);

impl IntoResponse for Json {
    fn into_response(self) -> Response {
        (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            self.0.to_string(),
        )
            .into_response()
    }
}
