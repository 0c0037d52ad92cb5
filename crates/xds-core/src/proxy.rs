//! Who a connected proxy is.
//!
//! Node ids follow Istio's form, `sidecar~IP~POD.NS~NS.svc.cluster.local` (`router~...` for
//! gateways), and the node metadata carries Istio's keys: `NAMESPACE`, `NAME`, `LABELS`,
//! `INTERCEPTION_MODE` (`REDIRECT` or `NONE`), `SERVICE_ACCOUNT`, `INSTANCE_IPS`,
//! `WORKLOAD_NAME` and `CLUSTER_ID` (for telemetry), and one of
//! Strait's own: `STRAIT_APP_ADDRESS`, where the proxy's inbound traffic goes (its app's
//! address when that is not 127.0.0.1: without capture, each app on a machine has its own).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};

/// Sidecar or gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum ProxyRole {
    Sidecar,
    Gateway,
}

impl ProxyRole {
    /// The node id's first part: `sidecar` or `router` (Istio's name for gateways).
    pub fn node_prefix(self) -> &'static str {
        match self {
            ProxyRole::Sidecar => "sidecar",
            ProxyRole::Gateway => "router",
        }
    }

    /// As the `--role` flag writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyRole::Sidecar => "sidecar",
            ProxyRole::Gateway => "gateway",
        }
    }
}

/// How traffic reaches the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum CaptureMode {
    /// iptables redirects the workload's traffic to 15001 (outbound) and 15006 (inbound).
    Iptables,
    /// No capture: the app uses the proxy as its HTTP proxy on `ADDRESS:15080`, and is reached
    /// through the proxy's inbound listeners on the workload's address and ports.
    None,
}

impl CaptureMode {
    /// As the `--capture` flag writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            CaptureMode::Iptables => "iptables",
            CaptureMode::None => "none",
        }
    }
}

/// A proxy, as the control plane knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proxy {
    /// The node id, as sent.
    pub id: String,
    pub role: ProxyRole,
    pub ip: IpAddr,
    /// The workload (pod) name.
    pub workload: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub capture: CaptureMode,
    pub service_account: String,
    /// Where the app serves, for the inbound clusters; `None` is 127.0.0.1.
    pub app_address: Option<IpAddr>,
    /// The proxy has a workload certificate and trust bundle (`default` and `ROOTCA` from its
    /// own identity, or over SDS from its node agent): mutual TLS can be asked of it. Node
    /// metadata `STRAIT_MTLS: "1"`.
    pub mtls: bool,
}

/// The cluster id in node metadata (`CLUSTER_ID`, Istio's default): Istio's metrics label
/// `source_cluster` and `destination_cluster` with it.
pub const DEFAULT_CLUSTER_ID: &str = "Kubernetes";

/// The node metadata key that says a proxy can do mutual TLS.
pub const MTLS_METADATA: &str = "STRAIT_MTLS";

/// Why a node could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error(
        "node id {id:?} is not of the form sidecar~IP~POD.NAMESPACE~NAMESPACE.svc.cluster.local (or router~... for a gateway): {reason}"
    )]
    BadId { id: String, reason: &'static str },
    #[error(
        "node {id:?}: STRAIT_APP_ADDRESS {value:?} in its metadata is not an IP address: set it to the app's address (127.45.0.2, say) or leave it out for 127.0.0.1"
    )]
    BadAppAddress { id: String, value: String },
    #[error(
        "the first request has no node: set node.id (Envoy's --service-node or bootstrap node)"
    )]
    NoNode,
}

impl Proxy {
    /// Istio's node id for a proxy.
    pub fn node_id(role: ProxyRole, ip: IpAddr, workload: &str, namespace: &str) -> String {
        format!(
            "{}~{ip}~{workload}.{namespace}~{namespace}.svc.cluster.local",
            role.node_prefix()
        )
    }

    /// Reads a proxy from an Envoy node: the id gives role, IP, workload and namespace; the
    /// metadata adds labels, capture mode and service account.
    pub fn from_node(node: &Node) -> Result<Proxy, ProxyError> {
        let id = node.id.clone();
        let bad = |reason| ProxyError::BadId {
            id: id.clone(),
            reason,
        };
        let parts: Vec<&str> = id.split('~').collect();
        let [role, ip, pod_ns, domain] = parts.as_slice() else {
            return Err(bad("expected four parts separated by '~'"));
        };
        let role = match *role {
            "sidecar" => ProxyRole::Sidecar,
            "router" => ProxyRole::Gateway,
            _ => return Err(bad("the first part must be 'sidecar' or 'router'")),
        };
        let ip: IpAddr = ip
            .parse()
            .map_err(|_| bad("the second part must be an IP address"))?;
        let (workload, namespace) = pod_ns
            .split_once('.')
            .ok_or_else(|| bad("the third part must be POD.NAMESPACE"))?;
        if workload.is_empty() || namespace.is_empty() {
            return Err(bad("the workload and namespace must not be empty"));
        }
        let _ = domain;
        let meta = node.metadata.as_ref();
        let text = |key: &str| meta.and_then(|m| string_field(m, key));
        let labels = meta
            .and_then(|m| m.fields.get("LABELS"))
            .and_then(|v| match &v.kind {
                Some(Kind::StructValue(s)) => Some(
                    s.fields
                        .iter()
                        .filter_map(|(k, v)| match &v.kind {
                            Some(Kind::StringValue(s)) => Some((k.clone(), s.clone())),
                            _ => None,
                        })
                        .collect(),
                ),
                _ => None,
            })
            .unwrap_or_default();
        let capture = match text("INTERCEPTION_MODE").as_deref() {
            Some("NONE") => CaptureMode::None,
            _ => CaptureMode::Iptables,
        };
        let app_address = match text("STRAIT_APP_ADDRESS") {
            None => None,
            Some(v) => Some(v.parse().map_err(|_| ProxyError::BadAppAddress {
                id: id.clone(),
                value: v.clone(),
            })?),
        };
        Ok(Proxy {
            role,
            ip,
            workload: workload.to_string(),
            namespace: text("NAMESPACE").unwrap_or_else(|| namespace.to_string()),
            labels,
            capture,
            service_account: text("SERVICE_ACCOUNT").unwrap_or_else(|| "default".to_string()),
            app_address,
            mtls: text(MTLS_METADATA).as_deref() == Some("1"),
            id,
        })
    }

