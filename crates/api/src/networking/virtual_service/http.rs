//! Istio's `validateHTTPRoute` and its sub-validators: matches, header changes, CORS, faults,
//! mirrors, redirects, direct responses, retries, rewrites and weighted destinations.

use std::sync::LazyLock;

use regex::Regex;

use super::validate::{
    check_total_weight, validate_destination, validate_gateway_names, validate_weighted_destination,
};
use super::{
    CorsPolicy, HeaderOperations, Headers, HttpDirectResponse, HttpFaultAbort, HttpFaultDelay,
    HttpFaultInjection, HttpMatchRequest, HttpMirrorPolicy, HttpRedirect, HttpRetry, HttpRewrite,
    HttpRoute, HttpRouteDestination, Percent, RegexRewrite, StringMatch, StringMatchKind,
};
use crate::validate::common::{
    is_dns1123_label, validate_duration, validate_labels, validate_port,
};
use crate::{FieldPath, Report};

/// Direct-response bodies above this size draw a warning.
const BODY_WARN_BYTES: usize = 100 * 1024;
/// Direct-response bodies above this size are refused.
const BODY_MAX_BYTES: usize = 1024 * 1024;

/// How an HTTP route is checked: on its own, as a root that delegates, or inside a delegate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RouteType {
    Independent,
    Root,
    Delegate,
}

/// Istio's `validateHTTPRoute`: one HTTP route of a root (`delegate == false`) or delegate
/// VirtualService.
pub(super) fn validate_http_route(
    http: &HttpRoute,
    delegate: bool,
    gateway_semantics: bool,
    at: &FieldPath,
    report: &mut Report,
) {
    let route_type = if delegate {
        RouteType::Delegate
    } else if http.delegate.is_some() {
        RouteType::Root
    } else {
        RouteType::Independent
    };
    validate_route_conflicts(http, route_type, at, report);
    for (j, m) in http.matches.iter().enumerate() {
        validate_match_request(m, &at.field("match").index(j), report);
    }
    if let Some(redirect) = &http.redirect
        && !redirect.prefix_rewrite.is_empty()
    {
        for (j, m) in http.matches.iter().enumerate() {
            if let Some(StringMatchKind::Exact(_) | StringMatchKind::Regex(_)) =
                m.uri.as_ref().and_then(StringMatch::kind)
            {
                report.error(
                    &at.field("match").index(j).field("uri"),
                    "redirect.prefixRewrite needs a prefix uri match (or none): an exact or \
                     regex uri match has no prefix to replace; use redirect.uri instead",
                );
            }
        }
    }
    validate_header_operations(http.headers.as_ref(), &at.field("headers"), report);
    if let Some(cors) = &http.cors_policy {
        validate_cors_policy(cors, &at.field("corsPolicy"), report);
    }
    if let Some(fault) = &http.fault {
        validate_fault(fault, &at.field("fault"), report);
    }
    if let Some(percent) = http.mirror_percent {
        let p = at.field("mirrorPercent");
        if percent > 100 {
            report.error(
                &p,
                format!("mirror_percent must have a max value of 100 (it has {percent})"),
            );
        }
        report.warn(
            &p,
            r#"using deprecated setting "mirrorPercent", use "mirrorPercentage" instead"#,
        );
    }
    if let Some(p) = &http.mirror_percentage {
        validate_mirror_percentage(
            p,
            "mirror_percentage",
            &at.field("mirrorPercentage"),
            report,
        );
    }
    if let Some(mirror) = &http.mirror {
        validate_destination(mirror, &at.field("mirror"), report);
    }
    validate_mirrors(&http.mirrors, &at.field("mirrors"), report);
    if let Some(redirect) = &http.redirect {
        report.check(&at.field("redirect"), validate_redirect(redirect));
    }
    if let Some(direct) = &http.direct_response {
        validate_direct_response(direct, &at.field("directResponse"), report);
    }
    if let Some(retries) = &http.retries {
        validate_retry(retries, &at.field("retries"), report);
    }
    if let Some(rewrite) = &http.rewrite {
        report.check(&at.field("rewrite"), validate_rewrite(rewrite));
    }
    validate_authority_rewrite(http, at, report);
    validate_http_route_destinations(&http.route, gateway_semantics, &at.field("route"), report);
    if let Some(timeout) = &http.timeout {
        report.check(&at.field("timeout"), validate_duration(timeout));
    }
}

