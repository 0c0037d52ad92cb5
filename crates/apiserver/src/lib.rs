//! The control plane's resource API.
//!
//! Kubernetes-shaped REST paths over a [`Store`]:
//! `/apis/{group}/{version}/namespaces/{ns}/{plural}[/{name}]`, `/api/v1/namespaces/{ns}/services[/{name}]`,
//! lists across namespaces (`/apis/{group}/{version}/{plural}`) and `?watch=true` streams of
//! newline-delimited `{"type": "ADDED", "object": {...}}` events. Every write is parsed and
//! validated as `strait validate` does: an invalid resource gets 422 with the field path of each
//! problem and changes nothing; a stale `metadata.resourceVersion` gets 409. Every request but
//! `/healthz` and `/readyz` needs `Authorization: Bearer <token>`.

#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

#[cfg(any(fuzzing, test))]
pub mod fuzzing;
mod paths;
mod status;
mod token;

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use strait_api::Report;
use strait_api::parse::{Outcome, Source, parse_value};
use strait_store::{Event, EventType, Key, Object, Precondition, Store, StoreError};

pub use paths::ResourcePath;
pub use status::ApiError;
pub use token::{TOKEN_FILE, load_or_create_token};

/// The largest request body accepted.
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// What the API's handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub store: Arc<dyn Store>,
    token: Arc<str>,
}

impl ApiState {
    pub fn new(store: Arc<dyn Store>, token: impl Into<Arc<str>>) -> Self {
        Self {
            store,
            token: token.into(),
        }
    }
}

/// The API's routes, and `extra` routes of the control plane's (debug pages, metrics), with
/// authentication and the body size limit.
pub fn router(state: ApiState, extra: Router) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .route(
            "/api/{*rest}",
            get(handle).post(handle).put(handle).delete(handle),
        )
        .route(
            "/apis/{*rest}",
            get(handle).post(handle).put(handle).delete(handle),
        )
        .with_state(state.clone())
        .merge(extra)
        .fallback(|| async {
            ApiError::not_found(
                "no such API path: resources live under /api/v1 and /apis/{group}/{version}",
            )
        })
        .layer(middleware::from_fn_with_state(state, authenticate))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}

async fn authenticate(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if path == "/healthz" || path == "/readyz" || path == "/metrics" {
        return next.run(req).await;
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(t) if token::equal(t.trim(), &state.token) => next.run(req).await,
        Some(_) => ApiError::unauthorized("wrong bearer token: use the token in the control plane's data directory (DATA_DIR/token)").into_response(),
        None => ApiError::unauthorized("missing bearer token: send `Authorization: Bearer <token>` with the token in the control plane's data directory (DATA_DIR/token)").into_response(),
    }
}

async fn handle(State(state): State<ApiState>, method: Method, req: Request) -> Response {
    let uri = req.uri().clone();
    let query = uri.query().unwrap_or_default().to_string();
    let body = match axum::body::to_bytes(req.into_body(), MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(_) => return ApiError::too_large(MAX_BODY_BYTES).into_response(),
    };
    let path = match ResourcePath::parse(uri.path()) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let result = match (&method, path.name.is_some()) {
        (&Method::GET, false) if query_flag(&query, "watch") => {
            return watch(&state, &path, &query);
        }
        (&Method::GET, false) => list(&state, &path),
        (&Method::GET, true) => read(&state, &path),
        (&Method::POST, false) => write(&state, &path, &body, WriteMode::Create).await,
        (&Method::PUT, true) => write(&state, &path, &body, WriteMode::Replace).await,
        (&Method::DELETE, true) => delete(&state, &path).await,
        _ => Err(ApiError::method_not_allowed(&method, uri.path())),
    };
    match result {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

fn query_flag(query: &str, name: &str) -> bool {
    query_param(query, name).is_some_and(|v| v == "true" || v == "1" || v.is_empty())
}

fn query_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then_some(v)
    })
}

fn store_key(path: &ResourcePath, name: &str) -> Key {
    Key {
        kind: path.kind.qualified_name(),
        namespace: path.namespace.clone().unwrap_or_default(),
        name: name.to_string(),
    }
}

/// The stored object as the API returns it: the requested apiVersion, the store's resourceVersion.
fn present(path: &ResourcePath, object: &Object) -> Value {
    let mut value = object.value.clone();
    if let Some(obj) = value.as_object_mut() {
        obj.insert("apiVersion".into(), json!(path.api_version()));
        obj.insert("kind".into(), json!(path.kind.name()));
    }
    if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), json!(object.revision.to_string()));
    }
    value
}

