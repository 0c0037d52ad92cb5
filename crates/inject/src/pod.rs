//! Injecting one pod: the init container that installs the capture rules, the sidecar, its
//! volumes, Istio's labels and annotations, probe rewriting and container order.
//!
//! The pod is JSON (`metadata` and `spec`), so every field Strait does not read passes through
//! as written. What is added follows Istio's injection template where Istio's behaviour is
//! visible to the user (capture arguments, labels, annotations, probes, ordering, native
//! sidecars, user overrides of `istio-proxy` and `istio-init`); the sidecar container itself runs
//! Strait (`strait pod-agent`, which starts strait-proxy or Envoy with `strait agent`), not
//! Istio's pilot-agent.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use crate::annotations::{self as a, InterceptionMode, Settings};
use crate::merge::merge;
use crate::probes::{self, AppProbers};
use crate::values::{ProxyKind, Values};
use crate::{INIT_CONTAINER, InjectError, PROXY_CONTAINER};

/// Who owns the pod: the workload name and kind Istio derives (`DeploymentMeta`, `TypeMeta`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub name: String,
    pub namespace: String,
    pub kind: String,
    pub api_version: String,
}

/// Which template: Istio's `inject.istio.io/templates`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Template {
    Sidecar,
    Gateway,
}

fn templates(annotations: &BTreeMap<String, String>) -> Result<Template, InjectError> {
    let Some(list) = annotations.get(a::TEMPLATES) else {
        return Ok(Template::Sidecar);
    };
    let mut out = Template::Sidecar;
    for name in list.split(',').map(str::trim) {
        match name {
            "sidecar" | "" => {}
            "gateway" => out = Template::Gateway,
            "grpc-agent" | "grpc-simple" => {
                return Err(InjectError::UnsupportedTemplate {
                    template: name.to_string(),
                    reason: "it is Istio's proxyless gRPC template, and Strait serves no proxyless gRPC clients: remove the annotation to get a sidecar".into(),
                });
            }
            other => {
                return Err(InjectError::UnsupportedTemplate {
                    template: other.to_string(),
                    reason: "Strait has the templates sidecar and gateway".into(),
                });
            }
        }
    }
    Ok(out)
}

/// The string map at `v` (labels or annotations); a non-string value is an error.
pub fn string_map(v: &Value, field: &str) -> Result<BTreeMap<String, String>, InjectError> {
    match v {
        Value::Null => Ok(BTreeMap::new()),
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                other => Err(InjectError::BadInput(format!(
                    "metadata.{field}.{k} is {other}, not a string: quote it"
                ))),
            })
            .collect(),
        _ => Err(InjectError::BadInput(format!(
            "metadata.{field} is not a map of strings"
        ))),
    }
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect()
}

/// A list of strings (as the status annotation writes names).
fn strings(list: &Value) -> Vec<String> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c.as_str().map(str::to_string))
        .collect()
}

fn take_named(list: &mut Vec<Value>, name: &str) -> Option<Value> {
    let i = list.iter().position(|c| c["name"] == name)?;
    Some(list.remove(i))
}

fn env_field(name: &str, path: &str) -> Value {
    json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}})
}

fn env(name: &str, value: impl Into<String>) -> Value {
    json!({"name": name, "value": value.into()})
}

/// Istio's canonical service name: the first of the labels `service.istio.io/canonical-name`,
/// `app.kubernetes.io/name`, `app`, else the workload's name; at most 63 characters, no
/// trailing `-`.
pub fn canonical_name(labels: &BTreeMap<String, String>, workload: &str) -> String {
    let name = [a::CANONICAL_NAME_LABEL, "app.kubernetes.io/name", "app"]
        .iter()
        .find_map(|k| labels.get(*k).filter(|v| !v.is_empty()))
        .map(String::as_str)
        .unwrap_or(workload);
    let truncated: String = name.chars().take(63).collect();
    truncated.trim_end_matches('-').to_string()
}

/// Istio's canonical revision: `service.istio.io/canonical-revision`,
/// `app.kubernetes.io/version`, `version`, else `latest`.
pub fn canonical_revision(labels: &BTreeMap<String, String>) -> String {
    [
        a::CANONICAL_REVISION_LABEL,
        "app.kubernetes.io/version",
        "version",
    ]
    .iter()
    .find_map(|k| labels.get(*k).filter(|v| !v.is_empty()))
    .cloned()
    .unwrap_or_else(|| "latest".to_string())
}

