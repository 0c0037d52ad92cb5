//! Kubernetes Secrets (v1), as gateways and DestinationRules name them with `credentialName`.
//!
//! A Secret has no `spec`: its `type`, `data` (base64, decoded here) and `stringData` (plain text,
//! merged over `data` as Kubernetes does) sit at the top of the object. The key layouts Istio
//! reads for TLS are named by [`SecretLayout`]. The values never appear in `Debug` output or in
//! error messages: only the keys and sizes do.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine;
use serde::{Deserialize, Deserializer};

use crate::{FieldPath, ObjectMeta, Report};

/// `kubernetes.io/tls`: `tls.crt` and `tls.key` are required.
pub const TLS_TYPE: &str = "kubernetes.io/tls";
/// The default type.
pub const OPAQUE_TYPE: &str = "Opaque";
/// Kubernetes' limit on a Secret's data.
pub const MAX_DATA_BYTES: usize = 1024 * 1024;

/// A Secret's type and its data, decoded.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret {
    /// `Opaque` when unset.
    pub secret_type: String,
    /// `data` decoded, with `stringData` merged over it.
    pub data: BTreeMap<String, Vec<u8>>,
    pub immutable: Option<bool>,
}

impl fmt::Debug for Secret {
    /// Keys and sizes only: a Secret's values are never logged.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sizes: BTreeMap<&str, String> = self
            .data
            .iter()
            .map(|(k, v)| (k.as_str(), format!("<{} bytes>", v.len())))
            .collect();
        f.debug_struct("Secret")
            .field("type", &self.secret_type)
            .field("data", &sizes)
            .field("immutable", &self.immutable)
            .finish()
    }
}

/// Where a Secret keeps a certificate, its key and a CA, in the layouts Istio reads
/// (pilot/pkg/credentials/kube/secrets.go).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretLayout {
    /// `tls.crt`, `tls.key` (and `ca.crt`): `kubernetes.io/tls`, or generic with those keys.
    Tls,
    /// `cert`, `key` (and `cacert`): Istio's generic layout.
    Generic,
}

impl Secret {
    fn value(&self, key: &str) -> Option<&[u8]> {
        self.data
            .get(key)
            .map(Vec::as_slice)
            .filter(|v| !v.is_empty())
    }

    /// The certificate chain and private key, Istio's way: `cert` and `key`, else `tls.crt`
    /// and `tls.key`. `Err` says which keys the Secret has instead (never their values).
    pub fn key_and_cert(&self) -> Result<(SecretLayout, &[u8], &[u8]), String> {
        if let (Some(cert), Some(key)) = (self.value("cert"), self.value("key")) {
            return Ok((SecretLayout::Generic, cert, key));
        }
        if let (Some(cert), Some(key)) = (self.value("tls.crt"), self.value("tls.key")) {
            return Ok((SecretLayout::Tls, cert, key));
        }
        Err(format!(
            "found secret, but didn't have expected keys (cert and key) or (tls.crt and tls.key); found: {}",
            self.keys()
        ))
    }

    /// The CA bundle: `cacert`, else `ca.crt`.
    pub fn ca_cert(&self) -> Option<&[u8]> {
        self.value("cacert").or_else(|| self.value("ca.crt"))
    }

    /// The CA's revocation list: `ca.crl`, else `crl`.
    pub fn ca_crl(&self) -> Option<&[u8]> {
        self.value("ca.crl").or_else(|| self.value("crl"))
    }

    /// The OCSP staple a `kubernetes.io/tls` Secret may carry (`tls.ocsp-staple`).
    pub fn ocsp_staple(&self) -> Option<&[u8]> {
        self.value("tls.ocsp-staple")
    }

    /// The keys, comma-separated, for messages.
    pub fn keys(&self) -> String {
        if self.data.is_empty() {
            return "no keys".to_string();
        }
        self.data.keys().cloned().collect::<Vec<_>>().join(", ")
    }
}

