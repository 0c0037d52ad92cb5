//! Envoy's protos → the compiled engine, once per config: the RBAC rules (`envoy.config.rbac.v3`),
//! the HTTP and network RBAC filters and jwt_authn. What the engine cannot honour is refused
//! with a [`ConfigError`]: the field path inside the filter's config and the problem, typed, so
//! strait-proxy can NACK with it and the CLI can say it.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use envoy_types::pb::envoy::config::core::v3::{CidrRange, DataSource, data_source};
use envoy_types::pb::envoy::config::rbac::v3 as pb;
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, RouteMatch, header_matcher, route_match,
};
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3 as jwt_pb;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbacPb;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbacPb;
use envoy_types::pb::envoy::extensions::path::r#match::uri_template::v3::UriTemplateMatchConfig;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    ListMatcher, MetadataMatcher, PathMatcher, StringMatcher, ValueMatcher, double_matcher,
    list_matcher, metadata_matcher, path_matcher, string_matcher, value_matcher,
};
use envoy_types::pb::google::protobuf::Any;

use crate::filter::RbacFilter;
use crate::jwk::Jwks;
use crate::jwt::{JwtAuthn, PathRule, Provider, Requirement};
use crate::matcher::{
    Cidr, DoubleMatch, HeaderKind, HeaderMatch, MetadataMatch, PathTemplate, Re, StringKind,
    StringMatch, ValueMatch,
};
use crate::rbac::{Action, Permission, Policy, Principal, Rbac};

pub const HTTP_RBAC_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
pub const NETWORK_RBAC_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC";
pub const JWT_AUTHN_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication";
const URI_TEMPLATE_TYPE: &str =
    "type.googleapis.com/envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig";

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Field(&'static str),
    Index(usize),
    Key(String),
}

/// What is wrong at a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// Not implemented (this value of it, when given).
    Unsupported(Option<String>),
    BadValue {
        value: String,
        expected: String,
    },
    Missing,
    WrongType {
        got: String,
        expected: &'static str,
    },
    Undecodable(String),
}

/// A refusal: the field path (outermost first once built) and the problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    reversed: Vec<Segment>,
    pub problem: Problem,
}

impl ConfigError {
    fn new(field: &'static str, problem: Problem) -> ConfigError {
        let mut e = ConfigError {
            reversed: Vec::new(),
            problem,
        };
        for f in field.split('.').filter(|f| !f.is_empty()).rev() {
            e.reversed.push(Segment::Field(f));
        }
        e
    }

    pub fn unsupported(field: &'static str) -> ConfigError {
        ConfigError::new(field, Problem::Unsupported(None))
    }

    pub fn unsupported_value(field: &'static str, detail: impl fmt::Display) -> ConfigError {
        ConfigError::new(field, Problem::Unsupported(Some(detail.to_string())))
    }

    pub fn bad_value(
        field: &'static str,
        value: impl fmt::Display,
        expected: impl Into<String>,
    ) -> ConfigError {
        ConfigError::new(
            field,
            Problem::BadValue {
                value: value.to_string(),
                expected: expected.into(),
            },
        )
    }

    pub fn missing(field: &'static str) -> ConfigError {
        ConfigError::new(field, Problem::Missing)
    }

    fn under(mut self, field: &'static str) -> ConfigError {
        for f in field.split('.').filter(|f| !f.is_empty()).rev() {
            self.reversed.push(Segment::Field(f));
        }
        self
    }

    fn index(mut self, i: usize) -> ConfigError {
        self.reversed.push(Segment::Index(i));
        self
    }

    fn key(mut self, k: &str) -> ConfigError {
        self.reversed.push(Segment::Key(k.to_string()));
        self
    }

    /// The path, outermost first.
    pub fn path(&self) -> Vec<Segment> {
        self.reversed.iter().rev().cloned().collect()
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut path = String::new();
        for (i, s) in self.path().iter().enumerate() {
            match s {
                Segment::Field(name) if i == 0 => path.push_str(name),
                Segment::Field(name) => {
                    path.push('.');
                    path.push_str(name);
                }
                Segment::Index(n) => path.push_str(&format!("[{n}]")),
                Segment::Key(k) => path.push_str(&format!("[{k:?}]")),
            }
        }
        let sep = if path.is_empty() { "" } else { " " };
        match &self.problem {
            Problem::Unsupported(None) => write!(f, "{path}{sep}is not supported"),
            Problem::Unsupported(Some(d)) => write!(f, "{path}{sep}{d} is not supported"),
            Problem::BadValue { value, expected } => {
                write!(f, "{path}{sep}{value} is not {expected}")
            }
            Problem::Missing => write!(f, "{path}{sep}is missing"),
            Problem::WrongType { got, expected } => {
                write!(f, "{path}{sep}has type {got}, expected {expected}")
            }
            Problem::Undecodable(e) => write!(f, "{path}{sep}does not decode: {e}"),
        }
    }
}

