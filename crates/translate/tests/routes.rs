//! Istio's samples and VirtualService features, translated: the route and listener fields
//! each must produce.

mod support;

use envoy_types::pb::envoy::config::core::v3::{address, data_source, socket_address};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::{
    RouteConfiguration, header_matcher, redirect_action, route, route_action, route_match,
};
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::CorsPolicy;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{HttpFault, fault_abort};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;

use strait_translate::translate::translate;
use strait_translate::{ConfigSnapshot, MeshConfig, OutboundPolicy};
use strait_xds_core::{CaptureMode, XdsResources};
use support::*;

const REVIEWS: &str = "reviews.default.svc.cluster.local";
const RATINGS: &str = "ratings.default.svc.cluster.local";

fn sidecar(resources: Vec<strait_api::Resource>) -> XdsResources {
    translate(
        &snapshot(resources),
        &bookinfo_registry(),
        &productpage(CaptureMode::Iptables),
    )
}

fn route_config<'a>(res: &'a XdsResources, name: &str) -> &'a RouteConfiguration {
    res.routes
        .get(name)
        .unwrap_or_else(|| panic!("no route configuration {name}: {:?}", res.routes.keys()))
}

fn listener<'a>(res: &'a XdsResources, name: &str) -> &'a Listener {
    res.listeners
        .get(name)
        .unwrap_or_else(|| panic!("no listener {name}: {:?}", res.listeners.keys()))
}

fn cluster(r: &envoy_types::pb::envoy::config::route::v3::Route) -> &str {
    match &action(r).cluster_specifier {
        Some(route_action::ClusterSpecifier::Cluster(c)) => c,
        other => panic!("route {} has no single cluster: {other:?}", r.name),
    }
}

#[test]
fn jason_goes_to_reviews_v2() {
    let res = sidecar(bookinfo_sample("virtual-service-reviews-test-v2.yaml"));
    let vh = virtual_host(route_config(&res, "9080"), &format!("{REVIEWS}:9080"));
    assert_eq!(vh.routes.len(), 2);
    let jason = &vh.routes[0];
    let m = jason.r#match.as_ref().unwrap();
    assert_eq!(m.headers.len(), 1);
    assert_eq!(m.headers[0].name, "end-user");
    let Some(header_matcher::HeaderMatchSpecifier::StringMatch(sm)) =
        &m.headers[0].header_match_specifier
    else {
        panic!("not a string match: {:?}", m.headers[0])
    };
    assert_eq!(sm.match_pattern, Some(MatchPattern::Exact("jason".into())));
    assert_eq!(cluster(jason), format!("outbound|9080|v2|{REVIEWS}"));
    assert_eq!(
        cluster(&vh.routes[1]),
        format!("outbound|9080|v1|{REVIEWS}")
    );
    // Istio's defaults on VirtualService routes: no timeout, 2 retries.
    let a = action(jason);
    assert_eq!(a.timeout.unwrap().seconds, 0);
    let retry = a.retry_policy.as_ref().unwrap();
    assert_eq!(retry.num_retries.unwrap().value, 2);
    assert_eq!(
        retry.retry_on,
        "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
    );
}

#[test]
fn reviews_split_50_50_between_v1_and_v3() {
    let res = sidecar(bookinfo_sample("virtual-service-reviews-50-v3.yaml"));
    let vh = virtual_host(route_config(&res, "9080"), &format!("{REVIEWS}:9080"));
    let Some(route_action::ClusterSpecifier::WeightedClusters(wc)) =
        &action(&vh.routes[0]).cluster_specifier
    else {
        panic!("not weighted: {:?}", vh.routes[0])
    };
    let split: Vec<(&str, u32)> = wc
        .clusters
        .iter()
        .map(|c| (c.name.as_str(), c.weight.unwrap().value))
        .collect();
    assert_eq!(
        split,
        [
            (format!("outbound|9080|v1|{REVIEWS}").as_str(), 50),
            (format!("outbound|9080|v3|{REVIEWS}").as_str(), 50)
        ]
    );
}

