//! Istio's analyzer tests (`pkg/config/analysis/analyzers/analyzers_test.go`, transcribed in
//! `istio-analyze/cases.jsonl` of the shared test data) run through Strait's analyzers.
//!
//! Each case runs its one analyzer over its input files, as Istio's harness does (no default
//! namespace, Istio's default ingress gateway Pod and Service added, the case's mesh config
//! merged over the defaults, system namespaces left out), and the messages are compared with
//! Istio's as (code, resource) multisets. Recall is the share of Istio's expected messages
//! found; precision the share of reported messages that Istio expects. Both must be 90% or more.
//!
//! The data is read from `STRAIT_TESTDATA` (default: `../shared/testdata` next to the
//! workspace); it is not part of the repository.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;
use strait_analyze::{Analyzer, Object, Options, Source, analyze, analyzers};

/// Cases left out, with why. Each counts as missing all its expected messages.
const LEFT_OUT: &[(&str, &str)] = &[];

fn testdata() -> PathBuf {
    let dir = std::env::var_os("STRAIT_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata"));
    let cases = dir.join("istio-analyze/cases.jsonl");
    assert!(
        cases.is_file(),
        "Istio's analyzer cases are missing: {} does not exist. Set STRAIT_TESTDATA to the folder \
         that holds istio-analyze/ (default: ../shared/testdata next to the workspace).",
        cases.display()
    );
    dir.join("istio-analyze")
}

fn load(dir: &Path, files: &[String]) -> Vec<Object> {
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(dir.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        let (docs, err) = strait_analyze::object::parse_documents(&text);
        assert!(err.is_none(), "{f}: {err:?}");
        for (index, d) in docs.into_iter().enumerate() {
            let source = Source {
                file: f.clone(),
                index,
            };
            out.extend(Object::from_value(d, Some(source), ""));
        }
    }
    out
}

fn yaml(dir: &Path, file: &str) -> Value {
    let text = std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// Istio's Go type for the analyzer, as Strait names it.
fn analyzer_name(go: &str) -> &str {
    if go.starts_with("schemaValidation.CollectionValidationAnalyzer") {
        // Istio's per-kind schema analyzer; Strait's validates every kind it types.
        "schema.ValidationAnalyzer"
    } else {
        go
    }
}

/// The kinds in the input that Strait does not store (read raw, for analysis only).
fn raw_only_kinds(objects: &[Object]) -> BTreeSet<String> {
    objects
        .iter()
        .filter(|o| {
            let api_version = if o.group.is_empty() {
                o.version.clone()
            } else {
                format!("{}/{}", o.group, o.version)
            };
            strait_api::Kind::from_type(&api_version, &o.kind).is_err()
        })
        .map(|o| o.kind.clone())
        .collect()
}

#[test]
fn istio_analyzer_cases() {
    let dir = testdata();
    let lines = std::fs::read_to_string(dir.join("cases.jsonl")).unwrap();
    let (mut expected_total, mut reported_total, mut found_total) = (0usize, 0usize, 0usize);
    let mut report = String::new();
    let mut raw_kinds: BTreeMap<String, usize> = BTreeMap::new();
    let mut cases = 0;
    let (mut wide_reported, mut wide_found) = (0usize, 0usize);
    for line in lines.lines().filter(|l| !l.trim().is_empty()) {
        let case: Value = serde_json::from_str(line).unwrap();
        cases += 1;
        let name = case["name"].as_str().unwrap();
        let expected: Vec<(String, String)> = case["expected"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["code"].as_str().unwrap().to_string(),
                    e["resource"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        expected_total += expected.len();
        if let Some((_, why)) = LEFT_OUT.iter().find(|(n, _)| *n == name) {
            report.push_str(&format!("LEFT OUT {name}: {why}\n"));
            continue;
        }
        let files: Vec<String> = case["input_files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap().to_string())
            .collect();
        let objects = load(&dir, &files);
        for k in raw_only_kinds(&objects) {
            *raw_kinds.entry(k).or_default() += 1;
        }
        let mut options = Options::istio_test_harness();
        options.mesh_config = case["mesh_config"].as_str().map(|f| yaml(&dir, f));
        options.mesh_networks = case["mesh_networks"].as_str().map(|f| yaml(&dir, f));
        let go_name = case["analyzer"].as_str().unwrap();
        let Some(a) = analyzers::by_name(analyzer_name(go_name)) else {
            report.push_str(&format!("NO ANALYZER {name}: {go_name}\n"));
            continue;
        };
        let messages = analyze(&objects, &[a], &options).messages;
        // For information: every analyzer over the case's files (as `strait analyze` runs),
        // keeping the messages with a code of the case's analyzer. Other analyzers report
        // those codes too (mostly IST0101 for hosts the case's files define no Service for),
        // as Istio's own full run does; Istio's harness runs one analyzer, as asserted below.
        let codes: Vec<&str> = a.codes().iter().map(|c| c.code).collect();
        let all: Vec<&dyn Analyzer> = analyzers::all()
            .into_iter()
            .filter(|x| x.default_on() || x.name() == a.name())
            .collect();
        let mut wide: Vec<(String, String)> = analyze(&objects, &all, &options)
            .messages
            .iter()
            .filter(|m| codes.contains(&m.code.code))
            .map(|m| (m.code.code.to_string(), m.subject.to_string()))
            .collect();
        wide_reported += wide.len();
        for e in &expected {
            if let Some(i) = wide.iter().position(|g| g == e) {
                wide.remove(i);
                wide_found += 1;
            }
        }
        let got: Vec<(String, String)> = messages
            .iter()
            .map(|m| (m.code.code.to_string(), m.subject.to_string()))
            .collect();
        reported_total += got.len();
        // Multiset intersection.
        let mut remaining = got.clone();
        let mut missing = Vec::new();
        for e in &expected {
            match remaining.iter().position(|g| g == e) {
                Some(i) => {
                    remaining.remove(i);
                    found_total += 1;
                }
                None => missing.push(e.clone()),
            }
        }
        if !missing.is_empty() || !remaining.is_empty() {
            report.push_str(&format!("MISMATCH {name} ({go_name})\n"));
            for (c, r) in &missing {
                report.push_str(&format!("    missing   {c} {r}\n"));
            }
            for (c, r) in &remaining {
                let text = messages
                    .iter()
                    .find(|m| m.code.code == c && m.subject.to_string() == *r)
                    .map(|m| m.text.as_str())
                    .unwrap_or("");
                report.push_str(&format!("    unexpected {c} {r}: {text}\n"));
            }
        }
    }
    let recall = found_total as f64 / expected_total as f64;
    let precision = if reported_total == 0 {
        0.0
    } else {
        found_total as f64 / reported_total as f64
    };
    println!("{report}");
    println!(
        "Kinds Strait does not store, read from the cases' files for analysis only (cases): {}",
        raw_kinds
            .iter()
            .map(|(k, n)| format!("{k} ({n})"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "Istio analyzer cases: {cases}; expected messages {expected_total}, found {found_total}, \
         reported {reported_total}; recall {:.1}%, precision {:.1}%",
        recall * 100.0,
        precision * 100.0
    );
    println!(
        "With every analyzer run, the messages of each case's analyzer's codes: {wide_found} of \
         {wide_reported} expected ({:.1}%)",
        wide_found as f64 * 100.0 / wide_reported.max(1) as f64
    );
    assert!(recall >= 0.90, "recall {:.1}% is below 90%", recall * 100.0);
    assert!(
        precision >= 0.90,
        "precision {:.1}% is below 90%",
        precision * 100.0
    );
}
