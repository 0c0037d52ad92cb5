use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use strait_store::MemoryStore;
use tower::ServiceExt;

use super::*;

const TOKEN: &str = "test-token";

fn app() -> (Router, Arc<dyn Store>) {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    (
        router(ApiState::new(store.clone(), TOKEN), Router::new()),
        store,
    )
}

async fn call(
    app: &Router,
    method: &str,
    path: &str,
    body: Option<Value>,
    token: Option<&str>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn vs(name: &str, host: &str) -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": name},
        "spec": {"hosts": [host], "http": [{"route": [{"destination": {"host": host}}]}]},
    })
}

const VS_PATH: &str = "/apis/networking.istio.io/v1/namespaces/default/virtualservices";

#[tokio::test]
async fn refuses_requests_without_the_token_and_changes_nothing() {
    let (app, store) = app();
    let (code, status) = call(&app, "POST", VS_PATH, Some(vs("a", "reviews")), None).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    assert!(status["message"].as_str().unwrap().contains("bearer token"));
    let (code, _) = call(
        &app,
        "POST",
        VS_PATH,
        Some(vs("a", "reviews")),
        Some("wrong"),
    )
    .await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    assert_eq!(store.revision(), 0);
    let (code, _) = call(&app, "GET", "/healthz", None, None).await;
    assert_eq!(code, StatusCode::OK);
}

#[tokio::test]
async fn creates_reads_lists_replaces_and_deletes() {
    let (app, _) = app();
    let (code, created) = call(
        &app,
        "POST",
        VS_PATH,
        Some(vs("reviews", "reviews")),
        Some(TOKEN),
    )
    .await;
    assert_eq!(code, StatusCode::CREATED, "{created}");
    assert_eq!(created["metadata"]["namespace"], "default");
    assert_eq!(created["metadata"]["generation"], 1);
    let rv = created["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();

    let (code, again) = call(
        &app,
        "POST",
        VS_PATH,
        Some(vs("reviews", "reviews")),
        Some(TOKEN),
    )
    .await;
    assert_eq!(code, StatusCode::CONFLICT, "{again}");

    let (code, got) = call(
        &app,
        "GET",
        &format!("{VS_PATH}/reviews"),
        None,
        Some(TOKEN),
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(got["spec"], created["spec"]);

    let mut changed = vs("reviews", "ratings");
    changed["metadata"]["resourceVersion"] = json!(rv);
    let (code, replaced) = call(
        &app,
        "PUT",
        &format!("{VS_PATH}/reviews"),
        Some(changed.clone()),
        Some(TOKEN),
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{replaced}");
    assert_eq!(replaced["metadata"]["generation"], 2);
    assert_eq!(replaced["metadata"]["uid"], created["metadata"]["uid"]);

    // The same stale resourceVersion again: 409.
    let (code, conflict) = call(
        &app,
        "PUT",
        &format!("{VS_PATH}/reviews"),
        Some(changed),
        Some(TOKEN),
    )
    .await;
    assert_eq!(code, StatusCode::CONFLICT, "{conflict}");

    let (code, list) = call(
        &app,
        "GET",
        "/apis/networking.istio.io/v1/virtualservices",
        None,
        Some(TOKEN),
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(list["kind"], "VirtualServiceList");
    assert_eq!(list["items"].as_array().unwrap().len(), 1);

    let (code, _) = call(
        &app,
        "DELETE",
        &format!("{VS_PATH}/reviews"),
        None,
        Some(TOKEN),
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    let (code, _) = call(
        &app,
        "GET",
        &format!("{VS_PATH}/reviews"),
        None,
        Some(TOKEN),
    )
    .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn refuses_an_invalid_resource_with_its_field_path() {
    let (app, store) = app();
    let mut bad = vs("reviews", "reviews");
    bad["spec"]["http"][0]["route"][0]["destination"]["hots"] = json!("x");
    let (code, status) = call(&app, "POST", VS_PATH, Some(bad), Some(TOKEN)).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{status}");
    let field = status["details"]["causes"][0]["field"].as_str().unwrap();
    assert!(
        field.contains("spec.http[0].route[0].destination"),
        "{status}"
    );
    assert_eq!(store.revision(), 0);

    let (code, _) = call(
        &app,
        "POST",
        VS_PATH,
        Some(json!({"kind": "Service"})),
        Some(TOKEN),
    )
    .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
}
