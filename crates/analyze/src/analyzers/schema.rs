//! Validation of each resource on its own (Istio's `analyzers/schema`): Strait's typed model and
//! rules (`strait_api`, which follow Istio's CRD schemas and webhook), as IST0106 errors and
//! IST0133 warnings; the VirtualService rule warnings as IST0130 and IST0131.

use strait_api::parse::{Outcome, parse_value};

use super::analyzer;
use crate::context::Context;
use crate::message::{self as msg, Code, Message};

analyzer!(
    ValidationAnalyzer,
    "schema.ValidationAnalyzer",
    [
        msg::SCHEMA_VALIDATION_ERROR,
        msg::SCHEMA_WARNING,
        msg::VS_UNREACHABLE_RULE,
        msg::VS_INEFFECTIVE_MATCH
    ]
);

/// A validation warning as Istio's analysis reports it: unreachable VirtualService rules and
/// ineffective matches have their own codes (and Istio's wording); the rest are IST0133.
fn classify_warning(path: &str, message: &str) -> (Code, String, Option<String>) {
    if let Some(rest) = message.strip_prefix("virtualService rule ") {
        let (text, hint) = match rest.split_once("): ") {
            Some((t, h)) => (format!("{t})"), Some(h.to_string())),
            None => (rest.to_string(), None),
        };
        if text.contains("is not used (duplicate/overlapping match in rule") {
            return (
                msg::VS_INEFFECTIVE_MATCH,
                format!("VirtualService rule {text}."),
                hint,
            );
        }
        if text.contains(" not used (") {
            return (
                msg::VS_UNREACHABLE_RULE,
                format!("VirtualService rule {text}."),
                hint,
            );
        }
    }
    let at = if path.is_empty() {
        String::new()
    } else {
        format!("{path}: ")
    };
    (
        msg::SCHEMA_WARNING,
        format!("Schema validation warning: {at}{message}"),
        None,
    )
}

impl ValidationAnalyzer {
    fn run(&self, ctx: &mut Context<'_>) {
        let mut out = Vec::new();
        for o in ctx.objects() {
            if ctx.is_synthetic(o) {
                continue;
            }
            let api_version = if o.group.is_empty() {
                o.version.clone()
            } else {
                format!("{}/{}", o.group, o.version)
            };
            if strait_api::Kind::from_type(&api_version, &o.kind).is_err() {
                continue;
            }
            let source = strait_api::Source {
                file: o
                    .source
                    .as_ref()
                    .map(|s| s.file.clone())
                    .unwrap_or_default(),
                index: o.source.as_ref().map_or(0, |s| s.index),
            };
            let parsed = parse_value(source, o.raw.clone());
            let report = match &parsed.outcome {
                Outcome::Resource(r) => r.validate(),
                Outcome::Invalid(e) => {
                    let issue = e.to_issue();
                    out.push(error(o, &issue.path, &issue.message));
                    continue;
                }
                Outcome::Unsupported(_) => continue,
            };
            for e in &report.errors {
                out.push(error(o, &e.path, &e.message));
            }
            for w in &report.warnings {
                let (code, text, hint) = classify_warning(&w.path, &w.message);
                let mut m = Message::new(code, o, text);
                m.hint = hint;
                out.push(m);
            }
        }
        for m in out {
            ctx.report(m);
        }
    }
}

fn error(o: &crate::object::Object, path: &str, message: &str) -> Message {
    let at = if path.is_empty() {
        String::new()
    } else {
        format!("{path}: ")
    };
    Message::new(
        msg::SCHEMA_VALIDATION_ERROR,
        o,
        format!("Schema validation error: {at}{message}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The VirtualService warnings of `strait_api` keep the wording this maps to codes.
    #[test]
    fn maps_virtual_service_rule_warnings_to_istio_codes() {
        let vs = serde_json::json!({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "v", "namespace": "default"},
            "spec": {"hosts": ["a"], "http": [
                {"route": [{"destination": {"host": "a"}}]},
                {"route": [{"destination": {"host": "a"}}]},
                {"match": [{"uri": {"prefix": "/x"}}], "route": [{"destination": {"host": "a"}}]},
                {"match": [{"uri": {"prefix": "/x"}}], "route": [{"destination": {"host": "a"}}]},
                {"match": [{"uri": {"prefix": "/y"}}], "route": [{"destination": {"host": "a"}}]},
                {"match": [{"uri": {"prefix": "/yz"}}], "route": [{"destination": {"host": "a"}}]}
            ]}
        });
        let parsed = parse_value(
            strait_api::Source {
                file: "t".into(),
                index: 0,
            },
            vs,
        );
        let Outcome::Resource(r) = parsed.outcome else {
            panic!("{:?}", parsed.outcome)
        };
        let codes: Vec<&str> = r
            .validate()
            .warnings
            .iter()
            .map(|w| classify_warning(&w.path, &w.message).0.code)
            .collect();
        assert!(codes.contains(&"IST0130"), "{codes:?}");
        assert!(codes.contains(&"IST0131"), "{codes:?}");
        assert!(!codes.contains(&"IST0133"), "{codes:?}");
    }
}
