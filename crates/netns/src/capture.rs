//! Istio's istio-init rules: the nat table of a pod's namespace.
//!
//! As `istio-iptables` writes them in REDIRECT mode: `PREROUTING` sends inbound TCP to
//! `ISTIO_INBOUND`, which skips the proxy's own ports and sends the rest through
//! `ISTIO_IN_REDIRECT` to 15006; `OUTPUT` sends outbound TCP to `ISTIO_OUTPUT`, which lets the
//! proxy's own traffic (uid/gid 1337) and loopback pass and sends the rest through
//! `ISTIO_REDIRECT` to 15001. The pod annotations `traffic.sidecar.istio.io/...` narrow it.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use crate::Error;

/// The proxy's uid, as Istio's (the sidecar runs as it; its traffic is not captured).
pub const PROXY_UID: u32 = 1337;
/// The proxy's gid.
pub const PROXY_GID: u32 = 1337;

const ANNOTATION_PREFIX: &str = "traffic.sidecar.istio.io/";

/// Which traffic a pod's rules capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureRules {
    pub outbound_port: u16,
    pub inbound_port: u16,
    /// Inbound ports never redirected: the proxy's own (15000 admin, 15001, 15006, 15008,
    /// 15020, 15021, 15090) and `excludeInboundPorts`.
    pub exclude_inbound_ports: Vec<u16>,
    /// `includeInboundPorts`: `None` is every port (`*`).
    pub include_inbound_ports: Option<Vec<u16>>,
    /// `excludeOutboundPorts`.
    pub exclude_outbound_ports: Vec<u16>,
    /// `excludeOutboundIPRanges`.
    pub exclude_outbound_ranges: Vec<String>,
    /// `includeOutboundIPRanges`: `None` is every address (`*`).
    pub include_outbound_ranges: Option<Vec<String>>,
}

impl Default for CaptureRules {
    fn default() -> Self {
        CaptureRules {
            outbound_port: 15001,
            inbound_port: 15006,
            exclude_inbound_ports: vec![15000, 15001, 15006, 15008, 15020, 15021, 15090],
            include_inbound_ports: None,
            exclude_outbound_ports: Vec::new(),
            exclude_outbound_ranges: Vec::new(),
            include_outbound_ranges: None,
        }
    }
}

fn ports(key: &str, value: &str) -> Result<Vec<u16>, Error> {
    value
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<u16>()
                .ok()
                .filter(|n| *n != 0)
                .ok_or_else(|| Error::BadAnnotation {
                    key: key.to_string(),
                    value: value.to_string(),
                    reason: "write port numbers separated by commas",
                })
        })
        .collect()
}

fn ranges(key: &str, value: &str) -> Result<Vec<String>, Error> {
    value
        .split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(|r| {
            let (ip, len) = r.split_once('/').unwrap_or((r, "32"));
            let ok = ip.parse::<Ipv4Addr>().is_ok() && len.parse::<u8>().is_ok_and(|l| l <= 32);
            if ok {
                Ok(format!("{ip}/{len}"))
            } else {
                Err(Error::BadAnnotation {
                    key: key.to_string(),
                    value: value.to_string(),
                    reason: "write IPv4 CIDRs separated by commas, or *",
                })
            }
        })
        .collect()
}

impl CaptureRules {
    /// The rules for a pod with these annotations (others than `traffic.sidecar.istio.io/*`
    /// are ignored here).
    pub fn from_annotations(annotations: &BTreeMap<String, String>) -> Result<Self, Error> {
        let mut rules = CaptureRules::default();
        for (key, value) in annotations {
            let Some(name) = key.strip_prefix(ANNOTATION_PREFIX) else {
                continue;
            };
            let all = value.trim() == "*";
            match name {
                "excludeInboundPorts" => rules.exclude_inbound_ports.extend(ports(key, value)?),
                "includeInboundPorts" => {
                    rules.include_inbound_ports = (!all).then(|| ports(key, value)).transpose()?
                }
                "excludeOutboundPorts" => rules.exclude_outbound_ports = ports(key, value)?,
                "excludeOutboundIPRanges" => rules.exclude_outbound_ranges = ranges(key, value)?,
                "includeOutboundIPRanges" => {
                    rules.include_outbound_ranges =
                        (!all).then(|| ranges(key, value)).transpose()?
                }
                _ => tracing::warn!(%key, "unsupported traffic annotation ignored"),
            }
        }
        rules.exclude_inbound_ports.sort_unstable();
        rules.exclude_inbound_ports.dedup();
        Ok(rules)
    }

