//! Istio's secure ingress task (tasks/secure-ingress, README.md) through `strait gateway`, with
//! Istio's YAML unchanged: the certificates made by the task's own openssl commands, the
//! Secrets created through the API as the task's kubectl commands do (`strait create secret
//! ...`), and curl with `--resolve`, `--cacert`, `--cert` and `--key` as the task runs it.
//!
//! - SIMPLE, one host: `HTTP/2 418` from httpbin (tests/fixtures/httpbin.py answers as
//!   go-httpbin, the sample's image: "I'm a teapot!"); the gateway reaches httpbin over mutual
//!   TLS with its own identity (httpbin's sidecar passes it on in X-Forwarded-Client-Cert).
//! - Rotation: the Secret deleted and created again from example_certs2 is served within 5 s,
//!   without a restart of the gateway; the old CA no longer verifies it (curl's exit 35, as in
//!   the doc; OpenSSL 3 says "invalid padding" for the doc's "block type is not 01"). Then an
//!   update in place (`strait apply` of the Secret back to example_certs1), also served within
//!   5 s.
//! - Two hosts on 443, told apart by SNI, each with its own certificate: helloworld answers
//!   `/hello` (tests/fixtures/helloworld.py stands in for the sample).
//! - MUTUAL: without a client certificate the handshake ends with TLS 1.3's "certificate
//!   required" alert; with the task's client certificate, 418.
//!
//! The gateway listens on 127.0.14.1 (a loopback address of its own, as `INGRESS_HOST`), port
//! 443 (`SECURE_INGRESS_PORT`). Needs root, iproute2, iptables, setpriv, python3, curl, openssl
//! and Envoy; fails (never skips) without.
//!
//! The scenario runs with each data plane (`--proxy envoy`, `--proxy strait`).

use strait_e2e as support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::platform::{Run, require_platform, start, strait_proxy_built, wait_workload_entry};
use support::tls::{Curl, readable_by_all, require_tools, secret_yaml, shell, strait_in, until};
use support::{ControlPlane, fixture, testdata};

/// The gateway's address (`INGRESS_HOST`) and port (`SECURE_INGRESS_PORT`).
const INGRESS_HOST: &str = "127.0.14.1";
const SECURE_INGRESS_PORT: u16 = 443;

/// The task's certificate commands (README.md, verbatim).
const CERTIFICATES: &[&str] = &[
    "mkdir example_certs1",
    "openssl req -x509 -sha256 -nodes -days 365 -newkey rsa:2048 -subj '/O=example Inc./CN=example.com' -keyout example_certs1/example.com.key -out example_certs1/example.com.crt",
    "openssl req -out example_certs1/httpbin.example.com.csr -newkey rsa:2048 -nodes -keyout example_certs1/httpbin.example.com.key -subj \"/CN=httpbin.example.com/O=httpbin organization\"",
    "openssl x509 -req -sha256 -days 365 -CA example_certs1/example.com.crt -CAkey example_certs1/example.com.key -set_serial 0 -in example_certs1/httpbin.example.com.csr -out example_certs1/httpbin.example.com.crt",
    "mkdir example_certs2",
    "openssl req -x509 -sha256 -nodes -days 365 -newkey rsa:2048 -subj '/O=example Inc./CN=example.com' -keyout example_certs2/example.com.key -out example_certs2/example.com.crt",
    "openssl req -out example_certs2/httpbin.example.com.csr -newkey rsa:2048 -nodes -keyout example_certs2/httpbin.example.com.key -subj \"/CN=httpbin.example.com/O=httpbin organization\"",
    "openssl x509 -req -sha256 -days 365 -CA example_certs2/example.com.crt -CAkey example_certs2/example.com.key -set_serial 0 -in example_certs2/httpbin.example.com.csr -out example_certs2/httpbin.example.com.crt",
    "openssl req -out example_certs1/helloworld.example.com.csr -newkey rsa:2048 -nodes -keyout example_certs1/helloworld.example.com.key -subj \"/CN=helloworld.example.com/O=helloworld organization\"",
    "openssl x509 -req -sha256 -days 365 -CA example_certs1/example.com.crt -CAkey example_certs1/example.com.key -set_serial 1 -in example_certs1/helloworld.example.com.csr -out example_certs1/helloworld.example.com.crt",
    "openssl req -out example_certs1/client.example.com.csr -newkey rsa:2048 -nodes -keyout example_certs1/client.example.com.key -subj \"/CN=client.example.com/O=client organization\"",
    "openssl x509 -req -sha256 -days 365 -CA example_certs1/example.com.crt -CAkey example_certs1/example.com.key -set_serial 1 -in example_certs1/client.example.com.csr -out example_certs1/client.example.com.crt",
];

