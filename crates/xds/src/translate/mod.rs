//! The translator: a pure function from (config snapshot, registry, proxy) to the proxy's xDS
//! resources, following Istio's model and names:
//! - clusters `outbound|PORT|SUBSET|HOST` (SUBSET empty when none) and `inbound|PORT||`, plus
//!   `PassthroughCluster` and `BlackHoleCluster`;
//! - listeners `virtualOutbound` (15001, original destination), `virtualInbound` (15006), per
//!   service-port outbound listeners `0.0.0.0_PORT` (HTTP ports share one per port), and in
//!   no-capture mode the HTTP proxy listener on `ADDRESS:15080`;
//! - route configurations named by port (`9080`), and for gateways `http.PORT`.
//!
//! Each proxy gets only the services it may reach: those exported to its namespace and allowed
//! by the `Sidecar` that applies to it (a Sidecar selecting its labels, else its namespace's
//! Sidecar without a selector, else the root namespace's).

mod clusters;
mod listeners;

use strait_api::ObjectMeta;
use strait_api::networking::sidecar::{OutboundTrafficPolicyMode, Sidecar};
use strait_registry::{Registry, Service};

use crate::snapshot::{OutboundPolicy, namespace_of};
use crate::{ConfigSnapshot, Proxy, XdsResources};

/// Ports Istio reserves on the proxy.
pub const VIRTUAL_OUTBOUND_PORT: u16 = 15001;
pub const VIRTUAL_INBOUND_PORT: u16 = 15006;
/// The HTTP proxy listener of the no-capture mode.
pub const HTTP_PROXY_PORT: u16 = 15080;
pub const PASSTHROUGH_CLUSTER: &str = "PassthroughCluster";
pub const BLACKHOLE_CLUSTER: &str = "BlackHoleCluster";

/// `outbound|9080|v1|reviews.default.svc.cluster.local`
pub fn outbound_cluster_name(port: u16, subset: &str, host: &str) -> String {
    format!("outbound|{port}|{subset}|{host}")
}

/// `inbound|9080||`
pub fn inbound_cluster_name(port: u16) -> String {
    format!("inbound|{port}||")
}

/// What the translation of one proxy reads.
pub struct Ctx<'a> {
    pub config: &'a ConfigSnapshot,
    pub registry: &'a Registry,
    pub proxy: &'a Proxy,
    /// The Sidecar resource that applies to the proxy, if any.
    pub sidecar: Option<(&'a ObjectMeta, &'a Sidecar)>,
}

impl<'a> Ctx<'a> {
    pub fn new(config: &'a ConfigSnapshot, registry: &'a Registry, proxy: &'a Proxy) -> Self {
        let sidecar = select_sidecar(config, proxy);
        Self {
            config,
            registry,
            proxy,
            sidecar,
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
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_istio() {
        assert_eq!(
            outbound_cluster_name(9080, "v1", "reviews.default.svc.cluster.local"),
            "outbound|9080|v1|reviews.default.svc.cluster.local"
        );
        assert_eq!(
            outbound_cluster_name(9080, "", "reviews.default.svc.cluster.local"),
            "outbound|9080||reviews.default.svc.cluster.local"
        );
        assert_eq!(inbound_cluster_name(9080), "inbound|9080||");
        assert!(host_matches("*", "a.b"));
        assert!(host_matches("*.b.com", "a.b.com"));
        assert!(!host_matches("*.b.com", "b.com"));
        assert!(!host_matches("a.b.com", "c.b.com"));
    }
}
