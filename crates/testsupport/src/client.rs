//! A small HTTP client for tests: one request per connection, with a timeout.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HOST, HeaderName, HeaderValue};
use hyper::{HeaderMap, Method, Request, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

/// How long a request may take, from connecting to the end of the response body.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// A response, read to the end.
#[derive(Debug, Clone)]
pub struct HttpReply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl HttpReply {
    /// A response header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as JSON; panics (showing the body) if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!(
                "the response body is not JSON ({e}): status {}, body {:?}",
                self.status, self.body
            )
        })
    }
}

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("bad URL {url:?}: {reason} (expected http://HOST[:PORT]/PATH)")]
    BadUrl { url: String, reason: String },
    #[error("bad header {name:?}: {reason}")]
    BadHeader { name: String, reason: String },
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("HTTP exchange with {addr} failed: {source}")]
    Http { addr: String, source: hyper::Error },
    #[error("no complete response from {addr} within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
}

/// `GET url` over HTTP/1.1, straight to the URL's host and port.
pub async fn http_get(url: &str, headers: &[(&str, &str)]) -> Result<HttpReply, HttpError> {
    http_request(Method::GET, url, headers, "").await
}

/// `GET url` over HTTP/2 without TLS (h2c, prior knowledge), straight to the URL's host and port.
pub async fn http2_get(url: &str, headers: &[(&str, &str)]) -> Result<HttpReply, HttpError> {
    let target = Target::parse(url)?;
    let req = build(Method::GET, target.uri.clone(), headers, "", None)?;
    exchange(&target.connect_to(), req, Protocol::H2).await
}

