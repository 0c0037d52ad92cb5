//! Client sidecar → server sidecar → application, without capture: the server's sidecar listens
//! on the workload's address (its WorkloadEntry) and forwards to where a Sidecar resource's
//! ingress listener says the application is (`defaultEndpoint`).

mod support;

use std::time::{Duration, Instant};

use strait_testsupport::Backend;
use support::mesh::{DataPlane, Mesh};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_reach_the_app_through_its_sidecar_ingress() {
    let mesh = Mesh::new();
    mesh.service("reviews", 9080, "http");
    let app = Backend::http("reviews", "v1");
    mesh.apply_yaml(
        "sidecar.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: reviews}}\nspec:\n  workloadSelector:\n    labels: {{app: reviews}}\n  ingress:\n  - port: {{number: 9080, protocol: HTTP, name: http}}\n    defaultEndpoint: {}\n",
            app.addr()
        ),
    );
    let server = mesh
        .sidecar(DataPlane::Envoy, "reviews-v1", "app=reviews,version=v1")
        .await;
    // The workload is registered at its sidecar's address.
    mesh.apply_yaml(
        "we.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: reviews-v1}}\nspec:\n  address: {}\n  ports: {{http: 9080}}\n  labels: {{app: reviews, version: v1}}\n",
            server.ip
        ),
    );
    server.envoy().wait_listener((server.ip, 9080).into()).await;
    let client = mesh
        .sidecar(DataPlane::Envoy, "productpage-v1", "app=productpage")
        .await;
    let r = client
        .get_until(
            "http://reviews:9080/reviews/0",
            &[],
            "reviews through its sidecar",
            |r| r.status == 200,
        )
        .await;
    assert_eq!(r.json()["service"], "reviews");
    assert_eq!(r.json()["path"], "/reviews/0");
    // It went through the server's sidecar: its inbound cluster counted the request.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = server
            .envoy()
            .stat("cluster.inbound|9080||.upstream_rq_total")
            .await
            .unwrap_or(0);
        if n >= 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the server sidecar's inbound cluster saw no request"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(app.request_count() >= 1);
}
