//! `envoy.filters.http.ext_authz` as Envoy runs it: when its `filter_enabled_metadata` matches
//! (Istio: a CUSTOM rule matched), the request is checked with the authorizer, over gRPC
//! (`envoy.service.auth.v3.Authorization/Check`) or HTTP, on a cluster of the config.
//!
//! - Allowed: the request goes on with the headers the authorizer set (gRPC: the OK response's
//!   headers, set unless `append`, and `headers_to_remove`; HTTP: the 200's headers that
//!   `allowed_upstream_headers` names); `allowed_client_headers_on_success` headers go on the
//!   response.
//! - Denied: the authorizer's status (403 when it gives none), headers and body, flag `UAEX`.
//! - The check failed (no cluster or endpoint, connection, timeout, a gRPC error, an answer that
//!   does not decode): `failure_mode_allow` lets the request through, else `status_on_error`
//!   (403) with an empty body, flag `UAEX`. Fail closed by default.

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address, socket_address};
use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, CheckResponse, attribute_context, check_response,
};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{HeaderMap, Request, Response};
use prost::Message;

use super::{Body, Conn, FLAGS_HEADER, full, local_details};
use crate::body::RequestBody;
use crate::config::ext_authz::{CheckService, ExtAuthz, NameMatch};
use crate::upstream;

const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";
/// The most of an authorizer's answer strait-proxy reads.
const MAX_ANSWER: usize = 64 * 1024;

/// What the check decided.
pub(super) enum Outcome {
    /// The filter did not run (its metadata did not match).
    Skipped,
    /// Go on; these headers go on the response to the client.
    Allowed(HeaderMap),
    /// Answer this instead.
    Denied(Response<Body>),
}

/// Why a check failed (Envoy's error path: `status_on_error` or `failure_mode_allow`).
#[derive(Debug, thiserror::Error)]
enum CheckError {
    #[error("the authorizer's cluster {0} is not in the config")]
    NoCluster(String),
    #[error("the authorizer's cluster {0} has no endpoint")]
    NoEndpoint(String),
    #[error("the check timed out after {0:?}")]
    Timeout(Duration),
    #[error("sending the check: {0}")]
    Send(String),
    #[error("the authorizer answered gRPC status {0}: {1}")]
    Grpc(String, String),
    #[error("the authorizer's answer could not be read: {0}")]
    Answer(String),
}

fn enabled(filter: &ExtAuthz, metadata: &strait_authz::Metadata) -> bool {
    let Some(m) = &filter.enabled_metadata else {
        return true;
    };
    metadata
        .get(&m.filter)
        .and_then(|ns| ns.get(&m.key))
        .and_then(|v| v.as_str())
        .is_some_and(|v| m.value.matches(v))
}

fn any_match(list: &[NameMatch], name: &str) -> bool {
    list.iter().any(|m| m.matches(name))
}

/// Runs the filter on `req` (whose headers an allowing authorizer may change).
pub(super) async fn check(
    conn: &Conn,
    filter: &ExtAuthz,
    req: &mut Request<Incoming>,
    metadata: &strait_authz::Metadata,
) -> Outcome {
    if !enabled(filter, metadata) {
        return Outcome::Skipped;
    }
    let (path, authority) = (
        req.uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string(),
        super::request_authority(req).to_string(),
    );
    let result = match &filter.service {
        CheckService::Grpc {
            cluster,
            authority: check_authority,
            timeout,
        } => {
            let body = check_request(conn, filter, req).encode_to_vec();
            let call = grpc_check(conn, cluster, check_authority, body);
            match tokio::time::timeout(*timeout, call).await {
                Ok(r) => r.map(|resp| grpc_outcome(resp, req.headers_mut())),
                Err(_) => Err(CheckError::Timeout(*timeout)),
            }
        }
        CheckService::Http { timeout, .. } => {
            match tokio::time::timeout(*timeout, http_check(conn, filter, req)).await {
                Ok(r) => r,
                Err(_) => Err(CheckError::Timeout(*timeout)),
            }
        }
    };
    match result {
        Ok(Outcome::Denied(resp)) => {
            conn.shared.stats.flag("UAEX");
            tracing::info!(peer = %conn.down.peer, method = %req.method(), %authority, %path, status = resp.status().as_u16(), "request denied by ext_authz");
            Outcome::Denied(resp)
        }
        Ok(o) => o,
        Err(e) if filter.failure_mode_allow => {
            tracing::warn!(peer = %conn.down.peer, %authority, %path, error = %e, "ext_authz check failed; failure_mode_allow lets the request through");
            Outcome::Allowed(HeaderMap::new())
        }
        Err(e) => {
            conn.shared.stats.flag("UAEX");
            tracing::warn!(peer = %conn.down.peer, %authority, %path, error = %e, status = filter.status_on_error, "ext_authz check failed: request refused (fail closed)");
            let mut resp = local_details(filter.status_on_error, "UAEX", "ext_authz_error", "");
            *resp.body_mut() = full(Bytes::new());
            resp.headers_mut().remove(FLAGS_HEADER);
            Outcome::Denied(resp)
        }
    }
}

