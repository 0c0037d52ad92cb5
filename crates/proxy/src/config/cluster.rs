//! Clusters and their endpoints, from `envoy.config.cluster.v3.Cluster` and
//! `envoy.config.endpoint.v3.ClusterLoadAssignment`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3 as pb;
use envoy_types::pb::envoy::config::core::v3::HealthStatus;
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, lb_endpoint};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options,
};
use serde::Serialize;

use super::invalid::{At, Invalid, Kind, Refusal, Segment, refuse_if};
use super::proto::{decode, duration, socket_addr};
use super::tls::{Socket, UpstreamTls, upstream_socket};

/// The endpoint metadata namespace `transport_socket_matches` read.
pub const TRANSPORT_SOCKET_MATCH: &str = "envoy.transport_socket_match";

const HTTP_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
const HTTP_OPTIONS_TYPE: &str =
    "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
/// Envoy's connect timeout when a cluster sets none.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Envoy's `common_lb_config.healthy_panic_threshold` when unset, in percent.
const DEFAULT_PANIC_THRESHOLD: f64 = 50.0;
/// Envoy's ring size bounds (`RingHashLbConfig`) and Maglev table size.
const DEFAULT_MIN_RING: u64 = 1024;
const DEFAULT_MAX_RING: u64 = 8 * 1024 * 1024;
const DEFAULT_MAGLEV_TABLE: u64 = 65537;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cluster {
    pub name: String,
    /// TLS to the endpoints (`transport_socket`, `transport_socket_matches`).
    #[serde(skip_serializing_if = "ClusterTls::is_none")]
    pub tls: ClusterTls,
    /// `upstream_http_protocol_options.auto_sni`: with TLS and no `sni`, each request's host
    /// is the server name sent.
    pub auto_sni: bool,
    /// `auto_san_validation`: the certificate must have that host as a DNS name.
    pub auto_san_validation: bool,
    pub discovery: Discovery,
    pub lb: LbPolicy,
    #[serde(serialize_with = "super::secs::one")]
    pub connect_timeout: Duration,
    pub protocol: UpstreamProtocol,
    /// For EDS clusters, filled in from the ClusterLoadAssignment when it arrives.
    pub endpoints: Vec<Endpoint>,
    /// The default-priority thresholds of `circuit_breakers`.
    pub circuit_breakers: CircuitBreakers,
    pub outlier_detection: Option<OutlierDetection>,
    /// `common_lb_config.healthy_panic_threshold`, in percent: below this share of
    /// non-ejected endpoints the balancer uses all of them (0: never).
    pub healthy_panic_threshold: f64,
    /// ORIGINAL_DST clusters: the request header that names the destination (`IP:PORT`), from
    /// `original_dst_lb_config` (`use_http_header`, `http_header_name`); `None`: where the
    /// connection was going before iptables redirected it.
    pub original_dst_header: Option<String>,
    /// `upstream_bind_config.source_address`: the local address connections to the endpoints
    /// are made from (the inbound passthrough cluster's 127.0.0.6, which the capture rules
    /// let through).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_address: Option<std::net::SocketAddr>,
    /// The service the cluster is for (`filter_metadata.istio.services[0]`), for telemetry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<Arc<strait_telemetry::Service>>,
    /// The balancer strait-proxy builds for the cluster when it publishes the config (its
    /// endpoints' addresses parsed, the policy's state); not config: ignored by `==` and the
    /// config dump.
    #[serde(skip)]
    pub(crate) balancer: crate::upstream::Slot,
}

/// A cluster's circuit breaker thresholds (Envoy's `circuit_breakers.thresholds`, default
/// priority), with Envoy's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CircuitBreakers {
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_requests: u32,
    pub max_retries: u32,
}

impl Default for CircuitBreakers {
    fn default() -> CircuitBreakers {
        CircuitBreakers {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_retries: 3,
        }
    }
}

