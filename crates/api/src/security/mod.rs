//! `security.istio.io`: peer and request authentication, authorization.

pub mod authorization_policy;
pub mod peer_authentication;
pub mod request_authentication;
