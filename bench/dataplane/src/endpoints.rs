//! `strait-bench endpoints`: what a request costs the proxy when its cluster has many endpoints,
//! strait-proxy and Envoy side by side in one run. Two Services behind one client sidecar: `one`
//! with a single endpoint and `many` with `--endpoints` (5,000 by default), all of them this
//! process's own listeners ([`Farm`]) on addresses of their own, balanced round robin (a
//! DestinationRule; `--lb` for another policy). After a warm-up
//! that opens a connection to every endpoint, each round loads each Service in turn at a
//! constant rate (k6) and reads the sidecar's CPU time from /proc: CPU per request, `many`
//! against `one`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use serde::Serialize;

use crate::farm::{self, Farm, ViaProxy};
use crate::k6::{self, Load, Outcome};
use crate::procs;
use crate::run::{self, Config, ControlPlane, NAMESPACE};

const SERVICE_PORT: u16 = 8080;
/// The criterion (issue 13): a request to the large cluster costs strait-proxy at most this
/// many times its CPU for the one-endpoint cluster.
const RATIO_LIMIT: f64 = 1.5;

#[derive(clap::Args, Debug)]
pub struct EndpointsArgs {
    /// Endpoints of the large Service.
    #[arg(long, default_value_t = 5_000)]
    pub endpoints: u32,
    /// Requests per second.
    #[arg(long, default_value_t = 1_000)]
    pub rate: u32,
    /// Seconds of load per Service and round.
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// Seconds of warm-up on each Service first (at least enough requests to reach every
    /// endpoint: `endpoints / rate`).
    #[arg(long, default_value_t = 10)]
    pub warmup_seconds: u64,
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// The DestinationRule's `loadBalancer.simple` for both Services. ROUND_ROBIN (default)
    /// reaches every endpoint in the warm-up, so that the measured requests open no
    /// connection; Istio's own default, LEAST_REQUEST, picks at random and needs a warm-up of
    /// several times `endpoints / rate` for that.
    #[arg(long, default_value = "ROUND_ROBIN")]
    pub lb: String,
    /// Connections from the load generator.
    #[arg(long, default_value_t = 16)]
    pub connections: u32,
    #[arg(long, value_delimiter = ',', default_value = "strait,envoy")]
    pub configs: Vec<Config>,
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    #[arg(long)]
    pub repo: Option<PathBuf>,
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The report's name: `<date>-<name>.json` and `.md` (default `endpoints`).
    #[arg(long, default_value = "endpoints")]
    pub name: String,
}

#[derive(Debug, Serialize)]
struct Run {
    config: Config,
    service: &'static str,
    round: u32,
    outcome: Outcome,
    /// The sidecar's CPU milliseconds per request.
    cpu_ms_per_request: f64,
}

#[derive(Debug, Serialize)]
struct Summary {
    /// Medians over the rounds.
    one_cpu_ms_per_request: f64,
    many_cpu_ms_per_request: f64,
    /// many / one.
    ratio: f64,
    one_p99_ms: f64,
    many_p99_ms: f64,
    errors: u64,
}

#[derive(Debug, Serialize)]
struct EndpointsReport {
    date: String,
    command: String,
    commit: String,
    machine: BTreeMap<String, String>,
    endpoints: u32,
    /// The load balancing policy (DestinationRule `loadBalancer.simple`).
    lb: String,
    rate: u32,
    seconds: u64,
    rounds: u32,
    summary: BTreeMap<String, Summary>,
    /// strait-proxy's many/one ratio within the criterion (1.5), when strait ran.
    strait_within_limit: Option<bool>,
    runs: Vec<Run>,
}

