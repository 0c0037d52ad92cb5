//! Istio's validating-webhook rules for DestinationRule (`ValidateDestinationRule` and its
//! traffic-policy checks), reimplemented.

use std::collections::{BTreeMap, BTreeSet};

use super::{
    ClientTlsMode, ClientTlsSettings, ConnectionPoolSettings, DestinationRule,
    LoadBalancerSettings, LocalityFailover, LocalityLoadBalancerSetting, OutlierDetection,
    PortTrafficPolicy, Subset, TrafficPolicy, TunnelSettings, ZoneAwareLoadBalancerSetting,
};
use crate::common::WorkloadSelector;
use crate::validate::common::{
    is_dns1123_label, is_ip, validate_duration, validate_fqdn, validate_labels, validate_port,
    validate_wildcard_domain,
};
use crate::{FieldPath, ObjectMeta, Report};

/// The topology labels that locality failover handles itself.
const TOPOLOGY_LABELS: [&str; 3] = [
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
    "topology.istio.io/subzone",
];

/// Checks a DestinationRule on its own, as Istio's validating webhook does.
pub fn validate(spec: &DestinationRule, meta: &ObjectMeta, at: &FieldPath, report: &mut Report) {
    let namespace = meta.namespace.as_deref();
    report.check(&at.field("host"), validate_wildcard_domain(&spec.host));
    if let Some(tp) = &spec.traffic_policy {
        validate_traffic_policy(tp, namespace, &at.field("trafficPolicy"), report);
    }
    let mut names = BTreeSet::new();
    for (i, subset) in spec.subsets.iter().enumerate() {
        let s_at = at.field("subsets").index(i);
        if !names.insert(subset.name.as_str()) {
            report.error(
                &s_at.field("name"),
                format!(
                    "duplicate subset names: {}: give each subset its own name",
                    subset.name
                ),
            );
        }
        validate_subset(subset, namespace, &s_at, report);
    }
    validate_export_to(
        namespace,
        &spec.export_to,
        spec.workload_selector.is_some(),
        &at.field("exportTo"),
        report,
    );
    if let Some(selector) = &spec.workload_selector {
        validate_workload_selector(selector, &at.field("workloadSelector"), report);
    }
}

fn validate_subset(subset: &Subset, namespace: Option<&str>, at: &FieldPath, report: &mut Report) {
    report.check(&at.field("name"), validate_subset_name(&subset.name));
    report.check(&at.field("labels"), validate_labels(&subset.labels));
    if let Some(tp) = &subset.traffic_policy {
        validate_traffic_policy(tp, namespace, &at.field("trafficPolicy"), report);
    }
}

/// A subset name: a DNS-1123 label.
pub(crate) fn validate_subset_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("subset name cannot be empty".to_string());
    }
    if !is_dns1123_label(name) {
        return Err(format!(
            "subset name is invalid: {name}: use lower-case letters, digits and '-' (a DNS-1123 \
             label)"
        ));
    }
    Ok(())
}

/// `exportTo` of Istio config (Istio's `validateExportTo`, for kinds other than ServiceEntry):
/// `.`, `*` or namespace names, without duplicates, and `*` alone. A DestinationRule with a
/// workload selector may be exported to its own namespace only.
pub(crate) fn validate_export_to(
    namespace: Option<&str>,
    export_to: &[String],
    dr_with_selector: bool,
    at: &FieldPath,
    report: &mut Report,
) {
    if export_to.is_empty() {
        return;
    }
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    for (i, e) in export_to.iter().enumerate() {
        let e_at = at.index(i);
        let key = match (e.as_str(), namespace) {
            (".", Some(ns)) => ns,
            _ => e.as_str(),
        };
        if seen.contains(key) {
            if key != e {
                report.error(
                    &e_at,
                    format!(
                        "duplicate entries in exportTo: . and current namespace {}",
                        namespace.unwrap_or_default()
                    ),
                );
            } else {
                report.error(
                    &e_at,
                    format!("duplicate entries in exportTo for entry {e}"),
                );
            }
            continue;
        }
        match key {
            "." | "*" => {}
            "~" => {
                report.error(
                    &e_at,
                    "exportTo ~ (none) is not allowed for Istio configuration objects",
                );
                continue;
            }
            ns if !is_dns1123_label(ns) => {
                report.error(
                    &e_at,
                    format!(
                        "invalid exportTo entry {e:?}: only ., *, or a valid DNS 1123 label \
                         (a namespace) is allowed"
                    ),
                );
                continue;
            }
            _ => {}
        }
        seen.insert(key);
    }
    if dr_with_selector && !seen.is_empty() {
        let own = namespace.map_or(seen.contains("."), |ns| seen.contains(ns));
        if !own {
            report.error(
                at,
                "destination rule with workload selector cannot have exportTo beyond current \
                 namespace",
            );
        } else if seen.len() > 1 {
            report.error(
                at,
                "destination rule with workload selector cannot have multiple entries in \
                 exportTo",
            );
        }
    }
    if seen.contains("*") && export_to.len() > 1 {
        report.error(
            at,
            "cannot have both public (*) and non-public exportTo values for a resource: use * \
             alone",
        );
    }
}

