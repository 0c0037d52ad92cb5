//! The xDS client: one ADS stream to the control plane, Delta (incremental) unless told
//! otherwise or the control plane does not serve it, then state of the world. It subscribes to
//! clusters and listeners (wildcard), then to the endpoints of EDS clusters and the route
//! configurations listeners name; converts each resource on arrival (off the data path), ACKs or
//! NACKs each response with its nonce, and publishes the whole config in one swap. When the
//! control plane is unreachable it reconnects with exponential backoff and jitter, serving the
//! last good config meanwhile; over Delta it tells the control plane what it already has so that
//! nothing is resent.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster as PbCluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener as PbListener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret as PbSecret;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::google::rpc;
use prost::Message;
use strait_xds_core::TypeUrl;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::Shared;
use crate::config::tls::SecretValue;
use crate::config::{
    Cluster, Config, Discovery, Endpoint, Invalid, Listener, RouteConfig, RouteSource,
};

const BACKOFF_BASE: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a stream ended.
#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error("cannot connect to the control plane at {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: tonic::transport::Error,
    },
    #[error("the ADS stream failed: {0}")]
    Stream(#[from] tonic::Status),
    #[error("the ADS stream closed")]
    Closed,
    #[error("cannot make the TLS configuration for the control plane: {0}")]
    Tls(String),
}

/// A resource as last accepted, with the version the control plane gave it.
#[derive(Debug)]
struct Held<T> {
    version: String,
    value: Arc<T>,
}

