//! AuthorizationPolicy: access control for workloads.
//!
//! Also holds the checks that every policy kind shares (workload selector, `targetRef(s)`, the
//! `istio.io/dry-run` annotation); RequestAuthentication, PeerAuthentication and Telemetry use
//! them through `pub(crate)` functions.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::common::{PolicyTargetReference, WorkloadSelector};
use crate::{FieldPath, ObjectMeta, Report};

/// `spec` of an AuthorizationPolicy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicy {
    /// Workloads the policy applies to; all workloads of the namespace when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<PolicyTargetReference>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<PolicyTargetReference>,
    /// A request matches the policy when it matches any rule. Unset: never matches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
    /// ALLOW when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
    /// The extension that handles a CUSTOM action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<ExtensionProvider>,
}

impl AuthorizationPolicy {
    /// The action, with Istio's default.
    pub fn action(&self) -> Action {
        self.action.unwrap_or_default()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    #[default]
    ALLOW,
    DENY,
    AUDIT,
    CUSTOM,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::ALLOW => "ALLOW",
            Action::DENY => "DENY",
            Action::AUDIT => "AUDIT",
            Action::CUSTOM => "CUSTOM",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtensionProvider {
    /// The name of an extension provider declared in the mesh config.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
}

/// Sources, operations and conditions that a request must all match.
///
/// `from` and `to` keep the difference between absent and `[]`: Istio refuses an explicitly empty
/// list, which matches nothing and is almost always a mistake.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Vec<RuleFrom>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Vec<RuleTo>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<Condition>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleFrom {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleTo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<Operation>,
}

/// Who sends the request. Fields are ANDed; values within a field are ORed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    /// Peer identities such as `cluster.local/ns/default/sa/productpage` (needs mTLS).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<String>,
    /// JWT identities `<iss>/<sub>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_request_principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<String>,
    /// `serviceAccount` or `namespace/serviceAccount`; at most 16.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_service_accounts: Vec<String>,
    /// Trust domains of the peer identity (needs mTLS).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trust_domains: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_trust_domains: Vec<String>,
    /// Source addresses of the IP packet: IPs or CIDR blocks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_blocks: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ip_blocks: Vec<String>,
    /// Original client addresses (X-Forwarded-For or PROXY protocol).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote_ip_blocks: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_remote_ip_blocks: Vec<String>,
}

/// What the request does. Fields are ANDed; values within a field are ORed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Operation {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_paths: Vec<String>,
}

/// An extra condition on an Istio attribute (`when`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_values: Vec<String>,
}

/// The annotation that turns an AuthorizationPolicy into a dry run.
pub const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

/// Checks an AuthorizationPolicy on its own, as Istio's validating webhook does.
pub fn validate(
    spec: &AuthorizationPolicy,
    meta: &ObjectMeta,
    at: &FieldPath,
    report: &mut Report,
) {
    check_dry_run_annotation(meta, Some(spec.action()), report);
    validate_policy_target(
        spec.selector.as_ref(),
        spec.target_ref.as_ref(),
        &spec.target_refs,
        at,
        report,
    );

    let action = spec.action();
    let rules_at = at.field("rules");
    if action == Action::CUSTOM {
        if spec.rules.is_empty() {
            report.error(
                &rules_at,
                "CUSTOM action without `rules` is meaningless as it will never be triggered, \
                 add an empty rule `{}` if you want it be triggered for every request",
            );
        } else if spec.provider.as_ref().is_none_or(|p| p.name.is_empty()) {
            report.error(
                &at.field("provider").field("name"),
                "`provider.name` must not be empty: name an extension provider of the mesh config",
            );
        }
        for (i, rule) in spec.rules.iter().enumerate() {
            check_custom_rule(rule, &rules_at.index(i), report);
        }
    }
    if spec.provider.is_some() && action != Action::CUSTOM {
        report.error(
            &at.field("provider"),
            format!(
                "`provider` must not be with non CUSTOM action, found {}: remove it or set action: CUSTOM",
                action.name()
            ),
        );
    }
    if action == Action::DENY && spec.rules.is_empty() {
        report.error(
            &rules_at,
            "DENY action without `rules` is meaningless as it will never be triggered, \
             add an empty rule `{}` if you want it be triggered for every request",
        );
    }
    for (i, rule) in spec.rules.iter().enumerate() {
        validate_rule(rule, action, &rules_at.index(i), report);
    }
}

