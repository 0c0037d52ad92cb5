//! Listeners: in this slice, a TCP address with one filter chain holding an HTTP connection
//! manager (the no-capture `IP_15080` HTTP proxy listener, and any listener shaped like it).

use std::net::SocketAddr;

use envoy_types::pb::envoy::config::core::v3::{Address, address, config_source, socket_address};
use envoy_types::pb::envoy::config::listener::v3 as pb;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager::CodecType,
    http_connection_manager::RouteSpecifier, http_filter,
};
use envoy_types::pb::google::protobuf::Any;
use serde::Serialize;

use super::route::RouteConfig;
use super::{Invalid, unsupported};

const HCM: &str = "envoy.filters.network.http_connection_manager";
const HCM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
/// The HTTP filters strait-proxy runs (the router last), by type URL.
const ROUTER_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
const FAULT_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";
const CORS_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors";

/// A listener strait-proxy serves.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    pub http: HttpListener,
}

/// An HTTP connection manager.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HttpListener {
    pub routes: RouteSource,
    /// Add an `x-request-id` to requests that have none.
    pub generate_request_id: bool,
    /// HTTP/1.1 only (`HTTP1`), HTTP/2 only (`HTTP2`) or either (`AUTO`, the default).
    pub codec: Codec,
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

impl TryFrom<&pb::Listener> for Listener {
    type Error = Invalid;

    fn try_from(l: &pb::Listener) -> Result<Listener, Invalid> {
        let bad = |reason: String| Invalid::new("listener", &l.name, reason);
        let address = socket_addr(l.address.as_ref(), "address").map_err(bad)?;
        if l.use_original_dst.as_ref().is_some_and(|b| b.value) {
            return Err(bad(unsupported("use_original_dst (iptables capture)")));
        }
        if let Some(f) = l.listener_filters.first() {
            return Err(bad(unsupported(&format!("listener filter {:?}", f.name))));
        }
        if l.default_filter_chain.is_some() {
            return Err(bad(unsupported("default_filter_chain")));
        }
        if !l.additional_addresses.is_empty() {
            return Err(bad(unsupported("additional_addresses")));
        }
        let [chain] = l.filter_chains.as_slice() else {
            return Err(bad(format!(
                "{} filter chains: strait-proxy supports exactly one per listener",
                l.filter_chains.len()
            )));
        };
        if chain
            .filter_chain_match
            .as_ref()
            .is_some_and(|m| *m != pb::FilterChainMatch::default())
        {
            return Err(bad(unsupported("filter_chain_match")));
        }
        if chain.transport_socket.is_some() {
            return Err(bad(unsupported("filter_chains[0].transport_socket (TLS)")));
        }
        let [filter] = chain.filters.as_slice() else {
            return Err(bad(format!(
                "{} network filters: strait-proxy supports one http_connection_manager",
                chain.filters.len()
            )));
        };
        let http = http_connection_manager(filter).map_err(bad)?;
        Ok(Listener {
            name: l.name.clone(),
            address,
            http,
        })
    }
}

fn http_connection_manager(filter: &pb::Filter) -> Result<HttpListener, String> {
    let any = match &filter.config_type {
        Some(pb::filter::ConfigType::TypedConfig(any)) if filter.name == HCM => any,
        _ => {
            return Err(format!(
                "filter {:?} is not supported by strait-proxy (only {HCM})",
                filter.name
            ));
        }
    };
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
    Ok(HttpListener {
        routes,
        generate_request_id: hcm.generate_request_id.as_ref().is_none_or(|b| b.value),
        codec,
    })
}
