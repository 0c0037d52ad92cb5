//! The mutating admission webhook (Istio's `/inject`): an AdmissionReview (`admission.k8s.io/v1`
//! or `v1beta1`) in, the same AdmissionReview version out, with a JSON patch that turns the pod
//! into the one `kube-inject` makes. Istio's HTTP behaviour: no body is 400, a content type other
//! than `application/json` is 415, a body that is not an AdmissionReview is a 200 answer with
//! `allowed: false` and the reason.

use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine as _;
use serde_json::{Value, json};

use crate::pod::Injector;
use crate::policy::{Skip, inject_required, owner_of_pod};

/// An HTTP answer, for whatever server carries the webhook.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpResponse {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl HttpResponse {
    fn text(status: u16, message: &str) -> HttpResponse {
        HttpResponse {
            status,
            content_type: "text/plain; charset=utf-8",
            body: format!("{message}\n").into_bytes(),
        }
    }

    fn json(value: &Value) -> HttpResponse {
        HttpResponse {
            status: 200,
            content_type: "application/json",
            body: value.to_string().into_bytes(),
        }
    }
}

/// A request that is not an AdmissionReview Strait can read.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ReviewError(pub String);

/// The request of an AdmissionReview, and the version it came in.
#[derive(Debug, Clone)]
pub struct Review {
    pub api_version: String,
    pub request: Value,
}

/// Reads an AdmissionReview (v1 or v1beta1).
pub fn read_review(body: &[u8]) -> Result<Review, ReviewError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ReviewError(format!("could not decode body: {e}")))?;
    let api_version = v["apiVersion"].as_str().unwrap_or_default();
    if v["kind"] != "AdmissionReview"
        || !matches!(
            api_version,
            "admission.k8s.io/v1" | "admission.k8s.io/v1beta1"
        )
    {
        return Err(ReviewError(format!(
            "could not decode body: expected an AdmissionReview of admission.k8s.io/v1 or v1beta1, got kind {} apiVersion {}",
            v["kind"], v["apiVersion"]
        )));
    }
    if !v["request"].is_object() {
        return Err(ReviewError(
            "could not decode body: the AdmissionReview has no request".into(),
        ));
    }
    Ok(Review {
        api_version: api_version.to_string(),
        request: v["request"].clone(),
    })
}

/// The AdmissionReview answering `review` (its version; v1 when the request was unreadable).
pub fn respond(review: Option<&Review>, mut response: Value) -> Value {
    if let Some(uid) = review.and_then(|r| r.request.get("uid")) {
        response["uid"] = uid.clone();
    } else if response.get("uid").is_none() {
        response["uid"] = json!("");
    }
    json!({
        "apiVersion": review.map_or("admission.k8s.io/v1", |r| r.api_version.as_str()),
        "kind": "AdmissionReview",
        "response": response,
    })
}

/// The common HTTP checks of Istio's webhooks, then `handle` on the review.
pub fn serve_review(
    content_type: Option<&str>,
    body: &[u8],
    handle: impl FnOnce(&Review) -> Value,
) -> HttpResponse {
    if body.is_empty() {
        return HttpResponse::text(400, "no body found");
    }
    if content_type != Some("application/json") {
        return HttpResponse::text(415, "invalid Content-Type, want `application/json`");
    }
    match read_review(body) {
        Ok(review) => {
            let response = handle(&review);
            HttpResponse::json(&respond(Some(&review), response))
        }
        Err(e) => HttpResponse::json(&respond(
            None,
            json!({"allowed": false, "result": {"message": e.0}}),
        )),
    }
}

/// Istio's injection counters (`sidecar_injection_*_total`).
#[derive(Debug, Default)]
pub struct Metrics {
    pub requests: AtomicU64,
    pub success: AtomicU64,
    pub skip: AtomicU64,
    pub failure: AtomicU64,
}

impl Metrics {
    /// Prometheus text.
    pub fn render(&self) -> String {
        let mut s = String::new();
        for (name, help, v) in [
            (
                "sidecar_injection_requests_total",
                "Injection requests.",
                &self.requests,
            ),
            (
                "sidecar_injection_success_total",
                "Successful injections.",
                &self.success,
            ),
            (
                "sidecar_injection_skip_total",
                "Pods not injected (policy).",
                &self.skip,
            ),
            (
                "sidecar_injection_failure_total",
                "Failed injections.",
                &self.failure,
            ),
        ] {
            s.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}\n",
                v.load(Ordering::Relaxed)
            ));
        }
        s
    }
}

/// The injection webhook.
pub struct Webhook {
    pub injector: Injector,
    pub metrics: Metrics,
}

impl Webhook {
    pub fn new(injector: Injector) -> Webhook {
        Webhook {
            injector,
            metrics: Metrics::default(),
        }
    }

    /// `POST /inject`.
    pub fn serve(&self, content_type: Option<&str>, body: &[u8]) -> HttpResponse {
        self.metrics.requests.fetch_add(1, Ordering::Relaxed);
        let r = serve_review(content_type, body, |review| self.admit(&review.request));
        if r.status != 200
            || serde_json::from_slice::<Value>(&r.body)
                .ok()
                .is_some_and(|v| v["response"]["allowed"] == false)
        {
            self.metrics.failure.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    /// The AdmissionResponse for one request: allowed, with a JSON patch when injected.
    pub fn admit(&self, request: &Value) -> Value {
        let mut pod = request["object"].clone();
        if !pod.is_object() {
            return json!({"allowed": false, "result": {"message": "the request holds no pod object"}});
        }
        // Large and irrelevant to injection (Istio drops it too).
        if let Some(m) = pod["metadata"].as_object_mut() {
            m.remove("managedFields");
        }
        let namespace = pod["metadata"]["namespace"]
            .as_str()
            .filter(|n| !n.is_empty())
            .or_else(|| request["namespace"].as_str())
            .unwrap_or("default")
            .to_string();
        if pod["metadata"]["namespace"]
            .as_str()
            .is_none_or(str::is_empty)
        {
            pod["metadata"]["namespace"] = json!(namespace);
        }
        let original = pod.clone();
        let w = &self.injector.values.sidecar_injector_webhook;
        match inject_required(
            &w.policy,
            &w.never_inject_selector,
            &w.always_inject_selector,
            &namespace,
            &pod["metadata"],
            &pod["spec"],
        ) {
            Ok(()) => {}
            Err(why) => {
                self.metrics.skip.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(namespace = %namespace, pod = ?pod["metadata"]["name"], reason = ?why, "injection skipped");
                let _ = matches!(why, Skip::Disabled);
                return json!({"allowed": true});
            }
        }
        let owner = owner_of_pod(&pod, &namespace);
        if let Err(e) = self.injector.inject(&mut pod, &owner) {
            tracing::warn!(namespace = %namespace, pod = ?pod["metadata"]["name"], error = %e, "injection refused");
            return json!({"allowed": false, "result": {"message": format!("injection failed: {e}")}});
        }
        self.metrics.success.fetch_add(1, Ordering::Relaxed);
        let patch = crate::patch::diff(&original, &pod);
        let bytes = serde_json::to_vec(&patch).expect("JSON values serialise");
        json!({
            "allowed": true,
            "patchType": "JSONPatch",
            "patch": base64::engine::general_purpose::STANDARD.encode(bytes),
        })
    }
}

/// The JSON patch of an AdmissionResponse, decoded.
pub fn decode_patch(response: &Value) -> Option<Vec<Value>> {
    let b = base64::engine::general_purpose::STANDARD
        .decode(response["patch"].as_str()?)
        .ok()?;
    serde_json::from_slice(&b).ok()
}
