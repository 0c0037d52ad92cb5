//! The etcd backend: objects live in an etcd cluster shared by several control planes.
//!
//! Each object is one etcd key, `PREFIX/KIND/NAMESPACE/NAME` (each part with `%` and `/`
//! percent-encoded), whose value is the object's JSON without `metadata.resourceVersion`: an
//! object's revision is its etcd mod revision, stamped on every read, as the Kubernetes API
//! server does. A write is one etcd transaction whose compares are the preconditions
//! (`create_revision == 0` for [`Precondition::MustNotExist`], `mod_revision == N` for
//! [`Precondition::Revision`]); a batch is one transaction too, so its writes share one
//! revision. Watches are etcd watches from `after + 1` with the previous value (for Deleted
//! events); a watch from a compacted revision, or one that etcd cancels for compaction, ends
//! with [`StoreError::Compacted`] / [`WatchEnd::FellBehind`] so that its client lists again.
//!
//! The [`Store`] trait is synchronous; `etcd-client` is async. The backend therefore owns a small
//! tokio runtime of its own: a call sends its request there and blocks on a channel for the
//! reply (one etcd round trip, like the file store's fsync), and each watch is a task there that
//! feeds a channel [`Watch::next`] reads. A watch whose connection to etcd breaks reconnects
//! by itself from its last revision.
//!
//! [`Store::is_leader`] is a lease-based lock (`PREFIX/leader`, a 5 s lease kept alive every
//! second): exactly one connected store holds it at a time, for the writes a control plane
//! makes on its own (the virtual IP table, fetched key sets).

use crate::object::{check_delete, check_key, check_put, stamp, stamped};
use crate::watch::{Feed, FeedWatch, Filter};
use crate::{
    Event, EventType, Key, Object, Precondition, Store, StoreError, Watch, WatchEnd, Write,
};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, KeyValue, PutOptions,
    Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;

/// How long one etcd request may take before the write or read fails (503 at the API).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// The leader lock's lease.
const LEADER_TTL_SECS: i64 = 5;

/// How to reach etcd.
#[derive(Clone, Debug)]
pub struct EtcdOptions {
    /// `host:port` or `http(s)://host:port`, one per cluster member.
    pub endpoints: Vec<String>,
    /// The key prefix every key of this store is under (default `/strait`).
    pub prefix: String,
    /// TLS to etcd: the CA that signed etcd's certificate, and optionally a client certificate
    /// and key.
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl EtcdOptions {
    /// Parses `etcd://HOST:PORT[,HOST:PORT...]`.
    pub fn from_url(url: &str) -> Result<EtcdOptions, String> {
        let rest = url.strip_prefix("etcd://").ok_or_else(|| {
            format!("--store {url:?}: expected `file` or etcd://HOST:PORT[,HOST:PORT...]")
        })?;
        let endpoints: Vec<String> = rest
            .split(',')
            .map(|e| e.trim().trim_end_matches('/').to_string())
            .filter(|e| !e.is_empty())
            .collect();
        if endpoints.is_empty() || endpoints.iter().any(|e| !e.contains(':')) {
            return Err(format!(
                "--store {url:?}: give every etcd endpoint as HOST:PORT, comma-separated \
                 (etcd://127.0.0.1:2379,10.0.0.2:2379)"
            ));
        }
        Ok(EtcdOptions {
            endpoints,
            prefix: "/strait".into(),
            ca: None,
            cert: None,
            key: None,
        })
    }
}

/// A [`Store`] on etcd. See the module docs.
pub struct EtcdStore {
    inner: Arc<Inner>,
    runtime: Option<tokio::runtime::Runtime>,
}

struct Inner {
    client: Client,
    prefix: String,
    endpoints: String,
    /// The last revision etcd reported, for [`Store::revision`] when etcd cannot be reached.
    revision: AtomicU64,
    leader: AtomicBool,
}

fn unavailable(inner: &Inner, action: &'static str, error: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable {
        endpoints: inner.endpoints.clone(),
        action,
        detail: error.to_string(),
    }
}

