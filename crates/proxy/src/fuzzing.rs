//! Entry points for the fuzz targets in `fuzz/` (cargo fuzz, which builds with `--cfg fuzzing`)
//! and for the corpus replay below, which runs in every `cargo test` and keeps them building:
//! each takes arbitrary bytes and must neither panic nor break its invariants. Not part of the
//! library otherwise (`cfg(any(fuzzing, test))` in lib.rs).

use envoy_types::pb::envoy::config::cluster::v3::Cluster as PbCluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener as PbListener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse;
use prost::Message;
use strait_xds_core::TypeUrl;

use crate::config::{Cluster, Listener, RouteConfig, cluster};
use crate::http::h1_check::{HeadLimits, Scanner};

/// Proto → config: the first byte picks the resource type (listener, cluster, route
/// configuration, load assignment), the rest is its encoded proto. Whatever decodes is
/// converted; what converts is used the way the proxy uses it. With the first byte's bit 2 set
/// (4..=7, 12..=15, ...), the rest is instead a whole Delta response of that type, which goes
/// through the xDS client's own path ([`crate::xds::State`]: the `Any` type check, decode,
/// conversion, removals, resubscription, the published config).
pub fn proto_config(data: &[u8]) {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    if kind & 4 != 0 {
        xds_response(kind, bytes);
        return;
    }
    match kind % 4 {
        0 => {
            let Ok(pb) = PbListener::decode(bytes) else {
                return;
            };
            if let Ok(l) = Listener::try_from(&pb) {
                for dest in ["10.0.0.1:9080", "[fd00::1]:80", "127.0.0.1:15006"] {
                    let dest = dest.parse().expect("a socket address");
                    let _ = l.chain_for(dest, &crate::config::listener::Detected::raw());
                    let tls = crate::config::listener::Detected {
                        transport_protocol: "tls",
                        server_name: Some("a.example.com".to_string()),
                        alpn: vec!["istio".to_string()],
                    };
                    let _ = l.chain_for(dest, &tls);
                }
                let _ = l.http_filters().count();
                let _ = serde_json::to_string(&l);
            }
        }
        1 => {
            let Ok(pb) = PbCluster::decode(bytes) else {
                return;
            };
            if let Ok(c) = Cluster::try_from(&pb) {
                let _ = serde_json::to_string(&c);
            }
        }
        2 => {
            let Ok(pb) = RouteConfiguration::decode(bytes) else {
                return;
            };
            if let Ok(rc) = RouteConfig::try_from(&pb) {
                let headers = hyper::HeaderMap::new();
                for host in ["reviews:9080", "a.example.com", ""] {
                    if let Some(vh) = crate::routing::virtual_host(&rc, host) {
                        let view = crate::routing::RequestView {
                            path_and_query: "/api/v1?x=1",
                            headers: &headers,
                        };
                        let _ = crate::routing::route(vh, view);
                    }
                }
                let _ = serde_json::to_string(&rc);
            }
        }
        _ => {
            let Ok(pb) = ClusterLoadAssignment::decode(bytes) else {
                return;
            };
            let _ = cluster::endpoints(&pb);
            let _ = cluster::load_assignment(&pb, true);
        }
    }
}

/// A Delta response of the type `kind % 4` picks, applied to a fresh client state twice (a
/// resend of what it holds changes nothing), then the names it asks for and the config it would
/// publish.
fn xds_response(kind: u8, bytes: &[u8]) {
    let Ok(resp) = DeltaDiscoveryResponse::decode(bytes) else {
        return;
    };
    let ty = match kind % 4 {
        0 => TypeUrl::Listener,
        1 => TypeUrl::Cluster,
        2 => TypeUrl::Route,
        _ => TypeUrl::Endpoint,
    };
    let mut state = crate::xds::State::default();
    let errors = state.apply(ty, &resp);
    let refused = errors.len();
    assert!(
        refused <= resp.resources.len(),
        "more errors than resources: {errors:?}"
    );
    let _ = state.resubscribe();
    let _ = state.complete();
    let first = serde_json::to_string(&state.config().clusters.keys().collect::<Vec<_>>());
    let again = state.apply(ty, &resp);
    assert_eq!(
        again.len(),
        refused,
        "the same response refused differently"
    );
    let second = serde_json::to_string(&state.config().clusters.keys().collect::<Vec<_>>());
    assert_eq!(
        first.ok(),
        second.ok(),
        "applying the same response twice changed the clusters"
    );
}