/// What the CUSTOM action cannot match on: identities, which the external authorizer sees only
/// after the decision.
fn check_custom_rule(rule: &Rule, at: &FieldPath, report: &mut Report) {
    for (j, from) in rule.from.iter().flatten().enumerate() {
        let Some(src) = &from.source else { continue };
        let src_at = at.field("from").index(j).field("source");
        let fields: [(&str, &Vec<String>); 8] = [
            ("namespaces", &src.namespaces),
            ("notNamespaces", &src.not_namespaces),
            ("serviceAccounts", &src.service_accounts),
            ("notServiceAccounts", &src.not_service_accounts),
            ("principals", &src.principals),
            ("notPrincipals", &src.not_principals),
            ("requestPrincipals", &src.request_principals),
            ("notRequestPrincipals", &src.not_request_principals),
        ];
        for (name, values) in fields {
            if !values.is_empty() {
                report.error(
                    &src_at.field(name),
                    format!(
                        "From.{} is currently not supported with CUSTOM action",
                        upper_first(name)
                    ),
                );
            }
        }
    }
    for (j, cond) in rule.when.iter().enumerate() {
        let k = cond.key.as_str();
        if matches!(
            k,
            "source.namespace" | "source.serviceAccount" | "source.principal"
        ) || k.starts_with("request.auth.")
        {
            report.error(
                &at.field("when").index(j).field("key"),
                format!("{k} is currently not supported with CUSTOM action"),
            );
        }
    }
}

fn upper_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
        None => String::new(),
    }
}

fn validate_rule(rule: &Rule, action: Action, at: &FieldPath, report: &mut Report) {
    let mut tcp_in_from = false;
    let mut tcp_in_to = false;
    let mut from_exists = false;
    let mut to_exists = false;

    if let Some(from) = &rule.from {
        if from.is_empty() {
            report.error(
                &at.field("from"),
                "`from` must not be empty: remove it to match any source",
            );
        }
        for (j, f) in from.iter().enumerate() {
            let f_at = at.field("from").index(j);
            let Some(src) = &f.source else {
                report.error(
                    &f_at.field("source"),
                    "`from.source` must not be nil: add a source or remove the entry",
                );
                continue;
            };
            from_exists = true;
            let src_at = f_at.field("source");
            validate_source(src, &src_at, report);
            tcp_in_from |= !(src.principals.is_empty()
                && src.not_principals.is_empty()
                && src.ip_blocks.is_empty()
                && src.not_ip_blocks.is_empty()
                && src.namespaces.is_empty()
                && src.not_namespaces.is_empty()
                && src.remote_ip_blocks.is_empty()
                && src.not_remote_ip_blocks.is_empty()
                && src.service_accounts.is_empty()
                && src.not_service_accounts.is_empty()
                && src.trust_domains.is_empty()
                && src.not_trust_domains.is_empty());
        }
    }

    if let Some(to) = &rule.to {
        if to.is_empty() {
            report.error(
                &at.field("to"),
                "`to` must not be empty: remove it to match any operation",
            );
        }
        for (j, t) in to.iter().enumerate() {
            let t_at = at.field("to").index(j);
            let Some(op) = &t.operation else {
                report.error(
                    &t_at.field("operation"),
                    "`to.operation` must not be nil: add an operation or remove the entry",
                );
                continue;
            };
            to_exists = true;
            validate_operation(op, &t_at.field("operation"), report);
            tcp_in_to |= !(op.ports.is_empty() && op.not_ports.is_empty());
        }
    }

    for (j, cond) in rule.when.iter().enumerate() {
        let c_at = at.field("when").index(j);
        if cond.key.is_empty() {
            report.error(&c_at.field("key"), "`key` must not be empty");
        } else if cond.values.is_empty() && cond.not_values.is_empty() {
            report.error(
                &c_at,
                format!(
                    "at least one of `values` or `notValues` must be set for key {}",
                    cond.key
                ),
            );
        } else {
            if let Err(e) = validate_attribute(&cond.key, &cond.values) {
                report.error(
                    &c_at.field("values"),
                    format!("invalid `value` for `key` {}: {e}", cond.key),
                );
            }
            if let Err(e) = validate_attribute(&cond.key, &cond.not_values) {
                report.error(
                    &c_at.field("notValues"),
                    format!("invalid `notValue` for `key` {}: {e}", cond.key),
                );
            }
        }
    }

    if action == Action::DENY
        && ((from_exists && !to_exists && !tcp_in_from) || (to_exists && !tcp_in_to))
    {
        report.warn(
            at,
            "configured AuthorizationPolicy will deny all traffic to TCP ports under its scope due \
             to the use of only HTTP attributes in a DENY rule; it is recommended to explicitly \
             specify the port",
        );
    }
}

