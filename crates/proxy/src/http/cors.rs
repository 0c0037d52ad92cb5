//! Envoy's CORS filter (`envoy.filters.http.cors`) with a route's policy: a preflight request
//! is answered by the proxy, and the response to any other CORS request gets the
//! `access-control-*` headers, as `source/extensions/filters/http/cors/cors_filter.cc` does for
//! one route-level policy (Istio sets no virtual-host policy).

use hyper::HeaderMap;
use hyper::header::HeaderValue;

use crate::config::cors::Cors;
use crate::routing::string_matches;

/// Whether `origin` is allowed: a matcher matches it, or matches `*` (Envoy's rule: a policy
/// whose matchers accept the text `*` allows every origin).
pub(crate) fn allows(policy: &Cors, origin: &str) -> bool {
    policy.allow_origins.iter().any(|m| {
        string_matches(&m.value, "*", m.ignore_case)
            || string_matches(&m.value, origin, m.ignore_case)
    })
}

/// What the CORS filter makes of a request, decided on its headers.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum CorsVerdict {
    /// Not a CORS request (no `Origin`), or the policy is off for this request.
    None,
    /// A preflight answered by the proxy: 200 with these headers, no body.
    Preflight(HeaderMap),
    /// A CORS request that goes on; its response gets these headers when the origin was
    /// allowed (set, replacing the upstream's).
    Request(Option<HeaderMap>),
}

