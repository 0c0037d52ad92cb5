//! The series of Istio's standard metrics, and their Prometheus text format.
//!
//! A label set is interned once: [`Metrics::edge`] (a lock and allocations) gives an
//! `Arc<Edge>` that callers keep for their connection and peer; an [`Edge`] finds the series of
//! a response ([`ResponseKey`]) in a small copy-on-write list it loads without a lock, so
//! counting a request of a label set already seen takes neither a lock nor an allocation: a
//! few atomic additions.
//!
//! Cardinality is bounded: past [`Metrics::limit`] series, new label sets count in one
//! overflow series per reporter and protocol, whose labels are all `overflow`.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::labels::{EdgeLabels, Protocol, Reporter, label};
use crate::switches::{Disabled, Metric, MetricSet};

/// The label value of the overflow series.
pub const OVERFLOW: &str = "overflow";
/// Series a proxy keeps at most by default (each label set of an edge and a response).
pub const DEFAULT_LIMIT: usize = 5000;

const OVERFLOW_KEY: ResponseKey = ResponseKey {
    code: 0,
    grpc_status: None,
    flags: OVERFLOW,
};

/// Envoy's default histogram buckets (`le`), which Istio's histograms use.
pub const BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// The response part of a series' labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ResponseKey {
    /// `response_code` (0: none, as Envoy for a request without a response).
    pub code: u16,
    /// `grpc_response_status` (`None`: empty, as Istio for plain HTTP).
    pub grpc_status: Option<u32>,
    /// `response_flags`, Envoy's short form (`-` for none).
    pub flags: &'static str,
}

impl ResponseKey {
    /// The key of a TCP connection's series (no code, no gRPC status).
    pub fn tcp(flags: &'static str) -> ResponseKey {
        ResponseKey {
            code: 0,
            grpc_status: None,
            flags,
        }
    }
}

/// A histogram with Envoy's default buckets.
#[derive(Default)]
pub struct Histogram {
    /// Per bucket (not cumulative); the last is `+Inf`.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn record(&self, value: u64) {
        // Values are whole (ms, bytes): `le="0.5"` holds only 0.
        let v = value as f64;
        let i = BUCKETS
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// One label set's counters and histograms.
#[derive(Default)]
pub struct Series {
    pub requests: AtomicU64,
    pub duration_ms: Histogram,
    pub request_bytes: Histogram,
    pub response_bytes: Histogram,
    pub tcp_opened: AtomicU64,
    pub tcp_closed: AtomicU64,
    /// Bytes sent to the downstream (Istio's `istio_tcp_sent_bytes_total`).
    pub tcp_sent: AtomicU64,
    /// Bytes received from the downstream.
    pub tcp_received: AtomicU64,
}

impl Series {
    /// One HTTP or gRPC request: its duration and body sizes, but the metrics in `off`.
    pub fn request(
        &self,
        duration: Duration,
        request_bytes: u64,
        response_bytes: u64,
        off: MetricSet,
    ) {
        if off.is_empty() {
            self.requests.fetch_add(1, Ordering::Relaxed);
            self.duration_ms
                .record(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX));
            self.request_bytes.record(request_bytes);
            self.response_bytes.record(response_bytes);
            return;
        }
        if !off.contains(Metric::RequestCount) {
            self.requests.fetch_add(1, Ordering::Relaxed);
        }
        if !off.contains(Metric::RequestDuration) {
            self.duration_ms
                .record(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX));
        }
        if !off.contains(Metric::RequestSize) {
            self.request_bytes.record(request_bytes);
        }
        if !off.contains(Metric::ResponseSize) {
            self.response_bytes.record(response_bytes);
        }
    }
}

/// One interned label set (but the response's), and its series by response.
pub struct Edge {
    labels: EdgeLabels,
    /// The labels rendered once.
    rendered: String,
    series: ArcSwap<Vec<(ResponseKey, Arc<Series>)>>,
    /// Taken only to add a series.
    grow: Mutex<()>,
    /// Where new series go once the registry is full (`None`: this is an overflow edge).
    registry: Option<Arc<Shared>>,
}

impl std::fmt::Debug for Edge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Edge")
            .field("labels", &self.labels)
            .finish()
    }
}

impl Edge {
    fn new(labels: EdgeLabels, registry: Option<Arc<Shared>>) -> Edge {
        Edge {
            rendered: labels.render(),
            labels,
            series: ArcSwap::from_pointee(Vec::new()),
            grow: Mutex::new(()),
            registry,
        }
    }

