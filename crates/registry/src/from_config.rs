//! The registry, built from config: Kubernetes Services, ServiceEntries and WorkloadEntries.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use strait_api::core::service::{IntOrString, Protocol as L4Protocol, ServiceSpec};
use strait_api::networking::service_entry::{Location, Resolution as SeResolution, ServiceEntry};
use strait_api::networking::workload::WorkloadEntry;
use strait_api::{ObjectMeta, Resource, Spec};

use crate::model::{Endpoint, Origin, Port, Protocol, Registry, Resolution, Service, Visibility};
use crate::vip::VipTable;

/// The annotation that sets a Kubernetes Service's `exportTo` (comma-separated).
pub const EXPORT_TO_ANNOTATION: &str = "networking.istio.io/exportTo";

/// A WorkloadEntry, with where it lives.
struct Workload<'a> {
    namespace: &'a str,
    name: &'a str,
    spec: &'a WorkloadEntry,
}

/// The WorkloadEntries, indexed by namespace and by (namespace, label, value), so a selector finds
/// its workloads without scanning every one.
struct Workloads<'a> {
    all: Vec<Workload<'a>>,
    by_namespace: HashMap<&'a str, Vec<usize>>,
    by_label: HashMap<(&'a str, &'a str, &'a str), Vec<usize>>,
}

impl<'a> Workloads<'a> {
    fn new(all: Vec<Workload<'a>>) -> Self {
        let mut by_namespace: HashMap<&'a str, Vec<usize>> = HashMap::new();
        let mut by_label: HashMap<(&'a str, &'a str, &'a str), Vec<usize>> = HashMap::new();
        for (i, w) in all.iter().enumerate() {
            by_namespace.entry(w.namespace).or_default().push(i);
            for (k, v) in &w.spec.labels {
                by_label
                    .entry((w.namespace, k.as_str(), v.as_str()))
                    .or_default()
                    .push(i);
            }
        }
        Workloads {
            all,
            by_namespace,
            by_label,
        }
    }

    /// The workloads of `namespace` whose labels `selector` selects (all of them for an empty
    /// selector), in their original order.
    fn selected<'s>(
        &'s self,
        namespace: &'s str,
        selector: &'s BTreeMap<String, String>,
    ) -> impl Iterator<Item = &'s Workload<'a>> + 's {
        // The rarest of the selector's pairs narrows the candidates.
        let candidates: &[usize] = match selector
            .iter()
            .map(|(k, v)| {
                self.by_label
                    .get(&(namespace, k.as_str(), v.as_str()))
                    .map_or(&[][..], Vec::as_slice)
            })
            .min_by_key(|c| c.len())
        {
            Some(c) => c,
            None => self.by_namespace.get(namespace).map_or(&[], Vec::as_slice),
        };
        candidates
            .iter()
            .map(|i| &self.all[*i])
            .filter(move |w| selects(selector, &w.spec.labels))
    }
}

fn namespace_of(meta: &ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or("default")
}

