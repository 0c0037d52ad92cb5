//! strait-proxy against bad input, over real sockets: raw bytes to an HTTP listener of a proxy
//! serving a fixed config (no control plane), a counting upstream behind it.
//!
//! Malformed and smuggling-shaped requests are answered 400 (431 for heads over the limits) by
//! the proxy itself, with `x-strait-flags: DPE`, the connection is closed, and the upstream never
//! sees them. Slow heads and idle connections are cut after their timeouts. The access log has
//! Istio's fields for routed requests and for the proxy's own answers.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use envoy_types::pb::envoy::config::cluster::v3 as cl;
use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address, socket_address};
use envoy_types::pb::envoy::config::endpoint::v3 as ep;
use envoy_types::pb::envoy::config::listener::v3 as li;
use envoy_types::pb::envoy::config::route::v3 as rt;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, http_connection_manager, http_filter,
};
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration};
use http_body_util::{BodyExt, Full};
use prost::Name;
use strait_proxy::config::{Cluster, Listener};
use strait_proxy::{AccessLogTarget, Config, HttpLimits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn any<M: Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

fn socket(addr: SocketAddr) -> Option<Address> {
    Some(Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: addr.ip().to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(
                addr.port(),
            ))),
            ..Default::default()
        })),
    })
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("cannot bind 127.0.0.1:0: is loopback up?")
}

