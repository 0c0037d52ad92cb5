//! An HTTP connection manager's `tracing` with the `envoy.tracers.opentelemetry` provider:
//! the sampling, the span tags, whether a gateway spawns a span per upstream request, and where
//! the spans go (OTLP over gRPC or HTTP, to a cluster of the config). Fields strait-proxy does
//! not honour are refused when set (docs/xds-support.md, "Tracing").

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{grpc_service, http_uri};
use envoy_types::pb::envoy::config::trace::v3::{OpenTelemetryConfig, tracing as trace};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::Tracing as TracingPb;
use envoy_types::pb::envoy::r#type::tracing::v3::custom_tag;
use serde::Serialize;

use super::invalid::{At, Refusal, Segment, refuse_if};
use super::proto::{decode, duration};

pub(crate) const OPENTELEMETRY: &str = "envoy.tracers.opentelemetry";
const OPENTELEMETRY_TYPE: &str = "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig";
/// Envoy's `max_path_tag_length` default.
const DEFAULT_MAX_PATH_TAG_LENGTH: usize = 256;
/// The export timeout when the gRPC service names none.
const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tracing {
    /// `random_sampling`: the percentage of requests without a caller's decision that are
    /// sampled (Envoy's default 100).
    pub random_sampling: f64,
    /// `spawn_upstream_span`: a client span per upstream request, under the connection
    /// manager's span (which is then a server span).
    pub spawn_upstream_span: bool,
    /// `max_path_tag_length`: `http.url` is cut to this many characters.
    pub max_path_tag_length: usize,
    /// `custom_tags`, in order.
    pub tags: Vec<(String, Tag)>,
    /// Where the spans go.
    pub exporter: std::sync::Arc<Exporter>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Tag {
    /// A literal, or an environment variable read when the config came.
    Value(String),
    /// A request header, with the value for when it is missing (no tag when that is empty).
    Header { name: String, default: String },
}

/// An OTLP exporter: the resource's `service.name` and the collector.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Exporter {
    pub service_name: String,
    pub cluster: String,
    /// The `:authority` (or `host`) of export requests.
    pub authority: String,
    pub transport: Transport,
    /// Headers (HTTP) or initial metadata (gRPC) each export request carries.
    pub headers: Vec<(String, String)>,
    #[serde(serialize_with = "super::secs::one")]
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub enum Transport {
    /// OTLP/gRPC (`TraceService/Export`).
    Grpc,
    /// OTLP/HTTP with protobuf, to this path.
    Http { path: String },
}

pub(crate) fn tracing(t: &TracingPb) -> Result<Tracing, Refusal> {
    refuse_if(t.verbose, "verbose")?;
    let hundred = |p: Option<&envoy_types::pb::envoy::r#type::v3::Percent>| {
        p.is_none_or(|p| p.value >= 100.0)
    };
    // Client sampling (`x-client-trace-id`) and overall sampling are Istio's 100%; anything
    // else would need x-client-trace-id and a second dice roll, which strait-proxy does not do.
    if !hundred(t.client_sampling.as_ref()) {
        return Err(Refusal::unsupported_value(
            "client_sampling",
            "below 100% (x-client-trace-id sampling)",
        ));
    }
    if !hundred(t.overall_sampling.as_ref()) {
        return Err(Refusal::unsupported_value("overall_sampling", "below 100%"));
    }
    let random_sampling = t
        .random_sampling
        .as_ref()
        .map_or(100.0, |p| p.value.clamp(0.0, 100.0));
    let Some(provider) = &t.provider else {
        return Err(Refusal::unsupported_value(
            "provider",
            "none (strait-proxy has no bootstrap tracer: name envoy.tracers.opentelemetry)",
        ));
    };
    let exporter = opentelemetry(provider).under("provider")?;
    let mut tags = Vec::with_capacity(t.custom_tags.len());
    for (i, tag) in t.custom_tags.iter().enumerate() {
        let at = |r: Refusal| r.under("custom_tags").at(Segment::Index(i));
        let value = match &tag.r#type {
            Some(custom_tag::Type::Literal(l)) => Tag::Value(l.value.clone()),
            Some(custom_tag::Type::Environment(e)) => {
                Tag::Value(std::env::var(&e.name).unwrap_or_else(|_| e.default_value.clone()))
            }
            Some(custom_tag::Type::RequestHeader(h)) => Tag::Header {
                name: h.name.to_ascii_lowercase(),
                default: h.default_value.clone(),
            },
            Some(custom_tag::Type::Metadata(_)) => {
                return Err(at(Refusal::unsupported("metadata")));
            }
            Some(custom_tag::Type::Value(_)) => return Err(at(Refusal::unsupported("value"))),
            None => return Err(at(Refusal::missing("type"))),
        };
        tags.push((tag.tag.clone(), value));
    }
    Ok(Tracing {
        random_sampling,
        spawn_upstream_span: t.spawn_upstream_span.as_ref().is_some_and(|b| b.value),
        max_path_tag_length: t
            .max_path_tag_length
            .as_ref()
            .map_or(DEFAULT_MAX_PATH_TAG_LENGTH, |v| v.value as usize),
        tags,
        exporter: std::sync::Arc::new(exporter),
    })
}

