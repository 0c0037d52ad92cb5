//! The durable backend: one redb file, `DIR/store.redb`.
//!
//! Tables:
//! - `objects`: (kind, namespace, name) → (revision, JSON bytes of the value)
//! - `events`: revision → (event type, kind, namespace, name, JSON bytes of the value)
//! - `meta`: `revision` (the current revision) and `compacted` (the newest revision whose event
//!   was removed from the log; 0: none)
//!
//! Each write is one redb write transaction holding the object, the event, the new revision and
//! any compaction, committed with fsync before the call returns. Writes are serialized by a mutex
//! that is held until the event has been sent to watchers, so watchers receive events in revision
//! order. Reads use redb's snapshot read transactions and take no lock.

use crate::object::{check_delete, check_key, check_put, stamp};
use crate::watch::{CHANNEL_CAPACITY, Filter, History, HistoryChunk};
use crate::{
    DEFAULT_HISTORY, Event, EventType, Key, Object, Precondition, Store, StoreError, Watch,
};
use redb::{DatabaseError, ReadableDatabase, ReadableTable, TableDefinition};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::broadcast;

const OBJECTS: TableDefinition<'_, (&str, &str, &str), (u64, &[u8])> =
    TableDefinition::new("objects");
const EVENTS: TableDefinition<'_, u64, (u8, &str, &str, &str, &[u8])> =
    TableDefinition::new("events");
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");

const META_REVISION: &str = "revision";
const META_COMPACTED: &str = "compacted";

/// The store's file inside its directory.
pub(crate) const FILE_NAME: &str = "store.redb";

/// redb's page cache. Config objects are small; this bounds memory, not the file size.
const CACHE_BYTES: usize = 64 << 20;

/// Options for [`FileStore::open_with`].
#[derive(Clone, Debug)]
pub struct FileStoreOptions {
    /// How many events the log keeps (at least 1); older ones are compacted as new ones are
    /// written. Lowering it compacts the excess on open.
    pub history: usize,
}

impl Default for FileStoreOptions {
    fn default() -> Self {
        FileStoreOptions {
            history: DEFAULT_HISTORY,
        }
    }
}

/// A durable store in one redb file, `DIR/store.redb`. Only one process may have a directory open
/// at a time; dropping the store closes the file.
pub struct FileStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: redb::Database,
    /// The store file, for error messages.
    file: PathBuf,
    /// Serializes writes, from the start of the transaction until the event is sent.
    write_lock: Mutex<()>,
    /// The committed revision, updated under `write_lock` after each commit.
    revision: AtomicU64,
    tx: broadcast::Sender<Arc<Event>>,
    history: u64,
}

impl FileStore {
    /// Opens the store in `dir`, creating the directory and the store if needed, keeping the
    /// default history ([`crate::DEFAULT_HISTORY`] events).
    pub fn open(dir: &Path) -> Result<FileStore, StoreError> {
        Self::open_with(dir, FileStoreOptions::default())
    }

    /// Opens the store in `dir` with `options`. Fails with [`StoreError::InUse`] if another
    /// process (or another `FileStore` in this one) has it open.
    pub fn open_with(dir: &Path, options: FileStoreOptions) -> Result<FileStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let file = dir.join(FILE_NAME);
        // Verifying the checksums on open turns a damaged file into an error instead of a panic
        // later; a config store is small enough for the read.
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .set_check_integrity_on_open(true)
            .create(&file)
            .map_err(|error| match error {
                DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch => {
                    StoreError::InUse {
                        dir: dir.to_owned(),
                    }
                }
                DatabaseError::Storage(redb::StorageError::Corrupted(detail)) => {
                    StoreError::Corrupt {
                        path: file.clone(),
                        detail,
                    }
                }
                // redb's answer to a file that is not a redb database.
                DatabaseError::Storage(redb::StorageError::Io(error))
                    if error.kind() == std::io::ErrorKind::InvalidData =>
                {
                    StoreError::Corrupt {
                        path: file.clone(),
                        detail: error.to_string(),
                    }
                }
                other => StoreError::Backend {
                    path: file.clone(),
                    action: "opening it",
                    source: Box::new(other.into()),
                },
            })?;
        let (tx, _) = broadcast::channel(CHANNEL_CAPACITY);
        let inner = Inner {
            db,
            file,
            write_lock: Mutex::new(()),
            revision: AtomicU64::new(0),
            tx,
            history: u64::try_from(options.history.max(1)).unwrap_or(u64::MAX),
        };
        let revision = inner.init()?;
        inner.revision.store(revision, Ordering::SeqCst);
        Ok(FileStore {
            inner: Arc::new(inner),
        })
    }

    /// The directory's store file.
    pub fn path(&self) -> &Path {
        &self.inner.file
    }
}

impl std::fmt::Debug for FileStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileStore")
            .field("file", &self.inner.file)
            .field("revision", &self.revision())
            .finish_non_exhaustive()
    }
}

fn event_code(event_type: EventType) -> u8 {
    match event_type {
        EventType::Added => 1,
        EventType::Modified => 2,
        EventType::Deleted => 3,
    }
}

