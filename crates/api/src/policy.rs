//! Strait's own policy kinds (`policy.strait.dev`), for what Istio has no kind for.
//!
//! `LocalRateLimit` (`policy.strait.dev/v1`): local rate limiting as a first-class resource
//! (Istio needs an EnvoyFilter for it). It selects workloads as Istio's policies do (a
//! `selector` in the workload's namespace, or without one the whole namespace; in the root
//! namespace, the whole mesh) and gives a token bucket for all the HTTP requests the workload
//! receives and/or one per route match:
//!
//! ```yaml
//! apiVersion: policy.strait.dev/v1
//! kind: LocalRateLimit
//! metadata: {name: reviews, namespace: default}
//! spec:
//!   selector: {matchLabels: {app: reviews}}
//!   tokenBucket: {maxTokens: 100, tokensPerFill: 100, fillInterval: 1s}
//!   rules:
//!   - match: {uri: {prefix: /admin}, method: {exact: POST}}
//!     tokenBucket: {maxTokens: 5, tokensPerFill: 5, fillInterval: 1s}
//!   status: 429
//!   responseHeaders: {x-rate-limited: "true"}
//!   ports: [9080]
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::common::WorkloadSelector;
use crate::networking::virtual_service::{StringMatch, validate_string_match};
use crate::security::authorization_policy::validate_workload_selector;
use crate::{Duration, FieldPath, ObjectMeta, Report};

/// `spec` of a LocalRateLimit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalRateLimit {
    /// The workloads (sidecars and gateways) by their labels; none: every workload of the
    /// namespace (of the mesh, in the root namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// The bucket every request to the workload takes a token from, unless a rule matches it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_bucket: Option<TokenBucket>,
    /// Buckets per route match: the first rule whose `match` a request meets decides its
    /// bucket (instead of `tokenBucket`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RateLimitRule>,
    /// The status of a limited request's answer; 429 when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u32>,
    /// Headers added to a limited request's answer.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub response_headers: BTreeMap<String, String>,
    /// The workload's inbound ports it applies to (sidecars: the service target ports;
    /// gateways: the listener ports); none: every HTTP port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u32>,
}

/// A token bucket: it holds at most `maxTokens` (and starts full), gets `tokensPerFill` more
/// every `fillInterval` (spread over the interval, as Envoy refills), and each request takes one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenBucket {
    #[serde(default)]
    pub max_tokens: u32,
    /// `maxTokens` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_fill: Option<u32>,
    pub fill_interval: Duration,
}

impl TokenBucket {
    pub fn tokens_per_fill(&self) -> u32 {
        self.tokens_per_fill.unwrap_or(self.max_tokens)
    }
}

/// A bucket for the requests a match selects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitRule {
    #[serde(rename = "match")]
    pub match_: RequestMatch,
    pub token_bucket: TokenBucket,
}

/// Conditions on a request, as in a VirtualService's `match` (all that are set must hold).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestMatch {
    /// The path (without query string): `exact`, `prefix` or `regex`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<StringMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<StringMatch>,
    /// Request headers, by lower-case name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, StringMatch>,
}

/// The status a limited request gets when none is given.
pub const DEFAULT_STATUS: u32 = 429;

/// The 4xx and 5xx statuses Envoy's `HttpStatus` can carry.
const ENVOY_STATUSES: &[u32] = &[
    400, 401, 402, 403, 404, 405, 406, 407, 408, 409, 410, 411, 412, 413, 414, 415, 416, 417, 421,
    422, 423, 424, 426, 428, 429, 431, 500, 501, 502, 503, 504, 505, 506, 507, 508, 510, 511,
];

fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Checks a LocalRateLimit on its own.
pub fn validate(spec: &LocalRateLimit, _meta: &ObjectMeta, at: &FieldPath, report: &mut Report) {
    validate_workload_selector(spec.selector.as_ref(), &at.field("selector"), report);
    if spec.token_bucket.is_none() && spec.rules.is_empty() {
        report.error(
            at,
            "a LocalRateLimit limits nothing without a bucket: set tokenBucket (every request) \
             and/or rules (requests that match)",
        );
    }
    if let Some(b) = &spec.token_bucket {
        validate_bucket(b, &at.field("tokenBucket"), report);
    }
    for (i, rule) in spec.rules.iter().enumerate() {
        let r_at = at.field("rules").index(i);
        validate_bucket(&rule.token_bucket, &r_at.field("tokenBucket"), report);
        let m = &rule.match_;
        let m_at = r_at.field("match");
        if m.uri.is_none() && m.method.is_none() && m.headers.is_empty() {
            report.error(
                &m_at,
                "a rule needs a match: set uri, method and/or headers (for every request, use \
                 spec.tokenBucket)",
            );
        }
        if let Some(uri) = &m.uri {
            validate_string_match(uri, "uri", &m_at.field("uri"), report);
        }
        if let Some(method) = &m.method {
            validate_string_match(method, "method", &m_at.field("method"), report);
        }
        for (name, sm) in &m.headers {
            let h_at = m_at.field("headers").key(name);
            if !is_header_name(name) {
                report.error(
                    &h_at,
                    format!(
                        "header name {name:?} is not valid: use letters, digits, '-' and '_' \
                         (for the method or path, use method or uri)"
                    ),
                );
            }
            validate_string_match(sm, "headers", &h_at, report);
        }
    }
    if let Some(status) = spec.status
        && !ENVOY_STATUSES.contains(&status)
    {
        report.error(
            &at.field("status"),
            format!(
                "status {status} is not one a rate limit can answer with: use a 4xx or 5xx \
                 status such as 429 (the default) or 503"
            ),
        );
    }
    for (name, value) in &spec.response_headers {
        let h_at = at.field("responseHeaders").key(name);
        if !is_header_name(name) {
            report.error(
                &h_at,
                format!("header name {name:?} is not valid: use letters, digits, '-' and '_'"),
            );
        } else if name.eq_ignore_ascii_case("host") || name.starts_with(':') {
            report.error(
                &h_at,
                format!("header {name:?} cannot be set on a response"),
            );
        }
        if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            report.error(
                &h_at,
                "header value may not hold CR, LF or NUL: write it on one line",
            );
        }
    }
    for (i, port) in spec.ports.iter().enumerate() {
        if !(1..=65535).contains(port) {
            report.error(
                &at.field("ports").index(i),
                format!("port {port} must be in the range 1..65535"),
            );
        }
    }
}

fn validate_bucket(b: &TokenBucket, at: &FieldPath, report: &mut Report) {
    if b.max_tokens == 0 {
        report.error(
            &at.field("maxTokens"),
            "maxTokens must be at least 1: it is the most requests let through at once",
        );
    }
    if b.tokens_per_fill == Some(0) {
        report.error(
            &at.field("tokensPerFill"),
            "tokensPerFill must be at least 1 (leave it out to refill maxTokens each interval)",
        );
    }
    // Envoy refuses a fill interval under 50 ms.
    let nanos = b.fill_interval.as_nanos();
    if nanos < 50_000_000 {
        report.error(
            &at.field("fillInterval"),
            format!(
                "fillInterval {} is too short: it must be at least 50ms (write it like \"1s\" \
                 or \"100ms\")",
                b.fill_interval
            ),
        );
    } else if nanos % 1_000_000 != 0 {
        report.error(
            &at.field("fillInterval"),
            format!(
                "fillInterval {}: only whole milliseconds are supported",
                b.fill_interval
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(spec: serde_json::Value) -> Report {
        let spec: LocalRateLimit = serde_json::from_value(spec).unwrap();
        let mut r = Report::default();
        validate(
            &spec,
            &ObjectMeta::default(),
            &FieldPath::root("spec"),
            &mut r,
        );
        r
    }

    #[test]
    fn a_bucket_for_the_workload_or_per_match() {
        assert!(
            check(
                serde_json::json!({"selector": {"matchLabels": {"app": "a"}},
            "tokenBucket": {"maxTokens": 10, "fillInterval": "1s"}})
            )
            .is_ok()
        );
        assert!(
            check(
                serde_json::json!({"rules": [{"match": {"uri": {"prefix": "/api"},
            "method": {"exact": "POST"}, "headers": {"x-user": {"exact": "a"}}},
            "tokenBucket": {"maxTokens": 1, "tokensPerFill": 1, "fillInterval": "100ms"}}],
            "status": 503, "responseHeaders": {"x-limited": "yes"}, "ports": [9080]})
            )
            .is_ok()
        );
    }

    #[test]
    fn errors_name_the_field_and_the_fix() {
        let r = check(serde_json::json!({}));
        assert!(r.errors[0].message.contains("set tokenBucket"), "{r:?}");
        let r = check(
            serde_json::json!({"tokenBucket": {"maxTokens": 0, "tokensPerFill": 0, "fillInterval": "10ms"}}),
        );
        let paths: Vec<&str> = r.errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "spec.tokenBucket.maxTokens",
                "spec.tokenBucket.tokensPerFill",
                "spec.tokenBucket.fillInterval"
            ]
        );
        let r = check(serde_json::json!({"rules": [{"match": {},
            "tokenBucket": {"maxTokens": 1, "fillInterval": "1s"}}], "status": 200,
            "ports": [0], "responseHeaders": {"bad header": "x"}}));
        let paths: Vec<&str> = r.errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "spec.rules[0].match",
                "spec.status",
                "spec.responseHeaders[bad header]",
                "spec.ports[0]"
            ],
            "{r:?}"
        );
        let r = check(
            serde_json::json!({"rules": [{"match": {"uri": {"regex": "("}},
            "tokenBucket": {"maxTokens": 1, "fillInterval": "1s"}}]}),
        );
        assert_eq!(r.errors[0].path, "spec.rules[0].match.uri");
    }
}
