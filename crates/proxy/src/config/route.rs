//! Route configurations: virtual hosts, routes, their matches and actions, converted from
//! `envoy.config.route.v3.RouteConfiguration`. Fields strait-proxy cannot honour are refused
//! with their path (`virtual_hosts[reviews:9080].routes[0].match.grpc`, see [`super::invalid`]);
//! fields it ignores are listed in docs/xds-support.md. Each conversion below takes one field
//! group and adds its own path segments to what it refuses.

use std::sync::Arc;
use std::time::Duration;

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::{HeaderValueOption, data_source};
use envoy_types::pb::envoy::config::route::v3 as pb;
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{HttpFault, fault_abort};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use envoy_types::pb::google::protobuf::Any;
use hyper::header::{HeaderName, HeaderValue};
use serde::{Serialize, Serializer};

use super::cors::{CORS_TYPE, Cors};
use super::invalid::{At, Invalid, Kind, Refusal, refuse_if};
use super::proto::{decode, duration, per_million};
use super::ratelimit::{LOCAL_RATELIMIT, LocalRateLimit};

const FAULT: &str = "envoy.filters.http.fault";
const CORS: &str = "envoy.filters.http.cors";
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
    /// Envoy's safe_regex matches the whole input: anchor it. A refusal without a path: the
    /// caller names the field.
    fn whole(source: &str) -> Result<Pattern, Refusal> {
        regex::Regex::new(&format!("^(?:{source})$"))
            .map(Pattern)
            .map_err(|e| {
                Refusal::bad_value("", format!("{source:?}"), format!("a valid regex: {e}"))
            })
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
    /// `require_tls`: plain-text requests get a 301 to their https URL.
    #[serde(skip_serializing_if = "RequireTls::is_none")]
    pub require_tls: RequireTls,
}

/// Envoy's `VirtualHost.TlsRequirementType`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub enum RequireTls {
    #[default]
    None,
    /// Requests without `x-envoy-internal` (Envoy: those it does not consider internal).
    ExternalOnly,
    All,
}

