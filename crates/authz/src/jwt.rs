//! Envoy's jwt_authn filter, compiled: providers (issuer, audiences, where tokens are, the key
//! set) and the requirement the request must meet. A valid token's payload goes into dynamic
//! metadata (`payload_in_metadata`), where RBAC's `request.auth.*` matchers read it; an invalid
//! or expired one is refused with 401 (403 for an audience not allowed) and Envoy's message; no
//! token at all passes when the requirement allows it missing (Istio's RequestAuthentication:
//! only an AuthorizationPolicy can require one).

use std::collections::BTreeMap;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::Value;

use crate::attributes::HttpRequest;
use crate::jwk::{self, Jwks};
use crate::matcher::Re;

/// The filter's name, and its dynamic metadata namespace.
pub const FILTER_NAME: &str = "envoy.filters.http.jwt_authn";

/// One accepted issuer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Provider {
    pub issuer: String,
    /// Empty: any audience.
    pub audiences: Vec<String>,
    pub require_expiration: bool,
    pub clock_skew_seconds: u64,
    /// Keep the token in the request sent upstream.
    pub forward: bool,
    pub from_headers: Vec<(String, String)>,
    pub from_params: Vec<String>,
    pub from_cookies: Vec<String>,
    /// Where the payload goes (base64url), if anywhere.
    pub forward_payload_header: Option<String>,
    /// The metadata key the payload goes under.
    pub payload_in_metadata: Option<String>,
    /// Claims whose space-separated string values become lists in the metadata.
    pub space_delimited_claims: Vec<String>,
    /// (header, claim).
    pub claim_to_headers: Vec<(String, String)>,
    /// The keys, or why there are none (a key set that did not parse or could not be fetched:
    /// every token fails).
    #[serde(serialize_with = "keys_summary")]
    pub keys: Result<Jwks, String>,
}

fn keys_summary<S: serde::Serializer>(
    keys: &Result<Jwks, String>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match keys {
        Ok(k) => s.serialize_str(&format!("{} key(s)", k.keys.len())),
        Err(e) => s.serialize_str(&format!("no usable keys: {e}")),
    }
}

impl Provider {
    /// The default locations (`Authorization: Bearer` and `access_token`) apply when none is
    /// given.
    fn headers(&self) -> Vec<(&str, &str)> {
        if self.from_headers.is_empty()
            && self.from_params.is_empty()
            && self.from_cookies.is_empty()
        {
            return vec![("authorization", "Bearer ")];
        }
        self.from_headers
            .iter()
            .map(|(n, p)| (n.as_str(), p.as_str()))
            .collect()
    }

    fn params(&self) -> Vec<&str> {
        if self.from_headers.is_empty()
            && self.from_params.is_empty()
            && self.from_cookies.is_empty()
        {
            return vec!["access_token"];
        }
        self.from_params.iter().map(String::as_str).collect()
    }
}

/// What a request must present.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Requirement {
    Provider {
        name: String,
        /// Overrides the provider's audiences.
        audiences: Option<Vec<String>>,
    },
    Any(Vec<Requirement>),
    All(Vec<Requirement>),
    /// No token, or a valid one.
    AllowMissing,
    /// Anything: a valid token still has its payload recorded.
    AllowMissingOrFailed,
}

/// Which requests a rule applies to.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PathRule {
    Prefix(String),
    Path(String),
    SafeRegex(Re),
}

impl PathRule {
    fn matches(&self, path: &str) -> bool {
        match self {
            PathRule::Prefix(p) => path.starts_with(p.as_str()),
            PathRule::Path(p) => path == p,
            PathRule::SafeRegex(re) => re.is_match(path),
        }
    }
}

/// The compiled filter.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JwtAuthn {
    pub providers: BTreeMap<String, Provider>,
    /// The first rule whose path matches decides; no rule: no requirement.
    pub rules: Vec<(PathRule, Option<Requirement>)>,
    /// CORS preflights (OPTIONS with `origin` and `access-control-request-method`) pass.
    pub bypass_cors_preflight: bool,
}

