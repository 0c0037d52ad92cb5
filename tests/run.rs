//! `strait run` on the local platform, end to end: pods in network namespaces with Istio's
//! capture rules (Envoy and strait-proxy sidecars), and pods on loopback without capture, each
//! app on an address of its own. These tests need
//! root, iproute2, iptables, setpriv, python3 and Envoy; they fail (never skip) without them.

use strait_e2e as support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::ControlPlane;
use support::platform::{
    Run, require_platform, run_dir, start, strait_proxy_built, wait_workload_entry, workload_entry,
};

/// The pod's state file (`/run/strait/pods/NAME.NS.json`).
fn pod_record(name: &str) -> Value {
    let path = run_dir().join(format!("{name}.default.json"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!("{}: {e}", path.display());
    }))
    .unwrap()
}

fn pids(record: &Value) -> Vec<u32> {
    record["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pid"].as_u64().unwrap() as u32)
        .chain([record["owner"]["pid"].as_u64().unwrap() as u32])
        .collect()
}

fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

fn tool(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(out.status.success(), "{cmd} {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// Nothing of pod `name` is left: namespace, veth, hosts folder, state file, processes,
/// WorkloadEntry.
fn assert_gone(cp: &ControlPlane, name: &str, record: &Value) {
    let netns = record["netns"].as_str().map(str::to_string);
    let deadline = Instant::now() + Duration::from_secs(10);
    let leftovers = loop {
        let mut left = Vec::new();
        if let Some(ns) = &netns {
            if tool("ip", &["netns", "list"]).contains(ns.as_str()) {
                left.push(format!("network namespace {ns}"));
            }
            if Path::new("/etc/netns").join(ns).exists() {
                left.push(format!("/etc/netns/{ns}"));
            }
        }
        if let Some(veth) = record["veth"].as_str()
            && tool("ip", &["-o", "link", "show"]).contains(veth)
        {
            left.push(format!("veth {veth}"));
        }
        if run_dir().join(format!("{name}.default.json")).exists() {
            left.push("its state file".into());
        }
        if run_dir().join(format!("{name}.default.d")).exists() {
            left.push("its files folder".into());
        }
        for pid in pids(record) {
            if running(pid) {
                left.push(format!("process {pid}"));
            }
        }
        if workload_entry(cp, "default", name).is_some() {
            left.push(format!("WorkloadEntry {name}"));
        }
        if left.is_empty() || Instant::now() > deadline {
            break left;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        leftovers.is_empty(),
        "pod {name} left behind: {leftovers:?}"
    );
}

/// The sum of a counter in `/stats/prometheus` at `admin` (Envoy's names, which strait-proxy
/// uses too) over the series whose labels include every one of `labels`.
fn prometheus_stat(admin: &str, metric: &str, labels: &[&str]) -> u64 {
    let (code, body) = support::http(admin, "GET", "/stats/prometheus", None, None);
    assert_eq!(code, 200, "{admin}/stats/prometheus: {body}");
    body.lines()
        .filter_map(|l| l.strip_prefix(metric)?.strip_prefix('{'))
        .filter_map(|l| l.rsplit_once("} "))
        .filter(|(series, _)| labels.iter().all(|want| series.contains(want)))
        .filter_map(|(_, value)| value.trim().parse::<u64>().ok())
        .sum()
}

/// An Envoy admin stat (`/stats` line `name: value`) at `admin`.
fn envoy_stat(admin: &str, name: &str) -> u64 {
    let (code, body) = support::http(admin, "GET", "/stats", None, None);
    assert_eq!(code, 200, "{admin}/stats: {body}");
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// A web server pod with iptables capture: Python's http.server on port 8000, serving `root`.
fn web_pod(
    cp: &ControlPlane,
    root: &Path,
    name: &str,
    labels: &str,
    proxy: &str,
    more: &[&str],
) -> Run {
    let mut args = vec!["run", "--name", name, "--labels", labels];
    args.extend_from_slice(more);
    args.extend([
        "--port",
        "http:8000",
        "--capture",
        "iptables",
        "--proxy",
        proxy,
        "--",
        "python3",
        "-m",
        "http.server",
        "8000",
    ]);
    start(cp, &args, root)
}

/// The client app: requests to `http://web:PORT/` (unless `BY_NAME=0`), then straight to
/// `DIRECT`'s address, each until it answers (at most 60 tries); prints what it got and how many
/// connections it opened, then `DONE`, then waits to be stopped.
const CLIENT: &str = r#"
import os, sys, time, urllib.request
port = os.environ["WEB_PORT"]
def get(url):
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return r.status, r.read().decode().strip()
    except Exception as e:
        return 0, repr(e)
def until_ok(url):
    attempts = 0
    for _ in range(60):
        attempts += 1
        status, body = get(url)
        print("TRY", url, status, body[:100], flush=True)
        if status == 200:
            break
        time.sleep(0.5)
    return attempts, status, body
connections = 0
if os.environ.get("BY_NAME", "1") == "1":
    attempts, status, body = until_ok("http://web:%s/" % port)
    connections += attempts
    print("SERVICE", status, body, flush=True)
direct = os.environ.get("DIRECT")
if direct:
    attempts, status, body = until_ok("http://%s:%s/" % (direct, port))
    connections += attempts
    print("DIRECT", status, body, flush=True)
print("CONNECTIONS", connections, flush=True)
print("DONE", flush=True)
time.sleep(600)
"#;

fn field<'a>(lines: &'a [String], key: &str) -> &'a str {
    lines
        .iter()
        .find_map(|l| l.strip_prefix(&format!("{key} ")))
        .unwrap_or_else(|| panic!("no {key} line in {lines:?}"))
}

fn web_root(token: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("index.html"), format!("{token}\n")).unwrap();
    dir
}

fn service(cp: &ControlPlane, dir: &Path, port: u16) {
    service_named(cp, dir, "web", port);
}

/// A Service `name` selecting `app: name`, port `http` `port`.
fn service_named(cp: &ControlPlane, dir: &Path, name: &str, port: u16) {
    let path = dir.join(format!("svc-{name}.yaml"));
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  selector: {{app: {name}}}\n  ports:\n  - {{name: http, port: {port}}}\n"
        ),
    )
    .unwrap();
    cp.ok(&["apply", "-f", path.to_str().unwrap()]);
}

