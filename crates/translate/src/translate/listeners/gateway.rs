//! A gateway's listeners and routes, from the Gateway resources that select it.
//!
//! Each HTTP server port gets a listener `ADDRESS_PORT` bound on the gateway proxy's own address
//! (`0.0.0.0_PORT` for a gateway started with `--address 0.0.0.0`, as Istio binds; a specific
//! address lets several gateways share one machine) with an HCM on route
//! configuration `http.PORT`. Its virtual hosts are the server hosts that VirtualServices bound
//! to the gateway serve: a server host `NS/HOST` (`*/HOST` when written bare, `./HOST` for the
//! Gateway's namespace) takes VirtualServices from NS whose hosts intersect HOST. A host nobody
//! serves has no virtual host, so Envoy answers 404.
//!
//! A TCP server (protocol TCP, MONGO, REDIS or MYSQL) on port P gets a listener `ADDRESS_P` with
//! a tcp_proxy: the first `tcp:` route, of the VirtualServices bound to the gateway whose hosts
//! intersect the server's, with a match for P (or no match) picks the cluster or the weighted
//! clusters. A TLS server (or HTTPS) with mode `PASSTHROUGH` routes on SNI without terminating
//! TLS: one filter chain per `tls:` match for P, matching its `sniHosts` that the server's
//! hosts cover. With no such route, the listener's only chain goes to `BlackHoleCluster`, so
//! connections are accepted and closed. Servers of another kind on a port already taken by
//! one kind are skipped and logged.
//!
//! Terminated TLS (HTTPS and TLS servers with SIMPLE, MUTUAL, OPTIONAL_MUTUAL or ISTIO_MUTUAL)
//! shares a port with passthrough servers, as in Istio: the listener reads the SNI
//! (tls_inspector) and each terminated server gets one filter chain matching its hosts
//! (`server_names`, none when a host is `*`) with the server's TLS ([`gateway_tls`]). An HTTPS
//! server's chain has an HCM on a route configuration of its own,
//! `https.PORT.PORT_NAME.GATEWAY.NAMESPACE`, built like `http.PORT` from that server alone; a TLS
//! server's chain has a tcp_proxy to its first `tcp:` route (as a TCP server's). An HTTP server
//! with `tls.httpsRedirect` marks its virtual hosts `require_tls: ALL` (Envoy answers plain
//! HTTP with a 301 to https), even those no VirtualService serves. AUTO_PASSTHROUGH is not
//! translated yet.
//!
//! [`gateway_tls`]: super::gateway_tls

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, FilterChainMatch, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, Route, RouteConfiguration, VirtualHost, route, virtual_host,
};
use strait_api::networking::gateway::{Protocol, Server, TlsMode};

use super::config::{self, BoundVs};
use super::filters::{
    Hcm, HttpFilters, ISTIO_SERVER_NAME, Routes, TcpTarget, bool_value, filter_chain, hcm_filter,
    listener, tcp_proxy_filter, tls_inspector_listener_filter, u32_value,
};
use super::http_route::{
    MAX_DIRECT_RESPONSE_BODY_BYTES, RouteScope, is_catch_all, prefix_match, virtual_service_routes,
};
use super::l4::{self, L4Match, cidrs, stat_name, tcp_target};
use crate::snapshot::namespace_of;
use crate::translate::tracer::{self, hcm_tracing};
use crate::translate::{BLACKHOLE_CLUSTER, Ctx, host_matches};
use crate::translate::{authz, ratelimit};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
use strait_xds_core::XdsResources;

/// How a gateway server's connections are handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Plain HTTP, through an HCM.
    Http,
    /// Opaque TCP, through tcp_proxy.
    Tcp,
    /// TLS routed on SNI, not terminated.
    TlsPassthrough,
    /// HTTPS: TLS terminated, then an HCM.
    Https,
    /// TLS terminated, then tcp_proxy.
    TlsTerminated,
}

