//! Mutual TLS between sidecars, as Istio sets it up with upstream Envoy's own filters.
//!
//! - Who must use mTLS: `PeerAuthentication` at mesh (root namespace, no selector), namespace
//!   (no selector) and workload (selector) level, then `portLevelMtls`; `UNSET` inherits;
//!   several in one scope: the oldest wins; no policy at all: PERMISSIVE ([`workload_mode`]).
//! - Server side ([`inbound_chains`]): per inbound port, a filter chain for TLS with Istio's
//!   ALPNs that terminates mTLS (the client's certificate must chain to the trust bundle), and,
//!   unless STRICT, one for plaintext; under STRICT a plaintext connection is closed.
//! - Client side ([`upstream_tls`]): a DestinationRule's `tls` mode when it sets one (DISABLE,
//!   ISTIO_MUTUAL; SIMPLE and MUTUAL originate TLS), else auto mTLS: the cluster's
//!   `transport_socket_matches` send mTLS to endpoints whose metadata says
//!   `envoy.transport_socket_match: {tlsMode: istio}` (a workload with a sidecar, and not DISABLE
//!   for that port) and plaintext to the others. SNI `outbound_.PORT_.SUBSET_.HOST`; the
//!   server's SPIFFE identity is checked against the service accounts of the service's
//!   endpoints; ALPN per cluster protocol as Istio's `istio.alpn` filter would set it (upstream
//!   Envoy has no such filter): `istio-http/1.1, istio, http/1.1`, `istio-h2, istio, h2`, or
//!   `istio` for TCP.
//!
//! The certificate and the trust bundle are Istio's SDS names, `default` and `ROOTCA`, from the
//! bootstrap's `sds-grpc` cluster (the node agent for Envoy; strait-proxy serves them from its
//! own identity). Proxies without an identity (node metadata without `STRAIT_MTLS`) get none
//! of this: they neither send nor accept mTLS.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::cluster::v3::cluster::TransportSocketMatch;
use envoy_types::pb::envoy::config::core::v3::{
    ApiConfigSource, ApiVersion, ConfigSource, GrpcService, Metadata, TransportSocket,
    api_config_source::ApiType, config_source::ConfigSourceSpecifier, grpc_service,
    transport_socket,
};
use envoy_types::pb::envoy::config::listener::v3::FilterChainMatch;
use envoy_types::pb::envoy::extensions::transport_sockets::raw_buffer::v3::RawBuffer;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig,
    SubjectAltNameMatcher, TlsParameters, UpstreamTlsContext, common_tls_context,
    subject_alt_name_matcher::SanType, tls_parameters::TlsProtocol,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use envoy_types::pb::google::protobuf::{Duration as PbDuration, Struct, Value, value::Kind};
use envoy_types::util::pack_any;
use strait_api::networking::destination_rule::{ClientTlsMode as TlsMode, ClientTlsSettings};
use strait_api::security::peer_authentication::{MtlsMode, PeerAuthentication};
use strait_api::{Kind as ResourceKind, ObjectMeta, Spec};
use strait_registry::{Endpoint, Port, Service};

use super::Ctx;
use super::tls::tls_transport_socket;
use crate::ConfigSnapshot;
use crate::snapshot::namespace_of;

/// The label Istio's injector puts on workloads that have a sidecar.
pub const TLS_MODE_LABEL: &str = "security.istio.io/tlsMode";
/// The endpoint metadata that transport socket matches read.
pub const TRANSPORT_SOCKET_MATCH: &str = "envoy.transport_socket_match";
/// The bootstrap cluster of the node agent's SDS (Istio's).
pub const SDS_CLUSTER: &str = "sds-grpc";
/// Istio's SDS names for the workload's certificate and its trust bundle.
pub const DEFAULT_SECRET: &str = "default";
pub const ROOT_SECRET: &str = "ROOTCA";

/// The ALPNs an Istio client offers over mTLS; a server's TLS chain matches on them.
pub const ISTIO_ALPNS: [&str; 5] = [
    "istio",
    "istio-peer-exchange",
    "istio-http/1.0",
    "istio-http/1.1",
    "istio-h2",
];

/// Istio's server cipher suites (`SupportedCiphers`).
const SERVER_CIPHERS: [&str; 6] = [
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
    "AES128-GCM-SHA256",
];

/// A resolved PeerAuthentication mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Strict,
    Permissive,
    Disable,
}

fn resolved(m: &MtlsMode) -> Option<Mode> {
    match m {
        MtlsMode::STRICT => Some(Mode::Strict),
        MtlsMode::PERMISSIVE => Some(Mode::Permissive),
        MtlsMode::DISABLE => Some(Mode::Disable),
        MtlsMode::UNSET => None,
    }
}