fn encode(part: &str, out: &mut String) {
    for c in part.chars() {
        match c {
            '%' => out.push_str("%25"),
            '/' => out.push_str("%2F"),
            c => out.push(c),
        }
    }
}

fn decode(part: &str) -> String {
    part.replace("%2F", "/").replace("%25", "%")
}

impl Inner {
    fn key(&self, key: &Key) -> String {
        let mut k = format!("{}/o/", self.prefix);
        encode(&key.kind, &mut k);
        k.push('/');
        encode(&key.namespace, &mut k);
        k.push('/');
        encode(&key.name, &mut k);
        k
    }

    /// The key prefix of a kind (and namespace), or of every object.
    fn range(&self, kind: Option<&str>, namespace: Option<&str>) -> String {
        let mut k = format!("{}/o/", self.prefix);
        if let Some(kind) = kind {
            encode(kind, &mut k);
            k.push('/');
            if let Some(ns) = namespace {
                encode(ns, &mut k);
                k.push('/');
            }
        }
        k
    }

    fn parse_key(&self, raw: &[u8]) -> Option<Key> {
        let s = std::str::from_utf8(raw).ok()?;
        let rest = s.strip_prefix(&self.prefix)?.strip_prefix("/o/")?;
        let mut parts = rest.splitn(3, '/');
        let (kind, ns, name) = (parts.next()?, parts.next()?, parts.next()?);
        Some(Key::new(decode(kind), decode(ns), decode(name)))
    }

    fn leader_key(&self) -> String {
        format!("{}/leader", self.prefix)
    }

    fn saw(&self, revision: i64) {
        self.revision
            .fetch_max(u64::try_from(revision).unwrap_or(0), Ordering::Relaxed);
    }
}

/// An object from a stored key-value, stamped with `revision`.
fn object_of(key: Key, value: &[u8], revision: i64) -> Result<Object, StoreError> {
    let value: Value = serde_json::from_slice(value).map_err(|e| StoreError::Corrupt {
        path: PathBuf::from(format!("etcd key of {key}")),
        detail: format!("the stored value is not JSON: {e}"),
    })?;
    stamped(key, value, u64::try_from(revision).unwrap_or(0))
}

/// The value as stored: without `metadata.resourceVersion`.
fn stored_bytes(key: &Key, mut value: Value) -> Result<(Value, Vec<u8>), StoreError> {
    stamp(key, &mut value, 0)?;
    if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
    }
    let bytes = serde_json::to_vec(&value).map_err(|_| StoreError::InvalidObject {
        key: key.clone(),
        reason: "the value cannot be written as JSON",
    })?;
    Ok((value, bytes))
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> i64 {
    header.map_or(0, |h| h.revision())
}

