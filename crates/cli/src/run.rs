//! `strait run`: a workload ("pod") with its sidecar, on the local platform.
//!
//! iptables capture (root): the pod gets a network namespace on the bridge, a hosts file with
//! the services' virtual IPs, Istio's capture rules, and a sidecar under uid 1337 in the same
//! namespace; the app runs there as the invoking user and calls `http://reviews:9080` as it
//! would in Kubernetes. No capture: the pod is a loopback address of its own for the sidecar;
//! the app reaches the mesh through the sidecar's HTTP proxy (`HTTP_PROXY`) and serves on
//! 127.0.0.1, where the sidecar's inbound listeners forward.
//!
//! The app starts once the sidecar is ready; the workload is registered as a WorkloadEntry once
//! the app is ready (it listens on its ports, or `--readiness` passes: see [`crate::readiness`])
//! and while it runs. When the app exits, or on Ctrl-C / SIGTERM, the registration goes, the sidecar
//! drains and stops, and the pod's network goes. A run killed with `kill -9` leaves a state file;
//! the next `strait run` or `strait gateway` removes what it left.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};
use strait_netns::{
    CaptureRules, HostsEntry, PROXY_GID, PROXY_UID, PodKind, PodRange, PodRecord, Pods, ProcId,
};
use strait_xds_core::flags::parse_label;
use strait_xds_core::{CaptureMode, Proxy, ProxyRole};
use tokio::process::Command;
use tokio::signal::unix::{SignalKind, signal};

use crate::client::{Client, Connection};
use crate::readiness::Readiness;
use crate::sidecar::{Launch, ProxyKind, RunningProxy};

/// The local platform: where pods live.
#[derive(clap::Args, Clone)]
pub struct PlatformArgs {
    /// The pods' address range; the bridge takes its first address.
    #[arg(long, default_value = DEFAULT_POD_RANGE)]
    pub pod_range: String,
    /// The bridge pods are attached to.
    #[arg(long, default_value = "strait0")]
    pub bridge: String,
    /// The control plane's xDS address as the proxy dials it (default: the one the local
    /// control plane recorded; an unspecified IP there means the bridge's address for pods);
    /// several, comma-separated, for control-plane replicas: the proxy fails over among them.
    #[arg(long, value_delimiter = ',', value_name = "ADDR[,ADDR...]")]
    pub xds_addr: Vec<SocketAddr>,
    /// The control plane's TLS port (CA and xDS over mutual TLS) as the proxy dials it
    /// (default: the one the local control plane recorded). Without one, the workload has no
    /// identity and its traffic is plaintext.
    #[arg(long)]
    pub tls_addr: Option<SocketAddr>,
    /// The lifetime of the workload's certificate (renewed at half of it).
    #[arg(long, default_value = "24h", value_parser = strait_xds_core::flags::parse_duration)]
    pub cert_ttl: Duration,
}

#[derive(clap::Args)]
pub struct RunArgs {
    /// The workload (pod) name; also its WorkloadEntry's.
    #[arg(long)]
    pub name: String,
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// The workload's labels: `app=reviews,version=v1`.
    #[arg(long, value_delimiter = ',', value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    #[arg(long, default_value = "default")]
    pub service_account: String,
    /// A port the app serves: `NAME:PORT` (repeat for more), as the WorkloadEntry's ports.
    #[arg(long = "port")]
    pub ports: Vec<String>,
    /// iptables (default for root) or none (default otherwise).
    #[arg(long, value_enum)]
    pub capture: Option<CaptureMode>,
    #[arg(long, value_enum, default_value = "strait")]
    pub proxy: ProxyKind,
    /// A pod annotation `KEY=VALUE`, e.g. traffic.sidecar.istio.io/excludeOutboundPorts=5432.
    #[arg(long = "annotation")]
    pub annotations: Vec<String>,
    /// When the app is ready for traffic (its endpoint is registered only then): `PORT/PATH`,
    /// an HTTP GET answered 2xx or 3xx. Default: it listens on every `--port`.
    #[arg(long, value_name = "PORT/PATH")]
    pub readiness: Option<String>,
    /// How long the sidecar drains after the app stops (seconds).
    #[arg(long, default_value_t = 1)]
    pub drain_seconds: u64,
    #[command(flatten)]
    pub platform: PlatformArgs,
    /// The app: `-- COMMAND ARGS...`.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// The proxy's admin port (excluded from capture).
const ADMIN_PORT: u16 = 15000;
/// How long the sidecar may take to get its first config.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the hosts file is refreshed from the registry.
const HOSTS_REFRESH: Duration = Duration::from_secs(2);
/// How often an app that is not ready yet is checked.
const READINESS_PROBE: Duration = Duration::from_millis(100);
/// How often `strait run` says it is still waiting for the app.
const READINESS_WORD: Duration = Duration::from_secs(10);

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

pub fn parse_pairs(
    items: &[String],
    what: &str,
    example: &str,
) -> Result<BTreeMap<String, String>> {
    items
        .iter()
        .filter(|l| !l.is_empty())
        .map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .ok_or_else(|| anyhow!("{what} {l:?} is not KEY=VALUE: write {example}"))
        })
        .collect()
}

