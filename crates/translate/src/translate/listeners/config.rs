//! Which VirtualServices and DestinationRules apply to a proxy.

use strait_api::ObjectMeta;
use strait_api::networking::virtual_service::{MESH_GATEWAY, VirtualService};
use strait_registry::fqdn;

use crate::snapshot::namespace_of;
use crate::translate::{Ctx, host_matches};

/// Whether a resource in `namespace` with `exportTo` is visible from `proxy_namespace`
/// (empty means everywhere).
pub(super) fn exported_to(export_to: &[String], namespace: &str, proxy_namespace: &str) -> bool {
    export_to.is_empty()
        || export_to
            .iter()
            .any(|e| e == "*" || e == proxy_namespace || (e == "." && namespace == proxy_namespace))
}

/// A gateway reference as Istio stores it: `mesh`, or `NAMESPACE/NAME` (a bare name is in the
/// VirtualService's namespace).
pub(super) fn qualified_gateway(name: &str, vs_namespace: &str) -> String {
    if name == MESH_GATEWAY || name.contains('/') {
        name.to_string()
    } else {
        format!("{vs_namespace}/{name}")
    }
}

/// A VirtualService that applies to the proxy, with its hosts as fully qualified names.
pub(super) struct BoundVs<'a> {
    pub meta: &'a ObjectMeta,
    pub namespace: &'a str,
    pub spec: &'a VirtualService,
    pub hosts: Vec<String>,
}

impl BoundVs<'_> {
    /// A destination host, resolved in the VirtualService's namespace.
    pub fn resolve(&self, host: &str, domain_suffix: &str) -> String {
        fqdn(host, self.namespace, domain_suffix)
    }

    /// Whether the VirtualService is bound to `gateway` (`mesh` or `NAMESPACE/NAME`).
    pub fn bound_to(&self, gateway: &str) -> bool {
        if self.spec.gateways.is_empty() {
            return gateway == MESH_GATEWAY;
        }
        self.spec
            .gateways
            .iter()
            .any(|g| qualified_gateway(g, self.namespace) == gateway)
    }
}

/// The VirtualServices bound to `gateway` (`mesh` for sidecars) and exported to the proxy's
/// namespace, in (namespace, name) order. Delegates (no hosts) are left out.
pub(super) fn virtual_services<'a>(ctx: &Ctx<'a>, gateway: &str) -> Vec<BoundVs<'a>> {
    let suffix = &ctx.config.mesh.domain_suffix;
    ctx.config
        .virtual_services()
        .filter(|(_, vs)| !vs.is_delegate())
        .map(|(meta, spec)| {
            let namespace = namespace_of(meta);
            BoundVs {
                meta,
                namespace,
                spec,
                hosts: spec
                    .hosts
                    .iter()
                    .map(|h| fqdn(h, namespace, suffix))
                    .collect(),
            }
        })
        .filter(|vs| {
            vs.bound_to(gateway)
                && exported_to(&vs.spec.export_to, vs.namespace, &ctx.proxy.namespace)
        })
        .collect()
}

/// The VirtualService for a service host: the first naming it exactly, else the one with the
/// most specific wildcard host that matches it (Istio's rule, so each host has one).
pub(super) fn for_host<'v, 'a>(vss: &'v [BoundVs<'a>], host: &str) -> Option<&'v BoundVs<'a>> {
    if let Some(vs) = vss.iter().find(|vs| vs.hosts.iter().any(|h| h == host)) {
        return Some(vs);
    }
    vss.iter()
        .filter_map(|vs| {
            vs.hosts
                .iter()
                .filter(|h| h.starts_with('*') && host_matches(h, host))
                .map(String::len)
                .max()
                .map(|len| (len, vs))
        })
        .fold(
            None,
            |best: Option<(usize, &BoundVs<'a>)>, (len, vs)| match best {
                Some((l, _)) if l >= len => best,
                _ => Some((len, vs)),
            },
        )
        .map(|(_, vs)| vs)
}
