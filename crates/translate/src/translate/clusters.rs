//! Clusters and their endpoints (ClusterLoadAssignments), as Istio builds them:
//! - per visible service port, `outbound|PORT||HOST`: EDS for STATIC services (the
//!   ClusterLoadAssignment of the same name goes to EDS), STRICT_DNS for DNS, LOGICAL_DNS for
//!   DNS_ROUND_ROBIN (endpoints inline), ORIGINAL_DST for NONE;
//! - per subset of the host's DestinationRule, `outbound|PORT|SUBSET|HOST`, with the endpoints
//!   whose labels match the subset's;
//! - per port of the proxy's own services, `inbound|PORT||`, to the app (on 127.0.0.1, or the proxy's `STRAIT_APP_ADDRESS`);
//! - `PassthroughCluster` (ORIGINAL_DST) and `BlackHoleCluster` (no endpoints).
//!
//! The DestinationRule's traffic policy (merged with the subset's and the port's settings) gives
//! each cluster its circuit breakers, timeouts, outlier detection and load balancer; see
//! [`cluster_policy`](self::policy), and its upstream TLS (auto mTLS, ISTIO_MUTUAL, TLS
//! origination: [`mtls`](super::mtls), [`origination`](super::origination)). Not yet applied:
//! locality load balancing, `tunnel`, `proxyProtocol`.

#[path = "cluster_policy.rs"]
mod policy;

use std::collections::BTreeMap;
use std::net::IpAddr;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, CommonLbConfig, DiscoveryType, DnsLookupFamily, EdsClusterConfig,
    LbConfig, LbPolicy, OriginalDstLbConfig,
};
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, BindConfig, ConfigSource, Http1ProtocolOptions,
    Http2ProtocolOptions, Locality, Metadata, Pipe, SocketAddress,
};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::route::v3::route_action::HashPolicy;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    UpstreamProtocolOptions, UseDownstreamHttpConfig,
};
use envoy_types::pb::google::protobuf::{ListValue, Struct, UInt32Value, Value, value::Kind};
use strait_api::ObjectMeta;
use strait_api::networking::destination_rule::DestinationRule;
use strait_registry::{Endpoint, Port, Resolution, Service, fqdn, visibility};

use self::policy::{ClusterBuild, Policy};
use super::mtls::{self, UpstreamTls};
use super::{
    BLACKHOLE_CLUSTER, Ctx, INBOUND_PASSTHROUGH_CLUSTER, PASSTHROUGH_CLUSTER, host_matches,
    inbound_cluster_name, outbound_cluster_name,
};
use crate::snapshot::namespace_of;
use strait_xds_core::names::{INBOUND_PASSTHROUGH_BIND_V4, INBOUND_PASSTHROUGH_BIND_V6};
use strait_xds_core::{CaptureMode, ProxyRole, XdsResources};

/// Outbound clusters per visible service port and subset, inbound clusters, and the special
/// clusters, with their endpoints.
pub(super) fn build(ctx: &Ctx<'_>, out: &mut XdsResources) {
    for service in ctx.visible_services() {
        service_clusters(ctx, service, out);
    }
    inbound(ctx, out);
    for c in [passthrough_cluster(ctx), blackhole_cluster()] {
        out.clusters.insert(c.name.clone(), c);
    }
    if ctx.proxy.role == ProxyRole::Sidecar && ctx.proxy.capture == CaptureMode::Iptables {
        let c = inbound_passthrough_cluster(ctx);
        out.clusters.insert(c.name.clone(), c);
    }
}

/// Only the outbound clusters (and their endpoints) of these hosts, as [`build`] makes them.
pub(super) fn build_hosts(
    ctx: &Ctx<'_>,
    hosts: &std::collections::BTreeSet<String>,
    out: &mut XdsResources,
) {
    for host in hosts {
        if let Some(service) = ctx.registry.services.get(host)
            && service.visible_from(&ctx.proxy.namespace)
            && ctx.egress_allows(service)
        {
            service_clusters(ctx, service, out);
        }
    }
}

