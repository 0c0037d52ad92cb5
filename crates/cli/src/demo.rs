//! `strait demo`: the whole Bookinfo mesh on one machine with one command.
//!
//! It starts, as child processes of its own (the same `strait` executable): the control plane on
//! an embedded store in a fresh directory, the ingress gateway (`strait gateway`, selected by
//! `istio: ingressgateway`) and Bookinfo's six workloads, each with its sidecar
//! (`strait run`: iptables capture as root, else none). It applies the project's own Bookinfo config (examples/bookinfo/*.yaml,
//! embedded here), waits until `/productpage` answers through the gateway, prints the page's
//! address and what to try next, and runs until Ctrl-C or SIGTERM. Then it stops the gateway and
//! the pods (each `strait run` removes its registration, sidecar, namespace, veth and rules),
//! then the control plane, then removes the directory it made.
//!
//! The children run in their own process groups (Ctrl-C at the terminal reaches only the demo,
//! which stops them in order) under `setpriv --pdeathsig TERM` (a demo killed with `kill -9`
//! still stops them, and they clean up after themselves).

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use strait_netns::ProcId;
use tokio::process::{Child, Command};
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::client::{Client, Connection};
use crate::run::is_root;
use crate::sidecar::ProxyKind;
use strait_xds_core::CaptureMode;

#[derive(clap::Args)]
pub struct DemoArgs {
    /// The sidecars' and the gateway's data plane.
    #[arg(long, value_enum, default_value = "strait")]
    pub proxy: ProxyKind,
    /// How the pods' traffic reaches their sidecars: iptables (the default for root: each pod in
    /// a network namespace of its own) or none (the default otherwise: each pod on loopback
    /// addresses of its own, the apps using their sidecars as HTTP proxies).
    #[arg(long, value_enum)]
    pub capture: Option<CaptureMode>,
    /// The address the ingress gateway listens on: the page is http://LISTEN:8080/productpage.
    #[arg(long, default_value = "127.0.0.1")]
    pub listen: Ipv4Addr,
    /// How long to wait for the page to answer through the gateway (seconds).
    #[arg(long, default_value_t = 120)]
    pub ready_timeout: u64,
}

/// The project's Bookinfo config, applied in this order.
const CONFIG: [(&str, &str); 4] = [
    (
        "services.yaml",
        include_str!("../../../examples/bookinfo/services.yaml"),
    ),
    (
        "destination-rules.yaml",
        include_str!("../../../examples/bookinfo/destination-rules.yaml"),
    ),
    (
        "routes-v1.yaml",
        include_str!("../../../examples/bookinfo/routes-v1.yaml"),
    ),
    (
        "gateway.yaml",
        include_str!("../../../examples/bookinfo/gateway.yaml"),
    ),
];

/// The port of the Gateway's server in gateway.yaml.
const GATEWAY_PORT: u16 = 8080;
const GATEWAY_NAME: &str = "istio-ingressgateway";
const GATEWAY_NAMESPACE: &str = "istio-system";
/// Where Bookinfo's workloads run.
const NAMESPACE: &str = "default";

/// A Bookinfo workload: its pod name, service (the `app` label) and version.
struct Workload {
    name: &'static str,
    service: &'static str,
    version: &'static str,
}

const WORKLOADS: [Workload; 6] = [
    Workload {
        name: "details-v1",
        service: "details",
        version: "v1",
    },
    Workload {
        name: "ratings-v1",
        service: "ratings",
        version: "v1",
    },
    Workload {
        name: "reviews-v1",
        service: "reviews",
        version: "v1",
    },
    Workload {
        name: "reviews-v2",
        service: "reviews",
        version: "v2",
    },
    Workload {
        name: "reviews-v3",
        service: "reviews",
        version: "v3",
    },
    Workload {
        name: "productpage-v1",
        service: "productpage",
        version: "v1",
    },
];

/// The control plane is the demo's trace collector (its OTLP receiver, `--otlp-addr`): Istio's
/// MeshConfig names it as the default tracing provider at 100% (as Istio's demo profile
/// samples), through a ServiceEntry for this host whose endpoint is the receiver's address.
const TRACES_HOST: &str = "strait-traces.istio-system.svc.cluster.local";
const TRACES_PORT: u16 = 4318;
const TRACES_PROVIDER: &str = "strait-control-plane";

