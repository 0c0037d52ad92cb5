//! Listeners: a TCP address, filter chains chosen per connection by their match (destination
//! port and address), and in each chain one network filter: an HTTP connection manager or a
//! TCP proxy. This covers the no-capture sidecar (the `IP_15080` HTTP proxy listener, the
//! inbound `IP_PORT` listeners and the TCP service listeners), gateways, and the iptables-mode
//! `virtualOutbound` (`use_original_dst`) and `virtualInbound` (`original_dst` listener filter).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{
    Address, CidrRange, address, config_source, socket_address,
};
use envoy_types::pb::envoy::config::listener::v3 as pb;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager,
    http_connection_manager::RouteSpecifier,
    http_connection_manager::{CodecType, ServerHeaderTransformation},
    http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::google::protobuf::Any;
use serde::Serialize;

use super::route::{RouteConfig, Target, WeightedCluster};
use super::{Invalid, unsupported};

const HCM: &str = "envoy.filters.network.http_connection_manager";
const HCM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const TCP_PROXY: &str = "envoy.filters.network.tcp_proxy";
const TCP_PROXY_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
const ORIGINAL_DST_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst";
/// The HTTP filters strait-proxy runs (the router last), by type URL.
const ROUTER_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
const FAULT_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";
const CORS_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors";
/// Envoy's tcp_proxy idle timeout when none is set.
const DEFAULT_TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// A listener strait-proxy serves.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    /// False (`bind_to_port: false`): no socket of its own; `virtualOutbound` hands it the
    /// connections whose original destination is its address.
    pub bind: bool,
    /// `use_original_dst`: hand each connection to the listener of its original destination.
    pub use_original_dst: bool,
    /// The `original_dst` listener filter: the connection's destination is its original one
    /// (SO_ORIGINAL_DST, as iptables REDIRECT left it), for filter chain matches and
    /// ORIGINAL_DST clusters.
    pub original_dst: bool,
    pub filter_chains: Vec<FilterChain>,
    pub default_filter_chain: Option<FilterChain>,
}

/// A filter chain: when it applies, and its one network filter.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FilterChain {
    pub name: String,
    #[serde(rename = "filter_chain_match")]
    pub matcher: ChainMatch,
    pub filter: NetworkFilter,
}

/// The parts of Envoy's `FilterChainMatch` strait-proxy reads.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ChainMatch {
    pub destination_port: Option<u16>,
    /// The destination address is in one of these (empty: any).
    pub prefix_ranges: Vec<Cidr>,
}

/// An address range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Cidr {
    pub address: IpAddr,
    pub prefix_len: u8,
}

impl Cidr {
    /// Whether `ip` is in the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        fn bits(a: &[u8], b: &[u8], len: u8) -> bool {
            let (full, rest) = (usize::from(len / 8), len % 8);
            a[..full] == b[..full]
                && (rest == 0 || (a[full] ^ b[full]) & (0xffu8 << (8 - rest)) == 0)
        }
        match (self.address, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => bits(&a.octets(), &b.octets(), self.prefix_len),
            (IpAddr::V6(a), IpAddr::V6(b)) => bits(&a.octets(), &b.octets(), self.prefix_len),
            _ => false,
        }
    }
}

/// A filter chain's network filter.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum NetworkFilter {
    #[serde(rename = "http_connection_manager")]
    Http(Arc<HttpListener>),
    #[serde(rename = "tcp_proxy")]
    Tcp(TcpProxyConfig),
}

/// An `envoy.filters.network.tcp_proxy`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TcpProxyConfig {
    /// A cluster, or weighted clusters (a random pick by weight per connection).
    pub target: Target,
    /// Close the connection after this long without bytes either way (`None`: never).
    #[serde(serialize_with = "super::secs::option")]
    pub idle_timeout: Option<Duration>,
}

/// An HTTP connection manager.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HttpListener {
    pub routes: RouteSource,
    /// Add an `x-request-id` to requests that have none.
    pub generate_request_id: bool,
    /// HTTP/1.1 only (`HTTP1`), HTTP/2 only (`HTTP2`) or either (`AUTO`, the default).
    pub codec: Codec,
    /// The peer is the client (an edge proxy: gateways): append it to `x-forwarded-for` and
    /// set `x-forwarded-proto`. Otherwise `x-forwarded-proto` is only added when missing.
    pub use_remote_address: bool,
    /// The HTTP/1.1 upgrades allowed (`upgrade_configs`, lowercase: `websocket`); any other is
    /// answered 403, as Envoy does.
    pub upgrades: Vec<String>,
    /// The `server` response header's value (`server_name`; Envoy's default `envoy`).
    pub server_name: String,
    /// What happens to the upstream's `server` header (`server_header_transformation`).
    pub server_header: ServerHeader,
}

