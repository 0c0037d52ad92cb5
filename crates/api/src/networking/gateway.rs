//! Gateway: a load balancer at the edge of the mesh.
//!
//! Also home to what the edge kinds share: [`Protocol`] (a port's protocol as Istio reads it),
//! the proto-JSON enum helper, and the host, address and TLS checks that Gateway, Sidecar and
//! ServiceEntry validation have in common.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::validate::common::{is_dns1123_label, is_ip, validate_port, validate_wildcard_domain};
use crate::{FieldPath, ObjectMeta, Report};

/// Declares a proto enum that reads as proto-JSON does (its name, or its number) and writes
/// its name. The variant numbered 0 is the `Default`.
macro_rules! proto_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $num:literal => $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every value, in the proto's order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The name as written in YAML.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text,)+ }
            }

            /// The proto number.
            pub fn number(self) -> i32 {
                match self { $($name::$variant => $num,)+ }
            }

            pub fn from_number(n: i64) -> Option<Self> {
                match n { $($num => Some($name::$variant),)+ _ => None }
            }

            pub fn from_name(s: &str) -> Option<Self> {
                match s { $($text => Some($name::$variant),)+ _ => None }
            }

            fn expected() -> String {
                [$($text),+].join(", ")
            }
        }

        impl Default for $name {
            fn default() -> Self {
                $name::from_number(0).unwrap_or($name::ALL[0])
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl serde::de::Visitor<'_> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        write!(f, "one of {}", $name::expected())
                    }
                    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<$name, E> {
                        $name::from_name(v).ok_or_else(|| {
                            E::custom(format!(
                                "unknown value {v:?}: use one of {}",
                                $name::expected()
                            ))
                        })
                    }
                    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<$name, E> {
                        $name::from_number(v).ok_or_else(|| {
                            E::custom(format!(
                                "unknown value {v}: use one of {}",
                                $name::expected()
                            ))
                        })
                    }
                    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<$name, E> {
                        self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
                    }
                }
                d.deserialize_any(V)
            }
        }
    };
}
pub(crate) use proto_enum;

/// `spec` of a Gateway: the servers a set of gateway workloads expose.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Gateway {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<Server>,
    /// Labels of the gateway workloads this applies to (in the Gateway's namespace, or any
    /// namespace depending on the mesh setting).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
}

/// One listener of a Gateway: a port, the hosts it serves and its TLS settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Server {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<Port>,
    /// The IP or `unix://` socket the listener binds to; all addresses when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub bind: String,
    /// Hosts served, optionally as `namespace/host` to restrict which VirtualServices bind.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServerTLSSettings>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub default_endpoint: String,
    /// An optional name, used in metrics and route names.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
}

impl Server {
    /// The protocol of the server's port (`Unsupported` without a port).
    pub fn protocol(&self) -> Protocol {
        self.port
            .as_ref()
            .map_or(Protocol::Unsupported, Port::protocol)
    }

    /// TLS passthrough (`PASSTHROUGH` or `AUTO_PASSTHROUGH`): the gateway routes on SNI without
    /// terminating TLS.
    pub fn is_passthrough(&self) -> bool {
        self.tls
            .as_ref()
            .is_some_and(ServerTLSSettings::is_passthrough)
    }
}

/// A port of a Gateway server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Port {
    #[serde(default)]
    pub number: u32,
    /// `HTTP`, `HTTPS`, `GRPC`, `HTTP2`, `MONGO`, `TCP` or `TLS`, in any case.
    #[serde(default)]
    pub protocol: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Deprecated; has no effect on Gateways.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub target_port: u32,
}

impl Port {
    pub fn protocol(&self) -> Protocol {
        Protocol::parse(&self.protocol)
    }
}

proto_enum! {
    /// How a server treats TLS from downstream.
    pub enum TlsMode {
        /// Route on SNI without terminating TLS.
        Passthrough = 0 => "PASSTHROUGH",
        /// Terminate TLS with a server certificate.
        Simple = 1 => "SIMPLE",
        /// Terminate TLS and require a client certificate.
        Mutual = 2 => "MUTUAL",
        /// Passthrough where the SNI names the destination (east-west gateways).
        AutoPassthrough = 3 => "AUTO_PASSTHROUGH",
        /// Mutual TLS with the mesh's own certificates.
        IstioMutual = 4 => "ISTIO_MUTUAL",
        /// Like MUTUAL, but a client certificate is optional.
        OptionalMutual = 5 => "OPTIONAL_MUTUAL",
    }
}

