//! Starting a data plane for `strait run` and `strait gateway`: strait-proxy or Envoy, in a
//! pod's network namespace under the proxy's uid or on the host, and waiting for it.

use std::fs::File;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::ValueEnum;
use strait_netns::{PROXY_GID, PROXY_UID, ProcId};
use strait_translate::bootstrap::{BootstrapIdentity, BootstrapOptions, envoy_bootstrap};

use crate::pod_identity::PodIdentity;
use strait_xds_core::{Proxy, ProxyFlags, XdsApi};
use tokio::process::{Child, Command};

/// Which data plane runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProxyKind {
    /// strait-proxy, next to the `strait` binary.
    Strait,
    /// Envoy: $ENVOY_BIN, else the repository's .venv, else `envoy` on PATH.
    Envoy,
}

/// How to start a proxy.
pub struct Launch<'a> {
    pub proxy: Proxy,
    pub kind: ProxyKind,
    pub xds: Vec<SocketAddr>,
    pub admin: SocketAddr,
    /// Run inside this network namespace, as the proxy's uid (1337).
    pub netns: Option<&'a str>,
    /// Where the bootstrap and the log go.
    pub dir: &'a Path,
    /// The workload's identity (mutual TLS): Envoy gets a node agent beside it; strait-proxy
    /// obtains its certificate itself.
    pub identity: Option<&'a PodIdentity>,
}

/// A running proxy process.
pub struct RunningProxy {
    pub child: Child,
    pub id: ProcId,
    /// The node agent beside Envoy, when the workload has an identity.
    pub agent: Option<(Child, ProcId)>,
    pub admin: SocketAddr,
    pub log: PathBuf,
}

/// The strait-proxy binary beside this one.
fn strait_proxy_bin() -> Result<PathBuf> {
    let me = std::env::current_exe().context("finding the strait binary")?;
    let bin = me.with_file_name("strait-proxy");
    if !bin.is_file() {
        bail!(
            "{} is missing: build it (`cargo build --bin strait-proxy`) or use --proxy envoy",
            bin.display()
        );
    }
    Ok(bin)
}

/// Envoy: `$ENVOY_BIN`, else the repository's `.venv` (`scripts/install-envoy.sh`), else
/// `envoy` on PATH.
pub fn envoy_bin() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("ENVOY_BIN") {
        let bin = PathBuf::from(bin);
        if !bin.is_file() {
            bail!("ENVOY_BIN={} is not a file", bin.display());
        }
        return Ok(bin);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/lib");
    if let Ok(entries) = std::fs::read_dir(&venv) {
        let mut found: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("site-packages/envoy/_bin/envoy"))
            .filter(|p| p.is_file())
            .collect();
        found.sort();
        if let Some(bin) = found.pop() {
            return Ok(bin);
        }
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        let bin = dir.join("envoy");
        if bin.is_file() {
            return Ok(bin);
        }
    }
    Err(anyhow!(
        "Envoy is not installed: run `bash scripts/install-envoy.sh` in the repository, or set \
         ENVOY_BIN to an Envoy 1.40 binary, or use --proxy strait"
    ))
}

/// Is some folder on `bin`'s path not searchable by others (so the proxy's uid cannot run it)?
fn closed_folder(bin: &Path) -> Option<(PathBuf, u32)> {
    bin.ancestors().skip(1).find_map(|dir| {
        let mode = std::fs::metadata(dir)
            .map(|m| m.permissions().mode())
            .unwrap_or(0o755);
        (mode & 0o001 == 0).then(|| (dir.to_path_buf(), mode & 0o777))
    })
}

