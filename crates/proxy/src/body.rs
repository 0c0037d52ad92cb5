//! A request body on its way upstream: streamed as it arrives, with a copy kept (up to
//! [`BUFFER_LIMIT`], Envoy's default `per_connection_buffer_limit_bytes`) so that a retry can send
//! it again and a mirror can send it once it is complete. A body that outgrows the buffer goes on
//! streaming without the copy: the request is then not retried (as in Envoy) nor mirrored (Envoy
//! streams it to mirrors), and the proxy's memory does not grow with the body.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use hyper::HeaderMap;
use hyper::body::Incoming;
use tokio::sync::watch;

/// The most of a request body kept for retries and mirrors: 1 MiB, Envoy's default
/// `per_connection_buffer_limit_bytes`.
pub(crate) const BUFFER_LIMIT: usize = 1 << 20;

/// How far the client's body has come, for mirrors (which wait for all of it).
#[derive(Debug, Clone)]
pub(crate) enum Progress {
    Reading,
    /// All of it, within the buffer: its data and trailers.
    Complete(Vec<Bytes>, Option<HeaderMap>),
    /// It outgrew the buffer (or failed): it cannot be sent again.
    NotKept,
}

/// Why an attempt's body failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    /// The client's body failed: a malformed chunk, the client gone.
    #[error("the client's request body failed: {0}")]
    Downstream(String),
    /// A retry of a body that outgrew the buffer (not attempted: retries check first).
    #[error(
        "the request body outgrew the {BUFFER_LIMIT}-byte retry buffer and cannot be sent again"
    )]
    NotKept,
}

struct State {
    /// The client's body, until it ends or fails.
    incoming: Option<Incoming>,
    /// Data frames read so far, while they fit in the buffer.
    kept: Vec<Bytes>,
    kept_bytes: usize,
    /// Data frames read from the client so far, kept or not.
    frames: usize,
    overflowed: bool,
    ended: bool,
    trailers: Option<HeaderMap>,
    failed: Option<String>,
    /// Bytes read from the client, for the access log.
    received: Arc<AtomicU64>,
    progress: watch::Sender<Progress>,
    /// Whether the client's body has ended (or failed), for the timeouts that start then.
    done: watch::Sender<bool>,
}

impl State {
    fn finish(&mut self) {
        self.ended = true;
        self.incoming = None;
        self.done.send_replace(true);
        if !self.overflowed && self.progress.receiver_count() > 0 {
            self.progress
                .send_replace(Progress::Complete(self.kept.clone(), self.trailers.clone()));
        }
    }

    fn take_data(&mut self, d: &Bytes) {
        self.frames += 1;
        self.received.fetch_add(d.len() as u64, Ordering::Relaxed);
        if self.overflowed {
            return;
        }
        if self.kept_bytes + d.len() > BUFFER_LIMIT {
            tracing::debug!(
                limit = BUFFER_LIMIT,
                "the request body outgrew the buffer: streamed on, not retried or mirrored"
            );
            self.overflowed = true;
            self.kept = Vec::new();
            self.kept_bytes = 0;
            self.progress.send_replace(Progress::NotKept);
        } else {
            self.kept_bytes += d.len();
            self.kept.push(d.clone());
        }
    }
}

/// One attempt's view of the request body: what was kept, then the rest as the client sends it.
pub(crate) struct RequestBody {
    source: Source,
    /// The body's length, when the client said (`Content-Length`).
    length: Option<u64>,
}

enum Source {
    Shared {
        state: Arc<Mutex<State>>,
        /// Data frames of this attempt so far.
        pos: usize,
        trailers_sent: bool,
    },
    /// A complete body (a mirror's copy): its frames in reverse, then its trailers.
    Complete(Vec<Bytes>, Option<HeaderMap>),
}

impl RequestBody {
    /// The client's body, to be streamed upstream and kept while it fits.
    pub(crate) fn new(incoming: Incoming) -> RequestBody {
        let length = incoming.size_hint().exact();
        let (progress, _) = watch::channel(Progress::Reading);
        let mut state = State {
            incoming: Some(incoming),
            kept: Vec::new(),
            kept_bytes: 0,
            frames: 0,
            overflowed: false,
            ended: false,
            trailers: None,
            failed: None,
            received: Arc::default(),
            progress,
            done: watch::channel(false).0,
        };
        if state.incoming.as_ref().is_some_and(|b| b.is_end_stream()) {
            // No body (a GET): nothing to read, it is complete already.
            state.ended = true;
            state.incoming = None;
            state.done.send_replace(true);
            state
                .progress
                .send_replace(Progress::Complete(Vec::new(), None));
        }
        RequestBody {
            source: Source::Shared {
                state: Arc::new(Mutex::new(state)),
                pos: 0,
                trailers_sent: false,
            },
            length,
        }
    }

    /// A complete body of these frames and trailers.
    pub(crate) fn complete(mut frames: Vec<Bytes>, trailers: Option<HeaderMap>) -> RequestBody {
        let length = frames.iter().map(|f| f.len() as u64).sum();
        frames.reverse();
        RequestBody {
            source: Source::Complete(frames, trailers),
            length: Some(length),
        }
    }

    /// The body from its start again, for another attempt: the kept frames, then the rest.
    pub(crate) fn replay(&self) -> RequestBody {
        let source = match &self.source {
            Source::Shared { state, .. } => Source::Shared {
                state: state.clone(),
                pos: 0,
                trailers_sent: false,
            },
            Source::Complete(frames, trailers) => {
                Source::Complete(frames.clone(), trailers.clone())
            }
        };
        RequestBody {
            source,
            length: self.length,
        }
    }

