//! The mesh as the translator sees it: the config snapshot and the registry, rebuilt from the
//! store whenever it changes, and the generator the ADS server calls.

use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use anyhow::{Context, Result};
use serde_json::json;
use strait_api::Kind;
use strait_api::parse::{Outcome, Source, parse_value};
use strait_registry::{Registry, VipRange, VipTable};
use strait_store::{Key, Precondition, Store, StoreError};
use strait_xds::ads::{AdsServer, Generator};
use strait_xds::translate::translate;
use strait_xds::{ConfigSnapshot, MeshConfig, Proxy, XdsResources};

/// The store kind under which the virtual IP table is kept, so VIPs survive restarts. The API
/// does not serve it.
pub const VIP_KEY_KIND: &str = "internal.strait.io/VipTable";

/// What the translator reads, at one store revision.
pub struct MeshState {
    pub snapshot: ConfigSnapshot,
    pub registry: Registry,
}

/// The current mesh state, and how to rebuild it.
pub struct Mesh {
    store: Arc<dyn Store>,
    config: MeshConfig,
    vips: Mutex<VipTable>,
    state: RwLock<Arc<MeshState>>,
}

fn vip_key() -> Key {
    Key {
        kind: VIP_KEY_KIND.to_string(),
        namespace: String::new(),
        name: "vips".to_string(),
    }
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
            state: RwLock::new(Arc::new(MeshState {
                snapshot: ConfigSnapshot::default(),
                registry: Registry::default(),
            })),
        };
        mesh.rebuild()?;
        Ok(mesh)
    }

    pub fn current(&self) -> Arc<MeshState> {
        self.state.read().expect("mesh state lock poisoned").clone()
    }

    /// Rebuilds the snapshot and registry from the store; returns the revision it reflects.
    pub fn rebuild(&self) -> Result<u64> {
        let revision = self.store.revision();
        let mut resources = Vec::new();
        for kind in Kind::ALL {
            let (objects, _) = self.store.list(&kind.qualified_name(), None)?;
            for obj in objects {
                let parsed = parse_value(
                    Source {
                        file: format!("store:{}", obj.key),
                        index: 0,
                    },
                    obj.value,
                );
                match parsed.outcome {
                    Outcome::Resource(r) => resources.push(*r),
                    Outcome::Unsupported(why) => {
                        tracing::warn!(key = %obj.key, %why, "stored resource skipped")
                    }
                    Outcome::Invalid(e) => {
                        tracing::warn!(key = %obj.key, error = %e, "stored resource no longer parses; skipped")
                    }
                }
            }
        }
        let snapshot = ConfigSnapshot::new(revision, self.config.clone(), resources);
        let registry = {
            let mut vips = self.vips.lock().expect("vip lock poisoned");
            let before = vips.to_json();
            let registry = Registry::build(snapshot.all(), &mut vips, &self.config.domain_suffix);
            let after = vips.to_json();
            if after != before {
                let value = json!({"metadata": {"name": "vips"}, "table": after});
                match self.store.put(&vip_key(), value, Precondition::None) {
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "could not save the virtual IP table; VIPs may change at restart")
                    }
                }
            }
            registry
        };
        *self.state.write().expect("mesh state lock poisoned") =
            Arc::new(MeshState { snapshot, registry });
        Ok(revision)
    }
}

impl Generator for Mesh {
    fn generate(&self, proxy: &Proxy) -> XdsResources {
        let state = self.current();
        translate(&state.snapshot, &state.registry, proxy)
    }
}

/// Follows the store: after every change (events that arrive together count as one), rebuilds
/// the mesh state and tells the ADS server.
pub async fn follow(mesh: Arc<Mesh>, store: Arc<dyn Store>, ads: AdsServer) {
    let mut after = mesh.current().snapshot.revision;
    loop {
        let mut watch = match store.watch(None, None, after) {
            Ok(w) => w,
            Err(StoreError::Compacted { .. }) => {
                after = rebuild(&mesh, &ads).await.unwrap_or(after);
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
            let mut relevant = event.object.key.kind != VIP_KEY_KIND;
            while let Some(more) = watch.try_next() {
                relevant |= more.object.key.kind != VIP_KEY_KIND;
            }
            if !relevant {
                continue;
            }
            if let Some(rev) = rebuild_at(&mesh, &ads, written_at).await {
                after = rev;
            }
        }
        // The watch ended: the store is closing, or this watcher fell behind and must relist.
        match watch.ended() {
            Some(strait_store::WatchEnd::StoreClosed) | None => return,
            Some(_) => after = rebuild(&mesh, &ads).await.unwrap_or(after),
        }
    }
}

async fn rebuild(mesh: &Arc<Mesh>, ads: &AdsServer) -> Option<u64> {
    rebuild_at(mesh, ads, SystemTime::now()).await
}

async fn rebuild_at(mesh: &Arc<Mesh>, ads: &AdsServer, written_at: SystemTime) -> Option<u64> {
    let m = mesh.clone();
    match tokio::task::spawn_blocking(move || m.rebuild()).await {
        Ok(Ok(rev)) => {
            ads.notify(rev, written_at);
            Some(rev)
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "rebuilding the mesh state failed");
            None
        }
        Err(e) => {
            tracing::error!(error = %e, "the rebuild task failed");
            None
        }
    }
}
