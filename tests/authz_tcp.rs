//! Istio's authz-tcp task end to end (`tasks/authz-tcp/authz-tcp.yaml`, its YAML unchanged):
//! tcp-echo and sleep in `foo` as pods with sidecars (network namespaces, iptables capture,
//! identities and mutual TLS between the sidecars), Istio's `samples/tcp-echo/tcp-echo.yaml` and
//! `samples/sleep/sleep.yaml` applied as they are. tcp-echo's Service declares 9000 and 9001;
//! its app also listens on 9002, which no Service names: a connection there takes the server
//! sidecar's inbound passthrough chain, which enforces the policy too.
//!
//! The probe is the task's `echo "port N" | nc tcp-echo N` from sleep (9002 dialled at the
//! pod's address): "hello port N" means the connection went through, anything else (closed
//! without an answer) that it was rejected. Each step, with the outcomes Istio's docs give:
//! - no policy: 9000, 9001 and 9002 connect;
//! 1. ALLOW `ports: ["9000", "9001"]`: 9000 and 9001 connect, 9002 is rejected;
//! 2. ALLOW `methods: ["GET"]` and `ports: ["9000"]`: `methods` is HTTP-only, so on TCP the rule
//!    matches nothing: every port is rejected;
//! 3. DENY `methods: ["GET"]`: a DENY rule ignores its HTTP-only fields, so it matches every
//!    connection: every port is rejected;
//! 4. DENY `methods: ["GET"]` and `ports: ["9000"]`: only 9000 is rejected.
//!
//! Istio's docs probe 9002 only in step 1; its outcome in the others follows from the same rules
//! (the passthrough chain has the same policies) and is checked too. Each rejection is also
//! checked where the server sidecar records it: Envoy's `tcp.rbac.denied` counter (the network
//! RBAC filter's stat prefix is Istio's `tcp.`), strait-proxy's log line naming the policy. At
//! every step `strait authz check` decides each port as the sidecar did.
//!
//! Both data planes, one after the other (the pods take the machine's bridge one test at a
//! time). Needs root, iproute2, iptables, setpriv, python3 and Envoy; fails (never skips)
//! without.

use strait_e2e as support;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use support::platform::{Run, start, wait_workload_entry};

/// The task's probe from sleep's namespace, once per `HOST PORT` pair: connect, send
/// `port N` and a newline, print the first line of the answer, `closed` when the connection
/// closes without one, `error NAME` when it cannot connect or times out.
const PROBE: &str = r#"
import socket, sys
args = sys.argv[1:]
for host, port in zip(args[::2], args[1::2]):
    try:
        s = socket.create_connection((host, int(port)), timeout=3)
        s.sendall(f"port {port}\n".encode())
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(256)
            if not chunk:
                break
            data += chunk
        s.close()
        print(data.decode(errors="replace").strip() or "closed")
    except Exception as e:
        print(f"error {type(e).__name__}")
"#;

fn samples() -> PathBuf {
    support::testdata().join("istio-samples")
}

/// tcp-echo and sleep in `foo` with `proxy` sidecars, as the task sets them up.
struct Pods {
    proxy: &'static str,
    cp: support::ControlPlane,
    pods: Vec<Run>,
    /// tcp-echo's pod address (9002 is dialled there).
    echo_ip: String,
    _dir: tempfile::TempDir,
}

