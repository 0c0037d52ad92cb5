//! Virtual host and route selection, and weighted picks.

use hyper::HeaderMap;
use hyper::header::HeaderValue;

use super::*;
use crate::config::route::Pattern;
use crate::config::{Action, HeaderMutation, Route};

fn vh(name: &str, domains: &[&str], routes: Vec<Route>) -> VirtualHost {
    VirtualHost {
        name: name.into(),
        domains: domains.iter().map(|d| d.to_string()).collect(),
        routes,
        include_attempt_count: false,
        require_tls: Default::default(),
    }
}

fn route(name: &str, path: PathMatch, headers: Vec<HeaderMatch>) -> Route {
    Route {
        name: name.into(),
        matcher: RouteMatch {
            path,
            case_sensitive: true,
            headers,
            query: Vec::new(),
        },
        action: Action::Direct {
            status: 200,
            body: name.into(),
        },
        fault: None,
        cors: None,
        local_ratelimit: None,
        request_headers: HeaderMutation::default(),
        response_headers: HeaderMutation::default(),
    }
}

fn header(name: &str, value: Option<StringMatch>) -> HeaderMatch {
    HeaderMatch {
        name: name.into(),
        value,
        ignore_case: false,
        invert: false,
        present: true,
        treat_missing_as_empty: false,
    }
}

fn config() -> RouteConfig {
    RouteConfig {
        name: "15080".into(),
        virtual_hosts: vec![
            vh("any", &["*"], vec![]),
            vh("wild", &["*.example.com"], vec![]),
            vh("wilder", &["*.b.example.com"], vec![]),
            vh("prefix", &["api.*"], vec![]),
            vh("reviews", &["reviews:9080", "reviews.default:9080"], vec![]),
        ],
    }
}

#[test]
fn virtual_hosts_by_exact_then_longest_suffix_then_prefix_then_any() {
    let rc = config();
    let pick = |authority: &str| virtual_host(&rc, authority).map(|v| v.name.as_str());
    assert_eq!(pick("reviews:9080"), Some("reviews"));
    assert_eq!(pick("Reviews.Default:9080"), Some("reviews"));
    assert_eq!(pick("a.example.com"), Some("wild"));
    assert_eq!(pick("a.b.example.com"), Some("wilder"));
    assert_eq!(pick("api.internal"), Some("prefix"));
    assert_eq!(pick("reviews:9081"), Some("any"));
    assert_eq!(
        pick("example.com"),
        Some("any"),
        "*.x needs something before the dot"
    );
    let none = RouteConfig {
        name: "x".into(),
        virtual_hosts: vec![vh("reviews", &["reviews:9080"], vec![])],
    };
    assert!(virtual_host(&none, "ratings:9080").is_none());
}

fn view<'a>(path: &'a str, headers: &'a HeaderMap) -> RequestView<'a> {
    RequestView {
        path_and_query: path,
        headers,
    }
}

#[test]
fn the_first_matching_route_wins() {
    let jason = header("end-user", Some(StringMatch::Exact("jason".into())));
    let host = vh(
        "reviews",
        &["reviews:9080"],
        vec![
            route("exact", PathMatch::Exact("/health".into()), vec![]),
            route(
                "regex",
                PathMatch::Regex(Pattern(regex::Regex::new("^(?:/reviews/[0-9]+)$").unwrap())),
                vec![jason],
            ),
            route("api", PathMatch::SeparatedPrefix("/api".into()), vec![]),
            route("rest", PathMatch::Prefix("/".into()), vec![]),
        ],
    );
    let mut headers = HeaderMap::new();
    let pick = |path: &str, headers: &HeaderMap| route_name(&host, path, headers);
    assert_eq!(
        pick("/health?verbose=1", &headers),
        "exact",
        "the query is not part of the path"
    );
    assert_eq!(pick("/healthz", &headers), "rest");
    assert_eq!(pick("/reviews/0", &headers), "rest", "no end-user header");
    headers.insert("end-user", HeaderValue::from_static("jason"));
    assert_eq!(pick("/reviews/0", &headers), "regex");
    assert_eq!(pick("/reviews/x", &headers), "rest");
    assert_eq!(pick("/api/v1", &headers), "api");
    assert_eq!(pick("/api", &headers), "api");
    assert_eq!(
        pick("/apix", &headers),
        "rest",
        "a separated prefix ends at /"
    );
}