/// Prometheus' label-name sanitising (`prometheus.io/scrape` = `prometheus.io.scrape` =
/// `prometheus_io_scrape`).
fn sanitize(key: &str) -> String {
    key.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// The sidecar's container, before user overrides.
struct Parts {
    init: Option<Value>,
    proxy: Value,
    volumes: Vec<Value>,
}

/// Everything the injector needs besides the pod.
pub struct Injector {
    pub values: Values,
    /// Whether the cluster runs native sidecars (every kubelet 1.33 or newer), when the values
    /// say `auto`.
    pub cluster_native: bool,
    /// The injector's revision (`default`).
    pub revision: String,
}

impl Injector {
    pub fn new(values: Values) -> Injector {
        Injector {
            values,
            cluster_native: true,
            revision: "default".to_string(),
        }
    }

    fn native(&self, settings: &Settings) -> bool {
        settings
            .native
            .unwrap_or(match self.values.sidecar_injector_webhook.native_sidecars {
                crate::values::NativeSidecars::Auto => self.cluster_native,
                crate::values::NativeSidecars::True => true,
                crate::values::NativeSidecars::False => false,
            })
    }

    fn parts(
        &self,
        template: Template,
        settings: &Settings,
        native: bool,
        pod: &Value,
        owner: &Owner,
        uid: u32,
    ) -> Parts {
        let v = &self.values;
        let g = &v.global;
        let spec = &pod["spec"];
        let app_containers: Vec<&Value> = spec["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["name"] != PROXY_CONTAINER)
            .collect();
        let pod_ports: Vec<Value> = app_containers
            .iter()
            .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
            .collect();
        let app_names: Vec<&str> = app_containers
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        let mut resources = Map::new();
        if !settings.limits.is_empty() {
            resources.insert("limits".into(), json!(settings.limits));
        }
        if !settings.requests.is_empty() {
            resources.insert("requests".into(), json!(settings.requests));
        }
        let gateway = template == Template::Gateway;
        let role = if gateway { "gateway" } else { "sidecar" };
        let host = v.control_plane_host();
        let kind = g.proxy.kind;
        let owner_ref = format!(
            "kubernetes://apis/{}/namespaces/{}/{}s/{}",
            owner.api_version,
            owner.namespace,
            owner.kind.to_ascii_lowercase(),
            owner.name
        );
        let mut envs = vec![
            env_field("POD_NAME", "metadata.name"),
            env_field("POD_NAMESPACE", "metadata.namespace"),
            env_field("INSTANCE_IP", "status.podIP"),
            env_field("SERVICE_ACCOUNT", "spec.serviceAccountName"),
            env_field("HOST_IP", "status.hostIP"),
            json!({"name": "ISTIO_CPU_LIMIT", "valueFrom": {"resourceFieldRef": {"divisor": "1", "resource": "limits.cpu"}}}),
            env("STRAIT_PROXY", kind.as_str()),
            env("STRAIT_ROLE", role),
            // strait-proxy speaks plaintext xDS (15010) until it has its own TLS; Envoy gets its
            // certificate from the CA through strait agent and speaks xDS over mutual TLS.
            env(
                "XDS_ADDR",
                match kind {
                    ProxyKind::Strait => format!("{host}:15010"),
                    ProxyKind::Envoy => format!("{host}:15012"),
                },
            ),
            env("CA_ADDR", format!("{host}:15012")),
            env(
                "PROXY_CONFIG",
                Value::Object(settings.proxy_config.clone()).to_string(),
            ),
            env("ISTIO_META_POD_PORTS", Value::Array(pod_ports).to_string()),
            env("ISTIO_META_APP_CONTAINERS", app_names.join(",")),
            env("ISTIO_META_CLUSTER_ID", g.cluster_name.clone()),
            env(
                "ISTIO_META_INTERCEPTION_MODE",
                settings.interception.as_str(),
            ),
            env("ISTIO_META_WORKLOAD_NAME", owner.name.clone()),
            env("ISTIO_META_OWNER", owner_ref),
            env("ISTIO_META_MESH_ID", g.mesh_id.clone()),
            env("TRUST_DOMAIN", g.trust_domain.clone()),
            env("STRAIT_STATUS_PORT", settings.status_port.to_string()),
            env("STRAIT_LOG_LEVEL", settings.log_level.clone()),
        ];
        if let Some(p) = &settings.application_ports {
            envs.push(env("ISTIO_META_APPLICATION_PORTS", p.clone()));
        }
        for (k, val) in &settings.proxy_metadata {
            envs.push(env(k, val.clone()));
        }
        let image = settings
            .proxy_image
            .clone()
            .unwrap_or_else(|| v.proxy_image());
        let ready = "/healthz/ready";
        let mut readiness = Map::new();
        readiness.insert(
            "failureThreshold".into(),
            json!(settings.readiness_failure_threshold),
        );
        readiness.insert("httpGet".into(), json!({"path": ready, "port": 15021}));
        if settings.readiness_initial_delay != 0 {
            readiness.insert(
                "initialDelaySeconds".into(),
                json!(settings.readiness_initial_delay),
            );
        }
        readiness.insert("periodSeconds".into(), json!(settings.readiness_period));
        readiness.insert("timeoutSeconds".into(), json!(3));
        let mut mounts = vec![
            json!({"mountPath": "/var/run/secrets/istio", "name": "istiod-ca-cert"}),
            json!({"mountPath": "/var/lib/istio/data", "name": "istio-data"}),
            json!({"mountPath": "/etc/istio/proxy", "name": "istio-envoy"}),
            json!({"mountPath": "/var/run/secrets/tokens", "name": "istio-token"}),
            json!({"mountPath": "/etc/istio/pod", "name": "istio-podinfo"}),
        ];
        for (name, m) in &settings.user_volume_mounts {
            let mut m = m.clone();
            m["name"] = json!(name);
            mounts.push(m);
        }
        let mut proxy = Map::new();
        proxy.insert("name".into(), json!(PROXY_CONTAINER));
        proxy.insert("image".into(), json!(image));
        proxy.insert("args".into(), json!(["pod-agent", "run"]));
        proxy.insert("env".into(), Value::Array(envs));
        if !g.image_pull_policy.is_empty() {
            proxy.insert("imagePullPolicy".into(), json!(g.image_pull_policy));
        }
        proxy.insert(
            "ports".into(),
            json!([{"containerPort": 15090, "name": "http-envoy-prom", "protocol": "TCP"}]),
        );
        // As Istio's templates: the sidecar's own probes go to its readiness port (15021) and
        // exist only while the status port is on (`status.sidecar.istio.io/port: "0"` turns
        // them off); a sidecar (not a gateway) also has a startup probe, which for a native
        // sidecar holds the app containers back until the proxy is ready.
        if settings.status_port != 0 {
            proxy.insert("readinessProbe".into(), Value::Object(readiness));
        }
        if settings.status_port != 0 && !gateway {
            proxy.insert(
                "startupProbe".into(),
                json!({"failureThreshold": 600, "httpGet": {"path": ready, "port": 15021},
                       "periodSeconds": 1, "timeoutSeconds": 3}),
            );
        }
        proxy.insert("volumeMounts".into(), Value::Array(mounts));
        if gateway {
            proxy.insert(
                "securityContext".into(),
                json!({"runAsGroup": uid, "runAsNonRoot": true, "runAsUser": uid}),
            );
        } else {
            proxy.insert("resources".into(), Value::Object(resources.clone()));
            proxy.insert(
                "securityContext".into(),
                json!({
                    "allowPrivilegeEscalation": false,
                    "capabilities": {"drop": ["ALL"]},
                    "privileged": false,
                    "readOnlyRootFilesystem": true,
                    "runAsGroup": uid,
                    "runAsNonRoot": true,
                    "runAsUser": uid,
                }),
            );
            if native {
                proxy.insert("restartPolicy".into(), json!("Always"));
                proxy.insert(
                    "lifecycle".into(),
                    json!({"preStop": {"exec": {"command": ["strait", "pod-agent", "drain"]}}}),
                );
            } else if settings.hold_application {
                proxy.insert(
                    "lifecycle".into(),
                    json!({"postStart": {"exec": {"command": ["strait", "pod-agent", "wait"]}}}),
                );
            }
        }
        let init = (!gateway && settings.interception != InterceptionMode::None).then(|| {
            let mut init = Map::new();
            init.insert("name".into(), json!(INIT_CONTAINER));
            init.insert("image".into(), json!(v.image(&g.proxy_init.image)));
            init.insert("args".into(), json!(settings.init_args(uid)));
            if !g.image_pull_policy.is_empty() {
                init.insert("imagePullPolicy".into(), json!(g.image_pull_policy));
            }
            init.insert("resources".into(), Value::Object(resources.clone()));
            init.insert(
                "securityContext".into(),
                json!({
                    "allowPrivilegeEscalation": false,
                    "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
                    "privileged": false,
                    "readOnlyRootFilesystem": false,
                    "runAsGroup": 0,
                    "runAsNonRoot": false,
                    "runAsUser": 0,
                }),
            );
            Value::Object(init)
        });
        let mut volumes = vec![
            json!({"emptyDir": {"medium": "Memory"}, "name": "istio-envoy"}),
            json!({"emptyDir": {}, "name": "istio-data"}),
            json!({"downwardAPI": {"items": [
                {"fieldRef": {"fieldPath": "metadata.labels"}, "path": "labels"},
                {"fieldRef": {"fieldPath": "metadata.annotations"}, "path": "annotations"}]},
                "name": "istio-podinfo"}),
            json!({"name": "istio-token", "projected": {"sources": [{"serviceAccountToken": {
                "audience": "istio-ca", "expirationSeconds": 43200, "path": "istio-token"}}]}}),
            json!({"configMap": {"name": "istio-ca-root-cert"}, "name": "istiod-ca-cert"}),
        ];
        for (name, vol) in &settings.user_volumes {
            let mut vol = vol.clone();
            vol["name"] = json!(name);
            volumes.push(vol);
        }
        let _ = spec;
        Parts {
            init,
            proxy: Value::Object(proxy),
            volumes,
        }
    }

    /// Injects `pod` (an object with `metadata` and `spec`) in place. The caller has decided
    /// that it should be injected (policy, host network).
    pub fn inject(&self, pod: &mut Value, owner: &Owner) -> Result<(), InjectError> {
        if !pod["metadata"].is_object() {
            pod["metadata"] = json!({});
        }
        if !pod["spec"].is_object() {
            return Err(InjectError::BadInput("the pod has no spec".into()));
        }
        let annotations = string_map(&pod["metadata"]["annotations"], "annotations")?;
        let settings = Settings::read(&annotations, &self.values)?;
        if settings.interception == InterceptionMode::Tproxy {
            return Err(InjectError::BadAnnotation {
                annotation: a::INTERCEPTION_MODE.into(),
                value: "TPROXY".into(),
                reason:
                    "Strait captures with REDIRECT only (TPROXY is not supported yet): use REDIRECT"
                        .into(),
            });
        }
        let template = templates(&annotations)?;
        let native = template == Template::Sidecar && self.native(&settings);

        // A pod injected before: take out what was injected, so injection is idempotent.
        let previous: Option<Value> = annotations
            .get(a::STATUS)
            .and_then(|s| serde_json::from_str(s).ok());
        let mut old_probers = AppProbers::new();
        let mut old_prometheus: Option<String> = None;
        {
            let spec = pod["spec"].as_object_mut().expect("checked above");
            if let Some(prev) = &previous {
                for field in ["containers", "initContainers"] {
                    let injected = strings(&prev[field]);
                    if let Some(Value::Array(list)) = spec.get_mut(field) {
                        for c in list.iter() {
                            if c["name"] == PROXY_CONTAINER
                                && let Some(env) = c["env"].as_array()
                                && let Some(p) =
                                    env.iter().find(|e| e["name"] == probes::KUBE_APP_PROBERS)
                                && let Some(parsed) = p["value"]
                                    .as_str()
                                    .and_then(|s| serde_json::from_str::<AppProbers>(s).ok())
                            {
                                old_probers.extend(parsed);
                            }
                            if c["name"] == PROXY_CONTAINER
                                && let Some(env) = c["env"].as_array()
                                && let Some(p) = env
                                    .iter()
                                    .find(|e| e["name"] == "ISTIO_PROMETHEUS_ANNOTATIONS")
                            {
                                old_prometheus = p["value"].as_str().map(str::to_string);
                            }
                        }
                        list.retain(|c| {
                            !c["name"]
                                .as_str()
                                .is_some_and(|n| injected.iter().any(|i| i == n))
                        });
                    }
                }
            }
        }
        // Prometheus scrapes the sidecar's status server on the mesh-wide status port, as in
        // Istio (whose merge reads the mesh's `defaultConfig.statusPort`, not the pod's
        // `status.sidecar.istio.io/port`).
        let metrics_port = self.values.global.proxy.status_port;
        let mut annotations_out = annotations.clone();
        if previous.is_some() {
            annotations_out.remove(a::STATUS);
            if metrics_port != 0
                && annotations_out.iter().any(|(k, v)| {
                    sanitize(k) == "prometheus_io_port" && *v == metrics_port.to_string()
                })
            {
                annotations_out.retain(|k, _| {
                    !matches!(
                        sanitize(k).as_str(),
                        "prometheus_io_port" | "prometheus_io_path" | "prometheus_io_scrape"
                    )
                });
            }
        }
        // Overrides recorded by an earlier injection come back as the user's containers.
        let recorded: Value = annotations
            .get(a::OVERRIDES)
            .map(|s| {
                serde_json::from_str(s).map_err(|e| InjectError::BadAnnotation {
                    annotation: a::OVERRIDES.into(),
                    value: s.clone(),
                    reason: format!("it is written by injection and must be JSON ({e})"),
                })
            })
            .transpose()?
            .unwrap_or(Value::Null);
        for field in ["containers", "initContainers"] {
            for c in recorded[field].as_array().into_iter().flatten() {
                let spec = &mut pod["spec"];
                let present = names(&spec[field])
                    .iter()
                    .any(|n| Some(n.as_str()) == c["name"].as_str());
                if !present {
                    if !spec[field].is_array() {
                        spec[field] = json!([]);
                    }
                    spec[field].as_array_mut().unwrap().push(c.clone());
                }
            }
        }

        let original = pod.clone();
        // The user's own istio-proxy may set the proxy's uid (Istio's adjustment of `-u`).
        let user_proxy = ["containers", "initContainers"].iter().find_map(|f| {
            original["spec"][f]
                .as_array()
                .and_then(|l| l.iter().find(|c| c["name"] == PROXY_CONTAINER))
        });
        let default_uid = self.values.global.proxy.uid;
        let uid = user_proxy
            .and_then(|c| c["securityContext"]["runAsUser"].as_u64())
            .filter(|u| *u != 0)
            .and_then(|u| u32::try_from(u).ok())
            .unwrap_or(default_uid);
        let parts = self.parts(template, &settings, native, &original, owner, uid);

        let spec = pod["spec"].as_object_mut().expect("checked above");
        let mut containers: Vec<Value> = spec
            .remove("containers")
            .and_then(|v| match v {
                Value::Array(a) => Some(a),
                _ => None,
            })
            .unwrap_or_default();
        let mut inits: Vec<Value> = spec
            .remove("initContainers")
            .and_then(|v| match v {
                Value::Array(a) => Some(a),
                _ => None,
            })
            .unwrap_or_default();
        let app_first = containers
            .iter()
            .find(|c| c["name"] != PROXY_CONTAINER)
            .and_then(|c| c["name"].as_str())
            .map(str::to_string);

        // The template's containers, with the user's same-named container over them.
        let mut overrides = json!({});
        let mut injected_inits = Vec::new();
        let mut injected_containers = Vec::new();
        let user_container = |c: Value| -> Value {
            let mut c = c;
            if c["image"] == "auto" {
                c.as_object_mut().unwrap().remove("image");
            }
            c
        };
        // istio-init
        if let Some(init) = &parts.init {
            let merged = match take_named(&mut inits, INIT_CONTAINER) {
                Some(user) => {
                    let user = user_container(user);
                    push_override(&mut overrides, "initContainers", &user);
                    merge(init, &user)
                }
                None => init.clone(),
            };
            injected_inits.push(INIT_CONTAINER.to_string());
            inits.push(merged);
        }
        // istio-proxy
        let user = take_named(&mut containers, PROXY_CONTAINER)
            .map(|c| (c, "containers"))
            .or_else(|| take_named(&mut inits, PROXY_CONTAINER).map(|c| (c, "initContainers")));
        let proxy = match user {
            Some((user, _)) => {
                let user = user_container(user);
                push_override(
                    &mut overrides,
                    if native {
                        "initContainers"
                    } else {
                        "containers"
                    },
                    &user,
                );
                merge(&parts.proxy, &user)
            }
            None => parts.proxy.clone(),
        };
        if native {
            injected_inits.push(PROXY_CONTAINER.to_string());
            inits.push(proxy);
        } else {
            injected_containers.push(PROXY_CONTAINER.to_string());
            containers.push(proxy);
        }

        // Volumes (by name; a template volume replaces a same-named one).
        let mut volumes: Vec<Value> = match spec.remove("volumes") {
            Some(Value::Array(a)) => a,
            _ => Vec::new(),
        };
        let mut injected_volumes = Vec::new();
        for vol in &parts.volumes {
            let name = vol["name"].as_str().unwrap_or_default().to_string();
            volumes.retain(|v| v["name"] != name.as_str());
            volumes.push(vol.clone());
            injected_volumes.push(name);
        }
        let mut injected_secrets = Vec::new();
        if !self.values.global.image_pull_secrets.is_empty() {
            let mut secrets: Vec<Value> = match spec.remove("imagePullSecrets") {
                Some(Value::Array(a)) => a,
                _ => Vec::new(),
            };
            for s in &self.values.global.image_pull_secrets {
                if !secrets.iter().any(|x| x["name"] == s.as_str()) {
                    secrets.push(json!({"name": s}));
                }
                injected_secrets.push(s.clone());
            }
            spec.insert("imagePullSecrets".into(), Value::Array(secrets));
        }
        if template == Template::Gateway {
            // Gateways bind ports below 1024 without privileges.
            let sc = spec.entry("securityContext").or_insert_with(|| json!({}));
            let merged = merge(
                sc,
                &json!({"sysctls": [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}]}),
            );
            *sc = merged;
        }

        // Probes go to the sidecar.
        if settings.rewrite_probes && settings.status_port != 0 {
            let mut probers = AppProbers::new();
            probes::rewrite(&mut containers, false, settings.status_port, &mut probers);
            probes::rewrite(&mut inits, true, settings.status_port, &mut probers);
            for (k, v) in old_probers {
                probers.entry(k).or_insert(v);
            }
            if !probers.is_empty() {
                let value = serde_json::to_string(&probers).expect("JSON values serialise");
                add_proxy_env(&mut containers, &mut inits, probes::KUBE_APP_PROBERS, value);
            }
        }

        // Metrics: Prometheus scrapes the agent, which merges the app's metrics.
        if metrics_port != 0 && settings.merge_metrics {
            let scrape = annotations_out
                .iter()
                .find(|(k, _)| sanitize(k) == "prometheus_io_scrape")
                .and_then(|(_, v)| a::parse_go_bool(v))
                .unwrap_or(true);
            let port = metrics_port.to_string();
            let current_port = annotations_out
                .iter()
                .find(|(k, _)| sanitize(k) == "prometheus_io_port")
                .map(|(_, v)| v.clone());
            if scrape && current_port.as_deref() != Some(port.as_str()) {
                let mut cfg = Map::new();
                for (k, v) in &annotations_out {
                    match sanitize(k).as_str() {
                        "prometheus_io_scrape" => {
                            cfg.insert("scrape".into(), json!(v));
                        }
                        "prometheus_io_path" => {
                            cfg.insert("path".into(), json!(v));
                        }
                        "prometheus_io_port" => {
                            cfg.insert("port".into(), json!(v));
                        }
                        _ => {}
                    }
                }
                if let Some(targets) = annotations_out.remove(a::SCRAPE_TARGETS) {
                    let list: Vec<Value> = targets
                        .split(',')
                        .filter_map(|t| {
                            let (p, path) =
                                t.trim().split_once(':').unwrap_or((t.trim(), "/metrics"));
                            (!p.is_empty()).then(|| json!({"port": p, "path": path}))
                        })
                        .collect();
                    if let Some(first) = list.first() {
                        cfg.entry("port").or_insert(first["port"].clone());
                        cfg.entry("path").or_insert(first["path"].clone());
                    }
                    cfg.insert("targets".into(), Value::Array(list));
                }
                // Injected before: the app's own scrape settings were moved to the sidecar then.
                let prometheus_env = if cfg.is_empty() {
                    old_prometheus.take()
                } else {
                    Some(Value::Object(cfg).to_string())
                };
                if let Some(value) = prometheus_env {
                    add_proxy_env(
                        &mut containers,
                        &mut inits,
                        "ISTIO_PROMETHEUS_ANNOTATIONS",
                        value,
                    );
                }
                annotations_out.retain(|k, _| {
                    !matches!(
                        sanitize(k).as_str(),
                        "prometheus_io_port" | "prometheus_io_path" | "prometheus_io_scrape"
                    )
                });
                annotations_out.insert("prometheus.io/port".into(), port);
                annotations_out.insert("prometheus.io/path".into(), "/stats/prometheus".into());
                annotations_out.insert("prometheus.io/scrape".into(), "true".into());
            }
        }

        // Order: native: istio-init, istio-proxy, the rest; otherwise the user's init
        // containers before istio-init (so they run before capture), and the proxy last (first
        // when the app waits for it).
        if native {
            move_to(&mut inits, PROXY_CONTAINER, true);
            move_to(&mut inits, INIT_CONTAINER, true);
        } else {
            move_to(&mut inits, INIT_CONTAINER, false);
            move_to(&mut containers, PROXY_CONTAINER, settings.hold_application);
        }
        let spec = pod["spec"].as_object_mut().expect("checked above");
        spec.insert("containers".into(), Value::Array(containers));
        if !inits.is_empty() {
            spec.insert("initContainers".into(), Value::Array(inits));
        }
        spec.insert("volumes".into(), Value::Array(volumes));

        // Labels.
        let meta = pod["metadata"]
            .as_object_mut()
            .expect("made an object above");
        let mut labels = string_map(meta.get("labels").unwrap_or(&Value::Null), "labels")?;
        let name = canonical_name(&labels, &owner.name);
        let revision = canonical_revision(&labels);
        if template == Template::Sidecar {
            labels
                .entry(a::TLS_MODE_LABEL.into())
                .or_insert_with(|| "istio".into());
        }
        labels.entry(a::CANONICAL_NAME_LABEL.into()).or_insert(name);
        labels
            .entry(a::CANONICAL_REVISION_LABEL.into())
            .or_insert(revision);
        meta.insert("labels".into(), json!(labels));

        // Annotations.
        annotations_out.insert(a::REVISION.into(), self.revision.clone());
        if template == Template::Sidecar
            && let Some(first) = app_first
        {
            annotations_out
                .entry(a::DEFAULT_CONTAINER.into())
                .or_insert_with(|| first.clone());
            annotations_out
                .entry(a::DEFAULT_LOGS_CONTAINER.into())
                .or_insert(first);
        }
        if previous.is_none() && overrides.as_object().is_some_and(|o| !o.is_empty()) {
            annotations_out.insert(a::OVERRIDES.into(), overrides.to_string());
        }
        let list = |v: &[String]| -> Value { if v.is_empty() { Value::Null } else { json!(v) } };
        let status = format!(
            "{{\"initContainers\":{},\"containers\":{},\"volumes\":{},\"imagePullSecrets\":{},\"revision\":{}}}",
            list(&injected_inits),
            list(&injected_containers),
            list(&injected_volumes),
            list(&injected_secrets),
            json!(self.revision)
        );
        annotations_out.insert(a::STATUS.into(), status);
        for (k, v) in &self.values.sidecar_injector_webhook.injected_annotations {
            annotations_out.insert(k.clone(), v.clone());
        }
        meta.insert("annotations".into(), json!(annotations_out));
        Ok(())
    }
}

fn push_override(overrides: &mut Value, field: &str, container: &Value) {
    let list = overrides
        .as_object_mut()
        .expect("an object")
        .entry(field)
        .or_insert_with(|| json!([]));
    list.as_array_mut()
        .expect("an array")
        .push(container.clone());
}

fn add_proxy_env(containers: &mut [Value], inits: &mut [Value], name: &str, value: String) {
    let proxy = containers
        .iter_mut()
        .chain(inits.iter_mut())
        .find(|c| c["name"] == PROXY_CONTAINER);
    if let Some(p) = proxy {
        if !p["env"].is_array() {
            p["env"] = json!([]);
        }
        let env = p["env"].as_array_mut().unwrap();
        env.retain(|e| e["name"] != name);
        env.push(json!({"name": name, "value": value}));
    }
}

fn move_to(list: &mut Vec<Value>, name: &str, first: bool) {
    if let Some(c) = take_named(list, name) {
        if first {
            list.insert(0, c);
        } else {
            list.push(c);
        }
    }
}

/// The names of what a pod's `sidecar.istio.io/status` says was injected.
pub fn injected_names(pod: &Value) -> BTreeSet<String> {
    let status: Value = pod["metadata"]["annotations"][a::STATUS]
        .as_str()
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or(Value::Null);
    ["containers", "initContainers", "volumes"]
        .iter()
        .flat_map(|f| strings(&status[f]))
        .collect()
}
