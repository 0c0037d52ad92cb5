//! details: the book's type, pages, publisher, language and ISBNs (Istio's is Ruby).

use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

/// `GET /details/{id}` and `GET /health`.
pub fn router() -> Router {
    Router::new()
        .route(
            "/health",
            get(|| async { Json(json!({"status": "Details is healthy"})) }),
        )
        .route("/details/{id}", get(details))
}

async fn details(Path(id): Path<String>) -> Response {
    match id.parse::<i64>() {
        Ok(id) => Json(book(id)).into_response(),
        Err(_) => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "please provide numeric product id"})),
        )
            .into_response(),
    }
}

/// Every id is the same book, as in Istio's details.
fn book(id: i64) -> Value {
    json!({
        "id": id,
        "author": "William Shakespeare",
        "year": 1595,
        "type": "paperback",
        "pages": 200,
        "publisher": "PublisherA",
        "language": "English",
        "ISBN-10": "1234567890",
        "ISBN-13": "123-1234567890",
    })
}
