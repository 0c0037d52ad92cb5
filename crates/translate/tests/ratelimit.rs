//! Strait's LocalRateLimit → Envoy's `envoy.filters.http.local_ratelimit`: the filter's place
//! (after RBAC, before the router), its config, each rule as an inbound route ahead of the
//! catch-all with its own bucket, which policy applies (the most specific), and the gateway's.

mod support;

use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager, http_filter,
};
use strait_translate::translate::translate;
use strait_xds_core::CaptureMode;
use support::*;

const LIMITS: &str = r#"
apiVersion: policy.strait.dev/v1
kind: LocalRateLimit
metadata: {name: mesh, namespace: istio-system}
spec:
  tokenBucket: {maxTokens: 1000, fillInterval: 1s}
---
apiVersion: policy.strait.dev/v1
kind: LocalRateLimit
metadata: {name: namespace, namespace: default}
spec:
  tokenBucket: {maxTokens: 100, fillInterval: 1s}
---
apiVersion: policy.strait.dev/v1
kind: LocalRateLimit
metadata: {name: productpage, namespace: default}
spec:
  selector: {matchLabels: {app: productpage}}
  tokenBucket: {maxTokens: 10, tokensPerFill: 5, fillInterval: 500ms}
  rules:
  - match: {uri: {prefix: /api}, method: {exact: POST}}
    tokenBucket: {maxTokens: 2, fillInterval: 1s}
  status: 503
  responseHeaders: {x-limited: "yes"}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-all, namespace: default}
spec:
  rules: [{}]
"#;

fn local_ratelimit(h: &HttpConnectionManager) -> LocalRateLimit {
    let f = h
        .http_filters
        .iter()
        .find(|f| f.name == "envoy.filters.http.local_ratelimit")
        .expect("a local_ratelimit filter");
    let Some(http_filter::ConfigType::TypedConfig(any)) = &f.config_type else {
        panic!("no typed config")
    };
    typed(any)
}

#[test]
fn the_workload_policy_goes_after_rbac_with_its_rules_as_routes() {
    let config = snapshot(yaml("limits.yaml", LIMITS.as_bytes()));
    let res = translate(
        &config,
        &bookinfo_registry(),
        &productpage(CaptureMode::Iptables),
    );
    let inbound = &res.listeners["virtualInbound"];
    let chain = inbound
        .filter_chains
        .iter()
        .find(|c| {
            c.filter_chain_match
                .as_ref()
                .and_then(|m| m.destination_port)
                .is_some_and(|p| p.value == 9080)
        })
        .expect("the 9080 chain");
    let h: HttpConnectionManager = filter_config(&chain.filters[0]);
    let names: Vec<&str> = h.http_filters.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "envoy.filters.http.rbac",
            "envoy.filters.http.local_ratelimit",
            "envoy.filters.http.router"
        ]
    );
    // The workload's own policy wins over the namespace's and the mesh's.
    let rl = local_ratelimit(&h);
    let bucket = rl.token_bucket.as_ref().unwrap();
    assert_eq!(bucket.max_tokens, 10);
    assert_eq!(bucket.tokens_per_fill.as_ref().unwrap().value, 5);
    assert_eq!(bucket.fill_interval.as_ref().unwrap().nanos, 500_000_000);
    assert_eq!(rl.status.as_ref().unwrap().code, 503);
    assert_eq!(
        rl.filter_enabled
            .as_ref()
            .and_then(|f| f.default_value.as_ref())
            .map(|v| v.numerator),
        Some(100)
    );
    assert_eq!(
        rl.filter_enforced
            .as_ref()
            .and_then(|f| f.default_value.as_ref())
            .map(|v| v.numerator),
        Some(100)
    );
    assert_eq!(
        rl.response_headers_to_add[0].header.as_ref().unwrap().key,
        "x-limited"
    );
    // The rule: a route ahead of the catch-all, to the same cluster, with its own bucket.
    let Some(http_connection_manager::RouteSpecifier::RouteConfig(rc)) = &h.route_specifier else {
        panic!("inbound routes are inline")
    };
    let routes = &rc.virtual_hosts[0].routes;
    assert_eq!(routes.len(), 2);
    assert_eq!(routes[0].name, "ratelimit-0");
    assert_eq!(routes[1].name, "default");
    assert_eq!(action(&routes[0]), action(&routes[1]));
    let m = routes[0].r#match.as_ref().unwrap();
    assert_eq!(m.path_specifier, Some(PathSpecifier::Prefix("/api".into())));
    assert_eq!(m.headers[0].name, ":method");
    let per_route: LocalRateLimit =
        typed(&routes[0].typed_per_filter_config["envoy.filters.http.local_ratelimit"]);
    assert_eq!(per_route.token_bucket.as_ref().unwrap().max_tokens, 2);
    assert_eq!(
        per_route
            .token_bucket
            .as_ref()
            .unwrap()
            .tokens_per_fill
            .as_ref()
            .unwrap()
            .value,
        2,
        "tokensPerFill defaults to maxTokens"
    );
    assert_eq!(per_route.status.as_ref().unwrap().code, 503);
}

#[test]
fn namespace_and_mesh_policies_and_ports() {
    // Without the workload policy, the namespace's applies; a policy for another port none.
    let mut resources = yaml("limits.yaml", LIMITS.as_bytes());
    resources.retain(|r| r.name() != "productpage");
    let config = snapshot(resources.clone());
    let res = translate(
        &config,
        &bookinfo_registry(),
        &productpage(CaptureMode::None),
    );
    let l = res
        .listeners
        .values()
        .find(|l| l.name.ends_with("_9080"))
        .expect("the inbound 9080 listener");
    let rl = local_ratelimit(&hcm(l));
    assert_eq!(rl.token_bucket.unwrap().max_tokens, 100);

    // Gateways: the mesh-wide policy in the root namespace selects the ingress gateway.
    let mut with_gateway = resources.clone();
    with_gateway.extend(bookinfo_sample("bookinfo-gateway.yaml"));
    let mut gw = ingress_gateway();
    gw.namespace = "istio-system".into();
    let res = translate(&snapshot(with_gateway), &bookinfo_registry(), &gw);
    let l = res
        .listeners
        .values()
        .find(|l| l.name.ends_with("_8080") || l.name.ends_with("_80"))
        .expect("the gateway's HTTP listener");
    let h = hcm(l);
    let names: Vec<&str> = h.http_filters.iter().map(|f| f.name.as_str()).collect();
    // After the authn/authz filters (none here), before CORS, fault and the router.
    assert_eq!(
        names,
        [
            "envoy.filters.http.local_ratelimit",
            "envoy.filters.http.cors",
            "envoy.filters.http.fault",
            "envoy.filters.http.router"
        ]
    );
    assert_eq!(local_ratelimit(&h).token_bucket.unwrap().max_tokens, 1000);

    // A policy limited to another port leaves 9080 alone.
    let other_port = r#"
apiVersion: policy.strait.dev/v1
kind: LocalRateLimit
metadata: {name: other, namespace: default}
spec:
  selector: {matchLabels: {app: productpage}}
  ports: [9999]
  tokenBucket: {maxTokens: 1, fillInterval: 1s}
"#;
    let config = snapshot(yaml("other.yaml", other_port.as_bytes()));
    let res = translate(
        &config,
        &bookinfo_registry(),
        &productpage(CaptureMode::None),
    );
    let l = res
        .listeners
        .values()
        .find(|l| l.name.ends_with("_9080"))
        .unwrap();
    assert!(
        hcm(l)
            .http_filters
            .iter()
            .all(|f| f.name != "envoy.filters.http.local_ratelimit")
    );
}