/// The outbound clusters of one service: per port, and per port and subset.
fn service_clusters(ctx: &Ctx<'_>, service: &Service, out: &mut XdsResources) {
    let rule = destination_rule(ctx, service).map(|(_, dr)| dr);
    for port in &service.ports {
        let endpoints = ctx.registry.endpoints(&service.hostname, port.number);
        outbound(ctx, service, port, rule, None, endpoints, out);
        for subset in rule.map(|r| r.subsets.as_slice()).unwrap_or_default() {
            let picked: Vec<Endpoint> = endpoints
                .iter()
                .filter(|e| {
                    subset
                        .labels
                        .iter()
                        .all(|(k, v)| e.labels.get(k) == Some(v))
                })
                .cloned()
                .collect();
            outbound(ctx, service, port, rule, Some(&subset.name), &picked, out);
        }
    }
}

/// The route hash policy for traffic to `host` (a registry host name) on `port`, and `subset`
/// (empty for none): the consistent-hash key of the DestinationRule that applies to this proxy,
/// merged as for the cluster. For the route builder: `route_action.hash_policy`.
pub(crate) fn hash_policy(
    ctx: &Ctx<'_>,
    host: &str,
    subset: &str,
    port: u16,
) -> Option<HashPolicy> {
    let service = ctx.registry.services.get(host)?;
    let rule = destination_rule(ctx, service).map(|(_, dr)| dr);
    let subset = (!subset.is_empty()).then_some(subset);
    policy::hash_policy_of(Policy::merged(rule, subset, port).load_balancer)
}

/// The DestinationRule for traffic from this proxy to `service`, as Istio picks it: one in the
/// proxy's namespace (whatever its `exportTo`; with a `workloadSelector` only if it selects the
/// proxy), else one in the service's namespace exported to the proxy's, else one in the root
/// namespace exported to the proxy's. Within a namespace, an exact host beats the most specific
/// wildcard; ties go to the first in (namespace, name) order.
pub(crate) fn destination_rule<'a>(
    ctx: &Ctx<'a>,
    service: &Service,
) -> Option<(&'a ObjectMeta, &'a DestinationRule)> {
    let proxy_ns = ctx.proxy.namespace.as_str();
    let suffix = ctx.config.mesh.domain_suffix.as_str();
    let best_in = |ns: &str, local: bool| {
        let mut best: Option<(usize, &'a ObjectMeta, &'a DestinationRule)> = None;
        for (meta, dr) in ctx.config.destination_rules() {
            let dr_ns = namespace_of(meta);
            if dr_ns != ns {
                continue;
            }
            let applies = match &dr.workload_selector {
                Some(sel) => {
                    local
                        && sel
                            .match_labels
                            .iter()
                            .all(|(k, v)| ctx.proxy.labels.get(k) == Some(v))
                }
                None => true,
            };
            let exported = local || exported_to(&dr.export_to, dr_ns, proxy_ns);
            if !applies || !exported {
                continue;
            }
            let host = fqdn(&dr.host, dr_ns, suffix);
            if !host_matches(&host, &service.hostname) {
                continue;
            }
            // Exact beats wildcards; longer wildcards beat shorter ones.
            let rank = if host == service.hostname {
                usize::MAX
            } else {
                host.len()
            };
            if best.is_none_or(|(r, _, _)| rank > r) {
                best = Some((rank, meta, dr));
            }
        }
        best.map(|(_, m, d)| (m, d))
    };
    best_in(proxy_ns, true)
        .or_else(|| best_in(&service.namespace, false))
        .or_else(|| best_in(&ctx.config.mesh.root_namespace, false))
}

fn exported_to(export_to: &[String], namespace: &str, to: &str) -> bool {
    match visibility(export_to, namespace) {
        strait_registry::Visibility::Public => true,
        strait_registry::Visibility::Private => namespace == to,
        strait_registry::Visibility::Namespaces(ns) => ns.iter().any(|n| n == to),
    }
}

fn ads_config_source() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

fn discovery(t: DiscoveryType) -> Option<ClusterDiscoveryType> {
    Some(ClusterDiscoveryType::Type(t as i32))
}

