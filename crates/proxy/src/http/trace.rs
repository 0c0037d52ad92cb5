//! A request's span, when its connection manager has `tracing`: the trace context it came with
//! (W3C `traceparent`, else B3's headers, else B3's single `b3`), the sampling decision (the
//! caller's when it made one, as Envoy; else `random_sampling`), the context passed upstream
//! (`traceparent`, and the B3 headers in the form they came in), and, for a sampled request,
//! the span recorded when the response ends: a server span on inbound listeners, a client span
//! on outbound ones; with `spawn_upstream_span` (gateways) a server span with a client span per
//! upstream request under it. Tags are Envoy's (`http.url`, `http.method`, `http.status_code`,
//! `response_flags`, `upstream_cluster`, `peer.address`, `guid:x-request-id`, ...) and the
//! config's `custom_tags` (Istio's `istio.*` tags and the Telemetry resource's).
//!
//! Without `tracing` none of this runs: the headers pass through as they came.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use hyper::HeaderMap;
use hyper::header::HeaderValue;
use hyper::{Request, Response};
use strait_telemetry::otlp::{self, KeyValue, SpanKind};
use strait_telemetry::trace_context::{self, Incoming, Parent};

use super::{Body, LocalReply, UpstreamInfo};
use crate::config::tracer::{Tag, Tracing};

const TRACEPARENT: &str = "traceparent";
const B3: &str = "b3";
const B3_TRACE_ID: &str = "x-b3-traceid";
const B3_SPAN_ID: &str = "x-b3-spanid";
const B3_PARENT_SPAN_ID: &str = "x-b3-parentspanid";
const B3_SAMPLED: &str = "x-b3-sampled";
const B3_FLAGS: &str = "x-b3-flags";