fn json_response(code: StatusCode, value: &Value, warnings: &[String]) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    for w in warnings {
        // Kubernetes' warning header: `299 - "text"`.
        let text = w
            .replace(['"', '\\'], "'")
            .replace(|c: char| c.is_control(), " ");
        if let Ok(v) = HeaderValue::from_str(&format!("299 - \"{text}\"")) {
            headers.append(header::WARNING, v);
        }
    }
    (code, headers, value.to_string()).into_response()
}

fn list(state: &ApiState, path: &ResourcePath) -> Result<Response, ApiError> {
    let (objects, revision) = state
        .store
        .list(&path.kind.qualified_name(), path.namespace.as_deref())
        .map_err(ApiError::from_store)?;
    let items: Vec<Value> = objects.iter().map(|o| present(path, o)).collect();
    let body = json!({
        "apiVersion": path.api_version(),
        "kind": format!("{}List", path.kind.name()),
        "metadata": {"resourceVersion": revision.to_string()},
        "items": items,
    });
    Ok(json_response(StatusCode::OK, &body, &[]))
}

fn read(state: &ApiState, path: &ResourcePath) -> Result<Response, ApiError> {
    let name = path.name.as_deref().unwrap_or_default();
    match state
        .store
        .get(&store_key(path, name))
        .map_err(ApiError::from_store)?
    {
        Some(obj) => Ok(json_response(StatusCode::OK, &present(path, &obj), &[])),
        None => Err(ApiError::resource_not_found(path.kind, name)),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum WriteMode {
    Create,
    Replace,
}

async fn write(
    state: &ApiState,
    path: &ResourcePath,
    body: &Bytes,
    mode: WriteMode,
) -> Result<Response, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!("the request body is not a JSON object: {e}"))
    })?;
    let (mut value, report) = admit(path, value)?;
    let name = value["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if mode == WriteMode::Replace && path.name.as_deref() != Some(name.as_str()) {
        return Err(ApiError::bad_request(format!(
            "metadata.name {name:?} does not match the name in the path {:?}",
            path.name.as_deref().unwrap_or_default()
        )));
    }
    let key = store_key(path, &name);
    let precondition = match (mode, value["metadata"]["resourceVersion"].as_str()) {
        (WriteMode::Create, _) => Precondition::MustNotExist,
        (WriteMode::Replace, Some(rv)) if !rv.is_empty() => {
            Precondition::Revision(rv.parse().map_err(|_| {
                ApiError::bad_request(format!("metadata.resourceVersion {rv:?} is not a number"))
            })?)
        }
        (WriteMode::Replace, _) => Precondition::None,
    };
    let store = state.store.clone();
    let stored = tokio::task::spawn_blocking(move || {
        let existing = store.get(&key)?;
        stamp(&mut value, existing.as_ref());
        let created = existing.is_none();
        store.put(&key, value, precondition).map(|o| (o, created))
    })
    .await
    .map_err(|e| ApiError::internal(format!("store task failed: {e}")))?
    .map_err(ApiError::from_store)?;
    let (object, created) = stored;
    let code = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let warnings: Vec<String> = report.warnings.iter().map(ToString::to_string).collect();
    Ok(json_response(code, &present(path, &object), &warnings))
}

/// Parses and validates a written object against the path it was written to; fills in the
/// namespace from the path.
fn admit(path: &ResourcePath, mut value: Value) -> Result<(Value, Report), ApiError> {
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    let kind = value["kind"].as_str().unwrap_or_default();
    if !kind.is_empty() && kind != path.kind.name() {
        return Err(ApiError::bad_request(format!(
            "the body's kind {kind:?} does not match the path's kind {:?}",
            path.kind.name()
        )));
    }
    value["kind"] = json!(path.kind.name());
    if value
        .get("apiVersion")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        value["apiVersion"] = json!(path.api_version());
    }
    if !value.get("metadata").is_some_and(Value::is_object) {
        value["metadata"] = json!({});
    }
    if let Some(ns) = &path.namespace {
        match value["metadata"]["namespace"].as_str() {
            Some(body_ns) if body_ns != ns => {
                return Err(ApiError::bad_request(format!(
                    "metadata.namespace {body_ns:?} does not match the namespace in the path {ns:?}"
                )));
            }
            _ => value["metadata"]["namespace"] = json!(ns),
        }
    }
    let parsed = parse_value(
        Source {
            file: "request".into(),
            index: 0,
        },
        value.clone(),
    );
    let resource = match parsed.outcome {
        Outcome::Resource(r) => r,
        Outcome::Unsupported(why) => return Err(ApiError::bad_request(why)),
        Outcome::Invalid(e) => {
            return Err(ApiError::invalid(
                path.kind,
                &parsed.name,
                vec![e.to_issue()],
            ));
        }
    };
    let report = resource.validate();
    if !report.errors.is_empty() {
        return Err(ApiError::invalid(path.kind, resource.name(), report.errors));
    }
    Ok((value, report))
}

