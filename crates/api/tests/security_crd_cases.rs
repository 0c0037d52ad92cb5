//! Agreement with Istio's CRD test data for the security and telemetry kinds.
//!
//! `$STRAIT_TESTDATA/istio-validation/crd_testdata_cases.jsonl` holds the documents of Istio's
//! `pkg/config/validation/testdata/crds/*.yaml`, each with the verdict of Istio's CRD schema
//! (OpenAPI and CEL rules), which Istio's test cross-checks against the webhook. Strait reads and
//! validates each PeerAuthentication, AuthorizationPolicy, RequestAuthentication and Telemetry
//! document as `strait validate` does, and must agree with every verdict except the ones listed
//! in `EXCEPTIONS`, each with its reason.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::{Value, json};
use strait_api::parse::{Outcome, Source, parse_value};

const KINDS: [&str; 4] = [
    "PeerAuthentication",
    "AuthorizationPolicy",
    "RequestAuthentication",
    "Telemetry",
];

/// Cases where Strait knowingly differs from the CRD schema: `kind name` and why.
const EXCEPTIONS: &[(&str, &str)] = &[];

fn testdata() -> PathBuf {
    let dir = std::env::var_os("STRAIT_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata")
        });
    assert!(
        dir.join("istio-validation").is_dir(),
        "Istio's test data is missing at {}: set STRAIT_TESTDATA to the shared/testdata folder \
         (a checkout of the project expects it at ../shared/testdata beside the repository)",
        dir.display()
    );
    dir
}

/// Strait's verdict on one case: Ok(()) when valid, else the first problem.
fn verdict(case: &Value) -> Result<(), String> {
    let mut metadata = case
        .get("metadata")
        .cloned()
        .unwrap_or_else(|| json!({"name": case["name"]}));
    if metadata.get("namespace").is_none() {
        metadata["namespace"] = json!("default");
    }
    let doc = json!({
        "apiVersion": case["apiVersion"],
        "kind": case["kind"],
        "metadata": metadata,
        "spec": case["spec"],
    });
    let parsed = parse_value(
        Source {
            file: "case".into(),
            index: 0,
        },
        doc,
    );
    match parsed.outcome {
        Outcome::Resource(r) => match r.validate().errors.first() {
            None => Ok(()),
            Some(e) => Err(e.to_string()),
        },
        Outcome::Unsupported(why) => Err(why),
        Outcome::Invalid(e) => Err(e.to_string()),
    }
}

#[test]
fn agrees_with_istio_crd_cases_for_security_and_telemetry() {
    let path = testdata().join("istio-validation/crd_testdata_cases.jsonl");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let exceptions: BTreeMap<&str, &str> = EXCEPTIONS.iter().copied().collect();

    let mut per_kind: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut unlisted = Vec::new();
    let mut now_agree = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let case: Value = serde_json::from_str(line).unwrap();
        let kind = case["kind"].as_str().unwrap_or_default();
        let Some(kind) = KINDS.iter().copied().find(|k| *k == kind) else {
            continue;
        };
        let key = format!("{kind} {}", case["name"].as_str().unwrap_or_default());
        let istio_valid = case["valid"].as_bool().unwrap();
        let ours = verdict(&case);
        let agree = ours.is_ok() == istio_valid;
        let entry = per_kind.entry(kind).or_default();
        entry.0 += 1;
        entry.1 += usize::from(agree);
        match (agree, exceptions.contains_key(key.as_str())) {
            (false, false) => unlisted.push(match ours {
                Ok(()) => format!(
                    "{key} | istio: invalid ({}), strait: valid",
                    case["expected_error_substring"]
                        .as_str()
                        .unwrap_or_default()
                ),
                Err(e) => format!("{key} | istio: valid, strait: invalid ({e})"),
            }),
            (true, true) => now_agree.push(key),
            _ => {}
        }
    }

    for (kind, (n, ok)) in &per_kind {
        eprintln!("CRD cases agreement {kind}: {ok}/{n}");
    }
    for d in &unlisted {
        eprintln!("UNLISTED CRD DISAGREEMENT {d}");
    }
    for k in &now_agree {
        eprintln!("LISTED BUT NOW AGREES {k}");
    }
    for kind in KINDS {
        assert!(
            per_kind.get(kind).is_some_and(|(n, _)| *n > 0),
            "no {kind} cases found in {}",
            path.display()
        );
    }
    assert!(
        unlisted.is_empty() && now_agree.is_empty(),
        "{} unlisted disagreements, {} listed exceptions that now agree (see above)",
        unlisted.len(),
        now_agree.len()
    );
}
