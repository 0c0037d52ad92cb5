//! What sidecars and gateways share for TCP and TLS (SNI) forwarding: which L4 match of a
//! VirtualService applies, and where its route sends connections.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::CidrRange;
use strait_api::networking::virtual_service::{
    L4MatchAttributes, MESH_GATEWAY, RouteDestination, TlsMatchAttributes,
};

use super::config::{self, BoundVs};
use super::filters::{TcpTarget, u32_value};
use crate::translate::{Ctx, outbound_cluster_name};

/// The conditions of a `tcp:` or `tls:` match that decide whether it applies to a proxy.
pub(super) struct L4Match<'m> {
    pub port: Option<u32>,
    pub source_labels: &'m BTreeMap<String, String>,
    pub gateways: &'m [String],
    pub source_namespace: &'m str,
}

impl<'m> From<&'m L4MatchAttributes> for L4Match<'m> {
    fn from(m: &'m L4MatchAttributes) -> Self {
        L4Match {
            port: m.port,
            source_labels: &m.source_labels,
            gateways: &m.gateways,
            source_namespace: &m.source_namespace,
        }
    }
}

impl<'m> From<&'m TlsMatchAttributes> for L4Match<'m> {
    fn from(m: &'m TlsMatchAttributes) -> Self {
        L4Match {
            port: m.port,
            source_labels: &m.source_labels,
            gateways: &m.gateways,
            source_namespace: &m.source_namespace,
        }
    }
}

/// Does an L4 match apply on `on_port` of this proxy, as `gateway` (`mesh` for sidecars,
/// `NAMESPACE/NAME` for a gateway)? As Istio, a gateway checks only the port and the match's
/// gateways; source labels and namespace are about sidecars.
pub(super) fn applies(
    ctx: &Ctx<'_>,
    vs: &BoundVs<'_>,
    m: &L4Match<'_>,
    on_port: u16,
    gateway: &str,
) -> bool {
    let port = m.port.is_none_or(|p| p == 0 || p == u32::from(on_port));
    let gateways = m.gateways.is_empty()
        || m.gateways
            .iter()
            .any(|g| config::qualified_gateway(g, vs.namespace) == gateway);
    let source = gateway != MESH_GATEWAY
        || (m
            .source_labels
            .iter()
            .all(|(k, v)| ctx.proxy.labels.get(k) == Some(v))
            && (m.source_namespace.is_empty() || m.source_namespace == ctx.proxy.namespace));
    port && gateways && source
}

/// Where a TCP or TLS route sends connections: `outbound|PORT|SUBSET|HOST` for each
/// destination, PORT being the destination's port, else the service's only port, else
/// `port`. Several destinations are weighted (those of weight 0 left out).
pub(super) fn tcp_target(
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

/// The tcp_proxy stat prefix for a target: its cluster, or `weighted`.
pub(super) fn stat_name(target: &TcpTarget) -> String {
    match target {
        TcpTarget::Cluster(c) => c.clone(),
        TcpTarget::Weighted(_) => "weighted".to_string(),
    }
}

/// Destination subnets (`10.0.0.0/8`, or a bare address) as CIDR ranges; unreadable ones are
/// skipped (validation has refused them).
pub(super) fn cidrs(subnets: &[String]) -> Vec<CidrRange> {
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
