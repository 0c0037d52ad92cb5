//! The headers a proxy adds, removes or rewrites by default, Envoy against strait-proxy: the same
//! mesh (client sidecar → server sidecar → app, and ingress gateway → server sidecar → app) runs
//! with each data plane, and what the client and the app see is compared header by header.
//!
//! Istio's defaults are the reference (Envoy fed by Strait's translator): `server: istio-envoy`
//! from inbound and gateway listeners, Envoy's `server: envoy` from a sidecar's outbound ones,
//! `x-envoy-upstream-service-time` on every routed response, `x-request-id` generated when
//! missing, `x-forwarded-proto`, and `x-forwarded-for` only where the proxy is the edge.

use strait_e2e as support;

use std::collections::BTreeMap;

use strait_testsupport::{Backend, HttpReply};
use support::mesh::{DataPlane, Mesh};

/// What one data plane's mesh showed.
#[derive(Debug)]
struct Seen {
    /// Response headers at the client, through its sidecar and the server's.
    sidecar_response: BTreeMap<String, String>,
    /// Request headers at the app, from the client's sidecar through the server's.
    sidecar_request: BTreeMap<String, String>,
    /// Response headers at the client, through the gateway and the server's sidecar.
    gateway_response: BTreeMap<String, String>,
    /// Request headers at the app, through the gateway.
    gateway_request: BTreeMap<String, String>,
}

fn headers(reply: &HttpReply) -> BTreeMap<String, String> {
    reply
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                v.to_str().unwrap_or("<binary>").to_string(),
            )
        })
        .collect()
}

const GATEWAY: &str = "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: web-gateway}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ['*']
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web}
spec:
  hosts: ['*']
  gateways: [web-gateway]
  http:
  - route:
    - destination: {host: web, port: {number: 9080}}
";

async fn observe(plane: DataPlane) -> Seen {
    let mesh = Mesh::new();
    mesh.service("web", 9080, "http");
    let app = Backend::http("web", "v1");
    let _server = mesh
        .server_sidecar(plane, "web", "v1", 9080, "HTTP", app.addr())
        .await;
    let client = mesh.sidecar(plane, "client", "app=client").await;
    let reply = client
        .get_until("http://web:9080/through-sidecars", &[], "web", |r| {
            r.status == 200
        })
        .await;
    let sidecar_response = headers(&reply);
    let sidecar_request = reply.json()["headers"]
        .as_object()
        .expect("the app echoes the request's headers")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
        .collect();

    mesh.apply_yaml("gateway.yaml", GATEWAY);
    let gw = mesh
        .gateway(
            plane,
            "istio-ingressgateway",
            "istio=ingressgateway",
            &[8080],
        )
        .await;
    let url = format!("http://{}:8080/through-the-gateway", gw.ip);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let reply = loop {
        if let Ok(r) = strait_testsupport::http_get(&url, &[]).await
            && r.status == 200
        {
            break r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{url} does not answer 200 through the {plane:?} gateway"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let gateway_response = headers(&reply);
    let gateway_request = reply.json()["headers"]
        .as_object()
        .expect("the app echoes the request's headers")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
        .collect();
    Seen {
        sidecar_response,
        sidecar_request,
        gateway_response,
        gateway_request,
    }
}

/// A header's value with what differs per request taken out: ids, times and addresses of this
/// run keep only their shape.
fn shape(name: &str, value: Option<&String>) -> String {
    let Some(value) = value else {
        return "<absent>".to_string();
    };
    match name {
        "x-request-id" => {
            let uuid = value.len() == 36
                && value
                    .chars()
                    .enumerate()
                    .all(|(i, c)| matches!(i, 8 | 13 | 18 | 23) == (c == '-'))
                && value.chars().all(|c| c == '-' || c.is_ascii_hexdigit());
            if uuid { "<uuid>" } else { value }.to_string()
        }
        "x-envoy-upstream-service-time" | "x-envoy-expected-rq-timeout-ms" => {
            if value.parse::<u64>().is_ok() {
                "<number>".to_string()
            } else {
                value.clone()
            }
        }
        // The client's address: a loopback address of this run.
        "x-forwarded-for" => {
            if value.split(',').all(|a| {
                a.trim()
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
            }) {
                format!("<{} loopback address(es)>", value.split(',').count())
            } else {
                value.clone()
            }
        }
        "date" | "content-length" | "host" | "x-backend" => "<varies>".to_string(),
        _ => value.clone(),
    }
}

/// Headers every proxy adds or rewrites that the comparison checks one by one, beyond "the same
/// header names on both planes".
const CHECKED: [&str; 6] = [
    "server",
    "x-envoy-upstream-service-time",
    "x-request-id",
    "x-forwarded-proto",
    "x-forwarded-for",
    "x-envoy-expected-rq-timeout-ms",
];

fn compare(what: &str, envoy: &BTreeMap<String, String>, strait: &BTreeMap<String, String>) {
    let names: std::collections::BTreeSet<&String> = envoy.keys().chain(strait.keys()).collect();
    let mut diffs = Vec::new();
    for name in names {
        let (e, s) = (shape(name, envoy.get(name)), shape(name, strait.get(name)));
        if e != s {
            diffs.push(format!("  {name}: Envoy {e:?}, strait-proxy {s:?}"));
        }
    }
    assert!(
        diffs.is_empty(),
        "{what} differ between the data planes:\n{}\nEnvoy: {envoy:#?}\nstrait-proxy: {strait:#?}",
        diffs.join("\n")
    );
    for name in CHECKED {
        eprintln!("{what}: {name}: {}", shape(name, envoy.get(name)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_headers_match_envoys() {
    let envoy = observe(DataPlane::Envoy).await;
    let strait = observe(DataPlane::Strait).await;

    // What Istio's defaults give, checked on Envoy itself so that the comparison below means
    // something.
    assert_eq!(envoy.sidecar_response["server"], "envoy", "{envoy:#?}");
    assert_eq!(
        envoy.gateway_response["server"], "istio-envoy",
        "{envoy:#?}"
    );
    assert_eq!(
        shape(
            "x-envoy-upstream-service-time",
            envoy.sidecar_response.get("x-envoy-upstream-service-time")
        ),
        "<number>"
    );
    assert_eq!(
        shape("x-request-id", envoy.sidecar_request.get("x-request-id")),
        "<uuid>"
    );

    compare(
        "response headers through two sidecars",
        &envoy.sidecar_response,
        &strait.sidecar_response,
    );
    compare(
        "request headers at the app through two sidecars",
        &envoy.sidecar_request,
        &strait.sidecar_request,
    );
    compare(
        "response headers through the gateway",
        &envoy.gateway_response,
        &strait.gateway_response,
    );
    compare(
        "request headers at the app through the gateway",
        &envoy.gateway_request,
        &strait.gateway_request,
    );
}