/// The demo's MeshConfig: the control plane as the default tracing provider (OTLP/HTTP).
fn mesh_config() -> String {
    format!(
        "# strait demo: the control plane keeps the traces (the dashboard shows them).\n\
         apiVersion: install.istio.io/v1alpha1\n\
         kind: IstioOperator\n\
         spec:\n\
         \x20 meshConfig:\n\
         \x20   enableTracing: true\n\
         \x20   defaultProviders: {{tracing: [{TRACES_PROVIDER}]}}\n\
         \x20   defaultConfig:\n\
         \x20     tracing: {{sampling: 100}}\n\
         \x20   extensionProviders:\n\
         \x20   - name: {TRACES_PROVIDER}\n\
         \x20     opentelemetry:\n\
         \x20       service: {TRACES_HOST}\n\
         \x20       port: {TRACES_PORT}\n\
         \x20       http: {{path: /v1/traces, timeout: 5s}}\n"
    )
}

/// The service the tracing provider names: the control plane's OTLP receiver at `receiver`.
fn traces_service_entry(receiver: SocketAddr) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\n\
         kind: ServiceEntry\n\
         metadata: {{name: strait-traces, namespace: {GATEWAY_NAMESPACE}}}\n\
         spec:\n\
         \x20 hosts: [{TRACES_HOST}]\n\
         \x20 location: MESH_INTERNAL\n\
         \x20 resolution: STATIC\n\
         \x20 ports: [{{number: {TRACES_PORT}, name: http-otlp, protocol: HTTP}}]\n\
         \x20 endpoints: [{{address: {}, ports: {{http-otlp: {}}}}}]\n",
        receiver.ip(),
        receiver.port()
    )
}

/// How long a child gets to stop after SIGTERM before SIGKILL.
const CHILD_GRACE: Duration = Duration::from_secs(30);

/// A child process of the demo, its output in a log file.
struct Proc {
    name: String,
    child: Child,
    id: Option<ProcId>,
    log: PathBuf,
}

impl Proc {
    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM, SIGKILL after `grace`; reaped.
    async fn stop(&mut self, grace: Duration) {
        if self.exited().is_none()
            && let Some(id) = self.id
        {
            let _ = tokio::task::spawn_blocking(move || strait_netns::terminate(id, grace)).await;
        }
        let _ = self.child.wait().await;
    }
}

/// The binaries the demo runs, found beside `strait`.
struct Binaries {
    strait: PathBuf,
    bookinfo: PathBuf,
}

/// The `cargo build` arguments for `packages` with the profile `strait` was built with.
fn build_args<'a>(dir: &Path, packages: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["build"];
    if dir.file_name().is_some_and(|n| n == "release") {
        args.push("--release");
    }
    for p in packages {
        args.extend(["-p", p]);
    }
    args
}

fn build_command(dir: &Path, packages: &[&str]) -> String {
    format!("cargo {}", build_args(dir, packages).join(" "))
}

/// The binaries the demo runs beside `strait`. Under `cargo run` (which builds only `strait`)
/// the missing ones are built with the same cargo and profile; otherwise their absence is an
/// error that names the build command.
fn binaries(proxy: ProxyKind) -> Result<Binaries> {
    let strait = std::env::current_exe().context("finding the strait executable")?;
    let dir = strait
        .parent()
        .context("the strait executable has no folder")?
        .to_path_buf();
    let bookinfo = dir.join("bookinfo");
    let mut wanted = vec![(bookinfo.clone(), "strait-bookinfo")];
    if proxy == ProxyKind::Strait {
        wanted.push((dir.join("strait-proxy"), "strait-proxy-bin"));
    }
    let missing = |wanted: &[(PathBuf, &'static str)]| -> Vec<(PathBuf, &'static str)> {
        wanted
            .iter()
            .filter(|(b, _)| !b.is_file())
            .cloned()
            .collect()
    };
    let absent = missing(&wanted);
    if !absent.is_empty() {
        let packages: Vec<&str> = absent.iter().map(|(_, p)| *p).collect();
        let names: Vec<String> = absent
            .iter()
            .map(|(b, _)| b.display().to_string())
            .collect();
        let cargo = std::env::var_os("CARGO");
        let workspace = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from);
        match (cargo, workspace) {
            (Some(cargo), Some(workspace)) => {
                eprintln!(
                    "strait demo: building {} (`{}`)",
                    names.join(" and "),
                    build_command(&dir, &packages)
                );
                let status = std::process::Command::new(cargo)
                    .args(build_args(&dir, &packages))
                    .current_dir(&workspace)
                    .status()
                    .context("running cargo")?;
                if !status.success() || !missing(&wanted).is_empty() {
                    bail!(
                        "`{}` did not build {} ({status})",
                        build_command(&dir, &packages),
                        names.join(" and ")
                    );
                }
            }
            _ => bail!(
                "{} missing beside {}: build {} with `{}`",
                names.join(" and "),
                strait.display(),
                if names.len() == 1 { "it" } else { "them" },
                build_command(&dir, &packages)
            ),
        }
    }
    if proxy == ProxyKind::Envoy {
        crate::sidecar::envoy_bin()?;
    }
    Ok(Binaries { strait, bookinfo })
}

