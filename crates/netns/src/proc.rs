//! Processes recorded in state files: a pid with its start time, so a reused pid is not taken
//! for the recorded process.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// A process: its pid and its start time (clock ticks after boot, `/proc/PID/stat` field 22).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcId {
    pub pid: u32,
    pub start: u64,
}

/// (state, start time) from `/proc/PID/stat`.
fn stat(pid: u32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: fields follow the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    // Field 3 is the state; field 22 the start time: index 19 after the state.
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

impl ProcId {
    /// The process `pid` as it is now, if it exists.
    pub fn of(pid: u32) -> Option<ProcId> {
        stat(pid).map(|(_, start)| ProcId { pid, start })
    }

    /// This process.
    pub fn current() -> ProcId {
        ProcId::of(std::process::id()).expect("/proc/self/stat is readable")
    }
}

/// Is the recorded process still running (not a zombie, and not a new process with its pid)?
pub fn alive(p: ProcId) -> bool {
    matches!(stat(p.pid), Some((state, start)) if start == p.start && state != 'Z' && state != 'X')
}

fn signal(p: ProcId, sig: &str) {
    if alive(p) {
        let _ = std::process::Command::new("kill")
            .args([sig, &p.pid.to_string()])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Sends SIGTERM, waits up to `grace` for the process to end, then SIGKILL. Returns whether it
/// is gone.
pub fn terminate(p: ProcId, grace: Duration) -> bool {
    signal(p, "-TERM");
    let deadline = Instant::now() + grace;
    while alive(p) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if alive(p) {
        signal(p, "-KILL");
        let deadline = Instant::now() + Duration::from_secs(2);
        while alive(p) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    !alive(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_is_alive_until_terminated() {
        assert!(alive(ProcId::current()));
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let p = ProcId::of(child.id()).unwrap();
        assert!(alive(p));
        // A recorded start time that differs is another process.
        assert!(!alive(ProcId {
            pid: p.pid,
            start: p.start + 1
        }));
        let reaper = std::thread::spawn(move || child.wait());
        assert!(terminate(p, Duration::from_secs(2)));
        reaper.join().unwrap().unwrap();
        assert!(!alive(p));
    }
}
