//! strait-proxy as a process: it stops on SIGINT (Ctrl-C) as on SIGTERM, after draining for at
//! most its drain time, and its log has no terminal colour codes when it is not a terminal.

use strait_e2e as support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::mesh::{Mesh, next_ip};
use support::strait_proxy::StraitProxy;

async fn started(mesh: &Mesh, name: &str, drain_s: &str) -> (StraitProxy, SocketAddr) {
    let ip = next_ip();
    let admin: SocketAddr = (ip, strait_testsupport::free_port()).into();
    let xds = std::fs::read_to_string(mesh.cp.data_dir().join("xds")).unwrap();
    let ip_text = ip.to_string();
    let mut proxy = StraitProxy::start(
        name,
        &[
            "--workload",
            name,
            "--address",
            &ip_text,
            "--capture",
            "none",
            "--xds",
            xds.trim(),
            "--drain-time-s",
            drain_s,
        ],
        admin,
    );
    proxy.wait_ready(Duration::from_secs(20)).await;
    let http_proxy: SocketAddr = (ip, 15080).into();
    proxy.wait_listener(http_proxy).await;
    (proxy, http_proxy)
}

fn no_escape_codes(log: &str) {
    assert!(!log.is_empty(), "strait-proxy wrote no log");
    assert!(
        !log.contains('\u{1b}'),
        "the log has terminal escape codes:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_stops_strait_proxy_after_its_drain_time_and_logs_are_plain() {
    let mesh = Mesh::new();

    // Nothing open: SIGINT stops it at once.
    let (mut idle, _) = started(&mesh, "idle", "5").await;
    let sent = Instant::now();
    idle.signal("INT");
    let status = idle.wait_exit(Duration::from_secs(3));
    assert!(
        status.is_some_and(|s| s.success()),
        "strait-proxy still runs {:?} after SIGINT ({status:?}); log:\n{}",
        sent.elapsed(),
        idle.log()
    );
    let log = idle.log();
    assert!(log.contains("SIGINT"), "{log}");
    no_escape_codes(&log);

    // An idle client connection does not hold the proxy: it closes when the proxy drains.
    let (mut kept, http_proxy) = started(&mesh, "kept", "5").await;
    let _idle = std::net::TcpStream::connect(http_proxy).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sent = Instant::now();
    kept.signal("INT");
    assert!(
        kept.wait_exit(Duration::from_millis(1500))
            .is_some_and(|s| s.success()),
        "an idle connection kept strait-proxy running {:?} after SIGINT; log:\n{}",
        sent.elapsed(),
        kept.log()
    );

    // A request in flight to a slow app (5 s): the listeners close at once, and the proxy waits
    // for the request up to its drain time (2 s), then stops.
    let mut mesh = mesh;
    mesh.http_service("slow", 8000, &["v1"]);
    mesh.backend("slow", "v1").set_delay(Duration::from_secs(5));
    let (mut busy, http_proxy) = started(&mesh, "busy", "2").await;
    let request = tokio::spawn(async move {
        strait_testsupport::via_proxy(http_proxy, "http://slow:8000/", &[]).await
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while mesh.backend("slow", "v1").request_count() == 0 {
        assert!(
            Instant::now() < deadline,
            "the request did not reach the app"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sent = Instant::now();
    busy.signal("INT");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        std::net::TcpStream::connect(http_proxy).is_err(),
        "the listener still accepts connections while draining"
    );
    let status = busy.wait_exit(Duration::from_secs(5));
    let took = sent.elapsed();
    assert!(
        status.is_some_and(|s| s.success()),
        "strait-proxy still runs {took:?} after SIGINT ({status:?}); log:\n{}",
        busy.log()
    );
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_millis(3500),
        "with a request in flight strait-proxy should drain for its 2 s, took {took:?}"
    );
    no_escape_codes(&busy.log());
    // The request in flight was cut when the drain time ran out.
    assert!(request.await.unwrap().is_err());

    // SIGTERM the same.
    let (mut term, _) = started(&mesh, "term", "5").await;
    term.signal("TERM");
    assert!(
        term.wait_exit(Duration::from_secs(3))
            .is_some_and(|s| s.success()),
        "strait-proxy still runs after SIGTERM; log:\n{}",
        term.log()
    );
}