fn key_tuple(key: &Key) -> (&str, &str, &str) {
    (&key.kind, &key.namespace, &key.name)
}

/// Removes the events up to `revision - history` (in the write transaction `txn`), recording
/// the new compaction point.
fn compact(
    events: &mut redb::Table<'_, u64, (u8, &str, &str, &str, &[u8])>,
    meta: &mut redb::Table<'_, &str, u64>,
    compacted: u64,
    revision: u64,
    history: u64,
) -> Result<(), redb::Error> {
    let cut = revision.saturating_sub(history);
    if cut > compacted {
        events.retain_in(..=cut, |_, _| false)?;
        meta.insert(META_COMPACTED, cut)?;
    }
    Ok(())
}

impl Inner {
    fn backend<E: Into<redb::Error>>(&self, action: &'static str) -> impl FnOnce(E) -> StoreError {
        let path = self.file.clone();
        move |error| StoreError::Backend {
            path,
            action,
            source: Box::new(error.into()),
        }
    }

    fn corrupt(&self, detail: String) -> StoreError {
        StoreError::Corrupt {
            path: self.file.clone(),
            detail,
        }
    }

    fn decode(&self, key: &Key, bytes: &[u8]) -> Result<Value, StoreError> {
        serde_json::from_slice(bytes).map_err(|error| {
            self.corrupt(format!("the stored value of {key} is not JSON: {error}"))
        })
    }

    /// Creates the tables, applies the history limit, and returns the current revision.
    fn init(&self) -> Result<u64, StoreError> {
        let init = || -> Result<u64, redb::Error> {
            let txn = self.db.begin_write()?;
            let revision = {
                txn.open_table(OBJECTS)?;
                let mut events = txn.open_table(EVENTS)?;
                let mut meta = txn.open_table(META)?;
                let revision = meta.get(META_REVISION)?.map_or(0, |g| g.value());
                let compacted = meta.get(META_COMPACTED)?.map_or(0, |g| g.value());
                compact(&mut events, &mut meta, compacted, revision, self.history)?;
                revision
            };
            txn.commit()?;
            Ok(revision)
        };
        init().map_err(self.backend("preparing its tables"))
    }

    /// Runs one write: `decide` gets the objects table and the new revision, checks its
    /// precondition and returns the event; the object, event, revision and compaction are then
    /// committed together, and the event is sent to watchers.
    fn write(
        &self,
        decide: impl FnOnce(
            &redb::Table<'_, (&str, &str, &str), (u64, &[u8])>,
            u64,
        ) -> Result<Event, StoreError>,
    ) -> Result<Event, StoreError> {
        let _guard = self
            .write_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let txn = self
            .db
            .begin_write()
            .map_err(self.backend("starting a write"))?;
        let event = {
            let mut objects = txn.open_table(OBJECTS).map_err(self.backend("writing"))?;
            let mut events = txn.open_table(EVENTS).map_err(self.backend("writing"))?;
            let mut meta = txn.open_table(META).map_err(self.backend("writing"))?;
            let read_meta = |name| -> Result<u64, StoreError> {
                Ok(meta
                    .get(name)
                    .map_err(self.backend("reading the revision"))?
                    .map_or(0, |g| g.value()))
            };
            let current = read_meta(META_REVISION)?;
            let compacted = read_meta(META_COMPACTED)?;
            let revision = current + 1;
            // On error the transaction is dropped, which aborts it.
            let event = decide(&objects, revision)?;
            let object = &event.object;
            let bytes = object.value.to_string().into_bytes();
            let key = key_tuple(&object.key);
            let mut store = || -> Result<(), redb::Error> {
                match event.event_type {
                    EventType::Deleted => {
                        objects.remove(key)?;
                    }
                    EventType::Added | EventType::Modified => {
                        objects.insert(key, (revision, bytes.as_slice()))?;
                    }
                }
                let (kind, namespace, name) = key;
                events.insert(
                    revision,
                    (
                        event_code(event.event_type),
                        kind,
                        namespace,
                        name,
                        bytes.as_slice(),
                    ),
                )?;
                meta.insert(META_REVISION, revision)?;
                compact(&mut events, &mut meta, compacted, revision, self.history)?;
                Ok(())
            };
            store().map_err(self.backend("writing"))?;
            event
        };
        txn.commit().map_err(self.backend("committing a write"))?;
        let event = Arc::new(event);
        self.revision.store(event.object.revision, Ordering::SeqCst);
        // No receivers is fine: nobody is watching.
        let _ = self.tx.send(event.clone());
        Ok(Arc::unwrap_or_clone(event))
    }

    fn get_current(
        &self,
        objects: &impl ReadableTable<(&'static str, &'static str, &'static str), (u64, &'static [u8])>,
        key: &Key,
    ) -> Result<Option<(u64, Value)>, StoreError> {
        let Some(guard) = objects
            .get(key_tuple(key))
            .map_err(self.backend("reading"))?
        else {
            return Ok(None);
        };
        let (revision, bytes) = guard.value();
        Ok(Some((revision, self.decode(key, bytes)?)))
    }