#[test]
fn pods_with_iptables_capture_reach_services_by_name_and_cannot_bypass_their_sidecar() {
    iptables_capture("envoy");
}

#[test]
fn pods_with_iptables_capture_reach_services_by_name_and_cannot_bypass_their_sidecar_strait() {
    iptables_capture("strait");
}

fn iptables_capture(proxy: &str) {
    let _one = require_platform();
    let cp = ControlPlane::start_with(&["--xds-addr", "0.0.0.0:0", "--tls-addr", "0.0.0.0:0"]);
    let id = std::process::id();
    let (web, client) = (format!("web-{proxy}-{id}"), format!("client-{proxy}-{id}"));
    let token = format!("hello from web {id}");
    let root = web_root(&token);
    service(&cp, root.path(), 8000);

    let mut server = web_pod(
        &cp,
        root.path(),
        &web,
        "app=web,version=v1",
        proxy,
        &["--service-account", "web-sa"],
    );
    // Registered while it runs: address from the pod range, labels, account, ports.
    let we = wait_workload_entry(&cp, &mut server, "default", &web);
    let web_ip = we["spec"]["address"].as_str().unwrap().to_string();
    assert!(web_ip.starts_with("10.44."), "{we}");
    assert_eq!(we["spec"]["labels"]["app"], "web");
    assert_eq!(we["spec"]["labels"]["version"], "v1");
    assert_eq!(we["spec"]["serviceAccount"], "web-sa");
    assert_eq!(we["spec"]["ports"]["http"], 8000);
    let web_record = pod_record(&web);
    let web_ns = web_record["netns"].as_str().unwrap().to_string();
    // Istio's rules are in the pod's namespace.
    let rules = tool(
        "ip",
        &["netns", "exec", &web_ns, "iptables-save", "-t", "nat"],
    );
    for rule in [
        "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
        "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
        "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN",
    ] {
        assert!(rules.contains(rule), "missing {rule:?} in:\n{rules}");
    }

    let web_admin = format!("{web_ip}:15000");
    let mut client_run = start(
        &cp,
        &[
            "run",
            "--name",
            &client,
            "--labels",
            "app=client",
            "--capture",
            "iptables",
            "--proxy",
            proxy,
            "--",
            "env",
            "WEB_PORT=8000",
            &format!("DIRECT={web_ip}"),
            "python3",
            "-c",
            CLIENT,
        ],
        root.path(),
    );
    let lines = client_run.read_until("DONE", Duration::from_secs(90));
    // By name, through the service's virtual IP in the pod's hosts file.
    assert_eq!(
        field(&lines, "SERVICE"),
        format!("200 {token}"),
        "{lines:?}"
    );
    let connections: u64 = field(&lines, "CONNECTIONS").parse().unwrap();
    // Straight to the server pod's address: still through both sidecars.
    assert_eq!(field(&lines, "DIRECT"), format!("200 {token}"), "{lines:?}");

    let client_record = pod_record(&client);
    // A service made while the pod runs joins its hosts file.
    service_named(&cp, root.path(), "late", 9090);
    let hosts = Path::new("/etc/netns")
        .join(client_record["netns"].as_str().unwrap())
        .join("hosts");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&hosts).unwrap_or_default();
        if text.contains("\tlate late.default late.default.svc late.default.svc.cluster.local\n") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new service is not in the pod's hosts file after 10 s:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let client_admin = format!("{}:15000", client_record["ip"].as_str().unwrap());
    // Every connection the app opened went through the client's sidecar (virtualOutbound hands
    // it to the listener of its original port, 8000), and only those: the sidecar's own
    // connections (xDS, and upstream to port 8000) were not captured again.
    let outbound = prometheus_stat(
        &client_admin,
        "envoy_listener_downstream_cx_total",
        &["envoy_listener_address=\"0.0.0.0_8000\""],
    );
    assert_eq!(
        outbound, connections,
        "the client sidecar's port 8000 listener accepted {outbound} connections; the app opened {connections}"
    );
    // The direct one left the client's sidecar as passthrough...
    assert!(
        prometheus_stat(
            &client_admin,
            "envoy_cluster_upstream_rq_total",
            &["envoy_cluster_name=\"PassthroughCluster\""]
        ) >= 1,
        "{proxy}: the direct connection did not go through the client's sidecar"
    );
    // ...and both arrived through the server's sidecar (virtualInbound to the app).
    let inbound = prometheus_stat(
        &web_admin,
        "envoy_listener_downstream_cx_total",
        &["envoy_listener_address=\"0.0.0.0_15006\""],
    );
    assert!(
        inbound >= 2,
        "{proxy}: {inbound} connections through virtualInbound"
    );
    let answered = prometheus_stat(
        &web_admin,
        "envoy_cluster_upstream_rq_xx",
        &[
            "envoy_response_code_class=\"2\"",
            "envoy_cluster_name=\"inbound|8000||\"",
        ],
    );
    assert!(answered >= 2, "{proxy}: {answered} 2xx from the app");

    // Ctrl-C / SIGTERM stops app and sidecar; nothing is left.
    client_run.stop();
    assert_gone(&cp, &client, &client_record);
    server.stop();
    assert_gone(&cp, &web, &web_record);

    // kill -9 of strait run: the next run removes what it left.
    let mut server = web_pod(&cp, root.path(), &web, "app=web", proxy, &[]);
    wait_workload_entry(&cp, &mut server, "default", &web);
    let killed = pod_record(&web);
    server.signal("-KILL");
    server.wait(Duration::from_secs(5));
    assert!(
        workload_entry(&cp, "default", &web).is_some(),
        "the WorkloadEntry of a killed run stays until the next run"
    );
    let mut next = start(
        &cp,
        &[
            "run",
            "--name",
            &client,
            "--labels",
            "app=client",
            "--capture",
            "iptables",
            "--proxy",
            proxy,
            "--",
            "true",
        ],
        root.path(),
    );
    let status = next.wait(Duration::from_secs(90));
    assert!(status.success(), "{status}: {}", next.stderr());
    assert!(
        next.stderr()
            .contains(&format!("removed pod {web}.default")),
        "{}",
        next.stderr()
    );
    assert_gone(&cp, &web, &killed);
    let rules_left = tool("ip", &["netns", "list"]);
    assert!(
        !rules_left.contains(&format!("strait-{client}")),
        "{rules_left}"
    );
}

