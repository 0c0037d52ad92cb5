//! A sidecar's outbound route configurations: one per HTTP service port (named by the port),
//! and, without capture, `15080` with the virtual hosts of every port.
//!
//! Each service host on the port gets a virtual host `HOST:PORT` whose domains are every name a
//! client may use for it (the FQDN; in Kubernetes, `name`, `name.ns`, `name.ns.svc` as Istio
//! allows them from the proxy's namespace; the VIPs), with and without `:PORT`. Its routes are
//! its VirtualService's, else one default route to `outbound|PORT||HOST`. Hosts nobody knows
//! end in the catch-all: `allow_any` (to `PassthroughCluster`) or `block_all` (502).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, Route, RouteAction, RouteConfiguration, VirtualHost, route, route_action,
};
use strait_registry::{Origin, Resolution, Service};

use super::config::{self, BoundVs};
use super::filters::{bool_value, duration, u32_value};
use super::http_policy::stream_duration_limit;
use super::http_route::{
    MAX_DIRECT_RESPONSE_BODY_BYTES, RouteScope, default_route, prefix_match, virtual_service_routes,
};
use crate::snapshot::OutboundPolicy;
use crate::translate::{Ctx, PASSTHROUGH_CLUSTER, clusters};

/// The HTTP ports of the services this proxy sees, in order.
pub(super) fn http_ports(ctx: &Ctx<'_>) -> BTreeSet<u16> {
    ctx.visible_services()
        .flat_map(|s| s.ports.iter())
        .filter(|p| p.protocol.is_http())
        .map(|p| p.number)
        .collect()
}

/// The route configuration for HTTP port `port` (named `"PORT"`).
pub(super) fn for_port(ctx: &Ctx<'_>, vss: &[BoundVs<'_>], port: u16) -> RouteConfiguration {
    let mut vhosts = Domains::default().keep(port_virtual_hosts(ctx, vss, port));
    vhosts.push(catch_all(ctx.outbound_policy()));
    route_configuration(port.to_string(), vhosts)
}

/// The route configuration of the HTTP proxy listener: the virtual hosts of every port. An
/// HTTP proxy client sends `GET http://host:port/path`, which Envoy reads as `:authority
/// host:port`, so on ports other than 80 only the domains with the port are kept; port 80's
/// keep the bare names too (`http://host/path`), as Istio's merge does.
pub(super) fn http_proxy(ctx: &Ctx<'_>, vss: &[BoundVs<'_>], name: &str) -> RouteConfiguration {
    let mut all = Vec::new();
    for port in http_ports(ctx) {
        for mut vh in port_virtual_hosts(ctx, vss, port) {
            if port != 80 {
                vh.domains.retain(|d| d.contains(':') && !d.ends_with(']'));
            }
            if !vh.domains.is_empty() {
                all.push(vh);
            }
        }
    }
    let mut vhosts = Domains::default().keep(all);
    vhosts.push(catch_all(ctx.outbound_policy()));
    route_configuration(name.to_string(), vhosts)
}

fn route_configuration(name: String, virtual_hosts: Vec<VirtualHost>) -> RouteConfiguration {
    RouteConfiguration {
        name,
        virtual_hosts,
        validate_clusters: Some(bool_value(false)),
        max_direct_response_body_size_bytes: Some(u32_value(MAX_DIRECT_RESPONSE_BODY_BYTES)),
        ..Default::default()
    }
}

/// Domains already taken in one route configuration: Envoy refuses a domain on two virtual
/// hosts, so later ones lose it (as Istio's dedupe does).
#[derive(Default)]
struct Domains(BTreeSet<String>);

impl Domains {
    fn keep(&mut self, vhosts: Vec<VirtualHost>) -> Vec<VirtualHost> {
        vhosts
            .into_iter()
            .filter_map(|mut vh| {
                vh.domains.retain(|d| self.0.insert(d.to_ascii_lowercase()));
                if vh.domains.is_empty() {
                    tracing::debug!(virtual_host = %vh.name, "all its domains are taken; dropped");
                    None
                } else {
                    Some(vh)
                }
            })
            .collect()
    }
}

