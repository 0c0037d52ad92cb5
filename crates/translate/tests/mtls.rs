//! Mutual TLS in the translation: auto mTLS on the client side (transport socket matches by the
//! endpoints' tlsMode, SNI, ALPN, the server's SPIFFE ids), PeerAuthentication on the server
//! side (STRICT, PERMISSIVE, DISABLE, inheritance, port level, the oldest policy winning),
//! DestinationRule TLS modes, and real Envoy accepting the result (`--mode validate`).

mod support;

use std::path::PathBuf;
use std::process::Command;

use envoy_types::pb::envoy::config::bootstrap::v3::{Bootstrap, bootstrap};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{Node, TransportSocket, transport_socket};
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    DownstreamTlsContext, UpstreamTlsContext, common_tls_context,
};
use prost::Message;
use strait_api::Resource;
use strait_registry::Registry;
use strait_translate::ConfigSnapshot;
use strait_translate::translate::translate;
use strait_xds_core::{CaptureMode, Proxy, ProxyRole, XdsResources};
use support::*;

const REVIEWS: &str = "reviews.default.svc.cluster.local";

/// Bookinfo where every workload has a sidecar (tlsMode istio) except ratings, with service
/// accounts of their own.
fn registry() -> Registry {
    let mut r = bookinfo_registry();
    for eps in r.endpoints.values_mut() {
        let eps = std::sync::Arc::make_mut(eps);
        for e in eps.iter_mut() {
            let app = e.labels["app"].clone();
            e.service_account = format!("bookinfo-{app}");
            if app != "ratings" {
                e.labels
                    .insert("security.istio.io/tlsMode".into(), "istio".into());
            }
        }
    }
    r
}

fn with_identity(mut p: Proxy) -> Proxy {
    p.mtls = true;
    p
}

fn productpage_mtls(capture: CaptureMode) -> Proxy {
    with_identity(productpage(capture))
}

fn reviews_v1() -> Proxy {
    with_identity(proxy(
        ProxyRole::Sidecar,
        "10.1.0.12",
        "reviews-v1",
        &[
            ("app", "reviews"),
            ("version", "v1"),
            ("security.istio.io/tlsMode", "istio"),
        ],
        CaptureMode::Iptables,
    ))
}

fn pa(yaml: &str) -> Vec<Resource> {
    support::yaml("pa.yaml", yaml.as_bytes())
}

fn tls<M: Message + Default>(socket: &TransportSocket) -> M {
    let Some(transport_socket::ConfigType::TypedConfig(any)) = &socket.config_type else {
        panic!("a transport socket without config")
    };
    assert_eq!(socket.name, "envoy.transport_sockets.tls");
    M::decode(any.value.as_slice()).unwrap()
}

fn cluster<'a>(res: &'a XdsResources, name: &str) -> &'a Cluster {
    res.clusters
        .get(name)
        .unwrap_or_else(|| panic!("no cluster {name}"))
}

fn sans(ctx: &UpstreamTlsContext) -> Vec<String> {
    let Some(common_tls_context::ValidationContextType::CombinedValidationContext(c)) = ctx
        .common_tls_context
        .as_ref()
        .and_then(|c| c.validation_context_type.clone())
    else {
        panic!("no combined validation context")
    };
    assert_eq!(
        c.validation_context_sds_secret_config
            .as_ref()
            .unwrap()
            .name,
        "ROOTCA"
    );
    c.default_validation_context
        .unwrap()
        .match_typed_subject_alt_names
        .iter()
        .map(|m| match m.matcher.as_ref().unwrap().match_pattern.as_ref().unwrap() {
            envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern::Exact(s) => s.clone(),
            other => panic!("{other:?}"),
        })
        .collect()
}

