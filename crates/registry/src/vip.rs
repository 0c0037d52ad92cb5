//! Virtual IPs for services.
