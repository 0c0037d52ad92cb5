//! The benchmark run: settle, connect the clients and time the full push, make single endpoint
//! changes one at a time and time each to the last client, restart the control plane and time
//! the full push again; the control plane's memory and CPU at each step.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use strait_xds_core::names::outbound_cluster_name;

use crate::api::{self, Api, Histogram};
use crate::client::{Client, Observed};
use crate::procstat::Sample;

const PUSH_LATENCY: &str = "strait_xds_push_latency_seconds";

/// What to run.
pub struct Options {
    /// The ADS addresses, `HOST:PORT[,HOST:PORT...]`: client `i` connects to the `i mod n`th
    /// (several control-plane replicas on one store); the restart restarts the first.
    pub xds: String,
    pub clients: usize,
    /// The API, for changes and `/metrics`; without it only the full push is measured.
    pub api: Option<Api>,
    /// How many Services were seeded (the changes pick among them; the settle waits for them).
    pub services: usize,
    /// Single endpoint changes to make.
    pub changes: usize,
    /// A shell command that restarts the control plane (returns once the new one is started).
    pub restart_cmd: Option<String>,
    /// The file holding the control plane's process id, for memory and CPU.
    pub pid_file: Option<PathBuf>,
    /// How long any one wait may take.
    pub timeout: Duration,
}

impl Options {
    /// The ADS addresses, at least one.
    pub fn addrs(&self) -> Vec<&str> {
        let addrs: Vec<&str> = self
            .xds
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .collect();
        if addrs.is_empty() {
            vec![self.xds.as_str()]
        } else {
            addrs
        }
    }
}

