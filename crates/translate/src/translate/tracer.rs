//! Tracing: the `tracing` of each HTTP connection manager, from the Telemetry resources that
//! apply to the proxy and the MeshConfig, the way Istio's `configureTracing`
//! (pilot/pkg/networking/core/tracing.go) makes it:
//!
//! - The Telemetry resources that apply: the root namespace's without a selector (the mesh
//!   default), then the proxy's namespace's without a selector, then one in its namespace whose
//!   selector matches its labels. Each `tracing` entry applies to client spans, server spans or
//!   both (`match.mode`), and every field it sets replaces the one before it (`customTags` as a
//!   whole).
//! - Server spans are the inbound listeners'; client spans the outbound listeners' and the
//!   gateways'. A gateway also spawns a span per upstream request (`spawn_upstream_span`), as
//!   Istio's `PILOT_SPAWN_UPSTREAM_SPAN_FOR_GATEWAY` default does.
//! - The provider: the Telemetry's first, else MeshConfig's `defaultProviders.tracing`; without
//!   either (and without a Telemetry) nothing is traced. Only `opentelemetry` providers are
//!   translated (Envoy's `envoy.tracers.opentelemetry`, to the cluster `outbound|PORT||HOST` of
//!   the provider's service: gRPC, or OTLP/HTTP when the provider has `http`).
//! - The sampling: the Telemetry's `randomSamplingPercentage`, else MeshConfig's
//!   `defaultConfig.tracing.sampling`, else 1%; client and overall sampling 100%.
//! - Tags: Istio's (`istio.canonical_service`, `istio.canonical_revision`, `istio.namespace`,
//!   `istio.mesh_id`, `istio.cluster_id`) unless `enableIstioTags: false`, and `customTags`
//!   (literal, environment, request header), sorted by name.
//! - The service name of the spans: `CANONICAL_SERVICE.NAMESPACE` (Istio's service cluster).

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::{
    GrpcService, HeaderValue, HeaderValueOption, HttpService, HttpUri, grpc_service,
    header_value_option, http_uri,
};
use envoy_types::pb::envoy::config::trace::v3::{OpenTelemetryConfig, tracing as trace};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::Tracing;

/// An HTTP connection manager's `tracing`.
pub(crate) type TracingConfig = Tracing;
use envoy_types::pb::envoy::r#type::tracing::v3::{CustomTag, custom_tag};
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::{BoolValue, Duration as PbDuration, UInt32Value};
use envoy_types::util::pack_any;
use strait_api::mesh_config::{Opentelemetry, Provider};
use strait_api::telemetry::{self, WorkloadMode};
use strait_xds_core::names::outbound_cluster_name;

use super::Ctx;
use crate::snapshot::namespace_of;

pub const OPENTELEMETRY: &str = "envoy.tracers.opentelemetry";
/// Istio's `PILOT_TRACE_SAMPLING` default.
const DEFAULT_SAMPLING: f64 = 1.0;
/// OTLP/HTTP's usual path.
const OTLP_HTTP_PATH: &str = "/v1/traces";
/// The OTLP/HTTP export timeout when the provider gives none (Envoy requires one).
const OTLP_HTTP_TIMEOUT_SECS: i64 = 5;

/// Which spans a connection manager makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// A sidecar's inbound listener: server spans.
    Inbound,
    /// A sidecar's outbound listener: client spans.
    Outbound,
    /// A gateway: client spans (Istio's), with a span per upstream request.
    Gateway,
}

/// What the Telemetry resources set for one direction, merged.
#[derive(Debug, Clone, Default)]
struct Spec {
    providers: Vec<String>,
    disabled: Option<bool>,
    sampling: Option<f64>,
    custom_tags: BTreeMap<String, telemetry::CustomTag>,
    istio_tags: Option<bool>,
}

impl Spec {
    fn apply(&mut self, t: &telemetry::Tracing) {
        if !t.providers.is_empty() {
            self.providers = t.providers.iter().map(|p| p.name.clone()).collect();
        }
        if t.disable_span_reporting.is_some() {
            self.disabled = t.disable_span_reporting;
        }
        if t.random_sampling_percentage.is_some() {
            self.sampling = t.random_sampling_percentage;
        }
        if !t.custom_tags.is_empty() {
            self.custom_tags = t.custom_tags.clone();
        }
        if t.enable_istio_tags.is_some() {
            self.istio_tags = t.enable_istio_tags;
        }
    }
}

