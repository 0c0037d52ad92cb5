//! Clusters and endpoints for Bookinfo-like config, checked field by field against what Istio
//! generates for the same YAML.

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, LbConfig, LbPolicy,
};
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::route::v3::route_action::hash_policy::PolicySpecifier;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    UpstreamProtocolOptions, explicit_http_config::ProtocolConfig,
};
use prost::Message;
use strait_api::parse::Outcome;
use strait_api::parse_bytes;
use strait_registry::{Registry, VipTable};

use super::policy::HTTP_PROTOCOL_OPTIONS;
use crate::translate::{Ctx, translate};
use strait_xds_core::{CaptureMode, Proxy, ProxyRole, XdsResources};

use crate::{ConfigSnapshot, MeshConfig};

const CONFIG: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec:
  selector: {app: reviews}
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: default}
spec:
  selector: {app: ratings}
  ports: [{name: http, port: 9080}, {name: grpc, port: 9090}]
---
apiVersion: v1
kind: Service
metadata: {name: details, namespace: default}
spec:
  selector: {app: details}
  ports: [{name: http, port: 9080}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v1, namespace: default}
spec: {address: 127.0.0.11, labels: {app: reviews, version: v1}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v2, namespace: default}
spec: {address: 127.0.0.12, labels: {app: reviews, version: v2}, locality: us/east/a, weight: 4}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v3, namespace: default}
spec: {address: 127.0.0.13, labels: {app: reviews, version: v3}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: ratings-v1, namespace: default}
spec: {address: 127.0.0.21, labels: {app: ratings, version: v1}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: details-v1, namespace: default}
spec: {address: 127.0.0.31, labels: {app: details, version: v1}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {simple: RANDOM}
    connectionPool:
      tcp: {maxConnections: 100, connectTimeout: 3s, tcpKeepalive: {probes: 3, time: 60s, interval: 10s}}
      http: {http1MaxPendingRequests: 10, http2MaxRequests: 1000, maxRequestsPerConnection: 5, maxRetries: 4, idleTimeout: 30s}
    outlierDetection: {consecutive5xxErrors: 7, interval: 5m, baseEjectionTime: 15m, maxEjectionPercent: 50}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - name: v3
    labels: {version: v3}
    trafficPolicy:
      loadBalancer: {simple: ROUND_ROBIN}
      connectionPool: {tcp: {maxConnections: 2}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings, namespace: default}
spec:
  host: ratings.default.svc.cluster.local
  trafficPolicy:
    outlierDetection: {consecutiveGatewayErrors: 3}
    portLevelSettings:
    - port: {number: 9080}
      connectionPool: {tcp: {maxConnections: 7}}
  subsets:
  - {name: v1, labels: {version: v1}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: details, namespace: default}
spec:
  host: details
  trafficPolicy:
    loadBalancer:
      consistentHash: {httpHeaderName: x-user, ringHash: {minimumRingSize: 2048}}
    connectionPool: {http: {h2UpgradePolicy: UPGRADE}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: httpbin, namespace: default}
spec:
  hosts: [httpbin.org]
  resolution: DNS
  ports: [{number: 80, name: http, protocol: HTTP}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: one-address, namespace: default}
spec:
  hosts: [db.example.com]
  resolution: DNS_ROUND_ROBIN
  ports: [{number: 5432, name: tcp, protocol: TCP}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: anything, namespace: default}
spec:
  hosts: ["*.wikipedia.org"]
  resolution: NONE
  ports: [{number: 443, name: tls, protocol: TLS}]
"#;

fn snapshot(yaml: &str) -> (ConfigSnapshot, Registry) {
    let resources: Vec<_> = parse_bytes("test.yaml", yaml.as_bytes())
        .into_iter()
        .map(|p| match p.outcome {
            Outcome::Resource(r) => *r,
            other => panic!("document {} did not parse: {other:?}", p.source.index),
        })
        .collect();
    let mut vips = VipTable::default();
    let registry = Registry::build(&resources, &mut vips, "cluster.local");
    (
        ConfigSnapshot::new(1, MeshConfig::default(), resources),
        registry,
    )
}

fn proxy(workload: &str, namespace: &str, ip: &str, version: &str) -> Proxy {
    Proxy {
        id: String::new(),
        role: ProxyRole::Sidecar,
        ip: ip.parse().unwrap(),
        workload: workload.into(),
        namespace: namespace.into(),
        labels: [("app", "reviews"), ("version", version)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        capture: CaptureMode::Iptables,
        service_account: "default".into(),
        app_address: None,
        mtls: false,
    }
}

fn resources_for(yaml: &str, p: &Proxy) -> XdsResources {
    let (config, registry) = snapshot(yaml);
    translate(&config, &registry, p)
}

fn bookinfo() -> XdsResources {
    resources_for(
        CONFIG,
        &proxy("productpage-v1", "default", "127.0.0.2", "v1"),
    )
}

fn discovery(c: &Cluster) -> DiscoveryType {
    match c.cluster_discovery_type {
        Some(ClusterDiscoveryType::Type(t)) => DiscoveryType::try_from(t).unwrap(),
        ref other => panic!("{}: no discovery type: {other:?}", c.name),
    }
}

fn lb(c: &Cluster) -> LbPolicy {
    LbPolicy::try_from(c.lb_policy).unwrap()
}

fn addresses(cla: &ClusterLoadAssignment) -> Vec<(String, u32, u32)> {
    cla.endpoints
        .iter()
        .flat_map(|l| &l.lb_endpoints)
        .map(|e| {
            let Some(HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
                panic!("no endpoint")
            };
            let Some(AddressKind::SocketAddress(sa)) =
                ep.address.as_ref().and_then(|a| a.address.as_ref())
            else {
                panic!("no socket address")
            };
            let Some(PortSpecifier::PortValue(port)) = sa.port_specifier else {
                panic!("no port")
            };
            (
                sa.address.clone(),
                port,
                e.load_balancing_weight.map_or(1, |w| w.value),
            )
        })
        .collect()
}

fn http_options(c: &Cluster) -> Option<HttpProtocolOptions> {
    c.typed_extension_protocol_options
        .get(HTTP_PROTOCOL_OPTIONS)
        .map(|any| HttpProtocolOptions::decode(any.value.as_slice()).unwrap())
}

fn is_h2(c: &Cluster) -> bool {
    matches!(
        http_options(c).and_then(|h| h.upstream_protocol_options),
        Some(UpstreamProtocolOptions::ExplicitHttpConfig(e))
            if matches!(e.protocol_config, Some(ProtocolConfig::Http2ProtocolOptions(_)))
    )
}

#[test]
fn cluster_names_and_types() {
    let out = bookinfo();
    let names: Vec<&str> = out.clusters.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "BlackHoleCluster",
            "InboundPassthroughCluster",
            "PassthroughCluster",
            "outbound|443||*.wikipedia.org",
            "outbound|5432||db.example.com",
            "outbound|80||httpbin.org",
            "outbound|9080|v1|ratings.default.svc.cluster.local",
            "outbound|9080|v1|reviews.default.svc.cluster.local",
            "outbound|9080|v2|reviews.default.svc.cluster.local",
            "outbound|9080|v3|reviews.default.svc.cluster.local",
            "outbound|9080||details.default.svc.cluster.local",
            "outbound|9080||ratings.default.svc.cluster.local",
            "outbound|9080||reviews.default.svc.cluster.local",
            "outbound|9090|v1|ratings.default.svc.cluster.local",
            "outbound|9090||ratings.default.svc.cluster.local",
        ]
    );
    let c = |n: &str| &out.clusters[n];

    let reviews = c("outbound|9080||reviews.default.svc.cluster.local");
    assert_eq!(discovery(reviews), DiscoveryType::Eds);
    let eds = reviews.eds_cluster_config.as_ref().unwrap();
    assert_eq!(eds.service_name, reviews.name);
    assert!(
        eds.eds_config
            .as_ref()
            .unwrap()
            .config_source_specifier
            .is_some()
    );
    assert!(reviews.load_assignment.is_none());
    assert_eq!(reviews.connect_timeout.unwrap().seconds, 3);

    let dns = c("outbound|80||httpbin.org");
    assert_eq!(discovery(dns), DiscoveryType::StrictDns);
    assert_eq!(lb(dns), LbPolicy::LeastRequest);
    assert_eq!(
        addresses(dns.load_assignment.as_ref().unwrap()),
        [("httpbin.org".to_string(), 80, 1)]
    );
    assert!(!out.endpoints.contains_key(&dns.name));
    assert_eq!(dns.connect_timeout.unwrap().seconds, 10);

    assert_eq!(
        discovery(c("outbound|5432||db.example.com")),
        DiscoveryType::LogicalDns
    );

    let none = c("outbound|443||*.wikipedia.org");
    assert_eq!(discovery(none), DiscoveryType::OriginalDst);
    assert_eq!(lb(none), LbPolicy::ClusterProvided);
    assert!(none.load_assignment.is_none());

    let pass = c("PassthroughCluster");
    assert_eq!(discovery(pass), DiscoveryType::OriginalDst);
    assert_eq!(lb(pass), LbPolicy::ClusterProvided);
    let hole = c("BlackHoleCluster");
    assert_eq!(discovery(hole), DiscoveryType::Static);
    assert!(hole.load_assignment.is_none());

    // gRPC ports speak HTTP/2; HTTP ports do not (unless upgraded, as details is).
    assert!(is_h2(c("outbound|9090||ratings.default.svc.cluster.local")));
    assert!(!is_h2(c(
        "outbound|9080||ratings.default.svc.cluster.local"
    )));
    assert!(is_h2(c("outbound|9080||details.default.svc.cluster.local")));
}

