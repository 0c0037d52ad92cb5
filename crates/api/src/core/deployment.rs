//! Kubernetes apps/v1 Deployment: the parts a mesh reads.
//!
//! Typed: replicas, selector and the pod template's metadata, service account and containers
//! (name, image, command, args, env, ports). Kubernetes' other fields of DeploymentSpec, PodSpec,
//! Container, ContainerPort and EnvVar are accepted and kept as written ("accepted, not used by
//! Strait"), so any valid Deployment applies unchanged while a misspelt field is still refused.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::service::{Protocol, check_port_name, check_port_number};
use crate::validate::common::{
    is_dns1123_label, is_dns1123_subdomain, validate_label_key, validate_label_value,
    validate_labels,
};
use crate::{FieldPath, ObjectMeta, Report};

/// `spec` of a Deployment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeploymentSpec {
    /// 1 when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i64>,
    /// Required; must match the template's labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    #[serde(default)]
    pub template: Box<PodTemplateSpec>,

    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_ready_seconds: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision_history_limit: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_deadline_seconds: Option<Box<Value>>,
}

/// A Kubernetes label selector: labels and expressions, all of which must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

impl LabelSelector {
    /// Whether a set of labels matches the selector.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|e| {
                let value = labels.get(&e.key);
                match e.operator {
                    SelectorOperator::In => value.is_some_and(|v| e.values.contains(v)),
                    SelectorOperator::NotIn => value.is_none_or(|v| !e.values.contains(v)),
                    SelectorOperator::Exists => value.is_some(),
                    SelectorOperator::DoesNotExist => value.is_none(),
                }
            })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelectorRequirement {
    pub key: String,
    pub operator: SelectorOperator,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// The pods a Deployment creates.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodTemplateSpec {
    /// Labels select the pods (and give their workload identity labels); annotations carry
    /// sidecar settings such as `sidecar.istio.io/inject`.
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PodSpec,
}

/// A pod's spec: the containers and service account are typed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<Container>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub init_containers: Vec<Container>,
    /// The workload's identity; `default` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Deprecated alias of `serviceAccountName`, read when that is unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,

    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ephemeral_containers: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_grace_period_seconds: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_deadline_seconds: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_policy: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_config: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automount_service_account_token: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_network: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, rename = "hostPID", skip_serializing_if = "Option::is_none")]
    pub host_pid: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, rename = "hostIPC", skip_serializing_if = "Option::is_none")]
    pub host_ipc: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_users: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_process_namespace: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secrets: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname_override: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subdomain: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(
        default,
        rename = "setHostnameAsFQDN",
        skip_serializing_if = "Option::is_none"
    )]
    pub set_hostname_as_fqdn: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler_name: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_aliases: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preemption_policy: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_gates: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_class_name: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_service_links: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overhead: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology_spread_constraints: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduling_gates: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduling_group: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_claims: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eviction_responders: Option<Box<Value>>,
}

impl PodSpec {
    /// The service account the pods run as.
    pub fn service_account(&self) -> &str {
        self.service_account_name
            .as_deref()
            .or(self.service_account.as_deref())
            .filter(|s| !s.is_empty())
            .unwrap_or("default")
    }
}

/// One container of a pod.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Container {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Informational in Kubernetes; Istio uses them for protocol and probe handling.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ContainerPort>,

    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_from: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resize_policy: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_policy_rules: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_mounts: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_devices: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness_probe: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_probe: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_message_path: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_message_policy: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin_once: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<Box<Value>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerPort {
    #[serde(default)]
    pub container_port: i64,
    /// An IANA service name, unique in the pod; Services may target it by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// TCP when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,

    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<Box<Value>>,
    /// Accepted, not used by Strait.
    #[serde(default, rename = "hostIP", skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<Box<Value>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvVar {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Accepted, not used by Strait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<Box<Value>>,
}