/// Istio's `validateWorkloadSelector`.
fn validate_workload_selector(selector: &WorkloadSelector, at: &FieldPath, report: &mut Report) {
    let l_at = at.field("matchLabels");
    for (k, v) in &selector.match_labels {
        if k.is_empty() {
            report.error(
                &l_at,
                format!("empty key is not supported in selector: \"{k}={v}\""),
            );
        }
        if k.contains('*') || v.contains('*') {
            report.error(
                &l_at.key(k),
                format!("wildcard is not supported in selector: \"{k}={v}\""),
            );
        }
    }
    if selector.match_labels.is_empty() {
        report.warn(
            at,
            "workload selector specified without labels: it selects every workload of the \
             namespace",
        );
    }
}

/// Istio's `validateTrafficPolicy`.
fn validate_traffic_policy(
    tp: &TrafficPolicy,
    namespace: Option<&str>,
    at: &FieldPath,
    report: &mut Report,
) {
    if tp.outlier_detection.is_none()
        && tp.connection_pool.is_none()
        && tp.load_balancer.is_none()
        && tp.tls.is_none()
        && tp.port_level_settings.is_empty()
        && tp.tunnel.is_none()
        && tp.proxy_protocol.is_none()
        && tp.retry_budget.is_none()
    {
        report.error(at, "traffic policy must have at least one field");
        return;
    }
    if tp.tunnel.is_some() && tp.proxy_protocol.is_some() {
        report.error(at, "tunnel and proxyProtocol must not be set together");
        return;
    }
    if let Some(od) = &tp.outlier_detection {
        validate_outlier_detection(od, &at.field("outlierDetection"), report);
    }
    if let Some(cp) = &tp.connection_pool {
        validate_connection_pool(cp, &at.field("connectionPool"), report);
    }
    if let Some(lb) = &tp.load_balancer {
        validate_load_balancer(
            lb,
            tp.outlier_detection.as_ref(),
            &at.field("loadBalancer"),
            report,
        );
    }
    if let Some(tls) = &tp.tls {
        validate_client_tls(tls, namespace, &at.field("tls"), report);
    }
    for (i, pl) in tp.port_level_settings.iter().enumerate() {
        validate_port_traffic_policy(
            pl,
            namespace,
            &at.field("portLevelSettings").index(i),
            report,
        );
    }
    if let Some(tunnel) = &tp.tunnel {
        validate_tunnel(tunnel, &at.field("tunnel"), report);
    }
    if let Some(budget) = &tp.retry_budget
        && let Some(p) = budget.percent
        && !(0.0..=100.0).contains(&p)
    {
        report.error(
            &at.field("retryBudget").field("percent"),
            format!("retry budget percent {p} is not in range 0..100"),
        );
    }
}

fn validate_port_traffic_policy(
    pl: &PortTrafficPolicy,
    namespace: Option<&str>,
    at: &FieldPath,
    report: &mut Report,
) {
    match &pl.port {
        None => report.error(
            &at.field("port"),
            "portTrafficPolicy must have valid port: set port.number",
        ),
        Some(p) => report.check(
            &at.field("port").field("number"),
            validate_port(i64::from(p.number)),
        ),
    }
    if pl.outlier_detection.is_none()
        && pl.connection_pool.is_none()
        && pl.load_balancer.is_none()
        && pl.tls.is_none()
    {
        report.error(at, "port traffic policy must have at least one field");
        return;
    }
    if let Some(od) = &pl.outlier_detection {
        validate_outlier_detection(od, &at.field("outlierDetection"), report);
    }
    if let Some(cp) = &pl.connection_pool {
        validate_connection_pool(cp, &at.field("connectionPool"), report);
    }
    if let Some(lb) = &pl.load_balancer {
        validate_load_balancer(
            lb,
            pl.outlier_detection.as_ref(),
            &at.field("loadBalancer"),
            report,
        );
    }
    if let Some(tls) = &pl.tls {
        validate_client_tls(tls, namespace, &at.field("tls"), report);
    }
}