/// Why a token was refused, with Envoy's messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtError {
    Missing,
    BadFormat,
    HeaderBadBase64,
    HeaderBadJson,
    HeaderBadAlg,
    AlgNotImplemented,
    PayloadBadBase64,
    PayloadBadJson,
    SignatureBadBase64,
    UnknownIssuer,
    AudienceNotAllowed,
    Expired,
    NotYetValid,
    NoExpiration,
    KidAlgMismatch,
    NoValidKeys,
    VerificationFailed,
}

impl JwtError {
    /// The HTTP status Envoy answers with.
    pub fn status(&self) -> u16 {
        match self {
            JwtError::AudienceNotAllowed => 403,
            _ => 401,
        }
    }

    /// Missing and unknown-issuer are the least telling failures when several requirements
    /// fail (Envoy reports another if there is one).
    fn weak(&self) -> bool {
        matches!(self, JwtError::Missing | JwtError::UnknownIssuer)
    }
}

impl fmt::Display for JwtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            JwtError::Missing => "Jwt is missing",
            JwtError::BadFormat => {
                "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
            }
            JwtError::HeaderBadBase64 => "Jwt header is an invalid Base64url encoded",
            JwtError::HeaderBadJson => "Jwt header is an invalid JSON",
            JwtError::HeaderBadAlg => "Jwt header [alg] field is required and must be a string",
            JwtError::AlgNotImplemented => "Jwt header [alg] is not supported",
            JwtError::PayloadBadBase64 => "Jwt payload is an invalid Base64url encoded",
            JwtError::PayloadBadJson => "Jwt payload is an invalid JSON",
            JwtError::SignatureBadBase64 => "Jwt signature is an invalid Base64url encoded",
            JwtError::UnknownIssuer => "Jwt issuer is not configured",
            JwtError::AudienceNotAllowed => "Audiences in Jwt are not allowed",
            JwtError::Expired => "Jwt is expired",
            JwtError::NotYetValid => "Jwt not yet valid",
            JwtError::NoExpiration => "Jwt doesn't have expiration",
            JwtError::KidAlgMismatch => "Jwks doesn't have key to match kid or alg from Jwt",
            JwtError::NoValidKeys => "Jwks doesn't have any valid public key",
            JwtError::VerificationFailed => "Jwt verification fails",
        })
    }
}

/// A token found in the request, and where.
#[derive(Debug, Clone)]
struct Found {
    token: String,
    /// The header it came from (removed upstream unless forwarded).
    header: Option<String>,
}

/// A verified token.
#[derive(Debug, Clone)]
struct Verified {
    provider: String,
    payload: Value,
    /// The payload section as the token has it (for `forward_payload_header`).
    payload_b64: String,
    header: Option<String>,
}

/// What the filter decided, and what it changes in the request when it passes.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// `None`: the request may go on.
    pub refused: Option<JwtError>,
    /// (key under [`FILTER_NAME`], payload) for each verified token.
    pub metadata: Vec<(String, Value)>,
    /// Headers to remove (tokens not forwarded).
    pub remove_headers: Vec<String>,
    /// Headers to set (payloads and claims).
    pub set_headers: Vec<(String, String)>,
}

impl Outcome {
    /// The dynamic metadata the payloads make (`{FILTER_NAME: {key: payload}}`), if any.
    pub fn metadata_object(&self) -> Option<Value> {
        if self.metadata.is_empty() {
            return None;
        }
        let map: serde_json::Map<String, Value> = self.metadata.iter().cloned().collect();
        Some(Value::Object(map))
    }
}

