//! Gateway: a load balancer at the edge of the mesh.

use serde::{Deserialize, Serialize};

use crate::{FieldPath, ObjectMeta, Report};

/// `spec` of a Gateway.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Gateway {}

/// Checks a Gateway on its own, as Istio's validating webhook does.
pub fn validate(_spec: &Gateway, _meta: &ObjectMeta, _at: &FieldPath, _report: &mut Report) {}
