//! The HTTP connection manager: accepts connections on a listener, and for each request loads the
//! current config once, picks the virtual host and route, applies the route's fault, and answers
//! directly, redirects, or forwards (see [`forward`]).
//!
//! Responses the proxy makes itself say so: an `x-strait-flags` header with Envoy's response flag
//! (`NR`, `UH`, `UF`, `UT`, `FI`, `DI`, `NC`, `DPE`, ...) and a one-line reason as the body; an
//! upstream's own responses pass through as they are. Bad input is refused before hyper sees it
//! ([`h1_check`], [`conn_io`]), within the [`HttpLimits`]; each request ends with an access log
//! line when one is asked for ([`crate::access_log`]).

pub(crate) mod conn_io;
mod cors;
mod ext_authz;
mod forward;
pub mod h1_check;
mod ratelimit;
mod trace;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::HeaderMap;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, LOCATION};
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::sync::watch;

use crate::Shared;
use crate::access_log::{Entry, millis};
use crate::config::listener::{Codec, HttpListener, ServerHeader};
use crate::config::{Action, Redirect, RequireTls, Route};
use crate::io::Io;
use crate::listeners::Accepted;
use crate::metrics::{HostRef, PEER_METADATA_HEADER, PEER_METADATA_ID_HEADER, PeerKey};
use crate::routing::{self, RequestView};
use crate::tls::DownstreamSession;
use conn_io::{ConnState, Ended, GuardedIo, InFlight};
use cors::CorsVerdict;
use h1_check::{HeadLimits, Scanner};

pub(crate) type Body = BoxBody<Bytes, hyper::Error>;

/// The header that carries the response flags of a response the proxy made itself.
pub const FLAGS_HEADER: &str = "x-strait-flags";

/// Limits and timeouts of downstream HTTP connections, with Envoy's defaults where Envoy has a
/// useful one (docs/ARCHITECTURE.md, "Robustness").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Size and count of a request's headers (60 KiB, 100; over them: 431).
    pub head: HeadLimits,
    /// From a request head's first byte to its last (`None`: no limit). Default 10 s.
    pub request_headers_timeout: Option<Duration>,
    /// A connection with no request in flight and no byte either way for this long is closed
    /// (`None`: never). Default one hour, Envoy's `idle_timeout`.
    pub idle_timeout: Option<Duration>,
    /// HTTP/2 streams at once on one connection (`SETTINGS_MAX_CONCURRENT_STREAMS`). Default 1024.
    pub max_concurrent_streams: u32,
    /// HTTP/2 keep-alive: a PING after this long without a request frame from the client, and
    /// the connection closed when its ACK does not come within as long again. Closes connections
    /// whose client stopped reading (a SETTINGS or PING flood that never reads the ACKs stalls
    /// the connection) or went away silently. Default `None` (no PINGs): the PINGs and their
    /// ACKs are bytes, which would keep an idle connection from its idle timeout.
    pub http2_keepalive: Option<Duration>,
}

impl Default for HttpLimits {
    fn default() -> HttpLimits {
        HttpLimits {
            head: HeadLimits::default(),
            request_headers_timeout: Some(Duration::from_secs(10)),
            idle_timeout: Some(Duration::from_secs(3600)),
            max_concurrent_streams: 1024,
            http2_keepalive: None,
        }
    }
}

/// HTTP/2 streams a client may reset before they are served, per connection (h2's default).
const H2_MAX_PENDING_ACCEPT_RESETS: usize = 20;
/// HTTP/2 streams the proxy may reset for a client's errors, per connection (h2's default).
const H2_MAX_LOCAL_ERROR_RESETS: usize = 1024;
/// Response bytes queued per HTTP/2 stream beyond the client's window (h2's default).
const H2_MAX_SEND_BUF: usize = 400 * 1024;

/// What the HTTP connection manager knows about the downstream connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Downstream {
    pub(crate) peer: SocketAddr,
    /// The connection's original destination, when the listener restored it (iptables mode):
    /// where ORIGINAL_DST clusters send requests.
    pub(crate) original_dst: Option<SocketAddr>,
    /// The connection is TLS.
    pub(crate) tls: bool,
}

/// A response the proxy made itself: its flags and Envoy's response code details.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LocalReply {
    pub(crate) flags: &'static str,
    pub(crate) details: &'static str,
}

/// Where a forwarded request went, for the access log.
#[derive(Debug, Clone, Default)]
pub(crate) struct UpstreamInfo {
    pub(crate) cluster: Option<String>,
    pub(crate) host: Option<String>,
    /// From sending the request upstream to its response headers.
    pub(crate) service_time: Option<Duration>,
    /// Request body bytes read from the client: counted as the body streams.
    pub(crate) received: Option<Arc<AtomicU64>>,
    /// The cluster's service, for Istio's metrics.
    pub(crate) service: Option<Arc<strait_telemetry::Service>>,
    /// The endpoint's workload (from EDS), for Istio's metrics.
    pub(crate) endpoint: Option<Arc<strait_telemetry::Workload>>,
    /// The upstream's `x-envoy-peer-metadata` (removed from the response).
    pub(crate) peer_header: Option<HeaderValue>,
    /// The upstream connection is mutual TLS.
    pub(crate) upstream_mtls: bool,
}

#[derive(Debug, Clone)]
struct RouteName(String);

/// The route's fault delayed the request (Envoy's `DI` flag).
#[derive(Debug, Clone, Copy)]
struct DelayInjected;

/// The one-line reason of a response the proxy made itself (its body).
#[derive(Debug, Clone)]
struct LocalReason(String);

/// The gRPC status a local reply to a gRPC request carries, when not the one its HTTP status
/// maps to (a fault abort's `grpc_status`).
#[derive(Debug, Clone, Copy)]
struct GrpcStatus(u32);