impl EtcdStore {
    /// Connects to etcd and checks that it answers; starts campaigning for the leader lock.
    pub fn connect(opts: &EtcdOptions) -> Result<EtcdStore, StoreError> {
        let endpoints = opts.endpoints.join(",");
        let fail = |action: &'static str, detail: String| StoreError::Unavailable {
            endpoints: endpoints.clone(),
            action,
            detail,
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("strait-etcd")
            .enable_all()
            .build()
            .map_err(|e| fail("starting its I/O thread", e.to_string()))?;
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(REQUEST_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
            .with_keep_alive_while_idle(true);
        let tls = opts.ca.is_some() || opts.cert.is_some();
        if tls {
            let mut config = etcd_client::TlsOptions::new();
            if let Some(ca) = &opts.ca {
                let pem = std::fs::read(ca)
                    .map_err(|e| fail("reading --etcd-ca", format!("{}: {e}", ca.display())))?;
                config = config.ca_certificate(etcd_client::Certificate::from_pem(pem));
            }
            match (&opts.cert, &opts.key) {
                (Some(cert), Some(key)) => {
                    let read = |p: &PathBuf| {
                        std::fs::read(p).map_err(|e| {
                            fail(
                                "reading --etcd-cert/--etcd-key",
                                format!("{}: {e}", p.display()),
                            )
                        })
                    };
                    config =
                        config.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
                }
                (None, None) => {}
                _ => {
                    return Err(fail(
                        "reading its TLS client identity",
                        "give both --etcd-cert and --etcd-key, or neither".into(),
                    ));
                }
            }
            connect = connect.with_tls(config);
        }
        let urls: Vec<String> = opts
            .endpoints
            .iter()
            .map(|e| {
                if e.contains("://") {
                    e.clone()
                } else if tls {
                    format!("https://{e}")
                } else {
                    format!("http://{e}")
                }
            })
            .collect();
        // Not `block_on`: the caller may be async code on another runtime.
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        runtime.spawn(async move {
            let connected = async {
                let mut client = Client::connect(&urls, Some(connect)).await?;
                let got = client
                    .get("/", Some(GetOptions::new().with_count_only()))
                    .await?;
                Ok::<_, etcd_client::Error>((client, header_revision(got.header())))
            };
            let _ = tx.send(connected.await);
        });
        let client = rx
            .recv()
            .map_err(|_| fail("connecting", "the I/O thread stopped".into()))?
            .map_err(|e| fail("connecting", e.to_string()))?;
        let (client, revision) = client;
        let prefix = opts.prefix.trim_end_matches('/').to_string();
        let inner = Arc::new(Inner {
            client,
            prefix: if prefix.is_empty() {
                "/strait".into()
            } else {
                prefix
            },
            endpoints,
            revision: AtomicU64::new(u64::try_from(revision).unwrap_or(0)),
            leader: AtomicBool::new(false),
        });
        runtime.spawn(campaign(Arc::downgrade(&inner)));
        Ok(EtcdStore {
            inner,
            runtime: Some(runtime),
        })
    }

    /// Runs `f` on the store's runtime and waits for its result.
    fn call<T: Send + 'static>(
        &self,
        f: impl std::future::Future<Output = T> + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.runtime.as_ref()?.spawn(async move {
            let _ = tx.send(f.await);
        });
        rx.recv().ok()
    }

    fn closed(&self) -> StoreError {
        unavailable(&self.inner, "closing", "the store is shutting down")
    }

    /// Writes `writes` as one transaction; the writes must be checked already.
    fn commit(&self, writes: Vec<Write>) -> Result<Vec<Object>, StoreError> {
        let mut stored = Vec::with_capacity(writes.len());
        for (index, w) in writes.iter().enumerate() {
            check_key(w.key()).map_err(|e| crate::file::in_batch(index, w.key(), e))?;
            if let Write::Put { key, value, .. } = w {
                stored.push(Some(
                    stored_bytes(key, value.clone())
                        .map_err(|e| crate::file::in_batch(index, key, e))?,
                ));
            } else {
                stored.push(None);
            }
        }
        let distinct = writes.iter().map(Write::key).collect::<HashSet<_>>().len() == writes.len();
        let inner = self.inner.clone();
        self.call(async move {
            if distinct {
                commit_distinct(&inner, writes, stored).await
            } else {
                commit_simulated(&inner, writes, stored).await
            }
        })
        .unwrap_or_else(|| Err(self.closed()))
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            // Ends every watch (their channels close: WatchEnd::StoreClosed) and the campaign;
            // the leader lease expires by itself.
            rt.shutdown_background();
        }
    }
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.inner.endpoints)
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