fn validate_tunnel(t: &TunnelSettings, at: &FieldPath, report: &mut Report) {
    if !matches!(t.protocol.as_str(), "" | "CONNECT" | "POST") {
        report.error(
            &at.field("protocol"),
            "tunnel protocol must be \"CONNECT\" or \"POST\"",
        );
    }
    if let Err(e) = validate_fqdn(&t.target_host)
        && !is_ip(&t.target_host)
    {
        report.error(
            &at.field("targetHost"),
            format!(
                "tunnel target host must be valid FQDN or IP address: {e}; {} is not a valid IP",
                t.target_host
            ),
        );
    }
    if let Err(e) = validate_port(i64::from(t.target_port)) {
        report.error(
            &at.field("targetPort"),
            format!("tunnel target port is invalid: {e}"),
        );
    }
}

/// Istio's `validateOutlierDetection`.
fn validate_outlier_detection(od: &OutlierDetection, at: &FieldPath, report: &mut Report) {
    if let Some(d) = &od.base_ejection_time {
        report.check(&at.field("baseEjectionTime"), validate_duration(d));
    }
    if od.consecutive_errors != 0 {
        report.warn(
            &at.field("consecutiveErrors"),
            "outlier detection consecutive errors is deprecated, use consecutiveGatewayErrors \
             or consecutive5xxErrors instead",
        );
    }
    if !od.split_external_local_origin_errors
        && od.consecutive_local_origin_failures.unwrap_or(0) > 0
    {
        report.error(
            &at.field("consecutiveLocalOriginFailures"),
            "outlier detection consecutive local origin failures is specified, but split \
             external local origin errors is set to false: set splitExternalLocalOriginErrors",
        );
    }
    if let Some(d) = &od.interval {
        report.check(&at.field("interval"), validate_duration(d));
    }
    report.check(
        &at.field("maxEjectionPercent"),
        validate_percent(od.max_ejection_percent),
    );
    report.check(
        &at.field("minHealthPercent"),
        validate_percent(od.min_health_percent),
    );
}

fn validate_percent(v: i32) -> Result<(), String> {
    if (0..=100).contains(&v) {
        Ok(())
    } else {
        Err(format!("percentage {v} is not in range 0..100"))
    }
}

/// Istio's `validateConnectionPool` (also used for a Sidecar's inbound connection pool).
pub fn validate_connection_pool(cp: &ConnectionPoolSettings, at: &FieldPath, report: &mut Report) {
    if cp.http.is_none() && cp.tcp.is_none() {
        report.error(
            at,
            "connection pool must have at least one field: set tcp or http",
        );
        return;
    }
    if let Some(http) = &cp.http {
        let h_at = at.field("http");
        for (field, value, what) in [
            (
                "http1MaxPendingRequests",
                http.http1_max_pending_requests,
                "http1 max pending requests",
            ),
            (
                "http2MaxRequests",
                http.http2_max_requests,
                "http2 max requests",
            ),
            (
                "maxRequestsPerConnection",
                http.max_requests_per_connection,
                "max requests per connection",
            ),
            ("maxRetries", http.max_retries, "max retries"),
            (
                "maxConcurrentStreams",
                http.max_concurrent_streams,
                "max concurrent streams",
            ),
        ] {
            if value < 0 {
                report.error(&h_at.field(field), format!("{what} must be non-negative"));
            }
        }
        if let Some(d) = &http.idle_timeout {
            report.check(&h_at.field("idleTimeout"), validate_duration(d));
        }
        if http.h2_upgrade_policy == Some(super::H2UpgradePolicy::Upgrade)
            && http.use_client_protocol
        {
            report.error(
                &h_at.field("useClientProtocol"),
                "use client protocol must not be true when H2UpgradePolicy is UPGRADE",
            );
        }
        if let Some(ka) = &http.http2_keep_alive {
            let k_at = h_at.field("http2KeepAlive");
            for (field, value) in [("interval", &ka.interval), ("timeout", &ka.timeout)] {
                match value {
                    None => report.error(
                        &k_at.field(field),
                        format!("http2KeepAlive {field} is required"),
                    ),
                    Some(d) => report.check(&k_at.field(field), validate_duration(d)),
                }
            }
        }
    }
    if let Some(tcp) = &cp.tcp {
        let t_at = at.field("tcp");
        if tcp.max_connections < 0 {
            report.error(
                &t_at.field("maxConnections"),
                "max connections must be non-negative",
            );
        }
        if let Some(d) = &tcp.connect_timeout {
            report.check(&t_at.field("connectTimeout"), validate_duration(d));
        }
        if let Some(d) = &tcp.max_connection_duration {
            report.check(&t_at.field("maxConnectionDuration"), validate_duration(d));
        }
        // `0s` (anything under 1ms) disables the idle timeout.
        if let Some(d) = &tcp.idle_timeout
            && d.as_nanos() / 1_000_000 != 0
        {
            report.check(&t_at.field("idleTimeout"), validate_duration(d));
        }
        if let Some(ka) = &tcp.tcp_keepalive {
            let k_at = t_at.field("tcpKeepalive");
            if let Some(d) = &ka.time {
                report.check(&k_at.field("time"), validate_duration(d));
            }
            if let Some(d) = &ka.interval {
                report.check(&k_at.field("interval"), validate_duration(d));
            }
        }
    }
}

