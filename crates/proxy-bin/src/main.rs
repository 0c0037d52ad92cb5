//! `strait-proxy`: Strait's data plane. Takes the same identity flags as `strait bootstrap envoy`,
//! connects to the control plane over ADS and serves what it is given.

#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use clap::{Parser, ValueEnum};
use strait_xds::{CaptureMode, Proxy, ProxyRole};

/// strait-proxy: a sidecar or gateway fed by Strait's control plane over xDS.
#[derive(Parser)]
#[command(name = "strait-proxy", version)]
struct Args {
    /// The workload (pod) name.
    #[arg(long)]
    workload: String,
    #[arg(long, default_value = "default")]
    namespace: String,
    /// The workload's address.
    #[arg(long, default_value = "127.0.0.1")]
    address: IpAddr,
    #[arg(long, value_enum, default_value = "sidecar")]
    role: Role,
    /// The workload's labels: `app=reviews,version=v1`.
    #[arg(long, value_delimiter = ',')]
    labels: Vec<String>,
    /// How traffic reaches the proxy: iptables capture, or none (HTTP proxy on ADDRESS:15080).
    #[arg(long, value_enum, default_value = "iptables")]
    capture: Capture,
    #[arg(long, default_value = "default")]
    service_account: String,
    /// Where the app serves, when not on 127.0.0.1 (without capture, apps on one machine need
    /// addresses of their own): inbound traffic goes there.
    #[arg(long)]
    app_address: Option<IpAddr>,
    /// The control plane's xDS address.
    #[arg(long, default_value = "127.0.0.1:15010")]
    xds: SocketAddr,
    /// The admin address.
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin: SocketAddr,
    /// The ADS variant: delta (falls back to sotw when the control plane has no Delta) or sotw.
    #[arg(long, value_enum, default_value = "delta")]
    api: Api,
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

#[derive(Clone, Copy, ValueEnum)]
enum Role {
    Sidecar,
    Gateway,
}

#[derive(Clone, Copy, ValueEnum)]
enum Api {
    Delta,
    Sotw,
}

#[derive(Clone, Copy, ValueEnum)]
enum Capture {
    Iptables,
    None,
}

fn labels(items: &[String]) -> Result<BTreeMap<String, String>> {
    items
        .iter()
        .filter(|l| !l.is_empty())
        .map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| {
                    anyhow!("label {l:?} is not KEY=VALUE: write --labels app=reviews,version=v1")
                })
        })
        .collect()
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let role = match args.role {
        Role::Sidecar => ProxyRole::Sidecar,
        Role::Gateway => ProxyRole::Gateway,
    };
    let proxy = Proxy {
        id: Proxy::node_id(role, args.address, &args.workload, &args.namespace),
        role,
        ip: args.address,
        workload: args.workload.clone(),
        namespace: args.namespace.clone(),
        labels: labels(&args.labels)?,
        capture: match args.capture {
            Capture::Iptables => CaptureMode::Iptables,
            Capture::None => CaptureMode::None,
        },
        service_account: args.service_account.clone(),
        app_address: args.app_address,
    };
    let node = strait_proxy::node(&proxy);
    let limits = strait_proxy::HttpLimits {
        request_headers_timeout: timeout("request-headers-timeout", args.request_headers_timeout)?,
        idle_timeout: timeout("idle-timeout", args.idle_timeout)?,
        max_concurrent_streams: args.max_concurrent_streams.max(1),
        ..strait_proxy::HttpLimits::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.concurrency.max(1))
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(strait_proxy::run(strait_proxy::Options {
        node,
        xds: args.xds,
        admin: args.admin,
        api: match args.api {
            Api::Delta => strait_proxy::XdsApi::Delta,
            Api::Sotw => strait_proxy::XdsApi::Sotw,
        },
        limits,
        access_log: args.access_log.clone(),
    }))?;
    Ok(())
}
