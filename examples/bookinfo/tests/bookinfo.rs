//! Bookinfo's four services as processes on loopback, finding each other through the
//! environment variables Istio's Bookinfo reads, checked for the behaviour Istio's tasks rely on.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::{
    BlackHole, Bookinfo, RecordingProxy, Service, ShownReview, get, page, set_ratings,
    shown_reviews, vars,
};

const REVIEWS_UNAVAILABLE: &str = "Sorry, product reviews are currently unavailable for this book.";
const RATINGS_UNAVAILABLE: &str = "Ratings service is currently unavailable";

/// The review texts reviews serves, to find them on the page.
async fn review_texts(reviews: &Service) -> Vec<String> {
    let json = get(&reviews.url("/reviews/0"), &[]).await.json();
    json["reviews"]
        .as_array()
        .expect("reviews has a reviews array")
        .iter()
        .map(|r| r["text"].as_str().expect("a review has text").to_string())
        .collect()
}

fn stars(full: usize, color: &str) -> (usize, usize, Option<String>) {
    (full, 5 - full, Some(color.to_string()))
}

fn star_view(r: &ShownReview) -> (usize, usize, Option<String>) {
    (r.full_stars, r.empty_stars, r.color.clone())
}

#[tokio::test]
async fn reviews_v1_shows_the_reviews_without_stars_and_never_calls_ratings() {
    // v1 must not need ratings: point it at a port where nothing listens.
    let nowhere = BlackHole::start().await;
    let mut env = nowhere.env_as("ratings");
    env.extend(vars(&[("SERVICE_VERSION", "v1")]));
    let reviews = Service::start("reviews", &env).await;
    let details = Service::start("details", &[]).await;
    let mut env = details.env();
    env.extend(reviews.env());
    let productpage = Service::start("productpage", &env).await;

    let texts = review_texts(&reviews).await;
    assert_eq!(texts.len(), 2);
    let json = get(&reviews.url("/reviews/0"), &[]).await.json();
    assert!(
        json["reviews"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r.get("rating").is_none())
    );

    let html = page(&productpage, &[]).await;
    let shown = shown_reviews(&html);
    let shown_texts: Vec<_> = shown.iter().map(|r| r.text.clone()).collect();
    assert_eq!(shown_texts, texts, "{html}");
    for r in &shown {
        assert_eq!(
            (r.full_stars, r.empty_stars, &r.error),
            (0, 0, &None),
            "{html}"
        );
    }
    assert!(
        html.contains("Book Details") && html.contains("paperback"),
        "{html}"
    );
    assert_eq!(nowhere.connections(), 0, "reviews v1 called ratings");
}

#[tokio::test]
async fn reviews_v2_shows_black_stars_from_ratings() {
    let bookinfo = Bookinfo::start("v2").await;
    set_ratings(&bookinfo.ratings, 3, 1).await;
    let html = bookinfo.page(&[]).await;
    let shown: Vec<_> = shown_reviews(&html).iter().map(star_view).collect();
    assert_eq!(shown, [stars(3, "black"), stars(1, "black")], "{html}");
    let texts = review_texts(&bookinfo.reviews).await;
    let shown_texts: Vec<_> = shown_reviews(&html).into_iter().map(|r| r.text).collect();
    assert_eq!(shown_texts, texts);
}

#[tokio::test]
async fn reviews_v3_shows_red_stars_from_ratings() {
    let bookinfo = Bookinfo::start("v3").await;
    let default = bookinfo.page(&[]).await;
    let ratings = get(&bookinfo.ratings.url("/ratings/0"), &[]).await.json();
    let r1 = ratings["ratings"]["Reviewer1"].as_u64().unwrap() as usize;
    let r2 = ratings["ratings"]["Reviewer2"].as_u64().unwrap() as usize;
    let shown: Vec<_> = shown_reviews(&default).iter().map(star_view).collect();
    assert_eq!(shown, [stars(r1, "red"), stars(r2, "red")], "{default}");

    set_ratings(&bookinfo.ratings, 2, 5).await;
    let html = bookinfo.page(&[]).await;
    let shown: Vec<_> = shown_reviews(&html).iter().map(star_view).collect();
    assert_eq!(shown, [stars(2, "red"), stars(5, "red")], "{html}");
}

