//! The load tool against the real `strait control-plane`, tiny: 3 Services, 6 endpoints, 3
//! clients, 2 changes and a restart, so the benchmark cannot rot unnoticed.
//!
//! The `strait` binary belongs to another package, so it is looked for beside this test's own
//! target directory (`cargo test --workspace` builds it; alone, run `cargo build --bin strait`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use strait_xds_load::api::Api;
use strait_xds_load::run::{Options, run};

fn strait() -> PathBuf {
    // TARGET/debug/deps/control_plane-HASH → TARGET/debug/strait
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("strait"))
        .unwrap();
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build --bin strait` first (with the same CARGO_TARGET_DIR)",
        bin.display()
    );
    bin
}

/// Starts a control plane in `dir` on `api`/`xds` (port 0: any); records its PID in DIR/cp.pid.
fn start(strait: &Path, dir: &Path, api: &str, xds: &str) -> String {
    format!(
        "setsid {} control-plane --data-dir {d}/data --api-addr {api} --xds-addr {xds} --tls-addr 127.0.0.1:0 >>{d}/cp.log 2>&1 </dev/null & echo $! >{d}/cp.pid",
        strait.display(),
        d = dir.display(),
    )
}

fn sh(cmd: &str) {
    let status = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "{cmd}: {status}");
}

fn wait_file(path: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(s) = std::fs::read_to_string(path)
            && !s.trim().is_empty()
        {
            return s.trim().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn times_pushes_changes_and_a_restart() {
    let strait = strait();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    sh(&start(&strait, dir, "127.0.0.1:0", "127.0.0.1:0"));
    let pid_file = dir.join("cp.pid");
    let stop = format!(
        "p=$(cat {}); kill -TERM $p; while [ -e /proc/$p ]; do sleep 0.05; done",
        pid_file.display()
    );
    let server = wait_file(&dir.join("data/server"));
    let xds = wait_file(&dir.join("data/xds"));
    let restart = format!(
        "{stop}; {}",
        start(&strait, dir, server.trim_start_matches("http://"), &xds)
    );

    let api = Api::new(&server, &dir.join("data/token")).unwrap();
    let a = api.clone();
    tokio::task::spawn_blocking(move || a.seed(3, 2, 2).unwrap())
        .await
        .unwrap();
    let summary = run(Options {
        xds,
        clients: 3,
        api: Some(api),
        services: 3,
        changes: 2,
        restart_cmd: Some(restart),
        pid_file: Some(pid_file),
        timeout: Duration::from_secs(60),
    })
    .await;
    sh(&stop);
    let summary = summary.unwrap();

    let full = &summary["full_push"];
    assert!(full["all_synced_s"].as_f64().unwrap() > 0.0, "{summary:#}");
    // Three services on port 9080: three EDS clusters, and the listener 0.0.0.0_9080's routes.
    assert_eq!(full["per_client_resources"]["endpoints"], 3, "{summary:#}");
    assert!(full["per_client_resources"]["routes"].as_u64().unwrap() >= 1);
    let change = &summary["single_change"];
    assert!(change["write_to_last_client"]["max_s"].as_f64().unwrap() > 0.0);
    assert_eq!(change["samples_s"].as_array().unwrap().len(), 2);
    assert!(
        change["control_plane_push_latency"]["count"]
            .as_u64()
            .unwrap()
            >= 1,
        "{summary:#}"
    );
    assert!(
        summary["restart"]["sigterm_to_all_synced_s"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    assert!(
        summary["memory"]["steady_with_clients"]["rss_mb"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    assert_ne!(
        summary["memory"]["after_restart"]["pid"],
        summary["memory"]["before_restart"]["pid"]
    );
}
