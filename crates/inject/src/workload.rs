//! `strait kube-inject`: every pod-bearing document of a file gets its sidecar.
//!
//! Pod, Deployment, DaemonSet, StatefulSet, ReplicaSet, ReplicationController, Job, CronJob,
//! OpenShift's DeploymentConfig and `kind: List` (recursively); other documents pass through
//! byte for byte. Injected documents are written back as YAML with sorted keys (as
//! `istioctl kube-inject` writes them), each followed by `---`.
//!
//! One deliberate difference from Istio: for a CronJob, Istio puts the labels and annotations on
//! `spec.jobTemplate.metadata`, where they never reach the pods (so its pods lack
//! `security.istio.io/tlsMode` and clients do not send them mutual TLS); Strait puts them on the
//! pod template, where the sidecar's pod has them.

use serde_json::Value;

use crate::InjectError;
use crate::pod::{Injector, Owner};
use crate::policy::{Skip, inject_required};
use crate::values::Policy;

/// A document kube-inject could not read or inject, with where it is.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: document {document}: {error}")]
pub struct DocumentError {
    pub source_name: String,
    /// 1-based.
    pub document: usize,
    #[source]
    pub error: InjectError,
}

/// The kinds whose pod template is `spec.template`.
const TEMPLATE_KINDS: [&str; 7] = [
    "Deployment",
    "DaemonSet",
    "StatefulSet",
    "ReplicaSet",
    "ReplicationController",
    "Job",
    "DeploymentConfig",
];

/// Splits YAML text into documents at `---` lines.
fn documents(text: &str) -> Vec<String> {
    let mut docs = Vec::new();
    let mut cur = String::new();
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end();
        if bare == "---" || bare.starts_with("--- ") || bare.starts_with("---\t") {
            docs.push(std::mem::take(&mut cur));
            let rest = bare.strip_prefix("---").unwrap_or_default().trim();
            if !rest.is_empty() && !rest.starts_with('#') {
                cur.push_str(rest);
                cur.push('\n');
            }
            continue;
        }
        cur.push_str(line);
    }
    docs.push(cur);
    docs.into_iter()
        .filter(|d| {
            d.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        })
        .collect()
}

/// What kube-inject did with a file: its output and the warnings to print.
#[derive(Debug, Default)]
pub struct Injected {
    pub output: String,
    pub warnings: Vec<String>,
}

impl Injector {
    /// `strait kube-inject -f`: injects every pod-bearing document of `text`. Documents without
    /// a namespace are injected as `default_namespace`'s.
    pub fn kube_inject(
        &self,
        source_name: &str,
        text: &str,
        default_namespace: &str,
    ) -> Result<Injected, DocumentError> {
        let mut out = Injected::default();
        for (i, raw) in documents(text).iter().enumerate() {
            let fail = |error| DocumentError {
                source_name: source_name.to_string(),
                document: i + 1,
                error,
            };
            let mut doc: Value = serde_yaml_ng::from_str(raw)
                .map_err(|e| fail(InjectError::BadInput(format!("not YAML: {e}"))))?;
            if self
                .inject_object(&mut doc, default_namespace, &mut out.warnings)
                .map_err(fail)?
            {
                let yaml = serde_yaml_ng::to_string(&doc)
                    .map_err(|e| fail(InjectError::BadInput(format!("cannot write YAML: {e}"))))?;
                out.output.push_str(&yaml);
            } else {
                out.output.push_str(raw);
                if !raw.ends_with('\n') {
                    out.output.push('\n');
                }
            }
            out.output.push_str("---\n");
        }
        Ok(out)
    }

