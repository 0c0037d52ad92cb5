//! Calls to the other services: HTTP/1.1 on hyper, one connection per call, straight to the
//! service's host name (as with iptables capture) or through `HTTP_PROXY` (a sidecar's HTTP-proxy
//! listener) unless `NO_PROXY` names the host.

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::header::{HOST, HeaderValue};
use hyper::{HeaderMap, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// The port Bookinfo's services listen on, and the one their URLs name.
pub const DEFAULT_PORT: u16 = 9080;

/// Where a service is: the host name (or address) and port its URLs name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub host: String,
    pub port: u16,
}

impl Upstream {
    /// Reads the service's address as Istio's Bookinfo does: `{PREFIX}_HOSTNAME` (default
    /// `name`), then `.{SERVICES_DOMAIN}` if that is set, and `{PREFIX}_SERVICE_PORT` (default 9080).
    pub fn from_env(name: &str) -> Result<Upstream, ConfigError> {
        Upstream::from_lookup(name, |var| std::env::var(var).ok())
    }

    fn from_lookup(
        name: &str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Upstream, ConfigError> {
        let prefix = name.to_ascii_uppercase();
        let set = |var: &str| lookup(var).filter(|v| !v.is_empty());
        let mut host = set(&format!("{prefix}_HOSTNAME")).unwrap_or_else(|| name.to_string());
        if let Some(domain) = set("SERVICES_DOMAIN") {
            host = format!("{host}.{domain}");
        }
        let port_var = format!("{prefix}_SERVICE_PORT");
        let port = match set(&port_var) {
            None => DEFAULT_PORT,
            Some(value) => match value.parse() {
                Ok(port) if port != 0 => port,
                _ => {
                    return Err(ConfigError::BadPort {
                        var: port_var,
                        value,
                    });
                }
            },
        };
        Ok(Upstream { host, port })
    }

    /// `host:port`, with brackets around an IPv6 address.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// A bad setting in the environment.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{var}={value:?} is not a port number: set it to a port from 1 to 65535 or unset it")]
    BadPort { var: String, value: String },
    #[error(
        "{var}={value:?} is not an HTTP proxy this app can use: {reason} (expected http://HOST:PORT or HOST:PORT)"
    )]
    BadProxy {
        var: &'static str,
        value: String,
        reason: &'static str,
    },
}

/// Why a call got no response.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("cannot connect to {addr} for {url}: {source}")]
    Connect {
        url: String,
        addr: String,
        source: std::io::Error,
    },
    #[error("HTTP exchange for {url} with {addr} failed: {source}")]
    Http {
        url: String,
        addr: String,
        source: hyper::Error,
    },
    #[error("no response for {url} within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("cannot build the request for {url}: {source}")]
    Request {
        url: String,
        source: hyper::http::Error,
    },
}

/// A response, read to the end.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
}

/// The HTTP client every service uses for its calls.
#[derive(Debug, Clone, Default)]
pub struct Client {
    /// `host:port` of the HTTP proxy, from `http_proxy` or `HTTP_PROXY`.
    proxy: Option<String>,
    /// The `NO_PROXY` entries, lower case.
    no_proxy: Vec<String>,
}

impl Client {
    /// A client that uses the proxy named by `http_proxy`/`HTTP_PROXY` (if any) for every host
    /// `no_proxy`/`NO_PROXY` does not exempt.
    pub fn from_env() -> Result<Client, ConfigError> {
        Client::from_lookup(|var| std::env::var(var).ok())
    }

    fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Client, ConfigError> {
        let first = |vars: [&'static str; 2]| {
            vars.into_iter().find_map(|var| {
                lookup(var)
                    .filter(|v| !v.trim().is_empty())
                    .map(|v| (var, v))
            })
        };
        let proxy = match first(["http_proxy", "HTTP_PROXY"]) {
            None => None,
            Some((var, value)) => Some(parse_proxy(var, &value)?),
        };
        let no_proxy = first(["no_proxy", "NO_PROXY"])
            .map(|(_, v)| {
                v.split(',')
                    .map(|e| e.trim().to_ascii_lowercase())
                    .filter(|e| !e.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        Ok(Client { proxy, no_proxy })
    }

    /// The proxy to use for `upstream`, if any.
    fn proxy_for(&self, upstream: &Upstream) -> Option<&str> {
        let proxy = self.proxy.as_deref()?;
        let host = upstream.host.to_ascii_lowercase();
        let exempt = self.no_proxy.iter().any(|entry| {
            if entry == "*" {
                return true;
            }
            if let Some((net, len)) = entry.split_once('/') {
                return in_cidr(&host, net, len);
            }
            let (name, port) = match entry.rsplit_once(':') {
                Some((n, p)) if !n.contains(':') || n.ends_with(']') => (n, p.parse().ok()),
                _ => (entry.as_str(), None),
            };
            let name = name.trim_start_matches('.').trim_matches(['[', ']']);
            port.is_none_or(|p: u16| p == upstream.port)
                && (host == name || host.ends_with(&format!(".{name}")))
        });
        (!exempt).then_some(proxy)
    }

    /// `GET http://{upstream}{path}` with `headers`, the whole exchange bounded by `timeout`.
    pub async fn get(
        &self,
        upstream: &Upstream,
        path: &str,
        headers: HeaderMap,
        timeout: Duration,
    ) -> Result<Reply, CallError> {
        let authority = upstream.authority();
        let url = format!("http://{authority}{path}");
        let proxy = self.proxy_for(upstream);
        // Through a proxy the request line carries the absolute URL; otherwise the path only.
        let (addr, target) = match proxy {
            Some(proxy) => (proxy.to_string(), url.clone()),
            None => (authority.clone(), path.to_string()),
        };
        let mut req = Request::get(target)
            .body(Empty::<Bytes>::new())
            .map_err(|source| CallError::Request {
                url: url.clone(),
                source,
            })?;
        *req.headers_mut() = headers;
        let host = HeaderValue::from_str(&authority).map_err(|e| CallError::Request {
            url: url.clone(),
            source: e.into(),
        })?;
        req.headers_mut().insert(HOST, host);
        tracing::debug!(%url, via = proxy.unwrap_or("direct"), "calling");
        match tokio::time::timeout(timeout, exchange(&url, &addr, req)).await {
            Ok(result) => result,
            Err(_) => Err(CallError::Timeout { url, timeout }),
        }
    }
}

async fn exchange(url: &str, addr: &str, req: Request<Empty<Bytes>>) -> Result<Reply, CallError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|source| CallError::Connect {
            url: url.to_string(),
            addr: addr.to_string(),
            source,
        })?;
    let _ = stream.set_nodelay(true);
    let http = |source| CallError::Http {
        url: url.to_string(),
        addr: addr.to_string(),
        source,
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http)?;
    // The connection lives as long as this call: dropped (on timeout too), it closes.
    let _conn = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let resp = sender.send_request(req).await.map_err(http)?;
    let status = resp.status();
    let body = resp.into_body().collect().await.map_err(http)?.to_bytes();
    Ok(Reply { status, body })
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `http://HOST:PORT[/]` or `HOST:PORT` → `HOST:PORT`.
fn parse_proxy(var: &'static str, value: &str) -> Result<String, ConfigError> {
    let bad = |reason| ConfigError::BadProxy {
        var,
        value: value.to_string(),
        reason,
    };
    let value = value.trim();
    let rest = match value.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
        Some(_) => return Err(bad("only http:// proxies are supported")),
        None => value,
    };
    let rest = rest.trim_end_matches('/');
    if rest.contains(['@', '/']) {
        return Err(bad("credentials and paths are not supported"));
    }
    let uri: Uri = format!("http://{rest}/")
        .parse()
        .map_err(|_| bad("not a host and port"))?;
    let authority = uri.authority().ok_or(bad("no host"))?;
    if authority.port_u16().is_none() {
        return Err(bad("no port"));
    }
    Ok(authority.as_str().to_string())
}

/// Whether `host` is an IP address inside `net/len`.
fn in_cidr(host: &str, net: &str, len: &str) -> bool {
    let host = host.trim_matches(['[', ']']);
    let (Ok(host), Ok(net), Ok(len)) = (
        host.parse::<IpAddr>(),
        net.trim_matches(['[', ']']).parse::<IpAddr>(),
        len.parse::<u32>(),
    ) else {
        return false;
    };
    let (host, net, bits) = match (host, net) {
        (IpAddr::V4(h), IpAddr::V4(n)) => (u128::from(h.to_bits()), u128::from(n.to_bits()), 32),
        (IpAddr::V6(h), IpAddr::V6(n)) => (h.to_bits(), n.to_bits(), 128),
        _ => return false,
    };
    if len > bits {
        return false;
    }
    let shift = bits - len;
    shift >= bits || (host >> shift) == (net >> shift)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn up(host: &str, port: u16) -> Upstream {
        Upstream {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn upstreams_default_to_the_service_name_on_9080() {
        assert_eq!(
            Upstream::from_lookup("reviews", env(&[])).unwrap(),
            up("reviews", 9080)
        );
        let e = env(&[
            ("RATINGS_HOSTNAME", "127.0.0.1"),
            ("RATINGS_SERVICE_PORT", "41000"),
        ]);
        assert_eq!(
            Upstream::from_lookup("ratings", e).unwrap(),
            up("127.0.0.1", 41000)
        );
        let e = env(&[("SERVICES_DOMAIN", "bookinfo.svc.cluster.local")]);
        assert_eq!(
            Upstream::from_lookup("details", e).unwrap().authority(),
            "details.bookinfo.svc.cluster.local:9080"
        );
        let e = env(&[("DETAILS_SERVICE_PORT", "http")]);
        let err = Upstream::from_lookup("details", e).unwrap_err().to_string();
        assert!(err.contains("DETAILS_SERVICE_PORT=\"http\""), "{err}");
        assert_eq!(up("::1", 9080).authority(), "[::1]:9080");
    }

    #[test]
    fn proxy_comes_from_http_proxy_in_either_case() {
        let c = Client::from_lookup(env(&[])).unwrap();
        assert_eq!(c.proxy_for(&up("reviews", 9080)), None);
        let c = Client::from_lookup(env(&[("HTTP_PROXY", "http://127.0.0.1:15080/")])).unwrap();
        assert_eq!(c.proxy_for(&up("reviews", 9080)), Some("127.0.0.1:15080"));
        let c = Client::from_lookup(env(&[
            ("http_proxy", "127.0.0.2:15080"),
            ("HTTP_PROXY", "127.0.0.3:1"),
        ]))
        .unwrap();
        assert_eq!(c.proxy_for(&up("reviews", 9080)), Some("127.0.0.2:15080"));
        for bad in ["https://p:1", "http://u:p@p:1", "p", "http://p:1/x"] {
            let err = Client::from_lookup(env(&[("HTTP_PROXY", bad)])).unwrap_err();
            assert!(err.to_string().contains("HTTP_PROXY"), "{bad}: {err}");
        }
    }

    #[test]
    fn no_proxy_exempts_names_suffixes_ports_addresses_and_ranges() {
        let no_proxy = "localhost, .svc.local,details:9080,127.0.0.1,10.1.0.0/16,[::1]";
        let c = Client::from_lookup(env(&[
            ("HTTP_PROXY", "127.0.0.1:15080"),
            ("NO_PROXY", no_proxy),
        ]))
        .unwrap();
        let direct = |host: &str, port| c.proxy_for(&up(host, port)).is_none();
        assert!(direct("localhost", 9080));
        assert!(direct("LOCALHOST", 1));
        assert!(direct("ratings.svc.local", 9080));
        assert!(direct("details", 9080));
        assert!(!direct("details", 9081));
        assert!(direct("127.0.0.1", 41000));
        assert!(!direct("127.0.0.2", 41000));
        assert!(direct("10.1.200.3", 9080));
        assert!(!direct("10.2.0.1", 9080));
        assert!(direct("::1", 9080));
        assert!(!direct("reviews", 9080));
        assert!(!direct("notlocalhost", 9080));
        let all = Client::from_lookup(env(&[("http_proxy", "p:1"), ("no_proxy", "*")])).unwrap();
        assert_eq!(all.proxy_for(&up("reviews", 9080)), None);
    }
}
