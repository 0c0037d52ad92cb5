//! Kubernetes apps/v1 Deployment: the parts a mesh reads.

use serde::{Deserialize, Serialize};

use crate::{FieldPath, ObjectMeta, Report};

/// `spec` of a DeploymentSpec.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeploymentSpec {}

/// Checks a DeploymentSpec on its own, as Istio's validating webhook does.
pub fn validate(_spec: &DeploymentSpec, _meta: &ObjectMeta, _at: &FieldPath, _report: &mut Report) {
}