#[test]
fn ratings_delay_for_jason_is_a_fault_filter_config() {
    let res = sidecar(bookinfo_sample("virtual-service-ratings-test-delay.yaml"));
    let vh = virtual_host(route_config(&res, "9080"), &format!("{RATINGS}:9080"));
    let fault: HttpFault = typed(&vh.routes[0].typed_per_filter_config["envoy.filters.http.fault"]);
    let delay = fault.delay.unwrap();
    let pct = delay.percentage.unwrap();
    assert_eq!((pct.numerator, pct.denominator), (1_000_000, 2)); // 100% of a million
    let Some(envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier::FixedDelay(d)) =
        delay.fault_delay_secifier
    else {
        panic!("no fixed delay")
    };
    assert_eq!(d.seconds, 7);
    assert!(fault.abort.is_none());
    assert!(vh.routes[1].typed_per_filter_config.is_empty());
    // The listener's HCM has the fault filter, before the router.
    let h = hcm(listener(&res, "0.0.0.0_9080"));
    let names: Vec<&str> = h.http_filters.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "envoy.filters.http.cors",
            "envoy.filters.http.fault",
            "envoy.filters.http.router"
        ]
    );
    assert_eq!(rds_name(&h), "9080");
}

#[test]
fn services_without_virtual_services_get_istio_domains_and_default_routes() {
    let res = sidecar(Vec::new());
    let vh = virtual_host(
        route_config(&res, "9080"),
        "details.default.svc.cluster.local:9080",
    );
    assert_eq!(
        vh.domains,
        [
            "details.default.svc.cluster.local",
            "details.default.svc.cluster.local:9080",
            "details",
            "details:9080",
            "details.default.svc",
            "details.default.svc:9080",
            "details.default",
            "details.default:9080",
            "10.96.0.11",
            "10.96.0.11:9080",
        ]
    );
    assert_eq!(vh.routes.len(), 1);
    assert_eq!(vh.routes[0].name, "default");
    assert_eq!(
        cluster(&vh.routes[0]),
        "outbound|9080||details.default.svc.cluster.local"
    );
    let rc = route_config(&res, "9080");
    let last = rc.virtual_hosts.last().unwrap();
    assert_eq!(
        (last.name.as_str(), last.domains.as_slice()),
        ("allow_any", ["*".to_string()].as_slice())
    );
    assert_eq!(cluster(&last.routes[0]), "PassthroughCluster");

    // From another namespace, the bare name is not the service's.
    let mut other = productpage(CaptureMode::Iptables);
    other.namespace = "other".into();
    let res = translate(&snapshot(Vec::new()), &bookinfo_registry(), &other);
    let vh = virtual_host(
        route_config(&res, "9080"),
        "details.default.svc.cluster.local:9080",
    );
    assert!(!vh.domains.iter().any(|d| d == "details"));
    assert!(vh.domains.iter().any(|d| d == "details.default"));
}

#[test]
fn registry_only_blocks_unknown_hosts() {
    let config = ConfigSnapshot::new(
        1,
        MeshConfig {
            outbound_policy: OutboundPolicy::RegistryOnly,
            ..MeshConfig::default()
        },
        Vec::new(),
    );
    let res = translate(
        &config,
        &bookinfo_registry(),
        &productpage(CaptureMode::Iptables),
    );
    let last = route_config(&res, "9080").virtual_hosts.last().unwrap();
    assert_eq!(last.name, "block_all");
    let Some(route::Action::DirectResponse(d)) = &last.routes[0].action else {
        panic!("block_all does not answer directly")
    };
    assert_eq!(d.status, 502);
    let vo = listener(&res, "virtualOutbound");
    assert!(vo.use_original_dst.unwrap().value);
    let tcp: TcpProxy = filter_config(&vo.default_filter_chain.as_ref().unwrap().filters[0]);
    assert_eq!(
        tcp.cluster_specifier,
        Some(tcp_proxy::ClusterSpecifier::Cluster(
            "BlackHoleCluster".into()
        ))
    );
}

