//! Watches: history replay from a backend's event log, stitched to the live fan-out.
//!
//! Every write is fanned out after it commits, in revision order (the backends send while
//! holding their write lock), to a queue per watch that holds the events its filter matches.
//! A watch registers its queue *before* it reads any history, so every event is either in the
//! history it reads or arrives in its queue afterwards; events the history already covered are
//! skipped by revision.
//!
//! A queue holds at most [`QUEUE_BYTES`] of events (their size as stored) and at most
//! [`QUEUE_EVENTS`] events. When a watcher does
//! not read and its queue would grow past that, the queue drops what it holds and is marked
//! overflowed: the watch then catches up from the event log from its last revision (reading
//! [`HISTORY_CHUNK_BYTES`] at a time), so a slow watcher costs bounded memory and loses nothing
//! as long as the log still holds what it missed; if it does not, the watch ends with
//! [`WatchEnd::FellBehind`] and its client must list again (HTTP 410 Gone in Kubernetes).

use crate::{Event, StoreError};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use tokio::sync::Notify;

/// The most event bytes a watch's queue holds before it overflows and the watch catches up
/// from the event log instead.
pub(crate) const QUEUE_BYTES: usize = 8 << 20;

/// The most events a watch's queue holds, however small they are.
pub(crate) const QUEUE_EVENTS: usize = 1024;

/// How many bytes of matching events a watch reads from the log at a time (at least one event).
pub(crate) const HISTORY_CHUNK_BYTES: usize = 8 << 20;

/// At most this many events per history read.
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
}

/// A committed write as the fan-out carries it: the event and its size as stored.
#[derive(Debug)]
pub(crate) struct Sent {
    pub(crate) event: Event,
    pub(crate) bytes: usize,
}

/// The size of an event as stored: its value's JSON and its key.
pub(crate) fn event_bytes(event: &Event, value_bytes: Option<usize>) -> usize {
    let key = &event.object.key;
    let value = value_bytes.unwrap_or_else(|| json_len(&event.object.value));
    value + key.kind.len() + key.namespace.len() + key.name.len()
}

/// The length of a value's compact JSON, without building it.
pub(crate) fn json_len(value: &serde_json::Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a Value to a sink that cannot fail cannot fail.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
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

/// Limits on one history read.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ChunkLimit {
    /// At most this many events.
    pub(crate) events: usize,
    /// Stop after the event that reaches this many bytes.
    pub(crate) bytes: usize,
}

impl ChunkLimit {
    /// Whether a chunk of `events` events and `bytes` bytes is full.
    pub(crate) fn full(&self, events: usize, bytes: usize) -> bool {
        events >= self.events || (events > 0 && bytes >= self.bytes)
    }
}

const CHUNK: ChunkLimit = ChunkLimit {
    events: HISTORY_CHUNK,
    bytes: HISTORY_CHUNK_BYTES,
};

/// A backend's event log, as watches read it.
pub(crate) trait History: Send + Sync + 'static {
    /// Matching events with revision > `after`, as many as `limit` allows. Err(Compacted) if
    /// events after `after` are no longer all retained.
    fn read_history(
        &self,
        filter: &Filter,
        after: u64,
        limit: ChunkLimit,
    ) -> Result<HistoryChunk, StoreError>;
}

/// One watch's queue of live events.
#[derive(Debug)]
struct Queue {
    filter: Filter,
    state: Mutex<QueueState>,
    /// Woken on every event, overflow and close (one waiter: the watch).
    notify: Notify,
}

#[derive(Debug, Default)]
struct QueueState {
    events: VecDeque<Arc<Sent>>,
    bytes: usize,
    /// Events were dropped: the watch must catch up from the log.
    overflowed: bool,
    /// The revision of the last write fanned out (matching or not).
    seen: u64,
    /// The store is gone.
    closed: bool,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The live fan-out of a store's writes to its watches.
#[derive(Debug, Default)]
pub(crate) struct Fanout {
    queues: Mutex<Vec<Weak<Queue>>>,
}

impl Fanout {
    fn lock(&self) -> MutexGuard<'_, Vec<Weak<Queue>>> {
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn register(&self, filter: Filter) -> Arc<Queue> {
        let queue = Arc::new(Queue {
            filter,
            state: Mutex::default(),
            notify: Notify::new(),
        });
        let mut queues = self.lock();
        queues.retain(|q| q.strong_count() > 0);
        queues.push(Arc::downgrade(&queue));
        queue
    }

