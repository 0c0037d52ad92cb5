//! WorkloadEntry and WorkloadGroup: workloads outside Kubernetes (VMs, and Strait's local pods).

use std::collections::{BTreeMap, BTreeSet};

use regex::Regex;
use serde::{Deserialize, Serialize};
use std::sync::LazyLock;

use super::gateway::{UNIX_PREFIX, is_zero, validate_port_name, validate_unix_address};
use crate::validate::common::{is_ip, validate_fqdn, validate_labels, validate_port};
use crate::{FieldPath, ObjectMeta, Report};

/// `spec` of a WorkloadEntry: one workload's address, ports, labels and identity. Also the
/// shape of a ServiceEntry endpoint and of a WorkloadGroup's template.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadEntry {
    /// An IP address, a DNS name (DNS resolution), or `unix:///path` (a Unix socket).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub address: String,
    /// Service port name to the port the workload listens on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<String, u32>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The network the workload is on; traffic from other networks goes through its gateway.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub network: String,
    /// `region/zone/subzone`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub locality: String,
    /// Load-balancing weight among endpoints of the same locality (0 means unset).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub weight: u32,
    /// The identity the workload runs as (in the resource's namespace).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service_account: String,
}

impl WorkloadEntry {
    /// The socket path when the address is `unix://...`.
    pub fn unix_path(&self) -> Option<&str> {
        self.address.strip_prefix(UNIX_PREFIX)
    }

    /// The port for a service port name, if the entry maps it.
    pub fn port(&self, service_port_name: &str) -> Option<u32> {
        self.ports.get(service_port_name).copied()
    }

    /// `(region, zone, subzone)`, empty strings for what is not given.
    pub fn locality_parts(&self) -> (&str, &str, &str) {
        let mut it = self.locality.splitn(3, '/');
        (
            it.next().unwrap_or(""),
            it.next().unwrap_or(""),
            it.next().unwrap_or(""),
        )
    }
}

/// `spec` of a WorkloadGroup: the template for the WorkloadEntries of a group of VMs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadGroup {
    /// Labels and annotations every generated WorkloadEntry gets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<WorkloadGroupMeta>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<WorkloadEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<ReadinessProbe>,
}

/// `metadata` of a WorkloadGroup (Istio's `WorkloadGroup.ObjectMeta`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadGroupMeta {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// How the agent checks a workload's readiness; exactly one method is set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReadinessProbe {
    #[serde(default, skip_serializing_if = "is_zero_i32")]
    pub initial_delay_seconds: i32,
    #[serde(default, skip_serializing_if = "is_zero_i32")]
    pub timeout_seconds: i32,
    #[serde(default, skip_serializing_if = "is_zero_i32")]
    pub period_seconds: i32,
    #[serde(default, skip_serializing_if = "is_zero_i32")]
    pub success_threshold: i32,
    #[serde(default, skip_serializing_if = "is_zero_i32")]
    pub failure_threshold: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HTTPHealthCheckConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_socket: Option<TCPHealthCheckConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecHealthCheckConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcHealthCheckConfig>,
}

