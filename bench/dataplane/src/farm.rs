//! What the endpoint benchmarks (`churn`, `endpoints`) share: an upstream that listens on many
//! loopback addresses at once inside this process and says which address answered; the
//! control plane's resource API for WorkloadEntries; and a keep-alive HTTP/1.1 client that
//! sends through a sidecar's HTTP proxy listener.

use std::collections::HashSet;
use std::convert::Infallible;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::HeaderValue;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

/// The header the farm answers with: the address (`IP:port`) whose listener accepted the
/// connection.
pub const ENDPOINT_HEADER: &str = "x-endpoint";

/// An upstream on as many addresses as asked, on a runtime of its own (one thread): every
/// request gets `200 ok` with [`ENDPOINT_HEADER`]. Connections stay open until the client
/// closes them, even after their listener stops, as a pod's would until it is gone: whether
/// they close is up to the proxy.
pub struct Farm {
    rt: tokio::runtime::Runtime,
    open: Arc<AtomicUsize>,
}

/// Listeners of a [`Farm`]; they stop listening (their connections stay) when this is dropped.
pub struct Listening {
    pub addrs: Vec<SocketAddr>,
    tasks: Vec<tokio::task::AbortHandle>,
}

impl Drop for Listening {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Farm {
    pub fn new() -> anyhow::Result<Farm> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        Ok(Farm {
            rt,
            open: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Connections open now (accepted, not closed by the client).
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Listens on each of `addrs` (port 0: a free one).
    pub fn listen(&self, addrs: &[SocketAddr]) -> anyhow::Result<Listening> {
        let _rt = self.rt.enter();
        let mut out = Listening {
            addrs: Vec::with_capacity(addrs.len()),
            tasks: Vec::with_capacity(addrs.len()),
        };
        for addr in addrs {
            let std = std::net::TcpListener::bind(addr)
                .with_context(|| format!("the upstream cannot listen on {addr}"))?;
            std.set_nonblocking(true)?;
            let local = std.local_addr()?;
            let listener = tokio::net::TcpListener::from_std(std)?;
            let open = self.open.clone();
            let task = self.rt.spawn(accept(listener, local, open));
            out.addrs.push(local);
            out.tasks.push(task.abort_handle());
        }
        Ok(out)
    }
}

async fn accept(listener: tokio::net::TcpListener, local: SocketAddr, open: Arc<AtomicUsize>) {
    let endpoint = HeaderValue::from_str(&local.to_string()).expect("an address is a header");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (open, endpoint) = (open.clone(), endpoint.clone());
        tokio::spawn(async move {
            open.fetch_add(1, Ordering::SeqCst);
            let service = service_fn(move |_req: Request<hyper::body::Incoming>| {
                let mut resp = Response::new(Full::new(Bytes::from_static(b"ok")));
                resp.headers_mut().insert(ENDPOINT_HEADER, endpoint.clone());
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
            open.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// `127.NET.x.y` for `n` in 1..=65535: a loopback address of a /16 of this run's own.
pub fn loopback(net: u8, n: u32) -> std::net::IpAddr {
    let n = n % 65536;
    std::net::IpAddr::from([127, net, (n >> 8) as u8, (n & 255) as u8])
}

/// The control plane's resource API (bearer token from DATA_DIR/token).
pub struct Api {
    agent: ureq::Agent,
    base: String,
    auth: String,
}

impl Api {
    pub fn new(addr: SocketAddr, data_dir: &Path) -> anyhow::Result<Api> {
        let file = data_dir.join("token");
        let token = std::fs::read_to_string(&file)
            .with_context(|| format!("reading the API token from {}", file.display()))?;
        Ok(Api {
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(30)))
                .build()
                .new_agent(),
            base: format!("http://{addr}"),
            auth: format!("Bearer {}", token.trim()),
        })
    }

    /// `GET PATH`: the JSON answer of a 2xx, else an error with the status and body.
    pub fn get(&self, path: &str) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let resp = self
            .agent
            .get(&url)
            .header("Authorization", &self.auth)
            .call()
            .with_context(|| format!("GET {url}"))?;
        json_answer("GET", &url, resp)
    }

    /// `POST PATH` with a JSON body: the JSON answer of a 2xx, else an error.
    pub fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let resp = self
            .agent
            .post(&url)
            .header("Authorization", &self.auth)
            .send_json(body)
            .with_context(|| format!("POST {url}"))?;
        json_answer("POST", &url, resp)
    }

    /// Creates or replaces WorkloadEntry `name` in `namespace`: `address`, port `http` at
    /// `port`, label `app`.
    pub fn workload_entry(
        &self,
        namespace: &str,
        name: &str,
        app: &str,
        address: SocketAddr,
    ) -> anyhow::Result<()> {
        let body: Value = json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "WorkloadEntry",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "address": address.ip().to_string(),
                "ports": {"http": address.port()},
                "labels": {"app": app},
            },
        });
        let url = format!(
            "{}/apis/networking.istio.io/v1/namespaces/{namespace}/workloadentries/{name}",
            self.base
        );
        let mut resp = self
            .agent
            .put(&url)
            .header("Authorization", &self.auth)
            .send_json(&body)
            .with_context(|| format!("PUT {url}"))?;
        let code = resp.status().as_u16();
        if !(200..300).contains(&code) {
            let text = resp.body_mut().read_to_string().unwrap_or_default();
            bail!("PUT {url}: HTTP {code}: {text}");
        }
        Ok(())
    }
}

fn json_answer(
    method: &str,
    url: &str,
    mut resp: ureq::http::Response<ureq::Body>,
) -> anyhow::Result<Value> {
    let code = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    if !(200..300).contains(&code) {
        bail!("{method} {url}: HTTP {code}: {text}");
    }
    serde_json::from_str(&text).with_context(|| format!("{method} {url}: not JSON: {text}"))
}

/// A keep-alive HTTP/1.1 client that sends `GET http://HOST/` through an HTTP proxy (a
/// sidecar's `IP:15080`), as an app with `HTTP_PROXY` does.
pub struct ViaProxy {
    proxy: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
}

/// One answer: the status and which endpoint answered (the farm's header), if any.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub endpoint: Option<SocketAddr>,
}

