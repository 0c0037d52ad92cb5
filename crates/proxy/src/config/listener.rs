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
use strait_telemetry::MetricSet;

use super::invalid::{At, Invalid, Kind, Refusal, Segment, refuse_if};
use super::proto::{decode, duration, socket_addr};
use super::route::{RouteConfig, Target, WeightedCluster, route_config};
use super::tls::{DownstreamTls, Socket, downstream_socket};

const HCM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const TCP_PROXY_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
const ORIGINAL_DST_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst";
const TLS_INSPECTOR_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector";
/// Envoy's `listener_filters_timeout` when none is set.
const DEFAULT_LISTENER_FILTERS_TIMEOUT: Duration = Duration::from_secs(15);
/// The HTTP filters strait-proxy runs (the router last), by type URL.
const ROUTER_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
const FAULT_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";
const CORS_FILTER_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors";
const HTTP_RBAC_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
const JWT_AUTHN_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication";
const NETWORK_RBAC_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC";
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
    /// The `tls_inspector` listener filter: a connection's first bytes say whether it is TLS,
    /// and a ClientHello its server name and ALPN, for filter chain matches.
    pub tls_inspector: bool,
    /// How long the listener filters may wait for a connection's first bytes (`None`: no
    /// limit), and whether the connection then goes on as if none came (else it is closed).
    #[serde(serialize_with = "super::secs::option")]
    pub listener_filters_timeout: Option<Duration>,
    pub continue_on_listener_filters_timeout: bool,
    /// `traffic_direction: INBOUND`: the proxy is the server's sidecar for its connections
    /// (Istio's metrics: `reporter="destination"`); else the client's, or a gateway
    /// (`reporter="source"`).
    pub inbound: bool,
    /// Istio's metrics this listener's side does not report (the Telemetry API's overrides,
    /// from the listener's `istio.stats` metadata).
    #[serde(skip_serializing_if = "no_metrics", serialize_with = "metric_names")]
    pub disabled_metrics: MetricSet,
    pub filter_chains: Vec<FilterChain>,
    pub default_filter_chain: Option<FilterChain>,
}

/// A filter chain: when it applies, its transport socket (TLS terminated, or none), and its
/// one network filter.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FilterChain {
    pub name: String,
    #[serde(rename = "filter_chain_match")]
    pub matcher: ChainMatch,
    pub tls: Option<Arc<DownstreamTls>>,
    /// `envoy.filters.network.rbac` filters before the terminal filter: each decides once,
    /// when the connection opens (after TLS), and a denial closes it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rbac: Vec<Arc<strait_authz::RbacFilter>>,
    pub filter: NetworkFilter,
}

/// The parts of Envoy's `FilterChainMatch` strait-proxy reads.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ChainMatch {
    pub destination_port: Option<u16>,
    /// The destination address is in one of these (empty: any).
    pub prefix_ranges: Vec<Cidr>,
    /// The TLS server name is one of these: exact, or `*.suffix` (empty: any).
    pub server_names: Vec<String>,
    /// `tls` or `raw_buffer` (`None`: any).
    pub transport_protocol: Option<String>,
    /// One of these was offered in the ClientHello's ALPN (empty: any).
    pub application_protocols: Vec<String>,
}

/// What the listener filters learnt about a connection, for filter chain matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detected {
    /// `tls` or `raw_buffer` (Envoy's default when no listener filter says otherwise).
    pub transport_protocol: &'static str,
    pub server_name: Option<String>,
    pub alpn: Vec<String>,
}

impl Detected {
    /// A connection no listener filter looked at.
    pub fn raw() -> Detected {
        Detected {
            transport_protocol: "raw_buffer",
            server_name: None,
            alpn: Vec::new(),
        }
    }
}

/// How a chain's criterion holds for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fit {
    /// The chain sets the criterion and the connection meets it; more is more specific.
    Specific(u32),
    /// The chain does not set the criterion.
    Any,
    /// The chain sets it and the connection does not meet it.
    No,
}

