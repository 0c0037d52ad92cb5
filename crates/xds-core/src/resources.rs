//! The xDS resources a proxy gets.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;

/// The xDS resource types Strait serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TypeUrl {
    Cluster,
    Endpoint,
    Listener,
    Route,
    /// SDS over ADS: the certificates and CAs of Kubernetes Secrets (`kubernetes://NAME`).
    Secret,
}

impl TypeUrl {
    /// In the order Envoy needs them pushed: clusters before their endpoints, listeners before
    /// their routes, Secrets last (as Istio pushes them; a listener or cluster that names one
    /// waits for it).
    pub const ALL: [TypeUrl; 5] = [
        TypeUrl::Cluster,
        TypeUrl::Endpoint,
        TypeUrl::Listener,
        TypeUrl::Route,
        TypeUrl::Secret,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TypeUrl::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            TypeUrl::Endpoint => {
                "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
            }
            TypeUrl::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            TypeUrl::Route => "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
            TypeUrl::Secret => {
                "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
            }
        }
    }

    pub fn parse(url: &str) -> Option<TypeUrl> {
        TypeUrl::ALL.into_iter().find(|t| t.as_str() == url)
    }

    /// Short name as `istioctl proxy-status` shows it: CDS, EDS, LDS, RDS, SDS.
    pub fn short(self) -> &'static str {
        match self {
            TypeUrl::Cluster => "CDS",
            TypeUrl::Endpoint => "EDS",
            TypeUrl::Listener => "LDS",
            TypeUrl::Route => "RDS",
            TypeUrl::Secret => "SDS",
        }
    }
}

/// Everything one proxy gets, by name.
#[derive(Clone, Default, PartialEq)]
pub struct XdsResources {
    pub listeners: BTreeMap<String, Listener>,
    pub routes: BTreeMap<String, RouteConfiguration>,
    pub clusters: BTreeMap<String, Cluster>,
    pub endpoints: BTreeMap<String, ClusterLoadAssignment>,
    /// Certificates and CAs from Kubernetes Secrets, by SDS name (`kubernetes://NAME`,
    /// `kubernetes://NAME-cacert`). They hold private keys: the ADS server sends them only over
    /// streams whose peer proved its identity.
    pub secrets: BTreeMap<String, Secret>,
}

impl std::fmt::Debug for XdsResources {
    /// As derived, but Secrets by name only: their private keys are never logged.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdsResources")
            .field("listeners", &self.listeners)
            .field("routes", &self.routes)
            .field("clusters", &self.clusters)
            .field("endpoints", &self.endpoints)
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl XdsResources {
    /// The resources of one type, packed as `Any`, by name.
    pub fn encode(&self, type_url: TypeUrl) -> BTreeMap<String, Any> {
        fn pack<M: Message>(type_url: TypeUrl, m: &BTreeMap<String, M>) -> BTreeMap<String, Any> {
            m.iter()
                .map(|(name, r)| {
                    (
                        name.clone(),
                        Any {
                            type_url: type_url.as_str().to_string(),
                            value: r.encode_to_vec(),
                        },
                    )
                })
                .collect()
        }
        match type_url {
            TypeUrl::Cluster => pack(type_url, &self.clusters),
            TypeUrl::Endpoint => pack(type_url, &self.endpoints),
            TypeUrl::Listener => pack(type_url, &self.listeners),
            TypeUrl::Route => pack(type_url, &self.routes),
            TypeUrl::Secret => pack(type_url, &self.secrets),
        }
    }
}
