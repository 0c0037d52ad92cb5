//! Shared by the agreement and webhook tests: Istio's injection test data and a structural view
//! of an injected pod.

#![allow(dead_code)]

use std::path::PathBuf;

use serde_json::{Map, Value};

/// Istio's test data: `STRAIT_TESTDATA`, else `../shared/testdata` beside the workspace.
pub fn testdata() -> PathBuf {
    let dir = std::env::var_os("STRAIT_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata")
        });
    let inject = dir.join("istio-inject");
    assert!(
        inject.join("cases.jsonl").is_file(),
        "Istio's injection test data is missing at {}: put the shared/ folder beside the repository or set STRAIT_TESTDATA",
        inject.display()
    );
    inject
}

pub fn read(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

pub fn jsonl(name: &str) -> Vec<Value> {
    read(&testdata().join(name))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The cases with Istio's default settings (no flags, values overlay, mesh overlay or feature
/// flag): the ones whose golden a mesh with its own defaults can be held to.
pub fn default_cases() -> Vec<Value> {
    jsonl("cases.jsonl")
        .into_iter()
        .filter(|c| {
            ["set_flags", "iop_file", "mesh_overlay", "env"]
                .iter()
                .all(|k| c.get(*k).is_none())
        })
        .collect()
}

/// Does the case's fake cluster run native sidecars (every kubelet 1.33 or newer)?
pub fn cluster_native(case: &Value) -> bool {
    case["kubelet_versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .all(|v| {
            let mut parts = v.trim_start_matches('v').split('.');
            let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
            let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
            (major, minor) >= (1, 33)
        })
}

/// YAML documents as JSON (empty ones dropped).
pub fn yaml_docs(text: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// Where the pod templates of a document are (JSON pointers to `metadata` and `spec`), as
/// Strait reads them.
pub fn pod_pointers(doc: &Value) -> Vec<(String, String)> {
    match doc["kind"].as_str().unwrap_or_default() {
        "List" => doc["items"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
            .flat_map(|(i, item)| {
                pod_pointers(item)
                    .into_iter()
                    .map(move |(m, s)| (format!("/items/{i}{m}"), format!("/items/{i}{s}")))
            })
            .collect(),
        "Pod" => vec![("/metadata".into(), "/spec".into())],
        "CronJob" => vec![(
            "/spec/jobTemplate/spec/template/metadata".into(),
            "/spec/jobTemplate/spec/template/spec".into(),
        )],
        "Deployment"
        | "DaemonSet"
        | "StatefulSet"
        | "ReplicaSet"
        | "ReplicationController"
        | "Job"
        | "DeploymentConfig" => {
            vec![(
                "/spec/template/metadata".into(),
                "/spec/template/spec".into(),
            )]
        }
        _ => vec![],
    }
}

/// Go's re-serialisation noise removed: `resources: {}`, `strategy: {}`, `status: {}`,
/// `creationTimestamp: null`, `metadata: {}`.
pub fn normalize(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, val) in m {
                let empty = val.as_object().is_some_and(Map::is_empty);
                if (empty && matches!(k.as_str(), "resources" | "strategy" | "status" | "metadata"))
                    || (k == "creationTimestamp" && val.is_null())
                {
                    continue;
                }
                out.insert(k.clone(), normalize(val));
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(normalize).collect()),
        _ => v.clone(),
    }
}

/// The names the `sidecar.istio.io/status` annotation lists for a field.
pub fn status_names(meta: &Value, field: &str) -> Vec<String> {
    let status: Value = meta["annotations"]["sidecar.istio.io/status"]
        .as_str()
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or(Value::Null);
    status[field]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect()
}

pub fn container_names(spec: &Value, field: &str) -> Vec<String> {
    spec[field]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect()
}

pub fn find<'a>(spec: &'a Value, name: &str) -> Option<&'a Value> {
    ["initContainers", "containers"]
        .iter()
        .flat_map(|f| spec[*f].as_array().into_iter().flatten())
        .find(|c| c["name"] == name)
}

