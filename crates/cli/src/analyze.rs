//! `strait validate` (each resource on its own) and `strait analyze` (resources together).
//!
//! The cross-resource checks follow `istioctl analyze`, with its message codes:
//! - IST0101 ReferencedResourceNotFound: a VirtualService names a gateway, host or subset that
//!   nothing defines; a DestinationRule is for a host that matches no service.
//! - IST0109 ConflictingMeshGatewayVirtualServiceHosts: several VirtualServices for one host on
//!   the mesh gateway.

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;

use anyhow::{Result, bail};
use serde::Serialize;
use serde_json::{Value, json};
use strait_api::parse::{Outcome, Parsed, Source, parse_value};
use strait_api::{Issue, Kind, Resource};

use crate::ReportFormat;
use crate::client::Connection;
use crate::input::read_all;
use crate::output::describe;

/// The report for one document, as `-o json` prints it.
#[derive(Serialize)]
struct DocReport {
    #[serde(rename = "apiVersion")]
    api_version: String,
    kind: String,
    namespace: Option<String>,
    name: String,
    file: String,
    index: usize,
    errors: Vec<Finding>,
    warnings: Vec<Finding>,
}

#[derive(Serialize, Clone)]
struct Finding {
    path: String,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'static str>,
}

impl From<&Issue> for Finding {
    fn from(i: &Issue) -> Self {
        Finding {
            path: i.path.clone(),
            message: i.message.clone(),
            code: None,
        }
    }
}

