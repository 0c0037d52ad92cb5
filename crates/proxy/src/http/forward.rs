//! Forwarding a request to a cluster: the cluster pick (weighted), the upstream request (path
//! rewrites, Host, header mutations, hop-by-hop headers removed), retries with Envoy's
//! conditions and back-off, the per-try and route timeouts; each attempt passes the cluster's
//! circuit breakers and tells outlier detection how it ended. Bodies stream both ways; the
//! request's is kept for retries and mirrors only while it fits the buffer ([`crate::body`]).
//! An allowed HTTP/1.1 upgrade (WebSocket) becomes a byte tunnel after the upstream's 101.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::upgrade::OnUpgrade;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use super::{Body, Downstream, UpstreamInfo, local, local_details};
use crate::Shared;
use crate::balance::outlier::Observed;
use crate::body::{Progress, RequestBody};
use crate::config::{
    Cluster, Config, Forward, Mirror, PathMatch, RetryPolicy, Route, Target, UpstreamProtocol,
    VirtualHost,
};
use crate::metrics::{PEER_METADATA_HEADER, PEER_METADATA_ID_HEADER};
use crate::routing;
use crate::upstream::{self, Balancer, Host, SendError};

/// Envoy's default retry back-off: 25 ms base, at most 10 times that.
const BACKOFF_BASE: Duration = Duration::from_millis(25);

/// How an attempt ended.
enum Outcome {
    Response(Response<Incoming>),
    ConnectFailure(String),
    Reset(String),
    /// An HTTP/2 stream the upstream refused (`REFUSED_STREAM`): not processed.
    Refused(String),
    PerTryTimeout,
}

/// What a request is forwarded with: where it was routed and what the connection knows.
pub(super) struct Routed<'a> {
    pub shared: &'a Arc<Shared>,
    pub config: &'a Config,
    pub vh: &'a VirtualHost,
    pub route: &'a Route,
    pub fwd: &'a Forward,
    /// The request's authority (Host), as routed.
    pub authority: &'a str,
    /// The request's path and query, as routed.
    pub path: &'a str,
    pub down: Downstream,
    /// When the request's head arrived: `max_stream_duration` counts from here.
    pub started: Instant,
}

