//! Istio's validating-webhook rules for VirtualService (`ValidateVirtualService`), reimplemented:
//! hosts, gateways, delegation, TLS and TCP routes, destinations and weights. HTTP routes are
//! checked in [`super::http`].

use std::collections::BTreeMap;
use std::sync::LazyLock;

use regex::Regex;

use super::http::{is_jwt_claim_route, validate_http_route};
use super::{
    Destination, HttpMatchRequest, L4MatchAttributes, MESH_GATEWAY, RouteDestination, StringMatch,
    StringMatchKind, TcpRoute, TlsMatchAttributes, TlsRoute, VirtualService,
};
use crate::networking::destination_rule::{validate_export_to, validate_subset_name};
use crate::validate::common::{
    is_dns1123_label, is_ip, is_wildcard_dns1123_label, validate_dns1123_labels, validate_fqdn,
    validate_ip_or_cidr, validate_labels, validate_port, validate_wildcard_domain,
};
use crate::{FieldPath, ObjectMeta, Report};

/// The annotation Istio sets on VirtualServices it converts from Gateway API routes.
const ROUTE_SEMANTICS_ANNOTATION: &str = "internal.istio.io/route-semantics";

/// Checks a VirtualService on its own, as Istio's validating webhook does.
pub fn validate(spec: &VirtualService, meta: &ObjectMeta, at: &FieldPath, report: &mut Report) {
    let delegate = spec.hosts.is_empty();
    if delegate {
        if !spec.gateways.is_empty() {
            report.error(
                &at.field("gateways"),
                "delegate virtual service must have no gateways specified: a VirtualService \
                 without hosts is a delegate; add hosts or remove gateways",
            );
        }
        if !spec.tls.is_empty() {
            report.error(
                &at.field("tls"),
                "delegate virtual service must have no tls route specified (only HTTP routes \
                 can be delegated)",
            );
        }
        if !spec.tcp.is_empty() {
            report.error(
                &at.field("tcp"),
                "delegate virtual service must have no tcp route specified (only HTTP routes \
                 can be delegated)",
            );
        }
    }
    let gateway_semantics = meta
        .annotations
        .get(ROUTE_SEMANTICS_ANNOTATION)
        .is_some_and(|v| v == "gateway");

    let (applies_to_mesh, applies_to_gateway) = if spec.gateways.is_empty() {
        (true, false)
    } else {
        validate_gateway_names(
            &spec.gateways,
            gateway_semantics,
            &at.field("gateways"),
            report,
        );
        let gateway = !spec.gateways.iter().any(|g| g == MESH_GATEWAY);
        (!gateway, gateway)
    };

    if !applies_to_gateway {
        for (i, http) in spec.http.iter().enumerate() {
            for (j, m) in http.matches.iter().enumerate() {
                let m_at = at.field("http").index(i).field("match").index(j);
                for (field, headers) in [
                    ("headers", &m.headers),
                    ("withoutHeaders", &m.without_headers),
                ] {
                    for key in headers.keys().filter(|k| is_jwt_claim_route(k)) {
                        report.error(
                            &m_at.field(field).key(key),
                            format!(
                                "JWT claim based routing (key: {key}) is only supported for \
                                 gateway, found no gateways: {:?}; bind the VirtualService to \
                                 a gateway",
                                spec.gateways
                            ),
                        );
                    }
                }
            }
        }
    }

    let sni = spec
        .tls
        .iter()
        .any(|t| t.matches.iter().any(|m| !m.sni_hosts.is_empty()));
    let mut all_hosts_valid = true;
    for (i, host) in spec.hosts.iter().enumerate() {
        let result = if applies_to_gateway {
            validate_gateway_bound_domain(sni, host)
        } else {
            validate_wildcard_domain(host)
        };
        match result {
            Err(e) if !is_ip(host) => {
                report.error(&at.field("hosts").index(i), e);
                all_hosts_valid = false;
            }
            Err(_) => {}
            Ok(()) if applies_to_mesh && host == "*" => {
                report.error(
                    &at.field("hosts").index(i),
                    "wildcard host * is not allowed for virtual services bound to the mesh \
                     gateway: name the hosts, or bind the VirtualService to gateways only",
                );
                all_hosts_valid = false;
            }
            Ok(()) => {}
        }
    }
    if all_hosts_valid {
        for (i, j) in overlapping_hosts(&spec.hosts) {
            let (a, b) = (&spec.hosts[i], &spec.hosts[j]);
            report.error(
                &at.field("hosts").index(i),
                format!(
                    "duplicate hosts in virtual service: {a} & {b} (a wildcard covers \
                     the other); keep one"
                ),
            );
        }
    }

    if spec.http.is_empty() && spec.tcp.is_empty() && spec.tls.is_empty() {
        report.error(at, "http, tcp or tls must be provided in virtual service");
    }
    for (i, route) in spec.http.iter().enumerate() {
        validate_http_route(
            route,
            delegate,
            gateway_semantics,
            &at.field("http").index(i),
            report,
        );
    }
    for (i, route) in spec.tls.iter().enumerate() {
        validate_tls_route(
            route,
            spec,
            gateway_semantics,
            &at.field("tls").index(i),
            report,
        );
    }
    for (i, route) in spec.tcp.iter().enumerate() {
        validate_tcp_route(route, gateway_semantics, &at.field("tcp").index(i), report);
    }
    validate_export_to(
        meta.namespace.as_deref(),
        &spec.export_to,
        false,
        &at.field("exportTo"),
        report,
    );
    warn_unreachable_rules(spec, at, report);
}