    pub fn labels(&self) -> &EdgeLabels {
        &self.labels
    }

    /// The series of `key`, made on first use (past the registry's limit: the overflow
    /// series). A series already made costs a lock-free load and an `Arc` clone.
    pub fn series(&self, key: ResponseKey) -> Arc<Series> {
        // The overflow edge has one series.
        let key = if self.registry.is_none() {
            OVERFLOW_KEY
        } else {
            key
        };
        if let Some(s) = find(&self.series.load(), key) {
            return s;
        }
        let _grow = self.grow.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.series.load_full();
        if let Some(s) = find(&current, key) {
            return s;
        }
        if let Some(shared) = &self.registry
            && !shared.admit()
        {
            return shared
                .overflow(self.labels.reporter, self.labels.request_protocol)
                .series(OVERFLOW_KEY);
        }
        let s = Arc::new(Series::default());
        let mut next = Vec::with_capacity(current.len() + 1);
        next.extend(current.iter().cloned());
        next.push((key, s.clone()));
        self.series.store(Arc::new(next));
        s
    }
}

fn find(list: &[(ResponseKey, Arc<Series>)], key: ResponseKey) -> Option<Arc<Series>> {
    list.iter().find(|(k, _)| *k == key).map(|(_, s)| s.clone())
}

/// What the edges of a registry share: the series count and the overflow edges.
struct Shared {
    limit: usize,
    count: AtomicUsize,
    overflow: Mutex<HashMap<(Reporter, Protocol), Arc<Edge>>>,
}

impl Shared {
    /// Takes a place for a new series, if the limit allows one.
    fn admit(&self) -> bool {
        self.count
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.limit).then_some(n + 1)
            })
            .is_ok()
    }

    fn overflow(&self, reporter: Reporter, protocol: Protocol) -> Arc<Edge> {
        self.overflow
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((reporter, protocol))
            .or_insert_with(|| Arc::new(Edge::new(EdgeLabels::overflow(reporter, protocol), None)))
            .clone()
    }
}

/// The registry of a proxy's (or a control plane's) Istio series.
pub struct Metrics {
    edges: Mutex<HashMap<EdgeLabels, Arc<Edge>>>,
    shared: Arc<Shared>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::with_limit(DEFAULT_LIMIT)
    }
}

