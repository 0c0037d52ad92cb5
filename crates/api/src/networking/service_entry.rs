//! ServiceEntry: adds entries to the service registry.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::gateway::{
    Protocol, is_zero, proto_enum, validate_partial_wildcard, validate_port_name, validate_protocol,
};
use super::sidecar::{WorkloadSelector, validate_alpha_selector};
use super::workload::{WorkloadEntry, validate_endpoint_ports, validate_workload_entry};
use crate::validate::common::{
    is_dns1123_label, is_ip, validate_fqdn, validate_ip_or_cidr, validate_labels, validate_port,
    validate_wildcard_domain,
};
use crate::{FieldPath, ObjectMeta, Report};

/// The label that opts a ServiceEntry out of automatic IP allocation (`"false"`).
pub const AUTOALLOCATE_LABEL: &str = "networking.istio.io/enable-autoallocate-ip";
/// The label that sends a service's traffic through a waypoint proxy.
pub const USE_WAYPOINT_LABEL: &str = "istio.io/use-waypoint";

/// `spec` of a ServiceEntry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceEntry {
    /// Host names of the service (`*.example.com` allowed, not `*`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Virtual IPs or CIDR blocks of the service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ServicePort>,
    /// Unset means `MESH_EXTERNAL`; see [`ServiceEntry::location`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    /// Unset means `NONE`; see [`ServiceEntry::resolution`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<Resolution>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<WorkloadEntry>,
    /// Selects Pods and WorkloadEntries as endpoints instead of `endpoints`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<WorkloadSelector>,
    /// Namespaces that can see the service: `.`, `*`, `~` or names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
    /// Identities the service's workloads may present.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
}

impl ServiceEntry {
    pub fn location(&self) -> Location {
        self.location.unwrap_or_default()
    }

    pub fn resolution(&self) -> Resolution {
        self.resolution.unwrap_or_default()
    }

    /// The port with this name, if any.
    pub fn port(&self, name: &str) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.name == name)
    }
}

/// A port of a ServiceEntry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    #[serde(default)]
    pub number: u32,
    /// Empty means the protocol is detected.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub protocol: String,
    #[serde(default)]
    pub name: String,
    /// The port endpoints listen on, when it differs from `number` (0 means unset).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub target_port: u32,
}

impl ServicePort {
    pub fn protocol(&self) -> Protocol {
        Protocol::parse(&self.protocol)
    }

    /// The port endpoints listen on.
    pub fn target_port(&self) -> u32 {
        if self.target_port == 0 {
            self.number
        } else {
            self.target_port
        }
    }
}

proto_enum! {
    /// Whether the service is part of the mesh.
    pub enum Location {
        /// Outside the mesh: no mTLS, and metrics treat it as external.
        MeshExternal = 0 => "MESH_EXTERNAL",
        /// Inside the mesh (for example VMs added by hand).
        MeshInternal = 1 => "MESH_INTERNAL",
    }
}

proto_enum! {
    /// How the proxy finds the service's endpoints.
    pub enum Resolution {
        /// Forward to the original destination address.
        None = 0 => "NONE",
        /// Use the addresses in `endpoints` (or selected workloads).
        Static = 1 => "STATIC",
        /// Resolve the hosts (or endpoint names) by DNS and balance over all answers.
        Dns = 2 => "DNS",
        /// Resolve by DNS and use the first answer for new connections.
        DnsRoundRobin = 3 => "DNS_ROUND_ROBIN",
        /// Resolve each request's host at request time (wildcard hosts, HTTP/TLS only).
        DynamicDns = 4 => "DYNAMIC_DNS",
    }
}

