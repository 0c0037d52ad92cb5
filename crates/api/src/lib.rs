//! Strait's config model.
//!
//! Istio's resource kinds (`networking.istio.io`, `security.istio.io`, `telemetry.istio.io`) and
//! the subset of Kubernetes that a mesh needs (Service, ServiceAccount, Namespace, Deployment), with
//! Istio's field names, enums and defaults; parsing of multi-document YAML and JSON that reports
//! every error with its file, document index and field path; and validation as strict as Istio's
//! validating webhook.
//!
//! The types are plain Rust, shared by the control plane and the CLI. They reject unknown fields,
//! as Istio's CRD schemas do.

#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod common;
pub mod core;
pub mod duration;
#[cfg(any(fuzzing, test))]
pub mod fuzzing;
pub mod mesh_config;
pub mod meta;
pub mod networking;
pub mod parse;
pub mod policy;
pub mod resource;
pub mod security;
pub mod telemetry;
pub mod validate;

pub use duration::Duration;
pub use meta::ObjectMeta;
pub use parse::{ParseError, Parsed, Source, parse_bytes, parse_value};
pub use resource::{Kind, Resource, Spec};
pub use validate::{FieldPath, Issue, Report};
