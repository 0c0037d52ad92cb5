//! `strait authz check`: what a destination's proxy would decide for a request from a source
//! workload, without sending it. The control plane generates the destination proxy's config as
//! it sends it, picks the filter chain the connection would take (by port, and mutual TLS when
//! both sides have certificates), and runs that chain's RBAC filters with strait-authz, the
//! engine strait-proxy enforces them with: network filters first (per connection), then the
//! HTTP filters (per request), the first refusal deciding. An HTTP chain's jwt_authn filter
//! (RequestAuthentication) runs first, as in the proxy: a token (`--jwt`, sent as
//! `Authorization: Bearer`, or any header given) is verified against the key sets in that config
//! (signature, issuer, audiences, expiry) with strait-authz's jwt_authn, the proxies' own; a
//! refused token is the proxy's 401 (or 403), a verified one's payload is what the RBAC filters'
//! `requestPrincipals` and `request.auth.*` read.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener, filter};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_filter,
};
use prost::Message;
use serde::Deserialize;
use serde_json::{Value, json};
use strait_authz::{Connection, HttpRequest, Input, Metadata, RbacFilter, convert};
use strait_xds_core::{Proxy, ProxyRole, XdsResources};

const HCM: &str = "envoy.filters.network.http_connection_manager";
const NETWORK_RBAC: &str = "envoy.filters.network.rbac";
const HTTP_RBAC: &str = "envoy.filters.http.rbac";
const JWT_AUTHN: &str = "envoy.filters.http.jwt_authn";
const HTTP_EXT_AUTHZ: &str = "envoy.filters.http.ext_authz";
/// The prefix of a CUSTOM policy's shadow rules (the translator's `istio-ext-authz-...`).
const CUSTOM_RULE_PREFIX: &str = "istio-ext-authz";
const TLS: &str = "tls";

/// What to check (`POST /debug/authz/check`).
#[derive(Debug, Deserialize)]
pub struct CheckRequest {
    /// The destination workload (pod) and its namespace.
    pub to: String,
    #[serde(default = "default_namespace")]
    pub to_namespace: String,
    /// The source workload; none: a client outside the mesh (no certificate).
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default = "default_namespace")]
    pub from_namespace: String,
    /// The destination's port (the workload's own, as its inbound listener has it); default:
    /// its only inbound port. A port it does not declare takes the passthrough chain.
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default = "default_method")]
    pub method: String,
    #[serde(default = "default_path")]
    pub path: String,
    /// The `Host` (`:authority`); default: `TO:PORT`.
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// A JWT, sent as `Authorization: Bearer TOKEN` (`strait authz check --jwt FILE`).
    #[serde(default)]
    pub jwt: Option<String>,
}

fn default_namespace() -> String {
    "default".to_string()
}

fn default_method() -> String {
    "GET".to_string()
}

fn default_path() -> String {
    "/".to_string()
}

/// Why a check could not be made (HTTP 404 or 400 with the message).
#[derive(Debug)]
pub enum CheckError {
    NotFound(String),
    Bad(String),
}

/// The connected proxy of workload `name` in `namespace`.
pub fn find<'a>(proxies: &'a [Proxy], name: &str, namespace: &str) -> Result<&'a Proxy, String> {
    proxies
        .iter()
        .find(|p| p.workload == name && p.namespace == namespace)
        .ok_or_else(|| {
            let known: Vec<String> = proxies
                .iter()
                .map(|p| format!("{}.{}", p.workload, p.namespace))
                .collect();
            format!(
                "no connected proxy for workload {name}.{namespace}; connected: {} (`strait proxy-status` lists them)",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )
        })
}