/// Envoy's `server_header_transformation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ServerHeader {
    /// Always `server_name` (Envoy's default).
    Overwrite,
    /// The upstream's, else `server_name`.
    AppendIfAbsent,
    /// The upstream's, or none.
    PassThrough,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Codec {
    Auto,
    Http1,
    Http2,
}

/// Where an HTTP listener's routes come from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum RouteSource {
    /// A route configuration by name, over RDS (ADS).
    Rds(String),
    /// Inline in the listener.
    Inline(Box<RouteConfig>),
}

impl Listener {
    /// Every HTTP connection manager of the listener (for RDS subscriptions).
    pub fn http_filters(&self) -> impl Iterator<Item = &HttpListener> {
        self.filter_chains
            .iter()
            .chain(&self.default_filter_chain)
            .filter_map(|c| match &c.filter {
                NetworkFilter::Http(h) => Some(h.as_ref()),
                NetworkFilter::Tcp(_) => None,
            })
    }

    /// The filter chain for a connection to `destination`, as Envoy picks it: the chains whose
    /// `destination_port` is the connection's, else those without one; among them those whose
    /// `prefix_ranges` hold the address most specifically, else those without ranges; then the
    /// first. None matching: the default filter chain, if any.
    pub fn chain_for(&self, destination: SocketAddr) -> Option<&FilterChain> {
        let by_port: Vec<&FilterChain> = {
            let exact: Vec<&FilterChain> = self
                .filter_chains
                .iter()
                .filter(|c| c.matcher.destination_port == Some(destination.port()))
                .collect();
            if exact.is_empty() {
                self.filter_chains
                    .iter()
                    .filter(|c| c.matcher.destination_port.is_none())
                    .collect()
            } else {
                exact
            }
        };
        let ip = destination.ip();
        let longest = |c: &FilterChain| {
            c.matcher
                .prefix_ranges
                .iter()
                .filter(|r| r.contains(ip))
                .map(|r| r.prefix_len)
                .max()
        };
        by_port
            .iter()
            .filter_map(|c| longest(c).map(|len| (len, *c)))
            .fold(
                None,
                |best: Option<(u8, &FilterChain)>, (len, c)| match best {
                    Some((l, _)) if l >= len => best,
                    _ => Some((len, c)),
                },
            )
            .map(|(_, c)| c)
            .or_else(|| {
                by_port
                    .into_iter()
                    .find(|c| c.matcher.prefix_ranges.is_empty())
            })
            .or(self.default_filter_chain.as_ref())
    }
}

/// Decodes an `Any` of the expected type.
pub(crate) fn decode<M: prost::Message + Default>(
    any: &Any,
    want: &str,
    field: &str,
) -> Result<M, String> {
    if any.type_url != want {
        return Err(format!(
            "{field} has type {}, expected {want}",
            any.type_url
        ));
    }
    M::decode(any.value.as_slice()).map_err(|e| format!("{field} does not decode: {e}"))
}

/// A TCP socket address.
pub(crate) fn socket_addr(address: Option<&Address>, field: &str) -> Result<SocketAddr, String> {
    let Some(address::Address::SocketAddress(sa)) = address.and_then(|a| a.address.as_ref()) else {
        return Err(format!(
            "{field} must be a socket address: pipes and internal listeners are not supported by strait-proxy"
        ));
    };
    if sa.protocol != socket_address::Protocol::Tcp as i32 {
        return Err(unsupported(&format!("{field}.protocol UDP")));
    }
    let Some(socket_address::PortSpecifier::PortValue(port)) = sa.port_specifier else {
        return Err(unsupported(&format!("{field}.named_port")));
    };
    let ip = sa
        .address
        .parse()
        .map_err(|_| format!("{field}.address {:?} is not an IP address", sa.address))?;
    let port =
        u16::try_from(port).map_err(|_| format!("{field}.port_value {port} is too large"))?;
    Ok(SocketAddr::new(ip, port))
}

