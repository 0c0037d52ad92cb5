//! Istio's authorization tasks end to end, with Istio's YAML unchanged, on the whole Bookinfo
//! mesh of `strait demo` (pods in network namespaces with iptables capture, sidecars with
//! identities and mutual TLS, the ingress gateway in `istio-system`), through the gateway as
//! Istio's docs do with a browser.
//!
//! authz-http (`tasks/authz-http/authz-http-bookinfo.yaml`), step by step, with the outcomes its
//! docs give:
//! 1. `allow-nothing` (namespace `default`, no rules): every request to a Bookinfo workload is
//!    refused with 403 `RBAC: access denied`; the gateway, in `istio-system`, is not selected.
//! 2. `productpage-viewer`: the page loads, with "Error fetching product details" and
//!    "Error fetching product reviews".
//! 3. `details-viewer` and `reviews-viewer` (only `cluster.local/ns/default/sa/bookinfo-productpage`,
//!    only GET): details and reviews load; "Ratings service is currently unavailable".
//! 4. `ratings-viewer` (only reviews' identity): the stars come back.
//!
//! Istio's doc runs reviews v1, v2 and v3 round robin, so the page shows stars on two loads of
//! three; the demo routes everything to v1 (no stars, ratings never called), so this test first
//! applies Istio's `virtual-service-reviews-v3.yaml` (unchanged): red stars on every load, and
//! every load calls ratings. The file's `bookinfo-gateway-viewer` document is for a Kubernetes
//! Gateway API gateway and selects nothing here; it is not applied.
//!
//! authz-deny (`tasks/authz-deny/authz-deny.yaml`) on httpbin and sleep in `foo` (pods with
//! sidecars, as in the authentication task's test): DENY GET; DENY GET unless `x-token: admin`;
//! that and ALLOW `/ip`: DENY is evaluated first, then a request no ALLOW rule matches is
//! refused too.
//!
//! Each scenario runs with each data plane: Envoy enforces the RBAC filters the control plane
//! sends, strait-proxy evaluates the same filters with strait-authz.
//!
//! Needs root, iproute2, iptables, setpriv, curl and Envoy; fails (never skips) without.

use strait_e2e as support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::process::Spawned;

const DETAILS_ERROR: &str = "Error fetching product details!";
const REVIEWS_ERROR: &str = "Error fetching product reviews!";
const RATINGS_UNAVAILABLE: &str = "Ratings service is currently unavailable";
const RED_STARS: &str = "<font color=\"red\">";
const ACCESS_DENIED: &str = "RBAC: access denied";

/// A running `strait demo` and its data directory (`STRAIT_HOME`).
struct Demo {
    spawned: Spawned,
    home: String,
    listen: String,
}

impl Demo {
    fn start(proxy: &str, listen: &str) -> Demo {
        let mut cmd = Command::new(support::strait());
        if proxy == "envoy" {
            cmd.env("ENVOY_BIN", strait_testsupport::envoy_bin());
        }
        cmd.args([
            "demo",
            "--proxy",
            proxy,
            "--capture",
            "iptables",
            "--listen",
            listen,
        ])
        .env_remove("STRAIT_SERVER")
        .env_remove("STRAIT_TOKEN")
        .env_remove("STRAIT_HOME")
        .env_remove("STRAIT_RUN_DIR");
        let mut spawned = Spawned::start(cmd, "strait demo", "-INT", Duration::from_secs(60));
        let out = spawned.read_until("Logs:", Duration::from_secs(120));
        let text = out.join("\n");
        assert!(text.contains("Bookinfo is up (in "), "{text}");
        let home = out
            .iter()
            .find_map(|l| l.trim().strip_prefix("export STRAIT_HOME="))
            .unwrap_or_else(|| panic!("no STRAIT_HOME in what the demo printed:\n{text}"))
            .to_string();
        Demo {
            spawned,
            home,
            listen: listen.to_string(),
        }
    }