pub(super) async fn forward(
    routed: Routed<'_>,
    req: Request<Incoming>,
    upgrade: Option<Upgrade>,
) -> Response<Body> {
    let Routed {
        shared,
        config,
        vh,
        route,
        fwd,
        authority,
        path,
        down,
        started,
    } = routed;
    // A weighted cluster entry may carry header mutations of its own.
    let (name, entry_headers) = match &fwd.target {
        Target::Cluster(name) => (Some(name.as_str()), None),
        Target::Weighted(clusters) => match routing::pick_weighted_entry_random(clusters) {
            Some(c) => (Some(c.name.as_str()), c.headers.as_deref()),
            None => (None, None),
        },
    };
    let Some(cluster) = name.and_then(|n| config.clusters.get(n)) else {
        shared.stats.flag("NC");
        return local(
            fwd.cluster_not_found_status,
            "NC",
            &format!("cluster {} not found", name.unwrap_or("?")),
        );
    };
    let Some(lb) = upstream::balancer(cluster) else {
        return unpublished(shared, &cluster.name);
    };
    let (parts, body) = req.into_parts();
    let hash = (!fwd.hash_policy.is_empty()).then(|| {
        crate::balance::hash::request_hash(&fwd.hash_policy, &parts.headers, down.peer.ip(), path)
    });
    // Streamed upstream as it comes, with a copy kept for retries and mirrors while it fits.
    let body = RequestBody::new(body);
    let received = body.received();
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    if let Some(u) = &upgrade {
        headers.insert(
            hyper::header::CONNECTION,
            HeaderValue::from_static("upgrade"),
        );
        headers.insert(hyper::header::UPGRADE, u.protocol.clone());
    }
    let host = fwd.host_rewrite.as_deref().unwrap_or(authority);
    if let Ok(v) = HeaderValue::from_str(host) {
        headers.insert(hyper::header::HOST, v);
    }
    // The weighted cluster's mutations first, then the route's (Envoy's order).
    if let Some(h) = entry_headers {
        h.request.apply(&mut headers);
    }
    route.request_headers.apply(&mut headers);
    // ORIGINAL_DST clusters go where a request header says when the cluster names one (the
    // HTTP proxy listener: `:authority`), else where the connection was going (iptables mode).
    let original = match &cluster.original_dst_header {
        Some(h) if h == ":authority" => authority.to_string(),
        Some(h) => headers
            .get(h.as_str())
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string(),
        None => down.original_dst.map(|a| a.to_string()).unwrap_or_default(),
    };
    let upstream = Upstream {
        shared,
        cluster,
        lb,
        method: parts.method,
        path: rewrite(route, fwd, path),
        headers,
        body,
        authority: &original,
        hash: hash.flatten(),
        attempt_count: vh.include_attempt_count,
    };
    for m in &fwd.mirrors {
        if routing::roll(m.per_million) {
            mirror(shared, config, m, &upstream, fwd.timeout);
        }
    }
    // An upgrade is one attempt: the tunnel cannot be opened twice. A policy with
    // retriable_request_headers retries only requests that match one of them.
    let policy = fwd.retry.as_ref().filter(|p| {
        upgrade.is_none()
            && (p.retriable_request_headers.is_empty()
                || any_header_matches(&p.retriable_request_headers, &upstream.headers))
    });
    let attempts = upstream.attempts(policy);
    // A route with max_stream_duration uses it instead of `timeout`, as Envoy does.
    let mut resp = match (fwd.max_stream_duration, fwd.timeout) {
        (Some(d), _) => tokio::select! {
            r = attempts => r,
            () = tokio::time::sleep_until((started + d).into()) => {
                shared.stats.flag("DT");
                // Envoy: 504 once the whole request is in, else 408.
                let status = if upstream.body.is_ended() { 504 } else { 408 };
                local_details(status, "DT", "max_duration_timeout", "downstream duration timeout")
            }
        },
        (None, Some(t)) => tokio::select! {
            r = attempts => r,
            () = after_body(&upstream.body, t) => {
                shared.stats.flag("UT");
                local(504, "UT", "upstream request timeout")
            }
        },
        (None, None) => attempts.await,
    };
    lb.stats().response(resp.status().as_u16());
    let info = resp
        .extensions_mut()
        .remove::<UpstreamInfo>()
        .unwrap_or_default();
    resp.extensions_mut().insert(UpstreamInfo {
        cluster: Some(cluster.name.clone()),
        received,
        service: cluster.service.clone(),
        ..info
    });
    match upgrade {
        Some(u) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => tunnel(u, &mut resp),
        _ => {}
    }
    // Before the route's response mutations, which the caller applies.
    if let Some(h) = entry_headers {
        h.response.apply(resp.headers_mut());
    }
    resp
}

/// An HTTP/1.1 upgrade the listener allows (`upgrade_configs`): the protocol asked for and the
/// client's side of the connection once the proxy answers 101.
pub(super) struct Upgrade {
    pub(super) protocol: HeaderValue,
    pub(super) downstream: OnUpgrade,
}

/// After the upstream's 101: both connections, once handed over by hyper, are joined byte for
/// byte until either side closes.
fn tunnel(u: Upgrade, resp: &mut Response<Body>) {
    let upstream = hyper::upgrade::on(&mut *resp);
    tokio::spawn(async move {
        let (down, up) = tokio::join!(u.downstream, upstream);
        let (down, up) = match (down, up) {
            (Ok(d), Ok(u)) => (d, u),
            (d, u) => {
                tracing::debug!(
                    downstream = ?d.err(),
                    upstream = ?u.err(),
                    "upgrade: a side was not handed over"
                );
                return;
            }
        };
        let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
        match tokio::io::copy_bidirectional(&mut down, &mut up).await {
            Ok((sent, received)) => tracing::debug!(sent, received, "upgraded connection closed"),
            Err(e) => tracing::debug!(error = %e, "upgraded connection ended with an error"),
        }
    });
}

