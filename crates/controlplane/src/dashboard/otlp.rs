//! The control plane as an OTLP trace receiver (`--otlp-addr`): OTLP/HTTP (`POST /v1/traces`,
//! protobuf) and OTLP/gRPC (`TraceService/Export`, h2c, uncompressed) on one port, into the
//! embedded trace store. Proxies export to it as to any collector: a MeshConfig
//! `extensionProviders` entry naming a service whose endpoint is this address (what
//! `strait demo` sets up). Bounded: at most [`MAX_CONNECTIONS`] connections, request heads
//! within 10 s, bodies of at most [`MAX_BODY`] within 30 s.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body_util::{BodyExt, Full, Limited, combinators::BoxBody};
use hyper::body::Frame;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prost::Message;
use strait_telemetry::otlp::{self, ExportTraceServiceRequest, ExportTraceServiceResponse};
use tokio::net::TcpListener;

use super::traces::TraceStore;

pub const MAX_CONNECTIONS: usize = 256;
pub const MAX_BODY: usize = 8 * 1024 * 1024;
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

type Body = BoxBody<Bytes, Infallible>;

/// Serves until `stop` completes.
pub async fn serve(
    listener: TcpListener,
    store: Arc<TraceStore>,
    stop: impl std::future::Future<Output = ()>,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(stop);
    loop {
        let (stream, _) = tokio::select! {
            () = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    tracing::warn!(%error, "the OTLP receiver could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::debug!("OTLP connection refused: {MAX_CONNECTIONS} already open");
            continue;
        };
        let store = store.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let store = store.clone();
                async move { Ok::<_, Infallible>(export(&store, req).await) }
            });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10));
            builder
                .http2()
                .timer(TokioTimer::new())
                .max_concurrent_streams(64);
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
            drop(permit);
        });
    }
}

async fn export(store: &TraceStore, req: Request<hyper::body::Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let grpc = path == otlp::GRPC_PATH;
    if !grpc && path != otlp::HTTP_PATH {
        return plain(
            StatusCode::NOT_FOUND,
            format!(
                "no OTLP endpoint {path}: traces go to POST {} (OTLP/HTTP, protobuf) or {} (OTLP/gRPC)",
                otlp::HTTP_PATH,
                otlp::GRPC_PATH
            ),
        );
    }
    if req.method() != hyper::Method::POST {
        return plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "OTLP export is a POST".into(),
        );
    }
    let content_type = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    if !grpc && content_type.starts_with("application/json") {
        return plain(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "OTLP/HTTP JSON is not accepted here: send protobuf (application/x-protobuf)".into(),
        );
    }
    let body = Limited::new(req.into_body(), MAX_BODY);
    let body = match tokio::time::timeout(BODY_TIMEOUT, body.collect()).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) => {
            let too_large = e
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some();
            let message = if too_large {
                format!("the export is larger than {MAX_BODY} bytes: send smaller batches")
            } else {
                format!("reading the export: {e}")
            };
            return if grpc {
                grpc_status(8, &message)
            } else {
                plain(
                    if too_large {
                        StatusCode::PAYLOAD_TOO_LARGE
                    } else {
                        StatusCode::BAD_REQUEST
                    },
                    message,
                )
            };
        }
        Err(_) => {
            return plain(
                StatusCode::REQUEST_TIMEOUT,
                format!("the export took longer than {BODY_TIMEOUT:?}"),
            );
        }
    };
    if grpc {
        match grpc_messages(body) {
            Ok(messages) => {
                for m in messages {
                    match ExportTraceServiceRequest::decode(m) {
                        Ok(r) => {
                            store.add(r);
                        }
                        Err(e) => {
                            return grpc_status(
                                3,
                                &format!("not an ExportTraceServiceRequest: {e}"),
                            );
                        }
                    }
                }
                grpc_ok()
            }
            Err(message) => grpc_status(12, &message),
        }
    } else {
        match ExportTraceServiceRequest::decode(body) {
            Ok(r) => {
                store.add(r);
                Response::builder()
                    .header(hyper::header::CONTENT_TYPE, "application/x-protobuf")
                    .body(
                        Full::new(Bytes::from(ExportTraceServiceResponse {}.encode_to_vec()))
                            .boxed(),
                    )
                    .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
            }
            Err(e) => plain(
                StatusCode::BAD_REQUEST,
                format!("the body is not an OTLP ExportTraceServiceRequest (protobuf): {e}"),
            ),
        }
    }
}

