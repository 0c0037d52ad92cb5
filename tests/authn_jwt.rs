//! Istio's RequestAuthentication end to end, with Istio's YAML unchanged, on each data plane:
//!
//! - the authz-jwt task (`tasks/authz-jwt/authz-jwt.yaml`): httpbin and sleep in `foo` with
//!   sidecars; from sleep, `curl http://httpbin.foo:8000/headers`: `Bearer invalidToken` 401,
//!   no token 200; require-jwt: TOKEN 200, no token 403; the groups claim: TOKEN_GROUP 200,
//!   TOKEN 403;
//! - authn-policy steps 06–09 (`tasks/authn-policy`): httpbin behind the ingress gateway
//!   (`strait gateway` on 127.0.16.1:80); RequestAuthentication on the gateway: no token 200,
//!   `Bearer deadbeef` 401, demo.jwt 200, an expired token 401; DENY notRequestPrincipals:
//!   no token 403; per path: /headers 403, /ip 200.
//!
//! The policies name `jwksUri`s on raw.githubusercontent.com; this machine has no internet, so
//! the control plane fetches them from a stand-in (`--jwks-resolve HOST:443=127.0.0.1:PORT`,
//! `--jwks-ca`): `fixtures/jwks_server.py` serving over HTTPS, with a certificate for
//! raw.githubusercontent.com from a test CA, `jwt-samples/jwks.json`'s key plus one test key
//! (Istio's signing key is not in the samples), with which the test signs its expired token.
//!
//! Needs root, iproute2, iptables, setpriv, python3, curl, openssl and Envoy; fails (never
//! skips) without.

use strait_e2e as support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::platform::{Run, require_platform, start, strait_proxy_built, wait_workload_entry};
use support::tls::{readable_by_all, require_tools, shell};
use support::{ControlPlane, fixture, testdata};

const ISSUER: &str = "testing@secure.istio.io";
const GATEWAY_HOST: &str = "127.0.16.1";
/// Pod names of their own (the services are Istio's `httpbin` and `sleep`, selected by label),
/// so that these pods never collide with another suite's `httpbin.foo` on the same machine.
const HTTPBIN_POD: &str = "httpbin-jwt";
const SLEEP_POD: &str = "sleep-jwt";
const GATEWAY_POD: &str = "ingressgateway-jwt";
const SLEEP_NETNS: &str = "strait-sleep-jwt.foo";
const MISSING_REALM: &str = "Bearer realm=\"http://httpbin.foo:8000/headers\"";

fn sample(path: &str) -> PathBuf {
    testdata().join("istio-samples").join(path)
}

