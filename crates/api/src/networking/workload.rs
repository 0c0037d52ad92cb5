//! WorkloadEntry and WorkloadGroup: workloads outside Kubernetes (VMs, and Strait's local pods).

use serde::{Deserialize, Serialize};

use crate::{FieldPath, ObjectMeta, Report};

/// `spec` of a WorkloadEntry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadEntry {}

/// `spec` of a WorkloadGroup.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadGroup {}

/// Checks a WorkloadEntry on its own, as Istio's validating webhook does.
pub fn validate_entry(
    _spec: &WorkloadEntry,
    _meta: &ObjectMeta,
    _at: &FieldPath,
    _report: &mut Report,
) {
}

/// Checks a WorkloadGroup on its own, as Istio's validating webhook does.
pub fn validate_group(
    _spec: &WorkloadGroup,
    _meta: &ObjectMeta,
    _at: &FieldPath,
    _report: &mut Report,
) {
}
