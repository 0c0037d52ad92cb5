//! Istio Gateway analyzers: workload selectors, ports on the gateway's Service, conflicting
//! servers, shared certificates, credentialName Secrets (Istio's `analyzers/gateway`).

use std::collections::{BTreeMap, BTreeSet};

use super::{NET, analyzer};
use crate::cert;
use crate::context::{Context, Workload};
use crate::labels::{set_matches, set_string};
use crate::message::{self as msg, Message, list, q};
use crate::object::{Labels, Object, items, number, string_map, strings, text};

fn selector(gw: &Object) -> Labels {
    string_map(&gw.spec()["selector"])
}

fn selector_not_found(gw: &Object, sel: &Labels) -> Message {
    Message::new(
        msg::REFERENCED_RESOURCE_NOT_FOUND,
        gw,
        format!("Referenced selector not found: {}", q(&set_string(sel))),
    )
    .hint("no workload has these labels: fix spec.selector or run the gateway (`strait gateway --labels ...`)")
}

analyzer!(
    IngressGatewayPortAnalyzer,
    "gateway.IngressGatewayPortAnalyzer",
    [
        msg::REFERENCED_RESOURCE_NOT_FOUND,
        msg::GATEWAY_PORT_NOT_ON_SERVICE
    ]
);

impl IngressGatewayPortAnalyzer {
    fn run(&self, ctx: &mut Context<'_>) {
        let services = ctx.kind("", "Service").to_vec();
        let mut out = Vec::new();
        for gw in ctx.kind(NET, "Gateway") {
            let sel = selector(gw);
            let selected: Vec<&Workload<'_>> = ctx
                .workloads()
                .iter()
                .filter(|w| set_matches(&sel, &w.labels))
                .collect();
            if selected.is_empty() {
                out.push(selector_not_found(gw, &sel));
                continue;
            }
            // Strait's gateways (WorkloadEntries) listen on the Gateway's ports themselves:
            // only Pods reach their ports through a Service.
            if !selected.iter().any(|w| w.is_pod()) {
                continue;
            }
            let mut ports = BTreeSet::new();
            for w in selected.iter().filter(|w| w.is_pod()) {
                for s in &services {
                    if s.namespace != w.namespace
                        || !set_matches(&string_map(&s.spec()["selector"]), &w.labels)
                    {
                        continue;
                    }
                    for p in items(&s.spec()["ports"]) {
                        if !matches!(text(&p["protocol"]), "" | "TCP") {
                            continue;
                        }
                        ports.extend(number(&p["port"]));
                        ports.extend(number(&p["targetPort"]));
                    }
                }
            }
            for server in items(&gw.spec()["servers"]) {
                if server["port"].is_null() {
                    continue;
                }
                let port = number(&server["port"]["number"]).unwrap_or(0);
                if !ports.contains(&port) {
                    out.push(Message::new(
                        msg::GATEWAY_PORT_NOT_ON_SERVICE,
                        gw,
                        format!(
                            "The gateway is listening on a target port (port {port}) that is not defined in the Service associated with its workload instances (Pod selector {}). If you need to access the gateway port through the gateway Service, it will not be available.",
                            set_string(&sel)
                        ),
                    ).hint("add the port to the gateway's Service, or listen on one of its ports"));
                }
            }
        }
        for m in out {
            ctx.report(m);
        }
    }
}

analyzer!(
    CertificateAnalyzer,
    "gateway.CertificateAnalyzer",
    [msg::GATEWAY_DUPLICATE_CERTIFICATE]
);

/// Whether two servers' TLS settings use the same certificate.
fn same_certificate(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    let (ca, cb) = (text(&a["credentialName"]), text(&b["credentialName"]));
    if !ca.is_empty() && !cb.is_empty() {
        return ca == cb;
    }
    if ca.is_empty() && cb.is_empty() {
        let (sa, sb) = (text(&a["serverCertificate"]), text(&b["serverCertificate"]));
        if !sa.is_empty() && sa == sb {
            let (ka, kb) = (text(&a["privateKey"]), text(&b["privateKey"]));
            return !ka.is_empty() && ka == kb;
        }
    }
    false
}

