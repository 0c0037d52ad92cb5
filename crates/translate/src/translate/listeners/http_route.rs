//! VirtualService HTTP rules → Envoy routes, as Istio translates them.
//!
//! Each rule gives one route per `match` (or one route without matches), in order, so the first
//! that matches a request wins; a rule whose match catches everything ends the list. Matches are
//! dropped here when they cannot apply to this proxy (another `port`, other `sourceLabels`,
//! other `gateways`).

use std::collections::{BTreeMap, HashMap};

use envoy_types::pb::envoy::config::core::v3::{
    DataSource, HeaderValue, HeaderValueOption, Metadata, RuntimeFractionalPercent, data_source,
    header_value_option::HeaderAppendAction,
};
use envoy_types::pb::envoy::config::route::v3::{
    Decorator, DirectResponseAction, HeaderMatcher, QueryParameterMatcher, Route, RouteAction,
    RouteMatch, WeightedCluster, header_matcher, query_parameter_matcher, route, route_action,
    route_match, weighted_cluster,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    ListMatcher, MetadataMatcher, RegexMatchAndSubstitute, ValueMatcher, list_matcher,
    metadata_matcher, value_matcher,
};
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use envoy_types::util::pack_any;
use strait_api::networking::virtual_service::{
    Destination, HeaderOperations, Headers, HttpMatchRequest, HttpRoute, StringMatch,
    StringMatchKind,
};

use super::config::{BoundVs, qualified_gateway};
use super::filters::{CORS, FAULT, bool_value, u32_value};
use super::http_policy::{
    base64_decode, hundred, million, redirect_action_for, retry_policy_for, set_timeout,
    translate_cors, translate_fault,
};
use super::matchers::{regex, string_matcher};
use crate::translate::{Ctx, clusters, outbound_cluster_name};

/// Envoy's default is 4 KiB; Istio raises it to the 1 MiB its validation allows.
pub(super) const MAX_DIRECT_RESPONSE_BODY_BYTES: u32 = 1024 * 1024;

/// Where routes are being built: the proxy, the port requests arrive on, and the gateway
/// (`mesh` for sidecars, `NAMESPACE/NAME` for a gateway).
pub(super) struct RouteScope<'s, 'a> {
    pub ctx: &'s Ctx<'a>,
    pub port: u16,
    pub gateway: &'s str,
}

/// The routes of a VirtualService on this scope's port, first match first. Empty when no rule
/// applies (the caller then falls back to the default route).
pub(super) fn virtual_service_routes(scope: &RouteScope<'_, '_>, vs: &BoundVs<'_>) -> Vec<Route> {
    let mut out = Vec::new();
    for http in &vs.spec.http {
        if http.delegate.is_some() {
            tracing::warn!(
                virtual_service = %vs.meta.name,
                namespace = vs.namespace,
                "HTTP route delegation is not supported yet; the rule is skipped"
            );
            continue;
        }
        if http.matches.is_empty() {
            out.extend(translate_route(scope, vs, http, None));
            break;
        }
        let mut catch_all = false;
        for m in &http.matches {
            if let Some(r) = translate_route(scope, vs, http, Some(m)) {
                catch_all = is_catch_all(&r);
                out.push(r);
                if catch_all {
                    break;
                }
            }
        }
        if catch_all {
            break;
        }
    }
    out
}

/// The route for a host without a VirtualService: everything to the service's cluster, with
/// Istio's default retries and no timeout.
pub(super) fn default_route(
    host: &str,
    port: u16,
    hash: Option<route_action::HashPolicy>,
) -> Route {
    let cluster = outbound_cluster_name(port, "", host);
    let mut action = RouteAction {
        cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster)),
        retry_policy: Some(retry_policy_for(None, hash.is_some())),
        hash_policy: hash.into_iter().collect(),
        ..Default::default()
    };
    set_timeout(&mut action, None);
    Route {
        name: "default".to_string(),
        r#match: Some(prefix_match("/")),
        decorator: Some(Decorator {
            operation: format!("{host}:{port}/*"),
            ..Default::default()
        }),
        action: Some(route::Action::Route(action)),
        ..Default::default()
    }
}

