//! `strait demo` end to end: the whole Bookinfo mesh with its ingress gateway, and Istio's tasks
//! through the gateway with Istio's own sample YAML applied unchanged: request routing, fault
//! injection and traffic shifting; then Ctrl-C leaves nothing behind. One demo per data plane
//! and capture mode (iptables: pods in network namespaces; none: pods on loopback addresses,
//! the apps using their sidecars as HTTP proxies), the tasks in sequence. These tests need root,
//! iproute2, iptables, setpriv, the `bookinfo` and `strait-proxy` binaries beside `strait`, and
//! Envoy; they fail (never skip) without them.

use strait_e2e as support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::metric_sum;
use support::process::Spawned;

const REVIEWS_UNAVAILABLE: &str = "Sorry, product reviews are currently unavailable for this book.";
const RATINGS_UNAVAILABLE: &str = "Ratings service is currently unavailable";
const PODS: [&str; 7] = [
    "details-v1.default",
    "ratings-v1.default",
    "reviews-v1.default",
    "reviews-v2.default",
    "reviews-v3.default",
    "productpage-v1.default",
    "istio-ingressgateway.istio-system",
];

fn networking(file: &str) -> String {
    let path = support::testdata()
        .join("istio-samples/bookinfo/networking")
        .join(file);
    assert!(path.is_file(), "{} is missing", path.display());
    path.display().to_string()
}

/// A running `strait demo`: its stdout lines, its stderr in a file; Ctrl-C when dropped.
fn start_demo(proxy: &str, capture: &str, listen: &str) -> Spawned {
    let mut cmd = Command::new(support::strait());
    if proxy == "envoy" {
        cmd.env("ENVOY_BIN", strait_testsupport::envoy_bin());
    }
    cmd.args([
        "demo",
        "--proxy",
        proxy,
        "--capture",
        capture,
        "--listen",
        listen,
    ])
    .env_remove("STRAIT_SERVER")
    .env_remove("STRAIT_TOKEN")
    .env_remove("STRAIT_HOME")
    .env_remove("STRAIT_RUN_DIR");
    Spawned::start(cmd, "strait demo", "-INT", Duration::from_secs(60))
}

/// An HTTP/1.1 request through the gateway; (status, headers, body).
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, BTreeMap<String, String>, String) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connecting to the gateway at {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body.as_bytes()).unwrap();
    let mut resp = Vec::new();
    stream
        .read_to_end(&mut resp)
        .unwrap_or_else(|e| panic!("{method} {path} through {addr}: {e}"));
    let resp = String::from_utf8_lossy(&resp).into_owned();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let mut lines = head.lines();
    let code = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (code, headers, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// What a product page shows in its reviews.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stars {
    None,
    Black,
    Red,
    ReviewsUnavailable,
    RatingsUnavailable,
}

fn stars(page: &str) -> Stars {
    if page.contains(REVIEWS_UNAVAILABLE) {
        return Stars::ReviewsUnavailable;
    }
    if page.contains(RATINGS_UNAVAILABLE) {
        return Stars::RatingsUnavailable;
    }
    let black = page.contains("<font color=\"black\">");
    let red = page.contains("<font color=\"red\">");
    match (black, red) {
        (false, false) => Stars::None,
        (true, false) => Stars::Black,
        (false, true) => Stars::Red,
        (true, true) => panic!("black and red stars on one page:\n{page}"),
    }
}

/// A client of the product page through the gateway, signed in or not.
struct Browser {
    gateway: SocketAddr,
    cookie: Option<String>,
}

impl Browser {
    fn anonymous(gateway: SocketAddr) -> Browser {
        Browser {
            gateway,
            cookie: None,
        }
    }

    /// Signs in as `user` through the page's form; keeps the cookie it sets.
    fn login(gateway: SocketAddr, user: &str) -> Browser {
        let (code, headers, body) = request(
            gateway,
            "POST",
            "/login",
            &[("Content-Type", "application/x-www-form-urlencoded")],
            &format!("username={user}"),
        );
        assert!(
            (300..400).contains(&code),
            "POST /login: {code} {headers:?} {body}"
        );
        let cookie = headers
            .get("set-cookie")
            .unwrap_or_else(|| panic!("POST /login set no cookie: {headers:?}"));
        let cookie = cookie.split(';').next().unwrap().trim().to_string();
        assert_eq!(cookie, format!("user={user}"));
        Browser {
            gateway,
            cookie: Some(cookie),
        }
    }

    fn page(&self) -> String {
        let headers: Vec<(&str, &str)> = self
            .cookie
            .as_deref()
            .map(|c| vec![("Cookie", c)])
            .unwrap_or_default();
        let (code, _, body) = request(self.gateway, "GET", "/productpage", &headers, "");
        assert_eq!(code, 200, "GET /productpage through the gateway: {body}");
        assert!(
            body.contains("<h4>Book Details</h4>"),
            "the page lacks the book's details:\n{body}"
        );
        if let Some(c) = &self.cookie {
            let user = c.trim_start_matches("user=");
            assert!(body.contains(user), "the page does not greet {user}");
        }
        body
    }

    fn stars(&self) -> Stars {
        stars(&self.page())
    }

    /// Loads the page until it shows `want` (the new config has reached the proxies), within
    /// `timeout`.
    fn until(&self, want: Stars, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let got = self.stars();
            if got == want {
                return;
            }
            seen.push(got);
            assert!(
                Instant::now() < deadline,
                "{}: the page did not show {want:?} within {timeout:?}; it showed {seen:?}",
                self.who()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `n` page loads all show `want`.
    fn always(&self, want: Stars, n: usize) {
        for i in 0..n {
            let got = self.stars();
            assert_eq!(got, want, "{}: page load {i} of {n}", self.who());
        }
    }

    fn who(&self) -> String {
        self.cookie
            .as_deref()
            .map_or("anonymous".into(), |c| c.trim_start_matches("user=").into())
    }
}

/// Applies one of Istio's Bookinfo samples, unchanged, to the demo's control plane.
fn apply(strait_home: &str, file: &str) {
    apply_path(strait_home, Path::new(&networking(file)));
}

/// (pid, start time, ppid) of every process.
fn processes() -> Vec<(u32, u64, u32)> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let rest = &stat[stat.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            if f[0] == "Z" {
                return None;
            }
            Some((pid, f.get(19)?.parse().ok()?, f.get(1)?.parse().ok()?))
        })
        .collect()
}

