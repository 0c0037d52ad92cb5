//! TLS transport sockets: what a listener's filter chain terminates (`DownstreamTlsContext`) and
//! what a cluster originates (`UpstreamTlsContext`), as plain data. The rustls configurations
//! are built from these at run time (`crate::tls`), once per set of certificates.
//!
//! Certificates and trust bundles come from:
//! - SDS from the node agent's `sds-grpc` cluster, as Istio names them: `default` is the proxy's
//!   own workload certificate and `ROOTCA` the mesh's trust bundle. strait-proxy is its own node
//!   agent: both come from the certificate it obtains from the mesh CA (`--ca-addr`).
//! - SDS over ADS (`kubernetes://NAME`, a gateway's or DestinationRule's `credentialName`).
//! - Files (`filename`) or inline PEM (`inline_string`, `inline_bytes`).

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwapOption;

use envoy_types::pb::envoy::config::core::v3::{
    ConfigSource, DataSource, TransportSocket, api_config_source, config_source, data_source,
    grpc_service, transport_socket,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig, Secret,
    SubjectAltNameMatcher, TlsCertificate, TlsParameters, UpstreamTlsContext, common_tls_context,
    secret, subject_alt_name_matcher::SanType, tls_parameters::TlsProtocol,
};
use serde::Serialize;

use super::invalid::{At, Refusal, refuse_if};
use super::proto::decode;
use super::route::{StringMatch, string_match};

#[cfg(test)]
const TLS_SOCKET: &str = "envoy.transport_sockets.tls";
const DOWNSTREAM_TLS_TYPE: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";
const UPSTREAM_TLS_TYPE: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";
const RAW_BUFFER_TYPE: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer";
/// The node agent's cluster in Istio's bootstrap, and its secrets.
pub const AGENT_SDS_CLUSTER: &str = "sds-grpc";
pub const WORKLOAD_SECRET: &str = "default";
pub const ROOT_SECRET: &str = "ROOTCA";

/// Where a certificate chain and its key come from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub enum CertificateSource {
    /// The proxy's own workload certificate (SDS `default` from `sds-grpc`).
    Workload,
    /// A secret delivered over ADS (`kubernetes://NAME`).
    Secret(String),
    /// PEM files the proxy reads.
    Files { chain: PathBuf, key: PathBuf },
    /// PEM given inline.
    Inline { chain: String, key: String },
}

/// Where the certificates a peer must chain to come from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub enum TrustSource {
    /// The mesh's trust bundle (SDS `ROOTCA` from `sds-grpc`).
    MeshRoots,
    /// A secret delivered over ADS (`kubernetes://NAME-cacert`, or a Secret's `ca.crt`).
    Secret(String),
    /// A PEM bundle file.
    File(PathBuf),
    /// A PEM bundle given inline.
    Inline(String),
}

/// A secret delivered over ADS (Envoy's SDS `Secret`, Istio's `kubernetes://NAME` for a
/// certificate and its key, `kubernetes://NAME-cacert` for the CAs that check clients).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretValue {
    Certificate { chain: String, key: String },
    Trust(String),
}

impl TryFrom<&Secret> for SecretValue {
    type Error = super::Invalid;

    fn try_from(s: &Secret) -> Result<SecretValue, super::Invalid> {
        secret(s).map_err(|r| r.of(super::Kind::Secret, &s.name))
    }
}

fn secret(s: &Secret) -> Result<SecretValue, Refusal> {
    let inline = |ds: Option<&DataSource>, field: &'static str| -> Result<String, Refusal> {
        let ds = ds.ok_or_else(|| Refusal::missing(field))?;
        match data_source(ds).under(field)? {
            Pem::Inline(text) => Ok(text),
            Pem::File(path) => std::fs::read_to_string(&path).map_err(|e| {
                Refusal::bad_value(field, path.display(), format!("a readable file ({e})"))
            }),
        }
    };
    match &s.r#type {
        Some(secret::Type::TlsCertificate(c)) => {
            refuse_if(c.password.is_some(), "tls_certificate.password")?;
            refuse_if(
                c.private_key_provider.is_some(),
                "tls_certificate.private_key_provider",
            )?;
            refuse_if(c.pkcs12.is_some(), "tls_certificate.pkcs12")?;
            Ok(SecretValue::Certificate {
                chain: inline(
                    c.certificate_chain.as_ref(),
                    "tls_certificate.certificate_chain",
                )?,
                key: inline(c.private_key.as_ref(), "tls_certificate.private_key")?,
            })
        }
        Some(secret::Type::ValidationContext(v)) => {
            refuse_if(v.crl.is_some(), "validation_context.crl")?;
            Ok(SecretValue::Trust(inline(
                v.trusted_ca.as_ref(),
                "validation_context.trusted_ca",
            )?))
        }
        Some(secret::Type::SessionTicketKeys(_)) => {
            Err(Refusal::unsupported("session_ticket_keys"))
        }
        Some(secret::Type::GenericSecret(_)) => Err(Refusal::unsupported("generic_secret")),
        None => Err(Refusal::missing("type")),
    }
}

