//! Istio's egress TLS origination task (tasks/egress-tls-origination, README.md) with Envoy
//! sidecars on the local platform (`strait run --proxy envoy`), the task's DestinationRules
//! unchanged and its probes run from the curl pod as `kubectl exec` would.
//!
//! Stand-ins (tests/fixtures/tls_server.py, pods without a sidecar): for edition.cnn.com, HTTP
//! on 80 redirecting to https and HTTPS on 443 with a certificate for edition.cnn.com from a
//! test CA; the proxies trust that CA through the control plane's `--system-ca-bundle` (the
//! only CA in the bundle the test gives), and the curl pod's own curl through
//! `CURL_CA_BUNDLE` (as an image's trust store would). For the task's nginx, an HTTPS server
//! on 443 that requires a client certificate signed by the task's example.com CA.
//!
//! What differs from the task, and why:
//! - ServiceEntry endpoints: edition.cnn.com and my-nginx.mesh-external.svc.cluster.local do
//!   not resolve here (and Envoy's DNS would not see the pods' hosts files, which map hosts to
//!   virtual IPs that only capture gives meaning), so each ServiceEntry gets `endpoints:` with
//!   the stand-in's address; `resolution: DNS` stays (an IP resolves to itself), as the egress
//!   test of envoy_scenarios.rs does for httpbin.org.
//! - 03's Service `my-nginx` (exported to mesh-external only) is not applied: Strait's registry
//!   holds one service per host name mesh-wide, and that Service would shadow 04's
//!   ServiceEntry of the same host in `default`, where Istio lets the ServiceEntry apply. The
//!   nginx stand-in runs as the pod of 03's Deployment would (label run=my-nginx).
//! - Step 1's `HTTP/2 200` is the protocol edition.cnn.com speaks to curl; the stand-in speaks
//!   HTTP/1.1, so the test checks `HTTP/1.1 200 OK`.
//! - 04's Role and RoleBinding (kubectl create role/rolebinding) have no counterpart: Strait
//!   gives a proxy the Secrets of its own namespace that its config names, over its
//!   authenticated xDS stream.
//!
//! Beyond the task: a host whose certificate comes from a CA outside the bundle is refused
//! (503), and accepted once its DestinationRule names that CA in `caCertificates`.
//!
//! Needs root, iproute2, iptables, setpriv, python3, curl, openssl and Envoy; fails (never
//! skips) without. The scenario runs with each data plane (`--proxy envoy`, `--proxy strait`).

use strait_e2e as support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::platform::{Run, require_platform, start, strait_proxy_built, wait_workload_entry};
use support::tls::{Curl, readable_by_all, require_tools, shell, strait_in, until};
use support::{ControlPlane, fixture, testdata};

/// The task's certificate commands (03's comments, verbatim), and the test's own: a CA that
/// stands for the system's trust bundle, edition.cnn.com's certificate from it, and a second CA
/// outside the bundle with a certificate for rogue.cnn.com.
const CERTIFICATES: &[&str] = &[
    "openssl req -x509 -sha256 -nodes -days 365 -newkey rsa:2048 -subj '/O=example Inc./CN=example.com' -keyout example.com.key -out example.com.crt",
    "openssl req -out my-nginx.mesh-external.svc.cluster.local.csr -newkey rsa:2048 -nodes -keyout my-nginx.mesh-external.svc.cluster.local.key -subj \"/CN=my-nginx.mesh-external.svc.cluster.local/O=some organization\"",
    "openssl x509 -req -sha256 -days 365 -CA example.com.crt -CAkey example.com.key -set_serial 0 -in my-nginx.mesh-external.svc.cluster.local.csr -out my-nginx.mesh-external.svc.cluster.local.crt",
    "openssl req -out client.example.com.csr -newkey rsa:2048 -nodes -keyout client.example.com.key -subj \"/CN=client.example.com/O=client organization\"",
    "openssl x509 -req -sha256 -days 365 -CA example.com.crt -CAkey example.com.key -set_serial 1 -in client.example.com.csr -out client.example.com.crt",
    "openssl req -x509 -sha256 -nodes -days 365 -newkey rsa:2048 -subj '/O=Strait tests/CN=system test root' -keyout system-ca.key -out system-ca.crt",
    "printf 'subjectAltName=DNS:edition.cnn.com\\n' > cnn.ext",
    "openssl req -out edition.cnn.com.csr -newkey rsa:2048 -nodes -keyout edition.cnn.com.key -subj '/CN=edition.cnn.com'",
    "openssl x509 -req -sha256 -days 365 -CA system-ca.crt -CAkey system-ca.key -set_serial 2 -in edition.cnn.com.csr -out edition.cnn.com.crt -extfile cnn.ext",
    "cp system-ca.crt system-bundle.pem",
    "openssl req -x509 -sha256 -nodes -days 365 -newkey rsa:2048 -subj '/O=Strait tests/CN=rogue root' -keyout rogue-ca.key -out rogue-ca.crt",
    "printf 'subjectAltName=DNS:rogue.cnn.com\\n' > rogue.ext",
    "openssl req -out rogue.cnn.com.csr -newkey rsa:2048 -nodes -keyout rogue.cnn.com.key -subj '/CN=rogue.cnn.com'",
    "openssl x509 -req -sha256 -days 365 -CA rogue-ca.crt -CAkey rogue-ca.key -set_serial 3 -in rogue.cnn.com.csr -out rogue.cnn.com.crt -extfile rogue.ext",
];

