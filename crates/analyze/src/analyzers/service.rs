//! Service port names (Istio's `analyzers/service`).

use super::analyzer;
use crate::context::Context;
use crate::message::{self as msg, Message};
use crate::object::{Object, items, number, text};

/// Istio's protocol names (`protocol.Parse`).
const PROTOCOLS: &[&str] = &[
    "tcp",
    "udp",
    "grpc",
    "grpc-web",
    "http",
    "http_proxy",
    "http2",
    "https",
    "tls",
    "mongo",
    "redis",
    "mysql",
];

/// Whether Istio can tell a port's protocol (`kube.ConvertProtocol` is not unsupported): from
/// `appProtocol` if set, else the port name's prefix before `-`.
pub(crate) fn protocol_known(name: &str, protocol: &str, app_protocol: Option<&str>) -> bool {
    if protocol.eq_ignore_ascii_case("UDP") {
        return true;
    }
    let name = match app_protocol {
        Some("kubernetes.io/h2c" | "kubernetes.io/ws" | "kubernetes.io/wss") => return true,
        Some(a) => a,
        None => name,
    };
    let lower = name.to_ascii_lowercase();
    if lower.starts_with("grpc-web") {
        return true;
    }
    let prefix = lower.split('-').next().unwrap_or("");
    PROTOCOLS.contains(&prefix)
}

/// Istio's own control plane, whose ports the analyzers leave alone.
pub(crate) fn istio_control_plane(o: &Object) -> bool {
    o.label("istio").is_some() || o.label("release") == Some("istio")
}

analyzer!(
    PortNameAnalyzer,
    "service.PortNameAnalyzer",
    [
        msg::PORT_NAME_CONVENTION,
        msg::EXTERNAL_NAME_INVALID_PORT_NAME
    ]
);

impl PortNameAnalyzer {
    fn run(&self, ctx: &mut Context<'_>) {
        let mut out = Vec::new();
        for svc in ctx.kind("", "Service") {
            if istio_control_plane(svc) || svc.label("gateway.istio.io/managed").is_some() {
                continue;
            }
            let external = text(&svc.spec()["type"]) == "ExternalName";
            for p in items(&svc.spec()["ports"]) {
                let name = text(&p["name"]);
                let known = protocol_known(name, text(&p["protocol"]), p["appProtocol"].as_str());
                if known && !(external && name == "tcp") {
                    continue;
                }
                let port = number(&p["port"]).unwrap_or(0);
                let target = match &p["targetPort"] {
                    serde_json::Value::String(s) => s.clone(),
                    v => number(v).unwrap_or(0).to_string(),
                };
                out.push(if external {
                    Message::new(
                        msg::EXTERNAL_NAME_INVALID_PORT_NAME,
                        svc,
                        "Port name for ExternalName service is invalid. Proxy may prevent tcp named ports and unmatched traffic for ports serving TCP protocol from being forwarded correctly",
                    )
                    .hint("name the port after its protocol, e.g. https or http-web")
                } else {
                    Message::new(
                        msg::PORT_NAME_CONVENTION,
                        svc,
                        format!(
                            "Port name {name} (port: {port}, targetPort: {target}) doesn't follow the naming convention of Istio port."
                        ),
                    )
                    .hint("name it <protocol>[-<suffix>] (http-web, grpc, tcp-db) or set appProtocol")
                });
            }
        }
        for m in out {
            ctx.report(m);
        }
    }
}