/// One downstream connection, as its requests see it.
struct Conn {
    shared: Arc<Shared>,
    hcm: Arc<HttpListener>,
    down: Downstream,
    local: Option<SocketAddr>,
    /// What the TLS handshake established, when the filter chain terminated TLS.
    tls: Option<Arc<DownstreamSession>>,
    /// The connection as the RBAC filters read it (when the HCM has any).
    authz: Option<strait_authz::Connection>,
    state: Arc<ConnState>,
    /// An inbound listener's connection: the proxy is the server's sidecar
    /// (`reporter="destination"`).
    inbound: bool,
    /// Istio's metrics the listener does not report.
    disabled_metrics: strait_telemetry::MetricSet,
    /// The client's SPIFFE id, from its certificate (mutual TLS).
    peer_principal: Option<Arc<str>>,
    /// The label set of the connection's last request, for Istio's metrics.
    edges: crate::metrics::EdgeCache,
}

/// True once `drain` says so; false if its sender is gone without saying so.
async fn drained(drain: &mut watch::Receiver<bool>) -> bool {
    drain.wait_for(|d| *d).await.is_ok()
}

/// Serves HTTP on one accepted connection with the given connection manager, until it ends or
/// drains.
pub(crate) async fn serve_connection(
    shared: Arc<Shared>,
    hcm: Arc<HttpListener>,
    stream: Io,
    accepted: Accepted,
    mut drain: watch::Receiver<bool>,
) {
    let codec = hcm.codec;
    let limits = shared.limits;
    let state = Arc::new(ConnState::default());
    let scanner = (codec != Codec::Http2).then(|| Scanner::new(limits.head, codec == Codec::Auto));
    let conn = Arc::new(Conn {
        shared: shared.clone(),
        down: Downstream {
            peer: accepted.peer,
            original_dst: accepted.restored,
            tls: accepted.tls.is_some(),
        },
        local: Some(accepted.local),
        authz: (!hcm.rbac.is_empty() || hcm.ext_authz.is_some())
            .then(|| accepted.authz_connection()),
        hcm,
        inbound: accepted.inbound,
        disabled_metrics: accepted.disabled_metrics,
        peer_principal: accepted
            .tls
            .as_ref()
            .and_then(|t| t.peer.as_ref())
            .and_then(|p| p.principal())
            .map(Arc::from),
        edges: Default::default(),
        tls: accepted.tls,
        state: state.clone(),
    });
    let io = GuardedIo::new(
        stream,
        scanner,
        limits.request_headers_timeout,
        limits.idle_timeout,
        state.clone(),
    );
    let service = {
        let conn = conn.clone();
        hyper::service::service_fn(move |req| {
            let conn = conn.clone();
            async move { Ok::<_, Infallible>(serve_request(&conn, req).await) }
        })
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .max_headers(limits.head.max_headers)
        // The request-headers timeout is GuardedIo's: hyper's would also cut idle keep-alives.
        .header_read_timeout(None::<Duration>);
    // HTTP/2 abuse (tests/h2_abuse.rs): h2's own guards, pinned here so that they stay what
    // docs/xds-support.md says. A CONTINUATION flood and an HPACK bomb are bounded by the header
    // list size; SETTINGS and PING are acknowledged before the next frame is read.
    builder
        .http2()
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.head.max_bytes).unwrap_or(u32::MAX))
        // Rapid reset (CVE-2023-44487): past 20 streams the client resets before they are
        // served, GOAWAY ENHANCE_YOUR_CALM.
        .max_pending_accept_reset_streams(H2_MAX_PENDING_ACCEPT_RESETS)
        // Past 1024 streams the proxy had to reset for the client's errors, GOAWAY.
        .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESETS)
        // Response data queued per stream beyond the client's window.
        .max_send_buf_size(H2_MAX_SEND_BUF);
    if let Some(keepalive) = limits.http2_keepalive {
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(keepalive)
            .keep_alive_timeout(keepalive);
    }
    match codec {
        Codec::Auto => {}
        Codec::Http1 => builder = builder.http1_only(),
        Codec::Http2 => builder = builder.http2_only(),
    }
    let serving = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(serving);
    // Draining (the listener went away, or `/drain_listeners`): HTTP/1.1 closes after the
    // response in flight (`connection: close`), HTTP/2 sends GOAWAY and finishes its streams.
    let result = tokio::select! {
        result = serving.as_mut() => result,
        true = drained(&mut drain) => {
            serving.as_mut().graceful_shutdown();
            serving.await
        }
    };
    if let Err(e) = &result {
        tracing::debug!(error = %e, "connection ended with an error");
    }
    let hyper_refused = result.as_ref().err().and_then(|e| parse_error(e.as_ref()));
    let ended = state.ended.lock().unwrap_or_else(|p| p.into_inner()).take();
    let entry = match ended {
        Some(Ended::Refused(r)) if !r.in_body => {
            shared.stats.flag("DPE");
            let (method, path) = r.request_line.clone().unzip();
            Some(Entry {
                method,
                path,
                protocol: Some("HTTP/1.1".into()),
                response_code: r.status,
                response_flags: "DPE".into(),
                response_code_details: Some(r.details.into()),
                ..conn.entry_now()
            })
        }
        Some(Ended::HeaderTimeout) => Some(Entry {
            response_code_details: Some("request_header_timeout".into()),
            ..conn.entry_now()
        }),
        // Refusals hyper makes itself (a request line it cannot parse): its 400 has no flags.
        None if hyper_refused.is_some() => {
            shared.stats.flag("DPE");
            Some(Entry {
                response_code: hyper_refused.unwrap_or(400),
                response_flags: "DPE".into(),
                response_code_details: Some("http1.codec_error".into()),
                ..conn.entry_now()
            })
        }
        _ => None,
    };
    if let (Some(entry), Some(log)) = (entry, &shared.access_log) {
        log.write(&entry);
    }
}

