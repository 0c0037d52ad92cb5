//! RequestAuthentication → Envoy's jwt_authn filter, checked by what it decides: the filter is
//! decoded and evaluated with strait-authz (what strait-proxy runs) for the requests of Istio's
//! authz-jwt task and authn-policy steps 07–09, with their YAML unchanged and the key set from
//! `jwt-samples/jwks.json` as the control plane would have fetched it; plus the filter's place
//! (ahead of RBAC, on selected sidecars and gateways only), Istio's stand-in key set when the
//! fetch has not succeeded, and a golden file.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, http_filter,
};
use strait_api::Resource;
use strait_authz::{Connection, HttpRequest, Input, JwtAuthn, Metadata, RbacFilter, convert};
use strait_registry::Registry;
use strait_translate::ConfigSnapshot;
use strait_translate::translate::translate;
use strait_xds_core::{CaptureMode, Proxy, ProxyRole, XdsResources};
use support::*;

const JWKS_URI_1_8: &str = "https://raw.githubusercontent.com/istio/istio/release-1.8/security/tools/jwt/samples/jwks.json";
const HTTPBIN_IP: &str = "10.2.0.5";

fn jwt_sample(file: &str) -> String {
    let path = testdata().join("istio-samples/jwt-samples").join(file);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_string()
}

/// The named documents of a task file.
fn docs(file: &str, names: &[&str]) -> Vec<Resource> {
    let all = istio_sample(&format!("tasks/{file}"));
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

/// `docs` for a file with several documents of one name: the `i`th.
fn doc_at(file: &str, i: usize) -> Resource {
    istio_sample(&format!("tasks/{file}")).remove(i)
}

fn registry() -> Registry {
    let mut r = bookinfo_registry();
    let svc = k8s_service("httpbin", "foo", "10.96.1.5", vec![http_port(8000)]);
    let mut ep = endpoint(HTTPBIN_IP, 8080, &[("app", "httpbin"), ("version", "v1")]);
    ep.namespace = "foo".into();
    r.endpoints
        .insert((svc.hostname.clone(), 8000), vec![ep].into());
    r.services.insert(svc.hostname.clone(), svc);
    r
}

fn httpbin() -> Proxy {
    let mut p = proxy(
        ProxyRole::Sidecar,
        HTTPBIN_IP,
        "httpbin",
        &[("app", "httpbin"), ("version", "v1")],
        CaptureMode::Iptables,
    );
    p.namespace = "foo".into();
    p
}

fn gateway() -> Proxy {
    let mut p = ingress_gateway();
    p.namespace = "istio-system".into();
    p
}

fn config(resources: Vec<Resource>, fetched: bool) -> ConfigSnapshot {
    let s = snapshot(resources);
    if !fetched {
        return s;
    }
    let jwks = jwt_sample("jwks.json");
    let uris = strait_translate::translate::authn::jwks_uris(&s);
    let map: BTreeMap<String, String> = uris.into_iter().map(|u| (u, jwks.clone())).collect();
    s.with_jwks(2, Arc::new(map))
}

/// Every HTTP connection manager's filter list in these listeners.
fn hcms(listeners: &BTreeMap<String, Listener>) -> Vec<HttpConnectionManager> {
    listeners
        .values()
        .flat_map(|l| {
            l.filter_chains
                .iter()
                .chain(l.default_filter_chain.as_ref())
        })
        .flat_map(|c| &c.filters)
        .filter(|f| f.name == "envoy.filters.network.http_connection_manager")
        .map(filter_config::<HttpConnectionManager>)
        .collect()
}

fn typed(f: &HttpFilter) -> &envoy_types::pb::google::protobuf::Any {
    let Some(http_filter::ConfigType::TypedConfig(any)) = &f.config_type else {
        panic!("{} without typed config", f.name)
    };
    any
}

/// The jwt_authn and RBAC filters of the one connection manager that has a jwt_authn filter
/// (asserting it comes first, then RBAC, then the router).
fn auth_filters(res: &XdsResources) -> (JwtAuthn, Vec<RbacFilter>, HttpFilter) {
    let with: Vec<HttpConnectionManager> = hcms(&res.listeners)
        .into_iter()
        .filter(|h| {
            h.http_filters
                .iter()
                .any(|f| f.name == "envoy.filters.http.jwt_authn")
        })
        .collect();
    assert!(!with.is_empty(), "no connection manager has jwt_authn");
    let hcm = &with[0];
    let names: Vec<&str> = hcm.http_filters.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names[0], "envoy.filters.http.jwt_authn", "{names:?}");
    assert_eq!(*names.last().unwrap(), "envoy.filters.http.router");
    let jwt = convert::jwt_authn(typed(&hcm.http_filters[0]))
        .unwrap_or_else(|e| panic!("strait-authz refuses the jwt_authn filter: {e}"));
    let rbac = hcm
        .http_filters
        .iter()
        .filter(|f| f.name == "envoy.filters.http.rbac")
        .map(|f| convert::http_rbac_filter(typed(f)).unwrap())
        .collect();
    (jwt, rbac, hcm.http_filters[0].clone())
}