/// Every HTTP feature on reviews, and a consistent-hash DestinationRule on ratings.
const FEATURES: &[u8] = include_bytes!("data/vs-features.yaml");

#[test]
fn virtual_service_features_translate_as_istio_does() {
    let res = sidecar(yaml("features.yaml", FEATURES));
    let vh = virtual_host(route_config(&res, "9080"), &format!("{REVIEWS}:9080"));
    let names: Vec<&str> = vh.routes.iter().map(|r| r.name.as_str()).collect();
    // `other-port` is for port 9090, `from-reviews` for other clients: both dropped here.
    assert_eq!(names, ["redirect", "direct", "rich", "regex", ""]);

    let Some(route::Action::Redirect(redirect)) = &vh.routes[0].action else {
        panic!("not a redirect")
    };
    assert_eq!(redirect.host_redirect, "new.example");
    assert_eq!(
        redirect.path_rewrite_specifier,
        Some(redirect_action::PathRewriteSpecifier::PathRedirect(
            "/new".into()
        ))
    );
    assert_eq!(
        redirect.response_code,
        redirect_action::RedirectResponseCode::Found as i32
    );
    let m = vh.routes[0].r#match.as_ref().unwrap();
    assert_eq!(
        m.path_specifier,
        Some(route_match::PathSpecifier::Path("/old".into()))
    );

    let Some(route::Action::DirectResponse(direct)) = &vh.routes[1].action else {
        panic!("not a direct response")
    };
    assert_eq!(direct.status, 418);
    assert_eq!(
        direct.body.as_ref().unwrap().specifier,
        Some(data_source::Specifier::InlineString(
            "short and stout".into()
        ))
    );
    let method = &vh.routes[1].r#match.as_ref().unwrap().headers[0];
    assert_eq!(method.name, ":method");

    let rich = &vh.routes[2];
    let m = rich.r#match.as_ref().unwrap();
    let header_names: Vec<&str> = m.headers.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(header_names, ["x-skip", ":authority"]);
    assert!(m.headers[0].invert_match);
    assert_eq!(
        m.headers[0].header_match_specifier,
        Some(header_matcher::HeaderMatchSpecifier::PresentMatch(true))
    );
    assert_eq!(m.query_parameters[0].name, "debug");
    let a = action(rich);
    assert_eq!(a.prefix_rewrite, "/v1");
    assert_eq!(
        a.host_rewrite_specifier,
        Some(route_action::HostRewriteSpecifier::HostRewriteLiteral(
            "reviews.internal".into()
        ))
    );
    assert_eq!(a.timeout.unwrap().seconds, 3);
    let retry = a.retry_policy.as_ref().unwrap();
    assert_eq!(retry.num_retries.unwrap().value, 5);
    assert_eq!(retry.retry_on, "5xx,retriable-status-codes");
    assert_eq!(retry.retriable_status_codes, [429]);
    assert_eq!(retry.per_try_timeout.unwrap().seconds, 1);
    let mirror = &a.request_mirror_policies[0];
    assert_eq!(mirror.cluster, format!("outbound|9080||{RATINGS}"));
    let frac = mirror
        .runtime_fraction
        .as_ref()
        .unwrap()
        .default_value
        .unwrap();
    assert_eq!(frac.numerator, 250_000);
    let Some(route_action::ClusterSpecifier::WeightedClusters(wc)) = &a.cluster_specifier else {
        panic!("not weighted")
    };
    // The zero-weight v3 is left out; v1's header change stays on v1.
    assert_eq!(wc.clusters.len(), 2);
    assert_eq!(
        wc.clusters[0].request_headers_to_add[0]
            .header
            .as_ref()
            .unwrap()
            .key,
        "x-v"
    );
    let req: Vec<(&str, i32)> = rich
        .request_headers_to_add
        .iter()
        .map(|h| (h.header.as_ref().unwrap().key.as_str(), h.append_action))
        .collect();
    assert_eq!(req, [("x-a", 2), ("x-b", 0)]); // overwrite-or-add, then append
    assert_eq!(rich.request_headers_to_remove, ["x-c"]);
    assert_eq!(
        rich.response_headers_to_add[0].header.as_ref().unwrap().key,
        "x-d"
    );
    let fault: HttpFault = typed(&rich.typed_per_filter_config["envoy.filters.http.fault"]);
    let abort = fault.abort.unwrap();
    assert_eq!(
        abort.error_type,
        Some(fault_abort::ErrorType::GrpcStatus(14))
    );
    assert_eq!(abort.percentage.unwrap().numerator, 100_000);
    let cors: CorsPolicy = typed(&rich.typed_per_filter_config["envoy.filters.http.cors"]);
    assert_eq!(cors.allow_methods, "GET,POST");
    assert_eq!(cors.max_age, "86400");
    assert!(cors.allow_credentials.unwrap().value);
    assert_eq!(
        cors.allow_origin_string_match[0].match_pattern,
        Some(MatchPattern::Exact("https://a.example".into()))
    );

    let regex = &vh.routes[3];
    let m = regex.r#match.as_ref().unwrap();
    assert!(!m.case_sensitive.unwrap().value);
    assert!(matches!(
        &m.path_specifier,
        Some(route_match::PathSpecifier::SafeRegex(r)) if r.regex == "^/r/[0-9]+$"
    ));
    let a = action(regex);
    assert_eq!(
        a.regex_rewrite.as_ref().unwrap().substitution,
        "/reviews/\\1"
    );
    assert!(a.retry_policy.is_none(), "attempts: 0 disables retries");

    // ratings has no VirtualService: the default route carries the DestinationRule's hash,
    // and its retries stay on the same host.
    let vh = virtual_host(route_config(&res, "9080"), &format!("{RATINGS}:9080"));
    let a = action(&vh.routes[0]);
    assert_eq!(a.hash_policy.len(), 1);
    assert!(matches!(
        &a.hash_policy[0].policy_specifier,
        Some(route_action::hash_policy::PolicySpecifier::Header(h)) if h.header_name == "x-user"
    ));
    assert!(
        a.retry_policy
            .as_ref()
            .unwrap()
            .retry_host_predicate
            .is_empty()
    );
}