impl Pods {
    fn start(proxy: &'static str) -> Pods {
        let cp = support::ControlPlane::start_with(&[
            "--xds-addr",
            "0.0.0.0:0",
            "--tls-addr",
            "0.0.0.0:0",
        ]);
        let dir = tempfile::tempdir().unwrap();
        for file in ["tcp-echo/tcp-echo.yaml", "sleep/sleep.yaml"] {
            cp.ok(&[
                "apply",
                "-n",
                "foo",
                "-f",
                samples().join(file).to_str().unwrap(),
            ]);
        }
        let echo = support::fixture("tcp_echo.py").display().to_string();
        // The Deployment's pod: labels, containerPorts 9000 and 9001 (as the Service names
        // them), the app's args `["9000,9001,9002", "hello"]`; no service account, so
        // `default`.
        let mut pods = vec![
            start(
                &cp,
                &[
                    "run",
                    "--name",
                    "tcp-echo",
                    "-n",
                    "foo",
                    "--labels",
                    "app=tcp-echo,version=v1",
                    "--port",
                    "tcp:9000",
                    "--port",
                    "tcp-other:9001",
                    "--capture",
                    "iptables",
                    "--proxy",
                    proxy,
                    "--",
                    "python3",
                    &echo,
                    "9000,9001,9002",
                    "hello",
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
        let we = wait_workload_entry(&cp, &mut pods[0], "foo", "tcp-echo");
        wait_workload_entry(&cp, &mut pods[1], "foo", "sleep");
        let echo_ip = we["spec"]["address"]
            .as_str()
            .unwrap_or_else(|| panic!("tcp-echo's WorkloadEntry has no spec.address: {we}"))
            .to_string();
        Pods {
            proxy,
            cp,
            pods,
            echo_ip,
            _dir: dir,
        }
    }

    /// One round of the task's probe: for 9000, 9001 (at `tcp-echo`) and 9002 (at the pod's
    /// address), whether the answer was `hello port N`, and what came back.
    fn probe(&self) -> ([bool; 3], Vec<String>) {
        let out = Command::new("ip")
            .args(["netns", "exec", "strait-sleep.foo", "python3", "-c", PROBE])
            .args([
                "tcp-echo",
                "9000",
                "tcp-echo",
                "9001",
                &self.echo_ip,
                "9002",
            ])
            .output()
            .expect("run `ip netns exec strait-sleep.foo python3`");
        let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        assert_eq!(
            lines.len(),
            3,
            "the probe from sleep answered {lines:?}; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ok = [
            lines[0] == "hello port 9000",
            lines[1] == "hello port 9001",
            lines[2] == "hello port 9002",
        ];
        (ok, lines)
    }

    /// Waits (30 s at most) until the probe answers as Istio's docs say (`want`: whether 9000,
    /// 9001 and 9002 connect), 5 rounds in a row: a connection accepted before an update may
    /// still be served with the filter chain it was accepted on for a moment.
    fn expect(&self, step: &str, want: [bool; 3]) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut in_a_row = 0;
        while in_a_row < 5 {
            let (got, last) = self.probe();
            in_a_row = if got == want { in_a_row + 1 } else { 0 };
            assert!(
                in_a_row >= 5 || Instant::now() < deadline,
                "{} {step}: ports 9000, 9001, 9002 should {}; within 30 s they never did 5 \
                 times in a row; last answers: {last:?}\nthe tcp-echo sidecar's log:\n{}",
                self.proxy,
                describe(want),
                self.echo_proxy_log_tail()
            );
            if in_a_row < 5 {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        // `strait authz check` decides each port as the server sidecar did.
        for (port, connected) in [9000, 9001, 9002].into_iter().zip(want) {
            let (allowed, text) = self.authz_check(port);
            assert_eq!(
                allowed,
                connected,
                "{} {step}: the tcp-echo sidecar {} port {port}, strait authz check says \
                 otherwise:\n{text}",
                self.proxy,
                if connected { "allowed" } else { "refused" }
            );
        }
    }

    /// `strait authz check --from sleep.foo --to tcp-echo.foo --port PORT -o json`: whether the
    /// control plane says tcp-echo's sidecar lets the connection through, with its answer.
    fn authz_check(&self, port: u16) -> (bool, String) {
        let port_text = port.to_string();
        let out = self.cp.cli(&[
            "authz",
            "check",
            "--from",
            "sleep.foo",
            "--to",
            "tcp-echo.foo",
            "--port",
            &port_text,
            "-o",
            "json",
        ]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("strait authz check --port {port}: not JSON ({e}): {text}"));
        let allowed = v["allowed"]
            .as_bool()
            .unwrap_or_else(|| panic!("strait authz check --port {port}: no `allowed`: {text}"));
        assert_eq!(
            out.status.code(),
            Some(if allowed { 0 } else { 3 }),
            "exit code 0 when allowed, 3 when denied: {text}"
        );
        (allowed, text)
    }

    /// Applies one document of the task file, unchanged.
    fn apply_doc(&self, doc: &str) {
        let out = self
            .cp
            .cli_stdin(&["apply", "-f", "-"], Some(doc.as_bytes()));
        assert!(
            out.status.success(),
            "strait apply: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The tcp-echo sidecar's log (strait-proxy's, or Envoy's), as `strait run` writes it.
    fn echo_proxy_log(&self) -> String {
        let path = support::platform::run_dir().join("tcp-echo.foo.d/proxy.log");
        std::fs::read_to_string(&path).unwrap_or_else(|e| format!("({}: {e})", path.display()))
    }

    fn echo_proxy_log_tail(&self) -> String {
        let log = self.echo_proxy_log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// How many connections the tcp-echo sidecar closed for its policy so far: Envoy's
    /// `tcp.rbac.denied`, or strait-proxy's log lines `connection denied by RBAC`, with the
    /// explanation of each (strait-proxy only).
    fn denials(&self) -> (u64, Vec<String>) {
        if self.proxy == "envoy" {
            // Envoy's admin, from inside the pod. The counter appears with the first RBAC
            // filter (none before the first policy).
            let url = format!("http://{}:15000/stats?filter=rbac", self.echo_ip);
            let out = Command::new("ip")
                .args(["netns", "exec", "strait-tcp-echo.foo", "curl", "-sS"])
                .args(["--max-time", "5", &url])
                .output()
                .expect("run `ip netns exec strait-tcp-echo.foo curl`");
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            assert!(
                out.status.success(),
                "{url}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let n = text
                .lines()
                .find_map(|l| l.strip_prefix("tcp.rbac.denied: "))
                .map_or(0, |n| {
                    n.trim()
                        .parse()
                        .unwrap_or_else(|e| panic!("{url}: tcp.rbac.denied: {n:?}: {e}"))
                });
            (n, Vec::new())
        } else {
            let lines: Vec<String> = self
                .echo_proxy_log()
                .lines()
                .filter(|l| l.contains("connection denied by RBAC"))
                .map(str::to_string)
                .collect();
            (lines.len() as u64, lines)
        }
    }

    /// The rejections of a step were the server sidecar's policy: it counted more denials than
    /// before, and (strait-proxy) a new log line names the deciding policy: says `explains`.
    fn denied_by_policy(&self, step: &str, before: (u64, Vec<String>), explains: &str) {
        let (n, lines) = self.denials();
        assert!(
            n > before.0,
            "{} {step}: connections were rejected, but the tcp-echo sidecar counted no new \
             RBAC denial ({} before, {n} now)\n{}",
            self.proxy,
            before.0,
            self.echo_proxy_log_tail()
        );
        // Some of the new lines may be the previous step's policy, still in force for the
        // first probes after the update; the step's own is among them.
        let new = &lines[before.1.len().min(lines.len())..];
        assert!(
            self.proxy == "envoy" || new.iter().any(|l| l.contains(explains)),
            "{} {step}: no new denial's log line says {explains:?}:\n{}",
            self.proxy,
            new.join("\n")
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

fn describe(want: [bool; 3]) -> String {
    want.iter()
        .map(|ok| if *ok { "connect" } else { "be rejected" })
        .collect::<Vec<_>>()
        .join(", ")
}

#[test]
fn istios_authz_tcp_task_with_envoy() {
    let _one = support::platform::require_platform();
    authz_tcp_task("envoy");
}

#[test]
fn istios_authz_tcp_task_with_strait_proxy() {
    let _one = support::platform::require_platform();
    support::platform::strait_proxy_built();
    authz_tcp_task("strait");
}

fn authz_tcp_task(proxy: &'static str) {
    let path = samples().join("tasks/authz-tcp/authz-tcp.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let docs: Vec<&str> = text.split("\n---").collect();
    assert_eq!(docs.len(), 4, "{}: four steps", path.display());
    let pods = Pods::start(proxy);
    pods.expect("no policy", [true, true, true]);

    let before = pods.denials();
    pods.apply_doc(docs[0]);
    pods.expect("step 1, ALLOW ports 9000 and 9001", [true, true, false]);
    pods.denied_by_policy(
        "step 1",
        before,
        "no ALLOW policy matched (foo/tcp-policy rule 0: ",
    );

    let before = pods.denials();
    pods.apply_doc(docs[1]);
    pods.expect(
        "step 2, ALLOW methods GET on port 9000 (HTTP-only: matches nothing on TCP)",
        [false, false, false],
    );
    // The rule was left out for TCP: the ALLOW filter has no policy.
    pods.denied_by_policy(
        "step 2",
        before,
        "no ALLOW policy matched (there are no policies to match)",
    );

    let before = pods.denials();
    pods.apply_doc(docs[2]);
    pods.expect(
        "step 3, DENY methods GET (HTTP-only: ignored on TCP, so every connection)",
        [false, false, false],
    );
    pods.denied_by_policy(
        "step 3",
        before,
        "DENY policy foo/tcp-policy rule 0 matched",
    );

    let before = pods.denials();
    pods.apply_doc(docs[3]);
    pods.expect("step 4, DENY methods GET on port 9000", [false, true, true]);
    pods.denied_by_policy(
        "step 4",
        before,
        "DENY policy foo/tcp-policy rule 0 matched",
    );
}
