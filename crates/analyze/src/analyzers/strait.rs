//! Strait's own checks (`STR0xxx`): mistakes Istio users run into that `istioctl analyze` does
//! not report. See `docs/analyze.md` for each code.

use std::collections::BTreeSet;

use serde_json::Value;

use super::policy::{in_mesh, known_namespaces};
use super::{NET, SEC, analyzer};
use crate::context::{Context, Workload};
use crate::hosts::{self, ServiceHosts};
use crate::labels::{set_matches, set_string};
use crate::message::{self as msg, Message, q};
use crate::object::{Labels, Object, items, string_map, strings, text};

/// The label sets of a service's endpoints: the workloads its selector picks (Pods,
/// WorkloadEntries, Deployments), and a ServiceEntry's inline endpoints. `None` when the
/// endpoints cannot be known (a Service without selector, a ServiceEntry resolved by DNS).
fn endpoint_labels(ctx: &Context<'_>, svc: &hosts::Service<'_>) -> Option<Vec<Labels>> {
    let ns = &svc.object.namespace;
    let selector = match &svc.pod_selector {
        Some(sel) if sel.is_empty() => return None,
        Some(sel) => sel.clone(),
        None if !svc.workload_selector.is_empty() => svc.workload_selector.clone(),
        None => {
            let inline: Vec<Labels> = items(&svc.object.spec()["endpoints"])
                .iter()
                .map(|e| string_map(&e["labels"]))
                .collect();
            return (!inline.is_empty()).then_some(inline);
        }
    };
    Some(
        ctx.workloads()
            .iter()
            .filter(|w| &w.namespace == ns && !w.synthetic && set_matches(&selector, &w.labels))
            .map(|w| w.labels.clone())
            .collect(),
    )
}

analyzer!(
    TlsModeAnalyzer,
    "strait.DestinationRuleTLSAnalyzer",
    [msg::DR_TLS_CONFLICTS_WITH_PEER_AUTHN]
);

/// The mTLS mode a PeerAuthentication sets, if it sets one.
fn pa_mode(pa: &Object) -> Option<&str> {
    match text(&pa.spec()["mtls"]["mode"]) {
        "" | "UNSET" => None,
        m => Some(m),
    }
}

/// The PeerAuthentication mode in effect for workloads with `labels` in `ns`, and where it
/// comes from: a workload policy, else the namespace's, else the mesh's (root namespace).
fn effective_mode<'a>(
    ctx: &Context<'a>,
    ns: &str,
    labels: &[Labels],
) -> Option<(String, &'a Object)> {
    let pas = ctx.kind(SEC, "PeerAuthentication");
    let selected = pas.iter().find(|p| {
        let sel = string_map(&p.spec()["selector"]["matchLabels"]);
        p.namespace == ns
            && !sel.is_empty()
            && pa_mode(p).is_some()
            && labels.iter().any(|l| set_matches(&sel, l))
    });
    let namespace_wide = |n: &str| {
        pas.iter().find(|p| {
            p.namespace == n
                && string_map(&p.spec()["selector"]["matchLabels"]).is_empty()
                && pa_mode(p).is_some()
        })
    };
    let root = ctx.root_namespace();
    let pa = selected
        .or_else(|| namespace_wide(ns))
        .or_else(|| namespace_wide(&root))?;
    Some((pa_mode(pa)?.to_string(), pa))
}