/// Servers of one class share a port: plain HTTP, TCP, or TLS (terminated or not, told apart
/// by SNI).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Http,
    Tcp,
    Tls,
}

impl Kind {
    /// The kind of a server, if Strait translates it.
    fn of(server: &Server) -> Option<Kind> {
        let protocol = server.protocol();
        if protocol.is_http() {
            return Some(Kind::Http);
        }
        if matches!(
            protocol,
            Protocol::Tcp | Protocol::Mongo | Protocol::Redis | Protocol::Mysql
        ) {
            return Some(Kind::Tcp);
        }
        if !protocol.is_tls() {
            return None;
        }
        match server.tls.as_ref()?.mode() {
            TlsMode::Passthrough => Some(Kind::TlsPassthrough),
            TlsMode::AutoPassthrough => None,
            TlsMode::Simple | TlsMode::Mutual | TlsMode::OptionalMutual | TlsMode::IstioMutual => {
                Some(if protocol == Protocol::Https {
                    Kind::Https
                } else {
                    Kind::TlsTerminated
                })
            }
        }
    }

    fn class(self) -> Class {
        match self {
            Kind::Http => Class::Http,
            Kind::Tcp => Class::Tcp,
            Kind::TlsPassthrough | Kind::Https | Kind::TlsTerminated => Class::Tls,
        }
    }
}

/// A server of a Gateway that selects this proxy.
struct BoundServer<'a> {
    /// `NAMESPACE/NAME` of the Gateway.
    gateway: String,
    /// The Gateway's name.
    name: &'a str,
    namespace: &'a str,
    server: &'a Server,
    kind: Kind,
}

impl BoundServer<'_> {
    /// The server's hosts as (namespace, host): `NS/HOST`, `./HOST` (the Gateway's namespace),
    /// or a bare `HOST` (any namespace, `*`).
    fn hosts(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.server.hosts.iter().map(|h| {
            let (ns, host) = h.split_once('/').unwrap_or(("*", h));
            (if ns == "." { self.namespace } else { ns }, host)
        })
    }

    /// The SNI names a terminated server's filter chain matches: its hosts without their
    /// namespaces, sorted; none (any SNI) when one is `*`.
    fn server_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.hosts().map(|(_, h)| h.to_string()).collect();
        if names.iter().any(|h| h == "*") {
            return Vec::new();
        }
        names.sort();
        names.dedup();
        names
    }

    /// `https.PORT.PORT_NAME.GATEWAY.NAMESPACE` (Istio's name for a terminated server's routes
    /// and chain).
    fn tls_name(&self, prefix: &str, port: u16) -> String {
        let port_name = self.server.port.as_ref().map_or("", |p| p.name.as_str());
        format!(
            "{prefix}.{port}.{port_name}.{}.{}",
            self.name, self.namespace
        )
    }

    /// An HTTP server that redirects plain HTTP to HTTPS.
    fn https_redirect(&self) -> bool {
        self.server.tls.as_ref().is_some_and(|t| t.https_redirect)
    }

    /// Whether the server takes `vs`: one of its hosts admits the VirtualService's namespace
    /// and intersects one of its hosts.
    fn serves(&self, vs: &BoundVs<'_>) -> bool {
        self.hosts().any(|(ns, host)| {
            (ns == "*" || ns == vs.namespace)
                && vs.hosts.iter().any(|h| intersect(host, h).is_some())
        })
    }
}