#[test]
fn pods_without_capture_use_their_sidecar_as_http_proxy() {
    let _one = require_platform();
    strait_proxy_built();
    let cp = ControlPlane::start();
    let id = std::process::id();
    let (web, client) = (format!("nweb-{id}"), format!("nclient-{id}"));
    let port = strait_testsupport::free_port();
    let token = format!("loopback web {id}");
    let root = web_root(&token);
    service(&cp, root.path(), port);
    let port_text = port.to_string();
    let http_port = format!("http:{port}");
    let mut server = start(
        &cp,
        &[
            "run",
            "--name",
            &web,
            "--labels",
            "app=web",
            "--port",
            &http_port,
            "--capture",
            "none",
            "--proxy",
            "envoy",
            "--",
            "sh",
            "-c",
            &format!(
                "echo APP_ADDRESS $STRAIT_APP_ADDRESS; echo APP_STARTED; exec python3 -u -m http.server {port_text} --bind \"$STRAIT_APP_ADDRESS\""
            ),
        ],
        root.path(),
    );
    let we = wait_workload_entry(&cp, &mut server, "default", &web);
    let web_ip = we["spec"]["address"].as_str().unwrap().to_string();
    assert!(web_ip.starts_with("127.44."), "{we}");
    let web_record = pod_record(&web);
    assert!(web_record["netns"].is_null());
    // The app has an address of its own beside its sidecar's (127.45.x.y for 127.44.x.y): its
    // sidecar serves the workload's port on the pod's address and passes requests on to it.
    let lines = server.read_until("APP_STARTED", Duration::from_secs(30));
    let app_address = web_ip.replacen("127.44.", "127.45.", 1);
    assert_eq!(lines[0], format!("APP_ADDRESS {app_address}"), "{lines:?}");

    for proxy in ["envoy", "strait"] {
        let name = format!("{client}-{proxy}");
        let mut client_run = start(
            &cp,
            &[
                "run",
                "--name",
                &name,
                "--labels",
                "app=client",
                "--capture",
                "none",
                "--proxy",
                proxy,
                "--",
                "env",
                &format!("WEB_PORT={port}"),
                "python3",
                "-c",
                CLIENT,
            ],
            root.path(),
        );
        let lines = client_run.read_until("DONE", Duration::from_secs(90));
        assert_eq!(
            field(&lines, "SERVICE"),
            format!("200 {token}"),
            "{proxy}: {lines:?}"
        );
        let record = pod_record(&name);
        client_run.stop();
        assert_gone(&cp, &name, &record);
    }
    // The request arrived through the server's sidecar inbound listener.
    let stat = format!("cluster.inbound|{port}||.upstream_rq_200");
    assert!(envoy_stat(&format!("{web_ip}:15000"), &stat) >= 2, "{stat}");
    server.stop();
    assert_gone(&cp, &web, &web_record);
    // The app exiting stops the run (the sidecar drains and goes), with the app's exit status.
    let short = format!("short-{id}");
    let mut run = start(
        &cp,
        &[
            "run",
            "--name",
            &short,
            "--capture",
            "none",
            "--proxy",
            "envoy",
            "--",
            "sh",
            "-c",
            "echo started; sleep 1; exit 3",
        ],
        root.path(),
    );
    run.read_until("started", Duration::from_secs(60));
    let record = pod_record(&short);
    let status = run.wait(Duration::from_secs(30));
    assert_eq!(status.code(), Some(3), "{}", run.stderr());
    assert_gone(&cp, &short, &record);
}

