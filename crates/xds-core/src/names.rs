//! Istio's reserved ports and resource names, as the translator writes them and the proxies and
//! tools read them.

/// Outbound traffic captured by iptables (`virtualOutbound`).
pub const VIRTUAL_OUTBOUND_PORT: u16 = 15001;
/// Inbound traffic captured by iptables (`virtualInbound`).
pub const VIRTUAL_INBOUND_PORT: u16 = 15006;
/// The HTTP proxy listener of the no-capture mode (Strait's own).
pub const HTTP_PROXY_PORT: u16 = 15080;
/// The proxy's admin interface.
pub const ADMIN_PORT: u16 = 15000;
/// Where Prometheus scrapes a proxy's stats (`/stats/prometheus`), on the pod's address.
pub const PROMETHEUS_PORT: u16 = 15090;

/// Where traffic for hosts the registry does not know goes (ALLOW_ANY).
pub const PASSTHROUGH_CLUSTER: &str = "PassthroughCluster";
/// Where a sidecar's inbound passthrough chain sends connections to ports its workload does
/// not declare: their original destination, from the source address
/// [`INBOUND_PASSTHROUGH_BIND_V4`] (or `_V6`), which the capture rules let through (without it
/// the connection, addressed to the pod, would be captured again, a loop).
pub const INBOUND_PASSTHROUGH_CLUSTER: &str = "InboundPassthroughCluster";
/// The inbound passthrough cluster's source address (Istio's), IPv4 pods.
pub const INBOUND_PASSTHROUGH_BIND_V4: &str = "127.0.0.6";
/// The inbound passthrough cluster's source address (Istio's), IPv6 pods.
pub const INBOUND_PASSTHROUGH_BIND_V6: &str = "::6";
/// Where traffic that must not leave goes (REGISTRY_ONLY).
pub const BLACKHOLE_CLUSTER: &str = "BlackHoleCluster";

/// `outbound|9080|v1|reviews.default.svc.cluster.local`
pub fn outbound_cluster_name(port: u16, subset: &str, host: &str) -> String {
    format!("outbound|{port}|{subset}|{host}")
}

/// `inbound|9080||`
pub fn inbound_cluster_name(port: u16) -> String {
    format!("inbound|{port}||")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_names_are_istios() {
        assert_eq!(
            outbound_cluster_name(9080, "v1", "reviews.default.svc.cluster.local"),
            "outbound|9080|v1|reviews.default.svc.cluster.local"
        );
        assert_eq!(
            outbound_cluster_name(9080, "", "reviews.default.svc.cluster.local"),
            "outbound|9080||reviews.default.svc.cluster.local"
        );
        assert_eq!(inbound_cluster_name(9080), "inbound|9080||");
    }
}
