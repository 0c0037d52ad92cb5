//! rustls configurations for mutual TLS between workloads, built once per set of credentials
//! (per rotation), never per connection.
//!
//! A client checks the server's chain against the trust bundle and its SPIFFE identity (the URI
//! subject alternative name) against the identities expected for the destination; a server asks
//! for (and, for mTLS, requires) a client certificate that chains to the bundle. Refusals say what
//! was expected and what the peer presented.

use std::fmt;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, Error, OtherError, RootCertStore,
    ServerConfig, SignatureScheme,
};

use crate::Identity;
use crate::cert::CertInfo;
use crate::credentials::Credentials;

/// The crypto provider every Strait TLS config uses (aws-lc-rs).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Which peers a client accepts.
#[derive(Debug, Clone)]
pub enum ExpectedPeer {
    /// Any SPIFFE identity the trust bundle vouches for.
    AnyIdentity,
    /// One of these SPIFFE ids (the destination's service accounts).
    OneOf(Vec<String>),
    /// Any certificate the trust bundle vouches for, whatever names it has (Envoy's validation
    /// context without subject alternative names to match).
    AnyName,
    /// A certificate whose names the check accepts.
    Names(Arc<dyn NameCheck>),
}

/// A check of the names in a peer's certificate, once its chain is verified.
pub trait NameCheck: fmt::Debug + Send + Sync {
    /// Whether the certificate's names pass.
    fn accepts(&self, cert: &CertInfo) -> bool;
    /// What was expected, for the refusal's message.
    fn expected(&self) -> Vec<String>;
    /// What the certificate presented, for the refusal's message (its URIs by default).
    fn presented(&self, cert: &CertInfo) -> Vec<String> {
        cert.uris.clone()
    }
}

/// A refused peer: what it presented and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRefused {
    pub presented: Vec<String>,
    pub expected: Vec<String>,
}

impl fmt::Display for PeerRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let presented = if self.presented.is_empty() {
            "no SPIFFE identity".to_string()
        } else {
            self.presented.join(", ")
        };
        match self.expected.as_slice() {
            [] => write!(f, "the peer presented {presented}, not a SPIFFE identity"),
            [one] => write!(f, "the peer presented {presented} where {one} was expected"),
            many => write!(
                f,
                "the peer presented {presented} where one of {} was expected",
                many.join(", ")
            ),
        }
    }
}

impl std::error::Error for PeerRefused {}

/// A peer certificate that the trust bundle does not vouch for, explained.
#[derive(Debug, Clone)]
pub struct ChainRefused(pub CertificateError);

impl fmt::Display for ChainRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => write!(
                f,
                "the peer's certificate does not chain to this mesh's trust bundle (it was issued by another CA or root): {:?}",
                self.0
            ),
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                write!(f, "the peer's certificate has expired: {}", self.0)
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                write!(f, "the peer's certificate is not valid yet: {}", self.0)
            }
            other => write!(f, "the peer's certificate was refused: {other}"),
        }
    }
}

impl std::error::Error for ChainRefused {}