/// Checks a Deployment as the Kubernetes API server would, for the fields Strait reads.
pub fn validate(spec: &DeploymentSpec, _meta: &ObjectMeta, at: &FieldPath, report: &mut Report) {
    if let Some(r) = spec.replicas.filter(|r| *r < 0) {
        report.error(
            &at.field("replicas"),
            format!("replicas must be greater than or equal to 0, found {r}"),
        );
    }
    let template = &spec.template;
    let labels = &template.metadata.labels;
    let tmeta_at = at.field("template").field("metadata");
    report.check(&tmeta_at.field("labels"), validate_labels(labels));

    let sel_at = at.field("selector");
    match &spec.selector {
        None => report.error(
            &sel_at,
            "selector is required: set spec.selector.matchLabels to the template's labels",
        ),
        Some(sel) if sel.match_labels.is_empty() && sel.match_expressions.is_empty() => {
            report.error(&sel_at, "empty selector is invalid for deployment");
        }
        Some(sel) => {
            validate_selector(sel, &sel_at, report);
            if !sel.matches(labels) {
                report.error(
                    &tmeta_at.field("labels"),
                    "`selector` does not match template `labels`: give the template every label of spec.selector",
                );
            }
        }
    }
    validate_pod_spec(&template.spec, &at.field("template").field("spec"), report);
}

fn validate_selector(sel: &LabelSelector, at: &FieldPath, report: &mut Report) {
    report.check(&at.field("matchLabels"), validate_labels(&sel.match_labels));
    for (i, e) in sel.match_expressions.iter().enumerate() {
        let e_at = at.field("matchExpressions").index(i);
        report.check(&e_at.field("key"), validate_label_key(&e.key));
        match e.operator {
            SelectorOperator::In | SelectorOperator::NotIn => {
                if e.values.is_empty() {
                    report.error(
                        &e_at.field("values"),
                        "values must be non-empty when operator is In or NotIn",
                    );
                }
                for (j, v) in e.values.iter().enumerate() {
                    report.check(&e_at.field("values").index(j), validate_label_value(v));
                }
            }
            SelectorOperator::Exists | SelectorOperator::DoesNotExist => {
                if !e.values.is_empty() {
                    report.error(
                        &e_at.field("values"),
                        "values must be empty when operator is Exists or DoesNotExist",
                    );
                }
            }
        }
    }
}

fn validate_pod_spec(spec: &PodSpec, at: &FieldPath, report: &mut Report) {
    if spec.containers.is_empty() {
        report.error(
            &at.field("containers"),
            "a pod needs at least one container: add spec.template.spec.containers",
        );
    }
    for (field, sa) in [
        ("serviceAccountName", &spec.service_account_name),
        ("serviceAccount", &spec.service_account),
    ] {
        if let Some(sa) = sa
            .as_deref()
            .filter(|s| !s.is_empty() && !is_dns1123_subdomain(s))
        {
            report.error(
                &at.field(field),
                format!(
                    "invalid service account name {sa:?}: lower-case letters, digits, '-' and '.'"
                ),
            );
        }
    }
    let mut names = BTreeSet::new();
    for (field, list) in [
        ("initContainers", &spec.init_containers),
        ("containers", &spec.containers),
    ] {
        for (i, c) in list.iter().enumerate() {
            let c_at = at.field(field).index(i);
            validate_container(c, &c_at, report);
            if !c.name.is_empty() && !names.insert(c.name.as_str()) {
                report.error(
                    &c_at.field("name"),
                    format!(
                        "duplicate container name {:?}: names must be unique in a pod",
                        c.name
                    ),
                );
            }
        }
    }
}