/// The status hyper answered a parse error with, if the error is one.
fn parse_error(e: &(dyn std::error::Error + Send + Sync + 'static)) -> Option<u16> {
    let e = e.downcast_ref::<hyper::Error>()?;
    if e.is_parse_too_large() {
        Some(431)
    } else if e.is_parse() {
        Some(400)
    } else {
        None
    }
}

impl Conn {
    /// An access log entry for this connection, starting now.
    fn entry_now(&self) -> Entry {
        Entry {
            downstream_local_address: self.down.original_dst.or(self.local).map(|a| a.to_string()),
            downstream_remote_address: Some(self.down.peer.to_string()),
            ..Entry::started(SystemTime::now())
        }
    }
}

/// One request: the connection manager's headers, the route's answer, and the access log line
/// when the response ends.
async fn serve_request(conn: &Arc<Conn>, mut req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    // Istio's peer metadata exchange: the client sidecar's metadata is read on inbound
    // listeners, and never passed on (an app or a client outside the mesh cannot send it on).
    let peer_header = req.headers_mut().remove(PEER_METADATA_HEADER);
    req.headers_mut().remove(PEER_METADATA_ID_HEADER);
    let peer_header = peer_header.filter(|_| conn.inbound);
    let host = HostRef::of(&req);
    let in_flight = InFlight::new(&conn.state);
    forwarding_headers(
        &conn.hcm,
        conn.down.peer,
        conn.tls.is_some(),
        req.headers_mut(),
    );
    client_cert_header(&conn.hcm, conn.tls.as_deref(), req.headers_mut());
    let mut span = conn
        .hcm
        .tracing
        .as_ref()
        .and_then(|t| trace::begin(t, conn.inbound, conn.down.peer, &mut req));
    let entry = conn
        .shared
        .access_log
        .as_ref()
        .map(|_| request_entry(conn, &req));
    let upgrade = upgrade_request(&req);
    let grpc = is_grpc(req.headers());
    let mut on_success = HeaderMap::new();
    let denied = match jwt_authn(conn, &mut req) {
        Ok(metadata) => authorize(conn, &mut req, metadata, &mut on_success).await,
        Err(refused) => Some(*refused),
    };
    let mut resp = match denied {
        Some(denied) => denied,
        None => handle(&conn.shared, &conn.hcm, conn.down, req, started).await,
    };
    for (name, value) in &on_success {
        resp.headers_mut().append(name, value.clone());
    }
    if grpc {
        grpc_local_reply(&mut resp);
    }
    server_header(&conn.hcm, resp.headers_mut());
    if upgrade.is_some() && resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        // The request scanner let the bytes after an upgrade request through unchecked (they
        // may be another protocol): a connection whose upgrade did not happen ends here.
        resp.headers_mut()
            .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
    }
    // The server sidecar answers a mesh client with its own metadata; nothing else passes on.
    resp.headers_mut().remove(PEER_METADATA_HEADER);
    resp.headers_mut().remove(PEER_METADATA_ID_HEADER);
    if conn.inbound
        && peer_header.is_some()
        && let Some((metadata, id)) = &conn.shared.telemetry.peer_header
    {
        resp.headers_mut()
            .insert(PEER_METADATA_HEADER, metadata.clone());
        resp.headers_mut()
            .insert(PEER_METADATA_ID_HEADER, id.clone());
    }
    let entry = entry.map(|e| response_entry(e, &resp));
    if let Some(span) = span.as_mut() {
        span.response(&resp);
    }
    let received = resp
        .extensions()
        .get::<UpstreamInfo>()
        .and_then(|u| u.received.clone());
    let recorder = recorder(conn, &mut resp, peer_header, host, grpc);
    let (parts, body) = resp.into_parts();
    let body = Logged {
        inner: body,
        sent: 0,
        finish: Some(Finish {
            entry,
            span,
            recorder,
            received,
            started,
            shared: conn.shared.clone(),
            _in_flight: in_flight,
        }),
    };
    Response::from_parts(parts, body.boxed())
}

fn request_entry(conn: &Conn, req: &Request<Incoming>) -> Entry {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let protocol = match req.version() {
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        _ => "HTTP/3",
    };
    Entry {
        method: Some(req.method().to_string()),
        path: Some(
            req.uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string(),
        ),
        protocol: Some(protocol.to_string()),
        x_forwarded_for: header("x-forwarded-for"),
        user_agent: header("user-agent"),
        request_id: header("x-request-id"),
        authority: authority(req),
        ..conn.entry_now()
    }
}

fn response_entry(mut e: Entry, resp: &Response<Body>) -> Entry {
    let ext = resp.extensions();
    e.response_code = resp.status().as_u16();
    let upstream = ext.get::<UpstreamInfo>();
    let (mut flags, details) = match ext.get::<LocalReply>() {
        Some(l) => (l.flags.to_string(), l.details),
        None if upstream.is_some() => ("-".to_string(), "via_upstream"),
        None => ("-".to_string(), "direct_response"),
    };
    if ext.get::<DelayInjected>().is_some() && !flags.split(',').any(|f| f == "DI") {
        flags = if flags == "-" {
            "DI".to_string()
        } else {
            format!("DI,{flags}")
        };
    }
    e.response_flags = flags;
    e.response_code_details = Some(details.to_string());
    if let Some(u) = upstream {
        e.upstream_cluster = u.cluster.clone();
        e.upstream_host = u.host.clone();
        e.upstream_service_time = u.service_time.map(|d| millis(d).to_string());
    }
    e.route_name = ext.get::<RouteName>().map(|r| r.0.clone());
    e
}

