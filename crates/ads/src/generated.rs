//! A proxy's generated resources, encoded once, with content versions.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use envoy_types::pb::google::protobuf::Any;

use strait_xds_core::{TypeUrl, XdsResources};

/// One resource, packed, with the version of its bytes.
#[derive(Clone, PartialEq)]
pub struct Encoded {
    /// The resource's name, shared by every stream's record of what its client has.
    pub name: Arc<str>,
    /// A hash of the encoded bytes: equal bytes, equal version.
    pub version: String,
    pub resource: Any,
}

impl std::fmt::Debug for Encoded {
    /// Name, version and size: the bytes may be a Secret's private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoded")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("type_url", &self.resource.type_url)
            .field("bytes", &self.resource.value.len())
            .finish()
    }
}

/// Resources of one type, by name.
pub(crate) type Resources = BTreeMap<String, Arc<Encoded>>;

/// Everything one proxy gets, encoded, per type.
#[derive(Debug)]
pub(crate) struct Generated {
    types: [Resources; TYPES],
    /// Unique per generation.
    id: u64,
    /// For a generation derived from another ([`Generated::with_hosts`]): that one's id, and the
    /// names per type that differ from it (added, removed or changed).
    base: Option<(u64, [BTreeSet<String>; TYPES])>,
}

