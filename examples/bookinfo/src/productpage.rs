//! productpage: the front end (Istio's is Python/Flask). Serves the book's page, built from
//! details and reviews, the JSON API over the same calls, and a login that only remembers a name:
//! the `user` cookie, sent on as `end-user` so the mesh can route on it.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::header::{CONTENT_TYPE, COOKIE, LOCATION, REFERER, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::client::{Client, Upstream};
use crate::headers::propagate;
use crate::page;

/// Shown (and returned by the API) when reviews fails twice.
pub const REVIEWS_UNAVAILABLE: &str =
    "Sorry, product reviews are currently unavailable for this book.";
const DETAILS_UNAVAILABLE: &str = "Sorry, product details are currently unavailable for this book.";
const RATINGS_UNAVAILABLE: &str = "Sorry, product ratings are currently unavailable for this book.";

/// Each call's timeout, as in Istio's productpage. Reviews gets one retry: 6 s in all.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
const REVIEWS_ATTEMPTS: usize = 2;

/// The productpage service's settings: where the others are.
pub struct ProductPage {
    pub client: Client,
    pub details: Upstream,
    pub reviews: Upstream,
    pub ratings: Upstream,
}

/// A call's outcome: the status to report and the JSON to show (an `error` when it failed).
pub struct Fetched {
    pub status: StatusCode,
    pub body: Value,
}

impl IntoResponse for Fetched {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

/// The book this shop sells: only one, id 0.
pub fn products() -> Value {
    json!([{
        "id": 0,
        "title": "The Comedy of Errors",
        "descriptionHtml": "<a href=\"https://en.wikipedia.org/wiki/The_Comedy_of_Errors\">Wikipedia</a>: \
            an early <b>William Shakespeare</b> comedy, his shortest, where two pairs of twins \
            separated at birth turn a day in Ephesus into slapstick, puns and mistaken identity.",
    }])
}

/// The pages, the login, and the API.
pub fn router(pp: ProductPage) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/index.html", get(index))
        .route("/health", get(|| async { "Product page is healthy" }))
        .route("/login", post(login))
        .route("/logout", get(logout))
        .route("/productpage", get(front))
        .route("/api/v1/products", get(|| async { Json(products()) }))
        .route("/api/v1/products/{id}", get(api_details))
        .route("/api/v1/products/{id}/reviews", get(api_reviews))
        .route("/api/v1/products/{id}/ratings", get(api_ratings))
        .with_state(Arc::new(pp))
}

impl ProductPage {
    /// `GET path` on `upstream`, `attempts` times at most until one answers 200.
    async fn fetch(
        &self,
        upstream: &Upstream,
        path: &str,
        headers: &HeaderMap,
        attempts: usize,
        error: &str,
    ) -> Fetched {
        let mut status = StatusCode::INTERNAL_SERVER_ERROR;
        for attempt in 1..=attempts {
            match self
                .client
                .get(upstream, path, headers.clone(), CALL_TIMEOUT)
                .await
            {
                Ok(reply) if reply.status == StatusCode::OK => {
                    match serde_json::from_slice(&reply.body) {
                        Ok(body) => {
                            return Fetched {
                                status: StatusCode::OK,
                                body,
                            };
                        }
                        Err(e) => tracing::warn!(path, attempt, error = %e, "not JSON"),
                    }
                    status = StatusCode::INTERNAL_SERVER_ERROR;
                }
                Ok(reply) => {
                    tracing::warn!(path, attempt, status = %reply.status, "error status");
                    status = reply.status;
                }
                Err(e) => {
                    tracing::warn!(path, attempt, error = %e, "call failed");
                    status = StatusCode::INTERNAL_SERVER_ERROR;
                }
            }
        }
        Fetched {
            status,
            body: json!({ "error": error }),
        }
    }

    async fn details(&self, id: &str, headers: &HeaderMap) -> Fetched {
        let path = format!("/details/{id}");
        self.fetch(&self.details, &path, headers, 1, DETAILS_UNAVAILABLE)
            .await
    }

    async fn reviews(&self, id: &str, headers: &HeaderMap) -> Fetched {
        let path = format!("/reviews/{id}");
        self.fetch(
            &self.reviews,
            &path,
            headers,
            REVIEWS_ATTEMPTS,
            REVIEWS_UNAVAILABLE,
        )
        .await
    }

    async fn ratings(&self, id: &str, headers: &HeaderMap) -> Fetched {
        let path = format!("/ratings/{id}");
        self.fetch(&self.ratings, &path, headers, 1, RATINGS_UNAVAILABLE)
            .await
    }
}

/// The headers for calls made on behalf of `incoming`: the propagated ones, and `end-user` set
/// to the logged-in user (an incoming `end-user` passes through when nobody is logged in).
fn forward_headers(incoming: &HeaderMap) -> HeaderMap {
    let mut out = propagate(incoming);
    if let Some(value) = user(incoming).and_then(|u| HeaderValue::from_str(&u).ok()) {
        out.insert("end-user", value);
    }
    out
}

