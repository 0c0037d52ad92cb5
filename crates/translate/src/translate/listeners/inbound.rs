//! A sidecar's inbound listeners: traffic to the proxy's own workload.
//!
//! The inbound ports are the endpoint ports of the services whose endpoints have the proxy's
//! address. With iptables capture, `virtualInbound` (15006) has one filter chain per such port
//! (matched on the original destination port) to `inbound|PORT||`, HTTP through an HCM with an
//! inline route, TCP through tcp_proxy, and passes other ports through. Without capture, each
//! port gets its own listener on `ADDRESS:PORT` (or the Sidecar ingress listener's `bind`).
//! Which ports, and where they go, is [`Ctx::inbound_ports`].

use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChainMatch};
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, VirtualHost, route, route_action,
};

use super::filters::{
    Hcm, HttpFilters, ISTIO_SERVER_NAME, Routes, TcpTarget, bool_value, duration, filter_chain,
    hcm_filter, listener, original_dst_listener_filter, tcp_proxy_filter, u32_value,
};
use super::http_route::prefix_match;
use crate::translate::{
    BLACKHOLE_CLUSTER, Ctx, InboundPort, PASSTHROUGH_CLUSTER, VIRTUAL_INBOUND_PORT,
    inbound_cluster_name,
};
use strait_xds_core::{CaptureMode, XdsResources};

pub(super) fn build(ctx: &Ctx<'_>, out: &mut XdsResources) {
    let ports = ctx.inbound_ports();
    match ctx.proxy.capture {
        CaptureMode::Iptables => {
            let any = "0.0.0.0";
            let mut l = listener(
                "virtualInbound",
                any,
                VIRTUAL_INBOUND_PORT,
                TrafficDirection::Inbound,
                true,
            );
            // Not use_original_dst: that would hand inbound connections to the outbound
            // listener of the same port.
            l.listener_filters = vec![original_dst_listener_filter()];
            l.filter_chains.push(filter_chain(
                "virtualInbound-blackhole",
                Some(port_match(VIRTUAL_INBOUND_PORT)),
                vec![tcp_proxy_filter(
                    BLACKHOLE_CLUSTER,
                    TcpTarget::Cluster(BLACKHOLE_CLUSTER.to_string()),
                )],
            ));
            for p in ports.iter().filter(|p| !p.capture_none) {
                let port = p.port;
                l.filter_chains.push(filter_chain(
                    format!("{any}_{port}"),
                    Some(port_match(port)),
                    vec![inbound_filter(any, port, p.protocol.is_http())],
                ));
            }
            l.default_filter_chain = Some(filter_chain(
                "InboundPassthroughFilterChain",
                None,
                vec![tcp_proxy_filter(
                    "InboundPassthroughCluster",
                    TcpTarget::Cluster(PASSTHROUGH_CLUSTER.to_string()),
                )],
            ));
            out.listeners.insert(l.name.clone(), l);
            bound_listeners(ctx, ports.iter().filter(|p| p.capture_none), out);
        }
        CaptureMode::None => bound_listeners(ctx, ports.iter(), out),
    }
}

/// A listener of its own per port, bound on the Sidecar ingress `bind` address or the proxy's.
fn bound_listeners<'p>(
    ctx: &Ctx<'_>,
    ports: impl Iterator<Item = &'p InboundPort>,
    out: &mut XdsResources,
) {
    for p in ports {
        let port = p.port;
        let ip = p.bind.clone().unwrap_or_else(|| ctx.proxy.ip.to_string());
        let mut l = listener(
            format!("{ip}_{port}"),
            &ip,
            port,
            TrafficDirection::Inbound,
            true,
        );
        l.filter_chains = vec![filter_chain(
            format!("{ip}_{port}"),
            None,
            vec![inbound_filter(&ip, port, p.protocol.is_http())],
        )];
        out.listeners.insert(l.name.clone(), l);
    }
}

fn port_match(port: u16) -> FilterChainMatch {
    FilterChainMatch {
        destination_port: Some(u32_value(u32::from(port))),
        ..Default::default()
    }
}

/// HTTP: an HCM with one catch-all route to `inbound|PORT||`, no timeout; TCP: tcp_proxy.
fn inbound_filter(address: &str, port: u16, http: bool) -> Filter {
    let cluster = inbound_cluster_name(port);
    if !http {
        return tcp_proxy_filter(&cluster, TcpTarget::Cluster(cluster.clone()));
    }
    let action = RouteAction {
        cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster.clone())),
        timeout: Some(duration(0)),
        max_stream_duration: Some(route_action::MaxStreamDuration {
            max_stream_duration: Some(duration(0)),
            grpc_timeout_header_max: Some(duration(0)),
            ..Default::default()
        }),
        ..Default::default()
    };
    let routes = RouteConfiguration {
        name: cluster.clone(),
        virtual_hosts: vec![VirtualHost {
            name: format!("inbound|http|{port}"),
            domains: vec!["*".to_string()],
            routes: vec![Route {
                name: "default".to_string(),
                r#match: Some(prefix_match("/")),
                action: Some(route::Action::Route(action)),
                ..Default::default()
            }],
            ..Default::default()
        }],
        validate_clusters: Some(bool_value(false)),
        ..Default::default()
    };
    hcm_filter(Hcm {
        stat_prefix: format!("inbound_{address}_{port}"),
        routes: Routes::Inline(Box::new(routes)),
        filters: HttpFilters::Inbound,
        server_name: ISTIO_SERVER_NAME,
        use_remote_address: false,
        allow_absolute_url: false,
    })
}
