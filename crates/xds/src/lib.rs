//! Strait's xDS: Istio config and the service registry, translated into Envoy's xDS v3 resources
//! (Listeners, RouteConfigurations, Clusters, ClusterLoadAssignments) per proxy, and served over
//! ADS (state-of-the-world and Delta).
//!
//! - [`proxy`]: who a connected proxy is (from its Envoy node id and metadata).
//! - [`snapshot`]: the config the translator reads, typed.
//! - [`translate`]: the pure function (snapshot, registry, proxy) → [`XdsResources`].
//! - [`ads`]: the gRPC server.
//! - [`bootstrap`]: Envoy bootstraps that connect to the control plane.

#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod ads;
pub mod bootstrap;
pub mod proxy;
pub mod resources;
pub mod snapshot;
pub mod translate;

pub use proxy::{CaptureMode, Proxy, ProxyRole};
pub use resources::{TypeUrl, XdsResources};
pub use snapshot::{ConfigSnapshot, MeshConfig, OutboundPolicy};