/// The compare a precondition makes of `key` (None: no compare).
fn compare_of(key: &str, pre: Precondition, delete: bool) -> Option<Compare> {
    match pre {
        Precondition::None if delete => Some(Compare::create_revision(key, CompareOp::Greater, 0)),
        Precondition::None => None,
        Precondition::MustNotExist if delete => {
            // Always fails; the failure branch reports why.
            Some(Compare::create_revision(key, CompareOp::Less, 0))
        }
        Precondition::MustNotExist => Some(Compare::create_revision(key, CompareOp::Equal, 0)),
        Precondition::Revision(r) => Some(Compare::mod_revision(
            key,
            CompareOp::Equal,
            i64::try_from(r).unwrap_or(i64::MAX),
        )),
    }
}

/// Checks the writes in order against `current` (the mod revision of each key, None: absent),
/// as the batch would change it.
fn check_all(writes: &[Write], current: &mut BTreeMap<Key, Option<u64>>) -> Result<(), StoreError> {
    for (index, w) in writes.iter().enumerate() {
        let cur = current.get(w.key()).copied().flatten();
        let result = match w {
            Write::Put { key, pre, .. } => check_put(key, *pre, cur),
            Write::Delete { key, pre } => check_delete(key, *pre, cur),
        };
        result.map_err(|e| crate::file::in_batch(index, w.key(), e))?;
        // Later writes in the batch see this one (a placeholder revision: the batch's own
        // revision is not known until it commits, and no precondition can name it).
        let next = match w {
            Write::Put { .. } => Some(u64::MAX),
            Write::Delete { .. } => None,
        };
        current.insert(w.key().clone(), next);
    }
    Ok(())
}

/// Each key's mod revision (None: absent), and the value and mod revision of those present.
type ReadBack = (BTreeMap<Key, Option<u64>>, BTreeMap<Key, (i64, Vec<u8>)>);

/// The current mod revision of each key, from a transaction's range responses.
fn revisions_from(inner: &Inner, responses: Vec<TxnOpResponse>) -> ReadBack {
    let mut revs = BTreeMap::new();
    let mut values = BTreeMap::new();
    for r in responses {
        if let TxnOpResponse::Get(get) = r {
            for kv in get.kvs() {
                if let Some(key) = inner.parse_key(kv.key()) {
                    revs.insert(key.clone(), u64::try_from(kv.mod_revision()).ok());
                    values.insert(key, (kv.mod_revision(), kv.value().to_vec()));
                }
            }
        }
    }
    (revs, values)
}

type Stored = Vec<Option<(Value, Vec<u8>)>>;

/// A batch whose writes touch distinct keys: one transaction whose compares are the
/// preconditions.
async fn commit_distinct(
    inner: &Inner,
    writes: Vec<Write>,
    stored: Stored,
) -> Result<Vec<Object>, StoreError> {
    let keys: Vec<String> = writes.iter().map(|w| inner.key(w.key())).collect();
    let mut compares = Vec::new();
    let mut ops = Vec::new();
    for ((w, k), s) in writes.iter().zip(&keys).zip(&stored) {
        match w {
            Write::Put { pre, .. } => {
                compares.extend(compare_of(k, *pre, false));
                let bytes = s.as_ref().map(|s| s.1.clone()).unwrap_or_default();
                ops.push(TxnOp::put(k.as_str(), bytes, Some(PutOptions::new())));
            }
            Write::Delete { pre, .. } => {
                compares.extend(compare_of(k, *pre, true));
                ops.push(TxnOp::delete(
                    k.as_str(),
                    Some(DeleteOptions::new().with_prev_key()),
                ));
            }
        }
    }
    let gets: Vec<TxnOp> = keys.iter().map(|k| TxnOp::get(k.as_str(), None)).collect();
    let txn = Txn::new().when(compares).and_then(ops).or_else(gets);
    // A failed compare whose read-back satisfies every precondition raced with another writer
    // between the two: try again (the compares are evaluated anew).
    let mut attempts = 0;
    let (revision, responses) = loop {
        attempts += 1;
        let resp = inner
            .client
            .kv_client()
            .txn(txn.clone())
            .await
            .map_err(|e| unavailable(inner, "writing", e))?;
        let revision = header_revision(resp.header());
        inner.saw(revision);
        let responses = resp.op_responses();
        if resp.succeeded() {
            break (revision, responses);
        }
        let (mut current, _) = revisions_from(inner, responses);
        check_all(&writes, &mut current)?;
        if attempts >= 8 {
            return Err(unavailable(
                inner,
                "writing",
                "the keys kept changing under concurrent writers; retry",
            ));
        }
    };
    let mut out = Vec::with_capacity(writes.len());
    for ((w, s), r) in writes.into_iter().zip(stored).zip(responses) {
        match (w, r) {
            (Write::Put { key, .. }, _) => {
                let (value, _) = s.unwrap_or_default();
                out.push(stamped(key, value, revision as u64)?);
            }
            (Write::Delete { key, .. }, TxnOpResponse::Delete(d)) => {
                let prev = d.prev_kvs().first().map(KeyValue::value).unwrap_or(b"{}");
                out.push(object_of(key, prev, revision)?);
            }
            (Write::Delete { key, .. }, _) => {
                return Err(unavailable(
                    inner,
                    "writing",
                    format!("etcd answered a delete of {key} with another operation"),
                ));
            }
        }
    }
    Ok(out)
}

