//! The pod address range.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use crate::Error;

/// An IPv4 range pods take addresses from. The first host address is the bridge's (the pods'
/// gateway); pods get the ones after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodRange {
    network: Ipv4Addr,
    prefix_len: u8,
}

impl PodRange {
    /// The network address.
    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// The bridge's address: the first host address.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    /// Pod addresses, in order: after the gateway, before the broadcast address.
    pub fn pod_addresses(&self) -> impl Iterator<Item = Ipv4Addr> + use<> {
        let first = u32::from(self.network) + 2;
        let size = 1u64 << (32 - self.prefix_len);
        let last = (u64::from(u32::from(self.network)) + size - 2) as u32;
        (first..=last).map(Ipv4Addr::from)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len))
            .unwrap_or(0);
        u32::from(ip) & mask == u32::from(self.network)
    }
}

impl FromStr for PodRange {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        let bad = |reason| Error::BadRange {
            text: text.to_string(),
            reason,
        };
        let (ip, len) = text
            .trim()
            .split_once('/')
            .ok_or_else(|| bad("no /PREFIX"))?;
        let network: Ipv4Addr = ip.parse().map_err(|_| bad("not an IPv4 address"))?;
        let prefix_len: u8 = len.parse().map_err(|_| bad("the prefix is not a number"))?;
        if !(8..=29).contains(&prefix_len) {
            return Err(bad("the prefix must be between /8 and /29"));
        }
        let mask = u32::MAX << (32 - u32::from(prefix_len));
        if u32::from(network) & !mask != 0 {
            return Err(bad("host bits are set"));
        }
        Ok(PodRange {
            network,
            prefix_len,
        })
    }
}

impl fmt::Display for PodRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_and_pod_addresses() {
        let r: PodRange = "10.44.0.0/16".parse().unwrap();
        assert_eq!(r.gateway(), Ipv4Addr::new(10, 44, 0, 1));
        let mut pods = r.pod_addresses();
        assert_eq!(pods.next(), Some(Ipv4Addr::new(10, 44, 0, 2)));
        assert_eq!(
            r.pod_addresses().last(),
            Some(Ipv4Addr::new(10, 44, 255, 254))
        );
        assert!(r.contains(Ipv4Addr::new(10, 44, 9, 9)));
        assert!(!r.contains(Ipv4Addr::new(10, 45, 0, 1)));
        let small: PodRange = "10.9.0.0/29".parse().unwrap();
        assert_eq!(small.pod_addresses().count(), 5);
        assert_eq!(small.to_string(), "10.9.0.0/29");
    }

    #[test]
    fn rejects_bad_ranges() {
        for bad in ["10.44.0.1/16", "10.44.0.0", "x/16", "10.0.0.0/31"] {
            assert!(bad.parse::<PodRange>().is_err(), "{bad}");
        }
    }
}