/// The oldest of several policies (Istio: by creation time, then name).
fn oldest<'a>(
    candidates: impl Iterator<Item = (&'a ObjectMeta, &'a PeerAuthentication)>,
) -> Option<&'a PeerAuthentication> {
    candidates
        .min_by(|(a, _), (b, _)| {
            (a.creation_timestamp.as_deref().unwrap_or(""), &a.name)
                .cmp(&(b.creation_timestamp.as_deref().unwrap_or(""), &b.name))
        })
        .map(|(_, pa)| pa)
}

fn peer_authentications(
    config: &ConfigSnapshot,
) -> impl Iterator<Item = (&ObjectMeta, &PeerAuthentication)> {
    config
        .of(ResourceKind::PeerAuthentication)
        .filter_map(|r| match &r.spec {
            Spec::PeerAuthentication(pa) => Some((&r.metadata, pa)),
            _ => None,
        })
}

fn no_selector(pa: &PeerAuthentication) -> bool {
    pa.selector
        .as_ref()
        .is_none_or(|s| s.match_labels.is_empty())
}

/// The mode of the mesh- and namespace-level policies only, as a client infers a service's mode
/// (Istio ignores workload-level policies there; they act through the endpoints' tlsMode).
pub fn namespace_mode(config: &ConfigSnapshot, namespace: &str) -> Mode {
    let root = config.mesh.root_namespace.as_str();
    let level = |ns: &str| {
        oldest(
            peer_authentications(config).filter(|(m, pa)| namespace_of(m) == ns && no_selector(pa)),
        )
        .and_then(|pa| pa.mtls.as_ref())
        .and_then(|m| m.mode.as_ref())
        .and_then(resolved)
    };
    let mut mode = Mode::Permissive;
    if let Some(m) = level(root) {
        mode = m;
    }
    if namespace != root
        && let Some(m) = level(namespace)
    {
        mode = m;
    }
    mode
}

/// The mode for a workload (its namespace and labels) on one of its ports: mesh, then
/// namespace, then the workload's selected policy, then that policy's port-level setting.
pub fn workload_mode(
    config: &ConfigSnapshot,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    port: u16,
) -> Mode {
    let mut mode = namespace_mode(config, namespace);
    if namespace == config.mesh.root_namespace {
        // Selectors in the root namespace are ignored (Istio's docs).
        return mode;
    }
    let selected = oldest(peer_authentications(config).filter(|(m, pa)| {
        namespace_of(m) == namespace
            && pa.selector.as_ref().is_some_and(|s| {
                !s.match_labels.is_empty()
                    && s.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            })
    }));
    if let Some(pa) = selected {
        if let Some(m) = pa
            .mtls
            .as_ref()
            .and_then(|m| m.mode.as_ref())
            .and_then(resolved)
        {
            mode = m;
        }
        if let Some(m) = pa
            .port_level_mtls
            .as_ref()
            .and_then(|ports| ports.get(&u32::from(port)))
            .and_then(|m| m.mode.as_ref())
            .and_then(resolved)
        {
            mode = m;
        }
    }
    mode
}

/// Does `e` take mTLS from auto-mTLS clients? It has a sidecar (Istio's tlsMode label) and its
/// own policy for the port is not DISABLE.
pub fn endpoint_takes_mtls(config: &ConfigSnapshot, e: &Endpoint) -> bool {
    e.labels.get(TLS_MODE_LABEL).map(String::as_str) == Some("istio")
        && workload_mode(config, &e.namespace, &e.labels, e.port) != Mode::Disable
}

/// The endpoint metadata auto mTLS matches on.
pub fn endpoint_metadata(metadata: &mut Metadata) {
    metadata.filter_metadata.insert(
        TRANSPORT_SOCKET_MATCH.to_string(),
        Struct {
            fields: [(
                "tlsMode".to_string(),
                Value {
                    kind: Some(Kind::StringValue("istio".to_string())),
                },
            )]
            .into(),
        },
    );
}

/// An SDS secret from the node agent (or the proxy's own identity): Istio's shape, waiting for
/// the certificate rather than starting without it.
pub fn agent_secret(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.to_string(),
        sds_config: Some(ConfigSource {
            resource_api_version: ApiVersion::V3 as i32,
            initial_fetch_timeout: Some(PbDuration::default()),
            config_source_specifier: Some(ConfigSourceSpecifier::ApiConfigSource(
                ApiConfigSource {
                    api_type: ApiType::Grpc as i32,
                    transport_api_version: ApiVersion::V3 as i32,
                    set_node_on_first_message_only: true,
                    grpc_services: vec![GrpcService {
                        target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
                            grpc_service::EnvoyGrpc {
                                cluster_name: SDS_CLUSTER.to_string(),
                                ..Default::default()
                            },
                        )),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            )),
            ..Default::default()
        }),
    }
}

