//! AuthorizationPolicy: access control for workloads.

use serde::{Deserialize, Serialize};

use crate::{FieldPath, ObjectMeta, Report};

/// `spec` of a AuthorizationPolicy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicy {}

/// Checks a AuthorizationPolicy on its own, as Istio's validating webhook does.
pub fn validate(
    _spec: &AuthorizationPolicy,
    _meta: &ObjectMeta,
    _at: &FieldPath,
    _report: &mut Report,
) {
}