type Result<T> = std::result::Result<T, ConfigError>;

trait At<T> {
    fn under(self, field: &'static str) -> Result<T>;
    fn index(self, i: usize) -> Result<T>;
    fn key(self, k: &str) -> Result<T>;
}

impl<T> At<T> for Result<T> {
    fn under(self, field: &'static str) -> Result<T> {
        self.map_err(|e| e.under(field))
    }
    fn index(self, i: usize) -> Result<T> {
        self.map_err(|e| e.index(i))
    }
    fn key(self, k: &str) -> Result<T> {
        self.map_err(|e| e.key(k))
    }
}

fn refuse_if(cond: bool, field: &'static str) -> Result<()> {
    if cond {
        Err(ConfigError::unsupported(field))
    } else {
        Ok(())
    }
}

/// Decodes a typed config of type `expected`.
pub fn decode<M: prost::Message + Default>(any: &Any, expected: &'static str) -> Result<M> {
    if any.type_url != expected {
        return Err(ConfigError {
            reversed: Vec::new(),
            problem: Problem::WrongType {
                got: any.type_url.clone(),
                expected,
            },
        });
    }
    M::decode(any.value.as_slice()).map_err(|e| ConfigError {
        reversed: Vec::new(),
        problem: Problem::Undecodable(e.to_string()),
    })
}

/// `envoy.filters.http.rbac`.
pub fn http_rbac_filter(any: &Any) -> Result<RbacFilter> {
    let f: HttpRbacPb = decode(any, HTTP_RBAC_TYPE)?;
    refuse_if(f.matcher.is_some(), "matcher")?;
    refuse_if(f.shadow_matcher.is_some(), "shadow_matcher")?;
    Ok(RbacFilter {
        rules: f.rules.as_ref().map(rbac).transpose().under("rules")?,
        shadow: f
            .shadow_rules
            .as_ref()
            .map(rbac)
            .transpose()
            .under("shadow_rules")?,
        shadow_prefix: f.shadow_rules_stat_prefix,
    })
}

/// `envoy.filters.network.rbac` (evaluated once, when the connection opens: the attributes it
/// can read do not change afterwards).
pub fn network_rbac_filter(any: &Any) -> Result<RbacFilter> {
    let f: NetworkRbacPb = decode(any, NETWORK_RBAC_TYPE)?;
    refuse_if(f.matcher.is_some(), "matcher")?;
    refuse_if(f.shadow_matcher.is_some(), "shadow_matcher")?;
    Ok(RbacFilter {
        rules: f.rules.as_ref().map(rbac).transpose().under("rules")?,
        shadow: f
            .shadow_rules
            .as_ref()
            .map(rbac)
            .transpose()
            .under("shadow_rules")?,
        shadow_prefix: f.shadow_rules_stat_prefix,
    })
}

/// An RBAC rule set.
pub fn rbac(r: &pb::Rbac) -> Result<Rbac> {
    let action = match pb::rbac::Action::try_from(r.action) {
        Ok(pb::rbac::Action::Allow) => Action::Allow,
        Ok(pb::rbac::Action::Deny) => Action::Deny,
        Ok(pb::rbac::Action::Log) => Action::Log,
        Err(_) => {
            return Err(ConfigError::bad_value(
                "action",
                r.action,
                "ALLOW, DENY or LOG",
            ));
        }
    };
    refuse_if(r.audit_logging_options.is_some(), "audit_logging_options")?;
    let mut policies: Vec<(String, Policy)> = Vec::with_capacity(r.policies.len());
    let mut names: Vec<&String> = r.policies.keys().collect();
    names.sort();
    for name in names {
        let p = &r.policies[name];
        policies.push((name.clone(), policy(p).key(name).under("policies")?));
    }
    Ok(Rbac { action, policies })
}

fn policy(p: &pb::Policy) -> Result<Policy> {
    refuse_if(p.condition.is_some(), "condition")?;
    refuse_if(p.checked_condition.is_some(), "checked_condition")?;
    refuse_if(p.cel_config.is_some(), "cel_config")?;
    if p.permissions.is_empty() {
        return Err(ConfigError::missing("permissions"));
    }
    if p.principals.is_empty() {
        return Err(ConfigError::missing("principals"));
    }
    Ok(Policy {
        permissions: p
            .permissions
            .iter()
            .enumerate()
            .map(|(i, x)| permission(x).index(i))
            .collect::<Result<_>>()
            .under("permissions")?,
        principals: p
            .principals
            .iter()
            .enumerate()
            .map(|(i, x)| principal(x).index(i))
            .collect::<Result<_>>()
            .under("principals")?,
    })
}

fn permission(p: &pb::Permission) -> Result<Permission> {
    use pb::permission::Rule;
    let set = |s: &pb::permission::Set, field: &'static str| -> Result<Vec<Permission>> {
        s.rules
            .iter()
            .enumerate()
            .map(|(i, r)| permission(r).index(i))
            .collect::<Result<_>>()
            .under("rules")
            .under(field)
    };
    Ok(match &p.rule {
        None => return Err(ConfigError::missing("rule")),
        Some(Rule::AndRules(s)) => Permission::And(set(s, "and_rules")?),
        Some(Rule::OrRules(s)) => Permission::Or(set(s, "or_rules")?),
        Some(Rule::Any(true)) => Permission::Any,
        Some(Rule::Any(false)) => return Err(ConfigError::bad_value("any", false, "true")),
        Some(Rule::Header(h)) => Permission::Header(header(h).under("header")?),
        Some(Rule::UrlPath(m)) => Permission::UrlPath(path_matcher(m).under("url_path")?),
        Some(Rule::DestinationIp(c)) => Permission::DestinationIp(cidr(c).under("destination_ip")?),
        Some(Rule::DestinationPort(port)) => Permission::DestinationPort(
            u16::try_from(*port)
                .map_err(|_| ConfigError::bad_value("destination_port", port, "a port"))?,
        ),
        Some(Rule::DestinationPortRange(r)) => Permission::DestinationPortRange {
            start: u32::try_from(r.start).unwrap_or(0),
            end: u32::try_from(r.end).unwrap_or(0),
        },
        #[allow(deprecated)]
        Some(Rule::Metadata(m)) => Permission::Metadata(metadata(m).under("metadata")?),
        Some(Rule::NotRule(inner)) => {
            Permission::Not(Box::new(permission(inner).under("not_rule")?))
        }
        Some(Rule::RequestedServerName(m)) => {
            Permission::RequestedServerName(string(m).under("requested_server_name")?)
        }
        Some(Rule::UriTemplate(ext)) => {
            let any = ext
                .typed_config
                .as_ref()
                .ok_or_else(|| ConfigError::missing("uri_template.typed_config"))?;
            let t: UriTemplateMatchConfig =
                decode(any, URI_TEMPLATE_TYPE).under("uri_template.typed_config")?;
            Permission::UriTemplate(PathTemplate::new(&t.path_template).map_err(|e| {
                ConfigError::bad_value(
                    "uri_template.typed_config.path_template",
                    e,
                    "a URI template",
                )
            })?)
        }
        Some(Rule::Matcher(_)) => return Err(ConfigError::unsupported("matcher")),
        Some(Rule::SourcedMetadata(_)) => return Err(ConfigError::unsupported("sourced_metadata")),
    })
}

