//! The report: every round's numbers, the medians per configuration, the ratios strait/envoy,
//! the machine; as JSON and as a Markdown table.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

use crate::k6::Outcome;
use crate::run::Config;
use crate::{Mode, RunArgs};

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Settings {
    pub rounds: u32,
    pub rate: u32,
    pub seconds: u64,
    pub max_seconds: u64,
    pub h2_seconds: u64,
    pub connections: u32,
    pub body_size: usize,
    /// Mutual TLS between the sidecars (STRICT).
    pub mtls: bool,
    /// ALLOW rules on the server sidecar (0: no AuthorizationPolicy).
    pub authz_rules: u32,
}

impl Settings {
    pub fn for_mode(a: &RunArgs) -> Settings {
        let (rounds, rate, seconds, max_seconds, h2_seconds) = match a.mode {
            Mode::Full => (3, 1000, 30, 15, 10),
            Mode::Quick => (1, 1000, 10, 8, 5),
            Mode::Smoke => (1, 200, 2, 2, 2),
        };
        Settings {
            rounds: a.rounds.unwrap_or(rounds).max(1),
            rate: a.rate.unwrap_or(rate),
            seconds: a.seconds.unwrap_or(seconds),
            max_seconds: a.max_seconds.unwrap_or(max_seconds),
            h2_seconds: a.h2_seconds.unwrap_or(h2_seconds),
            connections: a.connections,
            body_size: a.body_size,
            mtls: a.mtls,
            authz_rules: a.authz_rules,
        }
    }
}

