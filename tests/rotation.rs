//! Certificate rotation under load: per data plane, two pods with 30-second workload certificates
//! (a lifetime the CA allows for tests) and steady mutual-TLS traffic between them for two
//! minutes: no request fails, and each proxy serves at least three new certificates (new
//! serials) meanwhile. Envoy's pair and strait-proxy's run side by side in the same minutes.
//!
//! Needs root, iproute2, iptables, setpriv, python3 and Envoy; fails (never skips) without.

use strait_e2e as support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::platform::{require_platform, start, strait_proxy_built, wait_workload_entry};
use support::{ControlPlane, fixture, testdata};

/// The client: GET /ip on web every 50 ms for DURATION seconds, a new connection each time (so
/// that handshakes keep happening across rotations), then one line of results.
const CLIENT: &str = r#"
import os, time, urllib.request
end = time.time() + float(os.environ["DURATION"])
ok = failed = 0
errors = []
while time.time() < end:
    try:
        with urllib.request.urlopen(os.environ["TARGET"], timeout=5) as r:
            if r.status == 200:
                ok += 1
            else:
                failed += 1
                errors.append(str(r.status))
    except Exception as e:
        failed += 1
        errors.append(repr(e)[:200])
    time.sleep(0.05)
print("RESULT", ok, failed, errors[:5], flush=True)
time.sleep(3600)
"#;

/// The serial of the workload certificate a proxy serves, from its admin `/certs` (Envoy's
/// JSON, which strait-proxy serves too).
fn serial(admin: &str) -> Option<String> {
    let body = ureq_get(&format!("http://{admin}/certs"))?;
    let v: Value = serde_json::from_str(&body).ok()?;
    v["certificates"]
        .as_array()?
        .iter()
        .flat_map(|c| c["cert_chain"].as_array().cloned().unwrap_or_default())
        .find(|c| {
            c["subject_alt_names"].as_array().is_some_and(|s| {
                s.iter().any(|n| {
                    n["uri"]
                        .as_str()
                        .is_some_and(|u| u.starts_with("spiffe://"))
                })
            })
        })
        .and_then(|c| c["serial_number"].as_str().map(str::to_string))
}

fn ureq_get(url: &str) -> Option<String> {
    let out = std::process::Command::new("curl")
        .args(["-s", "--max-time", "2", url])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).to_string())
}

/// Both data planes at once, each a pair of its own (`web-envoy` ← `client-envoy`,
/// `web-strait` ← `client-strait`), in the same two minutes.
#[test]
fn certificates_rotate_under_load_without_failed_requests_on_both_data_planes() {
    let _one = require_platform();
    rotation(&["envoy", "strait"]);
}

/// A pod of the test: `NAME-PROXY` with its label and service account, and 30 s certificates.
fn pod(
    cp: &ControlPlane,
    dir: &std::path::Path,
    name: &str,
    proxy: &str,
    extra: &[&str],
    cmd: &[&str],
) -> support::platform::Run {
    let pod = format!("{name}-{proxy}");
    let label = format!("app={pod}");
    let mut args: Vec<&str> = vec![
        "run",
        "--name",
        &pod,
        "--labels",
        &label,
        "--service-account",
        &pod,
        "--capture",
        "iptables",
        "--proxy",
        proxy,
        "--cert-ttl",
        "30s",
    ];
    args.extend(extra);
    args.push("--");
    args.extend(cmd);
    start(cp, &args, dir)
}