fn parse_ports(items: &[String]) -> Result<BTreeMap<String, u16>> {
    items
        .iter()
        .map(|p| {
            let (name, port) = p
                .split_once(':')
                .ok_or_else(|| anyhow!("--port {p:?} is not NAME:PORT: write --port http:9080"))?;
            let port: u16 = port
                .parse()
                .ok()
                .filter(|n| *n != 0)
                .ok_or_else(|| anyhow!("--port {p:?}: {port:?} is not a port number"))?;
            Ok((name.to_string(), port))
        })
        .collect()
}

pub fn logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("STRAIT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,strait=info")),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: the demo's logs are files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// The pods' address range when `--pod-range` is not given.
pub const DEFAULT_POD_RANGE: &str = "10.44.0.0/16";

impl PlatformArgs {
    /// The pods' default address range (its first address is the bridge's).
    pub fn default_pod_range() -> Result<PodRange> {
        Ok(DEFAULT_POD_RANGE.parse()?)
    }

    pub fn pods(&self) -> Result<Pods> {
        let range: PodRange = self.pod_range.parse()?;
        Ok(Pods::new(Pods::default_dir(), &self.bridge, range))
    }

    /// The xDS address a proxy dials: from a pod's namespace an unspecified or loopback address
    /// cannot be reached, so an unspecified one becomes the bridge's.
    pub fn xds_for(
        &self,
        conn: &Connection,
        in_pod: bool,
        range: PodRange,
    ) -> Result<Vec<SocketAddr>> {
        let recorded = match self.xds_addr.as_slice() {
            [] => vec![
                recorded_addr(conn, crate::control_plane::XDS_FILE)
                    .unwrap_or_else(|| "127.0.0.1:15010".parse().expect("an address")),
            ],
            list => list.to_vec(),
        };
        recorded
            .into_iter()
            .map(|a| reachable(a, in_pod, range, "--xds-addr 0.0.0.0:15010", "--xds-addr"))
            .collect()
    }

    /// The control plane's TLS port as a proxy dials it, if it has one.
    pub fn tls_for(
        &self,
        conn: &Connection,
        in_pod: bool,
        range: PodRange,
    ) -> Result<Option<SocketAddr>> {
        let Some(recorded) = self
            .tls_addr
            .or_else(|| recorded_addr(conn, strait_controlplane::XDS_TLS_FILE))
        else {
            return Ok(None);
        };
        reachable(
            recorded,
            in_pod,
            range,
            "--tls-addr 0.0.0.0:15012",
            "--tls-addr",
        )
        .map(Some)
    }
}

/// An address the local control plane recorded in its data directory.
fn recorded_addr(conn: &Connection, file: &str) -> Option<SocketAddr> {
    let file = crate::control_plane::data_dir(conn.data_dir.as_deref()).join(file);
    std::fs::read_to_string(&file)
        .ok()
        .and_then(|t| t.trim().parse().ok())
}

/// `recorded` as a proxy on the host (`in_pod` false) or in a pod's namespace dials it.
fn reachable(
    recorded: SocketAddr,
    in_pod: bool,
    range: PodRange,
    start_flag: &str,
    flag: &str,
) -> Result<SocketAddr> {
    let ip = recorded.ip();
    if !in_pod {
        if ip.is_unspecified() {
            return Ok(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), recorded.port()));
        }
        return Ok(recorded);
    }
    if ip.is_unspecified() {
        return Ok(SocketAddr::new(range.gateway().into(), recorded.port()));
    }
    if ip.is_loopback() {
        bail!(
            "the control plane listens on {recorded}, which a pod's network namespace \
                 cannot reach: start it with `strait control-plane {start_flag}` (or \
                 the bridge's address {}), or pass {flag}",
            range.gateway()
        );
    }
    Ok(recorded)
}

