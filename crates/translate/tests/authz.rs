//! AuthorizationPolicy → Envoy's RBAC filters, checked by what the filters decide: the
//! translated filters are decoded and evaluated with strait-authz (the engine strait-proxy will
//! use) for the requests and connections of Istio's authorization tasks, with their YAML
//! unchanged (`istio-samples/tasks/authz-http`, `authz-deny`, `authz-tcp`), plus the shapes
//! Istio's builder generates (names, filter order, principals, namespaces, dry run), a golden
//! file and real Envoy accepting the result.

mod support;

use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter;
use strait_api::Resource;
use strait_authz::{Connection, HttpRequest, Input, Metadata, RbacFilter, convert};
use strait_translate::translate::translate;
use strait_xds_core::{CaptureMode, Proxy, ProxyRole, XdsResources};
use support::*;

const TASKS: &str = "tasks";

fn task_docs(file: &str) -> Vec<Resource> {
    istio_sample(&format!("{TASKS}/{file}"))
}

/// The named documents of a task file, in the file's order.
fn docs(file: &str, names: &[&str]) -> Vec<Resource> {
    let all = task_docs(file);
    names
        .iter()
        .map(|n| {
            all.iter()
                .find(|r| r.name() == *n)
                .unwrap_or_else(|| panic!("{file} has no document named {n}"))
                .clone()
        })
        .collect()
}

fn sidecar(ip: &str, workload: &str, ns: &str, labels: &[(&str, &str)]) -> Proxy {
    let mut p = proxy(
        ProxyRole::Sidecar,
        ip,
        workload,
        labels,
        CaptureMode::Iptables,
    );
    p.namespace = ns.to_string();
    p.mtls = true;
    p
}

fn bookinfo(app: &str) -> Proxy {
    let ip = match app {
        "productpage" => "10.1.0.10",
        "details" => "10.1.0.11",
        "reviews" => "10.1.0.12",
        "ratings" => "10.1.0.15",
        other => panic!("no Bookinfo app {other}"),
    };
    let version = "v1";
    sidecar(
        ip,
        &format!("{app}-{version}"),
        "default",
        &[("app", app), ("version", version)],
    )
}

fn virtual_inbound(res: &XdsResources) -> &Listener {
    res.listeners
        .get("virtualInbound")
        .expect("a virtualInbound listener")
}

/// The mTLS filter chain of an inbound port.
fn mtls_chain(res: &XdsResources, port: u16) -> &FilterChain {
    virtual_inbound(res)
        .filter_chains
        .iter()
        .find(|c| c.name == format!("0.0.0.0_{port}-mtls"))
        .unwrap_or_else(|| panic!("no mTLS chain for port {port}"))
}

fn typed(f: &Filter) -> &envoy_types::pb::google::protobuf::Any {
    let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
        panic!("{} has no typed config", f.name)
    };
    any
}

/// The HTTP RBAC filters of an inbound HTTP port, compiled, and the names of all its filters.
fn http_rbac(res: &XdsResources, port: u16) -> (Vec<RbacFilter>, Vec<String>) {
    let chain = mtls_chain(res, port);
    assert_eq!(chain.filters.len(), 1, "an HTTP chain has one HCM");
    let hcm: envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager =
        filter_config(&chain.filters[0]);
    let names = hcm.http_filters.iter().map(|f| f.name.clone()).collect();
    let filters = hcm
        .http_filters
        .iter()
        .filter(|f| f.name == "envoy.filters.http.rbac")
        .map(|f| {
            let Some(http_filter::ConfigType::TypedConfig(any)) = &f.config_type else {
                panic!("RBAC without typed config")
            };
            convert::http_rbac_filter(any).unwrap_or_else(|e| panic!("strait-authz refuses: {e}"))
        })
        .collect();
    (filters, names)
}