/// Checks a server's chain against the trust bundle, then its SPIFFE identity.
#[derive(Debug)]
struct SpiffeServerVerifier {
    chain: Arc<WebPkiServerVerifier>,
    expected: ExpectedPeer,
    /// For X.509 v1 certificates, which webpki does not read (see [`crate::v1`]).
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

/// A DNS name the chain check is run with: SPIFFE certificates carry none, so the name check
/// that follows the chain check always fails and is replaced by the identity check.
fn placeholder_name() -> ServerName<'static> {
    ServerName::try_from("spiffe.invalid").expect("a valid DNS name")
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let checked = if crate::v1::is_v1(end_entity) {
            crate::v1::verify(end_entity, &self.roots, &self.provider, now)
                .map(|()| ServerCertVerified::assertion())
                .map_err(Error::InvalidCertificate)
        } else {
            self.chain.verify_server_cert(
                end_entity,
                intermediates,
                &placeholder_name(),
                ocsp_response,
                now,
            )
        };
        match checked {
            Ok(_)
            | Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => {}
            Err(Error::InvalidCertificate(e)) => {
                return Err(Error::InvalidCertificate(CertificateError::Other(
                    OtherError(Arc::new(ChainRefused(e))),
                )));
            }
            Err(e) => return Err(e),
        }
        let info = CertInfo::parse(end_entity.as_ref(), "the peer's certificate").map_err(|e| {
            Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
        })?;
        let ok = match &self.expected {
            ExpectedPeer::AnyIdentity => info.uris.iter().any(|u| u.parse::<Identity>().is_ok()),
            ExpectedPeer::OneOf(ids) => info.uris.iter().any(|u| ids.contains(u)),
            ExpectedPeer::AnyName => true,
            ExpectedPeer::Names(check) => check.accepts(&info),
        };
        if ok {
            return Ok(ServerCertVerified::assertion());
        }
        let (presented, expected) = match &self.expected {
            ExpectedPeer::AnyIdentity | ExpectedPeer::AnyName => (info.uris, Vec::new()),
            ExpectedPeer::OneOf(ids) => (info.uris, ids.clone()),
            ExpectedPeer::Names(check) => (check.presented(&info), check.expected()),
        };
        Err(Error::InvalidCertificate(CertificateError::Other(
            OtherError(Arc::new(PeerRefused {
                presented,
                expected,
            })),
        )))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        if crate::v1::is_v1(cert) {
            return Err(crate::v1::tls12_refused());
        }
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        if crate::v1::is_v1(cert) {
            return crate::v1::tls13_signature(message, cert, dss, &self.provider);
        }
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

/// webpki's client check, and [`crate::v1`]'s for X.509 v1 client certificates.
#[derive(Debug)]
struct ClientVerifier {
    chain: Arc<dyn ClientCertVerifier>,
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.chain.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.chain.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.chain.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        if crate::v1::is_v1(end_entity) {
            return crate::v1::verify(end_entity, &self.roots, &self.provider, now)
                .map(|()| ClientCertVerified::assertion())
                .map_err(Error::InvalidCertificate);
        }
        self.chain
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        if crate::v1::is_v1(cert) {
            return Err(crate::v1::tls12_refused());
        }
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        if crate::v1::is_v1(cert) {
            return crate::v1::tls13_signature(message, cert, dss, &self.provider);
        }
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

/// Whether a server asks clients for certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Mutual TLS: a client without a certificate from the trust bundle is refused.
    Required,
    /// A certificate is checked when presented, and a client may present none (the CA port:
    /// a workload's first request has only its bootstrap credential).
    Optional,
}

/// A server config that presents `creds` and checks client certificates against their trust
/// bundle.
pub fn server_config(
    creds: &Credentials,
    client_auth: ClientAuth,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, Error> {
    server_config_with(
        creds.certified_key(),
        Some((creds.root_store(), client_auth)),
        alpn,
    )
}

/// A server config that presents `key` and, with `clients`, checks client certificates
/// against that root store (without: asks for none).
pub fn server_config_with(
    key: Arc<CertifiedKey>,
    clients: Option<(Arc<RootCertStore>, ClientAuth)>,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, Error> {
    let builder =
        ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let builder = match clients {
        Some((roots, client_auth)) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider());
            let verifier = match client_auth {
                ClientAuth::Required => verifier,
                ClientAuth::Optional => verifier.allow_unauthenticated(),
            }
            .build()
            .map_err(|e| Error::General(e.to_string()))?;
            builder.with_client_cert_verifier(Arc::new(ClientVerifier {
                chain: verifier,
                roots,
                provider: provider(),
            }))
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(Fixed(key)));
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A client config that presents `creds` (when given) and accepts servers that chain to `roots`
/// and present an identity `expected` allows.
pub fn client_config(
    creds: Option<&Credentials>,
    roots: Arc<RootCertStore>,
    expected: ExpectedPeer,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, Error> {
    client_config_with(
        creds.map(Credentials::certified_key),
        Some((roots, expected)),
        alpn,
    )
}

/// A client config that presents `key` (when given) and, with `servers`, accepts servers that
/// chain to that root store and present names the expectation allows; without, accepts any
/// server (a DestinationRule's `insecureSkipVerify`).
pub fn client_config_with(
    key: Option<Arc<CertifiedKey>>,
    servers: Option<(Arc<RootCertStore>, ExpectedPeer)>,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, Error> {
    let verifier: Arc<dyn ServerCertVerifier> = match servers {
        Some((roots, expected)) => {
            let chain = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider())
                .build()
                .map_err(|e| Error::General(e.to_string()))?;
            Arc::new(SpiffeServerVerifier {
                chain,
                expected,
                roots,
                provider: provider(),
            })
        }
        None => Arc::new(Unverified(provider())),
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match key {
        Some(key) => builder.with_client_cert_resolver(Arc::new(Fixed(key))),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Accepts any server certificate (signatures are still checked): `insecureSkipVerify`.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A certificate chain and its private key from PEM, as rustls presents them.
pub fn certified_key(
    chain_pem: &str,
    key_pem: &str,
    what: &str,
) -> Result<Arc<CertifiedKey>, crate::cert::CertError> {
    let bad = |reason: String| crate::cert::CertError::BadCertificate {
        what: what.to_string(),
        reason,
    };
    let chain = crate::cert::certs_from_pem(chain_pem, &format!("{what}'s certificate chain"))?;
    let key = crate::cert::key_from_pem(key_pem, &format!("{what}'s private key"))?;
    let signer = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| bad(format!("the private key cannot sign: {e}")))?;
    // The key must be the certificate's. Compared on the public key itself, so that X.509 v1
    // certificates (what `openssl x509 -req` makes, as Istio's tasks do) are taken as Envoy
    // takes them; webpki reads only v3.
    let leaf = chain
        .first()
        .ok_or_else(|| bad("the chain has no certificate".to_string()))?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| bad(format!("the certificate cannot be read: {e}")))?;
    if let Some(public) = signer.public_key()
        && public.as_ref() != cert.tbs_certificate.subject_pki.raw
    {
        return Err(bad(
            "the private key does not fit the certificate (their public keys differ)".to_string(),
        ));
    }
    Ok(Arc::new(CertifiedKey::new(chain, signer)))
}

/// A root store of every certificate of a PEM bundle.
pub fn root_store(pem: &str, what: &str) -> Result<Arc<RootCertStore>, crate::cert::CertError> {
    let mut store = RootCertStore::empty();
    // A system bundle may hold certificates webpki cannot use: those are left out.
    let (_, unusable) = store.add_parsable_certificates(crate::cert::certs_from_pem(pem, what)?);
    if store.is_empty() {
        return Err(crate::cert::CertError::BadCertificate {
            what: what.to_string(),
            reason: format!("none of its {unusable} certificates can be a trust anchor"),
        });
    }
    Ok(Arc::new(store))
}

/// The workload's key and chain, for every handshake.
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl rustls::server::ResolvesServerCert for Fixed {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

impl rustls::client::ResolvesClientCert for Fixed {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Explains a TLS handshake failure for logs and response bodies: a refused peer identity as
/// [`PeerRefused`] says it, anything else as rustls does.
pub fn explain(e: &std::io::Error) -> String {
    let Some(inner) = e.get_ref() else {
        return e.to_string();
    };
    if let Some(Error::InvalidCertificate(CertificateError::Other(OtherError(other)))) =
        inner.downcast_ref::<Error>()
    {
        return other.to_string();
    }
    e.to_string()
}
