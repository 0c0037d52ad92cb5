//! `envoy.filters.http.ext_authz`: the external authorizer strait-proxy asks before routing
//! (Istio's CUSTOM action). Converted from Envoy's `ExtAuthz`; the fields strait-proxy does not
//! honour are refused (NACK) when set, as docs/xds-support.md lists them.

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{grpc_service, http_uri};
use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3::{
    ExtAuthz as ExtAuthzPb, ext_authz,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    ListStringMatcher, MetadataMatcher, metadata_matcher, value_matcher,
};
use envoy_types::pb::google::protobuf::Any;
use serde::Serialize;

use super::invalid::{Refusal, Segment, refuse_if};
use super::proto::{decode, duration};
use super::route::{StringMatch, string_match};

pub(crate) const EXT_AUTHZ_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz";
/// Envoy's gRPC check timeout when the service names none.
const DEFAULT_GRPC_TIMEOUT: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExtAuthz {
    pub service: CheckService,
    /// `failure_mode_allow`: a check that fails (unreachable, timed out, malformed answer) lets
    /// the request through; otherwise it is refused with `status_on_error`.
    pub failure_mode_allow: bool,
    /// `status_on_error` (Envoy's default 403).
    pub status_on_error: u16,
    /// `filter_enabled_metadata`: the check runs only when this dynamic metadata string
    /// matches (Istio: a CUSTOM rule's shadow RBAC policy matched).
    pub enabled_metadata: Option<EnabledMetadata>,
    /// `allowed_headers`: the request headers sent to the authorizer (all when unset).
    pub allowed_headers: Option<Vec<NameMatch>>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EnabledMetadata {
    /// The metadata namespace (`envoy.filters.http.rbac`).
    pub filter: String,
    pub key: String,
    pub value: NameMatch,
}

/// A string matcher with its `ignore_case`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NameMatch {
    pub matcher: StringMatch,
    pub ignore_case: bool,
}

