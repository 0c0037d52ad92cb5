//! `networking.istio.io`: traffic routing and the service registry's Istio-side inputs.

pub mod destination_rule;
pub mod gateway;
pub mod service_entry;
pub mod sidecar;
pub mod virtual_service;
pub mod workload;
