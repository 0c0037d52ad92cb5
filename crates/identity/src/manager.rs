//! A workload's certificate, obtained from the mesh CA and renewed before it expires.
//!
//! The first certificate is asked for with a bootstrap credential (a single-use token bound to
//! the workload's namespace and service account); every renewal proves the caller with the
//! certificate it is about to replace, as the TLS client certificate. A fresh key is made for
//! every certificate and never leaves the process. Renewal happens at half the certificate's
//! life, give or take 1% (Istio's `SECRET_GRACE_PERIOD_RATIO` 0.5 and its jitter), so that the
//! sidecars of one deployment do not all ask at once; a failed renewal is retried with back-off
//! and reported in [`Status`] until it succeeds, and the current certificate is served until it
//! expires (then handshakes fail: fail closed).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::Identity;
use crate::ca_api::{CaClient, CaError};
use crate::cert::{CertError, certs_from_pem, new_key_and_csr, to_pem};
use crate::credentials::{Credentials, CredentialsError};
use crate::tls::{ExpectedPeer, client_config};

/// Istio's default workload certificate lifetime.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
/// The share of a certificate's life after which it is renewed (Istio's 0.5).
pub const GRACE_RATIO: f64 = 0.5;
/// The jitter on that share (Istio's 0.01).
pub const GRACE_JITTER: f64 = 0.01;

/// Where the mesh CA is and how to recognise it.
#[derive(Debug, Clone)]
pub struct CaTarget {
    pub addr: SocketAddr,
    /// The mesh's trust bundle (PEM): the CA's own certificate chains to it.
    pub roots_pem: String,
    /// The CA's SPIFFE identity, checked against its certificate.
    pub identity: String,
    /// The TLS server name sent to it.
    pub server_name: String,
}

/// What a workload asks for.
#[derive(Debug, Clone)]
pub struct ManagerOptions {
    pub identity: Identity,
    pub ca: CaTarget,
    /// The single-use bootstrap credential for the first certificate.
    pub bootstrap_token: Option<String>,
    /// The lifetime asked for.
    pub ttl: Duration,
}

impl ManagerOptions {
    /// The options of a proxy given its identity flags: the CA's address, the trust bundle and
    /// the bootstrap credential as files (the credential's file is removed once read: it is
    /// single-use), the trust domain, and the lifetime to ask for.
    pub fn from_files(
        ca_addr: SocketAddr,
        root_cert: &Path,
        bootstrap_token: Option<&Path>,
        identity: Identity,
        ttl: Duration,
    ) -> Result<ManagerOptions, SetupError> {
        let roots_pem = std::fs::read_to_string(root_cert).map_err(|source| SetupError::Read {
            what: "the trust bundle (--root-cert)",
            path: root_cert.to_path_buf(),
            source,
        })?;
        let bootstrap_token = bootstrap_token.map(read_token).transpose()?;
        let trust_domain = identity.trust_domain.clone();
        Ok(ManagerOptions {
            identity,
            ca: CaTarget {
                addr: ca_addr,
                roots_pem,
                identity: crate::control_plane_identity(&trust_domain).uri(),
                server_name: crate::CONTROL_PLANE_SERVER_NAME.to_string(),
            },
            bootstrap_token,
            ttl,
        })
    }
}

/// Why a proxy's identity flags cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cannot read {what} {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the bootstrap credential {} is empty", .0.display())]
    EmptyToken(PathBuf),
}

/// Reads a single-use credential and removes its file (it is worth nothing once used).
fn read_token(path: &Path) -> Result<String, SetupError> {
    let token = std::fs::read_to_string(path).map_err(|source| SetupError::Read {
        what: "the bootstrap credential (--bootstrap-token)",
        path: path.to_path_buf(),
        source,
    })?;
    let _ = std::fs::remove_file(path);
    let token = token.trim().to_string();
    if token.is_empty() {
        return Err(SetupError::EmptyToken(path.to_path_buf()));
    }
    Ok(token)
}

