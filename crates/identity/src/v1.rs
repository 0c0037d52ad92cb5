//! X.509 v1 peer certificates: what `openssl x509 -req` makes without an extensions file, as
//! Istio's secure-ingress and egress tasks make theirs. Envoy (BoringSSL) takes them; webpki
//! reads only v3, so a v1 end-entity certificate is checked here instead: it must be signed
//! directly by a trust anchor of the bundle (no intermediates: a v1 certificate cannot say it
//! is a CA), be within its validity, and sign the TLS 1.3 handshake with its key. TLS 1.2 with
//! a v1 certificate is refused (rustls checks TLS 1.2 signatures only through webpki).
//!
//! Everything else about the peer (its names) is checked by the caller, as for v3 certificates.

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, SubjectPublicKeyInfoDer, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error, RootCertStore};
use x509_parser::prelude::{FromDer, X509Certificate, X509Version};
use x509_parser::x509::SubjectPublicKeyInfo;

/// Whether `cert` is an X.509 v1 certificate.
pub(crate) fn is_v1(cert: &CertificateDer<'_>) -> bool {
    x509_parser::parse_x509_certificate(cert.as_ref())
        .is_ok_and(|(_, c)| c.tbs_certificate.version == X509Version::V1)
}

/// The contents of a DER value (its tag and length skipped), if it is well formed.
fn contents(der: &[u8]) -> Option<&[u8]> {
    let (&first, rest) = der.get(1..)?.split_first()?;
    if first < 0x80 {
        return rest.get(..first as usize);
    }
    let n = (first & 0x7f) as usize;
    if n == 0 || n > 4 || rest.len() < n {
        return None;
    }
    let len = rest[..n].iter().fold(0usize, |l, b| (l << 8) | *b as usize);
    rest[n..].get(..len)
}

/// A DER value equal to `anchor`, which webpki keeps without its outer tag and length.
fn same(full: &[u8], anchor: &[u8]) -> bool {
    full == anchor || contents(full) == Some(anchor)
}

fn refused(reason: String) -> CertificateError {
    CertificateError::Other(rustls::OtherError(std::sync::Arc::new(V1Refused(reason))))
}

#[derive(Debug)]
struct V1Refused(String);

impl std::fmt::Display for V1Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the peer's X.509 v1 certificate was refused: {}", self.0)
    }
}

impl std::error::Error for V1Refused {}

/// Checks a v1 end-entity certificate against the trust anchors of `roots`.
pub(crate) fn verify(
    end_entity: &CertificateDer<'_>,
    roots: &RootCertStore,
    provider: &CryptoProvider,
    now: UnixTime,
) -> Result<(), CertificateError> {
    let (_, cert) = X509Certificate::from_der(end_entity.as_ref())
        .map_err(|e| refused(format!("it cannot be read: {e}")))?;
    let at = x509_parser::time::ASN1Time::from_timestamp(now.as_secs() as i64)
        .map_err(|e| refused(format!("bad time: {e}")))?;
    if !cert.validity().is_valid_at(at) {
        return Err(if at < cert.validity().not_before {
            CertificateError::NotValidYet
        } else {
            CertificateError::Expired
        });
    }
    let issuer = cert.issuer().as_raw();
    let tbs = cert.tbs_certificate.as_ref();
    let signature = cert.signature_value.data.as_ref();
    for anchor in &roots.roots {
        if !same(issuer, anchor.subject.as_ref()) {
            continue;
        }
        // The anchor's key: its subjectPublicKeyInfo, put back in its SEQUENCE.
        let spki_contents = anchor.subject_public_key_info.as_ref();
        let mut spki = vec![0x30];
        push_len(&mut spki, spki_contents.len());
        spki.extend_from_slice(spki_contents);
        let Ok((_, key)) = SubjectPublicKeyInfo::from_der(&spki) else {
            continue;
        };
        let public = key.subject_public_key.data.as_ref();
        if provider
            .signature_verification_algorithms
            .all
            .iter()
            .any(|alg| alg.verify_signature(public, tbs, signature).is_ok())
        {
            return Ok(());
        }
    }
    Err(CertificateError::UnknownIssuer)
}

fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
}

/// The TLS 1.3 handshake signature of a v1 certificate's key.
pub(crate) fn tls13_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
    provider: &CryptoProvider,
) -> Result<HandshakeSignatureValid, Error> {
    let (_, c) = X509Certificate::from_der(cert.as_ref())
        .map_err(|e| Error::InvalidCertificate(refused(format!("it cannot be read: {e}"))))?;
    let spki = SubjectPublicKeyInfoDer::from(c.tbs_certificate.subject_pki.raw);
    rustls::crypto::verify_tls13_signature_with_raw_key(
        message,
        &spki,
        dss,
        &provider.signature_verification_algorithms,
    )
}

/// TLS 1.2 with a v1 certificate: refused.
pub(crate) fn tls12_refused() -> Error {
    Error::InvalidCertificate(refused(
        "TLS 1.2 with an X.509 v1 certificate is not supported (TLS 1.3 is)".to_string(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_contents_skip_short_and_long_lengths() {
        assert_eq!(contents(&[0x30, 0x02, 0xaa, 0xbb]), Some(&[0xaa, 0xbb][..]));
        let mut long = vec![0x30, 0x81, 0x80];
        long.extend(std::iter::repeat_n(7u8, 0x80));
        assert_eq!(contents(&long).map(<[u8]>::len), Some(0x80));
        assert_eq!(contents(&[0x30, 0x05, 0x01]), None);
        let mut out = Vec::new();
        push_len(&mut out, 0x180);
        assert_eq!(out, [0x82, 0x01, 0x80]);
    }
}
