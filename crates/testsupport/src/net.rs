//! Free ports and loopback addresses.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU64, Ordering};

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("cannot bind 127.0.0.1:0: is the loopback interface up?")
        .port()
}

/// A random address in 127.100.0.0 – 127.199.255.255 with a port that was free a moment ago.
///
/// The range stays clear of the hand-picked pod addresses tests use (`127.0.10.N` and the like),
/// and different tests (and test processes) get different addresses, so they do not collide.
pub fn free_loopback_addr() -> SocketAddr {
    let r = random_u64();
    let ip = IpAddr::V4(Ipv4Addr::new(
        127,
        100 + (r % 100) as u8,
        (r >> 8) as u8,
        1 + ((r >> 16) % 254) as u8,
    ));
    TcpListener::bind(SocketAddr::new(ip, 0))
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|e| panic!("cannot bind {ip}:0 ({e}): is 127.0.0.0/8 routed to lo?"))
}

fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    // RandomState is keyed randomly per process; the counter separates calls within one.
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_addresses_differ_and_bind() {
        let a = free_loopback_addr();
        let b = free_loopback_addr();
        assert_ne!(a, b);
        for addr in [a, b] {
            assert!(addr.ip().is_loopback());
            assert_ne!(addr.port(), 0);
            TcpListener::bind(addr).expect("a free address binds");
        }
        assert_ne!(free_port(), 0);
    }
}