fn on_path(tool: &str) -> bool {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .any(|d| d.join(tool).is_file())
}

/// The capture mode the pods get: the flag, else iptables for root and none otherwise; and what
/// that mode needs on this machine.
fn check_platform(capture: Option<CaptureMode>) -> Result<CaptureMode> {
    let capture = capture.unwrap_or(if is_root() {
        CaptureMode::Iptables
    } else {
        CaptureMode::None
    });
    if capture == CaptureMode::Iptables && !is_root() {
        bail!(
            "--capture iptables runs Bookinfo's pods in network namespaces with iptables capture, \
             which needs root: run it as root (`sudo strait demo`, or `bash scripts/run.sh` as \
             root), or use --capture none"
        );
    }
    let tools: &[(&str, &str)] = match capture {
        CaptureMode::Iptables => &[
            ("ip", "iproute2"),
            ("iptables-restore", "iptables"),
            ("setpriv", "util-linux"),
        ],
        CaptureMode::None => &[("setpriv", "util-linux")],
    };
    for (tool, package) in tools {
        if !on_path(tool) {
            bail!("`{tool}` is missing: install it with `apt-get install -y {package}`");
        }
    }
    Ok(capture)
}

/// Istio's Bookinfo samples (`samples/bookinfo/networking`), if this checkout has them beside it.
fn istio_samples() -> Option<PathBuf> {
    let testdata = std::env::var_os("STRAIT_TESTDATA")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata"));
    let dir = testdata.join("istio-samples/bookinfo/networking");
    dir.is_dir().then(|| dir.canonicalize().unwrap_or(dir))
}

/// A fresh directory for the control plane's store, removed when the demo stops.
fn fresh_dir() -> Result<PathBuf> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("strait-demo-{}-{nanos:08x}", std::process::id()));
    std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

pub fn run(data_dir: Option<&Path>, args: DemoArgs) -> Result<ExitCode> {
    crate::run::logging();
    let capture = check_platform(args.capture)?;
    let bins = binaries(args.proxy)?;
    // The gateway's port, free before anything starts (else the demo would wait in vain).
    let page_addr = SocketAddr::from((args.listen, GATEWAY_PORT));
    TcpListener::bind(page_addr).map_err(|e| {
        anyhow!(
            "the gateway cannot listen on {page_addr} ({e}): stop what uses it, or pass \
             --listen with another address (e.g. --listen 127.0.0.2)"
        )
    })?;
    let (dir, made) = match data_dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            (d.to_path_buf(), false)
        }
        None => (fresh_dir()?, true),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mut demo = Demo {
        bins,
        dir: dir.clone(),
        proxy: args.proxy,
        capture,
        control_plane: None,
        children: Vec::new(),
    };
    let result = runtime.block_on(async {
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        let result = demo.start(&args, page_addr, &mut int, &mut term).await;
        demo.stop().await;
        result
    });
    if made {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            eprintln!("strait demo: cannot remove {}: {e}", dir.display());
        }
    } else {
        eprintln!(
            "strait demo: the control plane's store stays in {}",
            dir.display()
        );
    }
    result
}

struct Demo {
    bins: Binaries,
    dir: PathBuf,
    proxy: ProxyKind,
    capture: CaptureMode,
    control_plane: Option<Proc>,
    children: Vec<Proc>,
}

