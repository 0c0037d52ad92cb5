//! A sidecar's outbound listeners.
//!
//! With iptables capture, as Istio: `virtualOutbound` on 15001 takes every redirected
//! connection and hands it (`use_original_dst`) to the listener for its original destination:
//! `0.0.0.0_PORT` for HTTP ports (an HCM on route configuration `PORT`), `VIP_PORT` for TCP and
//! TLS services with a VIP, `0.0.0.0_PORT` for those without; anything else goes to
//! `PassthroughCluster` (or `BlackHoleCluster` under `REGISTRY_ONLY`).
//!
//! Without capture: one HTTP proxy listener on `ADDRESS:15080` with route configuration
//! `15080`, and for each TCP or TLS service port P one listener `ADDRESS_P` bound on the proxy's
//! own address, so an app whose hosts file maps service names to its sidecar's address reaches
//! `tcp-echo:9000` by connecting there. Services share such a listener by port: TLS ones by SNI,
//! plain TCP ones cannot be told apart, so the first by host name takes the port and the others
//! are logged. A port the proxy already uses (15080, or one of its own inbound ports) is left
//! to that use, and logged.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, FilterChainMatch, Listener};
use strait_api::networking::virtual_service::MESH_GATEWAY;
use strait_registry::{Protocol, Service};

use super::config::{self, BoundVs};
use super::filters::{
    ENVOY_SERVER_NAME, Hcm, HttpFilters, Routes, TcpTarget, bool_value, filter_chain, hcm_filter,
    listener, original_dst_listener_filter, tcp_proxy_filter, tls_inspector_listener_filter,
    u32_value,
};
use super::l4::{self, L4Match, cidrs, stat_name, tcp_target};
use super::route_config;
use crate::snapshot::OutboundPolicy;
use crate::translate::tracer::{Class, hcm_tracing};
use crate::translate::{
    BLACKHOLE_CLUSTER, Ctx, HTTP_PROXY_PORT, PASSTHROUGH_CLUSTER, VIRTUAL_OUTBOUND_PORT,
    outbound_cluster_name,
};
use strait_xds_core::{CaptureMode, XdsResources};

const ANY: &str = "0.0.0.0";

pub(super) fn build(ctx: &Ctx<'_>, out: &mut XdsResources) {
    let vss = config::virtual_services(ctx, MESH_GATEWAY);
    match ctx.proxy.capture {
        CaptureMode::Iptables => build_captured(ctx, &vss, out),
        CaptureMode::None => build_http_proxy(ctx, &vss, out),
    }
}

fn insert(out: &mut XdsResources, l: Listener) {
    if out.listeners.contains_key(&l.name) {
        tracing::warn!(listener = %l.name, "two listeners with one name; the first is kept");
        return;
    }
    out.listeners.insert(l.name.clone(), l);
}

fn build_http_proxy(ctx: &Ctx<'_>, vss: &[BoundVs<'_>], out: &mut XdsResources) {
    let ip = ctx.proxy.ip.to_string();
    let route_name = HTTP_PROXY_PORT.to_string();
    let mut l = listener(
        format!("{ip}_{HTTP_PROXY_PORT}"),
        &ip,
        HTTP_PROXY_PORT,
        TrafficDirection::Outbound,
        true,
    );
    l.filter_chains = vec![filter_chain(
        "",
        None,
        vec![hcm_filter(Hcm {
            stat_prefix: format!("outbound_{ip}_{HTTP_PROXY_PORT}"),
            routes: Routes::Rds(route_name.clone()),
            filters: HttpFilters::Outbound,
            server_name: ENVOY_SERVER_NAME,
            use_remote_address: false,
            allow_absolute_url: true,
            forward_client_cert: false,
            authz: Vec::new(),
            tracing: hcm_tracing(ctx, Class::Outbound),
        })],
    )];
    insert(out, l);
    out.routes.insert(
        route_name.clone(),
        route_config::http_proxy(ctx, vss, &route_name),
    );
    // TCP and TLS service ports, each on its own listener on the proxy's address.
    let mut taken: std::collections::BTreeSet<u16> =
        ctx.inbound_ports().iter().map(|p| p.port).collect();
    taken.insert(HTTP_PROXY_PORT);
    for (port, services) in l4_ports(ctx) {
        if taken.contains(&port) {
            for (svc, _) in &services {
                tracing::warn!(
                    service = %svc.hostname,
                    port,
                    proxy = %ctx.proxy,
                    "a TCP service port is one the proxy itself uses (15080 or an inbound port); \
                     it is not reachable through this proxy without capture"
                );
            }
            continue;
        }
        let mut l = listener(
            format!("{ip}_{port}"),
            &ip,
            port,
            TrafficDirection::Outbound,
            true,
        );
        shared_port(ctx, vss, &mut l, port, &services);
        insert(out, l);
    }
}