pub fn main(args: EndpointsArgs) -> anyhow::Result<()> {
    let (repo, paths) = run::paths(args.repo.as_deref(), args.bin_dir.as_deref(), &args.configs)?;
    let work = tempfile::Builder::new()
        .prefix("strait-bench-endpoints-")
        .tempdir()?;
    let ticks = procs::ticks_per_second();
    let net = 200 + fastrand::u8(0..50);
    let farm = Farm::new()?;
    // One port on every address, found free on all of them.
    let listening = {
        let mut tries = 0;
        loop {
            let port = 20_000 + fastrand::u16(0..20_000);
            let addrs: Vec<SocketAddr> = (1..=args.endpoints + 1)
                .map(|n| SocketAddr::new(farm::loopback(net, n), port))
                .collect();
            match farm.listen(&addrs) {
                Ok(l) => break l,
                Err(e) if tries < 5 => {
                    tries += 1;
                    eprintln!("endpoints: {e:#}; another port");
                }
                Err(e) => return Err(e),
            }
        }
    };
    let (one, many) = listening.addrs.split_at(1);

    let cp = ControlPlane::start(&paths.strait, work.path(), false)?;
    let mut yaml = format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NAMESPACE}}}\n");
    for (service, addrs) in [("one", one), ("many", many)] {
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {service}, namespace: {NAMESPACE}}}\nspec:\n  selector: {{app: {service}}}\n  ports:\n  - {{name: http, port: {SERVICE_PORT}}}\n"
        ));
        yaml.push_str(&format!(
            "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {service}, namespace: {NAMESPACE}}}\nspec:\n  host: {service}.{NAMESPACE}.svc.cluster.local\n  trafficPolicy:\n    loadBalancer: {{simple: {}}}\n",
            args.lb
        ));
        for (i, a) in addrs.iter().enumerate() {
            yaml.push_str(&format!(
                "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {service}-{i}, namespace: {NAMESPACE}}}\nspec:\n  address: {}\n  ports: {{http: {}}}\n  labels: {{app: {service}}}\n",
                a.ip(),
                a.port()
            ));
        }
    }
    let file = work.path().join("endpoints.yaml");
    std::fs::write(&file, yaml)?;
    eprintln!("endpoints: applying {} WorkloadEntries", args.endpoints + 1);
    cp.strait(&["apply", "-f", &file.display().to_string()])?;

    let host = |service: &str| format!("{service}.{NAMESPACE}.svc.cluster.local:{SERVICE_PORT}");
    let mut runs = Vec::new();
    for (i, config) in args.configs.iter().enumerate() {
        if *config == Config::Direct {
            bail!("endpoints runs sidecars: strait and/or envoy, not direct");
        }
        let ip = format!("127.{net}.255.{}", 10 + i);
        let run::Sidecar { mut process, .. } = run::start_proxy(
            *config,
            &paths,
            &cp,
            &format!("endpoints-client-{}", config.name()),
            &ip,
            "endpoints-client",
            work.path(),
        )?;
        let proxy = format!("http://{ip}:15080");
        // Until both Services answer, with every endpoint of `many` in the sidecar's config
        // (a request reaches each in turn: the distinct endpoints seen).
        let mut client = ViaProxy::new(format!("{ip}:15080").parse()?);
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        let mut seen = std::collections::HashSet::new();
        while seen.len() < many.len().min(50)
            || client.get(&host("one")).map_or(true, |a| a.status != 200)
        {
            if let Ok(a) = client.get(&host("many"))
                && a.status == 200
                && let Some(e) = a.endpoint
            {
                seen.insert(e);
            }
            process.check_running()?;
            if std::time::Instant::now() > deadline {
                bail!(
                    "{}: the Services did not answer within 120 s; log:\n{}",
                    config.name(),
                    process.log_tail()
                );
            }
        }
        eprintln!("endpoints: {}: warming up", config.name());
        for service in ["one", "many"] {
            k6::run(
                &paths.k6,
                work.path(),
                &format!("http://{}/", host(service)),
                Some(&proxy),
                Load::Rate { rate: args.rate },
                args.connections,
                Duration::from_secs(args.warmup_seconds),
            )?;
        }
        for round in 0..args.rounds {
            let order = if round % 2 == 0 {
                ["one", "many"]
            } else {
                ["many", "one"]
            };
            for service in order {
                let before = procs::sample(process.pid(), ticks)?;
                let outcome = k6::run(
                    &paths.k6,
                    work.path(),
                    &format!("http://{}/", host(service)),
                    Some(&proxy),
                    Load::Rate { rate: args.rate },
                    args.connections,
                    Duration::from_secs(args.seconds),
                )?;
                let after = procs::sample(process.pid(), ticks)?;
                let cpu_ms_per_request = (after.cpu_seconds - before.cpu_seconds) * 1000.0
                    / outcome.requests.max(1) as f64;
                eprintln!(
                    "endpoints: {} round {} {service}: {:.3} ms CPU per request, p99 {:.2} ms, {} failed",
                    config.name(),
                    round + 1,
                    cpu_ms_per_request,
                    outcome.p99_ms,
                    outcome.failed
                );
                runs.push(Run {
                    config: *config,
                    service,
                    round,
                    outcome,
                    cpu_ms_per_request,
                });
            }
        }
        process.check_running()?;
    }
    drop(cp);
    drop(listening);

    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => 0.0,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    };
    let mut summary = BTreeMap::new();
    for config in &args.configs {
        let of = |service: &str, f: &dyn Fn(&Run) -> f64| {
            median(
                runs.iter()
                    .filter(|r| r.config == *config && r.service == service)
                    .map(f)
                    .collect(),
            )
        };
        let one = of("one", &|r| r.cpu_ms_per_request);
        let many = of("many", &|r| r.cpu_ms_per_request);
        summary.insert(
            config.name().to_string(),
            Summary {
                one_cpu_ms_per_request: one,
                many_cpu_ms_per_request: many,
                ratio: if one > 0.0 { many / one } else { 0.0 },
                one_p99_ms: of("one", &|r| r.outcome.p99_ms),
                many_p99_ms: of("many", &|r| r.outcome.p99_ms),
                errors: runs
                    .iter()
                    .filter(|r| r.config == *config)
                    .map(|r| r.outcome.failed + r.outcome.dropped)
                    .sum(),
            },
        );
    }
    let report = EndpointsReport {
        date: crate::report::today(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        commit: crate::report::git(&repo, &["rev-parse", "--short", "HEAD"]),
        machine: crate::report::machine(),
        endpoints: args.endpoints,
        lb: args.lb.clone(),
        rate: args.rate,
        seconds: args.seconds,
        rounds: args.rounds,
        strait_within_limit: summary.get("strait").map(|s| s.ratio <= RATIO_LIMIT),
        summary,
        runs,
    };
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| repo.join("bench/results"));
    std::fs::create_dir_all(&out)?;
    let json = out.join(format!("{}-{}.json", report.date, args.name));
    let md = out.join(format!("{}-{}.md", report.date, args.name));
    std::fs::write(&json, serde_json::to_string_pretty(&report)? + "\n")?;
    std::fs::write(&md, markdown(&report))?;
    println!("{}", markdown(&report));
    eprintln!("wrote {} and {}", json.display(), md.display());
    Ok(())
}

