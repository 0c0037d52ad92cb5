//! Route policies strait-proxy once refused and now serves as Envoy does: a VirtualService's
//! `corsPolicy` (preflights answered by the proxy, CORS headers on responses), a fault abort
//! with a gRPC status (a trailers-only gRPC response), and the retry conditions
//! `reset-before-request` and `refused-stream`. Each scenario runs with Envoy and with
//! strait-proxy as the client's sidecar, with the same YAML and the same assertions.

use strait_e2e as support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hyper::Method;
use strait_testsupport::{Backend, HttpReply, free_loopback_addr, http_request};
use support::mesh::{DataPlane, Mesh, Proxy};

const REVIEWS: &str = "http://reviews:9080/reviews/0";

/// A request of any method to the sidecar's HTTP proxy listener, in origin form with `Host`.
async fn request(
    proxy: &Proxy,
    method: Method,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> HttpReply {
    let mut all = vec![("host", host)];
    all.extend_from_slice(headers);
    let url = format!("http://{}{path}", proxy.http_proxy());
    http_request(method, &url, &all, "")
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}\n{}", proxy.log()))
}

const CORS_VS: &str = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - corsPolicy:
      allowOrigins:
      - exact: https://example.com
      - regex: 'https://.*\.example\.org'
      allowMethods: [GET, POST]
      allowHeaders: [x-custom]
      exposeHeaders: [x-exposed]
      maxAge: 24h
      allowCredentials: true
    route:
    - destination: {host: reviews, subset: v1}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflights_and_responses() {
    cors(DataPlane::Envoy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflights_and_responses_strait() {
    cors(DataPlane::Strait).await;
}

async fn cors(plane: DataPlane) {
    let mesh = Mesh::bookinfo();
    let client = mesh.sidecar(plane, "client", "app=client").await;
    mesh.apply_yaml("vs-cors.yaml", CORS_VS);
    let allowed = [("origin", "https://example.com")];
    client
        .get_until(REVIEWS, &allowed, "the CORS policy", |r| {
            r.header("access-control-allow-origin") == Some("https://example.com")
        })
        .await;

    // A preflight from an allowed origin is answered by the proxy: 200, the policy's headers,
    // nothing upstream.
    let before = mesh.backend("reviews", "v1").request_count();
    let r = request(
        &client,
        Method::OPTIONS,
        "reviews:9080",
        "/reviews/0",
        &[
            ("origin", "https://api.example.org"),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "x-custom"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://api.example.org")
    );
    assert_eq!(r.header("access-control-allow-methods"), Some("GET,POST"));
    assert_eq!(r.header("access-control-allow-headers"), Some("x-custom"));
    assert_eq!(r.header("access-control-max-age"), Some("86400"));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(r.body, "");
    assert_eq!(
        mesh.backend("reviews", "v1").request_count(),
        before,
        "a preflight does not go upstream"
    );

    // A preflight from another origin goes upstream (Istio's default: forwarded), and gets no
    // CORS headers.
    let r = request(
        &client,
        Method::OPTIONS,
        "reviews:9080",
        "/reviews/0",
        &[
            ("origin", "https://evil.example"),
            ("access-control-request-method", "POST"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["method"], "OPTIONS", "answered by the backend");
    assert_eq!(r.header("access-control-allow-origin"), None);

    // A simple request: the response gets the origin, credentials and exposed headers.
    let r = client.get(REVIEWS, &allowed).await;
    assert_eq!(r.json()["version"], "v1");
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://example.com")
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(r.header("access-control-expose-headers"), Some("x-exposed"));
    assert_eq!(r.header("access-control-allow-methods"), None);
    // From an origin that is not allowed, or without one: no CORS headers.
    for headers in [&[("origin", "https://evil.example")][..], &[]] {
        let r = client.get(REVIEWS, headers).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("access-control-allow-origin"), None, "{headers:?}");
    }
}

const GRPC_ABORT_VS: &str = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings}
spec:
  hosts: [ratings]
  http:
  - fault:
      abort:
        grpcStatus: UNAVAILABLE
        percentage: {value: 100}
    route:
    - destination: {host: ratings, subset: v1}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_fault_aborts_answer_trailers_only() {
    grpc_abort(DataPlane::Envoy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_fault_aborts_answer_trailers_only_strait() {
    grpc_abort(DataPlane::Strait).await;
}

async fn grpc_abort(plane: DataPlane) {
    let mesh = Mesh::bookinfo();
    let client = mesh.sidecar(plane, "client", "app=client").await;
    mesh.apply_yaml("vs-grpc-abort.yaml", GRPC_ABORT_VS);
    let grpc = [("content-type", "application/grpc"), ("te", "trailers")];
    let r = client
        .get_until(
            "http://ratings:9080/ratings.Ratings/Get",
            &grpc,
            "the gRPC abort",
            |r| r.header("grpc-status").is_some(),
        )
        .await;
    // Requests before the VirtualService arrived went to ratings; none from here on.
    let reached = mesh.backend("ratings", "v1").request_count();
    // A trailers-only gRPC response: 200, the configured status, Envoy's message, no body.
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("grpc-status"), Some("14"));
    assert_eq!(r.header("grpc-message"), Some("fault filter abort"));
    assert_eq!(r.header("content-type"), Some("application/grpc"));
    assert_eq!(r.body, "");
    // A request that is not gRPC gets the abort's plain 200 with Envoy's body.
    let r = client.get("http://ratings:9080/ratings/0", &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("grpc-status"), None);
    assert_eq!(r.body.trim_end(), "fault filter abort");
    assert_eq!(
        mesh.backend("ratings", "v1").request_count(),
        reached,
        "an aborted request reached ratings"
    );
}

/// `flaky`: one endpoint that refuses connections (nothing listens there) and one that
/// answers; the VirtualService retries with `retry_on`.
fn flaky_vs(retry_on: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: flaky}}\nspec:\n  hosts: [flaky]\n  http:\n  - retries: {{attempts: 3, retryOn: {retry_on}}}\n    route:\n    - destination: {{host: flaky}}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_before_request_retries_connect_failures() {
    reset_before_request(DataPlane::Envoy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_before_request_retries_connect_failures_strait() {
    reset_before_request(DataPlane::Strait).await;
}

async fn reset_before_request(plane: DataPlane) {
    let mut mesh = Mesh::new();
    mesh.service("flaky", 9080, "http");
    mesh.workload("flaky", "up", "http", Backend::http("flaky", "up"));
    let dead = free_loopback_addr();
    mesh.apply_yaml(
        "we-flaky-dead.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: flaky-dead}}\nspec:\n  address: {}\n  ports: {{http: {}}}\n  labels: {{app: flaky, version: dead}}\n",
            dead.ip(),
            dead.port()
        ),
    );
    let client = mesh.sidecar(plane, "client", "app=client").await;
    let url = "http://flaky:9080/x";
    // Without a condition that covers it, a connect failure is the answer for some requests.
    mesh.apply_yaml("vs-flaky.yaml", &flaky_vs("retriable-4xx"));
    client
        .get_until(url, &[], "the live endpoint", |r| r.status == 200)
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut failed = 0;
    for _ in 0..30 {
        if client.get(url, &[]).await.status == 503 {
            failed += 1;
        }
    }
    assert!(
        failed > 0,
        "no request met the dead endpoint: the test shows nothing"
    );
    // reset-before-request: nothing was sent to the dead endpoint, so it is retried.
    mesh.apply_yaml("vs-flaky.yaml", &flaky_vs("reset-before-request"));
    wait_retry_on(&client, "reset-before-request").await;
    for i in 0..30 {
        let r = client.get(url, &[]).await;
        assert_eq!(r.status, 200, "request {i}: {r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_stream_retries_streams_an_http2_upstream_refused() {
    refused_stream(DataPlane::Envoy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_stream_retries_streams_an_http2_upstream_refused_strait() {
    refused_stream(DataPlane::Strait).await;
}

/// An h2c server that resets every stream with REFUSED_STREAM; returns its address and how many
/// streams it refused.
fn spawn_refusing_h2() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let refused = Arc::new(AtomicUsize::new(0));
    let count = refused.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            while let Ok((tcp, _)) = listener.accept().await {
                let count = count.clone();
                tokio::spawn(async move {
                    let Ok(mut conn) = h2::server::handshake(tcp).await else {
                        return;
                    };
                    while let Some(Ok((_req, mut respond))) = conn.accept().await {
                        count.fetch_add(1, Ordering::Relaxed);
                        respond.send_reset(h2::Reason::REFUSED_STREAM);
                    }
                });
            }
        });
    });
    (addr, refused)
}

async fn refused_stream(plane: DataPlane) {
    let mut mesh = Mesh::new();
    // Port name `http2`: the cluster speaks HTTP/2 to its endpoints.
    mesh.service("refusing", 9080, "http2");
    mesh.workload("refusing", "up", "http2", Backend::http("refusing", "up"));
    let (refuser, refused) = spawn_refusing_h2();
    mesh.apply_yaml(
        "we-refusing.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: refusing-busy}}\nspec:\n  address: {}\n  ports: {{http2: {}}}\n  labels: {{app: refusing, version: busy}}\n",
            refuser.ip(),
            refuser.port()
        ),
    );
    let client = mesh.sidecar(plane, "client", "app=client").await;
    let url = "http://refusing:9080/x";
    let vs = |retry_on: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: refusing}}\nspec:\n  hosts: [refusing]\n  http:\n  - retries: {{attempts: 3, retryOn: {retry_on}}}\n    route:\n    - destination: {{host: refusing}}\n"
        )
    };
    // Without the condition, a refused stream is the answer for some requests.
    mesh.apply_yaml("vs-refusing.yaml", &vs("retriable-4xx"));
    client
        .get_until(url, &[], "the live endpoint", |r| r.status == 200)
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut failed = 0;
    for _ in 0..30 {
        if client.get(url, &[]).await.status == 503 {
            failed += 1;
        }
    }
    assert!(
        failed > 0 && refused.load(Ordering::Relaxed) > 0,
        "no request met the refusing endpoint: the test shows nothing"
    );
    mesh.apply_yaml("vs-refusing.yaml", &vs("refused-stream"));
    wait_retry_on(&client, "refused-stream").await;
    let before = refused.load(Ordering::Relaxed);
    for i in 0..30 {
        let r = client.get(url, &[]).await;
        assert_eq!(r.status, 200, "request {i}: {r:?}");
    }
    assert!(
        refused.load(Ordering::Relaxed) > before,
        "no stream was refused: nothing was retried"
    );
}

/// Waits until the proxy's config has a route whose `retry_on` is exactly `condition` (as
/// Envoy's dump writes it, a string, or strait-proxy's, a list).
async fn wait_retry_on(proxy: &Proxy, condition: &str) {
    let envoy = format!("\"retry_on\":\"{condition}\"");
    let strait = format!("\"retry_on\":[\"{condition}\"]");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let dump = proxy.config_dump().await;
        if dump.contains(&envoy) || dump.contains(&strait) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "retry_on {condition} did not arrive within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
}
