//! Istio's samples read and validate clean: every Service, Deployment, ServiceAccount,
//! AuthorizationPolicy, PeerAuthentication and RequestAuthentication document under
//! `$STRAIT_TESTDATA/istio-samples` must become a resource with no validation error.

use std::path::{Path, PathBuf};

use strait_api::parse::{Outcome, parse_bytes};

const KINDS: [&str; 6] = [
    "Service",
    "Deployment",
    "ServiceAccount",
    "AuthorizationPolicy",
    "PeerAuthentication",
    "RequestAuthentication",
];

fn samples_dir() -> PathBuf {
    let dir = std::env::var_os("STRAIT_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata")
        })
        .join("istio-samples");
    assert!(
        dir.is_dir(),
        "Istio's samples are missing at {}: set STRAIT_TESTDATA to the shared/testdata folder \
         (a checkout of the project expects it at ../shared/testdata beside the repository)",
        dir.display()
    );
    dir
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            collect(&path, out);
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
        {
            out.push(path);
        }
    }
}

#[test]
fn samples_of_security_and_kubernetes_kinds_validate_clean() {
    let dir = samples_dir();
    let mut files = Vec::new();
    collect(&dir, &mut files);

    let mut checked = std::collections::BTreeMap::<&str, usize>::new();
    let mut failures = Vec::new();
    for file in &files {
        let bytes = std::fs::read(file).unwrap();
        let name = file
            .strip_prefix(&dir)
            .unwrap_or(file)
            .display()
            .to_string();
        for doc in parse_bytes(&name, &bytes) {
            let Some(kind) = KINDS.iter().copied().find(|k| *k == doc.kind) else {
                continue;
            };
            // Gateway API and other groups reuse some kind names; only core, apps and Istio count.
            let group = doc.api_version.rsplit_once('/').map_or("", |(g, _)| g);
            if !matches!(group, "" | "apps" | "security.istio.io") {
                continue;
            }
            *checked.entry(kind).or_default() += 1;
            let at = format!("{name}#{} ({kind} {:?})", doc.source.index, doc.name);
            match &doc.outcome {
                Outcome::Resource(r) => {
                    let report = r.validate();
                    for e in &report.errors {
                        failures.push(format!("{at}: {e}"));
                    }
                }
                Outcome::Unsupported(why) => failures.push(format!("{at}: unsupported: {why}")),
                Outcome::Invalid(e) => failures.push(format!("{at}: {e}")),
            }
        }
    }
    eprintln!("checked samples: {checked:?}");
    assert!(
        checked.values().sum::<usize>() > 0,
        "no sample documents of {KINDS:?} found under {}",
        dir.display()
    );
    assert!(
        failures.is_empty(),
        "{} sample documents do not validate clean:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
