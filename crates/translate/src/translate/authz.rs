//! Istio's `AuthorizationPolicy` as Envoy's RBAC filters, the way Istio's builder
//! (`pilot/pkg/security/authz/builder`, `model`) generates them for a workload:
//!
//! - Which policies: those in the root namespace and in the workload's namespace whose
//!   `selector` is empty or matches the workload's labels (a root-namespace policy with a
//!   selector applies in every namespace). Policies with `targetRef(s)` attach to gateways and
//!   waypoints through Kubernetes Gateway API objects and never to sidecars.
//! - CUSTOM first (a shadow RBAC filter and the provider's ext_authz, see [`super::ext_authz`]),
//!   then one RBAC filter per action, in Istio's order: AUDIT (action LOG), DENY, ALLOW. Policies
//!   annotated `istio.io/dry-run: "true"` go into the filter's shadow rules. An ALLOW filter
//!   whose policies match nothing denies everything; a policy without rules gets a policy that
//!   never matches (`allow-nothing`).
//! - Each rule becomes the policy `ns[NS]-policy[NAME]-rule[I]`: one permission per `to`
//!   (`And` of host, method, path, port and the `when` conditions on the destination) and one
//!   principal per `from` (`And` of principals, request principals, namespaces, remote and
//!   source IP blocks, and the `when` conditions on the source), each field an `Or` of its
//!   values and a `Not(Or)` of its `not` values.
//! - HTTP-only fields (hosts, methods, paths, request principals, `request.*` conditions) in a
//!   policy applied to a TCP port: an ALLOW rule that uses them is dropped (it matches nothing),
//!   a DENY or AUDIT rule ignores them (it matches more). Fields Strait cannot translate are
//!   treated the same way: fail closed.
//!
//! HTTP ports get `envoy.filters.http.rbac` ahead of the router; TCP ports (and the inbound
//! passthrough chain) get `envoy.filters.network.rbac` (stat prefix `tcp.`) ahead of tcp_proxy.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::net::IpAddr;

use envoy_types::pb::envoy::config::core::v3::{CidrRange, TypedExtensionConfig};
use envoy_types::pb::envoy::config::listener::v3::{Filter, filter};
use envoy_types::pb::envoy::config::rbac::v3 as rbac;
use envoy_types::pb::envoy::config::route::v3::{HeaderMatcher, header_matcher};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::envoy::extensions::path::r#match::uri_template::v3::UriTemplateMatchConfig;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    ListMatcher, MetadataMatcher, OrMatcher, PathMatcher, RegexMatcher, StringMatcher,
    ValueMatcher, list_matcher, metadata_matcher, path_matcher, string_matcher, value_matcher,
};
use envoy_types::pb::google::protobuf::{Any, UInt32Value};
use envoy_types::util::pack_any;
use prost::Message;
use strait_api::security::authorization_policy::{
    Action, AuthorizationPolicy, DRY_RUN_ANNOTATION, Rule,
};
use strait_api::{Kind, ObjectMeta, Spec};

use crate::ConfigSnapshot;
use crate::snapshot::namespace_of;

/// The HTTP and network RBAC filter names (Envoy's well-known names).
pub const HTTP_RBAC: &str = "envoy.filters.http.rbac";
pub const NETWORK_RBAC: &str = "envoy.filters.network.rbac";
/// Istio's stat prefixes.
const TCP_STAT_PREFIX: &str = "tcp.";
const DRY_RUN_ALLOW_PREFIX: &str = "istio_dry_run_allow_";
const DRY_RUN_DENY_PREFIX: &str = "istio_dry_run_deny_";
/// Where jwt_authn leaves a verified token's payload (Istio's `payload_in_metadata`).
const JWT_FILTER: &str = "envoy.filters.http.jwt_authn";
const JWT_PAYLOAD: &str = "payload";
const URI_TEMPLATE: &str = "envoy.path.match.uri_template.uri_template_matcher";

