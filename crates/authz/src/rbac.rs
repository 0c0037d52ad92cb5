//! Envoy's RBAC engine, compiled: an action and named policies, each a set of permissions (what
//! the request does) and principals (who sends it). A policy matches when one of its
//! permissions and one of its principals match; ALLOW lets a request through only when a policy
//! matches, DENY refuses it when one does, LOG (Istio's AUDIT) only records which one did.
//! Policies are kept in name order, as Envoy keeps them, so the policy a decision names is the
//! one Envoy would name.
//!
//! Matching is the hot path and allocates only for joined header values; explaining why a
//! request was not matched ([`Rbac::explain_no_match`]) is done only for denials.

use std::fmt;

use serde::Serialize;

use crate::attributes::Input;
use crate::matcher::{Cidr, HeaderMatch, MetadataMatch, PathTemplate, StringMatch};

/// What a matching policy means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Action {
    Allow,
    Deny,
    /// Istio's AUDIT: nothing is refused; the matching policy is recorded.
    Log,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Allow => "ALLOW",
            Action::Deny => "DENY",
            Action::Log => "AUDIT",
        })
    }
}

/// One RBAC rule set.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rbac {
    pub action: Action,
    /// In name order.
    pub policies: Vec<(String, Policy)>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Policy {
    pub permissions: Vec<Permission>,
    pub principals: Vec<Principal>,
}

/// What a request does.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    Any,
    And(Vec<Permission>),
    Or(Vec<Permission>),
    Not(Box<Permission>),
    Header(HeaderMatch),
    /// The path without its query.
    UrlPath(StringMatch),
    UriTemplate(PathTemplate),
    DestinationIp(Cidr),
    DestinationPort(u16),
    /// `[start, end)`.
    DestinationPortRange {
        start: u32,
        end: u32,
    },
    Metadata(MetadataMatch),
    RequestedServerName(StringMatch),
}

/// Who sends it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Principal {
    Any,
    And(Vec<Principal>),
    Or(Vec<Principal>),
    Not(Box<Principal>),
    /// The peer's certificate (URI SAN, as Envoy reads a SPIFFE certificate); no name: any
    /// authenticated peer.
    Authenticated(Option<StringMatch>),
    /// The connection's peer (`direct_remote_ip`, and the deprecated `source_ip`).
    DirectRemoteIp(Cidr),
    /// The original client (`x-forwarded-for` or the peer).
    RemoteIp(Cidr),
    Header(HeaderMatch),
    UrlPath(StringMatch),
    Metadata(MetadataMatch),
}

/// The decision of one rule set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// The policy that matched (the one that decided, for ALLOW and DENY).
    pub policy: Option<String>,
}

impl Rbac {
    /// The first policy, in name order, that matches.
    pub fn matching_policy(&self, input: &Input<'_>) -> Option<&str> {
        self.policies
            .iter()
            .find(|(_, p)| p.matches(input))
            .map(|(name, _)| name.as_str())
    }

    pub fn verdict(&self, input: &Input<'_>) -> Verdict {
        let policy = self.matching_policy(input).map(str::to_string);
        let allowed = match self.action {
            Action::Allow => policy.is_some(),
            Action::Deny => policy.is_none(),
            Action::Log => true,
        };
        Verdict { allowed, policy }
    }

    /// Why no policy matches: one line per policy (`NAME: path "/get" is not "/ip"`), or that
    /// there are none.
    pub fn explain_no_match(&self, input: &Input<'_>) -> Vec<String> {
        if self.policies.is_empty() {
            return vec!["there are no policies to match".to_string()];
        }
        self.policies
            .iter()
            .filter_map(|(name, p)| p.mismatch(input).map(|why| format!("{name}: {why}")))
            .collect()
    }
}

impl Policy {
    pub fn matches(&self, input: &Input<'_>) -> bool {
        self.permissions.iter().any(|p| p.matches(input))
            && self.principals.iter().any(|p| p.matches(input))
    }

    /// Why the policy does not match; `None` when it does.
    pub fn mismatch(&self, input: &Input<'_>) -> Option<String> {
        if !self.permissions.iter().any(|p| p.matches(input)) {
            return Some(any_of(
                self.permissions
                    .iter()
                    .filter_map(|p| p.explain(input).err())
                    .collect(),
            ));
        }
        if !self.principals.iter().any(|p| p.matches(input)) {
            return Some(any_of(
                self.principals
                    .iter()
                    .filter_map(|p| p.explain(input).err())
                    .collect(),
            ));
        }
        None
    }
}

