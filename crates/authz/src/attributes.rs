//! What a decision reads: the connection (addresses, the peer's identity from mutual TLS, SNI),
//! the HTTP request when there is one, and the dynamic metadata earlier filters left (a verified
//! JWT's payload, the CUSTOM action's shadow result).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use serde_json::Value;

/// Dynamic metadata: one JSON object per filter name (`envoy.filters.http.jwt_authn`).
pub type Metadata = BTreeMap<String, Value>;

/// The downstream connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// The peer's address (Istio's `source.ip`).
    pub source: SocketAddr,
    /// Where the connection was going (the original destination under iptables capture).
    pub destination: SocketAddr,
    /// The URI SAN of the peer's certificate (`spiffe://TD/ns/NS/sa/SA`); `None` when the
    /// connection is plaintext.
    pub peer_principal: Option<String>,
    /// The TLS server name the client asked for.
    pub sni: Option<String>,
}

/// The parts of an HTTP request that RBAC and jwt_authn read.
#[derive(Debug, Clone, Copy)]
pub struct HttpRequest<'a> {
    pub method: &'a str,
    /// Path and query, as `:path` has it.
    pub path: &'a str,
    pub authority: &'a str,
    pub scheme: &'a str,
    pub headers: &'a http::HeaderMap,
    /// The original client (Istio's `remote.ip`): the peer, or the address
    /// `x-forwarded-for` names, as the connection manager decided.
    pub remote_ip: IpAddr,
}

impl HttpRequest<'_> {
    /// The path without its query (and fragment).
    pub fn path_only(&self) -> &str {
        let end = self.path.find(['?', '#']).unwrap_or(self.path.len());
        &self.path[..end]
    }

    /// A header's value: pseudo-headers from the request line, others with every value joined
    /// by `,` (Envoy's rule for matchers); `None` when absent.
    pub fn header(&self, name: &str) -> Option<Cow<'_, str>> {
        match name {
            ":method" => return Some(Cow::Borrowed(self.method)),
            ":path" => return Some(Cow::Borrowed(self.path)),
            ":authority" | "host" => return Some(Cow::Borrowed(self.authority)),
            ":scheme" => return Some(Cow::Borrowed(self.scheme)),
            _ => {}
        }
        let mut values = self.headers.get_all(name).iter();
        let first = values.next()?;
        let first = String::from_utf8_lossy(first.as_bytes());
        match values.next() {
            None => Some(first),
            Some(second) => {
                let mut joined = first.into_owned();
                for v in std::iter::once(second).chain(values) {
                    joined.push(',');
                    joined.push_str(&String::from_utf8_lossy(v.as_bytes()));
                }
                Some(Cow::Owned(joined))
            }
        }
    }
}

/// Everything one decision reads.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    pub connection: &'a Connection,
    /// `None` for a TCP connection (the network RBAC filter).
    pub request: Option<&'a HttpRequest<'a>>,
    pub metadata: &'a Metadata,
}

impl Input<'_> {
    pub fn remote_ip(&self) -> IpAddr {
        self.request
            .map_or(self.connection.source.ip(), |r| r.remote_ip)
    }
}
