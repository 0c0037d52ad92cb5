//! TLS at the gateway and TLS origination in the translation: Istio's secure-ingress task
//! (SIMPLE, several hosts by SNI, MUTUAL, with `credentialName` Secrets of the gateway's
//! namespace), `httpsRedirect`, protocol versions and ciphers, ISTIO_MUTUAL servers, terminated
//! TLS servers; DestinationRule SIMPLE and MUTUAL (`credentialName` with and without a
//! `workloadSelector`, `caCertificates`, `subjectAltNames`, `sni`, `insecureSkipVerify`, port
//! level); which Secrets a proxy gets; a golden file of the gateway; and real Envoy accepting
//! all of it (`--mode validate`).

mod support;

use std::path::PathBuf;
use std::process::Command;

use base64::Engine;
use envoy_types::pb::envoy::config::bootstrap::v3::{Bootstrap, bootstrap};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{
    Node, TransportSocket, data_source, transport_socket,
};
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::virtual_host::TlsRequirementType;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CommonTlsContext, DownstreamTlsContext, UpstreamTlsContext, common_tls_context, secret,
    tls_parameters::TlsProtocol,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use prost::Message;
use strait_api::Resource;
use strait_registry::{Registry, VipRange, VipTable};
use strait_translate::translate::translate;
use strait_translate::{ConfigSnapshot, MeshConfig};
use strait_xds_core::{CaptureMode, Proxy, ProxyRole, XdsResources};
use support::*;

const SECURE_INGRESS: &str = "tasks/secure-ingress";
const EGRESS: &str = "tasks/egress-tls-origination";

fn task(dir: &str, file: &str) -> Vec<Resource> {
    istio_sample(&format!("{dir}/{file}"))
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// A Secret with these keys; the values are marked PEM-like text naming the Secret and key, so
/// that a test can tell where each byte came from.
fn secret(namespace: &str, name: &str, secret_type: &str, keys: &[&str]) -> Vec<Resource> {
    let data: Vec<String> = keys
        .iter()
        .map(|k| {
            format!(
                "    {k}: {}\n",
                b64(&format!(
                    "-----BEGIN {name} {k}-----\n-----END {name} {k}-----\n"
                ))
            )
        })
        .collect();
    yaml(
        "secret.yaml",
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {namespace}}}\ntype: {secret_type}\ndata:\n{}",
            data.concat()
        )
        .as_bytes(),
    )
}

fn tls_secret(namespace: &str, name: &str) -> Vec<Resource> {
    secret(
        namespace,
        name,
        "kubernetes.io/tls",
        &["tls.crt", "tls.key"],
    )
}

/// Istio's httpbin and helloworld samples, as a registry.
fn resources_with_samples(mut resources: Vec<Resource>) -> (ConfigSnapshot, Registry) {
    resources.extend(istio_sample("httpbin/httpbin.yaml"));
    resources.extend(istio_sample("helloworld/helloworld.yaml"));
    let config = snapshot(resources);
    let mut vips = VipTable::new("240.240.0.0/16".parse::<VipRange>().unwrap());
    let registry = Registry::build(config.all(), &mut vips, "cluster.local");
    (config, registry)
}

/// Istio's ingress gateway: `istio: ingressgateway` in istio-system.
fn gateway_in_istio_system() -> Proxy {
    let mut p = ingress_gateway();
    p.namespace = "istio-system".into();
    p.id = Proxy::node_id(ProxyRole::Gateway, p.ip, &p.workload, "istio-system");
    p
}

fn tls<M: Message + Default>(socket: &TransportSocket) -> M {
    let Some(transport_socket::ConfigType::TypedConfig(any)) = &socket.config_type else {
        panic!("a transport socket without config")
    };
    assert_eq!(socket.name, "envoy.transport_sockets.tls");
    M::decode(any.value.as_slice()).unwrap()
}

fn listener(res: &XdsResources, port: u16) -> &Listener {
    res.listeners
        .values()
        .find(|l| l.name.ends_with(&format!("_{port}")))
        .unwrap_or_else(|| {
            panic!(
                "no listener on {port}: {:?}",
                res.listeners.keys().collect::<Vec<_>>()
            )
        })
}

fn server_names(c: &FilterChain) -> Vec<String> {
    c.filter_chain_match
        .as_ref()
        .map(|m| m.server_names.clone())
        .unwrap_or_default()
}

fn downstream(c: &FilterChain) -> DownstreamTlsContext {
    tls(c.transport_socket.as_ref().expect("a TLS chain"))
}

fn common(d: &DownstreamTlsContext) -> &CommonTlsContext {
    d.common_tls_context.as_ref().unwrap()
}

