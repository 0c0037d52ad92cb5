//! JSON Web Key Sets and signature checks: RSA (RS256/384/512, PS256/384/512), ECDSA (ES256,
//! ES384, ES512), EdDSA (Ed25519) and HMAC (HS256/384/512), the algorithms Envoy's jwt_authn
//! (and so Istio) accepts, with the crypto rustls already links (aws-lc-rs).

use aws_lc_rs::{hmac, signature};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::Value;

/// A parsed key set; keys that cannot be used are left out (as Envoy's parser does), and a set
/// with none is an error.
#[derive(Debug, Clone, PartialEq)]
pub struct Jwks {
    pub keys: Vec<Jwk>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Jwk {
    pub kid: Option<String>,
    pub alg: Option<String>,
    pub material: Material,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Material {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// The uncompressed point `04 || x || y`.
    Ec {
        curve: Curve,
        point: Vec<u8>,
    },
    Ed25519(Vec<u8>),
    Oct(Vec<u8>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    P256,
    P384,
    P521,
}

fn b64url(v: &Value, field: &str) -> Result<Vec<u8>, String> {
    let s = v
        .get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("[{field}] is missing"))?;
    // Some issuers pad their base64url.
    URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|e| format!("[{field}] is not base64url: {e}"))
}

/// An unsigned big-endian integer without its leading zero bytes.
fn unsigned(mut bytes: Vec<u8>) -> Vec<u8> {
    let zeros = bytes.iter().take_while(|b| **b == 0).count();
    bytes.drain(..zeros.min(bytes.len().saturating_sub(1)));
    bytes
}

impl Jwks {
    /// Parses a JWKS document (`{"keys": [...]}`), or a single JWK.
    pub fn parse(text: &str) -> Result<Jwks, String> {
        let doc: Value =
            serde_json::from_str(text).map_err(|e| format!("the key set is not JSON: {e}"))?;
        let list: Vec<&Value> = match doc.get("keys") {
            Some(Value::Array(keys)) => keys.iter().collect(),
            Some(_) => return Err("[keys] is not a list".to_string()),
            None if doc.get("kty").is_some() => vec![&doc],
            None => return Err("the key set has no [keys]".to_string()),
        };
        let keys: Vec<Jwk> = list
            .into_iter()
            .filter_map(|k| Jwk::parse(k).ok())
            .collect();
        if keys.is_empty() {
            return Err("the key set has no valid key".to_string());
        }
        Ok(Jwks { keys })
    }
}

impl Jwk {
    fn parse(k: &Value) -> Result<Jwk, String> {
        let kty = k.get("kty").and_then(Value::as_str).unwrap_or_default();
        let material = match kty {
            "RSA" => Material::Rsa {
                n: unsigned(b64url(k, "n")?),
                e: unsigned(b64url(k, "e")?),
            },
            "EC" => {
                let curve = match k.get("crv").and_then(Value::as_str) {
                    Some("P-256") => Curve::P256,
                    Some("P-384") => Curve::P384,
                    Some("P-521") => Curve::P521,
                    other => return Err(format!("EC curve {other:?} is not supported")),
                };
                let (x, y) = (b64url(k, "x")?, b64url(k, "y")?);
                let mut point = vec![4u8];
                point.extend(x);
                point.extend(y);
                Material::Ec { curve, point }
            }
            "OKP" => match k.get("crv").and_then(Value::as_str) {
                Some("Ed25519") => Material::Ed25519(b64url(k, "x")?),
                other => return Err(format!("OKP curve {other:?} is not supported")),
            },
            "oct" => Material::Oct(b64url(k, "k")?),
            other => return Err(format!("key type {other:?} is not supported")),
        };
        Ok(Jwk {
            kid: k.get("kid").and_then(Value::as_str).map(str::to_string),
            alg: k.get("alg").and_then(Value::as_str).map(str::to_string),
            material,
        })
    }