fn any_of(mut reasons: Vec<String>) -> String {
    match reasons.len() {
        0 => "no match".to_string(),
        1 => reasons.pop().unwrap_or_default(),
        _ => format!("none of: {}", reasons.join("; ")),
    }
}

/// One attribute test, for explanations: which attribute, its value in this request, and the
/// pattern it was compared with.
struct Leaf {
    attribute: String,
    actual: String,
    pattern: String,
}

fn header_attribute(name: &str) -> String {
    match name {
        ":method" => "method".to_string(),
        ":authority" | "host" => "host".to_string(),
        ":path" => "path".to_string(),
        ":scheme" => "scheme".to_string(),
        other => format!("request.headers[{other}]"),
    }
}

fn header_actual(input: &Input<'_>, name: &str) -> String {
    match input.request.and_then(|r| r.header(name)) {
        Some(v) => format!("{v:?}"),
        None if input.request.is_none() => "(none: not HTTP)".to_string(),
        None => "(absent)".to_string(),
    }
}

fn metadata_attribute(m: &MetadataMatch) -> String {
    let mut s = if m.filter == crate::jwt::FILTER_NAME && m.path.len() >= 2 {
        // The payload of the verified JWT: Istio's request.auth.* attributes.
        let mut s = "request.auth.claims".to_string();
        for key in &m.path[1..] {
            s.push_str(&format!("[{key}]"));
        }
        s
    } else {
        let mut s = format!("metadata[{}]", m.filter);
        for key in &m.path {
            s.push_str(&format!("[{key}]"));
        }
        s
    };
    if m.invert {
        s.insert_str(0, "not ");
    }
    s
}

fn metadata_actual(input: &Input<'_>, m: &MetadataMatch) -> String {
    match m.lookup(input.metadata) {
        Some(v) => v.to_string(),
        None => "(absent)".to_string(),
    }
}

fn path_actual(input: &Input<'_>) -> String {
    match input.request {
        Some(r) => format!("{:?}", r.path_only()),
        None => "(none: not HTTP)".to_string(),
    }
}

/// How a list of reasons reads when every one is about the same attribute:
/// `method "GET" is not in ["POST", "PUT"]`.
fn explain_or(leaves: Vec<Option<Leaf>>, reasons: Vec<String>) -> String {
    let leaves: Option<Vec<Leaf>> = leaves.into_iter().collect();
    if let Some(leaves) = leaves
        && let Some(first) = leaves.first()
        && leaves.iter().all(|l| l.attribute == first.attribute)
    {
        if leaves.len() == 1 {
            return format!(
                "{} {} is not {}",
                first.attribute, first.actual, first.pattern
            );
        }
        let patterns: Vec<&str> = leaves.iter().map(|l| l.pattern.as_str()).collect();
        return format!(
            "{} {} is not in [{}]",
            first.attribute,
            first.actual,
            patterns.join(", ")
        );
    }
    any_of(reasons)
}

/// How a matching excluded set reads: `source.principal "…/sa/sleep" is excluded (…)`.
fn explain_not(leaves: Vec<Option<Leaf>>, fallback: String) -> String {
    let leaves: Option<Vec<Leaf>> = leaves.into_iter().collect();
    match leaves.as_deref() {
        Some([first, ..]) => {
            let patterns: Vec<&str> = leaves
                .iter()
                .flatten()
                .map(|l| l.pattern.as_str())
                .collect();
            format!(
                "{} {} is one of the excluded [{}]",
                first.attribute,
                first.actual,
                patterns.join(", ")
            )
        }
        _ => format!("excluded: {fallback}"),
    }
}