/// Checks a ServiceEntry on its own, as Istio's validating webhook does.
pub fn validate(spec: &ServiceEntry, meta: &ObjectMeta, at: &FieldPath, report: &mut Report) {
    let resolution = spec.resolution();
    if let Some(sel) = &spec.workload_selector {
        let at_sel = at.field("workloadSelector");
        let before = report.errors.len();
        let empty = validate_alpha_selector(sel, &at_sel, report);
        if report.errors.len() != before {
            return;
        }
        if empty {
            report.warn(
                &at_sel,
                "service entry: workload selector specified without labels, will be applied to all services in namespace",
            );
        }
        if !spec.endpoints.is_empty() {
            report.error(
                &at_sel,
                "only one of WorkloadSelector or Endpoints is allowed in Service Entry",
            );
        }
    }

    let at_hosts = at.field("hosts");
    if spec.hosts.is_empty() {
        report.error(
            &at_hosts,
            "service entry must have at least one host: add hosts such as \"api.example.com\"",
        );
    }
    for (i, host) in spec.hosts.iter().enumerate() {
        let at = at_hosts.index(i);
        if host == "*" {
            report.error(
                &at,
                "invalid host *: a ServiceEntry cannot match every host; use \"*.example.com\"",
            );
        } else {
            report.check(&at, validate_wildcard_domain(host));
            if let Err(w) = validate_partial_wildcard(host) {
                report.warn(&at, w);
            }
        }
    }

    let mut cidr = false;
    for (i, address) in spec.addresses.iter().enumerate() {
        cidr |= address.contains('/');
        report.check(
            &at.field("addresses").index(i),
            validate_ip_or_cidr(address),
        );
    }
    if cidr && !matches!(resolution, Resolution::None | Resolution::Static) {
        report.error(
            &at.field("addresses"),
            "CIDR addresses are allowed only for NONE/STATIC resolution types",
        );
    }

    let auto_allocation = resolution != Resolution::None
        && spec.addresses.is_empty()
        && !meta
            .labels
            .get(AUTOALLOCATE_LABEL)
            .is_some_and(|v| v.eq_ignore_ascii_case("false"));
    let mut names = BTreeSet::new();
    let mut numbers = BTreeSet::new();
    for (i, port) in spec.ports.iter().enumerate() {
        let at = at.field("ports").index(i);
        if !names.insert(port.name.clone()) {
            report.error(
                &at.field("name"),
                format!("service entry port name {:?} already defined", port.name),
            );
        }
        if !numbers.insert(port.number) {
            report.error(
                &at.field("number"),
                format!("service entry port {} already defined", port.number),
            );
        }
        if port.target_port != 0 {
            report.check(
                &at.field("targetPort"),
                validate_port(i64::from(port.target_port)),
            );
        }
        if spec.addresses.is_empty()
            && !auto_allocation
            && (port.protocol.is_empty() || port.protocol == "TCP")
        {
            report.warn(
                &at.field("protocol"),
                "addresses are required for ports serving TCP (or unset) protocol when IP Autoallocation is not enabled",
            );
        }
        report.check(&at.field("name"), validate_port_name(&port.name));
        report.check(&at.field("protocol"), validate_protocol(&port.protocol));
        report.check(&at.field("number"), validate_port(i64::from(port.number)));
    }

    let at_endpoints = at.field("endpoints");
    match resolution {
        Resolution::None => {
            if !spec.endpoints.is_empty() {
                report.error(
                    &at_endpoints,
                    "no endpoints should be provided for resolution type none",
                );
            }
            if spec.workload_selector.is_some() {
                report.warn(
                    &at.field("workloadSelector"),
                    "workloadSelector should not be set when resolution mode is NONE",
                );
            }
        }
        Resolution::Static => {
            for (i, endpoint) in spec.endpoints.iter().enumerate() {
                validate_workload_entry(
                    endpoint,
                    Some(&names),
                    false,
                    &at_endpoints.index(i),
                    report,
                );
            }
        }
        Resolution::Dns | Resolution::DnsRoundRobin => {
            if spec.endpoints.is_empty() {
                for (i, host) in spec.hosts.iter().enumerate() {
                    if validate_fqdn(host).is_err() {
                        report.error(
                            &at_hosts.index(i),
                            format!("hosts must be FQDN if no endpoints are provided for resolution mode {resolution}"),
                        );
                    }
                }
            }
            if resolution == Resolution::DnsRoundRobin && spec.endpoints.len() > 1 {
                report.error(
                    &at_endpoints,
                    format!("there must only be 0 or 1 endpoint for resolution mode {resolution}"),
                );
            }
            for (i, endpoint) in spec.endpoints.iter().enumerate() {
                let at = at_endpoints.index(i);
                if !is_ip(&endpoint.address) && validate_fqdn(&endpoint.address).is_err() {
                    report.error(
                        &at.field("address"),
                        format!(
                            "endpoint address {:?} is not a valid FQDN or an IP address",
                            endpoint.address
                        ),
                    );
                }
                report.check(&at.field("labels"), validate_labels(&endpoint.labels));
                validate_endpoint_ports(endpoint, Some(&names), &at.field("ports"), report);
            }
            if !spec.addresses.is_empty()
                && spec.hosts.len() > 1
                && spec.ports.iter().any(|p| p.protocol().is_tcp())
            {
                report.warn(
                    &at_hosts,
                    "service entry can not have more than one host specified simultaneously with address and tcp port",
                );
            }
        }
        Resolution::DynamicDns => validate_dynamic_dns(spec, meta, at, report),
    }

    // Plain TCP carries nothing that tells hosts apart, so several hosts need HTTP or TLS ports
    // (unless the hosts are ignored, with resolution NONE).
    if resolution != Resolution::None
        && spec.hosts.len() > 1
        && let Some(i) = spec
            .ports
            .iter()
            .position(|p| !p.protocol().is_http() && !p.protocol().is_tls())
    {
        report.error(
            &at.field("ports").index(i).field("protocol"),
            "multiple hosts provided with non-HTTP, non-TLS ports",
        );
    }

    validate_export_to(
        meta.namespace.as_deref().unwrap_or_default(),
        &spec.export_to,
        true,
        &at.field("exportTo"),
        report,
    );
}

