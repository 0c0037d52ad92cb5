//! RequestAuthentication: JWT validation for requests.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::authorization_policy::{check_dry_run_annotation, validate_policy_target};
use crate::common::{PolicyTargetReference, WorkloadSelector};
use crate::validate::common::validate_duration;
use crate::{Duration, FieldPath, ObjectMeta, Report};

/// `spec` of a RequestAuthentication.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestAuthentication {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<PolicyTargetReference>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<PolicyTargetReference>,
    /// The JWTs the selected workloads accept; a token that matches a rule's location must be
    /// valid for that rule.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jwt_rules: Vec<JwtRule>,
}

/// One accepted JWT issuer and how its tokens are found and checked.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtRule {
    /// The `iss` claim tokens must carry.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub issuer: String,
    /// Accepted `aud` values; the service name when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// URL of the key set (http or https). Istio's schema also accepts the proto name `jwks_uri`.
    #[serde(default, alias = "jwks_uri", skip_serializing_if = "String::is_empty")]
    pub jwks_uri: String,
    /// An inline JSON Web Key Set; takes precedence over `jwksUri`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub jwks: String,
    /// Headers carrying the token; `Authorization: Bearer` when no location is given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_headers: Vec<JwtHeader>,
    /// Query parameters carrying the token; `access_token` by default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_params: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_cookies: Vec<String>,
    /// Header that receives the verified payload, base64url encoded.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub output_payload_to_header: String,
    /// Keep the token in the request sent upstream.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forward_original_token: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_claim_to_headers: Vec<ClaimToHeader>,
    /// How long to wait for the key set to be fetched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Claims (besides `scope` and `permission`) whose space-separated values are matched one
    /// by one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub space_delimited_claims: Vec<String>,
    /// Whether a request must carry a token for this rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence: Option<JwtPresence>,
}

/// Whether a token must be present.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JwtPresence {
    OPTIONAL,
    REQUIRED,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtHeader {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Stripped before decoding, such as `"Bearer "`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimToHeader {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub header: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub claim: String,
}

/// Checks a RequestAuthentication on its own, as Istio's validating webhook does.
pub fn validate(
    spec: &RequestAuthentication,
    meta: &ObjectMeta,
    at: &FieldPath,
    report: &mut Report,
) {
    check_dry_run_annotation(meta, None, report);
    validate_policy_target(
        spec.selector.as_ref(),
        spec.target_ref.as_ref(),
        &spec.target_refs,
        at,
        report,
    );
    for (i, rule) in spec.jwt_rules.iter().enumerate() {
        validate_jwt_rule(rule, &at.field("jwtRules").index(i), report);
    }
}

fn validate_jwt_rule(rule: &JwtRule, at: &FieldPath, report: &mut Report) {
    for (i, aud) in rule.audiences.iter().enumerate() {
        if aud.is_empty() {
            report.error(
                &at.field("audiences").index(i),
                "audience must be non-empty string",
            );
        }
    }
    if rule.issuer.is_empty() && rule.jwks_uri.is_empty() {
        report.error(
            &at.field("issuer"),
            "issuer or jwksUri must be non-empty string",
        );
    }
    if !rule.jwks_uri.is_empty() {
        report.check(&at.field("jwksUri"), check_jwks_uri(&rule.jwks_uri));
    }
    if !rule.jwks.is_empty() {
        match check_jwks(&rule.jwks) {
            Ok(private) => {
                if private {
                    report.warn(
                        &at.field("jwks"),
                        "jwks contains private key material: publish only the public keys",
                    );
                }
            }
            Err(e) => report.error(&at.field("jwks"), format!("jwks parse error: {e}")),
        }
    }
    for (i, h) in rule.from_headers.iter().enumerate() {
        if h.name.is_empty() {
            report.error(
                &at.field("fromHeaders").index(i).field("name"),
                "location header name must be non-empty string",
            );
        }
    }
    for (i, p) in rule.from_params.iter().enumerate() {
        if p.is_empty() {
            report.error(
                &at.field("fromParams").index(i),
                "location query must be non-empty string",
            );
        }
    }
    for (i, c) in rule.from_cookies.iter().enumerate() {
        if c.is_empty() {
            report.error(
                &at.field("fromCookies").index(i),
                "cookie name must be non-empty string",
            );
        }
    }
    for (i, c) in rule.output_claim_to_headers.iter().enumerate() {
        let c_at = at.field("outputClaimToHeaders").index(i);
        if c.claim.is_empty() || c.header.is_empty() {
            report.error(
                &c_at,
                "outputClaimToHeaders header and claim value must be non-empty string",
            );
        } else if !c
            .header
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            report.error(
                &c_at.field("header"),
                format!(
                    "header name {} is not a valid header name: use letters, digits and '-'",
                    c.header
                ),
            );
        }
    }
    for (i, c) in rule.space_delimited_claims.iter().enumerate() {
        if c.is_empty() {
            report.error(
                &at.field("spaceDelimitedClaims").index(i),
                "claim name must be non-empty string",
            );
        }
    }
    if let Some(t) = &rule.timeout {
        report.check(&at.field("timeout"), validate_duration(t));
    }
}

