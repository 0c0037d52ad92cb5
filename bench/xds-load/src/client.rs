//! One simulated sidecar: a Delta ADS stream that behaves like Envoy's as far as the control
//! plane can tell. It subscribes to clusters and listeners (wildcard), then to the endpoints of
//! every EDS cluster and the route configurations its listeners name, ACKs every response at
//! once, and on a broken stream reconnects with Envoy's jittered exponential backoff, telling the
//! server what it has (`initial_resource_versions`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use prost::Message;
use strait_xds_core::{CaptureMode, Proxy, ProxyRole, TypeUrl};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const HCM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

/// Envoy's xDS retry backoff: jittered exponential from 500 ms, at most 30 s.
const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// What a client has observed, shared with the driver.
#[derive(Debug, Default)]
pub struct Observed {
    /// Streams opened (1 after the first connect).
    pub streams: u64,
    pub connected: bool,
    /// When the current stream opened.
    pub stream_opened_at: Option<Instant>,
    /// When the current stream first had the full config (every subscribed type answered and
    /// every EDS and RDS name it needs received), measured when the ACK completing it was queued.
    pub synced_at: Option<Instant>,
    /// When each endpoint resource (by cluster name) last arrived.
    pub endpoints_at: HashMap<String, Instant>,
    /// Responses received, and their encoded bytes, over all streams.
    pub responses: u64,
    pub bytes: u64,
    /// Resources the client holds, by type (clusters, endpoints, listeners, routes).
    pub counts: [usize; 4],
    /// Why the last stream ended, if it did.
    pub last_error: Option<String>,
}

/// A simulated sidecar, driven by a task; dropping it ends the task (and its stream).
pub struct Client {
    pub index: usize,
    pub observed: Arc<Mutex<Observed>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The proxy a client presents: `sidecar~127.0.0.1~load-N.default~default.svc.cluster.local`,
/// captured by iptables (so it gets Istio's per-port outbound listeners).
pub fn proxy(index: usize) -> Proxy {
    let ip: IpAddr = [127, 0, 0, 1].into();
    let workload = format!("load-{index}");
    Proxy {
        id: Proxy::node_id(ProxyRole::Sidecar, ip, &workload, "default"),
        role: ProxyRole::Sidecar,
        ip,
        labels: [("app".to_string(), "load".to_string())].into(),
        workload,
        namespace: "default".to_string(),
        capture: CaptureMode::Iptables,
        service_account: "default".to_string(),
        app_address: None,
        mtls: false,
    }
}

impl Client {
    /// Starts client `index` against the ADS server at `xds` (`HOST:PORT`).
    pub fn start(index: usize, xds: String) -> Client {
        let observed = Arc::new(Mutex::new(Observed::default()));
        let task = tokio::spawn(run(index, xds, observed.clone()));
        Client {
            index,
            observed,
            task,
        }
    }
}

/// What the client holds, kept across streams as Envoy keeps its config.
#[derive(Default)]
struct Held {
    /// Resource versions by type index, by name.
    versions: [BTreeMap<String, String>; 4],
    /// EDS service name of each EDS cluster.
    eds_of: BTreeMap<String, String>,
    /// RDS names of each listener.
    rds_of: BTreeMap<String, Vec<String>>,
    /// Names subscribed to, for EDS and RDS.
    eds_sub: BTreeSet<String>,
    rds_sub: BTreeSet<String>,
    /// Subscribed names the server said it does not have.
    absent: [BTreeSet<String>; 4],
    /// Types answered on the current stream.
    answered: [bool; 4],
}

fn slot(ty: TypeUrl) -> usize {
    match ty {
        TypeUrl::Cluster => 0,
        TypeUrl::Endpoint => 1,
        TypeUrl::Listener => 2,
        TypeUrl::Route => 3,
        // Never subscribed to (simulated sidecars name no Secrets); shares the RDS slot.
        TypeUrl::Secret => 3,
    }
}

impl Held {
    fn synced(&self) -> bool {
        let complete = |ty: TypeUrl, sub: &BTreeSet<String>| {
            let s = slot(ty);
            sub.is_empty()
                || (self.answered[s]
                    && sub
                        .iter()
                        .all(|n| self.versions[s].contains_key(n) || self.absent[s].contains(n)))
        };
        self.answered[slot(TypeUrl::Cluster)]
            && self.answered[slot(TypeUrl::Listener)]
            && complete(TypeUrl::Endpoint, &self.eds_sub)
            && complete(TypeUrl::Route, &self.rds_sub)
    }

