//! The fuzz targets' harnesses (`fuzz/`, see fuzz/README.md) over their corpus, seeds built
//! here, and deterministic mutations of both: a stable-toolchain regression run that keeps the
//! targets building and replays every input fuzzing ever kept.

use std::path::PathBuf;

use envoy_types::pb::envoy::config::cluster::v3 as cl;
use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address, socket_address};
use envoy_types::pb::envoy::config::endpoint::v3 as ep;
use envoy_types::pb::envoy::config::listener::v3 as li;
use envoy_types::pb::envoy::config::route::v3 as rt;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, http_connection_manager, http_filter,
};
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};
use strait_proxy::fuzzing::{h1_head, proto_config};

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut inputs: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read the corpus {}: {e}", dir.display()))
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "{} is empty", dir.display());
    inputs
}

/// Deterministic mutations: byte flips, truncations, duplications and splices.
fn mutations(seeds: &[Vec<u8>], n: usize) -> Vec<Vec<u8>> {
    let mut rng = fastrand::Rng::with_seed(0x0057_5241_4954);
    (0..n)
        .map(|_| {
            let mut m = seeds[rng.usize(..seeds.len())].clone();
            for _ in 0..rng.usize(1..4) {
                if m.is_empty() {
                    m.push(rng.u8(..));
                    continue;
                }
                let at = rng.usize(..m.len());
                match rng.u8(..5) {
                    0 => m[at] = rng.u8(..),
                    1 => m[at] ^= 1 << rng.u8(..8),
                    2 => m.truncate(at.max(1)),
                    3 => {
                        let piece = m[at..].to_vec();
                        m.extend_from_slice(&piece[..piece.len().min(64)]);
                    }
                    _ => {
                        let other = &seeds[rng.usize(..seeds.len())];
                        m.extend_from_slice(
                            &other[rng.usize(..other.len().max(1)).min(other.len())..],
                        );
                    }
                }
            }
            m
        })
        .collect()
}

fn any<M: Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

fn socket(ip: &str, port: u32) -> Option<Address> {
    Some(Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.into(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    })
}

/// Encoded protos of each kind, tagged with the harness's type byte.
fn proto_seeds() -> Vec<Vec<u8>> {
    let routes = rt::RouteConfiguration {
        name: "80".into(),
        virtual_hosts: vec![rt::VirtualHost {
            name: "reviews".into(),
            domains: vec!["reviews:9080".into(), "*.example.com".into()],
            routes: vec![rt::Route {
                r#match: Some(rt::RouteMatch {
                    path_specifier: Some(rt::route_match::PathSpecifier::Prefix("/api".into())),
                    ..Default::default()
                }),
                action: Some(rt::route::Action::Route(rt::RouteAction {
                    cluster_specifier: Some(rt::route_action::ClusterSpecifier::Cluster(
                        "outbound|9080||reviews".into(),
                    )),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let hcm = HttpConnectionManager {
        route_specifier: Some(http_connection_manager::RouteSpecifier::RouteConfig(
            routes.clone(),
        )),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(
                any(&Router::default()),
            )),
            ..Default::default()
        }],
        ..Default::default()
    };
    let listener = li::Listener {
        name: "0.0.0.0_9080".into(),
        address: socket("0.0.0.0", 9080),
        filter_chains: vec![li::FilterChain {
            filters: vec![li::Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(li::filter::ConfigType::TypedConfig(any(&hcm))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let cla = ep::ClusterLoadAssignment {
        cluster_name: "reviews".into(),
        endpoints: vec![ep::LocalityLbEndpoints {
            lb_endpoints: vec![ep::LbEndpoint {
                host_identifier: Some(ep::lb_endpoint::HostIdentifier::Endpoint(ep::Endpoint {
                    address: socket("10.0.0.7", 9080),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let cluster = cl::Cluster {
        name: "outbound|9080||reviews".into(),
        load_assignment: Some(cla.clone()),
        ..Default::default()
    };
    let tagged = |tag: u8, bytes: Vec<u8>| [vec![tag], bytes].concat();
    vec![
        tagged(0, listener.encode_to_vec()),
        tagged(1, cluster.encode_to_vec()),
        tagged(2, routes.encode_to_vec()),
        tagged(3, cla.encode_to_vec()),
    ]
}

#[test]
fn proto_config_survives_its_corpus_and_mutations() {
    let mut seeds = proto_seeds();
    seeds.extend(corpus("proto_config"));
    for input in seeds.iter().chain(&mutations(&seeds, 3000)) {
        proto_config(input);
    }
}

#[test]
fn h1_head_survives_its_corpus_and_mutations() {
    let seeds = corpus("h1_head");
    for input in seeds.iter().chain(&mutations(&seeds, 5000)) {
        h1_head(input);
    }
}