    /// The metadata a proxy's node carries, for bootstraps and clients.
    pub fn node_metadata(&self) -> Struct {
        let s = |v: &str| Value {
            kind: Some(Kind::StringValue(v.to_string())),
        };
        let mut fields = BTreeMap::new();
        fields.insert("NAMESPACE".to_string(), s(&self.namespace));
        fields.insert("NAME".to_string(), s(&self.workload));
        // Istio's telemetry keys: the workload (on the local platform, the pod's name) and
        // the cluster id (Istio's default).
        fields.insert("WORKLOAD_NAME".to_string(), s(&self.workload));
        fields.insert("CLUSTER_ID".to_string(), s(DEFAULT_CLUSTER_ID));
        fields.insert("SERVICE_ACCOUNT".to_string(), s(&self.service_account));
        fields.insert("INSTANCE_IPS".to_string(), s(&self.ip.to_string()));
        fields.insert(
            "INTERCEPTION_MODE".to_string(),
            s(match self.capture {
                CaptureMode::Iptables => "REDIRECT",
                CaptureMode::None => "NONE",
            }),
        );
        if let Some(app) = self.app_address {
            fields.insert("STRAIT_APP_ADDRESS".to_string(), s(&app.to_string()));
        }
        if self.mtls {
            fields.insert(MTLS_METADATA.to_string(), s("1"));
        }
        let labels = Struct {
            fields: self.labels.iter().map(|(k, v)| (k.clone(), s(v))).collect(),
        };
        fields.insert(
            "LABELS".to_string(),
            Value {
                kind: Some(Kind::StructValue(labels)),
            },
        );
        Struct {
            fields: fields.into_iter().collect(),
        }
    }
}

fn string_field(s: &Struct, key: &str) -> Option<String> {
    match s.fields.get(key).and_then(|v| v.kind.as_ref()) {
        Some(Kind::StringValue(v)) if !v.is_empty() => Some(v.clone()),
        _ => None,
    }
}

impl fmt::Display for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.workload, self.namespace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_istio_node_ids_and_metadata() {
        let proxy = Proxy {
            id: String::new(),
            role: ProxyRole::Sidecar,
            ip: "127.0.0.2".parse().unwrap(),
            workload: "productpage-v1".into(),
            namespace: "default".into(),
            labels: [("app".to_string(), "productpage".to_string())].into(),
            capture: CaptureMode::None,
            service_account: "bookinfo-productpage".into(),
            app_address: Some("127.45.0.2".parse().unwrap()),
            mtls: true,
        };
        let id = Proxy::node_id(proxy.role, proxy.ip, &proxy.workload, &proxy.namespace);
        assert_eq!(
            id,
            "sidecar~127.0.0.2~productpage-v1.default~default.svc.cluster.local"
        );
        let node = Node {
            id: id.clone(),
            metadata: Some(proxy.node_metadata()),
            ..Default::default()
        };
        assert_eq!(
            Proxy::from_node(&node).unwrap(),
            Proxy {
                id: id.clone(),
                ..proxy.clone()
            }
        );
        // Without an app address, the app is on 127.0.0.1 (no key sent).
        let plain = Proxy {
            app_address: None,
            ..proxy.clone()
        };
        assert!(
            !plain
                .node_metadata()
                .fields
                .contains_key("STRAIT_APP_ADDRESS")
        );
        let mut meta = proxy.node_metadata();
        meta.fields.insert(
            "STRAIT_APP_ADDRESS".into(),
            Value {
                kind: Some(Kind::StringValue("reviews".into())),
            },
        );
        let err = Proxy::from_node(&Node {
            id,
            metadata: Some(meta),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("STRAIT_APP_ADDRESS \"reviews\"") && err.contains("not an IP address"),
            "{err}"
        );
        let bad = Node {
            id: "nope".into(),
            ..Default::default()
        };
        assert!(
            Proxy::from_node(&bad)
                .unwrap_err()
                .to_string()
                .contains("sidecar~IP~POD")
        );
    }
}
