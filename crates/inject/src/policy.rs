//! Whether a pod gets a sidecar (Istio's `injectRequired`), and which workload owns it.
//!
//! Namespaces are selected outside this function, by the MutatingWebhookConfiguration's
//! `namespaceSelector` (`istio-injection=enabled`, or `istio.io/rev`) and `objectSelector`, as in
//! Istio. Here: host-network pods never; Kubernetes' system namespaces never; the pod's label
//! `sidecar.istio.io/inject` (or, without the label, the annotation of that name) decides when it
//! says `true` or `false`; otherwise the `neverInjectSelector`s, then the
//! `alwaysInjectSelector`s, then the policy.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::annotations::INJECT;
use crate::pod::Owner;
use crate::values::Policy;

/// Namespaces never injected (Istio's `IgnoredNamespaces`).
pub const IGNORED_NAMESPACES: [&str; 4] = [
    "kube-system",
    "kube-public",
    "kube-node-lease",
    "local-path-storage",
];

/// Why a pod is not injected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    HostNetwork,
    IgnoredNamespace(String),
    /// `sidecar.istio.io/inject: "false"`, a never-inject selector, or the policy.
    Disabled,
}

/// Does a Kubernetes LabelSelector select these labels? An empty selector selects nothing
/// here (Istio skips empty selectors); a malformed one is logged and selects nothing.
pub fn selects(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    let mut any = false;
    if let Some(m) = selector["matchLabels"].as_object() {
        for (k, v) in m {
            any = true;
            if labels.get(k).map(String::as_str) != v.as_str() {
                return false;
            }
        }
    }
    for e in selector["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
    {
        any = true;
        let Some(key) = e["key"].as_str() else {
            tracing::warn!(
                ?selector,
                "selector expression without a key; it selects nothing"
            );
            return false;
        };
        let values: Vec<&str> = e["values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let have = labels.get(key).map(String::as_str);
        let ok = match e["operator"].as_str() {
            Some("In") => have.is_some_and(|h| values.contains(&h)),
            Some("NotIn") => !have.is_some_and(|h| values.contains(&h)),
            Some("Exists") => have.is_some(),
            Some("DoesNotExist") => have.is_none(),
            other => {
                tracing::warn!(operator = ?other, "unknown selector operator; it selects nothing");
                false
            }
        };
        if !ok {
            return false;
        }
    }
    any
}

/// Istio's injection decision for a pod in `namespace`.
pub fn inject_required(
    policy: &Policy,
    never: &[Value],
    always: &[Value],
    namespace: &str,
    metadata: &Value,
    spec: &Value,
) -> Result<(), Skip> {
    if spec["hostNetwork"].as_bool() == Some(true) {
        return Err(Skip::HostNetwork);
    }
    if IGNORED_NAMESPACES.contains(&namespace) {
        return Err(Skip::IgnoredNamespace(namespace.to_string()));
    }
    let labels: BTreeMap<String, String> = metadata["labels"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
        .collect();
    let said = match labels.get(INJECT) {
        Some(v) => Some(v.as_str()),
        None => metadata["annotations"][INJECT].as_str(),
    };
    let explicit = match said {
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some("") | None => None,
        Some(other) => {
            tracing::warn!(
                value = other,
                "{INJECT} is neither \"true\" nor \"false\"; the injection policy decides"
            );
            None
        }
    };
    let decided = explicit
        .or_else(|| never.iter().any(|s| selects(s, &labels)).then_some(false))
        .or_else(|| always.iter().any(|s| selects(s, &labels)).then_some(true));
    let inject = match policy {
        Policy::Enabled => decided.unwrap_or(true),
        Policy::Disabled => decided.unwrap_or(false),
        Policy::Other(p) => {
            tracing::error!(policy = %p, "injection policy is neither enabled nor disabled: nothing is injected");
            false
        }
    };
    if inject { Ok(()) } else { Err(Skip::Disabled) }
}

/// The workload that owns a pod, as Istio derives it from a generated name and the controller
/// reference: a ReplicaSet named `NAME-HASH` (with the pod's `pod-template-hash`) is the
/// Deployment NAME, a Job named `NAME-DIGITS` (8-11 digits) the CronJob NAME; otherwise the
/// controller itself, or the pod.
pub fn owner_of_pod(pod: &Value, namespace: &str) -> Owner {
    let meta = &pod["metadata"];
    let mut owner = Owner {
        name: meta["name"].as_str().unwrap_or_default().to_string(),
        namespace: namespace.to_string(),
        kind: "Pod".into(),
        api_version: "v1".into(),
    };
    if meta["generateName"].as_str().is_none_or(str::is_empty) {
        return owner;
    }
    let Some(controller) = meta["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["controller"].as_bool() == Some(true))
    else {
        return owner;
    };
    let name = controller["name"].as_str().unwrap_or_default();
    owner.name = name.to_string();
    owner.kind = controller["kind"].as_str().unwrap_or_default().to_string();
    owner.api_version = controller["apiVersion"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let hash = meta["labels"]["pod-template-hash"].as_str().unwrap_or("");
    if owner.kind == "ReplicaSet" && !hash.is_empty() && name.ends_with(hash) {
        owner.name = name
            .strip_suffix(hash)
            .map(|n| n.trim_end_matches('-'))
            .unwrap_or(name)
            .to_string();
        owner.kind = "Deployment".into();
    } else if owner.kind == "ReplicationController"
        && let Some(dc) = meta["labels"]["deploymentconfig"].as_str()
    {
        owner.name = dc.to_string();
        owner.kind = "DeploymentConfig".into();
    } else if owner.kind == "Job"
        && let Some((base, digits)) = name.rsplit_once('-')
        && (8..=11).contains(&digits.len())
        && digits.chars().all(|c| c.is_ascii_digit())
    {
        owner.name = base.to_string();
        owner.kind = "CronJob".into();
        owner.api_version = "batch/v1".into();
    }
    owner
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_replicaset_pod_belongs_to_its_deployment() {
        let pod = json!({"metadata": {"generateName": "hello-fake-", "labels": {"pod-template-hash": "fake"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "hello-fake", "controller": true}]}});
        let o = owner_of_pod(&pod, "default");
        assert_eq!((o.name.as_str(), o.kind.as_str()), ("hello", "Deployment"));
        let job = json!({"metadata": {"generateName": "x-", "ownerReferences": [
            {"apiVersion": "batch/v1", "kind": "Job", "name": "backup-28471220", "controller": true}]}});
        let o = owner_of_pod(&job, "default");
        assert_eq!((o.name.as_str(), o.kind.as_str()), ("backup", "CronJob"));
    }

    #[test]
    fn selectors() {
        let labels: BTreeMap<String, String> = [("foo".to_string(), "bar".to_string())].into();
        assert!(selects(&json!({"matchLabels": {"foo": "bar"}}), &labels));
        assert!(!selects(&json!({"matchLabels": {"foo": "baz"}}), &labels));
        assert!(selects(
            &json!({"matchExpressions": [{"key": "foo", "operator": "Exists"}]}),
            &labels
        ));
        assert!(!selects(&json!({}), &labels));
    }
}
