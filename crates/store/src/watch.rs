//! Watches: history replay from a backend's event log, stitched to the live fan-out.
//!
//! Every write is sent to a broadcast channel after it commits, in revision order (the backends
//! send while holding their write lock). A watch subscribes to the channel *before* it reads any
//! history, so every event is either in the history it reads or arrives on the channel
//! afterwards; events the history already covered are skipped by revision. When the channel
//! overflows (the watcher is slow) or a revision is missing, the watch goes back to the event log
//! and catches up from its last revision, so a slow watcher loses nothing as long as the log
//! still holds what it missed.

use crate::{Event, Key, StoreError};
use std::collections::VecDeque;
use std::sync::{Arc, Weak};
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};

/// Capacity of the live fan-out channel, in events. A watcher further behind than this catches up
/// from the event log.
pub(crate) const CHANNEL_CAPACITY: usize = 1024;

/// How many matching events a watch reads from the log at a time.
const HISTORY_CHUNK: usize = 256;

/// Which events a watch wants.
#[derive(Clone, Debug)]
pub(crate) struct Filter {
    pub(crate) kind: Option<String>,
    pub(crate) namespace: Option<String>,
}

impl Filter {
    pub(crate) fn new(kind: Option<&str>, namespace: Option<&str>) -> Self {
        Filter {
            kind: kind.map(str::to_owned),
            namespace: namespace.map(str::to_owned),
        }
    }

    pub(crate) fn matches(&self, kind: &str, namespace: &str) -> bool {
        self.kind.as_deref().is_none_or(|k| k == kind)
            && self.namespace.as_deref().is_none_or(|n| n == namespace)
    }

    fn matches_key(&self, key: &Key) -> bool {
        self.matches(&key.kind, &key.namespace)
    }
}

/// A slice of the event log, as read by a watch.
pub(crate) struct HistoryChunk {
    /// Matching events, in revision order.
    pub(crate) events: Vec<Event>,
    /// Every event up to this revision has been looked at.
    pub(crate) scanned_to: u64,
    /// Whether the scan reached the end of the log.
    pub(crate) complete: bool,
}

/// A backend's event log, as watches read it.
pub(crate) trait History: Send + Sync + 'static {
    /// Up to `limit` matching events with revision > `after`. Err(Compacted) if events after
    /// `after` are no longer all retained.
    fn read_history(
        &self,
        filter: &Filter,
        after: u64,
        limit: usize,
    ) -> Result<HistoryChunk, StoreError>;
}

/// Why a watch ended.
#[derive(Debug)]
pub enum WatchEnd {
    /// The store was dropped (the control plane is shutting down).
    StoreClosed,
    /// The watcher fell so far behind that the events it missed were compacted: list again and
    /// watch from the list's revision.
    FellBehind { oldest: u64 },
    /// Reading the event log failed.
    Failed(StoreError),
}

/// A stream of events from [`crate::Store::watch`].
///
/// [`Watch::next`] returns None when the stream ends: when the store is dropped, or when the
/// watcher fell further behind than the retained history (it is otherwise caught up from the
/// event log, losing nothing). [`Watch::ended`] tells which.
pub struct Watch {
    filter: Filter,
    source: Weak<dyn History>,
    rx: broadcast::Receiver<Arc<Event>>,
    /// History events read but not yet returned.
    pending: VecDeque<Event>,
    /// Every event with revision <= `last` has been returned (or queued in `pending`) or skipped
    /// by the filter.
    last: u64,
    /// Whether the log may hold events after `last` that the channel will not deliver.
    catching_up: bool,
    ended: Option<WatchEnd>,
}

enum Step {
    Ready(Event),
    Live,
    End,
}

