//! `strait-xds-load`: a load generator for Strait's control plane. It writes Services and
//! WorkloadEntries through the REST API, connects simulated sidecars over Delta ADS that behave
//! like Envoy (subscribe, ACK, reconnect with backoff), and times how config reaches them.
//! `bench/run-controlplane.sh` drives it; `docs/benchmarks.md` records the results.

#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod api;
pub mod client;
pub mod procstat;
pub mod report;
pub mod run;