/// Which subject alternative name a matcher looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum SanKind {
    Uri,
    Dns,
    Email,
    IpAddress,
}

/// One `match_typed_subject_alt_names` entry: the peer passes if any of its names of this kind
/// matches.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SanMatcher {
    pub kind: SanKind,
    pub matcher: StringMatch,
    pub ignore_case: bool,
}

/// How a peer's certificate is checked.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Validation {
    pub trust: TrustSource,
    /// Empty: any name (the chain alone is checked). Else one of them must match.
    pub sans: Vec<SanMatcher>,
}

/// What both sides of TLS share: the certificate presented, how the peer is checked (`None`:
/// not at all), and ALPN.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TlsCommon {
    pub certificate: Option<CertificateSource>,
    pub validation: Option<Validation>,
    pub alpn: Vec<String>,
}

/// A filter chain that terminates TLS.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DownstreamTls {
    pub common: TlsCommon,
    /// Refuse clients without a certificate (mutual TLS).
    pub require_client_certificate: bool,
    #[serde(skip)]
    pub built: Built<ServerConfigs>,
}

/// A server's rustls configs: with its ALPN list, and without one for clients that offer none
/// of it (rustls would refuse them; Envoy goes on without ALPN).
#[derive(Debug)]
pub struct ServerConfigs {
    pub alpn: Arc<rustls::ServerConfig>,
    pub no_alpn: Arc<rustls::ServerConfig>,
    /// The URI name of the certificate presented (`By=` in `x-forwarded-client-cert`).
    pub local_uri: Option<String>,
}

/// A cluster (or one of its transport socket matches) that originates TLS.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UpstreamTls {
    pub common: TlsCommon,
    /// The server name sent; empty: none (an IP address cannot be one).
    pub sni: String,
    #[serde(skip)]
    pub built: Built<Arc<rustls::ClientConfig>>,
}

/// The rustls config built from a TLS context, kept beside it with the generation of the
/// certificates it was built from (see `crate::tls::Secrets`): a rotation builds it again, on
/// the next connection. Not part of the context's equality or its dump.
pub struct Built<T>(ArcSwapOption<(u64, T)>);

impl<T> Built<T> {
    /// The value built at `generation`, if that is the one held.
    pub fn get(&self, generation: u64) -> Option<Arc<(u64, T)>> {
        self.0.load_full().filter(|b| b.0 == generation)
    }

    pub fn set(&self, generation: u64, value: T) -> Arc<(u64, T)> {
        let built = Arc::new((generation, value));
        self.0.store(Some(built.clone()));
        built
    }
}

impl<T> Default for Built<T> {
    fn default() -> Built<T> {
        Built(ArcSwapOption::empty())
    }
}

/// A copy of a context builds its own.
impl<T> Clone for Built<T> {
    fn clone(&self) -> Built<T> {
        Built::default()
    }
}

impl<T> PartialEq for Built<T> {
    fn eq(&self, _: &Built<T>) -> bool {
        true
    }
}

impl<T> std::fmt::Debug for Built<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Built")
    }
}

/// A cluster's or filter chain's transport socket: TLS, or raw bytes.
pub(crate) enum Socket<T> {
    Raw,
    Tls(T),
}

/// A filter chain's transport socket.
pub(crate) fn downstream_socket(s: &TransportSocket) -> Result<Socket<DownstreamTls>, Refusal> {
    let any = typed(s)?;
    match any.type_url.as_str() {
        RAW_BUFFER_TYPE => Ok(Socket::Raw),
        DOWNSTREAM_TLS_TYPE => {
            let ctx: DownstreamTlsContext =
                decode(any, DOWNSTREAM_TLS_TYPE).map_err(|r| r.under("typed_config"))?;
            downstream(&ctx).map(Socket::Tls).under("typed_config")
        }
        other => Err(Refusal::unsupported_value(
            "typed_config",
            format!("{:?} ({other})", s.name),
        )),
    }
}