/// The HTTP/1 request checks: fed whole and in two pieces (split where the first byte says),
/// the scanner gives the same answer, passes on only a prefix of its input, and every head it
/// passes on is one httparse parses.
pub fn h1_head(data: &[u8]) {
    let Some((&split, input)) = data.split_first() else {
        return;
    };
    let limits = HeadLimits {
        max_bytes: 8 * 1024,
        max_headers: 32,
    };
    let mut whole = Scanner::new(limits, true);
    let mut out_whole = Vec::new();
    let r_whole = whole.feed(input, &mut out_whole);

    let at = usize::from(split).min(input.len());
    let mut pieces = Scanner::new(limits, true);
    let mut out_pieces = Vec::new();
    let r_pieces = pieces
        .feed(&input[..at], &mut out_pieces)
        .and_then(|()| pieces.feed(&input[at..], &mut out_pieces));

    assert_eq!(
        r_whole
            .as_ref()
            .map_err(|r| (r.status, r.details, r.in_body)),
        r_pieces
            .as_ref()
            .map_err(|r| (r.status, r.details, r.in_body)),
        "whole and in pieces differ"
    );
    assert_eq!(
        out_whole, out_pieces,
        "whole and in pieces pass on different bytes"
    );
    assert!(
        input.starts_with(&out_whole),
        "passed on bytes it was not given"
    );
    if let Err(r) = &r_whole {
        assert!(matches!(r.status, 400 | 431 | 501), "status {}", r.status);
    }
    // The first head passed on (if it is HTTP/1) is one httparse accepts whole.
    if !out_whole.is_empty() && !out_whole.starts_with(b"PRI * HTTP/2.0") {
        let mut headers = vec![httparse::EMPTY_HEADER; limits.max_headers];
        let mut req = httparse::Request::new(&mut headers);
        assert!(
            matches!(req.parse(&out_whole), Ok(httparse::Status::Complete(_))),
            "passed on a head httparse does not accept"
        );
    }
}

/// The harnesses over their corpus (`fuzz/corpus/TARGET`: every input fuzzing ever kept,
/// crashers included), seeds built here, and deterministic mutations of both: a stable-toolchain
/// regression run that keeps the targets building.
#[cfg(test)]
mod corpus {

    use super::{h1_head, proto_config};
    use envoy_types::pb::envoy::config::cluster::v3 as cl;
    use envoy_types::pb::envoy::config::core::v3::{
        Address, SocketAddress, address, socket_address,
    };
    use envoy_types::pb::envoy::config::endpoint::v3 as ep;
    use envoy_types::pb::envoy::config::listener::v3 as li;
    use envoy_types::pb::envoy::config::route::v3 as rt;
    use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
        HttpConnectionManager, HttpFilter, http_connection_manager, http_filter,
    };
    use envoy_types::pb::google::protobuf::Any;
    use prost::{Message, Name};
    use strait_testsupport::corpus::corpus;

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
                    host_identifier: Some(ep::lb_endpoint::HostIdentifier::Endpoint(
                        ep::Endpoint {
                            address: socket("10.0.0.7", 9080),
                            ..Default::default()
                        },
                    )),
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
        let delta = |resource: Any, name: &str| {
            use envoy_types::pb::envoy::service::discovery::v3::{
                DeltaDiscoveryResponse, Resource,
            };
            DeltaDiscoveryResponse {
                system_version_info: "1".into(),
                type_url: resource.type_url.clone(),
                resources: vec![Resource {
                    name: name.into(),
                    version: "1".into(),
                    resource: Some(resource),
                    ..Default::default()
                }],
                removed_resources: vec!["gone".into()],
                nonce: "n".into(),
                ..Default::default()
            }
            .encode_to_vec()
        };
        vec![
            tagged(0, listener.encode_to_vec()),
            tagged(1, cluster.encode_to_vec()),
            tagged(2, routes.encode_to_vec()),
            tagged(3, cla.encode_to_vec()),
            tagged(4, delta(any(&listener), "0.0.0.0_9080")),
            tagged(5, delta(any(&cluster), "outbound|9080||reviews")),
            tagged(6, delta(any(&routes), "80")),
            tagged(7, delta(any(&cla), "reviews")),
            // A cluster's body under the listener type: refused by the type check.
            tagged(4, delta(any(&cluster), "outbound|9080||reviews")),
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
}