/// Istio's `validateDestination` (also used for a Sidecar's `outboundTrafficPolicy.egressProxy`).
pub fn validate_destination(dest: &Destination, at: &FieldPath, report: &mut Report) {
    if dest.host == "*" {
        report.error(
            &at.field("host"),
            "invalid destination host *: name a service host",
        );
    } else {
        report.check(&at.field("host"), validate_wildcard_domain(&dest.host));
    }
    if !dest.subset.is_empty() {
        report.check(&at.field("subset"), validate_subset_name(&dest.subset));
    }
    if let Some(port) = &dest.port {
        report.check(
            &at.field("port").field("number"),
            validate_port(i64::from(port.number)),
        );
    }
}

/// Istio's `validateRouteDestinations`, for TCP and TLS routes.
fn validate_route_destinations(
    routes: &[RouteDestination],
    gateway_semantics: bool,
    at: &FieldPath,
    report: &mut Report,
) {
    let mut total: i64 = 0;
    for (i, r) in routes.iter().enumerate() {
        validate_weighted_destination(
            r.destination.as_ref(),
            r.weight,
            gateway_semantics,
            &at.index(i),
            report,
        );
        total += i64::from(r.weight);
    }
    check_total_weight(routes.len(), total, at, report);
}

pub(super) fn validate_weighted_destination(
    dest: Option<&Destination>,
    weight: i32,
    gateway_semantics: bool,
    at: &FieldPath,
    report: &mut Report,
) {
    match dest {
        None => report.error(&at.field("destination"), "destination is required"),
        Some(d) if !gateway_semantics => validate_destination(d, &at.field("destination"), report),
        Some(_) => {}
    }
    if weight < 0 {
        report.error(&at.field("weight"), format!("weight {weight} < 0"));
    }
}

pub(super) fn check_total_weight(count: usize, total: i64, at: &FieldPath, report: &mut Report) {
    if count > 1 && total == 0 {
        report.error(
            at,
            "total destination weight = 0: give at least one destination a weight",
        );
    }
}

