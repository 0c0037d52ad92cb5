//! Envoy bootstraps that connect to Strait's control plane.
//!
//! The bootstrap names the proxy (Istio's node id and metadata, so the control plane knows who is
//! asking) and points ADS at the control plane over gRPC: a STATIC cluster `xds-grpc` speaking
//! HTTP/2, `ads_config` with SotW (`GRPC`) or Delta (`DELTA_GRPC`), and CDS and LDS both over
//! ADS. Everything else (listeners, routes, clusters, endpoints) comes from the control plane.

use std::net::SocketAddr;

use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use serde_json::json;

use strait_xds_core::Proxy;

/// The name of the bootstrap's cluster that reaches the control plane (Istio's name).
pub const XDS_CLUSTER: &str = "xds-grpc";

/// The server name of the control plane's TLS port (Istio's istiod).
pub const CONTROL_PLANE_SERVER_NAME: &str = "istiod.istio-system.svc";

/// The node metadata key that carries the worker thread count Envoy should be started with
/// (`--concurrency`). Envoy itself ignores it; launchers (the test harness, `strait run`) read it.
pub const CONCURRENCY_METADATA: &str = "CONCURRENCY";

/// The proxy-wide limit on open downstream connections.
const MAX_DOWNSTREAM_CONNECTIONS: i64 = 1_000_000;

/// What a bootstrap needs to know.
#[derive(Debug, Clone)]
pub struct BootstrapOptions {
    /// The proxy the bootstrap is for: node id, cluster and metadata come from it.
    pub proxy: Proxy,
    /// The control plane's ADS (gRPC) address.
    pub xds_addr: SocketAddr,
    /// More control-plane replicas (on one shared store) besides `xds_addr`: endpoints of the
    /// same xDS cluster, so that Envoy's ADS stream reconnects to another when one dies.
    pub more_xds: Vec<SocketAddr>,
    /// Where Envoy's admin interface listens.
    pub admin_addr: SocketAddr,
    /// Delta xDS (`DELTA_GRPC`) rather than state-of-the-world (`GRPC`).
    pub delta: bool,
    /// Worker threads, recorded in the node metadata as [`CONCURRENCY_METADATA`] for the launcher.
    pub concurrency: Option<u32>,
    /// Mutual TLS: the node agent's SDS socket, and the trust domain. With it, Envoy gets its
    /// certificate (`default`) and the trust bundle (`ROOTCA`) from the agent over SDS (the
    /// `sds-grpc` cluster, as Istio's bootstrap has it), and connects to the control plane's TLS
    /// port (`xds_addr`) with that certificate, checking the control plane's identity.
    pub identity: Option<BootstrapIdentity>,
    /// Where Prometheus scrapes the proxy's stats (Istio's `POD_IP:15090`): a listener there
    /// serves the admin interface's `/stats/prometheus`, and nothing else of it, as Istio's
    /// bootstrap does. None: no such listener (the admin port still serves the stats).
    pub prometheus_addr: Option<SocketAddr>,
}

/// See [`BootstrapOptions::identity`].
#[derive(Debug, Clone)]
pub struct BootstrapIdentity {
    pub sds_socket: std::path::PathBuf,
    pub trust_domain: String,
}

/// The name of the bootstrap's cluster to the node agent's SDS socket (Istio's).
pub const SDS_CLUSTER: &str = "sds-grpc";

/// An SDS secret config for `name` served by the node agent (Istio's shape: wait for it).
pub fn agent_secret(name: &str) -> serde_json::Value {
    json!({
        "name": name,
        "sds_config": {
            "api_config_source": {
                "api_type": "GRPC",
                "set_node_on_first_message_only": true,
                "transport_api_version": "V3",
                "grpc_services": [{ "envoy_grpc": { "cluster_name": SDS_CLUSTER } }],
            },
            "resource_api_version": "V3",
            "initial_fetch_timeout": "0s",
        },
    })
}

/// The node's cluster: the workload's `app` label, or else its name.
pub fn node_cluster(proxy: &Proxy) -> &str {
    proxy
        .labels
        .get("app")
        .map(String::as_str)
        .unwrap_or(&proxy.workload)
}