/// Keeps the chains that fit best: the most specific of those that set the criterion and meet
/// it, else those that do not set it; none when every chain sets it and none meets it.
fn narrow(chains: Vec<&FilterChain>, fit: impl Fn(&ChainMatch) -> Fit) -> Vec<&FilterChain> {
    let fits: Vec<Fit> = chains.iter().map(|c| fit(&c.matcher)).collect();
    let best = fits
        .iter()
        .filter_map(|f| match f {
            Fit::Specific(n) => Some(*n),
            _ => None,
        })
        .max();
    let keep = |f: &Fit| match best {
        Some(b) => *f == Fit::Specific(b),
        None => *f == Fit::Any,
    };
    chains
        .into_iter()
        .zip(&fits)
        .filter(|(_, f)| keep(f))
        .map(|(c, _)| c)
        .collect()
}

/// How a server name fits `names`: an exact name beats any wildcard, a longer wildcard suffix
/// beats a shorter one.
fn server_name_fit(names: &[String], sni: Option<&str>) -> Fit {
    if names.is_empty() {
        return Fit::Any;
    }
    let Some(sni) = sni else { return Fit::No };
    if names.iter().any(|n| n.eq_ignore_ascii_case(sni)) {
        return Fit::Specific(u32::MAX);
    }
    names
        .iter()
        .filter_map(|n| n.strip_prefix('*'))
        .filter(|suffix| {
            sni.len() > suffix.len()
                && sni
                    .get(sni.len() - suffix.len()..)
                    .is_some_and(|end| end.eq_ignore_ascii_case(suffix))
        })
        .map(|suffix| suffix.len() as u32)
        .max()
        .map_or(Fit::No, Fit::Specific)
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
    /// What happens to `x-forwarded-client-cert` (`forward_client_cert_details`).
    pub forward_client_cert: ForwardClientCert,
    /// What the proxy adds about the client's certificate (`set_current_client_cert_details`).
    pub client_cert_details: ClientCertDetails,
    /// `envoy.filters.http.rbac` filters, in order: each decides every request before routing.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rbac: Vec<Arc<strait_authz::RbacFilter>>,
    /// `envoy.filters.http.jwt_authn`, which runs before the RBAC filters and leaves a verified
    /// token's payload in the metadata they read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_authn: Option<Arc<strait_authz::JwtAuthn>>,
    /// `envoy.filters.http.local_ratelimit`: runs after the authentication and authorization
    /// filters, once the route is chosen (a route's own config replaces this one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_ratelimit: Option<Arc<super::ratelimit::LocalRateLimit>>,
    /// `envoy.filters.http.ext_authz`, after this many of the RBAC filters (Istio: after the
    /// CUSTOM action's shadow RBAC filter, before DENY and ALLOW).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ext_authz: Option<(usize, Arc<super::ext_authz::ExtAuthz>)>,
    /// `tracing`: a span per request, exported over OTLP (`None`: trace headers pass through
    /// untouched).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracing: Option<Arc<super::tracer::Tracing>>,
}

/// Envoy's `forward_client_cert_details`: what happens to `x-forwarded-client-cert`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ForwardClientCert {
    /// Removed (Envoy's default).
    Sanitize,
    /// Kept when the client connection is mutual TLS, else removed.
    ForwardOnly,
    /// On mutual TLS, the client's certificate is appended; else removed.
    AppendForward,
    /// On mutual TLS, replaced by the client's certificate; else removed.
    SanitizeSet,
    /// Always kept as it came.
    AlwaysForwardOnly,
}