impl JwtAuthn {
    /// Checks the request at time `now`.
    pub fn authenticate(&self, req: &HttpRequest<'_>, now: SystemTime) -> Outcome {
        if self.bypass_cors_preflight
            && req.method == "OPTIONS"
            && req.headers.contains_key("origin")
            && req.headers.contains_key("access-control-request-method")
        {
            return Outcome::default();
        }
        let path = req.path_only();
        let Some(requirement) = self
            .rules
            .iter()
            .find(|(m, _)| m.matches(path))
            .and_then(|(_, r)| r.as_ref())
        else {
            return Outcome::default();
        };
        let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mut verified = Vec::new();
        let result = self.check(requirement, req, now, &mut verified);
        let mut out = Outcome {
            refused: result.err(),
            ..Outcome::default()
        };
        if out.refused.is_some() {
            return out;
        }
        for v in verified {
            let Some(p) = self.providers.get(&v.provider) else {
                continue;
            };
            if let Some(key) = &p.payload_in_metadata {
                out.metadata.push((
                    key.clone(),
                    normalize(&v.payload, &p.space_delimited_claims),
                ));
            }
            if !p.forward
                && let Some(h) = &v.header
            {
                out.remove_headers.push(h.clone());
            }
            if let Some(h) = &p.forward_payload_header {
                out.set_headers.push((h.clone(), v.payload_b64.clone()));
            }
            for (header, claim) in &p.claim_to_headers {
                let value = match v.payload.get(claim) {
                    Some(Value::String(s)) => Some(s.clone()),
                    Some(Value::Number(n)) => Some(n.to_string()),
                    Some(Value::Bool(b)) => Some(b.to_string()),
                    _ => None,
                };
                if let Some(value) = value {
                    out.set_headers.push((header.clone(), value));
                }
            }
        }
        out
    }

    fn check(
        &self,
        r: &Requirement,
        req: &HttpRequest<'_>,
        now: u64,
        verified: &mut Vec<Verified>,
    ) -> Result<(), JwtError> {
        match r {
            Requirement::Provider { name, audiences } => {
                let Some(p) = self.providers.get(name) else {
                    return Err(JwtError::UnknownIssuer);
                };
                let found = extract(p, req);
                if found.is_empty() {
                    return Err(JwtError::Missing);
                }
                let mut last = JwtError::Missing;
                for f in found {
                    match verify(p, audiences.as_deref(), &f.token, now) {
                        Ok((payload, payload_b64)) => {
                            verified.push(Verified {
                                provider: name.clone(),
                                payload,
                                payload_b64,
                                header: f.header,
                            });
                            return Ok(());
                        }
                        Err(e) => last = e,
                    }
                }
                Err(last)
            }
            Requirement::Any(all) => {
                let mut errors = Vec::new();
                for child in all {
                    let mut v = Vec::new();
                    match self.check(child, req, now, &mut v) {
                        Ok(()) => {
                            verified.extend(v);
                            return Ok(());
                        }
                        Err(e) => errors.push(e),
                    }
                }
                Err(pick(errors))
            }
            Requirement::All(all) => {
                for child in all {
                    self.check(child, req, now, verified)?;
                }
                Ok(())
            }
            Requirement::AllowMissing | Requirement::AllowMissingOrFailed => {
                let mut any_token = false;
                let mut error = None;
                for (name, p) in &self.providers {
                    for f in extract(p, req) {
                        any_token = true;
                        match verify(p, None, &f.token, now) {
                            Ok((payload, payload_b64)) => {
                                verified.push(Verified {
                                    provider: name.clone(),
                                    payload,
                                    payload_b64,
                                    header: f.header,
                                });
                                return Ok(());
                            }
                            Err(e) => error = Some(e),
                        }
                    }
                }
                match (r, any_token, error) {
                    (Requirement::AllowMissingOrFailed, ..) | (_, false, _) => Ok(()),
                    (_, true, Some(e)) => Err(e),
                    (_, true, None) => Ok(()),
                }
            }
        }
    }
}

/// The most telling of several failures.
fn pick(errors: Vec<JwtError>) -> JwtError {
    errors
        .iter()
        .find(|e| !e.weak())
        .or_else(|| errors.iter().find(|e| **e == JwtError::UnknownIssuer))
        .cloned()
        .unwrap_or(JwtError::Missing)
}