/// An Envoy v3 bootstrap, as YAML, that fetches all its config from the control plane over ADS.
pub fn envoy_bootstrap(opts: &BootstrapOptions) -> String {
    let proxy = &opts.proxy;
    let node_id = Proxy::node_id(proxy.role, proxy.ip, &proxy.workload, &proxy.namespace);
    let mut metadata = struct_to_json(&proxy.node_metadata());
    if let (Some(n), Some(map)) = (opts.concurrency, metadata.as_object_mut()) {
        map.insert(CONCURRENCY_METADATA.to_string(), json!(n.to_string()));
    }
    let ads_over_grpc = json!({ "ads": {}, "resource_api_version": "V3" });
    let http2 = json!({
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {
                "http2_protocol_options": {
                    // xDS keeps one long stream: keep it alive through idle NATs.
                    "connection_keepalive": { "interval": "30s", "timeout": "10s" },
                },
            },
        },
    });
    let mut xds_cluster = json!({
        "name": XDS_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": http2,
        "load_assignment": {
            "cluster_name": XDS_CLUSTER,
            "endpoints": [{
                "lb_endpoints": std::iter::once(opts.xds_addr)
                    .chain(opts.more_xds.iter().copied())
                    .map(|a| json!({"endpoint": { "address": socket_address(a) }}))
                    .collect::<Vec<_>>(),
            }],
        },
    });
    let mut clusters = Vec::new();
    if let Some(id) = &opts.identity {
        xds_cluster["transport_socket"] = json!({
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": CONTROL_PLANE_SERVER_NAME,
                "common_tls_context": {
                    "alpn_protocols": ["h2"],
                    "tls_certificate_sds_secret_configs": [agent_secret("default")],
                    "combined_validation_context": {
                        "default_validation_context": {
                            "match_typed_subject_alt_names": [{
                                "san_type": "URI",
                                "matcher": { "exact": format!("spiffe://{}/ns/istio-system/sa/istiod", id.trust_domain) },
                            }],
                        },
                        "validation_context_sds_secret_config": agent_secret("ROOTCA"),
                    },
                },
            },
        });
        clusters.push(json!({
            "name": SDS_CLUSTER,
            "type": "STATIC",
            "connect_timeout": "1s",
            "typed_extension_protocol_options": http2,
            "load_assignment": {
                "cluster_name": SDS_CLUSTER,
                "endpoints": [{
                    "lb_endpoints": [{
                        "endpoint": { "address": { "pipe": { "path": id.sds_socket.display().to_string() } } },
                    }],
                }],
            },
        }));
    }
    clusters.insert(0, xds_cluster);
    let mut listeners = Vec::new();
    if let Some(addr) = opts.prometheus_addr {
        let (cluster, listener) = prometheus_stats(addr, opts.admin_addr);
        clusters.push(cluster);
        listeners.push(listener);
    }
    let mut static_resources = json!({ "clusters": clusters });
    if !listeners.is_empty() {
        static_resources["listeners"] = json!(listeners);
    }

    // Top-level keys in reading order; the sections themselves are plain JSON values.
    let sections = [
        (
            "node",
            json!({
                "id": node_id,
                "cluster": node_cluster(proxy),
                "metadata": metadata,
            }),
        ),
        (
            "dynamic_resources",
            json!({
                "ads_config": {
                    "api_type": if opts.delta { "DELTA_GRPC" } else { "GRPC" },
                    "transport_api_version": "V3",
                    "set_node_on_first_message_only": true,
                    "grpc_services": [{ "envoy_grpc": { "cluster_name": XDS_CLUSTER } }],
                },
                "cds_config": ads_over_grpc,
                "lds_config": ads_over_grpc,
            }),
        ),
        ("static_resources", static_resources),
        (
            "admin",
            json!({
                "address": socket_address(opts.admin_addr),
            }),
        ),
        (
            // A connection limit (Envoy warns at startup without one); high, as Istio's.
            "overload_manager",
            json!({
                "resource_monitors": [{
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
                        "max_active_downstream_connections": MAX_DOWNSTREAM_CONNECTIONS,
                    },
                }],
            }),
        ),
        (
            "layered_runtime",
            json!({
                "layers": [
                    // As Istio's bootstrap: regexes as large as Istio accepts are not refused by
                    // Envoy's default RE2 program-size limit (100).
                    { "name": "static", "static_layer": { "re2.max_program_size.error_level": 32768 } },
                    { "name": "admin", "admin_layer": {} },
                ],
            }),
        ),
    ];
    let mut doc = serde_yaml_ng::Mapping::new();
    for (key, section) in sections {
        let section = serde_yaml_ng::to_value(&section).expect("JSON values convert to YAML");
        doc.insert(key.into(), section);
    }
    serde_yaml_ng::to_string(&doc).expect("YAML values serialize")
}