/// The request's headers the authorizer may see (`allowed_headers`; all when unset).
fn checked_headers<'a>(
    filter: &'a ExtAuthz,
    headers: &'a HeaderMap,
) -> impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)> + 'a {
    headers.iter().filter(move |(name, _)| {
        filter
            .allowed_headers
            .as_deref()
            .is_none_or(|l| any_match(l, name.as_str()))
    })
}

fn socket(addr: std::net::SocketAddr) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: addr.ip().to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(addr.port() as u32)),
            ..Default::default()
        })),
    }
}

/// Envoy's `CheckRequest`: the peers (address, principal) and the HTTP request (method, path,
/// host, scheme, protocol, headers with the pseudo-headers).
fn check_request(conn: &Conn, filter: &ExtAuthz, req: &Request<Incoming>) -> CheckRequest {
    let mut headers = std::collections::HashMap::new();
    for (name, value) in checked_headers(filter, req.headers()) {
        let v = String::from_utf8_lossy(value.as_bytes()).to_string();
        headers
            .entry(name.as_str().to_string())
            .and_modify(|e: &mut String| {
                e.push(',');
                e.push_str(&v);
            })
            .or_insert(v);
    }
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let host = super::request_authority(req);
    let scheme = if conn.tls.is_some() { "https" } else { "http" };
    headers.insert(":authority".into(), host.to_string());
    headers.insert(":method".into(), req.method().to_string());
    headers.insert(":path".into(), path.to_string());
    headers.insert(":scheme".into(), scheme.to_string());
    let connection = conn.authz.as_ref();
    let peer = |addr: std::net::SocketAddr, principal: Option<&String>| attribute_context::Peer {
        address: Some(socket(addr)),
        principal: principal.cloned().unwrap_or_default(),
        ..Default::default()
    };
    let source = peer(
        conn.down.peer,
        connection.and_then(|c| c.peer_principal.as_ref()),
    );
    let destination = peer(
        connection
            .map(|c| c.destination)
            .or(conn.down.original_dst)
            .or(conn.local)
            .unwrap_or(conn.down.peer),
        None,
    );
    let protocol = match req.version() {
        hyper::Version::HTTP_10 => "HTTP/1.0",
        hyper::Version::HTTP_2 => "HTTP/2",
        _ => "HTTP/1.1",
    };
    let query = path.split_once('?').map_or("", |(_, q)| q);
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(source),
            destination: Some(destination),
            request: Some(attribute_context::Request {
                time: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .ok()
                    .map(|d| envoy_types::pb::google::protobuf::Timestamp {
                        seconds: d.as_secs() as i64,
                        nanos: d.subsec_nanos() as i32,
                    }),
                http: Some(attribute_context::HttpRequest {
                    id: req
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string(),
                    method: req.method().to_string(),
                    headers,
                    path: path.to_string(),
                    host: host.to_string(),
                    scheme: scheme.to_string(),
                    query: query.to_string(),
                    fragment: String::new(),
                    protocol: protocol.to_string(),
                    size: -1,
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
    }
}

/// The cluster's balancer and an endpoint.
fn pick(
    conn: &Conn,
    cluster: &str,
) -> Result<(std::sync::Arc<crate::config::Cluster>, upstream::Picked), CheckError> {
    let config = conn.shared.config.load();
    let c = config
        .clusters
        .get(cluster)
        .cloned()
        .ok_or_else(|| CheckError::NoCluster(cluster.to_string()))?;
    let picked = upstream::balancer(&c)
        .and_then(|lb| lb.pick(None, "", None))
        .ok_or_else(|| CheckError::NoEndpoint(cluster.to_string()))?;
    Ok((c, picked))
}

async fn send(
    conn: &Conn,
    cluster: &str,
    req: Request<RequestBody>,
) -> Result<(HeaderMap, Bytes, Option<HeaderMap>, u16), CheckError> {
    let (c, picked) = pick(conn, cluster)?;
    let lb = upstream::balancer(&c).ok_or_else(|| CheckError::NoEndpoint(cluster.to_string()))?;
    let resp = lb
        .send(&picked, req)
        .await
        .map_err(|e| CheckError::Send(format!("{e:?}")))?;
    let status = resp.status().as_u16();
    let (parts, body) = resp.into_parts();
    let collected = http_body_util::Limited::new(body, MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| CheckError::Answer(e.to_string()))?;
    let trailers = collected.trailers().cloned();
    Ok((parts.headers, collected.to_bytes(), trailers, status))
}

async fn grpc_check(
    conn: &Conn,
    cluster: &str,
    authority: &str,
    message: Vec<u8>,
) -> Result<CheckResponse, CheckError> {
    let mut frame = BytesMut::with_capacity(message.len() + 5);
    frame.put_u8(0);
    frame.put_u32(message.len() as u32);
    frame.put_slice(&message);
    let authority = if authority.is_empty() {
        cluster
    } else {
        authority
    };
    let req = Request::builder()
        .method("POST")
        .uri(CHECK_PATH)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::CONTENT_TYPE, "application/grpc")
        .header(hyper::header::TE, "trailers")
        .body(RequestBody::complete(vec![frame.freeze()], None))
        .map_err(|e| CheckError::Send(e.to_string()))?;
    let (headers, body, trailers, status) = send(conn, cluster, req).await?;
    let grpc_status = |h: &HeaderMap| {
        h.get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let code = trailers
        .as_ref()
        .and_then(grpc_status)
        .or_else(|| grpc_status(&headers));
    if status != 200 {
        return Err(CheckError::Answer(format!("HTTP status {status}")));
    }
    match code.as_deref() {
        Some("0") => {}
        Some(c) => {
            let message = trailers
                .as_ref()
                .unwrap_or(&headers)
                .get("grpc-message")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            return Err(CheckError::Grpc(c.to_string(), message));
        }
        None => return Err(CheckError::Answer("no grpc-status".into())),
    }
    let mut buf = body;
    if buf.len() < 5 || buf[0] != 0 {
        return Err(CheckError::Answer(
            "not one uncompressed gRPC message".into(),
        ));
    }
    buf.advance(1);
    let len = buf.get_u32() as usize;
    if buf.len() < len {
        return Err(CheckError::Answer("a truncated gRPC message".into()));
    }
    CheckResponse::decode(buf.slice(..len)).map_err(|e| CheckError::Answer(e.to_string()))
}

/// An authorizer's `HeaderValueOption` on `headers`: the deprecated `append` when set, else
/// `append_action` (append, add if absent, overwrite or add, overwrite if present).
fn apply_option(
    headers: &mut HeaderMap,
    h: &envoy_types::pb::envoy::config::core::v3::HeaderValueOption,
) {
    let Some(hv) = &h.header else { return };
    #[allow(deprecated)]
    let legacy = h.append.as_ref().map(|b| b.value);
    let present = headers.contains_key(hv.key.to_ascii_lowercase().as_str());
    let append = match (legacy, h.append_action) {
        (Some(a), _) => a,
        (None, 0) => true,
        (None, 1) if present => return,
        (None, 1) => false,
        (None, 3) if !present => return,
        (None, _) => false,
    };
    set_header(headers, &hv.key, &hv.value, append);
}

fn set_header(headers: &mut HeaderMap, key: &str, value: &str, append: bool) {
    let (Ok(n), Ok(v)) = (
        HeaderName::from_bytes(key.as_bytes()),
        HeaderValue::from_str(value),
    ) else {
        return;
    };
    if append {
        headers.append(n, v);
    } else {
        headers.insert(n, v);
    }
}

/// A `CheckResponse`: OK allows (its headers applied to the request), anything else denies with
/// its `denied_response`.
fn grpc_outcome(resp: CheckResponse, request_headers: &mut HeaderMap) -> Outcome {
    let ok = resp.status.as_ref().is_none_or(|s| s.code == 0);
    if ok {
        if let Some(check_response::HttpResponse::OkResponse(ok)) = &resp.http_response {
            for h in &ok.headers {
                apply_option(request_headers, h);
            }
            for name in &ok.headers_to_remove {
                request_headers.remove(name.as_str());
            }
        }
        return Outcome::Allowed(HeaderMap::new());
    }
    let (status, headers, body) = match &resp.http_response {
        Some(check_response::HttpResponse::DeniedResponse(d)) => (
            d.status
                .as_ref()
                .map(|s| s.code)
                .filter(|c| (100..=599).contains(c))
                .unwrap_or(403) as u16,
            d.headers.clone(),
            d.body.clone(),
        ),
        _ => (403, Vec::new(), String::new()),
    };
    let mut out = denial(status, Bytes::from(body));
    for h in &headers {
        apply_option(out.headers_mut(), h);
    }
    Outcome::Denied(out)
}

fn denial(status: u16, body: Bytes) -> Response<Body> {
    let mut resp = local_details(status, "UAEX", "ext_authz_denied", "");
    *resp.body_mut() = full(body);
    resp.headers_mut().remove(FLAGS_HEADER);
    resp
}

/// The HTTP check: the request's method, `path_prefix` + path, `Host` of the server URI... as
/// Envoy sends it: the original authority as `Host`, the allowed headers, `headers_to_add`, no
/// body. 200 allows; any other status denies with the authorizer's status, headers and body.
async fn http_check(
    conn: &Conn,
    filter: &ExtAuthz,
    req: &mut Request<Incoming>,
) -> Result<Outcome, CheckError> {
    let CheckService::Http {
        cluster,
        path_prefix,
        headers_to_add,
        allowed_upstream_headers,
        allowed_client_headers,
        allowed_client_headers_on_success,
        ..
    } = &filter.service
    else {
        unreachable!("an HTTP check on an HTTP service")
    };
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let mut check = Request::builder()
        .method(req.method().clone())
        .uri(format!("{path_prefix}{path}"))
        .body(RequestBody::complete(Vec::new(), None))
        .map_err(|e| CheckError::Send(e.to_string()))?;
    let headers = check.headers_mut();
    for (name, value) in checked_headers(filter, req.headers()) {
        // Hop-by-hop and body headers are the check's own.
        if matches!(
            name.as_str(),
            "connection" | "transfer-encoding" | "te" | "upgrade" | "keep-alive" | "expect"
        ) {
            continue;
        }
        headers.append(name.clone(), value.clone());
    }
    if let Ok(v) = HeaderValue::from_str(super::request_authority(req)) {
        headers.insert(hyper::header::HOST, v);
    }
    headers.insert(hyper::header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    for (k, v) in headers_to_add {
        set_header(headers, k, v, false);
    }
    let (answer, body, _, status) = send(conn, cluster, check).await?;
    let picked = |list: &Option<Vec<NameMatch>>, all: bool| -> Vec<(HeaderName, HeaderValue)> {
        answer
            .iter()
            .filter(|(n, _)| {
                !matches!(
                    n.as_str(),
                    "content-length" | "transfer-encoding" | "connection" | "host"
                )
            })
            .filter(|(n, _)| match list {
                Some(l) => any_match(l, n.as_str()),
                None => all,
            })
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect()
    };
    if status == 200 {
        for (n, v) in picked(allowed_upstream_headers, false) {
            req.headers_mut().insert(n, v);
        }
        let mut on_success = HeaderMap::new();
        for (n, v) in picked(allowed_client_headers_on_success, false) {
            on_success.append(n, v);
        }
        return Ok(Outcome::Allowed(on_success));
    }
    let mut out = denial(status, body);
    for (n, v) in picked(allowed_client_headers, true) {
        out.headers_mut().insert(n, v);
    }
    Ok(Outcome::Denied(out))
}
