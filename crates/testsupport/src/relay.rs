//! A TCP relay on loopback that a test can cut and restore: a network fault between one client
//! and its server (a control plane and etcd, say) without network namespaces.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

/// Relays every connection to its address on to `target`, byte for byte, until
/// [`Relay::cut`]: then every open connection is closed and new ones are closed as soon as
/// they are accepted (the client sees its connections fail at once, as after a reset), until
/// [`Relay::restore`]. Stopped on drop.
pub struct Relay {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

struct Shared {
    target: SocketAddr,
    cut: AtomicBool,
    stopped: AtomicBool,
    /// Both ends of every relayed connection, to close them when cut.
    open: Mutex<Vec<(TcpStream, TcpStream)>>,
    /// Connections accepted and closed while cut.
    refused: AtomicU64,
}

impl Relay {
    /// Starts relaying a free port on 127.0.0.1 to `target`.
    pub fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0")
            .expect("cannot bind 127.0.0.1:0 for a relay: is the loopback interface up?");
        let addr = listener.local_addr().expect("the relay's address");
        let shared = Arc::new(Shared {
            target,
            cut: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            open: Mutex::new(Vec::new()),
            refused: AtomicU64::new(0),
        });
        let s = shared.clone();
        thread::Builder::new()
            .name("relay-accept".into())
            .spawn(move || accept(listener, s))
            .expect("spawning the relay's thread");
        Relay { addr, shared }
    }

    /// `127.0.0.1:PORT`, where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every open connection, and every new one until [`Relay::restore`].
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
        for (a, b) in self.shared.open.lock().unwrap().drain(..) {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
    }

    /// Relays new connections again.
    pub fn restore(&self) {
        self.shared.cut.store(false, Ordering::SeqCst);
    }

    /// How many connections were closed on arrival while cut: that the client tried.
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::SeqCst)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        self.cut();
        // Wakes the accepting thread, which then sees `stopped`.
        let _ = TcpStream::connect(self.addr);
    }
}

fn accept(listener: TcpListener, shared: Arc<Shared>) {
    for conn in listener.incoming() {
        if shared.stopped.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = conn else { continue };
        if shared.cut.load(Ordering::SeqCst) {
            shared.refused.fetch_add(1, Ordering::SeqCst);
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let Ok(server) = TcpStream::connect(shared.target) else {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let (Ok(c2), Ok(s2), Ok(c3), Ok(s3)) = (
            client.try_clone(),
            server.try_clone(),
            client.try_clone(),
            server.try_clone(),
        ) else {
            continue;
        };
        {
            let mut open = shared.open.lock().unwrap();
            // Forget the connections that ended by themselves.
            open.retain(|(a, _)| a.peer_addr().is_ok());
            open.push((c3, s3));
        }
        for (from, to) in [(client, s2), (server, c2)] {
            let _ = thread::Builder::new()
                .name("relay-copy".into())
                .spawn(move || copy(from, to));
        }
    }
}

/// Copies until either side ends, then closes both.
fn copy(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        thread::spawn(move || {
            for c in l.incoming().flatten() {
                thread::spawn(move || {
                    let mut r = c.try_clone().unwrap();
                    let mut w = c;
                    let _ = std::io::copy(&mut r, &mut w);
                });
            }
        });
        addr
    }

    fn round_trip(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
        s.write_all(b"ping")?;
        let mut got = [0u8; 4];
        s.read_exact(&mut got)?;
        Ok(got.to_vec())
    }

    #[test]
    fn relays_cuts_and_restores() {
        let relay = Relay::start(echo());
        let mut open = TcpStream::connect(relay.addr()).unwrap();
        assert_eq!(round_trip(&mut open).unwrap(), b"ping");
        relay.cut();
        assert!(
            round_trip(&mut open).is_err(),
            "an open connection is closed"
        );
        let mut new = TcpStream::connect(relay.addr()).unwrap();
        assert!(round_trip(&mut new).is_err(), "a new one is closed");
        assert!(relay.refused() >= 1);
        relay.restore();
        let mut again = TcpStream::connect(relay.addr()).unwrap();
        assert_eq!(round_trip(&mut again).unwrap(), b"ping");
    }
}