#[test]
fn auto_mtls_sends_mtls_to_endpoints_with_sidecars_and_plaintext_to_the_others() {
    let config = snapshot(bookinfo_sample("destination-rule-all.yaml"));
    let reg = registry();
    let res = translate(&config, &reg, &productpage_mtls(CaptureMode::Iptables));
    let c = cluster(&res, &format!("outbound|9080|v1|{REVIEWS}"));
    assert!(c.transport_socket.is_none());
    let names: Vec<&str> = c
        .transport_socket_matches
        .iter()
        .map(|m| m.name.as_str())
        .collect();
    assert_eq!(names, ["tlsMode-istio", "tlsMode-disabled"]);
    let ctx: UpstreamTlsContext = tls(c.transport_socket_matches[0]
        .transport_socket
        .as_ref()
        .unwrap());
    assert_eq!(ctx.sni, format!("outbound_.9080_.v1_.{REVIEWS}"));
    let common = ctx.common_tls_context.as_ref().unwrap();
    assert_eq!(
        common.alpn_protocols,
        ["istio-http/1.1", "istio", "http/1.1"]
    );
    assert_eq!(common.tls_certificate_sds_secret_configs[0].name, "default");
    assert_eq!(
        sans(&ctx),
        ["spiffe://cluster.local/ns/default/sa/bookinfo-reviews"]
    );
    assert_eq!(
        c.transport_socket_matches[1]
            .transport_socket
            .as_ref()
            .unwrap()
            .name,
        "envoy.transport_sockets.raw_buffer"
    );
    // Endpoints with a sidecar carry the match; ratings (no sidecar) does not.
    let tls_mode = |cla: &str| -> Vec<bool> {
        res.endpoints[cla]
            .endpoints
            .iter()
            .flat_map(|l| &l.lb_endpoints)
            .map(|e| {
                e.metadata.as_ref().is_some_and(|m| {
                    m.filter_metadata
                        .contains_key("envoy.transport_socket_match")
                })
            })
            .collect()
    };
    assert_eq!(
        tls_mode(&format!("outbound|9080||{REVIEWS}")),
        [true, true, true]
    );
    assert_eq!(
        tls_mode("outbound|9080||ratings.default.svc.cluster.local"),
        [false]
    );

    // Without an identity, the same proxy gets none of it.
    let plain = translate(&config, &reg, &productpage(CaptureMode::Iptables));
    let c = cluster(&plain, &format!("outbound|9080|v1|{REVIEWS}"));
    assert!(c.transport_socket.is_none() && c.transport_socket_matches.is_empty());
}

fn inbound_chains(res: &XdsResources) -> Vec<&FilterChain> {
    let l: &Listener = &res.listeners["virtualInbound"];
    l.filter_chains
        .iter()
        .filter(|c| {
            c.filter_chain_match
                .as_ref()
                .and_then(|m| m.destination_port.as_ref())
                .is_some_and(|p| p.value == 9080)
        })
        .collect()
}

fn summary(chains: &[&FilterChain]) -> Vec<(String, Vec<String>, &'static str)> {
    chains
        .iter()
        .map(|c| {
            let m = c.filter_chain_match.clone().unwrap_or_default();
            let what = if let Some(s) = &c.transport_socket {
                let ctx: DownstreamTlsContext = tls(s);
                assert_eq!(ctx.require_client_certificate.map(|b| b.value), Some(true));
                "mtls"
            } else {
                let filter = &c.filters[0];
                if filter.name == "envoy.filters.network.tcp_proxy" {
                    let Some(envoy_types::pb::envoy::config::listener::v3::filter::ConfigType::TypedConfig(any)) = &filter.config_type else { panic!() };
                    let tp = TcpProxy::decode(any.value.as_slice()).unwrap();
                    match tp.cluster_specifier {
                        Some(tcp_proxy::ClusterSpecifier::Cluster(c)) if c == "BlackHoleCluster" => "refused",
                        _ => "plaintext",
                    }
                } else {
                    "plaintext"
                }
            };
            (m.transport_protocol, m.application_protocols, what)
        })
        .collect()
}

fn alpns() -> Vec<String> {
    [
        "istio",
        "istio-peer-exchange",
        "istio-http/1.0",
        "istio-http/1.1",
        "istio-h2",
    ]
    .map(String::from)
    .to_vec()
}

fn inbound_with(resources: Vec<Resource>) -> Vec<(String, Vec<String>, &'static str)> {
    let config = snapshot(resources);
    let res = translate(&config, &registry(), &reviews_v1());
    assert!(
        res.listeners["virtualInbound"]
            .listener_filters
            .iter()
            .any(|f| f.name == "envoy.filters.listener.tls_inspector"),
        "virtualInbound needs tls_inspector to tell TLS from plaintext"
    );
    summary(&inbound_chains(&res))
}

