//! Istio's `RequestAuthentication` as Envoy's `envoy.filters.http.jwt_authn` filter, the way
//! Istio's policy applier (`pilot/pkg/security/authn/policy_applier.go`) builds it:
//!
//! - Which policies: as for AuthorizationPolicy, those in the root namespace and in the
//!   workload's namespace whose `selector` is empty or matches the workload's labels (policies
//!   with `targetRef(s)` attach through Gateway API objects and are skipped); their `jwtRules`
//!   are concatenated in (namespace, name) order.
//! - One provider per rule, named `origins-I`: issuer, audiences, `forward` from
//!   `forwardOriginalToken`, `from_headers`/`from_params`/`from_cookies` as given (Envoy's
//!   defaults, `Authorization: Bearer` and `access_token`, when none is), `payload_in_metadata`
//!   `payload` (what the RBAC filters' `request.auth.*` matchers read), `forward_payload_header`
//!   from `outputPayloadToHeader`, `claim_to_headers` from `outputClaimToHeaders`, and
//!   `scope`/`permission` plus the rule's `spaceDelimitedClaims` as space-delimited claims.
//! - The key set: the rule's inline `jwks`, else the one the control plane fetched from
//!   `jwksUri` ([`ConfigSnapshot::jwks`]); when that fetch has not succeeded, Istio's stand-in
//!   key set that verifies nothing (tokens fail with 401, requests without one pass).
//! - One rule on prefix `/` whose requirement accepts a request without a token but refuses
//!   an invalid one: for one provider `requires_any [provider, allow_missing]`; for several,
//!   `requires_any [each provider…, requires_all [requires_any [provider, allow_missing]…]]`.
//!   A rule with `presence: REQUIRED` drops its `allow_missing`.
//!
//! The filter goes ahead of the RBAC filters on the inbound HTTP chains of selected workloads
//! and on the HTTP listeners of selected gateways.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source};
use envoy_types::pb::envoy::config::route::v3::{RouteMatch, route_match};
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3 as jwt;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};
use envoy_types::pb::google::protobuf::{Any, Empty};
use prost::Message;
use strait_api::security::request_authentication::{JwtPresence, JwtRule, RequestAuthentication};
use strait_api::{Kind, ObjectMeta, Spec};

use crate::ConfigSnapshot;
use crate::snapshot::namespace_of;

/// The filter's name (Envoy's well-known name), also its dynamic metadata namespace.
pub const JWT_AUTHN: &str = "envoy.filters.http.jwt_authn";
const JWT_AUTHN_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication";
/// The key a verified payload goes under (Istio's `filters.EnvoyJwtFilterPayload`).
pub const PAYLOAD_KEY: &str = "payload";
/// Claims whose space-separated values Istio always matches one by one.
const SPACE_DELIMITED: [&str; 2] = ["scope", "permission"];

/// The RequestAuthentications that apply to a workload in `namespace` with `labels`, in
/// (namespace, name) order.
pub fn policies_for<'a>(
    config: &'a ConfigSnapshot,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Vec<(&'a ObjectMeta, &'a RequestAuthentication)> {
    let root = config.mesh.root_namespace.as_str();
    config
        .of(Kind::RequestAuthentication)
        .filter_map(|r| match &r.spec {
            Spec::RequestAuthentication(p) => Some((&r.metadata, p)),
            _ => None,
        })
        .filter(|(meta, p)| {
            let ns = namespace_of(meta);
            (ns == root || ns == namespace)
                && p.target_ref.is_none()
                && p.target_refs.is_empty()
                && p.selector
                    .as_ref()
                    .is_none_or(|s| s.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v)))
        })
        .collect()
}

/// The `jwksUri`s these policies need fetched (those without an inline `jwks`).
pub fn jwks_uris(config: &ConfigSnapshot) -> Vec<String> {
    let mut uris: Vec<String> = config
        .of(Kind::RequestAuthentication)
        .filter_map(|r| match &r.spec {
            Spec::RequestAuthentication(p) => Some(p),
            _ => None,
        })
        .flat_map(|p| &p.jwt_rules)
        .filter(|r| r.jwks.is_empty() && !r.jwks_uri.is_empty())
        .map(|r| r.jwks_uri.clone())
        .collect();
    uris.sort();
    uris.dedup();
    uris
}

/// The stand-in key set for a `jwksUri` that could not be fetched, as Istio's `CreateFakeJwks`:
/// one RSA key (`kid` `abc`) whose modulus is made from the URI, so no token verifies. Istio
/// uses the URI's bytes as the modulus as they are; Envoy refuses such a key when the URI is
/// short or ends in an even byte ("Jwks RSA [n] or [e] field is missing or has a parse error"),
/// which would NACK the whole listener, so here the URI's bytes are repeated to 2048 bits with
/// the top and bottom bits set.
pub fn fake_jwks(uri: &str) -> String {
    use base64::Engine;
    let seed = if uri.is_empty() { "jwks" } else { uri };
    let mut n: Vec<u8> = seed.bytes().cycle().take(256).collect();
    n[0] |= 0x80;
    n[255] |= 1;
    let n = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&n);
    format!(r#"{{"keys":[ {{"e":"AQAB","kid":"abc","kty":"RSA","n":"{n}"}}]}}"#)
}

