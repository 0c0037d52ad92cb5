//! A workload's credentials: its certificate chain and key, and the roots it trusts.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use crate::Identity;
use crate::cert::{CertError, CertInfo, certs_from_pem, key_from_pem, to_pem};

/// Why credentials do not fit together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    #[error(transparent)]
    Cert(#[from] CertError),
    #[error(
        "the certificate names {presented:?} but the credentials are for {expected}: the CA must sign for the identity asked"
    )]
    WrongIdentity {
        expected: Identity,
        presented: Vec<String>,
    },
    #[error("the private key does not match the certificate: {0}")]
    KeyMismatch(String),
    #[error("the trust bundle is empty: the workload would trust no peer")]
    NoRoots,
    #[error("a root of the trust bundle cannot be used: {0}")]
    BadRoot(String),
}

/// A certificate chain (leaf first), its private key, and the trust bundle: what a workload
/// proves itself with and checks its peers against. The rustls key and root store are built
/// once, when the credentials are made.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub identity: Identity,
    /// The leaf, then intermediates (as the CA returned them, without the roots).
    pub chain: Vec<CertificateDer<'static>>,
    pub roots: Vec<CertificateDer<'static>>,
    /// What the leaf says.
    pub leaf: CertInfo,
    key: Arc<CertifiedKey>,
    root_store: Arc<RootCertStore>,
    key_pem: Arc<str>,
}

impl Credentials {
    /// Credentials from PEM: `chain_pem` has the leaf first; `roots_pem` the trust bundle.
    pub fn from_pem(
        identity: Identity,
        chain_pem: &str,
        key_pem: &str,
        roots_pem: &str,
    ) -> Result<Credentials, CredentialsError> {
        let chain = certs_from_pem(chain_pem, "the certificate chain")?;
        let roots = certs_from_pem(roots_pem, "the trust bundle")?;
        let key = key_from_pem(key_pem, "the private key")?;
        Credentials::new(identity, chain, key, roots, key_pem)
    }

    fn new(
        identity: Identity,
        mut chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        roots: Vec<CertificateDer<'static>>,
        key_pem: &str,
    ) -> Result<Credentials, CredentialsError> {
        if roots.is_empty() {
            return Err(CredentialsError::NoRoots);
        }
        // A chain that ends with a root of the bundle (as Istio's CA returns it) is served
        // without it: peers have the root already.
        while chain.len() > 1 && chain.last().is_some_and(|c| roots.contains(c)) {
            chain.pop();
        }
        let leaf = CertInfo::parse(chain[0].as_ref(), "the workload certificate")?;
        if !leaf.uris.iter().any(|u| *u == identity.uri()) {
            return Err(CredentialsError::WrongIdentity {
                expected: identity,
                presented: leaf.uris.clone(),
            });
        }
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let key = CertifiedKey::from_der(chain.clone(), key, &provider)
            .map_err(|e| CredentialsError::KeyMismatch(e.to_string()))?;
        let mut store = RootCertStore::empty();
        for root in &roots {
            store
                .add(root.clone())
                .map_err(|e| CredentialsError::BadRoot(e.to_string()))?;
        }
        Ok(Credentials {
            identity,
            chain,
            roots,
            leaf,
            key: Arc::new(key),
            root_store: Arc::new(store),
            key_pem: key_pem.into(),
        })
    }

    /// The key and chain as rustls presents them.
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        self.key.clone()
    }

    /// The trust bundle as a rustls root store.
    pub fn root_store(&self) -> Arc<RootCertStore> {
        self.root_store.clone()
    }

    /// The chain as PEM, leaf first.
    pub fn chain_pem(&self) -> String {
        self.chain.iter().map(to_pem).collect()
    }

    /// The trust bundle as PEM.
    pub fn roots_pem(&self) -> String {
        self.roots.iter().map(to_pem).collect()
    }

    /// The private key as PEM: for the local node agent's SDS answer to its own Envoy only.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// How long until the leaf expires (zero once it has).
    pub fn remaining(&self, now: SystemTime) -> Duration {
        self.leaf
            .not_after
            .duration_since(now)
            .unwrap_or(Duration::ZERO)
    }
}