proto_enum! {
    /// A TLS protocol version.
    pub enum TlsProtocol {
        Auto = 0 => "TLS_AUTO",
        V1_0 = 1 => "TLSV1_0",
        V1_1 = 2 => "TLSV1_1",
        V1_2 = 3 => "TLSV1_2",
        V1_3 = 4 => "TLSV1_3",
    }
}

/// TLS settings of a Gateway server or a Sidecar ingress listener.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerTLSSettings {
    /// Send a 301 redirect to HTTPS for plain HTTP requests.
    #[serde(default, skip_serializing_if = "is_false")]
    pub https_redirect: bool,
    /// Unset means `PASSTHROUGH`; see [`ServerTLSSettings::mode`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<TlsMode>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub server_certificate: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub private_key: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ca_certificates: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ca_crl: String,
    /// A secret holding the certificate, key and (as `<name>-cacert`) the client CA.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub credential_name: String,
    /// Up to two secrets (for example an RSA and an ECDSA certificate).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credential_names: Vec<String>,
    /// Up to two certificate files (for example an RSA and an ECDSA certificate).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls_certificates: Vec<TLSCertificate>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verify_certificate_spki: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verify_certificate_hash: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_protocol_version: Option<TlsProtocol>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_protocol_version: Option<TlsProtocol>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cipher_suites: Vec<String>,
}

impl ServerTLSSettings {
    /// The TLS mode, `PASSTHROUGH` when unset.
    pub fn mode(&self) -> TlsMode {
        self.mode.unwrap_or_default()
    }

    pub fn is_passthrough(&self) -> bool {
        matches!(self.mode(), TlsMode::Passthrough | TlsMode::AutoPassthrough)
    }

    pub fn min_protocol_version(&self) -> TlsProtocol {
        self.min_protocol_version.unwrap_or_default()
    }

    pub fn max_protocol_version(&self) -> TlsProtocol {
        self.max_protocol_version.unwrap_or_default()
    }
}

/// One server certificate and key (and optionally a client CA) as files.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TLSCertificate {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub server_certificate: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub private_key: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ca_certificates: String,
}

/// A port's protocol as Istio reads it (case-insensitive; unknown names are `Unsupported`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Http,
    Http2,
    HttpProxy,
    Https,
    Grpc,
    GrpcWeb,
    Tcp,
    Tls,
    Udp,
    Mongo,
    Redis,
    Mysql,
    Unsupported,
}