/// A match on a path prefix only.
pub(super) fn prefix_match(prefix: &str) -> RouteMatch {
    RouteMatch {
        path_specifier: Some(route_match::PathSpecifier::Prefix(prefix.to_string())),
        ..Default::default()
    }
}

/// A route matches every request: prefix `/` (or regex `.*`) and nothing else.
pub(super) fn is_catch_all(r: &Route) -> bool {
    let Some(m) = &r.r#match else { return false };
    let path = match &m.path_specifier {
        Some(route_match::PathSpecifier::Prefix(p)) => p == "/",
        Some(route_match::PathSpecifier::PathSeparatedPrefix(p)) => p == "/",
        Some(route_match::PathSpecifier::SafeRegex(r)) => r.regex == ".*",
        _ => false,
    };
    path && m.headers.is_empty() && m.query_parameters.is_empty() && m.dynamic_metadata.is_empty()
}

/// Does a match condition apply to this proxy (its labels and namespace, or the gateway)?
fn source_matches(scope: &RouteScope<'_, '_>, vs: &BoundVs<'_>, m: &HttpMatchRequest) -> bool {
    if !m.gateways.is_empty() {
        return m
            .gateways
            .iter()
            .any(|g| qualified_gateway(g, vs.namespace) == scope.gateway);
    }
    let proxy = scope.ctx.proxy;
    m.source_labels
        .iter()
        .all(|(k, v)| proxy.labels.get(k) == Some(v))
        && (m.source_namespace.is_empty() || m.source_namespace == proxy.namespace)
}

fn translate_route(
    scope: &RouteScope<'_, '_>,
    vs: &BoundVs<'_>,
    http: &HttpRoute,
    m: Option<&HttpMatchRequest>,
) -> Option<Route> {
    if let Some(m) = m {
        if m.port.is_some_and(|p| p != 0 && p != u32::from(scope.port)) {
            return None;
        }
        if !source_matches(scope, vs, m) {
            return None;
        }
    }
    let mut name = http.name.clone();
    if let Some(m) = m.filter(|m| !m.name.is_empty()) {
        name = format!("{name}.{}", m.name);
    }
    let mut out = Route {
        name,
        r#match: Some(m.map_or_else(|| prefix_match("/"), route_match_for)),
        metadata: Some(config_metadata(vs)),
        stat_prefix: m.map(|m| m.stat_prefix.clone()).unwrap_or_default(),
        ..Default::default()
    };
    let mut authority = String::new();
    if let Some(headers) = &http.headers {
        let ops = HeaderOps::from(headers);
        out.request_headers_to_add = ops.request_add;
        out.request_headers_to_remove = ops.request_remove;
        out.response_headers_to_add = ops.response_add;
        out.response_headers_to_remove = ops.response_remove;
        authority = ops.authority;
    }
    if let Some(redirect) = &http.redirect {
        out.action = redirect_action_for(redirect, scope.port);
    } else if let Some(direct) = &http.direct_response {
        let body = direct.body.as_ref().and_then(|b| {
            let specifier = match (&b.string, &b.bytes) {
                (Some(s), _) => data_source::Specifier::InlineString(s.clone()),
                (None, Some(b)) => data_source::Specifier::InlineBytes(base64_decode(b)?),
                (None, None) => return None,
            };
            Some(DataSource {
                specifier: Some(specifier),
                ..Default::default()
            })
        });
        out.action = Some(route::Action::DirectResponse(DirectResponseAction {
            status: direct.status,
            body,
            ..Default::default()
        }));
    } else {
        let action = route_action_for(scope, vs, http, authority, &mut out);
        out.action = Some(route::Action::Route(action));
    }
    out.decorator = Some(Decorator {
        operation: operation(&out, &vs.meta.name, scope.port),
        ..Default::default()
    });
    if let Some(fault) = http.fault.as_ref().and_then(translate_fault) {
        out.typed_per_filter_config
            .insert(FAULT.to_string(), pack_any(fault));
    }
    if let Some(cors) = &http.cors_policy {
        out.typed_per_filter_config
            .insert(CORS.to_string(), pack_any(translate_cors(cors)));
    }
    // Encoded the same every time (see `stable_map`).
    out.typed_per_filter_config =
        crate::translate::stable_map(std::mem::take(&mut out.typed_per_filter_config));
    Some(out)
}

