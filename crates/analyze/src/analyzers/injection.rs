//! Sidecar injection analyzers: namespace labels, pods without proxy, proxy images,
//! `image: auto` (Istio's `analyzers/injection`).

use std::collections::BTreeMap;

use serde_json::Value;

use super::{NET, analyzer};
use crate::context::{Context, Workload};
use crate::labels::{label_selector_matches, set_matches};
use crate::message::{self as msg, Message, list};
use crate::object::{Labels, Object, items, string_map, text};

/// The injector ConfigMap of a revision: `istio-sidecar-injector[-<rev>]`.
fn injector_configmap(revision: &str) -> String {
    if revision.is_empty() || revision == "default" {
        "istio-sidecar-injector".into()
    } else {
        format!("istio-sidecar-injector-{revision}")
    }
}

/// The `values` of an injector ConfigMap (JSON, or YAML).
fn injector_values(cm: &Object) -> Value {
    let s = text(&cm.raw["data"]["values"]);
    serde_json::from_str(s)
        .or_else(|_| serde_yaml_ng::from_str(s))
        .unwrap_or(Value::Null)
}

analyzer!(
    InjectionAnalyzer,
    "injection.Analyzer",
    [
        msg::NAMESPACE_NOT_INJECTED,
        msg::POD_MISSING_PROXY,
        msg::NAMESPACE_MULTIPLE_INJECTION_LABELS,
        msg::NAMESPACE_INJECTION_ENABLED_BY_DEFAULT
    ]
);

impl InjectionAnalyzer {
    fn run(&self, ctx: &mut Context<'_>) {
        let mut out = Vec::new();
        let mut injected = Vec::new();
        let mut enabled_by_default = false;
        for ns in ctx.kind("", "Namespace") {
            if ns.name == ctx.options.istio_namespace {
                continue;
            }
            let l = ns.labels();
            let injection = l.get("istio-injection");
            let revision = l.get("istio.io/rev");
            let mut found = Vec::new();
            if let Some(v) = injection {
                found.push(format!("istio-injection={v}"));
            }
            for key in ["istio.io/rev", "istio.io/dataplane-mode"] {
                if let Some(v) = l.get(key)
                    && injection.is_none_or(|i| i == "enabled")
                {
                    found.push(format!("{key}={v}"));
                }
            }
            if found.len() > 1 {
                out.push(Message::new(
                    msg::NAMESPACE_MULTIPLE_INJECTION_LABELS,
                    ns,
                    format!(
                        "The namespace has more than one type of injection labels {}, which may lead to undefined behavior. Make sure only one injection label exists.",
                        list(&found)
                    ),
                ).hint("keep one of istio-injection, istio.io/rev and istio.io/dataplane-mode"));
            }
            if l.get("istio.io/dataplane-mode")
                .is_some_and(|v| v == "ambient")
            {
                continue;
            }
            let cm_name = injector_configmap(revision.map_or("", String::as_str));
            if let Some(cm) = ctx.kind("", "ConfigMap").iter().find(|c| c.name == cm_name) {
                enabled_by_default = injector_values(cm)["sidecarInjectorWebhook"]["enableNamespacesByDefault"]
                    == Value::Bool(true);
            }
            if injection.is_none_or(|v| v.is_empty()) && revision.is_none() {
                if enabled_by_default {
                    out.push(Message::new(
                        msg::NAMESPACE_INJECTION_ENABLED_BY_DEFAULT,
                        ns,
                        "is enabled for Istio injection, as Istio is installed with enableNamespacesByDefault as true.",
                    ));
                    continue;
                }
                out.push(Message::new(
                    msg::NAMESPACE_NOT_INJECTED,
                    ns,
                    format!(
                        "The namespace is not enabled for Istio injection. Run 'kubectl label namespace {0} istio-injection=enabled' to enable it, or 'kubectl label namespace {0} istio-injection=disabled' to explicitly mark it as not needing injection.",
                        ns.name
                    ),
                ));
                continue;
            }
            if injection.is_some_and(|v| v == "enabled") {
                injected.push(ns.name.clone());
            }
        }
        for p in ctx.pods() {
            if !injected.contains(&p.namespace) || p.synthetic {
                continue;
            }
            let mut inject = p.annotations.get("sidecar.istio.io/inject");
            if let Some(v) = p.labels.get("sidecar.istio.io/inject") {
                inject = Some(v);
            }
            if inject.is_some_and(|v| v.eq_ignore_ascii_case("false"))
                || p.spec["hostNetwork"] == Value::Bool(true)
            {
                continue;
            }
            if p.proxy_image().is_none_or(str::is_empty) {
                out.push(Message::new(
                    msg::POD_MISSING_PROXY,
                    p.object,
                    format!(
                        "The pod {} is missing the Istio proxy. This can often be resolved by restarting or redeploying the workload.",
                        p.object.full_name()
                    ),
                ));
            }
        }
        for m in out {
            ctx.report(m);
        }
    }
}