/// Which actions an HTTP route may combine.
fn validate_route_conflicts(
    http: &HttpRoute,
    route_type: RouteType,
    at: &FieldPath,
    report: &mut Report,
) {
    let name = if http.name.is_empty() {
        String::new()
    } else {
        format!(" {}", http.name)
    };
    if route_type == RouteType::Root {
        if http.redirect.is_some() {
            report.error(
                &at.field("redirect"),
                format!(
                    "root HTTP route{name} must not specify redirect: a route with delegate \
                     only delegates"
                ),
            );
        }
        if !http.route.is_empty() {
            report.error(
                &at.field("route"),
                format!(
                    "root HTTP route{name} must not specify route: a route with delegate only \
                     delegates"
                ),
            );
        }
        return;
    }
    if route_type == RouteType::Delegate && http.delegate.is_some() {
        report.error(
            &at.field("delegate"),
            "delegate HTTP route cannot contain delegate: only one level of delegation is \
             supported",
        );
    }
    if http.redirect.is_some() {
        let both = |what: &str| format!("HTTP route cannot contain both {what} and redirect");
        if !http.route.is_empty() {
            report.error(&at.field("route"), both("route"));
        }
        if http.fault.is_some() {
            report.error(&at.field("fault"), both("fault"));
        }
        if http.rewrite.is_some() {
            report.error(&at.field("rewrite"), both("rewrite"));
        }
        if http.direct_response.is_some() {
            report.error(&at.field("directResponse"), both("direct_response"));
        }
    } else if http.direct_response.is_some() {
        let both =
            |what: &str| format!("HTTP route cannot contain both {what} and direct_response");
        if !http.route.is_empty() {
            report.error(&at.field("route"), both("route"));
        }
        if http.fault.is_some() {
            report.error(&at.field("fault"), both("fault"));
        }
        if http.rewrite.is_some() {
            report.error(&at.field("rewrite"), both("rewrite"));
        }
    } else if http.route.is_empty() {
        report.error(
            at,
            "HTTP route, redirect or direct_response is required: add route (destinations), \
             redirect or directResponse",
        );
    }
    if http.mirror.is_some() && !http.mirrors.is_empty() {
        report.error(
            &at.field("mirrors"),
            "HTTP route cannot contain both mirror and mirrors: move mirror into mirrors",
        );
    }
}

/// Istio's `validateHTTPRouteMatchRequest`.
fn validate_match_request(m: &HttpMatchRequest, at: &FieldPath, report: &mut Report) {
    for (name, header) in &m.headers {
        let h_at = at.field("headers").key(name);
        report.check(&h_at, validate_header_name_or_jwt_claim(name));
        validate_string_match(header, "headers", &h_at, report);
    }
    for (name, header) in &m.without_headers {
        let h_at = at.field("withoutHeaders").key(name);
        report.check(&h_at, validate_header_name_or_jwt_claim(name));
        // `regex: "*"` is not a regex: it means the header must be absent.
        if header.regex.as_deref() != Some("*") {
            validate_string_match(header, "withoutHeaders", &h_at, report);
        }
    }
    // An empty uri prefix is allowed (it matches every path); other empty prefixes are not.
    if let Some(uri) = &m.uri {
        check_one_of_string_match(uri, &at.field("uri"), report);
        report.check(&at.field("uri"), validate_string_match_regex(uri, "uri"));
    }
    for (field, sm) in [
        ("scheme", &m.scheme),
        ("method", &m.method),
        ("authority", &m.authority),
    ] {
        if let Some(sm) = sm {
            validate_string_match(sm, field, &at.field(field), report);
        }
    }
    for (name, qp) in &m.query_params {
        validate_string_match(
            qp,
            "queryParams",
            &at.field("queryParams").key(name),
            report,
        );
    }
    if let Some(port) = m.port.filter(|p| *p != 0) {
        report.check(&at.field("port"), validate_port(i64::from(port)));
    }
    report.check(&at.field("sourceLabels"), validate_labels(&m.source_labels));
    validate_gateway_names(&m.gateways, false, &at.field("gateways"), report);
    if !m.source_namespace.is_empty() && !is_dns1123_label(&m.source_namespace) {
        report.error(
            &at.field("sourceNamespace"),
            format!(
                "sourceNamespace match {} is invalid: it must be a namespace name (a DNS-1123 \
                 label)",
                m.source_namespace
            ),
        );
    }
}

