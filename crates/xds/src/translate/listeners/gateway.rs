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
//! HTTPS and TLS servers are not translated yet.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, Route, RouteConfiguration, VirtualHost, route,
};
use strait_api::networking::gateway::Server;

use super::config::{self, BoundVs};
use super::filters::{
    Hcm, HttpFilters, Routes, bool_value, filter_chain, hcm_filter, listener, u32_value,
};
use super::http_route::{
    MAX_DIRECT_RESPONSE_BODY_BYTES, RouteScope, is_catch_all, prefix_match, virtual_service_routes,
};
use crate::XdsResources;
use crate::snapshot::namespace_of;
use crate::translate::{Ctx, host_matches};

/// A server of a Gateway that selects this proxy.
struct BoundServer<'a> {
    /// `NAMESPACE/NAME` of the Gateway.
    gateway: String,
    namespace: &'a str,
    server: &'a Server,
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
            let protocol = server.protocol();
            if !protocol.is_http() || server.tls.is_some() {
                tracing::debug!(
                    gateway = %meta.name,
                    port,
                    protocol = %protocol,
                    "only plain HTTP gateway servers are translated yet; server skipped"
                );
                continue;
            }
            by_port.entry(port).or_default().push(BoundServer {
                gateway: format!("{namespace}/{}", meta.name),
                namespace,
                server,
            });
        }
    }
    let ip = ctx.proxy.ip.to_string();
    for (port, servers) in by_port {
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
                use_remote_address: true,
                allow_absolute_url: false,
            })],
        )];
        out.listeners.insert(l.name.clone(), l);
        let rc = route_configuration(ctx, &route_name, port, &servers);
        out.routes.insert(route_name, rc);
    }
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

/// A virtual host's routes, and the VirtualServices (namespace, name) they came from.
type HostRoutes = (Vec<Route>, Vec<(String, String)>);

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
        for server_host in &bs.server.hosts {
            let (ns, host) = server_host.split_once('/').unwrap_or(("*", server_host));
            let ns = if ns == "." { bs.namespace } else { ns };
            for vs in vss.iter().filter(|vs| ns == "*" || ns == vs.namespace) {
                for vs_host in &vs.hosts {
                    let Some(vhost) = intersect(host, vs_host) else {
                        continue;
                    };
                    let id = (vs.namespace.to_string(), vs.meta.name.clone());
                    let entry = hosts.entry(vhost).or_default();
                    if entry.1.contains(&id) {
                        continue;
                    }
                    entry.1.push(id);
                    entry.0.extend(virtual_service_routes(&scope, vs));
                }
            }
        }
    }
    let mut taken = std::collections::BTreeSet::new();
    let mut virtual_hosts: Vec<VirtualHost> = hosts
        .into_iter()
        .filter(|(_, (routes, _))| !routes.is_empty())
        .filter_map(|(host, (routes, _))| {
            // Catch-all routes go last, keeping the order of the others (Istio's sort).
            let (mut routes, catch_all): (Vec<Route>, Vec<Route>) =
                routes.into_iter().partition(|r| !is_catch_all(r));
            routes.extend(catch_all);
            let mut domains = domains(&host, port);
            domains.retain(|d| taken.insert(d.to_ascii_lowercase()));
            (!domains.is_empty()).then(|| VirtualHost {
                name: format!("{host}:{port}"),
                domains,
                routes,
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
