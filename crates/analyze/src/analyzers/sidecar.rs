//! Sidecar workload selectors (Istio's `analyzers/sidecar`).

use std::collections::BTreeMap;

use super::{NET, analyzer};
use crate::context::{Context, Workload};
use crate::labels::{set_matches, set_string};
use crate::message::{self as msg, Message, list, q};
use crate::object::{Object, string_map};

/// Whether a workload is enrolled in ambient mode (it then has no sidecar).
pub(crate) fn workload_ambient(w: &Workload<'_>) -> bool {
    w.annotations
        .get("ambient.istio.io/redirection")
        .is_some_and(|v| v == "enabled")
}

/// Whether a namespace is in ambient mode (and not also labelled for sidecar injection).
pub(crate) fn namespace_ambient(ns: Option<&Object>) -> bool {
    let Some(ns) = ns else {
        return false;
    };
    let l = ns.labels();
    if l.get("istio-injection").is_some_and(|v| v == "enabled")
        || l.get("istio.io/rev").is_some_and(|v| !v.is_empty())
    {
        return false;
    }
    l.get("istio.io/dataplane-mode")
        .is_some_and(|v| v == "ambient")
}

analyzer!(
    SelectorAnalyzer,
    "sidecar.SelectorAnalyzer",
    [
        msg::REFERENCED_RESOURCE_NOT_FOUND,
        msg::CONFLICTING_SIDECAR_SELECTORS,
        msg::MULTIPLE_SIDECARS_WITHOUT_SELECTOR,
        msg::INEFFECTIVE_POLICY
    ]
);

impl SelectorAnalyzer {
    fn run(&self, ctx: &mut Context<'_>) {
        let check_selectors =
            ctx.has_workloads() || !ctx.options.skip_workload_checks_without_workloads;
        let mut by_workload: BTreeMap<(String, String, String), (usize, Vec<&Object>)> =
            BTreeMap::new();
        let mut by_namespace: BTreeMap<String, Vec<&Object>> = BTreeMap::new();
        let mut out = Vec::new();
        for sc in ctx.kind(NET, "Sidecar") {
            let sel = string_map(&sc.spec()["workloadSelector"]["labels"]);
            if sel.is_empty() {
                by_namespace
                    .entry(sc.namespace.clone())
                    .or_default()
                    .push(sc);
                continue;
            }
            if !check_selectors {
                continue;
            }
            let mut found = false;
            for (i, w) in ctx.workloads().iter().enumerate() {
                if w.namespace == sc.namespace && set_matches(&sel, &w.labels) {
                    found = true;
                    by_workload
                        .entry((w.object.kind.clone(), w.namespace.clone(), w.name.clone()))
                        .or_insert((i, Vec::new()))
                        .1
                        .push(sc);
                }
            }
            if !found {
                out.push(
                    Message::new(
                        msg::REFERENCED_RESOURCE_NOT_FOUND,
                        sc,
                        format!("Referenced selector not found: {}", q(&set_string(&sel))),
                    )
                    .hint(
                        "no workload in the namespace has these labels: fix spec.workloadSelector",
                    ),
                );
            }
        }
        let mut ineffective = std::collections::BTreeSet::new();
        for ((_, ns, name), (i, sidecars)) in &by_workload {
            let w = &ctx.workloads()[*i];
            let ambient = workload_ambient(w);
            if sidecars.len() == 1 && !ambient {
                continue;
            }
            let names: Vec<&str> = sidecars.iter().map(|s| s.name.as_str()).collect();
            for sc in sidecars {
                if ambient {
                    if ineffective.insert(sc.full_name()) {
                        out.push(ineffective_policy(
                            sc,
                            "selected workload is in ambient mode, the policy has no impact",
                        ));
                    }
                    continue;
                }
                out.push(Message::new(
                    msg::CONFLICTING_SIDECAR_SELECTORS,
                    sc,
                    format!(
                        "The Sidecars {} in namespace {} select the same workload pod {}, which can lead to undefined behavior.",
                        list(&names),
                        q(ns),
                        q(name)
                    ),
                ).hint("select each workload from one Sidecar only"));
            }
        }
        for (ns, sidecars) in &by_namespace {
            if namespace_ambient(ctx.namespace(ns)) {
                for sc in sidecars {
                    if ineffective.insert(sc.full_name()) {
                        out.push(ineffective_policy(
                            sc,
                            "namespace is in ambient mode, the policy has no impact",
                        ));
                    }
                }
                continue;
            }
            if sidecars.len() > 1 {
                let names: Vec<&str> = sidecars.iter().map(|s| s.name.as_str()).collect();
                for sc in sidecars {
                    out.push(Message::new(
                        msg::MULTIPLE_SIDECARS_WITHOUT_SELECTOR,
                        sc,
                        format!(
                            "The Sidecars {} in namespace {} have no workload selector, which can lead to undefined behavior.",
                            list(&names),
                            q(ns)
                        ),
                    ).hint("keep one namespace-wide Sidecar; give the others a workloadSelector"));
                }
            }
        }
        for m in out {
            ctx.report(m);
        }
    }
}

fn ineffective_policy(on: &Object, reason: &str) -> Message {
    Message::new(
        msg::INEFFECTIVE_POLICY,
        on,
        format!("The policy has no impact: {reason}."),
    )
}
