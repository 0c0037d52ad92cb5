//! Istio's authz-custom task end to end (`tasks/authz-custom/authz-custom.yaml`, unchanged): the
//! CUSTOM action with an external authorizer, on each data plane.
//!
//! The mesh config is Istio's own ConfigMap fragment
//! (`istio-install/authz-custom/mesh-config-extension-providers.yaml`, given to
//! `strait control-plane --mesh-config`): providers `sample-ext-authz-grpc` (gRPC, port 9000)
//! and `sample-ext-authz-http` (HTTP, port 8000). httpbin and sleep run in `foo` with sidecars;
//! the authorizer is Istio's `samples/extauthz/ext-authz.yaml` (Service and Deployment applied
//! unchanged) run by the `ext-authz` stand-in (examples/ext-authz) in a pod without a sidecar.
//!
//! The task's steps, as its docs give them:
//! - no policy: `/ip` 200;
//! - the CUSTOM policy (provider `sample-ext-authz-grpc`, rule `paths: ["/headers"]`):
//!   `/headers` with `x-ext-authz: deny` is 403 with the authorizer's body; with
//!   `x-ext-authz: allow` 200, and httpbin echoes `X-Ext-Authz-Check-Result: allowed` (the
//!   authorizer's header, added by the proxy); `/ip` 200 without asking the authorizer: its log
//!   has exactly one `[gRPCv3][denied]` and one `[gRPCv3][allowed]` line, the denied one with
//!   sleep's identity from mutual TLS;
//! - the same with the policy switched to `sample-ext-authz-http` (as the task's YAML comment
//!   suggests): `[HTTP][denied]`/`[HTTP][allowed]`; the provider names no
//!   `headersToUpstreamOnAllow`, so none of the authorizer's headers reach httpbin.
//!
//! Needs root, iproute2, iptables, setpriv, curl and Envoy; fails (never skips) without.

use strait_e2e as support;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

const DENY_BODY: &str =
    "denied by ext_authz for not found header `x-ext-authz: allow` in the request";

fn samples() -> PathBuf {
    support::testdata().join("istio-samples")
}

/// httpbin, sleep and the authorizer in `foo`, with `proxy` sidecars on httpbin and sleep.
struct Pods {
    cp: support::ControlPlane,
    pods: Vec<support::platform::Run>,
    _dir: tempfile::TempDir,
}

impl Pods {
    fn start(proxy: &str) -> Pods {
        use support::platform::{start, wait_workload_entry};
        let mesh = support::testdata()
            .join("istio-install/authz-custom/mesh-config-extension-providers.yaml");
        let cp = support::ControlPlane::start_with(&[
            "--xds-addr",
            "0.0.0.0:0",
            "--tls-addr",
            "0.0.0.0:0",
            "--mesh-config",
            mesh.to_str().unwrap(),
        ]);
        let dir = tempfile::tempdir().unwrap();
        for file in [
            "httpbin/httpbin.yaml",
            "sleep/sleep.yaml",
            "extauthz/ext-authz.yaml",
        ] {
            cp.ok(&[
                "apply",
                "-n",
                "foo",
                "-f",
                samples().join(file).to_str().unwrap(),
            ]);
        }
        let httpbin = support::fixture("httpbin.py").display().to_string();
        let ext_authz = support::bin("ext-authz").display().to_string();
        let pod = |name: &str, labels: &str, sa: &str, ports: &[&str], cmd: &[&str]| {
            let mut args = vec![
                "run",
                "--name",
                name,
                "-n",
                "foo",
                "--labels",
                labels,
                "--service-account",
                sa,
                "--capture",
                "iptables",
                "--proxy",
                proxy,
            ];
            for p in ports {
                args.extend(["--port", p]);
            }
            args.push("--");
            args.extend(cmd);
            start(&cp, &args, dir.path())
        };
        let mut pods = vec![
            pod(
                "ext-authz",
                "app=ext-authz,sidecar.istio.io/inject=false",
                "default",
                &["http:8000", "grpc:9000"],
                &[&ext_authz],
            ),
            pod(
                "httpbin",
                "app=httpbin,version=v1",
                "httpbin",
                &["http:8080"],
                &["python3", &httpbin],
            ),
            pod("sleep", "app=sleep", "sleep", &[], &["sleep", "3600"]),
        ];
        wait_workload_entry(&cp, &mut pods[0], "foo", "ext-authz");
        wait_workload_entry(&cp, &mut pods[1], "foo", "httpbin");
        wait_workload_entry(&cp, &mut pods[2], "foo", "sleep");
        Pods {
            cp,
            pods,
            _dir: dir,
        }
    }

