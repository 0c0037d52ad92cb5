//! Fixtures for the Bookinfo tests: the services as processes on loopback ports, a recording
//! HTTP proxy (what a sidecar's HTTP-proxy listener sees), and a server that never answers.

#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use strait_testsupport::{HttpReply, http_get, http_request};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, ChildStdout, Command};

/// One Bookinfo service, a child process stopped on drop.
pub struct Service {
    pub name: &'static str,
    pub addr: SocketAddr,
    child: Child,
    _stdout: BufReader<ChildStdout>,
}

impl Service {
    /// Starts `bookinfo NAME --listen 127.0.0.1:0` with only `env` in its environment (so a
    /// proxy set for the test run cannot leak in) and waits for the address it reports.
    pub async fn start(name: &'static str, env: &[(String, String)]) -> Service {
        let mut child = Command::new(env!("CARGO_BIN_EXE_bookinfo"))
            .args([name, "--listen", "127.0.0.1:0"])
            .env_clear()
            .env("RUST_LOG", "warn")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect(
                "cannot start target/debug/bookinfo: build it with cargo build -p strait-bookinfo",
            );
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut line = String::new();
        // Kept open with the process: its stdout must not turn into a broken pipe.
        let mut stdout = BufReader::new(stdout);
        let read = stdout.read_line(&mut line);
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .unwrap_or_else(|_| panic!("bookinfo {name} did not report its address within 10 s"))
            .expect("reading bookinfo's stdout");
        // "bookinfo NAME VERSION listening on ADDR"
        let addr = line
            .trim()
            .rsplit(' ')
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("bookinfo {name} printed {line:?}, not its address"));
        Service {
            name,
            addr,
            child,
            _stdout: stdout,
        }
    }

    /// The variables that point the other services at this one, as Istio's Bookinfo reads them.
    pub fn env(&self) -> Vec<(String, String)> {
        let prefix = self.name.to_ascii_uppercase();
        vec![
            (format!("{prefix}_HOSTNAME"), self.addr.ip().to_string()),
            (
                format!("{prefix}_SERVICE_PORT"),
                self.addr.port().to_string(),
            ),
        ]
    }

    /// `http://ADDR{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Kills the process and waits until it is gone.
    pub async fn kill(&mut self) {
        self.child.kill().await.expect("killing a bookinfo service");
    }
}

/// `KEY=VALUE` pairs.
pub fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The four services wired to each other by address.
pub struct Bookinfo {
    pub productpage: Service,
    pub details: Service,
    pub reviews: Service,
    pub ratings: Service,
}

impl Bookinfo {
    pub async fn start(reviews_version: &str) -> Bookinfo {
        let ratings = Service::start("ratings", &[]).await;
        let details = Service::start("details", &[]).await;
        let mut env = ratings.env();
        env.extend(vars(&[("SERVICE_VERSION", reviews_version)]));
        let reviews = Service::start("reviews", &env).await;
        let mut env = details.env();
        env.extend(reviews.env());
        env.extend(ratings.env());
        let productpage = Service::start("productpage", &env).await;
        Bookinfo {
            productpage,
            details,
            reviews,
            ratings,
        }
    }

    /// `GET /productpage`, which must answer 200.
    pub async fn page(&self, headers: &[(&str, &str)]) -> String {
        page(&self.productpage, headers).await
    }
}

/// `GET /productpage` on `productpage`, which must answer 200 (it does even when its calls fail).
pub async fn page(productpage: &Service, headers: &[(&str, &str)]) -> String {
    let reply = get(&productpage.url("/productpage"), headers).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body
}