#[test]
fn peer_authentication_decides_the_inbound_chains() {
    // No policy: PERMISSIVE.
    assert_eq!(
        inbound_with(Vec::new()),
        [
            ("tls".to_string(), alpns(), "mtls"),
            ("raw_buffer".to_string(), vec![], "plaintext")
        ]
    );
    let strict_mesh = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec:\n  mtls: {mode: STRICT}\n";
    assert_eq!(
        inbound_with(pa(strict_mesh)),
        [
            ("tls".to_string(), vec![], "mtls"),
            ("raw_buffer".to_string(), vec![], "refused")
        ]
    );
    // A namespace policy overrides the mesh's; UNSET inherits.
    let ns_disable = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: default}\nspec:\n  mtls: {mode: DISABLE}\n";
    let mut r = pa(strict_mesh);
    r.extend(pa(ns_disable));
    assert_eq!(
        inbound_with(r),
        [("raw_buffer".to_string(), vec![], "plaintext")]
    );
    let ns_unset = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: default}\nspec:\n  mtls: {mode: UNSET}\n";
    let mut r = pa(strict_mesh);
    r.extend(pa(ns_unset));
    assert_eq!(inbound_with(r)[1].2, "refused");
    // A workload policy overrides the namespace's, and its port level overrides it.
    let workload = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: reviews, namespace: default}\nspec:\n  selector: {matchLabels: {app: reviews}}\n  mtls: {mode: STRICT}\n  portLevelMtls:\n    9080: {mode: PERMISSIVE}\n";
    let mut r = pa(ns_disable);
    r.extend(pa(workload));
    assert_eq!(
        inbound_with(r)[1],
        ("raw_buffer".to_string(), vec![], "plaintext")
    );
    let other_port = workload.replace("9080: {mode: PERMISSIVE}", "8080: {mode: DISABLE}");
    let mut r = pa(ns_disable);
    r.extend(pa(&other_port));
    assert_eq!(inbound_with(r)[1].2, "refused");
    // A selector that does not match, or a selector in the root namespace, counts for nothing.
    let other_app = workload.replace("app: reviews", "app: details");
    assert_eq!(inbound_with(pa(&other_app)).len(), 2);
    let root_selector = workload.replace("namespace: default", "namespace: istio-system");
    assert_eq!(inbound_with(pa(&root_selector))[1].2, "plaintext");
}

#[test]
fn strict_fails_closed_for_a_proxy_without_an_identity() {
    let strict = snapshot(pa(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec:\n  mtls: {mode: STRICT}\n",
    ));
    let mut p = reviews_v1();
    p.mtls = false;
    let res = translate(&strict, &registry(), &p);
    let l = &res.listeners["virtualInbound"];
    // Neither the declared port nor any other lets a connection through to the app.
    assert_eq!(
        summary(&inbound_chains(&res)),
        [(String::new(), vec![], "refused")]
    );
    let default = l.default_filter_chain.as_ref().unwrap();
    assert_eq!(summary(&[default]), [(String::new(), vec![], "refused")]);
    // PERMISSIVE without an identity: plaintext, as before mTLS existed.
    let res = translate(&snapshot(Vec::new()), &registry(), &p);
    assert_eq!(
        summary(&inbound_chains(&res)),
        [(String::new(), vec![], "plaintext")]
    );
}

#[test]
fn the_oldest_of_two_policies_in_one_scope_wins() {
    let older = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: zz-older, namespace: default, creationTimestamp: '2026-01-01T00:00:00Z'}\nspec:\n  mtls: {mode: STRICT}\n";
    let newer = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: aa-newer, namespace: default, creationTimestamp: '2026-06-01T00:00:00Z'}\nspec:\n  mtls: {mode: DISABLE}\n";
    let mut r = pa(older);
    r.extend(pa(newer));
    assert_eq!(inbound_with(r)[1].2, "refused");
}

#[test]
fn a_workload_policy_of_disable_turns_its_endpoints_to_plaintext_for_clients() {
    let disable = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: reviews, namespace: default}\nspec:\n  selector: {matchLabels: {app: reviews, version: v2}}\n  mtls: {mode: DISABLE}\n";
    let config = snapshot(pa(disable));
    let res = translate(&config, &registry(), &productpage_mtls(CaptureMode::None));
    let marks: Vec<(String, bool)> = res.endpoints[&format!("outbound|9080||{REVIEWS}")]
        .endpoints
        .iter()
        .flat_map(|l| &l.lb_endpoints)
        .map(|e| {
            let ip = match e.host_identifier.as_ref().unwrap() {
                envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier::Endpoint(ep) => {
                    match ep.address.as_ref().unwrap().address.as_ref().unwrap() {
                        envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(s) => s.address.clone(),
                        other => panic!("{other:?}"),
                    }
                }
                other => panic!("{other:?}"),
            };
            (ip, e.metadata.as_ref().unwrap().filter_metadata.contains_key("envoy.transport_socket_match"))
        })
        .collect();
    assert_eq!(
        marks,
        [
            ("10.1.0.12".to_string(), true),
            ("10.1.0.13".to_string(), false),
            ("10.1.0.14".to_string(), true)
        ]
    );
}

