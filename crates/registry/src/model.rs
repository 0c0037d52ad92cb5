//! The registry's model: what the translator reads.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

/// The protocol of a service port, as Istio decides it: from `appProtocol`, else the port name's
/// prefix (`http`, `http-web`, `grpc-x`, `tcp`, ...), else the ServiceEntry's `protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Http,
    Http2,
    Grpc,
    GrpcWeb,
    Https,
    Tls,
    Tcp,
    Mongo,
    Redis,
    Mysql,
    /// Not declared: Istio sniffs it. Strait treats it as TCP (see docs/xds-support.md).
    Unknown,
}

impl Protocol {
    /// Istio's `protocol.Parse`: a protocol name in any case (`HTTP`, `http2`, `GRPC-Web`, ...).
    /// `None` for UDP, which the mesh does not carry; `Unknown` for anything else.
    pub fn parse(name: &str) -> Option<Protocol> {
        Some(match name.to_ascii_lowercase().as_str() {
            "http" | "http_proxy" => Protocol::Http,
            "http2" => Protocol::Http2,
            "grpc" => Protocol::Grpc,
            "grpc-web" => Protocol::GrpcWeb,
            "https" => Protocol::Https,
            "tls" => Protocol::Tls,
            "tcp" => Protocol::Tcp,
            "mongo" => Protocol::Mongo,
            "redis" => Protocol::Redis,
            "mysql" => Protocol::Mysql,
            "udp" => return None,
            _ => Protocol::Unknown,
        })
    }

    /// The protocol of a Kubernetes Service port, as Istio reads it: `appProtocol` if set (with
    /// Kubernetes' `kubernetes.io/h2c`, `kubernetes.io/ws`, `kubernetes.io/wss`), else the port
    /// name's prefix before the first `-` (`http-web` is HTTP, `grpc-web-x` is gRPC-Web).
    pub fn from_port_name(name: &str, app_protocol: Option<&str>) -> Protocol {
        let name = match app_protocol.filter(|a| !a.is_empty()) {
            Some("kubernetes.io/h2c") => return Protocol::Http2,
            Some("kubernetes.io/ws") => return Protocol::Http,
            Some("kubernetes.io/wss") => return Protocol::Https,
            Some(app) => app,
            None => name,
        };
        if name.to_ascii_lowercase().starts_with("grpc-web") {
            return Protocol::GrpcWeb;
        }
        let prefix = name.split_once('-').map_or(name, |(p, _)| p);
        Protocol::parse(prefix).unwrap_or(Protocol::Unknown)
    }

    /// Carried over HTTP/2 upstream (HTTP/2, gRPC, gRPC-Web).
    pub fn is_http2(self) -> bool {
        matches!(self, Protocol::Http2 | Protocol::Grpc | Protocol::GrpcWeb)
    }

    /// Is traffic on the port HTTP that the mesh routes (HTTP/1.1, HTTP/2, gRPC)?
    pub fn is_http(self) -> bool {
        matches!(
            self,
            Protocol::Http | Protocol::Http2 | Protocol::Grpc | Protocol::GrpcWeb
        )
    }
}

/// A port of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub name: String,
    pub number: u16,
    pub protocol: Protocol,
}

/// How a service's endpoints are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// Endpoints are known addresses (WorkloadEntries, ServiceEntry endpoints).
    Static,
    /// Endpoints are DNS names (or the hosts themselves), resolved by the proxy.
    Dns,
    /// Like Dns, one address at a time (`DNS_ROUND_ROBIN`).
    DnsRoundRobin,
    /// Traffic goes to the address the client asked for (`NONE`).
    Passthrough,
}

/// Where a service comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A Kubernetes `Service` of this name.
    KubernetesService { name: String },
    /// A `ServiceEntry` of this name.
    ServiceEntry { name: String },
}

/// Which namespaces may see a service (`exportTo`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Visibility {
    /// `*` (the default).
    Public,
    /// `.`: only its own namespace.
    Private,
    /// The listed namespaces.
    Namespaces(Vec<String>),
}

/// A service the mesh knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// The fully qualified host name: `reviews.default.svc.cluster.local`, or a ServiceEntry host.
    pub hostname: String,
    pub namespace: String,
    pub origin: Origin,
    /// Virtual IPs: the allocated one for a Kubernetes Service, a ServiceEntry's `addresses`.
    pub addresses: Vec<IpAddr>,
    pub ports: Vec<Port>,
    pub resolution: Resolution,
    /// `location: MESH_EXTERNAL`.
    pub mesh_external: bool,
    pub visibility: Visibility,
}

impl Service {
    pub fn port(&self, number: u16) -> Option<&Port> {
        self.ports.iter().find(|p| p.number == number)
    }

    /// May a proxy in `namespace` see this service?
    pub fn visible_from(&self, namespace: &str) -> bool {
        match &self.visibility {
            Visibility::Public => true,
            Visibility::Private => self.namespace == namespace,
            Visibility::Namespaces(ns) => ns.iter().any(|n| n == namespace || n == "*"),
        }
    }
}

/// One endpoint of a service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// An IP address, or a DNS name for DNS resolution.
    pub address: String,
    /// The port on the endpoint (the WorkloadEntry's port for the service port's name, else the
    /// service port's number).
    pub port: u16,
    pub labels: BTreeMap<String, String>,
    pub namespace: String,
    /// The WorkloadEntry's service account (`default` when it names none); a ServiceEntry's
    /// inline endpoint's, possibly empty; empty for a DNS host.
    pub service_account: String,
    /// `region/zone/subzone`, possibly empty.
    pub locality: String,
    /// Load balancing weight; 1 when not set.
    pub weight: u32,
    /// The WorkloadEntry this endpoint is, if any.
    pub workload: Option<String>,
}

/// Services and endpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registry {
    /// By host name.
    pub services: BTreeMap<String, Service>,
    /// By (host name, service port number). Shared: a registry updated for a few workloads
    /// ([`Registry::with_workloads`]) shares the unchanged lists with the one before.
    pub endpoints: BTreeMap<(String, u16), Arc<Vec<Endpoint>>>,
}

impl Registry {
    /// The service a host names, as Istio resolves it for a resource in `namespace`: a short
    /// name (no dot) is `NAME.NAMESPACE.svc.DOMAIN`; anything with a dot is taken as written.
    pub fn resolve(&self, host: &str, namespace: &str, domain_suffix: &str) -> Option<&Service> {
        self.services.get(&fqdn(host, namespace, domain_suffix))
    }

    /// The endpoints of a service port.
    pub fn endpoints(&self, hostname: &str, port: u16) -> &[Endpoint] {
        self.endpoints
            .get(&(hostname.to_string(), port))
            .map_or(&[], |eps| eps.as_slice())
    }
}

/// Istio's short-name expansion: `reviews` in `default` is `reviews.default.svc.cluster.local`;
/// a name with a dot, or a wildcard, is left as written.
pub fn fqdn(host: &str, namespace: &str, domain_suffix: &str) -> String {
    if host.contains('.') || host.contains('*') {
        host.to_string()
    } else {
        format!("{host}.{namespace}.svc.{domain_suffix}")
    }
}
