//! What Strait's control plane and data plane share, and nothing more: the data plane
//! (`strait-proxy`) depends on this crate alone of Strait's xDS crates, so that neither the
//! config model, the registry nor the translator is built into it.
//!
//! - [`proxy`]: who a proxy is, from its Envoy node id and metadata.
//! - [`flags`]: the proxy's identity flags, defined once for `strait-proxy`,
//!   `strait bootstrap envoy` and the launchers (`strait run`, `strait gateway`).
//! - [`resources`]: the xDS type URLs Strait serves, and one proxy's resources.
//! - [`names`]: Istio's reserved ports and resource names.

#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod flags;
pub mod names;
pub mod proxy;
pub mod resources;

pub use flags::{ProxyFlags, XdsApi};
pub use proxy::{CaptureMode, Proxy, ProxyError, ProxyRole};
pub use resources::{TypeUrl, XdsResources};
