//! The CUSTOM action: Envoy's `envoy.filters.http.ext_authz`, triggered only when a CUSTOM rule
//! matches, the way Istio's builder (`pilot/pkg/security/authz/builder`, `extauthz.go`) makes it:
//!
//! - An `envoy.filters.http.rbac` filter with the CUSTOM rules as DENY *shadow* rules (stat
//!   prefix `istio_ext_authz_`), named `istio-ext-authz-PROVIDER-ns[NS]-policy[NAME]-rule[I]`: it
//!   never refuses, it leaves `istio_ext_authz_shadow_effective_policy_id` in the dynamic
//!   metadata when a rule matches.
//! - Then the provider's `envoy.filters.http.ext_authz`, whose `filter_enabled_metadata` asks for
//!   that metadata key with the prefix `istio-ext-authz-PROVIDER-`: only requests a CUSTOM rule
//!   matched are sent to the authorizer.
//! - The provider comes from MeshConfig's `extensionProviders`: `envoyExtAuthzGrpc` becomes a
//!   `grpc_service` on the cluster `outbound|PORT||HOST` (authority with `|` replaced by `_.`,
//!   as Istio does), `envoyExtAuthzHttp` an `http_service` with its server URI on that cluster,
//!   `pathPrefix`, the headers to send (`includeRequestHeadersInCheck`, exact names, `*`
//!   prefix/suffix, case-insensitive), `includeAdditionalHeadersInCheck`, and the headers to pass
//!   on (`headersToUpstreamOnAllow`, `headersToDownstreamOnDeny`, `headersToDownstreamOnAllow`).
//!   Both: `timeout` (600s by default), `failOpen`, `statusOnError`, `includeRequestBodyInCheck`.
//! - A provider that is not defined, not an ext_authz provider, whose service the registry does
//!   not know, or several providers for one workload: Istio's fail-closed answer, an enforced
//!   DENY RBAC filter with the CUSTOM rules (`...-deny-due-to-bad-CUSTOM-action`).
//! - TCP ports: a gRPC provider's checks on TCP (Envoy's network ext_authz) are not translated;
//!   the CUSTOM rules that apply to a TCP port are enforced as DENY instead (fail closed).

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::{
    ApiVersion, GrpcService, HeaderValue, HttpUri, grpc_service, http_uri,
};
use envoy_types::pb::envoy::config::listener::v3::Filter;
use envoy_types::pb::envoy::config::rbac::v3 as rbac;
use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3::{
    AuthorizationRequest, AuthorizationResponse, BufferSettings, ExtAuthz, HttpService, ext_authz,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    ListStringMatcher, MetadataMatcher, StringMatcher, ValueMatcher, metadata_matcher,
    string_matcher, value_matcher,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::protobuf::Duration as PbDuration;
use envoy_types::util::pack_any;
use strait_api::ObjectMeta;
use strait_api::mesh_config::{ExtAuthzGrpc, ExtAuthzHttp, Provider, RequestBody};
use strait_api::security::authorization_policy::AuthorizationPolicy;
use strait_registry::Registry;
use strait_xds_core::names::outbound_cluster_name;

use super::authz::{self, Built};
use crate::ConfigSnapshot;
use crate::snapshot::namespace_of;

pub const HTTP_EXT_AUTHZ: &str = "envoy.filters.http.ext_authz";
/// The shadow rules' stat prefix, which also prefixes their metadata keys.
pub const SHADOW_PREFIX: &str = "istio_ext_authz_";
/// What a CUSTOM rule's policy name starts with.
pub const MATCH_PREFIX: &str = "istio-ext-authz";
const BAD_CUSTOM_SUFFIX: &str = "-deny-due-to-bad-CUSTOM-action";
/// Istio's default check timeout.
const DEFAULT_TIMEOUT_SECS: i64 = 600;

type Listed<'a> = (&'a ObjectMeta, &'a AuthorizationPolicy);

/// The CUSTOM policies' filters for one workload: HTTP filters (shadow RBAC + ext_authz per
/// provider, or a DENY RBAC when the provider cannot be used) and network filters for its TCP
/// ports.
#[derive(Default)]
pub struct Custom {
    pub http: Vec<HttpFilter>,
    pub tcp: Vec<Filter>,
}

pub fn build(config: &ConfigSnapshot, registry: &Registry, custom: &[Listed<'_>]) -> Custom {
    let mut out = Custom::default();
    if custom.is_empty() {
        return out;
    }
    let mut by_provider: BTreeMap<&str, Vec<Listed<'_>>> = BTreeMap::new();
    for (meta, p) in custom {
        let name = p.provider.as_ref().map_or("", |p| p.name.as_str());
        by_provider.entry(name).or_default().push((*meta, *p));
    }
    let several = by_provider.len() > 1;
    for (provider, list) in &by_provider {
        let prefix = format!("{MATCH_PREFIX}-{provider}-");
        let resolved = if several {
            Err(format!(
                "only one CUSTOM provider can be used per workload, found {:?}",
                by_provider.keys().collect::<Vec<_>>()
            ))
        } else {
            resolve(config, registry, provider)
        };
        // TCP: the CUSTOM rules enforced as DENY (network ext_authz is not translated).
        let tcp = authz::build_named(list, rbac::rbac::Action::Deny, true, &prefix);
        out.tcp.extend(authz::network_filter(&tcp));
        match resolved {
            Ok(filter) => {
                let built = authz::build_named(list, rbac::rbac::Action::Deny, false, &prefix);
                // Enforced and dry-run CUSTOM policies both only trigger the check.
                let mut shadow = built.rules.clone().or(built.shadow.clone());
                if let (Some(s), Some(dry)) = (&mut shadow, &built.shadow)
                    && built.rules.is_some()
                {
                    s.policies.extend(dry.policies.clone());
                }
                out.http.push(authz::http_filter(
                    &Built {
                        rules: None,
                        shadow,
                    },
                    SHADOW_PREFIX,
                ));
                out.http.push(ext_authz_filter(filter, &prefix));
            }
            Err(why) => {
                tracing::warn!(
                    provider = %provider,
                    policies = %list
                        .iter()
                        .map(|(m, _)| format!("{}/{}", namespace_of(m), m.name))
                        .collect::<Vec<_>>()
                        .join(", "),
                    "CUSTOM authorization cannot use its provider, its rules deny instead: {why}"
                );
                let mut built = authz::build_named(list, rbac::rbac::Action::Deny, false, &prefix);
                let rules = built.rules.take().or(built.shadow.take()).map(|mut r| {
                    r.policies = r
                        .policies
                        .into_iter()
                        .map(|(k, v)| (format!("{k}{BAD_CUSTOM_SUFFIX}"), v))
                        .collect();
                    r
                });
                out.http.push(authz::http_filter(
                    &Built {
                        rules,
                        shadow: None,
                    },
                    "",
                ));
            }
        }
    }
    out
}

/// The provider's ext_authz config (without `filter_enabled_metadata`), or why it cannot be
/// used.
fn resolve(config: &ConfigSnapshot, registry: &Registry, name: &str) -> Result<ExtAuthz, String> {
    let available = || {
        config
            .mesh
            .extension_providers
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
    };
    let p = config
        .mesh
        .extension_providers
        .iter()
        .find(|p| p.name == name)
        .ok_or_else(|| {
            format!(
                "no extension provider {name:?} in the mesh config (--mesh-config); available: {:?}",
                available()
            )
        })?;
    match &p.provider {
        Provider::EnvoyExtAuthzGrpc(g) => grpc(registry, g),
        Provider::EnvoyExtAuthzHttp(h) => http(registry, h),
        Provider::Other { kind, .. } => Err(format!(
            "the extension provider {name:?} is {kind}, not envoyExtAuthzGrpc or envoyExtAuthzHttp"
        )),
        Provider::Opentelemetry(_) => Err(format!(
            "the extension provider {name:?} is opentelemetry, not envoyExtAuthzGrpc or envoyExtAuthzHttp"
        )),
    }
}

/// Istio's `LookupCluster`: `HOST` or `NAMESPACE/HOST`, a service the registry knows (a
/// Service or a ServiceEntry); its cluster `outbound|PORT||HOST`.
fn cluster(registry: &Registry, service: &str, port: u16) -> Result<(String, String), String> {
    let (namespace, host) = match service.split_once('/') {
        Some((ns, host)) => (Some(ns), host),
        None => (None, service),
    };
    let svc = registry
        .services
        .get(host)
        .filter(|s| namespace.is_none_or(|ns| s.namespace == ns))
        .ok_or_else(|| {
            format!(
                "the authorizer's service {service:?} is not in the registry (apply its Service \
                 or a ServiceEntry for it)"
            )
        })?;
    if svc.port(port).is_none() {
        return Err(format!(
            "the authorizer's service {host} has no port {port} (its ports: {:?})",
            svc.ports.iter().map(|p| p.number).collect::<Vec<_>>()
        ));
    }
    Ok((host.to_string(), outbound_cluster_name(port, "", host)))
}

fn timeout(t: Option<&strait_api::Duration>) -> PbDuration {
    match t {
        Some(d) => {
            let n = d.as_nanos().max(0);
            PbDuration {
                seconds: (n / 1_000_000_000) as i64,
                nanos: (n % 1_000_000_000) as i32,
            }
        }
        None => PbDuration {
            seconds: DEFAULT_TIMEOUT_SECS,
            nanos: 0,
        },
    }
}

fn status(code: Option<&str>) -> Option<HttpStatus> {
    code.and_then(|c| c.parse::<i32>().ok())
        .map(|code| HttpStatus { code })
}

fn body(b: Option<&RequestBody>) -> Option<BufferSettings> {
    b.map(|b| BufferSettings {
        max_request_bytes: b.max_request_bytes,
        allow_partial_message: b.allow_partial_message,
        pack_as_bytes: b.pack_as_bytes,
    })
}

fn grpc(registry: &Registry, g: &ExtAuthzGrpc) -> Result<ExtAuthz, String> {
    let (_, cluster) = cluster(registry, &g.service, g.port)?;
    Ok(ExtAuthz {
        transport_api_version: ApiVersion::V3 as i32,
        failure_mode_allow: g.fail_open,
        status_on_error: status(g.status_on_error.as_deref()),
        clear_route_cache: g.clear_route_cache,
        with_request_body: body(g.include_request_body_in_check.as_ref()),
        services: Some(ext_authz::Services::GrpcService(GrpcService {
            timeout: Some(timeout(g.timeout.as_ref())),
            target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
                grpc_service::EnvoyGrpc {
                    authority: cluster.replace('|', "_."),
                    cluster_name: cluster,
                    ..Default::default()
                },
            )),
            ..Default::default()
        })),
        ..Default::default()
    })
}