/// `outlier_detection`, the consecutive-error detectors, with Envoy's defaults. Enforcing
/// values are percentages: the chance that a detection ejects.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutlierDetection {
    pub consecutive_5xx: u32,
    pub enforcing_consecutive_5xx: u32,
    pub consecutive_gateway_failure: u32,
    pub enforcing_consecutive_gateway_failure: u32,
    /// Local-origin failures (connect failure, reset, timeout) counted apart from 5xx.
    pub split_external_local_origin_errors: bool,
    pub consecutive_local_origin_failure: u32,
    pub enforcing_consecutive_local_origin_failure: u32,
    #[serde(serialize_with = "super::secs::one")]
    pub interval: Duration,
    #[serde(serialize_with = "super::secs::one")]
    pub base_ejection_time: Duration,
    #[serde(serialize_with = "super::secs::one")]
    pub max_ejection_time: Duration,
    pub max_ejection_percent: u32,
}

impl Default for OutlierDetection {
    fn default() -> OutlierDetection {
        OutlierDetection {
            consecutive_5xx: 5,
            enforcing_consecutive_5xx: 100,
            consecutive_gateway_failure: 5,
            enforcing_consecutive_gateway_failure: 0,
            split_external_local_origin_errors: false,
            consecutive_local_origin_failure: 5,
            enforcing_consecutive_local_origin_failure: 100,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 10,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Discovery {
    /// Endpoints from EDS (over ADS), under this name.
    Eds(String),
    Static,
    /// Endpoint hosts are names, resolved when a connection is made.
    Dns,
    /// To the address the request names (its authority, when that is `IP:PORT`).
    OriginalDst,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum LbPolicy {
    RoundRobin,
    /// Power of two choices over the requests in flight.
    LeastRequest,
    Random,
    /// Consistent hashing of the route's `hash_policy` on a ring of at least this many points.
    RingHash {
        minimum_ring_size: u64,
    },
    /// Consistent hashing on a Maglev table of this (prime) size.
    Maglev {
        table_size: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum UpstreamProtocol {
    Http1,
    /// HTTP/2 with prior knowledge (h2c).
    Http2,
}

/// One healthy endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    /// An IP address, or for DNS clusters a host name.
    pub host: String,
    pub port: u16,
    /// Its `envoy.transport_socket_match` metadata (Istio's `tlsMode: istio` on endpoints with
    /// a sidecar), which picks the cluster's transport socket for it.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub socket_match: BTreeMap<String, String>,
    /// Its workload, for telemetry: `filter_metadata.istio.workload` in Istio's encoding
    /// (`NAME;NAMESPACE;CANONICAL_SERVICE;CANONICAL_REVISION;CLUSTER`). Its presence also says
    /// the endpoint is a workload of the mesh, which gets the peer metadata headers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload: Option<Arc<strait_telemetry::Workload>>,
}

impl Endpoint {
    pub fn new(host: impl Into<String>, port: u16) -> Endpoint {
        Endpoint {
            host: host.into(),
            port,
            socket_match: BTreeMap::new(),
            workload: None,
        }
    }
}

/// How a cluster's connections are secured: Envoy's `transport_socket`, or its
/// `transport_socket_matches` chosen per endpoint by the endpoint's metadata (Istio's
/// auto-mTLS: mutual TLS to endpoints with a sidecar, plain text to the others).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub enum ClusterTls {
    /// Plain text.
    #[default]
    None,
    All(Arc<UpstreamTls>),
    ByEndpoint {
        matches: Vec<SocketMatch>,
        /// For endpoints no match takes: the cluster's `transport_socket`.
        default: Option<Arc<UpstreamTls>>,
    },
}

/// One `transport_socket_matches` entry: endpoints whose metadata has all of `criteria` use
/// its socket (`None`: plain text).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SocketMatch {
    pub name: String,
    pub criteria: BTreeMap<String, String>,
    pub tls: Option<Arc<UpstreamTls>>,
}

impl ClusterTls {
    /// The TLS context for connections to `e` (`None`: plain text), as Envoy picks it: the
    /// first match whose criteria the endpoint's metadata all has, else the cluster's socket.
    pub fn for_endpoint(&self, e: &Endpoint) -> Option<&Arc<UpstreamTls>> {
        match self {
            ClusterTls::None => None,
            ClusterTls::All(tls) => Some(tls),
            ClusterTls::ByEndpoint { matches, default } => matches
                .iter()
                .find(|m| {
                    m.criteria
                        .iter()
                        .all(|(k, v)| e.socket_match.get(k) == Some(v))
                })
                .map_or(default.as_ref(), |m| m.tls.as_ref()),
        }
    }

    pub fn is_none(&self) -> bool {
        matches!(self, ClusterTls::None)
    }

    /// Every TLS context it may use.
    pub fn contexts(&self) -> Vec<&UpstreamTls> {
        match self {
            ClusterTls::None => Vec::new(),
            ClusterTls::All(t) => vec![t],
            ClusterTls::ByEndpoint { matches, default } => matches
                .iter()
                .filter_map(|m| m.tls.as_deref())
                .chain(default.as_deref())
                .collect(),
        }
    }
}

impl TryFrom<&pb::Cluster> for Cluster {
    type Error = Invalid;

    fn try_from(c: &pb::Cluster) -> Result<Cluster, Invalid> {
        cluster(c).map_err(|r| r.of(Kind::Cluster, &c.name))
    }
}

/// The cluster, one field group at a time.
fn cluster(c: &pb::Cluster) -> Result<Cluster, Refusal> {
    refuse_unsupported(c)?;
    let discovery = discovery(c)?;
    let lb = lb_policy(c, &discovery)?;
    let protocol = upstream_protocol(c)?;
    let endpoints = static_endpoints(c, &discovery)?;
    let original_dst_header = original_dst_header(c, &discovery)?;
    let source_address = source_address(c)?;
    let tls = cluster_tls(c)?;
    let (auto_sni, auto_san_validation) = auto_sni(c)?;
    if discovery == Discovery::OriginalDst && !tls.is_none() {
        return Err(Refusal::unsupported_value(
            "transport_socket",
            "TLS to ORIGINAL_DST destinations",
        ));
    }
    Ok(Cluster {
        tls,
        auto_sni,
        auto_san_validation,
        name: c.name.clone(),
        discovery,
        lb,
        original_dst_header,
        source_address,
        connect_timeout: c
            .connect_timeout
            .as_ref()
            .map(duration)
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT),
        protocol,
        endpoints,
        circuit_breakers: circuit_breakers(c.circuit_breakers.as_ref()),
        outlier_detection: c.outlier_detection.as_ref().map(outlier_detection),
        healthy_panic_threshold: c
            .common_lb_config
            .as_ref()
            .and_then(|l| l.healthy_panic_threshold.as_ref())
            .map_or(DEFAULT_PANIC_THRESHOLD, |p| p.value.clamp(0.0, 100.0)),
        service: cluster_service(c),
        balancer: Default::default(),
    })
}

fn refuse_unsupported(c: &pb::Cluster) -> Result<(), Refusal> {
    refuse_if(
        c.transport_socket_matcher.is_some(),
        "transport_socket_matcher",
    )?;
    refuse_if(c.lb_subset_config.is_some(), "lb_subset_config")?;
    refuse_if(c.load_balancing_policy.is_some(), "load_balancing_policy")?;
    refuse_if(!c.filters.is_empty(), "filters")?;
    refuse_if(c.upstream_config.is_some(), "upstream_config")
}

/// `upstream_bind_config`: its `source_address` (an IP address; port 0 for any); the other
/// ways of choosing or setting up the local socket are refused.
#[allow(deprecated)] // additional_source_addresses: refused all the same.
fn source_address(c: &pb::Cluster) -> Result<Option<std::net::SocketAddr>, Refusal> {
    let Some(b) = &c.upstream_bind_config else {
        return Ok(None);
    };
    let at = |r: Refusal| r.under("upstream_bind_config");
    refuse_if(b.freebind.is_some(), "freebind").map_err(at)?;
    refuse_if(!b.socket_options.is_empty(), "socket_options").map_err(at)?;
    refuse_if(
        !b.extra_source_addresses.is_empty(),
        "extra_source_addresses",
    )
    .map_err(at)?;
    refuse_if(
        !b.additional_source_addresses.is_empty(),
        "additional_source_addresses",
    )
    .map_err(at)?;
    refuse_if(b.local_address_selector.is_some(), "local_address_selector").map_err(at)?;
    let Some(sa) = &b.source_address else {
        return Ok(None);
    };
    let address = envoy_types::pb::envoy::config::core::v3::Address {
        address: Some(
            envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(sa.clone()),
        ),
    };
    socket_addr(Some(&address), "source_address")
        .map(Some)
        .map_err(at)
}

/// `transport_socket` and `transport_socket_matches`.
fn cluster_tls(c: &pb::Cluster) -> Result<ClusterTls, Refusal> {
    let tls = |s: Option<&envoy_types::pb::envoy::config::core::v3::TransportSocket>| {
        Ok::<_, Refusal>(match s {
            None => None,
            Some(s) => match upstream_socket(s)? {
                Socket::Raw => None,
                Socket::Tls(t) => Some(Arc::new(t)),
            },
        })
    };
    let default = tls(c.transport_socket.as_ref()).under("transport_socket")?;
    if c.transport_socket_matches.is_empty() {
        return Ok(default.map_or(ClusterTls::None, ClusterTls::All));
    }
    let mut matches = Vec::with_capacity(c.transport_socket_matches.len());
    for (i, m) in c.transport_socket_matches.iter().enumerate() {
        let at = |r: Refusal| r.at(Segment::Index(i)).under("transport_socket_matches");
        let criteria = m
            .r#match
            .as_ref()
            .map(|s| struct_strings(s).map_err(|r| r.under("match")))
            .transpose()
            .map_err(at)?
            .unwrap_or_default();
        let tls = tls(m.transport_socket.as_ref())
            .under("transport_socket")
            .map_err(at)?;
        matches.push(SocketMatch {
            name: m.name.clone(),
            criteria,
            tls,
        });
    }
    Ok(ClusterTls::ByEndpoint { matches, default })
}

/// A metadata struct's fields as strings (Istio's are strings; numbers and booleans as
/// written).
fn struct_strings(
    s: &envoy_types::pb::google::protobuf::Struct,
) -> Result<BTreeMap<String, String>, Refusal> {
    use envoy_types::pb::google::protobuf::value::Kind as V;
    let mut out = BTreeMap::new();
    for (k, v) in &s.fields {
        let text = match &v.kind {
            Some(V::StringValue(s)) => s.clone(),
            Some(V::BoolValue(b)) => b.to_string(),
            Some(V::NumberValue(n)) => n.to_string(),
            _ => {
                return Err(Refusal::unsupported_value(
                    "fields",
                    format!("{k:?}: a list, struct or null value"),
                ));
            }
        };
        out.insert(k.clone(), text);
    }
    Ok(out)
}

/// `type` (or `cluster_type`), with the EDS service name.
fn discovery(c: &pb::Cluster) -> Result<Discovery, Refusal> {
    use pb::cluster::DiscoveryType as D;
    match &c.cluster_discovery_type {
        None => Ok(Discovery::Static),
        Some(pb::cluster::ClusterDiscoveryType::Type(t)) => match D::try_from(*t) {
            Ok(D::Static) => Ok(Discovery::Static),
            Ok(D::StrictDns) | Ok(D::LogicalDns) => Ok(Discovery::Dns),
            Ok(D::OriginalDst) => Ok(Discovery::OriginalDst),
            Ok(D::Eds) => Ok(Discovery::Eds(
                c.eds_cluster_config
                    .as_ref()
                    .map(|e| e.service_name.clone())
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| c.name.clone()),
            )),
            Err(_) => Err(Refusal::bad_value("type", t, "a discovery type")),
        },
        Some(pb::cluster::ClusterDiscoveryType::ClusterType(t)) => Err(Refusal::unsupported_value(
            "cluster_type",
            format!("{:?}", t.name),
        )),
    }
}

/// `lb_policy` with its `ring_hash_lb_config` or `maglev_lb_config`.
fn lb_policy(c: &pb::Cluster, discovery: &Discovery) -> Result<LbPolicy, Refusal> {
    use pb::cluster::LbPolicy as P;
    match P::try_from(c.lb_policy) {
        Ok(P::RoundRobin) => Ok(LbPolicy::RoundRobin),
        Ok(P::LeastRequest) => Ok(LbPolicy::LeastRequest),
        Ok(P::Random) => Ok(LbPolicy::Random),
        Ok(P::RingHash) => {
            let (min, max) = match &c.lb_config {
                Some(pb::cluster::LbConfig::RingHashLbConfig(r)) => (
                    r.minimum_ring_size
                        .as_ref()
                        .map_or(DEFAULT_MIN_RING, |v| v.value),
                    r.maximum_ring_size
                        .as_ref()
                        .map_or(DEFAULT_MAX_RING, |v| v.value),
                ),
                _ => (DEFAULT_MIN_RING, DEFAULT_MAX_RING),
            };
            if min > max || max > DEFAULT_MAX_RING {
                return Err(Refusal::bad_value(
                    "ring_hash_lb_config",
                    format!("minimum_ring_size {min} with maximum_ring_size {max}"),
                    format!("a minimum at most the maximum, at most {DEFAULT_MAX_RING}"),
                ));
            }
            Ok(LbPolicy::RingHash {
                minimum_ring_size: min.max(1),
            })
        }
        Ok(P::Maglev) => {
            let size = match &c.lb_config {
                Some(pb::cluster::LbConfig::MaglevLbConfig(m)) => m
                    .table_size
                    .as_ref()
                    .map_or(DEFAULT_MAGLEV_TABLE, |v| v.value),
                _ => DEFAULT_MAGLEV_TABLE,
            };
            if size > 5_000_011 || !is_prime(size) {
                return Err(Refusal::bad_value(
                    "maglev_lb_config.table_size",
                    size,
                    "a prime number of at most 5000011",
                ));
            }
            Ok(LbPolicy::Maglev { table_size: size })
        }
        Ok(P::ClusterProvided) if *discovery == Discovery::OriginalDst => Ok(LbPolicy::RoundRobin),
        Ok(p) => Err(Refusal::unsupported_value("lb_policy", p.as_str_name())),
        Err(_) => Err(Refusal::bad_value(
            "lb_policy",
            c.lb_policy,
            "a policy Envoy knows",
        )),
    }
}

/// HTTP/1.1, or HTTP/2 with prior knowledge (`typed_extension_protocol_options` or the
/// deprecated `http2_protocol_options`).
fn upstream_protocol(c: &pb::Cluster) -> Result<UpstreamProtocol, Refusal> {
    #[allow(deprecated)]
    let mut protocol = if c.http2_protocol_options.is_some() {
        UpstreamProtocol::Http2
    } else {
        UpstreamProtocol::Http1
    };
    for (key, any) in &c.typed_extension_protocol_options {
        let at = |r: Refusal| {
            r.at(Segment::Key(key.clone()))
                .under("typed_extension_protocol_options")
        };
        if key != HTTP_OPTIONS {
            return Err(at(Refusal::unsupported("")));
        }
        let opts: HttpProtocolOptions = decode(any, HTTP_OPTIONS_TYPE).map_err(at)?;
        use http_protocol_options::UpstreamProtocolOptions as U;
        use http_protocol_options::explicit_http_config::ProtocolConfig as P;
        match &opts.upstream_protocol_options {
            Some(U::ExplicitHttpConfig(e)) => match &e.protocol_config {
                Some(P::Http2ProtocolOptions(_)) => protocol = UpstreamProtocol::Http2,
                Some(P::Http3ProtocolOptions(_)) => {
                    return Err(at(Refusal::unsupported(
                        "explicit_http_config.http3_protocol_options",
                    )));
                }
                _ => {}
            },
            // Ignored, as docs/xds-support.md says: HTTP/1.1 upstream.
            Some(U::UseDownstreamProtocolConfig(_)) | Some(U::AutoConfig(_)) | None => {}
        }
    }
    Ok(protocol)
}

/// `HttpProtocolOptions.upstream_http_protocol_options`: `auto_sni`, `auto_san_validation`.
fn auto_sni(c: &pb::Cluster) -> Result<(bool, bool), Refusal> {
    let Some(any) = c.typed_extension_protocol_options.get(HTTP_OPTIONS) else {
        return Ok((false, false));
    };
    let opts: HttpProtocolOptions = decode(any, HTTP_OPTIONS_TYPE).map_err(|r| {
        r.at(Segment::Key(HTTP_OPTIONS.to_string()))
            .under("typed_extension_protocol_options")
    })?;
    Ok(opts
        .upstream_http_protocol_options
        .map_or((false, false), |u| (u.auto_sni, u.auto_san_validation)))
}

/// The endpoints of a STATIC or DNS cluster (`load_assignment`); EDS clusters get theirs from
/// EDS.
fn static_endpoints(c: &pb::Cluster, discovery: &Discovery) -> Result<Vec<Endpoint>, Refusal> {
    let Some(cla) = &c.load_assignment else {
        return Ok(Vec::new());
    };
    if matches!(discovery, Discovery::Eds(_)) {
        return Err(Refusal::rule(
            "load_assignment",
            "an EDS cluster takes its endpoints from EDS, not from a load_assignment",
        ));
    }
    load_assignment(cla, *discovery == Discovery::Dns).under("load_assignment")
}

/// ORIGINAL_DST clusters: the request header that names the destination, if any.
fn original_dst_header(c: &pb::Cluster, discovery: &Discovery) -> Result<Option<String>, Refusal> {
    match &c.lb_config {
        Some(pb::cluster::LbConfig::OriginalDstLbConfig(o))
            if *discovery == Discovery::OriginalDst =>
        {
            refuse_if(
                o.upstream_port_override.is_some(),
                "original_dst_lb_config.upstream_port_override",
            )?;
            refuse_if(
                o.metadata_key.is_some(),
                "original_dst_lb_config.metadata_key",
            )?;
            Ok(o.use_http_header.then(|| {
                if o.http_header_name.is_empty() {
                    "x-envoy-original-dst-host".to_string()
                } else {
                    o.http_header_name.to_ascii_lowercase()
                }
            }))
        }
        _ => Ok(None),
    }
}

fn is_prime(n: u64) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

/// The default-priority thresholds (high-priority ones are not used: routes have no priority).
fn circuit_breakers(cb: Option<&pb::CircuitBreakers>) -> CircuitBreakers {
    use envoy_types::pb::envoy::config::core::v3::RoutingPriority;
    let mut out = CircuitBreakers::default();
    let Some(t) = cb.and_then(|cb| {
        cb.thresholds
            .iter()
            .find(|t| t.priority == RoutingPriority::Default as i32)
    }) else {
        return out;
    };
    let set = |field: &mut u32, v: Option<u32>| {
        if let Some(v) = v {
            *field = v;
        }
    };
    set(
        &mut out.max_connections,
        t.max_connections.as_ref().map(|v| v.value),
    );
    set(
        &mut out.max_pending_requests,
        t.max_pending_requests.as_ref().map(|v| v.value),
    );
    set(
        &mut out.max_requests,
        t.max_requests.as_ref().map(|v| v.value),
    );
    set(
        &mut out.max_retries,
        t.max_retries.as_ref().map(|v| v.value),
    );
    out
}

fn outlier_detection(o: &pb::OutlierDetection) -> OutlierDetection {
    let d = OutlierDetection::default();
    let n = |v: Option<u32>, default: u32| v.unwrap_or(default);
    let t = |v: Option<&envoy_types::pb::google::protobuf::Duration>, default: Duration| {
        v.map_or(default, |d| {
            Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32)
        })
    };
    OutlierDetection {
        consecutive_5xx: n(
            o.consecutive_5xx.as_ref().map(|v| v.value),
            d.consecutive_5xx,
        ),
        enforcing_consecutive_5xx: n(
            o.enforcing_consecutive_5xx.as_ref().map(|v| v.value),
            d.enforcing_consecutive_5xx,
        ),
        consecutive_gateway_failure: n(
            o.consecutive_gateway_failure.as_ref().map(|v| v.value),
            d.consecutive_gateway_failure,
        ),
        enforcing_consecutive_gateway_failure: n(
            o.enforcing_consecutive_gateway_failure
                .as_ref()
                .map(|v| v.value),
            d.enforcing_consecutive_gateway_failure,
        ),
        split_external_local_origin_errors: o.split_external_local_origin_errors,
        consecutive_local_origin_failure: n(
            o.consecutive_local_origin_failure.as_ref().map(|v| v.value),
            d.consecutive_local_origin_failure,
        ),
        enforcing_consecutive_local_origin_failure: n(
            o.enforcing_consecutive_local_origin_failure
                .as_ref()
                .map(|v| v.value),
            d.enforcing_consecutive_local_origin_failure,
        ),
        interval: t(o.interval.as_ref(), d.interval),
        base_ejection_time: t(o.base_ejection_time.as_ref(), d.base_ejection_time),
        max_ejection_time: t(o.max_ejection_time.as_ref(), d.max_ejection_time),
        max_ejection_percent: n(
            o.max_ejection_percent.as_ref().map(|v| v.value),
            d.max_ejection_percent,
        )
        .min(100),
    }
}

