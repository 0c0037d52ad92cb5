//! Sidecar: what a workload's proxy listens for and may reach.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

pub use super::destination_rule::ConnectionPoolSettings;
use super::destination_rule::validate_connection_pool;
use super::gateway::{
    Protocol, ServerTLSSettings, TlsMode, UNIX_PREFIX, is_zero, proto_enum, validate_ip_address,
    validate_namespace_slash_host, validate_port_name, validate_protocol, validate_server_tls,
    validate_unix_address,
};
pub use super::virtual_service::Destination;
use crate::validate::common::{
    is_dns1123_label, validate_fqdn, validate_port, validate_wildcard_domain,
};
use crate::{FieldPath, ObjectMeta, Report};

/// `spec` of a Sidecar.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Sidecar {
    /// The workloads this applies to; all workloads of the namespace when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<WorkloadSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<IstioIngressListener>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<IstioEgressListener>,
    /// Connection pool for inbound connections, unless a listener sets its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound_connection_pool: Option<ConnectionPoolSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,
}

/// Selects workloads by labels (`networking.istio.io`'s own selector, with `labels`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl WorkloadSelector {
    /// Whether a workload with `labels` is selected (an empty selector selects every workload).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

proto_enum! {
    /// How traffic reaches a listener.
    pub enum CaptureMode {
        /// The namespace's default (iptables when capture is set up).
        Default = 0 => "DEFAULT",
        /// Traffic is redirected by iptables.
        Iptables = 1 => "IPTABLES",
        /// No capture: the application connects to the bind address.
        None = 2 => "NONE",
    }
}

/// A port of a Sidecar listener.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SidecarPort {
    /// 0 for a Unix domain socket listener.
    #[serde(default)]
    pub number: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub protocol: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Deprecated; has no effect on Sidecars.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub target_port: u32,
}

impl SidecarPort {
    pub fn protocol(&self) -> Protocol {
        Protocol::parse(&self.protocol)
    }
}

/// An inbound listener: a port of the workload and where to forward its traffic.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IstioIngressListener {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<SidecarPort>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub bind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture_mode: Option<CaptureMode>,
    /// `127.0.0.1:PORT`, `0.0.0.0:PORT`, `[::1]:PORT`, `[::]:PORT` or `unix:///path`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub default_endpoint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServerTLSSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPoolSettings>,
}

/// An outbound listener: the hosts (`namespace/host`) the workload may reach on a port, or on
/// every port when `port` is unset (the catch-all, which must come last).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IstioEgressListener {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<SidecarPort>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub bind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture_mode: Option<CaptureMode>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
}

impl IstioEgressListener {
    /// The hosts as `(namespace, host)` pairs; `.` is replaced by `namespace`.
    pub fn namespaced_hosts<'a>(
        &'a self,
        namespace: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.hosts.iter().filter_map(move |h| {
            let (ns, host) = h.split_once('/')?;
            Some((if ns == "." { namespace } else { ns }, host))
        })
    }
}

proto_enum! {
    /// What outbound traffic to unknown destinations does.
    pub enum OutboundTrafficPolicyMode {
        /// Only services in the registry can be reached.
        RegistryOnly = 0 => "REGISTRY_ONLY",
        /// Unknown destinations are passed through.
        AllowAny = 1 => "ALLOW_ANY",
    }
}

/// Outbound traffic policy of a Sidecar.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutboundTrafficPolicy {
    /// Unset means `REGISTRY_ONLY`; see [`OutboundTrafficPolicy::mode`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<OutboundTrafficPolicyMode>,
    /// Where ALLOW_ANY traffic goes instead of its original destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_proxy: Option<Destination>,
}

impl OutboundTrafficPolicy {
    pub fn mode(&self) -> OutboundTrafficPolicyMode {
        self.mode.unwrap_or_default()
    }
}

/// Checks a `workloadSelector` with `labels` (Istio's `ValidateAlphaWorkloadSelector`):
/// errors for empty keys and wildcards, and whether it is empty (a warning for the caller).
pub(crate) fn validate_alpha_selector(
    selector: &WorkloadSelector,
    at: &FieldPath,
    report: &mut Report,
) -> bool {
    for (k, v) in &selector.labels {
        let at = at.field("labels").key(k);
        if k.is_empty() {
            report.error(
                &at,
                format!("empty key is not supported in selector: \"{k}={v}\""),
            );
        }
        if k.contains('*') || v.contains('*') {
            report.error(
                &at,
                format!("wildcard is not supported in selector: \"{k}={v}\""),
            );
        }
    }
    selector.labels.is_empty()
}

