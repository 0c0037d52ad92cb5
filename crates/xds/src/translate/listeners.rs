//! Listeners and route configurations.

use super::Ctx;
use crate::XdsResources;

/// Outbound and inbound listeners and the route configurations they name.
pub(super) fn build(_ctx: &Ctx<'_>, _out: &mut XdsResources) {}