fn route_name(host: &VirtualHost, path: &str, headers: &HeaderMap) -> String {
    super::route(host, view(path, headers))
        .map(|r| r.name.clone())
        .unwrap_or_default()
}

#[test]
fn header_matchers_exact_prefix_regex_presence_and_inversion() {
    let mut headers = HeaderMap::new();
    headers.insert("end-user", HeaderValue::from_static("Jason"));
    let m = |value: Option<StringMatch>| header("end-user", value);
    assert!(!headers_match(
        &[m(Some(StringMatch::Exact("jason".into())))],
        &headers
    ));
    let mut folded = m(Some(StringMatch::Exact("jason".into())));
    folded.ignore_case = true;
    assert!(headers_match(&[folded], &headers));
    assert!(headers_match(
        &[m(Some(StringMatch::Prefix("Ja".into())))],
        &headers
    ));
    let re = Pattern(regex::Regex::new("^(?:J.*n)$").unwrap());
    assert!(headers_match(&[m(Some(StringMatch::Regex(re)))], &headers));
    assert!(headers_match(&[m(None)], &headers), "present");
    let mut absent = header("x-canary", None);
    absent.present = false;
    assert!(headers_match(&[absent], &headers));
    let mut inverted = m(Some(StringMatch::Exact("Jason".into())));
    inverted.invert = true;
    assert!(!headers_match(&[inverted.clone()], &headers));
    // A missing header never matches a value matcher, inverted or not.
    assert!(!headers_match(&[inverted], &HeaderMap::new()));
}

#[test]
fn query_parameters_match_by_name_and_value() {
    let mut r = route("q", PathMatch::Prefix("/".into()), vec![]);
    r.matcher.query.push(QueryMatch {
        name: "debug".into(),
        value: Some(StringMatch::Exact("1".into())),
        ignore_case: false,
    });
    let h = HeaderMap::new();
    assert!(matches(&r.matcher, view("/x?a=2&debug=1", &h)));
    assert!(!matches(&r.matcher, view("/x?debug=0", &h)));
    assert!(!matches(&r.matcher, view("/x", &h)));
}

#[test]
fn weighted_picks_follow_the_weights() {
    let clusters = vec![
        WeightedCluster {
            name: "v1".into(),
            weight: 80,
            headers: None,
        },
        WeightedCluster {
            name: "v2".into(),
            weight: 0,
            headers: None,
        },
        WeightedCluster {
            name: "v3".into(),
            weight: 20,
            headers: None,
        },
    ];
    assert_eq!(pick_weighted(&clusters, 0), Some("v1"));
    assert_eq!(pick_weighted(&clusters, 79), Some("v1"));
    assert_eq!(
        pick_weighted(&clusters, 80),
        Some("v3"),
        "weight 0 is never picked"
    );
    assert_eq!(pick_weighted(&clusters, 99), Some("v3"));
    assert_eq!(pick_weighted(&clusters, 100), None);
    let n = 20_000;
    let v1 = (0..n)
        .filter(|_| pick_weighted_random(&clusters) == Some("v1"))
        .count();
    let share = v1 as f64 / n as f64;
    assert!((share - 0.8).abs() < 0.02, "v1 got {share}");
}

#[test]
fn rolls_apply_their_share() {
    assert!(roll(1_000_000));
    assert!(!(0..1000).any(|_| roll(0)));
    let hits = (0..20_000).filter(|_| roll(250_000)).count();
    assert!((4_000..6_000).contains(&hits), "{hits} of 20000 at 25%");
}
