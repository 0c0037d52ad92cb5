//! `strait agent`: the node agent beside Envoy (the role of Istio's pilot-agent). It makes the
//! workload's key, obtains its certificate from the mesh CA with a single-use bootstrap
//! credential, renews it at half its life, and serves it to Envoy over SDS on a Unix socket, as
//! Istio names the resources: `default` (the certificate chain and key) and `ROOTCA` (the trust
//! bundle). Envoy's bootstrap (`strait bootstrap envoy --sds-socket PATH`) points its
//! `sds-grpc` cluster at the socket, and its xDS connection to the control plane's TLS port
//! uses the same certificate.
//!
//! The key never leaves the pod: it goes from this process to its own Envoy over the socket,
//! which only the proxy's uid can open.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, TlsCertificate, secret,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::{
    SecretDiscoveryService, SecretDiscoveryServiceServer,
};
use envoy_types::util::pack_any;
use strait_identity::manager::{CertManager, ManagerOptions};
use strait_identity::{Credentials, Identity};
use strait_xds_core::flags::IdentityFlags;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// Istio's SDS resource names.
pub const DEFAULT_SECRET: &str = "default";
pub const ROOT_SECRET: &str = "ROOTCA";
const SECRET_TYPE: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

#[derive(clap::Args)]
pub struct AgentArgs {
    #[arg(long, default_value = "default")]
    pub namespace: String,
    #[arg(long, default_value = "default")]
    pub service_account: String,
    /// The Unix socket to serve SDS on (Istio's ./var/run/secrets/workload-spiffe-uds/socket).
    #[arg(long, value_name = "PATH")]
    pub sds_socket: PathBuf,
    #[command(flatten)]
    pub identity: IdentityFlags,
}

/// What the CA client needs, from the identity flags.
pub fn manager_options(
    identity: &IdentityFlags,
    namespace: &str,
    service_account: &str,
) -> Result<ManagerOptions> {
    let ca = identity
        .ca_addr
        .ok_or_else(|| anyhow!("--ca-addr is required: the control plane's TLS port (15012)"))?;
    let root_path = identity
        .root_cert
        .as_ref()
        .ok_or_else(|| anyhow!("--root-cert is required: the mesh's trust bundle (PEM)"))?;
    Ok(ManagerOptions::from_files(
        ca,
        root_path,
        identity.bootstrap_token.as_deref(),
        Identity::new(&identity.trust_domain, namespace, service_account),
        identity.cert_ttl,
    )?)
}

pub fn run(args: AgentArgs) -> Result<ExitCode> {
    crate::run::logging();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: AgentArgs) -> Result<ExitCode> {
    let opts = manager_options(&args.identity, &args.namespace, &args.service_account)?;
    let identity = opts.identity.clone();
    let manager = CertManager::start(opts)
        .await
        .with_context(|| format!("obtaining the certificate for {identity}"))?;
    let creds = manager.current();
    tracing::info!(%identity, serial = %creds.leaf.serial, "certificate obtained; serving SDS");
    let socket = &args.sds_socket;
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let _ = std::fs::remove_file(socket);
    let listener = tokio::net::UnixListener::bind(socket)
        .with_context(|| format!("listening on {}", socket.display()))?;
    std::fs::set_permissions(socket, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .with_context(|| format!("restricting {}", socket.display()))?;
    let sds = Sds {
        current: manager.subscribe(),
    };
    let server = tonic::transport::Server::builder()
        .add_service(SecretDiscoveryServiceServer::new(sds))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            stop_signal(),
        );
    let result = server.await;
    let _ = std::fs::remove_file(socket);
    drop(manager);
    result.context("serving SDS")?;
    Ok(ExitCode::SUCCESS)
}

async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}

/// The SDS server: every stream gets the secrets it names, again whenever the certificate
/// changes.
#[derive(Clone)]
struct Sds {
    current: watch::Receiver<Arc<Credentials>>,
}

fn inline(bytes: &str) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(data_source::Specifier::InlineBytes(
            bytes.as_bytes().to_vec(),
        )),
        ..Default::default()
    })
}

/// The secret `name` for `creds`, if it is one the agent serves.
fn secret(name: &str, creds: &Credentials) -> Option<Secret> {
    let kind = match name {
        DEFAULT_SECRET => secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: inline(&creds.chain_pem()),
            private_key: inline(creds.key_pem()),
            ..Default::default()
        }),
        ROOT_SECRET => secret::Type::ValidationContext(CertificateValidationContext {
            trusted_ca: inline(&creds.roots_pem()),
            ..Default::default()
        }),
        _ => return None,
    };
    Some(Secret {
        name: name.to_string(),
        r#type: Some(kind),
    })
}

fn response(names: &BTreeSet<String>, creds: &Credentials, nonce: u64) -> DiscoveryResponse {
    DiscoveryResponse {
        version_info: creds.leaf.serial.clone(),
        resources: names
            .iter()
            .filter_map(|n| secret(n, creds))
            .map(pack_any)
            .collect(),
        type_url: SECRET_TYPE.to_string(),
        nonce: nonce.to_string(),
        ..Default::default()
    }
}

type Stream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl SecretDiscoveryService for Sds {
    type DeltaSecretsStream = Stream<DeltaDiscoveryResponse>;
    type StreamSecretsStream = ReceiverStream<Result<DiscoveryResponse, Status>>;

    async fn delta_secrets(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        Err(Status::unimplemented(
            "the agent serves SDS as state of the world (StreamSecrets), as Istio's does",
        ))
    }

    async fn stream_secrets(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        let mut requests = request.into_inner();
        let mut current = self.current.clone();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut names: BTreeSet<String> = BTreeSet::new();
            let mut nonce = 0u64;
            let mut sent_serial = String::new();
            loop {
                tokio::select! {
                    req = requests.message() => {
                        let req = match req {
                            Ok(Some(r)) => r,
                            _ => return,
                        };
                        if let Some(e) = &req.error_detail {
                            tracing::warn!(names = ?req.resource_names, error = %e.message, "Envoy refused a secret (NACK)");
                            continue;
                        }
                        let wanted: BTreeSet<String> = req.resource_names.iter().cloned().collect();
                        let unknown: Vec<&String> = wanted.iter().filter(|n| *n != DEFAULT_SECRET && *n != ROOT_SECRET).collect();
                        if !unknown.is_empty() {
                            tracing::warn!(?unknown, "Envoy asked for secrets this agent does not serve (it serves default and ROOTCA)");
                        }
                        let creds = current.borrow().clone();
                        // A new subscription, or a request after a response it has not seen yet.
                        if wanted != names || req.version_info != creds.leaf.serial {
                            names = wanted;
                            nonce += 1;
                            sent_serial = creds.leaf.serial.clone();
                            if tx.send(Ok(response(&names, &creds, nonce))).await.is_err() {
                                return;
                            }
                        }
                    }
                    changed = current.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        let creds = current.borrow_and_update().clone();
                        if creds.leaf.serial != sent_serial && !names.is_empty() {
                            nonce += 1;
                            sent_serial = creds.leaf.serial.clone();
                            tracing::info!(serial = %sent_serial, "pushing the renewed certificate to Envoy");
                            if tx.send(Ok(response(&names, &creds, nonce))).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn fetch_secrets(
        &self,
        request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        let creds = self.current.borrow().clone();
        let names = request.into_inner().resource_names.into_iter().collect();
        Ok(Response::new(response(&names, &creds, 0)))
    }
}