fn certificate_names(c: &CommonTlsContext) -> Vec<String> {
    c.tls_certificate_sds_secret_configs
        .iter()
        .map(|s| {
            // SDS over ADS, without waiting forever for a Secret that may not exist.
            let source = s.sds_config.as_ref().unwrap();
            assert!(source.initial_fetch_timeout.is_none(), "{s:?}");
            assert!(
                matches!(
                    source.config_source_specifier,
                    Some(envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier::Ads(_))
                ),
                "{s:?}"
            );
            s.name.clone()
        })
        .collect()
}

fn validation_sds(c: &CommonTlsContext) -> Option<String> {
    match &c.validation_context_type {
        Some(common_tls_context::ValidationContextType::CombinedValidationContext(v)) => v
            .validation_context_sds_secret_config
            .as_ref()
            .map(|s| s.name.clone()),
        _ => None,
    }
}

fn inline_text(d: &Option<envoy_types::pb::envoy::config::core::v3::DataSource>) -> String {
    match d.as_ref().and_then(|d| d.specifier.as_ref()) {
        Some(data_source::Specifier::InlineBytes(b)) => String::from_utf8(b.clone()).unwrap(),
        other => panic!("not inline: {other:?}"),
    }
}

#[test]
fn secure_ingress_simple_single_host() {
    let mut resources = task(SECURE_INGRESS, "01-simple-tls-single-host.yaml");
    resources.extend(tls_secret("istio-system", "httpbin-credential"));
    // The same name in another namespace is not the gateway's.
    resources.extend(tls_secret("default", "httpbin-credential"));
    let (config, registry) = resources_with_samples(resources);
    let res = translate(&config, &registry, &gateway_in_istio_system());
    let l = listener(&res, 443);
    assert!(
        l.listener_filters
            .iter()
            .any(|f| f.name == "envoy.filters.listener.tls_inspector")
    );
    assert_eq!(l.filter_chains.len(), 1);
    let chain = &l.filter_chains[0];
    assert_eq!(server_names(chain), ["httpbin.example.com"]);
    let d = downstream(chain);
    assert_eq!(d.require_client_certificate, None);
    let c = common(&d);
    assert_eq!(c.alpn_protocols, ["h2", "http/1.1"]);
    assert_eq!(certificate_names(c), ["kubernetes://httpbin-credential"]);
    assert!(c.validation_context_type.is_none());
    assert!(
        c.tls_params.is_none(),
        "Envoy's defaults unless the server sets them"
    );
    // The chain's own routes: httpbin.example.com to httpbin:8000.
    let rds = rds_name(&filter_config(&chain.filters[0])).to_string();
    assert_eq!(rds, "https.443.https.mygateway.default");
    let rc = &res.routes[&rds];
    let vh = virtual_host(rc, "httpbin.example.com:443");
    assert_eq!(vh.domains, ["httpbin.example.com", "httpbin.example.com:*"]);
    assert_eq!(
        action(&vh.routes[0]).cluster_specifier,
        Some(
            envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier::Cluster(
                "outbound|8000||httpbin.default.svc.cluster.local".into()
            )
        )
    );
    // Exactly the Secret it names, from istio-system.
    let names: Vec<&String> = res.secrets.keys().collect();
    assert_eq!(names, ["kubernetes://httpbin-credential"]);
    let Some(secret::Type::TlsCertificate(t)) =
        &res.secrets["kubernetes://httpbin-credential"].r#type
    else {
        panic!("not a certificate")
    };
    assert!(inline_text(&t.certificate_chain).contains("httpbin-credential tls.crt"));
    assert!(inline_text(&t.private_key).contains("httpbin-credential tls.key"));
    // A proxy in default (which has a Secret of that name) gets nothing: nothing of its names it.
    let sidecar = productpage(CaptureMode::Iptables);
    assert!(translate(&config, &registry, &sidecar).secrets.is_empty());
}

