//! The injection and install values: a typed subset of Istio's Helm `values`, with Istio's names
//! where the meaning is the same (`global.hub`, `global.tag`, `global.proxy.resources`,
//! `global.proxy.includeIPRanges`, `sidecarInjectorWebhook.rewriteAppHTTPProbe`, ...) and a few
//! of Strait's own (`global.proxy.kind`: strait-proxy or Envoy). `strait kube-inject`, the
//! webhook and `strait install -f values.yaml` read the same file; a misspelt key is an error.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Which data plane the injected sidecar runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyKind {
    /// strait-proxy (the default).
    #[default]
    Strait,
    /// Envoy, with `strait agent` beside it for the workload certificate (SDS).
    Envoy,
}

impl ProxyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyKind::Strait => "strait",
            ProxyKind::Envoy => "envoy",
        }
    }
}

/// Whether the sidecar is a native sidecar (an init container with `restartPolicy: Always`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NativeSidecars {
    /// When every node's kubelet is 1.33 or newer (Istio's `ENABLE_NATIVE_SIDECARS=auto`);
    /// `strait kube-inject` without a cluster assumes a current cluster.
    #[default]
    Auto,
    True,
    False,
}

/// Istio's injection policy (`values.sidecarInjectorWebhook.enableNamespacesByDefault` aside):
/// `enabled` injects unless a pod says no, `disabled` only when a pod says yes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    #[default]
    Enabled,
    Disabled,
    /// Anything else: Istio then injects nothing.
    #[serde(untagged)]
    Other(String),
}

/// Container resources as Kubernetes writes them (`requests`/`limits` of `cpu`/`memory`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Resources {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, String>,
}

impl Resources {
    fn istio_default() -> Resources {
        Resources {
            requests: [("cpu", "100m"), ("memory", "128Mi")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            limits: [("cpu", "2"), ("memory", "1Gi")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.requests.is_empty() && self.limits.is_empty()
    }
}

/// `global.proxy`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ProxyValues {
    /// The sidecar image's name under `global.hub` (default `strait-proxy`; with
    /// `kind: envoy`, `strait-envoy`), or a full reference when it contains a `/`.
    pub image: Option<String>,
    /// Strait's own: the data plane the sidecar runs.
    pub kind: ProxyKind,
    pub resources: Resources,
    /// The agent's status port (Istio's 15020): rewritten probes and merged metrics go there.
    /// 0 turns both off.
    pub status_port: u16,
    pub hold_application_until_proxy_starts: bool,
    /// Outbound ranges captured (`*`: all).
    #[serde(rename = "includeIPRanges")]
    pub include_ip_ranges: String,
    #[serde(rename = "excludeIPRanges")]
    pub exclude_ip_ranges: String,
    pub include_inbound_ports: String,
    pub exclude_inbound_ports: String,
    pub include_outbound_ports: String,
    pub exclude_outbound_ports: String,
    /// `REDIRECT` (Istio's default), `TPROXY` or `NONE` (Istio's `meshConfig.defaultConfig.
    /// interceptionMode` and the pod annotation).
    pub interception_mode: String,
    /// The proxy's log level (`warning`).
    pub log_level: String,
    /// Readiness probe of the sidecar (Istio's defaults).
    pub readiness_initial_delay_seconds: u32,
    pub readiness_period_seconds: u32,
    pub readiness_failure_threshold: u32,
    /// The proxy's uid and gid (1337).
    pub uid: u32,
}

impl Default for ProxyValues {
    fn default() -> Self {
        ProxyValues {
            image: None,
            kind: ProxyKind::Strait,
            resources: Resources::istio_default(),
            status_port: 15020,
            hold_application_until_proxy_starts: false,
            include_ip_ranges: "*".into(),
            exclude_ip_ranges: String::new(),
            include_inbound_ports: "*".into(),
            exclude_inbound_ports: String::new(),
            include_outbound_ports: String::new(),
            exclude_outbound_ports: String::new(),
            interception_mode: "REDIRECT".into(),
            log_level: "warning".into(),
            readiness_initial_delay_seconds: 0,
            readiness_period_seconds: 15,
            readiness_failure_threshold: 4,
            uid: 1337,
        }
    }
}

/// `global.proxy_init`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ProxyInitValues {
    /// The init image's name under `global.hub` (default `strait-init`), or a full reference.
    pub image: String,
}

impl Default for ProxyInitValues {
    fn default() -> Self {
        ProxyInitValues {
            image: "strait-init".into(),
        }
    }
}

/// `global`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct GlobalValues {
    /// Where the images are: `ghcr.io/strait-mesh`.
    pub hub: String,
    pub tag: String,
    /// Left unset when empty (Kubernetes' default).
    pub image_pull_policy: String,
    pub image_pull_secrets: Vec<String>,
    /// The namespace of the control plane (Istio's `istio-system`).
    pub istio_namespace: String,
    pub mesh_id: String,
    pub trust_domain: String,
    /// The cluster's name (`multiCluster.clusterName`, Istio's default `Kubernetes`).
    pub cluster_name: String,
    pub proxy: ProxyValues,
    pub proxy_init: ProxyInitValues,
}

