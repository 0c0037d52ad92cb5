//! Route selection, as Envoy does it: the virtual host by authority (exact domain, then the
//! longest `*.suffix`, then the longest `prefix.*`, then `*`), then the first route whose match
//! holds, then, for weighted clusters, a random pick by weight. Pure functions over the config.

use hyper::HeaderMap;

use crate::config::{
    HeaderMatch, PathMatch, QueryMatch, Route, RouteConfig, RouteMatch, StringMatch, VirtualHost,
    WeightedCluster,
};

/// What routing looks at in a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// The path with its query, as sent (`/reviews/0?x=1`).
    pub path_and_query: &'a str,
    pub headers: &'a HeaderMap,
}

impl<'a> RequestView<'a> {
    fn path(&self) -> &'a str {
        self.path_and_query
            .split_once('?')
            .map_or(self.path_and_query, |(p, _)| p)
    }

    fn query(&self) -> Option<&'a str> {
        self.path_and_query.split_once('?').map(|(_, q)| q)
    }
}

/// The virtual host for an authority (`reviews:9080`).
pub fn virtual_host<'a>(rc: &'a RouteConfig, authority: &str) -> Option<&'a VirtualHost> {
    let host = authority.to_ascii_lowercase();
    let find = |pred: &dyn Fn(&str) -> Option<usize>| {
        rc.virtual_hosts
            .iter()
            .flat_map(|vh| vh.domains.iter().map(move |d| (vh, d)))
            .filter_map(|(vh, d)| pred(d).map(|len| (len, vh)))
            // The longest wildcard wins; among equals, the first.
            .fold(
                None,
                |best: Option<(usize, &VirtualHost)>, (len, vh)| match best {
                    Some((l, _)) if l >= len => best,
                    _ => Some((len, vh)),
                },
            )
            .map(|(_, vh)| vh)
    };
    find(&|d| (d == host).then_some(d.len()))
        .or_else(|| {
            find(&|d| {
                let suffix = d.strip_prefix('*')?;
                (!suffix.is_empty() && host.len() > suffix.len() && host.ends_with(suffix))
                    .then_some(suffix.len())
            })
        })
        .or_else(|| {
            find(&|d| {
                let prefix = d.strip_suffix('*')?;
                (!prefix.is_empty() && host.len() > prefix.len() && host.starts_with(prefix))
                    .then_some(prefix.len())
            })
        })
        .or_else(|| find(&|d| (d == "*").then_some(0)))
}

/// The first route of `vh` that matches.
pub fn route<'a>(vh: &'a VirtualHost, req: RequestView<'_>) -> Option<&'a Route> {
    vh.routes.iter().find(|r| matches(&r.matcher, req))
}

/// Whether a route match holds for a request.
pub fn matches(m: &RouteMatch, req: RequestView<'_>) -> bool {
    let eq_prefix = |have: &str, want: &str| {
        if m.case_sensitive {
            have.starts_with(want)
        } else {
            have.len() >= want.len()
                && have.as_bytes()[..want.len()].eq_ignore_ascii_case(want.as_bytes())
        }
    };
    let path_ok = match &m.path {
        PathMatch::Prefix(p) => eq_prefix(req.path_and_query, p),
        PathMatch::Exact(p) => {
            if m.case_sensitive {
                req.path() == p
            } else {
                req.path().eq_ignore_ascii_case(p)
            }
        }
        PathMatch::Regex(re) => re.0.is_match(req.path()),
        PathMatch::SeparatedPrefix(p) => {
            let path = req.path();
            eq_prefix(path, p) && matches!(path.as_bytes().get(p.len()), None | Some(b'/'))
        }
    };
    path_ok
        && headers_match(&m.headers, req.headers)
        && m.query.iter().all(|q| query_matches(q, req.query()))
}

/// Whether every header matcher holds (Envoy joins repeated headers with `,`).
pub fn headers_match(matchers: &[HeaderMatch], headers: &HeaderMap) -> bool {
    matchers.iter().all(|m| {
        let values: Vec<&str> = headers
            .get_all(&m.name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let joined = (!values.is_empty()).then(|| values.join(","));
        let value = joined.as_deref().or(m.treat_missing_as_empty.then_some(""));
        let hit = match (&m.value, value) {
            (None, v) => v.is_some() == m.present,
            (Some(_), None) => false,
            (Some(s), Some(v)) => string_matches(s, v, m.ignore_case),
        };
        // A missing header never matches, inverted or not (except present_match).
        if m.value.is_some() && value.is_none() {
            return false;
        }
        hit != m.invert
    })
}

fn query_matches(q: &QueryMatch, query: Option<&str>) -> bool {
    let value = query.into_iter().flat_map(|q| q.split('&')).find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == q.name).then_some(v)
    });
    match (&q.value, value) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(s), Some(v)) => string_matches(s, v, q.ignore_case),
    }
}

/// A string matcher against a value.
pub fn string_matches(m: &StringMatch, value: &str, ignore_case: bool) -> bool {
    let (v, lower);
    if ignore_case {
        lower = value.to_ascii_lowercase();
        v = lower.as_str();
    } else {
        v = value;
    }
    let fold = |s: &str| {
        if ignore_case {
            s.to_ascii_lowercase()
        } else {
            s.to_string()
        }
    };
    match m {
        StringMatch::Exact(s) => v == fold(s),
        StringMatch::Prefix(s) => v.starts_with(&fold(s)),
        StringMatch::Suffix(s) => v.ends_with(&fold(s)),
        StringMatch::Contains(s) => v.contains(&fold(s)),
        // Regexes see the value as sent.
        StringMatch::Regex(re) => re.0.is_match(value),
    }
}

/// The weighted cluster a number in `0..total weight` falls on.
pub fn pick_weighted(clusters: &[WeightedCluster], n: u64) -> Option<&str> {
    pick_weighted_entry(clusters, n).map(|c| c.name.as_str())
}

/// The weighted cluster entry a number in `0..total weight` falls on.
pub fn pick_weighted_entry(clusters: &[WeightedCluster], mut n: u64) -> Option<&WeightedCluster> {
    for c in clusters {
        if n < u64::from(c.weight) {
            return Some(c);
        }
        n -= u64::from(c.weight);
    }
    None
}

/// A random weighted pick.
pub fn pick_weighted_random(clusters: &[WeightedCluster]) -> Option<&str> {
    pick_weighted_entry_random(clusters).map(|c| c.name.as_str())
}

/// A random weighted pick, the whole entry.
pub fn pick_weighted_entry_random(clusters: &[WeightedCluster]) -> Option<&WeightedCluster> {
    let total: u64 = clusters.iter().map(|c| u64::from(c.weight)).sum();
    if total == 0 {
        return None;
    }
    pick_weighted_entry(clusters, fastrand::u64(0..total))
}

/// Whether a share given in parts per million applies to this request.
pub fn roll(per_million: u32) -> bool {
    per_million >= 1_000_000 || fastrand::u32(0..1_000_000) < per_million
}

#[cfg(test)]
#[path = "routing_tests.rs"]
mod tests;