fn pb_duration(d: &envoy_types::pb::google::protobuf::Duration) -> Duration {
    Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32)
}

impl TryFrom<&pb::Listener> for Listener {
    type Error = Invalid;

    fn try_from(l: &pb::Listener) -> Result<Listener, Invalid> {
        let bad = |reason: String| Invalid::new("listener", &l.name, reason);
        let refuse = |cond: bool, field: &str| {
            if cond {
                Err(bad(unsupported(field)))
            } else {
                Ok(())
            }
        };
        let address = socket_addr(l.address.as_ref(), "address").map_err(bad)?;
        refuse(!l.additional_addresses.is_empty(), "additional_addresses")?;
        refuse(l.filter_chain_matcher.is_some(), "filter_chain_matcher")?;
        refuse(l.fcds_config.is_some(), "fcds_config")?;
        refuse(l.api_listener.is_some(), "api_listener")?;
        refuse(l.listener_specifier.is_some(), "internal_listener")?;
        refuse(l.udp_listener_config.is_some(), "udp_listener_config")?;
        refuse(
            l.transparent.as_ref().is_some_and(|b| b.value),
            "transparent (TPROXY)",
        )?;
        let mut original_dst = false;
        for (i, f) in l.listener_filters.iter().enumerate() {
            let type_url = match &f.config_type {
                Some(pb::listener_filter::ConfigType::TypedConfig(any)) => any.type_url.as_str(),
                _ => "",
            };
            if type_url != ORIGINAL_DST_TYPE {
                return Err(bad(unsupported(&format!(
                    "listener_filters[{i}] {:?} ({type_url})",
                    f.name
                ))));
            }
            original_dst = true;
        }
        let filter_chains = l
            .filter_chains
            .iter()
            .enumerate()
            .map(|(i, c)| filter_chain(c).map_err(|e| format!("filter_chains[{i}]: {e}")))
            .collect::<Result<Vec<_>, _>>()
            .map_err(bad)?;
        let default_filter_chain = l
            .default_filter_chain
            .as_ref()
            .map(|c| filter_chain(c).map_err(|e| format!("default_filter_chain: {e}")))
            .transpose()
            .map_err(bad)?;
        if filter_chains.is_empty() && default_filter_chain.is_none() {
            return Err(bad(
                "has no filter chains and no default_filter_chain".to_string()
            ));
        }
        Ok(Listener {
            name: l.name.clone(),
            address,
            bind: l.bind_to_port.as_ref().is_none_or(|b| b.value),
            use_original_dst: l.use_original_dst.as_ref().is_some_and(|b| b.value),
            original_dst,
            filter_chains,
            default_filter_chain,
        })
    }
}

fn filter_chain(c: &pb::FilterChain) -> Result<FilterChain, String> {
    if c.transport_socket.is_some() {
        return Err(unsupported("transport_socket (TLS)"));
    }
    #[allow(deprecated)]
    if c.use_proxy_proto.as_ref().is_some_and(|b| b.value) {
        return Err(unsupported("use_proxy_proto"));
    }
    let matcher = match &c.filter_chain_match {
        None => ChainMatch::default(),
        Some(m) => chain_match(m).map_err(|e| format!("filter_chain_match.{e}"))?,
    };
    let [filter] = c.filters.as_slice() else {
        return Err(format!(
            "{} network filters: strait-proxy supports exactly one (http_connection_manager or tcp_proxy)",
            c.filters.len()
        ));
    };
    Ok(FilterChain {
        name: c.name.clone(),
        matcher,
        filter: network_filter(filter)?,
    })
}

fn chain_match(m: &pb::FilterChainMatch) -> Result<ChainMatch, String> {
    if !m.server_names.is_empty() {
        return Err(unsupported("server_names (TLS passthrough by SNI)"));
    }
    let refuse = |cond: bool, field: &str| {
        if cond {
            Err(unsupported(field))
        } else {
            Ok(())
        }
    };
    refuse(!m.transport_protocol.is_empty(), "transport_protocol")?;
    refuse(!m.application_protocols.is_empty(), "application_protocols")?;
    refuse(
        !m.source_prefix_ranges.is_empty()
            || !m.direct_source_prefix_ranges.is_empty()
            || !m.source_ports.is_empty()
            || m.source_type != 0,
        "source matches",
    )?;
    refuse(
        !m.address_suffix.is_empty() || m.suffix_len.is_some(),
        "address_suffix",
    )?;
    let destination_port = m
        .destination_port
        .as_ref()
        .map(|p| {
            u16::try_from(p.value).map_err(|_| format!("destination_port {} is too large", p.value))
        })
        .transpose()?;
    let prefix_ranges = m.prefix_ranges.iter().map(cidr).collect::<Result<_, _>>()?;
    Ok(ChainMatch {
        destination_port,
        prefix_ranges,
    })
}

