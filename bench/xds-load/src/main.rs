//! `strait-xds-load`: simulated Delta-ADS sidecars against a Strait control plane. Progress goes
//! to stderr, the JSON summary to stdout.

#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use serde_json::json;
use strait_xds_load::api::Api;
use strait_xds_load::{report, run};

#[derive(Parser)]
#[command(
    name = "strait-xds-load",
    about = "Connects simulated sidecars over Delta ADS to a Strait control plane and times config pushes",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Creates Services (port 9080, named http) and WorkloadEntries selected by them.
    Seed {
        #[command(flatten)]
        api: ApiArgs,
        #[arg(long, default_value_t = 1000)]
        services: usize,
        #[arg(long, default_value_t = 10)]
        endpoints_per_service: usize,
        /// Concurrent API writers.
        #[arg(long, default_value_t = 8)]
        parallel: usize,
    },
    /// Prints a result file (or a run's JSON summary) as a Markdown table.
    Table { file: PathBuf },
}

#[derive(Args)]
struct ApiArgs {
    /// The control plane's API, http://HOST:PORT.
    #[arg(long)]
    api: Option<String>,
    /// The API token file (DATA_DIR/token).
    #[arg(long)]
    token_file: Option<PathBuf>,
}

impl ApiArgs {
    fn api(&self) -> Result<Option<Api>> {
        match (&self.api, &self.token_file) {
            (Some(url), Some(token)) => Ok(Some(Api::new(url, token)?)),
            (None, None) => Ok(None),
            _ => anyhow::bail!("--api and --token-file go together"),
        }
    }
}

#[derive(Args)]
struct RunArgs {
    /// The control plane's xDS address, HOST:PORT, or several replicas' as HOST:PORT,HOST:PORT
    /// (client i connects to the i mod n-th; the restart command restarts the first).
    #[arg(long, default_value = "127.0.0.1:15010")]
    xds: String,
    /// Simulated sidecars.
    #[arg(long, default_value_t = 200)]
    clients: usize,
    #[command(flatten)]
    api: ApiArgs,
    /// Services seeded: wait until the control plane serves them all before connecting, and
    /// pick changed endpoints among them (0: do not wait).
    #[arg(long, default_value_t = 0)]
    services: usize,
    /// Single endpoint changes to time, one at a time (needs --api).
    #[arg(long, default_value_t = 0)]
    changes: usize,
    /// A shell command that restarts the control plane; then the full push after restart is timed.
    #[arg(long)]
    restart_cmd: Option<String>,
    /// A file with the control plane's process id, for its memory and CPU.
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// The longest any one wait may take, in seconds.
    #[arg(long, default_value_t = 600)]
    timeout_s: u64,
    /// Worker threads of the clients' runtime.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Seed {
            api,
            services,
            endpoints_per_service,
            parallel,
        }) => {
            let api = api.api()?.context("seed needs --api and --token-file")?;
            let seconds = api.seed(services, endpoints_per_service, parallel)?;
            let summary = json!({
                "services": services,
                "endpoints": services * endpoints_per_service,
                "seconds": seconds,
            });
            println!("{summary}");
        }
        Some(Command::Table { file }) => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", file.display()))?;
            print!("{}", report::table(&value));
        }
        None => {
            let a = cli.run;
            let opts = run::Options {
                xds: a.xds,
                clients: a.clients,
                api: a.api.api()?,
                services: a.services,
                changes: a.changes,
                restart_cmd: a.restart_cmd,
                pid_file: a.pid_file,
                timeout: Duration::from_secs(a.timeout_s),
            };
            if opts.changes > 0 && (opts.api.is_none() || opts.services == 0) {
                anyhow::bail!("--changes needs --api, --token-file and --services");
            }
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(a.threads.max(1))
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            let summary = runtime.block_on(run::run(opts))?;
            println!("{}", serde_json::to_string_pretty(&summary)?);
            // The clients' tasks would reconnect forever: end without waiting for them.
            runtime.shutdown_background();
        }
    }
    Ok(())
}
