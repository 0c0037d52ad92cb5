//! The Envoy filters and small protos that listeners share.

use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, ConfigSource, SocketAddress, TrafficDirection,
    address, config_source, socket_address,
};
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter, filter, listener_filter,
};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::Cors;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::google::protobuf::{BoolValue, Duration, UInt32Value};
use envoy_types::util::pack_any;

use envoy_types::pb::envoy::config::core::v3::Http1ProtocolOptions;

pub(super) const HCM: &str = "envoy.filters.network.http_connection_manager";
pub(super) const TCP_PROXY: &str = "envoy.filters.network.tcp_proxy";
pub(super) const ROUTER: &str = "envoy.filters.http.router";
pub(super) const FAULT: &str = "envoy.filters.http.fault";
pub(super) const CORS: &str = "envoy.filters.http.cors";
const ORIGINAL_DST: &str = "envoy.filters.listener.original_dst";
const TLS_INSPECTOR: &str = "envoy.filters.listener.tls_inspector";

/// A protobuf Duration from nanoseconds (negative values become zero).
pub(super) fn duration(nanos: i128) -> Duration {
    let nanos = nanos.max(0);
    Duration {
        seconds: i64::try_from(nanos / 1_000_000_000).unwrap_or(i64::MAX),
        nanos: i32::try_from(nanos % 1_000_000_000).unwrap_or(0),
    }
}

pub(super) fn bool_value(value: bool) -> BoolValue {
    BoolValue { value }
}

pub(super) fn u32_value(value: u32) -> UInt32Value {
    UInt32Value { value }
}

/// A TCP socket address.
pub(super) fn socket_address(ip: &str, port: u16) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    }
}

/// Resources from the ADS stream, without waiting for them at startup.
pub(super) fn ads_config_source() -> ConfigSource {
    ConfigSource {
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        initial_fetch_timeout: Some(duration(0)),
        resource_api_version: ApiVersion::V3 as i32,
        ..Default::default()
    }
}

/// Where an HTTP connection manager gets its routes.
pub(super) enum Routes {
    /// By name, over RDS.
    Rds(String),
    /// Inline (boxed: a route configuration is large).
    Inline(Box<RouteConfiguration>),
}

/// The HTTP filter chain of an HCM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum HttpFilters {
    /// CORS, fault injection, router: outbound sidecars and gateways, whose routes may carry
    /// per-route CORS and fault settings.
    Outbound,
    /// The router alone (inbound).
    Inbound,
}

/// Settings of one HTTP connection manager.
pub(super) struct Hcm {
    pub stat_prefix: String,
    pub routes: Routes,
    pub filters: HttpFilters,
    /// True for gateways (the client address is the peer's); false for sidecars.
    pub use_remote_address: bool,
    /// Accept absolute-form request targets (`GET http://host/path`): the HTTP proxy listener.
    pub allow_absolute_url: bool,
    /// The `server` header responses get: [`ISTIO_SERVER_NAME`] on inbound and gateway
    /// listeners, Envoy's default (`envoy`, left unset) on a sidecar's outbound ones, as Istio
    /// sets them.
    pub server_name: &'static str,
    /// Istio's inbound `x-forwarded-client-cert`: APPEND_FORWARD with the client certificate's
    /// subject, URI and DNS names (only mTLS connections have one).
    pub forward_client_cert: bool,
    /// Authorization filters (RBAC), first in the chain as Istio puts them.
    pub authz: Vec<HttpFilter>,
    /// Tracing (`None`: requests are not traced).
    pub tracing: Option<http_connection_manager::Tracing>,
}

/// The `server_name` Istio gives inbound and gateway connection managers.
pub(super) const ISTIO_SERVER_NAME: &str = "istio-envoy";
/// Envoy's own default `server_name`, which Istio keeps for a sidecar's outbound listeners.
pub(super) const ENVOY_SERVER_NAME: &str = "";

fn http_filter(name: &str, config: envoy_types::pb::google::protobuf::Any) -> HttpFilter {
    HttpFilter {
        name: name.to_string(),
        config_type: Some(http_filter::ConfigType::TypedConfig(config)),
        ..Default::default()
    }
}

