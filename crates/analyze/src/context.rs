//! What the analyzers see: the objects, indexed, with the mesh config and the workloads.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::message::Message;
use crate::object::{Labels, Object, SYSTEM_NAMESPACES, items, string_map};

/// How an analysis runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The namespace of namespaced objects that name none (`default` for the CLI; Istio's test
    /// harness uses none).
    pub default_namespace: String,
    /// Istio's namespace (where istiod, the injector and the default ingress gateway live).
    pub istio_namespace: String,
    /// MeshConfig overrides, merged over Istio's defaults (like `--meshConfigFile`).
    pub mesh_config: Option<Value>,
    /// MeshNetworks (like `istioctl analyze --meshNetworksFile`), analyzed as
    /// `MeshNetworks <istio namespace>/meshnetworks`.
    pub mesh_networks: Option<Value>,
    /// Add a default ingress gateway workload labelled `istio: ingressgateway` (istioctl adds
    /// Istio's Pod and Service when it analyzes files; on Strait's platform it is the
    /// WorkloadEntry `strait gateway` registers).
    pub default_ingress: bool,
    /// Read the input as Strait's platform has it: WorkloadEntries (which `strait run` and
    /// `strait gateway` register) and Deployments' pod templates are workloads for selectors,
    /// besides Pods; and a namespace exists when something lives in it (Strait needs no
    /// Namespace object).
    pub strait_platform: bool,
    /// Skip the checks that need workloads when the input has none (Strait's control plane
    /// holds no Pods; without this, every subset and selector would be reported unmatched).
    pub skip_workload_checks_without_workloads: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            default_namespace: "default".into(),
            istio_namespace: "istio-system".into(),
            mesh_config: None,
            mesh_networks: None,
            default_ingress: true,
            strait_platform: true,
            skip_workload_checks_without_workloads: true,
        }
    }
}

impl Options {
    /// The options of Istio's analyzer tests: no default namespace, Pods only.
    pub fn istio_test_harness() -> Options {
        Options {
            default_namespace: String::new(),
            strait_platform: false,
            skip_workload_checks_without_workloads: false,
            ..Options::default()
        }
    }
}

/// A workload instance: a Pod, or (for Strait) a WorkloadEntry or a Deployment's pod template.
#[derive(Debug, Clone)]
pub struct Workload<'a> {
    pub object: &'a Object,
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    pub annotations: Labels,
    /// The pod spec (`null` for WorkloadEntries).
    pub spec: &'a Value,
    pub service_account: String,
    /// Added by the analysis (Istio's default ingress gateway), not in the input.
    pub synthetic: bool,
}

impl Workload<'_> {
    pub fn is_pod(&self) -> bool {
        self.object.kind == "Pod" && self.object.group.is_empty()
    }

    /// Containers and init containers.
    pub fn containers(&self) -> impl Iterator<Item = &Value> {
        items(&self.spec["containers"])
            .iter()
            .chain(items(&self.spec["initContainers"]))
    }

    /// The image of its `istio-proxy` container, if it has one.
    pub fn proxy_image(&self) -> Option<&str> {
        self.containers()
            .find(|c| c["name"] == "istio-proxy")
            .map(|c| c["image"].as_str().unwrap_or_default())
    }
}

/// The input of one analysis.
pub struct Context<'a> {
    pub options: &'a Options,
    objects: Vec<&'a Object>,
    by_kind: BTreeMap<(String, String), Vec<&'a Object>>,
    synthetic: &'a [Object],
    pub mesh: Value,
    workloads: Vec<Workload<'a>>,
    pods: Vec<Workload<'a>>,
    pub messages: Vec<Message>,
}