fn validate_source(src: &Source, at: &FieldPath, report: &mut Report) {
    let identity = src.principals.len()
        + src.not_principals.len()
        + src.namespaces.len()
        + src.not_namespaces.len();
    let accounts = src.service_accounts.len() + src.not_service_accounts.len();
    if identity > 0 && accounts > 0 {
        report.error(
            at,
            "cannot set serviceAccounts with namespaces or principals: use separate `from` entries",
        );
    }
    let lists: [(&str, &Vec<String>); 14] = [
        ("principals", &src.principals),
        ("notPrincipals", &src.not_principals),
        ("requestPrincipals", &src.request_principals),
        ("notRequestPrincipals", &src.not_request_principals),
        ("namespaces", &src.namespaces),
        ("notNamespaces", &src.not_namespaces),
        ("serviceAccounts", &src.service_accounts),
        ("notServiceAccounts", &src.not_service_accounts),
        ("trustDomains", &src.trust_domains),
        ("notTrustDomains", &src.not_trust_domains),
        ("ipBlocks", &src.ip_blocks),
        ("notIpBlocks", &src.not_ip_blocks),
        ("remoteIpBlocks", &src.remote_ip_blocks),
        ("notRemoteIpBlocks", &src.not_remote_ip_blocks),
    ];
    if lists.iter().all(|(_, v)| v.is_empty()) {
        report.error(
            at,
            "`from.source` must not be empty: set at least one field, or remove `from` to match any source",
        );
    }
    for (name, values) in lists {
        let f_at = at.field(name);
        let result = match name {
            "serviceAccounts" | "notServiceAccounts" => check_service_accounts(name, values),
            "ipBlocks" | "notIpBlocks" | "remoteIpBlocks" | "notRemoteIpBlocks" => {
                check_empty_values(name, values).and_then(|()| validate_ips(values))
            }
            _ => check_empty_values(name, values),
        };
        report.check(&f_at, result);
    }
}

fn validate_operation(op: &Operation, at: &FieldPath, report: &mut Report) {
    let lists: [(&str, &Vec<String>); 8] = [
        ("hosts", &op.hosts),
        ("notHosts", &op.not_hosts),
        ("ports", &op.ports),
        ("notPorts", &op.not_ports),
        ("methods", &op.methods),
        ("notMethods", &op.not_methods),
        ("paths", &op.paths),
        ("notPaths", &op.not_paths),
    ];
    if lists.iter().all(|(_, v)| v.is_empty()) {
        report.error(
            at,
            "`to.operation` must not be empty: set at least one field, or remove `to` to match any operation",
        );
    }
    for (name, values) in lists {
        let f_at = at.field(name);
        let result = match name {
            "ports" | "notPorts" => {
                check_empty_values(name, values).and_then(|()| validate_ports(values))
            }
            "paths" | "notPaths" => {
                check_empty_values(name, values).and_then(|()| check_path_templates(name, values))
            }
            _ => check_empty_values(name, values),
        };
        report.check(&f_at, result);
    }
}

fn check_empty_values(key: &str, values: &[String]) -> Result<(), String> {
    if values.iter().any(String::is_empty) {
        return Err(format!("empty value not allowed, found in {key}"));
    }
    Ok(())
}