/// A cluster's transport socket.
pub(crate) fn upstream_socket(s: &TransportSocket) -> Result<Socket<UpstreamTls>, Refusal> {
    let any = typed(s)?;
    match any.type_url.as_str() {
        RAW_BUFFER_TYPE => Ok(Socket::Raw),
        UPSTREAM_TLS_TYPE => {
            let ctx: UpstreamTlsContext =
                decode(any, UPSTREAM_TLS_TYPE).map_err(|r| r.under("typed_config"))?;
            upstream(&ctx).map(Socket::Tls).under("typed_config")
        }
        other => Err(Refusal::unsupported_value(
            "typed_config",
            format!("{:?} ({other})", s.name),
        )),
    }
}

fn typed(s: &TransportSocket) -> Result<&envoy_types::pb::google::protobuf::Any, Refusal> {
    match &s.config_type {
        Some(transport_socket::ConfigType::TypedConfig(any)) => Ok(any),
        _ => Err(Refusal::missing("typed_config")),
    }
}

fn downstream(ctx: &DownstreamTlsContext) -> Result<DownstreamTls, Refusal> {
    refuse_if(
        ctx.require_sni.as_ref().is_some_and(|b| b.value),
        "require_sni",
    )?;
    refuse_if(
        ctx.session_ticket_keys_type.is_some(),
        "session_ticket_keys",
    )?;
    refuse_if(ctx.ocsp_staple_policy != 0, "ocsp_staple_policy")?;
    let common = common(ctx.common_tls_context.as_ref()).under("common_tls_context")?;
    if common.certificate.is_none() {
        return Err(Refusal::rule(
            "common_tls_context",
            "a server needs a certificate: no tls_certificates or tls_certificate_sds_secret_configs",
        ));
    }
    let require_client_certificate = ctx
        .require_client_certificate
        .as_ref()
        .is_some_and(|b| b.value);
    if require_client_certificate && common.validation.is_none() {
        return Err(Refusal::rule(
            "require_client_certificate",
            "client certificates are required but there is no validation context to check them with",
        ));
    }
    Ok(DownstreamTls {
        common,
        require_client_certificate,
        built: Built::default(),
    })
}

fn upstream(ctx: &UpstreamTlsContext) -> Result<UpstreamTls, Refusal> {
    refuse_if(
        ctx.max_session_keys.as_ref().is_some_and(|n| n.value > 1),
        "max_session_keys",
    )?;
    let common = common(ctx.common_tls_context.as_ref()).under("common_tls_context")?;
    Ok(UpstreamTls {
        common,
        sni: ctx.sni.clone(),
        built: Built::default(),
    })
}

