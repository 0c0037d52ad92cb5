//! What the TLS task tests share: certificates made by Istio's own openssl commands, files the
//! proxies' uid can read, Secrets written through the API, and curl as the tasks run it.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::ControlPlane;

/// Fails, naming the package, unless `openssl` and `curl` are installed.
pub fn require_tools() {
    for (tool, install) in [
        ("openssl", "apt-get install -y openssl"),
        ("curl", "apt-get install -y curl"),
    ] {
        let ok = Command::new(tool)
            .arg("version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        assert!(ok, "`{tool}` is missing: install it with `{install}`");
    }
}

/// Runs shell command lines (Istio's docs' snippets, verbatim) in `dir`, failing with their
/// output if one fails.
pub fn shell(dir: &Path, lines: &[&str]) {
    for line in lines {
        let out = Command::new("sh")
            .arg("-c")
            .arg(line)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "`{line}` failed in {}:\n{}{}",
            dir.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Lets every user read `dir` and what is in it (the sidecars run as uid 1337).
pub fn readable_by_all(dir: &Path) {
    let out = Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// Base64, as a Secret's data holds it.
pub fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A Secret's YAML with the files' contents under `data`.
pub fn secret_yaml(
    namespace: &str,
    name: &str,
    secret_type: &str,
    files: &[(&str, &Path)],
) -> String {
    let data: String = files
        .iter()
        .map(|(key, path)| {
            format!(
                "  {key}: {}\n",
                base64(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
            )
        })
        .collect();
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {namespace}\ntype: {secret_type}\ndata:\n{data}"
    )
}

/// `strait ARGS` run in `dir` (for relative paths, as the docs' commands use), which must
/// succeed; its stdout.
pub fn strait_in(cp: &ControlPlane, dir: &Path, args: &[&str]) -> String {
    let out = Command::new(crate::strait())
        .args(args)
        .arg("--data-dir")
        .arg(cp.data_dir())
        .env_remove("STRAIT_SERVER")
        .env_remove("STRAIT_TOKEN")
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "strait {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// What curl got: the HTTP status (0 without an answer), the HTTP version, the body, curl's exit
/// code and its `-v` log.
#[derive(Debug, Clone)]
pub struct Curl {
    pub status: u16,
    pub version: String,
    pub body: String,
    pub exit: i32,
    pub log: String,
}

impl Curl {
    /// Runs `cmd` (a curl command; `-sS -v -o - -w ...` are added) and reads what it got.
    pub fn run(mut cmd: Command) -> Curl {
        let out: Output = cmd
            .args(["-sS", "-v", "--max-time", "5", "-o", "-"])
            .args(["-w", "\n%{http_code} %{http_version}"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, tail) = text.rsplit_once('\n').unwrap_or(("", &text));
        let mut parts = tail.split_whitespace();
        let status = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let version = parts.next().unwrap_or_default().to_string();
        Curl {
            status,
            version,
            body: body.to_string(),
            exit: out.status.code().unwrap_or(-1),
            log: String::from_utf8_lossy(&out.stderr).to_string(),
        }
    }
}

/// Probes until `ok` holds (at most `within`); returns the last probe and how long it took.
pub fn until(
    within: Duration,
    mut probe: impl FnMut() -> Curl,
    ok: impl Fn(&Curl) -> bool,
) -> (Curl, Duration) {
    let start = Instant::now();
    loop {
        let got = probe();
        if ok(&got) || start.elapsed() > within {
            return (got, start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