impl Permission {
    pub fn matches(&self, input: &Input<'_>) -> bool {
        match self {
            Permission::Any => true,
            Permission::And(all) => all.iter().all(|p| p.matches(input)),
            Permission::Or(any) => any.iter().any(|p| p.matches(input)),
            Permission::Not(p) => !p.matches(input),
            Permission::Header(h) => {
                h.matches_value(input.request.and_then(|r| r.header(&h.name)).as_deref())
            }
            Permission::UrlPath(s) => input.request.is_some_and(|r| s.matches(r.path_only())),
            Permission::UriTemplate(t) => input.request.is_some_and(|r| t.matches(r.path_only())),
            Permission::DestinationIp(c) => c.contains(input.connection.destination.ip()),
            Permission::DestinationPort(p) => input.connection.destination.port() == *p,
            Permission::DestinationPortRange { start, end } => {
                let port = u32::from(input.connection.destination.port());
                *start <= port && port < *end
            }
            Permission::Metadata(m) => m.matches(input.metadata),
            Permission::RequestedServerName(s) => {
                s.matches(input.connection.sni.as_deref().unwrap_or(""))
            }
        }
    }

    fn leaf(&self, input: &Input<'_>) -> Option<Leaf> {
        let (attribute, actual, pattern) = match self {
            Permission::Header(h) => (
                header_attribute(&h.name),
                header_actual(input, &h.name),
                h.to_string(),
            ),
            Permission::UrlPath(s) => ("path".to_string(), path_actual(input), s.to_string()),
            Permission::UriTemplate(t) => ("path".to_string(), path_actual(input), t.to_string()),
            Permission::DestinationIp(c) => (
                "destination.ip".to_string(),
                input.connection.destination.ip().to_string(),
                c.to_string(),
            ),
            Permission::DestinationPort(p) => (
                "destination.port".to_string(),
                input.connection.destination.port().to_string(),
                p.to_string(),
            ),
            Permission::DestinationPortRange { start, end } => (
                "destination.port".to_string(),
                input.connection.destination.port().to_string(),
                format!("[{start}, {end})"),
            ),
            Permission::Metadata(m) => (
                metadata_attribute(m),
                metadata_actual(input, m),
                m.value.to_string(),
            ),
            Permission::RequestedServerName(s) => (
                "connection.sni".to_string(),
                format!("{:?}", input.connection.sni.as_deref().unwrap_or("")),
                s.to_string(),
            ),
            _ => return None,
        };
        Some(Leaf {
            attribute,
            actual,
            pattern,
        })
    }

    /// `Err(why)` when the permission does not match.
    pub fn explain(&self, input: &Input<'_>) -> Result<(), String> {
        if self.matches(input) {
            return Ok(());
        }
        Err(match self {
            Permission::Any => "no match".to_string(),
            Permission::And(all) => all
                .iter()
                .find_map(|p| p.explain(input).err())
                .unwrap_or_default(),
            Permission::Or(any) => explain_or(
                any.iter().map(|p| p.leaf(input)).collect(),
                any.iter().filter_map(|p| p.explain(input).err()).collect(),
            ),
            Permission::Not(inner) => match inner.as_ref() {
                Permission::Any => "the policy has no rules: it matches nothing".to_string(),
                Permission::Or(any) => explain_not(
                    any.iter()
                        .filter(|p| p.matches(input))
                        .map(|p| p.leaf(input))
                        .collect(),
                    format!("{inner:?}"),
                ),
                other => explain_not(vec![other.leaf(input)], format!("{other:?}")),
            },
            leaf => {
                let l = leaf.leaf(input).expect("a leaf");
                format!("{} {} is not {}", l.attribute, l.actual, l.pattern)
            }
        })
    }
}

impl Principal {
    pub fn matches(&self, input: &Input<'_>) -> bool {
        match self {
            Principal::Any => true,
            Principal::And(all) => all.iter().all(|p| p.matches(input)),
            Principal::Or(any) => any.iter().any(|p| p.matches(input)),
            Principal::Not(p) => !p.matches(input),
            Principal::Authenticated(name) => match &input.connection.peer_principal {
                None => false,
                Some(peer) => name.as_ref().is_none_or(|m| m.matches(peer)),
            },
            Principal::DirectRemoteIp(c) => c.contains(input.connection.source.ip()),
            Principal::RemoteIp(c) => c.contains(input.remote_ip()),
            Principal::Header(h) => {
                h.matches_value(input.request.and_then(|r| r.header(&h.name)).as_deref())
            }
            Principal::UrlPath(s) => input.request.is_some_and(|r| s.matches(r.path_only())),
            Principal::Metadata(m) => m.matches(input.metadata),
        }
    }

