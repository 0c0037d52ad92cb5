//! Strait's translator: Istio config and the service registry, translated into Envoy's xDS v3
//! resources (Listeners, RouteConfigurations, Clusters, ClusterLoadAssignments) per proxy. The
//! ADS server (`strait-ads`) serves them; who a proxy is comes from `strait-xds-core`.
//!
//! - [`snapshot`]: the config the translator reads, typed.
//! - [`translate`]: the pure function (snapshot, registry, proxy) →
//!   [`XdsResources`](strait_xds_core::XdsResources).
//! - [`bootstrap`]: Envoy bootstraps that connect to the control plane.

#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod bootstrap;
pub mod snapshot;
pub mod translate;

pub use snapshot::{ConfigSnapshot, MeshConfig, OutboundPolicy};