fn principal(p: &pb::Principal) -> Result<Principal> {
    use pb::principal::Identifier;
    let set = |s: &pb::principal::Set, field: &'static str| -> Result<Vec<Principal>> {
        s.ids
            .iter()
            .enumerate()
            .map(|(i, r)| principal(r).index(i))
            .collect::<Result<_>>()
            .under("ids")
            .under(field)
    };
    Ok(match &p.identifier {
        None => return Err(ConfigError::missing("identifier")),
        Some(Identifier::AndIds(s)) => Principal::And(set(s, "and_ids")?),
        Some(Identifier::OrIds(s)) => Principal::Or(set(s, "or_ids")?),
        Some(Identifier::Any(true)) => Principal::Any,
        Some(Identifier::Any(false)) => return Err(ConfigError::bad_value("any", false, "true")),
        Some(Identifier::Authenticated(a)) => Principal::Authenticated(
            a.principal_name
                .as_ref()
                .map(string)
                .transpose()
                .under("authenticated.principal_name")?,
        ),
        #[allow(deprecated)]
        Some(Identifier::SourceIp(c)) => Principal::DirectRemoteIp(cidr(c).under("source_ip")?),
        Some(Identifier::DirectRemoteIp(c)) => {
            Principal::DirectRemoteIp(cidr(c).under("direct_remote_ip")?)
        }
        Some(Identifier::RemoteIp(c)) => Principal::RemoteIp(cidr(c).under("remote_ip")?),
        Some(Identifier::Header(h)) => Principal::Header(header(h).under("header")?),
        Some(Identifier::UrlPath(m)) => Principal::UrlPath(path_matcher(m).under("url_path")?),
        #[allow(deprecated)]
        Some(Identifier::Metadata(m)) => Principal::Metadata(metadata(m).under("metadata")?),
        Some(Identifier::NotId(inner)) => {
            Principal::Not(Box::new(principal(inner).under("not_id")?))
        }
        Some(Identifier::FilterState(_)) => return Err(ConfigError::unsupported("filter_state")),
        Some(Identifier::SourcedMetadata(_)) => {
            return Err(ConfigError::unsupported("sourced_metadata"));
        }
        Some(Identifier::Custom(_)) => return Err(ConfigError::unsupported("custom")),
    })
}