/// A sampled request's span, from its request to its response's end.
pub(super) struct Active {
    config: Arc<Tracing>,
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent: Option<[u8; 8]>,
    /// The upstream request's span (`spawn_upstream_span`).
    upstream_span: Option<[u8; 8]>,
    trace_state: String,
    name: String,
    kind: SpanKind,
    start: u64,
    attributes: Vec<KeyValue>,
    /// The custom tags' values (also on the upstream span).
    custom: Vec<KeyValue>,
    upstream: Option<(String, Option<String>)>,
    status: u16,
    flags: &'static str,
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn random_id<const N: usize>() -> [u8; N] {
    loop {
        let mut id = [0u8; N];
        for chunk in id.chunks_mut(8) {
            let r = fastrand::u64(..).to_be_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
        if id != [0; N] {
            return id;
        }
    }
}

/// The trace context `headers` carry.
fn incoming(headers: &HeaderMap) -> Incoming {
    if let Some(i) = headers
        .get(TRACEPARENT)
        .and_then(|v| trace_context::parse_traceparent(v.as_bytes()))
    {
        return i;
    }
    let get = |name: &str| headers.get(name).map(HeaderValue::as_bytes);
    trace_context::parse_b3(
        get(B3_TRACE_ID),
        get(B3_SPAN_ID),
        get(B3_SAMPLED),
        get(B3_FLAGS),
    )
    .or_else(|| get(B3).and_then(trace_context::parse_b3_single))
    .unwrap_or_default()
}

fn set(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

/// Begins a request's trace: reads and rewrites its trace headers, and returns its span when
/// the request is sampled.
pub(super) fn begin<B>(
    config: &Arc<Tracing>,
    inbound: bool,
    peer: SocketAddr,
    req: &mut Request<B>,
) -> Option<Box<Active>> {
    let start = now_nanos();
    let came = incoming(req.headers());
    let sampled = came
        .sampled
        .unwrap_or_else(|| fastrand::f64() * 100.0 < config.random_sampling);
    let trace_id = came.parent.map_or_else(random_id, |p| p.trace_id);
    let span_id: [u8; 8] = random_id();
    let upstream_span = config.spawn_upstream_span.then(random_id::<8>);
    let next = upstream_span.unwrap_or(span_id);
    let b3_multi = req.headers().contains_key(B3_TRACE_ID);
    let b3_single = req.headers().contains_key(B3);
    let headers = req.headers_mut();
    set(
        headers,
        TRACEPARENT,
        &trace_context::traceparent(&trace_id, &next, sampled),
    );
    if b3_multi {
        set(headers, B3_TRACE_ID, &trace_context::hex(&trace_id));
        set(headers, B3_SPAN_ID, &trace_context::hex(&next));
        match came.parent {
            Some(Parent { span_id, .. }) => {
                set(headers, B3_PARENT_SPAN_ID, &trace_context::hex(&span_id))
            }
            None => drop(headers.remove(B3_PARENT_SPAN_ID)),
        }
        set(headers, B3_SAMPLED, if sampled { "1" } else { "0" });
    }
    if b3_single {
        set(
            headers,
            B3,
            &trace_context::b3_single(&trace_id, &next, sampled),
        );
    }
    if !sampled {
        return None;
    }
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| header("host"))
        .unwrap_or_default();
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let mut url = format!("http://{host}{path}");
    if url.len() > config.max_path_tag_length {
        let mut cut = config.max_path_tag_length;
        while !url.is_char_boundary(cut) {
            cut -= 1;
        }
        url.truncate(cut);
    }
    let protocol = match req.version() {
        hyper::Version::HTTP_10 => "HTTP/1.0",
        hyper::Version::HTTP_11 => "HTTP/1.1",
        hyper::Version::HTTP_2 => "HTTP/2",
        _ => "HTTP/3",
    };
    let mut attributes = vec![
        otlp::string("component", "proxy"),
        otlp::string("http.url", url),
        otlp::string("http.method", req.method().as_str()),
        otlp::string("http.protocol", protocol),
        otlp::string(
            "downstream_cluster",
            header("x-envoy-downstream-service-cluster").unwrap_or_else(|| "-".into()),
        ),
        otlp::string("peer.address", peer.ip().to_string()),
    ];
    if let Some(ua) = header("user-agent") {
        attributes.push(otlp::string("user_agent", ua));
    }
    if let Some(id) = header("x-request-id") {
        attributes.push(otlp::string("guid:x-request-id", id));
    }
    let mut custom = Vec::with_capacity(config.tags.len());
    for (tag, value) in &config.tags {
        let value = match value {
            Tag::Value(v) => Some(v.clone()),
            Tag::Header { name, default } => {
                header(name).or_else(|| (!default.is_empty()).then(|| default.clone()))
            }
        };
        if let Some(v) = value {
            custom.push(otlp::string(tag.as_str(), v));
        }
    }
    let trace_state = header("tracestate").unwrap_or_default();
    Some(Box::new(Active {
        config: config.clone(),
        trace_id,
        span_id,
        parent: came.parent.map(|p| p.span_id),
        upstream_span,
        trace_state,
        name: if inbound {
            "ingress".to_string()
        } else {
            format!("egress {host}")
        },
        kind: if inbound || upstream_span.is_some() {
            SpanKind::Server
        } else {
            SpanKind::Client
        },
        start,
        attributes,
        custom,
        upstream: None,
        status: 0,
        flags: "-",
    }))
}

impl Active {
    /// What the response says: its status, flags and where it came from.
    pub(super) fn response(&mut self, resp: &Response<Body>) {
        let ext = resp.extensions();
        self.status = resp.status().as_u16();
        self.flags = ext.get::<LocalReply>().map_or("-", |l| l.flags);
        self.upstream = ext
            .get::<UpstreamInfo>()
            .and_then(|u| Some((u.cluster.clone()?, u.host.clone())));
    }

    /// Ends the span(s) and queues them for export.
    pub(super) fn end(self, shared: &crate::Shared, received: u64, sent: u64) {
        let end = now_nanos();
        let Active {
            config,
            trace_id,
            span_id,
            parent,
            upstream_span,
            trace_state,
            name,
            kind,
            start,
            mut attributes,
            custom,
            upstream,
            status,
            flags,
        } = self;
        let error = status >= 500 || status == 0;
        let mut common = vec![
            otlp::string("http.status_code", status.to_string()),
            otlp::string("response_flags", flags),
        ];
        if let Some((cluster, host)) = &upstream {
            common.push(otlp::string("upstream_cluster", cluster.as_str()));
            common.push(otlp::string("upstream_cluster.name", cluster.as_str()));
            if let Some(h) = host {
                common.push(otlp::string("upstream_address", h.as_str()));
            }
        }
        if error {
            common.push(otlp::string("error", "true"));
        }
        let span_status = Some(otlp::Status {
            message: String::new(),
            code: if error { 2 } else { 0 },
        });
        attributes.extend(custom.iter().cloned());
        attributes.extend(common.iter().cloned());
        attributes.push(otlp::string("request_size", received.to_string()));
        attributes.push(otlp::string("response_size", sent.to_string()));
        if let (Some(up), Some((cluster, _))) = (upstream_span, &upstream) {
            let mut up_attributes = vec![otlp::string("component", "proxy")];
            up_attributes.extend(custom);
            up_attributes.extend(common);
            shared.spans.push(
                config.exporter.clone(),
                otlp::Span {
                    trace_id: trace_id.to_vec(),
                    span_id: up.to_vec(),
                    trace_state: trace_state.clone(),
                    parent_span_id: span_id.to_vec(),
                    name: format!("router {cluster} egress"),
                    kind: SpanKind::Client as i32,
                    start_time_unix_nano: start,
                    end_time_unix_nano: end,
                    attributes: up_attributes,
                    status: span_status.clone(),
                },
            );
        }
        shared.spans.push(
            config.exporter.clone(),
            otlp::Span {
                trace_id: trace_id.to_vec(),
                span_id: span_id.to_vec(),
                trace_state,
                parent_span_id: parent.map(|p| p.to_vec()).unwrap_or_default(),
                name,
                kind: kind as i32,
                start_time_unix_nano: start,
                end_time_unix_nano: end,
                attributes,
                status: span_status,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tracer::{Exporter, Transport};

    fn config(random_sampling: f64, spawn_upstream_span: bool) -> Arc<Tracing> {
        Arc::new(Tracing {
            random_sampling,
            spawn_upstream_span,
            max_path_tag_length: 256,
            tags: vec![(
                "user".into(),
                Tag::Header {
                    name: "x-user".into(),
                    default: "unknown".into(),
                },
            )],
            exporter: Arc::new(Exporter {
                service_name: "a.default".into(),
                cluster: "c".into(),
                authority: "c".into(),
                transport: Transport::Grpc,
                headers: Vec::new(),
                timeout: std::time::Duration::from_secs(1),
            }),
        })
    }

    fn request(headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().uri("/p").header("host", "reviews:9080");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    const PEER: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 1);
    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_caller_s_context_is_continued_and_its_decision_honoured() {
        // Sampled by the caller, though this proxy samples nothing itself.
        let mut req = request(&[("traceparent", PARENT), ("tracestate", "k=v")]);
        let span = begin(&config(0.0, false), false, PEER, &mut req).expect("sampled");
        let sent = req.headers()["traceparent"].to_str().unwrap();
        assert!(
            sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{sent}"
        );
        assert!(sent.ends_with("-01"));
        assert_eq!(&sent[36..52], trace_context::hex(&span.span_id));
        assert_eq!(
            span.parent.map(|p| trace_context::hex(&p)).as_deref(),
            Some("00f067aa0ba902b7")
        );
        assert_eq!(
            (span.kind, span.name.as_str()),
            (SpanKind::Client, "egress reviews:9080")
        );
        assert_eq!(span.trace_state, "k=v");
        assert_eq!(otlp::string_value(&span.custom[0]), Some("unknown"));
        // Not sampled by the caller, though this proxy samples everything: passed on, no span.
        let mut req = request(&[("traceparent", &PARENT.replace("-01", "-00"))]);
        assert!(begin(&config(100.0, false), true, PEER, &mut req).is_none());
        assert!(
            req.headers()["traceparent"]
                .to_str()
                .unwrap()
                .ends_with("-00")
        );
    }

    #[test]
    fn b3_headers_are_read_and_rewritten_in_the_form_they_came() {
        let mut req = request(&[
            ("x-b3-traceid", "463ac35c9f6413ad"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-sampled", "1"),
        ]);
        let span = begin(&config(0.0, true), true, PEER, &mut req).expect("sampled");
        let h = |n: &str| req.headers()[n].to_str().unwrap().to_string();
        assert_eq!(h("x-b3-traceid"), "0000000000000000463ac35c9f6413ad");
        assert_eq!(h("x-b3-parentspanid"), "a2fb4a1d1a96d312");
        // With spawn_upstream_span the next hop's parent is the upstream span.
        let up = trace_context::hex(&span.upstream_span.unwrap());
        assert_eq!(h("x-b3-spanid"), up);
        assert!(h("traceparent").contains(&up));
        assert_eq!(span.kind, SpanKind::Server);
        assert!(!req.headers().contains_key("b3"));
        let mut req = request(&[("b3", "0")]);
        assert!(begin(&config(100.0, false), true, PEER, &mut req).is_none());
        assert!(req.headers()["b3"].to_str().unwrap().ends_with("-0"));
    }

    #[test]
    fn random_sampling_decides_without_a_caller_s_decision() {
        let mut req = request(&[]);
        assert!(begin(&config(100.0, false), true, PEER, &mut req).is_some());
        assert!(
            req.headers()["traceparent"]
                .to_str()
                .unwrap()
                .ends_with("-01")
        );
        let mut req = request(&[]);
        assert!(begin(&config(0.0, false), true, PEER, &mut req).is_none());
        assert!(
            req.headers()["traceparent"]
                .to_str()
                .unwrap()
                .ends_with("-00")
        );
    }
}
