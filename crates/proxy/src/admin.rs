//! The admin interface (Envoy's paths, on `--admin`, default 127.0.0.1:15000):
//! - `/ready`: 200 `LIVE` once the first complete config is in, else 503 `PRE_INITIALIZING`;
//! - `/config_dump`: the proxy's typed config as compact JSON (durations as Envoy writes them,
//!   `"0.500s"`). These are strait-proxy's own types, not
//!   Envoy's config dump shape;
//! - `/stats/prometheus`: per-cluster request counters and the proxy's own responses by flag,
//!   then Istio's standard metrics (`istio_requests_total`, ...; also served alone on
//!   `--prometheus`, Istio's `POD_IP:15090`);
//! - `/clusters`: Envoy's text format, per cluster its circuit breaker thresholds and per
//!   endpoint `rq_active` and `health_flags` (`healthy`, or `/failed_outlier_check` while outlier
//!   detection has it ejected);
//! - `/drain_listeners` (`?graceful` alike): every listening socket closes; open HTTP
//!   connections close once their requests in flight are answered;
//! - `/quitquitquit` (POST, or GET for convenience): stops the proxy.

use std::convert::Infallible;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::Shared;
use crate::http::{Body, full};

/// Serves the admin interface until aborted.
pub(crate) async fn serve(shared: Arc<Shared>, tcp: TcpListener) {
    loop {
        let Ok((stream, _)) = tcp.accept().await else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(&shared, &req)) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Serves `/stats/prometheus` alone (Istio's port 15090) until aborted.
pub(crate) async fn serve_prometheus(shared: Arc<Shared>, tcp: TcpListener) {
    loop {
        let Ok((stream, _)) = tcp.accept().await else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let shared = shared.clone();
                async move {
                    Ok::<_, Infallible>(match req.uri().path() {
                        "/stats/prometheus" => prometheus(&shared),
                        other => reply(
                            StatusCode::NOT_FOUND,
                            "text/plain",
                            format!("no path {other} here: this port serves /stats/prometheus\n"),
                        ),
                    })
                }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The proxy's own (Envoy-named) stats, then Istio's standard metrics.
fn prometheus(shared: &Shared) -> Response<Body> {
    let mut text = shared.stats.prometheus();
    shared.spans.prometheus(&mut text);
    shared
        .telemetry
        .metrics
        .prometheus_except(&mut text, disabled_metrics(&shared.config.load()));
    reply(StatusCode::OK, "text/plain; version=0.0.4", text)
}

/// What each side of the proxy does not report: the inbound listeners' disabled metrics are the
/// server side's, the others' the client side's.
fn disabled_metrics(config: &crate::config::Config) -> strait_telemetry::Disabled {
    let mut d = strait_telemetry::Disabled::default();
    for l in config.listeners.values() {
        let side = if l.inbound {
            &mut d.destination
        } else {
            &mut d.source
        };
        *side = side.union(l.disabled_metrics);
    }
    d
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn handle(shared: &Shared, req: &Request<Incoming>) -> Response<Body> {
    match req.uri().path() {
        "/ready" => {
            if shared.is_ready() {
                reply(StatusCode::OK, "text/plain", "LIVE\n".into())
            } else {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "PRE_INITIALIZING\n".into(),
                )
            }
        }
        "/config_dump" => {
            let config = shared.config.load_full();
            match serde_json::to_string(&*config) {
                Ok(json) => reply(StatusCode::OK, "application/json", json),
                Err(e) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    format!("cannot serialize the config: {e}\n"),
                ),
            }
        }
        "/server_info" => {
            // Envoy's shape, for the fields tools read.
            let uptime = format!("{}s", shared.started.elapsed().as_secs());
            let info = serde_json::json!({
                "version": concat!("strait-proxy/", env!("CARGO_PKG_VERSION")),
                "state": if shared.is_ready() { "LIVE" } else { "PRE_INITIALIZING" },
                "uptime_current_epoch": uptime,
                "uptime_all_epochs": uptime,
            });
            reply(StatusCode::OK, "application/json", info.to_string())
        }
        "/certs" => reply(
            StatusCode::OK,
            "application/json",
            certs_json(shared.tls.workload().as_deref()).to_string(),
        ),
        "/stats/prometheus" => prometheus(shared),
        "/clusters" => {
            let config = shared.config.load_full();
            reply(
                StatusCode::OK,
                "text/plain",
                shared.upstreams.clusters_text(&config),
            )
        }
        "/drain_listeners" => match req.uri().query().unwrap_or_default() {
            // strait-proxy has no graceful period before the close: `graceful` drains the same.
            "" | "graceful" => {
                shared.drain.send_replace(true);
                reply(StatusCode::OK, "text/plain", "OK\n".into())
            }
            other => reply(
                StatusCode::BAD_REQUEST,
                "text/plain",
                format!(
                    "/drain_listeners?{other}: strait-proxy drains every listener, with no options \
                     but `graceful`\n"
                ),
            ),
        },
        "/quitquitquit" => {
            shared.quit.notify_one();
            reply(StatusCode::OK, "text/plain", "OK\n".into())
        }
        "/" => reply(
            StatusCode::OK,
            "text/plain",
            "strait-proxy admin: /ready /server_info /config_dump /clusters /certs /stats/prometheus /drain_listeners /quitquitquit\n"
                .into(),
        ),
        other => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            format!(
                "no admin path {other}: try /ready, /server_info, /config_dump, /clusters, /certs, /stats/prometheus\n"
            ),
        ),
    }
}

/// `/certs` in Envoy's shape: the workload certificate chain (`cert_chain`) and the trust
/// bundle (`ca_cert`), each with its serial number, names and validity.
fn certs_json(creds: Option<&strait_identity::Credentials>) -> serde_json::Value {
    use serde_json::json;
    use strait_identity::cert::{CertInfo, rfc3339};
    let Some(creds) = creds else {
        return json!({ "certificates": [] });
    };
    let now = std::time::SystemTime::now();
    let describe = |info: &CertInfo, path: &str| {
        let days = info
            .not_after
            .duration_since(now)
            .map_or(0, |d| d.as_secs() / 86_400);
        let mut names: Vec<serde_json::Value> =
            info.uris.iter().map(|u| json!({ "uri": u })).collect();
        names.extend(info.dns_names.iter().map(|d| json!({ "dns": d })));
        json!({
            "path": path,
            "serial_number": info.serial,
            "subject_alt_names": names,
            "days_until_expiration": days.to_string(),
            "valid_from": rfc3339(info.not_before),
            "expiration_time": rfc3339(info.not_after),
        })
    };
    let chain: Vec<serde_json::Value> = creds
        .chain
        .iter()
        .filter_map(|c| CertInfo::parse(c.as_ref(), "a certificate of the chain").ok())
        .map(|i| describe(&i, "<inline>"))
        .collect();
    let roots: Vec<serde_json::Value> = creds
        .roots
        .iter()
        .filter_map(|c| CertInfo::parse(c.as_ref(), "a root").ok())
        .map(|i| describe(&i, "<inline>"))
        .collect();
    json!({ "certificates": [{ "ca_cert": roots, "cert_chain": chain }] })
}
