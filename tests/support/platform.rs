//! The local platform for tests: the checks that this machine can run pods (root, iproute2,
//! iptables, setpriv, python3, Envoy), one platform test at a time, and `strait run` /
//! `strait gateway` processes with their WorkloadEntries.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::ControlPlane;
use crate::process::Spawned;

/// One test at a time: a `strait run` removes whatever pod a killed run left, so a test's own
/// check that the next run cleans up after `kill -9` needs no other test's runs meanwhile; and
/// pods share one bridge, one address range and one run folder.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The pods of this machine, held by one test at a time across threads and across processes
/// (scripts/test.sh runs the pod tests beside the others, and two checkouts may test at once).
pub struct PodsLock {
    _file: std::fs::File,
    _thread: std::sync::MutexGuard<'static, ()>,
}

/// Waits until no other test, in this process or another, holds the pods.
pub fn one_at_a_time() -> PodsLock {
    let thread = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let path = std::env::temp_dir().join("strait-e2e-pods.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("open the pods' lock file {}: {e}", path.display()));
    file.lock()
        .unwrap_or_else(|e| panic!("lock {}: {e}", path.display()));
    PodsLock {
        _file: file,
        _thread: thread,
    }
}

/// Fails, naming what is missing and how to install it, unless this machine can run pods;
/// then holds the pods for the test ([`one_at_a_time`]).
pub fn require_platform() -> PodsLock {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        == Some("0");
    assert!(
        root,
        "these tests make network namespaces and iptables rules: run them as root"
    );
    for (tool, arg, install) in [
        ("ip", "-V", "apt-get install -y iproute2"),
        (
            "iptables-restore",
            "--version",
            "apt-get install -y iptables",
        ),
        ("iptables-save", "--version", "apt-get install -y iptables"),
        ("setpriv", "--version", "apt-get install -y util-linux"),
        ("python3", "--version", "apt-get install -y python3"),
        ("curl", "--version", "apt-get install -y curl"),
    ] {
        let ok = Command::new(tool)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "`{tool}` is missing: install it with `{install}`");
    }
    strait_testsupport::envoy_bin();
    one_at_a_time()
}

/// Fails, naming the command that builds them, unless Bookinfo's apps and strait-proxy are
/// built beside `strait`.
pub fn bookinfo_built() {
    let dir = Path::new(crate::strait()).parent().unwrap();
    for (bin, package) in [
        ("bookinfo", "strait-bookinfo"),
        ("strait-proxy", "strait-proxy-bin"),
    ] {
        assert!(
            dir.join(bin).is_file(),
            "{} is missing: build it first with `cargo build -p {package} --bins`",
            dir.join(bin).display()
        );
    }
}

pub fn strait_proxy_built() {
    let bin = Path::new(crate::strait()).with_file_name("strait-proxy");
    assert!(
        bin.is_file(),
        "{} is missing: build it first with `cargo build -p strait-proxy-bin --bins`",
        bin.display()
    );
}

pub fn run_dir() -> PathBuf {
    PathBuf::from("/run/strait/pods")
}

/// A `strait run` (or `strait gateway`) process; stopped with SIGTERM when dropped.
pub type Run = Spawned;

/// Starts `strait ARGS` with the control plane's data directory, in `cwd`.
pub fn start(cp: &ControlPlane, args: &[&str], cwd: &Path) -> Run {
    let mut cmd = Command::new(crate::strait());
    cmd.arg("--data-dir")
        .arg(cp.data_dir())
        .args(args)
        .env("ENVOY_BIN", strait_testsupport::envoy_bin())
        .env_remove("STRAIT_SERVER")
        .env_remove("STRAIT_TOKEN")
        .env_remove("STRAIT_RUN_DIR")
        .current_dir(cwd);
    let name = args
        .windows(2)
        .find(|w| w[0] == "--name")
        .map(|w| w[1])
        .unwrap_or_default();
    let what = format!(
        "strait {} {name}",
        args.first().copied().unwrap_or_default()
    );
    Spawned::start(cmd, &what, "-TERM", Duration::from_secs(20))
}

/// The WorkloadEntry `name` of `namespace` as JSON, if it exists.
pub fn workload_entry(cp: &ControlPlane, namespace: &str, name: &str) -> Option<Value> {
    let out = cp.cli(&["get", "we", name, "-n", namespace, "-o", "json"]);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).unwrap())
}

/// Waits until the WorkloadEntry `name` of `namespace` exists; returns it.
pub fn wait_workload_entry(cp: &ControlPlane, run: &mut Run, namespace: &str, name: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(we) = workload_entry(cp, namespace, name) {
            return we;
        }
        if let Some(status) = run.child.try_wait().unwrap() {
            panic!(
                "strait run {name} exited ({status}); stderr:\n{}",
                run.stderr()
            );
        }
        assert!(
            Instant::now() < deadline,
            "the WorkloadEntry {name} did not appear within 60 s; strait run's stderr:\n{}",
            run.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