#[tokio::test]
async fn api_serves_products_details_reviews_and_ratings_as_json() {
    let bookinfo = Bookinfo::start("v2").await;
    let pp = &bookinfo.productpage;
    let products = get(&pp.url("/api/v1/products"), &[]).await;
    assert_eq!(products.status, 200);
    assert_eq!(products.json()[0]["id"], 0);
    assert!(products.json()[0]["title"].is_string());

    let via_pp = get(&pp.url("/api/v1/products/0"), &[]).await;
    let direct = get(&bookinfo.details.url("/details/0"), &[]).await;
    assert_eq!((via_pp.status, via_pp.json()), (200, direct.json()));
    assert_eq!(direct.json()["ISBN-10"].as_str().map(str::len), Some(10));

    set_ratings(&bookinfo.ratings, 4, 2).await;
    let reviews = get(&pp.url("/api/v1/products/0/reviews"), &[]).await;
    assert_eq!(reviews.status, 200);
    let json = reviews.json();
    let ratings: Vec<&Value> = (0..2).map(|i| &json["reviews"][i]["rating"]).collect();
    assert_eq!(ratings[0]["stars"], 4);
    assert_eq!(ratings[1]["stars"], 2);
    assert_eq!(ratings[0]["color"], "black");

    let ratings = get(&pp.url("/api/v1/products/0/ratings"), &[]).await;
    assert_eq!(ratings.status, 200);
    assert_eq!(ratings.json()["ratings"]["Reviewer1"], 4);

    for (svc, path) in [
        (&bookinfo.productpage, "/health"),
        (&bookinfo.details, "/health"),
        (&bookinfo.reviews, "/health"),
        (&bookinfo.ratings, "/health"),
    ] {
        assert_eq!(
            get(&svc.url(path), &[]).await.status,
            200,
            "{} {path}",
            svc.name
        );
    }
    assert_eq!(get(&pp.url("/api/v1/products/x"), &[]).await.status, 400);
    assert_eq!(
        get(&bookinfo.details.url("/details/x"), &[]).await.status,
        400
    );
}

#[tokio::test]
async fn reviews_down_shows_the_reviews_unavailable_message() {
    let mut bookinfo = Bookinfo::start("v2").await;
    let before = bookinfo.page(&[]).await;
    assert!(before.contains("Book Reviews") && !before.contains(REVIEWS_UNAVAILABLE));

    bookinfo.reviews.kill().await;
    let html = bookinfo.page(&[]).await;
    assert!(html.contains("Error fetching product reviews!"), "{html}");
    assert!(html.contains(REVIEWS_UNAVAILABLE), "{html}");
    assert!(shown_reviews(&html).is_empty(), "{html}");
    assert!(
        html.contains("Book Details"),
        "details must still show: {html}"
    );

    let api = get(&bookinfo.productpage.url("/api/v1/products/0/reviews"), &[]).await;
    assert_eq!(api.status, 500);
    assert_eq!(api.json()["error"], REVIEWS_UNAVAILABLE);
}

#[tokio::test]
async fn ratings_down_shows_the_ratings_unavailable_message_with_v2() {
    let mut bookinfo = Bookinfo::start("v2").await;
    let before = bookinfo.page(&[]).await;
    assert!(
        shown_reviews(&before).iter().all(|r| r.full_stars > 0),
        "{before}"
    );

    bookinfo.ratings.kill().await;
    let html = bookinfo.page(&[]).await;
    let shown = shown_reviews(&html);
    assert_eq!(shown.len(), 2, "{html}");
    for r in &shown {
        assert_eq!(r.error.as_deref(), Some(RATINGS_UNAVAILABLE), "{html}");
        assert_eq!((r.full_stars, r.empty_stars), (0, 0), "{html}");
    }
    assert!(!html.contains(REVIEWS_UNAVAILABLE), "{html}");
}

