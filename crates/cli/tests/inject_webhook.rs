//! `strait inject-webhook` (the real binary) over HTTPS on loopback: Istio's 6 `TestRunAndServe`
//! HTTP cases (`istio-inject/webhook-http.jsonl`) sent as real requests, the patch of a valid
//! review applied to its pod, the injection counters on `/metrics`, and TLS required.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use serde_json::{Value, json};
use strait_inject::patch;
use strait_inject::webhook::decode_patch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn testdata() -> PathBuf {
    let dir = std::env::var_os("STRAIT_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata")
        });
    let inject = dir.join("istio-inject");
    assert!(
        inject.join("webhook-http.jsonl").is_file(),
        "Istio's injection test data is missing at {}: put the shared/ folder beside the repository or set STRAIT_TESTDATA",
        inject.display()
    );
    inject
}

/// The webhook process, stopped when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
    _dir: TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts the webhook with a fresh self-signed certificate for 127.0.0.1; returns it and the
/// certificate (PEM) a client trusts.
fn start() -> (Server, String) {
    let dir = std::env::temp_dir().join(format!(
        "strait-inject-webhook-{}-{}",
        std::process::id(),
        fastrand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let cert_pem = cert.cert.pem();
    std::fs::write(dir.join("cert.pem"), &cert_pem).unwrap();
    std::fs::write(dir.join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_strait"))
        .args(["inject-webhook", "--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(dir.join("cert.pem"))
        .arg("--tls-key")
        .arg(dir.join("key.pem"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running strait inject-webhook");
    let mut line = String::new();
    BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("injection webhook listening on https://")
        .and_then(|r| r.strip_suffix("/inject"))
        .unwrap_or_else(|| panic!("the webhook did not start: {line:?}"))
        .parse()
        .unwrap();
    (
        Server {
            child,
            addr,
            _dir: TempDir(dir),
        },
        cert_pem,
    )
}

fn fastrand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// One HTTP/1.1 request over TLS; the status and the body.
async fn request(
    addr: SocketAddr,
    roots: &str,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> (u16, Vec<u8>) {
    let mut store = rustls::RootCertStore::empty();
    for c in strait_identity::cert::certs_from_pem(roots, "test root").unwrap() {
        store.add(c).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(strait_identity::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let mut tls = connector.connect(name, tcp).await.expect("TLS handshake");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(ct) = content_type {
        head.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    head.push_str("\r\n");
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(body).await.unwrap();
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response).await;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP response head");
    let head = String::from_utf8_lossy(&response[..split]).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, response[split + 4..].to_vec())
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[tokio::test]
async fn istios_http_cases_over_https() {
    let cases: Vec<Value> = std::fs::read_to_string(testdata().join("webhook-http.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(cases.len(), 6);
    let (server, roots) = start();
    for c in &cases {
        let body: Vec<u8> = match c["body"].as_str().unwrap() {
            "admission_review" => serde_json::to_vec(&c["admission_review"]).unwrap(),
            "garbage" => hex(c["body_bytes_hex"].as_str().unwrap()),
            "empty" => Vec::new(),
            other => panic!("unknown body {other}"),
        };
        let (status, response) = request(
            server.addr,
            &roots,
            c["method"].as_str().unwrap(),
            c["path"].as_str().unwrap(),
            c["content_type"].as_str(),
            &body,
        )
        .await;
        assert_eq!(
            u64::from(status),
            c["expected_status"].as_u64().unwrap(),
            "{}: {}",
            c["name"],
            String::from_utf8_lossy(&response)
        );
        let Some(allowed) = c["expected_allowed"].as_bool() else {
            continue;
        };
        let v: Value = serde_json::from_slice(&response).unwrap();
        assert_eq!(v["kind"], "AdmissionReview", "{}", c["name"]);
        assert_eq!(v["response"]["allowed"], allowed, "{}: {v}", c["name"]);
        if !allowed {
            let message = v["response"]["result"]["message"]
                .as_str()
                .unwrap_or_default();
            assert!(
                !message.is_empty(),
                "{}: refused without a reason: {v}",
                c["name"]
            );
        }
        if c["body"] == "admission_review" {
            assert_eq!(
                v["apiVersion"], c["admission_review"]["apiVersion"],
                "{}",
                c["name"]
            );
            // The response carries the request's uid (Istio's test sends none: "").
            let uid = c["admission_review"]["request"]["uid"]
                .as_str()
                .unwrap_or("");
            assert_eq!(v["response"]["uid"], uid, "{}", c["name"]);
            let mut pod = c["admission_review"]["request"]["object"].clone();
            let skipped = pod["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false";
            match decode_patch(&v["response"]) {
                Some(ops) => {
                    assert!(!skipped, "{}: a skipped pod was patched", c["name"]);
                    patch::apply(&mut pod, &ops).unwrap();
                    let names: Vec<&str> = ["initContainers", "containers"]
                        .iter()
                        .flat_map(|f| pod["spec"][*f].as_array().into_iter().flatten())
                        .filter_map(|c| c["name"].as_str())
                        .collect();
                    assert_eq!(
                        names,
                        ["istio-init", "istio-proxy", "c0", "c1"],
                        "{}",
                        c["name"]
                    );
                    assert_eq!(
                        pod["metadata"]["labels"]["security.istio.io/tlsMode"],
                        "istio"
                    );
                }
                None => assert!(skipped, "{}: no patch: {v}", c["name"]),
            }
        }
    }
    let (status, metrics) = request(server.addr, &roots, "GET", "/metrics", None, b"").await;
    assert_eq!(status, 200);
    let metrics = String::from_utf8(metrics).unwrap();
    for (name, want) in [("requests", 6), ("success", 2), ("skip", 1), ("failure", 3)] {
        let line = format!("sidecar_injection_{name}_total {want}\n");
        assert!(metrics.contains(&line), "want {line:?} in:\n{metrics}");
    }
}

#[tokio::test]
async fn plaintext_is_refused() {
    let (server, _) = start();
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let review = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"});
    let body = review.to_string();
    let req = format!(
        "POST /inject HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tcp.read_to_end(&mut out).await;
    assert!(
        !String::from_utf8_lossy(&out).contains("AdmissionReview"),
        "a plaintext request was answered"
    );
}
