//! Istio's standard metrics in strait-proxy (the labels and the registry are
//! `strait-telemetry`'s): who the proxy is, the peer metadata it exchanges, and a per-connection
//! cache of the last label set, so that a request of a label set already seen is counted with
//! neither a lock nor an allocation.
//!
//! The peer comes from the mesh: the downstream's `x-envoy-peer-metadata` and certificate
//! (inbound), the upstream endpoint's metadata from EDS and the upstream's
//! `x-envoy-peer-metadata` response header (outbound). The headers never leave the mesh: they
//! are removed from every request before it is forwarded and from every response before it is
//! returned, and added only towards mesh workloads (outbound: endpoints whose EDS metadata names
//! their workload; inbound: responses to requests that carried peer metadata).

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use envoy_types::pb::envoy::config::core::v3::Node;
use hyper::header::HeaderValue;
use hyper::http::uri::Authority;
use strait_telemetry::{
    Edge, EdgeLabels, Metrics, Observed, Protocol, Reporter, Service, Workload,
};

pub(crate) use strait_telemetry::workload::{PEER_METADATA_HEADER, PEER_METADATA_ID_HEADER};

/// The proxy's own side of its metrics.
pub(crate) struct Telemetry {
    pub(crate) metrics: Metrics,
    /// The proxy's workload, from its node metadata.
    pub(crate) local: Workload,
    /// The proxy's SPIFFE id, when it has a workload identity.
    pub(crate) principal: Option<Arc<str>>,
    /// The `x-envoy-peer-metadata` and `-id` values it sends (`None`: it does not know who it
    /// is, and sends none).
    pub(crate) peer_header: Option<(HeaderValue, HeaderValue)>,
}

impl Telemetry {
    /// From the node the proxy presents (Istio's metadata keys: `WORKLOAD_NAME`/`NAME`,
    /// `NAMESPACE`, `LABELS`, `CLUSTER_ID`) and its identity.
    pub(crate) fn new(node: &Node, principal: Option<String>) -> Telemetry {
        let mut local = node
            .metadata
            .as_ref()
            .map(Workload::from_struct)
            .unwrap_or_default();
        if local.cluster.is_empty() {
            local.cluster = strait_telemetry::workload::DEFAULT_CLUSTER_ID.to_string();
        }
        let peer_header = (!local.name.is_empty())
            .then(|| {
                Some((
                    HeaderValue::from_str(&local.peer_header()).ok()?,
                    HeaderValue::from_str(&node.id).ok()?,
                ))
            })
            .flatten();
        Telemetry {
            metrics: Metrics::default(),
            local,
            principal: principal.map(Arc::from),
            peer_header,
        }
    }

    /// A proxy that does not know who it is (a static config): every local label `unknown`.
    pub(crate) fn unknown() -> Telemetry {
        Telemetry {
            metrics: Metrics::default(),
            local: Workload::default(),
            principal: None,
            peer_header: None,
        }
    }

    /// The interned edge of `key` (a lock and allocations: once per connection and peer).
    pub(crate) fn edge(&self, key: &PeerKey) -> Arc<Edge> {
        let exchanged =
            key.peer_header
                .as_ref()
                .and_then(|h| match Workload::from_peer_header(h.as_bytes()) {
                    Ok(w) => Some(w),
                    Err(e) => {
                        tracing::debug!(error = %e, "peer metadata ignored");
                        None
                    }
                });
        let peer = exchanged.as_ref().or(key.endpoint.as_deref());
        let reporter = if key.inbound {
            Reporter::Destination
        } else {
            Reporter::Source
        };
        // The proxy's own SPIFFE id shows only on a mutual TLS connection with the peer (the
        // local certificate of that connection, as Istio reads it).
        let mtls = if key.inbound {
            key.peer_principal.is_some()
        } else {
            key.upstream_mtls
        };
        let labels = EdgeLabels::derive(&Observed {
            reporter,
            local: &self.local,
            local_principal: self.principal.as_deref().filter(|_| mtls),
            peer,
            peer_principal: key.peer_principal.as_deref(),
            service: key.service.as_deref(),
            host: key.host.as_ref().map(HostRef::as_str),
            protocol: key.protocol,
        });
        self.metrics.edge(labels)
    }
}