    fn leaf(&self, input: &Input<'_>) -> Option<Leaf> {
        let (attribute, actual, pattern) = match self {
            Principal::Authenticated(name) => (
                "source.principal".to_string(),
                match &input.connection.peer_principal {
                    Some(p) => format!("{p:?}"),
                    None => "(none: the connection is not mutual TLS)".to_string(),
                },
                name.as_ref()
                    .map_or_else(|| "(any peer identity)".to_string(), |m| m.to_string()),
            ),
            Principal::DirectRemoteIp(c) => (
                "source.ip".to_string(),
                input.connection.source.ip().to_string(),
                c.to_string(),
            ),
            Principal::RemoteIp(c) => (
                "remote.ip".to_string(),
                input.remote_ip().to_string(),
                c.to_string(),
            ),
            Principal::Header(h) => (
                header_attribute(&h.name),
                header_actual(input, &h.name),
                h.to_string(),
            ),
            Principal::UrlPath(s) => ("path".to_string(), path_actual(input), s.to_string()),
            Principal::Metadata(m) => (
                metadata_attribute(m),
                metadata_actual(input, m),
                m.value.to_string(),
            ),
            _ => return None,
        };
        Some(Leaf {
            attribute,
            actual,
            pattern,
        })
    }

    /// `Err(why)` when the principal does not match.
    pub fn explain(&self, input: &Input<'_>) -> Result<(), String> {
        if self.matches(input) {
            return Ok(());
        }
        Err(match self {
            Principal::Any => "no match".to_string(),
            Principal::And(all) => all
                .iter()
                .find_map(|p| p.explain(input).err())
                .unwrap_or_default(),
            Principal::Or(any) => explain_or(
                any.iter().map(|p| p.leaf(input)).collect(),
                any.iter().filter_map(|p| p.explain(input).err()).collect(),
            ),
            Principal::Not(inner) => match inner.as_ref() {
                Principal::Any => "the policy has no rules: it matches nothing".to_string(),
                Principal::Or(any) => explain_not(
                    any.iter()
                        .filter(|p| p.matches(input))
                        .map(|p| p.leaf(input))
                        .collect(),
                    format!("{inner:?}"),
                ),
                other => explain_not(vec![other.leaf(input)], format!("{other:?}")),
            },
            leaf => {
                let l = leaf.leaf(input).expect("a leaf");
                format!("{} {} is not {}", l.attribute, l.actual, l.pattern)
            }
        })
    }
}