    /// The nat table additions, as `iptables-restore --noflush` input.
    pub fn restore_input(&self) -> String {
        let uid = PROXY_UID;
        let gid = PROXY_GID;
        let mut l: Vec<String> = vec!["*nat".into()];
        for chain in [
            "ISTIO_INBOUND",
            "ISTIO_IN_REDIRECT",
            "ISTIO_OUTPUT",
            "ISTIO_REDIRECT",
        ] {
            l.push(format!(":{chain} - [0:0]"));
        }
        l.push(format!(
            "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports {}",
            self.inbound_port
        ));
        l.push(format!(
            "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports {}",
            self.outbound_port
        ));
        // Inbound.
        l.push("-A PREROUTING -p tcp -j ISTIO_INBOUND".into());
        for p in &self.exclude_inbound_ports {
            l.push(format!("-A ISTIO_INBOUND -p tcp --dport {p} -j RETURN"));
        }
        match &self.include_inbound_ports {
            None => l.push("-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT".into()),
            Some(list) => {
                for p in list {
                    l.push(format!(
                        "-A ISTIO_INBOUND -p tcp --dport {p} -j ISTIO_IN_REDIRECT"
                    ));
                }
            }
        }
        // Outbound.
        l.push("-A OUTPUT -p tcp -j ISTIO_OUTPUT".into());
        for p in &self.exclude_outbound_ports {
            l.push(format!("-A ISTIO_OUTPUT -p tcp --dport {p} -j RETURN"));
        }
        // Istio's inbound passthrough source address.
        l.push("-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN".into());
        // The proxy calling its own pod's address (not 127.0.0.1) over lo: that is inbound.
        l.push(format!(
            "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp ! --dport 15008 -m owner --uid-owner {uid} -j ISTIO_IN_REDIRECT"
        ));
        l.push(format!(
            "-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner {uid} -j RETURN"
        ));
        l.push(format!(
            "-A ISTIO_OUTPUT -m owner --uid-owner {uid} -j RETURN"
        ));
        l.push(format!(
            "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -m owner --gid-owner {gid} -j ISTIO_IN_REDIRECT"
        ));
        l.push(format!(
            "-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner {gid} -j RETURN"
        ));
        l.push(format!(
            "-A ISTIO_OUTPUT -m owner --gid-owner {gid} -j RETURN"
        ));
        l.push("-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN".into());
        for r in &self.exclude_outbound_ranges {
            l.push(format!("-A ISTIO_OUTPUT -d {r} -j RETURN"));
        }
        match &self.include_outbound_ranges {
            None => l.push("-A ISTIO_OUTPUT -j ISTIO_REDIRECT".into()),
            Some(list) => {
                for r in list {
                    l.push(format!("-A ISTIO_OUTPUT -d {r} -j ISTIO_REDIRECT"));
                }
            }
        }
        l.push("COMMIT".into());
        l.join("\n") + "\n"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (format!("{ANNOTATION_PREFIX}{k}"), v.to_string()))
            .collect()
    }

    #[test]
    fn default_rules_capture_everything_but_the_proxy() {
        let text = CaptureRules::default().restore_input();
        assert!(
            text.starts_with("*nat\n") && text.ends_with("COMMIT\n"),
            "{text}"
        );
        assert!(text.contains("-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001"));
        assert!(text.contains("-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006"));
        assert!(text.contains("-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN"));
        assert!(text.contains("-A ISTIO_INBOUND -p tcp --dport 15021 -j RETURN"));
        // The catch-all redirect comes after every exception.
        let redirect = text.find("-A ISTIO_OUTPUT -j ISTIO_REDIRECT").unwrap();
        let uid = text.find("--uid-owner 1337 -j RETURN").unwrap();
        let lo = text
            .find("-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN")
            .unwrap();
        assert!(uid < redirect && lo < redirect);
        let inbound = text
            .find("-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT")
            .unwrap();
        assert!(text.find("--dport 15090 -j RETURN").unwrap() < inbound);
    }

    #[test]
    fn annotations_narrow_the_capture() {
        let rules = CaptureRules::from_annotations(&annotations(&[
            ("excludeOutboundPorts", "5432, 6379"),
            ("excludeInboundPorts", "8081"),
            ("excludeOutboundIPRanges", "10.0.0.0/8,192.168.1.1"),
            ("includeOutboundIPRanges", "240.240.0.0/16"),
        ]))
        .unwrap();
        let text = rules.restore_input();
        assert!(text.contains("-A ISTIO_OUTPUT -p tcp --dport 5432 -j RETURN"));
        assert!(text.contains("-A ISTIO_OUTPUT -p tcp --dport 6379 -j RETURN"));
        assert!(text.contains("-A ISTIO_INBOUND -p tcp --dport 8081 -j RETURN"));
        assert!(text.contains("-A ISTIO_OUTPUT -d 10.0.0.0/8 -j RETURN"));
        assert!(text.contains("-A ISTIO_OUTPUT -d 192.168.1.1/32 -j RETURN"));
        assert!(text.contains("-A ISTIO_OUTPUT -d 240.240.0.0/16 -j ISTIO_REDIRECT"));
        assert!(!text.contains("-A ISTIO_OUTPUT -j ISTIO_REDIRECT"));
        let star =
            CaptureRules::from_annotations(&annotations(&[("includeOutboundIPRanges", "*")]))
                .unwrap();
        assert_eq!(star.include_outbound_ranges, None);
        let inbound =
            CaptureRules::from_annotations(&annotations(&[("includeInboundPorts", "9080")]))
                .unwrap()
                .restore_input();
        assert!(inbound.contains("-A ISTIO_INBOUND -p tcp --dport 9080 -j ISTIO_IN_REDIRECT"));
        assert!(!inbound.contains("-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT"));
    }

    #[test]
    fn bad_annotations_are_named() {
        let e = CaptureRules::from_annotations(&annotations(&[("excludeOutboundPorts", "x")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("excludeOutboundPorts"), "{e}");
        assert!(
            CaptureRules::from_annotations(&annotations(&[("excludeOutboundIPRanges", "1.2.3/8")]))
                .is_err()
        );
    }
}
