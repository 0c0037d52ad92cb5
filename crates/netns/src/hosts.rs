//! A pod's hosts file: service names to virtual IPs, as cluster DNS would answer.

use std::net::IpAddr;

/// A service as the hosts file needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostsEntry {
    /// The fully qualified host: `reviews.default.svc.cluster.local`, or a ServiceEntry host.
    pub hostname: String,
    /// The service's namespace.
    pub namespace: String,
    pub address: IpAddr,
}

/// The hosts file of a pod named `pod` in `namespace` at `pod_ip`: localhost, the pod's own
/// name, then per service the names Kubernetes' DNS resolves from that namespace: `NAME.NS`,
/// `NAME.NS.svc` and the full name everywhere, the short `NAME` only in the same namespace.
pub fn render_hosts(
    pod: &str,
    namespace: &str,
    pod_ip: IpAddr,
    services: &[HostsEntry],
    domain_suffix: &str,
) -> String {
    let mut out = String::from(
        "# Written by strait run: service names to their virtual IPs.\n\
         127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    );
    out.push_str(&format!("{pod_ip}\t{pod}\n"));
    let kube_suffix = format!(".svc.{domain_suffix}");
    for s in services {
        let mut names = Vec::new();
        if let Some(short_ns) = s.hostname.strip_suffix(&kube_suffix)
            && let Some((short, ns)) = short_ns.split_once('.')
            && !ns.contains('.')
        {
            if ns == namespace {
                names.push(short.to_string());
            }
            names.push(format!("{short}.{ns}"));
            names.push(format!("{short}.{ns}.svc"));
        }
        names.push(s.hostname.clone());
        // Wildcard hosts have no single name to map.
        names.retain(|n| !n.contains('*'));
        if names.is_empty() {
            continue;
        }
        out.push_str(&format!("{}\t{}\n", s.address, names.join(" ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(host: &str, ns: &str, ip: &str) -> HostsEntry {
        HostsEntry {
            hostname: host.into(),
            namespace: ns.into(),
            address: ip.parse().unwrap(),
        }
    }

    #[test]
    fn short_names_only_in_the_same_namespace() {
        let text = render_hosts(
            "client",
            "default",
            "10.44.0.2".parse().unwrap(),
            &[
                entry(
                    "reviews.default.svc.cluster.local",
                    "default",
                    "240.240.0.7",
                ),
                entry("db.data.svc.cluster.local", "data", "240.240.0.8"),
                entry("api.example.com", "default", "240.240.0.9"),
                entry("*.wild.com", "default", "240.240.0.10"),
            ],
            "cluster.local",
        );
        assert!(text.contains("10.44.0.2\tclient\n"), "{text}");
        assert!(text.contains(
            "240.240.0.7\treviews reviews.default reviews.default.svc reviews.default.svc.cluster.local\n"
        ));
        assert!(text.contains("240.240.0.8\tdb.data db.data.svc db.data.svc.cluster.local\n"));
        assert!(text.contains("240.240.0.9\tapi.example.com\n"));
        assert!(!text.contains("wild"));
        assert!(text.contains("127.0.0.1\tlocalhost\n"));
    }
}
