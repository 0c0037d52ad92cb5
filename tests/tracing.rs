//! Distributed tracing, Envoy against strait-proxy: a request through an ingress gateway to a
//! productpage-like app, which calls a reviews-like app, which calls a ratings-like app (each
//! behind its own sidecar; the apps pass the trace headers on, as Bookinfo's do) yields ONE
//! trace with every hop's spans, parent and child linked, exported over OTLP to a receiver in
//! this test: gRPC first (MeshConfig's `defaultProviders.tracing`, `defaultConfig.tracing.sampling:
//! 100`), then OTLP/HTTP (a Telemetry resource naming the other provider, with a custom tag).
//! Between them a mesh-wide Telemetry with `randomSamplingPercentage: 0` overrides the MeshConfig:
//! no span at all.
//!
//! Both data planes run side by side, each with its own control plane and receiver.

use strait_e2e as support;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use strait_telemetry::otlp::{self, ExportTraceServiceRequest, Span, SpanKind};
use strait_testsupport::{Backend, http_get, via_proxy};
use support::mesh::{DataPlane, Mesh, Proxy};

const COLLECTOR: &str = "opentelemetry-collector.observability.svc.cluster.local";

/// A span as the receiver got it: the resource's `service.name`, the transport, the span.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    grpc: bool,
    span: Span,
}

