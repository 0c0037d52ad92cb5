//! The documents analyzed: any Kubernetes-shaped object, kept as it was written.
//!
//! Strait stores only the kinds `strait_api::Kind` lists; Istio's analyzers also read Pods,
//! ConfigMaps, Secrets, webhook configurations and others. Those are read here from the raw
//! documents, for analysis only: nothing of them is typed or stored.

use std::collections::BTreeMap;

use serde_json::Value;

/// Where a document came from: a file (or `-`, or `live:<plural>`) and its index in it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Source {
    pub file: String,
    pub index: usize,
}

/// One object: its type, identity and the document as written.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    /// API group, empty for Kubernetes' core group.
    pub group: String,
    pub version: String,
    pub kind: String,
    /// Empty for cluster-scoped kinds, and for namespaced objects that name none when the
    /// default namespace is empty (Istio's test harness does that).
    pub namespace: String,
    pub name: String,
    pub raw: Value,
    pub source: Option<Source>,
}

/// Kinds that have no namespace.
const CLUSTER_SCOPED: &[&str] = &[
    "Namespace",
    "Node",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleBinding",
    "PersistentVolume",
    "StorageClass",
    "GatewayClass",
    "IngressClass",
];

/// Namespaces whose resources Istio's analysis leaves out.
pub const SYSTEM_NAMESPACES: &[&str] = &[
    "kube-system",
    "kube-public",
    "kube-node-lease",
    "local-path-storage",
];

impl Object {
    /// An object from a parsed document; `None` when it has no `kind` or `apiVersion`.
    /// Namespaced objects without a namespace get `default_namespace`.
    pub fn from_value(
        raw: Value,
        source: Option<Source>,
        default_namespace: &str,
    ) -> Option<Object> {
        let api_version = raw.get("apiVersion")?.as_str()?.to_string();
        let kind = raw.get("kind")?.as_str()?.to_string();
        let (group, version) = match api_version.rsplit_once('/') {
            Some((g, v)) => (g.to_string(), v.to_string()),
            None => (String::new(), api_version.clone()),
        };
        let meta = &raw["metadata"];
        let name = meta["name"].as_str().unwrap_or_default().to_string();
        let namespace = if CLUSTER_SCOPED.contains(&kind.as_str()) {
            String::new()
        } else {
            meta["namespace"]
                .as_str()
                .filter(|n| !n.is_empty())
                .unwrap_or(default_namespace)
                .to_string()
        };
        Some(Object {
            group,
            version,
            kind,
            namespace,
            name,
            raw,
            source,
        })
    }

    /// Istio's `Origin.FriendlyName()`: `Kind namespace/name`, or `Kind name` without namespace.
    pub fn friendly_name(&self) -> String {
        if self.namespace.is_empty() {
            format!("{} {}", self.kind, self.name)
        } else {
            format!("{} {}/{}", self.kind, self.namespace, self.name)
        }
    }

    /// `namespace/name` (or `name`), as Istio's `FullName.String()`.
    pub fn full_name(&self) -> String {
        if self.namespace.is_empty() {
            self.name.clone()
        } else {
            format!("{}/{}", self.namespace, self.name)
        }
    }

    pub fn is(&self, group: &str, kind: &str) -> bool {
        self.kind == kind && self.group == group
    }

    pub fn spec(&self) -> &Value {
        &self.raw["spec"]
    }

    pub fn labels(&self) -> Labels {
        string_map(&self.raw["metadata"]["labels"])
    }

    pub fn annotations(&self) -> Labels {
        string_map(&self.raw["metadata"]["annotations"])
    }

    pub fn label(&self, key: &str) -> Option<&str> {
        self.raw["metadata"]["labels"][key].as_str()
    }

    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.raw["metadata"]["annotations"][key].as_str()
    }
}

/// Labels, annotations, selectors: string to string, sorted.
pub type Labels = BTreeMap<String, String>;

/// A JSON object of strings as a map; non-string values are written as JSON.
pub fn string_map(v: &Value) -> Labels {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let s = match v {
                        Value::String(s) => s.clone(),
                        Value::Null => String::new(),
                        other => other.to_string(),
                    };
                    (k.clone(), s)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The items of a JSON array, or none.
pub fn items(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or_default()
}

/// The strings of a JSON array.
pub fn strings(v: &Value) -> Vec<String> {
    items(v)
        .iter()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect()
}

/// A string field, empty when absent.
pub fn text(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

/// A number field written as a number or a numeric string.
pub fn number(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Reads every document of a YAML or JSON text: empty documents are skipped and `kind: List`
/// documents are expanded into their items. A document that is not valid YAML ends the input
/// (the YAML stream cannot be resumed) and is returned as the error, with what came before.
pub fn parse_documents(text: &str) -> (Vec<Value>, Option<String>) {
    let mut out = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        match <Value as serde::Deserialize>::deserialize(doc) {
            Ok(Value::Null) => {}
            Ok(Value::Object(obj))
                if obj.get("kind").and_then(Value::as_str) == Some("List")
                    && obj.get("items").is_some_and(Value::is_array) =>
            {
                out.extend(items(&obj["items"]).iter().cloned());
            }
            Ok(v) => out.push(v),
            Err(e) => return (out, Some(e.to_string())),
        }
    }
    (out, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_objects_like_istio() {
        let o = Object::from_value(
            json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "r"}}),
            None,
            "",
        )
        .unwrap();
        assert_eq!(o.friendly_name(), "VirtualService r");
        assert_eq!(o.group, "networking.istio.io");
        let o = Object::from_value(
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "staging"}}),
            None,
            "default",
        )
        .unwrap();
        assert_eq!(o.friendly_name(), "Namespace staging");
        let o = Object::from_value(
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a"}}),
            None,
            "default",
        )
        .unwrap();
        assert_eq!(o.friendly_name(), "Service default/a");
    }

    #[test]
    fn expands_lists_and_stops_at_bad_yaml() {
        let (docs, err) = parse_documents(
            "kind: List\napiVersion: v1\nitems: [{kind: A}, {kind: B}]\n---\n---\nkind: C\n",
        );
        assert_eq!(docs.len(), 3);
        assert!(err.is_none());
        let (docs, err) = parse_documents("kind: A\n---\nkind: [oops\n");
        assert_eq!(docs.len(), 1);
        assert!(err.is_some());
    }
}