/// Istio's `validateLoadBalancer`.
fn validate_load_balancer(
    lb: &LoadBalancerSettings,
    outlier: Option<&OutlierDetection>,
    at: &FieldPath,
    report: &mut Report,
) {
    if lb.simple.is_some() && lb.consistent_hash.is_some() {
        report.error(at, "set only one of simple and consistentHash");
    }
    if let Some(ch) = &lb.consistent_hash {
        let c_at = at.field("consistentHash");
        let keys = usize::from(ch.http_header_name.is_some())
            + usize::from(ch.http_cookie.is_some())
            + usize::from(ch.use_source_ip.is_some())
            + usize::from(ch.http_query_parameter_name.is_some());
        if keys > 1 {
            report.error(
                &c_at,
                "set only one of httpHeaderName, httpCookie, useSourceIp and \
                 httpQueryParameterName",
            );
        }
        if ch.ring_hash.is_some() && ch.maglev.is_some() {
            report.error(&c_at, "set only one of ringHash and maglev");
        }
        if let Some(cookie) = &ch.http_cookie {
            let k_at = c_at.field("httpCookie");
            if cookie.name.is_empty() {
                report.error(&k_at.field("name"), "name required for HttpCookie");
            }
            let mut names = BTreeSet::new();
            for (i, attr) in cookie.attributes.iter().enumerate() {
                let a_at = k_at.field("attributes").index(i).field("name");
                if attr.name.is_empty() {
                    report.error(&a_at, "cookie attribute name cannot be empty");
                } else if !names.insert(attr.name.to_ascii_lowercase()) {
                    report.error(
                        &a_at,
                        format!("duplicate cookie attribute name {:?}", attr.name),
                    );
                }
            }
        }
        if ch.minimum_ring_size != 0 {
            report.warn(
                &c_at.field("minimumRingSize"),
                "consistent hash MinimumRingSize is deprecated, use ConsistentHashLB's RingHash \
                 configuration instead",
            );
            if ch.ring_hash.is_some() || ch.maglev.is_some() {
                report.error(
                    &c_at.field("minimumRingSize"),
                    "only one of MinimumRingSize or Maglev/Ringhash can be specified",
                );
            }
        }
        if let Some(maglev) = &ch.maglev {
            let m_at = c_at.field("maglev").field("tableSize");
            let size = maglev.table_size;
            if size == 0 {
                report.error(&m_at, "tableSize must be set for maglev");
            }
            if size >= 5_000_011 {
                report.error(&m_at, "tableSize must be less than 5000011 for maglev");
            }
            if !is_prime(size) {
                report.error(&m_at, "tableSize must be a prime number for maglev");
            }
        }
    }
    if lb.locality_lb_setting.is_some() && lb.zone_aware_lb_setting.is_some() {
        report.error(
            at,
            "only one of localityLbSetting and zoneAwareLbSetting may be set",
        );
    }
    if let Some(locality) = &lb.locality_lb_setting {
        validate_locality_lb(locality, outlier, &at.field("localityLbSetting"), report);
    }
    if let Some(zone) = &lb.zone_aware_lb_setting {
        validate_zone_aware_lb(zone, &at.field("zoneAwareLbSetting"), report);
    }
    if let Some(d) = &lb.warmup_duration_secs {
        report.check(&at.field("warmupDurationSecs"), validate_duration(d));
    }
    if let Some(w) = &lb.warmup {
        let w_at = at.field("warmup");
        match &w.duration {
            None => report.error(&w_at.field("duration"), "duration is required"),
            Some(d) => report.check(&w_at.field("duration"), validate_duration(d)),
        }
        if let Some(p) = w.minimum_percent
            && !(0.0..=100.0).contains(&p)
        {
            report.error(
                &w_at.field("minimumPercent"),
                "minimumPercent value should be between 0 and 100",
            );
        }
        if let Some(a) = w.aggression
            && a < 1.0
        {
            report.error(
                &w_at.field("aggression"),
                "aggression should be greater than or equal to 1",
            );
        }
    }
}

