//! The span exporter: finished spans go into a bounded queue (a span that finds it full is
//! dropped and counted, never waited for), and one task sends them in batches, over OTLP/HTTP
//! (protobuf) or OTLP/gRPC, to the collector's cluster of the current config, as Envoy's
//! OpenTelemetry tracer does. A batch goes when it holds [`BATCH`] spans or its first span has
//! waited [`FLUSH_INTERVAL`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::Request;
use prost::Message;
use strait_telemetry::otlp;
use tokio::sync::mpsc;

use crate::Shared;
use crate::body::RequestBody;
use crate::config::tracer::{Exporter, Transport};
use crate::upstream;

/// Spans waiting to be sent, at most.
const QUEUE: usize = 4096;
/// Spans per export request, at most.
const BATCH: usize = 512;
/// How long a span waits for others before its batch goes.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Export answers are read up to this size.
const MAX_ANSWER: usize = 64 * 1024;

pub(crate) type Queued = (Arc<Exporter>, otlp::Span);

/// The queue's sending side, and its counters.
pub(crate) struct Spans {
    tx: mpsc::Sender<Queued>,
    rx: Mutex<Option<mpsc::Receiver<Queued>>>,
    pub(crate) dropped: AtomicU64,
    pub(crate) sent: AtomicU64,
    pub(crate) failed: AtomicU64,
}

impl Default for Spans {
    fn default() -> Spans {
        let (tx, rx) = mpsc::channel(QUEUE);
        Spans {
            tx,
            rx: Mutex::new(Some(rx)),
            dropped: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }
}

impl Spans {
    /// Queues a finished span; drops it (counted) when the queue is full.
    pub(crate) fn push(&self, exporter: Arc<Exporter>, span: otlp::Span) {
        if self.tx.try_send((exporter, span)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The Prometheus text of the counters (Envoy's OpenTelemetry tracer's names where it has
    /// them).
    pub(crate) fn prometheus(&self, out: &mut String) {
        use std::fmt::Write;
        for (name, n) in [
            ("envoy_tracing_opentelemetry_spans_sent", &self.sent),
            ("strait_proxy_spans_dropped_total", &self.dropped),
            ("strait_proxy_spans_export_failed_total", &self.failed),
        ] {
            let _ = writeln!(
                out,
                "# TYPE {name} counter\n{name} {}",
                n.load(Ordering::Relaxed)
            );
        }
    }
}

/// Sends the queued spans until the proxy stops.
pub(crate) async fn run(shared: Arc<Shared>) {
    let Some(mut rx) = shared
        .spans
        .rx
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    else {
        return;
    };
    let mut batch: Vec<Queued> = Vec::with_capacity(BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        let deadline = tokio::time::Instant::now() + FLUSH_INTERVAL;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(s)) => batch.push(s),
                Ok(None) | Err(_) => break,
            }
        }
        let mut by_exporter: HashMap<Arc<Exporter>, Vec<otlp::Span>> = HashMap::new();
        for (e, s) in batch.drain(..) {
            by_exporter.entry(e).or_default().push(s);
        }
        for (exporter, spans) in by_exporter {
            let n = spans.len() as u64;
            match export(&shared, &exporter, spans).await {
                Ok(()) => shared.spans.sent.fetch_add(n, Ordering::Relaxed),
                Err(why) => {
                    tracing::debug!(cluster = %exporter.cluster, spans = n, "span export failed: {why}");
                    shared.spans.failed.fetch_add(n, Ordering::Relaxed)
                }
            };
        }
    }
}

fn request(exporter: &Exporter, spans: Vec<otlp::Span>) -> otlp::ExportTraceServiceRequest {
    otlp::ExportTraceServiceRequest {
        resource_spans: vec![otlp::ResourceSpans {
            resource: Some(otlp::Resource {
                attributes: vec![otlp::string("service.name", &exporter.service_name)],
            }),
            scope_spans: vec![otlp::ScopeSpans {
                scope: Some(otlp::InstrumentationScope {
                    name: "strait-proxy".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                spans,
            }],
        }],
    }
}

async fn export(
    shared: &Shared,
    exporter: &Exporter,
    spans: Vec<otlp::Span>,
) -> Result<(), String> {
    let message = request(exporter, spans).encode_to_vec();
    let builder = Request::builder()
        .method("POST")
        .header(hyper::header::HOST, &exporter.authority);
    let (builder, body) = match &exporter.transport {
        Transport::Http { path } => (
            builder
                .uri(path.as_str())
                .header(hyper::header::CONTENT_TYPE, "application/x-protobuf"),
            Bytes::from(message),
        ),
        Transport::Grpc => {
            let mut frame = BytesMut::with_capacity(message.len() + 5);
            frame.put_u8(0);
            frame.put_u32(u32::try_from(message.len()).map_err(|_| "a batch over 4 GiB")?);
            frame.put_slice(&message);
            (
                builder
                    .uri(otlp::GRPC_PATH)
                    .header(hyper::header::CONTENT_TYPE, "application/grpc")
                    .header(hyper::header::TE, "trailers"),
                frame.freeze(),
            )
        }
    };
    let mut builder = builder;
    for (name, value) in &exporter.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    let req = builder
        .body(RequestBody::complete(vec![body], None))
        .map_err(|e| e.to_string())?;
    let cluster = shared
        .config
        .load()
        .clusters
        .get(&exporter.cluster)
        .cloned()
        .ok_or_else(|| {
            format!(
                "the collector's cluster {} is not in the config",
                exporter.cluster
            )
        })?;
    let lb = upstream::balancer(&cluster).ok_or_else(|| {
        format!(
            "the collector's cluster {} has no endpoint",
            exporter.cluster
        )
    })?;
    let picked = lb.pick(None, "", None).ok_or_else(|| {
        format!(
            "the collector's cluster {} has no endpoint",
            exporter.cluster
        )
    })?;
    let answer = tokio::time::timeout(exporter.timeout, async {
        let resp = lb.send(&picked, req).await.map_err(|e| format!("{e:?}"))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let collected = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        // A trailers-only gRPC answer has its status in the headers.
        let trailers = collected.trailers().cloned().or(Some(headers));
        Ok::<_, String>((status, trailers))
    })
    .await
    .map_err(|_| format!("no answer within {:?}", exporter.timeout))??;
    let (status, trailers) = answer;
    if !status.is_success() {
        return Err(format!("the collector answered {status}"));
    }
    if exporter.transport == Transport::Grpc {
        let code = trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if code != "0" {
            return Err(format!("the collector answered grpc-status {code:?}"));
        }
    }
    Ok(())
}
