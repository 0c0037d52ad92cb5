//! Sidecar ingress listeners decide the proxy's inbound ports and where they go.

mod support;

use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use strait_translate::translate::translate;
use strait_xds_core::CaptureMode;
use support::*;

fn productpage_sidecar(capture_mode: &str) -> Vec<strait_api::Resource> {
    yaml(
        "sidecar.yaml",
        format!(
            "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: pp, namespace: default}}\nspec:\n  workloadSelector:\n    labels: {{app: productpage}}\n  ingress:\n  - port: {{number: 9080, protocol: HTTP, name: http}}\n    defaultEndpoint: 127.0.0.1:8080\n{capture_mode}  - port: {{number: 9443, protocol: TCP, name: tcp}}\n    defaultEndpoint: unix:///var/run/app.sock\n"
        )
        .as_bytes(),
    )
}

fn target(res: &strait_xds_core::XdsResources, cluster: &str) -> String {
    let c = res
        .clusters
        .get(cluster)
        .unwrap_or_else(|| panic!("no {cluster}: {:?}", res.clusters.keys()));
    let ep = &c.load_assignment.as_ref().unwrap().endpoints[0].lb_endpoints[0];
    let Some(HostIdentifier::Endpoint(e)) = &ep.host_identifier else {
        panic!()
    };
    match e.address.as_ref().unwrap().address.as_ref().unwrap() {
        AddressKind::SocketAddress(s) => format!("{}:{:?}", s.address, s.port_specifier),
        AddressKind::Pipe(p) => format!("unix://{}", p.path),
        other => format!("{other:?}"),
    }
}

#[test]
fn ingress_listeners_name_the_ports_and_their_default_endpoints() {
    let config = snapshot(productpage_sidecar(""));
    let res = translate(
        &config,
        &bookinfo_registry(),
        &productpage(CaptureMode::None),
    );
    assert_eq!(
        target(&res, "inbound|9080||"),
        "127.0.0.1:Some(PortValue(8080))"
    );
    assert_eq!(target(&res, "inbound|9443||"), "unix:///var/run/app.sock");
    let ip = PRODUCTPAGE_IP;
    assert!(
        res.listeners.contains_key(&format!("{ip}_9080")),
        "{:?}",
        res.listeners.keys()
    );
    assert!(res.listeners.contains_key(&format!("{ip}_9443")));

    // With iptables capture the ports are filter chains of virtualInbound...
    let res = translate(
        &config,
        &bookinfo_registry(),
        &productpage(CaptureMode::Iptables),
    );
    let vi = &res.listeners["virtualInbound"];
    assert!(vi.filter_chains.iter().any(|c| c.name == "0.0.0.0_9080"));
    assert!(!res.listeners.contains_key(&format!("{ip}_9080")));
}

#[test]
fn an_ingress_listener_without_capture_binds_its_own_port() {
    let config = snapshot(productpage_sidecar(
        "    captureMode: NONE\n    bind: 127.0.0.5\n",
    ));
    let res = translate(
        &config,
        &bookinfo_registry(),
        &productpage(CaptureMode::Iptables),
    );
    let vi = &res.listeners["virtualInbound"];
    assert!(!vi.filter_chains.iter().any(|c| c.name == "0.0.0.0_9080"));
    assert!(
        res.listeners.contains_key("127.0.0.5_9080"),
        "{:?}",
        res.listeners.keys()
    );
    assert!(vi.filter_chains.iter().any(|c| c.name == "0.0.0.0_9443"));
}