/// An OTLP receiver on loopback: OTLP/HTTP (`POST /v1/traces`, protobuf) and OTLP/gRPC
/// (`TraceService/Export`, h2c) on one port.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    async fn start(&self) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let me = me.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let me = me.clone();
                        async move { Ok::<_, Infallible>(me.export(req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        addr
    }

    async fn export(
        &self,
        req: Request<hyper::body::Incoming>,
    ) -> Response<http_body_util::combinators::BoxBody<Bytes, Infallible>> {
        let grpc = req.uri().path() == otlp::GRPC_PATH;
        let http = req.uri().path() == otlp::HTTP_PATH;
        let mut body = req.into_body().collect().await.unwrap().to_bytes();
        if grpc {
            assert!(
                body.len() >= 5 && body[0] == 0,
                "one uncompressed gRPC message"
            );
            body.advance(5);
        }
        if !(grpc || http) {
            return Response::builder()
                .status(404)
                .body(Full::new(Bytes::new()).boxed())
                .unwrap();
        }
        let export = ExportTraceServiceRequest::decode(body).expect("an OTLP export request");
        let mut spans = self.spans.lock().unwrap();
        for rs in export.resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(otlp::string_value)
                .unwrap_or_default()
                .to_string();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    spans.push(Received {
                        service: service.clone(),
                        grpc,
                        span,
                    });
                }
            }
        }
        if grpc {
            let trailers = {
                let mut t = hyper::HeaderMap::new();
                t.insert("grpc-status", "0".parse().unwrap());
                t
            };
            let frame = Bytes::from_static(&[0, 0, 0, 0, 0]);
            let body = http_body_util::StreamBody::new(futures_stream(frame, trailers));
            return Response::builder()
                .header("content-type", "application/grpc")
                .body(BodyExt::boxed(body))
                .unwrap();
        }
        Response::builder()
            .header("content-type", "application/x-protobuf")
            .body(Full::new(Bytes::new()).boxed())
            .unwrap()
    }

    fn all(&self) -> Vec<Received> {
        self.spans.lock().unwrap().clone()
    }

    /// The spans of the trace whose gateway span's URL ends with `path`, once there are `n` of
    /// them (Envoy flushes every 5 s).
    async fn trace(&self, path: &str, n: usize, plane: DataPlane) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let all = self.all();
            let trace_id = all
                .iter()
                .find(|r| {
                    r.span
                        .attribute("http.url")
                        .is_some_and(|u| u.ends_with(path))
                })
                .map(|r| r.span.trace_id.clone());
            let spans: Vec<Received> = match &trace_id {
                Some(id) => all.into_iter().filter(|r| &r.span.trace_id == id).collect(),
                None => Vec::new(),
            };
            if spans.len() >= n {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "{plane:?}: the trace of {path} has {} spans, not {n}: {:#?}",
                spans.len(),
                spans
                    .iter()
                    .map(|r| (&r.service, &r.span.name, r.span.kind))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A body of one data frame and trailers.
fn futures_stream(
    data: Bytes,
    trailers: hyper::HeaderMap,
) -> impl futures_core_stream::Stream<Item = Result<hyper::body::Frame<Bytes>, Infallible>> {
    futures_core_stream::iter([
        Ok(hyper::body::Frame::data(data)),
        Ok(hyper::body::Frame::trailers(trailers)),
    ])
}

mod futures_core_stream {
    pub use tokio_stream::{Stream, iter};
}

/// The trace headers an app passes on (Istio's list for Bookinfo).
const PROPAGATED: &[&str] = &[
    "x-request-id",
    "traceparent",
    "tracestate",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "b3",
];

/// An app that calls `next` (a URL) through its sidecar's HTTP proxy listener, passing the
/// trace headers on, and answers with what it got.
async fn forwarding_app(next: &'static str, sidecar: Arc<OnceLock<SocketAddr>>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let sidecar = sidecar.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let sidecar = sidecar.clone();
                        async move {
                            let headers: Vec<(String, String)> = PROPAGATED
                                .iter()
                                .filter_map(|h| {
                                    Some((
                                        h.to_string(),
                                        req.headers().get(*h)?.to_str().ok()?.to_string(),
                                    ))
                                })
                                .collect();
                            let headers: Vec<(&str, &str)> = headers
                                .iter()
                                .map(|(k, v)| (k.as_str(), v.as_str()))
                                .collect();
                            let url = format!("{next}{}", req.uri().path());
                            let proxy = *sidecar.get().expect("the app's sidecar is up");
                            let (status, body) = match via_proxy(proxy, &url, &headers).await {
                                Ok(r) => (r.status, r.body),
                                Err(e) => (502, e.to_string()),
                            };
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .status(status)
                                    .body(Full::new(Bytes::from(body)))
                                    .unwrap(),
                            )
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

const GATEWAY: &str = "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: bookinfo-gateway}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ['*']
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bookinfo}
spec:
  hosts: ['*']
  gateways: [bookinfo-gateway]
  http:
  - route:
    - destination: {host: productpage, port: {number: 9080}}
";

fn mesh_config(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("mesh.yaml");
    std::fs::write(
        &path,
        format!(
            "apiVersion: install.istio.io/v1alpha1
kind: IstioOperator
spec:
  meshConfig:
    enableTracing: true
    defaultProviders: {{tracing: [otel-grpc]}}
    defaultConfig:
      tracing: {{sampling: 100}}
    extensionProviders:
    - name: otel-grpc
      opentelemetry: {{service: {COLLECTOR}, port: 4317}}
    - name: otel-http
      opentelemetry:
        service: {COLLECTOR}
        port: 4318
        http: {{path: /v1/traces, timeout: 5s}}
"
        ),
    )
    .unwrap();
    path
}

/// A mesh-wide Telemetry (Istio's root namespace) with this tracing entry.
fn telemetry(tracing: &str) -> String {
    format!(
        "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: mesh-default, namespace: istio-system}}\nspec:\n  tracing:\n  - {tracing}\n"
    )
}

/// Waits until every proxy has the config with `marker`, then past Envoy's drain time (1 s), so
/// that no connection on an old filter chain is left.
async fn wait_config(proxies: &[&Proxy], marker: &str, plane: DataPlane) {
    let deadline = Instant::now() + Duration::from_secs(20);
    for p in proxies {
        while !p.config_dump().await.contains(marker) {
            assert!(
                Instant::now() < deadline,
                "{plane:?}: a proxy's config never got {marker:?}: {}",
                p.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
}

/// Every hop's span, in one chain from the gateway to ratings: the span kinds and services in
/// order, each span the parent of the next.
fn assert_one_chain(spans: &[Received], plane: DataPlane, grpc: bool, tag: Option<(&str, &str)>) {
    let by_id: BTreeMap<&[u8], &Received> = spans
        .iter()
        .map(|r| (r.span.span_id.as_slice(), r))
        .collect();
    let roots: Vec<&Received> = spans
        .iter()
        .filter(|r| r.span.parent_span_id.is_empty())
        .collect();
    let describe = || {
        spans
            .iter()
            .map(|r| {
                format!(
                    "{} {:?} {} {:?}",
                    r.service,
                    SpanKind::try_from(r.span.kind),
                    r.span.name,
                    r.span
                        .attributes
                        .iter()
                        .map(|a| (&a.key, otlp::string_value(a)))
                        .collect::<Vec<_>>()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(roots.len(), 1, "{plane:?}: one root span:\n{}", describe());
    let mut chain = vec![roots[0]];
    while let Some(child) = spans
        .iter()
        .find(|r| r.span.parent_span_id == chain.last().unwrap().span.span_id)
    {
        chain.push(child);
    }
    assert_eq!(
        chain.len(),
        spans.len(),
        "{plane:?}: every span is in one parent-child chain:\n{}",
        describe()
    );
    assert!(by_id.len() == spans.len(), "{plane:?}: span ids are unique");
    let shape: Vec<(&str, SpanKind)> = chain
        .iter()
        .map(|r| {
            (
                r.service.as_str(),
                SpanKind::try_from(r.span.kind).unwrap_or(SpanKind::Unspecified),
            )
        })
        .collect();
    assert_eq!(
        shape,
        [
            ("istio-ingressgateway.default", SpanKind::Server),
            ("istio-ingressgateway.default", SpanKind::Client),
            ("productpage.default", SpanKind::Server),
            ("productpage.default", SpanKind::Client),
            ("reviews.default", SpanKind::Server),
            ("reviews.default", SpanKind::Client),
            ("ratings.default", SpanKind::Server),
        ],
        "{plane:?}:\n{}",
        describe()
    );
    for r in spans {
        assert_eq!(
            r.grpc, grpc,
            "{plane:?}: exported over the provider's transport"
        );
        let span = &r.span;
        assert_eq!(
            span.attribute("http.status_code"),
            Some("200"),
            "{plane:?}: {}",
            describe()
        );
        if let Some((k, v)) = tag {
            assert_eq!(
                span.attribute(k),
                Some(v),
                "{plane:?}: custom tag {k}: {}",
                describe()
            );
        }
    }
    // Istio's tags on the connection managers' spans; the upstream cluster on the client spans.
    for r in chain.iter().filter(|r| !r.span.name.starts_with("router ")) {
        let service = r.service.split('.').next().unwrap();
        assert_eq!(
            r.span.attribute("istio.canonical_service"),
            Some(service),
            "{plane:?}: {}",
            describe()
        );
        assert_eq!(r.span.attribute("istio.namespace"), Some("default"));
    }
    // A header tag: the client's header up to productpage's app, which does not pass it on.
    if tag.is_some() {
        let users: Vec<_> = chain.iter().map(|r| r.span.attribute("user")).collect();
        let mut expected = vec![Some("alice"); 3];
        expected.extend([Some("unknown"); 4]);
        assert_eq!(users, expected, "{plane:?}: {}", describe());
    }
    assert_eq!(
        chain[3].span.attribute("upstream_cluster"),
        Some("outbound|9080||reviews.default.svc.cluster.local"),
        "{plane:?}: {}",
        describe()
    );
}

async fn scenario(plane: DataPlane) {
    let started = Instant::now();
    let receiver = Receiver::default();
    let collector = receiver.start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = mesh_config(dir.path());
    let mut mesh = Mesh::with_flags(&["--mesh-config", config.to_str().unwrap()]);
    // A listener updated in place keeps its old connections (pooled by the proxy before it,
    // with the old tracing) until its drain time has passed.
    mesh.envoy_args = ["--drain-time-s", "1", "--drain-strategy", "immediate"]
        .map(String::from)
        .to_vec();
    mesh.apply_yaml(
        "collector.yaml",
        &format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: observability}}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: opentelemetry-collector, namespace: observability}}\nspec:\n  selector: {{app: opentelemetry-collector}}\n  ports:\n  - {{name: grpc-otlp, port: 4317}}\n  - {{name: http-otlp, port: 4318}}\n---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: collector, namespace: observability}}\nspec:\n  address: {}\n  ports: {{grpc-otlp: {}, http-otlp: {}}}\n  labels: {{app: opentelemetry-collector}}\n",
            collector.ip(),
            collector.port(),
            collector.port()
        ),
    );
    for s in ["productpage", "reviews", "ratings"] {
        mesh.service(s, 9080, "http");
    }
    let ratings_app = Backend::http("ratings", "v1");
    let ratings = mesh
        .server_sidecar(plane, "ratings", "v1", 9080, "HTTP", ratings_app.addr())
        .await;
    let reviews_sidecar = Arc::new(OnceLock::new());
    let reviews_app = forwarding_app("http://ratings:9080", reviews_sidecar.clone()).await;
    let reviews = mesh
        .server_sidecar(plane, "reviews", "v1", 9080, "HTTP", reviews_app)
        .await;
    reviews_sidecar.set(reviews.http_proxy()).unwrap();
    let productpage_sidecar = Arc::new(OnceLock::new());
    let productpage_app = forwarding_app("http://reviews:9080", productpage_sidecar.clone()).await;
    let productpage = mesh
        .server_sidecar(plane, "productpage", "v1", 9080, "HTTP", productpage_app)
        .await;
    productpage_sidecar.set(productpage.http_proxy()).unwrap();
    mesh.apply_yaml("gateway.yaml", GATEWAY);
    let gw = mesh
        .gateway(
            plane,
            "istio-ingressgateway",
            "istio=ingressgateway",
            &[8080],
        )
        .await;
    let proxies = [&gw, &productpage, &reviews, &ratings];
    let get = |path: String| {
        let url = format!("http://{}:8080{path}", gw.ip);
        async move { http_get(&url, &[("x-user", "alice")]).await }
    };

    // 1. MeshConfig: the default provider (gRPC), 100%: one trace of every hop.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut n = 0;
    let path = loop {
        n += 1;
        let path = format!("/grpc/{n}");
        match get(path.clone()).await {
            Ok(r) if r.status == 200 && r.body.contains("\"service\":\"ratings\"") => break path,
            other => assert!(
                Instant::now() < deadline,
                "{plane:?}: the chain does not answer: {other:?}\n{}",
                gw.log()
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let spans = receiver.trace(&path, 7, plane).await;
    assert_one_chain(&spans, plane, true, None);

    // 2. A mesh-wide Telemetry overrides the MeshConfig's sampling with 0%: no spans.
    mesh.apply_yaml(
        "telemetry.yaml",
        &telemetry("randomSamplingPercentage: 0\n    customTags: {phase: {literal: {value: zero-percent}}}"),
    );
    wait_config(&proxies, "zero-percent", plane).await;
    let unsampled_at = Instant::now();
    for i in 0..3 {
        let r = get(format!("/unsampled/{i}")).await.unwrap();
        assert_eq!(r.status, 200, "{plane:?}: {r:?}");
    }

    // 3. The Telemetry names the OTLP/HTTP provider, 100%, and a custom tag (Istio's
    //    OpenTelemetry task).
    mesh.apply_yaml(
        "telemetry.yaml",
        &telemetry("providers: [{name: otel-http}]\n    randomSamplingPercentage: 100\n    customTags: {my-attribute: {literal: {value: default-value}}, user: {header: {name: x-user, defaultValue: unknown}}}"),
    );
    wait_config(&proxies, "default-value", plane).await;
    let r = get("/http/1".into()).await.unwrap();
    assert_eq!(r.status, 200, "{plane:?}: {r:?}");
    let spans = receiver.trace("/http/1", 7, plane).await;
    assert_one_chain(
        &spans,
        plane,
        false,
        Some(("my-attribute", "default-value")),
    );

    // Nothing of step 2 ever came, past both planes' flush intervals (Envoy's is 5 s).
    let quiet = Duration::from_secs(6).saturating_sub(unsampled_at.elapsed());
    tokio::time::sleep(quiet).await;
    let leaked: Vec<_> = receiver
        .all()
        .into_iter()
        .filter(|r| {
            r.span
                .attribute("http.url")
                .is_some_and(|u| u.contains("/unsampled/"))
        })
        .collect();
    assert!(
        leaked.is_empty(),
        "{plane:?}: 0% sampled {} spans",
        leaked.len()
    );
    eprintln!("{plane:?}: tracing scenario in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_trace_through_every_hop_on_both_data_planes() {
    tokio::join!(scenario(DataPlane::Envoy), scenario(DataPlane::Strait));
}