/// Istio's fault-injection task: a 7 s delay on ratings. reviews v2 waits 10 s for ratings, so
/// productpage (3 s, one retry) gives up first; reviews v3 waits 2.5 s and shows the ratings error.
#[tokio::test]
async fn slow_ratings_means_reviews_unavailable_with_v2_and_ratings_unavailable_with_v3() {
    let slow_ratings = BlackHole::start().await;
    let mut env = slow_ratings.env_as("ratings");
    env.extend(vars(&[("SERVICE_VERSION", "v2")]));
    let reviews_v2 = Service::start("reviews", &env).await;
    let mut env = slow_ratings.env_as("ratings");
    env.extend(vars(&[("SERVICE_VERSION", "v3")]));
    let reviews_v3 = Service::start("reviews", &env).await;
    let details = Service::start("details", &[]).await;
    let mut env = details.env();
    env.extend(reviews_v2.env());
    let productpage = Service::start("productpage", &env).await;
    let mut env = details.env();
    env.extend(reviews_v3.env());
    let productpage_v3 = Service::start("productpage", &env).await;

    let v2_page = async {
        let start = Instant::now();
        let html = page(&productpage, &[]).await;
        (start.elapsed(), html)
    };
    let v3_reviews = async {
        let start = Instant::now();
        let json = get(&reviews_v3.url("/reviews/0"), &[]).await.json();
        (start.elapsed(), json)
    };
    let v3_page = page(&productpage_v3, &[]);
    let ((v2_took, html), (v3_took, json), v3_html) = tokio::join!(v2_page, v3_reviews, v3_page);

    assert!(html.contains(REVIEWS_UNAVAILABLE), "{html}");
    assert!(
        v2_took >= Duration::from_secs(6) && v2_took < Duration::from_secs(9),
        "productpage gives reviews 3 s twice, took {v2_took:?}"
    );
    for review in json["reviews"].as_array().unwrap() {
        assert_eq!(review["rating"]["error"], RATINGS_UNAVAILABLE, "{json}");
    }
    // Within productpage's 3 s, so the page shows the ratings error, not the reviews one.
    assert!(
        v3_took >= Duration::from_millis(2500) && v3_took < Duration::from_secs(3),
        "reviews v3 gives ratings 2.5 s, took {v3_took:?}"
    );
    let shown = shown_reviews(&v3_html);
    assert_eq!(shown.len(), 2, "{v3_html}");
    assert!(
        shown
            .iter()
            .all(|r| r.error.as_deref() == Some(RATINGS_UNAVAILABLE)),
        "{v3_html}"
    );
}

#[tokio::test]
async fn a_silent_reviews_gets_3_seconds_and_one_retry() {
    let silent = BlackHole::start().await;
    let details = Service::start("details", &[]).await;
    let mut env = details.env();
    env.extend(silent.env_as("reviews"));
    let productpage = Service::start("productpage", &env).await;

    let start = Instant::now();
    let html = page(&productpage, &[]).await;
    let took = start.elapsed();
    assert!(html.contains(REVIEWS_UNAVAILABLE), "{html}");
    assert_eq!(silent.connections(), 2, "one call and one retry");
    assert!(
        took >= Duration::from_secs(6) && took < Duration::from_secs(9),
        "two attempts of 3 s, took {took:?}"
    );
}