/// The API resources a pod registered, recorded so that a later run can delete them.
fn registrations(paths: &[String]) -> Value {
    json!({ "paths": paths })
}

/// Deletes what a record says its run registered (a run killed before it could).
pub fn delete_registrations(client: &Client, rec: &PodRecord) {
    let paths = rec.registrations["paths"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for p in paths.iter().filter_map(Value::as_str) {
        match client.request("DELETE", p, None) {
            Ok(a) if a.is_success() || a.code == 404 => {
                tracing::info!(path = p, "registration removed")
            }
            Ok(a) => tracing::warn!(path = p, error = %a.message(), "cannot remove a registration"),
            Err(e) => tracing::warn!(path = p, error = %e, "cannot remove a registration"),
        }
    }
}

/// Removes what dead runs left: processes, namespaces, veths, hosts files, registrations.
pub fn reap(pods: &Pods, client: &Client) -> Result<()> {
    let removed = pods.reap(|rec| delete_registrations(client, rec))?;
    for rec in removed {
        eprintln!(
            "strait: removed pod {} left by a stopped run (pid {})",
            rec.name, rec.owner.pid
        );
    }
    Ok(())
}

fn workload_entry(
    name: &str,
    namespace: &str,
    ip: Ipv4Addr,
    labels: &BTreeMap<String, String>,
    service_account: &str,
    ports: &BTreeMap<String, u16>,
) -> Value {
    let mut spec = json!({
        "address": ip.to_string(),
        "labels": labels,
        "serviceAccount": service_account,
    });
    if !ports.is_empty() {
        spec["ports"] = json!(ports);
    }
    json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "WorkloadEntry",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "annotations": { "strait.io/registered-by": "strait run" },
        },
        "spec": spec,
    })
}

pub fn workload_entry_path(namespace: &str, name: &str) -> String {
    format!("/apis/networking.istio.io/v1/namespaces/{namespace}/workloadentries/{name}")
}

/// Creates or replaces a resource; the error names it.
pub fn put(client: &Client, path: &str, body: &Value) -> Result<()> {
    let answer = client.request("PUT", path, Some(body))?;
    if !answer.is_success() {
        bail!("registering {path}: {}", answer.message());
    }
    Ok(())
}

/// The registry's services, for the hosts file.
fn services(client: &Client) -> Result<Vec<HostsEntry>> {
    let answer = client.request("GET", "/debug/services", None)?;
    if !answer.is_success() {
        bail!("reading the services' virtual IPs: {}", answer.message());
    }
    Ok(answer
        .body
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| {
            let address: IpAddr = s["addresses"].get(0)?.as_str()?.parse().ok()?;
            Some(HostsEntry {
                hostname: s["hostname"].as_str()?.to_string(),
                namespace: s["namespace"].as_str()?.to_string(),
                address,
            })
        })
        .collect())
}

/// Every service port's virtual IP and endpoints, for the rules of a pod without a sidecar.
fn service_ports(client: &Client) -> Result<Vec<strait_netns::ServicePort>> {
    let answer = client.request("GET", "/debug/services", None)?;
    if !answer.is_success() {
        bail!("reading the services: {}", answer.message());
    }
    let mut out = Vec::new();
    for s in answer.body.as_array().into_iter().flatten() {
        let Some(vip) = s["addresses"]
            .get(0)
            .and_then(|a| a.as_str())
            .and_then(|a| a.parse::<IpAddr>().ok())
        else {
            continue;
        };
        for p in s["ports"].as_array().into_iter().flatten() {
            let Some(port) = p["port"].as_u64().and_then(|n| u16::try_from(n).ok()) else {
                continue;
            };
            let endpoints = p["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| {
                    let ip: IpAddr = e["address"].as_str()?.parse().ok()?;
                    let port = u16::try_from(e["port"].as_u64()?).ok()?;
                    Some(SocketAddr::new(ip, port))
                })
                .collect();
            out.push(strait_netns::ServicePort {
                vip,
                port,
                endpoints,
            });
        }
    }
    Ok(out)
}

/// Completes when the sidecar exits (never without one): its status, log path and last lines.
async fn sidecar_exit(
    sidecar: &mut Option<&mut RunningProxy>,
) -> Option<(std::process::ExitStatus, String, String)> {
    match sidecar {
        Some(s) => {
            let status = s.child.wait().await.ok()?;
            Some((status, s.log.display().to_string(), s.log_tail()))
        }
        None => std::future::pending().await,
    }
}

