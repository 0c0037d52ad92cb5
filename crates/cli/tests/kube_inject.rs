//! `strait kube-inject` (the real binary) over Istio's injection test inputs
//! (`istio-inject/cases.jsonl`, the cases with Istio's default settings): Strait injects where
//! Istio injects and skips where it skips, writes the capture parameters of Istio's `istio-init`
//! arguments, rewrites the application's probes to the sidecar as Istio does, adds Istio's
//! labels, prints Istio's host-network warning, and refuses the five bad-annotation inputs
//! naming the annotation. The test prints the agreement and fails below 95%; where Strait
//! differs on purpose it says so (and those cases count as disagreements).
//!
//! The goldens embed Istio's own sidecar (image, pilot-agent, environment), which Strait
//! replaces with its own; `crates/inject/tests/istio_agreement.rs` compares everything else of
//! the pod (containers, volumes, annotations, overrides) through the library.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde::Deserialize;
use serde_json::Value;

/// Where Strait differs from Istio on purpose: the golden's name and why.
const ON_PURPOSE: &[(&str, &str)] = &[
    (
        "inject/grpc-agent.yaml.injected",
        "Istio's proxyless gRPC template: Strait has no proxyless gRPC clients and refuses `inject.istio.io/templates: grpc-agent` with a message",
    ),
    (
        "inject/grpc-simple.yaml.injected",
        "Istio's proxyless gRPC template grpc-simple: refused, as grpc-agent",
    ),
    (
        "inject/cronjob.yaml.injected",
        "CronJob: Istio labels spec.jobTemplate.metadata, which never reaches the pods; Strait labels and annotates the pod template",
    ),
    (
        "inject/cronjob-old-version.yaml.injected",
        "CronJob: as cronjob.yaml",
    ),
];

fn testdata() -> PathBuf {
    let dir = std::env::var_os("STRAIT_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata")
        });
    let inject = dir.join("istio-inject");
    assert!(
        inject.join("cases.jsonl").is_file(),
        "Istio's injection test data is missing at {}: put the shared/ folder beside the repository or set STRAIT_TESTDATA",
        inject.display()
    );
    inject
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn yaml_docs(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn strait(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_strait"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running strait");
    let mut pipe = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        pipe.write_all(text.as_bytes()).unwrap();
    }
    drop(pipe);
    child.wait_with_output().unwrap()
}

/// The oldest kubelet of the case's fake cluster, as `--kubelet-version` takes it.
fn kubelet_version(case: &Value) -> String {
    case["kubelet_versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|v| {
            let mut p = v.trim_start_matches('v').split('.');
            let major: u32 = p.next().unwrap().parse().unwrap();
            let minor: u32 = p.next().unwrap().parse().unwrap();
            (major, minor)
        })
        .min()
        .map(|(a, b)| format!("{a}.{b}"))
        .unwrap_or_else(|| "1.33".into())
}

/// The pod templates of a document: (metadata, spec) pointers.
fn pods(doc: &Value) -> Vec<(String, String)> {
    match doc["kind"].as_str().unwrap_or_default() {
        "List" => doc["items"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
            .flat_map(|(i, item)| {
                pods(item)
                    .into_iter()
                    .map(move |(m, s)| (format!("/items/{i}{m}"), format!("/items/{i}{s}")))
            })
            .collect(),
        "Pod" => vec![("/metadata".into(), "/spec".into())],
        "CronJob" => vec![(
            "/spec/jobTemplate/spec/template/metadata".into(),
            "/spec/jobTemplate/spec/template/spec".into(),
        )],
        "Deployment"
        | "DaemonSet"
        | "StatefulSet"
        | "ReplicaSet"
        | "ReplicationController"
        | "Job"
        | "DeploymentConfig" => {
            vec![(
                "/spec/template/metadata".into(),
                "/spec/template/spec".into(),
            )]
        }
        _ => vec![],
    }
}

fn containers(spec: &Value) -> impl Iterator<Item = &Value> {
    ["initContainers", "containers"]
        .into_iter()
        .flat_map(|f| spec[f].as_array().into_iter().flatten())
}

fn find<'a>(spec: &'a Value, name: &str) -> Option<&'a Value> {
    containers(spec).find(|c| c["name"] == name)
}

