//! Listeners: a TCP address, filter chains chosen per connection by their match (destination
//! port and address), and in each chain one network filter: an HTTP connection manager or a
//! TCP proxy. This covers the no-capture sidecar (the `IP_15080` HTTP proxy listener, the
//! inbound `IP_PORT` listeners and the TCP service listeners), gateways, and the iptables-mode
//! `virtualOutbound` (`use_original_dst`) and `virtualInbound` (`original_dst` listener filter).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{CidrRange, config_source};
use envoy_types::pb::envoy::config::listener::v3 as pb;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as http_connection_manager_pb;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager,
    http_connection_manager::RouteSpecifier,
    http_connection_manager::{CodecType, ServerHeaderTransformation},
    http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use serde::Serialize;

use super::invalid::{At, Invalid, Kind, Refusal, Segment, refuse_if};
use super::proto::{decode, duration, socket_addr};
use super::route::{RouteConfig, Target, WeightedCluster, route_config};

const HCM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const TCP_PROXY_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
const ORIGINAL_DST_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst";
/// The HTTP filters strait-proxy runs (the router last), by type URL.
const ROUTER_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
const FAULT_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";
const CORS_FILTER_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors";
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

impl TryFrom<&pb::Listener> for Listener {
    type Error = Invalid;

    fn try_from(l: &pb::Listener) -> Result<Listener, Invalid> {
        listener(l).map_err(|r| r.of(Kind::Listener, &l.name))
    }
}

