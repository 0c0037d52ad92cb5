//! The embedded trace store: the spans the proxies export to the control plane over OTLP
//! (`otlp.rs`), kept in memory, bounded (spans, bytes and traces; the oldest trace, by when its
//! first span came, is dropped first), for the dashboard's trace list and waterfall.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde::Serialize;
use strait_telemetry::otlp::{self, ExportTraceServiceRequest, KeyValue, any_value};

/// How much the store keeps.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Spans over all traces.
    pub spans: usize,
    /// Approximate bytes over all spans (their strings and a fixed overhead each).
    pub bytes: usize,
    /// Spans of one trace; more are dropped (and counted).
    pub spans_per_trace: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            spans: 50_000,
            bytes: 64 * 1024 * 1024,
            spans_per_trace: 1_000,
        }
    }
}

/// Attributes kept per span, and the longest value kept.
const MAX_ATTRIBUTES: usize = 64;
const MAX_VALUE: usize = 1024;
const SPAN_OVERHEAD: usize = 160;

/// A span as the dashboard shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StoredSpan {
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    /// `server`, `client`, `internal`, `producer`, `consumer` or `unspecified`.
    pub kind: &'static str,
    /// The resource's `service.name` (Istio's `CANONICAL_SERVICE.NAMESPACE`).
    pub service: String,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    /// The span's status is error, or it says `error=true`, or its HTTP status is 5xx.
    pub error: bool,
    pub attributes: Vec<(String, String)>,
}

impl StoredSpan {
    fn size(&self) -> usize {
        SPAN_OVERHEAD
            + self.name.len()
            + self.service.len()
            + self
                .attributes
                .iter()
                .map(|(k, v)| k.len() + v.len() + 16)
                .sum::<usize>()
    }
}

struct Trace {
    spans: Vec<StoredSpan>,
    bytes: usize,
}

/// One trace in the list.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TraceSummary {
    pub trace_id: String,
    /// The root span's service (the earliest span without a parent in the trace, else the
    /// earliest span).
    pub root_service: String,
    pub root_name: String,
    pub start_unix_ms: f64,
    pub duration_ms: f64,
    pub error: bool,
    pub span_count: usize,
    pub services: Vec<String>,
}

/// What a list asks for.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// Traces with a span of this service.
    pub service: Option<String>,
    /// Only traces with (true) or without (false) an error.
    pub error: Option<bool>,
    pub min_duration_ms: Option<f64>,
    pub limit: usize,
}

#[derive(Default)]
struct Inner {
    traces: HashMap<String, Trace>,
    /// Trace ids by when their first span came.
    order: VecDeque<String>,
    spans: usize,
    bytes: usize,
    dropped_spans: u64,
    received_spans: u64,
}

/// The store.
pub struct TraceStore {
    limits: Limits,
    inner: Mutex<Inner>,
}

