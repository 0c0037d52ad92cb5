//! Proto → config conversion: what the translator sends converts, and what strait-proxy cannot
//! honour is refused with a reason that names the resource and the field.

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3 as cl;
use envoy_types::pb::envoy::config::core::v3::{
    AggregatedConfigSource, ConfigSource, config_source,
};
use envoy_types::pb::envoy::config::listener::v3 as li;
use envoy_types::pb::envoy::config::route::v3 as rt;
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::{FaultDelay, fault_delay};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{
    FaultAbort, HttpFault, fault_abort,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatcher, StringMatcher, string_matcher};
use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration, UInt32Value};
use prost::Name;

use super::*;

fn any<M: Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

fn exact_header(name: &str, value: &str) -> rt::HeaderMatcher {
    rt::HeaderMatcher {
        name: name.into(),
        header_match_specifier: Some(rt::header_matcher::HeaderMatchSpecifier::StringMatch(
            StringMatcher {
                match_pattern: Some(string_matcher::MatchPattern::Exact(value.into())),
                ..Default::default()
            },
        )),
        ..Default::default()
    }
}

fn prefix(p: &str) -> Option<rt::RouteMatch> {
    Some(rt::RouteMatch {
        path_specifier: Some(rt::route_match::PathSpecifier::Prefix(p.into())),
        ..Default::default()
    })
}

fn to_cluster(name: &str) -> rt::RouteAction {
    rt::RouteAction {
        cluster_specifier: Some(rt::route_action::ClusterSpecifier::Cluster(name.into())),
        timeout: Some(PbDuration::default()),
        ..Default::default()
    }
}