/// The characters a JWT is made of.
fn token_chars(s: &str) -> &str {
    let end = s
        .find(|c: char| {
            !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '=' | '+' | '/'))
        })
        .unwrap_or(s.len());
    &s[..end]
}

/// The tokens in the provider's locations.
fn extract(p: &Provider, req: &HttpRequest<'_>) -> Vec<Found> {
    let mut found = Vec::new();
    for (name, prefix) in p.headers() {
        for value in req.headers.get_all(name) {
            let Ok(value) = value.to_str() else { continue };
            let rest = if prefix.is_empty() {
                Some(value.trim())
            } else if value.len() >= prefix.len()
                && value.is_char_boundary(prefix.len())
                && value[..prefix.len()].eq_ignore_ascii_case(prefix)
            {
                Some(&value[prefix.len()..])
            } else {
                None
            };
            if let Some(token) = rest.map(token_chars).filter(|t| !t.is_empty()) {
                found.push(Found {
                    token: token.to_string(),
                    header: Some(name.to_string()),
                });
            }
        }
    }
    let params = p.params();
    if !params.is_empty()
        && let Some((_, query)) = req.path.split_once('?')
    {
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if params.contains(&k) && !v.is_empty() {
                found.push(Found {
                    token: v.to_string(),
                    header: None,
                });
            }
        }
    }
    if !p.from_cookies.is_empty() {
        for value in req.headers.get_all("cookie") {
            let Ok(value) = value.to_str() else { continue };
            for cookie in value.split(';') {
                let (k, v) = cookie.trim().split_once('=').unwrap_or((cookie, ""));
                if p.from_cookies.iter().any(|c| c == k) && !v.is_empty() {
                    found.push(Found {
                        token: v.to_string(),
                        header: None,
                    });
                }
            }
        }
    }
    found
}

/// Checks one token with a provider: format, issuer, signature, times, audiences. Returns the
/// payload and its base64url section.
fn verify(
    p: &Provider,
    audiences: Option<&[String]>,
    token: &str,
    now: u64,
) -> Result<(Value, String), JwtError> {
    let mut parts = token.split('.');
    let (Some(h), Some(pl), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::BadFormat);
    };
    let header: Value =
        serde_json::from_slice(&jwk::decode_section(h).ok_or(JwtError::HeaderBadBase64)?)
            .map_err(|_| JwtError::HeaderBadJson)?;
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(JwtError::HeaderBadAlg)?;
    if !jwk::ALGORITHMS.contains(&alg) {
        return Err(JwtError::AlgNotImplemented);
    }
    let payload: Value =
        serde_json::from_slice(&jwk::decode_section(pl).ok_or(JwtError::PayloadBadBase64)?)
            .map_err(|_| JwtError::PayloadBadJson)?;
    if !payload.is_object() {
        return Err(JwtError::PayloadBadJson);
    }
    let sig = jwk::decode_section(s).ok_or(JwtError::SignatureBadBase64)?;
    let iss = payload.get("iss").and_then(Value::as_str).unwrap_or("");
    if !p.issuer.is_empty() && iss != p.issuer {
        return Err(JwtError::UnknownIssuer);
    }
    // Times before the signature, as Envoy checks them.
    let skew = p.clock_skew_seconds;
    let number = |claim: &str| payload.get(claim).and_then(Value::as_f64).map(|n| n as u64);
    match number("exp") {
        Some(exp) if now > exp.saturating_add(skew) => return Err(JwtError::Expired),
        None if p.require_expiration => return Err(JwtError::NoExpiration),
        _ => {}
    }
    if let Some(nbf) = number("nbf")
        && now.saturating_add(skew) < nbf
    {
        return Err(JwtError::NotYetValid);
    }
    let wanted = audiences.unwrap_or(&p.audiences);
    if !wanted.is_empty() {
        let auds: Vec<&str> = match payload.get("aud") {
            Some(Value::String(a)) => vec![a.as_str()],
            Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        // Envoy compares audiences without a scheme and trailing slash.
        let bare = |a: &str| -> String {
            a.trim_start_matches("https://")
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .to_string()
        };
        if !auds
            .iter()
            .any(|a| wanted.iter().any(|w| bare(w) == bare(a)))
        {
            return Err(JwtError::AudienceNotAllowed);
        }
    }
    let keys = p.keys.as_ref().map_err(|_| JwtError::NoValidKeys)?;
    let kid = header.get("kid").and_then(Value::as_str);
    let candidates: Vec<&jwk::Jwk> = keys
        .keys
        .iter()
        .filter(|k| k.fits(alg) && (kid.is_none() || k.kid.is_none() || k.kid.as_deref() == kid))
        .collect();
    if candidates.is_empty() {
        return Err(JwtError::KidAlgMismatch);
    }
    let signed = &token[..h.len() + 1 + pl.len()];
    if candidates
        .iter()
        .any(|k| k.verify(alg, signed.as_bytes(), &sig))
    {
        Ok((payload, pl.to_string()))
    } else {
        Err(JwtError::VerificationFailed)
    }
}

