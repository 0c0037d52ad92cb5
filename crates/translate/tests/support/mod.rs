//! Shared fixtures for the translator tests: Istio's sample YAML, a hand-built Bookinfo
//! registry, proxies, and a deterministic text form of listeners and routes for golden files.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use envoy_types::pb::envoy::config::listener::v3::{Filter, Listener, filter};
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, VirtualHost, route,
};
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::{Cors, CorsPolicy};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::JwtAuthentication;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager,
};
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::envoy::extensions::path::r#match::uri_template::v3::UriTemplateMatchConfig;
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use envoy_types::pb::envoy::extensions::retry::priority::previous_priorities::v3::PreviousPrioritiesConfig;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::DownstreamTlsContext;
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};
use strait_api::Resource;
use strait_api::parse::Outcome;
use strait_registry::{
    Endpoint, Origin, Port, Protocol, Registry, Resolution, Service, Visibility,
};
use strait_translate::{ConfigSnapshot, MeshConfig};
use strait_xds_core::{CaptureMode, Proxy, ProxyRole, XdsResources};

/// Istio's reference data: `$STRAIT_TESTDATA`, else `shared/testdata` beside the checkout.
pub fn testdata() -> PathBuf {
    let dir = std::env::var_os("STRAIT_TESTDATA").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata"),
        PathBuf::from,
    );
    assert!(
        dir.join("istio-samples").is_dir(),
        "Istio's test data is missing at {}: set STRAIT_TESTDATA to the folder holding \
         istio-samples/ (the project's shared/testdata)",
        dir.display()
    );
    dir
}

/// The resources of one of Istio's Bookinfo networking samples.
pub fn bookinfo_sample(file: &str) -> Vec<Resource> {
    let path = testdata()
        .join("istio-samples/bookinfo/networking")
        .join(file);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    yaml(&path.display().to_string(), &bytes)
}

/// Resources from YAML text.
pub fn yaml(name: &str, bytes: &[u8]) -> Vec<Resource> {
    strait_api::parse_bytes(name, bytes)
        .into_iter()
        .map(|p| match p.outcome {
            Outcome::Resource(r) => {
                let report = r.validate();
                assert!(
                    report.is_ok(),
                    "{name}: {} is invalid: {report:?}",
                    r.name()
                );
                *r
            }
            other => panic!("{name}: document {} not read: {other:?}", p.source.index),
        })
        .collect()
}

pub fn snapshot(resources: Vec<Resource>) -> ConfigSnapshot {
    ConfigSnapshot::new(1, MeshConfig::default(), resources)
}

pub fn http_port(number: u16) -> Port {
    Port {
        name: "http".into(),
        number,
        protocol: Protocol::Http,
    }
}

pub fn k8s_service(name: &str, namespace: &str, vip: &str, ports: Vec<Port>) -> Service {
    Service {
        hostname: format!("{name}.{namespace}.svc.cluster.local"),
        namespace: namespace.into(),
        origin: Origin::KubernetesService { name: name.into() },
        addresses: vec![vip.parse().unwrap()],
        ports,
        resolution: Resolution::Static,
        mesh_external: false,
        visibility: Visibility::Public,
    }
}

pub fn endpoint(address: &str, port: u16, labels: &[(&str, &str)]) -> Endpoint {
    Endpoint {
        address: address.into(),
        port,
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        namespace: "default".into(),
        service_account: "default".into(),
        locality: String::new(),
        weight: 1,
        workload: None,
    }
}

/// Pod addresses of the Bookinfo workloads.
pub const PRODUCTPAGE_IP: &str = "10.1.0.10";
pub const GATEWAY_IP: &str = "10.1.0.2";

/// Bookinfo's four services (port 9080, HTTP) with one endpoint per version.
pub fn bookinfo_registry() -> Registry {
    let mut r = Registry::default();
    let services = [
        ("productpage", "10.96.0.10", vec![("v1", PRODUCTPAGE_IP)]),
        ("details", "10.96.0.11", vec![("v1", "10.1.0.11")]),
        (
            "reviews",
            "10.96.0.12",
            vec![
                ("v1", "10.1.0.12"),
                ("v2", "10.1.0.13"),
                ("v3", "10.1.0.14"),
            ],
        ),
        ("ratings", "10.96.0.13", vec![("v1", "10.1.0.15")]),
    ];
    for (name, vip, versions) in services {
        let svc = k8s_service(name, "default", vip, vec![http_port(9080)]);
        let eps = versions
            .iter()
            .map(|(v, ip)| endpoint(ip, 9080, &[("app", name), ("version", v)]))
            .collect::<Vec<_>>();
        r.endpoints.insert((svc.hostname.clone(), 9080), eps.into());
        r.services.insert(svc.hostname.clone(), svc);
    }
    r
}

