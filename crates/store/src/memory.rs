//! The in-memory backend, for tests: the same semantics as [`crate::FileStore`], without the disk.

use crate::file::{in_batch, single};
use crate::object::{check_delete, check_key, check_put, stamped};
use crate::watch::{ChunkLimit, Fanout, Filter, History, HistoryChunk, Sent, event_bytes};
use crate::{
    DEFAULT_HISTORY, DEFAULT_HISTORY_BYTES, Event, EventType, Key, Object, Store, StoreError,
    Watch, Write,
};
use serde_json::Value;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

/// A store in memory, lost when dropped. The event log keeps the last `history` events, and
/// at most `history_bytes` of them.
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    fanout: Fanout,
    history: usize,
    history_bytes: usize,
}

#[derive(Default)]
struct State {
    /// (kind, namespace, name) → (revision, value)
    objects: BTreeMap<(String, String, String), (u64, Value)>,
    /// Events `compacted + 1 ..= revision`, in order.
    events: VecDeque<Arc<Sent>>,
    /// The size of `events`.
    bytes: usize,
    revision: u64,
    /// The revision of the newest event removed from the log (0: none).
    compacted: u64,
}

impl MemoryStore {
    /// An empty store keeping the last [`DEFAULT_HISTORY`] events.
    pub fn new() -> Self {
        Self::with_history(DEFAULT_HISTORY)
    }

    /// An empty store keeping the last `history` events (at least 1).
    pub fn with_history(history: usize) -> Self {
        Self::with_history_bytes(history, DEFAULT_HISTORY_BYTES)
    }

    /// An empty store keeping the last `history` events (at least 1) and at most
    /// `history_bytes` of them (the newest is always kept).
    pub fn with_history_bytes(history: usize, history_bytes: usize) -> Self {
        MemoryStore {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                fanout: Fanout::default(),
                history: history.max(1),
                history_bytes,
            }),
        }
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("revision", &self.revision())
            .finish_non_exhaustive()
    }
}

fn map_key(key: &Key) -> (String, String, String) {
    (key.kind.clone(), key.namespace.clone(), key.name.clone())
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Writes change the state only after every check has passed, so a panic elsewhere while
        // the lock was held cannot leave it half-written.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records `events` (the next revisions) and sends them to watchers, under the state lock.
    fn append(&self, state: &mut State, events: Vec<Event>) {
        let sent: Vec<Arc<Sent>> = events
            .into_iter()
            .map(|event| {
                let bytes = event_bytes(&event, None);
                Arc::new(Sent { event, bytes })
            })
            .collect();
        for s in &sent {
            state.revision = s.event.object.revision;
            state.bytes += s.bytes;
            state.events.push_back(s.clone());
        }
        while state.events.len() > self.history
            || (state.bytes > self.history_bytes && state.events.len() > 1)
        {
            if let Some(old) = state.events.pop_front() {
                state.bytes -= old.bytes;
                state.compacted = old.event.object.revision;
            }
        }
        self.fanout.send(&sent);
    }
}

impl History for Inner {
    fn read_history(
        &self,
        filter: &Filter,
        after: u64,
        limit: ChunkLimit,
    ) -> Result<HistoryChunk, StoreError> {
        let state = self.lock();
        if after < state.compacted {
            return Err(StoreError::Compacted {
                oldest: state.compacted,
            });
        }
        let skip = usize::try_from(after - state.compacted).unwrap_or(usize::MAX);
        let mut events = Vec::new();
        let mut bytes = 0;
        for sent in state.events.iter().skip(skip) {
            let event = &sent.event;
            let key = &event.object.key;
            if filter.matches(&key.kind, &key.namespace) {
                if limit.full(events.len(), bytes) {
                    return Ok(HistoryChunk {
                        events,
                        scanned_to: event.object.revision - 1,
                        complete: false,
                    });
                }
                bytes += sent.bytes;
                events.push(event.clone());
            }
        }
        Ok(HistoryChunk {
            events,
            scanned_to: state.revision.max(after),
            complete: true,
        })
    }
}

