//! The dashboard: a web UI the control plane serves on its API port (`/dashboard/`, plain
//! HTML, JS and CSS compiled into the binary), and its JSON API: `/api/graph` (the live
//! service graph, from the proxies' metrics the control plane scrapes itself: `scrape.rs`,
//! `graph.rs`) and `/api/traces`, `/api/traces/{id}` (the embedded trace store the control
//! plane fills as an OTLP receiver: `traces.rs`, `otlp.rs`). Read-only. The page itself holds
//! no data and needs no token; the JSON API needs the API token unless the request comes
//! from loopback (the API server's authentication, `strait_apiserver::Access`).

mod graph;
pub mod otlp;
mod scrape;
pub mod traces;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use serde_json::json;
use strait_ads::AdsServer;

use crate::Mesh;
pub use traces::TraceStore;

/// The paths of the dashboard's page (no token needed: it holds no data).
pub const PAGE_PATHS: &[&str] = &["/dashboard"];
/// The paths of its JSON API (no token from loopback).
pub const API_PATHS: &[&str] = &["/api/graph", "/api/traces"];

const INDEX: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

#[derive(Clone)]
struct DashboardState {
    scraper: Arc<scrape::Scraper>,
    traces: Arc<TraceStore>,
}

/// The dashboard's routes; starts the scraper's background rounds.
pub fn routes(ads: AdsServer, mesh: Arc<Mesh>, traces: Arc<TraceStore>) -> Router {
    let scraper = scrape::Scraper::new(ads, mesh);
    tokio::spawn(scraper.clone().run());
    Router::new()
        .route(
            "/dashboard",
            get(|| async { Redirect::permanent("/dashboard/") }),
        )
        .route(
            "/dashboard/",
            get(|| async { asset(INDEX, "text/html; charset=utf-8") }),
        )
        .route(
            "/dashboard/app.js",
            get(|| async { asset(APP_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/dashboard/app.css",
            get(|| async { asset(APP_CSS, "text/css; charset=utf-8") }),
        )
        .route("/api/graph", get(graph))
        .route("/api/traces", get(trace_list))
        .route("/api/traces/{id}", get(trace))
        .with_state(DashboardState { scraper, traces })
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn graph(State(s): State<DashboardState>) -> Response {
    axum::Json(s.scraper.graph_json().await).into_response()
}

#[derive(serde::Deserialize)]
struct ListParams {
    service: Option<String>,
    error: Option<bool>,
    min_duration_ms: Option<f64>,
    limit: Option<usize>,
}

async fn trace_list(State(s): State<DashboardState>, Query(p): Query<ListParams>) -> Response {
    let q = traces::Query {
        service: p.service.filter(|s| !s.is_empty()),
        error: p.error,
        min_duration_ms: p.min_duration_ms,
        limit: p.limit.unwrap_or(100).clamp(1, 1000),
    };
    let list = s.traces.list(&q);
    let (traces, spans, bytes, dropped, received) = s.traces.stats();
    axum::Json(json!({
        "traces": list,
        "store": {"traces": traces, "spans": spans, "bytes": bytes, "dropped_spans": dropped, "received_spans": received},
    }))
    .into_response()
}

async fn trace(State(s): State<DashboardState>, Path(id): Path<String>) -> Response {
    match s.traces.get(&id) {
        Some((summary, spans)) => axum::Json(json!({"trace": summary, "spans": spans})).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"message": format!("no trace {id:?} in the control plane's trace store (it keeps the most recent ones; /api/traces lists them)")})),
        )
            .into_response(),
    }
}
