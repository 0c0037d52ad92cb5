//! What a pod's proxy needs to obtain its workload certificate, prepared by `strait run` and
//! `strait gateway` (which hold the API token): the mesh's trust bundle and a single-use
//! bootstrap credential bound to the pod's namespace and service account, written into the
//! pod's own folder for the proxy's uid alone.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::json;
use strait_xds_core::flags::IdentityFlags;

use crate::client::Client;

/// The ConfigMap annotation with the mesh's trust domain.
pub const TRUST_DOMAIN_ANNOTATION: &str = "strait.io/trust-domain";

/// The identity files of one pod.
#[derive(Debug, Clone)]
pub struct PodIdentity {
    /// The proxy's identity flags (the CA, the files below, the trust domain).
    pub flags: IdentityFlags,
    /// Where the node agent serves SDS to Envoy (unused by strait-proxy).
    pub sds_socket: PathBuf,
}

/// Writes the trust bundle and a fresh bootstrap credential into `dir`, owned by `owner` (the
/// proxy's uid and gid) when the proxy runs as another user.
pub fn prepare(
    client: &Client,
    dir: &Path,
    namespace: &str,
    service_account: &str,
    ca_addr: SocketAddr,
    owner: Option<(u32, u32)>,
    cert_ttl: Duration,
) -> Result<PodIdentity> {
    let roots = client.request(
        "GET",
        &format!("/api/v1/namespaces/{namespace}/configmaps/istio-ca-root-cert"),
        None,
    )?;
    if !roots.is_success() {
        bail!(
            "the control plane publishes no trust bundle ({}): is it a Strait control plane with a CA?",
            roots.message()
        );
    }
    let roots_pem = roots.body["data"]["root-cert.pem"]
        .as_str()
        .context("the trust bundle ConfigMap has no root-cert.pem")?
        .to_string();
    let trust_domain = roots.body["metadata"]["annotations"][TRUST_DOMAIN_ANNOTATION]
        .as_str()
        .unwrap_or(strait_identity::DEFAULT_TRUST_DOMAIN)
        .to_string();
    let token = client.request(
        "POST",
        &format!("/api/v1/namespaces/{namespace}/serviceaccounts/{service_account}/token"),
        Some(&json!({"spec": {"expirationSeconds": 600}})),
    )?;
    if !token.is_success() {
        bail!(
            "the control plane refused a bootstrap credential for {namespace}/{service_account}: {}",
            token.message()
        );
    }
    let token = token.body["status"]["token"]
        .as_str()
        .context("the TokenRequest answer has no status.token")?
        .to_string();
    // A folder of the proxy's own: its agent makes the SDS socket there.
    let dir = dir.join("identity");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .with_context(|| format!("restricting {}", dir.display()))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
            .with_context(|| format!("giving {} to the proxy's uid {uid}", dir.display()))?;
    }
    let root_cert = dir.join("root-cert.pem");
    write(&root_cert, &roots_pem, 0o644, owner)?;
    let token_file = dir.join("bootstrap-token");
    write(&token_file, &token, 0o600, owner)?;
    Ok(PodIdentity {
        flags: IdentityFlags {
            ca_addr: Some(ca_addr),
            root_cert: Some(root_cert),
            bootstrap_token: Some(token_file),
            trust_domain,
            cert_ttl,
        },
        sds_socket: dir.join("sds.sock"),
    })
}

fn write(path: &Path, text: &str, mode: u32, owner: Option<(u32, u32)>) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .with_context(|| format!("giving {} to the proxy's uid {uid}", path.display()))?;
    }
    Ok(())
}