fn listener(l: &pb::Listener) -> Result<Listener, Refusal> {
    let address = socket_addr(l.address.as_ref(), "address")?;
    refuse_if(!l.additional_addresses.is_empty(), "additional_addresses")?;
    refuse_if(l.filter_chain_matcher.is_some(), "filter_chain_matcher")?;
    refuse_if(l.fcds_config.is_some(), "fcds_config")?;
    refuse_if(l.api_listener.is_some(), "api_listener")?;
    refuse_if(l.listener_specifier.is_some(), "internal_listener")?;
    refuse_if(l.udp_listener_config.is_some(), "udp_listener_config")?;
    if l.transparent.as_ref().is_some_and(|b| b.value) {
        return Err(Refusal::unsupported_value("transparent", "(TPROXY)"));
    }
    let mut original_dst = false;
    for (i, f) in l.listener_filters.iter().enumerate() {
        let type_url = match &f.config_type {
            Some(pb::listener_filter::ConfigType::TypedConfig(any)) => any.type_url.as_str(),
            _ => "",
        };
        if type_url != ORIGINAL_DST_TYPE {
            return Err(
                Refusal::unsupported_value("", format!("{:?} ({type_url})", f.name))
                    .at(Segment::Index(i))
                    .under("listener_filters"),
            );
        }
        original_dst = true;
    }
    let filter_chains = l
        .filter_chains
        .iter()
        .enumerate()
        .map(|(i, c)| filter_chain(c).index(i))
        .collect::<Result<Vec<_>, _>>()
        .under("filter_chains")?;
    let default_filter_chain = l
        .default_filter_chain
        .as_ref()
        .map(filter_chain)
        .transpose()
        .under("default_filter_chain")?;
    if filter_chains.is_empty() && default_filter_chain.is_none() {
        return Err(Refusal::rule(
            "filter_chains",
            "no filter chains and no default_filter_chain: the listener could take no connection",
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

fn filter_chain(c: &pb::FilterChain) -> Result<FilterChain, Refusal> {
    if c.transport_socket.is_some() {
        return Err(Refusal::unsupported_value("transport_socket", "(TLS)"));
    }
    #[allow(deprecated)]
    refuse_if(
        c.use_proxy_proto.as_ref().is_some_and(|b| b.value),
        "use_proxy_proto",
    )?;
    let matcher = match &c.filter_chain_match {
        None => ChainMatch::default(),
        Some(m) => chain_match(m).under("filter_chain_match")?,
    };
    let [filter] = c.filters.as_slice() else {
        return Err(Refusal::unsupported_value(
            "filters",
            format!(
                "with {} network filters (strait-proxy takes exactly one: http_connection_manager or tcp_proxy)",
                c.filters.len()
            ),
        ));
    };
    Ok(FilterChain {
        name: c.name.clone(),
        matcher,
        filter: network_filter(filter).index(0).under("filters")?,
    })
}

fn chain_match(m: &pb::FilterChainMatch) -> Result<ChainMatch, Refusal> {
    if !m.server_names.is_empty() {
        return Err(Refusal::unsupported_value(
            "server_names",
            "(TLS passthrough by SNI)",
        ));
    }
    refuse_if(!m.transport_protocol.is_empty(), "transport_protocol")?;
    refuse_if(!m.application_protocols.is_empty(), "application_protocols")?;
    refuse_if(!m.source_prefix_ranges.is_empty(), "source_prefix_ranges")?;
    refuse_if(
        !m.direct_source_prefix_ranges.is_empty(),
        "direct_source_prefix_ranges",
    )?;
    refuse_if(!m.source_ports.is_empty(), "source_ports")?;
    refuse_if(m.source_type != 0, "source_type")?;
    refuse_if(!m.address_suffix.is_empty(), "address_suffix")?;
    refuse_if(m.suffix_len.is_some(), "suffix_len")?;
    let destination_port = m
        .destination_port
        .as_ref()
        .map(|p| {
            u16::try_from(p.value).map_err(|_| {
                Refusal::bad_value("destination_port", p.value, "a port (at most 65535)")
            })
        })
        .transpose()?;
    let prefix_ranges = m
        .prefix_ranges
        .iter()
        .enumerate()
        .map(|(i, r)| cidr(r).index(i))
        .collect::<Result<_, _>>()
        .under("prefix_ranges")?;
    Ok(ChainMatch {
        destination_port,
        prefix_ranges,
    })
}

fn cidr(r: &CidrRange) -> Result<Cidr, Refusal> {
    let address: IpAddr = r.address_prefix.parse().map_err(|_| {
        Refusal::bad_value(
            "address_prefix",
            format!("{:?}", r.address_prefix),
            "an IP address",
        )
    })?;
    let max = if address.is_ipv4() { 32 } else { 128 };
    let len = r.prefix_len.as_ref().map_or(max, |l| l.value);
    let prefix_len = u8::try_from(len)
        .ok()
        .filter(|l| u32::from(*l) <= max)
        .ok_or_else(|| {
            Refusal::bad_value(
                "prefix_len",
                len,
                format!("a prefix length of at most {max}"),
            )
        })?;
    Ok(Cidr {
        address,
        prefix_len,
    })
}

fn network_filter(filter: &pb::Filter) -> Result<NetworkFilter, Refusal> {
    let any = match &filter.config_type {
        Some(pb::filter::ConfigType::TypedConfig(any)) => any,
        _ => return Err(Refusal::missing("typed_config")),
    };
    let at_config = |r: Refusal| r.under("typed_config");
    match any.type_url.as_str() {
        HCM_TYPE => Ok(NetworkFilter::Http(Arc::new(
            http_connection_manager(&decode(any, HCM_TYPE).map_err(at_config)?)
                .map_err(at_config)?,
        ))),
        TCP_PROXY_TYPE => Ok(NetworkFilter::Tcp(
            tcp_proxy(decode(any, TCP_PROXY_TYPE).map_err(at_config)?).map_err(at_config)?,
        )),
        // strait-proxy runs only these two network filters.
        other => Err(Refusal::unsupported_value(
            "",
            format!("{:?} ({other})", filter.name),
        )),
    }
}

fn tcp_proxy(t: TcpProxy) -> Result<TcpProxyConfig, Refusal> {
    refuse_if(t.on_demand.is_some(), "on_demand")?;
    refuse_if(t.metadata_match.is_some(), "metadata_match")?;
    refuse_if(t.tunneling_config.is_some(), "tunneling_config")?;
    refuse_if(!t.hash_policy.is_empty(), "hash_policy")?;
    if let Some(n) = t.max_connect_attempts.as_ref().filter(|n| n.value > 1) {
        return Err(Refusal::unsupported_value(
            "max_connect_attempts",
            format!("{} (above 1)", n.value),
        ));
    }
    refuse_if(
        t.max_downstream_connection_duration.is_some(),
        "max_downstream_connection_duration",
    )?;
    refuse_if(!t.proxy_protocol_tlvs.is_empty(), "proxy_protocol_tlvs")?;
    let target = match t.cluster_specifier {
        Some(tcp_proxy::ClusterSpecifier::Cluster(name)) => Target::Cluster(name),
        Some(tcp_proxy::ClusterSpecifier::WeightedClusters(w)) => {
            tcp_weighted(w).under("weighted_clusters")?
        }
        None => return Err(Refusal::missing("cluster")),
    };
    Ok(TcpProxyConfig {
        target,
        idle_timeout: match &t.idle_timeout {
            None => Some(DEFAULT_TCP_IDLE_TIMEOUT),
            Some(d) => Some(duration(d)).filter(|d| !d.is_zero()),
        },
    })
}

fn tcp_weighted(w: tcp_proxy::WeightedCluster) -> Result<Target, Refusal> {
    let clusters: Vec<WeightedCluster> = w
        .clusters
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            refuse_if(c.metadata_match.is_some(), "metadata_match").index(i)?;
            Ok(WeightedCluster {
                name: c.name,
                weight: c.weight,
                headers: None,
            })
        })
        .collect::<Result<_, Refusal>>()
        .under("clusters")?;
    if clusters.iter().all(|c| c.weight == 0) {
        return Err(Refusal::rule("clusters", "no cluster has a weight above 0"));
    }
    Ok(Target::Weighted(clusters))
}

fn http_connection_manager(hcm: &HttpConnectionManager) -> Result<HttpListener, Refusal> {
    let codec = match CodecType::try_from(hcm.codec_type) {
        Ok(CodecType::Auto) => Codec::Auto,
        Ok(CodecType::Http1) => Codec::Http1,
        Ok(CodecType::Http2) => Codec::Http2,
        _ => return Err(Refusal::unsupported_value("codec_type", "HTTP3")),
    };
    let routes = route_source(hcm)?;
    http_filters(&hcm.http_filters).under("http_filters")?;
    let upgrades = upgrades(&hcm.upgrade_configs).under("upgrade_configs")?;
    let server_header = match ServerHeaderTransformation::try_from(hcm.server_header_transformation)
    {
        Ok(ServerHeaderTransformation::Overwrite) => ServerHeader::Overwrite,
        Ok(ServerHeaderTransformation::AppendIfAbsent) => ServerHeader::AppendIfAbsent,
        Ok(ServerHeaderTransformation::PassThrough) => ServerHeader::PassThrough,
        Err(_) => {
            return Err(Refusal::bad_value(
                "server_header_transformation",
                hcm.server_header_transformation,
                "one Envoy knows",
            ));
        }
    };
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
        server_header,
    })
}