fn cidr(r: &CidrRange) -> Result<Cidr, String> {
    let address: IpAddr = r
        .address_prefix
        .parse()
        .map_err(|_| format!("prefix_ranges {:?} is not an IP address", r.address_prefix))?;
    let max = if address.is_ipv4() { 32 } else { 128 };
    let len = r.prefix_len.as_ref().map_or(max, |l| l.value);
    let prefix_len = u8::try_from(len)
        .ok()
        .filter(|l| u32::from(*l) <= max)
        .ok_or_else(|| {
            format!(
                "prefix_ranges {:?}/{len}: the length is out of range",
                r.address_prefix
            )
        })?;
    Ok(Cidr {
        address,
        prefix_len,
    })
}

fn network_filter(filter: &pb::Filter) -> Result<NetworkFilter, String> {
    let any = match &filter.config_type {
        Some(pb::filter::ConfigType::TypedConfig(any)) => any,
        _ => return Err(format!("filter {:?} has no typed_config", filter.name)),
    };
    match any.type_url.as_str() {
        HCM_TYPE => Ok(NetworkFilter::Http(Arc::new(http_connection_manager(any)?))),
        TCP_PROXY_TYPE => Ok(NetworkFilter::Tcp(tcp_proxy(decode(
            any,
            TCP_PROXY_TYPE,
            TCP_PROXY,
        )?)?)),
        other => Err(format!(
            "filter {:?} ({other}) is not supported by strait-proxy (only {HCM} and {TCP_PROXY})",
            filter.name
        )),
    }
}

fn tcp_proxy(t: TcpProxy) -> Result<TcpProxyConfig, String> {
    let refuse = |cond: bool, field: &str| {
        if cond {
            Err(unsupported(&format!("tcp_proxy.{field}")))
        } else {
            Ok(())
        }
    };
    refuse(t.on_demand.is_some(), "on_demand")?;
    refuse(t.metadata_match.is_some(), "metadata_match")?;
    refuse(t.tunneling_config.is_some(), "tunneling_config")?;
    refuse(!t.hash_policy.is_empty(), "hash_policy")?;
    refuse(
        t.max_connect_attempts.as_ref().is_some_and(|n| n.value > 1),
        "max_connect_attempts above 1",
    )?;
    refuse(
        t.max_downstream_connection_duration.is_some(),
        "max_downstream_connection_duration",
    )?;
    refuse(!t.proxy_protocol_tlvs.is_empty(), "proxy_protocol_tlvs")?;
    let target = match t.cluster_specifier {
        Some(tcp_proxy::ClusterSpecifier::Cluster(name)) => Target::Cluster(name),
        Some(tcp_proxy::ClusterSpecifier::WeightedClusters(w)) => {
            let clusters: Vec<WeightedCluster> = w
                .clusters
                .into_iter()
                .map(|c| {
                    if c.metadata_match.is_some() {
                        return Err(unsupported(&format!(
                            "tcp_proxy.weighted_clusters[{:?}].metadata_match",
                            c.name
                        )));
                    }
                    Ok(WeightedCluster {
                        name: c.name,
                        weight: c.weight,
                    })
                })
                .collect::<Result<_, _>>()?;
            if clusters.iter().all(|c| c.weight == 0) {
                return Err(
                    "tcp_proxy.weighted_clusters has no cluster with a weight above 0".to_string(),
                );
            }
            Target::Weighted(clusters)
        }
        None => return Err("tcp_proxy has no cluster".to_string()),
    };
    Ok(TcpProxyConfig {
        target,
        idle_timeout: match &t.idle_timeout {
            None => Some(DEFAULT_TCP_IDLE_TIMEOUT),
            Some(d) => Some(pb_duration(d)).filter(|d| !d.is_zero()),
        },
    })
}

