//! Deployment analyzers: services with conflicting protocols or ports, UID 1337 (Istio's
//! `analyzers/deployment`).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::analyzer;
use super::service::istio_control_plane;
use crate::context::Context;
use crate::labels::set_matches;
use crate::message::{self as msg, Message, list, q};
use crate::object::{Object, items, number, string_map, text};

/// Istio's `DeploymentInMesh`: a proxy container in the template, or injection asked for by
/// the template's label or annotation, or by the namespace.
fn deployment_in_mesh(ctx: &Context<'_>, d: &Object) -> bool {
    let t = &d.spec()["template"];
    let has_proxy = items(&t["spec"]["containers"])
        .iter()
        .any(|c| c["name"] == "istio-proxy" && !text(&c["image"]).is_empty());
    if has_proxy {
        return true;
    }
    for field in ["labels", "annotations"] {
        if let Some(v) = t["metadata"][field]["sidecar.istio.io/inject"].as_str() {
            return v == "true";
        }
    }
    ctx.namespace(&d.namespace)
        .is_some_and(|ns| ns.label("istio-injection") == Some("enabled"))
}

analyzer!(
    ServiceAssociationAnalyzer,
    "deployment.ServiceAssociationAnalyzer",
    [
        msg::DEPLOYMENT_MULTIPLE_SERVICES,
        msg::DEPLOYMENT_CONFLICTING_PORTS
    ]
);

impl ServiceAssociationAnalyzer {
    fn run(&self, ctx: &mut Context<'_>) {
        let mut out = Vec::new();
        for d in ctx.kind("apps", "Deployment") {
            if d.label("gateway.istio.io/managed") == Some("istio.io-mesh-controller")
                || !deployment_in_mesh(ctx, d)
            {
                continue;
            }
            let pod_labels = string_map(&d.spec()["template"]["metadata"]["labels"]);
            let services: Vec<&Object> = ctx
                .kind("", "Service")
                .iter()
                .copied()
                .filter(|s| {
                    let sel = string_map(&s.spec()["selector"]);
                    s.namespace == d.namespace && !sel.is_empty() && set_matches(&sel, &pod_labels)
                })
                .collect();
            // port → protocol → services; targetPort → port → service
            let mut protocols: BTreeMap<i64, BTreeMap<String, Vec<String>>> = BTreeMap::new();
            let mut targets: BTreeMap<String, BTreeMap<i64, String>> = BTreeMap::new();
            for s in &services {
                for p in items(&s.spec()["ports"]) {
                    let port = number(&p["port"]).unwrap_or(0);
                    let proto = match text(&p["protocol"]) {
                        "" => "TCP",
                        other => other,
                    };
                    protocols
                        .entry(port)
                        .or_default()
                        .entry(proto.to_string())
                        .or_default()
                        .push(s.full_name());
                    let target = match &p["targetPort"] {
                        Value::String(t) if !t.is_empty() => t.clone(),
                        v => match number(v) {
                            Some(n) if n != 0 => n.to_string(),
                            _ => port.to_string(),
                        },
                    };
                    targets
                        .entry(target)
                        .or_default()
                        .insert(port, s.full_name());
                }
            }
            for (port, by_proto) in &protocols {
                if by_proto.len() > 1 {
                    let names: BTreeSet<&String> = by_proto.values().flatten().collect();
                    let names: Vec<&String> = names.into_iter().collect();
                    out.push(Message::new(
                        msg::DEPLOYMENT_MULTIPLE_SERVICES,
                        d,
                        format!(
                            "This deployment {} is associated with multiple services using port {port} but different protocols: {}",
                            d.name,
                            list(&names)
                        ),
                    ).hint("give the port one protocol in every Service that selects these pods"));
                }
            }
            for (target, ports) in &targets {
                if ports.len() > 1 {
                    let names: BTreeSet<&String> = ports.values().collect();
                    let names: Vec<&String> = names.into_iter().collect();
                    let numbers: Vec<String> = ports.keys().map(i64::to_string).collect();
                    out.push(Message::new(
                        msg::DEPLOYMENT_CONFLICTING_PORTS,
                        d,
                        format!(
                            "This deployment {} is associated with multiple services {} using targetPort {} but different ports: {}.",
                            d.name,
                            list(&names),
                            q(target),
                            list(&numbers)
                        ),
                    ).hint("use the same port number for the targetPort in every Service"));
                }
            }
        }
        for m in out {
            ctx.report(m);
        }
    }
}

analyzer!(
    ApplicationUidAnalyzer,
    "deployment.ApplicationUIDAnalyzer",
    [msg::INVALID_APPLICATION_UID]
);

fn runs_as_proxy_uid(spec: &Value) -> bool {
    let uid = |sc: &Value| number(&sc["runAsUser"]) == Some(1337);
    uid(&spec["securityContext"])
        || items(&spec["containers"]).iter().any(|c| {
            !matches!(text(&c["name"]), "istio-proxy" | "istio-operator")
                && uid(&c["securityContext"])
        })
}

impl ApplicationUidAnalyzer {
    fn run(&self, ctx: &mut Context<'_>) {
        let mut out = Vec::new();
        let objects = ctx.kind("", "Pod").iter().map(|p| (*p, p.spec())).chain(
            ctx.kind("apps", "Deployment")
                .iter()
                .map(|d| (*d, &d.spec()["template"]["spec"])),
        );
        for (o, spec) in objects {
            if istio_control_plane(o) || ctx.is_synthetic(o) {
                continue;
            }
            if runs_as_proxy_uid(spec) {
                out.push(
                    Message::new(
                        msg::INVALID_APPLICATION_UID,
                        o,
                        "User ID (UID) 1337 is reserved for the sidecar proxy.",
                    )
                    .hint("run the application as another UID: the proxy's own traffic (UID 1337) bypasses capture"),
                );
            }
        }
        for m in out {
            ctx.report(m);
        }
    }
}