/// DYNAMIC_DNS resolves each request's host, so it takes only wildcard hosts, HTTP or TLS ports,
/// and neither addresses nor endpoints.
fn validate_dynamic_dns(
    spec: &ServiceEntry,
    meta: &ObjectMeta,
    at: &FieldPath,
    report: &mut Report,
) {
    for (i, host) in spec.hosts.iter().enumerate() {
        if !host.starts_with("*.") {
            report.error(
                &at.field("hosts").index(i),
                format!("hosts must be wildcard (like \"*.example.com\") for resolution mode DYNAMIC_DNS: {host:?}"),
            );
        }
    }
    if !spec.addresses.is_empty() {
        report.error(
            &at.field("addresses"),
            "addresses are not allowed for resolution mode DYNAMIC_DNS",
        );
    }
    if !spec.endpoints.is_empty() {
        report.error(
            &at.field("endpoints"),
            "endpoints are not allowed for resolution mode DYNAMIC_DNS: the request's host is resolved",
        );
    }
    if spec.workload_selector.is_some() {
        report.error(
            &at.field("workloadSelector"),
            "workloadSelector is not allowed for resolution mode DYNAMIC_DNS",
        );
    }
    for (i, port) in spec.ports.iter().enumerate() {
        let p = port.protocol();
        if !p.is_http() && !p.is_tls() {
            report.error(
                &at.field("ports").index(i).field("protocol"),
                format!(
                    "protocol {:?} is not supported for resolution mode DYNAMIC_DNS: use HTTP, HTTP2, GRPC, HTTPS or TLS",
                    port.protocol
                ),
            );
        }
    }
    if meta.labels.contains_key(USE_WAYPOINT_LABEL) {
        report.error(
            &FieldPath::root("metadata")
                .field("labels")
                .key(USE_WAYPOINT_LABEL),
            "resolution mode DYNAMIC_DNS is not supported with a waypoint: remove the istio.io/use-waypoint label",
        );
    }
}