/// `serviceAccount` or `namespace/serviceAccount`, no wildcards, at most 16 values of 320 bytes.
fn check_service_accounts(key: &str, values: &[String]) -> Result<(), String> {
    if values.len() > 16 {
        return Err(format!("{key} may not have more than 16 values"));
    }
    let format_hint = "expected format 'serviceAccount' or 'namespace/serviceAccount'";
    for v in values {
        if v.is_empty() {
            return Err(format!("empty value not allowed, found in {key}"));
        }
        if v.contains('*') {
            return Err(format!("wildcard not allowed, found in {key}"));
        }
        if v.matches('/').count() > 1 {
            return Err(format!("{format_hint}, found {v:?} in {key}"));
        }
        if v.len() > 320 {
            return Err(format!(
                "value cannot exceed 320 characters, found {v:?} in {key}"
            ));
        }
        if let Some((ns, sa)) = v.split_once('/') {
            if ns.is_empty() {
                return Err(format!(
                    "{format_hint}, found empty namespace {v:?} in {key}"
                ));
            }
            if sa.is_empty() {
                return Err(format!(
                    "{format_hint}, found empty serviceAccount {v:?} in {key}"
                ));
            }
        }
    }
    Ok(())
}

/// IPs or CIDR blocks, as Go's `netip` reads them (no zone in a prefix, no leading zeros).
fn validate_ips(values: &[String]) -> Result<(), String> {
    for v in values {
        if v.contains('/') {
            if !is_go_prefix(v) {
                return Err(format!("bad CIDR range ({v}): write it like 10.0.0.0/8"));
            }
        } else if v.parse::<IpAddr>().is_err() {
            return Err(format!("bad IP address ({v})"));
        }
    }
    Ok(())
}

fn is_go_prefix(v: &str) -> bool {
    let Some((addr, bits)) = v.split_once('/') else {
        return false;
    };
    let Ok(ip) = addr.parse::<IpAddr>() else {
        return false;
    };
    if bits.is_empty()
        || !bits.bytes().all(|b| b.is_ascii_digit())
        || (bits.len() > 1 && bits.starts_with('0'))
    {
        return false;
    }
    let max = if ip.is_ipv4() { 32 } else { 128 };
    bits.parse::<u32>().is_ok_and(|b| b <= max)
}

/// Ports as decimal strings in 0..=65535.
fn validate_ports(values: &[String]) -> Result<(), String> {
    for p in values {
        let ok = !p.is_empty()
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u64>().is_ok_and(|n| n <= 65535);
        if !ok {
            return Err(format!("bad port ({p}): a number in 0..65535"));
        }
    }
    Ok(())
}

/// Paths that use `{*}` / `{**}` templates must use them whole, with `{**}` last, and other
/// segments made of RFC 3986 path characters.
fn check_path_templates(key: &str, paths: &[String]) -> Result<(), String> {
    for path in paths {
        let has_template = path.contains("{*}") || path.contains("{**}");
        let trimmed = path.trim_matches('/');
        let mut match_any_seen = false;
        for glob in trimmed.split('/') {
            if glob == "{*}" || glob == "{**}" {
                if match_any_seen {
                    return Err(format!(
                        "invalid or unsupported path {trimmed}, found in {key}. {{**}} is not the last operator"
                    ));
                }
                match_any_seen = glob == "{**}";
                continue;
            }
            if glob.contains(['{', '}']) {
                return Err(format!(
                    "invalid or unsupported path {trimmed}, found in {key}. Contains '{{' or '}}' beyond a supported path template"
                ));
            }
            if has_template && !is_path_literal(glob) {
                return Err(format!(
                    "invalid or unsupported path {trimmed}, found in {key}. Contains segment {glob} with invalid string literal"
                ));
            }
        }
    }
    Ok(())
}

fn is_path_literal(glob: &str) -> bool {
    !glob.is_empty()
        && glob
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~%!$&'()+,;:@=".contains(&b))
}