fn is_zero_i32(n: &i32) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HTTPHealthCheckConfig {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    #[serde(default)]
    pub port: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host: String,
    /// `HTTP` (the default) or `HTTPS`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scheme: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http_headers: Vec<HTTPHeader>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HTTPHeader {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TCPHealthCheckConfig {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host: String,
    #[serde(default)]
    pub port: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecHealthCheckConfig {
    #[serde(default)]
    pub command: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcHealthCheckConfig {
    #[serde(default)]
    pub port: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service: String,
}

/// Checks a WorkloadEntry on its own, as Istio's validating webhook does.
pub fn validate_entry(
    spec: &WorkloadEntry,
    _meta: &ObjectMeta,
    at: &FieldPath,
    report: &mut Report,
) {
    validate_workload_entry(spec, None, true, at, report);
}

/// Checks a workload entry, on its own or as a ServiceEntry endpoint (then `service_ports`
/// holds the ServiceEntry's port names and the address must be an IP or a Unix socket).
pub(crate) fn validate_workload_entry(
    we: &WorkloadEntry,
    service_ports: Option<&BTreeSet<String>>,
    allow_fqdn: bool,
    at: &FieldPath,
    report: &mut Report,
) {
    let addr = we.address.as_str();
    let at_addr = at.field("address");
    if addr.is_empty() {
        if we.network.is_empty() {
            report.error(
                &at_addr,
                "address is required: set an IP address, a DNS name or unix:///path (or a network)",
            );
            return;
        }
        report.warn(
            &at_addr,
            format!("address is unset with network {:?}", we.network),
        );
    }
    let unix = we.unix_path();
    if let Some(path) = unix {
        report.check(&at_addr, validate_unix_address(path));
        if !we.ports.is_empty() {
            report.error(
                &at.field("ports"),
                format!("unix endpoint {addr} must not include ports: remove ports"),
            );
        }
    } else if !addr.is_empty() && !is_ip(addr) {
        if !allow_fqdn {
            report.error(
                &at_addr,
                format!("endpoint address {addr:?} is not a valid IP address (resolution STATIC needs IP addresses; use DNS resolution for host names)"),
            );
        } else if validate_fqdn(addr).is_err() {
            report.error(
                &at_addr,
                format!("endpoint address {addr:?} is not a valid FQDN or an IP address"),
            );
        }
    }
    validate_endpoint_ports(we, service_ports, &at.field("ports"), report);
    report.check(&at.field("labels"), validate_labels(&we.labels));
    if unix.is_some() && service_ports.is_some_and(|p| p.len() != 1) {
        report.error(
            &at_addr,
            "exactly 1 service port required for unix endpoints",
        );
    }
}

/// Endpoint ports: names of the service's ports, numbers in range.
pub(crate) fn validate_endpoint_ports(
    we: &WorkloadEntry,
    service_ports: Option<&BTreeSet<String>>,
    at: &FieldPath,
    report: &mut Report,
) {
    for (name, port) in &we.ports {
        let at = at.key(name);
        if service_ports.is_some_and(|p| !p.contains(name)) {
            report.error(
                &at,
                format!("endpoint port {port} is not defined by the service entry: {name:?} names no port of the ServiceEntry"),
            );
        }
        report.check(&at, validate_port_name(name));
        report.check(&at, validate_port(i64::from(*port)));
    }
}

/// Checks a WorkloadGroup on its own, as Istio's validating webhook does.
pub fn validate_group(
    spec: &WorkloadGroup,
    _meta: &ObjectMeta,
    at: &FieldPath,
    report: &mut Report,
) {
    if spec.template.is_none() {
        report.error(
            &at.field("template"),
            "template is required: add template (it may be {})",
        );
        return;
    }
    // The template is not checked as a WorkloadEntry: address and labels are filled in per VM.
    if let Some(meta) = &spec.metadata
        && let Err(e) = validate_labels(&meta.labels)
    {
        report.error(
            &at.field("metadata").field("labels"),
            format!("invalid labels: {e}"),
        );
        return;
    }
    if let Some(probe) = &spec.probe {
        validate_probe(probe, &at.field("probe"), report);
    }
}

static PROBE_HEADER_NAME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new("^[-A-Za-z0-9]+$").unwrap());

fn validate_probe(probe: &ReadinessProbe, at: &FieldPath, report: &mut Report) {
    for (value, field) in [
        (probe.period_seconds, "periodSeconds"),
        (probe.initial_delay_seconds, "initialDelaySeconds"),
        (probe.timeout_seconds, "timeoutSeconds"),
        (probe.success_threshold, "successThreshold"),
        (probe.failure_threshold, "failureThreshold"),
    ] {
        if value < 0 {
            report.error(&at.field(field), format!("{field} must be non-negative"));
        }
    }
    let methods = [
        probe.http_get.is_some(),
        probe.tcp_socket.is_some(),
        probe.exec.is_some(),
        probe.grpc.is_some(),
    ];
    match methods.iter().filter(|m| **m).count() {
        0 => {
            report.error(
                at,
                "unknown health check method: set one of httpGet, tcpSocket, exec or grpc",
            );
            return;
        }
        1 => {}
        _ => report.error(
            at,
            "only one of httpGet, tcpSocket, exec or grpc may be set",
        ),
    }
    if let Some(h) = &probe.http_get {
        let at = at.field("httpGet");
        report.check(&at.field("port"), validate_port(i64::from(h.port)));
        if !h.scheme.is_empty() && h.scheme != "HTTP" && h.scheme != "HTTPS" {
            report.error(
                &at.field("scheme"),
                "httpGet.scheme must be one of \"HTTPS\", \"HTTP\"",
            );
        }
        for (i, header) in h.http_headers.iter().enumerate() {
            let at = at.field("httpHeaders").index(i).field("name");
            if header.name.is_empty() {
                report.error(&at, "header name cannot be empty");
            } else if !PROBE_HEADER_NAME.is_match(&header.name) {
                report.error(
                    &at,
                    format!(
                        "header name {} is not a valid header name: letters, digits and '-'",
                        header.name
                    ),
                );
            }
        }
    }
    if let Some(t) = &probe.tcp_socket {
        report.check(
            &at.field("tcpSocket").field("port"),
            validate_port(i64::from(t.port)),
        );
    }
    if let Some(e) = &probe.exec
        && e.command.is_empty()
    {
        report.error(
            &at.field("exec").field("command"),
            "exec.command is required",
        );
    }
    if let Some(g) = &probe.grpc {
        report.check(
            &at.field("grpc").field("port"),
            validate_port(i64::from(g.port)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(yaml: &str) -> Report {
        let spec: WorkloadEntry = serde_yaml_ng::from_str(yaml).unwrap();
        let mut r = Report::default();
        validate_entry(
            &spec,
            &ObjectMeta::default(),
            &FieldPath::root("spec"),
            &mut r,
        );
        r
    }

    fn group(yaml: &str) -> Report {
        let spec: WorkloadGroup = serde_yaml_ng::from_str(yaml).unwrap();
        let mut r = Report::default();
        validate_group(
            &spec,
            &ObjectMeta::default(),
            &FieldPath::root("spec"),
            &mut r,
        );
        r
    }

    #[test]
    fn entry_addresses() {
        assert!(entry("{address: 1.2.3.4, ports: {http: 8080}}").is_ok());
        assert!(entry("{address: validdns.com}").is_ok());
        assert!(entry("{address: unix:///var/run/app.sock}").is_ok());
        assert!(!entry("{}").is_ok());
        let r = entry("{network: n2}");
        assert!(r.is_ok() && r.warnings.len() == 1);
        assert!(!entry("{address: 'unix:///a', ports: {http: 1}}").is_ok());
        assert!(!entry("{address: 'invaliddns.com:9443'}").is_ok());
        let r = entry("{address: 1.2.3.4, ports: {http: 0}}");
        assert_eq!(r.errors[0].path, "spec.ports[http]");
    }

    #[test]
    fn entry_accessors() {
        let we: WorkloadEntry =
            serde_yaml_ng::from_str("{address: 10.0.0.1, ports: {http: 80}, locality: r/z}")
                .unwrap();
        assert_eq!(we.port("http"), Some(80));
        assert_eq!(we.locality_parts(), ("r", "z", ""));
    }

    #[test]
    fn group_probes() {
        assert!(group("{template: {}}").is_ok());
        assert!(!group("{}").is_ok());
        assert!(!group("{template: {}, metadata: {labels: {'.': '~'}}}").is_ok());
        assert!(!group("{template: {}, probe: {}}").is_ok());
        assert!(!group("{template: {}, probe: {httpGet: {}}}").is_ok());
        assert!(group("{template: {}, probe: {httpGet: {port: 5, scheme: HTTPS}}}").is_ok());
        assert!(!group("{template: {}, probe: {tcpSocket: {}}}").is_ok());
        assert!(!group("{template: {}, probe: {exec: {}}}").is_ok());
        assert!(group("{template: {}, probe: {exec: {command: [a]}, periodSeconds: 5}}").is_ok());
        assert!(!group("{template: {}, probe: {exec: {command: [a]}, periodSeconds: -1}}").is_ok());
        assert!(
            !group("{template: {}, probe: {httpGet: {port: 5, httpHeaders: [{name: '**'}]}}}")
                .is_ok()
        );
    }
}