/// The policies that apply to one workload, by action, in (namespace, name) order.
#[derive(Default)]
pub struct Policies<'a> {
    pub audit: Vec<(&'a ObjectMeta, &'a AuthorizationPolicy)>,
    pub deny: Vec<(&'a ObjectMeta, &'a AuthorizationPolicy)>,
    pub allow: Vec<(&'a ObjectMeta, &'a AuthorizationPolicy)>,
    /// CUSTOM policies, and their filters ([`super::ext_authz`]).
    pub custom: Vec<(&'a ObjectMeta, &'a AuthorizationPolicy)>,
    pub custom_filters: super::ext_authz::Custom,
    /// The RequestAuthentications' `envoy.filters.http.jwt_authn`, which goes ahead of the
    /// HTTP RBAC filters (see [`super::authn`]).
    pub jwt_authn: Option<HttpFilter>,
}

impl Policies<'_> {
    pub fn is_empty(&self) -> bool {
        self.audit.is_empty()
            && self.deny.is_empty()
            && self.allow.is_empty()
            && self.custom.is_empty()
    }
}

/// The policies that apply to a workload in `namespace` with `labels`.
pub fn policies_for<'a>(
    config: &'a ConfigSnapshot,
    registry: &strait_registry::Registry,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Policies<'a> {
    let root = config.mesh.root_namespace.as_str();
    let mut out = Policies {
        jwt_authn: super::authn::http_filter(
            config,
            &super::authn::policies_for(config, namespace, labels),
        ),
        ..Policies::default()
    };
    for r in config.of(Kind::AuthorizationPolicy) {
        let Spec::AuthorizationPolicy(p) = &r.spec else {
            continue;
        };
        let ns = namespace_of(&r.metadata);
        if ns != root && ns != namespace {
            continue;
        }
        if p.target_ref.is_some() || !p.target_refs.is_empty() {
            continue;
        }
        let selected = p
            .selector
            .as_ref()
            .is_none_or(|s| s.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v)));
        if !selected {
            continue;
        }
        let list = match p.action() {
            Action::ALLOW => &mut out.allow,
            Action::DENY => &mut out.deny,
            Action::AUDIT => &mut out.audit,
            Action::CUSTOM => &mut out.custom,
        };
        list.push((&r.metadata, p));
    }
    out.custom_filters = super::ext_authz::build(config, registry, &out.custom);
    out
}

/// Enforced and dry-run rules of one action.
pub(super) struct Built {
    pub rules: Option<rbac::Rbac>,
    pub shadow: Option<rbac::Rbac>,
}

fn shadow_prefix(shadow: &Option<rbac::Rbac>) -> String {
    match shadow.as_ref().map(|s| s.action) {
        Some(a) if a == rbac::rbac::Action::Allow as i32 => DRY_RUN_ALLOW_PREFIX.to_string(),
        Some(a) if a == rbac::rbac::Action::Deny as i32 => DRY_RUN_DENY_PREFIX.to_string(),
        _ => String::new(),
    }
}

/// The RBAC rule sets for the workload, in Istio's filter order (AUDIT, DENY, ALLOW).
fn build_all(policies: &Policies<'_>, tcp: bool) -> Vec<Built> {
    [
        (&policies.audit, rbac::rbac::Action::Log),
        (&policies.deny, rbac::rbac::Action::Deny),
        (&policies.allow, rbac::rbac::Action::Allow),
    ]
    .into_iter()
    .filter(|(list, _)| !list.is_empty())
    .map(|(list, action)| build_named(list, action, tcp, ""))
    .collect()
}

/// An `envoy.filters.http.rbac` filter of `b` (shadow metadata keys prefixed `shadow_prefix`).
pub(super) fn http_filter(b: &Built, shadow_prefix: &str) -> HttpFilter {
    let head = HttpRbac {
        shadow_rules_stat_prefix: shadow_prefix.to_string(),
        ..Default::default()
    };
    HttpFilter {
        name: HTTP_RBAC.to_string(),
        config_type: Some(http_filter::ConfigType::TypedConfig(stable_any(
            HTTP_RBAC_TYPE,
            &head,
            b,
        ))),
        ..Default::default()
    }
}

/// An `envoy.filters.network.rbac` filter enforcing `b`'s rules (none when it has none).
pub(super) fn network_filter(b: &Built) -> Option<Filter> {
    b.rules.as_ref()?;
    let head = NetworkRbac {
        stat_prefix: TCP_STAT_PREFIX.to_string(),
        ..Default::default()
    };
    Some(Filter {
        name: NETWORK_RBAC.to_string(),
        config_type: Some(filter::ConfigType::TypedConfig(stable_any(
            NETWORK_RBAC_TYPE,
            &head,
            &Built {
                rules: b.rules.clone(),
                shadow: None,
            },
        ))),
    })
}

