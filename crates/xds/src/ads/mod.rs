//! The ADS server.