    /// Injects one object in place; `false` when it is not a kind that holds pods (then it is
    /// left untouched).
    pub fn inject_object(
        &self,
        doc: &mut Value,
        default_namespace: &str,
        warnings: &mut Vec<String>,
    ) -> Result<bool, InjectError> {
        let kind = doc["kind"].as_str().unwrap_or_default().to_string();
        let api_version = doc["apiVersion"].as_str().unwrap_or_default().to_string();
        let name = doc["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let namespace = doc["metadata"]["namespace"]
            .as_str()
            .filter(|n| !n.is_empty())
            .unwrap_or(default_namespace)
            .to_string();
        let (meta_ptr, spec_ptr) = match kind.as_str() {
            "List" => {
                let mut any = false;
                if let Some(items) = doc["items"].as_array_mut() {
                    for item in items {
                        any |= self.inject_object(item, default_namespace, warnings)?;
                    }
                }
                return Ok(any);
            }
            "Pod" => ("/metadata", "/spec"),
            "CronJob" => (
                "/spec/jobTemplate/spec/template/metadata",
                "/spec/jobTemplate/spec/template/spec",
            ),
            k if TEMPLATE_KINDS.contains(&k) => ("/spec/template/metadata", "/spec/template/spec"),
            _ => return Ok(false),
        };
        let Some(spec) = doc.pointer(spec_ptr).cloned() else {
            return Err(InjectError::BadInput(format!(
                "{kind} {name:?} has no pod template at {spec_ptr}"
            )));
        };
        let meta = doc.pointer(meta_ptr).cloned().unwrap_or(Value::Null);
        let pod_namespace = meta["namespace"]
            .as_str()
            .filter(|n| !n.is_empty())
            .unwrap_or(&namespace)
            .to_string();
        let full = if doc["metadata"]["namespace"]
            .as_str()
            .is_some_and(|n| !n.is_empty())
        {
            format!("{namespace}/{name}")
        } else {
            name.clone()
        };
        match inject_required(&Policy::Enabled, &[], &[], &pod_namespace, &meta, &spec) {
            Ok(()) => {}
            Err(Skip::HostNetwork) => {
                warnings.push(format!(
                    "===> Skipping injection because {kind} {full:?} has host networking enabled"
                ));
                return Ok(true);
            }
            Err(_) => {
                warnings.push(format!(
                    "===> Skipping injection because {kind} {full:?} has sidecar injection disabled"
                ));
                return Ok(true);
            }
        }
        let owner = if kind == "Pod" {
            crate::policy::owner_of_pod(doc, &namespace)
        } else {
            Owner {
                name: name.clone(),
                namespace: namespace.clone(),
                kind: kind.clone(),
                api_version,
            }
        };
        let mut pod = serde_json::json!({"metadata": meta, "spec": spec});
        if pod["metadata"].is_null() {
            pod["metadata"] = serde_json::json!({});
        }
        self.inject(&mut pod, &owner)?;
        let Value::Object(mut parts) = pod else {
            unreachable!("inject keeps an object")
        };
        set_pointer(doc, meta_ptr, parts.remove("metadata").unwrap_or_default());
        set_pointer(doc, spec_ptr, parts.remove("spec").unwrap_or_default());
        Ok(true)
    }
}

/// Sets the value at a JSON pointer, creating objects on the way.
fn set_pointer(doc: &mut Value, pointer: &str, value: Value) {
    let mut target = doc;
    let tokens: Vec<&str> = pointer.trim_start_matches('/').split('/').collect();
    let (last, parents) = tokens.split_last().expect("non-empty pointer");
    for t in parents {
        if !target[*t].is_object() {
            target[*t] = serde_json::json!({});
        }
        target = &mut target[*t];
    }
    target[*last] = value;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::values::Values;

    #[test]
    fn documents_split_at_separators() {
        let d = documents("a: 1\n---\nb: 2\n--- \n# only a comment\n---\nc: 3\n");
        assert_eq!(d, vec!["a: 1\n", "b: 2\n", "c: 3\n"]);
    }

    #[test]
    fn other_kinds_pass_through_byte_for_byte() {
        let inj = Injector::new(Values::default());
        let text = "apiVersion: v1\nkind: Service\nmetadata:\n  name: x   # kept\nspec:\n  ports: [{port: 80}]\n";
        let out = inj.kube_inject("in.yaml", text, "default").unwrap();
        assert_eq!(out.output, format!("{text}---\n"));
    }

    #[test]
    fn a_deployment_gets_its_sidecar_and_a_bad_annotation_is_named() {
        let inj = Injector::new(Values::default());
        let text = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers: [{name: web, image: nginx}]\n";
        let out = inj.kube_inject("in.yaml", text, "default").unwrap();
        let doc: Value = serde_yaml_ng::from_str(out.output.trim_end_matches("---\n")).unwrap();
        let spec = &doc["spec"]["template"]["spec"];
        assert_eq!(spec["initContainers"][0]["name"], "istio-init");
        assert_eq!(spec["initContainers"][1]["name"], "istio-proxy");
        assert_eq!(
            doc["spec"]["template"]["metadata"]["labels"]["security.istio.io/tlsMode"],
            "istio"
        );
        let bad = text.replace(
            "metadata: {labels: {app: web}}",
            "metadata: {labels: {app: web}, annotations: {traffic.sidecar.istio.io/excludeOutboundPorts: bad}}",
        );
        let e = inj
            .kube_inject("in.yaml", &bad, "default")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("traffic.sidecar.istio.io/excludeOutboundPorts"),
            "{e}"
        );
        assert!(e.starts_with("in.yaml: document 1"), "{e}");
    }
}
