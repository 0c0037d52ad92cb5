//! The config the translator reads: every resource the control plane holds, typed, at one store
//! revision, and the mesh-wide settings.

use std::collections::BTreeMap;
use std::sync::Arc;

use strait_api::networking::destination_rule::DestinationRule;
use strait_api::networking::gateway::Gateway;
use strait_api::networking::service_entry::ServiceEntry;
use strait_api::networking::sidecar::Sidecar;
use strait_api::networking::virtual_service::VirtualService;
use strait_api::telemetry::Telemetry;
use strait_api::{Kind, ObjectMeta, Resource, Spec};

/// What happens to outbound traffic for hosts the registry does not know (Istio's
/// `meshConfig.outboundTrafficPolicy.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutboundPolicy {
    /// Passed through to the original destination (Istio's default).
    #[default]
    AllowAny,
    /// Refused (502 for HTTP with response flag `NR`, closed for TCP).
    RegistryOnly,
}

/// Mesh-wide settings (Istio's MeshConfig, the parts Strait reads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshConfig {
    pub outbound_policy: OutboundPolicy,
    /// A Sidecar without a selector in this namespace is the mesh-wide default (`istio-system`).
    pub root_namespace: String,
    pub trust_domain: String,
    /// `cluster.local`.
    pub domain_suffix: String,
    /// The system's trust bundle, for TLS origination without `caCertificates`: a file the
    /// proxies read (the control plane's `--system-ca-bundle`; Istio's `file-root:system`).
    pub system_ca_bundle: String,
    /// `extensionProviders` (the CUSTOM action's authorizers, later telemetry's).
    pub extension_providers: Arc<Vec<strait_api::mesh_config::ExtensionProvider>>,
    /// `enableTracing`, `defaultProviders.tracing`, `defaultConfig.tracing.sampling`.
    pub tracing: strait_api::mesh_config::TracingDefaults,
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self {
            outbound_policy: OutboundPolicy::AllowAny,
            root_namespace: "istio-system".to_string(),
            trust_domain: "cluster.local".to_string(),
            domain_suffix: "cluster.local".to_string(),
            system_ca_bundle: crate::translate::SYSTEM_CA_BUNDLE.to_string(),
            extension_providers: Arc::default(),
            tracing: Default::default(),
        }
    }
}

/// Every resource, by kind, at one store revision. Cheap to clone: the resources of each kind
/// are shared, so a new snapshot that changes one kind shares the others.
#[derive(Debug, Clone, Default)]
pub struct ConfigSnapshot {
    pub revision: u64,
    pub mesh: MeshConfig,
    by_kind: BTreeMap<Kind, Arc<Vec<Arc<Resource>>>>,
    /// Key sets the control plane fetched, by `jwksUri` (RequestAuthentication); a URI not
    /// here has not been fetched successfully (yet).
    pub jwks: Arc<BTreeMap<String, String>>,
}

/// A resource's namespace, `default` when it names none.
pub fn namespace_of(meta: &ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or("default")
}

macro_rules! typed_iter {
    ($(#[$doc:meta])* $fn:ident, $kind:ident, $ty:ty) => {
        $(#[$doc])*
        pub fn $fn(&self) -> impl Iterator<Item = (&ObjectMeta, &$ty)> {
            self.of(Kind::$kind).filter_map(|r| match &r.spec {
                Spec::$kind(s) => Some((&r.metadata, s)),
                _ => None,
            })
        }
    };
}

impl ConfigSnapshot {
    /// A snapshot of `resources`, kept in (namespace, name) order within each kind.
    pub fn new(
        revision: u64,
        mesh: MeshConfig,
        resources: impl IntoIterator<Item = Resource>,
    ) -> Self {
        let mut by_kind: BTreeMap<Kind, Vec<Arc<Resource>>> = BTreeMap::new();
        for r in resources {
            by_kind.entry(r.kind).or_default().push(Arc::new(r));
        }
        for list in by_kind.values_mut() {
            list.sort_by(|a, b| {
                (namespace_of(&a.metadata), a.name()).cmp(&(namespace_of(&b.metadata), b.name()))
            });
        }
        Self {
            revision,
            mesh,
            by_kind: by_kind.into_iter().map(|(k, v)| (k, Arc::new(v))).collect(),
            jwks: Arc::default(),
        }
    }

    /// This snapshot at `revision`, with the resources of `kind` replaced by `resources`, which
    /// must be in (namespace, name) order; the other kinds are shared.
    pub fn with_kind(&self, revision: u64, kind: Kind, resources: Arc<Vec<Arc<Resource>>>) -> Self {
        let mut by_kind = self.by_kind.clone();
        if resources.is_empty() {
            by_kind.remove(&kind);
        } else {
            by_kind.insert(kind, resources);
        }
        Self {
            revision,
            mesh: self.mesh.clone(),
            by_kind,
            jwks: self.jwks.clone(),
        }
    }

    /// This snapshot at `revision` with these fetched key sets (by `jwksUri`).
    pub fn with_jwks(&self, revision: u64, jwks: Arc<BTreeMap<String, String>>) -> Self {
        Self {
            revision,
            jwks,
            ..self.clone()
        }
    }

    /// All resources of a kind, in (namespace, name) order.
    pub fn of(&self, kind: Kind) -> impl Iterator<Item = &Resource> {
        self.by_kind
            .get(&kind)
            .into_iter()
            .flat_map(|list| list.iter().map(|r| &**r))
    }

    /// All resources.
    pub fn all(&self) -> impl Iterator<Item = &Resource> {
        self.by_kind
            .values()
            .flat_map(|list| list.iter().map(|r| &**r))
    }

    typed_iter!(
        /// VirtualServices with their metadata.
        virtual_services, VirtualService, VirtualService
    );
    typed_iter!(
        /// DestinationRules with their metadata.
        destination_rules, DestinationRule, DestinationRule
    );
    typed_iter!(
        /// Gateways with their metadata.
        gateways, Gateway, Gateway
    );
    typed_iter!(
        /// ServiceEntries with their metadata.
        service_entries, ServiceEntry, ServiceEntry
    );
    typed_iter!(
        /// Sidecars with their metadata.
        sidecars, Sidecar, Sidecar
    );
    typed_iter!(
        /// Telemetries with their metadata.
        telemetries, Telemetry, Telemetry
    );
}