/// The `envoy.filters.http.jwt_authn` filter for these policies; `None` without rules.
pub fn http_filter(
    config: &ConfigSnapshot,
    policies: &[(&ObjectMeta, &RequestAuthentication)],
) -> Option<HttpFilter> {
    let rules: Vec<&JwtRule> = policies.iter().flat_map(|(_, p)| &p.jwt_rules).collect();
    if rules.is_empty() {
        return None;
    }
    let mut providers = BTreeMap::new();
    let mut each = Vec::new();
    let mut any = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let name = format!("origins-{i}");
        providers.insert(name.clone(), provider(config, rule));
        let only = requires(jwt::jwt_requirement::RequiresType::ProviderName(name));
        let optional = rule.presence != Some(JwtPresence::REQUIRED);
        each.push(if optional {
            requires(jwt::jwt_requirement::RequiresType::RequiresAny(
                jwt::JwtRequirementOrList {
                    requirements: vec![
                        only.clone(),
                        requires(jwt::jwt_requirement::RequiresType::AllowMissing(Empty {})),
                    ],
                },
            ))
        } else {
            only.clone()
        });
        any.push(only);
    }
    let requirement = if each.len() == 1 {
        each.remove(0)
    } else {
        any.push(requires(jwt::jwt_requirement::RequiresType::RequiresAll(
            jwt::JwtRequirementAndList { requirements: each },
        )));
        requires(jwt::jwt_requirement::RequiresType::RequiresAny(
            jwt::JwtRequirementOrList { requirements: any },
        ))
    };
    let head = jwt::JwtAuthentication {
        rules: vec![jwt::RequirementRule {
            r#match: Some(RouteMatch {
                path_specifier: Some(route_match::PathSpecifier::Prefix("/".to_string())),
                ..Default::default()
            }),
            requirement_type: Some(jwt::requirement_rule::RequirementType::Requires(
                requirement,
            )),
        }],
        bypass_cors_preflight: true,
        ..Default::default()
    };
    Some(HttpFilter {
        name: JWT_AUTHN.to_string(),
        config_type: Some(http_filter::ConfigType::TypedConfig(stable_any(
            &head, &providers,
        ))),
        ..Default::default()
    })
}

fn requires(t: jwt::jwt_requirement::RequiresType) -> jwt::JwtRequirement {
    jwt::JwtRequirement {
        requires_type: Some(t),
    }
}

fn provider(config: &ConfigSnapshot, rule: &JwtRule) -> jwt::JwtProvider {
    let jwks = if !rule.jwks.is_empty() {
        rule.jwks.clone()
    } else {
        match config.jwks.get(&rule.jwks_uri) {
            Some(text) => text.clone(),
            None => fake_jwks(&rule.jwks_uri),
        }
    };
    let mut space_delimited: Vec<String> = SPACE_DELIMITED.iter().map(|s| s.to_string()).collect();
    for c in &rule.space_delimited_claims {
        if !space_delimited.contains(c) {
            space_delimited.push(c.clone());
        }
    }
    jwt::JwtProvider {
        issuer: rule.issuer.clone(),
        audiences: rule.audiences.clone(),
        forward: rule.forward_original_token,
        from_headers: rule
            .from_headers
            .iter()
            .map(|h| jwt::JwtHeader {
                name: h.name.clone(),
                value_prefix: h.prefix.clone(),
            })
            .collect(),
        from_params: rule.from_params.clone(),
        from_cookies: rule.from_cookies.clone(),
        forward_payload_header: rule.output_payload_to_header.clone(),
        payload_in_metadata: PAYLOAD_KEY.to_string(),
        normalize_payload_in_metadata: Some(jwt::jwt_provider::NormalizePayload {
            space_delimited_claims: space_delimited,
        }),
        claim_to_headers: rule
            .output_claim_to_headers
            .iter()
            .map(|c| jwt::JwtClaimToHeader {
                header_name: c.header.clone(),
                claim_name: c.claim.clone(),
                ..Default::default()
            })
            .collect(),
        jwks_source_specifier: Some(jwt::jwt_provider::JwksSourceSpecifier::LocalJwks(
            DataSource {
                specifier: Some(data_source::Specifier::InlineString(jwks)),
                ..Default::default()
            },
        )),
        ..Default::default()
    }
}

/// The config packed with its `providers` map (field 1) in name order: prost encodes a
/// `HashMap` in iteration order, so the same config would encode differently on every push.
fn stable_any(
    head: &jwt::JwtAuthentication,
    providers: &BTreeMap<String, jwt::JwtProvider>,
) -> Any {
    let mut value = Vec::new();
    prost::encoding::btree_map::encode(
        prost::encoding::string::encode,
        prost::encoding::string::encoded_len,
        prost::encoding::message::encode,
        prost::encoding::message::encoded_len,
        1,
        providers,
        &mut value,
    );
    head.encode(&mut value)
        .expect("encoding into a Vec cannot fail");
    Any {
        type_url: JWT_AUTHN_TYPE.to_string(),
        value,
    }
}