#[test]
fn destination_rule_tls_modes() {
    let dr = |mode: &str| {
        support::yaml(
            "dr.yaml",
            format!("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: reviews}}\nspec:\n  host: reviews\n  trafficPolicy:\n    tls: {{mode: {mode}}}\n").as_bytes(),
        )
    };
    let reg = registry();
    let pp = productpage_mtls(CaptureMode::None);
    let res = translate(&snapshot(dr("ISTIO_MUTUAL")), &reg, &pp);
    let c = cluster(&res, &format!("outbound|9080||{REVIEWS}"));
    assert!(c.transport_socket_matches.is_empty());
    let ctx: UpstreamTlsContext = tls(c.transport_socket.as_ref().unwrap());
    assert_eq!(ctx.sni, format!("outbound_.9080_._.{REVIEWS}"));
    let res = translate(&snapshot(dr("DISABLE")), &reg, &pp);
    let c = cluster(&res, &format!("outbound|9080||{REVIEWS}"));
    assert!(c.transport_socket.is_none() && c.transport_socket_matches.is_empty());
    // SIMPLE: TLS origination, verified against the system's bundle by default.
    let res = translate(&snapshot(dr("SIMPLE")), &reg, &pp);
    let c = cluster(&res, &format!("outbound|9080||{REVIEWS}"));
    let ctx: UpstreamTlsContext = tls(c.transport_socket.as_ref().unwrap());
    assert_eq!(ctx.sni, REVIEWS);
    let Some(common_tls_context::ValidationContextType::ValidationContext(v)) =
        ctx.common_tls_context.unwrap().validation_context_type
    else {
        panic!("no validation context")
    };
    assert!(format!("{:?}", v.trusted_ca).contains("/etc/ssl/certs/ca-certificates.crt"));
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

/// `envoy --mode validate` over the proxy's clusters (endpoints inlined) and listeners (routes
/// inlined), with the node agent's `sds-grpc` cluster as the bootstrap has it.
fn envoy_accepts(config: &ConfigSnapshot, proxy: &Proxy) {
    let res = translate(config, &registry(), proxy);
    let sds: Cluster = serde_json_cluster();
    let mut clusters: Vec<Cluster> = res
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
    clusters.push(sds);
    let mut listeners: Vec<Listener> = res.listeners.values().cloned().collect();
    for l in &mut listeners {
        for chain in l
            .filter_chains
            .iter_mut()
            .chain(l.default_filter_chain.as_mut())
        {
            for f in &mut chain.filters {
                support::inline_routes(f, &res);
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
            clusters,
            ..Default::default()
        }),
        ..Default::default()
    };
    let path = std::env::temp_dir().join(format!("strait-mtls-validate-{}.pb", std::process::id()));
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
        "Envoy refuses the mTLS config:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The bootstrap's `sds-grpc` cluster (a Unix socket).
fn serde_json_cluster() -> Cluster {
    use envoy_types::pb::envoy::config::core::v3::{Address, Pipe, address};
    use envoy_types::pb::envoy::config::endpoint::v3::{
        ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
    };
    Cluster {
        name: "sds-grpc".into(),
        cluster_discovery_type: Some(
            envoy_types::pb::envoy::config::cluster::v3::cluster::ClusterDiscoveryType::Type(
                envoy_types::pb::envoy::config::cluster::v3::cluster::DiscoveryType::Static as i32,
            ),
        ),
        typed_extension_protocol_options: [(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_string(),
            envoy_types::util::pack_any(
                envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions {
                    upstream_protocol_options: Some(
                        envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                            envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::ExplicitHttpConfig {
                                protocol_config: Some(
                                    envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(Default::default()),
                                ),
                            },
                        ),
                    ),
                    ..Default::default()
                },
            ),
        )]
        .into(),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: "sds-grpc".into(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                        address: Some(Address {
                            address: Some(address::Address::Pipe(Pipe {
                                path: "/tmp/strait-sds-validate.sock".into(),
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
}

#[test]
fn envoy_accepts_mtls_clusters_and_inbound_chains() {
    let permissive = snapshot(bookinfo_sample("destination-rule-all.yaml"));
    envoy_accepts(&permissive, &reviews_v1());
    envoy_accepts(&permissive, &productpage_mtls(CaptureMode::None));
    let strict = snapshot(pa(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec:\n  mtls: {mode: STRICT}\n",
    ));
    envoy_accepts(&strict, &reviews_v1());
    envoy_accepts(&strict, &with_identity(ingress_gateway()));
}