impl Registry {
    /// Builds the registry from every resource the control plane holds (kinds other than
    /// Service, ServiceEntry and WorkloadEntry are ignored):
    /// - a Service is `NAME.NS.svc.DOMAIN`, with a virtual IP from `vips` (or its `clusterIP`
    ///   when it names one; none when headless), and the WorkloadEntries of its namespace that
    ///   its selector picks as endpoints;
    /// - a ServiceEntry gives one service per host, with its `addresses` (IPs, not CIDRs) or an
    ///   allocated one, and its inline endpoints or the WorkloadEntries its `workloadSelector`
    ///   picks; with DNS resolution and no endpoints the host itself is the endpoint.
    ///
    /// The first definition of a host wins (Services before ServiceEntries, each in
    /// (namespace, name) order); later ones are logged and skipped.
    pub fn build<'r>(
        resources: impl IntoIterator<Item = &'r Resource>,
        vips: &mut VipTable,
        domain_suffix: &str,
    ) -> Registry {
        let mut services: Vec<(&ObjectMeta, &ServiceSpec)> = Vec::new();
        let mut entries: Vec<(&ObjectMeta, &ServiceEntry)> = Vec::new();
        let mut workloads: Vec<Workload<'_>> = Vec::new();
        for r in resources {
            match &r.spec {
                Spec::Service(s) => services.push((&r.metadata, s)),
                Spec::ServiceEntry(s) => entries.push((&r.metadata, s)),
                Spec::WorkloadEntry(w) => workloads.push(Workload {
                    namespace: namespace_of(&r.metadata),
                    name: &r.metadata.name,
                    spec: w,
                }),
                _ => {}
            }
        }
        let key = |m: &&ObjectMeta| (namespace_of(m).to_string(), m.name.clone());
        services.sort_by_key(|(m, _)| key(m));
        entries.sort_by_key(|(m, _)| key(m));

        let workloads = Workloads::new(workloads);
        let mut reg = Registry::default();
        for (meta, spec) in services {
            add_kube_service(&mut reg, meta, spec, &workloads, vips, domain_suffix);
        }
        for (meta, spec) in entries {
            add_service_entry(&mut reg, meta, spec, &workloads, vips);
        }
        sort_endpoints(&mut reg);
        reg
    }

    /// The registry [`Registry::build`] would return for `resources`, when this one was built
    /// from the same resources except WorkloadEntries, and `changed` names the namespace and
    /// labels of every WorkloadEntry that was added, removed or modified (before and after the
    /// change). Only the services whose selectors pick one of them are looked at again; the
    /// other endpoint lists are shared with `self`. Returns the new registry and the hosts
    /// whose endpoints changed.
    pub fn with_workloads<'r>(
        &self,
        resources: impl IntoIterator<Item = &'r Resource>,
        changed: &[(&str, &BTreeMap<String, String>)],
        vips: &mut VipTable,
        domain_suffix: &str,
    ) -> (Registry, Vec<String>) {
        // An empty selector picks nothing for a Service, everything for a ServiceEntry.
        let picks = |namespace: &str, selector: &BTreeMap<String, String>| {
            changed
                .iter()
                .any(|(ns, labels)| *ns == namespace && selects(selector, labels))
        };
        let mut services: Vec<(&ObjectMeta, &ServiceSpec)> = Vec::new();
        let mut entries: Vec<(&ObjectMeta, &ServiceEntry)> = Vec::new();
        let mut all: Vec<Workload<'_>> = Vec::new();
        for r in resources {
            let namespace = namespace_of(&r.metadata);
            match &r.spec {
                Spec::Service(s) if !s.selector.is_empty() && picks(namespace, &s.selector) => {
                    services.push((&r.metadata, s))
                }
                Spec::ServiceEntry(s)
                    if s.endpoints.is_empty()
                        && s.workload_selector
                            .as_ref()
                            .is_some_and(|sel| picks(namespace, &sel.labels)) =>
                {
                    entries.push((&r.metadata, s))
                }
                Spec::WorkloadEntry(w) => all.push(Workload {
                    namespace,
                    name: &r.metadata.name,
                    spec: w,
                }),
                _ => {}
            }
        }
        let key = |m: &&ObjectMeta| (namespace_of(m).to_string(), m.name.clone());
        services.sort_by_key(|(m, _)| key(m));
        entries.sort_by_key(|(m, _)| key(m));
        // Only the workloads the affected services may select.
        let selectors: Vec<(&str, &BTreeMap<String, String>)> = services
            .iter()
            .map(|(m, s)| (namespace_of(m), &s.selector))
            .chain(entries.iter().filter_map(|(m, s)| {
                Some((namespace_of(m), &s.workload_selector.as_ref()?.labels))
            }))
            .collect();
        let workloads = Workloads::new(
            all.into_iter()
                .filter(|w| {
                    selectors
                        .iter()
                        .any(|(ns, sel)| *ns == w.namespace && selects(sel, &w.spec.labels))
                })
                .collect(),
        );
        let mut scratch = Registry::default();
        for (meta, spec) in services {
            add_kube_service(&mut scratch, meta, spec, &workloads, vips, domain_suffix);
        }
        for (meta, spec) in entries {
            add_service_entry(&mut scratch, meta, spec, &workloads, vips);
        }
        sort_endpoints(&mut scratch);
        let mut reg = self.clone();
        let mut hosts = Vec::new();
        for (host, service) in &scratch.services {
            // A host another definition won in the full build keeps that one's endpoints.
            if self.services.get(host).map(|s| &s.origin) != Some(&service.origin) {
                continue;
            }
            let mut differs = false;
            for port in &service.ports {
                let key = (host.clone(), port.number);
                let Some(eps) = scratch.endpoints.get(&key) else {
                    continue;
                };
                if reg.endpoints.get(&key) != Some(eps) {
                    differs = true;
                    reg.endpoints.insert(key, eps.clone());
                }
            }
            if differs {
                hosts.push(host.clone());
            }
        }
        (reg, hosts)
    }
}