fn raw_transport_socket() -> TransportSocket {
    TransportSocket {
        name: "envoy.transport_sockets.raw_buffer".to_string(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(pack_any(
            RawBuffer {},
        ))),
    }
}

fn tls_1_2_to_1_3() -> TlsParameters {
    TlsParameters {
        tls_minimum_protocol_version: TlsProtocol::TlSv12 as i32,
        tls_maximum_protocol_version: TlsProtocol::TlSv13 as i32,
        ..Default::default()
    }
}

/// The workload's certificate and the trust bundle, and the SPIFFE ids a peer may present.
pub(super) fn mesh_common_context(sans: &[String], alpn: &[&str]) -> CommonTlsContext {
    CommonTlsContext {
        tls_params: Some(tls_1_2_to_1_3()),
        alpn_protocols: alpn.iter().map(|s| s.to_string()).collect(),
        tls_certificate_sds_secret_configs: vec![agent_secret(DEFAULT_SECRET)],
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
                                        s.clone(),
                                    )),
                                    ..Default::default()
                                }),
                                ..Default::default()
                            })
                            .collect(),
                        ..Default::default()
                    }),
                    validation_context_sds_secret_config: Some(agent_secret(ROOT_SECRET)),
                    ..Default::default()
                },
            ),
        ),
        ..Default::default()
    }
}

/// What a cluster sends its endpoints.
#[derive(Debug, Clone, PartialEq)]
pub enum UpstreamTls {
    /// Plaintext.
    None,
    /// One transport socket for every endpoint (a DestinationRule's ISTIO_MUTUAL).
    Socket(TransportSocket),
    /// TLS origination (a DestinationRule's SIMPLE or MUTUAL): one transport socket for every
    /// endpoint, and for HTTP clusters the SNI from the request's host (`auto_sni`) and the
    /// server's certificate checked against it (`auto_san_validation`).
    Originate {
        socket: TransportSocket,
        auto_sni: bool,
        auto_san_validation: bool,
    },
    /// Auto mTLS: per endpoint, by its metadata.
    Matches(Vec<TransportSocketMatch>),
}

/// SNI for mTLS to a service's cluster: `outbound_.PORT_.SUBSET_.HOST`.
pub fn default_sni(port: u16, subset: &str, host: &str) -> String {
    format!("outbound_.{port}_.{subset}_.{host}")
}

/// The ALPN an Istio client offers for a cluster of this protocol.
fn client_alpn(port: &Port, h2: bool) -> &'static [&'static str] {
    if h2 || port.protocol.is_http2() {
        &["istio-h2", "istio", "h2"]
    } else if port.protocol.is_http() {
        &["istio-http/1.1", "istio", "http/1.1"]
    } else {
        &["istio"]
    }
}

/// The SPIFFE ids of a service's endpoints (all its ports), for the server check.
fn service_accounts(ctx: &Ctx<'_>, service: &Service) -> Vec<String> {
    let mut sans: Vec<String> = service
        .ports
        .iter()
        .flat_map(|p| ctx.registry.endpoints(&service.hostname, p.number).iter())
        .filter(|e| !e.service_account.is_empty())
        .map(|e| {
            format!(
                "spiffe://{}/ns/{}/sa/{}",
                ctx.config.mesh.trust_domain, e.namespace, e.service_account
            )
        })
        .collect();
    sans.sort();
    sans.dedup();
    sans
}