/// Bookinfo plus a TCP service with a VIP (`mongodb:27017`) and a TLS ServiceEntry host
/// without one (`api.example.com:443`).
pub fn tcp_registry() -> Registry {
    let mut r = bookinfo_registry();
    let mongo = Service {
        ports: vec![Port {
            name: "tcp-mongo".into(),
            number: 27017,
            protocol: Protocol::Tcp,
        }],
        ..k8s_service("mongodb", "default", "10.96.0.20", Vec::new())
    };
    let api = Service {
        hostname: "api.example.com".into(),
        namespace: "default".into(),
        origin: Origin::ServiceEntry { name: "api".into() },
        addresses: Vec::new(),
        ports: vec![Port {
            name: "tls".into(),
            number: 443,
            protocol: Protocol::Tls,
        }],
        resolution: Resolution::Dns,
        mesh_external: true,
        visibility: Visibility::Public,
    };
    for s in [mongo, api] {
        r.services.insert(s.hostname.clone(), s);
    }
    r
}

pub fn proxy(
    role: ProxyRole,
    ip: &str,
    workload: &str,
    labels: &[(&str, &str)],
    capture: CaptureMode,
) -> Proxy {
    let ip: IpAddr = ip.parse().unwrap();
    Proxy {
        id: Proxy::node_id(role, ip, workload, "default"),
        role,
        ip,
        workload: workload.into(),
        namespace: "default".into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        capture,
        service_account: "default".into(),
        app_address: None,
        mtls: false,
    }
}

pub fn productpage(capture: CaptureMode) -> Proxy {
    proxy(
        ProxyRole::Sidecar,
        PRODUCTPAGE_IP,
        "productpage-v1",
        &[("app", "productpage"), ("version", "v1")],
        capture,
    )
}

pub fn ingress_gateway() -> Proxy {
    proxy(
        ProxyRole::Gateway,
        GATEWAY_IP,
        "istio-ingressgateway",
        &[("istio", "ingressgateway")],
        CaptureMode::None,
    )
}

// ---- lookups ----

pub fn virtual_host<'a>(rc: &'a RouteConfiguration, name: &str) -> &'a VirtualHost {
    rc.virtual_hosts
        .iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| {
            let names: Vec<&str> = rc.virtual_hosts.iter().map(|v| v.name.as_str()).collect();
            panic!("no virtual host {name} in {}: {names:?}", rc.name)
        })
}

pub fn action(r: &Route) -> &RouteAction {
    match &r.action {
        Some(route::Action::Route(a)) => a,
        other => panic!("route {} does not forward: {other:?}", r.name),
    }
}

pub fn typed<M: Message + Name + Default>(any: &Any) -> M {
    assert_eq!(any.type_url, M::type_url());
    M::decode(any.value.as_slice()).unwrap()
}

pub fn filter_config<M: Message + Name + Default>(f: &Filter) -> M {
    match &f.config_type {
        Some(filter::ConfigType::TypedConfig(any)) => typed(any),
        other => panic!("filter {} has no typed config: {other:?}", f.name),
    }
}

/// The HCM of a listener's only (or first) filter chain.
pub fn hcm(l: &Listener) -> HttpConnectionManager {
    filter_config(&l.filter_chains[0].filters[0])
}

pub fn rds_name(h: &HttpConnectionManager) -> &str {
    match &h.route_specifier {
        Some(http_connection_manager::RouteSpecifier::Rds(rds)) => &rds.route_config_name,
        other => panic!("HCM without RDS: {other:?}"),
    }
}

// ---- golden text ----

/// Listeners and routes as text: prost's pretty `Debug`, with every `Any` Strait emits
/// decoded in place, map entries sorted, and fields at their default value (`None`, `[]`,
/// `""`, `false`, `0`, `{}`) left out, so the text is stable and reviewable.
pub fn render(res: &XdsResources) -> String {
    let mut out = String::new();
    for (name, l) in &res.listeners {
        out.push_str(&format!("=== listener {name}\n"));
        out.push_str(&text(&format!("{l:#?}")));
    }
    for (name, r) in &res.routes {
        out.push_str(&format!("=== route {name}\n"));
        out.push_str(&text(&format!("{r:#?}")));
    }
    out
}

