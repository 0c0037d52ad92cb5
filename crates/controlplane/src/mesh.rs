//! The mesh as the translator sees it: the config snapshot and the registry, kept current from
//! the store's events (each changed object is parsed once; unchanged kinds are shared between
//! snapshots), and the generator the ADS server calls.
//!
//! Every change is logged with the hosts whose endpoints it changed when nothing else changed
//! (an endpoint-only change): the ADS server then regenerates only those hosts' clusters and
//! endpoints, and pushes at once (see [`AdsServer::notify_endpoints`]).

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use serde_json::json;
use strait_ads::{AdsServer, Generator, Inputs};
use strait_api::parse::{Outcome, Source, parse_value};
use strait_api::{Kind, Resource, Spec};
use strait_registry::{Endpoint, Registry, VipRange, VipTable};
use strait_store::{Event, EventType, Key, Precondition, Store, StoreError};
use strait_translate::translate::{translate, translate_hosts};
use strait_translate::{ConfigSnapshot, MeshConfig};
use strait_xds_core::{Proxy, XdsResources};

use crate::jwks::{JWKS_KEY_KIND, JwksFetcher, jwks_key, parse_stored};

/// The store kind under which the virtual IP table is kept, so VIPs survive restarts. The API
/// does not serve it.
pub const VIP_KEY_KIND: &str = "internal.strait.io/VipTable";

/// How many changes the log keeps: a shape last generated further back is generated in full.
const LOG_LEN: usize = 64;

/// What the translator reads, at one store revision.
pub struct MeshState {
    pub snapshot: ConfigSnapshot,
    pub registry: Registry,
    /// (address, WorkloadEntry name) of the registry's endpoints: a proxy at that address with
    /// that workload name has its own endpoints (and inbound ports) in the registry.
    /// Computed when a proxy's shape is first asked for (not for every store write while
    /// nobody is connected), or carried over from the state before when it cannot differ.
    owners: OnceLock<Arc<HashSet<(IpAddr, String)>>>,
    /// The latest changes, oldest first.
    log: VecDeque<Logged>,
}

/// One change of the mesh state.
#[derive(Debug, Clone)]
struct Logged {
    /// The revision of the state before, and after.
    from: u64,
    to: u64,
    /// For an endpoint-only change, what changed; `None` for any other change.
    endpoints: Option<EndpointChange>,
}

#[derive(Debug, Clone, Default)]
struct EndpointChange {
    /// Hosts whose endpoints changed.
    hosts: BTreeSet<String>,
    /// The addresses of the endpoints that changed (before and after).
    addresses: BTreeSet<String>,
}

/// The parsed resources, by kind, by store key.
type Objects = BTreeMap<Kind, BTreeMap<Key, Arc<Resource>>>;

/// The current mesh state, and how to update it.
pub struct Mesh {
    store: Arc<dyn Store>,
    config: MeshConfig,
    vips: Mutex<VipTable>,
    /// Held while the VIP table is written to the store, so that saves happen one at a time
    /// and the last one written is the latest table.
    vips_saving: Mutex<()>,
    objects: Mutex<Objects>,
    /// Read on every generation, replaced on every change.
    state: ArcSwap<MeshState>,
    /// Told which `jwksUri`s the RequestAuthentications use after every change.
    jwks: OnceLock<JwksFetcher>,
}

fn vip_key() -> Key {
    Key {
        kind: VIP_KEY_KIND.to_string(),
        namespace: String::new(),
        name: "vips".to_string(),
    }
}

fn kind_of(key: &Key) -> Option<Kind> {
    Kind::ALL
        .into_iter()
        .find(|k| k.qualified_name() == key.kind)
}

/// Parses a stored object; `None` (logged) if it is not a resource the mesh reads.
fn parse(key: &Key, value: serde_json::Value) -> Option<Resource> {
    let parsed = parse_value(
        Source {
            file: format!("store:{key}"),
            index: 0,
        },
        value,
    );
    match parsed.outcome {
        Outcome::Resource(r) => Some(*r),
        Outcome::Unsupported(why) => {
            tracing::warn!(%key, %why, "stored resource skipped");
            None
        }
        Outcome::Invalid(e) => {
            tracing::warn!(%key, error = %e, "stored resource no longer parses; skipped");
            None
        }
    }
}

