//! The connection manager's `envoy.filters.http.local_ratelimit` on the request path: once the
//! route is chosen, the route's own config (its bucket) if it has one, else the filter's, takes
//! a token; without one the request is answered as Envoy 1.40 answers it (the config's status,
//! 429 by default, body `local_rate_limited`, `content-type: text/plain`, the config's response
//! headers, and no `x-envoy-ratelimited`, which Envoy's local rate limit no longer sends; flag
//! `RL` and details `local_rate_limited` in the access log).

use hyper::Response;

use super::{Body, FLAGS_HEADER, RouteName, full, local_details};
use crate::Shared;
use crate::config::Route;
use crate::config::listener::HttpListener;

const BODY: &str = "local_rate_limited";

/// The answer to a request the rate limit refuses; `None` lets it through.
pub(super) fn limited(
    shared: &Shared,
    hcm: &HttpListener,
    route: &Route,
) -> Option<Response<Body>> {
    let filter = hcm.local_ratelimit.as_ref()?;
    let config = route.local_ratelimit.as_ref().unwrap_or(filter);
    if config.allows() {
        return None;
    }
    shared.stats.flag("RL");
    tracing::debug!(route = %route.name, "request refused by local_ratelimit");
    let mut resp = local_details(config.status, "RL", "local_rate_limited", BODY);
    *resp.body_mut() = full(BODY);
    let headers = resp.headers_mut();
    headers.remove(FLAGS_HEADER);
    for (name, value, append) in &config.response_headers {
        if *append {
            headers.append(name, value.clone());
        } else {
            headers.insert(name, value.clone());
        }
    }
    resp.extensions_mut().insert(RouteName(route.name.clone()));
    Some(resp)
}
