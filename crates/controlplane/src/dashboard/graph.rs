//! The service graph from Istio's standard metrics: the proxies' Prometheus text
//! (`/stats/prometheus` on Istio's port 15090) parsed for `istio_requests_total` and
//! `istio_request_duration_milliseconds`, and summed per edge (source workload → destination
//! workload). Pure functions: the scraper (`scrape.rs`) feeds them.
//!
//! Which series count for an edge: the destination's own (`reporter="destination"`) when any
//! proxy reports the edge so, else the source's (`reporter="source"`): a request between two
//! sidecars is reported by both, and counted once; a request to a workload without an
//! `istio_*`-reporting sidecar (an Envoy sidecar, a service outside the mesh) only by its
//! source.

use std::collections::{BTreeMap, HashMap};

/// The two metric families the graph reads.
pub const REQUESTS: &str = "istio_requests_total";
pub const DURATION_BUCKET: &str = "istio_request_duration_milliseconds_bucket";

/// One sample of the exposition text: its metric name, labels and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> &str {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    }
}

/// The samples of the families in `wanted` from Prometheus's text exposition format (version
/// 0.0.4). Lines that do not parse are skipped: one bad series does not hide the rest.
pub fn parse(text: &str, wanted: &[&str]) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            wanted.iter().any(|w| {
                l.strip_prefix(w)
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            })
        })
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices().peekable();
        let end;
        loop {
            // Skip separators.
            while let Some((_, c)) = chars.peek() {
                if *c == ',' || c.is_whitespace() {
                    chars.next();
                } else {
                    break;
                }
            }
            let (start, c) = *chars.peek()?;
            if c == '}' {
                end = start + 1;
                break;
            }
            let eq = after[start..].find('=')? + start;
            let key = after[start..eq].trim().to_string();
            while let Some((i, _)) = chars.peek() {
                if *i <= eq {
                    chars.next();
                } else {
                    break;
                }
            }
            if chars.next()?.1 != '"' {
                return None;
            }
            let mut value = String::new();
            loop {
                match chars.next()?.1 {
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    '"' => break,
                    c => value.push(c),
                }
            }
            labels.push((key, value));
        }
        rest = &after[end..];
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// A workload as the graph names it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeKey {
    pub name: String,
    pub namespace: String,
}

/// What the metrics say about a node (its app and version labels).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub app: String,
    pub version: String,
    /// A destination known only as a service (no workload label): an external host, or a
    /// workload whose sidecar does not report.
    pub service_only: bool,
}

/// The totals of one edge, summed over the series of its reporter.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EdgeTotals {
    pub requests: f64,
    pub errors: f64,
    /// Requests the destination's sidecar saw over mutual TLS (`reporter="destination"` only).
    pub mtls_requests: f64,
    pub reporter: &'static str,
    pub protocol: String,
    pub destination_service: String,
    /// Cumulative histogram buckets: upper bound → count.
    pub buckets: Vec<(f64, f64)>,
}

impl EdgeTotals {
    /// Every request the destination counted came over mutual TLS.
    pub fn mtls(&self) -> bool {
        self.reporter == "destination" && self.requests > 0.0 && self.mtls_requests >= self.requests
    }

    pub fn quantile(&self, q: f64) -> Option<f64> {
        histogram_quantile(q, &self.buckets)
    }
}

/// The graph of one round of scrapes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Graph {
    pub nodes: BTreeMap<NodeKey, NodeInfo>,
    pub edges: BTreeMap<(NodeKey, NodeKey), EdgeTotals>,
}

/// The most edges a graph keeps (the proxies' own series bounds keep it far below this).
pub const MAX_EDGES: usize = 10_000;

#[derive(Default)]
struct Partial {
    requests: f64,
    errors: f64,
    mtls: f64,
    protocol: String,
    service: String,
    buckets: HashMap<u64, f64>,
}

fn or_unknown(s: &str) -> &str {
    if s.is_empty() { "unknown" } else { s }
}

/// The edge a sample belongs to, and what it says about its two ends.
fn edge_of(s: &Sample) -> ((NodeKey, NodeInfo), (NodeKey, NodeInfo)) {
    let source = NodeKey {
        name: or_unknown(s.label("source_workload")).to_string(),
        namespace: or_unknown(s.label("source_workload_namespace")).to_string(),
    };
    let source_info = NodeInfo {
        app: s.label("source_app").to_string(),
        version: s.label("source_version").to_string(),
        service_only: false,
    };
    let workload = s.label("destination_workload");
    let (destination, service_only) = if workload.is_empty() || workload == "unknown" {
        // Known only by its service: name it by the service's host.
        let host = or_unknown(s.label("destination_service"));
        (
            NodeKey {
                name: host.to_string(),
                namespace: or_unknown(s.label("destination_service_namespace")).to_string(),
            },
            true,
        )
    } else {
        (
            NodeKey {
                name: workload.to_string(),
                namespace: or_unknown(s.label("destination_workload_namespace")).to_string(),
            },
            false,
        )
    };
    let destination_info = NodeInfo {
        app: s.label("destination_app").to_string(),
        version: s.label("destination_version").to_string(),
        service_only,
    };
    ((source, source_info), (destination, destination_info))
}