fn sort_endpoints(reg: &mut Registry) {
    for eps in reg.endpoints.values_mut() {
        Arc::make_mut(eps).sort_by(|a, b| (&a.address, a.port).cmp(&(&b.address, b.port)));
    }
}

/// Reads `exportTo` (from a ServiceEntry, or a Service's annotation): empty or `*` is public,
/// `.` alone is private, `~` is nobody, anything else the listed namespaces (`.` being the
/// resource's own).
pub fn visibility(export_to: &[String], namespace: &str) -> Visibility {
    let list: Vec<&str> = export_to
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect();
    if list.is_empty() || list.contains(&"*") {
        return Visibility::Public;
    }
    if list == ["."] || list == [namespace] {
        return Visibility::Private;
    }
    let mut out: Vec<String> = list
        .into_iter()
        .filter(|s| *s != "~")
        .map(|s| if s == "." { namespace } else { s }.to_string())
        .collect();
    out.sort();
    out.dedup();
    Visibility::Namespaces(out)
}

fn insert_service(reg: &mut Registry, service: Service) -> bool {
    if let Some(first) = reg.services.get(&service.hostname) {
        tracing::warn!(
            host = %service.hostname,
            first = ?first.origin,
            skipped = ?service.origin,
            "host defined twice; the first definition wins"
        );
        return false;
    }
    reg.services.insert(service.hostname.clone(), service);
    true
}

fn allocate(vips: &mut VipTable, host: &str) -> Vec<IpAddr> {
    match vips.allocate(host) {
        Ok(ip) => vec![ip],
        Err(e) => {
            tracing::warn!(host, error = %e, "service left without a virtual IP");
            Vec::new()
        }
    }
}

fn add_kube_service(
    reg: &mut Registry,
    meta: &ObjectMeta,
    spec: &ServiceSpec,
    workloads: &Workloads<'_>,
    vips: &mut VipTable,
    domain_suffix: &str,
) {
    let namespace = namespace_of(meta);
    let hostname = format!("{}.{namespace}.svc.{domain_suffix}", meta.name);
    let headless = spec.is_headless();
    let addresses = match spec.cluster_ip.as_deref().map(str::parse::<IpAddr>) {
        _ if headless => Vec::new(),
        Some(Ok(ip)) => vec![ip],
        _ => allocate(vips, &hostname),
    };
    let export_to: Vec<String> = meta
        .annotations
        .get(EXPORT_TO_ANNOTATION)
        .map(|v| v.split(',').map(str::to_string).collect())
        .unwrap_or_default();
    let kube_ports: Vec<_> = spec
        .ports
        .iter()
        .filter(|p| p.protocol() == L4Protocol::TCP)
        .filter_map(|p| Some((u16::try_from(p.port).ok()?, p)))
        .collect();
    let ports = kube_ports
        .iter()
        .map(|(number, p)| Port {
            name: p.name.clone(),
            number: *number,
            protocol: Protocol::from_port_name(&p.name, p.app_protocol.as_deref()),
        })
        .collect();
    let service = Service {
        hostname: hostname.clone(),
        namespace: namespace.to_string(),
        origin: Origin::KubernetesService {
            name: meta.name.clone(),
        },
        addresses,
        ports,
        resolution: if headless {
            Resolution::Passthrough
        } else {
            Resolution::Static
        },
        mesh_external: false,
        visibility: visibility(&export_to, namespace),
    };
    if !insert_service(reg, service) {
        return;
    }
    for (number, p) in &kube_ports {
        let eps = if spec.selector.is_empty() {
            Vec::new()
        } else {
            workloads
                .selected(namespace, &spec.selector)
                .map(|w| {
                    let port = w
                        .spec
                        .port(&p.name)
                        .or_else(|| match &p.target_port {
                            Some(IntOrString::Int(n)) if *n > 0 => u32::try_from(*n).ok(),
                            Some(IntOrString::String(name)) => w.spec.port(name),
                            _ => None,
                        })
                        .and_then(|n| u16::try_from(n).ok())
                        .unwrap_or(*number);
                    workload_endpoint(w, port)
                })
                .collect()
        };
        reg.endpoints
            .insert((hostname.clone(), *number), Arc::new(eps));
    }
}

fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn workload_endpoint(w: &Workload<'_>, port: u16) -> Endpoint {
    Endpoint {
        address: w.spec.address.clone(),
        port,
        labels: w.spec.labels.clone(),
        namespace: w.namespace.to_string(),
        service_account: non_empty(&w.spec.service_account)
            .unwrap_or("default")
            .to_string(),
        locality: w.spec.locality.clone(),
        weight: w.spec.weight.max(1),
        workload: Some(w.name.to_string()),
    }
}

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

fn add_service_entry(
    reg: &mut Registry,
    meta: &ObjectMeta,
    spec: &ServiceEntry,
    workloads: &Workloads<'_>,
    vips: &mut VipTable,
) {
    let namespace = namespace_of(meta);
    let resolution = match spec.resolution() {
        SeResolution::Static => Resolution::Static,
        SeResolution::Dns => Resolution::Dns,
        SeResolution::DnsRoundRobin => Resolution::DnsRoundRobin,
        SeResolution::None => Resolution::Passthrough,
        SeResolution::DynamicDns => {
            tracing::warn!(
                serviceentry = %meta.name,
                namespace,
                "resolution DYNAMIC_DNS is not supported; its hosts are passed through to the address the client resolved"
            );
            Resolution::Passthrough
        }
    };
    let ips: Vec<IpAddr> = spec
        .addresses
        .iter()
        .filter_map(|a| a.parse().ok())
        .collect();
    let ports: Vec<(Port, u16)> = spec
        .ports
        .iter()
        .filter_map(|p| {
            let protocol = if p.protocol.is_empty() {
                Protocol::Unknown
            } else {
                Protocol::parse(&p.protocol)?
            };
            let number = u16::try_from(p.number).ok()?;
            let target = u16::try_from(p.target_port()).unwrap_or(number);
            Some((
                Port {
                    name: p.name.clone(),
                    number,
                    protocol,
                },
                target,
            ))
        })
        .collect();
    let visibility = visibility(&spec.export_to, namespace);
    let auto_allocate = resolution != Resolution::Passthrough
        && spec.addresses.is_empty()
        && !meta
            .labels
            .get(strait_api::networking::service_entry::AUTOALLOCATE_LABEL)
            .is_some_and(|v| v.eq_ignore_ascii_case("false"));

    for host in &spec.hosts {
        let addresses = if !ips.is_empty() {
            ips.clone()
        } else if auto_allocate && !host.starts_with('*') {
            allocate(vips, host)
        } else {
            Vec::new()
        };
        let service = Service {
            hostname: host.clone(),
            namespace: namespace.to_string(),
            origin: Origin::ServiceEntry {
                name: meta.name.clone(),
            },
            addresses,
            ports: ports.iter().map(|(p, _)| p.clone()).collect(),
            resolution,
            mesh_external: spec.location() == Location::MeshExternal,
            visibility: visibility.clone(),
        };
        if !insert_service(reg, service) {
            continue;
        }
        for (port, target) in &ports {
            let mut eps: Vec<Endpoint> = if resolution == Resolution::Passthrough {
                Vec::new()
            } else if !spec.endpoints.is_empty() {
                spec.endpoints
                    .iter()
                    .map(|we| Endpoint {
                        address: we.address.clone(),
                        port: port_of(we, &port.name, *target),
                        labels: we.labels.clone(),
                        namespace: namespace.to_string(),
                        service_account: we.service_account.clone(),
                        locality: we.locality.clone(),
                        weight: we.weight.max(1),
                        workload: None,
                    })
                    .collect()
            } else if let Some(sel) = &spec.workload_selector {
                workloads
                    .selected(namespace, &sel.labels)
                    .map(|w| workload_endpoint(w, port_of(w.spec, &port.name, *target)))
                    .collect()
            } else {
                Vec::new()
            };
            if eps.is_empty()
                && matches!(resolution, Resolution::Dns | Resolution::DnsRoundRobin)
                && spec.workload_selector.is_none()
            {
                eps.push(Endpoint {
                    address: host.clone(),
                    port: *target,
                    labels: BTreeMap::new(),
                    namespace: namespace.to_string(),
                    service_account: String::new(),
                    locality: String::new(),
                    weight: 1,
                    workload: None,
                });
            }
            reg.endpoints
                .insert((host.clone(), port.number), Arc::new(eps));
        }
    }
}

/// The port of an endpoint for a service port: its own mapping for the port's name, else the
/// service port's target port.
fn port_of(we: &WorkloadEntry, port_name: &str, target: u16) -> u16 {
    we.port(port_name)
        .and_then(|n| u16::try_from(n).ok())
        .unwrap_or(target)
}