/// Envoy's primality test for Maglev table sizes.
fn is_prime(x: u64) -> bool {
    if x != 0 && x < 4 {
        return true;
    }
    if x & 1 == 0 {
        return false;
    }
    let mut f = 3;
    while f * f <= x {
        if x.is_multiple_of(f) {
            return false;
        }
        f += 2;
    }
    true
}

/// Istio's `ValidateLocalityLbSetting`.
fn validate_locality_lb(
    lb: &LocalityLoadBalancerSetting,
    outlier: Option<&OutlierDetection>,
    at: &FieldPath,
    report: &mut Report,
) {
    if !lb.distribute.is_empty() && !lb.failover.is_empty() {
        report.error(
            at,
            "can not simultaneously specify 'distribute' and 'failover'",
        );
        return;
    }
    if !lb.failover.is_empty()
        && let Some(label) = lb
            .failover_priority
            .iter()
            .find(|l| TOPOLOGY_LABELS.contains(&l.as_str()))
    {
        report.error(
            &at.field("failoverPriority"),
            format!(
                "can not simultaneously set 'failover' and topology label '{label}' in \
                 'failover_priority'"
            ),
        );
        return;
    }
    let mut sources = Vec::new();
    for (i, d) in lb.distribute.iter().enumerate() {
        let d_at = at.field("distribute").index(i);
        sources.push(d.from.as_str());
        let mut total: u64 = 0;
        for weight in d.to.values() {
            if *weight == 0 || *weight > 100 {
                report.error(
                    &d_at.field("to"),
                    "locality weight must be in range [1, 100]",
                );
                return;
            }
            total += u64::from(*weight);
        }
        if total != 100 {
            report.error(
                &d_at.field("to"),
                format!("total locality weight {total} != 100"),
            );
            return;
        }
        report.check(
            &d_at.field("to"),
            validate_localities(d.to.keys().map(String::as_str)),
        );
    }
    report.check(
        &at.field("distribute"),
        validate_localities(sources.into_iter()),
    );
    if (!lb.failover.is_empty() || !lb.failover_priority.is_empty()) && outlier.is_none() {
        report.warn(at, "outlier detection policy must be provided for failover");
    }
    validate_failovers(&lb.failover, &at.field("failover"), report);
}

fn validate_failovers(failovers: &[LocalityFailover], at: &FieldPath, report: &mut Report) {
    for (i, f) in failovers.iter().enumerate() {
        let f_at = at.index(i);
        if f.from == f.to {
            report.error(
                &f_at,
                "locality lb failover settings must specify different regions",
            );
        }
        if f.from.contains('/') || f.to.contains('/') {
            report.error(&f_at, "locality lb failover only specify region");
        }
        if f.from.contains('*') || f.to.contains('*') {
            report.error(
                &f_at,
                "locality lb failover region should not contain '*' wildcard",
            );
        }
    }
}

