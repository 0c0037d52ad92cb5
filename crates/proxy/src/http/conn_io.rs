//! The downstream connection as hyper sees it: the socket behind the HTTP/1 request checks
//! ([`h1_check`](super::h1_check)) and two timers.
//!
//! - A head the checks refuse never reaches hyper: hyper sees the end of the stream, closes, and
//!   the refusal (status, `x-strait-flags: DPE`, the reason) is written before the socket shuts.
//!   A refusal inside a body fails hyper's body read instead, and the request is answered 400.
//! - The request-headers timeout runs from a head's first byte to its last (Envoy's
//!   `request_headers_timeout`): a client that sends its head too slowly is cut off.
//! - The idle timeout closes a connection with no request in flight and no byte either way for
//!   that long (Envoy's `idle_timeout`).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::h1_check::{Refusal, Scanner};
use crate::io::Io;

/// What ended a connection early, for the access log.
#[derive(Debug, Clone)]
pub(crate) enum Ended {
    Refused(Refusal),
    HeaderTimeout,
    Idle,
}

/// State shared between the connection's IO and its requests.
#[derive(Debug, Default)]
pub(crate) struct ConnState {
    /// Requests in flight (their responses not yet finished).
    pub(crate) active: AtomicUsize,
    pub(crate) ended: Mutex<Option<Ended>>,
    /// The connection's reader, woken when the last request ends so that it arms the idle timer.
    reader: Mutex<Option<Waker>>,
}

impl ConnState {
    fn end(&self, why: Ended) {
        let mut e = self.ended.lock().unwrap_or_else(|p| p.into_inner());
        if e.is_none() {
            *e = Some(why);
        }
    }
}

/// One request in flight: counted while it lives.
pub(crate) struct InFlight(Arc<ConnState>);

impl InFlight {
    pub(crate) fn new(state: &Arc<ConnState>) -> InFlight {
        state.active.fetch_add(1, Ordering::SeqCst);
        InFlight(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::SeqCst) == 1 {
            let reader = self
                .0
                .reader
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            if let Some(w) = reader {
                w.wake();
            }
        }
    }
}

pub(crate) struct GuardedIo {
    inner: Io,
    /// `None`: HTTP/2 only, nothing to check.
    scanner: Option<Scanner>,
    /// Checked bytes not yet read by hyper, from `offset`.
    ready: Vec<u8>,
    offset: usize,
    /// Give hyper the end of the stream once `ready` is drained.
    eof: bool,
    /// A body refusal to fail hyper's read with.
    error: Option<Refusal>,
    /// The answer to a refused head, and how much of it is written.
    answer: Option<(Vec<u8>, usize)>,
    header_timeout: Option<Duration>,
    idle_timeout: Option<Duration>,
    head_started: Option<Instant>,
    last_activity: Instant,
    sleep: Pin<Box<Sleep>>,
    state: Arc<ConnState>,
}

impl GuardedIo {
    pub(crate) fn new(
        inner: Io,
        scanner: Option<Scanner>,
        header_timeout: Option<Duration>,
        idle_timeout: Option<Duration>,
        state: Arc<ConnState>,
    ) -> GuardedIo {
        let now = Instant::now();
        GuardedIo {
            inner,
            scanner,
            ready: Vec::new(),
            offset: 0,
            eof: false,
            error: None,
            answer: None,
            header_timeout,
            idle_timeout,
            head_started: None,
            last_activity: now,
            sleep: Box::pin(tokio::time::sleep_until(now + Duration::from_secs(3600))),
            state,
        }
    }

    /// The earliest timer that applies now, and what it means.
    fn deadline(&self) -> Option<(Instant, Ended)> {
        let header = self
            .head_started
            .zip(self.header_timeout)
            .map(|(s, t)| (s + t, Ended::HeaderTimeout));
        let idle = self
            .idle_timeout
            .filter(|_| {
                self.state.active.load(Ordering::SeqCst) == 0 && self.head_started.is_none()
            })
            .map(|t| (self.last_activity + t, Ended::Idle));
        match (header, idle) {
            (Some(h), Some(i)) => Some(if i.0 < h.0 { i } else { h }),
            (h, i) => h.or(i),
        }
    }