impl CertificateAnalyzer {
    fn run(&self, ctx: &mut Context<'_>) {
        let gateways = ctx.kind(NET, "Gateway").to_vec();
        let mut out = Vec::new();
        for cur in &gateways {
            let sel = selector(cur);
            for other in &gateways {
                if std::ptr::eq(*cur, *other) {
                    continue;
                }
                // The other gateway's selector must include every label of this one's.
                if !set_matches(&sel, &selector(other)) {
                    continue;
                }
                for s1 in items(&cur.spec()["servers"]) {
                    for s2 in items(&other.spec()["servers"]) {
                        if s1["tls"].is_object()
                            && s2["tls"].is_object()
                            && same_certificate(&s1["tls"], &s2["tls"])
                        {
                            out.push(Message::new(
                                msg::GATEWAY_DUPLICATE_CERTIFICATE,
                                cur,
                                format!(
                                    "Duplicate certificate in multiple gateways {} may cause 404s if clients re-use HTTP2 connections.",
                                    list(&[cur.full_name(), other.full_name()])
                                ),
                            ).hint("merge the servers into one Gateway, or give each host its own certificate"));
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
    SecretAnalyzer,
    "gateway.SecretAnalyzer",
    [
        msg::REFERENCED_RESOURCE_NOT_FOUND,
        msg::INVALID_GATEWAY_CREDENTIAL
    ]
);

/// A Secret's data, decoded (`data` is base64, `stringData` plain).
fn secret_data(s: &Object) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some(m) = s.raw["data"].as_object() {
        for (k, v) in m {
            let bytes = cert::base64_decode(text(v)).unwrap_or_default();
            out.insert(k.clone(), String::from_utf8_lossy(&bytes).into_owned());
        }
    }
    if let Some(m) = s.raw["stringData"].as_object() {
        for (k, v) in m {
            out.insert(k.clone(), text(v).to_string());
        }
    }
    out
}

/// Istio's `ExtractCertInfo` then `ValidateCertificate`: `cert`/`key` or `tls.crt`/`tls.key`,
/// and a certificate valid now.
fn valid_tls_secret(s: &Object) -> bool {
    let data = secret_data(s);
    let has = |k: &str| data.get(k).is_some_and(|v| !v.is_empty());
    let pem = if has("cert") && has("key") {
        &data["cert"]
    } else if has("tls.crt") && has("tls.key") {
        &data["tls.crt"]
    } else {
        return false;
    };
    cert::validate_pem(pem, cert::now()).is_ok()
}

impl SecretAnalyzer {
    fn run(&self, ctx: &mut Context<'_>) {
        let mut out = Vec::new();
        for gw in ctx.kind(NET, "Gateway") {
            let sel = selector(gw);
            // The Secret must be in the namespace of the gateway workload, not the Gateway's.
            let ns = ctx
                .workloads()
                .iter()
                .find(|w| set_matches(&sel, &w.labels))
                .map(|w| w.namespace.clone())
                .unwrap_or_default();
            if ns.is_empty() {
                out.push(selector_not_found(gw, &sel));
                continue;
            }
            for server in items(&gw.spec()["servers"]) {
                let cn = text(&server["tls"]["credentialName"]);
                if cn.is_empty() {
                    continue;
                }
                let (sns, sname) = cn.split_once('/').unwrap_or((&ns, cn));
                match ctx.find("", "Secret", sns, sname) {
                    None => out.push(
                        Message::new(
                            msg::REFERENCED_RESOURCE_NOT_FOUND,
                            gw,
                            format!("Referenced credentialName not found: {}", q(cn)),
                        )
                        .hint(format!(
                            "create the Secret {sname} in {sns}, the namespace of the gateway workload"
                        )),
                    ),
                    Some(s) if !valid_tls_secret(s) => out.push(
                        Message::new(
                            msg::INVALID_GATEWAY_CREDENTIAL,
                            gw,
                            format!(
                                "The credential referenced by the Gateway {} in namespace {ns} is invalid, which can cause the traffic not to work as expected.",
                                gw.name
                            ),
                        )
                        .hint("the Secret needs tls.crt and tls.key (or cert and key) with a PEM certificate valid now"),
                    ),
                    Some(_) => {}
                }
            }
        }
        for m in out {
            ctx.report(m);
        }
    }
}

analyzer!(
    ConflictingGatewayAnalyzer,
    "gateway.ConflictingGatewayAnalyzer",
    [
        msg::REFERENCED_RESOURCE_NOT_FOUND,
        msg::CONFLICTING_GATEWAYS
    ]
);

impl ConflictingGatewayAnalyzer {
    fn run(&self, ctx: &mut Context<'_>) {
        // (selector string, port) → gateway full name → host → bind.
        type Binds = BTreeMap<String, String>;
        let mut map: BTreeMap<(String, i64), BTreeMap<String, Binds>> = BTreeMap::new();
        for gw in ctx.kind(NET, "Gateway") {
            let sel = set_string(&selector(gw));
            for s in items(&gw.spec()["servers"]) {
                let port = number(&s["port"]["number"]).unwrap_or(0);
                let binds = strings(&s["hosts"])
                    .into_iter()
                    .map(|h| (h, text(&s["bind"]).to_string()))
                    .collect();
                map.entry((sel.clone(), port))
                    .or_default()
                    .insert(gw.full_name(), binds);
            }
        }
        let mut out = Vec::new();
        for gw in ctx.kind(NET, "Gateway") {
            let sel_map = selector(gw);
            let sel = set_string(&sel_map);
            let mut hits = Vec::new();
            for (key @ (other_sel, _), v) in &map {
                let matched = *other_sel == sel
                    || ((other_sel.contains(&sel) || sel.contains(other_sel.as_str())) && {
                        let other_map = parse_selector(other_sel);
                        ctx.workloads().iter().any(|w| {
                            set_matches(&sel_map, &w.labels) && set_matches(&other_map, &w.labels)
                        })
                    });
                if matched {
                    hits.push((key, v));
                }
            }
            if !sel.is_empty() && hits.is_empty() {
                out.push(selector_not_found(gw, &sel_map));
                continue;
            }
            for s in items(&gw.spec()["servers"]) {
                let port = number(&s["port"]["number"]).unwrap_or(0);
                let bind = text(&s["bind"]);
                let hosts = strings(&s["hosts"]);
                let mut conflicts: Vec<String> = Vec::new();
                for ((_, p), gateways) in &hits {
                    if *p != port {
                        continue;
                    }
                    for (name, binds) in gateways.iter() {
                        if *name != gw.full_name()
                            && hosts
                                .iter()
                                .any(|h| binds.get(h).is_some_and(|b| b == bind))
                        {
                            conflicts.push(name.clone());
                        }
                    }
                }
                if !conflicts.is_empty() {
                    conflicts.sort();
                    out.push(Message::new(
                        msg::CONFLICTING_GATEWAYS,
                        gw,
                        format!(
                            "Conflict with gateways {} (workload selector {sel}, port {port}, hosts {}).",
                            conflicts.join(","),
                            hosts.join(",")
                        ),
                    ).hint("serve each host on a port from one Gateway only: merge the servers, or change the port or hosts"));
                }
            }
        }
        for m in out {
            ctx.report(m);
        }
    }
}

fn parse_selector(s: &str) -> Labels {
    s.split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
