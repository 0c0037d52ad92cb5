//! Every VirtualService and DestinationRule of Istio's samples reads and validates clean.
//!
//! The samples are in `$STRAIT_TESTDATA/istio-samples` (a copy of istio/istio's `samples/`).

use std::path::{Path, PathBuf};

use strait_api::Kind;
use strait_api::parse::{Outcome, parse_bytes};

fn samples_dir() -> PathBuf {
    let base = std::env::var_os("STRAIT_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata")
        });
    let dir = base.join("istio-samples");
    assert!(
        dir.is_dir(),
        "Istio's samples are missing at {}: set STRAIT_TESTDATA to the shared/testdata folder \
         (a checkout of the project expects it at ../shared/testdata beside the repository)",
        dir.display()
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

#[test]
fn istio_samples_routing_resources_read_and_validate_clean() {
    let mut files = Vec::new();
    yaml_files(&samples_dir(), &mut files);
    let mut checked = 0;
    let mut failures = Vec::new();
    for path in &files {
        let bytes = std::fs::read(path).unwrap();
        let name = path.display().to_string();
        for doc in parse_bytes(&name, &bytes) {
            if doc.kind != "VirtualService" && doc.kind != "DestinationRule" {
                continue;
            }
            if !doc.api_version.starts_with("networking.istio.io/") {
                continue;
            }
            checked += 1;
            let at = format!(
                "{}#{} {} {}",
                doc.source.file, doc.source.index, doc.kind, doc.name
            );
            match &doc.outcome {
                Outcome::Resource(r) => {
                    assert!(matches!(
                        r.kind,
                        Kind::VirtualService | Kind::DestinationRule
                    ));
                    let report = r.validate();
                    if !report.errors.is_empty() {
                        let errs: Vec<String> =
                            report.errors.iter().map(ToString::to_string).collect();
                        failures.push(format!("{at}: {}", errs.join("; ")));
                    }
                }
                other => failures.push(format!("{at}: not read: {other:?}")),
            }
        }
    }
    eprintln!(
        "checked {checked} VirtualServices and DestinationRules in {} files",
        files.len()
    );
    assert!(
        checked >= 30,
        "expected Istio's samples to hold at least 30 VirtualServices and DestinationRules, \
         found {checked}"
    );
    assert!(
        failures.is_empty(),
        "{} of {checked} routing resources failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