#[test]
fn subsets_get_their_endpoints() {
    let out = bookinfo();
    let eps = |n: &str| addresses(&out.endpoints[n]);
    assert_eq!(
        eps("outbound|9080||reviews.default.svc.cluster.local"),
        [
            ("127.0.0.11".to_string(), 9080, 1),
            ("127.0.0.13".to_string(), 9080, 1),
            ("127.0.0.12".to_string(), 9080, 4),
        ],
        "grouped by locality: the one without comes first"
    );
    assert_eq!(
        eps("outbound|9080|v1|reviews.default.svc.cluster.local"),
        [("127.0.0.11".to_string(), 9080, 1)]
    );
    assert_eq!(
        eps("outbound|9080|v2|reviews.default.svc.cluster.local"),
        [("127.0.0.12".to_string(), 9080, 4)]
    );
    let v2 = &out.endpoints["outbound|9080|v2|reviews.default.svc.cluster.local"];
    let locality = v2.endpoints[0].locality.as_ref().unwrap();
    assert_eq!(
        (
            locality.region.as_str(),
            locality.zone.as_str(),
            locality.sub_zone.as_str()
        ),
        ("us", "east", "a")
    );
    assert_eq!(
        v2.cluster_name,
        "outbound|9080|v2|reviews.default.svc.cluster.local"
    );
    // Every EDS cluster has its assignment, and nothing else has one.
    let eds: Vec<&String> = out
        .clusters
        .values()
        .filter(|c| discovery(c) == DiscoveryType::Eds)
        .map(|c| &c.name)
        .collect();
    assert_eq!(eds, out.endpoints.keys().collect::<Vec<_>>());
}