fn env_json(container: &Value, name: &str) -> Value {
    container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str())
        .map(|s| serde_json::from_str(s).unwrap())
        .unwrap_or(Value::Null)
}

/// One pod template of Strait's output against Istio's golden, on the invariants.
fn compare_pod(
    ours: (&Value, &Value),
    golden: (&Value, &Value),
    input: (&Value, &Value),
) -> Vec<String> {
    let mut d = Vec::new();
    let injected = |meta: &Value| meta["annotations"]["sidecar.istio.io/status"].is_string();
    let (om, os) = ours;
    let (gm, gs) = golden;
    if injected(om) != injected(gm) {
        d.push(format!(
            "Istio {}, Strait {}",
            if injected(gm) { "injects" } else { "skips" },
            if injected(om) { "injects" } else { "skips" }
        ));
        return d;
    }
    if !injected(gm) {
        // Skipped: the pod as the user wrote it.
        if (om, os) != input {
            d.push("a skipped pod changed".into());
        }
        return d;
    }
    // Capture parameters: istio-init's arguments, whole.
    let args = |s: &Value| find(s, "istio-init").map(|c| c["args"].clone());
    if args(os) != args(gs) {
        d.push(format!(
            "istio-init args: Istio {:?}, Strait {:?}",
            args(gs),
            args(os)
        ));
    }
    // Istio's labels (and the user's).
    if om["labels"] != gm["labels"] {
        d.push(format!(
            "labels: Istio {}, Strait {}",
            gm["labels"], om["labels"]
        ));
    }
    // Probes: the application's containers' probes and lifecycle hooks as Istio rewrote them,
    // and the originals handed to the sidecar.
    for c in containers(gs) {
        let name = c["name"].as_str().unwrap_or_default();
        if name == "istio-proxy" || name == "istio-init" {
            continue;
        }
        let Some(o) = find(os, name) else {
            d.push(format!("container {name} missing"));
            continue;
        };
        for field in [
            "livenessProbe",
            "readinessProbe",
            "startupProbe",
            "lifecycle",
        ] {
            if o[field] != c[field] {
                d.push(format!(
                    "{name}.{field}: Istio {}, Strait {}",
                    c[field], o[field]
                ));
            }
        }
    }
    let probers = |s: &Value| {
        find(s, "istio-proxy")
            .map(|p| env_json(p, "ISTIO_KUBE_APP_PROBERS"))
            .unwrap_or(Value::Null)
    };
    if probers(os) != probers(gs) {
        d.push(format!(
            "ISTIO_KUBE_APP_PROBERS: Istio {}, Strait {}",
            probers(gs),
            probers(os)
        ));
    }
    d
}