#[test]
fn routes_for_other_clients_apply_to_them() {
    let reviews = proxy(
        strait_xds_core::ProxyRole::Sidecar,
        "10.1.0.12",
        "reviews-v1",
        &[("app", "reviews"), ("version", "v1")],
        CaptureMode::Iptables,
    );
    let res = translate(
        &snapshot(yaml("features.yaml", FEATURES)),
        &bookinfo_registry(),
        &reviews,
    );
    let vh = virtual_host(route_config(&res, "9080"), &format!("{REVIEWS}:9080"));
    assert!(vh.routes.iter().any(|r| r.name == "from-reviews"));
    // Its own service port is inbound.
    let vi = listener(&res, "virtualInbound");
    assert!(vi.filter_chains.iter().any(|c| c.name == "0.0.0.0_9080"));
}

#[test]
fn bookinfo_gateway_routes_to_productpage() {
    let config = snapshot(bookinfo_sample("bookinfo-gateway.yaml"));
    let res = translate(&config, &bookinfo_registry(), &ingress_gateway());
    // The gateway binds its own address (GATEWAY_IP).
    let l = listener(&res, &format!("{GATEWAY_IP}_8080"));
    assert!(l.bind_to_port.is_none(), "a gateway binds its port");
    let Some(address::Address::SocketAddress(sa)) = &l.address.as_ref().unwrap().address else {
        panic!("no socket address")
    };
    assert_eq!(
        (sa.address.as_str(), &sa.port_specifier),
        (
            GATEWAY_IP,
            &Some(socket_address::PortSpecifier::PortValue(8080))
        )
    );
    let h = hcm(l);
    assert_eq!(rds_name(&h), "http.8080");
    assert!(h.use_remote_address.unwrap().value);
    let rc = route_config(&res, "http.8080");
    assert_eq!(rc.virtual_hosts.len(), 1);
    let vh = virtual_host(rc, "*:8080");
    assert_eq!(vh.domains, ["*"]);
    let paths: Vec<String> = vh
        .routes
        .iter()
        .map(|r| match &r.r#match.as_ref().unwrap().path_specifier {
            Some(route_match::PathSpecifier::Path(p)) => format!("={p}"),
            Some(route_match::PathSpecifier::Prefix(p)) => format!("{p}*"),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        paths,
        [
            "=/productpage",
            "/static*",
            "=/login",
            "=/logout",
            "/api/v1/products*"
        ]
    );
    for r in &vh.routes {
        assert_eq!(
            cluster(r),
            "outbound|9080||productpage.default.svc.cluster.local"
        );
    }
    // Sidecars do not get gateway-bound routes, and other gateways get nothing.
    let side = translate(
        &config,
        &bookinfo_registry(),
        &productpage(CaptureMode::Iptables),
    );
    let vh = virtual_host(
        route_config(&side, "9080"),
        "productpage.default.svc.cluster.local:9080",
    );
    assert_eq!(vh.routes[0].name, "default");
    let egress = proxy(
        strait_xds_core::ProxyRole::Gateway,
        "10.1.0.3",
        "egress",
        &[("istio", "egressgateway")],
        CaptureMode::None,
    );
    assert!(
        translate(&config, &bookinfo_registry(), &egress)
            .listeners
            .is_empty()
    );
}