    /// `curl http://httpbin.foo:8000PATH [-H x-ext-authz:V]` from sleep: (status, body).
    fn curl(&self, path: &str, ext_authz: Option<&str>) -> (String, String) {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", "strait-sleep.foo", "curl", "-s"])
            .args(["-o", "-", "-w", "\n%{http_code}", "--max-time", "5"]);
        if let Some(v) = ext_authz {
            cmd.args(["-H", &format!("x-ext-authz: {v}")]);
        }
        let out = cmd
            .arg(format!("http://httpbin.foo:8000{path}"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.to_string(), body.to_string())
    }

    /// Waits (30 s at most) until `probe` holds.
    fn until(&self, step: &str, probe: impl Fn() -> Result<(), String>) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = probe();
            let Err(why) = got else { return };
            assert!(
                Instant::now() < deadline,
                "{step}: {why} within 30 s\ncontrol plane:\n{}",
                self.cp
                    .log()
                    .lines()
                    .rev()
                    .take(20)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn apply(&self, doc: &str) {
        let out = self
            .cp
            .cli_stdin(&["apply", "-n", "foo", "-f", "-"], Some(doc.as_bytes()));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The authorizer's log lines since the last call.
    fn authorizer_log(&mut self) -> Vec<String> {
        self.pods[0].new_lines()
    }

    /// One policy step: the task's three probes once the policy is in force, and the
    /// authorizer asked exactly twice (`tag`: `gRPCv3` or `HTTP`).
    fn custom_step(&mut self, step: &str, tag: &str) {
        // In force: a denial with the authorizer's body, from this provider's server, 5 times
        // in a row (a proxy's workers take a listener update one after the other: Envoy's
        // connections may reach the old listener for a moment).
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut in_a_row = 0;
        loop {
            let got = self.curl("/headers", Some("deny"));
            std::thread::sleep(Duration::from_millis(100));
            let log = self.authorizer_log();
            let ok = got.0 == "403"
                && got.1 == DENY_BODY
                && log.iter().any(|l| l.contains(&format!("[{tag}][denied]")));
            in_a_row = if ok { in_a_row + 1 } else { 0 };
            if in_a_row == 5 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{step}: /headers x-ext-authz: deny answered {got:?} (authorizer log {log:?}), \
                 not {tag}'s denial within 30 s\ncontrol plane:\n{}",
                self.cp
                    .log()
                    .lines()
                    .rev()
                    .take(20)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        // The listener was updated in place: connections the client's sidecar opened before
        // (pooled, on the old filter chain, without the policy) last until the server's drain
        // time (2 s, `strait run`'s sidecars) has passed. Then count only what follows, once
        // the waiting probes' log lines have arrived.
        std::thread::sleep(Duration::from_secs(3));
        self.authorizer_log();

        let (code, body) = self.curl("/headers", Some("deny"));
        assert_eq!(
            (code.as_str(), body.as_str()),
            ("403", DENY_BODY),
            "{step}: x-ext-authz: deny"
        );
        let (code, body) = self.curl("/headers", Some("allow"));
        assert_eq!(code, "200", "{step}: x-ext-authz: allow: {body}");
        let echoed: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{step}: /headers is not httpbin's JSON ({e}): {body}"));
        // gRPC: the OK response's headers are set on the request. HTTP: only the headers
        // `headersToUpstreamOnAllow` names, and the task's provider names none.
        let check_result = &echoed["headers"]["X-Ext-Authz-Check-Result"];
        if tag == "gRPCv3" {
            assert_eq!(
                check_result, "allowed",
                "{step}: the authorizer's header reaches httpbin: {body}"
            );
        } else {
            assert!(
                check_result.is_null(),
                "{step}: no headersToUpstreamOnAllow, so none of the authorizer's headers reach httpbin: {body}"
            );
        }
        assert_eq!(echoed["headers"]["X-Ext-Authz"], "allow", "{body}");
        let (code, body) = self.curl("/ip", None);
        assert_eq!(
            code, "200",
            "{step}: /ip is not under the CUSTOM rule: {body}"
        );

        std::thread::sleep(Duration::from_millis(500));
        let log = self.authorizer_log();
        let count = |what: &str| {
            log.iter()
                .filter(|l| l.contains(&format!("[{tag}][{what}]")))
                .count()
        };
        assert_eq!(
            (count("denied"), count("allowed")),
            (1, 1),
            "{step}: the authorizer is asked once per /headers request and never for /ip: {log:#?}"
        );
        assert!(
            log.iter().all(|l| !l.contains("/ip")),
            "{step}: /ip reached the authorizer: {log:#?}"
        );
        if tag == "gRPCv3" {
            let denied = log.iter().find(|l| l.contains("[gRPCv3][denied]")).unwrap();
            assert!(
                denied.contains("spiffe://cluster.local/ns/foo/sa/sleep")
                    && denied.contains("httpbin.foo:8000/headers"),
                "{step}: the check names the request and sleep's identity: {denied}"
            );
        }
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
fn istios_authz_custom_task_with_envoy() {
    let _one = support::platform::require_platform();
    authz_custom_task("envoy");
}

#[test]
fn istios_authz_custom_task_with_strait_proxy() {
    let _one = support::platform::require_platform();
    support::platform::strait_proxy_built();
    authz_custom_task("strait");
}

fn authz_custom_task(proxy: &str) {
    let path = samples().join("tasks/authz-custom/authz-custom.yaml");
    let policy = std::fs::read_to_string(&path).unwrap();
    assert!(
        policy.contains("name: sample-ext-authz-grpc"),
        "{}: the task's policy names the gRPC provider",
        path.display()
    );
    let mut pods = Pods::start(proxy);
    pods.until("no policy", || match pods.curl("/ip", None) {
        (c, _) if c == "200" => Ok(()),
        other => Err(format!("/ip answered {other:?}")),
    });

    pods.apply(&policy);
    pods.custom_step("CUSTOM with sample-ext-authz-grpc", "gRPCv3");
    // `strait authz check` says so without sending anything: /headers goes to the authorizer
    // (exit 4), /ip matches no CUSTOM rule and is allowed (exit 0).
    let check = |path: &str| {
        let out = pods.cp.cli(&[
            "authz",
            "check",
            "--from",
            "sleep.foo",
            "--to",
            "httpbin.foo",
            "--path",
            path,
        ]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    let (code, text) = check("/headers");
    assert!(
        code == Some(4)
            && text.starts_with("CUSTOM GET /headers")
            && text.contains("CUSTOM rule matched: foo/ext-authz rule 0")
            && text
                .contains("http ext_authz outbound|9000||ext-authz.foo.svc.cluster.local: called")
            && text
                .contains("external authorizer at outbound|9000||ext-authz.foo.svc.cluster.local"),
        "{proxy}: authz check /headers exited {code:?}:\n{text}"
    );
    let (code, text) = check("/ip");
    assert!(
        code == Some(0) && text.starts_with("ALLOW GET /ip") && text.contains("not called"),
        "{proxy}: authz check /ip exited {code:?}:\n{text}"
    );

    // The task's comment: "You can also replace this with sample-ext-authz-http".
    pods.apply(&policy.replace("name: sample-ext-authz-grpc", "name: sample-ext-authz-http"));
    pods.custom_step("CUSTOM with sample-ext-authz-http", "HTTP");
}
