//! Strait's control plane, `strait control-plane`: the resource API on the embedded store, the
//! registry and config snapshot kept current from the store's watch, the translator, and the ADS
//! server that pushes each connected proxy what changed for it.

#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

mod authz_check;
pub mod dashboard;
mod debug;
mod identity;
pub mod jwks;
mod limits;
mod mesh;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use strait_ads::{AdsOptions, AdsServer};
use strait_apiserver::{ApiState, Server, load_or_create_token, router};
use strait_store::{EtcdStore, FileStore, Store};
use strait_translate::{MeshConfig, OutboundPolicy};

pub use identity::{IdentityOptions, MeshIdentity, ROOT_CERT_CONFIGMAP, ROOT_CERT_KEY};
pub use mesh::{Mesh, VIP_KEY_KIND, follow};
pub use strait_store::EtcdOptions;

/// The file in the data directory where the running control plane records its API address, so
/// that a plain `strait apply` finds it.
pub const SERVER_FILE: &str = "server";
/// The file where it records its xDS address, for `strait bootstrap`.
pub const XDS_FILE: &str = "xds";
/// The file where it records its TLS port's address (CA and mTLS xDS).
pub const XDS_TLS_FILE: &str = "xds-tls";
/// The file where it records its OTLP receiver's address, when it has one (`--otlp-addr`).
pub const OTLP_FILE: &str = "otlp";

/// How to run the control plane.
#[derive(Debug, Clone)]
pub struct Options {
    pub data_dir: PathBuf,
    pub api_addr: String,
    pub xds_addr: String,
    /// The TLS port: the CA and ADS over mutual TLS (Istio's 15012).
    pub tls_addr: String,
    pub identity: IdentityOptions,
    pub debounce: Duration,
    pub outbound_policy: OutboundPolicy,
    /// The range virtual IPs are allocated from (CIDR).
    pub vip_range: String,
    /// The trust bundle proxies verify originated TLS against when a DestinationRule names no
    /// `caCertificates` (a path the proxies read).
    pub system_ca_bundle: PathBuf,
    /// How RequestAuthentications' `jwksUri`s are fetched.
    pub jwks: jwks::JwksOptions,
    /// Istio's MeshConfig, as read from `--mesh-config` (its trust domain and outbound policy
    /// are already in `identity` and `outbound_policy`, with the flags applied).
    pub mesh: strait_api::mesh_config::MeshConfig,
    /// Where the config lives: the embedded file store in the data directory, or etcd (shared
    /// by several control planes).
    pub store: StoreChoice,
    /// The API token; None: the `token` file in the data directory (made on first start).
    /// Replicas on one etcd are given the same one.
    pub token: Option<String>,
    /// Where the OTLP trace receiver listens (OTLP/HTTP and OTLP/gRPC on one port), feeding
    /// the dashboard's trace store; None: no receiver.
    pub otlp_addr: Option<String>,
}

/// The store behind the control plane.
#[derive(Debug, Clone, Default)]
pub enum StoreChoice {
    /// The embedded file store in the data directory (the default).
    #[default]
    File,
    /// etcd, shared by any number of control planes.
    Etcd(EtcdOptions),
}

