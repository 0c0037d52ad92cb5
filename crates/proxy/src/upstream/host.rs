//! One endpoint of a cluster as the data path knows it: its address (parsed once), its requests
//! in flight, its outlier detection state and its connections: HTTP/1.1 connections (one
//! request at a time each; back in the pool once the response head is in, free again once its
//! body has been read; reused most recent first) and one multiplexed HTTP/2 connection, whose
//! requests carry their own `:authority`.
//!
//! Connections go when they have been idle for the pool's idle timeout (the sweeper in
//! [`super::Upstreams::sweep`]) and when the endpoint leaves its cluster ([`Host::drain`]):
//! idle ones close at once, busy ones once their request is answered, as Envoy drains a
//! removed host's connection pools.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::header::{HOST, HeaderValue};
use hyper::{Request, Response, Uri, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::balance::outlier::HostOutlier;
use crate::body::RequestBody;
use crate::config::StringMatch;
use crate::config::UpstreamProtocol;
use crate::config::tls::{SanKind, SanMatcher, UpstreamTls};
use crate::io::Io;
use crate::tls::{self, Secrets};

/// Why an upstream request got no response.
#[derive(Debug)]
pub(crate) enum SendError {
    /// No connection to the endpoint (refused, timed out, the HTTP/2 handshake failed).
    Connect(String),
    /// The connection or stream failed after the request was sent, or while sending it.
    Reset(String),
    /// The HTTP/2 upstream refused the stream (`RST_STREAM` with `REFUSED_STREAM`): it did not
    /// process the request (the `refused-stream` retry condition).
    Refused(String),
}

/// TLS the proxy originates to an endpoint: the cluster's context for it, and the
/// certificates it is built with.
#[derive(Clone)]
pub(crate) struct HostTls {
    pub(crate) context: Arc<UpstreamTls>,
    pub(crate) secrets: Arc<Secrets>,
    /// The cluster's `auto_sni` and `auto_san_validation`: when the context names no server,
    /// each request's host is the SNI (and, with validation, a DNS name the certificate must
    /// have); connections are kept per server name.
    pub(crate) auto: Option<AutoSni>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct AutoSni {
    pub(crate) san_validation: bool,
}

/// Most server names an endpoint keeps connections for (`auto_sni`); past it, the least
/// recently created that is idle goes.
const MAX_SERVER_NAMES: usize = 64;

pub(crate) struct Host {
    /// `IP:port` (`[IPv6]:port`), or `name:port` in a DNS cluster.
    pub(crate) authority: Box<str>,
    /// The address, unless the endpoint is a name (resolved at each connect).
    ip: Option<SocketAddr>,
    /// The local address connections are made from (the cluster's `upstream_bind_config`).
    source: Option<SocketAddr>,
    /// TLS to the endpoint, or plain text.
    tls: Option<HostTls>,
    /// With `auto_sni`: the endpoint's connections per server name, each its own host.
    by_sni: Mutex<Vec<(Box<str>, Arc<Host>)>>,
    /// Requests in flight (see [`super::Picked`]).
    active: AtomicUsize,
    pub(crate) outlier: HostOutlier,
    pool: Mutex<Pool>,
    /// Set when the endpoint left its cluster: no connection is kept any more.
    draining: AtomicBool,
    /// The endpoint's workload from EDS (a workload of the mesh), for telemetry and the peer
    /// metadata exchange.
    pub(crate) workload: Option<Arc<strait_telemetry::Workload>>,
}

#[derive(Default)]
struct Pool {
    /// HTTP/1.1 connections not sending a request: idle ones, and those still reading a
    /// response (not ready); the most recently used last, each with when it was last seen busy.
    h1: Vec<(http1::SendRequest<RequestBody>, Instant)>,
    /// The HTTP/2 connection, with when it was last seen carrying a request.
    h2: Option<(http2::SendRequest<RequestBody>, Instant)>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("authority", &self.authority)
            .field("active", &self.active())
            .finish_non_exhaustive()
    }
}

impl Host {
    /// An endpoint at `authority` (`IP:port` or `name:port`).
    pub(crate) fn new(authority: String, ip: Option<SocketAddr>, tls: Option<HostTls>) -> Host {
        Host {
            authority: authority.into_boxed_str(),
            ip,
            source: None,
            tls,
            by_sni: Mutex::new(Vec::new()),
            active: AtomicUsize::new(0),
            outlier: HostOutlier::default(),
            pool: Mutex::new(Pool::default()),
            draining: AtomicBool::new(false),
            workload: None,
        }
    }

    /// The endpoint's workload (see [`Host::workload`]).
    pub(crate) fn with_workload(mut self, w: Option<Arc<strait_telemetry::Workload>>) -> Host {
        self.workload = w;
        self
    }

    /// Connections are made from `source` (the cluster's `upstream_bind_config`).
    pub(crate) fn with_source(mut self, source: Option<SocketAddr>) -> Host {
        self.source = source;
        self
    }

    /// The local address connections are made from, when the cluster sets one.
    pub(crate) fn source(&self) -> Option<SocketAddr> {
        self.source
    }

    /// Connections to the endpoint are TLS.
    pub(crate) fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Whether connections to the endpoint use this TLS context (both plain text, or the same
    /// context).
    pub(crate) fn uses(&self, tls: Option<&Arc<UpstreamTls>>, auto: Option<AutoSni>) -> bool {
        match (&self.tls, tls) {
            (None, None) => true,
            (Some(h), Some(t)) => {
                (Arc::ptr_eq(&h.context, t) || *h.context == **t) && h.auto == auto
            }
            _ => false,
        }
    }

    /// The host that carries requests for `server_name` to this endpoint (`auto_sni`).
    fn for_server_name(&self, tls: &HostTls, server_name: &str) -> Arc<Host> {
        let mut children = self.by_sni.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, h)) = children.iter().find(|(n, _)| &**n == server_name) {
            return h.clone();
        }
        if children.len() >= MAX_SERVER_NAMES
            && let Some(i) = children.iter().position(|(_, h)| h.active() == 0)
        {
            children.remove(i).1.drain();
        }
        let mut context = UpstreamTls::clone(&tls.context);
        context.sni = server_name.to_string();
        if tls.auto.is_some_and(|a| a.san_validation)
            && let Some(v) = &mut context.common.validation
        {
            v.sans = vec![SanMatcher {
                kind: SanKind::Dns,
                matcher: StringMatch::Exact(server_name.to_string()),
                ignore_case: true,
            }];
        }
        let child = Arc::new(
            Host::new(
                self.authority.to_string(),
                self.ip,
                Some(HostTls {
                    context: Arc::new(context),
                    secrets: tls.secrets.clone(),
                    auto: None,
                }),
            )
            .with_source(self.source),
        );
        if self.is_draining() {
            child.drain();
        }
        children.push((server_name.into(), child.clone()));
        child
    }

    fn children(&self) -> Vec<Arc<Host>> {
        let children = self.by_sni.lock().unwrap_or_else(|e| e.into_inner());
        children.iter().map(|(_, h)| h.clone()).collect()
    }

    /// Requests in flight.
    pub(crate) fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    pub(crate) fn start_request(&self) {
        self.active.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn end_request(&self) {
        self.active.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    fn pool(&self) -> MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The endpoint left its cluster: its idle connections close now, busy ones once their
    /// request is answered, and none is kept from now on.
    pub(crate) fn drain(&self) {
        let mut pool = self.pool();
        self.draining.store(true, Ordering::Release);
        // Dropping a connection's handle closes it once its response is read through.
        pool.h1.clear();
        pool.h2 = None;
        drop(pool);
        for child in self.children() {
            child.drain();
        }
    }

    /// Closes the connections idle for `idle` or more at `now` (dropping the last handle of a
    /// hyper connection closes it).
    pub(crate) fn expire(&self, now: Instant, idle: Duration) {
        for child in self.children() {
            child.expire(now, idle);
        }
        // Server names with no connection left are forgotten.
        self.by_sni
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(_, h)| h.active() > 0 || h.kept() > 0);
        let busy = self.active() > 0;
        let mut pool = self.pool();
        pool.h1.retain_mut(|(c, since)| {
            if c.is_closed() {
                return false;
            }
            if !c.is_ready() {
                // Still reading a response: busy now.
                *since = now;
            }
            now.saturating_duration_since(*since) < idle
        });
        if let Some((c, used)) = &mut pool.h2 {
            if busy {
                *used = now;
            } else if c.is_closed() || now.saturating_duration_since(*used) >= idle {
                pool.h2 = None;
            }
        }
    }

    /// Open connections kept for reuse (idle HTTP/1.1 ones and the HTTP/2 one).
    pub(crate) fn kept(&self) -> usize {
        let pool = self.pool();
        pool.h1.len() + usize::from(pool.h2.is_some())
    }

    /// A connection to the endpoint within `timeout` (Nagle off), with the TLS handshake when
    /// the cluster originates TLS to it.
    pub(crate) async fn connect(&self, timeout: Duration) -> Result<Io, SendError> {
        let stream = self.connect_tcp(timeout).await?;
        let Some(tls) = &self.tls else {
            return Ok(Io::Tcp(stream));
        };
        let ip = match self.ip {
            Some(a) => a.ip(),
            None => stream
                .peer_addr()
                .map_err(|e| SendError::Connect(format!("tcp connect error: {e}")))?
                .ip(),
        };
        tls::connect(&tls.secrets, &tls.context, ip, stream)
            .await
            .map(|s| Io::TlsClient(Box::new(s)))
            .map_err(|e| SendError::Connect(format!("TLS error: {e}")))
    }

    /// A TCP connection to the endpoint within `timeout`, Nagle off.
    async fn connect_tcp(&self, timeout: Duration) -> Result<TcpStream, SendError> {
        let connecting = async {
            match (self.ip, self.source) {
                (Some(addr), None) => TcpStream::connect(addr).await,
                (None, None) => TcpStream::connect(&*self.authority).await,
                (Some(addr), Some(source)) => connect_from(source, addr).await,
                (None, Some(source)) => {
                    let mut last = None;
                    for addr in tokio::net::lookup_host(&*self.authority).await? {
                        match connect_from(source, addr).await {
                            Ok(s) => return Ok(s),
                            Err(e) => last = Some(e),
                        }
                    }
                    Err(last.unwrap_or_else(|| {
                        std::io::Error::new(
                            std::io::ErrorKind::NotFound,
                            format!("{} resolves to no address", self.authority),
                        )
                    }))
                }
            }
        };
        let stream = tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| SendError::Connect(format!("connect timeout ({timeout:?})")))?
            .map_err(|e| SendError::Connect(format!("tcp connect error: {e}")))?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// Sends `req` (its URI: the path and query) in `protocol`. Over HTTP/2 the request's `Host`
    /// becomes its `:authority`.
    pub(crate) async fn send(
        &self,
        protocol: UpstreamProtocol,
        connect_timeout: Duration,
        req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, SendError> {
        if let Some(tls) = &self.tls
            && tls.auto.is_some()
            && tls.context.sni.is_empty()
            && let Some(name) = server_name(&req)
        {
            let child = self.for_server_name(tls, &name);
            return child.send_here(protocol, connect_timeout, req).await;
        }
        self.send_here(protocol, connect_timeout, req).await
    }

    async fn send_here(
        &self,
        protocol: UpstreamProtocol,
        connect_timeout: Duration,
        mut req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, SendError> {
        match protocol {
            UpstreamProtocol::Http1 => {
                *req.version_mut() = Version::HTTP_11;
                if !req.headers().contains_key(HOST)
                    && let Ok(v) = HeaderValue::from_str(&self.authority)
                {
                    req.headers_mut().insert(HOST, v);
                }
                loop {
                    let (mut conn, pooled) = match self.take_idle() {
                        Some(c) => (c, true),
                        None => (self.connect_h1(connect_timeout).await?, false),
                    };
                    match conn.try_send_request(req).await {
                        Ok(resp) => {
                            self.put_back(conn);
                            return Ok(resp);
                        }
                        Err(mut e) => match e.take_message() {
                            // An idle connection that closed before the request went out:
                            // the next one, or a new one.
                            Some(r) if pooled => req = r,
                            _ => return Err(SendError::Reset(crate::error_chain(e.error()))),
                        },
                    }
                }
            }
            UpstreamProtocol::Http2 => {
                let path = req
                    .uri()
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .to_string();
                let uri = |authority: &str| format!("http://{authority}{path}").parse::<Uri>();
                let host = req.headers_mut().remove(HOST);
                *req.uri_mut() = host
                    .as_ref()
                    .and_then(|h| h.to_str().ok())
                    .and_then(|h| uri(h).ok())
                    .map_or_else(|| uri(&self.authority), Ok)
                    .map_err(|e| SendError::Reset(format!("bad upstream URI: {e}")))?;
                *req.version_mut() = Version::HTTP_2;
                let mut sender = self.h2_connection(connect_timeout).await?;
                if sender.ready().await.is_err() {
                    // The connection went away since its last request (GOAWAY, closed while
                    // idle): a new one, once.
                    self.pool().h2 = None;
                    sender = self.h2_connection(connect_timeout).await?;
                    sender
                        .ready()
                        .await
                        .map_err(|e| SendError::Reset(crate::error_chain(&e)))?;
                }
                sender.send_request(req).await.map_err(|e| {
                    let chain = crate::error_chain(&e);
                    if refused_stream(&e) {
                        SendError::Refused(chain)
                    } else {
                        SendError::Reset(chain)
                    }
                })
            }
        }
    }

    /// An idle HTTP/1.1 connection, if one is open (the most recently used).
    fn take_idle(&self) -> Option<http1::SendRequest<RequestBody>> {
        let mut pool = self.pool();
        pool.h1.retain(|(c, _)| !c.is_closed());
        let i = pool.h1.iter().rposition(|(c, _)| c.is_ready())?;
        Some(pool.h1.remove(i).0)
    }

    /// Puts a connection whose response head is in back in the pool: it is free again once
    /// the response has been read through (unless the endpoint is draining: then it closes
    /// after that response).
    fn put_back(&self, conn: http1::SendRequest<RequestBody>) {
        let mut pool = self.pool();
        if !self.is_draining() {
            pool.h1.push((conn, Instant::now()));
        }
    }

    async fn connect_h1(
        &self,
        connect_timeout: Duration,
    ) -> Result<http1::SendRequest<RequestBody>, SendError> {
        let stream = self.connect(connect_timeout).await?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.map_err(|e| {
            SendError::Connect(format!("HTTP/1.1 handshake: {}", crate::error_chain(&e)))
        })?;
        let endpoint = self.authority.clone();
        tokio::spawn(async move {
            // With upgrades: a 101 hands the connection over to the tunnel.
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(%endpoint, error = %e, "upstream HTTP/1.1 connection failed");
            }
        });
        Ok(sender)
    }

    /// The open HTTP/2 connection, or a new one.
    async fn h2_connection(
        &self,
        connect_timeout: Duration,
    ) -> Result<http2::SendRequest<RequestBody>, SendError> {
        if let Some((c, used)) = &mut self.pool().h2
            && !c.is_closed()
        {
            *used = Instant::now();
            return Ok(c.clone());
        }
        let stream = self.connect(connect_timeout).await?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| {
                SendError::Connect(format!("HTTP/2 handshake: {}", crate::error_chain(&e)))
            })?;
        let endpoint = self.authority.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%endpoint, error = %e, "upstream HTTP/2 connection failed");
            }
        });
        let mut pool = self.pool();
        if !self.is_draining() {
            pool.h2 = Some((sender.clone(), Instant::now()));
        }
        Ok(sender)
    }
}