impl MemoryStore {
    /// Checks every write against the objects as the writes before it left them (in a staged
    /// copy of what they touch), then applies them all, or none.
    fn write(&self, writes: Vec<Write>) -> Result<Vec<Event>, StoreError> {
        let mut state = self.inner.lock();
        let mut staged: BTreeMap<(String, String, String), Option<(u64, Value)>> = BTreeMap::new();
        let mut events = Vec::with_capacity(writes.len());
        let mut revision = state.revision;
        for (index, write) in writes.into_iter().enumerate() {
            revision += 1;
            let key = write.key().clone();
            let fail = |e| in_batch(index, &key, e);
            let map_key = map_key(&key);
            let current = match staged.get(&map_key) {
                Some(staged) => staged.clone(),
                None => state.objects.get(&map_key).cloned(),
            };
            let event = match write {
                Write::Put { key, value, pre } => {
                    check_key(&key).map_err(fail)?;
                    check_put(&key, pre, current.as_ref().map(|(r, _)| *r)).map_err(fail)?;
                    let object = stamped(key, value, revision).map_err(fail)?;
                    staged.insert(map_key, Some((revision, object.value.clone())));
                    Event {
                        event_type: match current {
                            None => EventType::Added,
                            Some(_) => EventType::Modified,
                        },
                        object,
                    }
                }
                Write::Delete { key, pre } => {
                    check_delete(&key, pre, current.as_ref().map(|(r, _)| *r)).map_err(fail)?;
                    let Some((_, value)) = current else {
                        return Err(fail(StoreError::NotFound { key }));
                    };
                    // Cannot fail: the value was stamped when it was stored.
                    let object = stamped(key, value, revision).map_err(fail)?;
                    staged.insert(map_key, None);
                    Event {
                        event_type: EventType::Deleted,
                        object,
                    }
                }
            };
            events.push(event);
        }
        for (key, value) in staged {
            match value {
                Some(v) => state.objects.insert(key, v),
                None => state.objects.remove(&key),
            };
        }
        self.inner.append(&mut state, events.clone());
        Ok(events)
    }
}

impl Store for MemoryStore {
    fn get(&self, key: &Key) -> Result<Option<Object>, StoreError> {
        let state = self.inner.lock();
        Ok(state
            .objects
            .get(&map_key(key))
            .map(|(revision, value)| Object {
                key: key.clone(),
                revision: *revision,
                value: value.clone(),
            }))
    }

    fn list(&self, kind: &str, namespace: Option<&str>) -> Result<(Vec<Object>, u64), StoreError> {
        let state = self.inner.lock();
        let start = (
            kind.to_owned(),
            namespace.unwrap_or_default().to_owned(),
            String::new(),
        );
        let objects = state
            .objects
            .range(start..)
            .take_while(|((k, ns, _), _)| k == kind && namespace.is_none_or(|n| n == ns))
            .map(|((kind, namespace, name), (revision, value))| Object {
                key: Key::new(kind, namespace, name),
                revision: *revision,
                value: value.clone(),
            })
            .collect();
        Ok((objects, state.revision))
    }

    fn put(&self, key: &Key, value: Value, pre: crate::Precondition) -> Result<Object, StoreError> {
        let write = Write::Put {
            key: key.clone(),
            value,
            pre,
        };
        single(self.write(vec![write]))
    }

    fn delete(&self, key: &Key, pre: crate::Precondition) -> Result<Object, StoreError> {
        let write = Write::Delete {
            key: key.clone(),
            pre,
        };
        single(self.write(vec![write]))
    }

    fn write_batch(&self, writes: Vec<Write>) -> Result<Vec<Object>, StoreError> {
        Ok(self.write(writes)?.into_iter().map(|e| e.object).collect())
    }

    fn watch(
        &self,
        kind: Option<&str>,
        namespace: Option<&str>,
        after: u64,
    ) -> Result<Watch, StoreError> {
        let source: Weak<dyn History> = Arc::downgrade(&self.inner) as Weak<dyn History>;
        Watch::start(
            source,
            &self.inner.fanout,
            Filter::new(kind, namespace),
            after,
        )
    }

    fn revision(&self) -> u64 {
        self.inner.lock().revision
    }
}