fn refresh_hosts(
    pods: &Pods,
    client: &Client,
    rec: &PodRecord,
    name: &str,
    ns: &str,
) -> Result<()> {
    let entries = services(client)?;
    let text = strait_netns::render_hosts(name, ns, rec.ip.into(), &entries, "cluster.local");
    // Rewritten only when it changes (a lookup that reads it mid-write may see a mix).
    if let Some(path) = rec.hosts_path()
        && std::fs::read_to_string(&path).is_ok_and(|old| old == text)
    {
        return Ok(());
    }
    pods.write_hosts(rec, &text)?;
    Ok(())
}

pub fn run(conn: &Connection, args: RunArgs) -> Result<ExitCode> {
    logging();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run_async(conn, args))
}

async fn run_async(conn: &Connection, args: RunArgs) -> Result<ExitCode> {
    let root = is_root();
    let capture = args.capture.unwrap_or(if root {
        CaptureMode::Iptables
    } else {
        CaptureMode::None
    });
    if capture == CaptureMode::Iptables && !root {
        bail!(
            "--capture iptables needs root (network namespaces and iptables): run as root, or use --capture none"
        );
    }
    let mut labels: BTreeMap<String, String> = args.labels.iter().cloned().collect();
    let annotations = parse_pairs(
        &args.annotations,
        "annotation",
        "--annotation traffic.sidecar.istio.io/excludeOutboundPorts=5432",
    )?;
    let ports = parse_ports(&args.ports)?;
    let readiness = Readiness::new(args.readiness.as_deref(), ports.values().copied())?;
    // Istio's opt-out (a pod annotation, or a label): a pod without a sidecar, as in a
    // namespace without injection. It reaches services through kube-proxy-like rules.
    let inject = !["sidecar.istio.io/inject"]
        .iter()
        .any(|k| annotations.get(*k).or(labels.get(*k)).map(String::as_str) == Some("false"));
    if !inject && capture != CaptureMode::Iptables {
        bail!(
            "sidecar.istio.io/inject=false: a pod without a sidecar needs a network namespace of \
             its own to reach services (as root, with --capture iptables); without capture an \
             app reaches the mesh only through its sidecar"
        );
    }
    let rules = CaptureRules::from_annotations(&annotations)?;
    let client = conn.connect()?;
    let pods = args.platform.pods()?;
    reap(&pods, &client)?;
    let xds = args
        .platform
        .xds_for(conn, capture == CaptureMode::Iptables, pods.range())?;
    let tls = args
        .platform
        .tls_for(conn, capture == CaptureMode::Iptables, pods.range())?;

    let kind = match capture {
        CaptureMode::Iptables => PodKind::Namespace,
        CaptureMode::None => PodKind::Loopback,
    };
    let mut rec = pods.create(&format!("{}.{}", args.name, args.namespace), kind)?;
    let mut pod = Pod {
        pods: &pods,
        client: &client,
        rec: rec.clone(),
        sidecar: None,
    };
    let result = async {
        if capture == CaptureMode::Iptables {
            refresh_hosts(&pods, &client, &rec, &args.name, &args.namespace)?;
            if inject {
                pods.install_capture(&rec, &rules)?;
            } else {
                pods.install_services(&rec, &service_ports(&client)?, true)?;
            }
        }
        let dir = pods.files_dir(&rec)?;
        if !inject {
            eprintln!(
                "strait: {}.{} has no sidecar (sidecar.istio.io/inject=false): its traffic is \
                 plaintext and outside the mesh's policies",
                args.name, args.namespace
            );
        }
        // The workload's identity, when the control plane has a CA: Envoy obtains it through a
        // node agent, strait-proxy itself.
        let identity = match tls {
            Some(ca) if inject => Some(crate::pod_identity::prepare(
                &client,
                &dir,
                &args.namespace,
                &args.service_account,
                ca,
                rec.netns.is_some().then_some((PROXY_UID, PROXY_GID)),
                args.platform.cert_ttl,
            )?),
            _ => None,
        };
        if identity.is_some() {
            // Istio's injector marks workloads with a sidecar: clients send them mTLS.
            labels.insert(
                strait_translate::translate::mtls::TLS_MODE_LABEL.to_string(),
                "istio".to_string(),
            );
        }
        let proxy = Proxy {
            id: Proxy::node_id(ProxyRole::Sidecar, rec.ip.into(), &args.name, &args.namespace),
            role: ProxyRole::Sidecar,
            ip: rec.ip.into(),
            workload: args.name.clone(),
            namespace: args.namespace.clone(),
            labels: labels.clone(),
            capture,
            service_account: args.service_account.clone(),
            app_address: rec.app_ip().map(IpAddr::V4),
            mtls: identity.is_some(),
        };
        if inject {
            let admin = SocketAddr::new(rec.ip.into(), ADMIN_PORT);
            let sidecar = RunningProxy::start(Launch {
                proxy,
                kind: args.proxy,
                xds: if identity.is_some() {
                    vec![tls.expect("checked")]
                } else {
                    xds.clone()
                },
                admin,
                netns: rec.netns.as_deref(),
                dir: &dir,
                identity: identity.as_ref(),
            })
            .await?;
            rec.processes.push(sidecar.id);
            if let Some((_, agent)) = &sidecar.agent {
                rec.processes.push(*agent);
            }
            pods.update(&rec)?;
            pod.rec = rec.clone();
            let sidecar = pod.sidecar.insert(sidecar);
            sidecar.wait_ready(READY_TIMEOUT).await?;
        }

        // The app, as the invoking user.
        let mut app = match &rec.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "setpriv", "--pdeathsig", "KILL", "--"]);
                c
            }
            None => {
                let mut c = Command::new("setpriv");
                c.args(["--pdeathsig", "KILL", "--"]);
                c
            }
        };
        app.args(&args.command)
            .env("POD_NAME", &args.name)
            .env("POD_NAMESPACE", &args.namespace)
            .env("POD_IP", rec.ip.to_string())
            .env("INSTANCE_IP", rec.ip.to_string())
            .env("SERVICE_ACCOUNT", &args.service_account)
            .stdin(Stdio::inherit())
            .kill_on_drop(true);
        if let Some(app_ip) = rec.app_ip() {
            // Without capture, the app serves on an address of its own; its sidecar serves
            // the workload's ports on the pod's address and passes inbound requests on.
            app.env("STRAIT_APP_ADDRESS", app_ip.to_string());
        }
        if capture == CaptureMode::None {
            let proxy_url = format!("http://{}:15080", rec.ip);
            for var in ["HTTP_PROXY", "http_proxy"] {
                app.env(var, &proxy_url);
            }
            for var in ["NO_PROXY", "no_proxy"] {
                app.env(var, "localhost,127.0.0.1,::1");
            }
        }
        let mut app = app.spawn().map_err(|e| {
            crate::sidecar::launch_error(e, Path::new(&args.command[0]), rec.netns.is_some())
        })?;
        let app_pid = app.id().context("the app exited at once")?;
        if let Some(id) = ProcId::of(app_pid) {
            rec.processes.push(id);
        }
        let path = workload_entry_path(&args.namespace, &args.name);
        rec.registrations = registrations(std::slice::from_ref(&path));
        pods.update(&rec)?;
        pod.rec = rec.clone();
        // Inbound traffic reaches the app on 127.0.0.1 with capture, on its own address without;
        // an HTTP probe goes through the sidecar's inbound path with capture.
        let (inbound, probe) = match rec.app_ip() {
            Some(app_ip) => (IpAddr::V4(app_ip), IpAddr::V4(app_ip)),
            // Without a sidecar, clients reach the app on the pod's address itself.
            None if !inject => (IpAddr::V4(rec.ip), IpAddr::V4(rec.ip)),
            None => (IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V4(rec.ip)),
        };
        let mut registered = false;
        let mut probe_tick = tokio::time::interval(READINESS_PROBE);
        let waiting_since = Instant::now();
        let mut last_word = waiting_since;

        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut tick = tokio::time::interval(HOSTS_REFRESH);
        let mut sidecar = pod.sidecar.as_mut();
        let code = loop {
            tokio::select! {
                status = app.wait() => {
                    let status = status?;
                    break status.code().map_or(ExitCode::FAILURE, |c| ExitCode::from(c as u8));
                }
                Some((status, log, tail)) = sidecar_exit(&mut sidecar) => {
                    let _ = app.start_kill();
                    let _ = app.wait().await;
                    bail!("the sidecar exited ({status}); its log ({log}):\n{tail}");
                }
                _ = term.recv() => break stop_app(&mut app).await,
                _ = int.recv() => break stop_app(&mut app).await,
                _ = probe_tick.tick(), if !registered => {
                    let ready = readiness.clone();
                    let ready = tokio::task::spawn_blocking(move || ready.check(app_pid, inbound, probe))
                        .await
                        .unwrap_or(false);
                    if ready {
                        put(
                            &client,
                            &path,
                            &workload_entry(&args.name, &args.namespace, rec.ip, &labels, &args.service_account, &ports),
                        )?;
                        registered = true;
                        eprintln!(
                            "strait: {}.{} runs at {} ({} capture, {} sidecar), ready after {:.1} s",
                            args.name,
                            args.namespace,
                            rec.ip,
                            match capture {
                                CaptureMode::Iptables => "iptables",
                                CaptureMode::None => "no",
                            },
                            match args.proxy {
                                ProxyKind::Strait => "strait-proxy",
                                ProxyKind::Envoy => "Envoy",
                            },
                            waiting_since.elapsed().as_secs_f64(),
                        );
                    } else if last_word.elapsed() >= READINESS_WORD {
                        last_word = Instant::now();
                        eprintln!(
                            "strait: {}.{} is not registered yet: waiting for {} ({:.0} s)",
                            args.name,
                            args.namespace,
                            readiness.describe(),
                            waiting_since.elapsed().as_secs_f64(),
                        );
                    }
                }
                _ = tick.tick() => {
                    if capture == CaptureMode::Iptables
                        && let Err(e) = refresh_hosts(&pods, &client, &rec, &args.name, &args.namespace)
                    {
                        tracing::warn!(error = %e, "cannot refresh the hosts file");
                    }
                    if !inject
                        && let Err(e) = service_ports(&client).and_then(|p| Ok(pods.install_services(&rec, &p, false)?))
                    {
                        tracing::warn!(error = %e, "cannot refresh the services' rules");
                    }
                }
            }
        };
        Ok(code)
    }
    .await;
    pod.stop(Duration::from_secs(args.drain_seconds)).await;
    result
}