fn route(vhost: &str, domain: &str, cluster: &str) -> rt::VirtualHost {
    rt::VirtualHost {
        name: vhost.into(),
        domains: vec![domain.into()],
        routes: vec![rt::Route {
            name: format!("{vhost}-route"),
            r#match: Some(rt::RouteMatch {
                path_specifier: Some(rt::route_match::PathSpecifier::Prefix("/".into())),
                ..Default::default()
            }),
            action: Some(rt::route::Action::Route(rt::RouteAction {
                cluster_specifier: Some(rt::route_action::ClusterSpecifier::Cluster(
                    cluster.into(),
                )),
                timeout: Some(PbDuration {
                    seconds: 5,
                    nanos: 0,
                }),
                ..Default::default()
            })),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn static_cluster(name: &str, endpoint: SocketAddr) -> Cluster {
    let pb = cl::Cluster {
        name: name.into(),
        cluster_discovery_type: Some(cl::cluster::ClusterDiscoveryType::Type(
            cl::cluster::DiscoveryType::Static as i32,
        )),
        connect_timeout: Some(PbDuration {
            seconds: 1,
            nanos: 0,
        }),
        load_assignment: Some(ep::ClusterLoadAssignment {
            cluster_name: name.into(),
            endpoints: vec![ep::LocalityLbEndpoints {
                lb_endpoints: vec![ep::LbEndpoint {
                    host_identifier: Some(ep::lb_endpoint::HostIdentifier::Endpoint(
                        ep::Endpoint {
                            address: socket(endpoint),
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
    };
    Cluster::try_from(&pb).expect("the test cluster converts")
}

/// A listener on `addr` routing `good.test` to `up`, `dead.test` to `dead`; anything else has
/// no route.
fn listener(addr: SocketAddr) -> Listener {
    let hcm = HttpConnectionManager {
        stat_prefix: "robust".into(),
        route_specifier: Some(http_connection_manager::RouteSpecifier::RouteConfig(
            rt::RouteConfiguration {
                name: "robust-routes".into(),
                virtual_hosts: vec![
                    route("good", "good.test", "up"),
                    route("dead", "dead.test", "dead"),
                ],
                ..Default::default()
            },
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
    let pb = li::Listener {
        name: "robust".into(),
        address: socket(addr),
        filter_chains: vec![li::FilterChain {
            filters: vec![li::Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(li::filter::ConfigType::TypedConfig(any(&hcm))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    Listener::try_from(&pb).expect("the test listener converts")
}

/// An upstream that counts the requests it gets and reads each body before it answers; `/503`
/// answers its own 503.
async fn upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = tcp.accept().await else {
                return;
            };
            let count = count.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        count.fetch_add(1, Ordering::SeqCst);
                        async move {
                            let path = req.uri().path().to_string();
                            let _ = req.into_body().collect().await;
                            let mut resp = hyper::Response::new(Full::new(Bytes::from_static(
                                b"hello from upstream\n",
                            )));
                            if path == "/503" {
                                *resp.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
                                *resp.body_mut() =
                                    Full::new(Bytes::from_static(b"upstream says no\n"));
                            }
                            Ok::<_, Infallible>(resp)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

struct Proxy {
    addr: SocketAddr,
    upstream_requests: Arc<AtomicUsize>,
    log: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.log);
    }
}

impl Proxy {
    async fn start(limits: HttpLimits) -> Proxy {
        static N: AtomicUsize = AtomicUsize::new(0);
        let (up, upstream_requests) = upstream().await;
        let addr = free_addr();
        let mut config = Config::default();
        let l = listener(addr);
        config.listeners.insert(l.name.clone(), Arc::new(l));
        let clusters = [
            static_cluster("up", up),
            // Nothing listens there.
            static_cluster("dead", free_addr()),
        ];
        config.clusters = clusters
            .into_iter()
            .map(|c| (c.name.clone(), Arc::new(c)))
            .collect();
        let log = std::env::temp_dir().join(format!(
            "strait-robustness-{}-{}.log",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_file(&log);
        let target = AccessLogTarget::File(log.clone());
        let task = tokio::spawn(async move {
            strait_proxy::run_static(config, limits, Some(target))
                .await
                .expect("strait-proxy runs");
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "strait-proxy does not listen on {addr}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Proxy {
            addr,
            upstream_requests,
            log,
            task,
        }
    }

    async fn quick() -> Proxy {
        Proxy::start(HttpLimits {
            request_headers_timeout: Some(Duration::from_secs(1)),
            idle_timeout: Some(Duration::from_millis(1500)),
            ..HttpLimits::default()
        })
        .await
    }

    fn upstream_requests(&self) -> usize {
        self.upstream_requests.load(Ordering::SeqCst)
    }

    /// The access log's lines as JSON, once it has `n` of them.
    async fn log_lines(&self, n: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<serde_json::Value> = text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
                .collect();
            if lines.len() >= n {
                return lines;
            }
            assert!(
                Instant::now() < deadline,
                "the access log has {} lines, expected {n}:\n{text}",
                lines.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// What came back on a raw connection.
struct Exchange {
    text: String,
    /// The proxy closed the connection (EOF or reset) within the wait.
    closed: bool,
}

impl Exchange {
    fn status(&self) -> Option<u16> {
        self.text.split(' ').nth(1)?.parse().ok()
    }

    fn header(&self, name: &str) -> Option<String> {
        let head = self.text.split("\r\n\r\n").next()?;
        head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

/// Reads until the proxy closes or `wait` passes.
async fn read_all(stream: &mut TcpStream, wait: Duration) -> Exchange {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = [0u8; 8192];
    let closed = loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => break false,
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    };
    Exchange {
        text: String::from_utf8_lossy(&got).into_owned(),
        closed,
    }
}

/// Sends `bytes` on a new connection and reads what comes back.
async fn send(proxy: &Proxy, bytes: &[u8]) -> Exchange {
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    // The proxy may close before it has read everything: that is not the test's failure.
    let _ = stream.write_all(bytes).await;
    read_all(&mut stream, Duration::from_secs(5)).await
}

/// The request is refused by the proxy itself with `status` and `DPE`, the connection closes and
/// the upstream sees nothing.
async fn assert_refused(proxy: &Proxy, what: &str, bytes: &[u8], status: u16) {
    let got = send(proxy, bytes).await;
    assert_eq!(
        got.status(),
        Some(status),
        "{what}: expected {status}, got:\n{}",
        got.text
    );
    assert_eq!(
        got.header("x-strait-flags").as_deref(),
        Some("DPE"),
        "{what}: the proxy's own answer names its flag:\n{}",
        got.text
    );
    let body = got.text.split("\r\n\r\n").nth(1).unwrap_or_default();
    assert!(
        !body.trim().is_empty(),
        "{what}: the answer has a reason:\n{}",
        got.text
    );
    assert!(
        got.closed,
        "{what}: the connection stays open:\n{}",
        got.text
    );
    assert_eq!(
        proxy.upstream_requests(),
        0,
        "{what}: the upstream saw the request"
    );
}

#[tokio::test]
async fn a_good_request_goes_through() {
    let proxy = Proxy::quick().await;
    let got = send(
        &proxy,
        b"POST / HTTP/1.1\r\nHost: good.test\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    )
    .await;
    assert_eq!(got.status(), Some(200), "{}", got.text);
    assert!(got.text.ends_with("hello from upstream\n"), "{}", got.text);
    assert_eq!(proxy.upstream_requests(), 1);
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_refused() {
    let proxy = Proxy::quick().await;
    for (what, req) in [
        (
            "CL then TE",
            &b"POST / HTTP/1.1\r\nHost: good.test\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG"[..],
        ),
        (
            "TE then CL",
            b"POST / HTTP/1.1\r\nHost: good.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n0\r\n\r\nG",
        ),
    ] {
        assert_refused(&proxy, what, req, 400).await;
    }
}

#[tokio::test]
async fn two_different_content_lengths_are_refused() {
    let proxy = Proxy::quick().await;
    assert_refused(
        &proxy,
        "two Content-Lengths",
        b"POST / HTTP/1.1\r\nHost: good.test\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello12",
        400,
    )
    .await;
    assert_refused(
        &proxy,
        "a list of Content-Lengths",
        b"POST / HTTP/1.1\r\nHost: good.test\r\nContent-Length: 5, 7\r\n\r\nhello12",
        400,
    )
    .await;
}

#[tokio::test]
async fn an_invalid_chunk_size_is_refused() {
    let proxy = Proxy::quick().await;
    assert_refused(
        &proxy,
        "chunk size zz",
        b"POST / HTTP/1.1\r\nHost: good.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        400,
    )
    .await;
    assert_refused(
        &proxy,
        "chunk data without CRLF",
        b"POST / HTTP/1.1\r\nHost: good.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
        400,
    )
    .await;
}

#[tokio::test]
async fn invalid_header_bytes_are_refused() {
    let proxy = Proxy::quick().await;
    for (what, req) in [
        (
            "a space in a header name",
            &b"GET / HTTP/1.1\r\nHost: good.test\r\nBad Name: x\r\n\r\n"[..],
        ),
        (
            "a separator in a header name",
            b"GET / HTTP/1.1\r\nHost: good.test\r\nX(y): x\r\n\r\n",
        ),
        (
            "NUL in a value",
            b"GET / HTTP/1.1\r\nHost: good.test\r\nX-A: a\x00b\r\n\r\n",
        ),
        (
            "a bare CR in a value",
            b"GET / HTTP/1.1\r\nHost: good.test\r\nX-A: a\rb\r\n\r\n",
        ),
    ] {
        assert_refused(&proxy, what, req, 400).await;
    }
}

#[tokio::test]
async fn heads_over_the_limits_are_refused_with_431() {
    let proxy = Proxy::quick().await;
    let big = format!(
        "GET / HTTP/1.1\r\nHost: good.test\r\nX-Big: {}\r\n\r\n",
        "a".repeat(61 * 1024)
    );
    assert_refused(&proxy, "a 61 KiB header", big.as_bytes(), 431).await;
    let mut many = "GET / HTTP/1.1\r\nHost: good.test\r\n".to_string();
    for i in 0..100 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    assert_refused(&proxy, "101 headers", many.as_bytes(), 431).await;
    // Just under both limits is fine (with room for the two headers the proxy adds: the
    // upstream, a hyper server, has the same limit of 100).
    let mut fine = "GET / HTTP/1.1\r\nHost: good.test\r\nConnection: close\r\n".to_string();
    for i in 0..96 {
        fine.push_str(&format!("X-H{i}: {}\r\n", "v".repeat(500)));
    }
    fine.push_str("\r\n");
    let got = send(&proxy, fine.as_bytes()).await;
    assert_eq!(got.status(), Some(200), "{}", got.text);
}

#[tokio::test]
async fn a_slow_head_is_cut_after_the_request_headers_timeout() {
    let proxy = Proxy::quick().await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let started = Instant::now();
    let head = b"GET / HTTP/1.1\r\nHost: good.test\r\nX-Slow: 1\r\n\r\n";
    let mut cut = None;
    for b in head {
        if stream.write_all(std::slice::from_ref(b)).await.is_err() {
            cut = Some(started.elapsed());
            break;
        }
        // Closed already?
        let mut one = [0u8; 1];
        match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut one)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                cut = Some(started.elapsed());
                break;
            }
            Ok(Ok(_)) => panic!("the proxy answered a head still on its way"),
            Err(_) => {}
        }
    }
    let cut = cut.expect("the slow head was never cut");
    assert!(
        cut >= Duration::from_millis(900) && cut < Duration::from_secs(3),
        "cut after {cut:?}, the timeout is 1 s"
    );
    assert_eq!(proxy.upstream_requests(), 0);
    let lines = proxy.log_lines(1).await;
    assert_eq!(lines[0]["response_code_details"], "request_header_timeout");
    assert_eq!(lines[0]["response_code"], 0);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let proxy = Proxy::quick().await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: good.test\r\n\r\n")
        .await
        .unwrap();
    // The response comes, and the connection stays open for now.
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).ends_with("hello from upstream\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("a response")
            .unwrap();
        assert!(n > 0, "closed before the response ended");
        got.extend_from_slice(&buf[..n]);
    }
    let idle_from = Instant::now();
    let rest = read_all(&mut stream, Duration::from_secs(5)).await;
    let after = idle_from.elapsed();
    assert!(rest.closed, "the idle connection was not closed");
    assert!(rest.text.is_empty(), "{}", rest.text);
    assert!(
        after >= Duration::from_millis(1300) && after < Duration::from_secs(4),
        "closed after {after:?}, the idle timeout is 1.5 s"
    );
    assert_eq!(proxy.upstream_requests(), 1);
}

#[tokio::test]
async fn http2_connections_announce_the_stream_limit() {
    let proxy = Proxy::quick().await;
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut client = client.ready().await.unwrap();
    // The server's SETTINGS arrive with the first exchange.
    let req = hyper::Request::builder()
        .uri("http://good.test/")
        .body(())
        .unwrap();
    let (resp, _) = client.send_request(req, true).unwrap();
    let resp = resp.await.expect("an HTTP/2 response");
    assert_eq!(resp.status(), 200);
    assert_eq!(client.current_max_send_streams(), 1024);
}

#[tokio::test]
async fn the_access_log_has_istios_fields() {
    let proxy = Proxy::quick().await;
    let req = |host: &str, path: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: robust-test\r\nX-Request-Id: id-{host}{path}\r\nConnection: close\r\n\r\n"
        )
    };
    let ok = send(&proxy, req("good.test", "/a?b=1").as_bytes()).await;
    assert_eq!(ok.status(), Some(200), "{}", ok.text);
    let nr = send(&proxy, req("nowhere.test", "/").as_bytes()).await;
    assert_eq!(nr.status(), Some(404), "{}", nr.text);
    assert_eq!(nr.header("x-strait-flags").as_deref(), Some("NR"));
    let uf = send(&proxy, req("dead.test", "/").as_bytes()).await;
    assert_eq!(uf.status(), Some(503), "{}", uf.text);
    assert_eq!(uf.header("x-strait-flags").as_deref(), Some("UF"));
    // An upstream's own 503 passes through untouched.
    let own = send(&proxy, req("good.test", "/503").as_bytes()).await;
    assert_eq!(own.status(), Some(503), "{}", own.text);
    assert_eq!(own.header("x-strait-flags"), None, "{}", own.text);
    assert!(
        own.text.ends_with("\r\n\r\nupstream says no\n"),
        "{}",
        own.text
    );
    let bad = send(
        &proxy,
        b"POST /smuggle HTTP/1.1\r\nHost: good.test\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(bad.status(), Some(400), "{}", bad.text);

    let lines = proxy.log_lines(5).await;
    let by_path = |id: &str| {
        lines
            .iter()
            .find(|l| l["request_id"] == id)
            .unwrap_or_else(|| panic!("no line for {id}: {lines:#?}"))
            .clone()
    };
    for field in [
        "start_time",
        "method",
        "path",
        "protocol",
        "response_code",
        "response_flags",
        "response_code_details",
        "bytes_received",
        "bytes_sent",
        "duration",
        "upstream_service_time",
        "x_forwarded_for",
        "user_agent",
        "request_id",
        "authority",
        "upstream_host",
        "upstream_cluster",
        "downstream_local_address",
        "downstream_remote_address",
        "route_name",
    ] {
        for l in &lines {
            assert!(l.get(field).is_some(), "{field} missing in {l}");
        }
    }
    let l = by_path("id-good.test/a?b=1");
    assert_eq!(l["method"], "GET");
    assert_eq!(l["path"], "/a?b=1");
    assert_eq!(l["protocol"], "HTTP/1.1");
    assert_eq!(l["response_code"], 200);
    assert_eq!(l["response_flags"], "-");
    assert_eq!(l["response_code_details"], "via_upstream");
    assert_eq!(l["bytes_sent"], "hello from upstream\n".len());
    assert_eq!(l["user_agent"], "robust-test");
    assert_eq!(l["authority"], "good.test");
    assert_eq!(l["upstream_cluster"], "up");
    assert_eq!(l["route_name"], "good-route");
    assert_eq!(l["downstream_local_address"], proxy.addr.to_string());
    assert!(
        l["upstream_host"]
            .as_str()
            .is_some_and(|h| h.starts_with("127.0.0.1:")),
        "{l}"
    );
    assert!(l["upstream_service_time"].is_string(), "{l}");
    assert!(l["duration"].is_u64(), "{l}");
    let start = l["start_time"].as_str().unwrap();
    assert!(
        start.len() == 24 && start.ends_with('Z') && start.as_bytes()[10] == b'T',
        "{start}"
    );

    let l = by_path("id-nowhere.test/");
    assert_eq!(l["response_code"], 404);
    assert_eq!(l["response_flags"], "NR");
    assert_eq!(l["response_code_details"], "route_not_found");
    assert_eq!(l["upstream_cluster"], serde_json::Value::Null);

    let l = by_path("id-dead.test/");
    assert_eq!(l["response_code"], 503);
    assert_eq!(l["response_flags"], "UF");
    assert_eq!(l["upstream_cluster"], "dead");
    assert_eq!(l["route_name"], "dead-route");
    assert!(l["upstream_host"].is_string(), "{l}");

    let l = by_path("id-good.test/503");
    assert_eq!(l["response_code"], 503);
    assert_eq!(l["response_flags"], "-");
    assert_eq!(l["response_code_details"], "via_upstream");

    let l = lines
        .iter()
        .find(|l| l["path"] == "/smuggle")
        .unwrap_or_else(|| panic!("no line for the refused request: {lines:#?}"));
    assert_eq!(l["response_code"], 400);
    assert_eq!(l["response_flags"], "DPE");
    assert_eq!(
        l["response_code_details"],
        "http1.content_length_and_chunked_not_allowed"
    );
}

#[tokio::test]
async fn an_upgrade_the_listener_does_not_allow_is_refused_with_403() {
    // The test listener has no upgrade_configs: a WebSocket upgrade is not allowed, as in Envoy.
    let proxy = Proxy::quick().await;
    let got = send(
        &proxy,
        b"GET /chat HTTP/1.1\r\nHost: good.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await;
    assert_eq!(got.status(), Some(403), "{}", got.text);
    // The bytes after an upgrade request are not checked as HTTP/1: the connection ends.
    assert!(got.closed, "the connection stays open:\n{}", got.text);
    assert_eq!(proxy.upstream_requests(), 0);
    let l = &proxy.log_lines(1).await[0];
    assert_eq!(l["response_code"], 403);
    assert_eq!(l["response_code_details"], "upgrade_failed");
}

#[tokio::test]
async fn the_access_log_counts_a_streamed_request_body() {
    let proxy = Proxy::quick().await;
    let body = "x".repeat(300_000);
    let got = send(
        &proxy,
        format!(
            "POST /upload HTTP/1.1\r\nHost: good.test\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(got.status(), Some(200), "{}", got.text);
    let l = &proxy.log_lines(1).await[0];
    assert_eq!(l["bytes_received"], 300_000, "{l}");
}