/// A response body that counts what it sends and writes the access log line when it ends (or
/// is dropped: the client went away).
struct Logged {
    inner: Body,
    sent: u64,
    finish: Option<Finish>,
}

struct Finish {
    entry: Option<Entry>,
    /// The request's span, when it is traced and sampled.
    span: Option<Box<trace::Active>>,
    /// What Istio's metrics count the request under, once it ends.
    recorder: Option<Recorder>,
    received: Option<Arc<AtomicU64>>,
    started: Instant,
    shared: Arc<Shared>,
    _in_flight: InFlight,
}

impl Logged {
    fn finish(&mut self) {
        let Some(f) = self.finish.take() else {
            return;
        };
        let received = f.received.as_ref().map_or(0, |r| r.load(Ordering::Relaxed));
        if let Some(r) = f.recorder {
            let edge = r.conn.edges.edge(&f.shared.telemetry, r.key);
            edge.series(r.response).request(
                f.started.elapsed(),
                received,
                self.sent,
                r.conn.disabled_metrics,
            );
        }
        if let Some(span) = f.span {
            span.end(&f.shared, received, self.sent);
        }
        if let (Some(mut e), Some(log)) = (f.entry, &f.shared.access_log) {
            e.bytes_sent = self.sent;
            e.bytes_received = received;
            e.duration = millis(f.started.elapsed());
            log.write(&e);
        }
    }
}

impl http_body::Body for Logged {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.sent += d.len() as u64;
                }
                // A gRPC status in the trailers (Istio's `grpc_response_status`).
                if let Some(t) = frame.trailers_ref()
                    && let Some(r) = this.finish.as_mut().and_then(|f| f.recorder.as_mut())
                    && r.key.protocol == strait_telemetry::Protocol::Grpc
                    && let Some(status) = grpc_status(t)
                {
                    r.response.grpc_status = Some(status);
                }
                if this.inner.is_end_stream() {
                    this.finish();
                }
            }
            Poll::Ready(_) => this.finish(),
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        self.finish();
    }
}

/// A request's place in Istio's metrics, recorded when its response ends.
struct Recorder {
    conn: Arc<Conn>,
    key: PeerKey,
    response: strait_telemetry::ResponseKey,
}

/// What Istio's metrics need of a response: its code, flags and gRPC status, and the peer (the
/// upstream's metadata header is taken out of the response's upstream info).
fn recorder(
    conn: &Arc<Conn>,
    resp: &mut Response<Body>,
    peer_header: Option<HeaderValue>,
    host: Option<HostRef>,
    grpc: bool,
) -> Option<Recorder> {
    if conn
        .disabled_metrics
        .covers(strait_telemetry::MetricSet::HTTP)
    {
        return None;
    }
    let ext = resp.extensions();
    let local = ext.get::<LocalReply>().map_or("-", |l| l.flags);
    let flags = if ext.get::<DelayInjected>().is_some() {
        crate::metrics::with_delay(local)
    } else {
        local
    };
    let code = resp.status().as_u16();
    let grpc_status = if grpc {
        grpc_status(resp.headers())
    } else {
        None
    };
    let (service, endpoint, upstream_peer, upstream_mtls) =
        match resp.extensions_mut().get_mut::<UpstreamInfo>() {
            Some(u) => (
                u.service.clone(),
                u.endpoint.clone(),
                u.peer_header.take(),
                u.upstream_mtls,
            ),
            None => (None, None, None, false),
        };
    let key = PeerKey {
        inbound: conn.inbound,
        protocol: if grpc {
            strait_telemetry::Protocol::Grpc
        } else {
            strait_telemetry::Protocol::Http
        },
        peer_header: if conn.inbound {
            peer_header
        } else {
            upstream_peer
        },
        endpoint: endpoint.filter(|_| !conn.inbound),
        peer_principal: conn.peer_principal.clone().filter(|_| conn.inbound),
        upstream_mtls: upstream_mtls && !conn.inbound,
        service,
        host,
    };
    Some(Recorder {
        conn: conn.clone(),
        key,
        response: strait_telemetry::ResponseKey {
            code,
            grpc_status,
            flags,
        },
    })
}

/// The `grpc-status` of a response's headers or trailers.
fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// A response the proxy makes itself, with its flag and reason.
pub(crate) fn local(status: u16, flag: &'static str, reason: &str) -> Response<Body> {
    local_details(status, flag, details(flag), reason)
}

/// Envoy's response code details for a flag, when nothing more precise is known.
fn details(flag: &str) -> &'static str {
    match flag {
        "NR" => "route_not_found",
        "NC" => "cluster_not_found",
        "UH" => "no_healthy_upstream",
        "UF" | "URX" => "upstream_reset_before_response_started{connection_failure}",
        "UR" => "upstream_reset_before_response_started{remote_reset}",
        "UT" => "upstream_response_timeout",
        "FI" => "fault_filter_abort",
        "DPE" => "http1.codec_error",
        _ => "local_reply",
    }
}

/// A response the proxy makes itself, with its flag, Envoy's response code details and a reason.
pub(crate) fn local_details(
    status: u16,
    flag: &'static str,
    details: &'static str,
    reason: &str,
) -> Response<Body> {
    let mut resp = Response::new(full(format!("{reason}\n")));
    resp.extensions_mut().insert(LocalReply {
        flags: flag,
        details,
    });
    resp.extensions_mut()
        .insert(LocalReason(reason.to_string()));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    let headers = resp.headers_mut();
    headers.insert(FLAGS_HEADER, HeaderValue::from_static(flag));
    headers.insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain"),
    );
    resp
}