/// The attributes a `when` condition may test, and the form of their values.
fn validate_attribute(key: &str, values: &[String]) -> Result<(), String> {
    check_empty_values(key, values)?;
    let map_key = || {
        let open = key.find('[');
        match open {
            Some(o) if key.ends_with(']') && o > 0 && o < key.len() - 2 => Ok(()),
            _ => Err(format!("bad key ({key}): should have format a[b]")),
        }
    };
    match key {
        k if k.starts_with("request.headers") => map_key(),
        k if k.starts_with("request.experimental.inline.headers") => map_key(),
        "source.ip" | "remote.ip" | "destination.ip" => validate_ips(values),
        "source.serviceAccount" => check_service_accounts(key, values),
        "source.namespace"
        | "source.trustDomain"
        | "source.principal"
        | "request.auth.principal"
        | "request.auth.audiences"
        | "request.auth.presenter"
        | "connection.sni" => Ok(()),
        k if k.starts_with("request.auth.claims") => map_key(),
        "destination.port" => validate_ports(values),
        k if k.starts_with("experimental.envoy.filters.") => map_key(),
        "destination.namespace" => Err(format!(
            "attribute {key} is replaced by the metadata.namespace"
        )),
        k if k.starts_with("destination.labels") => Err(format!(
            "attribute {key} is replaced by the workload selector"
        )),
        "destination.name" | "destination.user" => Err(format!(
            "deprecated attribute {key}: only supported in v1alpha1"
        )),
        _ => Err(format!(
            "unknown attribute: {key} (see https://istio.io/latest/docs/reference/config/security/conditions/)"
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Checks shared by the policy kinds (AuthorizationPolicy, RequestAuthentication,
// PeerAuthentication, Telemetry).

/// Istio's `validateWorkloadSelector`: no empty keys, no wildcards; a selector without labels
/// selects every workload of the namespace, which deserves a warning.
pub(crate) fn validate_workload_selector(
    selector: Option<&WorkloadSelector>,
    at: &FieldPath,
    report: &mut Report,
) {
    let Some(selector) = selector else { return };
    let labels_at = at.field("matchLabels");
    for (k, v) in &selector.match_labels {
        if k.is_empty() {
            report.error(
                &labels_at,
                format!(
                    "empty key is not supported in selector: {:?}",
                    format!("{k}={v}")
                ),
            );
        }
        if k.contains('*') || v.contains('*') {
            report.error(
                &labels_at.key(k),
                format!(
                    "wildcard is not supported in selector: {:?}",
                    format!("{k}={v}")
                ),
            );
        }
    }
    if selector.match_labels.is_empty() {
        report.warn(
            at,
            "workload selector specified without labels: it selects every workload of the namespace",
        );
    }
}

/// The `(canonical group, kind)` pairs a policy may target.
const ALLOWED_TARGETS: [(&str, &str); 4] = [
    ("core", "Service"),
    ("networking.istio.io", "ServiceEntry"),
    ("gateway.networking.k8s.io", "Gateway"),
    ("gateway.networking.k8s.io", "GatewayClass"),
];

/// Istio's `validatePolicyTargetReference`.
pub(crate) fn validate_target_ref(r: &PolicyTargetReference, at: &FieldPath, report: &mut Report) {
    if r.name.is_empty() {
        report.error(&at.field("name"), "targetRef name must be set");
    }
    if !r.namespace.is_empty() {
        report.error(
            &at.field("namespace"),
            "targetRef namespace must not be set; cross namespace referencing is not supported",
        );
    }
    let group = if r.group.is_empty() { "core" } else { &r.group };
    if !ALLOWED_TARGETS
        .iter()
        .any(|(g, k)| *g == group && *k == r.kind)
    {
        report.error(
            &at.field("kind"),
            format!(
                "targetRef must be to one of Service (group \"\"), ServiceEntry (networking.istio.io), \
                 Gateway or GatewayClass (gateway.networking.k8s.io) but was {}/{}",
                r.group, r.kind
            ),
        );
    }
}

/// Selector, `targetRef` and `targetRefs`: at most one of them, each well formed.
pub(crate) fn validate_policy_target(
    selector: Option<&WorkloadSelector>,
    target_ref: Option<&PolicyTargetReference>,
    target_refs: &[PolicyTargetReference],
    at: &FieldPath,
    report: &mut Report,
) {
    let set = usize::from(selector.is_some())
        + usize::from(target_ref.is_some())
        + usize::from(!target_refs.is_empty());
    if set > 1 {
        report.error(
            at,
            "only one of targetRefs or workloadSelector can be set: keep selector, targetRef or targetRefs",
        );
    }
    validate_workload_selector(selector, &at.field("selector"), report);
    if let Some(r) = target_ref {
        validate_target_ref(r, &at.field("targetRef"), report);
    }
    for (i, r) in target_refs.iter().enumerate() {
        validate_target_ref(r, &at.field("targetRefs").index(i), report);
    }
}

/// The `istio.io/dry-run` annotation: only an AuthorizationPolicy (`authz_action` is its action)
/// may carry it, only with ALLOW or DENY, and its value is a Go boolean.
pub(crate) fn check_dry_run_annotation(
    meta: &ObjectMeta,
    authz_action: Option<Action>,
    report: &mut Report,
) {
    let Some(value) = meta.annotations.get(DRY_RUN_ANNOTATION) else {
        return;
    };
    let at = FieldPath::root("metadata")
        .field("annotations")
        .key(DRY_RUN_ANNOTATION);
    let ns = meta.namespace.as_deref().unwrap_or_default();
    match authz_action {
        None => report.error(
            &at,
            format!(
                "{ns}/{} has unsupported annotation {DRY_RUN_ANNOTATION}, please remove the annotation",
                meta.name
            ),
        ),
        Some(Action::ALLOW | Action::DENY) => {
            if !is_go_bool(value) {
                report.error(
                    &at,
                    format!(
                        "{ns}/{} has annotation {DRY_RUN_ANNOTATION} with invalid value ({value}): write \"true\" or \"false\"",
                        meta.name
                    ),
                );
            }
        }
        Some(action) => report.error(
            &at,
            format!(
                "the annotation {DRY_RUN_ANNOTATION} currently only supports action ALLOW/DENY, found action {} in {ns}/{}",
                action.name(),
                meta.name
            ),
        ),
    }
}

/// The strings Go's `strconv.ParseBool` accepts.
fn is_go_bool(s: &str) -> bool {
    matches!(
        s,
        "1" | "t" | "T" | "TRUE" | "true" | "True" | "0" | "f" | "F" | "FALSE" | "false" | "False"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(spec: serde_json::Value, meta: ObjectMeta) -> Report {
        let spec: AuthorizationPolicy = serde_json::from_value(spec).unwrap();
        let mut r = Report::default();
        validate(&spec, &meta, &FieldPath::root("spec"), &mut r);
        r
    }

    fn meta() -> ObjectMeta {
        ObjectMeta {
            name: "p".into(),
            namespace: Some("ns".into()),
            ..Default::default()
        }
    }

    #[test]
    fn accepts_a_typical_policy() {
        let r = check(
            serde_json::json!({
                "selector": {"matchLabels": {"app": "httpbin"}},
                "rules": [{
                    "from": [{"source": {"principals": ["cluster.local/ns/default/sa/sleep"]}}],
                    "to": [{"operation": {"methods": ["GET"], "paths": ["/api/{*}/info"]}}],
                    "when": [{"key": "request.auth.claims[iss]", "values": ["https://x"]}],
                }],
            }),
            meta(),
        );
        assert!(r.is_ok(), "{r:?}");
    }

    #[test]
    fn refuses_empty_lists_and_bad_values() {
        let r = check(serde_json::json!({"rules": [{"from": []}]}), meta());
        assert_eq!(r.errors[0].path, "spec.rules[0].from");
        let r = check(
            serde_json::json!({"rules": [{"from": [{"source": {"ipBlocks": ["1.2.3.4", "ip1"]}}],
                "to": [{"operation": {"ports": ["port1"]}}]}]}),
            meta(),
        );
        assert_eq!(r.errors.len(), 2, "{r:?}");
        let r = check(
            serde_json::json!({"rules": [{"when": [{"key": "key1", "values": ["v"]}]}]}),
            meta(),
        );
        assert!(r.errors[0].message.contains("unknown attribute"));
        let r = check(serde_json::json!({"action": "DENY"}), meta());
        assert!(!r.is_ok());
    }

    #[test]
    fn dry_run_needs_allow_or_deny_and_a_boolean() {
        let mut m = meta();
        m.annotations
            .insert(DRY_RUN_ANNOTATION.into(), "true".into());
        assert!(check(serde_json::json!({}), m.clone()).is_ok());
        assert!(!check(serde_json::json!({"action": "AUDIT"}), m.clone()).is_ok());
        m.annotations
            .insert(DRY_RUN_ANNOTATION.into(), "yes".into());
        assert!(!check(serde_json::json!({}), m).is_ok());
    }

    #[test]
    fn targets_are_checked() {
        let r = check(
            serde_json::json!({"targetRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "gw"}}),
            meta(),
        );
        assert!(r.is_ok(), "{r:?}");
        let r = check(
            serde_json::json!({"targetRef": {"kind": "Pod", "name": "x"}, "selector": {"matchLabels": {"a": "b"}}}),
            meta(),
        );
        assert_eq!(r.errors.len(), 2, "{r:?}");
    }
}
