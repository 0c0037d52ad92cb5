//! The soak (issue 13, item 12): Bookinfo as `strait demo` runs it (the project's config,
//! examples/bookinfo/*.yaml; six pods and the ingress gateway, iptables capture), steady page
//! loads through the gateway, and faults on a schedule: a config change every few seconds (the
//! reviews route alternates between Istio's samples, unchanged, and the demo test's route with
//! retries), a pod killed with `kill -9` and started again every so often (its app alone, or its
//! whole `strait run`), and the control plane killed with `kill -9` and restarted on the same
//! data directory and ports. It records every failed page load with the nearest fault, and every
//! proxy's (sidecars, gateway) and the control plane's RSS and open file descriptors over time,
//! following restarts; then writes a JSON report and a Markdown summary.
//!
//! Without `STRAIT_SOAK_MINUTES` this is the suite's smoke test: both data planes one after the
//! other, about 25 s of traffic each, every fault kind at least once; it asserts the report's
//! shape, that no failure goes unexplained, and that each fault happened. `bench/soak.sh` runs
//! the recorded soak through the same test binary with these environment variables:
//!
//! - `STRAIT_SOAK_MINUTES`: traffic and faults for this long per data plane (the long mode, which
//!   also asserts that RSS stays flat: see [`FLAT_RSS_SLOPE_MB`]);
//! - `STRAIT_SOAK_PROXY`: `strait`, `envoy` or `both` (the default);
//! - `STRAIT_SOAK_RESULTS`: the folder for `DATE-soak-....json` and `.md` (default: a temporary
//!   folder, printed); `STRAIT_SOAK_COMMAND`: the command line the report names.
//!
//! Needs root, iproute2, iptables, setpriv, Envoy and the `bookinfo` and `strait-proxy` binaries
//! beside `strait`; fails (never skips) without them. Holds the pods lock throughout.

use strait_e2e as support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::ControlPlane;
use support::platform::{Run, require_platform, start};

/// A failed page load is explained by a pod kill or a control-plane restart when it overlaps
/// the fault's interval (from the kill until the replacement is registered, or the control plane
/// answers again) extended by this much. The endpoint of a restarted pod reaches every proxy
/// within a second of its registration (the debounce and one push; tests/demo.rs holds the
/// proxies to 1 s for a removal), and a proxy may still hold a connection to the killed pod that
/// fails once; 5 s covers both several times over on a loaded 2-core machine. A config change
/// explains nothing: switching the reviews route between live subsets must not fail a request
/// (the proxies swap the routes atomically and requests in flight finish on the old ones).
const EXPLAINED_AFTER: Duration = Duration::from_secs(5);

/// RSS is flat when, over the second half of the run, its least-squares slope is below this
/// many MB per 10 minutes...
const FLAT_RSS_SLOPE_MB: f64 = 2.0;
/// ...and the end is within this many MB of the value after warm-up (the first 10 % of the run).
const FLAT_RSS_END_MB: f64 = 5.0;
/// Open file descriptors are flat when the end is at most this many above the post-warm-up value.
const FLAT_FDS_END: i64 = 10;

/// The demo's Bookinfo config, in the demo's order.
const CONFIG: [&str; 4] = [
    "services.yaml",
    "destination-rules.yaml",
    "routes-v1.yaml",
    "gateway.yaml",
];

/// Bookinfo's pods as the demo runs them: (pod name, service, version).
const WORKLOADS: [(&str, &str, &str); 6] = [
    ("details-v1", "details", "v1"),
    ("ratings-v1", "ratings", "v1"),
    ("reviews-v1", "reviews", "v1"),
    ("reviews-v2", "reviews", "v2"),
    ("reviews-v3", "reviews", "v3"),
    ("productpage-v1", "productpage", "v1"),
];

/// The pods the kills take turns on. productpage-v1 and reviews-v1 are never killed, so that
/// their sidecars (productpage's carries every call behind the page) and the gateway live the
/// whole run and their RSS can be judged over it.
const KILLED: [&str; 4] = ["reviews-v2", "details-v1", "reviews-v3", "ratings-v1"];

/// The reviews route the config changes go through, in turn: the demo test's route over every
/// version with retries (the project's YAML), and Istio's samples, unchanged.
const ROUTES: [&str; 8] = [
    "retries",
    "virtual-service-reviews-50-v3.yaml",
    "retries",
    "virtual-service-reviews-v2-v3.yaml",
    "retries",
    "virtual-service-reviews-80-20.yaml",
    "retries",
    "virtual-service-reviews-90-10.yaml",
];

/// reviews over all its versions, with retries (as tests/demo.rs configures them).
const REVIEWS_WITH_RETRIES: &str = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
  - reviews
  http:
  - route:
    - destination:
        host: reviews
    retries:
      attempts: 3
      perTryTimeout: 2s
      retryOn: connect-failure,refused-stream,reset,gateway-error