/// The client TLS of one outbound cluster. `selected`: the DestinationRule that gave `tls` has a
/// `workloadSelector` (which picked this proxy).
pub fn upstream_tls(
    ctx: &Ctx<'_>,
    service: &Service,
    port: &Port,
    subset: Option<&str>,
    tls: Option<&ClientTlsSettings>,
    h2: bool,
    selected: bool,
) -> UpstreamTls {
    let mode = tls.map(|t| t.mode());
    let istio_mutual = |tls: Option<&ClientTlsSettings>| {
        let sans = match tls.map(|t| &t.subject_alt_names) {
            Some(s) if !s.is_empty() => s.clone(),
            _ => service_accounts(ctx, service),
        };
        let sni = match tls.map(|t| t.sni.as_str()) {
            Some(s) if !s.is_empty() => s.to_string(),
            _ => default_sni(port.number, subset.unwrap_or(""), &service.hostname),
        };
        UpstreamTlsContext {
            sni,
            common_tls_context: Some(mesh_common_context(&sans, client_alpn(port, h2))),
            ..Default::default()
        }
    };
    match mode {
        Some(TlsMode::Disable) => UpstreamTls::None,
        Some(TlsMode::IstioMutual) if ctx.proxy.mtls => {
            UpstreamTls::Socket(tls_transport_socket(istio_mutual(tls)))
        }
        Some(TlsMode::IstioMutual) => {
            tracing::warn!(proxy = %ctx.proxy, host = %service.hostname, "a DestinationRule asks for ISTIO_MUTUAL, but the proxy has no workload identity: plaintext");
            UpstreamTls::None
        }
        Some(TlsMode::Simple) | Some(TlsMode::Mutual) => super::origination::upstream(
            ctx,
            service,
            port,
            tls.expect("the mode is set"),
            h2,
            selected,
        ),
        None => {
            let auto = ctx.proxy.mtls
                && !service.mesh_external
                && service.resolution != strait_registry::Resolution::Passthrough
                && namespace_mode(ctx.config, &service.namespace) != Mode::Disable;
            if !auto {
                return UpstreamTls::None;
            }
            UpstreamTls::Matches(vec![
                TransportSocketMatch {
                    name: "tlsMode-istio".to_string(),
                    r#match: Some(Struct {
                        fields: [(
                            "tlsMode".to_string(),
                            Value {
                                kind: Some(Kind::StringValue("istio".to_string())),
                            },
                        )]
                        .into(),
                    }),
                    transport_socket: Some(tls_transport_socket(istio_mutual(None))),
                },
                TransportSocketMatch {
                    name: "tlsMode-disabled".to_string(),
                    r#match: Some(Struct::default()),
                    transport_socket: Some(raw_transport_socket()),
                },
            ])
        }
    }
}

/// The server side of mTLS: the workload's certificate, a client certificate required and
/// checked against the trust bundle (no identity check: authorization policies decide who may
/// call), TLS 1.2 to 1.3 with Istio's ciphers.
pub fn downstream_tls_socket() -> TransportSocket {
    let mut common = mesh_common_context(&[], &["h2", "http/1.1"]);
    if let Some(p) = common.tls_params.as_mut() {
        p.cipher_suites = SERVER_CIPHERS.iter().map(|s| s.to_string()).collect();
    }
    tls_transport_socket(DownstreamTlsContext {
        require_client_certificate: Some(envoy_types::pb::google::protobuf::BoolValue {
            value: true,
        }),
        common_tls_context: Some(common),
        ..Default::default()
    })
}

/// What an inbound port's filter chains match on, per mode: `(match, terminate_tls, closed)`.
/// `closed` chains take a connection only to close it (plaintext under STRICT).
pub fn inbound_matches(base: &FilterChainMatch, mode: Mode, http: bool) -> Vec<InboundChain> {
    let with = |transport: &str, alpns: &[&str]| FilterChainMatch {
        transport_protocol: transport.to_string(),
        application_protocols: alpns.iter().map(|s| s.to_string()).collect(),
        ..base.clone()
    };
    match mode {
        Mode::Strict => vec![
            InboundChain {
                matcher: with("tls", &[]),
                kind: ChainKind::MutualTls,
            },
            InboundChain {
                matcher: with("raw_buffer", &[]),
                kind: ChainKind::Refused,
            },
        ],
        Mode::Permissive => {
            let mut chains = vec![
                InboundChain {
                    matcher: with("tls", &ISTIO_ALPNS),
                    kind: ChainKind::MutualTls,
                },
                InboundChain {
                    matcher: with("raw_buffer", &[]),
                    kind: ChainKind::Plaintext,
                },
            ];
            if !http {
                // The app's own TLS, passed through untouched.
                chains.push(InboundChain {
                    matcher: with("tls", &[]),
                    kind: ChainKind::Plaintext,
                });
            }
            chains
        }
        Mode::Disable => vec![InboundChain {
            matcher: with("raw_buffer", &[]),
            kind: ChainKind::Plaintext,
        }],
    }
}

/// One inbound filter chain's match and what it does.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundChain {
    pub matcher: FilterChainMatch,
    pub kind: ChainKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainKind {
    /// Terminates mutual TLS, then the port's filters.
    MutualTls,
    /// The port's filters on the connection as it is.
    Plaintext,
    /// Closes the connection (plaintext to a STRICT port).
    Refused,
}
