//! A sidecar's outbound listeners.
//!
//! With iptables capture, as Istio: `virtualOutbound` on 15001 takes every redirected
//! connection and hands it (`use_original_dst`) to the listener for its original destination:
//! `0.0.0.0_PORT` for HTTP ports (an HCM on route configuration `PORT`), `VIP_PORT` for TCP and
//! TLS services with a VIP, `0.0.0.0_PORT` for those without; anything else goes to
//! `PassthroughCluster` (or `BlackHoleCluster` under `REGISTRY_ONLY`).
//!
//! Without capture: one HTTP proxy listener on `ADDRESS:15080` with route configuration
//! `15080`. TCP services are not reachable that way yet.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::{CidrRange, TrafficDirection};
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, FilterChainMatch, Listener};
use strait_api::networking::virtual_service::{MESH_GATEWAY, RouteDestination};
use strait_registry::{Protocol, Service};

use super::config::{self, BoundVs};
use super::filters::{
    Hcm, HttpFilters, Routes, TcpTarget, bool_value, filter_chain, hcm_filter, listener,
    original_dst_listener_filter, tcp_proxy_filter, tls_inspector_listener_filter, u32_value,
};
use super::route_config;
use crate::snapshot::OutboundPolicy;
use crate::translate::{
    BLACKHOLE_CLUSTER, Ctx, HTTP_PROXY_PORT, PASSTHROUGH_CLUSTER, VIRTUAL_OUTBOUND_PORT,
    outbound_cluster_name,
};
use crate::{CaptureMode, XdsResources};

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
            use_remote_address: false,
            allow_absolute_url: true,
        })],
    )];
    insert(out, l);
    out.routes.insert(
        route_name.clone(),
        route_config::http_proxy(ctx, vss, &route_name),
    );
    if ctx
        .visible_services()
        .any(|s| s.ports.iter().any(|p| !p.protocol.is_http()))
    {
        tracing::debug!(
            proxy = %ctx.proxy,
            "TCP service ports are not reachable without capture yet; no listeners for them"
        );
    }
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
                use_remote_address: false,
                allow_absolute_url: false,
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
        let tls = services.iter().all(|(_, p)| is_tls(*p));
        if tls {
            l.listener_filters = vec![tls_inspector_listener_filter()];
            let mut seen = std::collections::BTreeSet::new();
            for (svc, protocol) in &services {
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
        } else {
            let (svc, protocol) = services[0];
            for (other, _) in &services[1..] {
                tracing::warn!(
                    service = %other.hostname,
                    port,
                    kept = %svc.hostname,
                    "two TCP services without VIPs share a port; only the first is reachable"
                );
            }
            l.filter_chains = l4_chains(ctx, vss, svc, port, protocol, false);
        }
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

/// Where a TCP or TLS route sends connections.
fn tcp_target(
    ctx: &Ctx<'_>,
    vs: &BoundVs<'_>,
    port: u16,
    dests: &[RouteDestination],
) -> Option<TcpTarget> {
    let suffix = &ctx.config.mesh.domain_suffix;
    let cluster = |rd: &RouteDestination| -> Option<String> {
        let d = rd.destination.as_ref()?;
        let host = vs.resolve(&d.host, suffix);
        let dport = d
            .port
            .as_ref()
            .and_then(|p| u16::try_from(p.number).ok())
            .filter(|p| *p != 0)
            .or_else(|| match ctx.registry.services.get(&host) {
                Some(s) if s.ports.len() == 1 => Some(s.ports[0].number),
                _ => None,
            })
            .unwrap_or(port);
        Some(outbound_cluster_name(dport, &d.subset, &host))
    };
    match dests {
        [] => None,
        [only] => cluster(only).map(TcpTarget::Cluster),
        many => {
            let weighted: Vec<(String, u32)> = many
                .iter()
                .filter_map(|rd| Some((cluster(rd)?, u32::try_from(rd.weight).ok()?)))
                .filter(|(_, w)| *w > 0)
                .collect();
            (!weighted.is_empty()).then_some(TcpTarget::Weighted(weighted))
        }
    }
}

/// Does an L4 match (TCP or TLS) apply to this proxy on `port`?
fn l4_applies(
    ctx: &Ctx<'_>,
    vs: &BoundVs<'_>,
    port: Option<u32>,
    source_labels: &BTreeMap<String, String>,
    gateways: &[String],
    source_namespace: &str,
    on_port: u16,
) -> bool {
    port.is_none_or(|p| p == 0 || p == u32::from(on_port))
        && source_labels
            .iter()
            .all(|(k, v)| ctx.proxy.labels.get(k) == Some(v))
        && (gateways.is_empty()
            || gateways
                .iter()
                .any(|g| config::qualified_gateway(g, vs.namespace) == MESH_GATEWAY))
        && (source_namespace.is_empty() || source_namespace == ctx.proxy.namespace)
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
                    || !l4_applies(
                        ctx,
                        vs,
                        m.port,
                        &m.source_labels,
                        &m.gateways,
                        &m.source_namespace,
                        port,
                    )
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
                    || r.matches.iter().any(|m| {
                        l4_applies(
                            ctx,
                            vs,
                            m.port,
                            &m.source_labels,
                            &m.gateways,
                            &m.source_namespace,
                            port,
                        )
                    })
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

fn stat_name(target: &TcpTarget) -> String {
    match target {
        TcpTarget::Cluster(c) => c.clone(),
        TcpTarget::Weighted(_) => "weighted".to_string(),
    }
}

/// Destination subnets (`10.0.0.0/8`, or a bare address) as CIDR ranges; unreadable ones are
/// skipped (validation has refused them).
fn cidrs(subnets: &[String]) -> Vec<CidrRange> {
    subnets
        .iter()
        .filter_map(|s| {
            let (addr, len) = match s.split_once('/') {
                Some((a, l)) => (a, l.parse::<u32>().ok()?),
                None => (s.as_str(), if s.contains(':') { 128 } else { 32 }),
            };
            addr.parse::<std::net::IpAddr>().ok()?;
            Some(CidrRange {
                address_prefix: addr.to_string(),
                prefix_len: Some(u32_value(len)),
            })
        })
        .collect()
}