/// One proxy's use of the machine in one round.
#[derive(Debug, Clone, Serialize)]
pub struct ProxyUsage {
    /// `client` or `server` sidecar.
    pub role: String,
    pub idle_rss_mb: f64,
    /// The median of the samples taken during the constant-rate load.
    pub steady_rss_mb: f64,
    /// VmHWM at the end of the round (after the maximum-rate load).
    pub peak_rss_mb: f64,
    /// CPU seconds per 1000 requests: at 1000 requests per second, the cores kept busy.
    pub cpu_per_1000_requests_fixed: f64,
    pub cpu_per_1000_requests_max: f64,
    pub cpu_per_1000_requests_h2: f64,
    pub cpu_per_1000_requests_grpc: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RoundResult {
    pub config: Config,
    pub round: u32,
    pub fixed: Outcome,
    pub max: Outcome,
    /// HTTP/2 (h2c) at the maximum rate (closed loop).
    pub h2: Outcome,
    /// gRPC unary at the maximum rate (closed loop).
    pub grpc: Outcome,
    pub proxies: Vec<ProxyUsage>,
}

/// Medians over the rounds of one protocol's maximum-rate run.
#[derive(Debug, Clone, Serialize)]
pub struct ProtocolSummary {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub cpu_per_1000_requests: Option<f64>,
    pub errors: u64,
}

/// Medians over the rounds for one configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    /// Latency added over `direct` (absent for `direct` itself or when it did not run).
    pub added_p50_ms: Option<f64>,
    pub added_p90_ms: Option<f64>,
    pub added_p99_ms: Option<f64>,
    pub added_p999_ms: Option<f64>,
    pub fixed_rps: f64,
    pub max_rps: f64,
    /// Both sidecars together, CPU seconds per 1000 requests at the constant rate.
    pub cpu_per_1000_requests: Option<f64>,
    /// Both sidecars, CPU seconds per 1000 requests at the maximum rate.
    pub cpu_per_1000_requests_max: Option<f64>,
    /// Per proxy (the larger of client and server): resident memory.
    pub idle_rss_mb: Option<f64>,
    pub steady_rss_mb: Option<f64>,
    pub peak_rss_mb: Option<f64>,
    /// HTTP/2 (h2c) and gRPC unary at the maximum rate (closed loop): requests per second,
    /// latency, and both sidecars' CPU seconds per 1000 requests.
    pub h2: ProtocolSummary,
    pub grpc: ProtocolSummary,
    /// Failed requests plus iterations k6 could not start on time, over every round.
    pub errors: u64,
    pub dropped: u64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub date: String,
    pub mode: Mode,
    pub command: String,
    pub commit: String,
    pub machine: BTreeMap<String, String>,
    pub settings: Settings,
    pub summary: BTreeMap<String, Summary>,
    /// strait / envoy, where both ran.
    pub ratios: BTreeMap<String, f64>,
    pub rounds: Vec<RoundResult>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn summarize(rounds: &[&RoundResult]) -> Summary {
    let m = |f: &dyn Fn(&RoundResult) -> f64| median(rounds.iter().map(|r| f(r)).collect());
    let proxied = rounds.iter().all(|r| !r.proxies.is_empty());
    let sum_cpu =
        |f: &dyn Fn(&ProxyUsage) -> f64| proxied.then(|| m(&|r| r.proxies.iter().map(f).sum()));
    let max_mem = |f: &dyn Fn(&ProxyUsage) -> f64| {
        proxied.then(|| m(&|r| r.proxies.iter().map(f).fold(0.0, f64::max)))
    };
    Summary {
        p50_ms: m(&|r| r.fixed.p50_ms),
        p90_ms: m(&|r| r.fixed.p90_ms),
        p99_ms: m(&|r| r.fixed.p99_ms),
        p999_ms: m(&|r| r.fixed.p999_ms),
        added_p50_ms: None,
        added_p90_ms: None,
        added_p99_ms: None,
        added_p999_ms: None,
        fixed_rps: m(&|r| r.fixed.rps),
        max_rps: m(&|r| r.max.rps),
        cpu_per_1000_requests: sum_cpu(&|p| p.cpu_per_1000_requests_fixed),
        cpu_per_1000_requests_max: sum_cpu(&|p| p.cpu_per_1000_requests_max),
        idle_rss_mb: max_mem(&|p| p.idle_rss_mb),
        steady_rss_mb: max_mem(&|p| p.steady_rss_mb),
        peak_rss_mb: max_mem(&|p| p.peak_rss_mb),
        h2: ProtocolSummary {
            rps: m(&|r| r.h2.rps),
            p50_ms: m(&|r| r.h2.p50_ms),
            p99_ms: m(&|r| r.h2.p99_ms),
            p999_ms: m(&|r| r.h2.p999_ms),
            cpu_per_1000_requests: sum_cpu(&|p| p.cpu_per_1000_requests_h2),
            errors: rounds.iter().map(|r| r.h2.failed).sum(),
        },
        grpc: ProtocolSummary {
            rps: m(&|r| r.grpc.rps),
            p50_ms: m(&|r| r.grpc.p50_ms),
            p99_ms: m(&|r| r.grpc.p99_ms),
            p999_ms: m(&|r| r.grpc.p999_ms),
            cpu_per_1000_requests: sum_cpu(&|p| p.cpu_per_1000_requests_grpc),
            errors: rounds.iter().map(|r| r.grpc.failed).sum(),
        },
        errors: rounds
            .iter()
            .map(|r| r.fixed.failed + r.max.failed + r.fixed.dropped + r.h2.failed + r.grpc.failed)
            .sum(),
        dropped: rounds.iter().map(|r| r.fixed.dropped).sum(),
    }
}

impl Report {
    pub fn new(
        args: &RunArgs,
        settings: Settings,
        rounds: Vec<RoundResult>,
        repo: &Path,
    ) -> Report {
        let mut summary = BTreeMap::new();
        for config in &args.configs {
            let rs: Vec<&RoundResult> = rounds.iter().filter(|r| r.config == *config).collect();
            if !rs.is_empty() {
                summary.insert(config.name().to_string(), summarize(&rs));
            }
        }
        if let Some(direct) = summary.get("direct").cloned() {
            for (name, s) in summary.iter_mut() {
                if name != "direct" {
                    s.added_p50_ms = Some(s.p50_ms - direct.p50_ms);
                    s.added_p90_ms = Some(s.p90_ms - direct.p90_ms);
                    s.added_p99_ms = Some(s.p99_ms - direct.p99_ms);
                    s.added_p999_ms = Some(s.p999_ms - direct.p999_ms);
                }
            }
        }
        let mut ratios = BTreeMap::new();
        if let (Some(s), Some(e)) = (summary.get("strait"), summary.get("envoy")) {
            let mut ratio = |key: &str, a: Option<f64>, b: Option<f64>| {
                if let (Some(a), Some(b)) = (a, b)
                    && b != 0.0
                {
                    ratios.insert(key.to_string(), a / b);
                }
            };
            // Added latency is a difference of noisy numbers: a ratio only when both are above
            // the floor (in a short run either may come out below `direct`).
            if s.added_p99_ms.is_some_and(|v| v > 0.0) && e.added_p99_ms.is_some_and(|v| v > 0.0) {
                ratio("added_p99_latency", s.added_p99_ms, e.added_p99_ms);
            }
            ratio("p99_latency", Some(s.p99_ms), Some(e.p99_ms));
            ratio("steady_rss", s.steady_rss_mb, e.steady_rss_mb);
            ratio("peak_rss", s.peak_rss_mb, e.peak_rss_mb);
            ratio(
                "cpu_per_1000_rps",
                s.cpu_per_1000_requests,
                e.cpu_per_1000_requests,
            );
            ratio("max_rps", Some(s.max_rps), Some(e.max_rps));
            ratio("h2_max_rps", Some(s.h2.rps), Some(e.h2.rps));
            ratio("grpc_max_rps", Some(s.grpc.rps), Some(e.grpc.rps));
            ratio(
                "h2_cpu_per_1000_requests",
                s.h2.cpu_per_1000_requests,
                e.h2.cpu_per_1000_requests,
            );
            ratio(
                "grpc_cpu_per_1000_requests",
                s.grpc.cpu_per_1000_requests,
                e.grpc.cpu_per_1000_requests,
            );
        }
        Report {
            date: today(),
            mode: args.mode,
            command: std::env::args().collect::<Vec<_>>().join(" "),
            commit: git(repo, &["rev-parse", "--short", "HEAD"]),
            machine: machine(),
            settings,
            summary,
            ratios,
            rounds,
        }
    }
}

pub(crate) fn today() -> String {
    Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown-date".into())
}

pub(crate) fn git(repo: &Path, args: &[&str]) -> String {
    Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

pub(crate) fn machine() -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    m.insert("cpu".into(), model);
    m.insert(
        "cores".into(),
        std::thread::available_parallelism()
            .map(|n| n.to_string())
            .unwrap_or_default(),
    );
    let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    m.insert(
        "memory".into(),
        mem.lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .collect::<Vec<_>>()
            .join(" "),
    );
    m.insert(
        "kernel".into(),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
    );
    m.insert(
        "loadavg_at_end".into(),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    );
    m
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map(|v| format!("{v:.digits$}"))
        .unwrap_or_else(|| "-".into())
}

/// The Markdown table: one row per configuration, then the ratios.
pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let st = &r.settings;
    let _ = writeln!(
        s,
        "Data plane, {} mode, {}: HTTP/1.1, {}, {} B bodies, {} connections, {} round(s); \
         {} requests/s for {} s, then the maximum rate for {} s. Commit {}; {} cores ({}), \
         load average at the end {}.\n",
        serde_json::to_value(r.mode)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default(),
        r.date,
        match (st.mtls, st.authz_rules) {
            (false, _) => "plaintext between the sidecars".to_string(),
            (true, 0) => "mutual TLS between the sidecars (STRICT)".to_string(),
            (true, n) => format!(
                "mutual TLS between the sidecars (STRICT), an AuthorizationPolicy of {n} ALLOW rules on the server sidecar"
            ),
        },
        st.body_size,
        st.connections,
        st.rounds,
        st.rate,
        st.seconds,
        st.max_seconds,
        r.commit,
        r.machine.get("cores").cloned().unwrap_or_default(),
        r.machine.get("cpu").cloned().unwrap_or_default(),
        r.machine.get("loadavg_at_end").cloned().unwrap_or_default(),
    );
    let _ = writeln!(
        s,
        "| config | p50 ms | p90 ms | p99 ms | p99.9 ms | added p50 / p99 ms | achieved req/s | max req/s | CPU s per 1000 req (both sidecars) at {} req/s / at max | RSS per proxy MB: idle / steady / peak | errors |",
        st.rate
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|");
    for (name, x) in &r.summary {
        let _ = writeln!(
            s,
            "| {name} | {:.3} | {:.3} | {:.3} | {:.3} | {} / {} | {:.0} | {:.0} | {} / {} | {} / {} / {} | {} |",
            x.p50_ms,
            x.p90_ms,
            x.p99_ms,
            x.p999_ms,
            opt(x.added_p50_ms, 3),
            opt(x.added_p99_ms, 3),
            x.fixed_rps,
            x.max_rps,
            opt(x.cpu_per_1000_requests, 3),
            opt(x.cpu_per_1000_requests_max, 3),
            opt(x.idle_rss_mb, 1),
            opt(x.steady_rss_mb, 1),
            opt(x.peak_rss_mb, 1),
            x.errors,
        );
    }
    let _ = writeln!(
        s,
        "\nHTTP/2 (h2c, `GET /`) and gRPC unary (`POST`, 16-byte request, {} B reply), {} connections \
         with one stream each, {} s each at the maximum rate (closed loop, h2load):\n",
        st.body_size, st.connections, st.h2_seconds
    );
    let _ = writeln!(
        s,
        "| config | protocol | req/s | p50 ms | p99 ms | p99.9 ms | CPU s per 1000 req (both sidecars) | errors |\n|---|---|---|---|---|---|---|---|"
    );
    for (name, x) in &r.summary {
        for (proto, p) in [("h2c", &x.h2), ("gRPC", &x.grpc)] {
            let _ = writeln!(
                s,
                "| {name} | {proto} | {:.0} | {:.3} | {:.3} | {:.3} | {} | {} |",
                p.rps,
                p.p50_ms,
                p.p99_ms,
                p.p999_ms,
                opt(p.cpu_per_1000_requests, 3),
                p.errors
            );
        }
    }
    if !r.ratios.is_empty() {
        let _ = writeln!(
            s,
            "\nstrait / envoy (below 1: strait uses less; for max req/s above 1: strait sustains more):\n"
        );
        let _ = writeln!(s, "| ratio | value |\n|---|---|");
        for (k, v) in &r.ratios {
            let _ = writeln!(s, "| {k} | {v:.2} |");
        }
    }
    let _ = writeln!(s, "\nCommand: `{}`", r.command);
    s
}

/// Writes OUT/<date>-<name>.json and .md; returns both paths.
pub fn write(r: &Report, out: &Path, name: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(out)?;
    let json = out.join(format!("{}-{name}.json", r.date));
    let md = out.join(format!("{}-{name}.md", r.date));
    std::fs::write(&json, serde_json::to_string_pretty(r)? + "\n")?;
    std::fs::write(&md, markdown(r))?;
    Ok((json, md))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
