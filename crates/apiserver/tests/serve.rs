//! The API server's limits over real TCP on loopback: a trickled request head, a body that
//! never completes and an idle connection are closed in time; idle unauthenticated connections
//! are capped without locking out new clients or displacing authenticated ones.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use strait_apiserver::{ApiState, Limits, Server, router};
use strait_store::{MemoryStore, Store};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "serve-test-token";

struct Api {
    addr: std::net::SocketAddr,
    server: Arc<Server>,
    store: Arc<dyn Store>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start(limits: Limits, body_timeout: Duration) -> Api {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let state = ApiState::new(store.clone(), TOKEN).with_body_timeout(body_timeout);
    let app = router(state, Router::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Arc::new(Server::new(limits));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let s = server.clone();
    tokio::spawn(async move {
        s.serve(
            listener,
            app,
            async move {
                let _ = stopped.await;
            },
            Duration::from_secs(1),
        )
        .await;
    });
    Api {
        addr,
        server,
        store,
        _stop: stop,
    }
}

fn limits() -> Limits {
    Limits {
        header_read_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(2),
        max_unauthenticated: 8,
        max_authenticated: 4,
    }
}

/// Reads until the server closes the connection (or `within` passes: then panics); returns
/// what it read.
async fn read_to_close(stream: &mut TcpStream, within: Duration) -> String {
    let mut out = Vec::new();
    let result = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        result.is_ok(),
        "the connection was still open after {within:?}; got {:?}",
        String::from_utf8_lossy(&out)
    );
    String::from_utf8_lossy(&out).into_owned()
}

async fn request(addr: std::net::SocketAddr, raw: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(raw.as_bytes()).await.unwrap();
    read_to_close(&mut s, Duration::from_secs(5)).await
}

fn healthz() -> &'static str {
    "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
}