/// Istio's header list: `*x` a suffix, `x*` a prefix, else the exact name; case-insensitive.
fn headers(names: &[String]) -> Option<ListStringMatcher> {
    if names.is_empty() {
        return None;
    }
    let patterns = names
        .iter()
        .map(|h| {
            let pattern = if let Some(s) = h.strip_prefix('*') {
                string_matcher::MatchPattern::Suffix(s.to_string())
            } else if let Some(p) = h.strip_suffix('*') {
                string_matcher::MatchPattern::Prefix(p.to_string())
            } else {
                string_matcher::MatchPattern::Exact(h.clone())
            };
            StringMatcher {
                match_pattern: Some(pattern),
                ignore_case: true,
            }
        })
        .collect();
    Some(ListStringMatcher { patterns })
}

fn http(registry: &Registry, h: &ExtAuthzHttp) -> Result<ExtAuthz, String> {
    let (host, cluster) = cluster(registry, &h.service, h.port)?;
    let headers_to_add: Vec<HeaderValue> = h
        .include_additional_headers_in_check
        .iter()
        .map(|(k, v)| HeaderValue {
            key: k.clone(),
            value: v.clone(),
            ..Default::default()
        })
        .collect();
    let allowed = headers(h.request_headers());
    let authorization_request = (!headers_to_add.is_empty()).then(|| AuthorizationRequest {
        headers_to_add,
        ..Default::default()
    });
    let authorization_response = (!h.headers_to_upstream_on_allow.is_empty()
        || !h.headers_to_downstream_on_deny.is_empty()
        || !h.headers_to_downstream_on_allow.is_empty())
    .then(|| AuthorizationResponse {
        allowed_upstream_headers: headers(&h.headers_to_upstream_on_allow),
        allowed_client_headers: headers(&h.headers_to_downstream_on_deny),
        allowed_client_headers_on_success: headers(&h.headers_to_downstream_on_allow),
        ..Default::default()
    });
    Ok(ExtAuthz {
        transport_api_version: ApiVersion::V3 as i32,
        failure_mode_allow: h.fail_open,
        status_on_error: status(h.status_on_error.as_deref()),
        clear_route_cache: h.clear_route_cache,
        with_request_body: body(h.include_request_body_in_check.as_ref()),
        allowed_headers: allowed,
        services: Some(ext_authz::Services::HttpService(HttpService {
            server_uri: Some(HttpUri {
                uri: format!("http://{host}"),
                timeout: Some(timeout(h.timeout.as_ref())),
                http_upstream_type: Some(http_uri::HttpUpstreamType::Cluster(cluster)),
            }),
            path_prefix: h.path_prefix.clone(),
            authorization_request,
            authorization_response,
            ..Default::default()
        })),
        ..Default::default()
    })
}

fn ext_authz_filter(mut filter: ExtAuthz, prefix: &str) -> HttpFilter {
    filter.filter_enabled_metadata = Some(MetadataMatcher {
        filter: authz::HTTP_RBAC.to_string(),
        path: vec![metadata_matcher::PathSegment {
            segment: Some(metadata_matcher::path_segment::Segment::Key(format!(
                "{SHADOW_PREFIX}shadow_effective_policy_id"
            ))),
        }],
        value: Some(ValueMatcher {
            match_pattern: Some(value_matcher::MatchPattern::StringMatch(StringMatcher {
                match_pattern: Some(string_matcher::MatchPattern::Prefix(prefix.to_string())),
                ignore_case: false,
            })),
        }),
        ..Default::default()
    });
    HttpFilter {
        name: HTTP_EXT_AUTHZ.to_string(),
        config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(filter))),
        ..Default::default()
    }
}