/// The network RBAC filters of a chain, compiled; they must come before tcp_proxy.
fn network_rbac(chain: &FilterChain) -> Vec<RbacFilter> {
    let last = chain.filters.last().expect("filters");
    assert_eq!(
        last.name, "envoy.filters.network.tcp_proxy",
        "tcp_proxy last"
    );
    chain
        .filters
        .iter()
        .filter(|f| f.name == "envoy.filters.network.rbac")
        .map(|f| {
            convert::network_rbac_filter(typed(f))
                .unwrap_or_else(|e| panic!("strait-authz refuses: {e}"))
        })
        .collect()
}

fn connection(peer: Option<&str>, port: u16) -> Connection {
    Connection {
        source: "10.1.0.99:40000".parse().unwrap(),
        destination: format!("10.1.0.11:{port}").parse().unwrap(),
        peer_principal: peer.map(|p| format!("spiffe://{p}")),
        sni: None,
    }
}

/// The filters in order, as Envoy runs them: the first refusal ends the request. `Err` names
/// the policy that decided (`none` when no ALLOW policy matched).
fn http_decide(
    filters: &[RbacFilter],
    peer: Option<&str>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(), String> {
    let mut map = http::HeaderMap::new();
    for (k, v) in headers {
        map.append(
            http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let conn = connection(peer, 9080);
    let req = HttpRequest {
        method,
        path,
        authority: "details:9080",
        scheme: "http",
        headers: &map,
        remote_ip: conn.source.ip(),
    };
    let md = Metadata::new();
    let input = Input {
        connection: &conn,
        request: Some(&req),
        metadata: &md,
    };
    for f in filters {
        let d = f.decide(&input);
        if !d.allowed {
            return Err(strait_authz::denial_details(&d));
        }
    }
    Ok(())
}

fn tcp_decide(filters: &[RbacFilter], peer: Option<&str>, port: u16) -> Result<(), String> {
    let conn = connection(peer, port);
    let md = Metadata::new();
    let input = Input {
        connection: &conn,
        request: None,
        metadata: &md,
    };
    for f in filters {
        let d = f.decide(&input);
        if !d.allowed {
            return Err(strait_authz::denial_details(&d));
        }
    }
    Ok(())
}

const PRODUCTPAGE_SA: &str = "cluster.local/ns/default/sa/bookinfo-productpage";
const REVIEWS_SA: &str = "cluster.local/ns/default/sa/bookinfo-reviews";
const SLEEP_SA: &str = "cluster.local/ns/default/sa/sleep";
const DENIED_NONE: &str = "rbac_access_denied_matched_policy[none]";

fn translate_for(resources: Vec<Resource>, p: &Proxy) -> XdsResources {
    translate(&snapshot(resources), &bookinfo_registry(), p)
}

#[test]
fn without_policies_there_is_no_rbac_filter() {
    let res = translate_for(Vec::new(), &bookinfo("details"));
    let (filters, names) = http_rbac(&res, 9080);
    assert!(filters.is_empty());
    assert_eq!(names, ["envoy.filters.http.router"]);
}

#[test]
fn authz_http_allow_nothing_denies_every_request() {
    let policies = docs("authz-http/authz-http-bookinfo.yaml", &["allow-nothing"]);
    for app in ["productpage", "details", "reviews", "ratings"] {
        let res = translate_for(policies.clone(), &bookinfo(app));
        let (filters, names) = http_rbac(&res, 9080);
        assert_eq!(
            names,
            ["envoy.filters.http.rbac", "envoy.filters.http.router"],
            "{app}: RBAC before the router"
        );
        assert_eq!(
            http_decide(&filters, Some(PRODUCTPAGE_SA), "GET", "/", &[]),
            Err(DENIED_NONE.to_string()),
            "{app}"
        );
        assert!(http_decide(&filters, None, "GET", "/", &[]).is_err());
        // The explanation names the policy and why it matched nothing.
        let conn = connection(None, 9080);
        let md = Metadata::new();
        let map = http::HeaderMap::new();
        let req = HttpRequest {
            method: "GET",
            path: "/",
            authority: "x",
            scheme: "http",
            headers: &map,
            remote_ip: conn.source.ip(),
        };
        let input = Input {
            connection: &conn,
            request: Some(&req),
            metadata: &md,
        };
        let d = filters[0].decide(&input);
        assert_eq!(
            filters[0].explain_denial(&d, &input),
            "no ALLOW policy matched (default/allow-nothing rule 0: the policy has no rules: it matches nothing)"
        );
    }
}

#[test]
fn authz_http_steps_allow_what_istio_documents() {
    let file = "authz-http/authz-http-bookinfo.yaml";
    // Step 2: productpage viewer. The page loads; details and reviews still refuse.
    let step2 = docs(file, &["allow-nothing", "productpage-viewer"]);
    let (pp, _) = http_rbac(
        &translate_for(step2.clone(), &bookinfo("productpage")),
        9080,
    );
    assert_eq!(http_decide(&pp, None, "GET", "/productpage", &[]), Ok(()));
    assert_eq!(
        http_decide(&pp, Some(SLEEP_SA), "GET", "/productpage", &[]),
        Ok(())
    );
    assert_eq!(
        http_decide(&pp, None, "POST", "/productpage", &[]),
        Err(DENIED_NONE.to_string())
    );
    let (details, _) = http_rbac(&translate_for(step2, &bookinfo("details")), 9080);
    assert!(http_decide(&details, Some(PRODUCTPAGE_SA), "GET", "/details/0", &[]).is_err());

    // Step 3: details and reviews viewers: only productpage's identity, only GET.
    let step3 = docs(
        file,
        &[
            "allow-nothing",
            "productpage-viewer",
            "details-viewer",
            "reviews-viewer",
        ],
    );
    for app in ["details", "reviews"] {
        let (f, _) = http_rbac(&translate_for(step3.clone(), &bookinfo(app)), 9080);
        assert_eq!(
            http_decide(&f, Some(PRODUCTPAGE_SA), "GET", "/x/0", &[]),
            Ok(()),
            "{app}"
        );
        assert!(
            http_decide(&f, Some(SLEEP_SA), "GET", "/x/0", &[]).is_err(),
            "{app}"
        );
        assert!(http_decide(&f, Some(PRODUCTPAGE_SA), "POST", "/x/0", &[]).is_err());
        assert!(
            http_decide(&f, None, "GET", "/x/0", &[]).is_err(),
            "plaintext"
        );
    }
    let (ratings, _) = http_rbac(&translate_for(step3.clone(), &bookinfo("ratings")), 9080);
    assert!(http_decide(&ratings, Some(REVIEWS_SA), "GET", "/ratings/0", &[]).is_err());

    // Step 4: ratings viewer: reviews' identity reaches ratings.
    let mut step4 = step3;
    step4.extend(docs(file, &["ratings-viewer"]));
    let (ratings, _) = http_rbac(&translate_for(step4, &bookinfo("ratings")), 9080);
    assert_eq!(
        http_decide(&ratings, Some(REVIEWS_SA), "GET", "/ratings/0", &[]),
        Ok(())
    );
    assert!(http_decide(&ratings, Some(PRODUCTPAGE_SA), "GET", "/ratings/0", &[]).is_err());
}

/// Istio's authz-deny task on httpbin in `foo`: DENY is evaluated before ALLOW.
#[test]
fn authz_deny_is_evaluated_before_allow() {
    let all = task_docs("authz-deny/authz-deny.yaml");
    // The documents in order: step 1 DENY GET; step 2 DENY GET unless x-token admin; step 3
    // ALLOW path /ip (alongside step 2).
    let step = |i: usize| all[i].clone();
    let mut registry = bookinfo_registry();
    let svc = k8s_service("httpbin", "foo", "10.96.0.50", vec![http_port(8000)]);
    let mut ep = endpoint("10.1.0.50", 8000, &[("app", "httpbin"), ("version", "v1")]);
    ep.namespace = "foo".into();
    registry
        .endpoints
        .insert((svc.hostname.clone(), 8000), vec![ep].into());
    registry.services.insert(svc.hostname.clone(), svc);
    let httpbin = sidecar(
        "10.1.0.50",
        "httpbin",
        "foo",
        &[("app", "httpbin"), ("version", "v1")],
    );
    let rbac = |resources: Vec<Resource>| {
        http_rbac(&translate(&snapshot(resources), &registry, &httpbin), 8000).0
    };
    let deny_get = "rbac_access_denied_matched_policy[ns[foo]-policy[deny-method-get]-rule[0]]";

    let f = rbac(vec![step(0)]);
    assert_eq!(
        http_decide(&f, None, "GET", "/get", &[]),
        Err(deny_get.into())
    );
    assert_eq!(http_decide(&f, None, "POST", "/post", &[]), Ok(()));

    let f = rbac(vec![step(1)]);
    assert_eq!(
        http_decide(&f, None, "GET", "/get", &[("x-token", "admin")]),
        Ok(())
    );
    assert_eq!(
        http_decide(&f, None, "GET", "/get", &[("x-token", "guest")]),
        Err(deny_get.into())
    );

    let f = rbac(vec![step(1), step(2)]);
    assert_eq!(f.len(), 2, "a DENY filter, then an ALLOW filter");
    assert_eq!(
        http_decide(&f, None, "GET", "/ip", &[("x-token", "guest")]),
        Err(deny_get.into())
    );
    assert_eq!(
        http_decide(&f, None, "GET", "/ip", &[("x-token", "admin")]),
        Ok(())
    );
    assert_eq!(
        http_decide(&f, None, "GET", "/get", &[("x-token", "admin")]),
        Err(DENIED_NONE.into())
    );
}

/// Istio's authz-tcp task on tcp-echo in `foo` (ports 9000 and 9001 declared, 9002 only on
/// the pod: the passthrough chain): HTTP-only fields make an ALLOW rule match nothing and are
/// ignored by a DENY rule.
#[test]
fn authz_tcp_http_only_fields_on_tcp_ports() {
    let all = task_docs("authz-tcp/authz-tcp.yaml");
    let mut registry = tcp_echo_registry();
    for ((host, _), eps) in registry.endpoints.iter_mut() {
        if host == TCP_ECHO {
            for e in std::sync::Arc::make_mut(eps).iter_mut() {
                e.namespace = "foo".into();
            }
        }
    }
    let echo = sidecar(
        "10.1.0.40",
        "tcp-echo-v1",
        "foo",
        &[("app", "tcp-echo"), ("version", "v1")],
    );
    // Every port: 9000, 9001 (their chains) and 9002 (the passthrough chain).
    let outcome = |resources: Vec<Resource>| -> Vec<bool> {
        let res = translate(&snapshot(resources), &registry, &echo);
        let l = virtual_inbound(&res);
        let passthrough = l
            .default_filter_chain
            .as_ref()
            .expect("a passthrough chain");
        [9000u16, 9001, 9002]
            .iter()
            .map(|port| {
                let chain = if *port == 9002 {
                    passthrough
                } else {
                    mtls_chain(&res, *port)
                };
                tcp_decide(&network_rbac(chain), Some(SLEEP_SA), *port).is_ok()
            })
            .collect()
    };
    assert_eq!(outcome(Vec::new()), [true, true, true], "no policy");
    assert_eq!(outcome(vec![all[0].clone()]), [true, true, false], "step 1");
    assert_eq!(
        outcome(vec![all[1].clone()]),
        [false, false, false],
        "step 2"
    );
    assert_eq!(
        outcome(vec![all[2].clone()]),
        [false, false, false],
        "step 3"
    );
    assert_eq!(outcome(vec![all[3].clone()]), [false, true, true], "step 4");

    // The passthrough chain sends to its own cluster, which connects from 127.0.0.6 (the
    // capture rules let that through; from the pod's address the connection would be
    // captured again, a loop).
    let res = translate(&snapshot(Vec::new()), &registry, &echo);
    let passthrough = virtual_inbound(&res).default_filter_chain.clone().unwrap();
    let tcp = passthrough.filters.last().unwrap();
    let tcp = <envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy as prost::Message>::decode(
        typed(tcp).value.as_slice(),
    )
    .unwrap();
    assert_eq!(
        tcp.cluster_specifier,
        Some(
            envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::ClusterSpecifier::Cluster(
                "InboundPassthroughCluster".into()
            )
        )
    );
    let bind = res.clusters["InboundPassthroughCluster"]
        .upstream_bind_config
        .as_ref()
        .and_then(|b| b.source_address.as_ref())
        .map(|a| a.address.as_str());
    assert_eq!(bind, Some("127.0.0.6"));

    // The ALLOW rule with `methods` is not translated for TCP at all: no policy matches.
    let res = translate(&snapshot(vec![all[1].clone()]), &registry, &echo);
    let chain = mtls_chain(&res, 9000);
    let f = network_rbac(chain);
    assert_eq!(f.len(), 1);
    assert!(f[0].rules.as_ref().unwrap().policies.is_empty());
}

fn policy_yaml(yaml: &str) -> Vec<Resource> {
    support::yaml("policy.yaml", yaml.as_bytes())
}

#[test]
fn principals_namespaces_and_ip_blocks_match_as_istio_generates_them() {
    let policies = policy_yaml(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mixed, namespace: default}
spec:
  selector: {matchLabels: {app: details}}
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/default/sa/bookinfo-*"]}
    - source: {principals: ["*/sa/admin"]}
    - source: {namespaces: ["trusted-*"], notPrincipals: ["*/sa/untrusted"]}
    - source: {ipBlocks: ["10.9.0.0/16"]}
    to:
    - operation: {paths: ["/details/*", "*.json", "/exact"], notMethods: ["DELETE"]}
    - operation: {paths: ["/api/{*}/items/{**}"]}
"#,
    );
    let res = translate_for(policies, &bookinfo("details"));
    let (f, _) = http_rbac(&res, 9080);
    let ok =
        |peer: Option<&str>, method: &str, path: &str| http_decide(&f, peer, method, path, &[]);
    assert_eq!(ok(Some(PRODUCTPAGE_SA), "GET", "/details/0"), Ok(()));
    assert_eq!(ok(Some(PRODUCTPAGE_SA), "GET", "/a/b.json"), Ok(()));
    assert_eq!(ok(Some(PRODUCTPAGE_SA), "GET", "/exact"), Ok(()));
    assert!(ok(Some(PRODUCTPAGE_SA), "GET", "/exact/more").is_err());
    assert!(ok(Some(PRODUCTPAGE_SA), "DELETE", "/details/0").is_err());
    assert_eq!(
        ok(Some(PRODUCTPAGE_SA), "DELETE", "/api/v1/items/a/b"),
        Ok(())
    );
    assert!(ok(Some(PRODUCTPAGE_SA), "GET", "/api/v1/x/items/a").is_err());
    assert!(ok(Some(SLEEP_SA), "GET", "/details/0").is_err());
    assert_eq!(
        ok(Some("example.org/ns/x/sa/admin"), "GET", "/exact"),
        Ok(())
    );
    assert_eq!(
        ok(Some("cluster.local/ns/trusted-a/sa/x"), "GET", "/exact"),
        Ok(())
    );
    assert!(
        ok(
            Some("cluster.local/ns/trusted-a/sa/untrusted"),
            "GET",
            "/exact"
        )
        .is_err()
    );
    assert!(ok(Some("cluster.local/ns/trustedx/sa/x"), "GET", "/exact").is_err());
    // ipBlocks: the peer's address (10.1.0.99 in these requests) is not in 10.9.0.0/16.
    assert!(ok(None, "GET", "/exact").is_err());
}

#[test]
fn root_namespace_policies_apply_everywhere_and_other_namespaces_nowhere() {
    let policies = policy_yaml(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh-deny-delete, namespace: istio-system}
spec:
  action: DENY
  rules: [{to: [{operation: {methods: ["DELETE"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ratings-only, namespace: istio-system}
spec:
  selector: {matchLabels: {app: ratings}}
  action: DENY
  rules: [{to: [{operation: {methods: ["PUT"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: elsewhere, namespace: other}
spec: {}
"#,
    );
    let (details, _) = http_rbac(&translate_for(policies.clone(), &bookinfo("details")), 9080);
    assert_eq!(
        http_decide(&details, None, "DELETE", "/", &[]),
        Err(
            "rbac_access_denied_matched_policy[ns[istio-system]-policy[mesh-deny-delete]-rule[0]]"
                .into()
        )
    );
    assert_eq!(http_decide(&details, None, "PUT", "/", &[]), Ok(()));
    assert_eq!(http_decide(&details, None, "GET", "/", &[]), Ok(()));
    let (ratings, _) = http_rbac(&translate_for(policies, &bookinfo("ratings")), 9080);
    assert!(http_decide(&ratings, None, "PUT", "/", &[]).is_err());
}

#[test]
fn audit_and_dry_run_policies_never_refuse() {
    let policies = policy_yaml(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit-get, namespace: default}
spec:
  action: AUDIT
  rules: [{to: [{operation: {methods: ["GET"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: dry-deny
  namespace: default
  annotations: {istio.io/dry-run: "true"}
spec:
  action: DENY
  rules: [{to: [{operation: {methods: ["GET"]}}]}]
"#,
    );
    let (f, _) = http_rbac(&translate_for(policies, &bookinfo("details")), 9080);
    assert_eq!(f.len(), 2, "the AUDIT filter, then the DENY filter");
    assert_eq!(
        f[0].rules.as_ref().unwrap().action,
        strait_authz::Action::Log
    );
    assert!(f[1].rules.is_none(), "dry run: no enforced DENY rules");
    assert_eq!(f[1].shadow_prefix, "istio_dry_run_deny_");
    assert_eq!(http_decide(&f, None, "GET", "/", &[]), Ok(()));
}

#[test]
fn request_principals_need_a_verified_token() {
    let policies = policy_yaml(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: require-jwt, namespace: default}
spec:
  selector: {matchLabels: {app: details}}
  rules:
  - from: [{source: {requestPrincipals: ["testing@secure.istio.io/testing@secure.istio.io"]}}]
    when:
    - key: request.auth.claims[groups]
      values: ["group1"]
"#,
    );
    let (f, _) = http_rbac(&translate_for(policies, &bookinfo("details")), 9080);
    assert!(http_decide(&f, None, "GET", "/", &[]).is_err(), "no token");
    // jwt_authn's payload in dynamic metadata, as Istio configures it.
    let conn = connection(None, 9080);
    let map = http::HeaderMap::new();
    let req = HttpRequest {
        method: "GET",
        path: "/",
        authority: "details",
        scheme: "http",
        headers: &map,
        remote_ip: conn.source.ip(),
    };
    let decide = |payload: serde_json::Value| {
        let mut md = Metadata::new();
        md.insert(
            "envoy.filters.http.jwt_authn".into(),
            serde_json::json!({ "payload": payload }),
        );
        f[0].decide(&Input {
            connection: &conn,
            request: Some(&req),
            metadata: &md,
        })
        .allowed
    };
    let iss = "testing@secure.istio.io";
    assert!(decide(
        serde_json::json!({"iss": iss, "sub": iss, "groups": ["group1", "group2"]})
    ));
    assert!(decide(
        serde_json::json!({"iss": iss, "sub": iss, "groups": "group1"})
    ));
    assert!(!decide(
        serde_json::json!({"iss": iss, "sub": iss, "groups": ["group2"]})
    ));
    assert!(!decide(
        serde_json::json!({"iss": iss, "sub": "other", "groups": ["group1"]})
    ));
}

#[test]
fn the_details_sidecar_with_the_authz_http_policies_matches_its_golden_file() {
    let policies = docs(
        "authz-http/authz-http-bookinfo.yaml",
        &["allow-nothing", "productpage-viewer", "details-viewer"],
    );
    let res = translate_for(policies, &bookinfo("details"));
    let inbound: XdsResources = XdsResources {
        listeners: res
            .listeners
            .iter()
            .filter(|(name, _)| *name == "virtualInbound")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        ..Default::default()
    };
    check_golden("authz-http-details-inbound", &render(&inbound));
}

/// strait-authz compiles every RBAC filter the translator emits for every feature (the same
/// file real Envoy validates in `envoy_validate.rs`).
#[test]
fn strait_authz_compiles_every_translated_feature() {
    let config = snapshot(yaml(
        "authz-features.yaml",
        include_bytes!("data/authz-features.yaml"),
    ));
    let mut compiled = 0;
    for proxy in [
        productpage(CaptureMode::Iptables),
        productpage(CaptureMode::None),
        ingress_gateway(),
    ] {
        let res = translate(&config, &tcp_echo_registry(), &proxy);
        for l in res.listeners.values() {
            for chain in l
                .filter_chains
                .iter()
                .chain(l.default_filter_chain.as_ref())
            {
                for f in &chain.filters {
                    if f.name == "envoy.filters.network.rbac" {
                        convert::network_rbac_filter(typed(f)).unwrap();
                        compiled += 1;
                    }
                    if f.name == "envoy.filters.network.http_connection_manager" {
                        let hcm: envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager =
                            filter_config(f);
                        for hf in &hcm.http_filters {
                            if hf.name == "envoy.filters.http.rbac" {
                                let Some(http_filter::ConfigType::TypedConfig(any)) =
                                    &hf.config_type
                                else {
                                    panic!("RBAC without config")
                                };
                                convert::http_rbac_filter(any).unwrap();
                                compiled += 1;
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(compiled >= 6, "only {compiled} RBAC filters translated");
}

/// Versions are hashes of the encoded bytes: RBAC's `policies` map must encode the same way each
/// time, or every push would replace (and drain) the workload's listeners.
#[test]
fn the_same_policies_encode_to_the_same_bytes() {
    let config = snapshot(yaml(
        "authz-features.yaml",
        include_bytes!("data/authz-features.yaml"),
    ));
    let mut resources = config.all().cloned().collect::<Vec<_>>();
    resources.extend(docs(
        "authz-http/authz-http-bookinfo.yaml",
        &["allow-nothing", "productpage-viewer"],
    ));
    let config = snapshot(resources);
    let p = productpage(CaptureMode::Iptables);
    let first =
        translate(&config, &tcp_echo_registry(), &p).encode(strait_xds_core::TypeUrl::Listener);
    for _ in 0..20 {
        let again =
            translate(&config, &tcp_echo_registry(), &p).encode(strait_xds_core::TypeUrl::Listener);
        for ((name, a), (_, b)) in first.iter().zip(&again) {
            assert_eq!(a.value, b.value, "{name} encodes differently");
        }
    }
}

/// Istio's authz-custom policy on details (its selector changed to `app: details`), with the
/// task's mesh config: a shadow RBAC filter whose match triggers the provider's ext_authz.
fn custom_setup(provider: &str) -> XdsResources {
    let mesh = strait_api::mesh_config::load(
        &testdata().join("istio-install/authz-custom/mesh-config-extension-providers.yaml"),
    )
    .unwrap();
    let policy = std::fs::read_to_string(
        testdata().join("istio-samples/tasks/authz-custom/authz-custom.yaml"),
    )
    .unwrap()
    .replace("app: httpbin", "app: details")
    .replace("name: sample-ext-authz-grpc", &format!("name: {provider}"));
    let mut resources = policy_yaml(&policy);
    for r in &mut resources {
        r.metadata.namespace = Some("default".into());
    }
    let mut config = snapshot(resources);
    config.mesh.extension_providers = std::sync::Arc::new(mesh.config.extension_providers);
    let mut registry = bookinfo_registry();
    registry.services.insert(
        "ext-authz.foo.svc.cluster.local".into(),
        k8s_service(
            "ext-authz",
            "foo",
            "240.240.0.99",
            vec![
                http_port(8000),
                strait_registry::Port {
                    name: "grpc".into(),
                    number: 9000,
                    protocol: strait_registry::Protocol::Grpc,
                },
            ],
        ),
    );
    translate(&config, &registry, &bookinfo("details"))
}

#[test]
fn custom_triggers_the_providers_ext_authz_only_when_its_rule_matches() {
    use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3::{ExtAuthz, ext_authz};
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
    let res = custom_setup("sample-ext-authz-grpc");
    let (filters, names) = http_rbac(&res, 9080);
    assert_eq!(
        names,
        [
            "envoy.filters.http.rbac",
            "envoy.filters.http.ext_authz",
            "envoy.filters.http.router"
        ]
    );
    // The shadow rules never refuse; a match leaves the metadata ext_authz asks for.
    let conn = connection(Some(SLEEP_SA), 9080);
    let headers = http::HeaderMap::new();
    for (path, triggered) in [("/headers", true), ("/ip", false)] {
        let req = HttpRequest {
            method: "GET",
            path,
            authority: "details:9080",
            scheme: "http",
            headers: &headers,
            remote_ip: conn.source.ip(),
        };
        let mut md = Metadata::new();
        let d = filters[0].decide(&Input {
            connection: &conn,
            request: Some(&req),
            metadata: &md,
        });
        assert!(d.allowed, "{path}: shadow rules never refuse");
        filters[0].record(&d, &mut md, "envoy.filters.http.rbac");
        let id = md
            .get("envoy.filters.http.rbac")
            .and_then(|m| m.get("istio_ext_authz_shadow_effective_policy_id"))
            .and_then(|v| v.as_str())
            .map(str::to_string);
        assert_eq!(
            id.is_some_and(|id| id.starts_with("istio-ext-authz-sample-ext-authz-grpc-")),
            triggered,
            "{path}: {md:?}"
        );
    }
    let hcm: HttpConnectionManager = filter_config(&mtls_chain(&res, 9080).filters[0]);
    let Some(http_filter::ConfigType::TypedConfig(any)) = &hcm.http_filters[1].config_type else {
        panic!("ext_authz without typed config")
    };
    let ea: ExtAuthz = prost::Message::decode(any.value.as_slice()).unwrap();
    let Some(ext_authz::Services::GrpcService(g)) = &ea.services else {
        panic!("{ea:?}")
    };
    let Some(envoy_types::pb::envoy::config::core::v3::grpc_service::TargetSpecifier::EnvoyGrpc(e)) =
        &g.target_specifier
    else {
        panic!("{g:?}")
    };
    assert_eq!(
        e.cluster_name,
        "outbound|9000||ext-authz.foo.svc.cluster.local"
    );
    assert_eq!(
        e.authority,
        "outbound_.9000_._.ext-authz.foo.svc.cluster.local"
    );
    assert!(!ea.failure_mode_allow, "fail closed unless failOpen");

    // The HTTP provider: its header list.
    let res = custom_setup("sample-ext-authz-http");
    let hcm: HttpConnectionManager = filter_config(&mtls_chain(&res, 9080).filters[0]);
    let Some(http_filter::ConfigType::TypedConfig(any)) = &hcm.http_filters[1].config_type else {
        panic!("ext_authz without typed config")
    };
    let ea: ExtAuthz = prost::Message::decode(any.value.as_slice()).unwrap();
    assert!(matches!(
        ea.services,
        Some(ext_authz::Services::HttpService(_))
    ));
    assert_eq!(ea.allowed_headers.unwrap().patterns.len(), 1);
}

#[test]
fn custom_with_an_unknown_provider_denies_what_its_rules_match() {
    let res = custom_setup("no-such-provider");
    let (filters, names) = http_rbac(&res, 9080);
    assert_eq!(
        names,
        ["envoy.filters.http.rbac", "envoy.filters.http.router"]
    );
    let err = http_decide(&filters, Some(SLEEP_SA), "GET", "/headers", &[]).unwrap_err();
    assert!(err.contains("deny-due-to-bad-CUSTOM-action"), "{err}");
    assert_eq!(
        http_decide(&filters, Some(SLEEP_SA), "GET", "/ip", &[]),
        Ok(())
    );
}