impl RequireTls {
    pub fn is_none(&self) -> bool {
        *self == RequireTls::None
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Route {
    pub name: String,
    #[serde(rename = "match")]
    pub matcher: RouteMatch,
    pub action: Action,
    /// The route's `envoy.filters.http.fault` config.
    pub fault: Option<Fault>,
    /// The route's `envoy.filters.http.cors` policy.
    pub cors: Option<Cors>,
    /// The route's `envoy.filters.http.local_ratelimit` config (its own token bucket).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_ratelimit: Option<Arc<LocalRateLimit>>,
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
    /// The entry's own header mutations (Istio's per-destination `headers`), applied before
    /// the route's, as Envoy applies them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Option<Box<EntryHeaders>>,
}

/// Request and response header mutations of one weighted cluster.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EntryHeaders {
    pub request: HeaderMutation,
    pub response: HeaderMutation,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetryPolicy {
    pub num_retries: u32,
    #[serde(serialize_with = "super::secs::option")]
    pub per_try_timeout: Option<Duration>,
    /// Envoy's `retry_on` conditions, as written (validated).
    pub retry_on: Vec<String>,
    pub retriable_status_codes: Vec<u16>,
    /// `retriable-headers`: a response matching any of these is retried.
    pub retriable_headers: Vec<HeaderMatch>,
    /// A request is retried only if it matches one of these (empty: any request).
    pub retriable_request_headers: Vec<HeaderMatch>,
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
    /// The status to abort with and the share of requests (per million). An abort with a gRPC
    /// status answers 200, as Envoy's does ([`Fault::grpc_status`]).
    pub abort: Option<(u16, u32)>,
    /// The abort's gRPC status (`abort.grpc_status`): a gRPC request gets a trailers-only
    /// response with it; any other request the abort's plain 200.
    pub grpc_status: Option<u32>,
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

impl HeaderMutation {
    /// Removes, then adds (appending or overwriting), as Envoy applies a level's mutations.
    pub fn apply(&self, headers: &mut hyper::HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value, append) in &self.add {
            if *append {
                headers.append(name, value.clone());
            } else {
                headers.insert(name, value.clone());
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }
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
        route_config(rc).map_err(|r| r.of(Kind::RouteConfiguration, &rc.name))
    }
}

pub(crate) fn route_config(rc: &pb::RouteConfiguration) -> Result<RouteConfig, Refusal> {
    refuse_if(rc.vhds.is_some(), "vhds")?;
    refuse_if(
        !rc.request_headers_to_add.is_empty(),
        "request_headers_to_add",
    )?;
    refuse_if(
        !rc.request_headers_to_remove.is_empty(),
        "request_headers_to_remove",
    )?;
    refuse_if(
        !rc.response_headers_to_add.is_empty(),
        "response_headers_to_add",
    )?;
    refuse_if(
        !rc.response_headers_to_remove.is_empty(),
        "response_headers_to_remove",
    )?;
    refuse_if(
        !rc.internal_only_headers.is_empty(),
        "internal_only_headers",
    )?;
    refuse_if(
        !rc.request_mirror_policies.is_empty(),
        "request_mirror_policies",
    )?;
    refuse_if(
        !rc.typed_per_filter_config.is_empty(),
        "typed_per_filter_config",
    )?;
    let virtual_hosts = rc
        .virtual_hosts
        .iter()
        .enumerate()
        .map(|(i, vh)| {
            let converted = virtual_host(vh);
            // Virtual hosts are named in the path by their name, which the operator knows.
            if vh.name.is_empty() {
                converted.index(i)
            } else {
                converted.named(&vh.name)
            }
        })
        .collect::<Result<_, _>>()
        .under("virtual_hosts")?;
    Ok(RouteConfig {
        name: rc.name.clone(),
        virtual_hosts,
    })
}

fn virtual_host(vh: &pb::VirtualHost) -> Result<VirtualHost, Refusal> {
    let require_tls = match pb::virtual_host::TlsRequirementType::try_from(vh.require_tls) {
        Ok(pb::virtual_host::TlsRequirementType::None) => RequireTls::None,
        Ok(pb::virtual_host::TlsRequirementType::ExternalOnly) => RequireTls::ExternalOnly,
        Ok(pb::virtual_host::TlsRequirementType::All) => RequireTls::All,
        Err(_) => {
            return Err(Refusal::bad_value(
                "require_tls",
                vh.require_tls,
                "NONE, EXTERNAL_ONLY or ALL",
            ));
        }
    };
    refuse_if(vh.matcher.is_some(), "matcher")?;
    refuse_if(!vh.rate_limits.is_empty(), "rate_limits")?;
    refuse_if(vh.retry_policy.is_some(), "retry_policy")?;
    refuse_if(
        vh.retry_policy_typed_config.is_some(),
        "retry_policy_typed_config",
    )?;
    refuse_if(vh.hedge_policy.is_some(), "hedge_policy")?;
    refuse_if(
        !vh.typed_per_filter_config.is_empty(),
        "typed_per_filter_config",
    )?;
    refuse_if(
        !vh.request_mirror_policies.is_empty(),
        "request_mirror_policies",
    )?;
    #[allow(deprecated)]
    refuse_if(vh.cors.is_some(), "cors")?;
    refuse_if(
        !vh.request_headers_to_add.is_empty(),
        "request_headers_to_add",
    )?;
    refuse_if(
        !vh.request_headers_to_remove.is_empty(),
        "request_headers_to_remove",
    )?;
    refuse_if(
        !vh.response_headers_to_add.is_empty(),
        "response_headers_to_add",
    )?;
    refuse_if(
        !vh.response_headers_to_remove.is_empty(),
        "response_headers_to_remove",
    )?;
    let routes = vh
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| route(r).index(i))
        .collect::<Result<_, _>>()
        .under("routes")?;
    Ok(VirtualHost {
        name: vh.name.clone(),
        domains: vh.domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
        routes,
        include_attempt_count: vh.include_request_attempt_count,
        require_tls,
    })
}

fn route(r: &pb::Route) -> Result<Route, Refusal> {
    let matcher = route_match(
        r.r#match
            .as_ref()
            .ok_or_else(|| Refusal::missing("match"))?,
    )
    .under("match")?;
    let action = match &r.action {
        Some(pb::route::Action::Route(ra)) => {
            Action::Forward(Box::new(forward(ra).under("route")?))
        }
        Some(pb::route::Action::Redirect(rd)) => Action::Redirect(redirect(rd).under("redirect")?),
        Some(pb::route::Action::DirectResponse(d)) => direct(d).under("direct_response")?,
        Some(pb::route::Action::FilterAction(_)) => {
            return Err(Refusal::unsupported("filter_action"));
        }
        Some(pb::route::Action::NonForwardingAction(_)) => {
            return Err(Refusal::unsupported("non_forwarding_action"));
        }
        None => return Err(Refusal::missing("action")),
    };
    let (fault, cors, local_ratelimit) = per_filter_config(&r.typed_per_filter_config)?;
    Ok(Route {
        name: r.name.clone(),
        matcher,
        action,
        fault,
        cors,
        local_ratelimit,
        request_headers: mutation(
            &r.request_headers_to_add,
            "request_headers_to_add",
            &r.request_headers_to_remove,
            "request_headers_to_remove",
        )?,
        response_headers: mutation(
            &r.response_headers_to_add,
            "response_headers_to_add",
            &r.response_headers_to_remove,
            "response_headers_to_remove",
        )?,
    })
}

/// A route's `typed_per_filter_config`: the fault filter's, the CORS filter's and the
/// local_ratelimit filter's configs.
type PerFilter = (Option<Fault>, Option<Cors>, Option<Arc<LocalRateLimit>>);

fn per_filter_config(configs: &HashMap<String, Any>) -> Result<PerFilter, Refusal> {
    let (mut fault, mut cors, mut local_ratelimit) = (None, None, None);
    for (key, any) in configs {
        let under = |r: Refusal| {
            r.at(super::invalid::Segment::Key(key.clone()))
                .under("typed_per_filter_config")
        };
        match key.as_str() {
            FAULT => {
                let f: HttpFault = decode(any, FAULT_TYPE).map_err(under)?;
                fault = Some(fault_config(&f).map_err(under)?);
            }
            CORS => {
                let p = decode(any, CORS_TYPE).map_err(under)?;
                cors = Some(super::cors::policy(&p).map_err(under)?);
            }
            LOCAL_RATELIMIT => {
                local_ratelimit = Some(super::ratelimit::convert(any, true).map_err(under)?);
            }
            _ => return Err(under(Refusal::unsupported(""))),
        }
    }
    Ok((fault, cors, local_ratelimit))
}

fn route_match(m: &pb::RouteMatch) -> Result<RouteMatch, Refusal> {
    use pb::route_match::PathSpecifier as P;
    refuse_if(m.runtime_fraction.is_some(), "runtime_fraction")?;
    refuse_if(m.grpc.is_some(), "grpc")?;
    refuse_if(m.tls_context.is_some(), "tls_context")?;
    refuse_if(!m.cookies.is_empty(), "cookies")?;
    refuse_if(!m.dynamic_metadata.is_empty(), "dynamic_metadata")?;
    refuse_if(!m.filter_state.is_empty(), "filter_state")?;
    let path = match &m.path_specifier {
        Some(P::Prefix(p)) => PathMatch::Prefix(p.clone()),
        Some(P::Path(p)) => PathMatch::Exact(p.clone()),
        Some(P::SafeRegex(r)) => PathMatch::Regex(Pattern::whole(&r.regex).under("safe_regex")?),
        Some(P::PathSeparatedPrefix(p)) => PathMatch::SeparatedPrefix(p.clone()),
        Some(P::ConnectMatcher(_)) => return Err(Refusal::unsupported("connect_matcher")),
        Some(P::PathMatchPolicy(_)) => return Err(Refusal::unsupported("path_match_policy")),
        None => return Err(Refusal::missing("path_specifier")),
    };
    let headers = m
        .headers
        .iter()
        .enumerate()
        .map(|(i, h)| header_match(h).index(i))
        .collect::<Result<_, _>>()
        .under("headers")?;
    let query = m
        .query_parameters
        .iter()
        .enumerate()
        .map(|(i, q)| query_match(q).index(i))
        .collect::<Result<_, _>>()
        .under("query_parameters")?;
    Ok(RouteMatch {
        path,
        case_sensitive: m.case_sensitive.as_ref().is_none_or(|b| b.value),
        headers,
        query,
    })
}

fn query_match(q: &pb::QueryParameterMatcher) -> Result<QueryMatch, Refusal> {
    use pb::query_parameter_matcher::QueryParameterMatchSpecifier as Q;
    Ok(match &q.query_parameter_match_specifier {
        Some(Q::StringMatch(s)) => QueryMatch {
            name: q.name.clone(),
            value: Some(string_match(s).under("string_match")?),
            ignore_case: s.ignore_case,
        },
        Some(Q::PresentMatch(_)) | None => QueryMatch {
            name: q.name.clone(),
            value: None,
            ignore_case: false,
        },
    })
}

/// A string matcher (its `ignore_case` is the caller's to keep).
pub(crate) fn string_match(s: &StringMatcher) -> Result<StringMatch, Refusal> {
    use string_matcher::MatchPattern as M;
    Ok(match &s.match_pattern {
        Some(M::Exact(v)) => StringMatch::Exact(v.clone()),
        Some(M::Prefix(v)) => StringMatch::Prefix(v.clone()),
        Some(M::Suffix(v)) => StringMatch::Suffix(v.clone()),
        Some(M::Contains(v)) => StringMatch::Contains(v.clone()),
        Some(M::SafeRegex(r)) => StringMatch::Regex(Pattern::whole(&r.regex).under("safe_regex")?),
        Some(M::Custom(_)) => return Err(Refusal::unsupported("custom")),
        None => return Err(Refusal::missing("match_pattern")),
    })
}

pub(crate) fn header_match(h: &pb::HeaderMatcher) -> Result<HeaderMatch, Refusal> {
    use pb::header_matcher::HeaderMatchSpecifier as H;
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
            m.value = Some(string_match(s).under("string_match")?);
            m.ignore_case = s.ignore_case;
        }
        Some(H::ExactMatch(v)) => m.value = Some(StringMatch::Exact(v.clone())),
        Some(H::PrefixMatch(v)) => m.value = Some(StringMatch::Prefix(v.clone())),
        Some(H::SuffixMatch(v)) => m.value = Some(StringMatch::Suffix(v.clone())),
        Some(H::ContainsMatch(v)) => m.value = Some(StringMatch::Contains(v.clone())),
        Some(H::SafeRegexMatch(r)) => {
            m.value = Some(StringMatch::Regex(
                Pattern::whole(&r.regex).under("safe_regex_match")?,
            ))
        }
        Some(H::PresentMatch(present)) => m.present = *present,
        Some(H::RangeMatch(_)) => return Err(Refusal::unsupported("range_match")),
        None => {}
    }
    Ok(m)
}

