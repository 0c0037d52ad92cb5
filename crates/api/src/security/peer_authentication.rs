//! PeerAuthentication: mutual TLS mode for workloads.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::authorization_policy::{check_dry_run_annotation, validate_workload_selector};
use crate::common::WorkloadSelector;
use crate::{FieldPath, ObjectMeta, Report};

/// `spec` of a PeerAuthentication.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthentication {
    /// Workloads the policy applies to; the whole namespace (or mesh, in the root namespace)
    /// when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<MutualTls>,
    /// Per-port settings, keyed by the workload's (container) port number. Requires a selector.
    /// `None` and `Some(empty)` differ: Istio refuses an explicitly empty map.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_level_mtls: Option<BTreeMap<u32, MutualTls>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MutualTls {
    /// UNSET inherits from the parent (namespace, then mesh); the mesh default is PERMISSIVE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<MtlsMode>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MtlsMode {
    #[default]
    UNSET,
    DISABLE,
    PERMISSIVE,
    STRICT,
}

/// Checks a PeerAuthentication on its own, as Istio's validating webhook does.
pub fn validate(spec: &PeerAuthentication, meta: &ObjectMeta, at: &FieldPath, report: &mut Report) {
    check_dry_run_annotation(meta, None, report);
    let ports_at = at.field("portLevelMtls");
    let no_labels = spec
        .selector
        .as_ref()
        .is_none_or(|s| s.match_labels.is_empty());
    if let Some(ports) = &spec.port_level_mtls {
        if no_labels && !ports.is_empty() {
            report.error(
                &ports_at,
                "mesh/namespace peer authentication cannot have port level mTLS: \
                 add a selector with matchLabels, or move the ports to a workload policy",
            );
        }
        if ports.is_empty() {
            report.error(
                &ports_at,
                "port level mTLS, if defined, must have at least one element",
            );
        }
        for port in ports.keys() {
            if *port == 0 || *port > 65535 {
                report.error(
                    &ports_at.key(&port.to_string()),
                    format!("port must be in range 1..65535, found {port}"),
                );
            }
        }
    }
    validate_workload_selector(spec.selector.as_ref(), &at.field("selector"), report);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(spec: serde_json::Value) -> Report {
        let spec: PeerAuthentication = serde_json::from_value(spec).unwrap();
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
    fn port_level_mtls_needs_a_selector_and_valid_ports() {
        assert!(
            check(
                serde_json::json!({"selector": {"matchLabels": {"app": "a"}},
                "portLevelMtls": {"8080": {"mode": "DISABLE"}}})
            )
            .is_ok()
        );
        assert!(!check(serde_json::json!({"portLevelMtls": {"8080": {"mode": "STRICT"}}})).is_ok());
        assert!(
            !check(
                serde_json::json!({"selector": {"matchLabels": {"app": "a"}}, "portLevelMtls": {}})
            )
            .is_ok()
        );
        let r = check(
            serde_json::json!({"selector": {"matchLabels": {"app": "a"}},
            "portLevelMtls": {"0": {"mode": "STRICT"}}}),
        );
        assert_eq!(r.errors[0].path, "spec.portLevelMtls[0]");
    }

    #[test]
    fn refuses_unknown_modes_and_port_keys() {
        assert!(
            serde_json::from_value::<PeerAuthentication>(
                serde_json::json!({"mtls": {"mode": "BLAH"}})
            )
            .is_err()
        );
        assert!(
            serde_json::from_value::<PeerAuthentication>(
                serde_json::json!({"portLevelMtls": {"acd": {"mode": "STRICT"}}})
            )
            .is_err()
        );
    }
}