#[test]
fn gateways_are_selected_by_labels_and_reach_pods() {
    let _one = require_platform();
    strait_proxy_built();
    let cp = ControlPlane::start_with(&["--xds-addr", "0.0.0.0:0", "--tls-addr", "0.0.0.0:0"]);
    let id = std::process::id();
    let web = format!("gweb-{id}");
    let token = format!("through the gateway {id}");
    let root = web_root(&token);
    service(&cp, root.path(), 8000);
    let mut server = web_pod(&cp, root.path(), &web, "app=web", "envoy", &[]);
    wait_workload_entry(&cp, &mut server, "default", &web);
    let web_record = pod_record(&web);
    // Istio's bookinfo-gateway shape: the selector `istio: ingressgateway`, unchanged.
    let listen = strait_testsupport::free_loopback_addr();
    let gw_yaml = root.path().join("gateway.yaml");
    std::fs::write(
        &gw_yaml,
        format!(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: web-gateway}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: {port}, name: http, protocol: HTTP}}\n    hosts: ['*']\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: web}}\nspec:\n  hosts: ['*']\n  gateways: [web-gateway]\n  http:\n  - route:\n    - destination: {{host: web, port: {{number: 8000}}}}\n",
            port = listen.port()
        ),
    )
    .unwrap();
    cp.ok(&["apply", "-f", gw_yaml.to_str().unwrap()]);
    for proxy in ["envoy", "strait"] {
        let name = format!("ingress-{proxy}-{id}");
        let ip = listen.ip().to_string();
        let mut gw = start(
            &cp,
            &[
                "gateway",
                "--name",
                &name,
                "--namespace",
                "default",
                "--listen",
                &ip,
                "--proxy",
                proxy,
            ],
            root.path(),
        );
        let we = wait_workload_entry(&cp, &mut gw, "default", &name);
        assert_eq!(we["spec"]["labels"]["istio"], "ingressgateway");
        let record = pod_record(&name);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let reply = std::net::TcpStream::connect(listen)
                .ok()
                .map(|_| support::http(&listen.to_string(), "GET", "/", None, None));
            if let Some((200, body)) = &reply
                && body.trim() == token
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{proxy} gateway at {listen}: no answer from the pod in 60 s (last {reply:?}); stderr:\n{}",
                gw.stderr()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        gw.stop();
        assert_gone(&cp, &name, &record);
    }
    server.stop();
    assert_gone(&cp, &web, &web_record);
}