/// Istio's name for the policy of a rule, `ns[NS]-policy[NAME]-rule[N]`, as `NS/NAME rule N`
/// (any other name as it is).
pub fn display_policy_name(name: &str) -> String {
    let parse = || -> Option<String> {
        let rest = name
            .strip_prefix("istio-ext-authz-")
            .map(|r| r.split_once("-ns[").map_or(r, |(_, r)| r))
            .map_or(name, |r| r);
        let rest = rest.strip_prefix("ns[").unwrap_or(rest);
        let (ns, rest) = rest.split_once("]-policy[")?;
        let (policy, rest) = rest.rsplit_once("]-rule[")?;
        let rule = rest.strip_suffix(']')?;
        Some(format!("{ns}/{policy} rule {rule}"))
    };
    parse().unwrap_or_else(|| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attributes::{Connection, HttpRequest};
    use crate::matcher::{HeaderKind, StringKind};

    fn conn(principal: Option<&str>) -> Connection {
        Connection {
            source: "10.44.0.5:41000".parse().unwrap(),
            destination: "10.44.0.9:8000".parse().unwrap(),
            peer_principal: principal.map(str::to_string),
            sni: None,
        }
    }

    fn method(m: &str) -> Permission {
        Permission::Header(HeaderMatch {
            name: ":method".into(),
            kind: HeaderKind::String(StringMatch::exact(m)),
            invert: false,
            treat_missing_as_empty: false,
        })
    }

    fn principal(p: &str) -> Principal {
        Principal::Authenticated(Some(StringMatch::exact(p)))
    }

    fn decide(rbac: &Rbac, c: &Connection, m: &str, path: &str) -> (Verdict, Vec<String>) {
        let headers = http::HeaderMap::new();
        let req = HttpRequest {
            method: m,
            path,
            authority: "httpbin.foo:8000",
            scheme: "http",
            headers: &headers,
            remote_ip: c.source.ip(),
        };
        let md = crate::Metadata::new();
        let input = Input {
            connection: c,
            request: Some(&req),
            metadata: &md,
        };
        (rbac.verdict(&input), rbac.explain_no_match(&input))
    }

    #[test]
    fn allow_needs_a_matching_policy_and_says_what_did_not_match() {
        let rbac = Rbac {
            action: Action::Allow,
            policies: vec![(
                "ns[default]-policy[details-viewer]-rule[0]".into(),
                Policy {
                    permissions: vec![Permission::And(vec![Permission::Or(vec![method("GET")])])],
                    principals: vec![Principal::And(vec![Principal::Or(vec![
                        principal("spiffe://cluster.local/ns/default/sa/bookinfo-productpage"),
                        principal("spiffe://cluster.local/ns/default/sa/other"),
                    ])])],
                },
            )],
        };
        let ok = conn(Some(
            "spiffe://cluster.local/ns/default/sa/bookinfo-productpage",
        ));
        let (v, _) = decide(&rbac, &ok, "GET", "/details/0");
        assert!(v.allowed);
        assert_eq!(
            v.policy.as_deref(),
            Some("ns[default]-policy[details-viewer]-rule[0]")
        );
        let (v, why) = decide(&rbac, &ok, "POST", "/details/0");
        assert!(!v.allowed);
        assert_eq!(
            why,
            [r#"ns[default]-policy[details-viewer]-rule[0]: method "POST" is not "GET""#]
        );
        let sleep = conn(Some("spiffe://cluster.local/ns/default/sa/sleep"));
        let (_, why) = decide(&rbac, &sleep, "GET", "/");
        assert_eq!(
            why,
            [
                r#"ns[default]-policy[details-viewer]-rule[0]: source.principal "spiffe://cluster.local/ns/default/sa/sleep" is not in ["spiffe://cluster.local/ns/default/sa/bookinfo-productpage", "spiffe://cluster.local/ns/default/sa/other"]"#
            ]
        );
        let (v, why) = decide(&rbac, &conn(None), "GET", "/");
        assert!(!v.allowed);
        assert!(
            why[0].contains("(none: the connection is not mutual TLS)"),
            "{why:?}"
        );
    }

    #[test]
    fn deny_refuses_matches_and_a_policy_without_rules_matches_nothing() {
        let deny = Rbac {
            action: Action::Deny,
            policies: vec![(
                "ns[foo]-policy[deny-method-get]-rule[0]".into(),
                Policy {
                    permissions: vec![Permission::And(vec![
                        Permission::Or(vec![method("GET")]),
                        Permission::Not(Box::new(Permission::Or(vec![Permission::UrlPath(
                            StringMatch {
                                kind: StringKind::Prefix("/public/".into()),
                                ignore_case: false,
                            },
                        )]))),
                    ])],
                    principals: vec![Principal::Any],
                },
            )],
        };
        let c = conn(None);
        assert!(!decide(&deny, &c, "GET", "/get?x=1").0.allowed);
        assert!(decide(&deny, &c, "GET", "/public/a").0.allowed);
        assert!(decide(&deny, &c, "POST", "/get").0.allowed);
        let nothing = Rbac {
            action: Action::Allow,
            policies: vec![(
                "ns[default]-policy[allow-nothing]-rule[0]".into(),
                Policy {
                    permissions: vec![Permission::Not(Box::new(Permission::Any))],
                    principals: vec![Principal::Not(Box::new(Principal::Any))],
                },
            )],
        };
        let (v, why) = decide(&nothing, &c, "GET", "/");
        assert!(!v.allowed);
        assert!(
            why[0].ends_with("the policy has no rules: it matches nothing"),
            "{why:?}"
        );
    }

    #[test]
    fn istio_policy_names_read_as_namespace_name_and_rule() {
        assert_eq!(
            display_policy_name("ns[foo]-policy[deny-method-get]-rule[0]"),
            "foo/deny-method-get rule 0"
        );
        assert_eq!(
            display_policy_name(
                "istio-ext-authz-sample-ext-authz-grpc-ns[foo]-policy[ext-authz]-rule[1]"
            ),
            "foo/ext-authz rule 1"
        );
        assert_eq!(display_policy_name("custom"), "custom");
    }
}