#[test]
fn gateway_hosts_bind_only_matching_virtual_services() {
    let config = snapshot(yaml(
        "gw.yaml",
        br#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["./bookinfo.example", "*/reviews.example"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bookinfo, namespace: default}
spec:
  hosts: [bookinfo.example, other.example]
  gateways: [gw]
  http:
  - route: [{destination: {host: productpage, port: {number: 9080}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews.example]
  gateways: [default/gw, mesh]
  http:
  - match: [{gateways: [mesh]}]
    route: [{destination: {host: reviews, subset: v1}}]
  - route: [{destination: {host: reviews, subset: v2}}]
"#,
    ));
    let res = translate(&config, &bookinfo_registry(), &ingress_gateway());
    let rc = route_config(&res, "http.80");
    let names: Vec<&str> = rc.virtual_hosts.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["bookinfo.example:80", "reviews.example:80"]);
    assert_eq!(
        virtual_host(rc, "bookinfo.example:80").domains,
        ["bookinfo.example", "bookinfo.example:*"]
    );
    // The mesh-only match is not the gateway's.
    let vh = virtual_host(rc, "reviews.example:80");
    assert_eq!(vh.routes.len(), 1);
    assert_eq!(
        cluster(&vh.routes[0]),
        format!("outbound|9080|v2|{REVIEWS}")
    );
}

#[test]
fn tcp_weights_and_tls_sni_routes() {
    let config = snapshot(yaml("tcp-tls.yaml", include_bytes!("data/tcp-tls.yaml")));
    let res = translate(
        &config,
        &tcp_registry(),
        &productpage(CaptureMode::Iptables),
    );
    let mongo = listener(&res, "10.96.0.20_27017");
    assert!(!mongo.bind_to_port.unwrap().value);
    let tcp: TcpProxy = filter_config(&mongo.filter_chains[0].filters[0]);
    let Some(tcp_proxy::ClusterSpecifier::WeightedClusters(wc)) = tcp.cluster_specifier else {
        panic!("not weighted")
    };
    let split: Vec<(String, u32)> = wc
        .clusters
        .into_iter()
        .map(|c| (c.name, c.weight))
        .collect();
    assert_eq!(
        split,
        [
            (
                "outbound|27017|v1|mongodb.default.svc.cluster.local".to_string(),
                70
            ),
            (
                "outbound|27017|v2|mongodb.default.svc.cluster.local".to_string(),
                30
            )
        ]
    );
    let api = listener(&res, "0.0.0.0_443");
    assert_eq!(
        api.listener_filters[0].name,
        "envoy.filters.listener.tls_inspector"
    );
    let chain = &api.filter_chains[0];
    assert_eq!(
        chain.filter_chain_match.as_ref().unwrap().server_names,
        ["api.example.com"]
    );
    let tcp: TcpProxy = filter_config(&chain.filters[0]);
    assert_eq!(
        tcp.cluster_specifier,
        Some(tcp_proxy::ClusterSpecifier::Cluster(
            "outbound|443|blue|api.example.com".into()
        ))
    );
    // The VirtualService's SNI chain and the service's own are the same match: one is kept.
    assert_eq!(api.filter_chains.len(), 1);
}

#[test]
fn without_capture_the_proxy_is_an_http_proxy_on_15080() {
    let mut registry = bookinfo_registry();
    let httpbin = k8s_service("httpbin", "default", "10.96.0.30", vec![http_port(80)]);
    registry.services.insert(httpbin.hostname.clone(), httpbin);
    let res = translate(
        &snapshot(bookinfo_sample("virtual-service-reviews-test-v2.yaml")),
        &registry,
        &productpage(CaptureMode::None),
    );
    let names: Vec<&str> = res.listeners.keys().map(String::as_str).collect();
    assert_eq!(names, ["10.1.0.10_15080", "10.1.0.10_9080"]);
    let l = listener(&res, "10.1.0.10_15080");
    assert!(l.bind_to_port.is_none());
    let h = hcm(l);
    assert_eq!(rds_name(&h), "15080");
    assert!(
        h.http_protocol_options
            .as_ref()
            .unwrap()
            .allow_absolute_url
            .unwrap()
            .value
    );
    let keys: Vec<&str> = res.routes.keys().map(String::as_str).collect();
    assert_eq!(keys, ["15080"]);
    let rc = route_config(&res, "15080");
    let reviews = virtual_host(rc, &format!("{REVIEWS}:9080"));
    assert!(reviews.domains.iter().any(|d| d == "reviews:9080"));
    assert!(reviews.domains.iter().all(|d| d.contains(':')));
    assert_eq!(reviews.routes.len(), 2, "the VirtualService's routes");
    let httpbin = virtual_host(rc, "httpbin.default.svc.cluster.local:80");
    assert!(httpbin.domains.iter().any(|d| d == "httpbin"));
    assert!(httpbin.domains.iter().any(|d| d == "httpbin:80"));
    // Inbound: the workload's own port, to its inbound cluster.
    let inbound = listener(&res, "10.1.0.10_9080");
    let h = hcm(inbound);
    let Some(
        envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier::RouteConfig(rc),
    ) = &h.route_specifier
    else {
        panic!("inbound HCM without inline routes")
    };
    assert_eq!(cluster(&rc.virtual_hosts[0].routes[0]), "inbound|9080||");
}

fn tcp_proxy_of(l: &Listener, chain: usize) -> TcpProxy {
    filter_config(&l.filter_chains[chain].filters[0])
}

/// A tcp_proxy's clusters with their weights (one cluster has weight 0).
fn tcp_clusters(tcp: &TcpProxy) -> Vec<(String, u32)> {
    match &tcp.cluster_specifier {
        Some(tcp_proxy::ClusterSpecifier::Cluster(c)) => vec![(c.clone(), 0)],
        Some(tcp_proxy::ClusterSpecifier::WeightedClusters(wc)) => wc
            .clusters
            .iter()
            .map(|c| (c.name.clone(), c.weight))
            .collect(),
        None => panic!("tcp_proxy without a cluster: {tcp:?}"),
    }
}

fn echo(subset: &str, port: u16) -> String {
    format!("outbound|{port}|{subset}|{TCP_ECHO}")
}

#[test]
fn gateway_tcp_server_shifts_80_20_to_tcp_echo() {
    let res = translate(
        &snapshot(tcp_echo_80_20()),
        &tcp_echo_registry(),
        &ingress_gateway(),
    );
    let l = listener(&res, &format!("{GATEWAY_IP}_31400"));
    assert!(l.bind_to_port.is_none(), "a gateway binds its port");
    assert_eq!(l.filter_chains.len(), 1);
    assert!(l.filter_chains[0].filter_chain_match.is_none());
    assert!(l.listener_filters.is_empty());
    assert_eq!(
        tcp_clusters(&tcp_proxy_of(l, 0)),
        [(echo("v1", 9000), 80), (echo("v2", 9000), 20)]
    );
    assert!(res.routes.is_empty(), "a TCP server has no HTTP routes");
    for subset in ["v1", "v2"] {
        assert!(res.clusters.contains_key(&echo(subset, 9000)));
    }

    let res = translate(
        &snapshot(istio_sample("tcp-echo/tcp-echo-all-v1.yaml")),
        &tcp_echo_registry(),
        &ingress_gateway(),
    );
    let l = listener(&res, &format!("{GATEWAY_IP}_31400"));
    assert_eq!(tcp_clusters(&tcp_proxy_of(l, 0)), [(echo("v1", 9000), 0)]);
    // Sidecars do not get the gateway's TCP route.
    let side = translate(
        &snapshot(istio_sample("tcp-echo/tcp-echo-all-v1.yaml")),
        &tcp_echo_registry(),
        &productpage(CaptureMode::Iptables),
    );
    let l = listener(&side, "10.96.0.40_9000");
    assert_eq!(tcp_clusters(&tcp_proxy_of(l, 0)), [(echo("", 9000), 0)]);
}

#[test]
fn gateway_tcp_port_without_a_route_closes_connections() {
    let gateway_only: Vec<_> = istio_sample("tcp-echo/tcp-echo-all-v1.yaml")
        .into_iter()
        .filter(|r| r.kind != strait_api::Kind::VirtualService)
        .collect();
    // No VirtualService; then one whose only TCP match is for another port.
    let mut other_port = gateway_only.clone();
    other_port.extend(yaml(
        "vs.yaml",
        b"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: tcp-echo, namespace: default}
spec:
  hosts: ['*']
  gateways: [tcp-echo-gateway]
  tcp:
  - match: [{port: 31401}]
    route: [{destination: {host: tcp-echo, port: {number: 9000}}}]
",
    ));
    for resources in [gateway_only, other_port] {
        let res = translate(
            &snapshot(resources),
            &tcp_echo_registry(),
            &ingress_gateway(),
        );
        let l = listener(&res, &format!("{GATEWAY_IP}_31400"));
        assert_eq!(l.filter_chains.len(), 1);
        assert_eq!(
            tcp_clusters(&tcp_proxy_of(l, 0)),
            [("BlackHoleCluster".to_string(), 0)]
        );
    }
}

#[test]
fn gateway_tls_passthrough_routes_on_sni_beside_terminated_tls() {
    let config = snapshot(yaml(
        "gateway-tls.yaml",
        include_bytes!("data/gateway-tls.yaml"),
    ));
    let res = translate(&config, &tcp_echo_registry(), &ingress_gateway());
    let names: Vec<&str> = res.listeners.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [format!("{GATEWAY_IP}_443"), format!("{GATEWAY_IP}_8443")]
    );
    // The terminated HTTPS server: one chain for any SNI, TLS, then HTTP on routes of its own;
    // the VirtualService's `tls` route for 8443 does not apply to it (Istio's rule: `tls` routes
    // are for passthrough servers).
    let https = listener(&res, &format!("{GATEWAY_IP}_8443"));
    assert_eq!(https.filter_chains.len(), 1);
    let chain = &https.filter_chains[0];
    assert!(chain.filter_chain_match.is_none(), "{chain:?}");
    assert_eq!(
        chain.transport_socket.as_ref().map(|t| t.name.as_str()),
        Some("envoy.transport_sockets.tls")
    );
    assert_eq!(
        chain.filters[0].name,
        "envoy.filters.network.http_connection_manager"
    );
    assert_eq!(
        res.secrets.keys().collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "Secret cert does not exist: none is sent (the chain fails closed)"
    );
    let l = listener(&res, &format!("{GATEWAY_IP}_443"));
    assert_eq!(
        l.listener_filters[0].name,
        "envoy.filters.listener.tls_inspector"
    );
    let sni: Vec<&[String]> = l
        .filter_chains
        .iter()
        .map(|c| {
            c.filter_chain_match
                .as_ref()
                .unwrap()
                .server_names
                .as_slice()
        })
        .collect();
    // other.org is outside the server's hosts.
    assert_eq!(
        sni,
        [
            &["a.example.com".to_string()][..],
            &["b.example.com".to_string()][..]
        ]
    );
    assert_eq!(tcp_clusters(&tcp_proxy_of(l, 0)), [(echo("v1", 9000), 0)]);
    assert_eq!(
        tcp_clusters(&tcp_proxy_of(l, 1)),
        [(echo("v1", 9001), 50), (echo("v2", 9001), 50)]
    );
}