fn markdown(r: &EndpointsReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Endpoints per cluster, {}: one client sidecar, HTTP/1.1 at {} requests/s for {} s per \
         Service and round, {} round(s); `one` has 1 endpoint, `many` {} ({}). Commit \
         {}; {} cores ({}), load average at the end {}.\n",
        r.date,
        r.rate,
        r.seconds,
        r.rounds,
        r.endpoints,
        r.lb,
        r.commit,
        r.machine.get("cores").cloned().unwrap_or_default(),
        r.machine.get("cpu").cloned().unwrap_or_default(),
        r.machine.get("loadavg_at_end").cloned().unwrap_or_default(),
    );
    let _ = writeln!(
        s,
        "| config | CPU ms per request, 1 endpoint | CPU ms per request, {} endpoints | ratio | p99 ms, 1 / {} | errors |\n|---|---|---|---|---|---|",
        r.endpoints, r.endpoints
    );
    for (name, x) in &r.summary {
        let _ = writeln!(
            s,
            "| {name} | {:.3} | {:.3} | {:.2} | {:.2} / {:.2} | {} |",
            x.one_cpu_ms_per_request,
            x.many_cpu_ms_per_request,
            x.ratio,
            x.one_p99_ms,
            x.many_p99_ms,
            x.errors
        );
    }
    if let Some(ok) = r.strait_within_limit {
        let _ = writeln!(
            s,
            "\nstrait-proxy's ratio is {} the {RATIO_LIMIT}x limit.",
            if ok { "within" } else { "OVER" }
        );
    }
    let _ = writeln!(s, "\nCommand: `{}`", r.command);
    s
}
