//! Host names as Istio compares them, and the services visible from a namespace.

use std::collections::BTreeMap;

use crate::context::Context;
use crate::object::{Labels, Object, items, number, string_map, text};

pub const DOMAIN_SUFFIX: &str = "svc.cluster.local";
pub const EXPORT_ALL: &str = "*";
pub const EXPORT_LOCAL: &str = ".";

/// `reviews` in `default` is `reviews.default.svc.cluster.local`; names with a dot or a leading
/// `*` are already fully qualified.
pub fn fqdn(namespace: &str, host: &str) -> String {
    if !host.starts_with('*') && !host.contains('.') {
        format!("{host}.{namespace}.{DOMAIN_SUFFIX}")
    } else {
        host.to_string()
    }
}

/// `(namespace, name)` of a `name.namespace.svc.cluster.local` host.
pub fn split_fqdn(host: &str) -> Option<(&str, &str)> {
    let rest = host.strip_suffix(DOMAIN_SUFFIX)?.strip_suffix('.')?;
    let (name, ns) = rest.rsplit_once('.')?;
    (!name.is_empty() && !ns.is_empty()).then_some((ns, name))
}

/// The `(namespace, name)` a destination host refers to: its own if fully qualified, else the
/// short name in `namespace`.
pub fn resource_name(namespace: &str, host: &str) -> (String, String) {
    match split_fqdn(host) {
        Some((ns, name)) => (ns.to_string(), name.to_string()),
        None => (namespace.to_string(), host.to_string()),
    }
}

/// Istio's `host.Name.Matches`: equal, or one's wildcard covers the other (both ways).
pub fn matches(a: &str, b: &str) -> bool {
    match (a.strip_prefix('*'), b.strip_prefix('*')) {
        (Some(sa), Some(sb)) => {
            if a.len() < b.len() {
                sb.ends_with(sa)
            } else {
                sa.ends_with(sb)
            }
        }
        (Some(sa), None) => b.ends_with(sa),
        (None, Some(sb)) => a.ends_with(sb),
        (None, None) => a == b,
    }
}

/// Istio's `host.Name.SubsetOf`: every name `a` matches is matched by `b`.
pub fn subset_of(a: &str, b: &str) -> bool {
    match (a.strip_prefix('*'), b.strip_prefix('*')) {
        (Some(sa), Some(sb)) => sa.ends_with(sb),
        (Some(_), None) => false,
        (None, Some(sb)) => a.ends_with(sb),
        (None, None) => a == b,
    }
}

/// A port of a service, as Istio's ServiceEntry has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub number: i64,
    pub name: String,
    pub protocol: String,
    /// For Kubernetes Services: the target port (a number or a container port name).
    pub target: String,
}

/// A service (a ServiceEntry, or a Kubernetes Service seen as one).
#[derive(Debug, Clone)]
pub struct Service<'a> {
    pub object: &'a Object,
    pub ports: Vec<Port>,
    /// A ServiceEntry's `workloadSelector.labels`; empty for Services.
    pub workload_selector: Labels,
    /// A Service's `selector`; `None` for ServiceEntries.
    pub pod_selector: Option<Labels>,
}

/// Every service by `(scope, fqdn)`: `scope` is `*` when visible everywhere, else the namespace
/// it is exported to (Istio's `InitServiceEntryHostMap`).
pub struct ServiceHosts<'a> {
    map: BTreeMap<(String, String), Service<'a>>,
}