/// Sets the fields the server owns: uid, creationTimestamp and generation (bumped when the spec
/// changes). resourceVersion is the store's.
fn stamp(value: &mut Value, existing: Option<&Object>) {
    let old_meta = existing.map(|o| &o.value["metadata"]);
    let meta = &mut value["metadata"];
    let keep = |field: &str, fresh: Value| -> Value {
        old_meta
            .and_then(|m| m.get(field))
            .filter(|v| !v.is_null())
            .cloned()
            .unwrap_or(fresh)
    };
    meta["uid"] = keep("uid", json!(token::uuid_v4()));
    meta["creationTimestamp"] = keep("creationTimestamp", json!(status::rfc3339_now()));
    let generation = match existing {
        None => 1,
        Some(o) => {
            let old_gen = o.value["metadata"]["generation"].as_i64().unwrap_or(1);
            if o.value.get("spec") == value.get("spec") {
                old_gen
            } else {
                old_gen + 1
            }
        }
    };
    value["metadata"]["generation"] = json!(generation);
    if let Some(m) = value["metadata"].as_object_mut() {
        m.remove("resourceVersion");
    }
}

async fn delete(state: &ApiState, path: &ResourcePath) -> Result<Response, ApiError> {
    let name = path.name.clone().unwrap_or_default();
    let key = store_key(path, &name);
    let store = state.store.clone();
    let deleted = tokio::task::spawn_blocking(move || store.delete(&key, Precondition::None))
        .await
        .map_err(|e| ApiError::internal(format!("store task failed: {e}")))?;
    match deleted {
        Ok(object) => Ok(json_response(StatusCode::OK, &present(path, &object), &[])),
        Err(StoreError::NotFound { .. }) => Err(ApiError::resource_not_found(path.kind, &name)),
        Err(e) => Err(ApiError::from_store(e)),
    }
}

/// `?watch=true[&resourceVersion=N]`: without a revision, the current objects as ADDED events
/// first (as Kubernetes does), then every change; with one, every change after it.
fn watch(state: &ApiState, path: &ResourcePath, query: &str) -> Response {
    let kind = path.kind.qualified_name();
    let after = query_param(query, "resourceVersion").filter(|v| !v.is_empty() && *v != "0");
    let (initial, after) = match after {
        Some(rv) => match rv.parse::<u64>() {
            Ok(n) => (Vec::new(), n),
            Err(_) => {
                return ApiError::bad_request(format!("resourceVersion {rv:?} is not a number"))
                    .into_response();
            }
        },
        None => match state.store.list(&kind, path.namespace.as_deref()) {
            Ok((objects, rev)) => (objects, rev),
            Err(e) => return ApiError::from_store(e).into_response(),
        },
    };
    let mut watcher = match state
        .store
        .watch(Some(&kind), path.namespace.as_deref(), after)
    {
        Ok(w) => w,
        Err(e) => return ApiError::from_store(e).into_response(),
    };
    let path = path.clone();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    tokio::spawn(async move {
        let line = |event_type: &str, object: &Object| {
            let mut l = json!({"type": event_type, "object": present(&path, object)}).to_string();
            l.push('\n');
            Ok(Bytes::from(l))
        };
        for object in &initial {
            if tx.send(line("ADDED", object)).await.is_err() {
                return;
            }
        }
        loop {
            tokio::select! {
                event = watcher.next() => {
                    let Some(Event { event_type, object }) = event else { break };
                    let t = match event_type {
                        EventType::Added => "ADDED",
                        EventType::Modified => "MODIFIED",
                        EventType::Deleted => "DELETED",
                    };
                    if tx.send(line(t, &object)).await.is_err() {
                        return;
                    }
                }
                () = tx.closed() => return,
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

#[cfg(test)]
mod tests;