/// Zone-aware balancing: failovers between distinct regions, and no topology labels in
/// `failoverPriority` (zones and regions are handled automatically).
fn validate_zone_aware_lb(lb: &ZoneAwareLoadBalancerSetting, at: &FieldPath, report: &mut Report) {
    validate_failovers(&lb.failover, &at.field("failover"), report);
    for (i, label) in lb.failover_priority.iter().enumerate() {
        if TOPOLOGY_LABELS.contains(&label.as_str()) {
            report.error(
                &at.field("failoverPriority").index(i),
                format!(
                    "failoverPriority must not include the topology label '{label}': zone-aware \
                     load balancing handles region, zone and subzone itself"
                ),
            );
        }
    }
}

/// Localities `region[/zone[/subzone]]`, with at most one `*` at the end, none overlapping.
fn validate_localities<'a>(localities: impl Iterator<Item = &'a str>) -> Result<(), String> {
    // region -> zone -> subzones; "*" marks a whole level.
    let mut seen: BTreeMap<&str, BTreeMap<&str, BTreeSet<&str>>> = BTreeMap::new();
    for locality in localities {
        let stars = locality.matches('*').count();
        if stars > 1 || (stars == 1 && !locality.ends_with('*')) {
            return Err(format!(
                "locality {locality} wildcard '*' number can not exceed 1 and must be in the end"
            ));
        }
        let overlap = || format!("locality {locality} overlap with previous specified ones");
        if seen.contains_key("*") {
            return Err(overlap());
        }
        let parts: Vec<&str> = locality.splitn(3, '/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(format!(
                "locality {locality} must not contain empty region/zone/subzone info"
            ));
        }
        match parts.as_slice() {
            [region] => {
                if seen.contains_key(region) {
                    return Err(overlap());
                }
                seen.insert(region, BTreeMap::from([("*", BTreeSet::from(["*"]))]));
            }
            [region, zone] => {
                let zones = seen.entry(region).or_default();
                if zones.contains_key("*") || zones.contains_key(zone) {
                    return Err(overlap());
                }
                zones.insert(zone, BTreeSet::from(["*"]));
            }
            [region, zone, subzone] => {
                let zones = seen.entry(region).or_default();
                if zones.contains_key("*") {
                    return Err(overlap());
                }
                let subzones = zones.entry(zone).or_default();
                if subzones.contains("*") || subzones.contains(subzone) {
                    return Err(overlap());
                }
                subzones.insert(subzone);
            }
            _ => {}
        }
    }
    Ok(())
}

