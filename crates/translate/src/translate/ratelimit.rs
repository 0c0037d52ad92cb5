//! Strait's `LocalRateLimit` (`policy.strait.dev/v1`) as Envoy's
//! `envoy.filters.http.local_ratelimit` filter.
//!
//! - Which policy: those in the root namespace and the workload's namespace whose `selector` is
//!   empty or matches the workload's labels and whose `ports` (if any) name the port. Of these,
//!   one applies to a port, the most specific (as for Istio's PeerAuthentication and Telemetry):
//!   a workload policy (selector) of the workload's namespace, then its namespace-wide policy,
//!   then a workload policy of the root namespace, then the mesh-wide one; among equals the
//!   oldest (`creationTimestamp`), then the first by name.
//! - The filter goes after the authentication and authorization filters (jwt_authn, RBAC) and
//!   before the router, on the inbound HTTP chains of selected sidecars and the HTTP listeners of
//!   selected gateways. Its own config holds `spec.tokenBucket` (every request), enabled and
//!   enforced for 100% of requests, the status and the response headers; without a
//!   `tokenBucket` it is disabled and only the rules' routes limit.
//! - Each rule becomes a route on a sidecar's inbound route configuration, ahead of the
//!   catch-all, to the same cluster, whose `typed_per_filter_config` holds the rule's own
//!   bucket (Envoy then uses that config, and so that bucket, for the requests the route takes,
//!   instead of the filter's). Gateways, whose routes come from VirtualServices, get the
//!   `tokenBucket` only.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::{
    HeaderValue, HeaderValueOption, RuntimeFractionalPercent, header_value_option,
};
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit as EnvoyLocalRateLimit;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};
use envoy_types::pb::envoy::r#type::v3::{
    FractionalPercent, HttpStatus, TokenBucket as EnvoyTokenBucket, fractional_percent,
};
use envoy_types::pb::google::protobuf::{Any, Duration, UInt32Value};
use envoy_types::util::pack_any;
use strait_api::policy::{DEFAULT_STATUS, LocalRateLimit, TokenBucket};
use strait_api::{Kind, ObjectMeta, Spec};

use crate::ConfigSnapshot;
use crate::snapshot::namespace_of;

/// The filter's name (Envoy's well-known name), also the key of a route's per-filter config.
pub const LOCAL_RATELIMIT: &str = "envoy.filters.http.local_ratelimit";
/// The stat prefix: Envoy counts under `http_local_rate_limiter.http_local_rate_limit.*`.
pub const STAT_PREFIX: &str = "http_local_rate_limiter";

/// The LocalRateLimit that applies to `port` of a workload in `namespace` with `labels`.
pub fn policy_for<'a>(
    config: &'a ConfigSnapshot,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    port: u16,
) -> Option<(&'a ObjectMeta, &'a LocalRateLimit)> {
    let root = config.mesh.root_namespace.as_str();
    config
        .of(Kind::LocalRateLimit)
        .filter_map(|r| match &r.spec {
            Spec::LocalRateLimit(p) => Some((&r.metadata, p)),
            _ => None,
        })
        .filter(|(meta, p)| {
            let ns = namespace_of(meta);
            (ns == root || ns == namespace)
                && p.selector
                    .as_ref()
                    .is_none_or(|s| s.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v)))
                && (p.ports.is_empty() || p.ports.contains(&u32::from(port)))
        })
        .min_by_key(|(meta, p)| {
            let specificity = match (namespace_of(meta) == namespace, p.selector.is_some()) {
                (true, true) => 0,
                (true, false) => 1,
                (false, true) => 2,
                (false, false) => 3,
            };
            (
                specificity,
                meta.creation_timestamp.clone().unwrap_or_default(),
                meta.name.clone(),
            )
        })
}

/// The filter for a port the policy applies to.
pub fn http_filter(policy: &LocalRateLimit) -> HttpFilter {
    HttpFilter {
        name: LOCAL_RATELIMIT.to_string(),
        config_type: Some(http_filter::ConfigType::TypedConfig(filter_config(
            policy,
            policy.token_bucket.as_ref(),
        ))),
        ..Default::default()
    }
}

/// The filter's config with `bucket` (none: the filter is disabled), as the filter's own or a
/// route's `typed_per_filter_config`.
pub fn filter_config(policy: &LocalRateLimit, bucket: Option<&TokenBucket>) -> Any {
    let all = || RuntimeFractionalPercent {
        default_value: Some(FractionalPercent {
            numerator: 100,
            denominator: fractional_percent::DenominatorType::Hundred as i32,
        }),
        runtime_key: String::new(),
    };
    let config = EnvoyLocalRateLimit {
        stat_prefix: STAT_PREFIX.to_string(),
        status: Some(HttpStatus {
            code: i32::try_from(policy.status.unwrap_or(DEFAULT_STATUS)).unwrap_or(429),
        }),
        token_bucket: bucket.map(token_bucket),
        filter_enabled: bucket.map(|_| all()),
        filter_enforced: bucket.map(|_| all()),
        response_headers_to_add: policy
            .response_headers
            .iter()
            .map(|(k, v)| HeaderValueOption {
                header: Some(HeaderValue {
                    key: k.to_ascii_lowercase(),
                    value: v.clone(),
                    ..Default::default()
                }),
                append_action: header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd
                    as i32,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    pack_any(config)
}

fn token_bucket(b: &TokenBucket) -> EnvoyTokenBucket {
    let nanos = b.fill_interval.as_nanos().max(0);
    EnvoyTokenBucket {
        max_tokens: b.max_tokens,
        tokens_per_fill: Some(UInt32Value {
            value: b.tokens_per_fill(),
        }),
        fill_interval: Some(Duration {
            seconds: i64::try_from(nanos / 1_000_000_000).unwrap_or(i64::MAX),
            nanos: i32::try_from(nanos % 1_000_000_000).unwrap_or(0),
        }),
    }
}
