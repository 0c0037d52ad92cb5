//! Strait's service registry.
//!
//! Services and their endpoints, built from the config the control plane holds:
//! - a Kubernetes `Service` is a service `NAME.NS.svc.cluster.local` with a virtual IP; its
//!   endpoints are the `WorkloadEntry`s in its namespace whose labels match its selector (as
//!   Istio does for VMs);
//! - a `ServiceEntry` adds its hosts, with its ports, resolution and location; its endpoints are
//!   its inline `endpoints` or the `WorkloadEntry`s its `workloadSelector` picks;
//! - a `WorkloadEntry` is one endpoint: address, ports map, labels, service account, locality and
//!   weight.
//!
//! Host names resolve the way Istio's do: a short name is relative to the referrer's namespace.
//!
//! Every service gets a virtual IP from a [`VipTable`], which the control plane keeps across
//! restarts ([`VipTable::to_json`]).

#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

mod from_config;
pub mod model;
mod vip;

#[cfg(test)]
mod tests;

pub use from_config::{EXPORT_TO_ANNOTATION, visibility};
pub use model::{
    Endpoint, Origin, Port, Protocol, Registry, Resolution, Service, Visibility, fqdn,
};
pub use vip::{VipError, VipRange, VipTable};