/// A whole Secret object, as written.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretObject {
    #[allow(dead_code)]
    api_version: String,
    #[allow(dead_code)]
    kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, rename = "type")]
    secret_type: Option<String>,
    #[serde(default, deserialize_with = "base64_map")]
    data: BTreeMap<String, Vec<u8>>,
    #[serde(default, deserialize_with = "string_data_map")]
    string_data: BTreeMap<String, String>,
    #[serde(default)]
    immutable: Option<bool>,
}

impl SecretObject {
    pub fn into_spec(self) -> Secret {
        let mut data = self.data;
        for (k, v) in self.string_data {
            data.insert(k, v.into_bytes());
        }
        Secret {
            secret_type: self
                .secret_type
                .filter(|t| !t.is_empty())
                .unwrap_or_else(|| OPAQUE_TYPE.to_string()),
            data,
            immutable: self.immutable,
        }
    }
}

/// A map of base64 values, decoded. A value that is not base64 is an error that names the key
/// only.
fn base64_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, Vec<u8>>, D::Error> {
    let raw = text_map(d)?;
    raw.into_iter()
        .map(|(k, v)| {
            base64::engine::general_purpose::STANDARD
                .decode(v.as_bytes())
                .map(|bytes| (k.clone(), bytes))
                .map_err(|_| {
                    serde::de::Error::custom(if is_redacted(&v) {
                        format!(
                            "data[{k}]: the value is redacted (the API hides Secret data): read \
                             the Secret with `strait get secret NAME -o yaml --show-secrets`"
                        )
                    } else {
                        format!(
                            "data[{k}]: the value is not base64 (Secret data is base64-encoded; \
                             put plain text under stringData instead)"
                        )
                    })
                })
        })
        .collect()
}

/// `stringData`: plain text, but not the API's redaction marker (a redacted Secret written back
/// would replace its data with the marker).
fn string_data_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let map = text_map(d)?;
    if let Some(k) = map.keys().find(|k| is_redacted(&map[*k])) {
        return Err(serde::de::Error::custom(format!(
            "[{k}]: the value is redacted (the API hides Secret data): read the Secret with \
             `strait get secret NAME -o yaml --show-secrets`"
        )));
    }
    Ok(map)
}

/// The API's `<redacted: N bytes>`.
fn is_redacted(v: &str) -> bool {
    v.strip_prefix("<redacted: ")
        .and_then(|r| r.strip_suffix(" bytes>"))
        .is_some_and(|n| n.parse::<usize>().is_ok())
}

/// A map of strings; `null` counts as empty. A value of another type is an error that names the
/// key, not the value.
fn text_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let raw: Option<BTreeMap<String, serde_json::Value>> = Option::deserialize(d)?;
    raw.unwrap_or_default()
        .into_iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => Ok((k, s)),
            serde_json::Value::Null => Ok((k, String::new())),
            _ => Err(serde::de::Error::custom(format!(
                "[{k}]: a Secret's values are strings"
            ))),
        })
        .collect()
}

