//! The server side of a gateway's terminated TLS (HTTPS and TLS servers with SIMPLE, MUTUAL,
//! OPTIONAL_MUTUAL or ISTIO_MUTUAL), as Istio's `BuildListenerTLSContext` sets it up:
//!
//! - `credentialName` (or `credentialNames`, e.g. an RSA and an ECDSA certificate): the
//!   certificate and key of that Secret of the gateway's namespace, over SDS (`kubernetes://NAME`);
//!   MUTUAL and OPTIONAL_MUTUAL verify clients against the Secret's CA (`kubernetes://NAME-cacert`:
//!   Secret `NAME-cacert`, else NAME's `ca.crt`/`cacert`) of the first name.
//! - Else files the gateway reads: `serverCertificate`/`privateKey` (or `tlsCertificates`),
//!   clients verified against `caCertificates` (and `caCrl`).
//! - ISTIO_MUTUAL: the gateway's own workload certificate and the mesh's trust bundle (`default`
//!   and `ROOTCA` from its node agent); only for a gateway with an identity.
//! - MUTUAL and ISTIO_MUTUAL require a client certificate; OPTIONAL_MUTUAL verifies one if sent.
//!   `subjectAltNames`, `verifyCertificateSpki` and `verifyCertificateHash` restrict it further.
//! - `minProtocolVersion`, `maxProtocolVersion`, `cipherSuites` (SIMPLE, MUTUAL,
//!   OPTIONAL_MUTUAL) as Envoy's `tls_params`; unset, Envoy's defaults (TLS 1.2 to 1.3).
//! - ALPN `h2, http/1.1` for HTTPS servers.

use envoy_types::pb::envoy::config::core::v3::TransportSocket;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, TlsCertificate,
    common_tls_context,
};
use envoy_types::pb::google::protobuf::BoolValue;
use strait_api::networking::gateway::{ServerTLSSettings, TlsMode};

use crate::translate::Ctx;
use crate::translate::mtls::mesh_common_context;
use crate::translate::tls::{file, san_matchers, server_params, tls_transport_socket};

/// Istio's ALPN for HTTP servers.
const ALPN_HTTP: [&str; 2] = ["h2", "http/1.1"];

/// The transport socket of a terminated TLS server, or why it cannot have one (the server is
/// then left out).
pub(super) fn downstream_tls(
    ctx: &Ctx<'_>,
    tls: &ServerTLSSettings,
    http: bool,
) -> Result<TransportSocket, String> {
    let alpn: &[&str] = if http { &ALPN_HTTP } else { &[] };
    let mode = tls.mode();
    let (common, require) = match mode {
        TlsMode::IstioMutual => {
            if !ctx.proxy.mtls {
                return Err(
                    "ISTIO_MUTUAL needs the gateway's workload identity (start it with the \
                     control plane's TLS port, e.g. `strait gateway --proxy envoy`)"
                        .to_string(),
                );
            }
            (mesh_common_context(&tls.subject_alt_names, alpn), true)
        }
        TlsMode::Simple | TlsMode::Mutual | TlsMode::OptionalMutual => (
            files_or_credential(ctx, tls, mode, alpn)?,
            mode == TlsMode::Mutual,
        ),
        TlsMode::Passthrough | TlsMode::AutoPassthrough => {
            return Err(format!("{} does not terminate TLS", mode.as_str()));
        }
    };
    Ok(tls_transport_socket(DownstreamTlsContext {
        require_client_certificate: require.then_some(BoolValue { value: true }),
        common_tls_context: Some(common),
        ..Default::default()
    }))
}

fn files_or_credential(
    ctx: &Ctx<'_>,
    tls: &ServerTLSSettings,
    mode: TlsMode,
    alpn: &[&str],
) -> Result<CommonTlsContext, String> {
    let verify_clients = matches!(mode, TlsMode::Mutual | TlsMode::OptionalMutual);
    let mut common = CommonTlsContext {
        alpn_protocols: alpn.iter().map(|s| s.to_string()).collect(),
        tls_params: server_params(
            tls.min_protocol_version(),
            tls.max_protocol_version(),
            &tls.cipher_suites,
        ),
        ..Default::default()
    };
    let checks = CertificateValidationContext {
        match_typed_subject_alt_names: san_matchers(&tls.subject_alt_names),
        verify_certificate_spki: tls.verify_certificate_spki.clone(),
        verify_certificate_hash: tls.verify_certificate_hash.clone(),
        ..Default::default()
    };
    let names: Vec<&str> = if tls.credential_names.is_empty() {
        (!tls.credential_name.is_empty())
            .then_some(tls.credential_name.as_str())
            .into_iter()
            .collect()
    } else {
        tls.credential_names.iter().map(String::as_str).collect()
    };
    if let Some(first) = names.first() {
        common.tls_certificate_sds_secret_configs =
            names.iter().map(|n| ctx.credential(n)).collect();
        if verify_clients {
            common.validation_context_type = Some(
                common_tls_context::ValidationContextType::CombinedValidationContext(
                    common_tls_context::CombinedCertificateValidationContext {
                        default_validation_context: Some(checks),
                        validation_context_sds_secret_config: Some(ctx.credential_ca(first)),
                        ..Default::default()
                    },
                ),
            );
        }
        return Ok(common);
    }
    let pairs: Vec<(&str, &str)> = if tls.tls_certificates.is_empty() {
        vec![(&tls.server_certificate, &tls.private_key)]
    } else {
        tls.tls_certificates
            .iter()
            .map(|c| (c.server_certificate.as_str(), c.private_key.as_str()))
            .collect()
    };
    if pairs.iter().any(|(c, k)| c.is_empty() || k.is_empty()) {
        return Err(format!(
            "{} needs credentialName, or serverCertificate and privateKey",
            mode.as_str()
        ));
    }
    common.tls_certificates = pairs
        .iter()
        .map(|(cert, key)| TlsCertificate {
            certificate_chain: file(cert),
            private_key: file(key),
            ..Default::default()
        })
        .collect();
    if verify_clients {
        let ca = if tls.ca_certificates.is_empty() {
            tls.tls_certificates
                .iter()
                .map(|c| c.ca_certificates.as_str())
                .find(|c| !c.is_empty())
                .unwrap_or_default()
        } else {
            tls.ca_certificates.as_str()
        };
        if ca.is_empty() {
            return Err(format!(
                "{} without credentialName needs caCertificates to verify clients",
                mode.as_str()
            ));
        }
        common.validation_context_type = Some(
            common_tls_context::ValidationContextType::ValidationContext(
                CertificateValidationContext {
                    trusted_ca: file(ca),
                    crl: file(&tls.ca_crl),
                    ..checks
                },
            ),
        );
    }
    Ok(common)
}
