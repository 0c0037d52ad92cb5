//! The xDS client: one Delta ADS stream to the control plane. It subscribes to clusters and
//! listeners (wildcard), then to the endpoints of EDS clusters and the route configurations
//! listeners name; converts each resource on arrival (off the data path), ACKs or NACKs each
//! response with its nonce, and publishes the whole config in one swap. When the control plane
//! is unreachable it reconnects with exponential backoff and jitter, serving the last good config
//! meanwhile, and tells the control plane what it already has so that nothing is resent.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster as PbCluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener as PbListener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use envoy_types::pb::google::rpc;
use prost::Message;
use strait_xds::TypeUrl;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::Shared;
use crate::config::{Cluster, Config, Discovery, Endpoint, Listener, RouteConfig, RouteSource};

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
}

/// A resource as last accepted, with the version the control plane gave it.
#[derive(Debug)]
struct Held<T> {
    version: String,
    value: Arc<T>,
}

/// Everything the client has accepted: kept across reconnects.
#[derive(Debug, Default)]
pub(crate) struct State {
    listeners: BTreeMap<String, Held<Listener>>,
    routes: BTreeMap<String, Held<RouteConfig>>,
    clusters: BTreeMap<String, Held<Cluster>>,
    endpoints: BTreeMap<String, Held<Vec<Endpoint>>>,
    /// Names subscribed to, for EDS and RDS.
    subscribed: BTreeMap<TypeUrl, BTreeSet<String>>,
    /// Names the control plane answered for (with the resource, or as removed).
    answered: BTreeMap<TypeUrl, BTreeSet<String>>,
    /// The system version of each type's last response.
    versions: BTreeMap<TypeUrl, String>,
}

/// Runs the client forever.
pub(crate) async fn run(shared: Arc<Shared>, node: Node, addr: SocketAddr) {
    let mut state = State::default();
    let mut failures: u32 = 0;
    loop {
        let mut got_response = false;
        let result = stream(&shared, &node, addr, &mut state, &mut got_response).await;
        if got_response {
            failures = 0;
        }
        let err = result.err().unwrap_or(StreamError::Closed);
        failures = failures.saturating_add(1);
        let delay = backoff(failures);
        tracing::warn!(error = %err, retry_in = ?delay, "xDS stream down; serving the last good config");
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

async fn stream(
    shared: &Shared,
    node: &Node,
    addr: SocketAddr,
    state: &mut State,
    got_response: &mut bool,
) -> Result<(), StreamError> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("a socket address makes a valid URI")
        .connect_timeout(CONNECT_TIMEOUT)
        .connect()
        .await
        .map_err(|source| StreamError::Connect { addr, source })?;
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let (tx, rx) = mpsc::channel(16);
    // The first request carries the node; wildcard CDS and LDS, then what we already subscribed
    // to, each with the versions we hold.
    let mut first = true;
    for ty in [
        TypeUrl::Cluster,
        TypeUrl::Listener,
        TypeUrl::Endpoint,
        TypeUrl::Route,
    ] {
        let names: Vec<String> = state
            .subscribed
            .get(&ty)
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        if matches!(ty, TypeUrl::Endpoint | TypeUrl::Route) && names.is_empty() {
            continue;
        }
        let req = DeltaDiscoveryRequest {
            node: first.then(|| node.clone()),
            type_url: ty.as_str().to_string(),
            resource_names_subscribe: names,
            initial_resource_versions: state.held_versions(ty),
            ..Default::default()
        };
        first = false;
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
            let detail = errors.join("; ");
            tracing::warn!(ty = ty.short(), reason = %detail, "NACK");
            nack(&resp, detail)
        };
        let _ = tx.send(reply).await;
        for req in state.resubscribe() {
            let _ = tx.send(req).await;
        }
        shared.publish(state.config(), state.complete());
    }
    Err(StreamError::Closed)
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
    any: &envoy_types::pb::google::protobuf::Any,
    ty: TypeUrl,
    f: impl FnOnce(&P) -> Result<T, String>,
) -> Result<T, String> {
    if any.type_url != ty.as_str() {
        return Err(format!(
            "a resource of type {} in a {} response",
            any.type_url,
            ty.short()
        ));
    }
    let proto = P::decode(any.value.as_slice()).map_err(|e| format!("does not decode: {e}"))?;
    f(&proto)
}