/// Sums the samples of every proxy (`samples` may come from many scrapes) into a graph.
pub fn aggregate<'a>(samples: impl IntoIterator<Item = &'a Sample>) -> Graph {
    // By reporter, then edge.
    let mut by: [BTreeMap<(NodeKey, NodeKey), Partial>; 2] = Default::default();
    let mut nodes: BTreeMap<NodeKey, NodeInfo> = BTreeMap::new();
    for s in samples {
        let reporter = match s.label("reporter") {
            "destination" => 0,
            "source" => 1,
            _ => continue,
        };
        if !s.value.is_finite() || s.value < 0.0 {
            continue;
        }
        let ((src, src_info), (dst, dst_info)) = edge_of(s);
        let key = (src.clone(), dst.clone());
        let map = &mut by[reporter];
        if !map.contains_key(&key) && map.len() >= MAX_EDGES {
            continue;
        }
        merge_node(&mut nodes, src, src_info);
        merge_node(&mut nodes, dst, dst_info);
        let p = map.entry(key).or_default();
        if p.service.is_empty() {
            p.service = s.label("destination_service").to_string();
        }
        if p.protocol.is_empty() {
            p.protocol = s.label("request_protocol").to_string();
        }
        if s.name == REQUESTS {
            p.requests += s.value;
            if s.label("response_code").starts_with('5') {
                p.errors += s.value;
            }
            if s.label("connection_security_policy") == "mutual_tls" {
                p.mtls += s.value;
            }
        } else if s.name == DURATION_BUCKET {
            let le = match s.label("le") {
                "+Inf" => f64::INFINITY,
                v => match v.parse::<f64>() {
                    Ok(v) => v,
                    Err(_) => continue,
                },
            };
            *p.buckets.entry(le.to_bits()).or_default() += s.value;
        }
    }
    let [destination, source] = by;
    let mut edges = BTreeMap::new();
    for (reporter, map) in [("destination", destination), ("source", source)] {
        for (key, p) in map {
            if edges.contains_key(&key) {
                // The destination's report of this edge wins.
                continue;
            }
            let mut buckets: Vec<(f64, f64)> = p
                .buckets
                .into_iter()
                .map(|(le, n)| (f64::from_bits(le), n))
                .collect();
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            edges.insert(
                key,
                EdgeTotals {
                    requests: p.requests,
                    errors: p.errors,
                    mtls_requests: p.mtls,
                    reporter,
                    protocol: p.protocol,
                    destination_service: p.service,
                    buckets,
                },
            );
        }
    }
    Graph { nodes, edges }
}

fn merge_node(nodes: &mut BTreeMap<NodeKey, NodeInfo>, key: NodeKey, info: NodeInfo) {
    let n = nodes.entry(key).or_insert_with(|| info.clone());
    if n.app.is_empty() || n.app == "unknown" {
        n.app = info.app;
    }
    if n.version.is_empty() || n.version == "unknown" {
        n.version = info.version;
    }
    n.service_only &= info.service_only;
}