/// Sends a copy of the request to the mirror's cluster on a task of its own, fire and forget:
/// its answer, its failure and its time never touch the main request.
fn mirror(
    shared: &Arc<Shared>,
    config: &Config,
    m: &Mirror,
    main: &Upstream<'_>,
    timeout: Option<Duration>,
) {
    let Some(cluster) = config.clusters.get(&m.cluster).cloned() else {
        tracing::debug!(cluster = %m.cluster, "mirror cluster not found: not mirrored");
        return;
    };
    let mut headers = main.headers.clone();
    if m.shadow_suffix
        && let Some(host) = headers
            .get(hyper::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(shadow_host)
        && let Ok(v) = HeaderValue::from_str(&host)
    {
        headers.insert(hyper::header::HOST, v);
    }
    let shared = shared.clone();
    let (method, path) = (main.method.clone(), main.path.clone());
    let attempt_count = main.attempt_count;
    let mut progress = main.body.progress();
    let authority = main.authority.to_string();
    tokio::spawn(async move {
        let Some(lb) = upstream::balancer(&cluster) else {
            unpublished(&shared, &cluster.name);
            return;
        };
        // The copy goes once the whole body is in, if it fit in the buffer.
        let body = match progress
            .wait_for(|p| !matches!(p, Progress::Reading))
            .await
            .map(|p| p.clone())
        {
            Ok(Progress::Complete(frames, trailers)) => RequestBody::complete(frames, trailers),
            _ => {
                tracing::debug!(cluster = %cluster.name, "the request body was not kept whole: not mirrored");
                return;
            }
        };
        let copy = Upstream {
            shared: &shared,
            cluster: &cluster,
            lb,
            method,
            path,
            headers,
            body,
            authority: &authority,
            hash: None,
            attempt_count,
        };
        let sent = copy.attempts(None);
        let status = match timeout {
            Some(t) => tokio::time::timeout(t, sent).await.ok().map(|r| r.status()),
            None => Some(sent.await.status()),
        };
        if let Some(status) = status {
            lb.stats().response(status.as_u16());
        }
        tracing::debug!(cluster = %cluster.name, ?status, "mirrored");
    });
}

/// Envoy's shadow host: `-shadow` after the host, before any port (`httpbin:8000` →
/// `httpbin-shadow:8000`).
fn shadow_host(host: &str) -> String {
    match host.rsplit_once(':') {
        Some((h, port))
            if !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && (!h.contains(':') || h.ends_with(']')) =>
        {
            format!("{h}-shadow:{port}")
        }
        _ => format!("{host}-shadow"),
    }
}

/// The upstream path: the route's prefix or regex rewrite.
fn rewrite(route: &Route, fwd: &Forward, path_and_query: &str) -> String {
    if let Some(new) = &fwd.prefix_rewrite
        && let PathMatch::Prefix(p) | PathMatch::SeparatedPrefix(p) = &route.matcher.path
        && path_and_query.len() >= p.len()
    {
        return format!("{new}{}", &path_and_query[p.len()..]);
    }
    if let Some((re, with)) = &fwd.regex_rewrite {
        let (path, query) = path_and_query
            .split_once('?')
            .map_or((path_and_query, None), |(p, q)| (p, Some(q)));
        let new = re.0.replace_all(path, with.as_str());
        return match query {
            Some(q) => format!("{new}?{q}"),
            None => new.into_owned(),
        };
    }
    path_and_query.to_string()
}

/// Removes the hop-by-hop headers, except `te: trailers` (which gRPC needs end to end and
/// Envoy passes on).
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let te_trailers = headers
        .get_all(hyper::header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
    let named: Vec<HeaderName> = headers
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::try_from(n.trim()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in [
        "connection",
        "proxy-connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authorization",
    ] {
        headers.remove(n);
    }
    if te_trailers {
        headers.insert(hyper::header::TE, HeaderValue::from_static("trailers"));
    }
}

/// A cluster of a config the proxy did not publish, which cannot happen: every published
/// cluster has its balancer.
fn unpublished(shared: &Shared, cluster: &str) -> Response<Body> {
    tracing::error!(%cluster, "a cluster without its balancer: the config was not published");
    shared.stats.flag("UH");
    local(
        503,
        "UH",
        &format!("cluster {cluster} has no balancer (strait-proxy bug: an unpublished config)"),
    )
}

struct Upstream<'a> {
    shared: &'a Arc<Shared>,
    cluster: &'a Cluster,
    /// The cluster's balancer, published with it.
    lb: &'a Balancer,
    method: hyper::Method,
    path: String,
    headers: HeaderMap,
    body: RequestBody,
    /// The request's authority, for ORIGINAL_DST clusters.
    authority: &'a str,
    /// The request's hash, for consistent-hash clusters.
    hash: Option<u64>,
    /// Send `x-envoy-attempt-count` (the virtual host's `include_request_attempt_count`).
    attempt_count: bool,
}

impl Upstream<'_> {
    /// The first try and the retries the policy allows.
    async fn attempts(&self, policy: Option<&RetryPolicy>) -> Response<Body> {
        let stats = self.lb.stats();
        let retries = policy.map_or(0, |p| p.num_retries);
        let circuit = self.lb.circuit();
        let mut _retry = None;
        let mut previous: Option<Arc<Host>> = None;
        let mut attempt: u32 = 0;
        loop {
            let Some(picked) = self.lb.pick(previous.as_deref(), self.authority, self.hash) else {
                self.shared.stats.flag("UH");
                return local(503, "UH", "no healthy upstream");
            };
            let admitted = match circuit
                .admit(self.cluster.protocol == UpstreamProtocol::Http2)
                .await
            {
                Ok(a) => a,
                Err(overflow) => {
                    self.shared.stats.flag("UO");
                    return local(
                        503,
                        "UO",
                        &format!(
                            "upstream connect error or disconnect/reset before headers. reset reason: overflow ({overflow} of cluster {})",
                            self.cluster.name
                        ),
                    );
                }
            };
            stats.attempt(attempt > 0);
            let mut req = Request::new(self.body.replay());
            *req.method_mut() = self.method.clone();
            *req.headers_mut() = self.headers.clone();
            if self.attempt_count {
                req.headers_mut()
                    .insert("x-envoy-attempt-count", HeaderValue::from(attempt + 1));
            }
            match self.path.parse() {
                Ok(uri) => *req.uri_mut() = uri,
                Err(_) => return local(400, "DPE", "the request path is not valid"),
            }
            // Istio's peer metadata exchange, towards workloads of the mesh only.
            if picked.host().workload.is_some()
                && let Some((metadata, id)) = &self.shared.telemetry.peer_header
            {
                req.headers_mut()
                    .insert(PEER_METADATA_HEADER, metadata.clone());
                req.headers_mut()
                    .insert(PEER_METADATA_ID_HEADER, id.clone());
            }
            let sent_at = std::time::Instant::now();
            let sent = self.lb.send(&picked, req);
            let result = match policy.and_then(|p| p.per_try_timeout) {
                Some(t) => tokio::select! {
                    r = sent => Some(r),
                    () = after_body(&self.body, t) => None,
                },
                None => Some(sent.await),
            };
            let outcome = match result {
                None => Outcome::PerTryTimeout,
                Some(Ok(resp)) => Outcome::Response(resp),
                Some(Err(SendError::Connect(e))) => Outcome::ConnectFailure(e),
                Some(Err(SendError::Reset(e))) => Outcome::Reset(e),
                Some(Err(SendError::Refused(e))) => Outcome::Refused(e),
            };
            if !matches!(outcome, Outcome::Response(_))
                && let Some(reason) = self.body.downstream_failure()
            {
                // A malformed body (a bad chunk) or a client gone, not the upstream's fault:
                // answered 400, and the connection closes, as Envoy does after a codec error.
                let mut r = local(
                    400,
                    "DPE",
                    &format!("cannot read the request body: {reason}"),
                );
                r.headers_mut()
                    .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
                return r;
            }
            let observed = match &outcome {
                Outcome::Response(r) => Observed::Status(r.status().as_u16()),
                _ => Observed::LocalFailure,
            };
            self.lb.report(&picked, observed);
            // A body that outgrew the buffer cannot be sent again: no retry (Envoy's
            // retry_or_shadow_abandoned).
            let mut again = attempt < retries
                && policy.is_some_and(|p| should_retry(p, &outcome))
                && self.body.replayable();
            if again {
                // max_retries: a retry over the limit is not made; this answer stands.
                _retry = circuit.retry();
                again = _retry.is_some();
            }
            if !again {
                let service_time =
                    matches!(outcome, Outcome::Response(_)).then(|| sent_at.elapsed());
                let mut resp = self.respond(outcome, attempt > 0);
                // The upstream sidecar's metadata, which goes no further.
                let peer_header = resp.headers_mut().remove(PEER_METADATA_HEADER);
                resp.headers_mut().remove(PEER_METADATA_ID_HEADER);
                if let Some(t) = service_time {
                    // As Envoy's router: the upstream's time to its response headers, in ms.
                    resp.headers_mut().insert(
                        "x-envoy-upstream-service-time",
                        HeaderValue::from(t.as_millis() as u64),
                    );
                }
                resp.extensions_mut().insert(UpstreamInfo {
                    host: Some(picked.authority().to_string()),
                    service_time,
                    endpoint: picked.host().workload.clone(),
                    peer_header,
                    upstream_mtls: picked.host().is_tls(),
                    ..UpstreamInfo::default()
                });
                // The endpoint and the circuit's place stay taken until the body is sent.
                return hold(resp, (admitted, picked));
            }
            previous = Some(picked.host().clone());
            drop(picked);
            drop(admitted);
            attempt += 1;
            tokio::time::sleep(backoff(attempt)).await;
        }
    }

    fn respond(&self, outcome: Outcome, retried: bool) -> Response<Body> {
        let flag = |f: &'static str| {
            self.shared.stats.flag(f);
            f
        };
        match outcome {
            Outcome::Response(resp) => {
                let (mut parts, body) = resp.into_parts();
                // A 101 keeps its Connection and Upgrade: the client needs them.
                if parts.status != StatusCode::SWITCHING_PROTOCOLS {
                    strip_hop_by_hop(&mut parts.headers);
                }
                Response::from_parts(parts, body.boxed())
            }
            Outcome::ConnectFailure(e) => {
                let f = flag(if retried { "URX" } else { "UF" });
                local(
                    503,
                    f,
                    &format!(
                        "upstream connect error or disconnect/reset before headers. reset reason: connection failure: {e}"
                    ),
                )
            }
            Outcome::Reset(e) | Outcome::Refused(e) => local(
                503,
                flag("UR"),
                &format!("upstream connect error or disconnect/reset before headers: {e}"),
            ),
            Outcome::PerTryTimeout => local(504, flag("UT"), "upstream request timeout"),
        }
    }
}