/// Decides `req` against `resources`, the config of `dest`, for a connection from `source`
/// (with its principal when both sides do mutual TLS).
pub fn check(
    req: &CheckRequest,
    dest: &Proxy,
    resources: &XdsResources,
    source: Option<&Proxy>,
    trust_domain: &str,
) -> Result<Value, CheckError> {
    let mtls = dest.mtls && source.is_some_and(|s| s.mtls);
    let (listener_name, chain, port) = pick_chain(req.port, dest, resources, mtls)?;
    let uses_tls = chain
        .filter_chain_match
        .as_ref()
        .is_some_and(|m| m.transport_protocol == TLS);
    if uses_tls && !mtls {
        return Ok(json!({
            "allowed": false,
            "destination": {"proxy": dest.id, "listener": listener_name, "chain": chain.name, "port": port},
            "source": source_json(source, None),
            "decided_by": "mutual TLS",
            "reason": format!(
                "port {port} of {}.{} takes only mutual TLS (a STRICT PeerAuthentication) and {} no workload certificate: the connection is reset",
                dest.workload,
                dest.namespace,
                match source {
                    Some(s) if !s.mtls => format!("{}.{} has", s.workload, s.namespace),
                    Some(_) => "the destination has".to_string(),
                    None => "a client outside the mesh has".to_string(),
                }
            ),
        }));
    }
    let principal = (uses_tls && mtls)
        .then(|| {
            source.map(|s| {
                format!(
                    "spiffe://{trust_domain}/ns/{}/sa/{}",
                    s.namespace, s.service_account
                )
            })
        })
        .flatten();
    let connection = Connection {
        source: SocketAddr::new(
            source.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |s| s.ip),
            40000,
        ),
        destination: SocketAddr::new(dest.ip, port),
        peer_principal: principal.clone(),
        sni: None,
    };
    let place = Place {
        dest,
        listener: &listener_name,
        chain,
        port,
        source,
        principal: principal.as_deref(),
    };
    let mut metadata = Metadata::new();
    let mut steps = Vec::new();

    let network = network_filters(chain)?;
    let input = Input {
        connection: &connection,
        request: None,
        metadata: &metadata,
    };
    if let Some(reason) = first_denial("network", &network, &input, &mut steps) {
        return Ok(place.answer(
            steps,
            Some(("network RBAC", reason)),
            "the connection is reset",
        ));
    }

    let Some(http) = http_filters(chain)? else {
        return Ok(place.answer(steps, None, "the TCP connection is proxied"));
    };
    let jwt_authn = jwt_filter(chain)?;
    let mut headers = http::HeaderMap::new();
    if let Some(token) = &req.jwt {
        let value = http::HeaderValue::from_str(&format!("Bearer {}", token.trim())).map_err(|_| {
            CheckError::Bad("the JWT has characters a header cannot carry: give the token alone (three base64url parts joined by dots)".to_string())
        })?;
        headers.insert(http::header::AUTHORIZATION, value);
    }
    for (k, v) in &req.headers {
        let name = http::header::HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| CheckError::Bad(format!("{k:?} is not a header name")))?;
        let value = http::HeaderValue::from_str(v)
            .map_err(|_| CheckError::Bad(format!("{v:?} is not a header value")))?;
        headers.append(name, value);
    }
    let authority = req
        .host
        .clone()
        .unwrap_or_else(|| format!("{}:{port}", dest.workload));
    let request = HttpRequest {
        method: &req.method,
        path: &req.path,
        authority: &authority,
        scheme: if principal.is_some() { "https" } else { "http" },
        headers: &headers,
        remote_ip: connection.source.ip(),
    };
    if let Some(filter) = &jwt_authn {
        let outcome = filter.authenticate(&request, std::time::SystemTime::now());
        steps.push(json!({
            "layer": "http",
            "filter": "jwt_authn",
            "allowed": outcome.refused.is_none(),
            "token": if outcome.metadata.is_empty() { "none verified" } else { "verified" },
            "explanation": outcome.refused.as_ref().map(ToString::to_string),
        }));
        if let Some(error) = &outcome.refused {
            return Ok(place.answer(
                steps,
                Some((
                    "jwt_authn",
                    format!("the RequestAuthentication refuses the token: {error}"),
                )),
                &format!("{} {error}", error.status()),
            ));
        }
        if let Some(payloads) = outcome.metadata_object() {
            metadata.insert(strait_authz::jwt::FILTER_NAME.to_string(), payloads);
        }
    } else if req.jwt.is_some() {
        steps.push(json!({
            "layer": "http",
            "filter": "jwt_authn",
            "allowed": true,
            "token": "not checked",
            "explanation": "no RequestAuthentication applies to this port: the proxy passes the token on unverified, and request.auth.* is empty",
        }));
    }
    let input = Input {
        connection: &connection,
        request: Some(&request),
        metadata: &metadata,
    };
    // In the connection manager's order: a CUSTOM policy's shadow rules, its provider's
    // ext_authz (called only when those rules matched), then the DENY and ALLOW policies.
    // The CUSTOM policy whose shadow rules matched, until its ext_authz; then the reason.
    let (mut custom, mut external) = (None, None);
    for f in &http {
        match f {
            HttpFilter::Rbac(f) => {
                let d = f.decide(&input);
                steps.push(step("http", f, &d, &input));
                if !d.allowed {
                    return Ok(place.answer(
                        steps,
                        Some(("HTTP RBAC", f.explain_denial(&d, &input))),
                        "403 RBAC: access denied",
                    ));
                }
                if let Some((Some(policy), false)) = &d.shadow
                    && policy.starts_with(CUSTOM_RULE_PREFIX)
                {
                    custom = Some(strait_authz::display_policy_name(policy));
                }
            }
            HttpFilter::ExtAuthz { cluster } => {
                let called = custom.take();
                steps.push(json!({
                    "layer": "http",
                    "filter": "ext_authz",
                    "cluster": cluster,
                    "called": called.is_some(),
                    "policy": called,
                }));
                if let Some(policy) = called {
                    external = Some(format!(
                        "the CUSTOM policy {policy} sends the request to the external authorizer at {cluster}: its answer decides"
                    ));
                }
            }
        }
    }
    match external {
        Some(reason) => {
            let mut answer = place.answer(
                steps,
                None,
                "the external authorizer's answer: its denial, or the request routed",
            );
            answer["allowed"] = Value::Null;
            answer["decided_by"] = json!("CUSTOM (ext_authz)");
            answer["reason"] = json!(reason);
            Ok(answer)
        }
        None => Ok(place.answer(steps, None, "the request is routed")),
    }
}