fn jwt_sample(file: &str) -> String {
    std::fs::read_to_string(sample(&format!("jwt-samples/{file}")))
        .unwrap()
        .trim()
        .to_string()
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The stand-in JWKS host and the expired token signed with its extra key.
struct JwksHost {
    server: Child,
    port: u16,
    dir: tempfile::TempDir,
    expired: String,
}

impl JwksHost {
    fn start() -> JwksHost {
        require_tools();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("san.ext"),
            "subjectAltName=DNS:raw.githubusercontent.com\n",
        )
        .unwrap();
        shell(
            dir.path(),
            &[
                "openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 \
                 -subj /CN=strait-test-jwks-ca -addext basicConstraints=critical,CA:TRUE \
                 -addext keyUsage=critical,keyCertSign",
                "openssl req -newkey rsa:2048 -nodes -keyout host.key -out host.csr \
                 -subj /CN=raw.githubusercontent.com",
                "openssl x509 -req -in host.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
                 -out host.pem -days 2 -extfile san.ext",
                "openssl genrsa -out jwt.key 2048",
                "openssl rsa -in jwt.key -noout -modulus > jwt.modulus",
            ],
        );
        let modulus = std::fs::read_to_string(dir.path().join("jwt.modulus")).unwrap();
        let hex = modulus.trim().trim_start_matches("Modulus=");
        let n: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let mut jwks: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(sample("jwt-samples/jwks.json")).unwrap(),
        )
        .unwrap();
        jwks["keys"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({
                "kty": "RSA", "alg": "RS256", "kid": "strait-test", "e": "AQAB", "n": b64(&n)
            }));
        std::fs::write(dir.path().join("jwks.json"), jwks.to_string()).unwrap();

        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let header = b64(br#"{"alg":"RS256","kid":"strait-test","typ":"JWT"}"#);
        let payload = b64(serde_json::json!({
            "iss": ISSUER, "sub": ISSUER, "iat": now - 7200, "exp": now - 3600
        })
        .to_string()
        .as_bytes());
        let signing_input = format!("{header}.{payload}");
        std::fs::write(dir.path().join("signing_input"), &signing_input).unwrap();
        shell(
            dir.path(),
            &["openssl dgst -sha256 -sign jwt.key -out jwt.sig signing_input"],
        );
        let sig = std::fs::read(dir.path().join("jwt.sig")).unwrap();
        let expired = format!("{signing_input}.{}", b64(&sig));

        let mut server = Command::new("python3")
            .arg(fixture("jwks_server.py"))
            .args(["host.pem", "host.key", "jwks.json"])
            .current_dir(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 is missing: install it with `apt-get install -y python3`");
        let mut line = String::new();
        BufReader::new(server.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("jwks_server.py printed {line:?}, not its port"));
        readable_by_all(dir.path());
        JwksHost {
            server,
            port,
            dir,
            expired,
        }
    }

    /// The control plane's flags that send raw.githubusercontent.com here.
    fn flags(&self) -> Vec<String> {
        vec![
            "--jwks-resolve".into(),
            format!("raw.githubusercontent.com:443=127.0.0.1:{}", self.port),
            "--jwks-ca".into(),
            self.dir.path().join("ca.pem").display().to_string(),
        ]
    }
}

impl Drop for JwksHost {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// One answer: status, the `www-authenticate` header, the body.
#[derive(Debug, Clone, PartialEq)]
struct Answer {
    code: String,
    www_authenticate: Option<String>,
    body: String,
}

fn curl(netns: Option<&str>, url: &str, token: Option<&str>) -> Answer {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "curl"]);
            c
        }
        None => Command::new("curl"),
    };
    cmd.args(["-s", "-i", "--max-time", "5", "-w", "\n%{http_code}"]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let out = cmd.arg(url).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (rest, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    let (head, body) = rest.split_once("\r\n\r\n").unwrap_or((rest, ""));
    let www_authenticate = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("www-authenticate")
            .then(|| v.trim().to_string())
    });
    Answer {
        code: code.to_string(),
        www_authenticate,
        body: body.to_string(),
    }
}

/// A probe: the token sent, the status expected, and what else must hold of the answer.
type Check = fn(&Answer) -> Result<(), String>;

fn any(_: &Answer) -> Result<(), String> {
    Ok(())
}

/// httpbin did not get the token (`forwardOriginalToken` is false).
fn token_not_forwarded(a: &Answer) -> Result<(), String> {
    if a.body.to_ascii_lowercase().contains("authorization") {
        Err(format!("httpbin got the token: {}", a.body))
    } else {
        Ok(())
    }
}

fn rbac_denied(a: &Answer) -> Result<(), String> {
    if a.body == "RBAC: access denied" {
        Ok(())
    } else {
        Err(format!("403 body {:?}", a.body))
    }
}

fn jwt_malformed(a: &Answer) -> Result<(), String> {
    let body = "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections";
    let realm = format!("{MISSING_REALM}, error=\"invalid_token\"");
    if a.body == body && a.www_authenticate.as_deref() == Some(realm.as_str()) {
        Ok(())
    } else {
        Err(format!(
            "expected body {body:?} and www-authenticate {realm:?}, got {a:?}"
        ))
    }
}

