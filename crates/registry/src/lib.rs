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

#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod model;
mod vip;

pub use model::{
    Endpoint, Origin, Port, Protocol, Registry, Resolution, Service, Visibility, fqdn,
};