    /// Hands committed writes, in revision order, to every watch whose filter they match.
    /// Call with the backend's write lock held.
    pub(crate) fn send(&self, sent: &[Arc<Sent>]) {
        let Some(last) = sent.last().map(|s| s.event.object.revision) else {
            return;
        };
        let mut queues = self.lock();
        queues.retain(|weak| {
            let Some(queue) = weak.upgrade() else {
                return false;
            };
            let mut state = queue.lock();
            let mut woke = false;
            for s in sent {
                let key = &s.event.object.key;
                if state.overflowed || !queue.filter.matches(&key.kind, &key.namespace) {
                    continue;
                }
                let full =
                    state.bytes + s.bytes > QUEUE_BYTES || state.events.len() >= QUEUE_EVENTS;
                if full && !state.events.is_empty() {
                    state.events.clear();
                    state.bytes = 0;
                    state.overflowed = true;
                } else {
                    state.bytes += s.bytes;
                    state.events.push_back(s.clone());
                }
                woke = true;
            }
            state.seen = last;
            drop(state);
            if woke {
                queue.notify.notify_one();
            }
            true
        });
    }
}

impl Drop for Fanout {
    fn drop(&mut self) {
        for queue in self.lock().iter().filter_map(Weak::upgrade) {
            queue.lock().closed = true;
            queue.notify.notify_one();
        }
    }
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
    inner: Inner,
}

enum Inner {
    /// Fed from a backend's own event log and fan-out (file, memory).
    Log(LogWatch),
    /// Fed by a task following an external store's watch (etcd).
    Feed(FeedWatch),
}

/// A watch on a backend's event log and live fan-out.
struct LogWatch {
    source: Weak<dyn History>,
    queue: Arc<Queue>,
    /// History events read but not yet returned.
    pending: VecDeque<Event>,
    /// Every event with revision <= `last` has been returned (or queued in `pending`) or skipped
    /// by the filter.
    last: u64,
    /// Whether the log may hold events after `last` that the queue will not deliver.
    catching_up: bool,
    ended: Option<WatchEnd>,
}

enum Step {
    Ready(Event),
    Live,
    End,
}

impl Watch {
    /// Registers with `fanout` and reads the first chunk of history, so that an `after` older
    /// than the retained history fails here rather than on the first `next`.
    pub(crate) fn start(
        source: Weak<dyn History>,
        fanout: &Fanout,
        filter: Filter,
        after: u64,
    ) -> Result<Watch, StoreError> {
        Ok(Watch {
            inner: Inner::Log(LogWatch::start(source, fanout, filter, after)?),
        })
    }

    pub(crate) fn from_feed(feed: FeedWatch) -> Watch {
        Watch {
            inner: Inner::Feed(feed),
        }
    }

    /// The next event, waiting for one if needed. None when the watch has ended (see
    /// [`Watch::ended`]); every later call returns None too.
    ///
    /// Cancel-safe: if the future is dropped before it completes, no event is lost.
    pub async fn next(&mut self) -> Option<Event> {
        match &mut self.inner {
            Inner::Log(w) => w.next().await,
            Inner::Feed(w) => w.next().await,
        }
    }

    /// The next event if one is available now, without waiting. None if there is none yet or the
    /// watch has ended (see [`Watch::ended`]).
    pub fn try_next(&mut self) -> Option<Event> {
        match &mut self.inner {
            Inner::Log(w) => w.try_next(),
            Inner::Feed(w) => w.try_next(),
        }
    }

    /// Why the watch ended, once `next` has returned None.
    pub fn ended(&self) -> Option<&WatchEnd> {
        match &self.inner {
            Inner::Log(w) => w.ended.as_ref(),
            Inner::Feed(w) => w.ended.as_ref(),
        }
    }

    /// The revision the watch has seen up to: every event at or below it has been returned or
    /// did not match the filter. A client may resume with `watch(.., after = revision())`.
    pub fn revision(&self) -> u64 {
        match &self.inner {
            Inner::Log(w) => w.revision(),
            Inner::Feed(w) => w.revision(),
        }
    }
}

impl LogWatch {
    fn start(
        source: Weak<dyn History>,
        fanout: &Fanout,
        filter: Filter,
        after: u64,
    ) -> Result<LogWatch, StoreError> {
        let queue = fanout.register(filter);
        let mut watch = LogWatch {
            source,
            queue,
            pending: VecDeque::new(),
            last: after,
            catching_up: true,
            ended: None,
        };
        if let Some(source) = watch.source.upgrade() {
            let chunk = source.read_history(&watch.queue.filter, after, CHUNK)?;
            watch.take_chunk(chunk);
        }
        Ok(watch)
    }

    async fn next(&mut self) -> Option<Event> {
        loop {
            match self.step() {
                Step::Ready(event) => return Some(event),
                Step::End => return None,
                Step::Live => {}
            }
            if let Some(event) = self.take_live() {
                return Some(event);
            }
            if self.ended.is_some() || self.catching_up {
                continue;
            }
            // A write between take_live and here left a permit: no wakeup is lost.
            self.queue.notify.notified().await;
        }
    }