/// `filter_metadata.istio.config`: the VirtualService a route came from, as Istio records it.
fn config_metadata(vs: &BoundVs<'_>) -> Metadata {
    let path = format!(
        "/apis/networking.istio.io/v1/namespaces/{}/virtual-service/{}",
        vs.namespace, vs.meta.name
    );
    let config = Struct {
        fields: HashMap::from([(
            "config".to_string(),
            Value {
                kind: Some(Kind::StringValue(path)),
            },
        )]),
    };
    Metadata {
        filter_metadata: HashMap::from([("istio".to_string(), config)]),
        ..Default::default()
    }
}

/// Envoy's tracing operation: `HOST:PORT/PATH` for one destination, else `VS:PORT/PATH`.
fn operation(r: &Route, vs_name: &str, port: u16) -> String {
    let path = match r.r#match.as_ref().and_then(|m| m.path_specifier.as_ref()) {
        Some(route_match::PathSpecifier::Prefix(p)) => format!("{p}*"),
        Some(route_match::PathSpecifier::Path(p)) => p.clone(),
        Some(route_match::PathSpecifier::SafeRegex(re)) => re.regex.clone(),
        _ => "/*".to_string(),
    };
    if let Some(route::Action::Route(a)) = &r.action
        && let Some(route_action::ClusterSpecifier::Cluster(c)) = &a.cluster_specifier
    {
        let parts: Vec<&str> = c.split('|').collect();
        if let ["outbound", port, _, host] = parts.as_slice() {
            return format!("{host}:{port}{path}");
        }
    }
    format!("{vs_name}:{port}{path}")
}

/// `{}` and `regex: "*"` mean "present" (`*` is not a regex, see istio/istio#20629).
fn is_present_match(sm: &StringMatch) -> bool {
    match sm.kind() {
        None => true,
        Some(StringMatchKind::Regex(re)) => re == "*",
        Some(_) => false,
    }
}

fn header_matcher(name: &str, sm: &StringMatch) -> HeaderMatcher {
    let specifier = if is_present_match(sm) {
        Some(header_matcher::HeaderMatchSpecifier::PresentMatch(true))
    } else {
        string_matcher(sm).map(header_matcher::HeaderMatchSpecifier::StringMatch)
    };
    HeaderMatcher {
        name: name.to_string(),
        header_match_specifier: specifier,
        ..Default::default()
    }
}

/// `@request.auth.claims.a.b` or `@request.auth.claims[a][b]` → `["a", "b"]`.
fn jwt_claim_path(name: &str) -> Option<Vec<String>> {
    const PREFIX: &str = "@request.auth.claims";
    let rest = name.strip_prefix(PREFIX)?;
    let claims: Vec<String> = if let Some(dotted) = rest.strip_prefix('.') {
        dotted.split('.').map(str::to_string).collect()
    } else {
        rest.strip_prefix('[')?
            .strip_suffix(']')?
            .split("][")
            .map(str::to_string)
            .collect()
    };
    (!claims.iter().any(String::is_empty)).then_some(claims)
}