#[test]
fn traffic_policy_becomes_circuit_breakers_and_outlier_detection() {
    let out = bookinfo();
    let c = &out.clusters["outbound|9080|v1|reviews.default.svc.cluster.local"];
    assert_eq!(lb(c), LbPolicy::Random);
    let t = &c.circuit_breakers.as_ref().unwrap().thresholds[0];
    assert_eq!(t.max_connections.unwrap().value, 100);
    assert_eq!(t.max_pending_requests.unwrap().value, 10);
    assert_eq!(t.max_requests.unwrap().value, 1000);
    assert_eq!(t.max_retries.unwrap().value, 4);
    assert!(t.track_remaining);
    assert_eq!(c.connect_timeout.unwrap().seconds, 3);
    let ka = c
        .upstream_connection_options
        .as_ref()
        .unwrap()
        .tcp_keepalive
        .unwrap();
    assert_eq!(
        (
            ka.keepalive_probes.unwrap().value,
            ka.keepalive_time.unwrap().value,
            ka.keepalive_interval.unwrap().value
        ),
        (3, 60, 10)
    );
    let common = http_options(c)
        .unwrap()
        .common_http_protocol_options
        .unwrap();
    assert_eq!(common.idle_timeout.unwrap().seconds, 30);
    assert_eq!(common.max_requests_per_connection.unwrap().value, 5);

    let od = c.outlier_detection.as_ref().unwrap();
    assert_eq!(od.consecutive_5xx.unwrap().value, 7);
    assert_eq!(od.enforcing_consecutive_5xx.unwrap().value, 100);
    assert_eq!(od.enforcing_success_rate.unwrap().value, 0);
    assert_eq!(od.interval.unwrap().seconds, 300);
    assert_eq!(od.base_ejection_time.unwrap().seconds, 900);
    assert_eq!(od.max_ejection_percent.unwrap().value, 50);
    assert!(od.consecutive_gateway_failure.is_none());
    let panic = c
        .common_lb_config
        .as_ref()
        .unwrap()
        .healthy_panic_threshold
        .unwrap();
    assert_eq!(panic.value, 0.0);

    // The subset's policy replaces the rule's, field by field.
    let v3 = &out.clusters["outbound|9080|v3|reviews.default.svc.cluster.local"];
    assert_eq!(lb(v3), LbPolicy::RoundRobin);
    let t = &v3.circuit_breakers.as_ref().unwrap().thresholds[0];
    assert_eq!(t.max_connections.unwrap().value, 2);
    assert_eq!(t.max_pending_requests.unwrap().value, u32::MAX);
    assert_eq!(
        v3.outlier_detection
            .as_ref()
            .unwrap()
            .consecutive_5xx
            .unwrap()
            .value,
        7
    );

    // Port-level settings replace the whole policy for their port; other ports keep it.
    let r9080 = &out.clusters["outbound|9080||ratings.default.svc.cluster.local"];
    let t = &r9080.circuit_breakers.as_ref().unwrap().thresholds[0];
    assert_eq!(t.max_connections.unwrap().value, 7);
    assert!(r9080.outlier_detection.is_none());
    let r9090 = &out.clusters["outbound|9090|v1|ratings.default.svc.cluster.local"];
    let od = r9090.outlier_detection.as_ref().unwrap();
    assert_eq!(od.consecutive_gateway_failure.unwrap().value, 3);
    assert_eq!(od.enforcing_consecutive_gateway_failure.unwrap().value, 100);
    assert!(od.consecutive_5xx.is_none());
    assert_eq!(
        r9090.circuit_breakers.as_ref().unwrap().thresholds[0]
            .max_connections
            .unwrap()
            .value,
        u32::MAX
    );

    // No rule: Istio's defaults.
    let plain = &out.clusters["outbound|80||httpbin.org"];
    assert!(plain.outlier_detection.is_none());
    assert_eq!(
        plain.circuit_breakers.as_ref().unwrap().thresholds[0]
            .max_retries
            .unwrap()
            .value,
        u32::MAX
    );
}