impl NameMatch {
    pub fn matches(&self, value: &str) -> bool {
        crate::routing::string_matches(&self.matcher, value, self.ignore_case)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum CheckService {
    /// `grpc_service.envoy_grpc`: `envoy.service.auth.v3.Authorization/Check` on a cluster.
    Grpc {
        cluster: String,
        /// The `:authority` of the check (the cluster name when empty).
        authority: String,
        #[serde(serialize_with = "super::secs::one")]
        timeout: Duration,
    },
    /// `http_service`: the request's method and path (after `path_prefix`) sent to a cluster.
    Http {
        cluster: String,
        /// `server_uri.uri`'s authority, the check's `Host`.
        host: String,
        #[serde(serialize_with = "super::secs::one")]
        timeout: Duration,
        path_prefix: String,
        /// `authorization_request.headers_to_add`.
        headers_to_add: Vec<(String, String)>,
        /// `authorization_response.allowed_upstream_headers`: the authorizer's headers added
        /// to the request when it allows (none when unset).
        allowed_upstream_headers: Option<Vec<NameMatch>>,
        /// `allowed_client_headers`: the authorizer's headers in the denial (all when unset).
        allowed_client_headers: Option<Vec<NameMatch>>,
        /// `allowed_client_headers_on_success`: the authorizer's headers added to the response
        /// when it allows (none when unset).
        allowed_client_headers_on_success: Option<Vec<NameMatch>>,
    },
}

fn list(l: &Option<ListStringMatcher>) -> Result<Option<Vec<NameMatch>>, Refusal> {
    let Some(l) = l else { return Ok(None) };
    l.patterns
        .iter()
        .enumerate()
        .map(|(i, p)| {
            Ok(NameMatch {
                matcher: string_match(p).map_err(|r| r.at(Segment::Index(i)))?,
                ignore_case: p.ignore_case,
            })
        })
        .collect::<Result<Vec<_>, Refusal>>()
        .map(Some)
        .map_err(|r| r.under("patterns"))
}

fn enabled(m: &MetadataMatcher) -> Result<EnabledMetadata, Refusal> {
    let [segment] = m.path.as_slice() else {
        return Err(Refusal::rule(
            "path",
            "one key (strait-proxy reads one level)",
        ));
    };
    let Some(metadata_matcher::path_segment::Segment::Key(key)) = &segment.segment else {
        return Err(Refusal::missing("path.key"));
    };
    refuse_if(m.invert, "invert")?;
    let value = match m.value.as_ref().and_then(|v| v.match_pattern.as_ref()) {
        Some(value_matcher::MatchPattern::StringMatch(s)) => NameMatch {
            matcher: string_match(s).map_err(|r| r.under("value.string_match"))?,
            ignore_case: s.ignore_case,
        },
        _ => {
            return Err(Refusal::unsupported_value(
                "value",
                "only string_match values are read",
            ));
        }
    };
    Ok(EnabledMetadata {
        filter: m.filter.clone(),
        key: key.clone(),
        value,
    })
}

pub(crate) fn ext_authz(any: &Any) -> Result<ExtAuthz, Refusal> {
    let f: ExtAuthzPb = decode(any, EXT_AUTHZ_TYPE)?;
    refuse_if(f.with_request_body.is_some(), "with_request_body")?;
    refuse_if(f.filter_enabled.is_some(), "filter_enabled")?;
    refuse_if(f.deny_at_disable.is_some(), "deny_at_disable")?;
    refuse_if(
        f.failure_mode_allow_header_add,
        "failure_mode_allow_header_add",
    )?;
    refuse_if(f.disallowed_headers.is_some(), "disallowed_headers")?;
    refuse_if(
        !f.metadata_context_namespaces.is_empty(),
        "metadata_context_namespaces",
    )?;
    refuse_if(f.include_peer_certificate, "include_peer_certificate")?;
    refuse_if(f.include_tls_session, "include_tls_session")?;
    refuse_if(f.shadow_mode, "shadow_mode")?;
    refuse_if(
        !f.typed_metadata_context_namespaces.is_empty(),
        "typed_metadata_context_namespaces",
    )?;
    refuse_if(
        !f.route_metadata_context_namespaces.is_empty(),
        "route_metadata_context_namespaces",
    )?;
    refuse_if(
        !f.route_typed_metadata_context_namespaces.is_empty(),
        "route_typed_metadata_context_namespaces",
    )?;
    refuse_if(
        f.decoder_header_mutation_rules.is_some(),
        "decoder_header_mutation_rules",
    )?;
    refuse_if(f.filter_metadata.is_some(), "filter_metadata")?;
    refuse_if(
        f.max_denied_response_body_bytes != 0,
        "max_denied_response_body_bytes",
    )?;
    let service = match &f.services {
        Some(ext_authz::Services::GrpcService(g)) => {
            refuse_if(
                !g.initial_metadata.is_empty(),
                "grpc_service.initial_metadata",
            )?;
            let Some(grpc_service::TargetSpecifier::EnvoyGrpc(e)) = &g.target_specifier else {
                return Err(Refusal::unsupported_value(
                    "grpc_service",
                    "only envoy_grpc (a cluster) is supported",
                ));
            };
            CheckService::Grpc {
                cluster: e.cluster_name.clone(),
                authority: e.authority.clone(),
                timeout: g.timeout.as_ref().map_or(DEFAULT_GRPC_TIMEOUT, duration),
            }
        }
        Some(ext_authz::Services::HttpService(h)) => {
            refuse_if(!h.path_override.is_empty(), "http_service.path_override")?;
            refuse_if(h.retry_policy.is_some(), "http_service.retry_policy")?;
            let uri = h
                .server_uri
                .as_ref()
                .ok_or_else(|| Refusal::missing("http_service.server_uri"))?;
            let Some(http_uri::HttpUpstreamType::Cluster(cluster)) = &uri.http_upstream_type else {
                return Err(Refusal::missing("http_service.server_uri.cluster"));
            };
            let host = uri
                .uri
                .split_once("://")
                .map_or(uri.uri.as_str(), |(_, rest)| rest)
                .split('/')
                .next()
                .unwrap_or_default()
                .to_string();
            let (mut headers_to_add, req) = (Vec::new(), h.authorization_request.as_ref());
            if let Some(r) = req {
                #[allow(deprecated)]
                let deprecated = r.allowed_headers.is_some();
                refuse_if(
                    deprecated,
                    "http_service.authorization_request.allowed_headers",
                )?;
                for hv in &r.headers_to_add {
                    headers_to_add.push((hv.key.to_ascii_lowercase(), hv.value.clone()));
                }
            }
            let resp = h.authorization_response.clone().unwrap_or_default();
            refuse_if(
                resp.allowed_upstream_headers_to_append.is_some(),
                "http_service.authorization_response.allowed_upstream_headers_to_append",
            )?;
            refuse_if(
                resp.dynamic_metadata_from_headers.is_some(),
                "http_service.authorization_response.dynamic_metadata_from_headers",
            )?;
            let under = |r: Refusal| r.under("http_service.authorization_response");
            CheckService::Http {
                cluster: cluster.clone(),
                host,
                timeout: uri.timeout.as_ref().map_or(DEFAULT_GRPC_TIMEOUT, duration),
                path_prefix: h.path_prefix.clone(),
                headers_to_add,
                allowed_upstream_headers: list(&resp.allowed_upstream_headers).map_err(under)?,
                allowed_client_headers: list(&resp.allowed_client_headers).map_err(under)?,
                allowed_client_headers_on_success: list(&resp.allowed_client_headers_on_success)
                    .map_err(under)?,
            }
        }
        None => return Err(Refusal::missing("services")),
    };
    Ok(ExtAuthz {
        service,
        failure_mode_allow: f.failure_mode_allow,
        status_on_error: match f.status_on_error.as_ref().map(|s| s.code) {
            None | Some(0) => 403,
            Some(c) => u16::try_from(c)
                .ok()
                .filter(|c| (100..=599).contains(c))
                .ok_or_else(|| Refusal::bad_value("status_on_error.code", c, "an HTTP status"))?,
        },
        enabled_metadata: f
            .filter_enabled_metadata
            .as_ref()
            .map(enabled)
            .transpose()
            .map_err(|r| r.under("filter_enabled_metadata"))?,
        allowed_headers: list(&f.allowed_headers).map_err(|r| r.under("allowed_headers"))?,
    })
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::core::v3::GrpcService;
    use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3::BufferSettings;
    use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, ValueMatcher};
    use envoy_types::util::pack_any;

    use super::*;

    fn grpc() -> ExtAuthzPb {
        ExtAuthzPb {
            services: Some(ext_authz::Services::GrpcService(GrpcService {
                target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
                    grpc_service::EnvoyGrpc {
                        cluster_name: "outbound|9000||ext-authz.foo.svc.cluster.local".into(),
                        ..Default::default()
                    },
                )),
                ..Default::default()
            })),
            filter_enabled_metadata: Some(MetadataMatcher {
                filter: "envoy.filters.http.rbac".into(),
                path: vec![metadata_matcher::PathSegment {
                    segment: Some(metadata_matcher::path_segment::Segment::Key(
                        "istio_ext_authz_shadow_effective_policy_id".into(),
                    )),
                }],
                value: Some(ValueMatcher {
                    match_pattern: Some(value_matcher::MatchPattern::StringMatch(StringMatcher {
                        match_pattern: Some(
                            envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern::Prefix(
                                "istio-ext-authz".into(),
                            ),
                        ),
                        ignore_case: false,
                    })),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn istios_grpc_provider_is_read_with_envoys_defaults() {
        let f = ext_authz(&pack_any(grpc())).unwrap();
        assert_eq!(f.status_on_error, 403, "Envoy's default");
        assert!(!f.failure_mode_allow, "fail closed by default");
        assert_eq!(
            f.service,
            CheckService::Grpc {
                cluster: "outbound|9000||ext-authz.foo.svc.cluster.local".into(),
                authority: String::new(),
                timeout: DEFAULT_GRPC_TIMEOUT,
            }
        );
        let m = f.enabled_metadata.unwrap();
        assert_eq!(m.key, "istio_ext_authz_shadow_effective_policy_id");
        assert!(
            m.value
                .matches("istio-ext-authz-p-ns[foo]-policy[a]-rule[0]")
        );
        assert!(!m.value.matches("ns[foo]-policy[a]-rule[0]"));
    }

    #[test]
    fn fields_strait_proxy_does_not_honour_are_refused_by_name() {
        let f = ExtAuthzPb {
            with_request_body: Some(BufferSettings::default()),
            ..grpc()
        };
        let e = ext_authz(&pack_any(f)).unwrap_err();
        assert!(e.path().to_string().contains("with_request_body"), "{e:?}");
    }
}