/// A JWT claim match, on the metadata Istio's authentication filter writes (`istio_authn`).
fn claim_matcher(claims: Vec<String>, sm: &StringMatch) -> MetadataMatcher {
    let key = |k: String| metadata_matcher::PathSegment {
        segment: Some(metadata_matcher::path_segment::Segment::Key(k)),
    };
    let string = string_matcher(sm).map(value_matcher::MatchPattern::StringMatch);
    MetadataMatcher {
        filter: "istio_authn".to_string(),
        path: std::iter::once("request.auth.claims".to_string())
            .chain(claims)
            .map(key)
            .collect(),
        value: Some(ValueMatcher {
            match_pattern: Some(value_matcher::MatchPattern::ListMatch(Box::new(
                ListMatcher {
                    match_pattern: Some(list_matcher::MatchPattern::OneOf(Box::new(
                        ValueMatcher {
                            match_pattern: string,
                        },
                    ))),
                },
            ))),
        }),
        ..Default::default()
    }
}

pub(super) fn route_match_for(m: &HttpMatchRequest) -> RouteMatch {
    let mut out = prefix_match("/");
    for (name, sm) in &m.headers {
        match jwt_claim_path(name) {
            Some(claims) => out.dynamic_metadata.push(claim_matcher(claims, sm)),
            None => out.headers.push(header_matcher(name, sm)),
        }
    }
    for (name, sm) in &m.without_headers {
        match jwt_claim_path(name) {
            Some(claims) => out.dynamic_metadata.push(MetadataMatcher {
                invert: true,
                ..claim_matcher(claims, sm)
            }),
            None => {
                let mut h = header_matcher(name, sm);
                h.invert_match = true;
                h.treat_missing_header_as_empty = !is_present_match(sm);
                out.headers.push(h);
            }
        }
    }
    out.headers.sort_by(|a, b| a.name.cmp(&b.name));
    if let Some(uri) = &m.uri {
        out.path_specifier = match uri.kind() {
            Some(StringMatchKind::Exact(p)) => Some(route_match::PathSpecifier::Path(p.into())),
            Some(StringMatchKind::Prefix(p)) => Some(route_match::PathSpecifier::Prefix(p.into())),
            Some(StringMatchKind::Regex(re)) => {
                Some(route_match::PathSpecifier::SafeRegex(regex(re)))
            }
            None => out.path_specifier,
        };
    }
    out.case_sensitive = Some(bool_value(!m.ignore_uri_case));
    for (name, sm) in [
        (":method", &m.method),
        (":authority", &m.authority),
        (":scheme", &m.scheme),
    ] {
        if let Some(sm) = sm {
            out.headers.push(header_matcher(name, sm));
        }
    }
    for (name, sm) in &m.query_params {
        let specifier = if is_present_match(sm) {
            Some(query_parameter_matcher::QueryParameterMatchSpecifier::PresentMatch(true))
        } else {
            string_matcher(sm)
                .map(query_parameter_matcher::QueryParameterMatchSpecifier::StringMatch)
        };
        out.query_parameters.push(QueryParameterMatcher {
            name: name.clone(),
            query_parameter_match_specifier: specifier,
        });
    }
    out
}

/// Header changes as Envoy takes them; `:authority`/`host` set or added becomes a host rewrite.
#[derive(Default)]
struct HeaderOps {
    request_add: Vec<HeaderValueOption>,
    request_remove: Vec<String>,
    response_add: Vec<HeaderValueOption>,
    response_remove: Vec<String>,
    authority: String,
}

fn is_internal_header(name: &str) -> bool {
    name.starts_with(':') || name.eq_ignore_ascii_case("host")
}

fn is_authority_header(name: &str) -> bool {
    name.eq_ignore_ascii_case(":authority") || name.eq_ignore_ascii_case("host")
}

