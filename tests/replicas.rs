//! Two control planes on one etcd (`--store etcd://...`), with a strait-proxy and an Envoy side
//! by side, each given both replicas' xDS addresses (`--xds A,B`; the Envoy bootstrap's xDS
//! cluster gets both as endpoints), under steady traffic all along:
//!
//! 1. a route change written through B is served by the proxies connected to A within 1 s;
//! 2. A is killed with `kill -9`: a change written through B reaches both proxies within 5 s;
//! 3. etcd is stopped for 30 s: writes fail with a 503 that names etcd, the proxies keep
//!    serving, and when etcd is back every acknowledged write is there and writes work again.
//!
//! Not one request of the steady traffic may fail.

use strait_e2e as support;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use strait_testsupport::{Envoy, Etcd, free_port, via_proxy};
use support::mesh::{Mesh, next_ip};
use support::strait_proxy::StraitProxy;
use support::{ControlPlane, http};

const URL: &str = "http://web.default.svc.cluster.local:8080/";

fn replica(etcd: &Etcd, token: &str) -> ControlPlane {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    std::fs::write(&path, token).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let store = format!("etcd://{}", etcd.endpoint());
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
    let a = replica(&etcd, token);
    let b = replica(&etcd, token);
    let both = format!("{},{}", xds(&a), xds(&b));

    let mut mesh = Mesh {
        cp: a,
        backends: Vec::new(),
        files: tempfile::tempdir().unwrap(),
        strait_proxy_flags: Vec::new(),
        envoy_args: Vec::new(),
    };
    mesh.http_service("web", 8080, &["v1", "v2", "v3"]);
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
    let node = |ip: IpAddr, name: &str| -> Vec<String> {
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
            &both,
        ]
        .map(str::to_string)
        .to_vec()
    };
    let sp_ip = next_ip();
    let sp_admin: SocketAddr = ("127.0.0.1".parse::<IpAddr>().unwrap(), free_port()).into();
    let sp_args = node(sp_ip, "client-sp");
    let sp_args: Vec<&str> = sp_args.iter().map(String::as_str).collect();
    let mut sp = StraitProxy::start("client-sp", &sp_args, sp_admin);
    sp.wait_ready(Duration::from_secs(20)).await;
    let sp_http: SocketAddr = (sp_ip, 15080).into();
    sp.wait_listener(sp_http).await;

    let envoy_ip = next_ip();
    let mut bootstrap_args = vec!["bootstrap".to_string(), "envoy".to_string()];
    bootstrap_args.extend(node(envoy_ip, "client-envoy"));
    bootstrap_args.extend(["--admin".to_string(), format!("127.0.0.1:{}", free_port())]);
    let bootstrap_args: Vec<&str> = bootstrap_args.iter().map(String::as_str).collect();
    let bootstrap = mesh.cp.ok(&bootstrap_args);
    assert!(
        bootstrap.contains(&xds(&b).rsplit(':').next().unwrap().to_string()),
        "the bootstrap's xDS cluster has both replicas:\n{bootstrap}"
    );
    let envoy = Envoy::start(&bootstrap, "client-envoy");
    envoy.wait_ready(Duration::from_secs(20)).await;
    let envoy_http: SocketAddr = (envoy_ip, 15080).into();
    envoy.wait_listener(envoy_http).await;

    for (name, proxy) in [("strait-proxy", sp_http), ("Envoy", envoy_http)] {
        until_version(name, proxy, "v1", Duration::from_secs(10)).await;
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

    // 2. A dies; the proxies fail over to B and get B's next change within 5 s.
    let a_server = mesh.cp.server();
    mesh.cp.kill9();
    through_b("v3");
    for (name, proxy) in [("strait-proxy", sp_http), ("Envoy", envoy_http)] {
        let took = until_version(name, proxy, "v3", Duration::from_secs(5)).await;
        eprintln!("{name}: after A's kill -9, B's write served after {took:?}");
    }
    let up_on_b = format!("addr={}", xds(&b));
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
    assert!(listed.contains("\"subset\": \"v3\""), "{listed}");
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

    // 3. etcd down for 30 s: writes are refused with a 503 naming etcd; the proxies serve on.
    etcd.stop();
    let down = Instant::now();
    let body = serde_json::json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "during-outage", "namespace": "default"},
        "spec": {"hosts": ["x.example.com"], "http": [{"route": [{"destination": {"host": "x.example.com"}}]}]},
    })
    .to_string();
    let (code, answer) = http(
        &b.server(),
        "POST",
        "/apis/networking.istio.io/v1/namespaces/default/virtualservices",
        Some(token),
        Some(&body),
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
    assert!(vs.contains("\"subset\": \"v3\""), "{vs}");
    through_b("v1");
    for (name, proxy) in [("strait-proxy", sp_http), ("Envoy", envoy_http)] {
        until_version(name, proxy, "v1", Duration::from_secs(10)).await;
    }
    let [sp_load, envoy_load] = loads;
    sp_load.finish("strait-proxy").await;
    envoy_load.finish("Envoy").await;
    drop(envoy);
    drop(sp);
}