    fn read(&self) -> Result<redb::ReadTransaction, StoreError> {
        self.db
            .begin_read()
            .map_err(self.backend("starting a read"))
    }

    fn read_meta(&self, txn: &redb::ReadTransaction) -> Result<(u64, u64), StoreError> {
        let meta = txn.open_table(META).map_err(self.backend("reading"))?;
        let get = |name| -> Result<u64, StoreError> {
            Ok(meta
                .get(name)
                .map_err(self.backend("reading the revision"))?
                .map_or(0, |g| g.value()))
        };
        Ok((get(META_REVISION)?, get(META_COMPACTED)?))
    }
}

impl History for Inner {
    fn read_history(
        &self,
        filter: &Filter,
        after: u64,
        limit: usize,
    ) -> Result<HistoryChunk, StoreError> {
        let txn = self.read()?;
        let (revision, compacted) = self.read_meta(&txn)?;
        if after < compacted {
            return Err(StoreError::Compacted { oldest: compacted });
        }
        let table = txn.open_table(EVENTS).map_err(self.backend("reading"))?;
        let mut events = Vec::new();
        let range = table
            .range(after.saturating_add(1)..)
            .map_err(self.backend("reading the event log"))?;
        for entry in range {
            let (rev, value) = entry.map_err(self.backend("reading the event log"))?;
            let rev = rev.value();
            let (code, kind, namespace, name) = {
                let (code, kind, namespace, name, _) = value.value();
                (code, kind, namespace, name)
            };
            if !filter.matches(kind, namespace) {
                continue;
            }
            if events.len() == limit {
                return Ok(HistoryChunk {
                    events,
                    scanned_to: rev - 1,
                    complete: false,
                });
            }
            let key = Key::new(kind, namespace, name);
            let event_type = match code {
                1 => EventType::Added,
                2 => EventType::Modified,
                3 => EventType::Deleted,
                other => {
                    return Err(
                        self.corrupt(format!("event {rev} has an unknown type code {other}"))
                    );
                }
            };
            let value = self.decode(&key, value.value().4)?;
            events.push(Event {
                event_type,
                object: Object {
                    key,
                    revision: rev,
                    value,
                },
            });
        }
        Ok(HistoryChunk {
            events,
            scanned_to: revision.max(after),
            complete: true,
        })
    }
}

impl Store for FileStore {
    fn get(&self, key: &Key) -> Result<Option<Object>, StoreError> {
        let inner = &self.inner;
        let txn = inner.read()?;
        let objects = txn.open_table(OBJECTS).map_err(inner.backend("reading"))?;
        Ok(inner
            .get_current(&objects, key)?
            .map(|(revision, value)| Object {
                key: key.clone(),
                revision,
                value,
            }))
    }

    fn list(&self, kind: &str, namespace: Option<&str>) -> Result<(Vec<Object>, u64), StoreError> {
        let inner = &self.inner;
        let txn = inner.read()?;
        let (revision, _) = inner.read_meta(&txn)?;
        let objects = txn.open_table(OBJECTS).map_err(inner.backend("reading"))?;
        let start = (kind, namespace.unwrap_or_default(), "");
        let range = objects.range(start..).map_err(inner.backend("listing"))?;
        let mut list = Vec::new();
        for entry in range {
            let (k, v) = entry.map_err(inner.backend("listing"))?;
            let (k_kind, k_namespace, k_name) = k.value();
            if k_kind != kind || namespace.is_some_and(|n| n != k_namespace) {
                break;
            }
            let key = Key::new(k_kind, k_namespace, k_name);
            let (object_revision, bytes) = v.value();
            let value = inner.decode(&key, bytes)?;
            list.push(Object {
                key,
                revision: object_revision,
                value,
            });
        }
        Ok((list, revision))
    }

    fn put(&self, key: &Key, mut value: Value, pre: Precondition) -> Result<Object, StoreError> {
        check_key(key)?;
        let inner = &self.inner;
        let event = inner.write(|objects, revision| {
            let current = objects
                .get(key_tuple(key))
                .map_err(inner.backend("reading"))?
                .map(|g| g.value().0);
            check_put(key, pre, current)?;
            stamp(key, &mut value, revision)?;
            Ok(Event {
                event_type: match current {
                    None => EventType::Added,
                    Some(_) => EventType::Modified,
                },
                object: Object {
                    key: key.clone(),
                    revision,
                    value,
                },
            })
        })?;
        Ok(event.object)
    }

    fn delete(&self, key: &Key, pre: Precondition) -> Result<Object, StoreError> {
        let inner = &self.inner;
        let event = inner.write(|objects, revision| {
            let current = inner.get_current(objects, key)?;
            check_delete(key, pre, current.as_ref().map(|(r, _)| *r))?;
            let Some((_, mut value)) = current else {
                return Err(StoreError::NotFound { key: key.clone() });
            };
            stamp(key, &mut value, revision)?;
            Ok(Event {
                event_type: EventType::Deleted,
                object: Object {
                    key: key.clone(),
                    revision,
                    value,
                },
            })
        })?;
        Ok(event.object)
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
        self.inner.revision.load(Ordering::SeqCst)
    }
}
