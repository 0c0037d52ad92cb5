//! Two control planes on one etcd (`--store etcd://...`), with a strait-proxy and an Envoy side
//! by side, each given both replicas' xDS addresses (`--xds A,B`; the Envoy bootstrap's xDS
//! cluster gets both as endpoints), under steady traffic all along:
//!
//! 1. a route change written through B is served by the proxies connected to A within 1 s;
//! 2. A is cut off from etcd (it reaches etcd through a relay the test closes) while B changes
//!    the route and deletes a Service and etcd compacts that history away: A refuses writes
//!    with a 503 that names etcd and its proxies keep serving the last config; reconnected, A's
//!    watch finds its revision compacted, A lists everything again (its log says so) and the
//!    proxies converge: B's route, and the deleted Service gone;
//! 3. A is killed with `kill -9`: a change written through B reaches both proxies within 5 s;
//! 4. etcd is stopped for 30 s: writes fail with a 503 that names etcd, the proxies keep
//!    serving, and when etcd is back every acknowledged write is there and writes work again.
//!
//! Not one request of the steady traffic may fail.

use strait_e2e as support;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use strait_testsupport::{Envoy, Etcd, Relay, free_port, via_proxy};
use support::mesh::{Mesh, next_ip};
use support::strait_proxy::StraitProxy;
use support::{ControlPlane, http};

const URL: &str = "http://web.default.svc.cluster.local:8080/";
/// A second service, deleted while A is cut off from etcd.
const OLD_URL: &str = "http://old.default.svc.cluster.local:8080/";

/// A control plane on the etcd at `endpoint` (etcd's own, or a relay to it).
fn replica(endpoint: &str, token: &str) -> ControlPlane {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    std::fs::write(&path, token).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let store = format!("etcd://{endpoint}");
    ControlPlane::start_in(dir, &[], &["--store", &store, "--debounce-ms", "20"])
}

fn xds(cp: &ControlPlane) -> String {
    std::fs::read_to_string(cp.data_dir().join("xds"))
        .unwrap()
        .trim()
        .to_string()
}

fn route_to(version: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: web}}\nspec:\n  hosts: [web.default.svc.cluster.local]\n  http:\n  - route:\n    - destination: {{host: web.default.svc.cluster.local, subset: {version}}}\n"
    )
}

/// Steady traffic through one proxy: sequential GETs, counting replies by version and failures.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    last_failure: Arc<std::sync::Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(proxy: SocketAddr) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let last_failure = Arc::new(std::sync::Mutex::new(String::new()));
        let task = tokio::spawn({
            let (stop, ok, failed, last_failure) = (
                stop.clone(),
                ok.clone(),
                failed.clone(),
                last_failure.clone(),
            );
            async move {
                while !stop.load(Ordering::Relaxed) {
                    match via_proxy(proxy, URL, &[]).await {
                        Ok(r) if r.status == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        other => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            *last_failure.lock().unwrap() = format!("{other:?}");
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        });
        Load {
            stop,
            ok,
            failed,
            last_failure,
            task,
        }
    }

    async fn finish(self, name: &str) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        let (ok, failed) = (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        );
        assert!(ok > 100, "{name}: only {ok} requests went through");
        assert_eq!(
            failed,
            0,
            "{name}: {failed} of {} requests failed; the last: {}",
            ok + failed,
            self.last_failure.lock().unwrap()
        );
    }
}

/// A VirtualService for another host, as a write to refuse or accept.
fn other_vs(name: &str) -> String {
    serde_json::json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"hosts": ["x.example.com"], "http": [{"route": [{"destination": {"host": "x.example.com"}}]}]},
    })
    .to_string()
}

const VS_PATH: &str = "/apis/networking.istio.io/v1/namespaces/default/virtualservices";

