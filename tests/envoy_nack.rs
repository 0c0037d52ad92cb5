//! A config that Envoy rejects: the control plane shows the NACK with Envoy's reason, and Envoy
//! keeps serving its last good config.

use strait_e2e as support;

use std::time::{Duration, Instant};

use support::fixture;
use support::mesh::{DataPlane, Mesh, sample};

const REVIEWS: &str = "http://reviews:9080/reviews/0";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_config_shows_as_nack_and_envoy_keeps_the_last_good_one() {
    let mesh = Mesh::bookinfo();
    mesh.apply(&sample(
        "bookinfo/networking/virtual-service-reviews-v3.yaml",
    ));
    let client = mesh.sidecar(DataPlane::Envoy, "client", "app=client").await;
    client
        .get_until(REVIEWS, &[], "reviews v3", |r| r.json()["version"] == "v3")
        .await;

    // Valid for Istio, but beyond what Envoy accepts: Envoy's RingHashLbConfig caps
    // minimum_ring_size at 8M (8388608), so Envoy refuses the clusters (as it would from Istio).
    mesh.apply(&fixture("envoy_nack-ring.yaml"));
    let deadline = Instant::now() + Duration::from_secs(15);
    let reason = loop {
        let status = mesh.proxy_status();
        let me = status
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["workload"] == "client")
            .cloned()
            .unwrap();
        if me["types"]["CDS"]["state"] == "NACK" {
            break me["types"]["CDS"]["reason"]
                .as_str()
                .unwrap_or_default()
                .to_string();
        }
        assert!(Instant::now() < deadline, "no NACK shown: {me}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        reason.contains("minimum_ring_size"),
        "the NACK reason should name the field: {reason}"
    );
    let text = mesh.cp.ok(&["proxy-status"]);
    assert!(
        text.contains("NACK") && text.contains("minimum_ring_size"),
        "{text}"
    );

    // Envoy keeps serving with the old clusters.
    for _ in 0..30 {
        let r = client.get(REVIEWS, &[]).await;
        assert_eq!((r.status, r.json()["version"].as_str()), (200, Some("v3")));
    }
    // A fix is accepted again.
    mesh.apply(&sample("bookinfo/networking/destination-rule-all.yaml"));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = mesh.proxy_status();
        let me = status
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["workload"] == "client")
            .cloned()
            .unwrap();
        if me["types"]["CDS"]["state"] == "SYNCED" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not SYNCED again after the fix: {me}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