/// Why one resource of a response was refused: the NACK's reasons, typed until the message is
/// built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum Refused {
    #[error("{ty} {name:?} has no resource body")]
    NoBody { ty: &'static str, name: String },
    #[error("{ty} {name:?}: a resource of type {got} in a {ty} response")]
    WrongType {
        ty: &'static str,
        name: String,
        got: String,
    },
    #[error("{ty} {name:?} does not decode: {error}")]
    Undecodable {
        ty: &'static str,
        name: String,
        error: String,
    },
    /// It decodes, and strait-proxy cannot honour a field of it.
    #[error(transparent)]
    Invalid(#[from] Invalid),
}

/// The NACK message: every refused resource's reason.
fn nack_message(refused: &[Refused]) -> String {
    refused
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Everything the client has accepted: kept across reconnects.
#[derive(Debug, Default)]
pub(crate) struct State {
    listeners: BTreeMap<String, Held<Listener>>,
    routes: BTreeMap<String, Held<RouteConfig>>,
    clusters: BTreeMap<String, Held<Cluster>>,
    endpoints: BTreeMap<String, Held<Vec<Endpoint>>>,
    /// SDS secrets over ADS, by name (`kubernetes://NAME`).
    secrets: BTreeMap<String, Held<SecretValue>>,
    /// The EDS clusters by the service name they take their endpoints from.
    eds_users: BTreeMap<String, BTreeSet<String>>,
    /// The config as last built: each response changes only its own type's table (and, for
    /// EDS, the clusters that use the changed endpoints); the others stay shared.
    config: Config,
    /// Names subscribed to, for EDS and RDS.
    subscribed: BTreeMap<TypeUrl, BTreeSet<String>>,
    /// Names the control plane answered for (with the resource, or as removed).
    answered: BTreeMap<TypeUrl, BTreeSet<String>>,
    /// The system version of each type's last response.
    versions: BTreeMap<TypeUrl, String>,
}

/// Which ADS variant the client speaks: Delta falls back to state of the world when the control
/// plane answers that it does not implement Delta.
pub use strait_xds_core::XdsApi as Api;

/// Runs the client forever.
///
/// With several addresses (control-plane replicas on one store), it stays on the one it
/// reached; when that stream fails it tries the next, in turn, with the same backoff.
pub(crate) async fn run(shared: Arc<Shared>, node: Node, addrs: Vec<SocketAddr>, api: Api) {
    let mut state = State::default();
    let mut failures: u32 = 0;
    let mut api = api;
    let mut next = 0;
    loop {
        let Some(&addr) = addrs.get(next % addrs.len().max(1)) else {
            tracing::error!("no xDS address to connect to");
            return;
        };
        let mut got_response = false;
        let result = match api {
            Api::Delta => stream(&shared, &node, addr, &mut state, &mut got_response).await,
            Api::Sotw => stream_sotw(&shared, &node, addr, &mut state, &mut got_response).await,
        };
        if got_response {
            failures = 0;
        }
        if let Err(StreamError::Stream(status)) = &result
            && api == Api::Delta
            && status.code() == tonic::Code::Unimplemented
        {
            tracing::warn!(%addr, "the control plane does not serve Delta ADS: falling back to state of the world");
            api = Api::Sotw;
            continue;
        }
        let err = result.err().unwrap_or(StreamError::Closed);
        failures = failures.saturating_add(1);
        let delay = backoff(failures);
        next = (next + 1) % addrs.len();
        tracing::warn!(error = %err, %addr, next = %addrs[next], retry_in = ?delay, "xDS stream down; serving the last good config");
        tokio::time::sleep(delay).await;
    }
}

/// Exponential backoff with jitter: a random time between half and all of
/// `BACKOFF_BASE * 2^(failures-1)`, capped at `BACKOFF_MAX`.
fn backoff(failures: u32) -> Duration {
    let exp = BACKOFF_BASE.saturating_mul(1 << failures.clamp(1, 16).saturating_sub(1));
    let cap = exp.min(BACKOFF_MAX);
    cap / 2 + cap.mul_f64(fastrand::f64() / 2.0)
}

/// Connects to the control plane: plaintext, or, when the proxy has a workload identity, mutual
/// TLS to the control plane's TLS port with the certificate it holds at that moment (the
/// control plane checks that the node id it then sends is that identity's).
async fn connect(
    shared: &Shared,
    addr: SocketAddr,
) -> Result<AggregatedDiscoveryServiceClient<tonic::transport::Channel>, StreamError> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("a socket address makes a valid URI")
        .connect_timeout(CONNECT_TIMEOUT);
    let Some(creds) = shared.tls.workload() else {
        let channel = endpoint
            .connect()
            .await
            .map_err(|source| StreamError::Connect { addr, source })?;
        return Ok(AggregatedDiscoveryServiceClient::new(channel));
    };
    let trust_domain = creds.identity.trust_domain.clone();
    let tls = strait_identity::tls::client_config(
        Some(&creds),
        creds.root_store(),
        strait_identity::tls::ExpectedPeer::OneOf(vec![
            strait_identity::control_plane_identity(&trust_domain).uri(),
        ]),
        &[b"h2"],
    )
    .map_err(|e| StreamError::Tls(e.to_string()))?;
    let name = rustls::pki_types::ServerName::try_from(strait_identity::CONTROL_PLANE_SERVER_NAME)
        .expect("a valid server name");
    let connector = tokio_rustls::TlsConnector::from(tls);
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_| {
            let connector = connector.clone();
            let name = name.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                let _ = tcp.set_nodelay(true);
                let tls = connector.connect(name, tcp).await.map_err(|e| {
                    std::io::Error::other(format!(
                        "TLS to the control plane: {}",
                        strait_identity::tls::explain(&e)
                    ))
                })?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await
        .map_err(|source| StreamError::Connect { addr, source })?;
    Ok(AggregatedDiscoveryServiceClient::new(channel))
}

async fn stream(
    shared: &Shared,
    node: &Node,
    addr: SocketAddr,
    state: &mut State,
    got_response: &mut bool,
) -> Result<(), StreamError> {
    let mut client = connect(shared, addr).await?;
    let (tx, rx) = mpsc::channel(16);
    // The first request carries the node; wildcard CDS and LDS, then what we already subscribed
    // to, each with the versions we hold.
    for (i, (ty, names)) in state.opening().into_iter().enumerate() {
        let req = DeltaDiscoveryRequest {
            node: (i == 0).then(|| node.clone()),
            type_url: ty.as_str().to_string(),
            resource_names_subscribe: names,
            initial_resource_versions: state.held_versions(ty),
            ..Default::default()
        };
        let _ = tx.send(req).await;
    }
    let mut responses = client
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    tracing::info!(%addr, "xDS stream up");
    while let Some(resp) = responses.message().await? {
        *got_response = true;
        let Some(ty) = TypeUrl::parse(&resp.type_url) else {
            let _ = tx
                .send(nack(
                    &resp,
                    format!("type {} is not supported by strait-proxy", resp.type_url),
                ))
                .await;
            continue;
        };
        let errors = state.apply(ty, &resp);
        let reply = if errors.is_empty() {
            tracing::debug!(ty = ty.short(), version = %resp.system_version_info, "ACK");
            ack(&resp)
        } else {
            let detail = nack_message(&errors);
            tracing::warn!(ty = ty.short(), reason = %detail, "NACK");
            nack(&resp, detail)
        };
        let _ = tx.send(reply).await;
        for req in state.resubscribe() {
            let _ = tx.send(req).await;
        }
        shared.tls.set_named(state.secrets());
        shared.publish(state.config(), state.complete());
    }
    Err(StreamError::Closed)
}

/// State of the world: every response holds all of a type's resources the client subscribed to
/// (for clusters and listeners, all there are: one missing from a response accepted whole is
/// removed; a response with a refused resource removes nothing). Each
/// response is turned into the Delta shape [`State::apply`] takes. The ACK carries the
/// response's version, a NACK the last version accepted, both with the response's nonce and the
/// names subscribed to. On reconnect no version is sent, so the control plane answers in full.
async fn stream_sotw(
    shared: &Shared,
    node: &Node,
    addr: SocketAddr,
    state: &mut State,
    got_response: &mut bool,
) -> Result<(), StreamError> {
    let mut client = connect(shared, addr).await?;
    let (tx, rx) = mpsc::channel(16);
    for (i, (ty, names)) in state.opening().into_iter().enumerate() {
        let req = DiscoveryRequest {
            node: (i == 0).then(|| node.clone()),
            type_url: ty.as_str().to_string(),
            resource_names: names,
            ..Default::default()
        };
        let _ = tx.send(req).await;
    }
    let mut responses = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    tracing::info!(%addr, "xDS stream up (state of the world)");
    // Per type: the last version accepted and the last nonce seen.
    let mut accepted: BTreeMap<TypeUrl, String> = BTreeMap::new();
    let mut nonces: BTreeMap<TypeUrl, String> = BTreeMap::new();
    while let Some(resp) = responses.message().await? {
        *got_response = true;
        let Some(ty) = TypeUrl::parse(&resp.type_url) else {
            let _ = tx
                .send(DiscoveryRequest {
                    type_url: resp.type_url.clone(),
                    response_nonce: resp.nonce.clone(),
                    error_detail: Some(rpc::Status {
                        code: tonic::Code::InvalidArgument as i32,
                        message: format!("type {} is not supported by strait-proxy", resp.type_url),
                        details: Vec::new(),
                    }),
                    ..Default::default()
                })
                .await;
            continue;
        };
        let (delta, removed) = state.as_delta(ty, &resp);
        let errors = state.apply(ty, &delta);
        if errors.is_empty() && !removed.is_empty() {
            // Only a response accepted whole says what is gone.
            let removal = DeltaDiscoveryResponse {
                removed_resources: removed,
                resources: Vec::new(),
                ..delta
            };
            state.apply(ty, &removal);
        }
        nonces.insert(ty, resp.nonce.clone());
        let error_detail = if errors.is_empty() {
            tracing::debug!(ty = ty.short(), version = %resp.version_info, "ACK");
            accepted.insert(ty, resp.version_info.clone());
            None
        } else {
            let detail = nack_message(&errors);
            tracing::warn!(ty = ty.short(), reason = %detail, "NACK");
            Some(rpc::Status {
                code: tonic::Code::InvalidArgument as i32,
                message: detail,
                details: Vec::new(),
            })
        };
        let reply = DiscoveryRequest {
            version_info: accepted.get(&ty).cloned().unwrap_or_default(),
            resource_names: state.subscribed_names(ty),
            type_url: resp.type_url.clone(),
            response_nonce: resp.nonce.clone(),
            error_detail,
            ..Default::default()
        };
        let _ = tx.send(reply).await;
        for delta in state.resubscribe() {
            let Some(ty) = TypeUrl::parse(&delta.type_url) else {
                continue;
            };
            let req = DiscoveryRequest {
                version_info: accepted.get(&ty).cloned().unwrap_or_default(),
                resource_names: state.subscribed_names(ty),
                type_url: delta.type_url,
                response_nonce: nonces.get(&ty).cloned().unwrap_or_default(),
                ..Default::default()
            };
            let _ = tx.send(req).await;
        }
        shared.tls.set_named(state.secrets());
        shared.publish(state.config(), state.complete());
    }
    Err(StreamError::Closed)
}

/// A resource's name, read from the resource itself (state-of-the-world responses carry no
/// names); empty when it does not decode, which the conversion then reports.
fn resource_name(ty: TypeUrl, any: &envoy_types::pb::google::protobuf::Any) -> String {
    let bytes = any.value.as_slice();
    match ty {
        TypeUrl::Listener => PbListener::decode(bytes).map(|l| l.name),
        TypeUrl::Route => RouteConfiguration::decode(bytes).map(|r| r.name),
        TypeUrl::Cluster => PbCluster::decode(bytes).map(|c| c.name),
        TypeUrl::Endpoint => ClusterLoadAssignment::decode(bytes).map(|c| c.cluster_name),
        // Not served yet: refused in `State::apply`.
        TypeUrl::Secret => PbSecret::decode(bytes).map(|s| s.name),
    }
    .unwrap_or_default()
}

fn ack(resp: &DeltaDiscoveryResponse) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: resp.type_url.clone(),
        response_nonce: resp.nonce.clone(),
        ..Default::default()
    }
}

