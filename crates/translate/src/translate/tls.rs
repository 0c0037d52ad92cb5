//! TLS pieces that gateways (server side) and TLS origination (client side) share: SDS over ADS
//! for Kubernetes Secrets (`kubernetes://NAME`, recorded so that the proxy gets those Secrets),
//! files the proxy reads, protocol versions, subject alternative name matchers.

use envoy_types::pb::envoy::config::core::v3::{
    AggregatedConfigSource, ApiVersion, ConfigSource, DataSource, TransportSocket,
    config_source::ConfigSourceSpecifier, data_source, transport_socket,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    SdsSecretConfig, SubjectAltNameMatcher, TlsParameters, subject_alt_name_matcher::SanType,
    tls_parameters::TlsProtocol,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use envoy_types::util::pack_any;
use strait_api::networking::gateway::TlsProtocol as IstioTlsProtocol;

use super::Ctx;

/// The prefix of the SDS names of Kubernetes Secrets (Istio's `credentials.KubernetesSecretType`).
pub const KUBERNETES_PREFIX: &str = "kubernetes://";
/// The suffix of the SDS name of a Secret's CA (Istio's `SdsCaSuffix`).
pub const CA_SUFFIX: &str = "-cacert";

/// The SDS name of the certificate and key of Secret `name`.
pub fn credential_name(name: &str) -> String {
    format!("{KUBERNETES_PREFIX}{name}")
}

/// The SDS name of the CA of Secret `name` (Secret `NAME-cacert`, else NAME's own CA key).
pub fn credential_ca_name(name: &str) -> String {
    format!("{KUBERNETES_PREFIX}{name}{CA_SUFFIX}")
}

/// SDS over ADS for one Secret-backed resource, as Istio sets it (no `initial_fetch_timeout`: a
/// Secret may not exist, and that must not hold the whole listener or cluster forever).
fn ads_secret(sds_name: String) -> SdsSecretConfig {
    SdsSecretConfig {
        name: sds_name,
        sds_config: Some(ConfigSource {
            resource_api_version: ApiVersion::V3 as i32,
            config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
            ..Default::default()
        }),
    }
}

impl Ctx<'_> {
    /// The certificate and key of Secret `name` over SDS; the proxy will get that Secret.
    pub(super) fn credential(&self, name: &str) -> SdsSecretConfig {
        let sds = credential_name(name);
        self.credentials.borrow_mut().insert(sds.clone());
        ads_secret(sds)
    }

    /// The CA of Secret `name` over SDS; the proxy will get it.
    pub(super) fn credential_ca(&self, name: &str) -> SdsSecretConfig {
        let sds = credential_ca_name(name);
        self.credentials.borrow_mut().insert(sds.clone());
        ads_secret(sds)
    }
}

/// A file the proxy reads.
pub fn file(path: &str) -> Option<DataSource> {
    (!path.is_empty()).then(|| DataSource {
        specifier: Some(data_source::Specifier::Filename(path.to_string())),
        ..Default::default()
    })
}

/// PEM bytes sent inline.
pub fn inline(bytes: &[u8]) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(data_source::Specifier::InlineBytes(bytes.to_vec())),
        ..Default::default()
    })
}

/// `envoy.transport_sockets.tls` with an Upstream- or DownstreamTlsContext.
pub fn tls_transport_socket(context: impl prost::Name) -> TransportSocket {
    TransportSocket {
        name: "envoy.transport_sockets.tls".to_string(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(pack_any(context))),
    }
}

/// Istio's protocol version names as Envoy's (`TLS_AUTO`: Envoy's default).
pub fn protocol(v: IstioTlsProtocol) -> TlsProtocol {
    match v {
        IstioTlsProtocol::Auto => TlsProtocol::TlsAuto,
        IstioTlsProtocol::V1_0 => TlsProtocol::TlSv10,
        IstioTlsProtocol::V1_1 => TlsProtocol::TlSv11,
        IstioTlsProtocol::V1_2 => TlsProtocol::TlSv12,
        IstioTlsProtocol::V1_3 => TlsProtocol::TlSv13,
    }
}

/// TLS parameters from a server's settings, when it sets any (else Envoy's defaults: TLS 1.2
/// to 1.3 and its default ciphers).
pub fn server_params(
    min: IstioTlsProtocol,
    max: IstioTlsProtocol,
    ciphers: &[String],
) -> Option<TlsParameters> {
    if min == IstioTlsProtocol::Auto && max == IstioTlsProtocol::Auto && ciphers.is_empty() {
        return None;
    }
    Some(TlsParameters {
        tls_minimum_protocol_version: protocol(min) as i32,
        tls_maximum_protocol_version: protocol(max) as i32,
        cipher_suites: ciphers.to_vec(),
        ..Default::default()
    })
}

/// Matchers for names a peer certificate must carry (any one of them). Istio matches each name
/// against every SAN type; Strait says which type each is: an IP address, a URI (`spiffe://`,
/// any `scheme://`), an email address, else a DNS name (`*.example.com` matches one label).
pub fn san_matchers(names: &[String]) -> Vec<SubjectAltNameMatcher> {
    names
        .iter()
        .map(|name| {
            let san_type = if name.parse::<std::net::IpAddr>().is_ok() {
                SanType::IpAddress
            } else if name.contains("://") {
                SanType::Uri
            } else if name.contains('@') {
                SanType::Email
            } else {
                SanType::Dns
            };
            SubjectAltNameMatcher {
                san_type: san_type as i32,
                matcher: Some(StringMatcher {
                    match_pattern: Some(string_matcher::MatchPattern::Exact(name.clone())),
                    ..Default::default()
                }),
                ..Default::default()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn san_types_follow_the_name() {
        let types: Vec<i32> = san_matchers(&[
            "spiffe://cluster.local/ns/a/sa/b".into(),
            "10.0.0.1".into(),
            "ops@example.com".into(),
            "my-nginx.mesh-external.svc.cluster.local".into(),
        ])
        .iter()
        .map(|m| m.san_type)
        .collect();
        assert_eq!(
            types,
            [
                SanType::Uri as i32,
                SanType::IpAddress as i32,
                SanType::Email as i32,
                SanType::Dns as i32
            ]
        );
        assert_eq!(credential_ca_name("c"), "kubernetes://c-cacert");
        assert!(server_params(IstioTlsProtocol::Auto, IstioTlsProtocol::Auto, &[]).is_none());
        let p = server_params(IstioTlsProtocol::V1_3, IstioTlsProtocol::Auto, &[]).unwrap();
        assert_eq!(p.tls_minimum_protocol_version, TlsProtocol::TlSv13 as i32);
        assert_eq!(p.tls_maximum_protocol_version, TlsProtocol::TlsAuto as i32);
    }
}
