//! When a pod's app is ready for traffic: `strait run` registers the pod's endpoint only then,
//! so that nothing is routed to an app that does not listen yet (a Flask app takes seconds).
//!
//! By default the app is ready once it listens on every port it declares (`--port`), read from
//! the socket table of its own network namespace (`/proc/PID/net/tcp` and `tcp6`), on the
//! address inbound traffic reaches it at (127.0.0.1 with iptables capture, its own address
//! without) or on every address. `--readiness PORT/PATH` makes it an HTTP GET instead, through
//! the sidecar's inbound path as a kubelet probe goes through Istio's: ready on 2xx or 3xx.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Result, anyhow};

/// What makes an app ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// It listens on each of these ports.
    Listening(BTreeSet<u16>),
    /// An HTTP GET of this path on this port answers 2xx or 3xx.
    Http { port: u16, path: String },
}

impl Readiness {
    /// `--readiness PORT/PATH`, else every declared port.
    pub fn new(flag: Option<&str>, ports: impl IntoIterator<Item = u16>) -> Result<Readiness> {
        let Some(flag) = flag else {
            return Ok(Readiness::Listening(ports.into_iter().collect()));
        };
        let bad =
            || anyhow!("--readiness {flag:?} is not PORT/PATH: write --readiness 9080/health");
        let (port, path) = match flag.split_once('/') {
            Some((port, path)) => (port, format!("/{path}")),
            None => (flag, "/".to_string()),
        };
        let port: u16 = port.parse().ok().filter(|p| *p != 0).ok_or_else(bad)?;
        Ok(Readiness::Http { port, path })
    }

    /// What is awaited, for the log.
    pub fn describe(&self) -> String {
        match self {
            Readiness::Listening(ports) => {
                let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
                format!("the app to listen on port {}", ports.join(", "))
            }
            Readiness::Http { port, path } => format!("GET :{port}{path} to answer 2xx or 3xx"),
        }
    }

    /// Whether the app is ready now. `app_pid` is a process in the app's network namespace;
    /// `inbound` is where inbound traffic reaches the app (127.0.0.1 with capture, the app's
    /// own address without); `probe` is the address an HTTP probe goes to.
    pub fn check(&self, app_pid: u32, inbound: IpAddr, probe: IpAddr) -> bool {
        match self {
            Readiness::Listening(ports) => {
                let listening = listening(app_pid);
                ports.iter().all(|port| {
                    listening.iter().any(|addr| {
                        addr.port() == *port && (addr.ip().is_unspecified() || addr.ip() == inbound)
                    })
                })
            }
            Readiness::Http { port, path } => http_ok(SocketAddr::new(probe, *port), path),
        }
    }
}

/// The listening TCP sockets of the network namespace `pid` is in.
fn listening(pid: u32) -> Vec<SocketAddr> {
    ["tcp", "tcp6"]
        .into_iter()
        .filter_map(|f| std::fs::read_to_string(format!("/proc/{pid}/net/{f}")).ok())
        .flat_map(|table| parse_listening(&table))
        .collect()
}

/// The LISTEN entries (state `0A`) of a `/proc/net/tcp` or `tcp6` table.
fn parse_listening(table: &str) -> Vec<SocketAddr> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let local = fields.nth(1)?;
            let state = fields.nth(1)?;
            (state == "0A").then_some(())?;
            let (ip, port) = local.split_once(':')?;
            let port = u16::from_str_radix(port, 16).ok()?;
            Some(SocketAddr::new(parse_ip(ip)?, port))
        })
        .collect()
}

/// An address as the kernel prints it: each 32-bit word in host (little-endian) order.
fn parse_ip(hex: &str) -> Option<IpAddr> {
    let word = |i: usize| -> Option<[u8; 4]> {
        u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16)
            .ok()
            .map(u32::to_le_bytes)
    };
    match hex.len() {
        8 => Some(IpAddr::V4(Ipv4Addr::from(word(0)?))),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            let v6 = Ipv6Addr::from(bytes);
            Some(match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            })
        }
        _ => None,
    }
}

fn http_ok(addr: SocketAddr, path: &str) -> bool {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(1)))
        .proxy(None)
        .build()
        .into();
    agent
        .get(&format!("http://{addr}{path}"))
        .call()
        .is_ok_and(|r| r.status().is_success() || r.status().is_redirection())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_listening_sockets_from_the_kernel_table() {
        // Two listeners (127.0.0.1:9080 and 0.0.0.0:15000), one established connection.
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:2378 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n   1: 00000000:3A98 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1337        0 2 1 0 100 0 0 10 0\n   2: 0100007F:2378 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 20 4 30 10 -1\n";
        assert_eq!(
            parse_listening(v4),
            vec![
                "127.0.0.1:9080".parse().unwrap(),
                "0.0.0.0:15000".parse().unwrap()
            ]
        );
        // [::]:9080 and ::ffff:127.45.0.2:8080.
        let v6 = "  sl  local_address                         remote_address                        st\n   0: 00000000000000000000000000000000:2378 00000000000000000000000000000000:0000 0A 0\n   1: 0000000000000000FFFF000002002D7F:1F90 00000000000000000000000000000000:0000 0A 0\n";
        let parsed = parse_listening(v6);
        assert_eq!(
            parsed,
            vec![
                "[::]:9080".parse().unwrap(),
                "127.45.0.2:8080".parse().unwrap()
            ]
        );
    }

    #[test]
    fn this_process_sees_its_own_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let ready = Readiness::new(None, [port]).unwrap();
        let me = std::process::id();
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(ready.check(me, lo, lo));
        // Listening elsewhere than where inbound traffic goes is not ready.
        assert!(!ready.check(me, "127.45.0.9".parse().unwrap(), lo));
        drop(l);
        assert!(!ready.check(me, lo, lo));
    }

    #[test]
    fn the_flag_reads_port_and_path() {
        assert_eq!(
            Readiness::new(Some("9080/health/ready"), [1]).unwrap(),
            Readiness::Http {
                port: 9080,
                path: "/health/ready".into()
            }
        );
        assert_eq!(
            Readiness::new(Some("8080"), []).unwrap(),
            Readiness::Http {
                port: 8080,
                path: "/".into()
            }
        );
        let err = Readiness::new(Some("health"), []).unwrap_err().to_string();
        assert!(err.contains("is not PORT/PATH"), "{err}");
    }
}
