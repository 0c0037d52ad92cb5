//! Clusters and their endpoints (ClusterLoadAssignments).

use super::Ctx;
use crate::XdsResources;

/// Outbound clusters per visible service port and subset, inbound clusters, and the special
/// clusters, with their endpoints.
pub(super) fn build(_ctx: &Ctx<'_>, _out: &mut XdsResources) {}