/// A path the proxy's uid can run `bin` from: `bin` itself when every folder on its path is
/// searchable by others, else a copy in `RUN_DIR/bin` (made once per binary, size and mtime;
/// older copies of the same binary are removed),
/// as a checkout under /root or a private temporary folder would otherwise keep the sidecar from
/// starting.
fn runnable_by_proxy_uid(bin: &Path) -> Result<PathBuf> {
    let bin = bin.canonicalize().unwrap_or_else(|_| bin.to_path_buf());
    let Some((dir, mode)) = closed_folder(&bin) else {
        return Ok(bin);
    };
    let cannot = |why: String| {
        anyhow!(
            "{} cannot be run by the proxy's uid {PROXY_UID}: {} is not searchable by others \
             (mode {mode:o}), and a copy it could run could not be made: {why}; put the binary \
             elsewhere (not under /root) or `chmod o+x` the folder",
            bin.display(),
            dir.display(),
        )
    };
    let meta = std::fs::metadata(&bin).map_err(|e| cannot(e.to_string()))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let name = bin
        .file_name()
        .map_or("proxy".into(), |n| n.to_string_lossy().into_owned());
    let staged_dir = strait_netns::Pods::default_dir().join("bin");
    let staged = staged_dir.join(format!("{name}-{}-{mtime}", meta.len()));
    if staged.is_file() && closed_folder(&staged).is_none() {
        return Ok(staged);
    }
    std::fs::create_dir_all(&staged_dir).map_err(|e| cannot(e.to_string()))?;
    let _ = std::fs::set_permissions(&staged_dir, std::fs::Permissions::from_mode(0o755));
    // Copied under a temporary name, then renamed: a concurrent run never sees half a binary.
    let partial = staged_dir.join(format!(".{name}-{}.partial", std::process::id()));
    std::fs::copy(&bin, &partial)
        .and_then(|_| std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o755)))
        .and_then(|()| std::fs::rename(&partial, &staged))
        .map_err(|e| {
            let _ = std::fs::remove_file(&partial);
            cannot(e.to_string())
        })?;
    if let Some((dir, mode)) = closed_folder(&staged) {
        return Err(cannot(format!("{} has mode {mode:o}", dir.display())));
    }
    // Older copies of this binary go (a proxy running one keeps its file until it exits).
    let prefix = format!("{name}-");
    for old in std::fs::read_dir(&staged_dir)
        .into_iter()
        .flatten()
        .flatten()
    {
        let path = old.path();
        let file = old.file_name().to_string_lossy().into_owned();
        if path != staged && file.starts_with(&prefix) {
            let _ = std::fs::remove_file(&path);
        }
    }
    tracing::info!(from = %bin.display(), to = %staged.display(), "the proxy binary is copied where uid {PROXY_UID} can run it");
    Ok(staged)
}