#[test]
fn secure_ingress_two_hosts_by_sni() {
    let mut resources = task(SECURE_INGRESS, "01-simple-tls-single-host.yaml")
        .into_iter()
        .filter(|r| r.kind != strait_api::Kind::Gateway)
        .collect::<Vec<_>>();
    resources.extend(task(SECURE_INGRESS, "02-simple-tls-multiple-hosts.yaml"));
    resources.extend(tls_secret("istio-system", "httpbin-credential"));
    resources.extend(tls_secret("istio-system", "helloworld-credential"));
    let (config, registry) = resources_with_samples(resources);
    let res = translate(&config, &registry, &gateway_in_istio_system());
    let l = listener(&res, 443);
    let chains: Vec<(Vec<String>, Vec<String>, String)> = l
        .filter_chains
        .iter()
        .map(|c| {
            (
                server_names(c),
                certificate_names(common(&downstream(c))),
                rds_name(&filter_config(&c.filters[0])).to_string(),
            )
        })
        .collect();
    assert_eq!(
        chains,
        [
            (
                vec!["httpbin.example.com".to_string()],
                vec!["kubernetes://httpbin-credential".to_string()],
                "https.443.https-httpbin.mygateway.default".to_string()
            ),
            (
                vec!["helloworld.example.com".to_string()],
                vec!["kubernetes://helloworld-credential".to_string()],
                "https.443.https-helloworld.mygateway.default".to_string()
            ),
        ]
    );
    // Each server's routes hold its own host only.
    let hello = &res.routes["https.443.https-helloworld.mygateway.default"];
    assert_eq!(hello.virtual_hosts.len(), 1);
    assert_eq!(hello.virtual_hosts[0].name, "helloworld.example.com:443");
    assert_eq!(res.secrets.len(), 2);
}

#[test]
fn secure_ingress_mutual_with_istios_key_layouts() {
    let mut base = task(SECURE_INGRESS, "01-simple-tls-single-host.yaml")
        .into_iter()
        .filter(|r| r.kind != strait_api::Kind::Gateway)
        .collect::<Vec<_>>();
    base.extend(task(SECURE_INGRESS, "03-mutual-tls.yaml"));
    let gw = gateway_in_istio_system();
    let translated = |secrets: Vec<Resource>| {
        let mut r = base.clone();
        r.extend(secrets);
        let (config, registry) = resources_with_samples(r);
        translate(&config, &registry, &gw)
    };
    // The task's generic Secret: tls.key, tls.crt and ca.crt.
    let res = translated(secret(
        "istio-system",
        "httpbin-credential",
        "Opaque",
        &["tls.key", "tls.crt", "ca.crt"],
    ));
    let d = downstream(&listener(&res, 443).filter_chains[0]);
    assert_eq!(d.require_client_certificate.map(|b| b.value), Some(true));
    assert_eq!(
        certificate_names(common(&d)),
        ["kubernetes://httpbin-credential"]
    );
    assert_eq!(
        validation_sds(common(&d)).as_deref(),
        Some("kubernetes://httpbin-credential-cacert")
    );
    let ca = |res: &XdsResources| {
        let Some(secret::Type::ValidationContext(v)) =
            &res.secrets["kubernetes://httpbin-credential-cacert"].r#type
        else {
            panic!("not a CA")
        };
        inline_text(&v.trusted_ca)
    };
    assert!(ca(&res).contains("httpbin-credential ca.crt"));
    // Istio's generic layout: cert, key, cacert.
    let res = translated(secret(
        "istio-system",
        "httpbin-credential",
        "Opaque",
        &["cert", "key", "cacert"],
    ));
    assert!(ca(&res).contains("httpbin-credential cacert"));
    let Some(secret::Type::TlsCertificate(t)) =
        &res.secrets["kubernetes://httpbin-credential"].r#type
    else {
        panic!()
    };
    assert!(inline_text(&t.private_key).contains("httpbin-credential key"));
    // A separate NAME-cacert Secret wins over the CA in NAME.
    let mut both = secret(
        "istio-system",
        "httpbin-credential",
        "Opaque",
        &["cert", "key", "cacert"],
    );
    both.extend(secret(
        "istio-system",
        "httpbin-credential-cacert",
        "Opaque",
        &["cacert"],
    ));
    assert!(ca(&translated(both)).contains("httpbin-credential-cacert cacert"));
    // No CA anywhere: the CA resource is left out (the chain then fails closed), the
    // certificate is still sent.
    let res = translated(tls_secret("istio-system", "httpbin-credential"));
    let names: Vec<&String> = res.secrets.keys().collect();
    assert_eq!(names, ["kubernetes://httpbin-credential"]);
    // No Secret at all: the chain stays (as in Istio), and no Secret is sent.
    let res = translated(Vec::new());
    assert!(res.secrets.is_empty());
    assert_eq!(listener(&res, 443).filter_chains.len(), 1);
}

fn gateway_yaml(servers: &str) -> Vec<Resource> {
    yaml(
        "gw.yaml",
        format!(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: istio-system}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n{servers}"
        )
        .as_bytes(),
    )
}