    fn with_state<T>(&self, f: impl FnOnce(&State) -> T) -> Option<T> {
        match &self.source {
            Source::Shared { state, .. } => {
                Some(f(&state.lock().unwrap_or_else(|p| p.into_inner())))
            }
            Source::Complete(..) => None,
        }
    }

    /// Whether another attempt can send the body again: it has been kept whole so far.
    pub(crate) fn replayable(&self) -> bool {
        self.with_state(|s| !s.overflowed && s.failed.is_none())
            .unwrap_or(true)
    }

    /// Whether the client's body has ended (or failed).
    pub(crate) fn is_ended(&self) -> bool {
        self.with_state(|s| s.ended || s.failed.is_some())
            .unwrap_or(true)
    }

    /// Why the client's body failed, if it did.
    pub(crate) fn downstream_failure(&self) -> Option<String> {
        self.with_state(|s| s.failed.clone()).flatten()
    }

    /// Bytes read from the client so far (it grows while the body streams).
    pub(crate) fn received(&self) -> Option<Arc<AtomicU64>> {
        self.with_state(|s| s.received.clone())
    }

    /// Resolves once the client's body has ended (or failed): when Envoy's route and per-try
    /// timeouts start.
    pub(crate) fn ended(&self) -> impl Future<Output = ()> + Send + 'static {
        let done = self.with_state(|s| s.done.subscribe());
        async move {
            if let Some(mut done) = done {
                // A closed channel (the request is gone) ends the wait too.
                let _ = done.wait_for(|d| *d).await;
            }
        }
    }

    /// Follows the body until it is complete or cannot be kept.
    pub(crate) fn progress(&self) -> watch::Receiver<Progress> {
        match &self.source {
            Source::Shared { state, .. } => state
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .progress
                .subscribe(),
            Source::Complete(frames, trailers) => {
                let mut frames = frames.clone();
                frames.reverse();
                watch::channel(Progress::Complete(frames, trailers.clone())).1
            }
        }
    }
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let (state, pos, trailers_sent) = match &mut self.get_mut().source {
            Source::Complete(frames, trailers) => {
                return Poll::Ready(match frames.pop() {
                    Some(d) => Some(Ok(Frame::data(d))),
                    None => trailers.take().map(|t| Ok(Frame::trailers(t))),
                });
            }
            Source::Shared {
                state,
                pos,
                trailers_sent,
            } => (state, pos, trailers_sent),
        };
        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if *pos < s.frames {
                if s.overflowed {
                    return Poll::Ready(Some(Err(BodyError::NotKept)));
                }
                let d = s.kept[*pos].clone();
                *pos += 1;
                return Poll::Ready(Some(Ok(Frame::data(d))));
            }
            if let Some(reason) = &s.failed {
                return Poll::Ready(Some(Err(BodyError::Downstream(reason.clone()))));
            }
            if s.ended {
                if *trailers_sent {
                    return Poll::Ready(None);
                }
                *trailers_sent = true;
                return Poll::Ready(s.trailers.clone().map(|t| Ok(Frame::trailers(t))));
            }
            let Some(incoming) = s.incoming.as_mut() else {
                return Poll::Ready(None);
            };
            match ready!(Pin::new(incoming).poll_frame(cx)) {
                None => {
                    s.finish();
                    *trailers_sent = true;
                    return Poll::Ready(None);
                }
                Some(Err(e)) => {
                    s.failed = Some(crate::error_chain(&e));
                    s.incoming = None;
                    s.done.send_replace(true);
                    if !s.overflowed {
                        s.progress.send_replace(Progress::NotKept);
                    }
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(d) => {
                        s.take_data(&d);
                        *pos += 1;
                        // The last frame by its length: hyper then stops polling, so the end
                        // is noted now, not at a `None` that never comes.
                        if s.incoming.as_ref().is_some_and(|b| b.is_end_stream()) {
                            s.finish();
                            *trailers_sent = true;
                        }
                        return Poll::Ready(Some(Ok(Frame::data(d))));
                    }
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            s.trailers = Some(t.clone());
                            s.finish();
                            *trailers_sent = true;
                            return Poll::Ready(Some(Ok(Frame::trailers(t))));
                        }
                        // A frame of another kind: nothing to pass on.
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Source::Complete(frames, trailers) => frames.is_empty() && trailers.is_none(),
            Source::Shared {
                state,
                pos,
                trailers_sent,
            } => {
                let s = state.lock().unwrap_or_else(|p| p.into_inner());
                *pos >= s.frames
                    && s.failed.is_none()
                    && ((s.ended && (*trailers_sent || s.trailers.is_none()))
                        || s.incoming.as_ref().is_some_and(|b| b.is_end_stream()))
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self.length {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn a_complete_body_replays_its_frames_and_trailers() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        let body = RequestBody::complete(
            vec![Bytes::from("ab"), Bytes::from("cd")],
            Some(trailers.clone()),
        );
        assert_eq!(body.size_hint().exact(), Some(4));
        for b in [body.replay(), body] {
            let collected = b.collect().await.unwrap();
            assert_eq!(collected.trailers(), Some(&trailers));
            assert_eq!(collected.to_bytes(), Bytes::from("abcd"));
        }
    }
}