    /// Whether this key can check a signature made with `alg`.
    pub fn fits(&self, alg: &str) -> bool {
        if self.alg.as_deref().is_some_and(|a| a != alg) {
            return false;
        }
        match (&self.material, alg) {
            (Material::Rsa { .. }, a) => a.starts_with("RS") || a.starts_with("PS"),
            (Material::Ec { curve, .. }, a) => matches!(
                (curve, a),
                (Curve::P256, "ES256") | (Curve::P384, "ES384") | (Curve::P521, "ES512")
            ),
            (Material::Ed25519(_), a) => a == "EdDSA",
            (Material::Oct(_), a) => a.starts_with("HS"),
        }
    }

    /// Whether `sig` is this key's signature with `alg` over `signed`.
    pub fn verify(&self, alg: &str, signed: &[u8], sig: &[u8]) -> bool {
        match &self.material {
            Material::Rsa { n, e } => {
                let params = match alg {
                    "RS256" => &signature::RSA_PKCS1_2048_8192_SHA256,
                    "RS384" => &signature::RSA_PKCS1_2048_8192_SHA384,
                    "RS512" => &signature::RSA_PKCS1_2048_8192_SHA512,
                    "PS256" => &signature::RSA_PSS_2048_8192_SHA256,
                    "PS384" => &signature::RSA_PSS_2048_8192_SHA384,
                    "PS512" => &signature::RSA_PSS_2048_8192_SHA512,
                    _ => return false,
                };
                signature::RsaPublicKeyComponents { n, e }
                    .verify(params, signed, sig)
                    .is_ok()
            }
            Material::Ec { curve, point } => {
                let alg = match curve {
                    Curve::P256 => &signature::ECDSA_P256_SHA256_FIXED,
                    Curve::P384 => &signature::ECDSA_P384_SHA384_FIXED,
                    Curve::P521 => &signature::ECDSA_P521_SHA512_FIXED,
                };
                signature::UnparsedPublicKey::new(alg, point)
                    .verify(signed, sig)
                    .is_ok()
            }
            Material::Ed25519(key) => signature::UnparsedPublicKey::new(&signature::ED25519, key)
                .verify(signed, sig)
                .is_ok(),
            Material::Oct(secret) => {
                let alg = match alg {
                    "HS256" => hmac::HMAC_SHA256,
                    "HS384" => hmac::HMAC_SHA384,
                    "HS512" => hmac::HMAC_SHA512,
                    _ => return false,
                };
                hmac::verify(&hmac::Key::new(alg, secret), signed, sig).is_ok()
            }
        }
    }
}

/// Standard base64 with padding, as some tools write JWT sections (accepted on input only).
pub(crate) fn decode_section(s: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .ok()
        .or_else(|| STANDARD.decode(s).ok())
}

/// The algorithms a token may name.
pub const ALGORITHMS: [&str; 13] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
    "HS256", "HS384", "HS512",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_sets_keep_usable_keys() {
        let set = Jwks::parse(
            r#"{"keys":[{"kty":"RSA","kid":"a","n":"AQAB","e":"AQAB"},{"kty":"nope"},
                {"kty":"EC","crv":"P-256","x":"AA","y":"AA"}]}"#,
        )
        .unwrap();
        assert_eq!(set.keys.len(), 2);
        assert!(set.keys[0].fits("RS256") && !set.keys[0].fits("ES256"));
        assert!(set.keys[1].fits("ES256") && !set.keys[1].fits("ES384"));
        assert!(Jwks::parse(r#"{"keys":[]}"#).is_err());
        assert!(Jwks::parse("not json").is_err());
    }

    #[test]
    fn es256_signatures_verify_and_tampering_fails() {
        use aws_lc_rs::rand::SystemRandom;
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        let point = pair.public_key().as_ref().to_vec();
        let key = Jwk {
            kid: None,
            alg: None,
            material: Material::Ec {
                curve: Curve::P256,
                point,
            },
        };
        let sig = pair.sign(&rng, b"header.payload").unwrap();
        assert!(key.verify("ES256", b"header.payload", sig.as_ref()));
        assert!(!key.verify("ES256", b"header.payloaX", sig.as_ref()));
    }
}