impl Default for GlobalValues {
    fn default() -> Self {
        GlobalValues {
            hub: "ghcr.io/strait-mesh".into(),
            tag: env!("CARGO_PKG_VERSION").into(),
            image_pull_policy: String::new(),
            image_pull_secrets: Vec::new(),
            istio_namespace: "istio-system".into(),
            mesh_id: "cluster.local".into(),
            trust_domain: "cluster.local".into(),
            cluster_name: "Kubernetes".into(),
            proxy: ProxyValues::default(),
            proxy_init: ProxyInitValues::default(),
        }
    }
}

/// `sidecarInjectorWebhook`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct InjectorValues {
    pub rewrite_app_http_probe: bool,
    pub native_sidecars: NativeSidecars,
    /// `enabled` or `disabled`.
    pub policy: Policy,
    /// Kubernetes LabelSelectors (Istio's `neverInjectSelector`, `alwaysInjectSelector`).
    pub never_inject_selector: Vec<Value>,
    pub always_inject_selector: Vec<Value>,
    /// Annotations added to every injected pod.
    pub injected_annotations: BTreeMap<String, String>,
}

impl Default for InjectorValues {
    fn default() -> Self {
        InjectorValues {
            rewrite_app_http_probe: true,
            native_sidecars: NativeSidecars::Auto,
            policy: Policy::Enabled,
            never_inject_selector: Vec::new(),
            always_inject_selector: Vec::new(),
            injected_annotations: BTreeMap::new(),
        }
    }
}

/// The control plane's Deployment and the ingress gateway (for `strait install`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ControlPlaneValues {
    /// The control plane image's name under `global.hub`.
    pub image: String,
    pub replicas: u32,
    pub resources: Resources,
    /// Serve Istio's validating webhook as well.
    pub validation_webhook: bool,
}

