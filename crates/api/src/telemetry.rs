//! Telemetry (telemetry.istio.io): metrics, tracing and access logging settings.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::common::{PolicyTargetReference, WorkloadSelector};
use crate::security::authorization_policy::{check_dry_run_annotation, validate_policy_target};
use crate::validate::common::validate_duration;
use crate::{Duration, FieldPath, ObjectMeta, Report};

/// `spec` of a Telemetry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Telemetry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<PolicyTargetReference>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<PolicyTargetReference>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tracing: Vec<Tracing>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<Metrics>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_logging: Vec<AccessLogging>,
}

/// A named provider of the mesh config (`prometheus`, `otel`, `envoy`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProviderRef {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
}

/// Traffic direction relative to the workload.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[expect(non_camel_case_types)]
pub enum WorkloadMode {
    #[default]
    CLIENT_AND_SERVER,
    CLIENT,
    SERVER,
}

/// Selects traffic by direction (`match`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModeSelector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<WorkloadMode>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tracing {
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub match_: Option<ModeSelector>,
    /// At most one provider is supported.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<ProviderRef>,
    /// 0 to 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub random_sampling_percentage: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_span_reporting: Option<bool>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub custom_tags: BTreeMap<String, CustomTag>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_request_id_for_trace_sampling: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_istio_tags: Option<bool>,
}

/// A span tag: exactly one of a literal, an environment variable or a request header.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CustomTag {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub literal: Option<LiteralTag>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<NamedTag>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<NamedTag>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LiteralTag {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
}

/// An environment variable or request header, with a value for when it is missing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamedTag {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub default_value: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metrics {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<ProviderRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<MetricsOverrides>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reporting_interval: Option<Duration>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricsOverrides {
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub match_: Option<MetricSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tag_overrides: BTreeMap<String, TagOverride>,
}