/// Envoy's retry conditions (`x-envoy-retry-on` and `x-envoy-retry-grpc-on`), all of which
/// strait-proxy reads (see `http::forward`). `http3-post-connect-failure` applies only to
/// requests sent over HTTP/3, which strait-proxy does not send: it never fires.
pub(crate) const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "refused-stream",
    "retriable-4xx",
    "retriable-status-codes",
    "retriable-headers",
    "envoy-ratelimited",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// A RouteAction: where the request goes and the policies on the way.
fn forward(ra: &pb::RouteAction) -> Result<Forward, Refusal> {
    refuse_unsupported_action_fields(ra)?;
    Ok(Forward {
        target: target(ra)?,
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
        retry: ra
            .retry_policy
            .as_ref()
            .map(retry_policy)
            .transpose()
            .under("retry_policy")?,
        prefix_rewrite: Some(ra.prefix_rewrite.clone()).filter(|p| !p.is_empty()),
        regex_rewrite: ra
            .regex_rewrite
            .as_ref()
            .map(regex_rewrite)
            .transpose()
            .under("regex_rewrite")?,
        host_rewrite: host_rewrite(ra)?,
        cluster_not_found_status: if ra.cluster_not_found_response_code == 1 {
            404
        } else {
            503
        },
        mirrors: ra
            .request_mirror_policies
            .iter()
            .enumerate()
            .map(|(i, m)| mirror(m).index(i))
            .collect::<Result<_, _>>()
            .under("request_mirror_policies")?,
        hash_policy: ra
            .hash_policy
            .iter()
            .enumerate()
            .map(|(i, h)| hash_policy(h).index(i))
            .collect::<Result<_, _>>()
            .under("hash_policy")?,
    })
}