/// An `envoy.filters.network.http_connection_manager` filter.
pub(super) fn hcm_filter(hcm: Hcm) -> Filter {
    let mut http_filters = hcm.authz;
    if hcm.filters == HttpFilters::Outbound {
        http_filters.push(http_filter(CORS, pack_any(Cors {})));
        http_filters.push(http_filter(FAULT, pack_any(HttpFault::default())));
    }
    http_filters.push(http_filter(ROUTER, pack_any(Router::default())));
    let route_specifier = match hcm.routes {
        Routes::Rds(name) => http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(ads_config_source()),
            route_config_name: name,
        }),
        Routes::Inline(rc) => http_connection_manager::RouteSpecifier::RouteConfig(*rc),
    };
    let config = HttpConnectionManager {
        stat_prefix: hcm.stat_prefix,
        codec_type: http_connection_manager::CodecType::Auto as i32,
        http_filters,
        route_specifier: Some(route_specifier),
        use_remote_address: Some(bool_value(hcm.use_remote_address)),
        generate_request_id: Some(bool_value(true)),
        server_name: hcm.server_name.to_string(),
        forward_client_cert_details: if hcm.forward_client_cert {
            http_connection_manager::ForwardClientCertDetails::AppendForward as i32
        } else {
            0
        },
        set_current_client_cert_details: hcm.forward_client_cert.then(|| {
            http_connection_manager::SetCurrentClientCertDetails {
                subject: Some(bool_value(true)),
                uri: true,
                dns: true,
                ..Default::default()
            }
        }),
        normalize_path: Some(bool_value(true)),
        tracing: hcm.tracing,
        upgrade_configs: vec![http_connection_manager::UpgradeConfig {
            upgrade_type: "websocket".to_string(),
            ..Default::default()
        }],
        http_protocol_options: hcm.allow_absolute_url.then(|| Http1ProtocolOptions {
            allow_absolute_url: Some(bool_value(true)),
            ..Default::default()
        }),
        ..Default::default()
    };
    Filter {
        name: HCM.to_string(),
        config_type: Some(filter::ConfigType::TypedConfig(pack_any(config))),
    }
}

/// Where a TCP proxy sends connections.
pub(super) enum TcpTarget {
    Cluster(String),
    /// (cluster, weight) pairs; weights above zero.
    Weighted(Vec<(String, u32)>),
}

/// An `envoy.filters.network.tcp_proxy` filter.
pub(super) fn tcp_proxy_filter(stat_prefix: &str, target: TcpTarget) -> Filter {
    let cluster_specifier = match target {
        TcpTarget::Cluster(c) => tcp_proxy::ClusterSpecifier::Cluster(c),
        TcpTarget::Weighted(clusters) => {
            tcp_proxy::ClusterSpecifier::WeightedClusters(tcp_proxy::WeightedCluster {
                clusters: clusters
                    .into_iter()
                    .map(
                        |(name, weight)| tcp_proxy::weighted_cluster::ClusterWeight {
                            name,
                            weight,
                            ..Default::default()
                        },
                    )
                    .collect(),
            })
        }
    };
    let config = TcpProxy {
        stat_prefix: stat_prefix.to_string(),
        cluster_specifier: Some(cluster_specifier),
        ..Default::default()
    };
    Filter {
        name: TCP_PROXY.to_string(),
        config_type: Some(filter::ConfigType::TypedConfig(pack_any(config))),
    }
}

/// The `original_dst` listener filter: restores the address iptables redirected from.
pub(super) fn original_dst_listener_filter() -> ListenerFilter {
    ListenerFilter {
        name: ORIGINAL_DST.to_string(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(pack_any(
            OriginalDst {},
        ))),
        ..Default::default()
    }
}

/// The `tls_inspector` listener filter: reads the SNI for `server_names` matches.
pub(super) fn tls_inspector_listener_filter() -> ListenerFilter {
    ListenerFilter {
        name: TLS_INSPECTOR.to_string(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(pack_any(
            TlsInspector::default(),
        ))),
        ..Default::default()
    }
}

/// A filter chain.
pub(super) fn filter_chain(
    name: impl Into<String>,
    filter_chain_match: Option<FilterChainMatch>,
    filters: Vec<Filter>,
) -> FilterChain {
    FilterChain {
        name: name.into(),
        filter_chain_match,
        filters,
        ..Default::default()
    }
}

/// A listener on `ip:port`.
pub(super) fn listener(
    name: impl Into<String>,
    ip: &str,
    port: u16,
    direction: TrafficDirection,
    bind_to_port: bool,
) -> Listener {
    Listener {
        name: name.into(),
        address: Some(socket_address(ip, port)),
        traffic_direction: direction as i32,
        bind_to_port: (!bind_to_port).then(|| bool_value(false)),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_split_seconds_and_nanos() {
        assert_eq!(
            duration(7_500_000_000),
            Duration {
                seconds: 7,
                nanos: 500_000_000
            }
        );
        assert_eq!(duration(-5), Duration::default());
    }

    #[test]
    fn outbound_hcm_ends_with_the_router() {
        let f = hcm_filter(Hcm {
            stat_prefix: "outbound_0.0.0.0_9080".into(),
            routes: Routes::Rds("9080".into()),
            filters: HttpFilters::Outbound,
            server_name: ENVOY_SERVER_NAME,
            use_remote_address: false,
            allow_absolute_url: false,
            forward_client_cert: false,
            authz: Vec::new(),
            tracing: None,
        });
        let Some(filter::ConfigType::TypedConfig(any)) = f.config_type else {
            panic!("no typed config")
        };
        assert_eq!(
            any.type_url,
            "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
        );
        let hcm: HttpConnectionManager = prost::Message::decode(any.value.as_slice()).unwrap();
        let names: Vec<&str> = hcm.http_filters.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, [CORS, FAULT, ROUTER]);
        let Some(http_filter::ConfigType::TypedConfig(router)) = &hcm.http_filters[2].config_type
        else {
            panic!("router without typed config")
        };
        assert_eq!(
            router.type_url,
            "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
        );
    }
}
