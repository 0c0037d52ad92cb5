//! The headers a call forwards from the request that caused it, so the mesh can tie the calls of
//! one page load into one trace and route on the user (Istio's "trace context propagation").

use hyper::HeaderMap;
use hyper::header::HeaderName;

/// What every Bookinfo service copies from its incoming request onto the calls it makes.
pub const PROPAGATED: &[&str] = &[
    // Envoy's request id: access logs and consistent sampling.
    "x-request-id",
    // W3C trace context.
    "traceparent",
    "tracestate",
    // Zipkin B3, multi- and single-header.
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "b3",
    // Lightstep, Datadog, Cloud Trace, gRPC binary context, SkyWalking.
    "x-ot-span-context",
    "x-datadog-trace-id",
    "x-datadog-parent-id",
    "x-datadog-sampling-priority",
    "x-cloud-trace-context",
    "grpc-trace-bin",
    "sw8",
    // The application's own: who is asking (Istio's routing samples match on `end-user`).
    "end-user",
    "user-agent",
    "cookie",
    "authorization",
    "jwt",
];

/// The propagated headers of `incoming`, every value of each.
pub fn propagate(incoming: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in PROPAGATED {
        let name = HeaderName::from_static(name);
        for value in incoming.get_all(&name) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    #[test]
    fn copies_only_the_propagated_headers_with_all_their_values() {
        let mut incoming = HeaderMap::new();
        incoming.insert("x-request-id", HeaderValue::from_static("r1"));
        incoming.insert("B3", HeaderValue::from_static("a-b-1"));
        incoming.append("cookie", HeaderValue::from_static("a=1"));
        incoming.append("cookie", HeaderValue::from_static("user=jason"));
        incoming.insert("accept", HeaderValue::from_static("text/html"));
        incoming.insert("content-length", HeaderValue::from_static("0"));
        let out = propagate(&incoming);
        assert_eq!(out.len(), 4, "{out:?}");
        assert_eq!(out["x-request-id"], "r1");
        assert_eq!(out["b3"], "a-b-1");
        let cookies: Vec<_> = out.get_all("cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "user=jason"]);
        assert!(!out.contains_key("accept"));
    }
}