/// Istio's `validateStringMatch`: no empty prefix, and a valid regex.
pub(crate) fn validate_string_match(
    sm: &StringMatch,
    where_: &str,
    at: &FieldPath,
    report: &mut Report,
) {
    check_one_of_string_match(sm, at, report);
    if let Some(StringMatchKind::Prefix("")) = sm.kind() {
        report.error(
            at,
            format!("{where_:?}: prefix string match should not be empty"),
        );
    }
    report.check(at, validate_string_match_regex(sm, where_));
}

/// A StringMatch is a oneof: proto-JSON refuses two of its fields together.
fn check_one_of_string_match(sm: &StringMatch, at: &FieldPath, report: &mut Report) {
    if sm.count_set() > 1 {
        report.error(at, "set only one of exact, prefix and regex");
    }
}

/// Istio's `validateStringMatchRegexp`: a regex match must be a valid, non-empty RE2 regex.
fn validate_string_match_regex(sm: &StringMatch, where_: &str) -> Result<(), String> {
    match sm.kind() {
        Some(StringMatchKind::Regex("")) => Err(format!(
            "{where_:?}: regex string match should not be empty"
        )),
        Some(StringMatchKind::Regex(re)) => validate_regex(re, where_),
        _ => Ok(()),
    }
}

/// A valid RE2 regex of at most 1024 characters (Istio's `validateStringRegexp`).
fn validate_regex(re: &str, where_: &str) -> Result<(), String> {
    if re.len() > 1024 {
        return Err(format!(
            "{where_:?}: regex is too large, max length allowed is 1024"
        ));
    }
    Regex::new(re).map(|_| ()).map_err(|e| {
        let first = e.to_string();
        let detail = first.lines().last().unwrap_or_default().trim().to_string();
        format!(
            "{where_:?}: invalid regex {re:?}: {detail}; Istio uses RE2 style regex-based match \
             (https://github.com/google/re2/wiki/Syntax)"
        )
    })
}

static HEADER_NAME: LazyLock<Regex> = LazyLock::new(|| Regex::new("^[-_A-Za-z0-9]+$").unwrap());

/// A header name to match on: letters, digits, `-` and `_`, or a JWT claim
/// (`@request.auth.claims.<name>`).
fn validate_header_name_or_jwt_claim(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("header name cannot be empty".to_string());
    }
    if is_jwt_claim_route(name) || HEADER_NAME.is_match(name) {
        Ok(())
    } else {
        Err(format!(
            "header name {name} is not a valid header name: use letters, digits, '-' and '_'"
        ))
    }
}

/// Whether a header match key names a JWT claim: `@request.auth.claims.a.b` or
/// `@request.auth.claims[a][b]`.
pub(super) fn is_jwt_claim_route(key: &str) -> bool {
    const PREFIX: &str = "@request.auth.claims";
    if key.len() < PREFIX.len() || !key[..PREFIX.len()].eq_ignore_ascii_case(PREFIX) {
        return false;
    }
    let rest = &key[PREFIX.len()..];
    if let Some(dotted) = rest.strip_prefix('.') {
        !dotted.is_empty() && dotted.split('.').all(|c| !c.is_empty())
    } else if let Some(inner) = rest.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        !inner.is_empty() && inner.split("][").all(|c| !c.is_empty())
    } else {
        false
    }
}

fn is_internal_header(name: &str) -> bool {
    name.starts_with(':') || name.eq_ignore_ascii_case("host")
}

fn is_authority_header(name: &str) -> bool {
    name.eq_ignore_ascii_case(":authority") || name.eq_ignore_ascii_case("host")
}

/// A header set or added on requests; `:authority`/`host` is allowed (checked separately).
fn validate_request_header_set_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("header name cannot be empty".to_string());
    }
    if is_internal_header(name) && !is_authority_header(name) {
        return Err(format!(
            r#"invalid header {name:?}: header cannot have ":" prefix"#
        ));
    }
    Ok(())
}

/// A header removed from requests, or changed on responses.
fn validate_header_operation_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("header name cannot be empty".to_string());
    }
    if name.eq_ignore_ascii_case("host") {
        return Err(format!("invalid header {name:?}: cannot set Host header"));
    }
    if is_internal_header(name) {
        return Err(format!(
            r#"invalid header {name:?}: header cannot have ":" prefix"#
        ));
    }
    Ok(())
}