/// The messages of a gRPC request body: 1 byte compressed flag, 4 bytes length, the message.
fn grpc_messages(mut body: Bytes) -> Result<Vec<Bytes>, String> {
    let mut out = Vec::new();
    while !body.is_empty() {
        if body.len() < 5 {
            return Err("a truncated gRPC message".into());
        }
        let compressed = body[0];
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        body.advance(5);
        if compressed != 0 {
            return Err(
                "compressed OTLP/gRPC exports are not accepted: send them uncompressed".into(),
            );
        }
        if body.len() < len {
            return Err("a truncated gRPC message".into());
        }
        out.push(body.split_to(len));
    }
    Ok(out)
}

fn plain(code: StatusCode, message: String) -> Response<Body> {
    Response::builder()
        .status(code)
        .header(hyper::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(message + "\n")).boxed())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

fn grpc_ok() -> Response<Body> {
    let mut frame = vec![0u8, 0, 0, 0, 0];
    let msg = ExportTraceServiceResponse {}.encode_to_vec();
    frame[1..5].copy_from_slice(&(msg.len() as u32).to_be_bytes());
    frame.extend(msg);
    grpc_response(Some(Bytes::from(frame)), 0, "")
}

fn grpc_status(code: u32, message: &str) -> Response<Body> {
    grpc_response(None, code, message)
}

fn grpc_response(data: Option<Bytes>, code: u32, message: &str) -> Response<Body> {
    let mut trailers = hyper::HeaderMap::new();
    trailers.insert("grpc-status", code.into());
    if !message.is_empty()
        && let Ok(v) = hyper::header::HeaderValue::from_str(&message.replace(['\r', '\n'], " "))
    {
        trailers.insert("grpc-message", v);
    }
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = data
        .into_iter()
        .map(|d| Ok(Frame::data(d)))
        .chain(std::iter::once(Ok(Frame::trailers(trailers))))
        .collect();
    let body = http_body_util::StreamBody::new(tokio_stream::iter(frames));
    Response::builder()
        .header(hyper::header::CONTENT_TYPE, "application/grpc")
        .body(BodyExt::boxed(body))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use strait_telemetry::otlp::{Resource, ResourceSpans, ScopeSpans, Span};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn post(
        addr: std::net::SocketAddr,
        method: &str,
        path: &str,
        ctype: &str,
        body: &[u8],
    ) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(body).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Spans posted over OTLP/HTTP land in the store and are listed; what is not an OTLP
    /// protobuf export is refused with a reason.
    #[tokio::test]
    async fn spans_posted_over_otlp_http_are_listed() {
        let store = Arc::new(TraceStore::new(super::super::traces::Limits::default()));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, store.clone(), std::future::pending()));
        let export = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![otlp::string("service.name", "ratings.default")],
                }),
                scope_spans: vec![ScopeSpans {
                    scope: None,
                    spans: vec![Span {
                        trace_id: vec![0xab; 16],
                        span_id: vec![1; 8],
                        name: "ingress".into(),
                        start_time_unix_nano: 1_000_000,
                        end_time_unix_nano: 3_000_000,
                        ..Default::default()
                    }],
                }],
            }],
        };
        let answer = post(
            addr,
            "POST",
            otlp::HTTP_PATH,
            "application/x-protobuf",
            &export.encode_to_vec(),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let list = store.list(&super::super::traces::Query {
            limit: 10,
            ..Default::default()
        });
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].trace_id, "ab".repeat(16));
        assert_eq!(list[0].root_service, "ratings.default");
        assert_eq!(list[0].duration_ms, 2.0);

        let answer = post(addr, "POST", otlp::HTTP_PATH, "application/json", b"{}").await;
        assert!(
            answer.starts_with("HTTP/1.1 415") && answer.contains("protobuf"),
            "{answer}"
        );
        let answer = post(
            addr,
            "POST",
            otlp::HTTP_PATH,
            "application/x-protobuf",
            b"\xff\xff",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        let answer = post(addr, "POST", "/v1/metrics", "application/x-protobuf", b"").await;
        assert!(
            answer.starts_with("HTTP/1.1 404") && answer.contains("/v1/traces"),
            "{answer}"
        );
        let answer = post(addr, "GET", otlp::HTTP_PATH, "application/x-protobuf", b"").await;
        assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
        assert_eq!(store.stats().1, 1);
    }

    #[test]
    fn grpc_framing() {
        let mut b = vec![0, 0, 0, 0, 2, 8, 1, 0, 0, 0, 0, 0];
        let m = grpc_messages(Bytes::from(b.clone())).unwrap();
        assert_eq!(m, vec![Bytes::from_static(&[8, 1]), Bytes::new()]);
        b[0] = 1;
        assert!(
            grpc_messages(Bytes::from(b))
                .unwrap_err()
                .contains("compressed")
        );
        assert!(grpc_messages(Bytes::from_static(&[0, 0, 0, 0, 9, 1])).is_err());
    }
}