/// The name of the bootstrap's cluster to Envoy's own admin interface (Istio's).
pub const PROMETHEUS_STATS_CLUSTER: &str = "prometheus_stats";

/// Istio's stats listener: `/stats/prometheus` on `addr`, proxied to the admin interface; every
/// other path is a 404, so the admin interface's other pages stay on the admin port.
fn prometheus_stats(addr: SocketAddr, admin: SocketAddr) -> (serde_json::Value, serde_json::Value) {
    let cluster = json!({
        "name": PROMETHEUS_STATS_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "0.250s",
        "load_assignment": {
            "cluster_name": PROMETHEUS_STATS_CLUSTER,
            "endpoints": [{
                "lb_endpoints": [{ "endpoint": { "address": socket_address(admin) } }],
            }],
        },
    });
    let listener = json!({
        "name": format!("{}_{}", addr.ip(), addr.port()),
        "address": socket_address(addr),
        "filter_chains": [{
            "filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "stats",
                    "codec_type": "AUTO",
                    "route_config": {
                        "virtual_hosts": [{
                            "name": "backend",
                            "domains": ["*"],
                            "routes": [{
                                "match": { "prefix": "/stats/prometheus" },
                                "route": { "cluster": PROMETHEUS_STATS_CLUSTER },
                            }],
                        }],
                    },
                    "http_filters": [{
                        "name": "envoy.filters.http.router",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
                        },
                    }],
                },
            }],
        }],
    });
    (cluster, listener)
}

fn socket_address(addr: SocketAddr) -> serde_json::Value {
    json!({
        "socket_address": { "address": addr.ip().to_string(), "port_value": addr.port() },
    })
}

/// A protobuf `Struct` as the JSON (and so YAML) Envoy reads it as.
fn struct_to_json(s: &Struct) -> serde_json::Value {
    serde_json::Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), value_to_json(v)))
            .collect(),
    )
}