/// A `StringMatcher`.
pub fn string(m: &StringMatcher) -> Result<StringMatch> {
    use string_matcher::MatchPattern;
    let kind = match &m.match_pattern {
        None => return Err(ConfigError::missing("match_pattern")),
        Some(MatchPattern::Exact(s)) => StringKind::Exact(s.clone()),
        Some(MatchPattern::Prefix(s)) => StringKind::Prefix(s.clone()),
        Some(MatchPattern::Suffix(s)) => StringKind::Suffix(s.clone()),
        Some(MatchPattern::Contains(s)) => StringKind::Contains(s.clone()),
        Some(MatchPattern::SafeRegex(r)) => StringKind::SafeRegex(
            Re::new(&r.regex)
                .map_err(|e| ConfigError::bad_value("safe_regex.regex", e, "a valid regex"))?,
        ),
        Some(MatchPattern::Custom(_)) => return Err(ConfigError::unsupported("custom")),
    };
    Ok(StringMatch {
        kind,
        ignore_case: m.ignore_case,
    })
}

fn path_matcher(m: &PathMatcher) -> Result<StringMatch> {
    match &m.rule {
        Some(path_matcher::Rule::Path(s)) => string(s).under("path"),
        None => Err(ConfigError::missing("path")),
    }
}

fn cidr(c: &CidrRange) -> Result<Cidr> {
    let address: IpAddr = c.address_prefix.parse().map_err(|_| {
        ConfigError::bad_value(
            "address_prefix",
            format!("{:?}", c.address_prefix),
            "an IP address",
        )
    })?;
    let max = if address.is_ipv4() { 32 } else { 128 };
    let len = c.prefix_len.as_ref().map_or(max, |l| l.value);
    let prefix_len = u8::try_from(len)
        .ok()
        .filter(|l| u32::from(*l) <= max)
        .ok_or_else(|| ConfigError::bad_value("prefix_len", len, format!("at most {max}")))?;
    Ok(Cidr {
        address,
        prefix_len,
    })
}

/// A route `HeaderMatcher`.
pub fn header(h: &HeaderMatcher) -> Result<HeaderMatch> {
    use header_matcher::HeaderMatchSpecifier as S;
    let exact = |s: &String| HeaderKind::String(StringMatch::exact(s.clone()));
    let kind = match &h.header_match_specifier {
        None => HeaderKind::Present(true),
        #[allow(deprecated)]
        Some(S::ExactMatch(s)) => exact(s),
        #[allow(deprecated)]
        Some(S::SafeRegexMatch(r)) => HeaderKind::String(StringMatch {
            kind: StringKind::SafeRegex(Re::new(&r.regex).map_err(|e| {
                ConfigError::bad_value("safe_regex_match.regex", e, "a valid regex")
            })?),
            ignore_case: false,
        }),
        Some(S::RangeMatch(r)) => HeaderKind::Range {
            start: r.start,
            end: r.end,
        },
        Some(S::PresentMatch(p)) => HeaderKind::Present(*p),
        #[allow(deprecated)]
        Some(S::PrefixMatch(s)) => HeaderKind::String(StringMatch {
            kind: StringKind::Prefix(s.clone()),
            ignore_case: false,
        }),
        #[allow(deprecated)]
        Some(S::SuffixMatch(s)) => HeaderKind::String(StringMatch {
            kind: StringKind::Suffix(s.clone()),
            ignore_case: false,
        }),
        #[allow(deprecated)]
        Some(S::ContainsMatch(s)) => HeaderKind::String(StringMatch {
            kind: StringKind::Contains(s.clone()),
            ignore_case: false,
        }),
        Some(S::StringMatch(m)) => HeaderKind::String(string(m).under("string_match")?),
    };
    Ok(HeaderMatch {
        name: h.name.to_ascii_lowercase(),
        kind,
        invert: h.invert_match,
        treat_missing_as_empty: h.treat_missing_header_as_empty,
    })
}

fn value(v: &ValueMatcher) -> Result<ValueMatch> {
    use value_matcher::MatchPattern;
    Ok(match &v.match_pattern {
        None => return Err(ConfigError::missing("match_pattern")),
        Some(MatchPattern::NullMatch(_)) => ValueMatch::Null,
        Some(MatchPattern::DoubleMatch(d)) => ValueMatch::Double(match &d.match_pattern {
            Some(double_matcher::MatchPattern::Range(r)) => DoubleMatch::Range {
                start: r.start,
                end: r.end,
            },
            Some(double_matcher::MatchPattern::Exact(x)) => DoubleMatch::Exact(*x),
            None => return Err(ConfigError::missing("double_match.match_pattern")),
        }),
        Some(MatchPattern::StringMatch(s)) => ValueMatch::String(string(s).under("string_match")?),
        Some(MatchPattern::BoolMatch(b)) => ValueMatch::Bool(*b),
        Some(MatchPattern::PresentMatch(p)) => ValueMatch::Present(*p),
        Some(MatchPattern::ListMatch(l)) => list(l).under("list_match")?,
        Some(MatchPattern::OrMatch(o)) => ValueMatch::Or(
            o.value_matchers
                .iter()
                .enumerate()
                .map(|(i, v)| value(v).index(i))
                .collect::<Result<_>>()
                .under("or_match.value_matchers")?,
        ),
    })
}