#[test]
fn https_redirect_marks_every_host_of_the_server() {
    let mut resources = gateway_yaml(
        "  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: ['httpbin.example.com', 'bare.example.com']\n    tls: {httpsRedirect: true}\n",
    );
    resources.extend(yaml(
        "vs.yaml",
        b"apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: httpbin, namespace: default}\nspec:\n  hosts: [httpbin.example.com]\n  gateways: [istio-system/gw]\n  http:\n  - route: [{destination: {host: httpbin, port: {number: 8000}}}]\n",
    ));
    let (config, registry) = resources_with_samples(resources);
    let res = translate(&config, &registry, &gateway_in_istio_system());
    let rc = &res.routes["http.80"];
    let redirect: Vec<(String, bool, usize)> = rc
        .virtual_hosts
        .iter()
        .map(|v| {
            (
                v.name.clone(),
                v.require_tls == TlsRequirementType::All as i32,
                v.routes.len(),
            )
        })
        .collect();
    // The host no VirtualService serves is still redirected.
    assert_eq!(
        redirect,
        [
            ("bare.example.com:80".to_string(), true, 0),
            ("httpbin.example.com:80".to_string(), true, 1)
        ]
    );
}

#[test]
fn versions_ciphers_istio_mutual_and_terminated_tls_servers() {
    let mut resources = gateway_yaml(concat!(
        "  - port: {number: 443, name: https, protocol: HTTPS}\n",
        "    hosts: ['*']\n",
        "    tls: {mode: SIMPLE, credentialName: cred, minProtocolVersion: TLSV1_3, maxProtocolVersion: TLSV1_3, cipherSuites: [ECDHE-RSA-AES256-GCM-SHA384]}\n",
        "  - port: {number: 15443, name: mtls, protocol: HTTPS}\n",
        "    hosts: ['*.mesh.example.com']\n",
        "    tls: {mode: ISTIO_MUTUAL, subjectAltNames: ['spiffe://cluster.local/ns/foo/sa/client']}\n",
        "  - port: {number: 9443, name: tls-files, protocol: TLS}\n",
        "    hosts: ['db.example.com']\n",
        "    tls: {mode: MUTUAL, serverCertificate: /etc/certs/db.pem, privateKey: /etc/certs/db.key, caCertificates: /etc/certs/ca.pem, subjectAltNames: [client.example.com]}\n",
    ));
    resources.extend(tls_secret("istio-system", "cred"));
    resources.extend(yaml(
        "vs.yaml",
        b"apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: db, namespace: istio-system}\nspec:\n  hosts: [db.example.com]\n  gateways: [gw]\n  tcp:\n  - route: [{destination: {host: httpbin.default.svc.cluster.local, port: {number: 8000}}}]\n",
    ));
    let (config, registry) = resources_with_samples(resources);
    let mut gw = gateway_in_istio_system();
    let plain = translate(&config, &registry, &gw);
    // ISTIO_MUTUAL needs the gateway's own identity: without one the server is left out.
    assert!(!plain.listeners.values().any(|l| l.name.ends_with("_15443")
        && l.filter_chains.iter().any(|c| c.transport_socket.is_some())));
    gw.mtls = true;
    let res = translate(&config, &registry, &gw);

    let https = downstream(&listener(&res, 443).filter_chains[0]);
    assert!(
        server_names(&listener(&res, 443).filter_chains[0]).is_empty(),
        "`*`: any SNI"
    );
    let p = common(&https).tls_params.as_ref().unwrap();
    assert_eq!(p.tls_minimum_protocol_version, TlsProtocol::TlSv13 as i32);
    assert_eq!(p.tls_maximum_protocol_version, TlsProtocol::TlSv13 as i32);
    assert_eq!(p.cipher_suites, ["ECDHE-RSA-AES256-GCM-SHA384"]);

    let mesh_chain = &listener(&res, 15443).filter_chains[0];
    assert_eq!(server_names(mesh_chain), ["*.mesh.example.com"]);
    let mesh = downstream(mesh_chain);
    assert_eq!(mesh.require_client_certificate.map(|b| b.value), Some(true));
    let c = common(&mesh);
    assert_eq!(c.tls_certificate_sds_secret_configs[0].name, "default");
    assert_eq!(validation_sds(c).as_deref(), Some("ROOTCA"));

    let db_chain = &listener(&res, 9443).filter_chains[0];
    let db = downstream(db_chain);
    assert_eq!(db.require_client_certificate.map(|b| b.value), Some(true));
    let c = common(&db);
    assert!(c.alpn_protocols.is_empty(), "TLS, not HTTPS: no ALPN");
    assert!(format!("{:?}", c.tls_certificates).contains("/etc/certs/db.pem"));
    let Some(common_tls_context::ValidationContextType::ValidationContext(v)) =
        &c.validation_context_type
    else {
        panic!("no validation context")
    };
    assert!(format!("{:?}", v.trusted_ca).contains("/etc/certs/ca.pem"));
    assert_eq!(v.match_typed_subject_alt_names.len(), 1);
    let tp: TcpProxy = filter_config(&db_chain.filters[0]);
    assert_eq!(
        tp.cluster_specifier,
        Some(tcp_proxy::ClusterSpecifier::Cluster(
            "outbound|8000||httpbin.default.svc.cluster.local".into()
        ))
    );
    assert_eq!(
        res.secrets.keys().collect::<Vec<_>>(),
        ["kubernetes://cred"],
        "ISTIO_MUTUAL and file certificates need no Secret"
    );
}

