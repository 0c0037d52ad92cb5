//! Memory and CPU of a process, from `/proc/PID/status` and `/proc/PID/stat`.

use std::path::Path;

use serde_json::{Value, json};

/// Linux reports CPU times in `/proc/PID/stat` in clock ticks of USER_HZ, 100 on every Linux
/// architecture the project builds for.
const TICKS_PER_SECOND: f64 = 100.0;

/// One look at a process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub pid: u32,
    /// Resident memory now (VmRSS).
    pub rss_kb: u64,
    /// The most resident memory the process ever had (VmHWM).
    pub hwm_kb: u64,
    /// User and system CPU time used so far.
    pub cpu_s: f64,
}

impl Sample {
    /// Reads the process whose id is in `pid_file`; `None` if it is not running.
    pub fn of_pid_file(pid_file: &Path) -> Option<Sample> {
        let pid: u32 = std::fs::read_to_string(pid_file)
            .ok()?
            .trim()
            .parse()
            .ok()?;
        Sample::of(pid)
    }

    pub fn of(pid: u32) -> Option<Sample> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        Some(Sample {
            pid,
            rss_kb: status_kb(&status, "VmRSS")?,
            hwm_kb: status_kb(&status, "VmHWM")?,
            cpu_s: cpu_seconds(&stat)?,
        })
    }

    pub fn to_json(&self) -> Value {
        json!({
            "pid": self.pid,
            "rss_mb": mb(self.rss_kb),
            "hwm_mb": mb(self.hwm_kb),
            "cpu_s": self.cpu_s,
        })
    }
}

fn mb(kb: u64) -> f64 {
    (kb as f64 / 1024.0 * 10.0).round() / 10.0
}

fn status_kb(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        rest.trim().strip_suffix("kB")?.trim().parse().ok()
    })
}

/// utime + stime (fields 14 and 15), counted after the command name, which may hold spaces.
fn cpu_seconds(stat: &str) -> Option<f64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state): utime is field 14, stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / TICKS_PER_SECOND)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let s = Sample::of(std::process::id()).unwrap();
        assert!(s.rss_kb > 0 && s.hwm_kb >= s.rss_kb, "{s:?}");
        assert!(s.cpu_s >= 0.0);
    }

    #[test]
    fn parses_stat_with_a_spaced_name() {
        let stat = "42 (a b) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 1 2 3";
        assert_eq!(cpu_seconds(stat), Some(3.0));
        assert_eq!(
            status_kb("VmHWM:\t  2048 kB\nVmRSS:\t1024 kB\n", "VmRSS"),
            Some(1024)
        );
    }
}