    fn try_next(&mut self) -> Option<Event> {
        loop {
            match self.step() {
                Step::Ready(event) => return Some(event),
                Step::End => return None,
                Step::Live => {}
            }
            if let Some(event) = self.take_live() {
                return Some(event);
            }
            if self.ended.is_none() && self.catching_up {
                continue;
            }
            return None;
        }
    }

    fn revision(&self) -> u64 {
        match self.pending.front() {
            Some(event) => event.object.revision - 1,
            None => self.last,
        }
    }

    /// Returns a queued history event, or reads more history, or says to go to the live queue.
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
            match source.read_history(&self.queue.filter, self.last, CHUNK) {
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

    /// The next live event past what history covered; on overflow, switches to catching up;
    /// on close, ends. None if there is nothing to return now.
    fn take_live(&mut self) -> Option<Event> {
        let mut state = self.queue.lock();
        if state.overflowed {
            state.overflowed = false;
            state.events.clear();
            state.bytes = 0;
            self.catching_up = true;
            return None;
        }
        while let Some(sent) = state.events.pop_front() {
            state.bytes -= sent.bytes;
            let revision = sent.event.object.revision;
            if revision > self.last {
                self.last = revision;
                return Some(sent.event.clone());
            }
        }
        // Everything fanned out so far was returned or did not match.
        self.last = self.last.max(state.seen);
        if state.closed {
            self.ended = Some(WatchEnd::StoreClosed);
        }
        None
    }
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Watch");
        if let Inner::Log(w) = &self.inner {
            d.field("filter", &w.queue.filter);
        }
        d.field("revision", &self.revision())
            .field("ended", &self.ended())
            .finish_non_exhaustive()
    }
}

/// What a feeding task sends a [`FeedWatch`].
#[derive(Debug)]
pub(crate) enum Feed {
    /// Events that matched, in revision order, and the revision the feed has seen up to.
    Events(Vec<Event>, u64),
    /// Nothing matched up to this revision.
    Progress(u64),
    /// The watch ended.
    End(WatchEnd),
}

/// A watch fed through a bounded channel (the feeding task waits when it is full, so memory
/// stays bounded while the watcher does not read).
pub(crate) struct FeedWatch {
    rx: tokio::sync::mpsc::Receiver<Feed>,
    pending: VecDeque<Event>,
    /// Every event at or below it has been returned or did not match.
    last: u64,
    /// What the feed has seen up to once `pending` is returned.
    fed: u64,
    ended: Option<WatchEnd>,
}

impl FeedWatch {
    pub(crate) fn new(rx: tokio::sync::mpsc::Receiver<Feed>, after: u64) -> FeedWatch {
        FeedWatch {
            rx,
            pending: VecDeque::new(),
            last: after,
            fed: after,
            ended: None,
        }
    }

    fn take(&mut self, feed: Option<Feed>) {
        match feed {
            Some(Feed::Events(events, to)) => {
                self.pending.extend(events);
                self.fed = self.fed.max(to);
            }
            Some(Feed::Progress(to)) => self.fed = self.fed.max(to),
            Some(Feed::End(end)) => self.ended = Some(end),
            None => self.ended = Some(WatchEnd::StoreClosed),
        }
    }

    fn pop(&mut self) -> Option<Event> {
        let event = self.pending.pop_front()?;
        if self.pending.is_empty() {
            self.last = self.fed;
        }
        Some(event)
    }

    /// What is ready without reading the feed: `Some(Some(event))` a pending event,
    /// `Some(None)` the end, `None` nothing yet.
    fn ready(&mut self) -> Option<Option<Event>> {
        if let Some(event) = self.pop() {
            return Some(Some(event));
        }
        self.last = self.last.max(self.fed);
        self.ended.is_some().then_some(None)
    }

    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(ready) = self.ready() {
                return ready;
            }
            let feed = self.rx.recv().await;
            self.take(feed);
        }
    }

    fn try_next(&mut self) -> Option<Event> {
        loop {
            if let Some(ready) = self.ready() {
                return ready;
            }
            match self.rx.try_recv() {
                Ok(feed) => self.take(Some(feed)),
                Err(tokio::sync::mpsc::error::TryRecvError::Empty) => return None,
                Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => self.take(None),
            }
        }
    }

    /// Events of one revision (one etcd transaction) are returned together by `pending`; a
    /// watcher that resumes from here sees any it had not returned again.
    fn revision(&self) -> u64 {
        match self.pending.front() {
            Some(event) => event.object.revision.saturating_sub(1).max(self.last),
            None => self.last.max(self.fed),
        }
    }
}
