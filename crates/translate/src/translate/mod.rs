//! The translator: a pure function from (config snapshot, registry, proxy) to the proxy's xDS
//! resources, following Istio's model and names:
//! - clusters `outbound|PORT|SUBSET|HOST` (SUBSET empty when none) and `inbound|PORT||`, plus
//!   `PassthroughCluster` and `BlackHoleCluster`;
//! - listeners `virtualOutbound` (15001, original destination), `virtualInbound` (15006), per
//!   service-port outbound listeners `0.0.0.0_PORT` (HTTP ports share one per port), and in
//!   no-capture mode the HTTP proxy listener on `ADDRESS:15080`;
//! - route configurations named by port (`9080`), and for gateways `http.PORT` and, per
//!   terminated HTTPS server, `https.PORT.PORT_NAME.GATEWAY.NAMESPACE`;
//! - Secrets `kubernetes://NAME` and `kubernetes://NAME-cacert` for the `credentialName`s its
//!   gateway servers and DestinationRules name ([`secrets`]), from its own namespace.
//!
//! Each proxy gets only the services it may reach: those exported to its namespace and allowed
//! by the `Sidecar` that applies to it (a Sidecar selecting its labels, else its namespace's
//! Sidecar without a selector, else the root namespace's).

pub mod authn;
pub mod authz;
mod clusters;
pub mod ext_authz;
mod listeners;
pub mod mtls;
mod origination;
pub mod ratelimit;
mod secrets;
mod stats;
pub mod tls;
pub(crate) mod tracer;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use strait_api::ObjectMeta;
use strait_api::networking::sidecar::{OutboundTrafficPolicyMode, Sidecar};

use strait_registry::{Endpoint, Protocol, Registry, Service};

use crate::snapshot::{OutboundPolicy, namespace_of};
use strait_xds_core::{Proxy, XdsResources};

use crate::ConfigSnapshot;

pub use origination::SYSTEM_CA_BUNDLE;
pub use strait_xds_core::names::{
    BLACKHOLE_CLUSTER, HTTP_PROXY_PORT, INBOUND_PASSTHROUGH_CLUSTER, PASSTHROUGH_CLUSTER,
    VIRTUAL_INBOUND_PORT, VIRTUAL_OUTBOUND_PORT, inbound_cluster_name, outbound_cluster_name,
};

/// A port the proxy's own workload serves, and where its traffic goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundPort {
    pub port: u16,
    pub protocol: Protocol,
    /// Where the application listens: `(host, port)` with host an IP, or `unix:///path`
    /// (port then unused).
    pub target: (String, u16),
    /// The address a no-capture listener binds, when a Sidecar ingress listener sets `bind`.
    pub bind: Option<String>,
    /// The Sidecar ingress listener says `captureMode: NONE`: even with iptables capture, the
    /// port gets its own bound listener.
    pub capture_none: bool,
}

/// What the translation of one proxy reads.
pub struct Ctx<'a> {
    pub config: &'a ConfigSnapshot,
    pub registry: &'a Registry,
    pub proxy: &'a Proxy,
    /// The Sidecar resource that applies to the proxy, if any.
    pub sidecar: Option<(&'a ObjectMeta, &'a Sidecar)>,
    /// The SDS names of the Secrets the translation named so far (`kubernetes://NAME`,
    /// `kubernetes://NAME-cacert`): the proxy gets those, and no others.
    credentials: RefCell<BTreeSet<String>>,
    /// The connection managers' tracing, client (0) and server (1), made once.
    tracing: std::cell::OnceCell<[Option<tracer::TracingConfig>; 2]>,
}

impl<'a> Ctx<'a> {
    pub fn new(config: &'a ConfigSnapshot, registry: &'a Registry, proxy: &'a Proxy) -> Self {
        let sidecar = select_sidecar(config, proxy);
        Self {
            config,
            registry,
            proxy,
            sidecar,
            credentials: RefCell::default(),
            tracing: std::cell::OnceCell::new(),
        }
    }