fn common(ctx: Option<&CommonTlsContext>) -> Result<TlsCommon, Refusal> {
    let Some(ctx) = ctx else {
        return Ok(TlsCommon {
            certificate: None,
            validation: None,
            alpn: Vec::new(),
        });
    };
    if let Some(p) = &ctx.tls_params {
        tls_params(p).under("tls_params")?;
    }
    refuse_if(
        ctx.tls_certificate_provider_instance.is_some(),
        "tls_certificate_provider_instance",
    )?;
    refuse_if(ctx.custom_handshaker.is_some(), "custom_handshaker")?;
    refuse_if(ctx.key_log.is_some(), "key_log")?;
    let mut certificates: Vec<CertificateSource> = Vec::new();
    for (i, c) in ctx.tls_certificates.iter().enumerate() {
        certificates.push(tls_certificate(c).index(i).under("tls_certificates")?);
    }
    for (i, s) in ctx.tls_certificate_sds_secret_configs.iter().enumerate() {
        certificates.push(
            sds_certificate(s)
                .index(i)
                .under("tls_certificate_sds_secret_configs")?,
        );
    }
    if certificates.len() > 1 {
        return Err(Refusal::unsupported_value(
            "tls_certificates",
            format!(
                "{} certificates (strait-proxy presents one; Envoy picks by key type and SNI)",
                certificates.len()
            ),
        ));
    }
    use common_tls_context::ValidationContextType as V;
    let validation = match &ctx.validation_context_type {
        None => None,
        Some(V::ValidationContext(v)) => {
            let trust = v
                .trusted_ca
                .as_ref()
                .map(|ds| {
                    data_source(ds).map(|p| match p {
                        Pem::File(path) => TrustSource::File(path),
                        Pem::Inline(text) => TrustSource::Inline(text),
                    })
                })
                .transpose()
                .under("validation_context.trusted_ca")?;
            validation(v, trust).under("validation_context")?
        }
        Some(V::ValidationContextSdsSecretConfig(s)) => {
            let trust = sds_trust(s).under("validation_context_sds_secret_config")?;
            Some(Validation {
                trust,
                sans: Vec::new(),
            })
        }
        Some(V::CombinedValidationContext(c)) => {
            let trust = c
                .validation_context_sds_secret_config
                .as_ref()
                .ok_or_else(|| Refusal::missing("validation_context_sds_secret_config"))
                .and_then(sds_trust)
                .under("combined_validation_context")?;
            let default = c.default_validation_context.clone().unwrap_or_default();
            if default.trusted_ca.is_some() {
                return Err(Refusal::unsupported_value(
                    "combined_validation_context.default_validation_context.trusted_ca",
                    "beside an SDS trust bundle",
                ));
            }
            validation(&default, Some(trust))
                .under("combined_validation_context.default_validation_context")?
        }
        #[allow(deprecated)]
        Some(V::ValidationContextCertificateProvider(_))
        | Some(V::ValidationContextCertificateProviderInstance(_)) => {
            return Err(Refusal::unsupported(
                "validation_context_certificate_provider",
            ));
        }
    };
    Ok(TlsCommon {
        certificate: certificates.pop(),
        validation,
        alpn: ctx.alpn_protocols.clone(),
    })
}

/// TLS 1.2 and 1.3 are what strait-proxy speaks (rustls); a range that excludes both is
/// refused. Cipher suites and curves are rustls's own (Istio's list is a subset of them).
fn tls_params(p: &TlsParameters) -> Result<(), Refusal> {
    let version = |v: i32| TlsProtocol::try_from(v).unwrap_or(TlsProtocol::TlsAuto);
    let max = version(p.tls_maximum_protocol_version);
    if matches!(max, TlsProtocol::TlSv10 | TlsProtocol::TlSv11) {
        return Err(Refusal::unsupported_value(
            "tls_maximum_protocol_version",
            format!("{max:?} (strait-proxy speaks TLS 1.2 and 1.3)"),
        ));
    }
    Ok(())
}

fn validation(
    v: &CertificateValidationContext,
    trust: Option<TrustSource>,
) -> Result<Option<Validation>, Refusal> {
    refuse_if(
        !v.verify_certificate_spki.is_empty(),
        "verify_certificate_spki",
    )?;
    refuse_if(
        !v.verify_certificate_hash.is_empty(),
        "verify_certificate_hash",
    )?;
    refuse_if(v.crl.is_some(), "crl")?;
    refuse_if(
        v.custom_validator_config.is_some(),
        "custom_validator_config",
    )?;
    #[allow(deprecated)]
    refuse_if(
        !v.match_subject_alt_names.is_empty(),
        "match_subject_alt_names",
    )?;
    refuse_if(v.allow_expired_certificate, "allow_expired_certificate")?;
    let sans = v
        .match_typed_subject_alt_names
        .iter()
        .enumerate()
        .map(|(i, m)| san_matcher(m).index(i))
        .collect::<Result<Vec<_>, _>>()
        .under("match_typed_subject_alt_names")?;
    match trust {
        Some(trust) => Ok(Some(Validation { trust, sans })),
        // No trust anchor: Envoy verifies nothing (and names cannot be checked without it).
        None if sans.is_empty() => Ok(None),
        None => Err(Refusal::rule(
            "trusted_ca",
            "subject alternative names to match but no trusted CA to check the chain with",
        )),
    }
}

fn san_matcher(m: &SubjectAltNameMatcher) -> Result<SanMatcher, Refusal> {
    let kind = match SanType::try_from(m.san_type) {
        Ok(SanType::Uri) => SanKind::Uri,
        Ok(SanType::Dns) => SanKind::Dns,
        Ok(SanType::Email) => SanKind::Email,
        Ok(SanType::IpAddress) => SanKind::IpAddress,
        _ => {
            return Err(Refusal::bad_value(
                "san_type",
                m.san_type,
                "URI, DNS, EMAIL or IP_ADDRESS",
            ));
        }
    };
    let Some(string) = m.matcher.as_ref() else {
        return Err(Refusal::missing("matcher"));
    };
    let matcher = string_match(string).under("matcher")?;
    Ok(SanMatcher {
        kind,
        matcher,
        ignore_case: string.ignore_case,
    })
}