/// A message's `Debug` text as the golden files show it (packed configs decoded, maps sorted,
/// default fields left out).
pub fn text(debug: &str) -> String {
    let mut out = String::new();
    for line in sort_maps(&expand_anys(debug)).lines() {
        if !is_default_field(line) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

fn is_default_field(line: &str) -> bool {
    let Some((field, value)) = line.trim().split_once(": ") else {
        return false;
    };
    field
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'#')
        && matches!(value, "None," | "[]," | "\"\"," | "false," | "0," | "{},")
}

fn decode_any(type_url: &str, bytes: &[u8]) -> Option<String> {
    fn show<M: Message + Name + Default + std::fmt::Debug>(
        url: &str,
        bytes: &[u8],
    ) -> Option<String> {
        (url == M::type_url()).then(|| format!("{:#?}", M::decode(bytes).unwrap()))
    }
    show::<HttpConnectionManager>(type_url, bytes)
        .or_else(|| show::<TcpProxy>(type_url, bytes))
        .or_else(|| show::<Router>(type_url, bytes))
        .or_else(|| show::<HttpFault>(type_url, bytes))
        .or_else(|| show::<Cors>(type_url, bytes))
        .or_else(|| show::<CorsPolicy>(type_url, bytes))
        .or_else(|| show::<OriginalDst>(type_url, bytes))
        .or_else(|| show::<TlsInspector>(type_url, bytes))
        .or_else(|| show::<PreviousHostsPredicate>(type_url, bytes))
        .or_else(|| show::<PreviousPrioritiesConfig>(type_url, bytes))
        .or_else(|| show::<DownstreamTlsContext>(type_url, bytes))
        .or_else(|| show::<HttpRbac>(type_url, bytes))
        .or_else(|| show::<JwtAuthentication>(type_url, bytes))
        .or_else(|| show::<NetworkRbac>(type_url, bytes))
        .or_else(|| show::<UriTemplateMatchConfig>(type_url, bytes))
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// Replaces `value: [bytes...]` after a `type_url` line by the decoded message.
fn expand_anys(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        out.push(line.to_string());
        i += 1;
        let Some(url) = line
            .trim()
            .strip_prefix("type_url: \"")
            .and_then(|r| r.strip_suffix("\","))
        else {
            continue;
        };
        let Some(value) = lines.get(i) else { continue };
        if !value.trim().starts_with("value: [") {
            continue;
        }
        let indent = " ".repeat(indent_of(value));
        let mut bytes = Vec::new();
        if value.trim() != "value: []," {
            i += 1;
            while i < lines.len() && lines[i].trim() != "]," {
                bytes.push(lines[i].trim().trim_end_matches(',').parse::<u8>().unwrap());
                i += 1;
            }
        }
        i += 1;
        match decode_any(url, &bytes) {
            Some(decoded) => {
                let decoded = expand_anys(&decoded);
                let mut dl = decoded.lines();
                out.push(format!("{indent}value: {}", dl.next().unwrap_or_default()));
                out.extend(dl.map(|l| format!("{indent}{l}")));
                let last = out.pop().unwrap();
                out.push(format!("{last},"));
            }
            None => out.push(format!(
                "{indent}value: <{} bytes, not decoded>,",
                bytes.len()
            )),
        }
    }
    out.join("\n")
}

/// Sorts the entries of every map block (`name: {` ... `},`): prost uses `HashMap`s, whose
/// `Debug` order changes from run to run.
fn sort_maps(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    sort_lines(&lines).join("\n")
}

fn sort_lines(lines: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        out.push(line.to_string());
        i += 1;
        let t = line.trim();
        if !(t.ends_with(": {") || t == "{") {
            continue;
        }
        let n = indent_of(line);
        let mut entries: Vec<Vec<&str>> = Vec::new();
        while i < lines.len() && indent_of(lines[i]) > n {
            let l = lines[i];
            if (indent_of(l) == n + 4 && l.trim_start().starts_with('"')) || entries.is_empty() {
                entries.push(Vec::new());
            }
            entries.last_mut().unwrap().push(l);
            i += 1;
        }
        let mut rendered: Vec<Vec<String>> = entries.iter().map(|e| sort_lines(e)).collect();
        rendered.sort();
        out.extend(rendered.into_iter().flatten());
    }
    out
}