#[test]
fn consistent_hash_sets_the_cluster_and_the_route_hash_policy() {
    let (config, registry) = snapshot(CONFIG);
    let p = proxy("productpage-v1", "default", "127.0.0.2", "v1");
    let out = translate(&config, &registry, &p);
    let c = &out.clusters["outbound|9080||details.default.svc.cluster.local"];
    assert_eq!(lb(c), LbPolicy::RingHash);
    let Some(LbConfig::RingHashLbConfig(ring)) = &c.lb_config else {
        panic!("no ring hash config: {:?}", c.lb_config)
    };
    assert_eq!(ring.minimum_ring_size.unwrap().value, 2048);

    let ctx = Ctx::new(&config, &registry, &p);
    let hp = super::hash_policy(&ctx, "details.default.svc.cluster.local", "", 9080).unwrap();
    let Some(PolicySpecifier::Header(h)) = hp.policy_specifier else {
        panic!("not a header hash: {hp:?}")
    };
    assert_eq!(h.header_name, "x-user");
    assert!(super::hash_policy(&ctx, "reviews.default.svc.cluster.local", "v1", 9080).is_none());
    assert!(super::hash_policy(&ctx, "nowhere.example.com", "", 80).is_none());
}

#[test]
fn inbound_clusters_for_the_proxys_own_services() {
    let out = resources_for(CONFIG, &proxy("reviews-v2", "default", "127.0.0.12", "v2"));
    let inbound: Vec<&str> = out
        .clusters
        .keys()
        .filter(|n| n.starts_with("inbound|"))
        .map(String::as_str)
        .collect();
    assert_eq!(inbound, ["inbound|9080||"]);
    let c = &out.clusters["inbound|9080||"];
    assert_eq!(discovery(c), DiscoveryType::Static);
    assert_eq!(
        addresses(c.load_assignment.as_ref().unwrap()),
        [("127.0.0.1".to_string(), 9080, 1)]
    );
    // A proxy whose app has an address of its own (no capture) sends inbound traffic there.
    let own_address = Proxy {
        app_address: Some("127.45.0.12".parse().unwrap()),
        ..proxy("reviews-v2", "default", "127.0.0.12", "v2")
    };
    let out = resources_for(CONFIG, &own_address);
    assert_eq!(
        addresses(
            out.clusters["inbound|9080||"]
                .load_assignment
                .as_ref()
                .unwrap()
        ),
        [("127.45.0.12".to_string(), 9080, 1)]
    );
    // Another workload on the same address is not this proxy.
    let other = resources_for(
        CONFIG,
        &proxy("someone-else", "default", "127.0.0.99", "v9"),
    );
    assert!(!other.clusters.keys().any(|n| n.starts_with("inbound|")));
}

