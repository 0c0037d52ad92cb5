//! Route policies, as Istio translates them: timeouts, retries, consistent-hash policies,
//! redirects, fault injection and CORS.

use envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent;
use envoy_types::pb::envoy::config::route::v3::{
    RedirectAction, RetryPolicy, RouteAction, redirect_action, retry_policy, route, route_action,
};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::{FaultDelay, fault_delay};
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::CorsPolicy as EnvoyCors;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{
    FaultAbort, HttpFault, fault_abort,
};
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use envoy_types::pb::envoy::extensions::retry::priority::previous_priorities::v3::PreviousPrioritiesConfig;
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, fractional_percent::DenominatorType};
use envoy_types::util::pack_any;
use strait_api::networking::virtual_service::{
    AbortError, CorsPolicy, HttpFaultInjection, HttpRedirect, HttpRetry, Percent,
    RedirectPortSelection, UnmatchedPreflights,
};

use super::filters::{bool_value, duration, u32_value};
use super::matchers::string_matcher as to_string_matcher;

/// Istio's retry conditions when a route sets none.
pub(super) const DEFAULT_RETRY_ON: &str =
    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";
/// Istio's retries when a route sets none.
pub(super) const DEFAULT_RETRIES: u32 = 2;

/// Istio's timeouts: the route's, else none (0 disables Envoy's 15 s default); gRPC's
/// `grpc-timeout` header is honoured up to the same limit.
///
/// A route with `max_stream_duration` makes Envoy use its stream-duration timeouts and ignore
/// `timeout`, so the limit goes in both places, as Istio does.
pub(super) fn set_timeout(action: &mut RouteAction, nanos: Option<i128>) {
    let timeout = duration(nanos.unwrap_or(0));
    action.max_stream_duration = Some(stream_duration_limit(timeout));
    action.timeout = Some(timeout);
}

/// The request may last `limit` (0: without limit), and a request's `grpc-timeout` header is
/// honoured up to the same limit.
pub(super) fn stream_duration_limit(
    limit: envoy_types::pb::google::protobuf::Duration,
) -> route_action::MaxStreamDuration {
    route_action::MaxStreamDuration {
        max_stream_duration: Some(limit),
        grpc_timeout_header_max: Some(limit),
        ..Default::default()
    }
}

pub(super) fn hundred(p: u32) -> FractionalPercent {
    FractionalPercent {
        numerator: p,
        denominator: DenominatorType::Hundred as i32,
    }
}

pub(super) fn million(p: &Percent) -> FractionalPercent {
    FractionalPercent {
        numerator: (p.value * 10_000.0).clamp(0.0, 1_000_000.0) as u32,
        denominator: DenominatorType::Million as i32,
    }
}

/// Istio's retry policy: its default (2 retries on connect failures, refused streams,
/// `unavailable`, `cancelled` and 503), overridden by the route's `retries`.
pub(super) fn retry_policy_for(retries: Option<&HttpRetry>, consistent_hash: bool) -> RetryPolicy {
    let previous_hosts = retry_policy::RetryHostPredicate {
        name: "envoy.retry_host_predicates.previous_hosts".to_string(),
        config_type: Some(retry_policy::retry_host_predicate::ConfigType::TypedConfig(
            pack_any(PreviousHostsPredicate {}),
        )),
    };
    let mut out = RetryPolicy {
        retry_on: DEFAULT_RETRY_ON.to_string(),
        num_retries: Some(u32_value(DEFAULT_RETRIES)),
        retriable_status_codes: vec![503],
        host_selection_retry_max_attempts: 5,
        retry_host_predicate: if consistent_hash {
            Vec::new()
        } else {
            vec![previous_hosts.clone()]
        },
        ..Default::default()
    };
    let Some(r) = retries else { return out };
    out.num_retries = Some(u32_value(u32::try_from(r.attempts).unwrap_or(0)));
    if !r.retry_on.is_empty() {
        let (mut on, mut codes) = (Vec::new(), Vec::new());
        for part in r
            .retry_on
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            match part.parse::<u32>() {
                Ok(code) if (100..600).contains(&code) => codes.push(code),
                _ => on.push(part),
            }
        }
        out.retry_on = on.join(",");
        if !codes.is_empty() && !out.retry_on.contains("retriable-status-codes") {
            out.retry_on.push_str(",retriable-status-codes");
        }
        out.retriable_status_codes = codes;
    }
    if let Some(t) = &r.per_try_timeout {
        out.per_try_timeout = Some(duration(t.as_nanos()));
    }
    if let Some(ignore) = r.retry_ignore_previous_hosts {
        out.retry_host_predicate = if ignore {
            vec![previous_hosts]
        } else {
            Vec::new()
        };
    }
    if r.retry_remote_localities == Some(true) {
        out.retry_priority = Some(retry_policy::RetryPriority {
            name: "envoy.retry_priorities.previous_priorities".to_string(),
            config_type: Some(retry_policy::retry_priority::ConfigType::TypedConfig(
                pack_any(PreviousPrioritiesConfig {
                    update_frequency: 2,
                }),
            )),
        });
    }
    if let Some(b) = &r.backoff {
        out.retry_back_off = Some(retry_policy::RetryBackOff {
            base_interval: Some(duration(b.as_nanos())),
            ..Default::default()
        });
    }
    out
}

