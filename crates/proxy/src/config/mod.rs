//! The proxy's own typed config: plain Rust, converted from xDS protos at the edge (the
//! `TryFrom` impls in [`listener`], [`route`] and [`cluster`]) and published whole, as one
//! [`Config`] behind an `Arc`, so that listeners, routes, clusters and endpoints that change
//! together are seen together.
//!
//! Everything here derives `Serialize` for the admin `/config_dump`, which shows these types as
//! they are (it is not shaped like Envoy's config dump).

pub mod cluster;
pub mod listener;
pub mod route;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

pub use cluster::{
    CircuitBreakers, Cluster, Discovery, Endpoint, LbPolicy, OutlierDetection, UpstreamProtocol,
};
pub use listener::{
    ChainMatch, Cidr, FilterChain, HttpListener, Listener, NetworkFilter, RouteSource,
    TcpProxyConfig,
};
pub use route::{
    Action, Fault, Forward, HashKey, HashPolicy, HeaderMatch, HeaderMutation, Mirror, PathMatch,
    QueryMatch, Redirect, RetryPolicy, Route, RouteConfig, RouteMatch, StringMatch, Target,
    VirtualHost, WeightedCluster,
};

/// Why an xDS resource was refused (NACKed): which resource, and what in it strait-proxy cannot
/// honour. The message names the field, so `strait proxy-status` tells the operator what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {name:?}: {reason}")]
pub struct Invalid {
    /// `listener`, `route configuration`, `cluster` or `cluster load assignment`.
    pub kind: &'static str,
    pub name: String,
    pub reason: String,
}

impl Invalid {
    pub(crate) fn new(kind: &'static str, name: &str, reason: impl Into<String>) -> Invalid {
        Invalid {
            kind,
            name: name.to_string(),
            reason: reason.into(),
        }
    }
}

/// Durations in the config dump as Envoy's JSON writes them: `"0.500s"`.
pub(crate) mod secs {
    use std::time::Duration;

    use serde::Serializer;

    pub(crate) fn text(d: &Duration) -> String {
        match d.subsec_millis() {
            0 if d.subsec_nanos() == 0 => format!("{}s", d.as_secs()),
            _ => format!("{}.{:03}s", d.as_secs(), d.subsec_millis()),
        }
    }

    pub(crate) fn one<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&text(d))
    }

    pub(crate) fn option<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&text(d)),
            None => s.serialize_none(),
        }
    }
}

/// A field strait-proxy does not implement, as a NACK reason.
pub(crate) fn unsupported(field: &str) -> String {
    format!("{field} is not supported by strait-proxy")
}

/// The whole config a proxy runs with at one moment.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Config {
    /// The control plane's version of each type, as last ACKed.
    pub versions: BTreeMap<String, String>,
    pub listeners: BTreeMap<String, Arc<Listener>>,
    pub routes: BTreeMap<String, Arc<RouteConfig>>,
    /// Clusters with their endpoints filled in (from EDS, or the cluster's own load assignment).
    pub clusters: BTreeMap<String, Arc<Cluster>>,
}

impl Config {
    /// The route configuration an HTTP listener uses, if it has arrived.
    pub fn route_config<'a>(&'a self, source: &'a RouteSource) -> Option<&'a RouteConfig> {
        match source {
            RouteSource::Rds(name) => self.routes.get(name).map(|r| r.as_ref()),
            RouteSource::Inline(config) => Some(config),
        }
    }
}

#[cfg(test)]
mod tests;
