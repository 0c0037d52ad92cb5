//! Istio's standard metrics on and off: the Telemetry API's metric overrides (`disabled`), as
//! Istio's `mergeMetrics` (pilot/pkg/model/telemetry.go) merges them, carried to strait-proxy in
//! each listener's `istio.stats` metadata (the side of the listener: inbound listeners are the
//! server side, the others the client side). See `strait_telemetry::switches`.
//!
//! - The Telemetry resources that apply are the tracing ones' (mesh, namespace, workload; see
//!   [`super::tracer::applicable`]); later ones override earlier ones, override by override.
//! - An entry counts for the Prometheus provider when it names none (the default provider) or
//!   names `prometheus` or a MeshConfig extension provider of kind `prometheus`.
//! - A match without `metric` (or `ALL_METRICS`) is every metric; without `mode` both sides.
//! - Tag overrides and custom metrics are not translated (docs/istio-support.md).
//!
//! Upstream Envoy ignores the metadata: it has no Istio metrics (they come from Istio's own
//! Envoy build).

use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::google::protobuf::{ListValue, Struct, Value, value};
use strait_api::mesh_config::Provider;
use strait_api::telemetry::{IstioMetric, WorkloadMode};
use strait_telemetry::{Disabled, Metric, MetricSet};

use super::Ctx;

/// The Istio provider name of the built-in Prometheus provider.
const PROMETHEUS: &str = "prometheus";

fn metrics_of(m: IstioMetric) -> MetricSet {
    let one = |m: Metric| [m].into_iter().collect();
    match m {
        IstioMetric::ALL_METRICS => Metric::ALL.into_iter().collect(),
        IstioMetric::REQUEST_COUNT => one(Metric::RequestCount),
        IstioMetric::REQUEST_DURATION => one(Metric::RequestDuration),
        IstioMetric::REQUEST_SIZE => one(Metric::RequestSize),
        IstioMetric::RESPONSE_SIZE => one(Metric::ResponseSize),
        IstioMetric::TCP_OPENED_CONNECTIONS => one(Metric::TcpOpenedConnections),
        IstioMetric::TCP_CLOSED_CONNECTIONS => one(Metric::TcpClosedConnections),
        IstioMetric::TCP_SENT_BYTES => one(Metric::TcpSentBytes),
        IstioMetric::TCP_RECEIVED_BYTES => one(Metric::TcpReceivedBytes),
        IstioMetric::GRPC_REQUEST_MESSAGES => one(Metric::GrpcRequestMessages),
        IstioMetric::GRPC_RESPONSE_MESSAGES => one(Metric::GrpcResponseMessages),
    }
}

/// The metrics each side of the proxy does not report.
pub(crate) fn disabled(ctx: &Ctx<'_>) -> Disabled {
    let mesh = &ctx.config.mesh;
    let prometheus = |name: &str| {
        name == PROMETHEUS
            || mesh.extension_providers.iter().any(|p| {
                p.name == name
                    && matches!(&p.provider, Provider::Other { kind, .. } if kind == PROMETHEUS)
            })
    };
    let mut d = Disabled::default();
    for t in super::tracer::applicable(ctx) {
        for m in &t.metrics {
            if !m.providers.is_empty() && !m.providers.iter().any(|p| prometheus(&p.name)) {
                continue;
            }
            for o in &m.overrides {
                let Some(off) = o.disabled else { continue };
                let selector = o.match_.as_ref();
                if selector.is_some_and(|s| s.custom_metric.is_some()) {
                    continue;
                }
                let metrics = metrics_of(
                    selector
                        .and_then(|s| s.metric)
                        .unwrap_or(IstioMetric::ALL_METRICS),
                );
                let mode = selector.and_then(|s| s.mode).unwrap_or_default();
                let switch = |side: MetricSet| {
                    if off {
                        side.union(metrics)
                    } else {
                        side.difference(metrics)
                    }
                };
                if mode != WorkloadMode::SERVER {
                    d.source = switch(d.source);
                }
                if mode != WorkloadMode::CLIENT {
                    d.destination = switch(d.destination);
                }
            }
        }
    }
    d
}

/// Puts each listener's side's disabled metrics in its metadata (none when nothing is off).
pub(crate) fn annotate(
    ctx: &Ctx<'_>,
    listeners: &mut std::collections::BTreeMap<String, Listener>,
) {
    let d = disabled(ctx);
    if d == Disabled::default() {
        return;
    }
    for l in listeners.values_mut() {
        let inbound = l.traffic_direction
            == envoy_types::pb::envoy::config::core::v3::TrafficDirection::Inbound as i32;
        let set = if inbound { d.destination } else { d.source };
        if set.is_empty() {
            continue;
        }
        let names = set
            .names()
            .map(|n| Value {
                kind: Some(value::Kind::StringValue(n.to_string())),
            })
            .collect();
        let stats = Struct {
            fields: [(
                "disabled".to_string(),
                Value {
                    kind: Some(value::Kind::ListValue(ListValue { values: names })),
                },
            )]
            .into_iter()
            .collect(),
        };
        l.metadata
            .get_or_insert_with(Metadata::default)
            .filter_metadata
            .insert(strait_telemetry::switches::METADATA_KEY.to_string(), stats);
    }
}
