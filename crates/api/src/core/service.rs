//! Kubernetes core v1 Service.
//!
//! The fields a mesh reads are typed and checked as the Kubernetes API server would; Kubernetes'
//! other ServiceSpec fields are accepted and kept as written ("accepted, not used by Strait"), so
//! any valid Service applies unchanged while a misspelt field is still refused.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

use crate::validate::common::{
    is_dns1123_label, is_dns1123_subdomain, validate_label_key, validate_labels,
};
use crate::{FieldPath, ObjectMeta, Report};

/// `spec` of a Service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ServicePort>,
    /// Pods with these labels back the Service. Unset: endpoints are managed by hand.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
    /// `""` (allocated), `"None"` (headless) or an IP address.
    #[serde(default, rename = "clusterIP", skip_serializing_if = "Option::is_none")]
    pub cluster_ip: Option<String>,
    #[serde(default, rename = "clusterIPs", skip_serializing_if = "Vec::is_empty")]
    pub cluster_ips: Vec<String>,
    /// ClusterIP when unset.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<ServiceType>,
    /// The DNS name an ExternalName Service aliases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity: Option<SessionAffinity>,

    /// Accepted, not used by Strait.
    #[serde(
        default,
        rename = "externalIPs",
        skip_serializing_if = "Option::is_none"
    )]
    pub external_ips: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(
        default,
        rename = "loadBalancerIP",
        skip_serializing_if = "Option::is_none"
    )]
    pub load_balancer_ip: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer_source_ranges: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer_class: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocate_load_balancer_node_ports: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_traffic_policy: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal_traffic_policy: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check_node_port: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish_not_ready_addresses: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity_config: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_families: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_family_policy: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_distribution: Option<Box<Value>>,
}

impl ServiceSpec {
    /// The type, with Kubernetes' default.
    pub fn service_type(&self) -> ServiceType {
        self.type_.unwrap_or_default()
    }

    /// A headless Service (`clusterIP: None`) has no virtual IP; clients reach pods directly.
    pub fn is_headless(&self) -> bool {
        self.cluster_ip.as_deref() == Some("None")
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    /// Required when the Service has more than one port. Istio reads the protocol from a
    /// `<protocol>[-suffix]` name when `appProtocol` is unset.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// TCP when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// The application protocol (`http`, `grpc`, `kubernetes.io/h2c`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
    /// The port the Service exposes.
    #[serde(default)]
    pub port: i64,
    /// The pods' port, by number or by container port name; `port` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<IntOrString>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_port: Option<i64>,
}

impl ServicePort {
    pub fn protocol(&self) -> Protocol {
        self.protocol.unwrap_or_default()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
    ExternalName,
}

impl ServiceType {
    pub fn name(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
            ServiceType::ExternalName => "ExternalName",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionAffinity {
    #[default]
    None,
    ClientIP,
}

/// An L4 protocol of a port.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub enum Protocol {
    #[default]
    TCP,
    UDP,
    SCTP,
}

/// Kubernetes' `IntOrString`: a port number or a port name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IntOrString {
    Int(i64),
    String(String),
}

impl fmt::Display for IntOrString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IntOrString::Int(i) => write!(f, "{i}"),
            IntOrString::String(s) => f.write_str(s),
        }
    }
}

impl Serialize for IntOrString {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            IntOrString::Int(i) => s.serialize_i64(*i),
            IntOrString::String(v) => s.serialize_str(v),
        }
    }
}