/// Istio's `validateTLSRoute`.
fn validate_tls_route(
    tls: &TlsRoute,
    vs: &VirtualService,
    gateway_semantics: bool,
    at: &FieldPath,
    report: &mut Report,
) {
    if tls.matches.is_empty() {
        report.error(
            &at.field("match"),
            "TLS route must have at least one match condition",
        );
    }
    for (i, m) in tls.matches.iter().enumerate() {
        validate_tls_match(m, vs, &at.field("match").index(i), report);
    }
    if tls.route.is_empty() {
        report.error(
            &at.field("route"),
            "TLS route is required: add route destinations",
        );
    }
    validate_route_destinations(&tls.route, gateway_semantics, &at.field("route"), report);
}

fn validate_tls_match(
    m: &TlsMatchAttributes,
    vs: &VirtualService,
    at: &FieldPath,
    report: &mut Report,
) {
    if m.sni_hosts.is_empty() {
        report.error(
            &at.field("sniHosts"),
            "TLS match must have at least one SNI host",
        );
    }
    for (i, sni) in m.sni_hosts.iter().enumerate() {
        validate_sni_host(sni, vs, &at.field("sniHosts").index(i), report);
    }
    validate_l4_common(
        &m.destination_subnets,
        m.port,
        &m.source_labels,
        &m.gateways,
        at,
        report,
    );
}

fn validate_sni_host(sni: &str, vs: &VirtualService, at: &FieldPath, report: &mut Report) {
    // Istio treats a VirtualService as gateway-bound unless `mesh` is named, even without
    // gateways.
    let gateway = !vs.gateways.iter().any(|g| g == MESH_GATEWAY);
    let result = if gateway {
        validate_gateway_bound_domain(true, sni)
    } else {
        validate_wildcard_domain(sni)
    };
    if let Err(e) = result {
        if is_ip(sni) {
            report.warn(
                at,
                format!(
                    "using an IP address ({sni:?}) goes against SNI spec and most clients do \
                     not support this"
                ),
            );
        } else {
            report.error(at, e);
        }
        return;
    }
    if !vs.hosts.iter().any(|h| host_subset_of(sni, h)) {
        report.error(
            at,
            format!(
                "SNI host {sni:?} is not a compatible subset of any of the virtual service \
                 hosts: [{}]",
                vs.hosts.join(", ")
            ),
        );
    }
}

/// Istio's `validateTCPRoute`.
fn validate_tcp_route(
    tcp: &TcpRoute,
    gateway_semantics: bool,
    at: &FieldPath,
    report: &mut Report,
) {
    for (i, m) in tcp.matches.iter().enumerate() {
        validate_tcp_match(m, &at.field("match").index(i), report);
    }
    if tcp.route.is_empty() {
        report.error(
            &at.field("route"),
            "TCP route is required: add route destinations",
        );
    }
    validate_route_destinations(&tcp.route, gateway_semantics, &at.field("route"), report);
}

fn validate_tcp_match(m: &L4MatchAttributes, at: &FieldPath, report: &mut Report) {
    validate_l4_common(
        &m.destination_subnets,
        m.port,
        &m.source_labels,
        &m.gateways,
        at,
        report,
    );
}

fn validate_l4_common(
    subnets: &[String],
    port: Option<u32>,
    source_labels: &BTreeMap<String, String>,
    gateways: &[String],
    at: &FieldPath,
    report: &mut Report,
) {
    for (i, subnet) in subnets.iter().enumerate() {
        report.check(
            &at.field("destinationSubnets").index(i),
            validate_ip_or_cidr(subnet),
        );
    }
    if let Some(port) = port.filter(|p| *p != 0) {
        report.check(&at.field("port"), validate_port(i64::from(port)));
    }
    report.check(&at.field("sourceLabels"), validate_labels(source_labels));
    validate_gateway_names(gateways, false, &at.field("gateways"), report);
}

