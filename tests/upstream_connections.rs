//! Upstream connections follow the endpoints, through real Envoy and through strait-proxy with
//! the same mesh and assertions: the connections a sidecar opened to endpoints that leave a
//! Service (their WorkloadEntries deleted), and then to all of them (the Service deleted too),
//! are closed within 5 s, while those to the endpoints that stay remain open for reuse. The
//! backends count their open connections.

use strait_e2e as support;

use std::time::{Duration, Instant};

use support::mesh::{DataPlane, Mesh, Proxy};

const REVIEWS: &str = "http://reviews:9080/reviews/0";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_to_removed_endpoints_close_within_5_s() {
    removed_endpoints(DataPlane::Envoy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_to_removed_endpoints_close_within_5_s_strait() {
    removed_endpoints(DataPlane::Strait).await;
}

/// Waits (5 s at most from `since`) until `done` holds.
async fn within_5_s(since: Instant, what: &str, proxy: &Proxy, done: impl Fn() -> Option<String>) {
    loop {
        let Some(state) = done() else {
            return;
        };
        assert!(
            since.elapsed() < Duration::from_secs(5),
            "{what}: not within 5 s ({state})\n{}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn removed_endpoints(plane: DataPlane) {
    let mut mesh = Mesh::new();
    mesh.http_service("reviews", 9080, &["v1", "v2", "v3"]);
    let client = mesh.sidecar(plane, "client", "app=client").await;
    client
        .get_until(REVIEWS, &[], "reviews through the sidecar", |r| {
            r.status == 200
        })
        .await;
    // Requests to every endpoint, a few at a time so that some endpoints get more than one
    // connection; all kept open for reuse.
    for _ in 0..10 {
        let requests: Vec<_> = (0..3)
            .map(|_| {
                let proxy = client.http_proxy();
                tokio::spawn(
                    async move { strait_testsupport::via_proxy(proxy, REVIEWS, &[]).await },
                )
            })
            .collect();
        for r in requests {
            assert_eq!(r.await.unwrap().unwrap().status, 200);
        }
    }
    let open = |v: &str| mesh.backend("reviews", v).open_connections();
    for v in ["v1", "v2", "v3"] {
        assert!(
            open(v) >= 1,
            "no connection kept open to reviews {v}: {} requests served",
            mesh.backend("reviews", v).request_count()
        );
    }

    // Two endpoints leave the Service.
    let since = Instant::now();
    mesh.cp.ok(&["delete", "we", "reviews-v1"]);
    mesh.cp.ok(&["delete", "we", "reviews-v2"]);
    within_5_s(
        since,
        "connections to the removed endpoints closed",
        &client,
        || {
            let (v1, v2) = (open("v1"), open("v2"));
            (v1 + v2 > 0).then(|| format!("open: v1 {v1}, v2 {v2}"))
        },
    )
    .await;
    // The endpoint that stays keeps its connections, and serves.
    assert!(
        open("v3") >= 1,
        "the connections to reviews v3 were closed too"
    );
    let served = mesh.backend("reviews", "v3").request_count();
    for _ in 0..5 {
        assert_eq!(client.get(REVIEWS, &[]).await.status, 200);
    }
    assert_eq!(mesh.backend("reviews", "v3").request_count(), served + 5);

    // The last endpoint and the Service go.
    let since = Instant::now();
    mesh.cp.ok(&["delete", "we", "reviews-v3"]);
    mesh.cp.ok(&["delete", "svc", "reviews"]);
    within_5_s(
        since,
        "connections to the deleted Service closed",
        &client,
        || {
            let v3 = open("v3");
            (v3 > 0).then(|| format!("open: v3 {v3}"))
        },
    )
    .await;
}