fn nack(resp: &DeltaDiscoveryResponse, message: String) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        error_detail: Some(rpc::Status {
            code: tonic::Code::InvalidArgument as i32,
            message,
            details: Vec::new(),
        }),
        ..ack(resp)
    }
}

/// Decodes and converts one resource.
fn convert<P: Message + Default, T>(
    r: &Resource,
    ty: TypeUrl,
    f: impl FnOnce(&P) -> Result<T, Invalid>,
) -> Result<T, Refused> {
    let (short, name) = (ty.short(), r.name.clone());
    let Some(any) = &r.resource else {
        return Err(Refused::NoBody { ty: short, name });
    };
    if any.type_url != ty.as_str() {
        return Err(Refused::WrongType {
            ty: short,
            name,
            got: any.type_url.clone(),
        });
    }
    let proto = P::decode(any.value.as_slice()).map_err(|e| Refused::Undecodable {
        ty: short,
        name,
        error: e.to_string(),
    })?;
    Ok(f(&proto)?)
}

fn hold<T>(map: &mut BTreeMap<String, Held<T>>, name: &str, version: &str, value: T) -> Arc<T> {
    let value = Arc::new(value);
    map.insert(
        name.to_string(),
        Held {
            version: version.to_string(),
            value: value.clone(),
        },
    );
    value
}

