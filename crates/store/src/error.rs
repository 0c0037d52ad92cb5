use crate::Key;
use std::path::PathBuf;

/// Why a store operation failed.
///
/// The first group (`NotFound` .. `InvalidObject`) is the caller's: the request does not fit the
/// store's current state, and retrying it unchanged will fail again. `InUse`, `Io` and `Backend`
/// are the environment's (disk, permissions, another process); `Corrupt` means the file's
/// contents cannot be trusted.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{key} not found")]
    NotFound { key: Key },

    #[error("{key} already exists; update it instead, or delete it first")]
    AlreadyExists { key: Key },

    #[error(
        "{key} was modified concurrently: the request expected resourceVersion {expected} but it \
         is now {actual}; read the object again and reapply the change"
    )]
    Conflict {
        key: Key,
        expected: u64,
        actual: u64,
    },

    /// The history a watch asked for was compacted. `oldest` is the oldest revision a watch may
    /// start after now (events after it are all retained).
    #[error(
        "the requested history is too old: events up to revision {oldest} have been compacted; \
         list again and watch from the list's revision"
    )]
    Compacted { oldest: u64 },

    /// A write of a batch failed (its `index`, from 0): nothing of the batch was written.
    #[error("write {index} of the batch ({key}): {source}; nothing of the batch was written")]
    InBatch {
        index: usize,
        key: Key,
        #[source]
        source: Box<StoreError>,
    },

    #[error("invalid key {key:?}: {reason}")]
    InvalidKey { key: Key, reason: &'static str },

    #[error("cannot store {key}: {reason}")]
    InvalidObject { key: Key, reason: &'static str },

    #[error(
        "the store at {} is in use by another control plane; stop it, or give this one another \
         data directory",
        dir.display()
    )]
    InUse { dir: PathBuf },

    #[error("cannot access the store at {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "the store at {} failed while {action}: {source}; check the disk (space, permissions, \
         errors) and retry",
        path.display()
    )]
    Backend {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: Box<redb::Error>,
    },

    /// etcd could not be reached or did not answer in time: the request may have been applied
    /// or not (a write's client should read back and retry).
    #[error(
        "etcd ({endpoints}) is unavailable while {action}: {detail}; check that etcd is running \
         and reachable from this control plane (its --store), then retry"
    )]
    Unavailable {
        endpoints: String,
        action: &'static str,
        detail: String,
    },

    #[error(
        "the store at {} is corrupt: {detail}; restore it from a backup, or remove it to start \
         empty",
        path.display()
    )]
    Corrupt { path: PathBuf, detail: String },
}
