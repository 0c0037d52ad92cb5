//! Istio's standard metrics, shared by strait-proxy (which records them) and the control plane
//! (which will derive the same series from Envoy's access logs):
//!
//! - [`workload`]: who a workload is for telemetry (name, namespace, app, version, canonical
//!   service and revision, cluster), from its labels as Istio derives them; Istio's endpoint
//!   metadata encoding and the `x-envoy-peer-metadata` header sidecars exchange.
//! - [`labels`]: Istio's label set and how the source and destination reporters fill it in.
//! - [`registry`]: interned label sets with atomic counters and histograms (Envoy's default
//!   buckets), a bound on the number of series, and the Prometheus text format.
//! - [`switches`]: which metrics the Telemetry API's overrides leave on, per side.
//! - [`trace_context`]: W3C `traceparent` and B3 trace context headers, read and written.
//! - [`otlp`]: the OTLP trace export messages.

#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod labels;
pub mod otlp;
pub mod registry;
pub mod switches;
pub mod trace_context;
pub mod workload;

pub use labels::{EdgeLabels, Observed, Protocol, Reporter, Service};
pub use registry::{Edge, Metrics, ResponseKey, Series};
pub use switches::{Disabled, Metric, MetricSet};
pub use workload::Workload;