";

/// How often what happens.
#[derive(Clone, Copy)]
struct Schedule {
    /// Traffic and faults (no fault starts in the last `quiet` of it).
    length: Duration,
    quiet: Duration,
    config_every: Duration,
    kill_first: Duration,
    kill_every: Duration,
    restart_first: Duration,
    restart_every: Duration,
    sample_every: Duration,
    /// Page loads per second from each of the two clients.
    rate: f64,
}

impl Schedule {
    fn smoke() -> Schedule {
        Schedule {
            length: Duration::from_secs(25),
            quiet: Duration::from_secs(6),
            config_every: Duration::from_secs(2),
            kill_first: Duration::from_secs(2),
            kill_every: Duration::from_secs(9),
            // With the second kill (the whole run of details-v1), as in the long mode at 150 s.
            restart_first: Duration::from_secs(11),
            restart_every: Duration::from_secs(600),
            sample_every: Duration::from_secs(2),
            rate: 5.0,
        }
    }

    fn long(minutes: f64) -> Schedule {
        Schedule {
            length: Duration::from_secs_f64(minutes * 60.0),
            quiet: Duration::from_secs(20),
            config_every: Duration::from_secs(3),
            kill_first: Duration::from_secs(60),
            kill_every: Duration::from_secs(90),
            restart_first: Duration::from_secs(150),
            restart_every: Duration::from_secs(300),
            sample_every: Duration::from_secs(10),
            rate: 5.0,
        }
    }
}

/// A fault: what, on what, and when (seconds since the traffic started).
#[derive(Clone, Debug)]
struct Fault {
    kind: &'static str,
    target: String,
    start: f64,
    end: f64,
}

impl Fault {
    fn explains(&self) -> bool {
        self.kind != "config-change"
    }
}

/// One page load that failed: when (start and end, seconds), and why.
#[derive(Clone, Debug)]
struct Failure {
    start: f64,
    end: f64,
    error: String,
}

/// One sample of one process.
#[derive(Clone, Debug)]
struct Sample {
    t: f64,
    pid: u32,
    rss_kb: u64,
    fds: u64,
}

/// The processes sampled: label → the pid whose descendants hold the proxy (`strait run`,
/// `strait gateway`), or the control plane's own pid.
#[derive(Default)]
struct Watched {
    runs: BTreeMap<String, u32>,
    control_plane: u32,
}

fn networking(file: &str) -> PathBuf {
    let path = support::testdata()
        .join("istio-samples/bookinfo/networking")
        .join(file);
    assert!(path.is_file(), "{} is missing", path.display());
    path
}

fn examples(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/bookinfo")
        .join(file)
}

/// An HTTP/1.1 GET through the gateway: (status, body).
fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = Vec::new();
    stream.read_to_end(&mut resp)?;
    let resp = String::from_utf8_lossy(&resp).into_owned();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let code = head
        .lines()
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, body.to_string()))
}

/// The product page, whole (details, reviews and, where the version shows them, ratings), or
/// why not.
fn page(gateway: SocketAddr) -> Result<(), String> {
    let (code, body) = get(gateway, "/productpage").map_err(|e| e.to_string())?;
    if code != 200 {
        return Err(format!("HTTP {code}"));
    }
    for bad in [
        "Sorry, product reviews are currently unavailable",
        "Ratings service is currently unavailable",
        "Error fetching product details",
        "Error fetching product reviews",
    ] {
        if body.contains(bad) {
            return Err(bad.to_string());
        }
    }
    if !body.contains("<h4>Book Details</h4>") {
        return Err("no book details on the page".into());
    }
    Ok(())
}

/// `/proc` in one pass: pid → (ppid, comm).
fn process_table() -> BTreeMap<u32, (u32, String)> {
    let mut table = BTreeMap::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_string();
        let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        if fields.first() == Some(&"Z") {
            continue;
        }
        if let Some(ppid) = fields.get(1).and_then(|p| p.parse().ok()) {
            table.insert(pid, (ppid, comm));
        }
    }
    table
}

/// The proxy (strait-proxy or Envoy) among the descendants of `root`.
fn proxy_under(table: &BTreeMap<u32, (u32, String)>, root: u32) -> Option<u32> {
    let mut parents = vec![root];
    while let Some(p) = parents.pop() {
        for (pid, (ppid, comm)) in table {
            if *ppid == p {
                // A pod's proxy may run from a copy uid 1337 can read (`strait-proxy-SIZE-MTIME`,
                // when the build's folder is closed to it), its name cut to 15 characters.
                if comm.starts_with("strait-proxy") || comm.starts_with("envoy") {
                    return Some(*pid);
                }
                parents.push(*pid);
            }
        }
    }
    None
}

/// (VmRSS in kB, open file descriptors) of `pid`.
fn measure(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some((rss, fds))
}