pub async fn get(url: &str, headers: &[(&str, &str)]) -> HttpReply {
    http_get(url, headers)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// Replaces a product's ratings in the ratings service.
pub async fn set_ratings(ratings: &Service, r1: u32, r2: u32) {
    let body = format!(r#"{{"Reviewer1": {r1}, "Reviewer2": {r2}}}"#);
    let reply = http_request(Method::POST, &ratings.url("/ratings/0"), &[], &body)
        .await
        .expect("POST /ratings/0");
    assert_eq!(reply.status, 200, "{}", reply.body);
}

/// One review as the page shows it.
#[derive(Debug, PartialEq, Eq)]
pub struct ShownReview {
    pub text: String,
    pub full_stars: usize,
    pub empty_stars: usize,
    pub color: Option<String>,
    pub error: Option<String>,
}

/// The reviews on a product page, read from its `<blockquote>`s.
pub fn shown_reviews(page: &str) -> Vec<ShownReview> {
    page.split("<blockquote>")
        .skip(1)
        .map(|block| {
            let block = block.split("</blockquote>").next().unwrap_or("");
            let between = |start: &str, end: &str| {
                let from = block.find(start)? + start.len();
                let len = block[from..].find(end)?;
                Some(block[from..from + len].to_string())
            };
            ShownReview {
                text: between("<p>", "</p>").unwrap_or_default(),
                full_stars: block.matches("glyphicon-star\"").count(),
                empty_stars: block.matches("glyphicon-star-empty\"").count(),
                color: between("<font color=\"", "\""),
                error: between("<i>", "</i>"),
            }
        })
        .collect()
}

/// What the proxy received: the request target as sent and the headers.
#[derive(Debug, Clone)]
pub struct Seen {
    pub target: String,
    pub headers: HeaderMap,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// An HTTP proxy that records each request and forwards it to the address its `host:port` is
/// routed to (the way a sidecar's HTTP-proxy listener would).
pub struct RecordingProxy {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    routes: Arc<Mutex<HashMap<String, SocketAddr>>>,
}

impl RecordingProxy {
    pub async fn start() -> RecordingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let routes = Arc::new(Mutex::new(HashMap::new()));
        let (s, r) = (seen.clone(), routes.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (s, r) = (s.clone(), r.clone());
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req| forward(req, s.clone(), r.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        RecordingProxy { addr, seen, routes }
    }

    /// Sends requests for `authority` (`reviews:9080`) to `to`.
    pub fn route(&self, authority: &str, to: SocketAddr) {
        self.routes
            .lock()
            .unwrap()
            .insert(authority.to_string(), to);
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The proxy's address as `HTTP_PROXY` names it.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

async fn forward(
    req: Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
    routes: Arc<Mutex<HashMap<String, SocketAddr>>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let target = req.uri().to_string();
    seen.lock().unwrap().push(Seen {
        target: target.clone(),
        headers: req.headers().clone(),
    });
    let reply = |status: StatusCode, body: Bytes| {
        let mut resp = Response::new(Full::new(body));
        *resp.status_mut() = status;
        Ok(resp)
    };
    let authority = req.uri().authority().map(|a| a.to_string());
    let to = authority.and_then(|a| routes.lock().unwrap().get(&a).copied());
    let Some(to) = to else {
        return reply(StatusCode::BAD_GATEWAY, "no route".into());
    };
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let url = format!("http://{to}{path}");
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .filter(|(n, _)| *n != hyper::header::HOST)
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let method = req.method().clone();
    let body = req.into_body().collect().await.map(|b| b.to_bytes());
    let body = String::from_utf8_lossy(&body.unwrap_or_default()).into_owned();
    match http_request(method, &url, &headers, &body).await {
        Ok(r) => reply(
            StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_GATEWAY),
            r.body.into(),
        ),
        Err(e) => reply(StatusCode::BAD_GATEWAY, e.to_string().into()),
    }
}

/// A server that accepts connections, reads nothing and never answers.
pub struct BlackHole {
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
}

impl BlackHole {
    pub async fn start() -> BlackHole {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                held.push(stream);
            }
        });
        BlackHole { addr, connections }
    }

    /// Points a service's variables (`NAME_HOSTNAME`, `NAME_SERVICE_PORT`) here.
    pub fn env_as(&self, name: &str) -> Vec<(String, String)> {
        let prefix = name.to_ascii_uppercase();
        vec![
            (format!("{prefix}_HOSTNAME"), self.addr.ip().to_string()),
            (
                format!("{prefix}_SERVICE_PORT"),
                self.addr.port().to_string(),
            ),
        ]
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}
