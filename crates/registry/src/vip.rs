//! Virtual IPs for services.
//!
//! Every service host gets one IPv4 address from a range (Istio auto-allocates ServiceEntry
//! addresses from `240.240.0.0/16`, which is reserved and never routed). An address, once given
//! to a host, stays with it: the table is kept by the control plane (see [`VipTable::to_json`]),
//! so a restart hands out the same addresses, and a host that disappears keeps its address until
//! the owner calls [`VipTable::retain`].
//!
//! A new host's first candidate is derived from a hash of its name, so that even a table rebuilt
//! from nothing gives most hosts the addresses they had; collisions move on to the next free one.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a virtual IP could not be given, or a table could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VipError {
    #[error(
        "invalid virtual IP range {text:?}: {reason}; write an IPv4 CIDR such as \"240.240.0.0/16\""
    )]
    BadRange { text: String, reason: &'static str },
    #[error(
        "no virtual IP left for {host:?}: all {capacity} addresses of {range} are taken; configure a larger range or remove unused services"
    )]
    Exhausted {
        host: String,
        range: VipRange,
        capacity: u64,
    },
    #[error(
        "the saved virtual IP table is not valid JSON of the expected shape ({reason}); delete it and the control plane allocates anew"
    )]
    BadTable { reason: String },
    #[error(
        "the saved virtual IP table gives {ip} to both {first:?} and {second:?}; delete one of them from the file"
    )]
    Duplicate {
        ip: Ipv4Addr,
        first: String,
        second: String,
    },
}

/// An IPv4 range virtual IPs come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VipRange {
    network: Ipv4Addr,
    prefix_len: u8,
}

impl Default for VipRange {
    /// `240.240.0.0/16`, as Istio's automatic allocation.
    fn default() -> Self {
        Self {
            network: Ipv4Addr::new(240, 240, 0, 0),
            prefix_len: 16,
        }
    }
}

impl VipRange {
    /// A range from a CIDR such as `240.240.0.0/16` (host bits must be zero).
    pub fn parse(text: &str) -> Result<VipRange, VipError> {
        let bad = |reason| VipError::BadRange {
            text: text.to_string(),
            reason,
        };
        let (ip, len) = text
            .trim()
            .split_once('/')
            .ok_or_else(|| bad("missing /PREFIX"))?;
        let network: Ipv4Addr = ip
            .parse()
            .map_err(|_| bad("the address is not an IPv4 address"))?;
        let prefix_len: u8 = len
            .parse()
            .map_err(|_| bad("the prefix length is not a number"))?;
        if !(8..=30).contains(&prefix_len) {
            return Err(bad("the prefix length must be between 8 and 30"));
        }
        if u32::from(network) & !mask(prefix_len) != 0 {
            return Err(bad("the address has host bits set"));
        }
        Ok(VipRange {
            network,
            prefix_len,
        })
    }

    /// How many addresses can be given: all but the network and broadcast addresses.
    pub fn capacity(&self) -> u64 {
        (1u64 << (32 - self.prefix_len)) - 2
    }

    /// Whether `ip` is one the range can give.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let ip = u32::from(ip);
        let base = u32::from(self.network);
        ip & mask(self.prefix_len) == base && ip != base && ip != base | !mask(self.prefix_len)
    }

    /// The `i`th usable address, `0 <= i < capacity()`.
    fn nth(&self, i: u64) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1 + i as u32)
    }
}

fn mask(prefix_len: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(prefix_len))
        .unwrap_or(0)
}

impl fmt::Display for VipRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

impl FromStr for VipRange {
    type Err = VipError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        VipRange::parse(s)
    }
}

/// The virtual IP of each service host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VipTable {
    range: VipRange,
    by_host: BTreeMap<String, Ipv4Addr>,
    taken: BTreeSet<Ipv4Addr>,
}

/// The table as saved.
#[derive(Serialize, Deserialize)]
struct Saved {
    range: String,
    hosts: BTreeMap<String, Ipv4Addr>,
}

impl VipTable {
    /// An empty table over `range`.
    pub fn new(range: VipRange) -> Self {
        Self {
            range,
            ..Self::default()
        }
    }

    pub fn range(&self) -> VipRange {
        self.range
    }

    /// The address of `host`, if it has one.
    pub fn get(&self, host: &str) -> Option<IpAddr> {
        self.by_host.get(host).copied().map(IpAddr::V4)
    }