/// The no-capture mode: every call goes to `HTTP_PROXY` in absolute form, by service name, and
/// carries the trace headers and jason's `end-user` down to ratings.
#[tokio::test]
async fn calls_go_through_http_proxy_with_propagated_headers_and_end_user() {
    let proxy = RecordingProxy::start().await;
    let through_proxy = vars(&[("HTTP_PROXY", &proxy.url())]);
    let ratings = Service::start("ratings", &[]).await;
    let details = Service::start("details", &[]).await;
    let mut env = through_proxy.clone();
    env.extend(vars(&[("SERVICE_VERSION", "v2")]));
    let reviews = Service::start("reviews", &env).await;
    let productpage = Service::start("productpage", &through_proxy).await;
    for svc in [&ratings, &details, &reviews] {
        proxy.route(&format!("{}:9080", svc.name), svc.addr);
    }
    set_ratings(&ratings, 2, 3).await;

    // Log in as jason, the way the page's form does.
    let referer = productpage.url("/productpage");
    let login = strait_testsupport::http_request(
        hyper::Method::POST,
        &productpage.url("/login"),
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("referer", &referer),
        ],
        "username=jason&passwd=",
    )
    .await
    .expect("POST /login");
    assert_eq!(login.status, 302);
    assert_eq!(login.header("location"), Some(referer.as_str()));
    let set_cookie = login.header("set-cookie").expect("login sets a cookie");
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    assert_eq!(cookie, "user=jason");

    let trace = [
        ("x-request-id", "4f1c7e2a-jason-page"),
        (
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ),
        ("tracestate", "congo=t61rcWkgMzE"),
        ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
        ("x-b3-spanid", "e457b5a2e4d86bd1"),
        ("x-b3-parentspanid", "05e3ac9a4f6e3b90"),
        ("x-b3-sampled", "1"),
        ("x-b3-flags", "0"),
        ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
        ("x-ot-span-context", "ot-context-1"),
        ("user-agent", "bookinfo-test/1"),
    ];
    let mut headers = trace.to_vec();
    headers.push(("cookie", &cookie));
    let html = page(&productpage, &headers).await;
    assert!(
        html.contains("jason ( <a href=\"logout\">sign out</a> )"),
        "{html}"
    );
    let shown: Vec<_> = shown_reviews(&html).iter().map(star_view).collect();
    assert_eq!(shown, [stars(2, "black"), stars(3, "black")], "{html}");

    let seen = proxy.seen();
    let targets: Vec<&str> = seen.iter().map(|s| s.target.as_str()).collect();
    for target in [
        "http://details:9080/details/0",
        "http://reviews:9080/reviews/0",
        "http://ratings:9080/ratings/0",
    ] {
        let s = seen
            .iter()
            .find(|s| s.target == target)
            .unwrap_or_else(|| panic!("no absolute-form request for {target}: {targets:?}"));
        let host = target.trim_start_matches("http://").split('/').next();
        assert_eq!(s.header("host"), host, "{target}");
        assert_eq!(s.header("end-user"), Some("jason"), "{target}");
        assert_eq!(s.header("cookie"), Some(cookie.as_str()), "{target}");
        for (name, value) in trace {
            assert_eq!(s.header(name), Some(value), "{name} on {target}");
        }
    }

    // Signed out, nobody is named on the calls.
    let logout = get(&productpage.url("/logout"), &[("cookie", &cookie)]).await;
    assert_eq!(logout.status, 302);
    let cleared = logout
        .header("set-cookie")
        .expect("logout clears the cookie");
    assert!(
        cleared.starts_with("user=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
    let html = page(&productpage, &[("x-request-id", "anonymous-page")]).await;
    assert!(html.contains("login_form"), "{html}");
    let anonymous: Vec<_> = proxy
        .seen()
        .into_iter()
        .filter(|s| s.header("x-request-id") == Some("anonymous-page"))
        .collect();
    assert_eq!(anonymous.len(), 3, "details, reviews and ratings");
    assert!(anonymous.iter().all(|s| s.header("end-user").is_none()));
}

#[tokio::test]
async fn no_proxy_keeps_listed_hosts_off_the_proxy() {
    let proxy = RecordingProxy::start().await;
    let details = Service::start("details", &[]).await;
    let reviews = Service::start("reviews", &[]).await;
    proxy.route("reviews:9080", reviews.addr);
    let mut env = details.env();
    env.extend(vars(&[
        ("http_proxy", &proxy.url()),
        ("no_proxy", "localhost,127.0.0.1"),
    ]));
    let productpage = Service::start("productpage", &env).await;

    let html = page(&productpage, &[]).await;
    assert!(
        html.contains("Book Details") && html.contains("Book Reviews"),
        "{html}"
    );
    let targets: Vec<String> = proxy.seen().into_iter().map(|s| s.target).collect();
    assert_eq!(targets, ["http://reviews:9080/reviews/0"]);
}