/// Kubernetes' rules: keys of letters, digits, `-`, `_` and `.` (not `.` or `..`), at most 1 MiB
/// of data, and the keys each well-known type requires.
pub fn validate(secret: &Secret, _meta: &ObjectMeta, report: &mut Report) {
    let data_at = FieldPath::root("data");
    let mut size = 0;
    for (key, value) in &secret.data {
        size += value.len();
        let valid = !key.is_empty()
            && key.len() <= 253
            && key != "."
            && key != ".."
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !valid {
            report.error(
                &data_at.key(key),
                format!(
                    "invalid key {key:?}: letters, digits, '-', '_' and '.' (not \".\" or \"..\"), at most 253"
                ),
            );
        }
    }
    if size > MAX_DATA_BYTES {
        report.error(
            &data_at,
            format!("the Secret holds {size} bytes; the limit is {MAX_DATA_BYTES} bytes"),
        );
    }
    let required: &[&str] = match secret.secret_type.as_str() {
        TLS_TYPE => &["tls.crt", "tls.key"],
        "kubernetes.io/dockerconfigjson" => &[".dockerconfigjson"],
        "kubernetes.io/dockercfg" => &[".dockercfg"],
        "kubernetes.io/ssh-auth" => &["ssh-privatekey"],
        _ => &[],
    };
    for key in required {
        if !secret.data.contains_key(*key) {
            report.error(
                &data_at.key(key),
                format!(
                    "required for a Secret of type {}: add data[{key}] (found: {})",
                    secret.secret_type,
                    secret.keys()
                ),
            );
        }
    }
    if secret.secret_type == TLS_TYPE {
        for key in ["tls.crt", "tls.key"] {
            if secret
                .data
                .get(key)
                .is_some_and(|v| !v.windows(5).any(|w| w == b"-----"))
            {
                report.warn(
                    &data_at.key(key),
                    "does not look like PEM (no \"-----BEGIN\" line): proxies will refuse it",
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Kind, Resource, Spec};
    use serde_json::json;

    fn secret(value: serde_json::Value) -> Result<Resource, crate::resource::FieldError> {
        Resource::from_value(Kind::Secret, value)
    }

    fn spec(r: &Resource) -> &Secret {
        match &r.spec {
            Spec::Secret(s) => s,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn data_is_decoded_and_string_data_merged_over_it() {
        let r = secret(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "c", "namespace": "istio-system"},
            "type": "kubernetes.io/tls",
            "data": {"tls.crt": "LS0tLS1CRUdJTg==", "tls.key": "a2V5"},
            "stringData": {"tls.key": "-----BEGIN KEY"},
        }))
        .unwrap();
        let s = spec(&r);
        assert_eq!(s.data["tls.crt"], b"-----BEGIN");
        assert_eq!(s.data["tls.key"], b"-----BEGIN KEY");
        assert_eq!(s.key_and_cert().unwrap().0, SecretLayout::Tls);
        assert!(r.validate().errors.is_empty(), "{:?}", r.validate());
        // Debug shows sizes, never values.
        let shown = format!("{s:?} {r:?}");
        assert!(shown.contains("<10 bytes>"), "{shown}");
        assert!(
            !shown.contains("BEGIN") && !shown.contains("LS0t"),
            "{shown}"
        );
    }

    #[test]
    fn bad_base64_names_the_key_and_not_the_value() {
        let e = secret(json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "c"},
            "data": {"tls.crt": "not base64 at all!"},
        }))
        .unwrap_err();
        assert!(e.message.contains("data[tls.crt]"), "{e:?}");
        assert!(!e.message.contains("at all"), "{e:?}");
    }

    #[test]
    fn a_tls_secret_needs_its_keys() {
        let r = secret(json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "c"},
            "type": "kubernetes.io/tls", "data": {"tls.crt": "LS0tLS0="},
        }))
        .unwrap();
        let report = r.validate();
        assert_eq!(report.errors.len(), 1, "{report:?}");
        assert_eq!(report.errors[0].path, "data[tls.key]");
        assert!(report.errors[0].message.contains("found: tls.crt"));
        let r = secret(json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "c"},
            "data": {"bad/key": "YQ=="},
        }))
        .unwrap();
        assert_eq!(r.validate().errors[0].path, "data[bad/key]");
        assert_eq!(spec(&r).secret_type, OPAQUE_TYPE);
    }

    #[test]
    fn istios_key_layouts() {
        let s = |pairs: &[(&str, &str)]| Secret {
            secret_type: OPAQUE_TYPE.into(),
            data: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect(),
            immutable: None,
        };
        let generic = s(&[("cert", "C"), ("key", "K"), ("cacert", "A")]);
        assert_eq!(
            generic.key_and_cert().unwrap(),
            (SecretLayout::Generic, &b"C"[..], &b"K"[..])
        );
        assert_eq!(generic.ca_cert(), Some(&b"A"[..]));
        let tls = s(&[("tls.crt", "C"), ("tls.key", "K"), ("ca.crt", "A")]);
        assert_eq!(tls.ca_cert(), Some(&b"A"[..]));
        let ca_only = s(&[("cacert", "A")]);
        let err = ca_only.key_and_cert().unwrap_err();
        assert!(err.contains("found: cacert"), "{err}");
    }
}