/// SIGTERM to the app, SIGKILL after 10 s.
async fn stop_app(app: &mut tokio::process::Child) -> ExitCode {
    if let Some(id) = app.id().and_then(ProcId::of) {
        let _ = tokio::task::spawn_blocking(move || {
            strait_netns::terminate(id, Duration::from_secs(10))
        })
        .await;
    }
    let _ = app.wait().await;
    ExitCode::from(130)
}

/// What a run made, undone in order: the registration (endpoints go first), the sidecar
/// (drained), the pod's network and state file.
pub struct Pod<'a> {
    pub pods: &'a Pods,
    pub client: &'a Client,
    pub rec: PodRecord,
    pub sidecar: Option<RunningProxy>,
}

impl Pod<'_> {
    pub async fn stop(&mut self, drain: Duration) {
        delete_registrations(self.client, &self.rec);
        if let Some(s) = self.sidecar.as_mut() {
            s.stop(drain).await;
        }
        if let Err(e) = self.pods.remove(&self.rec) {
            eprintln!("strait: cannot remove pod {}: {e}", self.rec.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_pairs_parse() {
        let ports = parse_ports(&["http:9080".into(), "grpc:7070".into()]).unwrap();
        assert_eq!(ports["http"], 9080);
        assert_eq!(ports["grpc"], 7070);
        assert!(parse_ports(&["9080".into()]).is_err());
        assert!(parse_ports(&["http:0".into()]).is_err());
        let pairs = parse_pairs(&["app=a".into(), "version=v1".into()], "annotation", "x").unwrap();
        assert_eq!(pairs["version"], "v1");
        assert!(parse_pairs(&["app".into()], "annotation", "x").is_err());
    }

    #[test]
    fn the_workload_entry_carries_address_labels_ports_and_account() {
        let labels = BTreeMap::from([("app".to_string(), "web".to_string())]);
        let ports = BTreeMap::from([("http".to_string(), 8000)]);
        let we = workload_entry(
            "web-1",
            "shop",
            Ipv4Addr::new(10, 44, 0, 2),
            &labels,
            "web",
            &ports,
        );
        assert_eq!(we["metadata"]["namespace"], "shop");
        assert_eq!(we["spec"]["address"], "10.44.0.2");
        assert_eq!(we["spec"]["labels"]["app"], "web");
        assert_eq!(we["spec"]["ports"]["http"], 8000);
        assert_eq!(we["spec"]["serviceAccount"], "web");
        let parsed = strait_api::parse::parse_value(
            strait_api::parse::Source {
                file: "t".into(),
                index: 0,
            },
            we,
        );
        assert!(
            matches!(parsed.outcome, strait_api::parse::Outcome::Resource(_)),
            "the API accepts it"
        );
    }
}