impl Default for Generated {
    fn default() -> Self {
        Generated {
            types: Default::default(),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            base: None,
        }
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Generated {
    pub(crate) fn new(resources: &XdsResources) -> Self {
        let mut generated = Generated::default();
        for ty in TypeUrl::ALL {
            generated.types[index(ty)] = resources
                .encode(ty)
                .into_iter()
                .map(|(name, resource)| {
                    let version = hex(fnv1a(&[&resource.value]));
                    let encoded = Encoded {
                        name: name.as_str().into(),
                        version,
                        resource,
                    };
                    (name, Arc::new(encoded))
                })
                .collect();
        }
        generated
    }

    /// This generation with the clusters and ClusterLoadAssignments of `hosts` (every
    /// `outbound|PORT|SUBSET|HOST`) replaced by those of `partial`; everything else shared.
    pub(crate) fn with_hosts(&self, partial: &XdsResources, hosts: &BTreeSet<String>) -> Self {
        let mut types = self.types.clone();
        let mut changed: [BTreeSet<String>; TYPES] = Default::default();
        let fresh = Generated::new(partial);
        for ty in [TypeUrl::Cluster, TypeUrl::Endpoint] {
            let map = &mut types[index(ty)];
            let changed = &mut changed[index(ty)];
            map.retain(|name, _| {
                let keep = !host_of(name).is_some_and(|h| hosts.contains(h));
                if !keep {
                    changed.insert(name.clone());
                }
                keep
            });
            for (name, encoded) in fresh.get(ty) {
                // Unchanged bytes keep their Arc (and version).
                match self.get(ty).get(name) {
                    Some(old) if old.version == encoded.version => {
                        changed.remove(name);
                        map.insert(name.clone(), old.clone());
                    }
                    _ => {
                        changed.insert(name.clone());
                        map.insert(name.clone(), encoded.clone());
                    }
                }
            }
        }
        Generated {
            types,
            base: Some((self.id, changed)),
            ..Generated::default()
        }
    }

    /// The names of `ty` that differ from generation `base`, if this generation was derived
    /// from it.
    pub(crate) fn changed_since(&self, base: u64, ty: TypeUrl) -> Option<&BTreeSet<String>> {
        match &self.base {
            Some((id, changed)) if *id == base => Some(&changed[index(ty)]),
            _ => None,
        }
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    pub(crate) fn get(&self, ty: TypeUrl) -> &Resources {
        &self.types[index(ty)]
    }
}

/// The host of an outbound cluster name `outbound|PORT|SUBSET|HOST`.
fn host_of(name: &str) -> Option<&str> {
    let rest = name.strip_prefix("outbound|")?;
    rest.splitn(3, '|').nth(2)
}

/// How many resource types there are.
const TYPES: usize = TypeUrl::ALL.len();

fn index(ty: TypeUrl) -> usize {
    match ty {
        TypeUrl::Cluster => 0,
        TypeUrl::Endpoint => 1,
        TypeUrl::Listener => 2,
        TypeUrl::Route => 3,
        TypeUrl::Secret => 4,
    }
}

/// The version of a set of resources: a hash of their names and versions.
pub(crate) fn set_version<'a>(
    entries: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> String {
    let mut h = Fnv::new();
    for (name, version) in entries {
        h.write(name.as_bytes());
        h.write(&[0]);
        h.write(version.as_bytes());
        h.write(&[0]);
    }
    hex(h.0)
}

/// The hash of one (name, version) entry of a set; a set's version can be the wrapping sum of
/// its entries' hashes, kept as entries come and go instead of rehashing the whole set.
pub(crate) fn entry_hash(name: &str, version: &str) -> u64 {
    let mut h = Fnv::new();
    h.write(name.as_bytes());
    h.write(&[0]);
    h.write(version.as_bytes());
    h.0
}

fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h = Fnv::new();
    for p in parts {
        h.write(p);
    }
    h.0
}

fn hex(h: u64) -> String {
    format!("{h:016x}")
}

/// FNV-1a, 64 bits: stable across builds and restarts (a reconnecting Delta client's versions stay
/// comparable), and fast enough for config-sized inputs.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;

    #[test]
    fn versions_follow_content() {
        let mut res = XdsResources::default();
        for name in ["a", "b"] {
            res.clusters.insert(
                name.into(),
                Cluster {
                    name: name.into(),
                    ..Default::default()
                },
            );
        }
        let one = Generated::new(&res);
        let two = Generated::new(&res);
        let a1 = &one.get(TypeUrl::Cluster)["a"];
        assert_eq!(a1.version, two.get(TypeUrl::Cluster)["a"].version);
        assert_ne!(a1.version, one.get(TypeUrl::Cluster)["b"].version);
        assert_eq!(a1.version.len(), 16);
        assert!(one.get(TypeUrl::Listener).is_empty());

        let versions = |g: &Generated| {
            set_version(g.get(TypeUrl::Cluster).iter().map(|(n, e)| (n, &e.version)))
        };
        assert_eq!(versions(&one), versions(&two));
        res.clusters.get_mut("b").unwrap().alt_stat_name = "changed".into();
        assert_ne!(versions(&one), versions(&Generated::new(&res)));
    }

    #[test]
    fn with_hosts_replaces_only_those_hosts() {
        let cluster = |name: &str, stat: &str| Cluster {
            name: name.into(),
            alt_stat_name: stat.into(),
            ..Default::default()
        };
        let mut res = XdsResources::default();
        for name in [
            "outbound|80||a.ns.svc",
            "outbound|80|v1|a.ns.svc",
            "outbound|80||b.ns.svc",
            "inbound|80||",
        ] {
            res.clusters.insert(name.into(), cluster(name, ""));
        }
        let before = Generated::new(&res);
        let mut partial = XdsResources::default();
        partial.clusters.insert(
            "outbound|80||a.ns.svc".into(),
            cluster("outbound|80||a.ns.svc", "new"),
        );
        let hosts: BTreeSet<String> = ["a.ns.svc".to_string()].into();
        let after = before.with_hosts(&partial, &hosts);
        let changed: Vec<&String> = after
            .changed_since(before.id(), TypeUrl::Cluster)
            .unwrap()
            .iter()
            .collect();
        assert_eq!(
            changed,
            ["outbound|80|v1|a.ns.svc", "outbound|80||a.ns.svc"]
        );
        assert!(after.changed_since(after.id(), TypeUrl::Cluster).is_none());
        let names: Vec<&String> = after.get(TypeUrl::Cluster).keys().collect();
        // The v1 subset of a is gone, b and the inbound cluster are untouched (same Arc).
        assert_eq!(
            names,
            [
                "inbound|80||",
                "outbound|80||a.ns.svc",
                "outbound|80||b.ns.svc"
            ]
        );
        let b = "outbound|80||b.ns.svc";
        assert!(Arc::ptr_eq(
            &before.get(TypeUrl::Cluster)[b],
            &after.get(TypeUrl::Cluster)[b]
        ));
        let a = "outbound|80||a.ns.svc";
        assert_ne!(
            before.get(TypeUrl::Cluster)[a].version,
            after.get(TypeUrl::Cluster)[a].version
        );
    }
}