/// A header value Envoy accepts: no control characters, and `%` only as `%%` or around a
/// `%VARIABLE%` (Istio's `ValidateHTTPHeaderValue`).
fn validate_header_value(value: &str) -> Result<(), String> {
    if value
        .bytes()
        .any(|b| (b <= 0x08) || (0x0A..=0x1F).contains(&b) || b == 0x7F)
    {
        return Err(format!(
            "header value configuration {value} is invalid: it contains control characters"
        ));
    }
    check_envoy_header_format(value)
        .map_err(|e| format!("header value configuration: {e} (write a literal % as %%)"))
}

/// Envoy's header value parser (`header_parser.cc`), as Istio ports it: `%VAR%` and
/// `%VAR(["arg", ...])%` expressions, `%%` for a literal `%`.
fn check_envoy_header_format(value: &str) -> Result<(), String> {
    #[derive(PartialEq)]
    enum State {
        Literal,
        VariableName,
        ExpectArray,
        ExpectString,
        String,
        ExpectArrayDelimiterOrEnd,
        ExpectArgsEnd,
        ExpectVariableEnd,
    }
    let b = value.as_bytes();
    let mut state = State::Literal;
    let mut pos = 0;
    while pos < b.len() {
        let ch = b[pos];
        let has_next = pos + 1 < b.len();
        match state {
            State::Literal => {
                if ch == b'%' {
                    if !has_next {
                        return Err("invalid header configuration. Un-escaped %".to_string());
                    }
                    if b[pos + 1] == b'%' {
                        pos += 1;
                    } else {
                        state = State::VariableName;
                    }
                }
            }
            State::VariableName => {
                if ch == b'%' {
                    state = State::Literal;
                } else if ch == b'(' {
                    state = State::ExpectArray;
                }
            }
            State::ExpectArray => {
                if ch == b'[' {
                    state = State::ExpectString;
                } else if ch != b' ' {
                    state = State::String;
                }
            }
            State::ExpectArrayDelimiterOrEnd => {
                if ch == b',' {
                    state = State::ExpectString;
                } else if ch == b']' {
                    state = State::ExpectArgsEnd;
                } else if ch != b' ' {
                    return Err(
                        "invalid header configuration. Expecting ',', ']', or whitespace"
                            .to_string(),
                    );
                }
            }
            State::ExpectString => {
                if ch == b'"' {
                    state = State::String;
                } else if ch != b' ' {
                    return Err("invalid header configuration. Expecting '\"'".to_string());
                }
            }
            State::String => {
                if ch == b'\\' {
                    if !has_next {
                        return Err("invalid header configuration. Un-terminated backslash in \
                                    JSON string"
                            .to_string());
                    }
                    pos += 1;
                } else if ch == b')' {
                    state = State::ExpectVariableEnd;
                } else if ch == b'"' {
                    state = State::ExpectArrayDelimiterOrEnd;
                }
            }
            State::ExpectArgsEnd => {
                if ch == b')' {
                    state = State::ExpectVariableEnd;
                } else if ch != b' ' {
                    return Err(
                        "invalid header configuration. Expecting ')' or whitespace".to_string()
                    );
                }
            }
            State::ExpectVariableEnd => {
                if ch == b'%' {
                    state = State::Literal;
                } else if ch != b' ' {
                    return Err(
                        "invalid header configuration. Expecting '%' or whitespace".to_string()
                    );
                }
            }
        }
        pos += 1;
    }
    if state != State::Literal {
        return Err(format!(
            "invalid header configuration. Un-terminated variable expression '{value}'"
        ));
    }
    Ok(())
}

/// Header changes of a route or of one of its destinations.
fn validate_header_operations(headers: Option<&Headers>, at: &FieldPath, report: &mut Report) {
    let Some(headers) = headers else { return };
    if let Some(req) = &headers.request {
        check_operations(req, &at.field("request"), true, report);
    }
    if let Some(resp) = &headers.response {
        check_operations(resp, &at.field("response"), false, report);
    }
}

fn check_operations(ops: &HeaderOperations, at: &FieldPath, request: bool, report: &mut Report) {
    for (field, map) in [("add", &ops.add), ("set", &ops.set)] {
        for (name, value) in map {
            let h_at = at.field(field).key(name);
            let name_check = if request {
                validate_request_header_set_name(name)
            } else {
                validate_header_operation_name(name)
            };
            report.check(&h_at, name_check);
            report.check(&h_at, validate_header_value(value));
        }
    }
    for (i, name) in ops.remove.iter().enumerate() {
        report.check(
            &at.field("remove").index(i),
            validate_header_operation_name(name),
        );
    }
}