/// The logged-in user: the `user` cookie, if set and not empty.
fn user(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix("user="))
        .map(|v| percent_decode(v.trim_matches('"'), false))
        .filter(|u| !u.is_empty())
}

async fn front(State(pp): State<Arc<ProductPage>>, headers: HeaderMap) -> Html<String> {
    let forward = forward_headers(&headers);
    let details = pp.details("0", &forward).await;
    let reviews = pp.reviews("0", &forward).await;
    let product = products()[0].clone();
    Html(page::product_page(
        &product,
        user(&headers).as_deref(),
        &details,
        &reviews,
    ))
}

async fn index() -> Html<String> {
    Html(page::index())
}

/// `POST /login` with the form field `username`: remembers the name in the `user` cookie and
/// goes back to the page the form was on.
async fn login(headers: HeaderMap, body: Bytes) -> Response {
    let form = String::from_utf8_lossy(&body);
    let username = form
        .split('&')
        .find_map(|pair| pair.strip_prefix("username="))
        .map(|v| percent_decode(v, true))
        .unwrap_or_default();
    let cookie = format!("user={}; Path=/", percent_encode(&username));
    back(&headers, cookie)
}

/// `GET /logout`: forgets the user.
async fn logout(headers: HeaderMap) -> Response {
    back(
        &headers,
        "user=; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=0; Path=/".into(),
    )
}

/// A redirect to the referring page (the product page if none), setting `cookie`.
fn back(headers: &HeaderMap, cookie: String) -> Response {
    let to = headers
        .get(REFERER)
        .cloned()
        .unwrap_or(HeaderValue::from_static("/productpage"));
    let mut resp = StatusCode::FOUND.into_response();
    resp.headers_mut().insert(LOCATION, to);
    if let Ok(cookie) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(SET_COOKIE, cookie);
    }
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/html"));
    resp
}

async fn api_details(
    State(pp): State<Arc<ProductPage>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !numeric(&id) {
        return bad_id();
    }
    pp.details(&id, &forward_headers(&headers))
        .await
        .into_response()
}

async fn api_reviews(
    State(pp): State<Arc<ProductPage>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !numeric(&id) {
        return bad_id();
    }
    pp.reviews(&id, &forward_headers(&headers))
        .await
        .into_response()
}

async fn api_ratings(
    State(pp): State<Arc<ProductPage>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !numeric(&id) {
        return bad_id();
    }
    pp.ratings(&id, &forward_headers(&headers))
        .await
        .into_response()
}

/// Product ids are numbers; anything else would not make a URL path segment anyway.
fn numeric(id: &str) -> bool {
    !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit())
}

fn bad_id() -> Response {
    let error = json!({"error": "please provide numeric product id"});
    (StatusCode::BAD_REQUEST, Json(error)).into_response()
}

/// Decodes `%XX` (and `+` as a space in form bodies); malformed escapes stay as they are.
fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let hex = |b: &u8| (*b as char).to_digit(16).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| Some(hex(bytes.get(i + 1)?)? * 16 + hex(bytes.get(i + 2)?)?))
            .flatten();
        match (escaped, bytes[i]) {
            (Some(b), _) => {
                out.push(b);
                i += 2;
            }
            (None, b'+') if plus_is_space => out.push(b' '),
            (None, b) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Escapes everything but letters, digits and `-._~@` so any name fits in a cookie.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cookies(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(COOKIE, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn the_user_comes_from_the_user_cookie() {
        assert_eq!(
            user(&cookies(&["a=1; user=jason; b=2"])).as_deref(),
            Some("jason")
        );
        assert_eq!(
            user(&cookies(&["a=1", "user=jason"])).as_deref(),
            Some("jason")
        );
        assert_eq!(user(&cookies(&["username=x; user="])), None);
        assert_eq!(
            user(&cookies(&["user=J%C3%A9r%C3%B4me%20B"])).as_deref(),
            Some("Jérôme B")
        );
        assert_eq!(user(&HeaderMap::new()), None);
    }

    #[test]
    fn end_user_is_the_logged_in_user() {
        let mut h = cookies(&["user=jason"]);
        h.insert("end-user", HeaderValue::from_static("someone-else"));
        h.insert("x-request-id", HeaderValue::from_static("r-1"));
        let out = forward_headers(&h);
        assert_eq!(out["end-user"], "jason");
        assert_eq!(out["x-request-id"], "r-1");
        assert_eq!(out["cookie"], "user=jason");
        assert!(!forward_headers(&HeaderMap::new()).contains_key("end-user"));
    }

    #[test]
    fn names_survive_the_cookie_round_trip() {
        for name in ["jason", "a b+c;d=e\"f", "Jérôme", "100%"] {
            assert_eq!(percent_decode(&percent_encode(name), false), name);
        }
        assert_eq!(percent_decode("a+b%2Bc%", true), "a b+c%");
        assert_eq!(percent_decode("%zz%4", false), "%zz%4");
    }
}
