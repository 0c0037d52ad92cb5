//! End to end: the `strait` binary as a user runs it, against a real control plane process.

use strait_e2e as support;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::Value;
use support::{ControlPlane, http, testdata};

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            yaml_files(&p, out);
        } else if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            out.push(p);
        }
    }
}

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// The store's revision, read through the API.
fn revision(cp: &ControlPlane) -> String {
    let (code, body) = http(
        &cp.server(),
        "GET",
        "/api/v1/namespaces",
        Some(&cp.token()),
        None,
    );
    assert_eq!(code, 200, "{body}");
    json(&body)["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn every_istio_sample_validates_applies_and_reads_back_unchanged() {
    let cp = ControlPlane::start();
    let mut files = Vec::new();
    yaml_files(&testdata().join("istio-samples"), &mut files);
    files.sort();
    assert!(
        files.len() > 50,
        "expected Istio's samples, found {} files",
        files.len()
    );
    let (mut applied, mut skipped) = (0, 0);
    for file in &files {
        let f = file.to_str().unwrap();
        // Not every YAML file is configuration (bookinfo/swagger.yaml is an OpenAPI document).
        let text = std::fs::read_to_string(file).unwrap();
        let is_config = serde_yaml_ng::Deserializer::from_str(&text).all(|doc| {
            let v: Value = serde::Deserialize::deserialize(doc).unwrap_or(Value::Null);
            v.is_null() || (v.get("apiVersion").is_some() && v.get("kind").is_some())
        });
        if !is_config {
            eprintln!("not configuration, left out: {f}");
            continue;
        }
        let report = json(&cp.ok(&["validate", "-o", "json", "-f", f]));
        // Resources of the kinds Strait handles carry no error; other kinds are skipped with a warning.
        let mut expected: BTreeMap<(String, String, String), Value> = BTreeMap::new();
        let docs = report.as_array().unwrap();
        for (i, doc) in docs.iter().enumerate() {
            assert_eq!(
                doc["errors"],
                Value::Array(vec![]),
                "{f} document {i}: {doc}"
            );
            let kind = doc["kind"].as_str().unwrap();
            if strait_api::Kind::from_type(doc["apiVersion"].as_str().unwrap(), kind).is_err() {
                skipped += 1;
                continue;
            }
            expected.insert(
                (
                    kind.to_string(),
                    doc["namespace"].as_str().unwrap_or("default").to_string(),
                    doc["name"].as_str().unwrap().to_string(),
                ),
                Value::Null,
            );
        }
        if expected.is_empty() {
            continue;
        }
        cp.ok(&["apply", "-f", f]);
        // The last document of each name wins, as with kubectl.
        let mut repeats = false;
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let v: Value = serde::Deserialize::deserialize(doc).unwrap();
            if v.is_null() {
                continue;
            }
            let key = (
                v["kind"].as_str().unwrap_or_default().to_string(),
                v["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("default")
                    .to_string(),
                v["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            );
            if let Some(slot) = expected.get_mut(&key) {
                repeats |= !slot.is_null();
                *slot = v;
            }
        }
        for ((kind, ns, name), written) in &expected {
            // A Secret's data reads back only when asked for.
            let mut args = vec!["get", kind, name, "-n", ns, "-o", "json"];
            if kind == "Secret" {
                args.push("--show-secrets");
            }
            let got = json(&cp.ok(&args));
            let body = |v: &Value| {
                let mut v = v.clone();
                if let Some(o) = v.as_object_mut() {
                    o.remove("metadata");
                    o.remove("apiVersion");
                    o.remove("status");
                }
                v
            };
            assert_eq!(
                body(&got),
                body(written),
                "{f}: {kind} {ns}/{name} reads back differently"
            );
            assert_eq!(
                got["metadata"]["labels"], written["metadata"]["labels"],
                "{f}: {kind} {ns}/{name} labels"
            );
            applied += 1;
        }
        // Applying the same file again changes nothing (unless the file itself replaces a
        // resource with a later document of the same name).
        let again = cp.ok(&["apply", "-f", f]);
        assert!(
            repeats || again.lines().all(|l| l.ends_with(" unchanged")),
            "{f}: second apply: {again}"
        );
    }
    assert!(applied > 200, "only {applied} resources applied");
    assert!(skipped > 0);
}

#[test]
fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let cp = ControlPlane::start();
    let dir = tempfile::tempdir().unwrap();
    let vs = |spec: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: reviews\nspec:\n{spec}"
        )
    };
    let good = "  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews}\n";
    let big_annotation = "x".repeat(10 * 1024 * 1024);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("malformed.yaml", b"apiVersion: v1\nkind: [Service\n".to_vec(), "malformed YAML"),
        ("wrong-type.yaml", vs("  hosts: reviews\n").into_bytes(), "spec.hosts"),
        (
            "unknown-field.yaml",
            vs("  hosts: [reviews]\n  http:\n  - route:\n    - destination: {hots: reviews}\n").into_bytes(),
            "spec.http[0].route[0].destination",
        ),
        ("unknown-kind.yaml", b"apiVersion: networking.istio.io/v1\nkind: VirtualServis\nmetadata: {name: x}\n".to_vec(), "unknown kind \"VirtualServis\""),
        (
            "huge.yaml",
            format!("apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: huge\n  annotations:\n    a: \"{big_annotation}\"\n").into_bytes(),
            "limit",
        ),
        ("latin1.yaml", b"apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: caf\xe9}\n".to_vec(), "not UTF-8"),
        ("invalid.yaml", vs("  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews}\n      weight: -5\n").into_bytes(), "weight"),
    ];
    let before = revision(&cp);
    for (name, bytes, expect) in &cases {
        let path = dir.path().join(name);
        // One good document before the bad one: it must not be applied either.
        let mut content = vs(good).into_bytes();
        content.extend_from_slice(b"\n---\n");
        content.extend_from_slice(bytes);
        std::fs::write(&path, &content).unwrap();
        let p = path.to_str().unwrap();
        for cmd in [vec!["validate", "-f", p], vec!["apply", "-f", p]] {
            let out = cp.cli(&cmd);
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(!out.status.success(), "{cmd:?} {name} succeeded: {text}");
            assert!(
                text.contains(expect),
                "{cmd:?} {name}: expected {expect:?} in: {text}"
            );
            assert!(
                text.contains(name),
                "{cmd:?} {name}: the message does not name the file: {text}"
            );
        }
        assert_eq!(revision(&cp), before, "{name} changed the store");
    }
    // A write without the token: 401, nothing written.
    let body = r#"{"apiVersion":"networking.istio.io/v1","kind":"VirtualService","metadata":{"name":"x"},"spec":{"hosts":["x"]}}"#;
    let path = "/apis/networking.istio.io/v1/namespaces/default/virtualservices";
    let (code, msg) = http(&cp.server(), "POST", path, None, Some(body));
    assert_eq!(code, 401, "{msg}");
    let (code, _) = http(
        &cp.server(),
        "POST",
        path,
        Some("not-the-token"),
        Some(body),
    );
    assert_eq!(code, 401);
    assert_eq!(
        revision(&cp),
        before,
        "an unauthenticated write changed the store"
    );
    let (code, _) = http(&cp.server(), "GET", "/healthz", None, None);
    assert_eq!(code, 200);
    let mode = std::fs::metadata(cp.data_dir().join("token"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn acknowledged_writes_survive_kill_9_and_restart() {
    let mut cp = ControlPlane::start();
    let dir = tempfile::tempdir().unwrap();
    let mut names = Vec::new();
    for i in 0..20 {
        let name = format!("svc-{i}");
        let path = dir.path().join(format!("{name}.yaml"));
        std::fs::write(
            &path,
            format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  ports: [{{port: {}, name: http}}]\n", 8000 + i),
        )
        .unwrap();
        let out = cp.ok(&["apply", "-f", path.to_str().unwrap()]);
        assert_eq!(out.trim(), format!("service/{name} created"));
        names.push(name);
    }
    // The control plane also writes on its own (the virtual IP table, after each new service):
    // let that settle before taking the revision.
    let mut rev = revision(&cp);
    loop {
        std::thread::sleep(std::time::Duration::from_millis(300));
        let again = revision(&cp);
        if again == rev {
            break;
        }
        rev = again;
    }
    cp.kill9();
    cp.restart();
    let list = json(&cp.ok(&["get", "svc", "-o", "json"]));
    let got: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect();
    for n in &names {
        assert!(
            got.contains(&n.as_str()),
            "{n} lost across kill -9: {got:?}"
        );
    }
    assert_eq!(
        revision(&cp),
        rev,
        "the revision moved across a restart with no writes"
    );
    // Writes continue from the old revision.
    let path = dir.path().join("after.yaml");
    std::fs::write(
        &path,
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: after}\n",
    )
    .unwrap();
    cp.ok(&["apply", "-f", path.to_str().unwrap()]);
    assert!(revision(&cp).parse::<u64>().unwrap() > rev.parse::<u64>().unwrap());
}

#[test]
fn get_and_delete_by_kind_names() {
    let cp = ControlPlane::start();
    let bookinfo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/bookinfo");
    let out = cp.ok(&["apply", "-f", bookinfo.to_str().unwrap()]);
    assert!(
        out.contains("virtualservice.networking.istio.io/reviews created"),
        "{out}"
    );
    assert!(
        out.contains("destinationrule.networking.istio.io/reviews created"),
        "{out}"
    );
    let table = cp.ok(&["get", "vs"]);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(
        table.contains("reviews") && table.contains("[bookinfo-gateway]"),
        "{table}"
    );
    for word in [
        "dr",
        "destinationrules",
        "DestinationRule",
        "destinationrule.networking.istio.io",
    ] {
        assert!(cp.ok(&["get", word]).contains("reviews"), "get {word}");
    }
    let all = cp.ok(&["get", "gw", "-A"]);
    assert!(
        all.starts_with("NAMESPACE") && all.contains("bookinfo-gateway"),
        "{all}"
    );
    let yaml = cp.ok(&["get", "dr", "reviews", "-o", "yaml"]);
    assert!(
        yaml.contains("host: reviews") && yaml.contains("kind: DestinationRule"),
        "{yaml}"
    );
    assert_eq!(
        cp.ok(&["delete", "vs", "reviews"]).trim(),
        "virtualservice.networking.istio.io/reviews deleted"
    );
    let out = cp.cli(&["get", "vs", "reviews"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
    let out = cp.ok(&[
        "delete",
        "-f",
        bookinfo.join("destination-rules.yaml").to_str().unwrap(),
    ]);
    assert_eq!(out.lines().count(), 4, "{out}");
    let out = cp.cli(&["get", "nosuchkind"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown kind"));
}

#[test]
fn the_cli_says_how_to_start_a_missing_control_plane() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "t\n").unwrap();
    let out = std::process::Command::new(support::strait())
        .args(["get", "vs", "--server", "127.0.0.1:9", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no control plane at 127.0.0.1:9: start one with `strait control-plane`"),
        "{err}"
    );
}

#[test]
fn validate_and_analyze_report_as_json_with_exit_status() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("mesh.yaml");
    std::fs::write(
        &f,
        "apiVersion: v1\nkind: Service\nmetadata: {name: reviews}\nspec:\n  ports: [{port: 9080, name: http}]\n---\n\
         apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews}\nspec:\n  host: reviews\n  subsets: [{name: v1, labels: {version: v1}}]\n---\n\
         apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\nspec:\n  hosts: [reviews]\n  gateways: [nogw]\n  http:\n  - route:\n    - destination: {host: reviews, subset: v2}\n      weight: 50\n    - destination: {host: nothere}\n      weight: 50\n",
    )
    .unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(support::strait())
            .args(args)
            .output()
            .unwrap()
    };
    let p = f.to_str().unwrap();
    let out = run(&["validate", "-o", "json", "-f", p]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(report.as_array().unwrap().len(), 3);
    assert_eq!(report[2]["kind"], "VirtualService");
    assert_eq!(report[2]["index"], 2);
    assert_eq!(report[2]["file"], p);

    // istioctl's output: one entry per message, and exit code 79 when errors are found.
    let out = run(&["analyze", "-o", "json", "-f", p]);
    assert_eq!(out.status.code(), Some(79));
    let report = json(&String::from_utf8_lossy(&out.stdout));
    let errs: Vec<String> = report
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["level"] == "Error" && m["resource"] == "VirtualService default/reviews")
        .map(|m| format!("{} {}", m["code"], m["message"]))
        .collect();
    assert_eq!(errs.len(), 3, "{errs:?}");
    assert!(
        errs.iter()
            .any(|e| e.contains("gateway not found") && e.contains("nogw")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.contains("subset") && e.contains("reviews+v2")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.contains("IST0101") && e.contains("nothere")),
        "{errs:?}"
    );

    // Standard input, and a folder.
    let out = std::process::Command::new(support::strait())
        .args(["validate", "-f", "-"])
        .stdin(std::fs::File::open(&f).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = run(&["validate", "-f", dir.path().to_str().unwrap()]);
    assert!(out.status.success());
}

#[test]
fn watch_streams_changes_from_a_revision() {
    use std::io::{BufRead, BufReader, Write};
    let cp = ControlPlane::start();
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("sa.yaml");
    std::fs::write(
        &f,
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: first}\n",
    )
    .unwrap();
    cp.ok(&["apply", "-f", f.to_str().unwrap()]);
    let rev = revision(&cp);

    let server = cp.server();
    let addr = server.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET /api/v1/namespaces/default/serviceaccounts?watch=true&resourceVersion={rev} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\r\n",
        cp.token()
    )
    .unwrap();
    std::fs::write(
        &f,
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: second}\n",
    )
    .unwrap();
    cp.ok(&["apply", "-f", f.to_str().unwrap()]);
    cp.ok(&["delete", "sa", "first"]);
    // Chunked transfer encoding: event lines are between chunk-size lines.
    let mut events = Vec::new();
    for line in BufReader::new(stream).lines() {
        let line = line.expect("the watch stream ended or timed out");
        if line.starts_with('{') {
            let event = json(&line);
            events.push(format!(
                "{} {}",
                event["type"].as_str().unwrap(),
                event["object"]["metadata"]["name"].as_str().unwrap()
            ));
            if events.len() == 2 {
                break;
            }
        }
    }
    assert_eq!(events, ["ADDED second", "DELETED first"]);
}

#[test]
fn analyze_live_reads_what_the_control_plane_holds() {
    let cp = ControlPlane::start();
    let bookinfo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/bookinfo");
    cp.ok(&["apply", "-f", bookinfo.to_str().unwrap()]);
    let out = cp.ok(&["analyze", "--live", "-o", "json"]);
    let report = json(&out);
    assert!(
        report
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["level"] != "Error"),
        "{out}"
    );
    // Seen only with both live VirtualServices: the gateway's route to productpage has no
    // subset, while the mesh's productpage VirtualService routes to subset v1.
    assert!(
        report
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["code"] == "IST0140" && m["resource"] == "VirtualService default/bookinfo"),
        "{out}"
    );
    // A file's VirtualService that points at a subset nothing defines, analyzed with the live state.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("vs.yaml");
    std::fs::write(
        &f,
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews, subset: v9}\n",
    )
    .unwrap();
    let out = cp.cli(&["analyze", "--live", "-f", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(79));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("IST0101") && text.contains("reviews+v9"),
        "{text}"
    );
}