/// The request's authority, kept without a copy.
#[derive(Clone)]
pub(crate) enum HostRef {
    Header(HeaderValue),
    Authority(Authority),
}

impl HostRef {
    pub(crate) fn of<B>(req: &hyper::Request<B>) -> Option<HostRef> {
        match req.uri().authority() {
            Some(a) => Some(HostRef::Authority(a.clone())),
            None => req
                .headers()
                .get(hyper::header::HOST)
                .map(|h| HostRef::Header(h.clone())),
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        match self {
            HostRef::Header(h) => h.to_str().unwrap_or_default(),
            HostRef::Authority(a) => a.as_str(),
        }
    }
}

/// Everything but the proxy itself that decides a request's (or connection's) edge labels.
pub(crate) struct PeerKey {
    pub(crate) inbound: bool,
    pub(crate) protocol: Protocol,
    /// The peer's `x-envoy-peer-metadata`: the request's (inbound), the upstream response's
    /// (outbound).
    pub(crate) peer_header: Option<HeaderValue>,
    /// Outbound: the upstream endpoint's workload, from EDS.
    pub(crate) endpoint: Option<Arc<Workload>>,
    /// The peer's SPIFFE id: the downstream's certificate (inbound).
    pub(crate) peer_principal: Option<Arc<str>>,
    /// Outbound: the upstream connection is mutual TLS.
    pub(crate) upstream_mtls: bool,
    /// The upstream cluster's service.
    pub(crate) service: Option<Arc<Service>>,
    pub(crate) host: Option<HostRef>,
}

fn same_arc<T: ?Sized>(a: &Option<Arc<T>>, b: &Option<Arc<T>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        _ => false,
    }
}

impl PeerKey {
    /// Whether `other` gives the same labels (compared without allocating).
    fn same(&self, other: &PeerKey) -> bool {
        self.inbound == other.inbound
            && self.protocol == other.protocol
            && self.upstream_mtls == other.upstream_mtls
            && self.peer_header.as_ref().map(HeaderValue::as_bytes)
                == other.peer_header.as_ref().map(HeaderValue::as_bytes)
            && same_arc(&self.endpoint, &other.endpoint)
            && self.peer_principal.as_deref() == other.peer_principal.as_deref()
            && same_arc(&self.service, &other.service)
            // The host only matters when the cluster names no service.
            && (self.service.is_some()
                || self.host.as_ref().map(HostRef::as_str) == other.host.as_ref().map(HostRef::as_str))
    }
}

struct Cached {
    key: PeerKey,
    edge: Arc<Edge>,
}

/// A connection's last edge: its requests mostly share one peer and one service.
#[derive(Default)]
pub(crate) struct EdgeCache(ArcSwapOption<Cached>);

impl EdgeCache {
    /// The edge of `key`: the cached one when `key` gives the same labels (an `Arc` clone),
    /// else interned in the registry and cached.
    pub(crate) fn edge(&self, telemetry: &Telemetry, key: PeerKey) -> Arc<Edge> {
        if let Some(c) = &*self.0.load()
            && c.key.same(&key)
        {
            return c.edge.clone();
        }
        let edge = telemetry.edge(&key);
        self.0.store(Some(Arc::new(Cached {
            key,
            edge: edge.clone(),
        })));
        edge
    }
}

/// Envoy's short response flags with the delay flag in front (as the access log writes them),
/// as a static string; flags without a combined form keep only their own.
pub(crate) fn with_delay(flags: &'static str) -> &'static str {
    match flags {
        "-" => "DI",
        "UF" => "DI,UF",
        "UH" => "DI,UH",
        "UO" => "DI,UO",
        "UT" => "DI,UT",
        "UR" => "DI,UR",
        "URX" => "DI,URX",
        "NC" => "DI,NC",
        "DT" => "DI,DT",
        "FI" => "DI,FI",
        other => other,
    }
}