/// `timeout` after the client's request body has ended: Envoy starts the route and per-try
/// timeouts once the whole request is in, so a long upload does not count against them.
async fn after_body(body: &RequestBody, timeout: Duration) {
    body.ended().await;
    tokio::time::sleep(timeout).await;
}

/// Keeps `guard` alive until the response body is done (or dropped).
fn hold<G: Send + Sync + 'static>(resp: Response<Body>, guard: G) -> Response<Body> {
    resp.map(|b| {
        b.map_frame(move |f| {
            let _ = &guard;
            f
        })
        .boxed()
    })
}

/// Full jitter over `BACKOFF_BASE * 2^(attempt-1)`, at most ten times the base.
fn backoff(attempt: u32) -> Duration {
    let cap = BACKOFF_BASE
        .saturating_mul(1 << attempt.clamp(1, 8).saturating_sub(1))
        .min(BACKOFF_BASE * 10);
    cap.mul_f64(fastrand::f64())
}

/// gRPC status codes by Envoy's retry_on names.
const GRPC_CODES: &[(&str, &str)] = &[
    ("cancelled", "1"),
    ("deadline-exceeded", "4"),
    ("resource-exhausted", "8"),
    ("internal", "13"),
    ("unavailable", "14"),
];

/// Whether one of the header matchers holds for `headers`.
fn any_header_matches(matchers: &[crate::config::HeaderMatch], headers: &HeaderMap) -> bool {
    matchers
        .iter()
        .any(|m| routing::headers_match(std::slice::from_ref(m), headers))
}

