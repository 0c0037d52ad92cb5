//! `strait control-plane`: the resource API on the embedded store.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use strait_apiserver::{ApiState, load_or_create_token, router};
use strait_store::{FileStore, Store};

/// The file in the data directory where the running control plane records its API address, so
/// that a plain `strait apply` finds it.
pub const SERVER_FILE: &str = "server";

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

pub fn run(dir: PathBuf, api_addr: &str) -> Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("STRAIT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating the data directory {}", dir.display()))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("setting the mode of {}", dir.display()))?;
    let store: Arc<dyn Store> = Arc::new(
        FileStore::open(&dir).with_context(|| format!("opening the store in {}", dir.display()))?,
    );
    let token = load_or_create_token(&dir)
        .with_context(|| format!("reading or creating the API token in {}", dir.display()))?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(api_addr)
            .await
            .with_context(|| format!("binding the API address {api_addr} (is another control plane running?)"))?;
        let local = listener.local_addr()?;
        let server_file = dir.join(SERVER_FILE);
        std::fs::write(&server_file, format!("http://{local}\n"))
            .with_context(|| format!("writing {}", server_file.display()))?;
        tracing::info!(api = %format!("http://{local}"), data_dir = %dir.display(), "control plane ready");
        axum::serve(listener, router(ApiState::new(store, token)))
            .with_graceful_shutdown(shutdown_signal())
            .await
            .context("serving the API")?;
        let _ = std::fs::remove_file(&server_file);
        tracing::info!("control plane stopped");
        Ok(ExitCode::SUCCESS)
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