impl Default for ControlPlaneValues {
    fn default() -> Self {
        ControlPlaneValues {
            image: "strait-control-plane".into(),
            replicas: 2,
            resources: Resources {
                requests: [("cpu", "500m"), ("memory", "512Mi")]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                limits: BTreeMap::new(),
            },
            validation_webhook: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct GatewayValues {
    pub enabled: bool,
    pub name: String,
    pub replicas: u32,
    /// The Service's type (`LoadBalancer`, `NodePort`, `ClusterIP`).
    pub service_type: String,
    /// (name, port, targetPort) of the Service.
    pub ports: Vec<GatewayPort>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayPort {
    pub name: String,
    pub port: u16,
    pub target_port: u16,
}

impl Default for GatewayValues {
    fn default() -> Self {
        GatewayValues {
            enabled: true,
            name: "istio-ingressgateway".into(),
            replicas: 1,
            service_type: "LoadBalancer".into(),
            ports: vec![
                GatewayPort {
                    name: "status-port".into(),
                    port: 15021,
                    target_port: 15021,
                },
                GatewayPort {
                    name: "http2".into(),
                    port: 80,
                    target_port: 8080,
                },
                GatewayPort {
                    name: "https".into(),
                    port: 443,
                    target_port: 8443,
                },
            ],
        }
    }
}

/// Every value: `strait install -f values.yaml`, `strait kube-inject --values`, the webhook.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Values {
    pub global: GlobalValues,
    pub sidecar_injector_webhook: InjectorValues,
    pub control_plane: ControlPlaneValues,
    pub gateway: GatewayValues,
}

/// A values file that cannot be read, with the field path of the problem.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: {message}")]
pub struct ValuesError {
    pub source_name: String,
    pub message: String,
}

impl Values {
    /// Reads a values file (YAML or JSON); keys it does not set keep their defaults.
    pub fn from_yaml(source_name: &str, text: &str) -> Result<Values, ValuesError> {
        let de = serde_yaml_ng::Deserializer::from_str(text);
        let values: Values = serde_path_to_error_lite(de).map_err(|message| ValuesError {
            source_name: source_name.to_string(),
            message,
        })?;
        Ok(values)
    }

    /// `HUB/NAME:TAG`, or NAME itself when it is a full reference (has a `/`).
    pub fn image(&self, name: &str) -> String {
        if name.contains('/') {
            name.to_string()
        } else {
            format!("{}/{}:{}", self.global.hub, name, self.global.tag)
        }
    }

    /// The sidecar's image.
    pub fn proxy_image(&self) -> String {
        let default = match self.global.proxy.kind {
            ProxyKind::Strait => "strait-proxy",
            ProxyKind::Envoy => "strait-envoy",
        };
        self.image(self.global.proxy.image.as_deref().unwrap_or(default))
    }

    /// The control plane's address inside the cluster, as Istio names it.
    pub fn control_plane_host(&self) -> String {
        format!("istiod.{}.svc", self.global.istio_namespace)
    }
}

/// YAML into Values with the path of the first bad key in the message.
fn serde_path_to_error_lite(de: serde_yaml_ng::Deserializer<'_>) -> Result<Values, String> {
    // serde_yaml_ng reports the location (line and column) and the unknown field with the
    // fields it expected, which is enough to find a typo.
    Values::deserialize(de).map_err(|e| {
        let text = e.to_string();
        if text.contains("unknown field") {
            format!("{text} (the keys follow Istio's values: global.hub, global.proxy.resources, sidecarInjectorWebhook.rewriteAppHTTPProbe, ...)")
        } else {
            text
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_istios() {
        let v = Values::default();
        assert_eq!(v.global.proxy.status_port, 15020);
        assert_eq!(v.global.proxy.resources.requests["cpu"], "100m");
        assert_eq!(v.global.proxy.resources.limits["memory"], "1Gi");
        assert!(v.sidecar_injector_webhook.rewrite_app_http_probe);
        assert_eq!(v.control_plane_host(), "istiod.istio-system.svc");
    }

    #[test]
    fn a_values_file_overrides_and_typos_are_errors() {
        let v = Values::from_yaml(
            "values.yaml",
            "global:\n  hub: example.com/mesh\n  tag: \"1.2\"\n  proxy:\n    kind: envoy\n",
        )
        .unwrap();
        assert_eq!(v.proxy_image(), "example.com/mesh/strait-envoy:1.2");
        assert_eq!(v.global.proxy.status_port, 15020);
        let e = Values::from_yaml("values.yaml", "global:\n  hubb: x\n").unwrap_err();
        assert!(e.to_string().contains("hubb"), "{e}");
        assert!(e.to_string().starts_with("values.yaml"), "{e}");
    }
}
