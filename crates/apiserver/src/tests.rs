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

fn svc(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": name, "namespace": "default"},
           "spec": {"ports": [{"name": "http", "port": 80}]}})
}

#[tokio::test]
async fn a_batch_applies_every_object_or_none() {
    let (app, store) = app();
    let mut a = vs("reviews", "reviews");
    a["metadata"]["namespace"] = json!("default");
    let batch = json!({"items": [a.clone(), svc("web"), svc("db")]});
    let (code, answer) = call(&app, "POST", "/batch", Some(batch.clone()), Some(TOKEN)).await;
    assert_eq!(code, StatusCode::OK, "{answer}");
    let results: Vec<&str> = answer["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["result"].as_str().unwrap())
        .collect();
    assert_eq!(results, ["created", "created", "created"]);
    // Revisions increase (a store may leave gaps, and a batch may share one revision).
    let after_first = store.revision();
    assert!(after_first > 0);
    let rv: u64 = answer["items"][1]["object"]["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(0 < rv && rv <= after_first, "{answer}");

    // The same again: unchanged, nothing written.
    let (code, answer) = call(&app, "POST", "/batch", Some(batch), Some(TOKEN)).await;
    assert_eq!(code, StatusCode::OK, "{answer}");
    assert!(
        answer["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["result"] == "unchanged")
    );
    assert_eq!(store.revision(), after_first);

    // One invalid object: 422 naming it, nothing written (not even the valid change before it).
    let mut changed = a.clone();
    changed["spec"]["hosts"] = json!(["ratings"]);
    changed["spec"]["http"][0]["route"][0]["destination"]["host"] = json!("ratings");
    let mut bad = vs("bad", "bad");
    bad["metadata"]["namespace"] = json!("default");
    bad["spec"]["http"][0]["route"][0]["weight"] = json!(-5);
    let (code, status) = call(
        &app,
        "POST",
        "/batch",
        Some(json!({"items": [changed.clone(), svc("new"), bad]})),
        Some(TOKEN),
    )
    .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{status}");
    assert!(
        status["message"].as_str().unwrap().starts_with("items[2]"),
        "{status}"
    );
    assert!(
        status["details"]["causes"][0]["field"]
            .as_str()
            .unwrap()
            .starts_with("items[2].spec"),
        "{status}"
    );
    assert_eq!(store.revision(), after_first);

    // A later object of the same name replaces an earlier one; a stale resourceVersion fails
    // the whole batch with 409.
    let (code, answer) = call(
        &app,
        "POST",
        "/batch",
        Some(json!({"items": [svc("x"), changed.clone(), changed.clone()]})),
        Some(TOKEN),
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{answer}");
    let results: Vec<&str> = answer["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["result"].as_str().unwrap())
        .collect();
    assert_eq!(results, ["created", "configured", "unchanged"]);
    let after_second = store.revision();
    assert!(after_second > after_first);
    let mut stale = changed;
    stale["metadata"]["resourceVersion"] = json!("1");
    let (code, status) = call(
        &app,
        "POST",
        "/batch",
        Some(json!({"items": [svc("y"), stale]})),
        Some(TOKEN),
    )
    .await;
    assert_eq!(code, StatusCode::CONFLICT, "{status}");
    assert_eq!(store.revision(), after_second);
    // Without the token: 401, nothing written.
    let (code, _) = call(
        &app,
        "POST",
        "/batch",
        Some(json!({"items": [svc("z")]})),
        None,
    )
    .await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    assert_eq!(store.revision(), after_second);
}

#[tokio::test]
async fn a_watch_that_falls_behind_the_history_ends_with_410() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::with_history(50));
    let app = router(ApiState::new(store.clone(), TOKEN), Router::new());
    let key = |n: &str| Key::new("service", "default", n);
    store
        .put(&key("first"), svc("first"), Precondition::None)
        .unwrap();
    let req = Request::builder()
        .uri("/api/v1/namespaces/default/services?watch=true&resourceVersion=1")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Body::empty())
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // The client reads nothing while far more than the history (and than a watch may queue:
    // 40 MB of 100 KiB objects) is written.
    for i in 0..400 {
        let mut big = svc(&format!("s{i}"));
        big["metadata"]["annotations"] = json!({"pad": "x".repeat(100 * 1024)});
        store
            .put(&key(&format!("s{i}")), big, Precondition::None)
            .unwrap();
    }
    let bytes = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        resp.into_body().collect(),
    )
    .await
    .expect("the watch ends by itself")
    .unwrap()
    .to_bytes();
    let lines: Vec<Value> = String::from_utf8_lossy(&bytes)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let last = lines.last().unwrap();
    assert_eq!(last["type"], "ERROR", "{last}");
    assert_eq!(last["object"]["kind"], "Status");
    assert_eq!(last["object"]["code"], 410);
    assert_eq!(last["object"]["reason"], "Expired");
    assert!(lines.len() < 300, "{} lines", lines.len());
}

#[tokio::test]
async fn a_secrets_data_is_shown_only_when_asked_for() {
    let (app, store) = app();
    let path = "/api/v1/namespaces/istio-system/secrets";
    let secret = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "cred"},
        "type": "kubernetes.io/tls",
        // "-----BEGIN CERT" and "-----BEGIN KEY"
        "data": {"tls.crt": "LS0tLS1CRUdJTiBDRVJU", "tls.key": "LS0tLS1CRUdJTiBLRVk="},
    });
    let (code, created) = call(&app, "POST", path, Some(secret.clone()), Some(TOKEN)).await;
    assert_eq!(code, StatusCode::CREATED, "{created}");
    // Not even the answer to the write echoes it.
    assert_eq!(created["data"]["tls.crt"], "<redacted: 15 bytes>");
    assert_eq!(created["data"]["tls.key"], "<redacted: 14 bytes>");
    let (_, read) = call(&app, "GET", &format!("{path}/cred"), None, Some(TOKEN)).await;
    assert_eq!(read["data"]["tls.key"], "<redacted: 14 bytes>");
    assert_eq!(read["type"], "kubernetes.io/tls");
    let (_, list) = call(&app, "GET", path, None, Some(TOKEN)).await;
    assert_eq!(list["items"][0]["data"]["tls.key"], "<redacted: 14 bytes>");
    let (_, shown) = call(
        &app,
        "GET",
        &format!("{path}/cred?showSecrets=true"),
        None,
        Some(TOKEN),
    )
    .await;
    assert_eq!(shown["data"]["tls.key"], "LS0tLS1CRUdJTiBLRVk=");
    // The store keeps the data; a redacted copy written back is refused and changes nothing.
    let revision = store.revision();
    let (code, refused) = call(
        &app,
        "PUT",
        &format!("{path}/cred"),
        Some(read),
        Some(TOKEN),
    )
    .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert!(
        refused["message"].as_str().unwrap().contains("redacted"),
        "{refused}"
    );
    assert_eq!(store.revision(), revision);
    // A TLS Secret needs its keys; bad base64 is refused.
    let mut bad = secret.clone();
    bad["metadata"]["name"] = json!("bad");
    bad["data"] = json!({"tls.crt": "LS0tLS0="});
    let (code, refused) = call(&app, "POST", path, Some(bad.clone()), Some(TOKEN)).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert_eq!(refused["details"]["causes"][0]["field"], "data[tls.key]");
    bad["data"] = json!({"tls.crt": "%%%", "tls.key": "LS0tLS0="});
    let (code, _) = call(&app, "POST", path, Some(bad), Some(TOKEN)).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
}

/// A loopback-read path with no known peer (no connection, as here, or one the server could
/// not place) needs the token: it fails closed.
#[tokio::test]
async fn a_loopback_read_path_needs_the_token_when_the_peer_is_unknown() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let state = ApiState::new(store, TOKEN).with_open_paths(OpenPaths {
        public: vec![],
        loopback_read: vec!["/api/graph"],
    });
    let app = router(
        state,
        Router::new().route("/api/graph", get(|| async { "{}" })),
    );
    let (code, body) = call(&app, "GET", "/api/graph", None, None).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED, "{body}");
    let (code, _) = call(&app, "GET", "/api/graph", None, Some(TOKEN)).await;
    assert_eq!(code, StatusCode::OK);
}