#[test]
fn kube_inject_over_istios_inputs() {
    let dir = testdata();
    let cases: Vec<Value> = read(&dir.join("cases.jsonl"))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|c: &Value| {
            ["set_flags", "iop_file", "mesh_overlay", "env"]
                .iter()
                .all(|k| c.get(*k).is_none())
        })
        .collect();
    assert_eq!(cases.len(), 86, "the default-settings cases of cases.jsonl");
    let (mut agree, mut refused_ok, mut injected_pods, mut skipped_pods) = (0, 0, 0, 0);
    let mut differ = Vec::new();
    let mut on_purpose = Vec::new();
    for case in &cases {
        let input_path = dir.join(case["in"].as_str().unwrap());
        let name = case["want"].as_str().or(case["in"].as_str()).unwrap();
        let version = kubelet_version(case);
        let out = strait(
            &[
                "kube-inject",
                "-f",
                input_path.to_str().unwrap(),
                "--kubelet-version",
                &version,
            ],
            None,
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        let mut d = Vec::new();
        match case["expected_error"].as_str() {
            Some(expected) => {
                if out.status.success() {
                    d.push(format!("Istio refuses ({expected}); Strait injected"));
                } else if !stderr.to_lowercase().contains(expected) {
                    d.push(format!(
                        "refused, but the message does not name {expected}: {stderr}"
                    ));
                } else {
                    refused_ok += 1;
                }
            }
            None if !out.status.success() => d.push(format!("Strait refused: {stderr}")),
            None => {
                let input = yaml_docs(&read(&input_path));
                let ours = yaml_docs(&String::from_utf8(out.stdout).unwrap());
                let golden = yaml_docs(&read(&dir.join(name)));
                if ours.len() != golden.len() {
                    d.push(format!(
                        "{} documents, Istio wrote {}",
                        ours.len(),
                        golden.len()
                    ));
                }
                for (i, ((o, g), inp)) in ours.iter().zip(&golden).zip(&input).enumerate() {
                    let pointers = pods(g);
                    if pointers.is_empty() && o != inp {
                        d.push(format!(
                            "document {}: a document without pods changed",
                            i + 1
                        ));
                    }
                    for (m, s) in pointers {
                        let null = Value::Null;
                        let at = |v: &Value, p: &str| v.pointer(p).cloned().unwrap_or(Value::Null);
                        let (om, os, gm, gs) = (at(o, &m), at(o, &s), at(g, &m), at(g, &s));
                        let (im, is) = (at(inp, &m), at(inp, &s));
                        if gm["annotations"]["sidecar.istio.io/status"].is_string() {
                            injected_pods += 1;
                        } else {
                            skipped_pods += 1;
                        }
                        let _ = &null;
                        for line in compare_pod((&om, &os), (&gm, &gs), (&im, &is)) {
                            d.push(format!("document {} {s}: {line}", i + 1));
                        }
                    }
                }
                if let Some(log) = case["expected_log"].as_str()
                    && !stderr.contains(log)
                {
                    d.push(format!("stderr lacks Istio's message {log:?}: {stderr}"));
                }
            }
        }
        if let Some((_, why)) = ON_PURPOSE.iter().find(|(n, _)| *n == name) {
            assert!(
                !d.is_empty(),
                "{name} is listed as a deliberate difference but now agrees: take it off ON_PURPOSE"
            );
            on_purpose.push(format!("  {name}: {why}"));
        } else if d.is_empty() {
            agree += 1;
        } else {
            differ.push(format!("  {name}:\n    {}", d.join("\n    ")));
        }
    }
    let total = cases.len();
    let pct = 100.0 * agree as f64 / total as f64;
    println!(
        "strait kube-inject agrees with Istio on {agree} of {total} default-settings cases ({pct:.1}%): \
         {injected_pods} pod templates injected, {skipped_pods} skipped, {refused_ok} bad inputs refused"
    );
    println!(
        "Strait differs on purpose ({}):\n{}",
        on_purpose.len(),
        on_purpose.join("\n")
    );
    if !differ.is_empty() {
        println!(
            "other differences ({}):\n{}",
            differ.len(),
            differ.join("\n")
        );
    }
    assert_eq!(
        refused_ok, 5,
        "the five bad-annotation inputs must be refused"
    );
    assert_eq!(on_purpose.len(), ON_PURPOSE.len());
    assert!(
        pct >= 95.0,
        "agreement {pct:.1}% is below 95%:\n{}",
        differ.join("\n")
    );
}

const MULTI: &str = "\
# a Service passes through as written
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  ports: [{port: 80, name: http}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web, version: v2}}
    spec:
      containers:
      - name: web
        image: nginx
        ports: [{containerPort: 8080, name: http}]
        readinessProbe: {httpGet: {path: /ready, port: http}}
";