fn report_for(doc: &Parsed) -> DocReport {
    let mut r = DocReport {
        api_version: doc.api_version.clone(),
        kind: doc.kind.clone(),
        namespace: doc.namespace.clone(),
        name: doc.name.clone(),
        file: doc.source.file.clone(),
        index: doc.source.index,
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    match &doc.outcome {
        Outcome::Resource(res) => {
            let v = res.validate();
            r.errors.extend(v.errors.iter().map(Finding::from));
            r.warnings.extend(v.warnings.iter().map(Finding::from));
        }
        Outcome::Unsupported(why) => r.warnings.push(Finding {
            path: String::new(),
            message: why.clone(),
            code: None,
        }),
        Outcome::Invalid(e) => r.errors.push(Finding::from(&e.to_issue())),
    }
    r
}

pub fn validate(files: &[String], format: ReportFormat) -> Result<ExitCode> {
    let docs = read_all(files)?;
    let reports: Vec<DocReport> = docs.iter().map(report_for).collect();
    print_reports(&docs, &reports, format)
}

fn print_reports(docs: &[Parsed], reports: &[DocReport], format: ReportFormat) -> Result<ExitCode> {
    let failed = reports.iter().any(|r| !r.errors.is_empty());
    match format {
        ReportFormat::Json => println!("{}", serde_json::to_string_pretty(reports)?),
        ReportFormat::Text => {
            let (mut ok, mut bad, mut skipped) = (0, 0, 0);
            for (doc, r) in docs.iter().zip(reports) {
                let what = describe(doc);
                for e in &r.errors {
                    println!("Error{} {what}: {}", code(e), at(e));
                }
                for w in &r.warnings {
                    println!("Warning{} {what}: {}", code(w), at(w));
                }
                match (&doc.outcome, r.errors.is_empty()) {
                    (Outcome::Unsupported(_), _) => skipped += 1,
                    (_, true) => ok += 1,
                    (_, false) => bad += 1,
                }
            }
            let skipped = if skipped > 0 {
                format!(", {skipped} skipped")
            } else {
                String::new()
            };
            eprintln!("{} resources: {ok} valid, {bad} invalid{skipped}", ok + bad);
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn code(f: &Finding) -> String {
    f.code.map(|c| format!(" [{c}]")).unwrap_or_default()
}

fn at(f: &Finding) -> String {
    if f.path.is_empty() {
        f.message.clone()
    } else {
        format!("{}: {}", f.path, f.message)
    }
}

pub fn analyze(
    files: &[String],
    live: Option<&Connection>,
    format: ReportFormat,
) -> Result<ExitCode> {
    if files.is_empty() && live.is_none() {
        bail!("nothing to analyze: give -f FILE... and/or --live");
    }
    let mut docs = read_all(files)?;
    if let Some(conn) = live {
        let from_files: BTreeSet<(String, Option<String>, String)> = docs
            .iter()
            .map(|d| (d.kind.clone(), d.namespace.clone(), d.name.clone()))
            .collect();
        for d in fetch_live(conn)? {
            // A file's version of a resource replaces the live one.
            if !from_files.contains(&(d.kind.clone(), d.namespace.clone(), d.name.clone())) {
                docs.push(d);
            }
        }
    }
    let mut reports: Vec<DocReport> = docs.iter().map(report_for).collect();
    let resources: Vec<(usize, &Resource)> = docs
        .iter()
        .enumerate()
        .filter_map(|(i, d)| match &d.outcome {
            Outcome::Resource(r) => Some((i, r.as_ref())),
            _ => None,
        })
        .collect();
    for (i, finding, is_error) in cross_check(&resources) {
        if is_error {
            reports[i].errors.push(finding);
        } else {
            reports[i].warnings.push(finding);
        }
    }
    print_reports(&docs, &reports, format)
}

fn fetch_live(conn: &Connection) -> Result<Vec<Parsed>> {
    let client = conn.connect()?;
    let mut out = Vec::new();
    for kind in Kind::ALL {
        let answer = client.request("GET", &kind.collection_path(None), None)?;
        if !answer.is_success() {
            bail!(
                "listing {} from the control plane: {}",
                kind.plural(),
                answer.message()
            );
        }
        for (index, item) in answer.body["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            out.push(parse_value(
                Source {
                    file: format!("live:{}", kind.plural()),
                    index,
                },
                item,
            ));
        }
    }
    Ok(out)
}

const DEFAULT_NS: &str = "default";

/// Istio's short-name resolution: `reviews` in namespace `ns` is `reviews.ns.svc.cluster.local`.
fn fqdn(host: &str, ns: &str) -> String {
    if host.contains('.') || host.contains('*') {
        host.to_string()
    } else {
        format!("{host}.{ns}.svc.cluster.local")
    }
}

/// `*.example.com` matches `a.example.com`; `*` matches everything.
fn host_matches(pattern: &str, host: &str) -> bool {
    if pattern == host {
        return true;
    }
    match pattern.strip_prefix('*') {
        Some(suffix) => host.ends_with(suffix),
        None => match host.strip_prefix('*') {
            Some(suffix) => pattern.ends_with(suffix),
            None => false,
        },
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn finding(path: String, code: &'static str, message: String) -> Finding {
    Finding {
        path,
        message,
        code: Some(code),
    }
}

/// The cross-resource checks: (index of the document, finding, is it an error).
fn cross_check(resources: &[(usize, &Resource)]) -> Vec<(usize, Finding, bool)> {
    let ns_of = |r: &Resource| r.namespace().unwrap_or(DEFAULT_NS).to_string();
    let mut hosts: BTreeSet<String> = BTreeSet::new();
    let mut gateways: BTreeSet<(String, String)> = BTreeSet::new();
    // (host fqdn) → subsets defined by DestinationRules.
    let mut subsets: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (_, r) in resources {
        let spec = &r.raw["spec"];
        match r.kind {
            Kind::Service => {
                hosts.insert(fqdn(r.name(), &ns_of(r)));
            }
            Kind::ServiceEntry => {
                hosts.extend(strings(&spec["hosts"]).iter().map(|h| fqdn(h, &ns_of(r))))
            }
            Kind::Gateway => {
                gateways.insert((ns_of(r), r.name().to_string()));
            }
            Kind::DestinationRule => {
                let host = fqdn(spec["host"].as_str().unwrap_or_default(), &ns_of(r));
                let names = spec["subsets"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|s| s["name"].as_str())
                            .map(str::to_string)
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default();
                subsets.entry(host).or_default().extend(names);
            }
            _ => {}
        }
    }
    let known_host = |h: &str| {
        hosts
            .iter()
            .any(|k| host_matches(k, h) || host_matches(h, k))
    };

    let mut out = Vec::new();
    let mut mesh_hosts: BTreeMap<String, Vec<(usize, String)>> = BTreeMap::new();
    for (i, r) in resources {
        let ns = ns_of(r);
        let spec = &r.raw["spec"];
        match r.kind {
            Kind::VirtualService => {
                let gws = strings(&spec["gateways"]);
                for (gi, g) in gws.iter().enumerate() {
                    if g == "mesh" {
                        continue;
                    }
                    let (gns, gname) = g.split_once('/').unwrap_or((&ns, g));
                    // A fully qualified gateway host name (name.ns.svc.cluster.local) is also allowed.
                    let (gns, gname) = match gname.split_once('.') {
                        Some((n, rest)) => (rest.split('.').next().unwrap_or(gns), n),
                        None => (gns, gname),
                    };
                    if !gateways.contains(&(gns.to_string(), gname.to_string())) {
                        out.push((*i, finding(
                            format!("spec.gateways[{gi}]"),
                            "IST0101",
                            format!("Referenced gateway not found: {g:?}: apply a Gateway {gns}/{gname} or fix the name"),
                        ), true));
                    }
                }
                if gws.is_empty() || gws.iter().any(|g| g == "mesh") {
                    for h in strings(&spec["hosts"]) {
                        mesh_hosts
                            .entry(fqdn(&h, &ns))
                            .or_default()
                            .push((*i, format!("{ns}/{}", r.name())));
                    }
                }
                for proto in ["http", "tcp", "tls"] {
                    for (ri, route) in spec[proto].as_array().into_iter().flatten().enumerate() {
                        let dests = route["route"].as_array().cloned().unwrap_or_default();
                        let mirror = route
                            .get("mirror")
                            .cloned()
                            .into_iter()
                            .map(|m| json!({"destination": m}));
                        for (di, d) in dests.into_iter().chain(mirror).enumerate() {
                            let dest = &d["destination"];
                            let Some(host) = dest["host"].as_str() else {
                                continue;
                            };
                            let full = fqdn(host, &ns);
                            let path = format!("spec.{proto}[{ri}].route[{di}].destination");
                            if !known_host(&full) {
                                out.push((*i, finding(
                                    format!("{path}.host"),
                                    "IST0101",
                                    format!("Referenced host not found: {host:?}: apply a Service or ServiceEntry for it, or fix the host"),
                                ), true));
                                continue;
                            }
                            if let Some(subset) = dest["subset"].as_str().filter(|s| !s.is_empty())
                            {
                                let defined =
                                    subsets.get(&full).is_some_and(|s| s.contains(subset));
                                if !defined {
                                    out.push((*i, finding(
                                        format!("{path}.subset"),
                                        "IST0101",
                                        format!("Referenced host+subset in destinationrule not found: \"{host}+{subset}\": define subset {subset:?} in a DestinationRule for {host}"),
                                    ), true));
                                }
                            }
                        }
                    }
                }
            }
            Kind::DestinationRule => {
                let host = spec["host"].as_str().unwrap_or_default();
                if !host.is_empty() && !known_host(&fqdn(host, &ns)) {
                    out.push((*i, finding(
                        "spec.host".into(),
                        "IST0101",
                        format!("Referenced host not found: {host:?}: no Service or ServiceEntry defines it; apply one or fix the host"),
                    ), true));
                }
            }
            _ => {}
        }
    }
    for (host, owners) in mesh_hosts {
        if owners.len() > 1 {
            let names: Vec<&str> = owners.iter().map(|(_, n)| n.as_str()).collect();
            for (i, _) in &owners {
                out.push((*i, finding(
                    "spec.hosts".into(),
                    "IST0109",
                    format!(
                        "The VirtualServices {} associated with mesh gateway define the same host {host:?} which can lead to undefined behavior. This can be fixed by merging the conflicting VirtualServices into a single resource.",
                        names.join(",")
                    ),
                ), true));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_resolve_and_match_like_istio() {
        assert_eq!(
            fqdn("reviews", "default"),
            "reviews.default.svc.cluster.local"
        );
        assert_eq!(
            fqdn("reviews.prod.svc.cluster.local", "default"),
            "reviews.prod.svc.cluster.local"
        );
        assert!(host_matches("*.example.com", "a.example.com"));
        assert!(host_matches("*", "anything"));
        assert!(!host_matches("a.example.com", "b.example.com"));
    }
}
