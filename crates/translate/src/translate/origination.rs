//! TLS origination to a destination (a DestinationRule's `tls.mode` SIMPLE or MUTUAL), as Istio
//! sets it up (`cluster_tls.go`, `constructUpstreamTLS`):
//!
//! - With `credentialName`: the CA that verifies the server is the Secret's
//!   (`kubernetes://NAME-cacert`, SDS over ADS), and MUTUAL presents the Secret's certificate
//!   (`kubernetes://NAME`). A sidecar honours `credentialName` only from a DestinationRule with a
//!   `workloadSelector` (Istio's rule, so that a Secret reaches only the workloads picked for
//!   it); gateways always do. Where Istio then sends plaintext, Strait still originates TLS,
//!   without the Secret (verified by the system's trust bundle, no client certificate): a
//!   request for TLS never leaves in the clear.
//! - Without: the server is verified against `caCertificates` (a file the proxy reads), or the
//!   system's trust bundle ([`MeshConfig::system_ca_bundle`](crate::MeshConfig), the control
//!   plane's `--system-ca-bundle`) when none is given, with `caCrl`; MUTUAL presents
//!   `clientCertificate` and `privateKey` (files).
//! - `subjectAltNames`: names the server's certificate must carry. `sni`: the SNI sent; when
//!   unset, HTTP clusters take it from the request's host (`auto_sni`) and then check that the
//!   server's certificate names that host (`auto_san_validation`) unless `subjectAltNames` or
//!   `insecureSkipVerify` say otherwise; other clusters send the service's host name.
//! - `insecureSkipVerify: true` (without `credentialName`): the server is not verified.
//!
//! TLS 1.2 to 1.3; `h2` as ALPN for HTTP/2 clusters.

use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, TlsCertificate, TlsParameters,
    UpstreamTlsContext, common_tls_context, tls_parameters::TlsProtocol,
};
use strait_api::networking::destination_rule::{ClientTlsMode, ClientTlsSettings};
use strait_registry::{Port, Service};
use strait_xds_core::ProxyRole;

use super::Ctx;
use super::mtls::UpstreamTls;
use super::tls::{file, san_matchers, tls_transport_socket};

/// Where the proxies find the system's trust bundle (Debian's), unless the control plane is
/// told otherwise (`--system-ca-bundle`).
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The client TLS of a cluster with a SIMPLE or MUTUAL DestinationRule. `selected`: the
/// DestinationRule has a `workloadSelector` (that picks this proxy).
pub(super) fn upstream(
    ctx: &Ctx<'_>,
    service: &Service,
    port: &Port,
    tls: &ClientTlsSettings,
    h2: bool,
    selected: bool,
) -> UpstreamTls {
    let mutual = tls.mode() == ClientTlsMode::Mutual;
    let skip = tls.insecure_skip_verify == Some(true);
    let mut credential = (!tls.credential_name.is_empty()).then_some(tls.credential_name.as_str());
    if credential.is_some() && ctx.proxy.role == ProxyRole::Sidecar && !selected {
        tracing::warn!(
            proxy = %ctx.proxy,
            host = %service.hostname,
            credential = tls.credential_name,
            "a DestinationRule's credentialName applies to sidecars only with a workloadSelector \
             (as in Istio): TLS is originated without that Secret (the system's trust bundle \
             verifies the server; no client certificate)"
        );
        credential = None;
    }
    let mut common = CommonTlsContext {
        tls_params: Some(TlsParameters {
            tls_minimum_protocol_version: TlsProtocol::TlSv12 as i32,
            tls_maximum_protocol_version: TlsProtocol::TlSv13 as i32,
            ..Default::default()
        }),
        alpn_protocols: if h2 {
            vec!["h2".to_string()]
        } else {
            Vec::new()
        },
        ..Default::default()
    };
    let validation = CertificateValidationContext {
        match_typed_subject_alt_names: san_matchers(&tls.subject_alt_names),
        crl: file(&tls.ca_crl),
        ..Default::default()
    };
    match credential {
        Some(name) => {
            if mutual {
                common
                    .tls_certificate_sds_secret_configs
                    .push(ctx.credential(name));
            }
            common.validation_context_type = Some(
                common_tls_context::ValidationContextType::CombinedValidationContext(
                    common_tls_context::CombinedCertificateValidationContext {
                        default_validation_context: Some(validation),
                        validation_context_sds_secret_config: Some(ctx.credential_ca(name)),
                        ..Default::default()
                    },
                ),
            );
        }
        None => {
            if mutual && !tls.credential_name.is_empty() {
                // The Secret was withheld (above): no client certificate.
            } else if mutual {
                if tls.client_certificate.is_empty() || tls.private_key.is_empty() {
                    tracing::warn!(
                        proxy = %ctx.proxy,
                        host = %service.hostname,
                        "a MUTUAL DestinationRule without credentialName needs clientCertificate \
                         and privateKey: TLS is originated without a client certificate"
                    );
                } else {
                    common.tls_certificates.push(TlsCertificate {
                        certificate_chain: file(&tls.client_certificate),
                        private_key: file(&tls.private_key),
                        ..Default::default()
                    });
                }
            }
            if !skip {
                let ca = if tls.ca_certificates.is_empty() {
                    ctx.config.mesh.system_ca_bundle.as_str()
                } else {
                    tls.ca_certificates.as_str()
                };
                common.validation_context_type = Some(
                    common_tls_context::ValidationContextType::ValidationContext(
                        CertificateValidationContext {
                            trusted_ca: file(ca),
                            ..validation
                        },
                    ),
                );
            }
        }
    }
    let sni = if !tls.sni.is_empty() {
        tls.sni.clone()
    } else if !service.hostname.starts_with('*') {
        service.hostname.clone()
    } else {
        String::new()
    };
    UpstreamTls::Originate {
        socket: tls_transport_socket(UpstreamTlsContext {
            sni,
            common_tls_context: Some(common),
            ..Default::default()
        }),
        auto_sni: tls.sni.is_empty() && port.protocol.is_http(),
        auto_san_validation: tls.sni.is_empty()
            && port.protocol.is_http()
            && tls.subject_alt_names.is_empty()
            && !skip,
    }
}