/// Starts `bin ARGS` as the proxy does: in the pod's network namespace as the proxy's uid, or on
/// the host, ended with its parent either way; its output goes to `out`.
fn spawn_as_proxy(bin: &Path, args: &[String], netns: Option<&str>, out: File) -> Result<Child> {
    let mut cmd = match netns {
        Some(ns) => {
            let runnable = runnable_by_proxy_uid(bin)?;
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "setpriv"])
                .arg(format!("--reuid={PROXY_UID}"))
                .arg(format!("--regid={PROXY_GID}"))
                .args(["--clear-groups", "--pdeathsig", "KILL", "--"]);
            c.arg(&runnable);
            c
        }
        None => {
            let mut c = Command::new("setpriv");
            c.args(["--pdeathsig", "KILL", "--"]).arg(bin);
            c
        }
    };
    cmd.args(args)
        .env(
            "RUST_LOG",
            std::env::var("STRAIT_PROXY_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| launch_error(e, bin, netns.is_some()))
}

/// The node agent beside Envoy: started first, ready once its SDS socket exists (it has the
/// workload's certificate).
async fn start_agent(l: &Launch<'_>, identity: &PodIdentity) -> Result<(Child, ProcId)> {
    let me = std::env::current_exe().context("finding the strait binary")?;
    let mut args = vec![
        "agent".to_string(),
        "--namespace".to_string(),
        l.proxy.namespace.clone(),
        "--service-account".to_string(),
        l.proxy.service_account.clone(),
        "--sds-socket".to_string(),
        identity.sds_socket.display().to_string(),
    ];
    args.extend(identity.flags.to_args());
    let log = l.dir.join("agent.log");
    let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let mut child = spawn_as_proxy(&me, &args, l.netns, out)?;
    let pid = child.id().context("the node agent exited at once")?;
    let id = ProcId::of(pid).context("the node agent exited at once")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !identity.sds_socket.exists() {
        if let Some(status) = child.try_wait()? {
            bail!(
                "the node agent exited before it had the workload's certificate ({status}); its log ({}):\n{}",
                log.display(),
                tail(&log)
            );
        }
        if Instant::now() > deadline {
            bail!(
                "the node agent has no certificate after 30 s (is the control plane's TLS port reachable from the pod?); its log ({}):\n{}",
                log.display(),
                tail(&log)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tracing::info!(pid, "node agent ready");
    Ok((child, id))
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// A failed spawn: name the missing launcher (`ip`, `setpriv`) and how to install it.
pub fn launch_error(e: std::io::Error, bin: &Path, in_netns: bool) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::NotFound {
        let launcher = if in_netns { "ip" } else { "setpriv" };
        return anyhow!(
            "cannot start {}: `{launcher}` is not installed: install it with `apt-get install -y \
             iptables iproute2 util-linux`",
            bin.display()
        );
    }
    anyhow!("cannot start {}: {e}", bin.display())
}

impl RunningProxy {
    /// Starts the proxy; its output goes to `DIR/proxy.log`.
    pub async fn start(l: Launch<'_>) -> Result<RunningProxy> {
        let log = l.dir.join("proxy.log");
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut agent = None;
        let (bin, args): (PathBuf, Vec<String>) = match l.kind {
            ProxyKind::Envoy => {
                let identity = match l.identity {
                    Some(id) => {
                        agent = Some(start_agent(&l, id).await?);
                        Some(BootstrapIdentity {
                            sds_socket: id.sds_socket.clone(),
                            trust_domain: id.flags.trust_domain.clone(),
                        })
                    }
                    None => None,
                };
                let bootstrap = envoy_bootstrap(&BootstrapOptions {
                    proxy: Proxy {
                        mtls: identity.is_some(),
                        ..l.proxy.clone()
                    },
                    xds_addr: l.xds[0],
                    more_xds: l.xds[1..].to_vec(),
                    admin_addr: l.admin,
                    delta: true,
                    concurrency: Some(2),
                    identity,
                    // Istio's stats port, on the pod's own address as the admin interface.
                    prometheus_addr: Some(SocketAddr::new(
                        l.admin.ip(),
                        strait_xds_core::names::PROMETHEUS_PORT,
                    )),
                });
                let path = l.dir.join("bootstrap.yaml");
                std::fs::write(&path, bootstrap)
                    .with_context(|| format!("writing {}", path.display()))?;
                let args = vec![
                    "-c".into(),
                    path.display().to_string(),
                    "--disable-hot-restart".into(),
                    "--concurrency".into(),
                    "2".into(),
                    "--drain-time-s".into(),
                    "2".into(),
                ];
                (envoy_bin()?, args)
            }
            ProxyKind::Strait => {
                // strait-proxy is its own node agent: it obtains its certificate itself.
                let mut flags =
                    ProxyFlags::from_proxy(&l.proxy, l.xds.clone(), l.admin, XdsApi::Delta);
                if let Some(id) = l.identity {
                    flags.identity = id.flags.clone();
                }
                let mut args = flags.to_args();
                // `stop` drains through the admin API first; the SIGTERM that follows ends it.
                args.extend(["--drain-time-s".to_string(), "0".to_string()]);
                // Its metrics on Istio's port 15090 of the pod's address too (the admin's
                // address: a gateway's is its listen address), as Envoy's bootstrap above.
                args.extend([
                    "--prometheus".to_string(),
                    SocketAddr::new(l.admin.ip(), strait_xds_core::names::PROMETHEUS_PORT)
                        .to_string(),
                ]);
                (strait_proxy_bin()?, args)
            }
        };
        let child = spawn_as_proxy(&bin, &args, l.netns, out)?;
        let pid = child.id().context("the proxy exited at once")?;
        let id = ProcId::of(pid).context("the proxy exited at once")?;
        tracing::info!(pid, bin = %bin.display(), "proxy started");
        Ok(RunningProxy {
            child,
            id,
            agent,
            admin: l.admin,
            log,
        })
    }

    /// The last lines of the proxy's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn admin_get(&self, path: &str) -> Option<String> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(2)))
            .build()
            .into();
        let mut r = agent
            .get(&format!("http://{}{path}", self.admin))
            .call()
            .ok()?;
        r.body_mut().read_to_string().ok()
    }

    /// Waits until the proxy's `/ready` says `LIVE` (its first config is in).
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(state) = self.admin_get("/ready")
                && state.trim() == "LIVE"
            {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "the sidecar exited before it was ready ({status}); its log ({}):\n{}",
                    self.log.display(),
                    self.log_tail()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "the sidecar is not ready after {timeout:?} (is the control plane's xDS \
                     reachable from the pod?); its log ({}):\n{}",
                    self.log.display(),
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Drains (listeners stop accepting, connections finish) for up to `drain`, then stops the
    /// process.
    pub async fn stop(&mut self, drain: Duration) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // Envoy's path, which strait-proxy serves too.
        let admin = self.admin;
        let _ = tokio::task::spawn_blocking(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_secs(2)))
                .build()
                .into();
            agent
                .post(&format!("http://{admin}/drain_listeners?graceful"))
                .send_empty()
        })
        .await;
        tokio::time::sleep(drain).await;
        let id = self.id;
        let _ = tokio::task::spawn_blocking(move || {
            strait_netns::terminate(id, Duration::from_secs(5))
        })
        .await;
        let _ = self.child.wait().await;
        if let Some((mut agent, id)) = self.agent.take() {
            let _ = tokio::task::spawn_blocking(move || {
                strait_netns::terminate(id, Duration::from_secs(5))
            })
            .await;
            let _ = agent.wait().await;
        }
    }
}