fn list(l: &ListMatcher) -> Result<ValueMatch> {
    match &l.match_pattern {
        Some(list_matcher::MatchPattern::OneOf(v)) => {
            Ok(ValueMatch::ListOneOf(Box::new(value(v).under("one_of")?)))
        }
        None => Err(ConfigError::missing("one_of")),
    }
}

fn metadata(m: &MetadataMatcher) -> Result<MetadataMatch> {
    let path = m
        .path
        .iter()
        .enumerate()
        .map(|(i, s)| match &s.segment {
            Some(metadata_matcher::path_segment::Segment::Key(k)) => Ok(k.clone()),
            None => Err(ConfigError::missing("key").index(i).under("path")),
        })
        .collect::<Result<_>>()?;
    Ok(MetadataMatch {
        filter: m.filter.clone(),
        path,
        value: value(
            m.value
                .as_ref()
                .ok_or_else(|| ConfigError::missing("value"))?,
        )
        .under("value")?,
        invert: m.invert,
    })
}

/// `envoy.filters.http.jwt_authn`.
pub fn jwt_authn(any: &Any) -> Result<JwtAuthn> {
    let f: jwt_pb::JwtAuthentication = decode(any, JWT_AUTHN_TYPE)?;
    refuse_if(f.filter_state_rules.is_some(), "filter_state_rules")?;
    let mut providers = BTreeMap::new();
    for (name, p) in &f.providers {
        providers.insert(name.clone(), provider(p).key(name).under("providers")?);
    }
    let requirement_map = &f.requirement_map;
    let mut rules = Vec::with_capacity(f.rules.len());
    for (i, r) in f.rules.iter().enumerate() {
        let m = r
            .r#match
            .as_ref()
            .ok_or_else(|| ConfigError::missing("match"))
            .and_then(route_rule)
            .under("match")
            .index(i)
            .under("rules")?;
        let req = match &r.requirement_type {
            None => None,
            Some(jwt_pb::requirement_rule::RequirementType::Requires(q)) => Some(
                requirement(q, &providers)
                    .under("requires")
                    .index(i)
                    .under("rules")?,
            ),
            Some(jwt_pb::requirement_rule::RequirementType::RequirementName(n)) => {
                let q = requirement_map.get(n).ok_or_else(|| {
                    ConfigError::bad_value("requirement_name", n, "a name in requirement_map")
                        .index(i)
                        .under("rules")
                })?;
                Some(requirement(q, &providers).key(n).under("requirement_map")?)
            }
        };
        rules.push((m, req));
    }
    Ok(JwtAuthn {
        providers,
        rules,
        bypass_cors_preflight: f.bypass_cors_preflight,
    })
}

fn route_rule(m: &RouteMatch) -> Result<PathRule> {
    refuse_if(!m.headers.is_empty(), "headers")?;
    refuse_if(!m.query_parameters.is_empty(), "query_parameters")?;
    refuse_if(
        m.case_sensitive.as_ref().is_some_and(|c| !c.value),
        "case_sensitive",
    )?;
    refuse_if(m.runtime_fraction.is_some(), "runtime_fraction")?;
    match &m.path_specifier {
        Some(route_match::PathSpecifier::Prefix(p)) => Ok(PathRule::Prefix(p.clone())),
        Some(route_match::PathSpecifier::Path(p)) => Ok(PathRule::Path(p.clone())),
        Some(route_match::PathSpecifier::SafeRegex(r)) => {
            Ok(PathRule::SafeRegex(Re::new(&r.regex).map_err(|e| {
                ConfigError::bad_value("safe_regex.regex", e, "a valid regex")
            })?))
        }
        Some(_) => Err(ConfigError::unsupported_value(
            "path_specifier",
            "other than prefix, path or safe_regex",
        )),
        None => Err(ConfigError::missing("prefix")),
    }
}