/// Runs `filters` in order as the proxy does, recording each decision in `steps`; the first
/// refusal ends it, with its explanation.
fn first_denial(
    layer: &str,
    filters: &[RbacFilter],
    input: &Input<'_>,
    steps: &mut Vec<Value>,
) -> Option<String> {
    for f in filters {
        let d = f.decide(input);
        steps.push(step(layer, f, &d, input));
        if !d.allowed {
            return Some(f.explain_denial(&d, input));
        }
    }
    None
}

fn step(layer: &str, f: &RbacFilter, d: &strait_authz::Decision, input: &Input<'_>) -> Value {
    json!({
        "layer": layer,
        "allowed": d.allowed,
        "action": d.action.map(|a| format!("{a:?}").to_uppercase()),
        "policy": d.policy.as_deref().map(strait_authz::display_policy_name),
        "shadow": d.shadow.as_ref().map(|(p, allowed)| json!({
            "policy": p.as_deref().map(strait_authz::display_policy_name),
            "would_allow": allowed,
            // A CUSTOM policy's rules (they pick the requests its ext_authz checks), not a
            // dry run.
            "custom": p.as_deref().is_some_and(|p| p.starts_with(CUSTOM_RULE_PREFIX)),
        })),
        "explanation": if d.allowed { Value::Null } else { Value::String(f.explain_denial(d, input)) },
    })
}

/// Where the connection goes and where it comes from.
struct Place<'a> {
    dest: &'a Proxy,
    listener: &'a str,
    chain: &'a FilterChain,
    port: u16,
    source: Option<&'a Proxy>,
    principal: Option<&'a str>,
}

impl Place<'_> {
    /// The answer: allowed unless `denial` (which layer refused, and why).
    fn answer(&self, steps: Vec<Value>, denial: Option<(&str, String)>, outcome: &str) -> Value {
        let (decided_by, reason) = denial.unzip();
        json!({
            "allowed": decided_by.is_none(),
            "destination": {
                "proxy": self.dest.id,
                "listener": self.listener,
                "chain": self.chain.name,
                "port": self.port,
            },
            "source": source_json(self.source, self.principal),
            "filters": steps,
            "decided_by": decided_by,
            "reason": reason,
            "outcome": outcome,
        })
    }
}

fn source_json(source: Option<&Proxy>, principal: Option<&str>) -> Value {
    match source {
        Some(s) => json!({
            "proxy": s.id,
            "ip": s.ip.to_string(),
            "principal": principal,
        }),
        None => json!({"proxy": null, "principal": null}),
    }
}

