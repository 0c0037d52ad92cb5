//! Kubernetes' strategic merge, for the parts of a pod injection touches: objects merge key by
//! key, lists of named things merge by their key (`containers`, `volumes` and `env` by `name`,
//! `ports` by `containerPort`, `volumeMounts` by `mountPath`), other lists are replaced, and a
//! `null` in the overlay removes the key.

use serde_json::{Map, Value};

/// The merge key of a list field, if the list merges (Kubernetes' `patchMergeKey`).
fn merge_key(field: &str) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "sysctls"
        | "hostAliases" => match field {
            "hostAliases" => "ip",
            _ => "name",
        },
        "ports" => "containerPort",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        _ => return None,
    })
}

/// `overlay` merged onto `base` (overlay wins).
pub fn merge(base: &Value, overlay: &Value) -> Value {
    match (base, overlay) {
        (Value::Object(b), Value::Object(o)) => Value::Object(merge_objects(b, o)),
        _ => overlay.clone(),
    }
}

fn merge_objects(base: &Map<String, Value>, overlay: &Map<String, Value>) -> Map<String, Value> {
    let mut out = base.clone();
    for (k, v) in overlay {
        if v.is_null() {
            out.remove(k);
            continue;
        }
        let merged = match (out.get(k), v, merge_key(k)) {
            (Some(Value::Array(b)), Value::Array(o), Some(key)) => {
                Value::Array(merge_lists(b, o, key))
            }
            (Some(b @ Value::Object(_)), Value::Object(_), _) => merge(b, v),
            _ => v.clone(),
        };
        out.insert(k.clone(), merged);
    }
    out
}

/// Items of `overlay` merged into the items of `base` with the same key; new ones appended in
/// the overlay's order.
fn merge_lists(base: &[Value], overlay: &[Value], key: &str) -> Vec<Value> {
    let mut out: Vec<Value> = base.to_vec();
    for item in overlay {
        let id = item.get(key);
        match id.and_then(|id| out.iter().position(|b| b.get(key) == Some(id))) {
            Some(i) => out[i] = merge(&out[i], item),
            None => out.push(item.clone()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn user_fields_win_and_named_lists_merge() {
        let template = json!({
            "name": "istio-proxy", "image": "t", "args": ["a", "b"],
            "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
            "volumeMounts": [{"name": "x", "mountPath": "/x"}],
            "securityContext": {"runAsUser": 1337, "runAsNonRoot": true},
            "resources": {"limits": {"cpu": "2", "memory": "1Gi"}}
        });
        let user = json!({
            "name": "istio-proxy", "args": ["c"],
            "env": [{"name": "B", "value": "3"}, {"name": "C", "value": "4"}],
            "volumeMounts": [{"name": "certs", "mountPath": "/etc/certs"}],
            "securityContext": {"runAsUser": 1234},
            "resources": {"limits": {"cpu": "3"}}
        });
        let m = merge(&template, &user);
        assert_eq!(m["args"], json!(["c"]));
        assert_eq!(
            m["env"],
            json!([{"name": "A", "value": "1"}, {"name": "B", "value": "3"}, {"name": "C", "value": "4"}])
        );
        assert_eq!(m["volumeMounts"].as_array().unwrap().len(), 2);
        assert_eq!(
            m["securityContext"],
            json!({"runAsUser": 1234, "runAsNonRoot": true})
        );
        assert_eq!(
            m["resources"],
            json!({"limits": {"cpu": "3", "memory": "1Gi"}})
        );
        assert_eq!(m["image"], "t");
    }
}