impl<'de> Deserialize<'de> for IntOrString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = IntOrString;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number or a port name")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<IntOrString, E> {
                Ok(IntOrString::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<IntOrString, E> {
                i64::try_from(v)
                    .map(IntOrString::Int)
                    .map_err(|_| E::custom(format!("port {v} is too large")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<IntOrString, E> {
                Ok(IntOrString::String(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// Kubernetes' IANA_SVC_NAME, the form of named ports: at most 15 lower-case letters, digits
/// and `-`, with at least one letter, no `--`, not starting or ending with `-`.
pub(crate) fn check_port_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && !name.contains("--")
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid port name {name:?}: at most 15 lower-case letters, digits and '-', with at least one letter, not starting or ending with '-' and no \"--\""
        ))
    }
}

/// A port number in 1..=65535, in Kubernetes' words.
pub(crate) fn check_port_number(port: i64) -> Result<(), String> {
    if (1..=65535).contains(&port) {
        Ok(())
    } else {
        Err(format!(
            "invalid port {port}: must be between 1 and 65535, inclusive"
        ))
    }
}

/// Checks a Service as the Kubernetes API server would, for the fields Strait reads.
pub fn validate(spec: &ServiceSpec, _meta: &ObjectMeta, at: &FieldPath, report: &mut Report) {
    let ty = spec.service_type();
    let ports_at = at.field("ports");
    if spec.ports.is_empty() && !spec.is_headless() && ty != ServiceType::ExternalName {
        report.error(
            &ports_at,
            format!(
                "a {} Service needs at least one port: add spec.ports (only headless and ExternalName Services may have none)",
                ty.name()
            ),
        );
    }
    let mut names = BTreeMap::new();
    let mut seen = BTreeMap::new();
    for (i, p) in spec.ports.iter().enumerate() {
        let p_at = ports_at.index(i);
        if p.name.is_empty() {
            if spec.ports.len() > 1 {
                report.error(
                    &p_at.field("name"),
                    "name is required when a Service has more than one port",
                );
            }
        } else if !is_dns1123_label(&p.name) || p.name.bytes().any(|b| b.is_ascii_uppercase()) {
            report.error(
                &p_at.field("name"),
                format!(
                    "invalid port name {:?}: lower-case letters, digits and '-', starting and ending with a letter or digit (at most 63)",
                    p.name
                ),
            );
        } else if let Some(first) = names.insert(p.name.clone(), i) {
            report.error(
                &p_at.field("name"),
                format!("duplicate port name {:?} (also ports[{first}])", p.name),
            );
        }
        report.check(&p_at.field("port"), check_port_number(p.port));
        if let Some(first) = seen.insert((p.port, p.protocol()), i) {
            report.error(
                &p_at,
                format!(
                    "duplicate port {}/{:?} (also ports[{first}])",
                    p.port,
                    p.protocol()
                ),
            );
        }
        match &p.target_port {
            Some(IntOrString::Int(0)) | None => {}
            Some(IntOrString::Int(n)) => {
                report.check(&p_at.field("targetPort"), check_port_number(*n))
            }
            Some(IntOrString::String(s)) if s.is_empty() => {}
            Some(IntOrString::String(s)) => {
                report.check(&p_at.field("targetPort"), check_port_name(s))
            }
        }
        if let Some(n) = p.node_port.filter(|n| *n != 0) {
            report.check(&p_at.field("nodePort"), check_port_number(n));
            if ty == ServiceType::ClusterIP {
                report.error(
                    &p_at.field("nodePort"),
                    "nodePort may not be used when `type` is 'ClusterIP': remove it or set type: NodePort",
                );
            }
        }
        if let Some(ap) = p
            .app_protocol
            .as_deref()
            .filter(|a| !a.is_empty() && validate_label_key(a).is_err())
        {
            report.error(
                &p_at.field("appProtocol"),
                format!(
                    "invalid appProtocol {ap:?}: a name like \"http\" or \"kubernetes.io/h2c\""
                ),
            );
        }
    }

    report.check(&at.field("selector"), validate_labels(&spec.selector));

    let cluster_ip = spec.cluster_ip.as_deref().unwrap_or_default();
    if !cluster_ip.is_empty() && cluster_ip != "None" && cluster_ip.parse::<IpAddr>().is_err() {
        report.error(
            &at.field("clusterIP"),
            format!("invalid clusterIP {cluster_ip:?}: \"None\", or an IP address"),
        );
    }
    for (i, ip) in spec.cluster_ips.iter().enumerate() {
        let ip_at = at.field("clusterIPs").index(i);
        if i == 0 && !cluster_ip.is_empty() && ip != cluster_ip {
            report.error(&ip_at, "clusterIPs[0] must be the same as clusterIP");
        }
        if ip != "None" && ip.parse::<IpAddr>().is_err() {
            report.error(
                &ip_at,
                format!("invalid cluster IP {ip:?}: \"None\", or an IP address"),
            );
        }
    }

    let external_name = spec.external_name.as_deref().unwrap_or_default();
    if ty == ServiceType::ExternalName {
        let name = external_name.strip_suffix('.').unwrap_or(external_name);
        if name.is_empty() {
            report.error(
                &at.field("externalName"),
                "externalName is required for an ExternalName Service",
            );
        } else if !is_dns1123_subdomain(name) {
            report.error(
                &at.field("externalName"),
                format!("invalid externalName {external_name:?}: a DNS name such as my.database.example.com"),
            );
        }
        if !cluster_ip.is_empty() || !spec.cluster_ips.is_empty() {
            report.error(
                &at.field("clusterIP"),
                "clusterIP must not be set for an ExternalName Service",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(spec: serde_json::Value) -> Report {
        let spec: ServiceSpec = serde_json::from_value(spec).unwrap();
        let mut r = Report::default();
        validate(
            &spec,
            &ObjectMeta::default(),
            &FieldPath::root("spec"),
            &mut r,
        );
        r
    }

    #[test]
    fn typical_services() {
        assert!(check(serde_json::json!({
            "selector": {"app": "reviews"},
            "ports": [{"name": "http", "port": 9080, "targetPort": "http-web"},
                      {"name": "grpc", "port": 9090, "targetPort": 9090, "appProtocol": "grpc"}],
            "type": "LoadBalancer", "externalTrafficPolicy": "Local"
        }))
        .is_ok());
        assert!(check(serde_json::json!({"clusterIP": "None", "selector": {"app": "x"}})).is_ok());
        assert!(
            check(serde_json::json!({"type": "ExternalName", "externalName": "db.example.com"}))
                .is_ok()
        );
    }

    #[test]
    fn refuses_what_kubernetes_refuses() {
        assert!(!check(serde_json::json!({"selector": {"app": "x"}})).is_ok());
        let r = check(serde_json::json!({"ports": [{"port": 80}, {"port": 0, "name": "b"}]}));
        let paths: Vec<_> = r.errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["spec.ports[0].name", "spec.ports[1].port"]);
        let r = check(serde_json::json!({"ports": [{"port": 80, "targetPort": "Http_Web"}]}));
        assert_eq!(r.errors[0].path, "spec.ports[0].targetPort");
        assert!(serde_json::from_value::<ServiceSpec>(serde_json::json!({"prots": []})).is_err());
    }
}
