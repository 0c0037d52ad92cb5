//! A sidecar's inbound listeners: traffic to the proxy's own workload.
//!
//! The inbound ports are the endpoint ports of the services whose endpoints have the proxy's
//! address. With iptables capture, `virtualInbound` (15006) has one filter chain per such port
//! (matched on the original destination port) to `inbound|PORT||`, HTTP through an HCM with an
//! inline route, TCP through tcp_proxy, and passes other ports through. Without capture, each
//! port gets its own listener on `ADDRESS:PORT` (or the Sidecar ingress listener's `bind`).
//! Which ports, and where they go, is [`Ctx::inbound_ports`].

use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, FilterChainMatch};
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, VirtualHost, route, route_action,
};

use super::filters::{
    Hcm, HttpFilters, ISTIO_SERVER_NAME, Routes, TcpTarget, bool_value, duration, filter_chain,
    hcm_filter, listener, original_dst_listener_filter, tcp_proxy_filter,
    tls_inspector_listener_filter, u32_value,
};
use super::http_route::{prefix_match, route_match_for};
use crate::translate::mtls::{self, ChainKind, Mode};
use crate::translate::tracer::{Class, hcm_tracing};
use crate::translate::{
    BLACKHOLE_CLUSTER, Ctx, INBOUND_PASSTHROUGH_CLUSTER, InboundPort, VIRTUAL_INBOUND_PORT,
    inbound_cluster_name,
};
use crate::translate::{authz, ratelimit};
use strait_api::networking::virtual_service::HttpMatchRequest;
use strait_api::policy::LocalRateLimit;
use strait_xds_core::{CaptureMode, XdsResources};

pub(super) fn build(ctx: &Ctx<'_>, out: &mut XdsResources) {
    let ports = ctx.inbound_ports();
    let policies = authz::policies_for(
        ctx.config,
        ctx.registry,
        &ctx.proxy.namespace,
        &ctx.proxy.labels,
    );
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
            if ctx.proxy.mtls {
                l.listener_filters.push(tls_inspector_listener_filter());
            }
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
                l.filter_chains.extend(port_chains(
                    ctx,
                    format!("{any}_{port}"),
                    port_match(port),
                    port,
                    || {
                        inbound_filters(
                            any,
                            port,
                            p.protocol.is_http(),
                            ctx.proxy.mtls,
                            &policies,
                            rate_limit(ctx, port),
                            hcm_tracing(ctx, Class::Inbound),
                        )
                    },
                    p.protocol.is_http(),
                ));
            }
            // Ports the workload does not declare pass through to it, unless its policy is
            // STRICT: then a connection there is closed, as plaintext to a declared port is.
            let strict =
                mtls::workload_mode(ctx.config, &ctx.proxy.namespace, &ctx.proxy.labels, 0)
                    == Mode::Strict;
            l.default_filter_chain = Some(if strict {
                filter_chain(
                    "InboundPassthroughFilterChain-strict",
                    None,
                    vec![tcp_proxy_filter(
                        BLACKHOLE_CLUSTER,
                        TcpTarget::Cluster(BLACKHOLE_CLUSTER.to_string()),
                    )],
                )
            } else {
                // Authorization applies to passthrough connections too (as TCP).
                let mut filters = authz::network_filters(&policies);
                filters.push(tcp_proxy_filter(
                    INBOUND_PASSTHROUGH_CLUSTER,
                    TcpTarget::Cluster(INBOUND_PASSTHROUGH_CLUSTER.to_string()),
                ));
                filter_chain("InboundPassthroughFilterChain", None, filters)
            });
            out.listeners.insert(l.name.clone(), l);
            bound_listeners(ctx, ports.iter().filter(|p| p.capture_none), &policies, out);
        }
        CaptureMode::None => bound_listeners(ctx, ports.iter(), &policies, out),
    }
}

/// A listener of its own per port, bound on the Sidecar ingress `bind` address or the proxy's.
fn bound_listeners<'p>(
    ctx: &Ctx<'_>,
    ports: impl Iterator<Item = &'p InboundPort>,
    policies: &authz::Policies<'_>,
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
        if ctx.proxy.mtls {
            l.listener_filters = vec![tls_inspector_listener_filter()];
        }
        l.filter_chains = port_chains(
            ctx,
            format!("{ip}_{port}"),
            FilterChainMatch::default(),
            port,
            || {
                inbound_filters(
                    &ip,
                    port,
                    p.protocol.is_http(),
                    ctx.proxy.mtls,
                    policies,
                    rate_limit(ctx, port),
                    hcm_tracing(ctx, Class::Inbound),
                )
            },
            p.protocol.is_http(),
        );
        out.listeners.insert(l.name.clone(), l);
    }
}

