//! Strait's config store: the durable, watchable key-value store behind the control plane's
//! Kubernetes-shaped REST API, in the role etcd plays under the Kubernetes API server.
//!
//! # Model
//!
//! - **Objects.** Each object is a JSON value (a Kubernetes-shaped resource) stored under a
//!   [`Key`]: kind, namespace (`""` for cluster-scoped kinds) and name.
//! - **Revisions.** The store has one revision counter, starting at 0 for an empty store. Every
//!   successful write ([`Store::put`], [`Store::delete`], [`Store::write_batch`]) commits at a
//!   revision greater than every earlier one; revisions strictly increase but **may have gaps**
//!   ([`EtcdStore`]'s revision is etcd's, which also counts writes to other keys), and the
//!   writes of one batch may **share one revision** (etcd: one transaction). [`FileStore`] and
//!   [`MemoryStore`] number writes one by one without gaps, which satisfies this weaker
//!   contract; callers must rely only on the weaker one. An object's revision is the revision
//!   of its last write (etcd's mod revision), and the stored value carries it as
//!   `metadata.resourceVersion` (a decimal string, as in Kubernetes).
//!   [`Precondition::Revision`] gives optimistic concurrency on it.
//! - **Events.** Every write also yields one [`Event`] (Added, Modified or Deleted) under the
//!   write's revision. [`Store::watch`] replays the events after a given revision and then
//!   follows live writes, in revision order, with no gap and no duplicate. A watcher that
//!   falls behind the live stream catches up from the log by itself.
//! - **Batches.** [`Store::write_batch`] applies several puts and deletes in one transaction:
//!   every precondition holds and all are written, or none is, also across a crash. The file
//!   and memory stores give each write its own revision and event; etcd gives the batch one
//!   revision and one event per key it changed (a key written twice in a batch: one event, its
//!   final state).
//! - **Compaction.** The log keeps only the most recent events: at most 10 000 and at most
//!   64 MiB of them by default (the newest is always kept). Older events are removed as new ones
//!   are written; a watch that would need them fails with [`StoreError::Compacted`], and the
//!   client must list again and watch from the list's revision (like HTTP 410 Gone in
//!   Kubernetes). [`FileStore`] also compacts its file when it opens, returning the space of
//!   removed events to the file system.
//! - **Durability.** [`FileStore`] keeps everything in one redb file. Each write (object, event,
//!   new revision and any compaction) is a single transaction committed to disk (fsync) before
//!   the call returns, so a write that returned success survives `kill -9` and power loss, and a
//!   reopened store continues the revision sequence and replays the retained history.
//!   [`MemoryStore`] has the same semantics without the disk, for tests. [`EtcdStore`] keeps
//!   objects in etcd, shared by several control planes: a write returns once etcd committed
//!   it; compaction is etcd's (a watch from a compacted revision fails with
//!   [`StoreError::Compacted`]); while etcd cannot be reached, every call fails with
//!   [`StoreError::Unavailable`] (HTTP 503 at the API) and open watches reconnect by themselves.
//!
//! # Blocking
//!
//! The [`Store`] methods are synchronous and may block briefly (a read transaction, one
//! fsync'd write, or one etcd round trip, bounded by a 3 s timeout). They are meant to be called directly from async code: each call is short and
//! bounded. Only [`Watch::next`] is async.

#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

mod error;
mod etcd;
mod file;
mod memory;
mod object;
mod watch;

pub use error::StoreError;
pub use etcd::{EtcdOptions, EtcdStore};
pub use file::{FileStore, FileStoreOptions};
pub use memory::MemoryStore;
pub use watch::{Watch, WatchEnd};

use std::fmt;

/// The default number of events kept in the event log.
pub const DEFAULT_HISTORY: usize = 10_000;

/// The default bound on the event log's size: the bytes of its events' values (as JSON) and
/// keys.
pub const DEFAULT_HISTORY_BYTES: usize = 64 << 20;

/// Identifies an object: its kind, namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    /// `group/Kind` for grouped kinds (`networking.istio.io/VirtualService`), `Kind` for the core
    /// group (`Service`).
    pub kind: String,
    /// `""` for cluster-scoped kinds.
    pub namespace: String,
    pub name: String,
}

