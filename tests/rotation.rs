//! Certificate rotation under load: two pods with 30-second workload certificates (a lifetime the
//! CA allows for tests) and steady mutual-TLS traffic between them for two minutes: no request
//! fails, and each proxy serves at least three new certificates (new serials) meanwhile.
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
        with urllib.request.urlopen("http://web:8000/ip", timeout=5) as r:
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

#[test]
fn certificates_rotate_under_load_without_failed_requests_envoy() {
    let _one = require_platform();
    rotation("envoy");
}

fn rotation(proxy: &str) {
    strait_proxy_built();
    let cp = ControlPlane::start_with(&["--xds-addr", "0.0.0.0:0", "--tls-addr", "0.0.0.0:0"]);
    let dir = tempfile::tempdir().unwrap();
    let svc = dir.path().join("web.yaml");
    std::fs::write(
        &svc,
        "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  selector: {app: web}\n  ports:\n  - {name: http, port: 8000, targetPort: 8080}\n",
    )
    .unwrap();
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
    let mut web = start(
        &cp,
        &[
            "run",
            "--name",
            "web",
            "--labels",
            "app=web",
            "--service-account",
            "web",
            "--port",
            "http:8080",
            "--capture",
            "iptables",
            "--proxy",
            proxy,
            "--cert-ttl",
            "30s",
            "--",
            "python3",
            &httpbin,
        ],
        dir.path(),
    );
    let web_we = wait_workload_entry(&cp, &mut web, "default", "web");
    let seconds = 120;
    let mut client = start(
        &cp,
        &[
            "run",
            "--name",
            "client",
            "--labels",
            "app=client",
            "--service-account",
            "client",
            "--capture",
            "iptables",
            "--proxy",
            proxy,
            "--cert-ttl",
            "30s",
            "--",
            "env",
            &format!("DURATION={seconds}"),
            "python3",
            "-c",
            CLIENT,
        ],
        dir.path(),
    );
    let client_we = wait_workload_entry(&cp, &mut client, "default", "client");
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
    let mut serials: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let mut output: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(seconds + 30);
    let result = loop {
        for (name, admin) in &admins {
            if let Some(s) = serial(admin) {
                serials.entry(name).or_default().insert(s);
            }
        }
        output.extend(client.new_lines());
        if let Some(line) = output.iter().find(|l| l.starts_with("RESULT ")) {
            break line.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the client did not finish; its output:\n{}\nstderr:\n{}",
            output.join("\n"),
            client.stderr()
        );
        std::thread::sleep(Duration::from_secs(2));
    };
    let parts: Vec<&str> = result.splitn(4, ' ').collect();
    let (ok, failed): (u64, u64) = (parts[1].parse().unwrap(), parts[2].parse().unwrap());
    assert!(ok > 500, "too few requests went through: {result}");
    assert_eq!(failed, 0, "requests failed during rotation: {result}");
    for name in ["web", "client"] {
        let seen = serials.get(name).cloned().unwrap_or_default();
        assert!(
            seen.len() >= 4,
            "{name}'s proxy served {} certificate(s) in {seconds} s with 30 s certificates ({seen:?}); \
             expected the first and at least three renewals",
            seen.len()
        );
    }
    eprintln!(
        "{proxy}: {ok} requests, none failed; serials per proxy: {:?}",
        serials
            .iter()
            .map(|(k, v)| (k, v.len()))
            .collect::<Vec<_>>()
    );
    client.stop();
    web.stop();
}
