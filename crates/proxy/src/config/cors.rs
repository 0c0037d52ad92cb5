//! A route's CORS policy (`typed_per_filter_config["envoy.filters.http.cors"]`, an
//! `envoy.extensions.filters.http.cors.v3.CorsPolicy`, as Istio translates a VirtualService's
//! `corsPolicy`). What Envoy's CORS filter does with it is in `http::cors`.

use envoy_types::pb::envoy::extensions::filters::http::cors::v3::CorsPolicy as PbCors;
use hyper::header::HeaderValue;
use serde::Serialize;

use super::invalid::{At, Refusal};
use super::proto::per_million;
use super::route::{StringMatch, string_match};

pub(crate) const CORS_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy";

/// A CORS policy, with Envoy's defaults. Empty strings are unset fields: their header is not
/// sent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cors {
    /// An origin is allowed when one of these matches it (or matches `*`).
    pub allow_origins: Vec<OriginMatch>,
    pub allow_methods: String,
    pub allow_headers: String,
    pub expose_headers: String,
    pub max_age: String,
    pub allow_credentials: bool,
    pub allow_private_network_access: bool,
    /// A preflight whose origin is not allowed goes upstream (true, Envoy's default) or is
    /// answered without CORS headers.
    pub forward_not_matching_preflights: bool,
    /// `filter_enabled`: the share of requests (per million) the policy applies to; absent, all.
    pub enabled_per_million: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OriginMatch {
    pub value: StringMatch,
    pub ignore_case: bool,
}

/// The route's CORS policy from its typed config.
pub(crate) fn policy(p: &PbCors) -> Result<Cors, Refusal> {
    let allow_origins = p
        .allow_origin_string_match
        .iter()
        .enumerate()
        .map(|(i, m)| {
            Ok(OriginMatch {
                value: string_match(m).index(i)?,
                ignore_case: m.ignore_case,
            })
        })
        .collect::<Result<_, Refusal>>()
        .under("allow_origin_string_match")?;
    // Header values: refused here rather than dropped when answering.
    for (field, value) in [
        ("allow_methods", &p.allow_methods),
        ("allow_headers", &p.allow_headers),
        ("expose_headers", &p.expose_headers),
        ("max_age", &p.max_age),
    ] {
        if HeaderValue::from_str(value).is_err() {
            return Err(Refusal::bad_value(
                field,
                format!("{value:?}"),
                "a header value",
            ));
        }
    }
    Ok(Cors {
        allow_origins,
        allow_methods: p.allow_methods.clone(),
        allow_headers: p.allow_headers.clone(),
        expose_headers: p.expose_headers.clone(),
        max_age: p.max_age.clone(),
        allow_credentials: p.allow_credentials.as_ref().is_some_and(|b| b.value),
        allow_private_network_access: p
            .allow_private_network_access
            .as_ref()
            .is_some_and(|b| b.value),
        forward_not_matching_preflights: p
            .forward_not_matching_preflights
            .as_ref()
            .is_none_or(|b| b.value),
        enabled_per_million: match &p.filter_enabled {
            None => 1_000_000,
            Some(f) => f.default_value.as_ref().map_or(0, |d| per_million(Some(d))),
        },
    })
}