impl<'a> Context<'a> {
    /// `synthetic` holds what the analysis adds (see [`synthetic_objects`]).
    pub fn new(
        objects: &'a [Object],
        synthetic: &'a [Object],
        options: &'a Options,
    ) -> Context<'a> {
        let kept: Vec<&Object> = objects
            .iter()
            .chain(synthetic)
            .filter(|o| !SYSTEM_NAMESPACES.contains(&o.namespace.as_str()))
            .collect();
        let mut by_kind: BTreeMap<(String, String), Vec<&Object>> = BTreeMap::new();
        for o in &kept {
            by_kind
                .entry((o.group.clone(), o.kind.clone()))
                .or_default()
                .push(o);
        }
        let mut mesh = default_mesh_config();
        if let Some(overrides) = &options.mesh_config {
            merge(&mut mesh, overrides);
        }
        let is_synthetic = |o: &Object| synthetic.iter().any(|s| std::ptr::eq(s, o));
        let mut pods = Vec::new();
        let mut workloads = Vec::new();
        for o in &kept {
            let w = if o.is("", "Pod") {
                Some(Workload {
                    object: o,
                    namespace: o.namespace.clone(),
                    name: o.name.clone(),
                    labels: o.labels(),
                    annotations: o.annotations(),
                    spec: o.spec(),
                    service_account: o.spec()["serviceAccountName"]
                        .as_str()
                        .unwrap_or("default")
                        .to_string(),
                    synthetic: is_synthetic(o),
                })
            } else if options.strait_platform && o.is("networking.istio.io", "WorkloadEntry") {
                Some(Workload {
                    object: o,
                    namespace: o.namespace.clone(),
                    name: o.name.clone(),
                    labels: string_map(&o.spec()["labels"]),
                    annotations: o.annotations(),
                    spec: &Value::Null,
                    service_account: o.spec()["serviceAccount"]
                        .as_str()
                        .unwrap_or("default")
                        .to_string(),
                    synthetic: is_synthetic(o),
                })
            } else if options.strait_platform && o.is("apps", "Deployment") {
                let t = &o.spec()["template"];
                Some(Workload {
                    object: o,
                    namespace: o.namespace.clone(),
                    name: o.name.clone(),
                    labels: string_map(&t["metadata"]["labels"]),
                    annotations: string_map(&t["metadata"]["annotations"]),
                    spec: &t["spec"],
                    service_account: t["spec"]["serviceAccountName"]
                        .as_str()
                        .unwrap_or("default")
                        .to_string(),
                    synthetic: is_synthetic(o),
                })
            } else {
                None
            };
            if let Some(w) = w {
                if w.is_pod() {
                    pods.push(w.clone());
                }
                workloads.push(w);
            }
        }
        Context {
            options,
            objects: kept,
            by_kind,
            synthetic,
            mesh,
            workloads,
            pods,
            messages: Vec::new(),
        }
    }

    /// Every object (system namespaces left out).
    pub fn objects(&self) -> &[&'a Object] {
        &self.objects
    }

    /// The objects of one kind, in input order.
    pub fn kind(&self, group: &str, kind: &str) -> &[&'a Object] {
        self.by_kind
            .get(&(group.to_string(), kind.to_string()))
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// One object by kind, namespace and name.
    pub fn find(&self, group: &str, kind: &str, namespace: &str, name: &str) -> Option<&'a Object> {
        self.kind(group, kind)
            .iter()
            .copied()
            .find(|o| o.namespace == namespace && o.name == name)
    }

    /// Pods only (as Istio's analyzers read them).
    pub fn pods(&self) -> &[Workload<'a>] {
        &self.pods
    }

    /// Pods, and with `strait_platform` WorkloadEntries and Deployments' templates.
    pub fn workloads(&self) -> &[Workload<'a>] {
        &self.workloads
    }

    /// Whether the input describes any workload (the analysis's own additions aside).
    pub fn has_workloads(&self) -> bool {
        self.workloads.iter().any(|w| !w.synthetic)
    }

    pub fn is_synthetic(&self, o: &Object) -> bool {
        self.synthetic.iter().any(|s| std::ptr::eq(s, o))
    }

    /// A Namespace object by name.
    pub fn namespace(&self, name: &str) -> Option<&'a Object> {
        self.find("", "Namespace", "", name)
    }

    pub fn root_namespace(&self) -> String {
        self.mesh["rootNamespace"]
            .as_str()
            .unwrap_or(&self.options.istio_namespace)
            .to_string()
    }

    pub fn report(&mut self, m: Message) {
        self.messages.push(m);
    }
}

/// The objects an analysis adds to its input: the default ingress gateway when `default_ingress`
/// is set and the input has none (Istio's Pod and Service, `pkg/config/analysis/local/defaults.go`,
/// or on Strait's platform the WorkloadEntry of `strait gateway`), and the MeshNetworks resource.
pub fn synthetic_objects(objects: &[Object], options: &Options) -> Vec<Object> {
    let mut out = Vec::new();
    let ns = options.istio_namespace.as_str();
    if options.default_ingress && options.strait_platform {
        // Strait's default ingress: what `strait gateway` registers, listening on the Gateway
        // resources' ports itself (no Service in front).
        let has_gateway = objects.iter().any(|o| {
            o.is("networking.istio.io", "WorkloadEntry")
                && o.raw["spec"]["labels"]["istio"] == "ingressgateway"
        });
        if !has_gateway {
            let we = json!({
                "apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry",
                "metadata": {"name": "istio-ingressgateway", "namespace": ns},
                "spec": {"address": "127.0.0.1", "labels": {"istio": "ingressgateway"}},
            });
            out.extend(Object::from_value(we, None, ns));
        }
    } else if options.default_ingress
        && !objects
            .iter()
            .any(|o| o.is("", "Service") && o.namespace == ns && o.name == "istio-ingressgateway")
    {
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "istio-ingressgateway-dummypod", "namespace": ns,
                         "labels": {"istio": "ingressgateway"}},
            "spec": {"containers": [{"name": "istio-proxy", "image": "proxyv2"}]},
        });
        let svc = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "istio-ingressgateway", "namespace": ns},
            "spec": {"selector": {"istio": "ingressgateway"}, "ports": [
                {"name": "http2", "port": 80, "protocol": "TCP"},
                {"name": "https", "port": 443, "protocol": "TCP"},
                {"name": "tcp", "port": 31400, "protocol": "TCP"},
                {"name": "tls", "port": 15443, "protocol": "TCP"},
            ]},
        });
        out.extend(Object::from_value(pod, None, ns));
        out.extend(Object::from_value(svc, None, ns));
    }
    if let Some(networks) = &options.mesh_networks {
        let mn = json!({
            "apiVersion": "mesh.istio.io/v1alpha1", "kind": "MeshNetworks",
            "metadata": {"name": "meshnetworks", "namespace": ns},
            "spec": networks,
        });
        out.extend(Object::from_value(mn, None, ns));
    }
    out
}

/// The parts of Istio's default MeshConfig the analyzers read.
pub fn default_mesh_config() -> Value {
    json!({
        "rootNamespace": "istio-system",
        "ingressControllerMode": "STRICT",
        "ingressService": "istio-ingressgateway",
        "ingressSelector": "ingressgateway",
        "defaultConfig": {},
        "extensionProviders": [
            {"name": "prometheus", "prometheus": {}},
            {"name": "stackdriver", "stackdriver": {}},
            {"name": "envoy", "envoyFileAccessLog": {"path": "/dev/stdout"}},
        ],
    })
}

pub use strait_api::mesh_config::merge;
