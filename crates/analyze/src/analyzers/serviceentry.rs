//! ServiceEntry analyzers: addresses for TCP ports, protocol conflicts (Istio's
//! `analyzers/serviceentry`).

use std::collections::{BTreeMap, BTreeSet};

use super::{NET, analyzer};
use crate::context::Context;
use crate::hosts::{EXPORT_ALL, EXPORT_LOCAL};
use crate::message::{self as msg, Message, q};
use crate::object::{Object, items, number, strings, text};

analyzer!(
    ProtocolAddressesAnalyzer,
    "serviceentry.ProtocolAddressesAnalyzer",
    [msg::SERVICE_ENTRY_ADDRESSES_REQUIRED]
);

impl ProtocolAddressesAnalyzer {
    fn run(&self, ctx: &mut Context<'_>) {
        let meta = &ctx.mesh["defaultConfig"]["proxyMetadata"];
        let auto_allocated = meta["ISTIO_META_DNS_CAPTURE"] == "true"
            && meta["ISTIO_META_DNS_AUTO_ALLOCATE"] == "true";
        if auto_allocated {
            return;
        }
        let mut out = Vec::new();
        for se in ctx.kind(NET, "ServiceEntry") {
            let has_addresses = !items(&se.spec()["addresses"]).is_empty()
                || !items(&se.raw["status"]["addresses"]).is_empty();
            if has_addresses {
                continue;
            }
            for p in items(&se.spec()["ports"]) {
                let proto = text(&p["protocol"]);
                if proto.is_empty() || proto.eq_ignore_ascii_case("TCP") {
                    out.push(
                        Message::new(
                            msg::SERVICE_ENTRY_ADDRESSES_REQUIRED,
                            se,
                            "ServiceEntry addresses are required for this protocol.",
                        )
                        .hint("TCP traffic is told apart by destination address: set spec.addresses, or give the port an HTTP/TLS protocol"),
                    );
                }
            }
        }
        for m in out {
            ctx.report(m);
        }
    }
}

analyzer!(
    ConflictingProtocolAnalyzer,
    "serviceentry.ConflictingServiceEntryProtocolAnalyzer",
    [msg::CONFLICTING_SERVICE_ENTRY_PROTOCOL]
);

fn export_scopes(se: &Object) -> BTreeSet<String> {
    let export = strings(&se.spec()["exportTo"]);
    if export.is_empty() || export.iter().any(|e| e == EXPORT_ALL) {
        return [EXPORT_ALL.to_string()].into();
    }
    export
        .into_iter()
        .map(|e| {
            if e == EXPORT_LOCAL {
                se.namespace.clone()
            } else {
                e
            }
        })
        .collect()
}

/// (exportTo scope, host, port); each indexes (upper-case protocol, ServiceEntry).
type HostPort = (String, String, i64);

impl ConflictingProtocolAnalyzer {
    fn run(&self, ctx: &mut Context<'_>) {
        let mut index: BTreeMap<HostPort, Vec<(String, &Object)>> = BTreeMap::new();
        for se in ctx.kind(NET, "ServiceEntry") {
            for scope in export_scopes(se) {
                for h in strings(&se.spec()["hosts"]) {
                    for p in items(&se.spec()["ports"]) {
                        index
                            .entry((scope.clone(), h.clone(), number(&p["number"]).unwrap_or(0)))
                            .or_default()
                            .push((text(&p["protocol"]).to_ascii_uppercase(), se));
                    }
                }
            }
        }
        let mut reported = BTreeSet::new();
        let mut out = Vec::new();
        for ((scope, host, port), entries) in &index {
            let mut entries = entries.clone();
            if scope != EXPORT_ALL
                && let Some(all) = index.get(&(EXPORT_ALL.to_string(), host.clone(), *port))
            {
                entries.extend(all.iter().cloned());
            }
            let protocols: BTreeSet<&str> = entries.iter().map(|(p, _)| p.as_str()).collect();
            if protocols.len() < 2 {
                continue;
            }
            let names: BTreeSet<String> = entries.iter().map(|(_, se)| se.full_name()).collect();
            let names: Vec<String> = names.into_iter().collect();
            let protocols: Vec<&str> = protocols.into_iter().collect();
            for (_, se) in &entries {
                if !reported.insert(se.full_name()) {
                    continue;
                }
                out.push(
                    Message::new(
                        msg::CONFLICTING_SERVICE_ENTRY_PROTOCOL,
                        se,
                        format!(
                            "Multiple ServiceEntries ({}) define the same host {} and port {port} with conflicting protocols ({}).",
                            names.join(", "),
                            q(host),
                            protocols.join(", ")
                        ),
                    )
                    .hint("use one protocol for a host and port, or narrow exportTo so they never meet"),
                );
            }
        }
        for m in out {
            ctx.report(m);
        }
    }
}
