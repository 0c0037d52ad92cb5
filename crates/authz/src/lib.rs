//! Strait's authorization engine: Envoy's RBAC and jwt_authn filter configs, as the control plane
//! translates Istio's AuthorizationPolicy and RequestAuthentication into them, compiled once per
//! config ([`convert`]) into matchers that decide a request (or a TCP connection) and explain the
//! decision. strait-proxy enforces them with it; `strait authz check` evaluates the same
//! translated config without sending traffic, so the two cannot disagree.
//!
//! - [`attributes`]: what a decision reads (the connection, the request, dynamic metadata).
//! - [`matcher`]: Envoy's string, value, metadata, header, CIDR and path template matchers.
//! - [`rbac`]: policies of permissions and principals; [`filter`]: an RBAC filter with its
//!   enforced and shadow rules, the metadata it leaves, its denial details and explanation.
//! - [`jwt`]: jwt_authn's providers and requirements; `jwk`: key sets and signatures.

#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod attributes;
pub mod convert;
pub mod filter;
mod jwk;
pub mod jwt;
pub mod matcher;
pub mod rbac;

pub use attributes::{Connection, HttpRequest, Input, Metadata};
pub use convert::ConfigError;
pub use filter::{Decision, RbacFilter, denial_details};
pub use jwk::Jwks;
pub use jwt::{JwtAuthn, JwtError};
pub use rbac::{Action, Rbac, display_policy_name};

/// The body Envoy (and so Istio) answers an RBAC denial with.
pub const ACCESS_DENIED: &str = "RBAC: access denied";