/// The cluster of `host` on `port` for `proxy`.
fn cluster_tls(
    res: &XdsResources,
    port: u16,
    host: &str,
) -> (UpstreamTlsContext, Option<(bool, bool)>) {
    let c: &Cluster = res
        .clusters
        .get(&format!("outbound|{port}||{host}"))
        .unwrap_or_else(|| panic!("no cluster for {host}:{port}"));
    let ctx = tls(c.transport_socket.as_ref().expect("TLS origination"));
    let auto = c
        .typed_extension_protocol_options
        .get("envoy.extensions.upstreams.http.v3.HttpProtocolOptions")
        .and_then(|any| HttpProtocolOptions::decode(any.value.as_slice()).ok())
        .and_then(|o| o.upstream_http_protocol_options)
        .map(|o| (o.auto_sni, o.auto_san_validation));
    (ctx, auto)
}

fn trusted_ca_file(c: &CommonTlsContext) -> Option<String> {
    match &c.validation_context_type {
        Some(common_tls_context::ValidationContextType::ValidationContext(v)) => {
            match v.trusted_ca.as_ref()?.specifier.as_ref()? {
                data_source::Specifier::Filename(f) => Some(f.clone()),
                _ => None,
            }
        }
        _ => None,
    }
}

fn curl_sidecar() -> Proxy {
    let mut p = proxy(
        ProxyRole::Sidecar,
        "10.1.0.30",
        "curl",
        &[("app", "curl")],
        CaptureMode::Iptables,
    );
    p.mtls = true;
    p
}

fn egress(resources: Vec<Resource>, bundle: &str) -> (ConfigSnapshot, Registry) {
    let config = ConfigSnapshot::new(
        1,
        MeshConfig {
            system_ca_bundle: bundle.into(),
            ..MeshConfig::default()
        },
        resources,
    );
    let mut vips = VipTable::new("240.240.0.0/16".parse::<VipRange>().unwrap());
    let registry = Registry::build(config.all(), &mut vips, "cluster.local");
    (config, registry)
}

#[test]
fn egress_simple_origination_verifies_against_the_system_bundle() {
    let (config, registry) = egress(
        task(EGRESS, "02-tls-origination-edition-cnn.yaml"),
        "/tmp/test-bundle.pem",
    );
    let res = translate(&config, &registry, &curl_sidecar());
    let (ctx, auto) = cluster_tls(&res, 80, "edition.cnn.com");
    let c = ctx.common_tls_context.as_ref().unwrap();
    assert!(c.tls_certificates.is_empty() && c.tls_certificate_sds_secret_configs.is_empty());
    assert_eq!(trusted_ca_file(c).as_deref(), Some("/tmp/test-bundle.pem"));
    assert_eq!(ctx.sni, "edition.cnn.com");
    // No sni in the rule: SNI from the request's host, and the certificate checked against it.
    assert_eq!(auto, Some((true, true)));
    // Port 443 has no TLS setting: the app's own TLS goes through untouched.
    assert!(
        res.clusters["outbound|443||edition.cnn.com"]
            .transport_socket
            .is_none()
    );
    assert!(res.secrets.is_empty());
}

fn dr(tls: &str, selector: bool) -> Vec<Resource> {
    let selector = if selector {
        "  workloadSelector: {matchLabels: {app: curl}}\n"
    } else {
        ""
    };
    let mut r = yaml(
        "se.yaml",
        b"apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: ext, namespace: default}\nspec:\n  hosts: [api.example.com]\n  ports:\n  - {number: 80, name: http, protocol: HTTP, targetPort: 443}\n  - {number: 5432, name: tcp, protocol: TCP}\n  resolution: DNS\n",
    );
    r.extend(yaml(
        "dr.yaml",
        format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: ext, namespace: default}}\nspec:\n  host: api.example.com\n{selector}  trafficPolicy:\n    portLevelSettings:\n    - port: {{number: 80}}\n      tls: {tls}\n    - port: {{number: 5432}}\n      tls: {tls}\n"
        )
        .as_bytes(),
    ));
    r
}

