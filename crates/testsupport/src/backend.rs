//! Test upstreams: an HTTP server that says who it is, and a TCP echo server.
//!
//! Each backend runs on its own thread with its own Tokio runtime, so it keeps answering whatever
//! the test's runtime is doing (blocked, single-threaded, or none at all).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HOST, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A request an HTTP backend received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    pub method: String,
    /// Path and query, as sent.
    pub path: String,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub protocol: String,
    /// Header names in lower case; repeated headers joined with `,`. For HTTP/2 the
    /// `:authority` appears as `host`.
    pub headers: BTreeMap<String, String>,
}

impl RecordedRequest {
    /// A header's value (names are lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

struct HttpState {
    name: String,
    version: String,
    status: AtomicU16,
    delay_ms: AtomicU64,
    requests: Mutex<Vec<RecordedRequest>>,
    /// Connections open now.
    open: AtomicU64,
}

struct EchoState {
    prefix: String,
    lines: AtomicU64,
    connections: AtomicU64,
}

enum Kind {
    Http(Arc<HttpState>),
    Echo(Arc<EchoState>),
}

/// A test upstream on loopback, stopped on drop.
pub struct Backend {
    addr: SocketAddr,
    kind: Kind,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Backend {
    /// An HTTP backend on `127.0.0.1:0` (see [`Backend::http_on`]).
    pub fn http(name: &str, version: &str) -> Backend {
        Backend::http_on("127.0.0.1:0".parse().unwrap(), name, version)
    }

    /// An HTTP/1.1 and h2c (prior knowledge) backend on `addr` that answers every request with
    /// 200 (see [`Backend::set_status`]), the header `x-backend: NAME-VERSION` and a JSON body
    /// `{"service", "version", "path", "method", "protocol", "headers"}`.
    pub fn http_on(addr: SocketAddr, name: &str, version: &str) -> Backend {
        let state = Arc::new(HttpState {
            name: name.to_string(),
            version: version.to_string(),
            status: AtomicU16::new(200),
            delay_ms: AtomicU64::new(0),
            requests: Mutex::new(Vec::new()),
            open: AtomicU64::new(0),
        });
        let serving = state.clone();
        Backend::spawn(
            addr,
            &format!("{name}-{version}"),
            Kind::Http(state),
            move |listener| serve_http(listener, serving),
        )
    }

    /// A TCP echo backend on `127.0.0.1:0` (see [`Backend::tcp_echo_on`]).
    pub fn tcp_echo(prefix: &str) -> Backend {
        Backend::tcp_echo_on("127.0.0.1:0".parse().unwrap(), prefix)
    }

    /// A TCP backend like Istio's `tcp-echo`: answers each line with `PREFIX line`.
    pub fn tcp_echo_on(addr: SocketAddr, prefix: &str) -> Backend {
        let state = Arc::new(EchoState {
            prefix: prefix.to_string(),
            lines: AtomicU64::new(0),
            connections: AtomicU64::new(0),
        });
        let serving = state.clone();
        Backend::spawn(
            addr,
            &format!("tcp-echo-{prefix}"),
            Kind::Echo(state),
            move |listener| serve_echo(listener, serving),
        )
    }

    fn spawn<F, Fut>(addr: SocketAddr, name: &str, kind: Kind, serve: F) -> Backend
    where
        F: FnOnce(TcpListener) -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        // Bind here, so the address is known (and a bind error shows) before this returns.
        let std_listener = StdTcpListener::bind(addr)
            .unwrap_or_else(|e| panic!("backend {name}: cannot listen on {addr}: {e}"));
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(format!("backend-{name}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a Tokio runtime for a backend");
                rt.block_on(async move {
                    let listener = TcpListener::from_std(std_listener).unwrap();
                    tokio::select! {
                        _ = rx => {}
                        () = serve(listener) => {}
                    }
                });
                // Dropping the runtime here cancels the open connections.
            })
            .expect("a thread for a backend");
        Backend {
            addr,
            kind,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    /// Where the backend listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answer every following request with `status` (the body stays the same JSON).
    pub fn set_status(&self, status: u16) {
        StatusCode::from_u16(status).unwrap_or_else(|_| panic!("{status} is not an HTTP status"));
        self.http_state().status.store(status, Ordering::SeqCst);
    }

    /// Wait this long before answering each following request.
    pub fn set_delay(&self, delay: Duration) {
        self.http_state()
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// The requests received so far (an HTTP backend), in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.http_state().requests.lock().unwrap().clone()
    }

    /// Requests received (an HTTP backend) or lines echoed (a TCP echo backend).
    pub fn request_count(&self) -> usize {
        match &self.kind {
            Kind::Http(s) => s.requests.lock().unwrap().len(),
            Kind::Echo(s) => s.lines.load(Ordering::SeqCst) as usize,
        }
    }

    /// Connections accepted (a TCP echo backend).
    pub fn connection_count(&self) -> usize {
        match &self.kind {
            Kind::Echo(s) => s.connections.load(Ordering::SeqCst) as usize,
            Kind::Http(_) => panic!("connection_count is for TCP echo backends"),
        }
    }

    /// Connections open now (an HTTP backend): accepted and not yet closed by either side.
    pub fn open_connections(&self) -> usize {
        self.http_state().open.load(Ordering::SeqCst) as usize
    }

    fn http_state(&self) -> &HttpState {
        match &self.kind {
            Kind::Http(s) => s,
            Kind::Echo(s) => panic!(
                "the TCP echo backend {:?} has no HTTP knobs or requests",
                s.prefix
            ),
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            // Quick: the runtime stops at once. Joining frees the port before drop returns.
            let _ = thread.join();
        }
    }
}

async fn serve_http(listener: TcpListener, state: Arc<HttpState>) {
    loop {
        let Ok((stream, _peer)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            state.open.fetch_add(1, Ordering::SeqCst);
            let serving = state.clone();
            let service = service_fn(move |req| answer(serving.clone(), req));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
            state.open.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

async fn answer(
    state: Arc<HttpState>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in req.headers() {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers
            .entry(name.as_str().to_string())
            .and_modify(|v| {
                v.push(',');
                v.push_str(&value);
            })
            .or_insert(value);
    }
    if !headers.contains_key(HOST.as_str())
        && let Some(authority) = req.uri().authority()
    {
        headers.insert(HOST.as_str().to_string(), authority.to_string());
    }
    let recorded = RecordedRequest {
        method: req.method().to_string(),
        path: req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string(),
        protocol: format!("{:?}", req.version()),
        headers,
    };
    // Read the body to the end, so the connection can carry the next request.
    let _ = req.into_body().collect().await;
    state.requests.lock().unwrap().push(recorded.clone());

    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let body = json!({
        "service": state.name,
        "version": state.version,
        "path": recorded.path,
        "method": recorded.method,
        "protocol": recorded.protocol,
        "headers": recorded.headers,
    });
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = StatusCode::from_u16(state.status.load(Ordering::SeqCst))
        .expect("set_status checks the status");
    let tag = format!("{}-{}", state.name, state.version);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Ok(tag) = HeaderValue::from_str(&tag) {
        headers.insert("x-backend", tag);
    }
    // An app's own server header, which proxies overwrite or pass on as configured.
    headers.insert(
        hyper::header::SERVER,
        HeaderValue::from_static(BACKEND_SERVER),
    );
    Ok(response)
}

/// The `server` header HTTP backends answer with.
pub const BACKEND_SERVER: &str = "strait-test-backend";

async fn serve_echo(listener: TcpListener, state: Arc<EchoState>) {
    loop {
        let Ok((stream, _peer)) = listener.accept().await else {
            continue;
        };
        state.connections.fetch_add(1, Ordering::SeqCst);
        let state = state.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                state.lines.fetch_add(1, Ordering::SeqCst);
                let answer = format!("{} {line}\n", state.prefix);
                if write.write_all(answer.as_bytes()).await.is_err() {
                    break;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpStream;

    use super::*;
    use crate::{http_get, http2_get};

    #[tokio::test]
    async fn answers_with_its_name_and_version() {
        let backend = Backend::http("reviews", "v2");
        let url = format!("http://{}/reviews/0?u=1", backend.addr());
        let reply = http_get(&url, &[("x-user", "jason")]).await.unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("x-backend"), Some("reviews-v2"));
        let body = reply.json();
        assert_eq!(body["service"], "reviews");
        assert_eq!(body["version"], "v2");
        assert_eq!(body["path"], "/reviews/0?u=1");
        assert_eq!(body["method"], "GET");
        assert_eq!(body["protocol"], "HTTP/1.1");
        assert_eq!(body["headers"]["x-user"], "jason");

        let seen = backend.requests();
        assert_eq!(backend.request_count(), 1);
        assert_eq!(seen[0].path, "/reviews/0?u=1");
        assert_eq!(seen[0].header("X-User"), Some("jason"));
        assert_eq!(
            seen[0].header("host"),
            Some(backend.addr().to_string().as_str())
        );
    }

    #[tokio::test]
    async fn speaks_h2c() {
        let backend = Backend::http("ratings", "v1");
        let reply = http2_get(&format!("http://{}/ratings/1", backend.addr()), &[])
            .await
            .unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.json()["protocol"], "HTTP/2.0");
        assert_eq!(backend.requests()[0].protocol, "HTTP/2.0");
        assert_eq!(
            backend.requests()[0].header("host"),
            Some(backend.addr().to_string().as_str())
        );
    }

    #[tokio::test]
    async fn set_status_and_delay_apply_to_later_requests() {
        let backend = Backend::http_on("127.0.10.201:0".parse().unwrap(), "details", "v1");
        assert_eq!(backend.addr().ip().to_string(), "127.0.10.201");
        let url = format!("http://{}/", backend.addr());
        backend.set_status(503);
        let reply = http_get(&url, &[]).await.unwrap();
        assert_eq!(reply.status, 503);
        assert_eq!(reply.json()["service"], "details");

        backend.set_status(200);
        backend.set_delay(Duration::from_millis(300));
        let started = std::time::Instant::now();
        assert_eq!(http_get(&url, &[]).await.unwrap().status, 200);
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(backend.request_count(), 2);
    }

    #[tokio::test]
    async fn tcp_echo_prefixes_each_line() {
        let backend = Backend::tcp_echo("one");
        let stream = TcpStream::connect(backend.addr()).await.unwrap();
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        write.write_all(b"hello\nworld\n").await.unwrap();
        assert_eq!(lines.next_line().await.unwrap().unwrap(), "one hello");
        assert_eq!(lines.next_line().await.unwrap().unwrap(), "one world");
        assert_eq!(backend.request_count(), 2);
        assert_eq!(backend.connection_count(), 1);
    }

    #[test]
    fn drop_frees_the_port() {
        let backend = Backend::http("a", "v1");
        let addr = backend.addr();
        drop(backend);
        StdTcpListener::bind(addr).expect("the port is free after drop");
    }
}