impl ViaProxy {
    pub fn new(proxy: SocketAddr) -> ViaProxy {
        ViaProxy { proxy, conn: None }
    }

    /// `GET http://HOST/`; a failed connection is dropped (the next request opens another).
    pub fn get(&mut self, host: &str) -> anyhow::Result<Answer> {
        let result = self.exchange(host);
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    fn exchange(&mut self, host: &str) -> anyhow::Result<Answer> {
        if self.conn.is_none() {
            let s = TcpStream::connect_timeout(&self.proxy, Duration::from_secs(2))
                .with_context(|| format!("connecting to the sidecar at {}", self.proxy))?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            self.conn = Some(BufReader::new(s));
        }
        let conn = self.conn.as_mut().expect("connected above");
        conn.get_mut()
            .write_all(format!("GET http://{host}/ HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())?;
        let mut line = String::new();
        conn.read_line(&mut line)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .with_context(|| format!("not an HTTP response: {line:?}"))?;
        let (mut length, mut close, mut endpoint) = (0usize, false, None);
        loop {
            line.clear();
            if conn.read_line(&mut line)? == 0 {
                bail!("the sidecar closed the connection in a response head");
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let Some((name, value)) = l.split_once(':') else {
                continue;
            };
            let value = value.trim();
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.parse().context("content-length")?,
                "connection" => close = value.eq_ignore_ascii_case("close"),
                ENDPOINT_HEADER => endpoint = value.parse().ok(),
                "transfer-encoding" => bail!("a chunked response: the farm sends a length"),
                _ => {}
            }
        }
        let mut body = vec![0; length];
        conn.read_exact(&mut body)?;
        if close {
            self.conn = None;
        }
        Ok(Answer { status, endpoint })
    }
}

/// Whether `answer` came from one of `addrs`.
pub fn from(answer: &Answer, addrs: &HashSet<SocketAddr>) -> bool {
    answer.endpoint.is_some_and(|e| addrs.contains(&e))
}
