//! TLS connections that know who the peer is: a listener whose accepted connections finish
//! their handshake off the accept loop (bounded by a timeout) and carry the peer's verified
//! certificate, so that a gRPC server (tonic's `serve_with_incoming`) finds it in each request's
//! extensions as [`PeerInfo`].

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use crate::Identity;
use crate::cert::CertInfo;

/// How long a client may take to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who is on the other end of a TLS connection, as its certificate (checked against the trust
/// bundle during the handshake) says.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub addr: SocketAddr,
    /// The SPIFFE identity of the client certificate, when one was presented.
    pub identity: Option<Identity>,
    /// The client's certificate chain, leaf first (empty without a client certificate).
    pub chain: Vec<CertificateDer<'static>>,
}

/// A server-side TLS connection with its peer.
pub struct PeerStream {
    inner: TlsStream<TcpStream>,
    info: PeerInfo,
}

impl PeerStream {
    pub fn info(&self) -> &PeerInfo {
        &self.info
    }
}

impl tonic::transport::server::Connected for PeerStream {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Accepts TCP connections on `listener` and completes each TLS handshake with the current
/// config of `configs` (it changes when the server's certificate rotates), each in a task of its
/// own, so that a slow or silent client holds up nobody. Handshakes that fail or time out are
/// logged and dropped. The stream ends when the listener fails for good.
pub fn incoming(
    listener: TcpListener,
    configs: watch::Receiver<Arc<ServerConfig>>,
) -> ReceiverStream<io::Result<PeerStream>> {
    let (tx, rx) = mpsc::channel::<io::Result<PeerStream>>(64);
    tokio::spawn(async move {
        loop {
            let (tcp, addr) = match listener.accept().await {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = tokio_rustls::TlsAcceptor::from(configs.borrow().clone());
            if tx.is_closed() {
                return;
            }
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let chain: Vec<CertificateDer<'static>> = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .map(|c| c.to_vec())
                            .unwrap_or_default();
                        let identity = chain.first().and_then(|leaf| {
                            CertInfo::parse(leaf.as_ref(), "the client certificate")
                                .ok()?
                                .identities()
                                .into_iter()
                                .next()
                        });
                        let info = PeerInfo {
                            addr,
                            identity,
                            chain,
                        };
                        let _ = tx.send(Ok(PeerStream { inner: tls, info })).await;
                    }
                    Ok(Err(e)) => {
                        tracing::info!(peer = %addr, error = %crate::tls::explain(&e), "TLS handshake refused")
                    }
                    Err(_) => tracing::info!(
                        peer = %addr,
                        "TLS handshake not finished within {HANDSHAKE_TIMEOUT:?}: closed"
                    ),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// The chain of an error's messages, outermost first.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}
