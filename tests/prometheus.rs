//! A real Prometheus (Debian's `prometheus`) scrapes the mesh through the control plane's HTTP
//! service discovery (`/debug/prometheus_sd`): every connected proxy on Istio's stats port
//! (`IP:15090/stats/prometheus`), labelled with its namespace and pod, and the control plane's
//! own `/metrics`. The prometheus.yml is the one docs/observability.md gives, with this test's
//! addresses. Both data planes: two Envoy sidecars and a strait-proxy sidecar.

use strait_e2e as support;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use strait_testsupport::{Envoy, free_port, http_get};
use support::ControlPlane;
use support::mesh::next_ip;
use support::prometheus::{Prometheus, prometheus_bin, prometheus_yml};
use support::strait_proxy::StraitProxy;

/// An Envoy sidecar (no capture) on a loopback address of its own, with Istio's stats listener
/// on `IP:15090`.
async fn envoy_sidecar(cp: &ControlPlane, workload: &str, app: &str) -> (Envoy, IpAddr) {
    let ip = next_ip();
    let admin: SocketAddr = (IpAddr::from([127, 0, 0, 1]), free_port()).into();
    let stats: SocketAddr = (ip, 15090).into();
    let labels = format!("app={app},version=v1");
    let bootstrap = cp.ok(&[
        "bootstrap",
        "envoy",
        "--workload",
        workload,
        "--namespace",
        "default",
        "--address",
        &ip.to_string(),
        "--labels",
        &labels,
        "--capture",
        "none",
        "--admin",
        &admin.to_string(),
        "--prometheus",
        &stats.to_string(),
    ]);
    let envoy = Envoy::start(&bootstrap, workload);
    envoy.wait_ready(Duration::from_secs(20)).await;
    envoy.wait_listener(stats).await;
    (envoy, ip)
}

/// A strait-proxy sidecar (no capture) on a loopback address of its own, serving its stats on
/// `IP:15090` too.
async fn strait_sidecar(cp: &ControlPlane, workload: &str, app: &str) -> (StraitProxy, IpAddr) {
    let ip = next_ip();
    let admin: SocketAddr = (IpAddr::from([127, 0, 0, 1]), free_port()).into();
    let stats: SocketAddr = (ip, 15090).into();
    let labels = format!("app={app},version=v1");
    let xds = std::fs::read_to_string(cp.data_dir().join("xds"))
        .expect("the control plane records its xDS address in DATA_DIR/xds");
    let mut proxy = StraitProxy::start(
        workload,
        &[
            "--workload",
            workload,
            "--namespace",
            "default",
            "--address",
            &ip.to_string(),
            "--labels",
            &labels,
            "--capture",
            "none",
            "--xds",
            xds.trim(),
            "--prometheus",
            &stats.to_string(),
        ],
        admin,
    );
    proxy.wait_ready(Duration::from_secs(20)).await;
    proxy.wait_listener(stats).await;
    (proxy, ip)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_every_proxy_through_the_control_planes_discovery() {
    prometheus_bin();
    let cp = ControlPlane::start();
    let (_web, web_ip) = envoy_sidecar(&cp, "web-v1", "web").await;
    let (_api, api_ip) = envoy_sidecar(&cp, "api-v1", "api").await;
    let (_db, db_ip) = strait_sidecar(&cp, "db-v1", "db").await;

    // The stats listener serves the stats, and only them: the rest of the admin interface
    // stays on the admin port.
    let stats = http_get(&format!("http://{web_ip}:15090/stats/prometheus"), &[])
        .await
        .unwrap();
    assert_eq!(stats.status, 200, "{}", stats.body);
    assert!(
        stats.body.contains("envoy_server_live"),
        "no Envoy series on {web_ip}:15090:\n{}",
        &stats.body[..stats.body.len().min(2000)]
    );
    let other = http_get(&format!("http://{web_ip}:15090/config_dump"), &[])
        .await
        .unwrap();
    assert_eq!(
        other.status, 404,
        "the stats port serves only /stats/prometheus"
    );

    // The discovery: one group per connected proxy, with the token; none without it.
    let server = cp.server();
    let addr = server.trim_start_matches("http://").to_string();
    let (code, _) = support::http(&server, "GET", "/debug/prometheus_sd", None, None);
    assert_eq!(code, 401, "the service discovery needs the API token");
    let token = cp.token();
    let sd = http_get(
        &format!("{server}/debug/prometheus_sd"),
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await
    .unwrap();
    assert_eq!(sd.status, 200, "{}", sd.body);
    let mut targets: Vec<(String, String)> = sd
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["targets"][0].as_str().unwrap().to_string(),
                g["labels"]["pod"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    targets.sort();
    let mut want = vec![
        (format!("{web_ip}:15090"), "web-v1".to_string()),
        (format!("{api_ip}:15090"), "api-v1".to_string()),
        (format!("{db_ip}:15090"), "db-v1".to_string()),
    ];
    want.sort();
    assert_eq!(targets, want, "{}", sd.body);

    // Prometheus finds the three proxies and the control plane, and scrapes them.
    let token_file = cp.data_dir().join("token");
    let prometheus = Prometheus::start(&prometheus_yml(&addr, &token_file));
    let up = prometheus
        .until("up", |r| {
            r.len() == 4 && r.iter().all(|s| s["value"][1] == "1")
        })
        .await;
    let mut pods: Vec<String> = up
        .iter()
        .filter(|s| s["metric"]["job"] == "strait-proxies")
        .map(|s| {
            assert_eq!(s["metric"]["namespace"], "default", "{s}");
            s["metric"]["pod"].as_str().unwrap().to_string()
        })
        .collect();
    pods.sort();
    assert_eq!(pods, ["api-v1", "db-v1", "web-v1"], "{up:#?}");
    assert!(
        up.iter()
            .any(|s| s["metric"]["job"] == "strait-control-plane"),
        "{up:#?}"
    );
    // Every proxy's series, by pod, as a dashboard asks for them (the two planes report
    // different series until there is traffic).
    let listeners = prometheus
        .until("count({job=\"strait-proxies\"}) by (pod)", |r| r.len() == 3)
        .await;
    let mut pods: Vec<&str> = listeners
        .iter()
        .map(|s| s["metric"]["pod"].as_str().unwrap())
        .collect();
    pods.sort();
    assert_eq!(pods, ["api-v1", "db-v1", "web-v1"], "{listeners:#?}");
}
