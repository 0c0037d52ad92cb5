//! ratings: how many stars each reviewer gave (Istio's is Node.js). Ratings live in memory; a
//! `POST /ratings/{id}` with `{"Reviewer1": 3, "Reviewer2": 1}` replaces a product's ratings.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Map, Value, json};

type Ratings = Arc<Mutex<HashMap<i64, Map<String, Value>>>>;

/// `GET|POST /ratings/{id}` and `GET /health`.
pub fn router() -> Router {
    Router::new()
        .route(
            "/health",
            get(|| async { Json(json!({"status": "Ratings is healthy"})) }),
        )
        .route("/ratings/{id}", get(read).post(write))
        .with_state(Ratings::default())
}

async fn read(State(ratings): State<Ratings>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<i64>() else {
        return bad("please provide numeric product ID");
    };
    let stored = ratings.lock().expect("ratings lock").get(&id).cloned();
    let ratings = stored.unwrap_or_else(|| {
        let mut defaults = Map::new();
        defaults.insert("Reviewer1".into(), 5.into());
        defaults.insert("Reviewer2".into(), 4.into());
        defaults
    });
    Json(json!({"id": id, "ratings": ratings})).into_response()
}

async fn write(State(ratings): State<Ratings>, Path(id): Path<String>, body: Bytes) -> Response {
    let Ok(id) = id.parse::<i64>() else {
        return bad("please provide numeric product ID");
    };
    let Ok(Value::Object(new)) = serde_json::from_slice(&body) else {
        return bad("please provide valid ratings JSON");
    };
    ratings
        .lock()
        .expect("ratings lock")
        .insert(id, new.clone());
    Json(json!({"id": id, "ratings": new})).into_response()
}

fn bad(error: &str) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"error": error}))).into_response()
}