/// The Telemetry resources that apply to the proxy, in the order they merge: the root
/// namespace's without a selector (the mesh default), the proxy's namespace's without one, then
/// one in its namespace whose selector matches its labels. (Those with a `targetRef` are not
/// translated.)
pub(crate) fn applicable<'a>(ctx: &Ctx<'a>) -> Vec<&'a telemetry::Telemetry> {
    let proxy = ctx.proxy;
    let root = &ctx.config.mesh.root_namespace;
    let all: Vec<_> = ctx
        .config
        .telemetries()
        .filter(|(_, t)| t.target_ref.is_none() && t.target_refs.is_empty())
        .collect();
    let mesh = all
        .iter()
        .find(|(m, t)| namespace_of(m) == root && t.selector.is_none());
    let namespace = all.iter().find(|(m, t)| {
        namespace_of(m) == proxy.namespace && namespace_of(m) != root && t.selector.is_none()
    });
    let workload = all.iter().find(|(m, t)| {
        namespace_of(m) == proxy.namespace
            && t.selector.as_ref().is_some_and(|s| {
                s.match_labels
                    .iter()
                    .all(|(k, v)| proxy.labels.get(k) == Some(v))
            })
    });
    [mesh, namespace, workload]
        .into_iter()
        .flatten()
        .map(|(_, t)| *t)
        .collect()
}

/// The client and server specs of a proxy; `None` when no Telemetry applies.
fn specs(ctx: &Ctx<'_>) -> Option<(Spec, Spec)> {
    let applicable = applicable(ctx);
    if applicable.is_empty() {
        return None;
    }
    let (mut client, mut server) = (Spec::default(), Spec::default());
    for t in applicable {
        for tracing in &t.tracing {
            let mode = tracing
                .match_
                .as_ref()
                .and_then(|m| m.mode)
                .unwrap_or_default();
            if mode != WorkloadMode::SERVER {
                client.apply(tracing);
            }
            if mode != WorkloadMode::CLIENT {
                server.apply(tracing);
            }
        }
    }
    Some((client, server))
}

/// The connection manager's `tracing` for `class`, or `None` when its requests are not traced.
pub(crate) fn hcm_tracing(ctx: &Ctx<'_>, class: Class) -> Option<Tracing> {
    ctx.tracing.get_or_init(|| {
        let build = |client: bool| {
            let (c, s) = match specs(ctx) {
                Some(specs) => specs,
                // No Telemetry: MeshConfig's default providers, if any.
                None if !ctx.config.mesh.tracing.default_providers.is_empty() => {
                    (Spec::default(), Spec::default())
                }
                None => return None,
            };
            let spec = if client { c } else { s };
            build(ctx, &spec)
        };
        [build(true), build(false)]
    })[usize::from(class == Class::Inbound)]
    .clone()
    .map(|mut t| {
        if class == Class::Gateway {
            t.spawn_upstream_span = Some(BoolValue { value: true });
        }
        t
    })
}