#[test]
fn destination_rule_tls_settings() {
    let run = |tls: &str, selector: bool, extra: Vec<Resource>| {
        let mut r = dr(tls, selector);
        r.extend(extra);
        let (config, registry) = egress(r, "/etc/ssl/certs/ca-certificates.crt");
        translate(&config, &registry, &curl_sidecar())
    };
    // caCertificates, subjectAltNames and sni: no auto SNI nor auto SAN check.
    let res = run(
        "{mode: SIMPLE, caCertificates: /etc/ca/api.pem, subjectAltNames: [api.example.com], sni: api.internal}",
        false,
        Vec::new(),
    );
    let (ctx, auto) = cluster_tls(&res, 80, "api.example.com");
    let c = ctx.common_tls_context.as_ref().unwrap();
    assert_eq!(trusted_ca_file(c).as_deref(), Some("/etc/ca/api.pem"));
    assert_eq!(ctx.sni, "api.internal");
    assert_eq!(auto, None);
    let Some(common_tls_context::ValidationContextType::ValidationContext(v)) =
        &c.validation_context_type
    else {
        panic!()
    };
    assert_eq!(v.match_typed_subject_alt_names.len(), 1);
    // A TCP port: the host as SNI, no HTTP options.
    let (ctx, auto) = cluster_tls(&res, 5432, "api.example.com");
    assert_eq!(ctx.sni, "api.internal");
    assert_eq!(auto, None);

    // insecureSkipVerify: nothing verified, no SAN check.
    let res = run(
        "{mode: SIMPLE, insecureSkipVerify: true}",
        false,
        Vec::new(),
    );
    let (ctx, auto) = cluster_tls(&res, 80, "api.example.com");
    assert!(
        ctx.common_tls_context
            .unwrap()
            .validation_context_type
            .is_none()
    );
    assert_eq!(auto, Some((true, false)));

    // MUTUAL with files.
    let res = run(
        "{mode: MUTUAL, clientCertificate: /etc/c/cert.pem, privateKey: /etc/c/key.pem}",
        false,
        Vec::new(),
    );
    let (ctx, _) = cluster_tls(&res, 80, "api.example.com");
    assert!(
        format!("{:?}", ctx.common_tls_context.unwrap().tls_certificates)
            .contains("/etc/c/cert.pem")
    );

    // MUTUAL with credentialName and a workloadSelector: the Secret of the sidecar's namespace.
    let cred = secret(
        "default",
        "client-credential",
        "Opaque",
        &["tls.key", "tls.crt", "ca.crt"],
    );
    let res = run(
        "{mode: MUTUAL, credentialName: client-credential}",
        true,
        cred.clone(),
    );
    let (ctx, _) = cluster_tls(&res, 80, "api.example.com");
    let c = ctx.common_tls_context.as_ref().unwrap();
    assert_eq!(certificate_names(c), ["kubernetes://client-credential"]);
    assert_eq!(
        validation_sds(c).as_deref(),
        Some("kubernetes://client-credential-cacert")
    );
    assert_eq!(
        res.secrets.keys().collect::<Vec<_>>(),
        [
            "kubernetes://client-credential",
            "kubernetes://client-credential-cacert"
        ]
    );
    // SIMPLE with credentialName: only the CA.
    let res = run(
        "{mode: SIMPLE, credentialName: client-credential}",
        true,
        cred.clone(),
    );
    let (ctx, _) = cluster_tls(&res, 80, "api.example.com");
    let c = ctx.common_tls_context.as_ref().unwrap();
    assert!(c.tls_certificate_sds_secret_configs.is_empty());
    assert_eq!(
        res.secrets.keys().collect::<Vec<_>>(),
        ["kubernetes://client-credential-cacert"]
    );
    // Without a workloadSelector, a sidecar gets no Secret (Istio's rule), but still TLS
    // (verified by the system bundle, no client certificate), never plaintext.
    let res = run(
        "{mode: MUTUAL, credentialName: client-credential}",
        false,
        cred.clone(),
    );
    assert!(res.secrets.is_empty());
    let (ctx, _) = cluster_tls(&res, 80, "api.example.com");
    let c = ctx.common_tls_context.as_ref().unwrap();
    assert!(c.tls_certificate_sds_secret_configs.is_empty() && c.tls_certificates.is_empty());
    assert_eq!(
        trusted_ca_file(c).as_deref(),
        Some("/etc/ssl/certs/ca-certificates.crt")
    );
    // A gateway honours credentialName without a selector; its own namespace's Secret.
    let mut r = dr("{mode: MUTUAL, credentialName: client-credential}", false);
    r.extend(cred);
    for doc in r.iter_mut() {
        doc.metadata.namespace = Some("istio-system".into());
    }
    let (config, registry) = egress(r, "/etc/ssl/certs/ca-certificates.crt");
    let res = translate(&config, &registry, &gateway_in_istio_system());
    assert_eq!(res.secrets.len(), 2);
}

