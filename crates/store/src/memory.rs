//! The in-memory backend, for tests: the same semantics as [`crate::FileStore`], without the disk.

use crate::object::{check_delete, check_key, check_put, stamp};
use crate::watch::{CHANNEL_CAPACITY, Filter, History, HistoryChunk};
use crate::{
    DEFAULT_HISTORY, Event, EventType, Key, Object, Precondition, Store, StoreError, Watch,
};
use serde_json::Value;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use tokio::sync::broadcast;

/// A store in memory, lost when dropped. The event log keeps the last `history` events.
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    tx: broadcast::Sender<Arc<Event>>,
    history: usize,
}

#[derive(Default)]
struct State {
    /// (kind, namespace, name) → (revision, value)
    objects: BTreeMap<(String, String, String), (u64, Value)>,
    /// Events `compacted + 1 ..= revision`, in order.
    events: VecDeque<Arc<Event>>,
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
        let (tx, _) = broadcast::channel(CHANNEL_CAPACITY);
        MemoryStore {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                tx,
                history: history.max(1),
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

    /// Records `event` as the next revision and sends it to watchers, under the state lock.
    fn append(&self, state: &mut State, event: Event) {
        let event = Arc::new(event);
        state.revision = event.object.revision;
        state.events.push_back(event.clone());
        while state.events.len() > self.history {
            state.events.pop_front();
            state.compacted += 1;
        }
        // No receivers is fine: nobody is watching.
        let _ = self.tx.send(event);
    }
}

impl History for Inner {
    fn read_history(
        &self,
        filter: &Filter,
        after: u64,
        limit: usize,
    ) -> Result<HistoryChunk, StoreError> {
        let state = self.lock();
        if after < state.compacted {
            return Err(StoreError::Compacted {
                oldest: state.compacted,
            });
        }
        let skip = usize::try_from(after - state.compacted).unwrap_or(usize::MAX);
        let mut events = Vec::new();
        for event in state.events.iter().skip(skip) {
            let key = &event.object.key;
            if filter.matches(&key.kind, &key.namespace) {
                if events.len() == limit {
                    return Ok(HistoryChunk {
                        events,
                        scanned_to: event.object.revision - 1,
                        complete: false,
                    });
                }
                events.push(Event::clone(event));
            }
        }
        Ok(HistoryChunk {
            events,
            scanned_to: state.revision.max(after),
            complete: true,
        })
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

    fn put(&self, key: &Key, mut value: Value, pre: Precondition) -> Result<Object, StoreError> {
        check_key(key)?;
        let mut state = self.inner.lock();
        let map_key = map_key(key);
        let current = state.objects.get(&map_key).map(|(revision, _)| *revision);
        check_put(key, pre, current)?;
        let revision = state.revision + 1;
        stamp(key, &mut value, revision)?;
        state.objects.insert(map_key, (revision, value.clone()));
        let object = Object {
            key: key.clone(),
            revision,
            value,
        };
        let event_type = match current {
            None => EventType::Added,
            Some(_) => EventType::Modified,
        };
        self.inner.append(
            &mut state,
            Event {
                event_type,
                object: object.clone(),
            },
        );
        Ok(object)
    }

    fn delete(&self, key: &Key, pre: Precondition) -> Result<Object, StoreError> {
        let mut state = self.inner.lock();
        let map_key = map_key(key);
        let current = state.objects.get(&map_key).map(|(revision, _)| *revision);
        check_delete(key, pre, current)?;
        let revision = state.revision + 1;
        let Some((_, mut value)) = state.objects.remove(&map_key) else {
            return Err(StoreError::NotFound { key: key.clone() });
        };
        // The value was stamped when it was stored, so it is an object with metadata.
        let _ = stamp(key, &mut value, revision);
        let object = Object {
            key: key.clone(),
            revision,
            value,
        };
        self.inner.append(
            &mut state,
            Event {
                event_type: EventType::Deleted,
                object: object.clone(),
            },
        );
        Ok(object)
    }

    fn watch(
        &self,
        kind: Option<&str>,
        namespace: Option<&str>,
        after: u64,
    ) -> Result<Watch, StoreError> {
        let source: Weak<dyn History> = Arc::downgrade(&self.inner) as Weak<dyn History>;
        Watch::start(source, &self.inner.tx, Filter::new(kind, namespace), after)
    }

    fn revision(&self) -> u64 {
        self.inner.lock().revision
    }
}