impl Watch {
    /// Subscribes to `tx` and reads the first chunk of history, so that an `after` older than the
    /// retained history fails here rather than on the first `next`.
    pub(crate) fn start(
        source: Weak<dyn History>,
        tx: &broadcast::Sender<Arc<Event>>,
        filter: Filter,
        after: u64,
    ) -> Result<Watch, StoreError> {
        let rx = tx.subscribe();
        let mut watch = Watch {
            filter,
            source,
            rx,
            pending: VecDeque::new(),
            last: after,
            catching_up: true,
            ended: None,
        };
        if let Some(source) = watch.source.upgrade() {
            let chunk = source.read_history(&watch.filter, after, HISTORY_CHUNK)?;
            watch.take_chunk(chunk);
        }
        Ok(watch)
    }

    /// The next event, waiting for one if needed. None when the watch has ended (see
    /// [`Watch::ended`]); every later call returns None too.
    ///
    /// Cancel-safe: if the future is dropped before it completes, no event is lost.
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            match self.step() {
                Step::Ready(event) => return Some(event),
                Step::End => return None,
                Step::Live => {}
            }
            match self.rx.recv().await {
                Ok(event) => {
                    if let Some(event) = self.on_live(&event) {
                        return Some(event);
                    }
                }
                Err(RecvError::Lagged(_)) => self.catching_up = true,
                Err(RecvError::Closed) => self.ended = Some(WatchEnd::StoreClosed),
            }
        }
    }

    /// The next event if one is available now, without waiting. None if there is none yet or the
    /// watch has ended (see [`Watch::ended`]).
    pub fn try_next(&mut self) -> Option<Event> {
        loop {
            match self.step() {
                Step::Ready(event) => return Some(event),
                Step::End => return None,
                Step::Live => {}
            }
            match self.rx.try_recv() {
                Ok(event) => {
                    if let Some(event) = self.on_live(&event) {
                        return Some(event);
                    }
                }
                Err(TryRecvError::Empty) => return None,
                Err(TryRecvError::Lagged(_)) => self.catching_up = true,
                Err(TryRecvError::Closed) => self.ended = Some(WatchEnd::StoreClosed),
            }
        }
    }

    /// Why the watch ended, once `next` has returned None.
    pub fn ended(&self) -> Option<&WatchEnd> {
        self.ended.as_ref()
    }

    /// The revision the watch has seen up to: every event at or below it has been returned or
    /// did not match the filter. A client may resume with `watch(.., after = revision())`.
    pub fn revision(&self) -> u64 {
        match self.pending.front() {
            Some(event) => event.object.revision - 1,
            None => self.last,
        }
    }

    /// Returns a queued history event, or reads more history, or says to go to the live channel.
    fn step(&mut self) -> Step {
        loop {
            if self.ended.is_some() {
                return Step::End;
            }
            if let Some(event) = self.pending.pop_front() {
                return Step::Ready(event);
            }
            if !self.catching_up {
                return Step::Live;
            }
            let Some(source) = self.source.upgrade() else {
                self.ended = Some(WatchEnd::StoreClosed);
                continue;
            };
            match source.read_history(&self.filter, self.last, HISTORY_CHUNK) {
                Ok(chunk) => self.take_chunk(chunk),
                Err(StoreError::Compacted { oldest }) => {
                    self.ended = Some(WatchEnd::FellBehind { oldest });
                }
                Err(error) => self.ended = Some(WatchEnd::Failed(error)),
            }
        }
    }

    fn take_chunk(&mut self, chunk: HistoryChunk) {
        self.pending.extend(chunk.events);
        self.last = self.last.max(chunk.scanned_to);
        self.catching_up = !chunk.complete;
    }

    /// Handles an event from the live channel: skips what history covered, filters, and falls
    /// back to the log if a revision is missing.
    fn on_live(&mut self, event: &Event) -> Option<Event> {
        let revision = event.object.revision;
        if revision <= self.last {
            return None;
        }
        if revision > self.last + 1 {
            // Cannot happen while the backends send every write in order; the log fills the gap.
            self.catching_up = true;
            return None;
        }
        self.last = revision;
        self.filter
            .matches_key(&event.object.key)
            .then(|| event.clone())
    }
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("filter", &self.filter)
            .field("revision", &self.revision())
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}
