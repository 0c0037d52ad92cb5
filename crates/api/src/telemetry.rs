//! Telemetry (telemetry.istio.io): metrics, tracing and access logging settings.

use serde::{Deserialize, Serialize};

use crate::{FieldPath, ObjectMeta, Report};

/// `spec` of a Telemetry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Telemetry {}

/// Checks a Telemetry on its own, as Istio's validating webhook does.
pub fn validate(_spec: &Telemetry, _meta: &ObjectMeta, _at: &FieldPath, _report: &mut Report) {}