fn sample(path: &str) -> String {
    testdata()
        .join("istio-samples")
        .join(path)
        .display()
        .to_string()
}

fn task(file: &str) -> String {
    sample(&format!("tasks/secure-ingress/{file}"))
}

struct Ingress {
    cp: ControlPlane,
    pods: Vec<Run>,
    certs: tempfile::TempDir,
    _dir: tempfile::TempDir,
}

impl Drop for Ingress {
    fn drop(&mut self) {
        for p in &mut self.pods {
            p.stop();
        }
    }
}

impl Ingress {
    fn certs(&self) -> &Path {
        self.certs.path()
    }

    /// `strait ARGS` in the certificates' folder (the task's commands use relative paths).
    fn strait(&self, args: &[&str]) -> String {
        strait_in(&self.cp, self.certs(), args)
    }

    /// The task's probe: `curl -v -HHost:HOST --resolve "HOST:PORT:INGRESS_HOST" --cacert CA
    /// [--cert C --key K] "https://HOST:PORT/PATH"`.
    fn curl(&self, host: &str, path: &str, ca: &str, client: Option<(&str, &str)>) -> Curl {
        let mut cmd = Command::new("curl");
        cmd.current_dir(self.certs())
            .arg(format!("-HHost:{host}"))
            .arg("--resolve")
            .arg(format!("{host}:{SECURE_INGRESS_PORT}:{INGRESS_HOST}"))
            .args(["--cacert", ca]);
        if let Some((cert, key)) = client {
            cmd.args(["--cert", cert, "--key", key]);
        }
        cmd.arg(format!("https://{host}:{SECURE_INGRESS_PORT}{path}"));
        Curl::run(cmd)
    }

    fn teapot(&self, ca: &str, client: Option<(&str, &str)>) -> Curl {
        self.curl("httpbin.example.com", "/status/418", ca, client)
    }