/// Prometheus's `histogram_quantile`: the bucket the rank falls in, linearly interpolated
/// (from 0 for the first bucket); the largest finite bound when the rank is in `+Inf`'s.
/// `buckets`: cumulative (upper bound, count), sorted by bound.
pub fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last().filter(|(le, _)| le.is_infinite())?.1;
    if total <= 0.0 || !(0.0..=1.0).contains(&q) {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for (i, &(le, count)) in buckets.iter().enumerate() {
        if count >= rank {
            if le.is_infinite() {
                return Some(if i == 0 { 0.0 } else { buckets[i - 1].0 });
            }
            let (lo_le, lo_count) = lower;
            if count == lo_count {
                return Some(le);
            }
            return Some(lo_le + (le - lo_le) * (rank - lo_count) / (count - lo_count));
        }
        lower = (le, count);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What productpage's strait-proxy sidecar served on POD_IP:15090 in `strait demo` (iptables
    /// capture) after 781 page loads through the gateway with reviews split 50/50 between v1
    /// and v3: its `istio_*` request series verbatim (the byte histograms and most `envoy_*`
    /// series left out).
    const PRODUCTPAGE: &str = include_str!("testdata/productpage.prom");
    /// The ingress gateway's at the same time (reporter source only).
    const GATEWAY: &str = include_str!("testdata/gateway.prom");

    #[test]
    fn parses_labels_with_escapes_and_values() {
        let s = parse(
            "# TYPE x counter\nx{a=\"b\\\"c\",d=\"e\\\\f\\ng\"} 12\nx 3 1700000000\nxy{a=\"1\"} 5\nx{le=\"+Inf\"} +Inf\n",
            &["x"],
        );
        assert_eq!(s.len(), 3, "{s:?}");
        assert_eq!(s[0].label("a"), "b\"c");
        assert_eq!(s[0].label("d"), "e\\f\ng");
        assert_eq!(s[0].value, 12.0);
        assert_eq!(s[1].labels, vec![]);
        assert_eq!(s[1].value, 3.0);
        assert!(s[2].value.is_infinite());
    }

    #[test]
    fn a_broken_line_is_skipped_not_fatal() {
        let s = parse("x{a=\"b} 1\nx{a=\"b\"} nope\nx{a=\"ok\"} 2\n", &["x"]);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].label("a"), "ok");
    }

    #[test]
    fn quantiles_as_prometheus_computes_them() {
        // 10 requests: 5 under 1 ms, 4 more under 5 ms, 1 over 10 ms.
        let b = [(1.0, 5.0), (5.0, 9.0), (10.0, 9.0), (f64::INFINITY, 10.0)];
        assert_eq!(histogram_quantile(0.5, &b), Some(1.0));
        // rank 9.0 is reached at le=5: 1 + 4 * (9-5)/(9-5) = 5.
        assert_eq!(histogram_quantile(0.9, &b), Some(5.0));
        // rank 9.9 is in +Inf's bucket: the largest finite bound.
        assert_eq!(histogram_quantile(0.99, &b), Some(10.0));
        // Halfway into the first bucket: interpolated from 0.
        assert_eq!(histogram_quantile(0.25, &b), Some(0.5));
        assert_eq!(histogram_quantile(0.5, &[(f64::INFINITY, 0.0)]), None);
        assert_eq!(histogram_quantile(0.5, &[]), None);
    }

    fn key(name: &str, ns: &str) -> NodeKey {
        NodeKey {
            name: name.into(),
            namespace: ns.into(),
        }
    }

    #[test]
    fn real_scrapes_make_the_bookinfo_edges() {
        let wanted = [REQUESTS, DURATION_BUCKET];
        let mut samples = parse(PRODUCTPAGE, &wanted);
        samples.extend(parse(GATEWAY, &wanted));
        assert!(
            samples
                .iter()
                .all(|s| s.name == REQUESTS || s.name == DURATION_BUCKET)
        );
        let g = aggregate(&samples);
        let ingress = key("istio-ingressgateway", "istio-system");
        let productpage = key("productpage-v1", "default");
        let details = key("details-v1", "default");
        let reviews_v1 = key("reviews-v1", "default");
        let reviews_v3 = key("reviews-v3", "default");

        // Reported by both the gateway (source) and productpage (destination): the
        // destination's series count, once.
        let e = &g.edges[&(ingress.clone(), productpage.clone())];
        assert_eq!(e.reporter, "destination");
        assert_eq!(e.requests, 781.0);
        assert_eq!(e.errors, 0.0);
        assert_eq!(e.protocol, "http");
        assert_eq!(
            e.destination_service,
            "productpage.default.svc.cluster.local"
        );
        assert!(e.mtls(), "{e:?}");
        let p50 = e.quantile(0.5).unwrap();
        let p99 = e.quantile(0.99).unwrap();
        assert!(p50 > 0.0 && p50 <= p99 && p99 <= 100.0, "{p50} {p99}");
        // The buckets are the sums of the series' cumulative counts: +Inf's is the total.
        assert_eq!(e.buckets.last().unwrap(), &(f64::INFINITY, 781.0));

        // Only productpage's sidecar reports its calls here (the others' scrapes are not):
        // the source's series, which cannot tell mutual TLS.
        for (dst, n) in [
            (&details, 781.0),
            (&reviews_v1, 388.0),
            (&reviews_v3, 393.0),
        ] {
            let e = &g.edges[&(productpage.clone(), dst.clone())];
            assert_eq!(
                (e.reporter, e.requests, e.errors),
                ("source", n, 0.0),
                "{dst:?}"
            );
            assert!(!e.mtls());
            assert!(e.quantile(0.5).is_some());
        }
        assert_eq!(g.edges.len(), 4, "{:?}", g.edges.keys().collect::<Vec<_>>());
        assert_eq!(g.nodes[&productpage].app, "productpage");
        assert_eq!(g.nodes[&reviews_v3].version, "v3");
        assert!(!g.nodes[&ingress].service_only);
    }

    #[test]
    fn an_unknown_destination_workload_is_named_by_its_service() {
        let text = "istio_requests_total{reporter=\"source\",source_workload=\"sleep\",source_workload_namespace=\"default\",destination_workload=\"unknown\",destination_workload_namespace=\"unknown\",destination_service=\"httpbin.org\",destination_service_namespace=\"unknown\",response_code=\"503\"} 4\n";
        let g = aggregate(&parse(text, &[REQUESTS]));
        let (k, e) = g.edges.iter().next().unwrap();
        assert_eq!(k.1.name, "httpbin.org");
        assert!(g.nodes[&k.1].service_only);
        assert_eq!((e.requests, e.errors), (4.0, 4.0));
        assert_eq!(e.quantile(0.5), None);
    }
}