fn rotation(proxies: &[&str]) {
    strait_proxy_built();
    let cp = ControlPlane::start_with(&["--xds-addr", "0.0.0.0:0", "--tls-addr", "0.0.0.0:0"]);
    let dir = tempfile::tempdir().unwrap();
    let svc = dir.path().join("web.yaml");
    let services: Vec<String> = proxies
        .iter()
        .map(|p| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: web-{p}}}\nspec:\n  selector: {{app: web-{p}}}\n  ports:\n  - {{name: http, port: 8000, targetPort: 8080}}\n"
            )
        })
        .collect();
    std::fs::write(&svc, services.join("---\n")).unwrap();
    cp.ok(&["apply", "-f", svc.to_str().unwrap()]);
    // Mesh-wide STRICT: every request must be mutual TLS.
    cp.ok(&[
        "apply",
        "-f",
        testdata()
            .join("istio-samples/tasks/authn-policy/01-mesh-strict.yaml")
            .to_str()
            .unwrap(),
    ]);
    let httpbin = fixture("httpbin.py").display().to_string();
    let seconds = 120;
    let duration = format!("DURATION={seconds}");
    let mut pairs = Vec::new();
    for proxy in proxies {
        let mut web = pod(
            &cp,
            dir.path(),
            "web",
            proxy,
            &["--port", "http:8080"],
            &["python3", &httpbin],
        );
        let web_we = wait_workload_entry(&cp, &mut web, "default", &format!("web-{proxy}"));
        pairs.push((*proxy, web, web_we));
    }
    let mut runs = Vec::new();
    for (proxy, web, web_we) in pairs {
        let target = format!("TARGET=http://web-{proxy}:8000/ip");
        let mut client = pod(
            &cp,
            dir.path(),
            "client",
            proxy,
            &[],
            &["env", &duration, &target, "python3", "-c", CLIENT],
        );
        let client_we =
            wait_workload_entry(&cp, &mut client, "default", &format!("client-{proxy}"));
        let admins: BTreeMap<&str, String> = [
            (
                "web",
                format!("{}:15000", web_we["spec"]["address"].as_str().unwrap()),
            ),
            (
                "client",
                format!("{}:15000", client_we["spec"]["address"].as_str().unwrap()),
            ),
        ]
        .into();
        runs.push(Rotating {
            proxy,
            web,
            client,
            admins,
            serials: BTreeMap::new(),
            output: Vec::new(),
            result: None,
        });
    }
    let deadline = Instant::now() + Duration::from_secs(seconds + 30);
    while runs.iter().any(|r| r.result.is_none()) {
        for r in runs.iter_mut().filter(|r| r.result.is_none()) {
            for (name, admin) in &r.admins {
                if let Some(s) = serial(admin) {
                    r.serials.entry(name).or_default().insert(s);
                }
            }
            r.output.extend(r.client.new_lines());
            r.result = r.output.iter().find(|l| l.starts_with("RESULT ")).cloned();
            assert!(
                r.result.is_some() || Instant::now() < deadline,
                "{}: the client did not finish; its output:\n{}\nstderr:\n{}",
                r.proxy,
                r.output.join("\n"),
                r.client.stderr()
            );
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    for mut r in runs {
        let proxy = r.proxy;
        let result = r.result.clone().unwrap();
        let parts: Vec<&str> = result.splitn(4, ' ').collect();
        let (ok, failed): (u64, u64) = (parts[1].parse().unwrap(), parts[2].parse().unwrap());
        assert!(ok > 500, "{proxy}: too few requests went through: {result}");
        assert_eq!(
            failed, 0,
            "{proxy}: requests failed during rotation: {result}"
        );
        for name in ["web", "client"] {
            let seen = r.serials.get(name).cloned().unwrap_or_default();
            assert!(
                seen.len() >= 4,
                "{proxy}: {name}'s proxy served {} certificate(s) in {seconds} s with 30 s certificates ({seen:?}); \
                 expected the first and at least three renewals",
                seen.len()
            );
        }
        eprintln!(
            "{proxy}: {ok} requests, none failed; serials per proxy: {:?}",
            r.serials
                .iter()
                .map(|(k, v)| (k, v.len()))
                .collect::<Vec<_>>()
        );
        r.client.stop();
        r.web.stop();
    }
}

/// One data plane's pair while it runs.
struct Rotating<'a> {
    proxy: &'a str,
    web: support::platform::Run,
    client: support::platform::Run,
    admins: BTreeMap<&'static str, String>,
    serials: BTreeMap<&'static str, BTreeSet<String>>,
    output: Vec<String>,
    result: Option<String>,
}
