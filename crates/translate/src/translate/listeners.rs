//! Listeners and route configurations, following Istio's sidecar and gateway model.
//!
//! - [`outbound`]: a sidecar's outbound side: `virtualOutbound` (15001) and the per-port
//!   listeners `0.0.0.0_PORT` in iptables capture mode, or the HTTP proxy listener
//!   `ADDRESS_15080` without capture; TCP and TLS (SNI) forwarding.
//! - [`route_config`]: the outbound route configurations (`PORT`, `15080`): one virtual host
//!   per service host, VirtualService routes, and the `allow_any` / `block_all` catch-all.
//! - [`http_route`]: one VirtualService HTTP rule → Envoy routes (matches, header changes,
//!   weighted clusters, rewrites, mirrors); [`http_policy`]: the policies they carry (timeouts,
//!   retries, hash policies, redirects, faults, CORS).
//! - [`inbound`]: `virtualInbound` (15006), or per-port inbound listeners without capture.
//! - [`gateway`]: gateway listeners `0.0.0.0_PORT` and route configurations `http.PORT`
//!   (and `https.PORT.PORT_NAME.GATEWAY.NAMESPACE` per terminated HTTPS server);
//!   [`gateway_tls`]: the TLS those servers terminate.
//! - [`filters`]: the Envoy filters these share (HCM, tcp_proxy, router, fault, CORS);
//!   [`matchers`]: Istio's string matches as Envoy matchers.
//! - [`config`]: which VirtualServices and DestinationRules apply to a proxy.

mod config;
mod filters;
mod gateway;
mod gateway_tls;
mod http_policy;
mod http_route;
mod inbound;
mod l4;
mod matchers;
mod outbound;
mod route_config;

use super::Ctx;
use strait_xds_core::{ProxyRole, XdsResources};

/// Outbound and inbound listeners and the route configurations they name.
pub(super) fn build(ctx: &Ctx<'_>, out: &mut XdsResources) {
    match ctx.proxy.role {
        ProxyRole::Gateway => gateway::build(ctx, out),
        ProxyRole::Sidecar => {
            outbound::build(ctx, out);
            inbound::build(ctx, out);
        }
    }
}