/// Compares `actual` with `tests/golden/NAME.txt`; `STRAIT_UPDATE_GOLDEN=1` rewrites it.
pub fn check_golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.txt"));
    if std::env::var_os("STRAIT_UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; write it with STRAIT_UPDATE_GOLDEN=1 cargo test -p strait-translate --test golden",
            path.display()
        )
    });
    if expected == actual {
        return;
    }
    let first = expected
        .lines()
        .zip(actual.lines())
        .position(|(e, a)| e != a)
        .unwrap_or_else(|| expected.lines().count().min(actual.lines().count()));
    let context = |text: &str| -> String {
        text.lines()
            .enumerate()
            .skip(first.saturating_sub(3))
            .take(7)
            .map(|(i, l)| format!("{:5} {l}\n", i + 1))
            .collect()
    };
    panic!(
        "{} differs from the translation, first at line {}.\n--- expected\n{}--- actual\n{}\
         If the change is intended, rewrite it with STRAIT_UPDATE_GOLDEN=1 cargo test -p \
         strait-translate --test golden, and review the diff (git diff {}).",
        path.display(),
        first + 1,
        context(&expected),
        context(actual),
        path.display()
    );
}

pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

// ---- TCP ----

/// One of Istio's samples (`tcp-echo/tcp-echo-all-v1.yaml`), its resources.
pub fn istio_sample(path: &str) -> Vec<Resource> {
    let path = testdata().join("istio-samples").join(path);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    yaml(&path.display().to_string(), &bytes)
}

pub const TCP_ECHO: &str = "tcp-echo.default.svc.cluster.local";

/// Bookinfo plus Istio's tcp-echo service (ports 9000 `tcp` and 9001 `tcp-other`) with a v1
/// and a v2 endpoint.
pub fn tcp_echo_registry() -> Registry {
    let mut r = bookinfo_registry();
    let tcp = |name: &str, number| Port {
        name: name.into(),
        number,
        protocol: Protocol::Tcp,
    };
    let svc = k8s_service(
        "tcp-echo",
        "default",
        "10.96.0.40",
        vec![tcp("tcp", 9000), tcp("tcp-other", 9001)],
    );
    for port in [9000, 9001] {
        r.endpoints.insert(
            (svc.hostname.clone(), port),
            vec![
                endpoint("10.1.0.40", port, &[("app", "tcp-echo"), ("version", "v1")]),
                endpoint("10.1.0.41", port, &[("app", "tcp-echo"), ("version", "v2")]),
            ]
            .into(),
        );
    }
    r.services.insert(svc.hostname.clone(), svc);
    r
}

/// Istio's TCP traffic-shifting task: the gateway and subsets of `tcp-echo-all-v1.yaml` with
/// the VirtualService of `tcp-echo-20-v2.yaml` (80 % v1, 20 % v2).
pub fn tcp_echo_80_20() -> Vec<Resource> {
    let mut resources: Vec<Resource> = istio_sample("tcp-echo/tcp-echo-all-v1.yaml")
        .into_iter()
        .filter(|r| r.kind != strait_api::Kind::VirtualService)
        .collect();
    resources.extend(istio_sample("tcp-echo/tcp-echo-20-v2.yaml"));
    resources
}

/// Replaces an RDS reference by the named route configuration, inline.
pub fn inline_routes(f: &mut Filter, res: &XdsResources) {
    let Some(filter::ConfigType::TypedConfig(any)) = &mut f.config_type else {
        return;
    };
    if !any.type_url.ends_with(".HttpConnectionManager") {
        return;
    }
    let mut hcm = HttpConnectionManager::decode(any.value.as_slice()).unwrap();
    if let Some(http_connection_manager::RouteSpecifier::Rds(rds)) = &hcm.route_specifier {
        let rc = res
            .routes
            .get(&rds.route_config_name)
            .unwrap_or_else(|| panic!("RDS names {} but it is missing", rds.route_config_name))
            .clone();
        hcm.route_specifier = Some(http_connection_manager::RouteSpecifier::RouteConfig(rc));
    }
    *any = envoy_types::util::pack_any(hcm);
}
