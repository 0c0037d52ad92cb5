//! Sidecar injection on Kubernetes, Istio's way, with Strait's sidecar.
//!
//! - [`pod`]: injecting one pod: the `istio-init` container that installs Istio's capture rules
//!   (`strait istio-iptables` with istio-iptables' flags), the `istio-proxy` sidecar
//!   (`strait pod-agent`, running strait-proxy or Envoy with `strait agent`), its volumes,
//!   Istio's labels (`security.istio.io/tlsMode`, `service.istio.io/canonical-name`/`-revision`)
//!   and annotations (`sidecar.istio.io/status`, Prometheus merge, `kubectl` defaults), probe
//!   rewriting ([`probes`]), native sidecars, and the user's own `istio-proxy`/`istio-init` as
//!   overrides ([`merge`]);
//! - [`annotations`]: Istio's pod annotations, checked as Istio checks them;
//! - [`policy`]: whether a pod is injected (Istio's `injectRequired`) and who owns it;
//! - [`workload`]: `strait kube-inject`: any workload kind, `List`s and multi-document files;
//! - [`webhook`]: the mutating admission webhook's handler (AdmissionReview v1 and v1beta1, a
//!   JSON patch from [`patch`]);
//! - [`values`]: the injection and install values (a typed subset of Istio's Helm values).

#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod annotations;
pub mod merge;
pub mod patch;
pub mod pod;
pub mod policy;
pub mod probes;
pub mod values;
pub mod webhook;
pub mod workload;

pub use pod::{Injector, Owner};
pub use values::Values;

/// The sidecar's container name (Istio's).
pub const PROXY_CONTAINER: &str = "istio-proxy";
/// The init container's name (Istio's).
pub const INIT_CONTAINER: &str = "istio-init";

/// Why a pod cannot be injected. Each names what to change.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    /// The user's annotation has a value Istio (and Strait) refuses.
    #[error("invalid value {value:?} for annotation {annotation}: {reason}")]
    BadAnnotation {
        annotation: String,
        value: String,
        reason: String,
    },
    /// `inject.istio.io/templates` names a template Strait does not have.
    #[error("inject.istio.io/templates: template {template:?} is not available: {reason}")]
    UnsupportedTemplate { template: String, reason: String },
    /// The input is not a workload Strait can read (the message names the field).
    #[error("{0}")]
    BadInput(String),
}