impl Metrics {
    /// A registry that keeps at most `limit` series, then counts new ones in the overflow
    /// series.
    pub fn with_limit(limit: usize) -> Metrics {
        Metrics {
            edges: Mutex::new(HashMap::new()),
            shared: Arc::new(Shared {
                limit,
                count: AtomicUsize::new(0),
                overflow: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn limit(&self) -> usize {
        self.shared.limit
    }

    /// Series made so far (the overflow series not counted).
    pub fn len(&self) -> usize {
        self.shared.count.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The edge of `labels`, interned: the same `Arc` for the same labels. Takes a lock: call
    /// it once per connection and peer, not per request.
    pub fn edge(&self, labels: EdgeLabels) -> Arc<Edge> {
        let mut edges = self.edges.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = edges.get(&labels) {
            return e.clone();
        }
        if self.shared.count.load(Ordering::Relaxed) >= self.shared.limit {
            return self
                .shared
                .overflow(labels.reporter, labels.request_protocol);
        }
        let e = Arc::new(Edge::new(labels.clone(), Some(self.shared.clone())));
        edges.insert(labels, e.clone());
        e
    }

    /// Istio's metrics in the Prometheus text format (version 0.0.4), appended to `out`.
    pub fn prometheus(&self, out: &mut String) {
        self.prometheus_except(out, Disabled::default());
    }

    /// As [`Metrics::prometheus`], without the series of the metrics each side has disabled
    /// (what was counted before they were disabled included).
    pub fn prometheus_except(&self, out: &mut String, disabled: Disabled) {
        let mut edges: Vec<Arc<Edge>> = self
            .edges
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        edges.extend(
            self.shared
                .overflow
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .cloned(),
        );
        edges.sort_by(|a, b| a.rendered.cmp(&b.rendered));
        let all: Vec<Row> = edges
            .into_iter()
            .map(|e| {
                let s = e.series.load_full();
                (e, s)
            })
            .collect();
        // A family's series: those of its protocol whose side has not disabled it.
        let http = |metric: Metric| {
            move |l: &EdgeLabels| {
                l.request_protocol != Protocol::Tcp && !disabled.of(l.reporter).contains(metric)
            }
        };
        let tcp = |metric: Metric| {
            move |l: &EdgeLabels| {
                l.request_protocol == Protocol::Tcp && !disabled.of(l.reporter).contains(metric)
            }
        };
        counter(
            out,
            &all,
            http(Metric::RequestCount),
            "istio_requests_total",
            "Requests, by source, destination and response.",
            |s| s.requests.load(Ordering::Relaxed),
        );
        histogram(
            out,
            &all,
            http(Metric::RequestDuration),
            "istio_request_duration_milliseconds",
            "Request durations in milliseconds, from the request's first byte to the response's last.",
            |s| &s.duration_ms,
        );
        histogram(
            out,
            &all,
            http(Metric::RequestSize),
            "istio_request_bytes",
            "Request body sizes in bytes.",
            |s| &s.request_bytes,
        );
        histogram(
            out,
            &all,
            http(Metric::ResponseSize),
            "istio_response_bytes",
            "Response body sizes in bytes.",
            |s| &s.response_bytes,
        );
        counter(
            out,
            &all,
            tcp(Metric::TcpOpenedConnections),
            "istio_tcp_connections_opened_total",
            "TCP connections opened.",
            |s| s.tcp_opened.load(Ordering::Relaxed),
        );
        counter(
            out,
            &all,
            tcp(Metric::TcpClosedConnections),
            "istio_tcp_connections_closed_total",
            "TCP connections closed.",
            |s| s.tcp_closed.load(Ordering::Relaxed),
        );
        counter(
            out,
            &all,
            tcp(Metric::TcpSentBytes),
            "istio_tcp_sent_bytes_total",
            "Bytes sent to the downstream over TCP connections.",
            |s| s.tcp_sent.load(Ordering::Relaxed),
        );
        counter(
            out,
            &all,
            tcp(Metric::TcpReceivedBytes),
            "istio_tcp_received_bytes_total",
            "Bytes received from the downstream over TCP connections.",
            |s| s.tcp_received.load(Ordering::Relaxed),
        );
    }
}

type Row = (Arc<Edge>, Arc<Vec<(ResponseKey, Arc<Series>)>>);
type Rows = [Row];

/// The labels of one series: the edge's, then (for HTTP and gRPC) the response's.
fn series_labels(out: &mut String, edge: &Edge, key: &ResponseKey) {
    out.push_str(&edge.rendered);
    if edge.labels.request_protocol != Protocol::Tcp {
        out.push(',');
        if key.flags == OVERFLOW {
            label(out, "response_code", OVERFLOW);
        } else {
            let _ = write!(out, "response_code=\"{}\"", key.code);
        }
        out.push(',');
        match key.grpc_status {
            Some(s) => {
                let _ = write!(out, "grpc_response_status=\"{s}\"");
            }
            None => label(out, "grpc_response_status", ""),
        }
    }
    out.push(',');
    label(out, "response_flags", key.flags);
}

/// One counter family: the series of the edges `shown` keeps.
fn counter(
    out: &mut String,
    rows: &Rows,
    shown: impl Fn(&EdgeLabels) -> bool,
    name: &str,
    help: &str,
    value: impl Fn(&Series) -> u64,
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} counter");
    for (edge, series) in rows {
        if !shown(&edge.labels) {
            continue;
        }
        for (key, s) in series.iter() {
            out.push_str(name);
            out.push('{');
            series_labels(out, edge, key);
            let _ = writeln!(out, "}} {}", value(s));
        }
    }
}

/// One histogram family: the series of the edges `shown` keeps.
fn histogram(
    out: &mut String,
    rows: &Rows,
    shown: impl Fn(&EdgeLabels) -> bool,
    name: &str,
    help: &str,
    pick: impl Fn(&Series) -> &Histogram,
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} histogram");
    for (edge, series) in rows {
        if !shown(&edge.labels) {
            continue;
        }
        for (key, s) in series.iter() {
            let h = pick(s);
            let mut labels = String::new();
            series_labels(&mut labels, edge, key);
            let mut cumulative = 0;
            for (i, count) in h.buckets.iter().enumerate() {
                cumulative += count.load(Ordering::Relaxed);
                let le = match BUCKETS.get(i) {
                    Some(b) => format!("{b}"),
                    None => "+Inf".to_string(),
                };
                let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
            }
            let _ = writeln!(
                out,
                "{name}_sum{{{labels}}} {}",
                h.sum.load(Ordering::Relaxed)
            );
            let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.count());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::labels::Observed;
    use crate::workload::Workload;

    fn edge_labels(reporter: Reporter, peer: &str, protocol: Protocol) -> EdgeLabels {
        let local = Workload::from_labels(
            "productpage-v1",
            "default",
            &[("app".to_string(), "productpage".to_string())].into(),
            "Kubernetes",
        );
        let peer = Workload::from_labels(peer, "default", &BTreeMap::new(), "Kubernetes");
        EdgeLabels::derive(&Observed {
            reporter,
            local: &local,
            local_principal: None,
            peer: Some(&peer),
            peer_principal: None,
            service: None,
            host: Some("productpage:9080"),
            protocol,
        })
    }

    const OK: ResponseKey = ResponseKey {
        code: 200,
        grpc_status: None,
        flags: "-",
    };

    #[test]
    fn the_same_labels_give_the_same_edge_and_series() {
        let m = Metrics::default();
        let a = m.edge(edge_labels(Reporter::Destination, "gw", Protocol::Http));
        let b = m.edge(edge_labels(Reporter::Destination, "gw", Protocol::Http));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(Arc::ptr_eq(&a.series(OK), &b.series(OK)));
        let c = m.edge(edge_labels(Reporter::Source, "gw", Protocol::Http));
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn disabled_metrics_are_neither_counted_nor_shown_for_their_side() {
        let m = Metrics::default();
        let server = m.edge(edge_labels(Reporter::Destination, "gw", Protocol::Http));
        let client = m.edge(edge_labels(Reporter::Source, "gw", Protocol::Http));
        let count_only: MetricSet = [Metric::RequestCount].into_iter().collect();
        server
            .series(OK)
            .request(Duration::from_millis(3), 1, 2, count_only);
        client
            .series(OK)
            .request(Duration::from_millis(3), 1, 2, MetricSet::NONE);
        assert_eq!(server.series(OK).requests.load(Ordering::Relaxed), 0);
        assert_eq!(server.series(OK).duration_ms.count(), 1);
        let disabled = Disabled {
            source: MetricSet::NONE,
            destination: count_only,
        };
        let mut text = String::new();
        m.prometheus_except(&mut text, disabled);
        let lines = |name: &str, reporter: &str| {
            text.lines()
                .filter(|l| l.starts_with(name) && l.contains(reporter))
                .count()
        };
        assert_eq!(
            lines("istio_requests_total{", "reporter=\"destination\""),
            0,
            "{text}"
        );
        assert_eq!(
            lines("istio_requests_total{", "reporter=\"source\""),
            1,
            "{text}"
        );
        assert_eq!(
            lines(
                "istio_request_duration_milliseconds_count{",
                "reporter=\"destination\""
            ),
            1,
            "{text}"
        );
        // Everything off on both sides: only the families' headers are left.
        let all: MetricSet = Metric::ALL.into_iter().collect();
        let mut text = String::new();
        m.prometheus_except(
            &mut text,
            Disabled {
                source: all,
                destination: all,
            },
        );
        assert!(text.lines().all(|l| l.starts_with('#')), "{text}");
    }

    #[test]
    fn exposition_has_types_help_buckets_sum_and_count() {
        let m = Metrics::default();
        let e = m.edge(edge_labels(Reporter::Destination, "gw", Protocol::Http));
        e.series(OK)
            .request(Duration::from_millis(7), 10, 1000, MetricSet::NONE);
        e.series(OK)
            .request(Duration::from_millis(300), 0, 20, MetricSet::NONE);
        e.series(ResponseKey {
            code: 503,
            grpc_status: None,
            flags: "UF",
        })
        .request(Duration::ZERO, 0, 0, MetricSet::NONE);
        let g = m.edge(edge_labels(Reporter::Source, "ratings", Protocol::Grpc));
        g.series(ResponseKey {
            code: 200,
            grpc_status: Some(14),
            flags: "-",
        })
        .request(Duration::from_millis(1), 5, 5, MetricSet::NONE);
        let t = m.edge(edge_labels(Reporter::Destination, "db", Protocol::Tcp));
        let ts = t.series(ResponseKey::tcp("-"));
        ts.tcp_opened.fetch_add(1, Ordering::Relaxed);
        ts.tcp_sent.fetch_add(42, Ordering::Relaxed);
        let mut text = String::new();
        m.prometheus(&mut text);
        for want in [
            "# HELP istio_requests_total ",
            "# TYPE istio_requests_total counter",
            "# TYPE istio_request_duration_milliseconds histogram",
            "# TYPE istio_request_bytes histogram",
            "# TYPE istio_response_bytes histogram",
            "# TYPE istio_tcp_sent_bytes_total counter",
        ] {
            assert!(text.contains(want), "{want} missing from\n{text}");
        }
        let labels = edge_labels(Reporter::Destination, "gw", Protocol::Http).render();
        let ok = format!(
            "{labels},response_code=\"200\",grpc_response_status=\"\",response_flags=\"-\""
        );
        for want in [
            format!("istio_requests_total{{{ok}}} 2\n"),
            format!("istio_request_duration_milliseconds_bucket{{{ok},le=\"5\"}} 0\n"),
            format!("istio_request_duration_milliseconds_bucket{{{ok},le=\"10\"}} 1\n"),
            format!("istio_request_duration_milliseconds_bucket{{{ok},le=\"250\"}} 1\n"),
            format!("istio_request_duration_milliseconds_bucket{{{ok},le=\"500\"}} 2\n"),
            format!("istio_request_duration_milliseconds_bucket{{{ok},le=\"3600000\"}} 2\n"),
            format!("istio_request_duration_milliseconds_bucket{{{ok},le=\"+Inf\"}} 2\n"),
            format!("istio_request_duration_milliseconds_sum{{{ok}}} 307\n"),
            format!("istio_request_duration_milliseconds_count{{{ok}}} 2\n"),
            format!("istio_response_bytes_sum{{{ok}}} 1020\n"),
            format!(
                "istio_request_duration_milliseconds_bucket{{{labels},response_code=\"503\",grpc_response_status=\"\",response_flags=\"UF\",le=\"0.5\"}} 1\n"
            ),
            "grpc_response_status=\"14\"".to_string(),
            "request_protocol=\"grpc\"".to_string(),
        ] {
            assert!(text.contains(&want), "{want} missing from\n{text}");
        }
        assert!(text.contains("reporter=\"destination\",source_workload=\"gw\","));
        // TCP series have no response code, and no HTTP histograms.
        let tcp = edge_labels(Reporter::Destination, "db", Protocol::Tcp).render();
        assert!(text.contains(&format!(
            "istio_tcp_sent_bytes_total{{{tcp},response_flags=\"-\"}} 42\n"
        )));
        assert!(text.contains(&format!(
            "istio_tcp_connections_opened_total{{{tcp},response_flags=\"-\"}} 1\n"
        )));
        assert!(!text.contains(&format!("istio_requests_total{{{tcp}")));
        // Every line is a comment or `name{labels} value`.
        for line in text.lines() {
            assert!(
                line.starts_with("# ") || (line.contains("} ") && line.starts_with("istio_")),
                "{line}"
            );
        }
    }

    #[test]
    fn past_the_limit_new_label_sets_count_in_the_overflow_series() {
        let m = Metrics::with_limit(2);
        let a = m.edge(edge_labels(Reporter::Destination, "a", Protocol::Http));
        a.series(OK).request(Duration::ZERO, 0, 0, MetricSet::NONE);
        a.series(ResponseKey { code: 404, ..OK })
            .request(Duration::ZERO, 0, 0, MetricSet::NONE);
        // Full: a new response of a known edge, and a new edge, go to the overflow series.
        a.series(ResponseKey { code: 500, ..OK })
            .request(Duration::ZERO, 0, 0, MetricSet::NONE);
        let b = m.edge(edge_labels(Reporter::Destination, "b", Protocol::Http));
        b.series(OK).request(Duration::ZERO, 0, 0, MetricSet::NONE);
        assert_eq!(m.len(), 2);
        let mut text = String::new();
        m.prometheus(&mut text);
        let overflow = EdgeLabels::overflow(Reporter::Destination, Protocol::Http).render();
        assert!(
            text.contains(&format!(
                "istio_requests_total{{{overflow},response_code=\"overflow\",grpc_response_status=\"\",response_flags=\"overflow\"}} 2\n"
            )),
            "{text}"
        );
        assert!(!text.contains("source_workload=\"b\""));
    }
}