/// The visible services' TCP and TLS ports, by port number, services in host name order.
fn l4_ports<'a>(ctx: &Ctx<'a>) -> BTreeMap<u16, Vec<(&'a Service, Protocol)>> {
    let mut ports: BTreeMap<u16, Vec<(&Service, Protocol)>> = BTreeMap::new();
    for svc in ctx.visible_services() {
        for p in svc.ports.iter().filter(|p| !p.protocol.is_http()) {
            ports.entry(p.number).or_default().push((svc, p.protocol));
        }
    }
    ports
}

/// Fills a listener that several services share by port (no VIP tells them apart): TLS services
/// by SNI when all of them are TLS, else the first service alone (the others are logged).
fn shared_port(
    ctx: &Ctx<'_>,
    vss: &[BoundVs<'_>],
    l: &mut Listener,
    port: u16,
    services: &[(&Service, Protocol)],
) {
    if services.iter().all(|(_, p)| is_tls(*p)) {
        l.listener_filters = vec![tls_inspector_listener_filter()];
        let mut seen = std::collections::BTreeSet::new();
        for (svc, protocol) in services {
            for chain in l4_chains(ctx, vss, svc, port, *protocol, true) {
                let key = chain
                    .filter_chain_match
                    .as_ref()
                    .map(|m| m.server_names.clone());
                if seen.insert(key) {
                    l.filter_chains.push(chain);
                }
            }
        }
        return;
    }
    let (svc, protocol) = services[0];
    for (other, _) in &services[1..] {
        tracing::warn!(
            service = %other.hostname,
            port,
            kept = %svc.hostname,
            "two TCP services share a listener port; only the first by host name is reachable"
        );
    }
    l.filter_chains = l4_chains(ctx, vss, svc, port, protocol, false);
}

fn build_captured(ctx: &Ctx<'_>, vss: &[BoundVs<'_>], out: &mut XdsResources) {
    insert(out, virtual_outbound(ctx.outbound_policy()));
    let http_ports = route_config::http_ports(ctx);
    for &port in &http_ports {
        let mut l = listener(
            format!("{ANY}_{port}"),
            ANY,
            port,
            TrafficDirection::Outbound,
            false,
        );
        l.filter_chains = vec![filter_chain(
            "",
            None,
            vec![hcm_filter(Hcm {
                stat_prefix: format!("outbound_{ANY}_{port}"),
                routes: Routes::Rds(port.to_string()),
                filters: HttpFilters::Outbound,
                server_name: ENVOY_SERVER_NAME,
                use_remote_address: false,
                allow_absolute_url: false,
                forward_client_cert: false,
                authz: Vec::new(),
                tracing: hcm_tracing(ctx, Class::Outbound),
            })],
        )];
        insert(out, l);
        out.routes
            .insert(port.to_string(), route_config::for_port(ctx, vss, port));
    }
    // TCP and TLS: by VIP when the service has one, else one wildcard listener per port.
    let mut wildcard: BTreeMap<u16, Vec<(&Service, Protocol)>> = BTreeMap::new();
    for svc in ctx.visible_services() {
        for p in svc.ports.iter().filter(|p| !p.protocol.is_http()) {
            let vips: Vec<String> = svc
                .addresses
                .iter()
                .filter(|a| !a.is_unspecified())
                .map(ToString::to_string)
                .collect();
            if vips.is_empty() {
                wildcard
                    .entry(p.number)
                    .or_default()
                    .push((svc, p.protocol));
                continue;
            }
            for vip in vips {
                let mut l = listener(
                    format!("{vip}_{}", p.number),
                    &vip,
                    p.number,
                    TrafficDirection::Outbound,
                    false,
                );
                l.filter_chains = l4_chains(ctx, vss, svc, p.number, p.protocol, false);
                if is_tls(p.protocol) {
                    l.listener_filters = vec![tls_inspector_listener_filter()];
                }
                insert(out, l);
            }
        }
    }
    for (port, services) in wildcard {
        if http_ports.contains(&port) {
            for (svc, _) in &services {
                tracing::warn!(
                    service = %svc.hostname,
                    port,
                    "a TCP service without a VIP shares its port with HTTP services; it is not reachable"
                );
            }
            continue;
        }
        let mut l = listener(
            format!("{ANY}_{port}"),
            ANY,
            port,
            TrafficDirection::Outbound,
            false,
        );
        shared_port(ctx, vss, &mut l, port, &services);
        insert(out, l);
    }
}

