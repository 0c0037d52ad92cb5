//! The gRPC service in front of the ADS server: tonic's generated service for SotW, and for
//! Delta streams a response body that encodes each response into a buffer of its own size.
//!
//! tonic encodes a stream's responses into one buffer that it keeps for the stream's life and
//! grows to its largest response (with 1,000 services, a 1.4 MB route configuration): with 200
//! Delta clients that was 276 MB of the control plane's heap (heaptrack) held for nothing
//! between pushes. Here each response is its own allocation, freed once written.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use http_body::Frame;
use prost::Message;
use tokio::sync::mpsc;
use tonic::Status;
use tonic::body::Body;
use tonic::codec::{DecodeBuf, Decoder, Streaming};
use tonic::codegen::{BoxFuture, Bytes, Service as TowerService, http};
use tonic::server::NamedService;
use tonic::transport::server::TcpConnectInfo;

use super::{Inner, RESPONSE_QUEUE, Service, StreamKind, delta, stream};

const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// The ADS gRPC service, for a tonic `Server`.
#[derive(Clone)]
pub struct AdsService {
    inner: Arc<Inner>,
    generated: AggregatedDiscoveryServiceServer<Service>,
}

impl AdsService {
    pub(super) fn new(inner: Arc<Inner>) -> Self {
        AdsService {
            generated: AggregatedDiscoveryServiceServer::new(Service {
                inner: inner.clone(),
            }),
            inner,
        }
    }
}

impl NamedService for AdsService {
    const NAME: &'static str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
}

impl TowerService<http::Request<Body>> for AdsService {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if req.uri().path() != DELTA_PATH {
            return self.generated.call(req);
        }
        let inner = self.inner.clone();
        Box::pin(async move { Ok(delta_stream(inner, req)) })
    }
}

/// Starts a Delta stream's task and answers with its response body.
fn delta_stream(inner: Arc<Inner>, req: http::Request<Body>) -> http::Response<Body> {
    if let Some(encoding) = req.headers().get("grpc-encoding")
        && encoding != "identity"
    {
        let status = Status::unimplemented(format!(
            "the ADS server does not support the request compression {encoding:?}"
        ));
        return status.into_http();
    }
    let peer = req
        .extensions()
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr);
    let (parts, body) = req.into_parts();
    let requests = Streaming::new_request(RequestDecoder, body, None, None);
    let (tx, rx) = mpsc::channel(RESPONSE_QUEUE);
    tokio::spawn(stream::run::<delta::Delta>(
        inner,
        StreamKind::Delta,
        peer,
        parts.extensions,
        requests,
        tx,
    ));
    let mut response = http::Response::new(Body::new(ResponseBody { rx, done: false }));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    response
}

struct RequestDecoder;

impl Decoder for RequestDecoder {
    type Item = DeltaDiscoveryRequest;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        DeltaDiscoveryRequest::decode(buf)
            .map(Some)
            .map_err(|e| Status::invalid_argument(format!("decoding a DeltaDiscoveryRequest: {e}")))
    }
}

/// The responses of one Delta stream as gRPC messages, then the status as trailers.
struct ResponseBody {
    rx: mpsc::Receiver<Result<DeltaDiscoveryResponse, Status>>,
    done: bool,
}

/// A gRPC message: uncompressed flag, length, the encoded response.
fn message(response: &DeltaDiscoveryResponse) -> Result<Bytes, Status> {
    let len = response.encoded_len();
    let header = u32::try_from(len)
        .map_err(|_| Status::internal(format!("a response of {len} bytes is too large")))?;
    let mut buf = Vec::with_capacity(5 + len);
    buf.push(0);
    buf.extend_from_slice(&header.to_be_bytes());
    response
        .encode(&mut buf)
        .map_err(|e| Status::internal(format!("encoding a response: {e}")))?;
    Ok(Bytes::from(buf))
}

fn trailers(status: &Status) -> Frame<Bytes> {
    let mut map = http::HeaderMap::new();
    if status.add_header(&mut map).is_err() {
        map.insert("grpc-status", http::HeaderValue::from_static("13"));
    }
    Frame::trailers(map)
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let frame = match std::task::ready!(self.rx.poll_recv(cx)) {
            Some(Ok(response)) => match message(&response) {
                Ok(bytes) => Frame::data(bytes),
                Err(status) => {
                    self.done = true;
                    trailers(&status)
                }
            },
            Some(Err(status)) => {
                self.done = true;
                trailers(&status)
            }
            None => {
                self.done = true;
                trailers(&Status::ok(""))
            }
        };
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}