/// `envoy.filters.http.rbac` filters for an HTTP port of the workload (none without policies),
/// after the RequestAuthentications' `envoy.filters.http.jwt_authn` if any and the CUSTOM
/// policies' shadow RBAC and ext_authz filters.
pub fn http_filters(policies: &Policies<'_>) -> Vec<HttpFilter> {
    let rbac = build_all(policies, false)
        .into_iter()
        .map(|b| http_filter(&b, &shadow_prefix(&b.shadow)));
    policies
        .jwt_authn
        .clone()
        .into_iter()
        .chain(policies.custom_filters.http.iter().cloned())
        .chain(rbac)
        .collect()
}

/// `envoy.filters.network.rbac` filters for a TCP port of the workload.
pub fn network_filters(policies: &Policies<'_>) -> Vec<Filter> {
    let custom = policies.custom_filters.tcp.iter().cloned();
    custom
        .chain(build_all(policies, true).into_iter().map(|b| {
            let head = NetworkRbac {
                stat_prefix: TCP_STAT_PREFIX.to_string(),
                shadow_rules_stat_prefix: shadow_prefix(&b.shadow),
                ..Default::default()
            };
            Filter {
                name: NETWORK_RBAC.to_string(),
                config_type: Some(filter::ConfigType::TypedConfig(stable_any(
                    NETWORK_RBAC_TYPE,
                    &head,
                    &b,
                ))),
            }
        }))
        .collect()
}

const HTTP_RBAC_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
const NETWORK_RBAC_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC";

/// The filter config packed with its rule sets' policies in name order. `RBAC.policies` is a
/// protobuf map (a `HashMap` in the generated code), which prost encodes in the map's
/// iteration order, different each time: the same policies would encode to different bytes,
/// so every push would look like a change and Envoy would drain and replace the listener.
/// Both filters carry `rules` as field 1 and `shadow_rules` as field 2.
fn stable_any<M: prost::Message>(type_url: &str, head: &M, built: &Built) -> Any {
    let mut value = head.encode_to_vec();
    for (tag, rules) in [(1, &built.rules), (2, &built.shadow)] {
        if let Some(r) = rules {
            let bytes = stable_rbac(r);
            prost::encoding::encode_key(
                tag,
                prost::encoding::WireType::LengthDelimited,
                &mut value,
            );
            prost::encoding::encode_varint(bytes.len() as u64, &mut value);
            value.extend_from_slice(&bytes);
        }
    }
    Any {
        type_url: type_url.to_string(),
        value,
    }
}

/// `envoy.config.rbac.v3.RBAC` with its `policies` map (field 2) in key order.
fn stable_rbac(r: &rbac::Rbac) -> Vec<u8> {
    let head = rbac::Rbac {
        policies: HashMap::new(),
        ..r.clone()
    };
    let mut out = head.encode_to_vec();
    let sorted: BTreeMap<String, rbac::Policy> = r
        .policies
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    prost::encoding::btree_map::encode(
        prost::encoding::string::encode,
        prost::encoding::string::encoded_len,
        prost::encoding::message::encode,
        prost::encoding::message::encoded_len,
        2,
        &sorted,
        &mut out,
    );
    out
}

/// Istio's policy name for rule `i`.
pub fn policy_name(namespace: &str, name: &str, i: usize) -> String {
    format!("ns[{namespace}]-policy[{name}]-rule[{i}]")
}