/// Every process under `root`: (pid, start time).
fn descendants(root: u32) -> BTreeSet<(u32, u64)> {
    let all = processes();
    let mut found = BTreeSet::new();
    let mut parents = vec![root];
    while let Some(p) = parents.pop() {
        for (pid, start, ppid) in &all {
            if *ppid == p && found.insert((*pid, *start)) {
                parents.push(*pid);
            }
        }
    }
    found
}

fn run_dir() -> PathBuf {
    PathBuf::from("/run/strait/pods")
}

fn pod_record(name: &str) -> Value {
    let path = run_dir().join(format!("{name}.json"));
    serde_json::from_str(
        &std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap()
}

fn tool(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(out.status.success(), "{cmd} {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// Applies a file of Istio's task YAML (`istio-samples/tasks/...`), unchanged.
fn apply_task(strait_home: &str, file: &str) {
    let path = support::testdata().join("istio-samples/tasks").join(file);
    assert!(path.is_file(), "{} is missing", path.display());
    apply_path(strait_home, &path);
}

/// Applies YAML written here (not one of Istio's files).
fn apply_text(strait_home: &str, name: &str, yaml: &str) {
    let file = std::env::temp_dir().join(format!("strait-demo-{}-{name}", std::process::id()));
    std::fs::write(&file, yaml).unwrap();
    apply_path(strait_home, &file);
    let _ = std::fs::remove_file(&file);
}

fn apply_path(strait_home: &str, path: &Path) {
    let out = Command::new(support::strait())
        .args(["apply", "-f"])
        .arg(path)
        .env("STRAIT_HOME", strait_home)
        .env_remove("STRAIT_SERVER")
        .env_remove("STRAIT_TOKEN")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "strait apply -f {}: {}{}",
        path.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// More pods in the demo's mesh, as a user adds them: `strait run` with the demo's control
/// plane, data plane and capture mode.
struct PodMesh {
    home: String,
    proxy: &'static str,
    capture: &'static str,
}

impl PodMesh {
    fn run(&self, name: &str, labels: &str, ports: &[&str], command: &[&str]) -> Command {
        let mut cmd = Command::new(support::strait());
        cmd.args(["run", "--name", name, "--labels", labels]).args([
            "--capture",
            self.capture,
            "--proxy",
            self.proxy,
        ]);
        for p in ports {
            cmd.args(["--port", p]);
        }
        cmd.arg("--")
            .args(command)
            .env("STRAIT_HOME", &self.home)
            .env_remove("STRAIT_SERVER")
            .env_remove("STRAIT_TOKEN")
            .env_remove("STRAIT_RUN_DIR")
            .stdin(Stdio::null());
        if self.proxy == "envoy" {
            cmd.env("ENVOY_BIN", strait_testsupport::envoy_bin());
        }
        cmd
    }

    /// Runs `sh -c SCRIPT` in a `sleep` pod (Istio's curl client) to its end: its stdout.
    fn sleep(&self, script: &str) -> String {
        let out = self
            .run("sleep", "app=sleep", &[], &["sh", "-c", script])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "strait run sleep -- sh -c {script:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

/// `curl` in a pod: prints the body, then the status code on a line of its own (000 when no
/// HTTP answer came).
fn curl(url: &str) -> String {
    format!("curl -sS -m 10 -w '\\n%{{http_code}}\\n' {url} 2>/dev/null; true")
}

/// The answers of `curl` commands in order: (status, body).
fn curl_answers(out: &str) -> Vec<(u16, String)> {
    let mut answers = Vec::new();
    let mut body = Vec::new();
    for line in out.lines() {
        match line.trim().parse::<u16>() {
            Ok(code) if line.trim().len() == 3 => {
                answers.push((code, body.join("\n").trim().to_string()));
                body.clear();
            }
            _ => body.push(line),
        }
    }
    answers
}

/// A stand-in for httpbin in a pod: Python's http.server on port 80 (its access log on
/// stderr), answering `/headers` with `httpbin VERSION`; stopped (SIGTERM) when dropped.
struct Httpbin {
    run: Spawned,
    _dir: tempfile::TempDir,
}

impl Httpbin {
    fn start(mesh: &PodMesh, version: &str) -> Httpbin {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("headers"), format!("httpbin {version}\n")).unwrap();
        let script = format!(
            "exec python3 -u -m http.server 80 --bind \"${{STRAIT_APP_ADDRESS:-0.0.0.0}}\" --directory {}",
            dir.path().display()
        );
        let name = format!("httpbin-{version}");
        let cmd = mesh.run(
            &name,
            &format!("app=httpbin,version={version}"),
            &["http:80"],
            &["sh", "-c", &script],
        );
        Httpbin {
            run: Spawned::start(
                cmd,
                &format!("strait run {name}"),
                "-TERM",
                Duration::from_secs(20),
            ),
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        self.run.stderr()
    }

    fn gets(&self, path: &str) -> usize {
        self.log()
            .matches(&format!("\"GET {path} HTTP/1.1\""))
            .count()
    }

    fn stop(mut self) {
        let status = self.run.stop();
        assert!(
            // `strait run` stopped by a signal exits 130, having stopped its app.
            status.code() == Some(130),
            "strait run httpbin: {status}\n{}",
            self.log()
        );
    }
}

/// Istio's mirroring task: httpbin v1 and v2 behind one Service; all traffic to v1, then
/// mirrored to v2 as well: the client still gets v1's answers, and v2 sees the copies.
fn mirroring(mesh: &PodMesh, proxy: &str) {
    // The task's workloads file, unchanged: its Service, and its Deployments, which Strait
    // stores but does not run: their pods are started here with `strait run`.
    apply_task(&mesh.home, "mirroring/mirroring-workloads.yaml");
    let v1 = Httpbin::start(mesh, "v1");
    let v2 = Httpbin::start(mesh, "v2");
    apply_task(&mesh.home, "mirroring/mirroring-default-route.yaml");
    // Until both pods are up and routed: v1 answers.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = mesh.sleep(&curl("http://httpbin:8000/headers"));
        if curl_answers(&out)
            .first()
            .is_some_and(|(code, body)| *code == 200 && body == "httpbin v1")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{proxy}: httpbin v1 did not answer through the mesh within 30 s: {out:?}\nv1: {}\nv2: {}",
            v1.log(),
            v2.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(
        v2.gets("/headers"),
        0,
        "{proxy}: v2 got requests before the mirror"
    );

    apply_task(&mesh.home, "mirroring/mirroring-to-v2.yaml");
    let deadline = Instant::now() + Duration::from_secs(30);
    while v2.gets("/headers") == 0 {
        let out = mesh.sleep(&format!("{0}; {0}", curl("http://httpbin:8000/headers")));
        for (code, body) in curl_answers(&out) {
            assert_eq!(
                (code, body.as_str()),
                (200, "httpbin v1"),
                "{proxy}: with the mirror, answers still come from v1"
            );
        }
        assert!(
            Instant::now() < deadline,
            "{proxy}: v2 saw no mirrored request within 30 s\nv2: {}",
            v2.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(v1.gets("/headers") > 0);
    v1.stop();
    v2.stop();
}

/// Istio's egress task: a ServiceEntry for httpbin.org reaches a local stand-in; with
/// REGISTRY_ONLY (a Sidecar's outboundTrafficPolicy), a host outside the registry is blocked
/// while the ServiceEntry's host still answers.
fn egress(mesh: &PodMesh, proxy: &str) {
    // Outside the mesh: where pods reach the host (the bridge's address, or a loopback
    // address that is not in the pods' NO_PROXY).
    let host_ip: std::net::IpAddr = if mesh.capture == "iptables" {
        let out = tool("ip", &["-4", "-o", "addr", "show", "dev", "strait0"]);
        let cidr = out.split_whitespace().nth(3).unwrap_or_default();
        cidr.split('/')
            .next()
            .unwrap()
            .parse()
            .unwrap_or_else(|_| panic!("the bridge's address: {out}"))
    } else {
        "127.0.212.1".parse().unwrap()
    };
    let external = strait_testsupport::Backend::http_on((host_ip, 0).into(), "httpbin-ext", "stub");
    let other = strait_testsupport::Backend::http_on((host_ip, 0).into(), "unregistered", "v1");
    // Istio's ServiceEntry for httpbin.org (serviceentry-httpbin-ext.yaml) with a static
    // endpoint: httpbin.org itself is not reachable from tests.
    apply_text(
        &mesh.home,
        "httpbin-ext.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: httpbin-ext\nspec:\n  hosts:\n  - httpbin.org\n  ports:\n  - number: 80\n    name: http\n    protocol: HTTP\n  resolution: STATIC\n  location: MESH_EXTERNAL\n  endpoints:\n  - address: {}\n    ports:\n      http: {}\n",
            external.addr().ip(),
            external.addr().port()
        ),
    );
    let both = format!(
        "{}; {}",
        curl("http://httpbin.org/headers"),
        curl(&format!("http://{}/", other.addr()))
    );
    // ALLOW_ANY (the default): both answer.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answers = curl_answers(&mesh.sleep(&both));
        if answers.len() == 2 && answers[0].0 == 200 && answers[1].0 == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{proxy}: httpbin.org (the ServiceEntry) and a host outside the registry (ALLOW_ANY) did not both answer: {answers:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let seen = external
        .requests()
        .pop()
        .expect("the stand-in saw the request");
    assert_eq!(seen.header("host"), Some("httpbin.org"), "{seen:?}");
    let reached = other.request_count();
    assert!(reached > 0);

    // The task's timeout: a 3 s timeout on httpbin.org (Istio's VirtualService, unchanged);
    // `/delay/5` (the stand-in answers after 5 s) gets 504 after about 3 s.
    apply_task(
        &mesh.home,
        "egress-control/virtualservice-httpbin-ext-timeout.yaml",
    );
    external.set_delay(Duration::from_secs(5));
    let timed = format!(
        "start=$(date +%s%N); {}; echo $(( ($(date +%s%N) - start) / 1000000 ))",
        curl("http://httpbin.org/delay/5")
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = mesh.sleep(&timed);
        let answers = curl_answers(&out);
        let ms: u64 = out
            .lines()
            .last()
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(0);
        if answers.first().is_some_and(|(code, _)| *code == 504) {
            assert!(
                (2900..4900).contains(&ms),
                "{proxy}: the 3 s timeout answered 504 after {ms} ms: {out:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{proxy}: no 504 from the 3 s timeout on httpbin.org: {out:?}"
        );
    }
    external.set_delay(Duration::ZERO);

    // REGISTRY_ONLY for the namespace: only what the registry knows.
    apply_text(
        &mesh.home,
        "registry-only.yaml",
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata:\n  name: default\n  namespace: default\nspec:\n  egress:\n  - hosts:\n    - ./*\n    - istio-system/*\n  outboundTrafficPolicy:\n    mode: REGISTRY_ONLY\n",
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answers = curl_answers(&mesh.sleep(&both));
        assert_eq!(answers.len(), 2, "{answers:?}");
        assert_eq!(
            answers[0].0, 200,
            "{proxy}: httpbin.org is in the registry: {answers:?}"
        );
        if answers[1].0 != 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{proxy}: REGISTRY_ONLY did not block a host outside the registry within 30 s: {answers:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let before = other.request_count();
    let answers = curl_answers(&mesh.sleep(&both));
    assert_eq!(answers[0].0, 200, "{answers:?}");
    assert_ne!(answers[1].0, 200, "{proxy}: blocked: {answers:?}");
    assert_eq!(
        other.request_count(),
        before,
        "{proxy}: nothing reached the unregistered host"
    );
    let out = Command::new(support::strait())
        .args(["delete", "sidecar", "default", "-n", "default"])
        .env("STRAIT_HOME", &mesh.home)
        .env_remove("STRAIT_SERVER")
        .env_remove("STRAIT_TOKEN")
        .output()
        .unwrap();
    assert!(out.status.success(), "strait delete sidecar: {out:?}");
}

/// The whole demo with one data plane: up, Istio's tasks through the gateway, down with nothing
/// left.
fn demo_runs_istio_tasks(proxy: &'static str, capture: &'static str, listen: &str) {
    // The demos use the same pod names, bridge and run folder as every pod test: one at a time.
    let _one = support::platform::require_platform();
    support::platform::bookinfo_built();
    let started = Instant::now();
    let mut demo = start_demo(proxy, capture, listen);
    let mesh_kind = (proxy, capture);
    let proxy = &format!("{proxy} ({capture} capture)");
    let out = demo.read_until("Logs:", Duration::from_secs(120));
    let text = out.join("\n");
    let url = format!("http://{listen}:8080/productpage");
    assert!(
        text.contains("Bookinfo is up (in ") && text.contains(&url),
        "{text}"
    );
    let up = started.elapsed();
    let home = out
        .iter()
        .find_map(|l| l.trim().strip_prefix("export STRAIT_HOME="))
        .unwrap_or_else(|| panic!("no STRAIT_HOME in what the demo printed:\n{text}"))
        .to_string();
    assert!(
        text.contains("virtual-service-reviews-v3.yaml"),
        "what to try next: {text}"
    );
    eprintln!("{proxy}: the demo was up in {up:?}");
    assert!(
        up < Duration::from_secs(30),
        "the demo took {up:?} to come up"
    );

    // What the demo made, for the check at the end.
    let records: Vec<Value> = PODS.iter().map(|p| pod_record(p)).collect();
    let procs = descendants(demo.child.id());
    assert!(
        procs.len() > 7 * 2,
        "the control plane, and a strait run/gateway process and a proxy per pod: {procs:?}"
    );

    let gateway: SocketAddr = format!("{listen}:8080").parse().unwrap();
    let anonymous = Browser::anonymous(gateway);
    let jason = Browser::login(gateway, "jason");
    // The demo's own routes: everything to v1.
    anonymous.always(Stars::None, 10);
    jason.always(Stars::None, 5);
    if mesh_kind.0 == "strait" {
        istio_metrics(proxy, &anonymous, gateway);
        if mesh_kind.1 == "iptables" {
            prometheus_rate(proxy, &home, &anonymous);
        }
    }

    // Request routing: all to v1, then jason to reviews v2 (black stars), others v1.
    apply(&home, "virtual-service-all-v1.yaml");
    anonymous.always(Stars::None, 10);
    apply(&home, "virtual-service-reviews-test-v2.yaml");
    jason.until(Stars::Black, Duration::from_secs(10));
    jason.always(Stars::Black, 20);
    anonymous.always(Stars::None, 20);
    eprintln!("{proxy}: request routing done at {:?}", started.elapsed());

    // Fault injection: a 7 s delay to ratings for jason; reviews v2 waits 10 s, productpage
    // 3 s with one retry: the reviews are unavailable for him, and only for him.
    apply(&home, "virtual-service-ratings-test-delay.yaml");
    jason.until(Stars::ReviewsUnavailable, Duration::from_secs(40));
    anonymous.always(Stars::None, 5);
    // An HTTP 500 from ratings for jason: reviews v2 shows the ratings unavailable.
    apply(&home, "virtual-service-ratings-test-abort.yaml");
    jason.until(Stars::RatingsUnavailable, Duration::from_secs(30));
    jason.always(Stars::RatingsUnavailable, 5);
    anonymous.always(Stars::None, 5);
    eprintln!("{proxy}: fault injection done at {:?}", started.elapsed());

    // Request timeouts (Istio's task file, applied in order): reviews to v2, ratings delayed
    // 2 s, and a 0.5 s timeout on reviews. productpage's two tries at reviews each time out
    // after 0.5 s, so the page shows the reviews unavailable after about 1 s, not 2.
    apply(&home, "virtual-service-all-v1.yaml");
    apply_task(&home, "request-timeouts/request-timeouts.yaml");
    anonymous.until(Stars::ReviewsUnavailable, Duration::from_secs(20));
    for _ in 0..3 {
        let t = Instant::now();
        assert_eq!(anonymous.stars(), Stars::ReviewsUnavailable);
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(990) && took < Duration::from_millis(1900),
            "{proxy}: two 0.5 s timeouts make the page take about 1 s; it took {took:?}"
        );
    }
    eprintln!("{proxy}: request timeouts done at {:?}", started.elapsed());

    // Traffic shifting: back to v1, then reviews 50 % v1, 50 % v3.
    apply(&home, "virtual-service-all-v1.yaml");
    jason.until(Stars::None, Duration::from_secs(10));
    apply(&home, "virtual-service-reviews-50-v3.yaml");
    anonymous.until(Stars::Red, Duration::from_secs(10));
    // A page load to find in the dashboard's trace store later (its spans are exported
    // meanwhile: Envoy flushes every 5 s).
    let traced = traced_page_load(proxy, gateway);
    let mut counts: BTreeMap<Stars, u32> = BTreeMap::new();
    for _ in 0..1000 {
        *counts.entry(anonymous.stars()).or_default() += 1;
    }
    let red = counts.get(&Stars::Red).copied().unwrap_or(0);
    let none = counts.get(&Stars::None).copied().unwrap_or(0);
    assert_eq!(red + none, 1000, "only v1 and v3 pages: {counts:?}");
    assert!(
        (450..=550).contains(&red),
        "50/50 within ±5 points over 1000 loads: {counts:?}"
    );
    eprintln!(
        "{proxy}: traffic shifting done at {:?}: {counts:?}",
        started.elapsed()
    );
    let dashboard = dashboard_url(&text);
    dashboard_checks(
        proxy,
        mesh_kind.0 == "strait",
        mesh_kind == ("strait", "iptables"),
        &dashboard,
        &traced,
    );

    reviews_pod_dies_mid_load(proxy, &home, listen, gateway);
    eprintln!(
        "{proxy}: a reviews pod died mid-load at {:?}",
        started.elapsed()
    );

    let mesh = PodMesh {
        home: home.clone(),
        proxy: mesh_kind.0,
        capture: mesh_kind.1,
    };
    mirroring(&mesh, proxy);
    eprintln!("{proxy}: mirroring done at {:?}", started.elapsed());
    egress(&mesh, proxy);
    eprintln!("{proxy}: egress done at {:?}", started.elapsed());

    // Mutual TLS between the pods (Envoy sidecars get their identity from strait agent,
    // strait-proxy obtains its own).
    if mesh_kind.1 == "iptables" {
        mtls_on_the_wire(&home, proxy, &anonymous, &records);
        eprintln!(
            "{proxy}: mTLS on the wire checked at {:?}",
            started.elapsed()
        );
    }

    // Ctrl-C: everything the demo started goes.
    let status = demo.stop();
    assert!(status.success(), "{status}; stderr:\n{}", demo.stderr());
    let mut left = Vec::new();
    let netns = tool("ip", &["netns", "list"]);
    let links = tool("ip", &["-o", "link", "show"]);
    // The bridge exists once a namespace pod made it (it stays, like a CNI's).
    let bridged = if capture == "iptables" {
        tool("ip", &["-o", "link", "show", "master", "strait0"])
    } else {
        String::new()
    };
    for (name, rec) in PODS.iter().zip(&records) {
        if run_dir().join(format!("{name}.json")).exists() {
            left.push(format!("the state file of {name}"));
        }
        if run_dir().join(format!("{name}.d")).exists() {
            left.push(format!("the files of {name}"));
        }
        if let Some(ns) = rec["netns"].as_str() {
            if netns.contains(ns) {
                left.push(format!("network namespace {ns}"));
            }
            if Path::new("/etc/netns").join(ns).exists() {
                left.push(format!("/etc/netns/{ns}"));
            }
        }
        if let Some(veth) = rec["veth"].as_str()
            && (links.contains(veth) || bridged.contains(veth))
        {
            left.push(format!("veth {veth}"));
        }
    }
    let now: BTreeSet<(u32, u64)> = processes().iter().map(|(p, s, _)| (*p, *s)).collect();
    for p in procs.intersection(&now) {
        let cmd = std::fs::read_to_string(format!("/proc/{}/cmdline", p.0))
            .unwrap_or_default()
            .replace('\0', " ");
        left.push(format!("process {} ({cmd})", p.0));
    }
    if Path::new(&home).exists() {
        left.push(format!("the demo's data directory {home}"));
    }
    assert!(left.is_empty(), "strait demo left behind: {left:?}");
    eprintln!("{proxy}: the whole test took {:?}", started.elapsed());
}

/// Under Istio's mesh-wide STRICT policy (the authentication task's file, unchanged), a capture
/// on the pods' bridge of Bookinfo traffic has TLS handshakes and no cleartext HTTP between pods,
/// a plaintext client is refused at the connection, and the page still loads through the gateway.
fn mtls_on_the_wire(home: &str, proxy: &str, browser: &Browser, records: &[Value]) {
    for (tool, install) in [("tcpdump", "tcpdump"), ("tshark", "tshark")] {
        assert!(
            Command::new(tool).arg("--version").output().is_ok(),
            "`{tool}` is missing: install it with `apt-get install -y {install}`"
        );
    }
    apply_task(home, "authn-policy/01-mesh-strict.yaml");
    let pcap = std::env::temp_dir().join(format!("strait-demo-mtls-{}.pcap", std::process::id()));
    let mut dump = Command::new("tcpdump")
        .args(["-i", "strait0", "-U", "-s", "0", "-w"])
        .arg(&pcap)
        .arg("tcp")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // The page still loads with its details, reviews and ratings (productpage → details,
    // reviews → ratings: all between pods). The first loads may meet proxies still taking the
    // new policy.
    let deadline = Instant::now() + Duration::from_secs(20);
    while matches!(
        browser.stars(),
        Stars::ReviewsUnavailable | Stars::RatingsUnavailable
    ) {
        assert!(
            Instant::now() < deadline,
            "{proxy}: the page does not load under STRICT"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for _ in 0..20 {
        let s = browser.stars();
        assert!(
            !matches!(s, Stars::ReviewsUnavailable | Stars::RatingsUnavailable),
            "{proxy}: under STRICT the page shows {s:?}"
        );
    }
    // A plaintext client (the host, on the bridge) is refused at the connection.
    let details_ip = records
        .iter()
        .find(|r| r["name"] == "details-v1.default")
        .and_then(|r| r["ip"].as_str())
        .expect("details' address")
        .to_string();
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
        ])
        .arg(format!("http://{details_ip}:9080/details/0"))
        .output()
        .unwrap();
    assert_eq!(
        (
            String::from_utf8_lossy(&out.stdout).to_string(),
            out.status.code()
        ),
        ("000".to_string(), Some(56)),
        "{proxy}: a plaintext client reached details under STRICT"
    );
    std::thread::sleep(Duration::from_millis(500));
    let _ = Command::new("kill")
        .args(["-INT", &dump.id().to_string()])
        .status();
    let _ = dump.wait();
    // Between pods (both ends in 10.44.0.0/16, the control plane's bridge address aside):
    let between_pods =
        "ip.src==10.44.0.0/16 && ip.dst==10.44.0.0/16 && ip.src!=10.44.0.1 && ip.dst!=10.44.0.1";
    let count = |filter: &str| -> usize {
        let out = Command::new("tshark")
            .args(["-r"])
            .arg(&pcap)
            .args(["-d", "tcp.port==9080,tls", "-Y"])
            .arg(format!("{between_pods} && ({filter})"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tshark: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    // TLS records (application data, or a handshake when a connection is new: the proxies keep
    // their connections from before the capture), seen in the TCP payload's first bytes.
    let tls_records = count(
        "tcp.payload[0:3] == 17:03:03 || tcp.payload[0:3] == 16:03:01 || tcp.payload[0:3] == 16:03:03",
    );
    let cleartext = count("tcp.payload contains \"HTTP/1.\" || tcp.payload contains \"GET /\"");
    let _ = std::fs::remove_file(&pcap);
    assert!(
        tls_records > 0,
        "{proxy}: no TLS between pods on the bridge"
    );
    assert_eq!(
        cleartext, 0,
        "{proxy}: cleartext HTTP between pods under STRICT"
    );
    eprintln!("{proxy}: {tls_records} TLS records and no cleartext HTTP between pods");
    delete_task(home, "authn-policy/01-mesh-strict.yaml");
}

/// Deletes what a task file applied.
fn delete_task(strait_home: &str, file: &str) {
    let path = support::testdata().join("istio-samples/tasks").join(file);
    let out = Command::new(support::strait())
        .args(["delete", "-f"])
        .arg(&path)
        .env("STRAIT_HOME", strait_home)
        .env_remove("STRAIT_SERVER")
        .env_remove("STRAIT_TOKEN")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// reviews over all its versions, with retries: the project's own YAML (Istio's samples have no
/// retries for reviews).
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

/// The product page through the gateway, or why it failed (no panic: for load loops).
fn try_page(gateway: SocketAddr) -> Result<(), String> {
    let (code, _, body) = request(gateway, "GET", "/productpage", &[], "");
    if code != 200 {
        return Err(format!("HTTP {code}"));
    }
    for bad in [REVIEWS_UNAVAILABLE, "Error fetching product details"] {
        if body.contains(bad) {
            return Err(bad.to_string());
        }
    }
    Ok(())
}

/// A reviews pod dies mid-load (its app is killed): its endpoint leaves every proxy (the
/// gateway and each sidecar, as their own `/clusters` show) within 1 s of the process ending,
/// and with retries configured no page load fails.
fn reviews_pod_dies_mid_load(proxy: &str, home: &str, listen: &str, gateway: SocketAddr) {
    apply_text(home, "reviews-retries.yaml", REVIEWS_WITH_RETRIES);
    let anonymous = Browser::anonymous(gateway);
    anonymous.until(Stars::Black, Duration::from_secs(10));

    let v3 = pod_record("reviews-v3.default");
    let v3_ip = v3["ip"].as_str().unwrap().to_string();
    let needle = format!("reviews.default.svc.cluster.local::{v3_ip}:9080::");
    let app = v3["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pid"].as_u64().unwrap() as u32)
        .find(|pid| {
            // The app is the `bookinfo` binary itself (its node agent runs with
            // `--service-account bookinfo-reviews`, and its sidecar is strait-proxy or Envoy).
            std::fs::read_to_string(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                c.split('\0')
                    .next()
                    .is_some_and(|argv0| argv0 == "bookinfo" || argv0.ends_with("/bookinfo"))
            })
        })
        .unwrap_or_else(|| panic!("no bookinfo process in reviews-v3's record: {v3}"));
    let mut admins: Vec<(String, SocketAddr)> = PODS
        .iter()
        .filter(|p| !p.starts_with("reviews-v3") && !p.starts_with("istio-ingressgateway"))
        .map(|p| {
            let ip = pod_record(p)["ip"].as_str().unwrap().to_string();
            (p.to_string(), format!("{ip}:15000").parse().unwrap())
        })
        .collect();
    admins.push((
        "the gateway".into(),
        format!("{listen}:15000").parse().unwrap(),
    ));
    let listing = |admin: SocketAddr| request(admin, "GET", "/clusters", &[], "").2;
    for (name, admin) in &admins {
        let text = listing(*admin);
        assert!(
            text.contains(&needle),
            "{proxy}: {name}'s /clusters does not list reviews-v3 ({needle}) before the kill:\n{text}"
        );
    }

    // Steady load from two clients across the kill.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loads: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut ok, mut failed) = (0u32, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && ok < 5000 {
                    match try_page(gateway) {
                        Ok(()) => ok += 1,
                        Err(e) => failed.push(e),
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let ok = Command::new("kill")
        .args(["-KILL", &app.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -KILL {app}");
    let killed = Instant::now();
    loop {
        let still: Vec<&str> = admins
            .iter()
            .filter(|(_, a)| listing(*a).contains(&needle))
            .map(|(n, _)| n.as_str())
            .collect();
        if still.is_empty() {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(1),
            "{proxy}: 1 s after reviews-v3's app ended, these proxies still list it: {still:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "{proxy}: reviews-v3's endpoint left every proxy {:?} after its app was killed",
        killed.elapsed()
    );
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut total, mut failures) = (0, Vec::new());
    for l in loads {
        let (ok, failed) = l.join().unwrap();
        total += ok as usize + failed.len();
        failures.extend(failed);
    }
    assert!(
        total > 20,
        "{proxy}: only {total} page loads across the kill"
    );
    assert!(
        failures.is_empty(),
        "{proxy}: {} of {total} page loads failed across the kill: {failures:?}",
        failures.len()
    );
}

/// Debian's real Prometheus scrapes the running demo through the control plane's service
/// discovery (docs/observability.md's config, a 1 s interval) and answers the per-workload rate
/// query of Istio's dashboards for the workloads the page loads reach.
fn prometheus_rate(proxy: &str, home: &str, browser: &Browser) {
    use support::prometheus::{Prometheus, prometheus_yml};
    let home = Path::new(home);
    let server = std::fs::read_to_string(home.join("server")).unwrap();
    let control_plane = server.trim().trim_start_matches("http://");
    let prometheus = Prometheus::start(&prometheus_yml(control_plane, &home.join("token")));
    let rates = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let promql = "sum(rate(istio_requests_total[1m])) by (destination_workload)";
            let wanted = ["productpage-v1", "details-v1", "reviews-v1"];
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                // Page loads (all to v1 here) keep the rates up while Prometheus scrapes.
                browser.always(Stars::None, 3);
                let result = prometheus.query(promql).await;
                let rate = |w: &str| {
                    result
                        .iter()
                        .find(|r| r["metric"]["destination_workload"] == w)
                        .and_then(|r| r["value"][1].as_str()?.parse::<f64>().ok())
                        .unwrap_or(0.0)
                };
                if wanted.iter().all(|w| rate(w) > 0.0) {
                    return result;
                }
                assert!(
                    Instant::now() < deadline,
                    "{proxy}: Prometheus did not answer `{promql}` with a rate for each of \
                     {wanted:?} within 60 s; last result: {result:#?}\nits log:\n{}",
                    prometheus.log()
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
    eprintln!("{proxy}: Prometheus's per-workload request rates: {rates:?}");
}

/// Istio's standard metrics, on productpage's sidecar at POD_IP:15090 (and its admin port):
/// page loads through the gateway count as requests from the gateway (reporter destination),
/// and productpage's calls to reviews as its own (reporter source), one each per page, with
/// the latency histogram; the peer metadata headers do not reach the browser.
fn istio_metrics(proxy: &str, browser: &Browser, gateway: SocketAddr) {
    let ip = pod_record("productpage-v1.default")["ip"]
        .as_str()
        .unwrap()
        .to_string();
    let metrics: SocketAddr = format!("{ip}:15090").parse().unwrap();
    let scrape = || {
        let (code, _, body) = request(metrics, "GET", "/stats/prometheus", &[], "");
        assert_eq!(code, 200, "{proxy}: {metrics}/stats/prometheus: {body}");
        body
    };
    let inbound: &[(&str, &str)] = &[
        ("reporter", "destination"),
        ("destination_workload", "productpage-v1"),
        ("destination_workload_namespace", "default"),
        ("destination_app", "productpage"),
        (
            "destination_service",
            "productpage.default.svc.cluster.local",
        ),
        ("source_workload", "istio-ingressgateway"),
        ("source_workload_namespace", "istio-system"),
        ("request_protocol", "http"),
        ("response_code", "200"),
        ("response_flags", "-"),
    ];
    let outbound: &[(&str, &str)] = &[
        ("reporter", "source"),
        ("source_workload", "productpage-v1"),
        ("source_app", "productpage"),
        ("destination_workload", "reviews-v1"),
        ("destination_version", "v1"),
        ("destination_canonical_service", "reviews"),
        ("destination_service", "reviews.default.svc.cluster.local"),
        ("destination_service_name", "reviews"),
        ("destination_service_namespace", "default"),
        ("response_code", "200"),
    ];
    let before = scrape();
    let pages = 7;
    for _ in 0..pages {
        browser.page();
    }
    let after = scrape();
    let delta = |name: &str, labels: &[(&str, &str)]| {
        metric_sum(&after, name, labels) - metric_sum(&before, name, labels)
    };
    assert_eq!(
        delta("istio_requests_total", inbound),
        pages,
        "{proxy}: productpage's sidecar counts each page load from the gateway once:\n{after}"
    );
    assert_eq!(
        delta("istio_request_duration_milliseconds_count", inbound),
        pages,
        "{proxy}: the latency histogram counts each page load:\n{after}"
    );
    assert!(
        after.contains("# TYPE istio_request_duration_milliseconds histogram")
            && metric_sum(
                &after,
                "istio_request_duration_milliseconds_bucket",
                &[inbound, &[("le", "+Inf")]].concat()
            ) >= pages,
        "{proxy}: the latency histogram's buckets:\n{after}"
    );
    assert_eq!(
        delta("istio_requests_total", outbound),
        pages,
        "{proxy}: productpage's sidecar counts its calls to reviews v1 once per page:\n{after}"
    );
    // The admin port serves the same series.
    let (code, _, admin) = request(
        format!("{ip}:15000").parse().unwrap(),
        "GET",
        "/stats/prometheus",
        &[],
        "",
    );
    assert_eq!(code, 200);
    assert!(metric_sum(&admin, "istio_requests_total", inbound) >= pages);
    // The exchanged metadata stays in the mesh.
    let (_, headers, _) = request(gateway, "GET", "/productpage", &[], "");
    assert!(
        !headers.contains_key("x-envoy-peer-metadata")
            && !headers.contains_key("x-envoy-peer-metadata-id"),
        "{proxy}: the peer metadata left the mesh: {headers:?}"
    );
    eprintln!("{proxy}: Istio's metrics checked");
}

#[test]
fn the_demo_with_strait_proxy_runs_istios_bookinfo_tasks_and_leaves_nothing() {
    demo_runs_istio_tasks("strait", "iptables", "127.0.211.1");
}

#[test]
fn the_demo_with_envoy_runs_istios_bookinfo_tasks_and_leaves_nothing() {
    demo_runs_istio_tasks("envoy", "iptables", "127.0.211.2");
}

#[test]
fn the_demo_without_capture_with_strait_proxy_runs_istios_bookinfo_tasks_and_leaves_nothing() {
    demo_runs_istio_tasks("strait", "none", "127.0.211.3");
}

#[test]
fn the_demo_without_capture_with_envoy_runs_istios_bookinfo_tasks_and_leaves_nothing() {
    demo_runs_istio_tasks("envoy", "none", "127.0.211.4");
}

/// The services of Bookinfo's spans (Istio's `CANONICAL_SERVICE.NAMESPACE`), every hop of a
/// page load whose reviews call ratings.
const TRACED_SERVICES: [&str; 5] = [
    "istio-ingressgateway.istio-system",
    "productpage.default",
    "details.default",
    "reviews.default",
    "ratings.default",
];

/// The edges that carry a page load's calls in the demo by now (reviews v1 and v3 under the
/// 50/50 split, v2 for jason earlier, whose reviews call ratings).
const GRAPH_EDGES: [(&str, &str); 6] = [
    ("istio-ingressgateway", "productpage-v1"),
    ("productpage-v1", "details-v1"),
    ("productpage-v1", "reviews-v1"),
    ("productpage-v1", "reviews-v3"),
    ("reviews-v3", "ratings-v1"),
    ("reviews-v2", "ratings-v1"),
];

/// The dashboard's URL, from the line `strait demo` prints.
fn dashboard_url(printed: &str) -> String {
    let url = printed
        .lines()
        .find_map(|l| l.trim().strip_prefix("Dashboard: "))
        .unwrap_or_else(|| panic!("no `Dashboard: URL` line in what the demo printed:\n{printed}"));
    assert!(
        url.starts_with("http://127.0.0.1:") && url.ends_with("/dashboard/"),
        "the dashboard on the control plane's loopback API: {url}"
    );
    url.to_string()
}

/// A GET of the dashboard's JSON API from loopback (no token): the body as JSON.
fn dashboard_api(dashboard: &str, path: &str) -> (u16, Value) {
    let addr: SocketAddr = dashboard
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|e| panic!("the dashboard's URL {dashboard}: {e}"));
    let (code, _, body) = request(addr, "GET", path, &[], "");
    (
        code,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

/// A page load with a trace context of our own whose page shows ratings (reviews v3, under
/// the 50/50 split): its trace id.
fn traced_page_load(proxy: &str, gateway: SocketAddr) -> String {
    for i in 0..40u32 {
        let trace_id = format!("5a1e{:08x}{:020x}", std::process::id(), i);
        let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
        let (code, _, body) = request(
            gateway,
            "GET",
            "/productpage",
            &[("traceparent", &traceparent)],
            "",
        );
        assert_eq!(code, 200, "{proxy}: GET /productpage: {body}");
        if stars(&body) == Stars::Red {
            return trace_id;
        }
    }
    panic!("{proxy}: 40 page loads under the 50/50 split and none from reviews v3");
}

/// The dashboard on a running demo: `/api/graph` has the edges that carried Bookinfo's
/// traffic (strait-proxy sidecars report Istio's metrics; Envoy's upstream build has none,
/// docs/observability.md), and a page load's trace reaches the control plane's trace store
/// with a span from every hop (both data planes). With `browser`, Debian's Chromium loads the
/// dashboard and the page it renders shows those edges and that trace's waterfall.
fn dashboard_checks(
    proxy: &str,
    strait_proxy: bool,
    browser: bool,
    dashboard: &str,
    trace_id: &str,
) {
    let started = Instant::now();
    // The page is served (no token from loopback).
    let addr_path = |p: &str| format!("{}{p}", dashboard.trim_end_matches("/dashboard/"));
    let (code, _) = dashboard_api(dashboard, "/dashboard/app.js");
    assert_eq!(code, 200, "{proxy}: {}", addr_path("/dashboard/app.js"));

    // The proxies export in batches (strait-proxy every second, Envoy every 5 s).
    let deadline = Instant::now() + Duration::from_secs(20);
    let spans = loop {
        let (code, t) = dashboard_api(dashboard, &format!("/api/traces/{trace_id}"));
        let spans = if code == 200 {
            t["spans"].as_array().cloned().unwrap_or_default()
        } else {
            Vec::new()
        };
        let services: BTreeSet<&str> = spans.iter().filter_map(|s| s["service"].as_str()).collect();
        if TRACED_SERVICES.iter().all(|s| services.contains(s)) {
            break spans;
        }
        assert!(
            Instant::now() < deadline,
            "{proxy}: the trace {trace_id} in the control plane's store lacks a hop: {services:?}, want {TRACED_SERVICES:?}: {t}"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    // Every hop: the gateway's server and client spans, and a server span on each workload.
    for service in TRACED_SERVICES {
        assert!(
            spans
                .iter()
                .any(|s| s["service"] == service && s["kind"] == "server"),
            "{proxy}: no server span of {service} in {trace_id}: {spans:#?}"
        );
    }
    let (_, list) = dashboard_api(dashboard, "/api/traces?service=ratings.default&limit=1000");
    let listed = list["traces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["trace_id"] == trace_id)
        .unwrap_or_else(|| panic!("{proxy}: {trace_id} is not in the trace list: {list}"));
    assert_eq!(
        listed["root_service"], "istio-ingressgateway.istio-system",
        "{listed}"
    );
    assert!(
        listed["span_count"].as_u64().unwrap() >= spans.len() as u64,
        "{listed}"
    );
    assert!(listed["duration_ms"].as_f64().unwrap() > 0.0, "{listed}");

    if strait_proxy {
        let (code, graph) = dashboard_api(dashboard, "/api/graph");
        assert_eq!(code, 200, "{proxy}: /api/graph: {graph}");
        let edges = graph["edges"].as_array().unwrap();
        for (source, destination) in GRAPH_EDGES {
            let edge = edges
                .iter()
                .find(|e| e["source"] == source && e["destination"] == destination)
                .unwrap_or_else(|| {
                    panic!("{proxy}: /api/graph has no edge {source} -> {destination}: {graph:#}")
                });
            assert!(
                edge["requests"].as_f64().unwrap() >= 1.0
                    && edge["p50_ms"].as_f64().is_some()
                    && edge["p99_ms"].as_f64().unwrap() >= edge["p50_ms"].as_f64().unwrap(),
                "{proxy}: {edge}"
            );
        }
        let ingress = edges
            .iter()
            .find(|e| e["source"] == "istio-ingressgateway" && e["destination"] == "productpage-v1")
            .unwrap();
        // The page loads of this test so far: well over the 1000 of the 50/50 split.
        assert!(
            ingress["requests"].as_f64().unwrap() >= 1000.0,
            "{proxy}: {ingress}"
        );
        assert_eq!(ingress["reporter"], "destination", "{ingress}");
        eprintln!(
            "{proxy}: /api/graph: {} nodes, {} edges; ingress -> productpage {ingress}",
            graph["nodes"].as_array().unwrap().len(),
            edges.len()
        );
    }

    if browser {
        let dom = chromium_dom(&format!("{dashboard}#trace={trace_id}"));
        for (source, destination) in GRAPH_EDGES {
            assert!(
                dom.contains("class=\"edge ")
                    && dom.contains(&format!(
                        "data-source=\"{source}\" data-destination=\"{destination}\""
                    )),
                "{proxy}: the dashboard in Chromium shows no edge {source} -> {destination}:\n{dom}"
            );
        }
        for w in [
            "istio-ingressgateway",
            "productpage-v1",
            "details-v1",
            "reviews-v1",
            "reviews-v2",
            "reviews-v3",
            "ratings-v1",
        ] {
            assert!(
                dom.contains(&format!("data-workload=\"{w}\"")),
                "{proxy}: no node {w} in Chromium's page:\n{dom}"
            );
        }
        assert!(
            dom.contains(&format!("data-trace-id=\"{trace_id}\"")),
            "{proxy}: the trace list in Chromium lacks {trace_id}:\n{dom}"
        );
        for service in TRACED_SERVICES {
            assert!(
                dom.contains(&format!("class=\"span-row\" data-service=\"{service}\"")),
                "{proxy}: the waterfall of {trace_id} in Chromium lacks {service}'s spans:\n{dom}"
            );
        }
    }
    eprintln!("{proxy}: the dashboard checked in {:?}", started.elapsed());
}

/// The DOM Debian's Chromium renders for `url` once its scripts have loaded their data.
fn chromium_dom(url: &str) -> String {
    let chromium = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|c| Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success()))
        .unwrap_or_else(|| {
            panic!("Chromium is missing (the dashboard's browser test drives it): install it with `apt-get install -y chromium` (scripts/test.sh does)")
        });
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-quic",
            "--window-size=1440,900",
            "--virtual-time-budget=6000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--dump-dom", url])
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chromium --dump-dom {url}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