/// The filter chains of one inbound port: without an identity, one chain; with one, per the
/// workload's PeerAuthentication mode for the port (see [`mtls::inbound_matches`]).
fn port_chains(
    ctx: &Ctx<'_>,
    name: String,
    base: FilterChainMatch,
    port: u16,
    filters: impl Fn() -> Vec<Filter>,
    http: bool,
) -> Vec<FilterChain> {
    let plain_match = (base != FilterChainMatch::default()).then(|| base.clone());
    let mode = mtls::workload_mode(ctx.config, &ctx.proxy.namespace, &ctx.proxy.labels, port);
    if !ctx.proxy.mtls {
        if mode == Mode::Strict {
            // STRICT, and the proxy cannot do mTLS: nothing may reach the workload (fail closed).
            return vec![filter_chain(
                format!("{name}-strict-without-identity"),
                plain_match,
                vec![tcp_proxy_filter(
                    BLACKHOLE_CLUSTER,
                    TcpTarget::Cluster(BLACKHOLE_CLUSTER.to_string()),
                )],
            )];
        }
        return vec![filter_chain(name, plain_match, filters())];
    }
    mtls::inbound_matches(&base, mode, http)
        .into_iter()
        .map(|c| match c.kind {
            ChainKind::MutualTls => FilterChain {
                transport_socket: Some(mtls::downstream_tls_socket()),
                ..filter_chain(format!("{name}-mtls"), Some(c.matcher), filters())
            },
            ChainKind::Plaintext => filter_chain(name.clone(), Some(c.matcher), filters()),
            ChainKind::Refused => filter_chain(
                format!("{name}-plaintext-refused"),
                Some(c.matcher),
                vec![tcp_proxy_filter(
                    BLACKHOLE_CLUSTER,
                    TcpTarget::Cluster(BLACKHOLE_CLUSTER.to_string()),
                )],
            ),
        })
        .collect()
}

fn port_match(port: u16) -> FilterChainMatch {
    FilterChainMatch {
        destination_port: Some(u32_value(u32::from(port))),
        ..Default::default()
    }
}

/// HTTP: an HCM with one catch-all route to `inbound|PORT||`, no timeout, and the workload's
/// HTTP RBAC filters; TCP: its network RBAC filters, then tcp_proxy.
/// With mTLS, the HCM also tells the app who called (Istio's `x-forwarded-client-cert`:
/// appended, with the client certificate's subject, URI and DNS names).
fn inbound_filters(
    address: &str,
    port: u16,
    http: bool,
    mtls: bool,
    policies: &authz::Policies<'_>,
    rate_limit: Option<&LocalRateLimit>,
    tracing: Option<envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::Tracing>,
) -> Vec<Filter> {
    let cluster = inbound_cluster_name(port);
    if !http {
        let mut filters = authz::network_filters(policies);
        filters.push(tcp_proxy_filter(
            &cluster,
            TcpTarget::Cluster(cluster.clone()),
        ));
        return filters;
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
    // A LocalRateLimit's rules: a route each, ahead of the catch-all, with the rule's bucket.
    let mut routes: Vec<Route> = rate_limit
        .into_iter()
        .flat_map(|p| p.rules.iter().enumerate().map(move |(i, r)| (p, i, r)))
        .map(|(p, i, rule)| Route {
            name: format!("ratelimit-{i}"),
            r#match: Some(route_match_for(&HttpMatchRequest {
                uri: rule.match_.uri.clone(),
                method: rule.match_.method.clone(),
                headers: rule.match_.headers.clone(),
                ..Default::default()
            })),
            action: Some(route::Action::Route(action.clone())),
            typed_per_filter_config: [(
                ratelimit::LOCAL_RATELIMIT.to_string(),
                ratelimit::filter_config(p, Some(&rule.token_bucket)),
            )]
            .into(),
            ..Default::default()
        })
        .collect();
    routes.push(Route {
        name: "default".to_string(),
        r#match: Some(prefix_match("/")),
        action: Some(route::Action::Route(action)),
        ..Default::default()
    });
    let routes = RouteConfiguration {
        name: cluster.clone(),
        virtual_hosts: vec![VirtualHost {
            name: format!("inbound|http|{port}"),
            domains: vec!["*".to_string()],
            routes,
            ..Default::default()
        }],
        validate_clusters: Some(bool_value(false)),
        ..Default::default()
    };
    vec![hcm_filter(Hcm {
        stat_prefix: format!("inbound_{address}_{port}"),
        routes: Routes::Inline(Box::new(routes)),
        filters: HttpFilters::Inbound,
        server_name: ISTIO_SERVER_NAME,
        use_remote_address: false,
        allow_absolute_url: false,
        forward_client_cert: mtls,
        // Authentication and authorization first, then the rate limit (as Envoy users expect:
        // a denied request takes no token).
        authz: authz::http_filters(policies)
            .into_iter()
            .chain(rate_limit.map(ratelimit::http_filter))
            .collect(),
        tracing,
    })]
}

/// The LocalRateLimit for an inbound port of the proxy's workload.
fn rate_limit<'c>(ctx: &Ctx<'c>, port: u16) -> Option<&'c LocalRateLimit> {
    ratelimit::policy_for(ctx.config, &ctx.proxy.namespace, &ctx.proxy.labels, port).map(|(_, p)| p)
}