const RULES_IN_SEVERAL_NAMESPACES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec:
  selector: {app: reviews}
  ports: [{name: http, port: 9080}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v1, namespace: default}
spec: {address: 127.0.0.11, labels: {app: reviews, version: v1}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: from-service-ns, namespace: default}
spec:
  host: reviews
  subsets: [{name: svc-ns, labels: {version: v1}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: root, namespace: istio-system}
spec:
  host: "*.svc.cluster.local"
  subsets: [{name: root, labels: {version: v1}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: local, namespace: client}
spec:
  host: reviews.default.svc.cluster.local
  exportTo: ["."]
  subsets: [{name: client-ns, labels: {version: v1}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: private, namespace: default}
spec:
  host: "*.default.svc.cluster.local"
  exportTo: ["."]
  subsets: [{name: private, labels: {version: v1}}]
"#;

#[test]
fn destination_rules_are_found_as_istio_finds_them() {
    let subsets = |ns: &str| -> Vec<String> {
        let out = resources_for(
            RULES_IN_SEVERAL_NAMESPACES,
            &proxy("p", ns, "127.0.0.50", "v1"),
        );
        out.clusters
            .keys()
            .filter_map(|n| {
                let parts: Vec<&str> = n.split('|').collect();
                (parts.len() == 4 && !parts[2].is_empty()).then(|| parts[2].to_string())
            })
            .collect()
    };
    // The proxy's own namespace first, whatever its exportTo.
    assert_eq!(subsets("client"), ["client-ns"]);
    // Then the service's namespace: the exact host beats the (private) wildcard.
    assert_eq!(subsets("default"), ["svc-ns"]);
    assert_eq!(subsets("elsewhere"), ["svc-ns"]);
    // Then the root namespace, when the service's namespace has none for this proxy.
    let without = RULES_IN_SEVERAL_NAMESPACES.replace(
        "{name: from-service-ns, namespace: default}",
        "{name: from-service-ns, namespace: unrelated}",
    );
    let out = resources_for(&without, &proxy("p", "elsewhere", "127.0.0.50", "v1"));
    assert!(
        out.clusters
            .contains_key("outbound|9080|root|reviews.default.svc.cluster.local"),
        "{:?}",
        out.clusters.keys().collect::<Vec<_>>()
    );
}

#[test]
fn passthrough_load_balancer_drops_the_endpoints() {
    let yaml = format!(
        "{CONFIG}---\n{}",
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: aa-reviews, namespace: default}
spec:
  host: reviews.default.svc.cluster.local
  trafficPolicy: {loadBalancer: {simple: PASSTHROUGH}}
"#
    );
    let out = resources_for(
        &yaml,
        &proxy("productpage-v1", "default", "127.0.0.2", "v1"),
    );
    let c = &out.clusters["outbound|9080||reviews.default.svc.cluster.local"];
    assert_eq!(discovery(c), DiscoveryType::OriginalDst);
    assert_eq!(lb(c), LbPolicy::ClusterProvided);
    assert!(c.eds_cluster_config.is_none());
    assert!(!out.endpoints.contains_key(&c.name));
}

#[test]
fn translate_hosts_matches_the_full_translation_for_those_hosts() {
    let (config, registry) = snapshot(CONFIG);
    let p = proxy("productpage", "default", "127.0.0.40", "v1");
    let full = translate(&config, &registry, &p);
    let hosts: std::collections::BTreeSet<String> =
        ["reviews.default.svc.cluster.local".into()].into();
    let partial = crate::translate::translate_hosts(&config, &registry, &p, &hosts);
    let of_reviews = |name: &&String| name.ends_with("|reviews.default.svc.cluster.local");
    let want: Vec<&String> = full.clusters.keys().filter(of_reviews).collect();
    // The plain cluster and one per subset of the DestinationRule.
    assert!(want.len() > 1, "{want:?}");
    assert_eq!(partial.clusters.keys().collect::<Vec<_>>(), want);
    for (name, c) in &partial.clusters {
        assert_eq!(c, &full.clusters[name]);
    }
    let want: Vec<&String> = full.endpoints.keys().filter(of_reviews).collect();
    assert!(!want.is_empty());
    assert_eq!(partial.endpoints.keys().collect::<Vec<_>>(), want);
    for (name, cla) in &partial.endpoints {
        assert_eq!(cla, &full.endpoints[name]);
    }
    assert!(partial.listeners.is_empty() && partial.routes.is_empty());
}

#[test]
fn the_same_config_encodes_to_the_same_bytes() {
    // Versions are hashes of the encoded bytes: a map (cluster and endpoint metadata, a
    // route's per-filter config) encoded in a different order each time would make every
    // unchanged resource look changed and be pushed again.
    let (config, registry) = snapshot(CONFIG);
    let p = proxy("productpage", "default", "127.0.0.40", "v1");
    let first = translate(&config, &registry, &p);
    for _ in 0..20 {
        let again = translate(&config, &registry, &p);
        for ty in strait_xds_core::TypeUrl::ALL {
            let a = first.encode(ty);
            let b = again.encode(ty);
            assert_eq!(a.len(), b.len());
            for ((name, x), (_, y)) in a.iter().zip(&b) {
                assert_eq!(x.value, y.value, "{name} encodes differently");
            }
        }
    }
}
