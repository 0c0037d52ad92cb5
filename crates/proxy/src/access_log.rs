//! The access log: one JSON line per request with the fields of Istio's default JSON access log
//! format (`meshConfig.accessLogEncoding: JSON`), written when the response ends.
//!
//! Lines go through a bounded queue to a writer thread, so a slow disk never stalls the data
//! path; when the queue is full, lines are dropped and counted.

use std::fs::OpenOptions;
use std::io::{self, LineWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Lines waiting for the writer thread at most.
const QUEUE: usize = 16 * 1024;

/// Where access log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    Stdout,
    File(PathBuf),
}

impl std::str::FromStr for AccessLogTarget {
    type Err = std::convert::Infallible;

    /// `-` is standard output, anything else a file path.
    fn from_str(s: &str) -> Result<AccessLogTarget, Self::Err> {
        Ok(match s {
            "-" | "/dev/stdout" => AccessLogTarget::Stdout,
            path => AccessLogTarget::File(path.into()),
        })
    }
}

/// An open access log.
#[derive(Debug)]
pub struct AccessLog {
    tx: SyncSender<String>,
    dropped: AtomicU64,
}

impl AccessLog {
    /// Opens the target (a file is created, or appended to) and starts its writer thread.
    pub fn open(target: &AccessLogTarget) -> io::Result<AccessLog> {
        let mut out: Box<dyn Write + Send> = match target {
            AccessLogTarget::Stdout => Box::new(LineWriter::new(io::stdout())),
            AccessLogTarget::File(path) => Box::new(LineWriter::new(
                OpenOptions::new().create(true).append(true).open(path)?,
            )),
        };
        let (tx, rx) = std::sync::mpsc::sync_channel::<String>(QUEUE);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                for line in rx {
                    if let Err(e) = out.write_all(line.as_bytes()) {
                        tracing::warn!(error = %e, "cannot write the access log");
                    }
                }
            })?;
        Ok(AccessLog {
            tx,
            dropped: AtomicU64::new(0),
        })
    }

    pub(crate) fn write(&self, entry: &Entry) {
        let Ok(mut line) = serde_json::to_string(entry) else {
            return;
        };
        line.push('\n');
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    tracing::warn!(dropped = n, "access log queue full: lines dropped");
                }
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

/// One access log line, with Istio's default JSON fields (absent values are `null`).
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Entry {
    pub(crate) start_time: String,
    pub(crate) method: Option<String>,
    pub(crate) path: Option<String>,
    pub(crate) protocol: Option<String>,
    pub(crate) response_code: u16,
    /// Envoy's response flags, comma-separated, `-` for none.
    pub(crate) response_flags: String,
    pub(crate) response_code_details: Option<String>,
    pub(crate) connection_termination_details: Option<String>,
    pub(crate) upstream_transport_failure_reason: Option<String>,
    pub(crate) bytes_received: u64,
    pub(crate) bytes_sent: u64,
    /// Milliseconds from the first byte of the request to the last of the response.
    pub(crate) duration: u64,
    /// Milliseconds the upstream took to answer with headers (`x-envoy-upstream-service-time`).
    pub(crate) upstream_service_time: Option<String>,
    pub(crate) x_forwarded_for: Option<String>,
    pub(crate) user_agent: Option<String>,
    pub(crate) request_id: Option<String>,
    pub(crate) authority: Option<String>,
    pub(crate) upstream_host: Option<String>,
    pub(crate) upstream_cluster: Option<String>,
    pub(crate) upstream_local_address: Option<String>,
    pub(crate) downstream_local_address: Option<String>,
    pub(crate) downstream_remote_address: Option<String>,
    pub(crate) requested_server_name: Option<String>,
    pub(crate) route_name: Option<String>,
}

impl Entry {
    pub(crate) fn started(at: SystemTime) -> Entry {
        Entry {
            start_time: rfc3339_millis(at),
            response_flags: "-".to_string(),
            ..Entry::default()
        }
    }
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `2026-12-01T21:30:00.123Z`, as Envoy's `%START_TIME%`.
pub(crate) fn rfc3339_millis(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_is_rfc3339_with_millis() {
        assert_eq!(rfc3339_millis(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_796_160_600_123);
        assert_eq!(rfc3339_millis(t), "2026-12-01T21:30:00.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339_millis(leap), "2000-02-29T00:00:00.000Z");
    }
}