fn requirement(
    q: &jwt_pb::JwtRequirement,
    providers: &BTreeMap<String, Provider>,
) -> Result<Requirement> {
    use jwt_pb::jwt_requirement::RequiresType;
    let known = |name: &String, field: &'static str| -> Result<()> {
        if providers.contains_key(name) {
            Ok(())
        } else {
            Err(ConfigError::bad_value(
                field,
                format!("{name:?}"),
                "a provider's name",
            ))
        }
    };
    let list = |l: &[jwt_pb::JwtRequirement], field: &'static str| -> Result<Vec<Requirement>> {
        l.iter()
            .enumerate()
            .map(|(i, q)| requirement(q, providers).index(i))
            .collect::<Result<_>>()
            .under("requirements")
            .under(field)
    };
    Ok(match &q.requires_type {
        None => return Err(ConfigError::missing("requires_type")),
        Some(RequiresType::ProviderName(n)) => {
            known(n, "provider_name")?;
            Requirement::Provider {
                name: n.clone(),
                audiences: None,
            }
        }
        Some(RequiresType::ProviderAndAudiences(p)) => {
            known(&p.provider_name, "provider_and_audiences.provider_name")?;
            Requirement::Provider {
                name: p.provider_name.clone(),
                audiences: Some(p.audiences.clone()),
            }
        }
        Some(RequiresType::RequiresAny(l)) => {
            Requirement::Any(list(&l.requirements, "requires_any")?)
        }
        Some(RequiresType::RequiresAll(l)) => {
            Requirement::All(list(&l.requirements, "requires_all")?)
        }
        Some(RequiresType::AllowMissingOrFailed(_)) => Requirement::AllowMissingOrFailed,
        Some(RequiresType::AllowMissing(_)) => Requirement::AllowMissing,
        Some(RequiresType::ExtractOnlyWithoutValidation(_)) => {
            return Err(ConfigError::unsupported("extract_only_without_validation"));
        }
    })
}

fn provider(p: &jwt_pb::JwtProvider) -> Result<Provider> {
    refuse_if(p.subjects.is_some(), "subjects")?;
    refuse_if(p.max_lifetime.is_some(), "max_lifetime")?;
    refuse_if(!p.header_in_metadata.is_empty(), "header_in_metadata")?;
    refuse_if(
        !p.failed_status_in_metadata.is_empty(),
        "failed_status_in_metadata",
    )?;
    let keys = match &p.jwks_source_specifier {
        Some(jwt_pb::jwt_provider::JwksSourceSpecifier::LocalJwks(ds)) => {
            let text = inline(ds).under("local_jwks")?;
            // Envoy refuses a config whose key set has no key it can use ("invalid local
            // jwks"); keys it cannot use beside usable ones are skipped, as Envoy skips them.
            Ok(Jwks::parse(&text).map_err(|e| {
                ConfigError::bad_value(
                    "local_jwks",
                    e,
                    "a key set with at least one usable key (Envoy: invalid local jwks)",
                )
            })?)
        }
        Some(jwt_pb::jwt_provider::JwksSourceSpecifier::RemoteJwks(_)) => {
            return Err(ConfigError::unsupported_value(
                "remote_jwks",
                "(the control plane inlines key sets as local_jwks)",
            ));
        }
        None => return Err(ConfigError::missing("local_jwks")),
    };
    let mut claim_to_headers = Vec::new();
    for (i, c) in p.claim_to_headers.iter().enumerate() {
        refuse_if(!c.claim_path.is_empty(), "claim_path")
            .index(i)
            .under("claim_to_headers")?;
        claim_to_headers.push((c.header_name.to_ascii_lowercase(), c.claim_name.clone()));
    }
    Ok(Provider {
        issuer: p.issuer.clone(),
        audiences: p.audiences.clone(),
        require_expiration: p.require_expiration,
        clock_skew_seconds: if p.clock_skew_seconds == 0 {
            60
        } else {
            u64::from(p.clock_skew_seconds)
        },
        forward: p.forward,
        from_headers: p
            .from_headers
            .iter()
            .map(|h| (h.name.to_ascii_lowercase(), h.value_prefix.clone()))
            .collect(),
        from_params: p.from_params.clone(),
        from_cookies: p.from_cookies.clone(),
        forward_payload_header: (!p.forward_payload_header.is_empty())
            .then(|| p.forward_payload_header.to_ascii_lowercase()),
        payload_in_metadata: (!p.payload_in_metadata.is_empty())
            .then(|| p.payload_in_metadata.clone()),
        space_delimited_claims: p
            .normalize_payload_in_metadata
            .as_ref()
            .map(|n| n.space_delimited_claims.clone())
            .unwrap_or_default(),
        claim_to_headers,
        keys,
    })
}