    fn strait(&self, args: &[&str], stdin: Option<&str>) {
        let mut child = Command::new(support::strait())
            .args(args)
            .env("STRAIT_HOME", &self.home)
            .env_remove("STRAIT_SERVER")
            .env_remove("STRAIT_TOKEN")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::Write;
            let mut input = child.stdin.take().unwrap();
            input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "strait {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `strait authz check --from FROM --to TO --path PATH -o json`: whether the control plane
    /// says TO's proxy allows the request, with its explanation.
    fn authz_check(&self, from: &str, to: &str, path: &str) -> (bool, String) {
        let out = Command::new(support::strait())
            .args([
                "authz", "check", "--from", from, "--to", to, "--port", "9080", "--path", path,
                "-o", "json",
            ])
            .env("STRAIT_HOME", &self.home)
            .env_remove("STRAIT_SERVER")
            .env_remove("STRAIT_TOKEN")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!(
                "strait authz check {from} -> {to}: not JSON ({e}): {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        let allowed = v["allowed"].as_bool().expect("allowed");
        assert_eq!(
            out.status.code(),
            Some(if allowed { 0 } else { 3 }),
            "exit code 0 when allowed, 3 when denied: {text}"
        );
        (allowed, text)
    }

    /// `strait authz check` decides each hop as the proxies did at this step (what the page
    /// showed: `allowed` per hop).
    fn checks_agree(&self, step: &str, hops: &[(&str, &str, &str, bool)]) {
        for (from, to, path, allowed) in hops {
            let (said, text) = self.authz_check(from, to, path);
            assert_eq!(
                said,
                *allowed,
                "{step}: the proxies {} GET {path} from {from} to {to}, strait authz check says otherwise:\n{text}",
                if *allowed { "allowed" } else { "denied" }
            );
        }
    }

    fn apply_file(&self, path: &Path) {
        assert!(path.is_file(), "{} is missing", path.display());
        self.strait(&["apply", "-f", path.to_str().unwrap()], None);
    }

    /// Applies one document of a multi-document file, unchanged.
    fn apply_doc(&self, doc: &str) {
        self.strait(&["apply", "-f", "-"], Some(doc));
    }

    /// `GET /productpage` through the gateway: (status, body).
    fn productpage(&self) -> (String, String) {
        let out = Command::new("curl")
            .args(["-s", "-o", "-", "-w", "\n%{http_code}", "--max-time", "10"])
            .arg(format!("http://{}:8080/productpage", self.listen))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.to_string(), body.to_string())
    }

    /// Loads the page until `ok` holds for 10 loads in a row (the policy has reached the
    /// proxies), within 30 s. In a row, not once: for a moment after an update, a connection
    /// the gateway opened before it may still be served with the filter chain it was accepted
    /// on (Envoy drains such connections over the sidecars' `--drain-time-s`, 2 s here), as
    /// with Istio.
    fn until(&self, step: &str, ok: impl Fn(&str, &str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut in_a_row = 0;
        let mut last_miss = None;
        while in_a_row < 10 {
            let (code, body) = self.productpage();
            if ok(&code, &body) {
                in_a_row += 1;
            } else {
                in_a_row = 0;
                last_miss = Some(format!("{code}\n{body}"));
            }
            assert!(
                Instant::now() < deadline,
                "{step}: within 30 s the page never showed what Istio's docs say 10 times in a row; last miss: {}",
                last_miss.as_deref().unwrap_or("none")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let status = self.spawned.stop();
        if !status.success() && !std::thread::panicking() {
            panic!("strait demo: {status}; stderr:\n{}", self.spawned.stderr());
        }
    }
}

fn samples() -> PathBuf {
    support::testdata().join("istio-samples")
}

/// The documents of a task file that has several, by `metadata.name`.
fn task_doc(file: &str, name: &str) -> String {
    let path = samples().join("tasks").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.split("\n---")
        .find(|d| {
            d.lines().any(|l| {
                l.trim() == format!("name: {name}") || l.trim() == format!("name: \"{name}\"")
            })
        })
        .unwrap_or_else(|| panic!("{} has no document named {name}", path.display()))
        .to_string()
}

#[test]
fn istios_authz_http_task_with_envoy() {
    let _one = support::platform::require_platform();
    support::platform::bookinfo_built();
    authz_http_task("envoy", "127.0.212.1");
}

#[test]
fn istios_authz_http_task_with_strait_proxy() {
    let _one = support::platform::require_platform();
    support::platform::bookinfo_built();
    authz_http_task("strait", "127.0.212.2");
}

fn authz_http_task(proxy: &str, listen: &str) {
    let demo = Demo::start(proxy, listen);
    let file = "authz-http/authz-http-bookinfo.yaml";
    demo.apply_file(&samples().join("bookinfo/networking/virtual-service-reviews-v3.yaml"));
    demo.until("before any policy", |code, body| {
        code == "200" && body.contains(RED_STARS) && !body.contains(DETAILS_ERROR)
    });
    demo.checks_agree("before any policy", &every_hop(true, true, true, true));

    demo.apply_doc(&task_doc(file, "allow-nothing"));
    demo.until("allow-nothing", |code, body| {
        code == "403" && body == ACCESS_DENIED
    });
    demo.checks_agree("allow-nothing", &every_hop(false, false, false, false)[..1]);

    demo.apply_doc(&task_doc(file, "productpage-viewer"));
    demo.until("productpage-viewer", |code, body| {
        code == "200" && body.contains(DETAILS_ERROR) && body.contains(REVIEWS_ERROR)
    });
    demo.checks_agree(
        "productpage-viewer",
        &every_hop(true, false, false, false)[..3],
    );

    demo.apply_doc(&task_doc(file, "details-viewer"));
    demo.apply_doc(&task_doc(file, "reviews-viewer"));
    demo.until("details-viewer and reviews-viewer", |code, body| {
        code == "200"
            && !body.contains(DETAILS_ERROR)
            && !body.contains(REVIEWS_ERROR)
            && body.contains("<h4>Book Details</h4>")
            && body.contains(RATINGS_UNAVAILABLE)
    });
    demo.checks_agree(
        "details-viewer and reviews-viewer",
        &every_hop(true, true, true, false),
    );

    demo.apply_doc(&task_doc(file, "ratings-viewer"));
    demo.until("ratings-viewer", |code, body| {
        code == "200" && body.contains(RED_STARS) && !body.contains(RATINGS_UNAVAILABLE)
    });
    demo.checks_agree("ratings-viewer", &every_hop(true, true, true, true));

    // Istio's cleanup: without the policies everything is allowed again.
    for name in [
        "allow-nothing",
        "productpage-viewer",
        "details-viewer",
        "reviews-viewer",
        "ratings-viewer",
    ] {
        demo.strait(
            &["delete", "authorizationpolicy", name, "-n", "default"],
            None,
        );
    }
    demo.until("policies deleted", |code, body| {
        code == "200" && body.contains(RED_STARS) && !body.contains(DETAILS_ERROR)
    });
    demo.checks_agree("policies deleted", &every_hop(true, true, true, true));
}

/// The hops of one page load, in order, with whether each was allowed: the gateway to
/// productpage, productpage to details and to reviews, reviews v3 to ratings. A page that
/// stops at a hop tells nothing of the later ones, so steps check a prefix.
fn every_hop(
    page: bool,
    details: bool,
    reviews: bool,
    ratings: bool,
) -> [(&'static str, &'static str, &'static str, bool); 4] {
    [
        (
            "istio-ingressgateway.istio-system",
            "productpage-v1",
            "/productpage",
            page,
        ),
        ("productpage-v1", "details-v1", "/details/0", details),
        ("productpage-v1", "reviews-v3", "/reviews/0", reviews),
        ("reviews-v3", "ratings-v1", "/ratings/0", ratings),
    ]
}

/// httpbin and sleep in `foo` with `proxy` sidecars, as Istio's authz-deny task sets them up.
struct Pods {
    cp: support::ControlPlane,
    pods: Vec<support::platform::Run>,
    _dir: tempfile::TempDir,
}

impl Pods {
    fn start(proxy: &str) -> Pods {
        use support::platform::{start, wait_workload_entry};
        let cp = support::ControlPlane::start_with(&[
            "--xds-addr",
            "0.0.0.0:0",
            "--tls-addr",
            "0.0.0.0:0",
        ]);
        let dir = tempfile::tempdir().unwrap();
        for file in ["httpbin/httpbin.yaml", "sleep/sleep.yaml"] {
            cp.ok(&[
                "apply",
                "-n",
                "foo",
                "-f",
                samples().join(file).to_str().unwrap(),
            ]);
        }
        let httpbin = support::fixture("httpbin.py").display().to_string();
        let mut pods = vec![
            start(
                &cp,
                &[
                    "run",
                    "--name",
                    "httpbin",
                    "-n",
                    "foo",
                    "--labels",
                    "app=httpbin,version=v1",
                    "--service-account",
                    "httpbin",
                    "--port",
                    "http:8080",
                    "--capture",
                    "iptables",
                    "--proxy",
                    proxy,
                    "--",
                    "python3",
                    &httpbin,
                ],
                dir.path(),
            ),
            start(
                &cp,
                &[
                    "run",
                    "--name",
                    "sleep",
                    "-n",
                    "foo",
                    "--labels",
                    "app=sleep",
                    "--service-account",
                    "sleep",
                    "--capture",
                    "iptables",
                    "--proxy",
                    proxy,
                    "--",
                    "sleep",
                    "3600",
                ],
                dir.path(),
            ),
        ];
        wait_workload_entry(&cp, &mut pods[0], "foo", "httpbin");
        wait_workload_entry(&cp, &mut pods[1], "foo", "sleep");
        Pods {
            cp,
            pods,
            _dir: dir,
        }
    }

    /// `curl -X METHOD http://httpbin.foo:8000PATH [-H x-token:TOKEN]` from sleep: (status, body).
    fn curl(&self, method: &str, path: &str, token: Option<&str>) -> (String, String) {
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            "strait-sleep.foo",
            "curl",
            "-s",
            "-X",
            method,
        ])
        .args(["-o", "-", "-w", "\n%{http_code}", "--max-time", "5"]);
        if let Some(t) = token {
            cmd.args(["-H", &format!("x-token: {t}")]);
        }
        let out = cmd
            .arg(format!("http://httpbin.foo:8000{path}"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.to_string(), body.to_string())
    }

    /// Waits (30 s at most) until every probe answers as Istio's docs say, 5 rounds in a row:
    /// `(method, path, token, status)`; a 403 must be Envoy's `RBAC: access denied`.
    fn expect(&self, step: &str, probes: &[(&str, &str, Option<&str>, &str)]) {
        let run = || -> Vec<String> {
            probes
                .iter()
                .map(|(m, p, t, _)| {
                    let (code, body) = self.curl(m, p, *t);
                    if code == "403" && body != ACCESS_DENIED {
                        format!("403 with {body:?}")
                    } else {
                        code
                    }
                })
                .collect()
        };
        let want: Vec<String> = probes.iter().map(|p| p.3.to_string()).collect();
        // 5 rounds in a row (see `Demo::until` on connections drained after an update).
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut in_a_row = 0;
        let mut got = Vec::new();
        while in_a_row < 5 && Instant::now() < deadline {
            got = run();
            in_a_row = if got == want { in_a_row + 1 } else { 0 };
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            in_a_row >= 5,
            "{step}: {probes:?} answered {got:?}, not 5 times in a row as Istio's docs say, within 30 s\n{}",
            self.cp
                .log()
                .lines()
                .rev()
                .take(20)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }

    fn apply_doc(&self, doc: &str) {
        let out = self
            .cp
            .cli_stdin(&["apply", "-f", "-"], Some(doc.as_bytes()));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Pods {
    fn drop(&mut self) {
        for p in &mut self.pods {
            p.stop();
        }
    }
}

#[test]
fn istios_authz_deny_task_with_envoy() {
    let _one = support::platform::require_platform();
    authz_deny_task("envoy");
}

#[test]
fn istios_authz_deny_task_with_strait_proxy() {
    let _one = support::platform::require_platform();
    support::platform::strait_proxy_built();
    authz_deny_task("strait");
}

fn authz_deny_task(proxy: &str) {
    let path = samples().join("tasks/authz-deny/authz-deny.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let docs: Vec<&str> = text.split("\n---").collect();
    assert_eq!(docs.len(), 3, "{}: three steps", path.display());
    let pods = Pods::start(proxy);
    pods.expect("no policy", &[("GET", "/ip", None, "200")]);

    pods.apply_doc(docs[0]);
    pods.expect(
        "deny-method-get",
        &[("GET", "/get", None, "403"), ("POST", "/post", None, "200")],
    );

    pods.apply_doc(docs[1]);
    pods.expect(
        "deny-method-get unless x-token admin",
        &[
            ("GET", "/get", Some("admin"), "200"),
            ("GET", "/get", Some("guest"), "403"),
        ],
    );

    pods.apply_doc(docs[2]);
    pods.expect(
        "and allow-path-ip",
        &[
            ("GET", "/ip", Some("guest"), "403"),
            ("GET", "/ip", Some("admin"), "200"),
            ("GET", "/get", Some("admin"), "403"),
        ],
    );
}
