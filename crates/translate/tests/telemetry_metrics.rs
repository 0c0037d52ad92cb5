//! The Telemetry API's metric overrides → each listener's `istio.stats` metadata (which of
//! Istio's metrics strait-proxy leaves out on that side), for the documents of Istio's
//! "Customizing Istio Metrics with Telemetry API" task, unchanged
//! (`istio-samples/tasks/telemetry/metrics.yaml`), and the merge of a workload override over a
//! mesh default.

mod support;

use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::google::protobuf::value::Kind;
use strait_api::Resource;
use strait_translate::translate::translate;
use strait_xds_core::{CaptureMode, XdsResources};
use support::*;

/// The named Telemetry of the task file.
fn doc(name: &str) -> Resource {
    istio_sample("tasks/telemetry/metrics.yaml")
        .into_iter()
        .find(|r| r.name() == name)
        .unwrap_or_else(|| panic!("metrics.yaml has no document named {name}"))
}

/// What productpage's sidecar gets with these resources.
fn productpage_with(resources: Vec<Resource>) -> XdsResources {
    translate(
        &snapshot(resources),
        &bookinfo_registry(),
        &productpage(CaptureMode::Iptables),
    )
}

/// A listener's disabled metrics (empty without the metadata).
fn disabled(l: &Listener) -> Vec<String> {
    let Some(stats) = l
        .metadata
        .as_ref()
        .and_then(|m| m.filter_metadata.get("istio.stats"))
    else {
        return Vec::new();
    };
    let Some(Kind::ListValue(list)) = &stats.fields["disabled"].kind else {
        panic!("{}: istio.stats disabled is not a list", l.name)
    };
    list.values
        .iter()
        .map(|v| match &v.kind {
            Some(Kind::StringValue(s)) => s.clone(),
            other => panic!("{}: not a string: {other:?}", l.name),
        })
        .collect()
}

/// The disabled metrics of the server side (virtualInbound) and of the client side (every
/// other listener, which must all agree).
fn sides(res: &XdsResources) -> (Vec<String>, Vec<String>) {
    let server = disabled(&res.listeners["virtualInbound"]);
    let mut client: Option<Vec<String>> = None;
    for l in res
        .listeners
        .values()
        .filter(|l| l.name != "virtualInbound")
    {
        let d = disabled(l);
        match &client {
            Some(c) => assert_eq!(c, &d, "{}: the client side's listeners differ", l.name),
            None => client = Some(d),
        }
    }
    (server, client.expect("client-side listeners"))
}

const ALL: [&str; 10] = [
    "REQUEST_COUNT",
    "REQUEST_DURATION",
    "REQUEST_SIZE",
    "RESPONSE_SIZE",
    "TCP_OPENED_CONNECTIONS",
    "TCP_CLOSED_CONNECTIONS",
    "TCP_SENT_BYTES",
    "TCP_RECEIVED_BYTES",
    "GRPC_REQUEST_MESSAGES",
    "GRPC_RESPONSE_MESSAGES",
];

#[test]
fn without_a_telemetry_every_metric_is_on() {
    let res = productpage_with(Vec::new());
    assert_eq!(sides(&res), (vec![], vec![]));
}

#[test]
fn the_tasks_disable_documents_switch_off_what_istio_documents() {
    let cases: [(&str, &[&str], &[&str]); 4] = [
        ("remove-all-metrics", &ALL, &ALL),
        (
            "remove-request-count",
            &["REQUEST_COUNT"],
            &["REQUEST_COUNT"],
        ),
        ("remove-client", &[], &["REQUEST_COUNT"]),
        ("remove-server", &["REQUEST_COUNT"], &[]),
    ];
    for (name, server, client) in cases {
        let res = productpage_with(vec![doc(name)]);
        assert_eq!(
            sides(&res),
            (
                server.iter().map(|s| s.to_string()).collect(),
                client.iter().map(|s| s.to_string()).collect()
            ),
            "{name}: (server side, client side)"
        );
    }
    // Tag overrides and the reporting interval switch nothing off.
    for name in ["remove-tags", "custom-tags", "reporting-interval"] {
        let res = productpage_with(vec![doc(name)]);
        assert_eq!(sides(&res), (vec![], vec![]), "{name}");
    }
}

#[test]
fn a_workload_override_turns_back_on_what_the_mesh_default_turned_off() {
    let workload = yaml(
        "workload.yaml",
        b"apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: productpage, namespace: default}\nspec:\n  selector: {matchLabels: {app: productpage}}\n  metrics:\n  - overrides:\n    - match: {metric: REQUEST_COUNT, mode: SERVER}\n      disabled: false\n",
    );
    let mut resources = vec![doc("remove-all-metrics")];
    resources.extend(workload);
    let (server, client) = sides(&productpage_with(resources));
    assert_eq!(client, ALL);
    assert_eq!(server, ALL[1..]);
    // Another provider's overrides do not touch Prometheus' metrics.
    let other = yaml(
        "other.yaml",
        b"apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: mesh-default, namespace: istio-system}\nspec:\n  metrics:\n  - providers: [{name: stackdriver}]\n    overrides:\n    - disabled: true\n",
    );
    assert_eq!(sides(&productpage_with(other)), (vec![], vec![]));
}