    /// The gateway's Envoy uptime (seconds), from its admin `/server_info`.
    fn gateway_uptime(&self) -> u64 {
        let out = Command::new("curl")
            .args(["-s", &format!("http://{INGRESS_HOST}:15000/server_info")])
            .output()
            .unwrap();
        let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "the gateway's admin /server_info: {e}: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
        info["uptime_current_epoch"]
            .as_str()
            .and_then(|s| s.trim_end_matches('s').parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no uptime in {info}")) as u64
    }
}

fn is_teapot(c: &Curl) -> bool {
    c.status == 418 && c.version == "2" && c.body.contains("I'm a teapot!")
}

/// httpbin and helloworld v1 with `proxy` sidecars, Istio's ingress gateway on the host, and the
/// task's certificates.
fn start_task(proxy: &str) -> Ingress {
    require_tools();
    strait_proxy_built();
    let cp = ControlPlane::start_with(&["--xds-addr", "0.0.0.0:0", "--tls-addr", "0.0.0.0:0"]);
    let dir = tempfile::tempdir().unwrap();
    let certs = tempfile::tempdir().unwrap();
    shell(certs.path(), CERTIFICATES);
    readable_by_all(certs.path());
    cp.ok(&["apply", "-f", &sample("httpbin/httpbin.yaml")]);
    // `kubectl apply -l service=helloworld` and `-l version=v1`: the whole file is applied (its
    // v2 Deployment runs nothing here); only v1 runs.
    cp.ok(&["apply", "-f", &sample("helloworld/helloworld.yaml")]);
    let httpbin = fixture("httpbin.py").display().to_string();
    let helloworld = fixture("helloworld.py").display().to_string();
    let common = ["--capture", "iptables", "--proxy", proxy];
    let mut pods = Vec::new();
    let mut args = vec![
        "run",
        "--name",
        "httpbin",
        "--labels",
        "app=httpbin,version=v1",
        "--service-account",
        "httpbin",
        "--port",
        "http:8080",
    ];
    args.extend(common);
    args.extend(["--", "python3", &httpbin]);
    pods.push(start(&cp, &args, dir.path()));
    let mut args = vec![
        "run",
        "--name",
        "helloworld-v1",
        "--labels",
        "app=helloworld,version=v1",
        "--port",
        "http:5000",
    ];
    args.extend(common);
    args.extend(["--", "python3", &helloworld]);
    pods.push(start(&cp, &args, dir.path()));
    pods.push(start(
        &cp,
        &["gateway", "--proxy", proxy, "--listen", INGRESS_HOST],
        dir.path(),
    ));
    wait_workload_entry(&cp, &mut pods[0], "default", "httpbin");
    wait_workload_entry(&cp, &mut pods[1], "default", "helloworld-v1");
    wait_workload_entry(&cp, &mut pods[2], "istio-system", "istio-ingressgateway");
    Ingress {
        cp,
        pods,
        certs,
        _dir: dir,
    }
}

#[test]
fn secure_ingress_task_with_envoy() {
    let _one = require_platform();
    secure_ingress_task("envoy");
}

#[test]
fn secure_ingress_task_with_strait_proxy() {
    let _one = require_platform();
    secure_ingress_task("strait");
}

fn secure_ingress_task(proxy: &str) {
    let t = start_task(proxy);
    let certs1_ca = "example_certs1/example.com.crt";
    let certs2_ca = "example_certs2/example.com.crt";

    // Step 1: SIMPLE, one host.
    t.strait(&[
        "create",
        "secret",
        "tls",
        "httpbin-credential",
        "-n",
        "istio-system",
        "--key=example_certs1/httpbin.example.com.key",
        "--cert=example_certs1/httpbin.example.com.crt",
    ]);
    t.strait(&["apply", "-f", &task("01-simple-tls-single-host.yaml")]);
    let (got, _) = until(
        Duration::from_secs(20),
        || t.teapot(certs1_ca, None),
        is_teapot,
    );
    assert!(
        is_teapot(&got),
        "step 1: the task expects HTTP/2 418 with the teapot: {got:?}\n{}",
        t.cp.log()
    );
    // The gateway talks mutual TLS to the mesh: httpbin's sidecar saw the gateway's identity
    // (X-Forwarded-Client-Cert, echoed by /delay/0 as httpbin's /get).
    let echoed = t.curl("httpbin.example.com", "/delay/0", certs1_ca, None);
    assert_eq!(echoed.status, 200, "{echoed:?}");
    assert!(
        echoed
            .body
            .to_ascii_lowercase()
            .contains("x-forwarded-client-cert")
            && echoed
                .body
                .contains("URI=spiffe://cluster.local/ns/istio-system/sa/default"),
        "gateway to httpbin is not mutual TLS with the gateway's identity: {}",
        echoed.body
    );
    // The Secret's data is never shown unless asked for.
    let listed = t.strait(&["get", "secret", "-n", "istio-system"]);
    assert!(
        listed.contains("httpbin-credential")
            && listed.contains("kubernetes.io/tls")
            && !listed.contains("LS0t"),
        "{listed}"
    );
    let hidden = t.strait(&[
        "get",
        "secret",
        "httpbin-credential",
        "-n",
        "istio-system",
        "-o",
        "yaml",
    ]);
    assert!(
        hidden.contains("<redacted: ") && !hidden.contains("LS0t"),
        "{hidden}"
    );
    let shown = t.strait(&[
        "get",
        "secret",
        "httpbin-credential",
        "-n",
        "istio-system",
        "-o",
        "json",
        "--show-secrets",
    ]);
    let shown: serde_json::Value = serde_json::from_str(&shown).unwrap();
    let cert = std::fs::read(t.certs().join("example_certs1/httpbin.example.com.crt")).unwrap();
    assert_eq!(
        shown["data"]["tls.crt"],
        support::tls::base64(&cert),
        "--show-secrets shows the data as stored"
    );
    // The gateway has the Secret, and the control plane shows it by certificate, not by bytes.
    let secrets = t.strait(&[
        "proxy-config",
        "secret",
        "istio-ingressgateway.istio-system",
    ]);
    assert!(
        secrets.contains("kubernetes://httpbin-credential")
            && secrets.contains("Cert Chain")
            && secrets.contains("ACTIVE"),
        "{secrets}"
    );
    assert!(!secrets.contains("BEGIN"), "{secrets}");

    // Step 2: rotation to example_certs2, as the task does it (delete, then create).
    let uptime = t.gateway_uptime();
    t.strait(&[
        "delete",
        "secret",
        "httpbin-credential",
        "-n",
        "istio-system",
    ]);
    t.strait(&[
        "create",
        "secret",
        "tls",
        "httpbin-credential",
        "-n",
        "istio-system",
        "--key=example_certs2/httpbin.example.com.key",
        "--cert=example_certs2/httpbin.example.com.crt",
    ]);
    let (got, took) = until(
        Duration::from_secs(5),
        || t.teapot(certs2_ca, None),
        is_teapot,
    );
    assert!(
        is_teapot(&got),
        "step 2: the rotated Secret is not served within 5 s: {got:?}"
    );
    eprintln!("step 2: the rotated certificate was served {took:?} after the Secret was created");
    assert!(
        t.gateway_uptime() >= uptime,
        "the gateway restarted to pick up the Secret"
    );
    // Both CAs are named CN=example.com: the old one is taken as the issuer and its key does
    // not verify the signature. The doc's OpenSSL said "block type is not 01"; OpenSSL 3 says
    // "invalid padding", or "data too large for modulus" when the signature, read as a number,
    // exceeds the old key's modulus (it depends on the keys the run made). curl's exit is the
    // doc's 35 either way.
    let old = t.teapot(certs1_ca, None);
    assert_eq!(
        (old.status, old.exit),
        (0, 35),
        "step 2b: the old CA must not verify the new certificate: {old:?}"
    );
    assert!(
        old.log.contains("rsa routines::invalid padding")
            || old.log.contains("rsa routines::data too large for modulus"),
        "{}",
        old.log
    );

    // Step 3: back to example_certs1, here as an update in place (the task deletes and creates;
    // this also covers an existing Secret changed through the API).
    let yaml = secret_yaml(
        "istio-system",
        "httpbin-credential",
        "kubernetes.io/tls",
        &[
            (
                "tls.crt",
                &t.certs().join("example_certs1/httpbin.example.com.crt"),
            ),
            (
                "tls.key",
                &t.certs().join("example_certs1/httpbin.example.com.key"),
            ),
        ],
    );
    let out = t.cp.cli_stdin(&["apply", "-f", "-"], Some(yaml.as_bytes()));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("secret/httpbin-credential configured"),
        "{out:?}"
    );
    let (got, took) = until(
        Duration::from_secs(5),
        || t.teapot(certs1_ca, None),
        is_teapot,
    );
    assert!(
        is_teapot(&got),
        "step 3: the updated Secret is not served within 5 s: {got:?}"
    );
    eprintln!("step 3: the updated certificate was served {took:?} after the Secret changed");
    t.strait(&[
        "create",
        "secret",
        "tls",
        "helloworld-credential",
        "-n",
        "istio-system",
        "--key=example_certs1/helloworld.example.com.key",
        "--cert=example_certs1/helloworld.example.com.crt",
    ]);
    t.strait(&["apply", "-f", &task("02-simple-tls-multiple-hosts.yaml")]);
    let hello =
        |c: &Curl| c.status == 200 && c.version == "2" && c.body.starts_with("Hello version: v1");
    let (got, _) = until(
        Duration::from_secs(20),
        || t.curl("helloworld.example.com", "/hello", certs1_ca, None),
        hello,
    );
    assert!(hello(&got), "step 3: helloworld by SNI: {got:?}");
    // curl checked the name: the certificate served for helloworld.example.com is helloworld's.
    assert!(got.log.contains("CN=helloworld.example.com"), "{}", got.log);
    let got = t.teapot(certs1_ca, None);
    assert!(is_teapot(&got), "step 3: httpbin still: {got:?}");
    assert!(got.log.contains("CN=httpbin.example.com"), "{}", got.log);