pub(super) fn redirect_action_for(r: &HttpRedirect, port: u16) -> Option<route::Action> {
    use redirect_action::{PathRewriteSpecifier, RedirectResponseCode, SchemeRewriteSpecifier};
    let code = match r.redirect_code {
        0 | 301 => RedirectResponseCode::MovedPermanently,
        302 => RedirectResponseCode::Found,
        303 => RedirectResponseCode::SeeOther,
        307 => RedirectResponseCode::TemporaryRedirect,
        308 => RedirectResponseCode::PermanentRedirect,
        other => {
            tracing::warn!(
                code = other,
                "redirect code not supported by Envoy; route dropped"
            );
            return None;
        }
    };
    let path = if !r.prefix_rewrite.is_empty() {
        Some(PathRewriteSpecifier::PrefixRewrite(
            r.prefix_rewrite.clone(),
        ))
    } else {
        Some(PathRewriteSpecifier::PathRedirect(r.uri.clone()))
    };
    let mut out = RedirectAction {
        host_redirect: r.authority.clone(),
        response_code: code as i32,
        path_rewrite_specifier: path,
        scheme_rewrite_specifier: (!r.scheme.is_empty())
            .then(|| SchemeRewriteSpecifier::SchemeRedirect(r.scheme.clone())),
        ..Default::default()
    };
    let port_set = r.port.is_some_and(|p| p != 0) || r.derive_port.is_some();
    if port_set {
        out.port_redirect = match (r.port, r.derive_port) {
            (Some(p), _) if p != 0 => p,
            (_, Some(RedirectPortSelection::FromRequestPort)) => u32::from(port),
            _ => 0,
        };
        let scheme = if r.scheme.is_empty() {
            "http"
        } else {
            r.scheme.as_str()
        };
        if (out.port_redirect == 80 && scheme == "http")
            || (out.port_redirect == 443 && scheme == "https")
        {
            out.port_redirect = 0;
        }
    }
    Some(route::Action::Redirect(out))
}

const GRPC_CODES: [&str; 17] = [
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

/// Istio's fault → Envoy's per-route `HTTPFault`; `None` when nothing supported is left.
pub(super) fn translate_fault(f: &HttpFaultInjection) -> Option<HttpFault> {
    let delay = f.delay.as_ref().and_then(|d| {
        let fixed = d.fixed_delay.as_ref()?;
        Some(FaultDelay {
            percentage: Some(match &d.percentage {
                Some(p) => million(p),
                None => hundred(u32::try_from(d.percent).unwrap_or(0)),
            }),
            fault_delay_secifier: Some(fault_delay::FaultDelaySecifier::FixedDelay(duration(
                fixed.as_nanos(),
            ))),
        })
    });
    let abort = f.abort.as_ref().and_then(|a| {
        let error = match a.error()? {
            AbortError::HttpStatus(s) => fault_abort::ErrorType::HttpStatus(u32::try_from(s).ok()?),
            AbortError::GrpcStatus(name) => fault_abort::ErrorType::GrpcStatus(
                u32::try_from(GRPC_CODES.iter().position(|c| *c == name)?).ok()?,
            ),
            AbortError::Http2Error(_) => return None,
        };
        Some(FaultAbort {
            percentage: a.percentage.as_ref().map(million),
            error_type: Some(error),
            ..Default::default()
        })
    });
    if delay.is_none() && abort.is_none() {
        return None;
    }
    Some(HttpFault {
        delay,
        abort,
        ..Default::default()
    })
}

pub(super) fn translate_cors(c: &CorsPolicy) -> EnvoyCors {
    let origins = if !c.allow_origins.is_empty() {
        c.allow_origins
            .iter()
            .filter_map(to_string_matcher)
            .collect()
    } else {
        c.allow_origin
            .iter()
            .map(|o| StringMatcher {
                match_pattern: Some(string_matcher::MatchPattern::Exact(o.clone())),
                ..Default::default()
            })
            .collect()
    };
    EnvoyCors {
        allow_origin_string_match: origins,
        allow_methods: c.allow_methods.join(","),
        allow_headers: c.allow_headers.join(","),
        expose_headers: c.expose_headers.join(","),
        max_age: c
            .max_age
            .as_ref()
            .map(|d| (d.as_nanos() / 1_000_000_000).to_string())
            .unwrap_or_default(),
        allow_credentials: c.allow_credentials.map(bool_value),
        filter_enabled: Some(RuntimeFractionalPercent {
            default_value: Some(hundred(100)),
            ..Default::default()
        }),
        forward_not_matching_preflights: Some(bool_value(
            c.unmatched_preflights != Some(UnmatchedPreflights::Ignore),
        )),
        ..Default::default()
    }
}

/// Standard or URL-safe base64, padding optional (validation has checked the alphabet).
pub(super) fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut bits: u32 = 0;
    let mut n = 0;
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        bits = (bits << 6) | u32::from(v);
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_bodies_decode() {
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("aGVsbG8").unwrap(), b"hello");
        assert_eq!(base64_decode("_-8").unwrap(), [0xff, 0xef]);
        assert!(base64_decode("a!").is_none());
    }

    #[test]
    fn retry_on_status_codes_go_to_retriable_status_codes() {
        let r: strait_api::networking::virtual_service::HttpRetry =
            serde_json::from_value(serde_json::json!({
                "attempts": 3, "perTryTimeout": "2s", "retryOn": "gateway-error,503,reset",
                "retryRemoteLocalities": true
            }))
            .unwrap();
        let p = retry_policy_for(Some(&r), false);
        assert_eq!(p.num_retries, Some(u32_value(3)));
        assert_eq!(p.retry_on, "gateway-error,reset,retriable-status-codes");
        assert_eq!(p.retriable_status_codes, [503]);
        assert_eq!(p.per_try_timeout, Some(duration(2_000_000_000)));
        assert_eq!(p.retry_host_predicate.len(), 1);
        assert!(p.retry_priority.is_some());
        let d = retry_policy_for(None, true);
        assert_eq!(d.retry_on, DEFAULT_RETRY_ON);
        assert!(d.retry_host_predicate.is_empty());
    }
}
