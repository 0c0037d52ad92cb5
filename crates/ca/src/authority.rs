//! The signing side: the CA certificate and key, and workload certificates.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use strait_identity::Identity;
use strait_identity::cert::{CertInfo, certs_from_pem, new_key_and_csr, to_pem};

use crate::{CLOCK_SKEW, MAX_WORKLOAD_TTL, MIN_WORKLOAD_TTL, ROOT_ROTATE_SHARE, ROOT_TTL};

/// Where the CA comes from.
#[derive(Debug, Clone)]
pub struct CaOptions {
    pub trust_domain: String,
    /// The control plane's data directory: a self-signed root lives in `DIR/ca`.
    pub data_dir: PathBuf,
    /// A plug-in CA in Istio's `cacerts` layout, instead of the self-signed root.
    pub plugin_dir: Option<PathBuf>,
    /// The lifetime given when a request asks for none (24 h).
    pub default_ttl: Duration,
    /// The longest lifetime signed (90 days).
    pub max_ttl: Duration,
}

impl CaOptions {
    pub fn new(trust_domain: &str, data_dir: &Path) -> CaOptions {
        CaOptions {
            trust_domain: trust_domain.to_string(),
            data_dir: data_dir.to_path_buf(),
            plugin_dir: None,
            default_ttl: crate::DEFAULT_WORKLOAD_TTL,
            max_ttl: MAX_WORKLOAD_TTL,
        }
    }
}

/// Why the CA could not start.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error(
        "the plug-in CA in {dir}: {file} is missing; Istio's cacerts layout has ca-cert.pem, ca-key.pem, cert-chain.pem and root-cert.pem"
    )]
    PluginFileMissing { dir: PathBuf, file: &'static str },
    #[error("{path}: {reason}")]
    Bad { path: PathBuf, reason: String },
    #[error(
        "the signing certificate {path} is not a CA certificate (basicConstraints CA:TRUE); it cannot sign workload certificates"
    )]
    NotCa { path: PathBuf },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot make the CA's key or certificate: {0}")]
    Generate(String),
}

/// Why a CSR was not signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    #[error("the CSR is not valid: {0}")]
    BadCsr(String),
    #[error(
        "the CSR asks for {requested}, but the caller proved {proven}: a workload gets only the identity it proved"
    )]
    WrongIdentity { requested: String, proven: Identity },
    #[error("the caller proved {proven}, which is not of this mesh's trust domain {trust_domain}")]
    WrongTrustDomain {
        proven: Identity,
        trust_domain: String,
    },
    #[error("the requested lifetime of {requested:?} is longer than the {max:?} this CA allows")]
    TtlTooLong { requested: Duration, max: Duration },
    #[error("cannot sign: {0}")]
    Sign(String),
}

/// The mesh CA: signs with `issuer`, and hands out `chain` (from the signing certificate up) and
/// the trust bundle `roots`.
pub struct MeshCa {
    trust_domain: String,
    issuer: Issuer<'static, KeyPair>,
    /// The signing certificate and any intermediates above it, PEM, one per entry; for a
    /// self-signed CA, empty (the root signs).
    intermediates: Vec<String>,
    /// The trust bundle, PEM, one per entry (the current root first).
    roots: Vec<String>,
    default_ttl: Duration,
    max_ttl: Duration,
    /// Where the CA came from, for the log.
    source: String,
}

impl std::fmt::Debug for MeshCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshCa")
            .field("trust_domain", &self.trust_domain)
            .field("source", &self.source)
            .finish()
    }
}