impl State {
    fn held_versions(&self, ty: TypeUrl) -> std::collections::HashMap<String, String> {
        fn v<T>(m: &BTreeMap<String, Held<T>>) -> std::collections::HashMap<String, String> {
            m.iter()
                .map(|(k, h)| (k.clone(), h.version.clone()))
                .collect()
        }
        match ty {
            TypeUrl::Listener => v(&self.listeners),
            TypeUrl::Route => v(&self.routes),
            TypeUrl::Cluster => v(&self.clusters),
            TypeUrl::Endpoint => v(&self.endpoints),
            TypeUrl::Secret => v(&self.secrets),
        }
    }

    /// What a new stream asks for, in order: clusters and listeners (wildcard), then the
    /// endpoints and routes already subscribed to.
    fn opening(&self) -> Vec<(TypeUrl, Vec<String>)> {
        [
            TypeUrl::Cluster,
            TypeUrl::Listener,
            TypeUrl::Endpoint,
            TypeUrl::Route,
            TypeUrl::Secret,
        ]
        .into_iter()
        .map(|ty| (ty, self.subscribed_names(ty)))
        .filter(|(ty, names)| {
            matches!(ty, TypeUrl::Cluster | TypeUrl::Listener) || !names.is_empty()
        })
        .collect()
    }

    fn subscribed_names(&self, ty: TypeUrl) -> Vec<String> {
        self.subscribed
            .get(&ty)
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }

    /// A state-of-the-world response in the Delta shape, each resource named from its body with
    /// the response's version, and the names it removes: for clusters and listeners, what is
    /// held but absent (for endpoints and routes absence means nothing: unsubscribing removes
    /// them).
    fn as_delta(
        &self,
        ty: TypeUrl,
        resp: &DiscoveryResponse,
    ) -> (DeltaDiscoveryResponse, Vec<String>) {
        let resources: Vec<Resource> = resp
            .resources
            .iter()
            .map(|any| Resource {
                name: resource_name(ty, any),
                version: resp.version_info.clone(),
                resource: Some(any.clone()),
                ..Default::default()
            })
            .collect();
        let removed = match ty {
            TypeUrl::Cluster | TypeUrl::Listener => {
                let present: BTreeSet<&str> = resources.iter().map(|r| r.name.as_str()).collect();
                self.held_versions(ty)
                    .into_keys()
                    .filter(|name| !present.contains(name.as_str()))
                    .collect()
            }
            TypeUrl::Endpoint | TypeUrl::Route | TypeUrl::Secret => Vec::new(),
        };
        let delta = DeltaDiscoveryResponse {
            system_version_info: resp.version_info.clone(),
            resources,
            type_url: resp.type_url.clone(),
            nonce: resp.nonce.clone(),
            ..Default::default()
        };
        (delta, removed)
    }

    /// Applies one response: accepts each valid resource and each removal, and updates the
    /// config's table of that type; returns the reasons for the resources refused (which keep
    /// their last good version, if any).
    pub(crate) fn apply(&mut self, ty: TypeUrl, resp: &DeltaDiscoveryResponse) -> Vec<Refused> {
        let mut errors = Vec::new();
        for r in &resp.resources {
            let result = match ty {
                TypeUrl::Listener => {
                    convert(r, ty, |p: &PbListener| Listener::try_from(p)).map(|l| {
                        let l = hold(&mut self.listeners, &r.name, &r.version, l);
                        self.config.listeners.insert(r.name.clone(), l);
                    })
                }
                TypeUrl::Route => convert(r, ty, |p: &RouteConfiguration| RouteConfig::try_from(p))
                    .map(|rc| {
                        let rc = hold(&mut self.routes, &r.name, &r.version, rc);
                        self.config.routes.insert(r.name.clone(), rc);
                    }),
                TypeUrl::Cluster => convert(r, ty, |p: &PbCluster| Cluster::try_from(p)).map(|c| {
                    self.forget_eds_user(&r.name);
                    if let Discovery::Eds(service) = &c.discovery {
                        self.eds_users
                            .entry(service.clone())
                            .or_default()
                            .insert(r.name.clone());
                    }
                    hold(&mut self.clusters, &r.name, &r.version, c);
                    self.publish_cluster(&r.name);
                }),
                TypeUrl::Endpoint => convert(r, ty, |p: &ClusterLoadAssignment| {
                    crate::config::cluster::endpoints(p)
                })
                .map(|e| {
                    hold(&mut self.endpoints, &r.name, &r.version, e);
                    self.publish_users_of(&r.name);
                }),
                TypeUrl::Secret => {
                    convert(r, ty, |p: &PbSecret| SecretValue::try_from(p)).map(|v| {
                        hold(&mut self.secrets, &r.name, &r.version, v);
                    })
                }
            };
            if let Err(e) = result {
                errors.push(e);
            }
            self.answered.entry(ty).or_default().insert(r.name.clone());
        }
        for name in &resp.removed_resources {
            match ty {
                TypeUrl::Listener => {
                    self.listeners.remove(name);
                    self.config.listeners.remove(name);
                }
                TypeUrl::Route => {
                    self.routes.remove(name);
                    self.config.routes.remove(name);
                }
                TypeUrl::Cluster => {
                    self.forget_eds_user(name);
                    self.clusters.remove(name);
                    self.config.clusters.remove(name);
                }
                TypeUrl::Endpoint => {
                    self.endpoints.remove(name);
                    self.publish_users_of(name);
                }
                TypeUrl::Secret => drop(self.secrets.remove(name)),
            }
            self.answered.entry(ty).or_default().insert(name.clone());
        }
        self.versions.insert(ty, resp.system_version_info.clone());
        self.config.versions = self
            .versions
            .iter()
            .map(|(ty, v)| (ty.short().to_string(), v.clone()))
            .collect();
        errors
    }