pub(super) fn build(ctx: &Ctx<'_>, out: &mut XdsResources) {
    let mut by_port: BTreeMap<u16, Vec<BoundServer<'_>>> = BTreeMap::new();
    for (meta, gw) in ctx.config.gateways() {
        if !gw
            .selector
            .iter()
            .all(|(k, v)| ctx.proxy.labels.get(k) == Some(v))
        {
            continue;
        }
        let namespace = namespace_of(meta);
        for server in &gw.servers {
            let Some(port) = server
                .port
                .as_ref()
                .and_then(|p| u16::try_from(p.number).ok())
            else {
                continue;
            };
            let Some(kind) = Kind::of(server) else {
                tracing::debug!(
                    gateway = %meta.name,
                    port,
                    protocol = %server.protocol(),
                    "only HTTP, TCP and TLS (terminated or passthrough) gateway servers are \
                     translated yet (not AUTO_PASSTHROUGH, nor HTTPS or TLS without tls \
                     settings); server skipped"
                );
                continue;
            };
            let servers = by_port.entry(port).or_default();
            if let Some(first) = servers.first()
                && first.kind.class() != kind.class()
            {
                tracing::warn!(
                    gateway = %meta.name,
                    port,
                    kind = ?kind,
                    taken_by = %first.gateway,
                    "a gateway port serves one kind of traffic; this server is skipped"
                );
                continue;
            }
            servers.push(BoundServer {
                gateway: format!("{namespace}/{}", meta.name),
                name: &meta.name,
                namespace,
                server,
                kind,
            });
        }
    }
    let ip = ctx.proxy.ip.to_string();
    // Gateways enforce the AuthorizationPolicies that select them.
    let policies = authz::policies_for(
        ctx.config,
        ctx.registry,
        &ctx.proxy.namespace,
        &ctx.proxy.labels,
    );
    for (port, servers) in by_port {
        if servers[0].kind.class() != Class::Http {
            let l = l4_listener(ctx, &ip, port, &servers, out);
            out.listeners.insert(l.name.clone(), l);
            continue;
        }
        let route_name = format!("http.{port}");
        let mut l = listener(
            format!("{ip}_{port}"),
            &ip,
            port,
            TrafficDirection::Outbound,
            true,
        );
        l.filter_chains = vec![filter_chain(
            "",
            None,
            vec![hcm_filter(Hcm {
                stat_prefix: format!("outbound_{ip}_{port}"),
                routes: Routes::Rds(route_name.clone()),
                filters: HttpFilters::Outbound,
                server_name: ISTIO_SERVER_NAME,
                use_remote_address: true,
                allow_absolute_url: false,
                forward_client_cert: false,
                authz: with_rate_limit(ctx, port, authz::http_filters(&policies)),
                tracing: hcm_tracing(ctx, tracer::Class::Gateway),
            })],
        )];
        out.listeners.insert(l.name.clone(), l);
        let rc = route_configuration(ctx, &route_name, port, &servers);
        out.routes.insert(route_name, rc);
    }
}