/// The authority may be rewritten in one place only: `rewrite.authority` or one request
/// header set/add of `:authority`/`host`.
fn validate_authority_rewrite(http: &HttpRoute, at: &FieldPath, report: &mut Report) {
    let mut current = http
        .rewrite
        .as_ref()
        .map(|r| r.authority.as_str())
        .unwrap_or_default();
    let Some(req) = http.headers.as_ref().and_then(|h| h.request.as_ref()) else {
        return;
    };
    for (field, map) in [("set", &req.set), ("add", &req.add)] {
        for (k, v) in map.iter().filter(|(k, _)| is_authority_header(k)) {
            if !current.is_empty() {
                report.error(
                    &at.field("headers").field("request").field(field).key(k),
                    format!(
                        "authority header cannot be set multiple times: have {current:?}, \
                         attempting to set {v:?}; keep only one of rewrite.authority and the \
                         :authority/host header"
                    ),
                );
                return;
            }
            current = v;
        }
    }
}

/// Istio's `validateCORSPolicy`.
fn validate_cors_policy(policy: &CorsPolicy, at: &FieldPath, report: &mut Report) {
    for (i, origin) in policy.allow_origins.iter().enumerate() {
        let o_at = at.field("allowOrigins").index(i);
        check_one_of_string_match(origin, &o_at, report);
        let value = match origin.kind() {
            Some(
                StringMatchKind::Exact(s) | StringMatchKind::Prefix(s) | StringMatchKind::Regex(s),
            ) => s,
            None => "",
        };
        if value.is_empty() {
            report.error(
                &o_at,
                "'' is not a valid match type for CORS allow origins: set a non-empty exact, \
                 prefix or regex",
            );
        } else {
            report.check(
                &o_at,
                validate_string_match_regex(origin, "corsPolicy.allowOrigins"),
            );
        }
    }
    for (i, method) in policy.allow_methods.iter().enumerate() {
        if !SUPPORTED_METHODS.contains(&method.as_str()) {
            report.error(
                &at.field("allowMethods").index(i),
                format!(
                    "{method:?} is not a supported HTTP method: use one of {}",
                    SUPPORTED_METHODS.join(", ")
                ),
            );
        }
    }
    for (field, names) in [
        ("allowHeaders", &policy.allow_headers),
        ("exposeHeaders", &policy.expose_headers),
    ] {
        for (i, name) in names.iter().enumerate() {
            report.check(&at.field(field).index(i), validate_cors_header_name(name));
        }
    }
    if let Some(max_age) = &policy.max_age {
        let m_at = at.field("maxAge");
        report.check(&m_at, validate_duration(max_age));
        if max_age.as_nanos() % 1_000_000_000 != 0 {
            report.error(
                &m_at,
                "max_age duration is accurate only to seconds precision: use whole seconds",
            );
        }
    }
}

const SUPPORTED_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE",
];

fn validate_cors_header_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("header name cannot be empty".to_string());
    }
    if name == "*" || HEADER_NAME.is_match(name) {
        Ok(())
    } else {
        Err(format!(
            "header name {name} is not a valid header name: use letters, digits, '-' and '_', \
             or *"
        ))
    }
}

/// Istio's `validateHTTPFaultInjection`.
fn validate_fault(fault: &HttpFaultInjection, at: &FieldPath, report: &mut Report) {
    if fault.abort.is_none() && fault.delay.is_none() {
        report.error(at, "HTTP fault injection must have an abort and/or a delay");
    }
    if let Some(abort) = &fault.abort {
        validate_fault_abort(abort, &at.field("abort"), report);
    }
    if let Some(delay) = &fault.delay {
        validate_fault_delay(delay, &at.field("delay"), report);
    }
}