#[test]
fn secure_ingress_gateway_golden() {
    let mut resources = task(SECURE_INGRESS, "01-simple-tls-single-host.yaml")
        .into_iter()
        .filter(|r| r.kind != strait_api::Kind::Gateway)
        .collect::<Vec<_>>();
    resources.extend(task(SECURE_INGRESS, "02-simple-tls-multiple-hosts.yaml"));
    resources.extend(gateway_yaml(
        "  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: ['*.example.com']\n    tls: {httpsRedirect: true}\n  - port: {number: 8443, name: mutual, protocol: HTTPS}\n    hosts: ['httpbin.example.com']\n    tls: {mode: MUTUAL, credentialName: httpbin-credential, minProtocolVersion: TLSV1_2}\n",
    ));
    let (config, registry) = resources_with_samples(resources);
    let mut res = translate(&config, &registry, &gateway_in_istio_system());
    res.clusters.clear();
    res.endpoints.clear();
    check_golden("secure-ingress-gateway", &render(&res));
}

fn envoy() -> PathBuf {
    if let Some(p) = std::env::var_os("ENVOY_BIN") {
        return PathBuf::from(p);
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../.venv/lib/python3.11/site-packages/envoy/_bin/envoy");
    assert!(
        p.exists(),
        "Envoy is missing: set ENVOY_BIN, or install it with `bash scripts/install-envoy.sh`"
    );
    p
}

/// `envoy --mode validate` over the proxy's listeners (routes inlined), clusters (endpoints
/// inlined) and Secrets (as static secrets), with ADS configured for the SDS references.
fn envoy_accepts(name: &str, res: &XdsResources, proxy: &Proxy) {
    let mut listeners: Vec<Listener> = res.listeners.values().cloned().collect();
    for l in &mut listeners {
        for chain in l.filter_chains.iter_mut() {
            for f in &mut chain.filters {
                inline_routes(f, res);
            }
        }
    }
    let clusters: Vec<Cluster> = res
        .clusters
        .values()
        .cloned()
        .map(|mut c| {
            if c.eds_cluster_config.is_some() {
                c.eds_cluster_config = None;
                c.cluster_discovery_type = Some(
                    envoy_types::pb::envoy::config::cluster::v3::cluster::ClusterDiscoveryType::Type(
                        envoy_types::pb::envoy::config::cluster::v3::cluster::DiscoveryType::Static as i32,
                    ),
                );
                c.load_assignment = res.endpoints.get(&c.name).cloned();
            }
            c
        })
        .collect();
    let mut boot: Bootstrap = serde_yaml_bootstrap();
    boot.node = Some(Node {
        id: proxy.id.clone(),
        cluster: "strait".into(),
        ..Default::default()
    });
    let statics = boot.static_resources.get_or_insert_with(Default::default);
    statics.listeners = listeners;
    statics.clusters.extend(clusters);
    statics.secrets = res.secrets.values().cloned().collect();
    let path = std::env::temp_dir().join(format!(
        "strait-gateway-tls-{name}-{}.pb",
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
    assert!(
        out.status.success(),
        "Envoy refuses the {name} TLS config:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// ADS to a static `xds-grpc` cluster and the node agent's `sds-grpc`, as the bootstraps have
/// them.
fn serde_yaml_bootstrap() -> Bootstrap {
    use envoy_types::pb::envoy::config::core::v3::{
        ApiConfigSource, ApiVersion, GrpcService, api_config_source::ApiType, grpc_service,
    };
    let grpc_cluster = |name: &str, port: u32| -> Cluster {
        use envoy_types::pb::envoy::config::core::v3::{
            Address, SocketAddress, address, socket_address,
        };
        use envoy_types::pb::envoy::config::endpoint::v3::{
            ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
        };
        use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
            ExplicitHttpConfig, UpstreamProtocolOptions, explicit_http_config::ProtocolConfig,
        };
        Cluster {
            name: name.into(),
            cluster_discovery_type: Some(
                envoy_types::pb::envoy::config::cluster::v3::cluster::ClusterDiscoveryType::Type(
                    envoy_types::pb::envoy::config::cluster::v3::cluster::DiscoveryType::Static
                        as i32,
                ),
            ),
            typed_extension_protocol_options: [(
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_string(),
                envoy_types::util::pack_any(HttpProtocolOptions {
                    upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
                        ExplicitHttpConfig {
                            protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(
                                Default::default(),
                            )),
                        },
                    )),
                    ..Default::default()
                }),
            )]
            .into(),
            load_assignment: Some(ClusterLoadAssignment {
                cluster_name: name.into(),
                endpoints: vec![LocalityLbEndpoints {
                    lb_endpoints: vec![LbEndpoint {
                        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                            address: Some(Address {
                                address: Some(address::Address::SocketAddress(SocketAddress {
                                    address: "127.0.0.1".into(),
                                    port_specifier: Some(socket_address::PortSpecifier::PortValue(
                                        port,
                                    )),
                                    ..Default::default()
                                })),
                            }),
                            ..Default::default()
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    };
    Bootstrap {
        static_resources: Some(bootstrap::StaticResources {
            clusters: vec![
                grpc_cluster("xds-grpc", 15010),
                grpc_cluster("sds-grpc", 15019),
            ],
            ..Default::default()
        }),
        dynamic_resources: Some(bootstrap::DynamicResources {
            ads_config: Some(ApiConfigSource {
                api_type: ApiType::Grpc as i32,
                transport_api_version: ApiVersion::V3 as i32,
                set_node_on_first_message_only: true,
                grpc_services: vec![GrpcService {
                    target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
                        grpc_service::EnvoyGrpc {
                            cluster_name: "xds-grpc".into(),
                            ..Default::default()
                        },
                    )),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn envoy_accepts_gateway_tls_and_origination() {
    let mut resources = task(SECURE_INGRESS, "01-simple-tls-single-host.yaml")
        .into_iter()
        .filter(|r| r.kind != strait_api::Kind::Gateway)
        .collect::<Vec<_>>();
    resources.extend(task(SECURE_INGRESS, "02-simple-tls-multiple-hosts.yaml"));
    resources.extend(gateway_yaml(concat!(
        "  - port: {number: 80, name: http, protocol: HTTP}\n",
        "    hosts: ['*.example.com']\n",
        "    tls: {httpsRedirect: true}\n",
        "  - port: {number: 8443, name: mutual, protocol: HTTPS}\n",
        "    hosts: ['httpbin.example.com']\n",
        "    tls: {mode: MUTUAL, credentialName: mutual-cred, minProtocolVersion: TLSV1_2, maxProtocolVersion: TLSV1_3, cipherSuites: [ECDHE-RSA-AES128-GCM-SHA256], subjectAltNames: [client.example.com]}\n",
        "  - port: {number: 15443, name: mtls, protocol: HTTPS}\n",
        "    hosts: ['*']\n",
        "    tls: {mode: ISTIO_MUTUAL}\n",
        "  - port: {number: 9443, name: tls, protocol: TLS}\n",
        "    hosts: ['db.example.com']\n",
        "    tls: {mode: OPTIONAL_MUTUAL, credentialName: db-cred}\n",
        "  - port: {number: 9443, name: passthrough, protocol: TLS}\n",
        "    hosts: ['pass.example.com']\n",
        "    tls: {mode: PASSTHROUGH}\n",
    )));
    for name in ["httpbin-credential", "helloworld-credential", "db-cred"] {
        resources.extend(tls_secret("istio-system", name));
    }
    resources.extend(secret(
        "istio-system",
        "mutual-cred",
        "Opaque",
        &["cert", "key", "cacert"],
    ));
    resources.extend(task(EGRESS, "02-tls-origination-edition-cnn.yaml"));
    let (config, registry) = resources_with_samples(resources);
    let mut gw = gateway_in_istio_system();
    gw.mtls = true;
    let res = translate(&config, &registry, &gw);
    assert!(res.secrets.len() >= 5, "{:?}", res.secrets.keys());
    envoy_accepts("gateway", &res, &gw);

    let mut egress_resources = dr(
        "{mode: MUTUAL, credentialName: client-credential, sni: api.example.com, subjectAltNames: [api.example.com, 10.0.0.1]}",
        true,
    );
    egress_resources.extend(secret(
        "default",
        "client-credential",
        "Opaque",
        &["tls.key", "tls.crt", "ca.crt"],
    ));
    egress_resources.extend(task(EGRESS, "02-tls-origination-edition-cnn.yaml"));
    let (config, registry) = egress(egress_resources, "/etc/ssl/certs/ca-certificates.crt");
    let curl = curl_sidecar();
    let res = translate(&config, &registry, &curl);
    assert_eq!(res.secrets.len(), 2);
    envoy_accepts("egress", &res, &curl);
}
