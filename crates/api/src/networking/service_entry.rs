//! ServiceEntry: adds entries to the service registry.

use serde::{Deserialize, Serialize};

use crate::{FieldPath, ObjectMeta, Report};

/// `spec` of a ServiceEntry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceEntry {}

/// Checks a ServiceEntry on its own, as Istio's validating webhook does.
pub fn validate(_spec: &ServiceEntry, _meta: &ObjectMeta, _at: &FieldPath, _report: &mut Report) {}
