//! productpage's HTML: the book, its details and reviews with their stars, and the sign-in form.
//! The markup keeps the class names of Istio's page (`glyphicon-star`, `glyphicon-star-empty`,
//! `<font color="...">`) so scripts written against Istio's Bookinfo read it the same way.

use std::fmt::Write;

use serde_json::Value;

use crate::productpage::Fetched;

const STYLE: &str = "body{font-family:sans-serif;margin:0}\
nav{background:#222;color:#ddd;padding:10px 20px;display:flex;justify-content:space-between}\
nav a{color:#9cf}.row{display:flex;gap:40px;padding:0 20px}.col{flex:1}\
h3,h4{text-align:center;color:#337ab7}blockquote{border-left:4px solid #eee;margin:10px 0;padding:5px 15px}\
.glyphicon{font-size:1.2em}form{display:inline}";

/// The product page.
pub fn product_page(
    product: &Value,
    user: Option<&str>,
    details: &Fetched,
    reviews: &Fetched,
) -> String {
    let mut html = String::with_capacity(4096);
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html>\n<head>\n<meta charset=\"utf-8\">\n\
         <title>Simple Bookstore App</title>\n<style>{STYLE}</style>\n</head>\n<body>\n\
         <nav>\n<span class=\"navbar-brand\">BookInfo Sample</span>\n"
    );
    match user {
        Some(user) => {
            let _ = writeln!(
                html,
                "<span class=\"navbar-text\">{} ( <a href=\"logout\">sign out</a> )</span>",
                escape(user)
            );
        }
        None => html.push_str(
            "<form method=\"post\" action=\"login\" name=\"login_form\">\
             <input type=\"text\" name=\"username\" placeholder=\"User Name\"> \
             <input type=\"password\" name=\"passwd\" placeholder=\"Password\"> \
             <button type=\"submit\">Sign in</button></form>\n",
        ),
    }
    html.push_str("</nav>\n");
    let _ = write!(
        html,
        "<h3>{}</h3>\n<p style=\"padding:0 20px\">Summary: {}</p>\n<div class=\"row\">\n",
        escape(text(&product["title"])),
        // The description is this service's own HTML.
        text(&product["descriptionHtml"]),
    );
    html.push_str("<div class=\"col\">\n");
    if details.status == 200 {
        let d = &details.body;
        html.push_str("<h4>Book Details</h4>\n<dl>\n");
        for (label, key) in [
            ("Type", "type"),
            ("Pages", "pages"),
            ("Publisher", "publisher"),
            ("Language", "language"),
            ("ISBN-10", "ISBN-10"),
            ("ISBN-13", "ISBN-13"),
        ] {
            let _ = writeln!(
                html,
                "<dt>{label}:</dt><dd>{}</dd>",
                escape(&plain(&d[key]))
            );
        }
        html.push_str("</dl>\n");
    } else {
        html.push_str("<h4>Error fetching product details!</h4>\n");
        error_line(&mut html, &details.body);
    }
    html.push_str("</div>\n<div class=\"col\">\n");
    if reviews.status == 200 {
        html.push_str("<h4>Book Reviews</h4>\n");
        let empty = Vec::new();
        for review in reviews.body["reviews"].as_array().unwrap_or(&empty) {
            review_block(&mut html, review);
        }
    } else {
        html.push_str("<h4>Error fetching product reviews!</h4>\n");
        error_line(&mut html, &reviews.body);
    }
    html.push_str("</div>\n</div>\n</body>\n</html>\n");
    html
}

fn review_block(html: &mut String, review: &Value) {
    let _ = writeln!(
        html,
        "<blockquote>\n<p>{}</p>\n<small>{}</small>",
        escape(text(&review["text"])),
        escape(text(&review["reviewer"]))
    );
    let rating = &review["rating"];
    match rating["stars"].as_u64().filter(|&n| n > 0) {
        Some(stars) => {
            let stars = stars.min(5) as usize;
            let _ = write!(
                html,
                "<font color=\"{}\">\n{}{}</font>\n",
                escape(text(&rating["color"])),
                "<span class=\"glyphicon glyphicon-star\">&#9733;</span>\n".repeat(stars),
                "<span class=\"glyphicon glyphicon-star-empty\">&#9734;</span>\n".repeat(5 - stars),
            );
        }
        None => {
            if let Some(error) = rating["error"].as_str() {
                let _ = writeln!(html, "<p><i>{}</i></p>", escape(error));
            }
        }
    }
    html.push_str("</blockquote>\n");
}

fn error_line(html: &mut String, body: &Value) {
    if let Some(error) = body["error"].as_str() {
        let _ = writeln!(html, "<p>{}</p>", escape(error));
    }
}

/// The index page: what this app is and where to go.
pub fn index() -> String {
    format!(
        "<!DOCTYPE html>\n<html>\n<head>\n<meta charset=\"utf-8\">\n\
         <title>Simple Bookstore App</title>\n<style>{STYLE}</style>\n</head>\n<body>\n\
         <nav><span class=\"navbar-brand\">BookInfo Sample</span></nav>\n\
         <div style=\"padding:0 20px\">\n<h3>Hello! This is a simple bookstore application \
         of four services: productpage, details, reviews (v1, v2, v3) and ratings.</h3>\n\
         <p><a href=\"productpage?u=normal\">Normal user</a></p>\n\
         <p><a href=\"productpage?u=test\">Test user</a></p>\n\
         <p>API: <a href=\"api/v1/products\">api/v1/products</a></p>\n</div>\n</body>\n</html>\n"
    )
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// A JSON scalar as text: strings without quotes, numbers as they are.
fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// HTML-escapes text that came from a request or another service.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;
    use serde_json::json;

    fn fetched(status: u16, body: Value) -> Fetched {
        Fetched {
            status: StatusCode::from_u16(status).unwrap(),
            body,
        }
    }

    #[test]
    fn stars_follow_the_rating_and_text_is_escaped() {
        let reviews = json!({"reviews": [
            {"reviewer": "R<1>", "text": "a & b", "rating": {"stars": 3, "color": "red"}},
            {"reviewer": "R2", "text": "t", "rating": {"error": "Ratings service is currently unavailable"}},
            {"reviewer": "R3", "text": "t"},
        ]});
        let page = product_page(
            &json!({"title": "T"}),
            Some("<jason>"),
            &fetched(200, json!({"pages": 200, "type": "paperback"})),
            &fetched(200, reviews),
        );
        assert_eq!(page.matches("glyphicon-star\"").count(), 3, "{page}");
        assert_eq!(page.matches("glyphicon-star-empty\"").count(), 2, "{page}");
        assert!(page.contains("<font color=\"red\">"), "{page}");
        assert!(page.contains("<i>Ratings service is currently unavailable</i>"));
        assert!(page.contains("R&lt;1&gt;") && page.contains("a &amp; b"));
        assert!(page.contains("&lt;jason&gt; ( <a href=\"logout\">sign out</a> )"));
        assert!(page.contains("<dd>200</dd>") && page.contains("<dd>paperback</dd>"));
        assert!(!page.contains("login_form"));
    }

    #[test]
    fn failed_calls_show_their_error() {
        let page = product_page(
            &json!({"title": "T"}),
            None,
            &fetched(503, json!({"error": "no details"})),
            &fetched(500, json!({"error": "no reviews"})),
        );
        assert!(page.contains("Error fetching product details!</h4>\n<p>no details</p>"));
        assert!(page.contains("Error fetching product reviews!</h4>\n<p>no reviews</p>"));
        assert!(page.contains("login_form"));
    }
}
