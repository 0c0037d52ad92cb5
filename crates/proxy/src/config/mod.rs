//! The proxy's own typed config: plain Rust, converted from xDS protos at the edge (the
//! `TryFrom` impls in [`listener`], [`route`] and [`cluster`]) and published whole, as one
//! [`Config`] behind an `Arc`, so that listeners, routes, clusters and endpoints that change
//! together are seen together. What cannot be converted is refused with an [`Invalid`]: the
//! resource, the field path and the problem, typed until the message is built.
//!
//! Imports go one way: `proto` and [`invalid`] at the bottom, then [`route`] (with [`cors`]),
//! then [`listener`] (an HTTP connection manager may hold a route configuration inline);
//! [`cluster`] uses only the bottom two.
//!
//! Everything here derives `Serialize` for the admin `/config_dump`, which shows these types as
//! they are (it is not shaped like Envoy's config dump).

pub mod cluster;
pub mod cors;
pub mod ext_authz;
pub mod invalid;
pub mod listener;
mod proto;
pub mod ratelimit;
pub mod route;
pub mod tls;
pub mod tracer;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

pub use cluster::{
    CircuitBreakers, Cluster, ClusterTls, Discovery, Endpoint, LbPolicy, OutlierDetection,
    SocketMatch, UpstreamProtocol,
};
pub use cors::{Cors, OriginMatch};
pub use invalid::{FieldPath, Invalid, Kind, Problem, Refusal, Segment};
pub use listener::{
    ChainMatch, Cidr, FilterChain, HttpListener, Listener, NetworkFilter, RouteSource,
    TcpProxyConfig,
};
pub use route::{
    Action, EntryHeaders, Fault, Forward, HashKey, HashPolicy, HeaderMatch, HeaderMutation, Mirror,
    PathMatch, QueryMatch, Redirect, RequireTls, RetryPolicy, Route, RouteConfig, RouteMatch,
    StringMatch, Target, VirtualHost, WeightedCluster,
};

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

/// Resources of one type by name, shared between the configs that have the same ones: a
/// config that changes another type keeps this table as it is (one `Arc` to clone), and a change
/// to some entries copies the map of `Arc`s, not the resources.
#[derive(Debug)]
pub struct Table<T>(Arc<BTreeMap<String, Arc<T>>>);

impl<T> Table<T> {
    pub fn insert(&mut self, name: String, value: Arc<T>) -> Option<Arc<T>> {
        Arc::make_mut(&mut self.0).insert(name, value)
    }

    pub fn remove(&mut self, name: &str) -> Option<Arc<T>> {
        if !self.0.contains_key(name) {
            return None;
        }
        Arc::make_mut(&mut self.0).remove(name)
    }

    /// Each entry, to replace or change in place (the table is copied first if it is shared).
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&String, &mut Arc<T>)> {
        Arc::make_mut(&mut self.0).iter_mut()
    }

    /// Whether both are the same table (not a copy).
    pub fn same(&self, other: &Table<T>) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl<T> Clone for Table<T> {
    fn clone(&self) -> Table<T> {
        Table(self.0.clone())
    }
}

impl<T> Default for Table<T> {
    fn default() -> Table<T> {
        Table(Arc::default())
    }
}

impl<T> std::ops::Deref for Table<T> {
    type Target = BTreeMap<String, Arc<T>>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl<T> FromIterator<(String, Arc<T>)> for Table<T> {
    fn from_iter<I: IntoIterator<Item = (String, Arc<T>)>>(iter: I) -> Table<T> {
        Table(Arc::new(iter.into_iter().collect()))
    }
}

impl<T, const N: usize> From<[(String, Arc<T>); N]> for Table<T> {
    fn from(entries: [(String, Arc<T>); N]) -> Table<T> {
        entries.into_iter().collect()
    }
}

impl<'a, T> IntoIterator for &'a Table<T> {
    type Item = (&'a String, &'a Arc<T>);
    type IntoIter = std::collections::btree_map::Iter<'a, String, Arc<T>>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl<T: Serialize> Serialize for Table<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// The whole config a proxy runs with at one moment.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Config {
    /// The control plane's version of each type, as last ACKed.
    pub versions: BTreeMap<String, String>,
    pub listeners: Table<Listener>,
    pub routes: Table<RouteConfig>,
    /// Clusters with their endpoints filled in (from EDS, or the cluster's own load assignment).
    pub clusters: Table<Cluster>,
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