fn hold<T>(map: &mut BTreeMap<String, Held<T>>, name: &str, version: &str, value: T) {
    map.insert(
        name.to_string(),
        Held {
            version: version.to_string(),
            value: Arc::new(value),
        },
    );
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
        }
    }

    /// Applies one response: accepts each valid resource and each removal; returns the reasons
    /// for the resources refused (which keep their last good version, if any).
    pub(crate) fn apply(&mut self, ty: TypeUrl, resp: &DeltaDiscoveryResponse) -> Vec<String> {
        let mut errors = Vec::new();
        for r in &resp.resources {
            let Some(any) = &r.resource else {
                errors.push(format!("{} {:?} has no resource body", ty.short(), r.name));
                continue;
            };
            let result = match ty {
                TypeUrl::Listener => convert(any, ty, |p: &PbListener| {
                    Listener::try_from(p).map_err(|e| e.to_string())
                })
                .map(|l| hold(&mut self.listeners, &r.name, &r.version, l)),
                TypeUrl::Route => convert(any, ty, |p: &RouteConfiguration| {
                    RouteConfig::try_from(p).map_err(|e| e.to_string())
                })
                .map(|rc| hold(&mut self.routes, &r.name, &r.version, rc)),
                TypeUrl::Cluster => convert(any, ty, |p: &PbCluster| {
                    Cluster::try_from(p).map_err(|e| e.to_string())
                })
                .map(|c| hold(&mut self.clusters, &r.name, &r.version, c)),
                TypeUrl::Endpoint => convert(any, ty, |p: &ClusterLoadAssignment| {
                    crate::config::cluster::endpoints(p).map_err(|e| e.to_string())
                })
                .map(|e| hold(&mut self.endpoints, &r.name, &r.version, e)),
            };
            match result {
                Ok(()) => {}
                Err(e) if e.contains(&format!("{:?}", r.name)) => errors.push(e),
                Err(e) => errors.push(format!("{} {:?}: {e}", ty.short(), r.name)),
            }
            self.answered.entry(ty).or_default().insert(r.name.clone());
        }
        for name in &resp.removed_resources {
            match ty {
                TypeUrl::Listener => drop(self.listeners.remove(name)),
                TypeUrl::Route => drop(self.routes.remove(name)),
                TypeUrl::Cluster => drop(self.clusters.remove(name)),
                TypeUrl::Endpoint => drop(self.endpoints.remove(name)),
            }
            self.answered.entry(ty).or_default().insert(name.clone());
        }
        self.versions.insert(ty, resp.system_version_info.clone());
        errors
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
            TypeUrl::Cluster | TypeUrl::Listener => BTreeSet::new(),
        }
    }

    /// Subscription changes to send, and drops what is no longer wanted.
    pub(crate) fn resubscribe(&mut self) -> Vec<DeltaDiscoveryRequest> {
        let mut out = Vec::new();
        for ty in [TypeUrl::Endpoint, TypeUrl::Route] {
            let wanted = self.wanted(ty);
            let have = self.subscribed.entry(ty).or_default();
            let add: Vec<String> = wanted.difference(have).cloned().collect();
            let drop_: Vec<String> = have.difference(&wanted).cloned().collect();
            if add.is_empty() && drop_.is_empty() {
                continue;
            }
            for name in &drop_ {
                match ty {
                    TypeUrl::Endpoint => drop(self.endpoints.remove(name)),
                    _ => drop(self.routes.remove(name)),
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

    /// The config to publish: clusters with their endpoints filled in.
    pub(crate) fn config(&self) -> Config {
        let clusters = self
            .clusters
            .iter()
            .map(|(name, held)| {
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
                (name.clone(), c)
            })
            .collect();
        Config {
            versions: self
                .versions
                .iter()
                .map(|(ty, v)| (ty.short().to_string(), v.clone()))
                .collect(),
            listeners: self
                .listeners
                .iter()
                .map(|(k, h)| (k.clone(), h.value.clone()))
                .collect(),
            routes: self
                .routes
                .iter()
                .map(|(k, h)| (k.clone(), h.value.clone()))
                .collect(),
            clusters,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