/// Checks `exportTo` (Istio's `validateExportTo`): `.`, `*`, namespace names, and for
/// ServiceEntries `~` (visible to no one but its own proxies); no duplicates; `*` and `~` alone.
pub(crate) fn validate_export_to(
    namespace: &str,
    export_to: &[String],
    is_service_entry: bool,
    at: &FieldPath,
    report: &mut Report,
) {
    if export_to.is_empty() {
        return;
    }
    let mut set = BTreeSet::new();
    for (i, e) in export_to.iter().enumerate() {
        let at = at.index(i);
        let key = if e == "." && !namespace.is_empty() {
            namespace
        } else {
            e.as_str()
        };
        if set.contains(key) {
            if key != e {
                report.error(
                    &at,
                    format!("duplicate entries in exportTo: . and current namespace {namespace}"),
                );
            } else {
                report.error(&at, format!("duplicate entries in exportTo for entry {e}"));
            }
        } else if (is_service_entry && e == "~")
            || key == "."
            || key == "*"
            || (key != "~" && is_dns1123_label(key))
        {
            set.insert(key);
        } else {
            report.error(
                &at,
                format!("invalid exportTo entry {e:?}: only .,*, or a valid DNS 1123 label is allowed as exportTo entry"),
            );
        }
    }
    if set.contains("*") && export_to.len() > 1 {
        report.error(
            at,
            "cannot have both public (*) and non-public exportTo values for a resource",
        );
    }
    if set.contains("~") && export_to.len() > 1 {
        report.error(at, "cannot export service entry to no one (~) and someone");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_with(yaml: &str, labels: &[(&str, &str)]) -> Report {
        let spec: ServiceEntry = serde_yaml_ng::from_str(yaml).unwrap();
        let meta = ObjectMeta {
            name: "se".into(),
            namespace: Some("bar".into()),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        };
        let mut r = Report::default();
        validate(&spec, &meta, &FieldPath::root("spec"), &mut r);
        r
    }

    fn check(yaml: &str) -> Report {
        check_with(yaml, &[])
    }

    #[test]
    fn resolutions() {
        assert!(check("{hosts: [google.com], ports: [{number: 80, name: http, protocol: HTTP}], resolution: DNS}").is_ok());
        assert!(
            !check("{hosts: ['*.google.com'], ports: [{number: 80, name: http}], resolution: DNS}")
                .is_ok()
        );
        assert!(check("{hosts: [a.com], addresses: [10.0.0.0/16], ports: [{number: 80, name: http}], endpoints: [{address: 1.1.1.1, ports: {http: 8080}}], resolution: STATIC}").is_ok());
        assert!(!check("{hosts: [a.com], ports: [{number: 80, name: http}], endpoints: [{address: a.com}], resolution: STATIC}").is_ok());
        assert!(!check("{hosts: [a.com], ports: [{number: 80, name: http}], endpoints: [{address: 1.1.1.1, ports: {other: 1}}], resolution: STATIC}").is_ok());
        assert!(
            !check("{hosts: [a.com], endpoints: [{address: 1.1.1.1}], resolution: NONE}").is_ok()
        );
        assert!(!check("{hosts: [a.com], addresses: [10.0.0.0/8], resolution: DNS}").is_ok());
        assert!(!check("{hosts: [a.com, b.com], ports: [{number: 1, name: tcp, protocol: TCP}], resolution: DNS}").is_ok());
    }

    #[test]
    fn dynamic_dns() {
        assert!(check("{hosts: ['*.a.com', '*.b.com'], ports: [{number: 80, name: http, protocol: HTTP}], resolution: DYNAMIC_DNS}").is_ok());
        assert!(!check("{hosts: [a.com], ports: [{number: 80, name: http, protocol: HTTP}], resolution: DYNAMIC_DNS}").is_ok());
        assert!(!check("{hosts: ['*.a.com'], ports: [{number: 80, name: tcp, protocol: TCP}], resolution: DYNAMIC_DNS}").is_ok());
        let waypoint = [(USE_WAYPOINT_LABEL, "wp")];
        assert!(!check_with("{hosts: ['*.a.com'], ports: [{number: 80, name: http, protocol: HTTP}], resolution: DYNAMIC_DNS}", &waypoint).is_ok());
    }

    #[test]
    fn warnings_and_export() {
        let r = check("{hosts: [a.com], ports: [{number: 80, name: tcp}], resolution: NONE}");
        assert!(r.is_ok() && r.warnings.len() == 1, "{r:?}");
        let r = check("{hosts: ['*a.com'], resolution: NONE}");
        assert!(r.is_ok() && r.warnings.len() == 1, "{r:?}");
        assert!(check("{hosts: [a.com], exportTo: ['~']}").is_ok());
        assert!(check("{hosts: [a.com], exportTo: ['.', other]}").is_ok());
        assert!(!check("{hosts: [a.com], exportTo: ['.', bar]}").is_ok());
        assert!(!check("{hosts: [a.com], exportTo: ['*', bar]}").is_ok());
        assert!(!check("{hosts: [a.com], workloadSelector: {labels: {'': x}}}").is_ok());
    }
}