/// Envoy's `set_current_client_cert_details`: the fields of the client's certificate added to
/// `x-forwarded-client-cert` (`By` and `Hash` always are).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ClientCertDetails {
    pub subject: bool,
    pub uri: bool,
    pub dns: bool,
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
    /// The TLS contexts of its filter chains.
    pub fn tls_contexts(&self) -> impl Iterator<Item = &super::tls::DownstreamTls> {
        self.filter_chains
            .iter()
            .chain(&self.default_filter_chain)
            .filter_map(|c| c.tls.as_deref())
    }

    pub fn http_filters(&self) -> impl Iterator<Item = &HttpListener> {
        self.filter_chains
            .iter()
            .chain(&self.default_filter_chain)
            .filter_map(|c| match &c.filter {
                NetworkFilter::Http(h) => Some(h.as_ref()),
                NetworkFilter::Tcp(_) => None,
            })
    }

    /// The filter chain for a connection to `destination`, as Envoy picks it, one criterion
    /// after the other: the destination port, the destination address (the longest prefix),
    /// the server name (exact, then the longest wildcard), the transport protocol, then the
    /// application protocols. At each step the chains that set the criterion and meet it win
    /// over those that do not set it; when every remaining chain sets it and none meets it,
    /// nothing matches. Then the first. None matching: the default filter chain, if any.
    pub fn chain_for(&self, destination: SocketAddr, detected: &Detected) -> Option<&FilterChain> {
        let port = destination.port();
        let ip = destination.ip();
        let chains = narrow(self.filter_chains.iter().collect(), |m| {
            match m.destination_port {
                None => Fit::Any,
                Some(p) if p == port => Fit::Specific(0),
                Some(_) => Fit::No,
            }
        });
        let chains = narrow(chains, |m| {
            if m.prefix_ranges.is_empty() {
                return Fit::Any;
            }
            m.prefix_ranges
                .iter()
                .filter(|r| r.contains(ip))
                .map(|r| u32::from(r.prefix_len))
                .max()
                .map_or(Fit::No, Fit::Specific)
        });
        let chains = narrow(chains, |m| {
            server_name_fit(&m.server_names, detected.server_name.as_deref())
        });
        let chains = narrow(chains, |m| match &m.transport_protocol {
            None => Fit::Any,
            Some(t) if t == detected.transport_protocol => Fit::Specific(0),
            Some(_) => Fit::No,
        });
        let chains = narrow(chains, |m| {
            if m.application_protocols.is_empty() {
                Fit::Any
            } else if m
                .application_protocols
                .iter()
                .any(|p| detected.alpn.contains(p))
            {
                Fit::Specific(0)
            } else {
                Fit::No
            }
        });
        chains
            .into_iter()
            .next()
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
    let mut tls_inspector = false;
    for (i, f) in l.listener_filters.iter().enumerate() {
        let type_url = match &f.config_type {
            Some(pb::listener_filter::ConfigType::TypedConfig(any)) => any.type_url.as_str(),
            _ => "",
        };
        refuse_if(f.filter_disabled.is_some(), "filter_disabled")
            .index(i)
            .under("listener_filters")?;
        match type_url {
            ORIGINAL_DST_TYPE => original_dst = true,
            TLS_INSPECTOR_TYPE => tls_inspector = true,
            _ => {
                return Err(
                    Refusal::unsupported_value("", format!("{:?} ({type_url})", f.name))
                        .at(Segment::Index(i))
                        .under("listener_filters"),
                );
            }
        }
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
        tls_inspector,
        // Envoy's default is 15 s; 0 is no limit.
        listener_filters_timeout: match &l.listener_filters_timeout {
            None => Some(DEFAULT_LISTENER_FILTERS_TIMEOUT),
            Some(d) => Some(duration(d)).filter(|d| !d.is_zero()),
        },
        continue_on_listener_filters_timeout: l.continue_on_listener_filters_timeout,
        inbound: l.traffic_direction
            == envoy_types::pb::envoy::config::core::v3::TrafficDirection::Inbound as i32,
        disabled_metrics: disabled_metrics(l)?,
        filter_chains,
        default_filter_chain,
    })
}