    /// The first requests of a stream: wildcard CDS and LDS, and on a reconnect the EDS and RDS
    /// names held, each with the versions held.
    fn opening(&self, node: &Node) -> Vec<DeltaDiscoveryRequest> {
        let mut out = Vec::new();
        for ty in TypeUrl::ALL {
            let names: Vec<String> = match ty {
                TypeUrl::Cluster | TypeUrl::Listener => Vec::new(),
                TypeUrl::Endpoint => self.eds_sub.iter().cloned().collect(),
                TypeUrl::Route => self.rds_sub.iter().cloned().collect(),
                TypeUrl::Secret => Vec::new(),
            };
            if names.is_empty()
                && matches!(ty, TypeUrl::Endpoint | TypeUrl::Route | TypeUrl::Secret)
            {
                continue;
            }
            out.push(DeltaDiscoveryRequest {
                node: out.is_empty().then(|| node.clone()),
                type_url: ty.as_str().to_string(),
                resource_names_subscribe: names,
                initial_resource_versions: self.versions[slot(ty)]
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                ..Default::default()
            });
        }
        out
    }

    /// Takes in a response; returns the ACK and any subscription changes it causes.
    fn apply(&mut self, ty: TypeUrl, r: &DeltaDiscoveryResponse) -> Vec<DeltaDiscoveryRequest> {
        let s = slot(ty);
        self.answered[s] = true;
        for res in &r.resources {
            self.versions[s].insert(res.name.clone(), res.version.clone());
            self.absent[s].remove(&res.name);
            let Some(any) = res.resource.as_ref() else {
                continue;
            };
            match ty {
                TypeUrl::Cluster => {
                    self.eds_of.remove(&res.name);
                    if let Ok(c) = Cluster::decode(any.value.as_slice())
                        && c.cluster_discovery_type
                            == Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32))
                    {
                        let service = c
                            .eds_cluster_config
                            .map(|e| e.service_name)
                            .filter(|n| !n.is_empty())
                            .unwrap_or(c.name);
                        self.eds_of.insert(res.name.clone(), service);
                    }
                }
                TypeUrl::Listener => {
                    let names = Listener::decode(any.value.as_slice())
                        .map(|l| rds_names(&l))
                        .unwrap_or_default();
                    self.rds_of.insert(res.name.clone(), names);
                }
                _ => {}
            }
        }
        for name in &r.removed_resources {
            if self.versions[s].remove(name).is_none() {
                self.absent[s].insert(name.clone());
            }
            match ty {
                TypeUrl::Cluster => {
                    self.eds_of.remove(name);
                }
                TypeUrl::Listener => {
                    self.rds_of.remove(name);
                }
                _ => {}
            }
        }
        let mut out = vec![DeltaDiscoveryRequest {
            type_url: r.type_url.clone(),
            response_nonce: r.nonce.clone(),
            ..Default::default()
        }];
        let (wanted, sub, target) = match ty {
            TypeUrl::Cluster => (
                self.eds_of.values().cloned().collect::<BTreeSet<_>>(),
                &mut self.eds_sub,
                TypeUrl::Endpoint,
            ),
            TypeUrl::Listener => (
                self.rds_of.values().flatten().cloned().collect(),
                &mut self.rds_sub,
                TypeUrl::Route,
            ),
            _ => return out,
        };
        let subscribe: Vec<String> = wanted.difference(sub).cloned().collect();
        let unsubscribe: Vec<String> = sub.difference(&wanted).cloned().collect();
        if !subscribe.is_empty() || !unsubscribe.is_empty() {
            for name in &unsubscribe {
                self.versions[slot(target)].remove(name);
                self.absent[slot(target)].remove(name);
            }
            *sub = wanted;
            out.push(DeltaDiscoveryRequest {
                type_url: target.as_str().to_string(),
                resource_names_subscribe: subscribe,
                resource_names_unsubscribe: unsubscribe,
                ..Default::default()
            });
        }
        out
    }
}

/// The route configuration names a listener's HTTP connection managers load over RDS.
fn rds_names(listener: &Listener) -> Vec<String> {
    listener
        .filter_chains
        .iter()
        .chain(listener.default_filter_chain.iter())
        .flat_map(|chain| chain.filters.iter())
        .filter_map(|f| match &f.config_type {
            Some(ConfigType::TypedConfig(any)) if any.type_url == HCM_TYPE => {
                HttpConnectionManager::decode(any.value.as_slice()).ok()
            }
            _ => None,
        })
        .filter_map(|hcm| match hcm.route_specifier {
            Some(RouteSpecifier::Rds(rds)) => Some(rds.route_config_name),
            _ => None,
        })
        .collect()
}