fn validate_fault_abort(abort: &HttpFaultAbort, at: &FieldPath, report: &mut Report) {
    if let Some(p) = &abort.percentage {
        report.check(&at.field("percentage"), validate_percentage(p));
    }
    let set = usize::from(abort.http_status.is_some())
        + usize::from(abort.grpc_status.is_some())
        + usize::from(abort.http2_error.is_some());
    if set > 1 {
        report.error(at, "set only one of httpStatus, grpcStatus and http2Error");
    }
    if let Some(status) = abort.http_status {
        report.check(&at.field("httpStatus"), validate_http_status(status));
    } else if let Some(status) = &abort.grpc_status {
        if !GRPC_STATUSES.contains(&status.as_str()) {
            report.error(
                &at.field("grpcStatus"),
                format!(
                    "gRPC status {status:?} is not supported. See \
                     https://github.com/grpc/grpc/blob/master/doc/statuscodes.md for a list of \
                     supported codes, for example 'NOT_FOUND'"
                ),
            );
        }
    } else if abort.http2_error.is_some() {
        report.error(
            &at.field("http2Error"),
            "HTTP/2 abort fault injection not supported yet: use httpStatus or grpcStatus",
        );
    } else {
        report.warn(at, "abort configured, but error type not set");
    }
}

const GRPC_STATUSES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

fn validate_fault_delay(delay: &HttpFaultDelay, at: &FieldPath, report: &mut Report) {
    if let Some(p) = &delay.percentage {
        report.check(&at.field("percentage"), validate_percentage(p));
    }
    if delay.fixed_delay.is_some() && delay.exponential_delay.is_some() {
        report.error(at, "set only one of fixedDelay and exponentialDelay");
    }
    if let Some(d) = &delay.fixed_delay {
        report.check(&at.field("fixedDelay"), validate_duration(d));
    } else if let Some(d) = &delay.exponential_delay {
        let d_at = at.field("exponentialDelay");
        report.check(&d_at, validate_duration(d));
        report.error(&d_at, "exponentialDelay not supported yet: use fixedDelay");
    }
}

/// HTTP status for aborts and direct responses: 200..=600, as Istio checks.
fn validate_http_status(status: i32) -> Result<(), String> {
    if (200..=600).contains(&status) {
        Ok(())
    } else {
        Err(format!("HTTP status {status} is not in range 200-599"))
    }
}

/// Istio's `validatePercentage`: 0, or within [0.0001, 100].
fn validate_percentage(p: &Percent) -> Result<(), String> {
    let v = p.value;
    if !(0.0..=100.0).contains(&v) || (v > 0.0 && v < 0.0001) {
        return Err(format!(
            "percentage {v} is neither 0.0, nor in range [0.0001, 100.0]"
        ));
    }
    Ok(())
}

fn validate_mirror_percentage(p: &Percent, name: &str, at: &FieldPath, report: &mut Report) {
    if p.value > 100.0 {
        report.error(
            at,
            format!(
                "{name} must have a max value of 100 (it has {:.6})",
                p.value
            ),
        );
    }
    if p.value < 0.0 {
        report.error(
            at,
            format!("{name} must have a min value of 0 (it has {:.6})", p.value),
        );
    }
}

fn validate_mirrors(mirrors: &[HttpMirrorPolicy], at: &FieldPath, report: &mut Report) {
    for (i, mirror) in mirrors.iter().enumerate() {
        let m_at = at.index(i);
        let Some(dest) = &mirror.destination else {
            report.error(
                &m_at.field("destination"),
                "destination is required for mirrors",
            );
            continue;
        };
        validate_destination(dest, &m_at.field("destination"), report);
        if let Some(p) = &mirror.percentage {
            validate_mirror_percentage(p, "mirror percentage", &m_at.field("percentage"), report);
        }
    }
}