/// One outbound cluster (the service's, or a subset's) and, for EDS, its endpoints.
fn outbound(
    ctx: &Ctx<'_>,
    service: &Service,
    port: &Port,
    rule: Option<&DestinationRule>,
    subset: Option<&str>,
    endpoints: &[Endpoint],
    out: &mut XdsResources,
) {
    let name = outbound_cluster_name(port.number, subset.unwrap_or(""), &service.hostname);
    let mut c = Cluster {
        name: name.clone(),
        common_lb_config: Some(CommonLbConfig::default()),
        metadata: Some(cluster_metadata(service, subset)),
        ..Default::default()
    };
    let mut eds = false;
    match service.resolution {
        Resolution::Static => {
            eds = true;
            c.cluster_discovery_type = discovery(DiscoveryType::Eds);
            c.eds_cluster_config = Some(EdsClusterConfig {
                eds_config: Some(ads_config_source()),
                service_name: name.clone(),
            });
        }
        Resolution::Dns | Resolution::DnsRoundRobin => {
            let logical = service.resolution == Resolution::DnsRoundRobin;
            c.cluster_discovery_type = discovery(if logical {
                DiscoveryType::LogicalDns
            } else {
                DiscoveryType::StrictDns
            });
            c.dns_lookup_family = dns_lookup_family(ctx.proxy.ip) as i32;
            // LOGICAL_DNS takes exactly one host.
            let eps = if logical {
                &endpoints[..endpoints.len().min(1)]
            } else {
                endpoints
            };
            c.load_assignment = Some(load_assignment(ctx, &name, eps));
        }
        Resolution::Passthrough => {
            c.cluster_discovery_type = discovery(DiscoveryType::OriginalDst);
        }
    }
    let policy = Policy::merged(rule, subset, port.number);
    let h2 = port.protocol.is_http2() || policy::should_h2_upgrade(policy.connection_pool);
    let selected = rule.is_some_and(|r| r.workload_selector.is_some());
    let mut auto_sni = None;
    match mtls::upstream_tls(ctx, service, port, subset, policy.tls, h2, selected) {
        UpstreamTls::None => {}
        UpstreamTls::Socket(socket) => c.transport_socket = Some(socket),
        UpstreamTls::Originate {
            socket,
            auto_sni: sni,
            auto_san_validation,
        } => {
            c.transport_socket = Some(socket);
            if sni || auto_san_validation {
                auto_sni = Some((sni, auto_san_validation));
            }
        }
        UpstreamTls::Matches(matches) => c.transport_socket_matches = matches,
    }
    let mut b = ClusterBuild::new(c);
    if let Some((sni, san)) = auto_sni {
        b.set_auto_sni(sni, san);
    }
    if port.protocol.is_http2() {
        b.set_h2();
    }
    policy::apply_connection_pool(&mut b, policy.connection_pool);
    if policy::should_h2_upgrade(policy.connection_pool) {
        b.set_h2();
    }
    policy::apply_outlier_detection(&mut b.cluster, policy.outlier_detection);
    let has_endpoints = policy::apply_load_balancer(&mut b.cluster, policy.load_balancer);
    if eds && has_endpoints {
        out.endpoints
            .insert(name.clone(), load_assignment(ctx, &name, endpoints));
    }
    out.clusters.insert(name, b.finish());
}

/// Istio's choice for DNS clusters: the proxy's own address family.
fn dns_lookup_family(ip: IpAddr) -> DnsLookupFamily {
    match ip {
        IpAddr::V4(_) => DnsLookupFamily::V4Only,
        IpAddr::V6(_) => DnsLookupFamily::V6Only,
    }
}

fn string(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_string())),
    }
}

fn structure<'a>(fields: impl IntoIterator<Item = (&'a str, Value)>) -> Struct {
    Struct {
        fields: super::stable_map(fields.into_iter().map(|(k, v)| (k.to_string(), v))),
    }
}

/// `filter_metadata.istio`: the service the cluster is for (and the subset), as Istio sets it
/// for telemetry.
fn cluster_metadata(service: &Service, subset: Option<&str>) -> Metadata {
    let name = service.hostname.split('.').next().unwrap_or_default();
    let svc = structure([
        ("host", string(&service.hostname)),
        ("name", string(name)),
        ("namespace", string(&service.namespace)),
    ]);
    let mut istio = vec![(
        "services",
        Value {
            kind: Some(Kind::ListValue(ListValue {
                values: vec![Value {
                    kind: Some(Kind::StructValue(svc)),
                }],
            })),
        },
    )];
    if let Some(s) = subset {
        istio.push(("subset", string(s)));
    }
    Metadata {
        filter_metadata: [("istio".to_string(), structure(istio))].into(),
        ..Default::default()
    }
}