/// The resources of one kind in (namespace, name) order, as the snapshot keeps them.
fn sorted(objects: &BTreeMap<Key, Arc<Resource>>) -> Arc<Vec<Arc<Resource>>> {
    let mut list: Vec<Arc<Resource>> = objects.values().cloned().collect();
    list.sort_by(|a, b| {
        (
            strait_translate::snapshot::namespace_of(&a.metadata),
            a.name(),
        )
            .cmp(&(
                strait_translate::snapshot::namespace_of(&b.metadata),
                b.name(),
            ))
    });
    Arc::new(list)
}

fn owners(registry: &Registry) -> HashSet<(IpAddr, String)> {
    owner_pairs(registry.endpoints.values().map(|eps| &**eps))
}

/// What changed between two registries with the same services, looking at these endpoint
/// lists only.
fn endpoint_change_of<'k>(
    before: &Registry,
    after: &Registry,
    keys: impl IntoIterator<Item = &'k (String, u16)>,
) -> EndpointChange {
    let mut change = EndpointChange::default();
    let empty = Arc::new(Vec::new());
    for key in keys {
        let old = before.endpoints.get(key).unwrap_or(&empty);
        let new = after.endpoints.get(key).unwrap_or(&empty);
        if !Arc::ptr_eq(old, new) && old != new {
            change.hosts.insert(key.0.clone());
            let gone = old.iter().filter(|e| !new.contains(e));
            let came = new.iter().filter(|e| !old.contains(e));
            for e in gone.chain(came) {
                change.addresses.insert(e.address.clone());
            }
        }
    }
    change
}

/// A WorkloadEntry's namespace and labels.
fn workload_labels(r: &Resource) -> Option<(&str, &BTreeMap<String, String>)> {
    match &r.spec {
        Spec::WorkloadEntry(w) => Some((
            strait_translate::snapshot::namespace_of(&r.metadata),
            &w.labels,
        )),
        _ => None,
    }
}

/// The (address, workload name) pairs of these endpoint lists.
fn owner_pairs<'e>(
    lists: impl IntoIterator<Item = &'e Vec<Endpoint>>,
) -> HashSet<(IpAddr, String)> {
    lists
        .into_iter()
        .flatten()
        .filter_map(|e| Some((e.address.parse().ok()?, e.workload.clone()?)))
        .collect()
}

impl Mesh {
    /// Loads the VIP table and builds the first state from the store.
    pub fn load(store: Arc<dyn Store>, config: MeshConfig, vip_range: &str) -> Result<Mesh> {
        let range: VipRange = vip_range
            .parse()
            .with_context(|| format!("the virtual IP range {vip_range:?}"))?;
        let saved = match store.get(&vip_key())? {
            Some(obj) => Some(
                VipTable::from_json(obj.value["table"].as_str().unwrap_or_default())
                    .context("reading the virtual IP table from the store")?,
            ),
            None => None,
        };
        let vips = match saved {
            Some(table) if table.range() == range => table,
            Some(_) => {
                tracing::warn!(%vip_range, "the virtual IP range changed: services get new virtual IPs from it");
                VipTable::new(range)
            }
            None => VipTable::new(range),
        };
        let mesh = Mesh {
            store,
            config,
            vips: Mutex::new(vips),
            vips_saving: Mutex::new(()),
            objects: Mutex::default(),
            jwks: OnceLock::new(),
            state: ArcSwap::from_pointee(MeshState {
                snapshot: ConfigSnapshot::default(),
                registry: Registry::default(),
                owners: OnceLock::new(),
                log: VecDeque::new(),
            }),
        };
        mesh.rebuild()?;
        Ok(mesh)
    }

    pub fn current(&self) -> Arc<MeshState> {
        self.state.load_full()
    }

    /// Has `fetcher` fetch the key sets the RequestAuthentications name, from now on.
    pub fn set_jwks_fetcher(&self, fetcher: JwksFetcher) {
        if self.jwks.set(fetcher).is_ok() {
            self.want_jwks(&self.current().snapshot);
        }
    }

    fn want_jwks(&self, snapshot: &ConfigSnapshot) {
        if let Some(f) = self.jwks.get() {
            f.want(
                strait_translate::translate::authn::jwks_uris(snapshot)
                    .into_iter()
                    .collect(),
            );
        }
    }

