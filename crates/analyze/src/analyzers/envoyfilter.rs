//! EnvoyFilter patch operations (Istio's `analyzers/envoyfilter`).

use super::{NET, analyzer};
use crate::context::Context;
use crate::message::{self as msg, Message};
use crate::object::{Object, items, number, text};

analyzer!(
    EnvoyPatchAnalyzer,
    "envoyfilter.EnvoyPatchAnalyzer",
    [
        msg::ENVOY_FILTER_RELATIVE_OPERATION,
        msg::ENVOY_FILTER_REPLACE_INCORRECTLY,
        msg::ENVOY_FILTER_ADD_INCORRECTLY,
        msg::ENVOY_FILTER_REMOVE_INCORRECTLY,
        msg::ENVOY_FILTER_RELATIVE_WITH_PROXY_VERSION
    ]
);

fn relative(ef: &Object, name: &str, versioned: &[String]) -> Option<Message> {
    if number(&ef.spec()["priority"]).unwrap_or(0) != 0 {
        return None;
    }
    let m = if versioned.iter().any(|n| n == name) {
        Message::new(
            msg::ENVOY_FILTER_RELATIVE_WITH_PROXY_VERSION,
            ef,
            "This EnvoyFilter does not have a priority and has a relative patch operation (NSTERT_BEFORE/AFTER, REPLACE, MERGE, DELETE) and proxyVersion set which can cause the EnvoyFilter not to be applied during an upgrade. Using the INSERT_FIRST or ADD option or setting the priority may help in ensuring the EnvoyFilter is applied correctly.",
        )
    } else {
        Message::new(
            msg::ENVOY_FILTER_RELATIVE_OPERATION,
            ef,
            "This EnvoyFilter does not have a priority and has a relative patch operation set which can cause the EnvoyFilter not to be applied. Using the INSERT_FIRST of ADD option or setting the priority may help in ensuring the EnvoyFilter is applied correctly.",
        )
    };
    Some(m.hint("set spec.priority, or use INSERT_FIRST/ADD"))
}

impl EnvoyPatchAnalyzer {
    fn run(&self, ctx: &mut Context<'_>) {
        // Filter names patched by a patch with a proxyVersion match, across EnvoyFilters.
        let mut versioned: Vec<String> = Vec::new();
        let mut out = Vec::new();
        for ef in ctx.kind(NET, "EnvoyFilter") {
            for patch in items(&ef.spec()["configPatches"]) {
                let p = &patch["patch"];
                if p.is_null() {
                    break;
                }
                let mut name = String::new();
                if let Some(fields) = p["value"].as_object() {
                    if let Some(n) = fields.get("name") {
                        name = n.to_string();
                    } else {
                        name = text(&patch["match"]["listener"]["filterChain"]["filter"]["name"])
                            .to_string();
                    }
                }
                let apply_to = text(&patch["applyTo"]);
                let route_config = matches!(apply_to, "ROUTE_CONFIGURATION" | "HTTP_ROUTE");
                match text(&p["operation"]) {
                    "ADD" if route_config => out.push(Message::new(
                        msg::ENVOY_FILTER_ADD_INCORRECTLY,
                        ef,
                        "The ADD operation will be ignored when applyTo is set to ROUTE_CONFIGURATION, or HTTP_ROUTE.",
                    ).hint("use MERGE to change route configuration")),
                    "REMOVE" if route_config => out.push(Message::new(
                        msg::ENVOY_FILTER_REMOVE_INCORRECTLY,
                        ef,
                        "The REMOVE operation will be ignored when applyTo is set to ROUTE_CONFIGURATION, or HTTP_ROUTE.",
                    )),
                    "REPLACE"
                        if !matches!(apply_to, "NETWORK_FILTER" | "HTTP_FILTER" | "VIRTUAL_HOST") =>
                    {
                        out.push(Message::new(
                            msg::ENVOY_FILTER_REPLACE_INCORRECTLY,
                            ef,
                            "The REPLACE operation is only valid for HTTP_FILTER and NETWORK_FILTER.",
                        ))
                    }
                    "REMOVE" | "REPLACE" | "INSERT_BEFORE" | "INSERT_AFTER" => {
                        out.extend(relative(ef, &name, &versioned))
                    }
                    _ => {}
                }
                if !text(&patch["match"]["proxy"]["proxyVersion"]).is_empty() {
                    versioned.push(name);
                }
            }
        }
        for m in out {
            ctx.report(m);
        }
    }
}