impl TraceStore {
    pub fn new(limits: Limits) -> TraceStore {
        TraceStore {
            limits,
            inner: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds the spans of one OTLP export request; the number of spans it held.
    pub fn add(&self, request: ExportTraceServiceRequest) -> usize {
        let mut spans = Vec::new();
        let mut held = 0;
        for rs in request.resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .map(value_text)
                .unwrap_or_else(|| "unknown".to_string());
            for ss in rs.scope_spans {
                for span in ss.spans {
                    held += 1;
                    if span.trace_id.iter().all(|b| *b == 0) {
                        continue;
                    }
                    spans.push((hex(&span.trace_id), stored(span, &service)));
                }
            }
        }
        let mut inner = self.lock();
        inner.received_spans += held as u64;
        for (trace_id, span) in spans {
            self.insert(&mut inner, trace_id, span);
        }
        held
    }

    fn insert(&self, inner: &mut Inner, trace_id: String, span: StoredSpan) {
        let size = span.size();
        if size > self.limits.bytes {
            inner.dropped_spans += 1;
            return;
        }
        if let Some(t) = inner.traces.get(&trace_id)
            && t.spans.len() >= self.limits.spans_per_trace
        {
            inner.dropped_spans += 1;
            return;
        }
        // Room first: the oldest traces go (never the one this span joins, unless it is the
        // only one left).
        while inner.spans + 1 > self.limits.spans || inner.bytes + size > self.limits.bytes {
            let Some(oldest) = inner.order.pop_front() else {
                break;
            };
            if let Some(t) = inner.traces.remove(&oldest) {
                inner.spans -= t.spans.len();
                inner.bytes -= t.bytes;
                inner.dropped_spans += t.spans.len() as u64;
            }
        }
        inner.spans += 1;
        inner.bytes += size;
        match inner.traces.get_mut(&trace_id) {
            Some(t) => {
                t.spans.push(span);
                t.bytes += size;
            }
            None => {
                inner.order.push_back(trace_id.clone());
                inner.traces.insert(
                    trace_id,
                    Trace {
                        spans: vec![span],
                        bytes: size,
                    },
                );
            }
        }
    }

    /// The traces that match, newest first.
    pub fn list(&self, q: &Query) -> Vec<TraceSummary> {
        let inner = self.lock();
        let mut out: Vec<TraceSummary> = inner
            .order
            .iter()
            .rev()
            .filter_map(|id| Some(summary(id, inner.traces.get(id)?)))
            .filter(|s| {
                q.service
                    .as_ref()
                    .is_none_or(|svc| s.services.iter().any(|x| x == svc))
                    && q.error.is_none_or(|e| s.error == e)
                    && q.min_duration_ms.is_none_or(|d| s.duration_ms >= d)
            })
            .collect();
        // Newest first by start time (arrival order is only close to it).
        out.sort_by(|a, b| b.start_unix_ms.total_cmp(&a.start_unix_ms));
        out.truncate(q.limit.max(1));
        out
    }

    /// One trace's spans, by start time.
    pub fn get(&self, trace_id: &str) -> Option<(TraceSummary, Vec<StoredSpan>)> {
        let id = trace_id.to_ascii_lowercase();
        let inner = self.lock();
        let t = inner.traces.get(&id)?;
        let mut spans = t.spans.clone();
        spans.sort_by_key(|s| (s.start_unix_nano, s.end_unix_nano));
        Some((summary(&id, t), spans))
    }

    /// (traces, spans, bytes, dropped spans, received spans).
    pub fn stats(&self) -> (usize, usize, usize, u64, u64) {
        let i = self.lock();
        (
            i.traces.len(),
            i.spans,
            i.bytes,
            i.dropped_spans,
            i.received_spans,
        )
    }
}

fn summary(id: &str, t: &Trace) -> TraceSummary {
    let start = t.spans.iter().map(|s| s.start_unix_nano).min().unwrap_or(0);
    let end = t
        .spans
        .iter()
        .map(|s| s.end_unix_nano)
        .max()
        .unwrap_or(start);
    let ids: std::collections::HashSet<&str> = t.spans.iter().map(|s| s.span_id.as_str()).collect();
    let root = t
        .spans
        .iter()
        .filter(|s| s.parent_span_id.is_empty() || !ids.contains(s.parent_span_id.as_str()))
        .min_by_key(|s| s.start_unix_nano)
        .or_else(|| t.spans.iter().min_by_key(|s| s.start_unix_nano));
    let mut services: Vec<String> = t.spans.iter().map(|s| s.service.clone()).collect();
    services.sort();
    services.dedup();
    TraceSummary {
        trace_id: id.to_string(),
        root_service: root.map(|s| s.service.clone()).unwrap_or_default(),
        root_name: root.map(|s| s.name.clone()).unwrap_or_default(),
        start_unix_ms: start as f64 / 1e6,
        duration_ms: end.saturating_sub(start) as f64 / 1e6,
        error: t.spans.iter().any(|s| s.error),
        span_count: t.spans.len(),
        services,
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn value_text(kv: &KeyValue) -> String {
    let text = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(_) => "(complex value)".to_string(),
        None => String::new(),
    };
    truncate(text)
}

fn truncate(mut s: String) -> String {
    if s.len() > MAX_VALUE {
        let mut cut = MAX_VALUE;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

fn stored(span: otlp::Span, service: &str) -> StoredSpan {
    let attributes: Vec<(String, String)> = span
        .attributes
        .iter()
        .take(MAX_ATTRIBUTES)
        .map(|kv| (truncate(kv.key.clone()), value_text(kv)))
        .collect();
    let attr = |k: &str| {
        attributes
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    let error = span.status.as_ref().is_some_and(|s| s.code == 2)
        || attr("error") == Some("true")
        || attr("http.status_code").is_some_and(|c| c.starts_with('5'));
    let kind = match otlp::SpanKind::try_from(span.kind) {
        Ok(otlp::SpanKind::Server) => "server",
        Ok(otlp::SpanKind::Client) => "client",
        Ok(otlp::SpanKind::Internal) => "internal",
        Ok(otlp::SpanKind::Producer) => "producer",
        Ok(otlp::SpanKind::Consumer) => "consumer",
        _ => "unspecified",
    };
    StoredSpan {
        span_id: hex(&span.span_id),
        parent_span_id: hex(&span.parent_span_id),
        name: truncate(span.name),
        kind,
        service: truncate(service.to_string()),
        start_unix_nano: span.start_time_unix_nano,
        end_unix_nano: span.end_time_unix_nano.max(span.start_time_unix_nano),
        error,
        attributes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strait_telemetry::otlp::{Resource, ResourceSpans, ScopeSpans, Span, SpanKind, Status};

    fn span(trace: u8, id: u8, parent: u8, start: u64, end: u64, code: &str) -> Span {
        Span {
            trace_id: vec![trace; 16],
            span_id: vec![id; 8],
            parent_span_id: if parent == 0 { vec![] } else { vec![parent; 8] },
            name: format!("span {id}"),
            kind: if id % 2 == 1 {
                SpanKind::Server as i32
            } else {
                SpanKind::Client as i32
            },
            start_time_unix_nano: start,
            end_time_unix_nano: end,
            attributes: vec![otlp::string("http.status_code", code)],
            status: Some(Status {
                message: String::new(),
                code: 0,
            }),
            ..Default::default()
        }
    }

    fn export(service: &str, spans: Vec<Span>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![otlp::string("service.name", service)],
                }),
                scope_spans: vec![ScopeSpans { scope: None, spans }],
            }],
        }
    }

    #[test]
    fn spans_of_several_exports_make_one_trace() {
        let store = TraceStore::new(Limits::default());
        store.add(export(
            "istio-ingressgateway.istio-system",
            vec![span(1, 1, 0, 1_000_000, 9_000_000, "200")],
        ));
        store.add(export(
            "productpage.default",
            vec![
                span(1, 3, 1, 2_000_000, 8_000_000, "200"),
                span(1, 4, 3, 3_000_000, 7_000_000, "503"),
            ],
        ));
        let list = store.list(&Query {
            limit: 10,
            ..Query::default()
        });
        assert_eq!(list.len(), 1);
        let t = &list[0];
        assert_eq!(t.trace_id, "01".repeat(16));
        assert_eq!(t.root_service, "istio-ingressgateway.istio-system");
        assert_eq!(t.span_count, 3);
        assert_eq!(t.duration_ms, 8.0);
        assert!(t.error, "a 503 span is an error");
        assert_eq!(
            t.services,
            ["istio-ingressgateway.istio-system", "productpage.default"]
        );
        let (_, spans) = store.get(&"01".repeat(16)).unwrap();
        assert_eq!(spans.len(), 3);
        assert_eq!(spans[1].parent_span_id, "01".repeat(8));
        assert_eq!(spans[1].kind, "server");
        assert_eq!(spans[2].kind, "client");
        // Filters.
        let q = |service: Option<&str>, error: Option<bool>| {
            store
                .list(&Query {
                    service: service.map(String::from),
                    error,
                    limit: 10,
                    min_duration_ms: None,
                })
                .len()
        };
        assert_eq!(q(Some("productpage.default"), None), 1);
        assert_eq!(q(Some("ratings.default"), None), 0);
        assert_eq!(q(None, Some(false)), 0);
    }

    #[test]
    fn the_store_is_bounded_and_drops_the_oldest_trace_first() {
        let store = TraceStore::new(Limits {
            spans: 10,
            bytes: usize::MAX,
            spans_per_trace: 4,
        });
        // Traces 1..=5, three spans each: 15 spans for a store of 10.
        for t in 1..=5u8 {
            store.add(export(
                "svc.default",
                (1..=3)
                    .map(|i| {
                        span(
                            t,
                            i,
                            0,
                            u64::from(t) * 1000 + u64::from(i),
                            u64::from(t) * 1000 + 10,
                            "200",
                        )
                    })
                    .collect(),
            ));
        }
        let (traces, spans, _, dropped, received) = store.stats();
        assert_eq!((traces, spans, dropped, received), (3, 9, 6, 15));
        let kept: Vec<String> = store
            .list(&Query {
                limit: 100,
                ..Query::default()
            })
            .into_iter()
            .map(|t| t.trace_id)
            .collect();
        assert_eq!(kept, ["05".repeat(16), "04".repeat(16), "03".repeat(16)]);
        assert!(store.get(&"01".repeat(16)).is_none());
        // A trace holds at most spans_per_trace spans.
        store.add(export(
            "svc.default",
            (4..=9)
                .map(|i| span(5, i, 1, 5000 + u64::from(i), 5010, "200"))
                .collect(),
        ));
        assert_eq!(store.get(&"05".repeat(16)).unwrap().1.len(), 4);
        // The byte bound too.
        let small = TraceStore::new(Limits {
            spans: 1000,
            bytes: 2 * (SPAN_OVERHEAD + 200),
            spans_per_trace: 1000,
        });
        for t in 1..=4u8 {
            small.add(export("s", vec![span(t, 1, 0, u64::from(t), 10, "200")]));
        }
        let (traces, _, bytes, dropped, _) = small.stats();
        assert!(bytes <= 2 * (SPAN_OVERHEAD + 200), "{traces} {bytes}");
        assert!(
            dropped >= 1 && traces < 4,
            "{traces} traces, {dropped} dropped"
        );
        assert!(
            small.get(&"01".repeat(16)).is_none(),
            "the oldest went first"
        );
        assert!(small.get(&"04".repeat(16)).is_some(), "the newest stays");
    }

    #[test]
    fn long_values_are_cut_and_unset_trace_ids_skipped() {
        let store = TraceStore::new(Limits::default());
        let mut s = span(7, 1, 0, 1, 2, "200");
        s.attributes.push(otlp::string("big", "x".repeat(5000)));
        let mut zero = span(0, 1, 0, 1, 2, "200");
        zero.trace_id = vec![0; 16];
        assert_eq!(store.add(export("a", vec![s, zero])), 2);
        let (_, spans) = store.get(&"07".repeat(16)).unwrap();
        let big = &spans[0]
            .attributes
            .iter()
            .find(|(k, _)| k == "big")
            .unwrap()
            .1;
        assert!(big.len() <= MAX_VALUE + 3);
        assert_eq!(store.stats().0, 1);
    }
}
