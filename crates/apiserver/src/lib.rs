//! The control plane's resource API.
//!
//! Kubernetes-shaped REST paths over a [`Store`]:
//! `/apis/{group}/{version}/namespaces/{ns}/{plural}[/{name}]`, `/api/v1/namespaces/{ns}/services[/{name}]`,
//! lists across namespaces (`/apis/{group}/{version}/{plural}`) and `?watch=true` streams of
//! newline-delimited `{"type": "ADDED", "object": {...}}` events. Every write is parsed and
//! validated as `strait validate` does: an invalid resource gets 422 with the field path of each
//! problem and changes nothing; a stale `metadata.resourceVersion` gets 409. `POST /batch`
//! applies several objects in one store transaction, all or nothing (what `strait apply`
//! uses). Every request but `/healthz` and `/readyz` needs `Authorization: Bearer <token>`.
//! A Secret's data is hidden in every answer (reads, lists, watches, and the answers to writes
//! and batches) unless the request says `?showSecrets=true`.
//!
//! A watch that falls further behind than the store's history ends with an `ERROR` event whose
//! object is a `Status` with code 410 (reason `Expired`), as kube-apiserver ends it: the client
//! lists again and watches from the list's resourceVersion. [`Server`] serves the router with
//! timeouts and connection caps.

#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

#[cfg(any(fuzzing, test))]
pub mod fuzzing;
mod paths;
mod serve;
mod status;
mod token;

use std::sync::Arc;
use std::time::Duration;

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
use strait_store::{
    Event, EventType, Key, Object, Precondition, Store, StoreError, Watch, WatchEnd, Write,
};

pub use paths::ResourcePath;
pub use serve::{ConnHandle, Limits, Server};
pub use status::ApiError;
pub use token::{TOKEN_FILE, load_or_create_token};

/// The largest request body accepted.
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// The largest batch (`POST /batch`) accepted: as much as `strait apply` reads at once.
pub const MAX_BATCH_BYTES: usize = strait_api::parse::MAX_INPUT_BYTES;

/// How long a request body may take to arrive, by default.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// What the API's handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub store: Arc<dyn Store>,
    token: Arc<str>,
    body_timeout: Duration,
    open: Arc<OpenPaths>,
}

/// Paths the API serves without the token (besides `/healthz`, `/readyz` and `/metrics`): a
/// path is one of them when it equals a prefix or continues it after a `/`.
#[derive(Debug, Clone, Default)]
pub struct OpenPaths {
    /// To anyone (pages that hold no data).
    pub public: Vec<&'static str>,
    /// To GET and HEAD requests from loopback peers; others need the token.
    pub loopback_read: Vec<&'static str>,
}