/// A metric by its Istio name or a custom name (one of them), and the direction.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricSelector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<IstioMetric>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_metric: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<WorkloadMode>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[expect(non_camel_case_types)]
pub enum IstioMetric {
    ALL_METRICS,
    REQUEST_COUNT,
    REQUEST_DURATION,
    REQUEST_SIZE,
    RESPONSE_SIZE,
    TCP_OPENED_CONNECTIONS,
    TCP_CLOSED_CONNECTIONS,
    TCP_SENT_BYTES,
    TCP_RECEIVED_BYTES,
    GRPC_REQUEST_MESSAGES,
    GRPC_RESPONSE_MESSAGES,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TagOverride {
    /// UPSERT when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<TagOperation>,
    /// A CEL expression; required for UPSERT, not allowed for REMOVE.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum TagOperation {
    #[default]
    UPSERT,
    REMOVE,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessLogging {
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub match_: Option<ModeSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<ProviderRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<AccessLogFilter>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessLogFilter {
    /// A CEL expression selecting the requests or connections to log.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub expression: String,
}

/// Checks a Telemetry on its own, as Istio's validating webhook does.
pub fn validate(spec: &Telemetry, meta: &ObjectMeta, at: &FieldPath, report: &mut Report) {
    check_dry_run_annotation(meta, None, report);
    validate_policy_target(
        spec.selector.as_ref(),
        spec.target_ref.as_ref(),
        &spec.target_refs,
        at,
        report,
    );
    validate_metrics(&spec.metrics, &at.field("metrics"), report);
    validate_tracing(&spec.tracing, &at.field("tracing"), report);
    for (i, l) in spec.access_logging.iter().enumerate() {
        let l_at = at.field("accessLogging").index(i);
        if let Some(f) = &l.filter {
            report.check(
                &l_at.field("filter").field("expression"),
                check_cel_syntax(&f.expression),
            );
        }
        validate_providers(&l.providers, &l_at.field("providers"), report);
    }
}

fn validate_providers(providers: &[ProviderRef], at: &FieldPath, report: &mut Report) {
    if let Some(i) = providers.iter().position(|p| p.name.is_empty()) {
        report.error(
            &at.index(i).field("name"),
            "providers.name may not be empty: name a provider of the mesh config",
        );
    }
}

fn validate_tracing(tracing: &[Tracing], at: &FieldPath, report: &mut Report) {
    if tracing.len() > 1 {
        report.warn(at, "multiple tracing is not currently supported");
    }
    for (i, t) in tracing.iter().enumerate() {
        let t_at = at.index(i);
        if t.providers.len() > 1 {
            report.warn(
                &t_at.field("providers"),
                "multiple providers is not currently supported",
            );
        }
        validate_providers(&t.providers, &t_at.field("providers"), report);
        if t.random_sampling_percentage
            .is_some_and(|p| !(0.0..=100.0).contains(&p))
        {
            report.error(
                &t_at.field("randomSamplingPercentage"),
                "randomSamplingPercentage must be in range [0.0, 100.0]",
            );
        }
        for (name, tag) in &t.custom_tags {
            let tag_at = t_at.field("customTags").key(name);
            if name.is_empty() {
                report.error(&tag_at, "tag name may not be empty");
            }
            let kinds = usize::from(tag.literal.is_some())
                + usize::from(tag.environment.is_some())
                + usize::from(tag.header.is_some());
            if kinds > 1 {
                report.error(
                    &tag_at,
                    "set only one of literal, environment or header in a custom tag",
                );
            }
            if tag.literal.as_ref().is_some_and(|l| l.value.is_empty()) {
                report.error(
                    &tag_at.field("literal").field("value"),
                    "literal tag value may not be empty",
                );
            }
            if tag.header.as_ref().is_some_and(|h| h.name.is_empty()) {
                report.error(
                    &tag_at.field("header").field("name"),
                    "header tag name may not be empty",
                );
            }
            if tag.environment.as_ref().is_some_and(|e| e.name.is_empty()) {
                report.error(
                    &tag_at.field("environment").field("name"),
                    "environment tag name may not be empty",
                );
            }
        }
    }
}

fn validate_metrics(metrics: &[Metrics], at: &FieldPath, report: &mut Report) {
    for (i, m) in metrics.iter().enumerate() {
        let m_at = at.index(i);
        validate_providers(&m.providers, &m_at.field("providers"), report);
        if let Some(d) = &m.reporting_interval {
            report.check(&m_at.field("reportingInterval"), validate_duration(d));
        }
        for (j, o) in m.overrides.iter().enumerate() {
            let o_at = m_at.field("overrides").index(j);
            for (name, to) in &o.tag_overrides {
                let to_at = o_at.field("tagOverrides").key(name);
                if name.is_empty() {
                    report.warn(&to_at, "tagOverrides.name may not be empty");
                }
                match to.operation.unwrap_or_default() {
                    TagOperation::UPSERT if to.value.is_empty() => report.error(
                        &to_at.field("value"),
                        "tagOverrides.value must be set when operation is UPSERT",
                    ),
                    TagOperation::REMOVE if !to.value.is_empty() => report.error(
                        &to_at.field("value"),
                        "tagOverrides.value may only be set when operation is UPSERT",
                    ),
                    _ => {}
                }
            }
            if let Some(sel) = &o.match_ {
                let sel_at = o_at.field("match");
                if sel.metric.is_some() && sel.custom_metric.is_some() {
                    report.error(&sel_at, "set only one of metric or customMetric");
                }
                if sel.custom_metric.as_deref() == Some("") {
                    report.error(
                        &sel_at.field("customMetric"),
                        "customMetric may not be empty",
                    );
                }
            }
        }
    }
}

/// A light syntax check of a CEL expression: not empty, string literals closed, brackets
/// balanced, no dangling operator. Istio parses the expression fully; Strait catches the common
/// slips without a CEL parser.
fn check_cel_syntax(expr: &str) -> Result<(), String> {
    let fail = |why: &str| Err(format!("must be a valid CEL expression, {why}"));
    let trimmed = expr.trim();
    if trimmed.is_empty() {
        return fail("the expression is empty");
    }
    let mut stack = Vec::new();
    let mut chars = trimmed.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' => {
                let mut closed = false;
                while let Some(d) = chars.next() {
                    if d == '\\' {
                        chars.next();
                    } else if d == c {
                        closed = true;
                        break;
                    }
                }
                if !closed {
                    return fail("a string literal is not closed");
                }
            }
            '(' | '[' | '{' => stack.push(c),
            ')' | ']' | '}' => {
                let open = match c {
                    ')' => '(',
                    ']' => '[',
                    _ => '{',
                };
                if stack.pop() != Some(open) {
                    return fail(&format!("unbalanced {c:?}"));
                }
            }
            _ => {}
        }
    }
    if let Some(open) = stack.last() {
        return fail(&format!("{open:?} is not closed"));
    }
    if trimmed.ends_with([
        '&', '|', '=', '<', '>', '+', '-', '*', '/', '%', '!', '.', ',', '?', ':',
    ]) {
        return fail("the expression ends with an operator");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(spec: serde_json::Value) -> Report {
        let spec: Telemetry = serde_json::from_value(spec).unwrap();
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
    fn tag_overrides_follow_the_operation() {
        assert!(check(serde_json::json!({"metrics": [{"overrides": [{"tagOverrides": {"foo": {"value": "request.method"}}}]}]})).is_ok());
        assert!(!check(serde_json::json!({"metrics": [{"overrides": [{"tagOverrides": {"foo": {"operation": "UPSERT"}}}]}]})).is_ok());
        assert!(!check(serde_json::json!({"metrics": [{"overrides": [{"tagOverrides": {"foo": {"operation": "REMOVE", "value": "x"}}}]}]})).is_ok());
        assert!(
            !check(
                serde_json::json!({"metrics": [{"overrides": [{"match": {"customMetric": ""}}]}]})
            )
            .is_ok()
        );
    }

    #[test]
    fn providers_sampling_and_filters() {
        let r = check(serde_json::json!({"metrics": [{"providers": [{"name": ""}]}]}));
        assert_eq!(r.errors[0].path, "spec.metrics[0].providers[0].name");
        assert!(
            !check(serde_json::json!({"tracing": [{"randomSamplingPercentage": 101.0}]})).is_ok()
        );
        assert!(check(serde_json::json!({"accessLogging": [{"filter": {"expression": "response.code >= 400 && request.url_path.startsWith('/api')"}}]})).is_ok());
        assert!(!check(serde_json::json!({"accessLogging": [{"filter": {"expression": "response.code >= (400"}}]})).is_ok());
    }
}
