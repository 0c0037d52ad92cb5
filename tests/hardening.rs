//! The control plane under abuse, as a process: thousands of idle unauthenticated connections
//! with a 1,024 open-file limit at start, a watch that is never read while large objects are
//! written, and `kill -9` in the middle of multi-document applies.

use strait_e2e as support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::mesh::next_ip;
use support::strait_proxy::StraitProxy;
use support::{ControlPlane, http};

/// The open-file limits of a process, from /proc (soft, hard).
fn nofile(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let nums: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (nums[0], nums[1])
}

/// Gives this test process room for its own connections (prlimit, util-linux, on our pid).
fn raise_own_limit(to: u64) {
    let status = Command::new("prlimit")
        .args([
            "--pid",
            &std::process::id().to_string(),
            &format!("--nofile={to}:{to}"),
        ])
        .status()
        .expect("running prlimit (util-linux): apt-get install util-linux");
    assert!(
        status.success(),
        "prlimit could not raise this test's limit"
    );
}

/// The control plane's resident memory and its peak, in MB, from /proc.
fn memory_mb(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb = |key: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (kb("VmRSS:") / 1024, kb("VmHWM:") / 1024)
}

fn api_addr(cp: &ControlPlane) -> SocketAddr {
    cp.server().trim_start_matches("http://").parse().unwrap()
}

/// The checks of a control plane that is still serving: /healthz, an authenticated write,
/// and a new xDS stream (a strait-proxy that gets its config and says LIVE).
async fn still_serving(cp: &ControlPlane, label: &str, n: usize) {
    let started = Instant::now();
    let (code, body) = http(&cp.server(), "GET", "/healthz", None, None);
    assert_eq!(code, 200, "{label}: /healthz: {body}");
    let sa =
        format!(r#"{{"apiVersion":"v1","kind":"ServiceAccount","metadata":{{"name":"sa-{n}"}}}}"#);
    let (code, body) = http(
        &cp.server(),
        "POST",
        "/api/v1/namespaces/default/serviceaccounts",
        Some(&cp.token()),
        Some(&sa),
    );
    assert_eq!(code, 201, "{label}: an authenticated write: {body}");
    let ip = next_ip();
    let admin: SocketAddr = (ip, strait_testsupport::free_port()).into();
    let xds = std::fs::read_to_string(cp.data_dir().join("xds")).unwrap();
    let name = format!("probe-{n}");
    let ip_text = ip.to_string();
    let mut proxy = StraitProxy::start(
        &name,
        &[
            "--workload",
            &name,
            "--address",
            &ip_text,
            "--capture",
            "none",
            "--xds",
            xds.trim(),
        ],
        admin,
    );
    proxy.wait_ready(Duration::from_secs(20)).await;
    eprintln!(
        "{label}: healthz, write and a new xDS stream in {:?}",
        started.elapsed()
    );
}

async fn idle_flood(wrapper: &[&str], label: &str) {
    raise_own_limit(20_000);
    let cp = ControlPlane::start_under(wrapper, &[]);
    let (soft, hard) = nofile(cp.pid());
    eprintln!("{label}: the control plane's open-file limit: {soft} (hard {hard})");
    let addr = api_addr(&cp);
    let mut idle = Vec::with_capacity(5_000);
    for i in 0..5_000 {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(s) => idle.push(s),
            Err(e) => panic!("{label}: connection {i} could not even connect: {e}"),
        }
    }
    // Let the control plane accept (and close) what it will.
    std::thread::sleep(Duration::from_secs(2));
    still_serving(&cp, label, 1).await;
    let open = std::fs::read_dir(format!("/proc/{}/fd", cp.pid()))
        .unwrap()
        .count();
    eprintln!("{label}: {open} descriptors open in the control plane with 5,000 idle clients");
    // The API's pools are capped well below the flood (256 unauthenticated at most).
    assert!(open < 600, "{label}: {open} descriptors open");
    // And once more while they are all still there.
    still_serving(&cp, label, 2).await;
    assert!(
        cp.log().contains("connection limits"),
        "the control plane logs its limits:\n{}",
        cp.log()
    );
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_idle_connections_with_1024_files_leave_the_api_and_xds_serving() {
    // Soft 1,024 at start: the control plane raises it to the hard limit.
    let (_, hard) = nofile(std::process::id());
    let raised = format!("--nofile=1024:{}", hard.max(8192));
    idle_flood(&["prlimit", &raised, "--"], "soft 1024").await;
    // Soft and hard 1,024: nothing to raise; the caps alone keep room.
    idle_flood(&["prlimit", "--nofile=1024:1024", "--"], "1024:1024").await;
}

/// A VirtualService of about 1.4 MiB (58,000 hosts), the `n`th version (all the same size).
fn big_vs(n: usize) -> String {
    let hosts: Vec<String> = (0..58_000)
        .map(|i| format!("h{i:05}-{n:03}.example.com"))
        .collect();
    json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
           "metadata": {"name": "big", "namespace": "default"},
           "spec": {"hosts": hosts, "http": [{"route": [{"destination": {"host": "a"}}]}]}})
    .to_string()
}