impl TlsModeAnalyzer {
    fn run(&self, ctx: &mut Context<'_>) {
        let services = ServiceHosts::new(ctx);
        let mut out = Vec::new();
        for dr in ctx.kind(NET, "DestinationRule") {
            let host = text(&dr.spec()["host"]);
            let export = strings(&dr.spec()["exportTo"]);
            let Some(svc) = services.lookup(&dr.namespace, &export, host) else {
                continue;
            };
            // Only destinations inside the mesh have a PeerAuthentication.
            let labels = match &svc.pod_selector {
                Some(sel) => {
                    let mut l = endpoint_labels(ctx, svc).unwrap_or_default();
                    if l.is_empty() {
                        l.push(sel.clone());
                    }
                    l
                }
                None if !svc.workload_selector.is_empty() => {
                    let mut l = endpoint_labels(ctx, svc).unwrap_or_default();
                    l.push(svc.workload_selector.clone());
                    l
                }
                None => continue,
            };
            let Some((mode, pa)) = effective_mode(ctx, &svc.object.namespace, &labels) else {
                continue;
            };
            let spec = dr.spec();
            let mut settings: Vec<(String, &Value)> =
                vec![("trafficPolicy".into(), &spec["trafficPolicy"])];
            for s in items(&spec["subsets"]) {
                settings.push((format!("subset {}", text(&s["name"])), &s["trafficPolicy"]));
            }
            for (at, tp) in settings {
                let mut tls = vec![(at.clone(), &tp["tls"])];
                for p in items(&tp["portLevelSettings"]) {
                    tls.push((
                        format!(
                            "{at} port {}",
                            crate::object::number(&p["port"]["number"]).unwrap_or(0)
                        ),
                        &p["tls"],
                    ));
                }
                for (where_, t) in tls {
                    let dr_mode = text(&t["mode"]);
                    let conflict = match (dr_mode, mode.as_str()) {
                        ("DISABLE", "STRICT") => Some("sends plaintext"),
                        ("SIMPLE", "STRICT") => {
                            Some("originates TLS without an Istio client certificate")
                        }
                        ("ISTIO_MUTUAL", "DISABLE") => Some("sends Istio mutual TLS"),
                        _ => None,
                    };
                    if let Some(what) = conflict {
                        out.push(Message::new(
                            msg::DR_TLS_CONFLICTS_WITH_PEER_AUTHN,
                            dr,
                            format!(
                                "DestinationRule {} {what} (tls.mode {dr_mode} in {where_}) to {host}, but PeerAuthentication {} sets mTLS mode {mode} for its workloads: requests fail with 503 (upstream connect error or disconnect/reset before headers).",
                                dr.full_name(),
                                pa.full_name()
                            ),
                        ).hint(if mode == "STRICT" {
                            "use tls.mode ISTIO_MUTUAL or drop the tls block (auto mTLS), or make the PeerAuthentication PERMISSIVE"
                        } else {
                            "use tls.mode DISABLE for this host, or set the PeerAuthentication to PERMISSIVE or STRICT"
                        }));
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
    AllowPolicyCoverageAnalyzer,
    "strait.AuthorizationPolicyCoverageAnalyzer",
    [msg::WORKLOAD_NOT_COVERED_BY_ALLOW_POLICY],
    workloads
);

fn is_allow(ap: &Object) -> bool {
    matches!(text(&ap.spec()["action"]), "" | "ALLOW")
}

fn has_target_ref(o: &Object) -> bool {
    !o.spec()["targetRef"].is_null() || !items(&o.spec()["targetRefs"]).is_empty()
}

impl AllowPolicyCoverageAnalyzer {
    fn run(&self, ctx: &mut Context<'_>) {
        let root = ctx.root_namespace();
        let allow: Vec<&Object> = ctx
            .kind(SEC, "AuthorizationPolicy")
            .iter()
            .copied()
            .filter(|ap| is_allow(ap) && !has_target_ref(ap))
            .collect();
        let selector_of = |ap: &Object| -> Option<Labels> {
            let sel = &ap.spec()["selector"];
            (!sel.is_null()).then(|| string_map(&sel["matchLabels"]))
        };
        // A mesh-wide policy without selector covers every workload.
        if allow
            .iter()
            .any(|ap| ap.namespace == root && selector_of(ap).is_none())
        {
            return;
        }
        let namespaces: BTreeSet<&str> = allow
            .iter()
            .filter(|ap| ap.namespace != root)
            .map(|ap| ap.namespace.as_str())
            .collect();
        let mut out = Vec::new();
        for ns in namespaces {
            let here: Vec<&&Object> = allow.iter().filter(|ap| ap.namespace == ns).collect();
            if here.iter().any(|ap| selector_of(ap).is_none()) {
                continue; // a namespace-wide ALLOW policy covers everything in it
            }
            let covers = |w: &Workload<'_>| {
                allow.iter().any(|ap| {
                    (ap.namespace == ns || ap.namespace == root)
                        && selector_of(ap).is_some_and(|s| set_matches(&s, &w.labels))
                })
            };
            let names: Vec<String> = here.iter().map(|ap| ap.name.clone()).collect();
            for w in ctx.workloads() {
                if w.namespace != ns || w.synthetic || !in_mesh(ctx, w) || covers(w) {
                    continue;
                }
                out.push(Message::new(
                    msg::WORKLOAD_NOT_COVERED_BY_ALLOW_POLICY,
                    w.object,
                    format!(
                        "{} {} is selected by no ALLOW AuthorizationPolicy, while {} in namespace {ns} select other workloads: it accepts every request no DENY policy refuses.",
                        w.object.kind,
                        w.name,
                        names.join(", ")
                    ),
                ).hint(format!(
                    "add its labels ({}) to an ALLOW policy's selector, or add a namespace-wide ALLOW policy to {ns}",
                    set_string(&w.labels)
                )));
            }
        }
        for m in out {
            ctx.report(m);
        }
    }
}

analyzer!(
    ShadowedRouteAnalyzer,
    "strait.VirtualServiceShadowedRouteAnalyzer",
    [msg::VS_ROUTE_SHADOWED]
);

/// Whether an HTTP match matches every request: no condition but a URI prefix `/` or a regex
/// that matches anything.
fn catch_all(m: &Value) -> Option<String> {
    let obj = m.as_object()?;
    for (k, v) in obj {
        match k.as_str() {
            "name" | "statPrefix" | "ignoreUriCase" => {}
            "uri" => {}
            _ if v.is_null() => {}
            _ => return None,
        }
    }
    let uri = &m["uri"];
    if uri.is_null() {
        return Some("an empty match".into());
    }
    match (uri["prefix"].as_str(), uri["regex"].as_str()) {
        (Some("/"), _) => Some("uri prefix \"/\"".into()),
        (_, Some(r @ (".*" | ".+" | "/.*" | "^.*$" | "^/.*$" | "^/.*" | "/.+"))) => {
            Some(format!("uri regex {}", q(r)))
        }
        _ => None,
    }
}

/// A match without its name, for comparing matches as Istio does.
fn unnamed(m: &Value) -> Value {
    let mut m = m.clone();
    if let Some(o) = m.as_object_mut() {
        o.remove("name");
    }
    m
}

fn rule_name(r: &Value, n: usize) -> String {
    match text(&r["name"]) {
        "" => format!("#{n}"),
        name => q(name),
    }
}

impl ShadowedRouteAnalyzer {
    fn run(&self, ctx: &mut Context<'_>) {
        let mut out = Vec::new();
        for vs in ctx.kind(NET, "VirtualService") {
            let rules = items(&vs.spec()["http"]);
            let Some((k, what)) = rules.iter().enumerate().find_map(|(k, r)| {
                items(&r["match"])
                    .iter()
                    .find_map(catch_all)
                    .map(|w| (k, w))
            }) else {
                continue;
            };
            let earlier: Vec<Value> = rules[..k]
                .iter()
                .chain(std::iter::once(&rules[k]))
                .flat_map(|r| items(&r["match"]).iter().map(unnamed))
                .collect();
            for (j, r) in rules.iter().enumerate().skip(k + 1) {
                let matches = items(&r["match"]);
                // Istio reports a rule without matches after another, and one whose every
                // match repeats an earlier one (IST0130).
                if matches.is_empty() || matches.iter().all(|m| earlier.contains(&unnamed(m))) {
                    continue;
                }
                out.push(Message::new(
                    msg::VS_ROUTE_SHADOWED,
                    vs,
                    format!(
                        "VirtualService rule {} can never match: rule {} before it matches every request ({what}).",
                        rule_name(r, j),
                        rule_name(&rules[k], k)
                    ),
                ).hint(format!(
                    "move rule {} before rule {}, or narrow rule {}'s match",
                    rule_name(r, j),
                    rule_name(&rules[k], k),
                    rule_name(&rules[k], k)
                )));
            }
        }
        for m in out {
            ctx.report(m);
        }
    }
}

analyzer!(
    SubsetEndpointAnalyzer,
    "strait.DestinationRuleSubsetEndpointAnalyzer",
    [msg::DR_SUBSET_SELECTS_NO_ENDPOINT],
    workloads
);

impl SubsetEndpointAnalyzer {
    fn run(&self, ctx: &mut Context<'_>) {
        let services = ServiceHosts::new(ctx);
        let mut out = Vec::new();
        for dr in ctx.kind(NET, "DestinationRule") {
            let host = text(&dr.spec()["host"]);
            let export = strings(&dr.spec()["exportTo"]);
            let Some(svc) = services.lookup(&dr.namespace, &export, host) else {
                continue;
            };
            let Some(endpoints) = endpoint_labels(ctx, svc) else {
                continue;
            };
            for s in items(&dr.spec()["subsets"]) {
                let labels = string_map(&s["labels"]);
                if endpoints.iter().any(|e| set_matches(&labels, e)) {
                    continue;
                }
                // When no workload anywhere has these labels, Istio's IST0173 says so.
                let mut istio = svc.workload_selector.clone();
                istio.extend(labels.clone());
                if !ctx
                    .workloads()
                    .iter()
                    .any(|w| set_matches(&istio, &w.labels))
                {
                    continue;
                }
                let sample = endpoints
                    .first()
                    .map(|l| format!("one has {}", set_string(l)))
                    .unwrap_or_else(|| "it has none".to_string());
                out.push(Message::new(
                    msg::DR_SUBSET_SELECTS_NO_ENDPOINT,
                    dr,
                    format!(
                        "Subset {} ({}) selects none of the {} endpoints of {} {}: requests routed to it fail with 503 (no healthy upstream).",
                        text(&s["name"]),
                        set_string(&labels),
                        endpoints.len(),
                        svc.object.kind,
                        svc.object.full_name()
                    ),
                ).hint(format!(
                    "the labels match workloads outside the service; use labels its endpoints carry ({sample})"
                )));
            }
        }
        for m in out {
            ctx.report(m);
        }
    }
}

analyzer!(
    SidecarEgressAnalyzer,
    "strait.SidecarEgressHostAnalyzer",
    [msg::SIDECAR_EGRESS_HOST_NOT_FOUND]
);

impl SidecarEgressAnalyzer {
    fn run(&self, ctx: &mut Context<'_>) {
        let namespaces = known_namespaces(ctx);
        // (namespace, host) of every Service and ServiceEntry host.
        let mut known: Vec<(String, String)> = Vec::new();
        for s in ctx.kind("", "Service") {
            known.push((s.namespace.clone(), hosts::fqdn(&s.namespace, &s.name)));
        }
        for se in ctx.kind(NET, "ServiceEntry") {
            for h in strings(&se.spec()["hosts"]) {
                known.push((se.namespace.clone(), hosts::fqdn(&se.namespace, &h)));
            }
        }
        let mut out = Vec::new();
        for sc in ctx.kind(NET, "Sidecar") {
            for e in items(&sc.spec()["egress"]) {
                for entry in strings(&e["hosts"]) {
                    let Some((ns, host)) = entry.split_once('/') else {
                        continue;
                    };
                    let ns = match ns {
                        "~" => continue,
                        "." => sc.namespace.as_str(),
                        other => other,
                    };
                    if ns != "*" && !namespaces.iter().any(|n| n == ns) {
                        out.push(Message::new(
                            msg::SIDECAR_EGRESS_HOST_NOT_FOUND,
                            sc,
                            format!("Sidecar egress host {} names namespace {}, which does not exist.", q(&entry), q(ns)),
                        ).hint("fix the namespace part (ns/host, ./host or */host)"));
                        continue;
                    }
                    if host == "*" || host.starts_with('*') {
                        continue;
                    }
                    let found = known
                        .iter()
                        .any(|(n, h)| (ns == "*" || n == ns) && hosts::matches(host, h));
                    if !found {
                        out.push(Message::new(
                            msg::SIDECAR_EGRESS_HOST_NOT_FOUND,
                            sc,
                            format!(
                                "Sidecar egress host {} matches no Service or ServiceEntry{}: the workloads cannot reach it.",
                                q(&entry),
                                if ns == "*" { String::new() } else { format!(" in namespace {ns}") }
                            ),
                        ).hint("egress hosts are fully qualified (reviews.prod.svc.cluster.local) or wildcards; fix the host or the namespace"));
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
    PrincipalAnalyzer,
    "strait.AuthorizationPolicyPrincipalAnalyzer",
    [msg::AUTHZ_PRINCIPAL_NOT_FOUND]
);

impl PrincipalAnalyzer {
    fn run(&self, ctx: &mut Context<'_>) {
        let accounts: Vec<(&str, &str)> = ctx
            .kind("", "ServiceAccount")
            .iter()
            .map(|s| (s.namespace.as_str(), s.name.as_str()))
            .collect();
        let mut out = Vec::new();
        for ap in ctx.kind(SEC, "AuthorizationPolicy") {
            for rule in items(&ap.spec()["rules"]) {
                for from in items(&rule["from"]) {
                    let src = &from["source"];
                    for p in strings(&src["principals"])
                        .into_iter()
                        .chain(strings(&src["notPrincipals"]))
                    {
                        if p.contains('*') {
                            continue;
                        }
                        let parts: Vec<&str> = p.split('/').collect();
                        let [_, "ns", ns, "sa", sa] = parts.as_slice() else {
                            continue;
                        };
                        // Only namespaces whose service accounts the input lists can be judged;
                        // every namespace has `default`.
                        if *sa == "default" || !accounts.iter().any(|(n, _)| n == ns) {
                            continue;
                        }
                        if !accounts.iter().any(|(n, s)| n == ns && s == sa) {
                            out.push(Message::new(
                                msg::AUTHZ_PRINCIPAL_NOT_FOUND,
                                ap,
                                format!(
                                    "Principal {} names service account {sa} in namespace {ns}, which does not exist: the rule never matches it.",
                                    q(&p)
                                ),
                            ).hint("create the ServiceAccount, or fix the principal (<trust domain>/ns/<namespace>/sa/<name>)"));
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
    PeerAuthenticationSelectorAnalyzer,
    "strait.PeerAuthenticationSelectorAnalyzer",
    [msg::PEER_AUTHN_SELECTS_NO_WORKLOAD],
    workloads
);

impl PeerAuthenticationSelectorAnalyzer {
    fn run(&self, ctx: &mut Context<'_>) {
        let mut out = Vec::new();
        for pa in ctx.kind(SEC, "PeerAuthentication") {
            let sel = string_map(&pa.spec()["selector"]["matchLabels"]);
            if sel.is_empty() {
                continue;
            }
            let found = ctx.workloads().iter().any(|w| {
                w.namespace == pa.namespace && !w.synthetic && set_matches(&sel, &w.labels)
            });
            if !found {
                out.push(Message::new(
                    msg::PEER_AUTHN_SELECTS_NO_WORKLOAD,
                    pa,
                    format!(
                        "PeerAuthentication selects no workload in namespace {} ({}): its mTLS settings apply to nothing.",
                        pa.namespace,
                        set_string(&sel)
                    ),
                ).hint("fix spec.selector.matchLabels, or move the policy to the workloads' namespace"));
            }
        }
        for m in out {
            ctx.report(m);
        }
    }
}