fn validate_container(c: &Container, at: &FieldPath, report: &mut Report) {
    if c.name.is_empty() {
        report.error(&at.field("name"), "container name is required");
    } else if !is_dns1123_label(&c.name) || c.name.bytes().any(|b| b.is_ascii_uppercase()) {
        report.error(
            &at.field("name"),
            format!(
                "invalid container name {:?}: lower-case letters, digits and '-', starting and ending with a letter or digit (at most 63)",
                c.name
            ),
        );
    }
    if c.image.as_deref().is_none_or(|i| i.trim().is_empty()) {
        report.error(&at.field("image"), "image is required");
    }
    let mut port_names = BTreeSet::new();
    for (i, p) in c.ports.iter().enumerate() {
        let p_at = at.field("ports").index(i);
        report.check(
            &p_at.field("containerPort"),
            check_port_number(p.container_port),
        );
        if let Some(name) = p.name.as_deref().filter(|n| !n.is_empty()) {
            if let Err(e) = check_port_name(name) {
                report.error(&p_at.field("name"), e);
            } else if !port_names.insert(name) {
                report.error(
                    &p_at.field("name"),
                    format!(
                        "duplicate port name {name:?}: port names must be unique in a container"
                    ),
                );
            }
        }
    }
    for (i, e) in c.env.iter().enumerate() {
        let e_at = at.field("env").index(i);
        if e.name.is_empty() {
            report.error(&e_at.field("name"), "env name is required");
        } else if !e
            .name
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b) && b != b'=')
        {
            report.error(
                &e_at.field("name"),
                format!(
                    "invalid env name {:?}: printable ASCII characters other than '='",
                    e.name
                ),
            );
        }
        if e.value.as_deref().is_some_and(|v| !v.is_empty()) && e.value_from.is_some() {
            report.error(
                &e_at.field("valueFrom"),
                "valueFrom may not be specified when `value` is not empty",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(spec: serde_json::Value) -> Report {
        let spec: DeploymentSpec = serde_json::from_value(spec).unwrap();
        let mut r = Report::default();
        validate(
            &spec,
            &ObjectMeta::default(),
            &FieldPath::root("spec"),
            &mut r,
        );
        r
    }

    fn deployment(labels: serde_json::Value, container: serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "replicas": 1,
            "selector": {"matchLabels": {"app": "reviews"}},
            "strategy": {"type": "RollingUpdate"},
            "template": {
                "metadata": {"labels": labels, "annotations": {"sidecar.istio.io/inject": "true"}},
                "spec": {"serviceAccountName": "bookinfo-reviews", "volumes": [{"name": "tmp", "emptyDir": {}}],
                         "containers": [container]}
            }
        })
    }

    #[test]
    fn accepts_real_kubernetes_fields() {
        let r = check(deployment(
            serde_json::json!({"app": "reviews", "version": "v1"}),
            serde_json::json!({"name": "reviews", "image": "docker.io/istio/reviews:1.0",
                "imagePullPolicy": "IfNotPresent", "ports": [{"containerPort": 9080, "name": "http"}],
                "env": [{"name": "LOG_DIR", "value": "/tmp/logs"}],
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                "securityContext": {"runAsUser": 1000}, "resources": {"limits": {"cpu": "1"}}}),
        ));
        assert!(r.is_ok(), "{r:?}");
    }

    #[test]
    fn refuses_what_kubernetes_refuses() {
        let r = check(deployment(
            serde_json::json!({"app": "ratings"}),
            serde_json::json!({"name": "Reviews", "ports": [{"containerPort": 70000, "name": "http_web"}]}),
        ));
        let paths: Vec<_> = r.errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "spec.template.metadata.labels",
                "spec.template.spec.containers[0].name",
                "spec.template.spec.containers[0].image",
                "spec.template.spec.containers[0].ports[0].containerPort",
                "spec.template.spec.containers[0].ports[0].name",
            ]
        );
    }

    #[test]
    fn catches_typos_in_read_fields() {
        let typo = serde_json::json!({"template": {"spec": {"containers": [{"name": "a", "imagee": "x"}]}}});
        assert!(serde_json::from_value::<DeploymentSpec>(typo).is_err());
        let typo = serde_json::json!({"template": {"spec": {"serviceAcountName": "x"}}});
        assert!(serde_json::from_value::<DeploymentSpec>(typo).is_err());
    }
}
