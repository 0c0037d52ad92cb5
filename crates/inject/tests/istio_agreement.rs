//! `strait kube-inject` against Istio's own injection tests (`pkg/kube/inject`, the cases of
//! `TestInjection` and `TestInjectionOlderVersion` with Istio's default settings): Strait must
//! inject exactly where Istio injects and skip where it skips, write the same capture
//! parameters as Istio's `istio-init` arguments, add Istio's labels and annotations, rewrite
//! the same probes to the sidecar, place the sidecar where Istio does (native sidecar or not),
//! honour the user's own `istio-proxy`/`istio-init`, leave the application's containers,
//! volumes and the rest of the object as they were, and refuse the five bad-annotation inputs.
//!
//! The goldens embed Istio's own sidecar (image, pilot-agent arguments, environment, volumes),
//! which Strait replaces with its own: those are not compared. The test reports how many cases
//! agree and fails below 95%. Cases where Strait differs on purpose are listed in
//! `ON_PURPOSE`, with the reason, and count as disagreements.

mod support;

use serde_json::Value;
use strait_inject::{Injector, Values};
use support::*;

/// Where Strait differs from Istio on purpose (the golden's file name, and why).
const ON_PURPOSE: &[(&str, &str)] = &[
    (
        "inject/grpc-agent.yaml.injected",
        "Istio's proxyless gRPC template (grpc-agent): Strait serves no proxyless gRPC clients and refuses the template with a message",
    ),
    (
        "inject/grpc-simple.yaml.injected",
        "Istio's proxyless gRPC template (grpc-simple): refused, as grpc-agent",
    ),
    (
        "inject/cronjob.yaml.injected",
        "CronJob: Istio labels and annotates spec.jobTemplate.metadata, which never reaches the pods (they miss security.istio.io/tlsMode); Strait labels the pod template",
    ),
    (
        "inject/cronjob-old-version.yaml.injected",
        "CronJob: as cronjob.yaml",
    ),
];

fn injector(case: &Value) -> Injector {
    let mut inj = Injector::new(Values::default());
    inj.cluster_native = cluster_native(case);
    inj
}