/// A batch that writes a key more than once: read the keys, apply the batch to what was read,
/// and write each key's final state in one transaction that requires every key to be as read
/// (retried if another writer got in between).
async fn commit_simulated(
    inner: &Inner,
    writes: Vec<Write>,
    stored: Stored,
) -> Result<Vec<Object>, StoreError> {
    let unique: Vec<Key> = {
        let mut seen = HashSet::new();
        writes
            .iter()
            .map(|w| w.key().clone())
            .filter(|k| seen.insert(k.clone()))
            .collect()
    };
    for _attempt in 0..16 {
        let gets: Vec<TxnOp> = unique
            .iter()
            .map(|k| TxnOp::get(inner.key(k), None))
            .collect();
        let read = inner
            .client
            .kv_client()
            .txn(Txn::new().and_then(gets))
            .await
            .map_err(|e| unavailable(inner, "reading", e))?;
        let (before, values) = revisions_from(inner, read.op_responses());
        let mut current = before.clone();
        check_all(&writes, &mut current)?;
        // The final state of each key, and what each write returns.
        let mut last: BTreeMap<Key, Option<Vec<u8>>> = BTreeMap::new();
        let mut prior: BTreeMap<Key, Vec<u8>> = values
            .iter()
            .map(|(k, (_, v))| (k.clone(), v.clone()))
            .collect();
        let mut results: Vec<(Key, Vec<u8>)> = Vec::new();
        for (w, s) in writes.iter().zip(&stored) {
            match w {
                Write::Put { key, .. } => {
                    let bytes = s.as_ref().map(|s| s.1.clone()).unwrap_or_default();
                    prior.insert(key.clone(), bytes.clone());
                    last.insert(key.clone(), Some(bytes.clone()));
                    results.push((key.clone(), bytes));
                }
                Write::Delete { key, .. } => {
                    let was = prior.remove(key).unwrap_or_else(|| b"{}".to_vec());
                    last.insert(key.clone(), None);
                    results.push((key.clone(), was));
                }
            }
        }
        let mut compares = Vec::new();
        let mut ops = Vec::new();
        for (key, state) in &last {
            let k = inner.key(key);
            compares.push(match before.get(key).copied().flatten() {
                Some(rev) => Compare::mod_revision(k.as_str(), CompareOp::Equal, rev as i64),
                None => Compare::create_revision(k.as_str(), CompareOp::Equal, 0),
            });
            match state {
                Some(bytes) => ops.push(TxnOp::put(k, bytes.clone(), None)),
                None if before.get(key).copied().flatten().is_some() => {
                    ops.push(TxnOp::delete(k, None))
                }
                None => {}
            }
        }
        let resp = inner
            .client
            .kv_client()
            .txn(Txn::new().when(compares).and_then(ops))
            .await
            .map_err(|e| unavailable(inner, "writing", e))?;
        if !resp.succeeded() {
            continue;
        }
        let revision = header_revision(resp.header());
        inner.saw(revision);
        return results
            .into_iter()
            .map(|(key, bytes)| object_of(key, &bytes, revision))
            .collect();
    }
    let key = writes[0].key().clone();
    Err(crate::file::in_batch(
        0,
        &key,
        StoreError::Conflict {
            key: key.clone(),
            expected: 0,
            actual: 0,
        },
    ))
}