fn build(ctx: &Ctx<'_>, spec: &Spec) -> Option<Tracing> {
    if spec.disabled == Some(true) {
        return None;
    }
    let mesh = &ctx.config.mesh;
    let name = spec
        .providers
        .first()
        .or(mesh.tracing.default_providers.first())?;
    let warn = |why: String| {
        tracing::warn!(proxy = %ctx.proxy.id, provider = %name, "tracing is off for this proxy: {why}");
    };
    let Some(provider) = mesh.extension_providers.iter().find(|p| &p.name == name) else {
        warn(format!(
            "no extension provider {name:?} in the mesh config (--mesh-config)"
        ));
        return None;
    };
    let otel = match &provider.provider {
        Provider::Opentelemetry(o) => o,
        Provider::Other { kind, .. } => {
            warn(format!(
                "the provider is {kind}: Strait translates only opentelemetry tracing providers"
            ));
            return None;
        }
        _ => {
            warn("the provider is not a tracing provider".into());
            return None;
        }
    };
    let (host, cluster) = match collector_cluster(ctx, otel) {
        Ok(c) => c,
        Err(why) => {
            warn(why);
            return None;
        }
    };
    let workload = strait_telemetry::Workload::from_labels(
        &ctx.proxy.workload,
        &ctx.proxy.namespace,
        &ctx.proxy.labels,
        strait_telemetry::workload::DEFAULT_CLUSTER_ID,
    );
    let mut config = OpenTelemetryConfig {
        service_name: format!("{}.{}", workload.canonical_service, workload.namespace),
        ..Default::default()
    };
    match &otel.http {
        Some(http) => {
            let path = if http.path.is_empty() {
                OTLP_HTTP_PATH
            } else {
                &http.path
            };
            config.http_service = Some(HttpService {
                http_uri: Some(HttpUri {
                    uri: format!("http://{host}{path}"),
                    timeout: Some(http.timeout.as_ref().map_or(
                        PbDuration {
                            seconds: OTLP_HTTP_TIMEOUT_SECS,
                            nanos: 0,
                        },
                        pb_duration,
                    )),
                    http_upstream_type: Some(http_uri::HttpUpstreamType::Cluster(cluster)),
                }),
                request_headers_to_add: http
                    .headers
                    .iter()
                    .map(|h| HeaderValueOption {
                        header: Some(HeaderValue {
                            key: h.name.clone(),
                            value: h.resolved(),
                            ..Default::default()
                        }),
                        append_action:
                            header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            });
        }
        None => {
            let grpc = otel.grpc.clone().unwrap_or_default();
            config.grpc_service = Some(GrpcService {
                target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
                    grpc_service::EnvoyGrpc {
                        cluster_name: cluster,
                        authority: host,
                        ..Default::default()
                    },
                )),
                timeout: grpc.timeout.as_ref().map(pb_duration),
                initial_metadata: grpc
                    .initial_metadata
                    .iter()
                    .map(|h| HeaderValue {
                        key: h.name.clone(),
                        value: h.resolved(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            });
        }
    }
    let sampling = spec
        .sampling
        .or(mesh.tracing.sampling.map(|p| p.get()))
        .unwrap_or(DEFAULT_SAMPLING);
    let mut tags = Vec::new();
    if spec.istio_tags != Some(false) {
        let literal = |tag: &str, value: &str| CustomTag {
            tag: tag.to_string(),
            r#type: Some(custom_tag::Type::Literal(custom_tag::Literal {
                value: value.to_string(),
            })),
        };
        tags.push(literal(
            "istio.canonical_revision",
            &workload.canonical_revision,
        ));
        tags.push(literal(
            "istio.canonical_service",
            &workload.canonical_service,
        ));
        tags.push(literal("istio.mesh_id", "unknown"));
        tags.push(literal("istio.namespace", &workload.namespace));
        tags.push(literal("istio.cluster_id", &workload.cluster));
    }
    for (tag, t) in &spec.custom_tags {
        let r#type = if let Some(l) = &t.literal {
            custom_tag::Type::Literal(custom_tag::Literal {
                value: l.value.clone(),
            })
        } else if let Some(e) = &t.environment {
            custom_tag::Type::Environment(custom_tag::Environment {
                name: e.name.clone(),
                default_value: e.default_value.clone(),
            })
        } else if let Some(h) = &t.header {
            custom_tag::Type::RequestHeader(custom_tag::Header {
                name: h.name.clone(),
                default_value: h.default_value.clone(),
            })
        } else {
            continue;
        };
        tags.push(CustomTag {
            tag: tag.clone(),
            r#type: Some(r#type),
        });
    }
    tags.sort_by(|a, b| a.tag.cmp(&b.tag));
    Some(Tracing {
        client_sampling: Some(Percent { value: 100.0 }),
        random_sampling: Some(Percent { value: sampling }),
        overall_sampling: Some(Percent { value: 100.0 }),
        max_path_tag_length: (otel.max_tag_length != 0).then_some(UInt32Value {
            value: otel.max_tag_length,
        }),
        custom_tags: tags,
        provider: Some(trace::Http {
            name: OPENTELEMETRY.to_string(),
            config_type: Some(trace::http::ConfigType::TypedConfig(pack_any(config))),
        }),
        ..Default::default()
    })
}

