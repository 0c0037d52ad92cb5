//! The control plane's file descriptors: the soft limit raised to the hard limit at start (as
//! Go's runtime does), and a budget that splits them between the API's connections and xDS
//! streams, so that neither can starve the other (or the store) of descriptors.
//!
//! xDS connections are capped too, and each must complete its HTTP/2 handshake (the client
//! preface and its SETTINGS frame) within [`XDS_HANDSHAKE_TIMEOUT`]; a connection past the cap
//! is closed at once.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use nix::sys::resource::{Resource, getrlimit, setrlimit};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::Stream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Descriptors kept for everything but connections: the store, listeners, the runtime, logs.
const RESERVE: u64 = 128;

/// The most xDS connections, however many descriptors there are.
const MAX_XDS: usize = 65_536;

/// How long an xDS client has to send the HTTP/2 client preface and its first frame header.
pub const XDS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The HTTP/2 client preface (24 bytes) and the header of the SETTINGS frame that must follow.
const HANDSHAKE_BYTES: usize = 24 + 9;

/// How the descriptors are shared out.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// The soft limit, after raising it.
    pub descriptors: u64,
    pub api: strait_apiserver::Limits,
    pub xds: usize,
}

/// Raises the soft limit on open files to the hard limit, and splits what there is: half of
/// what is left after [`RESERVE`] may go to the API (at most its defaults), the rest to xDS.
pub fn raise_and_budget() -> Budget {
    let descriptors = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(error) => {
                tracing::warn!(%error, soft, hard, "could not raise the open-file limit");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(error) => {
            tracing::warn!(%error, "could not read the open-file limit; assuming 1024");
            1024
        }
    };
    budget(descriptors)
}

fn budget(descriptors: u64) -> Budget {
    let usable = usize::try_from(descriptors.saturating_sub(RESERVE).max(16)).unwrap_or(usize::MAX);
    let api = strait_apiserver::Limits::for_descriptors(usable / 2);
    let xds = usable.saturating_sub(api.descriptors()).clamp(1, MAX_XDS);
    Budget {
        descriptors,
        api,
        xds,
    }
}

/// Accepted xDS connections, at most `max` open at once (more are closed as they come), each
/// with the handshake deadline.
pub fn xds_incoming(
    listener: TcpListener,
    max: usize,
) -> impl Stream<Item = io::Result<XdsConn>> + Send + 'static {
    let permits = Arc::new(Semaphore::new(max));
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<XdsConn>>(16);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                // The server stopped: close the listener.
                () = tx.closed() => return,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of descriptors (EMFILE): wait a little rather than spin.
                    tracing::warn!(%error, "the xDS server could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                tracing::warn!(
                    "xDS connection refused: the control plane has as many as its open-file limit allows"
                );
                continue;
            };
            let conn = XdsConn {
                inner: stream,
                _permit: permit,
                handshake: Some((0, Box::pin(tokio::time::sleep(XDS_HANDSHAKE_TIMEOUT)))),
            };
            if tx.send(Ok(conn)).await.is_err() {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// An xDS connection: holds its place under the cap, and fails its reads if the HTTP/2
/// handshake does not arrive in time.
pub struct XdsConn {
    inner: TcpStream,
    _permit: OwnedSemaphorePermit,
    /// Bytes read so far and the deadline, until the handshake's bytes have arrived.
    handshake: Option<(usize, Pin<Box<tokio::time::Sleep>>)>,
}

impl Connected for XdsConn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.inner.connect_info()
    }
}

impl AsyncRead for XdsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        let Some((got, deadline)) = &mut this.handshake else {
            return poll;
        };
        *got += read;
        if *got >= HANDSHAKE_BYTES {
            this.handshake = None;
            return poll;
        }
        if poll.is_pending() && deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no HTTP/2 handshake within the deadline",
            )));
        }
        poll
    }
}

impl AsyncWrite for XdsConn {
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn the_budget_fits_the_descriptors() {
        for fds in [256, 1024, 4096, 1 << 20] {
            let b = budget(fds);
            assert!(
                (b.api.descriptors() + b.xds) as u64 + RESERVE <= fds.max(RESERVE + 16),
                "{fds}: {b:?}"
            );
            assert!(b.xds >= b.api.descriptors(), "{fds}: xDS keeps room: {b:?}");
        }
        let b = budget(1 << 20);
        assert_eq!(
            b.api.descriptors(),
            strait_apiserver::Limits::default().descriptors()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_xds_connection_without_a_handshake_is_closed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = Box::pin(xds_incoming(listener, 1));
        let _silent = TcpStream::connect(addr).await.unwrap();
        let mut conn = tokio_stream::StreamExt::next(&mut incoming)
            .await
            .unwrap()
            .unwrap();
        let mut buf = [0u8; 64];
        let err = conn.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        // One at a time: a second connection while the first is held is closed at once.
        let mut second = TcpStream::connect(addr).await.unwrap();
        tokio::time::resume();
        let n = tokio::time::timeout(Duration::from_secs(5), second.read(&mut buf))
            .await
            .expect("closed, not left open")
            .unwrap_or(0);
        assert_eq!(n, 0);
        drop(conn);
    }
}
