//! Golden files: the listeners and routes Strait gives Bookinfo proxies, as reviewable text.
//! `STRAIT_UPDATE_GOLDEN=1 cargo test -p strait-translate --test golden` rewrites them.

mod support;

use strait_translate::translate::translate;
use strait_xds_core::CaptureMode;
use support::*;

/// Bookinfo with subsets, jason → reviews v2, and a 7 s delay on ratings for jason.
fn bookinfo_config() -> strait_translate::ConfigSnapshot {
    let mut resources = bookinfo_sample("destination-rule-all.yaml");
    resources.extend(bookinfo_sample("virtual-service-reviews-test-v2.yaml"));
    resources.extend(bookinfo_sample("virtual-service-ratings-test-delay.yaml"));
    snapshot(resources)
}

fn listeners_and_routes(mut res: strait_xds_core::XdsResources) -> strait_xds_core::XdsResources {
    // Clusters and endpoints have their own tests; these files are about listeners and routes.
    res.clusters.clear();
    res.endpoints.clear();
    res
}

#[test]
fn bookinfo_sidecar_with_iptables() {
    let res = translate(
        &bookinfo_config(),
        &bookinfo_registry(),
        &productpage(CaptureMode::Iptables),
    );
    check_golden(
        "bookinfo-sidecar-iptables",
        &render(&listeners_and_routes(res)),
    );
}

#[test]
fn bookinfo_sidecar_without_capture() {
    let res = translate(
        &bookinfo_config(),
        &bookinfo_registry(),
        &productpage(CaptureMode::None),
    );
    check_golden("bookinfo-sidecar-none", &render(&listeners_and_routes(res)));
}

#[test]
fn bookinfo_ingress_gateway() {
    let config = snapshot(bookinfo_sample("bookinfo-gateway.yaml"));
    let res = translate(&config, &bookinfo_registry(), &ingress_gateway());
    check_golden("bookinfo-gateway", &render(&listeners_and_routes(res)));
}

#[test]
fn golden_text_is_the_same_every_time() {
    let config = bookinfo_config();
    let registry = bookinfo_registry();
    let proxy = productpage(CaptureMode::Iptables);
    let first = render(&translate(&config, &registry, &proxy));
    for _ in 0..5 {
        assert_eq!(render(&translate(&config, &registry, &proxy)), first);
    }
}

#[test]
fn tcp_echo_gateway_80_20() {
    let res = translate(
        &snapshot(tcp_echo_80_20()),
        &tcp_echo_registry(),
        &ingress_gateway(),
    );
    check_golden("tcp-echo-gateway", &render(&listeners_and_routes(res)));
}

#[test]
fn tcp_echo_sidecar_without_capture() {
    let res = translate(
        &snapshot(tcp_echo_80_20()),
        &tcp_echo_registry(),
        &productpage(CaptureMode::None),
    );
    check_golden("tcp-echo-sidecar-none", &render(&listeners_and_routes(res)));
}