impl Protocol {
    pub fn parse(s: &str) -> Protocol {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            "grpc" => Protocol::Grpc,
            "grpc-web" => Protocol::GrpcWeb,
            "http" => Protocol::Http,
            "http_proxy" => Protocol::HttpProxy,
            "http2" => Protocol::Http2,
            "https" => Protocol::Https,
            "tls" => Protocol::Tls,
            "mongo" => Protocol::Mongo,
            "redis" => Protocol::Redis,
            "mysql" => Protocol::Mysql,
            _ => Protocol::Unsupported,
        }
    }

    /// Carried over HTTP (HTTP/1.1, HTTP/2, gRPC).
    pub fn is_http(self) -> bool {
        matches!(
            self,
            Protocol::Http
                | Protocol::Http2
                | Protocol::HttpProxy
                | Protocol::Grpc
                | Protocol::GrpcWeb
        )
    }

    /// Carried over HTTP/2.
    pub fn is_http2(self) -> bool {
        matches!(self, Protocol::Http2 | Protocol::Grpc | Protocol::GrpcWeb)
    }

    /// Opaque TCP from the proxy's point of view (TLS included).
    pub fn is_tcp(self) -> bool {
        matches!(
            self,
            Protocol::Tcp
                | Protocol::Https
                | Protocol::Tls
                | Protocol::Mongo
                | Protocol::Redis
                | Protocol::Mysql
        )
    }

    /// TLS on the wire (HTTPS, TLS).
    pub fn is_tls(self) -> bool {
        matches!(self, Protocol::Https | Protocol::Tls)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "HTTP",
            Protocol::Http2 => "HTTP2",
            Protocol::HttpProxy => "HTTP_PROXY",
            Protocol::Https => "HTTPS",
            Protocol::Grpc => "GRPC",
            Protocol::GrpcWeb => "GRPC-Web",
            Protocol::Tcp => "TCP",
            Protocol::Tls => "TLS",
            Protocol::Udp => "UDP",
            Protocol::Mongo => "Mongo",
            Protocol::Redis => "Redis",
            Protocol::Mysql => "MySQL",
            Protocol::Unsupported => "UnsupportedProtocol",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

pub(crate) fn is_zero(n: &u32) -> bool {
    *n == 0
}

pub(crate) fn is_false(b: &bool) -> bool {
    !*b
}

/// The prefix of a Unix domain socket address (`unix:///path`, `unix://@abstract`).
pub(crate) const UNIX_PREFIX: &str = "unix://";

/// A Unix domain socket path: absolute and not a directory, or abstract (`@name`).
pub(crate) fn validate_unix_address(addr: &str) -> Result<(), String> {
    if addr.is_empty() {
        return Err("unix address must not be empty".to_string());
    }
    if addr.starts_with('@') {
        return Ok(());
    }
    if !addr.starts_with('/') || addr.ends_with('/') {
        return Err(format!("{addr} is not an absolute path to a file"));
    }
    Ok(())
}

/// An IP address without a prefix length.
pub(crate) fn validate_ip_address(addr: &str) -> Result<(), String> {
    if is_ip(addr) {
        Ok(())
    } else {
        Err(format!("{addr} is not a valid IP"))
    }
}

/// A port's protocol, when set (empty means "detect").
pub(crate) fn validate_protocol(protocol: &str) -> Result<(), String> {
    if !protocol.is_empty() && Protocol::parse(protocol) == Protocol::Unsupported {
        return Err(format!(
            "unsupported protocol: {protocol} (use HTTP, HTTPS, HTTP2, GRPC, GRPC-WEB, TCP, TLS, MONGO, REDIS or MYSQL)"
        ));
    }
    Ok(())
}

/// A port name: a DNS-1123 label.
pub(crate) fn validate_port_name(name: &str) -> Result<(), String> {
    if is_dns1123_label(name) {
        Ok(())
    } else {
        Err(format!(
            "invalid port name: {name} (lower-case letters, digits and '-', at most 63)"
        ))
    }
}

/// A host with a wildcard anywhere but as the whole first label (`*foo.com`) is refused.
pub(crate) fn validate_partial_wildcard(host: &str) -> Result<(), String> {
    if host.contains('*') && host.len() != 1 && !host.starts_with("*.") {
        return Err(format!(
            "partial wildcard {host:?} not allowed: use \"*\" or a leading \"*.\" label"
        ));
    }
    Ok(())
}

/// The host part of a Gateway server host or a Sidecar egress host.
fn validate_host_part(host: &str, is_gateway: bool) -> Vec<String> {
    let mut errs = Vec::new();
    if host != "*" && !host.contains('.') {
        errs.push(format!(
            "short names (non FQDN) are not allowed: {host:?}; use a fully qualified name such as \"{host}.example.com\""
        ));
    }
    if let Err(e) = validate_wildcard_domain(host) {
        // A Gateway host may also be an IP address.
        if !is_gateway || !is_ip(host) {
            errs.push(e);
        }
    }
    if let Err(e) = validate_partial_wildcard(host) {
        errs.push(e);
    }
    errs
}

/// A `namespace/host` entry (Gateway servers also take a bare host). In a Sidecar the namespace
/// may be `*`, `.`, `~`, or a namespace name, optionally prefixed with `~` to exclude it.
pub(crate) fn validate_namespace_slash_host(host: &str, is_gateway: bool) -> Vec<String> {
    let Some((ns, name)) = host.split_once('/') else {
        if is_gateway {
            return validate_host_part(host, true);
        }
        return vec![format!(
            "host {host:?} must be of form namespace/dnsName (e.g. \"*/{host}\" or \"./{host}\")"
        )];
    };
    let mut errs = Vec::new();
    if ns.is_empty() || name.is_empty() {
        errs.push("config namespace and dnsName in host entry cannot be empty".to_string());
    }
    if is_gateway {
        if ns != "*" && ns != "." && !is_dns1123_label(ns) {
            errs.push(format!(
                "invalid namespace value {ns:?} in gateway: use \"*\", \".\" or a namespace name"
            ));
        }
    } else {
        let excluded = ns.strip_prefix('~').unwrap_or(ns);
        if ns != "*" && ns != "." && ns != "~" && !is_dns1123_label(excluded) {
            errs.push(format!(
                "invalid namespace value {ns:?} in sidecar: use \"*\", \".\", \"~\" or a namespace name"
            ));
        }
    }
    errs.extend(validate_host_part(name, is_gateway));
    errs
}

/// Cipher suites BoringSSL knows (besides `ALL` and expressions starting with an operator).
const CIPHER_SUITES: &[&str] = &[
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
    "ECDHE-ECDSA-AES128-SHA",
    "ECDHE-RSA-AES128-SHA",
    "ECDHE-ECDSA-AES256-SHA",
    "ECDHE-RSA-AES256-SHA",
    "AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
    "AES128-SHA",
    "AES256-SHA",
    "DES-CBC3-SHA",
];

fn is_valid_cipher_suite(cs: &str) -> bool {
    match cs.chars().next() {
        None => true,
        _ if cs == "ALL" => true,
        Some(c) if !c.is_alphanumeric() => true,
        Some(_) => CIPHER_SUITES.contains(&cs),
    }
}

/// Checks TLS settings of a Gateway server or Sidecar ingress listener (Istio's
/// `validateTLSOptions`).
pub(crate) fn validate_server_tls(tls: &ServerTLSSettings, at: &FieldPath, report: &mut Report) {
    let mode = tls.mode();
    if matches!(
        tls.min_protocol_version(),
        TlsProtocol::V1_0 | TlsProtocol::V1_1
    ) && tls.cipher_suites.is_empty()
    {
        report.warn(
            &at.field("minProtocolVersion"),
            "TLS version below TLSV1_2 require setting compatible ciphers as by default they no longer include compatible ciphers.",
        );
    }
    let mut invalid = BTreeSet::new();
    let mut seen = BTreeSet::new();
    let mut duplicate = BTreeSet::new();
    for cs in &tls.cipher_suites {
        if !is_valid_cipher_suite(cs) {
            invalid.insert(cs.as_str());
        } else if !seen.insert(cs.as_str()) {
            duplicate.insert(cs.as_str());
        }
    }
    if !invalid.is_empty() {
        report.warn(
            &at.field("cipherSuites"),
            format!("ignoring invalid cipher suites: {invalid:?}"),
        );
    }
    if !duplicate.is_empty() {
        report.warn(
            &at.field("cipherSuites"),
            format!("ignoring duplicate cipher suites: {duplicate:?}"),
        );
    }

    if mode == TlsMode::IstioMutual {
        let forbidden = [
            (
                !tls.server_certificate.is_empty(),
                "serverCertificate",
                "server certificate",
            ),
            (!tls.private_key.is_empty(), "privateKey", "private key"),
            (
                !tls.ca_certificates.is_empty(),
                "caCertificates",
                "CA bundle",
            ),
            (
                !tls.tls_certificates.is_empty(),
                "tlsCertificates",
                "tlsCertificates",
            ),
            (
                !tls.credential_name.is_empty(),
                "credentialName",
                "credentialName",
            ),
            (
                !tls.credential_names.is_empty(),
                "credentialNames",
                "credentialNames",
            ),
        ];
        for (set, field, what) in forbidden {
            if set {
                report.error(
                    &at.field(field),
                    format!(
                        "ISTIO_MUTUAL TLS cannot have associated {what}: the mesh's own certificates are used; remove {field}"
                    ),
                );
            }
        }
        return;
    }

    if tls.is_passthrough()
        && (!tls.ca_crl.is_empty()
            || !tls.server_certificate.is_empty()
            || !tls.private_key.is_empty()
            || !tls.ca_certificates.is_empty()
            || !tls.tls_certificates.is_empty()
            || !tls.credential_name.is_empty()
            || !tls.credential_names.is_empty())
    {
        report.warn(
            at,
            format!("{mode} mode does not use certificates, they will be ignored"),
        );
    }

    let sources = [
        !tls.server_certificate.is_empty() && !tls.private_key.is_empty(),
        !tls.credential_name.is_empty(),
        !tls.credential_names.is_empty(),
        !tls.tls_certificates.is_empty(),
    ];
    if sources.iter().filter(|s| **s).count() > 1 {
        report.error(
            at,
            "only one of credential_name, credential_names, server_certificate/private_key, tls_certificates should be specified",
        );
    }

    let terminating = matches!(
        mode,
        TlsMode::Simple | TlsMode::Mutual | TlsMode::OptionalMutual
    );
    if terminating && (!tls.credential_name.is_empty() || !tls.credential_names.is_empty()) {
        // Credentials come from the secret; no files are needed.
        return;
    }
    if terminating {
        let prefix = if mode == TlsMode::Simple {
            "SIMPLE TLS"
        } else {
            "MUTUAL TLS"
        };
        if mode != TlsMode::Simple && tls.ca_certificates.is_empty() {
            report.error(
                &at.field("caCertificates"),
                format!(
                    "{prefix} requires a client CA bundle: set caCertificates or use credentialName"
                ),
            );
        }
        if tls.tls_certificates.len() > 2 {
            report.warn(
                &at.field("tlsCertificates"),
                format!("{prefix} can support up to 2 server certificates"),
            );
        }
        let mut check = |cert: &str, key: &str, at: &FieldPath| {
            if cert.is_empty() {
                report.error(
                    &at.field("serverCertificate"),
                    format!("{prefix} requires a server certificate: set serverCertificate or use credentialName"),
                );
            }
            if key.is_empty() {
                report.error(
                    &at.field("privateKey"),
                    format!(
                        "{prefix} requires a private key: set privateKey or use credentialName"
                    ),
                );
            }
        };
        if tls.tls_certificates.is_empty() {
            check(&tls.server_certificate, &tls.private_key, at);
        } else {
            for (i, c) in tls.tls_certificates.iter().enumerate() {
                check(
                    &c.server_certificate,
                    &c.private_key,
                    &at.field("tlsCertificates").index(i),
                );
            }
        }
    }
    if !tls.ca_crl.is_empty() {
        if !tls.credential_name.is_empty() {
            report.error(
                &at.field("caCrl"),
                "CRL is not supported with credentialName. CRL has to be specified in the credential",
            );
        }
        if mode == TlsMode::Simple {
            report.error(
                &at.field("caCrl"),
                "CRL is not supported with SIMPLE TLS: it only applies to client certificates (MUTUAL)",
            );
        }
    }
}

/// Checks a Gateway on its own, as Istio's validating webhook does.
pub fn validate(spec: &Gateway, meta: &ObjectMeta, at: &FieldPath, report: &mut Report) {
    if !is_dns1123_label(&meta.name) {
        report.error(
            &FieldPath::root("metadata").field("name"),
            format!(
                "invalid gateway name: {:?}: a Gateway name is a DNS label (no dots)",
                meta.name
            ),
        );
    }
    let servers = at.field("servers");
    if spec.servers.is_empty() {
        report.error(
            &servers,
            "gateway must have at least one server: add a server with a port and hosts",
        );
    }
    for (i, server) in spec.servers.iter().enumerate() {
        validate_server(server, &servers.index(i), report);
    }
    let mut names = BTreeSet::new();
    for (i, server) in spec.servers.iter().enumerate() {
        let Some(port) = &server.port else { continue };
        let at = servers.index(i);
        if !names.insert(port.name.as_str()) {
            report.error(
                &at.field("port").field("name"),
                format!(
                    "port names in servers must be unique: duplicate name {}",
                    port.name
                ),
            );
        }
        if !port.protocol().is_http() && server.tls.as_ref().is_some_and(|t| t.https_redirect) {
            report.warn(
                &at.field("tls").field("httpsRedirect"),
                "tls.httpsRedirect should only be used with http servers",
            );
        }
    }
}

/// Checks one Gateway server (Istio's `validateServer`).
fn validate_server(server: &Server, at: &FieldPath, report: &mut Report) {
    if server.hosts.is_empty() {
        report.error(
            &at.field("hosts"),
            "server config must contain at least one host: add hosts such as \"*\" or \"example.com\"",
        );
    }
    for (i, host) in server.hosts.iter().enumerate() {
        for e in validate_namespace_slash_host(host, true) {
            report.error(&at.field("hosts").index(i), e);
        }
    }
    let port_ok = validate_server_port(server.port.as_ref(), &server.bind, at, report);
    validate_server_bind(server.port.as_ref(), &server.bind, at, report);
    if let Some(tls) = &server.tls {
        validate_server_tls(tls, &at.field("tls"), report);
    }
    let Some(port) = server.port.as_ref().filter(|_| port_ok) else {
        return;
    };
    let p = port.protocol();
    match &server.tls {
        None if p.is_tls() => report.error(
            &at.field("tls"),
            "server must have TLS settings for HTTPS/TLS protocols: add tls with a mode",
        ),
        Some(tls) if !p.is_tls() => {
            if p.is_http() {
                // Only an HTTPS redirect makes sense on a plain-text HTTP port.
                if !tls.is_passthrough()
                    || !tls.ca_certificates.is_empty()
                    || !tls.private_key.is_empty()
                    || !tls.server_certificate.is_empty()
                {
                    report.error(
                        &at.field("tls"),
                        "server cannot have TLS settings for plain text HTTP ports: use protocol HTTPS, or keep only httpsRedirect",
                    );
                }
            } else {
                report.error(
                    &at.field("tls"),
                    "server cannot have TLS settings for non HTTPS/TLS ports: use protocol HTTPS or TLS",
                );
            }
        }
        _ => {}
    }
}

/// Checks a server's port; true when it has no error.
fn validate_server_port(
    port: Option<&Port>,
    bind: &str,
    at: &FieldPath,
    report: &mut Report,
) -> bool {
    let at = at.field("port");
    let Some(port) = port else {
        report.error(
            &at,
            "port is required: set port.number, port.protocol and port.name",
        );
        return false;
    };
    let before = report.errors.len();
    if port.protocol() == Protocol::Unsupported {
        report.error(
            &at.field("protocol"),
            format!(
                "invalid protocol {:?}, supported protocols are HTTP, HTTP2, GRPC, GRPC-WEB, MONGO, REDIS, MYSQL, TCP",
                port.protocol
            ),
        );
    }
    if port.number > 0 || !bind.starts_with(UNIX_PREFIX) {
        report.check(&at.field("number"), validate_port(i64::from(port.number)));
    }
    if port.target_port > 0 {
        report.error(
            &at.field("targetPort"),
            "targetPort has no impact on Gateways: remove it",
        );
    }
    if port.name.is_empty() {
        report.error(
            &at.field("name"),
            "port name must be set: name the port, e.g. \"http\"",
        );
    }
    report.errors.len() == before
}

fn validate_server_bind(port: Option<&Port>, bind: &str, at: &FieldPath, report: &mut Report) {
    let at_bind = at.field("bind");
    if let Some(path) = bind.strip_prefix(UNIX_PREFIX) {
        report.check(&at_bind, validate_unix_address(path));
        if let Some(port) = port.filter(|p| p.number != 0) {
            report.error(
                &at.field("port").field("number"),
                format!(
                    "port number must be 0 for unix domain socket: {} (bind {bind})",
                    port.number
                ),
            );
        }
    } else if !bind.is_empty() {
        report.check(&at_bind, validate_ip_address(bind));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(yaml: &str) -> Report {
        let spec: Gateway = serde_yaml_ng::from_str(yaml).unwrap();
        let meta = ObjectMeta {
            name: "gw".into(),
            namespace: Some("ns".into()),
            ..Default::default()
        };
        let mut report = Report::default();
        validate(&spec, &meta, &FieldPath::root("spec"), &mut report);
        report
    }

    #[test]
    fn https_redirect_on_http_is_fine_but_certificates_are_not() {
        let r = check(
            "servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: [bar.com], tls: {httpsRedirect: true}}]",
        );
        assert!(r.is_ok(), "{r:?}");
        let r = check(
            "servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: [bar.com], tls: {mode: SIMPLE}}]",
        );
        assert!(
            r.errors
                .iter()
                .any(|e| e.message.contains("cannot have TLS")),
            "{r:?}"
        );
    }

    #[test]
    fn hosts_ports_and_names() {
        let r = check("servers: [{port: {number: 7, protocol: http}, hosts: [foo.*.bar.com]}]");
        assert!(r.errors.iter().any(|e| e.message.contains("domain")));
        assert!(r.errors.iter().any(|e| e.message.contains("port name")));
        let r = check(
            "servers: [{port: {number: 443, name: tls, protocol: tls}, hosts: ['*bar.com'], tls: {mode: ISTIO_MUTUAL}}]",
        );
        assert!(
            r.errors[0]
                .message
                .contains("partial wildcard \"*bar.com\" not allowed"),
            "{r:?}"
        );
        assert_eq!(r.errors[0].path, "spec.servers[0].hosts[0]");
        assert!(check("servers: [{port: {number: 7, name: a, protocol: http}, hosts: [1.1.1.1, ns1/foo.bar.com, ./x.com]}]").is_ok());
        assert!(
            !check(
                "servers: [{port: {number: 7, name: a, protocol: http}, hosts: [~/foo.bar.com]}]"
            )
            .is_ok()
        );
    }

    #[test]
    fn tls_certificate_sources() {
        let tls = |y: &str| {
            let t: ServerTLSSettings = serde_yaml_ng::from_str(y).unwrap();
            let mut r = Report::default();
            validate_server_tls(&t, &FieldPath::root("tls"), &mut r);
            r
        };
        assert!(tls("{mode: SIMPLE, credentialName: x}").is_ok());
        assert!(tls("{mode: MUTUAL, credentialNames: [a, b]}").is_ok());
        let r = tls("{mode: SIMPLE, credentialName: x, serverCertificate: c, privateKey: k}");
        assert!(
            r.errors[0]
                .message
                .contains("one of credential_name, credential_names")
        );
        let r = tls("{mode: MUTUAL, tlsCertificates: [{serverCertificate: c}]}");
        assert!(
            r.errors
                .iter()
                .any(|e| e.message.contains("client CA bundle"))
        );
        assert!(
            r.errors
                .iter()
                .any(|e| e.path == "tls.tlsCertificates[0].privateKey")
        );
        let r =
            tls("{mode: SIMPLE, credentialName: x, cipherSuites: [nope, AES128-SHA, AES128-SHA]}");
        assert!(r.is_ok());
        assert_eq!(r.warnings.len(), 2);
        // Numbers are read as proto-JSON does.
        assert_eq!(tls("{mode: 4}").errors.len(), 0);
        assert!(serde_yaml_ng::from_str::<ServerTLSSettings>("{mode: 9}").is_err());
    }

    #[test]
    fn reads_back_as_written() {
        let yaml = r#"
selector: {istio: ingressgateway}
servers:
- port: {number: 443, name: https, protocol: HTTPS}
  hosts: [ns1/a.example.com]
  name: main
  tls:
    mode: MUTUAL
    credentialName: cred
    subjectAltNames: [spiffe://x]
    minProtocolVersion: TLSV1_2
    cipherSuites: [ECDHE-RSA-AES128-GCM-SHA256]
"#;
        let value: serde_json::Value = serde_yaml_ng::from_str(yaml).unwrap();
        let gw: Gateway = serde_json::from_value(value.clone()).unwrap();
        assert_eq!(serde_json::to_value(&gw).unwrap(), value);
        assert_eq!(gw.servers[0].protocol(), Protocol::Https);
        assert_eq!(gw.servers[0].tls.as_ref().unwrap().mode(), TlsMode::Mutual);
        assert!(!gw.servers[0].is_passthrough());
    }
}