/// The `server` header as the connection manager's `server_name` and
/// `server_header_transformation` say.
fn server_header(hcm: &HttpListener, headers: &mut HeaderMap) {
    let name = hyper::header::SERVER;
    let ours = || HeaderValue::from_str(&hcm.server_name).ok();
    match hcm.server_header {
        ServerHeader::Overwrite => match ours() {
            Some(v) => drop(headers.insert(name, v)),
            None => drop(headers.remove(name)),
        },
        ServerHeader::AppendIfAbsent => {
            if !headers.contains_key(&name)
                && let Some(v) = ours()
            {
                headers.insert(name, v);
            }
        }
        ServerHeader::PassThrough => {}
    }
}

pub(crate) fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// The request's authority: from an absolute-form URI, else the Host header.
fn authority(req: &Request<Incoming>) -> Option<String> {
    req.uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            req.headers()
                .get(hyper::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
}

/// The request's authority (`host`, else the URI's).
fn request_authority(req: &Request<Incoming>) -> &str {
    req.headers()
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or_default()
}

/// The request as jwt_authn and RBAC read it.
fn authz_request<'a>(conn: &Conn, req: &'a Request<Incoming>) -> strait_authz::HttpRequest<'a> {
    strait_authz::HttpRequest {
        method: req.method().as_str(),
        path: req.uri().path_and_query().map_or("/", |p| p.as_str()),
        authority: request_authority(req),
        scheme: if conn.tls.is_some() { "https" } else { "http" },
        headers: req.headers(),
        remote_ip: conn.down.peer.ip(),
    }
}

/// The connection manager's jwt_authn filter: a token it refuses answers 401 (403 for an
/// audience not allowed) with Envoy's body and `www-authenticate`; a verified token's payload
/// goes into the dynamic metadata the RBAC filters read, its header is removed unless
/// forwarded, and payload and claim headers are set.
fn jwt_authn(
    conn: &Conn,
    req: &mut Request<Incoming>,
) -> Result<strait_authz::Metadata, Box<Response<Body>>> {
    let mut metadata = strait_authz::Metadata::new();
    let Some(filter) = conn.hcm.jwt_authn.as_ref() else {
        return Ok(metadata);
    };
    let outcome = filter.authenticate(&authz_request(conn, req), SystemTime::now());
    if let Some(error) = outcome.refused {
        // Envoy's realm is the original URI as its `buildOriginalUri` makes it:
        // `x-forwarded-proto`, `://`, host, path with query.
        let proto = req
            .headers()
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let realm = format!("{proto}://{}{path}", request_authority(req));
        tracing::info!(peer = %conn.down.peer, method = %req.method(), %realm, %error, "request refused by jwt_authn");
        let mut value = format!("Bearer realm=\"{realm}\"");
        if error != strait_authz::JwtError::Missing {
            value.push_str(", error=\"invalid_token\"");
        }
        let body = error.to_string();
        let mut resp = local_details(error.status(), "-", "jwt_authn_access_denied", &body);
        *resp.body_mut() = full(body);
        resp.headers_mut().remove(FLAGS_HEADER);
        if let Ok(v) = HeaderValue::from_str(&value) {
            resp.headers_mut()
                .insert(hyper::header::WWW_AUTHENTICATE, v);
        }
        return Err(Box::new(resp));
    }
    if let Some(payloads) = outcome.metadata_object() {
        metadata.insert(strait_authz::jwt::FILTER_NAME.to_string(), payloads);
    }
    let headers = req.headers_mut();
    for name in &outcome.remove_headers {
        headers.remove(name.as_str());
    }
    for (name, value) in &outcome.set_headers {
        if let (Ok(n), Ok(v)) = (
            hyper::header::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(n, v);
        }
    }
    Ok(metadata)
}

/// The RBAC filters and the ext_authz filter among them (after the CUSTOM action's shadow RBAC
/// filter): the first refusal answers; headers an allowing authorizer gives the client go in
/// `on_success`.
async fn authorize(
    conn: &Conn,
    req: &mut Request<Incoming>,
    mut metadata: strait_authz::Metadata,
    on_success: &mut HeaderMap,
) -> Option<Response<Body>> {
    let rbac = &conn.hcm.rbac;
    let Some((before, filter)) = &conn.hcm.ext_authz else {
        return rbac_denial(conn, req, &mut metadata, rbac);
    };
    let (first, rest) = rbac.split_at((*before).min(rbac.len()));
    if let Some(denied) = rbac_denial(conn, req, &mut metadata, first) {
        return Some(denied);
    }
    match ext_authz::check(conn, filter, req, &metadata).await {
        ext_authz::Outcome::Denied(resp) => return Some(resp),
        ext_authz::Outcome::Allowed(headers) => *on_success = headers,
        ext_authz::Outcome::Skipped => {}
    }
    rbac_denial(conn, req, &mut metadata, rest)
}

/// RBAC filters, in order: the first that denies answers 403 with Envoy's body; the log line
/// names the policy and what did not match. Each leaves its shadow result in `metadata`.
fn rbac_denial(
    conn: &Conn,
    req: &Request<Incoming>,
    metadata: &mut strait_authz::Metadata,
    filters: &[Arc<strait_authz::RbacFilter>],
) -> Option<Response<Body>> {
    let connection = conn.authz.as_ref()?;
    let request = authz_request(conn, req);
    let (authority, path) = (request.authority, request.path);
    for filter in filters {
        let input = strait_authz::Input {
            connection,
            request: Some(&request),
            metadata: &*metadata,
        };
        let decision = filter.decide(&input);
        if let Some((Some(policy), allowed)) = &decision.shadow {
            tracing::info!(peer = %conn.down.peer, method = %req.method(), %authority, %path, %policy, would_allow = allowed, "RBAC shadow rule (dry run) matched");
        }
        if decision.allowed {
            filter.record(
                &decision,
                metadata,
                strait_authz::filter::HTTP_RBAC_NAMESPACE,
            );
            continue;
        }
        conn.shared.stats.flag("RBAC");
        tracing::info!(peer = %conn.down.peer, method = %req.method(), %authority, %path, denial = %filter.explain_denial(&decision, &input), "request denied by RBAC");
        let mut resp = local_details(
            403,
            "RBAC",
            "rbac_access_denied_matched_policy",
            strait_authz::ACCESS_DENIED,
        );
        *resp.body_mut() = full(strait_authz::ACCESS_DENIED);
        resp.headers_mut().remove(FLAGS_HEADER);
        return Some(resp);
    }
    None
}

