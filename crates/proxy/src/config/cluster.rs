//! Clusters and their endpoints, from `envoy.config.cluster.v3.Cluster` and
//! `envoy.config.endpoint.v3.ClusterLoadAssignment`.

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3 as pb;
use envoy_types::pb::envoy::config::core::v3::HealthStatus;
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, lb_endpoint};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options,
};
use serde::Serialize;

use super::listener::{decode, socket_addr};
use super::{Invalid, unsupported};

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
}

impl TryFrom<&pb::Cluster> for Cluster {
    type Error = Invalid;

    fn try_from(c: &pb::Cluster) -> Result<Cluster, Invalid> {
        let bad = |reason: String| Invalid::new("cluster", &c.name, reason);
        let refuse = |cond: bool, field: &str| {
            if cond {
                Err(bad(unsupported(field)))
            } else {
                Ok(())
            }
        };
        refuse(
            c.transport_socket.is_some()
                || !c.transport_socket_matches.is_empty()
                || c.transport_socket_matcher.is_some(),
            "transport_socket (upstream TLS)",
        )?;
        refuse(c.lb_subset_config.is_some(), "lb_subset_config")?;
        refuse(c.load_balancing_policy.is_some(), "load_balancing_policy")?;
        refuse(!c.filters.is_empty(), "filters")?;
        refuse(c.upstream_config.is_some(), "upstream_config")?;
        let discovery = match &c.cluster_discovery_type {
            None => Discovery::Static,
            Some(pb::cluster::ClusterDiscoveryType::Type(t)) => {
                match pb::cluster::DiscoveryType::try_from(*t) {
                    Ok(pb::cluster::DiscoveryType::Static) => Discovery::Static,
                    Ok(pb::cluster::DiscoveryType::StrictDns)
                    | Ok(pb::cluster::DiscoveryType::LogicalDns) => Discovery::Dns,
                    Ok(pb::cluster::DiscoveryType::OriginalDst) => Discovery::OriginalDst,
                    Ok(pb::cluster::DiscoveryType::Eds) => Discovery::Eds(
                        c.eds_cluster_config
                            .as_ref()
                            .map(|e| e.service_name.clone())
                            .filter(|n| !n.is_empty())
                            .unwrap_or_else(|| c.name.clone()),
                    ),
                    Err(_) => return Err(bad(format!("type {t} is not a discovery type"))),
                }
            }
            Some(pb::cluster::ClusterDiscoveryType::ClusterType(t)) => {
                return Err(bad(unsupported(&format!("cluster_type {:?}", t.name))));
            }
        };
        let lb = match pb::cluster::LbPolicy::try_from(c.lb_policy) {
            Ok(pb::cluster::LbPolicy::RoundRobin) => LbPolicy::RoundRobin,
            Ok(pb::cluster::LbPolicy::LeastRequest) => LbPolicy::LeastRequest,
            Ok(pb::cluster::LbPolicy::Random) => LbPolicy::Random,
            Ok(pb::cluster::LbPolicy::RingHash) => {
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
                    return Err(bad(format!(
                        "ring_hash_lb_config: minimum_ring_size {min} must be at most maximum_ring_size {max} (at most {DEFAULT_MAX_RING})"
                    )));
                }
                LbPolicy::RingHash {
                    minimum_ring_size: min.max(1),
                }
            }
            Ok(pb::cluster::LbPolicy::Maglev) => {
                let size = match &c.lb_config {
                    Some(pb::cluster::LbConfig::MaglevLbConfig(m)) => m
                        .table_size
                        .as_ref()
                        .map_or(DEFAULT_MAGLEV_TABLE, |v| v.value),
                    _ => DEFAULT_MAGLEV_TABLE,
                };
                if size > 5_000_011 || !is_prime(size) {
                    return Err(bad(format!(
                        "maglev_lb_config.table_size {size} must be a prime number of at most 5000011"
                    )));
                }
                LbPolicy::Maglev { table_size: size }
            }
            Ok(pb::cluster::LbPolicy::ClusterProvided) if discovery == Discovery::OriginalDst => {
                LbPolicy::RoundRobin
            }
            Ok(p) => {
                return Err(bad(unsupported(&format!("lb_policy {}", p.as_str_name()))));
            }
            Err(_) => return Err(bad(format!("lb_policy {} is unknown", c.lb_policy))),
        };
        #[allow(deprecated)]
        let mut protocol = if c.http2_protocol_options.is_some() {
            UpstreamProtocol::Http2
        } else {
            UpstreamProtocol::Http1
        };
        for (key, any) in &c.typed_extension_protocol_options {
            if key != HTTP_OPTIONS {
                return Err(bad(unsupported(&format!(
                    "typed_extension_protocol_options[{key:?}]"
                ))));
            }
            let opts: HttpProtocolOptions = decode(any, HTTP_OPTIONS_TYPE, key).map_err(bad)?;
            use http_protocol_options::UpstreamProtocolOptions as U;
            use http_protocol_options::explicit_http_config::ProtocolConfig as P;
            match &opts.upstream_protocol_options {
                Some(U::ExplicitHttpConfig(e)) => match &e.protocol_config {
                    Some(P::Http2ProtocolOptions(_)) => protocol = UpstreamProtocol::Http2,
                    Some(P::Http3ProtocolOptions(_)) => {
                        return Err(bad(unsupported("upstream HTTP/3")));
                    }
                    _ => {}
                },
                // Ignored, as docs/xds-support.md says: strait-proxy speaks HTTP/1.1 upstream
                // whatever the downstream protocol (this slice serves HTTP/1.1 downstream).
                Some(U::UseDownstreamProtocolConfig(_)) | Some(U::AutoConfig(_)) | None => {}
            }
        }
        let mut endpoints = Vec::new();
        if let Some(cla) = &c.load_assignment {
            if matches!(discovery, Discovery::Eds(_)) {
                return Err(bad(
                    "an EDS cluster must not have a load_assignment".to_string()
                ));
            }
            endpoints = load_assignment(cla, discovery == Discovery::Dns)
                .map_err(|e| bad(format!("load_assignment: {e}")))?;
        }
        let original_dst_header = match &c.lb_config {
            Some(pb::cluster::LbConfig::OriginalDstLbConfig(o))
                if discovery == Discovery::OriginalDst =>
            {
                refuse(
                    o.upstream_port_override.is_some(),
                    "original_dst_lb_config.upstream_port_override",
                )?;
                refuse(
                    o.metadata_key.is_some(),
                    "original_dst_lb_config.metadata_key",
                )?;
                o.use_http_header.then(|| {
                    if o.http_header_name.is_empty() {
                        "x-envoy-original-dst-host".to_string()
                    } else {
                        o.http_header_name.to_ascii_lowercase()
                    }
                })
            }
            _ => None,
        };
        Ok(Cluster {
            name: c.name.clone(),
            discovery,
            lb,
            original_dst_header,
            connect_timeout: c
                .connect_timeout
                .as_ref()
                .map(|d| Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32))
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
            balancer: Default::default(),
        })
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
pub fn load_assignment(cla: &ClusterLoadAssignment, dns: bool) -> Result<Vec<Endpoint>, String> {
    let mut out = Vec::new();
    for (i, locality) in cla.endpoints.iter().enumerate() {
        for (j, lb) in locality.lb_endpoints.iter().enumerate() {
            let field = format!("endpoints[{i}].lb_endpoints[{j}]");
            let healthy = !matches!(
                HealthStatus::try_from(lb.health_status),
                Ok(HealthStatus::Unhealthy | HealthStatus::Draining | HealthStatus::Timeout)
            );
            let Some(lb_endpoint::HostIdentifier::Endpoint(e)) = &lb.host_identifier else {
                return Err(unsupported(&format!("{field} named endpoints")));
            };
            let endpoint = if dns {
                dns_endpoint(e.address.as_ref()).map_err(|r| format!("{field}.address: {r}"))?
            } else {
                let a = socket_addr(e.address.as_ref(), &format!("{field}.endpoint.address"))?;
                Endpoint {
                    host: a.ip().to_string(),
                    port: a.port(),
                }
            };
            if healthy {
                out.push(endpoint);
            }
        }
    }
    Ok(out)
}

fn dns_endpoint(
    address: Option<&envoy_types::pb::envoy::config::core::v3::Address>,
) -> Result<Endpoint, String> {
    use envoy_types::pb::envoy::config::core::v3::{address, socket_address};
    match address.and_then(|a| a.address.as_ref()) {
        Some(address::Address::SocketAddress(sa)) => match sa.port_specifier {
            Some(socket_address::PortSpecifier::PortValue(p)) => Ok(Endpoint {
                host: sa.address.clone(),
                port: u16::try_from(p).map_err(|_| format!("port {p} is too large"))?,
            }),
            _ => Err(unsupported("named_port")),
        },
        _ => Err("must be a socket address".to_string()),
    }
}

/// A ClusterLoadAssignment's endpoints, or why they cannot be used.
pub fn endpoints(cla: &ClusterLoadAssignment) -> Result<Vec<Endpoint>, Invalid> {
    load_assignment(cla, false)
        .map_err(|reason| Invalid::new("cluster load assignment", &cla.cluster_name, reason))
}