impl<'a> ServiceHosts<'a> {
    pub fn new(ctx: &Context<'a>) -> ServiceHosts<'a> {
        let mut map = BTreeMap::new();
        for se in ctx.kind("networking.istio.io", "ServiceEntry") {
            let spec = se.spec();
            let ports = items(&spec["ports"])
                .iter()
                .map(|p| Port {
                    number: number(&p["number"]).unwrap_or(0),
                    name: text(&p["name"]).to_string(),
                    protocol: text(&p["protocol"]).to_string(),
                    target: number(&p["targetPort"])
                        .map(|n| n.to_string())
                        .unwrap_or_default(),
                })
                .collect::<Vec<_>>();
            let svc = Service {
                object: se,
                ports,
                workload_selector: string_map(&spec["workloadSelector"]["labels"]),
                pod_selector: None,
            };
            let export = crate::object::strings(&spec["exportTo"]);
            for h in crate::object::strings(&spec["hosts"]) {
                let f = fqdn(&se.namespace, &h);
                if export.is_empty() || export.iter().any(|e| e == EXPORT_ALL) {
                    map.insert((EXPORT_ALL.to_string(), f), svc.clone());
                    continue;
                }
                for e in &export {
                    let scope = if e == EXPORT_LOCAL {
                        se.namespace.clone()
                    } else {
                        e.clone()
                    };
                    map.insert((scope, f.clone()), svc.clone());
                }
            }
        }
        for s in ctx.kind("", "Service") {
            let spec = s.spec();
            let ports = items(&spec["ports"])
                .iter()
                .map(|p| Port {
                    number: number(&p["port"]).unwrap_or(0),
                    name: text(&p["name"]).to_string(),
                    protocol: text(&p["protocol"]).to_string(),
                    target: match &p["targetPort"] {
                        serde_json::Value::String(s) => s.clone(),
                        v => number(v).map(|n| n.to_string()).unwrap_or_default(),
                    },
                })
                .collect();
            let svc = Service {
                object: s,
                ports,
                workload_selector: Labels::new(),
                pod_selector: Some(string_map(&spec["selector"])),
            };
            let f = fqdn(&s.namespace, &s.name);
            let anno = s.annotation("networking.istio.io/exportTo").unwrap_or("");
            if anno.is_empty() {
                map.insert((EXPORT_ALL.to_string(), f), svc);
            } else {
                for e in anno.split(',') {
                    let scope = if e == EXPORT_LOCAL {
                        s.namespace.clone()
                    } else {
                        e.to_string()
                    };
                    map.insert((scope, f.clone()), svc.clone());
                }
            }
        }
        ServiceHosts { map }
    }

    /// Istio's `GetDestinationHost`: the service `host` refers to from `namespace`, seen through
    /// the referring resource's `exportTo`.
    pub fn lookup(
        &self,
        namespace: &str,
        export_to: &[String],
        host: &str,
    ) -> Option<&Service<'a>> {
        let f = fqdn(namespace, host);
        if let Some(s) = self.map.get(&(EXPORT_ALL.to_string(), f.clone())) {
            return Some(s);
        }
        if export_to.is_empty() {
            if let Some(s) = self.map.get(&(namespace.to_string(), f.clone())) {
                return Some(s);
            }
        } else {
            for e in export_to {
                let scope = if e == EXPORT_LOCAL { namespace } else { e };
                if let Some(s) = self.map.get(&(scope.to_string(), f.clone())) {
                    return Some(s);
                }
            }
        }
        let bare = host.strip_prefix('*').unwrap_or(host);
        self.map.iter().find_map(|((scope, h), s)| {
            let suffix = h.strip_prefix('*')?;
            (scope == EXPORT_ALL || scope == namespace)
                .then_some(())
                .filter(|_| bare.ends_with(suffix))
                .map(|_| s)
        })
    }

    /// Every service entry, for checks that look at all of them.
    pub fn all(&self) -> impl Iterator<Item = (&(String, String), &Service<'a>)> {
        self.map.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            fqdn("default", "reviews"),
            "reviews.default.svc.cluster.local"
        );
        assert_eq!(fqdn("default", "*.x"), "*.x");
        assert_eq!(
            split_fqdn("reviews.default.svc.cluster.local"),
            Some(("default", "reviews"))
        );
        assert_eq!(split_fqdn("a.b.c.svc.cluster.local"), Some(("c", "a.b")));
        assert_eq!(split_fqdn("example.com"), None);
        assert!(matches("*.productpage.d", "*.d"));
        assert!(matches("*", "anything"));
        assert!(!matches("a.com", "b.com"));
        assert!(subset_of("a.example.com", "*.example.com"));
        assert!(!subset_of("*.example.com", "a.example.com"));
    }
}