    // Step 4: MUTUAL, with the generic Secret the task creates (tls.key, tls.crt, ca.crt).
    t.strait(&[
        "delete",
        "secret",
        "httpbin-credential",
        "-n",
        "istio-system",
    ]);
    t.strait(&[
        "create",
        "secret",
        "generic",
        "httpbin-credential",
        "-n",
        "istio-system",
        "--from-file=tls.key=example_certs1/httpbin.example.com.key",
        "--from-file=tls.crt=example_certs1/httpbin.example.com.crt",
        "--from-file=ca.crt=example_certs1/example.com.crt",
    ]);
    t.strait(&["apply", "-f", &task("03-mutual-tls.yaml")]);
    let refused = |c: &Curl| c.status == 0 && c.log.contains("alert certificate required");
    let (got, _) = until(
        Duration::from_secs(20),
        || t.teapot(certs1_ca, None),
        refused,
    );
    assert!(
        refused(&got),
        "step 4: without a client certificate the task expects the handshake to fail with \
         TLS 1.3's certificate required alert: {got:?}"
    );
    assert!(got.log.contains("Request CERT"), "{}", got.log);
    let client = Some((
        "example_certs1/client.example.com.crt",
        "example_certs1/client.example.com.key",
    ));
    let got = t.teapot(certs1_ca, client);
    assert!(
        is_teapot(&got),
        "step 4b: with the client certificate: {got:?}"
    );
    // helloworld's server left the Gateway with 03: its SNI now matches no chain.
    let gone = t.curl("helloworld.example.com", "/hello", certs1_ca, None);
    assert_eq!(gone.status, 0, "{gone:?}");

    // No key material in the control plane's log (PEM, or its base64 as stored).
    let log = t.cp.log();
    assert!(!log.is_empty(), "the control plane's log is empty");
    assert!(
        !log.contains("PRIVATE KEY") && !log.contains("LS0tLS1CRUdJTi"),
        "the control plane logged key material"
    );
}