fn dry_run(meta: &ObjectMeta) -> bool {
    meta.annotations
        .get(DRY_RUN_ANNOTATION)
        .is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// The rule sets of `list`; each policy's name starts with `prefix` (`istio-ext-authz-P-` for
/// CUSTOM, else nothing).
pub(super) fn build_named(
    list: &[(&ObjectMeta, &AuthorizationPolicy)],
    action: rbac::rbac::Action,
    tcp: bool,
    prefix: &str,
) -> Built {
    let empty = || rbac::Rbac {
        action: action as i32,
        policies: HashMap::new(),
        ..Default::default()
    };
    let (mut rules, mut shadow) = (None::<rbac::Rbac>, None::<rbac::Rbac>);
    for (meta, p) in list {
        let target = if dry_run(meta) {
            shadow.get_or_insert_with(empty)
        } else {
            rules.get_or_insert_with(empty)
        };
        let ns = namespace_of(meta);
        if p.rules.is_empty() {
            target.policies.insert(
                format!("{prefix}{}", policy_name(ns, &meta.name, 0)),
                match_never(),
            );
            continue;
        }
        for (i, rule) in p.rules.iter().enumerate() {
            let generator = Gen {
                namespace: ns,
                tcp,
                allow: action == rbac::rbac::Action::Allow,
            };
            match generator.policy(rule) {
                Ok(policy) => {
                    target.policies.insert(
                        format!("{prefix}{}", policy_name(ns, &meta.name, i)),
                        policy,
                    );
                }
                Err(why) => {
                    tracing::debug!(
                        policy = %format!("{ns}/{}", meta.name),
                        rule = i,
                        tcp,
                        "authorization rule skipped: {why}"
                    );
                }
            }
        }
    }
    Built { rules, shadow }
}

/// Istio's policy that never matches, for a policy without rules.
fn match_never() -> rbac::Policy {
    rbac::Policy {
        permissions: vec![perm_not(perm_any())],
        principals: vec![rbac::Principal {
            identifier: Some(rbac::principal::Identifier::NotId(Box::new(princ_any()))),
        }],
        ..Default::default()
    }
}

/// One attribute of a rule: where it goes and its values.
#[derive(Clone, Copy)]
enum Attr<'k> {
    Host,
    Method,
    Path,
    Port,
    DestIp,
    Sni,
    SrcIp,
    RemoteIp,
    SrcNamespace,
    SrcPrincipal,
    ServiceAccount,
    RequestPrincipal,
    Audiences,
    Presenter,
    Header(&'k str),
    Claims(&'k str),
}

impl Attr<'_> {
    fn http_only(self) -> bool {
        matches!(
            self,
            Attr::Host
                | Attr::Method
                | Attr::Path
                | Attr::RequestPrincipal
                | Attr::Audiences
                | Attr::Presenter
                | Attr::Header(_)
                | Attr::Claims(_)
        )
    }
}

#[derive(Clone, Copy)]
struct Field<'k> {
    attr: Attr<'k>,
    values: &'k [String],
    not_values: &'k [String],
}

fn field<'k>(attr: Attr<'k>, values: &'k [String], not_values: &'k [String]) -> Option<Field<'k>> {
    (!values.is_empty() || !not_values.is_empty()).then_some(Field {
        attr,
        values,
        not_values,
    })
}

struct Gen<'a> {
    /// The policy's namespace (a service account without one is in it).
    namespace: &'a str,
    tcp: bool,
    allow: bool,
}

type Gened<T> = Result<T, String>;

