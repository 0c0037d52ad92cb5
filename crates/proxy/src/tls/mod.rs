//! TLS in the data path: the certificates the proxy holds ([`Secrets`]), the rustls configs
//! built from a filter chain's or cluster's TLS context with them (once per context and set of
//! certificates, never per connection), the server side of a handshake on an accepted
//! connection and the client side on an upstream one, and what the peer proved.
//!
//! strait-proxy is its own node agent: with `--ca-addr` it obtains its workload certificate
//! from the mesh CA and renews it (`strait_identity::manager`); the SDS secrets Istio's
//! translator names for the agent, `default` and `ROOTCA`, are that certificate and its trust
//! bundle. A rotation bumps the generation, and each context builds its configs again on its
//! next connection; connections already open keep the certificate they started with.
//!
//! Security fails closed: a context whose certificates are not there (no identity, a file that
//! cannot be read) takes no connection, and the log says why.

pub(crate) mod sniff;

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use rustls::RootCertStore;
use rustls::pki_types::ServerName;
use rustls::sign::CertifiedKey;
use strait_identity::Credentials;
use strait_identity::cert::{CertError, CertInfo};
use strait_identity::tls::{ClientAuth, ExpectedPeer, NameCheck};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::route::StringMatch;
use crate::config::tls::{
    CertificateSource, DownstreamTls, SanKind, SanMatcher, SecretValue, ServerConfigs, TrustSource,
    UpstreamTls,
};