fn authed_list() -> String {
    format!(
        "GET /api/v1/namespaces/default/services HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    )
}

#[tokio::test]
async fn a_trickled_request_head_is_cut_off() {
    let api = start(limits(), Duration::from_secs(2)).await;
    let mut s = TcpStream::connect(api.addr).await.unwrap();
    let started = Instant::now();
    let head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaa";
    let trickle = async {
        for b in head {
            if s.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(6), trickle).await;
    let got = read_to_close(&mut s, Duration::from_secs(6)).await;
    assert!(!got.contains("200 OK"), "{got}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "open for {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_body_that_never_completes_gets_408_and_the_connection_closes() {
    let api = start(limits(), Duration::from_secs(1)).await;
    let mut s = TcpStream::connect(api.addr).await.unwrap();
    let raw = format!(
        "POST /apis/networking.istio.io/v1/namespaces/default/virtualservices HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{"
    );
    s.write_all(raw.as_bytes()).await.unwrap();
    let got = read_to_close(&mut s, Duration::from_secs(5)).await;
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    assert!(got.contains("did not arrive"), "{got}");
    assert_eq!(api.store.revision(), 0);
}

#[tokio::test]
async fn an_idle_connection_is_closed_and_a_busy_one_is_not() {
    let api = start(limits(), Duration::from_secs(2)).await;
    let mut idle = TcpStream::connect(api.addr).await.unwrap();
    // Used once, then idle: closed about idle_timeout after the answer.
    let mut used = TcpStream::connect(api.addr).await.unwrap();
    used.write_all(authed_list().as_bytes()).await.unwrap();
    let mut buf = [0u8; 4096];
    let n = used.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // A watch is a request in flight: never idle, however quiet.
    let mut watch = TcpStream::connect(api.addr).await.unwrap();
    watch
        .write_all(
            format!(
                "GET /api/v1/namespaces/default/services?watch=true HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let n = watch.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    read_to_close(&mut idle, Duration::from_secs(5)).await;
    read_to_close(&mut used, Duration::from_secs(5)).await;
    let still = tokio::time::timeout(Duration::from_secs(1), watch.read(&mut buf)).await;
    assert!(still.is_err(), "the quiet watch was closed: {still:?}");
    // And it still delivers.
    api.store
        .put(
            &strait_store::Key::new("service", "default", "web"),
            serde_json::json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"}}),
            strait_store::Precondition::None,
        )
        .unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), watch.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("\"ADDED\""));
}

#[tokio::test]
async fn idle_unauthenticated_connections_are_capped_and_lock_nobody_out() {
    let mut l = limits();
    l.idle_timeout = Duration::from_secs(60);
    l.header_read_timeout = Duration::from_secs(60);
    let api = start(l, Duration::from_secs(2)).await;
    // An authenticated client, kept open.
    let mut client = TcpStream::connect(api.addr).await.unwrap();
    let mut buf = [0u8; 8192];
    client.write_all(authed_list().as_bytes()).await.unwrap();
    let n = client.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Ten times the cap of idle connections that never send a byte.
    let mut flood = Vec::new();
    for _ in 0..80 {
        flood.push(TcpStream::connect(api.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (unauthenticated, authenticated) = api.server.connections();
    assert!(
        unauthenticated <= 8,
        "{unauthenticated} unauthenticated connections open"
    );
    assert_eq!(authenticated, 1);
    // New clients still get in: a health check, and an authenticated write.
    let got = request(api.addr, healthz()).await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    let body = r#"{"apiVersion":"v1","kind":"ServiceAccount","metadata":{"name":"sa"}}"#;
    let got = request(
        api.addr,
        &format!(
            "POST /api/v1/namespaces/default/serviceaccounts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 201"), "{got}");
    // The authenticated client's connection was not displaced.
    client.write_all(authed_list().as_bytes()).await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Most of the flood was closed.
    let mut closed = 0;
    for s in &mut flood {
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(20), s.read(&mut buf)).await {
            closed += 1;
        }
    }
    assert!(closed >= 70, "only {closed} of 80 idle connections closed");
}

/// One HTTP/1.1 request on a new connection: the status code.
async fn status_of(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> u16 {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    s.write_all(
        format!("{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let text = read_to_close(&mut s, Duration::from_secs(5)).await;
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Open paths: public ones to anyone; loopback-read ones to GETs from loopback without the
/// token, while writes there and every other path still need it. (Peers beyond loopback are
/// the unit tests': a request with no known peer is refused there.)
#[tokio::test]
async fn open_paths_need_no_token_from_loopback_reads_only() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let state = ApiState::new(store, TOKEN).with_open_paths(strait_apiserver::OpenPaths {
        public: vec!["/page"],
        loopback_read: vec!["/api/graph"],
    });
    let ok = || async { "ok" };
    let extra = Router::new()
        .route("/page/", axum::routing::get(ok))
        .route("/api/graph", axum::routing::get(ok).post(ok))
        .route("/api/graphs", axum::routing::get(ok))
        .route("/debug/x", axum::routing::get(ok));
    let app = router(state, extra);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::new(limits());
    tokio::spawn(async move {
        server
            .serve(
                listener,
                app,
                std::future::pending(),
                Duration::from_secs(1),
            )
            .await;
    });
    assert_eq!(status_of(addr, "GET", "/page/", None).await, 200);
    assert_eq!(status_of(addr, "GET", "/api/graph", None).await, 200);
    assert_eq!(status_of(addr, "POST", "/api/graph", None).await, 401);
    assert_eq!(
        status_of(addr, "POST", "/api/graph", Some(TOKEN)).await,
        200
    );
    // A prefix is a path segment, not a string prefix.
    assert_eq!(status_of(addr, "GET", "/api/graphs", None).await, 401);
    assert_eq!(status_of(addr, "GET", "/debug/x", None).await, 401);
    assert_eq!(status_of(addr, "GET", "/debug/x", Some("wrong")).await, 401);
    // The Kubernetes-shaped API beside /api/graph is unchanged.
    assert_eq!(
        status_of(addr, "GET", "/api/v1/namespaces/default/services", None).await,
        401
    );
    assert_eq!(
        status_of(
            addr,
            "GET",
            "/api/v1/namespaces/default/services",
            Some(TOKEN)
        )
        .await,
        200
    );
    // Deeper paths under an open prefix skip the token but reach no resource: the
    // Kubernetes-shaped route takes `graph` as the API version and serves none by that name,
    // dot segments included (nothing normalises them into /api/v1).
    for path in [
        "/api/graph/namespaces/default/services",
        "/api/graph/../v1/namespaces/default/services",
        "/api/graph/%2e%2e/v1/namespaces/default/services",
    ] {
        assert_eq!(status_of(addr, "GET", path, None).await, 404, "{path}");
    }
}