    fn take_in(&mut self, bytes: &[u8]) {
        self.last_activity = Instant::now();
        if self.offset == self.ready.len() {
            self.ready.clear();
            self.offset = 0;
        }
        let Some(scanner) = &mut self.scanner else {
            self.ready.extend_from_slice(bytes);
            return;
        };
        if let Err(refusal) = scanner.feed(bytes, &mut self.ready) {
            tracing::debug!(status = refusal.status, reason = %refusal.reason, "request refused");
            if refusal.in_body {
                self.error = Some(refusal.clone());
            } else {
                self.answer = Some((answer(&refusal), 0));
                self.eof = true;
            }
            self.state.end(Ended::Refused(refusal));
        }
        self.head_started = match (scanner.in_head(), self.head_started) {
            (true, None) => Some(Instant::now()),
            (true, started) => started,
            (false, _) => None,
        };
    }
}

/// The proxy's own answer to a refused head: the status, `x-strait-flags: DPE`, the reason.
fn answer(r: &Refusal) -> Vec<u8> {
    let reason = hyper::StatusCode::from_u16(r.status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Bad Request");
    let body = format!("{}\n", r.reason);
    format!(
        "HTTP/1.1 {} {reason}\r\ncontent-length: {}\r\ncontent-type: text/plain\r\n{}: DPE\r\nconnection: close\r\n\r\n{body}",
        r.status,
        body.len(),
        super::FLAGS_HEADER,
    )
    .into_bytes()
}

impl AsyncRead for GuardedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.offset < this.ready.len() {
                let n = buf.remaining().min(this.ready.len() - this.offset);
                buf.put_slice(&this.ready[this.offset..this.offset + n]);
                this.offset += n;
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            if let Some(r) = &this.error {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, r.clone())));
            }
            let mut tmp = [0u8; 16 * 1024];
            let mut read = ReadBuf::new(&mut tmp);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) if read.filled().is_empty() => this.eof = true,
                Poll::Ready(Ok(())) => {
                    let n = read.filled().len();
                    this.take_in(&tmp[..n]);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    *this.state.reader.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(cx.waker().clone());
                    let Some((at, why)) = this.deadline() else {
                        return Poll::Pending;
                    };
                    if this.sleep.deadline() != at {
                        this.sleep.as_mut().reset(at);
                    }
                    ready!(this.sleep.as_mut().poll(cx));
                    match why {
                        Ended::HeaderTimeout => {
                            tracing::debug!("request headers timeout: closing");
                            this.state.end(Ended::HeaderTimeout);
                            return Poll::Ready(Err(io::Error::new(
                                io::ErrorKind::TimedOut,
                                "request headers timeout",
                            )));
                        }
                        _ => {
                            tracing::debug!("idle timeout: closing");
                            this.state.end(Ended::Idle);
                            this.eof = true;
                        }
                    }
                }
            }
        }
    }
}

impl AsyncWrite for GuardedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.last_activity = Instant::now();
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.last_activity = Instant::now();
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some((bytes, written)) = &mut this.answer {
            while *written < bytes.len() {
                let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &bytes[*written..]))?;
                if n == 0 {
                    break;
                }
                *written += n;
            }
            this.answer = None;
            this.drain();
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl Drop for GuardedIo {
    fn drop(&mut self) {
        // hyper may close without shutting down (after an error): answer without waiting, the
        // answer is small enough for the socket's buffer.
        if let Some((bytes, written)) = self.answer.take() {
            let _ = self.inner.try_write(&bytes[written..]);
            self.drain();
        }
    }
}

impl GuardedIo {
    /// Reads and drops what the client already sent after a refused head, so that closing
    /// sends FIN, not a reset that could destroy the answer before the client reads it.
    fn drain(&mut self) {
        let mut buf = [0u8; 16 * 1024];
        for _ in 0..64 {
            match self.inner.try_read(&mut buf) {
                Ok(n) if n > 0 => {}
                _ => return,
            }
        }
    }
}
