//! Analyzers of Kubernetes-level objects Strait does not store, read from files: webhook
//! configurations, mesh networks, Gateway API resources and CRDs, status conditions (Istio's
//! `analyzers/webhook`, `externalcontrolplane`, `multicluster`, `k8sgateway`, `conditions`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde_json::Value;

use super::{NET, SEC, analyzer};
use crate::context::Context;
use crate::labels::label_selector_matches;
use crate::message::{self as msg, Message, list, q};
use crate::object::{Labels, Object, items, string_map, text};

const ADMISSION: &str = "admissionregistration.k8s.io";
const GATEWAY_API: &str = "gateway.networking.k8s.io";

analyzer!(WebhookAnalyzer, "webhook.Analyzer", [msg::INVALID_WEBHOOK]);

fn revisions(cfg: &Object) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    out.extend(cfg.label("istio.io/rev").map(str::to_string));
    for wh in items(&cfg.raw["webhooks"]) {
        for sel in [&wh["namespaceSelector"], &wh["objectSelector"]] {
            out.extend(
                sel["matchLabels"]["istio.io/rev"]
                    .as_str()
                    .map(str::to_string),
            );
            for e in items(&sel["matchExpressions"]) {
                if e["key"] == "istio.io/rev" {
                    out.extend(crate::object::strings(&e["values"]));
                }
            }
        }
    }
    out
}

fn permutations(key: &str, revs: &BTreeSet<String>) -> Vec<Labels> {
    let base = |v: Option<&str>| -> Labels {
        v.map(|v| (key.to_string(), v.to_string()))
            .into_iter()
            .collect()
    };
    let mut out = Vec::new();
    let (on, off) = if key == "istio-injection" {
        ("enabled", "disabled")
    } else {
        ("true", "false")
    };
    for rev in std::iter::once(None).chain(revs.iter().map(Some)) {
        for v in [None, Some(on), Some(off)] {
            let mut l = base(v);
            if let Some(r) = rev {
                l.insert("istio.io/rev".into(), r.clone());
            }
            out.push(l);
        }
    }
    out
}