/// Istio's `validateHTTPRedirect` (which reports the first problem only).
fn validate_redirect(r: &HttpRedirect) -> Result<(), String> {
    let port_set = r.port.is_some_and(|p| p != 0) || r.derive_port.is_some();
    if r.uri.is_empty()
        && r.authority.is_empty()
        && !port_set
        && r.scheme.is_empty()
        && r.prefix_rewrite.is_empty()
    {
        return Err("redirect must specify URI, authority, scheme, port, or prefix rewrite".into());
    }
    if !r.uri.is_empty() && !r.prefix_rewrite.is_empty() {
        return Err("redirect may set only one of uri and prefixRewrite".into());
    }
    if r.port.is_some_and(|p| p != 0) && r.derive_port.is_some() {
        return Err("redirect may set only one of port and derivePort".into());
    }
    if r.redirect_code != 0 && !(300..=399).contains(&r.redirect_code) {
        return Err(format!(
            "{} is not a valid redirect code, must be 3xx",
            r.redirect_code
        ));
    }
    if !r.scheme.is_empty() && r.scheme != "http" && r.scheme != "https" {
        return Err(r#"invalid redirect scheme, must be "http" or "https""#.into());
    }
    if let Some(port) = r.port.filter(|p| *p > 0) {
        validate_port(i64::from(port))?;
    }
    Ok(())
}

/// Istio's `validateHTTPDirectResponse`.
fn validate_direct_response(d: &HttpDirectResponse, at: &FieldPath, report: &mut Report) {
    if let Some(body) = &d.body {
        let b_at = at.field("body");
        if body.string.is_some() && body.bytes.is_some() {
            report.error(&b_at, "set only one of string and bytes");
        }
        let size = match (&body.string, &body.bytes) {
            (Some(s), _) => Some(s.len()),
            (None, Some(b)) => match base64_decoded_len(b) {
                Some(n) => Some(n),
                None => {
                    report.error(
                        &b_at.field("bytes"),
                        "bytes must be base64 (standard or URL-safe alphabet)",
                    );
                    None
                }
            },
            (None, None) => None,
        };
        match size {
            Some(n) if n > BODY_MAX_BYTES => report.error(
                &b_at,
                "large direct_responses may impact control plane performance, must be less \
                 than 1MB",
            ),
            Some(n) if n > BODY_WARN_BYTES => report.warn(
                &b_at,
                "large direct_responses may impact control plane performance",
            ),
            _ => {}
        }
    }
    let status = i32::try_from(d.status).unwrap_or(i32::MAX);
    report.check(&at.field("status"), validate_http_status(status));
}

/// The length of base64 data once decoded, or `None` if it is not base64. Accepts the standard
/// and URL-safe alphabets, with or without padding, as proto-JSON does.
fn base64_decoded_len(s: &str) -> Option<usize> {
    let trimmed = s.trim_end_matches('=');
    if s.len() - trimmed.len() > 2 {
        return None;
    }
    if !trimmed
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'-' | b'_'))
    {
        return None;
    }
    let n = trimmed.len();
    match n % 4 {
        1 => None,
        r => Some(n / 4 * 3 + r.saturating_sub(1)),
    }
}

/// Istio's `ValidateHTTPRetry`.
fn validate_retry(r: &HttpRetry, at: &FieldPath, report: &mut Report) {
    if r.attempts < 0 {
        report.error(&at.field("attempts"), "attempts cannot be negative");
    }
    if r.attempts == 0
        && (r.per_try_timeout.is_some()
            || !r.retry_on.is_empty()
            || r.retry_remote_localities.is_some())
    {
        report.error(
            &at.field("attempts"),
            "http retry policy configured when attempts are set to 0 (disabled): set attempts, \
             or remove perTryTimeout, retryOn and retryRemoteLocalities",
        );
    }
    if let Some(t) = &r.per_try_timeout {
        report.check(&at.field("perTryTimeout"), validate_duration(t));
    }
    if !r.retry_on.is_empty() {
        for policy in r.retry_on.split(',') {
            let status_ok = policy.parse::<u16>().is_ok_and(is_known_http_status);
            if !status_ok && !RETRY_ON_POLICIES.contains(&policy) {
                report.error(
                    &at.field("retryOn"),
                    format!(
                        "{policy:?} is not a valid retryOn policy: use HTTP status codes or \
                         {}",
                        RETRY_ON_POLICIES.join(", ")
                    ),
                );
            }
        }
    }
    if let Some(b) = &r.backoff {
        report.check(&at.field("backoff"), validate_duration(b));
    }
}