/// Whether an HTTP/2 request failed because the upstream reset its stream with
/// `REFUSED_STREAM`.
fn refused_stream(e: &hyper::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        source = err.source();
    }
    false
}

/// The server name `auto_sni` sends for a request: its host, without the port, lowercased;
/// none for an IP address.
fn server_name<B>(req: &Request<B>) -> Option<String> {
    let host = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))?;
    if host.starts_with('[') {
        return None;
    }
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    (!name.is_empty() && name.parse::<std::net::IpAddr>().is_err()).then_some(name)
}

/// A TCP connection to `addr` from the local address `source` (`upstream_bind_config`).
async fn connect_from(source: SocketAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = if source.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.bind(source)?;
    socket.connect(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_host(host: &str) -> Request<()> {
        Request::builder().header(HOST, host).body(()).unwrap()
    }

    #[test]
    fn auto_sni_sends_the_requests_host_without_its_port_and_never_an_address() {
        assert_eq!(
            server_name(&with_host("Edition.CNN.com")).as_deref(),
            Some("edition.cnn.com")
        );
        assert_eq!(
            server_name(&with_host("edition.cnn.com:443")).as_deref(),
            Some("edition.cnn.com")
        );
        assert_eq!(
            server_name(&with_host("edition.cnn.com.")).as_deref(),
            Some("edition.cnn.com")
        );
        assert_eq!(server_name(&with_host("10.0.0.1:443")), None);
        assert_eq!(server_name(&with_host("[::1]:443")), None);
        let by_uri = Request::builder()
            .uri("http://my-nginx.mesh-external.svc.cluster.local/")
            .body(())
            .unwrap();
        assert_eq!(
            server_name(&by_uri).as_deref(),
            Some("my-nginx.mesh-external.svc.cluster.local")
        );
    }
}