/// Envoy's `retry_on` conditions. A connect failure sent nothing upstream, so
/// `reset-before-request` retries it; a reset after a connection was made counts as started
/// (strait-proxy does not tell a request that was never written apart), so it does not.
fn should_retry(p: &RetryPolicy, outcome: &Outcome) -> bool {
    let on = |c: &str| p.retry_on.iter().any(|x| x == c);
    match outcome {
        Outcome::ConnectFailure(_) => {
            on("connect-failure")
                || on("reset-before-request")
                || on("5xx")
                || on("gateway-error")
                || on("reset")
        }
        Outcome::Reset(_) | Outcome::PerTryTimeout => {
            on("5xx") || on("gateway-error") || on("reset")
        }
        Outcome::Refused(_) => {
            on("refused-stream") || on("5xx") || on("gateway-error") || on("reset")
        }
        // A response an upstream Envoy's rate limiter made is retried on envoy-ratelimited
        // only, whatever its status.
        Outcome::Response(resp) if resp.headers().contains_key("x-envoy-ratelimited") => {
            on("envoy-ratelimited")
        }
        Outcome::Response(resp) => {
            let s = resp.status().as_u16();
            let grpc = resp
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok());
            (on("5xx") && s >= 500)
                || (on("gateway-error") && matches!(s, 502..=504))
                || (on("retriable-4xx") && s == 409)
                || (on("retriable-status-codes") && p.retriable_status_codes.contains(&s))
                || (on("retriable-headers")
                    && any_header_matches(&p.retriable_headers, resp.headers()))
                || GRPC_CODES
                    .iter()
                    .any(|(name, code)| on(name) && grpc == Some(code))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shadow_suffix_goes_before_the_port() {
        assert_eq!(shadow_host("httpbin:8000"), "httpbin-shadow:8000");
        assert_eq!(shadow_host("httpbin"), "httpbin-shadow");
        assert_eq!(shadow_host("[fd00::1]:80"), "[fd00::1]-shadow:80");
    }
}