/// Gateway references: `<namespace>/<name>`, or a legacy FQDN-like name (`mesh`,
/// `gateway.namespace.svc.cluster.local`).
pub(super) fn validate_gateway_names(
    names: &[String],
    gateway_semantics: bool,
    at: &FieldPath,
    report: &mut Report,
) {
    for (i, name) in names.iter().enumerate() {
        let g_at = at.index(i);
        let Some((ns, gw)) = name.split_once('/') else {
            if let Some((first, rest)) = name.split_once('.') {
                let ns = rest.split('.').next().unwrap_or_default();
                report.warn(
                    &g_at,
                    format!(
                        "using legacy gatewayName format {name:?}; prefer the \
                         <namespace>/<name> format: \"{ns}/{first}\""
                    ),
                );
            }
            report.check(&g_at, validate_fqdn(name));
            continue;
        };
        if ns.is_empty() || gw.is_empty() {
            report.error(
                &g_at,
                "config namespace and gateway name cannot be empty: write <namespace>/<name>",
            );
        }
        if !is_dns1123_label(ns) {
            report.error(&g_at, format!("invalid value for namespace: {ns:?}"));
        }
        if !gateway_semantics && !is_dns1123_label(gw) {
            report.error(&g_at, format!("invalid value for gateway name: {gw:?}"));
        }
    }
}

static OUTBOUND_SNI: LazyLock<Regex> =
    LazyLock::new(|| Regex::new("outbound_.([0-8].*).*").unwrap());

/// Istio's `ValidateWildcardDomainForVirtualServiceBoundToGateway`: like a wildcard domain, but
/// with `sni` an Istio-generated `outbound_.<port>_.<subset>_.<host>` name is allowed.
fn validate_gateway_bound_domain(sni: bool, domain: &str) -> Result<(), String> {
    if domain.len() > 255 {
        return Err(format!("domain name {domain:?} too long (max 255)"));
    }
    if domain.is_empty() {
        return Err("empty domain name not allowed".to_string());
    }
    let (first, rest) = match domain.split_once('.') {
        Some((f, r)) => (f, Some(r)),
        None => (domain, None),
    };
    if sni && first == "outbound_" {
        if OUTBOUND_SNI.is_match(domain) {
            return Ok(());
        }
        return Err(format!(
            "domain name {domain:?} invalid (label {first:?} invalid)"
        ));
    }
    if !is_wildcard_dns1123_label(first) {
        return Err(format!(
            "domain name {domain:?} invalid (label {first:?} invalid)"
        ));
    }
    match rest {
        Some(rest) => validate_dns1123_labels(rest),
        None => Ok(()),
    }
}

/// Istio's `host.Name.Matches`: whether two (possibly wildcard) hosts overlap.
#[cfg(test)]
fn host_matches(a: &str, b: &str) -> bool {
    match (a.strip_prefix('*'), b.strip_prefix('*')) {
        (Some(a), Some(b)) => {
            if a.len() < b.len() {
                b.ends_with(a)
            } else {
                a.ends_with(b)
            }
        }
        (Some(a), None) => b.ends_with(a),
        (None, Some(b)) => a.ends_with(b),
        (None, None) => a == b,
    }
}