/// The listener of a TCP port, or of a TLS port (passthrough and terminated servers, told apart
/// by SNI); the route configurations of its HTTPS servers go to `out`.
fn l4_listener(
    ctx: &Ctx<'_>,
    ip: &str,
    port: u16,
    servers: &[BoundServer<'_>],
    out: &mut XdsResources,
) -> Listener {
    let mut l = listener(
        format!("{ip}_{port}"),
        ip,
        port,
        TrafficDirection::Outbound,
        true,
    );
    let mut chains: Vec<FilterChain> = Vec::new();
    if servers[0].kind.class() == Class::Tls {
        l.listener_filters = vec![tls_inspector_listener_filter()];
        for bs in servers {
            let found = match bs.kind {
                Kind::TlsPassthrough => tls_chains(ctx, port, bs),
                _ => terminated_chain(ctx, &ip_prefix(ip, port), port, bs, out)
                    .into_iter()
                    .collect(),
            };
            for chain in found {
                // Envoy refuses two chains with one match: the first wins.
                if chains
                    .iter()
                    .all(|c| c.filter_chain_match != chain.filter_chain_match)
                {
                    chains.push(chain);
                } else {
                    tracing::warn!(
                        gateway = %bs.gateway,
                        port,
                        chain = %chain.name,
                        "two gateway servers match the same SNI on one port; the first is kept"
                    );
                }
            }
        }
    } else if let Some((bs, target)) = servers
        .iter()
        .find_map(|bs| Some((bs, tcp_route(ctx, port, bs)?)))
    {
        chains.push(filter_chain(
            format!("{}:{port}", bs.gateway),
            None,
            vec![tcp_proxy_filter(&stat_name(&target), target)],
        ));
    }
    if chains.is_empty() {
        tracing::debug!(
            port,
            "no VirtualService routes this gateway port; connections are closed"
        );
        chains.push(filter_chain(
            BLACKHOLE_CLUSTER,
            None,
            vec![tcp_proxy_filter(
                BLACKHOLE_CLUSTER,
                TcpTarget::Cluster(BLACKHOLE_CLUSTER.to_string()),
            )],
        ));
    }
    let rbac = authz::network_filters(&authz::policies_for(
        ctx.config,
        ctx.registry,
        &ctx.proxy.namespace,
        &ctx.proxy.labels,
    ));
    for c in &mut chains {
        c.filters.splice(0..0, rbac.iter().cloned());
    }
    l.filter_chains = chains;
    l
}

/// The gateway's authentication and authorization filters, then the LocalRateLimit that
/// selects it on this port (its `tokenBucket`; rules apply to sidecars only).
fn with_rate_limit(ctx: &Ctx<'_>, port: u16, mut filters: Vec<HttpFilter>) -> Vec<HttpFilter> {
    if let Some((meta, p)) =
        ratelimit::policy_for(ctx.config, &ctx.proxy.namespace, &ctx.proxy.labels, port)
    {
        if !p.rules.is_empty() {
            tracing::warn!(
                proxy = %ctx.proxy.id,
                policy = %format!("{}/{}", namespace_of(meta), meta.name),
                "LocalRateLimit rules apply to sidecars only; the gateway enforces its tokenBucket"
            );
        }
        filters.push(ratelimit::http_filter(p));
    }
    filters
}

fn ip_prefix(ip: &str, port: u16) -> String {
    format!("outbound_{ip}_{port}")
}

/// The filter chain of a terminated TLS server (HTTPS: an HCM on its own routes, which go to
/// `out`; TLS: a tcp_proxy to its first `tcp:` route, else `BlackHoleCluster`). `None` when its
/// TLS settings cannot be honoured (logged).
fn terminated_chain(
    ctx: &Ctx<'_>,
    stat_prefix: &str,
    port: u16,
    bs: &BoundServer<'_>,
    out: &mut XdsResources,
) -> Option<FilterChain> {
    let https = bs.kind == Kind::Https;
    let tls = bs.server.tls.as_ref()?;
    let socket = match super::gateway_tls::downstream_tls(ctx, tls, https) {
        Ok(socket) => socket,
        Err(why) => {
            tracing::warn!(
                gateway = %bs.gateway,
                port,
                server = %bs.tls_name(if https { "https" } else { "tls" }, port),
                "{why}; server skipped"
            );
            return None;
        }
    };
    let names = bs.server_names();
    let matcher = (!names.is_empty()).then(|| FilterChainMatch {
        server_names: names,
        ..Default::default()
    });
    let mut chain = if https {
        let route_name = bs.tls_name("https", port);
        let rc = route_configuration(ctx, &route_name, port, std::slice::from_ref(bs));
        out.routes.insert(route_name.clone(), rc);
        filter_chain(
            route_name.clone(),
            matcher,
            vec![hcm_filter(Hcm {
                stat_prefix: stat_prefix.to_string(),
                routes: Routes::Rds(route_name),
                filters: HttpFilters::Outbound,
                server_name: ISTIO_SERVER_NAME,
                use_remote_address: true,
                allow_absolute_url: false,
                forward_client_cert: false,
                authz: with_rate_limit(
                    ctx,
                    port,
                    authz::http_filters(&authz::policies_for(
                        ctx.config,
                        ctx.registry,
                        &ctx.proxy.namespace,
                        &ctx.proxy.labels,
                    )),
                ),
                tracing: hcm_tracing(ctx, tracer::Class::Gateway),
            })],
        )
    } else {
        let target = tcp_route(ctx, port, bs)
            .unwrap_or_else(|| TcpTarget::Cluster(BLACKHOLE_CLUSTER.to_string()));
        let mut filters = authz::network_filters(&authz::policies_for(
            ctx.config,
            ctx.registry,
            &ctx.proxy.namespace,
            &ctx.proxy.labels,
        ));
        filters.push(tcp_proxy_filter(&stat_name(&target), target));
        filter_chain(bs.tls_name("tls", port), matcher, filters)
    };
    chain.transport_socket = Some(socket);
    Some(chain)
}

/// Where a TCP server's connections go: the first `tcp:` route that applies on `port`, of the
/// VirtualServices bound to the server's gateway that it serves (Istio's rule).
fn tcp_route(ctx: &Ctx<'_>, port: u16, bs: &BoundServer<'_>) -> Option<TcpTarget> {
    let vss = config::virtual_services(ctx, &bs.gateway);
    let route = vss.iter().filter(|vs| bs.serves(vs)).find_map(|vs| {
        vs.spec
            .tcp
            .iter()
            .find(|r| {
                r.matches.is_empty()
                    || r.matches
                        .iter()
                        .any(|m| l4::applies(ctx, vs, &L4Match::from(m), port, &bs.gateway))
            })
            .map(|r| (vs, r))
    })?;
    tcp_target(ctx, route.0, port, &route.1.route)
}

/// The SNI filter chains of a TLS passthrough server: one per `tls:` match that applies on
/// `port`, matching those of its `sniHosts` that the server's hosts cover.
fn tls_chains(ctx: &Ctx<'_>, port: u16, bs: &BoundServer<'_>) -> Vec<FilterChain> {
    let mut chains = Vec::new();
    for vs in config::virtual_services(ctx, &bs.gateway)
        .iter()
        .filter(|vs| bs.serves(vs))
    {
        for tls in &vs.spec.tls {
            for m in &tls.matches {
                if !l4::applies(ctx, vs, &L4Match::from(m), port, &bs.gateway) {
                    continue;
                }
                let sni: Vec<String> = m
                    .sni_hosts
                    .iter()
                    .filter_map(|sni| bs.hosts().find_map(|(_, host)| intersect(host, sni)))
                    .collect();
                if sni.is_empty() {
                    continue;
                }
                let Some(target) = tcp_target(ctx, vs, port, &tls.route) else {
                    continue;
                };
                chains.push(filter_chain(
                    format!("{}:{port}", sni.join(",")),
                    Some(FilterChainMatch {
                        server_names: sni,
                        prefix_ranges: cidrs(&m.destination_subnets),
                        ..Default::default()
                    }),
                    vec![tcp_proxy_filter(&stat_name(&target), target)],
                ));
            }
        }
    }
    chains
}

/// The more specific of two intersecting hosts (`*` and `a.com` → `a.com`), if they intersect.
fn intersect(server_host: &str, vs_host: &str) -> Option<String> {
    if host_matches(server_host, vs_host) {
        Some(vs_host.to_string())
    } else if host_matches(vs_host, server_host) {
        Some(server_host.to_string())
    } else {
        None
    }
}

/// Istio's gateway domains: the host and `host:*` (any port, for a gateway behind a load
/// balancer); a wildcard host keeps this port, as Envoy allows one wildcard per domain.
fn domains(host: &str, port: u16) -> Vec<String> {
    if host == "*" {
        vec![host.to_string()]
    } else if host.starts_with('*') {
        vec![host.to_string(), format!("{host}:{port}")]
    } else {
        vec![host.to_string(), format!("{host}:*")]
    }
}

/// A virtual host's routes, the VirtualServices (namespace, name) they came from, and whether
/// a server that has the host redirects plain HTTP to HTTPS.
#[derive(Default)]
struct HostRoutes {
    routes: Vec<Route>,
    from: Vec<(String, String)>,
    https_redirect: bool,
}

fn route_configuration(
    ctx: &Ctx<'_>,
    name: &str,
    port: u16,
    servers: &[BoundServer<'_>],
) -> RouteConfiguration {
    // Host → routes, merged over the VirtualServices that serve it (each once).
    let mut hosts: BTreeMap<String, HostRoutes> = BTreeMap::new();
    for bs in servers {
        let vss: Vec<BoundVs<'_>> = config::virtual_services(ctx, &bs.gateway);
        let scope = RouteScope {
            ctx,
            port,
            gateway: &bs.gateway,
        };
        let redirect = bs.kind == Kind::Http && bs.https_redirect();
        for (ns, host) in bs.hosts() {
            if redirect {
                // Redirected even when no VirtualService serves the host.
                hosts.entry(host.to_string()).or_default().https_redirect = true;
            }
            for vs in vss.iter().filter(|vs| ns == "*" || ns == vs.namespace) {
                for vs_host in &vs.hosts {
                    let Some(vhost) = intersect(host, vs_host) else {
                        continue;
                    };
                    let id = (vs.namespace.to_string(), vs.meta.name.clone());
                    let entry = hosts.entry(vhost).or_default();
                    entry.https_redirect |= redirect;
                    if entry.from.contains(&id) {
                        continue;
                    }
                    entry.from.push(id);
                    entry.routes.extend(virtual_service_routes(&scope, vs));
                }
            }
        }
    }
    let mut taken = std::collections::BTreeSet::new();
    let mut virtual_hosts: Vec<VirtualHost> = hosts
        .into_iter()
        .filter(|(_, h)| !h.routes.is_empty() || h.https_redirect)
        .filter_map(|(host, h)| {
            // Catch-all routes go last, keeping the order of the others (Istio's sort).
            let (mut routes, catch_all): (Vec<Route>, Vec<Route>) =
                h.routes.into_iter().partition(|r| !is_catch_all(r));
            routes.extend(catch_all);
            let mut domains = domains(&host, port);
            domains.retain(|d| taken.insert(d.to_ascii_lowercase()));
            (!domains.is_empty()).then(|| VirtualHost {
                name: format!("{host}:{port}"),
                domains,
                routes,
                require_tls: if h.https_redirect {
                    virtual_host::TlsRequirementType::All as i32
                } else {
                    0
                },
                include_request_attempt_count: true,
                ..Default::default()
            })
        })
        .collect();
    if virtual_hosts.is_empty() {
        virtual_hosts.push(VirtualHost {
            name: format!("blackhole:{port}"),
            domains: vec!["*".to_string()],
            routes: vec![Route {
                name: "default".to_string(),
                r#match: Some(prefix_match("/")),
                action: Some(route::Action::DirectResponse(DirectResponseAction {
                    status: 404,
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        });
    }
    RouteConfiguration {
        name: name.to_string(),
        virtual_hosts,
        validate_clusters: Some(bool_value(false)),
        max_direct_response_body_size_bytes: Some(u32_value(MAX_DIRECT_RESPONSE_BODY_BYTES)),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_hosts_intersect_to_the_more_specific() {
        assert_eq!(intersect("*", "a.com").as_deref(), Some("a.com"));
        assert_eq!(intersect("*.com", "*").as_deref(), Some("*.com"));
        assert_eq!(intersect("a.com", "b.com"), None);
        assert_eq!(domains("*", 80), ["*"]);
        assert_eq!(domains("a.com", 80), ["a.com", "a.com:*"]);
        assert_eq!(domains("*.a.com", 8080), ["*.a.com", "*.a.com:8080"]);
    }
}