/// Splits `host:port` as Go's `net.SplitHostPort` does (`[v6]:port`, `host:port`, `:port`).
fn split_host_port(s: &str) -> Result<(&str, &str), String> {
    if let Some(rest) = s.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return Err(format!("address {s}: missing ']' in address"));
        };
        let Some(port) = after.strip_prefix(':') else {
            return Err(format!("address {s}: missing port in address"));
        };
        return Ok((host, port));
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!("address {s}: missing port in address"));
    };
    if host.contains(':') {
        return Err(format!("address {s}: too many colons in address"));
    }
    Ok((host, port))
}

fn validate_default_endpoint(endpoint: &str, at: &FieldPath, report: &mut Report) {
    if let Some(path) = endpoint.strip_prefix(UNIX_PREFIX) {
        report.check(at, validate_unix_address(path));
        return;
    }
    let (host, port) = match split_host_port(endpoint) {
        Ok(hp) => hp,
        Err(e) => {
            report.error(at, e);
            ("", "")
        }
    };
    if !host.is_empty() && !matches!(host, "127.0.0.1" | "0.0.0.0" | "::1" | "::") {
        report.error(
            at,
            "sidecar: defaultEndpoint must be of form 127.0.0.1:<port>,0.0.0.0:<port>,[::1]:port,[::]:port,unix://filepath or unset",
        );
    }
    match port.parse::<i64>() {
        Ok(p) => report.check(at, validate_port(p)),
        Err(_) => report.error(
            at,
            format!("sidecar: defaultEndpoint port ({port}) is not a number"),
        ),
    }
}

/// Checks a Sidecar on its own, as Istio's validating webhook does.
pub fn validate(spec: &Sidecar, meta: &ObjectMeta, at: &FieldPath, report: &mut Report) {
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
                "sidecar: workload selector specified without labels, will be applied to all services in namespace",
            );
        }
    }
    if spec.egress.is_empty()
        && spec.ingress.is_empty()
        && spec.outbound_traffic_policy.is_none()
        && spec.inbound_connection_pool.is_none()
    {
        report.error(
            at,
            "sidecar: empty configuration provided: set ingress, egress, outboundTrafficPolicy or inboundConnectionPool",
        );
        return;
    }

    let mut ports = BTreeSet::new();
    for (i, listener) in spec.ingress.iter().enumerate() {
        validate_ingress(listener, &at.field("ingress").index(i), &mut ports, report);
    }
    if let Some(pool) = &spec.inbound_connection_pool {
        validate_connection_pool(pool, &at.field("inboundConnectionPool"), report);
    }

    let namespace = meta.namespace.as_deref().unwrap_or_default();
    let mut ports = BTreeSet::new();
    let mut sockets = BTreeSet::new();
    let mut catch_all = false;
    let last = spec.egress.len().saturating_sub(1);
    for (i, egress) in spec.egress.iter().enumerate() {
        let at = at.field("egress").index(i);
        match &egress.port {
            None => {
                if catch_all {
                    report.error(
                        &at,
                        "sidecar: egress can have only one listener with empty port",
                    );
                    continue;
                }
                if i == last {
                    catch_all = true;
                } else {
                    report.error(
                        &at,
                        "sidecar: the egress listener with empty port should be the last listener in the list",
                    );
                }
            }
            Some(port) => {
                validate_egress_port(egress, port, &at, report);
                if port.number == 0 {
                    if !sockets.insert(egress.bind.as_str()) {
                        report.error(
                            &at.field("bind"),
                            "sidecar: unix domain socket values for listeners must be unique",
                        );
                    }
                } else if !ports.insert(port.number) {
                    report.error(
                        &at.field("port").field("number"),
                        "sidecar: ports on IP bound listeners must be unique",
                    );
                }
            }
        }
        validate_egress_hosts(&egress.hosts, namespace, &at.field("hosts"), report);
    }

    if let Some(policy) = &spec.outbound_traffic_policy {
        validate_outbound_policy(policy, &at.field("outboundTrafficPolicy"), report);
    }
}