/// The healthy endpoints of a load assignment, over all localities and priorities (this slice
/// ignores priorities and weights).
pub fn load_assignment(cla: &ClusterLoadAssignment, dns: bool) -> Result<Vec<Endpoint>, Refusal> {
    let mut out = Vec::new();
    for (i, locality) in cla.endpoints.iter().enumerate() {
        for (j, lb) in locality.lb_endpoints.iter().enumerate() {
            let at = |r: Refusal| {
                r.at(Segment::Index(j))
                    .under("lb_endpoints")
                    .at(Segment::Index(i))
                    .under("endpoints")
            };
            let healthy = !matches!(
                HealthStatus::try_from(lb.health_status),
                Ok(HealthStatus::Unhealthy | HealthStatus::Draining | HealthStatus::Timeout)
            );
            let Some(lb_endpoint::HostIdentifier::Endpoint(e)) = &lb.host_identifier else {
                return Err(at(Refusal::unsupported("endpoint_name")));
            };
            let endpoint = if dns {
                dns_endpoint(e.address.as_ref()).map_err(|r| at(r.under("endpoint")))?
            } else {
                let a = socket_addr(e.address.as_ref(), "address")
                    .map_err(|r| at(r.under("endpoint")))?;
                Endpoint::new(a.ip().to_string(), a.port())
            };
            let endpoint = Endpoint {
                socket_match: socket_match(lb).map_err(at)?,
                workload: endpoint_workload(lb),
                ..endpoint
            };
            if healthy {
                out.push(endpoint);
            }
        }
    }
    Ok(out)
}