impl Demo {
    fn logs(&self) -> PathBuf {
        self.dir.join("logs")
    }

    fn connection(&self) -> Connection {
        Connection {
            server: None,
            token: None,
            data_dir: Some(self.dir.clone()),
        }
    }

    /// Starts `strait ARGS` (with this demo's data directory) as a child, its output in
    /// `logs/NAME.log`.
    fn spawn(&self, name: &str, args: &[String]) -> Result<Proc> {
        let log = self.logs().join(format!("{name}.log"));
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new("setpriv");
        cmd.args(["--pdeathsig", "TERM", "--"])
            .arg(&self.bins.strait)
            .arg("--data-dir")
            .arg(&self.dir)
            .args(args)
            .env_remove("STRAIT_SERVER")
            .env_remove("STRAIT_TOKEN")
            .env_remove("STRAIT_HOME");
        // The apps reach each other through their sidecars, never through a proxy of the host.
        for var in [
            "HTTP_PROXY",
            "http_proxy",
            "HTTPS_PROXY",
            "https_proxy",
            "ALL_PROXY",
            "all_proxy",
        ] {
            cmd.env_remove(var);
        }
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0)
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .map_err(|e| crate::sidecar::launch_error(e, &self.bins.strait, false))?;
        let id = child.id().and_then(ProcId::of);
        Ok(Proc {
            name: name.to_string(),
            child,
            id,
            log,
        })
    }

    /// A child that exited early: its name, status and the end of its log.
    fn check_children(&mut self) -> Result<()> {
        let procs = self
            .control_plane
            .iter_mut()
            .chain(self.children.iter_mut());
        for p in procs {
            if let Some(status) = p.exited() {
                bail!(
                    "{} exited ({status}); the end of its log ({}):\n{}",
                    p.name,
                    p.log.display(),
                    p.tail()
                );
            }
        }
        Ok(())
    }

    /// Sleeps `d`; true when Ctrl-C or SIGTERM came meanwhile (the demo ends normally), an
    /// error when a child exited.
    async fn pause(&mut self, d: Duration, int: &mut Signal, term: &mut Signal) -> Result<bool> {
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = int.recv() => return Ok(true),
            _ = term.recv() => return Ok(true),
        }
        self.check_children()?;
        Ok(false)
    }

    async fn start(
        &mut self,
        args: &DemoArgs,
        page_addr: SocketAddr,
        int: &mut Signal,
        term: &mut Signal,
    ) -> Result<ExitCode> {
        let started = Instant::now();
        std::fs::create_dir_all(self.logs())
            .with_context(|| format!("creating {}", self.logs().display()))?;
        // A record of a control plane that did not stop cleanly would point the CLI elsewhere.
        let _ = std::fs::remove_file(self.dir.join(crate::control_plane::SERVER_FILE));
        let _ = std::fs::remove_file(self.dir.join(crate::control_plane::XDS_FILE));
        let _ = std::fs::remove_file(self.dir.join(strait_controlplane::OTLP_FILE));
        let mesh = self.dir.join("mesh.yaml");
        std::fs::write(&mesh, mesh_config())
            .with_context(|| format!("writing {}", mesh.display()))?;
        // xDS and the OTLP receiver on every address, so pods reach them through the bridge
        // (on their ports, recorded in the data directory, which `strait run` reads); the API
        // on loopback.
        let otlp = match self.capture {
            CaptureMode::Iptables => "0.0.0.0:0",
            CaptureMode::None => "127.0.0.1:0",
        };
        let cp = self.spawn(
            "control-plane",
            &strings(&[
                "control-plane",
                "--api-addr",
                "127.0.0.1:0",
                "--xds-addr",
                "0.0.0.0:0",
                "--tls-addr",
                "0.0.0.0:0",
                "--otlp-addr",
                otlp,
                "--mesh-config",
                &mesh.display().to_string(),
            ]),
        )?;
        self.control_plane = Some(cp);
        eprintln!(
            "strait demo: starting the control plane (data in {})",
            self.dir.display()
        );
        let client = loop {
            if self.dir.join(crate::control_plane::XDS_FILE).exists()
                && let Ok(client) = self.connection().connect()
                && client
                    .request("GET", "/debug/services", None)
                    .is_ok_and(|a| a.is_success())
            {
                break client;
            }
            if started.elapsed() > Duration::from_secs(30) {
                let cp = self.control_plane.as_ref().expect("started");
                bail!(
                    "the control plane did not answer within 30 s; the end of its log ({}):\n{}",
                    cp.log.display(),
                    cp.tail()
                );
            }
            if self.pause(Duration::from_millis(50), int, term).await? {
                return Ok(ExitCode::SUCCESS);
            }
        };

        let config = self.dir.join("bookinfo");
        std::fs::create_dir_all(&config)
            .with_context(|| format!("creating {}", config.display()))?;
        let mut files = Vec::new();
        for (name, text) in CONFIG {
            let path = config.join(name);
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            files.push(path.display().to_string());
        }
        let receiver = self.traces_receiver()?;
        let path = config.join("traces.yaml");
        std::fs::write(&path, traces_service_entry(receiver))
            .with_context(|| format!("writing {}", path.display()))?;
        files.push(path.display().to_string());
        eprintln!("strait demo: applying Bookinfo's services, routes and gateway");
        crate::resources::apply(&self.connection(), &files, None)?;

        let proxy = match self.proxy {
            ProxyKind::Strait => "strait",
            ProxyKind::Envoy => "envoy",
        };
        let listen = args.listen.to_string();
        let gw = self.spawn(
            "gateway",
            &strings(&[
                "gateway",
                "--name",
                GATEWAY_NAME,
                "--namespace",
                GATEWAY_NAMESPACE,
                "--labels",
                "istio=ingressgateway",
                "--listen",
                &listen,
                "--proxy",
                proxy,
            ]),
        )?;
        self.children.push(gw);
        let bookinfo = self.bins.bookinfo.display().to_string();
        let capture = match self.capture {
            CaptureMode::Iptables => "iptables",
            CaptureMode::None => "none",
        };
        for w in &WORKLOADS {
            let labels = format!("app={},version={}", w.service, w.version);
            let account = format!("bookinfo-{}", w.service);
            let mut a = strings(&[
                "run",
                "--name",
                w.name,
                "--namespace",
                NAMESPACE,
                "--labels",
                &labels,
                "--service-account",
                &account,
                "--port",
                "http:9080",
                "--capture",
                capture,
                "--proxy",
                proxy,
                "--",
                &bookinfo,
                w.service,
            ]);
            if w.service != "productpage" {
                a.extend(strings(&["--version", w.version]));
            }
            let p = self.spawn(w.name, &a)?;
            self.children.push(p);
        }
        eprintln!(
            "strait demo: starting the ingress gateway and Bookinfo's pods ({} sidecars, {})",
            match self.proxy {
                ProxyKind::Strait => "strait-proxy",
                ProxyKind::Envoy => "Envoy",
            },
            match self.capture {
                CaptureMode::Iptables => "iptables capture",
                CaptureMode::None => "no capture: the apps use their sidecars as HTTP proxies",
            }
        );

        // Ready: every workload registered, and the page whole through the gateway.
        let url = format!("http://{page_addr}/productpage");
        let deadline = Instant::now() + Duration::from_secs(args.ready_timeout);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(5)))
            .proxy(None)
            .build()
            .into();
        let mut last: String;
        loop {
            let missing = unregistered(&client);
            if missing.is_empty() {
                match agent.get(&url).call() {
                    Ok(mut r) => {
                        let code = r.status().as_u16();
                        let body = r.body_mut().read_to_string().unwrap_or_default();
                        if code == 200 && page_is_whole(&body) {
                            break;
                        }
                        last = format!("HTTP {code}");
                    }
                    Err(e) => last = e.to_string(),
                }
            } else {
                last = format!("not registered yet: {}", missing.join(", "));
            }
            if Instant::now() > deadline {
                let tails: Vec<String> = self
                    .children
                    .iter()
                    .map(|p| format!("--- {} ({}):\n{}", p.name, p.log.display(), p.tail()))
                    .collect();
                bail!(
                    "{url} did not answer with the whole page within {} s ({last}); the ends of the logs:\n{}",
                    args.ready_timeout,
                    tails.join("\n")
                );
            }
            if self.pause(Duration::from_millis(200), int, term).await? {
                return Ok(ExitCode::SUCCESS);
            }
        }
        self.welcome(&url, started.elapsed());

        // Up: a Bookinfo pod that ends is reported and the others keep serving (its endpoint
        // leaves the mesh, as when a Kubernetes pod dies); the control plane or the gateway
        // ending ends the demo.
        let mut gone = std::collections::BTreeSet::new();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = int.recv() => return Ok(ExitCode::SUCCESS),
                _ = term.recv() => return Ok(ExitCode::SUCCESS),
            }
            for p in self.children.iter_mut() {
                let is_pod = WORKLOADS.iter().any(|w| w.name == p.name);
                if !is_pod || gone.contains(&p.name) {
                    continue;
                }
                if let Some(status) = p.exited() {
                    eprintln!(
                        "strait demo: pod {} ended ({status}); it left the mesh and the other pods \
                         keep serving. Its log: {}",
                        p.name,
                        p.log.display()
                    );
                    gone.insert(p.name.clone());
                }
            }
            let fatal = self
                .control_plane
                .iter_mut()
                .chain(self.children.iter_mut())
                .filter(|p| !WORKLOADS.iter().any(|w| w.name == p.name))
                .find_map(|p| {
                    p.exited()
                        .map(|status| (p.name.clone(), status, p.tail(), p.log.clone()))
                });
            if let Some((name, status, tail, log)) = fatal {
                bail!(
                    "{name} exited ({status}); the end of its log ({}):\n{tail}",
                    log.display()
                );
            }
        }
    }

    /// The control plane's OTLP receiver as the proxies reach it: through the bridge from
    /// pods (the bridge's address is the host's), on loopback otherwise.
    fn traces_receiver(&self) -> Result<SocketAddr> {
        let file = self.dir.join(strait_controlplane::OTLP_FILE);
        let recorded: SocketAddr = std::fs::read_to_string(&file)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .with_context(|| {
                format!(
                    "the control plane did not record its OTLP receiver in {}",
                    file.display()
                )
            })?;
        let ip = match self.capture {
            CaptureMode::Iptables => {
                std::net::IpAddr::V4(crate::run::PlatformArgs::default_pod_range()?.gateway())
            }
            CaptureMode::None => std::net::IpAddr::V4(Ipv4Addr::LOCALHOST),
        };
        Ok(SocketAddr::new(ip, recorded.port()))
    }

    /// The dashboard's URL: the control plane's API address and `/dashboard/`.
    fn dashboard_url(&self) -> String {
        let base = std::fs::read_to_string(self.dir.join(crate::control_plane::SERVER_FILE))
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        crate::dashboard::url(&base, None)
    }

    fn welcome(&self, url: &str, took: Duration) {
        let strait = self.bins.strait.display();
        let dashboard = self.dashboard_url();
        let samples = istio_samples()
            .map(|d| d.display().to_string())
            .unwrap_or_else(|| "ISTIO/samples/bookinfo/networking".to_string());
        println!(
            "\nBookinfo is up (in {:.1} s): {url}\n\
             Dashboard: {dashboard}\n\
             \n\
             Open it in a browser (sign in as jason to be routed as him), or:\n\
             \x20 curl -s {url} | grep -o 'color=\"[a-z]*\"'\n\
             \n\
             Try Istio's tasks from another shell, against this demo's control plane:\n\
             \x20 export STRAIT_HOME={dir}\n\
             \x20 alias strait={strait}\n\
             \x20 S={samples}\n\
             \x20 strait apply -f $S/virtual-service-reviews-v3.yaml         # everyone: red stars\n\
             \x20 strait apply -f $S/virtual-service-reviews-50-v3.yaml      # half the loads red\n\
             \x20 strait apply -f $S/virtual-service-reviews-test-v2.yaml    # jason: black stars\n\
             \x20 strait apply -f $S/virtual-service-ratings-test-abort.yaml # jason: ratings unavailable\n\
             \x20 strait apply -f $S/virtual-service-all-v1.yaml             # everyone: v1, no stars\n\
             \x20 strait get vs\n\
             \x20 strait proxy-status\n\
             \n\
             Logs: {logs}. Press Ctrl-C to stop the demo; it removes everything it started.",
            took.as_secs_f64(),
            dir = self.dir.display(),
            logs = self.logs().display(),
        );
    }

    /// The gateway and the pods first (each removes its registration and its pod), then the
    /// control plane.
    async fn stop(&mut self) {
        if self.control_plane.is_none() {
            return;
        }
        eprintln!("strait demo: stopping the gateway, the pods and the control plane");
        let mut tasks = Vec::new();
        for mut p in self.children.drain(..) {
            tasks.push(tokio::spawn(async move {
                p.stop(CHILD_GRACE).await;
                p
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        if let Some(mut cp) = self.control_plane.take() {
            cp.stop(Duration::from_secs(10)).await;
        }
        eprintln!("strait demo: stopped");
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The Bookinfo pods whose WorkloadEntry is not there yet.
fn unregistered(client: &Client) -> Vec<&'static str> {
    let path = format!("/apis/networking.istio.io/v1/namespaces/{NAMESPACE}/workloadentries");
    let names: Vec<String> = match client.request("GET", &path, None) {
        Ok(a) if a.is_success() => a.body["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["metadata"]["name"].as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    };
    WORKLOADS
        .iter()
        .map(|w| w.name)
        .filter(|n| !names.iter().any(|m| m == n))
        .collect()
}

/// The product page with its details and reviews (no service missing behind it).
fn page_is_whole(body: &str) -> bool {
    body.contains("<h4>Book Details</h4>")
        && body.contains("<h4>Book Reviews</h4>")
        && !body.contains("currently unavailable")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_gateway_serves_the_port_the_demo_waits_on() {
        let gateway = CONFIG
            .iter()
            .find(|(n, _)| *n == "gateway.yaml")
            .map(|(_, t)| *t)
            .unwrap();
        assert!(
            gateway.contains(&format!("number: {GATEWAY_PORT}")),
            "{gateway}"
        );
        assert!(gateway.contains("istio: ingressgateway"));
    }

    #[test]
    fn every_workload_has_a_service_in_the_embedded_config() {
        let services = CONFIG[0].1;
        for w in &WORKLOADS {
            assert!(
                services.contains(&format!("name: {}\n", w.service)),
                "{}",
                w.service
            );
            assert!(services.contains(&format!("name: bookinfo-{}\n", w.service)));
        }
    }

    #[test]
    fn the_demo_mesh_config_makes_the_control_plane_the_default_tracing_provider() {
        let file = strait_api::mesh_config::parse("mesh.yaml", &mesh_config()).unwrap();
        assert!(file.warnings.is_empty(), "{:?}", file.warnings);
        let t = &file.config.tracing;
        assert_eq!(t.default_providers, [TRACES_PROVIDER]);
        assert_eq!(t.sampling.map(|p| p.get()), Some(100.0));
        assert_eq!(file.config.extension_providers.len(), 1);
        assert_eq!(file.config.extension_providers[0].name, TRACES_PROVIDER);
        let se = traces_service_entry("10.44.0.1:41234".parse().unwrap());
        assert!(
            se.contains("endpoints: [{address: 10.44.0.1, ports: {http-otlp: 41234}}]"),
            "{se}"
        );
        assert!(se.contains(&format!("hosts: [{TRACES_HOST}]")), "{se}");
    }

    #[test]
    fn a_whole_page_has_details_and_reviews() {
        assert!(page_is_whole(
            "<h4>Book Details</h4>\n<h4>Book Reviews</h4>\n"
        ));
        assert!(!page_is_whole(
            "<h4>Book Details</h4>\n<h4>Error fetching product reviews!</h4>\n"
        ));
        assert!(!page_is_whole(
            "<h4>Book Details</h4>\n<h4>Book Reviews</h4>\n<p><i>Ratings service is currently unavailable</i></p>"
        ));
    }

    #[test]
    fn the_build_command_follows_the_profile() {
        assert_eq!(
            build_command(Path::new("/x/target/release"), &["strait-bookinfo"]),
            "cargo build --release -p strait-bookinfo"
        );
        assert_eq!(
            build_command(
                Path::new("/x/target/debug"),
                &["strait-bookinfo", "strait-proxy-bin"]
            ),
            "cargo build -p strait-bookinfo -p strait-proxy-bin"
        );
    }
}