/// A key-set URL as Istio reads it (Go's `url.Parse`, then an http or https scheme and a numeric
/// port).
pub(crate) fn check_jwks_uri(uri: &str) -> Result<(), String> {
    if let Some(c) = uri.chars().find(|c| c.is_ascii_control()) {
        return Err(format!(
            "parse {uri:?}: invalid control character {c:?} in URL"
        ));
    }
    let (scheme, rest) = split_scheme(uri)?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return Err(format!(
            "URI scheme {scheme:?} is not supported: write http:// or https://"
        ));
    }
    let Some(after) = rest.strip_prefix("//") else {
        return Ok(());
    };
    let authority = after.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let port = if let Some(bracketed) = host_port.strip_prefix('[') {
        let Some((_, after)) = bracketed.split_once(']') else {
            return Err(format!("parse {uri:?}: missing ']' in host"));
        };
        after
    } else {
        if let Some(c) = host_port.bytes().find(|b| *b < 0x80 && !is_host_char(*b)) {
            return Err(format!(
                "parse {uri:?}: invalid character {:?} in host name",
                c as char
            ));
        }
        host_port.rfind(':').map_or("", |i| &host_port[i..])
    };
    if !port.is_empty() {
        let digits = port.strip_prefix(':').unwrap_or(port);
        if !port.starts_with(':') || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("parse {uri:?}: invalid port {port:?} after host"));
        }
        if !digits.is_empty() && digits.parse::<i64>().is_err() {
            return Err(format!("parse {uri:?}: port {digits} is out of range"));
        }
    }
    Ok(())
}

/// Go's `getScheme`: letters, then letters, digits, `+`, `-` or `.`, up to a `:`.
fn split_scheme(uri: &str) -> Result<(&str, &str), String> {
    for (i, b) in uri.bytes().enumerate() {
        if b.is_ascii_alphabetic() {
            continue;
        }
        if b.is_ascii_digit() || b == b'+' || b == b'-' || b == b'.' {
            if i == 0 {
                return Ok(("", uri));
            }
            continue;
        }
        if b == b':' {
            if i == 0 {
                return Err(format!("parse {uri:?}: missing protocol scheme"));
            }
            return Ok((&uri[..i], &uri[i + 1..]));
        }
        return Ok(("", uri));
    }
    Ok(("", uri))
}

/// Characters Go allows unescaped in a host name.
fn is_host_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-_.~!$&'()*+,;=:[]<>\"%".contains(&b)
}

/// Parses an inline key set: a JWK Set (`{"keys": [...]}`) or a single JWK. Returns whether any
/// key carries private material.
fn check_jwks(text: &str) -> Result<bool, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(obj) = &v else {
        return Err("a JWK set must be a JSON object with \"keys\"".to_string());
    };
    let keys: Vec<&Value> = match obj.get("keys") {
        Some(Value::Array(keys)) => keys.iter().collect(),
        Some(_) => return Err("\"keys\" must be an array of JSON Web Keys".to_string()),
        None => vec![&v],
    };
    let mut private = false;
    for (i, key) in keys.iter().enumerate() {
        let Value::Object(k) = key else {
            return Err(format!("key {i} is not a JSON object"));
        };
        let has = |f: &str| {
            k.get(f)
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty())
        };
        let kty = k.get("kty").and_then(Value::as_str).unwrap_or_default();
        let required: &[&str] = match kty {
            "RSA" => &["n", "e"],
            "EC" => &["crv", "x", "y"],
            "OKP" => &["crv", "x"],
            "oct" => &["k"],
            "" => return Err(format!("key {i} has no \"kty\"")),
            other => return Err(format!("key {i} has unsupported \"kty\" {other:?}")),
        };
        if let Some(missing) = required.iter().find(|f| !has(f)) {
            return Err(format!("{kty} key {i} is missing {missing:?}"));
        }
        private |= has("d");
    }
    Ok(private)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwks_uri_like_go() {
        assert!(check_jwks_uri("https://example.com/.well-known/jwks.json").is_ok());
        assert!(check_jwks_uri("http://[::1]:8080/keys").is_ok());
        assert!(check_jwks_uri("foo.com").is_err());
        assert!(check_jwks_uri("https://foo.com:not-a-number").is_err());
        assert!(check_jwks_uri("hTPp\\\u{8}lah").is_err());
        assert!(check_jwks_uri("ftp://foo.com").is_err());
    }

    #[test]
    fn jwks_sets() {
        assert_eq!(
            check_jwks(r#"{"keys":[{"kty":"RSA","e":"AQAB","n":"xyz"}]}"#),
            Ok(false)
        );
        assert_eq!(
            check_jwks(r#"{"keys":[{"kty":"RSA","e":"AQAB","n":"xyz","d":"p"}]}"#),
            Ok(true)
        );
        assert!(check_jwks("foo").is_err());
        assert!(check_jwks(r#"{"keys":[{"kty":"RSA"}]}"#).is_err());
    }

    #[test]
    fn rules() {
        let spec: RequestAuthentication = serde_json::from_value(serde_json::json!({
            "jwtRules": [{"issuer": "", "jwks_uri": "https://foo.com/cert"},
                         {"issuer": "x", "outputClaimToHeaders": [{"header": "abc%123", "claim": "sub"}]},
                         {}]
        }))
        .unwrap();
        let mut r = Report::default();
        validate(
            &spec,
            &ObjectMeta::default(),
            &FieldPath::root("spec"),
            &mut r,
        );
        let paths: Vec<_> = r.errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "spec.jwtRules[1].outputClaimToHeaders[0].header",
                "spec.jwtRules[2].issuer"
            ]
        );
    }
}
