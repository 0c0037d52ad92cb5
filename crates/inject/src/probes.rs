//! Probe rewriting (Istio's `rewriteAppHTTPProbers`, on by default): the kubelet's HTTP, TCP and
//! gRPC probes and lifecycle hooks of the app containers go to the sidecar's status port
//! (`/app-health/CONTAINER/readyz|livez|startupz`, `/app-lifecycle/CONTAINER/prestopz|poststartz`),
//! and the originals, with named ports resolved, go to the sidecar as `ISTIO_KUBE_APP_PROBERS`
//! (JSON keyed by those paths), which the pod agent serves by probing the app itself. Under
//! mutual TLS STRICT the kubelet could not reach the app through the sidecar otherwise.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

/// The environment variable the probes go to (Istio's).
pub const KUBE_APP_PROBERS: &str = "ISTIO_KUBE_APP_PROBERS";

/// The app probes of a pod, keyed by the path the kubelet now asks.
pub type AppProbers = BTreeMap<String, Value>;

const PROBES: [(&str, &str); 3] = [
    ("readinessProbe", "readyz"),
    ("livenessProbe", "livez"),
    ("startupProbe", "startupz"),
];
const HOOKS: [(&str, &str); 2] = [("preStop", "prestopz"), ("postStart", "poststartz")];

fn named_ports(container: &Value) -> BTreeMap<String, i64> {
    container["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some((
                p["name"].as_str()?.to_string(),
                p["containerPort"].as_i64()?,
            ))
        })
        .collect()
}

/// The port of a probe action, a named port resolved; `None` when a name is not a port of the
/// container (the probe is then left alone, as Istio leaves it).
fn resolve(port: &Value, ports: &BTreeMap<String, i64>) -> Option<Value> {
    match port {
        Value::Number(_) => Some(port.clone()),
        Value::String(s) => match s.parse::<i64>() {
            Ok(n) => Some(json!(n)),
            Err(_) => ports.get(s).map(|n| json!(n)),
        },
        _ => None,
    }
}

/// The prober the agent runs for a probe or hook; `None` for `exec` and unresolvable ports.
fn prober(action: &Value, ports: &BTreeMap<String, i64>) -> Option<Value> {
    let mut out = Map::new();
    for kind in ["httpGet", "tcpSocket", "grpc"] {
        if let Some(a) = action.get(kind).filter(|a| a.is_object()) {
            let mut a = a.clone();
            let port = resolve(&a["port"], ports)?;
            a["port"] = port;
            out.insert(kind.to_string(), a);
            if let Some(t) = action.get("timeoutSeconds").filter(|t| !t.is_null()) {
                out.insert("timeoutSeconds".into(), t.clone());
            }
            return Some(Value::Object(out));
        }
    }
    None
}

/// Is this probe already one the sidecar serves (a pod injected before)?
fn already_rewritten(action: &Value, status_port: u16) -> bool {
    action["httpGet"]["port"].as_i64() == Some(i64::from(status_port))
        && action["httpGet"]["path"]
            .as_str()
            .is_some_and(|p| p.starts_with("/app-health/") || p.starts_with("/app-lifecycle/"))
}

/// The rewritten probe: an HTTP GET of `path` on the status port, keeping the probe's timing
/// (and, for an HTTP probe, its headers; HTTPS becomes HTTP: the agent speaks HTTPS to the app).
fn rewritten(probe: &Value, path: &str, status_port: u16) -> Value {
    let mut p = probe.as_object().cloned().unwrap_or_default();
    let mut get = match p.remove("httpGet") {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    p.remove("tcpSocket");
    p.remove("grpc");
    get.insert("path".into(), json!(path));
    get.insert("port".into(), json!(status_port));
    if get.get("scheme").and_then(Value::as_str) == Some("HTTPS") {
        get.insert("scheme".into(), json!("HTTP"));
    }
    p.insert("httpGet".into(), Value::Object(get));
    Value::Object(p)
}

/// Rewrites the probes and hooks of `containers` (skipping the sidecar and, among init
/// containers, all but native sidecars: `restartPolicy: Always`), returning the probers.
pub fn rewrite(containers: &mut [Value], init: bool, status_port: u16, probers: &mut AppProbers) {
    for c in containers.iter_mut() {
        let Some(name) = c["name"].as_str().map(str::to_string) else {
            continue;
        };
        if name == crate::PROXY_CONTAINER || (init && c["restartPolicy"].as_str() != Some("Always"))
        {
            continue;
        }
        let ports = named_ports(c);
        for (field, suffix) in PROBES {
            let Some(probe) = c.get(field).filter(|p| p.is_object()) else {
                continue;
            };
            if already_rewritten(probe, status_port) {
                continue;
            }
            let path = format!("/app-health/{name}/{suffix}");
            if let Some(p) = prober(probe, &ports) {
                probers.insert(path.clone(), p);
                c[field] = rewritten(probe, &path, status_port);
            }
        }
        for (hook, suffix) in HOOKS {
            let Some(action) = c["lifecycle"].get(hook).filter(|h| h.is_object()) else {
                continue;
            };
            if already_rewritten(action, status_port) {
                continue;
            }
            let path = format!("/app-lifecycle/{name}/{suffix}");
            if let Some(p) = prober(action, &ports) {
                probers.insert(path.clone(), p);
                c["lifecycle"][hook] = rewritten(action, &path, status_port);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_tcp_and_named_ports() {
        let mut cs = vec![json!({
            "name": "hello",
            "ports": [{"name": "http", "containerPort": 80}],
            "livenessProbe": {"tcpSocket": {"port": "http"}, "timeoutSeconds": 2},
            "readinessProbe": {"httpGet": {"port": 3333, "scheme": "HTTPS"}},
            "startupProbe": {"exec": {"command": ["true"]}},
            "lifecycle": {"preStop": {"httpGet": {"port": 91}}}
        })];
        let mut probers = AppProbers::new();
        rewrite(&mut cs, false, 15020, &mut probers);
        assert_eq!(
            cs[0]["livenessProbe"],
            json!({"httpGet": {"path": "/app-health/hello/livez", "port": 15020}, "timeoutSeconds": 2})
        );
        assert_eq!(
            cs[0]["readinessProbe"],
            json!({"httpGet": {"path": "/app-health/hello/readyz", "port": 15020, "scheme": "HTTP"}})
        );
        assert_eq!(
            cs[0]["startupProbe"],
            json!({"exec": {"command": ["true"]}})
        );
        assert_eq!(
            serde_json::to_string(&probers).unwrap(),
            r#"{"/app-health/hello/livez":{"tcpSocket":{"port":80},"timeoutSeconds":2},"/app-health/hello/readyz":{"httpGet":{"port":3333,"scheme":"HTTPS"}},"/app-lifecycle/hello/prestopz":{"httpGet":{"port":91}}}"#
        );
        // A second pass finds nothing to do.
        let mut again = AppProbers::new();
        rewrite(&mut cs, false, 15020, &mut again);
        assert!(again.is_empty());
    }
}