    /// The services this proxy may reach, in host name order.
    pub fn visible_services(&self) -> impl Iterator<Item = &'a Service> + '_ {
        self.registry
            .services
            .values()
            .filter(move |s| s.visible_from(&self.proxy.namespace) && self.egress_allows(s))
    }

    /// Whether the applicable Sidecar's egress hosts allow `service` (all do without a Sidecar).
    pub fn egress_allows(&self, service: &Service) -> bool {
        let Some((meta, sidecar)) = self.sidecar else {
            return true;
        };
        if sidecar.egress.is_empty() {
            return true;
        }
        let own_ns = namespace_of(meta);
        sidecar
            .egress
            .iter()
            .flat_map(|l| l.namespaced_hosts(own_ns))
            .any(|(ns, host)| {
                (ns == "*" || ns == service.namespace) && host_matches(host, &service.hostname)
            })
    }

    /// Is `e` an endpoint of this proxy's own workload (its address, and its WorkloadEntry name or
    /// its labels)?
    pub fn is_own(&self, e: &Endpoint) -> bool {
        let proxy = self.proxy;
        if e.address.parse::<IpAddr>().ok() != Some(proxy.ip) {
            return false;
        }
        e.workload.as_deref() == Some(proxy.workload.as_str())
            || (!e.labels.is_empty() && e.labels == proxy.labels)
    }

    /// Where the app serves: the proxy's `STRAIT_APP_ADDRESS`, else 127.0.0.1.
    fn app_address(&self) -> String {
        self.proxy
            .app_address
            .map_or_else(|| "127.0.0.1".to_string(), |a| a.to_string())
    }

    /// The ports the proxy's workload serves. A Sidecar with `ingress` listeners names them (and
    /// where each goes: `defaultEndpoint`, else the same port at the app's address), as Istio
    /// does; otherwise they are the ports of the registry's endpoints that are this workload's,
    /// forwarded to the same port at the app's address (127.0.0.1 unless the proxy says).
    pub fn inbound_ports(&self) -> Vec<InboundPort> {
        if let Some((_, sidecar)) = self.sidecar
            && !sidecar.ingress.is_empty()
        {
            return sidecar
                .ingress
                .iter()
                .filter_map(|l| {
                    let p = l.port.as_ref()?;
                    let port = u16::try_from(p.number).ok().filter(|n| *n != 0)?;
                    let target = parse_endpoint(&l.default_endpoint)
                        .unwrap_or_else(|| (self.app_address(), port));
                    Some(InboundPort {
                        port,
                        protocol: Protocol::parse(&p.protocol).unwrap_or(Protocol::Unknown),
                        target,
                        bind: (!l.bind.is_empty()).then(|| l.bind.clone()),
                        capture_none: l.capture_mode
                            == Some(strait_api::networking::sidecar::CaptureMode::None),
                    })
                })
                .collect();
        }
        let mut ports: BTreeMap<u16, Protocol> = BTreeMap::new();
        for ((host, number), eps) in &self.registry.endpoints {
            let Some(port) = self
                .registry
                .services
                .get(host)
                .and_then(|s| s.port(*number))
            else {
                continue;
            };
            for e in eps.iter().filter(|e| self.is_own(e)) {
                let p = ports.entry(e.port).or_insert(port.protocol);
                // HTTP when any service calls the port HTTP.
                if port.protocol.is_http() && !p.is_http() {
                    *p = port.protocol;
                }
            }
        }
        ports
            .into_iter()
            .map(|(port, protocol)| InboundPort {
                port,
                protocol,
                target: (self.app_address(), port),
                bind: None,
                capture_none: false,
            })
            .collect()
    }

    /// The outbound traffic policy: the Sidecar's, else the mesh's.
    pub fn outbound_policy(&self) -> OutboundPolicy {
        match self
            .sidecar
            .and_then(|(_, s)| s.outbound_traffic_policy.as_ref())
        {
            Some(p) => match p.mode() {
                OutboundTrafficPolicyMode::AllowAny => OutboundPolicy::AllowAny,
                OutboundTrafficPolicyMode::RegistryOnly => OutboundPolicy::RegistryOnly,
            },
            None => self.config.mesh.outbound_policy,
        }
    }
}