    /// Rebuilds the snapshot and registry from everything in the store (at start, and when the
    /// watch fell behind); returns the revision it reflects.
    pub fn rebuild(&self) -> Result<u64> {
        let revision = self.store.revision();
        let mut objects = Objects::new();
        for kind in Kind::ALL {
            let (listed, _) = self.store.list(&kind.qualified_name(), None)?;
            for obj in listed {
                if let Some(r) = parse(&obj.key, obj.value) {
                    objects
                        .entry(r.kind)
                        .or_default()
                        .insert(obj.key, Arc::new(r));
                }
            }
        }
        let mut snapshot = ConfigSnapshot::new(revision, self.config.clone(), []);
        for (kind, list) in &objects {
            snapshot = snapshot.with_kind(revision, *kind, sorted(list));
        }
        if let Some(obj) = self.store.get(&jwks_key())? {
            snapshot = snapshot.with_jwks(revision, Arc::new(parse_stored(&obj.value)));
        }
        *self.objects.lock().expect("mesh objects lock poisoned") = objects;
        self.install(snapshot, None);
        Ok(revision)
    }

    /// Applies a batch of store events. Returns the new revision and whether only endpoints
    /// changed, or `None` if no event concerned the mesh.
    pub fn apply(&self, events: Vec<Event>) -> Option<(u64, bool)> {
        let mut changed: BTreeSet<Kind> = BTreeSet::new();
        // Fetched key sets (not a kind): the latest, if they changed.
        let mut jwks = None;
        // The WorkloadEntries changed, before and after.
        let mut workloads: Vec<Arc<Resource>> = Vec::new();
        let mut revision = 0;
        let before = self.current();
        let mut snapshot = before.snapshot.clone();
        {
            let mut objects = self.objects.lock().expect("mesh objects lock poisoned");
            for event in events {
                let key = event.object.key;
                if key.kind == JWKS_KEY_KIND {
                    revision = revision.max(event.object.revision);
                    jwks = Some(Arc::new(match event.event_type {
                        EventType::Deleted => BTreeMap::new(),
                        _ => parse_stored(&event.object.value),
                    }));
                    continue;
                }
                let Some(kind) = kind_of(&key) else {
                    continue;
                };
                revision = revision.max(event.object.revision);
                changed.insert(kind);
                let list = objects.entry(kind).or_default();
                let parsed = match event.event_type {
                    EventType::Deleted => None,
                    EventType::Added | EventType::Modified => parse(&key, event.object.value),
                };
                let (old, new) = match parsed {
                    Some(r) if r.kind == kind => {
                        let new = Arc::new(r);
                        (list.insert(key, new.clone()), Some(new))
                    }
                    _ => (list.remove(&key), None),
                };
                if kind == Kind::WorkloadEntry {
                    workloads.extend(old.into_iter().chain(new));
                }
            }
            if changed.is_empty() && jwks.is_none() {
                return None;
            }
            for kind in &changed {
                snapshot = snapshot.with_kind(revision, *kind, sorted(&objects[kind]));
            }
            if let Some(jwks) = jwks.take() {
                snapshot = snapshot.with_jwks(revision, jwks);
                // Not an endpoint-only change.
                changed.insert(Kind::RequestAuthentication);
            }
        }
        let endpoints_kinds = changed.iter().all(|k| *k == Kind::WorkloadEntry);
        let endpoints_only = self.install(snapshot, endpoints_kinds.then_some(&workloads));
        Some((revision, endpoints_only))
    }