/// The listener and filter chain a connection to `port` would take: a sidecar's
/// `virtualInbound` chain for the port (mutual TLS or plaintext), else its passthrough chain
/// (the listener's default chain); a gateway's listener on the port.
fn pick_chain<'a>(
    port: Option<u16>,
    dest: &Proxy,
    resources: &'a XdsResources,
    mtls: bool,
) -> Result<(String, &'a FilterChain, u16), CheckError> {
    if dest.role == ProxyRole::Gateway {
        let listeners: Vec<(&String, &Listener, u16)> = resources
            .listeners
            .iter()
            .filter_map(|(name, l)| listener_port(l).map(|p| (name, l, p)))
            .collect();
        let (name, l, p) = match port {
            Some(p) => listeners
                .into_iter()
                .find(|(_, _, lp)| *lp == p)
                .ok_or_else(|| {
                    CheckError::NotFound(format!(
                        "gateway {}.{} has no listener on port {p}",
                        dest.workload, dest.namespace
                    ))
                })?,
            None => one(listeners, dest)?,
        };
        let chain = l
            .filter_chains
            .first()
            .ok_or_else(|| CheckError::NotFound(format!("listener {name} has no filter chain")))?;
        return Ok((name.clone(), chain, p));
    }
    let inbound = resources.listeners.get("virtualInbound").ok_or_else(|| {
        CheckError::NotFound(format!(
            "{}.{} has no inbound listener (virtualInbound): nothing of it is authorized by its proxy",
            dest.workload, dest.namespace
        ))
    })?;
    let port_of = |c: &FilterChain| {
        c.filter_chain_match
            .as_ref()
            .and_then(|m| m.destination_port)
            .map(|p| p.value as u16)
    };
    let port = match port {
        Some(p) => p,
        None => {
            // The workload's ports: not the listener's own (15006), whose chain only closes
            // connections addressed to the capture port itself.
            let own = listener_port(inbound);
            let mut ports: Vec<u16> = inbound
                .filter_chains
                .iter()
                .filter_map(port_of)
                .filter(|p| Some(*p) != own)
                .collect();
            ports.sort_unstable();
            ports.dedup();
            match ports.as_slice() {
                [p] => *p,
                [] => {
                    return Err(CheckError::Bad(format!(
                        "{}.{} declares no inbound port (a connection to any port takes the \
                         passthrough chain): say which with --port",
                        dest.workload, dest.namespace
                    )));
                }
                _ => {
                    return Err(CheckError::Bad(format!(
                        "{}.{} has inbound ports {ports:?}: say which with --port",
                        dest.workload, dest.namespace
                    )));
                }
            }
        }
    };
    let transport = |c: &FilterChain| {
        c.filter_chain_match
            .as_ref()
            .map(|m| m.transport_protocol.clone())
            .unwrap_or_default()
    };
    let for_port: Vec<&FilterChain> = {
        let exact: Vec<&FilterChain> = inbound
            .filter_chains
            .iter()
            .filter(|c| port_of(c) == Some(port))
            .collect();
        if exact.is_empty() {
            inbound
                .filter_chains
                .iter()
                .filter(|c| port_of(c).is_none())
                .collect()
        } else {
            exact
        }
    };
    let pick = for_port
        .iter()
        .find(|c| (transport(c) == TLS) == mtls)
        .or_else(|| for_port.first())
        .copied()
        // A port the workload does not declare: the passthrough chain.
        .or(inbound.default_filter_chain.as_ref())
        .ok_or_else(|| {
            CheckError::NotFound(format!(
                "{}.{}'s inbound listener has no filter chain for port {port}",
                dest.workload, dest.namespace
            ))
        })?;
    Ok(("virtualInbound".to_string(), pick, port))
}

fn one<'a>(
    mut listeners: Vec<(&'a String, &'a Listener, u16)>,
    dest: &Proxy,
) -> Result<(&'a String, &'a Listener, u16), CheckError> {
    if listeners.len() == 1 {
        return Ok(listeners.remove(0));
    }
    let ports: Vec<u16> = listeners.iter().map(|(_, _, p)| *p).collect();
    Err(CheckError::Bad(format!(
        "gateway {}.{} listens on ports {ports:?}: say which with --port",
        dest.workload, dest.namespace
    )))
}