/// The Sidecar for a proxy: one in its namespace selecting its labels, else one in its namespace
/// without a selector, else one in the root namespace without a selector. Ties go to the oldest
/// by (namespace, name) order, as the snapshot keeps them.
fn select_sidecar<'a>(
    config: &'a ConfigSnapshot,
    proxy: &Proxy,
) -> Option<(&'a ObjectMeta, &'a Sidecar)> {
    let in_ns = |ns: &str| -> Vec<(&'a ObjectMeta, &'a Sidecar)> {
        config
            .sidecars()
            .filter(|(m, _)| namespace_of(m) == ns)
            .collect()
    };
    let own = in_ns(&proxy.namespace);
    own.iter()
        .find(|(_, s)| {
            s.workload_selector
                .as_ref()
                .is_some_and(|sel| sel.matches(&proxy.labels))
        })
        .or_else(|| own.iter().find(|(_, s)| s.workload_selector.is_none()))
        .copied()
        .or_else(|| {
            in_ns(&config.mesh.root_namespace)
                .into_iter()
                .find(|(_, s)| s.workload_selector.is_none())
        })
}

/// A Sidecar ingress `defaultEndpoint`: `IP:PORT`, `[IPv6]:PORT` or `unix:///path`.
fn parse_endpoint(text: &str) -> Option<(String, u16)> {
    if text.starts_with("unix://") {
        return Some((text.to_string(), 0));
    }
    let (host, port) = text.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host.to_string(), port.parse().ok()?))
}

/// Istio's host matching: `*` matches everything, `*.example.com` matches `a.example.com` (and
/// `*.example.com` itself), anything else must be equal.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    if pattern == "*" || pattern == host {
        return true;
    }
    match pattern.strip_prefix('*') {
        Some(suffix) => host.ends_with(suffix),
        None => false,
    }
}

/// Everything `proxy` should get.
pub fn translate(config: &ConfigSnapshot, registry: &Registry, proxy: &Proxy) -> XdsResources {
    let ctx = Ctx::new(config, registry, proxy);
    let mut out = XdsResources::default();
    clusters::build(&ctx, &mut out);
    listeners::build(&ctx, &mut out);
    stats::annotate(&ctx, &mut out.listeners);
    secrets::build(&ctx, &mut out);
    out
}

/// A protobuf map (`HashMap`) whose encoding is the same every time it is built from the same
/// entries: one hasher for every such map of the process, and the entries inserted in key
/// order. A `HashMap` with its own `RandomState` iterates (and prost encodes it) in a different
/// order each time, so an unchanged cluster or route would get new bytes, a new version, and be
/// pushed again on every regeneration (an endpoint-only change then sent CDS too).
pub(crate) fn stable_map<V>(
    entries: impl IntoIterator<Item = (String, V)>,
) -> std::collections::HashMap<String, V> {
    static HASHER: std::sync::LazyLock<std::collections::hash_map::RandomState> =
        std::sync::LazyLock::new(std::collections::hash_map::RandomState::new);
    let mut sorted: Vec<(String, V)> = entries.into_iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut map = std::collections::HashMap::with_capacity_and_hasher(sorted.len(), HASHER.clone());
    map.extend(sorted);
    map
}

/// The outbound clusters and ClusterLoadAssignments `proxy` gets for `hosts` only, exactly as
/// [`translate`] makes them (for an endpoint-only change of those hosts, which changes no
/// Secret).
pub fn translate_hosts(
    config: &ConfigSnapshot,
    registry: &Registry,
    proxy: &Proxy,
    hosts: &std::collections::BTreeSet<String>,
) -> XdsResources {
    let ctx = Ctx::new(config, registry, proxy);
    let mut out = XdsResources::default();
    clusters::build_hosts(&ctx, hosts, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_match_as_istio_matches_them() {
        assert!(host_matches("*", "a.b"));
        assert!(host_matches("*.b.com", "a.b.com"));
        assert!(!host_matches("*.b.com", "b.com"));
        assert!(!host_matches("a.b.com", "c.b.com"));
    }
}