fn sample(path: &str) -> String {
    testdata()
        .join("istio-samples")
        .join(path)
        .display()
        .to_string()
}

/// One of the task's files, each ServiceEntry given an endpoint at `address` (see the module
/// comment).
fn task_with_endpoint(file: &str, address: &str) -> String {
    let text =
        std::fs::read_to_string(sample(&format!("tasks/egress-tls-origination/{file}"))).unwrap();
    assert_eq!(
        text.matches("  resolution: DNS\n").count(),
        1,
        "{file}: one ServiceEntry expected"
    );
    text.replace(
        "  resolution: DNS\n",
        &format!("  resolution: DNS\n  endpoints:\n  - address: {address}\n"),
    )
}

struct Egress {
    cp: ControlPlane,
    pods: Vec<Run>,
    certs: tempfile::TempDir,
    cnn: String,
    nginx: String,
    curl_ip: String,
    _dir: tempfile::TempDir,
}

impl Drop for Egress {
    fn drop(&mut self) {
        for p in &mut self.pods {
            p.stop();
        }
    }
}

impl Egress {
    fn certs(&self) -> &Path {
        self.certs.path()
    }

    fn apply_text(&self, yaml: &str) {
        let out = self
            .cp
            .cli_stdin(&["apply", "-f", "-"], Some(yaml.as_bytes()));
        assert!(out.status.success(), "{out:?}");
    }

    /// `kubectl exec curl -- curl ARGS`: curl in the curl pod's network namespace, trusting the
    /// test's system CA as the image's trust store would.
    fn exec_curl(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", "strait-curl.default", "curl"])
            .args(args)
            .env("CURL_CA_BUNDLE", self.certs().join("system-ca.crt"));
        cmd
    }

    /// The task's probe `curl -sSL -o /dev/null -D - URL`: the status lines of every response.
    fn status_lines(&self, url: &str) -> Vec<String> {
        let out = self
            .exec_curl(&["-sSL", "--max-time", "5", "-o", "/dev/null", "-D", "-", url])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("HTTP/"))
            .map(|l| l.trim().to_string())
            .collect()
    }

    /// The curl pod's Envoy statistics whose names contain `filter` (for failure messages).
    fn sidecar_stats(&self, filter: &str) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", "strait-curl.default", "curl", "-s"])
            .arg(format!(
                "http://{}:15000/stats?filter={filter}",
                self.curl_ip
            ))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Envoy's count of upstream certificates that failed verification on `cluster`.
    fn verify_failures(&self, cluster: &str) -> u64 {
        let name = format!("cluster.{cluster}.ssl.fail_verify_error: ");
        // The filter is a regex: only the host part of the name (no `|`).
        let host = cluster.rsplit('|').next().unwrap_or(cluster);
        self.sidecar_stats(&format!("{host}.ssl.fail_verify_error"))
            .lines()
            .find_map(|l| l.strip_prefix(&name)?.trim().parse().ok())
            .unwrap_or(0)
    }

    fn get(&self, url: &str) -> Curl {
        Curl::run(self.exec_curl(&[url]))
    }
}

