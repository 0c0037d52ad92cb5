//! DestinationRule analyzers: TLS origination without CA, hosts and subsets that match
//! nothing (Istio's `analyzers/destinationrule`).

use serde_json::Value;

use super::{NET, analyzer};
use crate::context::Context;
use crate::hosts::ServiceHosts;
use crate::labels::set_matches;
use crate::message::{self as msg, Message};
use crate::object::{Labels, Object, items, number, string_map, strings, text};

analyzer!(
    CaCertificateAnalyzer,
    "destinationrule.CaCertificateAnalyzer",
    [
        msg::NO_SERVER_CERT_VERIFICATION_DR,
        msg::NO_SERVER_CERT_VERIFICATION_PORT
    ]
);

/// TLS settings that originate TLS without a CA to check the server with: SIMPLE or MUTUAL
/// without `caCertificates`, unless a `credentialName` (which carries the CA) is usable here
/// (a DestinationRule with a workload selector) or verification is explicitly skipped.
fn unverified(dr: &Object, tls: &Value) -> Option<&'static str> {
    let mode = match text(&tls["mode"]) {
        "SIMPLE" => "SIMPLE",
        "MUTUAL" => "MUTUAL",
        _ => return None,
    };
    let credential_usable =
        !text(&tls["credentialName"]).is_empty() && !dr.spec()["workloadSelector"].is_null();
    let skip = tls["insecureSkipVerify"] == Value::Bool(true);
    (text(&tls["caCertificates"]).is_empty() && !credential_usable && !skip).then_some(mode)
}

impl CaCertificateAnalyzer {
    fn run(&self, ctx: &mut Context<'_>) {
        let mut out = Vec::new();
        for dr in ctx.kind(NET, "DestinationRule") {
            let host = text(&dr.spec()["host"]);
            let tp = &dr.spec()["trafficPolicy"];
            let hint = "set caCertificates (or a credentialName with a workloadSelector) so the client verifies the server";
            if let Some(mode) = unverified(dr, &tp["tls"]) {
                out.push(Message::new(
                    msg::NO_SERVER_CERT_VERIFICATION_DR,
                    dr,
                    format!(
                        "DestinationRule {} in namespace {} has TLS mode set to {mode} but no caCertificates are set to validate server identity for host: {host}",
                        dr.full_name(),
                        dr.namespace
                    ),
                ).hint(hint));
            }
            for p in items(&tp["portLevelSettings"]) {
                if let Some(mode) = unverified(dr, &p["tls"]) {
                    let port = number(&p["port"]["number"]).unwrap_or(0);
                    out.push(Message::new(
                        msg::NO_SERVER_CERT_VERIFICATION_PORT,
                        dr,
                        format!(
                            "DestinationRule {} in namespace {} has TLS mode set to {mode} but no caCertificates are set to validate server identity for host: {host} at port number:{port}",
                            dr.full_name(),
                            dr.namespace
                        ),
                    ).hint(hint));
                }
            }
        }
        for m in out {
            ctx.report(m);
        }
    }
}

analyzer!(
    PodNotSelectedAnalyzer,
    "destinationrule.PodNotSelectedAnalyzer",
    [msg::UNKNOWN_DR_HOST, msg::DR_SUBSET_NOT_SELECT_PODS]
);

/// A workload's labels with the topology labels Istio's registry adds from its node.
pub(crate) fn augmented_labels(ctx: &Context<'_>, labels: &Labels, spec: &Value) -> Labels {
    let mut out = labels.clone();
    let node_name = text(&spec["nodeName"]);
    if node_name.is_empty() {
        return out;
    }
    if let Some(node) = ctx.find("", "Node", "", node_name) {
        let nl = node.labels();
        for key in [
            "topology.kubernetes.io/region",
            "topology.kubernetes.io/zone",
            "topology.istio.io/subzone",
        ] {
            if let Some(v) = nl.get(key).filter(|v| !v.is_empty()) {
                out.insert(key.to_string(), v.clone());
            }
        }
    }
    out.insert("kubernetes.io/hostname".to_string(), node_name.to_string());
    out
}

impl PodNotSelectedAnalyzer {
    fn run(&self, ctx: &mut Context<'_>) {
        let services = ServiceHosts::new(ctx);
        let check_subsets =
            ctx.has_workloads() || !ctx.options.skip_workload_checks_without_workloads;
        let workload_labels: Vec<Labels> = ctx
            .workloads()
            .iter()
            .map(|w| augmented_labels(ctx, &w.labels, w.spec))
            .collect();
        let mut out = Vec::new();
        for dr in ctx.kind(NET, "DestinationRule") {
            let host = text(&dr.spec()["host"]);
            let export = strings(&dr.spec()["exportTo"]);
            let Some(svc) = services.lookup(&dr.namespace, &export, host) else {
                out.push(
                    Message::new(
                        msg::UNKNOWN_DR_HOST,
                        dr,
                        format!(
                            "The host {host} defined in the DestinationRule does not match any services in the mesh."
                        ),
                    )
                    .hint("apply a Service or ServiceEntry for the host, or fix spec.host"),
                );
                continue;
            };
            if !check_subsets {
                continue;
            }
            for s in items(&dr.spec()["subsets"]) {
                let mut sel = svc.workload_selector.clone();
                sel.extend(string_map(&s["labels"]));
                if !workload_labels.iter().any(|l| set_matches(&sel, l)) {
                    out.push(Message::new(
                        msg::DR_SUBSET_NOT_SELECT_PODS,
                        dr,
                        format!(
                            "The Subset {} defined in the DestinationRule does not select any pods. Which may lead to 503 UH (NoHealthyUpstream).",
                            text(&s["name"])
                        ),
                    ).hint("fix the subset's labels, or deploy workloads that carry them"));
                }
            }
        }
        for m in out {
            ctx.report(m);
        }
    }
}