/// An endpoint's workload from `filter_metadata.istio.workload` (Istio's encoding; anything
/// else is no workload: telemetry labels it `unknown`).
fn endpoint_workload(
    lb: &envoy_types::pb::envoy::config::endpoint::v3::LbEndpoint,
) -> Option<Arc<strait_telemetry::Workload>> {
    use envoy_types::pb::google::protobuf::value::Kind;
    let istio = lb.metadata.as_ref()?.filter_metadata.get("istio")?;
    match istio.fields.get("workload")?.kind.as_ref()? {
        Kind::StringValue(s) => strait_telemetry::Workload::from_endpoint_encoding(s).map(Arc::new),
        _ => None,
    }
}

/// The service a cluster is for, from `filter_metadata.istio.services[0]` (`host`, `name`,
/// `namespace`), as Istio's telemetry reads it.
fn cluster_service(c: &pb::Cluster) -> Option<Arc<strait_telemetry::Service>> {
    use envoy_types::pb::google::protobuf::value::Kind;
    let istio = c.metadata.as_ref()?.filter_metadata.get("istio")?;
    let Kind::ListValue(list) = istio.fields.get("services")?.kind.as_ref()? else {
        return None;
    };
    let Kind::StructValue(first) = list.values.first()?.kind.as_ref()? else {
        return None;
    };
    let text = |k: &str| match first.fields.get(k).and_then(|v| v.kind.as_ref()) {
        Some(Kind::StringValue(s)) => s.clone(),
        _ => String::new(),
    };
    let host = text("host");
    if host.is_empty() {
        return None;
    }
    let name = match text("name") {
        n if n.is_empty() => host.split('.').next().unwrap_or_default().to_string(),
        n => n,
    };
    Some(Arc::new(strait_telemetry::Service {
        host,
        name,
        namespace: text("namespace"),
    }))
}