/// How long a TLS handshake may take, either side.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a TLS context cannot be used now.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsError {
    #[error(
        "strait-proxy has no workload certificate: it takes part in mutual TLS only when started with --ca-addr, --root-cert and --bootstrap-token (strait run and strait gateway give them)"
    )]
    NoIdentity,
    #[error("cannot read {what} {}: {source}", path.display())]
    File {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "the secret {name:?} has not arrived from the control plane (SDS over ADS) or holds no {wanted}"
    )]
    MissingSecret { name: String, wanted: &'static str },
    #[error(transparent)]
    Cert(#[from] CertError),
    #[error("cannot build the TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The certificates the proxy holds: its workload identity (when it has one) and the secrets
/// the control plane sent by name (SDS over ADS, `kubernetes://NAME`), with a generation bumped
/// on every change.
#[derive(Default)]
pub(crate) struct Secrets {
    workload: ArcSwapOption<Credentials>,
    named: arc_swap::ArcSwap<BTreeMap<String, SecretValue>>,
    generation: AtomicU64,
}

impl Secrets {
    pub(crate) fn set_workload(&self, creds: Arc<Credentials>) {
        self.workload.store(Some(creds));
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Replaces the secrets received by name (all of them).
    pub(crate) fn set_named(&self, named: BTreeMap<String, SecretValue>) {
        if **self.named.load() == named {
            return;
        }
        self.named.store(Arc::new(named));
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn workload(&self) -> Option<Arc<Credentials>> {
        self.workload.load_full()
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    fn key(&self, source: &CertificateSource) -> Result<Arc<CertifiedKey>, TlsError> {
        match source {
            CertificateSource::Workload => self
                .workload()
                .map(|c| c.certified_key())
                .ok_or(TlsError::NoIdentity),
            CertificateSource::Secret(name) => match self.named.load().get(name) {
                Some(SecretValue::Certificate { chain, key }) => Ok(
                    strait_identity::tls::certified_key(chain, key, &format!("secret {name:?}"))?,
                ),
                _ => Err(TlsError::MissingSecret {
                    name: name.clone(),
                    wanted: "certificate",
                }),
            },
            CertificateSource::Files { chain, key } => Ok(strait_identity::tls::certified_key(
                &read(chain, "the certificate chain")?,
                &read(key, "the private key")?,
                &chain.display().to_string(),
            )?),
            CertificateSource::Inline { chain, key } => Ok(strait_identity::tls::certified_key(
                chain,
                key,
                "the inline certificate",
            )?),
        }
    }

    fn roots(&self, source: &TrustSource) -> Result<Arc<RootCertStore>, TlsError> {
        match source {
            TrustSource::MeshRoots => self
                .workload()
                .map(|c| c.root_store())
                .ok_or(TlsError::NoIdentity),
            TrustSource::Secret(name) => match self.named.load().get(name) {
                Some(SecretValue::Trust(pem)) => Ok(strait_identity::tls::root_store(
                    pem,
                    &format!("secret {name:?}"),
                )?),
                _ => Err(TlsError::MissingSecret {
                    name: name.clone(),
                    wanted: "trusted CA bundle",
                }),
            },
            TrustSource::File(path) => Ok(strait_identity::tls::root_store(
                &read(path, "the trusted CA bundle")?,
                &path.display().to_string(),
            )?),
            TrustSource::Inline(pem) => Ok(strait_identity::tls::root_store(
                pem,
                "the inline trusted CA bundle",
            )?),
        }
    }

    /// The server configs of a filter chain's TLS context, built now if the certificates
    /// changed since they last were.
    pub(crate) fn server(
        &self,
        tls: &DownstreamTls,
    ) -> Result<Arc<(u64, ServerConfigs)>, TlsError> {
        let generation = self.generation();
        if let Some(built) = tls.built.get(generation) {
            return Ok(built);
        }
        let source = tls
            .common
            .certificate
            .as_ref()
            .expect("a server context has a certificate (checked when converted)");
        let key = self.key(source)?;
        let clients = match &tls.common.validation {
            Some(v) => Some((
                self.roots(&v.trust)?,
                if tls.require_client_certificate {
                    ClientAuth::Required
                } else {
                    ClientAuth::Optional
                },
            )),
            None => None,
        };
        let alpn: Vec<&[u8]> = tls.common.alpn.iter().map(|p| p.as_bytes()).collect();
        let local_uri = key
            .end_entity_cert()
            .ok()
            .and_then(|c| CertInfo::parse(c.as_ref(), "the proxy's certificate").ok())
            .and_then(|i| i.uris.into_iter().next());
        let configs = ServerConfigs {
            alpn: strait_identity::tls::server_config_with(key.clone(), clients.clone(), &alpn)?,
            no_alpn: strait_identity::tls::server_config_with(key, clients, &[])?,
            local_uri,
        };
        Ok(tls.built.set(generation, configs))
    }

    /// The client config of a cluster's TLS context, built now if the certificates changed
    /// since it last was.
    pub(crate) fn client(&self, tls: &UpstreamTls) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let generation = self.generation();
        if let Some(built) = tls.built.get(generation) {
            return Ok(built.1.clone());
        }
        let key = tls
            .common
            .certificate
            .as_ref()
            .map(|c| self.key(c))
            .transpose()?;
        let servers = match &tls.common.validation {
            Some(v) => Some((self.roots(&v.trust)?, expected_peer(&v.sans))),
            None => None,
        };
        let alpn: Vec<&[u8]> = tls.common.alpn.iter().map(|p| p.as_bytes()).collect();
        let config = strait_identity::tls::client_config_with(key, servers, &alpn)?;
        Ok(tls.built.set(generation, config).1.clone())
    }
}

fn read(path: &Path, what: &'static str) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::File {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// What a client accepts, from a validation context's names: Istio's exact SPIFFE ids as the
/// identity crate checks them, anything else through [`SanCheck`].
fn expected_peer(sans: &[SanMatcher]) -> ExpectedPeer {
    if sans.is_empty() {
        return ExpectedPeer::AnyName;
    }
    let exact_uris: Option<Vec<String>> = sans
        .iter()
        .map(|m| match (&m.kind, &m.matcher, m.ignore_case) {
            (SanKind::Uri, StringMatch::Exact(v), false) => Some(v.clone()),
            _ => None,
        })
        .collect();
    match exact_uris {
        Some(ids) => ExpectedPeer::OneOf(ids),
        None => ExpectedPeer::Names(Arc::new(SanCheck(sans.to_vec()))),
    }
}

/// `match_typed_subject_alt_names`: a certificate passes when one of its names of a matcher's
/// kind matches it.
#[derive(Debug)]
pub(crate) struct SanCheck(pub(crate) Vec<SanMatcher>);

fn names(cert: &CertInfo, kind: SanKind) -> &[String] {
    match kind {
        SanKind::Uri => &cert.uris,
        SanKind::Dns => &cert.dns_names,
        SanKind::Email => &cert.emails,
        SanKind::IpAddress => &cert.ip_addresses,
    }
}

impl NameCheck for SanCheck {
    fn accepts(&self, cert: &CertInfo) -> bool {
        self.0.iter().any(|m| {
            names(cert, m.kind)
                .iter()
                .any(|n| crate::routing::string_matches(&m.matcher, n, m.ignore_case))
        })
    }

    fn expected(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|m| {
                let kind = match m.kind {
                    SanKind::Uri => "URI",
                    SanKind::Dns => "DNS",
                    SanKind::Email => "email",
                    SanKind::IpAddress => "IP",
                };
                let value = match &m.matcher {
                    StringMatch::Exact(v) => v.clone(),
                    StringMatch::Prefix(v) => format!("{v}*"),
                    StringMatch::Suffix(v) => format!("*{v}"),
                    StringMatch::Contains(v) => format!("*{v}*"),
                    StringMatch::Regex(r) => format!("/{}/", r.0.as_str()),
                };
                format!("{kind} {value}")
            })
            .collect()
    }

    fn presented(&self, cert: &CertInfo) -> Vec<String> {
        let with = |kind: &str, names: &[String]| {
            names
                .iter()
                .map(|n| format!("{kind} {n}"))
                .collect::<Vec<_>>()
        };
        [
            with("URI", &cert.uris),
            with("DNS", &cert.dns_names),
            with("email", &cert.emails),
            with("IP", &cert.ip_addresses),
        ]
        .concat()
    }
}

/// What the peer of a TLS connection proved, for `x-forwarded-client-cert`, the access log and
/// authorization.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PeerCertificate {
    pub(crate) uris: Vec<String>,
    pub(crate) dns_names: Vec<String>,
    pub(crate) subject: String,
    /// SHA-256 of the certificate (DER), in lowercase hex.
    pub(crate) sha256: String,
}

impl PeerCertificate {
    fn of(der: &[u8]) -> Option<PeerCertificate> {
        let info = CertInfo::parse(der, "the peer's certificate").ok()?;
        Some(PeerCertificate {
            uris: info.uris,
            dns_names: info.dns_names,
            subject: info.subject,
            sha256: sha256_hex(der),
        })
    }

    /// The peer's SPIFFE id (its first URI name), Istio's source principal.
    pub(crate) fn principal(&self) -> Option<&str> {
        self.uris.first().map(String::as_str)
    }
}

/// SHA-256, with the TLS provider's own hash (no other crypto crate).
fn sha256_hex(data: &[u8]) -> String {
    let hash = rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256
        .tls13()
        .expect("a TLS 1.3 suite")
        .common
        .hash_provider
        .hash(data);
    hash.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A downstream TLS connection: what was negotiated and who the peer is.
#[derive(Debug, Clone, Default)]
pub(crate) struct DownstreamSession {
    /// The peer's certificate, when it presented one (mutual TLS).
    pub(crate) peer: Option<PeerCertificate>,
    /// The URI name of the certificate the proxy presented (`By=` in XFCC).
    pub(crate) local_uri: Option<String>,
    pub(crate) server_name: Option<String>,
    pub(crate) alpn: Option<String>,
}

/// A refused handshake, explained for the log: what the peer presented and what was expected
/// when a certificate check refused it, else rustls's reason.
pub(crate) struct HandshakeError(pub(crate) String);

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The server side of a handshake on an accepted connection, with the context's configs; the
/// client offered `offered_alpn`.
pub(crate) async fn accept<S>(
    configs: &(u64, ServerConfigs),
    tls: &DownstreamTls,
    offered_alpn: &[String],
    stream: S,
) -> Result<(tokio_rustls::server::TlsStream<S>, DownstreamSession), HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let configs = &configs.1;
    let overlap = offered_alpn
        .iter()
        .any(|p| tls.common.alpn.iter().any(|a| a == p));
    let config = if overlap {
        configs.alpn.clone()
    } else {
        configs.no_alpn.clone()
    };
    let accepted = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        tokio_rustls::TlsAcceptor::from(config).accept(stream),
    )
    .await
    .map_err(|_| HandshakeError(format!("no TLS handshake within {HANDSHAKE_TIMEOUT:?}")))?
    .map_err(|e| HandshakeError(strait_identity::tls::explain(&e)))?;
    let conn = accepted.get_ref().1;
    let peer = conn
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|leaf| PeerCertificate::of(leaf.as_ref()));
    if let Some(v) = &tls.common.validation
        && !v.sans.is_empty()
    {
        let check = SanCheck(v.sans.clone());
        let info = conn
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| CertInfo::parse(leaf.as_ref(), "the peer's certificate").ok());
        match info {
            Some(info) if check.accepts(&info) => {}
            Some(info) => {
                return Err(HandshakeError(
                    strait_identity::tls::PeerRefused {
                        presented: check.presented(&info),
                        expected: check.expected(),
                    }
                    .to_string(),
                ));
            }
            // No certificate: only when one is not required.
            None => {}
        }
    }
    let session = DownstreamSession {
        peer,
        local_uri: configs.local_uri.clone(),
        server_name: conn.server_name().map(str::to_string),
        alpn: conn
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned()),
    };
    Ok((accepted, session))
}

/// The client side of a handshake on a connection to `address`, with the cluster's context.
pub(crate) async fn connect<S>(
    secrets: &Secrets,
    tls: &UpstreamTls,
    address: IpAddr,
    stream: S,
) -> Result<tokio_rustls::client::TlsStream<S>, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let config = secrets
        .client(tls)
        .map_err(|e| HandshakeError(e.to_string()))?;
    // No SNI (an IP address) when the context names no server.
    let name = match tls.sni.as_str() {
        "" => ServerName::IpAddress(address.into()),
        sni => ServerName::try_from(sni.to_string())
            .map_err(|e| HandshakeError(format!("the SNI {sni:?} is not a server name: {e}")))?,
    };
    tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        tokio_rustls::TlsConnector::from(config).connect(name, stream),
    )
    .await
    .map_err(|_| HandshakeError(format!("no TLS handshake within {HANDSHAKE_TIMEOUT:?}")))?
    .map_err(|e| HandshakeError(strait_identity::tls::explain(&e)))
}
