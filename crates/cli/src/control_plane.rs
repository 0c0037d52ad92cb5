//! `strait control-plane`, and where the CLI finds a local control plane.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use strait_controlplane::Options;
pub use strait_controlplane::{SERVER_FILE, XDS_FILE};

/// The data directory: the flag, else `$STRAIT_HOME`, else `~/.strait`.
pub fn data_dir(flag: Option<&Path>) -> PathBuf {
    if let Some(d) = flag {
        return d.to_path_buf();
    }
    if let Some(d) = std::env::var_os("STRAIT_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".strait")
}

/// The mesh-wide settings of the command line: the mesh config file and the flags that
/// override it.
pub struct MeshFlags {
    pub file: Option<PathBuf>,
    pub trust_domain: Option<String>,
    pub outbound_policy: Option<strait_translate::OutboundPolicy>,
}

/// Fills `opts`' mesh-wide settings from the mesh config file (its unhonoured fields logged as
/// warnings), then from the flags.
fn mesh_settings(opts: &mut Options, flags: MeshFlags) -> Result<()> {
    use strait_api::mesh_config::OutboundMode;
    let mut mesh = strait_api::mesh_config::MeshConfig::default();
    if let Some(path) = &flags.file {
        let file = strait_api::mesh_config::load(path)?;
        for w in &file.warnings {
            tracing::warn!(file = %path.display(), "mesh config: {w}");
        }
        if file.config.enable_auto_mtls == Some(false) {
            tracing::warn!(
                file = %path.display(),
                "mesh config: enableAutoMtls: false is not honoured: Strait always sends mutual                  TLS to endpoints with a sidecar unless a DestinationRule says otherwise"
            );
        }
        tracing::info!(
            file = %path.display(),
            extension_providers = file.config.extension_providers.len(),
            "mesh config read"
        );
        mesh = file.config;
    }
    opts.identity.trust_domain = flags
        .trust_domain
        .or(mesh.trust_domain.clone())
        .unwrap_or_else(|| "cluster.local".to_string());
    opts.outbound_policy = flags
        .outbound_policy
        .unwrap_or(match mesh.outbound_traffic_policy {
            Some(OutboundMode::RegistryOnly) => strait_translate::OutboundPolicy::RegistryOnly,
            _ => strait_translate::OutboundPolicy::AllowAny,
        });
    opts.mesh = mesh;
    Ok(())
}

pub fn run(mut opts: Options, flags: MeshFlags) -> Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("STRAIT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    mesh_settings(&mut opts, flags)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(strait_controlplane::run(opts))?;
    Ok(ExitCode::SUCCESS)
}