    /// Builds the registry for `snapshot` and makes it current. `workloads`: when nothing but
    /// WorkloadEntries changed since the current state, those (before and after); the registry
    /// is then updated for them only. `None`: a full rebuild. Returns whether the change was
    /// endpoint-only.
    ///
    /// A change that allocated or moved virtual IPs saves the table to the store after the new
    /// state is current, outside every lock the mesh holds (the store's watch sees the write,
    /// and the mesh skips it: its kind is not one the mesh reads).
    fn install(&self, snapshot: ConfigSnapshot, workloads: Option<&Vec<Arc<Resource>>>) -> bool {
        let current = self.current();
        let (registry, endpoints, vips_changed) = {
            let mut vips = self.vips.lock().expect("vip lock poisoned");
            // An update for some workloads allocates nothing new unless the table grows (it
            // only grows while building); a full build may also move addresses.
            let before = match workloads {
                Some(_) => None,
                None => Some(vips.to_json()),
            };
            let count = vips.len();
            let (registry, endpoints) = match workloads {
                Some(workloads) => {
                    let changed: Vec<_> = workloads
                        .iter()
                        .filter_map(|r| workload_labels(r))
                        .collect();
                    let (registry, hosts) = current.registry.with_workloads(
                        snapshot.all(),
                        &changed,
                        &mut vips,
                        &self.config.domain_suffix,
                    );
                    let keys: Vec<(String, u16)> = registry
                        .endpoints
                        .keys()
                        .filter(|(h, _)| hosts.contains(h))
                        .cloned()
                        .collect();
                    let change = endpoint_change_of(&current.registry, &registry, &keys);
                    (registry, Some(change))
                }
                None => (
                    Registry::build(snapshot.all(), &mut vips, &self.config.domain_suffix),
                    None,
                ),
            };
            let changed = match &before {
                Some(before) => *before != vips.to_json(),
                None => vips.len() != count,
            };
            (registry, endpoints, changed)
        };
        // The owners change only if the changed hosts' (address, workload) pairs do.
        let owners = match (&endpoints, current.owners.get()) {
            (Some(change), Some(before)) => {
                let pairs = |r: &'_ Registry| -> HashSet<(IpAddr, String)> {
                    owner_pairs(
                        r.endpoints
                            .iter()
                            .filter(|((h, _), _)| change.hosts.contains(h))
                            .map(|(_, eps)| &**eps),
                    )
                };
                if pairs(&current.registry) == pairs(&registry) {
                    OnceLock::from(before.clone())
                } else {
                    OnceLock::new()
                }
            }
            _ => OnceLock::new(),
        };
        let endpoints_only = endpoints.is_some();
        let mut log = current.log.clone();
        log.push_back(Logged {
            from: current.snapshot.revision,
            to: snapshot.revision,
            endpoints,
        });
        while log.len() > LOG_LEN {
            log.pop_front();
        }
        if !endpoints_only {
            self.want_jwks(&snapshot);
        }
        self.state.store(Arc::new(MeshState {
            owners,
            snapshot,
            registry,
            log,
        }));
        if vips_changed {
            self.save_vips();
        }
        endpoints_only
    }

    /// Writes the current virtual IP table to the store: only the leader of the control planes
    /// sharing the store does (the others adopt what it writes: [`Mesh::adopt_vips`]).
    fn save_vips(&self) {
        if !self.store.is_leader() {
            return;
        }
        let _saving = self.vips_saving.lock().expect("vip save lock poisoned");
        let table = self.vips.lock().expect("vip lock poisoned").to_json();
        let value = json!({"metadata": {"name": "vips"}, "table": table});
        if let Err(e) = self.store.put(&vip_key(), value, Precondition::None) {
            tracing::error!(error = %e, "could not save the virtual IP table; VIPs may change at restart");
        }
    }
}

impl Mesh {
    /// Takes the virtual IP table another control plane (the leader) saved, if it differs from
    /// this one's. Returns whether it did; the caller then rebuilds.
    pub fn adopt_vips(&self, value: &serde_json::Value) -> bool {
        if self.store.is_leader() {
            return false;
        }
        let text = value["table"].as_str().unwrap_or_default();
        let mut vips = self.vips.lock().expect("vip lock poisoned");
        if vips.to_json() == text {
            return false;
        }
        match VipTable::from_json(text) {
            Ok(table) if table.range() == vips.range() => {
                *vips = table;
                true
            }
            Ok(_) => {
                tracing::warn!("the leader's virtual IP table has another --vip-range; ignored");
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "the leader's virtual IP table cannot be read; ignored");
                false
            }
        }
    }
}

impl Generator for Mesh {
    fn generate(&self, proxy: &Proxy) -> XdsResources {
        let state = self.current();
        translate(&state.snapshot, &state.registry, proxy)
    }

    fn inputs(&self) -> Option<Arc<dyn Inputs>> {
        Some(self.current())
    }
}

impl Inputs for MeshState {
    fn revision(&self) -> u64 {
        self.snapshot.revision
    }