/// An endpoint's `envoy.transport_socket_match` metadata.
fn socket_match(
    lb: &envoy_types::pb::envoy::config::endpoint::v3::LbEndpoint,
) -> Result<BTreeMap<String, String>, Refusal> {
    match lb
        .metadata
        .as_ref()
        .and_then(|m| m.filter_metadata.get(TRANSPORT_SOCKET_MATCH))
    {
        Some(s) => struct_strings(s).map_err(|r| {
            r.at(Segment::Key(TRANSPORT_SOCKET_MATCH.to_string()))
                .under("metadata.filter_metadata")
        }),
        None => Ok(BTreeMap::new()),
    }
}

fn dns_endpoint(
    address: Option<&envoy_types::pb::envoy::config::core::v3::Address>,
) -> Result<Endpoint, Refusal> {
    use envoy_types::pb::envoy::config::core::v3::{address, socket_address};
    match address.and_then(|a| a.address.as_ref()) {
        Some(address::Address::SocketAddress(sa)) => match sa.port_specifier {
            Some(socket_address::PortSpecifier::PortValue(p)) => Ok(Endpoint::new(
                sa.address.clone(),
                u16::try_from(p).map_err(|_| {
                    Refusal::bad_value("address.port_value", p, "a port (at most 65535)")
                })?,
            )),
            _ => Err(Refusal::unsupported("address.named_port")),
        },
        _ => Err(Refusal::unsupported_value(
            "address",
            "other than a socket address",
        )),
    }
}

/// A ClusterLoadAssignment's endpoints, or why they cannot be used.
pub fn endpoints(cla: &ClusterLoadAssignment) -> Result<Vec<Endpoint>, Invalid> {
    load_assignment(cla, false).map_err(|r| r.of(Kind::ClusterLoadAssignment, &cla.cluster_name))
}