    /// The hosts and their addresses, by host.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Ipv4Addr)> {
        self.by_host.iter().map(|(h, ip)| (h.as_str(), *ip))
    }

    pub fn len(&self) -> usize {
        self.by_host.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_host.is_empty()
    }

    /// The address of `host`: the one it has, else a free one, which is then its own.
    pub fn allocate(&mut self, host: &str) -> Result<IpAddr, VipError> {
        if let Some(ip) = self.by_host.get(host) {
            return Ok(IpAddr::V4(*ip));
        }
        let capacity = self.range.capacity();
        let start = fnv1a(host) % capacity;
        let ip = (0..capacity)
            .map(|i| self.range.nth((start + i) % capacity))
            .find(|ip| !self.taken.contains(ip))
            .ok_or_else(|| VipError::Exhausted {
                host: host.to_string(),
                range: self.range,
                capacity,
            })?;
        self.by_host.insert(host.to_string(), ip);
        self.taken.insert(ip);
        tracing::debug!(host, %ip, "allocated a virtual IP");
        Ok(IpAddr::V4(ip))
    }

    /// Keeps only the hosts for which `keep` is true; the others' addresses become free.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        let taken = &mut self.taken;
        self.by_host.retain(|host, ip| {
            let k = keep(host);
            if !k {
                taken.remove(ip);
            }
            k
        });
    }

    /// The table as JSON: `{"range": "240.240.0.0/16", "hosts": {"HOST": "IP", ...}}`.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&Saved {
            range: self.range.to_string(),
            hosts: self.by_host.clone(),
        })
        .expect("a map of strings serializes")
    }

    /// Reads a table saved by [`VipTable::to_json`]. Addresses outside the saved range are
    /// kept (they stay their hosts' own) but are never handed out anew.
    pub fn from_json(text: &str) -> Result<VipTable, VipError> {
        let saved: Saved = serde_json::from_str(text).map_err(|e| VipError::BadTable {
            reason: e.to_string(),
        })?;
        let mut table = VipTable::new(VipRange::parse(&saved.range)?);
        let mut owner: BTreeMap<Ipv4Addr, &str> = BTreeMap::new();
        for (host, ip) in &saved.hosts {
            if let Some(first) = owner.insert(*ip, host) {
                return Err(VipError::Duplicate {
                    ip: *ip,
                    first: first.to_string(),
                    second: host.clone(),
                });
            }
            table.by_host.insert(host.clone(), *ip);
            table.taken.insert(*ip);
        }
        Ok(table)
    }
}

/// FNV-1a, 64 bits: a stable hash (std's hasher may change between releases).
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let r = VipRange::default();
        assert_eq!(r.to_string(), "240.240.0.0/16");
        assert_eq!(r.capacity(), 65534);
        assert!(r.contains("240.240.0.1".parse().unwrap()));
        assert!(!r.contains("240.240.0.0".parse().unwrap()));
        assert!(!r.contains("240.240.255.255".parse().unwrap()));
        assert!(!r.contains("240.241.0.1".parse().unwrap()));
        assert_eq!(VipRange::parse("10.1.0.0/24").unwrap().capacity(), 254);
        for bad in ["10.0.0.1/24", "10.0.0.0", "::/64", "10.0.0.0/31", "x/8"] {
            let e = VipRange::parse(bad).unwrap_err().to_string();
            assert!(e.contains("240.240.0.0/16"), "{e}");
        }
    }

    #[test]
    fn allocation_is_stable_and_unique() {
        let mut t = VipTable::default();
        let a = t.allocate("a.default.svc.cluster.local").unwrap();
        let b = t.allocate("b.default.svc.cluster.local").unwrap();
        assert_ne!(a, b);
        assert_eq!(t.allocate("a.default.svc.cluster.local").unwrap(), a);
        let IpAddr::V4(v4) = a else { panic!() };
        assert!(t.range().contains(v4));
        // Independent of the order of allocation (barring collisions).
        let mut u = VipTable::default();
        assert_eq!(u.allocate("b.default.svc.cluster.local").unwrap(), b);
        assert_eq!(u.allocate("a.default.svc.cluster.local").unwrap(), a);
    }

    #[test]
    fn small_range_fills_up_and_frees_on_retain() {
        let mut t = VipTable::new(VipRange::parse("10.9.0.0/30").unwrap());
        let a = t.allocate("a").unwrap();
        let b = t.allocate("b").unwrap();
        let mut got = [a, b];
        got.sort();
        assert_eq!(
            got,
            [
                "10.9.0.1".parse::<IpAddr>().unwrap(),
                "10.9.0.2".parse().unwrap()
            ]
        );
        let e = t.allocate("c").unwrap_err();
        assert!(matches!(e, VipError::Exhausted { capacity: 2, .. }));
        assert!(e.to_string().contains("larger range"));
        t.retain(|h| h != "a");
        assert_eq!(t.get("a"), None);
        assert_eq!(t.allocate("c").unwrap(), a);
        assert_eq!(t.get("b"), Some(b));
    }

    #[test]
    fn survives_a_restart() {
        let mut t = VipTable::new(VipRange::parse("10.20.0.0/16").unwrap());
        let hosts: Vec<String> = (0..50)
            .map(|i| format!("svc{i}.ns.svc.cluster.local"))
            .collect();
        let before: Vec<IpAddr> = hosts.iter().map(|h| t.allocate(h).unwrap()).collect();
        let json = t.to_json();
        let mut back = VipTable::from_json(&json).unwrap();
        assert_eq!(back, t);
        assert_eq!(back.range().to_string(), "10.20.0.0/16");
        // Asked in another order, every host gets its address back.
        for (h, ip) in hosts.iter().zip(&before).rev() {
            assert_eq!(back.allocate(h).unwrap(), *ip);
        }
        let new = back.allocate("new.ns.svc.cluster.local").unwrap();
        assert!(!before.contains(&new));
    }

    #[test]
    fn refuses_bad_tables() {
        assert!(matches!(
            VipTable::from_json("{").unwrap_err(),
            VipError::BadTable { .. }
        ));
        assert!(matches!(
            VipTable::from_json(r#"{"range": "1.2.3.4/8", "hosts": {}}"#).unwrap_err(),
            VipError::BadRange { .. }
        ));
        let dup = r#"{"range": "10.0.0.0/8", "hosts": {"a": "10.0.0.1", "b": "10.0.0.1"}}"#;
        assert!(matches!(
            VipTable::from_json(dup).unwrap_err(),
            VipError::Duplicate { .. }
        ));
    }
}