    /// What the translation reads of a proxy: role, address, namespace, labels, capture mode
    /// and app address, and its workload name only when the registry has endpoints of that workload at its
    /// address (then its inbound ports are its own) or when its labels name no canonical service
    /// (then the spans' service name is the workload's).
    fn shape(&self, proxy: &Proxy) -> String {
        let owners = self.owners.get_or_init(|| Arc::new(owners(&self.registry)));
        let unnamed = ![
            "service.istio.io/canonical-name",
            "app.kubernetes.io/name",
            "app",
        ]
        .iter()
        .any(|l| proxy.labels.get(*l).is_some_and(|v| !v.is_empty()));
        let owner = unnamed || owners.contains(&(proxy.ip, proxy.workload.clone()));
        format!(
            "{:?}|{}|{}|{:?}|{:?}|{}|{:?}|{}",
            proxy.role,
            proxy.ip,
            proxy.namespace,
            proxy.labels,
            proxy.capture,
            if owner { proxy.workload.as_str() } else { "" },
            proxy.app_address,
            proxy.mtls
        )
    }

    fn generate(&self, proxy: &Proxy) -> XdsResources {
        translate(&self.snapshot, &self.registry, proxy)
    }

    fn endpoint_changes_since(&self, revision: u64) -> Option<BTreeSet<String>> {
        let mut after = self.log.iter().skip_while(|l| l.to <= revision).peekable();
        // The log must reach back to `revision`.
        if after.peek()?.from > revision {
            return None;
        }
        let mut hosts = BTreeSet::new();
        for logged in after {
            hosts.extend(logged.endpoints.as_ref()?.hosts.iter().cloned());
        }
        Some(hosts)
    }

    fn generate_hosts(&self, proxy: &Proxy, hosts: &BTreeSet<String>) -> Option<XdsResources> {
        // An endpoint at the proxy's own address may change its inbound side: not just clusters.
        let own = self
            .log
            .iter()
            .filter_map(|l| l.endpoints.as_ref())
            .flat_map(|e| &e.addresses)
            .any(|a| a.parse::<IpAddr>().ok() == Some(proxy.ip));
        if own {
            return None;
        }
        Some(translate_hosts(
            &self.snapshot,
            &self.registry,
            proxy,
            hosts,
        ))
    }
}

/// The thread the mesh state is updated on: one long-lived thread rather than the blocking
/// pool, whose threads also serve the API's store writes, so the state's allocations stay in
/// one allocator arena instead of spreading over several that each keep their high-water mark
/// (the benchmark's control plane after 11,000 single writes, before any proxy connected: 340 MB
/// resident on the blocking pool, 195 MB on one thread).
struct Worker {
    jobs: std::sync::mpsc::Sender<Box<dyn FnOnce() + Send>>,
}

impl Worker {
    fn start() -> Worker {
        let (jobs, rx) = std::sync::mpsc::channel::<Box<dyn FnOnce() + Send>>();
        std::thread::Builder::new()
            .name("strait-mesh".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    // A panicking update is reported by its caller (its answer never comes);
                    // the thread goes on with the next one.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                }
            })
            .expect("spawning the mesh thread");
        Worker { jobs }
    }

    /// Runs `f` on the mesh thread; `None` if it panicked.
    async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = tx.send(f());
            }))
            .ok()?;
        rx.await.ok()
    }
}

