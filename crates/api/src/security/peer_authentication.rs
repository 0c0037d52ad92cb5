//! PeerAuthentication: mutual TLS mode for workloads.

use serde::{Deserialize, Serialize};

use crate::{FieldPath, ObjectMeta, Report};

/// `spec` of a PeerAuthentication.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthentication {}

/// Checks a PeerAuthentication on its own, as Istio's validating webhook does.
pub fn validate(
    _spec: &PeerAuthentication,
    _meta: &ObjectMeta,
    _at: &FieldPath,
    _report: &mut Report,
) {
}