fn under(path: &str, prefixes: &[&str]) -> bool {
    prefixes.iter().any(|p| {
        path.strip_prefix(p)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

impl ApiState {
    pub fn new(store: Arc<dyn Store>, token: impl Into<Arc<str>>) -> Self {
        Self {
            store,
            token: token.into(),
            body_timeout: BODY_TIMEOUT,
            open: Arc::default(),
        }
    }

    /// Paths served without the token: [`OpenPaths`].
    pub fn with_open_paths(mut self, open: OpenPaths) -> Self {
        self.open = Arc::new(open);
        self
    }

    /// How long a request body may take to arrive before the request is answered 408 and its
    /// connection closed.
    pub fn with_body_timeout(mut self, timeout: Duration) -> Self {
        self.body_timeout = timeout;
        self
    }
}

/// The API's routes, and `extra` routes of the control plane's (debug pages, metrics), with
/// authentication and the body size limit.
pub fn router(state: ApiState, extra: Router) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .route(
            "/batch",
            axum::routing::post(batch).fallback(|method: Method| async move {
                ApiError::method_not_allowed(&method, "/batch")
            }),
        )
        // Every method, so that one the API does not serve still gets a Status.
        .route("/api/{*rest}", axum::routing::any(handle))
        .route("/apis/{*rest}", axum::routing::any(handle))
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
    if path == "/healthz"
        || path == "/readyz"
        || path == "/metrics"
        || under(path, &state.open.public)
    {
        return next.run(req).await;
    }
    if under(path, &state.open.loopback_read)
        && (req.method() == Method::GET || req.method() == Method::HEAD)
        && req
            .extensions()
            .get::<ConnHandle>()
            .and_then(ConnHandle::peer)
            .is_some_and(|p| p.ip().to_canonical().is_loopback())
    {
        return next.run(req).await;
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(t) if token::equal(t.trim(), &state.token) => {
            if let Some(conn) = req.extensions().get::<ConnHandle>() {
                conn.authenticated();
            }
            next.run(req).await
        }
        Some(_) => ApiError::unauthorized("wrong bearer token: use the token in the control plane's data directory (DATA_DIR/token)").into_response(),
        None => ApiError::unauthorized("missing bearer token: send `Authorization: Bearer <token>` with the token in the control plane's data directory (DATA_DIR/token)").into_response(),
    }
}

/// Reads a request body of at most `limit` bytes within the state's body timeout; the error
/// answer otherwise (on a timeout, one that closes the connection: the rest of the body may
/// still come).
async fn read_body(state: &ApiState, body: Body, limit: usize) -> Result<Bytes, Response> {
    let read = axum::body::to_bytes(body, limit);
    match tokio::time::timeout(state.body_timeout, read).await {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(_)) => Err(ApiError::too_large(limit).into_response()),
        Err(_) => {
            let mut response = ApiError::request_timeout(state.body_timeout).into_response();
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            Err(response)
        }
    }
}

async fn handle(State(state): State<ApiState>, method: Method, req: Request) -> Response {
    // HEAD is GET without the body (hyper leaves the body out).
    let method = if method == Method::HEAD {
        Method::GET
    } else {
        method
    };
    let uri = req.uri().clone();
    let query = uri.query().unwrap_or_default().to_string();
    let body = match read_body(&state, req.into_body(), MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(response) => return response,
    };
    let mut path = match ResourcePath::parse(uri.path()) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    path.show_secrets = query_flag(&query, SHOW_SECRETS);
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

/// The query parameter that shows a Secret's data.
pub const SHOW_SECRETS: &str = "showSecrets";

/// Replaces each value of a Secret's `data` and `stringData` by `<redacted: N bytes>` (N: the
/// decoded size). Not base64, so a redacted Secret written back is refused, not stored.
fn hide_secret_data(value: &mut Value) {
    for field in ["data", "stringData"] {
        let Some(map) = value.get_mut(field).and_then(Value::as_object_mut) else {
            continue;
        };
        for v in map.values_mut() {
            let text = v.as_str().unwrap_or_default();
            let size = if field == "data" {
                // Decoded size of base64 without decoding: 3 bytes per 4 characters.
                let pad = text.bytes().rev().take_while(|b| *b == b'=').count();
                (text.len() / 4 * 3).saturating_sub(pad)
            } else {
                text.len()
            };
            *v = json!(format!("<redacted: {size} bytes>"));
        }
    }
}

/// The stored object as the API returns it: the requested apiVersion, the store's resourceVersion,
/// a Secret's data hidden unless asked for.
fn present(path: &ResourcePath, object: &Object) -> Value {
    let mut value = object.value.clone();
    if path.kind == strait_api::Kind::Secret && !path.show_secrets {
        hide_secret_data(&mut value);
    }
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
    let watcher = match state
        .store
        .watch(Some(&kind), path.namespace.as_deref(), after)
    {
        Ok(w) => w,
        Err(e) => return ApiError::from_store(e).into_response(),
    };
    let stream = WatchStream {
        path: path.clone(),
        initial: initial.into(),
        watcher,
        done: false,
    };
    let stream = futures::stream::unfold(stream, |mut s| async move {
        let line = s.next_line().await?;
        Some((Ok::<_, std::io::Error>(line), s))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// A watch's response body, pulled by the connection as the client reads: nothing is queued
/// between the store's watch (whose memory is bounded) and the socket but the line being
/// written.
struct WatchStream {
    path: ResourcePath,
    initial: std::collections::VecDeque<Object>,
    watcher: Watch,
    done: bool,
}

impl WatchStream {
    fn line(&self, event_type: &str, object: Value) -> Bytes {
        let mut l = json!({"type": event_type, "object": object}).to_string();
        l.push('\n');
        Bytes::from(l)
    }

    /// The next line: the initial objects as ADDED, then each change; when the watch ends
    /// because the watcher fell behind the store's history (or the store failed), a last
    /// ERROR event with a Status, as kube-apiserver sends.
    async fn next_line(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        if let Some(object) = self.initial.pop_front() {
            return Some(self.line("ADDED", present(&self.path, &object)));
        }
        if let Some(Event { event_type, object }) = self.watcher.next().await {
            let t = match event_type {
                EventType::Added => "ADDED",
                EventType::Modified => "MODIFIED",
                EventType::Deleted => "DELETED",
            };
            return Some(self.line(t, present(&self.path, &object)));
        }
        self.done = true;
        let error = match self.watcher.ended() {
            Some(WatchEnd::FellBehind { oldest }) => {
                ApiError::from_store(StoreError::Compacted { oldest: *oldest })
            }
            Some(WatchEnd::Failed(e)) => ApiError::internal(format!("the watch failed: {e}")),
            Some(WatchEnd::StoreClosed) | None => return None,
        };
        Some(self.line("ERROR", error.to_status()))
    }
}

/// The resource path an object of a batch is written to: its kind and version from
/// `apiVersion` and `kind`, its namespace and name from its metadata.
fn batch_path(item: &Value) -> Result<ResourcePath, ApiError> {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let api_version = text(&item["apiVersion"]);
    let kind_name = text(&item["kind"]);
    let kind = strait_api::Kind::from_type(&api_version, &kind_name)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let version = api_version
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let namespace = match item["metadata"]["namespace"].as_str() {
        Some(ns) if kind.namespaced() => Some(ns.to_string()),
        None if kind.namespaced() => {
            return Err(ApiError::bad_request(
                "metadata.namespace is required for a namespaced kind in a batch",
            ));
        }
        _ => None,
    };
    Ok(ResourcePath {
        kind,
        version,
        namespace,
        name: None,
        // The answer never shows a Secret's data.
        show_secrets: false,
    })
}

/// What became of one object of a batch.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Applied {
    Created,
    Configured,
    Unchanged,
}

/// Whether `new` (stamped) says what `old` says, but for resourceVersion and apiVersion.
fn unchanged(old: &Value, new: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(o) = v.as_object_mut() {
            o.remove("apiVersion");
        }
        if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
        }
        v
    };
    strip(old) == strip(new)
}

/// `POST /batch` with `{"items": [object, ...]}`: applies every object as `strait apply`
/// does (create, or replace what differs, or leave it unchanged) in one store transaction.
/// Every object is validated first; one invalid object, or one that changed since it was
/// read, fails the whole batch and nothing is written, also if the control plane dies midway.
/// A later object of the same kind and name replaces an earlier one, as applying them in
/// order would. The answer lists each object with `created`, `configured` or `unchanged`.
async fn batch(State(state): State<ApiState>, req: Request) -> Response {
    let body = match read_body(&state, req.into_body(), MAX_BATCH_BYTES).await {
        Ok(b) => b,
        Err(response) => return response,
    };
    match apply_batch(&state, &body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn apply_batch(state: &ApiState, body: &Bytes) -> Result<Response, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!("the request body is not a JSON object: {e}"))
    })?;
    let Some(Value::Array(items)) = value.get("items").cloned() else {
        return Err(ApiError::bad_request(
            "a batch is a JSON object with an array \"items\" of objects",
        ));
    };
    let mut admitted = Vec::with_capacity(items.len());
    let mut warnings = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let in_item = |mut e: ApiError| {
            e.message = format!("items[{i}]: {}", e.message);
            for c in &mut e.causes {
                c.path = format!("items[{i}].{}", c.path);
            }
            e
        };
        let path = batch_path(&item).map_err(in_item)?;
        let (value, report) = admit(&path, item).map_err(in_item)?;
        let name = value["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        warnings.extend(report.warnings.iter().map(|w| format!("items[{i}]: {w}")));
        admitted.push((path, name, value));
    }
    let store = state.store.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        let mut staged: std::collections::HashMap<Key, Object> = Default::default();
        let mut writes = Vec::new();
        let mut results = Vec::new();
        for (path, name, mut value) in admitted {
            let key = store_key(&path, &name);
            let explicit = value["metadata"]["resourceVersion"]
                .as_str()
                .filter(|rv| !rv.is_empty())
                .map(|rv| {
                    rv.parse::<u64>().map_err(|_| {
                        ApiError::bad_request(format!(
                            "{key}: metadata.resourceVersion {rv:?} is not a number"
                        ))
                    })
                })
                .transpose()?;
            let (existing, pre) = match staged.get(&key) {
                // Written earlier in this batch: replaces that.
                Some(o) => (Some(o.clone()), Precondition::None),
                None => {
                    let existing = store.get(&key).map_err(ApiError::from_store)?;
                    let pre = match (&existing, explicit) {
                        (_, Some(rv)) => Precondition::Revision(rv),
                        (Some(o), None) => Precondition::Revision(o.revision),
                        (None, None) => Precondition::MustNotExist,
                    };
                    (existing, pre)
                }
            };
            stamp(&mut value, existing.as_ref());
            let applied = match &existing {
                None => Applied::Created,
                Some(o) if unchanged(&o.value, &value) && explicit.is_none() => Applied::Unchanged,
                Some(_) => Applied::Configured,
            };
            staged.insert(
                key.clone(),
                Object {
                    key: key.clone(),
                    revision: 0,
                    value: value.clone(),
                },
            );
            if applied != Applied::Unchanged {
                writes.push(Write::Put {
                    key: key.clone(),
                    value,
                    pre,
                });
            }
            results.push((path, key, applied));
        }
        let written = store.write_batch(writes).map_err(ApiError::from_store)?;
        let mut written: std::collections::VecDeque<Object> = written.into();
        let mut items = Vec::with_capacity(results.len());
        for (path, key, applied) in results {
            let object = match applied {
                Applied::Unchanged => store
                    .get(&key)
                    .map_err(ApiError::from_store)?
                    .ok_or_else(|| ApiError::resource_not_found(path.kind, &key.name))?,
                _ => written.pop_front().ok_or_else(|| {
                    ApiError::internal("the store wrote fewer objects than asked")
                })?,
            };
            let result = match applied {
                Applied::Created => "created",
                Applied::Configured => "configured",
                Applied::Unchanged => "unchanged",
            };
            items.push(json!({"result": result, "object": present(&path, &object)}));
        }
        Ok::<_, ApiError>(items)
    })
    .await
    .map_err(|e| ApiError::internal(format!("store task failed: {e}")))??;
    let body = json!({"apiVersion": "v1", "kind": "BatchResult", "items": outcome});
    Ok(json_response(StatusCode::OK, &body, &warnings))
}

#[cfg(test)]
mod tests;