async fn handle(
    shared: &Arc<Shared>,
    hcm: &HttpListener,
    down: Downstream,
    mut req: Request<Incoming>,
    started: Instant,
) -> Response<Body> {
    let config = shared.config.load_full();
    let peer = down.peer;
    let upgrade = match upgrade_request(&req) {
        // Envoy strips an HTTP/2 upgrade (h2c) and serves the request as it is.
        Some(p) if p.as_bytes().eq_ignore_ascii_case(b"h2c") => None,
        Some(p)
            if !hcm
                .upgrades
                .iter()
                .any(|u| u.as_bytes().eq_ignore_ascii_case(p.as_bytes())) =>
        {
            // Envoy's answer has no response flag.
            let mut r = local_details(
                403,
                "-",
                "upgrade_failed",
                &format!("upgrade to {p:?} is not allowed on this listener (upgrade_configs)"),
            );
            r.headers_mut().remove(FLAGS_HEADER);
            return r;
        }
        Some(protocol) => Some(forward::Upgrade {
            protocol,
            downstream: hyper::upgrade::on(&mut req),
        }),
        None => None,
    };
    let Some(routes) = config.route_config(&hcm.routes) else {
        shared.stats.flag("NR");
        return local(404, "NR", "no route configuration yet");
    };
    let Some(authority) = authority(&req) else {
        return local_details(
            400,
            "DPE",
            "missing_host_header",
            "the request has no authority (Host header)",
        );
    };
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let view = RequestView {
        path_and_query: &path,
        headers: req.headers(),
    };
    // A virtual host that requires TLS redirects plain-text requests to https, whatever their
    // route (Envoy's `require_tls`).
    if let Some(vh) = routing::virtual_host(routes, &authority)
        && !down.tls
        && match vh.require_tls {
            RequireTls::None => false,
            RequireTls::All => true,
            RequireTls::ExternalOnly => req.headers().get("x-envoy-internal").is_none(),
        }
    {
        let mut r = Response::new(full(Bytes::new()));
        *r.status_mut() = StatusCode::MOVED_PERMANENTLY;
        if let Ok(location) = HeaderValue::from_str(&format!("https://{authority}{path}")) {
            r.headers_mut().insert(hyper::header::LOCATION, location);
        }
        r.extensions_mut().insert(LocalReply {
            flags: "-",
            details: "via_upstream",
        });
        return r;
    }
    let Some((vh, route)) = routing::virtual_host(routes, &authority)
        .and_then(|vh| routing::route(vh, view).map(|route| (vh, route)))
    else {
        shared.stats.flag("NR");
        tracing::debug!(%peer, %authority, %path, "no route");
        return local(404, "NR", &format!("no route for {authority}{path}"));
    };
    if let Some(resp) = ratelimit::limited(shared, hcm, route) {
        return resp;
    }
    // The CORS filter runs before the fault filter, and sees every response on its way back.
    let cors = match &route.cors {
        Some(policy) => cors::verdict(
            policy,
            req.method(),
            req.headers(),
            routing::roll(policy.enabled_per_million),
        ),
        None => CorsVerdict::None,
    };
    let cors_headers = match cors {
        CorsVerdict::Preflight(headers) => {
            let mut r = Response::new(full(Bytes::new()));
            *r.headers_mut() = headers;
            r.extensions_mut().insert(LocalReply {
                flags: "-",
                details: "cors_response",
            });
            r.extensions_mut().insert(RouteName(route.name.clone()));
            return r;
        }
        CorsVerdict::Request(headers) => headers,
        CorsVerdict::None => None,
    };
    let (aborted, delayed) = fault(shared, route, &req).await;
    if let Some(mut resp) = aborted {
        resp.extensions_mut().insert(RouteName(route.name.clone()));
        add_cors(&mut resp, cors_headers);
        return resp;
    }
    let mut resp = match &route.action {
        Action::Direct { status, body } => {
            let mut r = Response::new(full(body.clone()));
            *r.status_mut() = StatusCode::from_u16(*status).unwrap_or(StatusCode::OK);
            r
        }
        Action::Redirect(rd) => redirect(rd, &authority, &path),
        Action::Forward(fwd) => {
            let routed = forward::Routed {
                shared,
                config: &config,
                vh,
                route,
                fwd,
                authority: &authority,
                path: &path,
                down,
                started,
            };
            forward::forward(routed, req, upgrade).await
        }
    };
    let headers = resp.headers_mut();
    for name in &route.response_headers.remove {
        headers.remove(name);
    }
    for (name, value, append) in &route.response_headers.add {
        if *append {
            headers.append(name, value.clone());
        } else {
            headers.insert(name, value.clone());
        }
    }
    resp.extensions_mut().insert(RouteName(route.name.clone()));
    if delayed {
        resp.extensions_mut().insert(DelayInjected);
    }
    add_cors(&mut resp, cors_headers);
    resp
}

