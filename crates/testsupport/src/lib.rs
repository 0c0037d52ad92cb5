//! Test support for Strait, used only by tests (a dev-dependency of the other crates).
//!
//! - [`Envoy`]: a real Envoy process started from a bootstrap, with its admin interface
//!   (readiness, config dump, stats) and its log, stopped on drop. [`envoy_bin`] finds the binary.
//! - [`Backend`]: test upstreams on loopback: an HTTP/1.1 + h2c server that answers with its
//!   name and version and records what it got, and a TCP echo server like Istio's `tcp-echo`.
//! - [`http_get`], [`http2_get`], [`via_proxy`]: a small HTTP client with a timeout.
//! - [`Etcd`]: a real etcd server on loopback with its own data directory, stopped on drop.
//! - [`free_port`], [`free_loopback_addr`]: addresses for listeners.
//! - [`Relay`]: a TCP relay a test can cut and restore (a network fault between two processes).
//!
//! Pods in tests get loopback addresses like `127.0.10.N`: all of 127.0.0.0/8 is loopback on
//! Linux, without setup.

#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

mod backend;
mod client;
pub mod corpus;
mod envoy;
mod etcd;
mod net;
mod relay;

pub use backend::{Backend, RecordedRequest};
pub use client::{
    CLIENT_TIMEOUT, HttpError, HttpReply, http_get, http_request, http2_get, via_proxy,
};
pub use envoy::{Envoy, envoy_bin, repo_root};
pub use etcd::{Etcd, etcd_bin};
pub use net::{free_loopback_addr, free_port};
pub use relay::Relay;