/// Istio's `ValidateTLS` for client TLS settings.
fn validate_client_tls(
    tls: &ClientTlsSettings,
    namespace: Option<&str>,
    at: &FieldPath,
    report: &mut Report,
) {
    if let Some(rest) = tls.credential_name.strip_prefix("configmap://") {
        let ns = namespace.unwrap_or_default();
        let target_ns = match rest.split('/').collect::<Vec<_>>().as_slice() {
            [name] if !name.is_empty() => Some(ns),
            [target, name] if !target.is_empty() && !name.is_empty() => Some(*target),
            _ => None,
        };
        match target_ns {
            None => report.error(
                &at.field("credentialName"),
                format!(
                    "invalid configmap:// credentialName {:?}: write configmap://<name> or \
                     configmap://<namespace>/<name>",
                    tls.credential_name
                ),
            ),
            Some(t) if ns.is_empty() || t != ns => report.error(
                &at.field("credentialName"),
                format!(
                    "invalid configmap:// credentialName: namespace must match the \
                     configuration namespace {ns:?}"
                ),
            ),
            Some(_) => {}
        }
    }
    let mode = tls.mode();
    if tls.insecure_skip_verify == Some(true) {
        if mode == ClientTlsMode::Simple
            && (!tls.ca_certificates.is_empty()
                || !tls.credential_name.is_empty()
                || !tls.subject_alt_names.is_empty())
        {
            report.error(
                at,
                "cannot specify CaCertificates or CredentialName or SubjectAltNames when \
                 InsecureSkipVerify is set true",
            );
        }
        if mode == ClientTlsMode::Mutual
            && (!tls.ca_certificates.is_empty() || !tls.subject_alt_names.is_empty())
        {
            report.error(
                at,
                "cannot specify CaCertificates or SubjectAltNames when InsecureSkipVerify is \
                 set true",
            );
        }
    }
    if matches!(mode, ClientTlsMode::Simple | ClientTlsMode::Mutual)
        && !tls.credential_name.is_empty()
    {
        if !tls.client_certificate.is_empty()
            || !tls.ca_certificates.is_empty()
            || !tls.private_key.is_empty()
            || !tls.ca_crl.is_empty()
        {
            report.error(
                at,
                "cannot specify client certificates or CA certificate or CA CRL If \
                 credentialName is set",
            );
        }
        return;
    }
    if mode == ClientTlsMode::Mutual {
        if tls.client_certificate.is_empty() {
            report.error(
                &at.field("clientCertificate"),
                "client certificate required for mutual tls",
            );
        }
        if tls.private_key.is_empty() {
            report.error(
                &at.field("privateKey"),
                "private key required for mutual tls",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn errors(spec: serde_json::Value) -> Vec<String> {
        let dr: DestinationRule = serde_json::from_value(spec).unwrap();
        let meta = ObjectMeta {
            name: "dr".into(),
            namespace: Some("bar".into()),
            ..ObjectMeta::default()
        };
        let mut report = Report::default();
        validate(&dr, &meta, &FieldPath::root("spec"), &mut report);
        report.errors.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn subsets_and_hosts() {
        assert!(
            errors(
                json!({"host": "reviews", "subsets": [{"name": "v1", "labels": {"version": "v1"}}]})
            )
            .is_empty()
        );
        let e =
            errors(json!({"host": "", "subsets": [{"name": "a"}, {"name": "a"}, {"name": ""}]}));
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(e[0].starts_with("spec.host:"), "{e:?}");
        assert!(e[1].contains("duplicate subset names"), "{e:?}");
        assert!(e[2].contains("subset name cannot be empty"), "{e:?}");
    }

    #[test]
    fn traffic_policy_needs_a_field_and_valid_pools() {
        let e = errors(json!({"host": "r", "trafficPolicy": {}}));
        assert_eq!(
            e,
            ["spec.trafficPolicy: traffic policy must have at least one field"]
        );
        let e = errors(
            json!({"host": "r", "trafficPolicy": {"connectionPool": {"http": {"h2UpgradePolicy": "UPGRADE", "useClientProtocol": true, "maxRetries": -1}}}}),
        );
        assert_eq!(e.len(), 2, "{e:?}");
        let e = errors(
            json!({"host": "r", "trafficPolicy": {"connectionPool": {"tcp": {"idleTimeout": "0s"}}}}),
        );
        assert!(e.is_empty(), "{e:?}");
    }

    #[test]
    fn load_balancer_rules() {
        let e = errors(
            json!({"host": "r", "trafficPolicy": {"loadBalancer": {"consistentHash": {"maglev": {"tableSize": 1000}}}}}),
        );
        assert!(e[0].contains("prime"), "{e:?}");
        assert!(is_prime(65537) && !is_prime(1000) && !is_prime(0));
        let e = errors(
            json!({"host": "r", "trafficPolicy": {"loadBalancer": {"localityLbSetting": {
            "distribute": [{"from": "us/*", "to": {"us/a/*": 60, "eu/*": 30}}]}}}}),
        );
        assert!(e[0].contains("total locality weight 90 != 100"), "{e:?}");
        assert!(validate_localities(["a/*", "a/b"].into_iter()).is_err());
        assert!(validate_localities(["a/b", "a/c/d"].into_iter()).is_ok());
    }

    #[test]
    fn client_tls_rules() {
        let e = errors(json!({"host": "r", "trafficPolicy": {"tls": {"mode": "MUTUAL"}}}));
        assert_eq!(e.len(), 2, "{e:?}");
        let e = errors(
            json!({"host": "r", "trafficPolicy": {"tls": {"mode": "SIMPLE", "credentialName": "configmap://other/ca"}}}),
        );
        assert!(e[0].contains("namespace must match"), "{e:?}");
        assert!(errors(json!({"host": "r", "trafficPolicy": {"tls": {"mode": "SIMPLE", "credentialName": "configmap://ca"}}})).is_empty());
    }

    #[test]
    fn export_to_rules() {
        let e = errors(json!({"host": "r", "exportTo": [".", "bar", "*"]}));
        assert_eq!(e.len(), 2, "{e:?}");
        let e = errors(
            json!({"host": "r", "exportTo": ["other"], "workloadSelector": {"matchLabels": {"app": "a"}}}),
        );
        assert!(e[0].contains("beyond current namespace"), "{e:?}");
    }
}
