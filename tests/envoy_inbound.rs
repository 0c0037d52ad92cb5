//! Client sidecar → server sidecar → application, without capture: the server's sidecar listens
//! on the workload's address (its WorkloadEntry) and forwards to where a Sidecar resource's
//! ingress listener says the application is (`defaultEndpoint`). Both sidecars are Envoy, then
//! both are strait-proxy: the same YAML, the same assertions.

use strait_e2e as support;

use std::time::{Duration, Instant};

use strait_testsupport::Backend;
use support::mesh::{DataPlane, Mesh};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_reach_the_app_through_its_sidecar_ingress() {
    through_both_sidecars(DataPlane::Envoy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_reach_the_app_through_its_sidecar_ingress_strait() {
    through_both_sidecars(DataPlane::Strait).await;
}

async fn through_both_sidecars(plane: DataPlane) {
    let mesh = Mesh::new();
    mesh.service("reviews", 9080, "http");
    let app = Backend::http("reviews", "v1");
    let server = mesh
        .server_sidecar(plane, "reviews", "v1", 9080, "HTTP", app.addr())
        .await;
    let client = mesh
        .sidecar(plane, "productpage-v1", "app=productpage")
        .await;
    let r = client
        .get_until(
            "http://reviews:9080/reviews/0?x=1",
            &[],
            "reviews through its sidecar",
            |r| r.status == 200,
        )
        .await;
    // Only the server's sidecar knows where the app is (the Sidecar's defaultEndpoint): a 200
    // from it means the request went client sidecar → server sidecar → app.
    assert_eq!(r.json()["service"], "reviews");
    assert_eq!(r.json()["path"], "/reviews/0?x=1");
    let seen = app.requests().pop().expect("the app saw the request");
    assert_eq!(seen.method, "GET");
    assert_eq!(seen.header("host"), Some("reviews:9080"), "{seen:?}");
    // The client's sidecar gives the request an id that the server's passes on, and the
    // server's sidecar says how the request came in.
    let id = seen.header("x-request-id").unwrap_or_default();
    assert_eq!(id.len(), 36, "x-request-id is a UUID: {seen:?}");
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"), "{seen:?}");
    // An id the client sets itself goes through both sidecars unchanged.
    let r = client
        .get(
            "http://reviews:9080/reviews/1",
            &[("x-request-id", "my-own-id")],
        )
        .await;
    assert_eq!(r.status, 200);
    let seen = app.requests().pop().unwrap();
    assert_eq!(seen.header("x-request-id"), Some("my-own-id"), "{seen:?}");
    // A request with a body goes through both (raw HTTP/1.1, as an app with HTTP_PROXY sends).
    let post = raw_exchange(
        client.http_proxy(),
        "POST http://reviews:9080/reviews/2 HTTP/1.1\r\nHost: reviews:9080\r\nContent-Type: text/plain\r\nContent-Length: 18\r\nConnection: close\r\n\r\na body for reviews",
    )
    .await;
    assert!(post.starts_with("HTTP/1.1 200"), "{post}");
    let seen = app.requests().pop().unwrap();
    assert_eq!(
        (seen.method.as_str(), seen.path.as_str()),
        ("POST", "/reviews/2")
    );
    assert_eq!(seen.header("content-length"), Some("18"), "{seen:?}");
    // The server's inbound cluster counted the requests.
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.upstream_requests("inbound|9080||").await < 3 {
        assert!(
            Instant::now() < deadline,
            "the server sidecar's inbound cluster did not count the requests\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(app.request_count() >= 3);
}

/// Sends `request` as is and reads the answer to the end of the connection (10 s at most).
async fn raw_exchange(addr: std::net::SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&answer).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .unwrap_or_else(|_| panic!("no complete answer from {addr} in 10 s"))
        .unwrap_or_else(|e| panic!("exchange with {addr}: {e}"))
}
