//! `strait-bench churn`: endpoint churn, strait-proxy and Envoy side by side in one run. One
//! Service whose endpoints (WorkloadEntries) are all replaced by new addresses, again and again;
//! after each change, once every sidecar routes to the new endpoints (each new endpoint has
//! answered through it), a few requests through each, which must all reach new endpoints. The endpoints are this process's own listeners ([`Farm`]); each change opens the new
//! ones and stops listening on those two changes back, but keeps their connections open, as a
//! pod being replaced would not close them for the proxy: the proxy must close what it keeps.
//!
//! Measured: each proxy's resident memory after the first `--baseline` changes and every
//! `--sample-every` changes to the end (its growth over the baseline is what the churn leaks),
//! the connections the proxies keep open to the upstream, and the errors.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde::Serialize;

use crate::farm::{self, Api, Farm, Listening, ViaProxy};
use crate::procs::{self, Process};
use crate::run::{self, Config, ControlPlane, NAMESPACE};

const SERVICE: &str = "churn";
const SERVICE_PORT: u16 = 8080;
/// The criterion (issue 13): strait-proxy's RSS at the end within this of its RSS after the
/// baseline changes.
const GROWTH_LIMIT_MB: f64 = 5.0;

#[derive(clap::Args, Debug)]
pub struct ChurnArgs {
    /// Endpoint changes (each replaces every endpoint).
    #[arg(long, default_value_t = 50_000)]
    pub changes: u64,
    /// The changes after which the baseline RSS is taken.
    #[arg(long, default_value_t = 1_000)]
    pub baseline: u64,
    /// Sample memory every this many changes.
    #[arg(long, default_value_t = 1_000)]
    pub sample_every: u64,
    /// Endpoints of the Service (all replaced at each change).
    #[arg(long, default_value_t = 3)]
    pub endpoints: usize,
    /// Requests through each sidecar after each change (once it routes to the new endpoints).
    #[arg(long, default_value_t = 6)]
    pub requests: u32,
    #[arg(long, value_delimiter = ',', default_value = "strait,envoy")]
    pub configs: Vec<Config>,
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    #[arg(long)]
    pub repo: Option<PathBuf>,
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The report's name: `<date>-<name>.json` and `.md` (default `churn`).
    #[arg(long, default_value = "churn")]
    pub name: String,
}

#[derive(Debug, Serialize)]
struct Sample {
    changes: u64,
    seconds: f64,
    rss_mb: f64,
}

#[derive(Debug, Serialize)]
struct ProxyResult {
    config: Config,
    samples: Vec<Sample>,
    rss_at_baseline_mb: f64,
    rss_at_end_mb: f64,
    /// The end's RSS less the baseline's.
    growth_mb: f64,
    peak_rss_mb: f64,
    cpu_seconds: f64,
    /// Requests answered other than 200, or not by a current endpoint, or failed.
    errors: u64,
    requests: u64,
}

#[derive(Debug, Serialize)]
struct ChurnReport {
    date: String,
    command: String,
    commit: String,
    machine: std::collections::BTreeMap<String, String>,
    changes: u64,
    baseline: u64,
    endpoints: usize,
    requests_per_change: u32,
    seconds: f64,
    /// Connections the upstream has open at the end, from all the sidecars together (each
    /// keeps at most a few to the current endpoints).
    upstream_connections_at_end: usize,
    proxies: Vec<ProxyResult>,
    /// strait-proxy's growth within the criterion (5 MB), when strait ran.
    strait_within_limit: Option<bool>,
}

struct Sidecar {
    config: Config,
    process: Process,
    client: ViaProxy,
    samples: Vec<Sample>,
    errors: u64,
    requests: u64,
}