fn read(path: &Path) -> Result<String, CaError> {
    std::fs::read_to_string(path).map_err(|e| CaError::Bad {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn write_private(path: &Path, text: &str, mode: u32) -> Result<(), CaError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| CaError::Write {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

fn split_pem(text: &str, path: &Path) -> Result<Vec<String>, CaError> {
    Ok(certs_from_pem(text, &path.display().to_string())
        .map_err(|e| CaError::Bad {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?
        .iter()
        .map(to_pem)
        .collect())
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the OS has randomness");
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

impl MeshCa {
    /// The plug-in CA of `opts.plugin_dir`, else the self-signed root in `DATA_DIR/ca`, made on
    /// first start and rotated in its last 20% (the old root stays in the trust bundle).
    pub fn load_or_create(opts: &CaOptions) -> Result<MeshCa, CaError> {
        match &opts.plugin_dir {
            Some(dir) => MeshCa::plugin(opts, dir),
            None => MeshCa::self_signed(opts),
        }
    }

    fn plugin(opts: &CaOptions, dir: &Path) -> Result<MeshCa, CaError> {
        let file = |name: &'static str| -> Result<PathBuf, CaError> {
            let path = dir.join(name);
            if !path.is_file() {
                return Err(CaError::PluginFileMissing {
                    dir: dir.to_path_buf(),
                    file: name,
                });
            }
            Ok(path)
        };
        let (cert, key, chain, root) = (
            file("ca-cert.pem")?,
            file("ca-key.pem")?,
            file("cert-chain.pem")?,
            file("root-cert.pem")?,
        );
        let cert_pem = read(&cert)?;
        let info = CertInfo::parse(
            certs_from_pem(&cert_pem, &cert.display().to_string()).map_err(|e| CaError::Bad {
                path: cert.clone(),
                reason: e.to_string(),
            })?[0]
                .as_ref(),
            &cert.display().to_string(),
        )
        .map_err(|e| CaError::Bad {
            path: cert.clone(),
            reason: e.to_string(),
        })?;
        if !info.is_ca {
            return Err(CaError::NotCa { path: cert });
        }
        let key_pair = KeyPair::from_pem(&read(&key)?).map_err(|e| CaError::Bad {
            path: key.clone(),
            reason: format!("not a private key rcgen can sign with: {e}"),
        })?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key_pair).map_err(|e| CaError::Bad {
            path: cert.clone(),
            reason: e.to_string(),
        })?;
        let roots = split_pem(&read(&root)?, &root)?;
        // The chain served with each leaf: cert-chain.pem without the roots (peers have those).
        let intermediates: Vec<String> = split_pem(&read(&chain)?, &chain)?
            .into_iter()
            .filter(|c| !roots.contains(c))
            .collect();
        Ok(MeshCa {
            trust_domain: opts.trust_domain.clone(),
            issuer,
            intermediates,
            roots,
            default_ttl: opts.default_ttl,
            max_ttl: opts.max_ttl,
            source: format!("plug-in CA {}", dir.display()),
        })
    }

    fn self_signed(opts: &CaOptions) -> Result<MeshCa, CaError> {
        let dir = opts.data_dir.join("ca");
        std::fs::create_dir_all(&dir).map_err(|source| CaError::Write {
            path: dir.clone(),
            source,
        })?;
        let (cert_path, key_path, old_path) = (
            dir.join("root-cert.pem"),
            dir.join("root-key.pem"),
            dir.join("previous-roots.pem"),
        );
        let mut previous: Vec<String> = if old_path.is_file() {
            split_pem(&read(&old_path)?, &old_path)?
        } else {
            Vec::new()
        };
        let existing = if cert_path.is_file() && key_path.is_file() {
            let cert_pem = read(&cert_path)?;
            let info = CertInfo::parse(
                certs_from_pem(&cert_pem, "root-cert.pem").map_err(|e| CaError::Bad {
                    path: cert_path.clone(),
                    reason: e.to_string(),
                })?[0]
                    .as_ref(),
                "root-cert.pem",
            )
            .map_err(|e| CaError::Bad {
                path: cert_path.clone(),
                reason: e.to_string(),
            })?;
            let left = info
                .not_after
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            if left.as_secs_f64() < info.lifetime().as_secs_f64() * ROOT_ROTATE_SHARE {
                tracing::warn!(not_after = ?info.not_after, "the self-signed root is in the last 20% of its life: rotating it (the old root stays trusted)");
                previous.retain(|p| *p != cert_pem);
                previous.insert(0, cert_pem);
                write_private(&old_path, &previous.concat(), 0o644)?;
                None
            } else {
                Some((cert_pem, read(&key_path)?))
            }
        } else {
            None
        };
        let (cert_pem, key_pem) = match existing {
            Some(pair) => pair,
            None => {
                let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
                    .map_err(|e| CaError::Generate(e.to_string()))?;
                let mut params = CertificateParams::default();
                let mut dn = DistinguishedName::new();
                dn.push(DnType::OrganizationName, opts.trust_domain.clone());
                params.distinguished_name = dn;
                params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
                params.key_usages = vec![
                    KeyUsagePurpose::KeyCertSign,
                    KeyUsagePurpose::CrlSign,
                    KeyUsagePurpose::DigitalSignature,
                ];
                let now = time::OffsetDateTime::now_utc();
                params.not_before = now - CLOCK_SKEW;
                params.not_after = now + ROOT_TTL;
                params.serial_number = Some(random_serial());
                let cert = params
                    .self_signed(&key)
                    .map_err(|e| CaError::Generate(e.to_string()))?;
                write_private(&key_path, &key.serialize_pem(), 0o600)?;
                write_private(&cert_path, &cert.pem(), 0o644)?;
                tracing::info!(path = %cert_path.display(), trust_domain = %opts.trust_domain, "made a self-signed mesh root (10 years)");
                (cert.pem(), key.serialize_pem())
            }
        };
        let key_pair = KeyPair::from_pem(&key_pem).map_err(|e| CaError::Bad {
            path: key_path.clone(),
            reason: e.to_string(),
        })?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key_pair).map_err(|e| CaError::Bad {
            path: cert_path.clone(),
            reason: e.to_string(),
        })?;
        let mut roots = split_pem(&cert_pem, &cert_path)?;
        roots.extend(previous);
        Ok(MeshCa {
            trust_domain: opts.trust_domain.clone(),
            issuer,
            intermediates: Vec::new(),
            roots,
            default_ttl: opts.default_ttl,
            max_ttl: opts.max_ttl,
            source: format!("self-signed root {}", cert_path.display()),
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The trust bundle (Istio's `istio-ca-root-cert`), PEM.
    pub fn roots_pem(&self) -> String {
        self.roots.concat()
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Signs `csr_pem` for `proven`, the identity the caller proved: the CSR must ask for that
    /// identity and no other. `ttl` zero means the default. Returns the chain, one PEM per
    /// entry: the leaf, the intermediates, the roots.
    pub fn sign(
        &self,
        csr_pem: &str,
        proven: &Identity,
        ttl: Duration,
    ) -> Result<Vec<String>, SignError> {
        if proven.trust_domain != self.trust_domain {
            return Err(SignError::WrongTrustDomain {
                proven: proven.clone(),
                trust_domain: self.trust_domain.clone(),
            });
        }
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| SignError::BadCsr(e.to_string()))?;
        let requested: Vec<String> = csr
            .params
            .subject_alt_names
            .iter()
            .map(|s| match s {
                SanType::URI(u) => u.as_str().to_string(),
                SanType::DnsName(d) => format!("DNS:{}", d.as_str()),
                SanType::IpAddress(ip) => format!("IP:{ip}"),
                other => format!("{other:?}"),
            })
            .collect();
        if requested != [proven.uri()] {
            return Err(SignError::WrongIdentity {
                requested: if requested.is_empty() {
                    "no identity".to_string()
                } else {
                    requested.join(", ")
                },
                proven: proven.clone(),
            });
        }
        let ttl = if ttl.is_zero() { self.default_ttl } else { ttl };
        if ttl > self.max_ttl {
            return Err(SignError::TtlTooLong {
                requested: ttl,
                max: self.max_ttl,
            });
        }
        let ttl = ttl.max(MIN_WORKLOAD_TTL);
        let params = leaf_params(
            vec![SanType::URI(
                proven
                    .uri()
                    .try_into()
                    .map_err(|e: rcgen::Error| SignError::Sign(e.to_string()))?,
            )],
            ttl,
        );
        let cert = CertificateSigningRequestParams {
            params,
            public_key: csr.public_key,
        }
        .signed_by(&self.issuer)
        .map_err(|e| SignError::Sign(e.to_string()))?;
        Ok(self.chain_with(cert.pem()))
    }

    fn chain_with(&self, leaf: String) -> Vec<String> {
        let mut chain = vec![leaf];
        chain.extend(self.intermediates.iter().cloned());
        chain.extend(self.roots.iter().take(1).cloned());
        chain
    }

    /// Credentials for a server of the control plane itself (the CA and xDS port): its own key,
    /// the SPIFFE `identity`, and DNS and IP names clients may dial.
    pub fn issue_server(
        &self,
        identity: &Identity,
        dns_names: &[String],
        ips: &[IpAddr],
        ttl: Duration,
    ) -> Result<strait_identity::Credentials, SignError> {
        let made = new_key_and_csr(identity).map_err(|e| SignError::Sign(e.to_string()))?;
        let key = KeyPair::from_pem(&made.key_pem).map_err(|e| SignError::Sign(e.to_string()))?;
        let mut sans = vec![SanType::URI(
            identity
                .uri()
                .try_into()
                .map_err(|e: rcgen::Error| SignError::Sign(e.to_string()))?,
        )];
        for d in dns_names {
            sans.push(SanType::DnsName(
                d.clone()
                    .try_into()
                    .map_err(|e: rcgen::Error| SignError::Sign(e.to_string()))?,
            ));
        }
        sans.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        let cert = leaf_params(sans, ttl)
            .signed_by(&key, &self.issuer)
            .map_err(|e| SignError::Sign(e.to_string()))?;
        let chain = self.chain_with(cert.pem());
        strait_identity::Credentials::from_pem(
            identity.clone(),
            &chain.concat(),
            &made.key_pem,
            &self.roots_pem(),
        )
        .map_err(|e| SignError::Sign(e.to_string()))
    }
}

/// A workload certificate: the names given, an empty subject (so the SAN extension is critical),
/// server and client authentication, valid from a little before now for `ttl`.
fn leaf_params(sans: Vec<SanType>, ttl: Duration) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - CLOCK_SKEW;
    params.not_after = now + ttl;
    params.serial_number = Some(random_serial());
    params
}