fn route_config(routes: Vec<rt::Route>) -> rt::RouteConfiguration {
    rt::RouteConfiguration {
        name: "15080".into(),
        virtual_hosts: vec![rt::VirtualHost {
            name: "reviews.default.svc.cluster.local:9080".into(),
            domains: vec!["reviews:9080".into(), "Reviews.Default:9080".into()],
            routes,
            include_request_attempt_count: true,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Istio's jason → v2 route with a fault and Istio's default retries, then a 80/20 split.
fn bookinfo_routes() -> rt::RouteConfiguration {
    let fault = HttpFault {
        delay: Some(FaultDelay {
            percentage: Some(FractionalPercent {
                numerator: 100,
                denominator: 0,
            }),
            fault_delay_secifier: Some(fault_delay::FaultDelaySecifier::FixedDelay(PbDuration {
                seconds: 7,
                nanos: 0,
            })),
        }),
        abort: Some(FaultAbort {
            percentage: Some(FractionalPercent {
                numerator: 100_000,
                denominator: 2,
            }),
            error_type: Some(fault_abort::ErrorType::HttpStatus(500)),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut jason = rt::Route {
        r#match: prefix("/"),
        action: Some(rt::route::Action::Route(rt::RouteAction {
            retry_policy: Some(rt::RetryPolicy {
                retry_on:
                    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
                        .into(),
                num_retries: Some(UInt32Value { value: 2 }),
                retriable_status_codes: vec![503],
                ..Default::default()
            }),
            ..to_cluster("outbound|9080|v2|reviews.default.svc.cluster.local")
        })),
        typed_per_filter_config: [("envoy.filters.http.fault".to_string(), any(&fault))].into(),
        ..Default::default()
    };
    jason.r#match.as_mut().unwrap().headers = vec![exact_header("end-user", "jason")];
    let split = rt::Route {
        r#match: prefix("/"),
        action: Some(rt::route::Action::Route(rt::RouteAction {
            cluster_specifier: Some(rt::route_action::ClusterSpecifier::WeightedClusters(
                rt::WeightedCluster {
                    clusters: ["v1", "v2"]
                        .iter()
                        .zip([80, 20])
                        .map(|(v, w)| rt::weighted_cluster::ClusterWeight {
                            name: format!("outbound|9080|{v}|reviews.default.svc.cluster.local"),
                            weight: Some(UInt32Value { value: w }),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                },
            )),
            timeout: Some(PbDuration {
                seconds: 0,
                nanos: 500_000_000,
            }),
            ..Default::default()
        })),
        ..Default::default()
    };
    route_config(vec![jason, split])
}

#[test]
fn istio_routes_convert_with_their_matches_faults_retries_and_splits() {
    let rc = RouteConfig::try_from(&bookinfo_routes()).unwrap();
    let vh = &rc.virtual_hosts[0];
    assert_eq!(vh.domains, ["reviews:9080", "reviews.default:9080"]);
    let jason = &vh.routes[0];
    assert_eq!(jason.matcher.path, PathMatch::Prefix("/".into()));
    assert_eq!(jason.matcher.headers[0].name, "end-user");
    assert_eq!(
        jason.matcher.headers[0].value,
        Some(StringMatch::Exact("jason".into()))
    );
    let fault = jason.fault.as_ref().unwrap();
    assert_eq!(fault.delay, Some((Duration::from_secs(7), 1_000_000)));
    assert_eq!(fault.abort, Some((500, 100_000)));
    let Action::Forward(fwd) = &jason.action else {
        panic!("{:?}", jason.action)
    };
    assert_eq!(fwd.timeout, None, "timeout 0s disables the timeout");
    let retry = fwd.retry.as_ref().unwrap();
    assert_eq!(retry.num_retries, 2);
    assert_eq!(retry.retriable_status_codes, [503]);
    let Action::Forward(split) = &vh.routes[1].action else {
        panic!()
    };
    assert_eq!(split.timeout, Some(Duration::from_millis(500)));
    assert_eq!(
        split.target,
        Target::Weighted(vec![
            WeightedCluster {
                name: "outbound|9080|v1|reviews.default.svc.cluster.local".into(),
                weight: 80,
                headers: None,
            },
            WeightedCluster {
                name: "outbound|9080|v2|reviews.default.svc.cluster.local".into(),
                weight: 20,
                headers: None,
            },
        ])
    );
    // The dump names fields as Envoy's JSON does, so tests can wait on either plane alike.
    let json = serde_json::to_string(&rc).unwrap();
    for needle in [
        "\"weighted_clusters\"",
        "\"weight\":80",
        "\"timeout\":\"0.500s\"",
    ] {
        assert!(json.contains(needle), "{needle} not in {json}");
    }
}

#[test]
fn a_route_without_a_timeout_gets_envoys_15_seconds() {
    let mut action = to_cluster("c");
    action.timeout = None;
    let rc = route_config(vec![rt::Route {
        r#match: prefix("/"),
        action: Some(rt::route::Action::Route(action)),
        ..Default::default()
    }]);
    let rc = RouteConfig::try_from(&rc).unwrap();
    let Action::Forward(fwd) = &rc.virtual_hosts[0].routes[0].action else {
        panic!()
    };
    assert_eq!(fwd.timeout, Some(Duration::from_secs(15)));
}

/// The NACK reason for a route configuration whose one route is changed by `change`.
fn route_nack(change: impl FnOnce(&mut rt::Route)) -> String {
    let mut route = rt::Route {
        r#match: prefix("/"),
        action: Some(rt::route::Action::Route(to_cluster("c"))),
        ..Default::default()
    };
    change(&mut route);
    RouteConfig::try_from(&route_config(vec![route]))
        .unwrap_err()
        .to_string()
}

#[test]
fn unsupported_route_features_are_refused_naming_the_field() {
    let at = "route configuration \"15080\": virtual_hosts[reviews.default.svc.cluster.local:9080].routes[0].";
    let cases: Vec<(String, String)> = vec![
        (
            route_nack(|r| {
                r.typed_per_filter_config
                    .insert("envoy.filters.http.rbac".into(), Any::default());
            }),
            "typed_per_filter_config[\"envoy.filters.http.rbac\"] is not supported by strait-proxy"
                .into(),
        ),
        (
            route_nack(|r| {
                let Some(rt::route::Action::Route(a)) = &mut r.action else {
                    unreachable!()
                };
                a.request_mirror_policies.push(Default::default());
            }),
            "route.request_mirror_policies[0] without a cluster (cluster_header) is not supported by strait-proxy".into(),
        ),
        (
            route_nack(|r| {
                let Some(rt::route::Action::Route(a)) = &mut r.action else {
                    unreachable!()
                };
                a.retry_policy = Some(rt::RetryPolicy {
                    retry_on: "5xx,retry-on-a-whim".into(),
                    ..Default::default()
                });
            }),
            "route.retry_policy.retry_on \"retry-on-a-whim\" is not supported by strait-proxy"
                .into(),
        ),
        (
            route_nack(|r| {
                r.r#match.as_mut().unwrap().path_specifier =
                    Some(rt::route_match::PathSpecifier::SafeRegex(RegexMatcher {
                        regex: "/(unclosed".into(),
                        ..Default::default()
                    }));
            }),
            "match.safe_regex \"/(unclosed\" is not a valid regex".into(),
        ),
    ];
    for (got, want) in cases {
        assert!(got.starts_with(at), "{got}");
        assert!(got.contains(&want), "want {want:?} in {got:?}");
    }
}

#[test]
fn mirror_policies_convert_with_their_share() {
    let mut action = to_cluster("outbound|8000|v1|httpbin.default.svc.cluster.local");
    action
        .request_mirror_policies
        .push(rt::route_action::RequestMirrorPolicy {
            cluster: "outbound|8000|v2|httpbin.default.svc.cluster.local".into(),
            runtime_fraction: Some(
                envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent {
                    default_value: Some(FractionalPercent {
                        numerator: 50,
                        denominator: 0,
                    }),
                    ..Default::default()
                },
            ),
            ..Default::default()
        });
    let rc = route_config(vec![rt::Route {
        r#match: prefix("/"),
        action: Some(rt::route::Action::Route(action)),
        ..Default::default()
    }]);
    let rc = RouteConfig::try_from(&rc).unwrap();
    let Action::Forward(f) = &rc.virtual_hosts[0].routes[0].action else {
        panic!()
    };
    assert_eq!(
        f.mirrors,
        [Mirror {
            cluster: "outbound|8000|v2|httpbin.default.svc.cluster.local".into(),
            per_million: 500_000,
            shadow_suffix: true,
        }]
    );
}

fn hcm_listener(filters: Vec<HttpFilter>) -> li::Listener {
    let hcm = HttpConnectionManager {
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            route_config_name: "15080".into(),
            config_source: Some(ConfigSource {
                config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
                    AggregatedConfigSource {},
                )),
                ..Default::default()
            }),
        })),
        http_filters: filters,
        ..Default::default()
    };
    li::Listener {
        name: "127.0.0.2_15080".into(),
        address: Some(envoy_types::pb::envoy::config::core::v3::Address {
            address: Some(
                envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(
                    envoy_types::pb::envoy::config::core::v3::SocketAddress {
                        address: "127.0.0.2".into(),
                        port_specifier: Some(
                            envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(15080),
                        ),
                        ..Default::default()
                    },
                ),
            ),
        }),
        filter_chains: vec![li::FilterChain {
            filters: vec![li::Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(li::filter::ConfigType::TypedConfig(any(&hcm))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn http_filter<M: Name>(name: &str, m: &M) -> HttpFilter {
    HttpFilter {
        name: name.into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(any(m))),
        ..Default::default()
    }
}

#[test]
fn the_http_proxy_listener_converts_and_other_listeners_are_refused() {
    use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
    let router = http_filter("envoy.filters.http.router", &Router::default());
    let fault = http_filter("envoy.filters.http.fault", &HttpFault::default());
    let l = Listener::try_from(&hcm_listener(vec![fault.clone(), router.clone()])).unwrap();
    assert_eq!(l.address, "127.0.0.2:15080".parse().unwrap());
    assert!(l.bind && !l.use_original_dst && !l.original_dst);
    let [chain] = l.filter_chains.as_slice() else {
        panic!("{l:?}")
    };
    let NetworkFilter::Http(hcm) = &chain.filter else {
        panic!("{chain:?}")
    };
    assert_eq!(hcm.routes, RouteSource::Rds("15080".into()));
    assert!(hcm.generate_request_id);
    assert!(!hcm.use_remote_address);

    let buffer = http_filter(
        "envoy.filters.http.buffer",
        &envoy_types::pb::envoy::extensions::filters::http::buffer::v3::Buffer::default(),
    );
    let err = Listener::try_from(&hcm_listener(vec![buffer, router.clone()]))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(
            "listener \"127.0.0.2_15080\": filter_chains[0].filters[0].typed_config.http_filters[0] \"envoy.filters.http.buffer\""
        ) && err.ends_with("is not supported by strait-proxy"),
        "{err}"
    );
    let err = Listener::try_from(&hcm_listener(vec![router.clone(), fault]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("the router must be last"), "{err}");

    let mut other = hcm_listener(vec![router]);
    other.filter_chains[0].filters[0].config_type = Some(li::filter::ConfigType::TypedConfig(any(
        &envoy_types::pb::envoy::extensions::filters::network::redis_proxy::v3::RedisProxy::default(
        ),
    )));
    let err = Listener::try_from(&other).unwrap_err().to_string();
    assert!(
        err.contains("(type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3.RedisProxy) is not supported by strait-proxy"),
        "{err}"
    );
}

#[test]
fn a_listeners_istio_stats_metadata_names_its_disabled_metrics() {
    use envoy_types::pb::envoy::config::core::v3::Metadata;
    use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
    use envoy_types::pb::google::protobuf::{ListValue, Struct, Value, value::Kind};
    let with = |names: Vec<Kind>| {
        let mut l = hcm_listener(vec![http_filter(
            "envoy.filters.http.router",
            &Router::default(),
        )]);
        let list = ListValue {
            values: names.into_iter().map(|k| Value { kind: Some(k) }).collect(),
        };
        let stats = Struct {
            fields: [(
                "disabled".to_string(),
                Value {
                    kind: Some(Kind::ListValue(list)),
                },
            )]
            .into_iter()
            .collect(),
        };
        l.metadata = Some(Metadata {
            filter_metadata: [("istio.stats".to_string(), stats)].into_iter().collect(),
            ..Default::default()
        });
        Listener::try_from(&l)
    };
    let plain = Listener::try_from(&hcm_listener(vec![http_filter(
        "envoy.filters.http.router",
        &Router::default(),
    )]))
    .unwrap();
    assert!(plain.disabled_metrics.is_empty());
    let l = with(vec![
        Kind::StringValue("REQUEST_COUNT".into()),
        Kind::StringValue("TCP_SENT_BYTES".into()),
    ])
    .unwrap();
    assert_eq!(
        l.disabled_metrics.names().collect::<Vec<_>>(),
        ["REQUEST_COUNT", "TCP_SENT_BYTES"]
    );
    let err = with(vec![Kind::StringValue("REQUESTS".into())])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("metadata.filter_metadata") && err.contains("\"REQUESTS\""),
        "{err}"
    );
    let err = with(vec![Kind::NumberValue(1.0)]).unwrap_err().to_string();
    assert!(err.contains("not a string"), "{err}");
}

fn tcp_filter(tp: &TcpProxy) -> li::Filter {
    li::Filter {
        name: "envoy.filters.network.tcp_proxy".into(),
        config_type: Some(li::filter::ConfigType::TypedConfig(any(tp))),
    }
}

fn tcp_listener(chains: Vec<li::FilterChain>) -> li::Listener {
    let mut l = hcm_listener(vec![]);
    l.name = "10.1.0.2_31400".into();
    l.filter_chains = chains;
    l
}

#[test]
fn tcp_proxy_listeners_convert_with_weighted_clusters_and_idle_timeouts() {
    use tcp_proxy::weighted_cluster::ClusterWeight;
    let weighted = TcpProxy {
        stat_prefix: "weighted".into(),
        cluster_specifier: Some(tcp_proxy::ClusterSpecifier::WeightedClusters(
            tcp_proxy::WeightedCluster {
                clusters: vec![
                    ClusterWeight {
                        name: "outbound|9000|v1|tcp-echo.default.svc.cluster.local".into(),
                        weight: 80,
                        ..Default::default()
                    },
                    ClusterWeight {
                        name: "outbound|9000|v2|tcp-echo.default.svc.cluster.local".into(),
                        weight: 20,
                        ..Default::default()
                    },
                ],
            },
        )),
        ..Default::default()
    };
    let l = Listener::try_from(&tcp_listener(vec![li::FilterChain {
        filters: vec![tcp_filter(&weighted)],
        ..Default::default()
    }]))
    .unwrap();
    let NetworkFilter::Tcp(tcp) = &l.filter_chains[0].filter else {
        panic!("{l:?}")
    };
    assert_eq!(
        tcp.target,
        Target::Weighted(vec![
            WeightedCluster {
                name: "outbound|9000|v1|tcp-echo.default.svc.cluster.local".into(),
                weight: 80,
                headers: None,
            },
            WeightedCluster {
                name: "outbound|9000|v2|tcp-echo.default.svc.cluster.local".into(),
                weight: 20,
                headers: None,
            },
        ])
    );
    // Envoy's default idle timeout is an hour; 0 turns it off.
    assert_eq!(tcp.idle_timeout, Some(Duration::from_secs(3600)));
    let mut no_idle = weighted.clone();
    no_idle.idle_timeout = Some(PbDuration::default());
    let l = Listener::try_from(&tcp_listener(vec![li::FilterChain {
        filters: vec![tcp_filter(&no_idle)],
        ..Default::default()
    }]))
    .unwrap();
    let NetworkFilter::Tcp(tcp) = &l.filter_chains[0].filter else {
        panic!()
    };
    assert_eq!(tcp.idle_timeout, None);

    // virtualInbound's shape: original_dst listener filter, chains by port, a default chain.
    let to = |c: &str| TcpProxy {
        cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(c.into())),
        ..Default::default()
    };
    let mut vi = tcp_listener(vec![li::FilterChain {
        name: "0.0.0.0_9000".into(),
        filter_chain_match: Some(li::FilterChainMatch {
            destination_port: Some(UInt32Value { value: 9000 }),
            ..Default::default()
        }),
        filters: vec![tcp_filter(&to("inbound|9000||"))],
        ..Default::default()
    }]);
    vi.listener_filters = vec![li::ListenerFilter {
        name: "envoy.filters.listener.original_dst".into(),
        config_type: Some(li::listener_filter::ConfigType::TypedConfig(any(
            &envoy_types::pb::envoy::extensions::filters::listener::original_dst::v3::OriginalDst {},
        ))),
        ..Default::default()
    }];
    vi.default_filter_chain = Some(li::FilterChain {
        name: "InboundPassthroughFilterChain".into(),
        filters: vec![tcp_filter(&to("PassthroughCluster"))],
        ..Default::default()
    });
    vi.bind_to_port = Some(envoy_types::pb::google::protobuf::BoolValue { value: true });
    let l = Listener::try_from(&vi).unwrap();
    assert!(l.original_dst && l.bind);
    assert_eq!(l.filter_chains[0].matcher.destination_port, Some(9000));
    assert_eq!(
        l.chain_for("10.0.0.1:8888".parse().unwrap(), &listener::Detected::raw())
            .map(|c| c.name.as_str()),
        Some("InboundPassthroughFilterChain")
    );
}

#[test]
fn tls_inspector_chains_match_on_server_name_transport_and_alpn() {
    let to = |cluster: &str| TcpProxy {
        cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(cluster.into())),
        ..Default::default()
    };
    let chain = |name: &str, m: li::FilterChainMatch| li::FilterChain {
        name: name.into(),
        filter_chain_match: Some(m),
        filters: vec![tcp_filter(&to(name))],
        ..Default::default()
    };
    let mut pb = tcp_listener(vec![
        chain(
            "exact",
            li::FilterChainMatch {
                server_names: vec!["nginx.example.com".into()],
                ..Default::default()
            },
        ),
        chain(
            "wildcard",
            li::FilterChainMatch {
                server_names: vec!["*.example.com".into()],
                ..Default::default()
            },
        ),
        chain(
            "istio-tls",
            li::FilterChainMatch {
                transport_protocol: "tls".into(),
                application_protocols: vec!["istio-http/1.1".into(), "istio".into()],
                ..Default::default()
            },
        ),
        chain(
            "other-tls",
            li::FilterChainMatch {
                transport_protocol: "tls".into(),
                ..Default::default()
            },
        ),
        chain(
            "plaintext",
            li::FilterChainMatch {
                transport_protocol: "raw_buffer".into(),
                ..Default::default()
            },
        ),
    ]);
    pb.listener_filters = vec![li::ListenerFilter {
        name: "envoy.filters.listener.tls_inspector".into(),
        config_type: Some(li::listener_filter::ConfigType::TypedConfig(any(
            &envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector::default(),
        ))),
        ..Default::default()
    }];
    let l = Listener::try_from(&pb).unwrap();
    assert!(l.tls_inspector);
    let dest = "10.0.0.1:443".parse().unwrap();
    let pick = |sni: Option<&str>, tls: bool, alpn: &[&str]| {
        let detected = listener::Detected {
            transport_protocol: if tls { "tls" } else { "raw_buffer" },
            server_name: sni.map(str::to_string),
            alpn: alpn.iter().map(|a| a.to_string()).collect(),
        };
        l.chain_for(dest, &detected).map(|c| c.name.clone())
    };
    // An exact name beats a wildcard, which beats chains without names.
    assert_eq!(
        pick(Some("nginx.example.com"), true, &[]).as_deref(),
        Some("exact")
    );
    assert_eq!(
        pick(Some("a.example.com"), true, &[]).as_deref(),
        Some("wildcard")
    );
    // Without a name match: chains without names, by transport, then ALPN.
    assert_eq!(
        pick(Some("outbound_.80_._.x"), true, &["istio", "http/1.1"]).as_deref(),
        Some("istio-tls")
    );
    assert_eq!(pick(None, true, &["h2"]).as_deref(), Some("other-tls"));
    assert_eq!(pick(None, false, &[]).as_deref(), Some("plaintext"));
    let err = Listener::try_from(&tcp_listener(vec![]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no filter chains"), "{err}");
}

#[test]
fn unknown_listener_filters_are_refused() {
    let to = TcpProxy {
        cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster("c".into())),
        ..Default::default()
    };
    let mut pb = tcp_listener(vec![li::FilterChain {
        filters: vec![tcp_filter(&to)],
        ..Default::default()
    }]);
    pb.listener_filters = vec![li::ListenerFilter {
        name: "envoy.filters.listener.http_inspector".into(),
        config_type: Some(li::listener_filter::ConfigType::TypedConfig(any(
            &envoy_types::pb::envoy::extensions::filters::listener::http_inspector::v3::HttpInspector::default(),
        ))),
        ..Default::default()
    }];
    let err = Listener::try_from(&pb).unwrap_err().to_string();
    assert!(
        err.contains("listener_filters[0] \"envoy.filters.listener.http_inspector\"")
            && err.contains("is not supported by strait-proxy"),
        "{err}"
    );
}

fn eds_cluster(name: &str) -> cl::Cluster {
    cl::Cluster {
        name: name.into(),
        cluster_discovery_type: Some(cl::cluster::ClusterDiscoveryType::Type(
            cl::cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cl::cluster::EdsClusterConfig {
            service_name: name.into(),
            ..Default::default()
        }),
        connect_timeout: Some(PbDuration {
            seconds: 10,
            nanos: 0,
        }),
        ..Default::default()
    }
}

#[test]
fn clusters_convert_and_unsupported_policies_are_refused() {
    let name = "outbound|9080|v1|reviews.default.svc.cluster.local";
    let c = Cluster::try_from(&eds_cluster(name)).unwrap();
    assert_eq!(c.discovery, Discovery::Eds(name.into()));
    assert_eq!(c.lb, LbPolicy::RoundRobin);
    assert_eq!(c.connect_timeout, Duration::from_secs(10));
    assert_eq!(c.protocol, UpstreamProtocol::Http1);

    let mut h2 = eds_cluster(name);
    let opts = HttpProtocolOptions {
        upstream_protocol_options: Some(
            http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                http_protocol_options::ExplicitHttpConfig {
                    protocol_config: Some(
                        http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                            Default::default(),
                        ),
                    ),
                },
            ),
        ),
        ..Default::default()
    };
    h2.typed_extension_protocol_options.insert(
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".into(),
        any(&opts),
    );
    assert_eq!(
        Cluster::try_from(&h2).unwrap().protocol,
        UpstreamProtocol::Http2
    );

    let mut ring = eds_cluster(name);
    ring.lb_policy = cl::cluster::LbPolicy::RingHash as i32;
    assert_eq!(
        Cluster::try_from(&ring).unwrap().lb,
        LbPolicy::RingHash {
            minimum_ring_size: 1024
        }
    );
    let mut maglev = eds_cluster(name);
    maglev.lb_policy = cl::cluster::LbPolicy::Maglev as i32;
    maglev.lb_config = Some(cl::cluster::LbConfig::MaglevLbConfig(
        cl::cluster::MaglevLbConfig {
            table_size: Some(envoy_types::pb::google::protobuf::UInt64Value { value: 100 }),
        },
    ));
    assert!(
        Cluster::try_from(&maglev)
            .unwrap_err()
            .to_string()
            .contains("table_size 100 is not a prime")
    );
    let mut provided = eds_cluster(name);
    provided.lb_policy = cl::cluster::LbPolicy::ClusterProvided as i32;
    assert_eq!(
        Cluster::try_from(&provided).unwrap_err().to_string(),
        format!("cluster {name:?}: lb_policy CLUSTER_PROVIDED is not supported by strait-proxy")
    );
    // ORIGINAL_DST: where the connection was going, or where a request header says.
    let mut original = eds_cluster("PassthroughCluster");
    original.cluster_discovery_type = Some(cl::cluster::ClusterDiscoveryType::Type(
        cl::cluster::DiscoveryType::OriginalDst as i32,
    ));
    original.lb_policy = cl::cluster::LbPolicy::ClusterProvided as i32;
    let c = Cluster::try_from(&original).unwrap();
    assert_eq!(
        (c.discovery, c.original_dst_header),
        (Discovery::OriginalDst, None)
    );
    let header = |name: &str| {
        let mut by_header = original.clone();
        by_header.lb_config = Some(cl::cluster::LbConfig::OriginalDstLbConfig(
            cl::cluster::OriginalDstLbConfig {
                use_http_header: true,
                http_header_name: name.into(),
                ..Default::default()
            },
        ));
        Cluster::try_from(&by_header).unwrap().original_dst_header
    };
    assert_eq!(header(":authority").as_deref(), Some(":authority"));
    assert_eq!(header("").as_deref(), Some("x-envoy-original-dst-host"));
    let mut by_metadata = original.clone();
    by_metadata.lb_config = Some(cl::cluster::LbConfig::OriginalDstLbConfig(
        cl::cluster::OriginalDstLbConfig {
            metadata_key: Some(Default::default()),
            ..Default::default()
        },
    ));
    let err = Cluster::try_from(&by_metadata).unwrap_err().to_string();
    assert!(err.contains("original_dst_lb_config.metadata_key"), "{err}");
    // upstream_bind_config: the inbound passthrough cluster's source address.
    let bind = |b: envoy_types::pb::envoy::config::core::v3::BindConfig| {
        let mut bound = original.clone();
        bound.upstream_bind_config = Some(b);
        Cluster::try_from(&bound).map(|c| c.source_address)
    };
    let source = envoy_types::pb::envoy::config::core::v3::SocketAddress {
        address: "127.0.0.6".into(),
        port_specifier: Some(
            envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(0),
        ),
        ..Default::default()
    };
    assert_eq!(
        bind(envoy_types::pb::envoy::config::core::v3::BindConfig {
            source_address: Some(source.clone()),
            ..Default::default()
        })
        .unwrap(),
        Some("127.0.0.6:0".parse().unwrap())
    );
    let err = bind(envoy_types::pb::envoy::config::core::v3::BindConfig {
        source_address: Some(source),
        freebind: Some(Default::default()),
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("upstream_bind_config.freebind is not supported by strait-proxy"),
        "{err}"
    );
    let mut tls = eds_cluster(name);
    tls.transport_socket = Some(Default::default());
    let err = Cluster::try_from(&tls).unwrap_err().to_string();
    assert!(err.contains("transport_socket.typed_config"), "{err}");
    let mut matcher = eds_cluster(name);
    matcher.transport_socket_matcher = Some(Default::default());
    let err = Cluster::try_from(&matcher).unwrap_err().to_string();
    assert!(
        err.contains("transport_socket_matcher is not supported by strait-proxy"),
        "{err}"
    );
}

/// What Istio's `corsPolicy`, `fault.abort.grpcStatus` and every `retries.retryOn` condition
/// become (the translator's shapes) converts: strait-proxy serves them rather than refusing the
/// route configuration.
#[test]
fn cors_grpc_aborts_and_every_retry_condition_convert() {
    use envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent;
    use envoy_types::pb::envoy::extensions::filters::http::cors::v3::CorsPolicy;
    use envoy_types::pb::google::protobuf::BoolValue;
    let cors = CorsPolicy {
        allow_origin_string_match: vec![
            StringMatcher {
                match_pattern: Some(string_matcher::MatchPattern::Exact(
                    "https://example.com".into(),
                )),
                ..Default::default()
            },
            StringMatcher {
                match_pattern: Some(string_matcher::MatchPattern::SafeRegex(RegexMatcher {
                    regex: r"https://.*\.example\.org".into(),
                    ..Default::default()
                })),
                ignore_case: true,
            },
        ],
        allow_methods: "GET,POST".into(),
        allow_headers: "x-custom".into(),
        expose_headers: "x-exposed".into(),
        max_age: "86400".into(),
        allow_credentials: Some(BoolValue { value: true }),
        filter_enabled: Some(RuntimeFractionalPercent {
            default_value: Some(FractionalPercent {
                numerator: 100,
                denominator: 0,
            }),
            ..Default::default()
        }),
        forward_not_matching_preflights: Some(BoolValue { value: false }),
        ..Default::default()
    };
    let abort = HttpFault {
        abort: Some(FaultAbort {
            error_type: Some(fault_abort::ErrorType::GrpcStatus(14)),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut action = to_cluster("c");
    action.retry_policy = Some(rt::RetryPolicy {
        retry_on: route::RETRY_ON.join(","),
        retriable_headers: vec![exact_header("x-retry", "yes")],
        ..Default::default()
    });
    let rc = route_config(vec![rt::Route {
        r#match: prefix("/"),
        action: Some(rt::route::Action::Route(action)),
        typed_per_filter_config: [
            ("envoy.filters.http.cors".to_string(), any(&cors)),
            ("envoy.filters.http.fault".to_string(), any(&abort)),
        ]
        .into(),
        ..Default::default()
    }]);
    let rc = RouteConfig::try_from(&rc).unwrap();
    let route = &rc.virtual_hosts[0].routes[0];
    let cors = route.cors.as_ref().unwrap();
    assert_eq!(cors.allow_origins.len(), 2);
    assert!(cors.allow_origins[1].ignore_case);
    assert_eq!(
        (cors.allow_methods.as_str(), cors.max_age.as_str()),
        ("GET,POST", "86400")
    );
    assert!(cors.allow_credentials && !cors.forward_not_matching_preflights);
    assert_eq!(cors.enabled_per_million, 1_000_000);
    // Envoy answers a gRPC abort with HTTP 200 and the gRPC status.
    let fault = route.fault.as_ref().unwrap();
    assert_eq!(
        (fault.abort, fault.grpc_status),
        (Some((200, 1_000_000)), Some(14))
    );
    let Action::Forward(fwd) = &route.action else {
        panic!()
    };
    let retry = fwd.retry.as_ref().unwrap();
    assert!(retry.retry_on.iter().any(|c| c == "reset-before-request"));
    assert!(retry.retry_on.iter().any(|c| c == "refused-stream"));
    assert_eq!(retry.retriable_headers[0].name, "x-retry");
}

/// A refusal deep in a route keeps its parts typed: the resource, the path of segments and the
/// problem, so no one has to read them back out of the message.
#[test]
fn a_nested_refusal_is_typed_with_its_field_path() {
    let mut route = rt::Route {
        r#match: prefix("/"),
        action: Some(rt::route::Action::Route(to_cluster("c"))),
        ..Default::default()
    };
    let Some(rt::route::Action::Route(a)) = &mut route.action else {
        unreachable!()
    };
    a.hash_policy.push(rt::route_action::HashPolicy {
        policy_specifier: Some(rt::route_action::hash_policy::PolicySpecifier::FilterState(
            Default::default(),
        )),
        ..Default::default()
    });
    let mut rc = route_config(vec![rt::Route {
        r#match: prefix("/a"),
        action: Some(rt::route::Action::Route(to_cluster("c"))),
        ..Default::default()
    }]);
    rc.virtual_hosts[0].routes.push(route);
    let err = RouteConfig::try_from(&rc).unwrap_err();
    assert_eq!(err.kind, Kind::RouteConfiguration);
    assert_eq!(err.name, "15080");
    assert_eq!(
        err.path.0,
        [
            Segment::Field("virtual_hosts"),
            Segment::Named("reviews.default.svc.cluster.local:9080".into()),
            Segment::Field("routes"),
            Segment::Index(1),
            Segment::Field("route"),
            Segment::Field("hash_policy"),
            Segment::Index(0),
            Segment::Field("filter_state"),
        ]
    );
    assert_eq!(err.problem, Problem::Unsupported { detail: None });
    assert_eq!(
        err.to_string(),
        "route configuration \"15080\": virtual_hosts[reviews.default.svc.cluster.local:9080].routes[1].route.hash_policy[0].filter_state is not supported by strait-proxy"
    );
}

/// Istio's per-destination `headers` become the weighted cluster entry's own mutations.
#[test]
fn weighted_clusters_keep_their_own_header_mutations() {
    use envoy_types::pb::envoy::config::core::v3::{HeaderValue as PbHeader, HeaderValueOption};
    let entry =
        |name: &str, weight: u32, add: Option<(&str, &str)>| rt::weighted_cluster::ClusterWeight {
            name: name.into(),
            weight: Some(UInt32Value { value: weight }),
            request_headers_to_add: add
                .map(|(k, v)| HeaderValueOption {
                    header: Some(PbHeader {
                        key: k.into(),
                        value: v.into(),
                        ..Default::default()
                    }),
                    append_action: 2,
                    ..Default::default()
                })
                .into_iter()
                .collect(),
            response_headers_to_remove: vec!["x-internal".into()],
            ..Default::default()
        };
    let rc = route_config(vec![rt::Route {
        r#match: prefix("/"),
        action: Some(rt::route::Action::Route(rt::RouteAction {
            cluster_specifier: Some(rt::route_action::ClusterSpecifier::WeightedClusters(
                rt::WeightedCluster {
                    clusters: vec![entry("v1", 50, Some(("x-a", "1"))), entry("v2", 50, None)],
                    ..Default::default()
                },
            )),
            ..Default::default()
        })),
        ..Default::default()
    }]);
    let rc = RouteConfig::try_from(&rc).unwrap();
    let Action::Forward(fwd) = &rc.virtual_hosts[0].routes[0].action else {
        panic!()
    };
    let Target::Weighted(clusters) = &fwd.target else {
        panic!()
    };
    let v1 = clusters[0].headers.as_ref().unwrap();
    assert_eq!(v1.request.add[0].0.as_str(), "x-a");
    assert!(!v1.request.add[0].2, "OVERWRITE_IF_EXISTS_OR_ADD sets");
    assert_eq!(v1.response.remove[0].as_str(), "x-internal");
    let v2 = clusters[1].headers.as_ref().unwrap();
    assert!(v2.request.add.is_empty());
}

/// One P-256 key (RFC 7517's example).
const EC_JWKS: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0","kid":"k1"}]}"#;

#[test]
fn jwt_authn_runs_ahead_of_rbac_and_what_it_cannot_evaluate_is_refused_at_its_field() {
    use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source};
    use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3 as jwt;
    use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
    let router = http_filter("envoy.filters.http.router", &Router::default());
    let rbac = http_filter(
        "envoy.filters.http.rbac",
        &envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac::default(),
    );
    let with_keys = |source| jwt::JwtAuthentication {
        providers: [(
            "origins-0".to_string(),
            jwt::JwtProvider {
                issuer: "testing@secure.istio.io".into(),
                jwks_source_specifier: Some(source),
                ..Default::default()
            },
        )]
        .into(),
        ..Default::default()
    };
    let local = http_filter(
        "envoy.filters.http.jwt_authn",
        &with_keys(jwt::jwt_provider::JwksSourceSpecifier::LocalJwks(
            DataSource {
                specifier: Some(data_source::Specifier::InlineString(EC_JWKS.into())),
                ..Default::default()
            },
        )),
    );
    let l = Listener::try_from(&hcm_listener(vec![
        local.clone(),
        rbac.clone(),
        router.clone(),
    ]))
    .unwrap();
    let NetworkFilter::Http(hcm) = &l.filter_chains[0].filter else {
        panic!("{l:?}")
    };
    let compiled = hcm.jwt_authn.as_ref().expect("jwt_authn compiled");
    assert_eq!(
        compiled.providers["origins-0"].issuer,
        "testing@secure.istio.io"
    );
    assert_eq!(hcm.rbac.len(), 1);

    // After an RBAC filter, RBAC would not see the payload: refused.
    let err = Listener::try_from(&hcm_listener(vec![rbac, local, router.clone()]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("http_filters[1]") && err.contains("ahead of the RBAC filters"),
        "{err}"
    );

    // remote_jwks: the control plane inlines key sets; strait-proxy does not fetch.
    let remote = http_filter(
        "envoy.filters.http.jwt_authn",
        &with_keys(jwt::jwt_provider::JwksSourceSpecifier::RemoteJwks(
            jwt::RemoteJwks::default(),
        )),
    );
    let err = Listener::try_from(&hcm_listener(vec![remote, router]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("http_filters[0]") && err.contains("remote_jwks"),
        "{err}"
    );
}
