//! VirtualService: how requests to a host are routed.

use serde::{Deserialize, Serialize};

use crate::{FieldPath, ObjectMeta, Report};

/// `spec` of a VirtualService.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualService {}

/// Checks a VirtualService on its own, as Istio's validating webhook does.
pub fn validate(_spec: &VirtualService, _meta: &ObjectMeta, _at: &FieldPath, _report: &mut Report) {
}