/// Envoy's CORS filter on a request's headers: `Origin` missing or empty, or the policy off for
/// this request: nothing. An `OPTIONS` request with `Access-Control-Request-Method` is a
/// preflight: answered here, unless its origin is not allowed and such preflights go upstream.
/// Any other request with an `Origin` goes on, and its response gets `access-control-allow-origin`
/// (the request's origin), `-allow-credentials` and `-expose-headers` when the origin is allowed.
pub(crate) fn verdict(
    policy: &Cors,
    method: &hyper::Method,
    headers: &HeaderMap,
    enabled: bool,
) -> CorsVerdict {
    let origin = match headers.get(hyper::header::ORIGIN) {
        Some(o) if !o.is_empty() => o,
        _ => return CorsVerdict::None,
    };
    if !enabled {
        return CorsVerdict::None;
    }
    let allowed = origin.to_str().is_ok_and(|o| allows(policy, o));
    let request_method = headers
        .get(hyper::header::ACCESS_CONTROL_REQUEST_METHOD)
        .filter(|v| !v.is_empty());
    let preflight = method == hyper::Method::OPTIONS && request_method.is_some();
    if !preflight {
        return CorsVerdict::Request(allowed.then(|| {
            let mut out = HeaderMap::new();
            out.insert(hyper::header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            if policy.allow_credentials {
                out.insert(
                    hyper::header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    HeaderValue::from_static("true"),
                );
            }
            set(
                &mut out,
                "access-control-expose-headers",
                &policy.expose_headers,
            );
            out
        }));
    }
    if !allowed && policy.forward_not_matching_preflights {
        return CorsVerdict::Request(None);
    }
    let mut out = HeaderMap::new();
    if allowed {
        out.insert(hyper::header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    }
    if policy.allow_credentials {
        out.insert(
            hyper::header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    // `*` echoes what the preflight asks for.
    let echo = |configured: &str, asked: Option<&HeaderValue>| match configured {
        "*" => asked.cloned(),
        "" => None,
        other => HeaderValue::from_str(other).ok(),
    };
    if let Some(v) = echo(&policy.allow_methods, request_method) {
        out.insert(hyper::header::ACCESS_CONTROL_ALLOW_METHODS, v);
    }
    if let Some(v) = echo(
        &policy.allow_headers,
        headers.get(hyper::header::ACCESS_CONTROL_REQUEST_HEADERS),
    ) {
        out.insert(hyper::header::ACCESS_CONTROL_ALLOW_HEADERS, v);
    }
    set(&mut out, "access-control-max-age", &policy.max_age);
    let private_asked = headers
        .get("access-control-request-private-network")
        .is_some_and(|v| v == "true");
    if policy.allow_private_network_access && private_asked {
        out.insert(
            "access-control-allow-private-network",
            HeaderValue::from_static("true"),
        );
    }
    CorsVerdict::Preflight(out)
}

fn set(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let (false, Ok(v)) = (value.is_empty(), HeaderValue::from_str(value)) {
        headers.insert(name, v);
    }
}

#[cfg(test)]
mod tests {
    use hyper::Method;

    use super::*;
    use crate::config::cors::OriginMatch;
    use crate::config::route::StringMatch;

    fn policy() -> Cors {
        Cors {
            allow_origins: vec![OriginMatch {
                value: StringMatch::Exact("https://example.com".into()),
                ignore_case: false,
            }],
            allow_methods: "GET,POST".into(),
            allow_headers: "*".into(),
            expose_headers: "x-exposed".into(),
            max_age: "60".into(),
            allow_credentials: true,
            allow_private_network_access: false,
            forward_not_matching_preflights: true,
            enabled_per_million: 1_000_000,
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    hyper::header::HeaderName::from_static(k),
                    HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn a_preflight_from_an_allowed_origin_is_answered_with_the_policy() {
        let req = headers(&[
            ("origin", "https://example.com"),
            ("access-control-request-method", "PUT"),
            ("access-control-request-headers", "x-a,x-b"),
        ]);
        let CorsVerdict::Preflight(h) = verdict(&policy(), &Method::OPTIONS, &req, true) else {
            panic!("not answered as a preflight")
        };
        assert_eq!(h["access-control-allow-origin"], "https://example.com");
        assert_eq!(h["access-control-allow-methods"], "GET,POST");
        // `*` echoes what the preflight asked for.
        assert_eq!(h["access-control-allow-headers"], "x-a,x-b");
        assert_eq!(h["access-control-max-age"], "60");
        assert_eq!(h["access-control-allow-credentials"], "true");
        assert!(!h.contains_key("access-control-expose-headers"));
    }

    #[test]
    fn a_preflight_from_another_origin_goes_upstream_or_is_answered_bare() {
        let req = headers(&[
            ("origin", "https://evil.example"),
            ("access-control-request-method", "GET"),
        ]);
        assert_eq!(
            verdict(&policy(), &Method::OPTIONS, &req, true),
            CorsVerdict::Request(None)
        );
        let mut answer = policy();
        answer.forward_not_matching_preflights = false;
        let CorsVerdict::Preflight(h) = verdict(&answer, &Method::OPTIONS, &req, true) else {
            panic!()
        };
        assert!(!h.contains_key("access-control-allow-origin"));
        // Envoy still sends the policy's other headers.
        assert_eq!(h["access-control-allow-methods"], "GET,POST");
    }

    #[test]
    fn a_cors_request_gets_the_origin_credentials_and_exposed_headers() {
        let req = headers(&[("origin", "https://example.com")]);
        let CorsVerdict::Request(Some(h)) = verdict(&policy(), &Method::GET, &req, true) else {
            panic!()
        };
        assert_eq!(h["access-control-allow-origin"], "https://example.com");
        assert_eq!(h["access-control-allow-credentials"], "true");
        assert_eq!(h["access-control-expose-headers"], "x-exposed");
        assert!(!h.contains_key("access-control-allow-methods"));
        // An OPTIONS without Access-Control-Request-Method is not a preflight.
        assert!(matches!(
            verdict(&policy(), &Method::OPTIONS, &req, true),
            CorsVerdict::Request(Some(_))
        ));
        let other = headers(&[("origin", "https://evil.example")]);
        assert_eq!(
            verdict(&policy(), &Method::GET, &other, true),
            CorsVerdict::Request(None)
        );
        assert_eq!(
            verdict(&policy(), &Method::GET, &headers(&[]), true),
            CorsVerdict::None
        );
        assert_eq!(
            verdict(&policy(), &Method::GET, &req, false),
            CorsVerdict::None,
            "filter_enabled rolled off"
        );
    }

    #[test]
    fn a_matcher_that_accepts_a_star_allows_every_origin() {
        let mut p = policy();
        p.allow_origins[0].value = StringMatch::Prefix("*".into());
        assert!(allows(&p, "https://anything.example"));
    }
}