fn unbatch(result: Result<Vec<Object>, StoreError>) -> Result<Object, StoreError> {
    match result {
        Ok(mut objects) => Ok(objects.remove(0)),
        Err(StoreError::InBatch { source, .. }) => Err(*source),
        Err(e) => Err(e),
    }
}

impl Store for EtcdStore {
    fn get(&self, key: &Key) -> Result<Option<Object>, StoreError> {
        let inner = self.inner.clone();
        let k = inner.key(key);
        let key = key.clone();
        self.call(async move {
            let resp = inner
                .client
                .kv_client()
                .get(k, None)
                .await
                .map_err(|e| unavailable(&inner, "reading", e))?;
            inner.saw(header_revision(resp.header()));
            match resp.kvs().first() {
                Some(kv) => Ok(Some(object_of(key, kv.value(), kv.mod_revision())?)),
                None => Ok(None),
            }
        })
        .unwrap_or_else(|| Err(self.closed()))
    }

    fn list(&self, kind: &str, namespace: Option<&str>) -> Result<(Vec<Object>, u64), StoreError> {
        let inner = self.inner.clone();
        let range = inner.range(Some(kind), namespace);
        let kind = kind.to_string();
        self.call(async move {
            let resp = inner
                .client
                .kv_client()
                .get(range, Some(GetOptions::new().with_prefix()))
                .await
                .map_err(|e| unavailable(&inner, "listing", e))?;
            let revision = header_revision(resp.header());
            inner.saw(revision);
            let mut out = Vec::with_capacity(resp.kvs().len());
            for kv in resp.kvs() {
                let Some(key) = inner.parse_key(kv.key()) else {
                    continue;
                };
                if key.kind != kind {
                    continue;
                }
                out.push(object_of(key, kv.value(), kv.mod_revision())?);
            }
            out.sort_by(|a, b| {
                (&a.key.namespace, &a.key.name).cmp(&(&b.key.namespace, &b.key.name))
            });
            Ok((out, u64::try_from(revision).unwrap_or(0)))
        })
        .unwrap_or_else(|| Err(self.closed()))
    }

    fn put(
        &self,
        key: &Key,
        value: serde_json::Value,
        pre: Precondition,
    ) -> Result<Object, StoreError> {
        unbatch(self.commit(vec![Write::Put {
            key: key.clone(),
            value,
            pre,
        }]))
    }

    fn delete(&self, key: &Key, pre: Precondition) -> Result<Object, StoreError> {
        unbatch(self.commit(vec![Write::Delete {
            key: key.clone(),
            pre,
        }]))
    }