fn value_to_json(v: &Value) -> serde_json::Value {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::NumberValue(n)) => json!(n),
        Some(Kind::StringValue(s)) => json!(s),
        Some(Kind::BoolValue(b)) => json!(b),
        Some(Kind::StructValue(s)) => struct_to_json(s),
        Some(Kind::ListValue(l)) => l.values.iter().map(value_to_json).collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::process::Command;

    use envoy_types::pb::envoy::config::core::v3::Node;
    use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
        AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
    };
    use envoy_types::pb::envoy::service::discovery::v3::{
        DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
    };

    use super::*;
    use strait_xds_core::{CaptureMode, ProxyRole};

    fn proxy(role: ProxyRole, capture: CaptureMode) -> Proxy {
        let (workload, labels) = match role {
            ProxyRole::Sidecar => (
                "reviews-v1-5c7b9",
                [
                    ("app".to_string(), "reviews".to_string()),
                    ("version".to_string(), "v1".to_string()),
                ]
                .into(),
            ),
            ProxyRole::Gateway => (
                "istio-ingressgateway-7d4f",
                [("istio".to_string(), "ingressgateway".to_string())].into(),
            ),
        };
        Proxy {
            id: String::new(),
            role,
            ip: "127.0.10.7".parse().unwrap(),
            workload: workload.into(),
            namespace: "bookinfo".into(),
            labels,
            capture,
            service_account: "bookinfo-reviews".into(),
            app_address: None,
            mtls: false,
        }
    }

    fn options(proxy: Proxy, delta: bool) -> BootstrapOptions {
        BootstrapOptions {
            proxy,
            xds_addr: "127.0.0.1:15010".parse().unwrap(),
            more_xds: Vec::new(),
            admin_addr: "127.0.10.7:15000".parse().unwrap(),
            delta,
            concurrency: None,
            identity: None,
            prometheus_addr: None,
        }
    }

    fn parse(yaml: &str) -> serde_json::Value {
        serde_yaml_ng::from_str(yaml).expect("the bootstrap is YAML")
    }

    #[test]
    fn names_the_node_as_istio_does() {
        let opts = BootstrapOptions {
            concurrency: Some(4),
            identity: None,
            prometheus_addr: None,
            ..options(proxy(ProxyRole::Sidecar, CaptureMode::None), false)
        };
        let b = parse(&envoy_bootstrap(&opts));
        let node = &b["node"];
        assert_eq!(
            node["id"],
            "sidecar~127.0.10.7~reviews-v1-5c7b9.bookinfo~bookinfo.svc.cluster.local"
        );
        assert_eq!(node["cluster"], "reviews");
        let meta = &node["metadata"];
        assert_eq!(meta["NAMESPACE"], "bookinfo");
        assert_eq!(meta["NAME"], "reviews-v1-5c7b9");
        assert_eq!(meta["SERVICE_ACCOUNT"], "bookinfo-reviews");
        assert_eq!(meta["INSTANCE_IPS"], "127.0.10.7");
        assert_eq!(meta["INTERCEPTION_MODE"], "NONE");
        assert_eq!(meta["LABELS"], json!({ "app": "reviews", "version": "v1" }));
        assert_eq!(meta[CONCURRENCY_METADATA], "4");

        let gateway = parse(&envoy_bootstrap(&options(
            proxy(ProxyRole::Gateway, CaptureMode::Iptables),
            false,
        )));
        assert!(
            gateway["node"]["id"]
                .as_str()
                .unwrap()
                .starts_with("router~127.0.10.7~istio-ingressgateway-7d4f.bookinfo~")
        );
        // No app label: the cluster is the workload name.
        assert_eq!(gateway["node"]["cluster"], "istio-ingressgateway-7d4f");
        assert_eq!(gateway["node"]["metadata"]["INTERCEPTION_MODE"], "REDIRECT");
        assert!(
            gateway["node"]["metadata"]
                .get(CONCURRENCY_METADATA)
                .is_none()
        );
    }

    #[test]
    fn the_node_round_trips_through_proxy_from_node() {
        // What Envoy sends back is what the control plane reads: the same Proxy.
        let original = proxy(ProxyRole::Sidecar, CaptureMode::Iptables);
        let b = parse(&envoy_bootstrap(&options(original.clone(), true)));
        let node = Node {
            id: b["node"]["id"].as_str().unwrap().to_string(),
            metadata: Some(json_to_struct(&b["node"]["metadata"])),
            ..Default::default()
        };
        let read = Proxy::from_node(&node).unwrap();
        assert_eq!(
            read,
            Proxy {
                id: node.id.clone(),
                ..original
            }
        );
    }

    fn json_to_struct(v: &serde_json::Value) -> Struct {
        let fields = v
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| {
                let kind = match v {
                    serde_json::Value::String(s) => Kind::StringValue(s.clone()),
                    serde_json::Value::Object(_) => Kind::StructValue(json_to_struct(v)),
                    other => panic!("unexpected metadata value {other}"),
                };
                (k.clone(), Value { kind: Some(kind) })
            })
            .collect();
        Struct { fields }
    }

    #[test]
    fn connects_to_the_control_plane_over_ads() {
        for (delta, api_type) in [(false, "GRPC"), (true, "DELTA_GRPC")] {
            let opts = options(proxy(ProxyRole::Sidecar, CaptureMode::Iptables), delta);
            let b = parse(&envoy_bootstrap(&opts));
            let dynamic = &b["dynamic_resources"];
            let ads = &dynamic["ads_config"];
            assert_eq!(ads["api_type"], api_type);
            assert_eq!(ads["transport_api_version"], "V3");
            assert_eq!(ads["set_node_on_first_message_only"], true);
            assert_eq!(
                ads["grpc_services"][0]["envoy_grpc"]["cluster_name"],
                XDS_CLUSTER
            );
            for key in ["cds_config", "lds_config"] {
                assert_eq!(
                    dynamic[key],
                    json!({ "ads": {}, "resource_api_version": "V3" })
                );
            }

            let clusters = b["static_resources"]["clusters"].as_array().unwrap();
            assert_eq!(clusters.len(), 1);
            let xds = &clusters[0];
            assert_eq!(xds["name"], XDS_CLUSTER);
            assert_eq!(xds["type"], "STATIC");
            assert_eq!(xds["connect_timeout"], "1s");
            let http = &xds["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
            assert_eq!(
                http["@type"],
                "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
            );
            assert!(http["explicit_http_config"]["http2_protocol_options"].is_object());
            assert_eq!(
                xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"],
                json!({ "address": "127.0.0.1", "port_value": 15010 })
            );
            assert_eq!(
                b["admin"]["address"]["socket_address"],
                json!({ "address": "127.0.10.7", "port_value": 15000 })
            );
        }
    }

    #[test]
    fn ipv6_addresses_are_plain_ips() {
        let opts = BootstrapOptions {
            xds_addr: "[::1]:15010".parse().unwrap(),
            more_xds: Vec::new(),
            ..options(proxy(ProxyRole::Sidecar, CaptureMode::None), false)
        };
        let b = parse(&envoy_bootstrap(&opts));
        assert_eq!(
            b["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"]
                [0]["endpoint"]["address"]["socket_address"]["address"],
            "::1"
        );
    }

    #[test]
    fn serves_prometheus_stats_on_istios_port_when_asked() {
        let opts = options(proxy(ProxyRole::Sidecar, CaptureMode::Iptables), true);
        let b = parse(&envoy_bootstrap(&opts));
        assert!(b["static_resources"].get("listeners").is_none());

        let opts = BootstrapOptions {
            prometheus_addr: Some("10.44.0.9:15090".parse().unwrap()),
            ..opts
        };
        let b = parse(&envoy_bootstrap(&opts));
        let listeners = b["static_resources"]["listeners"].as_array().unwrap();
        assert_eq!(listeners.len(), 1);
        assert_eq!(
            listeners[0]["address"]["socket_address"],
            json!({ "address": "10.44.0.9", "port_value": 15090 })
        );
        let hcm = &listeners[0]["filter_chains"][0]["filters"][0]["typed_config"];
        let routes = &hcm["route_config"]["virtual_hosts"][0]["routes"];
        assert_eq!(
            routes,
            &json!([{
                "match": { "prefix": "/stats/prometheus" },
                "route": { "cluster": PROMETHEUS_STATS_CLUSTER },
            }])
        );
        let clusters = b["static_resources"]["clusters"].as_array().unwrap();
        let stats = clusters
            .iter()
            .find(|c| c["name"] == PROMETHEUS_STATS_CLUSTER)
            .expect("the stats cluster");
        assert_eq!(
            stats["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"],
            json!({ "address": "127.0.10.7", "port_value": 15000 })
        );
    }

    /// Real Envoy accepts every kind of bootstrap we write (`envoy --mode validate`).
    #[test]
    fn envoy_validates_the_bootstraps() {
        let envoy = strait_testsupport::envoy_bin();
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("sidecar-none", ProxyRole::Sidecar, CaptureMode::None),
            (
                "sidecar-iptables",
                ProxyRole::Sidecar,
                CaptureMode::Iptables,
            ),
            ("gateway", ProxyRole::Gateway, CaptureMode::None),
        ];
        for (name, role, capture) in cases {
            for delta in [false, true] {
                let opts = BootstrapOptions {
                    concurrency: Some(2),
                    identity: None,
                    // Istio's stats listener on the pod's address, for pods in a namespace.
                    prometheus_addr: (capture == CaptureMode::Iptables)
                        .then(|| "127.0.10.7:15090".parse().unwrap()),
                    ..options(proxy(role, capture), delta)
                };
                let file = dir.path().join(format!("{name}-delta-{delta}.yaml"));
                std::fs::write(&file, envoy_bootstrap(&opts)).unwrap();
                validate(&envoy, &file);
            }
        }
    }

    fn validate(envoy: &Path, file: &Path) {
        let out = Command::new(envoy)
            .args(["--mode", "validate", "--disable-hot-restart", "-c"])
            .arg(file)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", envoy.display()));
        assert!(
            out.status.success(),
            "envoy rejected {}:\n{}\n{}\n--- bootstrap:\n{}",
            file.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(file).unwrap(),
        );
    }

    /// Real Envoy, started from the bootstrap, opens ADS to the control plane's address and
    /// names itself as the bootstrap says: the control plane reads back the same [`Proxy`].
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn envoy_opens_ads_with_the_node() {
        for delta in [false, true] {
            let (xds_addr, mut first) = ads_first_requests().await;
            let original = proxy(ProxyRole::Sidecar, CaptureMode::None);
            let opts = BootstrapOptions {
                xds_addr,
                more_xds: Vec::new(),
                admin_addr: "127.0.0.1:0".parse().unwrap(),
                ..options(original.clone(), delta)
            };
            let envoy = strait_testsupport::Envoy::start(
                &envoy_bootstrap(&opts),
                if delta { "ads-delta" } else { "ads-sotw" },
            );
            let (api, node, type_url) =
                tokio::time::timeout(std::time::Duration::from_secs(15), first.recv())
                    .await
                    .unwrap_or_else(|_| panic!("envoy sent no ADS request (delta: {delta})"))
                    .unwrap();
            assert_eq!(api, if delta { "delta" } else { "sotw" });
            // CDS first, then LDS.
            assert_eq!(type_url, strait_xds_core::TypeUrl::Cluster.as_str());
            assert_eq!(node.cluster, "reviews");
            let read = Proxy::from_node(&node).unwrap();
            assert_eq!(
                read,
                Proxy {
                    id: node.id.clone(),
                    ..original
                }
            );
            // Without responses, Envoy waits for its first config.
            assert_ne!(envoy.server_state().await, "LIVE");
        }
    }

    type FirstRequest = (&'static str, Node, String);

    /// An ADS server that reports each stream's first request (API, node, type URL) and never
    /// answers.
    async fn ads_first_requests() -> (
        SocketAddr,
        tokio::sync::mpsc::UnboundedReceiver<FirstRequest>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let server = tonic::transport::Server::builder()
            .add_service(AggregatedDiscoveryServiceServer::new(FirstRequests { tx }))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
        tokio::spawn(server);
        (addr, rx)
    }

    struct FirstRequests {
        tx: tokio::sync::mpsc::UnboundedSender<FirstRequest>,
    }

    #[tonic::async_trait]
    impl AggregatedDiscoveryService for FirstRequests {
        type StreamAggregatedResourcesStream =
            futures::stream::Pending<Result<DiscoveryResponse, tonic::Status>>;
        type DeltaAggregatedResourcesStream =
            futures::stream::Pending<Result<DeltaDiscoveryResponse, tonic::Status>>;

        async fn stream_aggregated_resources(
            &self,
            request: tonic::Request<tonic::Streaming<DiscoveryRequest>>,
        ) -> Result<tonic::Response<Self::StreamAggregatedResourcesStream>, tonic::Status> {
            let mut requests = request.into_inner();
            let tx = self.tx.clone();
            tokio::spawn(async move {
                if let Ok(Some(r)) = requests.message().await {
                    let _ = tx.send(("sotw", r.node.unwrap_or_default(), r.type_url));
                }
                while let Ok(Some(_)) = requests.message().await {}
            });
            Ok(tonic::Response::new(futures::stream::pending()))
        }

        async fn delta_aggregated_resources(
            &self,
            request: tonic::Request<tonic::Streaming<DeltaDiscoveryRequest>>,
        ) -> Result<tonic::Response<Self::DeltaAggregatedResourcesStream>, tonic::Status> {
            let mut requests = request.into_inner();
            let tx = self.tx.clone();
            tokio::spawn(async move {
                if let Ok(Some(r)) = requests.message().await {
                    let _ = tx.send(("delta", r.node.unwrap_or_default(), r.type_url));
                }
                while let Ok(Some(_)) = requests.message().await {}
            });
            Ok(tonic::Response::new(futures::stream::pending()))
        }
    }
}
