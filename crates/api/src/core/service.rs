//! Kubernetes core v1 Service.

use serde::{Deserialize, Serialize};

use crate::{FieldPath, ObjectMeta, Report};

/// `spec` of a ServiceSpec.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceSpec {}

/// Checks a ServiceSpec on its own, as Istio's validating webhook does.
pub fn validate(_spec: &ServiceSpec, _meta: &ObjectMeta, _at: &FieldPath, _report: &mut Report) {}