/// For each host that a later host matches (equal, or one a wildcard covering the other: Istio's
/// `host.Name.Matches`), the pair (its index, the last such later index), in index order.
///
/// Istio compares every pair; this is linear in the hosts' total length, so that a document of
/// 70,000 hosts costs what its size does rather than billions of comparisons. It reports each
/// host once (Istio reports it once per later match), with the last host it overlaps.
///
/// Every match involves a wildcard `*X` unless the hosts are equal: `*X` covers a name ending
/// in `X`, and two wildcards overlap when one's `X` ends with the other's. So it builds a trie
/// of the wildcards' `X` read backwards, and walks each host's name (for a wildcard, its `X`)
/// backwards through it: the wildcards the walk passes end the name; the wildcards below where
/// it stops (for a wildcard) are covered by it, and so are the plain names whose walks pass it.
fn overlapping_hosts(hosts: &[String]) -> Vec<(usize, usize)> {
    #[derive(Default)]
    struct Node {
        children: Vec<(u8, usize)>,
        /// The last wildcard whose `X` ends here.
        wildcard: Option<usize>,
        /// The last wildcard at or below this node.
        below: Option<usize>,
        /// The last plain name whose walk passes this node.
        plain: Option<usize>,
    }
    fn child(nodes: &[Node], at: usize, byte: u8) -> Option<usize> {
        nodes[at]
            .children
            .iter()
            .find_map(|&(b, n)| (b == byte).then_some(n))
    }
    let later = |best: &mut Option<usize>, j: Option<usize>| {
        *best = (*best).max(j);
    };
    let mut nodes = vec![Node::default()];
    // Wildcards, backwards, and the last index of each plain name.
    let mut plain_last: std::collections::HashMap<&str, usize> = Default::default();
    for (i, host) in hosts.iter().enumerate() {
        let Some(x) = host.strip_prefix('*') else {
            plain_last.insert(host.as_str(), i);
            continue;
        };
        let mut at = 0;
        for &byte in x.as_bytes().iter().rev() {
            at = match child(&nodes, at, byte) {
                Some(n) => n,
                None => {
                    nodes.push(Node::default());
                    let n = nodes.len() - 1;
                    nodes[at].children.push((byte, n));
                    n
                }
            };
        }
        nodes[at].wildcard = Some(i);
    }
    // `below`: children are always pushed after their parent, so a reverse pass sees every
    // child before its parent.
    for n in (0..nodes.len()).rev() {
        let below = nodes[n]
            .children
            .iter()
            .fold(nodes[n].wildcard, |best, &(_, c)| best.max(nodes[c].below));
        nodes[n].below = below;
    }
    // Walks a name backwards; returns the last wildcard passed (ending the name, itself
    // included) and where the walk stopped, if it used the whole name.
    let walk = |nodes: &mut Vec<Node>, name: &str, plain: Option<usize>| {
        let mut at = 0;
        let mut ends = nodes[0].wildcard;
        if let Some(i) = plain {
            later(&mut nodes[0].plain, Some(i));
        }
        for &byte in name.as_bytes().iter().rev() {
            let Some(n) = child(nodes, at, byte) else {
                return (ends, None);
            };
            at = n;
            later(&mut ends, nodes[at].wildcard);
            if let Some(i) = plain {
                later(&mut nodes[at].plain, Some(i));
            }
        }
        (ends, Some(at))
    };
    for (i, host) in hosts.iter().enumerate() {
        if !host.starts_with('*') {
            walk(&mut nodes, host, Some(i));
        }
    }
    let mut out = Vec::new();
    for (i, host) in hosts.iter().enumerate() {
        let mut last = None;
        match host.strip_prefix('*') {
            None => {
                later(&mut last, plain_last.get(host.as_str()).copied());
                // Wildcards whose X ends this name.
                later(&mut last, walk(&mut nodes, host, None).0);
            }
            Some(x) => {
                let (ends, stop) = walk(&mut nodes, x, None);
                // Wildcards whose X ends this X (this one included, and an equal later one).
                later(&mut last, ends);
                if let Some(stop) = stop {
                    // Wildcards whose X ends with this X, and plain names ending with it.
                    later(&mut last, nodes[stop].below);
                    later(&mut last, nodes[stop].plain);
                }
            }
        }
        if let Some(j) = last.filter(|&j| j > i) {
            out.push((i, j));
        }
    }
    out
}

/// Istio's `host.Name.SubsetOf`: whether every name matching `a` also matches `b`.
fn host_subset_of(a: &str, b: &str) -> bool {
    match (a.strip_prefix('*'), b.strip_prefix('*')) {
        (Some(a), Some(b)) => a.ends_with(b),
        (Some(_), None) => false,
        (None, Some(b)) => a.ends_with(b),
        (None, None) => a == b,
    }
}