#[test]
fn istio_annotations_exclude_ports_from_outbound_capture() {
    let _one = require_platform();
    let cp = ControlPlane::start_with(&["--xds-addr", "0.0.0.0:0", "--tls-addr", "0.0.0.0:0"]);
    let id = std::process::id();
    let (web, client) = (format!("aweb-{id}"), format!("aclient-{id}"));
    let token = format!("excluded port {id}");
    let root = web_root(&token);
    service(&cp, root.path(), 8000);
    let mut server = web_pod(&cp, root.path(), &web, "app=web", "envoy", &[]);
    let we = wait_workload_entry(&cp, &mut server, "default", &web);
    let web_ip = we["spec"]["address"].as_str().unwrap().to_string();
    let web_record = pod_record(&web);
    // Port 8000 is excluded from the client's outbound capture: straight to the server pod, where
    // the server's own inbound capture still applies.
    let mut client_run = start(
        &cp,
        &[
            "run",
            "--name",
            &client,
            "--labels",
            "app=client",
            "--capture",
            "iptables",
            "--proxy",
            "envoy",
            "--annotation",
            "traffic.sidecar.istio.io/excludeOutboundPorts=8000",
            "--",
            "env",
            "WEB_PORT=8000",
            "BY_NAME=0",
            &format!("DIRECT={web_ip}"),
            "python3",
            "-c",
            CLIENT,
        ],
        root.path(),
    );
    let lines = client_run.read_until("DONE", Duration::from_secs(90));
    assert_eq!(field(&lines, "DIRECT"), format!("200 {token}"), "{lines:?}");
    let client_record = pod_record(&client);
    let client_ns = client_record["netns"].as_str().unwrap();
    let rules = tool(
        "ip",
        &["netns", "exec", client_ns, "iptables-save", "-t", "nat"],
    );
    assert!(
        rules.contains("-A ISTIO_OUTPUT -p tcp -m tcp --dport 8000 -j RETURN"),
        "{rules}"
    );
    let client_admin = format!("{}:15000", client_record["ip"].as_str().unwrap());
    assert_eq!(
        envoy_stat(&client_admin, "listener.0.0.0.0_8000.downstream_cx_total"),
        0,
        "the client's sidecar saw a connection to an excluded port"
    );
    assert!(
        envoy_stat(
            &format!("{web_ip}:15000"),
            "cluster.inbound|8000||.upstream_rq_200"
        ) >= 1,
        "the server's sidecar did not see the direct request"
    );
    client_run.stop();
    assert_gone(&cp, &client, &client_record);
    server.stop();
    assert_gone(&cp, &web, &web_record);
}

/// An app that answers `NAME` on port 8000 after `DELAY` seconds, like a Flask app that takes a
/// while to start. (Python's http.server looks its own name up in DNS before it listens, which
/// in a pod without DNS takes seconds of its own: this one does not.)
const SLOW_APP: &str = r#"
import http.server, os, socketserver, time
time.sleep(float(os.environ["DELAY"]))
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = os.environ["NAME"].encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
class Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    allow_reuse_address = True
    daemon_threads = True
Server(("0.0.0.0", 8000), Handler).serve_forever()
"#;

fn app_pod(cp: &ControlPlane, root: &Path, name: &str, proxy: &str, delay_s: u32) -> Run {
    start(
        cp,
        &[
            "run",
            "--name",
            name,
            "--labels",
            "app=web",
            "--port",
            "http:8000",
            "--capture",
            "iptables",
            "--proxy",
            proxy,
            "--",
            "env",
            &format!("NAME={name}"),
            &format!("DELAY={delay_s}"),
            "python3",
            "-c",
            SLOW_APP,
        ],
        root,
    )
}