/// The metrics the listener's `istio.stats` metadata disables (`{"disabled": [NAME, ...]}`).
fn disabled_metrics(l: &pb::Listener) -> Result<MetricSet, Refusal> {
    use envoy_types::pb::google::protobuf::value::Kind as V;
    let Some(stats) = l.metadata.as_ref().and_then(|m| {
        m.filter_metadata
            .get(strait_telemetry::switches::METADATA_KEY)
    }) else {
        return Ok(MetricSet::NONE);
    };
    const FIELD: &str = "metadata.filter_metadata";
    const EXPECTED: &str = "istio.stats {\"disabled\": [the Telemetry API's metric names]}";
    let Some(disabled) = stats.fields.get("disabled") else {
        return Ok(MetricSet::NONE);
    };
    let Some(V::ListValue(list)) = &disabled.kind else {
        return Err(Refusal::bad_value(
            FIELD,
            "istio.stats disabled: not a list",
            EXPECTED,
        ));
    };
    let names = list
        .values
        .iter()
        .map(|v| match &v.kind {
            Some(V::StringValue(s)) => Ok(s.as_str()),
            _ => Err(Refusal::bad_value(
                FIELD,
                "istio.stats disabled: not a string",
                EXPECTED,
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    MetricSet::from_names(names).map_err(|e| Refusal::bad_value(FIELD, e, EXPECTED))
}

fn no_metrics(set: &MetricSet) -> bool {
    set.is_empty()
}

fn metric_names<S: serde::Serializer>(set: &MetricSet, s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(set.names())
}

fn filter_chain(c: &pb::FilterChain) -> Result<FilterChain, Refusal> {
    let tls = match &c.transport_socket {
        None => None,
        Some(s) => match downstream_socket(s).under("transport_socket")? {
            Socket::Raw => None,
            Socket::Tls(tls) => Some(Arc::new(tls)),
        },
    };
    refuse_if(
        c.transport_socket_connect_timeout.is_some(),
        "transport_socket_connect_timeout",
    )?;
    #[allow(deprecated)]
    refuse_if(
        c.use_proxy_proto.as_ref().is_some_and(|b| b.value),
        "use_proxy_proto",
    )?;
    let matcher = match &c.filter_chain_match {
        None => ChainMatch::default(),
        Some(m) => chain_match(m).under("filter_chain_match")?,
    };
    let Some((filter, before)) = c.filters.split_last() else {
        return Err(Refusal::unsupported_value(
            "filters",
            "with no network filter (strait-proxy takes http_connection_manager or tcp_proxy, after any envoy.filters.network.rbac)",
        ));
    };
    let rbac = before
        .iter()
        .enumerate()
        .map(|(i, f)| network_rbac(f).index(i).under("filters"))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(FilterChain {
        name: c.name.clone(),
        matcher,
        tls,
        rbac,
        filter: network_filter(filter)
            .index(before.len())
            .under("filters")?,
    })
}

fn chain_match(m: &pb::FilterChainMatch) -> Result<ChainMatch, Refusal> {
    let transport_protocol = match m.transport_protocol.as_str() {
        "" => None,
        "tls" | "raw_buffer" => Some(m.transport_protocol.clone()),
        other => {
            return Err(Refusal::bad_value(
                "transport_protocol",
                format!("{other:?}"),
                "tls or raw_buffer",
            ));
        }
    };
    for (i, name) in m.server_names.iter().enumerate() {
        if name.is_empty() || name.get(1..).is_some_and(|rest| rest.contains('*')) {
            return Err(
                Refusal::bad_value("", format!("{name:?}"), "a server name, or *.suffix")
                    .at(Segment::Index(i))
                    .under("server_names"),
            );
        }
    }
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
        server_names: m.server_names.clone(),
        transport_protocol,
        application_protocols: m.application_protocols.clone(),
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

/// An `envoy.filters.network.rbac` (the only network filter strait-proxy runs before the
/// terminal one).
fn network_rbac(filter: &pb::Filter) -> Result<Arc<strait_authz::RbacFilter>, Refusal> {
    let any = match &filter.config_type {
        Some(pb::filter::ConfigType::TypedConfig(any)) => any,
        _ => return Err(Refusal::missing("typed_config")),
    };
    if any.type_url != NETWORK_RBAC_TYPE {
        return Err(Refusal::unsupported_value(
            "",
            format!(
                "{:?} ({}) before the last filter (strait-proxy runs only envoy.filters.network.rbac there)",
                filter.name, any.type_url
            ),
        ));
    }
    strait_authz::convert::network_rbac_filter(any)
        .map(Arc::new)
        .map_err(|e| Refusal::bad_value("typed_config", e, "an RBAC config strait-proxy evaluates"))
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
    let (jwt_authn, rbac, ext_authz) = http_filters(&hcm.http_filters).under("http_filters")?;
    let local_ratelimit = super::ratelimit::hcm_filter(&hcm.http_filters).under("http_filters")?;
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
    use http_connection_manager_pb::http_connection_manager::ForwardClientCertDetails as F;
    let forward_client_cert = match F::try_from(hcm.forward_client_cert_details) {
        Ok(F::Sanitize) => ForwardClientCert::Sanitize,
        Ok(F::ForwardOnly) => ForwardClientCert::ForwardOnly,
        Ok(F::AppendForward) => ForwardClientCert::AppendForward,
        Ok(F::SanitizeSet) => ForwardClientCert::SanitizeSet,
        Ok(F::AlwaysForwardOnly) => ForwardClientCert::AlwaysForwardOnly,
        Err(_) => {
            return Err(Refusal::bad_value(
                "forward_client_cert_details",
                hcm.forward_client_cert_details,
                "one Envoy knows",
            ));
        }
    };
    let client_cert_details = match &hcm.set_current_client_cert_details {
        None => ClientCertDetails::default(),
        Some(d) => {
            refuse_if(d.cert, "set_current_client_cert_details.cert")?;
            refuse_if(d.chain, "set_current_client_cert_details.chain")?;
            ClientCertDetails {
                subject: d.subject.as_ref().is_some_and(|b| b.value),
                uri: d.uri,
                dns: d.dns,
            }
        }
    };
    let tracing = hcm
        .tracing
        .as_ref()
        .map(|t| super::tracer::tracing(t).under("tracing"))
        .transpose()?
        .map(Arc::new);
    Ok(HttpListener {
        tracing,
        rbac,
        jwt_authn,
        local_ratelimit,
        ext_authz,
        forward_client_cert,
        client_cert_details,
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

/// The HTTP filters: the router (last), the fault and CORS filters, which act through each
/// route's `typed_per_filter_config`, one jwt_authn filter ahead of the RBAC filters, and the
/// RBAC filters (returned, in their order).
type AuthFilters = (
    Option<Arc<strait_authz::JwtAuthn>>,
    Vec<Arc<strait_authz::RbacFilter>>,
    Option<(usize, Arc<super::ext_authz::ExtAuthz>)>,
);

fn http_filters(
    filters: &[http_connection_manager_pb::HttpFilter],
) -> Result<AuthFilters, Refusal> {
    let mut router = false;
    let mut rbac = Vec::new();
    let mut jwt_authn = None;
    let mut ext_authz = None;
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
            // Converted by `ratelimit::hcm_filter`.
            super::ratelimit::LOCAL_RATELIMIT_TYPE => {}
            HTTP_RBAC_TYPE => rbac.push(Arc::new(
                strait_authz::convert::http_rbac_filter(any).map_err(|e| {
                    at(Refusal::bad_value(
                        "typed_config",
                        e,
                        "an RBAC config strait-proxy evaluates",
                    ))
                })?,
            )),
            super::ext_authz::EXT_AUTHZ_TYPE => {
                if ext_authz.is_some() {
                    return Err(at(Refusal::rule(
                        "",
                        "a second ext_authz: strait-proxy runs one (Istio: one CUSTOM provider \
                         per workload)",
                    )));
                }
                let f =
                    super::ext_authz::ext_authz(any).map_err(|r| at(r.under("typed_config")))?;
                ext_authz = Some((rbac.len(), Arc::new(f)));
            }
            JWT_AUTHN_TYPE => {
                if jwt_authn.is_some() || !rbac.is_empty() || ext_authz.is_some() {
                    return Err(at(Refusal::rule(
                        "",
                        "a second jwt_authn, or one after an RBAC filter: strait-proxy runs one \
                         jwt_authn filter, ahead of the RBAC filters",
                    )));
                }
                jwt_authn = Some(Arc::new(strait_authz::convert::jwt_authn(any).map_err(
                    |e| {
                        at(Refusal::bad_value(
                            "typed_config",
                            e,
                            "a jwt_authn config strait-proxy evaluates",
                        ))
                    },
                )?));
            }
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
    Ok((jwt_authn, rbac, ext_authz))
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