fn listener_port(l: &Listener) -> Option<u16> {
    use envoy_types::pb::envoy::config::core::v3::address::Address as Kind;
    use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
    match l.address.as_ref()?.address.as_ref()? {
        Kind::SocketAddress(s) => match s.port_specifier.as_ref()? {
            PortSpecifier::PortValue(p) => Some(*p as u16),
            _ => None,
        },
        _ => None,
    }
}

fn network_filters(chain: &FilterChain) -> Result<Vec<RbacFilter>, CheckError> {
    chain
        .filters
        .iter()
        .filter(|f| f.name == NETWORK_RBAC)
        .map(|f| {
            let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
                return Err(CheckError::Bad(format!("{} has no typed config", f.name)));
            };
            convert::network_rbac_filter(any)
                .map_err(|e| CheckError::Bad(format!("chain {}: {e}", chain.name)))
        })
        .collect()
}

/// The chain's connection manager's jwt_authn filter (RequestAuthentication), if any.
fn jwt_filter(chain: &FilterChain) -> Result<Option<strait_authz::JwtAuthn>, CheckError> {
    let Some(hcm) = hcm(chain)? else {
        return Ok(None);
    };
    hcm.http_filters
        .iter()
        .find(|f| f.name == JWT_AUTHN)
        .map(|f| {
            let Some(http_filter::ConfigType::TypedConfig(any)) = &f.config_type else {
                return Err(CheckError::Bad(format!("{} has no typed config", f.name)));
            };
            convert::jwt_authn(any)
                .map_err(|e| CheckError::Bad(format!("chain {}: {e}", chain.name)))
        })
        .transpose()
}

fn hcm(chain: &FilterChain) -> Result<Option<HttpConnectionManager>, CheckError> {
    let Some(f) = chain.filters.iter().find(|f| f.name == HCM) else {
        return Ok(None);
    };
    let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
        return Err(CheckError::Bad(format!("{} has no typed config", f.name)));
    };
    HttpConnectionManager::decode(any.value.as_slice())
        .map(Some)
        .map_err(|e| CheckError::Bad(format!("chain {}: {e}", chain.name)))
}

/// An HTTP filter `strait authz check` evaluates.
enum HttpFilter {
    Rbac(RbacFilter),
    /// A CUSTOM provider's ext_authz: the authorizer's cluster.
    ExtAuthz {
        cluster: String,
    },
}

/// The cluster an ext_authz filter calls (gRPC or HTTP service).
fn ext_authz_cluster(any: &envoy_types::pb::google::protobuf::Any) -> Result<String, String> {
    use envoy_types::pb::envoy::config::core::v3::grpc_service::TargetSpecifier;
    use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3::{ExtAuthz, ext_authz};
    let config = ExtAuthz::decode(any.value.as_slice()).map_err(|e| e.to_string())?;
    match config.services {
        Some(ext_authz::Services::GrpcService(g)) => match g.target_specifier {
            Some(TargetSpecifier::EnvoyGrpc(e)) => Ok(e.cluster_name),
            _ => Err("a gRPC service without envoy_grpc".to_string()),
        },
        Some(ext_authz::Services::HttpService(h)) => h
            .server_uri
            .and_then(|u| u.http_upstream_type)
            .map(|t| match t {
                envoy_types::pb::envoy::config::core::v3::http_uri::HttpUpstreamType::Cluster(
                    c,
                ) => c,
            })
            .ok_or_else(|| "an HTTP service without server_uri.cluster".to_string()),
        None => Err("no service".to_string()),
    }
}

