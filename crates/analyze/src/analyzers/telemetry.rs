//! Telemetry analyzers: providers, selectors (Istio's `analyzers/telemetry`).

use std::collections::{BTreeMap, BTreeSet};

use super::analyzer;
use crate::context::Context;
use crate::labels::{set_matches, set_string};
use crate::message::{self as msg, Message, list, q};
use crate::object::{Object, items, string_map, text};

const TELEMETRY: &str = "telemetry.istio.io";

analyzer!(
    ProviderAnalyzer,
    "telemetry.ProviderAnalyzer",
    [msg::INVALID_TELEMETRY_PROVIDER]
);

impl ProviderAnalyzer {
    fn run(&self, ctx: &mut Context<'_>) {
        if !items(&ctx.mesh["defaultProviders"]["accessLogging"]).is_empty() {
            return;
        }
        let mut out = Vec::new();
        for t in ctx.kind(TELEMETRY, "Telemetry") {
            for l in items(&t.spec()["accessLogging"]) {
                if items(&l["providers"]).is_empty() && l["disabled"] != serde_json::json!(true) {
                    out.push(Message::new(
                        msg::INVALID_TELEMETRY_PROVIDER,
                        t,
                        format!(
                            "The Telemetry {} in namespace {} with empty providers will be ignored.",
                            t.name,
                            q(&t.namespace)
                        ),
                    ).hint("name a provider (e.g. envoy), or set meshConfig.defaultProviders.accessLogging"));
                }
            }
        }
        for m in out {
            ctx.report(m);
        }
    }
}

analyzer!(
    LightstepAnalyzer,
    "telemetry.LightstepAnalyzer",
    [msg::DEPRECATED]
);

impl LightstepAnalyzer {
    fn run(&self, ctx: &mut Context<'_>) {
        let lightstep: BTreeSet<String> = items(&ctx.mesh["extensionProviders"])
            .iter()
            .filter(|p| !p["lightstep"].is_null())
            .map(|p| text(&p["name"]).to_string())
            .collect();
        if lightstep.is_empty() {
            return;
        }
        let mut out = Vec::new();
        for t in ctx.kind(TELEMETRY, "Telemetry") {
            for tr in items(&t.spec()["tracing"]) {
                for p in items(&tr["providers"]) {
                    let name = text(&p["name"]);
                    if lightstep.contains(name) {
                        out.push(Message::new(
                            msg::DEPRECATED,
                            t,
                            format!("Deprecated: The Lightstep provider {name} is deprecated, please migrate to OpenTelemetry provider."),
                        ).hint("use an opentelemetry extension provider"));
                    }
                }
            }
        }
        for m in out {
            ctx.report(m);
        }
    }
}

fn has_target(t: &Object) -> bool {
    !t.spec()["targetRef"].is_null() || !items(&t.spec()["targetRefs"]).is_empty()
}

analyzer!(
    SelectorAnalyzer,
    "telemetry.SelectorAnalyzer",
    [
        msg::REFERENCED_RESOURCE_NOT_FOUND,
        msg::CONFLICTING_TELEMETRY_SELECTORS
    ],
    workloads
);

impl SelectorAnalyzer {
    fn run(&self, ctx: &mut Context<'_>) {
        let mut by_workload: BTreeMap<(String, String, String), Vec<&Object>> = BTreeMap::new();
        let mut out = Vec::new();
        for t in ctx.kind(TELEMETRY, "Telemetry") {
            let sel = string_map(&t.spec()["selector"]["matchLabels"]);
            if sel.is_empty() {
                continue;
            }
            let mut found = false;
            for w in ctx.workloads() {
                if w.namespace == t.namespace && set_matches(&sel, &w.labels) {
                    found = true;
                    by_workload
                        .entry((w.object.kind.clone(), w.namespace.clone(), w.name.clone()))
                        .or_default()
                        .push(t);
                }
            }
            if !found {
                out.push(
                    Message::new(
                        msg::REFERENCED_RESOURCE_NOT_FOUND,
                        t,
                        format!("Referenced selector not found: {}", q(&set_string(&sel))),
                    )
                    .hint("no workload in the namespace has these labels: fix spec.selector"),
                );
            }
        }
        for ((_, ns, name), list_) in &by_workload {
            if list_.len() < 2 {
                continue;
            }
            let names: Vec<&str> = list_.iter().map(|t| t.name.as_str()).collect();
            for t in list_ {
                out.push(Message::new(
                    msg::CONFLICTING_TELEMETRY_SELECTORS,
                    t,
                    format!(
                        "The Telemetries {} in namespace {} select the same workload pod {}, which can lead to undefined behavior.",
                        list(&names),
                        q(ns),
                        q(name)
                    ),
                ).hint("select each workload from one Telemetry only"));
            }
        }
        for m in out {
            ctx.report(m);
        }
    }
}

analyzer!(
    DefaultSelectorAnalyzer,
    "telemetry.DefaultSelectorAnalyzer",
    [msg::MULTIPLE_TELEMETRIES_WITHOUT_SELECTOR]
);

impl DefaultSelectorAnalyzer {
    fn run(&self, ctx: &mut Context<'_>) {
        let mut by_ns: BTreeMap<String, Vec<&Object>> = BTreeMap::new();
        for t in ctx.kind(TELEMETRY, "Telemetry") {
            if t.spec()["selector"].is_null() && !has_target(t) {
                by_ns.entry(t.namespace.clone()).or_default().push(t);
            }
        }
        let mut out = Vec::new();
        for (ns, ts) in &by_ns {
            if ts.len() < 2 {
                continue;
            }
            let names: Vec<&str> = ts.iter().map(|t| t.name.as_str()).collect();
            for t in ts {
                out.push(Message::new(
                    msg::MULTIPLE_TELEMETRIES_WITHOUT_SELECTOR,
                    t,
                    format!(
                        "The Telemetries {} in namespace {} have no workload selector, which can lead to undefined behavior.",
                        list(&names),
                        q(ns)
                    ),
                ).hint("keep one namespace-wide Telemetry; give the others a selector"));
            }
        }
        for m in out {
            ctx.report(m);
        }
    }
}
