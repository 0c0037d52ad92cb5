//! The injection webhook against Istio's webhook tests: the 36 policy cases of
//! `TestInjectRequired`, the 6 HTTP cases of `TestRunAndServe` (and its counters), and, over
//! every default-settings input of `TestInjection`, that the pod a webhook patch yields is the
//! pod `kube-inject` writes.

mod support;

use std::sync::atomic::Ordering;

use serde_json::{Value, json};
use strait_inject::patch;
use strait_inject::policy::inject_required;
use strait_inject::values::Policy;
use strait_inject::webhook::{Webhook, decode_patch};
use strait_inject::{Injector, Values};
use support::*;

#[test]
fn injection_policy_matches_istios_36_cases() {
    let cases = jsonl("inject-required.jsonl");
    assert_eq!(cases.len(), 36);
    let mut wrong = Vec::new();
    for c in &cases {
        let policy: Policy = serde_json::from_value(c["policy"].clone()).unwrap();
        let never: Vec<Value> = c["never_inject_selector"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let always: Vec<Value> = c["always_inject_selector"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        // A selector given as one object in the file is one selector.
        let never = if never.is_empty() && c["never_inject_selector"].is_object() {
            vec![c["never_inject_selector"].clone()]
        } else {
            never
        };
        let always = if always.is_empty() && c["always_inject_selector"].is_object() {
            vec![c["always_inject_selector"].clone()]
        } else {
            always
        };
        let meta = json!({"labels": c["pod_labels"], "annotations": c["pod_annotations"]});
        let spec = json!({"hostNetwork": c["host_network"]});
        let got = inject_required(
            &policy,
            &never,
            &always,
            c["namespace"].as_str().unwrap(),
            &meta,
            &spec,
        )
        .is_ok();
        if got != c["injected"].as_bool().unwrap() {
            wrong.push(format!(
                "{} (policy {}): Strait {got}",
                c["name"], c["policy"]
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "policy cases that differ:\n{}",
        wrong.join("\n")
    );
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn http_behaviour_matches_istios_6_cases() {
    let cases = jsonl("webhook-http.jsonl");
    assert_eq!(cases.len(), 6);
    let hook = Webhook::new(Injector::new(Values::default()));
    for c in &cases {
        let body: Vec<u8> = match c["body"].as_str().unwrap() {
            "admission_review" => serde_json::to_vec(&c["admission_review"]).unwrap(),
            "garbage" => hex(c["body_bytes_hex"].as_str().unwrap()),
            "empty" => Vec::new(),
            other => panic!("unknown body {other}"),
        };
        let r = hook.serve(c["content_type"].as_str(), &body);
        assert_eq!(
            u64::from(r.status),
            c["expected_status"].as_u64().unwrap(),
            "{}: status",
            c["name"]
        );
        if let Some(allowed) = c["expected_allowed"].as_bool() {
            let v: Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(v["kind"], "AdmissionReview", "{}", c["name"]);
            assert_eq!(v["response"]["allowed"], allowed, "{}: {v}", c["name"]);
            if c["body"] == "admission_review" {
                // The answer is in the version asked.
                assert_eq!(v["apiVersion"], c["admission_review"]["apiVersion"]);
            }
            if c["name"] == "valid" || c["name"] == "valid(v1 version)" {
                let ops = decode_patch(&v["response"]).expect("a JSON patch");
                let mut pod = c["admission_review"]["request"]["object"].clone();
                patch::apply(&mut pod, &ops).unwrap();
                let names = container_names(&pod["spec"], "initContainers");
                assert!(names.contains(&"istio-proxy".to_string()), "{names:?}");
                assert!(names.contains(&"c0".to_string()), "{names:?}");
            }
        }
    }
    let m = &hook.metrics;
    for (name, counter) in [
        ("requests", &m.requests),
        ("success", &m.success),
        ("skip", &m.skip),
        ("failure", &m.failure),
    ] {
        assert!(
            counter.load(Ordering::Relaxed) >= 1,
            "sidecar_injection_{name}_total never counted"
        );
    }
    assert!(m.render().contains("sidecar_injection_requests_total 6"));
}

/// A pod as the API server hands it to the webhook, made from a workload's pod template as
/// Istio's test makes it (a Deployment's pod belongs to ReplicaSet NAME-fake).
fn pod_of(doc: &Value, meta: &Value, spec: &Value) -> Value {
    let kind = doc["kind"].as_str().unwrap();
    let name = doc["metadata"]["name"].as_str().unwrap_or_default();
    let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec});
    if pod["metadata"].is_null() {
        pod["metadata"] = json!({});
    }
    match kind {
        "Pod" => {}
        "Deployment" => {
            pod["metadata"]["generateName"] = json!(format!("{name}-fake-"));
            pod["metadata"]["labels"]["pod-template-hash"] = json!("fake");
            pod["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": format!("{name}-fake"), "controller": true, "uid": "1"}]);
        }
        "CronJob" => {
            pod["metadata"]["generateName"] = json!(format!("{name}-28000000-"));
            pod["metadata"]["ownerReferences"] = json!([{"apiVersion": "batch/v1", "kind": "Job",
                "name": format!("{name}-28000000"), "controller": true, "uid": "1"}]);
        }
        other => {
            pod["metadata"]["generateName"] = json!(format!("{name}-"));
            pod["metadata"]["ownerReferences"] = json!([{"apiVersion": doc["apiVersion"], "kind": other,
                "name": name, "controller": true, "uid": "1"}]);
        }
    }
    pod
}

/// What the conversion to a Pod added, taken out again for the comparison (a Pod document is
/// the pod itself: its own `generateName` and `ownerReferences` stay).
fn strip_conversion(pod: &mut Value, kind: &str) {
    if kind != "Pod" {
        let m = pod["metadata"].as_object_mut().unwrap();
        for k in ["generateName", "ownerReferences", "namespace"] {
            m.remove(k);
        }
        if let Some(l) = m.get_mut("labels").and_then(Value::as_object_mut) {
            l.remove("pod-template-hash");
        }
    }
    for k in ["apiVersion", "kind"] {
        pod.as_object_mut().unwrap().remove(k);
    }
}

#[test]
fn a_webhook_patch_yields_the_pod_kube_inject_writes() {
    let dir = testdata();
    let mut compared = 0;
    for case in default_cases() {
        if case.get("expected_error").is_some() {
            continue;
        }
        let input = read(&dir.join(case["in"].as_str().unwrap()));
        let mut inj = Injector::new(Values::default());
        inj.cluster_native = cluster_native(&case);
        let Ok(out) = inj.kube_inject("in", &input, "default") else {
            // Refused on purpose (proxyless gRPC): the webhook must refuse too.
            let doc = &yaml_docs(&input)[0];
            let (m, s) = &pod_pointers(doc)[0];
            let pod = pod_of(doc, doc.pointer(m).unwrap(), doc.pointer(s).unwrap());
            let hook = Webhook::new(inj);
            let r = hook.admit(&json!({"uid": "u", "namespace": "default", "object": pod}));
            assert_eq!(r["allowed"], false, "{r}");
            continue;
        };
        let inputs = yaml_docs(&input);
        let outputs = yaml_docs(&out.output);
        let mut inj2 = Injector::new(Values::default());
        inj2.cluster_native = cluster_native(&case);
        let hook = Webhook::new(inj2);
        for (doc, injected) in inputs.iter().zip(&outputs) {
            for (m, s) in pod_pointers(doc) {
                let null = Value::Null;
                // In a List, the workload is the item the template is in.
                let owner = match m.strip_prefix("/items/") {
                    Some(rest) => {
                        let i = rest.split('/').next().unwrap();
                        doc.pointer(&format!("/items/{i}")).unwrap()
                    }
                    None => doc,
                };
                let pod = pod_of(
                    owner,
                    doc.pointer(&m).unwrap_or(&null),
                    doc.pointer(&s).unwrap(),
                );
                let namespace = owner["metadata"]["namespace"].as_str().unwrap_or("default");
                let review = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                    "request": {"uid": "u1", "namespace": namespace, "operation": "CREATE", "object": pod}});
                let r = hook.serve(
                    Some("application/json"),
                    &serde_json::to_vec(&review).unwrap(),
                );
                assert_eq!(r.status, 200);
                let v: Value = serde_json::from_slice(&r.body).unwrap();
                assert_eq!(v["response"]["uid"], "u1");
                assert_eq!(v["response"]["allowed"], true, "{}: {v}", case["in"]);
                let mut patched = pod.clone();
                if let Some(ops) = decode_patch(&v["response"]) {
                    patch::apply(&mut patched, &ops).unwrap();
                }
                strip_conversion(&mut patched, owner["kind"].as_str().unwrap_or_default());
                let want = json!({"metadata": injected.pointer(&m).cloned().unwrap_or(json!({})),
                                  "spec": injected.pointer(&s).unwrap()});
                let mut diffs = Vec::new();
                diff_paths(&normalize(&patched), &normalize(&want), "", &mut diffs);
                assert!(
                    diffs.is_empty(),
                    "{} {s}: the webhook's pod differs from kube-inject's (webhook vs kube-inject):\n{}",
                    case["in"],
                    diffs.join("\n")
                );
                compared += 1;
            }
        }
    }
    assert!(compared >= 80, "only {compared} pods compared");
}