impl Gen<'_> {
    /// One rule as an RBAC policy; `Err` when the rule must be dropped (an ALLOW rule with a
    /// field that cannot apply here, or an unknown condition key).
    fn policy(&self, rule: &Rule) -> Gened<rbac::Policy> {
        // The `when` conditions, split between permissions and principals as Istio does.
        let mut base_perm = Vec::new();
        let mut base_princ = Vec::new();
        for c in &rule.when {
            let k = c.key.as_str();
            let (attr, on_permission) = match k {
                "destination.ip" => (Attr::DestIp, true),
                "destination.port" => (Attr::Port, true),
                "connection.sni" => (Attr::Sni, true),
                "source.ip" => (Attr::SrcIp, false),
                "remote.ip" => (Attr::RemoteIp, false),
                "source.namespace" => (Attr::SrcNamespace, false),
                "source.principal" => (Attr::SrcPrincipal, false),
                "request.auth.principal" => (Attr::RequestPrincipal, false),
                "request.auth.audiences" => (Attr::Audiences, false),
                "request.auth.presenter" => (Attr::Presenter, false),
                _ if k.starts_with("request.headers") => {
                    (Attr::Header(&k["request.headers".len()..]), false)
                }
                _ if k.starts_with("request.auth.claims") => {
                    (Attr::Claims(&k["request.auth.claims".len()..]), false)
                }
                _ => return Err(format!("the condition key {k:?} is not supported")),
            };
            if let Some(f) = field(attr, &c.values, &c.not_values) {
                if on_permission {
                    base_perm.push(f);
                } else {
                    base_princ.push(f);
                }
            }
        }
        let mut principals = Vec::new();
        match &rule.from {
            Some(from) if !from.is_empty() => {
                for f in from {
                    let mut fields = Vec::new();
                    if let Some(s) = &f.source {
                        if !s.trust_domains.is_empty() || !s.not_trust_domains.is_empty() {
                            // Not translated: fail closed (ALLOW drops the rule).
                            self.unsupported("source.trustDomains")?;
                        }
                        fields.extend(field(Attr::SrcPrincipal, &s.principals, &s.not_principals));
                        fields.extend(field(
                            Attr::RequestPrincipal,
                            &s.request_principals,
                            &s.not_request_principals,
                        ));
                        fields.extend(field(Attr::SrcNamespace, &s.namespaces, &s.not_namespaces));
                        fields.extend(field(
                            Attr::ServiceAccount,
                            &s.service_accounts,
                            &s.not_service_accounts,
                        ));
                        fields.extend(field(
                            Attr::RemoteIp,
                            &s.remote_ip_blocks,
                            &s.not_remote_ip_blocks,
                        ));
                        fields.extend(field(Attr::SrcIp, &s.ip_blocks, &s.not_ip_blocks));
                    }
                    fields.extend(base_princ.iter().copied());
                    principals.push(self.principal_and(&fields)?);
                }
            }
            _ => principals.push(self.principal_and(&base_princ)?),
        }
        let mut permissions = Vec::new();
        match &rule.to {
            Some(to) if !to.is_empty() => {
                for t in to {
                    let mut fields = Vec::new();
                    if let Some(o) = &t.operation {
                        fields.extend(field(Attr::Host, &o.hosts, &o.not_hosts));
                        fields.extend(field(Attr::Method, &o.methods, &o.not_methods));
                        fields.extend(field(Attr::Path, &o.paths, &o.not_paths));
                        fields.extend(field(Attr::Port, &o.ports, &o.not_ports));
                    }
                    fields.extend(base_perm.iter().copied());
                    permissions.push(self.permission_and(&fields)?);
                }
            }
            _ => permissions.push(self.permission_and(&base_perm)?),
        }
        Ok(rbac::Policy {
            permissions,
            principals,
            ..Default::default()
        })
    }

    /// Istio's `checkError`: an ALLOW rule fails as a whole; DENY and AUDIT drop the value.
    fn unsupported(&self, what: &str) -> Gened<()> {
        if self.allow {
            Err(format!("{what} is not supported"))
        } else {
            Ok(())
        }
    }

    /// A value's matcher, or `Ok(None)` when a DENY/AUDIT rule ignores it.
    fn checked<T>(&self, attr: Attr<'_>, v: Gened<T>) -> Gened<Option<T>> {
        let v = if self.tcp && attr.http_only() {
            Err("an HTTP-only field on a TCP port".to_string())
        } else {
            v
        };
        match v {
            Ok(x) => Ok(Some(x)),
            Err(e) if self.allow => Err(e),
            Err(_) => Ok(None),
        }
    }

    fn permission_and(&self, fields: &[Field<'_>]) -> Gened<rbac::Permission> {
        let mut and = Vec::new();
        for f in fields {
            let or = |values: &[String]| -> Gened<Vec<rbac::Permission>> {
                let mut out = Vec::new();
                for v in values {
                    if let Some(p) = self.checked(f.attr, permission(f.attr, v))? {
                        out.push(p);
                    }
                }
                Ok(out)
            };
            let yes = or(f.values)?;
            if !yes.is_empty() {
                and.push(perm_or(yes));
            }
            let no = or(f.not_values)?;
            if !no.is_empty() {
                and.push(perm_not(perm_or(no)));
            }
        }
        if and.is_empty() {
            and.push(perm_any());
        }
        Ok(rbac::Permission {
            rule: Some(rbac::permission::Rule::AndRules(rbac::permission::Set {
                rules: and,
            })),
        })
    }

    fn principal_and(&self, fields: &[Field<'_>]) -> Gened<rbac::Principal> {
        let mut and = Vec::new();
        for f in fields {
            // Request principals, audiences, presenters and claims match all values at once
            // (Istio's extended generators); the others one value at a time.
            let all_at_once = matches!(
                f.attr,
                Attr::RequestPrincipal | Attr::Audiences | Attr::Presenter | Attr::Claims(_)
            );
            let or = |values: &[String]| -> Gened<Option<rbac::Principal>> {
                if values.is_empty() {
                    return Ok(None);
                }
                if all_at_once {
                    return self.checked(f.attr, extended_principal(f.attr, values));
                }
                let mut out = Vec::new();
                for v in values {
                    if let Some(p) = self.checked(f.attr, principal(f.attr, v, self.namespace))? {
                        out.push(p);
                    }
                }
                Ok((!out.is_empty()).then(|| princ_or(out)))
            };
            if let Some(p) = or(f.values)? {
                and.push(p);
            }
            if let Some(p) = or(f.not_values)? {
                and.push(rbac::Principal {
                    identifier: Some(rbac::principal::Identifier::NotId(Box::new(p))),
                });
            }
        }
        if and.is_empty() {
            and.push(princ_any());
        }
        Ok(rbac::Principal {
            identifier: Some(rbac::principal::Identifier::AndIds(rbac::principal::Set {
                ids: and,
            })),
        })
    }
}

fn permission(attr: Attr<'_>, v: &str) -> Gened<rbac::Permission> {
    use rbac::permission::Rule;
    Ok(rbac::Permission {
        rule: Some(match attr {
            Attr::Host => Rule::Header(header_matcher_of(":authority", v, true)),
            Attr::Method => Rule::Header(header_matcher_of(":method", v, false)),
            Attr::Path if v.contains("{*}") || v.contains("{**}") => {
                Rule::UriTemplate(TypedExtensionConfig {
                    name: URI_TEMPLATE.to_string(),
                    typed_config: Some(pack_any(UriTemplateMatchConfig {
                        path_template: v.replace("{**}", "**").replace("{*}", "*"),
                    })),
                })
            }
            Attr::Path => Rule::UrlPath(PathMatcher {
                rule: Some(path_matcher::Rule::Path(string_with_prefix(v, "", false))),
            }),
            Attr::Port => Rule::DestinationPort(port(v)?),
            Attr::DestIp => Rule::DestinationIp(cidr(v)?),
            Attr::Sni => Rule::RequestedServerName(string_with_prefix(v, "", false)),
            _ => return Err("not a permission attribute".to_string()),
        }),
    })
}

fn principal(attr: Attr<'_>, v: &str, policy_namespace: &str) -> Gened<rbac::Principal> {
    use rbac::principal::Identifier;
    let authenticated = |m: StringMatcher| {
        Identifier::Authenticated(rbac::principal::Authenticated {
            principal_name: Some(m),
        })
    };
    Ok(rbac::Principal {
        identifier: Some(match attr {
            Attr::SrcPrincipal => authenticated(string_with_prefix(v, "spiffe://", false)),
            Attr::SrcNamespace => {
                authenticated(regex(&format!(".*/ns/{}/.*", v.replace('*', ".*"))))
            }
            Attr::ServiceAccount => {
                // `NS/NAME`, or `NAME` in the policy's namespace.
                let (ns, sa) = v.split_once('/').unwrap_or((policy_namespace, v));
                authenticated(regex(&format!(
                    "spiffe://.+/ns/{}/(.+/|)sa/{}(/.+)?",
                    regex_escape(ns),
                    regex_escape(sa)
                )))
            }
            Attr::SrcIp => Identifier::DirectRemoteIp(cidr(v)?),
            Attr::RemoteIp => Identifier::RemoteIp(cidr(v)?),
            Attr::Header(name) => {
                let name = bracketed(name)?;
                Identifier::Header(header_matcher_of(name, v, false))
            }
            _ => return Err("not a principal attribute".to_string()),
        }),
    })
}

/// Request principals (`ISS/SUB` with `*` forms), audiences, presenters and claims: the
/// verified JWT's payload that jwt_authn leaves in its dynamic metadata.
fn extended_principal(attr: Attr<'_>, values: &[String]) -> Gened<rbac::Principal> {
    use rbac::principal::Identifier;
    let meta = |m: MetadataMatcher| rbac::Principal {
        #[allow(deprecated)]
        identifier: Some(Identifier::Metadata(m)),
    };
    match attr {
        Attr::RequestPrincipal => {
            let any = || regex(".+");
            let mut or = Vec::new();
            for value in values {
                let (iss, sub, found) = match value.rfind('/') {
                    Some(i) => (&value[..i], &value[i + 1..], true),
                    None => (value.as_str(), "", false),
                };
                let (mi, ms) = if value == "*" {
                    (any(), any())
                } else if let Some(rest) = value.strip_prefix('*') {
                    if found {
                        let mi = if iss == "*" {
                            any()
                        } else {
                            string(string_matcher::MatchPattern::Suffix(
                                iss.trim_start_matches('*').to_string(),
                            ))
                        };
                        (mi, exact(sub))
                    } else {
                        (
                            any(),
                            string(string_matcher::MatchPattern::Suffix(rest.to_string())),
                        )
                    }
                } else if let Some(rest) = value.strip_suffix('*') {
                    if found {
                        let ms = if sub == "*" {
                            any()
                        } else {
                            string(string_matcher::MatchPattern::Prefix(
                                sub.trim_end_matches('*').to_string(),
                            ))
                        };
                        (exact(iss), ms)
                    } else {
                        (
                            string(string_matcher::MatchPattern::Prefix(rest.to_string())),
                            any(),
                        )
                    }
                } else {
                    (exact(iss), exact(sub))
                };
                or.push(rbac::Principal {
                    identifier: Some(Identifier::AndIds(rbac::principal::Set {
                        ids: vec![
                            meta(jwt_claim(&["iss"], string_value(mi))),
                            meta(jwt_claim(&["sub"], string_value(ms))),
                        ],
                    })),
                });
            }
            Ok(if or.len() == 1 {
                or.remove(0)
            } else {
                princ_or(or)
            })
        }
        Attr::Audiences => Ok(meta(jwt_list_claim(&["aud"], values))),
        Attr::Presenter => Ok(meta(jwt_list_claim(&["azp"], values))),
        Attr::Claims(key) => {
            let claims = nested_brackets(key)?;
            let claims: Vec<&str> = claims.iter().map(String::as_str).collect();
            Ok(meta(jwt_list_claim(&claims, values)))
        }
        _ => Err("not a request attribute".to_string()),
    }
}

fn jwt_claim(claims: &[&str], value: ValueMatcher) -> MetadataMatcher {
    let path = std::iter::once(JWT_PAYLOAD)
        .chain(claims.iter().copied())
        .map(|k| metadata_matcher::PathSegment {
            segment: Some(metadata_matcher::path_segment::Segment::Key(k.to_string())),
        })
        .collect();
    MetadataMatcher {
        filter: JWT_FILTER.to_string(),
        path,
        value: Some(value),
        ..Default::default()
    }
}

/// A claim that is a string or a list with one of `values` (Istio's extended JWT matcher).
fn jwt_list_claim(claims: &[&str], values: &[String]) -> MetadataMatcher {
    // Envoy's OrMatcher needs two matchers at least (Istio's `StringOrMatcher`).
    let mut each: Vec<ValueMatcher> = values
        .iter()
        .map(|v| string_value(string_with_prefix(v, "", false)))
        .collect();
    let one = if each.len() == 1 {
        each.remove(0)
    } else {
        ValueMatcher {
            match_pattern: Some(value_matcher::MatchPattern::OrMatch(OrMatcher {
                value_matchers: each,
            })),
        }
    };
    let list = ValueMatcher {
        match_pattern: Some(value_matcher::MatchPattern::ListMatch(Box::new(
            ListMatcher {
                match_pattern: Some(list_matcher::MatchPattern::OneOf(Box::new(one.clone()))),
            },
        ))),
    };
    jwt_claim(
        claims,
        ValueMatcher {
            match_pattern: Some(value_matcher::MatchPattern::OrMatch(OrMatcher {
                value_matchers: vec![one, list],
            })),
        },
    )
}

fn string_value(m: StringMatcher) -> ValueMatcher {
    ValueMatcher {
        match_pattern: Some(value_matcher::MatchPattern::StringMatch(m)),
    }
}

/// `[name]`.
fn bracketed(s: &str) -> Gened<&str> {
    s.strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .filter(|n| !n.is_empty())
        .ok_or_else(|| format!("expected [NAME], found {s:?}"))
}

/// `[a][b]` → `[a, b]`; `[a.b]` → `[a.b]`.
fn nested_brackets(s: &str) -> Gened<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let inner = rest
            .strip_prefix('[')
            .ok_or_else(|| format!("expected [NAME], found {s:?}"))?;
        let end = inner
            .find(']')
            .ok_or_else(|| format!("expected [NAME], found {s:?}"))?;
        if inner[..end].contains('[') || end == 0 {
            return Err(format!("expected [NAME], found {s:?}"));
        }
        out.push(inner[..end].to_string());
        rest = &inner[end + 1..];
    }
    if out.is_empty() {
        return Err(format!("expected [NAME], found {s:?}"));
    }
    Ok(out)
}