fn opentelemetry(provider: &trace::Http) -> Result<Exporter, Refusal> {
    if provider.name != OPENTELEMETRY {
        return Err(Refusal::unsupported_value(
            "name",
            format!("{:?} (only {OPENTELEMETRY})", provider.name),
        ));
    }
    let Some(trace::http::ConfigType::TypedConfig(any)) = &provider.config_type else {
        return Err(Refusal::missing("typed_config"));
    };
    let c: OpenTelemetryConfig =
        decode(any, OPENTELEMETRY_TYPE).map_err(|r| r.under("typed_config"))?;
    let at = |r: Refusal| r.under("typed_config");
    refuse_if(c.exporter.is_some(), "exporter").map_err(at)?;
    refuse_if(c.sampler.is_some(), "sampler").map_err(at)?;
    // Resource detectors add resource attributes; strait-proxy sends service.name only.
    let service_name = if c.service_name.is_empty() {
        "unknown_service:strait-proxy".to_string()
    } else {
        c.service_name.clone()
    };
    match (&c.grpc_service, &c.http_service) {
        (Some(g), None) => {
            let Some(grpc_service::TargetSpecifier::EnvoyGrpc(e)) = &g.target_specifier else {
                return Err(at(Refusal::unsupported_value(
                    "grpc_service",
                    "google_grpc (name a cluster with envoy_grpc)",
                )));
            };
            Ok(Exporter {
                service_name,
                authority: if e.authority.is_empty() {
                    e.cluster_name.clone()
                } else {
                    e.authority.clone()
                },
                cluster: e.cluster_name.clone(),
                transport: Transport::Grpc,
                headers: g
                    .initial_metadata
                    .iter()
                    .map(|h| (h.key.to_ascii_lowercase(), h.value.clone()))
                    .collect(),
                timeout: g.timeout.as_ref().map_or(DEFAULT_EXPORT_TIMEOUT, duration),
            })
        }
        (None, Some(h)) => {
            let Some(uri) = &h.http_uri else {
                return Err(at(Refusal::missing("http_service.http_uri")));
            };
            let Some(http_uri::HttpUpstreamType::Cluster(cluster)) = &uri.http_upstream_type else {
                return Err(at(Refusal::missing("http_service.http_uri.cluster")));
            };
            let rest = uri
                .uri
                .split_once("://")
                .map_or(uri.uri.as_str(), |(_, r)| r);
            let (authority, path) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/"),
            };
            Ok(Exporter {
                service_name,
                cluster: cluster.clone(),
                authority: authority.to_string(),
                transport: Transport::Http {
                    path: path.to_string(),
                },
                headers: h
                    .request_headers_to_add
                    .iter()
                    .filter_map(|o| o.header.as_ref())
                    .map(|h| (h.key.to_ascii_lowercase(), h.value.clone()))
                    .collect(),
                timeout: uri
                    .timeout
                    .as_ref()
                    .map_or(DEFAULT_EXPORT_TIMEOUT, duration),
            })
        }
        _ => Err(at(Refusal::rule(
            "grpc_service",
            "exactly one of grpc_service and http_service",
        ))),
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::core::v3::{GrpcService, HttpService, HttpUri};
    use envoy_types::pb::envoy::r#type::tracing::v3::CustomTag;
    use envoy_types::pb::envoy::r#type::v3::Percent;
    use envoy_types::pb::google::protobuf::BoolValue;
    use envoy_types::util::pack_any;

    use super::*;

    fn pb(config: OpenTelemetryConfig) -> TracingPb {
        TracingPb {
            random_sampling: Some(Percent { value: 10.0 }),
            client_sampling: Some(Percent { value: 100.0 }),
            spawn_upstream_span: Some(BoolValue { value: true }),
            custom_tags: vec![CustomTag {
                tag: "t".into(),
                r#type: Some(custom_tag::Type::Literal(custom_tag::Literal {
                    value: "v".into(),
                })),
            }],
            provider: Some(trace::Http {
                name: OPENTELEMETRY.into(),
                config_type: Some(trace::http::ConfigType::TypedConfig(pack_any(config))),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn opentelemetry_over_grpc_and_http() {
        let grpc = OpenTelemetryConfig {
            service_name: "reviews.default".into(),
            grpc_service: Some(GrpcService {
                target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
                    grpc_service::EnvoyGrpc {
                        cluster_name: "outbound|4317||otel".into(),
                        authority: "otel".into(),
                        ..Default::default()
                    },
                )),
                ..Default::default()
            }),
            ..Default::default()
        };
        let t = tracing(&pb(grpc)).unwrap();
        assert_eq!(t.random_sampling, 10.0);
        assert!(t.spawn_upstream_span);
        assert_eq!(t.tags, [("t".to_string(), Tag::Value("v".into()))]);
        assert_eq!(t.exporter.transport, Transport::Grpc);
        assert_eq!(t.exporter.cluster, "outbound|4317||otel");
        let http = OpenTelemetryConfig {
            http_service: Some(HttpService {
                http_uri: Some(HttpUri {
                    uri: "http://otel.observability/v1/traces".into(),
                    http_upstream_type: Some(http_uri::HttpUpstreamType::Cluster("c".into())),
                    timeout: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let t = tracing(&pb(http)).unwrap();
        assert_eq!(t.exporter.authority, "otel.observability");
        assert_eq!(
            t.exporter.transport,
            Transport::Http {
                path: "/v1/traces".into()
            }
        );
        assert_eq!(t.exporter.service_name, "unknown_service:strait-proxy");
    }

    #[test]
    fn what_strait_proxy_cannot_honour_is_refused() {
        let mut zipkin = pb(OpenTelemetryConfig::default());
        zipkin.provider.as_mut().unwrap().name = "envoy.tracers.zipkin".into();
        let e = tracing(&zipkin).unwrap_err();
        assert_eq!(e.path().to_string(), "provider.name", "{e:?}");
        let mut client = pb(OpenTelemetryConfig::default());
        client.client_sampling = Some(Percent { value: 5.0 });
        assert!(tracing(&client).is_err());
        let neither = pb(OpenTelemetryConfig::default());
        assert!(tracing(&neither).is_err());
    }
}
