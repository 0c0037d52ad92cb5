//! The control plane reads the proxies' metrics itself (no Prometheus): every connected
//! proxy's `/stats/prometheus` on Istio's port 15090 of its address, the same targets
//! `/debug/prometheus_sd` gives Prometheus. Only while someone looks: a round every
//! [`INTERVAL`] while the graph was asked for in the last [`WATCHED_FOR`], and one at once when
//! it is asked for and the last is older than two intervals. Bounded: [`PARALLEL`] scrapes at a
//! time, each within [`TIMEOUT`] and [`MAX_BODY`] bytes, only of loopback addresses and of
//! addresses the registry has as workload endpoints (a proxy's address is its own claim; the
//! control plane does not connect wherever a proxy points it).

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use strait_ads::{AdsServer, SyncState};
use strait_xds_core::{Proxy, ProxyRole};

use super::graph::{self, EdgeTotals, Graph, NodeKey};
use crate::Mesh;

pub const INTERVAL: Duration = Duration::from_secs(5);
pub const WATCHED_FOR: Duration = Duration::from_secs(120);
pub const PARALLEL: usize = 8;
pub const TIMEOUT: Duration = Duration::from_secs(2);
pub const MAX_BODY: usize = 8 * 1024 * 1024;

/// One round of scrapes.
struct Round {
    at: Instant,
    at_unix_ms: u64,
    graph: Graph,
    targets: usize,
    failures: Vec<(String, String)>,
    /// Per-edge (requests, errors) per second since the round before.
    rates: BTreeMap<(NodeKey, NodeKey), (f64, f64)>,
    window: Option<Duration>,
}

pub struct Scraper {
    ads: AdsServer,
    mesh: Arc<Mesh>,
    latest: ArcSwapOption<Round>,
    /// When the graph was last asked for (ms since `epoch`).
    wanted_at: AtomicU64,
    epoch: Instant,
    round: tokio::sync::Mutex<()>,
}

impl Scraper {
    pub fn new(ads: AdsServer, mesh: Arc<Mesh>) -> Arc<Scraper> {
        Arc::new(Scraper {
            ads,
            mesh,
            latest: ArcSwapOption::empty(),
            wanted_at: AtomicU64::new(0),
            epoch: Instant::now(),
            round: tokio::sync::Mutex::new(()),
        })
    }

    /// The background rounds, while someone watches.
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let wanted = Duration::from_millis(self.wanted_at.load(Ordering::Relaxed));
            let watched = wanted > Duration::ZERO
                && self.epoch.elapsed().saturating_sub(wanted) < WATCHED_FOR;
            if watched {
                self.scrape_round().await;
            }
        }
    }

    async fn scrape_round(&self) {
        let _one = self.round.lock().await;
        let targets = self.targets();
        let mut set = tokio::task::JoinSet::new();
        let permits = Arc::new(tokio::sync::Semaphore::new(PARALLEL));
        for (name, addr) in targets.iter().cloned() {
            let permits = permits.clone();
            set.spawn(async move {
                let _p = permits.acquire_owned().await;
                let result = tokio::time::timeout(TIMEOUT, fetch(addr))
                    .await
                    .unwrap_or_else(|_| Err(format!("no answer within {TIMEOUT:?}")));
                (name, addr, result)
            });
        }
        let mut samples = Vec::new();
        let mut failures = Vec::new();
        while let Some(done) = set.join_next().await {
            let Ok((name, addr, result)) = done else {
                continue;
            };
            match result {
                Ok(text) => samples.extend(graph::parse(
                    &text,
                    &[graph::REQUESTS, graph::DURATION_BUCKET],
                )),
                Err(e) => failures.push((format!("{name} ({addr})"), e)),
            }
        }
        failures.sort();
        let graph = graph::aggregate(&samples);
        let now = Instant::now();
        let previous = self.latest.load_full();
        let (rates, window) = match &previous {
            Some(p) => {
                let dt = now.duration_since(p.at).as_secs_f64().max(0.001);
                let rates = graph
                    .edges
                    .iter()
                    .map(|(k, e)| {
                        let (r0, e0) = p
                            .graph
                            .edges
                            .get(k)
                            .map_or((0.0, 0.0), |o| (o.requests, o.errors));
                        let rate = |now: f64, before: f64| {
                            // A proxy that restarted counts from zero again.
                            let d = if now >= before { now - before } else { now };
                            d / dt
                        };
                        (k.clone(), (rate(e.requests, r0), rate(e.errors, e0)))
                    })
                    .collect();
                (rates, Some(now.duration_since(p.at)))
            }
            None => (BTreeMap::new(), None),
        };
        self.latest.store(Some(Arc::new(Round {
            at: now,
            at_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            graph,
            targets: targets.len(),
            failures,
            rates,
            window,
        })));
    }

    /// The proxies to scrape: (proxy id, stats address), one per address.
    fn targets(&self) -> Vec<(String, SocketAddr)> {
        let state = self.mesh.current();
        let endpoints: HashSet<IpAddr> = state
            .registry
            .endpoints
            .values()
            .flat_map(|eps| eps.iter())
            .filter(|e| e.workload.is_some())
            .filter_map(|e| e.address.parse().ok())
            .collect();
        let mut out: Vec<(String, SocketAddr)> = self
            .ads
            .status()
            .into_iter()
            .filter_map(|p| Some((p.id.clone(), stats_address(&p.proxy, &endpoints)?)))
            .collect();
        out.sort_by_key(|(_, a)| *a);
        out.dedup_by_key(|(_, a)| *a);
        out
    }

    /// The graph as JSON: the latest round, made now if there is none recent.
    pub async fn graph_json(&self) -> Value {
        self.wanted_at
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        let fresh = self
            .latest
            .load_full()
            .is_some_and(|r| r.at.elapsed() < INTERVAL * 2);
        if !fresh {
            self.scrape_round().await;
        }
        let round = self.latest.load_full();
        let proxies = self.ads.status();
        render(round.as_deref(), &proxies)
    }
}