analyzer!(
    ImageAnalyzer,
    "injection.ImageAnalyzer",
    [msg::PODS_PROXY_IMAGE_MISMATCH]
);

/// The image type (`default`, `debug`, `distroless`) in effect for a pod: the mesh default,
/// then ProxyConfigs of the root namespace, the pod's namespace, the pod's workload, then the
/// pod's `proxy.istio.io/config` annotation.
fn image_type(ctx: &Context<'_>, pod: &Workload<'_>) -> String {
    let mut t = text(&ctx.mesh["defaultConfig"]["image"]["imageType"]).to_string();
    let root = ctx.root_namespace();
    let configs = ctx.kind(NET, "ProxyConfig");
    let mut apply = |v: &str| {
        if !v.is_empty() {
            t = v.to_string();
        }
    };
    for pc in configs
        .iter()
        .filter(|p| p.namespace == root && p.spec()["selector"].is_null())
    {
        apply(text(&pc.spec()["image"]["imageType"]));
    }
    for pc in configs.iter().filter(|p| {
        p.namespace == pod.namespace && p.namespace != root && p.spec()["selector"].is_null()
    }) {
        apply(text(&pc.spec()["image"]["imageType"]));
    }
    for pc in configs.iter().filter(|p| {
        p.namespace == pod.namespace
            && !p.spec()["selector"].is_null()
            && set_matches(
                &string_map(&p.spec()["selector"]["matchLabels"]),
                &pod.labels,
            )
    }) {
        apply(text(&pc.spec()["image"]["imageType"]));
    }
    if let Some(a) = pod.annotations.get("proxy.istio.io/config") {
        let v: Value = serde_yaml_ng::from_str(a).unwrap_or(Value::Null);
        apply(text(&v["image"]["imageType"]));
    }
    if t.is_empty() { "default".into() } else { t }
}