/// The CORS filter's response headers, replacing the upstream's.
fn add_cors(resp: &mut Response<Body>, headers: Option<HeaderMap>) {
    for (name, value) in headers.iter().flatten() {
        resp.headers_mut().insert(name, value.clone());
    }
}

/// Whether a request is gRPC: its content type is `application/grpc`, alone or with a `+` or
/// `;` suffix (Envoy's `Grpc::Common::isGrpcRequestHeaders`).
fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("application/grpc"))
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('+') || rest.starts_with(';'))
}

/// A response the proxy made itself, to a gRPC request, as Envoy's local replies are: a
/// trailers-only gRPC response (200, `content-type: application/grpc`, no body) whose
/// `grpc-status` is the reply's own (a fault abort's `grpc_status`) or the one its HTTP status
/// maps to, and whose `grpc-message` is its reason. The CORS preflight answer is not a local
/// reply in this sense.
fn grpc_local_reply(resp: &mut Response<Body>) {
    let Some(reply) = resp.extensions().get::<LocalReply>().copied() else {
        return;
    };
    if reply.details == "cors_response" {
        return;
    }
    let code = match resp.extensions().get::<GrpcStatus>() {
        Some(GrpcStatus(code)) => *code,
        None => http_to_grpc_status(resp.status().as_u16()),
    };
    let reason = resp
        .extensions()
        .get::<LocalReason>()
        .map(|r| r.0.clone())
        .unwrap_or_default();
    *resp.status_mut() = StatusCode::OK;
    *resp.body_mut() = full(Bytes::new());
    let headers = resp.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from(code));
    if let Ok(v) = HeaderValue::from_str(&grpc_percent_encode(&reason)) {
        headers.insert("grpc-message", v);
    }
}

/// The gRPC status for an HTTP status, as gRPC's mapping (and Envoy) has it.
fn http_to_grpc_status(status: u16) -> u32 {
    match status {
        400 => 13,                   // INTERNAL
        401 => 16,                   // UNAUTHENTICATED
        403 => 7,                    // PERMISSION_DENIED
        404 => 12,                   // UNIMPLEMENTED
        429 | 502 | 503 | 504 => 14, // UNAVAILABLE
        _ => 2,                      // UNKNOWN
    }
}

/// gRPC's percent-encoding of `grpc-message`: bytes outside printable ASCII, and `%`.
fn grpc_percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The protocol an HTTP/1.1 request asks to upgrade to: its `Upgrade` header, when its
/// `Connection` header names `upgrade`.
fn upgrade_request(req: &Request<Incoming>) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 {
        return None;
    }
    let connection_upgrade = req
        .headers()
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    connection_upgrade
        .then(|| req.headers().get(hyper::header::UPGRADE).cloned())
        .flatten()
}

/// The headers Envoy's connection manager adds before routing: `x-request-id` when missing
/// (`generate_request_id`); on an edge proxy (`use_remote_address`: gateways) the peer appended
/// to `x-forwarded-for` (a loopback peer as the host's own address, as Envoy does),
/// `x-forwarded-proto` set to the downstream scheme, Envoy's internal `x-envoy-*` request headers
/// removed and `x-envoy-external-address` set to the peer (no address is internal unless
/// configured, Envoy's default); elsewhere `x-forwarded-proto` only when missing (an inbound
/// sidecar passes on the client's).
fn forwarding_headers(hcm: &HttpListener, peer: SocketAddr, tls: bool, headers: &mut HeaderMap) {
    if hcm.generate_request_id && !headers.contains_key("x-request-id") {
        let id = request_id();
        if let Ok(v) = HeaderValue::from_str(&id) {
            headers.insert("x-request-id", v);
        }
    }
    let proto = HeaderValue::from_static(if tls { "https" } else { "http" });
    if hcm.use_remote_address {
        for name in EDGE_STRIPPED {
            headers.remove(*name);
        }
        let appended = if peer.ip().is_loopback() {
            local_address().unwrap_or(peer.ip())
        } else {
            peer.ip()
        }
        .to_string();
        let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(prev) if !prev.is_empty() => format!("{prev},{appended}"),
            _ => appended,
        };
        if let Ok(v) = HeaderValue::from_str(&xff) {
            headers.insert("x-forwarded-for", v);
        }
        if let Ok(v) = HeaderValue::from_str(&peer.ip().to_string()) {
            headers.insert("x-envoy-external-address", v);
        }
        headers.insert("x-forwarded-proto", proto);
    } else if !headers.contains_key("x-forwarded-proto") {
        headers.insert("x-forwarded-proto", proto);
    }
}

const XFCC: &str = "x-forwarded-client-cert";

/// `x-forwarded-client-cert` as Envoy's `forward_client_cert_details` and
/// `set_current_client_cert_details` have it: on a mutual TLS connection, the proxy's own
/// identity (`By`), the client certificate's SHA-256 (`Hash`) and the fields asked for
/// (`Subject`, `URI`, `DNS`), appended to or replacing what came; otherwise, removed unless
/// told to always forward it.
fn client_cert_header(
    hcm: &HttpListener,
    tls: Option<&DownstreamSession>,
    headers: &mut HeaderMap,
) {
    use crate::config::listener::ForwardClientCert as F;
    let peer = tls.and_then(|t| t.peer.as_ref().map(|p| (t, p)));
    let Some((session, peer)) = peer else {
        if hcm.forward_client_cert != F::AlwaysForwardOnly {
            headers.remove(XFCC);
        }
        return;
    };
    let details = || {
        let d = hcm.client_cert_details;
        let mut parts: Vec<String> = Vec::new();
        if let Some(by) = &session.local_uri {
            parts.push(format!("By={by}"));
        }
        parts.push(format!("Hash={}", peer.sha256));
        if d.subject {
            parts.push(format!("Subject=\"{}\"", peer.subject.replace('"', "\\\"")));
        }
        if d.uri
            && let Some(uri) = peer.uris.first()
        {
            parts.push(format!("URI={uri}"));
        }
        if d.dns {
            parts.extend(peer.dns_names.iter().map(|n| format!("DNS={n}")));
        }
        parts.join(";")
    };
    let value = match hcm.forward_client_cert {
        F::Sanitize => {
            headers.remove(XFCC);
            return;
        }
        F::ForwardOnly | F::AlwaysForwardOnly => return,
        F::SanitizeSet => details(),
        F::AppendForward => match headers.get(XFCC).and_then(|v| v.to_str().ok()) {
            Some(prev) if !prev.is_empty() => format!("{prev},{}", details()),
            _ => details(),
        },
    };
    match HeaderValue::from_str(&value) {
        Ok(v) => {
            headers.insert(XFCC, v);
        }
        Err(_) => {
            headers.remove(XFCC);
        }
    }
}

