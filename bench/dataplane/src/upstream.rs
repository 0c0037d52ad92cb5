//! The benchmark's upstream: answers every request with a fixed body (1 KB by default), over
//! HTTP/1.1 and h2c on each port, and does nothing else, so that what is measured is the proxies.
//! A gRPC request (`content-type: application/grpc`) gets a gRPC reply: one message (a `bytes`
//! field of that size) and `grpc-status: 0` in the trailers. `GET /__served` answers how many
//! requests it has served, so the harness can check that every success a load generator counted
//! reached the upstream (a proxy's own gRPC error is an HTTP 200 too).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

type Body = UnsyncBoxBody<Bytes, Infallible>;

struct Replies {
    plain: Bytes,
    grpc: Bytes,
    served: AtomicU64,
}

/// Serves `size`-byte bodies on every address of `listen` until the process is stopped.
pub async fn serve(listen: Vec<SocketAddr>, size: usize) -> anyhow::Result<()> {
    let replies = Arc::new(Replies {
        plain: Bytes::from(vec![b'x'; size]),
        grpc: grpc_message(size),
        served: AtomicU64::new(0),
    });
    let mut tasks = Vec::new();
    for addr in listen {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the upstream on {addr}"))?;
        tasks.push(tokio::spawn(accept(listener, replies.clone())));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

async fn accept(listener: TcpListener, replies: Arc<Replies>) -> anyhow::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let replies = replies.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let replies = replies.clone();
                async move { Ok::<_, Infallible>(answer(req, &replies).await) }
            });
            // Errors are the client's going away; the load generators report their own.
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(req: Request<hyper::body::Incoming>, replies: &Replies) -> Response<Body> {
    if req.uri().path() == "/__served" {
        let n = replies.served.load(Ordering::Relaxed).to_string();
        return Response::new(Full::new(Bytes::from(n)).boxed_unsync());
    }
    let grpc = req
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    // Read the request body through (a gRPC request has one), then answer.
    let _ = req.into_body().collect().await;
    replies.served.fetch_add(1, Ordering::Relaxed);
    if !grpc {
        return Response::builder()
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(Full::new(replies.plain.clone()).boxed_unsync())
            .expect("a static response");
    }
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let frames = [
        Ok(Frame::data(replies.grpc.clone())),
        Ok(Frame::trailers(trailers)),
    ];
    Response::builder()
        .header(CONTENT_TYPE, "application/grpc")
        .body(StreamBody::new(futures::stream::iter(frames)).boxed_unsync())
        .expect("a static response")
}

/// A gRPC length-prefixed message holding one protobuf `bytes` field (number 1) of `size` bytes.
pub fn grpc_message(size: usize) -> Bytes {
    let mut msg = BytesMut::new();
    msg.put_u8(0x0a); // field 1, length-delimited
    let mut n = size;
    while n >= 0x80 {
        msg.put_u8((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    msg.put_u8(n as u8);
    msg.put_bytes(b'x', size);
    let mut framed = BytesMut::with_capacity(5 + msg.len());
    framed.put_u8(0); // not compressed
    framed.put_u32(msg.len() as u32);
    framed.put_slice(&msg);
    framed.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_message_is_length_prefixed_protobuf() {
        let m = grpc_message(1024);
        assert_eq!(m[0], 0);
        assert_eq!(
            u32::from_be_bytes([m[1], m[2], m[3], m[4]]) as usize,
            m.len() - 5
        );
        // field 1 wire type 2, then 1024 as a varint (0x80 0x08)
        assert_eq!(&m[5..8], &[0x0a, 0x80, 0x08]);
        assert_eq!(m.len(), 5 + 3 + 1024);
    }
}