/// `rds` (over ADS) or an inline `route_config`.
fn route_source(hcm: &HttpConnectionManager) -> Result<RouteSource, Refusal> {
    match &hcm.route_specifier {
        Some(RouteSpecifier::Rds(rds)) => {
            let ads = rds.config_source.as_ref().is_some_and(|c| {
                matches!(
                    c.config_source_specifier,
                    Some(config_source::ConfigSourceSpecifier::Ads(_))
                )
            });
            if !ads {
                return Err(Refusal::unsupported_value(
                    "rds.config_source",
                    "other than ads",
                ));
            }
            Ok(RouteSource::Rds(rds.route_config_name.clone()))
        }
        Some(RouteSpecifier::RouteConfig(rc)) => Ok(RouteSource::Inline(Box::new(
            route_config(rc).under("route_config")?,
        ))),
        Some(RouteSpecifier::ScopedRoutes(_)) => Err(Refusal::unsupported("scoped_routes")),
        None => Err(Refusal::missing("rds")),
    }
}

/// The HTTP filters: the router (last), and the fault and CORS filters, which act through each
/// route's `typed_per_filter_config`.
fn http_filters(filters: &[http_connection_manager_pb::HttpFilter]) -> Result<(), Refusal> {
    let mut router = false;
    for (i, f) in filters.iter().enumerate() {
        let at = |r: Refusal| r.at(Segment::Index(i));
        if router {
            return Err(at(Refusal::rule(
                "",
                "comes after the router: the router must be last",
            )));
        }
        let any = match &f.config_type {
            Some(http_filter::ConfigType::TypedConfig(any)) => any,
            _ => return Err(at(Refusal::missing("typed_config"))),
        };
        match any.type_url.as_str() {
            ROUTER_TYPE => router = true,
            // A filter-level fault (applied to every route) is not supported.
            FAULT_TYPE => {
                let fault: HttpFault =
                    decode(any, FAULT_TYPE).map_err(|r| at(r.under("typed_config")))?;
                refuse_if(fault.delay.is_some(), "typed_config.delay").map_err(at)?;
                refuse_if(fault.abort.is_some(), "typed_config.abort").map_err(at)?;
            }
            // The filter-level CORS config has nothing strait-proxy needs.
            CORS_FILTER_TYPE => {}
            other => {
                return Err(at(Refusal::unsupported_value(
                    "",
                    format!("{:?} ({other})", f.name),
                )));
            }
        }
    }
    if !router {
        return Err(Refusal::missing("envoy.filters.http.router"));
    }
    Ok(())
}

fn upgrades(
    configs: &[http_connection_manager_pb::http_connection_manager::UpgradeConfig],
) -> Result<Vec<String>, Refusal> {
    let mut upgrades = Vec::new();
    for (i, u) in configs.iter().enumerate() {
        refuse_if(!u.filters.is_empty(), "filters").index(i)?;
        if u.enabled.as_ref().is_none_or(|b| b.value) {
            upgrades.push(u.upgrade_type.to_ascii_lowercase());
        }
    }
    Ok(upgrades)
}