fn jwt_expired(a: &Answer) -> Result<(), String> {
    if a.body == "Jwt is expired" {
        Ok(())
    } else {
        Err(format!("expected \"Jwt is expired\", got {a:?}"))
    }
}

/// Waits (30 s at most) until every probe answers as Istio's docs say, 5 rounds in a row.
fn expect(
    cp: &ControlPlane,
    step: &str,
    netns: Option<&str>,
    base: &str,
    probes: &[(&str, Option<&str>, &str, Check)],
) {
    let run = || -> Vec<String> {
        probes
            .iter()
            .map(|(path, token, _, check)| {
                let a = curl(netns, &format!("{base}{path}"), *token);
                match check(&a) {
                    Ok(()) => a.code,
                    Err(why) if a.code == "200" || a.code == "401" || a.code == "403" => {
                        format!("{}: {why}", a.code)
                    }
                    Err(_) => a.code,
                }
            })
            .collect()
    };
    let want: Vec<String> = probes.iter().map(|p| p.2.to_string()).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut in_a_row = 0;
    let mut got = Vec::new();
    while in_a_row < 5 && Instant::now() < deadline {
        got = run();
        in_a_row = if got == want { in_a_row + 1 } else { 0 };
        std::thread::sleep(Duration::from_millis(100));
    }
    let names: Vec<(&str, Option<&str>)> =
        probes.iter().map(|p| (p.0, p.1.map(|_| "token"))).collect();
    assert!(
        in_a_row >= 5,
        "{step}: {names:?} answered {got:?}, not {want:?} 5 times in a row within 30 s\n{}",
        cp.log()
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

fn apply_doc(cp: &ControlPlane, doc: &str) {
    let out = cp.cli_stdin(&["apply", "-f", "-"], Some(doc.as_bytes()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// httpbin and sleep in `foo` with `proxy` sidecars; with `gateway`, Istio's ingress gateway.
struct Mesh {
    cp: ControlPlane,
    pods: Vec<Run>,
    _dir: tempfile::TempDir,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        for p in &mut self.pods {
            p.stop();
        }
    }
}

fn start_mesh(proxy: &str, jwks_flags: Vec<String>, gateway: bool) -> Mesh {
    let mut flags = vec![
        "--xds-addr".to_string(),
        "0.0.0.0:0".into(),
        "--tls-addr".into(),
        "0.0.0.0:0".into(),
    ];
    flags.extend(jwks_flags);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let cp = ControlPlane::start_with(&flags);
    let dir = tempfile::tempdir().unwrap();
    for file in ["httpbin/httpbin.yaml", "sleep/sleep.yaml"] {
        cp.ok(&["apply", "-n", "foo", "-f", sample(file).to_str().unwrap()]);
    }
    let httpbin = fixture("httpbin.py").display().to_string();
    let common = ["-n", "foo", "--capture", "iptables", "--proxy", proxy];
    let mut args = vec![
        "run",
        "--name",
        HTTPBIN_POD,
        "--labels",
        "app=httpbin,version=v1",
        "--service-account",
        "httpbin",
        "--port",
        "http:8080",
    ];
    args.extend(common);
    args.extend(["--", "python3", &httpbin]);
    let mut pods = vec![start(&cp, &args, dir.path())];
    let mut args = vec![
        "run",
        "--name",
        SLEEP_POD,
        "--labels",
        "app=sleep",
        "--service-account",
        "sleep",
    ];
    args.extend(common);
    args.extend(["--", "sleep", "3600"]);
    pods.push(start(&cp, &args, dir.path()));
    if gateway {
        pods.push(start(
            &cp,
            &[
                "gateway",
                "--name",
                GATEWAY_POD,
                "--proxy",
                proxy,
                "--listen",
                GATEWAY_HOST,
            ],
            dir.path(),
        ));
    }
    wait_workload_entry(&cp, &mut pods[0], "foo", HTTPBIN_POD);
    wait_workload_entry(&cp, &mut pods[1], "foo", SLEEP_POD);
    if gateway {
        wait_workload_entry(&cp, &mut pods[2], "istio-system", GATEWAY_POD);
    }
    Mesh {
        cp,
        pods,
        _dir: dir,
    }
}

fn docs(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    text.split("\n---")
        .map(str::to_string)
        .filter(|d| d.contains("kind:"))
        .collect()
}

#[test]
fn istios_authz_jwt_task_with_envoy() {
    let _one = require_platform();
    authz_jwt_task("envoy");
}

#[test]
fn istios_authz_jwt_task_with_strait_proxy() {
    let _one = require_platform();
    strait_proxy_built();
    authz_jwt_task("strait");
}

fn authz_jwt_task(proxy: &str) {
    let token = jwt_sample("demo.jwt");
    let group = jwt_sample("groups-scope.jwt");
    let steps = docs(&sample("tasks/authz-jwt/authz-jwt.yaml"));
    assert_eq!(steps.len(), 3, "authz-jwt.yaml: three documents");
    let jwks = JwksHost::start();
    let mesh = start_mesh(proxy, jwks.flags(), false);
    let cp = &mesh.cp;
    let ns = Some(SLEEP_NETNS);
    let base = "http://httpbin.foo:8000";

    apply_doc(cp, &steps[0]);
    expect(
        cp,
        "jwt-example",
        ns,
        base,
        &[
            ("/headers", Some("invalidToken"), "401", jwt_malformed),
            ("/headers", None, "200", any),
            // The key set came from the stand-in: demo.jwt verifies, and is not forwarded.
            ("/headers", Some(&token), "200", token_not_forwarded),
        ],
    );
    let missing = curl(ns, &format!("{base}/headers"), Some(&jwks.expired));
    assert_eq!(missing.code, "401", "an expired token: {missing:?}");
    assert!(jwt_expired(&missing).is_ok(), "{missing:?}");

    apply_doc(cp, &steps[1]);
    expect(
        cp,
        "require-jwt",
        ns,
        base,
        &[
            ("/headers", Some(&token), "200", any),
            ("/headers", None, "403", rbac_denied),
        ],
    );

    apply_doc(cp, &steps[2]);
    expect(
        cp,
        "require-jwt with the groups claim",
        ns,
        base,
        &[
            ("/headers", Some(&group), "200", any),
            ("/headers", Some(&token), "403", rbac_denied),
        ],
    );

    // `strait authz check --jwt` decides as the proxy did: the control plane verifies the token
    // with the key set it sent the proxy, and the groups rule reads its claims.
    let expired = curl(ns, &format!("{base}/headers"), Some(&jwks.expired));
    assert_eq!(expired.code, "401", "an expired token: {expired:?}");
    for (what, jwt, allowed, says) in [
        (
            "groups token (200)",
            &group,
            true,
            "jwt_authn: token verified",
        ),
        (
            "demo token (403)",
            &token,
            false,
            "the client sees: 403 RBAC: access denied",
        ),
        (
            "expired token (401)",
            &jwks.expired,
            false,
            "the client sees: 401 Jwt is expired",
        ),
    ] {
        let file = mesh._dir.path().join("token.jwt");
        std::fs::write(&file, jwt).unwrap();
        let out = cp.cli(&[
            "authz",
            "check",
            "--from",
            &format!("{SLEEP_POD}.foo"),
            "--to",
            &format!("{HTTPBIN_POD}.foo"),
            "--port",
            "8080",
            "--path",
            "/headers",
            "--jwt",
            file.to_str().unwrap(),
        ]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(if allowed { 0 } else { 3 }),
            "authz check --jwt, {what}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains(says), "authz check --jwt, {what}: {text}");
    }
}

#[test]
fn istios_authn_policy_ingress_jwt_steps_with_envoy() {
    let _one = require_platform();
    authn_policy_ingress_steps("envoy");
}

#[test]
fn istios_authn_policy_ingress_jwt_steps_with_strait_proxy() {
    let _one = require_platform();
    strait_proxy_built();
    authn_policy_ingress_steps("strait");
}

fn authn_policy_ingress_steps(proxy: &str) {
    let task = |f: &str| sample(&format!("tasks/authn-policy/{f}"));
    let token = jwt_sample("demo.jwt");
    let jwks = JwksHost::start();
    let mesh = start_mesh(proxy, jwks.flags(), true);
    let cp = &mesh.cp;
    let base = format!("http://{GATEWAY_HOST}:80");

    cp.ok(&[
        "apply",
        "-f",
        task("06-ingress-gateway-httpbin.yaml").to_str().unwrap(),
    ]);
    expect(
        cp,
        "06 gateway",
        None,
        &base,
        &[("/headers", None, "200", any)],
    );

    cp.ok(&[
        "apply",
        "-f",
        task("07-request-authentication-jwt.yaml").to_str().unwrap(),
    ]);
    expect(
        cp,
        "07 RequestAuthentication on the gateway",
        None,
        &base,
        &[
            ("/headers", None, "200", any),
            ("/headers", Some("deadbeef"), "401", any),
            ("/headers", Some(&token), "200", any),
            ("/headers", Some(&jwks.expired), "401", jwt_expired),
        ],
    );

    cp.ok(&[
        "apply",
        "-f",
        task("08-authz-require-token.yaml").to_str().unwrap(),
    ]);
    expect(
        cp,
        "08 DENY notRequestPrincipals",
        None,
        &base,
        &[
            ("/headers", None, "403", rbac_denied),
            ("/headers", Some(&token), "200", any),
        ],
    );

    cp.ok(&[
        "apply",
        "-f",
        task("09-authz-require-token-per-path.yaml")
            .to_str()
            .unwrap(),
    ]);
    expect(
        cp,
        "09 per path",
        None,
        &base,
        &[
            ("/headers", None, "403", rbac_denied),
            ("/ip", None, "200", any),
            ("/headers", Some(&token), "200", any),
        ],
    );
}

#[test]
fn a_jwks_fetch_that_fails_refuses_tokens_and_passes_requests_without_one_with_envoy() {
    let _one = require_platform();
    jwks_fetch_fails("envoy");
}

#[test]
fn a_jwks_fetch_that_fails_refuses_tokens_and_passes_requests_without_one_with_strait_proxy() {
    let _one = require_platform();
    strait_proxy_built();
    jwks_fetch_fails("strait");
}

/// As Istio: a `jwksUri` that cannot be fetched (here the stand-in's address refuses
/// connections) gets a key set that verifies nothing, and the control plane logs the URI.
fn jwks_fetch_fails(proxy: &str) {
    let steps = docs(&sample("tasks/authz-jwt/authz-jwt.yaml"));
    let mesh = start_mesh(
        proxy,
        vec![
            "--jwks-resolve".into(),
            "raw.githubusercontent.com:443=127.0.0.1:1".into(),
        ],
        false,
    );
    let cp = &mesh.cp;
    apply_doc(cp, &steps[0]);
    expect(
        cp,
        "jwt-example, its key set not fetched",
        Some(SLEEP_NETNS),
        "http://httpbin.foo:8000",
        &[
            ("/headers", Some(&jwt_sample("demo.jwt")), "401", any),
            ("/headers", None, "200", any),
        ],
    );
    let log = cp.log();
    assert!(
        log.lines().any(|l| l.contains("fetching the JWKS failed")
            && l.contains("https://raw.githubusercontent.com/istio/istio/release-1.8/security/tools/jwt/samples/jwks.json")),
        "the control plane does not log the failed fetch with its URI:\n{log}"
    );
}
