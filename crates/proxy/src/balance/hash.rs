//! Consistent hashing: the request's hash from the route's `hash_policy` (Envoy's rules: each
//! policy that yields a value is folded in as `rotl(hash, 1) ^ value`, a `terminal` one that
//! yields ends the list), and the two balancers that use it, RING_HASH (Karger's ring) and
//! MAGLEV (Google's lookup table). A request that yields no hash gets a random one.
//!
//! The hash function is FNV-1a with a 64-bit finalizer (Envoy uses xxHash64: the same key maps
//! to the same endpoint within each proxy, not necessarily to the one Envoy picks).

use std::net::IpAddr;

use hyper::HeaderMap;

use crate::config::{HashKey, HashPolicy};

pub(crate) fn hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    mix(h)
}

/// SplitMix64's finalizer: spreads FNV's low-entropy high bits.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The request's hash under `policies`, if any policy yields a value.
pub(crate) fn request_hash(
    policies: &[HashPolicy],
    headers: &HeaderMap,
    source: IpAddr,
    path_and_query: &str,
) -> Option<u64> {
    let mut out: Option<u64> = None;
    for p in policies {
        let value = match &p.key {
            HashKey::Header(name) => {
                let values: Vec<&[u8]> =
                    headers.get_all(name).iter().map(|v| v.as_bytes()).collect();
                (!values.is_empty()).then(|| hash(&values.join(&b","[..])))
            }
            HashKey::Cookie(name) => cookie(headers, name).map(|v| hash(v.as_bytes())),
            HashKey::SourceIp => Some(hash(source.to_string().as_bytes())),
            HashKey::QueryParameter(name) => {
                query_parameter(path_and_query, name).map(|v| hash(v.as_bytes()))
            }
        };
        if let Some(v) = value {
            out = Some(out.map_or(v, |h| h.rotate_left(1) ^ v));
            if p.terminal {
                break;
            }
        }
    }
    out
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(hyper::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

fn query_parameter<'a>(path_and_query: &'a str, name: &str) -> Option<&'a str> {
    let (_, query) = path_and_query.split_once('?')?;
    query
        .split('&')
        .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A consistent-hash table over a list of endpoints (by index), built once per endpoint set.
#[derive(Debug)]
pub(crate) enum Table {
    /// Points on the ring, sorted by hash.
    Ring(Vec<(u64, u32)>),
    Maglev(Vec<u32>),
}

impl Table {
    /// A ring with at least `minimum` points, the same number for each endpoint (named by its
    /// `host:port`).
    pub(crate) fn ring<S: AsRef<str>>(endpoints: &[S], minimum: u64) -> Table {
        let n = endpoints.len().max(1) as u64;
        let per = minimum.div_ceil(n).max(1);
        let mut points = Vec::with_capacity((per * n) as usize);
        let mut key = String::new();
        for (i, e) in endpoints.iter().enumerate() {
            for j in 0..per {
                use std::fmt::Write;
                key.clear();
                let _ = write!(key, "{}_{j}", e.as_ref());
                points.push((hash(key.as_bytes()), i as u32));
            }
        }
        points.sort_unstable();
        Table::Ring(points)
    }

    /// A Maglev table of `size` (a prime) entries.
    pub(crate) fn maglev<S: AsRef<str>>(endpoints: &[S], size: u64) -> Table {
        let m = size as usize;
        let n = endpoints.len();
        if n == 0 {
            return Table::Maglev(Vec::new());
        }
        let perms: Vec<(u64, u64)> = endpoints
            .iter()
            .map(|e| {
                let h = hash(e.as_ref().as_bytes());
                let offset = h % size;
                let skip = mix(h ^ 0x9e37_79b9_7f4a_7c15) % (size - 1).max(1) + 1;
                (offset, skip)
            })
            .collect();
        let mut table = vec![u32::MAX; m];
        let mut next = vec![0u64; n];
        let mut filled = 0;
        'fill: loop {
            for (i, &(offset, skip)) in perms.iter().enumerate() {
                let mut c = ((offset + next[i] * skip) % size) as usize;
                while table[c] != u32::MAX {
                    next[i] += 1;
                    c = ((offset + next[i] * skip) % size) as usize;
                }
                table[c] = i as u32;
                next[i] += 1;
                filled += 1;
                if filled == m {
                    break 'fill;
                }
            }
        }
        Table::Maglev(table)
    }

    /// The endpoint (index) for `hash`.
    pub(crate) fn lookup(&self, hash: u64) -> Option<usize> {
        match self {
            Table::Ring(points) => {
                if points.is_empty() {
                    return None;
                }
                let i = points.partition_point(|(h, _)| *h < hash);
                Some(points[if i == points.len() { 0 } else { i }].1 as usize)
            }
            Table::Maglev(table) => {
                if table.is_empty() {
                    return None;
                }
                Some(table[(hash % table.len() as u64) as usize] as usize)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn eps(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:9080")).collect()
    }

    fn spread(table: &Table, n: usize) -> Vec<usize> {
        let mut counts = vec![0; n];
        for k in 0..10_000 {
            counts[table.lookup(hash(format!("user-{k}").as_bytes())).unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn ring_and_maglev_spread_keys_and_keep_them() {
        for table in [Table::ring(&eps(3), 1024), Table::maglev(&eps(3), 65537)] {
            let counts = spread(&table, 3);
            assert!(
                counts.iter().all(|c| (2300..4400).contains(c)),
                "{counts:?}"
            );
            let k = hash(b"jason");
            assert_eq!(table.lookup(k), table.lookup(k));
        }
    }

    #[test]
    fn removing_an_endpoint_moves_only_its_keys() {
        let (all, fewer) = (eps(4), eps(3));
        for (a, b) in [
            (Table::ring(&all, 1024), Table::ring(&fewer, 1024)),
            (Table::maglev(&all, 65537), Table::maglev(&fewer, 65537)),
        ] {
            let moved = (0..2000)
                .map(|k| hash(format!("k{k}").as_bytes()))
                .filter(|h| {
                    let before = a.lookup(*h).unwrap();
                    before != 3 && before != b.lookup(*h).unwrap()
                })
                .count();
            // Both move a few keys of the other endpoints too (the ring gets more points per
            // endpoint, Maglev refills its table), but most stay.
            assert!(moved < 300, "{moved} of about 1500 keys moved");
        }
    }

    #[test]
    fn the_hash_policy_reads_header_cookie_source_and_query() {
        let pol = |key: HashKey, terminal: bool| HashPolicy { key, terminal };
        let mut h = HeaderMap::new();
        h.insert("x-user", HeaderValue::from_static("jason"));
        h.insert("cookie", HeaderValue::from_static("a=1; session=abc"));
        let ip: IpAddr = "10.1.1.1".parse().unwrap();
        let one = |p: Vec<HashPolicy>, path: &str| request_hash(&p, &h, ip, path);
        assert_eq!(
            one(vec![pol(HashKey::Header("x-user".into()), false)], "/"),
            Some(hash(b"jason"))
        );
        assert_eq!(
            one(vec![pol(HashKey::Cookie("session".into()), false)], "/"),
            Some(hash(b"abc"))
        );
        assert_eq!(
            one(vec![pol(HashKey::SourceIp, false)], "/"),
            Some(hash(b"10.1.1.1"))
        );
        assert_eq!(
            one(
                vec![pol(HashKey::QueryParameter("u".into()), false)],
                "/p?x=1&u=7"
            ),
            Some(hash(b"7"))
        );
        assert_eq!(
            one(vec![pol(HashKey::Header("none".into()), false)], "/"),
            None
        );
        // Folded in order; a terminal policy that yields ends the list.
        let both = one(
            vec![
                pol(HashKey::Header("x-user".into()), false),
                pol(HashKey::SourceIp, false),
            ],
            "/",
        );
        assert_eq!(
            both,
            Some(hash(b"jason").rotate_left(1) ^ hash(b"10.1.1.1"))
        );
        let terminal = one(
            vec![
                pol(HashKey::Header("x-user".into()), true),
                pol(HashKey::SourceIp, false),
            ],
            "/",
        );
        assert_eq!(terminal, Some(hash(b"jason")));
    }
}