fn http_connection_manager(any: &Any) -> Result<HttpListener, String> {
    let hcm: HttpConnectionManager = decode(any, HCM_TYPE, HCM)?;
    let codec = match CodecType::try_from(hcm.codec_type) {
        Ok(CodecType::Auto) => Codec::Auto,
        Ok(CodecType::Http1) => Codec::Http1,
        Ok(CodecType::Http2) => Codec::Http2,
        _ => return Err(unsupported("http_connection_manager.codec_type HTTP3")),
    };
    let routes = match &hcm.route_specifier {
        Some(RouteSpecifier::Rds(rds)) => {
            let ads = rds.config_source.as_ref().is_some_and(|c| {
                matches!(
                    c.config_source_specifier,
                    Some(config_source::ConfigSourceSpecifier::Ads(_))
                )
            });
            if !ads {
                return Err(unsupported(
                    "http_connection_manager.rds.config_source other than ads",
                ));
            }
            RouteSource::Rds(rds.route_config_name.clone())
        }
        Some(RouteSpecifier::RouteConfig(rc)) => {
            RouteSource::Inline(Box::new(RouteConfig::try_from(rc).map_err(|e| e.reason)?))
        }
        Some(RouteSpecifier::ScopedRoutes(_)) => {
            return Err(unsupported("http_connection_manager.scoped_routes"));
        }
        None => return Err("http_connection_manager has no route_config or rds".to_string()),
    };
    let mut router = false;
    for (i, f) in hcm.http_filters.iter().enumerate() {
        if router {
            return Err(format!(
                "http filter {:?} comes after the router: the router must be last",
                f.name
            ));
        }
        let type_url = match &f.config_type {
            Some(http_filter::ConfigType::TypedConfig(any)) => any.type_url.as_str(),
            _ => "",
        };
        match type_url {
            ROUTER_TYPE => router = true,
            // The fault filter acts through each route's typed_per_filter_config; a filter-level
            // fault (applied to every route) is not supported.
            FAULT_TYPE => {
                let Some(http_filter::ConfigType::TypedConfig(any)) = &f.config_type else {
                    unreachable!("matched on its type URL");
                };
                let fault: envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault =
                    decode(any, FAULT_TYPE, &f.name)?;
                if fault.delay.is_some() || fault.abort.is_some() {
                    return Err(unsupported(&format!(
                        "http_filters[{i}] {:?} with a listener-wide delay or abort",
                        f.name
                    )));
                }
            }
            // CORS acts only through route policies, which strait-proxy refuses (see route.rs).
            CORS_TYPE => {}
            _ => {
                return Err(format!(
                    "http filter {:?} ({type_url}) is not supported by strait-proxy",
                    f.name
                ));
            }
        }
    }
    if !router {
        return Err("http_connection_manager has no envoy.filters.http.router".to_string());
    }
    let mut upgrades = Vec::new();
    for (i, u) in hcm.upgrade_configs.iter().enumerate() {
        if !u.filters.is_empty() {
            return Err(unsupported(&format!(
                "http_connection_manager.upgrade_configs[{i}] ({:?}) with filters",
                u.upgrade_type
            )));
        }
        if u.enabled.as_ref().is_none_or(|b| b.value) {
            upgrades.push(u.upgrade_type.to_ascii_lowercase());
        }
    }
    Ok(HttpListener {
        routes,
        generate_request_id: hcm.generate_request_id.as_ref().is_none_or(|b| b.value),
        codec,
        use_remote_address: hcm.use_remote_address.as_ref().is_some_and(|b| b.value),
        upgrades,
        server_name: match hcm.server_name.as_str() {
            "" => "envoy".to_string(),
            name => name.to_string(),
        },
        server_header: match ServerHeaderTransformation::try_from(hcm.server_header_transformation)
        {
            Ok(ServerHeaderTransformation::Overwrite) => ServerHeader::Overwrite,
            Ok(ServerHeaderTransformation::AppendIfAbsent) => ServerHeader::AppendIfAbsent,
            Ok(ServerHeaderTransformation::PassThrough) => ServerHeader::PassThrough,
            Err(_) => {
                return Err(format!(
                    "http_connection_manager.server_header_transformation {} is not one Envoy knows",
                    hcm.server_header_transformation
                ));
            }
        },
    })
}