impl ImageAnalyzer {
    fn run(&self, ctx: &mut Context<'_>) {
        let mut images = BTreeMap::new();
        for cm in ctx.kind("", "ConfigMap") {
            if !cm.name.starts_with("istio-sidecar-injector") {
                continue;
            }
            let v = injector_values(cm);
            let g = &v["global"];
            let image = text(&g["proxy"]["image"]);
            let full = if image.contains('/') {
                image.to_string()
            } else {
                format!("{}/{image}:{}", text(&g["hub"]), text(&g["tag"]))
            };
            images.insert(cm.name.clone(), full);
        }
        if images.is_empty() {
            return;
        }
        let mut namespaces: BTreeMap<String, (&Object, String)> = BTreeMap::new();
        for ns in ctx.kind("", "Namespace") {
            let rev = ns.label("istio.io/rev");
            if ns.label("istio-injection") == Some("enabled") || rev.is_some() {
                namespaces.insert(ns.name.clone(), (ns, rev.unwrap_or("default").to_string()));
            }
        }
        let mut mismatched: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for p in ctx.pods() {
            let Some((_, rev)) = namespaces.get(&p.namespace) else {
                continue;
            };
            if p.annotations
                .get("sidecar.istio.io/proxyImage")
                .is_some_and(|v| !v.is_empty())
            {
                continue;
            }
            let variant = image_type(ctx, p);
            for c in p.containers().filter(|c| c["name"] == "istio-proxy") {
                let Some(want) = images.get(&injector_configmap(rev)) else {
                    break;
                };
                let image = text(&c["image"]);
                if image != want && image != format!("{want}-{variant}") {
                    mismatched
                        .entry(p.namespace.clone())
                        .or_default()
                        .push(p.name.clone());
                }
            }
        }
        let mut out = Vec::new();
        for (ns, pods) in mismatched {
            let (obj, _) = namespaces[&ns];
            out.push(Message::new(
                msg::PODS_PROXY_IMAGE_MISMATCH,
                obj,
                format!(
                    "The Istio proxy images of the pods running in the namespace do not match the image defined in the injection configuration (pod names: {}). This often happens after upgrading the Istio control-plane and can be fixed by redeploying the pods.",
                    list(&pods)
                ),
            ));
        }
        for m in out {
            ctx.report(m);
        }
    }
}

analyzer!(
    ImageAutoAnalyzer,
    "injection.ImageAutoAnalyzer",
    [
        msg::IMAGE_AUTO_WITHOUT_INJECTION_WARNING,
        msg::IMAGE_AUTO_WITHOUT_INJECTION_ERROR
    ]
);

fn has_auto_image(spec: &Value) -> bool {
    items(&spec["containers"])
        .iter()
        .any(|c| c["name"] == "istio-proxy" && c["image"] == "auto")
}

impl ImageAutoAnalyzer {
    fn run(&self, ctx: &mut Context<'_>) {
        let webhooks: Vec<&Value> = ctx
            .kind(
                "admissionregistration.k8s.io",
                "MutatingWebhookConfiguration",
            )
            .iter()
            .flat_map(|c| items(&c.raw["webhooks"]))
            .filter(|w| text(&w["name"]).ends_with("istio.io"))
            .collect();
        let mut out = Vec::new();
        for p in ctx.pods() {
            if has_auto_image(p.spec) {
                out.push(Message::new(
                    msg::IMAGE_AUTO_WITHOUT_INJECTION_ERROR,
                    p.object,
                    format!(
                        "Pod {} contains `image: auto` but does not match any Istio injection webhook selectors.",
                        p.name
                    ),
                ).hint("`image: auto` is replaced by injection only: create pods through a Deployment in an injected namespace"));
            }
        }
        for d in ctx.kind("apps", "Deployment") {
            let t = &d.spec()["template"];
            if !has_auto_image(&t["spec"]) {
                continue;
            }
            let ns = if d.namespace.is_empty() {
                "default"
            } else {
                &d.namespace
            };
            let ns_labels: Labels = ctx.namespace(ns).map(|n| n.labels()).unwrap_or_default();
            let pod_labels = string_map(&t["metadata"]["labels"]);
            let matched = webhooks.iter().any(|w| {
                label_selector_matches(&w["namespaceSelector"], &ns_labels)
                    && label_selector_matches(&w["objectSelector"], &pod_labels)
            });
            if !matched {
                out.push(Message::new(
                    msg::IMAGE_AUTO_WITHOUT_INJECTION_WARNING,
                    d,
                    format!(
                        "Deployment {} contains `image: auto` but does not match any Istio injection webhook selectors.",
                        d.name
                    ),
                ).hint("label the namespace istio-injection=enabled (or the pods sidecar.istio.io/inject=true)"));
            }
        }
        for m in out {
            ctx.report(m);
        }
    }
}
