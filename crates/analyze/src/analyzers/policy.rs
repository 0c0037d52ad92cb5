//! Security policy analyzers: AuthorizationPolicy workloads and namespaces, JWKS fetch limits
//! (Istio's `analyzers/authz` and `analyzers/authn`).

use std::collections::BTreeMap;

use super::{SEC, analyzer};
use crate::context::{Context, Workload};
use crate::labels::{set_matches, set_string};
use crate::message::{self as msg, Message, q};
use crate::object::{Labels, items, string_map, strings, text};

/// Istio's `PodInMesh`: a proxy container, or injection asked for by the pod's label,
/// annotation or namespace. Strait's workloads (WorkloadEntries, Deployments) always run with
/// a proxy; ambient pods count too.
pub(crate) fn in_mesh(ctx: &Context<'_>, w: &Workload<'_>) -> bool {
    if !w.is_pod() {
        return true;
    }
    if w.proxy_image().is_some_and(|i| !i.is_empty()) {
        return true;
    }
    if super::sidecar::workload_ambient(w) {
        return true;
    }
    if let Some(v) = w.labels.get("sidecar.istio.io/inject") {
        return v == "true";
    }
    if let Some(v) = w.annotations.get("sidecar.istio.io/inject") {
        return v == "true";
    }
    ctx.namespace(&w.namespace)
        .is_some_and(|ns| ns.label("istio-injection") == Some("enabled"))
}

/// Istio's namespace expressions: `*`, `prefix*`, `*suffix` or a name.
pub(crate) fn namespace_match(ns: &str, exp: &str) -> bool {
    if exp == "*" {
        return true;
    }
    if let Some(suffix) = exp.strip_prefix('*') {
        return ns.ends_with(suffix);
    }
    if let Some(prefix) = exp.strip_suffix('*') {
        return ns.starts_with(prefix);
    }
    ns.eq_ignore_ascii_case(exp)
}

/// The namespaces that exist: Namespace objects, and on Strait's platform (where namespaces
/// need no object) Istio's own and every namespace something lives in.
pub(crate) fn known_namespaces(ctx: &Context<'_>) -> Vec<String> {
    let mut out: Vec<String> = ctx
        .kind("", "Namespace")
        .iter()
        .map(|n| n.name.clone())
        .collect();
    if ctx.options.strait_platform {
        out.push(ctx.options.istio_namespace.clone());
        out.push(ctx.root_namespace());
        out.extend(
            ctx.objects()
                .iter()
                .filter(|o| !o.namespace.is_empty() && !ctx.is_synthetic(o))
                .map(|o| o.namespace.clone()),
        );
    }
    out.sort();
    out.dedup();
    out
}

analyzer!(
    AuthorizationPoliciesAnalyzer,
    "authz.AuthorizationPoliciesAnalyzer",
    [
        msg::NO_MATCHING_WORKLOADS,
        msg::REFERENCED_RESOURCE_NOT_FOUND
    ]
);

impl AuthorizationPoliciesAnalyzer {
    fn run(&self, ctx: &mut Context<'_>) {
        let check_workloads =
            ctx.has_workloads() || !ctx.options.skip_workload_checks_without_workloads;
        let mut by_ns: BTreeMap<String, Vec<Labels>> = BTreeMap::new();
        for w in ctx.workloads() {
            let entry = by_ns.entry(w.namespace.clone()).or_default();
            if in_mesh(ctx, w) {
                entry.push(w.labels.clone());
            }
        }
        let root = ctx.root_namespace();
        let namespaces = known_namespaces(ctx);
        let mut out = Vec::new();
        for ap in ctx.kind(SEC, "AuthorizationPolicy") {
            let selector = &ap.spec()["selector"];
            let sel = string_map(&selector["matchLabels"]);
            let no_workloads = |labels: String| {
                Message::new(
                    msg::NO_MATCHING_WORKLOADS,
                    ap,
                    format!(
                        "No matching workloads for this resource with the following labels: {labels}"
                    ),
                )
                .hint("the policy applies to nothing: fix spec.selector or the namespace")
            };
            if check_workloads {
                if ap.namespace == root {
                    if !selector.is_null()
                        && !by_ns.values().flatten().any(|l| set_matches(&sel, l))
                    {
                        out.push(no_workloads(set_string(&sel)));
                    }
                } else if selector.is_null() {
                    if by_ns.get(&ap.namespace).is_none_or(Vec::is_empty) {
                        out.push(no_workloads(String::new()));
                    }
                } else if !by_ns
                    .get(&ap.namespace)
                    .into_iter()
                    .flatten()
                    .any(|l| set_matches(&sel, l))
                {
                    out.push(no_workloads(set_string(&sel)));
                }
            }
            for rule in items(&ap.spec()["rules"]) {
                for from in items(&rule["from"]) {
                    let src = &from["source"];
                    for exp in strings(&src["namespaces"])
                        .into_iter()
                        .chain(strings(&src["notNamespaces"]))
                    {
                        if !namespaces.iter().any(|ns| namespace_match(ns, &exp)) {
                            out.push(
                                Message::new(
                                    msg::REFERENCED_RESOURCE_NOT_FOUND,
                                    ap,
                                    format!("Referenced namespace not found: {}", q(&exp)),
                                )
                                .hint("no namespace matches: fix the name or pattern"),
                            );
                        }
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
    BlockedCidrsAnalyzer,
    "authn.BlockedCIDRsAnalyzer",
    [msg::JWKS_URI_FETCH_UNRESTRICTED]
);

impl BlockedCidrsAnalyzer {
    fn run(&self, ctx: &mut Context<'_>) {
        let names: Vec<String> = ctx
            .kind(SEC, "RequestAuthentication")
            .iter()
            .map(|r| r.full_name())
            .collect();
        if names.is_empty() {
            return;
        }
        let shown = if names.len() <= 5 {
            names.join(", ")
        } else {
            format!("{}, and {} more", names[..5].join(", "), names.len() - 5)
        };
        let mut out = Vec::new();
        for d in ctx.kind("apps", "Deployment") {
            if d.label("app") != Some("istiod") {
                continue;
            }
            let configured = items(&d.spec()["template"]["spec"]["containers"])
                .iter()
                .flat_map(|c| items(&c["env"]))
                .any(|e| {
                    e["name"] == "BLOCKED_CIDRS_IN_JWKS_URIS" && !text(&e["value"]).is_empty()
                });
            if !configured {
                out.push(Message::new(
                    msg::JWKS_URI_FETCH_UNRESTRICTED,
                    d,
                    format!(
                        "BLOCKED_CIDRS_IN_JWKS_URIS is not configured but {} RequestAuthentication resource(s) exist ({shown}). Consider configuring it to restrict JWKS URI fetches to trusted networks.",
                        names.len()
                    ),
                ).hint("set the BLOCKED_CIDRS_IN_JWKS_URIS environment variable on istiod"));
            }
        }
        for m in out {
            ctx.report(m);
        }
    }
}