    fn write_batch(&self, writes: Vec<Write>) -> Result<Vec<Object>, StoreError> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        self.commit(writes)
    }

    fn watch(
        &self,
        kind: Option<&str>,
        namespace: Option<&str>,
        after: u64,
    ) -> Result<Watch, StoreError> {
        let inner = self.inner.clone();
        let filter = Filter::new(kind, namespace);
        let range = inner.range(kind, namespace.filter(|_| kind.is_some()));
        let (tx, rx) = mpsc::channel(64);
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let runtime = self.runtime.as_ref().ok_or_else(|| self.closed())?;
        runtime.spawn(run_watch(inner, range, filter, after, tx, ready_tx));
        let endpoints = self.inner.endpoints.clone();
        let ready = self
            .call(async move {
                match tokio::time::timeout(REQUEST_TIMEOUT * 2, ready_rx).await {
                    Ok(Ok(result)) => result,
                    Ok(Err(_)) => Ok(()),
                    Err(_) => Err(StoreError::Unavailable {
                        endpoints,
                        action: "watching",
                        detail: "etcd did not start the watch in time".into(),
                    }),
                }
            })
            .unwrap_or_else(|| Err(self.closed()));
        ready?;
        Ok(Watch::from_feed(FeedWatch::new(rx, after)))
    }

    fn revision(&self) -> u64 {
        let inner = self.inner.clone();
        let got = self.call(async move {
            let resp = inner
                .client
                .kv_client()
                .get(
                    inner.leader_key(),
                    Some(GetOptions::new().with_count_only()),
                )
                .await
                .ok()?;
            inner.saw(header_revision(resp.header()));
            Some(())
        });
        let _ = got;
        self.inner.revision.load(Ordering::Relaxed)
    }

    fn is_leader(&self) -> bool {
        self.inner.leader.load(Ordering::Relaxed)
    }
}