fn is_tls(p: Protocol) -> bool {
    matches!(p, Protocol::Https | Protocol::Tls)
}

/// `virtualOutbound`: receives everything iptables redirects, hands each connection to the
/// listener of its original destination, and passes the rest through (or drops it).
fn virtual_outbound(policy: OutboundPolicy) -> Listener {
    let mut l = listener(
        "virtualOutbound",
        ANY,
        VIRTUAL_OUTBOUND_PORT,
        TrafficDirection::Outbound,
        true,
    );
    l.use_original_dst = Some(bool_value(true));
    l.listener_filters = vec![original_dst_listener_filter()];
    // A connection to 15001 itself would loop.
    l.filter_chains = vec![filter_chain(
        "virtualOutbound-blackhole",
        Some(FilterChainMatch {
            destination_port: Some(u32_value(u32::from(VIRTUAL_OUTBOUND_PORT))),
            ..Default::default()
        }),
        vec![tcp_proxy_filter(
            BLACKHOLE_CLUSTER,
            TcpTarget::Cluster(BLACKHOLE_CLUSTER.to_string()),
        )],
    )];
    let cluster = match policy {
        OutboundPolicy::AllowAny => PASSTHROUGH_CLUSTER,
        OutboundPolicy::RegistryOnly => BLACKHOLE_CLUSTER,
    };
    l.default_filter_chain = Some(filter_chain(
        "PassthroughFilterChain",
        None,
        vec![tcp_proxy_filter(
            cluster,
            TcpTarget::Cluster(cluster.to_string()),
        )],
    ));
    l
}

/// The filter chains for a TCP or TLS service port: TLS routes of its VirtualService by SNI,
/// then the service itself (matched by its host name as SNI when `by_sni`, as on a shared
/// wildcard listener), through its VirtualService's first TCP route that applies.
fn l4_chains(
    ctx: &Ctx<'_>,
    vss: &[BoundVs<'_>],
    svc: &Service,
    port: u16,
    protocol: Protocol,
    by_sni: bool,
) -> Vec<FilterChain> {
    let vs = config::for_host(vss, &svc.hostname);
    let mut chains = Vec::new();
    if is_tls(protocol)
        && let Some(vs) = vs
    {
        for tls in &vs.spec.tls {
            for m in &tls.matches {
                if m.sni_hosts.is_empty()
                    || !l4::applies(ctx, vs, &L4Match::from(m), port, MESH_GATEWAY)
                {
                    continue;
                }
                if let Some(target) = tcp_target(ctx, vs, port, &tls.route) {
                    chains.push(filter_chain(
                        format!("{}:{port}", m.sni_hosts.join(",")),
                        Some(FilterChainMatch {
                            server_names: m.sni_hosts.clone(),
                            prefix_ranges: cidrs(&m.destination_subnets),
                            ..Default::default()
                        }),
                        vec![tcp_proxy_filter(&stat_name(&target), target)],
                    ));
                }
            }
        }
    }
    let tcp_route = vs.and_then(|vs| {
        vs.spec
            .tcp
            .iter()
            .find(|r| {
                r.matches.is_empty()
                    || r.matches
                        .iter()
                        .any(|m| l4::applies(ctx, vs, &L4Match::from(m), port, MESH_GATEWAY))
            })
            .and_then(|r| tcp_target(ctx, vs, port, &r.route))
    });
    let target = tcp_route
        .unwrap_or_else(|| TcpTarget::Cluster(outbound_cluster_name(port, "", &svc.hostname)));
    let chain_match = by_sni.then(|| FilterChainMatch {
        server_names: vec![svc.hostname.clone()],
        ..Default::default()
    });
    chains.push(filter_chain(
        format!("{}:{port}", svc.hostname),
        chain_match,
        vec![tcp_proxy_filter(&stat_name(&target), target)],
    ));
    // Envoy refuses two chains with one match: the first wins.
    let mut kept: Vec<FilterChain> = Vec::new();
    for chain in chains {
        if kept
            .iter()
            .all(|k| k.filter_chain_match != chain.filter_chain_match)
        {
            kept.push(chain);
        }
    }
    kept
}
