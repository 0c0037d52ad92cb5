//! Protocols through a client sidecar and a server sidecar (client → client sidecar → server
//! sidecar → app, as in envoy_inbound.rs), the same test body with Envoy and with strait-proxy:
//!
//! - 100 MiB request and response bodies stream: they arrive whole (length and checksum) and the
//!   proxies' peak memory stays far below the body's size;
//! - a route timeout (Istio's, also a max_stream_duration) cuts a slow upload after the timeout;
//! - a request body within the 1 MiB buffer is retried whole, a larger one is not retried; both
//!   are mirrored by Envoy, only the one within the buffer by strait-proxy (its documented choice);
//! - WebSocket: an HTTP/1.1 upgrade, the backend's 101, then bytes both ways;
//! - h2c with prior knowledge to a Service port named `http2`, several streams on one connection;
//! - gRPC to a port named `grpc`: a unary call and a bidirectional stream whose replies come back
//!   one by one before the client sends its next message, with the trailers.

use strait_e2e as support;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{HeaderMap, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use support::fixture;
use support::mesh::{DataPlane, Mesh};

type TestBody = BoxBody<Bytes, Infallible>;

// ---------------------------------------------------------------------------------------------
// Large bodies

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_through_both_sidecars() {
    large_bodies(DataPlane::Envoy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_through_both_sidecars_strait() {
    large_bodies(DataPlane::Strait).await;
}

const CHUNK: usize = 64 * 1024;
/// 1600 chunks of 64 KiB: 100 MiB.
const CHUNKS: u64 = 1600;
const BULK_BYTES: u64 = CHUNKS * CHUNK as u64;

/// Chunk `i` of the test data: a window into a pseudo-random pattern that shifts with `i`.
fn chunk(i: u64) -> Bytes {
    static PATTERN: OnceLock<Vec<u8>> = OnceLock::new();
    let pattern = PATTERN.get_or_init(|| {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        (0..CHUNK + 256)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    });
    let at = (i % 251) as usize;
    Bytes::copy_from_slice(&pattern[at..at + CHUNK])
}

/// Length and FNV-1a hash of a byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sum {
    bytes: u64,
    fnv: u64,
}

impl Sum {
    fn new() -> Sum {
        Sum {
            bytes: 0,
            fnv: 0xcbf2_9ce4_8422_2325,
        }
    }

    fn add(&mut self, data: &[u8]) {
        self.bytes += data.len() as u64;
        for b in data {
            self.fnv = (self.fnv ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    /// The sum of the whole test data.
    fn expected() -> Sum {
        let mut s = Sum::new();
        for i in 0..CHUNKS {
            s.add(&chunk(i));
        }
        s
    }
}

/// The test data as a body, made as it is read.
struct Generated {
    next: u64,
}

impl Body for Generated {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.next == CHUNKS {
            return Poll::Ready(None);
        }
        let c = chunk(self.next);
        self.next += 1;
        Poll::Ready(Some(Ok(Frame::data(c))))
    }

    fn is_end_stream(&self) -> bool {
        self.next == CHUNKS
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact((CHUNKS - self.next) * CHUNK as u64)
    }
}

/// `/upload` answers with the length and hash of the body it read; `/download` sends the test
/// data; `/ping` answers `pong`.
async fn bulk_app(req: Request<Incoming>) -> Response<TestBody> {
    match req.uri().path() {
        "/upload" => {
            let mut sum = Sum::new();
            let mut body = req.into_body();
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => {
                        if let Some(d) = f.data_ref() {
                            sum.add(d);
                        }
                    }
                    Err(e) => return text(500, &format!("reading the upload: {e}")),
                }
            }
            text(200, &format!("{} {:016x}", sum.bytes, sum.fnv))
        }
        "/download" => Response::builder()
            .header("content-type", "application/octet-stream")
            .body(Generated { next: 0 }.boxed())
            .unwrap(),
        "/ping" => text(200, "pong"),
        _ => text(404, "no such path"),
    }
}

/// A process's `/proc/PID/status` field in kB (`VmRSS`, `VmHWM`).
fn status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status:\n{status}"))
}

async fn large_bodies(plane: DataPlane) {
    let mesh = Mesh::new();
    mesh.service("bulk", 8080, "http");
    let app = spawn_app(bulk_app);
    let server = mesh
        .server_sidecar(plane, "bulk", "v1", 8080, "HTTP", app)
        .await;
    let client = mesh.sidecar(plane, "client-v1", "app=client").await;
    client
        .get_until(
            "http://bulk:8080/ping",
            &[],
            "bulk through both sidecars",
            |r| r.status == 200 && r.body == "pong",
        )
        .await;
    let proxies = [("client sidecar", &client), ("server sidecar", &server)];
    let rss_before: Vec<u64> = proxies
        .iter()
        .map(|(_, p)| status_kb(p.pid(), "VmRSS"))
        .collect();
    let expected = Sum::expected();

    // 100 MiB up: the app reads the body through both sidecars and says what it got.
    let upload = Request::post("http://bulk:8080/upload")
        .header("host", "bulk:8080")
        .header("content-type", "application/octet-stream")
        .header("content-length", BULK_BYTES.to_string())
        .body(Generated { next: 0 })
        .unwrap();
    let (status, body) = tokio::time::timeout(Duration::from_secs(180), async {
        let resp = h1_send(client.http_proxy(), upload).await;
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, body)
    })
    .await
    .unwrap_or_else(|_| panic!("the 100 MiB upload took over 180 s\n{}", client.log()));
    assert_eq!(status, 200, "{body:?}\n{}", client.log());
    assert_eq!(
        body,
        format!("{} {:016x}", expected.bytes, expected.fnv),
        "the app got another body than was sent"
    );

    // 100 MiB down.
    let download = Request::get("http://bulk:8080/download")
        .header("host", "bulk:8080")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(180), async {
        let resp = h1_send(client.http_proxy(), download).await;
        assert_eq!(resp.status(), 200, "{resp:?}");
        let mut body = resp.into_body();
        let mut sum = Sum::new();
        while let Some(frame) = body.frame().await {
            if let Some(d) = frame.expect("the download body").data_ref() {
                sum.add(d);
            }
        }
        sum
    })
    .await
    .unwrap_or_else(|_| panic!("the 100 MiB download took over 180 s\n{}", client.log()));
    assert_eq!(
        got, expected,
        "the client got another body than the app sent"
    );

    // Neither proxy held a body: the peak of each stayed far below 100 MiB above its start.
    for ((name, p), before) in proxies.iter().zip(rss_before) {
        let peak = status_kb(p.pid(), "VmHWM");
        eprintln!("{plane:?} {name}: VmRSS {before} kB before, VmHWM {peak} kB after");
        assert!(
            peak.saturating_sub(before) < 40 * 1024,
            "{plane:?} {name}: peak memory {peak} kB grew {} kB from {before} kB during the \
             transfers: a body was buffered",
            peak.saturating_sub(before)
        );
        if plane == DataPlane::Strait {
            assert!(
                peak < 60 * 1024,
                "strait-proxy {name}: peak memory {peak} kB is over 60 MiB"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_bodies_within_the_buffer_are_retried() {
    retries_by_body_size(DataPlane::Envoy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_bodies_within_the_buffer_are_retried_strait() {
    retries_by_body_size(DataPlane::Strait).await;
}

/// Requests per path, and the body length of each, as an app that fails once saw them.
type Seen = Arc<Mutex<Vec<(String, usize)>>>;

/// An app that reads each body, answers the first request to a path 503 (which Istio's default
/// retry policy retries) and later ones 200 with the body's length.
fn spawn_fail_once_app(seen: Seen) -> SocketAddr {
    let (listener, addr) = listen();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let path = req.uri().path().to_string();
                        let len = req
                            .into_body()
                            .collect()
                            .await
                            .map_or(0, |b| b.to_bytes().len());
                        let first = {
                            let mut seen = seen.lock().unwrap();
                            seen.push((path.clone(), len));
                            seen.iter().filter(|(p, _)| *p == path).count() == 1
                        };
                        Ok::<_, Infallible>(if first {
                            text(503, "first try fails")
                        } else {
                            text(200, &len.to_string())
                        })
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// A body that fits the 1 MiB buffer (Envoy's `per_connection_buffer_limit_bytes` default) is
/// sent again on a retry; a larger one streams through and its failed try's answer stands.
async fn retries_by_body_size(plane: DataPlane) {
    let mesh = Mesh::new();
    mesh.service("flaky", 8080, "http");
    let seen: Seen = Arc::default();
    let app = spawn_fail_once_app(seen.clone());
    let _server = mesh
        .server_sidecar(plane, "flaky", "v1", 8080, "HTTP", app)
        .await;
    let client = mesh.sidecar(plane, "client-v1", "app=client").await;
    client
        .get_until(
            "http://flaky:8080/ready",
            &[],
            "flaky through both sidecars",
            |r| r.status == 200,
        )
        .await;
    let post = |path: &str, len: usize| {
        Request::post(format!("http://flaky:8080{path}"))
            .header("host", "flaky:8080")
            .body(Full::new(Bytes::from(vec![b'b'; len])))
            .unwrap()
    };
    let answer = |resp: Response<Incoming>| async move {
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    };
    let small = 64 * 1024;
    let r = answer(h1_send(client.http_proxy(), post("/small", small)).await).await;
    assert_eq!(
        r,
        (200, small.to_string()),
        "the small body was retried whole"
    );
    let large = 4 << 20;
    let r = answer(h1_send(client.http_proxy(), post("/large", large)).await).await;
    assert_eq!(
        r,
        (503, "first try fails".to_string()),
        "a body over the buffer is not retried"
    );
    let seen = seen.lock().unwrap().clone();
    let tries = |path: &str| -> Vec<usize> {
        seen.iter()
            .filter(|(p, _)| p == path)
            .map(|(_, len)| *len)
            .collect()
    };
    assert_eq!(tries("/small"), [small, small]);
    assert_eq!(tries("/large"), [large]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrors_get_bodies_within_the_buffer() {
    mirrors_by_body_size(DataPlane::Envoy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrors_get_bodies_within_the_buffer_strait() {
    mirrors_by_body_size(DataPlane::Strait).await;
}

/// An app that reads each body and records its path and length.
fn spawn_recording_app(seen: Seen) -> SocketAddr {
    let (listener, addr) = listen();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let path = req.uri().path().to_string();
                        let len = req
                            .into_body()
                            .collect()
                            .await
                            .map_or(0, |b| b.to_bytes().len());
                        seen.lock().unwrap().push((path, len));
                        Ok::<_, Infallible>(text(200, &len.to_string()))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// Mirroring (Istio's mirroring task: v1 answers, v2 gets a copy) with a body within the 1 MiB
/// buffer and with one over it. Envoy streams bodies to mirrors; strait-proxy mirrors a body
/// only once it is complete within the buffer (docs/xds-support.md), so the large one differs.
async fn mirrors_by_body_size(plane: DataPlane) {
    let mut mesh = Mesh::new();
    mesh.service("mirrored", 8080, "http");
    let (v1, v2): (Seen, Seen) = (Arc::default(), Arc::default());
    for (version, seen) in [("v1", &v1), ("v2", &v2)] {
        let addr = spawn_recording_app(seen.clone());
        mesh.apply_yaml(
            &format!("we-mirrored-{version}.yaml"),
            &format!(
                "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: mirrored-{version}}}\nspec:\n  address: {}\n  ports: {{http: {}}}\n  labels: {{app: mirrored, version: {version}}}\n",
                addr.ip(),
                addr.port()
            ),
        );
    }
    mesh.apply(&fixture("protocols-mirrored-routes.yaml"));
    let _ = &mut mesh;
    let client = mesh.sidecar(plane, "client-v1", "app=client").await;
    // Ready once a request is mirrored.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !v2.lock().unwrap().iter().any(|(p, _)| p == "/ready") {
        assert!(
            std::time::Instant::now() < deadline,
            "no request mirrored to v2 in 15 s\n{}",
            client.log()
        );
        client.get("http://mirrored:8080/ready", &[]).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let post = |path: &str, len: usize| {
        Request::post(format!("http://mirrored:8080{path}"))
            .header("host", "mirrored:8080")
            .body(Full::new(Bytes::from(vec![b'm'; len])))
            .unwrap()
    };
    let (small, large) = (64 * 1024, 4 << 20);
    for (path, len) in [("/small", small), ("/large", large)] {
        let resp = h1_send(client.http_proxy(), post(path, len)).await;
        assert_eq!(resp.status(), 200, "{path}");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, len.to_string(), "{path}: v1 got the whole body");
    }
    // Mirrors are fire and forget: give them time to arrive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let copies = |path: &str| -> Vec<usize> {
        v2.lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, len)| *len)
            .collect()
    };
    assert_eq!(
        copies("/small"),
        [small],
        "the small body is mirrored whole"
    );
    let expected_large: &[usize] = match plane {
        DataPlane::Envoy => &[large],
        _ => &[],
    };
    assert_eq!(
        copies("/large"),
        expected_large,
        "{plane:?}: the large body's mirror"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeouts_with_streamed_bodies() {
    timeouts_with_bodies(DataPlane::Envoy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeouts_with_streamed_bodies_strait() {
    timeouts_with_bodies(DataPlane::Strait).await;
}

/// A route with Istio's `timeout: 1s` and a request body that takes 2.5 s to arrive.
async fn timeouts_with_bodies(plane: DataPlane) {
    let mesh = Mesh::new();
    mesh.service("slow", 8080, "http");
    let seen: Seen = Arc::default();
    let addr = spawn_recording_app(seen.clone());
    mesh.apply_yaml(
        "we-slow.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: slow-v1}}\nspec:\n  address: {}\n  ports: {{http: {}}}\n  labels: {{app: slow, version: v1}}\n",
            addr.ip(),
            addr.port()
        ),
    );
    mesh.apply(&fixture("protocols-slow-vs.yaml"));
    let client = mesh.sidecar(plane, "client-v1", "app=client").await;
    client
        .get_until("http://slow:8080/ready", &[], "slow", |r| r.status == 200)
        .await;
    // A body trickled over 2.5 s.
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if tx
                .send(Frame::data(Bytes::from(vec![b't'; 1000])))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let req = Request::post("http://slow:8080/trickle")
        .header("host", "slow:8080")
        .body(Channel(rx))
        .unwrap();
    let started = std::time::Instant::now();
    let resp = h1_send(client.http_proxy(), req).await;
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let took = started.elapsed();
    // Istio puts the timeout in max_stream_duration too, which counts from the request's start:
    // the upload is cut after 1 s, not answered 2.5 s later.
    assert_eq!(status, 408, "{plane:?}: {body:?} after {took:?}");
    assert_eq!(
        body.trim_ascii(),
        b"downstream duration timeout",
        "{plane:?}"
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2000),
        "{plane:?}: answered after {took:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// WebSocket

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_through_both_sidecars() {
    websocket(DataPlane::Envoy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_through_both_sidecars_strait() {
    websocket(DataPlane::Strait).await;
}

/// RFC 6455's example key and its accept value.
const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const WS_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// Reads up to the end of an HTTP head: the head, and the bytes read after it.
async fn read_head(stream: &mut TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return (String::from_utf8_lossy(&buf).into_owned(), rest);
        }
        let n = stream.read(&mut tmp).await.expect("reading a head");
        assert!(
            n > 0,
            "closed before the head ended: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&tmp[..n]);
    }
}

/// A WebSocket-ish app on raw TCP: answers an upgrade with 101, says `hello PATH\n`, then sends
/// back every byte it gets in upper case until the client closes. Each head it got is recorded.
fn spawn_ws_app(heads: Arc<Mutex<Vec<String>>>) -> SocketAddr {
    let (listener, addr) = listen();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let heads = heads.clone();
            tokio::spawn(async move {
                let (head, rest) = read_head(&mut stream).await;
                heads.lock().unwrap().push(head.clone());
                let lower = head.to_ascii_lowercase();
                if !lower.contains("\r\nupgrade: websocket\r\n") {
                    let _ = stream
                        .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                        .await;
                    return;
                }
                let path = head.split(' ').nth(1).unwrap_or("?").to_string();
                let answer = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {WS_ACCEPT}\r\n\r\nhello {path}\n"
                );
                stream.write_all(answer.as_bytes()).await.unwrap();
                let mut pending = rest;
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    if !pending.is_empty() {
                        pending.make_ascii_uppercase();
                        if stream.write_all(&pending).await.is_err() {
                            return;
                        }
                        pending.clear();
                    }
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => pending.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream.shutdown().await;
            });
        }
    });
    addr
}

async fn websocket(plane: DataPlane) {
    let mesh = Mesh::new();
    mesh.service("chat", 8080, "http");
    let heads = Arc::new(Mutex::new(Vec::new()));
    let app = spawn_ws_app(heads.clone());
    let server = mesh
        .server_sidecar(plane, "chat", "v1", 8080, "HTTP", app)
        .await;
    let client = mesh.sidecar(plane, "client-v1", "app=client").await;
    // A plain request first, for the config to arrive: the app refuses it (no upgrade).
    client
        .get_until(
            "http://chat:8080/",
            &[],
            "chat through both sidecars",
            |r| r.status == 400,
        )
        .await;

    let exchange = async {
        let mut stream = TcpStream::connect(client.http_proxy()).await.unwrap();
        let request = format!(
            "GET http://chat:8080/room/1 HTTP/1.1\r\nHost: chat:8080\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let (head, mut got) = read_head(&mut stream).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let lower = head.to_ascii_lowercase();
        assert!(lower.contains("\r\nupgrade: websocket"), "{head}");
        assert!(lower.contains("\r\nconnection: upgrade"), "{head}");
        assert!(head.contains(WS_ACCEPT), "{head}");
        // The app speaks first, then answers each message before the next is sent.
        read_exactly(&mut stream, &mut got, b"hello /room/1\n").await;
        for i in 0..3 {
            stream
                .write_all(format!("ping {i};").as_bytes())
                .await
                .unwrap();
            read_exactly(&mut stream, &mut got, format!("PING {i};").as_bytes()).await;
        }
        // 4 MiB each way at once. (Not a half-close at the end: Envoy ends an upgraded stream
        // when the client closes its side, without waiting for the rest of the answer.)
        let blob: Vec<u8> = (0..4 << 20).map(|i| b'a' + (i % 26) as u8).collect();
        let (mut reader, mut writer) = stream.into_split();
        let sent = blob.clone();
        let writing = tokio::spawn(async move {
            writer.write_all(&sent).await.unwrap();
            writer
        });
        let mut back = vec![0u8; blob.len()];
        let early = got.len().min(back.len());
        back[..early].copy_from_slice(&got[..early]);
        reader.read_exact(&mut back[early..]).await.unwrap();
        let _writer = writing.await.unwrap();
        assert!(
            back == blob.to_ascii_uppercase(),
            "the echo differs from what was sent"
        );
    };
    tokio::time::timeout(Duration::from_secs(60), exchange)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the WebSocket exchange took over 60 s\n{}\n{}",
                client.log(),
                server.log()
            )
        });
    let heads = heads.lock().unwrap().clone();
    let upgrade = heads
        .iter()
        .find(|h| h.starts_with("GET /room/1 "))
        .unwrap_or_else(|| panic!("the app saw no upgrade request: {heads:?}"));
    let lower = upgrade.to_ascii_lowercase();
    assert!(lower.contains("\r\nupgrade: websocket\r\n"), "{upgrade}");
    assert!(
        lower.contains(&format!(
            "\r\nsec-websocket-key: {}\r\n",
            WS_KEY.to_ascii_lowercase()
        )),
        "{upgrade}"
    );
    assert!(lower.contains("\r\nhost: chat:8080\r\n"), "{upgrade}");
}

/// Reads until `got` holds `want`, then takes it out of `got`.
async fn read_exactly(stream: &mut TcpStream, got: &mut Vec<u8>, want: &[u8]) {
    let mut tmp = [0u8; 4096];
    while got.len() < want.len() {
        let n = stream.read(&mut tmp).await.unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(got));
        got.extend_from_slice(&tmp[..n]);
    }
    let rest = got.split_off(want.len());
    assert_eq!(String::from_utf8_lossy(got), String::from_utf8_lossy(want));
    *got = rest;
}

// ---------------------------------------------------------------------------------------------
// h2c and gRPC

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_and_grpc_through_both_sidecars() {
    h2c_and_grpc(DataPlane::Envoy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_and_grpc_through_both_sidecars_strait() {
    h2c_and_grpc(DataPlane::Strait).await;
}

/// A body fed from a channel: frames as the test sends them, the end when it drops the sender.
struct Channel(mpsc::Receiver<Frame<Bytes>>);

impl Body for Channel {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|f| f.map(Ok))
    }
}

/// A gRPC message: uncompressed, length-prefixed.
fn grpc_message(payload: &str) -> Bytes {
    let mut b = BytesMut::new();
    b.extend_from_slice(&[0]);
    b.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    b.extend_from_slice(payload.as_bytes());
    b.freeze()
}

/// Takes one whole gRPC message off the front of `buf`, if there is one.
fn take_message(buf: &mut BytesMut) -> Option<String> {
    if buf.len() < 5 {
        return None;
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if buf.len() < 5 + len {
        return None;
    }
    buf.advance(5);
    let payload = buf.split_to(len);
    Some(String::from_utf8_lossy(&payload).into_owned())
}

/// What the app saw of a request: the protocol, `:authority` (or Host), `te` and `content-type`.
fn seen(req: &Request<Incoming>) -> String {
    let h = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string()
    };
    let authority = req
        .uri()
        .authority()
        .map(|a| a.to_string())
        .unwrap_or_else(|| h("host"));
    format!(
        "{:?} authority={authority} te={} content-type={}",
        req.version(),
        h("te"),
        h("content-type")
    )
}

/// The gRPC app: `/test.Echo/Unary` answers its one message with `echo: MESSAGE`;
/// `/test.Echo/Chat` answers each message with `re: MESSAGE` as it comes, and at the end of the
/// client's stream sends trailers with the count. Other paths (h2c requests) get what the app saw
/// and the request body's length.
async fn grpc_app(req: Request<Incoming>) -> Response<TestBody> {
    let seen = seen(&req);
    let grpc = |body: TestBody| {
        Response::builder()
            .header("content-type", "application/grpc")
            .header("x-seen", &seen)
            .body(body)
            .unwrap()
    };
    match req.uri().path() {
        "/test.Echo/Unary" => {
            let mut body = BytesMut::from(req.into_body().collect().await.unwrap().to_bytes());
            let msg = take_message(&mut body).unwrap_or_default();
            let (tx, rx) = mpsc::channel(4);
            tx.send(Frame::data(grpc_message(&format!("echo: {msg}"))))
                .await
                .unwrap();
            tx.send(Frame::trailers(trailers(&[("grpc-status", "0")])))
                .await
                .unwrap();
            grpc(Channel(rx).boxed())
        }
        "/test.Echo/Chat" => {
            let (tx, rx) = mpsc::channel(4);
            let mut body = req.into_body();
            tokio::spawn(async move {
                let mut buf = BytesMut::new();
                let mut count = 0;
                while let Some(Ok(frame)) = body.frame().await {
                    if let Some(d) = frame.data_ref() {
                        buf.extend_from_slice(d);
                    }
                    while let Some(msg) = take_message(&mut buf) {
                        count += 1;
                        let reply = Frame::data(grpc_message(&format!("re: {msg}")));
                        if tx.send(reply).await.is_err() {
                            return;
                        }
                    }
                }
                let count = count.to_string();
                let _ = tx
                    .send(Frame::trailers(trailers(&[
                        ("grpc-status", "0"),
                        ("x-chat-count", &count),
                    ])))
                    .await;
            });
            grpc(Channel(rx).boxed())
        }
        _ => {
            let len = req.into_body().collect().await.unwrap().to_bytes().len();
            text(200, &format!("{seen} body={len}"))
        }
    }
}

fn trailers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut t = HeaderMap::new();
    for (k, v) in pairs {
        t.insert(*k, v.parse().unwrap());
    }
    t
}

async fn h2c_and_grpc(plane: DataPlane) {
    let mesh = Mesh::new();
    mesh.service("h2echo", 8080, "http2");
    mesh.service("greeter", 50051, "grpc");
    let app = spawn_app(grpc_app);
    let _h2_server = mesh
        .server_sidecar(plane, "h2echo", "v1", 8080, "HTTP2", app)
        .await;
    let _grpc_server = mesh
        .server_sidecar(plane, "greeter", "v1", 50051, "GRPC", app)
        .await;
    let client = mesh.sidecar(plane, "client-v1", "app=client").await;
    for url in ["http://h2echo:8080/ping", "http://greeter:50051/ping"] {
        client
            .get_until(url, &[], "the service through both sidecars", |r| {
                r.status == 200
            })
            .await;
    }

    let check = async {
        // h2c with prior knowledge: three streams at once on one connection.
        let mut h2 = h2_connect(client.http_proxy()).await;
        let calls = (0..3).map(|i| {
            let req = Request::post(format!("http://h2echo:8080/echo/{i}"))
                .body(Full::new(Bytes::from(vec![b'x'; 1000 * (i + 1)])).boxed())
                .unwrap();
            let sent = h2.send_request(req);
            async move {
                let resp = sent.await.expect("an h2c response");
                assert_eq!(resp.version(), hyper::Version::HTTP_2);
                assert_eq!(resp.status(), 200, "{resp:?}");
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                String::from_utf8_lossy(&body).into_owned()
            }
        });
        for (i, answer) in futures_all(calls.collect()).await.into_iter().enumerate() {
            // The app got HTTP/2 from the server's sidecar (a port named http2), with the
            // client's authority.
            assert_eq!(
                answer,
                format!(
                    "HTTP/2.0 authority=h2echo:8080 te=- content-type=- body={}",
                    1000 * (i + 1)
                )
            );
        }

        // gRPC unary.
        let req = grpc_request("/test.Echo/Unary", Full::new(grpc_message("hi")).boxed());
        let resp = h2.send_request(req).await.expect("a unary gRPC response");
        assert_eq!(resp.status(), 200, "{resp:?}");
        assert_eq!(
            resp.headers().get("x-seen").unwrap(),
            "HTTP/2.0 authority=greeter:50051 te=trailers content-type=application/grpc"
        );
        let collected = resp.into_body().collect().await.unwrap();
        assert_eq!(
            collected.trailers().and_then(|t| t.get("grpc-status")),
            Some(&"0".parse().unwrap()),
            "{collected:?}"
        );
        let mut data = BytesMut::from(collected.to_bytes());
        assert_eq!(take_message(&mut data).as_deref(), Some("echo: hi"));

        // gRPC bidirectional streaming: each reply arrives before the next message is sent.
        let (tx, rx) = mpsc::channel(4);
        let req = grpc_request("/test.Echo/Chat", Channel(rx).boxed());
        let sent = h2.send_request(req);
        tx.send(Frame::data(grpc_message("message 0")))
            .await
            .unwrap();
        let resp = sent.await.expect("a streaming gRPC response");
        assert_eq!(resp.status(), 200, "{resp:?}");
        let mut body = resp.into_body();
        let mut buf = BytesMut::new();
        for i in 0..5 {
            if i > 0 {
                tx.send(Frame::data(grpc_message(&format!("message {i}"))))
                    .await
                    .unwrap();
            }
            let reply = tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    if let Some(m) = take_message(&mut buf) {
                        return m;
                    }
                    let frame = body.frame().await.expect("the stream ended early").unwrap();
                    if let Some(d) = frame.data_ref() {
                        buf.extend_from_slice(d);
                    }
                }
            })
            .await
            .unwrap_or_else(|_| panic!("no reply to message {i} in 10 s: a body is held back"));
            assert_eq!(reply, format!("re: message {i}"));
        }
        drop(tx);
        let rest = body.collect().await.unwrap();
        let t = rest.trailers().expect("trailers at the end of the stream");
        assert_eq!(t.get("grpc-status").unwrap(), "0");
        assert_eq!(t.get("x-chat-count").unwrap(), "5");
        assert!(rest.to_bytes().is_empty());
    };
    tokio::time::timeout(Duration::from_secs(60), check)
        .await
        .unwrap_or_else(|_| panic!("the h2c and gRPC checks took over 60 s\n{}", client.log()));
}

fn grpc_request(path: &str, body: TestBody) -> Request<TestBody> {
    Request::post(format!("http://greeter:50051{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .unwrap()
}

/// Runs the futures at once, their outputs in order.
async fn futures_all<F: Future + Send + 'static>(futures: Vec<F>) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Apps and clients

fn listen() -> (TcpListener, SocketAddr) {
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std_listener.set_nonblocking(true).unwrap();
    let addr = std_listener.local_addr().unwrap();
    (TcpListener::from_std(std_listener).unwrap(), addr)
}

/// Serves `app` (HTTP/1.1 and h2c) on a new loopback port, on the test's runtime.
fn spawn_app<F, Fut>(app: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Copy + Send + Sync + 'static,
    Fut: Future<Output = Response<TestBody>> + Send + 'static,
{
    let (listener, addr) = listen();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| async move {
                    Ok::<_, Infallible>(app(req).await)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn text(status: u16, body: &str) -> Response<TestBody> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .unwrap()
}

/// One HTTP/1.1 request through a proxy (absolute-form target, as `HTTP_PROXY` clients send).
async fn h1_send<B>(proxy: SocketAddr, req: Request<B>) -> Response<Incoming>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(proxy).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    send.send_request(req)
        .await
        .unwrap_or_else(|e| panic!("request through {proxy}: {e}"))
}

/// An h2c (prior knowledge) connection to a proxy.
async fn h2_connect(proxy: SocketAddr) -> hyper::client::conn::http2::SendRequest<TestBody> {
    let stream = TcpStream::connect(proxy).await.unwrap();
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap_or_else(|e| panic!("h2c handshake with {proxy}: {e}"));
    tokio::spawn(conn);
    send
}