/// Any request over HTTP/1.1, straight to the URL's host and port. The request line is in origin
/// form (`GET /path HTTP/1.1`) with the URL's authority in `Host`, unless `headers` sets `Host`.
pub async fn http_request(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<HttpReply, HttpError> {
    let target = Target::parse(url)?;
    let origin: Uri = target
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse()
        .expect("a path parses as a URI");
    let req = build(method, origin, headers, body, Some(&target.host_header))?;
    exchange(&target.connect_to(), req, Protocol::H1).await
}

/// `GET url` through an HTTP proxy at `proxy`, as `HTTP_PROXY` clients do: the request goes to
/// the proxy with the absolute URL as its target (`GET http://host:port/path HTTP/1.1`) and the
/// URL's authority in `Host`.
pub async fn via_proxy(
    proxy: SocketAddr,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<HttpReply, HttpError> {
    let target = Target::parse(url)?;
    let req = build(
        Method::GET,
        target.uri.clone(),
        headers,
        "",
        Some(&target.host_header),
    )?;
    exchange(&proxy.to_string(), req, Protocol::H1).await
}

struct Target {
    uri: Uri,
    host: String,
    port: u16,
    host_header: String,
}

impl Target {
    fn parse(url: &str) -> Result<Target, HttpError> {
        let bad = |reason: &str| HttpError::BadUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let uri: Uri = url.parse().map_err(|e| bad(&format!("{e}")))?;
        if uri.scheme_str() != Some("http") {
            return Err(bad("only http:// URLs are supported"));
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?.clone();
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        Ok(Target {
            port: authority.port_u16().unwrap_or(80),
            host,
            host_header: authority.as_str().to_string(),
            uri,
        })
    }

    fn connect_to(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

fn build(
    method: Method,
    uri: Uri,
    headers: &[(&str, &str)],
    body: &str,
    host: Option<&str>,
) -> Result<Request<Full<Bytes>>, HttpError> {
    let mut req = Request::new(Full::new(Bytes::copy_from_slice(body.as_bytes())));
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    for (name, value) in headers {
        let bad = |reason: String| HttpError::BadHeader {
            name: name.to_string(),
            reason,
        };
        let n = HeaderName::from_bytes(name.as_bytes()).map_err(|e| bad(e.to_string()))?;
        let v = HeaderValue::from_str(value).map_err(|e| bad(e.to_string()))?;
        req.headers_mut().append(n, v);
    }
    if let Some(host) = host
        && !req.headers().contains_key(HOST)
    {
        let v = HeaderValue::from_str(host).map_err(|e| HttpError::BadHeader {
            name: "host".into(),
            reason: e.to_string(),
        })?;
        req.headers_mut().insert(HOST, v);
    }
    Ok(req)
}

#[derive(Clone, Copy)]
enum Protocol {
    H1,
    H2,
}

async fn exchange(
    addr: &str,
    req: Request<Full<Bytes>>,
    protocol: Protocol,
) -> Result<HttpReply, HttpError> {
    let work = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|source| HttpError::Connect {
                addr: addr.to_string(),
                source,
            })?;
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(stream);
        let http = |source| HttpError::Http {
            addr: addr.to_string(),
            source,
        };
        let response = match protocol {
            Protocol::H1 => {
                let (mut send, conn) = hyper::client::conn::http1::handshake(io)
                    .await
                    .map_err(http)?;
                tokio::spawn(conn);
                send.send_request(req).await.map_err(http)?
            }
            Protocol::H2 => {
                let (mut send, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                        .await
                        .map_err(http)?;
                tokio::spawn(conn);
                send.send_request(req).await.map_err(http)?
            }
        };
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.map_err(http)?;
        Ok(HttpReply {
            status,
            headers,
            body: String::from_utf8_lossy(&body.to_bytes()).into_owned(),
        })
    };
    tokio::time::timeout(CLIENT_TIMEOUT, work)
        .await
        .unwrap_or_else(|_| {
            Err(HttpError::Timeout {
                addr: addr.to_string(),
                timeout: CLIENT_TIMEOUT,
            })
        })
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// Accepts one connection, returns what the client sent up to the end of the headers, and
    /// answers with a fixed response.
    async fn capture_request() -> (SocketAddr, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut chunk).await.unwrap();
                assert_ne!(n, 0, "the client closed before the end of its headers");
                buf.extend_from_slice(&chunk[..n]);
            }
            s.write_all(b"HTTP/1.1 204 No Content\r\nx-test: yes\r\n\r\n")
                .await
                .unwrap();
            String::from_utf8(buf).unwrap()
        });
        (addr, task)
    }

    #[tokio::test]
    async fn via_proxy_sends_absolute_form() {
        let (proxy, seen) = capture_request().await;
        let reply = via_proxy(
            proxy,
            "http://reviews.bookinfo:9080/reviews/1?x=y",
            &[("x-user", "jason")],
        )
        .await
        .unwrap();
        assert_eq!(reply.status, 204);
        assert_eq!(reply.header("x-test"), Some("yes"));
        let seen = seen.await.unwrap().to_ascii_lowercase();
        assert!(
            seen.starts_with("get http://reviews.bookinfo:9080/reviews/1?x=y http/1.1\r\n"),
            "{seen}"
        );
        assert!(seen.contains("host: reviews.bookinfo:9080\r\n"), "{seen}");
        assert!(seen.contains("x-user: jason\r\n"), "{seen}");
    }

    #[tokio::test]
    async fn http_get_sends_origin_form() {
        let (server, seen) = capture_request().await;
        let url = format!("http://{server}/a/b");
        let reply = http_get(&url, &[("host", "productpage")]).await.unwrap();
        assert_eq!(reply.status, 204);
        let seen = seen.await.unwrap().to_ascii_lowercase();
        assert!(seen.starts_with("get /a/b http/1.1\r\n"), "{seen}");
        assert!(seen.contains("host: productpage\r\n"), "{seen}");
    }

    #[tokio::test]
    async fn errors_name_the_address() {
        let port = crate::free_port();
        let err = http_get(&format!("http://127.0.0.1:{port}/"), &[])
            .await
            .unwrap_err();
        assert!(matches!(err, HttpError::Connect { .. }), "{err}");
        assert!(err.to_string().contains(&format!("127.0.0.1:{port}")));
        let err = http_get("https://example.com/", &[]).await.unwrap_err();
        assert!(matches!(err, HttpError::BadUrl { .. }), "{err}");
    }
}