/// Envoy's `x-envoy-retry-on` and `x-envoy-retry-grpc-on` conditions.
const RETRY_ON_POLICIES: [&str; 16] = [
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "retriable-4xx",
    "refused-stream",
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

/// The status codes Go's `net/http` names (`http.StatusText` is not empty).
fn is_known_http_status(code: u16) -> bool {
    matches!(code,
        100..=103
        | 200..=208
        | 226
        | 300..=305
        | 307
        | 308
        | 400..=418
        | 421..=426
        | 428
        | 429
        | 431
        | 451
        | 500..=508
        | 510
        | 511)
}

/// Istio's `validateHTTPRewrite` (which reports the first problem only).
fn validate_rewrite(r: &HttpRewrite) -> Result<(), String> {
    if !r.uri.is_empty() && r.uri_regex_rewrite.is_some() {
        return Err("rewrite may only contain one of URI or UriRegexRewrite".into());
    }
    if r.uri.is_empty() && r.uri_regex_rewrite.is_none() && r.authority.is_empty() {
        return Err(
            "rewrite must specify at least one of URI, UriRegexRewrite, or authority. \
                    Only one of URI or UriRegexRewrite may be specified"
                .into(),
        );
    }
    if let Some(re) = &r.uri_regex_rewrite {
        validate_regex_rewrite(re).map_err(|e| format!("UriRegexRewrite has errors: {e}"))?;
    }
    Ok(())
}

fn validate_regex_rewrite(r: &RegexRewrite) -> Result<(), String> {
    if r.pattern.is_empty() || r.rewrite.is_empty() {
        return Err(
            "UriRegexRewrite requires both Rewrite and Match fields to be specified".into(),
        );
    }
    validate_regex(&r.pattern, "HTTPRewrite.UriRegexRewrite.Match")
}

/// Istio's `validateHTTPRouteDestinations`.
fn validate_http_route_destinations(
    routes: &[HttpRouteDestination],
    gateway_semantics: bool,
    at: &FieldPath,
    report: &mut Report,
) {
    let mut total: i64 = 0;
    for (i, r) in routes.iter().enumerate() {
        let r_at = at.index(i);
        validate_header_operations(r.headers.as_ref(), &r_at.field("headers"), report);
        validate_weighted_destination(
            r.destination.as_ref(),
            r.weight,
            gateway_semantics,
            &r_at,
            report,
        );
        total += i64::from(r.weight);
    }
    check_total_weight(routes.len(), total, at, report);
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::ObjectMeta;
    use crate::networking::virtual_service::{VirtualService, validate};

    fn check(spec: serde_json::Value) -> Report {
        let vs: VirtualService = serde_json::from_value(spec).unwrap();
        let mut report = Report::default();
        validate(
            &vs,
            &ObjectMeta::default(),
            &FieldPath::root("spec"),
            &mut report,
        );
        report
    }

    fn errors(spec: serde_json::Value) -> Vec<String> {
        check(spec).errors.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn header_values_follow_envoy_syntax() {
        assert!(validate_header_value("100%%").is_ok());
        assert!(validate_header_value("%HOSTNAME%").is_ok());
        assert!(validate_header_value("%REQ(x-foo)%").is_ok());
        assert!(validate_header_value("abcd%oijasodifj").is_err());
        assert!(validate_header_value("50%").is_err());
    }

    #[test]
    fn retries_and_redirects() {
        let e = errors(json!({"hosts": ["a"], "http": [{
            "route": [{"destination": {"host": "a"}}],
            "retries": {"attempts": 0, "retryOn": "5xx,bogus"}}]}));
        assert!(
            e.iter().any(|e| e.contains("attempts are set to 0")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|e| e.contains("\"bogus\" is not a valid retryOn")),
            "{e:?}"
        );
        assert!(
            validate_redirect(&HttpRedirect {
                redirect_code: 308,
                uri: "/x".into(),
                ..Default::default()
            })
            .is_ok()
        );
        assert!(validate_redirect(&HttpRedirect::default()).is_err());
        let e = errors(json!({"hosts": ["a"], "http": [{
            "match": [{"uri": {"exact": "/foo"}}], "redirect": {"prefixRewrite": "/bar"}}]}));
        assert!(e[0].contains("prefixRewrite"), "{e:?}");
    }

    #[test]
    fn direct_response_body_limits() {
        let big = "x".repeat(BODY_WARN_BYTES + 1);
        let r = check(
            json!({"hosts": ["a"], "http": [{"directResponse": {"status": 200, "body": {"string": big}}}]}),
        );
        assert!(r.is_ok() && !r.warnings.is_empty(), "{r:?}");
        let huge = "x".repeat(BODY_MAX_BYTES + 1);
        let r = check(
            json!({"hosts": ["a"], "http": [{"directResponse": {"status": 200, "body": {"string": huge}}}]}),
        );
        assert!(!r.is_ok());
        assert_eq!(base64_decoded_len("aGVsbG8="), Some(5));
        assert_eq!(base64_decoded_len("aGVsbG8"), Some(5));
        assert_eq!(base64_decoded_len("a!"), None);
    }
}