fn tls_certificate(c: &TlsCertificate) -> Result<CertificateSource, Refusal> {
    refuse_if(c.password.is_some(), "password")?;
    refuse_if(c.private_key_provider.is_some(), "private_key_provider")?;
    refuse_if(c.pkcs12.is_some(), "pkcs12")?;
    refuse_if(c.watched_directory.is_some(), "watched_directory")?;
    let chain = c
        .certificate_chain
        .as_ref()
        .ok_or_else(|| Refusal::missing("certificate_chain"))
        .and_then(data_source)
        .under("certificate_chain")?;
    let key = c
        .private_key
        .as_ref()
        .ok_or_else(|| Refusal::missing("private_key"))
        .and_then(data_source)
        .under("private_key")?;
    match (chain, key) {
        (Pem::File(chain), Pem::File(key)) => Ok(CertificateSource::Files { chain, key }),
        (Pem::Inline(chain), Pem::Inline(key)) => Ok(CertificateSource::Inline { chain, key }),
        _ => Err(Refusal::unsupported_value(
            "private_key",
            "from another kind of source than the certificate chain",
        )),
    }
}

enum Pem {
    File(PathBuf),
    Inline(String),
}

fn data_source(ds: &DataSource) -> Result<Pem, Refusal> {
    refuse_if(ds.watched_directory.is_some(), "watched_directory")?;
    match &ds.specifier {
        Some(data_source::Specifier::Filename(f)) => Ok(Pem::File(PathBuf::from(f))),
        Some(data_source::Specifier::InlineString(s)) => Ok(Pem::Inline(s.clone())),
        Some(data_source::Specifier::InlineBytes(b)) => String::from_utf8(b.clone())
            .map(Pem::Inline)
            .map_err(|_| Refusal::bad_value("inline_bytes", "(not UTF-8)", "PEM text")),
        Some(data_source::Specifier::EnvironmentVariable(_)) => {
            Err(Refusal::unsupported("environment_variable"))
        }
        None => Err(Refusal::missing("specifier")),
    }
}

/// Where an SDS secret comes from.
enum SdsSource {
    /// The node agent (`sds-grpc`): the proxy's own identity.
    Agent,
    /// ADS: a secret the control plane sends.
    Ads,
}

fn sds_source(s: &SdsSecretConfig) -> Result<SdsSource, Refusal> {
    let Some(source) = &s.sds_config else {
        return Err(Refusal::missing("sds_config"));
    };
    sds_config(source).under("sds_config")
}

fn sds_config(c: &ConfigSource) -> Result<SdsSource, Refusal> {
    match &c.config_source_specifier {
        Some(config_source::ConfigSourceSpecifier::Ads(_)) => Ok(SdsSource::Ads),
        Some(config_source::ConfigSourceSpecifier::ApiConfigSource(api)) => {
            let agent = api.api_type == api_config_source::ApiType::Grpc as i32
                && api.grpc_services.iter().any(|g| {
                    matches!(
                        &g.target_specifier,
                        Some(grpc_service::TargetSpecifier::EnvoyGrpc(e))
                            if e.cluster_name == AGENT_SDS_CLUSTER
                    )
                });
            if agent {
                Ok(SdsSource::Agent)
            } else {
                Err(Refusal::unsupported_value(
                    "api_config_source",
                    format!("other than gRPC to the node agent's {AGENT_SDS_CLUSTER:?} cluster"),
                ))
            }
        }
        _ => Err(Refusal::unsupported_value(
            "config_source_specifier",
            "other than ads or the node agent",
        )),
    }
}

fn sds_certificate(s: &SdsSecretConfig) -> Result<CertificateSource, Refusal> {
    match sds_source(s)? {
        SdsSource::Agent if s.name == WORKLOAD_SECRET => Ok(CertificateSource::Workload),
        SdsSource::Agent => Err(Refusal::unsupported_value(
            "name",
            format!(
                "{:?} from the node agent (it serves {WORKLOAD_SECRET:?} and {ROOT_SECRET:?})",
                s.name
            ),
        )),
        SdsSource::Ads => Ok(CertificateSource::Secret(s.name.clone())),
    }
}

