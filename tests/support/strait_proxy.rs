//! A `strait-proxy` process for scenario tests, built in this workspace beside `strait`.

use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use strait_testsupport::http_get;

/// The `strait-proxy` binary, next to `strait` in the target folder.
pub fn strait_proxy_bin() -> PathBuf {
    super::bin("strait-proxy")
}

/// A running strait-proxy, killed when dropped; its log lives in a temp dir.
pub struct StraitProxy {
    name: String,
    child: Child,
    pub admin: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl StraitProxy {
    /// Starts `strait-proxy ARGS --admin ADMIN`.
    pub fn start(name: &str, args: &[&str], admin: SocketAddr) -> StraitProxy {
        let dir = tempfile::Builder::new()
            .prefix(&format!("strait-proxy-{name}-"))
            .tempdir()
            .unwrap();
        let log = dir.path().join("strait-proxy.log");
        let file = File::create(&log).unwrap();
        let child = Command::new(strait_proxy_bin())
            .args(args)
            .args(["--admin", &admin.to_string()])
            .env("RUST_LOG", "info,strait_proxy=debug")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("starting strait-proxy");
        StraitProxy {
            name: name.to_string(),
            child,
            admin,
            log,
            _dir: dir,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (`INT`, `TERM`, ...) with kill(1).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args(["-s", name, &self.child.id().to_string()])
            .status()
            .expect("running kill");
        assert!(
            status.success(),
            "kill -s {name} {} failed",
            self.child.id()
        );
    }

    /// Waits up to `timeout` for the process to exit; its exit status, or `None` if it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn check_running(&mut self, when: &str) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!(
                "strait-proxy {} exited {when}: {status}\n{}",
                self.name,
                self.log()
            );
        }
    }

    /// Waits until `/ready` says `LIVE`.
    pub async fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let url = format!("http://{}/ready", self.admin);
            if let Ok(r) = http_get(&url, &[]).await
                && r.status == 200
                && r.body.trim() == "LIVE"
            {
                return;
            }
            self.check_running("before it was ready");
            assert!(
                Instant::now() < deadline,
                "strait-proxy {} is not ready after {timeout:?}; log:\n{}",
                self.name,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until something accepts connections on `addr`.
    pub async fn wait_listener(&mut self, addr: SocketAddr) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            self.check_running("while waiting for a listener");
            assert!(
                Instant::now() < deadline,
                "strait-proxy {} has no listener on {addr} after 10 s; config:\n{}\nlog:\n{}",
                self.name,
                self.config_dump().await,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until something accepts connections on `addr` (for a shared reference; does not
    /// check whether the process is still running).
    pub async fn wait_listener_shared(&self, addr: SocketAddr) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "strait-proxy {} has no listener on {addr} after 10 s; config:\n{}\nlog:\n{}",
                self.name,
                self.config_dump().await,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// One sample of `/stats/prometheus` by its name and labels as written
    /// (`envoy_cluster_upstream_rq_total{envoy_cluster_name="inbound|9080||"}`).
    pub async fn stat(&self, sample: &str) -> Option<u64> {
        let url = format!("http://{}/stats/prometheus", self.admin);
        let body = http_get(&url, &[]).await.ok()?.body;
        body.lines().find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == sample).then(|| value.parse().ok())?
        })
    }

    /// The admin `/config_dump` (strait-proxy's own JSON shape).
    pub async fn config_dump(&self) -> String {
        let url = format!("http://{}/config_dump", self.admin);
        http_get(&url, &[])
            .await
            .unwrap_or_else(|e| panic!("strait-proxy {}: {e}", self.name))
            .body
    }
}

impl Drop for StraitProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!(
                "--- strait-proxy {} log (last 60 lines) ---\n{}",
                self.name,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}
