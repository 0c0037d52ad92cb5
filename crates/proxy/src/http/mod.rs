//! The HTTP connection manager: accepts connections on a listener, and for each request loads the
//! current config once, picks the virtual host and route, applies the route's fault, and answers
//! directly, redirects, or forwards (see [`forward`]).
//!
//! Responses the proxy makes itself say so: an `x-strait-flags` header with Envoy's response flag
//! (`NR`, `UH`, `UF`, `UT`, `FI`, `DI`, `NC`, ...) and a one-line reason as the body.

mod forward;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::HeaderMap;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, LOCATION};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;

use crate::Shared;
use crate::config::listener::{Codec, HttpListener};
use crate::config::{Action, Redirect, Route};
use crate::routing::{self, RequestView};

pub(crate) type Body = BoxBody<Bytes, hyper::Error>;

/// The header that carries the response flags of a response the proxy made itself.
pub const FLAGS_HEADER: &str = "x-strait-flags";

/// What the HTTP connection manager knows about the downstream connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Downstream {
    pub(crate) peer: SocketAddr,
    /// The connection's original destination, when the listener restored it (iptables mode):
    /// where ORIGINAL_DST clusters send requests.
    pub(crate) original_dst: Option<SocketAddr>,
}

/// Serves HTTP on one accepted connection with the given connection manager.
pub(crate) async fn serve_connection(
    shared: Arc<Shared>,
    hcm: Arc<HttpListener>,
    stream: TcpStream,
    peer: SocketAddr,
    original_dst: Option<SocketAddr>,
) {
    let codec = hcm.codec;
    let down = Downstream { peer, original_dst };
    let service = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        let hcm = hcm.clone();
        async move { Ok::<_, Infallible>(handle(&shared, &hcm, down, req).await) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    match codec {
        Codec::Auto => {}
        Codec::Http1 => builder = builder.http1_only(),
        Codec::Http2 => builder = builder.http2_only(),
    }
    if let Err(e) = builder
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// A response the proxy makes itself, with its flag and reason.
pub(crate) fn local(status: u16, flag: &'static str, reason: &str) -> Response<Body> {
    let mut resp = Response::new(full(format!("{reason}\n")));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    let headers = resp.headers_mut();
    headers.insert(FLAGS_HEADER, HeaderValue::from_static(flag));
    headers.insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain"),
    );
    resp
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

async fn handle(
    shared: &Arc<Shared>,
    hcm: &HttpListener,
    down: Downstream,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let config = shared.config.load_full();
    let peer = down.peer;
    let Some(routes) = config.route_config(&hcm.routes) else {
        shared.stats.flag("NR");
        return local(404, "NR", "no route configuration yet");
    };
    let Some(authority) = authority(&req) else {
        return local(400, "DPE", "the request has no authority (Host header)");
    };
    forwarding_headers(hcm, peer, req.headers_mut());
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let view = RequestView {
        path_and_query: &path,
        headers: req.headers(),
    };
    let Some(route) =
        routing::virtual_host(routes, &authority).and_then(|vh| routing::route(vh, view))
    else {
        shared.stats.flag("NR");
        tracing::debug!(%peer, %authority, %path, "no route");
        return local(404, "NR", &format!("no route for {authority}{path}"));
    };
    if let Some(resp) = fault(shared, route, &req).await {
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
            forward::forward(shared, &config, route, fwd, req, &authority, &path, down).await
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
    resp
}

/// The headers Envoy's connection manager adds before routing: `x-request-id` when missing
/// (`generate_request_id`); on an edge proxy (`use_remote_address`: gateways) the peer appended
/// to `x-forwarded-for` and `x-forwarded-proto` set to the downstream scheme; elsewhere
/// `x-forwarded-proto` only when missing (an inbound sidecar passes on the client's).
fn forwarding_headers(hcm: &HttpListener, peer: SocketAddr, headers: &mut HeaderMap) {
    if hcm.generate_request_id && !headers.contains_key("x-request-id") {
        let id = request_id();
        if let Ok(v) = HeaderValue::from_str(&id) {
            headers.insert("x-request-id", v);
        }
    }
    // Downstream TLS is not served yet: the scheme is http.
    let proto = HeaderValue::from_static("http");
    if hcm.use_remote_address {
        let ip = peer.ip().to_string();
        let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(prev) if !prev.is_empty() => format!("{prev},{ip}"),
            _ => ip,
        };
        if let Ok(v) = HeaderValue::from_str(&xff) {
            headers.insert("x-forwarded-for", v);
        }
        headers.insert("x-forwarded-proto", proto);
    } else if !headers.contains_key("x-forwarded-proto") {
        headers.insert("x-forwarded-proto", proto);
    }
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

/// The route's fault: a delay (then carry on) and/or an abort.
async fn fault(shared: &Shared, route: &Route, req: &Request<Incoming>) -> Option<Response<Body>> {
    let f = route.fault.as_ref()?;
    if !routing::headers_match(&f.headers, req.headers()) {
        return None;
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
        if delayed {
            r.headers_mut()
                .insert(FLAGS_HEADER, HeaderValue::from_static("DI,FI"));
        }
        return Some(r);
    }
    None
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