fn refuse_unsupported_action_fields(ra: &pb::RouteAction) -> Result<(), Refusal> {
    refuse_if(!ra.rate_limits.is_empty(), "rate_limits")?;
    refuse_if(ra.hedge_policy.is_some(), "hedge_policy")?;
    refuse_if(
        ra.retry_policy_typed_config.is_some(),
        "retry_policy_typed_config",
    )?;
    refuse_if(ra.path_rewrite_policy.is_some(), "path_rewrite_policy")?;
    refuse_if(!ra.path_rewrite.is_empty(), "path_rewrite")?;
    refuse_if(ra.metadata_match.is_some(), "metadata_match")?;
    #[allow(deprecated)]
    refuse_if(ra.cors.is_some(), "cors")?;
    Ok(())
}

/// `cluster` or `weighted_clusters`.
fn target(ra: &pb::RouteAction) -> Result<Target, Refusal> {
    use pb::route_action::ClusterSpecifier as C;
    match &ra.cluster_specifier {
        Some(C::Cluster(name)) => Ok(Target::Cluster(name.clone())),
        Some(C::WeightedClusters(w)) => weighted(w).under("weighted_clusters"),
        Some(C::ClusterHeader(_)) => Err(Refusal::unsupported("cluster_header")),
        Some(C::ClusterSpecifierPlugin(_)) | Some(C::InlineClusterSpecifierPlugin(_)) => {
            Err(Refusal::unsupported("cluster_specifier_plugin"))
        }
        None => Err(Refusal::missing("cluster")),
    }
}

