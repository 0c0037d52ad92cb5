//! Istio's own samples parse and validate clean: every Gateway, ServiceEntry, Sidecar,
//! WorkloadEntry and WorkloadGroup (`networking.istio.io`) under
//! `$STRAIT_TESTDATA/istio-samples`. (`kind: Gateway` of `gateway.networking.k8s.io` is the
//! Gateway API, not checked here.)

use std::path::{Path, PathBuf};

use strait_api::parse::{Outcome, ParseError, parse_bytes};

const KINDS: &[&str] = &[
    "Gateway",
    "ServiceEntry",
    "Sidecar",
    "WorkloadEntry",
    "WorkloadGroup",
];

fn testdata() -> PathBuf {
    let dir = std::env::var_os("STRAIT_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata")
        });
    assert!(
        dir.join("istio-samples").is_dir(),
        "Istio's samples are missing at {}: set STRAIT_TESTDATA to the shared/testdata folder \
         (a checkout of the project expects it at ../shared/testdata beside the repository)",
        dir.join("istio-samples").display()
    );
    dir
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

fn mentions_edge_kind(text: &str) -> bool {
    text.contains("networking.istio.io")
        && text.lines().any(|l| {
            l.trim_start()
                .strip_prefix("kind:")
                .is_some_and(|k| KINDS.contains(&k.trim()))
        })
}

#[test]
fn istio_samples_of_edge_kinds_are_valid() {
    let root = testdata().join("istio-samples");
    let mut files = Vec::new();
    yaml_files(&root, &mut files);

    let mut checked = 0;
    let mut failures = Vec::new();
    for path in files {
        let bytes = std::fs::read(&path).unwrap();
        let name = path.strip_prefix(&root).unwrap().display().to_string();
        let text = String::from_utf8_lossy(&bytes);
        for doc in parse_bytes(&name, &bytes) {
            let at = format!("{name} (document {})", doc.source.index);
            let ours = doc.api_version.starts_with("networking.istio.io/")
                && KINDS.contains(&doc.kind.as_str());
            match doc.outcome {
                // A YAML error stops the file; it matters when the file holds our kinds.
                Outcome::Invalid(ParseError::Yaml(e)) if mentions_edge_kind(&text) => {
                    failures.push(format!("{at}: {e}"));
                }
                Outcome::Resource(r) if ours => {
                    checked += 1;
                    let report = r.validate();
                    for e in &report.errors {
                        failures.push(format!("{at} {} {}: {e}", doc.kind, doc.name));
                    }
                    for w in &report.warnings {
                        eprintln!("warning: {at} {} {}: {w}", doc.kind, doc.name);
                    }
                }
                Outcome::Invalid(e) if ours => {
                    failures.push(format!("{at} {} {}: {e}", doc.kind, doc.name));
                }
                Outcome::Unsupported(why) if ours => failures.push(format!("{at}: {why}")),
                _ => {}
            }
        }
    }
    assert!(
        checked >= 20,
        "expected at least 20 documents of {KINDS:?} in the samples, found {checked}"
    );
    assert!(
        failures.is_empty(),
        "{} problems in Istio's samples:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!(
        "{checked} Gateway/ServiceEntry/Sidecar/WorkloadEntry/WorkloadGroup documents are valid"
    );
}