pub fn main(args: ChurnArgs) -> anyhow::Result<()> {
    if args.baseline == 0 || args.baseline > args.changes {
        bail!(
            "--baseline {} must be between 1 and --changes {}",
            args.baseline,
            args.changes
        );
    }
    let (repo, paths) = run::paths(args.repo.as_deref(), args.bin_dir.as_deref(), &args.configs)?;
    let work = tempfile::Builder::new()
        .prefix("strait-bench-churn-")
        .tempdir()?;
    let ticks = procs::ticks_per_second();
    let net = 200 + fastrand::u8(0..50);
    let farm = Farm::new()?;
    let mut next = 0u32;
    let mut addresses = |n: usize| -> Vec<SocketAddr> {
        (0..n)
            .map(|_| {
                next += 1;
                SocketAddr::new(farm::loopback(net, next), 0)
            })
            .collect()
    };
    let mut generations: VecDeque<Listening> = VecDeque::new();
    generations.push_back(farm.listen(&addresses(args.endpoints))?);

    let cp = ControlPlane::start(&paths.strait, work.path(), false)?;
    let yaml = work.path().join("churn.yaml");
    std::fs::write(
        &yaml,
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NAMESPACE}}}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: {SERVICE}, namespace: {NAMESPACE}}}\nspec:\n  selector: {{app: {SERVICE}}}\n  ports:\n  - {{name: http, port: {SERVICE_PORT}}}\n"
        ),
    )?;
    cp.strait(&["apply", "-f", &yaml.display().to_string()])?;
    let api = Api::new(cp.api, &cp.data)?;
    let entries: Vec<String> = (0..args.endpoints)
        .map(|i| format!("{SERVICE}-{i}"))
        .collect();
    let replace = |addrs: &[SocketAddr]| -> anyhow::Result<()> {
        for (name, a) in entries.iter().zip(addrs) {
            api.workload_entry(NAMESPACE, name, SERVICE, *a)?;
        }
        Ok(())
    };
    replace(&generations[0].addrs)?;

    let host = format!("{SERVICE}.{NAMESPACE}.svc.cluster.local:{SERVICE_PORT}");
    let mut sidecars = Vec::new();
    for (i, config) in args.configs.iter().enumerate() {
        if *config == Config::Direct {
            bail!("churn runs sidecars: strait and/or envoy, not direct");
        }
        let ip = format!("127.{net}.255.{}", 10 + i);
        let run::Sidecar { process, .. } = run::start_proxy(
            *config,
            &paths,
            &cp,
            &format!("churn-client-{}", config.name()),
            &ip,
            "churn-client",
            work.path(),
        )?;
        sidecars.push(Sidecar {
            config: *config,
            process,
            client: ViaProxy::new(format!("{ip}:15080").parse()?),
            samples: Vec::new(),
            errors: 0,
            requests: 0,
        });
    }

    let start = Instant::now();
    let mut cpu_at_start = Vec::new();
    for s in &sidecars {
        cpu_at_start.push(procs::sample(s.process.pid(), ticks)?.cpu_seconds);
    }
    for change in 0..=args.changes {
        if change > 0 {
            generations.push_back(farm.listen(&addresses(args.endpoints))?);
            // Two generations listen: requests routed by a config one change old still land.
            while generations.len() > 2 {
                generations.pop_front();
            }
            replace(&generations.back().expect("a generation").addrs)?;
        }
        let current: HashSet<SocketAddr> = generations
            .back()
            .expect("a generation")
            .addrs
            .iter()
            .copied()
            .collect();
        for s in &mut sidecars {
            converge(s, &host, &current)?;
            for _ in 0..args.requests {
                s.requests += 1;
                match s.client.get(&host) {
                    Ok(a) if a.status == 200 && farm::from(&a, &current) => {}
                    _ => s.errors += 1,
                }
            }
        }
        if change == args.baseline
            || (change > 0 && change % args.sample_every == 0)
            || change == args.changes
        {
            for s in &mut sidecars {
                s.process.check_running()?;
                let p = procs::sample(s.process.pid(), ticks)?;
                s.samples.push(Sample {
                    changes: change,
                    seconds: start.elapsed().as_secs_f64(),
                    rss_mb: mb(p.rss_bytes),
                });
            }
            eprintln!(
                "churn: {change}/{} changes in {:.0} s; RSS {}; upstream connections open {}",
                args.changes,
                start.elapsed().as_secs_f64(),
                sidecars
                    .iter()
                    .map(|s| format!(
                        "{} {:.1} MB",
                        s.config.name(),
                        s.samples.last().map_or(0.0, |x| x.rss_mb)
                    ))
                    .collect::<Vec<_>>()
                    .join(", "),
                farm.open_connections()
            );
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    // Connections to endpoints that left have had their time to close (5 s: the criterion).
    std::thread::sleep(Duration::from_secs(5));
    let upstream_connections_at_end = farm.open_connections();
    let mut proxies = Vec::new();
    for (s, cpu0) in sidecars.iter_mut().zip(cpu_at_start) {
        let p = procs::sample(s.process.pid(), ticks)?;
        let at = |change: u64| {
            s.samples
                .iter()
                .find(|x| x.changes == change)
                .map_or(0.0, |x| x.rss_mb)
        };
        let (base, end) = (at(args.baseline), at(args.changes));
        proxies.push(ProxyResult {
            config: s.config,
            rss_at_baseline_mb: base,
            rss_at_end_mb: end,
            growth_mb: end - base,
            peak_rss_mb: mb(p.hwm_bytes),
            cpu_seconds: p.cpu_seconds - cpu0,
            errors: s.errors,
            requests: s.requests,
            samples: std::mem::take(&mut s.samples),
        });
    }
    drop(sidecars);
    drop(cp);
    let strait_within_limit = proxies
        .iter()
        .find(|p| p.config == Config::Strait)
        .map(|p| p.growth_mb <= GROWTH_LIMIT_MB);
    let report = ChurnReport {
        date: crate::report::today(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        commit: crate::report::git(&repo, &["rev-parse", "--short", "HEAD"]),
        machine: crate::report::machine(),
        changes: args.changes,
        baseline: args.baseline,
        endpoints: args.endpoints,
        requests_per_change: args.requests,
        seconds,
        upstream_connections_at_end,
        proxies,
        strait_within_limit,
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

/// Sends through `s` until every current endpoint has answered: the sidecar then routes to
/// the new endpoints only (the Service always has exactly that many, each change replaces them
/// one WorkloadEntry at a time); 30 s at most.
fn converge(s: &mut Sidecar, host: &str, current: &HashSet<SocketAddr>) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = HashSet::new();
    loop {
        let last = match s.client.get(host) {
            Ok(a) => {
                if let Some(e) = a.endpoint.filter(|e| current.contains(e)) {
                    seen.insert(e);
                    if seen.len() == current.len() {
                        return Ok(());
                    }
                }
                format!("{a:?}")
            }
            Err(e) => format!("{e:#}"),
        };
        s.process.check_running()?;
        if Instant::now() > deadline {
            bail!(
                "{}: not every new endpoint of {current:?} answered within 30 s (those that did: \
                 {seen:?}; last: {last}); log:\n{}",
                s.config.name(),
                s.process.log_tail()
            );
        }
    }
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn markdown(r: &ChurnReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Endpoint churn, {}: one Service's {} endpoints replaced by new addresses {} times, {} \
         requests through each sidecar after each change, in {:.0} s. Commit {}; {} cores ({}), \
         load average at the end {}.\n",
        r.date,
        r.endpoints,
        r.changes,
        r.requests_per_change,
        r.seconds,
        r.commit,
        r.machine.get("cores").cloned().unwrap_or_default(),
        r.machine.get("cpu").cloned().unwrap_or_default(),
        r.machine.get("loadavg_at_end").cloned().unwrap_or_default(),
    );
    let _ = writeln!(
        s,
        "| config | RSS MB after {} changes | RSS MB at the end | growth MB | peak RSS MB | CPU s | requests | errors |\n|---|---|---|---|---|---|---|---|",
        r.baseline
    );
    for p in &r.proxies {
        let _ = writeln!(
            s,
            "| {} | {:.1} | {:.1} | {:+.1} | {:.1} | {:.1} | {} | {} |",
            p.config.name(),
            p.rss_at_baseline_mb,
            p.rss_at_end_mb,
            p.growth_mb,
            p.peak_rss_mb,
            p.cpu_seconds,
            p.requests,
            p.errors
        );
    }
    let _ = writeln!(
        s,
        "\nUpstream connections still open 5 s after the last change (all sidecars): {}.",
        r.upstream_connections_at_end
    );
    if let Some(ok) = r.strait_within_limit {
        let _ = writeln!(
            s,
            "strait-proxy's growth is {} the {GROWTH_LIMIT_MB} MB limit.",
            if ok { "within" } else { "OVER" }
        );
    }
    let _ = writeln!(s, "\nRSS MB by changes:\n");
    let _ = write!(s, "| changes |");
    for p in &r.proxies {
        let _ = write!(s, " {} |", p.config.name());
    }
    let _ = writeln!(s, "\n|---|{}", "---|".repeat(r.proxies.len()));
    if let Some(first) = r.proxies.first() {
        for (i, x) in first.samples.iter().enumerate() {
            let _ = write!(s, "| {} |", x.changes);
            for p in &r.proxies {
                let _ = write!(s, " {:.1} |", p.samples.get(i).map_or(0.0, |y| y.rss_mb));
            }
            let _ = writeln!(s);
        }
    }
    let _ = writeln!(s, "\nCommand: `{}`", r.command);
    s
}