async fn run(index: usize, xds: String, observed: Arc<Mutex<Observed>>) {
    let proxy = proxy(index);
    let node = Node {
        id: proxy.id.clone(),
        cluster: "load.default".to_string(),
        metadata: Some(proxy.node_metadata()),
        ..Default::default()
    };
    let mut held = Held::default();
    let mut rng = (index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut failures = 0u32;
    loop {
        let got_response = stream(&xds, &node, &mut held, &observed).await;
        {
            let mut o = observed.lock().expect("client lock");
            o.connected = false;
            o.last_error = Some(got_response.1);
        }
        if got_response.0 {
            failures = 0;
        }
        failures = failures.saturating_add(1);
        // Full jitter, as Envoy's JitteredExponentialBackOffStrategy.
        let ceiling = BACKOFF_BASE
            .saturating_mul(1 << failures.min(16).saturating_sub(1))
            .min(BACKOFF_MAX);
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let wait = ceiling.mul_f64((rng % 10_000) as f64 / 10_000.0);
        tokio::time::sleep(wait).await;
    }
}

/// One stream, until it breaks: whether any response arrived, and why it ended.
async fn stream(
    xds: &str,
    node: &Node,
    held: &mut Held,
    observed: &Mutex<Observed>,
) -> (bool, String) {
    let endpoint = match tonic::transport::Endpoint::from_shared(format!("http://{xds}")) {
        Ok(e) => e.connect_timeout(Duration::from_secs(2)),
        Err(e) => return (false, format!("bad xDS address {xds}: {e}")),
    };
    let channel = match endpoint.connect().await {
        Ok(c) => c,
        Err(e) => return (false, format!("connecting to {xds}: {e}")),
    };
    let mut client = AggregatedDiscoveryServiceClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    let (tx, rx) = mpsc::channel(64);
    held.answered = [false; 4];
    for request in held.opening(node) {
        let _ = tx.send(request).await;
    }
    let mut responses = match client
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(status) => return (false, format!("opening the stream: {status}")),
    };
    {
        let mut o = observed.lock().expect("client lock");
        o.streams += 1;
        o.connected = true;
        o.stream_opened_at = Some(Instant::now());
        o.synced_at = None;
    }
    let mut any = false;
    let mut was_synced = false;
    loop {
        let response = match responses.message().await {
            Ok(Some(r)) => r,
            Ok(None) => return (any, "the server ended the stream".to_string()),
            Err(status) => return (any, format!("stream failed: {status}")),
        };
        any = true;
        let Some(ty) = TypeUrl::parse(&response.type_url) else {
            continue;
        };
        let bytes = response.encoded_len() as u64;
        let requests = held.apply(ty, &response);
        for request in requests {
            if tx.send(request).await.is_err() {
                return (any, "the request stream closed".to_string());
            }
        }
        let now = Instant::now();
        // Once synced, the stream stays so for the measurement (checking every name again on
        // every response would cost the load tool more than the server's work it measures).
        let synced = !was_synced && held.synced();
        was_synced |= synced;
        let mut o = observed.lock().expect("client lock");
        o.responses += 1;
        o.bytes += bytes;
        if ty == TypeUrl::Endpoint {
            for r in &response.resources {
                o.endpoints_at.insert(r.name.clone(), now);
            }
        }
        for t in TypeUrl::ALL {
            o.counts[slot(t)] = held.versions[slot(t)].len();
        }
        if synced && o.synced_at.is_none() {
            o.synced_at = Some(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::cluster::EdsClusterConfig;
    use envoy_types::pb::envoy::service::discovery::v3::Resource;
    use envoy_types::pb::google::protobuf::Any;

    fn response(
        ty: TypeUrl,
        resources: Vec<(String, Vec<u8>)>,
        removed: &[&str],
    ) -> DeltaDiscoveryResponse {
        DeltaDiscoveryResponse {
            type_url: ty.as_str().to_string(),
            nonce: "n".to_string(),
            resources: resources
                .into_iter()
                .map(|(name, value)| Resource {
                    name,
                    version: "v1".to_string(),
                    resource: Some(Any {
                        type_url: ty.as_str().to_string(),
                        value,
                    }),
                    ..Default::default()
                })
                .collect(),
            removed_resources: removed.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn eds_cluster(name: &str) -> (String, Vec<u8>) {
        let c = Cluster {
            name: name.to_string(),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
            eds_cluster_config: Some(EdsClusterConfig::default()),
            ..Default::default()
        };
        (name.to_string(), c.encode_to_vec())
    }

    #[test]
    fn subscribes_to_endpoints_as_clusters_come_and_go() {
        let mut held = Held::default();
        let out = held.apply(
            TypeUrl::Cluster,
            &response(
                TypeUrl::Cluster,
                vec![eds_cluster("a"), eds_cluster("b")],
                &[],
            ),
        );
        assert_eq!(out[0].response_nonce, "n");
        assert_eq!(out[1].type_url, TypeUrl::Endpoint.as_str());
        assert_eq!(out[1].resource_names_subscribe, ["a", "b"]);
        held.apply(TypeUrl::Listener, &response(TypeUrl::Listener, vec![], &[]));
        assert!(!held.synced(), "endpoints not there yet");
        held.apply(
            TypeUrl::Endpoint,
            &response(TypeUrl::Endpoint, vec![("a".into(), vec![])], &["b"]),
        );
        assert!(held.synced());
        let out = held.apply(
            TypeUrl::Cluster,
            &response(TypeUrl::Cluster, vec![], &["a"]),
        );
        assert_eq!(out[1].resource_names_unsubscribe, ["a"]);
        // A reconnect asks for what it holds, with versions.
        let opening = held.opening(&Node::default());
        assert_eq!(opening.len(), 3);
        assert!(opening[0].node.is_some() && opening[1].node.is_none());
        assert_eq!(opening[1].type_url, TypeUrl::Endpoint.as_str());
        assert_eq!(opening[1].resource_names_subscribe, ["b"]);
    }
}