fn sds_trust(s: &SdsSecretConfig) -> Result<TrustSource, Refusal> {
    match sds_source(s)? {
        SdsSource::Agent if s.name == ROOT_SECRET => Ok(TrustSource::MeshRoots),
        SdsSource::Agent => Err(Refusal::unsupported_value(
            "name",
            format!(
                "{:?} from the node agent (it serves {WORKLOAD_SECRET:?} and {ROOT_SECRET:?})",
                s.name
            ),
        )),
        SdsSource::Ads => Ok(TrustSource::Secret(s.name.clone())),
    }
}

impl TlsCommon {
    /// The secrets delivered over ADS this context needs (to subscribe to).
    pub fn ads_secrets(&self) -> impl Iterator<Item = &str> {
        let cert = match &self.certificate {
            Some(CertificateSource::Secret(name)) => Some(name.as_str()),
            _ => None,
        };
        let trust = match self.validation.as_ref().map(|v| &v.trust) {
            Some(TrustSource::Secret(name)) => Some(name.as_str()),
            _ => None,
        };
        cert.into_iter().chain(trust)
    }

    /// Whether it needs the proxy's own workload identity.
    pub fn uses_workload_identity(&self) -> bool {
        matches!(self.certificate, Some(CertificateSource::Workload))
            || matches!(
                self.validation.as_ref().map(|v| &v.trust),
                Some(TrustSource::MeshRoots)
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::{
        AggregatedConfigSource, ApiConfigSource, GrpcService,
    };
    use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
    use envoy_types::util::pack_any;

    fn agent(name: &str) -> SdsSecretConfig {
        SdsSecretConfig {
            name: name.to_string(),
            sds_config: Some(ConfigSource {
                config_source_specifier: Some(
                    config_source::ConfigSourceSpecifier::ApiConfigSource(ApiConfigSource {
                        api_type: api_config_source::ApiType::Grpc as i32,
                        grpc_services: vec![GrpcService {
                            target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
                                grpc_service::EnvoyGrpc {
                                    cluster_name: AGENT_SDS_CLUSTER.to_string(),
                                    ..Default::default()
                                },
                            )),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                ),
                ..Default::default()
            }),
        }
    }

    fn mesh_context(sans: &[&str]) -> CommonTlsContext {
        CommonTlsContext {
            alpn_protocols: vec!["istio-h2".into(), "istio".into(), "h2".into()],
            tls_certificate_sds_secret_configs: vec![agent(WORKLOAD_SECRET)],
            validation_context_type: Some(
                common_tls_context::ValidationContextType::CombinedValidationContext(
                    common_tls_context::CombinedCertificateValidationContext {
                        default_validation_context: Some(CertificateValidationContext {
                            match_typed_subject_alt_names: sans
                                .iter()
                                .map(|s| SubjectAltNameMatcher {
                                    san_type: SanType::Uri as i32,
                                    matcher: Some(StringMatcher {
                                        match_pattern: Some(string_matcher::MatchPattern::Exact(
                                            s.to_string(),
                                        )),
                                        ..Default::default()
                                    }),
                                    ..Default::default()
                                })
                                .collect(),
                            ..Default::default()
                        }),
                        validation_context_sds_secret_config: Some(agent(ROOT_SECRET)),
                        ..Default::default()
                    },
                ),
            ),
            ..Default::default()
        }
    }

    fn socket(any: envoy_types::pb::google::protobuf::Any) -> TransportSocket {
        TransportSocket {
            name: TLS_SOCKET.to_string(),
            config_type: Some(transport_socket::ConfigType::TypedConfig(any)),
        }
    }

    #[test]
    fn istio_mutual_reads_as_the_workload_identity_and_the_mesh_roots() {
        let s = socket(pack_any(UpstreamTlsContext {
            sni: "outbound_.9080_._.reviews.default.svc.cluster.local".into(),
            common_tls_context: Some(mesh_context(&[
                "spiffe://cluster.local/ns/default/sa/reviews",
            ])),
            ..Default::default()
        }));
        let Ok(Socket::Tls(tls)) = upstream_socket(&s) else {
            panic!("not TLS");
        };
        assert_eq!(
            tls.sni,
            "outbound_.9080_._.reviews.default.svc.cluster.local"
        );
        assert_eq!(tls.common.certificate, Some(CertificateSource::Workload));
        let v = tls.common.validation.as_ref().unwrap();
        assert_eq!(v.trust, TrustSource::MeshRoots);
        assert_eq!(
            v.sans,
            vec![SanMatcher {
                kind: SanKind::Uri,
                matcher: StringMatch::Exact("spiffe://cluster.local/ns/default/sa/reviews".into()),
                ignore_case: false,
            }]
        );
        assert!(tls.common.uses_workload_identity());
        assert_eq!(tls.common.ads_secrets().count(), 0);
    }

    /// Istio's auto-mTLS cluster: mutual TLS to endpoints labelled `tlsMode: istio`, plain
    /// text to the others; TLS to ORIGINAL_DST destinations is refused.
    #[test]
    fn transport_socket_matches_pick_tls_per_endpoint_by_its_metadata() {
        use crate::config::{Cluster, ClusterTls, cluster::load_assignment};
        use envoy_types::pb::envoy::config::cluster::v3 as cl;
        use envoy_types::pb::envoy::config::core::v3 as core;
        use envoy_types::pb::envoy::config::endpoint::v3 as ep;
        use envoy_types::pb::google::protobuf::{Struct, Value, value};

        let fields = |kv: &[(&str, &str)]| Struct {
            fields: kv
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        Value {
                            kind: Some(value::Kind::StringValue(v.to_string())),
                        },
                    )
                })
                .collect(),
        };
        let mtls = socket(pack_any(UpstreamTlsContext {
            common_tls_context: Some(mesh_context(&[])),
            ..Default::default()
        }));
        let raw = TransportSocket {
            name: "envoy.transport_sockets.raw_buffer".into(),
            config_type: Some(transport_socket::ConfigType::TypedConfig(
                envoy_types::pb::google::protobuf::Any {
                    type_url: RAW_BUFFER_TYPE.into(),
                    value: Vec::new(),
                },
            )),
        };
        let mut c = cl::Cluster {
            name: "outbound|9080||reviews.default.svc.cluster.local".into(),
            cluster_discovery_type: Some(cl::cluster::ClusterDiscoveryType::Type(
                cl::cluster::DiscoveryType::Eds as i32,
            )),
            transport_socket_matches: vec![
                cl::cluster::TransportSocketMatch {
                    name: "tlsMode-istio".into(),
                    r#match: Some(fields(&[("tlsMode", "istio")])),
                    transport_socket: Some(mtls.clone()),
                },
                cl::cluster::TransportSocketMatch {
                    name: "tlsMode-disabled".into(),
                    r#match: Some(Struct::default()),
                    transport_socket: Some(raw),
                },
            ],
            ..Default::default()
        };
        let cluster = Cluster::try_from(&c).unwrap();
        let ClusterTls::ByEndpoint { matches, default } = &cluster.tls else {
            panic!("not per endpoint: {:?}", cluster.tls);
        };
        assert_eq!(matches.len(), 2);
        assert!(default.is_none());

        let lb = |ip: &str, meta: Option<Struct>| ep::LbEndpoint {
            host_identifier: Some(ep::lb_endpoint::HostIdentifier::Endpoint(ep::Endpoint {
                address: Some(core::Address {
                    address: Some(core::address::Address::SocketAddress(core::SocketAddress {
                        address: ip.into(),
                        port_specifier: Some(core::socket_address::PortSpecifier::PortValue(9080)),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            })),
            metadata: meta.map(|m| core::Metadata {
                filter_metadata: [(
                    crate::config::cluster::TRANSPORT_SOCKET_MATCH.to_string(),
                    m,
                )]
                .into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let cla = ep::ClusterLoadAssignment {
            cluster_name: c.name.clone(),
            endpoints: vec![ep::LocalityLbEndpoints {
                lb_endpoints: vec![
                    lb("10.0.0.1", Some(fields(&[("tlsMode", "istio")]))),
                    lb("10.0.0.2", None),
                    lb("10.0.0.3", Some(fields(&[("tlsMode", "disabled")]))),
                ],
                ..Default::default()
            }],
            ..Default::default()
        };
        let endpoints = load_assignment(&cla, false).unwrap();
        let picked: Vec<bool> = endpoints
            .iter()
            .map(|e| cluster.tls.for_endpoint(e).is_some())
            .collect();
        assert_eq!(picked, [true, false, false]);
        assert_eq!(
            cluster
                .tls
                .for_endpoint(&endpoints[0])
                .unwrap()
                .common
                .certificate,
            Some(CertificateSource::Workload)
        );

        // One socket for every endpoint; none to ORIGINAL_DST destinations.
        c.transport_socket_matches.clear();
        c.transport_socket = Some(mtls);
        let all = Cluster::try_from(&c).unwrap();
        assert!(matches!(all.tls, ClusterTls::All(_)));
        assert!(all.tls.for_endpoint(&endpoints[1]).is_some());
        c.cluster_discovery_type = Some(cl::cluster::ClusterDiscoveryType::Type(
            cl::cluster::DiscoveryType::OriginalDst as i32,
        ));
        c.lb_policy = cl::cluster::LbPolicy::ClusterProvided as i32;
        let err = Cluster::try_from(&c).unwrap_err().to_string();
        assert!(err.contains("TLS to ORIGINAL_DST destinations"), "{err}");
    }

    #[test]
    fn a_server_requires_client_certificates_only_with_something_to_check_them() {
        let mut ctx = DownstreamTlsContext {
            require_client_certificate: Some(envoy_types::pb::google::protobuf::BoolValue {
                value: true,
            }),
            common_tls_context: Some(mesh_context(&[])),
            ..Default::default()
        };
        let Ok(Socket::Tls(tls)) = downstream_socket(&socket(pack_any(ctx.clone()))) else {
            panic!("refused");
        };
        assert!(tls.require_client_certificate);
        ctx.common_tls_context
            .as_mut()
            .unwrap()
            .validation_context_type = None;
        let Err(r) = downstream_socket(&socket(pack_any(ctx))) else {
            panic!("accepted");
        };
        assert_eq!(
            r.path().to_string(),
            "typed_config.require_client_certificate"
        );
    }

    #[test]
    fn credential_names_come_over_ads_and_files_are_read_from_disk() {
        let ads = |name: &str| SdsSecretConfig {
            name: name.to_string(),
            sds_config: Some(ConfigSource {
                config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
                    AggregatedConfigSource {},
                )),
                ..Default::default()
            }),
        };
        let common = CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![ads("kubernetes://client")],
            validation_context_type: Some(
                common_tls_context::ValidationContextType::CombinedValidationContext(
                    common_tls_context::CombinedCertificateValidationContext {
                        default_validation_context: None,
                        validation_context_sds_secret_config: Some(ads(
                            "kubernetes://client-cacert",
                        )),
                        ..Default::default()
                    },
                ),
            ),
            ..Default::default()
        };
        let Ok(Socket::Tls(tls)) = upstream_socket(&socket(pack_any(UpstreamTlsContext {
            sni: "my-nginx.mesh-external.svc.cluster.local".into(),
            common_tls_context: Some(common),
            ..Default::default()
        }))) else {
            panic!("refused");
        };
        assert_eq!(
            tls.common.ads_secrets().collect::<Vec<_>>(),
            ["kubernetes://client", "kubernetes://client-cacert"]
        );
        let files = CommonTlsContext {
            validation_context_type: Some(
                common_tls_context::ValidationContextType::ValidationContext(
                    CertificateValidationContext {
                        trusted_ca: Some(DataSource {
                            specifier: Some(data_source::Specifier::Filename(
                                "/etc/ssl/certs/ca-certificates.crt".into(),
                            )),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                ),
            ),
            ..Default::default()
        };
        let Ok(Socket::Tls(tls)) = upstream_socket(&socket(pack_any(UpstreamTlsContext {
            sni: "edition.cnn.com".into(),
            common_tls_context: Some(files),
            ..Default::default()
        }))) else {
            panic!("refused");
        };
        assert_eq!(
            tls.common.validation.unwrap().trust,
            TrustSource::File("/etc/ssl/certs/ca-certificates.crt".into())
        );
        assert_eq!(tls.common.certificate, None);
    }

    #[test]
    fn another_agent_secret_is_refused_with_its_path() {
        let mut common = mesh_context(&[]);
        common.tls_certificate_sds_secret_configs = vec![agent("file-cert:/a.pem~/b.pem")];
        let Err(r) = upstream_socket(&socket(pack_any(UpstreamTlsContext {
            common_tls_context: Some(common),
            ..Default::default()
        }))) else {
            panic!("accepted");
        };
        assert_eq!(
            r.path().to_string(),
            "typed_config.common_tls_context.tls_certificate_sds_secret_configs[0].name"
        );
    }
}