/// An endpoint's address: a socket address (IP or DNS name) or, for `unix://PATH`, a pipe.
fn address(host: &str, port: u16) -> Address {
    let kind = match host.strip_prefix("unix://") {
        Some(path) => AddressKind::Pipe(Pipe {
            path: path.to_string(),
            ..Default::default()
        }),
        None => AddressKind::SocketAddress(SocketAddress {
            address: host.to_string(),
            port_specifier: Some(PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        }),
    };
    Address {
        address: Some(kind),
    }
}

/// A ClusterLoadAssignment: endpoints grouped by locality (`region/zone/subzone`), each with its
/// weight and `filter_metadata.istio` naming its workload.
fn load_assignment(ctx: &Ctx<'_>, cluster: &str, endpoints: &[Endpoint]) -> ClusterLoadAssignment {
    let mut by_locality: BTreeMap<&str, Vec<&Endpoint>> = BTreeMap::new();
    for e in endpoints {
        by_locality.entry(e.locality.as_str()).or_default().push(e);
    }
    ClusterLoadAssignment {
        cluster_name: cluster.to_string(),
        endpoints: by_locality
            .into_iter()
            .map(|(locality, eps)| {
                let mut parts = locality.splitn(3, '/');
                let mut part = || parts.next().unwrap_or_default().to_string();
                let locality = Locality {
                    region: part(),
                    zone: part(),
                    sub_zone: part(),
                };
                LocalityLbEndpoints {
                    locality: Some(locality),
                    load_balancing_weight: Some(UInt32Value {
                        value: eps.iter().map(|e| e.weight.max(1)).sum(),
                    }),
                    lb_endpoints: eps.into_iter().map(|e| lb_endpoint(ctx, e)).collect(),
                    ..Default::default()
                }
            })
            .collect(),
        ..Default::default()
    }
}

fn lb_endpoint(ctx: &Ctx<'_>, e: &Endpoint) -> LbEndpoint {
    let mut istio = vec![("namespace", string(&e.namespace))];
    // Istio's telemetry encoding, `NAME;NAMESPACE;CANONICAL_SERVICE;CANONICAL_REVISION;CLUSTER`:
    // the client's metrics name the destination workload with it.
    if let Some(w) = &e.workload {
        let workload = strait_telemetry::Workload::from_labels(
            w,
            &e.namespace,
            &e.labels,
            strait_xds_core::proxy::DEFAULT_CLUSTER_ID,
        );
        istio.push(("workload", string(&workload.endpoint_encoding())));
    }
    if !e.service_account.is_empty() {
        istio.push(("service_account", string(&e.service_account)));
    }
    LbEndpoint {
        host_identifier: Some(HostIdentifier::Endpoint(EnvoyEndpoint {
            address: Some(address(&e.address, e.port)),
            ..Default::default()
        })),
        load_balancing_weight: Some(UInt32Value {
            value: e.weight.max(1),
        }),
        metadata: Some({
            let mut m = Metadata {
                filter_metadata: [("istio".to_string(), structure(istio))].into(),
                ..Default::default()
            };
            if mtls::endpoint_takes_mtls(ctx.config, e) {
                mtls::endpoint_metadata(&mut m);
            }
            m
        }),
        ..Default::default()
    }
}

/// Is `e` this proxy's own workload? Its address is the proxy's and it names the proxy's
/// workload, or (for endpoints not from a WorkloadEntry of that name) carries the proxy's
/// labels.
/// `inbound|PORT||` for each port the proxy's workload serves ([`Ctx::inbound_ports`]), to the
/// application: the same port on 127.0.0.1 (or the proxy's app address), or a Sidecar ingress listener's `defaultEndpoint`.
fn inbound(ctx: &Ctx<'_>, out: &mut XdsResources) {
    for p in ctx.inbound_ports() {
        let (port, protocol) = (p.port, p.protocol);
        let (target_host, target_port) = &p.target;
        let name = inbound_cluster_name(port);
        let c = Cluster {
            name: name.clone(),
            cluster_discovery_type: discovery(DiscoveryType::Static),
            common_lb_config: Some(CommonLbConfig::default()),
            load_assignment: Some(ClusterLoadAssignment {
                cluster_name: name.clone(),
                endpoints: vec![LocalityLbEndpoints {
                    lb_endpoints: vec![LbEndpoint {
                        host_identifier: Some(HostIdentifier::Endpoint(EnvoyEndpoint {
                            address: Some(address(target_host, *target_port)),
                            ..Default::default()
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        // The service the port serves (the first by host name, when several do), for
        // telemetry (`destination_service`), as Istio's inbound clusters carry it.
        let service = ctx
            .registry
            .endpoints
            .iter()
            .find(|(_, eps)| eps.iter().any(|e| e.port == port && ctx.is_own(e)))
            .and_then(|((host, _), _)| ctx.registry.services.get(host));
        let c = Cluster {
            metadata: service.map(|s| cluster_metadata(s, None)),
            ..c
        };
        let mut b = ClusterBuild::new(c);
        if protocol.is_http2() {
            b.set_h2();
        }
        policy::apply_connection_pool(&mut b, None);
        out.clusters.insert(name, b.finish());
    }
}

/// `PassthroughCluster`: to the address the client asked for, in the protocol it spoke. With
/// iptables capture that is where the connection was going; without capture (the HTTP proxy
/// listener) it is the request's `:authority`, when that is an `IP:PORT` (a host name has no
/// address to go to: 503, no healthy upstream).
fn passthrough_cluster(ctx: &Ctx<'_>) -> Cluster {
    let mut b = ClusterBuild::new(Cluster {
        name: PASSTHROUGH_CLUSTER.to_string(),
        cluster_discovery_type: discovery(DiscoveryType::OriginalDst),
        lb_policy: LbPolicy::ClusterProvided as i32,
        lb_config: (ctx.proxy.capture == CaptureMode::None).then(|| {
            LbConfig::OriginalDstLbConfig(OriginalDstLbConfig {
                use_http_header: true,
                http_header_name: ":authority".to_string(),
                ..Default::default()
            })
        }),
        ..Default::default()
    });
    policy::apply_connection_pool(&mut b, None);
    b.http.get_or_insert_default().upstream_protocol_options = Some(
        UpstreamProtocolOptions::UseDownstreamProtocolConfig(UseDownstreamHttpConfig {
            http_protocol_options: Some(Http1ProtocolOptions::default()),
            http2_protocol_options: Some(Http2ProtocolOptions::default()),
            ..Default::default()
        }),
    );
    b.finish()
}

/// `InboundPassthroughCluster`: a captured sidecar's inbound connections to ports its workload
/// does not declare, to their original destination (the pod's own address), as Istio does it:
/// from the source address 127.0.0.6 (`::6` for an IPv6 pod), which the capture rules return
/// unredirected (`-s 127.0.0.6/32 -o lo -j RETURN`). From the pod's address, as the proxy's
/// user, the connection would be redirected to 15006 again, and again: a loop that ends when the
/// proxy runs out of file descriptors.
fn inbound_passthrough_cluster(ctx: &Ctx<'_>) -> Cluster {
    let bind = if ctx.proxy.ip.is_ipv6() {
        INBOUND_PASSTHROUGH_BIND_V6
    } else {
        INBOUND_PASSTHROUGH_BIND_V4
    };
    let mut b = ClusterBuild::new(Cluster {
        name: INBOUND_PASSTHROUGH_CLUSTER.to_string(),
        cluster_discovery_type: discovery(DiscoveryType::OriginalDst),
        lb_policy: LbPolicy::ClusterProvided as i32,
        upstream_bind_config: Some(BindConfig {
            source_address: Some(SocketAddress {
                address: bind.to_string(),
                port_specifier: Some(PortSpecifier::PortValue(0)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    policy::apply_connection_pool(&mut b, None);
    b.finish()
}

/// `BlackHoleCluster`: no endpoints, so every connection fails.
fn blackhole_cluster() -> Cluster {
    Cluster {
        name: BLACKHOLE_CLUSTER.to_string(),
        cluster_discovery_type: discovery(DiscoveryType::Static),
        connect_timeout: Some(policy::secs(policy::DEFAULT_CONNECT_TIMEOUT_SECS)),
        ..Default::default()
    }
}

#[cfg(test)]
#[path = "cluster_tests.rs"]
mod tests;
