//! Workload identity for Strait: who a workload is (a SPIFFE id), the key it makes and the
//! certificate the mesh CA gives it, and the TLS configurations that prove it and check peers.
//!
//! - [`Identity`]: `spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT`, parsed and printed.
//! - [`cert`]: PEM chains, what a certificate says ([`cert::CertInfo`]), keys and CSRs.
//! - [`Credentials`]: a certificate chain, its private key and the trust bundle, checked to fit
//!   together, with the rustls key built once.
//! - [`tls`]: rustls server and client configurations; the client checks the server's SPIFFE
//!   identity against the ones expected, and says what was presented when it does not match.
//! - [`ca_api`]: Istio's `istio.v1.auth.IstioCertificateService/CreateCertificate` messages and a
//!   client; [`manager`]: obtains a certificate and renews it at half its life, with jitter.
//! - [`peer`]: TLS connections that carry the peer's verified identity (for gRPC servers).
//!
//! Private keys never leave the process that made them: the CA sees only CSRs.

#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod ca_api;
pub mod cert;
mod credentials;
pub mod manager;
pub mod peer;
pub mod tls;
mod v1;

use std::fmt;
use std::str::FromStr;

pub use credentials::{Credentials, CredentialsError};

/// The default trust domain (Istio's).
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// The control plane's own identity: its CA and its xDS TLS port (15012) present it.
pub fn control_plane_identity(trust_domain: &str) -> Identity {
    Identity::new(trust_domain, "istio-system", "istiod")
}

/// The server name clients send to the control plane's TLS port (Istio's).
pub const CONTROL_PLANE_SERVER_NAME: &str = "istiod.istio-system.svc";

/// A workload's SPIFFE identity: `spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

/// Why a string is not a SPIFFE identity of Istio's form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{value:?} is not a SPIFFE identity of the form spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT: {reason}"
)]
pub struct IdentityError {
    pub value: String,
    pub reason: &'static str,
}

impl Identity {
    pub fn new(
        trust_domain: impl Into<String>,
        namespace: impl Into<String>,
        service_account: impl Into<String>,
    ) -> Identity {
        Identity {
            trust_domain: trust_domain.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
        }
    }

    /// The URI, as certificates carry it in their subject alternative name.
    pub fn uri(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl FromStr for Identity {
    type Err = IdentityError;

    fn from_str(value: &str) -> Result<Identity, IdentityError> {
        let bad = |reason| IdentityError {
            value: value.to_string(),
            reason,
        };
        let rest = value
            .strip_prefix("spiffe://")
            .ok_or_else(|| bad("it does not start with spiffe://"))?;
        let parts: Vec<&str> = rest.split('/').collect();
        let [td, "ns", ns, "sa", sa] = parts.as_slice() else {
            return Err(bad("the path is not /ns/NAMESPACE/sa/SERVICE_ACCOUNT"));
        };
        if td.is_empty() || ns.is_empty() || sa.is_empty() {
            return Err(bad(
                "the trust domain, namespace and service account must not be empty",
            ));
        }
        Ok(Identity::new(*td, *ns, *sa))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_print_and_parse_as_spiffe_uris() {
        let id = Identity::new("cluster.local", "foo", "httpbin");
        assert_eq!(id.uri(), "spiffe://cluster.local/ns/foo/sa/httpbin");
        assert_eq!(id.uri().parse::<Identity>().unwrap(), id);
        for bad in [
            "https://cluster.local/ns/foo/sa/httpbin",
            "spiffe://cluster.local/ns/foo",
            "spiffe://cluster.local/sa/x/ns/y",
            "spiffe:///ns/foo/sa/x",
            "spiffe://td/ns/foo/sa/x/extra",
        ] {
            let err = bad.parse::<Identity>().unwrap_err().to_string();
            assert!(err.contains("not a SPIFFE identity"), "{bad}: {err}");
        }
    }
}