fn validate_ingress(
    listener: &IstioIngressListener,
    at: &FieldPath,
    ports: &mut BTreeSet<u32>,
    report: &mut Report,
) {
    let Some(port) = &listener.port else {
        report.error(
            &at.field("port"),
            "sidecar: port is required for ingress listeners",
        );
        return;
    };
    let at_port = at.field("port");
    if port.target_port > 0 {
        report.error(
            &at_port.field("targetPort"),
            "targetPort has no impact on Sidecars: remove it",
        );
    }
    if !port.name.is_empty() {
        report.check(&at_port.field("name"), validate_port_name(&port.name));
    }
    report.check(
        &at_port.field("protocol"),
        validate_protocol(&port.protocol),
    );
    report.check(
        &at_port.field("number"),
        validate_port(i64::from(port.number)),
    );
    if !listener.bind.is_empty() {
        report.check(&at.field("bind"), validate_ip_address(&listener.bind));
    }
    if !ports.insert(port.number) {
        report.error(
            &at_port.field("number"),
            "sidecar: ports on IP bound listeners must be unique",
        );
    }
    if !listener.default_endpoint.is_empty() {
        validate_default_endpoint(
            &listener.default_endpoint,
            &at.field("defaultEndpoint"),
            report,
        );
    }
    if let Some(tls) = &listener.tls {
        let at = at.field("tls");
        if !tls.subject_alt_names.is_empty() {
            report.error(
                &at.field("subjectAltNames"),
                "sidecar: subjectAltNames is not supported in ingress tls",
            );
        }
        if tls.https_redirect {
            report.error(
                &at.field("httpsRedirect"),
                "sidecar: httpsRedirect is not supported",
            );
        }
        if !tls.credential_name.is_empty() {
            report.error(
                &at.field("credentialName"),
                "sidecar: credentialName is not currently supported",
            );
        }
        if !tls.credential_names.is_empty() {
            report.error(
                &at.field("credentialNames"),
                "sidecar: credentialNames is not currently supported",
            );
        }
        if !tls.tls_certificates.is_empty() {
            report.error(
                &at.field("tlsCertificates"),
                "sidecar: tls_certificates is not currently supported",
            );
        }
        let mode = tls.mode();
        if matches!(mode, TlsMode::IstioMutual | TlsMode::AutoPassthrough) {
            report.error(
                &at.field("mode"),
                format!(
                    "configuration is invalid: cannot set mode to {mode} in sidecar ingress tls"
                ),
            );
        }
        if !port.protocol().is_tls() {
            report.error(
                &at,
                "server cannot have TLS settings for non HTTPS/TLS ports: use protocol HTTPS or TLS",
            );
        }
        validate_server_tls(tls, &at, report);
    }
    if let Some(pool) = &listener.connection_pool {
        let at = at.field("connectionPool");
        validate_connection_pool(pool, &at, report);
        if pool.http.is_some() && !port.protocol().is_http() {
            report.warn(
                &at.field("http"),
                format!(
                    "sidecar: HTTP connection pool settings are configured for port {} ({:?}) but its protocol is not HTTP ({}); only TCP settings will apply",
                    port.number, port.name, port.protocol
                ),
            );
        }
    }
}

fn validate_egress_port(
    egress: &IstioEgressListener,
    port: &SidecarPort,
    at: &FieldPath,
    report: &mut Report,
) {
    let at_port = at.field("port");
    if port.target_port > 0 {
        report.error(
            &at_port.field("targetPort"),
            "targetPort has no impact on Sidecars: remove it",
        );
    }
    if !port.name.is_empty() {
        report.check(&at_port.field("name"), validate_port_name(&port.name));
    }
    report.check(
        &at_port.field("protocol"),
        validate_protocol(&port.protocol),
    );
    let bind = egress.bind.as_str();
    if port.number == 0 {
        match bind.strip_prefix(UNIX_PREFIX) {
            Some(path) => report.check(&at.field("bind"), validate_unix_address(path)),
            None => report.error(
                &at.field("bind"),
                "sidecar: ports with 0 value must have a unix domain socket bind address",
            ),
        }
        if !matches!(
            egress.capture_mode.unwrap_or_default(),
            CaptureMode::Default | CaptureMode::None
        ) {
            report.error(
                &at.field("captureMode"),
                "sidecar: captureMode must be DEFAULT/NONE for unix domain socket listeners",
            );
        }
    } else {
        report.check(
            &at_port.field("number"),
            validate_port(i64::from(port.number)),
        );
        if !bind.is_empty() {
            report.check(&at.field("bind"), validate_ip_address(bind));
        }
    }
}

fn validate_egress_hosts(hosts: &[String], namespace: &str, at: &FieldPath, report: &mut Report) {
    if hosts.is_empty() {
        report.error(
            at,
            "sidecar: egress listener must contain at least one host: add hosts such as \"./*\" or \"istio-system/*\"",
        );
        return;
    }
    let mut by_ns: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (i, host) in hosts.iter().enumerate() {
        let at = at.index(i);
        // Exclusions (`~/host`, `~ns/*`) narrow what the other entries import.
        if let Some((ns, svc)) = host.split_once('/').filter(|(ns, _)| !ns.starts_with('~')) {
            let ns = if ns == "." { namespace } else { ns };
            let seen = by_ns.entry(ns).or_default();
            let duplicate = if svc == "*" {
                !seen.is_empty()
            } else {
                seen.contains(svc) || seen.contains("*")
            };
            if duplicate {
                report.warn(&at, format!("duplicated egress host: {host}"));
            }
            seen.insert(svc);
        }
        for e in validate_namespace_slash_host(host, false) {
            report.error(&at, e);
        }
    }
    if by_ns.get("*").is_some_and(|s| s.contains("*")) && by_ns.len() != 1 {
        report.warn(
            at,
            "`*/*` host select all resources, no other hosts can be added",
        );
    }
}

