//! kube-proxy's part for pods without a sidecar: a service's virtual IP and port, DNATed to one
//! of its endpoints (chosen at random per connection, as kube-proxy's iptables mode does), so
//! that `curl http://httpbin.foo:8000/` from such a pod reaches a workload as it would on
//! Kubernetes. Pods with a sidecar do not need it: their sidecar routes virtual IPs.

use std::net::{IpAddr, SocketAddr};

/// The chain the rules live in (rewritten whole on every refresh).
pub const SERVICES_CHAIN: &str = "STRAIT_SERVICES";

/// One service port and its endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub vip: IpAddr,
    pub port: u16,
    pub endpoints: Vec<SocketAddr>,
}

/// The nat table's `STRAIT_SERVICES` chain for `ports`, as `iptables-restore --noflush` input
/// (declaring the chain flushes it); `hook` adds the jump from OUTPUT (the first time only).
pub fn services_restore_input(ports: &[ServicePort], hook: bool) -> String {
    let mut l = vec!["*nat".to_string(), format!(":{SERVICES_CHAIN} - [0:0]")];
    if hook {
        l.push(format!("-A OUTPUT -p tcp -j {SERVICES_CHAIN}"));
    }
    for sp in ports {
        let v4: Vec<&SocketAddr> = sp.endpoints.iter().filter(|e| e.is_ipv4()).collect();
        let IpAddr::V4(vip) = sp.vip else { continue };
        let n = v4.len();
        for (i, ep) in v4.iter().enumerate() {
            // kube-proxy's cascade: the i-th rule takes 1/(n-i) of what reaches it.
            let pick = if i + 1 < n {
                format!(
                    " -m statistic --mode random --probability {:.5}",
                    1.0 / (n - i) as f64
                )
            } else {
                String::new()
            };
            l.push(format!(
                "-A {SERVICES_CHAIN} -d {vip}/32 -p tcp --dport {}{pick} -j DNAT --to-destination {ep}",
                sp.port
            ));
        }
    }
    l.push("COMMIT".to_string());
    l.join("\n") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_picked_at_random_per_connection() {
        let text = services_restore_input(
            &[ServicePort {
                vip: "240.240.0.5".parse().unwrap(),
                port: 8000,
                endpoints: vec![
                    "10.44.0.3:8080".parse().unwrap(),
                    "10.44.0.4:8080".parse().unwrap(),
                    "10.44.0.5:8080".parse().unwrap(),
                ],
            }],
            true,
        );
        assert_eq!(
            text,
            "*nat\n:STRAIT_SERVICES - [0:0]\n-A OUTPUT -p tcp -j STRAIT_SERVICES\n\
             -A STRAIT_SERVICES -d 240.240.0.5/32 -p tcp --dport 8000 -m statistic --mode random --probability 0.33333 -j DNAT --to-destination 10.44.0.3:8080\n\
             -A STRAIT_SERVICES -d 240.240.0.5/32 -p tcp --dport 8000 -m statistic --mode random --probability 0.50000 -j DNAT --to-destination 10.44.0.4:8080\n\
             -A STRAIT_SERVICES -d 240.240.0.5/32 -p tcp --dport 8000 -j DNAT --to-destination 10.44.0.5:8080\n\
             COMMIT\n"
        );
        // A refresh declares (flushes) the chain without adding a second jump.
        assert!(!services_restore_input(&[], false).contains("OUTPUT"));
    }
}