fn weighted(w: &pb::WeightedCluster) -> Result<Target, Refusal> {
    let clusters: Vec<WeightedCluster> = w
        .clusters
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let entry = || -> Result<WeightedCluster, Refusal> {
                refuse_if(!c.cluster_header.is_empty(), "cluster_header")?;
                refuse_if(
                    !c.typed_per_filter_config.is_empty(),
                    "typed_per_filter_config",
                )?;
                refuse_if(c.host_rewrite_specifier.is_some(), "host_rewrite_specifier")?;
                let headers = EntryHeaders {
                    request: mutation(
                        &c.request_headers_to_add,
                        "request_headers_to_add",
                        &c.request_headers_to_remove,
                        "request_headers_to_remove",
                    )?,
                    response: mutation(
                        &c.response_headers_to_add,
                        "response_headers_to_add",
                        &c.response_headers_to_remove,
                        "response_headers_to_remove",
                    )?,
                };
                Ok(WeightedCluster {
                    name: c.name.clone(),
                    weight: c.weight.as_ref().map_or(0, |w| w.value),
                    headers: (!headers.request.is_empty() || !headers.response.is_empty())
                        .then(|| Box::new(headers)),
                })
            };
            entry().index(i)
        })
        .collect::<Result<_, _>>()
        .under("clusters")?;
    if clusters.iter().all(|c| c.weight == 0) {
        return Err(Refusal::rule("clusters", "no cluster has a weight above 0"));
    }
    Ok(Target::Weighted(clusters))
}

