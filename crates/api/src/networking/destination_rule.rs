//! DestinationRule: policies for traffic to a service after routing, and its subsets.

use serde::{Deserialize, Serialize};

use crate::{FieldPath, ObjectMeta, Report};

/// `spec` of a DestinationRule.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationRule {}

/// Checks a DestinationRule on its own, as Istio's validating webhook does.
pub fn validate(
    _spec: &DestinationRule,
    _meta: &ObjectMeta,
    _at: &FieldPath,
    _report: &mut Report,
) {
}