/// Warnings for rules that can never match: a rule without matches that is not the last, and
/// matches repeated from an earlier rule.
fn warn_unreachable_rules(spec: &VirtualService, at: &FieldPath, report: &mut Report) {
    fn check<M: PartialEq + Clone>(
        rules: &[(String, &[M])],
        unnamed: impl Fn(&M) -> M,
        at: &FieldPath,
        report: &mut Report,
    ) {
        let mut seen: Vec<(M, usize)> = Vec::new();
        let mut catch_all = false;
        for (n, (name, matches)) in rules.iter().enumerate() {
            let r_at = at.index(n);
            if matches.is_empty() {
                if catch_all {
                    report.warn(
                        &r_at,
                        format!(
                            "virtualService rule {name} not used (only the last rule can have \
                             no matches)"
                        ),
                    );
                }
                catch_all = true;
                continue;
            }
            let mut duplicates = 0;
            for (j, m) in matches.iter().enumerate() {
                let key = unnamed(m);
                if let Some((_, dup)) = seen.iter().find(|(k, _)| *k == key) {
                    report.warn(
                        &r_at.field("match").index(j),
                        format!(
                            "virtualService rule {name} match #{j} is not used (duplicate/\
                             overlapping match in rule {})",
                            rules[*dup].0
                        ),
                    );
                    duplicates += 1;
                } else {
                    seen.push((key, n));
                }
            }
            if duplicates == matches.len() {
                report.warn(
                    &r_at,
                    format!(
                        "virtualService rule {name} not used (all matches used by prior rules)"
                    ),
                );
            }
        }
    }
    let rule_name = |name: &str, n: usize| {
        if name.is_empty() {
            format!("#{n}")
        } else {
            format!("{name:?}")
        }
    };
    let http: Vec<_> = spec
        .http
        .iter()
        .enumerate()
        .map(|(n, r)| (rule_name(&r.name, n), r.matches.as_slice()))
        .collect();
    check(
        &http,
        |m: &HttpMatchRequest| HttpMatchRequest {
            name: String::new(),
            ..m.clone()
        },
        &at.field("http"),
        report,
    );
    warn_overlapping_prefixes(spec, &at.field("http"), report);
    let tcp: Vec<_> = spec
        .tcp
        .iter()
        .enumerate()
        .map(|(n, r)| (format!("#{n}"), r.matches.as_slice()))
        .collect();
    check(&tcp, Clone::clone, &at.field("tcp"), report);
    let tls: Vec<_> = spec
        .tls
        .iter()
        .enumerate()
        .map(|(n, r)| (format!("#{n}"), r.matches.as_slice()))
        .collect();
    check(&tls, Clone::clone, &at.field("tls"), report);
}

/// A prefix-uri match reduced to what Istio compares for overlaps.
struct PrefixMatch {
    rule: usize,
    rule_name: String,
    match_index: usize,
    match_name: String,
    prefix: String,
    port: u32,
    method: String,
    authority: String,
    headers: BTreeMap<String, String>,
    query_params: BTreeMap<String, String>,
    without_headers: BTreeMap<String, String>,
}

/// `exact:<v>` or `prefix:<v>`; empty for a regex or no match.
fn exact_or_prefix(sm: Option<&StringMatch>) -> String {
    match sm.and_then(StringMatch::kind) {
        Some(StringMatchKind::Exact(s)) if !s.is_empty() => format!("exact:{s}"),
        Some(StringMatchKind::Prefix(s)) if !s.is_empty() => format!("prefix:{s}"),
        _ => String::new(),
    }
}

