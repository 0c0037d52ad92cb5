//! The durable backend: one redb file, `DIR/store.redb`.
//!
//! Tables:
//! - `objects`: (kind, namespace, name) → (revision, JSON bytes of the value)
//! - `events`: revision → (event type, kind, namespace, name, JSON bytes of the value)
//! - `meta`: `revision` (the current revision), `compacted` (the newest revision whose event
//!   was removed from the log; 0: none) and `history_bytes` (the size of the retained events)
//!
//! Each write (or batch of writes) is one redb write transaction holding the objects, the
//! events, the new revision and any compaction, committed with fsync before the call returns.
//! Writes are serialized by a mutex that is held until the events have been sent to watchers, so
//! watchers receive events in revision order. Reads use redb's snapshot read transactions and
//! take no lock. Opening the store compacts the file (redb's compaction), so that space freed by
//! removed events goes back to the file system.

use crate::object::{check_delete, check_key, check_put, stamped};
use crate::watch::{ChunkLimit, Fanout, Filter, History, HistoryChunk, Sent, event_bytes};
use crate::{
    DEFAULT_HISTORY, DEFAULT_HISTORY_BYTES, Event, EventType, Key, Object, Precondition, Store,
    StoreError, Watch, Write,
};
use redb::{DatabaseError, ReadableDatabase, ReadableTable, TableDefinition};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

const OBJECTS: TableDefinition<'_, (&str, &str, &str), (u64, &[u8])> =
    TableDefinition::new("objects");
const EVENTS: TableDefinition<'_, u64, (u8, &str, &str, &str, &[u8])> =
    TableDefinition::new("events");
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");

const META_REVISION: &str = "revision";
const META_COMPACTED: &str = "compacted";
const META_HISTORY_BYTES: &str = "history_bytes";

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
    /// How many bytes of events the log keeps (the newest event is always kept).
    pub history_bytes: usize,
}