/// Follows the store: after every change (events that arrive together count as one), rebuilds
/// the mesh state and tells the ADS server.
pub async fn follow(mesh: Arc<Mesh>, store: Arc<dyn Store>, ads: AdsServer) {
    let worker = Worker::start();
    let mut after = mesh.current().snapshot.revision;
    'watch: loop {
        let mut watch = match store.watch(None, None, after) {
            Ok(w) => w,
            Err(StoreError::Compacted { oldest }) => {
                tracing::warn!(
                    revision = after,
                    oldest,
                    "the store's history after this revision was compacted: listing everything again"
                );
                after = rebuild(&worker, &mesh, &ads).await.unwrap_or(after);
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot watch the store; retrying in 1 s");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(event) = watch.next().await {
            let written_at = SystemTime::now();
            let mut events = vec![event];
            while let Some(more) = watch.try_next() {
                events.push(more);
            }
            // The virtual IP table: written by this control plane, or by the leader of those
            // sharing the store (adopted here: its services' addresses then agree).
            let vip_table = events
                .iter()
                .rev()
                .find(|e| e.object.key.kind == VIP_KEY_KIND && e.event_type != EventType::Deleted)
                .map(|e| e.object.value.clone());
            events.retain(|e| e.object.key.kind != VIP_KEY_KIND);
            if let Some(table) = vip_table {
                let m = mesh.clone();
                if worker.run(move || m.adopt_vips(&table)).await == Some(true) {
                    // A rebuild reads everything (these events too): watch again from it.
                    tracing::info!("adopted the leader's virtual IP table");
                    after = rebuild(&worker, &mesh, &ads).await.unwrap_or(after);
                    continue 'watch;
                }
            }
            if events.is_empty() {
                continue;
            }
            let last = events.last().map_or(after, |e| e.object.revision);
            let m = mesh.clone();
            match worker.run(move || m.apply(events)).await {
                Some(Some((rev, endpoints_only))) => {
                    if endpoints_only {
                        ads.notify_endpoints(rev, written_at);
                    } else {
                        ads.notify(rev, written_at);
                    }
                }
                Some(None) => {}
                None => tracing::error!("applying store events failed (panicked)"),
            }
            after = after.max(last);
        }
        // The watch ended: the store is closing, or this watcher fell behind and must relist.
        match watch.ended() {
            Some(strait_store::WatchEnd::StoreClosed) | None => return,
            Some(end) => {
                tracing::warn!(
                    ?end,
                    revision = after,
                    "the store watch fell behind (compacted) or failed: listing everything again"
                );
                after = rebuild(&worker, &mesh, &ads).await.unwrap_or(after);
            }
        }
    }
}