pub fn env<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)?["value"]
        .as_str()
}

/// A Kubernetes quantity as a number (for comparing `1000m` with `1`).
pub fn quantity(q: &Value) -> Option<f64> {
    let s = match q {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+'))
        .unwrap_or(s.len());
    let (n, suffix) = s.split_at(split);
    let n: f64 = n.parse().ok()?;
    let mult = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    Some(n * mult)
}

/// Resources compared by value.
pub fn resources_equal(a: &Value, b: &Value) -> bool {
    let norm = |r: &Value| -> Vec<(String, String, Option<u64>)> {
        let mut out = Vec::new();
        for part in ["requests", "limits"] {
            for (k, v) in r[part].as_object().into_iter().flatten() {
                out.push((
                    part.to_string(),
                    k.clone(),
                    quantity(v).map(|x| (x * 1000.0).round() as u64),
                ));
            }
        }
        out.sort();
        out
    };
    norm(a) == norm(b)
}

/// Is every part of `small` in `big` (objects: each key; arrays: each element somewhere)?
pub fn contains(big: &Value, small: &Value) -> bool {
    match (big, small) {
        (Value::Object(b), Value::Object(s)) => s
            .iter()
            .all(|(k, v)| b.get(k).is_some_and(|bv| contains(bv, v))),
        (Value::Array(b), Value::Array(s)) => {
            s.iter().all(|sv| b.iter().any(|bv| contains(bv, sv)))
        }
        _ => big == small,
    }
}

/// Go's zero values dropped (`0`, `false`, `""`, `{}`, `[]`, `null`), recursively: kube-inject
/// re-serialises through Go types, which adds `status: {replicas: 0}`, `updateStrategy: {}`
/// and `test: false`, and drops `paused: false` or `minReadySeconds: 0` the user wrote.
pub fn drop_go_zero(v: &Value) -> Value {
    fn zero(v: &Value) -> bool {
        match v {
            Value::Null => true,
            Value::Bool(b) => !b,
            Value::Number(n) => n.as_f64() == Some(0.0),
            Value::String(s) => s.is_empty(),
            Value::Array(a) => a.is_empty(),
            Value::Object(m) => m.is_empty(),
        }
    }
    match v {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, val) in m {
                let val = drop_go_zero(val);
                if !zero(&val) {
                    out.insert(k.clone(), val);
                }
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(drop_go_zero).collect()),
        _ => v.clone(),
    }
}

/// Resource quantities under every `resources` written canonically (Go writes the user's
/// `3000m` as `"3"`): the value in thousandths, as a string.
pub fn canonical_quantities(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, val) in m {
                let val = if k == "resources" {
                    let mut r = val.clone();
                    for part in ["requests", "limits"] {
                        if let Some(obj) = r.get_mut(part).and_then(Value::as_object_mut) {
                            for q in obj.values_mut() {
                                if let Some(x) = quantity(q) {
                                    *q = Value::String(format!("{}", (x * 1000.0).round() as u64));
                                }
                            }
                        }
                    }
                    r
                } else {
                    canonical_quantities(val)
                };
                out.insert(k.clone(), val);
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(canonical_quantities).collect()),
        _ => v.clone(),
    }
}

/// The paths where two values differ (for failure messages).
pub fn diff_paths(a: &Value, b: &Value, path: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for k in x.keys().chain(y.keys().filter(|k| !x.contains_key(*k))) {
                let null = Value::Null;
                diff_paths(
                    x.get(k).unwrap_or(&null),
                    y.get(k).unwrap_or(&null),
                    &format!("{path}/{k}"),
                    out,
                );
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                diff_paths(p, q, &format!("{path}/{i}"), out);
            }
        }
        _ if a != b => out.push(format!("{path}: {a} vs {b}")),
        _ => {}
    }
}