/// One virtual host per HTTP service on `port` (with its VirtualService's routes when one
/// applies), plus, on port 80, the VirtualService hosts that are no service.
fn port_virtual_hosts(ctx: &Ctx<'_>, vss: &[BoundVs<'_>], port: u16) -> Vec<VirtualHost> {
    let scope = RouteScope {
        ctx,
        port,
        gateway: strait_api::networking::virtual_service::MESH_GATEWAY,
    };
    let services: Vec<&Service> = ctx
        .visible_services()
        .filter(|s| s.port(port).is_some_and(|p| p.protocol.is_http()))
        .collect();
    let known: BTreeSet<String> = services
        .iter()
        .flat_map(|s| [s.hostname.clone(), format!("{}:{port}", s.hostname)])
        .collect();
    // Routes per VirtualService (by index in `vss`), computed once for this port.
    let mut vs_routes: BTreeMap<usize, Vec<Route>> = BTreeMap::new();
    let mut routes_of = |i: usize| -> Vec<Route> {
        vs_routes
            .entry(i)
            .or_insert_with(|| virtual_service_routes(&scope, &vss[i]))
            .clone()
    };
    let mut out = Vec::new();
    for svc in &services {
        let vs_index = config::for_host(vss, &svc.hostname)
            .and_then(|vs| vss.iter().position(|v| std::ptr::eq(v, vs)));
        let mut routes = vs_index.map(&mut routes_of).unwrap_or_default();
        if routes.is_empty() {
            let hash = clusters::hash_policy(ctx, &svc.hostname, "", port);
            routes = vec![default_route(&svc.hostname, port, hash)];
        }
        out.push(VirtualHost {
            name: format!("{}:{port}", svc.hostname),
            domains: service_domains(ctx, svc, port, &known),
            routes,
            include_request_attempt_count: true,
            ..Default::default()
        });
    }
    if port == 80 {
        for (i, vs) in vss.iter().enumerate() {
            let unknown: Vec<&String> = vs
                .hosts
                .iter()
                .filter(|h| {
                    !services
                        .iter()
                        .any(|s| crate::translate::host_matches(h, &s.hostname))
                })
                .collect();
            if unknown.is_empty() || unknown.len() != vs.hosts.len() {
                continue;
            }
            let routes = routes_of(i);
            if routes.is_empty() {
                continue;
            }
            for host in unknown {
                out.push(VirtualHost {
                    name: format!("{host}:{port}"),
                    domains: vec![host.clone(), format!("{host}:{port}")],
                    routes: routes.clone(),
                    include_request_attempt_count: true,
                    ..Default::default()
                });
            }
        }
    }
    out
}

/// `name` and `name:port`.
fn with_port(out: &mut Vec<String>, name: &str, port: u16) {
    out.push(name.to_string());
    out.push(format!("{name}:{port}"));
}

/// Every name a client of this proxy may use for `svc` on `port`, as Istio generates them.
fn service_domains(
    ctx: &Ctx<'_>,
    svc: &Service,
    port: u16,
    known: &BTreeSet<String>,
) -> Vec<String> {
    let host = svc.hostname.as_str();
    let mut domains = Vec::new();
    with_port(&mut domains, host, port);
    let suffix = format!(".svc.{}", ctx.config.mesh.domain_suffix);
    if let Some(name_ns) = host.strip_suffix(&suffix)
        && let Some((name, ns)) = name_ns.split_once('.')
        && !ns.contains('.')
    {
        let mut alt = Vec::new();
        if ns == ctx.proxy.namespace {
            with_port(&mut alt, name, port);
        }
        with_port(&mut alt, &format!("{name_ns}.svc"), port);
        with_port(&mut alt, name_ns, port);
        // A short name that is some other service's full name stays that service's.
        domains.extend(alt.into_iter().filter(|d| !known.contains(d)));
    }
    if svc.resolution == Resolution::Passthrough
        && matches!(svc.origin, Origin::KubernetesService { .. })
    {
        let wild: Vec<String> = domains.iter().map(|d| format!("*.{d}")).collect();
        domains.extend(wild);
    }
    for vip in &svc.addresses {
        if vip.is_unspecified() {
            continue;
        }
        let text = match vip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("[{v6}]"),
        };
        with_port(&mut domains, &text, port);
    }
    domains
}

/// The virtual host for every other host: pass through (`allow_any`) or refuse with 502
/// (`block_all`), as the outbound traffic policy says.
fn catch_all(policy: OutboundPolicy) -> VirtualHost {
    let (name, action) = match policy {
        OutboundPolicy::AllowAny => (
            "allow_any",
            route::Action::Route(RouteAction {
                cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                    PASSTHROUGH_CLUSTER.to_string(),
                )),
                timeout: Some(duration(0)),
                max_stream_duration: Some(stream_duration_limit(duration(0))),
                ..Default::default()
            }),
        ),
        OutboundPolicy::RegistryOnly => (
            "block_all",
            route::Action::DirectResponse(DirectResponseAction {
                status: 502,
                ..Default::default()
            }),
        ),
    };
    VirtualHost {
        name: name.to_string(),
        domains: vec!["*".to_string()],
        routes: vec![Route {
            name: name.to_string(),
            r#match: Some(prefix_match("/")),
            action: Some(action),
            ..Default::default()
        }],
        include_request_attempt_count: true,
        ..Default::default()
    }
}