/// The payload with the space-delimited claims split into lists, as Envoy's
/// `normalize_payload_in_metadata` does.
fn normalize(payload: &Value, claims: &[String]) -> Value {
    let mut payload = payload.clone();
    if let Some(map) = payload.as_object_mut() {
        for claim in claims {
            if let Some(Value::String(s)) = map.get(claim) {
                let list = s
                    .split(' ')
                    .filter(|p| !p.is_empty())
                    .map(|p| Value::String(p.to_string()))
                    .collect();
                map.insert(claim.clone(), Value::Array(list));
            }
        }
    }
    payload
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    struct Signer {
        pair: EcdsaKeyPair,
        rng: SystemRandom,
    }

    impl Signer {
        fn new() -> Signer {
            let rng = SystemRandom::new();
            let pkcs8 =
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
            let pair =
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
            Signer { pair, rng }
        }

        fn jwks(&self) -> String {
            let point = self.pair.public_key().as_ref();
            let (x, y) = point[1..].split_at(32);
            format!(
                r#"{{"keys":[{{"kty":"EC","crv":"P-256","kid":"t","x":"{}","y":"{}"}}]}}"#,
                URL_SAFE_NO_PAD.encode(x),
                URL_SAFE_NO_PAD.encode(y)
            )
        }

        fn token(&self, payload: &Value) -> String {
            let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256","kid":"t","typ":"JWT"}"#);
            let p = URL_SAFE_NO_PAD.encode(payload.to_string());
            let signed = format!("{h}.{p}");
            let sig = self.pair.sign(&self.rng, signed.as_bytes()).unwrap();
            format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
        }
    }

    fn filter(jwks: &str) -> JwtAuthn {
        let provider = Provider {
            issuer: "testing@secure.istio.io".into(),
            audiences: vec![],
            require_expiration: false,
            clock_skew_seconds: 60,
            forward: false,
            from_headers: vec![],
            from_params: vec![],
            from_cookies: vec![],
            forward_payload_header: None,
            payload_in_metadata: Some("payload".into()),
            space_delimited_claims: vec!["scope".into()],
            claim_to_headers: vec![("x-sub".into(), "sub".into())],
            keys: Jwks::parse(jwks),
        };
        JwtAuthn {
            providers: [("origins-0".to_string(), provider)].into(),
            rules: vec![(
                PathRule::Prefix("/".into()),
                Some(Requirement::Any(vec![
                    Requirement::Provider {
                        name: "origins-0".into(),
                        audiences: None,
                    },
                    Requirement::AllowMissing,
                ])),
            )],
            bypass_cors_preflight: true,
        }
    }

    fn run(f: &JwtAuthn, auth: Option<&str>, path: &str, now: u64) -> Outcome {
        let mut headers = http::HeaderMap::new();
        if let Some(a) = auth {
            headers.insert("authorization", a.parse().unwrap());
        }
        let req = HttpRequest {
            method: "GET",
            path,
            authority: "h",
            scheme: "http",
            headers: &headers,
            remote_ip: "127.0.0.1".parse().unwrap(),
        };
        f.authenticate(&req, UNIX_EPOCH + std::time::Duration::from_secs(now))
    }

    #[test]
    fn a_valid_token_passes_with_its_payload_and_bad_ones_are_refused() {
        let s = Signer::new();
        let f = filter(&s.jwks());
        let now = 1_800_000_000;
        let good = s.token(&serde_json::json!({
            "iss": "testing@secure.istio.io", "sub": "alice", "exp": now + 100, "scope": "a b"
        }));
        let out = run(&f, Some(&format!("Bearer {good}")), "/headers", now);
        assert_eq!(out.refused, None);
        assert_eq!(out.metadata[0].0, "payload");
        assert_eq!(out.metadata[0].1["sub"], "alice");
        assert_eq!(out.metadata[0].1["scope"], serde_json::json!(["a", "b"]));
        assert_eq!(out.remove_headers, ["authorization"]);
        assert_eq!(
            out.set_headers,
            [("x-sub".to_string(), "alice".to_string())]
        );
        // No token: allowed, nothing recorded.
        let out = run(&f, None, "/headers", now);
        assert_eq!((out.refused, out.metadata.len()), (None, 0));
        // A token in the query works too.
        let out = run(&f, None, &format!("/headers?access_token={good}"), now);
        assert_eq!(out.refused, None);
        // Garbage, expiry, another issuer, another key.
        let out = run(&f, Some("Bearer deadbeef"), "/", now);
        assert_eq!(out.refused, Some(JwtError::BadFormat));
        assert_eq!(out.refused.unwrap().status(), 401);
        let expired = s.token(&serde_json::json!({
            "iss": "testing@secure.istio.io", "sub": "alice", "exp": now - 61
        }));
        let out = run(&f, Some(&format!("Bearer {expired}")), "/", now);
        assert_eq!(
            out.refused.as_ref().map(ToString::to_string).as_deref(),
            Some("Jwt is expired")
        );
        let other = s.token(&serde_json::json!({"iss": "someone-else", "sub": "x"}));
        let out = run(&f, Some(&format!("Bearer {other}")), "/", now);
        assert_eq!(out.refused, Some(JwtError::UnknownIssuer));
        let forged = Signer::new().token(&serde_json::json!({
            "iss": "testing@secure.istio.io", "sub": "mallory"
        }));
        let out = run(&f, Some(&format!("Bearer {forged}")), "/", now);
        assert_eq!(out.refused, Some(JwtError::VerificationFailed));
    }

    #[test]
    fn keys_that_could_not_be_had_refuse_every_token_but_not_its_absence() {
        let s = Signer::new();
        let mut f = filter(&s.jwks());
        f.providers.get_mut("origins-0").unwrap().keys = Err("fetching failed".into());
        let good = s.token(&serde_json::json!({"iss": "testing@secure.istio.io", "sub": "a"}));
        let out = run(&f, Some(&format!("Bearer {good}")), "/", 1_800_000_000);
        assert_eq!(out.refused, Some(JwtError::NoValidKeys));
        assert_eq!(run(&f, None, "/", 1_800_000_000).refused, None);
    }

    #[test]
    fn audiences_are_checked() {
        let s = Signer::new();
        let mut f = filter(&s.jwks());
        f.providers.get_mut("origins-0").unwrap().audiences = vec!["bookstore".into()];
        let t = |aud: Value| {
            s.token(&serde_json::json!({"iss": "testing@secure.istio.io", "sub": "a", "aud": aud}))
        };
        let ok = t(serde_json::json!(["x", "https://bookstore/"]));
        assert_eq!(run(&f, Some(&format!("Bearer {ok}")), "/", 0).refused, None);
        let bad = t(serde_json::json!("other"));
        let out = run(&f, Some(&format!("Bearer {bad}")), "/", 0);
        assert_eq!(out.refused.as_ref().map(JwtError::status), Some(403));
    }
}