/// Waits until the proxy at `http_proxy` no longer routes to the `old` service.
async fn until_old_gone(name: &str, http_proxy: SocketAddr, limit: Duration) {
    let start = Instant::now();
    loop {
        match via_proxy(http_proxy, OLD_URL, &[]).await {
            Ok(r) if r.status == 200 => {}
            _ => return,
        }
        assert!(
            start.elapsed() < limit,
            "{name} still routes to the deleted Service old after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the proxy at `http_proxy` answers from `version`; returns how long it took.
async fn until_version(
    name: &str,
    http_proxy: SocketAddr,
    version: &str,
    limit: Duration,
) -> Duration {
    let start = Instant::now();
    loop {
        if let Ok(r) = via_proxy(http_proxy, URL, &[]).await
            && r.status == 200
            && r.json()["version"] == version
        {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{name} did not serve {version} within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_etcd_fail_over_and_survive_an_etcd_outage() {
    let mut etcd = Etcd::start();
    let token = "replica-test-token-0123456789abcdef";
    // A reaches etcd through a relay the test can cut.
    let relay = Relay::start(etcd.endpoint().parse().unwrap());
    let a = replica(&relay.addr().to_string(), token);
    let b = replica(&etcd.endpoint(), token);
    let both = format!("{},{}", xds(&a), xds(&b));
    // Envoy balances its xDS cluster's endpoints (round robin from a random start): so that it
    // starts on A, as strait-proxy does (the first of its list), it reaches B through a relay
    // that is cut until Envoy is connected.
    let b_for_envoy = Relay::start(xds(&b).parse().unwrap());
    b_for_envoy.cut();
    let both_for_envoy = format!("{},{}", xds(&a), b_for_envoy.addr());

    let mut mesh = Mesh {
        cp: a,
        backends: Vec::new(),
        files: tempfile::tempdir().unwrap(),
        strait_proxy_flags: Vec::new(),
        envoy_args: Vec::new(),
    };
    mesh.http_service("web", 8080, &["v1", "v2", "v3"]);
    mesh.http_service("old", 8080, &["v1"]);
    mesh.apply_yaml(
        "dr.yaml",
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: web}\nspec:\n  host: web.default.svc.cluster.local\n  subsets:\n  - {name: v1, labels: {version: v1}}\n  - {name: v2, labels: {version: v2}}\n  - {name: v3, labels: {version: v3}}\n",
    );
    mesh.apply_yaml("vs.yaml", &route_to("v1"));
    let files = mesh.files.path().to_path_buf();
    let through_b = |version: &str| {
        let path = files.join(format!("vs-{version}.yaml"));
        std::fs::write(&path, route_to(version)).unwrap();
        b.ok(&["apply", "-f", path.to_str().unwrap()]);
    };

    // The two data planes, each with both replicas (A first).
    let node = |ip: IpAddr, name: &str, xds: &str| -> Vec<String> {
        [
            "--workload",
            name,
            "--namespace",
            "default",
            "--address",
            &ip.to_string(),
            "--role",
            "sidecar",
            "--labels",
            &format!("app={name}"),
            "--capture",
            "none",
            "--xds",
            xds,
        ]
        .map(str::to_string)
        .to_vec()
    };
    let sp_ip = next_ip();
    let sp_admin: SocketAddr = ("127.0.0.1".parse::<IpAddr>().unwrap(), free_port()).into();
    let sp_args = node(sp_ip, "client-sp", &both);
    let sp_args: Vec<&str> = sp_args.iter().map(String::as_str).collect();
    let mut sp = StraitProxy::start("client-sp", &sp_args, sp_admin);
    sp.wait_ready(Duration::from_secs(20)).await;
    let sp_http: SocketAddr = (sp_ip, 15080).into();
    sp.wait_listener(sp_http).await;

    let envoy_ip = next_ip();
    let mut bootstrap_args = vec!["bootstrap".to_string(), "envoy".to_string()];
    bootstrap_args.extend(node(envoy_ip, "client-envoy", &both_for_envoy));
    bootstrap_args.extend(["--admin".to_string(), format!("127.0.0.1:{}", free_port())]);
    let bootstrap_args: Vec<&str> = bootstrap_args.iter().map(String::as_str).collect();
    let bootstrap = mesh.cp.ok(&bootstrap_args);
    assert!(
        bootstrap.contains(&b_for_envoy.addr().port().to_string()),
        "the bootstrap's xDS cluster has both replicas:\n{bootstrap}"
    );
    let envoy = Envoy::start(&bootstrap, "client-envoy");
    envoy.wait_ready(Duration::from_secs(20)).await;
    let envoy_http: SocketAddr = (envoy_ip, 15080).into();
    envoy.wait_listener(envoy_http).await;
    b_for_envoy.restore();

    for (name, proxy) in [("strait-proxy", sp_http), ("Envoy", envoy_http)] {
        until_version(name, proxy, "v1", Duration::from_secs(10)).await;
        let old = via_proxy(proxy, OLD_URL, &[]).await;
        assert!(
            matches!(&old, Ok(r) if r.status == 200),
            "{name} routes to the Service old: {old:?}"
        );
    }
    let loads = [Load::start(sp_http), Load::start(envoy_http)];

    // 1. Written through B, served by the proxies on A within 1 s.
    through_b("v2");
    for (name, proxy) in [("strait-proxy", sp_http), ("Envoy", envoy_http)] {
        let took = until_version(name, proxy, "v2", Duration::from_secs(1)).await;
        eprintln!("{name}: a write through B served via A after {took:?}");
    }

    // Both replicas give the services the same virtual IPs (the leader's table).
    let services =
        |cp: &ControlPlane| http(&cp.server(), "GET", "/debug/services", Some(token), None);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (on_a, on_b) = (services(&mesh.cp), services(&b));
        assert_eq!((on_a.0, on_b.0), (200, 200), "{on_a:?} {on_b:?}");
        assert!(on_a.1.contains("240.240."), "{}", on_a.1);
        if on_a.1 == on_b.1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the replicas' services differ:\nA: {}\nB: {}",
            on_a.1,
            on_b.1
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // 2. A is cut off from etcd while B writes and etcd compacts.
    let up_on_b = format!("addr={}", xds(&b));
    let a_server = mesh.cp.server();
    relay.cut();
    let post_through_a = || {
        http(
            &a_server,
            "POST",
            VS_PATH,
            Some(token),
            Some(&other_vs("cut")),
        )
    };
    let (code, answer) = post_through_a();
    assert_eq!(code, 503, "A cut off from etcd refuses writes: {answer}");
    assert!(answer.contains("etcd"), "the 503 names etcd: {answer}");
    through_b("v3");
    b.ok(&["delete", "svc", "old"]);
    let compacted = etcd.compact();
    // A write through B reaches A's proxies within 1 s (1.): these keep A's last config.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (name, proxy) in [("strait-proxy", sp_http), ("Envoy", envoy_http)] {
        let r = via_proxy(proxy, URL, &[]).await;
        assert!(
            matches!(&r, Ok(r) if r.status == 200 && r.json()["version"] == "v2"),
            "{name} on A, cut off, serves A's last config (v2): {r:?}"
        );
    }
    let restored = Instant::now();
    relay.restore();
    for (name, proxy) in [("strait-proxy", sp_http), ("Envoy", envoy_http)] {
        until_version(name, proxy, "v3", Duration::from_secs(10)).await;
        until_old_gone(name, proxy, Duration::from_secs(5)).await;
        eprintln!(
            "{name}: converged {:?} after A reconnected to etcd",
            restored.elapsed()
        );
    }
    let log = mesh.cp.log();
    assert!(
        log.lines()
            .any(|l| l.contains("FellBehind") && l.contains("listing everything again")),
        "A's log says its watch fell behind the compaction (to {compacted}) and it listed again:\n{log}"
    );
    assert!(
        !sp.log()
            .lines()
            .any(|l| l.contains("xDS stream up") && l.contains(&up_on_b)),
        "strait-proxy stayed on A:\n{}",
        sp.log()
    );
    let status = mesh.cp.ok(&[
        "--server",
        &format!("{a_server},{}", b.server()),
        "proxy-status",
    ]);
    let a_api = a_server.trim_start_matches("http://");
    for name in ["client-sp.default", "client-envoy.default"] {
        assert!(
            status
                .lines()
                .any(|l| l.starts_with(name) && l.trim_end().ends_with(a_api)),
            "{name} stayed on A ({a_api}):\n{status}"
        );
    }
    // A writes again; nothing acknowledged is lost.
    let (code, answer) = post_through_a();
    assert_eq!(code, 201, "A writes again once reconnected: {answer}");
    b.ok(&["get", "vs", "cut"]);

    // 3. A dies; the proxies fail over to B and get B's next change within 5 s.
    mesh.cp.kill9();
    through_b("v1");
    for (name, proxy) in [("strait-proxy", sp_http), ("Envoy", envoy_http)] {
        let took = until_version(name, proxy, "v1", Duration::from_secs(5)).await;
        eprintln!("{name}: after A's kill -9, B's write served after {took:?}");
    }
    assert!(
        sp.log()
            .lines()
            .any(|l| l.contains("xDS stream up") && l.contains(&up_on_b)),
        "strait-proxy's log says it connected to B:\n{}",
        sp.log()
    );

    // The CLI given both replicas' API addresses goes on to B when A does not answer.
    let listed = b.ok(&[
        "--server",
        &format!("{a_server},{}", b.server()),
        "get",
        "vs",
        "web",
        "-o",
        "json",
    ]);
    assert!(listed.contains("\"subset\": \"v1\""), "{listed}");
    // proxy-status asks every replica and says which one each proxy is connected to.
    let status = b.cli(&[
        "--server",
        &format!("{a_server},{}", b.server()),
        "proxy-status",
    ]);
    let table = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success(),
        "{table}{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let b_api = b.server().trim_start_matches("http://").to_string();
    for name in ["client-sp.default", "client-envoy.default"] {
        assert!(
            table
                .lines()
                .any(|l| l.starts_with(name) && l.trim_end().ends_with(&b_api)),
            "{name} on B ({b_api}):\n{table}"
        );
    }

    // 4. etcd down for 30 s: writes are refused with a 503 naming etcd; the proxies serve on.
    etcd.stop();
    let down = Instant::now();
    let (code, answer) = http(
        &b.server(),
        "POST",
        VS_PATH,
        Some(token),
        Some(&other_vs("during-outage")),
    );
    assert_eq!(code, 503, "{answer}");
    assert!(answer.contains("etcd"), "the 503 names etcd: {answer}");
    let out = b.cli(&["get", "vs", "web", "-o", "json"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("etcd"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(down.elapsed())).await;
    etcd.start_again();
    // Every acknowledged write is there; writes work again.
    let deadline = Instant::now() + Duration::from_secs(20);
    let vs = loop {
        let out = b.cli(&["get", "vs", "web", "-o", "json"]);
        if out.status.success() {
            break String::from_utf8(out.stdout).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "B did not read from etcd again within 20 s: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(vs.contains("\"subset\": \"v1\""), "{vs}");
    through_b("v2");
    for (name, proxy) in [("strait-proxy", sp_http), ("Envoy", envoy_http)] {
        until_version(name, proxy, "v2", Duration::from_secs(10)).await;
    }
    let [sp_load, envoy_load] = loads;
    sp_load.finish("strait-proxy").await;
    envoy_load.finish("Envoy").await;
    drop(envoy);
    drop(sp);
}