#[test]
fn without_capture_tcp_services_listen_on_the_proxy_address() {
    let mut registry = tcp_echo_registry();
    let tcp = |name: &str, vip: &str, number| {
        k8s_service(
            name,
            "default",
            vip,
            vec![strait_registry::Port {
                name: "tcp".into(),
                number,
                protocol: strait_registry::Protocol::Tcp,
            }],
        )
    };
    // zookeeper shares 9000 with tcp-echo (which sorts first); legacy is on productpage's own
    // inbound port.
    for s in [
        tcp("zookeeper", "10.96.0.41", 9000),
        tcp("legacy", "10.96.0.42", 9080),
    ] {
        registry.services.insert(s.hostname.clone(), s);
    }
    let mut resources: Vec<_> = istio_sample("tcp-echo/tcp-echo-all-v1.yaml")
        .into_iter()
        .filter(|r| r.kind == strait_api::Kind::DestinationRule)
        .collect();
    resources.extend(yaml(
        "vs.yaml",
        b"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: tcp-echo, namespace: default}
spec:
  hosts: [tcp-echo]
  tcp:
  - match: [{port: 9000}]
    route:
    - {destination: {host: tcp-echo, port: {number: 9000}, subset: v1}, weight: 80}
    - {destination: {host: tcp-echo, port: {number: 9000}, subset: v2}, weight: 20}
",
    ));
    let res = translate(
        &snapshot(resources),
        &registry,
        &productpage(CaptureMode::None),
    );
    let names: Vec<&str> = res.listeners.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "10.1.0.10_15080",
            "10.1.0.10_9000",
            "10.1.0.10_9001",
            "10.1.0.10_9080"
        ]
    );
    let l = listener(&res, "10.1.0.10_9000");
    assert!(l.bind_to_port.is_none(), "bound on the proxy's address");
    let Some(address::Address::SocketAddress(sa)) = &l.address.as_ref().unwrap().address else {
        panic!("no socket address")
    };
    assert_eq!(
        (sa.address.as_str(), &sa.port_specifier),
        (
            PRODUCTPAGE_IP,
            &Some(socket_address::PortSpecifier::PortValue(9000))
        )
    );
    assert_eq!(
        l.filter_chains.len(),
        1,
        "tcp-echo takes 9000, not zookeeper"
    );
    assert_eq!(
        tcp_clusters(&tcp_proxy_of(l, 0)),
        [(echo("v1", 9000), 80), (echo("v2", 9000), 20)]
    );
    // The VirtualService's match is for 9000: 9001 goes to the service.
    let l = listener(&res, "10.1.0.10_9001");
    assert_eq!(tcp_clusters(&tcp_proxy_of(l, 0)), [(echo("", 9001), 0)]);
    // 9080 stays the workload's inbound port.
    let l = listener(&res, "10.1.0.10_9080");
    assert_eq!(
        l.traffic_direction,
        envoy_types::pb::envoy::config::core::v3::TrafficDirection::Inbound as i32
    );
}