fn port(v: &str) -> Gened<u32> {
    v.parse::<u16>()
        .map(u32::from)
        .map_err(|_| format!("{v:?} is not a port"))
}

fn cidr(v: &str) -> Gened<CidrRange> {
    let (addr, len) = match v.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (v, None),
    };
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| format!("{v:?} is not an IP address or CIDR"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(l) => l
            .parse::<u32>()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("{v:?} has a bad prefix length"))?,
    };
    Ok(CidrRange {
        address_prefix: ip.to_string(),
        prefix_len: Some(UInt32Value { value: len }),
    })
}

fn string(p: string_matcher::MatchPattern) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(p),
        ignore_case: false,
    }
}

fn exact(s: &str) -> StringMatcher {
    string(string_matcher::MatchPattern::Exact(s.to_string()))
}

fn regex(r: &str) -> StringMatcher {
    string(string_matcher::MatchPattern::SafeRegex(RegexMatcher {
        regex: r.to_string(),
        ..Default::default()
    }))
}

fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Istio's `StringMatcherWithPrefix`: `*` is any non-empty value, `*x` a suffix, `x*` a prefix.
fn string_with_prefix(v: &str, prefix: &str, ignore_case: bool) -> StringMatcher {
    use string_matcher::MatchPattern as P;
    let pattern = if v == "*" {
        return regex(".+");
    } else if let Some(rest) = v.strip_prefix('*') {
        if prefix.is_empty() {
            P::Suffix(rest.to_string())
        } else {
            return regex(&format!("{}.*{}", regex_escape(prefix), regex_escape(rest)));
        }
    } else if let Some(rest) = v.strip_suffix('*') {
        P::Prefix(format!("{prefix}{rest}"))
    } else {
        P::Exact(format!("{prefix}{v}"))
    };
    StringMatcher {
        match_pattern: Some(pattern),
        ignore_case,
    }
}

