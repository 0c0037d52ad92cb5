//! TLS origination to a destination (a DestinationRule's `tls.mode` SIMPLE or MUTUAL), as Istio
//! sets it up: the server is verified against `caCertificates` (a file the proxy reads), or the
//! system's trust bundle when none is given, and `subjectAltNames` when given; `sni` when given,
//! else the request's host (`auto_sni`); MUTUAL presents `clientCertificate` and `privateKey`
//! (files), or the Secret named by `credentialName` (SDS over ADS, `kubernetes://NAME`, with its
//! CA as `kubernetes://NAME-cacert`). `insecureSkipVerify` verifies nothing.

use envoy_types::pb::envoy::config::core::v3::{
    AggregatedConfigSource, ApiVersion, ConfigSource, DataSource, TransportSocket,
    config_source::ConfigSourceSpecifier, data_source, transport_socket,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, SdsSecretConfig, SubjectAltNameMatcher,
    TlsCertificate, TlsParameters, UpstreamTlsContext, common_tls_context,
    subject_alt_name_matcher::SanType, tls_parameters::TlsProtocol,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use envoy_types::util::pack_any;
use strait_api::networking::destination_rule::{ClientTlsMode, ClientTlsSettings};
use strait_registry::Service;

use super::Ctx;
use super::mtls::UpstreamTls;

/// Where the proxies find the system's trust bundle (Debian's), unless the mesh config says
/// otherwise.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// SDS over ADS for a Secret: Istio's `kubernetes://NAME`.
pub fn credential_secret(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: format!("kubernetes://{name}"),
        sds_config: Some(ConfigSource {
            resource_api_version: ApiVersion::V3 as i32,
            config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
            ..Default::default()
        }),
    }
}

fn file(path: &str) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(data_source::Specifier::Filename(path.to_string())),
        ..Default::default()
    })
}

/// The client TLS of a cluster with a SIMPLE or MUTUAL DestinationRule.
pub(super) fn upstream(
    ctx: &Ctx<'_>,
    service: &Service,
    tls: &ClientTlsSettings,
    h2: bool,
) -> UpstreamTls {
    let skip = tls.insecure_skip_verify == Some(true);
    let sans: Vec<SubjectAltNameMatcher> = tls
        .subject_alt_names
        .iter()
        .map(|s| SubjectAltNameMatcher {
            san_type: if s.starts_with("spiffe://") {
                SanType::Uri
            } else {
                SanType::Dns
            } as i32,
            matcher: Some(StringMatcher {
                match_pattern: Some(string_matcher::MatchPattern::Exact(s.clone())),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
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
    let credential = (!tls.credential_name.is_empty()).then_some(tls.credential_name.as_str());
    if tls.mode() == ClientTlsMode::Mutual {
        match credential {
            Some(name) => common
                .tls_certificate_sds_secret_configs
                .push(credential_secret(name)),
            None => common.tls_certificates.push(TlsCertificate {
                certificate_chain: file(&tls.client_certificate),
                private_key: file(&tls.private_key),
                ..Default::default()
            }),
        }
    }
    if !skip {
        let validation = CertificateValidationContext {
            match_typed_subject_alt_names: sans,
            ..Default::default()
        };
        common.validation_context_type = Some(match credential {
            Some(name) if tls.mode() == ClientTlsMode::Mutual => {
                common_tls_context::ValidationContextType::CombinedValidationContext(
                    common_tls_context::CombinedCertificateValidationContext {
                        default_validation_context: Some(validation),
                        validation_context_sds_secret_config: Some(credential_secret(&format!(
                            "{name}-cacert"
                        ))),
                        ..Default::default()
                    },
                )
            }
            _ => {
                let ca = if tls.ca_certificates.is_empty() {
                    ctx.config.mesh.system_ca_bundle.as_str()
                } else {
                    tls.ca_certificates.as_str()
                };
                common_tls_context::ValidationContextType::ValidationContext(
                    CertificateValidationContext {
                        trusted_ca: file(ca),
                        ..validation
                    },
                )
            }
        });
    }
    let sni = if tls.sni.is_empty() {
        // Istio: auto_sni from the request's host; for a cluster of one host, that host.
        service.hostname.clone()
    } else {
        tls.sni.clone()
    };
    UpstreamTls::Socket(TransportSocket {
        name: "envoy.transport_sockets.tls".to_string(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(pack_any(
            UpstreamTlsContext {
                sni,
                common_tls_context: Some(common),
                ..Default::default()
            },
        ))),
    })
}
