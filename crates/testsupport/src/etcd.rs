//! A real etcd server on loopback, with a data directory of its own.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// An etcd process (Debian `etcd-server`, `/usr/bin/etcd` or `$ETCD_BIN`) on free loopback
/// ports, killed on drop. [`Etcd::stop`] and [`Etcd::start_again`] restart it on the same data
/// directory and ports.
pub struct Etcd {
    bin: PathBuf,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

/// The etcd binary: `$ETCD_BIN`, else `etcd` on the PATH or in /usr/bin.
pub fn etcd_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("ETCD_BIN") {
        return PathBuf::from(bin);
    }
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/bin"])
    {
        let p = Path::new(dir).join("etcd");
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "etcd is not installed: `apt-get install -y etcd-server` (Debian), or set ETCD_BIN to \
         an etcd 3.4+ binary"
    );
}

impl Etcd {
    /// Starts etcd and waits until it serves clients.
    pub fn start() -> Etcd {
        let mut etcd = Etcd {
            bin: etcd_bin(),
            dir: tempfile::tempdir().expect("a temporary directory for etcd"),
            client_port: crate::free_port(),
            peer_port: crate::free_port(),
            child: None,
        };
        etcd.start_again();
        etcd
    }

    /// `127.0.0.1:PORT`, the client endpoint.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// etcd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    /// Kills etcd (SIGKILL) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd (again) on its data directory and ports, and waits until it serves.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "etcd is already running");
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .expect("etcd's log file");
        let child = Command::new(&self.bin)
            .arg("--name=test")
            .arg(format!(
                "--data-dir={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            .arg("--log-level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("etcd's log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start etcd ({}): {e}; install it with `apt-get install -y etcd-server`",
                    self.bin.display()
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("etcd exited ({status}) at start; its log:\n{}", self.log());
            }
            if TcpStream::connect(("127.0.0.1", self.client_port)).is_ok()
                && health(self.client_port)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not become healthy in 20 s; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Etcd {
    /// Compacts etcd's history up to its current revision (physically: a watch from before it
    /// is refused), through etcd's JSON gateway; returns that revision.
    pub fn compact(&self) -> u64 {
        // Any range answers with the current revision in its header.
        let range = post(
            self.client_port,
            "/v3/kv/range",
            r#"{"key": "Lw==", "count_only": true}"#,
        );
        let revision: u64 = range["header"]["revision"]
            .as_str()
            .and_then(|r| r.parse().ok())
            .unwrap_or_else(|| panic!("etcd's range answer has no revision: {range}"));
        let compacted = post(
            self.client_port,
            "/v3/kv/compaction",
            &format!(r#"{{"revision": "{revision}", "physical": true}}"#),
        );
        assert!(
            compacted.get("header").is_some(),
            "etcd did not compact to {revision}: {compacted}"
        );
        revision
    }
}

/// A POST of JSON to etcd's gateway; its JSON answer.
fn post(port: u16, path: &str, body: &str) -> serde_json::Value {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("cannot reach etcd at 127.0.0.1:{port}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    let json = reply.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(json)
        .unwrap_or_else(|e| panic!("etcd answered {path} with no JSON ({e}): {reply}"))
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether etcd's `/health` says it is healthy.
fn health(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.contains("\"health\":\"true\"")
}