    /// Stops counting cluster `name` as a user of its EDS service (it changes or goes).
    fn forget_eds_user(&mut self, name: &str) {
        let Some(Discovery::Eds(service)) = self.clusters.get(name).map(|c| &c.value.discovery)
        else {
            return;
        };
        if let Some(users) = self.eds_users.get_mut(service) {
            users.remove(name);
            if users.is_empty() {
                self.eds_users.remove(service);
            }
        }
    }

    /// Puts cluster `name` in the config as held, with its EDS endpoints filled in.
    fn publish_cluster(&mut self, name: &str) {
        let Some(held) = self.clusters.get(name) else {
            return;
        };
        let c = match &held.value.discovery {
            Discovery::Eds(service) => {
                let mut c = Cluster::clone(&held.value);
                c.endpoints = self
                    .endpoints
                    .get(service)
                    .map(|e| e.value.as_ref().clone())
                    .unwrap_or_default();
                Arc::new(c)
            }
            _ => held.value.clone(),
        };
        self.config.clusters.insert(name.to_string(), c);
    }

    /// Puts again in the config the clusters that take their endpoints from EDS `service`.
    fn publish_users_of(&mut self, service: &str) {
        let users: Vec<String> = self
            .eds_users
            .get(service)
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        for name in users {
            self.publish_cluster(&name);
        }
    }

    /// The EDS and RDS names the current clusters and listeners need.
    fn wanted(&self, ty: TypeUrl) -> BTreeSet<String> {
        match ty {
            TypeUrl::Endpoint => self
                .clusters
                .values()
                .filter_map(|c| match &c.value.discovery {
                    Discovery::Eds(name) => Some(name.clone()),
                    _ => None,
                })
                .collect(),
            TypeUrl::Route => self
                .listeners
                .values()
                .flat_map(|l| l.value.http_filters())
                .filter_map(|h| match &h.routes {
                    RouteSource::Rds(name) => Some(name.clone()),
                    RouteSource::Inline(_) => None,
                })
                .collect(),
            TypeUrl::Secret => {
                let listeners = self.listeners.values().flat_map(|l| {
                    l.value
                        .tls_contexts()
                        .map(|t| &t.common)
                        .collect::<Vec<_>>()
                });
                let clusters = self.clusters.values().flat_map(|c| {
                    c.value
                        .tls
                        .contexts()
                        .into_iter()
                        .map(|t| &t.common)
                        .collect::<Vec<_>>()
                });
                listeners
                    .chain(clusters)
                    .flat_map(|c| c.ads_secrets())
                    .map(str::to_string)
                    .collect()
            }
            TypeUrl::Cluster | TypeUrl::Listener => BTreeSet::new(),
        }
    }

    /// The secrets received, by name.
    pub(crate) fn secrets(&self) -> BTreeMap<String, SecretValue> {
        self.secrets
            .iter()
            .map(|(k, h)| (k.clone(), SecretValue::clone(&h.value)))
            .collect()
    }

    /// Subscription changes to send, and drops what is no longer wanted.
    pub(crate) fn resubscribe(&mut self) -> Vec<DeltaDiscoveryRequest> {
        let mut out = Vec::new();
        for ty in [TypeUrl::Endpoint, TypeUrl::Route, TypeUrl::Secret] {
            let wanted = self.wanted(ty);
            let have = self.subscribed.entry(ty).or_default();
            let add: Vec<String> = wanted.difference(have).cloned().collect();
            let drop_: Vec<String> = have.difference(&wanted).cloned().collect();
            if add.is_empty() && drop_.is_empty() {
                continue;
            }
            for name in &drop_ {
                match ty {
                    // No cluster uses these endpoints any more.
                    TypeUrl::Endpoint => drop(self.endpoints.remove(name)),
                    TypeUrl::Secret => drop(self.secrets.remove(name)),
                    _ => {
                        self.routes.remove(name);
                        self.config.routes.remove(name);
                    }
                }
                self.answered.entry(ty).or_default().remove(name);
            }
            *have = wanted;
            out.push(DeltaDiscoveryRequest {
                type_url: ty.as_str().to_string(),
                resource_names_subscribe: add,
                resource_names_unsubscribe: drop_,
                ..Default::default()
            });
        }
        out
    }

    /// Whether the first CDS and LDS arrived and every EDS and RDS name was answered: Envoy's
    /// "initialized".
    pub(crate) fn complete(&self) -> bool {
        let got = |ty| self.versions.contains_key(&ty);
        got(TypeUrl::Cluster)
            && got(TypeUrl::Listener)
            && [TypeUrl::Endpoint, TypeUrl::Route].into_iter().all(|ty| {
                let answered = self.answered.get(&ty);
                self.wanted(ty)
                    .iter()
                    .all(|n| answered.is_some_and(|a| a.contains(n)))
            })
    }