async fn rebuild(worker: &Worker, mesh: &Arc<Mesh>, ads: &AdsServer) -> Option<u64> {
    let written_at = SystemTime::now();
    let m = mesh.clone();
    match worker.run(move || m.rebuild()).await {
        Some(Ok(rev)) => {
            ads.notify(rev, written_at);
            Some(rev)
        }
        Some(Err(e)) => {
            tracing::error!(error = %e, "rebuilding the mesh state failed");
            None
        }
        None => {
            tracing::error!("rebuilding the mesh state failed (panicked)");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strait_store::MemoryStore;
    use strait_xds_core::{CaptureMode, ProxyRole, TypeUrl};

    fn put(store: &MemoryStore, kind: &str, name: &str, value: serde_json::Value) -> Event {
        let key = Key {
            kind: kind.to_string(),
            namespace: "default".to_string(),
            name: name.to_string(),
        };
        let object = store.put(&key, value, Precondition::None).unwrap();
        Event {
            event_type: EventType::Modified,
            object,
        }
    }

    fn service(name: &str) -> serde_json::Value {
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": name, "namespace": "default"},
               "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 9080}]}})
    }

    fn workload(name: &str, app: &str, address: &str, weight: u32) -> serde_json::Value {
        json!({"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry",
               "metadata": {"name": name, "namespace": "default"},
               "spec": {"address": address, "labels": {"app": app}, "weight": weight}})
    }

    fn proxy(workload: &str, ip: &str) -> Proxy {
        Proxy {
            id: Proxy::node_id(ProxyRole::Sidecar, ip.parse().unwrap(), workload, "default"),
            role: ProxyRole::Sidecar,
            ip: ip.parse().unwrap(),
            workload: workload.into(),
            namespace: "default".into(),
            labels: [("app".to_string(), "client".to_string())].into(),
            capture: CaptureMode::Iptables,
            service_account: "default".into(),
            app_address: None,
            mtls: false,
        }
    }

    const WE: &str = "workloadentry.networking.istio.io";

    #[test]
    fn fetched_key_sets_enter_the_snapshot_at_a_new_revision_and_survive_a_rebuild() {
        let store = Arc::new(MemoryStore::new());
        let mesh = Mesh::load(store.clone(), MeshConfig::default(), "240.240.0.0/16").unwrap();
        let before = mesh.current().revision();
        let uri = "https://issuer.example/jwks.json";
        let object = store
            .put(
                &jwks_key(),
                json!({"metadata": {"name": "jwks"}, "keys": {uri: "{\"keys\":[]}"}}),
                Precondition::None,
            )
            .unwrap();
        let (rev, endpoints_only) = mesh
            .apply(vec![Event {
                event_type: EventType::Added,
                object,
            }])
            .expect("a key set change is a mesh change");
        assert!(rev > before && !endpoints_only);
        let state = mesh.current();
        assert_eq!(state.revision(), rev);
        assert_eq!(
            state.snapshot.jwks.get(uri).map(String::as_str),
            Some("{\"keys\":[]}")
        );
        mesh.rebuild().unwrap();
        assert!(mesh.current().snapshot.jwks.contains_key(uri));
    }

    #[test]
    fn events_update_the_state_and_endpoint_only_changes_are_told_apart() {
        let store = Arc::new(MemoryStore::new());
        put(&store, "service", "a", service("a"));
        put(&store, "service", "b", service("b"));
        put(&store, WE, "a-1", workload("a-1", "a", "10.0.0.1", 1));
        put(&store, WE, "b-1", workload("b-1", "b", "10.0.0.2", 1));
        let mesh = Mesh::load(store.clone(), MeshConfig::default(), "240.240.0.0/16").unwrap();
        let first = mesh.current();
        assert_eq!(first.registry.services.len(), 2, "{:?}", first.registry);

        // A WorkloadEntry's weight: endpoint-only, for host a.
        let ev = put(&store, WE, "a-1", workload("a-1", "a", "10.0.0.1", 3));
        let (rev, endpoints_only) = mesh.apply(vec![ev]).unwrap();
        assert!(endpoints_only);
        let state = mesh.current();
        assert_eq!(state.revision(), rev);
        assert_eq!(
            state.endpoint_changes_since(first.revision()),
            Some(["a.default.svc.cluster.local".to_string()].into())
        );
        let a = &state.registry.endpoints[&("a.default.svc.cluster.local".to_string(), 9080)];
        assert_eq!(a[0].weight, 3);

        // Only a's cluster and endpoints are regenerated, and they equal the full translation's.
        let client = proxy("client", "10.0.0.9");
        let hosts = state.endpoint_changes_since(first.revision()).unwrap();
        let partial = state.generate_hosts(&client, &hosts).unwrap();
        let full = Inputs::generate(&*state, &client);
        assert_eq!(
            partial.encode(TypeUrl::Endpoint).keys().collect::<Vec<_>>(),
            ["outbound|9080||a.default.svc.cluster.local"]
        );
        let name = "outbound|9080||a.default.svc.cluster.local";
        assert_eq!(partial.endpoints[name], full.endpoints[name]);
        // The proxy at the changed endpoint's address needs a full generation.
        assert!(
            state
                .generate_hosts(&proxy("a-1", "10.0.0.1"), &hosts)
                .is_none()
        );
        // Proxies that differ only in name share a shape; one whose endpoints the registry
        // has does not.
        assert_eq!(
            state.shape(&client),
            state.shape(&proxy("other", "10.0.0.9"))
        );
        assert_ne!(
            state.shape(&proxy("a-1", "10.0.0.1")),
            state.shape(&proxy("x", "10.0.0.1"))
        );

        // A new Service is not endpoint-only, and cuts the chain of endpoint changes.
        let ev = put(&store, "service", "c", service("c"));
        let (_, endpoints_only) = mesh.apply(vec![ev]).unwrap();
        assert!(!endpoints_only);
        let state = mesh.current();
        assert!(
            state
                .registry
                .services
                .contains_key("c.default.svc.cluster.local")
        );
        assert_eq!(state.endpoint_changes_since(first.revision()), None);

        // A WorkloadEntry that moves to another service changes both; a deleted one its own.
        let ev = put(&store, WE, "b-1", workload("b-1", "c", "10.0.0.2", 1));
        let before = mesh.current().revision();
        assert!(mesh.apply(vec![ev]).unwrap().1);
        assert_eq!(
            mesh.current().endpoint_changes_since(before),
            Some(
                [
                    "b.default.svc.cluster.local".to_string(),
                    "c.default.svc.cluster.local".to_string()
                ]
                .into()
            )
        );
        let key = Key {
            kind: WE.to_string(),
            namespace: "default".to_string(),
            name: "a-1".to_string(),
        };
        let object = store.delete(&key, Precondition::None).unwrap();
        let before = mesh.current().revision();
        let deleted = Event {
            event_type: EventType::Deleted,
            object,
        };
        assert!(mesh.apply(vec![deleted]).unwrap().1);
        assert_eq!(
            mesh.current().endpoint_changes_since(before),
            Some(["a.default.svc.cluster.local".to_string()].into())
        );
        // The state equals a full rebuild from the store.
        let incremental = mesh.current();
        mesh.rebuild().unwrap();
        assert_eq!(incremental.registry, mesh.current().registry);
    }
}