/// Where a proxy's stats are, if the control plane may scrape there.
fn stats_address(proxy: &Proxy, endpoints: &HashSet<IpAddr>) -> Option<SocketAddr> {
    let ip = if proxy.ip.is_unspecified() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        proxy.ip
    };
    (ip.is_loopback() || endpoints.contains(&ip))
        .then(|| SocketAddr::new(ip, strait_xds_core::names::PROMETHEUS_PORT))
}

async fn fetch(addr: SocketAddr) -> Result<String, String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    let conn = tokio::spawn(conn);
    let request = hyper::Request::get("/stats/prometheus")
        .header(hyper::header::HOST, addr.to_string())
        .header(hyper::header::ACCEPT, "text/plain")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("GET /stats/prometheus: {e}"))?;
    if !response.status().is_success() {
        conn.abort();
        return Err(format!("GET /stats/prometheus: HTTP {}", response.status()));
    }
    let body = Limited::new(response.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| format!("reading the metrics (at most {MAX_BODY} bytes): {e}"))?
        .to_bytes();
    conn.abort();
    String::from_utf8(body.to_vec()).map_err(|_| "the metrics are not UTF-8".to_string())
}

fn node_id(k: &NodeKey) -> String {
    format!("{}/{}", k.namespace, k.name)
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

fn edge_json(k: &(NodeKey, NodeKey), e: &EdgeTotals, rates: Option<&(f64, f64)>) -> Value {
    json!({
        "source": k.0.name,
        "source_namespace": k.0.namespace,
        "destination": k.1.name,
        "destination_namespace": k.1.namespace,
        "destination_service": e.destination_service,
        "protocol": e.protocol,
        "reporter": e.reporter,
        "requests": e.requests,
        "errors": e.errors,
        "rps": rates.map(|r| round2(r.0)),
        "error_rps": rates.map(|r| round2(r.1)),
        "p50_ms": e.quantile(0.5).map(round2),
        "p99_ms": e.quantile(0.99).map(round2),
        "mtls": e.mtls(),
    })
}

/// The graph's JSON: the round's nodes and edges, and every connected proxy as a node with
/// its sync state.
fn render(round: Option<&Round>, proxies: &[strait_ads::ProxyStatus]) -> Value {
    let mut nodes: BTreeMap<String, Value> = BTreeMap::new();
    let mut edges = Vec::new();
    if let Some(r) = round {
        for (k, info) in &r.graph.nodes {
            let kind = if info.service_only {
                "service"
            } else if k.name == "unknown" {
                "unknown"
            } else {
                "workload"
            };
            nodes.insert(
                node_id(k),
                json!({
                    "id": node_id(k),
                    "name": k.name,
                    "namespace": k.namespace,
                    "app": info.app,
                    "version": info.version,
                    "kind": kind,
                    "proxy": null,
                }),
            );
        }
        for (k, e) in &r.graph.edges {
            edges.push(edge_json(k, e, r.rates.get(k)));
        }
    }
    for p in proxies {
        let key = NodeKey {
            name: p.proxy.workload.clone(),
            namespace: p.proxy.namespace.clone(),
        };
        let id = node_id(&key);
        let stale: Vec<String> = p
            .types
            .iter()
            .filter(|(_, t)| t.state != SyncState::Synced)
            .map(|(t, st)| {
                let state = match &st.state {
                    SyncState::Synced => "SYNCED",
                    SyncState::Stale => "STALE",
                    SyncState::Nack { .. } => "NACK",
                    SyncState::NotSent => "NOT SENT",
                };
                format!("{} {state}", t.short())
            })
            .collect();
        let proxy = json!({
            "id": p.id,
            "role": match p.proxy.role { ProxyRole::Sidecar => "sidecar", ProxyRole::Gateway => "gateway" },
            "synced": p.is_synced(),
            "not_synced": stale,
        });
        let node = nodes.entry(id.clone()).or_insert_with(|| {
            json!({
                "id": id,
                "name": key.name,
                "namespace": key.namespace,
                "app": p.proxy.labels.get("app").cloned().unwrap_or_default(),
                "version": p.proxy.labels.get("version").cloned().unwrap_or_default(),
                "kind": "workload",
            })
        });
        node["proxy"] = proxy;
        if p.proxy.role == ProxyRole::Gateway {
            node["kind"] = json!("gateway");
        }
    }
    json!({
        "generated_unix_ms": round.map(|r| r.at_unix_ms),
        "window_seconds": round.and_then(|r| r.window).map(|w| round2(w.as_secs_f64())),
        "scrape": {
            "targets": round.map_or(0, |r| r.targets),
            "failures": round.map(|r| r.failures.iter().map(|(t, e)| json!({"target": t, "error": e})).collect::<Vec<_>>()).unwrap_or_default(),
        },
        "nodes": nodes.into_values().collect::<Vec<_>>(),
        "edges": edges,
    })
}