/// Header options for `set` (overwrite) or `add` (append), in name order; the authority, if
/// one of them names it.
fn header_options(
    headers: &BTreeMap<String, String>,
    append: bool,
) -> (Vec<HeaderValueOption>, String) {
    let mut authority = String::new();
    let mut out = Vec::new();
    for (key, value) in headers {
        if is_authority_header(key) {
            authority = value.clone();
        }
        if is_internal_header(key) {
            continue;
        }
        let action = if append {
            HeaderAppendAction::AppendIfExistsOrAdd
        } else {
            HeaderAppendAction::OverwriteIfExistsOrAdd
        };
        out.push(HeaderValueOption {
            header: Some(HeaderValue {
                key: key.clone(),
                value: value.clone(),
                ..Default::default()
            }),
            append_action: action as i32,
            ..Default::default()
        });
    }
    (out, authority)
}

impl From<&Headers> for HeaderOps {
    fn from(h: &Headers) -> Self {
        let empty = HeaderOperations::default();
        let req = h.request.as_ref().unwrap_or(&empty);
        let resp = h.response.as_ref().unwrap_or(&empty);
        let (mut request_add, set_authority) = header_options(&req.set, false);
        let (req_add, add_authority) = header_options(&req.add, true);
        request_add.extend(req_add);
        let (mut response_add, _) = header_options(&resp.set, false);
        response_add.extend(header_options(&resp.add, true).0);
        let keep = |names: &[String]| -> Vec<String> {
            names
                .iter()
                .filter(|n| !is_internal_header(n))
                .cloned()
                .collect()
        };
        HeaderOps {
            request_add,
            request_remove: keep(&req.remove),
            response_add,
            response_remove: keep(&resp.remove),
            authority: if set_authority.is_empty() {
                add_authority
            } else {
                set_authority
            },
        }
    }
}

/// The cluster for a destination: its port, else the service's only port, else the port the
/// request arrived on.
fn destination_cluster(scope: &RouteScope<'_, '_>, vs: &BoundVs<'_>, d: &Destination) -> String {
    let host = vs.resolve(&d.host, &scope.ctx.config.mesh.domain_suffix);
    outbound_cluster_name(destination_port(scope, &host, d), &d.subset, &host)
}

fn destination_port(scope: &RouteScope<'_, '_>, host: &str, d: &Destination) -> u16 {
    if let Some(p) = d.port.as_ref().and_then(|p| u16::try_from(p.number).ok())
        && p != 0
    {
        return p;
    }
    match scope.ctx.registry.services.get(host) {
        Some(s) if s.ports.len() == 1 => s.ports[0].number,
        _ => scope.port,
    }
}

/// The hash policy of the DestinationRule (and subset, and port) a destination goes to, as
/// the cluster builder resolves it.
fn destination_hash(
    scope: &RouteScope<'_, '_>,
    vs: &BoundVs<'_>,
    d: &Destination,
) -> Option<route_action::HashPolicy> {
    let host = vs.resolve(&d.host, &scope.ctx.config.mesh.domain_suffix);
    let port = destination_port(scope, &host, d);
    clusters::hash_policy(scope.ctx, &host, &d.subset, port)
}

