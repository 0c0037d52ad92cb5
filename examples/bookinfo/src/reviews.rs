//! reviews: two reviews of the book (Istio's is Java). v1 shows no ratings; v2 and v3 ask ratings
//! and give each review its stars, black (v2) or red (v3), or "Ratings service is currently
//! unavailable" when ratings does not answer in time.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::Version;
use crate::client::{Client, Upstream};
use crate::headers::propagate;

/// What a review shows when ratings did not answer with stars for it.
pub const RATINGS_UNAVAILABLE: &str = "Ratings service is currently unavailable";

const REVIEWS: [(&str, &str); 2] = [
    (
        "Reviewer1",
        "Twins, mistaken twice over, and a whole town confused: great fun from the first scene.",
    ),
    (
        "Reviewer2",
        "Quick and very funny, though it has less to say than the later comedies.",
    ),
];

/// The reviews service's settings.
pub struct Reviews {
    pub version: Version,
    pub client: Client,
    pub ratings: Upstream,
    /// `HOSTNAME` and `CLUSTER_NAME`, reported as `podname` and `clustername` like Istio's.
    pub podname: Option<String>,
    pub clustername: Option<String>,
}

impl Reviews {
    /// The stars' colour, or none for v1, which does not call ratings.
    fn star_color(&self) -> Option<&'static str> {
        match self.version {
            Version::V1 => None,
            Version::V2 => Some("black"),
            Version::V3 => Some("red"),
        }
    }

    /// How long to wait for ratings: Istio's reviews waits 10 s with black stars, 2.5 s with red.
    fn ratings_timeout(&self) -> Duration {
        match self.version {
            Version::V3 => Duration::from_millis(2500),
            _ => Duration::from_secs(10),
        }
    }
}

/// `GET /reviews/{id}` and `GET /health`.
pub fn router(reviews: Reviews) -> Router {
    Router::new()
        .route(
            "/health",
            get(|| async { Json(json!({"status": "Reviews is healthy"})) }),
        )
        .route("/reviews/{id}", get(book_reviews))
        .with_state(Arc::new(reviews))
}

async fn book_reviews(
    State(svc): State<Arc<Reviews>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Ok(id) = id.parse::<i64>() else {
        let error = json!({"error": "please provide numeric product id"});
        return (StatusCode::BAD_REQUEST, Json(error)).into_response();
    };
    let stars = match svc.star_color() {
        Some(_) => Some(fetch_ratings(&svc, id, &headers).await),
        None => None,
    };
    let reviews: Vec<Value> = REVIEWS
        .iter()
        .map(|(reviewer, text)| {
            let mut review = json!({"reviewer": reviewer, "text": text});
            if let (Some(stars), Some(color)) = (&stars, svc.star_color()) {
                review["rating"] = match stars.as_ref().and_then(|s| s.get(*reviewer)) {
                    Some(n) => json!({"stars": n, "color": color}),
                    None => json!({"error": RATINGS_UNAVAILABLE}),
                };
            }
            review
        })
        .collect();
    Json(json!({
        "id": id.to_string(),
        "podname": svc.podname,
        "clustername": svc.clustername,
        "reviews": reviews,
    }))
    .into_response()
}

/// The `ratings` object of ratings' answer (reviewer → stars), or `None` when it failed.
async fn fetch_ratings(
    svc: &Reviews,
    id: i64,
    incoming: &HeaderMap,
) -> Option<serde_json::Map<String, Value>> {
    let path = format!("/ratings/{id}");
    let timeout = svc.ratings_timeout();
    let reply = match svc
        .client
        .get(&svc.ratings, &path, propagate(incoming), timeout)
        .await
    {
        Ok(reply) if reply.status == StatusCode::OK => reply,
        Ok(reply) => {
            tracing::warn!(status = %reply.status, "ratings answered with an error");
            return None;
        }
        Err(e) => {
            tracing::warn!(error = %e, "ratings did not answer");
            return None;
        }
    };
    let body: Value = serde_json::from_slice(&reply.body).ok()?;
    let ratings = body.get("ratings")?.as_object()?;
    // Only whole numbers of stars count; anything else is shown as unavailable.
    Some(
        ratings
            .iter()
            .filter(|(_, v)| v.as_i64().is_some())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    )
}