fn start_task(proxy: &str) -> Egress {
    require_tools();
    strait_proxy_built();
    let certs = tempfile::tempdir().unwrap();
    shell(certs.path(), CERTIFICATES);
    readable_by_all(certs.path());
    let bundle = certs.path().join("system-bundle.pem").display().to_string();
    let cp = ControlPlane::start_with(&[
        "--xds-addr",
        "0.0.0.0:0",
        "--tls-addr",
        "0.0.0.0:0",
        "--system-ca-bundle",
        &bundle,
    ]);
    let dir = tempfile::tempdir().unwrap();
    let server = fixture("tls_server.py").display().to_string();
    let c = |f: &str| certs.path().join(f).display().to_string();
    cp.ok(&["apply", "-f", &sample("curl/curl.yaml")]);
    let no_sidecar = [
        "--capture",
        "iptables",
        "--annotation",
        "sidecar.istio.io/inject=false",
    ];
    let https = |port: u16, name: &str, ca: Option<&str>| {
        let mut spec = format!(
            "{port}:{}:{}",
            c(&format!("{name}.crt")),
            c(&format!("{name}.key"))
        );
        if let Some(ca) = ca {
            spec.push(':');
            spec.push_str(&c(ca));
        }
        spec
    };
    let mut pods = Vec::new();
    let cnn_https = https(443, "edition.cnn.com", None);
    let rogue_https = https(8443, "rogue.cnn.com", None);
    let mut args = vec![
        "run",
        "--name",
        "edition-cnn",
        "-n",
        "external",
        "--port",
        "http:80",
        "--port",
        "https:443",
    ];
    args.extend(no_sidecar);
    args.extend([
        "--",
        "python3",
        &server,
        "--http",
        "80",
        "--https",
        &cnn_https,
        "--https",
        &rogue_https,
    ]);
    pods.push(start(&cp, &args, dir.path()));
    let nginx_https = https(
        443,
        "my-nginx.mesh-external.svc.cluster.local",
        Some("example.com.crt"),
    );
    let mut args = vec![
        "run",
        "--name",
        "my-nginx",
        "-n",
        "mesh-external",
        "--labels",
        "run=my-nginx",
        "--port",
        "https:443",
    ];
    args.extend(no_sidecar);
    args.extend(["--", "python3", &server, "--https", &nginx_https]);
    pods.push(start(&cp, &args, dir.path()));
    pods.push(start(
        &cp,
        &[
            "run",
            "--name",
            "curl",
            "--labels",
            "app=curl",
            "--service-account",
            "curl",
            "--capture",
            "iptables",
            "--proxy",
            proxy,
            "--",
            "sleep",
            "3600",
        ],
        dir.path(),
    ));
    let address = |we: serde_json::Value| we["spec"]["address"].as_str().unwrap().to_string();
    let cnn = address(wait_workload_entry(
        &cp,
        &mut pods[0],
        "external",
        "edition-cnn",
    ));
    let nginx = address(wait_workload_entry(
        &cp,
        &mut pods[1],
        "mesh-external",
        "my-nginx",
    ));
    let curl_ip = address(wait_workload_entry(&cp, &mut pods[2], "default", "curl"));
    Egress {
        cp,
        pods,
        certs,
        cnn,
        nginx,
        curl_ip,
        _dir: dir,
    }
}

#[test]
fn egress_tls_origination_task_with_envoy() {
    let _one = require_platform();
    egress_tls_origination_task("envoy");
}

#[test]
fn egress_tls_origination_task_with_strait_proxy() {
    let _one = require_platform();
    egress_tls_origination_task("strait");
}