impl Default for FileStoreOptions {
    fn default() -> Self {
        FileStoreOptions {
            history: DEFAULT_HISTORY,
            history_bytes: DEFAULT_HISTORY_BYTES,
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
    fanout: Fanout,
    history: u64,
    history_bytes: u64,
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
        let mut db = redb::Builder::new()
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
        let history = u64::try_from(options.history.max(1)).unwrap_or(u64::MAX);
        let history_bytes = u64::try_from(options.history_bytes).unwrap_or(u64::MAX);
        let revision = init(&db, &file, history, history_bytes)?;
        // Give the pages of removed events back to the file system. Best effort: a store that
        // cannot be compacted now still works.
        if let Err(error) = db.compact() {
            tracing::warn!(file = %file.display(), %error, "could not compact the store file; it keeps its size");
        }
        let inner = Inner {
            db,
            file,
            write_lock: Mutex::new(()),
            revision: AtomicU64::new(revision),
            fanout: Fanout::default(),
            history,
            history_bytes,
        };
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

type Events<'t> =
    redb::Table<'t, u64, (u8, &'static str, &'static str, &'static str, &'static [u8])>;

/// The size of a stored event (its value's JSON and its key).
fn stored_bytes(value: &(u8, &str, &str, &str, &[u8])) -> u64 {
    let (_, kind, namespace, name, bytes) = value;
    (bytes.len() + kind.len() + namespace.len() + name.len()) as u64
}

/// Removes the oldest events while the log holds more than `history` events or more than
/// `history_bytes` bytes (keeping the newest), recording the new compaction point and size.
fn compact(
    events: &mut Events<'_>,
    meta: &mut redb::Table<'_, &str, u64>,
    revision: u64,
    history: u64,
    history_bytes: u64,
) -> Result<(), redb::Error> {
    let count_cut = revision.saturating_sub(history);
    let mut bytes = meta.get(META_HISTORY_BYTES)?.map_or(0, |g| g.value());
    let mut compacted = meta.get(META_COMPACTED)?.map_or(0, |g| g.value());
    let start = compacted;
    loop {
        let (rev, size) = match events.first()? {
            Some((rev, value)) => (rev.value(), stored_bytes(&value.value())),
            None => break,
        };
        if rev > count_cut && (bytes <= history_bytes || rev >= revision) {
            break;
        }
        events.remove(rev)?;
        bytes = bytes.saturating_sub(size);
        compacted = rev;
    }
    if compacted != start {
        meta.insert(META_COMPACTED, compacted)?;
    }
    meta.insert(META_HISTORY_BYTES, bytes)?;
    Ok(())
}

/// Creates the tables, records the log's size if an older version did not, applies the
/// history limits, and returns the current revision.
fn init(
    db: &redb::Database,
    file: &Path,
    history: u64,
    history_bytes: u64,
) -> Result<u64, StoreError> {
    let init = || -> Result<u64, redb::Error> {
        let txn = db.begin_write()?;
        let revision = {
            txn.open_table(OBJECTS)?;
            let mut events = txn.open_table(EVENTS)?;
            let mut meta = txn.open_table(META)?;
            let revision = meta.get(META_REVISION)?.map_or(0, |g| g.value());
            if meta.get(META_HISTORY_BYTES)?.is_none() {
                let mut bytes = 0;
                for entry in events.iter()? {
                    bytes += stored_bytes(&entry?.1.value());
                }
                meta.insert(META_HISTORY_BYTES, bytes)?;
            }
            compact(&mut events, &mut meta, revision, history, history_bytes)?;
            revision
        };
        txn.commit()?;
        Ok(revision)
    };
    init().map_err(|error| StoreError::Backend {
        path: file.to_owned(),
        action: "preparing its tables",
        source: Box::new(error),
    })
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

    /// Runs a batch of writes in one transaction: each is checked against the objects as the
    /// writes before it left them; then the objects, events, revision and compaction are
    /// committed together, and the events are sent to watchers.
    fn write(&self, writes: Vec<Write>) -> Result<Vec<Event>, StoreError> {
        for (index, write) in writes.iter().enumerate() {
            if let Write::Put { key, .. } = write {
                check_key(key).map_err(|e| in_batch(index, key, e))?;
            }
        }
        let _guard = self
            .write_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let txn = self
            .db
            .begin_write()
            .map_err(self.backend("starting a write"))?;
        let mut sent = Vec::with_capacity(writes.len());
        {
            let mut objects = txn.open_table(OBJECTS).map_err(self.backend("writing"))?;
            let mut events = txn.open_table(EVENTS).map_err(self.backend("writing"))?;
            let mut meta = txn.open_table(META).map_err(self.backend("writing"))?;
            let read_meta = |meta: &redb::Table<'_, &str, u64>, name| -> Result<u64, StoreError> {
                Ok(meta
                    .get(name)
                    .map_err(self.backend("reading the revision"))?
                    .map_or(0, |g| g.value()))
            };
            let mut revision = read_meta(&meta, META_REVISION)?;
            let mut history_bytes = read_meta(&meta, META_HISTORY_BYTES)?;
            // On error the transaction is dropped, which aborts it.
            for (index, write) in writes.into_iter().enumerate() {
                revision += 1;
                let key = write.key().clone();
                let event = self
                    .decide(&objects, write, revision)
                    .map_err(|e| in_batch(index, &key, e))?;
                let bytes = event.object.value.to_string().into_bytes();
                let tuple = key_tuple(&event.object.key);
                let mut store = || -> Result<(), redb::Error> {
                    match event.event_type {
                        EventType::Deleted => {
                            objects.remove(tuple)?;
                        }
                        EventType::Added | EventType::Modified => {
                            objects.insert(tuple, (revision, bytes.as_slice()))?;
                        }
                    }
                    let (kind, namespace, name) = tuple;
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
                    Ok(())
                };
                store().map_err(self.backend("writing"))?;
                let size = event_bytes(&event, Some(bytes.len()));
                history_bytes += size as u64;
                sent.push(Arc::new(Sent { event, bytes: size }));
            }
            let mut finish = || -> Result<(), redb::Error> {
                meta.insert(META_REVISION, revision)?;
                meta.insert(META_HISTORY_BYTES, history_bytes)?;
                compact(
                    &mut events,
                    &mut meta,
                    revision,
                    self.history,
                    self.history_bytes,
                )
            };
            finish().map_err(self.backend("writing"))?;
        }
        txn.commit().map_err(self.backend("committing a write"))?;
        if let Some(last) = sent.last() {
            self.revision
                .store(last.event.object.revision, Ordering::SeqCst);
        }
        self.fanout.send(&sent);
        Ok(sent
            .into_iter()
            .map(|s| Arc::try_unwrap(s).map_or_else(|s| s.event.clone(), |s| s.event))
            .collect())
    }

    /// Checks one write against the current object and makes its event.
    fn decide(
        &self,
        objects: &redb::Table<'_, (&str, &str, &str), (u64, &[u8])>,
        write: Write,
        revision: u64,
    ) -> Result<Event, StoreError> {
        match write {
            Write::Put { key, value, pre } => {
                let current = objects
                    .get(key_tuple(&key))
                    .map_err(self.backend("reading"))?
                    .map(|g| g.value().0);
                check_put(&key, pre, current)?;
                Ok(Event {
                    event_type: match current {
                        None => EventType::Added,
                        Some(_) => EventType::Modified,
                    },
                    object: stamped(key, value, revision)?,
                })
            }
            Write::Delete { key, pre } => {
                let current = self.get_current(objects, &key)?;
                check_delete(&key, pre, current.as_ref().map(|(r, _)| *r))?;
                let Some((_, value)) = current else {
                    return Err(StoreError::NotFound { key });
                };
                Ok(Event {
                    event_type: EventType::Deleted,
                    object: stamped(key, value, revision)?,
                })
            }
        }
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
        limit: ChunkLimit,
    ) -> Result<HistoryChunk, StoreError> {
        let txn = self.read()?;
        let (revision, compacted) = self.read_meta(&txn)?;
        if after < compacted {
            return Err(StoreError::Compacted { oldest: compacted });
        }
        let table = txn.open_table(EVENTS).map_err(self.backend("reading"))?;
        let mut events = Vec::new();
        let mut bytes = 0;
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
            if limit.full(events.len(), bytes) {
                return Ok(HistoryChunk {
                    events,
                    scanned_to: rev - 1,
                    complete: false,
                });
            }
            bytes += stored_bytes(&value.value()) as usize;
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

    fn put(&self, key: &Key, value: Value, pre: Precondition) -> Result<Object, StoreError> {
        let write = Write::Put {
            key: key.clone(),
            value,
            pre,
        };
        single(self.inner.write(vec![write]))
    }

    fn delete(&self, key: &Key, pre: Precondition) -> Result<Object, StoreError> {
        let write = Write::Delete {
            key: key.clone(),
            pre,
        };
        single(self.inner.write(vec![write]))
    }

    fn write_batch(&self, writes: Vec<Write>) -> Result<Vec<Object>, StoreError> {
        Ok(self
            .inner
            .write(writes)?
            .into_iter()
            .map(|e| e.object)
            .collect())
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
        self.inner.revision.load(Ordering::SeqCst)
    }
}

/// A batch error for the write at `index`.
pub(crate) fn in_batch(index: usize, key: &Key, error: StoreError) -> StoreError {
    StoreError::InBatch {
        index,
        key: key.clone(),
        source: Box::new(error),
    }
}

/// The result of a batch of one write, with that write's own error.
pub(crate) fn single(result: Result<Vec<Event>, StoreError>) -> Result<Object, StoreError> {
    match result {
        Ok(mut events) => Ok(events.remove(0).object),
        Err(StoreError::InBatch { source, .. }) => Err(*source),
        Err(e) => Err(e),
    }
}