/// Istio's overlapping-prefix analysis: a later prefix match that an earlier, shorter prefix
/// match with the same other conditions already covers is never used.
fn warn_overlapping_prefixes(spec: &VirtualService, at: &FieldPath, report: &mut Report) {
    let map = |m: &BTreeMap<String, StringMatch>| -> BTreeMap<String, String> {
        m.iter()
            .map(|(k, v)| (k.clone(), exact_or_prefix(Some(v))))
            .collect()
    };
    let mut seen: Vec<HttpMatchRequest> = Vec::new();
    let mut prefixes = Vec::new();
    for (n, rule) in spec.http.iter().enumerate() {
        for (j, m) in rule.matches.iter().enumerate() {
            let key = HttpMatchRequest {
                name: String::new(),
                ..m.clone()
            };
            if seen.contains(&key) {
                continue;
            }
            seen.push(key);
            let Some(StringMatchKind::Prefix(prefix)) = m.uri.as_ref().and_then(StringMatch::kind)
            else {
                continue;
            };
            if prefix.is_empty() {
                continue;
            }
            let mut method = exact_or_prefix(m.method.as_ref());
            if method.is_empty() {
                method = "exact:GET".to_string();
            }
            prefixes.push(PrefixMatch {
                rule: n,
                rule_name: if rule.name.is_empty() {
                    format!("#{n}")
                } else {
                    format!("{:?}", rule.name)
                },
                match_index: j,
                match_name: if m.name.is_empty() {
                    format!("#{j}")
                } else {
                    format!("{:?}", m.name)
                },
                prefix: prefix.to_string(),
                port: m.port.unwrap_or(0),
                method,
                authority: exact_or_prefix(m.authority.as_ref()),
                headers: map(&m.headers),
                query_params: map(&m.query_params),
                without_headers: map(&m.without_headers),
            });
        }
    }
    let covered_map = |a: &BTreeMap<String, String>, b: &BTreeMap<String, String>| {
        a.len() == b.len()
            && a.iter().all(|(k, va)| {
                b.get(k)
                    .is_some_and(|vb| va == vb || va.starts_with(vb.as_str()))
            })
    };
    for (i, a) in prefixes.iter().enumerate() {
        for b in &prefixes[i + 1..] {
            let covered = a.prefix != b.prefix
                && b.prefix.starts_with(&a.prefix)
                && a.port == b.port
                && (a.method == b.method || a.method.starts_with(&b.method))
                && (a.authority == b.authority || a.authority.starts_with(&b.authority))
                && covered_map(&a.headers, &b.headers)
                && covered_map(&a.query_params, &b.query_params)
                && covered_map(&a.without_headers, &b.without_headers);
            if covered {
                report.warn(
                    &at.index(b.rule).field("match").index(b.match_index),
                    format!(
                        "virtualService rule {} match {} of prefix {} is not used \
                         (duplicate/overlapping match in rule {} of prefix {} on {}): move the \
                         longer prefix first",
                        b.rule_name, b.match_name, b.prefix, a.match_name, a.prefix, a.rule_name
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn check(spec: serde_json::Value) -> Report {
        let vs: VirtualService = serde_json::from_value(spec).unwrap();
        let meta = ObjectMeta {
            name: "vs".into(),
            namespace: Some("default".into()),
            ..ObjectMeta::default()
        };
        let mut report = Report::default();
        validate(&vs, &meta, &FieldPath::root("spec"), &mut report);
        report
    }

    fn errors(spec: serde_json::Value) -> Vec<String> {
        check(spec).errors.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn accepts_a_plain_route() {
        let r = check(json!({
            "hosts": ["reviews"],
            "http": [{"route": [{"destination": {"host": "reviews", "subset": "v1"}}]}],
        }));
        assert!(r.is_ok(), "{r:?}");
    }

    #[test]
    fn delegate_rules() {
        let e = errors(json!({"gateways": ["gw"], "http": [{"delegate": {"name": "x"}}]}));
        assert!(e.iter().any(|e| e.contains("no gateways")), "{e:?}");
        assert!(
            e.iter().any(|e| e.contains("cannot contain delegate")),
            "{e:?}"
        );
        let e = errors(
            json!({"hosts": ["a.b"], "http": [{"delegate": {"name": "x"}, "route": [{"destination": {"host": "a"}}]}]}),
        );
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("spec.http[0].route: root HTTP route"),
            "{e:?}"
        );
    }

    #[test]
    fn wildcard_hosts_and_duplicates() {
        let e =
            errors(json!({"hosts": ["*"], "http": [{"route": [{"destination": {"host": "a"}}]}]}));
        assert!(e[0].contains("wildcard host * is not allowed"), "{e:?}");
        assert!(errors(json!({"hosts": ["*"], "gateways": ["ns/gw"], "http": [{"route": [{"destination": {"host": "a"}}]}]})).is_empty());
        let e = errors(
            json!({"hosts": ["*.foo.bar", "*.bar"], "http": [{"route": [{"destination": {"host": "a"}}]}]}),
        );
        assert!(e[0].contains("duplicate hosts"), "{e:?}");
    }

    #[test]
    fn overlapping_hosts_agrees_with_comparing_every_pair() {
        let pool = [
            "a.b.c", "b.c", "c", "*.b.c", "*.c", "*", "*b.c", "x.b.c", "*x.b.c", "a.b.c", "*.c",
            "1.2.3.4", "*.4", "ab.c", "*c",
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..3000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let n = (x % 7) as usize;
            let hosts: Vec<String> = (0..n)
                .map(|k| pool[((x >> (8 * k)) % pool.len() as u64) as usize].to_string())
                .collect();
            let want: Vec<(usize, usize)> = (0..hosts.len())
                .filter_map(|i| {
                    (i + 1..hosts.len())
                        .rev()
                        .find(|&j| host_matches(&hosts[i], &hosts[j]))
                        .map(|j| (i, j))
                })
                .collect();
            assert_eq!(overlapping_hosts(&hosts), want, "{hosts:?}");
        }
    }

    #[test]
    fn weights_and_destinations() {
        let e = errors(json!({"hosts": ["a"], "tcp": [{"route": [
            {"destination": {"host": "a"}, "weight": 0},
            {"destination": {"host": "*"}, "weight": 0}]}]}));
        assert!(
            e.iter().any(|e| e.contains("total destination weight = 0")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|e| e.starts_with("spec.tcp[0].route[1].destination.host")),
            "{e:?}"
        );
    }

    #[test]
    fn sni_hosts_must_be_within_hosts() {
        let e = errors(json!({"hosts": ["foo.bar"], "tls": [{
            "match": [{"sniHosts": ["other.com"]}],
            "route": [{"destination": {"host": "a"}}]}]}));
        assert!(e[0].contains("not a compatible subset"), "{e:?}");
        let r = check(json!({"hosts": ["foo.bar"], "tls": [{
            "match": [{"sniHosts": ["1.1.1.1"]}],
            "route": [{"destination": {"host": "a"}}]}]}));
        assert!(r.is_ok() && !r.warnings.is_empty(), "{r:?}");
    }

    #[test]
    fn warns_on_unreachable_rules() {
        let r = check(json!({"hosts": ["a"], "http": [
            {"route": [{"destination": {"host": "a"}}]},
            {"route": [{"destination": {"host": "b"}}]}]}));
        assert!(r.is_ok());
        assert!(
            r.warnings[0].message.contains("only the last rule"),
            "{r:?}"
        );
    }

    #[test]
    fn warns_on_shadowed_prefixes() {
        let r = check(json!({"hosts": ["a"], "http": [
            {"match": [{"uri": {"prefix": "/api"}}], "route": [{"destination": {"host": "a"}}]},
            {"match": [{"uri": {"prefix": "/api/v1"}}], "route": [{"destination": {"host": "b"}}]}]}));
        assert!(r.is_ok());
        assert!(
            r.warnings.iter().any(|w| w.path == "spec.http[1].match[0]"),
            "{r:?}"
        );
        let r = check(json!({"hosts": ["a"], "http": [
            {"match": [{"uri": {"prefix": "/api/v1"}}], "route": [{"destination": {"host": "a"}}]},
            {"match": [{"uri": {"prefix": "/api"}}], "route": [{"destination": {"host": "b"}}]}]}));
        assert!(r.warnings.is_empty(), "{r:?}");
    }
}