fn retry_policy(p: &pb::RetryPolicy) -> Result<RetryPolicy, Refusal> {
    let retry_on: Vec<String> = p
        .retry_on
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if let Some(c) = retry_on.iter().find(|c| !RETRY_ON.contains(&c.as_str())) {
        return Err(Refusal::unsupported_value("retry_on", format!("{c:?}")));
    }
    let matchers = |list: &[pb::HeaderMatcher]| {
        list.iter()
            .enumerate()
            .map(|(i, h)| header_match(h).index(i))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(RetryPolicy {
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
        retriable_headers: matchers(&p.retriable_headers).under("retriable_headers")?,
        retriable_request_headers: matchers(&p.retriable_request_headers)
            .under("retriable_request_headers")?,
    })
}

fn host_rewrite(ra: &pb::RouteAction) -> Result<Option<String>, Refusal> {
    use pb::route_action::HostRewriteSpecifier as H;
    match &ra.host_rewrite_specifier {
        Some(H::HostRewriteLiteral(h)) => Ok(Some(h.clone())),
        Some(H::AutoHostRewrite(_)) => Err(Refusal::unsupported("auto_host_rewrite")),
        Some(H::HostRewriteHeader(_)) => Err(Refusal::unsupported("host_rewrite_header")),
        Some(H::HostRewritePathRegex(_)) => Err(Refusal::unsupported("host_rewrite_path_regex")),
        Some(_) => Err(Refusal::unsupported_value(
            "host_rewrite_specifier",
            "other than host_rewrite_literal",
        )),
        None => Ok(None),
    }
}

fn regex_rewrite(
    r: &envoy_types::pb::envoy::r#type::matcher::v3::RegexMatchAndSubstitute,
) -> Result<(Pattern, String), Refusal> {
    let source = r.pattern.as_ref().map_or("", |p| p.regex.as_str());
    let re = regex::Regex::new(source).map_err(|e| {
        Refusal::bad_value(
            "pattern.regex",
            format!("{source:?}"),
            format!("a valid regex: {e}"),
        )
    })?;
    Ok((Pattern(re), envoy_substitution(&r.substitution)))
}

fn mirror(m: &pb::route_action::RequestMirrorPolicy) -> Result<Mirror, Refusal> {
    if m.cluster.is_empty() {
        return Err(Refusal::unsupported_value(
            "",
            "without a cluster (cluster_header)",
        ));
    }
    refuse_if(
        !m.request_headers_mutations.is_empty(),
        "request_headers_mutations",
    )?;
    refuse_if(!m.host_rewrite_literal.is_empty(), "host_rewrite_literal")?;
    Ok(Mirror {
        cluster: m.cluster.clone(),
        per_million: per_million(
            m.runtime_fraction
                .as_ref()
                .and_then(|f| f.default_value.as_ref()),
        ),
        shadow_suffix: !m.disable_shadow_host_suffix_append,
    })
}

fn hash_policy(h: &pb::route_action::HashPolicy) -> Result<HashPolicy, Refusal> {
    use pb::route_action::hash_policy::PolicySpecifier as P;
    let key = match &h.policy_specifier {
        Some(P::Header(hd)) => {
            refuse_if(hd.regex_rewrite.is_some(), "header.regex_rewrite")?;
            HashKey::Header(hd.header_name.to_ascii_lowercase())
        }
        Some(P::Cookie(c)) => HashKey::Cookie(c.name.clone()),
        Some(P::ConnectionProperties(cp)) if cp.source_ip => HashKey::SourceIp,
        Some(P::ConnectionProperties(_)) => {
            return Err(Refusal::rule(
                "connection_properties",
                "hashes nothing (source_ip is false)",
            ));
        }
        Some(P::QueryParameter(q)) => HashKey::QueryParameter(q.name.clone()),
        Some(P::FilterState(_)) => return Err(Refusal::unsupported("filter_state")),
        None => return Err(Refusal::missing("policy_specifier")),
    };
    Ok(HashPolicy {
        key,
        terminal: h.terminal,
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

fn redirect(rd: &pb::RedirectAction) -> Result<Redirect, Refusal> {
    use pb::redirect_action::{PathRewriteSpecifier as P, SchemeRewriteSpecifier as S};
    let status = match rd.response_code {
        0 => 301,
        1 => 302,
        2 => 303,
        3 => 307,
        4 => 308,
        c => {
            return Err(Refusal::bad_value(
                "response_code",
                c,
                "a known redirect code",
            ));
        }
    };
    let path = match &rd.path_rewrite_specifier {
        Some(P::PathRedirect(p)) => Some(p.clone()),
        Some(P::PrefixRewrite(_)) => return Err(Refusal::unsupported("prefix_rewrite")),
        Some(P::RegexRewrite(_)) => return Err(Refusal::unsupported("regex_rewrite")),
        Some(P::PathRewrite(_)) => return Err(Refusal::unsupported("path_rewrite")),
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

fn direct(d: &pb::DirectResponseAction) -> Result<Action, Refusal> {
    refuse_if(d.body_format.is_some(), "body_format")?;
    let body = match d.body.as_ref().and_then(|b| b.specifier.as_ref()) {
        None => String::new(),
        Some(data_source::Specifier::InlineString(s)) => s.clone(),
        Some(data_source::Specifier::InlineBytes(b)) => String::from_utf8_lossy(b).into_owned(),
        Some(_) => {
            return Err(Refusal::unsupported_value(
                "body",
                "from a file or environment variable",
            ));
        }
    };
    let status = u16::try_from(d.status)
        .ok()
        .filter(|s| (200..600).contains(s))
        .ok_or_else(|| Refusal::bad_value("status", d.status, "an HTTP status"))?;
    Ok(Action::Direct { status, body })
}

/// The route's fault filter config.
fn fault_config(f: &HttpFault) -> Result<Fault, Refusal> {
    refuse_if(f.response_rate_limit.is_some(), "response_rate_limit")?;
    refuse_if(!f.downstream_nodes.is_empty(), "downstream_nodes")?;
    refuse_if(!f.upstream_cluster.is_empty(), "upstream_cluster")?;
    let delay = match &f.delay {
        None => None,
        Some(d) => match &d.fault_delay_secifier {
            Some(fault_delay::FaultDelaySecifier::FixedDelay(t)) => {
                Some((duration(t), per_million(d.percentage.as_ref())))
            }
            Some(fault_delay::FaultDelaySecifier::HeaderDelay(_)) => {
                return Err(Refusal::unsupported("delay.header_delay"));
            }
            None => return Err(Refusal::missing("delay.fixed_delay")),
        },
    };
    let (abort, grpc_status) = match &f.abort {
        None => (None, None),
        Some(a) => {
            let share = per_million(a.percentage.as_ref());
            match &a.error_type {
                Some(fault_abort::ErrorType::HttpStatus(s)) => {
                    let s = u16::try_from(*s)
                        .ok()
                        .filter(|s| (200..600).contains(s))
                        .ok_or_else(|| {
                            Refusal::bad_value("abort.http_status", s, "an HTTP status")
                        })?;
                    (Some((s, share)), None)
                }
                // As Envoy: an abort with a gRPC status is an HTTP 200.
                Some(fault_abort::ErrorType::GrpcStatus(g)) => (Some((200, share)), Some(*g)),
                Some(fault_abort::ErrorType::HeaderAbort(_)) => {
                    return Err(Refusal::unsupported("abort.header_abort"));
                }
                None => return Err(Refusal::missing("abort.error_type")),
            }
        }
    };
    let headers = f
        .headers
        .iter()
        .enumerate()
        .map(|(i, h)| header_match(h).index(i))
        .collect::<Result<_, _>>()
        .under("headers")?;
    Ok(Fault {
        delay,
        abort,
        grpc_status,
        headers,
    })
}

/// Request or response header mutations (`add_field` and `remove_field` name the two fields).
fn mutation(
    add: &[HeaderValueOption],
    add_field: &'static str,
    remove: &[String],
    remove_field: &'static str,
) -> Result<HeaderMutation, Refusal> {
    let add = add
        .iter()
        .enumerate()
        .map(|(i, h)| header_option(h).index(i))
        .collect::<Result<_, _>>()
        .under(add_field)?;
    let remove = remove
        .iter()
        .enumerate()
        .map(|(i, n)| {
            HeaderName::try_from(n.as_str())
                .map_err(|_| Refusal::bad_value("", format!("{n:?}"), "a header name"))
                .index(i)
        })
        .collect::<Result<_, _>>()
        .under(remove_field)?;
    Ok(HeaderMutation { add, remove })
}

pub(super) fn header_option(
    h: &HeaderValueOption,
) -> Result<(HeaderName, HeaderValue, bool), Refusal> {
    let hv = h
        .header
        .as_ref()
        .ok_or_else(|| Refusal::missing("header"))?;
    let name = HeaderName::try_from(hv.key.as_str())
        .map_err(|_| Refusal::bad_value("header.key", format!("{:?}", hv.key), "a header name"))?;
    let raw = if hv.raw_value.is_empty() {
        hv.value.as_bytes()
    } else {
        hv.raw_value.as_slice()
    };
    let value = HeaderValue::from_bytes(raw).map_err(|_| {
        Refusal::bad_value(
            "header.value",
            format!("{:?}", String::from_utf8_lossy(raw)),
            "a header value",
        )
    })?;
    // append_action: 0 APPEND_IF_EXISTS_OR_ADD, 2 OVERWRITE_IF_EXISTS_OR_ADD; the deprecated
    // `append` wins when set.
    #[allow(deprecated)]
    let append = match (&h.append, h.append_action) {
        (Some(b), _) => b.value,
        (None, 0) => true,
        (None, 2) => false,
        (None, a) => {
            return Err(Refusal::unsupported_value(
                "append_action",
                format!("{a} (ADD_IF_ABSENT, OVERWRITE_IF_EXISTS)"),
            ));
        }
    };
    Ok((name, value, append))
}
