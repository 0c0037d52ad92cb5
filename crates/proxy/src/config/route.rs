//! Route configurations: virtual hosts, routes, their matches and actions, converted from
//! `envoy.config.route.v3.RouteConfiguration`. Fields strait-proxy cannot honour are refused
//! with their path (`virtual_hosts[reviews].routes[0].match.grpc ...`); fields it ignores are
//! listed in docs/xds-support.md.

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{HeaderValueOption, data_source};
use envoy_types::pb::envoy::config::route::v3 as pb;
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{HttpFault, fault_abort};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, fractional_percent};
use hyper::header::{HeaderName, HeaderValue};
use serde::{Serialize, Serializer};

use super::listener::decode;
use super::{Invalid, unsupported};

const FAULT: &str = "envoy.filters.http.fault";
const FAULT_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";
/// Envoy's route timeout when a route sets none.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

/// A compiled regular expression, compared and shown by its source.
#[derive(Debug, Clone)]
pub struct Pattern(pub regex::Regex);

impl PartialEq for Pattern {
    fn eq(&self, other: &Pattern) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl Serialize for Pattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.as_str())
    }
}

impl Pattern {
    /// Envoy's safe_regex matches the whole input: anchor it.
    fn whole(source: &str, field: &str) -> Result<Pattern, String> {
        regex::Regex::new(&format!("^(?:{source})$"))
            .map(Pattern)
            .map_err(|e| format!("{field} {source:?} is not a valid regex: {e}"))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteConfig {
    pub name: String,
    pub virtual_hosts: Vec<VirtualHost>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VirtualHost {
    pub name: String,
    /// Lowercased; `*`, `*.suffix` and `prefix.*` wildcards as Envoy has them.
    pub domains: Vec<String>,
    pub routes: Vec<Route>,
    /// Send upstream the attempt's number in `x-envoy-attempt-count`
    /// (`include_request_attempt_count`; Istio sets it).
    pub include_attempt_count: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Route {
    pub name: String,
    #[serde(rename = "match")]
    pub matcher: RouteMatch,
    pub action: Action,
    /// The route's `envoy.filters.http.fault` config.
    pub fault: Option<Fault>,
    pub request_headers: HeaderMutation,
    pub response_headers: HeaderMutation,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteMatch {
    pub path: PathMatch,
    pub case_sensitive: bool,
    pub headers: Vec<HeaderMatch>,
    pub query: Vec<QueryMatch>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum PathMatch {
    Prefix(String),
    Exact(String),
    /// Matches the whole path (without the query).
    Regex(Pattern),
    /// A prefix that ends at a `/` boundary.
    SeparatedPrefix(String),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    Regex(Pattern),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HeaderMatch {
    pub name: String,
    /// `None`: the header must be present (or absent, inverted).
    pub value: Option<StringMatch>,
    pub ignore_case: bool,
    pub invert: bool,
    /// `present_match: false`: the header must be absent.
    pub present: bool,
    pub treat_missing_as_empty: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueryMatch {
    pub name: String,
    /// `None`: the parameter must be present.
    pub value: Option<StringMatch>,
    pub ignore_case: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Action {
    Forward(Box<Forward>),
    Redirect(Redirect),
    Direct { status: u16, body: String },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Forward {
    pub target: Target,
    /// `None`: no timeout (a route's `timeout: 0s`).
    #[serde(serialize_with = "super::secs::option")]
    pub timeout: Option<Duration>,
    /// `max_stream_duration.max_stream_duration`: the longest a request may take from its start
    /// (Istio sets it to the route's timeout); `None`: no limit.
    #[serde(serialize_with = "super::secs::option")]
    pub max_stream_duration: Option<Duration>,
    pub retry: Option<RetryPolicy>,
    pub prefix_rewrite: Option<String>,
    pub regex_rewrite: Option<(Pattern, String)>,
    pub host_rewrite: Option<String>,
    /// 503 (Envoy's default) or 404 when the cluster does not exist.
    pub cluster_not_found_status: u16,
    /// `request_mirror_policies`: copies sent fire and forget.
    pub mirrors: Vec<Mirror>,
    /// `hash_policy`: the key of consistent-hash balancers (RING_HASH, MAGLEV).
    pub hash_policy: Vec<HashPolicy>,
}

/// One `hash_policy` entry: what to hash, and whether a hash from it ends the list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HashPolicy {
    pub key: HashKey,
    pub terminal: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum HashKey {
    /// A request header's value (lower-case name).
    Header(String),
    /// A cookie's value (strait-proxy does not generate the cookie when it is missing).
    Cookie(String),
    /// The downstream connection's source IP.
    SourceIp,
    /// A query parameter's value.
    QueryParameter(String),
}

/// A request mirror policy: a copy of the request goes to `cluster` (its `Host` with
/// `-shadow` appended unless `shadow_suffix` is off), for a share of requests.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Mirror {
    pub cluster: String,
    /// Parts per million of requests that are mirrored.
    pub per_million: u32,
    pub shadow_suffix: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Target {
    #[serde(rename = "cluster")]
    Cluster(String),
    #[serde(rename = "weighted_clusters")]
    Weighted(Vec<WeightedCluster>),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WeightedCluster {
    pub name: String,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetryPolicy {
    pub num_retries: u32,
    #[serde(serialize_with = "super::secs::option")]
    pub per_try_timeout: Option<Duration>,
    /// Envoy's `retry_on` conditions, as written (validated).
    pub retry_on: Vec<String>,
    pub retriable_status_codes: Vec<u16>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub path: Option<String>,
    pub status: u16,
    pub strip_query: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fault {
    /// The delay and the share of requests (per million) it applies to.
    #[serde(serialize_with = "ser_delay")]
    pub delay: Option<(Duration, u32)>,
    /// The status to abort with and the share of requests (per million).
    pub abort: Option<(u16, u32)>,
    /// The fault applies only to requests that match all of these.
    pub headers: Vec<HeaderMatch>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HeaderMutation {
    /// Name, value, and whether to append (else overwrite).
    #[serde(serialize_with = "ser_headers")]
    pub add: Vec<(HeaderName, HeaderValue, bool)>,
    #[serde(serialize_with = "ser_names")]
    pub remove: Vec<HeaderName>,
}

fn ser_headers<S: Serializer>(
    v: &[(HeaderName, HeaderValue, bool)],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_seq(
        v.iter()
            .map(|(n, val, append)| (n.as_str(), val.to_str().unwrap_or("?"), append)),
    )
}

fn ser_delay<S: Serializer>(d: &Option<(Duration, u32)>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some((d, share)) => (super::secs::text(d), share).serialize(s),
        None => s.serialize_none(),
    }
}

fn ser_names<S: Serializer>(v: &[HeaderName], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|n| n.as_str()))
}

impl TryFrom<&pb::RouteConfiguration> for RouteConfig {
    type Error = Invalid;

    fn try_from(rc: &pb::RouteConfiguration) -> Result<RouteConfig, Invalid> {
        let bad = |reason: String| Invalid::new("route configuration", &rc.name, reason);
        if rc.vhds.is_some() {
            return Err(bad(unsupported("vhds")));
        }
        let header_fields = !rc.request_headers_to_add.is_empty()
            || !rc.request_headers_to_remove.is_empty()
            || !rc.response_headers_to_add.is_empty()
            || !rc.response_headers_to_remove.is_empty()
            || !rc.internal_only_headers.is_empty();
        if header_fields {
            return Err(bad(unsupported(
                "route-configuration-level header mutation",
            )));
        }
        if !rc.request_mirror_policies.is_empty() {
            return Err(bad(unsupported("request_mirror_policies")));
        }
        if !rc.typed_per_filter_config.is_empty() {
            return Err(bad(unsupported("typed_per_filter_config")));
        }
        let virtual_hosts = rc
            .virtual_hosts
            .iter()
            .map(|vh| virtual_host(vh).map_err(|e| format!("virtual_hosts[{}]: {e}", vh.name)))
            .collect::<Result<_, _>>()
            .map_err(bad)?;
        Ok(RouteConfig {
            name: rc.name.clone(),
            virtual_hosts,
        })
    }
}

fn virtual_host(vh: &pb::VirtualHost) -> Result<VirtualHost, String> {
    let refuse = |cond: bool, field: &str| {
        if cond {
            Err(unsupported(field))
        } else {
            Ok(())
        }
    };
    refuse(vh.require_tls != 0, "require_tls")?;
    refuse(vh.matcher.is_some(), "matcher")?;
    refuse(!vh.rate_limits.is_empty(), "rate_limits")?;
    refuse(
        vh.retry_policy.is_some() || vh.retry_policy_typed_config.is_some(),
        "retry_policy",
    )?;
    refuse(vh.hedge_policy.is_some(), "hedge_policy")?;
    refuse(
        !vh.typed_per_filter_config.is_empty(),
        "typed_per_filter_config",
    )?;
    refuse(
        !vh.request_mirror_policies.is_empty(),
        "request_mirror_policies",
    )?;
    #[allow(deprecated)]
    refuse(vh.cors.is_some(), "cors")?;
    refuse(
        !vh.request_headers_to_add.is_empty()
            || !vh.request_headers_to_remove.is_empty()
            || !vh.response_headers_to_add.is_empty()
            || !vh.response_headers_to_remove.is_empty(),
        "virtual-host-level header mutation",
    )?;
    let routes = vh
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| route(r).map_err(|e| format!("routes[{i}]: {e}")))
        .collect::<Result<_, _>>()?;
    Ok(VirtualHost {
        name: vh.name.clone(),
        domains: vh.domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
        routes,
        include_attempt_count: vh.include_request_attempt_count,
    })
}

fn route(r: &pb::Route) -> Result<Route, String> {
    let matcher = route_match(r.r#match.as_ref().ok_or("has no match")?)
        .map_err(|e| format!("match: {e}"))?;
    let action = match &r.action {
        Some(pb::route::Action::Route(ra)) => {
            Action::Forward(Box::new(forward(ra).map_err(|e| format!("route: {e}"))?))
        }
        Some(pb::route::Action::Redirect(rd)) => {
            Action::Redirect(redirect(rd).map_err(|e| format!("redirect: {e}"))?)
        }
        Some(pb::route::Action::DirectResponse(d)) => direct(d)?,
        Some(_) => return Err(unsupported("action (filter_action, non_forwarding_action)")),
        None => return Err("has no action".to_string()),
    };
    let mut fault = None;
    for (key, any) in &r.typed_per_filter_config {
        if key != FAULT {
            return Err(unsupported(&format!("typed_per_filter_config[{key:?}]")));
        }
        let f: HttpFault = decode(
            any,
            FAULT_TYPE,
            &format!("typed_per_filter_config[{key:?}]"),
        )?;
        fault =
            Some(fault_config(&f).map_err(|e| format!("typed_per_filter_config[{key:?}].{e}"))?);
    }
    Ok(Route {
        name: r.name.clone(),
        matcher,
        action,
        fault,
        request_headers: mutation(&r.request_headers_to_add, &r.request_headers_to_remove)
            .map_err(|e| format!("request_headers_to_add: {e}"))?,
        response_headers: mutation(&r.response_headers_to_add, &r.response_headers_to_remove)
            .map_err(|e| format!("response_headers_to_add: {e}"))?,
    })
}

fn route_match(m: &pb::RouteMatch) -> Result<RouteMatch, String> {
    use pb::route_match::PathSpecifier as P;
    if m.runtime_fraction.is_some() {
        return Err(unsupported("runtime_fraction"));
    }
    if m.grpc.is_some() || m.tls_context.is_some() {
        return Err(unsupported("grpc/tls_context"));
    }
    if !m.cookies.is_empty() || !m.dynamic_metadata.is_empty() || !m.filter_state.is_empty() {
        return Err(unsupported("cookies/dynamic_metadata/filter_state"));
    }
    let path = match &m.path_specifier {
        Some(P::Prefix(p)) => PathMatch::Prefix(p.clone()),
        Some(P::Path(p)) => PathMatch::Exact(p.clone()),
        Some(P::SafeRegex(r)) => PathMatch::Regex(Pattern::whole(&r.regex, "safe_regex")?),
        Some(P::PathSeparatedPrefix(p)) => PathMatch::SeparatedPrefix(p.clone()),
        Some(_) => {
            return Err(unsupported(
                "path_specifier (connect_matcher, path_match_policy)",
            ));
        }
        None => return Err("has no path_specifier".to_string()),
    };
    let headers = m
        .headers
        .iter()
        .map(header_match)
        .collect::<Result<_, _>>()?;
    let query = m
        .query_parameters
        .iter()
        .map(|q| {
            use pb::query_parameter_matcher::QueryParameterMatchSpecifier as Q;
            Ok(match &q.query_parameter_match_specifier {
                Some(Q::StringMatch(s)) => QueryMatch {
                    name: q.name.clone(),
                    value: Some(string_match(s, "query_parameters.string_match")?),
                    ignore_case: s.ignore_case,
                },
                Some(Q::PresentMatch(_)) | None => QueryMatch {
                    name: q.name.clone(),
                    value: None,
                    ignore_case: false,
                },
            })
        })
        .collect::<Result<_, String>>()?;
    Ok(RouteMatch {
        path,
        case_sensitive: m.case_sensitive.as_ref().is_none_or(|b| b.value),
        headers,
        query,
    })
}

fn string_match(s: &StringMatcher, field: &str) -> Result<StringMatch, String> {
    use string_matcher::MatchPattern as M;
    Ok(match &s.match_pattern {
        Some(M::Exact(v)) => StringMatch::Exact(v.clone()),
        Some(M::Prefix(v)) => StringMatch::Prefix(v.clone()),
        Some(M::Suffix(v)) => StringMatch::Suffix(v.clone()),
        Some(M::Contains(v)) => StringMatch::Contains(v.clone()),
        Some(M::SafeRegex(r)) => StringMatch::Regex(Pattern::whole(&r.regex, field)?),
        Some(M::Custom(_)) => return Err(unsupported(&format!("{field}.custom"))),
        None => return Err(format!("{field} has no pattern")),
    })
}

pub(crate) fn header_match(h: &pb::HeaderMatcher) -> Result<HeaderMatch, String> {
    use pb::header_matcher::HeaderMatchSpecifier as H;
    let field = format!("headers[{:?}]", h.name);
    let mut m = HeaderMatch {
        name: h.name.to_ascii_lowercase(),
        value: None,
        ignore_case: false,
        invert: h.invert_match,
        present: true,
        treat_missing_as_empty: h.treat_missing_header_as_empty,
    };
    #[allow(deprecated)]
    match &h.header_match_specifier {
        Some(H::StringMatch(s)) => {
            m.value = Some(string_match(s, &field)?);
            m.ignore_case = s.ignore_case;
        }
        Some(H::ExactMatch(v)) => m.value = Some(StringMatch::Exact(v.clone())),
        Some(H::PrefixMatch(v)) => m.value = Some(StringMatch::Prefix(v.clone())),
        Some(H::SuffixMatch(v)) => m.value = Some(StringMatch::Suffix(v.clone())),
        Some(H::ContainsMatch(v)) => m.value = Some(StringMatch::Contains(v.clone())),
        Some(H::SafeRegexMatch(r)) => {
            m.value = Some(StringMatch::Regex(Pattern::whole(&r.regex, &field)?))
        }
        Some(H::PresentMatch(present)) => m.present = *present,
        Some(H::RangeMatch(_)) => return Err(unsupported(&format!("{field}.range_match"))),
        None => {}
    }
    Ok(m)
}

fn duration(d: &envoy_types::pb::google::protobuf::Duration) -> Duration {
    Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32)
}

/// Retry conditions strait-proxy implements (see `http::retry`).
pub(crate) const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "connect-failure",
    "refused-stream",
    "retriable-4xx",
    "retriable-status-codes",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

fn forward(ra: &pb::RouteAction) -> Result<Forward, String> {
    use pb::route_action::{ClusterSpecifier as C, HostRewriteSpecifier as H};
    let refuse = |cond: bool, field: &str| {
        if cond {
            Err(unsupported(field))
        } else {
            Ok(())
        }
    };
    refuse(!ra.rate_limits.is_empty(), "rate_limits")?;
    refuse(ra.hedge_policy.is_some(), "hedge_policy")?;
    refuse(
        ra.retry_policy_typed_config.is_some(),
        "retry_policy_typed_config",
    )?;
    refuse(ra.path_rewrite_policy.is_some(), "path_rewrite_policy")?;
    refuse(!ra.path_rewrite.is_empty(), "path_rewrite")?;
    refuse(ra.metadata_match.is_some(), "metadata_match")?;
    #[allow(deprecated)]
    refuse(ra.cors.is_some(), "cors")?;
    let target = match &ra.cluster_specifier {
        Some(C::Cluster(name)) => Target::Cluster(name.clone()),
        Some(C::WeightedClusters(w)) => {
            let clusters: Vec<WeightedCluster> = w
                .clusters
                .iter()
                .map(|c| {
                    let extra = !c.cluster_header.is_empty()
                        || !c.typed_per_filter_config.is_empty()
                        || c.host_rewrite_specifier.is_some()
                        || !c.request_headers_to_add.is_empty()
                        || !c.request_headers_to_remove.is_empty()
                        || !c.response_headers_to_add.is_empty()
                        || !c.response_headers_to_remove.is_empty();
                    if extra {
                        return Err(unsupported(&format!(
                            "weighted_clusters[{:?}] header mutation, host rewrite or per-filter config",
                            c.name
                        )));
                    }
                    Ok(WeightedCluster {
                        name: c.name.clone(),
                        weight: c.weight.as_ref().map_or(0, |w| w.value),
                    })
                })
                .collect::<Result<_, String>>()?;
            if clusters.iter().all(|c| c.weight == 0) {
                return Err("weighted_clusters has no cluster with a weight above 0".to_string());
            }
            Target::Weighted(clusters)
        }
        Some(_) => return Err(unsupported("cluster_header / cluster_specifier_plugin")),
        None => return Err("has no cluster".to_string()),
    };
    let retry = match &ra.retry_policy {
        None => None,
        Some(p) => {
            let retry_on: Vec<String> = p
                .retry_on
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            if let Some(c) = retry_on.iter().find(|c| !RETRY_ON.contains(&c.as_str())) {
                return Err(unsupported(&format!("retry_policy.retry_on {c:?}")));
            }
            refuse(
                !p.retriable_headers.is_empty(),
                "retry_policy.retriable_headers",
            )?;
            refuse(
                !p.retriable_request_headers.is_empty(),
                "retry_policy.retriable_request_headers",
            )?;
            Some(RetryPolicy {
                num_retries: p.num_retries.as_ref().map_or(1, |n| n.value),
                per_try_timeout: p
                    .per_try_timeout
                    .as_ref()
                    .map(duration)
                    .filter(|d| !d.is_zero()),
                retry_on,
                retriable_status_codes: p
                    .retriable_status_codes
                    .iter()
                    .map(|c| u16::try_from(*c).unwrap_or(0))
                    .collect(),
            })
        }
    };
    let host_rewrite = match &ra.host_rewrite_specifier {
        Some(H::HostRewriteLiteral(h)) => Some(h.clone()),
        Some(_) => {
            return Err(unsupported(
                "host_rewrite_specifier other than host_rewrite_literal",
            ));
        }
        None => None,
    };
    let regex_rewrite = match &ra.regex_rewrite {
        Some(r) => {
            let source = r.pattern.as_ref().map_or("", |p| p.regex.as_str());
            let re = regex::Regex::new(source)
                .map_err(|e| format!("regex_rewrite.pattern {source:?}: {e}"))?;
            Some((Pattern(re), envoy_substitution(&r.substitution)))
        }
        None => None,
    };
    let mirrors = ra
        .request_mirror_policies
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let field = format!("request_mirror_policies[{i}]");
            if m.cluster.is_empty() {
                return Err(unsupported(&format!(
                    "{field} without a cluster (cluster_header)"
                )));
            }
            if !m.request_headers_mutations.is_empty() || !m.host_rewrite_literal.is_empty() {
                return Err(unsupported(&format!(
                    "{field}.request_headers_mutations / host_rewrite_literal"
                )));
            }
            Ok(Mirror {
                cluster: m.cluster.clone(),
                per_million: per_million(
                    m.runtime_fraction
                        .as_ref()
                        .and_then(|f| f.default_value.as_ref()),
                ),
                shadow_suffix: !m.disable_shadow_host_suffix_append,
            })
        })
        .collect::<Result<_, String>>()?;
    let hash_policy = ra
        .hash_policy
        .iter()
        .enumerate()
        .map(|(i, h)| {
            use pb::route_action::hash_policy::PolicySpecifier as P;
            let key = match &h.policy_specifier {
                Some(P::Header(hd)) => {
                    if hd.regex_rewrite.is_some() {
                        return Err(unsupported(&format!(
                            "hash_policy[{i}].header.regex_rewrite"
                        )));
                    }
                    HashKey::Header(hd.header_name.to_ascii_lowercase())
                }
                Some(P::Cookie(c)) => HashKey::Cookie(c.name.clone()),
                Some(P::ConnectionProperties(cp)) if cp.source_ip => HashKey::SourceIp,
                Some(P::QueryParameter(q)) => HashKey::QueryParameter(q.name.clone()),
                Some(P::ConnectionProperties(_)) => {
                    return Err(format!(
                        "hash_policy[{i}].connection_properties hashes nothing (source_ip is false)"
                    ));
                }
                Some(P::FilterState(_)) => {
                    return Err(unsupported(&format!("hash_policy[{i}].filter_state")));
                }
                None => return Err(format!("hash_policy[{i}] has no policy")),
            };
            Ok(HashPolicy {
                key,
                terminal: h.terminal,
            })
        })
        .collect::<Result<_, String>>()?;
    Ok(Forward {
        target,
        mirrors,
        hash_policy,
        timeout: match &ra.timeout {
            None => Some(DEFAULT_TIMEOUT),
            Some(d) => Some(duration(d)).filter(|d| !d.is_zero()),
        },
        max_stream_duration: ra
            .max_stream_duration
            .as_ref()
            .and_then(|m| m.max_stream_duration.as_ref())
            .map(duration)
            .filter(|d| !d.is_zero()),
        retry,
        prefix_rewrite: Some(ra.prefix_rewrite.clone()).filter(|p| !p.is_empty()),
        regex_rewrite,
        host_rewrite,
        cluster_not_found_status: if ra.cluster_not_found_response_code == 1 {
            404
        } else {
            503
        },
    })
}

/// Envoy writes capture groups as `\1`; the regex crate as `${1}`.
fn envoy_substitution(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('\\', Some(d)) if d.is_ascii_digit() => {
                out.push_str(&format!("${{{d}}}"));
                chars.next();
            }
            ('$', _) => out.push_str("$$"),
            _ => out.push(c),
        }
    }
    out
}

fn redirect(rd: &pb::RedirectAction) -> Result<Redirect, String> {
    use pb::redirect_action::{PathRewriteSpecifier as P, SchemeRewriteSpecifier as S};
    let status = match rd.response_code {
        0 => 301,
        1 => 302,
        2 => 303,
        3 => 307,
        4 => 308,
        c => return Err(format!("response_code {c} is not a known redirect code")),
    };
    let path = match &rd.path_rewrite_specifier {
        Some(P::PathRedirect(p)) => Some(p.clone()),
        Some(P::PrefixRewrite(_)) => return Err(unsupported("prefix_rewrite")),
        Some(_) => return Err(unsupported("regex_rewrite")),
        None => None,
    };
    Ok(Redirect {
        scheme: match &rd.scheme_rewrite_specifier {
            Some(S::HttpsRedirect(true)) => Some("https".to_string()),
            Some(S::SchemeRedirect(s)) => Some(s.clone()),
            _ => None,
        },
        host: Some(rd.host_redirect.clone()).filter(|h| !h.is_empty()),
        port: u16::try_from(rd.port_redirect).ok().filter(|p| *p != 0),
        path,
        status,
        strip_query: rd.strip_query,
    })
}

fn direct(d: &pb::DirectResponseAction) -> Result<Action, String> {
    if d.body_format.is_some() {
        return Err(unsupported("direct_response.body_format"));
    }
    let body = match d.body.as_ref().and_then(|b| b.specifier.as_ref()) {
        None => String::new(),
        Some(data_source::Specifier::InlineString(s)) => s.clone(),
        Some(data_source::Specifier::InlineBytes(b)) => String::from_utf8_lossy(b).into_owned(),
        Some(_) => {
            return Err(unsupported(
                "direct_response.body from a file or environment",
            ));
        }
    };
    let status = u16::try_from(d.status)
        .ok()
        .filter(|s| (200..600).contains(s))
        .ok_or_else(|| format!("direct_response.status {} is not an HTTP status", d.status))?;
    Ok(Action::Direct { status, body })
}

/// A fraction as parts per million.
pub(crate) fn per_million(p: Option<&FractionalPercent>) -> u32 {
    let Some(p) = p else { return 1_000_000 };
    let scale = match fractional_percent::DenominatorType::try_from(p.denominator) {
        Ok(fractional_percent::DenominatorType::Hundred) => 10_000,
        Ok(fractional_percent::DenominatorType::TenThousand) => 100,
        _ => 1,
    };
    p.numerator.saturating_mul(scale).min(1_000_000)
}

fn fault_config(f: &HttpFault) -> Result<Fault, String> {
    if f.response_rate_limit.is_some() {
        return Err(unsupported("response_rate_limit"));
    }
    if !f.downstream_nodes.is_empty() || !f.upstream_cluster.is_empty() {
        return Err(unsupported("downstream_nodes/upstream_cluster"));
    }
    let delay = match &f.delay {
        None => None,
        Some(d) => match &d.fault_delay_secifier {
            Some(fault_delay::FaultDelaySecifier::FixedDelay(t)) => {
                Some((duration(t), per_million(d.percentage.as_ref())))
            }
            _ => return Err(unsupported("delay.header_delay")),
        },
    };
    let abort = match &f.abort {
        None => None,
        Some(a) => match &a.error_type {
            Some(fault_abort::ErrorType::HttpStatus(s)) => {
                let s = u16::try_from(*s)
                    .ok()
                    .filter(|s| (200..600).contains(s))
                    .ok_or_else(|| format!("abort.http_status {s} is not an HTTP status"))?;
                Some((s, per_million(a.percentage.as_ref())))
            }
            _ => return Err(unsupported("abort.grpc_status/header_abort")),
        },
    };
    let headers = f
        .headers
        .iter()
        .map(header_match)
        .collect::<Result<_, _>>()?;
    Ok(Fault {
        delay,
        abort,
        headers,
    })
}

fn mutation(add: &[HeaderValueOption], remove: &[String]) -> Result<HeaderMutation, String> {
    let add = add
        .iter()
        .map(|h| {
            let hv = h.header.as_ref().ok_or("an entry has no header")?;
            let name = HeaderName::try_from(hv.key.as_str())
                .map_err(|_| format!("{:?} is not a header name", hv.key))?;
            let raw = if hv.raw_value.is_empty() {
                hv.value.as_bytes()
            } else {
                hv.raw_value.as_slice()
            };
            let value = HeaderValue::from_bytes(raw)
                .map_err(|_| format!("the value of {:?} is not a header value", hv.key))?;
            // append_action: 0 APPEND_IF_EXISTS_OR_ADD, 2 OVERWRITE_IF_EXISTS_OR_ADD; the
            // deprecated `append` wins when set.
            #[allow(deprecated)]
            let append = match (&h.append, h.append_action) {
                (Some(b), _) => b.value,
                (None, 0) => true,
                (None, 2) => false,
                (None, a) => {
                    return Err(unsupported(&format!(
                        "append_action {a} (ADD_IF_ABSENT, OVERWRITE_IF_EXISTS)"
                    )));
                }
            };
            Ok((name, value, append))
        })
        .collect::<Result<_, String>>()?;
    let remove = remove
        .iter()
        .map(|n| {
            HeaderName::try_from(n.as_str()).map_err(|_| format!("{n:?} is not a header name"))
        })
        .collect::<Result<_, _>>()?;
    Ok(HeaderMutation { add, remove })
}