/// Why a certificate could not be obtained.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error(transparent)]
    Cert(#[from] CertError),
    #[error("the mesh CA's answer does not fit the request: {0}")]
    Credentials(#[from] CredentialsError),
    #[error("the mesh's trust bundle cannot be used: {0}")]
    Roots(String),
    #[error(
        "no credential to ask the mesh CA with: give a bootstrap credential (strait run and strait gateway get one from the API)"
    )]
    NoCredential,
}

/// Retries of the first certificate request after a transport failure (250 ms, doubling).
const FIRST_ATTEMPTS: u32 = 4;

impl ManagerError {
    /// A failure in transit (the CA unreachable, the connection broken mid-request), which a
    /// retry may get past; a refusal or a bad answer is not.
    pub fn is_transient(&self) -> bool {
        match self {
            ManagerError::Ca(CaError::Connect { .. }) => true,
            ManagerError::Ca(CaError::Refused { code, .. }) => {
                matches!(code, tonic::Code::Unavailable | tonic::Code::Unknown)
            }
            _ => false,
        }
    }
}

/// How renewal is going, for `/certs` and `strait proxy-status`.
#[derive(Debug, Clone, Default)]
pub struct Status {
    /// Certificates obtained, the first included.
    pub issued: u64,
    pub last_issued: Option<SystemTime>,
    pub next_renewal: Option<SystemTime>,
    /// The last renewal's failure, cleared by the next success.
    pub last_error: Option<String>,
}

/// The current credentials, renewed in the background until dropped.
pub struct CertManager {
    current: watch::Receiver<Arc<Credentials>>,
    status: Arc<Mutex<Status>>,
    task: JoinHandle<()>,
}

impl Drop for CertManager {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl CertManager {
    /// Obtains the first certificate, then renews in a task of its own. A CA that cannot be
    /// reached, or a connection that breaks mid-request, is retried a few times over about 8 s
    /// (a pod's network and the CA may come up together); a refusal is an error at once.
    pub async fn start(opts: ManagerOptions) -> Result<CertManager, ManagerError> {
        let token = opts
            .bootstrap_token
            .as_deref()
            .ok_or(ManagerError::NoCredential)?;
        let mut attempt = 0u32;
        let first = loop {
            match obtain(&opts, None, Some(token)).await {
                Ok(c) => break c,
                Err(e) if e.is_transient() && attempt < FIRST_ATTEMPTS => {
                    attempt += 1;
                    let wait = Duration::from_millis(250 << attempt);
                    tracing::warn!(identity = %opts.identity, error = %e, attempt, ?wait, "the first certificate request failed in transit; retrying");
                    tokio::time::sleep(wait).await;
                }
                Err(e) => return Err(e),
            }
        };
        let status = Arc::new(Mutex::new(Status {
            issued: 1,
            last_issued: Some(SystemTime::now()),
            next_renewal: None,
            last_error: None,
        }));
        let (tx, rx) = watch::channel(Arc::new(first));
        let task = tokio::spawn(renew(opts, tx, status.clone()));
        Ok(CertManager {
            current: rx,
            status,
            task,
        })
    }

    pub fn current(&self) -> Arc<Credentials> {
        self.current.borrow().clone()
    }

    /// Changes whenever a new certificate is in.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Credentials>> {
        self.current.clone()
    }