/// A Bookinfo pod's `strait run` arguments, as the demo passes them.
fn pod_args(name: &str, proxy: &str, bookinfo: &str) -> Vec<String> {
    let (_, service, version) = WORKLOADS.iter().find(|w| w.0 == name).unwrap();
    let mut args: Vec<String> = [
        "run",
        "--name",
        name,
        "--namespace",
        "default",
        "--labels",
        &format!("app={service},version={version}"),
        "--service-account",
        &format!("bookinfo-{service}"),
        "--port",
        "http:9080",
        "--capture",
        "iptables",
        "--proxy",
        proxy,
        "--",
        bookinfo,
        service,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if *service != "productpage" {
        args.extend(["--version".to_string(), version.to_string()]);
    }
    args
}

fn pod_record(name: &str) -> Option<Value> {
    let path = support::platform::run_dir().join(format!("{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// The whole mesh of one data plane.
struct Mesh {
    proxy: &'static str,
    cp: ControlPlane,
    gateway: SocketAddr,
    runs: BTreeMap<String, Run>,
    gateway_run: Option<Run>,
    dir: tempfile::TempDir,
    bookinfo: String,
}

impl Mesh {
    fn start(proxy: &'static str, listen: &str) -> Mesh {
        // Fixed ports, so the proxies find the control plane again after it restarts.
        let ports: Vec<String> = (0..3)
            .map(|_| strait_testsupport::free_port().to_string())
            .collect();
        let cp = ControlPlane::start_with(&[
            "--api-addr",
            &format!("127.0.0.1:{}", ports[0]),
            "--xds-addr",
            &format!("0.0.0.0:{}", ports[1]),
            "--tls-addr",
            &format!("0.0.0.0:{}", ports[2]),
        ]);
        for file in CONFIG {
            cp.ok(&["apply", "-f", &examples(file).display().to_string()]);
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("retries.yaml"), REVIEWS_WITH_RETRIES).unwrap();
        let bookinfo = Path::new(support::strait())
            .with_file_name("bookinfo")
            .display()
            .to_string();
        let mut mesh = Mesh {
            proxy,
            cp,
            gateway: format!("{listen}:8080").parse().unwrap(),
            runs: BTreeMap::new(),
            gateway_run: None,
            dir,
            bookinfo,
        };
        mesh.apply_route("retries");
        mesh.gateway_run = Some(start(
            &mesh.cp,
            &[
                "gateway",
                "--name",
                "istio-ingressgateway",
                "--namespace",
                "istio-system",
                "--labels",
                "istio=ingressgateway",
                "--listen",
                listen,
                "--proxy",
                proxy,
            ],
            mesh.dir.path(),
        ));
        for (name, _, _) in WORKLOADS {
            mesh.start_pod(name);
        }
        for (name, _, _) in WORKLOADS {
            mesh.wait_registered(name);
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        while let Err(e) = page(mesh.gateway) {
            assert!(
                Instant::now() < deadline,
                "{proxy}: the product page is not whole through the gateway within 120 s: {e}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        mesh
    }

    fn start_pod(&mut self, name: &str) {
        let args = pod_args(name, self.proxy, &self.bookinfo);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = start(&self.cp, &args, self.dir.path());
        self.runs.insert(name.to_string(), run);
    }

    /// Waits until the pod's current run made its pod and registered it.
    fn wait_registered(&mut self, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let run = self.runs.get_mut(name).unwrap();
        let pid = run.child.id() as u64;
        loop {
            let mine = pod_record(&format!("{name}.default"))
                .is_some_and(|r| r["owner"]["pid"].as_u64() == Some(pid));
            if mine && support::platform::workload_entry(&self.cp, "default", name).is_some() {
                return;
            }
            if let Some(status) = run.child.try_wait().unwrap() {
                panic!("strait run {name} exited ({status}):\n{}", run.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "{}: pod {name} was not registered within 60 s:\n{}",
                self.proxy,
                run.stderr()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn apply_route(&self, route: &str) {
        let path = if route == "retries" {
            self.dir.path().join("retries.yaml")
        } else {
            networking(route)
        };
        self.cp.ok(&["apply", "-f", &path.display().to_string()]);
    }

    /// `kill -9` the pod's app (its run then ends by itself, removing its registration and
    /// pod) or its whole `strait run` (which leaves them for the next run to remove); then the
    /// pod starts again and registers.
    /// Returns the pod's address before and after (`10.44.0.5 -> 10.44.0.9`).
    fn kill_pod(&mut self, name: &str, whole_run: bool) -> String {
        let ip = || {
            pod_record(&format!("{name}.default"))
                .and_then(|r| r["ip"].as_str().map(str::to_string))
                .unwrap_or_default()
        };
        let before = ip();
        let run = self.runs.get_mut(name).unwrap();
        let victim = if whole_run {
            run.child.id()
        } else {
            let rec = pod_record(&format!("{name}.default"))
                .unwrap_or_else(|| panic!("no pod record of {name}"));
            rec["processes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p["pid"].as_u64())
                .map(|p| p as u32)
                .find(|pid| {
                    std::fs::read_to_string(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                        c.split('\0')
                            .next()
                            .is_some_and(|argv0| argv0.ends_with("bookinfo"))
                    })
                })
                .unwrap_or_else(|| panic!("no bookinfo process in {name}'s record: {rec}"))
        };
        let ok = Command::new("kill")
            .args(["-KILL", &victim.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -KILL {victim} ({name})");
        let _ = run.wait(Duration::from_secs(60));
        self.start_pod(name);
        self.wait_registered(name);
        format!("{before} -> {}", ip())
    }

    /// What the proxies that call other services (the gateway, productpage's and reviews-v1's
    /// sidecars) hold as endpoints at the end, and where the WorkloadEntries point: for a
    /// failure nothing explains.
    fn end_state(&self) -> Value {
        let mut proxies = serde_json::Map::new();
        let mut admins = vec![(
            "gateway".to_string(),
            format!("{}:15000", self.gateway.ip()),
        )];
        for name in ["productpage-v1", "reviews-v1"] {
            if let Some(ip) = pod_record(&format!("{name}.default"))
                .and_then(|r| r["ip"].as_str().map(str::to_string))
            {
                admins.push((format!("{name} sidecar"), format!("{ip}:15000")));
            }
        }
        for (label, admin) in admins {
            let listing = admin
                .parse()
                .ok()
                .and_then(|a| get(a, "/clusters").ok())
                .map(|(_, body)| {
                    body.lines()
                        .filter(|l| l.contains("::health_flags::"))
                        .map(str::to_string)
                        .collect::<Vec<_>>()
                });
            proxies.insert(label, json!(listing));
        }
        let entries: BTreeMap<&str, Value> = WORKLOADS
            .iter()
            .map(|w| {
                let we = support::platform::workload_entry(&self.cp, "default", w.0);
                (w.0, json!(we.map(|we| we["spec"]["address"].clone())))
            })
            .collect();
        let status = self.cp.cli(&["proxy-status"]);
        // productpage's pod: its neighbours and its TCP connections on port 9080 (its sidecar's
        // to the other pods).
        let netns = pod_record("productpage-v1.default")
            .and_then(|r| r["netns"].as_str().map(str::to_string))
            .unwrap_or_default();
        let tool = |cmd: &str, args: &[&str]| {
            Command::new(cmd)
                .args(args)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_else(|e| format!("{cmd}: {e}"))
        };
        let neighbours = tool("ip", &["-n", &netns, "neigh", "show"]);
        // Open ones only (the app's closed connections to the services' VIPs are many).
        let connections: Vec<String> = tool("ss", &["-N", &netns, "-tanH", "dport = :9080"])
            .lines()
            .filter(|l| !l.starts_with("TIME-WAIT"))
            .map(str::to_string)
            .collect();
        let log = std::fs::read_to_string(
            support::platform::run_dir().join("productpage-v1.default.d/proxy.log"),
        )
        .unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let log_tail = lines[lines.len().saturating_sub(40)..].to_vec();
        // The productpage sidecar's own counters for details.
        let details_stats: Vec<String> = pod_record("productpage-v1.default")
            .and_then(|r| r["ip"].as_str().map(str::to_string))
            .and_then(|ip| format!("{ip}:15000").parse().ok())
            .and_then(|a| get(a, "/stats/prometheus").ok())
            .map(|(_, body)| {
                body.lines()
                    .filter(|l| !l.starts_with('#') && l.contains("details") && !l.ends_with(" 0"))
                    .take(80)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        json!({
            "productpage_pod": {
                "neighbours": neighbours,
                "connections_to_9080": connections,
                "sidecar_details_stats": details_stats,
                "sidecar_log_tail": log_tail,
            },
            "endpoints": proxies,
            "workload_entries": entries,
            "proxy_status": String::from_utf8_lossy(&status.stdout),
        })
    }

    fn restart_control_plane(&mut self) {
        self.cp.kill9();
        self.cp.restart();
    }

    fn watched(&self) -> Watched {
        let mut runs: BTreeMap<String, u32> = self
            .runs
            .iter()
            .map(|(n, r)| (format!("{n} sidecar"), r.child.id()))
            .collect();
        if let Some(g) = &self.gateway_run {
            runs.insert("gateway".into(), g.child.id());
        }
        Watched {
            runs,
            control_plane: self.cp.pid(),
        }
    }

    /// SIGTERM to every run at once, then each one's end; then the control plane.
    fn stop(mut self) {
        let runs: Vec<Run> = std::mem::take(&mut self.runs)
            .into_values()
            .chain(self.gateway_run.take())
            .collect();
        for r in &runs {
            let _ = Command::new("kill")
                .args(["-TERM", &r.child.id().to_string()])
                .status();
        }
        for mut r in runs {
            let _ = r.wait(Duration::from_secs(40));
        }
    }
}

/// What one data plane's soak measured.
struct Outcome {
    proxy: &'static str,
    schedule: Schedule,
    length: f64,
    total: u64,
    failures: Vec<Failure>,
    faults: Vec<Fault>,
    samples: BTreeMap<String, Vec<Sample>>,
    end_state: Value,
}

fn soak(proxy: &'static str, listen: &str, schedule: Schedule) -> Outcome {
    let setup = Instant::now();
    let mut mesh = Mesh::start(proxy, listen);
    eprintln!("{proxy}: Bookinfo up in {:?}", setup.elapsed());
    let started = Instant::now();
    let secs = move || started.elapsed().as_secs_f64();
    let stop = Arc::new(AtomicBool::new(false));
    let watched = Arc::new(Mutex::new(mesh.watched()));

    // Two clients at a fixed rate each.
    let gateway = mesh.gateway;
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            let period = Duration::from_secs_f64(1.0 / schedule.rate);
            std::thread::spawn(move || {
                let (mut total, mut failed) = (0u64, Vec::new());
                let mut next = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let t0 = secs();
                    if let Err(error) = page(gateway) {
                        failed.push(Failure {
                            start: t0,
                            end: secs(),
                            error,
                        });
                    }
                    total += 1;
                    next += period;
                    let now = Instant::now();
                    if next > now {
                        std::thread::sleep(next - now);
                    } else {
                        next = now;
                    }
                }
                (total, failed)
            })
        })
        .collect();

    // RSS and fds of every proxy and the control plane.
    let sampler = {
        let stop = stop.clone();
        let watched = watched.clone();
        std::thread::spawn(move || {
            let mut samples: BTreeMap<String, Vec<Sample>> = BTreeMap::new();
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                let t = secs();
                let table = process_table();
                let w = watched.lock().unwrap();
                let mut pids: Vec<(String, u32)> = w
                    .runs
                    .iter()
                    .filter_map(|(label, run)| Some((label.clone(), proxy_under(&table, *run)?)))
                    .collect();
                pids.push(("control-plane".into(), w.control_plane));
                drop(w);
                for (label, pid) in pids {
                    if let Some((rss_kb, fds)) = measure(pid) {
                        samples.entry(label).or_default().push(Sample {
                            t,
                            pid,
                            rss_kb,
                            fds,
                        });
                    }
                }
                next += schedule.sample_every;
                while Instant::now() < next && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            samples
        })
    };

    // The faults, one at a time, on this thread.
    let mut faults = Vec::new();
    let (mut next_config, mut next_kill, mut next_restart) = (
        schedule.config_every,
        schedule.kill_first,
        schedule.restart_first,
    );
    let (mut routes, mut kills) = (0usize, 0usize);
    let last_fault = schedule.length.saturating_sub(schedule.quiet);
    while started.elapsed() < last_fault {
        let now = started.elapsed();
        let t = secs();
        if now >= next_restart {
            mesh.restart_control_plane();
            *watched.lock().unwrap() = mesh.watched();
            faults.push(Fault {
                kind: "control-plane-restart",
                target: "control plane".into(),
                start: t,
                end: secs(),
            });
            next_restart += schedule.restart_every;
        } else if now >= next_kill {
            let name = KILLED[kills % KILLED.len()];
            let whole_run = kills % 2 == 1;
            let moved = mesh.kill_pod(name, whole_run);
            *watched.lock().unwrap() = mesh.watched();
            faults.push(Fault {
                kind: if whole_run {
                    "pod-run-kill"
                } else {
                    "pod-app-kill"
                },
                target: format!("{name} {moved}"),
                start: t,
                end: secs(),
            });
            kills += 1;
            next_kill += schedule.kill_every;
        } else if now >= next_config {
            let route = ROUTES[routes % ROUTES.len()];
            mesh.apply_route(route);
            faults.push(Fault {
                kind: "config-change",
                target: route.into(),
                start: t,
                end: secs(),
            });
            routes += 1;
            next_config = now + schedule.config_every;
        } else {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    while started.elapsed() < schedule.length {
        std::thread::sleep(Duration::from_millis(100));
    }
    // While the traffic still runs: requests in flight show in the connections.
    let end_state = mesh.end_state();
    stop.store(true, Ordering::Relaxed);
    let length = secs();
    let (mut total, mut failures) = (0, Vec::new());
    for c in clients {
        let (n, f) = c.join().unwrap();
        total += n;
        failures.extend(f);
    }
    failures.sort_by(|a, b| a.start.total_cmp(&b.start));
    let samples = sampler.join().unwrap();
    mesh.stop();
    Outcome {
        proxy,
        schedule,
        length,
        total,
        failures,
        faults,
        samples,
        end_state,
    }
}

/// Least-squares slope of (t seconds, y) in y per 10 minutes.
fn slope_per_10min(points: &[(f64, f64)]) -> Option<f64> {
    if points.len() < 3 {
        return None;
    }
    let n = points.len() as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx * 600.0)
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// One process's series: figures of its longest-lived instance, and the flat verdicts when that
/// instance lived from the end of warm-up to the end.
fn summarize(samples: &[Sample], length: f64, sample_every: f64) -> Value {
    let mut instances: Vec<(u32, Vec<&Sample>)> = Vec::new();
    for s in samples {
        match instances.last_mut() {
            Some((pid, v)) if *pid == s.pid => v.push(s),
            _ => instances.push((s.pid, vec![s])),
        }
    }
    let (_, longest) = instances
        .iter()
        .max_by(|a, b| {
            let span = |v: &Vec<&Sample>| v.last().unwrap().t - v[0].t;
            span(&a.1).total_cmp(&span(&b.1))
        })
        .expect("samples");
    let warm_end = length * 0.1;
    let half = length * 0.5;
    let mb = |s: &Sample| s.rss_kb as f64 / 1024.0;
    let warm = longest.iter().find(|s| s.t >= warm_end).copied();
    let end = *longest.last().unwrap();
    let second_half: Vec<&Sample> = longest.iter().filter(|s| s.t >= half).copied().collect();
    let rss_slope = slope_per_10min(&second_half.iter().map(|s| (s.t, mb(s))).collect::<Vec<_>>());
    let fd_slope = slope_per_10min(
        &second_half
            .iter()
            .map(|s| (s.t, s.fds as f64))
            .collect::<Vec<_>>(),
    );
    let judged = warm.is_some_and(|w| w.t <= warm_end + 2.0 * sample_every)
        && end.t >= length - 2.0 * sample_every
        && second_half.len() >= 3
        && length >= 300.0;
    let rss_flat = judged.then(|| {
        let w = warm.unwrap();
        rss_slope.unwrap_or(0.0) < FLAT_RSS_SLOPE_MB && (mb(end) - mb(w)).abs() <= FLAT_RSS_END_MB
    });
    let fds_flat = judged.then(|| (end.fds as i64) - (warm.unwrap().fds as i64) <= FLAT_FDS_END);
    json!({
        "instances": instances.len(),
        "judged_instance_pid": longest[0].pid,
        "rss_mb": {
            "start": round1(mb(samples.first().unwrap())),
            "after_warmup": warm.map(|w| round1(mb(w))),
            "end": round1(mb(end)),
            "max": round1(samples.iter().map(mb).fold(0.0, f64::max)),
            "slope_per_10min_second_half": rss_slope.map(round1),
            "flat": rss_flat,
        },
        "fds": {
            "start": samples.first().unwrap().fds,
            "after_warmup": warm.map(|w| w.fds),
            "end": end.fds,
            "max": samples.iter().map(|s| s.fds).max(),
            "slope_per_10min_second_half": fd_slope.map(round1),
            "flat": fds_flat,
        },
    })
}

fn report(o: &Outcome) -> Value {
    let nearest = |f: &Failure| {
        o.faults.iter().min_by(|a, b| {
            let d = |x: &Fault| (x.start - f.start).abs().min((x.end - f.start).abs());
            d(a).total_cmp(&d(b))
        })
    };
    let window = EXPLAINED_AFTER.as_secs_f64();
    let mut explained = 0u64;
    let mut by_error: BTreeMap<String, u64> = BTreeMap::new();
    let mut listed = Vec::new();
    for f in &o.failures {
        // The latest fault that explains it (the faults are in time order).
        let explained_by = o
            .faults
            .iter()
            .rev()
            .find(|x| x.explains() && f.end >= x.start && f.start <= x.end + window);
        explained += explained_by.is_some() as u64;
        *by_error.entry(f.error.clone()).or_default() += 1;
        if listed.len() < 500 || explained_by.is_none() {
            let n = explained_by.or(nearest(f));
            listed.push(json!({
                "start_s": round1(f.start),
                "end_s": round1(f.end),
                "error": f.error,
                "explained": explained_by.is_some(),
                "fault": n.map(|x| json!({"kind": x.kind, "target": x.target, "start_s": round1(x.start), "end_s": round1(x.end)})),
            }));
        }
    }
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    for f in &o.faults {
        *counts.entry(f.kind).or_default() += 1;
    }
    let processes: BTreeMap<&String, Value> = o
        .samples
        .iter()
        .map(|(label, s)| {
            (
                label,
                json!({
                    "summary": summarize(s, o.length, o.schedule.sample_every.as_secs_f64()),
                    "samples": s.iter().map(|s| json!([round1(s.t), s.pid, s.rss_kb, s.fds])).collect::<Vec<_>>(),
                }),
            )
        })
        .collect();
    json!({
        "proxy": o.proxy,
        "length_s": round1(o.length),
        "requests": {
            "total": o.total,
            "failed": o.failures.len(),
            "explained": explained,
            "unexplained": o.failures.len() as u64 - explained,
            "failed_by_error": by_error,
        },
        "faults": {
            "counts": counts,
            "list": o.faults.iter().map(|x| json!({"kind": x.kind, "target": x.target, "start_s": round1(x.start), "end_s": round1(x.end)})).collect::<Vec<_>>(),
        },
        "failures": listed,
        "processes": processes,
        "end_state": o.end_state,
    })
}

fn markdown(r: &Value) -> String {
    let mut md = format!(
        "# Soak, {} ({})\n\nCommand: `{}`\n\nExplained: a failed page load that overlaps a pod kill or a \
         control-plane restart (kill until registered again / answering) or the {} s after it. \
         RSS flat: second-half slope below {FLAT_RSS_SLOPE_MB} MB/10 min and the end within \
         {FLAT_RSS_END_MB} MB of the value after warm-up (the first 10 % of the run); fds flat: \
         the end at most {FLAT_FDS_END} above the value after warm-up. Judged on processes that \
         lived from warm-up to the end, in runs of 5 minutes or more (a killed pod's sidecar, the \
         restarted control plane and the smoke mode: n/a).\n",
        r["date"].as_str().unwrap_or_default(),
        r["mode"].as_str().unwrap_or_default(),
        r["command"].as_str().unwrap_or_default(),
        EXPLAINED_AFTER.as_secs(),
    );
    for p in r["planes"].as_array().into_iter().flatten() {
        let q = &p["requests"];
        md.push_str(&format!(
            "\n## {} ({} s)\n\nRequests: {} total, {} failed: {} explained, {} unexplained. Faults: {}.\n",
            p["proxy"].as_str().unwrap_or_default(),
            p["length_s"],
            q["total"],
            q["failed"],
            q["explained"],
            q["unexplained"],
            p["faults"]["counts"]
                .as_object()
                .map(|c| c
                    .iter()
                    .map(|(k, v)| format!("{v} {k}"))
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default(),
        ));
        let show = |v: &Value| match v {
            Value::Null => "n/a".to_string(),
            Value::Bool(true) => "yes".to_string(),
            Value::Bool(false) => "**NO**".to_string(),
            other => other.to_string(),
        };
        md.push_str(
            "\n| process | instances | RSS MB start / warm / end / max | RSS slope MB/10 min | RSS flat | fds start / warm / end / max | fds flat |\n|---|---|---|---|---|---|---|\n",
        );
        for (label, proc_) in p["processes"].as_object().into_iter().flatten() {
            let s = &proc_["summary"];
            let (m, f) = (&s["rss_mb"], &s["fds"]);
            md.push_str(&format!(
                "| {label} | {} | {} / {} / {} / {} | {} | {} | {} / {} / {} / {} | {} |\n",
                s["instances"],
                show(&m["start"]),
                show(&m["after_warmup"]),
                show(&m["end"]),
                show(&m["max"]),
                show(&m["slope_per_10min_second_half"]),
                show(&m["flat"]),
                show(&f["start"]),
                show(&f["after_warmup"]),
                show(&f["end"]),
                show(&f["max"]),
                show(&f["flat"]),
            ));
        }
        let unexplained: Vec<&Value> = p["failures"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|f| f["explained"] == false)
            .collect();
        if !unexplained.is_empty() {
            md.push_str("\nUnexplained failures (start s, error, nearest fault):\n\n");
            for f in unexplained.iter().take(50) {
                md.push_str(&format!(
                    "- {} s: {} (nearest: {})\n",
                    f["start_s"], f["error"], f["fault"]
                ));
            }
        }
    }
    md
}

fn utc(format: &str) -> String {
    let out = Command::new("date").args(["-u", format]).output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn soak_bookinfo_under_faults() {
    let minutes: Option<f64> = std::env::var("STRAIT_SOAK_MINUTES").ok().map(|m| {
        m.parse()
            .unwrap_or_else(|_| panic!("STRAIT_SOAK_MINUTES={m}: expected a number of minutes"))
    });
    let planes: Vec<(&'static str, &str)> = match std::env::var("STRAIT_SOAK_PROXY")
        .unwrap_or_else(|_| "both".into())
        .as_str()
    {
        "strait" => vec![("strait", "127.0.212.1")],
        "envoy" => vec![("envoy", "127.0.212.2")],
        "both" => vec![("strait", "127.0.212.1"), ("envoy", "127.0.212.2")],
        other => panic!("STRAIT_SOAK_PROXY={other}: expected strait, envoy or both"),
    };
    let schedule = minutes.map_or_else(Schedule::smoke, Schedule::long);
    let _pods = require_platform();
    for (bin, package) in [
        ("bookinfo", "strait-bookinfo"),
        ("strait-proxy", "strait-proxy-bin"),
    ] {
        let path = Path::new(support::strait()).with_file_name(bin);
        assert!(
            path.is_file(),
            "{} is missing: build it first with `cargo build -p {package} --bins`",
            path.display()
        );
    }
    let began = Instant::now();
    let mut reports = Vec::new();
    for &(proxy, listen) in &planes {
        let o = soak(proxy, listen, schedule);
        eprintln!(
            "{proxy}: {} page loads, {} failed, {} faults",
            o.total,
            o.failures.len(),
            o.faults.len()
        );
        reports.push(report(&o));
    }
    let mode = match minutes {
        Some(m) => format!("{m} min per data plane"),
        None => "smoke".to_string(),
    };
    let command = std::env::var("STRAIT_SOAK_COMMAND")
        .unwrap_or_else(|_| "cargo test -p strait-e2e --test soak".into());
    let all = json!({
        "date": utc("+%Y-%m-%dT%H:%M:%SZ"),
        "mode": mode,
        "command": command,
        "explained_after_s": EXPLAINED_AFTER.as_secs(),
        "flat": {"rss_slope_mb_per_10min_below": FLAT_RSS_SLOPE_MB, "rss_end_within_mb": FLAT_RSS_END_MB, "fds_end_above_at_most": FLAT_FDS_END, "warmup_fraction": 0.1},
        "planes": reports,
    });
    let (dir, _tmp) = match std::env::var_os("STRAIT_SOAK_RESULTS") {
        Some(d) => (PathBuf::from(d), None),
        None => {
            let t = tempfile::tempdir().unwrap();
            (t.path().to_path_buf(), Some(t))
        }
    };
    std::fs::create_dir_all(&dir).unwrap();
    let planes_name = match planes.as_slice() {
        [(p, _)] => p.to_string(),
        _ => "both".into(),
    };
    let stem = match minutes {
        Some(m) => format!("{}-soak-{m}min-{planes_name}", utc("+%Y-%m-%d")),
        None => format!("{}-soak-smoke-{planes_name}", utc("+%Y-%m-%d")),
    };
    let json_path = dir.join(format!("{stem}.json"));
    std::fs::write(&json_path, serde_json::to_string_pretty(&all).unwrap()).unwrap();
    let md = markdown(&all);
    std::fs::write(dir.join(format!("{stem}.md")), &md).unwrap();
    eprintln!(
        "{md}\nreport: {} (took {:?})",
        json_path.display(),
        began.elapsed()
    );

    // What the report must show.
    for p in all["planes"].as_array().unwrap() {
        let proxy = p["proxy"].as_str().unwrap();
        let q = &p["requests"];
        assert!(
            q["total"].as_u64().unwrap() as f64 >= p["length_s"].as_f64().unwrap() * 2.0,
            "{proxy}: too few page loads for the time: {q}"
        );
        assert_eq!(
            q["unexplained"], 0,
            "{proxy}: page loads failed that no fault explains: {}",
            p["failures"]
        );
        for kind in [
            "config-change",
            "pod-app-kill",
            "pod-run-kill",
            "control-plane-restart",
        ] {
            assert!(
                p["faults"]["counts"][kind].as_u64().unwrap_or(0) >= 1,
                "{proxy}: no {kind} happened: {}",
                p["faults"]["counts"]
            );
        }
        let procs = p["processes"].as_object().unwrap();
        let mut expected: Vec<String> = WORKLOADS
            .iter()
            .map(|w| format!("{} sidecar", w.0))
            .collect();
        expected.extend(["gateway".to_string(), "control-plane".to_string()]);
        for label in &expected {
            let s = &procs
                .get(label)
                .unwrap_or_else(|| panic!("{proxy}: no samples of {label}: {:?}", procs.keys()))["summary"];
            assert!(
                s["rss_mb"]["end"].as_f64().unwrap() > 1.0,
                "{proxy} {label}: {s}"
            );
            assert!(
                s["fds"]["end"].as_u64().unwrap() > 2,
                "{proxy} {label}: {s}"
            );
        }
        // The killed pods' sidecars were sampled again after their restarts.
        for name in ["reviews-v2", "details-v1"] {
            let s = &procs[&format!("{name} sidecar")]["summary"];
            assert!(s["instances"].as_u64().unwrap() >= 2, "{proxy} {name}: {s}");
        }
        if minutes.is_some() {
            for (label, proc_) in procs {
                for what in ["rss_mb", "fds"] {
                    assert_ne!(
                        proc_["summary"][what]["flat"], false,
                        "{proxy}: {label}'s {what} is not flat: {}",
                        proc_["summary"]
                    );
                }
            }
        }
    }
}
