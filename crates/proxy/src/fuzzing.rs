//! Entry points for the fuzz targets in `fuzz/` (cargo fuzz) and for the corpus tests that keep
//! them building: each takes arbitrary bytes and must neither panic nor break its invariants.

use envoy_types::pb::envoy::config::cluster::v3::Cluster as PbCluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener as PbListener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use prost::Message;

use crate::config::{Cluster, Listener, RouteConfig, cluster};
use crate::http::h1_check::{HeadLimits, Scanner};

/// Proto → config: the first byte picks the resource type (listener, cluster, route
/// configuration, load assignment), the rest is its encoded proto. Whatever decodes is
/// converted; what converts is used the way the proxy uses it.
pub fn proto_config(data: &[u8]) {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    match kind % 4 {
        0 => {
            let Ok(pb) = PbListener::decode(bytes) else {
                return;
            };
            if let Ok(l) = Listener::try_from(&pb) {
                for dest in ["10.0.0.1:9080", "[fd00::1]:80", "127.0.0.1:15006"] {
                    let _ = l.chain_for(dest.parse().expect("a socket address"));
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