/// One watch: follows etcd from `after + 1`, reconnecting from its last revision when the
/// connection breaks, until the receiver is dropped. Says on `ready` whether the start
/// revision is still there.
async fn run_watch(
    inner: Arc<Inner>,
    range: String,
    filter: Filter,
    after: u64,
    tx: mpsc::Sender<Feed>,
    ready: tokio::sync::oneshot::Sender<Result<(), StoreError>>,
) {
    let mut ready = Some(ready);
    let mut last = after;
    let mut backoff = Duration::from_millis(100);
    loop {
        let opts = WatchOptions::new()
            .with_prefix()
            .with_prev_key()
            .with_start_revision(i64::try_from(last + 1).unwrap_or(i64::MAX));
        let started = inner
            .client
            .watch_client()
            .watch(range.as_str(), Some(opts))
            .await;
        let mut stream = match started {
            Ok(s) => s,
            Err(e) => {
                if let Some(r) = ready.take() {
                    let _ = r.send(Err(unavailable(&inner, "watching", e)));
                    return;
                }
                tracing::warn!(error = %e, endpoints = %inner.endpoints, "the etcd watch cannot reconnect yet; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = tx.closed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        loop {
            let message = tokio::select! {
                m = stream.message() => m,
                _ = tx.closed() => return,
            };
            let resp = match message {
                Ok(Some(resp)) => resp,
                Ok(None) | Err(_) => break,
            };
            backoff = Duration::from_millis(100);
            if resp.compact_revision() > 0 || (resp.canceled() && !resp.created()) {
                let oldest = u64::try_from(resp.compact_revision() - 1).unwrap_or(0);
                if let Some(r) = ready.take() {
                    let _ = r.send(Err(StoreError::Compacted { oldest }));
                    return;
                }
                let _ = tx.send(Feed::End(WatchEnd::FellBehind { oldest })).await;
                return;
            }
            if resp.created() {
                // etcd reports a compacted start revision in a separate response right after
                // this one: ask with a read at the start revision instead of waiting for it.
                if let Some(r) = ready.take() {
                    let current = header_revision(resp.header());
                    inner.saw(current);
                    if (last as i64) < current {
                        let at = GetOptions::new()
                            .with_count_only()
                            .with_revision(i64::try_from(last + 1).unwrap_or(i64::MAX));
                        let read = inner.client.kv_client().get(range.as_str(), Some(at)).await;
                        if read.is_err_and(|e| e.to_string().contains("compacted")) {
                            // The cancel that follows carries the compaction revision.
                            ready = Some(r);
                            continue;
                        }
                    }
                    let _ = r.send(Ok(()));
                }
                continue;
            }
            let mut events = Vec::new();
            let mut top = last;
            for e in resp.events() {
                let Some(kv) = e.kv() else { continue };
                top = top.max(u64::try_from(kv.mod_revision()).unwrap_or(0));
                let Some(key) = inner.parse_key(kv.key()) else {
                    continue;
                };
                if !filter.matches(&key.kind, &key.namespace) {
                    continue;
                }
                let event = match e.event_type() {
                    etcd_client::EventType::Put => {
                        let event_type = if kv.create_revision() == kv.mod_revision() {
                            EventType::Added
                        } else {
                            EventType::Modified
                        };
                        object_of(key, kv.value(), kv.mod_revision())
                            .map(|object| Event { event_type, object })
                    }
                    etcd_client::EventType::Delete => {
                        let prev = e.prev_kv().map(KeyValue::value).unwrap_or(b"{}");
                        object_of(key, prev, kv.mod_revision()).map(|object| Event {
                            event_type: EventType::Deleted,
                            object,
                        })
                    }
                };
                match event {
                    Ok(event) => events.push(event),
                    Err(error) => {
                        tracing::error!(%error, "skipping an unreadable object in etcd");
                    }
                }
            }
            inner.saw(top as i64);
            last = top;
            let feed = if events.is_empty() {
                Feed::Progress(top)
            } else {
                Feed::Events(events, top)
            };
            if tx.send(feed).await.is_err() {
                return;
            }
        }
        if let Some(r) = ready.take() {
            let _ = r.send(Err(unavailable(
                &inner,
                "watching",
                "the watch stream ended",
            )));
            return;
        }
        tracing::warn!(endpoints = %inner.endpoints, revision = last, "the etcd watch broke; reconnecting from its last revision");
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = tx.closed() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Holds the leader lock while this store lives: a key under a lease kept alive every second.
async fn campaign(inner: std::sync::Weak<Inner>) {
    // Unique among the control planes on one etcd: the lease the lock is held under is too,
    // but it changes when the lease is renewed after a loss.
    let id = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    loop {
        let Some(me) = inner.upgrade() else { return };
        let held = hold(&me, &id).await;
        me.leader.store(false, Ordering::Relaxed);
        if let Err(e) = held {
            tracing::warn!(error = %e, "lost the control-plane leader lease (or could not take part); retrying");
        }
        drop(me);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn hold(inner: &Inner, id: &str) -> Result<(), etcd_client::Error> {
    let mut lease = inner.client.lease_client();
    let lease_id = lease.grant(LEADER_TTL_SECS, None).await?.id();
    let (mut keeper, mut responses) = lease.keep_alive(lease_id).await?;
    let key = inner.leader_key();
    let mut was = false;
    loop {
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.as_str(),
                id,
                Some(PutOptions::new().with_lease(lease_id)),
            )])
            .or_else([TxnOp::get(key.as_str(), None)]);
        let resp = inner.client.kv_client().txn(txn).await?;
        let leader = resp.succeeded()
            || resp.op_responses().iter().any(|r| match r {
                TxnOpResponse::Get(g) => g
                    .kvs()
                    .first()
                    .is_some_and(|kv| kv.value() == id.as_bytes()),
                _ => false,
            });
        inner.leader.store(leader, Ordering::Relaxed);
        if leader != was {
            tracing::info!(
                leader,
                "control-plane leadership (VIP allocation, key-set fetches)"
            );
            was = leader;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        keeper.keep_alive().await?;
        match tokio::time::timeout(REQUEST_TIMEOUT, responses.message()).await {
            Ok(Ok(Some(r))) if r.ttl() > 0 => {}
            Ok(Ok(_)) => {
                return Err(etcd_client::Error::LeaseKeepAliveError(
                    "the lease expired".into(),
                ));
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(etcd_client::Error::LeaseKeepAliveError(
                    "etcd did not answer the keep-alive".into(),
                ));
            }
        }
    }
}
