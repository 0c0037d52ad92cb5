//! Sidecar: what a workload's proxy listens for and may reach.

use serde::{Deserialize, Serialize};

use crate::{FieldPath, ObjectMeta, Report};

/// `spec` of a Sidecar.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Sidecar {}

/// Checks a Sidecar on its own, as Istio's validating webhook does.
pub fn validate(_spec: &Sidecar, _meta: &ObjectMeta, _at: &FieldPath, _report: &mut Report) {}