/// Compares one pod template (ours against Istio's golden); each difference is a line.
fn compare_pod(
    input_spec: &Value,
    ours_meta: &Value,
    ours_spec: &Value,
    meta: &Value,
    spec: &Value,
) -> Vec<String> {
    let mut d = Vec::new();
    let golden_injected = meta["annotations"]["sidecar.istio.io/status"].is_string();
    let ours_injected = ours_meta["annotations"]["sidecar.istio.io/status"].is_string();
    if golden_injected != ours_injected {
        d.push(format!(
            "injection: Istio {}, Strait {}",
            if golden_injected { "injects" } else { "skips" },
            if ours_injected { "injects" } else { "skips" }
        ));
        return d;
    }
    if !golden_injected {
        if normalize(ours_meta) != normalize(meta) || normalize(ours_spec) != normalize(spec) {
            d.push("a skipped pod changed".into());
        }
        return d;
    }
    // Capture parameters.
    let args = |s: &Value| find(s, "istio-init").map(|c| c["args"].clone());
    if args(ours_spec) != args(spec) {
        d.push(format!(
            "istio-init args: Istio {:?}, Strait {:?}",
            args(spec),
            args(ours_spec)
        ));
    }
    // Labels, all of them.
    if ours_meta["labels"] != meta["labels"] {
        d.push(format!(
            "labels: Istio {}, Strait {}",
            meta["labels"], ours_meta["labels"]
        ));
    }
    // Annotations, but for the status (it names Strait's own containers and volumes) and the
    // overrides record (compared as the user's containers, below).
    let strip = |m: &Value| -> Value {
        let mut a = m["annotations"].clone();
        if let Some(o) = a.as_object_mut() {
            o.remove("sidecar.istio.io/status");
            o.remove("proxy.istio.io/overrides");
        }
        a
    };
    if strip(ours_meta) != strip(meta) {
        d.push(format!(
            "annotations: Istio {}, Strait {}",
            strip(meta),
            strip(ours_meta)
        ));
    }
    let overrides = |m: &Value| -> Value {
        m["annotations"]["proxy.istio.io/overrides"]
            .as_str()
            .and_then(|s| serde_json::from_str::<Value>(s).ok())
            .map(|v| canonical_quantities(&normalize(&v)))
            .unwrap_or(Value::Null)
    };
    if overrides(ours_meta) != overrides(meta) {
        d.push(format!(
            "proxy.istio.io/overrides: Istio {}, Strait {}",
            overrides(meta),
            overrides(ours_meta)
        ));
    }
    // Where everything is.
    for field in ["initContainers", "containers"] {
        if container_names(ours_spec, field) != container_names(spec, field) {
            d.push(format!(
                "{field}: Istio {:?}, Strait {:?}",
                container_names(spec, field),
                container_names(ours_spec, field)
            ));
        }
    }
    // The application's containers, as the golden has them (probes rewritten included).
    let injected_g: Vec<String> = ["initContainers", "containers"]
        .iter()
        .flat_map(|f| status_names(meta, f))
        .collect();
    for field in ["initContainers", "containers"] {
        for c in spec[field].as_array().into_iter().flatten() {
            let name = c["name"].as_str().unwrap_or_default();
            if injected_g.iter().any(|n| n == name) {
                continue;
            }
            match find(ours_spec, name) {
                Some(o) if normalize(o) == normalize(c) => {}
                Some(o) => d.push(format!(
                    "container {name}: Istio {}, Strait {}",
                    normalize(c),
                    normalize(o)
                )),
                None => d.push(format!("container {name} missing")),
            }
        }
    }
    // The sidecar: what Istio's behaviour makes visible.
    if let (Some(g), Some(o)) = (find(spec, "istio-proxy"), find(ours_spec, "istio-proxy")) {
        if !resources_equal(&g["resources"], &o["resources"]) {
            d.push(format!(
                "istio-proxy resources: Istio {}, Strait {}",
                g["resources"], o["resources"]
            ));
        }
        for field in ["restartPolicy", "readinessProbe", "startupProbe"] {
            if normalize(&g[field]) != normalize(&o[field]) {
                d.push(format!(
                    "istio-proxy {field}: Istio {}, Strait {}",
                    g[field], o[field]
                ));
            }
        }
        for field in ["runAsUser", "runAsGroup"] {
            if g["securityContext"][field] != o["securityContext"][field] {
                d.push(format!(
                    "istio-proxy securityContext.{field}: Istio {}, Strait {}",
                    g["securityContext"][field], o["securityContext"][field]
                ));
            }
        }
        let hooks = |c: &Value| -> Vec<String> {
            c["lifecycle"]
                .as_object()
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default()
        };
        if hooks(g) != hooks(o) {
            d.push(format!(
                "istio-proxy lifecycle hooks: Istio {:?}, Strait {:?}",
                hooks(g),
                hooks(o)
            ));
        }
        for var in ["ISTIO_KUBE_APP_PROBERS", "ISTIO_PROMETHEUS_ANNOTATIONS"] {
            let parse = |c: &Value| env(c, var).map(|s| serde_json::from_str::<Value>(s).unwrap());
            if parse(g) != parse(o) {
                d.push(format!(
                    "istio-proxy {var}: Istio {:?}, Strait {:?}",
                    parse(g),
                    parse(o)
                ));
            }
        }
        // The user's own istio-proxy wins over the template, field by field.
        if let Some(user) = find(input_spec, "istio-proxy") {
            let mut user = normalize(user);
            if user["image"] == "auto" {
                user.as_object_mut().unwrap().remove("image");
            }
            if !contains(o, &user) {
                d.push(format!(
                    "the user's istio-proxy {user} is not in Strait's {o}"
                ));
            }
        }
    }
    // The pod's other fields.
    let rest = |s: &Value| -> Value {
        let mut s = normalize(s);
        if let Some(m) = s.as_object_mut() {
            for k in ["containers", "initContainers", "volumes"] {
                m.remove(k);
            }
        }
        s
    };
    if rest(ours_spec) != rest(spec) {
        d.push(format!(
            "pod spec: Istio {}, Strait {}",
            rest(spec),
            rest(ours_spec)
        ));
    }
    // The application's volumes.
    let app_volumes = |m: &Value, s: &Value| -> Vec<Value> {
        let injected = status_names(m, "volumes");
        let mut v: Vec<Value> = s["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|v| !injected.iter().any(|n| v["name"] == n.as_str()))
            .map(normalize)
            .collect();
        v.sort_by_key(|v| v.to_string());
        v
    };
    if app_volumes(ours_meta, ours_spec) != app_volumes(meta, spec) {
        d.push(format!(
            "volumes: Istio {:?}, Strait {:?}",
            app_volumes(meta, spec),
            app_volumes(ours_meta, ours_spec)
        ));
    }
    d
}

/// Compares a whole file's output with the golden.
fn compare(input: &str, ours: &str, golden: &str) -> Vec<String> {
    let ins = yaml_docs(input);
    let ours = yaml_docs(ours);
    let golden = yaml_docs(golden);
    if ours.len() != golden.len() {
        return vec![format!(
            "{} documents, Istio wrote {}",
            ours.len(),
            golden.len()
        )];
    }
    let mut d = Vec::new();
    for (i, (o, g)) in ours.iter().zip(&golden).enumerate() {
        let pointers = pod_pointers(g);
        if pointers.is_empty() {
            if normalize(o) != normalize(g) {
                d.push(format!(
                    "document {}: a pass-through document changed",
                    i + 1
                ));
            }
            continue;
        }
        let input_doc = ins.get(i).cloned().unwrap_or(Value::Null);
        let mut o_rest = o.clone();
        let mut g_rest = g.clone();
        let mut i_rest = input_doc.clone();
        for (m, s) in &pointers {
            let null = Value::Null;
            let om = o.pointer(m).unwrap_or(&null);
            let gm = g.pointer(m).unwrap_or(&null);
            let is = input_doc.pointer(s).unwrap_or(&null);
            for line in compare_pod(
                is,
                om,
                o.pointer(s).unwrap_or(&null),
                gm,
                g.pointer(s).unwrap_or(&null),
            ) {
                d.push(format!("document {} {s}: {line}", i + 1));
            }
            for v in [&mut o_rest, &mut g_rest, &mut i_rest] {
                if let Some(x) = v.pointer_mut(m) {
                    *x = Value::Null;
                }
                if let Some(x) = v.pointer_mut(s) {
                    *x = Value::Null;
                }
            }
        }
        // Outside the pod templates Strait leaves the object as the user wrote it; Istio's
        // golden differs from it only by Go's re-serialisation (zero values added or dropped).
        if o_rest != i_rest {
            d.push(format!(
                "document {}: outside the pod template, Strait changed the input: input {}, Strait {}",
                i + 1,
                i_rest,
                o_rest
            ));
        }
        if drop_go_zero(&normalize(&o_rest)) != drop_go_zero(&normalize(&g_rest)) {
            d.push(format!(
                "document {}: outside the pod template: Istio {}, Strait {}",
                i + 1,
                normalize(&g_rest),
                normalize(&o_rest)
            ));
        }
    }
    d
}

#[test]
fn kube_inject_agrees_with_istio() {
    let dir = testdata();
    let cases = default_cases();
    assert_eq!(cases.len(), 86, "the default-settings cases of cases.jsonl");
    let mut agree = 0;
    let mut lines = Vec::new();
    let mut on_purpose_seen = Vec::new();
    for case in &cases {
        let input_path = case["in"].as_str().unwrap();
        let input = read(&dir.join(input_path));
        let result = injector(case).kube_inject(input_path, &input, "default");
        let name = case["want"].as_str().unwrap_or(input_path).to_string();
        let diffs: Vec<String> = match (case["expected_error"].as_str(), &result) {
            (Some(expected), Err(e)) => {
                let msg = e.to_string().to_lowercase();
                if msg.contains(expected) {
                    vec![]
                } else {
                    vec![format!(
                        "refused, but the error does not name {expected:?}: {e}"
                    )]
                }
            }
            (Some(expected), Ok(_)) => vec![format!("Istio refuses ({expected}); Strait injected")],
            (None, Err(e)) => vec![format!("Strait refused: {e}")],
            (None, Ok(out)) => compare(&input, &out.output, &read(&dir.join(&name))),
        };
        if let Some((_, why)) = ON_PURPOSE.iter().find(|(n, _)| *n == name) {
            assert!(
                !diffs.is_empty(),
                "{name} is listed as a deliberate difference but now agrees: take it off ON_PURPOSE"
            );
            on_purpose_seen.push(format!("  {name}: {why}"));
            continue;
        }
        if diffs.is_empty() {
            agree += 1;
        } else {
            lines.push(format!("  {name}:\n    {}", diffs.join("\n    ")));
        }
    }
    let total = cases.len();
    let pct = 100.0 * agree as f64 / total as f64;
    println!(
        "kube-inject agrees with Istio on {agree} of {total} default-settings cases ({pct:.1}%)"
    );
    println!(
        "differences on purpose ({}):\n{}",
        on_purpose_seen.len(),
        on_purpose_seen.join("\n")
    );
    if !lines.is_empty() {
        println!("other differences ({}):\n{}", lines.len(), lines.join("\n"));
    }
    assert_eq!(on_purpose_seen.len(), ON_PURPOSE.len());
    assert!(
        pct >= 95.0,
        "agreement {pct:.1}% is below 95%:\n{}",
        lines.join("\n")
    );
}

#[test]
fn proxyless_grpc_templates_are_refused_with_a_reason() {
    let dir = testdata();
    let input = read(&dir.join("inject/grpc-simple.yaml"));
    let e = Injector::new(Values::default())
        .kube_inject("grpc-simple.yaml", &input, "default")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("grpc-simple") && e.contains("proxyless gRPC"),
        "{e}"
    );
}

#[test]
fn injection_is_idempotent() {
    let dir = testdata();
    for case in default_cases() {
        let Some(want) = case["want"].as_str() else {
            continue;
        };
        if ON_PURPOSE.iter().any(|(n, _)| *n == want) {
            continue;
        }
        let input = read(&dir.join(case["in"].as_str().unwrap()));
        let inj = injector(&case);
        let once = inj.kube_inject("in", &input, "default").unwrap().output;
        let twice = inj.kube_inject("once", &once, "default").unwrap().output;
        assert_eq!(
            yaml_docs(&once),
            yaml_docs(&twice),
            "{want}: injecting an injected file changed it"
        );
    }
}