fn validate_outbound_policy(policy: &OutboundTrafficPolicy, at: &FieldPath, report: &mut Report) {
    let Some(proxy) = &policy.egress_proxy else {
        return;
    };
    let at_proxy = at.field("egressProxy");
    if policy.mode() != OutboundTrafficPolicyMode::AllowAny {
        report.error(
            &at_proxy,
            "sidecar: egress_proxy must be set only with ALLOW_ANY outbound_traffic_policy mode",
        );
        return;
    }
    let host_ok = validate_fqdn(&proxy.host);
    let host_is_fqdn = host_ok.is_ok();
    report.check(&at_proxy.field("host"), host_ok);
    let Some(port) = &proxy.port else {
        report.error(
            &at_proxy.field("port"),
            "sidecar: egress_proxy port must be non-nil",
        );
        return;
    };
    // (Istio also checks the host as a destination; an FQDN always passes that.)
    if host_is_fqdn {
        report.check(
            &at_proxy.field("host"),
            validate_wildcard_domain(&proxy.host),
        );
    }
    if !proxy.subset.is_empty() && !is_dns1123_label(&proxy.subset) {
        report.error(
            &at_proxy.field("subset"),
            format!("subset name is invalid: {}", proxy.subset),
        );
    }
    report.check(
        &at_proxy.field("port").field("number"),
        validate_port(i64::from(port.number)),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(yaml: &str) -> Report {
        let spec: Sidecar = serde_yaml_ng::from_str(yaml).unwrap();
        let meta = ObjectMeta {
            name: "s".into(),
            namespace: Some("bar".into()),
            ..Default::default()
        };
        let mut r = Report::default();
        validate(&spec, &meta, &FieldPath::root("spec"), &mut r);
        r
    }

    #[test]
    fn egress_hosts() {
        assert!(!check("{}").is_ok());
        assert!(check("egress: [{hosts: ['*/*']}]").is_ok());
        assert!(check("egress: [{hosts: ['./*', '~/*', '~ns1/*']}]").is_ok());
        assert!(!check("egress: [{hosts: ['*/*', '~Invalid_NS/*']}]").is_ok());
        assert!(!check("egress: [{hosts: ['*']}]").is_ok());
        assert!(!check("egress: [{hosts: ['test/*a.com']}]").is_ok());
        let r = check("egress: [{hosts: ['test/*', 'test/a.com']}]");
        assert!(r.is_ok() && r.warnings.len() == 1, "{r:?}");
        assert!(!check("egress: [{hosts: ['*/a.com']}, {hosts: ['ns/b.com']}]").is_ok());
    }

    #[test]
    fn listeners() {
        assert!(check("egress: [{port: {number: 0, protocol: http, name: uds}, bind: 'unix:///@foo', hosts: [ns/a.com]}]").is_ok());
        assert!(!check("egress: [{port: {number: 0, protocol: http, name: uds}, bind: 'unix:///@foo', captureMode: IPTABLES, hosts: [ns/a.com]}]").is_ok());
        assert!(
            check("ingress: [{port: {number: 90, name: foo}, defaultEndpoint: '[::1]:9999'}]")
                .is_ok()
        );
        assert!(
            !check("ingress: [{port: {number: 90, name: foo}, defaultEndpoint: '1.1.1.1:90'}]")
                .is_ok()
        );
        assert!(
            !check("ingress: [{port: {number: 90, name: foo}, defaultEndpoint: '127.0.0.1:hi'}]")
                .is_ok()
        );
        assert!(!check("ingress: [{port: {number: 90, protocol: tcp, name: foo}, tls: {mode: SIMPLE, credentialName: x}}]").is_ok());
        let r = check(
            "ingress: [{port: {number: 90, protocol: tcp, name: foo}, connectionPool: {http: {maxRetries: 3}}}]",
        );
        assert!(r.is_ok() && r.warnings.len() == 1, "{r:?}");
        assert!(!check("inboundConnectionPool: {}").is_ok());
    }

    #[test]
    fn outbound_policy() {
        assert!(check("outboundTrafficPolicy: {mode: ALLOW_ANY}").is_ok());
        assert!(check("outboundTrafficPolicy: {mode: ALLOW_ANY, egressProxy: {host: foo.bar, subset: shiny, port: {number: 5000}}}").is_ok());
        assert!(
            !check("outboundTrafficPolicy: {egressProxy: {host: foo.bar, port: {number: 5000}}}")
                .is_ok()
        );
        assert!(
            !check("outboundTrafficPolicy: {mode: ALLOW_ANY, egressProxy: {host: foo.bar}}")
                .is_ok()
        );
        assert!(serde_yaml_ng::from_str::<Sidecar>("outboundTrafficPolicy: {mode: 3}").is_err());
    }
}
