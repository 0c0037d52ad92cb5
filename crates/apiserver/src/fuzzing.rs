//! The entry point of the `api_request` fuzz target (`fuzz/`, built by cargo fuzz with
//! `--cfg fuzzing`), and its corpus replay in every `cargo test`. Not part of the library
//! otherwise (`cfg(any(fuzzing, test))` in lib.rs).

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::Value;
use strait_store::{MemoryStore, Store};
use tower::ServiceExt;

use crate::{ApiState, router};

const TOKEN: &str = "fuzz-token";

/// Arbitrary bytes as up to 8 requests to the API router, driven in process on a fresh memory
/// store. Requests are separated by a 0 byte; in each, the first byte picks the method (bits
/// 0-2) and whether the bearer token is sent (bit 3), the bytes up to the first newline are the
/// path and query, the rest is the body.
///
/// Checks: no panic; no 500 (every failure is the client's, with a Status body); a request
/// without the token is refused and changes nothing; a write that fails changes nothing; an
/// object a write answered with reads back with the same spec and resourceVersion.
pub fn api_request(data: &[u8]) {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    let runtime = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
    });
    runtime.block_on(run(data));
}

async fn run(data: &[u8]) {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let app = router(ApiState::new(store.clone(), TOKEN), Router::new());
    for record in data.split(|b| *b == 0).take(8) {
        let Some((&flags, rest)) = record.split_first() else {
            continue;
        };
        let method = [
            "GET", "POST", "PUT", "DELETE", "PATCH", "GET", "POST", "HEAD",
        ][usize::from(flags & 7)];
        let authorized = flags & 8 != 0;
        let (target, body) = match rest.iter().position(|b| *b == b'\n') {
            Some(at) => (&rest[..at], &rest[at + 1..]),
            None => (rest, &[][..]),
        };
        let Ok(target) = std::str::from_utf8(target) else {
            continue;
        };
        let mut builder = Request::builder().method(method).uri(target);
        if authorized {
            builder = builder.header("authorization", format!("Bearer {TOKEN}"));
        }
        let Ok(request) = builder.body(Body::from(body.to_vec())) else {
            continue;
        };
        let watch = target.contains("watch");
        let before = store.revision();
        let response = app
            .clone()
            .oneshot(request)
            .await
            .expect("the router is infallible");
        let status = response.status();
        assert_ne!(
            status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{method} {target}: 500"
        );
        if !authorized && target.starts_with("/api") {
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {target}");
        }
        if watch && status.is_success() {
            // A watch streams until the client goes: not read here.
            continue;
        }
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("a response body");
        if !status.is_success() {
            assert_eq!(
                store.revision(),
                before,
                "{method} {target}: {status} wrote"
            );
            // The API's own paths answer every failure with a Status (/healthz and the
            // like are plain text).
            let api_path = ["/api/", "/apis/", "/batch"]
                .iter()
                .any(|p| target.starts_with(p));
            if method != "HEAD" && api_path {
                let status_body: Value =
                    serde_json::from_slice(&bytes).expect("errors are Status objects");
                assert_eq!(status_body["kind"], "Status", "{status_body}");
            }
            continue;
        }
        if matches!(method, "POST" | "PUT") && store.revision() > before {
            let written: Value = serde_json::from_slice(&bytes).expect("a written object");
            check_reads_back(&app, target, &written).await;
        }
    }
}

/// The objects a write answered with (one, or a batch's) read back the same from their paths.
async fn check_reads_back(app: &Router, target: &str, written: &Value) {
    let objects: Vec<Value> = match written["items"].as_array() {
        // A batch may write one object more than once: what is stored is its last version.
        Some(items) => {
            let mut last = std::collections::BTreeMap::new();
            for object in items.iter().map(|i| &i["object"]) {
                let id = (
                    object["kind"].to_string(),
                    object["metadata"]["namespace"].to_string(),
                    object["metadata"]["name"].to_string(),
                );
                last.insert(id, object.clone());
            }
            last.into_values().collect()
        }
        None => vec![written.clone()],
    };
    for object in objects {
        let path = self_path(target, &object);
        let request = Request::builder()
            .uri(&path)
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(Body::empty())
            .expect("a request");
        let response = app.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("a body");
        let read: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        assert_eq!(status, StatusCode::OK, "GET {path} after a write: {read}");
        assert_eq!(read["spec"], object["spec"], "{path}");
        assert_eq!(
            read["metadata"]["resourceVersion"], object["metadata"]["resourceVersion"],
            "{path}"
        );
    }
}

/// Where an object the API answered with lives: from its apiVersion, kind, namespace and name.
fn self_path(target: &str, object: &Value) -> String {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let api_version = text(&object["apiVersion"]);
    let kind = strait_api::Kind::from_type(&api_version, &text(&object["kind"]))
        .unwrap_or_else(|e| panic!("{target} answered an object of no known kind: {e}: {object}"));
    let namespace = object["metadata"]["namespace"].as_str();
    let collection = kind.collection_path(namespace);
    format!("{collection}/{}", text(&object["metadata"]["name"]))
}

#[cfg(test)]
mod corpus {
    use strait_testsupport::corpus::{corpus, mutations};

    use super::api_request;

    #[test]
    fn api_request_survives_its_corpus_and_mutations() {
        let seeds = corpus("api_request");
        for input in seeds.iter().chain(&mutations(
            &seeds,
            1500,
            0x4150_4953_4552,
            b"{}[]:,\"/?&=%0\n",
        )) {
            api_request(input);
        }
    }
}
