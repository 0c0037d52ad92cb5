//! Certificates as PEM and DER, what they say, and the keys and CSRs workloads make.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::Identity;

/// Why certificate material could not be read or made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("{what} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)")]
    NoCertificate { what: String },
    #[error("{what} is not valid PEM: {reason}")]
    BadPem { what: String, reason: String },
    #[error("{what} holds no PEM private key (expected -----BEGIN PRIVATE KEY----- or EC/RSA)")]
    NoKey { what: String },
    #[error("{what} is not an X.509 certificate: {reason}")]
    BadCertificate { what: String, reason: String },
    #[error("cannot make a key or CSR: {0}")]
    Generate(String),
}

/// Every certificate of a PEM bundle, in order.
pub fn certs_from_pem(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::BadPem {
            what: what.to_string(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(CertError::NoCertificate {
            what: what.to_string(),
        });
    }
    Ok(certs)
}

/// The first private key of a PEM file (PKCS#8, SEC1 EC or PKCS#1 RSA).
pub fn key_from_pem(pem: &str, what: &str) -> Result<PrivateKeyDer<'static>, CertError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|_| CertError::NoKey {
        what: what.to_string(),
    })
}

/// A certificate as PEM.
pub fn to_pem(cert: &CertificateDer<'_>) -> String {
    let b64 = base64_encode(cert.as_ref());
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A time as RFC 3339 in UTC, to the second (`2026-12-07T03:10:00Z`).
pub fn rfc3339(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t)
        .replace_nanosecond(0)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "?".to_string())
}

/// What a certificate says, as tools show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The serial number in hexadecimal.
    pub serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// URI subject alternative names (SPIFFE ids).
    pub uris: Vec<String>,
    /// DNS subject alternative names.
    pub dns_names: Vec<String>,
    /// E-mail (rfc822) subject alternative names.
    pub emails: Vec<String>,
    /// IP address subject alternative names, as text.
    pub ip_addresses: Vec<String>,
    pub subject: String,
    pub issuer: String,
    pub is_ca: bool,
}

impl CertInfo {
    /// Reads a DER certificate.
    pub fn parse(der: &[u8], what: &str) -> Result<CertInfo, CertError> {
        let bad = |reason: String| CertError::BadCertificate {
            what: what.to_string(),
            reason,
        };
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| bad(e.to_string()))?;
        let mut uris = Vec::new();
        let mut dns_names = Vec::new();
        let mut emails = Vec::new();
        let mut ip_addresses = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::URI(u) => uris.push(u.to_string()),
                    GeneralName::DNSName(d) => dns_names.push(d.to_string()),
                    GeneralName::RFC822Name(e) => emails.push(e.to_string()),
                    GeneralName::IPAddress(b) => {
                        let ip = match <[u8; 4]>::try_from(*b) {
                            Ok(v4) => Some(std::net::IpAddr::from(v4)),
                            Err(_) => <[u8; 16]>::try_from(*b).ok().map(std::net::IpAddr::from),
                        };
                        ip_addresses.extend(ip.map(|ip| ip.to_string()));
                    }
                    _ => {}
                }
            }
        }
        let time = |t: x509_parser::time::ASN1Time| {
            let secs = t.timestamp();
            if secs >= 0 {
                UNIX_EPOCH + Duration::from_secs(secs as u64)
            } else {
                UNIX_EPOCH
            }
        };
        Ok(CertInfo {
            serial: cert.raw_serial_as_string().replace(':', ""),
            not_before: time(cert.validity().not_before),
            not_after: time(cert.validity().not_after),
            uris,
            dns_names,
            emails,
            ip_addresses,
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            is_ca: cert.is_ca(),
        })
    }

    /// The SPIFFE identities among the URI names.
    pub fn identities(&self) -> Vec<Identity> {
        self.uris.iter().filter_map(|u| u.parse().ok()).collect()
    }

    /// The certificate's lifetime.
    pub fn lifetime(&self) -> Duration {
        self.not_after
            .duration_since(self.not_before)
            .unwrap_or_default()
    }
}

/// A fresh private key (ECDSA P-256) and a CSR for `identity` signed with it.
pub struct KeyAndCsr {
    /// PKCS#8 PEM; it stays with the workload.
    pub key_pem: String,
    pub csr_pem: String,
}

/// Makes a key and a CSR whose only subject alternative name is the identity's URI (an empty
/// subject, as Istio's agent sends).
pub fn new_key_and_csr(identity: &Identity) -> Result<KeyAndCsr, CertError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| CertError::Generate(e.to_string()))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names =
        vec![SanType::URI(identity.uri().try_into().map_err(
            |e: rcgen::Error| CertError::Generate(e.to_string()),
        )?)];
    let csr = params
        .serialize_request(&key)
        .map_err(|e| CertError::Generate(e.to_string()))?;
    Ok(KeyAndCsr {
        key_pem: key.serialize_pem(),
        csr_pem: csr.pem().map_err(|e| CertError::Generate(e.to_string()))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_as_rfc3339() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_312_234);
        assert_eq!(rfc3339(t), "2026-11-22T01:50:34Z");
    }

    #[test]
    fn pem_round_trip_and_base64() {
        assert_eq!(base64_encode(b""), "");
        assert_eq!(base64_encode(b"f"), "Zg==");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_encode(b"foo"), "Zm9v");
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["a.example".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let again = to_pem(cert.der());
        assert_eq!(
            certs_from_pem(&again, "x").unwrap(),
            vec![cert.der().clone()]
        );
        let err = certs_from_pem("nothing here", "the file f").unwrap_err();
        assert!(
            err.to_string()
                .contains("the file f holds no PEM certificate")
        );
    }

    #[test]
    fn csrs_carry_the_identity_and_keys_stay_pkcs8() {
        let id = Identity::new("cluster.local", "foo", "sleep");
        let made = new_key_and_csr(&id).unwrap();
        assert!(made.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        key_from_pem(&made.key_pem, "key").unwrap();
        let csr = rcgen::CertificateSigningRequestParams::from_pem(&made.csr_pem).unwrap();
        let uris: Vec<String> = csr
            .params
            .subject_alt_names
            .iter()
            .filter_map(|s| match s {
                SanType::URI(u) => Some(u.as_str().to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(uris, vec![id.uri()]);
    }
}