#[test]
fn several_documents_from_standard_input_and_an_output_file() {
    let dir = std::env::temp_dir().join(format!("strait-kube-inject-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out_file = dir.join("out.yaml");
    let out = strait(
        &["kube-inject", "-f", "-", "-o", out_file.to_str().unwrap()],
        Some(MULTI),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stdout.is_empty(),
        "with -o nothing goes to standard output"
    );
    let text = read(&out_file);
    assert!(
        text.starts_with("# a Service passes through as written\napiVersion: v1\nkind: Service\nmetadata: {name: web}\n"),
        "the Service is not passed through byte for byte:\n{text}"
    );
    let docs = yaml_docs(&text);
    assert_eq!(docs.len(), 2);
    let meta = &docs[1]["spec"]["template"]["metadata"];
    let spec = &docs[1]["spec"]["template"]["spec"];
    assert_eq!(meta["labels"]["security.istio.io/tlsMode"], "istio");
    assert_eq!(meta["labels"]["service.istio.io/canonical-name"], "web");
    assert_eq!(meta["labels"]["service.istio.io/canonical-revision"], "v2");
    let names: Vec<&str> = containers(spec)
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["istio-init", "istio-proxy", "web"],
        "native sidecar by default"
    );
    assert_eq!(
        find(spec, "istio-proxy").unwrap()["restartPolicy"],
        "Always"
    );
    let web = find(spec, "web").unwrap();
    assert_eq!(
        web["readinessProbe"]["httpGet"]["path"],
        "/app-health/web/readyz"
    );
    assert_eq!(web["readinessProbe"]["httpGet"]["port"], 15020);
    let probers = env_json(find(spec, "istio-proxy").unwrap(), "ISTIO_KUBE_APP_PROBERS");
    assert_eq!(
        probers["/app-health/web/readyz"]["httpGet"]["port"], 8080,
        "the named port is resolved: {probers}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_older_cluster_gets_a_regular_sidecar_container() {
    let out = strait(
        &["kube-inject", "-f", "-", "--kubelet-version", "1.28"],
        Some(MULTI),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs = yaml_docs(&String::from_utf8(out.stdout).unwrap());
    let spec = &docs[1]["spec"]["template"]["spec"];
    let names = |f: &str| -> Vec<String> {
        spec[f]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(str::to_string))
            .collect()
    };
    assert_eq!(names("initContainers"), ["istio-init"]);
    assert_eq!(names("containers"), ["web", "istio-proxy"]);
}

#[test]
fn errors_name_the_thing_and_the_fix() {
    let bad = MULTI.replace(
        "metadata: {labels: {app: web, version: v2}}",
        "metadata: {labels: {app: web}, annotations: {traffic.sidecar.istio.io/excludeInboundPorts: \"http\"}}",
    );
    let out = strait(&["kube-inject", "-f", "-"], Some(&bad));
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("document 2") && e.contains("traffic.sidecar.istio.io/excludeInboundPorts"),
        "{e}"
    );
    assert!(
        out.stdout.is_empty(),
        "nothing is written when a document is refused"
    );

    let out = strait(&["kube-inject", "-f", "/nonexistent/strait.yaml"], None);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && e.contains("/nonexistent/strait.yaml"),
        "{e}"
    );

    let out = strait(
        &["kube-inject", "-f", "-", "--kubelet-version", "new"],
        Some(MULTI),
    );
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && e.contains("--kubelet-version"),
        "{e}"
    );
}

#[test]
fn istios_bookinfo_unchanged_gets_six_sidecars() {
    let path = testdata()
        .parent()
        .unwrap()
        .join("istio-samples/bookinfo/platform/kube/bookinfo.yaml");
    assert!(
        path.is_file(),
        "Istio's Bookinfo sample is missing at {}",
        path.display()
    );
    let out = strait(&["kube-inject", "-f", path.to_str().unwrap()], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let input = yaml_docs(&read(&path));
    let docs = yaml_docs(&String::from_utf8(out.stdout).unwrap());
    assert_eq!(docs.len(), input.len());
    let mut injected = Vec::new();
    for (o, i) in docs.iter().zip(&input) {
        if o["kind"] == "Deployment" {
            let meta = &o["spec"]["template"]["metadata"];
            assert_eq!(meta["labels"]["security.istio.io/tlsMode"], "istio");
            assert!(find(&o["spec"]["template"]["spec"], "istio-proxy").is_some());
            injected.push(format!(
                "{}:{}",
                meta["labels"]["service.istio.io/canonical-name"]
                    .as_str()
                    .unwrap(),
                meta["labels"]["service.istio.io/canonical-revision"]
                    .as_str()
                    .unwrap()
            ));
        } else {
            assert_eq!(o, i, "{} {} changed", o["kind"], o["metadata"]["name"]);
        }
    }
    assert_eq!(
        injected,
        [
            "details:v1",
            "ratings:v1",
            "reviews:v1",
            "reviews:v2",
            "reviews:v3",
            "productpage:v1"
        ]
    );
}
