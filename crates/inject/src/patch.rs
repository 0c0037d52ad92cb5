//! RFC 6902 JSON patches: the difference between two JSON values (what the webhook answers),
//! and applying a patch (what the API server does with it; tests use it to check that a patch
//! yields the pod `kube-inject` makes).

use serde_json::{Map, Value, json};

/// `~` and `/` escaped for a JSON pointer token.
fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

/// The operations that turn `from` into `to`: objects key by key, arrays element by element
/// when their lengths agree (else replaced whole), other values replaced.
pub fn diff(from: &Value, to: &Value) -> Vec<Value> {
    let mut ops = Vec::new();
    diff_at("", from, to, &mut ops);
    ops
}

fn diff_at(path: &str, from: &Value, to: &Value, ops: &mut Vec<Value>) {
    if from == to {
        return;
    }
    match (from, to) {
        (Value::Object(f), Value::Object(t)) => {
            for (k, fv) in f {
                let p = format!("{path}/{}", escape(k));
                match t.get(k) {
                    Some(tv) => diff_at(&p, fv, tv, ops),
                    None => ops.push(json!({"op": "remove", "path": p})),
                }
            }
            for (k, tv) in t {
                if !f.contains_key(k) {
                    ops.push(
                        json!({"op": "add", "path": format!("{path}/{}", escape(k)), "value": tv}),
                    );
                }
            }
        }
        (Value::Array(f), Value::Array(t)) if f.len() == t.len() => {
            for (i, (fv, tv)) in f.iter().zip(t).enumerate() {
                diff_at(&format!("{path}/{i}"), fv, tv, ops);
            }
        }
        _ => ops.push(json!({"op": "replace", "path": path, "value": to})),
    }
}

/// Why a patch does not apply.
#[derive(Debug, thiserror::Error)]
#[error("JSON patch operation {index} ({op} {path}): {reason}")]
pub struct PatchError {
    pub index: usize,
    pub op: String,
    pub path: String,
    pub reason: &'static str,
}

/// Applies `add`, `remove` and `replace` operations (what [`diff`] makes) to `doc`.
pub fn apply(doc: &mut Value, ops: &[Value]) -> Result<(), PatchError> {
    for (index, op) in ops.iter().enumerate() {
        let kind = op["op"].as_str().unwrap_or_default();
        let path = op["path"].as_str().unwrap_or_default();
        let err = |reason| PatchError {
            index,
            op: kind.to_string(),
            path: path.to_string(),
            reason,
        };
        if path.is_empty() {
            match kind {
                "replace" | "add" => *doc = op["value"].clone(),
                _ => return Err(err("cannot remove the whole document")),
            }
            continue;
        }
        let tokens: Vec<String> = path
            .strip_prefix('/')
            .ok_or_else(|| err("a path starts with /"))?
            .split('/')
            .map(unescape)
            .collect();
        let (last, parents) = tokens.split_last().expect("non-empty path");
        let mut target = &mut *doc;
        for t in parents {
            target = match target {
                Value::Object(m) => m.get_mut(t).ok_or_else(|| err("no such member"))?,
                Value::Array(a) => {
                    let i: usize = t.parse().map_err(|_| err("not an array index"))?;
                    a.get_mut(i).ok_or_else(|| err("index out of range"))?
                }
                _ => return Err(err("the path goes through a value that is not a container")),
            };
        }
        match (target, kind) {
            (Value::Object(m), "add" | "replace") => {
                if kind == "replace" && !m.contains_key(last) {
                    return Err(err("replace of a member that does not exist"));
                }
                m.insert(last.clone(), op["value"].clone());
            }
            (Value::Object(m), "remove") => {
                m.remove(last).ok_or_else(|| err("no such member"))?;
            }
            (Value::Array(a), _) => {
                let i = if last == "-" {
                    a.len()
                } else {
                    last.parse().map_err(|_| err("not an array index"))?
                };
                match kind {
                    "add" if i <= a.len() => a.insert(i, op["value"].clone()),
                    "replace" if i < a.len() => a[i] = op["value"].clone(),
                    "remove" if i < a.len() => {
                        a.remove(i);
                    }
                    _ => return Err(err("index out of range or unknown op")),
                }
            }
            _ => return Err(err("unsupported operation or target")),
        }
    }
    Ok(())
}

/// An empty object, for building values.
pub fn object() -> Value {
    Value::Object(Map::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_diff_applies_back() {
        let from = json!({"metadata": {"name": "p", "labels": {"a": "1", "gone": "x"}},
                          "spec": {"containers": [{"name": "c"}]}});
        let to = json!({"metadata": {"name": "p", "labels": {"a": "2"},
                                     "annotations": {"sidecar.istio.io/status": "{}"}},
                        "spec": {"containers": [{"name": "c"}, {"name": "istio-proxy"}]}});
        let ops = diff(&from, &to);
        assert!(
            ops.iter()
                .any(|o| o["path"] == "/metadata/annotations" && o["op"] == "add"),
            "{ops:?}"
        );
        let mut doc = from.clone();
        apply(&mut doc, &ops).unwrap();
        assert_eq!(doc, to);
        let esc = diff(&json!({"a": {"x/y": 1}}), &json!({"a": {"x/y": 2}}));
        assert_eq!(esc[0]["path"], "/a/x~1y");
        let mut d = json!({"a": {"x/y": 1}});
        apply(&mut d, &esc).unwrap();
        assert_eq!(d, json!({"a": {"x/y": 2}}));
    }
}