#[test]
fn a_watch_never_read_while_300_large_objects_are_written_keeps_memory_bounded() {
    let cp = ControlPlane::start();
    let addr = api_addr(&cp);
    let token = cp.token();
    // A watch of VirtualServices that never reads a byte, with a small receive buffer.
    let socket = never_read_watch(addr, &token);
    let path = "/apis/networking.istio.io/v1/namespaces/default/virtualservices";
    let started = Instant::now();
    for n in 0..300 {
        let body = big_vs(n);
        assert!(body.len() > 1_400_000, "{} bytes", body.len());
        let (code, answer) = if n == 0 {
            http(&cp.server(), "POST", path, Some(&token), Some(&body))
        } else {
            http(
                &cp.server(),
                "PUT",
                &format!("{path}/big"),
                Some(&token),
                Some(&body),
            )
        };
        assert!(
            code == 200 || code == 201,
            "write {n}: {code} {}",
            &answer[..answer.len().min(300)]
        );
        if n % 50 == 49 {
            let (rss, hwm) = memory_mb(cp.pid());
            eprintln!(
                "after {} writes ({:?}): {rss} MB resident, {hwm} MB at most",
                n + 1,
                started.elapsed()
            );
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    let (rss, hwm) = memory_mb(cp.pid());
    eprintln!(
        "after 300 writes of 1.4 MiB with a never-read watch: {rss} MB resident, peak {hwm} MB"
    );
    assert!(
        rss < 300,
        "the control plane holds {rss} MB after the writes"
    );
    drop(socket);
    let (code, _) = http(&cp.server(), "GET", "/healthz", None, None);
    assert_eq!(code, 200);
}

/// Opens `?watch=true` on VirtualServices and never reads from it.
fn never_read_watch(addr: SocketAddr, token: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET /apis/networking.istio.io/v1/namespaces/default/virtualservices?watch=true HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    .unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    s
}

/// Applies multi-document files with `strait apply` while killing the control plane with
/// SIGKILL at random moments; after each restart every file's resources are all there or none.
#[test]
fn a_multi_document_apply_is_all_or_nothing_across_kill_9() {
    let mut cp = ControlPlane::start();
    let dir = tempfile::tempdir().unwrap();
    let mut rng = fastrand_seed();
    let batches = 12;
    let per_batch = 10;
    for b in 0..batches {
        let mut yaml = String::new();
        for i in 0..per_batch {
            // Large enough that a batch takes a while to write.
            let pad = "p".repeat(100_000);
            yaml.push_str(&format!(
                "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: b{b}-sa{i}\n  annotations: {{pad: {pad}}}\n---\n"
            ));
        }
        let file = dir.path().join(format!("batch-{b}.yaml"));
        std::fs::write(&file, yaml).unwrap();
        let mut apply = Command::new(support::strait())
            .args(["apply", "-f", file.to_str().unwrap(), "--data-dir"])
            .arg(cp.data_dir())
            .env_remove("STRAIT_SERVER")
            .env_remove("STRAIT_TOKEN")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Kill somewhere between the request going out and well after it is done.
        std::thread::sleep(Duration::from_millis(rng.next() % 400));
        cp.kill9();
        let _ = apply.wait();
        cp.restart();
        let list: Value = serde_json::from_str(&cp.ok(&["get", "sa", "-o", "json"])).unwrap();
        let names: Vec<String> = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
            .collect();
        for seen in 0..=b {
            let present = (0..per_batch)
                .filter(|i| names.contains(&format!("b{seen}-sa{i}")))
                .count();
            assert!(
                present == 0 || present == per_batch,
                "batch {seen} is half applied after kill -9 during batch {b}: {present} of {per_batch}"
            );
        }
    }
}

/// A small deterministic generator (xorshift), seeded from the clock for variety per run.
struct Xorshift(u64);

impl Xorshift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn fastrand_seed() -> Xorshift {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    eprintln!("kill timings seeded with {nanos}");
    Xorshift(u64::from(nanos) | 1)
}