fn egress_tls_origination_task(proxy: &str) {
    let t = start_task(proxy);
    let wait = Duration::from_secs(20);
    let politics = "http://edition.cnn.com/politics";

    // Step 1: the ServiceEntry alone: the site's redirect, then HTTPS by curl itself (passed
    // through by the sidecar).
    t.apply_text(&task_with_endpoint(
        "01-serviceentry-edition-cnn.yaml",
        &t.cnn,
    ));
    let redirected = vec![
        "HTTP/1.1 301 Moved Permanently".to_string(),
        "HTTP/1.1 200 OK".to_string(),
    ];
    let mut got = Vec::new();
    for _ in 0..200 {
        got = t.status_lines(politics);
        if got == redirected {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(got, redirected, "step 1\n{}", t.cp.log());
    let headers = t
        .exec_curl(&[
            "-sS",
            "--max-time",
            "5",
            "-o",
            "/dev/null",
            "-D",
            "-",
            politics,
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&headers.stdout)
            .contains("location: https://edition.cnn.com/politics"),
        "{headers:?}"
    );

    // Step 2: TLS origination for port 80: one answer, from the server's HTTPS port.
    t.apply_text(&task_with_endpoint(
        "02-tls-origination-edition-cnn.yaml",
        &t.cnn,
    ));
    let originated = vec!["HTTP/1.1 200 OK".to_string()];
    for _ in 0..200 {
        got = t.status_lines(politics);
        if got == originated {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(got, originated, "step 2: TLS origination\n{}", t.cp.log());
    let plain = t.get(politics);
    assert_eq!(plain.status, 200, "{plain:?}");
    assert!(
        plain.body.contains("/politics over TLS"),
        "the answer comes from the server's HTTPS port: {plain:?}"
    );
    assert_eq!(
        t.status_lines("https://edition.cnn.com/politics"),
        originated,
        "step 2: https:// as before"
    );

    // Beyond the task: the bundle is what verifies. rogue.cnn.com's CA is not in it.
    let rogue = |ca: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: rogue}}\nspec:\n  hosts: [rogue.cnn.com]\n  ports:\n  - {{number: 80, name: http-port, protocol: HTTP, targetPort: 8443}}\n  resolution: DNS\n  endpoints:\n  - address: {}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: rogue}}\nspec:\n  host: rogue.cnn.com\n  trafficPolicy:\n    tls: {{mode: SIMPLE{ca}}}\n",
            t.cnn
        )
    };
    t.apply_text(&rogue(""));
    // Refused for its certificate: Envoy counts the failed verification on the cluster (its
    // 503 body says only "remote connection failure"); strait-proxy's answer names the reason.
    let refused = |c: &Curl| {
        c.status == 503
            && match proxy {
                "envoy" => t.verify_failures("outbound|80||rogue.cnn.com") > 0,
                _ => c.body.contains("certificate"),
            }
    };
    let (got, _) = until(wait, || t.get("http://rogue.cnn.com/x"), refused);
    assert!(
        refused(&got),
        "a server outside the bundle is refused for its certificate: {got:?}\n{}",
        t.sidecar_stats("rogue.cnn.com")
    );
    let ca = t.certs().join("rogue-ca.crt").display().to_string();
    t.apply_text(&rogue(&format!(", caCertificates: {ca}")));
    let (got, _) = until(
        wait,
        || t.get("http://rogue.cnn.com/x"),
        |c| c.status == 200,
    );
    assert_eq!(got.status, 200, "caCertificates names its CA: {got:?}");

    // Steps 3 and 4: mutual TLS origination with the task's client Secret, to the nginx
    // stand-in that requires a client certificate.
    strait_in(
        &t.cp,
        t.certs(),
        &[
            "create",
            "secret",
            "generic",
            "client-credential",
            "--from-file=tls.key=client.example.com.key",
            "--from-file=tls.crt=client.example.com.crt",
            "--from-file=ca.crt=example.com.crt",
        ],
    );
    t.apply_text(&task_with_endpoint(
        "04-mtls-origination-sidecar.yaml",
        &t.nginx,
    ));
    let nginx = "http://my-nginx.mesh-external.svc.cluster.local";
    let (got, _) = until(wait, || t.get(nginx), |c| c.status == 200);
    assert!(
        got.body.contains("<title>Welcome to nginx!</title>"),
        "step 4: the nginx page: {got:?}\n{}",
        t.cp.log()
    );
    assert!(
        got.log
            .contains("x-tls-client: commonName=client.example.com"),
        "the server saw the task's client certificate: {}",
        got.log
    );
    // `istioctl proxy-config secret deploy/curl`: both, active.
    let secrets = strait_in(
        &t.cp,
        t.certs(),
        &["proxy-config", "secret", "curl.default"],
    );
    for name in [
        "kubernetes://client-credential ",
        "kubernetes://client-credential-cacert ",
    ] {
        let line = secrets
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name}: {secrets}"));
        assert!(line.contains("ACTIVE"), "{line}");
    }
    // And Envoy has them.
    let dump = Command::new("ip")
        .args(["netns", "exec", "strait-curl.default", "curl", "-s"])
        .arg(format!(
            "http://{}:15000/config_dump?resource=dynamic_active_secrets",
            t.curl_ip
        ))
        .output()
        .unwrap();
    let dump = String::from_utf8_lossy(&dump.stdout);
    assert!(
        dump.contains("\"kubernetes://client-credential\"")
            && dump.contains("\"kubernetes://client-credential-cacert\""),
        "{dump}"
    );
}