fn pb_duration(d: &strait_api::Duration) -> PbDuration {
    let nanos = d.as_nanos().max(0);
    PbDuration {
        seconds: i64::try_from(nanos / 1_000_000_000).unwrap_or(i64::MAX),
        nanos: i32::try_from(nanos % 1_000_000_000).unwrap_or(0),
    }
}

/// Istio's `LookupCluster` for the collector: `HOST` or `NAMESPACE/HOST`, a service the
/// registry knows and this proxy may reach, with the port; `(host, outbound|PORT||HOST)`.
fn collector_cluster(ctx: &Ctx<'_>, otel: &Opentelemetry) -> Result<(String, String), String> {
    let (namespace, host) = match otel.service.split_once('/') {
        Some((ns, host)) => (Some(ns), host),
        None => (None, otel.service.as_str()),
    };
    let svc = ctx
        .registry
        .services
        .get(host)
        .filter(|s| namespace.is_none_or(|ns| s.namespace == ns))
        .ok_or_else(|| {
            format!(
                "the collector's service {:?} is not in the registry (apply its Service or a \
                 ServiceEntry for it)",
                otel.service
            )
        })?;
    if svc.port(otel.port).is_none() {
        return Err(format!(
            "the collector's service {host} has no port {} (its ports: {:?})",
            otel.port,
            svc.ports.iter().map(|p| p.number).collect::<Vec<_>>()
        ));
    }
    if !(svc.visible_from(&ctx.proxy.namespace) && ctx.egress_allows(svc)) {
        return Err(format!(
            "the collector's service {host} is not visible to this proxy (exportTo or its \
             Sidecar's egress hosts)"
        ));
    }
    Ok((host.to_string(), outbound_cluster_name(otel.port, "", host)))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use strait_api::parse::{Outcome, parse_bytes};
    use strait_registry::{Registry, VipTable};
    use strait_xds_core::{CaptureMode, Proxy, ProxyRole};

    use super::*;
    use crate::{ConfigSnapshot, MeshConfig};

    const MESH: &str = "extensionProviders:\n- name: otel\n  opentelemetry: {service: otel.observability.svc.cluster.local, port: 4317}\n- name: otel-http\n  opentelemetry:\n    service: observability/otel.observability.svc.cluster.local\n    port: 4318\n    http: {path: /v1/traces, headers: [{name: x-k, value: v}]}\n- name: zipkin\n  zipkin: {service: z, port: 9411}\n";
    const COLLECTOR: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: otel, namespace: observability}\nspec:\n  ports: [{name: grpc, port: 4317}, {name: http, port: 4318}]\n";

    fn ctx_with<R>(yaml: &str, mesh_extra: &str, f: impl FnOnce(&Ctx<'_>) -> R) -> R {
        let text = format!("{COLLECTOR}---\n{yaml}");
        let resources: Vec<_> = parse_bytes("t.yaml", text.as_bytes())
            .into_iter()
            .map(|p| match p.outcome {
                Outcome::Resource(r) => *r,
                other => panic!("{other:?}"),
            })
            .collect();
        let registry = Registry::build(&resources, &mut VipTable::default(), "cluster.local");
        let file =
            strait_api::mesh_config::parse("mesh.yaml", &format!("{MESH}{mesh_extra}")).unwrap();
        let mesh = MeshConfig {
            extension_providers: Arc::new(file.config.extension_providers),
            tracing: file.config.tracing,
            ..MeshConfig::default()
        };
        let config = ConfigSnapshot::new(1, mesh, resources);
        let proxy = Proxy {
            id: "p".into(),
            role: ProxyRole::Sidecar,
            ip: "10.0.0.1".parse().unwrap(),
            workload: "frontend-v1".into(),
            namespace: "myapp".into(),
            labels: [("app", "frontend"), ("version", "v1")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            capture: CaptureMode::Iptables,
            service_account: "default".into(),
            app_address: None,
            mtls: false,
        };
        let ctx = Ctx::new(&config, &registry, &proxy);
        f(&ctx)
    }

    fn otel_config(t: &Tracing) -> OpenTelemetryConfig {
        let Some(trace::http::ConfigType::TypedConfig(any)) =
            &t.provider.as_ref().unwrap().config_type
        else {
            panic!()
        };
        prost::Message::decode(any.value.as_slice()).unwrap()
    }

    fn tags(t: &Tracing) -> Vec<&str> {
        t.custom_tags.iter().map(|t| t.tag.as_str()).collect()
    }

    #[test]
    fn nothing_is_traced_without_a_telemetry_or_a_default_provider() {
        ctx_with("", "", |ctx| {
            assert!(hcm_tracing(ctx, Class::Inbound).is_none());
            assert!(hcm_tracing(ctx, Class::Outbound).is_none());
        });
    }

    #[test]
    fn the_default_provider_and_meshconfig_sampling() {
        let extra =
            "defaultProviders: {tracing: [otel]}\ndefaultConfig: {tracing: {sampling: 10}}\n";
        ctx_with("", extra, |ctx| {
            let t = hcm_tracing(ctx, Class::Outbound).unwrap();
            assert_eq!(t.random_sampling.unwrap().value, 10.0);
            assert_eq!(t.client_sampling.unwrap().value, 100.0);
            assert!(t.spawn_upstream_span.is_none());
            let c = otel_config(&t);
            assert_eq!(c.service_name, "frontend.myapp");
            let Some(grpc_service::TargetSpecifier::EnvoyGrpc(g)) =
                c.grpc_service.unwrap().target_specifier
            else {
                panic!()
            };
            assert_eq!(
                g.cluster_name,
                "outbound|4317||otel.observability.svc.cluster.local"
            );
            assert_eq!(
                tags(&t),
                [
                    "istio.canonical_revision",
                    "istio.canonical_service",
                    "istio.cluster_id",
                    "istio.mesh_id",
                    "istio.namespace"
                ]
            );
            let g = hcm_tracing(ctx, Class::Gateway).unwrap();
            assert_eq!(g.spawn_upstream_span, Some(BoolValue { value: true }));
        });
    }

    /// Istio's telemetry-api-examples: a mesh default, a namespace override of the custom tags,
    /// and a workload that reports no spans; a CLIENT-only override of the sampling.
    #[test]
    fn telemetry_resources_merge_as_istio_merges_them() {
        let yaml = "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: mesh-default, namespace: istio-system}\nspec:\n  tracing:\n  - providers: [{name: otel-http}]\n    customTags: {foo: {literal: {value: bar}}}\n    randomSamplingPercentage: 100\n---\napiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: namespace-override, namespace: myapp}\nspec:\n  tracing:\n  - customTags: {userId: {header: {name: userId, defaultValue: unknown}}}\n  - match: {mode: CLIENT}\n    randomSamplingPercentage: 0\n";
        ctx_with(yaml, "", |ctx| {
            let server = hcm_tracing(ctx, Class::Inbound).unwrap();
            assert_eq!(server.random_sampling.unwrap().value, 100.0);
            assert!(tags(&server).contains(&"userId"));
            assert!(!tags(&server).contains(&"foo"));
            let http = otel_config(&server).http_service.unwrap();
            let uri = http.http_uri.unwrap();
            assert_eq!(
                uri.uri,
                "http://otel.observability.svc.cluster.local/v1/traces"
            );
            assert_eq!(
                http.request_headers_to_add[0].header.as_ref().unwrap().key,
                "x-k"
            );
            let client = hcm_tracing(ctx, Class::Outbound).unwrap();
            assert_eq!(client.random_sampling.unwrap().value, 0.0);
        });
        let off = format!(
            "{yaml}---\napiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: workload-override, namespace: myapp}}\nspec:\n  selector: {{matchLabels: {{app: frontend}}}}\n  tracing:\n  - disableSpanReporting: true\n"
        );
        ctx_with(&off, "", |ctx| {
            assert!(hcm_tracing(ctx, Class::Inbound).is_none());
        });
    }

    #[test]
    fn a_provider_strait_does_not_translate_or_cannot_reach_traces_nothing() {
        let zipkin = "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: mesh-default, namespace: istio-system}\nspec:\n  tracing:\n  - providers: [{name: zipkin}]\n";
        ctx_with(zipkin, "", |ctx| {
            assert!(hcm_tracing(ctx, Class::Inbound).is_none())
        });
        let missing = "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: mesh-default, namespace: istio-system}\nspec:\n  tracing:\n  - providers: [{name: nope}]\n";
        ctx_with(missing, "", |ctx| {
            assert!(hcm_tracing(ctx, Class::Inbound).is_none())
        });
    }
}