/// Runs the benchmark; returns the JSON summary.
pub async fn run(opts: Options) -> Result<Value> {
    let mut summary = json!({
        "clients": opts.clients,
        "services": opts.services,
        "changes": opts.changes,
    });
    let sample = || opts.pid_file.as_deref().and_then(Sample::of_pid_file);

    if opts.services > 0 {
        let t = Instant::now();
        settle(&opts).await?;
        summary["settle_s"] = json!(t.elapsed().as_secs_f64());
    }
    let before_clients = sample();
    let metrics_before = metrics(&opts).await;

    // The full push to every client at once.
    eprintln!("connecting {} clients to {}", opts.clients, opts.xds);
    let addrs = opts.addrs();
    let start = Instant::now();
    let clients: Vec<Client> = (0..opts.clients)
        .map(|i| Client::start(i, addrs[i % addrs.len()].to_string()))
        .collect();
    let synced = wait_synced(&clients, &vec![1; clients.len()], opts.timeout, "initial").await?;
    let times: Vec<f64> = synced.iter().map(|t| secs(*t - start)).collect();
    let (counts, bytes) = clients.first().map_or(([0; 4], 0), |c| {
        let o = c.observed.lock().expect("client lock");
        (o.counts, o.bytes)
    });
    summary["full_push"] = json!({
        "all_synced_s": max(&times),
        "per_client_p50_s": percentile(&times, 0.5),
        "per_client_p99_s": percentile(&times, 0.99),
        "per_client_resources": {
            "clusters": counts[0], "endpoints": counts[1],
            "listeners": counts[2], "routes": counts[3],
        },
        "per_client_bytes": bytes,
    });
    eprintln!(
        "full push: all {} clients synced in {:.2} s",
        opts.clients,
        max(&times)
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let steady = sample();
    summary["memory"] = json!({
        "before_clients": before_clients.map(|s| s.to_json()),
        "steady_with_clients": steady.map(|s| s.to_json()),
    });
    if let (Some(a), Some(b)) = (before_clients, steady) {
        summary["full_push"]["cpu_s"] = json!(b.cpu_s - a.cpu_s);
    }

    // Single endpoint changes, one at a time.
    if let (Some(api), true) = (opts.api.clone(), opts.changes > 0) {
        let m0 = metrics(&opts).await;
        let before = sample();
        let mut latencies = Vec::new();
        let mut first_client = Vec::new();
        let mut writes = Vec::new();
        for i in 0..opts.changes {
            let k = (i * 7919 + 13) % opts.services.max(1);
            let entry = api::entry_name(k, 0);
            let host = format!(
                "{}.{}.svc.cluster.local",
                api::service_name(k),
                api::NAMESPACE
            );
            let cluster = outbound_cluster_name(api::SERVICE_PORT, "", &host);
            let weight = 2 + i as u32;
            let sent = Instant::now();
            let a = api.clone();
            tokio::task::spawn_blocking(move || a.set_weight(&entry, weight))
                .await
                .context("the API writer task")??;
            let written = Instant::now();
            writes.push(secs(written - sent));
            let arrivals = wait_endpoint(&clients, &cluster, sent, opts.timeout).await?;
            let last = arrivals.iter().max().copied().unwrap_or(written);
            let first = arrivals.iter().min().copied().unwrap_or(written);
            latencies.push(secs(last.saturating_duration_since(written)));
            first_client.push(secs(first.saturating_duration_since(written)));
            eprintln!(
                "change {}/{}: {cluster} weight {weight}: last client after {:.1} ms",
                i + 1,
                opts.changes,
                latencies[i] * 1000.0
            );
        }
        let after = sample();
        let m1 = metrics(&opts).await;
        let mut changes = json!({
            "write_to_last_client": stats(&latencies),
            "write_to_first_client": stats(&first_client),
            "api_write": stats(&writes),
            "samples_s": latencies,
        });
        if let (Some(m0), Some(m1)) = (&m0, &m1) {
            if let (Some(h0), Some(h1)) = (
                Histogram::parse(m0, PUSH_LATENCY),
                Histogram::parse(m1, PUSH_LATENCY),
            ) {
                changes["control_plane_push_latency"] = h1.since(&h0).to_json();
            }
            changes["control_plane_generations"] = json!(
                counter(m1, "strait_xds_generations_total")
                    - counter(m0, "strait_xds_generations_total")
            );
        }
        if let (Some(a), Some(b)) = (before, after) {
            changes["cpu_s"] = json!(b.cpu_s - a.cpu_s);
        }
        summary["memory"]["after_changes"] = json!(after.map(|s| s.to_json()));
        summary["single_change"] = changes;
    }
    if let Some(m) = &metrics_before {
        summary["control_plane_push_latency_before_clients"] =
            Histogram::parse(m, PUSH_LATENCY).map_or(Value::Null, |h| h.to_json());
    }

    // The full push after a restart.
    if let Some(cmd) = &opts.restart_cmd {
        let old = sample();
        // Only the first replica restarts: its clients reconnect, the others' stay as they are.
        let replicas = opts.addrs().len();
        let restarted = |i: usize| i.is_multiple_of(replicas);
        let next_stream: Vec<u64> = clients
            .iter()
            .enumerate()
            .map(|(i, c)| c.observed.lock().expect("client lock").streams + u64::from(restarted(i)))
            .collect();
        eprintln!("restarting the control plane");
        let began = Instant::now();
        let cmd2 = cmd.clone();
        let status = tokio::task::spawn_blocking(move || {
            std::process::Command::new("sh")
                .arg("-c")
                .arg(&cmd2)
                .status()
        })
        .await
        .context("the restart task")?
        .with_context(|| format!("running the restart command {cmd:?}"))?;
        if !status.success() {
            bail!("the restart command {cmd:?} failed: {status}");
        }
        let launched = Instant::now();
        let ready = wait_listening(opts.addrs()[0], opts.timeout).await?;
        let synced = wait_synced(&clients, &next_stream, opts.timeout, "after restart").await?;
        let last = synced.iter().max().copied().unwrap_or(ready);
        let first_reconnect = clients
            .iter()
            .enumerate()
            .filter(|(i, _)| restarted(*i))
            .filter_map(|(_, c)| c.observed.lock().expect("client lock").stream_opened_at)
            .min()
            .unwrap_or(ready);
        summary["restart"] = json!({
            "stop_and_launch_s": secs(launched - began),
            "sigterm_to_all_synced_s": secs(last - began),
            "launch_to_all_synced_s": secs(last - launched),
            "xds_listening_to_all_synced_s": secs(last.saturating_duration_since(ready)),
            "first_reconnect_to_all_synced_s": secs(last.saturating_duration_since(first_reconnect)),
            "launch_to_xds_listening_s": secs(ready.saturating_duration_since(launched)),
        });
        eprintln!(
            "after restart: all synced {:.2} s after SIGTERM, {:.2} s after the first reconnect",
            secs(last - began),
            secs(last.saturating_duration_since(first_reconnect))
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        let new = sample();
        summary["memory"]["before_restart"] = json!(old.map(|s| s.to_json()));
        summary["memory"]["after_restart"] = json!(new.map(|s| s.to_json()));
    }
    Ok(summary)
}

/// Waits until one probe client has an EDS cluster per seeded service and then nothing new
/// arrives for 3 s: the control plane has caught up with the seeded config.
async fn settle(opts: &Options) -> Result<()> {
    for (i, addr) in opts.addrs().into_iter().enumerate() {
        settle_one(opts, addr, opts.clients + 1_000_000 + i).await?;
    }
    Ok(())
}

/// Waits until the control plane at `addr` serves every seeded service (see [`settle`]).
async fn settle_one(opts: &Options, addr: &str, index: usize) -> Result<()> {
    eprintln!(
        "settle: waiting for the control plane at {addr} to serve {} services",
        opts.services
    );
    let probe = Client::start(index, addr.to_string());
    let deadline = Instant::now() + opts.timeout;
    let mut seen = (0, Instant::now());
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (responses, ready) = {
            let o = probe.observed.lock().expect("client lock");
            (
                o.responses,
                o.synced_at.is_some() && o.counts[1] >= opts.services,
            )
        };
        if responses != seen.0 {
            seen = (responses, Instant::now());
        } else if ready && seen.1.elapsed() >= Duration::from_secs(3) {
            return Ok(());
        }
        if Instant::now() > deadline {
            let o = probe.observed.lock().expect("client lock");
            bail!(
                "the control plane at {addr} did not settle within {:?}: the probe holds {} endpoint resources of {} services (last error: {:?})",
                opts.timeout,
                o.counts[1],
                opts.services,
                o.last_error
            );
        }
    }
}

/// Waits until every client has synced on a stream numbered at least `streams[i]` (1 is the
/// first); returns when each did.
async fn wait_synced(
    clients: &[Client],
    streams: &[u64],
    timeout: Duration,
    what: &str,
) -> Result<Vec<Instant>> {
    let deadline = Instant::now() + timeout;
    let mut last_report = Instant::now();
    loop {
        let done: Vec<Instant> = clients
            .iter()
            .zip(streams)
            .filter_map(|(c, min)| {
                let o = c.observed.lock().expect("client lock");
                (o.streams >= *min && o.connected)
                    .then_some(o.synced_at)
                    .flatten()
            })
            .collect();
        if done.len() == clients.len() {
            return Ok(done);
        }
        if last_report.elapsed() >= Duration::from_secs(2) {
            eprintln!("{what}: {}/{} clients synced", done.len(), clients.len());
            last_report = Instant::now();
        }
        if Instant::now() > deadline {
            let stuck = clients
                .iter()
                .zip(streams)
                .find(|(c, min)| {
                    let o = c.observed.lock().expect("client lock");
                    !(o.streams >= **min && o.connected && o.synced_at.is_some())
                })
                .map(|(c, _)| describe(c.index, &c.observed.lock().expect("client lock")));
            bail!(
                "{what}: only {}/{} clients synced within {timeout:?}; e.g. {}",
                done.len(),
                clients.len(),
                stuck.unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until every client received `cluster`'s endpoints after `since`; returns when each did.
async fn wait_endpoint(
    clients: &[Client],
    cluster: &str,
    since: Instant,
    timeout: Duration,
) -> Result<Vec<Instant>> {
    let deadline = Instant::now() + timeout;
    loop {
        let arrived: Vec<Instant> = clients
            .iter()
            .filter_map(|c| {
                let o = c.observed.lock().expect("client lock");
                o.endpoints_at.get(cluster).copied().filter(|t| *t > since)
            })
            .collect();
        if arrived.len() == clients.len() {
            return Ok(arrived);
        }
        if Instant::now() > deadline {
            bail!(
                "only {}/{} clients got the new endpoints of {cluster} within {timeout:?}",
                arrived.len(),
                clients.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Waits until the xDS address accepts connections again.
async fn wait_listening(xds: &str, timeout: Duration) -> Result<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        if tokio::net::TcpStream::connect(xds).await.is_ok() {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!("the control plane did not listen on {xds} again within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn metrics(opts: &Options) -> Option<String> {
    let api = opts.api.clone()?;
    match tokio::task::spawn_blocking(move || api.metrics()).await {
        Ok(Ok(text)) => Some(text),
        Ok(Err(e)) => {
            eprintln!("warning: reading /metrics failed: {e:#}");
            None
        }
        Err(_) => None,
    }
}

fn counter(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn describe(index: usize, o: &Observed) -> String {
    format!(
        "client {index}: {} streams, connected {}, {} responses, holds {:?} (clusters, endpoints, listeners, routes), last error {:?}",
        o.streams, o.connected, o.responses, o.counts, o.last_error
    )
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(0.0, f64::max)
}

/// Nearest-rank percentile.
pub fn percentile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut sorted = v.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn stats(v: &[f64]) -> Value {
    json!({
        "p50_s": percentile(v, 0.5),
        "p99_s": percentile(v, 0.99),
        "max_s": max(v),
        "mean_s": if v.is_empty() { 0.0 } else { v.iter().sum::<f64>() / v.len() as f64 },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=50).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 25.0);
        assert_eq!(percentile(&v, 0.99), 50.0);
        assert_eq!(percentile(&[3.0], 0.99), 3.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