/// Runs until SIGINT or SIGTERM.
pub async fn run(opts: Options) -> Result<()> {
    let budget = limits::raise_and_budget();
    tracing::info!(
        open_files = budget.descriptors,
        api_unauthenticated = budget.api.max_unauthenticated,
        api_authenticated = budget.api.max_authenticated,
        xds = budget.xds,
        "connection limits"
    );
    let dir = &opts.data_dir;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating the data directory {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("setting the mode of {}", dir.display()))?;
    let store: Arc<dyn Store> = match &opts.store {
        StoreChoice::File => Arc::new(
            FileStore::open(dir)
                .with_context(|| format!("opening the store in {}", dir.display()))?,
        ),
        StoreChoice::Etcd(etcd) => {
            let store = EtcdStore::connect(etcd).with_context(|| {
                format!(
                    "connecting to etcd at {} (--store); is etcd running?",
                    etcd.endpoints.join(",")
                )
            })?;
            tracing::info!(endpoints = %etcd.endpoints.join(","), prefix = %etcd.prefix, "store: etcd");
            Arc::new(store)
        }
    };
    let token = match &opts.token {
        Some(t) => t.clone(),
        None => load_or_create_token(dir)
            .with_context(|| format!("reading or creating the API token in {}", dir.display()))?,
    };

    let bundle = &opts.system_ca_bundle;
    anyhow::ensure!(
        bundle.is_absolute(),
        "--system-ca-bundle {}: give an absolute path (the proxies read it)",
        bundle.display()
    );
    if !bundle.is_file() {
        tracing::warn!(
            path = %bundle.display(),
            "the system trust bundle does not exist here: TLS origination without caCertificates \
             will fail until the proxies can read it (--system-ca-bundle)"
        );
    }
    let defaults = MeshConfig::default();
    let mesh_config = MeshConfig {
        outbound_policy: opts.outbound_policy,
        trust_domain: opts.identity.trust_domain.clone(),
        system_ca_bundle: bundle.display().to_string(),
        root_namespace: opts
            .mesh
            .root_namespace
            .clone()
            .unwrap_or(defaults.root_namespace.clone()),
        extension_providers: Arc::new(opts.mesh.extension_providers.clone()),
        tracing: opts.mesh.tracing.clone(),
        ..defaults
    };
    let identity = MeshIdentity::start(&opts.identity, dir)?;
    let mesh = Arc::new(Mesh::load(store.clone(), mesh_config, &opts.vip_range)?);
    mesh.set_jwks_fetcher(jwks::JwksFetcher::start(opts.jwks.clone(), store.clone())?);
    let ads = AdsServer::with_authorizer(
        mesh.clone() as Arc<dyn strait_ads::Generator>,
        AdsOptions {
            debounce: opts.debounce,
            ..AdsOptions::default()
        },
        Some(identity.authorizer()),
    );
    let watcher = tokio::spawn(mesh::follow(mesh.clone(), store.clone(), ads.clone()));

    let api_listener = tokio::net::TcpListener::bind(&opts.api_addr)
        .await
        .with_context(|| {
            format!(
                "binding the API address {} (is another control plane running?)",
                opts.api_addr
            )
        })?;
    let xds_listener = tokio::net::TcpListener::bind(&opts.xds_addr)
        .await
        .with_context(|| {
            format!(
                "binding the xDS address {} (is another control plane running?)",
                opts.xds_addr
            )
        })?;
    let tls_listener = tokio::net::TcpListener::bind(&opts.tls_addr)
        .await
        .with_context(|| {
            format!(
                "binding the TLS (CA and mTLS xDS) address {} (is another control plane running?)",
                opts.tls_addr
            )
        })?;
    let otlp_listener = match &opts.otlp_addr {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!("binding the OTLP receiver's address {addr} (--otlp-addr; is another collector or control plane using it?)")
        })?),
        None => None,
    };
    let api_local = api_listener.local_addr()?;
    let xds_local: SocketAddr = xds_listener.local_addr()?;
    let tls_local: SocketAddr = tls_listener.local_addr()?;

    let traces = Arc::new(dashboard::TraceStore::new(
        dashboard::traces::Limits::default(),
    ));
    let api = router(
        ApiState::new(store.clone(), token).with_open_paths(strait_apiserver::OpenPaths {
            public: dashboard::PAGE_PATHS.to_vec(),
            loopback_read: dashboard::API_PATHS.to_vec(),
        }),
        debug::routes(ads.clone(), mesh.clone())
            .merge(identity.routes())
            .merge(dashboard::routes(ads.clone(), mesh.clone(), traces.clone())),
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut api_stop = stop_rx.clone();
    let api_server = Server::new(budget.api);
    let api_task = tokio::spawn(async move {
        let stop = async move {
            let _ = api_stop.wait_for(|s| *s).await;
        };
        api_server
            .serve(api_listener, api, stop, Duration::from_secs(2))
            .await;
    });
    let mut xds_stop = stop_rx.clone();
    let xds_service = ads.service();
    let xds_max = budget.xds;
    let xds_task = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            .add_service(xds_service)
            .serve_with_incoming_shutdown(limits::xds_incoming(xds_listener, xds_max), async move {
                let _ = xds_stop.wait_for(|s| *s).await;
            })
            .await
    });

    let mut tls_stop = stop_rx.clone();
    let tls_ads = ads.service();
    let ca_service = identity.ca_service();
    let tls_incoming = strait_identity::peer::incoming(tls_listener, identity.tls_configs());
    let tls_task = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .add_service(tls_ads)
            .add_service(ca_service)
            .serve_with_incoming_shutdown(tls_incoming, async move {
                let _ = tls_stop.wait_for(|s| *s).await;
            })
            .await
    });

    let otlp_file = dir.join(OTLP_FILE);
    let _ = std::fs::remove_file(&otlp_file);
    let otlp_task = match otlp_listener {
        Some(listener) => {
            let local = listener.local_addr()?;
            std::fs::write(&otlp_file, format!("{local}\n"))
                .with_context(|| format!("writing {}", otlp_file.display()))?;
            tracing::info!(otlp = %local, "OTLP trace receiver ready (OTLP/HTTP {} and OTLP/gRPC)", strait_telemetry::otlp::HTTP_PATH);
            let mut otlp_stop = stop_rx.clone();
            Some(tokio::spawn(dashboard::otlp::serve(
                listener,
                traces,
                async move {
                    let _ = otlp_stop.wait_for(|s| *s).await;
                },
            )))
        }
        None => None,
    };
    let server_file = dir.join(SERVER_FILE);
    let xds_file = dir.join(XDS_FILE);
    let tls_file = dir.join(XDS_TLS_FILE);
    std::fs::write(&tls_file, format!("{tls_local}\n"))
        .with_context(|| format!("writing {}", tls_file.display()))?;
    std::fs::write(&server_file, format!("http://{api_local}\n"))
        .with_context(|| format!("writing {}", server_file.display()))?;
    std::fs::write(&xds_file, format!("{xds_local}\n"))
        .with_context(|| format!("writing {}", xds_file.display()))?;
    tracing::info!(api = %format!("http://{api_local}"), xds = %xds_local, tls = %tls_local, data_dir = %dir.display(), "control plane ready");

    shutdown_signal().await;
    let _ = stop_tx.send(true);
    let _ = std::fs::remove_file(&server_file);
    let _ = std::fs::remove_file(&xds_file);
    let _ = std::fs::remove_file(&tls_file);
    let _ = std::fs::remove_file(&otlp_file);
    watcher.abort();
    if let Some(t) = otlp_task {
        t.abort();
    }
    let _ = api_task.await;
    let _ = tokio::time::timeout(Duration::from_secs(2), xds_task).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), tls_task).await;
    tracing::info!("control plane stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
