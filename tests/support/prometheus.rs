//! Debian's real Prometheus for the tests: started on a free loopback port with a config of the
//! test's, and queried over its HTTP API.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use strait_testsupport::{free_port, http_get};

/// Prometheus, or a failure that says how to install it.
pub fn prometheus_bin() -> &'static str {
    let ok = Command::new("prometheus")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "Prometheus is missing: install it with `apt-get install -y prometheus` (scripts/test.sh does)"
    );
    "prometheus"
}

/// The scrape config docs/observability.md gives: the proxies from the control plane's service
/// discovery, the control plane's own metrics.
pub fn prometheus_yml(control_plane: &str, token_file: &Path) -> String {
    format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n\
         - job_name: strait-proxies\n  http_sd_configs:\n  - url: http://{control_plane}/debug/prometheus_sd\n    refresh_interval: 1s\n    authorization:\n      type: Bearer\n      credentials_file: {}\n\
         - job_name: strait-control-plane\n  static_configs:\n  - targets: ['{control_plane}']\n",
        token_file.display()
    )
}

pub struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    pub fn start(config: &str) -> Prometheus {
        let bin = prometheus_bin();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("prometheus.yml");
        std::fs::write(&file, config).unwrap();
        let addr: SocketAddr = (IpAddr::from([127, 0, 0, 1]), free_port()).into();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        Prometheus {
            child,
            addr,
            _dir: dir,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// The instant query's result vector (empty while Prometheus is not up yet).
    pub async fn query(&self, promql: &str) -> Vec<Value> {
        let url = format!(
            "http://{}/api/v1/query?query={}",
            self.addr,
            url_encode(promql)
        );
        match http_get(&url, &[]).await {
            Ok(reply) if reply.status == 200 => reply.json()["data"]["result"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// Polls `promql` until `done` holds of its result, or fails with the last result.
    pub async fn until(&self, promql: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let result = self.query(promql).await;
            if done(&result) {
                return result;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus did not answer `{promql}` as expected within 60 s; last result: \
                 {result:#?}\nits log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