    /// The config to publish: clusters with their endpoints filled in. A clone of the tables
    /// (shared, not copied).
    pub(crate) fn config(&self) -> Config {
        self.config.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    mod sotw_only {
        //! A control plane that has no Delta ADS: the client falls back to state of the world,
        //! follows subscriptions, ACKs with versions and nonces, removes clusters a response
        //! leaves out, and NACKs a bad response with the last version it accepted.

        use std::sync::Mutex;

        use envoy_types::pb::envoy::config::cluster::v3::cluster::{
            ClusterDiscoveryType, DiscoveryType, EdsClusterConfig,
        };
        use envoy_types::pb::envoy::config::core::v3::{
            Address, SocketAddress, address, socket_address,
        };
        use envoy_types::pb::envoy::config::endpoint::v3::{
            Endpoint as PbEndpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
        };
        use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
            AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
        };
        use envoy_types::pb::google::protobuf::Any;
        use tonic::{Request, Response, Status, Streaming};

        use super::*;

        #[derive(Clone, Default)]
        struct SotwOnly {
            requests: Arc<Mutex<Vec<DiscoveryRequest>>>,
            delta_calls: Arc<Mutex<u32>>,
        }

        fn any<M: Message>(ty: TypeUrl, m: &M) -> Any {
            Any {
                type_url: ty.as_str().into(),
                value: m.encode_to_vec(),
            }
        }

        fn eds_cluster(name: &str) -> Any {
            any(
                TypeUrl::Cluster,
                &PbCluster {
                    name: name.into(),
                    cluster_discovery_type: Some(ClusterDiscoveryType::Type(
                        DiscoveryType::Eds as i32,
                    )),
                    eds_cluster_config: Some(EdsClusterConfig {
                        service_name: name.into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )
        }

        fn assignment(name: &str, port: u32) -> Any {
            let address = Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: "127.0.0.1".into(),
                    port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
                    ..Default::default()
                })),
            };
            any(
                TypeUrl::Endpoint,
                &ClusterLoadAssignment {
                    cluster_name: name.into(),
                    endpoints: vec![LocalityLbEndpoints {
                        lb_endpoints: vec![LbEndpoint {
                            host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(
                                PbEndpoint {
                                    address: Some(address),
                                    ..Default::default()
                                },
                            )),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            )
        }

        fn response(
            ty: TypeUrl,
            version: &str,
            nonce: &str,
            resources: Vec<Any>,
        ) -> DiscoveryResponse {
            DiscoveryResponse {
                version_info: version.into(),
                resources,
                type_url: ty.as_str().into(),
                nonce: nonce.into(),
                ..Default::default()
            }
        }

        /// The script: CDS v1 (a, b); LDS v1 (none); EDS for what is asked; after the ACK of
        /// CDS v1, CDS v2 (b only); after its ACK, CDS v3 holding a listener (refused).
        fn answer(req: &DiscoveryRequest) -> Option<DiscoveryResponse> {
            let ty = TypeUrl::parse(&req.type_url)?;
            let acked = req.error_detail.is_none();
            match (ty, req.response_nonce.as_str()) {
                (TypeUrl::Cluster, "") => Some(response(
                    ty,
                    "1",
                    "c1",
                    vec![eds_cluster("a"), eds_cluster("b")],
                )),
                (TypeUrl::Cluster, "c1") if acked => {
                    Some(response(ty, "2", "c2", vec![eds_cluster("b")]))
                }
                (TypeUrl::Cluster, "c2") if acked => Some(response(
                    ty,
                    "3",
                    "c3",
                    vec![any(TypeUrl::Listener, &PbListener::default())],
                )),
                (TypeUrl::Listener, "") => Some(response(ty, "1", "l1", Vec::new())),
                (TypeUrl::Endpoint, "") => Some(response(
                    ty,
                    "1",
                    "e1",
                    req.resource_names
                        .iter()
                        .map(|n| assignment(n, 9000))
                        .collect(),
                )),
                _ => None,
            }
        }

        #[tonic::async_trait]
        impl AggregatedDiscoveryService for SotwOnly {
            type StreamAggregatedResourcesStream =
                ReceiverStream<Result<DiscoveryResponse, Status>>;
            type DeltaAggregatedResourcesStream =
                ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

            async fn stream_aggregated_resources(
                &self,
                request: Request<Streaming<DiscoveryRequest>>,
            ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
                let mut incoming = request.into_inner();
                let (tx, rx) = mpsc::channel(16);
                let requests = self.requests.clone();
                tokio::spawn(async move {
                    while let Ok(Some(req)) = incoming.message().await {
                        let reply = answer(&req);
                        requests.lock().unwrap().push(req);
                        if let Some(resp) = reply
                            && tx.send(Ok(resp)).await.is_err()
                        {
                            break;
                        }
                    }
                });
                Ok(Response::new(ReceiverStream::new(rx)))
            }

            async fn delta_aggregated_resources(
                &self,
                _request: Request<Streaming<DeltaDiscoveryRequest>>,
            ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
                *self.delta_calls.lock().unwrap() += 1;
                Err(Status::unimplemented(
                    "this control plane serves state of the world only",
                ))
            }
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn falls_back_to_state_of_the_world_and_follows_it() {
            let server = SotwOnly::default();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let svc = AggregatedDiscoveryServiceServer::new(server.clone());
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(svc)
                    .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
            );
            let shared = crate::Shared::new(crate::HttpLimits::default(), None);
            let node = Node {
                id: "sidecar~127.0.0.1~test.default~default.svc.cluster.local".into(),
                ..Default::default()
            };
            let client = tokio::spawn(run(shared.clone(), node, vec![addr], Api::Delta));

            // Wait for the NACK of CDS v3: the end of the script.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            let nack = loop {
                let found = server
                    .requests
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|r| r.response_nonce == "c3")
                    .cloned();
                if let Some(r) = found {
                    break r;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no answer to CDS v3; requests: {:#?}",
                    server.requests.lock().unwrap()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            client.abort();
            assert_eq!(*server.delta_calls.lock().unwrap(), 1, "Delta tried once");
            assert_eq!(
                nack.version_info, "2",
                "a NACK names the last version accepted"
            );
            let reason = nack.error_detail.expect("CDS v3 is refused").message;
            assert!(reason.contains("in a CDS response"), "{reason}");

            let requests = server.requests.lock().unwrap().clone();
            assert!(
                requests[0].node.is_some(),
                "the first request carries the node"
            );
            let ack1 = requests.iter().find(|r| r.response_nonce == "c1").unwrap();
            assert_eq!(
                (ack1.version_info.as_str(), ack1.error_detail.is_none()),
                ("1", true)
            );
            let eds: Vec<Vec<String>> = requests
                .iter()
                .filter(|r| r.type_url == TypeUrl::Endpoint.as_str())
                .map(|r| r.resource_names.clone())
                .collect();
            assert_eq!(eds.first(), Some(&vec!["a".to_string(), "b".to_string()]));
            assert_eq!(
                eds.last(),
                Some(&vec!["b".to_string()]),
                "a is unsubscribed"
            );

            // The last good config: b with its endpoint; a removed by CDS v2.
            assert!(shared.is_ready());
            let config = shared.config.load();
            assert_eq!(config.clusters.keys().collect::<Vec<_>>(), ["b"]);
            assert_eq!(config.clusters["b"].endpoints[0].port, 9000);
            assert_eq!(
                config.versions["CDS"], "3",
                "the response's version is recorded"
            );
        }
    }

    mod apply {
        //! State::apply: NACK reasons and the tables each response rebuilds.

        use envoy_types::pb::envoy::config::cluster::v3::cluster::{
            ClusterDiscoveryType, DiscoveryType, EdsClusterConfig,
        };
        use envoy_types::pb::envoy::config::core::v3::{
            Address, SocketAddress, address, socket_address,
        };
        use envoy_types::pb::envoy::config::endpoint::v3::{
            Endpoint as PbEndpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
        };
        use envoy_types::pb::envoy::config::route::v3 as rt;
        use envoy_types::pb::google::protobuf::Any;

        use super::*;

        fn resource<M: Message>(ty: TypeUrl, name: &str, m: &M) -> Resource {
            Resource {
                name: name.into(),
                version: "1".into(),
                resource: Some(Any {
                    type_url: ty.as_str().into(),
                    value: m.encode_to_vec(),
                }),
                ..Default::default()
            }
        }

        fn response(ty: TypeUrl, resources: Vec<Resource>) -> DeltaDiscoveryResponse {
            DeltaDiscoveryResponse {
                system_version_info: "1".into(),
                type_url: ty.as_str().into(),
                resources,
                ..Default::default()
            }
        }

        fn eds_cluster(name: &str, service: &str) -> Resource {
            resource(
                TypeUrl::Cluster,
                name,
                &PbCluster {
                    name: name.into(),
                    cluster_discovery_type: Some(ClusterDiscoveryType::Type(
                        DiscoveryType::Eds as i32,
                    )),
                    eds_cluster_config: Some(EdsClusterConfig {
                        service_name: service.into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )
        }

        fn assignment(name: &str, port: u32) -> Resource {
            let address = Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: "127.0.0.1".into(),
                    port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
                    ..Default::default()
                })),
            };
            resource(
                TypeUrl::Endpoint,
                name,
                &ClusterLoadAssignment {
                    cluster_name: name.into(),
                    endpoints: vec![LocalityLbEndpoints {
                        lb_endpoints: vec![LbEndpoint {
                            host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(
                                PbEndpoint {
                                    address: Some(address),
                                    ..Default::default()
                                },
                            )),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            )
        }

        fn route_config(name: &str, retry_on: &str) -> Resource {
            let route = rt::Route {
                r#match: Some(rt::RouteMatch {
                    path_specifier: Some(rt::route_match::PathSpecifier::Prefix("/".into())),
                    ..Default::default()
                }),
                action: Some(rt::route::Action::Route(rt::RouteAction {
                    cluster_specifier: Some(rt::route_action::ClusterSpecifier::Cluster(
                        "c".into(),
                    )),
                    retry_policy: Some(rt::RetryPolicy {
                        retry_on: retry_on.into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                })),
                ..Default::default()
            };
            let vh = |name: &str, routes: Vec<rt::Route>| rt::VirtualHost {
                name: name.into(),
                domains: vec![name.into()],
                routes,
                ..Default::default()
            };
            resource(
                TypeUrl::Route,
                name,
                &RouteConfiguration {
                    name: name.into(),
                    virtual_hosts: vec![
                        vh("a:80", vec![]),
                        vh("b:80", vec![route.clone(), route.clone()]),
                        vh("reviews:9080", vec![route.clone(), route]),
                    ],
                    ..Default::default()
                },
            )
        }

        #[test]
        fn a_nack_names_the_resource_and_the_path_of_a_nested_refusal() {
            let mut state = State::default();
            let errors = state.apply(
                TypeUrl::Route,
                &response(
                    TypeUrl::Route,
                    vec![
                        route_config("good", "5xx,reset-before-request"),
                        route_config("15080", "5xx,retry-on-a-whim"),
                    ],
                ),
            );
            let [Refused::Invalid(invalid)] = errors.as_slice() else {
                panic!("one refusal expected: {errors:?}")
            };
            assert_eq!(invalid.name, "15080");
            assert_eq!(
                invalid.path.to_string(),
                "virtual_hosts[b:80].routes[0].route.retry_policy.retry_on"
            );
            assert_eq!(
                nack_message(&errors),
                "route configuration \"15080\": virtual_hosts[b:80].routes[0].route.retry_policy.retry_on \"retry-on-a-whim\" is not supported by strait-proxy"
            );
            // The valid one of the same response is in.
            assert_eq!(state.config().routes.keys().collect::<Vec<_>>(), ["good"]);
            // A body of another type is refused by type, before any conversion.
            let errors = state.apply(
                TypeUrl::Cluster,
                &response(TypeUrl::Cluster, vec![assignment("x", 1)]),
            );
            assert_eq!(
                nack_message(&errors),
                "CDS \"x\": a resource of type type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment in a CDS response"
            );
        }

        #[test]
        fn each_response_rebuilds_only_its_own_table_and_eds_only_its_clusters() {
            let mut state = State::default();
            state.apply(
                TypeUrl::Cluster,
                &response(
                    TypeUrl::Cluster,
                    vec![
                        eds_cluster("a", "svc-a"),
                        eds_cluster("a2", "svc-a"),
                        eds_cluster("b", "svc-b"),
                    ],
                ),
            );
            state.apply(
                TypeUrl::Endpoint,
                &response(
                    TypeUrl::Endpoint,
                    vec![assignment("svc-a", 1000), assignment("svc-b", 2000)],
                ),
            );
            state.apply(
                TypeUrl::Route,
                &response(TypeUrl::Route, vec![route_config("r", "5xx")]),
            );
            let before = state.config();
            assert_eq!(before.clusters["a"].endpoints[0].port, 1000);
            assert_eq!(before.clusters["a2"].endpoints[0].port, 1000);

            // An EDS update for svc-a: the clusters table changes, only a and a2 in it.
            state.apply(
                TypeUrl::Endpoint,
                &response(TypeUrl::Endpoint, vec![assignment("svc-a", 1001)]),
            );
            let after = state.config();
            assert!(!after.clusters.same(&before.clusters));
            assert_eq!(after.clusters["a"].endpoints[0].port, 1001);
            assert_eq!(after.clusters["a2"].endpoints[0].port, 1001);
            assert!(
                Arc::ptr_eq(&after.clusters["b"], &before.clusters["b"]),
                "b does not use svc-a: the same cluster, not a rebuilt one"
            );
            assert!(after.routes.same(&before.routes), "routes are untouched");
            assert!(after.listeners.same(&before.listeners));

            // A route update leaves the clusters table as it was.
            state.apply(
                TypeUrl::Route,
                &response(TypeUrl::Route, vec![route_config("r2", "5xx")]),
            );
            let later = state.config();
            assert!(later.clusters.same(&after.clusters));
            assert_eq!(later.routes.len(), 2);

            // A cluster that moves to another service takes that one's endpoints; removing
            // svc-b's assignment empties only the clusters using it.
            state.apply(
                TypeUrl::Cluster,
                &response(TypeUrl::Cluster, vec![eds_cluster("a2", "svc-b")]),
            );
            assert_eq!(state.config().clusters["a2"].endpoints[0].port, 2000);
            state.apply(
                TypeUrl::Endpoint,
                &DeltaDiscoveryResponse {
                    removed_resources: vec!["svc-b".into()],
                    ..response(TypeUrl::Endpoint, vec![])
                },
            );
            let config = state.config();
            assert!(config.clusters["a2"].endpoints.is_empty());
            assert!(config.clusters["b"].endpoints.is_empty());
            assert_eq!(config.clusters["a"].endpoints[0].port, 1001);
        }
    }

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        for failures in 1..40 {
            let d = backoff(failures);
            let cap = BACKOFF_BASE
                .saturating_mul(1 << failures.clamp(1, 16).saturating_sub(1))
                .min(BACKOFF_MAX);
            assert!(d >= cap / 2 && d <= cap, "{failures}: {d:?} vs {cap:?}");
        }
        assert!(backoff(1) <= BACKOFF_BASE);
        assert!(backoff(30) >= BACKOFF_MAX / 2);
    }
}