impl Key {
    pub fn new(
        kind: impl Into<String>,
        namespace: impl Into<String>,
        name: impl Into<String>,
    ) -> Self {
        Key {
            kind: kind.into(),
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

/// `kind namespace/name`, or `kind name` for a cluster-scoped object.
impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// A stored object.
#[derive(Clone, Debug, PartialEq)]
pub struct Object {
    pub key: Key,
    /// The store revision of the object's last write (for a deleted object in a Deleted event:
    /// the delete's revision).
    pub revision: u64,
    /// The object, with `metadata.resourceVersion` equal to `revision` as a string.
    pub value: serde_json::Value,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

/// One write, as seen by a watcher.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub event_type: EventType,
    /// For Added and Modified: the object as written. For Deleted: the object's last value, with
    /// `revision` (and `metadata.resourceVersion`) set to the delete's revision, as Kubernetes
    /// does.
    pub object: Object,
}

/// A condition a write requires of the current object (optimistic concurrency on
/// `resourceVersion`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precondition {
    /// No condition: put creates or replaces; delete requires only that the object exists.
    #[default]
    None,
    /// The object must not exist ([`StoreError::AlreadyExists`] otherwise). A delete with this
    /// precondition always fails.
    MustNotExist,
    /// The object must exist ([`StoreError::NotFound`] otherwise) with exactly this revision
    /// ([`StoreError::Conflict`] otherwise).
    Revision(u64),
}

/// One write of a [`Store::write_batch`].
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    /// As [`Store::put`].
    Put {
        key: Key,
        value: serde_json::Value,
        pre: Precondition,
    },
    /// As [`Store::delete`].
    Delete { key: Key, pre: Precondition },
}

impl Write {
    pub fn key(&self) -> &Key {
        match self {
            Write::Put { key, .. } | Write::Delete { key, .. } => key,
        }
    }
}

/// The config store. All methods are blocking but short (see the crate docs); the store is
/// shared between tasks as `Arc<dyn Store>`.
pub trait Store: Send + Sync + 'static {
    /// The object under `key`, if any.
    fn get(&self, key: &Key) -> Result<Option<Object>, StoreError>;

    /// All objects of a kind, in one namespace or all (None), sorted by (namespace, name), with the
    /// store revision the list is consistent at.
    fn list(&self, kind: &str, namespace: Option<&str>) -> Result<(Vec<Object>, u64), StoreError>;

    /// Creates or replaces. The stored value gets metadata.resourceVersion = the new revision (as
    /// a string, like Kubernetes). Returns the stored object.
    ///
    /// The value must be a JSON object whose `metadata`, if present, is an object
    /// ([`StoreError::InvalidObject`] otherwise), and the key needs a kind and a name
    /// ([`StoreError::InvalidKey`]). The store does not check that `metadata.name` and
    /// `metadata.namespace` match the key: that is the caller's job.
    fn put(
        &self,
        key: &Key,
        value: serde_json::Value,
        pre: Precondition,
    ) -> Result<Object, StoreError>;

    /// Deletes; `pre` may require a revision. Returns the deleted object (with the delete's
    /// revision). [`StoreError::NotFound`] if there is no such object.
    fn delete(&self, key: &Key, pre: Precondition) -> Result<Object, StoreError>;

    /// Applies `writes` in order as one transaction: each is checked against the state the
    /// writes before it left (so a batch may create an object and then replace it), and either
    /// all are committed or none is. Each write gets a new revision (possibly one shared by the
    /// whole batch: see the crate docs); watchers see the events together. Returns the written
    /// objects (for a delete, the deleted object with the delete's revision), in order.
    ///
    /// The first write that fails fails the batch with [`StoreError::InBatch`], naming it.
    fn write_batch(&self, writes: Vec<Write>) -> Result<Vec<Object>, StoreError>;

    /// Events with revision > `after`, for one kind (or all kinds: None) and namespace (or all),
    /// first the history from the event log, then live events, in revision order, with no gap and
    /// no duplicate. If `after` is older than the retained history:
    /// Err(StoreError::Compacted { oldest }).
    ///
    /// `after` may be ahead of the store's revision; the watch then reports only writes past it.
    fn watch(
        &self,
        kind: Option<&str>,
        namespace: Option<&str>,
        after: u64,
    ) -> Result<Watch, StoreError>;

    /// The current revision (0 for an empty store).
    fn revision(&self) -> u64;

    /// Whether this process should make the writes a control plane makes on its own (the
    /// virtual IP table, fetched key sets): always for a store only this process uses; for a
    /// shared store ([`EtcdStore`]), whether this process holds the store's leader lease, so
    /// that of several control planes on one store exactly one makes them.
    fn is_leader(&self) -> bool {
        true
    }
}
