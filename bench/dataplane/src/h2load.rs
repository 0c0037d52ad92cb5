//! HTTP/2 (h2c) and gRPC unary load from h2load (Debian `nghttp2-client`): each of a fixed set of
//! connections keeps one stream in flight for a fixed time (the maximum rate; h2load has no
//! constant request rate, so these latencies are closed-loop). Percentiles come from h2load's
//! per-request log.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::k6::Outcome;

/// What to send.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// `GET /` over h2c.
    H2,
    /// A gRPC unary call (`POST /bench.Bench/Unary`, one message, `te: trailers`).
    Grpc,
}

/// Runs h2load against `url` (the first hop: the upstream or the client sidecar) with
/// `authority` as the `:authority` (the service's name, for the sidecar's routing).
pub fn run(
    h2load: &Path,
    work: &Path,
    url: &str,
    authority: &str,
    kind: Kind,
    connections: u32,
    duration: Duration,
) -> anyhow::Result<Outcome> {
    let log = work.join("h2load.log");
    let _ = std::fs::remove_file(&log);
    let mut cmd = Command::new(h2load);
    cmd.args(["-t", "1", "-m", "1", "-c"])
        .arg(connections.to_string())
        .arg("-D")
        .arg(duration.as_secs().max(1).to_string())
        .arg("--log-file")
        .arg(&log)
        .args(["-H", &format!(":authority: {authority}")]);
    let target = match kind {
        Kind::H2 => url.to_string(),
        Kind::Grpc => {
            let body = work.join("grpc-request.bin");
            std::fs::write(&body, crate::upstream::grpc_message(16))?;
            cmd.arg("-d").arg(&body).args([
                "-H",
                "content-type: application/grpc",
                "-H",
                "te: trailers",
            ]);
            format!("{}/bench.Bench/Unary", url.trim_end_matches('/'))
        }
    };
    let out = cmd
        .arg(&target)
        .output()
        .with_context(|| format!("running {}", h2load.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "h2load failed ({}):\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let counts = parse_counts(&stdout)?;
    let (latencies, non_2xx) = parse_log(&std::fs::read_to_string(&log).unwrap_or_default());
    if counts.succeeded == 0 || latencies.is_empty() {
        bail!("h2load got no successful responses from {target}:\n{stdout}");
    }
    let pct = |q: f64| -> f64 {
        let i = ((latencies.len() as f64 - 1.0) * q).round() as usize;
        latencies[i] as f64 / 1000.0
    };
    let seconds = duration.as_secs_f64();
    Ok(Outcome {
        requests: counts.succeeded,
        failed: counts.failed + counts.errored + counts.timeout + non_2xx,
        dropped: 0,
        seconds,
        rps: counts.succeeded as f64 / seconds,
        p50_ms: pct(0.50),
        p90_ms: pct(0.90),
        p99_ms: pct(0.99),
        p999_ms: pct(0.999),
        max_ms: pct(1.0),
    })
}

#[derive(Debug, PartialEq)]
struct Counts {
    succeeded: u64,
    failed: u64,
    errored: u64,
    timeout: u64,
}

/// h2load's `requests: 10 total, 10 started, 10 done, 9 succeeded, 1 failed, 0 errored, 0 timeout`.
fn parse_counts(stdout: &str) -> anyhow::Result<Counts> {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("requests:"))
        .context("h2load printed no `requests:` line")?;
    let count = |word: &str| -> u64 {
        line.split(',')
            .find(|p| p.trim().ends_with(word))
            .and_then(|p| p.split_whitespace().rev().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    Ok(Counts {
        succeeded: count("succeeded"),
        failed: count("failed"),
        errored: count("errored"),
        timeout: count("timeout"),
    })
}

/// The per-request log (start µs, status, µs to the end of the response): sorted latencies of
/// the 2xx answers, and how many were not 2xx.
fn parse_log(text: &str) -> (Vec<u64>, u64) {
    let mut latencies = Vec::new();
    let mut bad = 0;
    for line in text.lines() {
        let cols: Vec<&str> = line.split('\t').collect();
        let (Some(status), Some(us)) = (cols.get(1), cols.get(2)) else {
            continue;
        };
        match (status.parse::<u16>(), us.parse::<u64>()) {
            (Ok(s), Ok(us)) if (200..300).contains(&s) => latencies.push(us),
            _ => bad += 1,
        }
    }
    latencies.sort_unstable();
    (latencies, bad)
}

/// h2load: `H2LOAD_BIN`, else on PATH (`apt-get install -y nghttp2-client`).
pub fn find() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("H2LOAD_BIN") {
        return Ok(PathBuf::from(p));
    }
    match Command::new("h2load").arg("--version").output() {
        Ok(o) if o.status.success() => Ok(PathBuf::from("h2load")),
        _ => bail!(
            "h2load is missing: apt-get install -y nghttp2-client (bench/run.sh and scripts/test.sh \
             install it), or set H2LOAD_BIN"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_h2load_counts_and_log() {
        let out = "finished in 2.00s, 5000.00 req/s\nrequests: 10000 total, 10000 started, 10000 done, 9998 succeeded, 2 failed, 0 errored, 1 timeout\n";
        assert_eq!(
            parse_counts(out).unwrap(),
            Counts {
                succeeded: 9998,
                failed: 2,
                errored: 0,
                timeout: 1
            }
        );
        let (lat, bad) = parse_log("1\t200\t300\n2\t200\t100\n3\t503\t50\n");
        assert_eq!((lat, bad), (vec![100, 300], 1));
    }
}
