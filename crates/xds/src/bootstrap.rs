//! Envoy bootstraps.