fn route_action_for(
    scope: &RouteScope<'_, '_>,
    vs: &BoundVs<'_>,
    http: &HttpRoute,
    mut authority: String,
    out: &mut Route,
) -> RouteAction {
    let mut action = RouteAction::default();
    set_timeout(&mut action, http.timeout.as_ref().map(|t| t.as_nanos()));
    if let Some(rewrite) = &http.rewrite {
        if let Some(re) = &rewrite.uri_regex_rewrite {
            action.regex_rewrite = Some(RegexMatchAndSubstitute {
                pattern: Some(regex(&re.pattern)),
                substitution: re.rewrite.clone(),
            });
        } else if !rewrite.uri.is_empty() {
            action.prefix_rewrite = rewrite.uri.clone();
        }
        if !rewrite.authority.is_empty() {
            authority = rewrite.authority.clone();
        }
    }
    if !authority.is_empty() {
        action.host_rewrite_specifier = Some(
            route_action::HostRewriteSpecifier::HostRewriteLiteral(authority),
        );
    }
    let legacy_mirror = http.mirror.as_ref().and_then(|m| {
        let percent = match (&http.mirror_percentage, http.mirror_percent) {
            (Some(p), _) => (p.value > 0.0).then(|| million(p)),
            (None, Some(p)) => (p > 0).then(|| hundred(p)),
            (None, None) => Some(hundred(100)),
        };
        Some((m, percent?))
    });
    let mirrors = http.mirrors.iter().filter_map(|m| {
        let percent = match &m.percentage {
            Some(p) => (p.value > 0.0).then(|| million(p))?,
            None => hundred(100),
        };
        Some((m.destination.as_ref()?, percent))
    });
    for (dest, percent) in legacy_mirror.into_iter().chain(mirrors) {
        action
            .request_mirror_policies
            .push(route_action::RequestMirrorPolicy {
                cluster: destination_cluster(scope, vs, dest),
                runtime_fraction: Some(RuntimeFractionalPercent {
                    default_value: Some(percent),
                    ..Default::default()
                }),
                trace_sampled: Some(bool_value(false)),
                ..Default::default()
            });
    }
    let mut consistent = false;
    if let [only] = http.route.as_slice() {
        if let Some(d) = &only.destination {
            action.cluster_specifier = Some(route_action::ClusterSpecifier::Cluster(
                destination_cluster(scope, vs, d),
            ));
            if let Some(h) = destination_hash(scope, vs, d) {
                consistent = true;
                action.hash_policy.push(h);
            }
        }
        if let Some(headers) = &only.headers {
            let ops = HeaderOps::from(headers);
            out.request_headers_to_add.extend(ops.request_add);
            out.request_headers_to_remove.extend(ops.request_remove);
            out.response_headers_to_add.extend(ops.response_add);
            out.response_headers_to_remove.extend(ops.response_remove);
            if !ops.authority.is_empty() && action.host_rewrite_specifier.is_none() {
                action.host_rewrite_specifier = Some(
                    route_action::HostRewriteSpecifier::HostRewriteLiteral(ops.authority),
                );
            }
        }
    } else {
        let mut clusters = Vec::new();
        for rd in &http.route {
            let (Some(d), Ok(weight)) = (&rd.destination, u32::try_from(rd.weight)) else {
                continue;
            };
            if weight == 0 {
                continue;
            }
            let mut cw = weighted_cluster::ClusterWeight {
                name: destination_cluster(scope, vs, d),
                weight: Some(u32_value(weight)),
                ..Default::default()
            };
            if let Some(headers) = &rd.headers {
                let ops = HeaderOps::from(headers);
                cw.request_headers_to_add = ops.request_add;
                cw.request_headers_to_remove = ops.request_remove;
                cw.response_headers_to_add = ops.response_add;
                cw.response_headers_to_remove = ops.response_remove;
                if !ops.authority.is_empty() {
                    cw.host_rewrite_specifier = Some(
                        weighted_cluster::cluster_weight::HostRewriteSpecifier::HostRewriteLiteral(
                            ops.authority,
                        ),
                    );
                }
            }
            if let Some(h) = destination_hash(scope, vs, d) {
                action.hash_policy.push(h);
            }
            clusters.push(cw);
        }
        action.cluster_specifier = Some(route_action::ClusterSpecifier::WeightedClusters(
            WeightedCluster {
                clusters,
                ..Default::default()
            },
        ));
    }
    action.retry_policy = retry_policy_for(http.retries.as_ref(), consistent).into();
    if http.retries.as_ref().is_some_and(|r| r.attempts <= 0) {
        action.retry_policy = None;
    }
    action
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwt_claim_headers_become_metadata_paths() {
        assert_eq!(
            jwt_claim_path("@request.auth.claims.group.id").unwrap(),
            ["group", "id"]
        );
        assert_eq!(
            jwt_claim_path("@request.auth.claims[group][id]").unwrap(),
            ["group", "id"]
        );
        assert!(jwt_claim_path("end-user").is_none());
        assert!(jwt_claim_path("@request.auth.claims.").is_none());
    }
}