/// The HTTP RBAC and ext_authz filters of the chain's connection manager, in order; `None`
/// for a TCP chain.
fn http_filters(chain: &FilterChain) -> Result<Option<Vec<HttpFilter>>, CheckError> {
    let Some(f) = chain.filters.iter().find(|f| f.name == HCM) else {
        return Ok(None);
    };
    let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
        return Err(CheckError::Bad(format!("{} has no typed config", f.name)));
    };
    let hcm = HttpConnectionManager::decode(any.value.as_slice())
        .map_err(|e| CheckError::Bad(format!("chain {}: {e}", chain.name)))?;
    hcm.http_filters
        .iter()
        .filter(|f| f.name == HTTP_RBAC || f.name == HTTP_EXT_AUTHZ)
        .map(|f| {
            let Some(http_filter::ConfigType::TypedConfig(any)) = &f.config_type else {
                return Err(CheckError::Bad(format!("{} has no typed config", f.name)));
            };
            if f.name == HTTP_EXT_AUTHZ {
                return ext_authz_cluster(any)
                    .map(|cluster| HttpFilter::ExtAuthz { cluster })
                    .map_err(|e| CheckError::Bad(format!("chain {}: ext_authz: {e}", chain.name)));
            }
            convert::http_rbac_filter(any)
                .map(HttpFilter::Rbac)
                .map_err(|e| CheckError::Bad(format!("chain {}: {e}", chain.name)))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::{
        Address, SocketAddress, address, socket_address,
    };
    use envoy_types::pb::envoy::config::listener::v3::FilterChainMatch;
    use envoy_types::pb::google::protobuf::UInt32Value;
    use strait_xds_core::CaptureMode;

    fn sidecar() -> Proxy {
        Proxy {
            id: "sidecar~10.44.0.5~httpbin.foo~foo.svc.cluster.local".into(),
            role: ProxyRole::Sidecar,
            ip: "10.44.0.5".parse().unwrap(),
            workload: "httpbin".into(),
            namespace: "foo".into(),
            labels: Default::default(),
            capture: CaptureMode::Iptables,
            service_account: "httpbin".into(),
            app_address: None,
            mtls: true,
        }
    }

    fn chain(name: &str, port: u16, transport: &str) -> FilterChain {
        FilterChain {
            name: name.into(),
            filter_chain_match: Some(FilterChainMatch {
                destination_port: Some(UInt32Value { value: port.into() }),
                transport_protocol: transport.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// A sidecar's `virtualInbound` on 15006, as the translator makes it: the blackhole chain
    /// for 15006 itself, the workload's ports (mutual TLS and plaintext chains each), the
    /// passthrough chain for the others.
    fn inbound(ports: &[u16]) -> XdsResources {
        let mut chains = vec![chain("virtualInbound-blackhole", 15006, "")];
        for p in ports {
            chains.push(chain(&format!("0.0.0.0_{p}-mtls"), *p, TLS));
            chains.push(chain(&format!("0.0.0.0_{p}"), *p, "raw_buffer"));
        }
        let mut resources = XdsResources::default();
        resources.listeners.insert(
            "virtualInbound".into(),
            Listener {
                name: "virtualInbound".into(),
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: "0.0.0.0".into(),
                        port_specifier: Some(socket_address::PortSpecifier::PortValue(15006)),
                        ..Default::default()
                    })),
                }),
                filter_chains: chains,
                default_filter_chain: Some(FilterChain {
                    name: "InboundPassthroughFilterChain".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
        resources
    }

    fn text(e: CheckError) -> String {
        match e {
            CheckError::NotFound(s) | CheckError::Bad(s) => s,
        }
    }

    #[test]
    fn the_capture_port_is_not_one_of_the_workloads_ports() {
        let dest = sidecar();
        let resources = inbound(&[8080]);
        let (_, chain, port) = pick_chain(None, &dest, &resources, true).unwrap();
        assert_eq!((port, chain.name.as_str()), (8080, "0.0.0.0_8080-mtls"));

        let resources = inbound(&[9000, 8080]);
        let err = text(pick_chain(None, &dest, &resources, true).unwrap_err());
        assert_eq!(
            err,
            "httpbin.foo has inbound ports [8080, 9000]: say which with --port"
        );

        let resources = inbound(&[]);
        let err = text(pick_chain(None, &dest, &resources, false).unwrap_err());
        assert!(err.contains("declares no inbound port"), "{err}");
        // Asked for, the port's plaintext chain for a client without a certificate.
        let resources = inbound(&[8080]);
        let (_, chain, port) = pick_chain(Some(8080), &dest, &resources, false).unwrap();
        assert_eq!((port, chain.name.as_str()), (8080, "0.0.0.0_8080"));
    }

    /// A port the workload does not declare (tcp-echo's 9002 in Istio's authz-tcp task) takes
    /// the passthrough chain, as the proxy does.
    #[test]
    fn an_undeclared_port_takes_the_passthrough_chain() {
        let resources = inbound(&[9000]);
        let (_, chain, port) = pick_chain(Some(9002), &sidecar(), &resources, true).unwrap();
        assert_eq!(
            (port, chain.name.as_str()),
            (9002, "InboundPassthroughFilterChain")
        );
    }
}