#[test]
fn a_pod_gets_traffic_only_once_its_app_listens() {
    slow_app_under_load("strait");
}

#[test]
fn a_pod_gets_traffic_only_once_its_app_listens_envoy() {
    slow_app_under_load("envoy");
}

/// Two pods of one service, one of them an app that takes 10 s to listen: under steady traffic
/// through the gateway no request fails, and the slow pod gets traffic once it listens.
fn slow_app_under_load(proxy: &str) {
    let _one = require_platform();
    strait_proxy_built();
    let cp = ControlPlane::start_with(&["--xds-addr", "0.0.0.0:0", "--tls-addr", "0.0.0.0:0"]);
    let id = std::process::id();
    let root = tempfile::tempdir().unwrap();
    service(&cp, root.path(), 8000);
    let (fast, slow) = (format!("fast-{proxy}-{id}"), format!("slow-{proxy}-{id}"));
    let mut fast_run = app_pod(&cp, root.path(), &fast, proxy, 0);
    wait_workload_entry(&cp, &mut fast_run, "default", &fast);

    let listen = strait_testsupport::free_loopback_addr();
    let gw_yaml = root.path().join("gateway.yaml");
    std::fs::write(
        &gw_yaml,
        format!(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: web-gateway}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: {port}, name: http, protocol: HTTP}}\n    hosts: ['*']\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: web}}\nspec:\n  hosts: ['*']\n  gateways: [web-gateway]\n  http:\n  - route:\n    - destination: {{host: web, port: {{number: 8000}}}}\n    retries: {{attempts: 0}}\n",
            port = listen.port()
        ),
    )
    .unwrap();
    cp.ok(&["apply", "-f", gw_yaml.to_str().unwrap()]);
    let gw_name = format!("ingress-{proxy}-{id}");
    let mut gw = start(
        &cp,
        &[
            "gateway",
            "--name",
            &gw_name,
            "--namespace",
            "default",
            "--listen",
            &listen.ip().to_string(),
            "--proxy",
            proxy,
        ],
        root.path(),
    );
    wait_workload_entry(&cp, &mut gw, "default", &gw_name);
    let get = || {
        std::net::TcpStream::connect(listen)
            .ok()
            .map(|_| support::http(&listen.to_string(), "GET", "/", None, None))
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((200, body)) = get()
            && body.trim() == fast
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway does not reach {fast} within 60 s; stderr:\n{}",
            gw.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Steady traffic while the slow pod starts: every request must succeed (no retries in the
    // route, so a request sent to a pod that does not listen yet would fail).
    let started = Instant::now();
    let mut slow_run = app_pod(&cp, root.path(), &slow, proxy, 10);
    let mut answers: Vec<(Duration, u16, String)> = Vec::new();
    let mut registered_at = None;
    while started.elapsed() < Duration::from_secs(20)
        || !answers.iter().any(|(_, _, body)| body.trim() == slow)
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{slow} got no traffic within 60 s; its strait run's stderr:\n{}",
            slow_run.stderr()
        );
        let (status, body) = get().unwrap_or((0, "no connection".to_string()));
        answers.push((started.elapsed(), status, body));
        if registered_at.is_none() && workload_entry(&cp, "default", &slow).is_some() {
            registered_at = Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let failed: Vec<_> = answers.iter().filter(|(_, s, _)| *s != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed while {slow} started: {:?}",
        failed.len(),
        answers.len(),
        &failed[..failed.len().min(5)]
    );
    // Registered only once its app listened (10 s after start, give or take the start-up).
    let registered_at = registered_at.expect("the slow pod was registered");
    assert!(
        registered_at >= Duration::from_secs(9),
        "{slow} was registered {registered_at:?} after start, before its app listened"
    );
    let first_slow = answers
        .iter()
        .find(|(_, _, b)| b.trim() == slow)
        .map(|(t, _, _)| *t)
        .expect("checked above");
    assert!(first_slow >= registered_at.saturating_sub(Duration::from_millis(500)));
    eprintln!(
        "{proxy}: {} requests, none failed; {slow} registered after {registered_at:?}, first answered after {first_slow:?}",
        answers.len()
    );
    gw.stop();
    slow_run.stop();
    fast_run.stop();
}