fn inline(ds: &DataSource) -> Result<String> {
    match &ds.specifier {
        Some(data_source::Specifier::InlineString(s)) => Ok(s.clone()),
        Some(data_source::Specifier::InlineBytes(b)) => Ok(String::from_utf8_lossy(b).into_owned()),
        Some(_) => Err(ConfigError::unsupported_value(
            "specifier",
            "other than inline_string or inline_bytes",
        )),
        None => Err(ConfigError::missing("inline_string")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attributes::{Connection, HttpRequest, Input};
    use envoy_types::pb::envoy::r#type::matcher::v3::RegexMatcher;
    use prost::Message;

    fn any<M: Message>(type_url: &str, m: &M) -> Any {
        Any {
            type_url: type_url.to_string(),
            value: m.encode_to_vec(),
        }
    }

    fn exact(s: &str) -> StringMatcher {
        StringMatcher {
            match_pattern: Some(string_matcher::MatchPattern::Exact(s.to_string())),
            ignore_case: false,
        }
    }

    fn or_perm(rules: Vec<pb::Permission>) -> pb::Permission {
        pb::Permission {
            rule: Some(pb::permission::Rule::OrRules(pb::permission::Set { rules })),
        }
    }

    fn method(m: &str) -> pb::Permission {
        pb::Permission {
            rule: Some(pb::permission::Rule::Header(HeaderMatcher {
                name: ":method".into(),
                header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(
                    exact(m),
                )),
                ..Default::default()
            })),
        }
    }

    fn authenticated(m: StringMatcher) -> pb::Principal {
        pb::Principal {
            identifier: Some(pb::principal::Identifier::Authenticated(
                pb::principal::Authenticated {
                    principal_name: Some(m),
                },
            )),
        }
    }

    /// What Istio generates for a `namespaces: [default]` source and a GET operation.
    fn viewer_rules(action: pb::rbac::Action) -> pb::Rbac {
        let regex = StringMatcher {
            match_pattern: Some(string_matcher::MatchPattern::SafeRegex(RegexMatcher {
                regex: ".*/ns/default/.*".into(),
                ..Default::default()
            })),
            ignore_case: false,
        };
        let mut policies = std::collections::HashMap::new();
        policies.insert(
            "ns[default]-policy[viewer]-rule[0]".to_string(),
            pb::Policy {
                permissions: vec![pb::Permission {
                    rule: Some(pb::permission::Rule::AndRules(pb::permission::Set {
                        rules: vec![or_perm(vec![method("GET")])],
                    })),
                }],
                principals: vec![pb::Principal {
                    identifier: Some(pb::principal::Identifier::AndIds(pb::principal::Set {
                        ids: vec![pb::Principal {
                            identifier: Some(pb::principal::Identifier::OrIds(
                                pb::principal::Set {
                                    ids: vec![authenticated(regex)],
                                },
                            )),
                        }],
                    })),
                }],
                ..Default::default()
            },
        );
        pb::Rbac {
            action: action as i32,
            policies,
            ..Default::default()
        }
    }

    fn conn(principal: Option<&str>) -> Connection {
        Connection {
            source: "10.44.0.5:41000".parse().unwrap(),
            destination: "10.44.0.9:9080".parse().unwrap(),
            peer_principal: principal.map(str::to_string),
            sni: None,
        }
    }

    fn http_decision(f: &RbacFilter, c: &Connection, m: &str) -> crate::Decision {
        let headers = http::HeaderMap::new();
        let req = HttpRequest {
            method: m,
            path: "/productpage",
            authority: "productpage:9080",
            scheme: "http",
            headers: &headers,
            remote_ip: c.source.ip(),
        };
        let md = crate::Metadata::new();
        f.decide(&Input {
            connection: c,
            request: Some(&req),
            metadata: &md,
        })
    }

    #[test]
    fn an_istio_shaped_http_rbac_filter_decides_by_namespace_and_method() {
        let f = http_rbac_filter(&any(
            HTTP_RBAC_TYPE,
            &HttpRbacPb {
                rules: Some(viewer_rules(pb::rbac::Action::Allow)),
                ..Default::default()
            },
        ))
        .unwrap();
        let default = conn(Some("spiffe://cluster.local/ns/default/sa/sleep"));
        let d = http_decision(&f, &default, "GET");
        assert!(d.allowed);
        assert_eq!(
            d.policy.as_deref(),
            Some("ns[default]-policy[viewer]-rule[0]")
        );
        assert!(!http_decision(&f, &default, "POST").allowed);
        let other = conn(Some("spiffe://cluster.local/ns/other/sa/sleep"));
        let d = http_decision(&f, &other, "GET");
        assert!(!d.allowed);
        assert_eq!(
            crate::denial_details(&d),
            "rbac_access_denied_matched_policy[none]"
        );
        let headers = http::HeaderMap::new();
        let req = HttpRequest {
            method: "GET",
            path: "/",
            authority: "productpage:9080",
            scheme: "http",
            headers: &headers,
            remote_ip: other.source.ip(),
        };
        let md = crate::Metadata::new();
        let why = f.explain_denial(
            &d,
            &Input {
                connection: &other,
                request: Some(&req),
                metadata: &md,
            },
        );
        assert_eq!(
            why,
            r#"no ALLOW policy matched (default/viewer rule 0: source.principal "spiffe://cluster.local/ns/other/sa/sleep" is not /.*/ns/default/.*/)"#
        );
        // No mutual TLS: no principal to match.
        assert!(!http_decision(&f, &conn(None), "GET").allowed);
    }

    #[test]
    fn a_network_filter_never_matches_http_attributes() {
        let f = network_rbac_filter(&any(
            NETWORK_RBAC_TYPE,
            &NetworkRbacPb {
                rules: Some(viewer_rules(pb::rbac::Action::Deny)),
                stat_prefix: "tcp.".into(),
                ..Default::default()
            },
        ))
        .unwrap();
        let c = conn(Some("spiffe://cluster.local/ns/default/sa/sleep"));
        let md = crate::Metadata::new();
        let d = f.decide(&Input {
            connection: &c,
            request: None,
            metadata: &md,
        });
        // The method cannot match on a TCP connection, so the DENY policy does not apply.
        assert!(d.allowed);
        assert_eq!(d.action, Some(Action::Deny));
    }

    #[test]
    fn the_shadow_result_is_recorded_as_envoy_records_it() {
        let f = http_rbac_filter(&any(
            HTTP_RBAC_TYPE,
            &HttpRbacPb {
                shadow_rules: Some(viewer_rules(pb::rbac::Action::Allow)),
                shadow_rules_stat_prefix: "istio_dry_run_allow_".into(),
                ..Default::default()
            },
        ))
        .unwrap();
        let c = conn(Some("spiffe://cluster.local/ns/default/sa/sleep"));
        let d = http_decision(&f, &c, "POST");
        assert!(d.allowed, "shadow rules never refuse");
        let mut md = crate::Metadata::new();
        f.record(&d, &mut md, crate::filter::HTTP_RBAC_NAMESPACE);
        assert_eq!(
            md[crate::filter::HTTP_RBAC_NAMESPACE],
            serde_json::json!({"istio_dry_run_allow_shadow_engine_result": "denied"})
        );
    }

    #[test]
    fn refusals_name_the_field_path() {
        let mut rules = viewer_rules(pb::rbac::Action::Allow);
        let policy = rules.policies.values_mut().next().unwrap();
        policy.permissions.push(pb::Permission {
            rule: Some(pb::permission::Rule::DestinationPort(70000)),
        });
        let err = http_rbac_filter(&any(
            HTTP_RBAC_TYPE,
            &HttpRbacPb {
                rules: Some(rules),
                ..Default::default()
            },
        ))
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"rules.policies["ns[default]-policy[viewer]-rule[0]"].permissions[1].destination_port 70000 is not a port"#
        );
        let err = http_rbac_filter(&any(NETWORK_RBAC_TYPE, &NetworkRbacPb::default())).unwrap_err();
        assert!(err.to_string().starts_with("has type"), "{err}");
        let mut empty = viewer_rules(pb::rbac::Action::Allow);
        empty
            .policies
            .values_mut()
            .next()
            .unwrap()
            .principals
            .clear();
        let err = http_rbac_filter(&any(
            HTTP_RBAC_TYPE,
            &HttpRbacPb {
                rules: Some(empty),
                ..Default::default()
            },
        ))
        .unwrap_err();
        assert!(err.to_string().ends_with("principals is missing"), "{err}");
    }

    #[test]
    fn uri_templates_compile_from_their_extension() {
        let t = UriTemplateMatchConfig {
            path_template: "/api/*/items/**".into(),
        };
        let p = permission(&pb::Permission {
            rule: Some(pb::permission::Rule::UriTemplate(
                envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig {
                    name: "uri-template".into(),
                    typed_config: Some(any(URI_TEMPLATE_TYPE, &t)),
                },
            )),
        })
        .unwrap();
        let Permission::UriTemplate(t) = p else {
            panic!("{p:?}")
        };
        assert!(t.matches("/api/v1/items/a/b"));
        assert!(!t.matches("/api/v1/v2/items/a"));
    }

    #[test]
    fn a_local_key_set_without_a_usable_key_is_refused_as_envoy_refuses_it() {
        use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source};
        let with = |jwks: &str| {
            let f = jwt_pb::JwtAuthentication {
                providers: [(
                    "p".to_string(),
                    jwt_pb::JwtProvider {
                        issuer: "a".into(),
                        jwks_source_specifier: Some(
                            jwt_pb::jwt_provider::JwksSourceSpecifier::LocalJwks(DataSource {
                                specifier: Some(data_source::Specifier::InlineString(jwks.into())),
                                ..Default::default()
                            }),
                        ),
                        ..Default::default()
                    },
                )]
                .into(),
                ..Default::default()
            };
            jwt_authn(&any(JWT_AUTHN_TYPE, &f))
        };
        let err = with(r#"{"keys":[]}"#).unwrap_err().to_string();
        assert!(
            err.contains("providers[\"p\"].local_jwks") || err.contains("local_jwks"),
            "{err}"
        );
        // A key it cannot use beside one it can: skipped (Envoy accepts such a set too).
        let ok = with(
            r#"{"keys":[{"kty":"XYZ"},{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#,
        )
        .unwrap();
        assert_eq!(ok.providers["p"].keys.as_ref().map(|k| k.keys.len()), Ok(1));
    }
}
