//! `strait-proxy`: Strait's data plane. Takes the same identity flags as `strait bootstrap envoy`,
//! connects to the control plane over ADS and serves what it is given.

#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use clap::Parser;
use strait_xds_core::ProxyFlags;

/// strait-proxy: a sidecar or gateway fed by Strait's control plane over xDS.
#[derive(Parser)]
#[command(name = "strait-proxy", version)]
struct Args {
    #[command(flatten)]
    proxy: ProxyFlags,
    /// Runtime worker threads (default: 2).
    #[arg(long, default_value_t = 2)]
    concurrency: usize,
    /// Write a JSON access log line per request (Istio's fields) to PATH, or `-` for stdout.
    #[arg(long, value_name = "PATH|-")]
    access_log: Option<strait_proxy::AccessLogTarget>,
    /// Seconds a client may take to send a request's headers, from their first byte (0: no limit).
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    request_headers_timeout: f64,
    /// Seconds after which a downstream connection with no request in flight is closed (0: never).
    #[arg(long, value_name = "SECS", default_value_t = 3600.0)]
    idle_timeout: f64,
    /// HTTP/2 streams at once on one downstream connection.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    max_concurrent_streams: u32,
    /// Seconds without a request frame from an HTTP/2 client before a PING, and then for its ACK
    /// before the connection is closed (0: no PINGs).
    #[arg(long, value_name = "SECS", default_value_t = 0.0)]
    http2_keepalive: f64,
    /// On SIGINT or SIGTERM, how long open connections may take to finish after the listeners
    /// close (Envoy's flag name).
    #[arg(long = "drain-time-s", value_name = "SECS", default_value_t = 5.0)]
    drain_time: f64,
    /// Also serve `/stats/prometheus` (the proxy's stats and Istio's standard metrics) here,
    /// as Istio's sidecars do on POD_IP:15090 (`strait run` sets it); always on the admin port.
    #[arg(long, value_name = "ADDR")]
    prometheus: Option<std::net::SocketAddr>,
}

/// Seconds from a flag as a timeout: 0 is none.
fn timeout(flag: &str, secs: f64) -> Result<Option<Duration>> {
    if secs == 0.0 {
        return Ok(None);
    }
    Duration::try_from_secs_f64(secs)
        .map(Some)
        .map_err(|_| anyhow!("--{flag} {secs} is not a number of seconds: write e.g. --{flag} 10"))
}

/// Completes on the first SIGINT (Ctrl-C) or SIGTERM.
async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::error!("cannot handle SIGINT and SIGTERM: stop the proxy with /quitquitquit");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => tracing::info!("SIGINT"),
        _ = term.recv() => tracing::info!("SIGTERM"),
    }
}

/// The workload identity to obtain, from the identity flags: with `--ca-addr`, the proxy
/// obtains its certificate from the mesh CA (proving itself with `--bootstrap-token`), checks it
/// with `--root-cert`, and serves mutual TLS with it.
fn identity(
    flags: &strait_xds_core::flags::IdentityFlags,
    proxy: &strait_xds_core::Proxy,
) -> Result<Option<strait_identity::manager::ManagerOptions>> {
    let Some(ca) = flags.ca_addr else {
        return Ok(None);
    };
    let root_cert = flags.root_cert.as_deref().ok_or_else(|| {
        anyhow!("--ca-addr needs --root-cert: the mesh's trust bundle (PEM) to check the CA with")
    })?;
    let identity = strait_identity::Identity::new(
        &flags.trust_domain,
        &proxy.namespace,
        &proxy.service_account,
    );
    Ok(Some(strait_identity::manager::ManagerOptions::from_files(
        ca,
        root_cert,
        flags.bootstrap_token.as_deref(),
        identity,
        flags.cert_ttl,
    )?))
}

fn main() -> Result<()> {
    // Colours only on a terminal: a log file gets plain text.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let proxy = args.proxy.proxy();
    let identity = identity(&args.proxy.identity, &proxy)?;
    let node = strait_proxy::node(&proxy);
    let limits = strait_proxy::HttpLimits {
        request_headers_timeout: timeout("request-headers-timeout", args.request_headers_timeout)?,
        idle_timeout: timeout("idle-timeout", args.idle_timeout)?,
        max_concurrent_streams: args.max_concurrent_streams.max(1),
        http2_keepalive: timeout("http2-keepalive", args.http2_keepalive)?,
        ..strait_proxy::HttpLimits::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.concurrency.max(1))
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let drain_time = Duration::try_from_secs_f64(args.drain_time).map_err(|_| {
        anyhow!(
            "--drain-time-s {} is not a number of seconds: write e.g. --drain-time-s 5",
            args.drain_time
        )
    })?;
    let opts = strait_proxy::Options {
        node,
        xds: args.proxy.xds_or_default(),
        admin: args.proxy.admin,
        prometheus: args.prometheus,
        api: args.proxy.api,
        limits,
        access_log: args.access_log.clone(),
        drain_time,
        identity,
    };
    runtime.block_on(strait_proxy::run_until(opts, stop_signal()))?;
    Ok(())
}
