//! The original destination of a connection that iptables REDIRECTed to the proxy
//! (SO_ORIGINAL_DST, and IP6T_SO_ORIGINAL_DST for IPv6), through nix's safe socket options.

use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};

use nix::sys::socket::{SockaddrIn, SockaddrIn6, getsockopt, sockopt};
use tokio::net::TcpStream;

/// The address the client connected to before the redirect; `None` when the connection was
/// not redirected (the kernel has no NAT entry for it) or the platform cannot tell.
pub(crate) fn get(stream: &TcpStream) -> Option<SocketAddr> {
    let local = stream.local_addr().ok()?;
    let found = if local.is_ipv4() {
        getsockopt(stream, sockopt::OriginalDst)
            .ok()
            .map(|sa| SocketAddr::V4(SocketAddrV4::from(SockaddrIn::from(sa))))
    } else {
        getsockopt(stream, sockopt::Ip6tOriginalDst)
            .ok()
            .map(|sa| SocketAddr::V6(SocketAddrV6::from(SockaddrIn6::from(sa))))
    };
    if found.is_none() {
        tracing::debug!(%local, "no original destination (not redirected): using the local address");
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection that was not redirected has no original destination: the caller falls
    /// back to the local address. (A redirected one is tested end to end in a network
    /// namespace with iptables rules.)
    #[tokio::test]
    async fn a_plain_connection_has_no_original_destination() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let _client = client.unwrap();
        let (server, _) = server.unwrap();
        // Without a NAT entry the kernel answers ENOENT (or the conntrack module is absent).
        assert_eq!(get(&server), None);
    }
}