/// Istio's `HeaderMatcher` (`ignore_case` for hosts, its `HostMatcher`): `*` is presence.
fn header_matcher_of(name: &str, v: &str, ignore_case: bool) -> HeaderMatcher {
    use header_matcher::HeaderMatchSpecifier as S;
    let specifier = if v == "*" {
        S::PresentMatch(true)
    } else {
        S::StringMatch(string_with_prefix(v, "", ignore_case))
    };
    HeaderMatcher {
        name: name.to_string(),
        header_match_specifier: Some(specifier),
        ..Default::default()
    }
}

fn perm_any() -> rbac::Permission {
    rbac::Permission {
        rule: Some(rbac::permission::Rule::Any(true)),
    }
}

fn perm_not(p: rbac::Permission) -> rbac::Permission {
    rbac::Permission {
        rule: Some(rbac::permission::Rule::NotRule(Box::new(p))),
    }
}

fn perm_or(rules: Vec<rbac::Permission>) -> rbac::Permission {
    rbac::Permission {
        rule: Some(rbac::permission::Rule::OrRules(rbac::permission::Set {
            rules,
        })),
    }
}

fn princ_any() -> rbac::Principal {
    rbac::Principal {
        identifier: Some(rbac::principal::Identifier::Any(true)),
    }
}

fn princ_or(ids: Vec<rbac::Principal>) -> rbac::Principal {
    rbac::Principal {
        identifier: Some(rbac::principal::Identifier::OrIds(rbac::principal::Set {
            ids,
        })),
    }
}
