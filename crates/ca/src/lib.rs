//! Strait's mesh CA.
//!
//! - [`MeshCa`]: the signing certificate and key, either a self-signed root the control plane
//!   makes on first start and keeps in its data directory (key mode 0600; 10 years, rotated in
//!   its last 20%), or a plug-in CA in Istio's `cacerts` layout (`--ca-dir`: `ca-cert.pem`,
//!   `ca-key.pem`, `cert-chain.pem`, `root-cert.pem`), so a team can bring its own
//!   intermediate. It signs workload certificates: a SPIFFE URI SAN for the identity the caller
//!   proved (and only that one), an empty subject, server and client authentication, 24 h by
//!   default and at most 90 days (Istio's constants).
//! - [`BootstrapTokens`]: short-lived, single-use credentials bound to a namespace and service
//!   account, which `strait run` and `strait gateway` (trusted: they hold the API token) obtain
//!   from the API and hand to the sidecar for its first certificate. On Kubernetes a
//!   service-account token will play this role (the [`Authenticator`] seam).
//! - [`service`]: `istio.v1.auth.IstioCertificateService/CreateCertificate`, which checks who the
//!   caller is (its TLS client certificate, else a bootstrap credential) before it signs.

#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

mod authority;
mod bootstrap;
pub mod service;

pub use authority::{CaError, CaOptions, MeshCa, SignError};
pub use bootstrap::{Binding, BootstrapTokens};
pub use service::{Authenticator, CaService};

use std::time::Duration;

/// Istio's default workload certificate lifetime.
pub const DEFAULT_WORKLOAD_TTL: Duration = Duration::from_secs(24 * 3600);
/// Istio's longest workload certificate lifetime.
pub const MAX_WORKLOAD_TTL: Duration = Duration::from_secs(90 * 24 * 3600);
/// The shortest lifetime the CA signs (short lifetimes are for rotation tests).
pub const MIN_WORKLOAD_TTL: Duration = Duration::from_secs(10);
/// A self-signed root's lifetime (Istio's 10 years).
pub const ROOT_TTL: Duration = Duration::from_secs(3650 * 24 * 3600);
/// A self-signed root is rotated when less than this share of its life remains (Istio's 20%).
pub const ROOT_ROTATE_SHARE: f64 = 0.2;
/// How far back a certificate's validity starts, for clocks that disagree (Istio's 2 minutes).
pub const CLOCK_SKEW: Duration = Duration::from_secs(120);

pub use strait_identity::{CONTROL_PLANE_SERVER_NAME, control_plane_identity};