    pub fn status(&self) -> Status {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A handle that reads the status from elsewhere.
    pub fn status_handle(&self) -> Arc<Mutex<Status>> {
        self.status.clone()
    }
}

/// When to renew a certificate obtained at `obtained` that expires at `not_after`: after
/// `GRACE_RATIO` (± `GRACE_JITTER`) of its remaining life.
pub fn renewal_time(obtained: SystemTime, not_after: SystemTime) -> SystemTime {
    let life = not_after.duration_since(obtained).unwrap_or_default();
    let jitter = (fastrand::f64() * 2.0 - 1.0) * GRACE_JITTER;
    let grace = (GRACE_RATIO + jitter).clamp(0.0, 1.0);
    obtained + life.mul_f64(1.0 - grace)
}

async fn renew(
    opts: ManagerOptions,
    tx: watch::Sender<Arc<Credentials>>,
    status: Arc<Mutex<Status>>,
) {
    let mut obtained = SystemTime::now();
    let mut failures = 0u32;
    loop {
        let current = tx.borrow().clone();
        let at = if failures == 0 {
            renewal_time(obtained, current.leaf.not_after)
        } else {
            // Retry soon, but never more often than every 250 ms, and well before expiry.
            let backoff = Duration::from_millis(250 * (1 << failures.min(7)));
            let quarter = current.remaining(SystemTime::now()) / 4;
            SystemTime::now() + backoff.min(quarter.max(Duration::from_millis(250)))
        };
        set(&status, |s| s.next_renewal = Some(at));
        let wait = at.duration_since(SystemTime::now()).unwrap_or_default();
        tokio::time::sleep(wait).await;
        match obtain(&opts, Some(&current), None).await {
            Ok(next) => {
                tracing::info!(
                    identity = %opts.identity,
                    serial = %next.leaf.serial,
                    not_after = ?next.leaf.not_after,
                    "certificate renewed"
                );
                obtained = SystemTime::now();
                failures = 0;
                set(&status, |s| {
                    s.issued += 1;
                    s.last_issued = Some(obtained);
                    s.last_error = None;
                });
                let _ = tx.send(Arc::new(next));
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(identity = %opts.identity, error = %e, failures, "certificate renewal failed; the current certificate is served until it expires");
                set(&status, |s| s.last_error = Some(e.to_string()));
            }
        }
    }
}

fn set(status: &Mutex<Status>, f: impl FnOnce(&mut Status)) {
    f(&mut status.lock().unwrap_or_else(|e| e.into_inner()));
}

/// One round trip to the CA: a new key and CSR, proven by `current` (as the TLS client
/// certificate) or by `token`.
pub async fn obtain(
    opts: &ManagerOptions,
    current: Option<&Credentials>,
    token: Option<&str>,
) -> Result<Credentials, ManagerError> {
    let made = new_key_and_csr(&opts.identity)?;
    let mut roots = rustls::RootCertStore::empty();
    let bundle = certs_from_pem(&opts.ca.roots_pem, "the mesh's trust bundle")?;
    for root in &bundle {
        roots
            .add(root.clone())
            .map_err(|e| ManagerError::Roots(e.to_string()))?;
    }
    let tls = client_config(
        current,
        Arc::new(roots),
        ExpectedPeer::OneOf(vec![opts.ca.identity.clone()]),
        &[b"h2"],
    )
    .map_err(|e| ManagerError::Roots(e.to_string()))?;
    let client = CaClient::connect(opts.ca.addr, tls, &opts.ca.server_name).await?;
    let chain = client
        .create_certificate(&made.csr_pem, opts.ttl, token)
        .await?;
    // The trust bundle: the configured roots and the root the CA answered with (last).
    let mut trusted: Vec<_> = bundle;
    if let Some(last) = chain.last() {
        for root in certs_from_pem(last, "the CA's root")? {
            if !trusted.contains(&root) {
                trusted.push(root);
            }
        }
    }
    let roots_pem: String = trusted.iter().map(to_pem).collect();
    Ok(Credentials::from_pem(
        opts.identity.clone(),
        &chain.concat(),
        &made.key_pem,
        &roots_pem,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_at_half_life_with_one_percent_jitter() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let day = Duration::from_secs(86_400);
        for _ in 0..200 {
            let at = renewal_time(t0, t0 + day).duration_since(t0).unwrap();
            let share = at.as_secs_f64() / day.as_secs_f64();
            assert!((0.49..=0.51).contains(&share), "{share}");
        }
        // An expired certificate is renewed at once.
        assert_eq!(renewal_time(t0, t0 - day), t0);
    }
}