/// The `x-envoy-*` request headers an edge proxy does not take from an external client (Envoy's
/// `cleanInternalHeaders`): they steer the proxies behind it.
const EDGE_STRIPPED: &[&str] = &[
    "x-envoy-decorator-operation",
    "x-envoy-downstream-service-cluster",
    "x-envoy-downstream-service-node",
    "x-envoy-expected-rq-timeout-ms",
    "x-envoy-external-address",
    "x-envoy-force-trace",
    "x-envoy-hedge-on-per-try-timeout",
    "x-envoy-internal",
    "x-envoy-ip-tags",
    "x-envoy-max-retries",
    "x-envoy-retriable-header-names",
    "x-envoy-retriable-status-codes",
    "x-envoy-retry-grpc-on",
    "x-envoy-retry-on",
    "x-envoy-upstream-alt-stat-name",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-upstream-rq-timeout-alt-response",
    "x-envoy-upstream-rq-timeout-ms",
];

/// The host's own address, as Envoy's `x-forwarded-for` gets it for a loopback peer: the first
/// IPv4 address of a network interface that is up and not loopback. Read once.
fn local_address() -> Option<std::net::IpAddr> {
    static LOCAL: std::sync::OnceLock<Option<std::net::IpAddr>> = std::sync::OnceLock::new();
    *LOCAL.get_or_init(|| {
        let interfaces = nix::ifaddrs::getifaddrs().ok()?;
        interfaces
            .filter(|i| {
                i.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP)
                    && !i
                        .flags
                        .contains(nix::net::if_::InterfaceFlags::IFF_LOOPBACK)
            })
            .find_map(|i| {
                let addr = i.address?;
                let v4 = addr.as_sockaddr_in()?;
                Some(std::net::IpAddr::V4(v4.ip()))
            })
    })
}

/// A random UUID (version 4), as Envoy's request ids are.
fn request_id() -> String {
    let n = fastrand::u128(..) & !(0xf << 76) & !(0x3 << 62) | (0x4 << 76) | (0x2 << 62);
    let h = format!("{n:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// The route's fault: a delay (then carry on) and/or an abort; whether it delayed.
async fn fault(
    shared: &Shared,
    route: &Route,
    req: &Request<Incoming>,
) -> (Option<Response<Body>>, bool) {
    let Some(f) = route.fault.as_ref() else {
        return (None, false);
    };
    if !routing::headers_match(&f.headers, req.headers()) {
        return (None, false);
    }
    let mut delayed = false;
    if let Some((delay, share)) = f.delay
        && routing::roll(share)
    {
        shared.stats.flag("DI");
        tokio::time::sleep(delay).await;
        delayed = true;
    }
    if let Some((status, share)) = f.abort
        && routing::roll(share)
    {
        shared.stats.flag("FI");
        let mut r = local(status, "FI", "fault filter abort");
        if let Some(code) = f.grpc_status {
            r.extensions_mut().insert(GrpcStatus(code));
        }
        if delayed {
            r.headers_mut()
                .insert(FLAGS_HEADER, HeaderValue::from_static("DI,FI"));
            r.extensions_mut().insert(LocalReply {
                flags: "DI,FI",
                details: "fault_filter_abort",
            });
        }
        return (Some(r), delayed);
    }
    (None, delayed)
}

fn redirect(rd: &Redirect, authority: &str, path_and_query: &str) -> Response<Body> {
    let (path, query) = path_and_query
        .split_once('?')
        .map_or((path_and_query, None), |(p, q)| (p, Some(q)));
    let parsed = authority.parse::<hyper::http::uri::Authority>().ok();
    let host = rd
        .host
        .clone()
        .or_else(|| parsed.as_ref().map(|a| a.host().to_string()))
        .unwrap_or_else(|| authority.to_string());
    let scheme = rd.scheme.clone().unwrap_or_else(|| "http".to_string());
    // A scheme change drops the port unless one is given, as Envoy does.
    let port = rd.port.or_else(|| {
        rd.scheme
            .is_none()
            .then(|| parsed.as_ref().and_then(|a| a.port_u16()))
            .flatten()
    });
    let new_path = rd.path.clone().unwrap_or_else(|| path.to_string());
    let mut location = match port {
        Some(p) => format!("{scheme}://{host}:{p}{new_path}"),
        None => format!("{scheme}://{host}{new_path}"),
    };
    if let (Some(q), false) = (query, rd.strip_query) {
        location.push('?');
        location.push_str(q);
    }
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = StatusCode::from_u16(rd.status).unwrap_or(StatusCode::MOVED_PERMANENTLY);
    if let Ok(v) = HeaderValue::from_str(&location) {
        r.headers_mut().insert(LOCATION, v);
    }
    r
}
