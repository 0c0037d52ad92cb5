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
use hyper::body::Incoming;
use hyper::header::{HeaderValue, LOCATION};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tracing::Instrument;

use crate::Shared;
use crate::config::listener::Codec;
use crate::config::{Action, Redirect, Route};
use crate::routing::{self, RequestView};

pub(crate) type Body = BoxBody<Bytes, hyper::Error>;

/// The header that carries the response flags of a response the proxy made itself.
pub const FLAGS_HEADER: &str = "x-strait-flags";

/// Serves one listener's socket until aborted.
pub(crate) async fn serve(shared: Arc<Shared>, listener: String, codec: Codec, tcp: TcpListener) {
    let listener: Arc<str> = listener.into();
    loop {
        let (stream, peer) = match tcp.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%listener, error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let name = listener.clone();
        let span = tracing::debug_span!("conn", %peer, listener = %listener);
        tokio::spawn(
            async move {
                let service = hyper::service::service_fn(move |req| {
                    let shared = shared.clone();
                    let name = name.clone();
                    async move { Ok::<_, Infallible>(handle(&shared, &name, peer, req).await) }
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
            .instrument(span),
        );
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
    shared: &Shared,
    listener: &str,
    peer: SocketAddr,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let config = shared.config.load_full();
    let Some(l) = config.listeners.get(listener) else {
        return local(503, "NR", "the listener was removed");
    };
    let Some(routes) = config.route_config(&l.http.routes) else {
        shared.stats.flag("NR");
        return local(404, "NR", "no route configuration yet");
    };
    let Some(authority) = authority(&req) else {
        return local(400, "DPE", "the request has no authority (Host header)");
    };
    if l.http.generate_request_id && !req.headers().contains_key("x-request-id") {
        let id = format!("{:032x}", fastrand::u128(..));
        if let Ok(v) = HeaderValue::from_str(&id) {
            req.headers_mut().insert("x-request-id", v);
        }
    }
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
            forward::forward(shared, &config, route, fwd, req, &authority, &path).await
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