/// jwt_authn then RBAC, as both data planes run them: the status a request gets.
fn status(jwt: &JwtAuthn, rbac: &[RbacFilter], path: &str, token: Option<&str>) -> u16 {
    let mut headers = http::HeaderMap::new();
    if let Some(t) = token {
        headers.insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    let conn = Connection {
        source: "10.2.0.9:40000".parse().unwrap(),
        destination: format!("{HTTPBIN_IP}:8080").parse().unwrap(),
        peer_principal: None,
        sni: None,
    };
    let req = HttpRequest {
        method: "GET",
        path,
        authority: "httpbin.foo:8000",
        scheme: "http",
        headers: &headers,
        remote_ip: conn.source.ip(),
    };
    let outcome = jwt.authenticate(&req, SystemTime::now());
    if let Some(e) = outcome.refused {
        return e.status();
    }
    let mut md = Metadata::new();
    if let Some(v) = outcome.metadata_object() {
        md.insert("envoy.filters.http.jwt_authn".into(), v);
    }
    let input = Input {
        connection: &conn,
        request: Some(&req),
        metadata: &md,
    };
    if rbac.iter().all(|f| f.decide(&input).allowed) {
        200
    } else {
        403
    }
}

#[test]
fn authz_jwt_task_on_the_httpbin_sidecar() {
    let token = jwt_sample("demo.jwt");
    let group = jwt_sample("groups-scope.jwt");
    let file = "authz-jwt/authz-jwt.yaml";
    // Step 1: the RequestAuthentication alone.
    let step1 = docs(file, &["jwt-example"]);
    let res = translate(&config(step1.clone(), true), &registry(), &httpbin());
    let (jwt, rbac, _) = auth_filters(&res);
    assert!(rbac.is_empty());
    assert_eq!(status(&jwt, &rbac, "/headers", Some("invalidToken")), 401);
    assert_eq!(status(&jwt, &rbac, "/headers", None), 200);
    assert_eq!(status(&jwt, &rbac, "/headers", Some(&token)), 200);
    // Step 2: require-jwt.
    let mut step2 = step1.clone();
    step2.push(doc_at(file, 1));
    let res = translate(&config(step2, true), &registry(), &httpbin());
    let (jwt, rbac, _) = auth_filters(&res);
    assert_eq!(rbac.len(), 1);
    assert_eq!(status(&jwt, &rbac, "/headers", Some(&token)), 200);
    assert_eq!(status(&jwt, &rbac, "/headers", None), 403);
    // Step 3: the groups claim.
    let mut step3 = step1;
    step3.push(doc_at(file, 2));
    let res = translate(&config(step3, true), &registry(), &httpbin());
    let (jwt, rbac, _) = auth_filters(&res);
    assert_eq!(status(&jwt, &rbac, "/headers", Some(&group)), 200);
    assert_eq!(status(&jwt, &rbac, "/headers", Some(&token)), 403);
}

#[test]
fn a_key_set_not_fetched_yet_refuses_tokens_and_passes_requests_without_one() {
    let res = translate(
        &config(docs("authz-jwt/authz-jwt.yaml", &["jwt-example"]), false),
        &registry(),
        &httpbin(),
    );
    let (jwt, rbac, filter) = auth_filters(&res);
    assert_eq!(
        status(&jwt, &rbac, "/headers", Some(&jwt_sample("demo.jwt"))),
        401
    );
    assert_eq!(status(&jwt, &rbac, "/headers", None), 200);
    let shown = text(&format!("{filter:#?}"));
    let fake = strait_translate::translate::authn::fake_jwks(JWKS_URI_1_8);
    assert!(
        shown.contains(&format!("{fake:?}")),
        "Istio's stand-in key set is inlined:\n{shown}"
    );
}

#[test]
fn only_selected_workloads_get_the_filter() {
    let res = translate(
        &config(docs("authz-jwt/authz-jwt.yaml", &["jwt-example"]), true),
        &bookinfo_registry(),
        &productpage(CaptureMode::Iptables),
    );
    for h in hcms(&res.listeners) {
        assert!(
            h.http_filters
                .iter()
                .all(|f| f.name != "envoy.filters.http.jwt_authn")
        );
    }
}

fn gateway_config(extra: &[&str], fetched: bool) -> ConfigSnapshot {
    let mut resources = istio_sample("tasks/authn-policy/06-ingress-gateway-httpbin.yaml");
    for f in extra {
        resources.extend(istio_sample(&format!("tasks/authn-policy/{f}")));
    }
    config(resources, fetched)
}

#[test]
fn authn_policy_steps_7_to_9_on_the_ingress_gateway() {
    let token = jwt_sample("demo.jwt");
    let res = translate(
        &gateway_config(&["07-request-authentication-jwt.yaml"], true),
        &registry(),
        &gateway(),
    );
    let (jwt, rbac, filter) = auth_filters(&res);
    assert_eq!(status(&jwt, &rbac, "/headers", None), 200);
    assert_eq!(status(&jwt, &rbac, "/headers", Some("deadbeef")), 401);
    assert_eq!(status(&jwt, &rbac, "/headers", Some(&token)), 200);
    check_golden(
        "authn-policy-gateway-jwt-authn",
        &text(&format!("{filter:#?}")),
    );

    let res = translate(
        &gateway_config(
            &[
                "07-request-authentication-jwt.yaml",
                "08-authz-require-token.yaml",
            ],
            true,
        ),
        &registry(),
        &gateway(),
    );
    let (jwt, rbac, _) = auth_filters(&res);
    assert_eq!(status(&jwt, &rbac, "/headers", None), 403);
    assert_eq!(status(&jwt, &rbac, "/headers", Some(&token)), 200);

    let res = translate(
        &gateway_config(
            &[
                "07-request-authentication-jwt.yaml",
                "09-authz-require-token-per-path.yaml",
            ],
            true,
        ),
        &registry(),
        &gateway(),
    );
    let (jwt, rbac, _) = auth_filters(&res);
    assert_eq!(status(&jwt, &rbac, "/headers", None), 403);
    assert_eq!(status(&jwt, &rbac, "/ip", None), 200);
    assert_eq!(status(&jwt, &rbac, "/headers", Some(&token)), 200);
}

#[test]
fn rules_map_to_providers_with_istios_defaults_and_overrides() {
    let yaml_text = br#"
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: two, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  jwtRules:
  - issuer: a
    jwks: '{"keys":[{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0","kid":"k1"}]}'
    audiences: [x]
    forwardOriginalToken: true
    fromHeaders: [{name: x-jwt, prefix: "Token "}]
    fromParams: [tok]
    outputPayloadToHeader: x-payload
    outputClaimToHeaders: [{header: x-sub, claim: sub}]
    spaceDelimitedClaims: [roles]
  - issuer: b
    jwksUri: https://b.example/jwks.json
"#;
    let res = translate(
        &config(yaml("two.yaml", yaml_text), false),
        &registry(),
        &httpbin(),
    );
    let (jwt, _, _) = auth_filters(&res);
    let a = &jwt.providers["origins-0"];
    assert_eq!(a.issuer, "a");
    assert_eq!(a.audiences, ["x"]);
    assert!(a.forward);
    assert_eq!(
        a.from_headers,
        [("x-jwt".to_string(), "Token ".to_string())]
    );
    assert_eq!(a.from_params, ["tok"]);
    assert_eq!(a.forward_payload_header.as_deref(), Some("x-payload"));
    assert_eq!(
        a.claim_to_headers,
        [("x-sub".to_string(), "sub".to_string())]
    );
    assert_eq!(a.payload_in_metadata.as_deref(), Some("payload"));
    assert_eq!(a.space_delimited_claims, ["scope", "permission", "roles"]);
    let b = &jwt.providers["origins-1"];
    assert!(!b.forward);
    assert!(b.from_headers.is_empty() && b.from_params.is_empty());
    // No token at all passes; a token neither provider accepts does not.
    assert_eq!(status(&jwt, &[], "/", None), 200);
    assert_eq!(status(&jwt, &[], "/", Some("a.b.c")), 401);
}
