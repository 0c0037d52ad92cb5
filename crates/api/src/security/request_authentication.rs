//! RequestAuthentication: JWT validation for requests.

use serde::{Deserialize, Serialize};

use crate::{FieldPath, ObjectMeta, Report};

/// `spec` of a RequestAuthentication.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestAuthentication {}

/// Checks a RequestAuthentication on its own, as Istio's validating webhook does.
pub fn validate(
    _spec: &RequestAuthentication,
    _meta: &ObjectMeta,
    _at: &FieldPath,
    _report: &mut Report,
) {
}
