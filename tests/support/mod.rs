//! Strait's end-to-end tests (`tests/*.rs` beside this folder) and what they share: the real
//! `strait` binary as a control plane in a temporary data directory and CLI commands against
//! it ([`ControlPlane`]), meshes of backends and proxies (Envoy or strait-proxy) for scenario
//! tests ([`mesh`]), strait-proxy processes ([`strait_proxy`]), long-running `strait`
//! processes ([`process`]), and certificates, Secrets and curl for the TLS tasks ([`tls`]).

#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod mesh;
pub mod platform;
pub mod process;
pub mod prometheus;
pub mod strait_proxy;
pub mod tls;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A binary of this workspace (`strait`, `strait-proxy`, `bookinfo`), from the target folder
/// this test runs from: `cargo build --workspace --all-targets` (scripts/test.sh) builds them
/// before the tests run; `cargo test` alone builds only the tests.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    // target/PROFILE/deps/TEST-HASH
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("a test binary in target/PROFILE/deps");
    let bin = dir.join(name);
    assert!(
        bin.is_file(),
        "{} is missing: build the workspace's binaries first: cargo build --workspace \
         --all-targets (bash scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// The `strait` binary.
pub fn strait() -> &'static str {
    static STRAIT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    STRAIT.get_or_init(|| bin("strait").display().to_string())
}

pub fn testdata() -> PathBuf {
    let dir = std::env::var_os("STRAIT_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata"));
    assert!(
        dir.join("istio-samples").is_dir(),
        "Istio's test data is missing at {}: set STRAIT_TESTDATA to the shared/testdata folder \
         (a checkout of the project expects it at ../shared/testdata beside the repository)",
        dir.display()
    );
    dir
}

/// A YAML fixture of these tests (`tests/fixtures/NAME`).
pub fn fixture(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name);
    assert!(path.is_file(), "the fixture {} is missing", path.display());
    path
}

/// A control plane process with its own data directory; killed when dropped.
pub struct ControlPlane {
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
    flags: Vec<String>,
    /// A command the control plane runs under (`prlimit --nofile=1024:1024 --`), if any.
    wrapper: Vec<String>,
}

impl ControlPlane {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts with extra `strait control-plane` flags.
    pub fn start_with(flags: &[&str]) -> Self {
        Self::start_under(&[], flags)
    }

    /// Starts `WRAPPER... strait control-plane FLAGS...`: under `prlimit`, for example.
    pub fn start_under(wrapper: &[&str], flags: &[&str]) -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), wrapper, flags)
    }

    /// Starts on `dir` (prepared by the caller: a replica given another's API token file).
    pub fn start_in(dir: tempfile::TempDir, wrapper: &[&str], flags: &[&str]) -> Self {
        let mut cp = ControlPlane {
            dir,
            child: None,
            flags: flags.iter().map(|f| f.to_string()).collect(),
            wrapper: wrapper.iter().map(|f| f.to_string()).collect(),
        };
        cp.restart();
        cp
    }

    /// The control plane's process id (the wrapper execs it: prlimit does).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the control plane runs").id()
    }

    /// Starts (again) on the same data directory, on free ports unless the flags fix them, and
    /// waits until it answers. Its log goes to `DIR/control-plane.log`.
    pub fn restart(&mut self) {
        let _ = std::fs::remove_file(self.dir.path().join("server"));
        let mut cmd = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(strait());
                cmd
            }
            None => Command::new(strait()),
        };
        cmd.arg("control-plane");
        for flag in ["--api-addr", "--xds-addr", "--tls-addr"] {
            if !self.flags.iter().any(|f| f == flag) {
                cmd.args([flag, "127.0.0.1:0"]);
            }
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("control-plane.log"))
            .unwrap();
        let child = cmd
            .arg("--data-dir")
            .arg(self.dir.path())
            .args(&self.flags)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting strait control-plane");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.dir.path().join("server").exists() && self.cli(&["get", "ns"]).status.success()
            {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("the control plane exited at start: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "the control plane did not answer within 20 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, as `kill -9` does.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("control-plane.log")).unwrap_or_default()
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn server(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server"))
            .unwrap()
            .trim()
            .to_string()
    }

    pub fn token(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("token"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// Runs `strait ARGS --data-dir DIR`.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_stdin(args, None)
    }

    pub fn cli_stdin(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let mut child = Command::new(strait())
            .args(args)
            .arg("--data-dir")
            .arg(self.dir.path())
            .env_remove("STRAIT_SERVER")
            .env_remove("STRAIT_TOKEN")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        if let Some(bytes) = stdin {
            input.write_all(bytes).unwrap();
        }
        drop(input);
        child.wait_with_output().unwrap()
    }

    /// Runs the CLI and returns its stdout, failing with its stderr if it fails.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "strait {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A raw HTTP request to the API with curl-free std networking; returns (status, body).
pub fn http(
    server: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    use std::io::Read;
    let addr = server.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let body = body.unwrap_or("");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    stream.read_to_string(&mut resp).unwrap();
    let code = resp
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

/// The sum of a metric's samples in Prometheus text whose labels include `labels`.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}
