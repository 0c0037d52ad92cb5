//! A long-running `strait` process a test drives (`strait run`, `strait demo`): its stdout line
//! by line, its stderr in a file, signals, and a stop when the test ends, passing or failing.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub struct Spawned {
    /// What the messages call it (`strait run web`).
    pub name: String,
    pub child: Child,
    lines: mpsc::Receiver<String>,
    stderr: PathBuf,
    /// The signal that stops it when dropped, and how long it gets before SIGKILL.
    stop: (&'static str, Duration),
    _dir: tempfile::TempDir,
}

impl Spawned {
    /// Starts `cmd` with stdout piped and stderr to a file; when dropped it gets `stop_signal`
    /// (`-TERM`, `-INT`) and `grace` before SIGKILL.
    pub fn start(
        mut cmd: Command,
        name: &str,
        stop_signal: &'static str,
        grace: Duration,
    ) -> Spawned {
        let dir = tempfile::tempdir().unwrap();
        let stderr = dir.path().join("stderr");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Spawned {
            name: name.to_string(),
            child,
            lines: rx,
            stderr,
            stop: (stop_signal, grace),
            _dir: dir,
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The stdout lines that arrived since the last read, without waiting.
    pub fn new_lines(&mut self) -> Vec<String> {
        self.lines.try_iter().collect()
    }

    /// Stdout up to the line that starts with `end` (after leading blanks), that one included.
    pub fn read_until(&mut self, end: &str, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    let done = l.trim_start().starts_with(end);
                    lines.push(l);
                    if done {
                        return lines;
                    }
                }
                Err(_) => panic!(
                    "{}: no {end:?} line within {timeout:?}; stdout so far: {lines:?}\nstderr:\n{}",
                    self.name,
                    self.stderr()
                ),
            }
        }
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} {} ({})", self.child.id(), self.name);
    }

    /// Its stop signal, then the exit status within its grace time.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(self.stop.0);
        self.wait(self.stop.1)
    }

    /// The exit status, within `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not stop within {timeout:?}; stderr:\n{}",
                self.name,
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let (sig, grace) = self.stop;
            let _ = Command::new("kill")
                .args([sig, &self.child.id().to_string()])
                .status();
            let deadline = Instant::now() + grace;
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- {} stderr ---\n{}", self.name, self.stderr());
        }
    }
}