impl WebhookAnalyzer {
    fn run(&self, ctx: &mut Context<'_>) {
        let mut hooks: Vec<(String, &Object, &Value)> = Vec::new();
        let mut revs = BTreeSet::new();
        for cfg in ctx.kind(ADMISSION, "MutatingWebhookConfiguration") {
            let r = revisions(cfg);
            let istio = items(&cfg.raw["webhooks"])
                .iter()
                .any(|w| text(&w["name"]).ends_with("istio.io"));
            if r.is_empty() && !istio {
                continue;
            }
            revs.extend(r);
            for wh in items(&cfg.raw["webhooks"]) {
                hooks.push((
                    format!("{}/{}", cfg.full_name(), text(&wh["name"])),
                    cfg,
                    wh,
                ));
            }
        }
        let mut out = Vec::new();
        for nl in permutations("istio-injection", &revs) {
            for ol in permutations("sidecar.istio.io/inject", &revs) {
                let matches: BTreeSet<&String> = hooks
                    .iter()
                    .filter(|(_, _, wh)| {
                        label_selector_matches(&wh["namespaceSelector"], &nl)
                            && label_selector_matches(&wh["objectSelector"], &ol)
                    })
                    .map(|(id, _, _)| id)
                    .collect();
                if matches.len() < 2 {
                    continue;
                }
                for (id, cfg, _) in hooks.iter().filter(|(id, _, _)| matches.contains(id)) {
                    let others: Vec<&String> =
                        matches.iter().copied().filter(|o| *o != id).collect();
                    out.push(Message::new(
                        msg::INVALID_WEBHOOK,
                        cfg,
                        format!(
                            "Webhook overlaps with others: {}. This may cause injection to occur twice.",
                            list(&others)
                        ),
                    ).hint("remove the older injector's webhook configuration, or make the selectors exclusive"));
                }
            }
        }
        for (_, cfg, wh) in &hooks {
            let svc = &wh["clientConfig"]["service"];
            if svc.is_null() {
                continue;
            }
            let (ns, name) = (text(&svc["namespace"]), text(&svc["name"]));
            if ctx.find("", "Service", ns, name).is_none() {
                out.push(Message::new(
                    msg::INVALID_WEBHOOK,
                    cfg,
                    format!(
                        "Injector refers to a control plane service that does not exist: {ns}/{name}."
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
    ExternalControlPlaneAnalyzer,
    "externalcontrolplane.ExternalControlPlaneAnalyzer",
    [
        msg::INVALID_EXTERNAL_CONTROL_PLANE_CONFIG,
        msg::EXTERNAL_CONTROL_PLANE_ADDRESS_IS_IP
    ]
);

/// The host of a URL, or `None` if it has none.
fn url_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split_once(']').map(|(h, _)| h);
    }
    let host = authority.split(':').next()?;
    (!host.is_empty()).then_some(host)
}

impl ExternalControlPlaneAnalyzer {
    fn run(&self, ctx: &mut Context<'_>) {
        let mut out = Vec::new();
        let configs = ctx
            .kind(ADMISSION, "ValidatingWebhookConfiguration")
            .iter()
            .filter(|c| {
                c.name == "istiod-default-validator" || c.name.starts_with("istio-validator")
            })
            .chain(
                ctx.kind(ADMISSION, "MutatingWebhookConfiguration")
                    .iter()
                    .filter(|c| c.name.starts_with("istio-sidecar-injector")),
            );
        for cfg in configs {
            for hook in items(&cfg.raw["webhooks"]) {
                let name = text(&hook["name"]);
                let cc = &hook["clientConfig"];
                match cc["url"].as_str() {
                    Some(url) => match url_host(url) {
                        None => out.push(Message::new(
                            msg::INVALID_EXTERNAL_CONTROL_PLANE_CONFIG,
                            cfg,
                            format!(
                                "The hostname ({url}) that was provided for the webhook ({name}) to reach the ingress gateway on the external control plane cluster was provided in an invalid format. Traffic may not flow properly."
                            ),
                        )),
                        Some(h) if h.parse::<IpAddr>().is_ok() => out.push(Message::new(
                            msg::EXTERNAL_CONTROL_PLANE_ADDRESS_IS_IP,
                            cfg,
                            format!(
                                "The address ({url}) that was provided for the webhook ({name}) to reach the ingress gateway on the external control plane cluster is an IP address. This is not recommended for a production environment."
                            ),
                        ).hint("use a DNS name for the external control plane")),
                        // Istio also resolves the name; an analysis of files does no DNS.
                        Some(_) => {}
                    },
                    None if cc["service"].is_null() => out.push(Message::new(
                        msg::INVALID_EXTERNAL_CONTROL_PLANE_CONFIG,
                        cfg,
                        format!(
                            "The hostname () that was provided for the webhook ({name}) to reach the ingress gateway on the external control plane cluster is blank. Traffic may not flow properly."
                        ),
                    ).hint("set clientConfig.url to the external istiod, or clientConfig.service")),
                    None => {}
                }
            }
        }
        for m in out {
            ctx.report(m);
        }
    }
}

analyzer!(
    MeshNetworksAnalyzer,
    "multicluster.MeshNetworksAnalyzer",
    [msg::UNKNOWN_MESH_NETWORKS_REGISTRY]
);

impl MeshNetworksAnalyzer {
    fn run(&self, ctx: &mut Context<'_>) {
        let mut registries: Vec<String> = ["Mock", "Kubernetes", "External"]
            .map(String::from)
            .to_vec();
        for s in ctx.kind("", "Secret") {
            if s.label("istio/multiCluster") == Some("true") {
                for field in ["data", "stringData"] {
                    if let Some(m) = s.raw[field].as_object() {
                        registries.extend(m.keys().cloned());
                    }
                }
            }
        }
        let mut out = Vec::new();
        for mn in ctx.kind("mesh.istio.io", "MeshNetworks") {
            let Some(networks) = mn.spec()["networks"].as_object() else {
                continue;
            };
            for (network, n) in networks {
                for e in items(&n["endpoints"]) {
                    let Some(reg) = e["fromRegistry"].as_str() else {
                        continue;
                    };
                    if !registries.iter().any(|r| r == reg) {
                        out.push(
                            Message::new(
                                msg::UNKNOWN_MESH_NETWORKS_REGISTRY,
                                mn,
                                format!("Unknown service registry {reg} in network {network}"),
                            )
                            .hint("use Kubernetes, or the name of a cluster with a remote secret"),
                        );
                    }
                }
            }
        }
        for m in out {
            ctx.report(m);
        }
    }
}

analyzer!(
    KubernetesGatewaySelectorAnalyzer,
    "k8sgateway.SelectorAnalyzer",
    [msg::INEFFECTIVE_SELECTOR]
);

impl KubernetesGatewaySelectorAnalyzer {
    fn run(&self, ctx: &mut Context<'_>) {
        const GATEWAY_NAME: &str = "gateway.networking.k8s.io/gateway-name";
        let mut pods: BTreeMap<&str, Vec<&Labels>> = BTreeMap::new();
        for p in ctx.pods() {
            if p.labels.contains_key(GATEWAY_NAME) {
                pods.entry(p.namespace.as_str())
                    .or_default()
                    .push(&p.labels);
            }
        }
        let mut out = Vec::new();
        let policies = [
            (SEC, "AuthorizationPolicy"),
            (SEC, "RequestAuthentication"),
            ("telemetry.istio.io", "Telemetry"),
            ("extensions.istio.io", "WasmPlugin"),
        ];
        for (group, kind) in policies {
            for p in ctx.kind(group, kind) {
                let spec = p.spec();
                if !spec["targetRef"].is_null()
                    || !items(&spec["targetRefs"]).is_empty()
                    || spec["selector"].is_null()
                {
                    continue;
                }
                let sel = string_map(&spec["selector"]["matchLabels"]);
                for labels in pods.get(p.namespace.as_str()).into_iter().flatten() {
                    if sel.iter().all(|(k, v)| labels.get(k) == Some(v)) {
                        out.push(Message::new(
                            msg::INEFFECTIVE_SELECTOR,
                            p,
                            format!(
                                "Ineffective selector on Kubernetes Gateway {}. Use the TargetRef field instead.",
                                labels[GATEWAY_NAME]
                            ),
                        ).hint("replace spec.selector with spec.targetRefs naming the Gateway"));
                    }
                }
            }
        }
        for m in out {
            ctx.report(m);
        }
    }
}

analyzer!(
    CrdVersionAnalyzer,
    "k8sgateway.CRDVersionAnalyzer",
    [msg::GATEWAY_API_CRD_TOO_OLD]
);

/// `v1.4.1` or `1.4.1-rc.1` as (major, minor, patch), the pre-release dropped.
fn semver(v: &str) -> Option<(u64, u64, u64)> {
    let v = v.strip_prefix('v').unwrap_or(v);
    let core = v.split(['-', '+']).next()?;
    let mut parts = core.split('.').map(|p| p.parse::<u64>());
    let major = parts.next()?.ok()?;
    let minor = parts.next().unwrap_or(Ok(0)).ok()?;
    let patch = parts.next().unwrap_or(Ok(0)).ok()?;
    Some((major, minor, patch))
}

impl CrdVersionAnalyzer {
    fn run(&self, ctx: &mut Context<'_>) {
        const MINIMUM: &[(&str, (u64, u64, u64))] = &[
            ("grpcroutes.gateway.networking.k8s.io", (1, 1, 0)),
            ("backendtlspolicies.gateway.networking.k8s.io", (1, 4, 0)),
            ("tlsroutes.gateway.networking.k8s.io", (1, 5, 0)),
        ];
        let mut out = Vec::new();
        for crd in ctx.kind("apiextensions.k8s.io", "CustomResourceDefinition") {
            let Some((_, min)) = MINIMUM.iter().find(|(n, _)| *n == crd.name) else {
                continue;
            };
            let Some(bv) = crd.annotation("gateway.networking.k8s.io/bundle-version") else {
                continue;
            };
            let Some(installed) = semver(bv) else {
                continue;
            };
            if installed < *min {
                let show = bv.strip_prefix('v').unwrap_or(bv);
                out.push(Message::new(
                    msg::GATEWAY_API_CRD_TOO_OLD,
                    crd,
                    format!(
                        "Gateway API CRD {} is at version {} but Istio requires at least {}; resources of this kind will not be processed. Upgrade the Gateway API CRDs to satisfy the minimum version.",
                        q(&crd.name),
                        q(show),
                        q(&format!("{}.{}.{}", min.0, min.1, min.2))
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
    ConditionAnalyzer,
    "conditions.ConditionAnalyzer",
    [msg::NEGATIVE_CONDITION_STATUS]
);

/// A condition that says something is wrong: status `False`, or a `PartiallyInvalid` one.
/// Conditions of other controllers (types in a domain that is not Istio's) are left alone.
fn negative(c: &Value) -> bool {
    let ty = text(&c["type"]);
    if let Some((domain, _)) = ty.split_once('/')
        && !domain.ends_with("istio.io")
    {
        return false;
    }
    let status = text(&c["status"]);
    status == "False"
        || text(&c["reason"]) == "PartiallyInvalid"
        || (ty == "PartiallyInvalid" && status == "True")
}

impl ConditionAnalyzer {
    fn run(&self, ctx: &mut Context<'_>) {
        let kinds = [
            ("", "Service", false),
            (NET, "ServiceEntry", false),
            (SEC, "AuthorizationPolicy", false),
            (GATEWAY_API, "Gateway", false),
            (GATEWAY_API, "HTTPRoute", true),
            (GATEWAY_API, "GRPCRoute", true),
        ];
        let mut out = Vec::new();
        for (group, kind, per_parent) in kinds {
            for o in ctx.kind(group, kind) {
                let status = &o.raw["status"];
                let conditions: Vec<&Value> = if per_parent {
                    items(&status["parents"])
                        .iter()
                        .flat_map(|p| items(&p["conditions"]))
                        .collect()
                } else {
                    items(&status["conditions"]).iter().collect()
                };
                for c in conditions.into_iter().filter(|c| negative(c)) {
                    out.push(Message::new(
                        msg::NEGATIVE_CONDITION_STATUS,
                        o,
                        format!(
                            "A condition with a negative status is present: type={}, reason={}, message={}.",
                            text(&c["type"]),
                            text(&c["reason"]),
                            text(&c["message"])
                        ),
                    ));
                }
            }
        }
        for m in out {
            ctx.report(m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_versions() {
        assert_eq!(url_host("https://1.1.1.1:5100/inject"), Some("1.1.1.1"));
        assert_eq!(url_host("https://test.com/x"), Some("test.com"));
        assert_eq!(url_host("https://[::1]:443/"), Some("::1"));
        assert_eq!(semver("v1.4.1"), Some((1, 4, 1)));
        assert!(semver("v1.4.1").unwrap() < (1, 5, 0));
        assert_eq!(semver("1.5.0-rc.1"), Some((1, 5, 0)));
    }
}
